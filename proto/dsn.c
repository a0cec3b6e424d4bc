/* Delivery status notification parameters (RFC 3461) and the stored
 * parameter lists the queue keeps with an envelope. */
#include "proto/proto.h"

#include <string.h>
#include <strings.h>

static bool is_upper_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

bool proto_xtext_valid(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '+') {
            if (i + 2 >= len) return false;
            if (!is_upper_hex(p[i + 1]) || !is_upper_hex(p[i + 2])) return false;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
    }
    return true;
}

int proto_dsn_notify(const char *p, size_t len)
{
    static const struct {
        const char *name;
        int bit;
    } words[] = {{"NEVER", PROTO_NOTIFY_NEVER},
                 {"SUCCESS", PROTO_NOTIFY_SUCCESS},
                 {"FAILURE", PROTO_NOTIFY_FAILURE},
                 {"DELAY", PROTO_NOTIFY_DELAY}};
    int bits = 0;
    size_t i = 0;
    while (i <= len) {
        size_t n = 0;
        while (i + n < len && p[i + n] != ',')
            n++;
        int bit = 0;
        for (size_t w = 0; w < sizeof words / sizeof words[0]; w++)
            if (strlen(words[w].name) == n && !strncasecmp(p + i, words[w].name, n))
                bit = words[w].bit;
        if (!bit || (bits & bit)) return -1; /* unknown or repeated */
        bits |= bit;
        i += n + 1;
    }
    /* NEVER stands alone (§4.1). */
    return (bits & PROTO_NOTIFY_NEVER) && bits != PROTO_NOTIFY_NEVER ? -1 : bits;
}

bool proto_dsn_orcpt_valid(const char *p, size_t len, bool utf8)
{
    const char *semi = memchr(p, ';', len);
    if (!semi || semi == p || len > PROTO_ORCPT_MAX) return false;
    size_t type_len = (size_t)(semi - p);
    for (size_t i = 0; i < type_len; i++) {
        char c = p[i];
        bool atext =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        if (!atext) return false;
    }
    const char *addr = semi + 1;
    size_t addr_len = len - type_len - 1;
    if (addr_len == 0) return false;
    if (utf8 && type_len == 5 && !strncasecmp(p, "utf-8", 5)) {
        /* RFC 6533 utf-8-addr-xtext: "\x{HEX}" escapes and UTF-8 both allowed;
         * we insist on well-formed UTF-8 without controls, space, '+' or '='. */
        for (size_t i = 0; i < addr_len; i++) {
            unsigned char c = (unsigned char)addr[i];
            if (c < 33 || c == 127 || c == '+' || c == '=') return false;
        }
        return proto_utf8_valid(addr, addr_len);
    }
    return proto_xtext_valid(addr, addr_len);
}

bool proto_param_find(const char *list, const char *key, char *out, size_t outlen)
{
    size_t key_len = strlen(key);
    const char *p = list;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n >= key_len && !strncasecmp(p, key, key_len) && (n == key_len || p[key_len] == '=')) {
            const char *value = n == key_len ? p + n : p + key_len + 1;
            size_t value_len = (size_t)(p + n - value);
            if (outlen) {
                /* a cut ORCPT or ENVID would be another one: better none */
                if (value_len > outlen - 1) return false;
                memcpy(out, value, value_len);
                out[value_len] = 0;
            }
            return true;
        }
        p += n;
    }
    return false;
}
