/* Unit tests for core/stream.c, the connection under every socket: two
 * streams on one loop, over a socketpair (and over loopback TCP where
 * connecting and accepting are what is tested), with real TLS between them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/stream.h"

/* One end: what it received, and which events came. */
typedef struct end {
    stream_t *s;
    buf_t got;
    bool hold; /* do not consume: let the input pile up */
    unsigned events[STREAM_CLOSED + 1];
    char error[256]; /* stream_error at the last failure */
} end_t;

static void on_event(stream_t *s, enum stream_event event, void *arg)
{
    end_t *e = arg;
    e->events[event]++;
    if (event == STREAM_DATA && !e->hold) {
        size_t len;
        const char *data = stream_data(s, &len);
        assert_int_equal(buf_append(&e->got, data, len), 0);
        stream_consume(s, len);
    } else if (event == STREAM_ERROR || event == STREAM_TLS_FAILED) {
        snprintf(e->error, sizeof e->error, "%s", stream_error(s));
    } else if (event == STREAM_CLOSED) {
        e->s = NULL;
    }
}

/* Runs the loop until cond holds, or fails the test after about 5 s. */
#define RUN_UNTIL(loop, cond)                                                                      \
    do {                                                                                           \
        uint64_t until_ = uv_now(loop) + 5000;                                                     \
        while (!(cond)) {                                                                          \
            assert_true(uv_now(loop) < until_);                                                    \
            uv_run(loop, UV_RUN_NOWAIT);                                                           \
            uv_sleep(1);                                                                           \
            uv_update_time(loop);                                                                  \
        }                                                                                          \
    } while (0)

/* Closes the end's stream and waits until it is gone. */
static void end_close(uv_loop_t *loop, end_t *e)
{
    if (e->s) stream_close(e->s);
    RUN_UNTIL(loop, !e->s);
}

typedef struct pair {
    uv_loop_t loop;
    end_t a, b; /* a: the server side, b: the client */
} pair_t;

static void pair_open(pair_t *p)
{
    memset(p, 0, sizeof *p);
    assert_int_equal(uv_loop_init(&p->loop), 0);
    int fds[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    p->a.s = stream_open_fd(&p->loop, fds[0], on_event, &p->a);
    p->b.s = stream_open_fd(&p->loop, fds[1], on_event, &p->b);
    assert_non_null(p->a.s);
    assert_non_null(p->b.s);
}

static void pair_close(pair_t *p)
{
    end_close(&p->loop, &p->a);
    end_close(&p->loop, &p->b);
    assert_int_equal(uv_loop_close(&p->loop), 0);
    buf_free(&p->a.got);
    buf_free(&p->b.got);
}

static bool got(const end_t *e, const char *text)
{
    return e->got.len == strlen(text) && !memcmp(e->got.data, text, e->got.len);
}

/* A pseudo-random payload, so that a lost or reordered chunk shows. */
static char *payload(size_t len)
{
    char *p = malloc(len);
    assert_non_null(p);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = (char)x;
    }
    return p;
}

static void test_bytes_both_ways(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    assert_int_equal(stream_write(p.a.s, "220 hello\r\n", 11), 0);
    RUN_UNTIL(&p.loop, got(&p.b, "220 hello\r\n"));
    char *owned = strdup("EHLO x\r\n");
    assert_int_equal(stream_write_owned(p.b.s, owned, strlen(owned)), 0);
    RUN_UNTIL(&p.loop, got(&p.a, "EHLO x\r\n"));
    assert_false(stream_tls(p.a.s));
    assert_int_equal(p.a.events[STREAM_ERROR] + p.b.events[STREAM_ERROR], 0);
    pair_close(&p);
}

/* Input left unconsumed stops the reading at the bound; consuming it reads
 * on, and nothing is lost or reordered on the way. */
static void test_input_is_bounded(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    const size_t total = 4 << 20, bound = 1024;
    char *data = payload(total);
    stream_set_limits(p.a.s, bound, STREAM_OUT_MAX);
    p.a.hold = true;
    assert_int_equal(stream_write(p.b.s, data, total), 0);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_DATA] > 0);
    for (int i = 0; i < 200; i++) { /* time for more to come, were reading not paused */
        uv_run(&p.loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    size_t held;
    stream_data(p.a.s, &held);
    assert_true(held >= bound);
    assert_true(held <= bound + 65536);     /* at most one read past the bound */
    assert_true(stream_pending(p.b.s) > 0); /* the rest waits at the writer */
    p.a.hold = false;                       /* what is held first, then each read as it comes */
    const char *in = stream_data(p.a.s, &held);
    assert_int_equal(buf_append(&p.a.got, in, held), 0);
    stream_consume(p.a.s, held);
    RUN_UNTIL(&p.loop, p.a.got.len == total);
    assert_memory_equal(p.a.got.data, data, total);
    free(data);
    pair_close(&p);
}

/* A peer that does not read its replies is not read from either. */
static void test_output_bound_stops_reading(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    const size_t big = 8 << 20;
    char *data = payload(big);
    stream_pause(p.b.s, true); /* b reads nothing */
    assert_int_equal(stream_write(p.a.s, data, big), 0);
    assert_true(stream_pending(p.a.s) > STREAM_OUT_MAX);
    assert_int_equal(stream_write(p.b.s, "QUIT\r\n", 6), 0);
    for (int i = 0; i < 100; i++) {
        uv_run(&p.loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    assert_int_equal(p.a.events[STREAM_DATA], 0); /* b's QUIT waits */
    stream_pause(p.b.s, false);
    RUN_UNTIL(&p.loop, p.b.got.len == big && got(&p.a, "QUIT\r\n"));
    assert_memory_equal(p.b.got.data, data, big);
    free(data);
    pair_close(&p);
}

static void test_timeout(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    stream_set_timeout(p.a.s, 20);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_TIMEOUT] == 1);
    stream_set_timeout(p.b.s, 10000);
    stream_set_timeout(p.b.s, 0); /* stopped: no timeout comes */
    for (int i = 0; i < 50; i++) {
        uv_run(&p.loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    assert_int_equal(p.b.events[STREAM_TIMEOUT], 0);
    pair_close(&p);
}

/* What was queued is written before the close; the peer sees all of it,
 * then its end. */
static void test_close_when_written(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    const size_t len = 300000;
    char *data = payload(len);
    assert_int_equal(stream_write(p.a.s, data, len), 0);
    stream_close_when_written(p.a.s);
    assert_int_equal(stream_write(p.a.s, "late", 4), -1); /* nothing after the close */
    RUN_UNTIL(&p.loop, p.b.events[STREAM_EOF] == 1 && !p.a.s);
    assert_int_equal(p.b.got.len, len);
    assert_memory_equal(p.b.got.data, data, len);
    assert_int_equal(p.a.events[STREAM_CLOSED], 1);
    assert_true(stream_eof(p.b.s));
    free(data);
    pair_close(&p);
}

/* ---- TLS ---- */

static char dir[64];
static SSL_CTX *server_ctx, *client_ctx;

static int tls_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/sealpost-stream-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    char cert[128], key[128], err[300];
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    if (tls_make_self_signed(cert, key, "localhost", err, sizeof err) < 0) return -1;
    server_ctx = tls_server_context(cert, key, "ECDHE+AESGCM", err, sizeof err);
    client_ctx = tls_client_context(cert, err, sizeof err);
    return server_ctx && client_ctx ? 0 : -1;
}

static int tls_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(server_ctx);
    SSL_CTX_free(client_ctx);
    char path[128];
    snprintf(path, sizeof path, "%s/cert.pem", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/key.pem", dir);
    unlink(path);
    return rmdir(dir);
}

static void handshake(pair_t *p, const char *host)
{
    assert_int_equal(stream_start_tls(p->a.s, server_ctx, &(stream_tls_t){0}), 0);
    assert_int_equal(
        stream_start_tls(p->b.s, client_ctx, &(stream_tls_t){.host = host, .verify = true}), 0);
    assert_true(stream_tls(p->a.s) && stream_tls(p->b.s));
}

static void test_tls_both_sides(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    handshake(&p, "localhost");
    /* written before the handshake is done: it waits, then goes encrypted */
    assert_int_equal(stream_write(p.a.s, "220 ready\r\n", 11), 0);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_TLS_READY] && p.b.events[STREAM_TLS_READY]);
    assert_non_null(strstr(stream_tls_info(p.b.s), "TLSv1."));
    RUN_UNTIL(&p.loop, got(&p.b, "220 ready\r\n"));
    const size_t len = 200000; /* more than one TLS record */
    char *data = payload(len);
    assert_int_equal(stream_write(p.b.s, data, len), 0);
    RUN_UNTIL(&p.loop, p.a.got.len == len);
    assert_memory_equal(p.a.got.data, data, len);
    /* a clean end: close_notify, seen as the end of the peer's side */
    stream_close_when_written(p.b.s);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_EOF] == 1);
    assert_true(stream_eof(p.a.s));
    assert_int_equal(p.a.events[STREAM_TLS_FAILED] + p.a.events[STREAM_ERROR], 0);
    free(data);
    pair_close(&p);
}

/* An owner that consumes whole lines only leaves a partial one behind after
 * most reads; under TLS as in clear, the buffer holding it must not grow
 * with all that the connection ever carried. */
static void lines_only(stream_t *s, enum stream_event event, void *arg)
{
    end_t *e = arg;
    if (event != STREAM_DATA) {
        on_event(s, event, arg);
        return;
    }
    size_t len;
    const char *data = stream_data(s, &len);
    const char *last = memrchr(data, '\n', len);
    if (!last) return;
    e->got.len += (size_t)(last + 1 - data); /* counted, not kept */
    stream_consume(s, (size_t)(last + 1 - data));
}

static void test_tls_partial_lines_stay_bounded(void **state)
{
    (void)state;
    pair_t p;
    memset(&p, 0, sizeof p);
    assert_int_equal(uv_loop_init(&p.loop), 0);
    int fds[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    p.a.s = stream_open_fd(&p.loop, fds[0], lines_only, &p.a);
    p.b.s = stream_open_fd(&p.loop, fds[1], on_event, &p.b);
    handshake(&p, "localhost");
    RUN_UNTIL(&p.loop, p.a.events[STREAM_TLS_READY] && p.b.events[STREAM_TLS_READY]);
    char chunk[6001];
    for (size_t i = 0; i + 6 <= 6000; i += 6)
        memcpy(chunk + i, "NOOP\r\n", 6);
    memcpy(chunk + 5998, "NO", 2); /* every write ends in the middle of a line: "NOOPNO" */
    size_t sent = 0, most = 0;
    for (int round = 0; round < 2000; round++) {
        assert_int_equal(stream_write(p.b.s, round ? "OP\r\n" : "", round ? 4 : 0), 0);
        assert_int_equal(stream_write(p.b.s, chunk, 6000), 0);
        sent += round ? 6004 : 6000;
        uv_run(&p.loop, UV_RUN_NOWAIT);
        if (stream_buffered(p.a.s) > most) most = stream_buffered(p.a.s);
    }
    RUN_UNTIL(&p.loop, p.a.got.len == sent - 6); /* the last "NOOPNO" stays */
    assert_true(most < (size_t)1024 * 1024);     /* 12 MB went through */
    p.a.got.len = 0;
    pair_close(&p);
}

static void test_tls_wrong_name_fails(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    handshake(&p, "mx.example.org");
    RUN_UNTIL(&p.loop, p.b.events[STREAM_TLS_FAILED] == 1);
    assert_non_null(strstr(p.b.error, "certificate verify failed"));
    assert_int_equal(p.b.events[STREAM_TLS_READY], 0);
    assert_int_equal(stream_write(p.b.s, "x", 1), -1); /* nothing goes out in clear */
    pair_close(&p);
}

/* RFC 3207 §4: what came before the handshake and was not consumed was not
 * protected, and is dropped; with keep_input (implicit TLS behind a PROXY
 * header) the same bytes are the handshake's first. */
static void test_tls_input_before_start(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    p.a.hold = true;
    assert_int_equal(stream_write(p.b.s, "RSET\r\n", 6), 0);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_DATA] == 1);
    assert_int_equal(stream_start_tls(p.a.s, server_ctx, &(stream_tls_t){0}), 6);
    size_t left;
    stream_data(p.a.s, &left);
    assert_int_equal(left, 0);
    pair_close(&p);

    pair_open(&p);
    p.a.hold = true;
    assert_int_equal(
        stream_start_tls(p.b.s, client_ctx, &(stream_tls_t){.host = "localhost", .verify = true}),
        0);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_DATA] >= 1); /* the ClientHello, read in clear */
    p.a.hold = false;
    assert_int_equal(stream_start_tls(p.a.s, server_ctx, &(stream_tls_t){.keep_input = true}), 0);
    RUN_UNTIL(&p.loop, p.a.events[STREAM_TLS_READY] && p.b.events[STREAM_TLS_READY]);
    assert_int_equal(stream_write(p.b.s, "EHLO x\r\n", 8), 0);
    RUN_UNTIL(&p.loop, got(&p.a, "EHLO x\r\n"));
    pair_close(&p);
}

/* ---- connecting and accepting, over loopback TCP ---- */

typedef struct listener {
    uv_tcp_t tcp;
    end_t accepted;
} listener_t;

static void on_connection(uv_stream_t *server, int status)
{
    listener_t *l = server->data;
    assert_int_equal(status, 0);
    l->accepted.s = stream_accept(server, on_event, &l->accepted);
    assert_non_null(l->accepted.s);
}

static void on_listener_closed(uv_handle_t *h)
{
    (void)h;
}

static void test_connect_and_accept(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    listener_t l = {0};
    uv_tcp_init(&loop, &l.tcp);
    l.tcp.data = &l;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&l.tcp, (struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&l.tcp, 8, on_connection), 0);
    int len = sizeof addr;
    uv_tcp_getsockname(&l.tcp, (struct sockaddr *)&addr, &len);
    uint16_t port = ntohs(addr.sin_port);

    end_t by_name = {0}; /* a name goes through the resolver */
    by_name.s = stream_connect(&loop, "localhost", port, on_event, &by_name);
    assert_non_null(by_name.s);
    RUN_UNTIL(&loop, by_name.events[STREAM_CONNECTED] == 1 && l.accepted.s);
    struct sockaddr_storage peer;
    assert_int_equal(stream_peer(l.accepted.s, &peer), 0);
    assert_int_equal(stream_write(by_name.s, "hi", 2), 0);
    RUN_UNTIL(&loop, got(&l.accepted, "hi"));
    end_close(&loop, &by_name);
    RUN_UNTIL(&loop, l.accepted.events[STREAM_EOF] == 1);
    end_close(&loop, &l.accepted);

    uv_close((uv_handle_t *)&l.tcp, on_listener_closed); /* the port is free again */
    RUN_UNTIL(&loop, !uv_loop_alive(&loop));
    end_t refused = {0}; /* failures come as events, not from the call */
    refused.s = stream_connect(&loop, "127.0.0.1", port, on_event, &refused);
    assert_non_null(refused.s);
    assert_int_equal(refused.events[STREAM_ERROR], 0);
    RUN_UNTIL(&loop, refused.events[STREAM_ERROR] == 1);
    assert_non_null(strstr(refused.error, "refused"));
    end_close(&loop, &refused);
    assert_int_equal(uv_loop_close(&loop), 0);
    buf_free(&l.accepted.got);
    buf_free(&by_name.got);
}

/* An owner that forgets a stream at once hears nothing more from it. */
static void test_abandon(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    stream_abandon(p.a.s);
    p.a.s = NULL;
    RUN_UNTIL(&p.loop, p.b.events[STREAM_EOF] + p.b.events[STREAM_ERROR] == 1);
    assert_int_equal(p.a.events[STREAM_CLOSED], 0);
    pair_close(&p);
}

int main(void)
{
    const struct CMUnitTest plain[] = {
        cmocka_unit_test(test_bytes_both_ways),
        cmocka_unit_test(test_input_is_bounded),
        cmocka_unit_test(test_output_bound_stops_reading),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_close_when_written),
        cmocka_unit_test(test_connect_and_accept),
        cmocka_unit_test(test_abandon),
    };
    const struct CMUnitTest tls[] = {
        cmocka_unit_test(test_tls_both_sides),
        cmocka_unit_test(test_tls_partial_lines_stay_bounded),
        cmocka_unit_test(test_tls_wrong_name_fails),
        cmocka_unit_test(test_tls_input_before_start),
    };
    int failed = cmocka_run_group_tests(plain, NULL, NULL);
    return failed + cmocka_run_group_tests(tls, tls_setup, tls_teardown);
}
