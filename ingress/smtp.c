/* The SMTP dialogue: one table of commands, each with a check (is it
 * allowed now, are its arguments well-formed) and a proceed (do it, reply),
 * and what ends a message. The session (session.c) frames the input and
 * calls this file with each line and at each end of a body; the answers
 * that come from elsewhere (policy, encryption, login checks, the commit)
 * come back here, where the dialogue's replies are written and its state
 * changed. The session itself writes only what its framing decides. */
#include "ingress/smtp.h"

#include "ingress/auth.h"
#include "ingress/commit.h"
#include "ingress/encrypt.h"
#include "ingress/policy.h"
#include "ingress/session.h"
#include "ingress/transaction.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the transaction and its end ---- */

static void transaction_end(session_t *s)
{
    transaction_free(s->tx);
    s->tx = NULL;
}

/* What DATA and BDAT both need: a transaction with a recipient. */
static bool transaction_ready(session_t *s)
{
    if (!s->tx) {
        session_reply(s, "503 5.5.1 Error: need MAIL command");
        return false;
    }
    if (s->tx->n_rcpts == 0) {
        session_reply(s, "554 5.5.1 Error: no valid recipients");
        return false;
    }
    return true;
}

static bool start_body(session_t *s, bool chunked)
{
    struct received r = {.helo = s->helo,
                         .peer = s->peer,
                         .tls_info = session_secure(s) ? stream_tls_info(s->stream) : NULL,
                         .hostname = s->cfg->ingress.hostname,
                         .esmtp = s->esmtp,
                         .authenticated = s->authenticated};
    if (transaction_start_body(s->tx, &r, s->cfg, chunked) == 0) return true;
    session_reply(s, "451 4.3.1 Insufficient system resources");
    return false;
}

/* ---- committing a message ---- */

static void on_committed(void *arg, const char *text)
{
    session_t *s = arg;
    if (session_drop_if_closed(s)) return;
    if (text) session_reply(s, "%s", text);
    session_resume(s);
}

/* The transaction goes to commit.c, which gives the reply. */
static void commit(session_t *s)
{
    struct transaction *tx = s->tx;
    s->tx = NULL;
    s->state = STATE_WAIT;
    struct commit_client client = {s->peer, s->helo, s->authenticated, &s->closed};
    commit_message(s->ingress, tx, &client, on_committed, s);
}

/* The content broke a rule: the reply for it, and the transaction ends. */
static void refuse_content(session_t *s)
{
    char text[POLICY_REPLY_MAX];
    transaction_refusal(s->ingress, s->tx, text, sizeof text);
    session_reply(s, "%s", text);
    log_info("event=refused reason=data_error error=%d client=%s", (int)s->tx->data.error, s->peer);
    transaction_end(s);
}

/* The end of DATA's content, or a whole BDAT chunk: RFC 3030 §3 wants a
 * reply per BDAT; the LAST one's is the message's, given once it is stored. */
static void body_end(session_t *s)
{
    bool chunk = s->tx->chunking;
    if (chunk && s->chunk.last) proto_data_end(&s->tx->data);
    if (s->tx->data.error)
        refuse_content(s); /* BDATs already pipelined find no transaction: 503 */
    else if (!chunk || s->chunk.last)
        commit(s);
    else
        session_reply(s, "250 2.0.0 Ok: %zu octets so far", s->tx->data.size);
}

/* ---- commands ---- */

typedef struct command {
    proto_verb_t verb;
    bool (*check)(session_t *s, const proto_command_t *cmd);
    void (*proceed)(session_t *s, const proto_command_t *cmd);
} command_t;

static bool check_none(session_t *s, const proto_command_t *cmd)
{
    (void)s;
    (void)cmd;
    return true;
}

static bool check_no_args(session_t *s, const proto_command_t *cmd)
{
    if (cmd->args_len == 0) return true;
    session_reply(s, "501 5.5.4 Syntax: %s takes no arguments", proto_verb_name(cmd->verb));
    return false;
}

/* RFC 5321 §4.1.1.1: a domain or an address literal; we take any printable
 * word, since the name is only recorded, never trusted. */
static bool check_helo(session_t *s, const proto_command_t *cmd)
{
    bool ok = cmd->args_len > 0 && cmd->args_len < sizeof s->helo;
    for (size_t i = 0; ok && i < cmd->args_len; i++)
        ok = cmd->args[i] > 32 && cmd->args[i] < 127;
    if (!ok) session_reply(s, "501 5.5.4 Syntax: %s hostname", proto_verb_name(cmd->verb));
    return ok;
}

static void proceed_helo(session_t *s, const proto_command_t *cmd)
{
    transaction_end(s);
    memcpy(s->helo, cmd->args, cmd->args_len);
    s->helo[cmd->args_len] = 0;
    s->esmtp = cmd->verb == PROTO_EHLO;
    const char *host = s->cfg->ingress.hostname;
    if (!s->esmtp) {
        session_reply(s, "250 %s", host);
        return;
    }
    session_reply(s,
                  "250-%s\r\n250-PIPELINING\r\n250-SIZE %zu\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                  "250-DSN\r\n250-CHUNKING",
                  host, s->cfg->ingress.max_message_size);
    if (s->ingress->tls_ctx && !session_secure(s)) session_reply(s, "250-STARTTLS");
    char keyword[64];
    auth_keyword(s->cfg, keyword, sizeof keyword);
    if (session_secure(s) && !s->authenticated && keyword[0]) session_reply(s, "250-%s", keyword);
    session_reply(s, "250 ENHANCEDSTATUSCODES");
}

/* Parses the path and reports a syntax error with the right code. */
static bool parse_path(session_t *s, const proto_command_t *cmd, proto_path_t *path)
{
    bool mail = cmd->verb == PROTO_MAIL;
    enum proto_status st = proto_path_parse(cmd->args, cmd->args_len,
                                            mail ? PROTO_REVERSE_PATH : PROTO_FORWARD_PATH, path);
    if (st == PROTO_E_PATH_LENGTH)
        session_reply(s, "501 5.1.3 Address too long");
    else if (st == PROTO_E_PARAM)
        session_reply(s, "501 5.5.4 Syntax error in parameters");
    else if (st != PROTO_OK)
        session_reply(s, "501 5.1.%d Bad %s address syntax", mail ? 7 : 3,
                      mail ? "sender" : "recipient");
    if (st != PROTO_OK) return false;
    if (path->n_params && !s->esmtp) {
        session_reply(s, "555 5.5.4 Parameters need EHLO");
        return false;
    }
    char text[POLICY_REPLY_MAX];
    if (proto_params_unique(path, text, sizeof text)) {
        session_reply(s, "%s", text);
        return false;
    }
    return true;
}

/* RFC 6531 §3.4: a UTF-8 address only in a transaction that asked for it. */
static bool address_allowed(session_t *s, const proto_path_t *path, bool smtputf8)
{
    if (!path->utf8 || smtputf8) return true;
    session_reply(s, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
    ingress_refused(s->ingress, REFUSED_SMTPUTF8_REQUIRED);
    return false;
}

static bool check_mail(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    char text[POLICY_REPLY_MAX];
    if (!s->helo[0]) {
        session_reply(s, "503 5.5.1 Error: send HELO/EHLO first");
        return false;
    }
    if (policy_mail(s->ingress, s->kind, session_secure(s), s->authenticated, text, sizeof text) !=
        REFUSED_NONE) {
        session_reply(s, "%s", text);
        return false;
    }
    if (s->tx) {
        session_reply(s, "503 5.5.1 Error: nested MAIL command");
        return false;
    }
    return true;
}

static void proceed_mail(session_t *s, const proto_command_t *cmd)
{
    proto_path_t path;
    proto_mail_params_t params;
    char text[POLICY_REPLY_MAX];
    if (!parse_path(s, cmd, &path)) return;
    int code = proto_mail_params(&path, s->cfg->ingress.max_message_size, session_secure(s),
                                 &params, text, sizeof text);
    if (code == 552) ingress_refused(s->ingress, REFUSED_MESSAGE_TOO_BIG);
    if (code) {
        session_reply(s, "%s", text);
        return;
    }
    if (!address_allowed(s, &path, params.smtputf8)) return;
    if (policy_sender(s->ingress, s->peer, &path, s->authenticated ? s->auth.login : NULL, text,
                      sizeof text) != REFUSED_NONE) {
        session_reply(s, "%s", text);
        return;
    }
    s->tx = transaction_new(path.addr, &params);
    if (!s->tx) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        return;
    }
    session_reply(s, "250 2.1.0 Ok");
}

/* A recipient past max_recipients. RFC 5321 §4.5.3.1.10: a client that
 * pipelined more is to send the rest in a later transaction, so the 452 is
 * no error of its: up to max_recipients more (Postfix's
 * smtpd_recipient_overshoot_limit) it does not count towards max_errors,
 * which would close the connection and lose the recipients accepted so far.
 * Past that the client is not listening, and each one counts. */
static void refuse_overshoot(session_t *s)
{
    unsigned errors = s->errors;
    session_reply(s, "452 4.5.3 Error: too many recipients");
    if (s->tx->overshoot++ < s->cfg->ingress.max_recipients) s->errors = errors;
    ingress_refused(s->ingress, REFUSED_TOO_MANY_RECIPIENTS);
}

static bool check_rcpt(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (!s->tx) {
        session_reply(s, "503 5.5.1 Error: need MAIL command");
        return false;
    }
    if (s->tx->n_rcpts >= s->cfg->ingress.max_recipients) {
        refuse_overshoot(s);
        return false;
    }
    return true;
}

/* The encryption policy has had the last word on the pending recipient. */
static void rcpt_decided(session_t *s, enum rcpt_verdict verdict, struct rcpt_key *key)
{
    switch (verdict) {
    case RCPT_PLAIN:
    case RCPT_ENCRYPT:
        if (transaction_add_rcpt(s->tx, s->pending_rcpt, s->pending_dsn, key) < 0)
            session_reply(s, "452 4.3.1 Insufficient system resources");
        else
            session_reply(s, "250 2.1.5 Ok");
        break;
    case RCPT_REFUSED:
        session_reply(s, "550 5.7.1 <%s>: Recipient requires encryption and no usable key is known",
                      s->pending_rcpt);
        break;
    case RCPT_IN_DOUBT:
        session_reply(s, "451 4.7.5 <%s>: Recipient's key cannot be checked now, try again later",
                      s->pending_rcpt);
        break;
    case RCPT_LOOKUP_FAILED:
        session_reply(s,
                      "451 4.7.1 <%s>: Recipient's key could not be looked up now, try again "
                      "later",
                      s->pending_rcpt);
        break;
    case RCPT_UNAVAILABLE:
        session_reply(s, "451 4.3.0 Recipient's encryption policy unavailable, try again later");
        break;
    case RCPT_NO_MEMORY:
    case RCPT_PENDING:
        session_reply(s, "452 4.3.1 Insufficient system resources");
        break;
    }
    rcpt_key_free(key);
}

static void on_rcpt_verdict(void *arg, enum rcpt_verdict verdict, struct rcpt_key *key)
{
    session_t *s = arg;
    if (session_drop_if_closed(s)) return;
    rcpt_decided(s, verdict, key);
    session_resume(s);
}

static void proceed_rcpt(session_t *s, const proto_command_t *cmd)
{
    proto_path_t path;
    char text[POLICY_REPLY_MAX];
    if (!parse_path(s, cmd, &path) || !address_allowed(s, &path, s->tx->params.smtputf8)) return;
    if (proto_rcpt_params(&path, s->tx->params.smtputf8, s->pending_dsn, text, sizeof text)) {
        session_reply(s, "%s", text);
        return;
    }
    const char *addr =
        policy_rcpt(s->ingress, s->peer, &path, s->trusted, s->authenticated, text, sizeof text);
    if (!addr) {
        session_reply(s, "%s", text);
        return;
    }
    if (transaction_has_rcpt(s->tx, addr)) { /* a duplicate is accepted once */
        session_reply(s, "250 2.1.5 Ok");
        return;
    }
    snprintf(s->pending_rcpt, sizeof s->pending_rcpt, "%s", addr);
    struct rcpt_key key = {0};
    s->state = STATE_WAIT;
    enum rcpt_verdict v = encrypt_rcpt(s->ingress->encrypt, addr, s->peer, s->tx->sender[0] != 0,
                                       &key, on_rcpt_verdict, s);
    if (v == RCPT_PENDING) return;
    s->state = STATE_COMMAND;
    rcpt_decided(s, v, &key);
}

static bool check_data(session_t *s, const proto_command_t *cmd)
{
    if (!check_no_args(s, cmd)) return false;
    if (s->tx && s->tx->chunking) { /* RFC 3030 §2: not both in one transaction */
        session_reply(s, "503 5.5.1 Error: DATA after BDAT");
        return false;
    }
    return transaction_ready(s);
}

static void proceed_data(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (!start_body(s, false)) return;
    s->state = STATE_DATA;
    session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* The chunk's octets follow the command whatever the reply, so a refused
 * BDAT still has them read and dropped (chunk.discard) to stay in step; only
 * a chunk size that cannot be read, or one past the size limit, ends the
 * session instead. */
static bool check_bdat(session_t *s, const proto_command_t *cmd)
{
    unsigned long long size;
    bool last;
    if (!proto_bdat_args(cmd->args, cmd->args_len, &size, &last)) {
        session_reply(s, "501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection");
        s->quitting = true;
        return false;
    }
    size_t so_far = s->tx && s->tx->chunking ? s->tx->data.size : 0;
    if (size > s->cfg->ingress.max_message_size - so_far) {
        session_reply(s, "552 5.3.4 Message size exceeds fixed limit; closing connection");
        ingress_refused(s->ingress, REFUSED_MESSAGE_TOO_BIG);
        s->quitting = true;
        return false;
    }
    s->state = STATE_CHUNK;
    s->chunk.left = (size_t)size;
    s->chunk.last = last;
    s->chunk.discard = true;
    if (!s->esmtp) {
        session_reply(s, "503 5.5.1 Error: BDAT needs EHLO");
        return false;
    }
    if (!transaction_ready(s)) return false;
    s->chunk.discard = false;
    return true;
}

static void proceed_bdat(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (!s->tx->chunking && !start_body(s, true)) s->chunk.discard = true;
}

static void proceed_rset(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    transaction_end(s);
    session_reply(s, "250 2.0.0 Ok");
}

static void proceed_noop(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    session_reply(s, "250 2.0.0 Ok");
}

static void proceed_quit(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    session_reply(s, "221 2.0.0 Bye");
    s->quitting = true;
}

static void proceed_help(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    session_reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY; "
                     "see RFC 5321");
}

/* VRFY would tell a stranger which mailboxes exist (RFC 5321 §3.5.3, §7.3). */
static void proceed_vrfy(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    session_reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

/* Commands not in our EHLO reply (RFC 5321 §4.2.4: 502). EXPN would list a
 * mailing list's members and TURN would hand the connection's direction to an
 * unauthenticated peer, so those two stay refused by design. */
static void proceed_not_offered(session_t *s, const proto_command_t *cmd)
{
    session_reply(s, "502 5.5.1 %s is not offered here", proto_verb_name(cmd->verb));
}

static bool check_starttls(session_t *s, const proto_command_t *cmd)
{
    if (!check_no_args(s, cmd)) return false;
    if (session_secure(s)) {
        session_reply(s, "503 5.5.1 Error: TLS is already active");
        return false;
    }
    if (!s->ingress->tls_ctx) {
        session_reply(s, "502 5.5.1 STARTTLS is not offered here");
        return false;
    }
    return true;
}

/* RFC 3207: the 220 goes out in clear, then every byte is TLS. Whatever the
 * client sent after STARTTLS and before the handshake was not protected and
 * is dropped (the CVE-2011-0411 injection), and the session starts over:
 * the client must say EHLO again and learns the extensions anew (§4.2). */
static void proceed_starttls(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (!session_start_tls(s, "220 2.0.0 Ready to start TLS")) return;
    transaction_end(s);
    s->helo[0] = 0;
    s->esmtp = false;
    s->authenticated = false;
}

/* ---- AUTH: auth.c runs the exchange, this file replies ---- */

static void auth_checked(void *arg, enum auth_result result)
{
    session_t *s = arg;
    if (session_drop_if_closed(s)) return;
    s->authenticated = result == AUTH_OK;
    session_reply(s, "%s", auth_verdict_reply(result));
    session_resume(s);
}

/* Sends what the exchange handed back, and moves to where it leads. */
static void auth_next(session_t *s, enum auth_next next, const char *text)
{
    if (next == AUTH_CHECKING) return; /* auth_checked replies, maybe already has */
    s->state = next == AUTH_ANSWER ? STATE_AUTH : STATE_COMMAND;
    session_reply(s, "%s", text);
}

static void auth_step(session_t *s, const char *line, size_t len)
{
    char text[AUTH_REPLY_MAX];
    s->state = STATE_WAIT; /* until auth_next says otherwise */
    auth_next(s, auth_answer(&s->auth, line, len, text, sizeof text), text);
}

static bool check_auth(session_t *s, const proto_command_t *cmd)
{
    const char *refusal = auth_refusal(s->cfg, session_secure(s), s->authenticated, s->tx != NULL,
                                       s->esmtp, cmd->args, cmd->args_len);
    if (refusal) session_reply(s, "%s", refusal);
    return !refusal;
}

static void proceed_auth(session_t *s, const proto_command_t *cmd)
{
    char text[AUTH_REPLY_MAX];
    s->auth.ingress = s->ingress;
    s->auth.peer = s->peer;
    s->auth.done = auth_checked;
    s->auth.arg = s;
    s->state = STATE_WAIT;
    auth_next(s, auth_begin(&s->auth, cmd->args, cmd->args_len, text, sizeof text), text);
}

static const command_t commands[] = {
    {PROTO_HELO, check_helo, proceed_helo},
    {PROTO_EHLO, check_helo, proceed_helo},
    {PROTO_MAIL, check_mail, proceed_mail},
    {PROTO_RCPT, check_rcpt, proceed_rcpt},
    {PROTO_DATA, check_data, proceed_data},
    {PROTO_RSET, check_no_args, proceed_rset},
    {PROTO_NOOP, check_none, proceed_noop},
    {PROTO_QUIT, check_no_args, proceed_quit},
    {PROTO_HELP, check_none, proceed_help},
    {PROTO_VRFY, check_none, proceed_vrfy},
    {PROTO_EXPN, check_none, proceed_not_offered},
    {PROTO_TURN, check_none, proceed_not_offered},
    {PROTO_STARTTLS, check_starttls, proceed_starttls},
    {PROTO_AUTH, check_auth, proceed_auth},
    {PROTO_BDAT, check_bdat, proceed_bdat},
};

/* NOOP, RSET, VRFY and HELP, and a HELO or EHLO after one (but for the
 * EHLO that STARTTLS asks for, which comes to a session that has none):
 * see policy_junk_limit. */
static void count_junk(session_t *s, enum proto_verb verb)
{
    bool junk = verb == PROTO_NOOP || verb == PROTO_RSET || verb == PROTO_VRFY ||
                verb == PROTO_HELP || ((verb == PROTO_HELO || verb == PROTO_EHLO) && s->helo[0]);
    if (junk && ++s->junk > policy_junk_limit(s->ingress)) s->errors++;
}

static void dispatch(session_t *s, const char *line, size_t len)
{
    proto_command_t cmd;
    if (policy_non_smtp(line, len)) {
        char text[POLICY_REPLY_MAX];
        policy_refuse_non_smtp(s->ingress, s->peer, text, sizeof text);
        session_reply(s, "%s", text);
        s->quitting = true;
        return;
    }
    if (proto_command_parse(line, len, &cmd) != PROTO_OK) {
        session_reply(s, "501 5.5.2 Syntax error");
        return;
    }
    count_junk(s, cmd.verb);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (commands[i].verb != cmd.verb) continue;
        if (commands[i].check(s, &cmd)) commands[i].proceed(s, &cmd);
        return;
    }
    session_reply(s, "500 5.5.2 Error: command not recognized");
}

/* A line in STATE_COMMAND is a command; in STATE_AUTH it answers a 334. */
static void on_line(session_t *s, const char *line, size_t len)
{
    if (s->state == STATE_AUTH)
        auth_step(s, line, len);
    else
        dispatch(s, line, len);
}

static const struct session_handlers handlers = {on_line, body_end};

bool smtp_accept(ingress_t *ingress, uv_stream_t *listener, enum listener_kind kind)
{
    return session_accept(ingress, listener, kind, &handlers);
}

bool smtp_open_fd(ingress_t *ingress, int fd, enum listener_kind kind, const struct sockaddr *peer)
{
    return session_open_fd(ingress, fd, kind, peer, &handlers);
}
