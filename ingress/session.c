/* The SMTP session: one table of commands, each with a check (is it allowed
 * now, are its arguments well-formed) and a proceed (do it, reply).
 *
 * Input is processed one complete line at a time from a buffer, so pipelined
 * commands are handled in order; while a message is being committed to Redis
 * the session is "busy" and nothing after the DATA terminator is looked at
 * until the 250/451 for that message has been queued for sending. Replies are
 * collected and flushed in one write when the session waits for input. */
#include "ingress/session.h"

#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- output ---- */

void session_reply(session_t *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 3) n = (int)sizeof line - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    if (buf_append(&s->out, line, (size_t)n) < 0) s->quitting = true;
    if (line[0] == '5' || line[0] == '4') s->errors++;
}

static void session_close(session_t *s);

/* Hands the collected replies to the stream, in one write. */
static void flush(session_t *s)
{
    if (s->out.len == 0 || s->closed) return;
    int rc = stream_write_owned(s->stream, s->out.data, s->out.len);
    buf_init(&s->out);
    if (rc < 0) session_close(s);
}

bool session_secure(const session_t *s)
{
    return s->stream && stream_tls(s->stream);
}

/* ---- the input ----
 * Lines are taken from the stream's buffer and consumed one by one; what
 * was consumed stays in place until the loop runs again, so a line stays
 * readable (and can be wiped) after it is consumed. */

static const char *input(const session_t *s)
{
    size_t len;
    return stream_data(s->stream, &len);
}

static size_t input_len(const session_t *s)
{
    size_t len;
    stream_data(s->stream, &len);
    return len;
}

static void input_consume(session_t *s, size_t n)
{
    stream_consume(s->stream, n);
}

/* ---- transaction state ---- */

static void transaction_reset(session_t *s)
{
    for (unsigned i = 0; i < s->n_rcpts; i++) {
        free(s->rcpts[i]);
        encrypt_rcpt_free(&s->rcpt_keys[i]);
    }
    free(s->rcpts);
    free(s->rcpt_keys);
    free(s->pending_rcpt);
    s->rcpts = NULL;
    s->rcpt_keys = NULL;
    s->pending_rcpt = NULL;
    s->n_rcpts = 0;
    s->in_mail = false;
    s->body_8bit = false;
    s->smtputf8 = false;
    s->in_data = false;
    s->chunking = false;
    s->sender[0] = 0;
    s->mail_params[0] = 0;
    s->mid[0] = 0;
    buf_free(&s->body);
}

static bool domain_is_relay(const config_t *cfg, const char *domain)
{
    for (unsigned i = 0; i < cfg->ingress.n_relay_domains; i++)
        if (!strcasecmp(cfg->ingress.relay_domains[i], domain)) return true;
    return false;
}

/* ---- commands: checks ---- */

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

static bool check_mail(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (!s->helo[0]) {
        session_reply(s, "503 5.5.1 Error: send HELO/EHLO first");
        return false;
    }
    /* Submission (RFC 6409 §4.3, RFC 8314): a login first, and that only
     * under TLS (RFC 3207 §4, RFC 4954 §6). */
    if (s->kind != LISTENER_RELAY && !session_secure(s)) {
        session_reply(s, "530 5.7.0 Must issue a STARTTLS command first");
        ingress_refused(s->ingress, REFUSED_AUTH_REQUIRED);
        return false;
    }
    if (s->kind != LISTENER_RELAY && !s->authenticated) {
        session_reply(s, "530 5.7.0 Authentication required");
        ingress_refused(s->ingress, REFUSED_AUTH_REQUIRED);
        return false;
    }
    if (s->in_mail) {
        session_reply(s, "503 5.5.1 Error: nested MAIL command");
        return false;
    }
    return true;
}

static bool check_rcpt(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (!s->in_mail) {
        session_reply(s, "503 5.5.1 Error: need MAIL command");
        return false;
    }
    if (s->n_rcpts >= s->cfg->ingress.max_recipients) {
        session_reply(s, "452 4.5.3 Error: too many recipients");
        ingress_refused(s->ingress, REFUSED_TOO_MANY_RECIPIENTS);
        return false;
    }
    return true;
}

/* 1*20DIGIT, as RFC 1870's size-value and RFC 3030's chunk-size; a value
 * past the range saturates. */
static bool parse_number(const char *p, size_t len, unsigned long long *out)
{
    if (len == 0 || len > 20) return false;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return false;
        unsigned digit = (unsigned)(p[i] - '0');
        v = v > (ULLONG_MAX - digit) / 10 ? ULLONG_MAX : v * 10 + digit;
    }
    *out = v;
    return true;
}

static bool parse_size(const proto_param_t *p, unsigned long long *out)
{
    return p->value && parse_number(p->value, p->value_len, out);
}

/* What DATA and BDAT both need: a transaction with a recipient. */
static bool transaction_ready(session_t *s)
{
    if (!s->in_mail) {
        session_reply(s, "503 5.5.1 Error: need MAIL command");
        return false;
    }
    if (s->n_rcpts == 0) {
        session_reply(s, "554 5.5.1 Error: no valid recipients");
        return false;
    }
    return true;
}

static bool check_data(session_t *s, const proto_command_t *cmd)
{
    if (!check_no_args(s, cmd)) return false;
    if (s->chunking) { /* RFC 3030 §2: not both in one transaction */
        session_reply(s, "503 5.5.1 Error: DATA after BDAT");
        return false;
    }
    return transaction_ready(s);
}

/* "BDAT" SP chunk-size [SP "LAST"] (RFC 3030 §3). The chunk's octets follow
 * the command whatever the reply, so a refused BDAT still has them read and
 * dropped (chunk_discard) to stay in step; only a chunk size that cannot be
 * read, or one past the size limit, ends the session instead. */
static bool check_bdat(session_t *s, const proto_command_t *cmd)
{
    const char *space = memchr(cmd->args, ' ', cmd->args_len);
    size_t digits = space ? (size_t)(space - cmd->args) : cmd->args_len;
    unsigned long long size;
    bool last = space && cmd->args_len - digits == 5 && !strncasecmp(space + 1, "LAST", 4);
    if (!parse_number(cmd->args, digits, &size) || (space && !last)) {
        session_reply(s, "501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection");
        s->quitting = true;
        return false;
    }
    if (size > s->cfg->ingress.max_message_size - (s->chunking ? s->data.size : 0)) {
        session_reply(s, "552 5.3.4 Message size exceeds fixed limit; closing connection");
        ingress_refused(s->ingress, REFUSED_MESSAGE_TOO_BIG);
        s->quitting = true;
        return false;
    }
    s->chunk_pending = true;
    s->chunk_left = (size_t)size;
    s->chunk_last = last;
    s->chunk_discard = true;
    if (!s->esmtp) {
        session_reply(s, "503 5.5.1 Error: BDAT needs EHLO");
        return false;
    }
    if (s->in_data || !transaction_ready(s)) return false;
    s->chunk_discard = false;
    return true;
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
    for (unsigned i = 0; i < path->n_params; i++)
        for (unsigned j = 0; j < i; j++)
            if (path->params[i].key_len == path->params[j].key_len &&
                !strncasecmp(path->params[i].key, path->params[j].key, path->params[i].key_len)) {
                session_reply(s, "501 5.5.4 Duplicate %.*s parameter", (int)path->params[i].key_len,
                              path->params[i].key);
                return false;
            }
    return true;
}

/* RFC 6531 §3.4: a UTF-8 address only in a transaction that asked for it. */
static bool address_allowed(session_t *s, const proto_path_t *path)
{
    if (!path->utf8 || s->smtputf8) return true;
    session_reply(s, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
    ingress_refused(s->ingress, REFUSED_SMTPUTF8_REQUIRED);
    return false;
}

/* ---- commands: proceeds ---- */

static void proceed_helo(session_t *s, const proto_command_t *cmd)
{
    transaction_reset(s);
    memcpy(s->helo, cmd->args, cmd->args_len);
    s->helo[cmd->args_len] = 0;
    s->esmtp = cmd->verb == PROTO_EHLO;
    if (!s->esmtp) {
        session_reply(s, "250 %s", s->cfg->ingress.hostname);
        return;
    }
    session_reply(s, "250-%s", s->cfg->ingress.hostname);
    session_reply(s, "250-PIPELINING");
    session_reply(s, "250-SIZE %zu", s->cfg->ingress.max_message_size);
    session_reply(s, "250-8BITMIME");
    session_reply(s, "250-SMTPUTF8");
    session_reply(s, "250-DSN");
    session_reply(s, "250-CHUNKING");
    if (s->ingress->tls_ctx && !session_secure(s)) session_reply(s, "250-STARTTLS");
    auth_advertise(s);
    session_reply(s, "250 ENHANCEDSTATUSCODES");
}

static bool param_is(const proto_param_t *p, const char *key)
{
    return p->key_len == strlen(key) && !strncasecmp(p->key, key, p->key_len);
}

static bool value_is(const proto_param_t *p, const char *value)
{
    return p->value && p->value_len == strlen(value) && !strncasecmp(p->value, value, p->value_len);
}

/* Appends " KEY=value" (or "KEY" when value is NULL) to a parameter list. */
static void params_add(char *list, size_t size, const char *key, const char *value,
                       size_t value_len)
{
    size_t used = strlen(list);
    snprintf(list + used, size - used, "%s%s%s%.*s", used ? " " : "", key, value ? "=" : "",
             value ? (int)value_len : 0, value ? value : "");
}

/* Checks one MAIL parameter; remembers what the worker passes on. */
static bool mail_param_ok(session_t *s, const proto_param_t *p)
{
    unsigned long long size;
    if (param_is(p, "SIZE")) {
        if (!parse_size(p, &size)) {
            session_reply(s, "501 5.5.4 Bad SIZE parameter");
            return false;
        }
        if (size > s->cfg->ingress.max_message_size) {
            session_reply(s, "552 5.3.4 Message size exceeds fixed limit");
            ingress_refused(s->ingress, REFUSED_MESSAGE_TOO_BIG);
            return false;
        }
    } else if (param_is(p, "BODY")) {
        if (!value_is(p, "7BIT") && !value_is(p, "8BITMIME")) {
            session_reply(s, "501 5.5.4 BODY takes 7BIT or 8BITMIME");
            return false;
        }
        s->body_8bit = value_is(p, "8BITMIME");
    } else if (param_is(p, "SMTPUTF8")) {
        if (p->value) {
            session_reply(s, "501 5.5.4 SMTPUTF8 takes no value");
            return false;
        }
        s->smtputf8 = true;
    } else if (param_is(p, "RET")) {
        if (!value_is(p, "FULL") && !value_is(p, "HDRS")) {
            session_reply(s, "501 5.5.4 RET takes FULL or HDRS");
            return false;
        }
        params_add(s->mail_params, sizeof s->mail_params, "RET",
                   value_is(p, "FULL") ? "FULL" : "HDRS", 4);
    } else if (param_is(p, "AUTH") && session_secure(s)) {
        /* RFC 4954 §5: who submitted it, as a relay passes it on; we take
         * nobody's word for that and keep nothing of it. */
        if (!p->value || (!value_is(p, "<>") && !proto_xtext_valid(p->value, p->value_len))) {
            session_reply(s, "501 5.5.4 AUTH takes <> or an xtext mailbox");
            return false;
        }
    } else if (param_is(p, "ENVID")) {
        if (!p->value || p->value_len > PROTO_ENVID_MAX ||
            !proto_xtext_valid(p->value, p->value_len)) {
            session_reply(s, "501 5.5.4 ENVID takes up to 100 octets of xtext");
            return false;
        }
        params_add(s->mail_params, sizeof s->mail_params, "ENVID", p->value, p->value_len);
    } else {
        session_reply(s, "555 5.5.4 Unsupported parameter %.*s", (int)p->key_len, p->key);
        return false;
    }
    return true;
}

/* With sender_login_match, an authenticated session sends only as its
 * login (the null sender aside, for notifications). */
static bool sender_owned(session_t *s, const proto_path_t *path)
{
    if (!s->authenticated || !s->cfg->ingress.sender_login_match || !path->addr[0] ||
        !strcasecmp(path->addr, s->login))
        return true;
    char safe[LOG_SAFE_MAX], login[LOG_SAFE_MAX];
    ingress_refused(s->ingress, REFUSED_SENDER_LOGIN_MISMATCH);
    log_info("event=refused reason=sender_login_mismatch client=%s login=%s from=<%s>", s->peer,
             log_addr(s->login, login), log_addr(path->addr, safe));
    session_reply(s, "553 5.7.1 <%s>: Sender address not owned by user %s", path->addr, s->login);
    return false;
}

static void proceed_mail(session_t *s, const proto_command_t *cmd)
{
    proto_path_t path;
    if (!parse_path(s, cmd, &path)) return;
    for (unsigned i = 0; i < path.n_params; i++)
        if (!mail_param_ok(s, &path.params[i])) {
            transaction_reset(s);
            return;
        }
    if (!address_allowed(s, &path) || !sender_owned(s, &path)) {
        transaction_reset(s);
        return;
    }
    if (s->body_8bit) params_add(s->mail_params, sizeof s->mail_params, "BODY", "8BITMIME", 8);
    if (s->smtputf8) params_add(s->mail_params, sizeof s->mail_params, "SMTPUTF8", NULL, 0);
    memcpy(s->sender, path.addr, sizeof s->sender);
    s->in_mail = true;
    session_reply(s, "250 2.1.0 Ok");
}

/* Checks RCPT's DSN parameters (RFC 3461 §4.1, §4.2) into their stored form. */
static bool rcpt_params_ok(session_t *s, const proto_path_t *path, char dsn[RCPT_PARAMS_MAX])
{
    dsn[0] = 0;
    for (unsigned i = 0; i < path->n_params; i++) {
        const proto_param_t *p = &path->params[i];
        int notify = -1;
        if (param_is(p, "NOTIFY") && p->value) notify = proto_dsn_notify(p->value, p->value_len);
        if (param_is(p, "NOTIFY")) {
            if (notify < 0) {
                session_reply(s,
                              "501 5.5.4 NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY");
                return false;
            }
            char words[32] = "";
            static const char *const names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
            for (unsigned b = 0; b < 4; b++)
                if (notify & (1 << b))
                    snprintf(words + strlen(words), sizeof words - strlen(words), "%s%s",
                             words[0] ? "," : "", names[b]);
            params_add(dsn, RCPT_PARAMS_MAX, "NOTIFY", words, strlen(words));
        } else if (param_is(p, "ORCPT")) {
            if (!p->value || !proto_dsn_orcpt_valid(p->value, p->value_len, s->smtputf8)) {
                session_reply(s, "501 5.5.4 ORCPT takes addr-type;xtext");
                return false;
            }
            params_add(dsn, RCPT_PARAMS_MAX, "ORCPT", p->value, p->value_len);
        } else {
            session_reply(s, "555 5.5.4 Unsupported parameter %.*s", (int)p->key_len, p->key);
            return false;
        }
    }
    return true;
}

/* The address a recipient is queued for: itself, or the configured
 * postmaster for the bare "<Postmaster>" (RFC 5321 §4.5.1). NULL when the
 * recipient is refused (a reply was sent). */
static const char *rcpt_address(session_t *s, const proto_path_t *path)
{
    if (path->postmaster) {
        if (s->ingress->postmaster[0]) return s->ingress->postmaster;
        session_reply(s, "550 5.1.1 <Postmaster>: no postmaster address is configured here");
        ingress_refused(s->ingress, REFUSED_NO_POSTMASTER);
        return NULL;
    }
    if (!s->trusted && !s->authenticated && !domain_is_relay(s->cfg, proto_path_domain(path))) {
        char safe[LOG_SAFE_MAX];
        ingress_refused(s->ingress, REFUSED_RELAY_DENIED);
        log_info("event=refused reason=relay_denied client=%s rcpt=<%s>", s->peer,
                 log_addr(path->addr, safe));
        session_reply(s, "554 5.7.1 <%s>: Relay access denied", path->addr);
        return NULL;
    }
    return path->addr;
}

static void proceed_rcpt(session_t *s, const proto_command_t *cmd)
{
    proto_path_t path;
    char dsn[RCPT_PARAMS_MAX];
    if (!parse_path(s, cmd, &path) || !address_allowed(s, &path) || !rcpt_params_ok(s, &path, dsn))
        return;
    const char *addr = rcpt_address(s, &path);
    if (!addr) return;
    for (unsigned i = 0; i < s->n_rcpts; i++)
        if (!strcmp(s->rcpts[i], addr)) { /* a duplicate is accepted once */
            session_reply(s, "250 2.1.5 Ok");
            return;
        }
    size_t addr_len = strlen(addr), dsn_len = strlen(dsn);
    char *entry = malloc(addr_len + dsn_len + 2);
    if (!entry) {
        session_reply(s, "452 4.3.1 Insufficient system resources");
        return;
    }
    memcpy(entry, addr, addr_len + 1);
    memcpy(entry + addr_len + 1, dsn, dsn_len + 1);
    encrypt_rcpt(s, entry); /* the encryption policy has the last word */
}

void session_add_rcpt(session_t *s, char *entry, const struct rcpt_key *key)
{
    char **grown = realloc(s->rcpts, (s->n_rcpts + 1) * sizeof *grown);
    if (grown) s->rcpts = grown;
    struct rcpt_key *keys = realloc(s->rcpt_keys, (s->n_rcpts + 1) * sizeof *keys);
    if (keys) s->rcpt_keys = keys;
    if (!grown || !keys) {
        struct rcpt_key dropped = *key;
        encrypt_rcpt_free(&dropped);
        free(entry);
        session_reply(s, "452 4.3.1 Insufficient system resources");
        return;
    }
    s->rcpt_keys[s->n_rcpts] = *key;
    s->rcpts[s->n_rcpts++] = entry;
    session_reply(s, "250 2.1.5 Ok");
}

/* The "with" of a Received: line (RFC 3848, RFC 6531 §3.7.3). */
static const char *with_protocol(const session_t *s)
{
    static const char *const with[2][2][2] = {
        {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
        {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}}};
    if (!s->esmtp) return "SMTP";
    return with[s->smtputf8][session_secure(s)][s->authenticated];
}

static void start_body(session_t *s)
{
    char date[64];
    util_random_id(s->mid);
    util_rfc5322_date(date, sizeof date);
    buf_reset(&s->body);
    buf_printf(&s->body, "Received: from %s ([%s])\r\n", s->helo, s->peer);
    if (session_secure(s)) buf_printf(&s->body, "\t(using %s)\r\n", s->tls_info);
    buf_printf(&s->body, "\tby %s (sealpost) with %s id %s", s->cfg->ingress.hostname,
               with_protocol(s), s->mid);
    if (s->n_rcpts == 1) buf_printf(&s->body, "\r\n\tfor <%s>", s->rcpts[0]);
    /* RFC 5322 §3.6.7: the date-time comes after a ";", whatever came before. */
    buf_printf(&s->body, ";\r\n\t%s\r\n", date);
    s->content_start = s->body.len;
    proto_data_init(&s->data, s->cfg->ingress.max_line_length, s->cfg->ingress.max_message_size);
}

static void proceed_bdat(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    if (s->chunking) return;
    start_body(s);
    if (!s->body.data) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        s->chunk_discard = true;
        return;
    }
    proto_chunk_init(&s->data, s->cfg->ingress.max_line_length, s->cfg->ingress.max_message_size);
    s->chunking = true;
}

static void proceed_data(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    start_body(s);
    if (!s->body.data) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        return;
    }
    s->in_data = true;
    session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void proceed_rset(session_t *s, const proto_command_t *cmd)
{
    (void)cmd;
    transaction_reset(s);
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
    session_reply(s, "220 2.0.0 Ready to start TLS");
    flush(s);
    if (s->closed) return;
    long dropped = stream_start_tls(s->stream, s->ingress->tls_ctx, NULL, false, false);
    if (dropped < 0) { /* the 220 is out: nothing but closing is left to say */
        session_close(s);
        return;
    }
    if (dropped > 0) log_info("event=starttls_input_dropped client=%s bytes=%ld", s->peer, dropped);
    transaction_reset(s);
    s->helo[0] = 0;
    s->esmtp = false;
    s->authenticated = false;
}

/* Commands not in our EHLO reply (RFC 5321 §4.2.4: 502). EXPN would list a
 * mailing list's members and TURN would hand the connection's direction to an
 * unauthenticated peer, so those two stay refused by design. */
static void proceed_not_offered(session_t *s, const proto_command_t *cmd)
{
    session_reply(s, "502 5.5.1 %s is not offered here", proto_verb_name(cmd->verb));
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
    {PROTO_AUTH, auth_check, auth_proceed},
    {PROTO_BDAT, check_bdat, proceed_bdat},
};

/* An HTTP request, or a TLS handshake on a plain port, is not a confused
 * SMTP client: a browser can be made to POST to port 25 with SMTP commands in
 * the body, so such a connection is closed at its first line (as Postfix's
 * smtpd_forbidden_commands does), before anything after it is read. */
static bool is_non_smtp(const char *line, size_t len)
{
    static const char *const http[] = {"GET",     "POST",   "HEAD",  "PUT",  "CONNECT",
                                       "OPTIONS", "DELETE", "PATCH", "TRACE"};
    if (len == 0) return false;
    unsigned char c = (unsigned char)line[0];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return true;
    const char *space = memchr(line, ' ', len);
    size_t vlen = space ? (size_t)(space - line) : len;
    for (size_t i = 0; i < sizeof http / sizeof http[0]; i++)
        if (strlen(http[i]) == vlen && !strncmp(line, http[i], vlen)) return true;
    return false;
}

static void refuse_non_smtp(session_t *s)
{
    log_info("event=refused reason=non_smtp client=%s", s->peer);
    ingress_refused(s->ingress, REFUSED_NON_SMTP);
    session_reply(s, "421 4.7.0 %s Error: not an SMTP command; closing connection",
                  s->cfg->ingress.hostname);
    s->quitting = true;
}

static void dispatch(session_t *s, const char *line, size_t len)
{
    proto_command_t cmd;
    if (is_non_smtp(line, len)) {
        refuse_non_smtp(s);
        return;
    }
    if (proto_command_parse(line, len, &cmd) != PROTO_OK) {
        session_reply(s, "501 5.5.2 Syntax error");
        return;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (commands[i].verb != cmd.verb) continue;
        if (commands[i].check(s, &cmd)) commands[i].proceed(s, &cmd);
        return;
    }
    session_reply(s, "500 5.5.2 Error: command not recognized");
}

/* ---- committing a message ---- */

static void on_enqueued(int status, const char *err, void *arg)
{
    session_t *s = arg;
    s->busy = false;
    metric_observe(s->ingress->metrics.enqueue_seconds,
                   (double)(uv_now(s->ingress->loop) - s->enqueue_start) / 1000.0);
    if (s->closed) { /* the client went away; the message is stored or not, unacknowledged */
        log_info("event=%s mid=%s client=%s reason=client_gone",
                 status ? "enqueue_failed" : "accepted_unacknowledged", s->mid, s->peer);
        session_maybe_free(s);
        return;
    }
    if (status == 0) {
        char safe[LOG_SAFE_MAX];
        log_info("event=accepted mid=%s client=%s from=<%s> rcpts=%u size=%zu", s->mid, s->peer,
                 log_addr(s->sender, safe), s->n_rcpts, s->body.len);
        session_reply(s, "250 2.0.0 Ok: queued as %s", s->mid);
        metric_add(s->ingress->metrics.accepted, 1);
        metric_add(s->ingress->metrics.received_bytes, (double)s->body.len);
        metric_add(s->ingress->metrics.recipients, s->n_rcpts);
    } else {
        log_warn("event=enqueue_failed mid=%s client=%s error=\"%s\"", s->mid, s->peer, err);
        metric_add(s->ingress->metrics.enqueue_failed, 1);
        session_reply(s, "451 4.3.0 Error: queue file write error, try again later");
    }
    transaction_reset(s);
    session_process(s);
}

/* RFC 6409 §8.2, §8.3: a submission server may add Date and Message-ID
 * when the client left them out; the fields go after our Received: line,
 * nothing else of the message is touched. */
static int complete_header(session_t *s)
{
    const char *content = s->body.data + s->content_start;
    size_t len = s->body.len - s->content_start;
    char added[400] = "", date[64];
    if (!proto_header_has(content, len, "Date")) {
        util_rfc5322_date(date, sizeof date);
        snprintf(added, sizeof added, "Date: %s\r\n", date);
    }
    if (!proto_header_has(content, len, "Message-ID"))
        snprintf(added + strlen(added), sizeof added - strlen(added), "Message-ID: <%s@%s>\r\n",
                 s->mid, s->cfg->ingress.hostname);
    size_t n = strlen(added);
    if (n == 0) return 0;
    if (buf_reserve(&s->body, n) < 0) return -1;
    char *at = s->body.data + s->content_start;
    memmove(at + n, at, len);
    memcpy(at, added, n);
    s->body.len += n;
    return 0;
}

static void commit_message(session_t *s)
{
    if (s->authenticated && complete_header(s) < 0) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        transaction_reset(s);
        return;
    }
    encrypt_commit(s);
}

void session_commit_failed(session_t *s)
{
    s->busy = false;
    if (s->closed) {
        session_maybe_free(s);
        return;
    }
    transaction_reset(s);
    session_process(s);
}

void session_enqueue(session_t *s, const gateway_job_t *job)
{
    queue_message_t m = {0};
    char info[400];
    const char **dsn = calloc(s->n_rcpts, sizeof *dsn);
    unsigned *variant = calloc(s->n_rcpts, sizeof *variant);
    queue_body_t *bodies = calloc(job->n_variants, sizeof *bodies);
    int rc = -1;
    if (dsn && variant && bodies) {
        for (unsigned i = 0; i < s->n_rcpts; i++) {
            dsn[i] = s->rcpts[i] + strlen(s->rcpts[i]) + 1;
            variant[i] = job->rcpts[i].variant;
        }
        for (unsigned v = 0; v < job->n_variants; v++)
            bodies[v] = (queue_body_t){job->variants[v].data, job->variants[v].len};
        memcpy(m.id, s->mid, sizeof m.id);
        snprintf(info, sizeof info, "client=%s helo=%s", s->peer, s->helo);
        m.sender = s->sender;
        m.rcpts = (const char **)s->rcpts;
        m.rcpt_params = dsn;
        m.n_rcpts = s->n_rcpts;
        m.info = info;
        m.mail_params = s->mail_params;
        m.bodies = bodies;
        m.n_bodies = job->n_variants;
        m.rcpt_body = variant;
        s->enqueue_start = uv_now(s->ingress->loop);
        if (queue_ready(s->ingress->queue))
            rc = queue_enqueue(s->ingress->queue, &m, on_enqueued, s);
    }
    /* queue_enqueue copied what it needs into the request */
    free(dsn);
    free(variant);
    free(bodies);
    if (rc < 0) on_enqueued(-1, "redis not connected", s);
}

/* The content broke a rule: the reply for it, and the transaction ends. */
static void refuse_content(session_t *s)
{
    switch (s->data.error) {
    case PROTO_DATA_OK:
        return;
    case PROTO_DATA_BARE_LF:
    case PROTO_DATA_BARE_CR:
        session_reply(s, "550 5.6.0 Message refused: bare <CR> or <LF> in message data");
        break;
    case PROTO_DATA_LONG_LINE:
        session_reply(s, "550 5.6.0 Message refused: line longer than %u octets",
                      s->cfg->ingress.max_line_length);
        break;
    case PROTO_DATA_TOO_BIG:
        session_reply(s, "552 5.3.4 Message size exceeds fixed limit");
        break;
    }
    static const enum refusal why[] = {
        [PROTO_DATA_BARE_LF] = REFUSED_BARE_LINE_END,
        [PROTO_DATA_BARE_CR] = REFUSED_BARE_LINE_END,
        [PROTO_DATA_LONG_LINE] = REFUSED_LINE_TOO_LONG,
        [PROTO_DATA_TOO_BIG] = REFUSED_MESSAGE_TOO_BIG,
    };
    ingress_refused(s->ingress, why[s->data.error]);
    log_info("event=refused reason=data_error error=%d client=%s", (int)s->data.error, s->peer);
    transaction_reset(s);
}

static void finish_data(session_t *s)
{
    s->in_data = false;
    if (s->data.error)
        refuse_content(s);
    else
        commit_message(s);
}

/* Reads the pending BDAT chunk from the input; true once all of it came. */
static bool consume_chunk(session_t *s)
{
    size_t n = input_len(s) < s->chunk_left ? input_len(s) : s->chunk_left;
    if (!s->chunk_discard) {
        if (buf_reserve(&s->body, n) < 0) {
            session_reply(s, "451 4.3.1 Insufficient system resources");
            s->quitting = true;
            return false;
        }
        size_t out_len;
        proto_data_feed(&s->data, input(s), n, s->body.data + s->body.len, &out_len);
        s->body.len += out_len;
    }
    input_consume(s, n);
    s->chunk_left -= n;
    return s->chunk_left == 0;
}

/* A whole chunk is in: RFC 3030 §3 wants a reply per BDAT; the LAST one's
 * is the message's, given once it is stored. */
static void finish_chunk(session_t *s)
{
    s->chunk_pending = false;
    if (s->chunk_discard) return; /* refused when the command came */
    if (s->chunk_last) proto_data_end(&s->data);
    if (s->data.error)
        refuse_content(s); /* BDATs already pipelined find no transaction: 503 */
    else if (s->chunk_last)
        commit_message(s);
    else
        session_reply(s, "250 2.0.0 Ok: %zu octets so far", s->data.size);
}

/* Decodes what is buffered; returns true when the end of data was reached. */
static bool consume_data(session_t *s)
{
    if (buf_reserve(&s->body, input_len(s)) < 0) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        s->quitting = true;
        return false;
    }
    size_t out_len;
    size_t used =
        proto_data_feed(&s->data, input(s), input_len(s), s->body.data + s->body.len, &out_len);
    s->body.len += out_len;
    input_consume(s, used);
    return s->data.done;
}

/* ---- the input loop ---- */

static void take_line(session_t *s)
{
    const char *line = input(s);
    const char *lf = memchr(line, '\n', input_len(s));
    size_t max = s->cfg->ingress.max_line_length;
    if (!lf && !s->skip_line && s->auth_step == AUTH_IDLE && input_len(s) > 0 && line[0] != '\r' &&
        is_non_smtp(line, 1)) {
        refuse_non_smtp(s); /* a TLS ClientHello has no line end to wait for */
        return;
    }
    if (!lf) {
        if (input_len(s) > max) { /* keep nothing of an over-long line */
            if (!s->skip_line) session_reply(s, "500 5.5.2 Error: line too long");
            s->skip_line = true;
            s->auth_step = AUTH_IDLE; /* the 500 ends an AUTH exchange too */
            input_consume(s, input_len(s));
        }
        return;
    }
    size_t len = (size_t)(lf - line);
    input_consume(s, len + 1); /* first: STARTTLS drops what follows its own line */
    /* Credentials are wiped from the buffer once read (an AUTH line, or a
     * line answering a 334). */
    bool secret = s->auth_step != AUTH_IDLE || (len >= 4 && !strncasecmp(line, "AUTH", 4));
    if (s->skip_line) {
        s->skip_line = false;
    } else if (len + 1 > max) {
        session_reply(s, "500 5.5.2 Error: line too long");
        s->auth_step = AUTH_IDLE;
    } else if (len == 0 || line[len - 1] != '\r') {
        session_reply(s, "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>");
        s->auth_step = AUTH_IDLE;
    } else if (s->auth_step != AUTH_IDLE) {
        auth_continue(s, line, len - 1);
    } else {
        dispatch(s, line, len - 1); /* line stays valid: compaction waits for the batch's end */
    }
    if (secret) sodium_memzero((char *)line, len);
}

static void on_timeout(session_t *s);
static bool take_proxy_header(session_t *s);

static void arm_timer(session_t *s)
{
    bool data = s->in_data || s->chunk_pending;
    unsigned secs = data ? s->cfg->ingress.data_timeout : s->cfg->ingress.command_timeout;
    stream_set_timeout(s->stream, (uint64_t)secs * 1000);
}

void session_process(session_t *s)
{
    while (!s->busy && !s->quitting && !s->closed) {
        if (s->proxy_pending) {
            if (!take_proxy_header(s)) break;
            continue;
        }
        if (s->errors >= s->cfg->ingress.max_errors) {
            session_reply(s, "421 4.7.0 %s Error: too many errors", s->cfg->ingress.hostname);
            ingress_refused(s->ingress, REFUSED_TOO_MANY_ERRORS);
            s->quitting = true;
            break;
        }
        if (s->in_data) {
            if (!consume_data(s)) break;
            finish_data(s);
            continue;
        }
        if (s->chunk_pending) {
            if (!consume_chunk(s)) break;
            finish_chunk(s);
            continue;
        }
        size_t before = input_len(s);
        if (before == 0) break;
        take_line(s);
        if (input_len(s) == before) break; /* no complete line yet */
    }
    if (s->eof && !s->busy) s->quitting = true;
    flush(s);
    if (s->closed) return;
    /* While a reply is awaited, the client's next commands wait in the
     * stream (up to its bound); once quitting, nothing more is read. */
    if (s->quitting && !s->busy) {
        stream_close_when_written(s->stream);
        return;
    }
    stream_pause(s->stream, s->quitting);
    arm_timer(s);
}

/* The handshake is done: the session is secure from here on. */
static void tls_ready(session_t *s)
{
    snprintf(s->tls_info, sizeof s->tls_info, "%s", stream_tls_info(s->stream));
    log_info("event=tls client=%s tls=\"%s\"", s->peer, s->tls_info);
    metric_add(s->ingress->metrics.tls[1], 1);
}

static void on_stream(stream_t *stream, enum stream_event event, void *arg)
{
    session_t *s = arg;
    switch (event) {
    case STREAM_DATA:
        session_process(s);
        break;
    case STREAM_TLS_READY:
        tls_ready(s);
        break;
    case STREAM_TLS_FAILED:
        log_info("event=tls_failed client=%s error=\"%s\"", s->peer, stream_error(stream));
        metric_add(s->ingress->metrics.tls[0], 1);
        session_close(s);
        break;
    case STREAM_EOF: /* a half-close still deserves the replies to what came before */
        s->eof = true;
        session_process(s);
        break;
    case STREAM_TIMEOUT:
        on_timeout(s);
        break;
    case STREAM_ERROR:
        session_close(s);
        break;
    case STREAM_CLOSED:
        session_close(s); /* when the stream closed itself after its last write */
        s->stream = NULL;
        session_maybe_free(s);
        break;
    case STREAM_CONNECTED:
        break;
    }
}

static void on_timeout(session_t *s)
{
    log_info("event=timeout client=%s state=%s", s->peer, s->in_data ? "data" : "command");
    ingress_refused(s->ingress, REFUSED_TIMEOUT);
    s->quitting = true;
    if (s->busy) return;             /* the 421 would come before the message's own reply */
    if (stream_pending(s->stream)) { /* the client stopped reading: no point in writing more */
        session_close(s);
        return;
    }
    session_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cfg->ingress.hostname);
    flush(s);
    if (!s->closed) stream_close_when_written(s->stream);
}

/* ---- life cycle ---- */

static void session_free(session_t *s)
{
    ingress_t *ingress = s->ingress;
    transaction_reset(s);
    buf_free(&s->out);
    free(s);
    ingress_session_gone(ingress);
}

/* Frees a closed session once its stream is gone and no reply from Redis
 * is outstanding (the enqueue callback still points at it). */
void session_maybe_free(session_t *s)
{
    if (s->closed && !s->stream && !s->busy) session_free(s);
}

/* Starts closing; never frees at once, so callers may still touch s. */
static void session_close(session_t *s)
{
    if (s->closed) return;
    s->closed = true;
    if (s->prev)
        s->prev->next = s->next;
    else
        s->ingress->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    if (s->stream) stream_close(s->stream);
}

/* The client's address, for policy, logs and Received:. */
static void set_client(session_t *s, const struct sockaddr *sa)
{
    net_addr_text(sa, s->peer, sizeof s->peer);
    s->trusted = config_cidr_list_match(&s->cfg->ingress.trusted_networks, sa);
}

/* Open sessions from one address (not counting those still waiting for
 * their PROXY header). A scan, not a table: it runs once per connection,
 * and is cheap next to the accept itself at the counts max_connections
 * allows. */
static unsigned sessions_from(const ingress_t *ingress, const char *peer)
{
    unsigned n = 0;
    for (const session_t *s = ingress->sessions; s; s = s->next)
        n += !s->proxy_pending && !strcmp(s->peer, peer);
    return n;
}

/* Refuses a connection over a limit: with 421 where the client reads clear
 * text, silently on an implicit-TLS port, where it would not. */
static void refuse_connection(session_t *s, enum refusal why, const char *reply)
{
    ingress_refused(s->ingress, why);
    log_info("event=refused reason=%s client=%s", ingress_refusal_name(why), s->peer);
    if (s->kind != LISTENER_SMTPS) session_reply(s, "%s", reply);
    s->quitting = true;
}

/* The connection's limits, then the greeting (with implicit TLS, RFC 8314,
 * it waits in TLS for the handshake). */
static void admit(session_t *s)
{
    ingress_t *ingress = s->ingress;
    char reply[400];
    const char *host = s->cfg->ingress.hostname;
    if (ingress->n_sessions > s->cfg->ingress.max_connections) {
        snprintf(reply, sizeof reply, "421 4.7.0 %s Error: too many connections", host);
        refuse_connection(s, REFUSED_MAX_CONNECTIONS, reply);
    } else if (!s->trusted &&
               sessions_from(ingress, s->peer) > s->cfg->ingress.max_connections_per_ip) {
        snprintf(reply, sizeof reply, "421 4.7.0 %s Error: too many connections from your address",
                 host);
        refuse_connection(s, REFUSED_MAX_CONNECTIONS_PER_IP, reply);
    } else if (!queue_ready(ingress->queue)) {
        /* Nothing could be stored: a client that retries elsewhere or later
         * does better than one that sends a message to get 451. */
        snprintf(reply, sizeof reply,
                 "421 4.3.2 %s Service not available: queue unreachable, try again later", host);
        refuse_connection(s, REFUSED_NOT_READY, reply);
    } else if (s->kind == LISTENER_SMTPS &&
               /* a ClientHello may have come right behind a PROXY header */
               stream_start_tls(s->stream, ingress->tls_ctx, NULL, false, true) < 0) {
        s->quitting = true; /* no memory for TLS */
    } else {
        session_reply(s, "220 %s ESMTP sealpost", host);
    }
}

/* A connection from a load balancer in proxy_networks starts with a PROXY
 * header naming the real client; without one it is closed unanswered (the
 * balancer is misconfigured, or it is not the balancer). Returns false while
 * the header is incomplete or when it was bad. */
static bool take_proxy_header(session_t *s)
{
    proto_proxy_t p;
    long n = proto_proxy_parse(input(s), input_len(s), &p);
    if (n <= 0) {
        if (n < 0) {
            log_info("event=refused reason=bad_proxy_header client=%s", s->peer);
            ingress_refused(s->ingress, REFUSED_BAD_PROXY_HEADER);
            s->quitting = true;
        }
        return false;
    }
    input_consume(s, (size_t)n);
    s->proxy_pending = false;
    if (p.local) {
        s->trusted = false; /* the balancer's own connection: no client's trust to inherit */
    } else {
        struct sockaddr_storage ss = {0};
        if (p.family == 4) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            in->sin_family = AF_INET;
            memcpy(&in->sin_addr, p.addr, 4);
        } else {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            in6->sin6_family = AF_INET6;
            memcpy(&in6->sin6_addr, p.addr, 16);
        }
        char via[sizeof s->peer];
        memcpy(via, s->peer, sizeof via);
        set_client(s, (struct sockaddr *)&ss);
        log_debug("event=proxied client=%s via=%s trusted=%d", s->peer, via, s->trusted);
    }
    admit(s);
    return true;
}

bool session_accept(ingress_t *ingress, uv_stream_t *listener, enum listener_kind kind)
{
    session_t *s = calloc(1, sizeof *s);
    if (!s) return false;
    s->stream = stream_accept(listener, on_stream, s);
    if (!s->stream) {
        free(s);
        return false;
    }
    s->ingress = ingress;
    s->cfg = ingress->cfg;
    s->kind = kind;
    s->next = ingress->sessions;
    if (s->next) s->next->prev = s;
    ingress->sessions = s;
    struct sockaddr_storage ss;
    if (stream_peer(s->stream, &ss) == 0) {
        set_client(s, (struct sockaddr *)&ss);
        s->proxy_pending =
            config_cidr_list_match(&s->cfg->ingress.proxy_networks, (struct sockaddr *)&ss);
    } else {
        snprintf(s->peer, sizeof s->peer, "unknown");
    }
    log_debug("event=connect client=%s trusted=%d proxy=%d", s->peer, s->trusted, s->proxy_pending);
    if (!s->proxy_pending) admit(s);
    session_process(s);
    return true;
}

void session_shutdown_all(ingress_t *ingress)
{
    for (session_t *s = ingress->sessions, *next; s; s = next) {
        next = s->next;
        if (s->busy) {
            s->quitting = true; /* closes after the reply for its message */
            continue;
        }
        session_reply(s, "421 4.3.2 %s Service shutting down", s->cfg->ingress.hostname);
        s->quitting = true;
        flush(s);
        if (!s->closed) stream_close_when_written(s->stream);
    }
}
