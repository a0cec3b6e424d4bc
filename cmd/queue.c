/* sealpost queue stats: the queue-wide figures, from any machine that can
 * reach Redis. More of the postqueue/postsuper family comes with the
 * operations issue. */
#include "cmd/cmd.h"
#include "queue/queue.h"

#include <stdio.h>
#include <string.h>

static const char usage[] = "usage: sealpost queue stats [--json] [-c FILE]\n";

static void print_stats(const queue_stats_t *st, bool json)
{
    double age = st->oldest_ms < 0 ? 0 : (double)(st->now_ms - st->oldest_ms) / 1000.0;
    if (json) {
        printf("{\"due\": %lld, \"scheduled\": %lld, \"leased\": %lld, \"held\": %lld, "
               "\"messages\": %lld, \"oldest_age_seconds\": %.3f}\n",
               st->due_now, st->scheduled, st->leased, st->held, st->messages, age);
        return;
    }
    printf("messages queued   %lld\n", st->messages);
    printf("jobs due now      %lld\n", st->due_now);
    printf("jobs scheduled    %lld\n", st->scheduled);
    printf("jobs leased       %lld\n", st->leased);
    printf("jobs held         %lld\n", st->held);
    printf("oldest message    %.0f s\n", age);
}

int cmd_queue(int argc, char **argv)
{
    const char *path = NULL;
    bool json = false;
    int done = cmd_admin_options(argc, argv, usage, "json", &json, &path);
    if (done >= 0) return done;
    if (optind + 1 != argc || strcmp(argv[optind], "stats")) {
        fputs(usage, stderr);
        return 2;
    }
    config_t cfg;
    char err[600];
    int rc = 0;
    queue_admin_t *a = cmd_admin_open(path, &cfg, &rc);
    if (!a) return rc;
    queue_stats_t st;
    rc = queue_admin_stats(a, cfg.redis.shards, &st, err, sizeof err);
    queue_admin_close(a);
    if (rc < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    print_stats(&st, json);
    return 0;
}
