/* Private to queue/: one Redis connection on the project's stream, with a
 * deadline per request and reconnection from a timer; hiredis formats the
 * commands and reads the replies. */
#ifndef SEALPOST_QUEUE_REDIS_H
#define SEALPOST_QUEUE_REDIS_H

#include "core/core.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <uv.h>

typedef struct rconn rconn_t;

/* reply is NULL when err says why (timeout, connection lost, not connected).
 * An error reply from Redis arrives as a reply of type REDIS_REPLY_ERROR. */
typedef void (*rconn_reply_cb)(redisReply *reply, const char *err, void *arg);
/* Runs each time a connection is established, before queued requests are answered. */
typedef void (*rconn_connect_cb)(rconn_t *conn, void *arg);

/* Connects to ep's host and port, with TLS and AUTH as ep says, before
 * anything else, on every connection. NULL (logged) when ep's TLS files
 * cannot be loaded, or no memory. */
rconn_t *rconn_new(uv_loop_t *loop, const redis_endpoint_t *ep, unsigned timeout_ms,
                   rconn_connect_cb on_connect, void *arg);
/* Closes the connection; pending callbacks run with an error first. */
void rconn_free(rconn_t *conn);
bool rconn_connected(const rconn_t *conn);
/* True when no reply is awaited: freeing it now calls nobody back. */
bool rconn_idle(const rconn_t *conn);
/* Counts the connections established so far: a reply and a later command
 * with the same epoch went over the same connection (the same Redis client). */
unsigned rconn_epoch(const rconn_t *conn);
const char *rconn_host(const rconn_t *conn);
int rconn_port(const rconn_t *conn);
/* Why the last attempts to connect failed ("AUTH: WRONGPASS ...", "TLS:
 * certificate verify failed ..."), "" once connected. */
const char *rconn_failure(const rconn_t *conn);

/* Sends one command. Returns -1 without calling cb when there is no
 * connection to send it on; otherwise cb runs exactly once, later. */
int rconn_command(rconn_t *conn, rconn_reply_cb cb, void *arg, int argc, const char **argv,
                  const size_t *lens);
/* The same for a command already in the protocol's format (the caller keeps
 * cmd, to send it again after a redirect), preceded by ASKING if asked. */
int rconn_send(rconn_t *conn, rconn_reply_cb cb, void *arg, const char *cmd, size_t len,
               bool asking);
/* As rconn_send, taking over cmd (malloc'd, as redisFormatCommandArgv makes
 * it; freed even when it fails), so a large command is never copied. */
int rconn_send_owned(rconn_t *conn, rconn_reply_cb cb, void *arg, char *cmd, size_t len,
                     bool asking);
/* Subscribes to a channel on this (dedicated) connection, again after each
 * reconnect. cb gets each message payload, and NULL when the connection drops
 * (messages may have been missed). */
int rconn_subscribe(rconn_t *conn, const char *channel,
                    void (*cb)(const char *payload, size_t len, void *arg), void *arg);

/* A reply reader (hiredis's) that refuses a reply whose arrays announce
 * more than 16 Mi elements in all: hiredis allocates an array's element
 * pointers when it reads its header, so "*600000000" from a server, or
 * from anything posing as one, would ask for 4.8 GB before one element
 * came. *announced is the count of the reply being read: it must live as
 * long as the reader. */
redisReader *rconn_reader_new(size_t *announced);

#endif
