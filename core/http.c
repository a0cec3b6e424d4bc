/* A small HTTP/1.1 server for /metrics, /healthz and /readyz: GET and HEAD
 * only, one request per connection, the request head bounded, every
 * connection closed after its reply or after a timeout. It is for scrapers
 * and health checks, not for browsers at large, so it keeps no state
 * between requests and holds at most HTTP_MAX_CONNECTIONS at once. */
#include "core/core.h"
#include "core/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    stream_t *stream; /* NULL once closed */
    http_server_t *server;
    bool replied;
    bool head_only; /* HEAD: the reply without its body */
    bool deferred;  /* the handler answers later, with http_reply */
} http_conn_t;

static void conn_free(http_conn_t *c)
{
    http_server_t *server = c->server;
    free(c);
    server->connections--;
    if (server->stopping && server->connections == 0 && !server->listener.data) free(server);
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
    case 414:
        return "URI Too Long";
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
    if (!c->stream) { /* gone while its answer was made */
        conn_free(c);
        return;
    }
    size_t len = body ? body->len : 0;
    buf_t reply;
    buf_init(&reply);
    buf_printf(&reply,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
               status, reason_phrase(status), type, len);
    if (!head && len) buf_append(&reply, body->data, len);
    if (!reply.data || stream_write_owned(c->stream, reply.data, reply.len) < 0) {
        stream_close(c->stream);
        return;
    }
    stream_close_when_written(c->stream);
}

/* Splits the request line "GET /path HTTP/1.1" (RFC 9112 §3) into its
 * method and target, each whole or not at all: 0, or the status to refuse
 * it with. It is read from its octets, not as a C string: sscanf stopped at
 * a NUL ("GET /metrics\0..." passed as "GET /metrics") and cut a long
 * target, reading its tail as the version. */
static int request_line(const char *p, size_t len, char method[16], char target[256])
{
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)p[i] < 0x21 && p[i] != ' ') || p[i] == 0x7f) return 400;
    const char *sp1 = memchr(p, ' ', len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - p)) : NULL;
    if (!sp2 || sp1 == p || sp2 == sp1 + 1) return 400;
    size_t method_len = (size_t)(sp1 - p), target_len = (size_t)(sp2 - sp1 - 1);
    const char *version = sp2 + 1;
    size_t version_len = len - (size_t)(version - p);
    if (version_len != 8 || memcmp(version, "HTTP/1.", 7) || version[7] < '0' || version[7] > '9')
        return 400;
    if (method_len >= 16) return 405;
    if (target_len >= 256) return 414;
    memcpy(method, p, method_len);
    method[method_len] = 0;
    memcpy(target, sp1 + 1, target_len);
    target[target_len] = 0;
    return 0;
}

/* The request line and the rest of the head, once it is all in. */
static void handle(http_conn_t *c, const char *request, size_t len)
{
    char method[16], target[256];
    const char *eol = memchr(request, '\r', len);
    int refused = eol ? request_line(request, (size_t)(eol - request), method, target) : 400;
    if (refused) {
        respond(c, refused, "text/plain", NULL, false);
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

static void on_stream(stream_t *stream, enum stream_event event, void *arg)
{
    http_conn_t *c = arg;
    size_t len;
    const char *head;
    switch (event) {
    case STREAM_DATA:
        if (c->replied || c->deferred) return;
        head = stream_data(stream, &len);
        if (len > HTTP_MAX_HEAD - 1) len = HTTP_MAX_HEAD - 1;
        if (memmem(head, len, "\r\n\r\n", 4)) {
            stream_pause(stream, true);
            handle(c, head, len);
        } else if (len == HTTP_MAX_HEAD - 1) {
            respond(c, 431, "text/plain", NULL, false);
        }
        return;
    case STREAM_CLOSED:
        c->stream = NULL;
        if (!c->deferred || c->replied) conn_free(c); /* else http_reply frees it */
        return;
    default: /* the peer went, or the timeout: nothing more to say */
        stream_close(stream);
        return;
    }
}

static void on_connection(uv_stream_t *listener, int status)
{
    http_server_t *server = listener->data;
    if (status < 0) return;
    http_conn_t *c = calloc(1, sizeof *c);
    if (!c) return;
    c->server = server;
    c->stream = stream_accept(listener, on_stream, c);
    if (!c->stream) {
        free(c);
        return;
    }
    server->connections++;
    if (server->connections > HTTP_MAX_CONNECTIONS) {
        stream_close(c->stream);
        return;
    }
    stream_set_limits(c->stream, HTTP_MAX_HEAD, STREAM_OUT_MAX);
    stream_set_timeout(c->stream, HTTP_TIMEOUT_MS);
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
