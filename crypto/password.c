/* SMTP AUTH secrets: argon2id through libsodium, HMAC-MD5 through OpenSSL
 * (libsodium has no MD5, and CRAM-MD5 is defined on it). */
#include "crypto/crypto.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

_Static_assert(crypto_pwhash_STRBYTES <= PASSWORD_HASH_MAX, "PASSWORD_HASH_MAX too small");

/* The interactive limits: the cost libsodium recommends for online logins. */
int password_hash(const char *password, size_t len, char out[PASSWORD_HASH_MAX])
{
    return crypto_pwhash_str(out, password, len, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                             crypto_pwhash_MEMLIMIT_INTERACTIVE);
}

bool password_verify(const char *hash, const char *password, size_t len)
{
    if (strncmp(hash, crypto_pwhash_STRPREFIX, strlen(crypto_pwhash_STRPREFIX)) != 0) return false;
    return crypto_pwhash_str_verify(hash, password, len) == 0;
}

const char *password_dummy_hash(void)
{
    /* Made once from random bytes nobody keeps; sodium_init ran in main. */
    static char hash[PASSWORD_HASH_MAX];
    if (!hash[0]) {
        unsigned char secret[32];
        randombytes_buf(secret, sizeof secret);
        if (password_hash((const char *)secret, sizeof secret, hash) != 0)
            snprintf(hash, sizeof hash, "%s", "$argon2id$unusable");
        sodium_memzero(secret, sizeof secret);
    }
    return hash;
}

void password_cram_md5(const char *secret, size_t secret_len, const char *challenge,
                       size_t challenge_len, char out[33])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_md5(), secret, (int)secret_len, (const unsigned char *)challenge, challenge_len,
              mac, &mac_len) ||
        mac_len != 16) {
        out[0] = 0;
        return;
    }
    sodium_bin2hex(out, 33, mac, mac_len);
}

bool password_equal(const char *a, const char *b)
{
    size_t n = strlen(a);
    return n == strlen(b) && sodium_memcmp(a, b, n) == 0;
}
