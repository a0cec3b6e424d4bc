/* Redis Cluster routing (see cluster.h), small on purpose: our keys are
 * built so that every call lives in one slot, so the router only has to find
 * that slot's master and follow the server when it says the slot moved. */
#include "queue/cluster.h"

#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ROUTER_MAX_NODES  64
#define MAX_REDIRECTS     8
#define REFRESH_MS        5000
#define REFRESH_DOWN_MS   1000 /* while a master we route to is disconnected */
#define REFRESH_SOON_MS   100
#define SLOTS_RETRY_MS    1000
#define RETRY_MIN_MS      10
#define INIT_RETRY_MS     250
#define INIT_RETRY_MAX_MS 5000
#define REPLICAS_CHECK_MS 2000

/* ---- slots, redirects, slot maps ---- */

/* CRC16-CCITT (XModem): polynomial 0x1021, initial value 0, as Redis
 * Cluster's specification defines the key slot. */
static uint16_t crc16(const char *p, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

unsigned cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open + 1 - key);
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) return crc16(open + 1, (size_t)(close - open - 1)) % 16384;
    }
    return crc16(key, len) % 16384;
}

int cluster_command_slot(int argc, const char **argv, const size_t *lens)
{
    if (argc < 2) return -1;
    const char *cmd = argv[0];
    if (!strcasecmp(cmd, "FCALL") || !strcasecmp(cmd, "FCALL_RO")) {
        if (argc < 4 || strtol(argv[2], NULL, 10) < 1) return -1;
        return (int)cluster_key_slot(argv[3], lens ? lens[3] : strlen(argv[3]));
    }
    static const char *const keyless[] = {"FUNCTION", "CLUSTER", "WAIT",   "PING",  "TIME",
                                          "INFO",     "SCAN",    "CONFIG", "SELECT"};
    for (size_t i = 0; i < sizeof keyless / sizeof keyless[0]; i++)
        if (!strcasecmp(cmd, keyless[i])) return -1;
    return (int)cluster_key_slot(argv[1], lens ? lens[1] : strlen(argv[1]));
}

enum cluster_redirect cluster_redirect_parse(const char *err, const char *answered_by,
                                             unsigned *slot, char *host, size_t hostlen, int *port)
{
    if (!strncmp(err, "TRYAGAIN", 8) || !strncmp(err, "CLUSTERDOWN", 11)) return REDIRECT_RETRY;
    enum cluster_redirect kind;
    if (!strncmp(err, "MOVED ", 6))
        kind = REDIRECT_MOVED;
    else if (!strncmp(err, "ASK ", 4))
        kind = REDIRECT_ASK;
    else
        return REDIRECT_NONE;
    const char *p = strchr(err, ' ') + 1;
    char *end;
    unsigned long s = strtoul(p, &end, 10);
    if (end == p || *end != ' ' || s >= CLUSTER_SLOTS) return REDIRECT_NONE;
    const char *addr = end + 1;
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= hostlen) return REDIRECT_NONE;
    long pt = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || pt < 1 || pt > 65535) return REDIRECT_NONE;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    /* An empty or "?" host means "the address you reached me at". */
    if ((!host[0] || !strcmp(host, "?")) &&
        snprintf(host, hostlen, "%s", answered_by) >= (int)hostlen)
        return REDIRECT_NONE;
    *slot = (unsigned)s;
    *port = (int)pt;
    return kind;
}

int cluster_slots_parse(const redisReply *r, const char *answered_by,
                        int (*each)(unsigned from, unsigned to, const char *host, int port,
                                    void *arg),
                        void *arg)
{
    if (!r || r->type != REDIS_REPLY_ARRAY) return -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *range = r->element[i];
        if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) return -1;
        const redisReply *master = range->element[2];
        if (range->element[0]->type != REDIS_REPLY_INTEGER ||
            range->element[1]->type != REDIS_REPLY_INTEGER || master->type != REDIS_REPLY_ARRAY ||
            master->elements < 2 || master->element[0]->type != REDIS_REPLY_STRING ||
            master->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        long long from = range->element[0]->integer, to = range->element[1]->integer;
        long long port = master->element[1]->integer;
        if (from < 0 || to < from || to >= CLUSTER_SLOTS || port < 1 || port > 65535) return -1;
        /* A NUL would cut the host into another name. */
        if (memchr(master->element[0]->str, 0, master->element[0]->len)) return -1;
        /* An empty or "?" host means "the address you reached me at". */
        const char *host = master->element[0]->str;
        if (!host[0] || !strcmp(host, "?")) host = answered_by;
        if (each((unsigned)from, (unsigned)to, host, (int)port, arg) < 0) return -1;
    }
    return 0;
}

bool cluster_single_error(const char *err)
{
    /* No cluster support, or CLUSTER renamed away or not permitted by an
     * ACL: a single Redis to us. Anything else (LOADING, BUSY, NOAUTH, too
     * many clients) may pass, and is asked again. */
    return strstr(err, "cluster support disabled") || strstr(err, "unknown command") ||
           !strncmp(err, "NOPERM", 6);
}

/* ---- the router ---- */

struct waiter {
    struct waiter *next;
    unsigned epoch;
    void (*cb)(int status, const char *err, void *arg);
    void *arg;
};

struct node {
    router_t *r;
    int index;
    unsigned id; /* never reused, unlike index */
    rconn_t *conn;
    bool ready;            /* has our library, on the current connection */
    uv_timer_t init_retry; /* after an error such as LOADING */
    unsigned init_backoff_ms;
    struct waiter *waiting;   /* for the next WAIT */
    struct waiter *in_wait;   /* covered by the WAIT in flight */
    unsigned wait_replicas;   /* of the WAIT to send */
    unsigned wait_timeout_ms; /* of the WAIT to send */
    bool role_in_flight;
    int replicas;           /* connected, per its last ROLE; -1 not known */
    char replicas_why[160]; /* why it is short of min_replicas, "" when not */
};

struct rreq {
    router_t *r;
    rconn_reply_cb cb;
    void *arg;
    router_origin_t *origin;
    char *cmd; /* formatted once, sent again after a redirect */
    size_t len;
    int slot;     /* -1: no key, the seed */
    int ask_node; /* send the next try to this node, after ASKING */
    int node;     /* the try in flight */
    unsigned redirects;
    uint64_t deadline; /* for TRYAGAIN and CLUSTERDOWN, in uv_now ms */
    unsigned retry_ms;
    uv_timer_t *retry;
    struct rreq *prev, *next; /* in the router's list while the retry timer runs */
};

enum router_mode { MODE_UNKNOWN, MODE_SINGLE, MODE_CLUSTER };

struct router {
    uv_loop_t *loop;
    redis_endpoint_t login; /* the seed's; each node gets its host and port */
    unsigned timeout_ms;
    const router_library_t *lib;
    uint16_t needed[CLUSTER_SLOTS]; /* the slots router_ready looks at, each once */
    unsigned n_needed;
    struct node *nodes[ROUTER_MAX_NODES]; /* [0] is the seed; NULL: retired */
    int n_nodes;                          /* slots used, holes included */
    unsigned next_id;
    bool prune_due;               /* a new slot map: retire the nodes it no longer names */
    metric_t *kept;               /* connections kept, the seed's included */
    int16_t owner[CLUSTER_SLOTS]; /* node index, -1 when unknown */
    enum router_mode mode;
    bool closing;
    struct rreq *retrying;  /* requests waiting for their retry timer */
    metric_t *redirects[3]; /* by enum cluster_redirect - 1 */
    bool refreshing;
    uv_timer_t refresh_timer; /* ticks every REFRESH_DOWN_MS */
    uint64_t refresh_due;     /* uv_now ms of the next periodic refresh */
    unsigned min_replicas;
    uv_timer_t replicas_timer;
    int open_timers; /* while closing */
};

static void router_refresh(router_t *r);
static void router_refresh_soon(router_t *r);
static void on_refresh_timer(uv_timer_t *t);

static void library_check(struct node *n);
static void replicas_check(struct node *n);

static void on_init_retry(uv_timer_t *t)
{
    struct node *n = t->data;
    if (rconn_connected(n->conn) && !n->ready) library_check(n);
}

/* Tries again later, backing off: a Redis loading its data (LOADING), a
 * replica (READONLY) or a full one (OOM) may take a while to change. */
static void library_retry(struct node *n, const char *why)
{
    log_error("event=function_load_failed redis=%s:%d error=\"%s\" retry_ms=%u",
              rconn_host(n->conn), rconn_port(n->conn), why, n->init_backoff_ms);
    uv_timer_start(&n->init_retry, on_init_retry, n->init_backoff_ms, 0);
    n->init_backoff_ms =
        n->init_backoff_ms * 2 > INIT_RETRY_MAX_MS ? INIT_RETRY_MAX_MS : n->init_backoff_ms * 2;
}

static void node_ready(struct node *n)
{
    n->ready = true;
    n->init_backoff_ms = INIT_RETRY_MS;
    log_info("event=queue_ready redis=%s:%d", rconn_host(n->conn), rconn_port(n->conn));
}

static void on_library_loaded(redisReply *reply, const char *err, void *arg)
{
    struct node *n = arg;
    if (n->r->closing) return;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        library_retry(n, reply ? reply->str : err);
    else
        node_ready(n);
}

static void on_library_digest(redisReply *reply, const char *err, void *arg)
{
    struct node *n = arg;
    router_t *r = n->r;
    if (r->closing) return;
    if (!reply) {
        library_retry(n, err);
        return;
    }
    if (reply->type == REDIS_REPLY_STRING && !strcmp(reply->str, r->lib->digest)) {
        node_ready(n); /* ours is there already: nothing to write */
        return;
    }
    const char *argv[] = {"FUNCTION", "LOAD", "REPLACE", r->lib->code};
    const size_t lens[] = {8, 4, 7, r->lib->len};
    if (rconn_command(n->conn, on_library_loaded, n, 4, argv, lens) < 0)
        library_retry(n, "not connected");
}

/* Asks the node which library it has (a read, which a replica or a full
 * Redis answers too) and loads ours only when it is missing or another. */
static void library_check(struct node *n)
{
    const char *argv[] = {"FCALL_RO", n->r->lib->digest_function, "0"};
    if (rconn_command(n->conn, on_library_digest, n, 3, argv, NULL) < 0)
        library_retry(n, "not connected");
}

/* Each new connection checks the library first (a Redis restarted without
 * its data, or a new master after failover, gets ours before our next
 * call), and a cluster may have changed: read the slot map again. */
static void on_node_connect(rconn_t *conn, void *arg)
{
    struct node *n = arg;
    (void)conn;
    n->ready = false;
    uv_timer_stop(&n->init_retry);
    n->init_backoff_ms = INIT_RETRY_MS;
    library_check(n);
    n->replicas = -1; /* another connection, maybe another role: asked again */
    if (n->r->min_replicas) replicas_check(n);
    if (n->r->mode == MODE_UNKNOWN)
        router_refresh(n->r);
    else if (n->r->mode == MODE_CLUSTER)
        router_refresh_soon(n->r);
}

static int node_find(router_t *r, const char *host, int port)
{
    for (int i = 0; i < r->n_nodes; i++)
        if (r->nodes[i] && rconn_port(r->nodes[i]->conn) == port &&
            !strcmp(rconn_host(r->nodes[i]->conn), host))
            return i;
    return -1;
}

static int node_free_slot(const router_t *r)
{
    for (int i = 1; i < r->n_nodes; i++)
        if (!r->nodes[i]) return i;
    return r->n_nodes < ROUTER_MAX_NODES ? r->n_nodes : -1;
}

/* The node at host:port, connecting to it the first time it is named. */
static int node_get(router_t *r, const char *host, int port)
{
    int i = node_find(r, host, port);
    if (i >= 0) return i;
    i = node_free_slot(r);
    if (i < 0) {
        log_error("event=redis_cluster_too_large nodes=%d", ROUTER_MAX_NODES);
        return -1;
    }
    struct node *n = calloc(1, sizeof *n);
    if (!n) return -1;
    n->r = r;
    n->index = i;
    n->id = ++r->next_id;
    n->replicas = -1;
    redis_endpoint_t ep = r->login;
    snprintf(ep.host, sizeof ep.host, "%s", host);
    ep.port = (uint16_t)port;
    n->conn = rconn_new(r->loop, &ep, r->timeout_ms, on_node_connect, n);
    config_redis_endpoint_clear(&ep);
    if (!n->conn) {
        free(n);
        return -1;
    }
    uv_timer_init(r->loop, &n->init_retry);
    n->init_retry.data = n;
    r->nodes[i] = n;
    if (i == r->n_nodes) r->n_nodes++;
    metric_add(r->kept, 1);
    return i;
}

struct slots_update {
    router_t *r;
    int16_t owner[CLUSTER_SLOTS];
};

static int slots_assign(unsigned from, unsigned to, const char *host, int port, void *arg)
{
    struct slots_update *u = arg;
    int i = node_get(u->r, host, port);
    if (i < 0) return -1;
    for (unsigned s = from; s <= to; s++)
        u->owner[s] = (int16_t)i;
    return 0;
}

static void on_slots(redisReply *reply, const char *err, void *arg)
{
    struct node *from = arg;
    router_t *r = from->r;
    r->refreshing = false;
    if (!reply) {
        log_warn("event=redis_slots_failed redis=%s:%d error=\"%s\"", rconn_host(from->conn),
                 rconn_port(from->conn), err);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        if (r->mode == MODE_CLUSTER || !cluster_single_error(reply->str)) {
            log_warn("event=redis_slots_failed redis=%s:%d error=\"%s\"", rconn_host(from->conn),
                     rconn_port(from->conn), reply->str);
            r->refresh_due = uv_now(r->loop) + SLOTS_RETRY_MS;
            return;
        }
        if (r->mode != MODE_SINGLE)
            log_info("event=redis_mode mode=single reason=\"%s\"", reply->str);
        r->mode = MODE_SINGLE;
        for (unsigned s = 0; s < CLUSTER_SLOTS; s++)
            r->owner[s] = (int16_t)from->index;
        return;
    }
    struct slots_update *u = malloc(sizeof *u);
    if (!u) return;
    u->r = r;
    memset(u->owner, 0xff, sizeof u->owner);
    if (cluster_slots_parse(reply, rconn_host(from->conn), slots_assign, u) < 0) {
        log_warn("event=redis_slots_failed redis=%s:%d error=\"unexpected reply\"",
                 rconn_host(from->conn), rconn_port(from->conn));
    } else {
        if (r->mode != MODE_CLUSTER) log_info("event=redis_mode mode=cluster");
        r->mode = MODE_CLUSTER;
        memcpy(r->owner, u->owner, sizeof r->owner);
        r->prune_due = true;
    }
    free(u);
}

/* Asks any connected node (the seed first) for the slot map. */
static void router_refresh(router_t *r)
{
    if (r->refreshing) return;
    r->refresh_due = uv_now(r->loop) + REFRESH_MS;
    static const char *const argv[] = {"CLUSTER", "SLOTS"};
    for (int i = 0; i < r->n_nodes; i++) {
        struct node *n = r->nodes[i];
        if (n && rconn_connected(n->conn) &&
            rconn_command(n->conn, on_slots, n, 2, (const char **)argv, NULL) == 0) {
            r->refreshing = true;
            return;
        }
    }
}

/* True when the master of a slot we use is not connected. A lost
 * connection says nothing to the router, and a node that sends nothing
 * (an ingress refusing sessions) meets no redirect: only the slot map
 * names the replica promoted in its place. */
static bool router_master_down(const router_t *r)
{
    for (unsigned k = 0; k < r->n_needed; k++) {
        int i = r->owner[r->needed[k]];
        if (i >= 0 && !rconn_connected(r->nodes[i]->conn)) return true;
    }
    return false;
}

static void on_node_closed(uv_handle_t *handle)
{
    free(handle->data);
}

/* used[i]: node i owns a slot or a retry is about to ASK it. */
static void router_nodes_in_use(const router_t *r, bool used[ROUTER_MAX_NODES])
{
    memset(used, 0, ROUTER_MAX_NODES * sizeof used[0]);
    for (unsigned s = 0; s < CLUSTER_SLOTS; s++)
        if (r->owner[s] >= 0) used[r->owner[s]] = true;
    for (const struct rreq *req = r->retrying; req; req = req->next)
        if (req->ask_node >= 0) used[req->ask_node] = true;
}

/* A node no slot names any more (a master that moved to another address,
 * as pods do, or was removed) is closed, so the table does not fill with
 * addresses that will never answer. Only an idle one: nothing of it in
 * flight (no reply, WAIT or ROLE pending) and no retry about to ASK it. The
 * seed stays, for commands without a key. */
static void router_prune(router_t *r)
{
    bool used[ROUTER_MAX_NODES];
    r->prune_due = false;
    router_nodes_in_use(r, used);
    for (int i = 1; i < r->n_nodes; i++) {
        struct node *n = r->nodes[i];
        if (!n || used[i] || n->waiting || !rconn_idle(n->conn)) continue;
        log_info("event=redis_node_retired redis=%s:%d reason=\"not in the slot map\"",
                 rconn_host(n->conn), rconn_port(n->conn));
        r->nodes[i] = NULL;
        rconn_free(n->conn);
        uv_close((uv_handle_t *)&n->init_retry, on_node_closed);
        metric_add(r->kept, -1);
    }
    while (r->n_nodes > 1 && !r->nodes[r->n_nodes - 1])
        r->n_nodes--;
}

/* The timer ticks every REFRESH_DOWN_MS; the map is read again every
 * REFRESH_MS, or at every tick while a master we route to is down. Nodes
 * are retired here, on a timer, never from inside a reply's callback, whose
 * connection must outlive it. */
static void on_refresh_timer(uv_timer_t *t)
{
    router_t *r = t->data;
    if (r->mode == MODE_SINGLE) return;
    if (r->prune_due) router_prune(r);
    if (uv_now(r->loop) >= r->refresh_due || router_master_down(r)) router_refresh(r);
}

static void router_refresh_soon(router_t *r)
{
    r->refresh_due = 0;
    if (!uv_is_active((uv_handle_t *)&r->refresh_timer) ||
        uv_timer_get_due_in(&r->refresh_timer) > REFRESH_SOON_MS)
        uv_timer_start(&r->refresh_timer, on_refresh_timer, REFRESH_SOON_MS, REFRESH_DOWN_MS);
}

/* The router is freed once both its timers are closed. */
static void on_router_closed(uv_handle_t *handle)
{
    router_t *r = handle->data;
    if (--r->open_timers == 0) free(r);
}

static void router_close_timers(router_t *r)
{
    r->open_timers = 2;
    uv_close((uv_handle_t *)&r->replicas_timer, on_router_closed);
    uv_close((uv_handle_t *)&r->refresh_timer, on_router_closed);
}

router_t *router_new(uv_loop_t *loop, const redis_endpoint_t *seed, unsigned timeout_ms,
                     const router_library_t *lib)
{
    router_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->loop = loop;
    r->login = *seed;
    r->timeout_ms = timeout_ms;
    r->lib = lib;
    memset(r->owner, 0xff, sizeof r->owner);
    static const char *const kinds[] = {"kind=\"moved\"", "kind=\"ask\"", "kind=\"retry\""};
    for (int k = 0; k < 3; k++)
        r->redirects[k] = metric_counter(
            "sealpost_redis_redirects_total",
            "Redis Cluster redirects followed: the slot moved (moved), is moving (ask), or "
            "is not available for now, TRYAGAIN or CLUSTERDOWN (retry).",
            kinds[k]);
    uv_timer_init(loop, &r->refresh_timer);
    r->refresh_timer.data = r;
    uv_timer_init(loop, &r->replicas_timer);
    r->replicas_timer.data = r;
    r->kept = metric_gauge("sealpost_redis_nodes",
                           "Redis nodes this process keeps a connection to: the configured "
                           "one, and each master in the cluster's slot map.",
                           "");
    if (node_get(r, seed->host, seed->port) < 0) {
        config_redis_endpoint_clear(&r->login);
        router_close_timers(r); /* frees r */
        return NULL;
    }
    r->refresh_due = uv_now(loop) + REFRESH_MS;
    uv_timer_start(&r->refresh_timer, on_refresh_timer, REFRESH_DOWN_MS, REFRESH_DOWN_MS);
    return r;
}

static void answer_waiters(struct waiter *w, int status, const char *why)
{
    while (w) {
        struct waiter *next = w->next;
        w->cb(status, why, w->arg);
        free(w);
        w = next;
    }
}

void router_need_key(router_t *r, const char *key)
{
    unsigned slot = cluster_key_slot(key, strlen(key));
    for (unsigned k = 0; k < r->n_needed; k++) /* at start, a few hundred at most */
        if (r->needed[k] == slot) return;
    r->needed[r->n_needed++] = (uint16_t)slot;
}

/* Ready when the master of every slot we use is connected and has our
 * library: a slot of the cluster that we do not use, uncovered or on a
 * master that is down, stops nothing. */
bool router_ready(const router_t *r)
{
    if (r->mode == MODE_UNKNOWN) return false;
    for (unsigned k = 0; k < r->n_needed; k++) {
        int i = r->owner[r->needed[k]];
        if (i < 0 || !rconn_connected(r->nodes[i]->conn) || !r->nodes[i]->ready) return false;
    }
    return r->n_needed > 0;
}

const char *router_failure(const router_t *r)
{
    for (int i = 0; i < r->n_nodes; i++) {
        const char *why = r->nodes[i] ? rconn_failure(r->nodes[i]->conn) : "";
        if (*why) return why;
    }
    return NULL;
}

/* ---- replicas ---- */

/* Whether a node is the master of a slot we use. */
static bool node_routed(const router_t *r, int index)
{
    for (unsigned k = 0; k < r->n_needed; k++)
        if (r->owner[r->needed[k]] == index) return true;
    return false;
}

static void replicas_set(struct node *n, int replicas, const char *error)
{
    char why[sizeof n->replicas_why];
    unsigned min = n->r->min_replicas;
    if (error)
        snprintf(why, sizeof why, "redis %s:%d: replicas not counted: %s", rconn_host(n->conn),
                 rconn_port(n->conn), error);
    else if (replicas < (int)min)
        snprintf(why, sizeof why, "redis %s:%d has %d of %u replicas", rconn_host(n->conn),
                 rconn_port(n->conn), replicas, min);
    else
        why[0] = 0;
    if (strcmp(why, n->replicas_why)) {
        if (why[0])
            log_warn("event=redis_replicas_short redis=%s:%d replicas=%d min_replicas=%u "
                     "error=\"%s\"",
                     rconn_host(n->conn), rconn_port(n->conn), replicas, min, why);
        else
            log_info("event=redis_replicas_ok redis=%s:%d replicas=%d min_replicas=%u",
                     rconn_host(n->conn), rconn_port(n->conn), replicas, min);
        memcpy(n->replicas_why, why, sizeof why);
    }
    n->replicas = replicas;
}

/* ROLE on a master: "master", its offset, and one entry per connected
 * replica. */
static void on_role(redisReply *reply, const char *err, void *arg)
{
    struct node *n = arg;
    n->role_in_flight = false;
    if (n->r->closing) return;
    if (!reply) return; /* the connection is gone: router_ready says so */
    if (reply->type == REDIS_REPLY_ERROR) {
        replicas_set(n, -1, reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING || strcmp(reply->element[0]->str, "master") ||
        reply->element[2]->type != REDIS_REPLY_ARRAY) {
        replicas_set(n, -1, "not a master");
        return;
    }
    replicas_set(n, (int)reply->element[2]->elements, NULL);
    (void)err;
}

/* Counts the node's connected replicas with ROLE. Not WAIT 0 0: it counts
 * the replicas that acknowledged this connection's last write, and replicas
 * acknowledge once a second, so on a connection that enqueues it would
 * often say 0 of a healthy replica. */
static void replicas_check(struct node *n)
{
    if (n->role_in_flight || !rconn_connected(n->conn)) return;
    static const char *const argv[] = {"ROLE"};
    if (rconn_command(n->conn, on_role, n, 1, (const char **)argv, NULL) == 0)
        n->role_in_flight = true;
}

static void on_replicas_timer(uv_timer_t *t)
{
    router_t *r = t->data;
    for (int i = 0; i < r->n_nodes; i++)
        if (node_routed(r, i)) replicas_check(r->nodes[i]);
}

void router_check_replicas(router_t *r, unsigned min_replicas)
{
    r->min_replicas = min_replicas;
    for (int i = 0; i < r->n_nodes; i++)
        if (r->nodes[i]) r->nodes[i]->replicas_why[0] = 0;
    if (!min_replicas) {
        uv_timer_stop(&r->replicas_timer);
        return;
    }
    uv_timer_start(&r->replicas_timer, on_replicas_timer, 0, REPLICAS_CHECK_MS);
}

const char *router_replicas_short(const router_t *r)
{
    if (!r->min_replicas) return NULL;
    for (int i = 0; i < r->n_nodes; i++) {
        const struct node *n = r->nodes[i];
        if (!node_routed(r, i)) continue;
        if (n->replicas_why[0]) return n->replicas_why;
        if (n->replicas < 0) return "replicas not counted yet";
    }
    return NULL;
}

/* ---- commands ---- */

static void on_retry_closed(uv_handle_t *handle)
{
    struct rreq *req = handle->data;
    free(req->retry);
    redisFreeCommand(req->cmd);
    free(req);
}

static void rreq_free(struct rreq *req)
{
    if (req->retry) {
        uv_close((uv_handle_t *)req->retry, on_retry_closed);
        return;
    }
    redisFreeCommand(req->cmd);
    free(req);
}

static void rreq_finish(struct rreq *req, redisReply *reply, const char *err)
{
    if (req->origin && req->node >= 0) {
        const struct node *n = req->r->nodes[req->node];
        req->origin->node = req->node;
        req->origin->id = n->id;
        req->origin->epoch = rconn_epoch(n->conn);
    }
    req->cb(reply, err, req->arg);
    rreq_free(req);
}

static void on_rreq_reply(redisReply *reply, const char *err, void *arg);

/* One try: to the node an ASK named, else the slot's master, else the seed. */
static int rreq_send(struct rreq *req)
{
    router_t *r = req->r;
    bool asking = req->ask_node >= 0;
    int i = asking                                       ? req->ask_node
            : req->slot >= 0 && r->owner[req->slot] >= 0 ? r->owner[req->slot]
                                                         : 0;
    req->node = i;
    rconn_t *conn = r->nodes[i]->conn;
    int rc;
    if (r->mode == MODE_SINGLE && rconn_connected(conn)) {
        /* A single Redis redirects nothing: the command is handed over, not
         * copied, which would double the memory a large message takes. */
        rc = rconn_send_owned(conn, on_rreq_reply, req, req->cmd, req->len, asking);
        req->cmd = NULL;
    } else {
        rc = rconn_send(conn, on_rreq_reply, req, req->cmd, req->len, asking);
    }
    if (rc < 0) {
        /* A master gone: after a failover the map names its replacement. */
        if (r->mode == MODE_CLUSTER) router_refresh_soon(r);
        return -1;
    }
    req->ask_node = -1;
    return 0;
}

static bool rreq_retry_later(struct rreq *req);

/* Sends again after a redirect. A node just named may still be connecting:
 * a try that cannot go out is made again later, until the deadline. */
static void rreq_resend(struct rreq *req)
{
    if (rreq_send(req) == 0 || rreq_retry_later(req)) return;
    req->node = -1;
    rreq_finish(req, NULL, "not connected");
}

static void retrying_remove(struct rreq *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else
        req->r->retrying = req->next;
    if (req->next) req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static void on_retry_timer(uv_timer_t *t)
{
    struct rreq *req = t->data;
    retrying_remove(req);
    rreq_resend(req);
}

/* TRYAGAIN (a slot half-migrated) and CLUSTERDOWN (a failover under way)
 * pass by themselves: try again, backing off, until the deadline. */
static bool rreq_retry_later(struct rreq *req)
{
    uv_loop_t *loop = req->r->loop;
    if (uv_now(loop) + req->retry_ms > req->deadline) return false;
    if (!req->retry) {
        req->retry = malloc(sizeof *req->retry);
        if (!req->retry) return false;
        uv_timer_init(loop, req->retry);
        req->retry->data = req;
    }
    uv_timer_start(req->retry, on_retry_timer, req->retry_ms, 0);
    req->retry_ms *= 2;
    req->next = req->r->retrying;
    if (req->next) req->next->prev = req;
    req->r->retrying = req;
    return true;
}

/* Follows the server's answer about where the slot is; false when the
 * reply is the answer. */
static bool rreq_redirected(struct rreq *req, const redisReply *reply)
{
    router_t *r = req->r;
    unsigned slot;
    char host[256];
    int port;
    if (!req->cmd) return false; /* sent to a single Redis: nothing to send again */
    enum cluster_redirect kind = cluster_redirect_parse(
        reply->str, rconn_host(r->nodes[req->node]->conn), &slot, host, sizeof host, &port);
    if (kind != REDIRECT_NONE) metric_add(r->redirects[kind - 1], 1);
    if (kind == REDIRECT_RETRY) {
        /* ASK, then TRYAGAIN at the importing node, then ASK again is a
         * slot on its way: the deadline bounds it, not the redirect count. */
        req->redirects = 0;
        return rreq_retry_later(req);
    }
    if (kind == REDIRECT_NONE || ++req->redirects > MAX_REDIRECTS) return false;
    int i = node_get(r, host, port);
    if (i < 0) return false;
    if (kind == REDIRECT_MOVED) {
        r->owner[slot] = (int16_t)i; /* at once for this slot; the rest from CLUSTER SLOTS */
        router_refresh_soon(r);
    } else {
        req->ask_node = i; /* for this command only; the map stays */
    }
    rreq_resend(req);
    return true;
}

static void on_rreq_reply(redisReply *reply, const char *err, void *arg)
{
    struct rreq *req = arg;
    if (reply && reply->type == REDIS_REPLY_ERROR && rreq_redirected(req, reply)) return;
    rreq_finish(req, reply, err);
}

int router_command(router_t *r, rconn_reply_cb cb, void *arg, router_origin_t *origin, int argc,
                   const char **argv, const size_t *lens)
{
    struct rreq *req = calloc(1, sizeof *req);
    if (!req) return -1;
    int len = redisFormatCommandArgv(&req->cmd, argc, argv, lens);
    if (len < 0) {
        free(req);
        return -1;
    }
    req->r = r;
    req->cb = cb;
    req->arg = arg;
    req->origin = origin;
    req->len = (size_t)len;
    req->slot = cluster_command_slot(argc, argv, lens);
    req->ask_node = -1;
    req->deadline = uv_now(r->loop) + r->timeout_ms;
    req->retry_ms = RETRY_MIN_MS;
    if (rreq_send(req) < 0) {
        rreq_free(req);
        return -1;
    }
    return 0;
}

/* ---- WAIT, grouped ---- */

static void wait_send(struct node *n);

static void on_wait_reply(redisReply *reply, const char *err, void *arg)
{
    struct node *n = arg;
    struct waiter *w = n->in_wait;
    n->in_wait = NULL;
    char why[128];
    long long acked = reply && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    if (acked < 0) {
        snprintf(why, sizeof why, "WAIT failed: %s",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str
                 : err                                     ? err
                                                           : "unexpected reply");
    } else if (acked < (long long)n->wait_replicas) {
        snprintf(why, sizeof why, "%lld of %u replicas acknowledged", acked, n->wait_replicas);
    } else {
        why[0] = 0;
    }
    if (why[0])
        log_warn("event=redis_replicas_behind redis=%s:%d error=\"%s\"", rconn_host(n->conn),
                 rconn_port(n->conn), why);
    answer_waiters(w, why[0] ? -1 : 0, why[0] ? why : NULL);
    if (n->waiting && !n->in_wait) wait_send(n);
}

/* Sends one WAIT for everyone waiting: it covers every write this
 * connection made before it. A waiter whose write went over an earlier
 * connection cannot be covered (a new connection has written nothing, and
 * WAIT would count replicas that never saw the write). */
static void wait_send(struct node *n)
{
    struct waiter *w = n->waiting, *keep = NULL, *lost = NULL;
    n->waiting = NULL;
    unsigned epoch = rconn_epoch(n->conn);
    while (w) {
        struct waiter *next = w->next;
        struct waiter **list = w->epoch == epoch ? &keep : &lost;
        w->next = *list;
        *list = w;
        w = next;
    }
    answer_waiters(lost, -1, "connection to Redis lost before WAIT");
    if (!keep) return;
    char replicas[16], ms[16];
    snprintf(replicas, sizeof replicas, "%u", n->wait_replicas);
    snprintf(ms, sizeof ms, "%u", n->wait_timeout_ms);
    const char *argv[] = {"WAIT", replicas, ms};
    n->in_wait = keep;
    if (rconn_command(n->conn, on_wait_reply, n, 3, argv, NULL) < 0) {
        n->in_wait = NULL;
        answer_waiters(keep, -1, "connection to Redis lost before WAIT");
    }
}

int router_wait(router_t *r, const router_origin_t *origin, unsigned replicas, unsigned timeout_ms,
                void (*cb)(int status, const char *err, void *arg), void *arg)
{
    if (origin->node < 0 || origin->node >= r->n_nodes) return -1;
    struct node *n = r->nodes[origin->node];
    if (!n || n->id != origin->id) return -1; /* retired since, its index maybe reused */
    if (!rconn_connected(n->conn) || rconn_epoch(n->conn) != origin->epoch) return -1;
    struct waiter *w = calloc(1, sizeof *w);
    if (!w) return -1;
    w->epoch = origin->epoch;
    w->cb = cb;
    w->arg = arg;
    w->next = n->waiting;
    n->waiting = w;
    n->wait_replicas = replicas;
    n->wait_timeout_ms = timeout_ms;
    if (!n->in_wait) wait_send(n);
    return 0;
}

/* ---- closing ---- */

void router_free(router_t *r)
{
    if (!r) return;
    r->closing = true;
    struct rreq *list = r->retrying;
    r->retrying = NULL;
    while (list) { /* their callbacks run now, as those of sent requests do */
        struct rreq *req = list;
        list = req->next;
        req->prev = req->next = NULL;
        uv_timer_stop(req->retry);
        req->node = -1;
        rreq_finish(req, NULL, "closing");
    }
    for (int i = 0; i < r->n_nodes; i++) {
        struct node *n = r->nodes[i];
        if (!n) continue;
        rconn_free(n->conn); /* runs pending callbacks, WAIT's included */
        answer_waiters(n->waiting, -1, "closing");
        uv_close((uv_handle_t *)&n->init_retry, on_node_closed);
        metric_add(r->kept, -1);
    }
    uv_timer_stop(&r->refresh_timer);
    uv_timer_stop(&r->replicas_timer);
    config_redis_endpoint_clear(&r->login);
    router_close_timers(r); /* frees r */
}
