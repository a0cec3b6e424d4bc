/* libFuzzer target: crypto/openpgp.c, which reads what correspondents send
 * (key files at import, bodies that claim to be encrypted), never reads out
 * of bounds; every packet it returns lies inside the input, in order, and
 * the packets of an encrypted message are session keys then one encrypted
 * data packet that ends the input; an issuer it names is upper-case hex of
 * a key ID or fingerprint; what the strict armor reader takes, the lenient
 * one finds too. The input is read both as octets and as armored text, each
 * a malloc'd copy of its own, so ASan sees a read past its end. */
#include "crypto/internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_issuer(const openpgp_packet_t *p)
{
    unsigned type;
    char issuer[OPENPGP_ISSUER_MAX];
    if (openpgp_signature_issuer(p, &type, issuer, sizeof issuer) != 0) return;
    size_t n = strlen(issuer);
    CHECK(n == 16 || n == 40 || n == 64);
    for (size_t i = 0; i < n; i++)
        CHECK((issuer[i] >= '0' && issuer[i] <= '9') || (issuer[i] >= 'A' && issuer[i] <= 'F'));
    CHECK(type < 256);
}

/* Walks the packets; true when all of bin is packets. */
static bool walk(const unsigned char *bin, size_t len, unsigned *first_tag, unsigned *last_tag)
{
    size_t pos = 0;
    openpgp_packet_t p;
    int r;
    *first_tag = *last_tag = 0;
    while ((r = openpgp_packet_next(bin, len, &pos, &p)) == 1) {
        CHECK(p.raw >= bin && p.raw_len > 0 && p.raw_len <= len && p.raw + p.raw_len == bin + pos);
        CHECK(p.body >= p.raw && p.body + p.body_len <= p.raw + p.raw_len);
        if (!*first_tag) *first_tag = p.tag;
        *last_tag = p.tag;
        if (p.tag == OPENPGP_TAG_SIGNATURE) check_issuer(&p);
    }
    CHECK(r == 0 || r == -1);
    CHECK(pos <= len);
    return r == 0;
}

static void check_binary(const unsigned char *bin, size_t len)
{
    unsigned first, last;
    bool whole = walk(bin, len, &first, &last);
    if (openpgp_is_encrypted_message(bin, len)) {
        CHECK(whole);
        CHECK(first == OPENPGP_TAG_PKESK || first == OPENPGP_TAG_SKESK);
        CHECK(last == OPENPGP_TAG_SEIPD || last == OPENPGP_TAG_SED || last == OPENPGP_TAG_AEAD);
    }
}

static int on_block(const char *kind, size_t kind_len, const unsigned char *bin, size_t bin_len,
                    void *arg)
{
    (void)kind;
    (void)kind_len;
    (*(unsigned *)arg)++;
    check_binary(bin, bin_len);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *bin = malloc(size ? size : 1);
    memcpy(bin, data, size);
    check_binary(bin, size);
    free(bin);

    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);
    unsigned blocks = 0;
    int found = openpgp_armor_each(text, size, on_block, &blocks);
    CHECK(found == -1 || (unsigned)found == blocks);
    const char *kind;
    size_t kind_len, len;
    unsigned char *decoded = NULL;
    if (openpgp_dearmor(text, size, &kind, &kind_len, &decoded, &len) == 1) {
        CHECK(kind >= text && kind + kind_len <= text + size);
        check_binary(decoded, len);
        CHECK(found != 0); /* what the strict reader took, the lenient one found */
        free(decoded);
    }
    free(text);
    return 0;
}
