/* The ingress's SMTP session driven from inside the process: a client on
 * one end of a socketpair, the session (ingress_open_fd) on the other, a real
 * redis-server behind the queue. Pipelined commands, every refusal the
 * dialogue gives in clear with its code and enhanced code (RFC 5321, RFC
 * 3463), and BDAT (RFC 3030). STARTTLS and AUTH are in test_ingress_auth.c.
 *
 * The end-to-end tests in tests/integration cover the same ground through
 * TCP and real clients; these go further in: one transcript per behaviour,
 * every refusal checked for leaving the session (and the transaction) as
 * it should, and what was stored read back from Redis and unsealed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/unit/ingress_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static client_t *open_ehlo(void)
{
    client_t *c = client_open(false);
    say(c, "EHLO client.test", "250", NULL, "ENHANCEDSTATUSCODES");
    return c;
}

static void open_transaction(client_t *c)
{
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<r@example.org>", "250", "2.1.5", "Ok");
}

static void start_default_server(void)
{
    config_t cfg;
    server_config(&cfg);
    server_start(&cfg);
}

/* "BDAT n[ LAST]\r\n" and the chunk, appended to out. */
static void bdat(buf_t *out, const char *chunk, bool last)
{
    buf_printf(out, "BDAT %zu%s\r\n%s", strlen(chunk), last ? " LAST" : "", chunk);
}

static void send_text(client_t *c, const char *text)
{
    client_send(c, text, strlen(text));
}

/* A message of exactly total octets, in lines of at most 1000. */
static const char *content_of_size(char *out, size_t total)
{
    size_t n = (size_t)snprintf(out, total + 1, "Subject: size\r\n\r\n");
    while (n < total) {
        size_t line = total - n - 2 < 998 ? total - n - 2 : 998;
        memset(out + n, 'x', line);
        memcpy(out + n + line, "\r\n", 2);
        n += line + 2;
    }
    out[n] = 0;
    return out;
}

/* The message as stored: its sender and sorted recipients must be these,
 * and its content (the Received: field aside) exactly content. */
static void check_stored(const char *mid, const char *sender, const char *rcpts,
                         const char *content)
{
    char got_sender[300];
    buf_t got_rcpts, got_content;
    buf_init(&got_rcpts);
    buf_init(&got_content);
    stored_message(mid, got_sender, sizeof got_sender, &got_rcpts, &got_content);
    buf_append(&got_rcpts, "", 1);
    buf_append(&got_content, "", 1);
    assert_string_equal(got_sender, sender);
    assert_string_equal(got_rcpts.data, rcpts);
    assert_string_equal(got_content.data, content);
    buf_free(&got_rcpts);
    buf_free(&got_content);
}

/* Sends a message with DATA, expects it queued, and checks it as stored:
 * from sender, to rcpts, and content exactly. */
static void send_and_check(client_t *c, const char *content, const char *sender, const char *rcpts)
{
    char mid[33];
    say(c, "DATA", "354", NULL, "End data with <CR><LF>.<CR><LF>");
    send_text(c, content);
    send_text(c, ".\r\n");
    queued_id(expect_reply(c, "250", "2.0.0", "Ok: queued as "), mid);
    check_stored(mid, sender, rcpts, content);
}

/* ---- 1. pipelining (RFC 2920) ---- */

/* A whole session in one write: each command gets its reply, in order and
 * exactly one, though the recipients' policies and the commit are answers
 * the session waits for in between; the refused recipient costs only its
 * own reply, and the message reaches Redis with the other three. */
static void test_pipelined_session_in_one_write(void **state)
{
    (void)state;
    char mid[33];
    start_default_server();
    client_t *c = client_open(false);
    send_text(c, "EHLO client.test\r\n"
                 "MAIL FROM:<a@origin.test>\r\n"
                 "RCPT TO:<r1@example.org>\r\n"
                 "RCPT TO:<x@elsewhere.test>\r\n"
                 "RCPT TO:<r2@example.org> NOTIFY=NEVER\r\n"
                 "RCPT TO:<r3@example.org>\r\n"
                 "DATA\r\n"
                 "Subject: pipelined\r\n\r\nhello\r\n..leading dot\r\n.\r\n"
                 "QUIT\r\nNOOP\r\n"); /* nothing after QUIT is answered */
    const char *ehlo = expect_reply(c, "250", NULL, "250-PIPELINING\r\n");
    assert_non_null(strstr(ehlo, "250-CHUNKING\r\n"));
    expect_reply(c, "250", "2.1.0", "Ok");
    expect_reply(c, "250", "2.1.5", "Ok");
    expect_reply(c, "554", "5.7.1", "<x@elsewhere.test>: Relay access denied");
    expect_reply(c, "250", "2.1.5", "Ok");
    expect_reply(c, "250", "2.1.5", "Ok");
    expect_reply(c, "354", NULL, "End data");
    queued_id(expect_reply(c, "250", "2.0.0", "Ok: queued as "), mid);
    expect_reply(c, "221", "2.0.0", "Bye");
    expect_closed(c);
    assert_int_equal(strlen(mid), 32);
    assert_int_equal(stored_messages(), 1);
    check_stored(mid, "a@origin.test", "r1@example.org\nr2@example.org\nr3@example.org\n",
                 "Subject: pipelined\r\n\r\nhello\r\n.leading dot\r\n");
}

/* A client that half-closes after its pipelined commands, where it
 * should have sent QUIT, still gets a reply to each, after the waits for
 * Redis; then the server closes. */
static void test_half_close_gets_every_reply(void **state)
{
    (void)state;
    char mid[33];
    start_default_server();
    client_t *c = open_ehlo();
    send_text(c, "MAIL FROM:<a@origin.test>\r\nRCPT TO:<r@example.org>\r\nDATA\r\n"
                 "Subject: half\r\n\r\nclosed\r\n.\r\n");
    client_half_close(c);
    expect_reply(c, "250", "2.1.0", "Ok");
    expect_reply(c, "250", "2.1.5", "Ok");
    expect_reply(c, "354", NULL, "End data");
    queued_id(expect_reply(c, "250", "2.0.0", "Ok: queued as "), mid);
    expect_closed(c);
    check_stored(mid, "a@origin.test", "r@example.org\n", "Subject: half\r\n\r\nclosed\r\n");
}

/* Stopping the ingress (SIGTERM) tells an idle session, mid-transaction,
 * 421 4.3.2 and closes it; nothing is stored. */
static void test_shutdown_tells_open_sessions(void **state)
{
    (void)state;
    start_default_server();
    client_t *c = open_ehlo();
    open_transaction(c);
    server_stop();
    expect_reply(c, "421", "4.3.2", TEST_HOSTNAME " Service shutting down");
    expect_closed(c);
    assert_int_equal(stored_messages(), 0);
}

/* A client that vanishes (its connection reset) while its session waits
 * for Redis, on a recipient's policy or a message's commit, leaves nothing
 * behind: the ingress still stops, so no session was left waiting, and
 * ASan sees nothing touched after it was freed. (The message whose commit
 * was under way may be stored unacknowledged: the client sends it again.)
 * A session opened meanwhile is served as usual. */
static void test_client_vanishing_while_awaited(void **state)
{
    (void)state;
    start_default_server();
    client_t *c = open_ehlo();
    client_send_and_reset(c, "MAIL FROM:<a@origin.test>\r\nRCPT TO:<r@example.org>\r\n");
    c = open_ehlo();
    open_transaction(c);
    client_send_and_reset(c, "DATA\r\nSubject: gone\r\n\r\nx\r\n.\r\n");
    c = open_ehlo();
    say(c, "NOOP", "250", "2.0.0", "Ok");
    server_stop();
    expect_reply(c, "421", "4.3.2", "Service shutting down");
}

/* ---- 2. refusals, each with its code, and what it leaves ---- */

/* 501: malformed commands and paths; none of them starts a transaction or
 * ends one, and the session takes the next good command. */
static void test_syntax_errors(void **state)
{
    (void)state;
    char long_sender[128], long_rcpt[128];
    /* RFC 5321 §4.5.3.1.1: a local part has at most 64 octets */
    snprintf(long_sender, sizeof long_sender, "MAIL FROM:<%065d@origin.test>", 0);
    snprintf(long_rcpt, sizeof long_rcpt, "RCPT TO:<%065d@example.org>", 0);
    const struct step transcript[] = {
        {"HELO", "501", "5.5.4", "Syntax: HELO hostname"},
        {"EHLO", "501", "5.5.4", "Syntax: EHLO hostname"},
        {"EHLO client.test", "250", NULL, TEST_HOSTNAME "\r\n"},
        {"MAIL FROM:bad", "501", "5.1.7", "Bad sender address syntax"},
        {"MAIL FROM:<a@origin.test", "501", "5.1.7", "Bad sender address syntax"},
        {long_sender, "501", "5.1.3", "Address too long"},
        {"MAIL TO:<a@origin.test>", "501", "5.5.2", "Syntax error"},
        {"MAIL FROM:<a@origin.test> =x", "501", "5.5.4", "Syntax error in parameters"},
        {"MAIL FROM:<a@origin.test> SIZE=abc", "501", "5.5.4", "Bad SIZE parameter"},
        {"MAIL FROM:<a@origin.test> BODY=9BIT", "501", "5.5.4", "BODY takes 7BIT or 8BITMIME"},
        {"MAIL FROM:<a@origin.test> BODY=7BIT body=8BITMIME", "501", "5.5.4",
         "Duplicate body parameter"},
        {"RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"}, /* none started */
        {"MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok"},
        {"RCPT TO:<bad>", "501", "5.1.3", "Bad recipient address syntax"},
        {"RCPT TO:<>", "501", "5.1.3", "Bad recipient address syntax"},
        {long_rcpt, "501", "5.1.3", "Address too long"},
        {"RCPT TO:<r@example.org> NOTIFY=SOMETIMES", "501", "5.5.4", "NOTIFY takes NEVER"},
        {"RCPT TO:<r@example.org> NOTIFY=NEVER NOTIFY=NEVER", "501", "5.5.4",
         "Duplicate NOTIFY parameter"},
        {"RSET now", "501", "5.5.4", "Syntax: RSET takes no arguments"},
        {"DATA now", "501", "5.5.4", "Syntax: DATA takes no arguments"},
        {"STARTTLS now", "501", "5.5.4", "Syntax: STARTTLS takes no arguments"},
        {"QUIT now", "501", "5.5.4", "Syntax: QUIT takes no arguments"},
        /* The transaction is the one MAIL began: RSET with an argument did not end it. */
        {"RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"},
    };
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_errors = 100; /* this transcript has more than the default 20 */
    server_start(&cfg);
    client_t *c = client_open(false);
    run_steps(c, transcript);
    send_and_check(c, "Subject: after the errors\r\n\r\nstill here\r\n", "a@origin.test",
                   "r@example.org\n");
}

/* 503 and 554 5.5.1: commands out of order. EHLO and RSET end a
 * transaction; a nested MAIL does not replace the first. */
static void test_sequence_errors(void **state)
{
    (void)state;
    static const struct step transcript[] = {
        {"MAIL FROM:<a@origin.test>", "503", "5.5.1", "send HELO/EHLO first"},
        {"RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"},
        {"DATA", "503", "5.5.1", "need MAIL command"},
        {"EHLO client.test", "250", NULL, "PIPELINING"},
        {"RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"},
        {"MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok"},
        {"DATA", "554", "5.5.1", "no valid recipients"},
        {"MAIL FROM:<b@origin.test>", "503", "5.5.1", "nested MAIL command"},
        {"RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"},
        {"RSET", "250", "2.0.0", "Ok"},
        {"RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"},
        {"MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok"},
        {"RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"},
        {"EHLO again.test", "250", NULL, "PIPELINING"}, /* RFC 5321 §4.1.4: a reset */
        {"RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"},
        {"MAIL FROM:<c@origin.test>", "250", "2.1.0", "Ok"},
        {"MAIL FROM:<d@origin.test>", "503", "5.5.1", "nested MAIL command"},
        {"RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"},
    };
    start_default_server();
    client_t *c = client_open(false);
    run_steps(c, transcript);
    send_and_check(c, "Subject: in order\r\n\r\nx\r\n", "c@origin.test", "r@example.org\n");
}

/* 555 5.5.4 for parameters a HELO session may not use or nobody offers,
 * 552 5.3.4 for a declared SIZE over the limit (and not at it). */
static void test_parameter_refusals(void **state)
{
    (void)state;
    static const struct step transcript[] = {
        {"HELO client.test", "250", NULL, TEST_HOSTNAME},
        {"MAIL FROM:<a@origin.test> SIZE=10", "555", "5.5.4", "Parameters need EHLO"},
        {"MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok"},
        {"RCPT TO:<r@example.org> NOTIFY=NEVER", "555", "5.5.4", "Parameters need EHLO"},
        {"RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"},
        {"EHLO client.test", "250", NULL, "250-SIZE 5000\r\n"},
        {"MAIL FROM:<a@origin.test> FOO=1", "555", "5.5.4", "Unsupported parameter FOO"},
        /* AUTH= is taken only under TLS (RFC 4954 §5), so here nobody offers it. */
        {"MAIL FROM:<a@origin.test> AUTH=<>", "555", "5.5.4", "Unsupported parameter AUTH"},
        {"MAIL FROM:<a@origin.test> SIZE=5001", "552", "5.3.4", "Message size exceeds fixed limit"},
        {"MAIL FROM:<a@origin.test> SIZE=5000", "250", "2.1.0", "Ok"},
        {"RCPT TO:<r@example.org> BAR", "555", "5.5.4", "Unsupported parameter BAR"},
        {"RCPT TO:<r@example.org> NOTIFY=NEVER", "250", "2.1.5", "Ok"},
    };
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_message_size = 5000;
    server_start(&cfg);
    client_t *c = client_open(false);
    run_steps(c, transcript);
}

/* 553 5.6.7 for a UTF-8 address outside an SMTPUTF8 transaction, 554
 * 5.7.1 for a domain not relayed; <Postmaster> goes to the first relay
 * domain's postmaster. Each refused recipient leaves the others. */
static void test_address_refusals(void **state)
{
    (void)state;
    static const struct step transcript[] = {
        {"MAIL FROM:<j\xc3\xb6rg@origin.test>", "553", "5.6.7",
         "Non-ASCII address requires SMTPUTF8"},
        {"MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok"},
        {"RCPT TO:<j\xc3\xb6rg@example.org>", "553", "5.6.7",
         "Non-ASCII address requires SMTPUTF8"},
        {"RCPT TO:<x@elsewhere.test>", "554", "5.7.1", "<x@elsewhere.test>: Relay access denied"},
        {"RCPT TO:<Postmaster>", "250", "2.1.5", "Ok"},
        {"RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"},
    };
    start_default_server();
    client_t *c = open_ehlo();
    run_steps(c, transcript);
    send_and_check(c, "Subject: a\r\n\r\nx\r\n", "a@origin.test",
                   "postmaster@example.org\nr@example.org\n");
    say(c, "MAIL FROM:<j\xc3\xb6rg@origin.test> SMTPUTF8", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<j\xc3\xb6rg@example.org>", "250", "2.1.5", "Ok");
}

/* 550 5.1.1 for <Postmaster> with no postmaster anywhere (no relay domain,
 * none configured): RFC 5321 §4.5.1 wants it accepted where there is one. */
static void test_postmaster_without_a_postmaster(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.n_relay_domains = 0;
    server_start(&cfg);
    client_t *c = open_ehlo();
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<Postmaster>", "550", "5.1.1",
        "<Postmaster>: no postmaster address is configured here");
    say(c, "RCPT TO:<r@example.org>", "554", "5.7.1", "<r@example.org>: Relay access denied");
    say(c, "DATA", "554", "5.5.1", "no valid recipients");
}

/* 452 4.5.3 past max_recipients (RFC 5321 §4.5.3.1.10: a temporary
 * refusal, so the client sends to the rest later); those accepted stay,
 * and a duplicate recipient counts once. */
static void test_too_many_recipients(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_recipients = 2;
    server_start(&cfg);
    client_t *c = open_ehlo();
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<r1@example.org>", "250", "2.1.5", "Ok");
    say(c, "RCPT TO:<r1@example.org>", "250", "2.1.5", "Ok"); /* a duplicate, taken once */
    say(c, "RCPT TO:<r2@example.org>", "250", "2.1.5", "Ok");
    say(c, "RCPT TO:<r3@example.org>", "452", "4.5.3", "too many recipients");
    say(c, "RCPT TO:<r4@example.org>", "452", "4.5.3", "too many recipients");
    send_and_check(c, "Subject: two\r\n\r\nx\r\n", "a@origin.test",
                   "r1@example.org\nr2@example.org\n");
}

/* 500 5.5.2 for what is no command: an unknown verb, a line over
 * max_line_length (one reply however it arrives), a bare LF; 501 5.5.2
 * for a NUL. A line of exactly the limit is a command. */
static void test_lines_that_are_no_command(void **state)
{
    (void)state;
    char line[1200];
    start_default_server();
    client_t *c = open_ehlo();
    say(c, "FROBNICATE now", "500", "5.5.2", "command not recognized");
    snprintf(line, sizeof line, "NOOP %01100d", 0);
    say(c, line, "500", "5.5.2", "line too long");
    expect_silence(c, 200);
    /* The same without its line end: the reply comes once, however much
     * more of the line follows, and the line is dropped to its end. */
    client_send(c, line, strlen(line));
    expect_reply(c, "500", "5.5.2", "line too long");
    client_send(c, line, strlen(line));
    expect_silence(c, 100);
    send_text(c, "xxxx\r\n");
    expect_silence(c, 200);
    snprintf(line, sizeof line, "NOOP %0993d", 0); /* 1000 octets with the CRLF */
    say(c, line, "250", "2.0.0", "Ok");
    send_text(c, "NOOP\n");
    expect_reply(c, "500", "5.5.2", "bare <LF> received");
    client_send(c, "NO\0OP\r\n", 7);
    expect_reply(c, "501", "5.5.2", "Syntax error");
    say(c, "NOOP", "250", "2.0.0", "Ok");
}

/* 502 5.5.1 for what is not offered, STARTTLS too without a certificate;
 * the informational commands and QUIT, which closes. */
static void test_commands_not_offered(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.tls_cert[0] = cfg.ingress.tls_key[0] = 0;
    server_start(&cfg);
    client_t *c = client_open(false);
    const char *ehlo = say(c, "EHLO client.test", "250", NULL, "CHUNKING");
    assert_null(strstr(ehlo, "STARTTLS"));
    say(c, "EXPN staff", "502", "5.5.1", "EXPN is not offered here");
    say(c, "TURN", "502", "5.5.1", "TURN is not offered here");
    say(c, "STARTTLS", "502", "5.5.1", "STARTTLS is not offered here");
    say(c, "VRFY someone@example.org", "252", "2.0.0", "Cannot VRFY user");
    say(c, "HELP", "214", "2.0.0", "Commands:");
    say(c, "NOOP", "250", "2.0.0", "Ok");
    say(c, "QUIT", "221", "2.0.0", "Bye");
    expect_closed(c);
}

/* Content that breaks the line rules (550 5.6.0: a bare LF or CR, which is
 * how SMTP smuggling starts, or a line over 1000 octets) or the size (552
 * 5.3.4, one octet past max_message_size) is read to its end, refused once,
 * and ends the transaction only; a message of exactly the size is taken. */
static void test_refused_content(void **state)
{
    (void)state;
    char long_line[1100], big[2100], exact[2100];
    snprintf(long_line, sizeof long_line, "Subject: long\r\n\r\n%01000d\r\n", 0);
    content_of_size(big, 2049);
    const struct {
        const char *content, *code, *enhanced, *text;
    } bad[] = {
        {"Subject: lf\r\n\r\nline one\nline two\r\n", "550", "5.6.0", "bare <CR> or <LF>"},
        {"Subject: cr\r\n\r\nx\r.\rMAIL FROM:<evil@origin.test>\r\n", "550", "5.6.0",
         "bare <CR> or <LF>"},
        {long_line, "550", "5.6.0", "line longer than 1000 octets"},
        {big, "552", "5.3.4", "Message size exceeds fixed limit"},
    };
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_message_size = 2048;
    server_start(&cfg);
    client_t *c = open_ehlo();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        open_transaction(c);
        say(c, "DATA", "354", NULL, "End data");
        send_text(c, bad[i].content);
        send_text(c, ".\r\n");
        expect_reply(c, bad[i].code, bad[i].enhanced, bad[i].text);
        expect_silence(c, 100);
        say(c, "RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command");
    }
    assert_int_equal(stored_messages(), 0);
    open_transaction(c);
    send_and_check(c, content_of_size(exact, 2048), "a@origin.test", "r@example.org\n");
}

/* 421 4.7.0 once max_errors replies were errors, unasked, and the
 * connection closes; good commands in between do not count. */
static void test_too_many_errors(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_errors = 3;
    server_start(&cfg);
    client_t *c = open_ehlo();
    say(c, "FROBNICATE", "500", "5.5.2", "command not recognized");
    say(c, "MAIL FROM:bad", "501", "5.1.7", "Bad sender address syntax");
    say(c, "NOOP", "250", "2.0.0", "Ok");
    say(c, "FROBNICATE", "500", "5.5.2", "command not recognized");
    expect_reply(c, "421", "4.7.0", TEST_HOSTNAME " Error: too many errors");
    expect_closed(c);
}

/* A client that holds its slot with cheap commands, each inside the
 * deadline: past junk_command_limit each NOOP, RSET, VRFY or HELP is an
 * error, so max_errors ends it; real commands reset nothing but count not. */
static void test_junk_commands_count_past_their_limit(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.junk_command_limit = 3;
    cfg.ingress.max_errors = 2;
    server_start(&cfg);
    client_t *c = open_ehlo();
    say(c, "NOOP", "250", "2.0.0", "Ok");
    say(c, "RSET", "250", "2.0.0", "Ok");
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    say(c, "VRFY x", "252", "2.0.0",
        "Cannot VRFY user, but will accept message and attempt delivery");
    say(c, "NOOP", "250", "2.0.0", "Ok"); /* the fourth: one error */
    say(c, "NOOP", "250", "2.0.0", "Ok"); /* the fifth: two */
    expect_reply(c, "421", "4.7.0", TEST_HOSTNAME " Error: too many errors");
    expect_closed(c);
}

/* 421 4.7.0 for an HTTP request (a browser made to POST to port 25) and a
 * TLS ClientHello on the plain port, at once, and nothing after is read. */
static void test_non_smtp_clients(void **state)
{
    (void)state;
    start_default_server();
    client_t *c = client_open(false);
    send_text(c, "GET / HTTP/1.1\r\nHost: mx.test\r\nQUIT\r\n\r\n");
    expect_reply(c, "421", "4.7.0",
                 TEST_HOSTNAME " Error: not an SMTP command; closing connection");
    expect_closed(c);
    client_close(c);
    c = client_open(false);
    client_send(c, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11); /* no line end */
    expect_reply(c, "421", "4.7.0", "not an SMTP command");
    expect_closed(c);
    client_close(c);
    /* A ClientHello's random and key share hold LF and CRLF octets: still
     * one 421, not a 500 per "line" first. */
    c = client_open(false);
    client_send(c, "\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03\n\x8a\r\n\x0a\x00\r\n", 19);
    expect_reply(c, "421", "4.7.0", "not an SMTP command");
    expect_closed(c);
    client_close(c);
    /* An HTTP request with bare LFs, as a hand-typed one may have. */
    c = client_open(false);
    send_text(c, "GET / HTTP/1.0\n\n");
    expect_reply(c, "421", "4.7.0", "not an SMTP command");
    expect_closed(c);
}

/* 421 4.7.0 at the greeting past max_connections_per_ip (all these
 * sessions come from the same unknown peer), then past max_connections. */
static void test_connection_limits(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_connections_per_ip = 1;
    server_start(&cfg);
    client_open(false);
    client_t *c = client_connect(false);
    expect_reply(c, "421", "4.7.0", TEST_HOSTNAME " Error: too many connections from your address");
    expect_closed(c);
    server_stop();
    cfg.ingress.max_connections_per_ip = 10;
    cfg.ingress.max_connections = 1;
    server_start(&cfg);
    client_open(false);
    c = client_connect(false);
    expect_reply(c, "421", "4.7.0", TEST_HOSTNAME " Error: too many connections");
    expect_closed(c);
}

/* 421 4.4.2 for a client silent past command_timeout, and past
 * data_timeout in the middle of its message; nothing is stored. */
static void test_timeouts(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.command_timeout = 1;
    cfg.ingress.data_timeout = 1;
    server_start(&cfg);
    client_t *c = open_ehlo();
    expect_reply(c, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded");
    expect_closed(c);
    c = open_ehlo();
    open_transaction(c);
    say(c, "DATA", "354", NULL, "End data");
    send_text(c, "Subject: slow\r\n\r\nand then noth");
    expect_reply(c, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded");
    expect_closed(c);
    assert_int_equal(stored_messages(), 0);
}

/* A command line must be complete within command_timeout of the reply
 * before it, however it trickles in (an octet every 700 ms earns nothing),
 * while a client that answers each reply promptly is never cut, however
 * long its session lasts. */
static void test_command_deadline(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.command_timeout = 3; /* margins of seconds: the machine may be loaded */
    server_start(&cfg);
    client_t *c = open_ehlo();
    for (int i = 0; i < 4; i++) { /* 4 s in all, each line well within its 3 s */
        expect_silence(c, 1000);
        say(c, "NOOP", "250", "2.0.0", "Ok");
    }
    size_t sent = client_trickle(c, "NOOP\r\n", 700);
    assert_true(sent < 6); /* the line never came whole (4.2 s) */
    expect_reply(c, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded");
    expect_closed(c);
}

/* Content must keep up min_data_rate, with data_timeout in hand at most:
 * 1000-octet lines every 600 ms (1667 octets/s) go on past data_timeout
 * and are stored; a trickle of an octet every 300 ms is cut; and 20,000
 * octets at once (20 s at the rate) buy no more than data_timeout of
 * silence after them. */
static void test_content_deadline(void **state)
{
    (void)state;
    char line[1001];
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.data_timeout = 3; /* margins of seconds: the machine may be loaded */
    cfg.ingress.min_data_rate = 1000;
    server_start(&cfg);
    client_t *c = open_ehlo();
    open_transaction(c);
    say(c, "DATA", "354", NULL, "End data");
    send_text(c, "Subject: steady\r\n\r\n");
    memset(line, 'x', 998);
    memcpy(line + 998, "\r\n", 3);
    for (int i = 0; i < 8; i++) { /* 4.8 s, each gap 2.4 s inside what is in hand */
        expect_silence(c, 600);
        send_text(c, line);
    }
    send_text(c, ".\r\n");
    expect_reply(c, "250", "2.0.0", "Ok: queued as ");
    open_transaction(c);
    say(c, "DATA", "354", NULL, "End data");
    assert_true(client_trickle(c, "Subject: slow\r\n\r\nand on and on\r\n.\r\n", 300) < 30);
    expect_reply(c, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded");
    expect_closed(c);
    client_close(c);
    c = open_ehlo();
    open_transaction(c);
    say(c, "DATA", "354", NULL, "End data");
    for (int i = 0; i < 20; i++)
        send_text(c, line);
    expect_reply(c, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded"); /* within 10 s */
    expect_closed(c);
    assert_int_equal(stored_messages(), 1);
}

/* Past stress_threshold of max_connections the shorter limits hold, for
 * the sessions already open too: an idle one is cut after
 * stress_command_timeout (not its 30 s), one error closes a session. Once
 * the count is down, an error is an error again. */
static void test_stress(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_connections = 6; /* stress from 3 open, ending at 2 */
    cfg.ingress.stress_threshold = 50;
    cfg.ingress.command_timeout = 30;
    cfg.ingress.stress_command_timeout = 1;
    cfg.ingress.stress_max_errors = 1;
    server_start(&cfg);
    client_t *idle = open_ehlo();
    say(idle, "FROBNICATE", "500", "5.5.2", "command not recognized"); /* one error: no stress */
    say(idle, "NOOP", "250", "2.0.0", "Ok");
    client_t *second = open_ehlo();
    client_t *erring = open_ehlo(); /* 3 of 6: stress */
    say(erring, "FROBNICATE", "500", "5.5.2", "command not recognized");
    expect_reply(erring, "421", "4.7.0", TEST_HOSTNAME " Error: too many errors");
    expect_closed(erring);
    client_close(erring);
    expect_reply(idle, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded"); /* within 10 s */
    expect_closed(idle);
    client_close(idle);
    expect_reply(second, "421", "4.4.2", TEST_HOSTNAME " Error: timeout exceeded");
    expect_closed(second);
    client_close(second);
    /* c is one of at most two (were second not freed yet): no stress */
    client_t *c = open_ehlo();
    say(c, "FROBNICATE", "500", "5.5.2", "command not recognized");
    say(c, "NOOP", "250", "2.0.0", "Ok");
}

/* max_connection_rate: a minute's worth at once, then 421 4.7.0 before
 * any greeting. */
static void test_connection_rate(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_connection_rate = 2;
    server_start(&cfg);
    client_close(client_open(false));
    client_close(client_open(false));
    client_t *c = client_connect(false);
    expect_reply(c, "421", "4.7.0",
                 TEST_HOSTNAME " Error: too many connections from your address lately");
    expect_closed(c);
}

/* 550 5.7.1 for a recipient whose domain requires encryption and who has
 * no key; an address's own policy overrides its domain's. */
static void test_recipient_requires_encryption(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    snprintf(cfg.ingress.relay_domains[1], sizeof cfg.ingress.relay_domains[1], "locked.test");
    cfg.ingress.n_relay_domains = 2;
    server_start(&cfg);
    server_set_policy("locked.test", "required");
    server_set_policy("carol@locked.test", "never");
    client_t *c = open_ehlo();
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<bob@locked.test>", "550", "5.7.1",
        "<bob@locked.test>: Recipient requires encryption and no usable key is known");
    say(c, "RCPT TO:<carol@locked.test>", "250", "2.1.5", "Ok");
    say(c, "RCPT TO:<r@example.org>", "250", "2.1.5", "Ok");
    send_and_check(c, "Subject: e\r\n\r\nx\r\n", "a@origin.test",
                   "carol@locked.test\nr@example.org\n");
}

/* ---- 3. BDAT (RFC 3030) ---- */

/* Chunks pipelined with the envelope: one "250 ... octets so far" per
 * chunk, and LAST's reply is the message's. The octets are stored as they
 * came: a CRLF split between chunks, a "." line and leading dots are
 * content, not DATA's syntax. */
static void test_bdat_chunks(void **state)
{
    (void)state;
    static const char *const chunks[] = {"Subject: chunks\r\n\r\nfirst\r", "\n.\r\n..two dots\r\n",
                                         "last\r\n"};
    char mid[33], so_far[64];
    buf_t out;
    buf_init(&out);
    start_default_server();
    client_t *c = open_ehlo();
    buf_printf(&out, "MAIL FROM:<a@origin.test>\r\nRCPT TO:<r@example.org>\r\n");
    for (int i = 0; i < 3; i++)
        bdat(&out, chunks[i], i == 2);
    client_send(c, out.data, out.len);
    buf_free(&out);
    expect_reply(c, "250", "2.1.0", "Ok");
    expect_reply(c, "250", "2.1.5", "Ok");
    snprintf(so_far, sizeof so_far, "Ok: %zu octets so far", strlen(chunks[0]));
    expect_reply(c, "250", "2.0.0", so_far);
    snprintf(so_far, sizeof so_far, "Ok: %zu octets so far", strlen(chunks[0]) + strlen(chunks[1]));
    expect_reply(c, "250", "2.0.0", so_far);
    queued_id(expect_reply(c, "250", "2.0.0", "Ok: queued as "), mid);
    check_stored(mid, "a@origin.test", "r@example.org\n",
                 "Subject: chunks\r\n\r\nfirst\r\n.\r\n..two dots\r\nlast\r\n");
}

/* The chunks of a transaction keep min_data_rate together: a client
 * sending an octet per BDAT, each BDAT line well within command_timeout,
 * is cut data_timeout after its first chunk, not left to hold its slot. */
static void test_bdat_trickle_is_cut(void **state)
{
    (void)state;
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.command_timeout = 30; /* only the chunks' rate can cut it within 10 s */
    cfg.ingress.data_timeout = 4;
    cfg.ingress.min_data_rate = 1000;
    server_start(&cfg);
    client_t *c = open_ehlo();
    open_transaction(c);
    client_send(c, "BDAT 1\r\nx", 9);
    expect_reply(c, "250", "2.0.0", "Ok: 1 octets so far");
    expect_silence(c, 2000);
    client_send(c, "BDAT 1\r\nx", 9);
    expect_reply(c, "250", "2.0.0", "Ok: 2 octets so far");
    expect_reply(c, "421", "4.4.2",
                 TEST_HOSTNAME " Error: timeout exceeded"); /* 4 s after the first */
    expect_closed(c);
    assert_int_equal(stored_messages(), 0);
}

/* BDAT 0 LAST ends a message whose octets all came before. */
static void test_bdat_zero_last(void **state)
{
    (void)state;
    char mid[33];
    buf_t out;
    buf_init(&out);
    start_default_server();
    client_t *c = open_ehlo();
    open_transaction(c);
    bdat(&out, "Subject: zero\r\n\r\nbody\r\n", false);
    client_send(c, out.data, out.len);
    buf_free(&out);
    expect_reply(c, "250", "2.0.0", "Ok: 23 octets so far");
    queued_id(say(c, "BDAT 0 LAST", "250", "2.0.0", "Ok: queued as "), mid);
    check_stored(mid, "a@origin.test", "r@example.org\n", "Subject: zero\r\n\r\nbody\r\n");
}

/* A refused BDAT's octets follow it all the same: they are read and
 * dropped, never taken as commands, whatever the reason for the refusal
 * (no MAIL, no recipient, a HELO session). */
static void test_refused_bdat_consumes_its_octets(void **state)
{
    (void)state;
    const char *smuggled = "RSET\r\nMAIL FROM:<evil@origin.test>\r\n";
    buf_t out;
    buf_init(&out);
    start_default_server();
    client_t *c = open_ehlo();
    bdat(&out, smuggled, true);
    client_send(c, out.data, out.len);
    expect_reply(c, "503", "5.5.1", "need MAIL command");
    say(c, "HELP", "214", "2.0.0", "Commands:"); /* the next reply is HELP's, not RSET's */
    say(c, "RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"); /* no MAIL ran */
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    client_send(c, out.data, out.len);
    expect_reply(c, "554", "5.5.1", "no valid recipients");
    say(c, "HELP", "214", "2.0.0", "Commands:");
    say(c, "HELO client.test", "250", NULL, TEST_HOSTNAME);
    open_transaction(c);
    client_send(c, out.data, out.len);
    expect_reply(c, "503", "5.5.1", "BDAT needs EHLO");
    say(c, "HELP", "214", "2.0.0", "Commands:");
    buf_free(&out);
    assert_int_equal(stored_messages(), 0);
}

/* A chunk that breaks the line rules ends the transaction at once: the
 * BDAT pipelined after it finds none. */
static void test_bdat_after_a_content_error(void **state)
{
    (void)state;
    buf_t out;
    buf_init(&out);
    start_default_server();
    client_t *c = open_ehlo();
    open_transaction(c);
    bdat(&out, "Subject: bad\r\n\r\na\nb\r\n", false);
    bdat(&out, "the rest\r\n", true);
    client_send(c, out.data, out.len);
    buf_free(&out);
    expect_reply(c, "550", "5.6.0", "bare <CR> or <LF>");
    expect_reply(c, "503", "5.5.1", "need MAIL command");
    say(c, "HELP", "214", "2.0.0", "Commands:");
    assert_int_equal(stored_messages(), 0);
}

/* DATA in a BDAT transaction is refused and leaves it as it was: the
 * next chunk completes the message. */
static void test_data_after_bdat(void **state)
{
    (void)state;
    char mid[33];
    buf_t out;
    buf_init(&out);
    start_default_server();
    client_t *c = open_ehlo();
    open_transaction(c);
    bdat(&out, "Subject: mixed\r\n\r\n", false);
    client_send(c, out.data, out.len);
    expect_reply(c, "250", "2.0.0", "octets so far");
    say(c, "DATA", "503", "5.5.1", "DATA after BDAT");
    buf_reset(&out);
    bdat(&out, "x\r\n", true);
    client_send(c, out.data, out.len);
    buf_free(&out);
    queued_id(expect_reply(c, "250", "2.0.0", "Ok: queued as "), mid);
    check_stored(mid, "a@origin.test", "r@example.org\n", "Subject: mixed\r\n\r\nx\r\n");
}

/* A chunk that would pass max_message_size (one octet past it, after
 * chunks up to it exactly), and a chunk size that cannot be read, close
 * the connection: reading octets only to drop them helps nobody. */
static void test_bdat_that_closes(void **state)
{
    (void)state;
    char chunk[3100];
    buf_t out;
    buf_init(&out);
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.max_message_size = 4096;
    server_start(&cfg);
    client_t *c = open_ehlo();
    open_transaction(c);
    snprintf(chunk, sizeof chunk, "%0998d\r\n%0998d\r\n%0998d\r\n", 0, 0, 0);
    bdat(&out, chunk, false);
    client_send(c, out.data, out.len);
    expect_reply(c, "250", "2.0.0", "Ok: 3000 octets so far");
    buf_reset(&out);
    snprintf(chunk, sizeof chunk, "%0998d\r\n%094d\r\n", 0, 0); /* up to the limit exactly */
    bdat(&out, chunk, false);
    client_send(c, out.data, out.len);
    buf_free(&out);
    expect_reply(c, "250", "2.0.0", "Ok: 4096 octets so far");
    say(c, "BDAT 1 LAST", "552", "5.3.4", "Message size exceeds fixed limit; closing connection");
    expect_closed(c);
    client_close(c);
    c = open_ehlo();
    open_transaction(c);
    say(c, "BDAT 12x LAST", "501", "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing connection");
    expect_closed(c);
    assert_int_equal(stored_messages(), 0);
}

int main(void)
{
#define TEST(f) cmocka_unit_test_teardown(f, harness_test_teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_pipelined_session_in_one_write),
        TEST(test_half_close_gets_every_reply),
        TEST(test_shutdown_tells_open_sessions),
        TEST(test_client_vanishing_while_awaited),
        TEST(test_syntax_errors),
        TEST(test_sequence_errors),
        TEST(test_parameter_refusals),
        TEST(test_address_refusals),
        TEST(test_postmaster_without_a_postmaster),
        TEST(test_too_many_recipients),
        TEST(test_lines_that_are_no_command),
        TEST(test_commands_not_offered),
        TEST(test_refused_content),
        TEST(test_too_many_errors),
        TEST(test_junk_commands_count_past_their_limit),
        TEST(test_non_smtp_clients),
        TEST(test_connection_limits),
        TEST(test_timeouts),
        TEST(test_command_deadline),
        TEST(test_content_deadline),
        TEST(test_stress),
        TEST(test_connection_rate),
        TEST(test_recipient_requires_encryption),
        TEST(test_bdat_chunks),
        TEST(test_bdat_trickle_is_cut),
        TEST(test_bdat_zero_last),
        TEST(test_refused_bdat_consumes_its_octets),
        TEST(test_bdat_after_a_content_error),
        TEST(test_data_after_bdat),
        TEST(test_bdat_that_closes),
    };
    return cmocka_run_group_tests(tests, harness_setup, harness_teardown);
}
