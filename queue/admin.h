/* queue administration: the blocking side of the queue library, for the
 * command line, as hiredis keeps its asynchronous API apart from the
 * blocking one. One connection (to one Redis, or to each master of a Redis
 * Cluster as needed) serves users, the key directory, figures and the
 * operator's view and acts; every write is a call of the same functions
 * library the nodes use (queue.h), loaded where it is missing. Errors come
 * back as -1 (or NULL) with err filled in. */
#ifndef SEALPOST_QUEUE_ADMIN_H
#define SEALPOST_QUEUE_ADMIN_H

#include "queue/queue.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct queue_admin queue_admin_t;

/* redis: where and how to log in (config_redis_endpoint), TLS included. */
queue_admin_t *queue_admin_open(const redis_endpoint_t *redis, unsigned timeout_ms, char *err,
                                size_t errlen);
void queue_admin_close(queue_admin_t *a);
/* Adds or replaces a user; cram NULL removes any CRAM-MD5 secret. */
int queue_admin_user_set(queue_admin_t *a, const char *name, const char *hash, const char *cram,
                         char *err, size_t errlen);
/* Stores the tags of a user's hash and CRAM-MD5 secret (NULL: none), made
 * by the caller (crypto/keydir.c), when the user is still stored with
 * them: 1 done, 0 changed meanwhile (nothing written), -1 on error. A user
 * without a tag that holds cannot log in (issue 18). */
int queue_admin_user_tag(queue_admin_t *a, const char *name, const char *hash, const char *hash_tag,
                         const char *cram, const char *cram_tag, char *err, size_t errlen);
/* Calls cb for every user as stored (cram NULL: none); a cb's -1 stops. */
int queue_admin_user_records(queue_admin_t *a,
                             int (*cb)(const char *name, const char *hash, const char *cram,
                                       void *arg),
                             void *arg, char *err, size_t errlen);
/* 1 when the user was there, 0 when not, -1 on error. */
int queue_admin_user_delete(queue_admin_t *a, const char *name, char *err, size_t errlen);
int queue_admin_stats(queue_admin_t *a, unsigned shards, queue_stats_t *out, char *err,
                      size_t errlen);
/* One line per user, sorted: "name" and " cram-md5" when it has that secret. */
int queue_admin_user_list(queue_admin_t *a, buf_t *out, char *err, size_t errlen);

/* A key or certificate to store in the directory, under each of its
 * (canonical) addresses. */
#define QUEUE_KEY_ADDRS_MAX 64
typedef struct queue_key_record {
    const char *fpr; /* a fingerprint, or a certificate's id */
    long long expires;
    const char *armored;
    size_t armored_len;
    const char *const *addresses;
    unsigned n_addresses;
    bool smime;                            /* a certificate: the fields below say what of */
    const char *subject, *issuer, *serial; /* RFC 2253 one-line forms, serial in hex */
} queue_key_record_t;

/* A key as stored; the caller frees the buffers. */
typedef struct queue_key_stored {
    char fpr[65];
    long long expires, imported;
    bool smime;                    /* a certificate (else an OpenPGP key) */
    buf_t addresses;               /* LF-separated */
    buf_t armored;                 /* the OpenPGP key armored, or the certificate as PEM */
    buf_t subject, issuer, serial; /* a certificate's, NUL-terminated; empty for a key */
} queue_key_stored_t;
void queue_key_stored_free(queue_key_stored_t *k);

/* Stores (or replaces) a key; an address it had before and has no more
 * loses it. The directory's version moves, so nodes see it at once. */
int queue_admin_key_put(queue_admin_t *a, const queue_key_record_t *key, char *err, size_t errlen);
/* 1 when the key was there, 0 when not, -1 on error. */
int queue_admin_key_delete(queue_admin_t *a, const char *fpr, char *err, size_t errlen);
/* What is filed under a canonical address: the OpenPGP key's fingerprint in
 * fprs[0], the certificate's id in fprs[1] ("" for none). */
int queue_admin_key_find(queue_admin_t *a, const char *addr, char fprs[QUEUE_KEY_METHODS][65],
                         char *err, size_t errlen);
/* 1 and out filled when the key is there, 0 when not, -1 on error. */
int queue_admin_key_get(queue_admin_t *a, const char *fpr, queue_key_stored_t *out, char *err,
                        size_t errlen);
/* Calls cb for every key and certificate, by id. */
int queue_admin_key_list(queue_admin_t *a, void (*cb)(const queue_key_stored_t *key, void *arg),
                         void *arg, char *err, size_t errlen);
/* The discovered keys (issue 16): filed as a node files them; every one,
 * oldest check first (what d points at lives until cb returns); one
 * address's forgotten (1 when it had a key or a miss, 0 when not). */
int queue_admin_disc_put(queue_admin_t *a, const queue_disc_t *d, char *err, size_t errlen);
int queue_admin_disc_list(queue_admin_t *a, void (*cb)(const queue_disc_t *d, void *arg), void *arg,
                          char *err, size_t errlen);
int queue_admin_disc_delete(queue_admin_t *a, const char *address, char *err, size_t errlen);
/* Sets the policy of an address or a domain; policy NULL removes it. */
int queue_admin_policy_set(queue_admin_t *a, const char *target, const char *policy, char *err,
                           size_t errlen);
/* Sets which of an OpenPGP key and a certificate an address or a domain
 * prefers ("openpgp" or "smime"); NULL removes it. */
int queue_admin_prefer_set(queue_admin_t *a, const char *target, const char *method, char *err,
                           size_t errlen);
/* One line per setting: "target policy", then "target prefer method". */
int queue_admin_policy_list(queue_admin_t *a, buf_t *out, char *err, size_t errlen);

/* ---- the directory's authentication (issue 18) ---- */

/* Calls cb with the index as key_directory reads it. */
int queue_admin_key_directory(queue_admin_t *a, queue_key_directory_cb cb, void *arg, char *err,
                              size_t errlen);
/* What key_lookup reads for one canonical address (no domain), for cb. */
int queue_admin_key_address(queue_admin_t *a, const char *addr, queue_key_cb cb, void *arg,
                            char *err, size_t errlen);
/* Calls cb for every policy (prefer false) and preference (prefer true). */
int queue_admin_settings(queue_admin_t *a,
                         void (*cb)(bool prefer, const char *name, const char *value, void *arg),
                         void *arg, char *err, size_t errlen);
/* Replaces the index (n entries, each with its tag) and its tag, sealed at
 * sealed (>= version; above it the directory's version moves there): 1
 * done, 0 the directory is no longer at version (nothing written: read it
 * again), -1 on error. */
int queue_admin_key_seal(queue_admin_t *a, long long version, long long sealed, const char *tag,
                         const char *const *entries, const char *const *tags, size_t n, char *err,
                         size_t errlen);

/* ---- DKIM signing keys (dkim.c) ---- */

/* Stores k's selector (domain, selector, algorithm, record, sealed, tag; created
 * and active are not read: Redis's clock says when, and the rules below
 * whether it signs). It becomes the active one of its algorithm when the
 * domain has none, else it is stored inactive; *active says which. A
 * selector stored already ("... exists") and a third of one algorithm
 * ("... full ...") are refused with nothing written. */
int queue_admin_dkim_put(queue_admin_t *a, const queue_dkim_key_t *k, bool *active, char *err,
                         size_t errlen);
/* 1 deleted, 0 no such selector, -1 on error. The active one deleted leaves
 * its algorithm without an active key until one is activated. */
int queue_admin_dkim_delete(queue_admin_t *a, const char *domain, const char *selector, char *err,
                            size_t errlen);
/* Makes the selector the active one of its algorithm: 1, 0 no such, -1. */
int queue_admin_dkim_activate(queue_admin_t *a, const char *domain, const char *selector, char *err,
                              size_t errlen);
/* Stores tag for k's selector (sealpost dkim authenticate) when its sealed
 * key is still k's: 1, 0 changed meanwhile (nothing written), -1. */
int queue_admin_dkim_tag(queue_admin_t *a, const queue_dkim_key_t *k, const char *tag, char *err,
                         size_t errlen);
/* Calls cb for every stored key, by domain, then selector. */
int queue_admin_dkim_list(queue_admin_t *a, void (*cb)(const queue_dkim_key_t *k, void *arg),
                          void *arg, char *err, size_t errlen);

/* ---- the sealing keys' check values (keys.c) ---- */

/* As queue_seal_check: stores check for key_id unless one is stored
 * already, and appends the one stored to out for the caller to verify. */
int queue_admin_seal_check(queue_admin_t *a, const char *key_id, const void *check, size_t len,
                           buf_t *out, char *err, size_t errlen);

/* ---- the operator's view and acts ---- */

enum queue_job_state {
    QUEUE_STATE_DUE,
    QUEUE_STATE_SCHEDULED,
    QUEUE_STATE_LEASED,
    QUEUE_STATE_HELD
};

typedef struct queue_job_info {
    char jid[48];
    char mid[33];
    unsigned shard;
    enum queue_job_state state;
    long long when_ms; /* due at, lease ends at, or held since (Redis's clock) */
    char domain[256];
    unsigned attempts;
    char last_error[512];
    const char *rcpts;  /* "address[TAB DSN parameters]" lines */
    const char *sender; /* "" for the null sender */
    long long received_ms;
} queue_job_info_t;

/* Redis's clock, in ms. */
long long queue_admin_now_ms(queue_admin_t *a);
/* Calls cb for every job of every shard; what job points at lives until cb
 * returns. */
int queue_admin_jobs(queue_admin_t *a, unsigned shards,
                     void (*cb)(const queue_job_info_t *job, void *arg), void *arg, char *err,
                     size_t errlen);

typedef struct queue_message_info {
    char mid[33];
    char *sender, *params, *info;
    long long received_ms;
    unsigned bodies;
    queue_job_info_t *jobs; /* their sender is NULL: it is the message's */
    unsigned n_jobs;
} queue_message_info_t;

/* A message's envelope and jobs, never its body: 1 when found, 0 when not
 * (delivered, or no such id), -1 on error. */
int queue_admin_message(queue_admin_t *a, unsigned shards, const char *mid,
                        queue_message_info_t *out, char *err, size_t errlen);
void queue_admin_message_free(queue_message_info_t *m);

/* op is hold, release, retry or delete; result says what happened ("held",
 * "held at lease end", "no such job", ...). */
int queue_admin_job_op(queue_admin_t *a, unsigned shards, const char *op, const char *jid,
                       char *result, size_t rlen, char *err, size_t errlen);

typedef struct queue_trace_entry {
    long long ms;
    const char *job, *rcpt, *event, *detail;
} queue_trace_entry_t;

/* Calls cb for each entry of the message's trace, oldest first; returns how
 * many, or -1. */
int queue_admin_trace(queue_admin_t *a, unsigned shards, const char *mid,
                      void (*cb)(const queue_trace_entry_t *e, void *arg), void *arg, char *err,
                      size_t errlen);

#endif
