/* What the subcommands share: their options, the configuration, the
 * administration commands' connection to Redis, making the data dir, and
 * JSON strings. */
#include "cmd/cmd.h"
#include "proto/proto.h"
#include "queue/admin.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

void cmd_load_config(int argc, char **argv, const char *usage, config_t *cfg)
{
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
        if (opt == 'c') {
            path = optarg;
        } else {
            fputs(usage, opt == 'h' ? stdout : stderr);
            exit(opt == 'h' ? 0 : 2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sealpost: unexpected argument '%s'\n%s", argv[optind], usage);
        exit(2);
    }
    char err[600];
    if (config_load(cfg, path, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: configuration error: %s\n", err);
        exit(2);
    }
    log_set_level(cfg->log.level);
    log_set_redact(cfg->log.redact_addresses, NULL, 0);
}

int cmd_admin_options(int argc, char **argv, const char *usage, const char *flag, bool *flag_set,
                      const char **path)
{
    const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {flag, no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
        if (opt == 'c') {
            *path = optarg;
        } else if (opt == 'f') {
            *flag_set = true;
        } else {
            fputs(usage, opt == 'h' ? stdout : stderr);
            return opt == 'h' ? 0 : 2;
        }
    }
    return -1;
}

queue_admin_t *cmd_admin_open(const char *path, config_t *cfg, int *exit_code)
{
    char err[600];
    if (config_load(cfg, path, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: configuration error: %s\n", err);
        *exit_code = 2;
        return NULL;
    }
    redis_endpoint_t redis;
    if (config_redis_endpoint(cfg, &redis, err, sizeof err) < 0) { /* checked at load: a race */
        fprintf(stderr, "sealpost: configuration error: %s\n", err);
        *exit_code = 2;
        return NULL;
    }
    queue_admin_t *a = queue_admin_open(&redis, cfg->redis.timeout_ms, err, sizeof err);
    config_redis_endpoint_clear(&redis);
    if (!a) {
        fprintf(stderr, "sealpost: %s\n", err);
        *exit_code = 1;
    }
    return a;
}

int cmd_mkdir_p(const char *path)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0700) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(tmp, 0700) < 0 && errno != EEXIST) ? -1 : 0;
}

/* A string as a JSON string literal. What a remote server said may not be
 * UTF-8: then each octet above 127 is written as the code point of the
 * same number (as Latin-1 would read it), so the output stays valid JSON. */
void cmd_print_time(long long t)
{
    if (t == 0) {
        fputs("never", stdout);
        return;
    }
    char text[UTIL_ISO_TIME_LEN];
    util_iso_time(t, text);
    fputs(text, stdout);
}

void cmd_json_string(const char *s)
{
    bool utf8 = proto_utf8_valid(s, strlen(s));
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f || (*p >= 0x80 && !utf8))
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}
