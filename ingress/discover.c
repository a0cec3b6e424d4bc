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
    /* a refresh (no RCPT waits): the key filed before, as key_lookup read it */
    bool refresh, reading_old;
    char old_fpr[65];
    long long old_expires, old_found;
    char old_source[16];
    buf_t old_data;
};

struct discover {
    ingress_t *ingress;
    discovery_t *engine;
    struct pending *pendings;
    unsigned n; /* pendings, until their timer has closed */
    bool stopping;
    metric_t *outcomes[COUNTS];
    metric_t *seconds;
    metric_t *changes[2]; /* by enum config_key_change: accepted, kept */
    uv_timer_t refresh;   /* asks for the keys due to be looked up again */
    bool refresh_open, due_out;
};

static void on_refresh_tick(uv_timer_t *t);

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
    static const char *const actions[] = {"accepted", "kept"};
    metric_counters(d->changes, "sealpost_discovery_key_changes_total",
                    "Discovered keys whose fingerprint changed on refresh, by what was done "
                    "([discovery] key_change): accepted (the new key replaced the old) or kept "
                    "(the old one stays).",
                    "action", actions, 2);
    /* a quarter of the refresh interval, between 1 s and a minute */
    uint64_t tick = ingress->cfg->discovery.refresh * 250ULL;
    tick = tick < 1000 ? 1000 : tick > 60000 ? 60000 : tick;
    uv_timer_init(ingress->loop, &d->refresh);
    d->refresh.data = d;
    uv_timer_start(&d->refresh, on_refresh_tick, tick, tick);
    d->refresh_open = true;
    return d;
}

bool discover_entry_holds(const seal_keyring_t *seal, const char *addr, const queue_disc_t *d,
                          keydir_disc_t *it)
{
    *it = (keydir_disc_t){.address = addr,
                          .fpr = d->fpr,
                          .expires = d->expires,
                          .data = d->data,
                          .len = d->data ? d->len : 0,
                          .source = d->source ? d->source : "",
                          .found = d->found,
                          .checked = d->checked};
    return keydir_disc_verify(seal, it, d->tag) == 1;
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
    buf_free(&p->old_data);
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

/* Files f (the key found, or under keep-old the one the address had) as
 * checked now, with its tag; out, when given, the key as the cache holds it. */
static void file_entry(struct pending *p, keydir_disc_t f, const char *change, keydir_key_t *out)
{
    f.address = p->addr;
    f.checked = (long long)time(NULL);
    char tag[SEAL_MAC_LEN + 1];
    keydir_disc_tag(p->d->ingress->seal, &f, tag);
    queue_disc_t d = {.address = p->addr,
                      .expires = f.expires,
                      .data = f.data,
                      .len = f.len,
                      .source = f.source,
                      .url = p->url,
                      .tag = tag,
                      .change = change,
                      .found = f.found,
                      .checked = f.checked};
    snprintf(d.fpr, sizeof d.fpr, "%s", f.fpr);
    if (queue_disc_put(p->d->ingress->queue, &d, on_filed, "key") < 0)
        log_warn("event=discovery_file_failed what=key error=\"redis not connected\"");
    if (!out) return;
    *out = (keydir_key_t){.expires = f.expires, .armored = (char *)f.data, .armored_len = f.len};
    snprintf(out->fpr, sizeof out->fpr, "%s", f.fpr);
}

static void file_key(struct pending *p, long long found, const char *change, keydir_key_t *out)
{
    keydir_disc_t f = {.fpr = p->key.fpr,
                       .expires = p->key.expires,
                       .data = p->key.armored,
                       .len = p->key.armored_len,
                       .source = discovery_source_name(p->source),
                       .found = found};
    file_entry(p, f, change, out);
}

/* A refresh found a key: the same one (perhaps with a new subkey or a
 * later expiry) replaces its copy; another fingerprint is a change, never
 * taken silently: logged, counted, noted for keys list, and taken or not
 * as [discovery] key_change says. */
static void refreshed(struct pending *p)
{
    char safe[LOG_SAFE_MAX];
    long long now = (long long)time(NULL);
    if (!p->old_fpr[0] || !strcmp(p->old_fpr, p->key.fpr)) {
        file_key(p, p->old_found ? p->old_found : now, "", NULL);
        log_debug("event=discovered_key_refreshed rcpt=<%s> fpr=%s", log_addr(p->addr, safe),
                  p->key.fpr);
        return;
    }
    bool accept = p->d->ingress->cfg->discovery.key_change == KEY_CHANGE_ACCEPT;
    const char *action = accept ? "accepted" : "kept";
    char when[UTIL_ISO_TIME_LEN], change[240];
    util_iso_time(now, when);
    snprintf(change, sizeof change, "%s %s -> %s %s", when, p->old_fpr, p->key.fpr, action);
    metric_add(p->d->changes[accept ? 0 : 1], 1);
    log_warn("event=discovered_key_changed rcpt=<%s> old=%s new=%s action=%s",
             log_addr(p->addr, safe), p->old_fpr, p->key.fpr, action);
    if (accept) {
        file_key(p, now, change, NULL);
        return;
    }
    keydir_disc_t old = {.fpr = p->old_fpr,
                         .expires = p->old_expires,
                         .data = p->old_data.data,
                         .len = p->old_data.len,
                         .source = p->old_source,
                         .found = p->old_found};
    file_entry(p, old, change, NULL);
}

/* A refresh found no usable key where there was one (revoked, expired, a
 * 404): the copy goes, so no mail is encrypted to what its owner retired. */
static void dropped(struct pending *p, const char *why)
{
    char safe[LOG_SAFE_MAX];
    log_warn("event=discovered_key_dropped rcpt=<%s> fpr=%s why=\"%s\"", log_addr(p->addr, safe),
             p->old_fpr, why);
    if (queue_disc_delete(p->d->ingress->queue, p->addr, on_filed, "delete") < 0)
        log_warn("event=discovery_file_failed what=delete error=\"redis not connected\"");
    file_miss(p, false, false);
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
    if (p->refresh) {
        if (p->picked == 1)
            refreshed(p);
        else if (p->picked == 0)
            dropped(p, p->why);
        pending_end(p);
        return;
    }
    if (p->picked == 1) {
        keydir_key_t key;
        file_key(p, (long long)time(NULL), "", &key);
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
    if (p->refresh) { /* a failure keeps the copy, and is tried at the next refresh */
        if (!failed) dropped(p, r->detail);
        pending_end(p);
        return;
    }
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

/* A pending look-up of addr, linked and counted; its wait timer idle. */
static struct pending *pending_new(discover_t *d, const char *addr)
{
    struct pending *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->d = d;
    snprintf(p->addr, sizeof p->addr, "%s", addr);
    buf_init(&p->data);
    buf_init(&p->old_data);
    p->started = uv_hrtime();
    uv_timer_init(d->ingress->loop, &p->wait);
    p->wait.data = p;
    p->next = d->pendings;
    d->pendings = p;
    d->n++;
    return p;
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
        if (!(p = pending_new(d, addr))) {
            free(w);
            return -1;
        }
        /* on_answer comes from the loop, never from discovery_lookup */
        if (!(p->lookup = discovery_lookup(d->engine, addr, false, on_answer, p))) {
            free(w);
            pending_end(p);
            return -1;
        }
    }
    if (!p->waiters)
        uv_timer_start(&p->wait, on_wait_over, d->ingress->cfg->discovery.timeout_ms, 0);
    w->next = p->waiters;
    p->waiters = w;
    return 0;
}

/* ---- refreshing what was found ---- */

/* The copy filed before (its tag checked: one that fails is not ours, and
 * the refresh then counts as a first look-up), then the look-up, keyserver
 * included: no RCPT waits for it, and it tells no server more than that
 * the address is still known. */
static void on_old(int status, const char *err, const queue_key_found_t *f, void *arg)
{
    struct pending *p = arg;
    p->reading_old = false;
    if (status < 0 || p->d->stopping || !f->disc.fpr[0]) {
        if (status < 0) log_debug("event=discovery_refresh_failed error=\"%s\"", err);
        pending_end(p);
        return;
    }
    keydir_disc_t it;
    if (discover_entry_holds(p->d->ingress->seal, p->addr, &f->disc, &it) &&
        buf_append(&p->old_data, it.data, it.len) == 0) {
        snprintf(p->old_fpr, sizeof p->old_fpr, "%s", it.fpr);
        snprintf(p->old_source, sizeof p->old_source, "%s", it.source);
        p->old_expires = it.expires;
        p->old_found = it.found;
    }
    if (!(p->lookup = discovery_lookup(p->d->engine, p->addr, true, on_answer, p))) pending_end(p);
}

static void refresh_start(discover_t *d, const char *addr)
{
    struct pending *p = pending_new(d, addr);
    if (!p) return;
    p->refresh = p->reading_old = true;
    const char *at = strrchr(addr, '@');
    if (queue_key_lookup(d->ingress->queue, p->addr, at ? at + 1 : "", on_old, p) < 0) {
        p->reading_old = false;
        pending_end(p);
    }
}

static void on_due(int status, const char *err, const char *const *names, size_t n, void *arg)
{
    discover_t *d = arg;
    d->due_out = false;
    if (status < 0) {
        log_debug("event=discovery_refresh_failed error=\"%s\"", err);
        return;
    }
    for (size_t i = 0; i < n && !d->stopping; i++)
        if (!pending_of(d, names[i])) refresh_start(d, names[i]);
}

/* Some node, not all: disc_due hands each address due to one caller. */
static void on_refresh_tick(uv_timer_t *t)
{
    discover_t *d = t->data;
    const config_t *cfg = d->ingress->cfg;
    if (d->stopping || d->due_out || !queue_ready(d->ingress->queue) ||
        d->n >= cfg->discovery.max_parallel)
        return;
    long long now = (long long)time(NULL);
    d->due_out = queue_disc_due(d->ingress->queue, now - (long long)cfg->discovery.refresh, now,
                                cfg->discovery.max_parallel - d->n, on_due, d) == 0;
}

static void on_refresh_closed(uv_handle_t *h)
{
    discover_t *d = h->data;
    d->refresh_open = false;
}

void discover_stop(discover_t *d)
{
    d->stopping = true;
    if (d->refresh_open && !uv_is_closing((uv_handle_t *)&d->refresh))
        uv_close((uv_handle_t *)&d->refresh, on_refresh_closed);
    for (struct pending *p = d->pendings, *next; p; p = next) {
        next = p->next;
        if (p->lookup) discovery_cancel(p->lookup);
        p->lookup = NULL;
        release(p, DISCOVER_FAILED, NULL);
        if (!p->working && !p->reading_old) pending_end(p); /* else their callbacks end them */
    }
    discovery_free(d->engine);
    d->engine = NULL;
}

bool discover_busy(const discover_t *d)
{
    return d->n > 0 || d->refresh_open || d->due_out;
}

void discover_free(discover_t *d)
{
    if (!d) return;
    discovery_free(d->engine);
    free(d);
}
