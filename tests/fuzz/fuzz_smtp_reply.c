/* libFuzzer target: a hostile MX. The worker's SMTP client (client_deliver,
 * delivery/client.c, over proto/reply.c) delivers a two-recipient job to a
 * fake server on loopback in this process, on the same loop, whose whole
 * output is the input: greeting, EHLO reply (the extensions), and the
 * replies to MAIL, RCPT, DATA and the dot, written in chunks of the size
 * the first octet says, the loop run between them, whatever the client
 * sent. Multi-line replies with codes that disagree, lines without CRLF or
 * too long, NUL, garbage after the code: all come from the input. The
 * second octet says whether the pre-dot gate lets the dot go.
 *
 * Beyond "no crash, no out-of-bounds read, no leak" (ASan/UBSan, LSan), it
 * checks what client.h promises: done runs exactly once; every recipient's
 * code is 0 (not reached) or in 200..599, and its text is bounded; the
 * gate runs at most once. A broken promise is a __builtin_trap(). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/stream.h"
#include "delivery/client.h"
#include "delivery/hop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static struct {
    uv_loop_t loop;
    uv_tcp_t listener;
    uint16_t port;
    config_t cfg;
    stream_t *peer; /* the client's connection, server side */
    client_t *client;
    client_t *gated; /* waiting for client_finish_data */
    int gates, dones;
    bool closed;
    unsigned n_rcpts;
} fz;

static void on_peer(stream_t *s, enum stream_event event, void *arg)
{
    (void)arg;
    if (event == STREAM_DATA) {
        size_t len;
        stream_data(s, &len);
        stream_consume(s, len); /* what the client says changes nothing here */
    } else if (event == STREAM_EOF || event == STREAM_ERROR) {
        if (s == fz.peer) fz.peer = NULL;
        stream_close(s);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) return;
    stream_t *s = stream_accept(server, on_peer, NULL);
    if (!s) return;
    if (fz.peer) stream_close(fz.peer);
    fz.peer = s;
}

static void setup(void)
{
    log_set_level(LOG_ERROR);
    config_defaults(&fz.cfg);
    CHECK(uv_loop_init(&fz.loop) == 0);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    CHECK(uv_tcp_init(&fz.loop, &fz.listener) == 0);
    CHECK(uv_tcp_bind(&fz.listener, (const struct sockaddr *)&sa, 0) == 0);
    CHECK(uv_listen((uv_stream_t *)&fz.listener, 16, on_connection) == 0);
    int len = sizeof sa;
    CHECK(uv_tcp_getsockname(&fz.listener, (struct sockaddr *)&sa, &len) == 0);
    fz.port = ntohs(sa.sin_port);
}

static void on_gate(client_t *c, void *arg)
{
    (void)arg;
    CHECK(fz.gates++ == 0 && c == fz.client);
    fz.gated = c;
}

static void on_closed(client_t *c, void *arg)
{
    (void)c;
    (void)arg;
    fz.closed = true;
}

static void on_done(const client_result_t *r, void *arg)
{
    (void)arg;
    CHECK(fz.dones++ == 0);
    CHECK(r->n_codes == fz.n_rcpts && r->codes && r->replies);
    for (unsigned i = 0; i < r->n_codes; i++) {
        CHECK(r->codes[i] == 0 || (r->codes[i] >= 200 && r->codes[i] <= 599));
        CHECK(memchr(r->replies[i], 0, CLIENT_REPLY_MAX) != NULL);
    }
    CHECK(memchr(r->detail, 0, sizeof r->detail) && memchr(r->tls, 0, sizeof r->tls));
    if (r->kept) {
        client_idle(fz.client, on_closed, NULL);
        client_quit(fz.client);
    } else {
        fz.closed = true;
    }
}

static void spin(unsigned max)
{
    for (unsigned i = 0; i < max && !fz.closed; i++)
        uv_run(&fz.loop, UV_RUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) setup();
    ready = true;
    if (size < 2) return 0;
    size_t chunk = 1 + (data[0] & 63);
    bool pass = data[1] & 1;
    data += 2, size -= 2;

    static char body[] = "Subject: x\r\n\r\n.hi\r\n";
    char rcpt0[] = "bob@example.test", rcpt1[] = "carol@example.test", empty[] = "";
    char *rcpts[] = {rcpt0, rcpt1}, *params[] = {empty, empty};
    char sender[] = "alice@example.test", mail_params[] = "";
    queue_job_t job = {.sender = sender,
                       .mail_params = mail_params,
                       .rcpts = rcpts,
                       .rcpt_params = params,
                       .n_rcpts = 2,
                       .body = body,
                       .body_len = sizeof body - 1};
    snprintf(job.domain, sizeof job.domain, "example.test");
    snprintf(job.mid, sizeof job.mid, "0123456789abcdef0123456789abcdef");
    fz.n_rcpts = job.n_rcpts;
    fz.gates = fz.dones = 0;
    fz.closed = false;
    fz.gated = NULL;

    hop_t hop = {0};
    snprintf(hop.addr.host, sizeof hop.addr.host, "127.0.0.1");
    hop.addr.port = fz.port;
    snprintf(hop.name, sizeof hop.name, "mx.example.test");
    client_env_t env = {&fz.loop, &fz.cfg, NULL};
    fz.client = client_deliver(&env, &hop, &job, on_gate, on_done, NULL);
    CHECK(fz.client != NULL);
    for (unsigned i = 0; i < 200 && !fz.peer && !fz.closed; i++)
        uv_run(&fz.loop, UV_RUN_NOWAIT);
    for (size_t off = 0; off < size && fz.peer && !fz.closed; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        stream_write(fz.peer, data + off, n);
        spin(4);
        if (fz.gated) {
            client_t *c = fz.gated;
            fz.gated = NULL;
            client_finish_data(c, pass);
        }
    }
    spin(8);
    if (fz.gated) {
        client_t *c = fz.gated;
        fz.gated = NULL;
        client_finish_data(c, pass);
    }
    if (fz.peer) { /* the MX hangs up: the client must finish */
        stream_close(fz.peer);
        fz.peer = NULL;
    }
    spin(200);
    CHECK(fz.closed && fz.dones == 1);
    spin(4);
    return 0;
}
