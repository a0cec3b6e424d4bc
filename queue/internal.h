/* Private to queue/: what the files of the queue library share. */
#ifndef SEALPOST_QUEUE_INTERNAL_H
#define SEALPOST_QUEUE_INTERNAL_H

#include "queue/queue.h"
#include "queue/admin.h"
#include "queue/cluster.h"
#include "queue/redis.h"
#include "queue/schema.h"

enum queue_err {
    QUEUE_ERR_UNAVAILABLE,
    QUEUE_ERR_NO_REPLY,
    QUEUE_ERR_REPLY,
    QUEUE_ERR_REPLICAS,
    QUEUE_ERRS
};

/* What became of a withdrawal (withdraw.c): the function's verdicts, or
 * abandoned when none came (the list full, the process stopping, an hour
 * without an answer). */
enum withdraw_outcome {
    WITHDRAW_WITHDRAWN,
    WITHDRAW_CLAIMED,
    WITHDRAW_GONE,
    WITHDRAW_ABANDONED,
    WITHDRAW_OUTCOMES
};

struct withdrawal;

struct queue {
    struct {
        metric_t *latency;
        metric_t *errors[QUEUE_ERRS];
    } metrics;
    uv_loop_t *loop;
    redis_endpoint_t redis;
    unsigned timeout_ms;
    unsigned shards;
    router_t *router;
    library_t library; /* the functions library, as loaded */
    router_library_t lib;
    rconn_t *watch_conn;
    unsigned min_replicas; /* WAIT for this many after each enqueue */
    unsigned replica_timeout_ms;
    bool keys_indexing; /* the expiry index's backfill was started (keys.c) */
    void (*on_wake)(uint32_t shard, void *arg);
    void *on_wake_arg;
    struct {
        struct withdrawal *head; /* oldest first */
        unsigned n;
        uv_timer_t *timer; /* runs while there are any */
        bool closing;
        metric_t *outcomes[WITHDRAW_OUTCOMES];
        /* Set by withdraw.c with the first one, for queue_close: those
         * still waiting are abandoned (logged: they may be delivered). */
        void (*abandon_all)(queue_t *q);
    } withdrawals;
};

/* A call in flight: argv storage plus the caller's callback. */
struct call {
    queue_t *q;
    void (*done)(struct call *call, redisReply *reply, const char *err);
    union {
        queue_status_cb status;
        queue_claim_cb claim;
        queue_fetch_cb fetch;
        queue_user_cb user;
        queue_blob_cb blob;
        queue_key_cb key;
        queue_version_cb version;
        queue_versions_cb versions;
        queue_names_cb names;
        queue_key_directory_cb directory;
    } cb;
    void *arg;
    unsigned shard;
    router_origin_t origin; /* the connection that answered */
    queue_claimed_t claimed;
    uint64_t started; /* uv_hrtime when sent */
    bool answered;    /* Redis replied, an error included: done's NULL reply is not silence */
};

struct call *call_new(queue_t *q, void *arg);
/* Files the keys stored before the directory's expiry index existed
 * (keys.c), once per process: later calls do nothing. */
void queue_key_index(queue_t *q);
/* Adds one shard's reply of the stats function to sum; -1 when malformed. */
int stats_add_shard(queue_stats_t *sum, const redisReply *r);
/* Reading replies: an integer (or a number sent as a string), else
 * fallback; a string, else ""; a field of an HGETALL-style flat array, else
 * NULL. All take NULL. */
long long reply_ll(const redisReply *r, long long fallback);
const char *reply_str(const redisReply *r);
bool reply_copy(const redisReply *r, char *out, size_t size);
const redisReply *reply_field(const redisReply *flat, const char *name);
/* The shard of a message id, out of shards. */
unsigned queue_shard_for(const char *mid, unsigned shards);

/* One delivery job of a message: a destination domain and a body variant,
 * with its recipients as the job stores them. */
struct job_group {
    const char *domain;
    unsigned variant;
    buf_t rcpts;
};
/* Groups m's recipients into its jobs, in the order their ids number them
 * (groups has room for m->n_rcpts); the number of jobs, or -1. The groups
 * are freed with job_groups_free either way. */
int job_groups(const queue_message_t *m, struct job_group *groups);
void job_groups_free(struct job_group *groups, unsigned n_rcpts);

/* The outcomes' names: the withdraw function's verdicts, then "abandoned";
 * the labels of sealpost_queue_withdrawals_total, which queue_open makes. */
extern const char *const withdraw_outcome_names[WITHDRAW_OUTCOMES];

/* The administration connection (admin_conn.c): blocking commands, each
 * sent to its key's master. The reply, or NULL with err set (an error reply
 * too). */
redisReply *queue_admin_command(queue_admin_t *a, char *err, size_t errlen, int argc,
                                const char **argv);
/* One call of a function of the library, with the keys built for it; the
 * library is loaded first where it is missing. As queue_admin_command. */
redisReply *queue_admin_fcall(queue_admin_t *a, const call_keys_t *keys, int nargs,
                              const char **args, const size_t *arg_lens, char *err, size_t errlen);
/* The same for a function with fixed keys only, named from ids. */
redisReply *queue_admin_call(queue_admin_t *a, enum queue_fn fn, const key_ids_t *ids, int nargs,
                             const char **args, const size_t *arg_lens, char *err, size_t errlen);
/* Runs n commands (pipelined on a single Redis), every reply in out; -1
 * with err set and nothing to free when one failed. */
int queue_admin_pipeline(queue_admin_t *a, int n, int argc[], const char **argv[],
                         redisReply *out[], char *err, size_t errlen);
/* Sends the call of keys->fn with those keys and args; takes call (NULL:
 * none could be made), and frees it on failure (-1), keys that failed
 * included. arg_lens may be NULL for NUL-terminated args. */
int fcall(struct call *call, const call_keys_t *keys, int nargs, const char **args,
          const size_t *arg_lens);
/* The same for a function with fixed keys only, named from ids. */
int fcall_keys(struct call *call, enum queue_fn fn, const key_ids_t *ids, int nargs,
               const char **args, const size_t *arg_lens);
/* A call whose reply is a status word, for cb; NULL when out of memory. */
struct call *call_status(queue_t *q, queue_status_cb cb, void *arg);
/* A call whose reply is a version counter, for cb (keys.c); NULL when out of memory. */
struct call *call_version(queue_t *q, queue_version_cb cb, void *arg);
/* The index of a key_directory reply, its arrays for the caller to free;
 * -1 when the reply is malformed or memory ran out (keys.c). */
int key_directory_parse(const redisReply *r, queue_key_directory_t *out);

#endif
