/* DKIM signing (RFC 6376) for what the workers send: keys and their DNS
 * records through OpenSSL's EVP, and the relaxed canonicalisation of header
 * and body (§3.4.2, §3.4.4) written here, because it is short, it is the
 * part every interoperability bug of DKIM lives in, and it must hash a body
 * in place without copying it (tests/integration/test_dkim_canon.py checks
 * it against dkimpy, tests/fuzz/fuzz_dkim.c against its own invariants).
 *
 * a=ed25519-sha256 follows RFC 8463: the Ed25519 signature (PureEdDSA) is
 * made over the 32-octet SHA-256 digest of the canonical header data, not
 * over the data itself; a=rsa-sha256 is RSASSA-PKCS1-v1_5 over SHA-256 of
 * the data. */
#include "crypto/internal.h"
#include "proto/proto.h"

#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define RSA_BITS_DEFAULT 2048
#define RSA_BITS_MIN     2048
#define RSA_BITS_MAX     8192
#define ED25519_BITS     256
#define ED25519_RAW      32
/* An 8192-bit RSA key in PEM is about 6.4 KB: anything far larger is no key. */
#define PEM_MAX        (64 * 1024)
#define TXT_STRING_MAX 255

struct dkim_key {
    EVP_PKEY *pkey;
    enum dkim_algorithm algorithm;
    unsigned bits;
};

static const char *const algorithm_names[DKIM_ALGORITHMS] = {"ed25519", "rsa"};
static const char *const algorithm_tags[DKIM_ALGORITHMS] = {"ed25519-sha256", "rsa-sha256"};

const char *dkim_algorithm_name(enum dkim_algorithm a)
{
    return (unsigned)a < DKIM_ALGORITHMS ? algorithm_names[a] : "unknown";
}

const char *dkim_algorithm_tag(enum dkim_algorithm a)
{
    return (unsigned)a < DKIM_ALGORITHMS ? algorithm_tags[a] : "unknown";
}

int dkim_algorithm_parse(const char *name, enum dkim_algorithm *out)
{
    for (unsigned i = 0; i < DKIM_ALGORITHMS; i++)
        if (name && !strcmp(name, algorithm_names[i])) {
            *out = (enum dkim_algorithm)i;
            return 0;
        }
    return -1;
}

/* OpenSSL's reason for the last failure, for an error message. */
static const char *openssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* ---- keys ---- */

int dkim_keygen(enum dkim_algorithm a, unsigned bits, buf_t *pem, char *err, size_t errlen)
{
    EVP_PKEY *pkey = NULL;
    ERR_clear_error();
    if (a == DKIM_ED25519) {
        if (bits != 0 && bits != ED25519_BITS) {
            snprintf(err, errlen, "an ed25519 key has no choice of size");
            return -1;
        }
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    } else if (a == DKIM_RSA) {
        if (bits == 0) bits = RSA_BITS_DEFAULT;
        if (bits < RSA_BITS_MIN || bits > RSA_BITS_MAX) {
            snprintf(err, errlen, "an RSA key has %d to %d bits", RSA_BITS_MIN, RSA_BITS_MAX);
            return -1;
        }
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
    } else {
        snprintf(err, errlen, "unknown algorithm");
        return -1;
    }
    if (!pkey) {
        snprintf(err, errlen, "key generation failed: %s", openssl_reason());
        return -1;
    }
    /* Secure memory: the BIO's copy of the key is wiped when it is freed. */
    BIO *bio = BIO_new(BIO_s_secmem());
    int rc = -1;
    BUF_MEM *mem = NULL;
    if (bio && PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) == 1 &&
        BIO_get_mem_ptr(bio, &mem) == 1 && mem)
        rc = buf_append(pem, mem->data, mem->length);
    if (rc < 0) snprintf(err, errlen, "writing the key failed: %s", openssl_reason());
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return rc;
}

/* PEM_read_bio_PrivateKey's passphrase callback: an encrypted key is refused
 * rather than prompted for on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return -1;
}

dkim_key_t *dkim_key_load(const char *pem, size_t len, char *err, size_t errlen)
{
    if (!pem || len == 0 || len > PEM_MAX) {
        snprintf(err, errlen, "not a PEM private key (empty, or over %d octets)", PEM_MAX);
        return NULL;
    }
    ERR_clear_error();
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    if (!pkey) {
        snprintf(err, errlen, "not a PEM private key (PKCS#8 or RSA, unencrypted): %s",
                 openssl_reason());
        return NULL;
    }
    struct dkim_key key = {.pkey = pkey};
    if (EVP_PKEY_is_a(pkey, "ED25519")) {
        key.algorithm = DKIM_ED25519;
        key.bits = ED25519_BITS;
    } else if (EVP_PKEY_is_a(pkey, "RSA")) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < RSA_BITS_MIN || bits > RSA_BITS_MAX) {
            snprintf(err, errlen, "an RSA key of %d bits: DKIM keys have %d to %d (RFC 8301)", bits,
                     RSA_BITS_MIN, RSA_BITS_MAX);
            EVP_PKEY_free(pkey);
            return NULL;
        }
        key.algorithm = DKIM_RSA;
        key.bits = (unsigned)bits;
    } else {
        snprintf(err, errlen, "a %s key: DKIM signs with ed25519 or rsa",
                 EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "unknown");
        EVP_PKEY_free(pkey);
        return NULL;
    }
    dkim_key_t *k = malloc(sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        EVP_PKEY_free(pkey);
        return NULL;
    }
    *k = key;
    return k;
}

void dkim_key_free(dkim_key_t *k)
{
    if (!k) return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

enum dkim_algorithm dkim_key_algorithm(const dkim_key_t *k)
{
    return k->algorithm;
}

unsigned dkim_key_bits(const dkim_key_t *k)
{
    return k->bits;
}

/* bin in base64 (with padding) appended to out. */
static int append_base64(buf_t *out, const unsigned char *bin, size_t len)
{
    size_t b64_len = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    if (buf_reserve(out, b64_len) < 0) return -1;
    sodium_bin2base64(out->data + out->len, b64_len, bin, len, sodium_base64_VARIANT_ORIGINAL);
    out->len += b64_len - 1; /* without the NUL sodium writes */
    return 0;
}

int dkim_key_record(const dkim_key_t *k, buf_t *out)
{
    size_t was = out->len;
    unsigned char raw[ED25519_RAW];
    unsigned char *der = NULL;
    int rc = -1;
    if (k->algorithm == DKIM_ED25519) {
        size_t raw_len = sizeof raw;
        if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &raw_len) == 1 && raw_len == ED25519_RAW &&
            buf_printf(out, "v=DKIM1; k=ed25519; p=") == 0)
            rc = append_base64(out, raw, raw_len);
    } else {
        int der_len = i2d_PUBKEY(k->pkey, &der);
        if (der_len > 0 && buf_printf(out, "v=DKIM1; k=rsa; p=") == 0)
            rc = append_base64(out, der, (size_t)der_len);
        OPENSSL_free(der);
    }
    if (rc < 0) {
        out->len = was;
        if (out->data) out->data[was] = 0;
    }
    return rc;
}

/* Dot-separated labels of letters, digits and hyphens, 1..63 octets each,
 * not starting or ending with a hyphen; at most 253 octets. Counts the
 * labels into *labels. */
static bool hostname_valid(const char *name, unsigned *labels)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > 253) return false;
    *labels = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = name[i];
        if (c == '.' || c == 0) {
            size_t n = i - start;
            if (n == 0 || n > 63 || name[start] == '-' || name[i - 1] == '-') return false;
            (*labels)++;
            start = i + 1;
        } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-')) {
            return false;
        }
    }
    return true;
}

bool dkim_selector_valid(const char *name)
{
    unsigned labels;
    return hostname_valid(name, &labels);
}

bool dkim_domain_valid(const char *name)
{
    unsigned labels;
    return hostname_valid(name, &labels) && labels >= 2;
}

/* A zone file's character-strings (RFC 1035 §5.1) hold at most 255 octets
 * each; a TXT record is their concatenation, so an RSA record is cut into
 * several. The limit counts the octets, not the backslashes escaping them. */
int dkim_zone_line(const char *domain, const char *selector, const char *record, buf_t *out)
{
    if (!dkim_domain_valid(domain) || !dkim_selector_valid(selector) || !record) return -1;
    for (const char *p = record; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) return -1;
    size_t was = out->len;
    int rc = buf_printf(out, "%s._domainkey.%s. IN TXT", selector, domain);
    size_t len = strlen(record), i = 0;
    do {
        size_t n = len - i < TXT_STRING_MAX ? len - i : TXT_STRING_MAX;
        rc |= buf_append(out, " \"", 2);
        for (size_t j = i; j < i + n && rc == 0; j++) {
            if (record[j] == '"' || record[j] == '\\') rc |= buf_append(out, "\\", 1);
            rc |= buf_append(out, &record[j], 1);
        }
        rc |= buf_append(out, "\"", 1);
        i += n;
    } while (i < len && rc == 0);
    if (rc != 0) {
        out->len = was;
        if (out->data) out->data[was] = 0;
        return -1;
    }
    return 0;
}

/* ---- the From domain ---- */

struct from_count {
    size_t n;
    char domain[256];
};

static void take_from_address(const char *addr, size_t len, void *arg)
{
    struct from_count *c = arg;
    if (c->n++ > 0) return;
    const char *at = memrchr(addr, '@', len);
    size_t dlen = at ? len - (size_t)(at + 1 - addr) : 0;
    if (dlen == 0 || dlen >= sizeof c->domain) {
        c->domain[0] = 0;
        return;
    }
    memcpy(c->domain, at + 1, dlen);
    c->domain[dlen] = 0;
}

/* One From field with one address (RFC 6376 §3.10 takes the domain DMARC
 * aligns with from it); a group in From (which RFC 5322 does not allow
 * there) counts by the addresses it holds. */
int dkim_from_domain(const char *msg, size_t len, char *out, size_t size)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    unsigned fields = 0;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (f.name_len == 4 && !strncasecmp(f.name, "From", 4)) fields++;
    if (fields != 1) return -1;
    struct from_count c = {0};
    proto_header_addresses(msg, len, "From", take_from_address, &c);
    if (c.n != 1 || !dkim_domain_valid(c.domain)) return -1;
    size_t dlen = strlen(c.domain);
    if (dlen >= size) return -1;
    for (size_t i = 0; i <= dlen; i++)
        out[i] =
            (c.domain[i] >= 'A' && c.domain[i] <= 'Z') ? (char)(c.domain[i] + 32) : c.domain[i];
    return 0;
}
