/* Withdrawals (queue_withdraw in queue.h): messages whose enqueue was never
 * acknowledged to their client, to be taken back by the withdraw function
 * before a worker claims them, so that the client's retry is the only copy.
 *
 * The ingress that asks has answered 4xx already (or its client left), and
 * the session is gone, so the queue keeps them: a bounded list, oldest first, each entry holding
 * only what names the message's keys (its id, its number of bodies and each
 * job's variant). A timer runs while the list is not empty; on each tick,
 * once Redis answers again (queue_ready: a stalled Redis accepts the
 * reconnect but does not answer the library check), every entry due is sent,
 * one call each at a time, and tried again with backoff until the function
 * gives its verdict. A first try never goes out from inside the callback
 * that reported the failure: on a timeout the connection is still there,
 * about to be dropped, and would only lose it. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WITHDRAW_MAX          10000
#define WITHDRAW_TICK_MS      100
#define WITHDRAW_RETRY_MAX_MS 5000
/* The tombstone's life, and how long a withdrawal is tried: an enqueue
 * still on its way an hour after Redis answered again is not to be feared. */
#define WITHDRAW_TTL_S 3600u

static void abandon_all(queue_t *q);

struct withdrawal {
    struct withdrawal *next;
    queue_t *q;
    char mid[33];
    unsigned n_bodies, n_jobs;
    unsigned *variants; /* job n's body variant: job ids are <mid>.<v>.<n> */
    bool in_flight;
    uint64_t since, next_try; /* uv_now */
    unsigned retry_ms;
};

static void withdrawal_free(struct withdrawal *w)
{
    free(w->variants);
    free(w);
}

static void unlink_withdrawal(queue_t *q, struct withdrawal *w)
{
    for (struct withdrawal **p = &q->withdrawals.head; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            q->withdrawals.n--;
            break;
        }
    if (!q->withdrawals.head && q->withdrawals.timer) uv_timer_stop(q->withdrawals.timer);
}

/* The end of one, out of the list: logged once, counted, freed. */
static void report(struct withdrawal *w, enum withdraw_outcome outcome, const char *why)
{
    queue_t *q = w->q;
    metric_add(q->withdrawals.outcomes[outcome], 1);
    switch (outcome) {
    case WITHDRAW_WITHDRAWN:
        log_info("event=withdrawn mid=%s outcome=withdrawn", w->mid);
        break;
    case WITHDRAW_GONE:
        log_info("event=withdrawn mid=%s outcome=gone detail=\"not stored: a later enqueue of it "
                 "is kept out (or it was delivered in full already)\"",
                 w->mid);
        break;
    case WITHDRAW_CLAIMED:
        log_warn("event=withdraw_too_late mid=%s outcome=claimed detail=\"a worker has claimed "
                 "it already: it is delivered, and so is the client's retry\"",
                 w->mid);
        break;
    default:
        log_error("event=withdraw_abandoned mid=%s outcome=abandoned reason=\"%s\" detail=\"if "
                  "it was stored it is delivered, and so is the client's retry\"",
                  w->mid, why);
        break;
    }
    withdrawal_free(w);
}

static void settle(struct withdrawal *w, enum withdraw_outcome outcome, const char *why)
{
    unlink_withdrawal(w->q, w);
    report(w, outcome, why);
}

static void try_later(struct withdrawal *w, const char *why)
{
    log_debug("event=withdraw_retry mid=%s in_ms=%u error=\"%s\"", w->mid, w->retry_ms, why);
    w->next_try = uv_now(w->q->loop) + w->retry_ms;
    w->retry_ms = w->retry_ms * 2 > WITHDRAW_RETRY_MAX_MS ? WITHDRAW_RETRY_MAX_MS : w->retry_ms * 2;
}

static void on_withdraw_reply(struct call *call, redisReply *reply, const char *err)
{
    struct withdrawal *w = call->arg;
    w->in_flight = false;
    const char *verdict = reply && reply->type == REDIS_REPLY_STRING ? reply->str : "";
    for (int o = 0; o < WITHDRAW_ABANDONED; o++)
        if (!strcmp(verdict, withdraw_outcome_names[o])) {
            settle(w, (enum withdraw_outcome)o, NULL);
            return;
        }
    if (w->q->withdrawals.closing)
        settle(w, WITHDRAW_ABANDONED, "closing before Redis answered");
    else if (call->answered && !reply && strstr(err, "arguments do not match this library"))
        settle(w, WITHDRAW_ABANDONED,
               err); /* another version's library: trying again cannot help */
    else
        try_later(w, reply ? "unexpected reply" : err);
}

/* The withdraw call (sealpost.lua: withdraw), keys named as the enqueue
 * named them. */
static int send_withdrawal(struct withdrawal *w)
{
    queue_t *q = w->q;
    key_ids_t ids = {.shard = queue_shard_of(q, w->mid), .mid = w->mid};
    call_keys_t keys;
    call_keys_init(&keys, FN_WITHDRAW, &ids);
    for (ids.variant = 0; ids.variant < w->n_bodies; ids.variant++)
        call_keys_add(&keys, WITHDRAW_BODY, &ids);
    char jid[JOB_ID_MAX];
    for (unsigned n = 0; n < w->n_jobs; n++) {
        if (job_id_format(jid, w->mid, w->variants[n], n) < 0) keys.failed = true;
        ids.jid = jid;
        call_keys_add(&keys, WITHDRAW_JOB, &ids);
    }
    char nb[16], ttl[16];
    snprintf(nb, sizeof nb, "%u", w->n_bodies);
    snprintf(ttl, sizeof ttl, "%u", WITHDRAW_TTL_S);
    const char *args[] = {w->mid, nb, ttl};
    struct call *call = call_new(q, w);
    if (call) call->done = on_withdraw_reply;
    int rc = fcall(call, &keys, 3, args, NULL);
    call_keys_free(&keys);
    return rc;
}

static void on_tick(uv_timer_t *timer)
{
    queue_t *q = timer->data;
    uint64_t now = uv_now(q->loop);
    bool ready = queue_ready(q);
    for (struct withdrawal *w = q->withdrawals.head, *next; w; w = next) {
        next = w->next; /* settle may free w */
        if (w->in_flight || w->next_try > now) continue;
        if (now - w->since > (uint64_t)WITHDRAW_TTL_S * 1000) {
            settle(w, WITHDRAW_ABANDONED, "no verdict from Redis within an hour");
        } else if (ready) {
            w->in_flight = send_withdrawal(w) == 0;
            if (!w->in_flight) try_later(w, "not sent");
        }
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* The entry for m: its jobs numbered and grouped as queue_enqueue did. */
static struct withdrawal *withdrawal_new(queue_t *q, const queue_message_t *m)
{
    struct withdrawal *w = calloc(1, sizeof *w);
    struct job_group *groups = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof *groups);
    int n = groups ? job_groups(m, groups) : -1;
    if (w && n > 0 && (w->variants = calloc((size_t)n, sizeof *w->variants))) {
        for (int g = 0; g < n; g++)
            w->variants[g] = groups[g].variant;
        w->q = q;
        memcpy(w->mid, m->id, sizeof w->mid);
        w->n_bodies = m->n_bodies;
        w->n_jobs = (unsigned)n;
        w->since = w->next_try = uv_now(q->loop);
        w->retry_ms = WITHDRAW_TICK_MS;
    } else if (w) {
        free(w);
        w = NULL;
    }
    if (groups) job_groups_free(groups, m->n_rcpts);
    return w;
}

static bool timer_running(queue_t *q)
{
    if (!q->withdrawals.timer) {
        uv_timer_t *t = malloc(sizeof *t);
        if (!t) return false;
        uv_timer_init(q->loop, t);
        uv_unref((uv_handle_t *)t); /* a loop with nothing else to do may end */
        t->data = q;
        q->withdrawals.timer = t;
    }
    if (!uv_is_active((uv_handle_t *)q->withdrawals.timer))
        uv_timer_start(q->withdrawals.timer, on_tick, 0, WITHDRAW_TICK_MS);
    return true;
}

int queue_withdraw(queue_t *q, const queue_message_t *m)
{
    const char *why = q->withdrawals.closing                ? "closing"
                      : q->withdrawals.n >= WITHDRAW_MAX    ? "too many withdrawals waiting"
                      : m->n_rcpts == 0 || m->n_bodies == 0 ? "no recipients or bodies"
                                                            : NULL;
    struct withdrawal *w = why ? NULL : withdrawal_new(q, m);
    if (w && !timer_running(q)) {
        withdrawal_free(w);
        w = NULL;
    }
    if (!w) {
        metric_add(q->withdrawals.outcomes[WITHDRAW_ABANDONED], 1);
        log_error("event=withdraw_abandoned mid=%s outcome=abandoned reason=\"%s\"", m->id,
                  why ? why : "out of memory");
        return -1;
    }
    struct withdrawal **tail = &q->withdrawals.head;
    while (*tail)
        tail = &(*tail)->next;
    *tail = w;
    q->withdrawals.n++;
    q->withdrawals.abandon_all = abandon_all;
    log_info("event=withdraw_queued mid=%s jobs=%u waiting=%u", w->mid, w->n_jobs,
             q->withdrawals.n);
    return 0;
}

static void abandon_all(queue_t *q)
{
    q->withdrawals.closing = true;
    for (struct withdrawal *w = q->withdrawals.head, *next; w; w = next) {
        next = w->next;
        report(w, WITHDRAW_ABANDONED, "closing before Redis answered");
    }
    q->withdrawals.head = NULL;
    q->withdrawals.n = 0;
    if (q->withdrawals.timer) {
        uv_close((uv_handle_t *)q->withdrawals.timer, on_timer_closed);
        q->withdrawals.timer = NULL;
    }
}
