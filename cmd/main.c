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
    "  keys          the key directory (OpenPGP keys, S/MIME certificates) and the\n"
    "                encryption policy (sealpost keys -h)\n"
    "  dkim          the DKIM signing keys: keygen, import, list, activate, delete\n"
    "                (sealpost dkim -h)\n"
    "  seal-key new  print a new key for sealing bodies at rest\n"
    "  version       print the version\n"
    "\n"
    "The configuration is read from -c FILE, else $SEALPOST_CONFIG, else ./sealpost.conf\n"
    "when it exists; SEALPOST_<SECTION>_<KEY> in the environment overrides any key.\n";

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
        {"dkim", cmd_dkim},
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
