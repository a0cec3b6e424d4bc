/* One delivery attempt, in the order it lives: fetch the claimed job (again
 * after a Redis hiccup, while the lease holds), carry out an operator's hold
 * or delete, unseal the body, sign it (DKIM), find the next hops (a static
 * route, or MX), and run the transaction through the pool, moving on to the
 * next MX host when one fails before MAIL. Meanwhile the lease is renewed on a timer, and
 * once more right before the final dot (the gate). What came of it goes to
 * outcome.c; the attempt is freed once no reply is left to point at it.
 *
 * It sits between the worker's claim loop (worker.c), which it calls back
 * only through the attempt_env_t it was given, and the parts below it: the
 * pool, the resolver, the signer and the outcome. */
#include "delivery/attempt.h"

#include <sodium.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FETCH_RETRIES  5 /* 0.25 s, doubling: about 8 s in all, well inside a lease */
#define FETCH_RETRY_MS 250

struct attempt {
    attempt_env_t *env;
    unsigned shard;
    queue_claimed_t claimed;
    queue_job_t *job;
    uv_timer_t lease_timer;
    unsigned replies_pending; /* replies that still point at this attempt */
    bool finishing;
    bool lease_lost;       /* an extension said "stale": another worker owns the job */
    client_t *gate_client; /* waiting for the renewal before its final dot */
    dns_result_t *mx;      /* NULL for a static route */
    unsigned mx_index;     /* the hop being tried */
    bool releasing;        /* the worker is stopping: hand the job back at once */
    unsigned fetch_tries;
    pool_user_t conn; /* its way to the next hop: where, and the pool's hold */
    uint64_t started; /* uv_now when its transaction began (or began to wait) */
    struct attempt *prev, *next;
};

static void on_closed(uv_handle_t *h)
{
    attempt_t *a = h->data;
    attempt_env_t *env = a->env;
    if (a->prev)
        a->prev->next = a->next;
    else
        env->active = a->next;
    if (a->next) a->next->prev = a->prev;
    queue_job_free(a->job);
    free(a->mx);
    free(a);
    env->ended(env->arg);
}

/* Frees the attempt once no lease extension is in flight: its reply would
 * otherwise land on freed memory. */
static void finish(attempt_t *a)
{
    a->finishing = true;
    uv_timer_stop(&a->lease_timer);
    if (a->replies_pending == 0 && !uv_is_closing((uv_handle_t *)&a->lease_timer))
        uv_close((uv_handle_t *)&a->lease_timer, on_closed);
}

static void on_completed(int status, const char *err, void *arg)
{
    attempt_t *a = arg;
    if (status < 0)
        log_warn("event=complete_failed mid=%s job=%s error=\"%s\"", a->job->mid, a->job->jid, err);
    finish(a);
}

/* Records the attempt (r NULL: nothing is known of it), and tells the claim
 * loop when the recipients left pending are due again. */
static void record(attempt_t *a, const client_result_t *r)
{
    attempt_env_t *env = a->env;
    uint64_t retry_ms;
    uv_timer_stop(&a->lease_timer); /* no extension after the completion */
    int rc = outcome_record(&env->outcome, a->job, r, a->releasing, &retry_ms, on_completed, a);
    if (retry_ms != UINT64_MAX) env->due_again(a->shard, uv_now(env->loop) + retry_ms, env->arg);
    if (rc < 0) on_completed(-1, "redis not connected or out of memory", a);
}

/* An outcome decided here, not by a server: every recipient gets code and
 * text ("550 5.1.10 ..."), so it is deferred or bounced like a reply. */
static void record_local(attempt_t *a, int code, const char *text)
{
    unsigned n = a->job->n_rcpts;
    client_result_t r = {.codes = calloc(n, sizeof *r.codes),
                         .replies = calloc(n, sizeof *r.replies),
                         .n_codes = n,
                         .local = true};
    snprintf(r.detail, sizeof r.detail, "%s", text);
    for (unsigned i = 0; r.codes && r.replies && i < n; i++) {
        r.codes[i] = code;
        snprintf(r.replies[i], sizeof r.replies[i], "%s", text);
    }
    record(a, r.codes && r.replies ? &r : NULL);
    free(r.codes);
    free(r.replies);
}

/* A step before the transaction failed on this node (why): logged once as
 * event, and every recipient deferred with reply ("451 4.x.x what"). */
static void defer_local(attempt_t *a, const char *event, const char *reply, const char *why)
{
    log_error("event=%s mid=%s job=%s error=\"%s\"", event, a->job->mid, a->job->jid, why);
    char text[300];
    snprintf(text, sizeof text, "%s: %s", reply, why);
    record_local(a, 451, text);
}

/* Starts the transaction to a->conn.hop; the pool's start callback. */
static void start_client(void *arg)
{
    attempt_t *a = arg;
    a->started = uv_now(a->env->loop);
    if (pool_connect(a->env->pool, &a->conn, a->releasing) < 0)
        record_local(a, 451, "451 4.3.0 out of memory");
}

static void try_mx(attempt_t *a)
{
    a->conn.hop = a->mx->hops[a->mx_index];
    start_client(a);
}

/* Moves on to the next MX hop when this one failed before the transaction
 * began (RFC 5321 §5.1); otherwise records the attempt. */
static void on_delivered(const client_result_t *result, void *arg)
{
    attempt_t *a = arg;
    attempt_env_t *env = a->env;
    metric_observe(env->duration, (double)(uv_now(env->loop) - a->started) / 1000.0);
    if (result->kept) {
        /* result is the client's: record() reads it before the pool may hand
         * the client, and so the result, to the next job. */
        record(a, result->codes ? result : NULL);
        pool_keep(env->pool, &a->conn);
        return;
    }
    if (result->stale && !a->releasing && a->conn.slot) {
        log_info("event=reconnect mid=%s peer=%s detail=\"%s\"", a->job->mid, result->remote,
                 result->detail);
        pool_reconnect(&a->conn);
        return;
    }
    pool_release(&a->conn);
    if (result->before_mail && !a->releasing && a->mx && a->mx_index + 1 < a->mx->n_hops) {
        log_info("event=next_mx mid=%s failed=%s detail=\"%s\"", a->job->mid,
                 a->mx->hops[a->mx_index].name, result->detail);
        a->mx_index++;
        try_mx(a);
        return;
    }
    record(a, result->codes ? result : NULL);
}

static void on_resolved(const dns_result_t *result, void *arg)
{
    attempt_t *a = arg;
    log_debug("event=mx mid=%s domain=%s status=%d targets=%u detail=\"%s\"", a->job->mid,
              a->job->domain, (int)result->status, result->n_hops, result->detail);
    if (result->status != DNS_OK) {
        record_local(a, result->status == DNS_TEMPFAIL ? 451 : 550, result->detail);
        return;
    }
    a->mx = malloc(sizeof *a->mx);
    if (!a->mx) {
        record_local(a, 451, "451 4.3.0 out of memory");
        return;
    }
    *a->mx = *result;
    try_mx(a);
}

/* ---- the lease ---- */

static void on_extended(int status, const char *err, void *arg)
{
    attempt_t *a = arg;
    a->replies_pending--;
    if (status < 0) {
        log_warn("event=lease_extend_failed mid=%s job=%s error=\"%s\"", a->job->mid, a->job->jid,
                 err);
        if (err && !strcmp(err, "stale")) a->lease_lost = true;
    }
    if (a->finishing) finish(a);
}

static void on_gate_extended(int status, const char *err, void *arg)
{
    attempt_t *a = arg;
    a->replies_pending--;
    if (status < 0)
        log_warn("event=aborted_before_dot mid=%s job=%s error=\"%s\"", a->job->mid, a->job->jid,
                 err);
    client_finish_data(a->gate_client, status == 0);
}

/* Right before the final dot the lease is checked, and renewed if past its
 * half: a worker that lost its job (paused, partitioned) must not complete a
 * delivery that another worker is making too. A young lease is only read,
 * so the dot waits for no fsync of a renewal. */
static void on_gate(client_t *client, void *arg)
{
    attempt_t *a = arg;
    const config_t *cfg = a->env->outcome.cfg;
    a->gate_client = client;
    unsigned lease_ms = cfg->worker.lease_seconds * 1000;
    if (a->lease_lost || queue_extend(a->env->outcome.queue, a->job, lease_ms, lease_ms / 2,
                                      on_gate_extended, a) < 0) {
        log_warn("event=aborted_before_dot mid=%s job=%s error=\"lease lost or redis down\"",
                 a->job->mid, a->job->jid);
        client_finish_data(client, false);
        return;
    }
    a->replies_pending++;
}

static void on_lease_timer(uv_timer_t *t)
{
    attempt_t *a = t->data;
    const config_t *cfg = a->env->outcome.cfg;
    if (queue_extend(a->env->outcome.queue, a->job, cfg->worker.lease_seconds * 1000, 0,
                     on_extended, a) < 0)
        log_warn("event=lease_extend_failed mid=%s error=\"redis not connected\"", a->job->mid);
    else
        a->replies_pending++;
}

/* ---- before the transaction ---- */

static void on_forgotten(int status, const char *err, void *arg)
{
    attempt_t *a = arg;
    a->replies_pending--;
    if (status < 0) log_warn("event=forget_failed job=%s error=\"%s\"", a->claimed.jid, err);
    if (a->finishing) finish(a);
}

/* An operator held or deleted the job while it was leased (it was claimed
 * meanwhile): nothing is sent, and the completion carries out the wish. */
static void operator_flagged(attempt_t *a)
{
    queue_job_t *job = a->job;
    unsigned *all = calloc(job->n_rcpts, sizeof *all);
    for (unsigned i = 0; all && i < job->n_rcpts; i++)
        all[i] = i;
    bool hold = job->operator_flag == QUEUE_OP_HOLD;
    log_info("event=%s mid=%s job=%s reason=operator", hold ? "held" : "deleted", job->mid,
             job->jid);
    uv_timer_stop(&a->lease_timer);
    queue_outcome_t o = {all, all ? job->n_rcpts : 0, 0, hold ? "held by an operator" : "", NULL};
    if (!all || queue_complete(a->env->outcome.queue, job, &o, NULL, on_completed, a) < 0)
        on_completed(-1, "redis not connected or out of memory", a);
    free(all);
}

/* Replaces the sealed body of a fetched job with the plain one, just before
 * it is sent. On failure the body is emptied, so no sealed octets ever leave
 * in a bounce. */
static int unseal(const seal_keyring_t *seal, queue_job_t *job, char *err, size_t errlen)
{
    char context[48];
    snprintf(context, sizeof context, "%s:%u", job->mid, job->variant);
    buf_t plain;
    buf_init(&plain);
    int rc = seal_open(seal, context, job->body, job->body_len, &plain, err, errlen);
    sodium_memzero(job->body, job->body_len);
    free(job->body);
    job->body = rc == 0 ? plain.data : NULL;
    job->body_len = rc == 0 ? plain.len : 0;
    if (rc < 0) buf_free(&plain);
    return rc;
}

/* Where the job goes: a static route (or the relayhost) wins over MX. */
static void find_hops(attempt_t *a)
{
    attempt_env_t *env = a->env;
    const config_t *cfg = env->outcome.cfg;
    const net_hostport_t *route = config_route_for(cfg, a->job->domain);
    struct sockaddr_storage numeric;
    if (route && net_sockaddr_from(route, &numeric) == 0) {
        a->conn.hop = (hop_t){.addr = *route};
        start_client(a);
    } else if (route) { /* by name, as in a compose file: "sink:25" */
        dns_resolve_host(env->dns, route->host, route->port, on_resolved, a);
    } else {
        dns_resolve_mx(env->dns, a->job->domain, cfg->worker.smtp_port, on_resolved, a);
    }
}

/* Is addr with variant v and params one line of the authenticated env? */
static bool env_has(const char *env, const char *addr, unsigned v, const char *params)
{
    buf_t line;
    buf_init(&line);
    bool found = false;
    if (queue_env_append(&line, addr, v, params) == 0) {
        for (const char *p = env; *p && !found;) {
            const char *nl = strchr(p, '\n');
            size_t len = nl ? (size_t)(nl - p) + 1 : strlen(p);
            found = len == line.len && memcmp(p, line.data, len) == 0;
            p += len;
        }
    }
    buf_free(&line);
    return found;
}

/* The sealed length of variant v in lens ("n n ..."), or -1. */
static long long variant_len(const char *lens, unsigned v)
{
    const char *p = lens;
    for (unsigned i = 0; i < v && p; i++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    if (!p || *p < '0' || *p > '9') return -1;
    return strtoll(p, NULL, 10);
}

/* Checks a fetched job against its envelope's MAC before anything is
 * unsealed or sent: the MAC covers the message id (the job id's), sender,
 * MAIL parameters, the variants' sealed lengths and every recipient with
 * its variant and DSN parameters; each of the job's recipients must be
 * among them with the job's variant, in the job's domain, and the body the
 * length the writer sealed. *why says why not, for the log and the hold. */
enum envelope_verdict {
    ENVELOPE_OK,
    ENVELOPE_UNKNOWN_KEY, /* tagged under a sealing key this node lacks: defer */
    ENVELOPE_TAMPERED,    /* hold */
};

static enum envelope_verdict tampered(const char **why, const char *reason)
{
    *why = reason;
    return ENVELOPE_TAMPERED;
}

static enum envelope_verdict envelope_check(const attempt_env_t *env, const queue_job_t *job,
                                            const char **why)
{
    *why = NULL;
    if (!job->mac) /* fails closed unless an operator drains an old queue */
        return env->outcome.cfg->worker.accept_unauthenticated ? ENVELOPE_OK
                                                               : tampered(why, "no_mac");
    if (!job->env || !job->lens) return tampered(why, "incomplete");
    seal_envelope_t e = {job->mid, job->sender, job->mail_params, job->lens, job->env};
    int ok = seal_envelope_verify(env->outcome.seal, &e, job->mac);
    if (ok < 0) {
        *why = "unknown_key";
        return ENVELOPE_UNKNOWN_KEY;
    }
    if (ok == 0) return tampered(why, "bad_mac");
    if (variant_len(job->lens, job->variant) != (long long)job->body_len)
        return tampered(why, "body_length");
    for (unsigned i = 0; i < job->n_rcpts; i++) {
        const char *at = strrchr(job->rcpts[i], '@');
        if (!at || strcmp(at + 1, job->domain) != 0) return tampered(why, "rcpt_domain");
        if (!env_has(job->env, job->rcpts[i], job->variant, job->rcpt_params[i]))
            return tampered(why, "rcpt_not_in_envelope");
    }
    return ENVELOPE_OK;
}

static void on_held_tampered(int status, const char *err, void *arg)
{
    attempt_t *a = arg;
    if (status < 0)
        log_warn("event=job_tampered_hold_failed job=%s error=\"%s\"", a->job->jid, err);
    finish(a);
}

static void on_fetched(int status, const char *err, queue_job_t *job, void *arg);

static void fetch(attempt_t *a)
{
    if (queue_fetch(a->env->outcome.queue, a->shard, &a->claimed, on_fetched, a) < 0)
        on_fetched(-1, "redis not connected", NULL, a);
}

static void on_fetch_retry(uv_timer_t *t)
{
    fetch(t->data);
}

static void on_fetched(int status, const char *err, queue_job_t *job, void *arg)
{
    attempt_t *a = arg;
    attempt_env_t *env = a->env;
    if (!job && status < 0 && strcmp(err, "malformed job") != 0 && !env->stopping &&
        a->fetch_tries < FETCH_RETRIES) {
        /* A Redis hiccup: try again while the lease holds, rather than let it
         * expire, which counts towards putting the job on hold. */
        log_warn("event=fetch_failed job=%s error=\"%s\" retry=%u", a->claimed.jid, err,
                 a->fetch_tries + 1);
        uv_timer_start(&a->lease_timer, on_fetch_retry, (uint64_t)FETCH_RETRY_MS << a->fetch_tries,
                       0);
        a->fetch_tries++;
        return;
    }
    if (!job) {
        if (status < 0)
            log_warn("event=fetch_failed job=%s error=\"%s\"", a->claimed.jid, err);
        else if (queue_forget(env->outcome.queue, a->shard, &a->claimed, on_forgotten, a) == 0)
            a->replies_pending++; /* deleted meanwhile: drop the lease, not count it */
        finish(a);
        return;
    }
    a->job = job;
    a->conn.job = job;
    uint64_t renew = (uint64_t)env->outcome.cfg->worker.lease_seconds * 1000 / 3;
    uv_timer_start(&a->lease_timer, on_lease_timer, renew, renew);
    if (job->operator_flag != QUEUE_OP_NONE) {
        operator_flagged(a);
        return;
    }
    const char *bad;
    enum envelope_verdict verdict = envelope_check(env, job, &bad);
    if (verdict == ENVELOPE_OK && !job->mac) log_warn("event=job_unauthenticated jid=%s", job->jid);
    if (verdict == ENVELOPE_UNKNOWN_KEY) {
        /* As for a body sealed under a key this node lacks: another node, or
         * this one with its key file fixed, can check it and send it. */
        char why[128];
        snprintf(why, sizeof why,
                 "envelope tagged under key \"%.*s\", which this node does not have",
                 (int)strcspn(job->mac, ":"), job->mac);
        defer_local(a, "unseal_failed", "451 4.7.0 cannot verify the envelope", why);
        return;
    }
    if (verdict == ENVELOPE_TAMPERED) {
        log_warn("event=job_tampered jid=%s why=%s", job->jid, bad);
        metric_add(env->tampered, 1);
        if (queue_job_tampered(env->outcome.queue, job, bad, on_held_tampered, a) < 0) finish(a);
        return;
    }
    char why[200];
    if (unseal(env->outcome.seal, job, why, sizeof why) < 0) {
        /* A node without the key the body was sealed with: another node, or
         * this one with its key file fixed, can still send it. */
        defer_local(a, "unseal_failed", "451 4.7.0 cannot unseal the message", why);
        return;
    }
    if (signer_sign(env->signer, job, why, sizeof why) < 0) {
        /* Never sent unsigned for want of a signature that should be there:
         * the next attempt signs again. */
        defer_local(a, "dkim_sign_failed", "451 4.3.0 DKIM signing failed", why);
        return;
    }
    find_hops(a);
}

int attempt_start(attempt_env_t *env, unsigned shard, const queue_claimed_t *claimed)
{
    attempt_t *a = calloc(1, sizeof *a);
    if (!a) return -1;
    a->env = env;
    a->shard = shard;
    a->claimed = *claimed;
    a->conn = (pool_user_t){.gate = on_gate, .done = on_delivered, .start = start_client, .arg = a};
    uv_timer_init(env->loop, &a->lease_timer);
    a->lease_timer.data = a;
    a->next = env->active;
    if (a->next) a->next->prev = a;
    env->active = a;
    fetch(a);
    return 0;
}

void attempt_release_all(attempt_env_t *env)
{
    for (attempt_t *a = env->active; a; a = a->next) {
        a->releasing = true;
        if (a->conn.client)
            client_abort(a->conn.client);
        else if (pool_unwait(env->pool, &a->conn))
            start_client(a);
    }
}
