/* The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2)
 * that a load balancer puts before the client's bytes, saying who the
 * client is. Only the source address matters here; TLVs are skipped. */
#include "proto/proto.h"

#include <arpa/inet.h>
#include <string.h>

#define V1_MAX 107  /* the longest v1 line, CRLF included */
#define V2_MAX 2048 /* addresses and TLVs we are willing to skip */

static const char v2_signature[12] = "\r\n\r\n\0\r\nQUIT\n";

/* A port: decimal, 0 to 65535, no sign and no leading zero. */
static bool parse_port(const char *text, uint16_t *out)
{
    size_t n = strlen(text);
    if (n == 0 || n > 5 || (n > 1 && text[0] == '0')) return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (text[i] < '0' || text[i] > '9') return false;
        v = v * 10 + (unsigned)(text[i] - '0');
    }
    if (v > 65535) return false;
    *out = (uint16_t)v;
    return true;
}

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1234 25" CRLF, fields apart by single spaces;
 * or "PROXY UNKNOWN", where anything up to the CRLF is to be ignored. */
static long parse_v1(const char *in, size_t len, proto_proxy_t *out)
{
    const char *lf = memchr(in, '\n', len < V1_MAX ? len : V1_MAX);
    if (!lf) return len < V1_MAX ? 0 : -1;
    size_t n = (size_t)(lf - in) + 1;
    if (n < 8 || in[n - 2] != '\r') return -1;
    /* The line is US-ASCII text; read as a C string below, a NUL would cut
     * a field short ("1.2.3.4\0junk" taken for 1.2.3.4), so anything but
     * printable octets is no header, even after UNKNOWN. */
    for (size_t i = 0; i < n - 2; i++)
        if ((unsigned char)in[i] < 0x20 || (unsigned char)in[i] > 0x7e) return -1;
    char line[V1_MAX + 1];
    memcpy(line, in, n - 2);
    line[n - 2] = 0;
    if (!strcmp(line, "PROXY UNKNOWN") || !strncmp(line, "PROXY UNKNOWN ", 14)) {
        out->local = true;
        return (long)n;
    }
    char *field[6];
    size_t k = 0;
    for (char *p = line;;) {
        if (k == 6) return -1; /* a seventh field */
        field[k++] = p;
        char *space = strchr(p, ' ');
        if (!space) break;
        *space = 0;
        p = space + 1;
    }
    if (k != 6 || strcmp(field[0], "PROXY")) return -1;
    int family = !strcmp(field[1], "TCP4") ? AF_INET : !strcmp(field[1], "TCP6") ? AF_INET6 : 0;
    unsigned char dst[16];
    uint16_t dst_port;
    if (!family || inet_pton(family, field[2], out->addr) != 1 ||
        inet_pton(family, field[3], dst) != 1 || !parse_port(field[4], &out->port) ||
        !parse_port(field[5], &dst_port))
        return -1;
    out->family = family == AF_INET ? 4 : 6;
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
    if (len == 0) return 0;
    size_t sig = len < sizeof v2_signature ? len : sizeof v2_signature;
    if (!memcmp(in, v2_signature, sig))
        return sig < sizeof v2_signature ? 0 : parse_v2((const unsigned char *)in, len, out);
    size_t v1 = len < 6 ? len : 6;
    if (!memcmp(in, "PROXY ", v1)) return v1 < 6 ? 0 : parse_v1(in, len, out);
    return -1;
}
