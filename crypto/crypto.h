/* crypto: the secrets side of sealpost. For now, the SMTP AUTH passwords:
 * argon2id hashes (libsodium) for PLAIN and LOGIN, and the CRAM-MD5
 * response, which needs the password itself (a password-equivalent secret)
 * on the server. The encryption gateway joins this library later. Uses
 * core/ and nothing else of ours. */
#ifndef SEALPOST_CRYPTO_H
#define SEALPOST_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

/* crypto_pwhash_STRBYTES of libsodium: the longest hash string, NUL included. */
#define PASSWORD_HASH_MAX 128

/* An argon2id hash of password in libsodium's string form ("$argon2id$...").
 * Costs about 64 MiB and some tens of ms: never on an event loop. */
int password_hash(const char *password, size_t len, char out[PASSWORD_HASH_MAX]);
/* Whether password matches hash; false for a malformed hash. As costly as
 * password_hash: run it in a worker thread. */
bool password_verify(const char *hash, const char *password, size_t len);
/* A hash that no password matches, for unknown users, so that a failed
 * login costs the same time whether the user exists or not. */
const char *password_dummy_hash(void);

/* RFC 2195: HMAC-MD5 of challenge keyed with secret, as 32 lower-case hex
 * digits and a NUL. */
void password_cram_md5(const char *secret, size_t secret_len, const char *challenge,
                       size_t challenge_len, char out[33]);
/* Compares two strings in time that depends only on their lengths. */
bool password_equal(const char *a, const char *b);

#endif
