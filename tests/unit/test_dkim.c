/* Unit tests for crypto/dkim.c: the relaxed canonicalisation against the
 * examples of RFC 6376 §3.4.5 and RFC 8463 Appendix A (whose signature must
 * verify over our canonical form, and ours with its public key), keys, DNS
 * records, zone lines and the From domain. The tests against dkimpy are in
 * tests/integration/test_dkim_canon.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "crypto/crypto.h"
#include "crypto/internal.h"
#include "proto/proto.h"

#define CANON_CHECK(fn, in, want)                                                                  \
    do {                                                                                           \
        buf_t out_;                                                                                \
        buf_init(&out_);                                                                           \
        assert_int_equal(fn(in, sizeof(in) - 1, &out_), 0);                                        \
        assert_int_equal(out_.len, sizeof(want) - 1);                                              \
        assert_memory_equal(out_.data ? out_.data : "", want, sizeof(want) - 1);                   \
        buf_free(&out_);                                                                           \
    } while (0)

/* ---- canonicalisation ---- */

/* RFC 6376 §3.4.5: "A: X", "B : Y<HTAB><CRLF><HTAB>Z<SP><SP>", and the body
 * "<SP>C<SP><CRLF>D<SP><HTAB><SP>E<CRLF><CRLF><CRLF>". */
static void test_rfc6376_example(void **state)
{
    (void)state;
    CANON_CHECK(dkim_canon_header, "A: X\r\n", "a:X\r\n");
    CANON_CHECK(dkim_canon_header, "B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n");
    CANON_CHECK(dkim_canon_body, " C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n");
}

static void test_canon_body_edges(void **state)
{
    (void)state;
    CANON_CHECK(dkim_canon_body, "", "");              /* relaxed: empty stays empty */
    CANON_CHECK(dkim_canon_body, "\r\n\r\n\r\n", "");  /* only empty lines */
    CANON_CHECK(dkim_canon_body, " \t\r\n  \r\n", ""); /* lines of white space only */
    CANON_CHECK(dkim_canon_body, "x", "x\r\n");        /* a CRLF added at the end */
    CANON_CHECK(dkim_canon_body, "x\r\n  ", "x\r\n");  /* white space at the end too */
    CANON_CHECK(dkim_canon_body, "a\r\n\r\n \r\nb\r\n\r\n", "a\r\n\r\n\r\nb\r\n");
    CANON_CHECK(dkim_canon_body, ".\r\n..x  y\r\n", ".\r\n..x y\r\n");
    CANON_CHECK(dkim_canon_body, "a \nb\r\n", "a \nb\r\n"); /* a bare LF ends no line */
    CANON_CHECK(dkim_canon_body, "a\r\r\n", "a\r\r\n");
    CANON_CHECK(dkim_canon_body, "\xc3\xa9t\xc3\xa9 \t\r\n", "\xc3\xa9t\xc3\xa9\r\n");
    CANON_CHECK(dkim_canon_body, "\r\n\r\nx", "\r\n\r\nx\r\n");
}

static void test_canon_header_edges(void **state)
{
    (void)state;
    CANON_CHECK(dkim_canon_header, "Subject:\r\n", "subject:\r\n");
    CANON_CHECK(dkim_canon_header, "Subject: \t \r\n", "subject:\r\n");
    CANON_CHECK(dkim_canon_header, "X-Long:  a\r\n \t b  \r\n\tc\r\n", "x-long:a b c\r\n");
    CANON_CHECK(dkim_canon_header, "To:a@b", "to:a@b\r\n");    /* no CRLF: one added */
    CANON_CHECK(dkim_canon_header, "K: a\n b\n", "k:a b\r\n"); /* bare LF as the header reader */
    CANON_CHECK(dkim_canon_header, "S: \xc3\xa9  x\r\n", "s:\xc3\xa9 x\r\n");
    buf_t out;
    buf_init(&out);
    assert_int_equal(dkim_canon_header("no colon\r\n", 10, &out), -1);
    assert_int_equal(dkim_canon_header(": value\r\n", 9, &out), -1);
    assert_int_equal(dkim_canon_header(" \t: value\r\n", 11, &out), -1);
    assert_int_equal(dkim_canon_header("S\xc3\xa9: x\r\n", 9, &out), -1); /* no ftext */
    assert_int_equal(dkim_canon_header("A B: x\r\n", 8, &out), -1);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

/* ---- a verifier of our own for the tests, with the canonicalisation of
 * crypto/dkim.c and OpenSSL's Ed25519: enough to check the RFC's signature
 * and ours against the RFC's public key ---- */

/* The value of tag name in the DKIM-Signature field sig (raw), without
 * white space, into out. */
static bool tag_value(const char *sig, const char *name, char *out, size_t size)
{
    const char *v = strchr(sig, ':') + 1;
    size_t nlen = strlen(name);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n')
            v++;
        const char *end = strchr(v, ';');
        if (!end) end = v + strlen(v);
        const char *eq = memchr(v, '=', (size_t)(end - v));
        size_t klen = eq ? (size_t)(eq - v) : 0;
        while (klen > 0 && strchr(" \t\r\n", v[klen - 1]))
            klen--;
        if (eq && klen == nlen && !memcmp(v, name, nlen)) {
            size_t n = 0;
            for (const char *p = eq + 1; p < end && n + 1 < size; p++)
                if (!strchr(" \t\r\n", *p)) out[n++] = *p;
            out[n] = 0;
            return true;
        }
        v = *end ? end + 1 : NULL;
    }
    return false;
}

/* The tag's value in sig (white space removed) is want. */
static void expect_tag(const char *sig, const char *name, const char *want)
{
    char v[2048];
    assert_true(tag_value(sig, name, v, sizeof v));
    assert_string_equal(v, want);
}

/* The header data a verifier hashes for sig (RFC 6376 §5.4.2: each h= name
 * binds the next instance from the bottom), then sig up to "b=" (its value
 * the last tag here), canonical and without its CRLF. */
static void signed_data(const char *msg, size_t len, const char *sig, buf_t *data)
{
    char h[2048];
    assert_true(tag_value(sig, "h", h, sizeof h));
    proto_header_field_t fields[64];
    bool used[64] = {false};
    size_t n = 0;
    proto_header_iter_t it;
    proto_header_iter_init(&it, msg, len);
    while (n < 64 && proto_header_next(&it, &fields[n]))
        n++;
    for (char *name = strtok(h, ":"); name; name = strtok(NULL, ":"))
        for (size_t i = n; i-- > 0;)
            if (!used[i] && fields[i].name_len == strlen(name) &&
                !strncasecmp(fields[i].name, name, fields[i].name_len)) {
                used[i] = true;
                assert_int_equal(dkim_canon_header(fields[i].raw, fields[i].raw_len, data), 0);
                break;
            }
    const char *b = strstr(sig, " b=");
    if (!b) b = strstr(sig, "\tb=");
    assert_non_null(b);
    assert_int_equal(dkim_canon_header(sig, (size_t)(b + 3 - sig), data), 0);
    data->len -= 2;
}

static bool ed25519_verifies(const char *msg, size_t len, const char *sig,
                             const unsigned char pub[32])
{
    buf_t data;
    buf_init(&data);
    signed_data(msg, len, sig, &data);
    unsigned char digest[32], raw_sig[64];
    unsigned md_len = 0;
    assert_int_equal(EVP_Digest(data.data, data.len, digest, &md_len, EVP_sha256(), NULL), 1);
    buf_free(&data);
    char b64[256];
    size_t sig_len = 0;
    assert_true(tag_value(sig, "b", b64, sizeof b64));
    if (sodium_base642bin(raw_sig, sizeof raw_sig, b64, strlen(b64), NULL, &sig_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        sig_len != 64)
        return false;
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) == 1 &&
              EVP_DigestVerify(ctx, raw_sig, 64, digest, 32) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return ok;
}

/* ---- RFC 8463 Appendix A ---- */

/* A.2: the Ed25519 key (RFC 8032's first test key). */
static const char rfc8463_seed[] = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
static const char rfc8463_pub[] = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/* A.3: the message, and its Ed25519 signature. */
#define RFC8463_HEADER                                                                             \
    "From: Joe SixPack <joe@football.example.com>\r\n"                                             \
    "To: Suzie Q <suzie@shopping.example.net>\r\n"                                                 \
    "Subject: Is dinner ready?\r\n"                                                                \
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"                                              \
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
#define RFC8463_BODY "Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
static const char rfc8463_sig[] = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
                                  " d=football.example.com; i=@football.example.com;\r\n"
                                  " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
                                  " subject : date : message-id : from : subject : date;\r\n"
                                  " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                                  " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
                                  " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n";

static void decode32(const char *b64, unsigned char out[32])
{
    size_t n = 0;
    assert_int_equal(sodium_base642bin(out, 32, b64, strlen(b64), NULL, &n, NULL,
                                       sodium_base64_VARIANT_ORIGINAL),
                     0);
    assert_int_equal(n, 32);
}

/* The RFC's key as PKCS#8 PEM, the form dkim_key_load reads. */
static dkim_key_t *rfc8463_key(void)
{
    unsigned char seed[32];
    decode32(rfc8463_seed, seed);
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    assert_non_null(pkey);
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL), 1);
    char *pem = NULL;
    long len = BIO_get_mem_data(bio, &pem);
    char err[256];
    dkim_key_t *k = dkim_key_load(pem, (size_t)len, err, sizeof err);
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    assert_non_null(k);
    return k;
}

/* The RFC's message signed by dkim_sign with k, d=football.example.com,
 * s=brisbane, at the RFC's t=. */
static void sign_rfc8463(dkim_key_t *k, buf_t *out)
{
    const char msg[] = RFC8463_HEADER "\r\n" RFC8463_BODY;
    dkim_signer_t s = {k, "football.example.com", "brisbane"};
    char err[256];
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, &s, 1, 1528637909, 0, out, err, sizeof err), 0);
}

static void test_rfc8463_body_hash(void **state)
{
    (void)state;
    buf_t canon;
    buf_init(&canon);
    assert_int_equal(dkim_canon_body(RFC8463_BODY, sizeof RFC8463_BODY - 1, &canon), 0);
    unsigned char md[32];
    unsigned md_len = 0;
    assert_int_equal(EVP_Digest(canon.data, canon.len, md, &md_len, EVP_sha256(), NULL), 1);
    char bh[64];
    sodium_bin2base64(bh, sizeof bh, md, md_len, sodium_base64_VARIANT_ORIGINAL);
    assert_string_equal(bh, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    buf_free(&canon);

    /* and dkim_sign puts the same bh= into its field */
    dkim_key_t *k = rfc8463_key();
    buf_t out;
    buf_init(&out);
    sign_rfc8463(k, &out);
    expect_tag(out.data, "bh", "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    buf_free(&out);
    dkim_key_free(k);
}

/* The RFC's own signature verifies over our canonical header data: its h=
 * with spaces around the colons, over-signed from, subject and date. */
static void test_rfc8463_signature_verifies_over_our_canon(void **state)
{
    (void)state;
    unsigned char pub[32];
    decode32(rfc8463_pub, pub);
    const char msg[] = RFC8463_HEADER "\r\n" RFC8463_BODY;
    assert_true(ed25519_verifies(msg, sizeof msg - 1, rfc8463_sig, pub));
    /* a changed signed field does not */
    char changed[] = RFC8463_HEADER "\r\n" RFC8463_BODY;
    memcpy(strstr(changed, "dinner"), "supper", 6);
    assert_false(ed25519_verifies(changed, sizeof changed - 1, rfc8463_sig, pub));
    /* and white space the relaxed form drops changes nothing */
    const char spaced[] = "From:  Joe   SixPack <joe@football.example.com>  \r\n"
                          "TO: Suzie Q\r\n <suzie@shopping.example.net>\r\n"
                          "Subject: Is dinner ready?\r\n"
                          "date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
                          "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
                          "\r\n" RFC8463_BODY;
    assert_true(ed25519_verifies(spaced, sizeof spaced - 1, rfc8463_sig, pub));
}

/* Our signature with the RFC's key verifies with the RFC's public key, and
 * the record dkim_key_record writes is the RFC's (A.2). */
static void test_rfc8463_our_signature_verifies(void **state)
{
    (void)state;
    dkim_key_t *k = rfc8463_key();
    buf_t rec;
    buf_init(&rec);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    assert_string_equal(rec.data,
                        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    buf_free(&rec);

    const char msg[] = RFC8463_HEADER "\r\n" RFC8463_BODY;
    buf_t out;
    buf_init(&out);
    sign_rfc8463(k, &out);
    unsigned char pub[32];
    decode32(rfc8463_pub, pub);
    assert_true(ed25519_verifies(msg, sizeof msg - 1, out.data, pub));
    char h[256];
    assert_true(tag_value(out.data, "h", h, sizeof h));
    assert_string_equal(h, "message-id:date:subject:to:from:from");
    /* another key's public half does not verify it */
    pub[0] ^= 1;
    assert_false(ed25519_verifies(msg, sizeof msg - 1, out.data, pub));
    buf_free(&out);
    dkim_key_free(k);
}

/* ---- keys ---- */

static void test_algorithm_names(void **state)
{
    (void)state;
    enum dkim_algorithm a;
    assert_string_equal(dkim_algorithm_name(DKIM_ED25519), "ed25519");
    assert_string_equal(dkim_algorithm_name(DKIM_RSA), "rsa");
    assert_string_equal(dkim_algorithm_tag(DKIM_ED25519), "ed25519-sha256");
    assert_string_equal(dkim_algorithm_tag(DKIM_RSA), "rsa-sha256");
    assert_int_equal(dkim_algorithm_parse("rsa", &a), 0);
    assert_int_equal(a, DKIM_RSA);
    assert_int_equal(dkim_algorithm_parse("ed25519", &a), 0);
    assert_int_equal(a, DKIM_ED25519);
    assert_int_equal(dkim_algorithm_parse("RSA", &a), -1);
    assert_int_equal(dkim_algorithm_parse("rsa-sha256", &a), -1);
    assert_int_equal(dkim_algorithm_parse("", &a), -1);
}

static void test_keygen_and_load(void **state)
{
    (void)state;
    char err[256];
    buf_t pem, rec;
    buf_init(&pem);
    buf_init(&rec);
    assert_int_equal(dkim_keygen(DKIM_ED25519, 0, &pem, err, sizeof err), 0);
    assert_non_null(strstr(pem.data, "-----BEGIN PRIVATE KEY-----"));
    dkim_key_t *k = dkim_key_load(pem.data, pem.len, err, sizeof err);
    assert_non_null(k);
    assert_int_equal(dkim_key_algorithm(k), DKIM_ED25519);
    assert_int_equal(dkim_key_bits(k), 256);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    assert_int_equal(strncmp(rec.data, "v=DKIM1; k=ed25519; p=", 22), 0);
    assert_int_equal(rec.len, 22 + 44);
    dkim_key_free(k);
    sodium_memzero(pem.data, pem.len);
    buf_reset(&pem);
    buf_reset(&rec);

    assert_int_equal(dkim_keygen(DKIM_RSA, 0, &pem, err, sizeof err), 0);
    assert_non_null(strstr(pem.data, "-----BEGIN PRIVATE KEY-----"));
    k = dkim_key_load(pem.data, pem.len, err, sizeof err);
    assert_non_null(k);
    assert_int_equal(dkim_key_algorithm(k), DKIM_RSA);
    assert_int_equal(dkim_key_bits(k), 2048);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    /* the SubjectPublicKeyInfo of a 2048-bit key: 294 octets, 392 in base64 */
    assert_int_equal(strncmp(rec.data, "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A", 50),
                     0);
    assert_int_equal(rec.len, 18 + 392);
    dkim_key_free(k);
    sodium_memzero(pem.data, pem.len);
    buf_free(&pem);
    buf_free(&rec);

    /* sizes out of range, before any work */
    buf_init(&pem);
    assert_int_equal(dkim_keygen(DKIM_ED25519, 2048, &pem, err, sizeof err), -1);
    assert_int_equal(dkim_keygen(DKIM_RSA, 1024, &pem, err, sizeof err), -1);
    assert_int_equal(dkim_keygen(DKIM_RSA, 8200, &pem, err, sizeof err), -1);
    assert_int_equal(dkim_keygen(DKIM_ALGORITHMS, 0, &pem, err, sizeof err), -1);
    assert_int_equal(pem.len, 0);
}

/* key as PEM: traditional ("RSA PRIVATE KEY") or PKCS#8. */
static char *pem_of(EVP_PKEY *key, bool traditional, size_t *len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    if (traditional)
        assert_int_equal(PEM_write_bio_PrivateKey_traditional(bio, key, NULL, NULL, 0, NULL, NULL),
                         1);
    else
        assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    char *data = NULL;
    *len = (size_t)BIO_get_mem_data(bio, &data);
    char *copy = malloc(*len + 1);
    memcpy(copy, data, *len);
    copy[*len] = 0;
    BIO_free(bio);
    return copy;
}

static void test_key_load_refusals(void **state)
{
    (void)state;
    char err[256];
    size_t len;

    EVP_PKEY *rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    char *pem = pem_of(rsa1024, true, &len);
    assert_non_null(strstr(pem, "BEGIN RSA PRIVATE KEY"));
    assert_null(dkim_key_load(pem, len, err, sizeof err));
    assert_non_null(strstr(err, "1024 bits"));
    free(pem);
    EVP_PKEY_free(rsa1024);

    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    pem = pem_of(ec, false, &len);
    assert_null(dkim_key_load(pem, len, err, sizeof err));
    assert_non_null(strstr(err, "EC key"));
    free(pem);
    pem = pem_of(ec, true, &len); /* "EC PRIVATE KEY" */
    assert_null(dkim_key_load(pem, len, err, sizeof err));
    free(pem);
    EVP_PKEY_free(ec);

    const char garbage[] = "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n"
                           "-----END PRIVATE KEY-----\n";
    assert_null(dkim_key_load(garbage, sizeof garbage - 1, err, sizeof err));
    assert_non_null(strstr(err, "not a PEM private key"));
    assert_null(dkim_key_load("hello", 5, err, sizeof err));
    assert_null(dkim_key_load("", 0, err, sizeof err));
    /* a truncated good key */
    buf_t good;
    buf_init(&good);
    assert_int_equal(dkim_keygen(DKIM_ED25519, 0, &good, err, sizeof err), 0);
    assert_null(dkim_key_load(good.data, good.len / 2, err, sizeof err));
    buf_free(&good);

    /* an RSA key of 2048 bits in the traditional form is read */
    EVP_PKEY *rsa2048 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    pem = pem_of(rsa2048, true, &len);
    dkim_key_t *k = dkim_key_load(pem, len, err, sizeof err);
    assert_non_null(k);
    assert_int_equal(dkim_key_algorithm(k), DKIM_RSA);
    assert_int_equal(dkim_key_bits(k), 2048);
    dkim_key_free(k);
    free(pem);
    EVP_PKEY_free(rsa2048);
}

/* ---- names, records and zone lines ---- */

static void test_selector_and_domain_valid(void **state)
{
    (void)state;
    assert_true(dkim_selector_valid("s1"));
    assert_true(dkim_selector_valid("ed25519-20240101"));
    assert_true(dkim_selector_valid("a.b-c.d"));
    assert_true(dkim_selector_valid("Upper"));
    assert_false(dkim_selector_valid(""));
    assert_false(dkim_selector_valid(NULL));
    assert_false(dkim_selector_valid("-a"));
    assert_false(dkim_selector_valid("a-"));
    assert_false(dkim_selector_valid("a..b"));
    assert_false(dkim_selector_valid(".a"));
    assert_false(dkim_selector_valid("a."));
    assert_false(dkim_selector_valid("a_b"));
    assert_false(dkim_selector_valid("a b"));
    assert_false(dkim_selector_valid("s\xc3\xa9"));
    char label[80];
    memset(label, 'a', 63);
    label[63] = 0;
    assert_true(dkim_selector_valid(label));
    memset(label, 'a', 64);
    label[64] = 0;
    assert_false(dkim_selector_valid(label));
    /* 253 in all, not 254 */
    char name[300];
    size_t n = 0;
    while (n + 64 <= 253) {
        memset(name + n, 'a', 63);
        name[n + 63] = '.';
        n += 64;
    }
    memset(name + n, 'b', 253 - n);
    name[253] = 0;
    assert_true(dkim_domain_valid(name));
    name[253] = 'c';
    name[254] = 0;
    assert_false(dkim_domain_valid(name));

    assert_true(dkim_domain_valid("example.com"));
    assert_true(dkim_domain_valid("mail.origin.test"));
    assert_true(dkim_domain_valid("xn--bcher-kva.example"));
    assert_false(dkim_domain_valid("localhost"));
    assert_false(dkim_domain_valid("example.com."));
    assert_false(dkim_domain_valid("[192.0.2.1]"));
    assert_false(dkim_domain_valid("b\xc3\xbc"
                                   "cher.example"));
}

static void test_zone_line_splits_at_255(void **state)
{
    (void)state;
    buf_t out;
    buf_init(&out);
    assert_int_equal(dkim_zone_line("example.com", "s1", "v=DKIM1; k=ed25519; p=abc", &out), 0);
    assert_string_equal(out.data,
                        "s1._domainkey.example.com. IN TXT \"v=DKIM1; k=ed25519; p=abc\"");
    buf_reset(&out);

    /* 255 octets: one string; 256: two; 600: 255, 255 and 90 */
    char rec[601];
    for (size_t i = 0; i < 600; i++)
        rec[i] = (char)('A' + i % 26);
    size_t lens[] = {255, 256, 600};
    for (size_t t = 0; t < 3; t++) {
        rec[lens[t]] = 0;
        buf_reset(&out);
        assert_int_equal(dkim_zone_line("example.com", "s1", rec, &out), 0);
        const char *p = strstr(out.data, " IN TXT ");
        assert_non_null(p);
        p += 8;
        size_t got = 0, strings = 0;
        while (*p == '"') {
            const char *end = strchr(p + 1, '"');
            assert_non_null(end);
            size_t n = (size_t)(end - p - 1);
            assert_true(n <= 255);
            assert_memory_equal(p + 1, rec + got, n);
            got += n;
            strings++;
            p = end + 1;
            if (*p == ' ') p++;
        }
        assert_int_equal(*p, 0);
        assert_int_equal(got, lens[t]);
        assert_int_equal(strings, (lens[t] + 254) / 255);
        rec[lens[t]] = (char)('A' + lens[t] % 26);
    }

    /* '"' and '\\' escaped; the 255 counts octets, not escapes */
    buf_reset(&out);
    assert_int_equal(dkim_zone_line("example.com", "s1", "a\"b\\c", &out), 0);
    assert_string_equal(out.data, "s1._domainkey.example.com. IN TXT \"a\\\"b\\\\c\"");

    /* refusals leave out as it was */
    buf_reset(&out);
    assert_int_equal(dkim_zone_line("localhost", "s1", "v=DKIM1", &out), -1);
    assert_int_equal(dkim_zone_line("example.com", "s_1", "v=DKIM1", &out), -1);
    assert_int_equal(dkim_zone_line("example.com", "s1", "v=DKIM1;\n", &out), -1);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

/* The RSA record of a real key in the zone line: its strings put together
 * are the record. */
static void test_zone_line_of_rsa_record(void **state)
{
    (void)state;
    char err[256];
    buf_t pem, rec, line;
    buf_init(&pem);
    buf_init(&rec);
    buf_init(&line);
    assert_int_equal(dkim_keygen(DKIM_RSA, 3072, &pem, err, sizeof err), 0);
    dkim_key_t *k = dkim_key_load(pem.data, pem.len, err, sizeof err);
    assert_non_null(k);
    assert_int_equal(dkim_key_bits(k), 3072);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    assert_int_equal(dkim_zone_line("origin.test", "rsa-1", rec.data, &line), 0);
    assert_true(strstr(line.data, "rsa-1._domainkey.origin.test. IN TXT \"v=DKIM1; k=rsa; p=") ==
                line.data);
    char joined[2048];
    size_t n = 0;
    for (const char *p = strchr(line.data, '"'); p; p = strchr(p + 1, '"')) {
        const char *end = strchr(p + 1, '"');
        assert_true((size_t)(end - p - 1) <= 255);
        memcpy(joined + n, p + 1, (size_t)(end - p - 1));
        n += (size_t)(end - p - 1);
        p = end;
    }
    joined[n] = 0;
    assert_string_equal(joined, rec.data);
    dkim_key_free(k);
    buf_free(&pem);
    buf_free(&rec);
    buf_free(&line);
}

/* ---- the From domain ---- */

static int from_domain(const char *msg, char *out)
{
    return dkim_from_domain(msg, strlen(msg), out, 256);
}

static void test_from_domain(void **state)
{
    (void)state;
    char d[256];
    assert_int_equal(from_domain("From: a@Example.COM\r\n\r\nbody\r\n", d), 0);
    assert_string_equal(d, "example.com");
    assert_int_equal(from_domain("To: x@y.test\r\nFROM: \"Doe, Jane\" <jane@Mail.Origin.Test>"
                                 " (comment)\r\n\r\n",
                                 d),
                     0);
    assert_string_equal(d, "mail.origin.test");
    /* folded, and a message that is all header */
    assert_int_equal(from_domain("Subject: x\r\nFrom: Jane\r\n <jane@origin.test>", d), 0);
    assert_string_equal(d, "origin.test");
    /* a group holding one address counts as that address */
    assert_int_equal(from_domain("From: team: a@one.test;\r\n\r\n", d), 0);
    assert_string_equal(d, "one.test");
    /* "From:" in the body is no field */
    assert_int_equal(from_domain("To: x@y.test\r\n\r\nFrom: a@b.test\r\n", d), -1);

    assert_int_equal(from_domain("To: x@y.test\r\n\r\n", d), -1); /* none */
    assert_int_equal(from_domain("From: a@one.test\r\nFrom: b@one.test\r\n\r\n", d), -1);
    assert_int_equal(from_domain("From: a@one.test, b@one.test\r\n\r\n", d), -1);
    assert_int_equal(from_domain("From: undisclosed:;\r\n\r\n", d), -1); /* empty group */
    assert_int_equal(from_domain("From: g: a@one.test, b@two.test;\r\n\r\n", d), -1);
    assert_int_equal(from_domain("From: not an address\r\n\r\n", d), -1);
    assert_int_equal(from_domain("From:\r\n\r\n", d), -1);
    assert_int_equal(from_domain("From: a@[192.0.2.1]\r\n\r\n", d), -1); /* a literal */
    assert_int_equal(from_domain("From: a@localhost\r\n\r\n", d), -1);   /* one label */
    /* A UTF-8 domain (RFC 6532) is told apart from a missing From: the
     * worker counts it under a reason of its own; the local part alone in
     * UTF-8 is signed as usual. */
    d[0] = 'x';
    assert_int_equal(from_domain("From: a@b\xc3\xbc.example\r\n\r\n", d), -2);
    assert_int_equal(d[0], 'x'); /* nothing written */
    assert_int_equal(from_domain("From: J\xc3\xb6rg <j\xc3\xb6rg@m\xc3\xbcnchen.test>\r\n\r\n", d),
                     -2);
    assert_int_equal(from_domain("From: j\xc3\xb6rg@M\xc3\xbcnchen\r\n\r\n", d), -2);
    assert_int_equal(from_domain("From: j\xc3\xb6rg@Origin.test\r\n\r\n", d), 0);
    assert_string_equal(d, "origin.test");
    /* still -1 when there are several addresses, UTF-8 or not */
    assert_int_equal(from_domain("From: a@b\xc3\xbc.example, c@d.test\r\n\r\n", d), -1);
    assert_int_equal(from_domain("", d), -1);
    /* a domain that does not fit out */
    const char msg[] = "From: a@origin.test\r\n\r\n";
    assert_int_equal(dkim_from_domain(msg, sizeof msg - 1, d, 11), -1);
    assert_int_equal(dkim_from_domain(msg, sizeof msg - 1, d, 12), 0);
    assert_string_equal(d, "origin.test");
}

/* ---- signing ---- */

static dkim_key_t *new_key(enum dkim_algorithm a)
{
    char err[256];
    buf_t pem;
    buf_init(&pem);
    assert_int_equal(dkim_keygen(a, 0, &pem, err, sizeof err), 0);
    dkim_key_t *k = dkim_key_load(pem.data, pem.len, err, sizeof err);
    assert_non_null(k);
    sodium_memzero(pem.data, pem.len);
    buf_free(&pem);
    return k;
}

/* The fields out holds (each ending CRLF), every line at most 78 octets. */
static size_t count_fields(const buf_t *out)
{
    size_t fields = 0;
    const char *p = out->data, *end = out->data + out->len;
    while (p < end) {
        const char *crlf = strstr(p, "\r\n");
        assert_non_null(crlf);
        assert_true(crlf - p <= 78);
        if (*p != ' ' && *p != '\t') {
            assert_memory_equal(p, "DKIM-Signature: ", 16);
            fields++;
        }
        p = crlf + 2;
    }
    return fields;
}

static void test_sign_fields_and_tags(void **state)
{
    (void)state;
    dkim_key_t *ed = new_key(DKIM_ED25519), *rsa = new_key(DKIM_RSA);
    const char msg[] = "Received: from x\r\n"
                       "From: a@origin.test\r\n"
                       "To: b@dest.test\r\n"
                       "X-Other: not signed\r\n"
                       "to: c@dest.test\r\n"
                       "List-Id: <l.origin.test>\r\n"
                       "List-Bad;name: x\r\n"
                       "Content-Transfer-Encoding: 8bit\r\n"
                       "Autocrypt: addr=a@origin.test; keydata=AAAA\r\n"
                       "\r\n"
                       "body\r\n";
    dkim_signer_t s[2] = {{ed, "origin.test", "ed1"}, {rsa, "origin.test", "rsa1"}};
    buf_t out;
    buf_init(&out);
    char err[256], v[1024];
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, s, 2, 1700000000, 3600, &out, err, sizeof err),
                     0);
    assert_int_equal(count_fields(&out), 2);
    const char *second = strstr(out.data + 1, "\r\nDKIM-Signature:") + 2;
    out.data[second - out.data - 1] = 0; /* the first field alone, up to its CR */
    expect_tag(out.data, "a", "ed25519-sha256");
    expect_tag(second, "a", "rsa-sha256");
    expect_tag(second, "s", "rsa1");
    expect_tag(out.data, "v", "1");
    expect_tag(out.data, "c", "relaxed/relaxed");
    expect_tag(out.data, "d", "origin.test");
    expect_tag(out.data, "t", "1700000000");
    expect_tag(out.data, "x", "1700003600");
    expect_tag(out.data, "h", "autocrypt:content-transfer-encoding:list-id:to:to:from:from");
    assert_false(tag_value(out.data, "l", v, sizeof v));
    assert_false(tag_value(out.data, "i", v, sizeof v));
    assert_true(tag_value(out.data, "b", v, sizeof v));
    assert_int_equal(strlen(v), 88); /* 64 octets */
    assert_true(tag_value(second, "b", v, sizeof v));
    assert_int_equal(strlen(v), 344); /* 256 octets */
    char bh1[64], bh2[64];
    assert_true(tag_value(out.data, "bh", bh1, sizeof bh1));
    assert_true(tag_value(second, "bh", bh2, sizeof bh2));
    assert_string_equal(bh1, bh2);
    buf_reset(&out);

    /* no x= without expiry; a message that is all header has the empty
     * body's hash (SHA-256 of nothing) */
    const char header_only[] = "From: a@origin.test\r\nSubject: hi";
    assert_int_equal(
        dkim_sign(header_only, sizeof header_only - 1, s, 1, 1700000000, 0, &out, err, sizeof err),
        0);
    assert_false(tag_value(out.data, "x", v, sizeof v));
    expect_tag(out.data, "bh", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    expect_tag(out.data, "h", "subject:from:from");
    buf_free(&out);
    dkim_key_free(ed);
    dkim_key_free(rsa);
}

static void test_sign_refusals(void **state)
{
    (void)state;
    dkim_key_t *ed = new_key(DKIM_ED25519);
    const char msg[] = "From: a@origin.test\r\n\r\nx\r\n";
    buf_t out;
    buf_init(&out);
    buf_append(&out, "kept", 4);
    char err[256];
    dkim_signer_t good = {ed, "origin.test", "s1"};
    dkim_signer_t bad_domain = {ed, "origin", "s1"};
    dkim_signer_t bad_selector = {ed, "origin.test", "s 1"};
    dkim_signer_t no_key = {NULL, "origin.test", "s1"};
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, &good, 0, 1, 0, &out, err, sizeof err), -1);
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, NULL, 1, 1, 0, &out, err, sizeof err), -1);
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, &bad_domain, 1, 1, 0, &out, err, sizeof err),
                     -1);
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, &bad_selector, 1, 1, 0, &out, err, sizeof err),
                     -1);
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, &no_key, 1, 1, 0, &out, err, sizeof err), -1);
    assert_int_equal(dkim_sign(NULL, 5, &good, 1, 1, 0, &out, err, sizeof err), -1);
    assert_int_equal(dkim_sign(msg, sizeof msg - 1, &good, 1, -1, 0, &out, err, sizeof err), -1);
    dkim_signer_t many[DKIM_SIGNERS_MAX + 1];
    for (unsigned i = 0; i <= DKIM_SIGNERS_MAX; i++)
        many[i] = good;
    assert_int_equal(
        dkim_sign(msg, sizeof msg - 1, many, DKIM_SIGNERS_MAX + 1, 1, 0, &out, err, sizeof err),
        -1);
    assert_int_equal(out.len, 4);
    assert_int_equal(
        dkim_sign(msg, sizeof msg - 1, many, DKIM_SIGNERS_MAX, 1, 0, &out, err, sizeof err), 0);
    assert_memory_equal(out.data, "kept", 4);
    buf_free(&out);
    dkim_key_free(ed);
}

/* A long From and a long list of signed fields still fold within 78. */
static void test_sign_folds_long_fields(void **state)
{
    (void)state;
    dkim_key_t *ed = new_key(DKIM_ED25519);
    buf_t msg, out;
    buf_init(&msg);
    buf_init(&out);
    buf_printf(&msg, "From: a@origin.test\r\n");
    for (int i = 0; i < 40; i++)
        buf_printf(&msg, "List-Archive-Number-%02d: <x>\r\nReferences: <%d@x>\r\n", i, i);
    buf_printf(&msg, "\r\nbody\r\n");
    dkim_signer_t s = {ed, "a-rather-long-subdomain.of.a-rather-long-domain.example",
                       "a-long-selector-name-2024"};
    char err[256];
    assert_int_equal(dkim_sign(msg.data, msg.len, &s, 1, 1, 0, &out, err, sizeof err), 0);
    assert_int_equal(count_fields(&out), 1);
    char h[4096];
    assert_true(tag_value(out.data, "h", h, sizeof h));
    assert_int_equal(strncmp(h, "references:list-archive-number-39:references:", 45), 0);
    buf_free(&msg);
    buf_free(&out);
    dkim_key_free(ed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc6376_example),
        cmocka_unit_test(test_canon_body_edges),
        cmocka_unit_test(test_canon_header_edges),
        cmocka_unit_test(test_rfc8463_body_hash),
        cmocka_unit_test(test_rfc8463_signature_verifies_over_our_canon),
        cmocka_unit_test(test_rfc8463_our_signature_verifies),
        cmocka_unit_test(test_algorithm_names),
        cmocka_unit_test(test_keygen_and_load),
        cmocka_unit_test(test_key_load_refusals),
        cmocka_unit_test(test_selector_and_domain_valid),
        cmocka_unit_test(test_zone_line_splits_at_255),
        cmocka_unit_test(test_zone_line_of_rsa_record),
        cmocka_unit_test(test_from_domain),
        cmocka_unit_test(test_sign_fields_and_tags),
        cmocka_unit_test(test_sign_refusals),
        cmocka_unit_test(test_sign_folds_long_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
