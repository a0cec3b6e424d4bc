/* The encryption gateway: from one accepted message and its recipients'
 * decisions, the body variants to store, each sealed.
 *
 * Keyed recipients named in To or Cc share one ciphertext per method,
 * encrypted to all their keys of that method (they see each other's
 * addresses anyway): one PGP/MIME copy to their OpenPGP keys, one S/MIME
 * copy to their certificates. Each keyed
 * recipient who is only in the envelope (a Bcc) gets a ciphertext of their
 * own, so no key ID in anyone else's copy reveals them. Recipients without a
 * key share the original, and a message that is already encrypted goes to
 * everyone as it came; but no copy, clear or encrypted, keeps a Bcc or
 * Resent-Bcc field. Any failure fails the whole message: the client gets
 * 451 and tries again, and nothing is ever sent in clear instead. */
#include "crypto/crypto.h"
#include "proto/proto.h"

#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_VARIANT UINT32_MAX

struct named {
    const gateway_job_t *job;
    char (*addrs)[300];
    unsigned n, cap;
};

/* Collects the canonical addresses of To and Cc. */
static void on_named(const char *addr, size_t len, void *arg)
{
    struct named *nm = arg;
    (void)len;
    if (nm->n == nm->cap) {
        unsigned cap = nm->cap ? nm->cap * 2 : 16;
        char(*grown)[300] = realloc(nm->addrs, cap * sizeof *grown);
        if (!grown) return; /* unnamed then: a copy of their own, the safe side */
        nm->addrs = grown;
        nm->cap = cap;
    }
    if (crypto_addr_canon(addr, nm->job->case_insensitive, nm->job->strip_detail, nm->addrs[nm->n],
                          sizeof nm->addrs[0]) == 0)
        nm->n++;
}

static bool is_named(const struct named *nm, const char *addr)
{
    for (unsigned i = 0; i < nm->n; i++)
        if (!strcmp(nm->addrs[i], addr)) return true;
    return false;
}

static int fail(gateway_job_t *job, const char *what)
{
    job->outcome = GATEWAY_FAILED;
    if (!job->error[0]) snprintf(job->error, sizeof job->error, "%s", what);
    return -1;
}

/* At most one variant per recipient and the original: room made up front. */
static int add_variant(gateway_job_t *job, unsigned *index)
{
    if (job->n_variants > job->n_rcpts) return fail(job, "more variants than recipients");
    *index = job->n_variants++;
    buf_init(&job->variants[*index]);
    return 0;
}

static int seal_variant(gateway_job_t *job, unsigned v, const char *data, size_t len)
{
    char context[48];
    snprintf(context, sizeof context, "%s:%u", job->mid, v);
    if (seal_body(job->seal, context, data, len, &job->variants[v]) < 0)
        return fail(job, "out of memory sealing the body");
    return 0;
}

/* The copy that goes as it came (to keyless recipients, or already
 * encrypted by the sender), without the Bcc and Resent-Bcc fields a client
 * may have left in: they would name, to everyone, the blind recipients. */
static int seal_clear_variant(gateway_job_t *job, unsigned v)
{
    if (!pgpmime_has_blind(job->msg, job->len)) return seal_variant(job, v, job->msg, job->len);
    buf_t clear;
    buf_init(&clear);
    int rc = pgpmime_without_blind(job->msg, job->len, &clear) < 0
                 ? fail(job, "out of memory removing Bcc")
                 : seal_variant(job, v, clear.data, clear.len);
    if (clear.data) sodium_memzero(clear.data, clear.len);
    buf_free(&clear);
    return rc;
}

static unsigned header_flags(const gateway_job_t *job)
{
    return (job->hide_subject ? PGPMIME_HIDE_SUBJECT : 0) |
           (job->legacy_display ? PGPMIME_LEGACY_DISPLAY : 0);
}

static double monotonic_seconds(void)
{
    return (double)util_monotonic_us() / 1e6;
}

/* Notes an engine call for the metrics, which the loop thread counts: the
 * registry is not for pool threads to write. Room for one per recipient
 * and one more was made up front, as for the variants. */
static void note_cipher(gateway_job_t *job, enum crypto_method method, int rc, double started)
{
    if (job->n_ciphers > job->n_rcpts) return;
    job->ciphers[job->n_ciphers++] =
        (gateway_cipher_t){.method = method,
                           .result = rc == 0                  ? CIPHER_OK
                                     : rc == CRYPTO_TIMED_OUT ? CIPHER_TIMED_OUT
                                                              : CIPHER_FAILED,
                           .seconds = monotonic_seconds() - started};
}

/* The inner entity encrypted to keys (all of one method) and wrapped for
 * it, into outer: PGP/MIME around the armor, or S/MIME around the DER. */
static int encrypt_and_wrap(gateway_job_t *job, const buf_t *inner, const crypto_rcpt_key_t *keys,
                            unsigned n_keys, buf_t *outer)
{
    buf_t cipher;
    buf_init(&cipher);
    int rc;
    double started = monotonic_seconds();
    if (keys[0].method == CRYPTO_SMIME) {
        rc = smime_encrypt(keys, n_keys, inner->data, inner->len, &cipher, job->error,
                           sizeof job->error);
        note_cipher(job, CRYPTO_SMIME, rc, started);
        if (rc == 0 && smime_outer(job->msg, job->len, (const unsigned char *)cipher.data,
                                   cipher.len, header_flags(job), outer) < 0)
            rc = fail(job, "S/MIME assembly failed");
    } else {
        rc = crypto_encrypt(job->homes, keys, n_keys, inner->data, inner->len, &cipher, job->error,
                            sizeof job->error);
        note_cipher(job, CRYPTO_OPENPGP, rc, started);
        if (rc == CRYPTO_TIMED_OUT) job->timed_out = true;
        if (rc == 0 && pgpmime_outer(job->msg, job->len, cipher.data, cipher.len, header_flags(job),
                                     outer) < 0)
            rc = fail(job, "PGP/MIME assembly failed");
    }
    buf_free(&cipher);
    return rc;
}

/* One encrypted variant: encrypted to keys, wrapped, sealed. */
static int encrypted_variant(gateway_job_t *job, const buf_t *inner, const crypto_rcpt_key_t *keys,
                             unsigned n_keys, unsigned v)
{
    buf_t outer;
    buf_init(&outer);
    int rc = encrypt_and_wrap(job, inner, keys, n_keys, &outer);
    if (rc == 0) rc = seal_variant(job, v, outer.data, outer.len);
    if (outer.data) sodium_memzero(outer.data, outer.len);
    buf_free(&outer);
    return rc < 0 ? fail(job, "encryption failed") : 0;
}

static bool key_listed(const crypto_rcpt_key_t *keys, unsigned n, const char *fpr)
{
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(keys[i].fpr, fpr)) return true;
    return false;
}

/* A To/Cc variant: every keyed named recipient's key of method, once. */
static int shared_variant(gateway_job_t *job, const struct named *nm, const buf_t *inner,
                          enum crypto_method method, crypto_rcpt_key_t *keys)
{
    unsigned n = 0, v = NO_VARIANT;
    int rc = 0;
    for (unsigned i = 0; i < job->n_rcpts && rc == 0; i++) {
        gateway_rcpt_t *r = &job->rcpts[i];
        if (!r->key || r->key->method != method || !is_named(nm, r->addr)) continue;
        if (v == NO_VARIANT) rc = add_variant(job, &v);
        r->variant = v;
        if (!key_listed(keys, n, r->key->fpr)) keys[n++] = *r->key;
    }
    if (rc == 0 && n) rc = encrypted_variant(job, inner, keys, n, v);
    return rc;
}

/* The To/Cc variants, one per method that any of them has a key of. */
static int shared_variants(gateway_job_t *job, const struct named *nm, const buf_t *inner)
{
    crypto_rcpt_key_t *keys = calloc(job->n_rcpts, sizeof *keys);
    if (!keys) return fail(job, "out of memory");
    int rc = 0;
    for (unsigned m = 0; m < CRYPTO_METHODS && rc == 0; m++)
        rc = shared_variant(job, nm, inner, (enum crypto_method)m, keys);
    free(keys);
    return rc;
}

static bool keyed_bcc(const gateway_rcpt_t *r, const struct named *nm)
{
    return r->key && !is_named(nm, r->addr);
}

/* Bcc recipients of one key share its copy (it reveals no one else): the
 * first one before rcpts[i] with the same key, or NULL. A key and a
 * certificate never have the same fpr (40 or 64 hex digits of a
 * fingerprint; 64 of a SHA-256 over DER), and the method is compared too. */
static const gateway_rcpt_t *bcc_twin(const gateway_job_t *job, const struct named *nm, unsigned i)
{
    for (unsigned j = 0; j < i; j++)
        if (keyed_bcc(&job->rcpts[j], nm) &&
            job->rcpts[j].key->method == job->rcpts[i].key->method &&
            !strcmp(job->rcpts[j].key->fpr, job->rcpts[i].key->fpr))
            return &job->rcpts[j];
    return NULL;
}

/* Copies of their own that the keyed Bcc recipients need: one per key. */
static unsigned bcc_copies(const gateway_job_t *job, const struct named *nm)
{
    unsigned n = 0;
    for (unsigned i = 0; i < job->n_rcpts; i++)
        n += keyed_bcc(&job->rcpts[i], nm) && !bcc_twin(job, nm, i);
    return n;
}

static int encrypt_all(gateway_job_t *job)
{
    struct named nm = {.job = job};
    proto_header_addresses(job->msg, job->len, "To", on_named, &nm);
    proto_header_addresses(job->msg, job->len, "Cc", on_named, &nm);
    /* Each copy costs a gpg run and its size in Redis: a message that would
     * multiply past the limit is refused, not stored N times over. */
    unsigned copies = bcc_copies(job, &nm);
    if (job->max_bcc_copies && copies > job->max_bcc_copies) {
        free(nm.addrs);
        job->too_many_copies = true;
        snprintf(job->error, sizeof job->error,
                 "%u keyed Bcc recipients need copies of their own; "
                 "the limit is %u",
                 copies, job->max_bcc_copies);
        job->outcome = GATEWAY_FAILED;
        return -1;
    }
    buf_t inner;
    buf_init(&inner);
    int rc = pgpmime_inner(job->msg, job->len, header_flags(job), &inner) < 0
                 ? fail(job, "the message has no header section to protect")
                 : shared_variants(job, &nm, &inner);
    for (unsigned i = 0; i < job->n_rcpts && rc == 0; i++) {
        gateway_rcpt_t *r = &job->rcpts[i];
        if (!r->key || r->variant != NO_VARIANT) continue;
        const gateway_rcpt_t *twin = bcc_twin(job, &nm, i);
        if (twin) {
            r->variant = twin->variant;
            continue;
        }
        rc = add_variant(job, &r->variant);
        if (rc == 0) rc = encrypted_variant(job, &inner, r->key, 1, r->variant);
    }
    if (inner.data) sodium_memzero(inner.data, inner.len);
    buf_free(&inner);
    free(nm.addrs);
    return rc;
}

int gateway_run(gateway_job_t *job)
{
    job->n_variants = 0;
    job->error[0] = 0;
    job->n_ciphers = 0;
    job->variants = calloc((size_t)job->n_rcpts + 1, sizeof *job->variants);
    job->ciphers = calloc((size_t)job->n_rcpts + 1, sizeof *job->ciphers);
    if (!job->variants || !job->ciphers) return fail(job, "out of memory");
    bool any_key = false, any_plain = false;
    for (unsigned i = 0; i < job->n_rcpts; i++) {
        job->rcpts[i].variant = NO_VARIANT;
        any_key |= job->rcpts[i].key != NULL;
        any_plain |= job->rcpts[i].key == NULL;
    }
    bool passthrough = any_key && pgpmime_is_encrypted(job->msg, job->len);
    job->outcome = !any_key ? GATEWAY_PLAIN : passthrough ? GATEWAY_PASSTHROUGH : GATEWAY_ENCRYPTED;
    unsigned plain = NO_VARIANT;
    if (any_plain || passthrough) {
        if (add_variant(job, &plain) < 0 || seal_clear_variant(job, plain) < 0) return -1;
    }
    for (unsigned i = 0; i < job->n_rcpts && (passthrough || !any_key); i++)
        job->rcpts[i].variant = plain;
    if (job->outcome != GATEWAY_ENCRYPTED) return 0;
    for (unsigned i = 0; i < job->n_rcpts; i++)
        if (!job->rcpts[i].key) job->rcpts[i].variant = plain;
    return encrypt_all(job);
}

void gateway_job_release(gateway_job_t *job)
{
    for (unsigned i = 0; i < job->n_variants; i++)
        buf_free(&job->variants[i]);
    free(job->variants);
    job->variants = NULL;
    job->n_variants = 0;
    free(job->ciphers);
    job->ciphers = NULL;
    job->n_ciphers = 0;
}
