/* libFuzzer target: crypto/smime.c's reader of what `keys import` is given
 * as X.509 (PEM CERTIFICATE or PKCS7 blocks, a DER certificate, a DER
 * PKCS#7 bundle). Whatever the input, every certificate it reports is what
 * the key directory may file: an id of 64 upper-case hex digits, addresses
 * with one '@', a lower-case domain and no control, space or 8-bit octet,
 * a why_unusable that is NULL or a non-empty reason, the PEM it stores
 * readable again; the count it returns is the number of reports. The input
 * is a malloc'd copy of its own, so ASan sees a read past its end. */
#include "crypto/internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_id(const char *id)
{
    CHECK(strlen(id) == 64);
    for (size_t i = 0; i < 64; i++)
        CHECK((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'F'));
}

static void check_address(const char *a)
{
    const char *at = strchr(a, '@');
    CHECK(at && at != a && at[1]);
    for (const unsigned char *p = (const unsigned char *)a; *p; p++)
        CHECK(*p > ' ' && *p < 0x7f);
    for (const char *d = at + 1; *d; d++)
        CHECK(!(*d >= 'A' && *d <= 'Z'));
}

static void on_cert(const crypto_key_info_t *key, void *arg)
{
    (*(unsigned *)arg)++;
    CHECK(key->method == CRYPTO_SMIME);
    check_id(key->fpr);
    for (unsigned i = 0; i < key->n_addresses; i++)
        check_address(key->addresses[i]);
    CHECK(key->why_unusable == NULL || key->why_unusable[0] != 0);
    CHECK(key->n_addresses > 0 || key->why_unusable != NULL);
    CHECK(!key->retired || key->why_unusable != NULL);
    CHECK(key->subject && key->issuer && key->serial);
    CHECK(key->armored && key->armored_len == strlen(key->armored));
    /* What the directory stores is read again at each use. */
    char why[300] = "";
    int rc = crypto_cert_check(key->armored, key->armored_len, key->not_before, why, sizeof why);
    CHECK(rc == 1 || why[0]);
    CHECK(rc == 1 || strcmp(why, "the stored certificate cannot be read") != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    unsigned reported = 0;
    char err[300];
    int n = smime_inspect(copy, size, on_cert, &reported, err, sizeof err);
    CHECK(n >= -1);
    if (n >= 0)
        CHECK((unsigned)n == reported);
    else
        CHECK(err[0] != 0);
    free(copy);
    return 0;
}
