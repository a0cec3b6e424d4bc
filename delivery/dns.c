/* MX resolution with c-ares on the worker's loop (core/resolver.c), with a
 * cache of the answers for their TTL. */
#include "delivery/dns.h"

#include "core/resolver.h"

#include <arpa/nameser.h>
#include <ares.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADDRS_PER_HOST 4
#define CACHE_MAX_TTL  3600 /* seconds: even a long TTL is looked at again hourly */
#define CACHE_MAX      1000 /* entries */

typedef struct cache_entry cache_entry_t;

struct dns {
    uv_loop_t *loop;
    resolver_t *resolver;
    ares_channel channel;
    cache_entry_t *cache; /* answers by domain, until their TTL runs out */
    unsigned cached;
};

dns_t *dns_new(uv_loop_t *loop, const char *servers, char *err, size_t errlen)
{
    dns_t *dns = calloc(1, sizeof *dns);
    if (!dns) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    dns->loop = loop;
    dns->resolver = resolver_new(loop, servers, "[worker] dns_servers", 3000, 2, err, errlen);
    if (!dns->resolver) {
        free(dns);
        return NULL;
    }
    dns->channel = resolver_channel(dns->resolver);
    return dns;
}

static void cache_clear(dns_t *dns);

void dns_free(dns_t *dns)
{
    if (!dns) return;
    cache_clear(dns);
    resolver_free(dns->resolver);
    free(dns);
}

/* ---- MX resolution ---- */

typedef struct mx_host {
    char name[256];
    unsigned short preference;
    uint32_t tiebreak; /* random: equal preferences in random order */
    net_hostport_t addrs[ADDRS_PER_HOST];
    unsigned n_addrs;
    int status;
} mx_host_t;

typedef struct mx_request {
    dns_t *dns;
    char domain[256];
    uint16_t port;
    dns_mx_cb cb;
    void *arg;
    uint32_t ttl;  /* the smallest TTL among the records used, for the cache */
    bool implicit; /* no MX records: the domain itself */
    bool route;    /* a configured host, not a mail domain */
    mx_host_t hosts[DNS_MAX_TARGETS];
    unsigned n_hosts;
    unsigned pending;
} mx_request_t;

typedef struct addr_request {
    mx_request_t *req;
    unsigned index;
} addr_request_t;

/* ---- the cache: what MX resolution found, per domain, for its TTL ---- */

struct cache_entry {
    char domain[256];
    dns_status_t status;
    char detail[200];
    mx_host_t *hosts; /* with their addresses; re-ordered at each use */
    unsigned n_hosts;
    uint64_t expires; /* uv_now */
    cache_entry_t *next;
};

static void cache_entry_free(cache_entry_t *e)
{
    free(e->hosts);
    free(e);
}

static void cache_clear(dns_t *dns)
{
    while (dns->cache) {
        cache_entry_t *e = dns->cache;
        dns->cache = e->next;
        cache_entry_free(e);
    }
    dns->cached = 0;
}

/* Finds a live entry, dropping expired ones on the way. */
static cache_entry_t *cache_find(dns_t *dns, const char *domain)
{
    uint64_t now = uv_now(dns->loop);
    for (cache_entry_t **link = &dns->cache; *link;) {
        cache_entry_t *e = *link;
        if (e->expires <= now) {
            *link = e->next;
            cache_entry_free(e);
            dns->cached--;
            continue;
        }
        if (!strcasecmp(e->domain, domain)) return e;
        link = &e->next;
    }
    return NULL;
}

static void cache_store(dns_t *dns, const mx_request_t *req, dns_status_t status,
                        const char *detail)
{
    if (req->ttl == 0 || cache_find(dns, req->domain)) return;
    if (dns->cached >= CACHE_MAX) { /* full: forget the oldest (at the tail) */
        cache_entry_t **link = &dns->cache;
        while ((*link)->next)
            link = &(*link)->next;
        cache_entry_free(*link);
        *link = NULL;
        dns->cached--;
    }
    cache_entry_t *e = calloc(1, sizeof *e);
    if (!e || !(e->hosts = calloc(req->n_hosts ? req->n_hosts : 1, sizeof *e->hosts))) {
        free(e);
        return;
    }
    snprintf(e->domain, sizeof e->domain, "%s", req->domain);
    snprintf(e->detail, sizeof e->detail, "%s", detail);
    e->status = status;
    memcpy(e->hosts, req->hosts, req->n_hosts * sizeof *e->hosts);
    e->n_hosts = req->n_hosts;
    uint32_t ttl = req->ttl < CACHE_MAX_TTL ? req->ttl : CACHE_MAX_TTL;
    e->expires = uv_now(dns->loop) + (uint64_t)ttl * 1000;
    e->next = dns->cache;
    dns->cache = e;
    dns->cached++;
}

/* Steps over a domain name in a DNS message (RFC 1035 §4.1.4: labels or a
 * compression pointer); the offset after it, or 0 when malformed. */
static size_t skip_name(const unsigned char *m, size_t len, size_t off)
{
    while (off < len) {
        unsigned char l = m[off];
        if (l == 0) return off + 1;
        if ((l & 0xc0) == 0xc0) return off + 2 <= len ? off + 2 : 0;
        if (l & 0xc0) return 0;
        off += 1 + (size_t)l;
    }
    return 0;
}

/* The smallest TTL of the MX records in an answer, or UINT32_MAX. */
static uint32_t mx_answer_ttl(const unsigned char *m, size_t len)
{
    uint32_t min = UINT32_MAX;
    if (len < 12) return min;
    unsigned questions = (unsigned)(m[4] << 8 | m[5]), answers = (unsigned)(m[6] << 8 | m[7]);
    size_t off = 12;
    for (unsigned i = 0; i < questions && off; i++)
        if ((off = skip_name(m, len, off))) off += 4;
    for (unsigned i = 0; i < answers && off && off < len; i++) {
        off = skip_name(m, len, off);
        if (!off || off + 10 > len) break;
        unsigned type = (unsigned)(m[off] << 8 | m[off + 1]);
        uint32_t ttl = (uint32_t)m[off + 4] << 24 | (uint32_t)m[off + 5] << 16 |
                       (uint32_t)m[off + 6] << 8 | m[off + 7];
        if (type == ns_t_mx && ttl < min) min = ttl;
        off += 10 + (size_t)(m[off + 8] << 8 | m[off + 9]);
    }
    return min;
}

static void finish(mx_request_t *req, dns_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finish(mx_request_t *req, dns_status_t status, const char *fmt, ...)
{
    dns_result_t *r = calloc(1, sizeof *r);
    if (r) {
        r->status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->detail, sizeof r->detail, fmt, ap);
        va_end(ap);
        if (!req->route && (status == DNS_OK || status == DNS_NULL_MX))
            cache_store(req->dns, req, status, r->detail);
        for (unsigned i = 0; i < req->n_hosts && status == DNS_OK; i++)
            for (unsigned j = 0; j < req->hosts[i].n_addrs && r->n_hops < DNS_MAX_TARGETS; j++) {
                hop_t *hop = &r->hops[r->n_hops++];
                hop->addr = req->hosts[i].addrs[j];
                memcpy(hop->name, req->hosts[i].name, sizeof hop->name);
            }
        req->cb(r, req->arg);
        free(r);
    } else {
        dns_result_t tmp = {.status = DNS_TEMPFAIL, .detail = "out of memory"};
        req->cb(&tmp, req->arg);
    }
    free(req);
}

static bool no_such_name(int status)
{
    return status == ARES_ENOTFOUND || status == ARES_ENODATA;
}

static void addresses_done(mx_request_t *req)
{
    unsigned found = 0;
    bool temporary = false;
    for (unsigned i = 0; i < req->n_hosts; i++) {
        found += req->hosts[i].n_addrs;
        temporary |= req->hosts[i].n_addrs == 0 && !no_such_name(req->hosts[i].status);
    }
    if (found)
        finish(req, DNS_OK, "%u address(es)", found);
    else if (req->route)
        finish(req, DNS_TEMPFAIL, "451 4.4.3 route host %s does not resolve", req->domain);
    else if (req->implicit && !temporary)
        finish(req, DNS_NO_HOST, "550 5.4.4 %s has no MX and no address record", req->domain);
    else
        finish(req, DNS_TEMPFAIL, "451 4.4.3 no address for the mail hosts of %s", req->domain);
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    addr_request_t *ar = arg;
    mx_request_t *req = ar->req;
    mx_host_t *host = &req->hosts[ar->index];
    (void)timeouts;
    free(ar);
    host->status = status;
    for (struct ares_addrinfo_node *n = ai ? ai->nodes : NULL; n && host->n_addrs < ADDRS_PER_HOST;
         n = n->ai_next) {
        uint32_t ttl = n->ai_ttl > 0 ? (uint32_t)n->ai_ttl : 0;
        if (ttl < req->ttl) req->ttl = ttl;
        net_hostport_t *hp = &host->addrs[host->n_addrs++];
        net_addr_text(n->ai_addr, hp->host, sizeof hp->host);
        hp->port = req->port;
    }
    if (ai) ares_freeaddrinfo(ai);
    if (--req->pending == 0) addresses_done(req);
}

static void resolve_hosts(mx_request_t *req)
{
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    req->pending = req->n_hosts;
    for (unsigned i = 0, n = req->n_hosts; i < n; i++) {
        addr_request_t *ar = malloc(sizeof *ar);
        if (!ar) {
            req->hosts[i].status = ARES_ENOMEM;
            if (--req->pending == 0) addresses_done(req);
            continue;
        }
        *ar = (addr_request_t){req, i};
        ares_getaddrinfo(req->dns->channel, req->hosts[i].name, NULL, &hints, on_addrinfo, ar);
    }
}

/* Sorts by preference, then by the random tiebreak. */
static void sort_hosts(mx_request_t *req)
{
    for (unsigned i = 1; i < req->n_hosts; i++) {
        mx_host_t h = req->hosts[i];
        unsigned j = i;
        while (j > 0 && (req->hosts[j - 1].preference > h.preference ||
                         (req->hosts[j - 1].preference == h.preference &&
                          req->hosts[j - 1].tiebreak > h.tiebreak))) {
            req->hosts[j] = req->hosts[j - 1];
            j--;
        }
        req->hosts[j] = h;
    }
}

static void add_host(mx_request_t *req, const char *name, unsigned short preference)
{
    if (req->n_hosts >= DNS_MAX_TARGETS) return;
    mx_host_t *h = &req->hosts[req->n_hosts++];
    snprintf(h->name, sizeof h->name, "%s", name);
    h->preference = preference;
    h->tiebreak = util_random_below(UINT32_MAX);
}

/* Takes the MX targets that are host names; returns how many were not.
 * c-ares writes an octet a name cannot hold as "\DDD" or "\." (a NUL as
 * "\000"), so such a target would be looked up, shown in logs, sent as SNI
 * and named in a bounce as something else than the DNS said, and cut to
 * another name where the escapes pass 255 characters. Postfix skips such a
 * record too ("malformed domain name in resource data of MX record"). */
static unsigned add_mx_hosts(mx_request_t *req, const struct ares_mx_reply *mx)
{
    unsigned malformed = 0;
    for (const struct ares_mx_reply *m = mx; m; m = m->next) {
        if (!m->host[0] || !strcmp(m->host, ".")) continue;
        if (net_domain_valid(m->host)) {
            add_host(req, m->host, m->priority);
            continue;
        }
        char safe[LOG_SAFE_MAX];
        log_warn("event=mx_malformed domain=%s host=\"%s\"", req->domain, log_safe(m->host, safe));
        malformed++;
    }
    return malformed;
}

static void on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    mx_request_t *req = arg;
    struct ares_mx_reply *mx = NULL;
    (void)timeouts;
    if (status == ARES_SUCCESS) {
        status = ares_parse_mx_reply(abuf, alen, &mx);
        uint32_t ttl = mx_answer_ttl(abuf, (size_t)alen);
        if (ttl < req->ttl) req->ttl = ttl;
    }
    if (status == ARES_ENOTFOUND) {
        finish(req, DNS_NXDOMAIN, "550 5.1.2 domain %s does not exist", req->domain);
        return;
    }
    if (status == ARES_ENODATA) { /* RFC 5321 §5.1: the domain is its own mail host */
        req->implicit = true;
        add_host(req, req->domain, 0);
        resolve_hosts(req);
        return;
    }
    if (status != ARES_SUCCESS) {
        finish(req, DNS_TEMPFAIL, "451 4.4.3 MX lookup for %s failed: %s", req->domain,
               ares_strerror(status));
        return;
    }
    /* RFC 7505: one record, preference 0, host "." */
    if (!mx->next && (mx->host[0] == 0 || !strcmp(mx->host, "."))) {
        ares_free_data(mx);
        finish(req, DNS_NULL_MX, "550 5.1.10 %s does not accept mail (null MX)", req->domain);
        return;
    }
    unsigned malformed = add_mx_hosts(req, mx);
    ares_free_data(mx);
    if (req->n_hosts == 0 && malformed) {
        finish(req, DNS_TEMPFAIL, "451 4.4.3 the MX records of %s name no valid host", req->domain);
        return;
    }
    if (req->n_hosts == 0) { /* only "." records: treat as null MX, or nothing ever finishes */
        finish(req, DNS_NULL_MX, "550 5.1.10 %s does not accept mail (null MX)", req->domain);
        return;
    }
    sort_hosts(req);
    resolve_hosts(req);
}

static mx_request_t *request_new(dns_t *dns, const char *name, uint16_t port, dns_mx_cb cb,
                                 void *arg)
{
    mx_request_t *req = calloc(1, sizeof *req);
    if (!req) {
        dns_result_t r = {.status = DNS_TEMPFAIL, .detail = "out of memory"};
        cb(&r, arg);
        return NULL;
    }
    req->dns = dns;
    req->ttl = UINT32_MAX;
    snprintf(req->domain, sizeof req->domain, "%s", name);
    req->port = port;
    req->cb = cb;
    req->arg = arg;
    return req;
}

void dns_resolve_mx(dns_t *dns, const char *domain, uint16_t port, dns_mx_cb cb, void *arg)
{
    mx_request_t *req = request_new(dns, domain, port, cb, arg);
    if (!req) return;
    cache_entry_t *hit = cache_find(dns, domain);
    if (hit) { /* equal preferences get a fresh random order each time */
        memcpy(req->hosts, hit->hosts, hit->n_hosts * sizeof *req->hosts);
        req->n_hosts = hit->n_hosts;
        req->ttl = 0; /* already cached */
        for (unsigned i = 0; i < req->n_hosts; i++) {
            req->hosts[i].tiebreak = util_random_below(UINT32_MAX);
            for (unsigned j = 0; j < req->hosts[i].n_addrs; j++)
                req->hosts[i].addrs[j].port = port;
        }
        sort_hosts(req);
        finish(req, hit->status, "%s (cached)", hit->detail);
        return;
    }
    ares_query(dns->channel, domain, ns_c_in, ns_t_mx, on_mx, req);
    resolver_kick(dns->resolver);
}

void dns_resolve_host(dns_t *dns, const char *host, uint16_t port, dns_mx_cb cb, void *arg)
{
    mx_request_t *req = request_new(dns, host, port, cb, arg);
    if (!req) return;
    req->route = true;
    add_host(req, host, 0);
    resolve_hosts(req);
    resolver_kick(dns->resolver);
}
