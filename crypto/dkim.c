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
#include <stdarg.h>
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
#define PEM_MAX        65536
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

/* Takes out back to its first len octets, after a failure. */
static void restore(buf_t *out, size_t len)
{
    out->len = len;
    if (out->data) out->data[len] = 0;
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
        restore(out, was);
    }
    return rc;
}

/* A selector and a signing domain follow the host name rules SMTP uses
 * (net_domain_valid: the same labels, length and no trailing dot), so the
 * configuration and the key store agree on what a domain is; a signing
 * domain has two labels at least, as no key is published for a TLD. */
bool dkim_selector_valid(const char *name)
{
    return name && net_domain_valid(name);
}

bool dkim_domain_valid(const char *name)
{
    return dkim_selector_valid(name) && strchr(name, '.');
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
        restore(out, was);
        return -1;
    }
    return 0;
}

/* ---- the From domain ---- */

struct from_count {
    size_t n;
    bool not_ascii; /* the domain has octets over 127: UTF-8 (RFC 6532) */
    char domain[256];
};

static void take_from_address(const char *addr, size_t len, void *arg)
{
    struct from_count *c = arg;
    if (c->n++ > 0) return;
    const char *at = memrchr(addr, '@', len);
    size_t dlen = at ? len - (size_t)(at + 1 - addr) : 0;
    for (size_t i = 0; i < dlen; i++)
        if ((unsigned char)at[1 + i] > 0x7f) c->not_ascii = true;
    if (dlen == 0 || dlen >= sizeof c->domain) {
        c->domain[0] = 0;
        return;
    }
    memcpy(c->domain, at + 1, dlen);
    c->domain[dlen] = 0;
}

/* One From field with one address (RFC 6376 §3.10 takes the domain DMARC
 * aligns with from it); a group in From (which RFC 5322 does not allow
 * there) counts by the addresses it holds. A UTF-8 domain is told apart
 * (-2): signing it would need its A-label form (IDNA), which we do not
 * make, and the worker counts it as a reason of its own. */
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
    if (c.n != 1) return -1;
    if (c.not_ascii) return -2;
    if (!dkim_domain_valid(c.domain)) return -1;
    size_t dlen = strlen(c.domain);
    if (dlen >= size) return -1;
    memcpy(out, c.domain, dlen + 1); /* proto_header_addresses lower-cased it */
    return 0;
}

/* ---- relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4) ---- */

/* The canonical header values are the message's plaintext: wiped before
 * the memory goes back to the allocator. */
static void buf_wipe_free(buf_t *b)
{
    if (b->data) sodium_memzero(b->data, b->cap);
    buf_free(b);
}

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Where the canonical body goes: gathered in a small buffer and handed on in
 * pieces, to a buf_t for dkim_canon_body or straight into the body hash for
 * dkim_sign, so a body is never copied whole. */
typedef int (*canon_sink_fn)(const char *p, size_t n, void *arg);

struct canon_out {
    canon_sink_fn sink;
    void *arg;
    int rc;
    size_t len;
    char pending[4096];
};

static void canon_flush(struct canon_out *o)
{
    if (o->len && o->rc == 0) o->rc = o->sink(o->pending, o->len, o->arg);
    o->len = 0;
}

static void canon_put(struct canon_out *o, const char *p, size_t n)
{
    while (n > 0 && o->rc == 0) {
        if (o->len == sizeof o->pending) canon_flush(o);
        size_t room = sizeof o->pending - o->len;
        size_t k = n < room ? n : room;
        memcpy(o->pending + o->len, p, k);
        o->len += k;
        p += k;
        n -= k;
    }
}

/* The end of the line starting at pos: the offset of its CRLF, or len for a
 * last line without one. A bare LF or CR is an octet of the line. */
static size_t line_end(const char *body, size_t len, size_t pos)
{
    while (pos < len) {
        const char *lf = memchr(body + pos, '\n', len - pos);
        if (!lf) return len;
        size_t at = (size_t)(lf - body);
        if (at > 0 && body[at - 1] == '\r' && at - 1 >= pos) return at - 1;
        pos = at + 1;
    }
    return len;
}

/* One line without its trailing white space (end > start, and body[end-1]
 * is no WSP): each run of WSP in it becomes one SP. */
static void canon_line(struct canon_out *o, const char *body, size_t start, size_t end)
{
    size_t i = start;
    while (i < end) {
        size_t word = i;
        while (i < end && !is_wsp(body[i]))
            i++;
        canon_put(o, body + word, i - word);
        if (i == end) break;
        while (is_wsp(body[i]))
            i++;
        canon_put(o, " ", 1);
    }
}

/* Empty lines are held back (counted) until a line with content follows:
 * those at the end of the body are dropped, as §3.4.4 b asks, without
 * looking ahead. White space at the end of the last line counts as at the
 * end of a line even without a CRLF after it, so a body "x CRLF SP" is
 * "x CRLF", as OpenDKIM has it (dkimpy keeps "SP CRLF" there; no SMTP body
 * ends without CRLF). */
static int canon_body_to(const char *body, size_t len, canon_sink_fn sink, void *arg)
{
    struct canon_out o = {.sink = sink, .arg = arg};
    size_t held = 0, pos = 0;
    while (pos < len && o.rc == 0) {
        size_t eol = line_end(body, len, pos);
        size_t end = eol;
        while (end > pos && is_wsp(body[end - 1]))
            end--;
        if (end == pos) {
            held++;
        } else {
            for (; held > 0; held--)
                canon_put(&o, "\r\n", 2);
            canon_line(&o, body, pos, end);
            canon_put(&o, "\r\n", 2);
        }
        pos = eol < len ? eol + 2 : len;
    }
    canon_flush(&o);
    sodium_memzero(o.pending, sizeof o.pending); /* the end of the plaintext body */
    return o.rc;
}

static int sink_buf(const char *p, size_t n, void *arg)
{
    return buf_append(arg, p, n);
}

int dkim_canon_body(const char *body, size_t len, buf_t *out)
{
    size_t was = out->len;
    if (canon_body_to(body, len, sink_buf, out) == 0) return 0;
    restore(out, was);
    return -1;
}

int dkim_canon_header(const char *field, size_t len, buf_t *out)
{
    const char *colon = field ? memchr(field, ':', len) : NULL;
    if (!colon) return -1;
    size_t name_len = (size_t)(colon - field);
    while (name_len > 0 && is_wsp(field[name_len - 1]))
        name_len--;
    if (name_len == 0) return -1;
    for (size_t i = 0; i < name_len; i++)
        if ((unsigned char)field[i] <= ' ' || (unsigned char)field[i] >= 0x7f)
            return -1; /* RFC 5322 ftext */
    if (buf_reserve(out, len + 2) < 0) return -1;
    char *w = out->data + out->len;
    for (size_t i = 0; i < name_len; i++)
        *w++ = (field[i] >= 'A' && field[i] <= 'Z') ? (char)(field[i] + 32) : field[i];
    *w++ = ':';
    /* A space is written only between two octets of the value, so none
     * stands after the colon or at the end. */
    bool space = false, any = false;
    for (size_t i = (size_t)(colon - field) + 1; i < len; i++) {
        char c = field[i];
        if (c == '\r' && i + 1 < len && field[i + 1] == '\n') {
            i++;
            continue;
        }
        if (c == '\n') continue;
        if (is_wsp(c)) {
            space = any;
            continue;
        }
        if (space) *w++ = ' ';
        space = false;
        any = true;
        *w++ = c;
    }
    *w++ = '\r';
    *w++ = '\n';
    out->len = (size_t)(w - out->data);
    out->data[out->len] = 0;
    return 0;
}

/* ---- signing ---- */

#define FOLD_AT 78

/* The fields signed besides From, each as many times as it occurs. */
static const char *const signed_names[] = {
    "To",          "Cc",           "Subject",      "Date",
    "Message-ID",  "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "In-Reply-To", "References",   "Reply-To",     "Sender",
    "Autocrypt",
};

static bool name_is(const proto_header_field_t *f, const char *name)
{
    return f->name_len == strlen(name) && !strncasecmp(f->name, name, f->name_len);
}

/* List-Id, List-Unsubscribe and the others (RFC 2369, 2919, 8058): every
 * name "List-" and a token of letters, digits and hyphens, which also keeps
 * h= free of the ';' a field name may hold. */
static bool is_list_field(const proto_header_field_t *f)
{
    if (f->name_len <= 5 || strncasecmp(f->name, "List-", 5) != 0) return false;
    for (size_t i = 5; i < f->name_len; i++) {
        char c = f->name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return false;
    }
    return true;
}

static bool is_signed_field(const proto_header_field_t *f)
{
    if (name_is(f, "From") || is_list_field(f)) return true;
    for (size_t i = 0; i < sizeof signed_names / sizeof *signed_names; i++)
        if (name_is(f, signed_names[i])) return true;
    return false;
}

/* What every signature of one message shares: the h= names and the
 * canonical fields they bind, and the body hash. */
struct signed_part {
    buf_t names;  /* "to:from:...:from;", lower-case */
    buf_t fields; /* the canonical fields, in the order of names */
    char bh[64];  /* base64 of the body's SHA-256 */
};

/* h= lists the signed fields bottom-up: a verifier binds the k-th instance
 * of a name in h= to the k-th instance from the bottom (§5.4.2), so listing
 * them in that order makes the list and the hashed fields agree one for
 * one. One "from" more at the end binds to no field: a From added later
 * breaks the signature (over-signing, §8.15). */
static int collect_fields(const char *msg, size_t len, struct signed_part *sp, size_t *body)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_field_t *list = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    proto_header_iter_init(&it, msg, len);
    while (rc == 0 && proto_header_next(&it, &f)) {
        if (!is_signed_field(&f)) continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            proto_header_field_t *p = reallocarray(list, ncap, sizeof *p);
            if (!p) {
                rc = -1;
                break;
            }
            list = p;
            cap = ncap;
        }
        list[n++] = f;
    }
    *body = it.body;
    size_t room = 0; /* reserved at once: no realloc leaves a copy unwiped */
    for (size_t i = 0; i < n; i++)
        room += list[i].raw_len + 2;
    if (rc == 0) rc = buf_reserve(&sp->fields, room);
    for (size_t i = n; rc == 0 && i-- > 0;) {
        for (size_t j = 0; j < list[i].name_len && rc == 0; j++) {
            char c = list[i].name[j];
            c = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
            rc = buf_append(&sp->names, &c, 1);
        }
        if (rc == 0) rc = buf_append(&sp->names, ":", 1);
        if (rc == 0) rc = dkim_canon_header(list[i].raw, list[i].raw_len, &sp->fields);
    }
    if (rc == 0) rc = buf_append(&sp->names, "from;", 5);
    free(list);
    return rc;
}

static int sink_digest(const char *p, size_t n, void *arg)
{
    return EVP_DigestUpdate(arg, p, n) == 1 ? 0 : -1;
}

static int body_hash(const char *body, size_t len, char bh[64])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = -1;
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
        canon_body_to(body, len, sink_digest, ctx) == 0 &&
        EVP_DigestFinal_ex(ctx, md, &md_len) == 1) {
        sodium_bin2base64(bh, 64, md, md_len, sodium_base64_VARIANT_ORIGINAL);
        rc = 0;
    }
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* The header data signed into sig (which has room for EVP_PKEY_get_size).
 * RSA signs the data with SHA-256 inside; Ed25519 signs the data's SHA-256
 * digest (RFC 8463 §3), PureEdDSA, so OpenSSL is given no digest. */
static int sign_data(const dkim_key_t *k, const buf_t *data, unsigned char *sig, size_t *sig_len)
{
    unsigned char digest[32];
    const unsigned char *tbs = (const unsigned char *)data->data;
    size_t tbs_len = data->len;
    const EVP_MD *md = EVP_sha256();
    if (k->algorithm == DKIM_ED25519) {
        unsigned md_len = 0;
        if (EVP_Digest(data->data, data->len, digest, &md_len, EVP_sha256(), NULL) != 1) return -1;
        tbs = digest;
        tbs_len = md_len;
        md = NULL;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = ctx && EVP_DigestSignInit(ctx, NULL, md, NULL, k->pkey) == 1 &&
                     EVP_DigestSign(ctx, sig, sig_len, tbs, tbs_len) == 1
                 ? 0
                 : -1;
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Writes a header field folded before a piece that would take its line past
 * FOLD_AT octets, where the grammar allows white space (between tags, after
 * a ':' of h=, anywhere in b=). */
struct folder {
    buf_t *out;
    size_t line; /* octets on the current line */
    int rc;
};

static void fold_piece(struct folder *f, const char *sep, const char *piece, size_t n)
{
    size_t sep_len = strlen(sep);
    if (f->line > 1 && f->line + sep_len + n > FOLD_AT) {
        f->rc |= buf_append(f->out, "\r\n ", 3);
        f->line = 1;
    } else {
        f->rc |= buf_append(f->out, sep, sep_len);
        f->line += sep_len;
    }
    f->rc |= buf_append(f->out, piece, n);
    f->line += n;
}

static void fold_tag(struct folder *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fold_tag(struct folder *f, const char *fmt, ...)
{
    char tag[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tag, sizeof tag, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tag) {
        f->rc = -1;
        return;
    }
    fold_piece(f, " ", tag, (size_t)n);
}

/* h=name:name:...; broken after a ':' where a line fills (names ends in
 * ';'). A name is never cut, however long. */
static void fold_names(struct folder *f, const buf_t *names)
{
    const char *p = names->data, *end = names->data + names->len;
    fold_piece(f, " ", "h=", 2);
    while (p < end) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        size_t n = colon ? (size_t)(colon + 1 - p) : (size_t)(end - p);
        fold_piece(f, "", p, n);
        p += n;
    }
}

/* The signature's base64 after "b=", cut to fill each line. */
static void fold_base64(struct folder *f, const char *b64, size_t n)
{
    while (n > 0 && f->rc == 0) {
        if (f->line >= FOLD_AT) {
            f->rc |= buf_append(f->out, "\r\n ", 3);
            f->line = 1;
        }
        size_t k = FOLD_AT - f->line < n ? FOLD_AT - f->line : n;
        f->rc |= buf_append(f->out, b64, k);
        f->line += k;
        b64 += k;
        n -= k;
    }
}

/* One DKIM-Signature field appended to out. Its canonical form up to "b="
 * (the value deleted, §3.5 b=, and no CRLF after it, §3.7) ends the signed
 * data, after the fields h= names. */
static int sign_one(const dkim_signer_t *s, const struct signed_part *sp, long long now,
                    unsigned expire_s, buf_t *out, char *err, size_t errlen)
{
    buf_t field, data;
    buf_init(&field);
    buf_init(&data);
    struct folder f = {.out = &field};
    f.rc = buf_append(&field, "DKIM-Signature:", 15);
    f.line = 15;
    fold_tag(&f, "v=1;");
    fold_tag(&f, "a=%s;", dkim_algorithm_tag(s->key->algorithm));
    fold_tag(&f, "c=relaxed/relaxed;");
    fold_tag(&f, "d=%s;", s->domain);
    fold_tag(&f, "s=%s;", s->selector);
    fold_tag(&f, "t=%lld;", now);
    if (expire_s > 0) fold_tag(&f, "x=%lld;", now + (long long)expire_s);
    fold_names(&f, &sp->names);
    fold_tag(&f, "bh=%s;", sp->bh);
    fold_tag(&f, "b=");
    int rc = f.rc;
    if (rc == 0) rc = buf_reserve(&data, sp->fields.len + field.len + 2);
    if (rc == 0) rc = buf_append(&data, sp->fields.data, sp->fields.len);
    if (rc == 0) rc = dkim_canon_header(field.data, field.len, &data);
    size_t sig_len = (size_t)EVP_PKEY_get_size(s->key->pkey);
    unsigned char *sig = rc == 0 ? malloc(sig_len) : NULL;
    char *b64 = NULL;
    if (rc == 0 && sig) {
        data.len -= 2; /* the CRLF dkim_canon_header ends with */
        rc = sign_data(s->key, &data, sig, &sig_len);
        if (rc < 0) snprintf(err, errlen, "signing failed: %s", openssl_reason());
    } else {
        rc = -1;
        snprintf(err, errlen, "out of memory");
    }
    if (rc == 0) {
        size_t b64_len = sodium_base64_encoded_len(sig_len, sodium_base64_VARIANT_ORIGINAL);
        b64 = malloc(b64_len);
        if (b64) {
            sodium_bin2base64(b64, b64_len, sig, sig_len, sodium_base64_VARIANT_ORIGINAL);
            fold_base64(&f, b64, b64_len - 1);
            f.rc |= buf_append(&field, "\r\n", 2);
        }
        rc = b64 && f.rc == 0 ? buf_append(out, field.data, field.len) : -1;
        if (rc < 0) snprintf(err, errlen, "out of memory");
    }
    free(b64);
    free(sig);
    buf_free(&field);
    buf_wipe_free(&data);
    return rc;
}

static int check_signers(const dkim_signer_t *signers, unsigned n, char *err, size_t errlen)
{
    if (!signers || n == 0 || n > DKIM_SIGNERS_MAX) {
        snprintf(err, errlen, "1 to %d signers", DKIM_SIGNERS_MAX);
        return -1;
    }
    for (unsigned i = 0; i < n; i++) {
        if (!signers[i].key || !signers[i].key->pkey) {
            snprintf(err, errlen, "signer %u has no key", i);
            return -1;
        }
        if (!dkim_domain_valid(signers[i].domain) || !dkim_selector_valid(signers[i].selector)) {
            snprintf(err, errlen, "signer %u: invalid domain or selector", i);
            return -1;
        }
    }
    return 0;
}

int dkim_sign(const char *msg, size_t len, const dkim_signer_t *signers, unsigned n, long long now,
              unsigned expire_s, buf_t *out, char *err, size_t errlen)
{
    if (check_signers(signers, n, err, errlen) < 0) return -1;
    if ((!msg && len > 0) || now < 0) {
        snprintf(err, errlen, "no message, or a time before 1970");
        return -1;
    }
    if (!msg) msg = "";
    struct signed_part sp;
    buf_init(&sp.names);
    buf_init(&sp.fields);
    size_t body = 0, was = out->len;
    int rc = collect_fields(msg, len, &sp, &body);
    if (rc < 0) snprintf(err, errlen, "out of memory");
    if (rc == 0 && body_hash(msg + body, len - body, sp.bh) < 0) {
        snprintf(err, errlen, "hashing the body failed: %s", openssl_reason());
        rc = -1;
    }
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = sign_one(&signers[i], &sp, now, expire_s, out, err, errlen);
    if (rc < 0) restore(out, was);
    buf_free(&sp.names);
    buf_wipe_free(&sp.fields);
    return rc;
}
