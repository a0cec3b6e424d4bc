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

void log_set_redact(bool on)
{
    redact = on;
}

const char *log_addr(const char *addr, char out[LOG_SAFE_MAX])
{
    const char *at = strrchr(addr, '@');
    if (!redact || !addr[0]) return log_safe(addr, out);
    unsigned char h[4];
    crypto_generichash(h, sizeof h, (const unsigned char *)addr, strlen(addr), NULL, 0);
    char masked[LOG_SAFE_MAX];
    snprintf(masked, sizeof masked, "%02x%02x%02x%02x%s%.*s", h[0], h[1], h[2], h[3], at ? "@" : "",
             at ? (int)(sizeof masked - 10) : 0, at ? at + 1 : "");
    return log_safe(masked, out);
}

const char *log_safe(const char *in, char out[LOG_SAFE_MAX])
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && n + 5 < LOG_SAFE_MAX; p++) {
        if (*p > ' ' && *p < 127 && *p != '"' && *p != '\\') {
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
