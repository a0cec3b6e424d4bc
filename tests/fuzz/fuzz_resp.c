/* libFuzzer target: a hostile or broken Redis. The queue of the nodes
 * (queue_open, as a worker or an ingress opens it) talks to a fake Redis on
 * loopback in this process, on the same loop; the fake answers the start-up
 * (PING, the library's digest, ROLE, CLUSTER SLOTS: a single Redis) itself, and every
 * later command only from the input, written in chunks of the size the
 * input's first octet says, the loop run between chunks, so hiredis's
 * reader gets the replies cut anywhere. The requests are the nodes' own:
 * enqueue (with WAIT when the second octet asks for replicas), claim,
 * fetch, extend, forget, key_lookup, key_version, disc_put, disc_miss, seal_check, auth_begin,
 * dkim_version, dkim_keys, stats and the status report.
 *
 * Beyond "no crash, no leak, no out-of-bounds read" (ASan/UBSan, LSan),
 * it checks what queue.h promises: every callback of a request that was
 * sent runs exactly once, none of one that was refused; an error carries a
 * reason; what a success hands over is whole (strings end inside their
 * buffers, a fetched job has recipients, a sender and a body, a job id
 * that parses). A broken promise is a __builtin_trap(). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "core/core.h"
#include "core/stream.h"
#include "queue/queue.h"
#include "queue/schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

#define SHARDS 2

enum req {
    R_ENQUEUE,
    R_CLAIM,
    R_FETCH,
    R_EXTEND,
    R_FORGET,
    R_KEY_LOOKUP,
    R_KEY_VERSION,
    R_DISC_PUT,
    R_DISC_MISS,
    R_SEAL_CHECK,
    R_AUTH,
    R_DKIM_VERSION,
    R_DKIM_KEYS,
    R_STATS,
    R_REPORT,
    R_COUNT
};

/* One request: sent (the call returned 0) and how often its callback ran. */
struct tracker {
    bool sent;
    int calls;
};

static struct {
    uv_loop_t loop;
    uv_tcp_t listener;
    uint16_t port;
    library_t lib;
    stream_t *peer; /* the queue's connection, server side */
    redisReader *commands;
    unsigned handshakes; /* start-up commands answered */
    unsigned received;   /* other commands, to be answered from the input */
    struct tracker t[R_COUNT];
} fz;

static void called(struct tracker *t, int status, const char *err)
{
    CHECK(t->calls == 0);
    t->calls++;
    CHECK(status == 0 || err != NULL);
}

static bool bounded(const char *s, size_t size)
{
    return memchr(s, 0, size) != NULL;
}

static void on_status(int status, const char *err, void *arg)
{
    called(arg, status, err);
}

static void on_claim(int status, const char *err, long long next_ms, const queue_claimed_t *jobs,
                     unsigned n, void *arg)
{
    (void)next_ms;
    called(arg, status, err);
    if (status < 0) return;
    CHECK(jobs != NULL || n == 0);
    for (unsigned i = 0; i < n; i++)
        CHECK(bounded(jobs[i].jid, sizeof jobs[i].jid));
}

static void on_fetch(int status, const char *err, queue_job_t *job, void *arg)
{
    called(arg, status, err);
    if (status < 0) CHECK(job == NULL);
    if (!job) return;
    job_id_t id;
    CHECK(job_id_parse(job->jid, &id) == 0 && !strcmp(id.mid, job->mid));
    CHECK(bounded(job->domain, sizeof job->domain) && job->sender && job->mail_params);
    CHECK(job->n_rcpts > 0 && job->body);
    for (unsigned i = 0; i < job->n_rcpts; i++)
        CHECK(job->rcpts[i] && job->rcpt_params[i] && !strchr(job->rcpts[i], '\n'));
    CHECK(job->body_len == 0 || memchr(job->body, job->body[job->body_len - 1], job->body_len));
    queue_job_free(job);
}

static void on_key(int status, const char *err, const queue_key_found_t *f, void *arg)
{
    called(arg, status, err);
    if (status < 0) return;
    CHECK(f != NULL);
    CHECK(bounded(f->disc.fpr, sizeof f->disc.fpr));
    CHECK(!f->disc.data || f->disc.len < 1 << 30);
    CHECK(f->miss.until == 0 || f->miss.tag);
    CHECK(f->domain_miss.until == 0 || f->domain_miss.tag);
    for (int m = 0; m < QUEUE_KEY_METHODS; m++) {
        const queue_found_key_t *k = &f->keys[m];
        CHECK(bounded(k->fpr, sizeof k->fpr));
        CHECK(k->armored_len == 0 || (k->armored && k->armored[k->armored_len - 1] | 1));
    }
    const char *words[] = {f->addr_policy, f->domain_policy, f->addr_prefer, f->domain_prefer};
    for (int i = 0; i < 4; i++)
        if (words[i]) CHECK(strlen(words[i]) < 64);
}

static void on_version(int status, const char *err, long long version, void *arg)
{
    (void)version;
    called(arg, status, err);
}

static void on_versions(int status, const char *err, long long version, long long dversion,
                        void *arg)
{
    (void)version;
    (void)dversion;
    called(arg, status, err);
}

static void on_blob(int status, const char *err, const char *d, size_t len, void *arg)
{
    called(arg, status, err);
    if (status == 0 && len) CHECK(d && (d[len - 1] | 1));
}

static void on_user(int status, const char *err, const queue_user_t *u, void *arg)
{
    called(arg, status, err);
    if (status < 0) return;
    CHECK(u && bounded(u->hash, sizeof u->hash) && bounded(u->cram, sizeof u->cram));
}

static void on_dkim(int status, const char *err, const queue_dkim_key_t *keys, size_t n, void *arg)
{
    called(arg, status, err);
    if (status < 0) return;
    CHECK(keys != NULL || n == 0);
    for (size_t i = 0; i < n; i++) {
        const queue_dkim_key_t *k = &keys[i];
        CHECK(bounded(k->domain, sizeof k->domain) && bounded(k->selector, sizeof k->selector));
        CHECK(bounded(k->algorithm, sizeof k->algorithm) && k->record);
        if (!k->malformed) CHECK(k->sealed && k->domain[0] && k->selector[0]);
    }
}

static void on_stats(int status, const char *err, const queue_stats_t *s, void *arg)
{
    called(arg, status, err);
    if (status == 0) CHECK(s != NULL);
}

static void on_report(int status, const char *err, const queue_report_t *r, void *arg)
{
    called(arg, status, err);
    if (status < 0) return;
    CHECK(r != NULL);
    CHECK(r->keys.soon != NULL || r->keys.n_soon == 0);
    for (unsigned i = 0; i < r->keys.n_soon; i++)
        CHECK(bounded(r->keys.soon[i].id, sizeof r->keys.soon[i].id) &&
              bounded(r->keys.soon[i].addresses, sizeof r->keys.soon[i].addresses));
    CHECK(r->dests != NULL || r->n_dests == 0);
    for (unsigned i = 0; i < r->n_dests; i++)
        CHECK(bounded(r->dests[i].domain, sizeof r->dests[i].domain));
    CHECK(r->failures != NULL || r->n_failures == 0);
    for (unsigned i = 0; i < r->n_failures; i++) {
        const queue_failure_t *f = &r->failures[i];
        CHECK(bounded(f->mid, sizeof f->mid) && bounded(f->rcpt, sizeof f->rcpt));
        CHECK(bounded(f->event, sizeof f->event) && bounded(f->detail, sizeof f->detail));
    }
}

/* ---- the fake Redis ---- */

static void answer(const char *text)
{
    if (fz.peer) stream_write(fz.peer, text, strlen(text));
}

static bool arg_is(const redisReply *cmd, size_t i, const char *text)
{
    return cmd->elements > i && cmd->element[i]->type == REDIS_REPLY_STRING &&
           !strcasecmp(cmd->element[i]->str, text);
}

/* The start-up is answered as a single Redis with our library; everything
 * else waits for the input. */
static void on_command(const redisReply *cmd)
{
    if (arg_is(cmd, 0, "FCALL_RO") && arg_is(cmd, 1, LIBRARY_DIGEST_FUNCTION)) {
        char reply[128];
        snprintf(reply, sizeof reply, "$%zu\r\n%s\r\n", strlen(fz.lib.digest), fz.lib.digest);
        answer(reply);
        fz.handshakes++;
    } else if (arg_is(cmd, 0, "PING")) { /* a connection without a password pings first */
        answer("+PONG\r\n");
        fz.handshakes++;
    } else if (arg_is(cmd, 0, "ROLE")) {
        /* The replica check's, sent ahead of CLUSTER SLOTS on a new
         * connection: answered here, as replies keep the commands' order. */
        answer(
            "*3\r\n$6\r\nmaster\r\n:0\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$1\r\n0\r\n");
        fz.handshakes++;
    } else if (arg_is(cmd, 0, "CLUSTER")) {
        answer("-ERR This instance has cluster support disabled\r\n");
        fz.handshakes++;
    } else {
        fz.received++;
    }
}

static void on_peer(stream_t *s, enum stream_event event, void *arg)
{
    (void)arg;
    if (event == STREAM_DATA) {
        size_t len;
        const char *d = stream_data(s, &len);
        redisReaderFeed(fz.commands, d, len);
        stream_consume(s, len);
        void *cmd;
        while (redisReaderGetReply(fz.commands, &cmd) == REDIS_OK && cmd) {
            on_command(cmd);
            freeReplyObject(cmd);
        }
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
    if (fz.peer) stream_close(fz.peer); /* one connection at a time */
    fz.peer = s;
    redisReaderFree(fz.commands);
    fz.commands = redisReaderCreate();
    CHECK(fz.commands != NULL);
}

static void setup(void)
{
    log_set_level(LOG_ERROR);
    CHECK(uv_loop_init(&fz.loop) == 0);
    CHECK(library_prepare(&fz.lib) == 0);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    CHECK(uv_tcp_init(&fz.loop, &fz.listener) == 0);
    CHECK(uv_tcp_bind(&fz.listener, (const struct sockaddr *)&sa, 0) == 0);
    CHECK(uv_listen((uv_stream_t *)&fz.listener, 16, on_connection) == 0);
    int len = sizeof sa;
    CHECK(uv_tcp_getsockname(&fz.listener, (struct sockaddr *)&sa, &len) == 0);
    fz.port = ntohs(sa.sin_port);
}

/* Runs the loop until cond holds or it had max turns without waiting. */
static void spin(bool (*cond)(void), unsigned max)
{
    for (unsigned i = 0; i < max && !(cond && cond()); i++)
        uv_run(&fz.loop, UV_RUN_NOWAIT);
}

static queue_t *current;

static bool is_ready(void)
{
    return queue_ready(current);
}

static unsigned sent;

static bool all_received(void)
{
    return fz.received >= sent;
}

static bool all_called(void)
{
    for (int i = 0; i < R_COUNT; i++)
        if (fz.t[i].sent && !fz.t[i].calls) return false;
    return true;
}

/* ---- the requests ---- */

static void track(enum req r, int rc)
{
    fz.t[r].sent = rc == 0;
    sent += rc == 0;
}

static void send_requests(queue_t *q, queue_job_t *job)
{
    static const char body[] = "sealed";
    const queue_body_t bodies[] = {{body, sizeof body - 1}};
    const char *rcpts[] = {"bob@example.test", "carol@example.test"};
    queue_message_t m = {.sender = "alice@example.test",
                         .rcpts = rcpts,
                         .n_rcpts = 2,
                         .info = "fuzz",
                         .mail_params = "",
                         .bodies = bodies,
                         .n_bodies = 1};
    memcpy(m.id, "0123456789abcdef0123456789abcdef", 33);
    track(R_ENQUEUE, queue_enqueue(q, &m, on_status, &fz.t[R_ENQUEUE]));
    track(R_CLAIM, queue_claim(q, 1, "worker", 4, 30000, 3, on_claim, &fz.t[R_CLAIM]));
    queue_claimed_t claimed = {.token = 7};
    job_id_format(claimed.jid, m.id, 0, 0);
    track(R_FETCH, queue_fetch(q, 1, &claimed, on_fetch, &fz.t[R_FETCH]));
    memcpy(job->jid, claimed.jid, sizeof job->jid);
    job->token = 7;
    job->shard = 1;
    track(R_EXTEND, queue_extend(q, job, 30000, 0, on_status, &fz.t[R_EXTEND]));
    track(R_FORGET, queue_forget(q, 1, &claimed, on_status, &fz.t[R_FORGET]));
    queue_disc_t disc = {.address = "bob@example.test",
                         .fpr = "AAAA",
                         .data = "key",
                         .len = 3,
                         .source = "wkd",
                         .url = "https://x.test/",
                         .tag = "k1:t"};
    track(R_DISC_PUT, queue_disc_put(q, &disc, on_status, &fz.t[R_DISC_PUT]));
    track(R_DISC_MISS,
          queue_disc_miss(q, "bob@example.test", 1, false, "k1:t", on_status, &fz.t[R_DISC_MISS]));
    track(R_KEY_LOOKUP,
          queue_key_lookup(q, "bob@example.test", "example.test", on_key, &fz.t[R_KEY_LOOKUP]));
    track(R_KEY_VERSION, queue_key_version(q, on_versions, &fz.t[R_KEY_VERSION]));
    track(R_SEAL_CHECK, queue_seal_check(q, "k1", "check", 5, on_blob, &fz.t[R_SEAL_CHECK]));
    queue_login_t login = {"alice", "192.0.2.1", 10, 600, true};
    track(R_AUTH, queue_auth_begin(q, &login, on_user, &fz.t[R_AUTH]));
    track(R_DKIM_VERSION, queue_dkim_version(q, on_version, &fz.t[R_DKIM_VERSION]));
    track(R_DKIM_KEYS, queue_dkim_keys(q, on_dkim, &fz.t[R_DKIM_KEYS]));
    track(R_STATS, queue_stats(q, on_stats, &fz.t[R_STATS]));
    track(R_REPORT, queue_report(q, 5, 86400, 3, on_report, &fz.t[R_REPORT]));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) setup();
    ready = true;
    if (size < 2) return 0;
    size_t chunk = 1 + (data[0] & 63);
    bool replicas = data[1] & 1;
    data += 2, size -= 2;

    memset(fz.t, 0, sizeof fz.t);
    fz.handshakes = fz.received = sent = 0;
    redis_endpoint_t ep = {.port = fz.port};
    snprintf(ep.host, sizeof ep.host, "127.0.0.1");
    queue_t *q = queue_open(&fz.loop, &ep, 5000, SHARDS);
    CHECK(q != NULL);
    current = q;
    if (replicas) queue_set_min_replicas(q, 1, 100);
    spin(is_ready, 2000);
    CHECK(queue_ready(q));

    queue_job_t *job = calloc(1, sizeof *job);
    CHECK(job != NULL);
    send_requests(q, job);
    spin(all_received, 2000);
    for (size_t off = 0; off < size && fz.peer; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        stream_write(fz.peer, data + off, n);
        spin(NULL, 4);
    }
    spin(all_called, 20);
    queue_close(q);
    spin(all_called, 20);
    for (int i = 0; i < R_COUNT; i++)
        CHECK(fz.t[i].calls == (fz.t[i].sent ? 1 : 0));
    if (fz.peer) {
        stream_close(fz.peer);
        fz.peer = NULL;
    }
    spin(NULL, 10); /* the closes of the queue's handles and of the peer */
    free(job);
    return 0;
}
