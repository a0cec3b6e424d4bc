/* Private to ingress/: the SMTP session as a connection: the stream, the
 * input taken as the state says (a PROXY header, command lines, message
 * content, BDAT octets), the replies, timeouts, admission and the session's
 * life. What a line or a message means is the dialogue's (smtp.c), which
 * the session calls through the handlers it was given, and which calls the
 * session's functions below; the session includes nothing above it. */
#ifndef SEALPOST_INGRESS_SESSION_H
#define SEALPOST_INGRESS_SESSION_H

#include "ingress/auth.h"
#include "ingress/internal.h"
#include "ingress/transaction.h"

enum session_state {
    STATE_PROXY,   /* a balancer's PROXY header comes first */
    STATE_COMMAND, /* command lines */
    STATE_AUTH,    /* the line that answers a 334 */
    STATE_DATA,    /* message content, up to the line "." */
    STATE_CHUNK,   /* a BDAT chunk's octets */
    STATE_WAIT     /* an answer is awaited: the input waits */
};

/* What the session's deadline is running for (session.c: the clocks). */
enum session_clock {
    CLOCK_NONE,    /* none yet: the next one starts at the end of this pass */
    CLOCK_COMMAND, /* a command line, an AUTH answer or a PROXY header */
    CLOCK_TLS,     /* a TLS handshake */
    CLOCK_DATA,    /* DATA's content or a BDAT chunk, at min_data_rate */
    CLOCK_WAIT     /* our answer: not the client's time (a watchdog only) */
};

/* What the dialogue does with the input the session frames. */
struct session_handlers {
    /* A command line, or the answer to a 334 (STATE_AUTH), without its CRLF. */
    void (*line)(session_t *s, const char *line, size_t len);
    /* The end of DATA's content, or of a BDAT chunk's octets. */
    void (*body_end)(session_t *s);
};

struct session {
    ingress_t *ingress;
    const config_t *cfg;
    session_t *prev, *next;
    stream_t *stream; /* NULL once closed */
    enum listener_kind kind;
    enum session_state state;
    char peer[64];
    char peer_key[64]; /* what limits count per: the address, an IPv6 /64 (policy_client_key) */
    bool trusted;
    bool esmtp;
    bool authenticated; /* as auth.login */
    bool quitting;      /* close once the replies are written (after the awaited one) */
    bool eof;           /* the client half-closed: answer what it sent, then close */
    bool skip_line;     /* discarding the rest of an over-long command line */
    bool closed;        /* the stream is closing; freed when nothing else refers to it */
    bool processing;    /* in session_process: a callback must not enter it again */
    bool handshaking;   /* TLS started and not yet ready */
    bool spoke;         /* a first line was taken: no longer checked whole for HTTP */
    bool admitted;      /* past policy_admit: counted in ingress->n_admitted */
    unsigned errors;
    unsigned junk; /* NOOP, RSET, VRFY, HELP so far */
    struct {
        enum session_clock kind;
        uint64_t start;  /* uv_now (ms) when it began */
        uint64_t at;     /* the deadline (uv_now ms) */
        uint64_t armed;  /* the deadline the stream's timer was last set for */
        uint64_t credit; /* content octets taken since the deadline last moved */
    } clock;
    char helo[256];
    auth_exchange_t auth;
    struct transaction *tx; /* from MAIL to the end of the transaction */
    struct {
        size_t left;  /* octets of the BDAT chunk still to come */
        bool last;    /* it ends the message */
        bool discard; /* it is read and dropped: the BDAT was refused */
    } chunk;
    char pending_rcpt[PROTO_PATH_MAX + 1]; /* waiting for its policy, with its DSN parameters */
    char pending_dsn[PROTO_RCPT_PARAMS_MAX];
    buf_t out; /* replies not yet handed to the stream */
    const struct session_handlers *handlers;
};

/* Accepts the listener's next connection and greets it (after the TLS
 * handshake, on an implicit-TLS listener); false when none could be taken. */
bool session_accept(ingress_t *ingress, uv_stream_t *listener, enum listener_kind kind,
                    const struct session_handlers *handlers);
/* The same over a socket already connected (one end of a socketpair in
 * tests, without TCP), as if accepted on kind's listener from peer. */
bool session_open_fd(ingress_t *ingress, int fd, enum listener_kind kind,
                     const struct sockaddr *peer, const struct session_handlers *handlers);
/* Ends every session (shutdown): each idle one gets 421 now, one that
 * awaits an answer right after its reply. */
void session_shutdown_all(ingress_t *ingress);

/* Queues a reply line (CRLF added); a 4xx or 5xx counts as an error,
 * but for a 4xx of the mail system's own (4.3.x). */
void session_reply(session_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Under TLS (STARTTLS, or an implicit-TLS port), the handshake done or not. */
bool session_secure(const session_t *s);
/* STARTTLS: the replies so far and then ready go out in clear, and TLS
 * begins, dropping what the client sent behind its STARTTLS. False when it
 * cannot: with a 454 queued when nothing went out, else closing. */
bool session_start_tls(session_t *s, const char *ready);
/* An awaited answer came: back to commands, and on with the input. */
void session_resume(session_t *s);
/* For an answer that comes back after the client left: true when it did,
 * and then the session is freed (if nothing else refers to it) and must not
 * be touched again. */
bool session_drop_if_closed(session_t *s);

#endif
