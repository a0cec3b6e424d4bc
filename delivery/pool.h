/* Private to delivery/: a worker's connections, by destination (one next
 * hop, "host:port"): how many are open against destination_concurrency, the
 * deliveries waiting for one of them to end, and those kept open, idle,
 * after their transaction for the next job to the same place. */
#ifndef SEALPOST_DELIVERY_POOL_H
#define SEALPOST_DELIVERY_POOL_H

#include "delivery/client.h"
#include "delivery/hop.h"

#include <stdbool.h>

typedef struct pool pool_t;
typedef struct pool_user pool_user_t;

/* One delivery's hold on the pool, kept in the delivery. The user sets the
 * first part; the rest is the pool's, which the user may read. */
struct pool_user {
    hop_t hop;              /* where it connects, or waits to */
    const queue_job_t *job; /* what it sends; its domain's TLS policy must suit a kept connection */
    client_gate_cb gate;    /* for its transactions: see client_deliver */
    client_done_cb done;
    /* Its wait is over, or the kept connection it was given was found dead:
     * it starts again with pool_connect. A callback, not a call, because
     * the delivery above counts the transaction's time from here. */
    void (*start)(void *arg);
    void *arg; /* for gate, done and start */

    client_t *client;            /* the transaction under way, if any */
    struct destination *slot;    /* whose concurrency it counts against */
    struct pool_user *wait_next; /* in the destination's queue */
    bool waiting;
};

/* env (copied) is for the connections made; kept_closed(arg) runs after a
 * kept connection has closed, when pool_kept may have come to 0. */
pool_t *pool_new(const client_env_t *env, void (*kept_closed)(void *arg), void *arg);
void pool_free(pool_t *pool);
/* Kept connections not yet closed. */
unsigned pool_kept(const pool_t *pool);

/* Runs u's job to u->hop: on a suitable kept connection, on a new one, or,
 * when the destination is at its limit, once one ends (u->start is called
 * then). releasing: the worker is handing the job back, so the transaction
 * is aborted at once, on a new connection, without waiting its turn. -1
 * when there is no memory (nothing started, no done to come). */
int pool_connect(pool_t *pool, pool_user_t *u, bool releasing);
/* u's transaction ended and its result says kept: the connection goes to
 * the first waiting delivery it suits, or waits idle in the pool. */
void pool_keep(pool_t *pool, pool_user_t *u);
/* u's transaction ended: its connection slot is free for the next waiting. */
void pool_release(pool_user_t *u);
/* u's kept connection was found dead: u starts again on a fresh one, in the
 * slot it frees, before any waiting delivery gets it (or u could starve). */
void pool_reconnect(pool_user_t *u);
/* Takes u out of its destination's queue; false when it was not waiting. */
bool pool_unwait(pool_t *pool, pool_user_t *u);
/* The worker is stopping: idle connections quit, and none is kept again. */
void pool_stop(pool_t *pool);

#endif
