/* Private to delivery/: one SMTP client transaction on libuv. */
#ifndef SEALPOST_DELIVERY_CLIENT_H
#define SEALPOST_DELIVERY_CLIENT_H

#include "core/core.h"
#include "core/stream.h"
#include "delivery/hop.h"
#include "queue/queue.h"

#include <uv.h>

#define CLIENT_REPLY_MAX 200

typedef struct client_result {
    /* Per recipient of the job: the reply that decides its fate (2xx
     * delivered, 4xx try again, 5xx failed), or 0 when the transaction never
     * reached it (connection failure: try again). */
    int *codes;
    char (*replies)[CLIENT_REPLY_MAX]; /* per recipient: the deciding reply text */
    unsigned n_codes;
    /* The reply or error worth recording: "451 4.3.0 ..." or "connect: ...". */
    char detail[256];
    const char *remote; /* the MX name, or "host:port", that was tried */
    bool before_mail;   /* failed before MAIL FROM: the next MX host may do better */
    bool local;         /* codes and replies are our own decision, not a server's */
    bool peer_dsn;      /* the peer took the DSN parameters: it reports success itself */
    char tls[80];       /* "TLSv1.3 TLS_AES_256_GCM_SHA384" when STARTTLS was used */
    bool kept;          /* the connection stays open, idle, for the next job: see client_idle */
    bool stale;         /* a reused connection was found dead before any reply: no attempt */
} client_result_t;

typedef struct client client_t;

/* What every delivery of a worker shares. */
typedef struct client_env {
    uv_loop_t *loop;
    const config_t *cfg;
    SSL_CTX *tls; /* the policy per domain decides whether it is used */
} client_env_t;

typedef void (*client_done_cb)(const client_result_t *result, void *arg);
/* Called when everything but the final "." has been sent: the caller makes
 * sure it still owns the job (renews its lease) and answers with
 * client_finish_data. */
typedef void (*client_gate_cb)(client_t *client, void *arg);

/* Delivers job (all its recipients in one transaction) to hop (its name ""
 * for a numeric static route). gate may be NULL. done runs exactly once,
 * later; the client is valid until then. NULL (and no done) when there is
 * no memory. */
client_t *client_deliver(const client_env_t *env, const hop_t *hop, const queue_job_t *job,
                         client_gate_cb gate, client_done_cb done, void *arg);
/* Ends the transaction now, as if the connection had dropped: recipients
 * not yet accepted after the final dot are reported as not reached. */
void client_abort(client_t *client);

/* ---- connection reuse ----
 * After a transaction whose result says kept, the connection stays open,
 * idle, for [worker] connection_cache_time seconds (within five minutes of
 * its start, as Postfix does), and belongs to the caller: it must give it
 * a closed callback with client_idle, then either client_reuse it for a job
 * to the same destination (same MX name, same TLS policy) or client_quit it. */

/* closed runs once when the idle (or quitting) connection is gone. */
void client_idle(client_t *client, void (*closed)(client_t *client, void *arg), void *arg);
/* Runs job on the idle connection: done (and gate) as for client_deliver.
 * Returns -1 (the connection stays idle) when there is no memory. */
int client_reuse(client_t *client, const queue_job_t *job, client_gate_cb gate, client_done_cb done,
                 void *arg);
/* Says QUIT and closes; closed runs after. */
void client_quit(client_t *client);
/* Idle and usable: not quitting, not closed, no TLS close_notify seen. */
bool client_is_idle(const client_t *client);
/* The MX name (or host:port) and TLS policy an idle connection serves. */
const char *client_name(const client_t *client);
enum tls_policy client_tls_policy(const client_t *client);
/* Sends the final "." (ok), or aborts the transaction by closing the
 * connection without it (RFC 5321 §4.1.1.4: the server must then not
 * deliver; RSET cannot be sent in the middle of DATA). */
void client_finish_data(client_t *client, bool ok);

#endif
