/* One Redis connection on libuv.
 *
 * Why not hiredis's own libuv adapter: in 0.14.1 it returns early on a poll
 * error, so after Redis dies no callback ever runs and requests hang forever.
 * Ours hands a poll error to hiredis as readiness; hiredis then reads the
 * error, disconnects and runs every pending callback with a NULL reply.
 * hiredis 0.14 has no timeouts and no reconnect either: each request carries a
 * timer, a request that times out drops the whole connection (a connection
 * that let one request time out is not to be trusted with the next), and a new
 * context is made from a timer with backoff. A context is never reused. */
#include "queue/redis.h"

#include "core/core.h"

#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 2000

struct rconn {
    uv_loop_t *loop;
    char host[256];
    int port;
    unsigned timeout_ms;
    rconn_connect_cb on_connect;
    void *on_connect_arg;
    redisAsyncContext *ac;
    bool connected;
    bool closing;
    unsigned epoch; /* counts established connections */
    uv_timer_t reconnect_timer;
    unsigned backoff_ms;
    char channel[64]; /* subscription, if any */
    void (*on_message)(const char *payload, size_t len, void *arg);
    void *on_message_arg;
};

/* The adapter: one uv_poll_t per hiredis context. */
struct poll_watch {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    int events;
};

static void on_poll(uv_poll_t *handle, int status, int events)
{
    struct poll_watch *w = handle->data;
    if (status < 0) events = UV_READABLE | UV_WRITABLE; /* let hiredis find the error */
    if ((events & UV_READABLE) && w->ac) redisAsyncHandleRead(w->ac);
    if ((events & UV_WRITABLE) && w->ac) redisAsyncHandleWrite(w->ac);
}

static void poll_update(struct poll_watch *w, int add, int del)
{
    int events = (w->events | add) & ~del;
    if (events == w->events) return;
    w->events = events;
    if (events)
        uv_poll_start(&w->poll, events, on_poll);
    else
        uv_poll_stop(&w->poll);
}

static void ev_add_read(void *p)
{
    poll_update(p, UV_READABLE, 0);
}

static void ev_del_read(void *p)
{
    poll_update(p, 0, UV_READABLE);
}

static void ev_add_write(void *p)
{
    poll_update(p, UV_WRITABLE, 0);
}

static void ev_del_write(void *p)
{
    poll_update(p, 0, UV_WRITABLE);
}

static void on_poll_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void ev_cleanup(void *p)
{
    struct poll_watch *w = p;
    w->ac = NULL;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, on_poll_closed);
}

static int attach(uv_loop_t *loop, redisAsyncContext *ac)
{
    struct poll_watch *w = calloc(1, sizeof *w);
    if (!w) return -1;
    if (uv_poll_init_socket(loop, &w->poll, ac->c.fd) < 0) {
        free(w);
        return -1;
    }
    w->poll.data = w;
    w->ac = ac;
    ac->ev.data = w;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return 0;
}

/* ---- connection life cycle ---- */

static void connect_now(rconn_t *c);

static void on_reconnect_timer(uv_timer_t *t)
{
    connect_now(t->data);
}

static void schedule_reconnect(rconn_t *c)
{
    if (c->closing || uv_is_active((uv_handle_t *)&c->reconnect_timer)) return;
    uv_timer_start(&c->reconnect_timer, on_reconnect_timer, c->backoff_ms, 0);
    c->backoff_ms = c->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : c->backoff_ms * 2;
}

/* Drops the current context: pending callbacks run with a NULL reply. */
static void drop(rconn_t *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    if (!ac) return;
    if (c->connected && !c->closing)
        log_warn("event=redis_disconnect redis=%s:%d reason=\"%s\"", c->host, c->port, why);
    c->ac = NULL;
    c->connected = false;
    redisAsyncFree(ac);
    schedule_reconnect(c);
}

static void on_subscribe_message(redisAsyncContext *ac, void *r, void *arg);

static void on_connected(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;
    if (c->ac != ac) return;
    uv_timer_stop(&c->reconnect_timer); /* the connect deadline */
    if (status != REDIS_OK) {
        /* hiredis frees the context itself after this callback. */
        log_debug("event=redis_connect_failed redis=%s:%d error=\"%s\"", c->host, c->port,
                  ac->errstr);
        c->ac = NULL;
        schedule_reconnect(c);
        return;
    }
    c->connected = true;
    c->epoch++;
    c->backoff_ms = RECONNECT_MIN_MS;
    /* A peer that vanishes without a FIN (failover, partition) is noticed by
     * the request timers; keepalive covers the idle subscriber connection. */
    redisEnableKeepAlive(&c->ac->c);
    log_info("event=redis_connected redis=%s:%d", c->host, c->port);
    if (c->channel[0])
        redisAsyncCommand(c->ac, on_subscribe_message, c, "SUBSCRIBE %s", c->channel);
    if (c->on_connect) c->on_connect(c, c->on_connect_arg);
}

static void on_disconnected(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;
    (void)status;
    if (c->ac != ac) return; /* we dropped it ourselves */
    log_warn("event=redis_disconnect redis=%s:%d reason=\"%s\"", c->host, c->port,
             ac->errstr[0] ? ac->errstr : "closed");
    c->ac = NULL;
    c->connected = false;
    schedule_reconnect(c);
}

static void on_connect_deadline(uv_timer_t *t)
{
    rconn_t *c = t->data;
    if (c->connected || !c->ac) return;
    log_debug("event=redis_connect_failed redis=%s:%d error=\"timed out\"", c->host, c->port);
    drop(c, "connect timed out");
}

static void connect_now(rconn_t *c)
{
    if (c->closing || c->ac) return;
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (!ac) {
        schedule_reconnect(c);
        return;
    }
    if (ac->err || attach(c->loop, ac) < 0) {
        log_debug("event=redis_connect_failed redis=%s:%d error=\"%s\"", c->host, c->port,
                  ac->errstr);
        redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connected);
    redisAsyncSetDisconnectCallback(ac, on_disconnected);
    /* Without a deadline a black-holed address holds the connect for the
     * kernel's SYN timeout (about two minutes) with every message refused. */
    uv_timer_start(&c->reconnect_timer, on_connect_deadline, c->timeout_ms, 0);
}

rconn_t *rconn_new(uv_loop_t *loop, const char *host, int port, unsigned timeout_ms,
                   rconn_connect_cb on_connect, void *arg)
{
    rconn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    snprintf(c->host, sizeof c->host, "%s", host);
    c->port = port;
    c->timeout_ms = timeout_ms;
    c->on_connect = on_connect;
    c->on_connect_arg = arg;
    c->backoff_ms = RECONNECT_MIN_MS;
    uv_timer_init(loop, &c->reconnect_timer);
    c->reconnect_timer.data = c;
    connect_now(c);
    return c;
}

static void on_rconn_closed(uv_handle_t *handle)
{
    free(handle->data);
}

void rconn_free(rconn_t *c)
{
    if (!c) return;
    c->closing = true;
    uv_timer_stop(&c->reconnect_timer);
    drop(c, "closing");
    uv_close((uv_handle_t *)&c->reconnect_timer, on_rconn_closed);
}

bool rconn_connected(const rconn_t *c)
{
    return c->connected;
}

unsigned rconn_epoch(const rconn_t *c)
{
    return c->epoch;
}

const char *rconn_host(const rconn_t *c)
{
    return c->host;
}

int rconn_port(const rconn_t *c)
{
    return c->port;
}

/* ---- requests ---- */

struct request {
    rconn_t *conn;
    rconn_reply_cb cb;
    void *arg;
    uv_timer_t timer;
    bool answered;
};

static void on_request_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void answer(struct request *req, redisReply *reply, const char *err)
{
    if (req->answered) return;
    req->answered = true;
    uv_timer_stop(&req->timer);
    req->cb(reply, err, req->arg);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    struct request *req = arg;
    (void)ac;
    answer(req, reply, reply ? NULL : "connection lost");
    uv_close((uv_handle_t *)&req->timer, on_request_closed);
}

static void on_request_timeout(uv_timer_t *t)
{
    struct request *req = t->data;
    rconn_t *c = req->conn;
    answer(req, NULL, "timeout");
    /* hiredis still owns req and will run on_reply (with NULL) from drop(). */
    drop(c, "request timed out");
}

int rconn_send(rconn_t *c, rconn_reply_cb cb, void *arg, const char *cmd, size_t len, bool asking)
{
    if (!c->ac || !c->connected) return -1;
    struct request *req = calloc(1, sizeof *req);
    if (!req) return -1;
    req->conn = c;
    req->cb = cb;
    req->arg = arg;
    uv_timer_init(c->loop, &req->timer);
    req->timer.data = req;
    /* ASKING holds for the next command on this connection only, and hiredis
     * writes both in order, back to back. */
    if ((asking && redisAsyncCommand(c->ac, NULL, NULL, "ASKING") != REDIS_OK) ||
        redisAsyncFormattedCommand(c->ac, on_reply, req, cmd, len) != REDIS_OK) {
        uv_close((uv_handle_t *)&req->timer, on_request_closed);
        return -1;
    }
    uv_timer_start(&req->timer, on_request_timeout, c->timeout_ms, 0);
    return 0;
}

int rconn_command(rconn_t *c, rconn_reply_cb cb, void *arg, int argc, const char **argv,
                  const size_t *lens)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0) return -1;
    int rc = rconn_send(c, cb, arg, cmd, (size_t)len, false);
    redisFreeCommand(cmd);
    return rc;
}

static void on_subscribe_message(redisAsyncContext *ac, void *r, void *arg)
{
    rconn_t *c = arg;
    redisReply *reply = r;
    (void)ac;
    if (!reply) {
        c->on_message(NULL, 0, c->on_message_arg);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        !strcmp(reply->element[0]->str, "message") && reply->element[2]->type == REDIS_REPLY_STRING)
        c->on_message(reply->element[2]->str, reply->element[2]->len, c->on_message_arg);
}

int rconn_subscribe(rconn_t *c, const char *channel,
                    void (*cb)(const char *payload, size_t len, void *arg), void *arg)
{
    if (strlen(channel) >= sizeof c->channel) return -1;
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    c->on_message = cb;
    c->on_message_arg = arg;
    if (c->connected) redisAsyncCommand(c->ac, on_subscribe_message, c, "SUBSCRIBE %s", c->channel);
    return 0;
}
