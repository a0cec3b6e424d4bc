/* sealpost queue: the postqueue/postsuper of sealpost, from any machine that
 * can reach Redis. Listings never show a body: only envelopes, states and
 * what the servers replied. */
#include "cmd/cmd.h"
#include "proto/proto.h"
#include "queue/admin.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char usage[] =
    "usage: sealpost queue stats [--json]              queue-wide figures\n"
    "       sealpost queue list [--domain D] [--state S] [--json]\n"
    "                                                  jobs (S: due, scheduled, leased, held)\n"
    "       sealpost queue top [--json]                destinations by queued jobs, oldest age\n"
    "       sealpost queue show ID [--json]            a message's envelope and jobs\n"
    "       sealpost queue trace ID [--json]           what happened to it, recipient by "
    "recipient\n"
    "       sealpost queue hold|release|retry|delete ID...\n"
    "   (each with [-c FILE])\n"
    "\n"
    "ID is a message id (all its jobs) or a job id (<message id>.<n>.<n>). A job a\n"
    "worker is delivering right now is held or deleted when its attempt ends.\n";

static const char *const state_names[] = {"due", "scheduled", "leased", "held"};

struct options {
    const char *path, *domain, *state;
    bool json;
};

static int parse_options(int argc, char **argv, struct options *o)
{
    const struct option options[] = {
        {"config", required_argument, NULL, 'c'}, {"json", no_argument, NULL, 'j'},
        {"domain", required_argument, NULL, 'd'}, {"state", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            o->path = optarg;
            break;
        case 'j':
            o->json = true;
            break;
        case 'd':
            o->domain = optarg;
            break;
        case 's':
            o->state = optarg;
            break;
        default:
            fputs(usage, opt == 'h' ? stdout : stderr);
            return opt == 'h' ? 0 : 2;
        }
    }
    return -1;
}

/* The recipients of a job, addresses only, as a JSON array or "a, b". */
static void print_rcpts(const char *rcpts, bool json)
{
    if (json) putchar('[');
    for (const char *p = rcpts; *p;) {
        size_t len = strcspn(p, "\n"), addr = strcspn(p, "\t\n");
        char one[600];
        snprintf(one, sizeof one, "%.*s", (int)(addr < sizeof one ? addr : sizeof one - 1), p);
        if (p != rcpts) fputs(json ? "," : ", ", stdout);
        if (json)
            cmd_json_string(one);
        else
            fputs(one, stdout);
        p += len + (p[len] == '\n');
    }
    if (json) putchar(']');
}

static double age_s(long long now, long long then)
{
    return then > 0 && now > then ? (double)(now - then) / 1000.0 : 0;
}

struct listing {
    const struct options *o;
    long long now;
    unsigned n;
};

static void print_job_json(const queue_job_info_t *j, long long now)
{
    printf("{\"job\":\"%s\",\"message\":\"%s\",\"state\":\"%s\",\"domain\":", j->jid, j->mid,
           state_names[j->state]);
    cmd_json_string(j->domain);
    printf(",\"attempts\":%u,\"age_seconds\":%.0f,\"%s\":%.3f,\"sender\":", j->attempts,
           age_s(now, j->received_ms),
           j->state == QUEUE_STATE_LEASED ? "lease_ends_in_seconds"
           : j->state == QUEUE_STATE_HELD ? "held_for_seconds"
                                          : "due_in_seconds",
           j->state == QUEUE_STATE_HELD ? age_s(now, j->when_ms)
                                        : (double)(j->when_ms - now) / 1000.0);
    cmd_json_string(j->sender ? j->sender : "");
    printf(",\"recipients\":");
    print_rcpts(j->rcpts, true);
    printf(",\"last_error\":");
    cmd_json_string(j->last_error);
    putchar('}');
}

static void print_job_text(const queue_job_info_t *j, long long now)
{
    printf("%-44s %-9s %-24s %8u %7.0fs  <%s> -> ", j->jid, state_names[j->state], j->domain,
           j->attempts, age_s(now, j->received_ms), j->sender ? j->sender : "");
    print_rcpts(j->rcpts, false);
    putchar('\n');
    if (j->last_error[0]) printf("%44s (%s)\n", "", j->last_error);
}

static void list_one(const queue_job_info_t *j, void *arg)
{
    struct listing *l = arg;
    if (l->o->domain && strcasecmp(j->domain, l->o->domain)) return;
    if (l->o->state && strcmp(state_names[j->state], l->o->state)) return;
    if (l->o->json) {
        fputs(l->n ? ",\n " : "[", stdout);
        print_job_json(j, l->now);
    } else {
        if (!l->n)
            printf("%-44s %-9s %-24s %8s %8s  %s\n", "JOB", "STATE", "DOMAIN", "ATTEMPTS", "AGE",
                   "SENDER -> RECIPIENTS");
        print_job_text(j, l->now);
    }
    l->n++;
}

/* ---- top: destinations by queued jobs ---- */

struct destination {
    char domain[256];
    unsigned jobs, rcpts, states[4];
    long long oldest_ms;
};

struct top {
    struct destination *d;
    unsigned n, cap;
};

static void top_one(const queue_job_info_t *j, void *arg)
{
    struct top *t = arg;
    unsigned i = 0;
    while (i < t->n && strcmp(t->d[i].domain, j->domain))
        i++;
    if (i == t->n) {
        if (t->n == t->cap) {
            unsigned cap = t->cap ? t->cap * 2 : 64;
            struct destination *grown = realloc(t->d, cap * sizeof *grown);
            if (!grown) return;
            t->d = grown, t->cap = cap;
        }
        memset(&t->d[i], 0, sizeof t->d[i]);
        snprintf(t->d[i].domain, sizeof t->d[i].domain, "%s", j->domain);
        t->n++;
    }
    struct destination *d = &t->d[i];
    d->jobs++;
    d->states[j->state]++;
    for (const char *p = j->rcpts; *p; p++)
        d->rcpts += p == j->rcpts || p[-1] == '\n';
    if (j->received_ms && (!d->oldest_ms || j->received_ms < d->oldest_ms))
        d->oldest_ms = j->received_ms;
}

static int by_jobs(const void *x, const void *y)
{
    const struct destination *a = x, *b = y;
    if (a->jobs != b->jobs) return a->jobs < b->jobs ? 1 : -1;
    return strcmp(a->domain, b->domain);
}

static void print_top(struct top *t, long long now, bool json)
{
    if (t->n) qsort(t->d, t->n, sizeof *t->d, by_jobs);
    if (!json)
        printf("%-32s %6s %6s %6s %6s %6s %6s %9s\n", "DESTINATION", "JOBS", "RCPTS", "DUE",
               "SCHED", "LEASED", "HELD", "OLDEST");
    if (json) putchar('[');
    for (unsigned i = 0; i < t->n; i++) {
        const struct destination *d = &t->d[i];
        if (json) {
            printf("%s{\"domain\":", i ? ",\n " : "");
            cmd_json_string(d->domain);
            printf(",\"jobs\":%u,\"recipients\":%u,\"due\":%u,\"scheduled\":%u,\"leased\":%u,"
                   "\"held\":%u,\"oldest_age_seconds\":%.0f}",
                   d->jobs, d->rcpts, d->states[0], d->states[1], d->states[2], d->states[3],
                   age_s(now, d->oldest_ms));
        } else {
            printf("%-32s %6u %6u %6u %6u %6u %6u %8.0fs\n", d->domain, d->jobs, d->rcpts,
                   d->states[0], d->states[1], d->states[2], d->states[3],
                   age_s(now, d->oldest_ms));
        }
    }
    if (json) printf("]\n");
}

/* ---- show and trace ---- */

static int show(queue_admin_t *a, unsigned shards, const char *id, bool json)
{
    char err[600];
    queue_message_info_t m;
    int found = queue_admin_message(a, shards, id, &m, err, sizeof err);
    if (found <= 0) {
        fprintf(stderr, "sealpost: %s\n", found < 0 ? err : "no such message in the queue");
        return 1;
    }
    long long now = queue_admin_now_ms(a);
    if (json) {
        printf("{\"message\":\"%s\",\"sender\":", m.mid);
        cmd_json_string(m.sender);
        printf(",\"parameters\":");
        cmd_json_string(m.params);
        printf(",\"info\":");
        cmd_json_string(m.info);
        printf(",\"age_seconds\":%.0f,\"bodies\":%u,\"jobs\":[", age_s(now, m.received_ms),
               m.bodies);
        for (unsigned i = 0; i < m.n_jobs; i++) {
            if (i) putchar(',');
            print_job_json(&m.jobs[i], now);
        }
        printf("]}\n");
    } else {
        printf("message:    %s\nsender:     <%s>\nparameters: %s\nreceived:   %.0f s ago (%s)\n"
               "bodies:     %u (sealed; one per encryption group)\n",
               m.mid, m.sender, m.params, age_s(now, m.received_ms), m.info, m.bodies);
        for (unsigned i = 0; i < m.n_jobs; i++) {
            const queue_job_info_t *j = &m.jobs[i];
            printf("job %s: %s, %s, attempts %u\n  recipients: ", j->jid, state_names[j->state],
                   j->domain, j->attempts);
            print_rcpts(j->rcpts, false);
            printf("\n");
            if (j->last_error[0]) printf("  last error: %s\n", j->last_error);
        }
    }
    queue_admin_message_free(&m);
    return 0;
}

struct tracing {
    bool json;
    unsigned n;
};

static void trace_one(const queue_trace_entry_t *e, void *arg)
{
    struct tracing *t = arg;
    time_t secs = (time_t)(e->ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    if (t->json) {
        printf("%s{\"time\":\"%s.%03dZ\",\"job\":", t->n ? ",\n " : "[", when, (int)(e->ms % 1000));
        cmd_json_string(e->job);
        printf(",\"recipient\":");
        cmd_json_string(e->rcpt);
        printf(",\"event\":");
        cmd_json_string(e->event);
        printf(",\"detail\":");
        cmd_json_string(e->detail);
        putchar('}');
    } else {
        const char *job = strchr(e->job, '.'); /* the job within the message */
        printf("%s.%03dZ %-10s %-6s %s%s%s %s\n", when, (int)(e->ms % 1000), e->event,
               job ? job : "", e->rcpt[0] ? "<" : "", e->rcpt, e->rcpt[0] ? "> " : "", e->detail);
    }
    t->n++;
}

/* ---- hold, release, retry, delete ---- */

/* Every job of a message, or the one job named. */
static int act(queue_admin_t *a, unsigned shards, const char *op, const char *id)
{
    char err[600], result[64];
    if (strchr(id, '.')) {
        if (queue_admin_job_op(a, shards, op, id, result, sizeof result, err, sizeof err) < 0) {
            fprintf(stderr, "sealpost: %s: %s\n", id, err);
            return 1;
        }
        printf("%s: %s\n", id, result);
        return strcmp(result, "no such job") ? 0 : 1;
    }
    queue_message_info_t m;
    int found = queue_admin_message(a, shards, id, &m, err, sizeof err);
    if (found <= 0) {
        fprintf(stderr, "sealpost: %s: %s\n", id, found < 0 ? err : "no such message");
        return 1;
    }
    int rc = 0;
    for (unsigned i = 0; i < m.n_jobs && rc == 0; i++) {
        if (queue_admin_job_op(a, shards, op, m.jobs[i].jid, result, sizeof result, err,
                               sizeof err) < 0) {
            fprintf(stderr, "sealpost: %s: %s\n", m.jobs[i].jid, err);
            rc = 1;
        } else {
            printf("%s: %s\n", m.jobs[i].jid, result);
        }
    }
    queue_admin_message_free(&m);
    return rc;
}

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

static bool known(const char *what, const char *const list[], size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(what, list[i])) return true;
    return false;
}

static int run(queue_admin_t *a, const config_t *cfg, const struct options *o, const char *what,
               int nids, char **ids)
{
    char err[600];
    unsigned shards = cfg->redis.shards;
    if (!strcmp(what, "stats")) {
        queue_stats_t st;
        if (queue_admin_stats(a, shards, &st, err, sizeof err) < 0) goto failed;
        print_stats(&st, o->json);
        return 0;
    }
    if (!strcmp(what, "list") || !strcmp(what, "top")) {
        bool top = !strcmp(what, "top");
        struct listing l = {o, queue_admin_now_ms(a), 0};
        struct top t = {0};
        if (queue_admin_jobs(a, shards, top ? top_one : list_one, top ? (void *)&t : (void *)&l,
                             err, sizeof err) < 0) {
            free(t.d);
            if (!top && o->json && l.n) printf("]\n"); /* what was read, as valid JSON */
            goto failed;
        }
        if (top) print_top(&t, l.now, o->json);
        free(t.d);
        if (!top && o->json) printf(l.n ? "]\n" : "[]\n");
        if (!top && !o->json) printf("-- %u job%s\n", l.n, l.n == 1 ? "" : "s");
        return 0;
    }
    if (!strcmp(what, "show")) return show(a, shards, ids[0], o->json);
    if (!strcmp(what, "trace")) {
        struct tracing t = {o->json, 0};
        int n = queue_admin_trace(a, shards, ids[0], trace_one, &t, err, sizeof err);
        if (n < 0) goto failed;
        if (o->json) printf(n ? "]\n" : "[]\n");
        if (n == 0 && !o->json) fprintf(stderr, "sealpost: nothing traced for %s\n", ids[0]);
        return n ? 0 : 1;
    }
    int rc = 0;
    for (int i = 0; i < nids; i++)
        rc |= act(a, shards, what, ids[i]);
    return rc;
failed:
    fprintf(stderr, "sealpost: %s\n", err);
    return 1;
}

int cmd_queue(int argc, char **argv)
{
    struct options o = {0};
    int done = parse_options(argc, argv, &o);
    if (done >= 0) return done;
    const char *what = optind < argc ? argv[optind] : "";
    int nids = argc - optind - 1;
    static const char *const bare[] = {"stats", "list", "top"};
    static const char *const one[] = {"show", "trace"};
    static const char *const acts[] = {"hold", "release", "retry", "delete"};
    bool ok = (known(what, bare, 3) && nids == 0) || (known(what, one, 2) && nids == 1) ||
              (known(what, acts, 4) && nids >= 1);
    if (!ok || ((o.domain || o.state) && strcmp(what, "list")) ||
        (o.json && known(what, acts, 4)) || (o.state && !known(o.state, state_names, 4))) {
        fputs(usage, stderr);
        return 2;
    }
    for (int i = 0; i < nids; i++)
        if (strlen(argv[optind + 1 + i]) < 32) {
            fprintf(stderr, "sealpost: '%s' is not a message or job id\n", argv[optind + 1 + i]);
            return 2;
        }
    config_t cfg;
    int rc = 0;
    queue_admin_t *a = cmd_admin_open(o.path, &cfg, &rc);
    if (!a) return rc;
    rc = run(a, &cfg, &o, what, nids, argv + optind + 1);
    queue_admin_close(a);
    return rc;
}
