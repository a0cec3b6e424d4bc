/* Private to delivery/: one delivery attempt of a claimed job, from fetching
 * it to recording what came of it. The worker's claim loop starts attempts
 * and learns, through the callbacks it gave, when one has ended and when
 * the recipients it left pending are due again. */
#ifndef SEALPOST_DELIVERY_ATTEMPT_H
#define SEALPOST_DELIVERY_ATTEMPT_H

#include "delivery/dns.h"
#include "delivery/outcome.h"
#include "delivery/pool.h"
#include "delivery/signer.h"
#include "queue/queue.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct attempt attempt_t;

/* What the attempts of one worker share. The worker fills it in, owns what
 * it points to, and keeps it until the last attempt has ended. */
typedef struct attempt_env {
    outcome_env_t outcome; /* cfg, queue and seal among what it holds */
    uv_loop_t *loop;
    dns_t *dns;
    pool_t *pool;
    signer_t *signer;   /* DKIM: signs each body right after it is unsealed */
    metric_t *duration; /* of one SMTP transaction */
    metric_t *tampered; /* jobs held because their envelope failed its MAC */
    bool stopping;      /* set by the worker's stop: a failed fetch is not tried again */
    attempt_t *active;  /* the attempts under way: attempt.c keeps the list */
    /* Calls back up to the worker. An attempt left recipients of shard
     * pending, due again at due (on uv_now's clock): */
    void (*due_again)(unsigned shard, uint64_t due, void *arg);
    /* An attempt has ended and is freed: */
    void (*ended)(void *arg);
    void *arg;
} attempt_env_t;

/* Fetches the claimed job and delivers it; env->ended runs when it is done,
 * never before this returns. -1 (and no ended) when there is no memory: its
 * lease runs out, and the job is tried again. */
int attempt_start(attempt_env_t *env, unsigned shard, const queue_claimed_t *claimed);
/* The stopping worker's grace period is over: every attempt under way is
 * cut (before its final dot nothing is delivered) and its job handed back,
 * due now, so another worker takes it without waiting for the lease. */
void attempt_release_all(attempt_env_t *env);

#endif
