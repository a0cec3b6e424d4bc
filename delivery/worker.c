/* The worker's claim loop, and its start and stop.
 *
 * The worker keeps, per shard, the time it expects the shard to have work
 * again (from the "next" figure of its last claim there) and sleeps until the
 * earliest one. It learns of new work from a pub/sub wake-up sent by enqueue
 * and by a deferral, and rescans every shard after (re)subscribing and at a
 * slow interval in case a wake-up was lost: pub/sub is at-most-once.
 *
 * Each claimed job becomes an attempt (attempt.c), which calls back here
 * only through the attempt_env_t it is given: when it has ended, and when the
 * recipients it left pending are due again. Below the attempts sit the
 * connection pool (pool.c), the SMTP client (client.c), the resolver (dns.c),
 * the DKIM signer (signer.c) and the outcome (outcome.c, bounce.c); the
 * worker owns them all. */
#include "delivery/delivery.h"

#include "delivery/attempt.h"
#include "delivery/client.h"
#include "delivery/dns.h"
#include "delivery/outcome.h"
#include "delivery/pool.h"
#include "delivery/signer.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define RESCAN_MS      30000
#define REDIS_RETRY_MS 500
#define SIGNER_WAIT_MS 20
#define NEVER          UINT64_MAX
#define MAX_CLAIMS     16 /* claims out at once, each to a shard of its own */
#define BATCH_WAIT_MS  5  /* the longest a busy worker holds its claims back */

struct worker {
    uv_loop_t *loop;
    const config_t *cfg;
    queue_t *queue;
    SSL_CTX *tls;      /* the client's, for every connection */
    attempt_env_t env; /* what its attempts share; env.stopping after worker_stop */
    char owner[300];
    uint64_t *next_due; /* per shard, on uv_now's clock */
    uint32_t *wakes;    /* per shard, wake-ups received: one during a claim must not be lost */
    bool *claiming;     /* per shard, a claim is out */
    unsigned n_shards;
    unsigned cursor;
    uint64_t next_rescan;
    unsigned claims;   /* claims out */
    unsigned reserved; /* the slots they may fill */
    bool holding;      /* claims held back since held_since */
    uint64_t held_since;
    unsigned active;  /* attempts started and not yet ended */
    uv_timer_t timer; /* the next claim; after a stop, the grace period */
    bool closed;
    void (*on_stopped)(void *arg);
    void *on_stopped_arg;
};

static void tick(worker_t *w);

static void on_worker_closed(uv_handle_t *h)
{
    worker_t *w = h->data;
    void (*done)(void *) = w->on_stopped;
    void *arg = w->on_stopped_arg;
    signer_stop(w->env.signer); /* frees itself once its own handle is closed */
    dns_free(w->env.dns);
    pool_free(w->env.pool);
    SSL_CTX_free(w->tls);
    free(w->next_due);
    free(w->wakes);
    free(w->claiming);
    free(w);
    if (done) done(arg);
}

static void maybe_stopped(worker_t *w)
{
    if (w->env.stopping && w->active == 0 && pool_kept(w->env.pool) == 0 && w->claims == 0 &&
        !w->closed) {
        w->closed = true;
        uv_close((uv_handle_t *)&w->timer, on_worker_closed);
    }
}

/* ---- calls back from below ---- */

static void on_attempt_ended(void *arg)
{
    worker_t *w = arg;
    w->active--;
    maybe_stopped(w);
    tick(w);
}

/* A deferral: the shard has work again by then at the latest. */
static void on_due_again(unsigned shard, uint64_t due, void *arg)
{
    worker_t *w = arg;
    if (due < w->next_due[shard]) w->next_due[shard] = due;
}

static void on_kept_closed(void *arg)
{
    maybe_stopped(arg);
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
    w->claiming[cc->shard] = false;
    w->claims--;
    w->reserved -= cc->max;
    if (status < 0) {
        log_warn("event=claim_failed shard=%u error=\"%s\"", cc->shard, err);
        w->next_due[cc->shard] = now + REDIS_RETRY_MS;
    } else if ((n == cc->max && next_ms == 0) || w->wakes[cc->shard] != cc->wakes) {
        /* More is due (next_ms is counted after the jobs taken); or
         * something was enqueued while the claim was out, and the claim may
         * have looked before it was there. */
        w->next_due[cc->shard] = now;
    } else {
        w->next_due[cc->shard] = next_ms < 0 ? NEVER : now + (uint64_t)next_ms;
    }
    for (unsigned i = 0; i < n && status == 0; i++)
        if (attempt_start(&w->env, cc->shard, &jobs[i]) == 0) w->active++;
    free(cc);
    maybe_stopped(w);
    tick(w);
}

static void on_timer(uv_timer_t *t)
{
    tick(t->data);
}

static bool shard_due(const worker_t *w, unsigned s, uint64_t now)
{
    return !w->claiming[s] && w->next_due[s] <= now;
}

static int claim_shard(worker_t *w, unsigned s, unsigned max)
{
    struct claim_ctx *cc = malloc(sizeof *cc);
    if (!cc) return -1;
    *cc = (struct claim_ctx){w, s, max, w->wakes[s]};
    if (queue_claim(w->queue, s, w->owner, max, w->cfg->worker.lease_seconds * 1000,
                    w->cfg->worker.max_lease_expiries, on_claimed, cc) < 0) {
        free(cc);
        return -1;
    }
    w->claiming[s] = true;
    w->claims++;
    w->reserved += max;
    return 0;
}

/* A claim's smallest share of the free slots, but for the last ones. */
static unsigned claim_batch(const worker_t *w)
{
    unsigned batch = w->cfg->worker.concurrency / 8;
    return batch ? batch : 1;
}

/* Sends claims to the due shards, from the cursor on, up to MAX_CLAIMS out
 * at once, and shares the free slots among them, claim_batch at least each.
 * Claims in flight together reach Redis in one read and are answered after
 * one fsync: a burst spread over many shards waits for one round trip, not
 * for one per shard; and a worker with few free slots sends one claim for
 * them, not one per slot to as many shards. */
static void claim_due(worker_t *w, uint64_t now, unsigned slots)
{
    unsigned due[MAX_CLAIMS], n = 0, most = slots / claim_batch(w);
    if (most == 0) most = 1;
    for (unsigned i = 0; i < w->n_shards && n < MAX_CLAIMS - w->claims && n < most; i++) {
        unsigned s = (w->cursor + i) % w->n_shards;
        if (shard_due(w, s, now)) due[n++] = s;
    }
    for (unsigned i = 0; i < n; i++) {
        unsigned max = slots / (n - i); /* what is left, among the shards left: at least 1 */
        if (claim_shard(w, due[i], max) < 0) return;
        w->cursor = due[i] + 1;
        slots -= max;
    }
}

/* A busy worker lets claim_batch slots free before it claims, for
 * BATCH_WAIT_MS at most: under load its claims then come in batches, one
 * claim and its round trip for several jobs, while a worker with room
 * claims at once (an idle one has every slot, never fewer than a batch). (Claiming each slot as it
 * freed, each to a shard of its own, made three times the claims per job of one claim at a time.)
 */
static bool hold_claims(worker_t *w, uint64_t now, unsigned slots)
{
    if (slots >= claim_batch(w) || (w->holding && now - w->held_since >= BATCH_WAIT_MS)) {
        w->holding = false;
        return false;
    }
    if (!w->holding) {
        w->holding = true;
        w->held_since = now;
    }
    uv_timer_start(&w->timer, on_timer, BATCH_WAIT_MS - (now - w->held_since), 0);
    return true;
}

static void tick(worker_t *w)
{
    if (w->env.stopping) return;
    uint64_t now = uv_now(w->loop);
    if (now >= w->next_rescan) {
        for (unsigned s = 0; s < w->n_shards; s++)
            w->next_due[s] = 0;
        w->next_rescan = now + RESCAN_MS;
    }
    unsigned used = w->active + w->reserved;
    unsigned slots = used < w->cfg->worker.concurrency ? w->cfg->worker.concurrency - used : 0;
    if (!queue_ready(w->queue)) {
        uv_timer_start(&w->timer, on_timer, REDIS_RETRY_MS, 0);
        return;
    }
    if (!signer_ready(w->env.signer)) { /* its first load: a round trip, 5 s at most */
        uv_timer_start(&w->timer, on_timer, SIGNER_WAIT_MS, 0);
        return;
    }
    if (slots > 0) {
        if (hold_claims(w, now, slots)) return;
        claim_due(w, now, slots);
    }
    if (w->claims > 0 || slots == 0) return; /* a claim's reply or a finished delivery ticks */
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

/* The counters and histograms of delivery, made once (the same names give
 * the same series for a second worker). */
static void make_metrics(worker_t *w)
{
    metric_counters(w->env.outcome.counts, "sealpost_delivery_attempts_total",
                    "Delivery attempts per recipient, by outcome.", "outcome", outcome_names,
                    OUTCOMES);
    w->env.outcome.notices =
        metric_counter("sealpost_delivery_notifications_total",
                       "Delivery status notifications made: bounces and relay notices.", "");
    w->env.tampered =
        metric_counter("sealpost_queue_tampered_total",
                       "Jobs held unsent because their envelope did not match its MAC.", "");
    static const double seconds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double queued[] = {1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 432000};
    w->env.duration = metric_histogram("sealpost_delivery_duration_seconds",
                                       "Time an SMTP transaction took, connection set-up included.",
                                       "", seconds, sizeof seconds / sizeof seconds[0]);
    w->env.outcome.time_in_queue =
        metric_histogram("sealpost_delivery_time_in_queue_seconds",
                         "Time from acceptance to delivery, per recipient.", "", queued,
                         sizeof queued / sizeof queued[0]);
}

/* What the attempts share, apart from the metrics and the parts that can
 * fail to start. */
static void fill_env(worker_t *w, const seal_keyring_t *seal)
{
    attempt_env_t *env = &w->env;
    env->outcome.cfg = w->cfg;
    env->outcome.queue = w->queue;
    env->outcome.seal = seal;
    env->loop = w->loop;
    env->due_again = on_due_again;
    env->ended = on_attempt_ended;
    env->arg = w;
}

worker_t *worker_start(uv_loop_t *loop, const config_t *cfg, queue_t *queue,
                       const seal_keyring_t *seal, char *err, size_t errlen)
{
    worker_t *w = calloc(1, sizeof *w);
    if (w) w->next_due = calloc(queue_shards(queue), sizeof *w->next_due);
    if (w) w->wakes = calloc(queue_shards(queue), sizeof *w->wakes);
    if (w) w->claiming = calloc(queue_shards(queue), sizeof *w->claiming);
    if (!w || !w->next_due || !w->wakes || !w->claiming) {
        if (w) {
            free(w->next_due);
            free(w->wakes);
            free(w->claiming);
            free(w);
        }
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char id[33];
    util_random_id(id);
    snprintf(w->owner, sizeof w->owner, "%s:%d:%.8s", cfg->worker.helo_name, (int)getpid(), id);
    w->loop = loop;
    w->cfg = cfg;
    w->queue = queue;
    w->n_shards = queue_shards(queue);
    make_metrics(w);
    fill_env(w, seal);
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    if (!(w->env.dns = dns_new(loop, cfg->worker.dns_servers, err, errlen)) ||
        !(w->tls = tls_client_context(cfg->worker.tls_ca_file, err, errlen))) {
        uv_close((uv_handle_t *)&w->timer, on_worker_closed);
        return NULL;
    }
    client_env_t client_env = {.loop = loop, .cfg = cfg, .tls = w->tls};
    if (!(w->env.pool = pool_new(&client_env, on_kept_closed, w))) {
        snprintf(err, errlen, "out of memory");
        uv_close((uv_handle_t *)&w->timer, on_worker_closed);
        return NULL;
    }
    if (!(w->env.signer = signer_start(loop, cfg, queue, seal, err, errlen))) {
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

/* The grace period is over: the attempts still running are cut and their
 * jobs handed back (attempt_release_all). */
static void on_grace_over(uv_timer_t *t)
{
    worker_t *w = t->data;
    log_info("event=stop_grace_over active=%u", w->active);
    attempt_release_all(&w->env);
}

void worker_stop(worker_t *w, void (*done)(void *arg), void *arg)
{
    w->env.stopping = true;
    queue_unwatch(w->queue); /* no wake-up may reach w once it is freed */
    pool_stop(w->env.pool);
    w->on_stopped = done;
    w->on_stopped_arg = arg;
    uv_timer_stop(&w->timer);
    uv_timer_start(&w->timer, on_grace_over, (uint64_t)w->cfg->worker.stop_grace * 1000, 0);
    maybe_stopped(w);
}
