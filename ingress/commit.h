/* Private to ingress/: the one way from the end of a message's data to its
 * reply: the header completed for a logged-in sender, the gateway's body
 * variants, sealed, stored in one call, replicas waited for, and then 250, or
 * the 4xx/5xx that says why not. No message is acknowledged before Redis has
 * stored it. */
#ifndef SEALPOST_INGRESS_COMMIT_H
#define SEALPOST_INGRESS_COMMIT_H

#include "ingress/transaction.h"

/* What commit needs to know of the session. */
struct commit_client {
    const char *peer, *helo;
    bool authenticated;
    const bool *gone; /* set by the session when the client left meanwhile */
};

/* reply is the line to send ("250 2.0.0 Ok: queued as ..."), or NULL when
 * the client is gone. */
typedef void (*commit_done_cb)(void *arg, const char *reply);

/* Commits tx's message, taking tx over (it is freed after done). done runs
 * exactly once, maybe before this returns; client must stay valid until then. */
void commit_message(ingress_t *ingress, struct transaction *tx, const struct commit_client *client,
                    commit_done_cb done, void *arg);

#endif
