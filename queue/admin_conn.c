/* The administration connection: blocking hiredis, for the CLI. On Redis
 * Cluster it reads the slot map once, connects to each master when first
 * needed, and follows MOVED, ASK, TRYAGAIN and CLUSTERDOWN like the
 * asynchronous router does (cluster.c). Writes are calls of the functions
 * library, which it loads on a master that does not have it yet (the
 * command line may come before any node, as `sealpost users add` does). */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ADMIN_MAX_NODES 64
#define ADMIN_MAX_TRIES 16

struct admin_node {
    char host[256];
    int port;
    redisContext *ctx; /* NULL until first used */
};

struct queue_admin {
    struct timeval tv;
    struct admin_node nodes[ADMIN_MAX_NODES]; /* [0] is the address given */
    int n_nodes;
    int16_t *owner;    /* slot -> node; NULL on a single Redis */
    library_t library; /* prepared when first loaded */
};

static int admin_node_get(queue_admin_t *a, const char *host, int port)
{
    for (int i = 0; i < a->n_nodes; i++)
        if (a->nodes[i].port == port && !strcmp(a->nodes[i].host, host)) return i;
    if (a->n_nodes == ADMIN_MAX_NODES) return -1;
    struct admin_node *n = &a->nodes[a->n_nodes];
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    n->ctx = NULL;
    return a->n_nodes++;
}

static redisContext *admin_node_ctx(queue_admin_t *a, int i, char *err, size_t errlen)
{
    struct admin_node *n = &a->nodes[i];
    if (n->ctx) return n->ctx;
    redisContext *ctx = redisConnectWithTimeout(n->host, n->port, a->tv);
    if (!ctx || ctx->err) {
        snprintf(err, errlen, "cannot reach Redis at %s:%d: %s", n->host, n->port,
                 ctx ? ctx->errstr : "out of memory");
        redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, a->tv);
    n->ctx = ctx;
    return ctx;
}

static int slots_assign(unsigned from, unsigned to, const char *host, int port, void *arg)
{
    queue_admin_t *a = arg;
    int i = admin_node_get(a, host, port);
    if (i < 0) return -1;
    for (unsigned s = from; s <= to; s++)
        a->owner[s] = (int16_t)i;
    return 0;
}

/* A single Redis answers CLUSTER SLOTS with an error; a cluster node with
 * the map. */
static int admin_read_slots(queue_admin_t *a, char *err, size_t errlen)
{
    redisReply *r = redisCommand(a->nodes[0].ctx, "CLUSTER SLOTS");
    if (!r) {
        snprintf(err, errlen, "redis: %s", a->nodes[0].ctx->errstr);
        return -1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR && cluster_single_error(r->str)) {
        /* a single Redis */
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str); /* LOADING and the like: try again */
        rc = -1;
    } else if (!(a->owner = malloc(CLUSTER_SLOTS * sizeof *a->owner))) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    } else {
        memset(a->owner, 0xff, CLUSTER_SLOTS * sizeof *a->owner);
        if (cluster_slots_parse(r, a->nodes[0].host, slots_assign, a) < 0) {
            snprintf(err, errlen, "redis: unexpected CLUSTER SLOTS reply");
            rc = -1;
        }
    }
    freeReplyObject(r);
    return rc;
}

queue_admin_t *queue_admin_open(const net_hostport_t *redis, unsigned timeout_ms, char *err,
                                size_t errlen)
{
    queue_admin_t *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->tv = (struct timeval){.tv_sec = timeout_ms / 1000,
                             .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    admin_node_get(a, redis->host, redis->port);
    if (!admin_node_ctx(a, 0, err, errlen) || admin_read_slots(a, err, errlen) < 0) {
        queue_admin_close(a);
        return NULL;
    }
    return a;
}

void queue_admin_close(queue_admin_t *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_nodes; i++)
        redisFree(a->nodes[i].ctx);
    free(a->owner);
    library_free(&a->library);
    free(a);
}

/* The node for a command: its key's master. */
static int admin_route(const queue_admin_t *a, int argc, const char **argv, const size_t *lens)
{
    if (!a->owner) return 0;
    int slot = cluster_command_slot(argc, argv, lens);
    return slot >= 0 && a->owner[slot] >= 0 ? a->owner[slot] : 0;
}

/* Runs one command where it belongs, following redirects: the last reply
 * (an error reply too), or NULL with err set. */
static redisReply *admin_exec(queue_admin_t *a, char *err, size_t errlen, int argc,
                              const char **argv, const size_t *lens)
{
    int node = admin_route(a, argc, argv, lens);
    bool asking = false;
    for (int tries = 0;; tries++) {
        redisContext *ctx = admin_node_ctx(a, node, err, errlen);
        if (!ctx) return NULL;
        if (asking) freeReplyObject(redisCommand(ctx, "ASKING"));
        redisReply *r = redisCommandArgv(ctx, argc, argv, lens);
        if (!r) {
            snprintf(err, errlen, "redis: %s", ctx->errstr);
            redisFree(ctx); /* a broken context is not used again */
            a->nodes[node].ctx = NULL;
            return NULL;
        }
        if (r->type != REDIS_REPLY_ERROR || tries == ADMIN_MAX_TRIES) return r;
        unsigned slot;
        char host[256];
        int port;
        enum cluster_redirect kind =
            cluster_redirect_parse(r->str, a->nodes[node].host, &slot, host, sizeof host, &port);
        if (kind == REDIRECT_NONE) return r;
        freeReplyObject(r);
        asking = kind == REDIRECT_ASK;
        if (kind == REDIRECT_RETRY) {
            usleep(20000u << (tries < 5 ? tries : 5));
            continue;
        }
        int to = admin_node_get(a, host, port);
        if (to < 0) {
            snprintf(err, errlen, "redis: too many cluster nodes");
            return NULL;
        }
        if (kind == REDIRECT_MOVED && a->owner) a->owner[slot] = (int16_t)to;
        node = to;
    }
}

/* An error reply becomes err and NULL. */
static redisReply *admin_reply(redisReply *r, char *err, size_t errlen)
{
    if (r && r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

redisReply *queue_admin_command(queue_admin_t *a, char *err, size_t errlen, int argc,
                                const char **argv)
{
    return admin_reply(admin_exec(a, err, errlen, argc, argv, NULL), err, errlen);
}

/* FUNCTION LOAD REPLACE of the library as the nodes load it (same code, same
 * digest: they find it theirs), on one node. */
static int admin_load_library(queue_admin_t *a, int node, char *err, size_t errlen)
{
    if (!a->library.code.data && library_prepare(&a->library) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    redisContext *ctx = admin_node_ctx(a, node, err, errlen);
    if (!ctx) return -1;
    const char *argv[] = {"FUNCTION", "LOAD", "REPLACE", a->library.code.data};
    size_t lens[] = {8, 4, 7, a->library.code.len};
    redisReply *r = redisCommandArgv(ctx, 4, argv, lens);
    int rc = r && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (rc < 0)
        snprintf(err, errlen, "redis: cannot load the functions library: %s",
                 r ? r->str : ctx->errstr);
    if (!r) {
        redisFree(ctx);
        a->nodes[node].ctx = NULL;
    }
    freeReplyObject(r);
    return rc;
}

static bool function_missing(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "ERR Function not found", 22);
}

redisReply *queue_admin_fcall(queue_admin_t *a, const call_keys_t *keys, int nargs,
                              const char **args, const size_t *arg_lens, char *err, size_t errlen)
{
    fcall_argv_t v;
    if (fcall_argv_build(&v, keys, nargs, args, arg_lens) < 0) {
        snprintf(err, errlen, "cannot make the call of %s (out of memory, or a key too long)",
                 schema_fn_name(keys->fn));
        return NULL;
    }
    redisReply *r = admin_exec(a, err, errlen, v.argc, v.argv, v.lens);
    if (function_missing(r)) { /* where it was answered: redirects are followed by now */
        freeReplyObject(r);
        r = admin_load_library(a, admin_route(a, v.argc, v.argv, v.lens), err, errlen) == 0
                ? admin_exec(a, err, errlen, v.argc, v.argv, v.lens)
                : NULL;
    }
    fcall_argv_free(&v);
    return admin_reply(r, err, errlen);
}

redisReply *queue_admin_call(queue_admin_t *a, enum queue_fn fn, const key_ids_t *ids, int nargs,
                             const char **args, const size_t *arg_lens, char *err, size_t errlen)
{
    call_keys_t keys;
    call_keys_init(&keys, fn, ids);
    redisReply *r = queue_admin_fcall(a, &keys, nargs, args, arg_lens, err, errlen);
    call_keys_free(&keys);
    return r;
}

/* Appends every command, then reads every reply: the number of replies read. */
static int admin_pipelined(queue_admin_t *a, int n, int argc[], const char **argv[],
                           redisReply *out[], char *err, size_t errlen)
{
    redisContext *ctx = admin_node_ctx(a, 0, err, errlen);
    if (!ctx) return 0;
    for (int i = 0; i < n; i++)
        if (redisAppendCommandArgv(ctx, argc[i], argv[i], NULL) != REDIS_OK) {
            snprintf(err, errlen, "redis: %s", ctx->errstr);
            return 0;
        }
    for (int i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(ctx, &r) != REDIS_OK || !r) {
            snprintf(err, errlen, "redis: %s", ctx->errstr);
            return i;
        }
        out[i] = r;
    }
    return n;
}

int queue_admin_pipeline(queue_admin_t *a, int n, int argc[], const char **argv[],
                         redisReply *out[], char *err, size_t errlen)
{
    int got = 0;
    if (a->owner) /* commands for several masters: one by one, each routed */
        while (got < n && (out[got] = admin_exec(a, err, errlen, argc[got], argv[got], NULL)))
            got++;
    else
        got = admin_pipelined(a, n, argc, argv, out, err, errlen);
    if (got < n) {
        for (int i = 0; i < got; i++)
            freeReplyObject(out[i]);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (out[i]->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis: %s", out[i]->str);
            for (int j = 0; j < n; j++)
                freeReplyObject(out[j]);
            return -1;
        }
    return 0;
}
