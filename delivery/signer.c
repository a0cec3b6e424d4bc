/* DKIM signing in the worker: see signer.h.
 *
 * The table holds, per domain, the one active key of each algorithm,
 * sorted by domain for bsearch. It is built whole from the key store when
 * the store's version moves and swapped in at once, so a message is signed
 * either with the keys before a change or with those after it, never with
 * a mix. The keys live here unsealed (in OpenSSL's memory) and nowhere
 * else: the PEM they are read from is wiped as soon as it is loaded. */
#include "delivery/signer.h"

#include <sodium.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The store's version is asked for this often: a key added, activated or
 * deleted is in effect within about twice this. */
#define POLL_MS 500
/* Until the first load, more often: the worker claims nothing before it. */
#define FIRST_POLL_MS 50
/* ... but for no longer than this after the first poll could be sent:
 * then mail goes unsigned (counted) until a load succeeds. */
#define FIRST_LOAD_WAIT_MS 5000

/* One active key of a domain. */
struct signing_key {
    dkim_key_t *key; /* NULL: the domain has no usable active key of this algorithm */
    char selector[254];
    /* Of the sealed octets key was read from: a reload that finds the same
     * domain, selector and digest takes the loaded key over. */
    unsigned char sealed_digest[crypto_generichash_BYTES];
    metric_t *signatures; /* sealpost_dkim_signatures_total{domain,algorithm} */
};

/* A domain of the store with an active key; one whose every active key is
 * unusable is here too, without keys (see keys_for). */
struct domain_keys {
    char domain[254];
    struct signing_key keys[DKIM_ALGORITHMS]; /* by enum dkim_algorithm */
};

struct table {
    struct domain_keys *domains; /* sorted by domain */
    size_t n_domains;
    unsigned n_keys;
};

enum unsigned_reason {
    UNSIGNED_NO_KEY,
    UNSIGNED_NO_FROM,
    UNSIGNED_KEY_UNUSABLE,
    UNSIGNED_KEYS_UNAVAILABLE,
    UNSIGNED_FROM_NOT_ASCII, /* a UTF-8 From domain: d= would need its A-label (RFC 8616) */
    UNSIGNED_REASONS
};
static const char *const unsigned_names[UNSIGNED_REASONS] = {"no_key", "no_from", "key_unusable",
                                                             "keys_unavailable", "from_not_ascii"};

struct signer {
    const config_t *cfg;
    queue_t *queue;
    const seal_keyring_t *seal;
    char default_domain[254]; /* lower-cased; "" for none */
    struct table table;
    bool loaded;          /* the table has been read from the store once */
    bool unavailable;     /* not loaded FIRST_LOAD_WAIT_MS after the first poll: ready anyway */
    uint64_t first_poll;  /* uv_now when the first poll was sent; 0: not yet */
    long long version;    /* the store's version the table was read at */
    long long reading;    /* the version the reload under way was asked after */
    bool busy;            /* a call to the queue is out: its reply points here */
    bool failing;         /* polling fails: the next failure is logged at debug */
    char last_error[160]; /* of the last failed poll, for dkim_keys_unavailable */
    bool stopping;        /* signer_stop was called */
    bool timer_closed;    /* ... and the timer's close callback has run */
    uv_timer_t timer;
    metric_t *unsigned_count[UNSIGNED_REASONS];
    metric_t *failures;
    metric_t *keys_loaded;
    metric_t *key_errors;
    metric_t *duration;
};

/* Signing one message takes from about 50 us (ed25519, a small message)
 * to some ms (RSA 8192, a large body). */
static const double sign_bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                     0.005,   0.01,   0.025,   0.05,   0.1};

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->n_domains; i++)
        for (unsigned a = 0; a < DKIM_ALGORITHMS; a++)
            dkim_key_free(t->domains[i].keys[a].key);
    free(t->domains);
    *t = (struct table){0};
}

static void maybe_free(signer_t *s)
{
    if (!s->stopping || !s->timer_closed || s->busy) return;
    table_free(&s->table);
    free(s);
}

static int compare_domains(const void *a, const void *b)
{
    return strcmp(((const struct domain_keys *)a)->domain, ((const struct domain_keys *)b)->domain);
}

static struct domain_keys *table_find(const struct table *t, const char *domain)
{
    if (!t->n_domains || !domain[0]) return NULL;
    struct domain_keys probe;
    snprintf(probe.domain, sizeof probe.domain, "%s", domain);
    return bsearch(&probe, t->domains, t->n_domains, sizeof *t->domains, compare_domains);
}

/* Unseals and loads one stored key: NULL with err when it will not. The
 * unsealed PEM is wiped before this returns. */
static dkim_key_t *key_open(const signer_t *s, const queue_dkim_key_t *k,
                            enum dkim_algorithm algorithm, char *err, size_t errlen)
{
    char context[600];
    snprintf(context, sizeof context, "dkim:%s:%s", k->domain, k->selector);
    buf_t pem;
    buf_init(&pem);
    /* Room for all of it first: a buffer that grew would leave a copy of
     * the key behind in the memory realloc freed. */
    if (buf_reserve(&pem, k->sealed_len) < 0) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    dkim_key_t *key = NULL;
    if (seal_open(s->seal, context, k->sealed, k->sealed_len, &pem, err, errlen) == 0)
        key = dkim_key_load(pem.data, pem.len, err, errlen);
    sodium_memzero(pem.data, pem.cap);
    buf_free(&pem);
    if (key && dkim_key_algorithm(key) != algorithm) {
        snprintf(err, errlen, "the key is %s, stored as %s",
                 dkim_algorithm_name(dkim_key_algorithm(key)), k->algorithm);
        dkim_key_free(key);
        key = NULL;
    }
    return key;
}

/* The table's entry of domain: its last (keys come sorted by domain), or a
 * new one after it. */
static struct domain_keys *table_domain(struct table *t, const char *domain)
{
    struct domain_keys *d = t->n_domains ? &t->domains[t->n_domains - 1] : NULL;
    if (!d || strcmp(d->domain, domain) != 0) {
        d = &t->domains[t->n_domains++];
        *d = (struct domain_keys){0};
        snprintf(d->domain, sizeof d->domain, "%s", domain);
    }
    return d;
}

static metric_t *signatures_metric(const char *domain, enum dkim_algorithm a)
{
    char labels[320];
    snprintf(labels, sizeof labels, "domain=\"%s\",algorithm=\"%s\"", domain,
             dkim_algorithm_name(a));
    return metric_counter("sealpost_dkim_signatures_total",
                          "DKIM signatures made, by signing domain and algorithm.", labels);
}

/* Puts one active stored key into the table being built, out: 0, or -1
 * with err when it is unusable. The key and the series it counts into are
 * taken over from the table in use when it has them (same domain,
 * selector and sealed octets), so a reload unseals and parses only what
 * changed and makes no series anew; what it takes it removes from there,
 * so that freeing the old table leaves them be. A domain gets its entry
 * even when its key is unusable. */
static int table_put(signer_t *s, struct table *out, const queue_dkim_key_t *k, char *err,
                     size_t errlen)
{
    enum dkim_algorithm a;
    if (k->malformed) {
        snprintf(err, errlen, "unreadable: %s", k->record);
        /* Its domain, when it fits, is still one the operator gave a key. */
        if (k->active && dkim_domain_valid(k->domain)) table_domain(out, k->domain);
        return -1;
    }
    /* Both go into d= and s=, and the domain into a metric's label. */
    if (!dkim_domain_valid(k->domain)) {
        snprintf(err, errlen, "not a valid signing domain");
        return -1;
    }
    struct domain_keys *d = table_domain(out, k->domain);
    if (!dkim_selector_valid(k->selector)) {
        snprintf(err, errlen, "not a valid selector");
        return -1;
    }
    if (dkim_algorithm_parse(k->algorithm, &a) < 0) {
        snprintf(err, errlen, "unknown algorithm %.20s", k->algorithm);
        return -1;
    }
    /* Before the old table's key is taken over: a record or algorithm
     * changed in Redis leaves the sealed octets as they were (issue 18). */
    int tag = keydir_dkim_verify(s->seal, k->domain, k->selector, k->algorithm, k->record,
                                 k->sealed, k->sealed_len, k->tag);
    if (tag != 1) {
        snprintf(err, errlen, "tampered: %s; `sealpost dkim authenticate` once it is checked",
                 !k->tag[0] ? "no tag"
                 : tag == 0 ? "its tag does not hold"
                            : "its tag names a sealing key this worker does not have");
        return -1;
    }
    struct signing_key *slot = &d->keys[a];
    if (slot->key) { /* the store does not allow it: the first stays */
        snprintf(err, errlen, "a second active %s key of the domain", k->algorithm);
        return -1;
    }
    struct domain_keys *was = table_find(&s->table, k->domain);
    struct signing_key *old = was ? &was->keys[a] : NULL;
    unsigned char digest[crypto_generichash_BYTES];
    crypto_generichash(digest, sizeof digest, (const unsigned char *)k->sealed, k->sealed_len, NULL,
                       0);
    if (old) slot->signatures = old->signatures; /* kept while the key is unusable too */
    if (old && old->key && !strcmp(old->selector, k->selector) &&
        !sodium_memcmp(old->sealed_digest, digest, sizeof digest)) {
        slot->key = old->key;
        old->key = NULL;
    } else if (!(slot->key = key_open(s, k, a, err, errlen))) {
        return -1;
    }
    snprintf(slot->selector, sizeof slot->selector, "%s", k->selector);
    memcpy(slot->sealed_digest, digest, sizeof digest);
    if (!slot->signatures) slot->signatures = signatures_metric(d->domain, a);
    out->n_keys++;
    return 0;
}

static int compare_stored(const void *a, const void *b)
{
    const queue_dkim_key_t *x = *(const queue_dkim_key_t *const *)a;
    const queue_dkim_key_t *y = *(const queue_dkim_key_t *const *)b;
    int c = strcmp(x->domain, y->domain);
    return c ? c : strcmp(x->selector, y->selector);
}

/* The table of the active keys among the n stored: 0, or -1 when there is
 * no memory (before anything is taken from the table in use). A key that
 * will not unseal or load, and an entry the store could not give whole
 * (active or not: it may have been), is logged, counted and left out: the
 * domain's other keys still sign. */
static int table_build(signer_t *s, const queue_dkim_key_t *keys, size_t n, struct table *out)
{
    *out = (struct table){0};
    const queue_dkim_key_t **active = calloc(n ? n : 1, sizeof(const queue_dkim_key_t *));
    out->domains = calloc(n ? n : 1, sizeof *out->domains);
    if (!active || !out->domains) {
        free(active);
        free(out->domains);
        out->domains = NULL;
        return -1;
    }
    size_t n_active = 0;
    for (size_t i = 0; i < n; i++)
        if (keys[i].active || keys[i].malformed) active[n_active++] = &keys[i];
    qsort(active, n_active, sizeof(const queue_dkim_key_t *), compare_stored);
    for (size_t i = 0; i < n_active; i++) {
        char err[300];
        if (table_put(s, out, active[i], err, sizeof err) < 0) {
            char domain[LOG_SAFE_MAX], selector[LOG_SAFE_MAX], why[LOG_SAFE_MAX];
            log_error("event=dkim_key_unusable domain=%s selector=%s error=\"%s\"",
                      log_safe(active[i]->domain, domain), log_safe(active[i]->selector, selector),
                      log_text(err, why));
            metric_add(s->key_errors, 1);
        }
    }
    free(active);
    return 0;
}

/* A poll or a reload failed: logged at warn when polling starts failing,
 * then at debug until it works again, so that a Redis gone for an hour
 * logs one warning and not seven thousand. */
static void poll_failed(signer_t *s, const char *event, const char *err)
{
    char text[LOG_SAFE_MAX];
    snprintf(s->last_error, sizeof s->last_error, "%s", err ? err : "unknown");
    if (!s->failing)
        log_warn("event=%s error=\"%s\"", event, log_text(s->last_error, text));
    else
        log_debug("event=%s error=\"%s\"", event, log_text(s->last_error, text));
    s->failing = true;
}

static void poll_recovered(signer_t *s)
{
    if (!s->failing) return;
    s->failing = false;
    log_info("event=dkim_poll_recovered version=%lld", s->version);
}

static void on_keys(int status, const char *err, const queue_dkim_key_t *keys, size_t n, void *arg)
{
    signer_t *s = arg;
    s->busy = false;
    if (s->stopping) {
        maybe_free(s);
        return;
    }
    struct table fresh;
    if (status == 0 && table_build(s, keys, n, &fresh) < 0) {
        status = -1;
        err = "out of memory";
    }
    if (status < 0) {
        /* The table it had stays: a Redis hiccup must not unsign the mail. */
        poll_failed(s, "dkim_reload_failed", err);
        return;
    }
    table_free(&s->table);
    s->table = fresh;
    s->version = s->reading;
    if (!s->loaded) uv_timer_set_repeat(&s->timer, POLL_MS);
    s->loaded = true;
    poll_recovered(s);
    metric_set(s->keys_loaded, s->table.n_keys);
    log_info("event=dkim_keys_loaded version=%lld domains=%zu keys=%u", s->version,
             s->table.n_domains, s->table.n_keys);
}

static void on_version(int status, const char *err, long long version, void *arg)
{
    signer_t *s = arg;
    s->busy = false;
    if (s->stopping) {
        maybe_free(s);
        return;
    }
    if (status < 0) {
        poll_failed(s, "dkim_poll_failed", err);
        return;
    }
    if (s->loaded && version == s->version) {
        poll_recovered(s);
        return;
    }
    /* Read after the version: a change in between moves the version again,
     * and the next poll reads the keys once more. */
    s->reading = version;
    s->busy = true;
    if (queue_dkim_keys(s->queue, on_keys, s) < 0) {
        s->busy = false;
        poll_failed(s, "dkim_reload_failed", "out of memory, or redis not connected");
    }
}

/* Stops waiting for the first load FIRST_LOAD_WAIT_MS after the first poll
 * was sent. Waiting on would stop all mail for as long as the keys cannot
 * be read (one entry the store cannot give, a Redis without the functions,
 * no memory): mail then goes unsigned, counted as keys_unavailable, and
 * polling goes on, so the first load that succeeds signs again. */
static void first_load_overdue(signer_t *s, uint64_t now)
{
    if (s->loaded || s->unavailable || !s->first_poll || now - s->first_poll < FIRST_LOAD_WAIT_MS)
        return;
    s->unavailable = true;
    uv_timer_set_repeat(&s->timer, POLL_MS);
    char text[LOG_SAFE_MAX];
    log_error("event=dkim_keys_unavailable waited_ms=%d error=\"%s\" "
              "detail=\"sending unsigned until the keys load\"",
              FIRST_LOAD_WAIT_MS, log_text(s->last_error[0] ? s->last_error : "no reply", text));
}

static void on_timer(uv_timer_t *t)
{
    signer_t *s = t->data;
    uint64_t now = uv_now(t->loop);
    first_load_overdue(s, now);
    if (s->busy || !queue_ready(s->queue)) return;
    if (!s->first_poll) s->first_poll = now ? now : 1;
    s->busy = true;
    if (queue_dkim_version(s->queue, on_version, s) < 0) s->busy = false;
}

static void make_metrics(signer_t *s)
{
    metric_counters(s->unsigned_count, "sealpost_dkim_unsigned_total",
                    "Messages sent without a DKIM signature, by why.", "reason", unsigned_names,
                    UNSIGNED_REASONS);
    s->failures = metric_counter("sealpost_dkim_failures_total",
                                 "Messages whose signing failed (each attempt deferred).", "");
    s->keys_loaded = metric_gauge("sealpost_dkim_keys", "DKIM keys loaded for signing.", "");
    s->key_errors =
        metric_counter("sealpost_dkim_key_errors_total",
                       "Stored DKIM keys that would not unseal or load, per reload.", "");
    s->duration = metric_histogram("sealpost_dkim_signing_duration_seconds",
                                   "Time to sign one message, every signature included.", "",
                                   sign_bounds, sizeof sign_bounds / sizeof sign_bounds[0]);
}

signer_t *signer_start(uv_loop_t *loop, const config_t *cfg, queue_t *q, const seal_keyring_t *seal,
                       char *err, size_t errlen)
{
    signer_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->queue = q;
    s->seal = seal;
    snprintf(s->default_domain, sizeof s->default_domain, "%s", cfg->dkim.default_domain);
    util_ascii_lower(s->default_domain);
    make_metrics(s);
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_timer, 0, FIRST_POLL_MS);
    return s;
}

static void on_timer_closed(uv_handle_t *h)
{
    signer_t *s = h->data;
    s->timer_closed = true;
    maybe_free(s);
}

void signer_stop(signer_t *s)
{
    if (!s || s->stopping) return;
    s->stopping = true;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

bool signer_ready(const signer_t *s)
{
    return s->loaded || s->unavailable;
}

/* The keys a message is signed with: its From domain's, else the default
 * domain's; and *reason, for when they are none. A domain whose active
 * keys are all unusable has an entry without keys, so it goes unsigned
 * (key_unusable) rather than signed by default_domain: the operator gave
 * it a key of its own, and a signature of another domain would hide that
 * the key broke from anyone who checks d=. */
static const struct domain_keys *keys_for(const signer_t *s, const queue_job_t *job,
                                          enum unsigned_reason *reason)
{
    if (!s->loaded) {
        *reason = UNSIGNED_KEYS_UNAVAILABLE;
        return NULL;
    }
    char domain[254];
    int from = dkim_from_domain(job->body, job->body_len, domain, sizeof domain);
    const struct domain_keys *d = from == 0 ? table_find(&s->table, domain) : NULL;
    if (!d) d = table_find(&s->table, s->default_domain);
    *reason = d            ? UNSIGNED_KEY_UNUSABLE
              : from == 0  ? UNSIGNED_NO_KEY
              : from == -2 ? UNSIGNED_FROM_NOT_ASCII
                           : UNSIGNED_NO_FROM;
    return d;
}

/* job->body becomes head + body; the old plain body is wiped. */
static int prepend(queue_job_t *job, buf_t *head)
{
    if (buf_append(head, job->body, job->body_len) < 0) return -1;
    sodium_memzero(job->body, job->body_len);
    free(job->body);
    job->body = head->data;
    job->body_len = head->len;
    buf_init(head);
    return 0;
}

/* The signers of d's keys into signers (and the keys they count into
 * used): how many. */
static unsigned signers_of(const struct domain_keys *d, dkim_signer_t *signers,
                           const struct signing_key **used)
{
    unsigned n = 0;
    for (unsigned a = 0; a < DKIM_ALGORITHMS; a++)
        if (d->keys[a].key) {
            used[n] = &d->keys[a];
            signers[n++] = (dkim_signer_t){d->keys[a].key, d->domain, d->keys[a].selector};
        }
    return n;
}

int signer_sign(signer_t *s, queue_job_t *job, char *err, size_t errlen)
{
    enum unsigned_reason reason;
    const struct domain_keys *d = keys_for(s, job, &reason);
    dkim_signer_t signers[DKIM_ALGORITHMS];
    const struct signing_key *used[DKIM_ALGORITHMS];
    unsigned n = d ? signers_of(d, signers, used) : 0;
    if (n == 0) {
        metric_add(s->unsigned_count[reason], 1);
        log_debug("event=dkim_unsigned mid=%s job=%s reason=%s", job->mid, job->jid,
                  unsigned_names[reason]);
        return 0;
    }
    int64_t started = util_monotonic_us();
    buf_t head;
    buf_init(&head);
    /* Room for the body too, so that the signatures and the body are
     * usually put together without a second allocation. */
    int rc = buf_reserve(&head, job->body_len + 4096);
    if (rc < 0)
        snprintf(err, errlen, "out of memory");
    else
        rc = dkim_sign(job->body, job->body_len, signers, n, util_now_ms() / 1000,
                       s->cfg->dkim.expire, &head, err, errlen);
    if (rc == 0 && prepend(job, &head) < 0) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    buf_free(&head);
    if (rc < 0) {
        metric_add(s->failures, 1);
        return -1;
    }
    metric_observe(s->duration, (double)(util_monotonic_us() - started) / 1e6);
    char selectors[2 * 256] = "";
    for (unsigned i = 0; i < n; i++) {
        metric_add(used[i]->signatures, 1);
        size_t at = strlen(selectors);
        snprintf(selectors + at, sizeof selectors - at, "%s%s", i ? "," : "", used[i]->selector);
    }
    log_debug("event=dkim_signed mid=%s job=%s domain=%s selectors=%s", job->mid, job->jid,
              d->domain, selectors);
    return 0;
}
