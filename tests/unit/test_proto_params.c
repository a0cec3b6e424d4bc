/* Unit tests for proto/'s ESMTP parameter values: xtext, NOTIFY and ORCPT
 * (RFC 3461), and the stored parameter list. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto.h"

/* --------------------------------------------------------------------- DSN */

static bool xtext(const char *s)
{
    return proto_xtext_valid(s, strlen(s));
}

static void test_xtext(void **state)
{
    (void)state;
    assert_true(xtext("abc"));
    assert_true(xtext("a+2Bb+3D"));
    assert_true(xtext(""));
    assert_false(xtext("a b"));
    assert_false(xtext("a=b"));
    assert_false(xtext("a+2b")); /* hex must be upper case */
    assert_false(xtext("a+2"));
    assert_false(xtext("a+"));
    assert_false(xtext("caf\xc3\xa9"));
}

static int notify(const char *s)
{
    return proto_dsn_notify(s, strlen(s));
}

static void test_dsn_notify(void **state)
{
    (void)state;
    assert_int_equal(notify("NEVER"), PROTO_NOTIFY_NEVER);
    assert_int_equal(notify("success,Failure"), PROTO_NOTIFY_SUCCESS | PROTO_NOTIFY_FAILURE);
    assert_int_equal(notify("DELAY"), PROTO_NOTIFY_DELAY);
    assert_int_equal(notify("NEVER,FAILURE"), -1);
    assert_int_equal(notify("FAILURE,FAILURE"), -1);
    assert_int_equal(notify("FAILURE,"), -1);
    assert_int_equal(notify(",FAILURE"), -1);
    assert_int_equal(notify(""), -1);
    assert_int_equal(notify("SOMETIMES"), -1);
}

static bool orcpt(const char *s, bool utf8)
{
    return proto_dsn_orcpt_valid(s, strlen(s), utf8);
}

static void test_dsn_orcpt(void **state)
{
    (void)state;
    assert_true(orcpt("rfc822;user@example.test", false));
    assert_true(orcpt("RFC822;a+2Bb@example.test", false));
    assert_false(orcpt("rfc822;", false));
    assert_false(orcpt(";user@example.test", false));
    assert_false(orcpt("user@example.test", false));
    assert_false(orcpt("rfc822;a b@example.test", false));
    assert_false(orcpt("utf-8;j\xc3\xb6rg@example.test", false));
    assert_true(orcpt("utf-8;j\xc3\xb6rg@example.test", true));
    assert_false(orcpt("utf-8;j\xc3(rg@example.test", true));    /* bad continuation */
    assert_false(orcpt("utf-8;j\xc0\xafrg@example.test", true)); /* overlong */
    char big[PROTO_ORCPT_MAX + 2];
    memset(big, 'a', sizeof big - 1);
    memcpy(big, "rfc822;", 7);
    big[sizeof big - 1] = 0;
    assert_false(orcpt(big, false));
    big[sizeof big - 2] = 0;
    assert_true(orcpt(big, false));
}

static void test_param_find(void **state)
{
    (void)state;
    char v[16];
    const char *list = "BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abcdefghijklmnopqrstuvwxyz";
    assert_true(proto_param_find(list, "body", v, sizeof v));
    assert_string_equal(v, "8BITMIME");
    assert_true(proto_param_find(list, "SMTPUTF8", v, sizeof v));
    assert_string_equal(v, "");
    assert_true(proto_param_find(list, "ENVID", v, sizeof v));
    assert_string_equal(v, "abcdefghijklmno"); /* cut to fit */
    assert_false(proto_param_find(list, "SMTP", v, sizeof v));
    assert_false(proto_param_find(list, "NOTIFY", v, sizeof v));
    assert_false(proto_param_find("", "BODY", v, sizeof v));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_dsn_notify),
        cmocka_unit_test(test_dsn_orcpt),
        cmocka_unit_test(test_param_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
