/* A small HTTP/1.1 server for /metrics, /healthz and /readyz: GET and HEAD
 * only, one request per connection, the request head bounded, every
 * connection closed after its reply or after a timeout. It is for scrapers
 * and health checks, not for browsers at large, so it keeps no state
 * between requests and holds at most HTTP_MAX_CONNECTIONS at once. */
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define HTTP_MAX_HEAD        8192
#define HTTP_MAX_CONNECTIONS 64
#define HTTP_TIMEOUT_MS      10000

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    http_handler_fn handler;
    void *arg;
    unsigned connections;
    bool stopping;
};

typedef struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write;
    http_server_t *server;
    char head[HTTP_MAX_HEAD];
    size_t len;
    buf_t reply;
    int handles;
    bool replied;
    bool head_only; /* HEAD: the reply without its body */
    bool deferred;  /* the handler answers later, with http_reply */
} http_conn_t;

static void conn_free(http_conn_t *c);

static void on_conn_closed(uv_handle_t *h)
{
    http_conn_t *c = h->data;
    if (--c->handles > 0) return;
    if (c->deferred && !c->replied) return; /* http_reply frees it */
    conn_free(c);
}

static void conn_free(http_conn_t *c)
{
    http_server_t *server = c->server;
    buf_free(&c->reply);
    free(c);
    server->connections--;
    if (server->stopping && server->connections == 0 && !server->listener.data) free(server);
}

static void conn_close(http_conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

static void respond(http_conn_t *c, int status, const char *type, const buf_t *body, bool head)
{
    c->replied = true;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) { /* gone while its answer was made */
        if (c->handles == 0) conn_free(c);
        return;
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    size_t len = body ? body->len : 0;
    buf_printf(&c->reply,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
               status, reason_phrase(status), type, len);
    if (!head && len) buf_append(&c->reply, body->data, len);
    if (!c->reply.data) {
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->reply.data, (unsigned)c->reply.len);
    c->write.data = c;
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) conn_close(c);
}

/* "GET /path HTTP/1.1" and the rest of the head, once it is all in. */
static void handle(http_conn_t *c)
{
    char method[8], target[256], version[16];
    char *eol = memchr(c->head, '\r', c->len);
    if (!eol) {
        respond(c, 400, "text/plain", NULL, false);
        return;
    }
    *eol = 0;
    if (sscanf(c->head, "%7s %255s %15s", method, target, version) != 3 ||
        strncmp(version, "HTTP/1.", 7)) {
        respond(c, 400, "text/plain", NULL, false);
        return;
    }
    bool head = c->head_only = !strcmp(method, "HEAD");
    if (!head && strcmp(method, "GET")) {
        respond(c, 405, "text/plain", NULL, false);
        return;
    }
    char *query = strchr(target, '?');
    if (query) *query = 0;
    buf_t body;
    buf_init(&body);
    const char *type = "text/plain; charset=utf-8";
    c->deferred = true; /* until the handler says otherwise: it may answer at once */
    int status = c->server->handler(c, target, &body, &type, c->server->arg);
    if (status) {
        c->deferred = false;
        respond(c, status, type, &body, head);
    }
    buf_free(&body);
}

void http_reply(http_request_t *c, int status, const char *content_type, const buf_t *body)
{
    respond(c, status, content_type, body, c->head_only);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    http_conn_t *c = h->data;
    (void)suggested;
    *b = uv_buf_init(c->head + c->len, (unsigned)(sizeof c->head - c->len - 1));
}

static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *b)
{
    http_conn_t *c = stream->data;
    (void)b;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->head[c->len] = 0;
    if (strstr(c->head, "\r\n\r\n"))
        handle(c);
    else if (c->len >= sizeof c->head - 1)
        respond(c, 431, "text/plain", NULL, false);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *listener, int status)
{
    http_server_t *server = listener->data;
    if (status < 0) return;
    http_conn_t *c = calloc(1, sizeof *c);
    if (!c) return;
    c->server = server;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    server->connections++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0 ||
        server->connections > HTTP_MAX_CONNECTIONS) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, HTTP_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

http_server_t *http_start(uv_loop_t *loop, const net_hostport_t *listen, http_handler_fn handler,
                          void *arg, char *err, size_t errlen)
{
    http_server_t *server = calloc(1, sizeof *server);
    if (!server) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    server->loop = loop;
    server->handler = handler;
    server->arg = arg;
    uv_tcp_init(loop, &server->listener);
    server->listener.data = server;
    if (net_listen(&server->listener, listen, 128, on_connection, err, errlen) < 0) {
        http_stop(server);
        return NULL;
    }
    return server;
}

static void on_listener_closed(uv_handle_t *h)
{
    http_server_t *server = h->data;
    server->listener.data = NULL;
    if (server->connections == 0) free(server);
}

void http_stop(http_server_t *server)
{
    if (!server) return;
    server->stopping = true;
    uv_close((uv_handle_t *)&server->listener, on_listener_closed);
}
