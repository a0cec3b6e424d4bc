/* The operator's side of the queue, for `sealpost queue`: listing jobs,
 * one message's envelope and jobs (never its body), its trace, and hold,
 * release, retry and delete through the job_op function. Blocking calls on
 * the administration connection, pipelined shard by shard. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long long queue_admin_now_ms(queue_admin_t *a)
{
    const char *argv[] = {"TIME"};
    char err[128];
    redisReply *r = queue_admin_command(a, err, sizeof err, 1, argv);
    long long ms = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        ms = reply_ll(r->element[0], 0) * 1000 + reply_ll(r->element[1], 0) / 1000;
    freeReplyObject(r);
    return ms;
}

/* Fills in one job from its hash and its message's hash. */
static void job_fill(queue_job_info_t *j, const redisReply *job, const redisReply *msg)
{
    snprintf(j->domain, sizeof j->domain, "%s", reply_str(reply_field(job, "domain")));
    j->attempts = (unsigned)reply_ll(reply_field(job, "attempts"), 0);
    snprintf(j->last_error, sizeof j->last_error, "%s", reply_str(reply_field(job, "last_error")));
    j->rcpts = reply_str(reply_field(job, "rcpts"));
    j->sender = msg && msg->type == REDIS_REPLY_ARRAY && msg->elements == 2 &&
                        msg->element[0]->type == REDIS_REPLY_STRING
                    ? msg->element[0]->str
                    : "";
    j->received_ms = msg && msg->type == REDIS_REPLY_ARRAY && msg->elements == 2
                         ? reply_ll(msg->element[1], 0)
                         : 0;
}

/* The sets a job is in, by state: due (or scheduled), leased, held. */
static const enum key_kind job_sets[] = {KEY_DUE, KEY_LEASE, KEY_HELD};

/* Names one job's hash and its message's envelope; a malformed id (none
 * are stored) names an envelope that is not there. */
static void job_keys(unsigned shard, const char *jid, queue_job_info_t *j, key_t_ job, key_t_ msg)
{
    job_id_t id;
    snprintf(j->jid, sizeof j->jid, "%s", jid);
    snprintf(j->mid, sizeof j->mid, "%s", job_id_parse(jid, &id) == 0 ? id.mid : "");
    j->shard = shard;
    key_ids_t ids = {.shard = shard, .mid = j->mid, .jid = j->jid};
    if (schema_key(job, KEY_JOB, &ids) < 0) job[0] = 0;
    if (msg && schema_key(msg, KEY_MESSAGE, &ids) < 0) msg[0] = 0;
}

/* The jobs of one shard with their states: reads due, lease and held,
 * then every job's hash and its message's envelope, in two round trips. */
static int shard_jobs(queue_admin_t *a, unsigned shard, long long now,
                      void (*cb)(const queue_job_info_t *job, void *arg), void *arg, char *err,
                      size_t errlen)
{
    key_t_ keys[3];
    const char *argv[3][5];
    int argc[3];
    const char **argvp[3];
    redisReply *sets_r[3];
    for (int i = 0; i < 3; i++) {
        schema_key(keys[i], job_sets[i], &(key_ids_t){.shard = shard});
        const char *cmd[] = {"ZRANGE", keys[i], "0", "-1", "WITHSCORES"};
        memcpy(argv[i], cmd, sizeof cmd);
        argc[i] = 5;
        argvp[i] = argv[i];
    }
    if (queue_admin_pipeline(a, 3, argc, argvp, sets_r, err, errlen) < 0) return -1;
    size_t n = 0;
    for (int i = 0; i < 3; i++)
        n += sets_r[i]->type == REDIS_REPLY_ARRAY ? sets_r[i]->elements / 2 : 0;
    int rc = 0;
    if (n) {
        queue_job_info_t *jobs = calloc(n, sizeof *jobs);
        key_t_ *jk = calloc(2 * n, sizeof *jk);
        const char *(*jargv)[4] = calloc(2 * n, sizeof *jargv);
        const char ***jargvp = calloc(2 * n, sizeof(const char **));
        int *jargc = calloc(2 * n, sizeof *jargc);
        redisReply **rs = calloc(2 * n, sizeof(redisReply *));
        rc = jobs && jk && jargv && jargvp && jargc && rs ? 0 : -1;
        size_t k = 0;
        for (int i = 0; i < 3 && rc == 0; i++)
            for (size_t e = 0; e + 1 < sets_r[i]->elements; e += 2, k++) {
                queue_job_info_t *j = &jobs[k];
                job_keys(shard, sets_r[i]->element[e]->str, j, jk[2 * k], jk[2 * k + 1]);
                j->when_ms = reply_ll(sets_r[i]->element[e + 1], 0);
                j->state = i == 1              ? QUEUE_STATE_LEASED
                           : i == 2            ? QUEUE_STATE_HELD
                           : j->when_ms <= now ? QUEUE_STATE_DUE
                                               : QUEUE_STATE_SCHEDULED;
                const char *h[] = {"HGETALL", jk[2 * k], NULL, NULL};
                const char *m[] = {"HMGET", jk[2 * k + 1], "sender", "received"};
                memcpy(jargv[2 * k], h, sizeof h);
                memcpy(jargv[2 * k + 1], m, sizeof m);
                jargc[2 * k] = 2, jargc[2 * k + 1] = 4;
                jargvp[2 * k] = jargv[2 * k], jargvp[2 * k + 1] = jargv[2 * k + 1];
            }
        if (rc == 0) rc = queue_admin_pipeline(a, (int)(2 * n), jargc, jargvp, rs, err, errlen);
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (!rs[2 * i] || rs[2 * i]->type != REDIS_REPLY_ARRAY || rs[2 * i]->elements == 0)
                continue; /* gone between the two round trips */
            job_fill(&jobs[i], rs[2 * i], rs[2 * i + 1]);
            cb(&jobs[i], arg);
        }
        for (size_t i = 0; rc == 0 && i < 2 * n; i++)
            freeReplyObject(rs[i]);
        free(jobs);
        free(jk);
        free(jargv);
        free(jargvp);
        free(jargc);
        free(rs);
        if (rc < 0 && !err[0]) snprintf(err, errlen, "out of memory");
    }
    for (int i = 0; i < 3; i++)
        freeReplyObject(sets_r[i]);
    return rc;
}

int queue_admin_jobs(queue_admin_t *a, unsigned shards,
                     void (*cb)(const queue_job_info_t *job, void *arg), void *arg, char *err,
                     size_t errlen)
{
    long long now = queue_admin_now_ms(a);
    err[0] = 0;
    for (unsigned s = 0; s < shards; s++)
        if (shard_jobs(a, s, now, cb, arg, err, errlen) < 0) return -1;
    return 0;
}

/* One job of a message, by id: its hash and which set holds it, in one
 * pipelined round trip. 1 when it exists, 0 when gone, -1 on error. */
static int job_by_id(queue_admin_t *a, unsigned shard, long long now, const char *jid,
                     queue_job_info_t *j, char *err, size_t errlen)
{
    key_t_ k[4];
    queue_job_info_t found_job = {0};
    job_keys(shard, jid, &found_job, k[0], NULL);
    for (int i = 0; i < 3; i++)
        schema_key(k[1 + i], job_sets[i], &(key_ids_t){.shard = shard});
    const char *h[] = {"HGETALL", k[0]};
    const char *z[3][3] = {{"ZSCORE", k[1], jid}, {"ZSCORE", k[2], jid}, {"ZSCORE", k[3], jid}};
    const char **argv[] = {h, z[0], z[1], z[2]};
    int argc[] = {2, 3, 3, 3};
    redisReply *r[4];
    if (queue_admin_pipeline(a, 4, argc, argv, r, err, errlen) < 0) return -1;
    int found = r[0]->type == REDIS_REPLY_ARRAY && r[0]->elements > 0;
    if (found) {
        *j = found_job;
        job_fill(j, r[0], NULL);
        j->rcpts = strdup(j->rcpts);
        j->sender = NULL;
        int set = r[2]->type != REDIS_REPLY_NIL ? 1 : r[3]->type != REDIS_REPLY_NIL ? 2 : 0;
        j->when_ms = reply_ll(r[1 + set], 0);
        j->state = set == 1            ? QUEUE_STATE_LEASED
                   : set == 2          ? QUEUE_STATE_HELD
                   : j->when_ms <= now ? QUEUE_STATE_DUE
                                       : QUEUE_STATE_SCHEDULED;
        if (!j->rcpts) found = -1;
    }
    for (int i = 0; i < 4; i++)
        freeReplyObject(r[i]);
    if (found < 0) snprintf(err, errlen, "out of memory");
    return found;
}

/* The envelope names its jobs ("jobs"): reading them by id costs one round
 * trip each, whatever else the shard holds. */
int queue_admin_message(queue_admin_t *a, unsigned shards, const char *mid,
                        queue_message_info_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    snprintf(out->mid, sizeof out->mid, "%.32s", mid);
    unsigned shard = queue_shard_for(out->mid, shards);
    key_t_ k;
    if (schema_key(k, KEY_MESSAGE, &(key_ids_t){.shard = shard, .mid = out->mid}) < 0) return 0;
    const char *argv[] = {"HGETALL", k};
    redisReply *r = queue_admin_command(a, err, errlen, 2, argv);
    if (!r) return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        freeReplyObject(r);
        return 0;
    }
    out->sender = strdup(reply_str(reply_field(r, "sender")));
    out->params = strdup(reply_str(reply_field(r, "params")));
    out->info = strdup(reply_str(reply_field(r, "info")));
    out->received_ms = reply_ll(reply_field(r, "received"), 0);
    out->bodies = (unsigned)reply_ll(reply_field(r, "bodies"), 0);
    char *jobs = strdup(reply_str(reply_field(r, "jobs")));
    freeReplyObject(r);
    unsigned n = 1;
    for (const char *p = jobs ? jobs : ""; *p; p++)
        n += *p == ' ';
    out->jobs = calloc(n, sizeof *out->jobs);
    int rc = out->sender && out->params && out->info && jobs && out->jobs ? 1 : -1;
    if (rc < 0) snprintf(err, errlen, "out of memory");
    long long now = queue_admin_now_ms(a);
    for (char *save = NULL, *jid = rc > 0 ? strtok_r(jobs, " ", &save) : NULL; jid && rc > 0;
         jid = strtok_r(NULL, " ", &save)) {
        int found = job_by_id(a, shard, now, jid, &out->jobs[out->n_jobs], err, errlen);
        if (found < 0) rc = -1;
        if (found > 0) out->n_jobs++;
    }
    for (unsigned i = 0; out->jobs && i < out->n_jobs; i++)
        out->jobs[i].received_ms = out->received_ms;
    free(jobs);
    if (rc < 0) queue_admin_message_free(out);
    return rc;
}

void queue_admin_message_free(queue_message_info_t *m)
{
    for (unsigned i = 0; m->jobs && i < m->n_jobs; i++)
        free((char *)m->jobs[i].rcpts);
    free(m->jobs);
    free(m->sender);
    free(m->params);
    free(m->info);
    memset(m, 0, sizeof *m);
}

int queue_admin_job_op(queue_admin_t *a, unsigned shards, const char *op, const char *jid,
                       char *result, size_t rlen, char *err, size_t errlen)
{
    job_id_t id;
    if (job_id_parse(jid, &id) < 0) { /* none is stored under such an id */
        snprintf(result, rlen, "no such job");
        return 0;
    }
    unsigned shard = queue_shard_for(id.mid, shards);
    char shard_text[16];
    snprintf(shard_text, sizeof shard_text, "%u", shard);
    const char *args[] = {op, jid, shard_text};
    key_ids_t ids = {.shard = shard, .mid = id.mid, .variant = id.variant, .jid = jid};
    redisReply *r = queue_admin_call(a, FN_JOB_OP, &ids, 3, args, NULL, err, errlen);
    if (!r) return -1;
    snprintf(result, rlen, "%s", r->type == REDIS_REPLY_STRING ? r->str : "?");
    freeReplyObject(r);
    return 0;
}

int queue_admin_trace(queue_admin_t *a, unsigned shards, const char *mid,
                      void (*cb)(const queue_trace_entry_t *e, void *arg), void *arg, char *err,
                      size_t errlen)
{
    key_t_ k;
    schema_key(k, KEY_LOG, &(key_ids_t){.shard = queue_shard_for(mid, shards)});
    const char *argv[] = {"XRANGE", k, "-", "+"};
    redisReply *r = queue_admin_command(a, err, errlen, 4, argv);
    if (!r) return -1;
    unsigned found = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *entry = r->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2) continue;
        const redisReply *f = entry->element[1];
        if (strncmp(reply_str(reply_field(f, "mid")), mid, 32)) continue;
        queue_trace_entry_t e = {.ms = strtoll(entry->element[0]->str, NULL, 10),
                                 .job = reply_str(reply_field(f, "job")),
                                 .rcpt = reply_str(reply_field(f, "rcpt")),
                                 .event = reply_str(reply_field(f, "event")),
                                 .detail = reply_str(reply_field(f, "detail"))};
        cb(&e, arg);
        found++;
    }
    freeReplyObject(r);
    return (int)found;
}
