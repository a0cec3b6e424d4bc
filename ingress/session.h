/* Private to ingress/: what the listener and the session state machine share. */
#ifndef SEALPOST_INGRESS_SESSION_H
#define SEALPOST_INGRESS_SESSION_H

#include "core/stream.h"
#include "crypto/crypto.h"
#include "ingress/ingress.h"
#include "proto/proto.h"

#include <stdbool.h>

typedef struct session session_t;

/* What a listening port is for (RFC 8314 §3, RFC 6409): relay and MX
 * traffic, or submission, where a login comes before MAIL. */
enum listener_kind { LISTENER_RELAY, LISTENER_SUBMISSION, LISTENER_SMTPS, LISTENER_KINDS };

/* Why something was refused: each reason has its own reply code and its own
 * series of sealpost_ingress_refused_total. */
enum refusal {
    REFUSED_RELAY_DENIED,
    REFUSED_MAX_CONNECTIONS,
    REFUSED_MAX_CONNECTIONS_PER_IP,
    REFUSED_NON_SMTP,
    REFUSED_BAD_PROXY_HEADER,
    REFUSED_BARE_LINE_END,
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

enum auth_result { AUTH_OK, AUTH_FAILED, AUTH_RATE_LIMITED, AUTH_UNAVAILABLE, AUTH_RESULTS };

/* Where an AUTH exchange stands between its lines (RFC 4954 §4). */
enum auth_step { AUTH_IDLE, AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASSWORD, AUTH_CRAM };

/* "BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=<100 octets>" and room to spare. */
#define MAIL_PARAMS_MAX 256
/* "NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=<500 octets>" */
#define RCPT_PARAMS_MAX (PROTO_ORCPT_MAX + 48)

/* A recipient's address as the key directory files it, and the key its
 * mail is encrypted to (armored NULL: it gets the original). */
struct rcpt_key {
    char addr[PROTO_PATH_MAX + 1];
    char fpr[CRYPTO_FPR_MAX + 1];
    char *armored;
    size_t armored_len;
};

struct session {
    ingress_t *ingress;
    const config_t *cfg;
    session_t *prev, *next;
    stream_t *stream; /* NULL once closed */
    char peer[64];
    bool trusted;
    bool proxy_pending; /* from a balancer: the PROXY header comes first */
    enum listener_kind kind;

    buf_t out;         /* replies not yet handed to the stream */
    char tls_info[96]; /* "TLSv1.3 TLS_AES_256_GCM_SHA384" once the handshake is done */
    bool busy;         /* waiting for the queue */
    bool quitting;     /* close once the output is written */
    bool closed;       /* handle closing; free when not busy */
    bool skip_line;    /* discarding the rest of an over-long command line */
    bool eof;          /* the client half-closed: answer what it sent, then close */
    unsigned errors;

    enum auth_step auth_step;
    char login[256];     /* the authenticated user, or the one logging in */
    char challenge[300]; /* CRAM-MD5's: "<nonce@hostname>" */
    bool authenticated;

    char helo[256];
    bool esmtp;
    bool in_mail;
    bool body_8bit; /* BODY=8BITMIME */
    bool smtputf8;  /* MAIL ... SMTPUTF8: UTF-8 addresses and headers allowed */
    char sender[PROTO_PATH_MAX + 1];
    char mail_params[MAIL_PARAMS_MAX]; /* kept with the envelope, passed on by the worker */
    char **rcpts;                      /* each "address\0DSN parameters" in one allocation */
    struct rcpt_key *rcpt_keys;        /* one per rcpts[i] */
    unsigned n_rcpts;
    char *pending_rcpt;                     /* an entry for rcpts, waiting for its policy */
    char pending_canon[PROTO_PATH_MAX + 1]; /* ... and its address, canonical */
    bool in_data;
    bool chunking;      /* the body comes in BDAT chunks (RFC 3030) */
    bool chunk_pending; /* a BDAT command's octets are being read */
    bool chunk_last;    /* ... and they end the message */
    bool chunk_discard; /* ... and are dropped: the BDAT was refused */
    size_t chunk_left;  /* octets of the chunk still to come */
    proto_data_t data;
    buf_t body;
    size_t content_start; /* where the client's content begins in body, after Received: */
    char mid[33];
    uint64_t enqueue_start; /* uv_now when the enqueue call went out */
};

/* Queues a reply line (CRLF added); a 4xx or 5xx counts as an error. */
void session_reply(session_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Works through the buffered input as far as it can, then writes the
 * replies and decides whether to read on. */
void session_process(session_t *s);
/* Frees a closed session once nothing (its stream, a Redis reply, a worker
 * thread) still refers to it. */
void session_maybe_free(session_t *s);
/* Under TLS (STARTTLS, or an implicit-TLS port), the handshake done or not. */
bool session_secure(const session_t *s);

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
    unsigned verifying; /* password checks in the thread pool */
    struct ingress_crypt {
        keydir_t *keydir;
        char homes[4096]; /* the per-thread GnuPG homes' parent */
        uv_timer_t poll;  /* asks for the directory's version */
        bool poll_open;
        bool polling;     /* a version call is out */
        unsigned running; /* messages in the thread pool for encryption */
        metric_t *decisions[DECISIONS];
        metric_t *outcomes[GATEWAY_OUTCOMES + 1]; /* the last: refused, busy */
        metric_t *pending;
    } crypt;
    struct ingress_metrics {
        metric_t *connections[LISTENER_KINDS];
        metric_t *open;
        metric_t *refused[REFUSALS];
        metric_t *accepted, *received_bytes, *recipients, *enqueue_failed;
        metric_t *auth[AUTH_RESULTS];
        metric_t *tls[2];          /* handshakes failed, done */
        metric_t *enqueue_seconds; /* the Redis round trip that stores a message */
    } metrics;
    session_t *sessions; /* doubly linked, for shutdown */
    void (*on_stopped)(void *arg);
    void *on_stopped_arg;
};

/* Accepts the listener's next connection and greets it (after the TLS
 * handshake, on an implicit-TLS listener); false when none could be taken. */
bool session_accept(ingress_t *ingress, uv_stream_t *listener, enum listener_kind kind);
/* Ends every session (shutdown): each idle one gets 421 now, a busy one right
 * after the reply for the message it is committing. */
void session_shutdown_all(ingress_t *ingress);
/* Called by a session when its handle is closed and it has been freed. */
void ingress_session_gone(ingress_t *ingress);
/* Counts a refusal (the caller replies and logs). */
void ingress_refused(ingress_t *ingress, enum refusal why);
/* The reason's name in logs and metrics: "relay_denied", ... */
const char *ingress_refusal_name(enum refusal why);
/* Frees a stopping ingress once nothing refers to it any more. */
void ingress_maybe_stopped(ingress_t *ingress);

/* Adds a recipient whose policy allows it (entry: see rcpts) and says 250. */
void session_add_rcpt(session_t *s, char *entry, const struct rcpt_key *key);
/* Stores the message with the gateway's sealed variants; 250 when stored. */
void session_enqueue(session_t *s, const gateway_job_t *job);
/* The message was not stored (the reply is out, unless the client left):
 * the transaction ends. */
void session_commit_failed(session_t *s);

/* ---- the encryption gateway (encrypt.c) ---- */

int encrypt_start(ingress_t *ingress, char *err, size_t errlen);
void encrypt_stop(ingress_t *ingress);
/* Whether the ingress must wait for a handle or a call of the gateway. */
bool encrypt_busy(const ingress_t *ingress);
void encrypt_free(ingress_t *ingress);
/* Decides about a recipient (entry, allocated, taken over): its policy and
 * key from the cache or Redis, then session_add_rcpt or a refusal. */
void encrypt_rcpt(session_t *s, char *entry);
void encrypt_rcpt_free(struct rcpt_key *k);
/* Runs the gateway over the body (in the thread pool when anything is
 * encrypted), then session_enqueue or session_commit_failed. */
void encrypt_commit(session_t *s);

/* ---- AUTH (auth.c) ---- */

/* Checks [ingress] auth_mechanisms. */
int auth_check_config(const config_t *cfg, char *err, size_t errlen);
/* The EHLO line for AUTH, when the session may log in now. */
void auth_advertise(session_t *s);
bool auth_check(session_t *s, const proto_command_t *cmd);
void auth_proceed(session_t *s, const proto_command_t *cmd);
/* A line that answers a 334 challenge. */
void auth_continue(session_t *s, const char *line, size_t len);

#endif
