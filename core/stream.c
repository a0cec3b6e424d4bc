/* The connection object of stream.h.
 *
 * TLS runs over OpenSSL memory BIOs: what the socket brings is written into
 * the read BIO, and what SSL_* leaves in the write BIO goes to the socket, so
 * no SSL call ever blocks or sees a file descriptor, which is what an event
 * loop needs. This file is the only place that calls SSL_read and SSL_write.
 *
 * Reading is on while the owner has not paused it, the input waiting to be
 * consumed is under in_max and the output waiting for the kernel under
 * out_max; every change of those re-evaluates it (update_reading). */
#include "core/stream.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK  65536
#define PLAIN_CHUNK 16384
/* An input buffer left empty keeps its memory up to this much: an idle
 * connection should not hold a whole read's worth. */
#define IDLE_KEEP 4096

enum tls_phase { TLS_OFF, TLS_HANDSHAKING, TLS_OPEN };

struct stream {
    uv_loop_t *loop;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } io;
    bool is_tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_getaddrinfo_t resolve_req;
    uint16_t port; /* to connect to, once resolved */
    stream_cb cb;
    void *arg;

    buf_t in;
    size_t in_pos; /* in.data[in_pos..len) is not consumed yet */
    size_t in_max, out_max;
    buf_t cipher;    /* ciphertext read, for TLS */
    unsigned writes; /* write requests in flight */

    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    enum tls_phase tls;
    buf_t tls_queued; /* plaintext written before the handshake was done */
    char tls_info[96];

    int handles; /* open: io and timer */
    bool resolving, connected, reading, paused, eof, failed;
    bool pending_error; /* a failure to report from the timer */
    bool closing, close_when_written;
    char error[256];
};

struct write_req {
    uv_write_t req;
    stream_t *s;
    char *data;
};

static void update_reading(stream_t *s);
static void flush_tls(stream_t *s);

/* Events are not delivered once closing begins; a callback may close the
 * stream, so callers check s->closing after each emit. */
static void emit(stream_t *s, enum stream_event event)
{
    if (s->cb && (!s->closing || event == STREAM_CLOSED)) s->cb(s, event, s->arg);
}

static void set_error(stream_t *s, const char *what)
{
    size_t n = strnlen(what, sizeof s->error - 1);
    memmove(s->error, what, n); /* what may be s->error itself */
    s->error[n] = 0;
}

static void fail(stream_t *s, enum stream_event event, const char *what)
{
    if ((s->failed && !s->pending_error) || s->closing) return;
    if (s->pending_error) { /* this one says more: a TLS failure whose alert could not go */
        s->pending_error = false;
        uv_timer_stop(&s->timer);
    }
    s->failed = true;
    set_error(s, what);
    update_reading(s);
    emit(s, event);
}

/* ---- life cycle ---- */

static void stream_free(stream_t *s)
{
    emit(s, STREAM_CLOSED);
    SSL_free(s->ssl);
    buf_free(&s->in);
    buf_free(&s->cipher);
    buf_free(&s->tls_queued);
    free(s);
}

static void maybe_free(stream_t *s)
{
    if (s->handles == 0 && s->writes == 0 && !s->resolving) stream_free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    stream_t *s = h->data;
    s->handles--;
    maybe_free(s);
}

void stream_close(stream_t *s)
{
    if (s->closing) return;
    s->closing = true;
    s->reading = false;
    if (s->resolving) uv_cancel((uv_req_t *)&s->resolve_req);
    uv_close(&s->io.handle, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
}

void stream_abandon(stream_t *s)
{
    s->cb = NULL;
    stream_close(s);
}

void stream_close_when_written(stream_t *s)
{
    if (s->closing) return;
    s->close_when_written = true;
    if (s->tls == TLS_OPEN && !s->failed) {
        SSL_shutdown(s->ssl); /* close_notify: the end is ours, not a cut */
        flush_tls(s);
    }
    update_reading(s);
    if (s->writes == 0) stream_close(s);
}

static void on_timer(uv_timer_t *t)
{
    stream_t *s = t->data;
    if (s->pending_error) {
        s->pending_error = false;
        s->failed = false;
        fail(s, STREAM_ERROR, s->error);
        return;
    }
    emit(s, STREAM_TIMEOUT);
}

/* A failure found inside a call: reported from the loop, like any other. */
static void fail_later(stream_t *s, const char *what)
{
    set_error(s, what);
    s->pending_error = true;
    s->failed = true;
    uv_timer_start(&s->timer, on_timer, 0, 0);
}

/* out_max: STREAM_OUT_MAX for a stream this side accepted, SIZE_MAX for
 * one it connected (see stream.h). */
static stream_t *stream_new(uv_loop_t *loop, size_t out_max, stream_cb cb, void *arg)
{
    stream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->loop = loop;
    s->cb = cb;
    s->arg = arg;
    s->in_max = STREAM_IN_MAX;
    s->out_max = out_max;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    s->io.handle.data = s;
    s->handles = 2;
    return s;
}

static stream_t *stream_new_tcp(uv_loop_t *loop, size_t out_max, stream_cb cb, void *arg)
{
    stream_t *s = stream_new(loop, out_max, cb, arg);
    if (!s) return NULL;
    uv_tcp_init(loop, &s->io.tcp);
    s->io.handle.data = s;
    s->is_tcp = true;
    return s;
}

/* ---- reading ---- */

static size_t input_len(const stream_t *s)
{
    return s->in.len - s->in_pos;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    stream_t *s = h->data;
    (void)suggested;
    buf_t *into = s->tls != TLS_OFF ? &s->cipher : &s->in;
    /* Consumed bytes make room, once per read: under TLS too, where the
     * plaintext is appended to the same buffer. */
    if (s->in_pos) {
        buf_consume(&s->in, s->in_pos);
        s->in_pos = 0;
    }
    if (buf_reserve(into, READ_CHUNK) < 0) {
        *b = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
        return;
    }
    *b = uv_buf_init(into->data + into->len, READ_CHUNK);
}

static void tls_failed(stream_t *s, int ssl_error)
{
    long verify = SSL_get_verify_result(s->ssl);
    unsigned long e = ERR_get_error();
    char reason[200] = "", what[256];
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (verify != X509_V_OK)
        snprintf(what, sizeof what, "certificate verify failed: %s",
                 X509_verify_cert_error_string(verify));
    else
        snprintf(what, sizeof what, "TLS error %d%s%s", ssl_error, reason[0] ? ": " : "", reason);
    flush_tls(s); /* an alert for the peer, if OpenSSL made one */
    fail(s, STREAM_TLS_FAILED, what);
}

/* Moves the handshake on and decrypts what the read BIO holds, straight
 * into the input buffer (no plaintext copy, a password say, left on the
 * stack); then emits what happened. */
static void tls_advance(stream_t *s)
{
    ERR_clear_error(); /* what another connection left on this thread's queue */
    if (s->tls == TLS_HANDSHAKING) {
        int r = SSL_do_handshake(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            flush_tls(s);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) tls_failed(s, e);
            return;
        }
        s->tls = TLS_OPEN;
        snprintf(s->tls_info, sizeof s->tls_info, "%s %s", SSL_get_version(s->ssl),
                 SSL_get_cipher_name(s->ssl));
        if (s->tls_queued.len &&
            SSL_write(s->ssl, s->tls_queued.data, (int)s->tls_queued.len) <= 0) {
            tls_failed(s, SSL_ERROR_SSL);
            return;
        }
        buf_free(&s->tls_queued);
        flush_tls(s);
        emit(s, STREAM_TLS_READY);
        if (s->closing || s->failed) return;
    }
    size_t before = input_len(s);
    bool closed = false;
    for (;;) {
        if (buf_reserve(&s->in, PLAIN_CHUNK) < 0) {
            fail(s, STREAM_ERROR, "out of memory");
            return;
        }
        int n = SSL_read(s->ssl, s->in.data + s->in.len, PLAIN_CHUNK);
        if (n > 0) {
            s->in.len += (size_t)n;
            continue;
        }
        int e = SSL_get_error(s->ssl, n);
        if (e == SSL_ERROR_ZERO_RETURN) closed = true;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN) break;
        tls_failed(s, e);
        return;
    }
    if (s->in.data) s->in.data[s->in.len] = 0;
    flush_tls(s); /* key updates and the like */
    if (input_len(s) > before) emit(s, STREAM_DATA);
    if (closed && !s->closing && !s->eof) {
        s->eof = true;
        update_reading(s);
        emit(s, STREAM_EOF);
    }
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    stream_t *s = h->data;
    (void)b;
    if (s->closing || n == 0) return;
    if (n == UV_EOF) {
        s->eof = true;
        update_reading(s);
        emit(s, STREAM_EOF);
        return;
    }
    if (n < 0) {
        fail(s, STREAM_ERROR, uv_strerror((int)n));
        return;
    }
    if (s->tls == TLS_OFF) {
        s->in.len += (size_t)n;
        s->in.data[s->in.len] = 0;
        emit(s, STREAM_DATA);
    } else {
        s->cipher.len += (size_t)n;
        int w = BIO_write(s->rbio, s->cipher.data, (int)s->cipher.len);
        buf_reset(&s->cipher);
        if (w != (int)n) {
            tls_failed(s, SSL_ERROR_SSL);
            return;
        }
        tls_advance(s);
    }
    if (s->closing) return;
    if (input_len(s) == 0 && s->in.cap > IDLE_KEEP) buf_free(&s->in);
    update_reading(s);
}

static void update_reading(stream_t *s)
{
    if (s->closing) return;
    bool want = s->connected && !s->paused && !s->eof && !s->failed && !s->close_when_written &&
                input_len(s) < s->in_max &&
                uv_stream_get_write_queue_size(&s->io.stream) < s->out_max;
    if (want && !s->reading) {
        if (uv_read_start(&s->io.stream, on_alloc, on_read) < 0) return;
    } else if (!want && s->reading) {
        uv_read_stop(&s->io.stream);
    }
    s->reading = want;
}

size_t stream_buffered(const stream_t *s)
{
    return s->in.cap + s->cipher.cap;
}

const char *stream_data(const stream_t *s, size_t *len)
{
    *len = input_len(s);
    return s->in.data ? s->in.data + s->in_pos : "";
}

/* Consumed bytes stay where they are until the loop runs again: a caller
 * may still hold a pointer into what it just consumed. */
void stream_consume(stream_t *s, size_t n)
{
    s->in_pos += n < input_len(s) ? n : input_len(s);
    if (s->in_pos == s->in.len) s->in_pos = s->in.len = 0;
    update_reading(s);
}

void stream_pause(stream_t *s, bool paused)
{
    s->paused = paused;
    update_reading(s);
}

void stream_set_limits(stream_t *s, size_t in_max, size_t out_max)
{
    s->in_max = in_max;
    s->out_max = out_max;
    update_reading(s);
}

/* ---- writing ---- */

static void on_written(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    stream_t *s = w->s;
    free(w->data);
    free(w);
    s->writes--;
    if (s->closing) {
        maybe_free(s);
        return;
    }
    if (status < 0) {
        fail(s, STREAM_ERROR, uv_strerror(status));
        return;
    }
    if (s->close_when_written && s->writes == 0) {
        stream_close(s);
        return;
    }
    update_reading(s);
}

/* Hands data (malloc'd, taken over) to the socket as it is. */
static int write_raw(stream_t *s, char *data, size_t len)
{
    struct write_req *w = malloc(sizeof *w);
    if (!w) {
        free(data);
        return -1;
    }
    w->s = s;
    w->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int rc = uv_write(&w->req, &s->io.stream, &b, 1, on_written);
    if (rc < 0) {
        free(data);
        free(w);
        fail_later(s, uv_strerror(rc));
        return -1;
    }
    s->writes++;
    update_reading(s); /* past out_max, the peer's input waits until this is written */
    return 0;
}

/* Sends what TLS has for the peer: handshake messages, records, alerts. */
static void flush_tls(stream_t *s)
{
    size_t pending = BIO_ctrl_pending(s->wbio);
    if (pending == 0 || s->closing) return;
    char *out = malloc(pending);
    if (!out) {
        fail_later(s, "out of memory");
        return;
    }
    int n = BIO_read(s->wbio, out, (int)pending);
    if (n <= 0) {
        free(out);
        return;
    }
    write_raw(s, out, (size_t)n);
}

static int tls_write(stream_t *s, const char *data, size_t len)
{
    if (s->tls == TLS_HANDSHAKING) return buf_append(&s->tls_queued, data, len);
    while (len > 0) { /* a memory BIO takes everything: no partial writes to resume */
        int chunk = len > (1U << 30) ? 1 << 30 : (int)len;
        if (SSL_write(s->ssl, data, chunk) != chunk) {
            fail_later(s, "TLS write failed");
            return -1;
        }
        data += chunk;
        len -= (size_t)chunk;
        flush_tls(s); /* each chunk's records out before the next is made */
    }
    return 0;
}

int stream_write_owned(stream_t *s, void *data, size_t len)
{
    if (s->closing || s->failed || s->close_when_written) {
        free(data);
        return -1;
    }
    if (len == 0) {
        free(data);
        return 0;
    }
    if (s->tls == TLS_OFF) return write_raw(s, data, len);
    int rc = tls_write(s, data, len);
    free(data);
    return rc;
}

int stream_write(stream_t *s, const void *data, size_t len)
{
    if (s->closing || s->failed || s->close_when_written) return -1;
    if (s->tls != TLS_OFF) return len ? tls_write(s, data, len) : 0;
    char *copy = malloc(len ? len : 1);
    if (!copy) return -1;
    memcpy(copy, data, len);
    return stream_write_owned(s, copy, len);
}

size_t stream_pending(const stream_t *s)
{
    return uv_stream_get_write_queue_size(&s->io.stream) + s->tls_queued.len;
}

/* ---- TLS ---- */

/* The client side's SNI and certificate checks. */
static void tls_client_checks(SSL *ssl, const char *host, bool verify)
{
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(ssl, host); /* SNI takes names only */
    SSL_set_verify(ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (verify && is_ip)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    else if (verify)
        SSL_set1_host(ssl, host);
}

long stream_start_tls(stream_t *s, SSL_CTX *ctx, const stream_tls_t *how)
{
    if (s->tls != TLS_OFF || s->closing || s->failed) return -1;
    s->ssl = SSL_new(ctx);
    s->rbio = BIO_new(BIO_s_mem());
    s->wbio = BIO_new(BIO_s_mem());
    if (!s->ssl || !s->rbio || !s->wbio) {
        BIO_free(s->rbio);
        BIO_free(s->wbio);
        SSL_free(s->ssl);
        s->ssl = NULL;
        return -1; /* nothing was written: the caller may still refuse in clear */
    }
    SSL_set_bio(s->ssl, s->rbio, s->wbio);
    if (how->host) {
        SSL_set_connect_state(s->ssl);
        tls_client_checks(s->ssl, how->host, how->verify);
    } else {
        SSL_set_accept_state(s->ssl);
    }
    if (how->first && stream_write(s, how->first, strlen(how->first)) < 0) return -1;
    s->tls = TLS_HANDSHAKING;
    size_t left = input_len(s);
    if (how->keep_input && left &&
        BIO_write(s->rbio, s->in.data + s->in_pos, (int)left) != (int)left)
        return -1;
    stream_consume(s, left);
    if (how->host || (how->keep_input && left)) {
        /* The client speaks first; and a server with a ClientHello in hand
         * answers it now rather than at the next read. */
        ERR_clear_error();
        int r = SSL_do_handshake(s->ssl);
        if (r != 1 && SSL_get_error(s->ssl, r) != SSL_ERROR_WANT_READ) {
            flush_tls(s);
            fail_later(s, "TLS handshake could not start");
            return -1;
        }
        flush_tls(s); /* a handshake never ends on its first flight: the next read goes on */
    }
    return how->keep_input ? 0 : (long)left;
}

bool stream_tls(const stream_t *s)
{
    return s->tls != TLS_OFF;
}

const char *stream_tls_info(const stream_t *s)
{
    return s->tls_info;
}

bool stream_eof(const stream_t *s)
{
    return s->eof;
}

const char *stream_error(const stream_t *s)
{
    return s->error[0] ? s->error : "no error";
}

/* ---- opening ---- */

void stream_set_timeout(stream_t *s, uint64_t ms)
{
    if (s->closing || s->pending_error) return;
    if (ms)
        uv_timer_start(&s->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&s->timer);
}

void stream_keepalive(stream_t *s, unsigned secs)
{
    if (s->is_tcp) uv_tcp_keepalive(&s->io.tcp, 1, secs);
}

int stream_peer(const stream_t *s, struct sockaddr_storage *out)
{
    int len = sizeof *out;
    if (!s->is_tcp) return -1;
    return uv_tcp_getpeername(&s->io.tcp, (struct sockaddr *)out, &len) == 0 ? 0 : -1;
}

/* Commands, replies and final dots are small writes waiting for an answer:
 * Nagle's algorithm would hold each one for the peer's delayed ACK. */
static void start_reading(stream_t *s)
{
    if (s->is_tcp) uv_tcp_nodelay(&s->io.tcp, 1);
    s->connected = true;
    update_reading(s);
}

stream_t *stream_accept(uv_stream_t *server, stream_cb cb, void *arg)
{
    stream_t *s = stream_new_tcp(server->loop, STREAM_OUT_MAX, cb, arg);
    if (!s) return NULL;
    if (uv_accept(server, &s->io.stream) < 0) {
        s->cb = NULL; /* nobody to tell */
        stream_close(s);
        return NULL;
    }
    start_reading(s);
    return s;
}

stream_t *stream_open_fd(uv_loop_t *loop, int fd, stream_cb cb, void *arg)
{
    stream_t *s = stream_new(loop, STREAM_OUT_MAX, cb, arg);
    if (!s) return NULL;
    uv_pipe_init(loop, &s->io.pipe, 0);
    s->io.handle.data = s;
    if (uv_pipe_open(&s->io.pipe, fd) < 0) {
        s->cb = NULL;
        stream_close(s);
        return NULL;
    }
    start_reading(s);
    return s;
}

static void on_connected(uv_connect_t *req, int status)
{
    stream_t *s = req->data;
    if (s->closing) return;
    if (status < 0) {
        fail(s, STREAM_ERROR, uv_strerror(status));
        return;
    }
    start_reading(s);
    emit(s, STREAM_CONNECTED);
}

static void connect_to(stream_t *s, const struct sockaddr *addr)
{
    s->connect_req.data = s;
    int rc = uv_tcp_connect(&s->connect_req, &s->io.tcp, addr, on_connected);
    if (rc < 0) {
        fail_later(s, uv_strerror(rc));
    }
}

static stream_t *connect_addr(uv_loop_t *loop, const struct sockaddr *addr, stream_cb cb, void *arg)
{
    stream_t *s = stream_new_tcp(loop, SIZE_MAX, cb, arg);
    if (s) connect_to(s, addr);
    return s;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    stream_t *s = req->data;
    s->resolving = false;
    if (s->closing) {
        uv_freeaddrinfo(res);
        maybe_free(s);
        return;
    }
    if (status < 0 || !res) {
        char what[300];
        snprintf(what, sizeof what, "cannot resolve: %s", uv_strerror(status));
        uv_freeaddrinfo(res);
        fail(s, STREAM_ERROR, what);
        return;
    }
    /* IPv4 first, as hiredis did: a Redis bound to 0.0.0.0 refuses the
     * IPv6 address a name may list first. */
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    struct sockaddr_storage addr;
    memcpy(&addr, pick->ai_addr, pick->ai_addrlen);
    if (addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(s->port);
    else
        ((struct sockaddr_in *)&addr)->sin_port = htons(s->port);
    uv_freeaddrinfo(res);
    connect_to(s, (struct sockaddr *)&addr);
}

stream_t *stream_connect(uv_loop_t *loop, const char *host, uint16_t port, stream_cb cb, void *arg)
{
    net_hostport_t hp;
    struct sockaddr_storage addr;
    snprintf(hp.host, sizeof hp.host, "%s", host);
    hp.port = port;
    if (net_sockaddr_from(&hp, &addr) == 0)
        return connect_addr(loop, (struct sockaddr *)&addr, cb, arg);
    stream_t *s = stream_new_tcp(loop, SIZE_MAX, cb, arg);
    if (!s) return NULL;
    s->port = port;
    s->resolve_req.data = s;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(loop, &s->resolve_req, on_resolved, host, NULL, &hints);
    if (rc < 0) {
        char what[300];
        snprintf(what, sizeof what, "cannot resolve %s: %s", host, uv_strerror(rc));
        fail_later(s, what);
    } else {
        s->resolving = true;
    }
    return s;
}
