/* The private redis-server of `sealpost up`: a child process on the loop,
 * durable and on loopback only, stopped after the services that use it, and
 * restarted as a supervisor would when it dies while they run.
 *
 * The restarts back off from RESTART_MIN_MS, doubling up to RESTART_MAX_MS,
 * and start again from the bottom once a server has stayed up for
 * RESTART_STABLE_MS. Like systemd's StartLimitBurst, a server that exits
 * again after RESTART_BURST restarts within RESTART_WINDOW_MS is left dead
 * and the node stops with an error: one that cannot stay up wants an
 * operator (its log says why), not a loop. The node's Redis connections
 * ride through a restart as they do for an external Redis: they reconnect
 * with backoff and check the functions library on every new connection. */
#include "cmd/cmd.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#define RESTART_MIN_MS    100
#define RESTART_MAX_MS    5000
#define RESTART_STABLE_MS 10000
#define RESTART_BURST     5
#define RESTART_WINDOW_MS 30000

struct private_redis {
    uv_loop_t *loop;
    uv_process_t proc;
    uv_timer_t restart; /* the backoff before the next start */
    bool running;       /* proc is a live child */
    bool proc_open;     /* proc not closed yet */
    bool supervising;   /* the node has started: an exit is restarted */
    bool stopping;
    uint64_t started_at;              /* uv_now of the last start */
    unsigned backoff_ms;              /* before the next restart */
    unsigned attempt;                 /* restarts since a server last stayed up RESTART_STABLE_MS */
    uint64_t restarts[RESTART_BURST]; /* uv_now of the latest restarts, a ring */
    unsigned n_restarts, next_restart;
    char server[256], port[8], dir[PATH_MAX], logfile[PATH_MAX + 16], pidfile[PATH_MAX + 16];
    void (*on_failed)(void *arg);
    void *on_failed_arg;
    void (*on_stopped)(void *arg);
    void *on_stopped_arg;
};

/* A redis-server left running by a run that crashed would hold the port and
 * make this one fail; its pid file says which process to stop first. */
static void stop_leftover_redis(const char *pidfile)
{
    FILE *fp = fopen(pidfile, "r");
    char text[32];
    if (!fp) return;
    long pid = fgets(text, sizeof text, fp) ? strtol(text, NULL, 10) : 0;
    fclose(fp);
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%ld/comm", pid);
    fp = pid > 1 ? fopen(path, "r") : NULL;
    if (fp) {
        if (!fgets(comm, sizeof comm, fp)) comm[0] = 0;
        fclose(fp);
    }
    if (strncmp(comm, "redis-server", 12) != 0) return; /* gone, or the pid was reused */
    log_warn("event=stopping_leftover_redis pid=%ld pidfile=%s", pid, pidfile);
    kill((pid_t)pid, SIGTERM);
    for (int i = 0; i < 100 && kill((pid_t)pid, 0) == 0; i++)
        usleep(50000);
}

static void on_timer_closed(uv_handle_t *h)
{
    private_redis_t *r = h->data;
    void (*done)(void *) = r->on_stopped;
    void *arg = r->on_stopped_arg;
    free(r);
    if (done) done(arg);
}

static void on_proc_closed(uv_handle_t *h)
{
    private_redis_t *r = h->data;
    r->proc_open = false;
    if (r->stopping) uv_close((uv_handle_t *)&r->restart, on_timer_closed);
}

static int spawn(private_redis_t *r);

/* True when RESTART_BURST restarts have been made within RESTART_WINDOW_MS. */
static bool restart_limit_reached(const private_redis_t *r, uint64_t now)
{
    return r->n_restarts == RESTART_BURST && now - r->restarts[r->next_restart] < RESTART_WINDOW_MS;
}

static void on_restart_timer(uv_timer_t *t);

/* After the server exited, or a restart could not start one: the next
 * restart after the backoff, or, when the server cannot be kept running, the
 * node told to stop. */
static void restart_later(private_redis_t *r)
{
    if (!r->supervising) {
        log_error("event=start_failed what=redis-server log=%s error=\"redis-server exited while "
                  "the node was starting\"",
                  r->logfile);
        r->on_failed(r->on_failed_arg);
    } else if (restart_limit_reached(r, uv_now(r->loop))) {
        log_error("event=redis_gave_up restarts=%u window_s=%u log=%s error=\"redis-server keeps "
                  "exiting: not restarting it again\"",
                  RESTART_BURST, RESTART_WINDOW_MS / 1000, r->logfile);
        r->on_failed(r->on_failed_arg);
    } else {
        log_warn("event=redis_restarting attempt=%u in_ms=%u", r->attempt + 1, r->backoff_ms);
        uv_timer_start(&r->restart, on_restart_timer, r->backoff_ms, 0);
    }
}

static void on_restart_timer(uv_timer_t *t)
{
    private_redis_t *r = t->data;
    if (r->proc_open) { /* the last one's handle is still closing: a turn of the loop */
        uv_timer_start(&r->restart, on_restart_timer, 1, 0);
        return;
    }
    unsigned after_ms = r->backoff_ms;
    r->backoff_ms = r->backoff_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : r->backoff_ms * 2;
    r->attempt++;
    r->restarts[r->next_restart] = uv_now(r->loop);
    r->next_restart = (r->next_restart + 1) % RESTART_BURST;
    if (r->n_restarts < RESTART_BURST) r->n_restarts++;
    int rc = spawn(r);
    if (rc < 0) {
        log_error("event=redis_restart_failed attempt=%u error=\"%s\"", r->attempt,
                  uv_strerror(rc));
        restart_later(r);
        return;
    }
    log_info("event=redis_restarted pid=%d attempt=%u after_ms=%u port=%s", r->proc.pid, r->attempt,
             after_ms, r->port);
}

static void on_proc_exit(uv_process_t *p, int64_t status, int signum)
{
    private_redis_t *r = p->data;
    uint64_t uptime = uv_now(r->loop) - r->started_at;
    r->running = false;
    uv_close((uv_handle_t *)p, on_proc_closed);
    if (r->stopping) return;
    log_error("event=redis_exited pid=%d status=%lld signal=%d uptime_ms=%llu log=%s", p->pid,
              (long long)status, signum, (unsigned long long)uptime, r->logfile);
    if (uptime >= RESTART_STABLE_MS) {
        r->backoff_ms = RESTART_MIN_MS;
        r->attempt = 0;
    }
    restart_later(r);
}

/* The private Redis: durable (AOF, fsync before every reply), never evicting
 * queue keys, on loopback only. */
static int spawn(private_redis_t *r)
{
    /* clang-format off */
    char *args[] = {r->server,
                    "--port", r->port,
                    "--bind", "127.0.0.1",
                    "--dir", r->dir,
                    "--appendonly", "yes",
                    "--appendfsync", "always",
                    "--save", "",
                    "--maxmemory-policy", "noeviction",
                    "--logfile", r->logfile,
                    "--pidfile", r->pidfile,
                    "--daemonize", "no",
                    NULL};
    /* clang-format on */
    uv_process_options_t opts = {0};
    opts.file = args[0];
    opts.args = args;
    opts.exit_cb = on_proc_exit;
    /* Its own process group: a Ctrl-C at the terminal reaches only us, and
     * the orderly stop stops it last, not all at once. */
    opts.flags = UV_PROCESS_DETACHED;
    r->proc.data = r;
    int rc = uv_spawn(r->loop, &r->proc, &opts);
    r->proc_open = true; /* a failed spawn leaves the handle to close too */
    if (rc < 0) {
        uv_close((uv_handle_t *)&r->proc, on_proc_closed);
        return rc;
    }
    r->running = true;
    r->started_at = uv_now(r->loop);
    return 0;
}

private_redis_t *private_redis_start(uv_loop_t *loop, const config_t *cfg,
                                     void (*on_failed)(void *), void *arg)
{
    private_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        log_error("event=start_failed what=redis-server error=\"out of memory\"");
        return NULL;
    }
    *r = (private_redis_t){
        .loop = loop, .backoff_ms = RESTART_MIN_MS, .on_failed = on_failed, .on_failed_arg = arg};
    /* Absolute: redis-server changes into --dir before it opens the log. */
    if (cmd_mkdir_p(cfg->up.data_dir) < 0 || !realpath(cfg->up.data_dir, r->dir)) {
        log_error("event=start_failed what=data_dir path=%s error=\"%s\"", cfg->up.data_dir,
                  strerror(errno));
        free(r);
        return NULL;
    }
    snprintf(r->server, sizeof r->server, "%s", cfg->up.redis_server);
    snprintf(r->port, sizeof r->port, "%u", cfg->up.redis_port);
    snprintf(r->logfile, sizeof r->logfile, "%s/redis.log", r->dir);
    snprintf(r->pidfile, sizeof r->pidfile, "%s/redis.pid", r->dir);
    stop_leftover_redis(r->pidfile);
    uv_timer_init(loop, &r->restart);
    r->restart.data = r;
    int rc = spawn(r);
    if (rc < 0) {
        log_error("event=start_failed what=redis-server error=\"%s\" hint=\"install redis-server "
                  "or set [redis] url\"",
                  uv_strerror(rc));
        r->stopping = true; /* freed when the handle is closed */
        return NULL;
    }
    log_info("event=redis_started pid=%d port=%s dir=%s", r->proc.pid, r->port, cfg->up.data_dir);
    return r;
}

void private_redis_supervise(private_redis_t *r)
{
    r->supervising = true;
}

/* A restart still waiting for its backoff is called off: the services that
 * would use the server have stopped. */
void private_redis_stop(private_redis_t *r, void (*done)(void *), void *arg)
{
    r->stopping = true;
    r->on_stopped = done;
    r->on_stopped_arg = arg;
    uv_timer_stop(&r->restart);
    if (r->running)
        uv_process_kill(&r->proc, SIGTERM); /* on_proc_exit, then on_proc_closed */
    else if (!r->proc_open)
        uv_close((uv_handle_t *)&r->restart, on_timer_closed);
}

void private_redis_kill(const private_redis_t *r)
{
    if (r && r->running) kill(r->proc.pid, SIGTERM);
}
