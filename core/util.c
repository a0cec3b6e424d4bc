#include "core/core.h"

#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void util_random_id(char out[33])
{
    uint8_t raw[16];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(out, 33, raw, sizeof raw);
}

uint32_t util_random_below(uint32_t bound)
{
    return bound ? randombytes_uniform(bound) : 0;
}

void util_rfc5322_date(char *out, size_t outlen)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, outlen, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

void util_iso_time(long long t, char out[UTIL_ISO_TIME_LEN])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, UTIL_ISO_TIME_LEN, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void util_ascii_lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z') *s = (char)(*s + 32);
}

int util_parse_decimal(const char *p, size_t len, unsigned long long *out)
{
    if (len == 0) return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        unsigned digit = (unsigned)(p[i] - '0');
        if (v > (ULLONG_MAX - digit) / 10) return -1;
        v = v * 10 + digit;
    }
    *out = v;
    return 0;
}

int util_split_list(const char *text, int (*fn)(const char *item, void *arg), void *arg)
{
    char item[512];
    const char *p = text;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n')
            p++;
        size_t n = strcspn(p, ", \t\n");
        if (n == 0) break;
        if (n >= sizeof item) return -1;
        memcpy(item, p, n);
        item[n] = 0;
        if (fn(item, arg) < 0) return -1;
        p += n;
    }
    return 0;
}
