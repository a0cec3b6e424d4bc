/* The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2)
 * that a load balancer puts before the client's bytes, saying who the
 * client is. Only the source address matters here; TLVs are skipped. */
#include "proto/proto.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#define V1_MAX 107  /* the longest v1 line, CRLF included */
#define V2_MAX 2048 /* addresses and TLVs we are willing to skip */

static const char v2_signature[12] = "\r\n\r\n\0\r\nQUIT\n";

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1234 25\r\n" */
static long parse_v1(const char *in, size_t len, proto_proxy_t *out)
{
    const char *crlf = memchr(in, '\n', len < V1_MAX ? len : V1_MAX);
    if (!crlf) return len < V1_MAX ? 0 : -1;
    size_t n = (size_t)(crlf - in) + 1;
    if (n < 8 || in[n - 2] != '\r') return -1;
    char line[V1_MAX + 1], proto[8], src[48], dst[48];
    unsigned sport, dport;
    memcpy(line, in, n - 2);
    line[n - 2] = 0;
    if (!strncmp(line, "PROXY UNKNOWN", 13)) {
        out->local = true;
        return (long)n;
    }
    char extra;
    if (sscanf(line, "PROXY %7s %47s %47s %5u %5u%c", proto, src, dst, &sport, &dport, &extra) !=
            5 ||
        sport > 65535 || dport > 65535)
        return -1;
    int family = !strcmp(proto, "TCP4") ? AF_INET : !strcmp(proto, "TCP6") ? AF_INET6 : 0;
    unsigned char dst_addr[16];
    if (!family || inet_pton(family, src, out->addr) != 1 || inet_pton(family, dst, dst_addr) != 1)
        return -1;
    out->family = family == AF_INET ? 4 : 6;
    out->port = (uint16_t)sport;
    return (long)n;
}

static long parse_v2(const unsigned char *in, size_t len, proto_proxy_t *out)
{
    if (len < 16) return 0;
    size_t body = (size_t)in[14] << 8 | in[15];
    if ((in[12] & 0xf0) != 0x20 || body > V2_MAX) return -1;
    if (len < 16 + body) return 0;
    unsigned command = in[12] & 0x0f, family = in[13];
    if (command == 0) { /* LOCAL: the balancer's own check */
        out->local = true;
        return (long)(16 + body);
    }
    if (command != 1) return -1;
    if (family == 0x11 && body >= 12) { /* TCP over IPv4 */
        out->family = 4;
        memcpy(out->addr, in + 16, 4);
        out->port = (uint16_t)(in[24] << 8 | in[25]);
    } else if (family == 0x21 && body >= 36) { /* TCP over IPv6 */
        out->family = 6;
        memcpy(out->addr, in + 16, 16);
        out->port = (uint16_t)(in[48] << 8 | in[49]);
    } else if (family == 0x00) { /* UNSPEC: keep the connection's addresses */
        out->local = true;
    } else {
        return -1; /* UDP or UNIX sockets: not an SMTP client */
    }
    return (long)(16 + body);
}

long proto_proxy_parse(const char *in, size_t len, proto_proxy_t *out)
{
    memset(out, 0, sizeof *out);
    size_t sig = len < sizeof v2_signature ? len : sizeof v2_signature;
    if (!memcmp(in, v2_signature, sig))
        return sig < sizeof v2_signature ? 0 : parse_v2((const unsigned char *)in, len, out);
    size_t v1 = len < 6 ? len : 6;
    if (!memcmp(in, "PROXY ", v1)) return v1 < 6 ? 0 : parse_v1(in, len, out);
    return -1;
}
