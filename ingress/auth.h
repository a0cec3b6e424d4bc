/* Private to ingress/: SMTP AUTH (RFC 4954) with PLAIN (RFC 4616), LOGIN
 * and CRAM-MD5 (RFC 2195). An exchange is driven by the session, which sends
 * the replies it is handed and is told the verdict of the check through a
 * callback; nothing here writes to a client or changes a session. */
#ifndef SEALPOST_INGRESS_AUTH_H
#define SEALPOST_INGRESS_AUTH_H

#include "ingress/internal.h"

/* Where an exchange stands between its lines (RFC 4954 §4). */
enum auth_step { AUTH_IDLE, AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASSWORD, AUTH_CRAM };

typedef void (*auth_done_cb)(void *arg, enum auth_result result);

/* One exchange: the session holds it. */
typedef struct auth_exchange {
    ingress_t *ingress;
    const char *peer; /* whose attempts these are (the session's) */
    enum auth_step step;
    char login[256];     /* the user logging in: the session's login once AUTH_OK */
    char challenge[300]; /* CRAM-MD5's: "<nonce@hostname>" */
    auth_done_cb done;
    void *arg;
} auth_exchange_t;

/* What the session does after a step: send reply and be done (AUTH_REPLY),
 * send it and read the next line as an answer to it (AUTH_ANSWER), or wait
 * for done (AUTH_CHECKING: it may already have run). */
enum auth_next { AUTH_REPLY, AUTH_ANSWER, AUTH_CHECKING };

#define AUTH_REPLY_MAX 512

/* Checks [ingress] auth_mechanisms. */
int auth_check_config(const config_t *cfg, char *err, size_t errlen);
/* The EHLO keyword line ("AUTH PLAIN LOGIN"), "" when none is enabled. */
void auth_keyword(const config_t *cfg, char *out, size_t len);
/* Why AUTH with these arguments ("MECH [initial-response]") cannot start
 * now, as the reply to give; NULL when it can. */
const char *auth_refusal(const config_t *cfg, bool secure, bool authenticated, bool in_mail,
                         bool esmtp, const char *args, size_t len);

/* AUTH's arguments: a mechanism offered, and maybe an initial response. */
enum auth_next auth_begin(auth_exchange_t *a, const char *args, size_t len, char *reply,
                          size_t replylen);
/* A line that answers a 334 ("*" cancels). */
enum auth_next auth_answer(auth_exchange_t *a, const char *line, size_t len, char *reply,
                           size_t replylen);
/* The reply that gives a verdict: 235, 535 or 454. */
const char *auth_verdict_reply(enum auth_result result);

#endif
