/* Running the services of one process on one libuv loop, and stopping them in
 * order on SIGINT/SIGTERM: stop accepting and claiming, let messages in flight
 * get their reply, close Redis, then stop the private redis-server if any. */
#include "cmd/cmd.h"

#include "crypto/crypto.h"
#include "delivery/delivery.h"
#include "ingress/ingress.h"
#include "queue/queue.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <uv.h>

/* How often start-up looks whether Redis is there to check the keys with. */
#define STARTUP_POLL_MS 100
/* Past the worker's own stop_grace, by this much, the process gives up. */
#define SHUTDOWN_MARGIN_MS 5000

typedef struct runtime {
    uv_loop_t *loop;
    const config_t *cfg;
    queue_t *queue;
    ingress_t *ingress;
    worker_t *worker;
    http_server_t *http;
    struct queue_figures {
        metric_t *jobs[4]; /* due, scheduled, leased, held */
        metric_t *messages, *oldest, *errors;
        uint64_t at;     /* uv_now of the last refresh, 0: never */
        bool refreshing; /* a stats call is out */
        struct scrape {
            http_request_t *req;
            struct scrape *next;
        } * waiting; /* scrapes answered when the figures come */
    } figures;
    struct status {
        status_history_t history;
        int64_t sampled_ms;     /* util_now_ms of the last sample */
        uv_timer_t sampler;     /* keeps the history going without scrapes */
        struct scrape *waiting; /* page requests answered when the report comes */
        bool reporting;         /* a report call is out */
        buf_t page;             /* the last page rendered ... */
        uint64_t page_at;       /* ... at this uv_now; 0: none */
    } status;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t deadline;
    uv_timer_t finisher; /* runs finish() outside any library callback */
    serve_options_t opts;
    seal_keyring_t *seal;
    uv_timer_t startup;     /* until the sealing keys are checked and the services run */
    unsigned checks_out;    /* seal_check calls in flight */
    unsigned checks_passed; /* of the keys, in this round */
    bool started;
    private_redis_t *redis; /* sealpost up's own redis-server, if any */
    bool stopping;
    unsigned stops_pending;
    int exit_code;
} runtime_t;

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void on_redis_stopped(void *arg)
{
    runtime_t *rt = arg;
    rt->redis = NULL;
    uv_walk(rt->loop, close_walk, NULL);
}

static void finish(runtime_t *rt)
{
    queue_close(rt->queue);
    rt->queue = NULL;
    if (rt->redis) {
        private_redis_stop(rt->redis, on_redis_stopped, rt); /* the last, as it was first */
        return;
    }
    uv_walk(rt->loop, close_walk, NULL);
}

static void on_finisher(uv_timer_t *t)
{
    finish(t->data);
}

/* The last service may report from inside a hiredis callback, where closing
 * the queue's handles would pull them from under hiredis: finish on the next
 * loop iteration instead. */
static void on_service_stopped(void *arg)
{
    runtime_t *rt = arg;
    if (--rt->stops_pending == 0) uv_timer_start(&rt->finisher, on_finisher, 0, 0);
}

static void on_deadline(uv_timer_t *t)
{
    runtime_t *rt = t->data;
    log_error("event=shutdown_timeout");
    private_redis_kill(rt->redis);
    exit(1);
}

static void stop(runtime_t *rt, int exit_code)
{
    if (rt->stopping) return;
    rt->stopping = true;
    rt->exit_code = exit_code;
    uv_timer_stop(&rt->startup);
    uv_timer_stop(&rt->status.sampler);
    log_info("event=stopping");
    http_stop(rt->http); /* health checks see it gone: take no new work here */
    rt->http = NULL;
    uv_timer_start(&rt->deadline, on_deadline,
                   (uint64_t)rt->cfg->worker.stop_grace * 1000 + SHUTDOWN_MARGIN_MS, 0);
    uv_unref((uv_handle_t *)&rt->deadline);
    rt->stops_pending = 1; /* held until both services are asked */
    if (rt->ingress) {
        rt->stops_pending++;
        ingress_stop(rt->ingress, on_service_stopped, rt);
    }
    if (rt->worker) {
        rt->stops_pending++;
        worker_stop(rt->worker, on_service_stopped, rt);
    }
    on_service_stopped(rt);
}

static void on_signal(uv_signal_t *h, int signum)
{
    runtime_t *rt = h->data;
    if (rt->stopping) {
        log_warn("event=forced_exit signal=%d", signum);
        private_redis_kill(rt->redis);
        exit(1);
    }
    stop(rt, 0);
}

static void on_redis_failed(void *arg)
{
    stop(arg, 1);
}

#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

static void register_queue_metrics(struct queue_figures *f)
{
    static const char *const states[] = {"due", "scheduled", "leased", "held"};
    char labels[32];
    for (int i = 0; i < 4; i++) {
        snprintf(labels, sizeof labels, "state=\"%s\"", states[i]);
        f->jobs[i] = metric_gauge("sealpost_queue_jobs",
                                  "Jobs in the whole queue, by state (due: waiting for a worker "
                                  "now; scheduled: a retry later).",
                                  labels);
    }
    f->messages = metric_gauge("sealpost_queue_messages", "Messages with jobs still open.", "");
    f->oldest = metric_gauge("sealpost_queue_oldest_message_age_seconds",
                             "Age of the oldest message still queued (0 when none).", "");
    f->errors = metric_counter("sealpost_queue_stats_errors_total",
                               "Queue-wide figures that could not be read from Redis.", "");
}

/* One sample for the status page's history every STATUS_SAMPLE_S, from
 * whichever read of the figures comes first. */
static void sample_history(runtime_t *rt, const queue_stats_t *st)
{
    int64_t now = util_now_ms();
    if (now - rt->status.sampled_ms < (int64_t)STATUS_SAMPLE_S * 1000 - 500) return;
    rt->status.sampled_ms = now;
    status_history_add(&rt->status.history, st, now);
}

/* The queue-wide figures are read at most once a second whatever the number
 * of scrapers, so scraping many nodes cannot load Redis; a scrape that finds
 * them older waits for the fresh ones. */
static void on_queue_figures(int status, const char *err, const queue_stats_t *st, void *arg)
{
    runtime_t *rt = arg;
    struct queue_figures *f = &rt->figures;
    f->refreshing = false;
    f->at = uv_now(rt->loop);
    if (status == 0) sample_history(rt, st);
    if (status == 0) {
        const long long jobs[] = {st->due_now, st->scheduled, st->leased, st->held};
        for (int i = 0; i < 4; i++)
            metric_set(f->jobs[i], (double)jobs[i]);
        metric_set(f->messages, (double)st->messages);
        metric_set(f->oldest,
                   st->oldest_ms < 0 ? 0 : (double)(st->now_ms - st->oldest_ms) / 1000.0);
    } else {
        metric_add(f->errors, 1);
        log_warn("event=queue_stats_failed error=\"%s\"", err);
    }
    while (f->waiting) {
        struct scrape *sc = f->waiting;
        f->waiting = sc->next;
        buf_t body;
        buf_init(&body);
        int rc = metrics_render(&body);
        http_reply(sc->req, rc == 0 ? 200 : 500, METRICS_TYPE, &body);
        buf_free(&body);
        free(sc);
    }
}

static void refresh_figures(runtime_t *rt)
{
    struct queue_figures *f = &rt->figures;
    if (f->refreshing) return;
    f->refreshing = true;
    if (queue_stats(rt->queue, on_queue_figures, rt) < 0)
        on_queue_figures(-1, "out of memory", NULL, rt);
}

static void on_sampler(uv_timer_t *t)
{
    runtime_t *rt = t->data;
    if (queue_ready(rt->queue)) refresh_figures(rt);
}

#define PAGE_TYPE "text/html; charset=utf-8"

static void on_report(int status, const char *err, const queue_report_t *report, void *arg)
{
    runtime_t *rt = arg;
    rt->status.reporting = false;
    if (status == 0) sample_history(rt, &report->stats);
    buf_reset(&rt->status.page);
    int rc = status_render(&rt->status.page, rt->cfg->ingress.hostname, &rt->status.history,
                           status == 0 ? report : NULL, status == 0 ? NULL : err, util_now_ms());
    rt->status.page_at = rc == 0 && status == 0 ? uv_now(rt->loop) : 0;
    while (rt->status.waiting) {
        struct scrape *p = rt->status.waiting;
        rt->status.waiting = p->next;
        http_reply(p->req, rc == 0 ? 200 : 500, PAGE_TYPE, &rt->status.page);
        free(p);
    }
}

/* GET /: waits for a fresh report of destinations and bounces (one call
 * out at a time, however many browsers ask); a page younger than
 * PAGE_CACHE_MS is served again, so open browsers cannot load Redis. */
#define PAGE_CACHE_MS 5000

static int status_page(runtime_t *rt, http_request_t *req, buf_t *body, const char **content_type)
{
    *content_type = PAGE_TYPE;
    if (rt->status.page_at && uv_now(rt->loop) - rt->status.page_at < PAGE_CACHE_MS)
        return buf_append(body, rt->status.page.data, rt->status.page.len) == 0 ? 200 : 500;
    struct scrape *p = malloc(sizeof *p);
    if (!p) {
        buf_printf(body, "out of memory\n");
        return 500;
    }
    p->req = req;
    p->next = rt->status.waiting;
    rt->status.waiting = p;
    *content_type = PAGE_TYPE;
    if (!rt->status.reporting) {
        rt->status.reporting = true;
        if (queue_report(rt->queue, 10, (long long)STATUS_EXPIRY_DAYS * 86400, STATUS_EXPIRING_MAX,
                         on_report, rt) < 0)
            on_report(-1, "out of memory", NULL, rt);
    }
    return 0;
}

static int scrape_metrics(runtime_t *rt, http_request_t *req, buf_t *body)
{
    struct queue_figures *f = &rt->figures;
    bool fresh = f->at && uv_now(rt->loop) - f->at < 1000;
    struct scrape *sc = fresh ? NULL : malloc(sizeof *sc);
    if (!sc) return metrics_render(body) == 0 ? 200 : 500;
    sc->req = req;
    sc->next = f->waiting;
    f->waiting = sc;
    refresh_figures(rt);
    return 0;
}

/* GET /metrics, /healthz (the process runs its loop) and /readyz (it can
 * reach Redis, with the functions library loaded and, with min_replicas,
 * that many replicas on each master, and an ingress can encrypt). */
static int on_http(http_request_t *req, const char *path, buf_t *body, const char **content_type,
                   void *arg)
{
    runtime_t *rt = arg;
    /* A connection accepted before the stop may still ask: the queue may be
     * closed by now, so nothing that needs it is answered. */
    if (rt->stopping || !rt->queue) {
        bool known = !strcmp(path, "/") || !strcmp(path, "/metrics") || !strcmp(path, "/readyz") ||
                     !strcmp(path, "/healthz");
        buf_printf(body, known ? "stopping\n" : "not found\n");
        return known ? 503 : 404;
    }
    if (!strcmp(path, "/metrics")) {
        *content_type = METRICS_TYPE;
        return scrape_metrics(rt, req, body);
    }
    if (!strcmp(path, "/")) return status_page(rt, req, body, content_type);
    if (!strcmp(path, "/healthz")) {
        buf_printf(body, "ok\n");
        return 200;
    }
    if (!strcmp(path, "/readyz")) {
        /* The first reason found is the one given: a refused login, a TLS
         * failure or a master with too few replicas; else Redis or the
         * process as a whole; else what keeps encryption from working. */
        const char *why = queue_not_ready_reason(rt->queue);
        if (!why && !(queue_ready(rt->queue) && rt->started && !rt->stopping))
            why = "redis unreachable, keys unchecked, or stopping";
        if (!why && rt->ingress && !ingress_ready(rt->ingress, &why) && !why)
            why = "encryption unavailable";
        if (!why) {
            buf_printf(body, "ready\n");
            return 200;
        }
        buf_printf(body, "not ready: %s\n", why);
        return 503;
    }
    buf_printf(body, "not found; try /, /metrics, /healthz or /readyz\n");
    return 404;
}

static void register_process_metrics(void)
{
    char labels[64];
    snprintf(labels, sizeof labels, "version=\"%s\"", SEALPOST_VERSION);
    metric_set(metric_gauge("sealpost_build_info", "The running version (always 1).", labels), 1);
    metric_set(metric_gauge("sealpost_process_start_time_seconds",
                            "When the process started, in seconds since the epoch.", ""),
               (double)util_now_ms() / 1000.0);
}

/* SIGHUP: pick up a renewed certificate, and the S/MIME CA file and CRLs,
 * without dropping a connection. */
static void on_sighup(uv_signal_t *h, int signum)
{
    runtime_t *rt = h->data;
    (void)signum;
    if (rt->ingress && !rt->stopping) ingress_reload(rt->ingress);
}

static void start_services(runtime_t *rt)
{
    char err[600];
    rt->started = true;
    uv_timer_stop(&rt->startup);
    if (rt->redis) private_redis_supervise(rt->redis);
    if (rt->opts.ingress &&
        !(rt->ingress = ingress_start(rt->loop, rt->cfg, rt->queue, rt->seal, err, sizeof err))) {
        log_error("event=start_failed what=ingress error=\"%s\"", err);
        stop(rt, 1);
        return;
    }
    if (rt->opts.worker &&
        !(rt->worker = worker_start(rt->loop, rt->cfg, rt->queue, rt->seal, err, sizeof err))) {
        log_error("event=start_failed what=worker error=\"%s\"", err);
        stop(rt, 1);
    }
}

struct seal_check {
    runtime_t *rt;
    unsigned key;
};

static void on_seal_checked(int status, const char *err, const char *data, size_t len, void *arg)
{
    struct seal_check *c = arg;
    runtime_t *rt = c->rt;
    const char *id = seal_key_id(rt->seal, c->key);
    free(c);
    rt->checks_out--;
    if (rt->stopping) return;
    if (status < 0) { /* Redis went away: the startup timer asks again */
        log_warn("event=seal_check_failed key=%s error=\"%s\"", id, err);
    } else if (!seal_check_verify(rt->seal, data, len)) {
        log_error("event=start_failed what=seal key=%s error=\"this sealing key differs from "
                  "the key the cluster uses under the id '%s': bodies sealed by other nodes "
                  "would not open here\"",
                  id, id);
        stop(rt, 1);
        return;
    } else {
        rt->checks_passed++;
    }
    if (rt->checks_out == 0 && rt->checks_passed == seal_key_count(rt->seal)) {
        log_info("event=seal_keys_checked keys=%u sealing=%s", rt->checks_passed,
                 seal_current_id(rt->seal));
        start_services(rt);
    }
}

/* Before anything is accepted or sent, each sealing key is compared with
 * the check value the cluster stored for its id (the first node to use an
 * id stores it), so a node given the wrong key stops at start-up with a
 * clear error instead of sealing mail no other node can open. */
static void on_startup_timer(uv_timer_t *t)
{
    runtime_t *rt = t->data;
    if (rt->stopping || rt->checks_out || !queue_ready(rt->queue)) return;
    rt->checks_passed = 0;
    for (unsigned i = 0; i < seal_key_count(rt->seal); i++) {
        struct seal_check *c = calloc(1, sizeof *c);
        buf_t check;
        buf_init(&check);
        if (!c || seal_check_make(rt->seal, i, &check) < 0) {
            free(c);
            buf_free(&check);
            return;
        }
        *c = (struct seal_check){rt, i};
        rt->checks_out++;
        if (queue_seal_check(rt->queue, seal_key_id(rt->seal, i), check.data, check.len,
                             on_seal_checked, c) < 0) {
            rt->checks_out--;
            free(c);
        }
        buf_free(&check);
    }
}

/* Every connection is a descriptor, and shells commonly start daemons with a
 * soft limit of 1024: raise it to the hard limit, as any process may, so
 * [ingress] max_connections is not quietly capped, and say when even the
 * hard limit is too low for it. */
static void raise_open_files(const config_t *cfg, bool ingress)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t need = (rlim_t)cfg->ingress.max_connections + 64; /* Redis, logs, metrics, gpg */
    if (ingress && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        log_warn("event=open_files_low limit=%llu max_connections=%u "
                 "hint=\"raise the hard limit (ulimit -Hn, LimitNOFILE=) above %llu\"",
                 (unsigned long long)rl.rlim_cur, cfg->ingress.max_connections,
                 (unsigned long long)need);
}

int cmd_serve(const config_t *cfg, serve_options_t opts)
{
    runtime_t rt = {.loop = uv_default_loop(), .cfg = cfg, .opts = opts};
    char err[600];
    uv_signal_init(rt.loop, &rt.sigint);
    uv_signal_init(rt.loop, &rt.sigterm);
    uv_signal_init(rt.loop, &rt.sighup);
    uv_timer_init(rt.loop, &rt.deadline);
    uv_timer_init(rt.loop, &rt.finisher);
    uv_timer_init(rt.loop, &rt.startup);
    uv_timer_init(rt.loop, &rt.status.sampler);
    rt.status.sampler.data = &rt;
    rt.sigint.data = rt.sigterm.data = rt.sighup.data = rt.deadline.data = rt.finisher.data =
        rt.startup.data = &rt;
    uv_signal_start(&rt.sigint, on_signal, SIGINT);
    uv_signal_start(&rt.sigterm, on_signal, SIGTERM);
    uv_signal_start(&rt.sighup, on_sighup, SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    raise_open_files(cfg, opts.ingress);

    rt.seal = seal_keyring_load(cfg->seal.keys, cfg->seal.key_file, err, sizeof err);
    if (!rt.seal) {
        log_error("event=start_failed what=seal error=\"%s\"", err);
        return 1;
    }
    if (cfg->log.redact_addresses) { /* hashes no one can recompute without the cluster key */
        unsigned char key[32];
        seal_derive(rt.seal, "sealpost log redaction", key);
        log_set_redact(true, key, sizeof key);
        sodium_memzero(key, sizeof key);
    }
    if (opts.private_redis && !cfg->redis.url[0] &&
        !(rt.redis = private_redis_start(rt.loop, cfg, on_redis_failed, &rt))) {
        seal_keyring_free(rt.seal);
        return 1;
    }
    redis_endpoint_t redis;
    if (config_redis_endpoint(cfg, &redis, err, sizeof err) < 0) {
        log_error("event=start_failed what=redis error=\"%s\"", err);
        seal_keyring_free(rt.seal);
        return 1;
    }
    rt.queue = queue_open(rt.loop, &redis, cfg->redis.timeout_ms, cfg->redis.shards);
    config_redis_endpoint_clear(&redis);
    if (!rt.queue) {
        log_error("event=start_failed what=queue error=\"out of memory\"");
        return 1;
    }
    queue_set_min_replicas(rt.queue, cfg->queue.min_replicas, cfg->queue.replica_timeout_ms);
    log_info("event=starting version=%s redis=%s:%u tls=%s", SEALPOST_VERSION, redis.host,
             redis.port, redis.tls ? "yes" : "no");
    register_process_metrics();
    register_queue_metrics(&rt.figures);
    if (cfg->metrics.listen.host[0]) {
        rt.http = http_start(rt.loop, &cfg->metrics.listen, on_http, &rt, err, sizeof err);
        if (!rt.http) {
            log_error("event=start_failed what=metrics error=\"[metrics] listen: %s\"", err);
            stop(&rt, 1);
        } else {
            log_info("event=listening kind=metrics listen=%s:%u", cfg->metrics.listen.host,
                     cfg->metrics.listen.port);
            uv_timer_start(&rt.status.sampler, on_sampler, 1000, (uint64_t)STATUS_SAMPLE_S * 1000);
        }
    }
    if (!rt.stopping) uv_timer_start(&rt.startup, on_startup_timer, 0, STARTUP_POLL_MS);
    uv_run(rt.loop, UV_RUN_DEFAULT);
    uv_loop_close(rt.loop);
    seal_keyring_free(rt.seal);
    buf_free(&rt.status.page);
    log_info("event=stopped exit=%d", rt.exit_code);
    return rt.exit_code;
}
