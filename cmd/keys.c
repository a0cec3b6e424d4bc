/* sealpost keys: the OpenPGP key directory and the encryption policy, both in
 * Redis, so every ingress node sees an import within a second. A key is
 * checked with gpg before it is stored: it must be able to take mail now
 * (a valid encryption subkey, not expired, not revoked). A revocation,
 * alone or with its key, removes the stored key it verifies against. */
#include "cmd/cmd.h"
#include "crypto/crypto.h"
#include "queue/admin.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: sealpost keys import FILE|-          store the public keys in FILE (or stdin)\n"
    "       sealpost keys list [--json]          every key: fingerprint, expiry, addresses\n"
    "       sealpost keys show ADDRESS|FPR       one key, with its armored data\n"
    "       sealpost keys delete ADDRESS|FPR     remove a key from every address it has\n"
    "       sealpost keys policy set ADDRESS|DOMAIN never|opportunistic|required\n"
    "       sealpost keys policy delete ADDRESS|DOMAIN\n"
    "       sealpost keys policy list\n"
    "   (each with [-c FILE])\n"
    "\n"
    "A key is filed under every e-mail address of its valid user IDs. Mail to an\n"
    "address is encrypted to its key when the policy (the address's, else its\n"
    "domain's, else [crypto] default_policy) is opportunistic or required; a\n"
    "required recipient without a usable key is refused at RCPT TO.\n"
    "\n"
    "Importing a key's revocation certificate (alone, or with the key) removes\n"
    "the stored key it revokes.\n";

#define KEY_INPUT_MAX (4 << 20)

struct import {
    queue_admin_t *admin;
    const config_t *cfg;
    unsigned imported, refused;
};

static void print_expiry(long long expires)
{
    if (expires == 0) {
        printf("never");
        return;
    }
    char text[32];
    time_t t = (time_t)expires;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%s", text);
}

/* A stored key's addresses (LF-separated), each after a space. */
static void print_addresses(const buf_t *addresses)
{
    for (const char *p = addresses->data ? addresses->data : ""; *p;) {
        size_t len = strcspn(p, "\n");
        printf(" %.*s", (int)len, p);
        p += len + (p[len] == '\n');
    }
}

/* A revoked (or expired) key that is stored leaves the directory:
 * importing its revocation is how an operator retires a key. Its addresses
 * are then keyless, and their policy decides what becomes of their mail. */
static bool retire(struct import *im, const crypto_key_info_t *key)
{
    char err[600];
    queue_key_stored_t old;
    int stored = queue_admin_key_get(im->admin, key->fpr, &old, err, sizeof err);
    if (stored <= 0) {
        printf("refused %s: %s, and %s\n", key->fpr, key->why_unusable,
               stored < 0 ? err : "not in the directory");
        return false;
    }
    /* An old copy whose self-signature lapsed says nothing of the stored
     * one, whose expiry may have been extended since: only a revocation, or
     * a copy that expires no later than the stored one, retires it. */
    if (strcmp(key->why_unusable, "revoked") != 0 &&
        (old.expires == 0 || (key->expires != 0 && old.expires > key->expires))) {
        printf("refused %s: %s, but the stored copy is newer (expires ", key->fpr,
               key->why_unusable);
        print_expiry(old.expires);
        printf("): kept\n");
        buf_free(&old.addresses);
        buf_free(&old.armored);
        return false;
    }
    bool removed = queue_admin_key_delete(im->admin, key->fpr, err, sizeof err) > 0;
    if (removed) {
        printf("%s: %s", key->why_unusable, key->fpr);
        print_addresses(&old.addresses);
        printf(", key removed\n");
    } else {
        printf("refused %s: %s, and not removed: %s\n", key->fpr, key->why_unusable, err);
    }
    buf_free(&old.addresses);
    buf_free(&old.armored);
    return removed;
}

static void import_one(const crypto_key_info_t *key, void *arg)
{
    struct import *im = arg;
    char err[600];
    if (key->why_unusable) {
        bool done = key->retired && retire(im, key);
        if (!key->retired) printf("refused %s: %s\n", key->fpr, key->why_unusable);
        if (done)
            im->imported++;
        else
            im->refused++;
        return;
    }
    char canon[QUEUE_KEY_ADDRS_MAX][300];
    const char *addrs[QUEUE_KEY_ADDRS_MAX];
    unsigned n = 0;
    for (unsigned i = 0; i < key->n_addresses && n < QUEUE_KEY_ADDRS_MAX; i++)
        if (crypto_addr_canon(key->addresses[i], im->cfg->crypto.case_insensitive,
                              im->cfg->crypto.strip_detail, canon[n], sizeof canon[n]) == 0) {
            bool dup = false;
            for (unsigned j = 0; j < n && !dup; j++)
                dup = !strcmp(canon[j], canon[n]);
            if (!dup) addrs[n] = canon[n], n++;
        }
    if (n == 0) {
        printf("refused %s: no e-mail address in its user IDs\n", key->fpr);
        im->refused++;
        return;
    }
    queue_key_record_t rec = {key->fpr, key->expires, key->armored, key->armored_len, addrs, n};
    if (queue_admin_key_put(im->admin, &rec, err, sizeof err) < 0) {
        printf("refused %s: %s\n", key->fpr, err);
        im->refused++;
        return;
    }
    printf("imported %s expires ", key->fpr);
    print_expiry(key->expires);
    for (unsigned i = 0; i < n; i++)
        printf(" %s", addrs[i]);
    printf("\n");
    im->imported++;
}

static int read_input(const char *name, buf_t *out)
{
    FILE *f = strcmp(name, "-") ? fopen(name, "rb") : stdin;
    if (!f) {
        perror(name);
        return -1;
    }
    char chunk[8192];
    size_t n;
    int rc = 0;
    while (rc == 0 && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        rc = out->len + n > KEY_INPUT_MAX ? -1 : buf_append(out, chunk, n);
    if (ferror(f)) rc = -1;
    if (f != stdin) fclose(f);
    if (rc < 0) fprintf(stderr, "sealpost: cannot read %s (or it is over %d MiB)\n", name, 4);
    return rc;
}

/* The stored key a revocation names: by fingerprint, or by the key ID
 * that ends one (an old revocation may name no more than that). */
struct find_id {
    const char *id;
    char fpr[CRYPTO_FPR_MAX + 1];
};

static void match_id(const queue_key_stored_t *key, void *arg)
{
    struct find_id *f = arg;
    size_t n = strlen(key->fpr), id = strlen(f->id);
    if (n >= id && !strcmp(key->fpr + n - id, f->id))
        snprintf(f->fpr, sizeof f->fpr, "%s", key->fpr);
}

static int stored_key(const char *issuer, buf_t *out, void *arg, char *err, size_t errlen)
{
    struct import *im = arg;
    struct find_id f = {issuer, ""};
    if (strlen(issuer) == 16) {
        if (queue_admin_key_list(im->admin, match_id, &f, err, errlen) < 0) return -1;
        if (!f.fpr[0]) return 0;
        issuer = f.fpr;
    }
    queue_key_stored_t key;
    int found = queue_admin_key_get(im->admin, issuer, &key, err, errlen);
    if (found <= 0) return found;
    if (buf_append(out, key.armored.data, key.armored.len) < 0) {
        snprintf(err, errlen, "out of memory");
        found = -1;
    }
    buf_free(&key.addresses);
    buf_free(&key.armored);
    return found;
}

static int import_keys(queue_admin_t *a, const config_t *cfg, const char *file)
{
    buf_t data;
    buf_init(&data);
    char err[600];
    struct import im = {a, cfg, 0, 0};
    int rc = read_input(file, &data);
    if (rc == 0 && (crypto_gpg_init(err, sizeof err) < 0 ||
                    crypto_keys_inspect(data.data, data.len, cfg->crypto.home_dir, stored_key,
                                        import_one, &im, err, sizeof err) < 0)) {
        fprintf(stderr, "sealpost: %s\n", err);
        rc = -1;
    }
    buf_free(&data);
    if (rc < 0) return 1;
    return im.refused ? 1 : 0;
}

/* A fingerprint as given, or the one filed under an address. */
static int resolve(queue_admin_t *a, const config_t *cfg, const char *what, char *fpr,
                   size_t fprlen)
{
    char err[600], canon[300];
    if (!strchr(what, '@')) {
        snprintf(fpr, fprlen, "%s", what);
        for (char *p = fpr; *p; p++)
            if (*p >= 'a' && *p <= 'f') *p -= 'a' - 'A';
        return 0;
    }
    if (crypto_addr_canon(what, cfg->crypto.case_insensitive, cfg->crypto.strip_detail, canon,
                          sizeof canon) < 0) {
        fprintf(stderr, "sealpost: '%s' is not an address\n", what);
        return -1;
    }
    if (queue_admin_key_find(a, canon, fpr, fprlen, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return -1;
    }
    if (!fpr[0]) {
        fprintf(stderr, "sealpost: no key for %s\n", canon);
        return -1;
    }
    return 0;
}

static void list_one(const queue_key_stored_t *key, void *arg)
{
    bool json = *(const bool *)arg;
    static bool first = true;
    if (json) {
        printf("%s{\"fingerprint\":\"%s\",\"expires\":%lld,\"imported\":%lld,\"addresses\":[",
               first ? "" : ",", key->fpr, key->expires, key->imported);
        const char *p = key->addresses.data ? key->addresses.data : "";
        for (bool more = *p; more;) {
            size_t len = strcspn(p, "\n");
            printf("%s\"%.*s\"", p == key->addresses.data ? "" : ",", (int)len, p);
            more = p[len] == '\n';
            p += len + more;
        }
        printf("]}");
    } else {
        printf("%s ", key->fpr);
        print_expiry(key->expires);
        print_addresses(&key->addresses);
        printf("\n");
    }
    first = false;
}

static int show_key(queue_admin_t *a, const char *fpr)
{
    char err[600];
    queue_key_stored_t key;
    int found = queue_admin_key_get(a, fpr, &key, err, sizeof err);
    if (found <= 0) {
        fprintf(stderr, "sealpost: %s\n", found < 0 ? err : "no such key");
        return 1;
    }
    printf("fingerprint: %s\nexpires: ", key.fpr);
    print_expiry(key.expires);
    printf("\nimported: ");
    print_expiry(key.imported);
    printf("\naddresses: ");
    for (const char *p = key.addresses.data ? key.addresses.data : ""; *p; p++)
        putchar(*p == '\n' ? ' ' : *p);
    printf("\n\n%.*s", (int)key.armored.len, key.armored.data);
    buf_free(&key.addresses);
    buf_free(&key.armored);
    return 0;
}

static int policy_command(queue_admin_t *a, const config_t *cfg, int argc, char **argv)
{
    char err[600];
    const char *action = argc > 0 ? argv[0] : "";
    enum enc_policy p;
    if (!strcmp(action, "list") && argc == 1) {
        buf_t out;
        buf_init(&out);
        int rc = queue_admin_policy_list(a, &out, err, sizeof err);
        if (rc == 0) fwrite(out.data ? out.data : "", 1, out.len, stdout);
        buf_free(&out);
        if (rc < 0) fprintf(stderr, "sealpost: %s\n", err);
        return rc < 0 ? 1 : 0;
    }
    bool set = !strcmp(action, "set") && argc == 3, del = !strcmp(action, "delete") && argc == 2;
    if (!set && !del) {
        fputs(usage, stderr);
        return 2;
    }
    if (set && config_parse_enc_policy(argv[2], &p) < 0) {
        fprintf(stderr, "sealpost: '%s' is not never, opportunistic or required\n", argv[2]);
        return 2;
    }
    char target[300];
    snprintf(target, sizeof target, "%s", argv[1]);
    if (strchr(target, '@')) {
        if (crypto_addr_canon(argv[1], cfg->crypto.case_insensitive, cfg->crypto.strip_detail,
                              target, sizeof target) < 0)
            target[0] = 0;
    } else {
        util_ascii_lower(target);
    }
    if (!target[0] || strchr(target, ' ')) {
        fprintf(stderr, "sealpost: '%s' is not an address or a domain\n", argv[1]);
        return 2;
    }
    if (queue_admin_policy_set(a, target, set ? config_enc_policy_name(p) : NULL, err, sizeof err) <
        0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    printf("policy %s: %s\n", target, set ? config_enc_policy_name(p) : "(default)");
    return 0;
}

int cmd_keys(int argc, char **argv)
{
    const char *path = NULL;
    bool json = false;
    int done = cmd_admin_options(argc, argv, usage, "json", &json, &path);
    if (done >= 0) return done;
    const char *action = optind < argc ? argv[optind] : "";
    int nargs = argc - optind - 1;
    bool ok = (!strcmp(action, "import") && nargs == 1) || (!strcmp(action, "list") && !nargs) ||
              ((!strcmp(action, "show") || !strcmp(action, "delete")) && nargs == 1) ||
              (!strcmp(action, "policy") && nargs >= 1);
    if (!ok || (json && strcmp(action, "list"))) {
        fputs(usage, stderr);
        return 2;
    }
    config_t cfg;
    char err[600], fpr[128];
    int rc = 0;
    queue_admin_t *a = cmd_admin_open(path, &cfg, &rc);
    if (!a) return rc;
    char **rest = argv + optind + 1;
    if (!strcmp(action, "import")) {
        rc = import_keys(a, &cfg, rest[0]);
    } else if (!strcmp(action, "list")) {
        if (json) printf("[");
        rc = queue_admin_key_list(a, list_one, &json, err, sizeof err) < 0 ? 1 : 0;
        if (json) printf("]\n");
        if (rc) fprintf(stderr, "sealpost: %s\n", err);
    } else if (!strcmp(action, "show")) {
        rc = resolve(a, &cfg, rest[0], fpr, sizeof fpr) < 0 ? 1 : show_key(a, fpr);
    } else if (!strcmp(action, "delete")) {
        int found = resolve(a, &cfg, rest[0], fpr, sizeof fpr) < 0
                        ? 0
                        : queue_admin_key_delete(a, fpr, err, sizeof err);
        if (found < 0) fprintf(stderr, "sealpost: %s\n", err);
        if (found > 0) printf("key %s deleted\n", fpr);
        if (found == 0 && strchr(rest[0], '@') == NULL)
            fprintf(stderr, "sealpost: no key %s\n", fpr);
        rc = found > 0 ? 0 : 1;
    } else {
        rc = policy_command(a, &cfg, nargs, rest);
    }
    queue_admin_close(a);
    return rc;
}
