/* Private to delivery/: MX resolution with c-ares on the worker's libuv loop. */
#ifndef SEALPOST_DELIVERY_DNS_H
#define SEALPOST_DELIVERY_DNS_H

#include "core/core.h"
#include "delivery/hop.h"

#include <uv.h>

#define DNS_MAX_TARGETS 16

typedef struct dns dns_t;

typedef enum dns_status {
    DNS_OK,       /* hops in the order to try them */
    DNS_NULL_MX,  /* RFC 7505: the domain accepts no mail */
    DNS_NXDOMAIN, /* the domain does not exist */
    DNS_NO_HOST,  /* exists, but no MX and no address: undeliverable */
    DNS_TEMPFAIL, /* SERVFAIL, timeout, MX hosts without addresses: try later */
} dns_status_t;

typedef struct dns_result {
    dns_status_t status;
    char detail[200];            /* for logs and bounces */
    hop_t hops[DNS_MAX_TARGETS]; /* each address with the MX host name it belongs to */
    unsigned n_hops;
} dns_result_t;

typedef void (*dns_mx_cb)(const dns_result_t *result, void *arg);

/* servers: "host:port" items separated by spaces or commas; "" uses
 * /etc/resolv.conf. */
dns_t *dns_new(uv_loop_t *loop, const char *servers, char *err, size_t errlen);
void dns_free(dns_t *dns);

/* Resolves where mail for domain goes (RFC 5321 §5.1): MX hosts by
 * preference, equal preferences in random order, each host's addresses;
 * without MX records, the domain's own addresses. cb runs exactly once. */
void dns_resolve_mx(dns_t *dns, const char *domain, uint16_t port, dns_mx_cb cb, void *arg);
/* The addresses of one host (a static route or relayhost given by name);
 * any failure is DNS_TEMPFAIL: a route that does not resolve is a problem of
 * ours, not a reason to bounce. */
void dns_resolve_host(dns_t *dns, const char *host, uint16_t port, dns_mx_cb cb, void *arg);

#endif
