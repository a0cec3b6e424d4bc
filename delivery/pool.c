/* The destination pool. A destination is one next hop ("host:port"); it
 * exists while connections to it are open or waited for. Its active count
 * includes the kept idle connections, which still hold their slot: an idle
 * connection that does not suit the next delivery gives way to it rather
 * than let it wait for nothing.
 *
 * The pool knows a delivery only by its pool_user_t: where it goes, what it
 * sends, and the callbacks to hand to the client and to start it again, so
 * that it needs nothing from the delivery above it. */
#include "delivery/pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A connection kept open after its transaction, for the next job to the
 * same destination. */
typedef struct idle_conn {
    client_t *client;
    struct idle_conn *next;
} idle_conn_t;

typedef struct destination {
    pool_t *pool;
    char key[300];   /* "host:port" */
    unsigned active; /* connections open, idle ones included */
    idle_conn_t *idle;
    pool_user_t *waiting, *waiting_tail;
    /* Deliveries being started from here: one whose start fails frees its
     * slot and so comes back here; the destination stays until they return. */
    unsigned starting;
    struct destination *next;
} destination_t;

struct pool {
    client_env_t env;
    destination_t *destinations; /* with connections open or waited for */
    unsigned kept;               /* kept connections not yet closed */
    bool stopping;
    void (*kept_closed)(void *arg);
    void *arg;
};

pool_t *pool_new(const client_env_t *env, void (*kept_closed)(void *arg), void *arg)
{
    pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->env = *env;
    p->kept_closed = kept_closed;
    p->arg = arg;
    return p;
}

/* By the time the worker frees it no connection is open, so every
 * destination has gone already; this is for a worker that never ran. */
void pool_free(pool_t *p)
{
    if (!p) return;
    while (p->destinations) {
        destination_t *x = p->destinations;
        p->destinations = x->next;
        while (x->idle) {
            idle_conn_t *ic = x->idle;
            x->idle = ic->next;
            free(ic);
        }
        free(x);
    }
    free(p);
}

unsigned pool_kept(const pool_t *p)
{
    return p->kept;
}

static destination_t *destination_get(pool_t *p, const net_hostport_t *addr)
{
    char key[300];
    snprintf(key, sizeof key, "%s:%u", addr->host, addr->port);
    for (destination_t *x = p->destinations; x; x = x->next)
        if (!strcmp(x->key, key)) return x;
    destination_t *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    memcpy(x->key, key, sizeof key);
    x->pool = p;
    x->next = p->destinations;
    p->destinations = x;
    return x;
}

static void destination_drop_if_idle(destination_t *x)
{
    if (x->active || x->waiting || x->idle || x->starting) return;
    for (destination_t **link = &x->pool->destinations; *link; link = &(*link)->next)
        if (*link == x) {
            *link = x->next;
            free(x);
            return;
        }
}

static pool_user_t *pop_waiting(destination_t *x)
{
    pool_user_t *next = x->waiting;
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
    x->starting++;
    while (x->waiting && x->active < x->pool->env.cfg->worker.destination_concurrency) {
        pool_user_t *next = pop_waiting(x);
        next->start(next->arg);
    }
    x->starting--;
    destination_drop_if_idle(x);
}

/* A connection to the destination ended: the next delivery waiting for it
 * goes now. */
static void slot_freed(destination_t *x)
{
    x->active--;
    wake_waiting(x);
}

void pool_release(pool_user_t *u)
{
    destination_t *x = u->slot;
    u->slot = NULL;
    u->client = NULL;
    if (x) slot_freed(x);
}

void pool_reconnect(pool_user_t *u)
{
    destination_t *x = u->slot;
    u->slot = NULL;
    u->client = NULL;
    x->active--;
    x->starting++;
    u->start(u->arg);
    x->starting--;
    wake_waiting(x);
}

/* A kept connection closed (idle too long, closed by the server, or told
 * to quit): out of the pool, and its slot is free. */
static void on_kept_closed(client_t *client, void *arg)
{
    destination_t *x = arg;
    pool_t *p = x->pool;
    for (idle_conn_t **link = &x->idle; *link; link = &(*link)->next)
        if ((*link)->client == client) {
            idle_conn_t *gone = *link;
            *link = gone->next;
            free(gone);
            break;
        }
    p->kept--;
    slot_freed(x);
    p->kept_closed(p->arg);
}

/* What a connection to the hop goes by: its MX name, or "host:port". */
static const char *label_of(const pool_user_t *u, const destination_t *x)
{
    return u->hop.name[0] ? u->hop.name : x->key;
}

/* Whether an idle connection suits the delivery: the same MX name (for SNI
 * and certificate checks) and the same TLS policy. */
static bool suits(const pool_user_t *u, const destination_t *x, client_t *client)
{
    return !strcmp(client_name(client), label_of(u, x)) &&
           client_tls_policy(client) == config_tls_policy_for(x->pool->env.cfg, u->job->domain);
}

/* Runs the delivery on a kept connection (its slot moves along). */
static bool reuse(destination_t *x, pool_user_t *u, client_t *client)
{
    if (client_reuse(client, u->job, u->gate, u->done, u->arg) < 0) return false;
    u->slot = x;
    u->client = client;
    return true;
}

/* The transaction left its connection open: the first waiting delivery it
 * suits takes it now, else it waits in the pool (or quits, when stopping
 * or when a waiting delivery needs the slot for another name). */
void pool_keep(pool_t *p, pool_user_t *u)
{
    destination_t *x = u->slot;
    client_t *client = u->client;
    u->slot = NULL;
    u->client = NULL;
    p->kept++;
    client_idle(client, on_kept_closed, x);
    pool_user_t *next = p->stopping ? NULL : x->waiting;
    if (next && suits(next, x, client)) {
        pop_waiting(x);
        p->kept--;
        if (reuse(x, next, client)) return;
        p->kept++;
        next->start(next->arg);
    }
    idle_conn_t *ic = next || p->stopping ? NULL : malloc(sizeof *ic);
    if (!ic) {
        client_quit(client); /* on_kept_closed follows */
        return;
    }
    ic->client = client;
    ic->next = x->idle;
    x->idle = ic;
}

/* Takes a suitable idle connection out of the pool, or NULL. */
static client_t *take_idle(destination_t *x, const pool_user_t *u)
{
    for (idle_conn_t **link = &x->idle; *link; link = &(*link)->next) {
        client_t *client = (*link)->client;
        if (!client_is_idle(client) || !suits(u, x, client)) continue;
        idle_conn_t *gone = *link;
        *link = gone->next;
        free(gone);
        x->pool->kept--;
        return client;
    }
    return NULL;
}

/* An idle connection that does not suit the delivery gives way to it (out
 * of the pool at once, so the next arrival picks another). */
static void give_way(destination_t *x)
{
    for (idle_conn_t **link = &x->idle; *link; link = &(*link)->next) {
        idle_conn_t *ic = *link;
        if (!client_is_idle(ic->client)) continue; /* quitting already */
        *link = ic->next;
        client_quit(ic->client);
        free(ic);
        return;
    }
}

/* Waits for a connection to this destination to end; the delivery's lease
 * keeps being renewed meanwhile. */
static void wait_turn(destination_t *x, pool_user_t *u)
{
    u->waiting = true;
    u->wait_next = NULL;
    if (x->waiting_tail)
        x->waiting_tail->wait_next = u;
    else
        x->waiting = u;
    x->waiting_tail = u;
}

int pool_connect(pool_t *p, pool_user_t *u, bool releasing)
{
    destination_t *x = destination_get(p, &u->hop.addr);
    if (!x) return -1;
    client_t *idle = releasing ? NULL : take_idle(x, u);
    if (idle && reuse(x, u, idle)) return 0;
    if (idle) { /* no memory for the job on it: give its slot back */
        p->kept++;
        client_quit(idle);
    }
    if (x->active >= p->env.cfg->worker.destination_concurrency && !releasing) {
        give_way(x);
        wait_turn(x, u);
        return 0;
    }
    x->active++;
    u->slot = x;
    u->client = client_deliver(&p->env, &u->hop, u->job, u->gate, u->done, u->arg);
    if (!u->client) {
        pool_release(u);
        return -1;
    }
    if (releasing) client_abort(u->client);
    return 0;
}

bool pool_unwait(pool_t *p, pool_user_t *u)
{
    if (!u->waiting) return false;
    destination_t *x = destination_get(p, &u->hop.addr);
    pool_user_t *prev = NULL;
    for (pool_user_t *w = x ? x->waiting : NULL; w; prev = w, w = w->wait_next) {
        if (w != u) continue;
        if (prev)
            prev->wait_next = w->wait_next;
        else
            x->waiting = w->wait_next;
        if (x->waiting_tail == w) x->waiting_tail = prev;
        break;
    }
    u->waiting = false;
    return true;
}

void pool_stop(pool_t *p)
{
    p->stopping = true;
    for (destination_t *x = p->destinations; x; x = x->next)
        for (idle_conn_t *ic = x->idle; ic; ic = ic->next)
            client_quit(ic->client);
}
