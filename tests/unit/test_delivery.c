/* Unit tests for the delivery/ pieces that need no network and no Redis:
 * the status code of a reply, the backoff between attempts, the fate of
 * each recipient of an attempt (classify), and the RFC 3464 notice built
 * for those the sender hears about; and the resolver's view of MX answers,
 * from a DNS server on loopback run by the test's own loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "delivery/bounce.h"
#include "delivery/dns.h"
#include "delivery/outcome.h"

#include <uv.h>

#define MAX_RCPTS 8
#define BOUNCE_ID "fedcba9876543210fedcba9876543210"

static void expect_status(const char *reply, const char *want)
{
    char got[16];
    bounce_status_of(reply, got);
    assert_string_equal(got, want);
}

static void test_status_from_enhanced_code(void **state)
{
    (void)state;
    expect_status("550 5.1.1 <a@b>: no such user", "5.1.1");
    expect_status("550 5.1.10 null MX", "5.1.10");
    expect_status("451 4.3.0 try later", "4.3.0");
    expect_status("552 5.3.4", "5.3.4");
}

static void test_status_without_usable_code(void **state)
{
    (void)state;
    expect_status("550 no such user", "5.0.0");
    expect_status("550 4.1.1 class differs from the reply's", "5.0.0");
    expect_status("550 5.1 too short", "5.0.0");
    expect_status("550 5.1.1234 detail too long", "5.0.0");
    expect_status("550 5.1.1x glued", "5.0.0");
    expect_status("421", "4.0.0");
    expect_status("450 requested action not taken", "4.0.0");
}

/* ---- backoff ---- */

static config_t *config_new(void)
{
    config_t *cfg = calloc(1, sizeof *cfg);
    assert_non_null(cfg);
    config_defaults(cfg);
    snprintf(cfg->worker.helo_name, sizeof cfg->worker.helo_name, "relay.sealpost.test");
    return cfg;
}

/* Draws n delays for the attempt count and checks each lies in [lo, hi];
 * gives back the smallest and the largest, and how many fell below mid. */
static void draw(const config_t *cfg, unsigned attempts, unsigned n, uint64_t lo, uint64_t hi,
                 uint64_t mid, uint64_t *min, uint64_t *max, unsigned *below_mid)
{
    *min = UINT64_MAX;
    *max = 0;
    *below_mid = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t d = outcome_backoff_ms(cfg, attempts);
        assert_in_range(d, lo, hi);
        if (d < *min) *min = d;
        if (d > *max) *max = d;
        *below_mid += d < mid;
    }
}

static void test_backoff_first_retry_is_the_floor(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    cfg->worker.min_backoff = 300;
    cfg->worker.max_backoff = 3600;
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(outcome_backoff_ms(cfg, 0), 300000);
    /* A floor equal to the cap leaves nothing to jitter at any attempt. */
    cfg->worker.max_backoff = 300;
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(outcome_backoff_ms(cfg, 7), 300000);
    free(cfg);
}

static void test_backoff_doubles_per_attempt(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    cfg->worker.min_backoff = 10;
    cfg->worker.max_backoff = 100000;
    for (unsigned attempts = 1; attempts <= 5; attempts++) {
        uint64_t hi = 10000ull << attempts, min, max;
        unsigned below;
        draw(cfg, attempts, 4000, 10000, hi, 10000 + (hi - 10000) / 2, &min, &max, &below);
        /* The range reaches past the previous attempt's, and near its own top. */
        assert_true(max > hi / 2);
        assert_true(max > hi - (hi - 10000) / 20);
        assert_true(min < 10000 + (hi - 10000) / 20);
    }
    free(cfg);
}

static void test_backoff_stops_at_the_cap(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    cfg->worker.min_backoff = 300;
    cfg->worker.max_backoff = 3600;
    const unsigned many[] = {4, 5, 10, 40, 1000, UINT32_MAX};
    for (unsigned k = 0; k < sizeof many / sizeof many[0]; k++) {
        uint64_t min, max;
        unsigned below;
        draw(cfg, many[k], 2000, 300000, 3600000, 1950000, &min, &max, &below);
        assert_true(max > 3400000);
        assert_true(min < 500000);
    }
    /* 300 s doubled three times is 2400 s: still below the cap. */
    uint64_t min, max;
    unsigned below;
    draw(cfg, 3, 2000, 300000, 2400000, 1350000, &min, &max, &below);
    assert_true(max > 2200000);
    free(cfg);
}

static void test_backoff_jitter_spreads_evenly(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    cfg->worker.min_backoff = 60;
    cfg->worker.max_backoff = 86400;
    /* Uniform on [60 s, 960 s]: about half below the middle, and many
     * distinct values, not a handful. */
    enum { N = 10000, FIRST = 500 };
    uint64_t *seen = calloc(N, sizeof *seen);
    assert_non_null(seen);
    unsigned below = 0, distinct = 0;
    for (unsigned i = 0; i < N; i++) {
        seen[i] = outcome_backoff_ms(cfg, 4);
        assert_in_range(seen[i], 60000, 960000);
        below += seen[i] < 510000;
    }
    for (unsigned i = 0; i < FIRST; i++) {
        bool again = false;
        for (unsigned j = 0; j < i && !again; j++)
            again = seen[j] == seen[i];
        distinct += !again;
    }
    assert_in_range(below, N * 45 / 100, N * 55 / 100);
    /* 500 draws from 900001 values collide about once in seven runs. */
    assert_true(distinct > FIRST - 10);
    free(seen);
    free(cfg);
}

/* ---- classify ---- */

/* One attempt's inputs: a job to example.test and what the peer said. */
typedef struct fixture {
    config_t *cfg;
    queue_job_t job;
    char rcpt[MAX_RCPTS][64];
    char params[MAX_RCPTS][64];
    char *rcpts[MAX_RCPTS], *rcpt_params[MAX_RCPTS];
    client_result_t result;
    int codes[MAX_RCPTS];
    char replies[MAX_RCPTS][CLIENT_REPLY_MAX];
    outcome_t o;
    long long now_ms;
} fixture_t;

static char original[] = "From: sender@origin.test\r\n"
                         "To: a@example.test\r\n"
                         "Subject: quarterly figures\r\n"
                         "Message-ID: <q1@origin.test>\r\n"
                         "\r\n"
                         "the body, which a headers-only report leaves out\r\n";

static char sender[] = "sender@origin.test";
static char no_params[] = "";

/* A fixture for n recipients r0@..r(n-1)@example.test, received a minute
 * ago, tried once before, answered by a DSN-capable peer. */
static fixture_t *fixture_new(unsigned n)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->cfg = config_new();
    f->now_ms = 1700000000000LL;
    for (unsigned i = 0; i < n; i++) {
        snprintf(f->rcpt[i], sizeof f->rcpt[i], "r%u@example.test", i);
        f->rcpts[i] = f->rcpt[i];
        f->rcpt_params[i] = f->params[i];
    }
    queue_job_t *job = &f->job;
    snprintf(job->jid, sizeof job->jid, "j1");
    snprintf(job->mid, sizeof job->mid, "0123456789abcdef0123456789abcdef");
    snprintf(job->domain, sizeof job->domain, "example.test");
    job->sender = sender;
    job->mail_params = no_params;
    job->rcpts = f->rcpts;
    job->rcpt_params = f->rcpt_params;
    job->n_rcpts = n;
    job->attempts = 1;
    job->received_ms = f->now_ms - 60000;
    job->body = original;
    job->body_len = strlen(original);
    f->result.codes = f->codes;
    f->result.replies = f->replies;
    f->result.n_codes = n;
    f->result.remote = "mx1.example.test";
    f->result.peer_dsn = true;
    snprintf(f->result.detail, sizeof f->result.detail, "10.0.0.1:25 said: 250 2.0.0 ok");
    assert_int_equal(outcome_init(&f->o, n), 0);
    return f;
}

static void fixture_free(fixture_t *f)
{
    outcome_free(&f->o);
    free(f->cfg);
    free(f);
}

static void answer(fixture_t *f, unsigned i, int code, const char *reply)
{
    f->codes[i] = code;
    snprintf(f->replies[i], CLIENT_REPLY_MAX, "%s", reply);
}

static void classify(fixture_t *f, bool releasing)
{
    outcome_classify(f->cfg, &f->job, &f->result, f->now_ms, releasing, &f->o);
}

/* The notified entry of recipient i, or NULL. */
static const bounce_rcpt_t *notified(const fixture_t *f, unsigned i)
{
    for (unsigned k = 0; k < f->o.n_notified; k++)
        if (f->o.notified[k].addr == f->rcpts[i]) return &f->o.notified[k];
    return NULL;
}

static void test_classify_by_reply_class(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(4);
    answer(f, 0, 250, "250 2.1.5 ok");
    answer(f, 1, 451, "451 4.3.0 greylisted");
    answer(f, 2, 550, "550 5.1.1 no such user");
    /* r3 never reached: code 0, no reply of its own; the detail speaks for it. */
    snprintf(f->result.detail, sizeof f->result.detail, "10.0.0.1:25: connection closed");
    classify(f, false);
    assert_int_equal(f->o.kinds[0], OUT_DELIVERED);
    assert_int_equal(f->o.kinds[1], OUT_DEFERRED);
    assert_int_equal(f->o.kinds[2], OUT_BOUNCED);
    assert_int_equal(f->o.kinds[3], OUT_DEFERRED);
    assert_int_equal(f->o.n_pending, 2);
    assert_int_equal(f->o.pending[0], 1);
    assert_int_equal(f->o.pending[1], 3);
    /* Only the failure is reported: the DSN peer reports the success, and
     * no delay warning is due. */
    assert_int_equal(f->o.n_notified, 1);
    const bounce_rcpt_t *b = notified(f, 2);
    assert_non_null(b);
    assert_int_equal(b->action, BOUNCE_FAILED);
    assert_string_equal(b->status, "5.1.1");
    assert_string_equal(b->diagnostic, "550 5.1.1 no such user");
    assert_true(b->remote);
    assert_false(f->o.delayed);
    assert_string_equal(f->o.trace.data,
                        "r0@example.test\tdelivered\t250 2.1.5 ok\n"
                        "r1@example.test\tdeferred\t451 4.3.0 greylisted\n"
                        "r2@example.test\tbounced\t550 5.1.1 no such user\n"
                        "r3@example.test\tdeferred\t10.0.0.1:25: connection closed\n");
    fixture_free(f);
}

static void test_classify_without_a_result_defers_all(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(2);
    outcome_classify(f->cfg, &f->job, NULL, f->now_ms, false, &f->o);
    assert_int_equal(f->o.kinds[0], OUT_DEFERRED);
    assert_int_equal(f->o.kinds[1], OUT_DEFERRED);
    assert_int_equal(f->o.n_pending, 2);
    assert_int_equal(f->o.n_notified, 0);
    fixture_free(f);
}

static void test_trace_fields_stay_on_one_line(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(1);
    answer(f, 0, 451, "451 4.3.0 a\tb\r\nc");
    classify(f, false);
    assert_string_equal(f->o.trace.data, "r0@example.test\tdeferred\t451 4.3.0 a b  c\n");
    fixture_free(f);
}

static void test_expired_message_bounces_as_4_4_7(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(4);
    f->job.received_ms = f->now_ms - (long long)f->cfg->worker.max_queue_lifetime * 1000 - 1;
    answer(f, 0, 451, "451 4.3.0 still greylisted");
    answer(f, 2, 250, "250 2.1.5 ok");
    answer(f, 3, 550, "550 5.2.2 mailbox full");
    classify(f, false);
    assert_int_equal(f->o.kinds[0], OUT_EXPIRED);
    assert_int_equal(f->o.kinds[1], OUT_EXPIRED);
    assert_int_equal(f->o.kinds[2], OUT_DELIVERED);
    assert_int_equal(f->o.kinds[3], OUT_BOUNCED);
    assert_int_equal(f->o.n_pending, 0);
    assert_int_equal(f->o.n_notified, 3);
    for (unsigned i = 0; i < 2; i++) {
        const bounce_rcpt_t *b = notified(f, i);
        assert_non_null(b);
        assert_int_equal(b->action, BOUNCE_FAILED);
        assert_string_equal(b->status, "4.4.7");
        assert_false(b->remote); /* our decision, not the server's */
    }
    assert_string_equal(notified(f, 0)->diagnostic, "451 4.3.0 still greylisted");
    assert_string_equal(notified(f, 3)->status, "5.2.2");
    assert_true(notified(f, 3)->remote);
    /* One millisecond younger, and it is still deferred. */
    fixture_t *g = fixture_new(1);
    g->job.received_ms = g->now_ms - (long long)g->cfg->worker.max_queue_lifetime * 1000;
    answer(g, 0, 451, "451 4.3.0 still greylisted");
    classify(g, false);
    assert_int_equal(g->o.kinds[0], OUT_DEFERRED);
    fixture_free(g);
    fixture_free(f);
}

static void test_notify_never_and_success(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(5);
    f->result.peer_dsn = false; /* we report relays ourselves */
    snprintf(f->params[0], sizeof f->params[0], "NOTIFY=NEVER");
    snprintf(f->params[1], sizeof f->params[1], "NOTIFY=SUCCESS");
    snprintf(f->params[2], sizeof f->params[2], "NOTIFY=SUCCESS ORCPT=rfc822;r2@example.test");
    snprintf(f->params[3], sizeof f->params[3], "NOTIFY=SUCCESS,FAILURE");
    /* r4: no NOTIFY, so failures only (and delays): no relay notice. */
    answer(f, 0, 550, "550 5.1.1 no such user");
    answer(f, 1, 250, "250 2.1.5 ok");
    answer(f, 2, 550, "550 5.7.1 refused");
    answer(f, 3, 550, "550 5.7.1 refused");
    answer(f, 4, 250, "250 2.1.5 ok");
    classify(f, false);
    assert_int_equal(f->o.kinds[0], OUT_BOUNCED);
    assert_null(notified(f, 0));     /* NEVER: bounced, and nobody told */
    assert_null(notified(f, 2));     /* SUCCESS only: no failure report */
    assert_non_null(notified(f, 3)); /* SUCCESS,FAILURE */
    assert_int_equal(notified(f, 3)->action, BOUNCE_FAILED);
    assert_null(notified(f, 4));
    const bounce_rcpt_t *relay = notified(f, 1);
    assert_non_null(relay);
    assert_int_equal(relay->action, BOUNCE_RELAYED);
    assert_string_equal(relay->status, "2.1.5");
    assert_true(relay->remote);
    assert_int_equal(f->o.n_notified, 2);
    assert_false(f->o.delayed);
    fixture_free(f);
}

static void test_no_relay_notice_from_a_dsn_peer(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(1);
    snprintf(f->params[0], sizeof f->params[0], "NOTIFY=SUCCESS");
    answer(f, 0, 250, "250 2.1.5 ok");
    classify(f, false);
    assert_int_equal(f->o.kinds[0], OUT_DELIVERED);
    assert_int_equal(f->o.n_notified, 0);
    fixture_free(f);
}

static fixture_t *waited_two_hours(unsigned n)
{
    fixture_t *f = fixture_new(n);
    f->cfg->worker.delay_warning_time = 3600;
    f->job.received_ms = f->now_ms - 7200 * 1000LL;
    return f;
}

static void test_delay_warning_when_due(void **state)
{
    (void)state;
    fixture_t *f = waited_two_hours(4);
    answer(f, 0, 451, "451 4.3.0 greylisted");
    snprintf(f->params[2], sizeof f->params[2], "NOTIFY=FAILURE");
    snprintf(f->params[3], sizeof f->params[3], "NOTIFY=DELAY");
    classify(f, false);
    assert_int_equal(f->o.n_pending, 4);
    assert_true(f->o.delayed);
    const bounce_rcpt_t *b = notified(f, 0);
    assert_non_null(b);
    assert_int_equal(b->action, BOUNCE_DELAYED);
    assert_string_equal(b->status, "4.3.0");
    assert_true(b->remote);
    b = notified(f, 1); /* not reached at all */
    assert_non_null(b);
    assert_string_equal(b->status, "4.4.1");
    assert_false(b->remote);
    assert_null(notified(f, 2)); /* FAILURE only: no delay notice */
    assert_non_null(notified(f, 3));
    fixture_free(f);
}

static void test_delay_warning_not_due(void **state)
{
    (void)state;
    struct {
        long long age_s;
        unsigned after;
        bool warned, releasing;
    } cases[] = {
        {3599, 3600, false, false}, /* too young */
        {7200, 0, false, false},    /* warnings off */
        {7200, 3600, true, false},  /* warned before */
        {7200, 3600, false, true},  /* handed back by a stopping worker */
    };
    for (unsigned k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        fixture_t *f = fixture_new(1);
        f->cfg->worker.delay_warning_time = cases[k].after;
        f->job.received_ms = f->now_ms - cases[k].age_s * 1000;
        f->job.warned = cases[k].warned;
        answer(f, 0, 451, "451 4.3.0 greylisted");
        classify(f, cases[k].releasing);
        assert_int_equal(f->o.n_pending, 1);
        assert_int_equal(f->o.n_notified, 0);
        assert_false(f->o.delayed);
        fixture_free(f);
    }
    /* Exactly at the time, it is due. */
    fixture_t *f = fixture_new(1);
    f->cfg->worker.delay_warning_time = 3600;
    f->job.received_ms = f->now_ms - 3600 * 1000LL;
    classify(f, false);
    assert_int_equal(f->o.n_notified, 1);
    fixture_free(f);
}

/* ---- the notice: a small MIME reader for what outcome_notice wrote ---- */

/* The unfolded value of header name in the header section at text (which
 * ends at the first empty line), or NULL. The caller frees it. */
static char *header(const char *text, const char *name)
{
    size_t n = strlen(name);
    const char *end = strstr(text, "\r\n\r\n");
    const char *limit = end ? end + 2 : text + strlen(text);
    for (const char *line = text; line < limit;) {
        const char *eol = strstr(line, "\r\n");
        if (!eol || eol > limit) eol = limit;
        if (!strncasecmp(line, name, n) && line[n] == ':') {
            buf_t v;
            buf_init(&v);
            const char *p = line + n + 1;
            while (*p == ' ')
                p++;
            buf_append(&v, p, (size_t)(eol - p));
            while (eol + 2 < limit && (eol[2] == ' ' || eol[2] == '\t')) {
                const char *next = eol + 2;
                eol = strstr(next, "\r\n");
                buf_append(&v, " ", 1);
                buf_append(&v, next + 1, (size_t)(eol - next - 1));
            }
            buf_append(&v, "", 1);
            return v.data;
        }
        line = eol + 2;
    }
    return NULL;
}

static void assert_header(const char *text, const char *name, const char *want)
{
    char *got = header(text, name);
    if (!got) fail_msg("no %s header in:\n%s", name, text);
    assert_string_equal(got, want);
    free(got);
}

/* What follows the header section. */
static const char *content_of(const char *entity)
{
    const char *end = strstr(entity, "\r\n\r\n");
    assert_non_null(end);
    return end + 4;
}

/* Splits a multipart body at its boundary, in place: parts[i] points at
 * each part (headers first); the count, or -1 without a closing delimiter. */
static int split_parts(char *body, const char *boundary, char **parts, int max)
{
    char delim[128];
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    size_t dl = strlen(delim);
    int n = 0;
    for (char *p = strstr(body, delim); p; p = strstr(p, delim)) {
        *p = 0; /* ends the part before */
        p += dl;
        if (!strncmp(p, "--", 2)) return n;
        if (strncmp(p, "\r\n", 2) || n == max) return -1;
        parts[n++] = p + 2;
    }
    return -1;
}

/* Splits the delivery-status content into its blocks, in place. */
static int split_blocks(char *text, char **blocks, int max)
{
    int n = 0;
    while (*text && n < max) {
        blocks[n++] = text;
        char *end = strstr(text, "\r\n\r\n");
        if (!end) break;
        end[2] = 0;
        text = end + 4;
    }
    return n;
}

typedef struct report {
    char *message; /* the whole notice, cut up in place */
    char *parts[4];
    int n_parts;
    char *blocks[MAX_RCPTS + 1]; /* per message, then per recipient */
    int n_blocks;
} report_t;

/* Builds the notice of f's outcome and reads it: multipart/report of
 * delivery-status, three parts, the second cut into its blocks. */
static report_t *build_and_read(fixture_t *f)
{
    buf_t out;
    buf_init(&out);
    assert_int_equal(outcome_notice(f->cfg, &f->job, &f->result, &f->o, BOUNCE_ID, &out), 1);
    buf_append(&out, "", 1);
    report_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->message = out.data;
    assert_header(r->message, "From", "Mail Delivery System <MAILER-DAEMON@relay.sealpost.test>");
    assert_header(r->message, "To", "<sender@origin.test>");
    assert_header(r->message, "Auto-Submitted", "auto-replied");
    assert_header(r->message, "Message-ID", "<" BOUNCE_ID "@relay.sealpost.test>");
    assert_header(r->message, "MIME-Version", "1.0");
    char *type = header(r->message, "Content-Type");
    assert_non_null(type);
    const char *want = "multipart/report; report-type=delivery-status; boundary=\"";
    assert_int_equal(strncmp(type, want, strlen(want)), 0);
    char *boundary = type + strlen(want);
    char *quote = strchr(boundary, '"');
    assert_non_null(quote);
    *quote = 0;
    assert_true(strlen(boundary) > 0 && strlen(boundary) <= 70); /* RFC 2046 §5.1.1 */
    r->n_parts = split_parts((char *)content_of(r->message), boundary, r->parts, 4);
    free(type);
    assert_int_equal(r->n_parts, 3);
    assert_header(r->parts[0], "Content-Type", "text/plain; charset=utf-8");
    assert_header(r->parts[1], "Content-Type", "message/delivery-status");
    r->n_blocks = split_blocks((char *)content_of(r->parts[1]), r->blocks, MAX_RCPTS + 1);
    return r;
}

static void report_free(report_t *r)
{
    free(r->message);
    free(r);
}

/* The per-recipient block of addr. */
static const char *block_of(const report_t *r, const char *addr)
{
    char want[128];
    snprintf(want, sizeof want, "rfc822; %s", addr);
    for (int i = 1; i < r->n_blocks; i++) {
        char *v = header(r->blocks[i], "Final-Recipient");
        bool found = v && !strcmp(v, want);
        free(v);
        if (found) return r->blocks[i];
    }
    fail_msg("no block for %s", addr);
    return NULL;
}

static bool has_header(const char *text, const char *name)
{
    char *v = header(text, name);
    bool found = v != NULL;
    free(v);
    return found;
}

static void test_bounce_report_structure(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(3);
    f->job.received_ms = f->now_ms - (long long)f->cfg->worker.max_queue_lifetime * 1000 - 1;
    snprintf(f->params[0], sizeof f->params[0], "ORCPT=rfc822;first+2Blast@example.test");
    answer(f, 0, 550, "550 5.1.1 <r0@example.test>: no such user");
    answer(f, 1, 451, "451 4.3.0 greylisted");
    answer(f, 2, 250, "250 2.1.5 ok");
    classify(f, false);
    report_t *r = build_and_read(f);
    assert_header(r->message, "Subject", "Undelivered Mail Returned to Sender");
    const char *human = content_of(r->parts[0]);
    assert_non_null(strstr(human, "<r0@example.test>: 550 5.1.1 <r0@example.test>: no such user"));
    assert_non_null(strstr(human, "<r1@example.test>: 451 4.3.0 greylisted"));
    assert_null(strstr(human, "r2@example.test"));

    assert_int_equal(r->n_blocks, 3); /* the message, and the two failed recipients */
    assert_header(r->blocks[0], "Reporting-MTA", "dns; relay.sealpost.test");
    assert_header(r->blocks[0], "X-Sealpost-Queue-ID", "0123456789abcdef0123456789abcdef");
    assert_true(has_header(r->blocks[0], "Arrival-Date"));
    assert_false(has_header(r->blocks[0], "Original-Envelope-Id"));

    const char *refused = block_of(r, "r0@example.test");
    assert_header(refused, "Original-Recipient", "rfc822;first+last@example.test");
    assert_header(refused, "Action", "failed");
    assert_header(refused, "Status", "5.1.1");
    assert_header(refused, "Remote-MTA", "dns; mx1.example.test");
    assert_header(refused, "Diagnostic-Code", "smtp; 550 5.1.1 <r0@example.test>: no such user");

    const char *expired = block_of(r, "r1@example.test");
    assert_header(expired, "Action", "failed");
    assert_header(expired, "Status", "4.4.7");
    assert_false(has_header(expired, "Remote-MTA"));
    assert_false(has_header(expired, "Original-Recipient"));
    assert_header(expired, "Diagnostic-Code", "x-sealpost; 451 4.3.0 greylisted");

    /* The original's headers, not its body (no RET=FULL). */
    assert_header(r->parts[2], "Content-Type", "text/rfc822-headers");
    const char *headers = content_of(r->parts[2]);
    assert_non_null(strstr(headers, "Subject: quarterly figures\r\n"));
    assert_null(strstr(headers, "the body"));
    report_free(r);
    fixture_free(f);
}

static void test_bounce_with_ret_full_and_envid(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(1);
    char params[] = "RET=FULL ENVID=batch+2B7";
    f->job.mail_params = params;
    answer(f, 0, 554, "554 5.7.1 rejected");
    classify(f, false);
    report_t *r = build_and_read(f);
    assert_header(r->blocks[0], "Original-Envelope-Id", "batch+7");
    assert_header(r->parts[2], "Content-Type", "message/rfc822");
    assert_non_null(strstr(content_of(r->parts[2]), "the body, which a headers-only"));
    report_free(r);
    fixture_free(f);
}

/* xtext can say "+00": decoded, a NUL would end the field's C string and
 * the report would name a shorter envelope id or recipient than was given. */
static void test_bounce_decoded_nul_is_not_a_cut(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(1);
    char params[] = "ENVID=batch+00tail+0Dx";
    f->job.mail_params = params;
    char rcpt_params[] = "ORCPT=rfc822;a+00b@example.test";
    f->job.rcpt_params[0] = rcpt_params;
    answer(f, 0, 550, "550 5.1.1 no such user");
    classify(f, false);
    report_t *r = build_and_read(f);
    assert_header(r->blocks[0], "Original-Envelope-Id", "batch?tail?x");
    assert_header(r->blocks[1], "Original-Recipient", "rfc822;a?b@example.test");
    report_free(r);
    fixture_free(f);
}

static void test_delay_and_relay_notices(void **state)
{
    (void)state;
    fixture_t *f = waited_two_hours(2);
    char params[] = "RET=FULL";
    f->job.mail_params = params;
    f->result.peer_dsn = false;
    snprintf(f->params[1], sizeof f->params[1], "NOTIFY=SUCCESS");
    answer(f, 0, 451, "451 4.2.0 try later");
    answer(f, 1, 250, "250 2.1.5 ok");
    classify(f, false);
    report_t *r = build_and_read(f);
    assert_header(r->message, "Subject", "Delayed Mail (still being retried)");
    const char *delayed = block_of(r, "r0@example.test");
    assert_header(delayed, "Action", "delayed");
    assert_header(delayed, "Status", "4.2.0");
    assert_true(has_header(delayed, "Will-Retry-Until"));
    assert_header(delayed, "Diagnostic-Code", "smtp; 451 4.2.0 try later");
    const char *relayed = block_of(r, "r1@example.test");
    assert_header(relayed, "Action", "relayed");
    assert_header(relayed, "Status", "2.1.5");
    assert_header(relayed, "Remote-MTA", "dns; mx1.example.test");
    assert_false(has_header(relayed, "Will-Retry-Until"));
    /* A notice without a failure carries the headers only, even for RET=FULL. */
    assert_header(r->parts[2], "Content-Type", "text/rfc822-headers");
    report_free(r);

    fixture_t *g = fixture_new(1);
    g->result.peer_dsn = false;
    snprintf(g->params[0], sizeof g->params[0], "NOTIFY=SUCCESS");
    answer(g, 0, 250, "250 2.1.5 ok");
    classify(g, false);
    r = build_and_read(g);
    assert_header(r->message, "Subject", "Successful Mail Relay Report");
    report_free(r);
    fixture_free(g);
    fixture_free(f);
}

static void test_local_decision_has_no_remote_mta(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(1);
    f->result.local = true;
    answer(f, 0, 554, "554 5.6.3 no 8BITMIME");
    classify(f, false);
    report_t *r = build_and_read(f);
    const char *b = block_of(r, "r0@example.test");
    assert_false(has_header(b, "Remote-MTA"));
    assert_header(b, "Diagnostic-Code", "x-sealpost; 554 5.6.3 no 8BITMIME");
    report_free(r);
    fixture_free(f);
}

/* outcome_notice writes nothing and says none is due. */
static void assert_no_notice(fixture_t *f)
{
    buf_t out;
    buf_init(&out);
    assert_int_equal(outcome_notice(f->cfg, &f->job, &f->result, &f->o, BOUNCE_ID, &out), 0);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

static void test_null_sender_is_never_bounced(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(2);
    char null_sender[] = "";
    f->job.sender = null_sender;
    answer(f, 0, 550, "550 5.1.1 no such user");
    answer(f, 1, 550, "550 5.1.1 no such user");
    classify(f, false);
    assert_int_equal(f->o.n_notified, 2); /* they failed, and would be reported... */
    assert_no_notice(f);                  /* ...but not to the null sender */
    fixture_free(f);
}

static void test_no_notice_when_nobody_is_reported(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(2);
    answer(f, 0, 250, "250 2.1.5 ok");
    snprintf(f->params[1], sizeof f->params[1], "NOTIFY=NEVER");
    answer(f, 1, 550, "550 5.1.1 no such user");
    classify(f, false);
    assert_no_notice(f);
    fixture_free(f);
}

/* ------------------------------------------------- MX answers on loopback */

/* An MX target in wire form (length-prefixed labels, a label may hold any
 * octet), given with its length. */
typedef struct wire_name {
    const char *octets;
    size_t len;
} wire_name_t;

/* the literal's own NUL is the root label */
#define WIRE(lit)                                                                                  \
    {                                                                                              \
        (lit), sizeof(lit)                                                                         \
    }

typedef struct fake_dns {
    uv_udp_t udp;
    const wire_name_t *targets; /* every MX query's answer */
    size_t n_targets;
} fake_dns_t;

typedef struct mx_outcome {
    bool done;
    dns_result_t result;
} mx_outcome_t;

static void put16(unsigned char *p, size_t *n, unsigned v)
{
    p[(*n)++] = (unsigned char)(v >> 8);
    p[(*n)++] = (unsigned char)v;
}

/* A record's name (a pointer to the question), type, class IN, TTL 60. */
static void put_rr_head(unsigned char *p, size_t *n, unsigned type)
{
    put16(p, n, 0xc00c);
    put16(p, n, type);
    put16(p, n, 1);
    put16(p, n, 0);
    put16(p, n, 60);
}

static void on_fake_sent(uv_udp_send_t *req, int status)
{
    (void)status;
    free(req);
}

/* MX queries get the targets, A queries 127.0.0.1, anything else no data. */
static void on_dns_query(uv_udp_t *udp, ssize_t nread, const uv_buf_t *buf,
                         const struct sockaddr *from, unsigned flags)
{
    fake_dns_t *f = udp->data;
    (void)flags;
    const unsigned char *q = (const unsigned char *)buf->base;
    size_t end = 12;
    while (nread > 12 && end < (size_t)nread && q[end])
        end += 1 + q[end];
    end += 5; /* the root label, type and class */
    if (nread <= 12 || !from || end > (size_t)nread) {
        free(buf->base);
        return;
    }
    unsigned type = (unsigned)(q[end - 4] << 8 | q[end - 3]);
    struct {
        uv_udp_send_t req;
        unsigned char out[1500];
    } *reply = calloc(1, sizeof *reply);
    assert_non_null(reply);
    unsigned char *p = reply->out;
    memcpy(p, q, end);
    p[2] = 0x81, p[3] = 0x80; /* a response, recursion available, no error */
    unsigned answers = type == 15 ? (unsigned)f->n_targets : type == 1 ? 1 : 0;
    p[6] = 0, p[7] = (unsigned char)answers;
    memset(p + 8, 0, 4); /* no authority, no additional (the query's EDNS record is not echoed) */
    size_t n = end;
    for (size_t i = 0; type == 15 && i < f->n_targets; i++) {
        put_rr_head(p, &n, 15);
        put16(p, &n, (unsigned)(2 + f->targets[i].len));
        put16(p, &n, 10);
        memcpy(p + n, f->targets[i].octets, f->targets[i].len);
        n += f->targets[i].len;
    }
    if (type == 1) {
        put_rr_head(p, &n, 1);
        put16(p, &n, 4);
        memcpy(p + n, "\x7f\x00\x00\x01", 4);
        n += 4;
    }
    free(buf->base);
    uv_buf_t out = uv_buf_init((char *)reply->out, (unsigned)n);
    if (uv_udp_send(&reply->req, udp, &out, 1, from, on_fake_sent) < 0) {
        free(reply);
        fail_msg("cannot answer a DNS query");
    }
}

static void on_dns_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(size);
    buf->len = buf->base ? size : 0;
}

static void on_mx_result(const dns_result_t *result, void *arg)
{
    mx_outcome_t *o = arg;
    o->result = *result;
    o->done = true;
}

/* Resolves example.test's MX through a server answering with targets. */
static mx_outcome_t resolve_with(const wire_name_t *targets, size_t n_targets)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    fake_dns_t f = {.targets = targets, .n_targets = n_targets};
    uv_udp_init(&loop, &f.udp);
    f.udp.data = &f;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_udp_bind(&f.udp, (const struct sockaddr *)&addr, 0), 0);
    int len = sizeof addr;
    uv_udp_getsockname(&f.udp, (struct sockaddr *)&addr, &len);
    assert_int_equal(uv_udp_recv_start(&f.udp, on_dns_alloc, on_dns_query), 0);
    char servers[64], err[200];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", ntohs(addr.sin_port));
    dns_t *dns = dns_new(&loop, servers, err, sizeof err);
    assert_non_null(dns);
    mx_outcome_t o = {0};
    dns_resolve_mx(dns, "example.test", 25, on_mx_result, &o);
    while (!o.done)
        uv_run(&loop, UV_RUN_ONCE);
    dns_free(dns);
    uv_close((uv_handle_t *)&f.udp, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return o;
}

/* c-ares writes the octets a host name cannot hold as escapes ("\000" for a
 * NUL): such a target is skipped, not looked up, logged or named as if it
 * were the name the DNS gave. */
static void test_mx_targets_that_are_not_host_names_are_skipped(void **state)
{
    (void)state;
    static const wire_name_t mixed[] = {
        WIRE("\x02mx\x07"
             "example\x04test"),
        WIRE("\x04mx\x00"
             "a\x07"
             "example\x04test"), /* a NUL inside a label */
        WIRE("\x03m x\x07"
             "example\x04test"),
        WIRE("\x03m.x\x07"
             "example\x04test"), /* a dot inside a label */
        WIRE("\x04m\xc3\xa9x\x07"
             "example\x04test"),
    };
    mx_outcome_t o = resolve_with(mixed, sizeof mixed / sizeof mixed[0]);
    if (o.result.status != DNS_OK) fail_msg("status %d: %s", o.result.status, o.result.detail);
    assert_int_equal(o.result.n_hops, 1);
    assert_string_equal(o.result.hops[0].name, "mx.example.test");
    assert_string_equal(o.result.hops[0].addr.host, "127.0.0.1");

    static const wire_name_t none_valid[] = {
        WIRE("\x04mx\x00"
             "a\x07"
             "example\x04test"),
        WIRE("\x03m\"x\x07"
             "example\x04test"),
    };
    o = resolve_with(none_valid, 2);
    assert_int_equal(o.result.status, DNS_TEMPFAIL); /* not a null MX: nothing to bounce on */
    assert_non_null(strstr(o.result.detail, "451 4.4.3"));
    assert_int_equal(o.result.n_hops, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_from_enhanced_code),
        cmocka_unit_test(test_status_without_usable_code),
        cmocka_unit_test(test_backoff_first_retry_is_the_floor),
        cmocka_unit_test(test_backoff_doubles_per_attempt),
        cmocka_unit_test(test_backoff_stops_at_the_cap),
        cmocka_unit_test(test_backoff_jitter_spreads_evenly),
        cmocka_unit_test(test_classify_by_reply_class),
        cmocka_unit_test(test_classify_without_a_result_defers_all),
        cmocka_unit_test(test_trace_fields_stay_on_one_line),
        cmocka_unit_test(test_expired_message_bounces_as_4_4_7),
        cmocka_unit_test(test_notify_never_and_success),
        cmocka_unit_test(test_no_relay_notice_from_a_dsn_peer),
        cmocka_unit_test(test_delay_warning_when_due),
        cmocka_unit_test(test_delay_warning_not_due),
        cmocka_unit_test(test_bounce_report_structure),
        cmocka_unit_test(test_bounce_with_ret_full_and_envid),
        cmocka_unit_test(test_bounce_decoded_nul_is_not_a_cut),
        cmocka_unit_test(test_delay_and_relay_notices),
        cmocka_unit_test(test_local_decision_has_no_remote_mta),
        cmocka_unit_test(test_null_sender_is_never_bounced),
        cmocka_unit_test(test_no_notice_when_nobody_is_reported),
        cmocka_unit_test(test_mx_targets_that_are_not_host_names_are_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
