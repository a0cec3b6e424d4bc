#include "core/core.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

int net_cidr_parse(const char *text, net_cidr_t *out)
{
    char addr[INET6_ADDRSTRLEN + 8];
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    if (alen == 0 || alen >= sizeof addr) return -1;
    memcpy(addr, text, alen);
    addr[alen] = 0;
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, addr, out->addr) == 1)
        out->family = AF_INET;
    else if (inet_pton(AF_INET6, addr, out->addr) == 1)
        out->family = AF_INET6;
    else
        return -1;
    unsigned max = out->family == AF_INET ? 32 : 128;
    out->prefix = max;
    if (slash) {
        char *end;
        if (slash[1] < '0' || slash[1] > '9') return -1; /* strtoul takes " +8" */
        unsigned long p = strtoul(slash + 1, &end, 10);
        if (*end || p > max) return -1;
        out->prefix = (unsigned)p;
    }
    return 0;
}

void net_cidr_text(const net_cidr_t *cidr, char *out, size_t outlen)
{
    char addr[INET6_ADDRSTRLEN];
    if (!inet_ntop(cidr->family, cidr->addr, addr, sizeof addr)) addr[0] = 0;
    snprintf(out, outlen, "%s/%u", addr, cidr->prefix);
}

bool net_cidr_match(const net_cidr_t *cidr, const struct sockaddr *sa)
{
    const uint8_t *a;
    uint8_t mapped[16];
    if (sa->sa_family == AF_INET && cidr->family == AF_INET) {
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    } else if (sa->sa_family == AF_INET6) {
        const uint8_t *a6 = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        static const uint8_t v4prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (cidr->family == AF_INET6)
            a = a6;
        else if (!memcmp(a6, v4prefix, 12))
            a = memcpy(mapped, a6 + 12, 4); /* ::ffff:a.b.c.d */
        else
            return false;
    } else {
        return false;
    }
    unsigned full = cidr->prefix / 8, rest = cidr->prefix % 8;
    if (memcmp(a, cidr->addr, full)) return false;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((a[full] & mask) != (cidr->addr[full] & mask)) return false;
    }
    return true;
}

int net_hostport_parse(const char *text, uint16_t default_port, net_hostport_t *out)
{
    const char *host = text, *port = NULL;
    size_t hlen;
    if (*text == '[') {
        const char *close = strchr(text, ']');
        if (!close) return -1;
        host = text + 1;
        hlen = (size_t)(close - host);
        if (close[1] == ':')
            port = close + 2;
        else if (close[1])
            return -1;
    } else {
        const char *colon = strrchr(text, ':');
        if (colon && strchr(text, ':') != colon) return -1; /* bare IPv6 needs brackets */
        hlen = colon ? (size_t)(colon - text) : strlen(text);
        if (colon) port = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof out->host) return -1;
    memcpy(out->host, host, hlen);
    out->host[hlen] = 0;
    if (port) {
        char *end;
        if (*port < '0' || *port > '9') return -1;
        unsigned long p = strtoul(port, &end, 10);
        if (*end || p == 0 || p > 65535) return -1;
        out->port = (uint16_t)p;
    } else {
        if (!default_port) return -1;
        out->port = default_port;
    }
    return 0;
}

int net_sockaddr_from(const net_hostport_t *hp, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, hp->host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(hp->port);
        return 0;
    }
    if (inet_pton(AF_INET6, hp->host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(hp->port);
        return 0;
    }
    if (!strcmp(hp->host, "localhost")) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(hp->port);
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return 0;
    }
    return -1;
}

void net_addr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    const void *a = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (!inet_ntop(sa->sa_family, a, out, (socklen_t)outlen)) snprintf(out, outlen, "unknown");
}

bool net_domain_valid(const char *name)
{
    size_t n = strlen(name), label = 0;
    if (n == 0 || n > 253) return false;
    for (size_t i = 0; i <= n; i++) {
        char c = name[i];
        if (c == '.' || c == 0) {
            /* empty, too long, or a hyphen at either end */
            if (label == 0 || label > 63 || name[i - label] == '-' || name[i - 1] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-') {
            label++;
        } else {
            return false;
        }
    }
    return true;
}

int net_listen(uv_tcp_t *tcp, const net_hostport_t *hp, int backlog, uv_connection_cb on_connection,
               char *err, size_t errlen)
{
    struct sockaddr_storage addr;
    if (net_sockaddr_from(hp, &addr) < 0) {
        snprintf(err, errlen, "'%s' is not a numeric address", hp->host);
        return -1;
    }
    int rc = uv_tcp_bind(tcp, (struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)tcp, backlog, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "%s:%u: %s", hp->host, hp->port, uv_strerror(rc));
        return -1;
    }
    return 0;
}
