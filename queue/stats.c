/* Queue-wide figures: the read-only "stats" function on every shard,
 * summed. Asynchronous for the processes' /metrics, blocking for the
 * command line. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct stats_call {
    queue_stats_t sum;
    unsigned pending;
    char err[160];
    queue_stats_cb cb;
    void *arg;
};

/* Adds one shard's reply {due now, later, leased, held, messages, oldest, now}. */
int stats_add_shard(queue_stats_t *sum, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 7) return -1;
    long long v[7];
    for (int i = 0; i < 7; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return -1;
        v[i] = r->element[i]->integer;
    }
    sum->due_now += v[0];
    sum->scheduled += v[1];
    sum->leased += v[2];
    sum->held += v[3];
    sum->messages += v[4];
    if (v[5] >= 0 && (sum->oldest_ms < 0 || v[5] < sum->oldest_ms)) sum->oldest_ms = v[5];
    if (v[6] > sum->now_ms) sum->now_ms = v[6];
    return 0;
}

static void shard_done(struct stats_call *sc)
{
    if (--sc->pending > 0) return;
    sc->cb(sc->err[0] ? -1 : 0, sc->err[0] ? sc->err : NULL, &sc->sum, sc->arg);
    free(sc);
}

static void on_shard_reply(struct call *call, redisReply *reply, const char *err)
{
    struct stats_call *sc = call->arg;
    if (!reply || stats_add_shard(&sc->sum, reply) < 0)
        snprintf(sc->err, sizeof sc->err, "%s", reply ? "unexpected stats reply" : err);
    shard_done(sc);
}

int queue_stats(queue_t *q, queue_stats_cb cb, void *arg)
{
    struct stats_call *sc = calloc(1, sizeof *sc);
    if (!sc) return -1;
    sc->sum.oldest_ms = -1;
    sc->cb = cb;
    sc->arg = arg;
    sc->pending = q->shards + 1; /* one held back until every call is sent */
    for (unsigned s = 0; s < q->shards; s++) {
        struct call *call = call_new(q, sc);
        if (!call) {
            snprintf(sc->err, sizeof sc->err, "out of memory");
            sc->pending--;
            continue;
        }
        call->done = on_shard_reply;
        if (fcall_keys(call, FN_STATS, &(key_ids_t){.shard = s}, 0, NULL, NULL) < 0) {
            snprintf(sc->err, sizeof sc->err, "redis not connected");
            sc->pending--;
        }
    }
    shard_done(sc);
    return 0;
}

int queue_admin_stats(queue_admin_t *a, unsigned shards, queue_stats_t *out, char *err,
                      size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->oldest_ms = -1;
    for (unsigned s = 0; s < shards; s++) {
        redisReply *r =
            queue_admin_call(a, FN_STATS, &(key_ids_t){.shard = s}, 0, NULL, NULL, err, errlen);
        if (!r) return -1;
        int rc = stats_add_shard(out, r);
        freeReplyObject(r);
        if (rc < 0) {
            snprintf(err, errlen, "unexpected stats reply (is the functions library loaded?)");
            return -1;
        }
    }
    return 0;
}
