/* One HTTPS GET on the project's stream (core/stream.c), for key
 * discovery: the name resolved by c-ares, TLS verified against the host,
 * HTTP/1.1 with "Connection: close", the response bounded in size. The
 * parser reads the whole response each time more arrives: responses are
 * small (a key, or a 404), and one pass over a bounded buffer is simpler
 * to get right than a resumable one. */
#include "core/stream.h"
#include "discovery/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEADER_MAX 16384

/* The end of the line starting at p (at its CR LF), or NULL when it is not
 * complete within end. */
static const char *line_end(const char *p, const char *end)
{
    for (const char *q = p; q + 1 < end; q++)
        if (q[0] == '\r' && q[1] == '\n') return q;
    return NULL;
}

static bool field_is(const char *line, size_t len, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) || line[n] != ':') return false;
    const char *v = line + n + 1;
    while (v < line + len && (*v == ' ' || *v == '\t'))
        v++;
    *value = v;
    return true;
}

/* The value up to the line's end, with trailing blanks dropped. */
static size_t value_len(const char *v, const char *eol)
{
    while (eol > v && (eol[-1] == ' ' || eol[-1] == '\t'))
        eol--;
    return (size_t)(eol - v);
}

struct head {
    int status;
    bool chunked, has_length;
    unsigned long long length;
    const char *body; /* the first octet after the empty line */
};

static int parse_status(const char *p, const char *eol, struct head *h, char *err, size_t errlen)
{
    if (eol - p < 12 || strncmp(p, "HTTP/1.", 7) || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
        p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (eol - p > 12 && p[12] != ' ')) {
        snprintf(err, errlen, "not an HTTP/1.x status line");
        return -1;
    }
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    return 0;
}

/* One header field; the framing ones are checked strictly, because a
 * response whose length two readers would see differently is refused
 * rather than guessed at. */
static int parse_field(const char *p, const char *eol, struct head *h, http_response_t *out,
                       char *err, size_t errlen)
{
    const char *v;
    size_t len = (size_t)(eol - p);
    if (field_is(p, len, "Content-Length", &v)) {
        unsigned long long n;
        if (h->has_length || util_parse_decimal(v, value_len(v, eol), &n) < 0) {
            snprintf(err, errlen, "bad Content-Length");
            return -1;
        }
        h->has_length = true;
        h->length = n;
    } else if (field_is(p, len, "Transfer-Encoding", &v)) {
        if (value_len(v, eol) != 7 || strncasecmp(v, "chunked", 7) || h->chunked) {
            snprintf(err, errlen, "unsupported Transfer-Encoding");
            return -1;
        }
        h->chunked = true;
    } else if (field_is(p, len, "Location", &v)) {
        snprintf(out->location, sizeof out->location, "%.*s", (int)value_len(v, eol), v);
    } else if (len && (*p == ' ' || *p == '\t')) {
        snprintf(err, errlen, "folded header field");
        return -1;
    }
    return 0;
}

/* The status line and header; 0 with h->body NULL when incomplete. */
static int parse_head(const char *in, size_t len, struct head *h, http_response_t *out, char *err,
                      size_t errlen)
{
    const char *end = in + (len < HEADER_MAX ? len : HEADER_MAX), *p = in;
    const char *eol = line_end(p, end);
    if (!eol) goto incomplete;
    if (parse_status(p, eol, h, err, errlen) < 0) return -1;
    for (p = eol + 2; (eol = line_end(p, end)); p = eol + 2) {
        if (eol == p) {
            if (h->chunked && h->has_length) {
                snprintf(err, errlen, "both Content-Length and chunked");
                return -1;
            }
            h->body = eol + 2;
            return 0;
        }
        if (parse_field(p, eol, h, out, err, errlen) < 0) return -1;
    }
incomplete:
    if (len >= HEADER_MAX) {
        snprintf(err, errlen, "header longer than %d octets", HEADER_MAX);
        return -1;
    }
    return 0;
}

/* Chunks (RFC 9112 §7.1) into out->body: 1 when the last chunk and the
 * trailer are in, 0 when more is needed. Chunk extensions are skipped. */
static int parse_chunks(const char *p, const char *end, size_t max, http_response_t *out, char *err,
                        size_t errlen)
{
    for (;;) {
        const char *eol = line_end(p, end);
        if (!eol) return 0;
        unsigned long long size = 0;
        const char *q = p;
        for (; q < eol && strchr("0123456789abcdefABCDEF", *q) && *q; q++) {
            if (size > (max >> 4)) goto too_large;
            size = size * 16 + (unsigned)(*q <= '9' ? *q - '0' : (*q | 32) - 'a' + 10);
        }
        if (q == p || (q < eol && *q != ';' && *q != ' ' && *q != '\t')) {
            snprintf(err, errlen, "bad chunk size");
            return -1;
        }
        p = eol + 2;
        if (size == 0) { /* the trailer: fields up to an empty line, ignored */
            while ((eol = line_end(p, end)) && eol != p)
                p = eol + 2;
            return eol ? 1 : 0;
        }
        if (out->body.len + size > max) goto too_large;
        if ((size_t)(end - p) < size + 2) return 0;
        if (p[size] != '\r' || p[size + 1] != '\n') {
            snprintf(err, errlen, "chunk not followed by CRLF");
            return -1;
        }
        if (buf_append(&out->body, p, (size_t)size) < 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        p += size + 2;
    }
too_large:
    snprintf(err, errlen, "response larger than %zu octets", max);
    return -1;
}

int http_response_parse(const char *in, size_t len, bool eof, size_t max, http_response_t *out,
                        char *err, size_t errlen)
{
    struct head h = {0};
    memset(out, 0, sizeof *out);
    if (parse_head(in, len, &h, out, err, errlen) < 0) return -1;
    if (!h.body) {
        if (!eof) return 0;
        snprintf(err, errlen, "the connection closed inside the header");
        return -1;
    }
    out->status = h.status;
    const char *end = in + len;
    size_t have = (size_t)(end - h.body);
    int rc;
    if (h.chunked) {
        rc = parse_chunks(h.body, end, max, out, err, errlen);
        if (rc == 0 && eof) {
            snprintf(err, errlen, "the connection closed inside a chunk");
            rc = -1;
        }
    } else if (h.has_length) {
        if (h.length > max) {
            snprintf(err, errlen, "response larger than %zu octets", max);
            rc = -1;
        } else if (have < h.length) {
            rc = eof ? -1 : 0;
            if (eof)
                snprintf(err, errlen, "the connection closed %llu octets short", h.length - have);
        } else {
            rc = buf_append(&out->body, h.body, (size_t)h.length) < 0 ? -1 : 1;
            if (rc < 0) snprintf(err, errlen, "out of memory");
        }
    } else if (have > max) {
        snprintf(err, errlen, "response larger than %zu octets", max);
        rc = -1;
    } else if (!eof) {
        rc = 0;
    } else {
        rc = buf_append(&out->body, h.body, have) < 0 ? -1 : 1;
        if (rc < 0) snprintf(err, errlen, "out of memory");
    }
    if (rc != 1) buf_free(&out->body);
    return rc;
}

/* ---- the client ---- */

struct http_get {
    uv_loop_t *loop;
    SSL_CTX *ctx;
    stream_t *stream;
    char host[264];
    uint16_t port;
    char *request;
    size_t max;
    http_cb cb;
    void *arg;
    bool cancelled, resolving, done;
};

static void http_get_free(http_get_t *g)
{
    free(g->request);
    free(g);
}

/* Calls back once; the stream, when there is one, frees g when it closes. */
static void finish(http_get_t *g, int status, const char *body, size_t len, const char *err)
{
    if (g->done) return;
    g->done = true;
    if (!g->cancelled) g->cb(status, body, len, err, g->arg);
    if (g->stream)
        stream_close(g->stream);
    else
        http_get_free(g);
}

static void on_data(http_get_t *g, bool eof)
{
    size_t len;
    const char *in = stream_data(g->stream, &len);
    http_response_t resp;
    char err[160];
    int rc = http_response_parse(in, len, eof, g->max, &resp, err, sizeof err);
    if (rc == 0 && len > g->max + HEADER_MAX) {
        snprintf(err, sizeof err, "response larger than %zu octets", g->max);
        rc = -1;
    }
    if (rc == 0) return;
    if (rc < 0) {
        finish(g, 0, NULL, 0, err);
        return;
    }
    finish(g, resp.status, resp.body.data ? resp.body.data : "", resp.body.len,
           resp.location[0] ? resp.location : NULL);
    buf_free(&resp.body);
}

static void on_stream(stream_t *s, enum stream_event event, void *arg)
{
    http_get_t *g = arg;
    (void)s;
    if (g->done && event != STREAM_CLOSED) return;
    switch (event) {
    case STREAM_CONNECTED: {
        stream_tls_t how = {.host = g->host, .verify = true};
        if (stream_start_tls(g->stream, g->ctx, &how) < 0)
            finish(g, 0, NULL, 0, "TLS: cannot start");
        break;
    }
    case STREAM_TLS_READY:
        if (stream_write(g->stream, g->request, strlen(g->request)) < 0)
            finish(g, 0, NULL, 0, "cannot write the request");
        break;
    case STREAM_DATA:
        on_data(g, false);
        break;
    case STREAM_EOF:
        on_data(g, true);
        break;
    case STREAM_TLS_FAILED:
    case STREAM_ERROR: {
        char err[256];
        snprintf(err, sizeof err, "%s%s", event == STREAM_TLS_FAILED ? "TLS: " : "",
                 stream_error(g->stream));
        finish(g, 0, NULL, 0, err);
        break;
    }
    case STREAM_TIMEOUT:
        break;
    case STREAM_CLOSED:
        http_get_free(g);
        break;
    }
}

static void on_address(int status, const char *addr, void *arg)
{
    http_get_t *g = arg;
    g->resolving = false;
    if (g->cancelled) {
        http_get_free(g);
        return;
    }
    if (status != ARES_SUCCESS) {
        char err[320];
        snprintf(err, sizeof err, "%s: %s", g->host,
                 status == ARES_ENOTFOUND || status == ARES_ENODATA ? "no such host"
                                                                    : ares_strerror(status));
        finish(g, 0, NULL, 0, err);
        return;
    }
    g->stream = stream_connect(g->loop, addr, g->port, on_stream, g);
    if (!g->stream) {
        finish(g, 0, NULL, 0, "out of memory");
        return;
    }
    stream_set_limits(g->stream, g->max + HEADER_MAX + 1, STREAM_OUT_MAX);
}

http_get_t *http_get(uv_loop_t *loop, resolver_t *r, SSL_CTX *ctx, const char *host, uint16_t port,
                     const char *path, size_t max, http_cb cb, void *arg)
{
    http_get_t *g = calloc(1, sizeof *g);
    char port_text[8] = "";
    if (port != 443) snprintf(port_text, sizeof port_text, ":%u", port);
    buf_t req;
    buf_init(&req);
    if (!g || buf_printf(&req,
                         "GET %s HTTP/1.1\r\nHost: %s%s\r\nUser-Agent: sealpost/%s\r\n"
                         "Accept: application/octet-stream, application/pgp-keys\r\n"
                         "Connection: close\r\n\r\n",
                         path, host, port_text, SEALPOST_VERSION) < 0) {
        free(g);
        buf_free(&req);
        return NULL;
    }
    *g = (http_get_t){.loop = loop,
                      .ctx = ctx,
                      .port = port,
                      .request = req.data,
                      .max = max,
                      .cb = cb,
                      .arg = arg,
                      .resolving = true};
    snprintf(g->host, sizeof g->host, "%s", host);
    resolver_host(r, host, on_address, g);
    return g;
}

void http_cancel(http_get_t *g)
{
    g->cancelled = true;
    if (g->resolving) return; /* on_address frees it */
    if (g->done) return;
    g->done = true;
    if (g->stream)
        stream_close(g->stream);
    else
        http_get_free(g);
}
