/* The worker's claim loop.
 *
 * The worker keeps, per shard, the time it expects the shard to have work
 * again (from the "next" figure of its last claim there) and sleeps until the
 * earliest one. It learns of new work from a pub/sub wake-up sent by enqueue
 * and by a deferral, and rescans every shard after (re)subscribing and at a
 * slow interval in case a wake-up was lost: pub/sub is at-most-once. */
#include "delivery/delivery.h"

#include "delivery/bounce.h"
#include "delivery/client.h"
#include "delivery/dns.h"
#include "crypto/crypto.h"
#include "proto/proto.h"

#include <sodium.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RESCAN_MS      30000
#define REDIS_RETRY_MS 500
#define FETCH_RETRIES  5 /* 0.25 s, doubling: about 8 s in all, well inside a lease */
#define FETCH_RETRY_MS 250
#define NEVER          UINT64_MAX

/* Per-recipient outcomes of delivery attempts, as counted in metrics. */
enum outcome_kind { OUT_DELIVERED, OUT_DEFERRED, OUT_BOUNCED, OUT_EXPIRED, OUTCOMES };
static const char *const outcome_names[OUTCOMES] = {"delivered", "deferred", "bounced", "expired"};

struct worker {
    metric_t *outcomes[OUTCOMES];
    metric_t *duration;      /* of one SMTP transaction */
    metric_t *time_in_queue; /* from arrival to delivery, per recipient */
    metric_t *notices;       /* bounces and relay notices made */
    uv_loop_t *loop;
    const config_t *cfg;
    queue_t *queue;
    const seal_keyring_t *seal;
    dns_t *dns;
    client_env_t env;
    char owner[300];
    uint64_t *next_due; /* per shard, on uv_now's clock */
    uint32_t *wakes;    /* per shard, wake-ups received: one during a claim must not be lost */
    unsigned n_shards;
    unsigned cursor;
    uint64_t next_rescan;
    bool claiming;
    unsigned active;
    struct delivery *deliveries;      /* the active ones, for a stop */
    struct destination *destinations; /* with connections open or waited for */
    unsigned kept;                    /* kept connections not yet closed */
    uv_timer_t timer;                 /* the next claim; after a stop, the grace period */
    bool stopping;
    bool closed;
    void (*on_stopped)(void *arg);
    void *on_stopped_arg;
};

/* One next hop ("host:port"): how many connections we have open to it, and
 * the deliveries waiting for one of them to end (destination_concurrency). */
/* A connection kept open after its transaction, for the next job to the
 * same destination. It still holds its destination slot. */
typedef struct idle_conn {
    client_t *client;
    struct idle_conn *next;
} idle_conn_t;

typedef struct destination {
    worker_t *w;
    char key[300];
    unsigned active; /* connections open, idle ones included */
    idle_conn_t *idle;
    struct delivery *waiting, *waiting_tail;
    struct destination *next;
} destination_t;

typedef struct delivery {
    worker_t *w;
    unsigned shard;
    queue_claimed_t claimed;
    queue_job_t *job;
    uv_timer_t lease_timer;
    unsigned replies_pending; /* replies that still point at this delivery */
    bool finishing;
    bool lease_lost;       /* an extension said "stale": another worker owns the job */
    client_t *gate_client; /* waiting for the renewal before its final dot */
    dns_result_t *mx;      /* NULL for a static route */
    unsigned mx_index;     /* the target being tried */
    client_t *client;      /* the SMTP transaction under way, if any */
    bool releasing;        /* the worker is stopping: hand the job back at once */
    unsigned fetch_tries;
    destination_t *slot;        /* counted against this destination */
    struct delivery *wait_next; /* in the destination's queue */
    bool waiting;
    hop_t wait_hop;   /* where it will connect once its turn comes */
    uint64_t started; /* uv_now when its transaction began (or began to wait) */
    hop_t target;     /* where it went last: a dead kept connection is retried there */
    struct delivery *prev, *next;
} delivery_t;

static void tick(worker_t *w);

/* ---- one delivery ---- */

static void on_worker_closed(uv_handle_t *h)
{
    worker_t *w = h->data;
    void (*done)(void *) = w->on_stopped;
    void *arg = w->on_stopped_arg;
    dns_free(w->dns);
    SSL_CTX_free(w->env.tls);
    free(w->next_due);
    free(w->wakes);
    free(w);
    if (done) done(arg);
}

static void maybe_stopped(worker_t *w)
{
    if (w->stopping && w->active == 0 && w->kept == 0 && !w->claiming && !w->closed) {
        w->closed = true;
        uv_close((uv_handle_t *)&w->timer, on_worker_closed);
    }
}

static void on_delivery_closed(uv_handle_t *h)
{
    delivery_t *d = h->data;
    worker_t *w = d->w;
    if (d->prev)
        d->prev->next = d->next;
    else
        w->deliveries = d->next;
    if (d->next) d->next->prev = d->prev;
    queue_job_free(d->job);
    free(d->mx);
    free(d);
    w->active--;
    maybe_stopped(w);
    tick(w);
}

/* Frees the delivery once no lease extension is in flight: its reply would
 * otherwise land on freed memory. */
static void delivery_finish(delivery_t *d)
{
    d->finishing = true;
    uv_timer_stop(&d->lease_timer);
    if (d->replies_pending == 0 && !uv_is_closing((uv_handle_t *)&d->lease_timer))
        uv_close((uv_handle_t *)&d->lease_timer, on_delivery_closed);
}

static void on_completed(int status, const char *err, void *arg)
{
    delivery_t *d = arg;
    if (status < 0)
        log_warn("event=complete_failed mid=%s job=%s error=\"%s\"", d->job->mid, d->job->jid, err);
    delivery_finish(d);
}

/* The delay before attempt n+1 (n attempts made so far): the backoff doubles
 * from min_backoff per attempt up to max_backoff, and the delay is drawn
 * uniformly from [min_backoff, that backoff] ("full jitter" above a floor),
 * so retries of many messages spread out but never come sooner than
 * min_backoff. */
static uint64_t backoff_ms(const config_t *cfg, unsigned attempts)
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

/* What one attempt decided, recipient by recipient. */
typedef struct outcome {
    unsigned *pending; /* indexes of the recipients tried again later */
    unsigned n_pending;
    bounce_rcpt_t *failed; /* to report now: failures, and relays the sender asked about */
    char (*status)[16];
    unsigned n_failed;
    bool delayed; /* the notification warns of a delay */
    buf_t trace;  /* each recipient's outcome for the queue's trace log */
} outcome_t;

/* Counts, logs and traces one recipient's outcome of an attempt. */
static void log_outcome(const delivery_t *d, outcome_t *o, const char *rcpt, enum outcome_kind kind,
                        const char *detail)
{
    char safe[LOG_SAFE_MAX], text[LOG_SAFE_MAX];
    metric_add(d->w->outcomes[kind], 1);
    log_info("event=%s mid=%s rcpt=<%s> attempt=%u detail=\"%s\"", outcome_names[kind], d->job->mid,
             log_addr(rcpt, safe), d->job->attempts + 1, log_text(detail, text));
    /* TAB and LF separate the trace's fields: a reply should not have them,
     * but what a server says is not ours to trust. */
    char clean[600];
    snprintf(clean, sizeof clean, "%s", detail);
    for (char *p = clean; *p; p++)
        if (*p == '\t' || *p == '\n' || *p == '\r') *p = ' ';
    buf_printf(&o->trace, "%s\t%s\t%s\n", rcpt, outcome_names[kind], clean);
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

/* Adds recipient i to the notification when its NOTIFY asks for this kind. */
static void report(outcome_t *o, const queue_job_t *job, unsigned i, const client_result_t *r,
                   const char *reply, enum bounce_action action)
{
    static const int wanted[] = {[BOUNCE_FAILED] = PROTO_NOTIFY_FAILURE,
                                 [BOUNCE_DELAYED] = PROTO_NOTIFY_DELAY,
                                 [BOUNCE_RELAYED] = PROTO_NOTIFY_SUCCESS};
    if (!(notify_of(job, i) & wanted[action])) return;
    bounce_rcpt_t *f = &o->failed[o->n_failed];
    int code = r ? r->codes[i] : 0;
    bool from_reply = code / 100 == 5 || action != BOUNCE_FAILED; /* else: expired */
    f->addr = job->rcpts[i];
    f->params = job->rcpt_params[i];
    f->action = action;
    f->remote = r && !r->local && code != 0 && (action != BOUNCE_FAILED || code / 100 == 5);
    f->diagnostic = reply;
    if (action == BOUNCE_DELAYED && code / 100 != 4)
        snprintf(o->status[o->n_failed], 16, "4.4.1"); /* not reached (RFC 3463) */
    else if (from_reply)
        bounce_status_of(reply, o->status[o->n_failed]);
    else
        snprintf(o->status[o->n_failed], 16, "4.4.7"); /* delivery time expired */
    f->status = o->status[o->n_failed++];
    o->delayed |= action == BOUNCE_DELAYED;
}

/* Whether pending recipients are due a delay notice now: warnings are on
 * (delay_warning_time, off by default as in Postfix), the message has
 * waited that long, and this job has not warned before. */
static bool warning_due(const delivery_t *d, int64_t age_ms)
{
    unsigned after = d->w->cfg->worker.delay_warning_time;
    return after && !d->job->warned && age_ms >= (int64_t)after * 1000;
}

static void classify(delivery_t *d, const client_result_t *r, outcome_t *o, bool expired, bool warn)
{
    queue_job_t *job = d->job;
    for (unsigned i = 0; i < job->n_rcpts; i++) {
        int code = r ? r->codes[i] : 0;
        const char *reply = r && r->replies[i][0] ? r->replies[i] : (r ? r->detail : "");
        if (code / 100 == 2) {
            log_outcome(d, o, job->rcpts[i], OUT_DELIVERED, reply);
            metric_observe(d->w->time_in_queue,
                           (double)(util_now_ms() - job->received_ms) / 1000.0);
            /* A peer with DSN reports success itself (RFC 3461 §5.2.2). */
            if (!r->peer_dsn) report(o, job, i, r, reply, BOUNCE_RELAYED);
        } else if (code / 100 == 5 || expired) {
            bool refused = code / 100 == 5;
            report(o, job, i, r, reply, BOUNCE_FAILED);
            log_outcome(d, o, job->rcpts[i], refused ? OUT_BOUNCED : OUT_EXPIRED, reply);
        } else {
            o->pending[o->n_pending++] = i;
            if (warn) report(o, job, i, r, reply, BOUNCE_DELAYED);
            log_outcome(d, o, job->rcpts[i], OUT_DEFERRED, reply);
        }
    }
}

/* Builds the bounce for the failed recipients; false when none is due (no
 * failures, or a null sender: never bounce a bounce). */
static bool make_bounce(delivery_t *d, const client_result_t *r, const outcome_t *o,
                        queue_bounce_t *b, buf_t *body)
{
    if (o->n_failed == 0 || !d->job->sender[0]) return false; /* never bounce a bounce */
    queue_bounce_id(d->w->queue, d->shard, b->id);
    bounce_report_t report = {
        .reporting_mta = d->w->cfg->worker.helo_name,
        .remote_mta = r && !r->local ? r->remote : NULL,
        .bounce_id = b->id,
        .job = d->job,
        .rcpts = o->failed,
        .n_rcpts = o->n_failed,
        .retry_until_ms =
            d->job->received_ms + (long long)d->w->cfg->worker.max_queue_lifetime * 1000,
    };
    buf_t plain;
    buf_init(&plain);
    char context[48];
    snprintf(context, sizeof context, "%s:0", b->id);
    int rc = bounce_build(&report, &plain);
    if (rc == 0) rc = seal_body(d->w->seal, context, plain.data, plain.len, body);
    buf_free(&plain);
    if (rc < 0) return false;
    b->rcpt = d->job->sender;
    b->info = "bounce";
    b->body = body->data;
    b->body_len = body->len;
    b->delay_notice = o->delayed;
    char safe[LOG_SAFE_MAX];
    metric_add(d->w->notices, 1);
    log_info("event=bounce mid=%s bounce=%s to=<%s> rcpts=%u", d->job->mid, b->id,
             log_addr(b->rcpt, safe), o->n_failed);
    return true;
}

/* Records the attempt: 2xx recipients are done, 4xx and unreached ones are
 * tried again after the backoff, 5xx ones (and every pending one once the
 * message is older than max_queue_lifetime) are bounced in the same call. */
static void record(delivery_t *d, const client_result_t *r)
{
    queue_job_t *job = d->job;
    const config_t *cfg = d->w->cfg;
    outcome_t o = {
        .pending = calloc(job->n_rcpts, sizeof *o.pending),
        .failed = calloc(job->n_rcpts, sizeof *o.failed),
        .status = calloc(job->n_rcpts, sizeof *o.status),
    };
    buf_t body;
    buf_init(&body);
    int rc = -1;
    if (o.pending && o.failed && o.status) {
        int64_t age_ms = util_now_ms() - job->received_ms;
        classify(d, r, &o, age_ms > (int64_t)cfg->worker.max_queue_lifetime * 1000,
                 !d->releasing && warning_due(d, age_ms));
        queue_bounce_t bounce;
        bool bouncing = make_bounce(d, r, &o, &bounce, &body);
        /* A job handed back by a stopping worker is due again at once. */
        uint64_t delay = d->releasing ? 0 : backoff_ms(cfg, job->attempts);
        if (o.n_pending) {
            uint64_t due = uv_now(d->w->loop) + delay;
            if (due < d->w->next_due[d->shard]) d->w->next_due[d->shard] = due;
        }
        uv_timer_stop(&d->lease_timer); /* no extension after the completion */
        queue_outcome_t done = {o.pending, o.n_pending, (unsigned)delay, r ? r->detail : "",
                                o.trace.data};
        rc = queue_complete(d->w->queue, job, &done, bouncing ? &bounce : NULL, on_completed, d);
    }
    free(o.pending);
    free(o.failed);
    free(o.status);
    buf_free(&o.trace);
    buf_free(&body);
    if (rc < 0) on_completed(-1, "redis not connected or out of memory", d);
}

static void deliver_to_target(delivery_t *d);
static void on_gate(client_t *client, void *arg);
static void on_delivered(const client_result_t *result, void *arg);
static void start_client(delivery_t *d, const hop_t *hop);
static void slot_freed(destination_t *x);
static void wake_waiting(destination_t *x);
static void keep(destination_t *x, client_t *client);

/* Moves on to the next MX target when this one failed before the
 * transaction began (RFC 5321 §5.1); otherwise records the attempt. */
static void on_delivered(const client_result_t *result, void *arg)
{
    delivery_t *d = arg;
    metric_observe(d->w->duration, (double)(uv_now(d->w->loop) - d->started) / 1000.0);
    client_t *kept = result->kept ? d->client : NULL;
    destination_t *slot = d->slot;
    d->client = NULL;
    d->slot = NULL;
    if (kept) {
        /* result is the client's: record() reads it before keep() may hand
         * the client, and so the result, to the next job. */
        record(d, result->codes ? result : NULL);
        keep(slot, kept);
        return;
    }
    if (result->stale && !d->releasing && slot) {
        /* A kept connection died idle: a fresh one, in the slot it freed,
         * before any waiting delivery gets it (or this one could starve). */
        log_info("event=reconnect mid=%s peer=%s detail=\"%s\"", d->job->mid, result->remote,
                 result->detail);
        slot->active--;
        start_client(d, &d->target);
        wake_waiting(slot);
        return;
    }
    if (slot) slot_freed(slot);
    if (result->before_mail && !d->releasing && d->mx && d->mx_index + 1 < d->mx->n_hops) {
        log_info("event=next_mx mid=%s failed=%s detail=\"%s\"", d->job->mid,
                 d->mx->hops[d->mx_index].name, result->detail);
        d->mx_index++;
        deliver_to_target(d);
        return;
    }
    record(d, result->codes ? result : NULL);
}

/* An outcome decided here, not by a server: every recipient gets code and
 * text ("550 5.1.10 ..."), so it is deferred or bounced like a reply. */
static void record_local(delivery_t *d, int code, const char *text)
{
    unsigned n = d->job->n_rcpts;
    client_result_t r = {.codes = calloc(n, sizeof *r.codes),
                         .replies = calloc(n, sizeof *r.replies),
                         .n_codes = n,
                         .local = true};
    snprintf(r.detail, sizeof r.detail, "%s", text);
    for (unsigned i = 0; r.codes && r.replies && i < n; i++) {
        r.codes[i] = code;
        snprintf(r.replies[i], sizeof r.replies[i], "%s", text);
    }
    record(d, r.codes && r.replies ? &r : NULL);
    free(r.codes);
    free(r.replies);
}

static destination_t *destination_get(worker_t *w, const net_hostport_t *dest)
{
    char key[300];
    snprintf(key, sizeof key, "%s:%u", dest->host, dest->port);
    for (destination_t *x = w->destinations; x; x = x->next)
        if (!strcmp(x->key, key)) return x;
    destination_t *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    memcpy(x->key, key, sizeof key);
    x->w = w;
    x->next = w->destinations;
    w->destinations = x;
    return x;
}

static void destination_drop_if_idle(worker_t *w, destination_t *x)
{
    if (x->active || x->waiting || x->idle) return;
    for (destination_t **link = &w->destinations; *link; link = &(*link)->next)
        if (*link == x) {
            *link = x->next;
            free(x);
            return;
        }
}

static delivery_t *pop_waiting(destination_t *x)
{
    delivery_t *next = x->waiting;
    if (next) {
        x->waiting = next->wait_next;
        if (!x->waiting) x->waiting_tail = NULL;
        next->waiting = false;
    }
    return next;
}

/* Starts waiting deliveries while the destination has free slots. */
static void wake_waiting(destination_t *x)
{
    worker_t *w = x->w;
    while (x->waiting && x->active < w->cfg->worker.destination_concurrency) {
        delivery_t *next = pop_waiting(x);
        start_client(next, &next->wait_hop);
    }
    destination_drop_if_idle(w, x);
}

/* A connection to the destination ended: the next delivery waiting for it
 * goes now. */
static void slot_freed(destination_t *x)
{
    x->active--;
    wake_waiting(x);
}

static void release_slot(delivery_t *d)
{
    destination_t *x = d->slot;
    if (!x) return;
    d->slot = NULL;
    slot_freed(x);
}

/* A kept connection closed (idle too long, closed by the server, or told
 * to quit): out of the pool, and its slot is free. */
static void on_kept_closed(client_t *client, void *arg)
{
    destination_t *x = arg;
    worker_t *w = x->w;
    for (idle_conn_t **link = &x->idle; *link; link = &(*link)->next)
        if ((*link)->client == client) {
            idle_conn_t *gone = *link;
            *link = gone->next;
            free(gone);
            break;
        }
    w->kept--;
    slot_freed(x);
    maybe_stopped(w);
}

/* What a connection to the hop goes by: its MX name, or "host:port". */
static const char *label_of(const hop_t *hop, const destination_t *x)
{
    return hop->name[0] ? hop->name : x->key;
}

/* Whether an idle connection suits the delivery: the same MX name (for SNI
 * and certificate checks) and the same TLS policy. */
static bool suits(const delivery_t *d, client_t *client, const char *name)
{
    return !strcmp(client_name(client), name) &&
           client_tls_policy(client) == config_tls_policy_for(d->w->cfg, d->job->domain);
}

/* Runs the delivery on a kept connection (its slot moves along). */
static bool reuse(delivery_t *d, destination_t *x, client_t *client)
{
    if (client_reuse(client, d->job, on_gate, on_delivered, d) < 0) return false;
    d->slot = x;
    d->client = client;
    return true;
}

/* A transaction left its connection open: the first waiting delivery it
 * suits takes it now, else it waits in the pool (or quits, when stopping
 * or when a waiting delivery needs the slot for another name). */
static void keep(destination_t *x, client_t *client)
{
    worker_t *w = x->w;
    w->kept++;
    client_idle(client, on_kept_closed, x);
    delivery_t *next = w->stopping ? NULL : x->waiting;
    if (next && !next->releasing && suits(next, client, label_of(&next->wait_hop, x))) {
        pop_waiting(x);
        w->kept--;
        if (reuse(next, x, client)) return;
        w->kept++;
        start_client(next, &next->wait_hop);
    }
    idle_conn_t *ic = next || w->stopping ? NULL : malloc(sizeof *ic);
    if (!ic) {
        client_quit(client); /* on_kept_closed follows */
        return;
    }
    ic->client = client;
    ic->next = x->idle;
    x->idle = ic;
}

/* Takes a suitable idle connection out of the pool, or NULL. */
static client_t *take_idle(delivery_t *d, destination_t *x, const char *name)
{
    for (idle_conn_t **link = &x->idle; *link; link = &(*link)->next) {
        client_t *client = (*link)->client;
        if (!client_is_idle(client) || !suits(d, client, name)) continue;
        idle_conn_t *gone = *link;
        *link = gone->next;
        free(gone);
        d->w->kept--;
        return client;
    }
    return NULL;
}

static void start_client(delivery_t *d, const hop_t *hop)
{
    destination_t *x = destination_get(d->w, &hop->addr);
    d->started = uv_now(d->w->loop);
    if (!x) {
        record_local(d, 451, "451 4.3.0 out of memory");
        return;
    }
    if (&d->target != hop) d->target = *hop;
    client_t *idle = d->releasing ? NULL : take_idle(d, x, label_of(hop, x));
    if (idle && reuse(d, x, idle)) return;
    if (idle) { /* no memory for the job on it: give its slot back */
        d->w->kept++;
        client_quit(idle);
    }
    if (x->active >= d->w->cfg->worker.destination_concurrency && !d->releasing) {
        /* An idle connection that does not suit gives way (out of the pool at
         * once, so the next arrival picks another). */
        for (idle_conn_t **link = &x->idle; *link; link = &(*link)->next) {
            idle_conn_t *ic = *link;
            if (!client_is_idle(ic->client)) continue; /* quitting already */
            *link = ic->next;
            client_quit(ic->client);
            free(ic);
            break;
        }
        /* Wait for a connection to this host to end; the lease keeps being renewed. */
        d->waiting = true;
        if (&d->wait_hop != hop) d->wait_hop = *hop;
        d->wait_next = NULL;
        if (x->waiting_tail)
            x->waiting_tail->wait_next = d;
        else
            x->waiting = d;
        x->waiting_tail = d;
        return;
    }
    x->active++;
    d->slot = x;
    d->client = client_deliver(&d->w->env, hop, d->job, on_gate, on_delivered, d);
    if (!d->client) {
        release_slot(d);
        record_local(d, 451, "451 4.3.0 out of memory");
    } else if (d->releasing) {
        client_abort(d->client);
    }
}

/* Takes a waiting delivery out of its destination's queue. */
static void unwait(delivery_t *d)
{
    destination_t *x = destination_get(d->w, &d->wait_hop.addr);
    delivery_t *prev = NULL;
    for (delivery_t *p = x ? x->waiting : NULL; p; prev = p, p = p->wait_next) {
        if (p != d) continue;
        if (prev)
            prev->wait_next = p->wait_next;
        else
            x->waiting = p->wait_next;
        if (x->waiting_tail == p) x->waiting_tail = prev;
        break;
    }
    d->waiting = false;
}

static void deliver_to_target(delivery_t *d)
{
    start_client(d, &d->mx->hops[d->mx_index]);
}

static void on_resolved(const dns_result_t *result, void *arg)
{
    delivery_t *d = arg;
    log_debug("event=mx mid=%s domain=%s status=%d targets=%u detail=\"%s\"", d->job->mid,
              d->job->domain, (int)result->status, result->n_hops, result->detail);
    if (result->status != DNS_OK) {
        record_local(d, result->status == DNS_TEMPFAIL ? 451 : 550, result->detail);
        return;
    }
    d->mx = malloc(sizeof *d->mx);
    if (!d->mx) {
        record_local(d, 451, "451 4.3.0 out of memory");
        return;
    }
    *d->mx = *result;
    deliver_to_target(d);
}

static void on_lease_timer(uv_timer_t *t);

static void on_extended(int status, const char *err, void *arg)
{
    delivery_t *d = arg;
    d->replies_pending--;
    if (status < 0) {
        log_warn("event=lease_extend_failed mid=%s job=%s error=\"%s\"", d->job->mid, d->job->jid,
                 err);
        if (err && !strcmp(err, "stale")) d->lease_lost = true;
    }
    if (d->finishing) delivery_finish(d);
}

static void on_gate_extended(int status, const char *err, void *arg)
{
    delivery_t *d = arg;
    d->replies_pending--;
    if (status < 0)
        log_warn("event=aborted_before_dot mid=%s job=%s error=\"%s\"", d->job->mid, d->job->jid,
                 err);
    client_finish_data(d->gate_client, status == 0);
}

/* Right before the final dot the lease is renewed once more: a worker that
 * lost its job (paused, partitioned) must not complete a delivery that
 * another worker is making too. */
static void on_gate(client_t *client, void *arg)
{
    delivery_t *d = arg;
    d->gate_client = client;
    if (d->lease_lost || queue_extend(d->w->queue, d->job, d->w->cfg->worker.lease_seconds * 1000,
                                      on_gate_extended, d) < 0) {
        log_warn("event=aborted_before_dot mid=%s job=%s error=\"lease lost or redis down\"",
                 d->job->mid, d->job->jid);
        client_finish_data(client, false);
        return;
    }
    d->replies_pending++;
}

static void on_lease_timer(uv_timer_t *t)
{
    delivery_t *d = t->data;
    if (queue_extend(d->w->queue, d->job, d->w->cfg->worker.lease_seconds * 1000, on_extended, d) <
        0)
        log_warn("event=lease_extend_failed mid=%s error=\"redis not connected\"", d->job->mid);
    else
        d->replies_pending++;
}

static void on_forgotten(int status, const char *err, void *arg)
{
    delivery_t *d = arg;
    d->replies_pending--;
    if (status < 0) log_warn("event=forget_failed job=%s error=\"%s\"", d->claimed.jid, err);
    if (d->finishing) delivery_finish(d);
}

/* An operator held or deleted the job while it was leased (it was claimed
 * meanwhile): nothing is sent, and the completion carries out the wish. */
static void operator_flagged(delivery_t *d)
{
    queue_job_t *job = d->job;
    unsigned *all = calloc(job->n_rcpts, sizeof *all);
    for (unsigned i = 0; all && i < job->n_rcpts; i++)
        all[i] = i;
    bool hold = job->operator_flag == QUEUE_OP_HOLD;
    log_info("event=%s mid=%s job=%s reason=operator", hold ? "held" : "deleted", job->mid,
             job->jid);
    uv_timer_stop(&d->lease_timer);
    queue_outcome_t o = {all, all ? job->n_rcpts : 0, 0, hold ? "held by an operator" : "", NULL};
    if (!all || queue_complete(d->w->queue, job, &o, NULL, on_completed, d) < 0)
        on_completed(-1, "redis not connected or out of memory", d);
    free(all);
}

/* Replaces the sealed body of a fetched job with the plain one, just before
 * it is sent. On failure the body is emptied, so no sealed octets ever leave
 * in a bounce. */
static int unseal(const worker_t *w, queue_job_t *job, char *err, size_t errlen)
{
    char context[48];
    snprintf(context, sizeof context, "%s:%u", job->mid, job->variant);
    buf_t plain;
    buf_init(&plain);
    int rc = seal_open(w->seal, context, job->body, job->body_len, &plain, err, errlen);
    sodium_memzero(job->body, job->body_len);
    free(job->body);
    job->body = rc == 0 ? plain.data : NULL;
    job->body_len = rc == 0 ? plain.len : 0;
    if (rc < 0) buf_free(&plain);
    return rc;
}

static void on_fetched(int status, const char *err, queue_job_t *job, void *arg);

static void fetch(delivery_t *d)
{
    if (queue_fetch(d->w->queue, d->shard, &d->claimed, on_fetched, d) < 0)
        on_fetched(-1, "redis not connected", NULL, d);
}

static void on_fetch_retry(uv_timer_t *t)
{
    fetch(t->data);
}

static void on_fetched(int status, const char *err, queue_job_t *job, void *arg)
{
    delivery_t *d = arg;
    if (!job && status < 0 && strcmp(err, "malformed job") != 0 && !d->w->stopping &&
        d->fetch_tries < FETCH_RETRIES) {
        /* A Redis hiccup: try again while the lease holds, rather than let it
         * expire, which counts towards putting the job on hold. */
        log_warn("event=fetch_failed job=%s error=\"%s\" retry=%u", d->claimed.jid, err,
                 d->fetch_tries + 1);
        uv_timer_start(&d->lease_timer, on_fetch_retry, (uint64_t)FETCH_RETRY_MS << d->fetch_tries,
                       0);
        d->fetch_tries++;
        return;
    }
    if (!job) {
        if (status < 0)
            log_warn("event=fetch_failed job=%s error=\"%s\"", d->claimed.jid, err);
        else if (queue_forget(d->w->queue, d->shard, &d->claimed, on_forgotten, d) == 0)
            d->replies_pending++; /* deleted meanwhile: drop the lease, not count it */
        delivery_finish(d);
        return;
    }
    d->job = job;
    uint64_t renew = (uint64_t)d->w->cfg->worker.lease_seconds * 1000 / 3;
    uv_timer_start(&d->lease_timer, on_lease_timer, renew, renew);
    if (job->operator_flag != QUEUE_OP_NONE) {
        operator_flagged(d);
        return;
    }
    char why[200];
    if (unseal(d->w, job, why, sizeof why) < 0) {
        /* A node without the key the body was sealed with: another node, or
         * this one with its key file fixed, can still send it. */
        log_error("event=unseal_failed mid=%s job=%s error=\"%s\"", job->mid, job->jid, why);
        char text[300];
        snprintf(text, sizeof text, "451 4.7.0 cannot unseal the message: %s", why);
        record_local(d, 451, text);
        return;
    }
    /* A static route (or the relayhost) wins over MX. */
    const net_hostport_t *route = config_route_for(d->w->cfg, job->domain);
    struct sockaddr_storage numeric;
    if (route && net_sockaddr_from(route, &numeric) == 0)
        start_client(d, &(hop_t){.addr = *route});
    else if (route) /* by name, as in a compose file: "sink:25" */
        dns_resolve_host(d->w->dns, route->host, route->port, on_resolved, d);
    else
        dns_resolve_mx(d->w->dns, job->domain, d->w->cfg->worker.smtp_port, on_resolved, d);
}

static void start_delivery(worker_t *w, unsigned shard, const queue_claimed_t *claimed)
{
    delivery_t *d = calloc(1, sizeof *d);
    if (!d) return; /* the lease runs out and the job is tried again */
    d->w = w;
    d->shard = shard;
    d->claimed = *claimed;
    uv_timer_init(w->loop, &d->lease_timer);
    d->lease_timer.data = d;
    d->next = w->deliveries;
    if (d->next) d->next->prev = d;
    w->deliveries = d;
    w->active++;
    fetch(d);
}

/* ---- claiming ---- */

struct claim_ctx {
    worker_t *w;
    unsigned shard;
    unsigned max;
    uint32_t wakes; /* the shard's wake-ups when the claim went out */
};

static void on_claimed(int status, const char *err, long long next_ms, const queue_claimed_t *jobs,
                       unsigned n, void *arg)
{
    struct claim_ctx *cc = arg;
    worker_t *w = cc->w;
    uint64_t now = uv_now(w->loop);
    w->claiming = false;
    if (status < 0) {
        log_warn("event=claim_failed shard=%u error=\"%s\"", cc->shard, err);
        w->next_due[cc->shard] = now + REDIS_RETRY_MS;
    } else if (n == cc->max || w->wakes[cc->shard] != cc->wakes) {
        /* There may be more; or something was enqueued while the claim was
         * out, and the claim may have looked before it was there. */
        w->next_due[cc->shard] = now;
    } else {
        w->next_due[cc->shard] = next_ms < 0 ? NEVER : now + (uint64_t)next_ms;
    }
    for (unsigned i = 0; i < n && status == 0; i++)
        start_delivery(w, cc->shard, &jobs[i]);
    free(cc);
    maybe_stopped(w);
    tick(w);
}

static void on_timer(uv_timer_t *t)
{
    tick(t->data);
}

static bool claim_one(worker_t *w, uint64_t now, unsigned slots)
{
    for (unsigned i = 0; i < w->n_shards; i++) {
        unsigned s = (w->cursor + i) % w->n_shards;
        if (w->next_due[s] > now) continue;
        w->cursor = s + 1;
        struct claim_ctx *cc = malloc(sizeof *cc);
        if (!cc) return false;
        *cc = (struct claim_ctx){w, s, slots, w->wakes[s]};
        w->claiming = true;
        if (queue_claim(w->queue, s, w->owner, slots, w->cfg->worker.lease_seconds * 1000,
                        w->cfg->worker.max_lease_expiries, on_claimed, cc) < 0) {
            w->claiming = false;
            free(cc);
            return false;
        }
        return true;
    }
    return false;
}

static void tick(worker_t *w)
{
    if (w->stopping || w->claiming) return;
    uint64_t now = uv_now(w->loop);
    if (now >= w->next_rescan) {
        for (unsigned s = 0; s < w->n_shards; s++)
            w->next_due[s] = 0;
        w->next_rescan = now + RESCAN_MS;
    }
    unsigned slots = w->cfg->worker.concurrency - w->active;
    if (!queue_ready(w->queue)) {
        uv_timer_start(&w->timer, on_timer, REDIS_RETRY_MS, 0);
        return;
    }
    if (slots > 0 && claim_one(w, now, slots)) return;
    if (slots == 0) return; /* a finished delivery ticks again */
    uint64_t wake = w->next_rescan;
    for (unsigned s = 0; s < w->n_shards; s++)
        if (w->next_due[s] < wake) wake = w->next_due[s];
    uv_timer_start(&w->timer, on_timer, wake > now ? wake - now : 0, 0);
}

static void on_wake(uint32_t shard, void *arg)
{
    worker_t *w = arg;
    if (shard == UINT32_MAX)
        w->next_rescan = 0;
    else if (shard < w->n_shards) {
        w->next_due[shard] = 0;
        w->wakes[shard]++;
    }
    tick(w);
}

worker_t *worker_start(uv_loop_t *loop, const config_t *cfg, queue_t *queue,
                       const seal_keyring_t *seal, char *err, size_t errlen)
{
    worker_t *w = calloc(1, sizeof *w);
    if (w) w->next_due = calloc(queue_shards(queue), sizeof *w->next_due);
    if (w) w->wakes = calloc(queue_shards(queue), sizeof *w->wakes);
    if (!w || !w->next_due || !w->wakes) {
        if (w) {
            free(w->next_due);
            free(w->wakes);
            free(w);
        }
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char id[33], labels[64];
    util_random_id(id);
    snprintf(w->owner, sizeof w->owner, "%s:%d:%.8s", cfg->worker.helo_name, (int)getpid(), id);
    for (int k = 0; k < OUTCOMES; k++) {
        snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome_names[k]);
        w->outcomes[k] = metric_counter("sealpost_delivery_attempts_total",
                                        "Delivery attempts per recipient, by outcome.", labels);
    }
    w->notices =
        metric_counter("sealpost_delivery_notifications_total",
                       "Delivery status notifications made: bounces and relay notices.", "");
    static const double seconds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double queued[] = {1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 432000};
    w->duration = metric_histogram("sealpost_delivery_duration_seconds",
                                   "Time an SMTP transaction took, connection set-up included.", "",
                                   seconds, sizeof seconds / sizeof seconds[0]);
    w->time_in_queue = metric_histogram("sealpost_delivery_time_in_queue_seconds",
                                        "Time from acceptance to delivery, per recipient.", "",
                                        queued, sizeof queued / sizeof queued[0]);
    w->loop = loop;
    w->cfg = cfg;
    w->queue = queue;
    w->seal = seal;
    w->n_shards = queue_shards(queue);
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->env = (client_env_t){.loop = loop, .cfg = cfg};
    if (!(w->dns = dns_new(loop, cfg->worker.dns_servers, err, errlen)) ||
        !(w->env.tls = tls_client_context(cfg->worker.tls_ca_file, err, errlen))) {
        uv_close((uv_handle_t *)&w->timer, on_worker_closed);
        return NULL;
    }
    if (queue_watch(queue, on_wake, w) < 0) {
        snprintf(err, errlen, "cannot watch the queue");
        uv_close((uv_handle_t *)&w->timer, on_worker_closed);
        return NULL;
    }
    log_info("event=worker_started owner=%s concurrency=%u", w->owner, cfg->worker.concurrency);
    tick(w);
    return w;
}

/* The grace period is over: transactions still running are cut (before
 * their final dot nothing is delivered) and their jobs handed back, due now,
 * so another worker takes them without waiting for the lease to run out. */
static void on_grace_over(uv_timer_t *t)
{
    worker_t *w = t->data;
    log_info("event=stop_grace_over active=%u", w->active);
    for (delivery_t *d = w->deliveries; d; d = d->next) {
        d->releasing = true;
        if (d->client) {
            client_abort(d->client);
        } else if (d->waiting) {
            unwait(d);
            start_client(d, &d->wait_hop);
        }
    }
}

void worker_stop(worker_t *w, void (*done)(void *arg), void *arg)
{
    w->stopping = true;
    queue_unwatch(w->queue); /* no wake-up may reach w once it is freed */
    for (destination_t *x = w->destinations; x; x = x->next)
        for (idle_conn_t *ic = x->idle; ic; ic = ic->next)
            client_quit(ic->client);
    w->on_stopped = done;
    w->on_stopped_arg = arg;
    uv_timer_stop(&w->timer);
    uv_timer_start(&w->timer, on_grace_over, (uint64_t)w->cfg->worker.stop_grace * 1000, 0);
    maybe_stopped(w);
}
