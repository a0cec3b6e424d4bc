/* The private redis-server of `sealpost up`: a child process on the loop,
 * durable and on loopback only, stopped after the services that use it. */
#include "cmd/cmd.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

struct private_redis {
    uv_loop_t *loop;
    uv_process_t proc;
    bool running;   /* proc is a live child */
    bool proc_open; /* proc not closed yet */
    bool stopping;
    char server[256], port[8], dir[PATH_MAX], logfile[PATH_MAX + 16], pidfile[PATH_MAX + 16];
    void (*on_exit)(void *arg);
    void *on_exit_arg;
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

static void finish_stop(private_redis_t *r)
{
    void (*done)(void *) = r->on_stopped;
    void *arg = r->on_stopped_arg;
    free(r);
    if (done) done(arg);
}

static void on_proc_closed(uv_handle_t *h)
{
    private_redis_t *r = h->data;
    r->proc_open = false;
    if (r->stopping) finish_stop(r);
}

static void on_proc_exit(uv_process_t *p, int64_t status, int signum)
{
    private_redis_t *r = p->data;
    r->running = false;
    uv_close((uv_handle_t *)p, on_proc_closed);
    if (r->stopping) return;
    log_error("event=redis_exited status=%lld signal=%d", (long long)status, signum);
    if (r->on_exit) r->on_exit(r->on_exit_arg);
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
    r->proc.data = r;
    int rc = uv_spawn(r->loop, &r->proc, &opts);
    r->proc_open = true; /* a failed spawn leaves the handle to close too */
    if (rc < 0) {
        uv_close((uv_handle_t *)&r->proc, on_proc_closed);
        return rc;
    }
    r->running = true;
    return 0;
}

private_redis_t *private_redis_start(uv_loop_t *loop, const config_t *cfg, void (*on_exit)(void *),
                                     void *arg)
{
    private_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        log_error("event=start_failed what=redis-server error=\"out of memory\"");
        return NULL;
    }
    *r = (private_redis_t){.loop = loop, .on_exit = on_exit, .on_exit_arg = arg};
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

void private_redis_stop(private_redis_t *r, void (*done)(void *), void *arg)
{
    r->stopping = true;
    r->on_stopped = done;
    r->on_stopped_arg = arg;
    if (r->running)
        uv_process_kill(&r->proc, SIGTERM); /* on_proc_exit, then on_proc_closed */
    else if (!r->proc_open)
        finish_stop(r);
}

void private_redis_kill(const private_redis_t *r)
{
    if (r && r->running) kill(r->proc.pid, SIGTERM);
}
