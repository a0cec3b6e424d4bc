/* One look-up: WKD's advanced method, its direct method when the
 * openpgpkey sub-domain does not exist (draft §3.1: only then), then the
 * keyserver when one is configured and WKD found nothing. A domain that
 * has a WKD (its openpgpkey host, or a policy file at the direct one)
 * speaks for its own users: its 404, or a key of its that discovery_select
 * refuses, is not overruled by a keyserver's copy. */
#include "discovery/discovery.h"

#include "discovery/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_REDIRECTS 3

struct discovery {
    uv_loop_t *loop;
    resolver_t *resolver;
    SSL_CTX *ctx;
    unsigned timeout_ms;
    size_t max_response;
    char ks_host[256]; /* "" when no keyserver */
    uint16_t ks_port;
    char ks_prefix[256]; /* the URL's path, without a trailing '/' */
    discovery_lookup_t *lookups;
};

/* STEP_POLICY: after the direct method's 404, whether the domain has a
 * WKD at all (its policy file, draft §4.5), so that a miss can stand for
 * the whole domain. */
enum step { STEP_ADVANCED, STEP_DIRECT, STEP_POLICY, STEP_KEYSERVER, STEP_DONE };

struct discovery_lookup {
    discovery_t *d;
    discovery_lookup_t *prev, *next;
    char address[320];
    enum step step;
    bool errored;   /* some source could not be asked: a miss is not sure */
    bool keyserver; /* the keyserver may be asked */
    bool wkd_none;  /* the domain's WKD answered that it has no key for the address */
    bool starting;  /* inside discovery_lookup: a failure now is its NULL, not a callback */
    bool failed_to_start;
    unsigned redirects;
    char host[264];
    uint16_t port;
    char path[1280];
    http_get_t *get;
    uv_timer_t deadline;
    discovery_result_t result;
    discovery_cb cb;
    void *arg;
};

const char *discovery_outcome_name(enum discovery_outcome o)
{
    static const char *const names[] = {"found", "not_found", "error", "timeout"};
    return names[o];
}

const char *discovery_source_name(enum discovery_source s)
{
    return s == SOURCE_WKD ? "wkd" : "keyserver";
}

/* "https://host[:port][/path]" into its parts; -1 when it is not one. */
static int parse_https_url(const char *url, char *host, size_t hostlen, uint16_t *port, char *path,
                           size_t pathlen)
{
    if (strncasecmp(url, "https://", 8)) return -1;
    const char *h = url + 8, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    const char *colon = memchr(h, ':', hl);
    size_t name_len = colon ? (size_t)(colon - h) : hl;
    if (!name_len || name_len >= hostlen) return -1;
    memcpy(host, h, name_len);
    host[name_len] = 0;
    *port = 443;
    if (colon) {
        unsigned long long p;
        if (util_parse_decimal(colon + 1, hl - name_len - 1, &p) < 0 || !p || p > 65535) return -1;
        *port = (uint16_t)p;
    }
    if (snprintf(path, pathlen, "%s", slash ? slash : "/") >= (int)pathlen) return -1;
    return 0;
}

discovery_t *discovery_new(uv_loop_t *loop, const config_t *cfg, char *err, size_t errlen)
{
    discovery_t *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->loop = loop;
    d->timeout_ms = cfg->discovery.timeout_ms;
    d->max_response = cfg->discovery.max_response;
    if (cfg->discovery.keyserver[0]) {
        char path[256];
        if (parse_https_url(cfg->discovery.keyserver, d->ks_host, sizeof d->ks_host, &d->ks_port,
                            path, sizeof path) < 0) {
            snprintf(err, errlen, "[discovery] keyserver: '%s' is not an https:// URL",
                     cfg->discovery.keyserver);
            free(d);
            return NULL;
        }
        size_t n = strlen(path);
        while (n && path[n - 1] == '/')
            path[--n] = 0;
        snprintf(d->ks_prefix, sizeof d->ks_prefix, "%s", path);
    }
    /* Each method's own deadline is the look-up's: DNS gets most of it. */
    int dns_ms = (int)(d->timeout_ms * 3 / 4);
    d->resolver = resolver_new(loop, cfg->discovery.dns_servers, "[discovery] dns_servers",
                               dns_ms > 0 ? dns_ms : 1, 1, err, errlen);
    if (!d->resolver) {
        free(d);
        return NULL;
    }
    const char *ca = cfg->discovery.ca_file[0] ? cfg->discovery.ca_file : NULL;
    if (!(d->ctx = tls_redis_context(ca, NULL, NULL, err, errlen))) {
        resolver_free(d->resolver);
        free(d);
        return NULL;
    }
    return d;
}

static void on_lookup_closed(uv_handle_t *h)
{
    free(h->data);
}

static void lookup_end(discovery_lookup_t *l, bool call)
{
    discovery_t *d = l->d;
    if (l->get) http_cancel(l->get);
    l->get = NULL;
    if (l->prev)
        l->prev->next = l->next;
    else
        d->lookups = l->next;
    if (l->next) l->next->prev = l->prev;
    uv_timer_stop(&l->deadline);
    if (call) l->cb(&l->result, l->arg);
    uv_close((uv_handle_t *)&l->deadline, on_lookup_closed);
}

void discovery_free(discovery_t *d)
{
    if (!d) return;
    while (d->lookups)
        lookup_end(d->lookups, false);
    resolver_free(d->resolver);
    SSL_CTX_free(d->ctx);
    free(d);
}

void discovery_cancel(discovery_lookup_t *l)
{
    lookup_end(l, false);
}

static void note(discovery_lookup_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(discovery_lookup_t *l, const char *fmt, ...)
{
    size_t used = strlen(l->result.detail);
    if (used + 3 >= sizeof l->result.detail) return;
    if (used)
        used += (size_t)snprintf(l->result.detail + used, sizeof l->result.detail - used, "; ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->result.detail + used, sizeof l->result.detail - used, fmt, ap);
    va_end(ap);
}

static void step_start(discovery_lookup_t *l);

static void step_next(discovery_lookup_t *l)
{
    l->redirects = 0;
    if (l->step == STEP_ADVANCED)
        l->step = STEP_DIRECT;
    else if ((l->step == STEP_DIRECT || l->step == STEP_POLICY) && l->keyserver &&
             l->d->ks_host[0] && !l->wkd_none)
        l->step = STEP_KEYSERVER;
    else
        l->step = STEP_DONE;
    step_start(l);
}

static const char *step_name(enum step s)
{
    return s == STEP_ADVANCED ? "wkd advanced"
           : s == STEP_DIRECT ? "wkd direct"
           : s == STEP_POLICY ? "wkd policy"
                              : "keyserver";
}

static bool follow_redirect(discovery_lookup_t *l, const char *location)
{
    if (!location || ++l->redirects > MAX_REDIRECTS) return false;
    if (parse_https_url(location, l->host, sizeof l->host, &l->port, l->path, sizeof l->path) < 0)
        return false;
    step_start(l);
    return true;
}

static void on_response(int status, const char *body, size_t len, const char *err, void *arg)
{
    discovery_lookup_t *l = arg;
    l->get = NULL;
    if (l->step == STEP_POLICY && !(status >= 300 && status < 400)) {
        l->result.no_wkd = status == 404 || status == 410;
        l->wkd_none = status >= 200 && status < 300; /* a WKD, without the key */
        note(l, "wkd policy: %s", l->result.no_wkd ? "none" : status ? "present" : "unknown");
        step_next(l);
        return;
    }
    if (status == 200 && len) {
        l->result.outcome = DISCOVERY_FOUND;
        l->result.source = l->step == STEP_KEYSERVER ? SOURCE_KEYSERVER : SOURCE_WKD;
        l->result.data = body;
        l->result.len = len;
        note(l, "%s: %zu octets", step_name(l->step), len);
        lookup_end(l, true);
        return;
    }
    if (status >= 300 && status < 400 && follow_redirect(l, err)) return;
    bool no_host = status == 0 && !l->redirects && err && strstr(err, ": no such host");
    if (status == 0)
        note(l, "%s: %s", step_name(l->step), err ? err : "failed");
    else
        note(l, "%s: HTTP %d", step_name(l->step), status);
    /* 404 and 410 say "none here"; a missing openpgpkey host sends us to
     * the direct method, a missing domain to the next source. Anything
     * else leaves the answer in doubt. */
    if (!(status == 404 || status == 410 || (status == 200 && !len) || no_host)) l->errored = true;
    bool direct = l->step == STEP_DIRECT;
    if (l->step == STEP_ADVANCED && (status == 404 || status == 410) && !l->redirects)
        l->wkd_none = true;
    if (l->step == STEP_ADVANCED && !no_host) l->step = STEP_DIRECT; /* the sub-domain exists */
    if (direct && no_host) l->result.no_wkd = true;                  /* no host for it at all */
    if (direct && (status == 404 || status == 410) && !l->redirects) {
        l->step = STEP_POLICY;
        step_start(l);
        return;
    }
    step_next(l);
}

static void step_start(discovery_lookup_t *l)
{
    if (l->step == STEP_DONE) {
        l->result.outcome = l->errored ? DISCOVERY_ERROR : DISCOVERY_NOT_FOUND;
        lookup_end(l, true);
        return;
    }
    if (!l->redirects) {
        wkd_url_t u;
        if (l->step == STEP_KEYSERVER) {
            char enc[968];
            snprintf(l->host, sizeof l->host, "%s", l->d->ks_host);
            l->port = l->d->ks_port;
            wkd_percent_encode(l->address, strlen(l->address), enc, sizeof enc);
            snprintf(l->path, sizeof l->path, "%s/vks/v1/by-email/%s", l->d->ks_prefix, enc);
        } else if (wkd_url(l->address, l->step == STEP_ADVANCED, &u) == 0) {
            snprintf(l->host, sizeof l->host, "%s", u.host);
            snprintf(l->path, sizeof l->path, "%s",
                     l->step == STEP_POLICY ? "/.well-known/openpgpkey/policy" : u.path);
            l->port = 443;
        }
    }
    snprintf(l->result.url, sizeof l->result.url, "https://%s%s", l->host, l->path);
    l->get = http_get(l->d->loop, l->d->resolver, l->d->ctx, l->host, l->port, l->path,
                      l->d->max_response, on_response, l);
    if (!l->get) {
        note(l, "out of memory");
        l->result.outcome = DISCOVERY_ERROR;
        l->failed_to_start = l->starting;
        lookup_end(l, !l->starting);
    }
}

static void on_deadline(uv_timer_t *t)
{
    discovery_lookup_t *l = t->data;
    note(l, "%s: no answer within %u ms", step_name(l->step), l->d->timeout_ms);
    l->result.outcome = DISCOVERY_TIMEOUT;
    lookup_end(l, true);
}

discovery_lookup_t *discovery_lookup(discovery_t *d, const char *address, bool keyserver,
                                     discovery_cb cb, void *arg)
{
    wkd_url_t check;
    if (wkd_url(address, true, &check) < 0) return NULL;
    discovery_lookup_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->d = d;
    l->cb = cb;
    l->arg = arg;
    l->keyserver = keyserver;
    snprintf(l->address, sizeof l->address, "%s", address);
    uv_timer_init(d->loop, &l->deadline);
    l->deadline.data = l;
    uv_timer_start(&l->deadline, on_deadline, d->timeout_ms, 0);
    l->next = d->lookups;
    if (l->next) l->next->prev = l;
    d->lookups = l;
    l->starting = true;
    step_start(l);
    if (l->failed_to_start) return NULL; /* ended, and freed once its timer closes */
    l->starting = false;
    return l;
}

/* ---- choosing the key ---- */

struct selection {
    const char *address;
    discovery_key_t *out;
    bool found;
    int candidates;
    char why[160];
};

static bool names_address(const crypto_key_info_t *k, const char *address)
{
    for (unsigned i = 0; i < k->n_addresses; i++)
        if (!strcasecmp(k->addresses[i], address)) return true;
    return false;
}

/* Lasts longer: never expiring beats any date. */
static bool outlasts(long long a, long long b)
{
    return b && (!a || a > b);
}

static void on_candidate(const crypto_key_info_t *k, void *arg)
{
    struct selection *s = arg;
    if (k->method != CRYPTO_OPENPGP) return;
    s->candidates++;
    if (k->why_unusable) { /* a revoked key's user IDs are not valid either */
        snprintf(s->why, sizeof s->why, "key %s is %s", k->fpr, k->why_unusable);
        return;
    }
    if (!names_address(k, s->address)) {
        snprintf(s->why, sizeof s->why, "key %s has no valid user ID for the address", k->fpr);
        return;
    }
    if (s->found && !outlasts(k->expires, s->out->expires)) return;
    char *copy = malloc(k->armored_len + 1);
    if (!copy) return;
    memcpy(copy, k->armored, k->armored_len);
    copy[k->armored_len] = 0;
    discovery_key_free(s->out);
    snprintf(s->out->fpr, sizeof s->out->fpr, "%s", k->fpr);
    s->out->expires = k->expires;
    s->out->armored = copy;
    s->out->armored_len = k->armored_len;
    s->found = true;
}

int discovery_select(const char *address, const char *data, size_t len, const char *parent,
                     discovery_key_t *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    struct selection s = {.address = address, .out = out};
    char err[256];
    if (crypto_keys_inspect(data, len, parent, NULL, on_candidate, &s, err, sizeof err) < 0) {
        snprintf(why, whylen, "%s", err);
        discovery_key_free(out);
        return -1;
    }
    if (s.found) return 1;
    snprintf(why, whylen, "%s", s.candidates ? s.why : "no OpenPGP key in the response");
    return 0;
}

void discovery_key_free(discovery_key_t *k)
{
    free(k->armored);
    k->armored = NULL;
    k->armored_len = 0;
}
