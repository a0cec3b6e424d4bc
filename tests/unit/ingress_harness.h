/* What the ingress tests (test_ingress_session.c, test_ingress_auth.c)
 * share: a real redis-server and queue, an ingress started per test, and a
 * client that speaks to one of its sessions over a socketpair, on the same
 * libuv loop, without TCP. The client is a stream too, so it can start TLS
 * after STARTTLS like any SMTP client.
 *
 * Each expectation names a reply as a user reading the transcript would:
 * its code, its enhanced code (NULL: the reply must have none, as 220, 334,
 * 354 and EHLO's), and a piece of its text. A failure reports the line of
 * the test, with the reply that came instead. */
#ifndef SEALPOST_TESTS_INGRESS_HARNESS_H
#define SEALPOST_TESTS_INGRESS_HARNESS_H

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>

#define TEST_HOSTNAME "mx.test"
#define RELAY_DOMAIN  "example.org"
#define TEST_USER     "alice@origin.test"
#define TEST_PASSWORD "alice-secret"

/* cmocka group fixtures: redis-server, the queue, the sealing key, the
 * certificate and the test user. Without redis-server every test skips. */
int harness_setup(void **state);
int harness_teardown(void **state);
/* After each test: its clients closed, its ingress stopped, Redis emptied
 * (the test user put back), so a failed test leaves nothing to the next. */
int harness_test_teardown(void **state);

/* config_defaults, and what every test relies on: the hostname, a listener
 * on a free loopback port (never connected to), RELAY_DOMAIN, the test
 * certificate (so STARTTLS is offered), and failed logins never limited. */
void server_config(config_t *cfg);
/* Starts an ingress with a copy of cfg; skips the test when redis-server
 * is not installed. */
void server_start(const config_t *cfg);
/* Stops the ingress as a signal would (open sessions get their 421) and
 * waits until it is gone. */
void server_stop_at(const char *file, int line);
#define server_stop() server_stop_at(__FILE__, __LINE__)
/* Sets an address's or a domain's encryption policy in the key directory. */
void server_set_policy(const char *target, const char *policy);

typedef struct client client_t;

/* A session, as if accepted on the relay or the submission port, from an
 * unknown (so untrusted) peer; client_open has read its 220 greeting. */
client_t *client_connect_at(bool submission, const char *file, int line);
client_t *client_open_at(bool submission, const char *file, int line);
/* Sends octets as they are, in one write. */
void client_send(client_t *c, const void *data, size_t len);
/* Waits for the next complete reply (multi-line aware) and checks it;
 * returns its text, valid until the next reply is taken. */
const char *client_expect_at(client_t *c, const char *code, const char *enhanced, const char *text,
                             const char *file, int line);
/* Sends command with CRLF, then expects its reply. */
const char *client_say_at(client_t *c, const char *command, const char *code, const char *enhanced,
                          const char *text, const char *file, int line);
/* One command of a transcript and the reply it must get. */
struct step {
    const char *command, *code, *enhanced, *text;
};
/* say for each step in turn; a failure names the command. */
void client_steps_at(client_t *c, const struct step *steps, size_t n, const char *file, int line);
/* Sends text one octet at a time, gap_ms apart, until all of it went or
 * the server answered or ended the connection; returns the octets sent.
 * How long a client trickling its input is let do so. */
size_t client_trickle(client_t *c, const char *text, unsigned gap_ms);
/* Nothing arrives within ms. */
void client_expect_silence_at(client_t *c, unsigned ms, const char *file, int line);
/* The server ends the connection, with no reply left unread. */
void client_expect_closed_at(client_t *c, const char *file, int line);
/* Starts TLS as a client after a 220 to STARTTLS, and waits for the
 * handshake; fails when any cleartext came after the 220. */
void client_starttls_at(client_t *c, const char *file, int line);
/* Sends NOOP and commands, and leaves as a crashed client would once the
 * NOOP's reply is in, unread: the session's next read is a connection
 * reset, an error, while it may still be waiting for an answer. */
void client_send_and_reset_at(client_t *c, const char *commands, const char *file, int line);
#define client_send_and_reset(c, commands) client_send_and_reset_at(c, commands, __FILE__, __LINE__)
/* Ends the client's side (shutdown SHUT_WR): it still reads. */
void client_half_close(client_t *c);
void client_close(client_t *c);

#define client_connect(submission)       client_connect_at(submission, __FILE__, __LINE__)
#define client_open(submission)          client_open_at(submission, __FILE__, __LINE__)
#define expect_reply(c, code, enh, text) client_expect_at(c, code, enh, text, __FILE__, __LINE__)
#define say(c, command, code, enh, text)                                                           \
    client_say_at(c, command, code, enh, text, __FILE__, __LINE__)
#define run_steps(c, table)                                                                        \
    client_steps_at(c, table, sizeof table / sizeof table[0], __FILE__, __LINE__)
#define expect_silence(c, ms) client_expect_silence_at(c, ms, __FILE__, __LINE__)
#define expect_closed(c)      client_expect_closed_at(c, __FILE__, __LINE__)
#define client_starttls(c)    client_starttls_at(c, __FILE__, __LINE__)

/* ---- what reached Redis ---- */

/* Messages stored since the test began (queue stats). */
unsigned stored_messages(void);
/* The message id in a "250 2.0.0 Ok: queued as <id>" reply. */
const char *queued_id(const char *reply, char out[33]);
/* The stored message as a worker gets it (every due job of its shard is
 * claimed): its sender, its recipients one per line and sorted, and its
 * body unsealed, without the Received: field the ingress put in front
 * (appended to content). */
void stored_message_at(const char *mid, char *sender, size_t sender_len, buf_t *rcpts,
                       buf_t *content, const char *file, int line);
#define stored_message(mid, sender, len, rcpts, content)                                           \
    stored_message_at(mid, sender, len, rcpts, content, __FILE__, __LINE__)

/* Base64 of n octets, for AUTH. */
const char *base64_of(const void *data, size_t n, char *out, size_t outlen);

#endif
