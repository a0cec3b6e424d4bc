/* One Redis connection on the project's stream (core/stream.h).
 *
 * hiredis is kept for what it does well, the RESP formatter
 * (redisFormatCommandArgv) and reader (redisReader); the connection is ours.
 * hiredis 0.14's own asynchronous layer has no timeouts, no reconnect and
 * cannot speak TLS, and its libuv adapter drops poll errors, so after Redis
 * dies no callback would ever run.
 *
 * Replies come in the order the commands went out, so the requests in flight
 * are one FIFO, and the stream's one timer always runs for the oldest of
 * them: a request that times out drops the whole connection (a connection
 * that let one request time out is not to be trusted with the next), every
 * other request then gets "connection lost", and a new connection is made
 * from a timer with backoff. A connection is never reused after a drop.
 *
 * A connection counts as established only after its TLS handshake (for
 * rediss://) and its AUTH: nothing else goes out before, so every command,
 * on every reconnection, runs as the configured user. Failures of one kind
 * in a row are logged once, with the address and never the password. */
#include "queue/redis.h"

#include "core/core.h"
#include "core/stream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 2000
#define KEEPALIVE_S      15

/* A request sent and not yet answered; cb NULL: the reply is dropped (ASKING). */
struct pending {
    struct pending *next;
    rconn_reply_cb cb;
    void *arg;
    uint64_t deadline; /* uv_now */
};

struct rconn {
    uv_loop_t *loop;
    char host[256];
    int port;
    redis_endpoint_t ep; /* the login and TLS settings */
    SSL_CTX *tls_ctx;    /* rediss:// only */
    char failure[256];   /* of the current streak of failed attempts */
    unsigned timeout_ms;
    rconn_connect_cb on_connect;
    void *on_connect_arg;
    stream_t *stream; /* the current connection, or NULL */
    redisReader *reader;
    size_t announced; /* the reader's count of the reply it reads */
    bool connected;
    bool closing;
    unsigned epoch; /* counts established connections */
    uv_timer_t reconnect_timer;
    unsigned backoff_ms;
    struct pending *head, *tail;
    char channel[64]; /* subscription, if any: then every reply is a message */
    void (*on_message)(const char *payload, size_t len, void *arg);
    void *on_message_arg;
};

static const char ASKING[] = "*1\r\n$6\r\nASKING\r\n";

/* ---- the requests in flight ---- */

/* The timer runs for the oldest request; without one, a connected idle
 * connection needs none (keepalive probes watch it). */
static void arm(rconn_t *c)
{
    if (!c->head) {
        stream_set_timeout(c->stream, 0);
        return;
    }
    uint64_t now = uv_now(c->loop);
    stream_set_timeout(c->stream, c->head->deadline > now ? c->head->deadline - now : 1);
}

static struct pending *pop(rconn_t *c)
{
    struct pending *p = c->head;
    if (p) c->head = p->next;
    if (!c->head) c->tail = NULL;
    return p;
}

/* Answers every request in flight with err; the list is taken first, as a
 * callback may send again (and get -1, the connection being gone). */
static void answer_all(rconn_t *c, const char *err)
{
    struct pending *p = c->head;
    c->head = c->tail = NULL;
    while (p) {
        struct pending *next = p->next;
        if (p->cb) p->cb(NULL, err, p->arg);
        free(p);
        p = next;
    }
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

/* Logs a failed attempt when it is the first of its streak: a Redis that
 * refuses our login is said once, not every backoff. */
static void note_failure(rconn_t *c, const char *why)
{
    if (!strcmp(c->failure, why)) return;
    snprintf(c->failure, sizeof c->failure, "%s", why);
    bool refused = !strncmp(why, "AUTH", 4) || !strncmp(why, "TLS", 3);
    if (refused)
        log_error("event=redis_connect_failed redis=%s:%d user=%s error=\"%s\"", c->host, c->port,
                  c->ep.user[0] ? c->ep.user : "default", why);
    else
        log_warn("event=redis_connect_failed redis=%s:%d error=\"%s\"", c->host, c->port, why);
}

/* Ends the current connection: its requests fail, a subscriber hears that
 * messages may have been missed, and a new connection follows. */
static void drop(rconn_t *c, const char *why)
{
    if (!c->stream) return;
    if (c->connected && !c->closing)
        log_warn("event=redis_disconnect redis=%s:%d reason=\"%s\"", c->host, c->port, why);
    else if (!c->connected && !c->closing)
        note_failure(c, why);
    bool was_connected = c->connected;
    stream_abandon(c->stream);
    c->stream = NULL;
    c->connected = false;
    redisReaderFree(c->reader);
    c->reader = NULL;
    schedule_reconnect(c);
    answer_all(c, "connection lost");
    if (was_connected && c->channel[0] && c->on_message) c->on_message(NULL, 0, c->on_message_arg);
}

static int send_subscribe(rconn_t *c)
{
    char *cmd = NULL;
    const char *argv[] = {"SUBSCRIBE", c->channel};
    int len = redisFormatCommandArgv(&cmd, 2, argv, NULL);
    return len < 0 ? -1 : stream_write_owned(c->stream, cmd, (size_t)len);
}

static void on_connected(rconn_t *c)
{
    c->connected = true;
    c->failure[0] = 0;
    c->epoch++;
    c->backoff_ms = RECONNECT_MIN_MS;
    stream_set_timeout(c->stream, 0); /* the connect deadline */
    /* A peer that vanishes without a FIN (failover, partition) is noticed by
     * the request deadlines; keepalive covers the idle subscriber connection. */
    stream_keepalive(c->stream, KEEPALIVE_S);
    log_info("event=redis_connected redis=%s:%d tls=%s user=%s", c->host, c->port,
             c->tls_ctx ? "yes" : "no",
             c->ep.pass[0] ? (c->ep.user[0] ? c->ep.user : "default") : "none");
    if (c->channel[0] && send_subscribe(c) < 0) {
        drop(c, "cannot subscribe");
        return;
    }
    if (c->on_connect) c->on_connect(c, c->on_connect_arg);
}

/* A subscriber's replies: ["message", channel, payload]; the confirmation
 * of SUBSCRIBE is not one. */
static void deliver_message(rconn_t *c, const redisReply *r)
{
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "message") &&
        r->element[2]->type == REDIS_REPLY_STRING)
        c->on_message(r->element[2]->str, r->element[2]->len, c->on_message_arg);
}

/* ---- the reader ---- */

#define REPLY_MAX_ELEMENTS (1u << 24)

static redisReplyObjectFunctions bounded_functions;
static void *(*hiredis_create_array)(const redisReadTask *, int);
static pthread_once_t bounded_once = PTHREAD_ONCE_INIT;

static void *create_array_bounded(const redisReadTask *task, int elements)
{
    size_t *announced = task->privdata;
    if (!task->parent) *announced = 0; /* a new reply */
    if (elements < 0 || (size_t)elements > REPLY_MAX_ELEMENTS - *announced) return NULL;
    *announced += (size_t)elements;
    return hiredis_create_array(task, elements);
}

static void bounded_init(void)
{
    redisReader *r = redisReaderCreate();
    if (!r) return;
    bounded_functions = *r->fn;
    hiredis_create_array = bounded_functions.createArray;
    bounded_functions.createArray = create_array_bounded;
    redisReaderFree(r);
}

redisReader *rconn_reader_new(size_t *announced)
{
    pthread_once(&bounded_once, bounded_init);
    if (!hiredis_create_array) return NULL;
    redisReader *r = redisReaderCreateWithFunctions(&bounded_functions);
    if (r) r->privdata = announced; /* (redisReaderSetPrivdata casts it to int) */
    return r;
}

/* ---- replies ---- */

/* Feeds what came to the reader and answers each complete reply; a
 * callback may drop the connection (or send more) in between. */
static void read_replies(rconn_t *c)
{
    stream_t *stream = c->stream;
    size_t len;
    const char *data = stream_data(stream, &len);
    if (redisReaderFeed(c->reader, data, len) != REDIS_OK) {
        drop(c, "out of memory");
        return;
    }
    stream_consume(stream, len);
    while (c->stream == stream) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            drop(c, "protocol error");
            return;
        }
        if (!reply) break;
        if (c->channel[0] && c->connected) {
            deliver_message(c, reply);
        } else {
            struct pending *p = pop(c);
            if (!p) { /* a reply nobody asked for: the stream is out of step */
                freeReplyObject(reply);
                drop(c, "unexpected reply");
                return;
            }
            arm(c);
            if (p->cb) p->cb(reply, NULL, p->arg);
            free(p);
        }
        freeReplyObject(reply);
    }
}

static void on_timeout(rconn_t *c)
{
    if (!c->connected) {
        drop(c, "connect timed out");
        return;
    }
    struct pending *p = pop(c);
    if (p && p->cb) p->cb(NULL, "timeout", p->arg);
    free(p);
    drop(c, "request timed out");
}

static int expect_reply(rconn_t *c, rconn_reply_cb cb, void *arg);

/* The certificate must chain to the CA and name the server: tls_server_name,
 * else the host connected to (an address is checked as one). */
static void start_tls(rconn_t *c)
{
    stream_tls_t how = {.host = c->ep.server_name[0] ? c->ep.server_name : c->host, .verify = true};
    if (stream_start_tls(c->stream, c->tls_ctx, &how) < 0) drop(c, "TLS: cannot start");
}

/* The reply to AUTH, or to the PING that stands for it without a password:
 * an error to AUTH (WRONGPASS, ERR) and NOAUTH to PING (Redis wants a
 * password we do not have) end the attempt, with the reply as the reason. */
static void on_login_reply(redisReply *reply, const char *err, void *arg)
{
    rconn_t *c = arg;
    (void)err;
    if (!reply) return; /* the connection is being dropped: drop says why */
    if (reply->type == REDIS_REPLY_ERROR && (c->ep.pass[0] || !strncmp(reply->str, "NOAUTH", 6))) {
        char why[256];
        snprintf(why, sizeof why, "AUTH: %s", reply->str);
        drop(c, why);
        return;
    }
    on_connected(c);
}

/* AUTH first: "AUTH user password" for an ACL user, "AUTH password" for
 * the default one; without a password a PING, so that a Redis asking for
 * one says so now rather than to each later command. */
static void log_in(rconn_t *c)
{
    const char *argv[] = {"PING", NULL, NULL};
    int argc = 1;
    if (c->ep.pass[0]) {
        argv[0] = "AUTH";
        argv[1] = c->ep.user[0] ? c->ep.user : c->ep.pass;
        argv[2] = c->ep.pass;
        argc = c->ep.user[0] ? 3 : 2;
    }
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    if (len < 0 || stream_write_owned(c->stream, cmd, (size_t)len) < 0 ||
        expect_reply(c, on_login_reply, c) < 0)
        drop(c, "out of memory");
}

static void on_stream(stream_t *stream, enum stream_event event, void *arg)
{
    rconn_t *c = arg;
    if (stream != c->stream) return;
    switch (event) {
    case STREAM_CONNECTED:
        if (c->tls_ctx)
            start_tls(c);
        else
            log_in(c);
        break;
    case STREAM_TLS_READY:
        log_in(c);
        break;
    case STREAM_DATA:
        read_replies(c);
        break;
    case STREAM_TIMEOUT:
        on_timeout(c);
        break;
    case STREAM_EOF:
        drop(c, "closed");
        break;
    case STREAM_ERROR:
        drop(c, stream_error(stream));
        break;
    case STREAM_TLS_FAILED: {
        char why[256];
        snprintf(why, sizeof why, "TLS: %s", stream_error(stream));
        drop(c, why);
        break;
    }
    case STREAM_CLOSED:
        break;
    }
}

static void connect_now(rconn_t *c)
{
    if (c->closing || c->stream) return;
    c->reader = rconn_reader_new(&c->announced);
    c->stream =
        c->reader ? stream_connect(c->loop, c->host, (uint16_t)c->port, on_stream, c) : NULL;
    if (!c->stream) {
        redisReaderFree(c->reader);
        c->reader = NULL;
        schedule_reconnect(c);
        return;
    }
    /* Without a deadline a black-holed address holds the connect for the
     * kernel's SYN timeout (about two minutes) with every message refused. */
    stream_set_timeout(c->stream, c->timeout_ms);
}

rconn_t *rconn_new(uv_loop_t *loop, const redis_endpoint_t *ep, unsigned timeout_ms,
                   rconn_connect_cb on_connect, void *arg)
{
    rconn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    c->ep = *ep;
    snprintf(c->host, sizeof c->host, "%s", ep->host);
    c->port = ep->port;
    if (ep->tls) {
        char err[300];
        c->tls_ctx = tls_redis_context(ep->ca_file, ep->cert, ep->key, err, sizeof err);
        if (!c->tls_ctx) {
            log_error("event=redis_tls_failed redis=%s:%d error=\"%s\"", c->host, c->port, err);
            config_redis_endpoint_clear(&c->ep);
            free(c);
            return NULL;
        }
    }
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
    rconn_t *c = handle->data;
    SSL_CTX_free(c->tls_ctx);
    config_redis_endpoint_clear(&c->ep);
    free(c);
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

bool rconn_idle(const rconn_t *c)
{
    return !c->head;
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

const char *rconn_failure(const rconn_t *c)
{
    return c->connected ? "" : c->failure;
}

/* ---- requests ---- */

static int expect_reply(rconn_t *c, rconn_reply_cb cb, void *arg)
{
    struct pending *p = malloc(sizeof *p);
    if (!p) return -1;
    *p = (struct pending){NULL, cb, arg, uv_now(c->loop) + c->timeout_ms};
    bool first = !c->head;
    if (c->tail)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
    if (first) arm(c);
    return 0;
}

/* ASKING holds for the next command on this connection only: both go out
 * back to back, and its own reply is dropped. */
static int send_asking(rconn_t *c)
{
    return stream_write(c->stream, ASKING, sizeof ASKING - 1) < 0 || expect_reply(c, NULL, NULL) < 0
               ? -1
               : 0;
}

int rconn_send_owned(rconn_t *c, rconn_reply_cb cb, void *arg, char *cmd, size_t len, bool asking)
{
    if (!c->connected) {
        free(cmd);
        return -1;
    }
    if (asking && send_asking(c) < 0) {
        free(cmd);
        drop(c, "out of memory"); /* ASKING may be out unawaited: replies out of step */
        return -1;
    }
    if (stream_write_owned(c->stream, cmd, len) < 0) return -1;
    if (expect_reply(c, cb, arg) < 0) {
        /* written but not awaited: the replies would be out of step */
        drop(c, "out of memory");
        return -1;
    }
    return 0;
}

int rconn_send(rconn_t *c, rconn_reply_cb cb, void *arg, const char *cmd, size_t len, bool asking)
{
    if (!c->connected) return -1;
    char *copy = malloc(len);
    if (!copy) return -1;
    memcpy(copy, cmd, len);
    return rconn_send_owned(c, cb, arg, copy, len, asking);
}

int rconn_command(rconn_t *c, rconn_reply_cb cb, void *arg, int argc, const char **argv,
                  const size_t *lens)
{
    if (!c->connected) return -1;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0) return -1;
    return rconn_send_owned(c, cb, arg, cmd, (size_t)len, false);
}

int rconn_subscribe(rconn_t *c, const char *channel,
                    void (*cb)(const char *payload, size_t len, void *arg), void *arg)
{
    if (strlen(channel) >= sizeof c->channel) return -1;
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    c->on_message = cb;
    c->on_message_arg = arg;
    /* again from on_connected after every reconnect */
    return c->connected ? send_subscribe(c) : 0;
}
