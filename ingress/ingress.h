/* ingress: the libuv SMTP server that accepts mail and commits it to the queue.
 * A message is acknowledged with 250 only after the queue's enqueue call has
 * returned success; any failure on the way is 451 and the client keeps it. */
#ifndef SEALPOST_INGRESS_H
#define SEALPOST_INGRESS_H

#include "core/core.h"
#include "crypto/crypto.h"
#include "queue/queue.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct ingress ingress_t;

/* Listens on cfg->ingress.listen. cfg, queue and seal (which seals every
 * body before it is stored) must outlive the ingress. */
ingress_t *ingress_start(uv_loop_t *loop, const config_t *cfg, queue_t *queue,
                         const seal_keyring_t *seal, char *err, size_t errlen);
/* Loads again what comes from files (SIGHUP): the TLS certificate and key,
 * which new sessions use while open ones keep what they started with, and
 * the S/MIME CA file and CRLs. On failure the old ones stay, and the error
 * is logged. */
void ingress_reload(ingress_t *ingress);
/* Runs an SMTP session over a socket already connected (socket activation;
 * tests, over one end of a socketpair), as if accepted on the relay port,
 * or on the submission port, from peer (NULL: unknown). The ingress owns fd
 * from then on. -1 when no session could be made. */
int ingress_open_fd(ingress_t *ingress, int fd, bool submission, const struct sockaddr *peer);
/* Whether the ingress can take every message it may be sent: false, with
 * *why, while encryption cannot work (its GnuPG homes cannot be made), so
 * that a balancer sends mail elsewhere; cheap, for /readyz. */
bool ingress_ready(const ingress_t *ingress, const char **why);
/* Stops accepting and closes every session; messages in flight to Redis get
 * their reply first. done runs once everything is closed. */
void ingress_stop(ingress_t *ingress, void (*done)(void *arg), void *arg);

#endif
