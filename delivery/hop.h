/* Private to delivery/: one next hop, as the resolver finds it and the
 * client connects to it. Kept apart from dns.h and client.h so that neither
 * needs the other, and the connection pool needs neither's internals. */
#ifndef SEALPOST_DELIVERY_HOP_H
#define SEALPOST_DELIVERY_HOP_H

#include "core/core.h"

typedef struct hop {
    net_hostport_t addr; /* a numeric address and port: where to connect */
    /* The MX host (or a route's host) name the address was found under, for
     * SNI, certificate checks, logs and Remote-MTA; "" for a route given as
     * a numeric address, which then goes by "host:port". */
    char name[256];
} hop_t;

#endif
