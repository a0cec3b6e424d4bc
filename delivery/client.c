/* The SMTP client: one transaction per job, every recipient in it, one step
 * at a time (greeting, EHLO or HELO, STARTTLS and EHLO again, MAIL, each
 * RCPT, DATA, body, QUIT). */
#include "delivery/client.h"

#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum step {
    STEP_GREETING,
    STEP_EHLO,
    STEP_HELO,
    STEP_STARTTLS, /* waiting for the 220 */
    STEP_TLS,      /* handshaking */
    STEP_MAIL,
    STEP_RCPT,
    STEP_DATA,
    STEP_GATE, /* content sent, waiting for client_finish_data */
    STEP_BODY,
    STEP_DISCARD, /* sent "." after a 354 with no recipient accepted */
    STEP_QUIT,
    STEP_IDLE /* a transaction done, the connection kept for the next */
};

/* A connection is reused within this long of its start (Postfix's
 * smtp_connection_reuse_time_limit). */
#define REUSE_TIME_LIMIT_MS 300000u

struct client {
    uv_loop_t *loop;
    const config_t *cfg;
    SSL_CTX *tls_ctx;
    enum tls_policy tls_policy; /* for this job's domain */
    const queue_job_t *job;
    char dest[300];
    char name[300];   /* for logs and Remote-MTA: the MX name, or host:port */
    char host[256];   /* for SNI and certificate checks: the MX name, or the route's host */
    stream_t *stream; /* NULL once closed */
    enum step step;
    unsigned rcpt_index;
    unsigned accepted;
    int multiline_code; /* code of the reply being read, 0 between replies */
    bool peer_8bitmime; /* from the EHLO reply */
    bool peer_smtputf8;
    bool peer_dsn;
    bool peer_starttls;
    bool peer_pipelining;
    bool pipelined;   /* MAIL, RCPTs and DATA went out in one write (RFC 2920) */
    bool mail_failed; /* in a pipelined transaction */
    bool peer_size_known;
    unsigned long long peer_size; /* the peer's SIZE limit, 0: none given */
    client_result_t result;
    bool finished; /* result reported */
    client_gate_cb gate;
    bool gate_pending; /* gate called, client_finish_data not yet */
    client_done_cb done;
    void *arg;
    bool reported;                          /* done ran for the current job */
    bool smtputf8_on;                       /* this transaction's MAIL said SMTPUTF8 */
    bool reused;                            /* the current job runs on a connection used before */
    bool replied;                           /* a reply came since the current job began */
    uint64_t start;                         /* uv_now of the connect */
    void (*closed)(client_t *c, void *arg); /* for a kept connection */
    void *closed_arg;
};

/* Reports and frees once the connection is closed and the gate, if asked,
 * has answered (its answer must not reach freed memory). */
static void maybe_done(client_t *c)
{
    if (c->stream || c->gate_pending) return;
    if (!c->reported)
        c->done(&c->result, c->arg);
    else if (c->closed)
        c->closed(c, c->closed_arg);
    free(c->result.codes);
    free(c->result.replies);
    free(c);
}

static void client_close(client_t *c)
{
    if (c->finished) return;
    c->finished = true;
    stream_close(c->stream);
}

/* Remote text goes into logs (key="value"), Redis and bounces: no control
 * characters, no quotes. */
static void sanitize(char *text)
{
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 32 || *p == '"' || *p == 127) *p = ' ';
}

static void set_detail(client_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_detail(client_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->result.detail, sizeof c->result.detail, fmt, ap);
    va_end(ap);
    sanitize(c->result.detail);
}

static void set_reply(client_t *c, unsigned i, int code, const char *text)
{
    c->result.codes[i] = code;
    snprintf(c->result.replies[i], CLIENT_REPLY_MAX, "%.*s", CLIENT_REPLY_MAX - 1, text);
    sanitize(c->result.replies[i]);
}

/* Every recipient not yet decided gets code and text (code 0: not reached). */
static void settle_undecided(client_t *c, int code, const char *text)
{
    for (unsigned i = 0; i < c->result.n_codes; i++)
        if (c->result.codes[i] == 0 || (c->result.codes[i] / 100 == 2 && c->step <= STEP_BODY))
            set_reply(c, i, code, text);
}

static void fail(client_t *c, const char *what)
{
    c->result.before_mail = c->step < STEP_MAIL;
    /* Dead while it sat idle: not this job's attempt; the caller connects anew. */
    c->result.stale = c->reused && !c->replied && !c->reported;
    set_detail(c, "%s: %s", c->dest, what);
    settle_undecided(c, 0, c->result.detail);
    client_close(c);
}

/* Writes data, which it takes over (a message body is not copied again),
 * through TLS once STARTTLS has begun. */
static void send_owned(client_t *c, char *data, size_t len)
{
    if (stream_write_owned(c->stream, data, len) < 0) fail(c, "write failed");
}

static void send_raw(client_t *c, const char *data, size_t len)
{
    if (stream_write(c->stream, data, len) < 0) fail(c, "write failed");
}

static void arm(client_t *c, unsigned seconds);
static void quit_now(client_t *c);

static void send_line(client_t *c, enum step next, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void send_line(client_t *c, enum step next, const char *fmt, ...)
{
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n > sizeof line - 3) {
        fail(c, "command too long");
        return;
    }
    memcpy(line + n, "\r\n", 2);
    c->step = next;
    arm(c, c->cfg->worker.command_timeout);
    send_raw(c, line, (size_t)n + 2);
}

/* Sends the command(s) in out, which it takes over, and waits for step next. */
static void send_command(client_t *c, enum step next, buf_t *out)
{
    c->step = next;
    arm(c, c->cfg->worker.command_timeout);
    send_owned(c, out->data, out->len);
    buf_init(out);
}

static void send_body(client_t *c)
{
    const queue_job_t *job = c->job;
    size_t len = proto_dot_stuffed_len(job->body, job->body_len);
    char *out = malloc(len);
    if (!out) {
        fail(c, "out of memory");
        return;
    }
    proto_dot_stuff(job->body, job->body_len, out);
    arm(c, c->cfg->worker.data_timeout);
    if (!c->gate) {
        c->step = STEP_BODY;
        send_owned(c, out, len);
        return;
    }
    /* Everything but ".CRLF": the caller renews its lease before the dot. */
    c->step = STEP_GATE;
    send_owned(c, out, len - 3);
    if (c->finished) return;
    c->gate_pending = true;
    c->gate(c, c->arg);
}

void client_finish_data(client_t *c, bool ok)
{
    c->gate_pending = false;
    if (c->finished) { /* the connection failed meanwhile */
        maybe_done(c);
        return;
    }
    if (!ok) {
        fail(c, "transaction aborted before the final dot: the job's lease was lost");
        return;
    }
    c->step = STEP_BODY;
    send_raw(c, ".\r\n", 3);
}

static bool has_non_ascii(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] >= 0x80) return true;
    return false;
}

/* "RCPT TO:<addr>", with the recipient's NOTIFY and ORCPT for a peer that
 * offers DSN (RFC 3461 §5.2: they travel with the message). */
static int rcpt_line(const client_t *c, unsigned i, buf_t *out)
{
    int rc = buf_printf(out, "RCPT TO:<%s>", c->job->rcpts[i]);
    char value[PROTO_ORCPT_MAX + 1];
    const char *params = c->job->rcpt_params[i];
    if (rc == 0 && c->peer_dsn && proto_param_find(params, "NOTIFY", value, sizeof value))
        rc = buf_printf(out, " NOTIFY=%s", value);
    /* A raw UTF-8 ORCPT (RFC 6533) only travels under SMTPUTF8; otherwise
     * it is left out, as an optional parameter may be. */
    if (rc == 0 && c->peer_dsn && proto_param_find(params, "ORCPT", value, sizeof value) &&
        (c->smtputf8_on || !has_non_ascii(value, strlen(value))))
        rc = buf_printf(out, " ORCPT=%s", value);
    return rc == 0 ? buf_append(out, "\r\n", 2) : rc;
}

static void send_next_rcpt(client_t *c)
{
    if (c->rcpt_index < c->job->n_rcpts) {
        buf_t line;
        buf_init(&line);
        if (rcpt_line(c, c->rcpt_index, &line) < 0) {
            buf_free(&line);
            fail(c, "out of memory");
            return;
        }
        send_command(c, STEP_RCPT, &line);
    } else if (c->accepted) {
        send_line(c, STEP_DATA, "DATA");
    } else {
        send_line(c, STEP_QUIT, "QUIT");
    }
}

/* An EHLO reply line names one extension (RFC 5321 §4.1.1.1). */
static void note_extension(client_t *c, const char *line, size_t len)
{
    if (len < 4) return;
    const char *kw = line + 4;
    size_t n = len - 4;
    if (n >= 8 && !strncasecmp(kw, "8BITMIME", 8) && (n == 8 || kw[8] == ' '))
        c->peer_8bitmime = true;
    if (n == 8 && !strncasecmp(kw, "STARTTLS", 8)) c->peer_starttls = true;
    if (n == 10 && !strncasecmp(kw, "PIPELINING", 10)) c->peer_pipelining = true;
    if (n == 8 && !strncasecmp(kw, "SMTPUTF8", 8)) c->peer_smtputf8 = true;
    if (n == 3 && !strncasecmp(kw, "DSN", 3)) c->peer_dsn = true;
    if (n >= 4 && !strncasecmp(kw, "SIZE", 4) && (n == 4 || kw[4] == ' ')) {
        /* RFC 1870: "SIZE" or "SIZE <digits>". strtoull read "-1" as a huge
         * limit and "x" as none; a value we cannot read says nothing, so
         * the keyword counts as not offered. */
        unsigned long long limit = 0;
        c->peer_size_known = n == 4 || util_parse_decimal(kw + 5, n - 5, &limit) == 0;
        c->peer_size = c->peer_size_known ? limit : 0;
    }
}

/* Refuses the transaction before MAIL FROM for a reason of ours: every
 * recipient gets code and text, and the result says it was our decision. */
static void refuse_locally(client_t *c, int code, const char *text)
{
    set_detail(c, "%s: %s", c->dest, text);
    c->result.local = true;
    settle_undecided(c, code, text);
    send_line(c, STEP_QUIT, "QUIT");
}

/* RFC 2920: MAIL, every RCPT and DATA in one write; the replies come back in
 * that order and on_pipelined_reply reads every one of them. */
static void send_pipelined(client_t *c, buf_t *batch)
{
    const queue_job_t *job = c->job;
    int rc = 0;
    for (unsigned i = 0; i < job->n_rcpts && rc == 0; i++)
        rc = rcpt_line(c, i, batch);
    if (rc < 0 || buf_append(batch, "DATA\r\n", 6) < 0) {
        buf_free(batch);
        fail(c, "out of memory");
        return;
    }
    c->pipelined = true;
    send_command(c, STEP_MAIL, batch);
}

static void on_pipelined_reply(client_t *c, int code, const char *text)
{
    int class = code / 100;
    switch (c->step) {
    case STEP_MAIL:
        c->mail_failed = class != 2;
        if (c->mail_failed) settle_undecided(c, code, text); /* RCPT replies will not count */
        c->step = c->job->n_rcpts ? STEP_RCPT : STEP_DATA;
        return;
    case STEP_RCPT:
        if (!c->mail_failed) {
            set_reply(c, c->rcpt_index, code, text);
            if (class == 2) c->accepted++;
        }
        if (++c->rcpt_index == c->job->n_rcpts) c->step = STEP_DATA;
        return;
    default: /* STEP_DATA */
        if (code == 354 && c->accepted) {
            send_body(c);
        } else if (code == 354) { /* no recipient, yet the server waits for data */
            c->step = STEP_DISCARD;
            send_raw(c, ".\r\n", 3);
        } else {
            if (c->accepted) settle_undecided(c, class == 2 ? 451 : code, text);
            send_line(c, STEP_QUIT, "QUIT");
        }
        return;
    }
}

/* Whether the job cannot go to a peer without SMTPUTF8: the reply code of
 * the refusal, with its text, or 0 (RFC 6531 §3.2: UTF-8 addresses need it;
 * headers in UTF-8 (RFC 6532) would reach a peer that cannot read them). We
 * do not downgrade. */
static int needs_smtputf8(const client_t *c, char *text, size_t len)
{
    const queue_job_t *job = c->job;
    const char *what = NULL;
    if (has_non_ascii(job->sender, strlen(job->sender))) what = "553 5.6.7 the sender's address";
    for (unsigned i = 0; !what && i < job->n_rcpts; i++)
        if (has_non_ascii(job->rcpts[i], strlen(job->rcpts[i])))
            what = "553 5.6.7 a recipient's address";
    const char *end = memmem(job->body, job->body_len, "\r\n\r\n", 4);
    size_t headers = end ? (size_t)(end - job->body) : job->body_len;
    if (!what && has_non_ascii(job->body, headers)) what = "554 5.6.9 the message header";
    if (!what) return 0;
    snprintf(text, len, "%s is UTF-8 and %s does not offer SMTPUTF8", what, c->dest);
    return what[2] == '3' ? 553 : 554;
}

/* "MAIL FROM:<sender>" and the parameters the peer understands: SIZE, BODY,
 * SMTPUTF8 when the message asked for it, RET and ENVID when it offers DSN. */
static int mail_line(const client_t *c, bool eight_bit, bool utf8, buf_t *out)
{
    const queue_job_t *job = c->job;
    int rc = buf_printf(out, "MAIL FROM:<%s>", job->sender);
    if (rc == 0 && c->peer_size_known) rc = buf_printf(out, " SIZE=%zu", job->body_len);
    if (rc == 0 && eight_bit) rc = buf_printf(out, " BODY=8BITMIME");
    if (rc == 0 && utf8 && c->peer_smtputf8) rc = buf_printf(out, " SMTPUTF8");
    char value[PROTO_ENVID_MAX + 1];
    if (rc == 0 && c->peer_dsn && proto_param_find(job->mail_params, "RET", value, sizeof value))
        rc = buf_printf(out, " RET=%s", value);
    if (rc == 0 && c->peer_dsn && proto_param_find(job->mail_params, "ENVID", value, sizeof value))
        rc = buf_printf(out, " ENVID=%s", value);
    return rc == 0 ? buf_append(out, "\r\n", 2) : rc;
}

/* MAIL FROM. A message over the peer's announced limit fails here with the
 * peer's own figure; 8-bit content for a peer without 8BITMIME is refused
 * (RFC 6152 §3: convert or return it; we do not convert), and so is a
 * message that needs SMTPUTF8 from a peer without it. */
static void send_mail(client_t *c)
{
    const queue_job_t *job = c->job;
    char text[400];
    bool eight_bit = proto_param_find(job->mail_params, "BODY", text, sizeof text) &&
                     !strcasecmp(text, "8BITMIME");
    bool utf8 = proto_param_find(job->mail_params, "SMTPUTF8", NULL, 0);
    if (c->peer_size_known && c->peer_size && job->body_len > c->peer_size) {
        snprintf(text, sizeof text, "552 5.3.4 message size %zu exceeds the limit of %llu",
                 job->body_len, c->peer_size);
        refuse_locally(c, 552, text);
        return;
    }
    int refusal = utf8 && !c->peer_smtputf8 ? needs_smtputf8(c, text, sizeof text) : 0;
    if (refusal) {
        refuse_locally(c, refusal, text);
        return;
    }
    if (eight_bit && !c->peer_8bitmime) {
        snprintf(text, sizeof text,
                 "554 5.6.3 %s does not accept 8-bit content (no 8BITMIME) and conversion "
                 "is not supported",
                 c->dest);
        refuse_locally(c, 554, text);
        return;
    }
    buf_t line;
    buf_init(&line);
    if (mail_line(c, eight_bit, utf8, &line) < 0) {
        buf_free(&line);
        fail(c, "out of memory");
        return;
    }
    c->result.peer_dsn = c->peer_dsn;
    c->smtputf8_on = utf8 && c->peer_smtputf8;
    if (c->peer_pipelining)
        send_pipelined(c, &line);
    else
        send_command(c, STEP_MAIL, &line);
}

/* The RFC 3207 handshake: whatever the server sent after its 220 was read
 * in clear and must not count once the channel is secure, so it is dropped. */
static void start_tls(client_t *c)
{
    bool verify = c->tls_policy == TLS_POLICY_VERIFY;
    c->step = STEP_TLS;
    if (stream_start_tls(c->stream, c->tls_ctx,
                         &(stream_tls_t){.host = c->host, .verify = verify}) < 0)
        fail(c, "cannot start TLS");
}

/* EHLO accepted: STARTTLS when offered (and wanted), else on to MAIL. */
static void after_ehlo(client_t *c)
{
    enum tls_policy policy = c->tls_policy;
    bool want_tls = !stream_tls(c->stream) && policy != TLS_POLICY_NONE && c->tls_ctx;
    if (want_tls && c->peer_starttls) {
        send_line(c, STEP_STARTTLS, "STARTTLS");
        return;
    }
    if (want_tls && policy == TLS_POLICY_VERIFY) {
        c->result.before_mail = true; /* another MX may offer it */
        refuse_locally(c, 451, "451 4.7.5 no STARTTLS offered and tls_policy is verify");
        return;
    }
    send_mail(c);
}

/* The handshake is done: EHLO again (RFC 3207 §4.2: the server forgets what
 * it knew of us, and we forget what it offered). */
static void on_tls_ready(client_t *c)
{
    if (c->step != STEP_TLS) return;
    snprintf(c->result.tls, sizeof c->result.tls, "%s", stream_tls_info(c->stream));
    log_info("event=tls mid=%s peer=%s tls=\"%s\" verified=%s", c->job->mid, c->name, c->result.tls,
             c->tls_policy == TLS_POLICY_VERIFY ? "yes" : "no");
    c->peer_8bitmime = c->peer_starttls = c->peer_size_known = c->peer_pipelining = false;
    c->peer_smtputf8 = c->peer_dsn = false;
    send_line(c, STEP_EHLO, "EHLO %s", c->cfg->worker.helo_name);
}

/* The transaction is settled: with connection_cache_time, report now and
 * keep the connection for the next job instead of saying QUIT. */
static bool keep_idle(client_t *c)
{
    unsigned seconds = c->cfg->worker.connection_cache_time;
    if (!seconds || uv_now(c->loop) - c->start > REUSE_TIME_LIMIT_MS) return false;
    c->step = STEP_IDLE;
    c->closed = NULL;
    arm(c, seconds);
    c->result.kept = true;
    c->reported = true;
    c->done(&c->result, c->arg); /* may hand it to the next job at once */
    return true;
}

/* One complete reply: decide the next step. */
static void on_reply(client_t *c, int code, const char *text)
{
    int class = code / 100;
    if (c->reused && !c->replied && (code == 421 || (c->step == STEP_MAIL && class != 2))) {
        /* "too many messages on this connection" and the like, or a peer
         * that lost track of the previous transaction ("503 nested MAIL"):
         * the kept connection is spent, and its refusal says nothing about
         * this mail. A fresh one takes the job (fail: stale). */
        fail(c, text);
        return;
    }
    c->replied = true;
    if (class != 2 && !(c->step == STEP_DATA && code == 354))
        set_detail(c, "%s said: %s", c->dest, text);
    if (c->pipelined && (c->step == STEP_MAIL || c->step == STEP_RCPT || c->step == STEP_DATA)) {
        on_pipelined_reply(c, code, text);
        return;
    }
    switch (c->step) {
    case STEP_GREETING:
        if (class == 2)
            send_line(c, STEP_EHLO, "EHLO %s", c->cfg->worker.helo_name);
        else
            fail(c, "greeting refused");
        return;
    case STEP_EHLO:
    case STEP_HELO:
        if (class == 2)
            after_ehlo(c);
        else if (c->step == STEP_EHLO && class == 5)
            send_line(c, STEP_HELO, "HELO %s", c->cfg->worker.helo_name);
        else
            fail(c, text);
        return;
    case STEP_STARTTLS:
        if (code == 220)
            start_tls(c);
        else if (c->tls_policy == TLS_POLICY_VERIFY)
            fail(c, "STARTTLS refused and tls_policy is verify");
        else
            send_mail(c); /* opportunistic: go on in clear */
        return;
    case STEP_TLS:
        fail(c, "reply in the middle of the TLS handshake");
        return;
    case STEP_MAIL:
        if (class == 2) {
            send_next_rcpt(c);
            return;
        }
        settle_undecided(c, code, text);
        send_line(c, STEP_QUIT, "QUIT");
        return;
    case STEP_RCPT:
        set_reply(c, c->rcpt_index++, code, text);
        if (class == 2) c->accepted++;
        send_next_rcpt(c);
        return;
    case STEP_DATA:
        if (code == 354) {
            send_body(c);
            return;
        }
        /* 2xx to DATA is a protocol error: try again later. */
        settle_undecided(c, class == 2 ? 451 : code, text);
        send_line(c, STEP_QUIT, "QUIT");
        return;
    case STEP_GATE:
        fail(c, "reply in the middle of the data");
        return;
    case STEP_BODY:
        settle_undecided(c, code, text);
        if (class == 2) set_detail(c, "%s said: %s", c->dest, text);
        /* Only a peer that took the message is known to be ready for the next. */
        if (class == 2 && keep_idle(c)) return;
        c->step = STEP_QUIT; /* settled: a failure after this changes nothing */
        send_line(c, STEP_QUIT, "QUIT");
        return;
    case STEP_IDLE: /* "421 idle too long", or anything unasked: the connection is spent */
        client_close(c);
        return;
    case STEP_DISCARD:
        send_line(c, STEP_QUIT, "QUIT");
        return;
    case STEP_QUIT:
        client_close(c);
        return;
    }
}

/* Splits input into reply lines; a multi-line reply counts once, at its last line. */
static void read_replies(client_t *c)
{
    const char *data, *lf;
    size_t avail;
    while (!c->finished && (data = stream_data(c->stream, &avail)) &&
           (lf = memchr(data, '\n', avail))) {
        size_t len = (size_t)(lf - data);
        if (len && data[len - 1] == '\r') len--;
        bool last;
        int code = proto_reply_line(data, len, &last);
        if (code < 0 || (c->multiline_code && code != c->multiline_code)) {
            fail(c, "malformed reply");
            return;
        }
        /* The first line of an EHLO reply is the server's name, not a keyword. */
        bool keyword_line = c->multiline_code != 0;
        c->multiline_code = last ? 0 : code;
        if (c->step == STEP_EHLO && code / 100 == 2 && keyword_line) note_extension(c, data, len);
        char text[512];
        snprintf(text, sizeof text, "%.*s", (int)(len > 500 ? 500 : len), data);
        stream_consume(c->stream, (size_t)(lf - data) + 1);
        if (last) on_reply(c, code, text);
    }
    if (!c->finished && (stream_data(c->stream, &avail), avail > 4096))
        fail(c, "reply line too long");
}

static void on_timeout(client_t *c)
{
    if (c->step == STEP_QUIT)
        client_close(c);
    else if (c->step == STEP_IDLE) /* idle long enough */
        quit_now(c);
    else
        fail(c, "timeout");
}

static void arm(client_t *c, unsigned seconds)
{
    stream_set_timeout(c->stream, (uint64_t)seconds * 1000);
}

/* An idle connection's QUIT: its 221 is a courtesy, so a silent peer
 * holds the slot for two seconds, not a command timeout. */
static void quit_now(client_t *c)
{
    send_line(c, STEP_QUIT, "QUIT");
    if (!c->finished) arm(c, 2);
}

static void on_stream(stream_t *stream, enum stream_event event, void *arg)
{
    client_t *c = arg;
    if (event == STREAM_CLOSED) {
        c->stream = NULL;
        maybe_done(c);
        return;
    }
    if (c->finished) return;
    switch (event) {
    case STREAM_CONNECTED:
        c->step = STEP_GREETING;
        c->start = uv_now(c->loop);
        arm(c, c->cfg->worker.command_timeout);
        break;
    case STREAM_DATA:
        read_replies(c);
        break;
    case STREAM_TLS_READY:
        on_tls_ready(c);
        break;
    case STREAM_EOF:
    case STREAM_ERROR:
        /* A peer that hangs up after its reply to QUIT (or any settled reply) is fine. */
        if (c->step == STEP_QUIT || c->step == STEP_IDLE)
            client_close(c);
        else
            fail(c, event == STREAM_EOF ? "connection closed" : stream_error(stream));
        break;
    case STREAM_TLS_FAILED:
        fail(c, stream_error(stream));
        break;
    case STREAM_TIMEOUT:
        on_timeout(c);
        break;
    case STREAM_CLOSED:
        break;
    }
}

void client_abort(client_t *c)
{
    if (!c->finished) fail(c, "aborted: the worker is stopping");
}

void client_idle(client_t *c, void (*closed)(client_t *c, void *arg), void *arg)
{
    c->closed = closed;
    c->closed_arg = arg;
}

int client_reuse(client_t *c, const queue_job_t *job, client_gate_cb gate, client_done_cb done,
                 void *arg)
{
    size_t n = job->n_rcpts ? job->n_rcpts : 1;
    int *codes = calloc(n, sizeof *codes);
    char(*replies)[CLIENT_REPLY_MAX] = calloc(n, sizeof *replies);
    if (!codes || !replies || c->step != STEP_IDLE || c->finished) {
        free(codes);
        free(replies);
        return -1;
    }
    char tls[sizeof c->result.tls];
    memcpy(tls, c->result.tls, sizeof tls);
    free(c->result.codes);
    free(c->result.replies);
    memset(&c->result, 0, sizeof c->result);
    memcpy(c->result.tls, tls, sizeof tls);
    c->result.codes = codes;
    c->result.replies = replies;
    c->result.n_codes = job->n_rcpts;
    c->result.remote = c->host;
    c->job = job;
    c->gate = gate;
    c->done = done;
    c->arg = arg;
    c->closed = NULL;
    c->rcpt_index = c->accepted = 0;
    c->pipelined = c->mail_failed = c->gate_pending = false;
    c->reported = c->replied = false;
    c->reused = true;
    size_t stray; /* lines sent while it sat idle answer nothing of this job */
    stream_data(c->stream, &stray);
    stream_consume(c->stream, stray);
    send_mail(c);
    return 0;
}

void client_quit(client_t *c)
{
    if (c->step == STEP_IDLE && !c->finished) quit_now(c);
}

bool client_is_idle(const client_t *c)
{
    return c->step == STEP_IDLE && !c->finished && !stream_eof(c->stream);
}

const char *client_name(const client_t *c)
{
    return c->name;
}

enum tls_policy client_tls_policy(const client_t *c)
{
    return c->tls_policy;
}

client_t *client_deliver(const client_env_t *env, const hop_t *hop, const queue_job_t *job,
                         client_gate_cb gate, client_done_cb done, void *arg)
{
    const net_hostport_t *dest = &hop->addr;
    const char *name = hop->name[0] ? hop->name : NULL;
    uv_loop_t *loop = env->loop;
    const config_t *cfg = env->cfg;
    client_t *c = calloc(1, sizeof *c);
    size_t n = job->n_rcpts ? job->n_rcpts : 1;
    int *codes = calloc(n, sizeof *codes);
    char(*replies)[CLIENT_REPLY_MAX] = calloc(n, sizeof *replies);
    if (!c || !codes || !replies) {
        free(c);
        free(codes);
        free(replies);
        return NULL;
    }
    c->loop = loop;
    c->cfg = cfg;
    c->tls_ctx = env->tls;
    c->tls_policy = config_tls_policy_for(cfg, job->domain);
    c->job = job;
    c->gate = gate;
    c->done = done;
    c->arg = arg;
    c->result.codes = codes;
    c->result.replies = replies;
    c->result.n_codes = job->n_rcpts;
    snprintf(c->dest, sizeof c->dest, "%s:%u", dest->host, dest->port);
    snprintf(c->name, sizeof c->name, "%s", name ? name : c->dest);
    snprintf(c->host, sizeof c->host, "%s", name ? name : dest->host);
    c->result.remote = c->host; /* Remote-MTA: a host name or address, no port */
    c->stream = stream_connect(loop, dest->host, dest->port, on_stream, c);
    if (!c->stream) {
        free(codes);
        free(replies);
        free(c);
        return NULL;
    }
    arm(c, cfg->worker.connect_timeout);
    return c;
}
