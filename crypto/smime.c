/* S/MIME (RFC 8551, RFC 5652) through OpenSSL's CMS, in-process: reading
 * certificates at import (smime_inspect), checking one at each use
 * (crypto_cert_check), encrypting (smime_encrypt), and whether a body the
 * sender labelled enveloped data really is (smime_is_enveloped).
 *
 * Three pieces of state, each with its own rule:
 * - the encryption options, written once by crypto_smime_configure before
 *   any thread encrypts; pool threads only read them;
 * - the trust (the X509_STORE of the CA file and CRLs), made by
 *   crypto_smime_trust at start and again on SIGHUP, and read by checks:
 *   all on the event loop (and in the admin CLI), never in a pool thread,
 *   so that a reload needs no lock; every certificate and CRL is loaded up
 *   front, and each verification has its own X509_STORE_CTX and flags;
 * - a cache of decoded certificates and of passed checks (cert_decoded),
 *   which every thread shares under its own lock.
 * Every failure clears the thread's error queue after putting its reason
 * into err, so that no stale error reaches the next call on that thread. */
#include "crypto/internal.h"

#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MIN_RSA_BITS 2048
/* RFC 5280 §4.1.2.5: a notAfter of 99991231235959Z means no expiry. */
#define NO_WELL_DEFINED_EXPIRY 253402300799LL

static struct smime_options {
    bool gcm, oaep;
} options;

static struct smime_trust {
    X509_STORE *store;       /* NULL: no CA file, chains are not checked */
    bool crl;                /* the store holds CRLs: the leaf is checked against them */
    long long crls_stale_at; /* the earliest nextUpdate of those CRLs; 0: none */
} trust;

/* Certificates decoded lately, by a digest of the PEM they came from.
 * Decoding an RSA-3072 certificate costs OpenSSL 3 more than encrypting 4
 * KB to it (its provider decoder: 100-150 us against 80), and each message
 * needs it twice, at RCPT and in the pool thread. A decoded X509 is
 * read-only to all its users and reference-counted, so one copy serves
 * every thread. checked_at..ok_until: when crypto_cert_check last found it
 * usable, and until when that stands (a minute at most, the notAfter and
 * the CRLs' nextUpdate at the latest; made void by crypto_smime_trust). */
#define CERT_CACHE   64
#define CERT_RECHECK 60
static struct cached_cert {
    unsigned char digest[16];
    X509 *x; /* NULL: free */
    long long checked_at, ok_until;
} cert_cache[CERT_CACHE];
static unsigned cert_cache_next;
static pthread_mutex_t cert_cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* err gets OpenSSL's last reason after what; the queue is emptied. */
static int ssl_fail(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char reason[200] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    snprintf(err, errlen, "%s%s%s", what, e ? ": " : "", reason);
    ERR_clear_error();
    return -1;
}

/* ---- the settings ---- */

/* Adds every PEM object of kind crl (or certificates) in path to store;
 * how many, or -1. */
static int store_add_file(X509_STORE *store, const char *path, bool crl, char *err, size_t errlen)
{
    BIO *in = BIO_new_file(path, "r");
    if (!in) {
        snprintf(err, errlen, "%s: cannot be read", path);
        ERR_clear_error();
        return -1;
    }
    int n = 0, ok = 1;
    for (;;) {
        if (crl) {
            X509_CRL *c = PEM_read_bio_X509_CRL(in, NULL, NULL, NULL);
            if (!c) break;
            ok = X509_STORE_add_crl(store, c);
            X509_CRL_free(c);
        } else {
            X509 *x = PEM_read_bio_X509(in, NULL, NULL, NULL);
            if (!x) break;
            ok = X509_STORE_add_cert(store, x);
            X509_free(x);
        }
        if (!ok) break;
        n++;
    }
    BIO_free(in);
    /* The loop ends on the error "no start line" at the file's end. */
    unsigned long e = ERR_peek_last_error();
    bool at_end = ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
    if (!ok || (e && !at_end) || n == 0) {
        char what[600];
        snprintf(what, sizeof what, "%s: %s", path,
                 n == 0 && (!e || at_end) ? (crl ? "no PEM CRL in it" : "no PEM certificate in it")
                                          : "cannot be read");
        return ssl_fail(err, errlen, what);
    }
    ERR_clear_error();
    return n;
}

static long long asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || !ASN1_TIME_to_tm(t, &tm)) return 0;
    return (long long)timegm(&tm);
}

/* When the first of the store's CRLs is past its nextUpdate (0: none has
 * one): a passed check must not stand beyond it. */
static long long crls_stale_at(X509_STORE *store)
{
    long long first = 0;
    STACK_OF(X509_OBJECT) *objects = X509_STORE_get0_objects(store);
    for (int i = 0; i < sk_X509_OBJECT_num(objects); i++) {
        X509_CRL *crl = X509_OBJECT_get0_X509_CRL(sk_X509_OBJECT_value(objects, i));
        long long next = crl ? asn1_unix(X509_CRL_get0_nextUpdate(crl)) : 0;
        if (next > 0 && (first == 0 || next < first)) first = next;
    }
    return first;
}

int crypto_smime_trust(const char *ca_file, const char *crl_file, char *err, size_t errlen)
{
    bool has_ca = ca_file && *ca_file, has_crl = crl_file && *crl_file;
    if (has_crl && !has_ca) {
        snprintf(err, errlen, "smime_crl_file is set without smime_ca_file");
        return -1;
    }
    X509_STORE *store = NULL;
    if (has_ca) {
        store = X509_STORE_new();
        if (!store) return ssl_fail(err, errlen, "out of memory");
        if (store_add_file(store, ca_file, false, err, errlen) < 0 ||
            (has_crl && store_add_file(store, crl_file, true, err, errlen) < 0)) {
            X509_STORE_free(store);
            return -1;
        }
    }
    X509_STORE_free(trust.store);
    trust = (struct smime_trust){
        .store = store, .crl = has_crl, .crls_stale_at = store ? crls_stale_at(store) : 0};
    pthread_mutex_lock(&cert_cache_lock);
    for (unsigned i = 0; i < CERT_CACHE; i++) /* judged under the store before */
        cert_cache[i].checked_at = cert_cache[i].ok_until = 0;
    pthread_mutex_unlock(&cert_cache_lock);
    return 0;
}

int crypto_smime_configure(const crypto_smime_options_t *o, char *err, size_t errlen)
{
    if (crypto_smime_trust(o->ca_file, o->crl_file, err, errlen) < 0) return -1;
    options = (struct smime_options){.gcm = o->gcm, .oaep = o->oaep};
    return 0;
}

/* ---- one certificate's checks ---- */

static int key_type(const X509 *x)
{
    EVP_PKEY *pk = X509_get0_pubkey(x);
    return pk ? EVP_PKEY_get_base_id(pk) : NID_undef;
}

/* The NIST curves of RFC 5753 and RFC 8551 §2.7.1.1's ECDH: what mail
 * clients read. OpenSSL's CMS would take any named curve it knows. */
static bool curve_supported(const X509 *x)
{
    char name[64];
    size_t n = 0;
    if (!EVP_PKEY_get_utf8_string_param(X509_get0_pubkey(x), OSSL_PKEY_PARAM_GROUP_NAME, name,
                                        sizeof name, &n))
        return false;
    return !strcmp(name, "prime256v1") || !strcmp(name, "secp384r1") || !strcmp(name, "secp521r1");
}

/* Why the key itself cannot take mail, or NULL. */
static const char *key_unusable(const X509 *x)
{
    int type = key_type(x);
    if (type == EVP_PKEY_RSA)
        return EVP_PKEY_get_bits(X509_get0_pubkey(x)) < MIN_RSA_BITS
                   ? "RSA key shorter than 2048 bits"
                   : NULL;
    if (type == EVP_PKEY_EC)
        return curve_supported(x) ? NULL : "EC key not on P-256, P-384 or P-521";
    return "key type cannot encrypt (RSA or EC only)";
}

/* keyUsage, when present, must allow what the key does in CMS: wrap the
 * content key (RSA) or agree on one (ECDH). */
static bool key_usage_allows(X509 *x)
{
    if (!(X509_get_extension_flags(x) & EXFLAG_KUSAGE)) return true;
    uint32_t ku = X509_get_key_usage(x);
    int type = key_type(x);
    return (type == EVP_PKEY_RSA && (ku & KU_KEY_ENCIPHERMENT)) ||
           (type == EVP_PKEY_EC && (ku & KU_KEY_AGREEMENT));
}

static bool extended_key_usage_allows(X509 *x)
{
    if (!(X509_get_extension_flags(x) & EXFLAG_XKUSAGE)) return true;
    return X509_get_extended_key_usage(x) & (XKU_SMIME | XKU_ANYEKU);
}

/* The smime encrypt purpose asks keyEncipherment of the leaf, which an
 * ECDH certificate rightly lacks (it has keyAgreement, checked by
 * key_usage_allows before): for an EC leaf that one complaint is waived. The
 * CA certificates' purpose is still checked. */
static int waive_ec_leaf_purpose(int ok, X509_STORE_CTX *ctx)
{
    if (!ok && X509_STORE_CTX_get_error(ctx) == X509_V_ERR_INVALID_PURPOSE &&
        X509_STORE_CTX_get_error_depth(ctx) == 0 &&
        key_type(X509_STORE_CTX_get_current_cert(ctx)) == EVP_PKEY_EC)
        return 1;
    return ok;
}

/* A CRL that cannot serve: missing, stale, unreadable. */
static bool is_crl_error(int e)
{
    switch (e) {
    case X509_V_ERR_UNABLE_TO_GET_CRL:
    case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
    case X509_V_ERR_CRL_NOT_YET_VALID:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD:
    case X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD:
    case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
    case X509_V_ERR_KEYUSAGE_NO_CRL_SIGN:
    case X509_V_ERR_DIFFERENT_CRL_SCOPE:
        return true;
    default:
        return false;
    }
}

/* With a CA file: the chain to it, at now, for S/MIME encryption, and the
 * leaf against the CRLs when there are any. NULL when it holds. in_doubt
 * when what failed is not the certificate but our means of judging it (a
 * CRL missing or past its nextUpdate, no memory): the answer may change
 * without the certificate changing, so mail must wait, not go in clear. */
static const char *chain_unusable(X509 *x, long long now, char *why, size_t whylen, bool *retired,
                                  bool *in_doubt)
{
    if (!trust.store) return NULL;
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!ctx || !X509_STORE_CTX_init(ctx, trust.store, x, NULL)) {
        X509_STORE_CTX_free(ctx);
        ssl_fail(why, whylen, "the chain could not be checked");
        *in_doubt = true;
        return why;
    }
    /* An intermediate in the CA file is an anchor too: the operator's
     * choice of whom to trust, not necessarily a root. */
    X509_STORE_CTX_set_flags(ctx,
                             X509_V_FLAG_PARTIAL_CHAIN | (trust.crl ? X509_V_FLAG_CRL_CHECK : 0));
    X509_STORE_CTX_set_time(ctx, 0, (time_t)now);
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SMIME_ENCRYPT);
    /* Level 2: no signature in the chain by SHA-1 or MD5, no CA key
     * weaker than the 2048-bit RSA a recipient's own key must have. */
    X509_VERIFY_PARAM_set_auth_level(X509_STORE_CTX_get0_param(ctx), 2);
    X509_STORE_CTX_set_verify_cb(ctx, waive_ec_leaf_purpose);
    int ok = X509_verify_cert(ctx), e = X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    if (ok == 1) return NULL;
    if (e == X509_V_ERR_CERT_REVOKED) {
        *retired = true;
        return "revoked (CRL)";
    }
    /* Errors that say nothing of the certificate: a CRL that cannot
     * serve, or OpenSSL unable to finish the check. */
    bool crl = is_crl_error(e);
    *in_doubt = crl || ok < 0 || e == X509_V_ERR_OUT_OF_MEM || e == X509_V_ERR_UNSPECIFIED ||
                e == X509_V_ERR_STORE_LOOKUP;
    snprintf(why, whylen, "%s: %s",
             crl         ? "CRL check failed"
             : *in_doubt ? "the chain could not be checked"
                         : "not signed by the configured CA",
             X509_verify_cert_error_string(e));
    return why;
}

/* The first check x fails at now, or NULL; retired for what no time
 * mends (expired, revoked). why is room for a reason made up here. */
static const char *cert_unusable(X509 *x, long long now, char *why, size_t whylen, bool *retired,
                                 bool *in_doubt)
{
    *retired = *in_doubt = false;
    long long not_after = asn1_unix(X509_get0_notAfter(x));
    if (not_after != NO_WELL_DEFINED_EXPIRY && now > not_after) {
        *retired = true;
        return "expired";
    }
    if (now < asn1_unix(X509_get0_notBefore(x))) return "not yet valid";
    if (X509_get_extension_flags(x) & EXFLAG_INVALID) return "extensions that cannot be read";
    if (!key_usage_allows(x)) return "key usage does not allow encryption";
    if (!extended_key_usage_allows(x)) return "extended key usage does not allow email";
    const char *key = key_unusable(x);
    if (key) return key;
    return chain_unusable(x, now, why, whylen, retired, in_doubt);
}

static X509 *cert_from_pem(const char *pem, size_t len)
{
    if (len > INT_MAX) return NULL;
    BIO *in = BIO_new_mem_buf(pem, (int)len);
    X509 *x = in ? PEM_read_bio_X509(in, NULL, NULL, NULL) : NULL;
    BIO_free(in);
    return x;
}

static void pem_digest(const char *pem, size_t len, unsigned char digest[16])
{
    crypto_generichash(digest, 16, (const unsigned char *)pem, len, NULL, 0);
}

/* The cache's entry for digest, or NULL; under cert_cache_lock. */
static struct cached_cert *cache_find(const unsigned char digest[16])
{
    for (unsigned i = 0; i < CERT_CACHE; i++)
        if (cert_cache[i].x && !memcmp(cert_cache[i].digest, digest, 16)) return &cert_cache[i];
    return NULL;
}

/* The certificate in pem (whose digest is given), decoded: a reference of
 * the caller's own (X509_free it), from the cache when it was decoded
 * lately. NULL when pem holds none. */
static X509 *cert_decoded(const char *pem, size_t len, const unsigned char digest[16])
{
    pthread_mutex_lock(&cert_cache_lock);
    struct cached_cert *c = cache_find(digest);
    X509 *x = c && X509_up_ref(c->x) ? c->x : NULL;
    pthread_mutex_unlock(&cert_cache_lock);
    if (x || !(x = cert_from_pem(pem, len))) return x;
    pthread_mutex_lock(&cert_cache_lock);
    if (!cache_find(digest) && X509_up_ref(x)) { /* another thread may have been quicker */
        c = &cert_cache[cert_cache_next++ % CERT_CACHE];
        X509_free(c->x);
        *c = (struct cached_cert){.x = x};
        memcpy(c->digest, digest, sizeof c->digest);
    }
    pthread_mutex_unlock(&cert_cache_lock);
    return x;
}

/* Whether a check found the certificate usable at a time before now that
 * still stands. */
static bool verdict_stands(const unsigned char digest[16], long long now)
{
    pthread_mutex_lock(&cert_cache_lock);
    const struct cached_cert *c = cache_find(digest);
    bool stands = c && now >= c->checked_at && now < c->ok_until;
    pthread_mutex_unlock(&cert_cache_lock);
    return stands;
}

/* Notes that a check has just found the certificate usable at now: it
 * stands for CERT_RECHECK seconds, and never past its notAfter or the
 * moment a CRL goes stale. */
static void verdict_record(const unsigned char digest[16], long long now, long long not_after)
{
    long long until = now + CERT_RECHECK;
    if (not_after != NO_WELL_DEFINED_EXPIRY && not_after + 1 < until) until = not_after + 1;
    if (trust.crls_stale_at && trust.crls_stale_at < until) until = trust.crls_stale_at;
    pthread_mutex_lock(&cert_cache_lock);
    struct cached_cert *c = cache_find(digest);
    if (c) {
        c->checked_at = now;
        c->ok_until = until;
    }
    pthread_mutex_unlock(&cert_cache_lock);
}

int crypto_cert_check(const char *pem, size_t len, long long now, char *why, size_t whylen)
{
    unsigned char digest[16];
    pem_digest(pem, len, digest);
    if (verdict_stands(digest, now)) return 1;
    X509 *x = cert_decoded(pem, len, digest);
    if (!x) {
        snprintf(why, whylen, "the stored certificate cannot be read");
        ERR_clear_error();
        return -1;
    }
    bool retired, in_doubt;
    char reason[300];
    const char *bad = cert_unusable(x, now, reason, sizeof reason, &retired, &in_doubt);
    if (!bad) verdict_record(digest, now, asn1_unix(X509_get0_notAfter(x)));
    X509_free(x);
    /* Caching extensions or reading a date can leave errors queued: this
     * runs on the event loop, whose TLS reads the same queue. */
    ERR_clear_error();
    if (bad) snprintf(why, whylen, "%s", bad);
    return !bad ? 1 : in_doubt ? -1 : 0;
}

/* ---- describing a certificate ---- */

static char *bio_text(BIO *b)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s) {
        if (n > 0) memcpy(s, p, (size_t)n);
        s[n] = 0;
    }
    return s;
}

/* RFC 2253's one line: escaped to ASCII, no line end in it. */
static char *name_line(const X509_NAME *name)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *s = b && X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0 ? bio_text(b) : NULL;
    BIO_free(b);
    return s;
}

static char *serial_hex(const X509 *x)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    char *s = hex ? strdup(hex) : NULL;
    OPENSSL_free(hex);
    BN_free(bn);
    return s;
}

static int cert_pem(X509 *x, crypto_key_info_t *info)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b && PEM_write_bio_X509(b, x)) info->armored = bio_text(b);
    BIO_free(b);
    if (!info->armored) return -1;
    info->armored_len = strlen(info->armored);
    return 0;
}

static int cert_id(X509 *x, char out[CRYPTO_FPR_MAX + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    if (!X509_digest(x, EVP_sha256(), md, &n) || n * 2 > CRYPTO_FPR_MAX) return -1;
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02X", md[i]);
    return 0;
}

/* Adds an address of n octets, the domain in lower case, once. One with
 * a NUL, a control octet, a space or 8-bit octets in it is not taken: the
 * directory keeps addresses one to a line and looks them up as RCPT names
 * them (an SMTPUTF8 address would be a SmtpUTF8Mailbox, RFC 8398). */
static int address_add(crypto_key_info_t *info, const unsigned char *p, int n)
{
    const unsigned char *at = n > 0 ? memchr(p, '@', (size_t)n) : NULL;
    if (!at || at == p || at == p + n - 1) return 0;
    for (int i = 0; i < n; i++)
        if (p[i] <= ' ' || p[i] >= 0x7f) return 0;
    char *a = malloc((size_t)n + 1);
    if (!a) return -1;
    memcpy(a, p, (size_t)n);
    a[n] = 0;
    for (char *d = a + (at - p); *d; d++)
        if (*d >= 'A' && *d <= 'Z') *d += 'a' - 'A';
    for (unsigned i = 0; i < info->n_addresses; i++)
        if (!strcasecmp(info->addresses[i], a)) {
            free(a);
            return 0;
        }
    char **grown = realloc(info->addresses, (info->n_addresses + 1) * sizeof *grown);
    if (!grown) {
        free(a);
        return -1;
    }
    info->addresses = grown;
    info->addresses[info->n_addresses++] = a;
    return 0;
}

/* subjectAltName's rfc822Names; only without any, the subject's
 * emailAddress (RFC 8550 §3: the older place, still met). */
static int cert_addresses(X509 *x, crypto_key_info_t *info)
{
    GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int rc = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(san) && rc == 0; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
        if (g->type == GEN_EMAIL)
            rc = address_add(info, ASN1_STRING_get0_data(g->d.rfc822Name),
                             ASN1_STRING_length(g->d.rfc822Name));
    }
    GENERAL_NAMES_free(san);
    const X509_NAME *subject = X509_get_subject_name(x);
    for (int i = -1; rc == 0 && info->n_addresses == 0;) {
        i = X509_NAME_get_index_by_NID(subject, NID_pkcs9_emailAddress, i);
        if (i < 0) break;
        const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
        rc = address_add(info, ASN1_STRING_get0_data(s), ASN1_STRING_length(s));
    }
    return rc;
}

void crypto_key_info_free(crypto_key_info_t *info)
{
    for (unsigned i = 0; i < info->n_addresses; i++)
        free(info->addresses[i]);
    free(info->addresses);
    free(info->armored);
    free(info->subject);
    free(info->issuer);
    free(info->serial);
}

static int describe(X509 *x, long long now, crypto_key_info_t *info, char *why, size_t whylen)
{
    info->method = CRYPTO_SMIME;
    if (cert_id(x, info->fpr) < 0 || cert_pem(x, info) < 0 || cert_addresses(x, info) < 0 ||
        !(info->subject = name_line(X509_get_subject_name(x))) ||
        !(info->issuer = name_line(X509_get_issuer_name(x))) || !(info->serial = serial_hex(x)))
        return -1;
    long long not_after = asn1_unix(X509_get0_notAfter(x));
    info->expires = not_after == NO_WELL_DEFINED_EXPIRY ? 0 : not_after;
    info->not_before = asn1_unix(X509_get0_notBefore(x));
    bool in_doubt; /* refused at import all the same: the operator sees why */
    info->why_unusable = cert_unusable(x, now, why, whylen, &info->retired, &in_doubt);
    if (!info->n_addresses) {
        info->why_unusable = "no email address"; /* nothing to file it under */
        info->retired = false;
    }
    return 0;
}

/* ---- reading what keys import is given ---- */

struct cert_inspection {
    void (*cb)(const crypto_key_info_t *key, void *arg);
    void *arg;
    char (*seen)[CRYPTO_FPR_MAX + 1];
    unsigned n_seen;
    char *err;
    size_t errlen;
};

static bool already_seen(const struct cert_inspection *in, const char *fpr)
{
    for (unsigned i = 0; i < in->n_seen; i++)
        if (!strcmp(in->seen[i], fpr)) return true;
    return false;
}

/* Reports one certificate, once per inspection. */
static int report(struct cert_inspection *in, X509 *x)
{
    crypto_key_info_t info = {0};
    char why[300];
    int rc = describe(x, (long long)time(NULL), &info, why, sizeof why);
    if (rc == 0 && !already_seen(in, info.fpr)) {
        void *grown = realloc(in->seen, (in->n_seen + 1) * sizeof *in->seen);
        if (grown) {
            in->seen = grown;
            memcpy(in->seen[in->n_seen++], info.fpr, sizeof info.fpr);
            in->cb(&info, in->arg);
        } else {
            rc = -1;
        }
    }
    if (rc < 0) ssl_fail(in->err, in->errlen, "out of memory describing a certificate");
    crypto_key_info_free(&info);
    return rc;
}

static int report_pkcs7(struct cert_inspection *in, PKCS7 *p7)
{
    STACK_OF(X509) *certs = PKCS7_type_is_signed(p7) && p7->d.sign ? p7->d.sign->cert : NULL;
    if (sk_X509_num(certs) <= 0) {
        snprintf(in->err, in->errlen, "a PKCS#7 structure without certificates");
        return -1;
    }
    for (int i = 0; i < sk_X509_num(certs); i++)
        if (report(in, sk_X509_value(certs, i)) < 0) return -1;
    return 0;
}

/* The PEM block kinds that hold certificates. */
static const char *const pem_kinds[] = {"CERTIFICATE", "X509 CERTIFICATE", "PKCS7", NULL};

/* The kind of the PEM block that starts at line (NULL: none of ours). */
static const char *pem_kind_at(const char *line, size_t n)
{
    for (const char *const *k = pem_kinds; *k; k++) {
        size_t klen = strlen(*k);
        if (n >= 16 + klen && !memcmp(line, "-----BEGIN ", 11) && !memcmp(line + 11, *k, klen) &&
            !memcmp(line + 11 + klen, "-----", 5))
            return *k;
    }
    return NULL;
}

/* Reads the one block of kind that starts at p. */
static int read_pem_block(struct cert_inspection *in, const char *kind, const char *p, size_t n)
{
    BIO *b = BIO_new_mem_buf(p, n > INT_MAX ? INT_MAX : (int)n);
    int rc = -1;
    if (!strcmp(kind, "PKCS7")) {
        PKCS7 *p7 = b ? PEM_read_bio_PKCS7(b, NULL, NULL, NULL) : NULL;
        rc = p7 ? report_pkcs7(in, p7) : ssl_fail(in->err, in->errlen, "a PKCS7 block is broken");
        PKCS7_free(p7);
    } else {
        X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        rc = x ? report(in, x) : ssl_fail(in->err, in->errlen, "a CERTIFICATE block is broken");
        X509_free(x);
    }
    BIO_free(b);
    return rc;
}

/* Each certificate block at the start of a line; -1, or how many. */
static int inspect_pem(struct cert_inspection *in, const char *data, size_t len)
{
    int blocks = 0;
    for (size_t pos = 0; pos < len;) {
        const char *lf = memchr(data + pos, '\n', len - pos);
        size_t end = lf ? (size_t)(lf - data) + 1 : len;
        const char *kind = pem_kind_at(data + pos, end - pos);
        if (kind) {
            if (read_pem_block(in, kind, data + pos, len - pos) < 0) return -1;
            blocks++;
        }
        pos = end;
    }
    return blocks;
}

/* DER: one certificate, or one PKCS#7 bundle (a .p7b or .p7c), and
 * nothing after it. */
static int inspect_der(struct cert_inspection *in, const unsigned char *der, size_t len)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x && p == der + len) {
        int rc = report(in, x);
        X509_free(x);
        return rc;
    }
    X509_free(x);
    p = der;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)len);
    int rc = p7 && p == der + len ? report_pkcs7(in, p7) : -1;
    PKCS7_free(p7);
    if (rc < 0 && !in->err[0])
        ssl_fail(in->err, in->errlen, "neither a DER certificate nor a PKCS#7 bundle");
    return rc;
}

int smime_inspect(const char *data, size_t len,
                  void (*cb)(const struct crypto_key_info *key, void *arg), void *arg, char *err,
                  size_t errlen)
{
    struct cert_inspection in = {.cb = cb, .arg = arg, .err = err, .errlen = errlen};
    err[0] = 0;
    int rc = 0;
    /* A DER SEQUENCE longer than 127 octets (as every certificate is):
     * never OpenPGP, whose packets' first octet has its top bit set, nor
     * text, whose second octet has not. */
    if (len > 2 && len <= LONG_MAX && (unsigned char)data[0] == 0x30 &&
        (unsigned char)data[1] > 0x80 && (unsigned char)data[1] <= 0x84)
        rc = inspect_der(&in, (const unsigned char *)data, len);
    else
        rc = inspect_pem(&in, data, len);
    free(in.seen);
    ERR_clear_error();
    return rc < 0 ? -1 : (int)in.n_seen;
}

/* ---- encrypting ---- */

/* One recipient: issuer and serial name it (OpenSSL's default, RFC 8551
 * §2.3's choice, and what every reader finds its certificate by). */
static int add_recipient(CMS_ContentInfo *cms, const crypto_rcpt_key_t *c, char *err, size_t errlen)
{
    unsigned char digest[16];
    X509 *x = NULL;
    if (c->method == CRYPTO_SMIME) {
        pem_digest(c->armored, c->armored_len, digest);
        x = cert_decoded(c->armored, c->armored_len, digest);
    }
    if (!x) {
        snprintf(err, errlen, "recipient %s: no certificate", c->fpr ? c->fpr : "?");
        ERR_clear_error();
        return -1;
    }
    bool oaep = options.oaep && key_type(x) == EVP_PKEY_RSA;
    /* CMS_KEY_PARAM keeps the key's context open for the padding. */
    CMS_RecipientInfo *ri =
        CMS_add1_recipient_cert(cms, x, CMS_PARTIAL | (oaep ? CMS_KEY_PARAM : 0));
    bool ok = ri != NULL;
    if (ok && oaep) {
        EVP_PKEY_CTX *pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
        ok = pctx && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) > 0;
    }
    X509_free(x);
    if (ok) return 0;
    char what[128];
    snprintf(what, sizeof what, "recipient %.64s", c->fpr ? c->fpr : "?");
    return ssl_fail(err, errlen, what);
}

static int cms_der(CMS_ContentInfo *cms, buf_t *der, char *err, size_t errlen)
{
    int n = i2d_CMS_ContentInfo(cms, NULL);
    if (n <= 0) return ssl_fail(err, errlen, "CMS encoding failed");
    if (buf_reserve(der, (size_t)n) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    unsigned char *p = (unsigned char *)der->data + der->len;
    if (i2d_CMS_ContentInfo(cms, &p) != n) return ssl_fail(err, errlen, "CMS encoding failed");
    der->len += (size_t)n;
    der->data[der->len] = 0;
    return 0;
}

int smime_encrypt(const crypto_rcpt_key_t *certs, unsigned n, const char *plain, size_t len,
                  buf_t *der, char *err, size_t errlen)
{
    if (n == 0 || len > INT_MAX) {
        snprintf(err, errlen, n == 0 ? "no recipient certificate" : "message too large");
        return -1;
    }
    ERR_clear_error(); /* so that a failure reports its own reason, not a stale one */
    /* GCM makes CMS_encrypt build AuthEnvelopedData (RFC 5083). */
    const EVP_CIPHER *cipher = options.gcm ? EVP_aes_256_gcm() : EVP_aes_256_cbc();
    CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, cipher, CMS_BINARY | CMS_PARTIAL);
    if (!cms) return ssl_fail(err, errlen, "CMS structure not made");
    int rc = 0;
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = add_recipient(cms, &certs[i], err, errlen);
    BIO *in = rc == 0 ? BIO_new_mem_buf(plain, (int)len) : NULL;
    /* CMS_BINARY: plain is canonical already; no line end is translated. */
    if (rc == 0 && (!in || !CMS_final(cms, in, NULL, CMS_BINARY)))
        rc = ssl_fail(err, errlen, "CMS encryption failed");
    if (rc == 0) rc = cms_der(cms, der, err, errlen);
    BIO_free(in);
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    return rc;
}

/* ---- what a sender says is encrypted ---- */

enum smime_structure smime_structure(const unsigned char *der, size_t len)
{
    const unsigned char *p = der;
    long body;
    int tag, class;
    /* ContentInfo ::= SEQUENCE { contentType OBJECT IDENTIFIER, ... } */
    if (len == 0 || len > LONG_MAX ||
        (ASN1_get_object(&p, &body, &tag, &class, (long)len) & 0x80) || tag != V_ASN1_SEQUENCE) {
        ERR_clear_error();
        return SMIME_OTHER;
    }
    ASN1_OBJECT *type = d2i_ASN1_OBJECT(NULL, &p, (long)(len - (size_t)(p - der)));
    int nid = type ? OBJ_obj2nid(type) : NID_undef;
    ASN1_OBJECT_free(type);
    ERR_clear_error();
    return nid == NID_pkcs7_enveloped                 ? SMIME_ENVELOPED
           : nid == NID_id_smime_ct_authEnvelopedData ? SMIME_AUTH_ENVELOPED
                                                      : SMIME_OTHER;
}

bool smime_is_enveloped(const unsigned char *der, size_t len, bool auth)
{
    if (len == 0 || len > LONG_MAX) return false;
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (!cms) {
        ERR_clear_error(); /* the pool thread's queue: no stale error for its next call */
        return false;
    }
    int want = auth ? NID_id_smime_ct_authEnvelopedData : NID_pkcs7_enveloped;
    ASN1_OCTET_STRING **content =
        OBJ_obj2nid(CMS_get0_type(cms)) == want ? CMS_get0_content(cms) : NULL;
    /* Detached content would travel somewhere else, maybe in clear; and
     * octets after the structure are not inside it. */
    bool ok = content && *content && ASN1_STRING_length(*content) > 0 && p == der + len;
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    return ok;
}
