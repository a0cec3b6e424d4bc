/* SMTP command lines, paths and ESMTP parameters (RFC 5321 §4.1, RFC 6531). */
#include "proto/proto.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static const char *const verb_names[PROTO_VERB_COUNT] = {
    [PROTO_UNKNOWN] = "",          [PROTO_HELO] = "HELO", [PROTO_EHLO] = "EHLO",
    [PROTO_MAIL] = "MAIL",         [PROTO_RCPT] = "RCPT", [PROTO_DATA] = "DATA",
    [PROTO_RSET] = "RSET",         [PROTO_NOOP] = "NOOP", [PROTO_QUIT] = "QUIT",
    [PROTO_HELP] = "HELP",         [PROTO_VRFY] = "VRFY", [PROTO_EXPN] = "EXPN",
    [PROTO_STARTTLS] = "STARTTLS", [PROTO_AUTH] = "AUTH", [PROTO_BDAT] = "BDAT",
    [PROTO_TURN] = "TURN",
};

const char *proto_verb_name(proto_verb_t verb)
{
    return verb < PROTO_VERB_COUNT ? verb_names[verb] : "";
}

/* Matches a case-insensitive prefix such as "FROM:" and skips it. */
static bool skip_prefix(const char **p, size_t *len, const char *prefix)
{
    size_t n = strlen(prefix);
    if (*len < n || strncasecmp(*p, prefix, n)) return false;
    *p += n;
    *len -= n;
    return true;
}

enum proto_status proto_command_parse(const char *line, size_t len, proto_command_t *out)
{
    out->verb = PROTO_UNKNOWN;
    out->args = line;
    out->args_len = 0;
    if (memchr(line, '\0', len)) return PROTO_E_SYNTAX;
    size_t vlen = 0;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    for (int v = PROTO_HELO; v < PROTO_VERB_COUNT; v++) {
        if (strlen(verb_names[v]) == vlen && !strncasecmp(line, verb_names[v], vlen)) {
            out->verb = (proto_verb_t)v;
            break;
        }
    }
    if (out->verb == PROTO_UNKNOWN) return PROTO_OK;
    const char *p = line + vlen;
    size_t rest = len - vlen;
    if (rest > 0) { /* exactly one space separates verb and arguments */
        p++;
        rest--;
    }
    if (out->verb == PROTO_MAIL || out->verb == PROTO_RCPT) {
        if (!skip_prefix(&p, &rest, out->verb == PROTO_MAIL ? "FROM:" : "TO:"))
            return PROTO_E_SYNTAX;
        while (rest > 0 && *p == ' ') { /* common, though not in the grammar */
            p++;
            rest--;
        }
    }
    while (rest > 0 && (p[rest - 1] == ' ' || p[rest - 1] == '\t'))
        rest--;
    out->args = p;
    out->args_len = rest;
    return PROTO_OK;
}

static bool is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_atext(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* Length of one well-formed UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t len)
{
    size_t n;
    unsigned min;
    unsigned cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        n = 2, cp = p[0] & 0x1f, min = 0x80;
    else if ((p[0] & 0xf0) == 0xe0)
        n = 3, cp = p[0] & 0x0f, min = 0x800;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        n = 4, cp = p[0] & 0x07, min = 0x10000;
    else
        return 0;
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

bool proto_utf8_valid(const char *p, size_t len)
{
    const unsigned char *u = (const unsigned char *)p;
    for (size_t i = 0; i < len;) {
        size_t n = u[i] < 0x80 ? 1 : utf8_seq(u + i, len - i);
        if (!n) return false;
        i += n;
    }
    return true;
}

/* Steps over the UTF-8 character at p[*i], noting that the path has one;
 * false when it is malformed. */
static bool take_utf8(const unsigned char *p, size_t len, size_t *i, bool *utf8)
{
    size_t n = utf8_seq(p + *i, len - *i);
    if (!n) return false;
    *utf8 = true;
    *i += n;
    return true;
}

/* Dot-string or Quoted-string; returns its length or 0. */
static size_t scan_local_part(const unsigned char *p, size_t len, bool *utf8)
{
    size_t i = 0;
    if (len && p[0] == '"') {
        for (i = 1; i < len && p[i] != '"'; i++) {
            if (p[i] == '\\') {
                if (++i >= len || p[i] < 32 || p[i] > 126) return 0;
            } else if (p[i] >= 0x80) {
                size_t n = utf8_seq(p + i, len - i);
                if (!n) return 0;
                *utf8 = true;
                i += n - 1;
            } else if (p[i] < 32 || p[i] > 126) {
                return 0;
            }
        }
        return i < len ? i + 1 : 0;
    }
    bool atom_start = true;
    while (i < len && p[i] != '@') {
        if (p[i] == '.') {
            if (atom_start) return 0; /* leading or doubled dot */
            atom_start = true;
            i++;
            continue;
        }
        if (p[i] >= 0x80) {
            if (!take_utf8(p, len, &i, utf8)) return 0;
        } else if (is_atext(p[i])) {
            i++;
        } else {
            return 0;
        }
        atom_start = false;
    }
    return atom_start ? 0 : i; /* empty, or a trailing dot */
}

/* Domain or address literal; returns its length or 0. */
static size_t scan_domain(const unsigned char *p, size_t len, bool *utf8)
{
    size_t i = 0;
    if (len && p[0] == '[') {
        /* RFC 5321 §4.1.3: an IPv4 literal or "IPv6:" and an IPv6 address; no
         * other tag is standardised, so general literals are refused. */
        char text[64];
        const unsigned char *close = memchr(p, ']', len);
        size_t n = close ? (size_t)(close - p) - 1 : 0;
        if (n == 0 || n >= sizeof text) return 0;
        /* inet_pton reads a C string: "[7.0.0.1\0junk]" would pass as
         * "[7.0.0.1]" while the path keeps all of it. */
        if (memchr(p + 1, '\0', n)) return 0;
        memcpy(text, p + 1, n);
        text[n] = 0;
        unsigned char addr[16];
        bool ok = !strncasecmp(text, "IPv6:", 5) ? inet_pton(AF_INET6, text + 5, addr) == 1
                                                 : inet_pton(AF_INET, text, addr) == 1;
        return ok ? n + 2 : 0;
    }
    size_t label = 0;
    while (i < len && p[i] != '>') {
        if (p[i] == '.') {
            if (label == 0 || p[i - 1] == '-') return 0;
            label = 0;
            i++;
            continue;
        }
        if (p[i] >= 0x80) {
            if (!take_utf8(p, len, &i, utf8)) return 0;
        } else if (is_alpha(p[i]) || is_digit(p[i]) || (p[i] == '-' && label > 0)) {
            i++;
        } else {
            return 0;
        }
        label++;
        if (label > 63) return 0;
    }
    if (label == 0 || p[i - 1] == '-') return 0;
    return i;
}

/* "@a,@b:" before the mailbox; returns its length (0 when absent), or -1. */
static long scan_source_route(const unsigned char *p, size_t len)
{
    size_t i = 0;
    if (len == 0 || p[0] != '@') return 0;
    for (;;) {
        bool utf8 = false;
        if (i >= len || p[i] != '@') return -1;
        i++;
        size_t n = 0;
        while (i + n < len && p[i + n] != ',' && p[i + n] != ':')
            n++;
        if (n == 0 || scan_domain(p + i, n, &utf8) != n) return -1;
        i += n;
        if (i >= len) return -1;
        if (p[i++] == ':') return (long)i;
    }
}

static enum proto_status parse_params(const char *p, size_t len, proto_path_t *out)
{
    size_t i = 0;
    while (i < len) {
        if (p[i] != ' ') return PROTO_E_PARAM;
        while (i < len && p[i] == ' ')
            i++;
        if (i == len) break;
        if (out->n_params >= PROTO_MAX_PARAMS) return PROTO_E_PARAM;
        proto_param_t *param = &out->params[out->n_params++];
        param->key = p + i;
        if (!is_alpha((unsigned char)p[i]) && !is_digit((unsigned char)p[i])) return PROTO_E_PARAM;
        while (i < len &&
               (is_alpha((unsigned char)p[i]) || is_digit((unsigned char)p[i]) || p[i] == '-'))
            i++;
        param->key_len = (size_t)(p + i - param->key);
        param->value = NULL;
        param->value_len = 0;
        if (i < len && p[i] == '=') {
            param->value = p + ++i;
            while (i < len && p[i] != ' ' && p[i] != '=' && (unsigned char)p[i] > 32 &&
                   (unsigned char)p[i] != 127)
                i++;
            param->value_len = (size_t)(p + i - param->value);
            if (param->value_len == 0) return PROTO_E_PARAM;
        }
        if (i < len && p[i] != ' ') return PROTO_E_PARAM;
    }
    return PROTO_OK;
}

enum proto_status proto_path_parse(const char *args, size_t len, enum proto_path_kind kind,
                                   proto_path_t *out)
{
    static const char postmaster[] = "<Postmaster>";
    const size_t postmaster_len = sizeof postmaster - 1;
    const unsigned char *p = (const unsigned char *)args;
    memset(out, 0, sizeof *out);
    if (len < 2 || p[0] != '<') return PROTO_E_PATH;
    const unsigned char *q = p + 1, *end = p + len;
    if (*q == '>') {
        if (kind != PROTO_REVERSE_PATH) return PROTO_E_PATH;
    } else if (kind == PROTO_FORWARD_PATH && len >= postmaster_len &&
               !strncasecmp(args, postmaster, postmaster_len)) {
        memcpy(out->addr, "Postmaster", postmaster_len - 2);
        out->postmaster = true;
        q += postmaster_len - 2;
    } else {
        /* Scan rather than look for the first '>': a quoted local part may hold one. */
        long route = scan_source_route(q, (size_t)(end - q));
        if (route < 0) return PROTO_E_PATH;
        q += route;
        size_t local = scan_local_part(q, (size_t)(end - q), &out->utf8);
        if (!local || q + local >= end || q[local] != '@') return PROTO_E_PATH;
        size_t domain = scan_domain(q + local + 1, (size_t)(end - q) - local - 1, &out->utf8);
        size_t inner = local + 1 + domain;
        if (!domain || q + inner >= end || q[inner] != '>') return PROTO_E_PATH;
        if (local > 64 || domain > 255 || inner > PROTO_PATH_MAX) return PROTO_E_PATH_LENGTH;
        memcpy(out->addr, q, inner);
        out->addr[inner] = 0;
        out->at = local;
        for (char *d = out->addr + local + 1; *d; d++)
            if (*d >= 'A' && *d <= 'Z') *d = (char)(*d + 32);
        q += inner;
    }
    const char *rest = (const char *)q + 1; /* after the '>' */
    return parse_params(rest, len - (size_t)(rest - args), out);
}

const char *proto_path_domain(const proto_path_t *path)
{
    return path->addr[0] && !path->postmaster ? path->addr + path->at + 1 : "";
}

const proto_param_t *proto_path_param(const proto_path_t *path, const char *key)
{
    size_t n = strlen(key);
    for (unsigned i = 0; i < path->n_params; i++)
        if (path->params[i].key_len == n && !strncasecmp(path->params[i].key, key, n))
            return &path->params[i];
    return NULL;
}
