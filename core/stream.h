/* One connection object under every socket of sealpost: the SMTP server's
 * sessions, the SMTP client, the Redis connections and the HTTP endpoint.
 *
 * A stream is a libuv TCP connection (or, for tests, one end of a
 * socketpair) with optional TLS on either side, a bounded input buffer, writes
 * with backpressure, one timer and one close path. Its owner gets every
 * happening through one callback, as events (in the way of OpenSMTPD's io
 * layer), and is never called back from inside a stream_* call: every event
 * comes from the loop. Part of core/, declared apart because only the network
 * code needs libuv's and OpenSSL's types. */
#ifndef SEALPOST_CORE_STREAM_H
#define SEALPOST_CORE_STREAM_H

#include "core/tls.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct stream stream_t;

enum stream_event {
    STREAM_CONNECTED,  /* stream_connect's connection is up; reading has begun */
    STREAM_DATA,       /* plaintext input arrived: stream_data */
    STREAM_TLS_READY,  /* the TLS handshake is done: stream_tls_info */
    STREAM_TLS_FAILED, /* the handshake or a TLS record failed: stream_error */
    STREAM_EOF,        /* the peer ended its side (FIN, or TLS close_notify) */
    STREAM_TIMEOUT,    /* the timer of stream_set_timeout ran out */
    STREAM_ERROR,      /* connecting, reading or writing failed: stream_error */
    STREAM_CLOSED      /* stream_close is done: the stream is freed when the callback returns */
};

typedef void (*stream_cb)(stream_t *s, enum stream_event event, void *arg);

/* Defaults of the bounds, for stream_set_limits: reading pauses while
 * more input than in_max waits to be consumed, or, on a stream this side
 * accepted, more output than out_max waits to be written: a peer that does
 * not read its replies is not read from either. A stream this side
 * connected has no output bound: a client must hear its server (an early
 * 5xx, a reply to Redis) whatever it still has to send. */
#define STREAM_IN_MAX  ((size_t)256 * 1024)
#define STREAM_OUT_MAX ((size_t)64 * 1024)

/* Takes the next connection of a listening handle and starts reading.
 * NULL when there is none or no memory. */
stream_t *stream_accept(uv_stream_t *server, stream_cb cb, void *arg);
/* Connects to host (an address, or a name resolved in the thread pool, its
 * IPv4 address first) and port. Failures come as STREAM_ERROR, never from
 * this call; NULL only when there is no memory. */
stream_t *stream_connect(uv_loop_t *loop, const char *host, uint16_t port, stream_cb cb, void *arg);
/* Wraps one end of a connected socketpair (tests drive a session this way,
 * without TCP) and starts reading. */
stream_t *stream_open_fd(uv_loop_t *loop, int fd, stream_cb cb, void *arg);

void stream_set_limits(stream_t *s, size_t in_max, size_t out_max);
/* Keeps the peer from reading more while paused (input already buffered stays). */
void stream_pause(stream_t *s, bool paused);
/* TCP keepalive probes after secs of silence, for idle connections. */
void stream_keepalive(stream_t *s, unsigned secs);
/* The peer's address; -1 for a socketpair. */
int stream_peer(const stream_t *s, struct sockaddr_storage *out);

/* The memory held for input, consumed or not: bounded by in_max and one
 * read, whatever the owner leaves unconsumed (for tests and diagnostics). */
size_t stream_buffered(const stream_t *s);
/* The plaintext read and not yet consumed; valid until the next event. */
const char *stream_data(const stream_t *s, size_t *len);
void stream_consume(stream_t *s, size_t n);

/* Queues bytes for the peer, through TLS once it has started. stream_write
 * copies; stream_write_owned takes a malloc'd buffer (freed even when it
 * fails). -1 when the stream has failed or is closing, or memory ran out. */
int stream_write(stream_t *s, const void *data, size_t len);
int stream_write_owned(stream_t *s, void *data, size_t len);
/* Bytes queued and not yet handed to the kernel. */
size_t stream_pending(const stream_t *s);

/* How to start TLS on a connection. */
typedef struct stream_tls {
    /* The client side: sent as SNI and, with verify, checked against the
     * certificate. NULL: the server side. */
    const char *host;
    bool verify;
    /* The plaintext already read and not consumed is the start of the TLS
     * stream (implicit TLS right behind a PROXY header). Otherwise it was
     * sent before TLS and is dropped (RFC 3207 §4: the CVE-2011-0411
     * injection). */
    bool keep_input;
    /* Written in clear right before TLS begins: STARTTLS's 220. */
    const char *first;
} stream_tls_t;

/* Starts TLS on the connection. Returns the octets of input dropped, or -1
 * when TLS could not begin: before anything was written (no memory), so
 * the caller can still answer in clear; or after, with the stream failed. */
long stream_start_tls(stream_t *s, SSL_CTX *ctx, const stream_tls_t *how);
/* TLS was started (it may still be handshaking). */
bool stream_tls(const stream_t *s);
/* After STREAM_TLS_READY: "TLSv1.3 TLS_AES_256_GCM_SHA384". */
const char *stream_tls_info(const stream_t *s);
/* The peer ended its side: nothing more will come. */
bool stream_eof(const stream_t *s);
/* Why STREAM_ERROR or STREAM_TLS_FAILED came. */
const char *stream_error(const stream_t *s);

/* (Re)arms the stream's one timer; 0 stops it. STREAM_TIMEOUT when it runs out. */
void stream_set_timeout(stream_t *s, uint64_t ms);

/* Closes now: queued output is dropped. STREAM_CLOSED follows. */
void stream_close(stream_t *s);
/* Closes once the queued output is written (after a TLS close_notify);
 * reading stops now. STREAM_CLOSED follows. */
void stream_close_when_written(stream_t *s);
/* Closes now and never calls back again, not even with STREAM_CLOSED: for
 * an owner that forgets the stream at once (it frees itself). */
void stream_abandon(stream_t *s);

#endif
