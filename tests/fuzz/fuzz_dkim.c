/* libFuzzer target: DKIM's relaxed canonicalisation and dkim_sign
 * (crypto/dkim.c). The input is taken whole as a body, as one header field
 * and as a message. Checks, each a __builtin_trap() when broken:
 *  - body: canonicalising the canonical form changes nothing; it has no SP
 *    or HTAB before a CRLF, no empty line at its end, and ends in CRLF
 *    unless it is empty;
 *  - header field: refused only without a colon or a name of printable
 *    ASCII before it (white space before the colon aside); else
 *    one line ending in CRLF (no other LF; a lone CR is an octet of the
 *    value), a name without upper-case ASCII, no white space around the
 *    colon, at the end or twice in a row, and no HTAB;
 *  - dkim_sign with a fixed Ed25519 key never fails on any message; its
 *    field starts "DKIM-Signature:", every line but the first starts with
 *    SP, it ends in CRLF, carries each of v= a= c= d= s= t= h= bh= b=, and
 *    its bh= is the hash of the canonical body after the header. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sodium.h>

#include "crypto/crypto.h"
#include "crypto/internal.h"
#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static bool wsp(char c)
{
    return c == ' ' || c == '\t';
}

static void check_body(const char *in, size_t len)
{
    buf_t once, twice;
    buf_init(&once);
    buf_init(&twice);
    CHECK(dkim_canon_body(in, len, &once) == 0);
    CHECK(dkim_canon_body(once.data, once.len, &twice) == 0);
    CHECK(once.len == twice.len && (once.len == 0 || !memcmp(once.data, twice.data, once.len)));
    if (once.len > 0) {
        const char *p = once.data;
        size_t n = once.len;
        CHECK(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
        CHECK(n > 2);                                          /* never a lone empty line */
        CHECK(n < 4 || memcmp(p + n - 4, "\r\n\r\n", 4) != 0); /* no empty line at the end */
        for (size_t i = 0; i + 1 < n; i++)
            if (p[i] == '\r' && p[i + 1] == '\n') CHECK(i == 0 || !wsp(p[i - 1]));
    }
    buf_free(&once);
    buf_free(&twice);
}

static void check_header(const char *in, size_t len)
{
    buf_t out;
    buf_init(&out);
    const char *colon = memchr(in, ':', len);
    size_t name_len = colon ? (size_t)(colon - in) : 0;
    while (name_len > 0 && wsp(in[name_len - 1]))
        name_len--;
    bool name_ok = name_len > 0;
    for (size_t i = 0; i < name_len; i++)
        name_ok = name_ok && in[i] > ' ' && in[i] < 0x7f;
    int rc = dkim_canon_header(in, len, &out);
    CHECK((rc == 0) == name_ok);
    if (rc == 0) {
        const char *p = out.data;
        size_t n = out.len;
        CHECK(n >= 3 && p[n - 2] == '\r' && p[n - 1] == '\n');
        const char *c = memchr(p, ':', n);
        CHECK(c && (size_t)(c - p) == name_len);
        for (const char *q = p; q < c; q++)
            CHECK(!(*q >= 'A' && *q <= 'Z'));
        CHECK(!wsp(c[-1]) && !wsp(c[1]));
        CHECK(!wsp(p[n - 3]));
        for (size_t i = 0; i + 2 < n; i++) {
            CHECK(p[i] != '\n' && p[i] != '\t');
            CHECK(!(p[i] == ' ' && p[i + 1] == ' '));
        }
    }
    buf_free(&out);
}

/* Ed25519 from a fixed seed: signing is deterministic, and cheap enough to
 * run on every input (RSA differs only in the call to OpenSSL). */
static dkim_key_t *test_key(void)
{
    static dkim_key_t *key;
    if (key) return key;
    unsigned char seed[32];
    for (unsigned i = 0; i < sizeof seed; i++)
        seed[i] = (unsigned char)(i * 7 + 1);
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
    BIO *bio = BIO_new(BIO_s_mem());
    CHECK(pkey && bio && PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) == 1);
    char *pem = NULL, err[256];
    long len = BIO_get_mem_data(bio, &pem);
    key = dkim_key_load(pem, (size_t)len, err, sizeof err);
    CHECK(key);
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return key;
}

/* The tag's value in the field (white space removed), or NULL. */
static char *tag(const buf_t *f, const char *name)
{
    size_t nlen = strlen(name);
    const char *p = f->data + 15, *end = f->data + f->len;
    while (p < end) {
        while (p < end && strchr(" \t\r\n", *p))
            p++;
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *stop = semi ? semi : end;
        if ((size_t)(stop - p) > nlen && !memcmp(p, name, nlen) && p[nlen] == '=') {
            char *v = malloc((size_t)(stop - p) + 1);
            size_t n = 0;
            for (const char *q = p + nlen + 1; q < stop; q++)
                if (!strchr(" \t\r\n", *q)) v[n++] = *q;
            v[n] = 0;
            return v;
        }
        p = semi ? semi + 1 : end;
    }
    return NULL;
}

static void check_sign(const char *msg, size_t len)
{
    dkim_signer_t s = {test_key(), "fuzz.example", "s1"};
    buf_t out;
    buf_init(&out);
    char err[256];
    CHECK(dkim_sign(msg, len, &s, 1, 1700000000, 60, &out, err, sizeof err) == 0);
    CHECK(out.len > 17 && !memcmp(out.data, "DKIM-Signature: ", 16));
    CHECK(out.data[out.len - 2] == '\r' && out.data[out.len - 1] == '\n');
    for (size_t i = 0; i + 2 < out.len; i++)
        if (out.data[i] == '\n') CHECK(out.data[i - 1] == '\r' && out.data[i + 1] == ' ');
    static const char *const tags[] = {"v", "a", "c", "d", "s", "t", "x", "h", "bh", "b"};
    for (size_t i = 0; i < sizeof tags / sizeof *tags; i++) {
        char *v = tag(&out, tags[i]);
        CHECK(v && *v);
        free(v);
    }

    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        ;
    buf_t body;
    buf_init(&body);
    CHECK(dkim_canon_body(msg + it.body, len - it.body, &body) == 0);
    unsigned char md[32];
    unsigned md_len = 0;
    CHECK(EVP_Digest(body.data ? body.data : "", body.len, md, &md_len, EVP_sha256(), NULL) == 1);
    char want[64];
    sodium_bin2base64(want, sizeof want, md, md_len, sodium_base64_VARIANT_ORIGINAL);
    char *bh = tag(&out, "bh");
    CHECK(bh && !strcmp(bh, want));
    free(bh);
    buf_free(&body);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    check_body(in, size);
    check_header(in, size);
    check_sign(in, size);
    return 0;
}
