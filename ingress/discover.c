/* Key discovery at RCPT TO: see discover.h. */
#include "ingress/discover.h"

#include "discovery/discovery.h"
#include "ingress/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* The outcomes counted: discovery's own four, then these. */
enum { COUNT_CACHED = DISCOVERY_TIMEOUT + 1, COUNT_BUSY, COUNTS };

struct waiter {
    discover_cb cb;
    void *arg;
    struct waiter *next;
};

/* One address being looked up, and the RCPTs waiting for it. */
struct pending {
    discover_t *d;
    struct pending *next;
    char addr[PROTO_PATH_MAX + 1];
    discovery_lookup_t *lookup; /* NULL once answered */
    uv_timer_t wait;            /* the RCPTs' patience */
    struct waiter *waiters;
    uint64_t started; /* uv_hrtime */
    /* a response being read in the thread pool (gpg) */
    uv_work_t work;
    bool working;
    buf_t data;
    enum discovery_source source;
    char url[1600];
    discovery_key_t key;
    int picked;
    char why[300];
};

struct discover {
    ingress_t *ingress;
    discovery_t *engine;
    struct pending *pendings;
    unsigned n; /* pendings, until their timer has closed */
    bool stopping;
    metric_t *outcomes[COUNTS];
    metric_t *seconds;
};

static const double lookup_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5};

discover_t *discover_new(ingress_t *ingress, char *err, size_t errlen)
{
    static const char *const names[COUNTS] = {"found",   "not_found", "error",
                                              "timeout", "cached",    "busy"};
    discover_t *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->ingress = ingress;
    if (!(d->engine = discovery_new(ingress->loop, ingress->cfg, err, errlen))) {
        free(d);
        return NULL;
    }
    metric_counters(d->outcomes, "sealpost_discovery_lookups_total",
                    "Recipients whose key was looked for by discovery at RCPT TO, by outcome: "
                    "found, not_found, error, timeout (a look-up made), cached (Redis had "
                    "what another look-up filed), busy (max_parallel reached: keyless for now).",
                    "outcome", names, COUNTS);
    d->seconds = metric_histogram("sealpost_discovery_lookup_duration_seconds",
                                  "Time of one look-up made at RCPT TO, DNS and HTTPS, until "
                                  "its answer (the RCPT waits at most [discovery] timeout_ms).",
                                  "", lookup_bounds, sizeof lookup_bounds / sizeof *lookup_bounds);
    return d;
}

struct domain_match {
    const char *domain;
    bool found;
};

static int match_domain(const char *item, void *arg)
{
    struct domain_match *m = arg;
    if (!strcasecmp(item, m->domain)) m->found = true;
    return 0;
}

bool discover_applies(const discover_t *d, const char *addr)
{
    const char *at = strrchr(addr, '@');
    if (!at || !at[1]) return false;
    struct domain_match m = {at + 1, false};
    util_split_list(d->ingress->cfg->discovery.skip_domains, match_domain, &m);
    return !m.found;
}

void discover_count_cached(discover_t *d)
{
    metric_add(d->outcomes[COUNT_CACHED], 1);
}

/* Every waiting RCPT gets r (and key). */
static void release(struct pending *p, enum discover_result r, const keydir_key_t *key)
{
    uv_timer_stop(&p->wait);
    while (p->waiters) {
        struct waiter *w = p->waiters;
        p->waiters = w->next;
        w->cb(w->arg, r, key);
        free(w);
    }
}

static void on_pending_closed(uv_handle_t *h)
{
    struct pending *p = h->data;
    p->d->n--;
    buf_free(&p->data);
    discovery_key_free(&p->key);
    free(p);
}

static void pending_end(struct pending *p)
{
    release(p, DISCOVER_FAILED, NULL);
    for (struct pending **link = &p->d->pendings; *link; link = &(*link)->next)
        if (*link == p) {
            *link = p->next;
            break;
        }
    uv_close((uv_handle_t *)&p->wait, on_pending_closed);
}

static void on_filed(int status, const char *err, void *arg)
{
    const char *what = arg;
    if (status < 0) log_warn("event=discovery_file_failed what=%s error=\"%s\"", what, err);
}

/* A miss for everyone, for negative_ttl (nothing there) or error_ttl; for
 * the whole domain when it has no WKD at all (tagged as "@domain"). */
static void file_miss(struct pending *p, bool failed, bool whole_domain)
{
    const config_t *cfg = p->d->ingress->cfg;
    long long until = (long long)time(NULL) +
                      (long long)(failed ? cfg->discovery.error_ttl : cfg->discovery.negative_ttl);
    char tag[SEAL_MAC_LEN + 1];
    const char *at = strrchr(p->addr, '@');
    int rc;
    if (whole_domain && at) {
        keydir_miss_tag(p->d->ingress->seal, at, until, false, tag);
        rc = queue_disc_domain_miss(p->d->ingress->queue, at + 1, until, tag, on_filed, "miss");
    } else {
        keydir_miss_tag(p->d->ingress->seal, p->addr, until, failed, tag);
        rc = queue_disc_miss(p->d->ingress->queue, p->addr, until, failed, tag, on_filed, "miss");
    }
    if (rc < 0) log_warn("event=discovery_file_failed what=miss error=\"redis not connected\"");
}

static void file_key(struct pending *p, keydir_key_t *out)
{
    long long now = (long long)time(NULL);
    const char *source = discovery_source_name(p->source);
    keydir_disc_t it = {.address = p->addr,
                        .fpr = p->key.fpr,
                        .expires = p->key.expires,
                        .data = p->key.armored,
                        .len = p->key.armored_len,
                        .source = source,
                        .found = now,
                        .checked = now};
    char tag[SEAL_MAC_LEN + 1];
    keydir_disc_tag(p->d->ingress->seal, &it, tag);
    queue_disc_t d = {.address = p->addr,
                      .expires = it.expires,
                      .data = it.data,
                      .len = it.len,
                      .source = source,
                      .url = p->url,
                      .tag = tag,
                      .found = now,
                      .checked = now};
    snprintf(d.fpr, sizeof d.fpr, "%s", p->key.fpr);
    if (queue_disc_put(p->d->ingress->queue, &d, on_filed, "key") < 0)
        log_warn("event=discovery_file_failed what=key error=\"redis not connected\"");
    *out = (keydir_key_t){.expires = it.expires, .armored = p->key.armored, .armored_len = it.len};
    snprintf(out->fpr, sizeof out->fpr, "%s", p->key.fpr);
}

static void select_in_thread(uv_work_t *work)
{
    struct pending *p = work->data;
    p->picked =
        discovery_select(p->addr, p->data.data, p->data.len, p->d->ingress->cfg->crypto.home_dir,
                         &p->key, p->why, sizeof p->why);
}

static void after_select(uv_work_t *work, int status)
{
    struct pending *p = work->data;
    char safe[LOG_SAFE_MAX];
    p->working = false;
    if (status < 0 || p->d->stopping) {
        pending_end(p);
        return;
    }
    if (p->picked == 1) {
        keydir_key_t key;
        file_key(p, &key);
        log_info("event=key_discovered rcpt=<%s> fpr=%s source=%s", log_addr(p->addr, safe),
                 p->key.fpr, discovery_source_name(p->source));
        release(p, DISCOVER_FOUND, &key);
    } else {
        /* a key refused (wrong user ID, revoked, unreadable) is no key, and
         * the domain's WKD speaks for it: a miss like a 404 */
        log_info("event=key_discovery_refused rcpt=<%s> url=\"%s\" why=\"%s\"",
                 log_addr(p->addr, safe), p->url, p->why);
        file_miss(p, p->picked < 0, false);
        release(p, p->picked < 0 ? DISCOVER_FAILED : DISCOVER_NONE, NULL);
    }
    pending_end(p);
}

static void on_answer(const discovery_result_t *r, void *arg)
{
    struct pending *p = arg;
    discover_t *d = p->d;
    char safe[LOG_SAFE_MAX];
    p->lookup = NULL;
    metric_add(d->outcomes[r->outcome], 1);
    metric_observe(d->seconds, (double)(uv_hrtime() - p->started) / 1e9);
    log_debug("event=key_lookup rcpt=<%s> outcome=%s detail=\"%s\"", log_addr(p->addr, safe),
              discovery_outcome_name(r->outcome), r->detail);
    if (r->outcome == DISCOVERY_FOUND) {
        p->source = r->source;
        snprintf(p->url, sizeof p->url, "%s", r->url);
        p->work.data = p;
        if (buf_append(&p->data, r->data, r->len) == 0 &&
            uv_queue_work(d->ingress->loop, &p->work, select_in_thread, after_select) == 0) {
            p->working = true;
            return;
        }
        pending_end(p);
        return;
    }
    bool failed = r->outcome != DISCOVERY_NOT_FOUND;
    if (failed)
        log_info("event=key_lookup_failed rcpt=<%s> outcome=%s detail=\"%s\"",
                 log_addr(p->addr, safe), discovery_outcome_name(r->outcome), r->detail);
    file_miss(p, failed, !failed && r->no_wkd);
    release(p, failed ? DISCOVER_FAILED : DISCOVER_NONE, NULL);
    pending_end(p);
}

/* The RCPTs waited long enough; the look-up goes on for the next message. */
static void on_wait_over(uv_timer_t *t)
{
    release(t->data, DISCOVER_FAILED, NULL);
}

static struct pending *pending_of(const discover_t *d, const char *addr)
{
    for (struct pending *p = d->pendings; p; p = p->next)
        if (!strcmp(p->addr, addr)) return p;
    return NULL;
}

int discover_start(discover_t *d, const char *addr, discover_cb cb, void *arg)
{
    struct pending *p = pending_of(d, addr);
    if (!p && (d->stopping || d->n >= d->ingress->cfg->discovery.max_parallel)) {
        metric_add(d->outcomes[COUNT_BUSY], 1);
        return -1;
    }
    struct waiter *w = malloc(sizeof *w);
    if (!w) return -1;
    *w = (struct waiter){cb, arg, NULL};
    if (!p) {
        if (!(p = calloc(1, sizeof *p))) {
            free(w);
            return -1;
        }
        p->d = d;
        snprintf(p->addr, sizeof p->addr, "%s", addr);
        buf_init(&p->data);
        p->started = uv_hrtime();
        if (!(p->lookup = discovery_lookup(d->engine, addr, false, on_answer, p))) {
            free(p);
            free(w);
            return -1;
        }
        uv_timer_init(d->ingress->loop, &p->wait);
        p->wait.data = p;
        uv_timer_start(&p->wait, on_wait_over, d->ingress->cfg->discovery.timeout_ms, 0);
        p->next = d->pendings;
        d->pendings = p;
        d->n++; /* on_answer comes from the loop, never from discovery_lookup */
    } else if (!p->waiters) {
        uv_timer_start(&p->wait, on_wait_over, d->ingress->cfg->discovery.timeout_ms, 0);
    }
    w->next = p->waiters;
    p->waiters = w;
    return 0;
}

void discover_stop(discover_t *d)
{
    d->stopping = true;
    for (struct pending *p = d->pendings, *next; p; p = next) {
        next = p->next;
        if (p->lookup) discovery_cancel(p->lookup);
        p->lookup = NULL;
        release(p, DISCOVER_FAILED, NULL);
        if (!p->working) pending_end(p);
    }
    discovery_free(d->engine);
    d->engine = NULL;
}

bool discover_busy(const discover_t *d)
{
    return d->n > 0;
}

void discover_free(discover_t *d)
{
    if (!d) return;
    discovery_free(d->engine);
    free(d);
}
