/* queue: the Redis-backed message queue. Every operation is one call of a
 * function in the "sealpost" Redis Functions library (queue/functions/), which
 * keeps each message's keys in one hash-tagged shard so one call is atomic and
 * works the same on one Redis and on Redis Cluster. This is the nodes' API:
 * all calls are asynchronous on a libuv loop; each callback runs exactly once,
 * or not at all when the call itself returned -1 (no connection). The
 * blocking administration API, for the command line, is queue/admin.h. */
#ifndef SEALPOST_QUEUE_H
#define SEALPOST_QUEUE_H

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct queue queue_t;

/* status 0 on success; otherwise err says what went wrong. */
typedef void (*queue_status_cb)(int status, const char *err, void *arg);
/* An enqueue's status when it went out and no reply came (a timeout, the
 * connection lost), or its replicas did not acknowledge it: the message may
 * be stored, and be delivered, unless it is withdrawn (queue_withdraw). */
#define QUEUE_UNANSWERED (-2)

/* redis: where and how to log in (config_redis_endpoint); copied. */
queue_t *queue_open(uv_loop_t *loop, const redis_endpoint_t *redis, unsigned timeout_ms,
                    unsigned shards);
void queue_close(queue_t *q);
/* The master of every shard (one Redis, or those of a cluster) is connected
 * and has our functions library. */
bool queue_ready(const queue_t *q);
/* Why the node should not be sent mail, or NULL: when not ready, what Redis
 * said ("AUTH: WRONGPASS ...", "TLS: ..."); when ready but [queue]
 * min_replicas is not met, which master is short ("redis H:P has 0 of 1
 * replicas"). /readyz answers 503 with it either way. */
const char *queue_not_ready_reason(const queue_t *q);
/* From now on an enqueue is answered only after `replicas` replicas
 * acknowledged it (Redis WAIT, at most timeout_ms); fewer is an error. */
void queue_set_min_replicas(queue_t *q, unsigned replicas, unsigned timeout_ms);
unsigned queue_shards(const queue_t *q);
/* The shard a message id lives in. */
unsigned queue_shard_of(const queue_t *q, const char *mid);

/* ---- ingress side ---- */

/* One body variant as stored: sealed (crypto/seal.c), never plain. */
typedef struct queue_body {
    const char *data;
    size_t len;
} queue_body_t;

/* The kinds of copy a recipient gets, as the status page counts them. */
enum queue_copy_kind {
    QUEUE_COPY_OPENPGP,
    QUEUE_COPY_SMIME,
    QUEUE_COPY_PASSTHROUGH, /* encrypted by the sender, stored as it came */
    QUEUE_COPY_PLAIN,
    QUEUE_COPY_KINDS
};

typedef struct queue_message {
    char id[33];              /* 128 random bits in hex: util_random_id */
    const char *sender;       /* "" for the null sender */
    const char **rcpts;       /* "local@domain", domain lower-case */
    const char **rcpt_params; /* per recipient: DSN parameters ("NOTIFY=NEVER"), or "";
                                 NULL: none for any */
    unsigned n_rcpts;
    const char *info; /* one line about the submission, for the operator */
    /* MAIL parameters to pass on, space-separated ("BODY=8BITMIME SMTPUTF8
     * RET=HDRS ENVID=x"), or "" */
    const char *mail_params;
    const queue_body_t *bodies; /* the variants: plain, shared ciphertext, one per Bcc */
    unsigned n_bodies;
    const unsigned *rcpt_body;         /* per recipient: its variant; NULL: variant 0 for all */
    unsigned copies[QUEUE_COPY_KINDS]; /* recipients by the kind of copy they get */
    /* The envelope's MAC, opaque here (the writer's seal_envelope_tag),
     * and the recipients it covers as
     * queue_env_append writes them; both stored in T:m:<mid>. NULL: none. */
    const char *mac;
    const char *env;
} queue_message_t;

/* Appends one recipient line "addr TAB variant TAB params LF" of what an
 * envelope MAC covers: writer and worker build the same text this way. */
int queue_env_append(buf_t *out, const char *addr, unsigned variant, const char *params);

/* Stores the envelope, the bodies and one delivery job per recipient domain
 * and body variant in one atomic call; idempotent on the message id, and a
 * no-op (status -1, err "withdrawn ...") once the id was withdrawn. */
int queue_enqueue(queue_t *q, const queue_message_t *m, queue_status_cb cb, void *arg);

/* Takes back a message whose enqueue was not acknowledged to its client (it
 * got 4xx after QUEUE_UNANSWERED, or left before its 250), so that the
 * client's retry is its only copy: it is deleted unless a worker has claimed
 * one of its jobs already, and an enqueue of it that comes later stores
 * nothing. m is the message as enqueued; its bodies' data is not read, only
 * their number. Tried once Redis answers (queue_ready), and again until it
 * gives its verdict, for at most an hour; each outcome is logged
 * (event=withdrawn, or event=withdraw_too_late when claimed) and counted in
 * sealpost_queue_withdrawals_total. At most 10,000 wait at once; -1 when
 * this one cannot wait (the list full, no memory, closing), logged as
 * abandoned. What is waiting when queue_close comes, or when the process
 * dies, is lost: such a message, if stored, is delivered. */
int queue_withdraw(queue_t *q, const queue_message_t *m);

/* ---- worker side ---- */

typedef struct queue_claimed {
    char jid[48];
    long long token;
} queue_claimed_t;

/* next_ms: milliseconds until the shard has something due again (a job or an
 * expiring lease), -1 when it is empty. */
typedef void (*queue_claim_cb)(int status, const char *err, long long next_ms,
                               const queue_claimed_t *jobs, unsigned n_jobs, void *arg);

/* Leases up to max due jobs of one shard to owner, reclaiming expired leases
 * first; a job whose lease expired max_expiries times is held instead. */
int queue_claim(queue_t *q, unsigned shard, const char *owner, unsigned max, unsigned lease_ms,
                unsigned max_expiries, queue_claim_cb cb, void *arg);

typedef struct queue_job {
    unsigned shard;
    char jid[48];
    long long token;
    char mid[33];
    unsigned variant; /* which body of the message: body holds it as stored */
    char domain[256];
    char *sender;
    char *mail_params;
    char **rcpts;       /* the addresses */
    char **rcpt_params; /* per recipient: its DSN parameters, or "" */
    unsigned n_rcpts;
    unsigned attempts;
    bool warned; /* a delay notice went out for this job */
    /* An operator held or deleted the job while it was leased: send
     * nothing, complete it, and the queue does what was asked. */
    enum queue_op_flag { QUEUE_OP_NONE, QUEUE_OP_HOLD, QUEUE_OP_DELETE } operator_flag;
    long long received_ms;
    char *body;
    size_t body_len;
    /* From the envelope, for the worker's check; NULL when not stored. */
    char *mac;
    char *env;  /* the authenticated recipients, as queue_env_append wrote them */
    char *lens; /* the variants' sealed lengths as stored, space-separated */
} queue_job_t;

/* Holds a claimed job whose envelope failed its check, sending nothing;
 * counted as tampered and traced with why. */
int queue_job_tampered(queue_t *q, const queue_job_t *job, const char *why, queue_status_cb cb,
                       void *arg);

/* job is NULL when the job no longer exists (deleted); the callee owns it. */
typedef void (*queue_fetch_cb)(int status, const char *err, queue_job_t *job, void *arg);
int queue_fetch(queue_t *q, unsigned shard, const queue_claimed_t *claimed, queue_fetch_cb cb,
                void *arg);
void queue_job_free(queue_job_t *job);
/* Drops the lease of a claimed job that fetch found gone. */
int queue_forget(queue_t *q, unsigned shard, const queue_claimed_t *claimed, queue_status_cb cb,
                 void *arg);

/* Renews the lease to lease_ms from now, or only checks that it is still
 * held while more than keep_ms of it is left (0: always renews): a check
 * writes nothing, so it adds no fsync to the delivery it gates. Fails with
 * err "stale" when the lease was lost. */
int queue_extend(queue_t *q, const queue_job_t *job, unsigned lease_ms, unsigned keep_ms,
                 queue_status_cb cb, void *arg);

/* A bounce (delivery status notification) to enqueue with a completion. */
typedef struct queue_bounce {
    char id[33];      /* from queue_bounce_id, so it lives in the job's shard */
    const char *rcpt; /* the original sender */
    const char *info;
    const char *body;
    size_t body_len;
    bool delay_notice; /* a warning, not a failure: the job is marked warned */
    const char *mac;   /* as queue_message_t's; NULL: none */
    const char *env;
} queue_bounce_t;

/* A fresh message id that hashes to the given shard. */
void queue_bounce_id(const queue_t *q, unsigned shard, char out[33]);

/* What one attempt came to. */
typedef struct queue_outcome {
    const unsigned *pending; /* indexes into job->rcpts still to deliver; none: done */
    unsigned n_pending;
    unsigned delay_ms; /* until the pending ones are due again */
    const char *error; /* the job's last error */
    const char *trace; /* lines "rcpt TAB event TAB reply" for `queue trace`, or NULL */
} queue_outcome_t;

/* Records the attempt; bounce (may be NULL), from the null sender, is
 * enqueued in the same atomic call. Fails with err "stale" when the lease was
 * lost (another worker owns the job now). A hold or delete an operator asked
 * for meanwhile happens here. */
int queue_complete(queue_t *q, const queue_job_t *job, const queue_outcome_t *o,
                   const queue_bounce_t *bounce, queue_status_cb cb, void *arg);

/* ---- SMTP users, the same for every ingress node ---- */

#define QUEUE_CRAM_MAX 256 /* a CRAM-MD5 secret's room, NUL included */

typedef struct queue_user {
    char hash[128];            /* argon2id string; "" when there is no such user */
    char cram[QUEUE_CRAM_MAX]; /* the CRAM-MD5 secret, when asked for and the user has one */
    long long attempts;        /* from the client in the window, before this one */
    char hash_tag[128];        /* the tag over name and hash (user_tag); "" when none */
    char cram_tag[128];        /* ... over name and secret, when the secret was asked for */
} queue_user_t;

typedef struct queue_login {
    const char *name;
    const char *client; /* whose attempts are counted: an address, or a network */
    unsigned limit;     /* attempts in a window; at the limit nothing is looked up */
    unsigned window_s;
    bool want_cram;
} queue_login_t;

typedef void (*queue_user_cb)(int status, const char *err, const queue_user_t *user, void *arg);
/* Counts a login attempt and reads what checking it needs, in one call. The
 * user record is wiped after cb returns. */
int queue_auth_begin(queue_t *q, const queue_login_t *login, queue_user_cb cb, void *arg);
/* Takes an attempt back from the client's count: it succeeded, or it was
 * never checked. */
int queue_auth_uncount(queue_t *q, const char *client, queue_status_cb cb, void *arg);

/* ---- queue-wide figures ---- */

typedef struct queue_stats {
    long long due_now;   /* jobs due now, waiting for a worker */
    long long scheduled; /* jobs due later (retries) */
    long long leased;    /* jobs a worker holds */
    long long held;      /* jobs held by an operator or as poison */
    long long messages;  /* messages with jobs still open */
    long long oldest_ms; /* when the oldest of them was received; -1: none */
    long long now_ms;    /* Redis's clock when counted */
} queue_stats_t;

typedef void (*queue_stats_cb)(int status, const char *err, const queue_stats_t *stats, void *arg);
/* Sums the read-only stats of every shard; cb runs once, when all replied. */
int queue_stats(queue_t *q, queue_stats_cb cb, void *arg);

/* ---- the crypto side's data ---- */

typedef void (*queue_blob_cb)(int status, const char *err, const char *data, size_t len, void *arg);
/* Stores check (seal_check_make) for key_id unless one is stored already, and
 * gives back the one stored: the caller verifies it opens with its key. */
int queue_seal_check(queue_t *q, const char *key_id, const void *check, size_t len,
                     queue_blob_cb cb, void *arg);

/* The key directory: what Redis knows of one recipient address. An address
 * may have an OpenPGP key and an S/MIME certificate at once. */
#define QUEUE_KEY_METHODS 2 /* [0] OpenPGP, [1] S/MIME: crypto/'s enum crypto_method */
typedef struct queue_found_key {
    char fpr[65];        /* "" when the address has none (CRYPTO_FPR_MAX + 1) */
    long long expires;   /* Unix time it stops being usable; 0: never */
    const char *armored; /* the OpenPGP key armored, the certificate as PEM */
    size_t armored_len;
} queue_found_key_t;

/* A discovered key (issue 16) as stored beside the directory, with its tag
 * (crypto/keydir.c: keydir_disc_tag). In a lookup's reply, fpr is "" when
 * there is none. */
typedef struct queue_disc {
    const char *address;
    char fpr[65];
    long long expires;
    const char *data;
    size_t len;
    const char *source, *url, *tag;
    const char *change; /* the last refresh's finding of another key, for keys list; "" none */
    long long found, checked;
} queue_disc_t;

/* A miss filed by discovery: nothing found (or, failed, the look-up failed)
 * until then; until 0: none. */
typedef struct queue_miss {
    long long until;
    bool failed;
    const char *tag;
} queue_miss_t;

typedef struct queue_key_found {
    long long version;  /* of the directory when read: see queue_key_version */
    long long dversion; /* of the discovered keys and misses */
    queue_found_key_t keys[QUEUE_KEY_METHODS];
    queue_disc_t disc;         /* the address's discovered key, fpr "" when none */
    queue_miss_t miss;         /* the address's */
    queue_miss_t domain_miss;  /* its domain's: it has no WKD at all */
    const char *addr_policy;   /* "never", "opportunistic", "required", or NULL: none set */
    const char *domain_policy; /* the same for its domain */
    const char *addr_prefer;   /* "openpgp", "smime", or NULL: none set */
    const char *domain_prefer; /* the same for its domain */
} queue_key_found_t;

typedef void (*queue_key_cb)(int status, const char *err, const queue_key_found_t *found,
                             void *arg);
/* Looks up a canonical address (crypto_addr_canon) and its domain; what found
 * points at lives until cb returns. */
int queue_key_lookup(queue_t *q, const char *addr, const char *domain, queue_key_cb cb, void *arg);

typedef void (*queue_version_cb)(int status, const char *err, long long version, void *arg);
typedef void (*queue_versions_cb)(int status, const char *err, long long version,
                                  long long dversion, void *arg);
/* The directory's version (it changes with every import, deletion or
 * policy) and the discovered keys' (with every key or miss filed). */
int queue_key_version(queue_t *q, queue_versions_cb cb, void *arg);

/* Files a discovered key (d->tag made by the caller), or a miss until then
 * (failed: the look-up failed, rather than found nothing). */
int queue_disc_put(queue_t *q, const queue_disc_t *d, queue_status_cb cb, void *arg);
int queue_disc_miss(queue_t *q, const char *address, long long until, bool failed, const char *tag,
                    queue_status_cb cb, void *arg);
/* Up to max addresses whose discovered key was checked at or before
 * before, taken for this node to look up again (see disc_due). */
typedef void (*queue_names_cb)(int status, const char *err, const char *const *names, size_t n,
                               void *arg);
int queue_disc_due(queue_t *q, long long before, long long now, unsigned max, queue_names_cb cb,
                   void *arg);
/* Forgets an address's discovered key and miss (a refresh found it revoked, or gone). */
int queue_disc_delete(queue_t *q, const char *address, queue_status_cb cb, void *arg);
/* A miss for a whole domain that has no WKD. */
int queue_disc_domain_miss(queue_t *q, const char *domain, long long until, const char *tag,
                           queue_status_cb cb, void *arg);

/* The directory's index as Redis holds it (issue 18): every entry a node
 * trusts, named ("a:<address>:<method>", "k:<id>", "p:<name>", "r:<name>"),
 * with its tag, and the tag over the index and the version it was sealed
 * at. queue/ only carries them: crypto/keydir.c makes and checks tags. */
typedef struct queue_key_directory {
    long long version;        /* the directory's version now */
    long long sealed_version; /* the version the index was sealed at; -1: never sealed */
    const char *tag;          /* the index's tag; NULL when never sealed */
    long long stored;         /* keys, policies and preferences stored */
    const char **entries;     /* n entry names, and their tags in tags */
    const char **tags;
    size_t n;
} queue_key_directory_t;

typedef void (*queue_key_directory_cb)(int status, const char *err,
                                       const queue_key_directory_t *dir, void *arg);
/* Reads the index in one call (key_directory); dir lives until cb returns. */
int queue_key_directory(queue_t *q, queue_key_directory_cb cb, void *arg);

/* ---- DKIM signing keys (dkim.c), which the workers sign with ---- */

/* One stored key of a domain's selector. queue/ does not include crypto/,
 * so the algorithm is its name, as crypto/'s dkim_algorithm_name gives it. */
typedef struct queue_dkim_key {
    char domain[254];
    char selector[254];
    char algorithm[8]; /* "ed25519" | "rsa" */
    long long created; /* Unix time it was stored (Redis's clock) */
    bool active;       /* the selector that signs with its algorithm */
    char *record;      /* the TXT record's text, NUL-terminated */
    char *sealed;      /* the private key as PEM, sealed by seal_body under the cluster
                          key with the context "dkim:<domain>:<selector>" */
    size_t sealed_len;
    /* A stored entry that could not be read (a name too long or not a
     * string, a field not a string): reported rather than failing the
     * whole read, so one bad entry does not hide every good one. Then
     * domain and selector hold what of them fits ("" for none), record
     * says why, sealed is NULL, and active says what the store said. */
    bool malformed;
    /* The tag `sealpost dkim` made over domain, selector, algorithm, record
     * and sealed key (issue 18); "" when the entry has none. */
    char tag[128];
} queue_dkim_key_t;

typedef void (*queue_dkim_keys_cb)(int status, const char *err, const queue_dkim_key_t *keys,
                                   size_t n, void *arg);
/* The DKIM keys' version, as queue_key_version gives the directory's: it
 * moves with every key stored, deleted or activated. */
int queue_dkim_version(queue_t *q, queue_version_cb cb, void *arg);
/* Every stored DKIM key of every domain, by domain and then selector, in
 * one callback once all have been read (n may be 0); the keys are freed
 * when cb returns. One dkim_domains call, then one dkim_get per domain, all
 * sent at once. */
int queue_dkim_keys(queue_t *q, queue_dkim_keys_cb cb, void *arg);

/* ---- the status page's report ---- */

typedef struct queue_destination {
    char domain[256];
    long long jobs;
    long long oldest_ms; /* when its oldest queued job's message came; 0: unknown */
} queue_destination_t;

typedef struct queue_failure {
    long long ms;
    char mid[33];
    char rcpt[300];
    char event[16]; /* bounced, expired */
    char detail[300];
} queue_failure_t;

/* A key or certificate that expires soon. */
typedef struct queue_expiring {
    char id[65];
    bool smime;
    long long expires;   /* Unix time */
    char addresses[512]; /* LF-separated, as stored; cut at the end when longer */
} queue_expiring_t;

/* The key directory at a glance, from its expiry indexes. */
typedef struct queue_key_summary {
    long long stored;                     /* ids in the directory */
    long long indexed[QUEUE_KEY_METHODS]; /* of them, OpenPGP keys and certificates */
    long long expired;                    /* past their expiry already */
    long long expiring;                   /* expiring within the horizon asked for */
    queue_expiring_t *soon;               /* the first of them, soonest first */
    unsigned n_soon;
} queue_key_summary_t;

typedef struct queue_report {
    queue_stats_t stats;                /* as queue_stats gives them */
    long long copies[QUEUE_COPY_KINDS]; /* recipients stored in the last ten minutes, by kind */
    queue_key_summary_t keys;
    queue_destination_t *dests; /* most queued jobs first */
    unsigned n_dests;
    queue_failure_t *failures; /* newest first */
    unsigned n_failures;
} queue_report_t;

typedef void (*queue_report_cb)(int status, const char *err, const queue_report_t *report,
                                void *arg);
/* The queue-wide figures, destinations by queued jobs with their oldest
 * job, the newest max_failures bounces and expiries, and the recipients of
 * the last ten minutes by kind of copy, from every shard; with the key
 * directory's size and the keys and certificates expiring within
 * horizon_s (at most max_soon of them listed). A directory stored before
 * its expiry index existed is indexed once, on the side (queue_key_index).
 * report lives until cb returns. */
int queue_report(queue_t *q, unsigned max_failures, long long horizon_s, unsigned max_soon,
                 queue_report_cb cb, void *arg);

/* Calls on_wake(shard) when something was enqueued into a shard, and
 * on_wake(UINT32_MAX) after (re)subscribing, when wake-ups may have been missed. */
int queue_watch(queue_t *q, void (*on_wake)(uint32_t shard, void *arg), void *arg);
/* Stops the wake-ups: on_wake is not called after this returns. */
void queue_unwatch(queue_t *q);

#endif
