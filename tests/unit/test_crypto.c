/* Unit tests for crypto/: password hashes and CRAM-MD5. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sodium.h>
#include <string.h>

#include "crypto/crypto.h"

static void test_hash_and_verify(void **state)
{
    (void)state;
    char hash[PASSWORD_HASH_MAX];
    const char pw[] = "correct horse";
    assert_int_equal(password_hash(pw, strlen(pw), hash), 0);
    assert_memory_equal(hash, "$argon2id$", 10);
    assert_true(password_verify(hash, pw, strlen(pw)));
    assert_false(password_verify(hash, "correct horsE", strlen(pw)));
    assert_false(password_verify(hash, pw, strlen(pw) - 1));
    /* a password with a NUL in it is all of its octets */
    char with_nul[] = {'a', 0, 'b'};
    assert_int_equal(password_hash(with_nul, sizeof with_nul, hash), 0);
    assert_true(password_verify(hash, with_nul, sizeof with_nul));
    assert_false(password_verify(hash, "a", 1));
}

static void test_malformed_and_dummy_hashes_never_match(void **state)
{
    (void)state;
    assert_false(password_verify("", "", 0));
    assert_false(password_verify("plain text", "plain text", 10));
    assert_false(password_verify("$argon2id$broken", "x", 1));
    const char *dummy = password_dummy_hash();
    assert_memory_equal(dummy, "$argon2id$", 10);
    assert_ptr_equal(dummy, password_dummy_hash()); /* made once */
    assert_false(password_verify(dummy, "", 0));
    assert_false(password_verify(dummy, "password", 8));
}

static void test_cram_md5_rfc2195_example(void **state)
{
    (void)state;
    /* RFC 2195 §2 */
    const char challenge[] = "<1896.697170952@postoffice.reston.mci.net>";
    const char secret[] = "tanstaaftanstaaf";
    char digest[33];
    password_cram_md5(secret, strlen(secret), challenge, strlen(challenge), digest);
    assert_string_equal(digest, "b913a602c7eda7a495b4e6e7334d3890");
}

static void test_equal(void **state)
{
    (void)state;
    assert_true(password_equal("abc", "abc"));
    assert_false(password_equal("abc", "abd"));
    assert_false(password_equal("abc", "ab"));
    assert_true(password_equal("", ""));
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_and_verify),
        cmocka_unit_test(test_malformed_and_dummy_hashes_never_match),
        cmocka_unit_test(test_cram_md5_rfc2195_example),
        cmocka_unit_test(test_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
