/* The queue's C API: builds the keys and arguments of each Redis function call
 * and turns replies back into C. The logic itself lives in functions/sealpost.lua. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAKE_CHANNEL "sealpost:wake"

/* Ready means: every shard's master, and those of users and keys. */
static void need_keys(queue_t *q)
{
    key_t_ k;
    for (unsigned s = 0; s < q->shards; s++)
        if (schema_key(k, KEY_DUE, &(key_ids_t){.shard = s}) == 0) router_need_key(q->router, k);
    if (schema_key(k, KEY_USERS, &(key_ids_t){0}) == 0) router_need_key(q->router, k);
    if (schema_key(k, KEY_VERSION, &(key_ids_t){0}) == 0) router_need_key(q->router, k);
}

const char *const withdraw_outcome_names[WITHDRAW_OUTCOMES] = {"withdrawn", "claimed", "gone",
                                                               "abandoned"};

/* withdraw.c counts them; made here, so every series is there from the start. */
static void register_withdrawals(queue_t *q)
{
    metric_counters(q->withdrawals.outcomes, "sealpost_queue_withdrawals_total",
                    "Messages whose enqueue was not acknowledged, taken back: withdrawn, claimed "
                    "(too late: a worker had it, it is delivered), gone (not stored: kept out, or "
                    "delivered in full already), abandoned (no verdict: it may be delivered).",
                    "outcome", withdraw_outcome_names, WITHDRAW_OUTCOMES);
}

queue_t *queue_open(uv_loop_t *loop, const redis_endpoint_t *redis, unsigned timeout_ms,
                    unsigned shards)
{
    queue_t *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->loop = loop;
    q->redis = *redis;
    q->timeout_ms = timeout_ms;
    q->shards = shards;
    static const double seconds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,   0.1,   0.25,   0.5,   1,    2.5};
    q->metrics.latency =
        metric_histogram("sealpost_redis_request_duration_seconds",
                         "Round trip of the queue's Redis Functions calls, answered or not.", "",
                         seconds, sizeof seconds / sizeof seconds[0]);
    static const char *const kinds[QUEUE_ERRS] = {"unavailable", "no_reply", "error_reply",
                                                  "replicas"};
    metric_counters(q->metrics.errors, "sealpost_redis_errors_total",
                    "Redis calls that failed: not connected (unavailable), no reply in time or "
                    "connection lost (no_reply), an error reply, or an enqueue fewer replicas "
                    "than [queue] min_replicas acknowledged (replicas).",
                    "kind", kinds, QUEUE_ERRS);
    if (library_prepare(&q->library) < 0) {
        free(q);
        return NULL;
    }
    q->lib = (router_library_t){q->library.code.data, q->library.code.len, LIBRARY_DIGEST_FUNCTION,
                                q->library.digest};
    q->router = router_new(loop, redis, timeout_ms, &q->lib);
    if (!q->router) {
        library_free(&q->library);
        free(q);
        return NULL;
    }
    need_keys(q);
    register_withdrawals(q);
    return q;
}

void queue_close(queue_t *q)
{
    if (!q) return;
    q->withdrawals.closing = true; /* those in flight are abandoned as router_free answers them */
    router_free(q->router);
    if (q->withdrawals.abandon_all) q->withdrawals.abandon_all(q);
    rconn_free(q->watch_conn);
    library_free(&q->library);
    config_redis_endpoint_clear(&q->redis);
    free(q);
}

bool queue_ready(const queue_t *q)
{
    return router_ready(q->router);
}

/* Reachable, but with too few replicas a node is not ready either: each
 * enqueue would get 451. queue_ready stays true (the worker delivers,
 * bounces aside, without replicas), so only /readyz asks this. */
const char *queue_not_ready_reason(const queue_t *q)
{
    if (router_ready(q->router)) return router_replicas_short(q->router);
    const char *why = router_failure(q->router);
    if (!why && q->watch_conn && *rconn_failure(q->watch_conn)) why = rconn_failure(q->watch_conn);
    return why;
}

unsigned queue_shards(const queue_t *q)
{
    return q->shards;
}

static uint32_t hex_value(char c)
{
    if (c >= 'a' && c <= 'f') return (uint32_t)(c - 'a' + 10);
    if (c >= '0' && c <= '9') return (uint32_t)(c - '0');
    return 0;
}

unsigned queue_shard_for(const char *mid, unsigned shards)
{
    /* Message ids are random, so their first 32 bits spread messages evenly. */
    uint32_t h = 0;
    for (int i = 0; i < 8 && mid[i]; i++)
        h = h * 16 + hex_value(mid[i]);
    return h % shards;
}

unsigned queue_shard_of(const queue_t *q, const char *mid)
{
    return queue_shard_for(mid, q->shards);
}

/* ---- calls ---- */

static void on_call_reply(redisReply *reply, const char *err, void *arg)
{
    struct call *call = arg;
    queue_t *q = call->q;
    metric_observe(q->metrics.latency, (double)(uv_hrtime() - call->started) / 1e9);
    if (!reply) metric_add(q->metrics.errors[QUEUE_ERR_NO_REPLY], 1);
    call->answered = reply != NULL;
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        metric_add(q->metrics.errors[QUEUE_ERR_REPLY], 1);
        err = reply->str;
        reply = NULL;
    }
    call->done(call, reply, err);
    free(call);
}

int fcall(struct call *call, const call_keys_t *keys, int nargs, const char **args,
          const size_t *arg_lens)
{
    fcall_argv_t v;
    int rc = -1;
    if (call && fcall_argv_build(&v, keys, nargs, args, arg_lens) == 0) {
        call->started = uv_hrtime();
        rc = router_command(call->q->router, on_call_reply, call, &call->origin, v.argc, v.argv,
                            v.lens);
        if (rc < 0) metric_add(call->q->metrics.errors[QUEUE_ERR_UNAVAILABLE], 1);
        fcall_argv_free(&v);
    }
    if (rc < 0) free(call);
    return rc;
}

int fcall_keys(struct call *call, enum queue_fn fn, const key_ids_t *ids, int nargs,
               const char **args, const size_t *arg_lens)
{
    call_keys_t keys;
    call_keys_init(&keys, fn, ids);
    int rc = fcall(call, &keys, nargs, args, arg_lens);
    call_keys_free(&keys);
    return rc;
}

struct call *call_new(queue_t *q, void *arg)
{
    struct call *call = calloc(1, sizeof *call);
    if (call) {
        call->q = q;
        call->arg = arg;
    }
    return call;
}

static bool status_ok(const redisReply *reply)
{
    return reply && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS) &&
           strcmp(reply->str, "stale") != 0;
}

/* For replies that are a status word: "ok", "duplicate", "done",
 * "deferred", or "stale" (an error). */
static void on_status_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply) {
        call->cb.status(-1, err, call->arg);
    } else if (status_ok(reply)) {
        call->cb.status(0, NULL, call->arg);
    } else {
        call->cb.status(-1, reply->type == REDIS_REPLY_STRING ? reply->str : "unexpected reply",
                        call->arg);
    }
}

struct call *call_status(queue_t *q, queue_status_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (call) {
        call->done = on_status_reply;
        call->cb.status = cb;
    }
    return call;
}

/* ---- enqueue ---- */

void queue_set_min_replicas(queue_t *q, unsigned replicas, unsigned timeout_ms)
{
    q->min_replicas = replicas;
    q->replica_timeout_ms = timeout_ms;
    router_check_replicas(q->router, replicas);
}

struct replica_wait {
    queue_t *q;
    queue_status_cb cb;
    void *arg;
};

/* Too few replicas: the master has the message, unacknowledged. */
static void on_replicas(int status, const char *err, void *arg)
{
    struct replica_wait *w = arg;
    if (status < 0) metric_add(w->q->metrics.errors[QUEUE_ERR_REPLICAS], 1);
    w->cb(status < 0 ? QUEUE_UNANSWERED : 0, err, w->arg);
    free(w);
}

/* With min_replicas, a message counts as stored once that many replicas
 * have it too: a master that died right after answering would otherwise
 * take an acknowledged message with it. A duplicate is waited for as well,
 * since the first copy's replication is not known to have finished. A call
 * that went out and got no reply may have been carried out all the same. */
static void on_enqueue_reply(struct call *call, redisReply *reply, const char *err)
{
    queue_t *q = call->q;
    if (!reply) { /* an error reply is a refusal: the function writes nothing before its checks */
        call->cb.status(call->answered ? -1 : QUEUE_UNANSWERED, err, call->arg);
        return;
    }
    if (reply->type == REDIS_REPLY_STRING && !strcmp(reply->str, "withdrawn")) {
        call->cb.status(-1, "withdrawn before it was stored", call->arg);
        return;
    }
    if (!q->min_replicas || !status_ok(reply)) {
        on_status_reply(call, reply, err);
        return;
    }
    struct replica_wait *w = malloc(sizeof *w);
    if (w) {
        *w = (struct replica_wait){q, call->cb.status, call->arg};
        if (router_wait(q->router, &call->origin, q->min_replicas, q->replica_timeout_ms,
                        on_replicas, w) == 0)
            return;
        free(w);
    }
    metric_add(q->metrics.errors[QUEUE_ERR_REPLICAS], 1);
    call->cb.status(QUEUE_UNANSWERED, "connection to Redis lost before WAIT", call->arg);
}

/* A job's recipients are stored as lines "address" or "address<TAB>DSN
 * parameters": neither an address nor a parameter can hold a TAB or LF
 * (RFC 5321 §4.1.2, RFC 3461 §4). */
int queue_env_append(buf_t *out, const char *addr, unsigned variant, const char *params)
{
    char v[16];
    int n = snprintf(v, sizeof v, "\t%u\t", variant);
    if (buf_append(out, addr, strlen(addr)) < 0 || buf_append(out, v, (size_t)n) < 0 ||
        (params && buf_append(out, params, strlen(params)) < 0) || buf_append(out, "\n", 1) < 0)
        return -1;
    return 0;
}

static int rcpt_entry_append(buf_t *list, const char *addr, const char *params)
{
    if (list->len && buf_append(list, "\n", 1) < 0) return -1;
    if (buf_append(list, addr, strlen(addr)) < 0) return -1;
    if (params && params[0] &&
        (buf_append(list, "\t", 1) < 0 || buf_append(list, params, strlen(params)) < 0))
        return -1;
    return 0;
}

int job_groups(const queue_message_t *m, struct job_group *groups)
{
    unsigned n = 0;
    for (unsigned i = 0; i < m->n_rcpts; i++) {
        const char *at = strrchr(m->rcpts[i], '@');
        const char *domain = at ? at + 1 : "";
        unsigned v = m->rcpt_body ? m->rcpt_body[i] : 0;
        if (v >= m->n_bodies) return -1;
        unsigned g = 0;
        while (g < n && (groups[g].variant != v || strcmp(groups[g].domain, domain)))
            g++;
        if (g == n) {
            groups[n].domain = domain;
            groups[n].variant = v;
            buf_init(&groups[n++].rcpts);
        }
        const char *params = m->rcpt_params ? m->rcpt_params[i] : "";
        if (rcpt_entry_append(&groups[g].rcpts, m->rcpts[i], params) < 0) return -1;
    }
    return (int)n;
}

void job_groups_free(struct job_group *groups, unsigned n_rcpts)
{
    for (unsigned g = 0; g < n_rcpts && groups[g].domain; g++)
        buf_free(&groups[g].rcpts);
    free(groups);
}

/* The keys and args of enqueue (see sealpost.lua), in storage the caller
 * frees with enqueue_argv_free. */
struct enqueue_argv {
    call_keys_t keys;
    char (*jids)[JOB_ID_MAX];
    char (*variants)[12];
    const char **args;
    size_t *lens;
    size_t nargs;
    char shard[16], nbodies[16], njobs[16], deadline[24];
    char copies[QUEUE_COPY_KINDS][16];
};

static void enqueue_argv_free(struct enqueue_argv *v)
{
    call_keys_free(&v->keys);
    free(v->jids);
    free(v->variants);
    free(v->args);
    free(v->lens);
}

static int enqueue_argv_build(struct enqueue_argv *v, unsigned shard, const queue_message_t *m,
                              const struct job_group *groups, unsigned n, int64_t deadline_ms)
{
    unsigned nb = m->n_bodies;
    key_ids_t ids = {.shard = shard, .mid = m->id};
    call_keys_init(&v->keys, FN_ENQUEUE, &ids);
    v->nargs = 7 + (size_t)nb + 4 * (size_t)n + 3 + QUEUE_COPY_KINDS;
    v->jids = calloc(n, sizeof *v->jids);
    v->variants = calloc(n, sizeof *v->variants);
    v->args = calloc(v->nargs, sizeof *v->args);
    v->lens = calloc(v->nargs, sizeof *v->lens);
    if (!v->jids || !v->variants || !v->args || !v->lens) return -1;
    snprintf(v->shard, sizeof v->shard, "%u", shard);
    snprintf(v->nbodies, sizeof v->nbodies, "%u", nb);
    snprintf(v->njobs, sizeof v->njobs, "%u", n);
    const char *head[] = {m->id,
                          v->shard,
                          m->sender,
                          m->mail_params ? m->mail_params : "",
                          m->info ? m->info : "",
                          v->nbodies,
                          v->njobs};
    for (int i = 0; i < 7; i++)
        v->args[i] = head[i], v->lens[i] = strlen(head[i]);
    for (unsigned b = 0; b < nb; b++) {
        ids.variant = b;
        call_keys_add(&v->keys, ENQUEUE_BODY, &ids);
        v->args[7 + b] = m->bodies[b].data, v->lens[7 + b] = m->bodies[b].len;
    }
    for (unsigned g = 0; g < n; g++) {
        if (job_id_format(v->jids[g], m->id, groups[g].variant, g) < 0) return -1;
        ids.jid = v->jids[g];
        call_keys_add(&v->keys, ENQUEUE_JOB, &ids);
        snprintf(v->variants[g], sizeof v->variants[g], "%u", groups[g].variant);
        size_t a = 7 + nb + 4 * (size_t)g;
        const char *job[] = {v->jids[g], groups[g].domain, groups[g].rcpts.data, v->variants[g]};
        for (int i = 0; i < 4; i++)
            v->args[a + i] = job[i], v->lens[a + i] = strlen(job[i]);
    }
    size_t tail = v->nargs - 1 - QUEUE_COPY_KINDS;
    const char *mac = m->mac ? m->mac : "", *env = m->mac && m->env ? m->env : "";
    v->args[tail - 2] = mac, v->lens[tail - 2] = strlen(mac);
    v->args[tail - 1] = env, v->lens[tail - 1] = strlen(env);
    snprintf(v->deadline, sizeof v->deadline, "%lld", (long long)deadline_ms);
    v->args[tail] = v->deadline, v->lens[tail] = strlen(v->deadline);
    for (unsigned k = 0; k < QUEUE_COPY_KINDS; k++) {
        snprintf(v->copies[k], sizeof v->copies[k], "%u", m->copies[k]);
        v->args[tail + 1 + k] = v->copies[k], v->lens[tail + 1 + k] = strlen(v->copies[k]);
    }
    return v->keys.failed ? -1 : 0;
}

/* The enqueue's deadline, on the realtime clock (the function compares it
 * with Redis's): a quarter of the timeout before the call is given up, so
 * that one run in time is answered in time too. One run later sat in a
 * stalled Redis while its client got 451; its jobs wait for the withdrawal
 * (see enqueue in sealpost.lua). */
static int64_t enqueue_deadline(const queue_t *q)
{
    return util_now_ms() + (int64_t)(q->timeout_ms - q->timeout_ms / 4);
}

int queue_enqueue(queue_t *q, const queue_message_t *m, queue_status_cb cb, void *arg)
{
    if (m->n_rcpts == 0 || m->n_bodies == 0) return -1;
    struct job_group *groups = calloc(m->n_rcpts, sizeof *groups);
    if (!groups) return -1;
    int n = job_groups(m, groups);
    int rc = -1;
    struct enqueue_argv v = {0};
    if (n > 0 && enqueue_argv_build(&v, queue_shard_of(q, m->id), m, groups, (unsigned)n,
                                    enqueue_deadline(q)) == 0) {
        struct call *call = call_new(q, arg);
        if (call) {
            call->done = on_enqueue_reply;
            call->cb.status = cb;
            rc = fcall(call, &v.keys, (int)v.nargs, v.args, v.lens);
        }
    }
    enqueue_argv_free(&v);
    job_groups_free(groups, m->n_rcpts);
    return rc;
}

/* ---- claim ---- */

/* A number Redis gave as an integer or as the whole of a string ("-12",
 * never "12abc"): anything else is fallback, not a guess. */
long long reply_ll(const redisReply *r, long long fallback)
{
    if (r && r->type == REDIS_REPLY_INTEGER) return r->integer;
    if (!r || r->type != REDIS_REPLY_STRING) return fallback;
    bool minus = r->len > 0 && r->str[0] == '-';
    unsigned long long v;
    if (util_parse_decimal(r->str + minus, r->len - minus, &v) < 0 || v > LLONG_MAX)
        return fallback;
    return minus ? -(long long)v : (long long)v;
}

/* Copies a string reply whole into out, or fails: one with a NUL in it, or
 * too long, would be cut into another value (a job id, a domain). */
bool reply_copy(const redisReply *r, char *out, size_t size)
{
    if (!r || r->type != REDIS_REPLY_STRING || r->len >= size || memchr(r->str, 0, r->len))
        return false;
    memcpy(out, r->str, r->len);
    out[r->len] = 0;
    return true;
}

/* Equal to text, octet for octet. */
static bool reply_is(const redisReply *r, const char *text)
{
    return r && r->type == REDIS_REPLY_STRING && r->len == strlen(text) &&
           !memcmp(r->str, text, r->len);
}

const char *reply_str(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : "";
}

static void on_claim_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
        call->cb.claim(-1, reply ? "unexpected reply" : err, -1, NULL, 0, call->arg);
        return;
    }
    const redisReply *list = reply->element[1];
    unsigned n = (unsigned)(list->elements / 2);
    queue_claimed_t *jobs = calloc(n ? n : 1, sizeof *jobs);
    if (!jobs) {
        call->cb.claim(-1, "out of memory", -1, NULL, 0, call->arg);
        return;
    }
    for (unsigned i = 0; i < n; i++) { /* a job id that cannot be copied stays "": fetch fails it */
        reply_copy(list->element[(size_t)2 * i], jobs[i].jid, sizeof jobs[i].jid);
        jobs[i].token = reply_ll(list->element[(size_t)2 * i + 1], -1);
    }
    call->cb.claim(0, NULL, reply_ll(reply->element[0], -1), jobs, n, call->arg);
    free(jobs);
}

int queue_claim(queue_t *q, unsigned shard, const char *owner, unsigned max, unsigned lease_ms,
                unsigned max_expiries, queue_claim_cb cb, void *arg)
{
    char smax[16], slease[16], sexp[16];
    snprintf(smax, sizeof smax, "%u", max);
    snprintf(slease, sizeof slease, "%u", lease_ms);
    snprintf(sexp, sizeof sexp, "%u", max_expiries);
    const char *args[] = {owner, slease, smax, sexp};
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_claim_reply;
    call->cb.claim = cb;
    return fcall_keys(call, FN_CLAIM, &(key_ids_t){.shard = shard}, 4, args, NULL);
}

/* ---- fetch ---- */

const redisReply *reply_field(const redisReply *flat, const char *name)
{
    if (!flat || flat->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < flat->elements; i += 2)
        if (reply_is(flat->element[i], name)) return flat->element[i + 1];
    return NULL;
}

/* NULL, as for no memory, when the value holds a NUL: cut there, a sender
 * or a recipient list would be another one. */
static char *field_dup(const redisReply *flat, const char *name)
{
    const redisReply *v = reply_field(flat, name);
    if (!v || v->type != REDIS_REPLY_STRING) return strdup("");
    if (memchr(v->str, 0, v->len)) return NULL;
    return strndup(v->str, v->len);
}

/* The reverse of rcpt_entry_append: each rcpts[i] is one allocation holding
 * the address, a NUL, and the parameters that rcpt_params[i] points at. */
static int split_rcpts(queue_job_t *job, const char *text)
{
    unsigned n = 1;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    job->rcpts = calloc(n, sizeof *job->rcpts);
    job->rcpt_params = calloc(n, sizeof *job->rcpt_params);
    if (!job->rcpts || !job->rcpt_params) return -1;
    const char *p = text;
    while (*p) {
        size_t len = strcspn(p, "\n");
        if (len) {
            char *entry = strndup(p, len);
            if (!entry) return -1;
            char *tab = strchr(entry, '\t');
            if (tab) *tab = 0;
            job->rcpt_params[job->n_rcpts] = tab ? tab + 1 : entry + len;
            job->rcpts[job->n_rcpts++] = entry;
        }
        p += len + (p[len] == '\n');
    }
    return 0;
}

static queue_job_t *job_from_reply(const struct call *call, const redisReply *reply)
{
    const redisReply *jf = reply->element[0], *mf = reply->element[1], *body = reply->element[2];
    if (jf->type != REDIS_REPLY_ARRAY || mf->type != REDIS_REPLY_ARRAY) return NULL;
    queue_job_t *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    job->shard = call->shard;
    job->token = call->claimed.token;
    memcpy(job->jid, call->claimed.jid, sizeof job->jid);
    job_id_t id;
    if (job_id_parse(job->jid, &id) < 0) {
        free(job);
        return NULL;
    }
    memcpy(job->mid, id.mid, sizeof job->mid);
    job->variant = id.variant;
    const redisReply *v = reply_field(jf, "domain");
    if (!reply_copy(v, job->domain, sizeof job->domain)) {
        free(job);
        return NULL;
    }
    v = reply_field(jf, "attempts");
    job->attempts = v ? (unsigned)reply_ll(v, -1) : 0;
    job->warned = reply_field(jf, "warned") != NULL;
    const redisReply *flag = reply->element[3];
    job->operator_flag = reply_is(flag, "delete") ? QUEUE_OP_DELETE
                         : reply_is(flag, "hold") ? QUEUE_OP_HOLD
                                                  : QUEUE_OP_NONE;
    v = reply_field(mf, "received");
    job->received_ms = v ? reply_ll(v, -1) : 0;
    job->sender = field_dup(mf, "sender");
    job->mail_params = field_dup(mf, "params");
    if (reply_field(mf, "mac")) {
        job->mac = field_dup(mf, "mac");
        job->env = field_dup(mf, "env");
        job->lens = field_dup(mf, "lens");
    }
    char *rcpts = field_dup(jf, "rcpts");
    int rc = (job->sender && job->mail_params && rcpts) ? split_rcpts(job, rcpts) : -1;
    free(rcpts);
    if (rc == 0 && body->type == REDIS_REPLY_STRING) {
        job->body = malloc(body->len ? body->len : 1);
        if (job->body) memcpy(job->body, body->str, body->len);
        job->body_len = body->len;
    }
    if (rc < 0 || !job->body || job->n_rcpts == 0) {
        queue_job_free(job);
        return NULL;
    }
    return job;
}

static void on_fetch_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply) {
        call->cb.fetch(-1, err, NULL, call->arg);
    } else if (reply->type == REDIS_REPLY_NIL) {
        call->cb.fetch(0, NULL, NULL, call->arg);
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        call->cb.fetch(-1, "unexpected reply", NULL, call->arg);
    } else {
        queue_job_t *job = job_from_reply(call, reply);
        call->cb.fetch(job ? 0 : -1, job ? NULL : "malformed job", job, call->arg);
    }
}

int queue_fetch(queue_t *q, unsigned shard, const queue_claimed_t *claimed, queue_fetch_cb cb,
                void *arg)
{
    job_id_t id;
    if (job_id_parse(claimed->jid, &id) < 0) return -1;
    const char *args[] = {claimed->jid};
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_fetch_reply;
    call->cb.fetch = cb;
    call->shard = shard;
    call->claimed = *claimed;
    key_ids_t ids = {.shard = shard, .mid = id.mid, .variant = id.variant, .jid = claimed->jid};
    return fcall_keys(call, FN_FETCH, &ids, 1, args, NULL);
}

void queue_job_free(queue_job_t *job)
{
    if (!job) return;
    for (unsigned i = 0; i < job->n_rcpts; i++)
        free(job->rcpts[i]);
    free(job->rcpts);
    free(job->rcpt_params);
    free(job->sender);
    free(job->mail_params);
    free(job->body);
    free(job->mac);
    free(job->env);
    free(job->lens);
    free(job);
}

/* ---- forget, extend and complete ---- */

int queue_forget(queue_t *q, unsigned shard, const queue_claimed_t *claimed, queue_status_cb cb,
                 void *arg)
{
    char token[32];
    snprintf(token, sizeof token, "%lld", claimed->token);
    const char *args[] = {claimed->jid, token};
    return fcall_keys(call_status(q, cb, arg), FN_FORGET,
                      &(key_ids_t){.shard = shard, .jid = claimed->jid}, 2, args, NULL);
}

int queue_job_tampered(queue_t *q, const queue_job_t *job, const char *why, queue_status_cb cb,
                       void *arg)
{
    char token[32];
    snprintf(token, sizeof token, "%lld", job->token);
    const char *args[] = {job->jid, token, why};
    return fcall_keys(call_status(q, cb, arg), FN_JOB_TAMPERED,
                      &(key_ids_t){.shard = job->shard, .jid = job->jid}, 3, args, NULL);
}

int queue_extend(queue_t *q, const queue_job_t *job, unsigned lease_ms, unsigned keep_ms,
                 queue_status_cb cb, void *arg)
{
    char token[32], lease[16], keep[16];
    snprintf(token, sizeof token, "%lld", job->token);
    snprintf(lease, sizeof lease, "%u", lease_ms);
    snprintf(keep, sizeof keep, "%u", keep_ms);
    const char *args[] = {job->jid, token, lease, keep};
    return fcall_keys(call_status(q, cb, arg), FN_EXTEND, &(key_ids_t){.shard = job->shard}, 4,
                      args, NULL);
}

void queue_bounce_id(const queue_t *q, unsigned shard, char out[33])
{
    /* The shard is the first 32 bits mod shards: rewrite them to a random
     * value that lands in this shard, keeping the rest random. */
    util_random_id(out);
    uint32_t top = (uint32_t)(UINT32_MAX / q->shards);
    uint32_t v = util_random_below(top) * q->shards + shard;
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", v);
    memcpy(out, hex, 8);
}

int queue_complete(queue_t *q, const queue_job_t *job, const queue_outcome_t *o,
                   const queue_bounce_t *bounce, queue_status_cb cb, void *arg)
{
    enum { NARGS = 8 };
    call_keys_t keys;
    call_keys_init(
        &keys, FN_COMPLETE,
        &(key_ids_t){
            .shard = job->shard, .mid = job->mid, .variant = job->variant, .jid = job->jid});
    char bjid[JOB_ID_MAX] = "";
    if (bounce) { /* a new message of one body and one job, in this shard */
        if (job_id_format(bjid, bounce->id, 0, 0) < 0) keys.failed = true;
        call_keys_add(&keys, COMPLETE_BOUNCE,
                      &(key_ids_t){.shard = job->shard, .mid = bounce->id, .jid = bjid});
    }

    buf_t list;
    buf_init(&list);
    for (unsigned i = 0; i < o->n_pending; i++)
        if (o->pending[i] >= job->n_rcpts ||
            rcpt_entry_append(&list, job->rcpts[o->pending[i]], job->rcpt_params[o->pending[i]]) <
                0) {
            buf_free(&list);
            call_keys_free(&keys);
            return -1;
        }
    char token[32], delay[16], shard[16];
    snprintf(token, sizeof token, "%lld", job->token);
    snprintf(delay, sizeof delay, "%u", o->delay_ms);
    snprintf(shard, sizeof shard, "%u", job->shard);
    const char *at = bounce ? strrchr(bounce->rcpt, '@') : NULL;
    const char *args[NARGS + 9] = {
        job->jid,    token, list.data ? list.data : "", delay, o->error ? o->error : "",
        job->domain, shard, o->trace ? o->trace : ""};
    size_t lens[NARGS + 9];
    if (bounce) {
        const char *extra[] = {bounce->id,
                               bounce->info ? bounce->info : "",
                               bounce->body,
                               bjid,
                               at ? at + 1 : "",
                               bounce->rcpt,
                               bounce->delay_notice ? "1" : "0",
                               bounce->mac ? bounce->mac : "",
                               bounce->mac && bounce->env ? bounce->env : ""};
        memcpy(args + NARGS, extra, sizeof extra);
    }
    int nargs = bounce ? NARGS + 9 : NARGS;
    for (int i = 0; i < nargs; i++) /* the bounce body is sealed, binary: its length is given */
        lens[i] = bounce && i == NARGS + 2 ? bounce->body_len : strlen(args[i]);
    int rc = fcall(call_status(q, cb, arg), &keys, nargs, args, lens);
    buf_free(&list);
    call_keys_free(&keys);
    return rc;
}

/* ---- wake-ups ---- */

static void on_wake_message(const char *payload, size_t len, void *arg)
{
    queue_t *q = arg;
    if (!payload || !q->on_wake) return; /* dropped: on_watch_connect announces the rescan */
    unsigned long long shard;
    if (util_parse_decimal(payload, len, &shard) == 0 && shard < q->shards)
        q->on_wake((uint32_t)shard, q->on_wake_arg);
}

static void on_watch_connect(rconn_t *conn, void *arg)
{
    queue_t *q = arg;
    (void)conn;
    if (q->on_wake) q->on_wake(UINT32_MAX, q->on_wake_arg);
}

void queue_unwatch(queue_t *q)
{
    q->on_wake = NULL;
    rconn_free(q->watch_conn);
    q->watch_conn = NULL;
}

int queue_watch(queue_t *q, void (*on_wake)(uint32_t shard, void *arg), void *arg)
{
    q->on_wake = on_wake;
    q->on_wake_arg = arg;
    q->watch_conn = rconn_new(q->loop, &q->redis, q->timeout_ms, on_watch_connect, q);
    if (!q->watch_conn) return -1;
    return rconn_subscribe(q->watch_conn, WAKE_CHANNEL, on_wake_message, q);
}
