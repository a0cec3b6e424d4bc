/* The SMTP session as a connection (see session.h).
 *
 * Input is taken from the stream as the state says, one complete line at a
 * time for commands, so pipelined commands are handled in order. While an
 * answer is awaited from elsewhere (a recipient's encryption policy, a
 * login check, the commit of a message) the session is in STATE_WAIT and
 * nothing after the command is looked at until its reply has been queued.
 * Replies are collected and handed to the stream in one write when the
 * session waits for input.
 *
 * Time limits are deadlines, not idle timers: what a byte earns is
 * bounded (see the clocks below), so a client cannot hold a connection
 * by trickling. */
#include "ingress/session.h"

#include "ingress/policy.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void session_close(session_t *s);
static void session_flush(session_t *s);
static void session_process(session_t *s);
static void session_maybe_free(session_t *s);
static void clock_update(session_t *s);

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
    /* max_errors is for clients that err. A 4xx with a 4.3.x code (RFC
     * 3463: the mail system's status) is our own trouble, not theirs: with
     * stress_max_errors = 1 it would close the session of a client that did
     * nothing wrong. */
    bool ours = line[0] == '4' && n >= 9 && !strncmp(line + 3, " 4.3.", 5);
    if ((line[0] == '5' || line[0] == '4') && !ours) s->errors++;
}

static void session_flush(session_t *s)
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

/* Unless the answer came while the session was still processing: the
 * loop there goes on. */
void session_resume(session_t *s)
{
    if (s->state == STATE_WAIT) s->state = STATE_COMMAND;
    if (!s->processing) session_process(s);
}

/* ---- the input ----
 * The stream keeps what was consumed in place until the loop runs again,
 * so a line stays readable (and can be wiped) after it is consumed. */

static const char *input(const session_t *s, size_t *len)
{
    return stream_data(s->stream, len);
}

static void consume(session_t *s, size_t n)
{
    stream_consume(s->stream, n);
}

bool session_drop_if_closed(session_t *s)
{
    if (!s->closed) return false;
    s->state = STATE_COMMAND;
    session_maybe_free(s);
    return true;
}

bool session_start_tls(session_t *s, const char *ready)
{
    session_flush(s); /* the replies before it go in clear */
    if (s->closed) return false;
    char first[128];
    snprintf(first, sizeof first, "%s\r\n", ready);
    long dropped =
        stream_start_tls(s->stream, s->ingress->tls_ctx, &(stream_tls_t){.first = first});
    if (dropped < 0 && !stream_tls(s->stream)) { /* nothing went out: still in clear */
        session_reply(s, "454 4.7.0 TLS not available due to temporary reason");
        return false;
    }
    if (dropped < 0) {
        session_close(s);
        return false;
    }
    if (dropped > 0) log_info("event=starttls_input_dropped client=%s bytes=%ld", s->peer, dropped);
    s->handshaking = true;
    return true;
}

/* ---- the body: DATA's content and BDAT's octets ---- */

/* Decodes what is buffered into the body; true at the end of the data. */
static bool consume_data(session_t *s)
{
    size_t len;
    const char *in = input(s, &len);
    long used = transaction_feed(s->tx, in, len);
    if (used < 0) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        s->quitting = true;
        return false;
    }
    consume(s, (size_t)used);
    s->clock.credit += (uint64_t)used;
    return s->tx->data.done;
}

/* Reads the pending BDAT chunk from the input; true once all of it came. */
static bool consume_chunk(session_t *s)
{
    size_t len;
    const char *in = input(s, &len);
    size_t n = len < s->chunk.left ? len : s->chunk.left;
    if (!s->chunk.discard && transaction_feed(s->tx, in, n) < 0) {
        session_reply(s, "451 4.3.1 Insufficient system resources");
        s->quitting = true;
        return false;
    }
    consume(s, n);
    s->clock.credit += n;
    if (s->tx) {
        if (!s->tx->chunks_since) s->tx->chunks_since = uv_now(s->ingress->loop);
        s->tx->chunk_octets += n;
    }
    s->chunk.left -= n;
    return s->chunk.left == 0;
}

/* ---- the input loop ---- */

static void refuse_non_smtp(session_t *s)
{
    char text[POLICY_REPLY_MAX];
    policy_refuse_non_smtp(s->ingress, s->peer, text, sizeof text);
    session_reply(s, "%s", text);
    s->quitting = true;
}

/* An over-long or malformed line ends an AUTH exchange too. */
static void bad_line(session_t *s, const char *text)
{
    session_reply(s, "%s", text);
    s->state = STATE_COMMAND;
}

/* Not SMTP at all, as far as the input shows: a command line's first octet
 * tells a TLS ClientHello (0x16) or any binary protocol at once, whether a
 * LF is buffered or not (a ClientHello holds 0x0a octets, which would
 * otherwise cut it into "lines" each with its own 500); and the session's
 * first line is looked at whole for an HTTP request, whatever its line end.
 * A complete line is checked again by the dialogue (smtp.c: dispatch). */
static bool non_smtp(const session_t *s, const char *line, size_t avail, const char *lf)
{
    if (s->state != STATE_COMMAND || s->skip_line || avail == 0) return false;
    if (line[0] != '\r' && line[0] != '\n' && policy_non_smtp(line, 1)) return true;
    return !s->spoke && lf && policy_non_smtp(line, (size_t)(lf - line));
}

static void take_line(session_t *s)
{
    size_t avail;
    const char *line = input(s, &avail);
    const char *lf = memchr(line, '\n', avail);
    size_t max = s->cfg->ingress.max_line_length;
    if (non_smtp(s, line, avail, lf)) {
        refuse_non_smtp(s);
        return;
    }
    if (!lf) {
        if (avail > max) { /* keep nothing of an over-long line */
            if (!s->skip_line) bad_line(s, "500 5.5.2 Error: line too long");
            s->skip_line = true;
            consume(s, avail);
        }
        return;
    }
    size_t len = (size_t)(lf - line);
    consume(s, len + 1); /* first: STARTTLS drops what follows its own line */
    s->spoke = true;
    s->clock.kind = CLOCK_NONE; /* the next line's clock starts at the end of this pass */
    /* Credentials are wiped from the buffer once read (an AUTH line, or a
     * line answering a 334). */
    bool secret = s->state == STATE_AUTH || (len >= 4 && !strncasecmp(line, "AUTH", 4));
    if (s->skip_line)
        s->skip_line = false;
    else if (len + 1 > max)
        bad_line(s, "500 5.5.2 Error: line too long");
    else if (len == 0 || line[len - 1] != '\r')
        bad_line(s, "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>");
    else
        s->handlers->line(s, line, len - 1);
    if (secret) sodium_memzero((char *)line, len);
}

static bool take_proxy_header(session_t *s);
static void admit(session_t *s);

/* One step of input in the current state; false when it needs more. */
static bool step(session_t *s)
{
    size_t before;
    switch (s->state) {
    case STATE_PROXY:
        return take_proxy_header(s);
    case STATE_DATA:
        if (!consume_data(s)) return false;
        s->state = STATE_COMMAND;
        s->handlers->body_end(s);
        return true;
    case STATE_CHUNK:
        if (!consume_chunk(s)) return false;
        s->state = STATE_COMMAND;
        if (!s->chunk.discard) s->handlers->body_end(s); /* else refused when it came */
        return true;
    case STATE_COMMAND:
    case STATE_AUTH:
        input(s, &before);
        if (before == 0) return false;
        take_line(s);
        size_t after;
        input(s, &after);
        return after != before; /* else no complete line yet */
    case STATE_WAIT:
        break;
    }
    return false;
}

/* Works through the buffered input as far as it can, then writes the
 * replies and decides whether to read on. */
static void session_process(session_t *s)
{
    s->processing = true;
    while (s->state != STATE_WAIT && !s->quitting && !s->closed) {
        if (s->state != STATE_PROXY && s->errors >= policy_max_errors(s->ingress)) {
            session_reply(s, "421 4.7.0 %s Error: too many errors", s->cfg->ingress.hostname);
            ingress_refused(s->ingress, REFUSED_TOO_MANY_ERRORS);
            s->quitting = true;
            break;
        }
        if (!step(s)) break;
    }
    s->processing = false;
    bool waiting = s->state == STATE_WAIT;
    if (s->eof && !waiting) s->quitting = true;
    session_flush(s);
    if (s->closed) return;
    clock_update(s); /* when quitting too: a client that reads nothing cannot hold the close up */
    /* While an answer is awaited, the client's next commands wait in the
     * stream (up to its bound); once quitting, nothing more is read. */
    if (s->quitting && !waiting) {
        stream_close_when_written(s->stream);
        return;
    }
    stream_pause(s->stream, s->quitting);
}

/* ---- the clocks ----
 * One deadline at a time, kept here in loop time (uv_now); the stream's one
 * timer is set for what remains only when the deadline moves.
 *
 * A command line (an AUTH answer, a PROXY header) must be complete within
 * command_timeout of the end of the pass that took the line before it,
 * which is when that line's reply went out: bytes that trickle in earn
 * nothing. A TLS handshake gets the same time, and the first command's
 * clock starts when it is done.
 *
 * Content (DATA's, or a BDAT chunk's) is held to a rate instead, as
 * Postfix's smtpd_min_data_rate does: it starts with data_timeout to run;
 * every octet taken adds 1/min_data_rate s, but what remains is never
 * more than data_timeout. A client sending at min_data_rate or faster
 * always has data_timeout in hand, however large its message, so an
 * honest upload is cut only by a stall longer than data_timeout; one
 * sending at a fraction f of the rate loses (1 - f) s of it per second and
 * is cut after data_timeout / (1 - f); and a fast start buys no idling
 * later. The default of 500 octets/s is Postfix's smtpd_min_data_rate:
 * 4 kbit/s, below any link a mail server sits on, so only a client that
 * means to stall comes near it.
 *
 * While the session waits for our answer (Redis, a login check, the
 * gateway) the client is not on the clock: the wait has only a watchdog of
 * data_timeout, and the next command's clock starts after the reply. */

static const char *clock_name(enum session_clock kind)
{
    static const char *const names[] = {"none", "command", "tls_handshake", "data", "wait"};
    return names[kind];
}

/* Points the stream's timer at the deadline, when it moved. */
static void clock_arm(session_t *s)
{
    if (s->clock.at == s->clock.armed || s->closed) return;
    uint64_t now = uv_now(s->ingress->loop);
    s->clock.armed = s->clock.at;
    stream_set_timeout(s->stream, s->clock.at > now ? s->clock.at - now : 1);
}

static enum session_clock clock_wanted(const session_t *s)
{
    if (s->state == STATE_WAIT) return CLOCK_WAIT;
    if (s->handshaking) return CLOCK_TLS;
    if (s->state == STATE_DATA || s->state == STATE_CHUNK) return CLOCK_DATA;
    return CLOCK_COMMAND;
}

static unsigned clock_seconds(const session_t *s, enum session_clock kind)
{
    if (kind == CLOCK_DATA) return policy_data_timeout(s->ingress);
    if (kind == CLOCK_WAIT) return s->cfg->ingress.data_timeout;
    return policy_command_timeout(s->ingress);
}

/* BDAT's chunks, and the command lines between them. Each chunk would
 * start with data_timeout in hand, so a client sending one octet per chunk,
 * each BDAT line inside command_timeout, would never be cut: the chunks of
 * a transaction are held to the rate together, from the first one's start,
 * data_timeout plus what all their octets earned, and a new clock of any
 * kind ends by then. */
static uint64_t chunks_deadline(const session_t *s, uint64_t limit)
{
    const struct transaction *tx = s->tx;
    if (!tx || !tx->chunks_since) return limit;
    uint64_t all = tx->chunks_since + (uint64_t)policy_data_timeout(s->ingress) * 1000 +
                   tx->chunk_octets * 1000 / s->cfg->ingress.min_data_rate;
    return all < limit ? all : limit;
}

/* At the end of each pass: a new clock when the session moved on to
 * something else, else the content's earnings. */
static void clock_update(session_t *s)
{
    enum session_clock kind = clock_wanted(s);
    uint64_t now = uv_now(s->ingress->loop);
    uint64_t limit = now + (uint64_t)clock_seconds(s, kind) * 1000;
    if (kind != s->clock.kind) {
        s->clock.kind = kind;
        s->clock.start = now;
        s->clock.at = kind == CLOCK_WAIT ? limit : chunks_deadline(s, limit);
    } else if (kind == CLOCK_DATA && s->clock.credit) {
        uint64_t earned = s->clock.credit * 1000 / s->cfg->ingress.min_data_rate;
        s->clock.at = s->clock.at + earned < limit ? s->clock.at + earned : limit;
    }
    s->clock.credit = 0;
    clock_arm(s);
}

/* Stress began: the clocks that run get the shorter limits now, counted
 * from their start (a content clock from now, as its earnings are not
 * kept apart), so a slot held by a trickler is freed within seconds. */
static void clock_shrink(session_t *s)
{
    uint64_t limit;
    if (s->clock.kind == CLOCK_COMMAND || s->clock.kind == CLOCK_TLS)
        limit = s->clock.start + (uint64_t)policy_command_timeout(s->ingress) * 1000;
    else if (s->clock.kind == CLOCK_DATA)
        limit = uv_now(s->ingress->loop) + (uint64_t)policy_data_timeout(s->ingress) * 1000;
    else
        return;
    if (limit >= s->clock.at) return;
    s->clock.at = limit;
    clock_arm(s);
}

/* The session count moved: maybe into stress or out of it. */
static void stress_update(ingress_t *ingress)
{
    if (!policy_stress_update(ingress) || !ingress->stressed) return;
    for (session_t *s = ingress->sessions; s; s = s->next)
        clock_shrink(s);
}

/* ---- the stream's events ---- */

static void on_timeout(session_t *s)
{
    if (uv_now(s->ingress->loop) < s->clock.at) { /* the deadline moved later meanwhile */
        s->clock.armed = 0;
        clock_arm(s);
        return;
    }
    log_info("event=timeout client=%s state=%s", s->peer, clock_name(s->clock.kind));
    ingress_refused(s->ingress, REFUSED_TIMEOUT);
    s->quitting = true;
    if (s->state == STATE_WAIT) return; /* the 421 would come before the awaited reply */
    /* In a handshake nothing can be said; a client that stopped reading
     * would not read it. */
    if (s->handshaking || stream_pending(s->stream)) {
        session_close(s);
        return;
    }
    session_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cfg->ingress.hostname);
    session_flush(s);
    if (!s->closed) stream_close_when_written(s->stream);
}

static void on_stream(stream_t *stream, enum stream_event event, void *arg)
{
    session_t *s = arg;
    switch (event) {
    case STREAM_DATA:
        session_process(s);
        break;
    case STREAM_TLS_READY:
        log_info("event=tls client=%s tls=\"%s\"", s->peer, stream_tls_info(stream));
        metric_add(s->ingress->metrics.tls[1], 1);
        s->handshaking = false;
        if (!s->closed) clock_update(s); /* the first command's clock starts now */
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
        session_close(s); /* when it closed itself, after its last write */
        s->stream = NULL;
        session_maybe_free(s);
        break;
    case STREAM_CONNECTED:
        break;
    }
}

/* ---- life cycle ---- */

/* Frees a closed session once its stream is gone and no answer is awaited
 * (the callback still points at it). */
static void session_maybe_free(session_t *s)
{
    if (!s->closed || s->stream || s->state == STATE_WAIT) return;
    ingress_t *ingress = s->ingress;
    bool admitted = s->admitted;
    transaction_free(s->tx);
    buf_free(&s->out);
    sodium_memzero(&s->auth, sizeof s->auth);
    free(s);
    ingress->n_sessions--;
    metric_add(ingress->metrics.open, -1);
    if (admitted) {
        ingress->n_admitted--;
        stress_update(ingress);
    }
    ingress->check_stopped(ingress);
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

/* Admitted sessions from the client's address (its /64 for IPv6, as the
 * rate limit and the login counts have it), this one included; not those
 * waiting for their PROXY header or only writing their refusal. A scan,
 * not a table: it runs once per connection, and is cheap next to the
 * accept itself at the counts max_connections allows. */
static unsigned sessions_from(const session_t *self)
{
    unsigned n = 1;
    for (const session_t *s = self->ingress->sessions; s; s = s->next)
        n += s != self && s->admitted && !strcmp(s->peer_key, self->peer_key);
    return n;
}

/* The connection's limits, then the greeting (with implicit TLS, RFC 8314,
 * it waits in TLS for the handshake). */
static void admit(session_t *s)
{
    char text[POLICY_REPLY_MAX];
    s->state = STATE_COMMAND;
    policy_client_key(s->peer, s->peer_key);
    if (policy_admit(s->ingress, s->peer, s->peer_key, s->trusted, sessions_from(s), text,
                     sizeof text) != REFUSED_NONE) {
        if (s->kind != LISTENER_SMTPS)
            session_reply(s, "%s", text); /* a TLS client would not read it */
        s->quitting = true;
    } else if (s->kind == LISTENER_SMTPS &&
               /* a ClientHello may have come right behind a PROXY header */
               stream_start_tls(s->stream, s->ingress->tls_ctx,
                                &(stream_tls_t){.keep_input = true}) < 0) {
        s->quitting = true; /* no memory for TLS */
    } else {
        s->admitted = true;
        s->ingress->n_admitted++;
        stress_update(s->ingress);
        s->handshaking = s->kind == LISTENER_SMTPS;
        session_reply(s, "220 %s ESMTP sealpost", s->cfg->ingress.hostname);
    }
}

/* A connection from a load balancer in proxy_networks starts with a PROXY
 * header naming the real client; without one it is closed unanswered (the
 * balancer is misconfigured, or it is not the balancer). False while the
 * header is incomplete or when it was bad. */
static bool take_proxy_header(session_t *s)
{
    size_t len;
    struct sockaddr_storage client;
    bool local;
    const char *in = input(s, &len);
    long n = policy_proxy_header(s->ingress, s->peer, in, len, &client, &local);
    if (n < 0) s->quitting = true;
    if (n <= 0) return false;
    consume(s, (size_t)n);
    if (local) {
        s->trusted = false; /* the balancer's own connection: no client's trust to inherit */
    } else {
        char via[sizeof s->peer];
        memcpy(via, s->peer, sizeof via);
        policy_client(s->cfg, (struct sockaddr *)&client, s->peer, &s->trusted);
        log_debug("event=proxied client=%s via=%s trusted=%d", s->peer, via, s->trusted);
    }
    admit(s);
    return true;
}

/* Takes over a stream: who the client is, and the greeting (or, from a
 * balancer, the wait for its PROXY header). */
static void session_begin(session_t *s, ingress_t *ingress, enum listener_kind kind,
                          const struct sockaddr *peer, const struct session_handlers *handlers)
{
    s->ingress = ingress;
    s->cfg = ingress->cfg;
    s->kind = kind;
    s->handlers = handlers;
    /* Counted here, as session_maybe_free uncounts it (admit counts it
     * again in n_admitted). */
    ingress->n_sessions++;
    metric_add(ingress->metrics.open, 1);
    metric_add(ingress->metrics.connections[kind], 1);
    s->next = ingress->sessions;
    if (s->next) s->next->prev = s;
    ingress->sessions = s;
    bool proxied = false;
    if (peer) {
        policy_client(s->cfg, peer, s->peer, &s->trusted);
        proxied = policy_expects_proxy(s->cfg, peer);
    } else {
        snprintf(s->peer, sizeof s->peer, "unknown");
    }
    log_debug("event=connect client=%s trusted=%d proxy=%d", s->peer, s->trusted, proxied);
    s->state = STATE_PROXY;
    if (!proxied) admit(s);
    session_process(s);
}

bool session_accept(ingress_t *ingress, uv_stream_t *listener, enum listener_kind kind,
                    const struct session_handlers *handlers)
{
    session_t *s = calloc(1, sizeof *s);
    if (!s) return false;
    s->stream = stream_accept(listener, on_stream, s);
    if (!s->stream) {
        free(s);
        return false;
    }
    struct sockaddr_storage ss;
    bool known = stream_peer(s->stream, &ss) == 0;
    session_begin(s, ingress, kind, known ? (struct sockaddr *)&ss : NULL, handlers);
    return true;
}

bool session_open_fd(ingress_t *ingress, int fd, enum listener_kind kind,
                     const struct sockaddr *peer, const struct session_handlers *handlers)
{
    session_t *s = calloc(1, sizeof *s);
    if (!s) return false;
    s->stream = stream_open_fd(ingress->loop, fd, on_stream, s);
    if (!s->stream) {
        free(s);
        return false;
    }
    session_begin(s, ingress, kind, peer, handlers);
    return true;
}

void session_shutdown_all(ingress_t *ingress)
{
    for (session_t *s = ingress->sessions, *next; s; s = next) {
        next = s->next;
        s->quitting = true;
        if (s->state == STATE_WAIT) continue; /* closes after the awaited reply */
        session_reply(s, "421 4.3.2 %s Service shutting down", s->cfg->ingress.hostname);
        session_flush(s);
        if (!s->closed) stream_close_when_written(s->stream);
    }
}
