/* Logging: one line per event on stderr, "ts=... level=... " then key=value pairs. */
#include "core/core.h"

#include <sodium.h>

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

static enum log_level current_level = LOG_INFO;
static const char *level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    current_level = level;
}

int log_parse_level(const char *name, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (!strcasecmp(name, level_names[i])) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

static bool redact;
static const char *escape(const char *in, char out[LOG_SAFE_MAX], bool keep_spaces);
/* With a key (derived from the cluster's sealing key), the hashes cannot be
 * recomputed from a list of likely addresses by whoever reads the logs. */
static unsigned char redact_key[32];
static size_t redact_key_len;

void log_set_redact(bool on, const unsigned char *key, size_t len)
{
    redact = on;
    redact_key_len = key && len <= sizeof redact_key ? len : 0;
    if (redact_key_len) memcpy(redact_key, key, redact_key_len);
}

bool log_redacting(void)
{
    return redact;
}

/* The masked form of an address: 16 hex digits of its keyed hash, then
 * "@domain"; written to out (room for LOG_SAFE_MAX). */
static void mask(const char *addr, size_t len, char *out)
{
    const char *at = memchr(addr, '@', len);
    for (const char *p = at; p && p < addr + len; p++) /* the last '@' */
        if (*p == '@') at = p;
    unsigned char h[8];
    crypto_generichash(h, sizeof h, (const unsigned char *)addr, len,
                       redact_key_len ? redact_key : NULL, redact_key_len);
    int n = 0;
    for (size_t i = 0; i < sizeof h; i++)
        n += snprintf(out + n, 3, "%02x", h[i]);
    size_t domain = at ? (size_t)(addr + len - at) : 0;
    if (domain > LOG_SAFE_MAX - 20) domain = LOG_SAFE_MAX - 20;
    memcpy(out + n, at ? at : "", domain);
    out[n + domain] = 0;
}

const char *log_addr(const char *addr, char out[LOG_SAFE_MAX])
{
    if (!redact || !addr[0]) return log_safe(addr, out);
    char masked[LOG_SAFE_MAX];
    mask(addr, strlen(addr), masked);
    return log_safe(masked, out);
}

static bool local_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr(".!#$%&'*+/=?^_`{|}~-", c));
}

static bool domain_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-';
}

const char *log_text(const char *in, char out[LOG_SAFE_MAX])
{
    if (!redact) return escape(in, out, true);
    /* Every "local@domain" in free text (a server's reply quoting the
     * recipient) is masked as log_addr masks addresses. */
    char masked[LOG_SAFE_MAX], one[LOG_SAFE_MAX];
    size_t n = 0, len = strlen(in);
    for (size_t i = 0; i < len && n + 1 < sizeof masked;) {
        size_t start = i, end = i;
        if (local_char(in[i])) {
            while (end < len && local_char(in[end]))
                end++;
            if (end < len && in[end] == '@' && end + 1 < len && domain_char(in[end + 1])) {
                size_t stop = end + 1;
                while (stop < len && domain_char(in[stop]))
                    stop++;
                mask(in + start, stop - start, one);
                size_t k = strlen(one);
                if (n + k >= sizeof masked) break;
                memcpy(masked + n, one, k);
                n += k;
                i = stop;
                continue;
            }
            size_t k = end - start;
            if (n + k >= sizeof masked) k = sizeof masked - n - 1;
            memcpy(masked + n, in + start, k);
            n += k;
            i = end;
            continue;
        }
        masked[n++] = in[i++];
    }
    masked[n] = 0;
    return escape(masked, out, true);
}

/* Escapes what could forge or break a key=value line: quotes, backslashes,
 * control and 8-bit octets, and spaces unless the value is quoted text. */
static const char *escape(const char *in, char out[LOG_SAFE_MAX], bool keep_spaces)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && n + 5 < LOG_SAFE_MAX; p++) {
        if ((*p > ' ' || (*p == ' ' && keep_spaces)) && *p < 127 && *p != '"' && *p != '\\') {
            out[n++] = (char)*p;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = 0;
    return out;
}

const char *log_safe(const char *in, char out[LOG_SAFE_MAX])
{
    return escape(in, out, false);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    if (level < current_level) return;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03dZ level=%s ", (int)(tv.tv_usec / 1000),
                  level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    /* One write per line, so lines of concurrent processes do not interleave. */
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}
