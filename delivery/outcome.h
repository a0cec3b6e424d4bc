/* Private to delivery/: what one delivery attempt came to, recipient by
 * recipient, and recording it. The deciding steps (classify, backoff, the
 * notice) are functions of their arguments alone, so the unit tests run
 * them without a network or Redis; outcome_record puts them together. */
#ifndef SEALPOST_DELIVERY_OUTCOME_H
#define SEALPOST_DELIVERY_OUTCOME_H

#include "core/core.h"
#include "crypto/crypto.h"
#include "delivery/bounce.h"
#include "delivery/client.h"
#include "queue/queue.h"

#include <stdbool.h>
#include <stdint.h>

/* Per-recipient outcomes of delivery attempts, as counted in metrics. */
enum outcome_kind { OUT_DELIVERED, OUT_DEFERRED, OUT_BOUNCED, OUT_EXPIRED, OUTCOMES };
extern const char *const outcome_names[OUTCOMES];

/* What recording needs of the worker; it owns all of it. */
typedef struct outcome_env {
    const config_t *cfg;
    queue_t *queue;
    const seal_keyring_t *seal; /* seals the notices */
    metric_t *counts[OUTCOMES]; /* per recipient, by kind */
    metric_t *time_in_queue;    /* from arrival to delivery, per recipient */
    metric_t *notices;          /* bounces and relay notices made */
} outcome_env_t;

/* What one attempt decided, recipient by recipient. */
typedef struct outcome {
    enum outcome_kind *kinds; /* per recipient of the job */
    unsigned *pending;        /* indexes of the recipients tried again later */
    unsigned n_pending;
    bounce_rcpt_t *notified; /* to report now: failures, delays and relays asked about */
    char (*status)[16];      /* the RFC 3463 status of each notified recipient */
    unsigned n_notified;
    bool delayed; /* the notice warns of a delay */
    buf_t trace;  /* each recipient's outcome for the queue's trace log */
} outcome_t;

/* Room for n recipients; -1 when there is no memory (outcome_free it still). */
int outcome_init(outcome_t *o, unsigned n);
void outcome_free(outcome_t *o);

/* The delay before attempt attempts + 1, in ms: see outcome.c. */
uint64_t outcome_backoff_ms(const config_t *cfg, unsigned attempts);

/* Decides each recipient's fate from r (NULL: nothing is known of the
 * attempt, as when out of memory): 2xx delivered, 5xx bounced, the rest
 * deferred, or bounced as expired once the message is older than
 * max_queue_lifetime at now_ms. Fills o from outcome_init with the pending
 * recipients, the trace, and those whose NOTIFY asks for a notice now.
 * releasing: the job is being handed back by a stopping worker, so it
 * warns of no delay. */
void outcome_classify(const config_t *cfg, const queue_job_t *job, const client_result_t *r,
                      long long now_ms, bool releasing, outcome_t *o);

/* Writes the RFC 3464 notice for o's notified recipients, as message
 * bounce_id from the null sender, to out: 1 when written, 0 when none is due
 * (nobody to report on, or a null sender: a bounce is never bounced), -1 on
 * error. */
int outcome_notice(const config_t *cfg, const queue_job_t *job, const client_result_t *r,
                   const outcome_t *o, const char *bounce_id, buf_t *out);

/* Classifies, logs and counts the attempt, and completes the job in the
 * queue with its notice (sealed) in the same call: done runs as for
 * queue_complete, and not at all when -1 says the call could not be made
 * (no memory, or Redis not connected). *retry_ms is the backoff when some
 * recipients are tried again later (0 when releasing), else UINT64_MAX. */
int outcome_record(const outcome_env_t *env, const queue_job_t *job, const client_result_t *r,
                   bool releasing, uint64_t *retry_ms, queue_status_cb done, void *arg);

#endif
