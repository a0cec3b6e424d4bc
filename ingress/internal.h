/* Private to ingress/: the state the ingress's files share, and the reasons
 * it refuses things for.
 *
 * The files call each other in one direction only (docs/architecture.md):
 *   server.c       listeners, start, stop, reload         -> smtp, session, encrypt, auth
 *   smtp.c         the dialogue: the command table        -> session, commit, encrypt, auth,
 *                                                            policy, transaction
 *   session.c      the connection: framing, replies, life -> policy, transaction
 *   commit.c       end of data to the reply               -> encrypt, transaction
 *   encrypt.c      recipients' keys, the encryption job   -> discover, transaction
 *   discover.c     key discovery at RCPT (discovery/)
 *   auth.c         AUTH exchanges and their checks
 *   policy.c       admission, PROXY, relay and sender rules
 *   transaction.c  one mail transaction: envelope, recipients, body
 *   metrics.c      the counters all of them update (this header)
 * Where a lower file must tell an upper one something, it calls a function
 * pointer it was given (session_handlers, the callbacks of auth, encrypt and
 * commit, check_stopped below); tests/lint/layers.py checks there is no
 * circle. */
#ifndef SEALPOST_INGRESS_INTERNAL_H
#define SEALPOST_INGRESS_INTERNAL_H

#include "core/stream.h"
#include "crypto/crypto.h"
#include "ingress/ingress.h"
#include "proto/proto.h"

#include <stdbool.h>

/* What a listening port is for (RFC 8314 §3, RFC 6409): relay and MX
 * traffic, or submission, where a login comes before MAIL. */
enum listener_kind { LISTENER_RELAY, LISTENER_SUBMISSION, LISTENER_SMTPS, LISTENER_KINDS };

/* Why something was refused: each reason has its own reply code and its own
 * series of sealpost_ingress_refused_total. */
enum refusal {
    REFUSED_NONE = -1,
    REFUSED_RELAY_DENIED,
    REFUSED_MAX_CONNECTIONS,
    REFUSED_MAX_CONNECTIONS_PER_IP,
    REFUSED_CONNECTION_RATE,
    REFUSED_NON_SMTP,
    REFUSED_BAD_PROXY_HEADER,
    REFUSED_BARE_LINE_END,
    REFUSED_NUL_IN_DATA,
    REFUSED_LINE_TOO_LONG,
    REFUSED_MESSAGE_TOO_BIG,
    REFUSED_TOO_MANY_RECIPIENTS,
    REFUSED_TOO_MANY_ERRORS,
    REFUSED_TIMEOUT,
    REFUSED_SENDER_LOGIN_MISMATCH,
    REFUSED_AUTH_REQUIRED,
    REFUSED_SMTPUTF8_REQUIRED,
    REFUSED_NO_POSTMASTER,
    REFUSED_ENCRYPTION_REQUIRED,
    REFUSED_NOT_READY,
    REFUSALS
};

/* The verdict of an AUTH exchange. */
enum auth_result { AUTH_OK, AUTH_FAILED, AUTH_RATE_LIMITED, AUTH_UNAVAILABLE, AUTH_RESULTS };

typedef struct session session_t;
typedef struct encrypt encrypt_t;

struct ingress_metrics {
    metric_t *connections[LISTENER_KINDS];
    metric_t *open;
    metric_t *refused[REFUSALS];
    metric_t *accepted, *received_bytes, *recipients, *enqueue_failed;
    metric_t *auth[AUTH_RESULTS];
    metric_t *tls[2];          /* handshakes failed, done */
    metric_t *enqueue_seconds; /* the Redis round trip that stores a message */
    metric_t *stress;          /* 1 while the node is under stress */
};

/* Connections admitted lately per client address (policy.c), for
 * max_connection_rate: a token bucket per address in a table of fixed
 * size, set-associative, so a flood of addresses costs no memory; an
 * address pushed out by others (the least recently seen of its set goes)
 * starts again with a full bucket. */
#define RATE_SETS 512
#define RATE_WAYS 8
struct connection_rate {
    char client[64]; /* policy_client_key; "" when the slot is free */
    double tokens;   /* connections it may still open now */
    uint64_t at;     /* uv_now when tokens was computed */
};

struct ingress {
    uv_loop_t *loop;
    const config_t *cfg;
    queue_t *queue;
    const seal_keyring_t *seal;
    char postmaster[PROTO_PATH_MAX + 1]; /* where <Postmaster> goes; "" when nowhere */
    SSL_CTX *tls_ctx;                    /* NULL: no certificate configured, no STARTTLS */
    struct listener {
        uv_tcp_t tcp;
        ingress_t *ingress;
        enum listener_kind kind;
    } listeners[LISTENER_KINDS];
    unsigned listeners_open;
    bool stopping;
    unsigned n_sessions;
    /* Of them, those past admission: what max_connections and stress count,
     * so a burst of connections being refused (each open until its 421 is
     * written) takes no slot from a client that would be admitted. */
    unsigned n_admitted;
    session_t *sessions; /* doubly linked, for shutdown and the per-address count */
    unsigned verifying;  /* password checks in the thread pool */
    bool stressed;       /* past stress_threshold: shorter limits (policy_stress_update) */
    struct connection_rate rates[RATE_SETS * RATE_WAYS];
    encrypt_t *encrypt;
    struct ingress_metrics metrics;
    /* Called when something that kept the ingress alive (a session, the
     * gateway's timer) has gone: a stopping ingress may be freed. */
    void (*check_stopped)(ingress_t *ingress);
    void (*on_stopped)(void *arg);
    void *on_stopped_arg;
};

/* metrics.c: every series exists from the start, at 0, so a rate over it
 * is defined. */
void ingress_register_metrics(struct ingress_metrics *m);
/* Counts a refusal (the caller replies and logs). */
void ingress_refused(ingress_t *ingress, enum refusal why);
/* The reason's name in logs and metrics: "relay_denied", ... */
const char *ingress_refusal_name(enum refusal why);
/* The listener's configuration key: "listen", "submission_listen", ... */
const char *ingress_listener_name(enum listener_kind kind);

#endif
