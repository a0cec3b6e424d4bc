/* The subcommands and what they share. */
#ifndef SEALPOST_CMD_H
#define SEALPOST_CMD_H

#include "core/core.h"
#include "queue/queue.h"

#include <stdbool.h>

/* Parses the common options (-c/--config, -h/--help) and loads the
 * configuration; exits with a message naming the problem when it is bad. */
void cmd_load_config(int argc, char **argv, const char *usage, config_t *cfg);

/* What one process runs on its loop. */
typedef struct serve_options {
    bool ingress;
    bool worker;
    bool private_redis; /* start redis-server when no [redis] url is set */
} serve_options_t;

/* Runs until SIGINT or SIGTERM, then stops cleanly. Returns the exit code. */
int cmd_serve(const config_t *cfg, serve_options_t opts);

/* The administration commands' options: -c FILE, -h, and one flag of their
 * own (long name flag, e.g. "json"). Returns -1 to go on, else the exit code. */
int cmd_admin_options(int argc, char **argv, const char *usage, const char *flag, bool *flag_set,
                      const char **path);
/* Loads the configuration at path and connects to its Redis; NULL (with a
 * message printed and *exit_code set) when either fails. */
struct queue_admin *cmd_admin_open(const char *path, config_t *cfg, int *exit_code);

/* The cluster's sealing keys as the nodes load them: [seal] keys and
 * key_file, else the key `sealpost up` keeps in [up] data_dir when it is
 * there (never made here), its current key checked against the check value
 * the cluster stores for its id (stored now when there is none, as a node
 * does). NULL (with a message printed and *exit_code set) when there is
 * none that loads, or it is not the cluster's. */
struct seal_keyring *cmd_seal_keyring(config_t *cfg, struct queue_admin *admin, int *exit_code);

/* Prints a Unix time as 2026-12-03T09:30:00Z, 0 as "never". */
void cmd_print_time(long long t);

/* Prints s as a JSON string literal (octets of text that is not UTF-8 as
 * the code points of the same numbers). */
void cmd_json_string(const char *s);

/* ---- sealpost keys lookup, and the discovered keys in keys list (lookup.c) ---- */

/* Runs discovery for address now and files the key it finds (not for an
 * address with an operator's key, whose key it only prints). The exit code. */
int cmd_keys_lookup(struct queue_admin *a, const config_t *cfg, const struct seal_keyring *seal,
                    const char *address);
/* Lists the discovered keys after the directory's: one line each, or JSON
 * objects (each after a comma unless first). 0, or -1 with a message. */
int cmd_keys_list_discovered(struct queue_admin *a, bool json, bool first);

/* mkdir -p, with mode 0700 for what it creates. */
int cmd_mkdir_p(const char *path);

/* ---- the private redis-server of sealpost up (private_redis.c) ---- */

typedef struct private_redis private_redis_t;

/* Starts redis-server on 127.0.0.1:[up] redis_port with its data in [up]
 * data_dir (stopping one a crashed run left there first). Once supervised it
 * is restarted, with backoff, when it exits unasked; on_failed is called when
 * it exits before that, or keeps exiting. NULL, logged, when it cannot be
 * started at all. */
private_redis_t *private_redis_start(uv_loop_t *loop, const config_t *cfg,
                                     void (*on_failed)(void *), void *arg);
/* From now on (the node has started) an exit is followed by a restart. */
void private_redis_supervise(private_redis_t *r);
/* SIGTERM (a restart waiting for its backoff is called off), and done once
 * it has exited and r is freed. */
void private_redis_stop(private_redis_t *r, void (*done)(void *), void *arg);
/* SIGTERM now, for a process about to exit() without waiting (r may be NULL). */
void private_redis_kill(const private_redis_t *r);

/* ---- the status page (status.c) ---- */

#define STATUS_SAMPLES  60 /* queue depth samples kept */
#define STATUS_SAMPLE_S 10 /* seconds between them: ten minutes in all */

typedef struct status_sample {
    int64_t at_ms;
    long long jobs[4]; /* due, scheduled, leased, held */
    long long messages;
    double oldest_s;
} status_sample_t;

typedef struct status_history {
    status_sample_t samples[STATUS_SAMPLES];
    unsigned n, next;
} status_history_t;

/* The keys and certificates the page lists: those expiring within this
 * many days, at most so many of them. */
#define STATUS_EXPIRY_DAYS  30
#define STATUS_EXPIRING_MAX 20

void status_history_add(status_history_t *h, const queue_stats_t *st, int64_t now_ms);
/* The page; r NULL (with err) when the report could not be read. */
int status_render(buf_t *out, const char *host, const status_history_t *h, const queue_report_t *r,
                  const char *err, int64_t now_ms);

int cmd_up(int argc, char **argv);
int cmd_ingress(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_check_config(int argc, char **argv);
int cmd_users(int argc, char **argv);
int cmd_queue(int argc, char **argv);
int cmd_seal_key(int argc, char **argv);
int cmd_keys(int argc, char **argv);
int cmd_dkim(int argc, char **argv);
/* Points cfg at data_dir/seal.key, made on first start, when no sealing key
 * is configured (sealpost up). */
int cmd_ensure_seal_key(config_t *cfg);

#endif
