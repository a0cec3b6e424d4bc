/* delivery: the worker. Claims due jobs from the queue with a lease, delivers
 * each over SMTP to its route, and records the outcome per recipient. */
#ifndef SEALPOST_DELIVERY_H
#define SEALPOST_DELIVERY_H

#include "core/core.h"
#include "crypto/crypto.h"
#include "queue/queue.h"

#include <stddef.h>
#include <uv.h>

typedef struct worker worker_t;

/* cfg, queue and seal must outlive the worker; seal opens the bodies it
 * sends and seals the bounces it makes. */
worker_t *worker_start(uv_loop_t *loop, const config_t *cfg, queue_t *queue,
                       const seal_keyring_t *seal, char *err, size_t errlen);
/* Stops claiming; deliveries in flight finish (bounded by their timeouts).
 * done runs when the last one has been recorded. */
void worker_stop(worker_t *worker, void (*done)(void *arg), void *arg);

#endif
