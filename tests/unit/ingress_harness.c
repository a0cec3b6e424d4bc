/* The ingress tests' harness: see ingress_harness.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/unit/ingress_harness.h"

#include "core/stream.h"
#include "crypto/crypto.h"
#include "ingress/ingress.h"
#include "proto/proto.h"
#include "queue/admin.h"
#include "queue/queue.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Long enough for a password check under ASan, short enough to fail soon. */
#define DEADLINE_MS 10000
#define MAX_CLIENTS 8

struct client {
    stream_t *stream; /* NULL once closed */
    int fd;           /* the stream's socket, for a half-close */
    buf_t in;         /* what came and is not taken as a reply yet */
    char reply[8192]; /* the reply taken last */
    bool eof, failed, tls_ready;
};

static struct harness {
    bool available; /* redis-server is installed and came up */
    uv_loop_t loop;
    uv_timer_t deadline;
    bool expired;
    char dir[64];
    pid_t redis_pid;
    redis_endpoint_t redis;
    redisContext *redis_ctx; /* to empty Redis between tests */
    queue_admin_t *admin;
    queue_t *queue;
    seal_keyring_t *seal;
    char cert[128], key[128];
    char user_hash[PASSWORD_HASH_MAX];
    SSL_CTX *client_tls;
    config_t cfg; /* the running ingress's: it must outlive it */
    ingress_t *ingress;
    bool stopped;
    client_t *clients[MAX_CLIENTS];
} h;

/* cmocka's _fail, for a failure found in the harness but reported at the
 * test's line; it does not return (cmocka jumps back to its runner). */
__attribute__((noreturn)) static void fail_at(const char *file, int line)
{
    _fail(file, line);
    abort();
}

/* ---- the loop ---- */

static void on_deadline(uv_timer_t *t)
{
    (void)t;
    h.expired = true;
}

/* Runs the loop until done(arg) or ms have passed; false on the deadline. */
static bool run_until(bool (*done)(const void *arg), const void *arg, unsigned ms)
{
    h.expired = false;
    uv_timer_start(&h.deadline, on_deadline, ms, 0);
    while (!(done && done(arg)) && !h.expired)
        uv_run(&h.loop, UV_RUN_ONCE);
    uv_timer_stop(&h.deadline);
    return done && done(arg);
}

static bool queue_is_ready(const void *arg)
{
    (void)arg;
    return queue_ready(h.queue);
}

/* ---- redis-server ---- */

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
        abort();
    close(fd);
    return ntohs(sin.sin_port);
}

static bool find_program(const char *name, char *out, size_t len)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, len, "%s/%s", d, name);
        if (access(out, X_OK) == 0) return true;
    }
    return false;
}

/* A throw-away Redis: no persistence, in the temporary directory, and
 * killed with the test process even when that one crashes. */
static bool start_redis(const char *program)
{
    char port[8], logfile[128];
    h.redis.port = free_port();
    snprintf(h.redis.host, sizeof h.redis.host, "127.0.0.1");
    snprintf(port, sizeof port, "%u", h.redis.port);
    snprintf(logfile, sizeof logfile, "%s/redis.log", h.dir);
    h.redis_pid = fork();
    if (h.redis_pid < 0) return false;
    if (h.redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(program, program, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
              "no", "--dir", h.dir, "--logfile", logfile, "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && !h.redis_ctx; i++) {
        struct timeval tv = {0, 100000};
        redisContext *ctx = redisConnectWithTimeout("127.0.0.1", h.redis.port, tv);
        redisReply *r = ctx && !ctx->err ? redisCommand(ctx, "PING") : NULL;
        if (r && r->type == REDIS_REPLY_STATUS)
            h.redis_ctx = ctx;
        else if (ctx)
            redisFree(ctx);
        freeReplyObject(r);
        if (!h.redis_ctx) usleep(100000);
    }
    return h.redis_ctx != NULL;
}

static void put_user(void)
{
    char err[300];
    if (queue_admin_user_set(h.admin, TEST_USER, h.user_hash, NULL, err, sizeof err) < 0)
        fail_msg("adding the test user: %s", err);
}

/* ---- fixtures ---- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void close_walk(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle)) uv_close(handle, NULL);
}

int harness_setup(void **state)
{
    (void)state;
    char err[600], keys[200];
    signal(SIGPIPE, SIG_IGN); /* a session's peer may close first */
    log_set_level(LOG_WARN);
    snprintf(h.dir, sizeof h.dir, "/tmp/sealpost-ingress-XXXXXX");
    if (!mkdtemp(h.dir) || uv_loop_init(&h.loop) < 0) return -1;
    uv_timer_init(&h.loop, &h.deadline);
    snprintf(h.cert, sizeof h.cert, "%s/cert.pem", h.dir);
    snprintf(h.key, sizeof h.key, "%s/key.pem", h.dir);
    if (tls_make_self_signed(h.cert, h.key, "localhost", err, sizeof err) < 0 ||
        !(h.client_tls = tls_client_context(NULL, err, sizeof err)) ||
        seal_key_new("test", keys, sizeof keys) < 0 ||
        !(h.seal = seal_keyring_load(keys, NULL, err, sizeof err)) ||
        password_hash(TEST_PASSWORD, strlen(TEST_PASSWORD), h.user_hash) < 0) {
        print_error("harness: %s\n", err);
        return -1;
    }
    char program[512];
    if (!find_program("redis-server", program, sizeof program)) return 0; /* every test skips */
    if (!start_redis(program)) {
        print_error("harness: %s did not answer on port %u (see %s/redis.log)\n", program,
                    h.redis.port, h.dir);
        return -1;
    }
    h.queue = queue_open(&h.loop, &h.redis, 2000, 1);
    h.admin = queue_admin_open(&h.redis, 2000, err, sizeof err);
    if (!h.queue || !h.admin || !run_until(queue_is_ready, NULL, DEADLINE_MS)) {
        print_error("harness: the queue did not come up on redis port %u\n", h.redis.port);
        return -1;
    }
    put_user();
    h.available = true;
    return 0;
}

int harness_teardown(void **state)
{
    (void)state;
    queue_close(h.queue);
    queue_admin_close(h.admin);
    uv_walk(&h.loop, close_walk, NULL);
    uv_run(&h.loop, UV_RUN_DEFAULT);
    uv_loop_close(&h.loop);
    if (h.redis_ctx) redisFree(h.redis_ctx);
    if (h.redis_pid > 0) {
        kill(h.redis_pid, SIGTERM);
        waitpid(h.redis_pid, NULL, 0);
    }
    seal_keyring_free(h.seal);
    SSL_CTX_free(h.client_tls);
    nftw(h.dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static bool client_gone(const void *arg)
{
    return ((const client_t *)arg)->stream == NULL;
}

static void on_stopped(void *arg)
{
    (void)arg;
    h.stopped = true;
}

static void on_stats(int status, const char *err, const queue_stats_t *stats, void *arg)
{
    (void)status;
    (void)err;
    (void)stats;
    *(bool *)arg = true;
}

static bool flag_set(const void *arg)
{
    return *(const bool *)arg;
}

/* Waits until Redis has answered everything sent before: replies on its
 * connection come in order, so once a stats call is answered, so is a
 * login's fire-and-forget uncount (which would otherwise be cut off). */
static void queue_drain(void)
{
    bool answered = false;
    if (queue_stats(h.queue, on_stats, &answered) == 0) run_until(flag_set, &answered, DEADLINE_MS);
}

/* Stops the running ingress and waits until it is gone; false when it
 * does not go within the deadline (something still refers to it). */
static bool stop_ingress(void)
{
    if (!h.ingress) return true;
    h.stopped = false;
    ingress_stop(h.ingress, on_stopped, NULL);
    h.ingress = NULL;
    return run_until(flag_set, &h.stopped, DEADLINE_MS);
}

int harness_test_teardown(void **state)
{
    (void)state;
    int rc = 0;
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (h.clients[i]) client_close(h.clients[i]);
    if (!stop_ingress()) {
        print_error("harness: the ingress did not stop within %u ms\n", DEADLINE_MS);
        rc = -1;
    }
    if (h.available) {
        queue_drain();
        freeReplyObject(redisCommand(h.redis_ctx, "FLUSHALL"));
        put_user();
    }
    return rc;
}

/* ---- the server ---- */

void server_config(config_t *cfg)
{
    config_defaults(cfg);
    snprintf(cfg->ingress.hostname, sizeof cfg->ingress.hostname, TEST_HOSTNAME);
    snprintf(cfg->ingress.listen.host, sizeof cfg->ingress.listen.host, "127.0.0.1");
    cfg->ingress.listen.port = free_port();
    snprintf(cfg->ingress.relay_domains[0], sizeof cfg->ingress.relay_domains[0], RELAY_DOMAIN);
    cfg->ingress.n_relay_domains = 1;
    snprintf(cfg->ingress.tls_cert, sizeof cfg->ingress.tls_cert, "%s", h.cert);
    snprintf(cfg->ingress.tls_key, sizeof cfg->ingress.tls_key, "%s", h.key);
    cfg->ingress.auth_fail_limit = 100000;
}

void server_start(const config_t *cfg)
{
    char err[600];
    if (!h.available) {
        print_message("redis-server is not installed (not on PATH): skipped\n");
        skip();
    }
    h.cfg = *cfg;
    h.ingress = ingress_start(&h.loop, &h.cfg, h.queue, h.seal, err, sizeof err);
    if (!h.ingress) fail_msg("ingress_start: %s", err);
}

void server_stop_at(const char *file, int line)
{
    if (stop_ingress()) return;
    print_error("%s:%d: the ingress did not stop within %u ms\n", file, line, DEADLINE_MS);
    fail_at(file, line);
}

void server_set_policy(const char *target, const char *policy)
{
    char err[300];
    if (queue_admin_policy_set(h.admin, target, policy, err, sizeof err) < 0)
        fail_msg("setting the policy of %s: %s", target, err);
}

/* ---- the client ---- */

static void on_client(stream_t *stream, enum stream_event event, void *arg)
{
    client_t *c = arg;
    size_t len;
    const char *data;
    switch (event) {
    case STREAM_DATA:
        data = stream_data(stream, &len);
        if (buf_append(&c->in, data, len) < 0) abort();
        stream_consume(stream, len);
        break;
    case STREAM_EOF:
        c->eof = true;
        break;
    case STREAM_TLS_READY:
        c->tls_ready = true;
        break;
    case STREAM_TLS_FAILED:
    case STREAM_ERROR:
        c->failed = true;
        break;
    case STREAM_CLOSED:
        c->stream = NULL;
        break;
    case STREAM_TIMEOUT:
    case STREAM_CONNECTED:
        break;
    }
}

client_t *client_connect_at(bool submission, const char *file, int line)
{
    int fds[2];
    client_t *c = calloc(1, sizeof *c);
    int slot = 0;
    while (slot < MAX_CLIENTS && h.clients[slot])
        slot++;
    if (!c || slot == MAX_CLIENTS || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) {
        print_error("%s:%d: no client could be made\n", file, line);
        fail_at(file, line);
    }
    h.clients[slot] = c;
    if (ingress_open_fd(h.ingress, fds[0], submission, NULL) < 0) {
        close(fds[0]);
        close(fds[1]);
        print_error("%s:%d: ingress_open_fd refused the socket\n", file, line);
        fail_at(file, line);
    }
    c->fd = fds[1];
    c->stream = stream_open_fd(&h.loop, fds[1], on_client, c);
    if (!c->stream) {
        close(fds[1]);
        fail_at(file, line);
    }
    return c;
}

client_t *client_open_at(bool submission, const char *file, int line)
{
    client_t *c = client_connect_at(submission, file, line);
    client_expect_at(c, "220", NULL, TEST_HOSTNAME " ESMTP sealpost", file, line);
    return c;
}

void client_close(client_t *c)
{
    if (c->stream) stream_close(c->stream);
    run_until(client_gone, c, DEADLINE_MS);
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (h.clients[i] == c) h.clients[i] = NULL;
    buf_free(&c->in);
    free(c);
}

void client_half_close(client_t *c)
{
    if (shutdown(c->fd, SHUT_WR) < 0) fail_msg("shutdown: %s", strerror(errno));
}

static bool reply_unread(const void *arg)
{
    int n = 0;
    return ioctl(((const client_t *)arg)->fd, FIONREAD, &n) == 0 && n > 0;
}

void client_send_and_reset_at(client_t *c, const char *commands, const char *file, int line)
{
    stream_pause(c->stream, true);
    client_send(c, "NOOP\r\n", 6);
    client_send(c, commands, strlen(commands));
    if (!run_until(reply_unread, c, DEADLINE_MS)) {
        print_error("%s:%d: no reply to NOOP\n", file, line);
        fail_at(file, line);
    }
    stream_close(c->stream);
    run_until(client_gone, c, DEADLINE_MS);
}

void client_send(client_t *c, const void *data, size_t len)
{
    if (!c->stream || stream_write(c->stream, data, len) < 0) fail_msg("the client cannot write");
}

/* Takes the first complete reply out of c->in into c->reply: lines up to
 * one that is not a continuation ("250-..."). */
static bool take_reply(client_t *c)
{
    size_t pos = 0;
    while (pos < c->in.len) {
        const char *start = c->in.data + pos;
        const char *lf = memchr(start, '\n', c->in.len - pos);
        if (!lf) return false;
        size_t len = (size_t)(lf - start) + 1;
        bool more = len > 4 && start[3] == '-';
        pos += len;
        if (more) continue;
        size_t n = pos < sizeof c->reply ? pos : sizeof c->reply - 1;
        memcpy(c->reply, c->in.data, n);
        c->reply[n] = 0;
        buf_consume(&c->in, pos);
        return true;
    }
    return false;
}

/* Whether text starts with an enhanced status code (RFC 3463: d.ddd.ddd). */
static bool has_enhanced(const char *text)
{
    return (text[0] == '2' || text[0] == '4' || text[0] == '5') && text[1] == '.';
}

/* Every line has the code; each has the enhanced code (or, for NULL, none). */
static bool reply_matches(const char *reply, const char *code, const char *enhanced,
                          const char *text)
{
    size_t enh_len = enhanced ? strlen(enhanced) : 0;
    for (const char *line = reply; *line;) {
        const char *end = strstr(line, "\r\n");
        if (!end || strncmp(line, code, 3) != 0 ||
            (line[3] != ' ' && line[3] != '-' && end != line + 3))
            return false;
        const char *words = end == line + 3 ? end : line + 4;
        if (enhanced && (strncmp(words, enhanced, enh_len) != 0 ||
                         (words[enh_len] != ' ' && words + enh_len != end)))
            return false;
        if (!enhanced && has_enhanced(words)) return false;
        line = end + 2;
    }
    return reply[0] && strstr(reply, text) != NULL;
}

/* The next reply, checked; sent (or NULL) is the command it answers, named
 * in the failure. */
static const char *expect_after(client_t *c, const char *sent, const char *code,
                                const char *enhanced, const char *text, const char *file, int line)
{
    bool got = false;
    h.expired = false;
    uv_timer_start(&h.deadline, on_deadline, DEADLINE_MS, 0);
    while (!(got = take_reply(c)) && !h.expired && !c->eof && !c->failed && c->stream)
        uv_run(&h.loop, UV_RUN_ONCE);
    uv_timer_stop(&h.deadline);
    if (got && reply_matches(c->reply, code, enhanced, text)) return c->reply;
    print_error("%s:%d: %s%s%sexpected %s %s ...%s...\n", file, line, sent ? "to \"" : "",
                sent ? sent : "", sent ? "\": " : "", code, enhanced ? enhanced : "-", text);
    if (got)
        print_error("  got: %s", c->reply);
    else
        print_error("  got no complete reply (%s); pending: %.*s\n",
                    c->eof      ? "connection closed"
                    : c->failed ? "connection failed"
                                : "timeout",
                    (int)c->in.len, c->in.data ? c->in.data : "");
    fail_at(file, line);
}

const char *client_expect_at(client_t *c, const char *code, const char *enhanced, const char *text,
                             const char *file, int line)
{
    return expect_after(c, NULL, code, enhanced, text, file, line);
}

const char *client_say_at(client_t *c, const char *command, const char *code, const char *enhanced,
                          const char *text, const char *file, int line)
{
    client_send(c, command, strlen(command));
    client_send(c, "\r\n", 2);
    return expect_after(c, command, code, enhanced, text, file, line);
}

void client_steps_at(client_t *c, const struct step *steps, size_t n, const char *file, int line)
{
    for (size_t i = 0; i < n; i++)
        client_say_at(c, steps[i].command, steps[i].code, steps[i].enhanced, steps[i].text, file,
                      line);
}

static bool answered(const void *arg)
{
    const client_t *c = arg;
    return c->in.len > 0 || c->eof || c->failed || !c->stream;
}

size_t client_trickle(client_t *c, const char *text, unsigned gap_ms)
{
    size_t sent = 0;
    while (text[sent] && !answered(c)) {
        client_send(c, text + sent++, 1);
        run_until(answered, c, gap_ms);
    }
    return sent;
}

void client_expect_silence_at(client_t *c, unsigned ms, const char *file, int line)
{
    run_until(NULL, NULL, ms);
    if (c->in.len == 0) return;
    print_error("%s:%d: expected nothing, got: %.*s\n", file, line, (int)c->in.len, c->in.data);
    fail_at(file, line);
}

static bool client_ended(const void *arg)
{
    const client_t *c = arg;
    return c->eof || c->failed || !c->stream;
}

void client_expect_closed_at(client_t *c, const char *file, int line)
{
    if (!run_until(client_ended, c, DEADLINE_MS)) {
        print_error("%s:%d: the server did not close the connection\n", file, line);
        fail_at(file, line);
    }
    if (c->in.len == 0) return;
    print_error("%s:%d: closed, but with more said first: %.*s\n", file, line, (int)c->in.len,
                c->in.data);
    fail_at(file, line);
}

static bool handshake_done(const void *arg)
{
    const client_t *c = arg;
    return c->tls_ready || c->failed || c->eof || !c->stream;
}

void client_starttls_at(client_t *c, const char *file, int line)
{
    if (c->in.len) {
        print_error("%s:%d: cleartext after the 220: %.*s\n", file, line, (int)c->in.len,
                    c->in.data);
        fail_at(file, line);
    }
    long dropped = stream_start_tls(c->stream, h.client_tls, &(stream_tls_t){.host = "localhost"});
    if (dropped != 0 || !run_until(handshake_done, c, DEADLINE_MS) || !c->tls_ready) {
        print_error("%s:%d: no TLS handshake (dropped %ld octets; %s)\n", file, line, dropped,
                    c->stream ? stream_error(c->stream) : "closed");
        fail_at(file, line);
    }
}

/* ---- what reached Redis ---- */

unsigned stored_messages(void)
{
    char err[300];
    queue_stats_t st;
    if (queue_admin_stats(h.admin, 1, &st, err, sizeof err) < 0) fail_msg("queue stats: %s", err);
    return (unsigned)st.messages;
}

const char *queued_id(const char *reply, char out[33])
{
    const char *at = strstr(reply, "queued as ");
    snprintf(out, 33, "%s", at ? at + strlen("queued as ") : "");
    return out;
}

/* A message as a worker gets it: every due job claimed, and those of the
 * message fetched, their recipients collected and the body unsealed. */
struct fetch {
    const char *mid;
    bool claimed;
    unsigned pending; /* fetches not answered yet */
    bool failed;
    char sender[PROTO_PATH_MAX + 1];
    char *rcpts[64];
    unsigned n_rcpts;
    buf_t body; /* unsealed, with the Received: field */
    bool opened;
};

static void on_fetched(int status, const char *err, queue_job_t *job, void *arg)
{
    struct fetch *f = arg;
    char context[48], why[300];
    f->pending--;
    if (status < 0 || !job) {
        print_error("harness: fetch: %s\n", status < 0 ? err : "no such job");
        f->failed = true;
        queue_job_free(job);
        return;
    }
    if (!strcmp(job->mid, f->mid)) {
        snprintf(f->sender, sizeof f->sender, "%s", job->sender);
        for (unsigned i = 0; i < job->n_rcpts && f->n_rcpts < 64; i++)
            f->rcpts[f->n_rcpts++] = strdup(job->rcpts[i]);
        snprintf(context, sizeof context, "%s:%u", job->mid, job->variant);
        if (!f->opened &&
            seal_open(h.seal, context, job->body, job->body_len, &f->body, why, sizeof why) < 0) {
            print_error("harness: the body of %s does not open: %s\n", job->mid, why);
            f->failed = true;
        }
        f->opened = !f->failed;
    }
    queue_job_free(job);
}

static void on_claimed(int status, const char *err, long long next_ms, const queue_claimed_t *jobs,
                       unsigned n_jobs, void *arg)
{
    struct fetch *f = arg;
    (void)next_ms;
    f->claimed = true;
    if (status < 0) {
        print_error("harness: claim: %s\n", err);
        f->failed = true;
    }
    for (unsigned i = 0; status == 0 && i < n_jobs; i++)
        if (queue_fetch(h.queue, queue_shard_of(h.queue, f->mid), &jobs[i], on_fetched, f) == 0)
            f->pending++;
}

static bool fetch_done(const void *arg)
{
    const struct fetch *f = arg;
    return f->claimed && f->pending == 0;
}

static int compare_lines(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The content from the first line that is not part of the Received: field. */
static const char *after_received(const char *body, size_t len)
{
    const char *p = body, *end = body + len;
    if (len < 9 || strncmp(p, "Received:", 9) != 0) return NULL;
    do {
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        if (!lf) return NULL;
        p = lf + 1;
    } while (p < end && (*p == '\t' || *p == ' '));
    return p;
}

void stored_message_at(const char *mid, char *sender, size_t sender_len, buf_t *rcpts,
                       buf_t *content, const char *file, int line)
{
    struct fetch f = {.mid = mid};
    buf_init(&f.body);
    bool answered = queue_claim(h.queue, queue_shard_of(h.queue, mid), "test", 64, 60000, 5,
                                on_claimed, &f) == 0 &&
                    run_until(fetch_done, &f, DEADLINE_MS);
    const char *start = f.opened ? after_received(f.body.data, f.body.len) : NULL;
    snprintf(sender, sender_len, "%s", f.sender);
    qsort(f.rcpts, f.n_rcpts, sizeof f.rcpts[0], compare_lines);
    for (unsigned i = 0; i < f.n_rcpts; i++) {
        buf_printf(rcpts, "%s\n", f.rcpts[i]);
        free(f.rcpts[i]);
    }
    if (start) buf_append(content, start, f.body.len - (size_t)(start - f.body.data));
    buf_free(&f.body);
    if (answered && start && !f.failed) return;
    print_error("%s:%d: message %s: %s\n", file, line, mid,
                !answered   ? "no answer from Redis"
                : !f.opened ? "no job of it was due, or its body did not open"
                            : "its body has no Received: field");
    fail_at(file, line);
}

const char *base64_of(const void *data, size_t n, char *out, size_t outlen)
{
    return sodium_bin2base64(out, outlen, data, n, sodium_base64_VARIANT_ORIGINAL);
}
