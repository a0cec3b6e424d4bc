/* Private to discovery/: the WKD names and the HTTPS client, declared
 * here for discovery.c, the unit tests and the fuzz target. */
#ifndef SEALPOST_DISCOVERY_INTERNAL_H
#define SEALPOST_DISCOVERY_INTERNAL_H

#include "core/core.h"
#include "core/resolver.h"
#include "core/tls.h"

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* ---- WKD (draft-koch-openpgp-webkey-service §3.1) (wkd.c) ---- */

/* The z-base-32 encoding (the draft's §3.1, after Zooko's "human-oriented
 * base-32") of the SHA-1 of the local part, lower-cased (ASCII only, as
 * GnuPG does): always 32 characters. */
void wkd_hash(const char *local, size_t len, char out[33]);

/* Where to ask for address's key: advanced (host "openpgpkey.<domain>",
 * path under the domain's own folder) or direct (host "<domain>"). Both
 * end with "?l=" and the local part percent-encoded. -1 when the address
 * has no '@', an empty part, or does not fit. */
typedef struct wkd_url {
    char host[264];
    char path[600];
} wkd_url_t;
int wkd_url(const char *address, bool advanced, wkd_url_t *out);

/* Percent-encodes every octet but RFC 3986's unreserved ones; -1 when out
 * is too small. */
int wkd_percent_encode(const char *in, size_t len, char *out, size_t outlen);

/* ---- one HTTPS GET (http.c) ---- */

/* What the response parser found in the octets of a response read so far:
 * a status, and the body decoded (Content-Length, chunked, or up to the
 * end of the stream). */
typedef struct http_response {
    int status;         /* 100..599 */
    char location[512]; /* of a redirect, "" when none */
    buf_t body;
} http_response_t;

/* 1: complete (out filled; free out->body); 0: more is needed (eof false);
 * -1 with err: malformed, or the body would pass max octets. in is the
 * whole of what was read, from the first octet; eof says the peer closed. */
int http_response_parse(const char *in, size_t len, bool eof, size_t max, http_response_t *out,
                        char *err, size_t errlen);

typedef struct http_get http_get_t;
/* status: the HTTP status, or 0 with err when there was no answer (DNS,
 * connect, TLS, a malformed or oversized response); for a redirect, err is
 * its Location (NULL when it has none). body is valid during the callback
 * only. Runs exactly once, from the loop, unless cancelled. */
typedef void (*http_cb)(int status, const char *body, size_t len, const char *err, void *arg);
/* GET https://host:port/path (host resolved by r, the certificate checked
 * against ctx and host), at most max octets of response. The caller's own
 * deadline cancels it. NULL only when memory ran out. */
http_get_t *http_get(uv_loop_t *loop, resolver_t *r, SSL_CTX *ctx, const char *host, uint16_t port,
                     const char *path, size_t max, http_cb cb, void *arg);
/* The callback will not run; the request frees itself. */
void http_cancel(http_get_t *g);

#endif
