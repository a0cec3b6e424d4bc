/* c-ares driven by the libuv loop: c-ares tells us which sockets to watch
 * (ARES_OPT_SOCK_STATE_CB) and when its next timeout is; a uv_poll_t per
 * socket and one timer call back into ares_process_fd. */
#include "core/resolver.h"

#include "core/core.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sock_watch {
    uv_poll_t poll;
    ares_socket_t fd;
    resolver_t *r;
    struct sock_watch *next;
} sock_watch_t;

struct resolver {
    uv_loop_t *loop;
    ares_channel channel;
    uv_timer_t timer;
    sock_watch_t *socks;
};

static void on_timer(uv_timer_t *t)
{
    resolver_t *r = t->data;
    ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    resolver_kick(r);
}

void resolver_kick(resolver_t *r)
{
    struct timeval tv;
    if (!ares_timeout(r->channel, NULL, &tv)) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000 + 1;
    uv_timer_start(&r->timer, on_timer, ms, 0);
}

static void on_sock_poll(uv_poll_t *h, int status, int events)
{
    sock_watch_t *w = h->data;
    resolver_t *r = w->r;
    bool error = status < 0; /* let c-ares read the error */
    ares_process_fd(r->channel, (error || (events & UV_READABLE)) ? w->fd : ARES_SOCKET_BAD,
                    (error || (events & UV_WRITABLE)) ? w->fd : ARES_SOCKET_BAD);
    resolver_kick(r);
}

static void on_watch_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    resolver_t *r = data;
    sock_watch_t **link = &r->socks;
    while (*link && (*link)->fd != fd)
        link = &(*link)->next;
    sock_watch_t *w = *link;
    if (!readable && !writable) {
        if (!w) return;
        *link = w->next;
        uv_poll_stop(&w->poll);
        uv_close((uv_handle_t *)&w->poll, on_watch_closed);
        return;
    }
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || uv_poll_init_socket(r->loop, &w->poll, fd) < 0) {
            free(w);
            log_error("event=dns_watch_failed fd=%d", (int)fd);
            return; /* the query times out */
        }
        w->fd = fd;
        w->r = r;
        w->poll.data = w;
        w->next = r->socks;
        r->socks = w;
    }
    uv_poll_start(&w->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0),
                  on_sock_poll);
}

static int set_servers(ares_channel channel, const char *servers)
{
    char csv[512];
    snprintf(csv, sizeof csv, "%s", servers);
    for (char *p = csv; *p; p++)
        if (*p == ' ' || *p == '\t') *p = ',';
    return ares_set_servers_ports_csv(channel, csv);
}

resolver_t *resolver_new(uv_loop_t *loop, const char *servers, const char *what, int timeout_ms,
                         int tries, char *err, size_t errlen)
{
    static int library = -1;
    if (library < 0) library = ares_library_init(ARES_LIB_INIT_ALL);
    resolver_t *r = calloc(1, sizeof *r);
    if (!r || library != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: cannot initialise");
        free(r);
        return NULL;
    }
    r->loop = loop;
    struct ares_options opts = {0};
    opts.sock_state_cb = on_sock_state;
    opts.sock_state_cb_data = r;
    opts.lookups = (char *)"b"; /* DNS only: /etc/hosts says nothing about mail or keys */
    opts.timeout = timeout_ms;
    opts.tries = tries;
    int rc = ares_init_options(&r->channel, &opts,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_LOOKUPS | ARES_OPT_TIMEOUTMS |
                                   ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        free(r);
        return NULL;
    }
    if (servers && *servers && (rc = set_servers(r->channel, servers)) != ARES_SUCCESS) {
        snprintf(err, errlen, "%s: '%s': %s", what, servers, ares_strerror(rc));
        ares_destroy(r->channel);
        free(r);
        return NULL;
    }
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    return r;
}

static void on_resolver_closed(uv_handle_t *h)
{
    free(h->data);
}

void resolver_free(resolver_t *r)
{
    if (!r) return;
    ares_destroy(r->channel); /* closes its sockets through on_sock_state */
    while (r->socks)
        on_sock_state(r, r->socks->fd, 0, 0);
    uv_close((uv_handle_t *)&r->timer, on_resolver_closed);
}

ares_channel resolver_channel(resolver_t *r)
{
    return r->channel;
}

struct host_request {
    resolver_addr_cb cb;
    void *arg;
    bool starting;    /* inside resolver_host: an answer now waits for the loop */
    uv_timer_t defer; /* for that answer */
    int status;
    char text[64];
};

static void on_request_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_deferred(uv_timer_t *t)
{
    struct host_request *req = t->data;
    req->cb(req->status, req->status == ARES_SUCCESS ? req->text : NULL, req->arg);
    uv_close((uv_handle_t *)&req->defer, on_request_closed);
}

/* The first IPv4 address, else the first of any family. c-ares answers a
 * literal address, and some failures, before ares_getaddrinfo returns:
 * that answer goes out from the loop, as every other does. */
static void on_host(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    struct host_request *req = arg;
    (void)timeouts;
    const struct ares_addrinfo_node *pick = NULL;
    for (const struct ares_addrinfo_node *n = ai ? ai->nodes : NULL; n; n = n->ai_next)
        if (!pick || (n->ai_family == AF_INET && pick->ai_family != AF_INET)) pick = n;
    if (status == ARES_SUCCESS && !pick) status = ARES_ENODATA;
    if (pick) net_addr_text(pick->ai_addr, req->text, sizeof req->text);
    if (ai) ares_freeaddrinfo(ai);
    req->status = status;
    if (req->starting) {
        uv_timer_start(&req->defer, on_deferred, 0, 0);
        return;
    }
    req->cb(status, status == ARES_SUCCESS ? req->text : NULL, req->arg);
    uv_close((uv_handle_t *)&req->defer, on_request_closed);
}

void resolver_host(resolver_t *r, const char *host, resolver_addr_cb cb, void *arg)
{
    struct host_request *req = calloc(1, sizeof *req);
    if (!req) {
        cb(ARES_ENOMEM, NULL, arg);
        return;
    }
    req->cb = cb;
    req->arg = arg;
    req->starting = true;
    uv_timer_init(r->loop, &req->defer);
    req->defer.data = req;
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    ares_getaddrinfo(r->channel, host, NULL, &hints, on_host, req);
    req->starting = false;
    resolver_kick(r);
}
