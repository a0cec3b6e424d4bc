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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The store's version is asked for this often: a key added, activated or
 * deleted is in effect within about twice this. */
#define POLL_MS 500
/* Until the first load, more often: the worker claims nothing before it. */
#define FIRST_POLL_MS 50

/* One active key of a domain. */
struct signing_key {
    dkim_key_t *key; /* NULL: the domain has no active key of this algorithm */
    char selector[254];
    metric_t *signatures; /* sealpost_dkim_signatures_total{domain,algorithm} */
};

struct domain_keys {
    char domain[254];
    struct signing_key keys[DKIM_ALGORITHMS]; /* by enum dkim_algorithm */
};

struct table {
    struct domain_keys *domains; /* sorted by domain */
    size_t n_domains;
    unsigned n_keys;
};

enum unsigned_reason { UNSIGNED_NO_KEY, UNSIGNED_NO_FROM, UNSIGNED_REASONS };
static const char *const unsigned_names[UNSIGNED_REASONS] = {"no_key", "no_from"};

struct signer {
    const config_t *cfg;
    queue_t *queue;
    const seal_keyring_t *seal;
    char default_domain[254]; /* lower-cased; "" for none */
    struct table table;
    bool loaded;       /* the table has been read from the store once */
    long long version; /* the store's version the table was read at */
    long long reading; /* the version the reload under way was asked after */
    bool busy;         /* a call to the queue is out: its reply points here */
    bool failing;      /* the last reload failed: the next failure is logged at debug */
    bool stopping;     /* signer_stop was called */
    bool timer_closed; /* ... and the timer's close callback has run */
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

static const struct domain_keys *table_find(const struct table *t, const char *domain)
{
    if (!t->n_domains || !domain[0]) return NULL;
    struct domain_keys probe;
    snprintf(probe.domain, sizeof probe.domain, "%s", domain);
    return bsearch(&probe, t->domains, t->n_domains, sizeof *t->domains, compare_domains);
}

/* Unseals and loads one stored key: NULL with err when it will not. The
 * unsealed PEM is wiped before this returns. */
static dkim_key_t *key_open(const signer_t *s, const queue_dkim_key_t *k, char *err, size_t errlen)
{
    enum dkim_algorithm algorithm;
    if (!dkim_domain_valid(k->domain) || !dkim_selector_valid(k->selector)) {
        /* It would go into d= and s=, and into a metric's label. */
        snprintf(err, errlen, "not a valid signing domain and selector");
        return NULL;
    }
    if (dkim_algorithm_parse(k->algorithm, &algorithm) < 0) {
        snprintf(err, errlen, "unknown algorithm %.20s", k->algorithm);
        return NULL;
    }
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

/* Puts one loaded key into the table's last domain (or a new one after
 * it: keys come sorted by domain). The series it counts into is made here,
 * once per domain and algorithm in the life of the process. -1 when the
 * domain has an active key of that algorithm already, which the store
 * does not allow: the first stays. */
static int table_add(struct table *t, const queue_dkim_key_t *k, dkim_key_t *key)
{
    struct domain_keys *d = t->n_domains ? &t->domains[t->n_domains - 1] : NULL;
    if (!d || strcmp(d->domain, k->domain) != 0) {
        d = &t->domains[t->n_domains++];
        *d = (struct domain_keys){0};
        snprintf(d->domain, sizeof d->domain, "%s", k->domain);
    }
    enum dkim_algorithm a = dkim_key_algorithm(key);
    struct signing_key *slot = &d->keys[a];
    if (slot->key) return -1;
    char labels[320];
    snprintf(labels, sizeof labels, "domain=\"%s\",algorithm=\"%s\"", d->domain,
             dkim_algorithm_name(a));
    slot->key = key;
    snprintf(slot->selector, sizeof slot->selector, "%s", k->selector);
    slot->signatures =
        metric_counter("sealpost_dkim_signatures_total",
                       "DKIM signatures made, by signing domain and algorithm.", labels);
    t->n_keys++;
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
 * no memory. A key that will not unseal or load is logged, counted and left
 * out: the domain's other keys still sign. */
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
        if (keys[i].active) active[n_active++] = &keys[i];
    qsort(active, n_active, sizeof(const queue_dkim_key_t *), compare_stored);
    for (size_t i = 0; i < n_active; i++) {
        char err[300];
        dkim_key_t *key = key_open(s, active[i], err, sizeof err);
        if (key && table_add(out, active[i], key) < 0) {
            snprintf(err, sizeof err, "a second active %s key of the domain",
                     dkim_algorithm_name(dkim_key_algorithm(key)));
            dkim_key_free(key);
            key = NULL;
        }
        if (!key) {
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
        if (!s->failing)
            log_warn("event=dkim_reload_failed error=\"%s\"", err);
        else
            log_debug("event=dkim_reload_failed error=\"%s\"", err);
        s->failing = true;
        return;
    }
    table_free(&s->table);
    s->table = fresh;
    s->version = s->reading;
    if (!s->loaded) uv_timer_set_repeat(&s->timer, POLL_MS);
    s->loaded = true;
    s->failing = false;
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
        log_debug("event=dkim_poll_failed error=\"%s\"", err);
        return;
    }
    if (s->loaded && version == s->version) return;
    /* Read after the version: a change in between moves the version again,
     * and the next poll reads the keys once more. */
    s->reading = version;
    s->busy = true;
    if (queue_dkim_keys(s->queue, on_keys, s) < 0) s->busy = false;
}

static void on_timer(uv_timer_t *t)
{
    signer_t *s = t->data;
    if (s->busy || !queue_ready(s->queue)) return;
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
    return s->loaded;
}

/* The keys a message is signed with: its From domain's, else the default
 * domain's. NULL, with *reason, when there are none. */
static const struct domain_keys *keys_for(const signer_t *s, const queue_job_t *job,
                                          enum unsigned_reason *reason)
{
    char domain[254];
    bool from = dkim_from_domain(job->body, job->body_len, domain, sizeof domain) == 0;
    const struct domain_keys *d = from ? table_find(&s->table, domain) : NULL;
    if (!d) d = table_find(&s->table, s->default_domain);
    *reason = from ? UNSIGNED_NO_KEY : UNSIGNED_NO_FROM;
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
