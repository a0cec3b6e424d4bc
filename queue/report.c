/* The status page's report: destinations with their queued jobs and oldest
 * job (the read-only "top" function), the newest failures from the trace
 * logs ("recent"), and the recipients of the last ten minutes by kind of
 * copy ("copy_shares"), gathered from every shard and merged; and the key
 * directory's size with what in it expires soon ("key_summary", then
 * "key_addresses" for those listed), from its expiry indexes. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct report_call {
    queue_report_t report;
    unsigned dests_cap, failures_cap, max_failures, max_soon;
    long long horizon_s;
    unsigned pending;
    char err[160];
    queue_report_cb cb;
    void *arg;
};

static int add_destination(struct report_call *rc, const char *domain, long long jobs,
                           long long oldest)
{
    queue_report_t *r = &rc->report;
    unsigned i = 0;
    while (i < r->n_dests && strcmp(r->dests[i].domain, domain))
        i++;
    if (i == r->n_dests) {
        if (r->n_dests == rc->dests_cap) {
            unsigned cap = rc->dests_cap ? rc->dests_cap * 2 : 32;
            queue_destination_t *grown = realloc(r->dests, cap * sizeof *grown);
            if (!grown) return -1;
            r->dests = grown, rc->dests_cap = cap;
        }
        memset(&r->dests[i], 0, sizeof r->dests[i]);
        snprintf(r->dests[i].domain, sizeof r->dests[i].domain, "%s", domain);
        r->n_dests++;
    }
    queue_destination_t *d = &r->dests[i];
    d->jobs += jobs;
    if (oldest > 0 && (d->oldest_ms == 0 || oldest < d->oldest_ms)) d->oldest_ms = oldest;
    return 0;
}

static void on_top(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        snprintf(rc->err, sizeof rc->err, "%s", reply ? "unexpected top reply" : err);
    for (size_t i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i + 2 < reply->elements; i += 3)
        if (add_destination(rc, reply_str(reply->element[i]), reply_ll(reply->element[i + 1], 0),
                            reply_ll(reply->element[i + 2], 0)) < 0)
            snprintf(rc->err, sizeof rc->err, "out of memory");
}

static void on_recent(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    queue_report_t *r = &rc->report;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        snprintf(rc->err, sizeof rc->err, "%s", reply ? "unexpected recent reply" : err);
        return;
    }
    for (size_t i = 0; i + 4 < reply->elements; i += 5) {
        if (r->n_failures == rc->failures_cap) {
            unsigned cap = rc->failures_cap ? rc->failures_cap * 2 : 16;
            queue_failure_t *grown = realloc(r->failures, cap * sizeof *grown);
            if (!grown) return;
            r->failures = grown, rc->failures_cap = cap;
        }
        queue_failure_t *f = &r->failures[r->n_failures++];
        f->ms = strtoll(reply_str(reply->element[i]), NULL, 10); /* the stream id's time */
        snprintf(f->mid, sizeof f->mid, "%s", reply_str(reply->element[i + 1]));
        snprintf(f->rcpt, sizeof f->rcpt, "%s", reply_str(reply->element[i + 2]));
        snprintf(f->event, sizeof f->event, "%s", reply_str(reply->element[i + 3]));
        snprintf(f->detail, sizeof f->detail, "%s", reply_str(reply->element[i + 4]));
    }
}

static int by_jobs(const void *x, const void *y)
{
    const queue_destination_t *a = x, *b = y;
    if (a->jobs != b->jobs) return a->jobs < b->jobs ? 1 : -1;
    return strcmp(a->domain, b->domain);
}

static int newest_first(const void *x, const void *y)
{
    const queue_failure_t *a = x, *b = y;
    return (a->ms < b->ms) - (a->ms > b->ms);
}

static void report_done(struct report_call *rc)
{
    if (--rc->pending > 0) return;
    queue_key_summary_t *k = &rc->report.keys;
    queue_report_t *r = &rc->report;
    if (r->n_dests) qsort(r->dests, r->n_dests, sizeof *r->dests, by_jobs);
    if (r->n_failures) qsort(r->failures, r->n_failures, sizeof *r->failures, newest_first);
    if (r->n_failures > rc->max_failures) r->n_failures = rc->max_failures;
    rc->cb(rc->err[0] ? -1 : 0, rc->err[0] ? rc->err : NULL, r, rc->arg);
    free(r->dests);
    free(r->failures);
    free(k->soon);
    free(rc);
}

static void on_stats(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    if (!reply || stats_add_shard(&rc->report.stats, reply) < 0)
        snprintf(rc->err, sizeof rc->err, "%s", reply ? "unexpected stats reply" : err);
}

static void on_shares(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != QUEUE_COPY_KINDS) {
        snprintf(rc->err, sizeof rc->err, "%s", reply ? "unexpected copy_shares reply" : err);
        return;
    }
    for (unsigned k = 0; k < QUEUE_COPY_KINDS; k++)
        rc->report.copies[k] += reply_ll(reply->element[k], 0);
}

enum part { PART_TOP, PART_RECENT, PART_STATS, PART_SHARES, PARTS };

static void on_part(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    static void (*const handlers[PARTS])(struct call *, redisReply *,
                                         const char *) = {on_top, on_recent, on_stats, on_shares};
    handlers[call->shard](call, reply, err);
    report_done(rc);
}

static int ask_part(struct call *call, unsigned shard, enum part part, const char *count)
{
    static const enum queue_fn fns[PARTS] = {FN_TOP, FN_RECENT, FN_STATS, FN_COPY_SHARES};
    const char *args[] = {count};
    return fcall_keys(call, fns[part], &(key_ids_t){.shard = shard}, part == PART_RECENT ? 1 : 0,
                      args, NULL);
}

/* One shard's calls; call->shard tells the replies apart (a part). */
static void ask_shard(queue_t *q, struct report_call *rc, unsigned shard)
{
    char count[16];
    snprintf(count, sizeof count, "%u", rc->max_failures);
    for (unsigned part = 0; part < PARTS; part++) {
        struct call *call = call_new(q, rc);
        if (!call) {
            snprintf(rc->err, sizeof rc->err, "out of memory");
            continue;
        }
        call->done = on_part;
        call->shard = part;
        rc->pending++;
        if (ask_part(call, shard, (enum part)part, count) < 0) {
            snprintf(rc->err, sizeof rc->err, "redis not connected");
            rc->pending--;
        }
    }
}

/* ---- the key directory ---- */

static void on_addresses(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    queue_key_summary_t *k = &rc->report.keys;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != k->n_soon)
        snprintf(rc->err, sizeof rc->err, "%s", reply ? "unexpected key_addresses reply" : err);
    for (unsigned i = 0; reply && i < k->n_soon && i < reply->elements; i++)
        snprintf(k->soon[i].addresses, sizeof k->soon[i].addresses, "%s",
                 reply_str(reply->element[i]));
    report_done(rc);
}

/* The addresses of the keys listed, from the keys themselves. */
static void ask_addresses(queue_t *q, struct report_call *rc)
{
    queue_key_summary_t *k = &rc->report.keys;
    call_keys_t keys;
    call_keys_init(&keys, FN_KEY_ADDRESSES, &(key_ids_t){0});
    for (unsigned i = 0; i < k->n_soon; i++)
        call_keys_add(&keys, KEY_ADDRESSES_KEY, &(key_ids_t){.fpr = k->soon[i].id});
    struct call *call = call_new(q, rc);
    if (call) call->done = on_addresses;
    rc->pending++;
    if (fcall(call, &keys, 0, NULL, NULL) < 0) {
        snprintf(rc->err, sizeof rc->err, "redis not connected");
        rc->pending--;
    }
    call_keys_free(&keys);
}

/* {stored, OpenPGP, S/MIME, expired, expiring, then id, method, expires ...} */
static int take_summary(queue_key_summary_t *k, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 5 || (reply->elements - 5) % 3)
        return -1;
    k->stored = reply_ll(reply->element[0], 0);
    k->indexed[0] = reply_ll(reply->element[1], 0);
    k->indexed[1] = reply_ll(reply->element[2], 0);
    k->expired = reply_ll(reply->element[3], 0);
    k->expiring = reply_ll(reply->element[4], 0);
    unsigned n = (unsigned)(reply->elements - 5) / 3;
    if (n && !(k->soon = calloc(n, sizeof *k->soon))) return -1;
    for (unsigned i = 0; i < n; i++) {
        redisReply *const *e = reply->element + 5 + 3 * (size_t)i;
        queue_expiring_t *s = &k->soon[k->n_soon];
        if (!reply_copy(e[0], s->id, sizeof s->id)) continue;
        s->smime = !strcmp(reply_str(e[1]), "smime");
        s->expires = reply_ll(e[2], 0);
        k->n_soon++;
    }
    return 0;
}

static void on_summary(struct call *call, redisReply *reply, const char *err)
{
    struct report_call *rc = call->arg;
    queue_key_summary_t *k = &rc->report.keys;
    if (!reply || take_summary(k, reply) < 0) {
        snprintf(rc->err, sizeof rc->err, "%s", reply ? "unexpected key_summary reply" : err);
    } else {
        /* Keys stored before the index existed are missing from it: the
         * first report that sees so has them filed, once per process. */
        if (k->stored != k->indexed[0] + k->indexed[1]) queue_key_index(call->q);
        if (k->n_soon) ask_addresses(call->q, rc);
    }
    report_done(rc);
}

static void ask_summary(queue_t *q, struct report_call *rc)
{
    char horizon[24], max[16];
    snprintf(horizon, sizeof horizon, "%lld", rc->horizon_s);
    snprintf(max, sizeof max, "%u", rc->max_soon);
    const char *args[] = {horizon, max};
    struct call *call = call_new(q, rc);
    if (call) call->done = on_summary;
    rc->pending++;
    if (fcall_keys(call, FN_KEY_SUMMARY, &(key_ids_t){0}, 2, args, NULL) < 0) {
        snprintf(rc->err, sizeof rc->err, "redis not connected");
        rc->pending--;
    }
}

int queue_report(queue_t *q, unsigned max_failures, long long horizon_s, unsigned max_soon,
                 queue_report_cb cb, void *arg)
{
    struct report_call *rc = calloc(1, sizeof *rc);
    if (!rc) return -1;
    rc->cb = cb;
    rc->arg = arg;
    rc->max_failures = max_failures;
    rc->horizon_s = horizon_s;
    rc->max_soon = max_soon;
    rc->report.stats.oldest_ms = -1;
    rc->pending = 1; /* held back until every call is sent */
    for (unsigned s = 0; s < q->shards; s++)
        ask_shard(q, rc, s);
    ask_summary(q, rc);
    report_done(rc);
    return 0;
}
