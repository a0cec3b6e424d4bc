/* STARTTLS (RFC 3207) and AUTH (RFC 4954) in the ingress's session,
 * driven over a socketpair: the test's client is a stream on the same loop
 * and does the TLS handshake itself, so the whole exchange runs in process.
 * Logins are checked against a user stored with the admin API, in the
 * real redis-server the harness starts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/unit/ingress_harness.h"

#include <stdio.h>
#include <string.h>

/* ---- helpers ---- */

static void start_default_server(void)
{
    config_t cfg;
    server_config(&cfg);
    server_start(&cfg);
}

/* A session under TLS, after its second EHLO (which offers AUTH). */
static client_t *open_tls(bool submission)
{
    client_t *c = client_open(submission);
    say(c, "EHLO client.test", "250", NULL, "250-STARTTLS\r\n");
    say(c, "STARTTLS", "220", "2.0.0", "Ready to start TLS");
    client_starttls(c);
    say(c, "EHLO client.test", "250", NULL, "250-AUTH PLAIN LOGIN\r\n");
    return c;
}

/* "AUTH PLAIN <base64 of authzid NUL user NUL password>" (RFC 4616). */
static const char *auth_plain(const char *authzid, const char *user, const char *password,
                              char *out, size_t len)
{
    char raw[300], b64[420];
    int n = snprintf(raw, sizeof raw, "%s%c%s%c%s", authzid, 0, user, 0, password);
    snprintf(out, len, "AUTH PLAIN %s", base64_of(raw, (size_t)n, b64, sizeof b64));
    return out;
}

static const char *good_plain(char *out, size_t len)
{
    return auth_plain("", TEST_USER, TEST_PASSWORD, out, len);
}

static const char *b64(const char *text, char *out, size_t len)
{
    return base64_of(text, strlen(text), out, len);
}

/* A good AUTH PLAIN and a MAIL pipelined behind it, in one write. */
static void send_login_and_mail(client_t *c)
{
    char line[400], both[500];
    snprintf(both, sizeof both, "%s\r\nMAIL FROM:<%s>\r\n", good_plain(line, sizeof line),
             TEST_USER);
    client_send(c, both, strlen(both));
}

/* ---- 4. STARTTLS ---- */

/* After the handshake the session starts over (RFC 3207 §4.2): the MAIL
 * given before is gone, EHLO must come again, and it offers AUTH now and
 * STARTTLS no more. */
static void test_starttls_resets_the_session(void **state)
{
    (void)state;
    char mid[33];
    start_default_server();
    client_t *c = client_open(false);
    const char *ehlo = say(c, "EHLO client.test", "250", NULL, "250-STARTTLS\r\n");
    assert_null(strstr(ehlo, "AUTH")); /* a password never travels in clear */
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok");
    say(c, "STARTTLS", "220", "2.0.0", "Ready to start TLS");
    client_starttls(c);
    say(c, "RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command"); /* MAIL is gone */
    say(c, "MAIL FROM:<a@origin.test>", "503", "5.5.1", "send HELO/EHLO first");
    ehlo = say(c, "EHLO client.test", "250", NULL, "250-AUTH PLAIN LOGIN\r\n");
    assert_null(strstr(ehlo, "STARTTLS"));
    say(c, "RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command");
    say(c, "STARTTLS", "503", "5.5.1", "TLS is already active");
    say(c, "MAIL FROM:<b@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<r@example.org>", "250", "2.1.5", "Ok");
    say(c, "DATA", "354", NULL, "End data");
    const char *msg = "Subject: over tls\r\n\r\nsecret\r\n.\r\n";
    client_send(c, msg, strlen(msg));
    queued_id(expect_reply(c, "250", "2.0.0", "Ok: queued as "), mid);
    char sender[300];
    buf_t rcpts, content;
    buf_init(&rcpts);
    buf_init(&content);
    stored_message(mid, sender, sizeof sender, &rcpts, &content);
    assert_string_equal(sender, "b@origin.test");
    buf_free(&rcpts);
    buf_free(&content);
}

/* The CVE-2011-0411 case: commands sent in the same write as STARTTLS came
 * in clear, so anyone on the path could have put them there; they are
 * dropped, and neither before nor after the handshake does one get a reply. */
static void test_starttls_drops_what_came_with_it(void **state)
{
    (void)state;
    start_default_server();
    client_t *c = client_open(false);
    say(c, "EHLO client.test", "250", NULL, "250-STARTTLS\r\n");
    const char *injected = "STARTTLS\r\nRSET\r\nMAIL FROM:<evil@origin.test>\r\n";
    client_send(c, injected, strlen(injected));
    expect_reply(c, "220", "2.0.0", "Ready to start TLS");
    client_starttls(c);                          /* fails on any cleartext after the 220 */
    say(c, "HELP", "214", "2.0.0", "Commands:"); /* the first reply is HELP's */
    say(c, "RCPT TO:<r@example.org>", "503", "5.5.1", "need MAIL command");
    expect_silence(c, 200);
}

/* Submission (RFC 6409, RFC 8314): TLS first, then a login, then MAIL. */
static void test_submission_needs_tls_then_auth(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = client_open(true);
    const char *ehlo = say(c, "EHLO client.test", "250", NULL, "250-STARTTLS\r\n");
    assert_null(strstr(ehlo, "AUTH"));
    say(c, "MAIL FROM:<alice@origin.test>", "530", "5.7.0", "Must issue a STARTTLS command first");
    say(c, good_plain(line, sizeof line), "538", "5.7.11",
        "Encryption required for requested authentication mechanism");
    say(c, "STARTTLS", "220", "2.0.0", "Ready to start TLS");
    client_starttls(c);
    say(c, "EHLO client.test", "250", NULL, "250-AUTH PLAIN LOGIN\r\n");
    say(c, "MAIL FROM:<alice@origin.test>", "530", "5.7.0", "Authentication required");
    say(c, good_plain(line, sizeof line), "235", "2.7.0", "Authentication successful");
    say(c, "MAIL FROM:<alice@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RCPT TO:<anyone@elsewhere.test>", "250", "2.1.5", "Ok"); /* a login may relay */
}

/* ---- 5. AUTH ---- */

/* PLAIN with an initial response, MAIL pipelined behind it: the MAIL
 * waits for the password check's verdict. Once logged in, EHLO offers
 * AUTH no more and a second AUTH is refused. */
static void test_auth_plain_initial_response(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = open_tls(true);
    send_login_and_mail(c);
    expect_reply(c, "235", "2.7.0", "Authentication successful");
    expect_reply(c, "250", "2.1.0", "Ok");
    const char *ehlo = say(c, "EHLO client.test", "250", NULL, "ENHANCEDSTATUSCODES");
    assert_null(strstr(ehlo, "AUTH"));
    say(c, good_plain(line, sizeof line), "503", "5.5.1", "already authenticated");
    say(c, "MAIL FROM:<alice@origin.test>", "250", "2.1.0", "Ok");
}

/* A client that half-closes while its login is being checked gets the
 * verdict and the replies to what it sent after, then the server closes. */
static void test_half_close_during_a_login(void **state)
{
    (void)state;
    start_default_server();
    client_t *c = open_tls(true);
    send_login_and_mail(c);
    client_half_close(c);
    expect_reply(c, "235", "2.7.0", "Authentication successful");
    expect_reply(c, "250", "2.1.0", "Ok");
    expect_closed(c);
}

/* A client that vanishes (connection reset) while its password is being
 * checked in the thread pool: the verdict finds the session closed, frees
 * it, and the ingress goes on and stops cleanly. */
static void test_client_vanishing_during_a_login(void **state)
{
    (void)state;
    char line[400], command[420];
    start_default_server();
    client_t *c = open_tls(true);
    snprintf(command, sizeof command, "%s\r\n", good_plain(line, sizeof line));
    client_send_and_reset(c, command);
    c = client_open(false);
    say(c, "NOOP", "250", "2.0.0", "Ok");
    server_stop();
    expect_reply(c, "421", "4.3.2", "Service shutting down");
}

/* "=" is an empty initial response (RFC 4954 §4): for PLAIN, a malformed
 * one; the exchange is over and the next AUTH starts afresh. */
static void test_auth_plain_empty_initial_response(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = open_tls(true);
    say(c, "AUTH PLAIN =", "501", "5.5.2", "Malformed PLAIN response");
    say(c, "MAIL FROM:<alice@origin.test>", "530", "5.7.0", "Authentication required");
    say(c, good_plain(line, sizeof line), "235", "2.7.0", "Authentication successful");
}

/* PLAIN without an initial response: an empty 334, then the response. */
static void test_auth_plain_after_challenge(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = open_tls(true);
    assert_string_equal(say(c, "AUTH PLAIN", "334", NULL, ""), "334 \r\n");
    say(c, good_plain(line, sizeof line) + strlen("AUTH PLAIN "), "235", "2.7.0",
        "Authentication successful");
    say(c, "MAIL FROM:<alice@origin.test>", "250", "2.1.0", "Ok");
}

/* LOGIN: "Username:" and "Password:", base64, as its clients expect. */
static void test_auth_login_challenges(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = open_tls(true);
    say(c, "AUTH LOGIN", "334", NULL, "VXNlcm5hbWU6");
    say(c, b64(TEST_USER, line, sizeof line), "334", NULL, "UGFzc3dvcmQ6");
    say(c, b64(TEST_PASSWORD, line, sizeof line), "235", "2.7.0", "Authentication successful");
    say(c, "MAIL FROM:<alice@origin.test>", "250", "2.1.0", "Ok");
}

/* LOGIN with the user name given at once: only the password is asked. */
static void test_auth_login_initial_response(void **state)
{
    (void)state;
    char line[400], user[200];
    start_default_server();
    client_t *c = open_tls(true);
    snprintf(line, sizeof line, "AUTH LOGIN %s", b64(TEST_USER, user, sizeof user));
    say(c, line, "334", NULL, "UGFzc3dvcmQ6");
    say(c, b64(TEST_PASSWORD, line, sizeof line), "235", "2.7.0", "Authentication successful");
}

/* "*" cancels at any step (RFC 4954 §4) and logs nobody in. */
static void test_auth_cancelled(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = open_tls(true);
    say(c, "AUTH LOGIN", "334", NULL, "VXNlcm5hbWU6");
    say(c, "*", "501", "5.7.0", "Authentication cancelled");
    say(c, "AUTH LOGIN", "334", NULL, "VXNlcm5hbWU6");
    say(c, b64(TEST_USER, line, sizeof line), "334", NULL, "UGFzc3dvcmQ6");
    say(c, "*", "501", "5.7.0", "Authentication cancelled");
    say(c, "AUTH PLAIN", "334", NULL, "");
    say(c, "*", "501", "5.7.0", "Authentication cancelled");
    say(c, "NOOP", "250", "2.0.0", "Ok"); /* a command again, not an answer */
    say(c, "MAIL FROM:<alice@origin.test>", "530", "5.7.0", "Authentication required");
}

/* A response that is not base64 ends the exchange with 501 5.5.2. */
static void test_auth_undecodable(void **state)
{
    (void)state;
    start_default_server();
    client_t *c = open_tls(true);
    say(c, "AUTH PLAIN", "334", NULL, "");
    say(c, "!!!!", "501", "5.5.2", "Cannot decode the response");
    say(c, "AUTH PLAIN %%%%", "501", "5.5.2", "Cannot decode the response");
    say(c, "AUTH LOGIN", "334", NULL, "VXNlcm5hbWU6");
    say(c, "not base64", "501", "5.5.2", "Cannot decode the response");
    say(c, "NOOP", "250", "2.0.0", "Ok");
    say(c, "MAIL FROM:<alice@origin.test>", "530", "5.7.0", "Authentication required");
}

/* 535 5.7.8 for a wrong password, an unknown user, and acting for someone
 * else (an authzid other than the user); none logs in, and a good login
 * still works on the same connection. */
static void test_auth_bad_credentials(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = open_tls(true);
    say(c, auth_plain("", TEST_USER, "wrong", line, sizeof line), "535", "5.7.8",
        "Authentication credentials invalid");
    say(c, "MAIL FROM:<alice@origin.test>", "530", "5.7.0", "Authentication required");
    say(c, auth_plain("", "nobody@origin.test", TEST_PASSWORD, line, sizeof line), "535", "5.7.8",
        "Authentication credentials invalid");
    say(c, auth_plain("bob@origin.test", TEST_USER, TEST_PASSWORD, line, sizeof line), "535",
        "5.7.8", "Authentication credentials invalid");
    say(c, "AUTH LOGIN", "334", NULL, "VXNlcm5hbWU6");
    say(c, b64(TEST_USER, line, sizeof line), "334", NULL, "UGFzc3dvcmQ6");
    say(c, b64("wrong", line, sizeof line), "535", "5.7.8", "Authentication credentials invalid");
    say(c, good_plain(line, sizeof line), "235", "2.7.0", "Authentication successful");
}

/* When AUTH cannot start: 538 in clear, 504 for a mechanism not enabled,
 * 503 during a transaction or after HELO. */
static void test_auth_refusals(void **state)
{
    (void)state;
    char line[400];
    start_default_server();
    client_t *c = client_open(false);
    say(c, "EHLO client.test", "250", NULL, "STARTTLS");
    say(c, good_plain(line, sizeof line), "538", "5.7.11", "Encryption required");
    client_close(c);
    c = open_tls(false);
    say(c, "AUTH FOO", "504", "5.5.4", "Unrecognized authentication type");
    say(c, "AUTH CRAM-MD5", "504", "5.5.4", "Unrecognized authentication type");
    say(c, "AUTH", "504", "5.5.4", "Unrecognized authentication type");
    say(c, "MAIL FROM:<a@origin.test>", "250", "2.1.0", "Ok"); /* the relay port needs no login */
    say(c, good_plain(line, sizeof line), "503", "5.5.1",
        "AUTH not permitted during a mail transaction");
    say(c, "RCPT TO:<r@example.org>", "250", "2.1.5", "Ok"); /* the transaction is untouched */
    say(c, "HELO client.test", "250", NULL, TEST_HOSTNAME);
    say(c, good_plain(line, sizeof line), "503", "5.5.1", "send EHLO first");
    say(c, "EHLO client.test", "250", NULL, "AUTH PLAIN LOGIN");
    say(c, good_plain(line, sizeof line), "235", "2.7.0", "Authentication successful");
}

/* With sender_login_match a login sends only as itself (any case), or
 * from the null sender. */
static void test_sender_login_match(void **state)
{
    (void)state;
    char line[400];
    config_t cfg;
    server_config(&cfg);
    cfg.ingress.sender_login_match = true;
    server_start(&cfg);
    client_t *c = open_tls(true);
    say(c, good_plain(line, sizeof line), "235", "2.7.0", "Authentication successful");
    say(c, "MAIL FROM:<mallory@origin.test>", "553", "5.7.1",
        "<mallory@origin.test>: Sender address not owned by user " TEST_USER);
    say(c, "MAIL FROM:<Alice@origin.test>", "250", "2.1.0", "Ok");
    say(c, "RSET", "250", "2.0.0", "Ok");
    say(c, "MAIL FROM:<>", "250", "2.1.0", "Ok");
}

int main(void)
{
#define TEST(f) cmocka_unit_test_teardown(f, harness_test_teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_starttls_resets_the_session),
        TEST(test_starttls_drops_what_came_with_it),
        TEST(test_submission_needs_tls_then_auth),
        TEST(test_auth_plain_initial_response),
        TEST(test_half_close_during_a_login),
        TEST(test_client_vanishing_during_a_login),
        TEST(test_auth_plain_empty_initial_response),
        TEST(test_auth_plain_after_challenge),
        TEST(test_auth_login_challenges),
        TEST(test_auth_login_initial_response),
        TEST(test_auth_cancelled),
        TEST(test_auth_undecodable),
        TEST(test_auth_bad_credentials),
        TEST(test_auth_refusals),
        TEST(test_sender_login_match),
    };
    return cmocka_run_group_tests(tests, harness_setup, harness_teardown);
}
