/* The outcome of one delivery attempt: each recipient's fate (classify), when
 * the pending ones are tried again (backoff), which of them the sender hears
 * about now (their NOTIFY), the notice that tells it (through bounce.c), and
 * the one queue_complete call that records all of it, notice included.
 *
 * It sits below the attempt (attempt.c) and knows nothing of leases,
 * connections or the claim loop: classify, backoff and the notice take what
 * they decide from and return what they decided, so they are tested as they
 * are (tests/unit/test_delivery.c). Only outcome_record logs, counts, seals
 * and talks to the queue. */
#include "delivery/outcome.h"

#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const outcome_names[OUTCOMES] = {"delivered", "deferred", "bounced", "expired"};

int outcome_init(outcome_t *o, unsigned n)
{
    *o = (outcome_t){
        .kinds = calloc(n, sizeof *o->kinds),
        .pending = calloc(n, sizeof *o->pending),
        .notified = calloc(n, sizeof *o->notified),
        .status = calloc(n, sizeof *o->status),
    };
    buf_init(&o->trace);
    return o->kinds && o->pending && o->notified && o->status ? 0 : -1;
}

void outcome_free(outcome_t *o)
{
    free(o->kinds);
    free(o->pending);
    free(o->notified);
    free(o->status);
    buf_free(&o->trace);
}

/* The delay before attempt n+1 (n attempts made so far): the backoff doubles
 * from min_backoff per attempt up to max_backoff, and the delay is drawn
 * uniformly from [min_backoff, that backoff] ("full jitter" above a floor),
 * so retries of many messages spread out but never come sooner than
 * min_backoff. */
uint64_t outcome_backoff_ms(const config_t *cfg, unsigned attempts)
{
    uint64_t lo = (uint64_t)cfg->worker.min_backoff * 1000;
    uint64_t hi = lo, cap = (uint64_t)cfg->worker.max_backoff * 1000;
    for (unsigned i = 0; i < attempts && hi < cap; i++)
        hi *= 2;
    if (hi > cap) hi = cap;
    uint64_t span = hi - lo;
    return lo +
           (span ? util_random_below((uint32_t)(span > UINT32_MAX ? UINT32_MAX : span) + 1) : 0);
}

/* The reply that decided recipient i: its own, else the transaction's. */
static const char *reply_of(const client_result_t *r, unsigned i)
{
    return r && r->replies[i][0] ? r->replies[i] : (r ? r->detail : "");
}

/* The notifications a recipient asked for (RFC 3461 §4.1): FAILURE (and
 * DELAY) when it did not say. */
static int notify_of(const queue_job_t *job, unsigned i)
{
    char value[40];
    if (!proto_param_find(job->rcpt_params[i], "NOTIFY", value, sizeof value))
        return PROTO_NOTIFY_FAILURE | PROTO_NOTIFY_DELAY;
    int bits = proto_dsn_notify(value, strlen(value));
    return bits < 0 ? PROTO_NOTIFY_FAILURE : bits;
}

/* Adds recipient i to the notice when its NOTIFY asks for this kind. */
static void report(outcome_t *o, const queue_job_t *job, unsigned i, const client_result_t *r,
                   const char *reply, enum bounce_action action)
{
    static const int wanted[] = {[BOUNCE_FAILED] = PROTO_NOTIFY_FAILURE,
                                 [BOUNCE_DELAYED] = PROTO_NOTIFY_DELAY,
                                 [BOUNCE_RELAYED] = PROTO_NOTIFY_SUCCESS};
    if (!(notify_of(job, i) & wanted[action])) return;
    bounce_rcpt_t *f = &o->notified[o->n_notified];
    int code = r ? r->codes[i] : 0;
    bool from_reply = code / 100 == 5 || action != BOUNCE_FAILED; /* else: expired */
    f->addr = job->rcpts[i];
    f->params = job->rcpt_params[i];
    f->action = action;
    f->remote = r && !r->local && code != 0 && (action != BOUNCE_FAILED || code / 100 == 5);
    f->diagnostic = reply;
    if (action == BOUNCE_DELAYED && code / 100 != 4)
        snprintf(o->status[o->n_notified], 16, "4.4.1"); /* not reached (RFC 3463) */
    else if (from_reply)
        bounce_status_of(reply, o->status[o->n_notified]);
    else
        snprintf(o->status[o->n_notified], 16, "4.4.7"); /* delivery time expired */
    f->status = o->status[o->n_notified++];
    o->delayed |= action == BOUNCE_DELAYED;
}

/* Whether pending recipients are due a delay notice now: warnings are on
 * (delay_warning_time, off by default as in Postfix), the message has
 * waited that long, and this job has not warned before. */
static bool warning_due(const config_t *cfg, const queue_job_t *job, long long age_ms)
{
    unsigned after = cfg->worker.delay_warning_time;
    return after && !job->warned && age_ms >= (long long)after * 1000;
}

/* One line of the queue's trace log. TAB and LF separate its fields: a
 * reply should not have them, but what a server says is not ours to trust. */
static void trace(outcome_t *o, const char *rcpt, enum outcome_kind kind, const char *detail)
{
    char clean[600];
    snprintf(clean, sizeof clean, "%s", detail);
    for (char *p = clean; *p; p++)
        if (*p == '\t' || *p == '\n' || *p == '\r') *p = ' ';
    buf_printf(&o->trace, "%s\t%s\t%s\n", rcpt, outcome_names[kind], clean);
}

void outcome_classify(const config_t *cfg, const queue_job_t *job, const client_result_t *r,
                      long long now_ms, bool releasing, outcome_t *o)
{
    long long age_ms = now_ms - job->received_ms;
    bool expired = age_ms > (long long)cfg->worker.max_queue_lifetime * 1000;
    bool warn = !releasing && warning_due(cfg, job, age_ms);
    for (unsigned i = 0; i < job->n_rcpts; i++) {
        int code = r ? r->codes[i] : 0;
        const char *reply = reply_of(r, i);
        if (code / 100 == 2) {
            o->kinds[i] = OUT_DELIVERED;
            /* A peer with DSN reports success itself (RFC 3461 §5.2.2). */
            if (!r->peer_dsn) report(o, job, i, r, reply, BOUNCE_RELAYED);
        } else if (code / 100 == 5 || expired) {
            o->kinds[i] = code / 100 == 5 ? OUT_BOUNCED : OUT_EXPIRED;
            report(o, job, i, r, reply, BOUNCE_FAILED);
        } else {
            o->kinds[i] = OUT_DEFERRED;
            o->pending[o->n_pending++] = i;
            if (warn) report(o, job, i, r, reply, BOUNCE_DELAYED);
        }
        trace(o, job->rcpts[i], o->kinds[i], reply);
    }
}

/* Logs and counts each recipient's outcome. */
static void count(const outcome_env_t *env, const queue_job_t *job, const client_result_t *r,
                  const outcome_t *o, long long now_ms)
{
    for (unsigned i = 0; i < job->n_rcpts; i++) {
        char safe[LOG_SAFE_MAX], text[LOG_SAFE_MAX];
        enum outcome_kind kind = o->kinds[i];
        metric_add(env->counts[kind], 1);
        log_info("event=%s mid=%s rcpt=<%s> attempt=%u detail=\"%s\"", outcome_names[kind],
                 job->mid, log_addr(job->rcpts[i], safe), job->attempts + 1,
                 log_text(reply_of(r, i), text));
        if (kind == OUT_DELIVERED)
            metric_observe(env->time_in_queue, (double)(now_ms - job->received_ms) / 1000.0);
    }
}

static bool notice_due(const queue_job_t *job, const outcome_t *o)
{
    return o->n_notified > 0 && job->sender[0]; /* never bounce a bounce */
}

int outcome_notice(const config_t *cfg, const queue_job_t *job, const client_result_t *r,
                   const outcome_t *o, const char *bounce_id, buf_t *out)
{
    if (!notice_due(job, o)) return 0;
    bounce_report_t report = {
        .reporting_mta = cfg->worker.helo_name,
        .remote_mta = r && !r->local ? r->remote : NULL,
        .bounce_id = bounce_id,
        .job = job,
        .rcpts = o->notified,
        .n_rcpts = o->n_notified,
        .retry_until_ms = job->received_ms + (long long)cfg->worker.max_queue_lifetime * 1000,
    };
    return bounce_build(&report, out) < 0 ? -1 : 1;
}

/* The notice's envelope MAC, as the ingress makes one for a message (see
 * envelope_check in attempt.c): from the null sender, no MAIL parameters,
 * one variant, one recipient (the original sender) without DSN parameters. */
static int notice_mac(const outcome_env_t *env, queue_bounce_t *b, buf_t *envl,
                      char mac[SEAL_MAC_LEN + 1])
{
    char lens[24];
    snprintf(lens, sizeof lens, "%zu", b->body_len);
    if (queue_env_append(envl, b->rcpt, 0, "") < 0 || buf_append(envl, "", 1) < 0) return -1;
    seal_envelope_t e = {b->id, "", "", lens, envl->data};
    seal_envelope_tag(env->seal, &e, mac);
    b->mac = mac;
    b->env = envl->data;
    return 0;
}

/* Builds and seals the notice into b (its body in body, its MAC's
 * recipients in envl, the MAC in mac); false when none is due, or it could
 * not be made. */
static bool make_notice(const outcome_env_t *env, const queue_job_t *job, const client_result_t *r,
                        const outcome_t *o, queue_bounce_t *b, buf_t *body, buf_t *envl,
                        char mac[SEAL_MAC_LEN + 1])
{
    if (!notice_due(job, o)) return false;
    queue_bounce_id(env->queue, job->shard, b->id);
    buf_t plain;
    buf_init(&plain);
    char context[48];
    snprintf(context, sizeof context, "%s:0", b->id);
    int rc = outcome_notice(env->cfg, job, r, o, b->id, &plain);
    rc = rc > 0 ? seal_body(env->seal, context, plain.data, plain.len, body) : -1;
    buf_free(&plain);
    if (rc < 0) return false;
    b->rcpt = job->sender;
    b->info = "bounce";
    b->body = body->data;
    b->body_len = body->len;
    b->delay_notice = o->delayed;
    if (notice_mac(env, b, envl, mac) < 0) return false;
    char safe[LOG_SAFE_MAX];
    metric_add(env->notices, 1);
    log_info("event=bounce mid=%s bounce=%s to=<%s> rcpts=%u", job->mid, b->id,
             log_addr(b->rcpt, safe), o->n_notified);
    return true;
}

/* 2xx recipients are done, 4xx and unreached ones are tried again after the
 * backoff, 5xx ones (and every pending one once the message is older than
 * max_queue_lifetime) are reported in a notice enqueued in the same call. */
int outcome_record(const outcome_env_t *env, const queue_job_t *job, const client_result_t *r,
                   bool releasing, uint64_t *retry_ms, queue_status_cb done, void *arg)
{
    outcome_t o;
    buf_t body, envl;
    buf_init(&body);
    buf_init(&envl);
    int rc = -1;
    *retry_ms = UINT64_MAX;
    if (outcome_init(&o, job->n_rcpts) == 0) {
        long long now_ms = util_now_ms();
        outcome_classify(env->cfg, job, r, now_ms, releasing, &o);
        count(env, job, r, &o, now_ms);
        queue_bounce_t bounce = {0};
        char mac[SEAL_MAC_LEN + 1];
        bool bouncing = make_notice(env, job, r, &o, &bounce, &body, &envl, mac);
        /* A job handed back by a stopping worker is due again at once. */
        uint64_t delay = releasing ? 0 : outcome_backoff_ms(env->cfg, job->attempts);
        if (o.n_pending) *retry_ms = delay;
        queue_outcome_t result = {o.pending, o.n_pending, (unsigned)delay, r ? r->detail : "",
                                  o.trace.data};
        rc = queue_complete(env->queue, job, &result, bouncing ? &bounce : NULL, done, arg);
    }
    outcome_free(&o);
    buf_free(&body);
    buf_free(&envl);
    return rc;
}
