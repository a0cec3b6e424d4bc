/* sealpost seal-key, and the cluster's sealing keys as the commands that seal
 * load them (crypto/seal.c). */
#include "cmd/cmd.h"
#include "crypto/crypto.h"
#include "queue/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: sealpost seal-key new [ID]\n"
    "\n"
    "Prints a new random sealing key as \"ID:base64\" (ID defaults to a date stamp).\n"
    "Put it first in [seal] key_file (or SEALPOST_SEAL_KEYS) on every node to seal\n"
    "with it; keep the old keys listed after it until no queued message uses them.\n";

int cmd_seal_key(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "new") || argc > 3) {
        fputs(usage, argc >= 2 && !strcmp(argv[1], "-h") ? stdout : stderr);
        return argc >= 2 && !strcmp(argv[1], "-h") ? 0 : 2;
    }
    char id[SEAL_ID_MAX + 1], key[128];
    if (argc == 3) {
        snprintf(id, sizeof id, "%s", argv[2]);
    } else {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(id, sizeof id, "%Y%m%d%H%M%S", &tm);
    }
    if (seal_key_new(id, key, sizeof key) < 0) {
        fprintf(stderr, "sealpost: a key id is 1 to %d letters, digits, '-', '_' or '.'\n",
                SEAL_ID_MAX);
        return 2;
    }
    printf("%s\n", key);
    return 0;
}

/* The single-node stack seals with a key of its own in data_dir, made on
 * first start, unless the operator configured one. */
int cmd_ensure_seal_key(config_t *cfg)
{
    if (cfg->seal.keys[0] || cfg->seal.key_file[0]) return 0;
    char path[sizeof cfg->seal.key_file], key[128];
    int n = snprintf(path, sizeof path, "%s/seal.key", cfg->up.data_dir);
    if (n < 0 || (size_t)n >= sizeof path || cmd_mkdir_p(cfg->up.data_dir) < 0) {
        log_error("event=start_failed what=seal error=\"cannot use [up] data_dir '%s'\"",
                  cfg->up.data_dir);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        int ok = seal_key_new("1", key, sizeof key) == 0 && dprintf(fd, "%s\n", key) > 0;
        memset(key, 0, sizeof key);
        if (close(fd) < 0 || !ok) {
            log_error("event=start_failed what=seal error=\"cannot write %s\"", path);
            unlink(path);
            return -1;
        }
        log_info("event=seal_key_created file=%s", path);
    } else if (errno != EEXIST) {
        log_error("event=start_failed what=seal error=\"%s: %s\"", path, strerror(errno));
        return -1;
    }
    snprintf(cfg->seal.key_file, sizeof cfg->seal.key_file, "%s", path);
    return 0;
}

/* The key `sealpost up` keeps in [up] data_dir when no [seal] key is set,
 * if it is there: a command never makes one, for a key made from the wrong
 * directory would seal what no node can open. */
static int existing_seal_key(config_t *cfg)
{
    if (cfg->seal.keys[0] || cfg->seal.key_file[0]) return 0;
    char path[sizeof cfg->seal.key_file];
    int n = snprintf(path, sizeof path, "%s/seal.key", cfg->up.data_dir);
    if (n < 0 || (size_t)n >= sizeof path || access(path, F_OK) < 0) return -1;
    snprintf(cfg->seal.key_file, sizeof cfg->seal.key_file, "%s", path);
    return 0;
}

/* The check the nodes make at start-up (cmd/serve.c), made for the key
 * that seals: the cluster's check value for its id must open with it, and
 * when the cluster has none yet, ours is stored, as a node would store it. */
static int check_current_key(queue_admin_t *admin, const seal_keyring_t *k)
{
    char err[600] = "out of memory";
    buf_t check, stored;
    buf_init(&check);
    buf_init(&stored);
    const char *id = seal_current_id(k);
    int rc =
        seal_check_make(k, 0, &check) < 0
            ? -1
            : queue_admin_seal_check(admin, id, check.data, check.len, &stored, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "sealpost: cannot check the sealing key '%s' with the cluster: %s\n", id,
                err);
    } else if (!seal_check_verify(k, stored.data, stored.len)) {
        fprintf(stderr,
                "sealpost: refused, nothing stored: this sealing key differs from the key the "
                "cluster uses under the id '%s', so no worker could open what it seals: use the "
                "nodes' [seal] key\n",
                id);
        rc = -1;
    }
    buf_free(&check);
    buf_free(&stored);
    return rc;
}

/* The nodes seal with [seal] keys and key_file, and `sealpost up` with a
 * key of its own in [up] data_dir when neither is set: an administration
 * command must seal with the very key the nodes open with, so it takes one
 * of those that exists and checks it against the cluster's check value. */
seal_keyring_t *cmd_seal_keyring(config_t *cfg, queue_admin_t *admin, int *exit_code)
{
    char err[600];
    *exit_code = 1;
    if (existing_seal_key(cfg) < 0) {
        fprintf(stderr, "sealpost: no sealing key: start the node once (sealpost up) or set "
                        "[seal] key_file\n");
        return NULL;
    }
    seal_keyring_t *k = seal_keyring_load(cfg->seal.keys, cfg->seal.key_file, err, sizeof err);
    if (!k) {
        fprintf(stderr, "sealpost: [seal]: %s\n", err);
        return NULL;
    }
    if (check_current_key(admin, k) < 0) {
        seal_keyring_free(k);
        return NULL;
    }
    *exit_code = 0;
    return k;
}
