/* Private to queue/: Redis Cluster routing, for one Redis and for a cluster
 * alike. The router keeps one connection per master, learns the slot map from
 * CLUSTER SLOTS (a Redis without cluster support owns every slot), sends each
 * command to the master of its key's slot, and follows MOVED, ASK, TRYAGAIN
 * and CLUSTERDOWN. It also runs an initialisation command on every master it
 * connects to (our functions library) and groups WAITs for replicas. */
#ifndef SEALPOST_QUEUE_CLUSTER_H
#define SEALPOST_QUEUE_CLUSTER_H

#include "queue/redis.h"

#include <stddef.h>

#define CLUSTER_SLOTS 16384

/* ---- shared with the blocking administration connection ---- */

/* The slot of a key: CRC16 of its hash tag (the part between the first '{'
 * and the next '}', when not empty) or of the whole key, mod 16384. */
unsigned cluster_key_slot(const char *key, size_t len);
/* The slot of a command's first key, or -1 for a command without keys. */
int cluster_command_slot(int argc, const char **argv, const size_t *lens);

enum cluster_redirect { REDIRECT_NONE, REDIRECT_MOVED, REDIRECT_ASK, REDIRECT_RETRY };
/* Reads "MOVED 3999 127.0.0.1:6381", "ASK ...", "TRYAGAIN ..." or
 * "CLUSTERDOWN ..."; host and port are filled for MOVED and ASK, host with
 * answered_by when the error names none ("MOVED 3999 :6381"). */
enum cluster_redirect cluster_redirect_parse(const char *err, const char *answered_by,
                                             unsigned *slot, char *host, size_t hostlen, int *port);
/* Calls each() for every slot range of a CLUSTER SLOTS reply, with its
 * master's address (answered_by when the reply leaves the host empty).
 * Returns -1 when the reply is malformed. */
int cluster_slots_parse(const redisReply *r, const char *answered_by,
                        int (*each)(unsigned from, unsigned to, const char *host, int port,
                                    void *arg),
                        void *arg);
/* True when an error reply to CLUSTER SLOTS means the server is to be used
 * as a single Redis (no cluster support, or CLUSTER renamed or refused by
 * an ACL); false for anything that may pass (LOADING, BUSY, NOAUTH...). */
bool cluster_single_error(const char *err);

/* ---- the asynchronous router ---- */

typedef struct router router_t;

/* Where a reply came from, for a WAIT that must follow on that connection. */
typedef struct router_origin {
    int node;       /* index in the router's table */
    unsigned id;    /* the node's, which an index reused after a retired node is not */
    unsigned epoch; /* the connection's */
} router_origin_t;

/* The functions library every master must have: its code, and a no-writes
 * function in it that returns digest (so a node that has it already is
 * ready without a write, a replica or a full Redis included). */
typedef struct router_library {
    const char *code;
    size_t len;
    const char *digest_function;
    const char *digest;
} router_library_t;

/* seed says where to start and how to log in: every master, the ones
 * CLUSTER SLOTS names too, gets the same login and TLS settings. lib is
 * checked (and loaded if missing) on every master connection. */
router_t *router_new(uv_loop_t *loop, const redis_endpoint_t *seed, unsigned timeout_ms,
                     const router_library_t *lib);
void router_free(router_t *r);
/* A key whose slot router_ready must find served. */
void router_need_key(router_t *r, const char *key);
/* True when every needed slot's master is connected and has the library. */
bool router_ready(const router_t *r);
/* Why a needed master cannot be connected to (a refused login, a TLS
 * failure), or NULL when none says. */
const char *router_failure(const router_t *r);
/* Counts, every 2 s, the connected replicas (ROLE) of each master of a
 * slot we use, when min_replicas > 0; 0 stops. */
void router_check_replicas(router_t *r, unsigned min_replicas);
/* Why a master of a slot we use has fewer than min_replicas connected
 * replicas ("redis 127.0.0.1:6379 has 0 of 1 replicas"), or NULL. */
const char *router_replicas_short(const router_t *r);
/* Sends a command to its slot's master (the seed for a command without
 * keys). Returns -1 without calling cb when that master is not connected;
 * otherwise cb runs exactly once, later, after any redirects, and origin (if
 * not NULL) tells which connection answered. */
int router_command(router_t *r, rconn_reply_cb cb, void *arg, router_origin_t *origin, int argc,
                   const char **argv, const size_t *lens);
/* Waits until `replicas` replicas acknowledged the writes made before on the
 * connection origin names, for at most timeout_ms: one WAIT serves every
 * caller waiting on that connection at the time it is sent. cb gets 0, or -1
 * and why. Returns -1 without calling cb when that connection is gone. */
int router_wait(router_t *r, const router_origin_t *origin, unsigned replicas, unsigned timeout_ms,
                void (*cb)(int status, const char *err, void *arg), void *arg);

#endif
