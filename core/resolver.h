/* c-ares on the libuv loop, for every process that asks the DNS itself
 * rather than through getaddrinfo in the thread pool: the worker's MX
 * look-ups and key discovery's names. Part of core/, declared apart
 * because only its callers need c-ares's types. */
#ifndef SEALPOST_CORE_RESOLVER_H
#define SEALPOST_CORE_RESOLVER_H

#include <ares.h>
#include <stddef.h>
#include <uv.h>

typedef struct resolver resolver_t;

/* servers: "host:port" items separated by spaces or commas; "" or NULL uses
 * /etc/resolv.conf. DNS only (no /etc/hosts). Each query waits timeout_ms
 * per try, tries times. what names the setting in err ("[worker]
 * dns_servers"). */
resolver_t *resolver_new(uv_loop_t *loop, const char *servers, const char *what, int timeout_ms,
                         int tries, char *err, size_t errlen);
/* Cancels what is pending (each callback runs with ARES_EDESTRUCTION) and
 * frees the resolver once its handles are closed. */
void resolver_free(resolver_t *r);

/* The channel to send queries on; call resolver_kick after each. */
ares_channel resolver_channel(resolver_t *r);
/* Arms the timer at c-ares's next timeout. */
void resolver_kick(resolver_t *r);

/* The address of one host name, IPv4 first, as text; cb runs exactly once,
 * from the loop (never inside this call), with status ARES_SUCCESS and
 * addr, or another status and addr NULL: ARES_EDESTRUCTION when the
 * resolver is freed first. No memory: cb at once with ARES_ENOMEM. */
typedef void (*resolver_addr_cb)(int status, const char *addr, void *arg);
void resolver_host(resolver_t *r, const char *host, resolver_addr_cb cb, void *arg);

#endif
