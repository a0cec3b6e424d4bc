/* Private to ingress/: what the listener and the session state machine share. */
#ifndef SEALPOST_INGRESS_SESSION_H
#define SEALPOST_INGRESS_SESSION_H

#include "core/tls.h"
#include "ingress/ingress.h"
#include "proto/proto.h"

#include <stdbool.h>

typedef struct session session_t;

struct ingress {
    uv_loop_t *loop;
    const config_t *cfg;
    queue_t *queue;
    char postmaster[PROTO_PATH_MAX + 1]; /* where <Postmaster> goes; "" when nowhere */
    SSL_CTX *tls_ctx;                    /* NULL: no certificate configured, no STARTTLS */
    uv_tcp_t listener;
    bool listening;
    bool stopping;
    unsigned n_sessions;
    session_t *sessions; /* doubly linked, for shutdown */
    void (*on_stopped)(void *arg);
    void *on_stopped_arg;
};

/* A session is allocated around its tcp handle before the accept. */
uv_tcp_t *session_alloc_handle(void);
void session_discard_handle(uv_tcp_t *tcp);
/* Takes over an accepted connection and greets it. */
void session_start(ingress_t *ingress, uv_tcp_t *tcp);
/* Ends every session (shutdown): each idle one gets 421 now, a busy one right
 * after the reply for the message it is committing. */
void session_shutdown_all(ingress_t *ingress);
/* Called by a session when its handle is closed and it has been freed. */
void ingress_session_gone(ingress_t *ingress);

#endif
