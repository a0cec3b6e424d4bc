/* sealpost: one binary, one subcommand per role. */
#include "cmd/cmd.h"
#include "queue/admin.h"

#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: sealpost COMMAND [-c FILE]\n"
    "\n"
    "commands:\n"
    "  up            run the single-node stack: redis-server (unless [redis] url is set),\n"
    "                one ingress and one worker\n"
    "  ingress       run an SMTP ingress node\n"
    "  worker        run a delivery worker\n"
    "  check-config  print the effective configuration\n"
    "  users         add, delete or list SMTP AUTH users (sealpost users -h)\n"
    "  queue         list, show, trace, hold, release, retry, delete; stats, top\n"
    "                (sealpost queue -h)\n"
    "  keys          the OpenPGP key directory and encryption policy (sealpost keys -h)\n"
    "  seal-key new  print a new key for sealing bodies at rest\n"
    "  version       print the version\n"
    "\n"
    "The configuration is read from -c FILE, else $SEALPOST_CONFIG, else ./sealpost.conf\n"
    "when it exists; SEALPOST_<SECTION>_<KEY> in the environment overrides any key.\n";

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
    net_hostport_t redis;
    config_redis_address(cfg, &redis);
    queue_admin_t *a = queue_admin_open(&redis, cfg->redis.timeout_ms, err, sizeof err);
    if (!a) {
        fprintf(stderr, "sealpost: %s\n", err);
        *exit_code = 1;
    }
    return a;
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "sealpost: libsodium failed to initialise\n");
        return 1;
    }
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } commands[] = {
        {"up", cmd_up},
        {"ingress", cmd_ingress},
        {"worker", cmd_worker},
        {"check-config", cmd_check_config},
        {"users", cmd_users},
        {"queue", cmd_queue},
        {"seal-key", cmd_seal_key},
        {"keys", cmd_keys},
    };
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("sealpost %s\n", SEALPOST_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "sealpost: unknown command '%s'\n%s", argv[1], usage_text);
    return 2;
}
