/* sealpost users add|delete|list: the SMTP AUTH users every ingress node
 * reads from Redis. A password comes from standard input, never from the
 * command line, where other users of the machine could read it. */
#include "cmd/cmd.h"
#include "crypto/crypto.h"
#include "queue/admin.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static const char usage[] =
    "usage: sealpost users add NAME [--cram-md5] [-c FILE]   (password on standard input)\n"
    "       sealpost users delete NAME [-c FILE]\n"
    "       sealpost users list [-c FILE]\n"
    "       sealpost users authenticate [-c FILE]   tag every user as stored (once after an\n"
    "                                             upgrade): only tagged users can log in\n"
    "\n"
    "NAME is the login, usually the user's address. --cram-md5 also stores the\n"
    "password itself, which CRAM-MD5 needs on the server: only with that mechanism on.\n";

#define PASSWORD_MAX 1024

/* One line from stdin, without echo when it is a terminal. */
static int read_password(char *out, size_t size)
{
    struct termios old, quiet;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
    if (tty) {
        fputs("Password: ", stderr);
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    char *got = fgets(out, (int)size, stdin);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        fputc('\n', stderr);
    }
    if (!got) return -1;
    out[strcspn(out, "\r\n")] = 0;
    return out[0] ? 0 : -1;
}

/* A login name: printable ASCII without spaces, as it travels in AUTH. */
static bool valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 255) return false;
    for (const char *p = name; *p; p++)
        if (*p <= 32 || *p >= 127) return false;
    return true;
}

/* Tags the user's hash and secret (NULL: none) as stored (issue 18): every
 * ingress lets a user log in only with a tag that holds, so a user added or
 * changed in Redis by hand cannot. 1 tagged, 0 changed meanwhile, -1. */
static int tag_user(queue_admin_t *a, const seal_keyring_t *seal, const char *name,
                    const char *hash, const char *cram, char *err, size_t errlen)
{
    char hash_tag[SEAL_MAC_LEN + 1], cram_tag[SEAL_MAC_LEN + 1] = "";
    keydir_item_t it = {.kind = KEYDIR_ITEM_USER, .name = name, .data = hash, .len = strlen(hash)};
    keydir_item_tag(seal, &it, hash_tag);
    if (cram) {
        it = (keydir_item_t){
            .kind = KEYDIR_ITEM_CRAM, .name = name, .data = cram, .len = strlen(cram)};
        keydir_item_tag(seal, &it, cram_tag);
    }
    return queue_admin_user_tag(a, name, hash, hash_tag, cram, cram_tag, err, errlen);
}

struct tagging {
    queue_admin_t *admin;
    const seal_keyring_t *seal;
    unsigned tagged, changed;
    char err[600];
};

static int tag_one(const char *name, const char *hash, const char *cram, void *arg)
{
    struct tagging *t = arg;
    int rc = tag_user(t->admin, t->seal, name, hash, cram, t->err, sizeof t->err);
    if (rc > 0) t->tagged++;
    if (rc == 0) {
        t->changed++;
        fprintf(stderr, "sealpost: user %s changed meanwhile: not tagged, run it again\n", name);
    }
    return rc < 0 ? -1 : 0;
}

/* users authenticate: every user as stored now is taken as the operator's. */
static int authenticate_users(queue_admin_t *a, const seal_keyring_t *seal)
{
    struct tagging t = {.admin = a, .seal = seal};
    if (queue_admin_user_records(a, tag_one, &t, t.err, sizeof t.err) < 0) {
        fprintf(stderr, "sealpost: %s\n", t.err);
        return 1;
    }
    printf("users authenticated: %u\n", t.tagged);
    return t.changed ? 1 : 0;
}

static int add_user(queue_admin_t *a, const seal_keyring_t *seal, const char *name, bool cram)
{
    char password[PASSWORD_MAX], hash[PASSWORD_HASH_MAX], err[600];
    if (read_password(password, sizeof password) < 0) {
        fprintf(stderr, "sealpost: no password on standard input\n");
        return 1;
    }
    size_t len = strlen(password);
    int rc = password_hash(password, len, hash) == 0 ? 0 : -1;
    if (cram && len >= QUEUE_CRAM_MAX) {
        rc = -1;
        snprintf(err, sizeof err, "a CRAM-MD5 password can have at most %d characters",
                 QUEUE_CRAM_MAX - 1);
    } else if (rc < 0)
        snprintf(err, sizeof err, "cannot hash the password (out of memory?)");
    else
        rc = queue_admin_user_set(a, name, hash, cram ? password : NULL, err, sizeof err);
    int tagged =
        rc == 0 ? tag_user(a, seal, name, hash, cram ? password : NULL, err, sizeof err) : 1;
    if (tagged == 0) /* changed by another writer between the two calls */
        snprintf(err, sizeof err, "user %s changed meanwhile: not tagged, add it again", name);
    if (tagged <= 0) rc = -1;
    sodium_memzero(password, sizeof password);
    if (rc < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    printf("user %s saved%s\n", name, cram ? " (with a CRAM-MD5 secret)" : "");
    return 0;
}

int cmd_users(int argc, char **argv)
{
    const char *path = NULL;
    bool cram = false;
    int done = cmd_admin_options(argc, argv, usage, "cram-md5", &cram, &path);
    if (done >= 0) return done;
    const char *action = optind < argc ? argv[optind] : "";
    const char *name = optind + 1 < argc ? argv[optind + 1] : NULL;
    bool wants_name = !strcmp(action, "add") || !strcmp(action, "delete");
    bool known = wants_name || !strcmp(action, "list") || !strcmp(action, "authenticate");
    if (!known || (wants_name != (name != NULL)) || optind + 1 + wants_name != argc ||
        (cram && strcmp(action, "add"))) {
        fputs(usage, stderr);
        return 2;
    }
    if (name && !valid_name(name)) {
        fprintf(stderr, "sealpost: '%s' is not a login name (printable, no spaces)\n", name);
        return 2;
    }
    config_t cfg;
    char err[600];
    int rc = 0;
    queue_admin_t *a = cmd_admin_open(path, &cfg, &rc);
    if (!a) return rc;
    seal_keyring_t *seal = NULL;
    if ((!strcmp(action, "add") || !strcmp(action, "authenticate")) &&
        !(seal = cmd_seal_keyring(&cfg, a, &rc))) {
        queue_admin_close(a);
        return rc;
    }
    if (!strcmp(action, "add")) {
        rc = add_user(a, seal, name, cram);
    } else if (!strcmp(action, "authenticate")) {
        rc = authenticate_users(a, seal);
    } else if (!strcmp(action, "delete")) {
        int found = queue_admin_user_delete(a, name, err, sizeof err);
        if (found < 0) fprintf(stderr, "sealpost: %s\n", err);
        if (found == 0) fprintf(stderr, "sealpost: no user %s\n", name);
        if (found > 0) printf("user %s deleted\n", name);
        rc = found > 0 ? 0 : 1;
    } else {
        buf_t out;
        buf_init(&out);
        rc = queue_admin_user_list(a, &out, err, sizeof err) < 0 ? 1 : 0;
        if (rc)
            fprintf(stderr, "sealpost: %s\n", err);
        else
            fwrite(out.data ? out.data : "", 1, out.len, stdout);
        buf_free(&out);
    }
    seal_keyring_free(seal);
    queue_admin_close(a);
    return rc;
}
