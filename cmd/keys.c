/* sealpost keys: the key directory (OpenPGP keys and S/MIME certificates)
 * and the encryption policy, both in Redis, so every ingress node sees an
 * import within a second. A key is checked with gpg before it is stored: it
 * must be able to take mail now (a valid encryption subkey, not expired,
 * not revoked); a certificate with OpenSSL (dates, key usage, key size, the
 * configured CA and CRL). A revocation, alone or with its key, removes the
 * stored key it verifies against. */
#include "cmd/cmd.h"
#include "crypto/crypto.h"
#include "proto/proto.h"
#include "queue/admin.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: sealpost keys import FILE|-          store the OpenPGP keys or X.509 certificates\n"
    "                                            (PEM, DER, PKCS#7) in FILE (or stdin)\n"
    "       sealpost keys list [--json]          every key and certificate: id, expiry,\n"
    "                                            addresses; a certificate's subject, issuer,\n"
    "                                            serial\n"
    "       sealpost keys show ADDRESS|ID        one key or certificate, with its data\n"
    "       sealpost keys delete ADDRESS|ID      remove one from every address it has\n"
    "       sealpost keys policy set ADDRESS|DOMAIN never|opportunistic|required\n"
    "       sealpost keys policy set ADDRESS|DOMAIN prefer openpgp|smime\n"
    "       sealpost keys policy delete ADDRESS|DOMAIN [prefer]\n"
    "       sealpost keys policy list\n"
    "   (each with [-c FILE])\n"
    "\n"
    "A key is filed under every e-mail address of its valid user IDs, a\n"
    "certificate under those of its subjectAltName (else its subject's\n"
    "emailAddress). Mail to an address is encrypted to its key when the policy\n"
    "(the address's, else its domain's, else [crypto] default_policy) is\n"
    "opportunistic or required; a required recipient without a usable key is\n"
    "refused at RCPT TO. An address may have an OpenPGP key and a certificate:\n"
    "mail uses the one its preference names (else [crypto] prefer) while that\n"
    "one is usable, else the other.\n"
    "\n"
    "Importing a key's revocation certificate (alone, or with the key) removes\n"
    "the stored key it revokes.\n";

#define KEY_INPUT_MAX (4 << 20)

struct import {
    queue_admin_t *admin;
    const config_t *cfg;
    const char *file; /* as given; "-" is stdin */
    unsigned imported, refused;
};

static const char *input_name(const char *file)
{
    return strcmp(file, "-") ? file : "stdin";
}

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

/* A stored key's addresses (LF-separated), the first after lead, the
 * others after sep; as JSON strings with json. */
static void print_address_list(const buf_t *addresses, const char *lead, const char *sep, bool json)
{
    const char *p = addresses->data ? addresses->data : "";
    for (bool first = true; *p; first = false) {
        size_t len = strcspn(p, "\n");
        char one[PROTO_PATH_MAX + 1];
        snprintf(one, sizeof one, "%.*s", (int)len, p);
        fputs(first ? lead : sep, stdout);
        if (json)
            cmd_json_string(one);
        else
            fputs(one, stdout);
        p += len + (p[len] == '\n');
    }
}

/* Each after a space, for the one-line forms. */
static void print_addresses(const buf_t *addresses)
{
    print_address_list(addresses, " ", " ", false);
}

/* A revoked (or expired) key that is stored leaves the directory:
 * importing its revocation is how an operator retires a key. Its addresses
 * are then keyless, and their policy decides what becomes of their mail. */
static bool retire(struct import *im, const crypto_key_info_t *key, queue_key_stored_t *stored)
{
    char err[600];
    queue_key_stored_t old = *stored; /* ours to free */
    /* An old copy whose self-signature lapsed says nothing of the stored
     * one, whose expiry may have been extended since: only a revocation, or
     * a copy that expires no later than the stored one, retires it. A
     * certificate's id is the digest of its DER: the stored one is this very
     * certificate, and what retires it (expiry, a CRL) holds for both. */
    if (key->method != CRYPTO_SMIME && strcmp(key->why_unusable, "revoked") != 0 &&
        (old.expires == 0 || (key->expires != 0 && old.expires > key->expires))) {
        printf("refused %s: %s, but the stored copy is newer (expires ", key->fpr,
               key->why_unusable);
        print_expiry(old.expires);
        printf("): kept\n");
        queue_key_stored_free(&old);
        return false;
    }
    bool removed = queue_admin_key_delete(im->admin, key->fpr, err, sizeof err) > 0;
    if (removed) {
        printf("%s: %s", key->why_unusable, key->fpr);
        print_addresses(&old.addresses);
        printf(", %s removed\n", key->method == CRYPTO_SMIME ? "certificate" : "key");
    } else {
        printf("refused %s: %s, and not removed: %s\n", key->fpr, key->why_unusable, err);
    }
    queue_key_stored_free(&old);
    return removed;
}

/* A key's addresses in canonical form, each once. */
struct addresses {
    char canon[QUEUE_KEY_ADDRS_MAX][300];
    const char *list[QUEUE_KEY_ADDRS_MAX];
    unsigned n;
};

static void canonical_addresses(const config_t *cfg, const crypto_key_info_t *key,
                                struct addresses *a)
{
    a->n = 0;
    for (unsigned i = 0; i < key->n_addresses && a->n < QUEUE_KEY_ADDRS_MAX; i++) {
        char *canon = a->canon[a->n];
        if (crypto_addr_canon(key->addresses[i], cfg->crypto.case_insensitive,
                              cfg->crypto.strip_detail, canon, sizeof a->canon[0]) < 0)
            continue;
        bool dup = false;
        for (unsigned j = 0; j < a->n && !dup; j++)
            dup = !strcmp(a->list[j], canon);
        if (!dup) a->list[a->n++] = canon;
    }
}

/* A certificate that cannot take mail, named by the file, its subject and its id. */
static void refuse_certificate(struct import *im, const crypto_key_info_t *cert, const char *why)
{
    printf("refused %s: certificate %s (%s): %s\n", input_name(im->file),
           cert->subject ? cert->subject : "", cert->fpr, why);
    im->refused++;
}

/* A certificate is stored like a key, in its own fields of each address, so
 * an address may have both. One that fails a check is refused saying which;
 * an expired or CRL-revoked one that is stored leaves the directory. */
static void import_certificate(struct import *im, const crypto_key_info_t *cert)
{
    char err[600];
    if (cert->why_unusable) {
        queue_key_stored_t old;
        int stored =
            cert->retired ? queue_admin_key_get(im->admin, cert->fpr, &old, err, sizeof err) : 0;
        if (stored <= 0)
            refuse_certificate(im, cert, stored < 0 ? err : cert->why_unusable);
        else if (retire(im, cert, &old))
            im->imported++;
        else
            im->refused++;
        return;
    }
    struct addresses a;
    canonical_addresses(im->cfg, cert, &a);
    if (a.n == 0) {
        refuse_certificate(im, cert,
                           "no e-mail address in its subjectAltName or subject emailAddress");
        return;
    }
    queue_key_record_t rec = {.fpr = cert->fpr,
                              .expires = cert->expires,
                              .armored = cert->armored,
                              .armored_len = cert->armored_len,
                              .addresses = a.list,
                              .n_addresses = a.n,
                              .smime = true,
                              .subject = cert->subject,
                              .issuer = cert->issuer,
                              .serial = cert->serial};
    if (queue_admin_key_put(im->admin, &rec, err, sizeof err) < 0) {
        refuse_certificate(im, cert, err);
        return;
    }
    printf("imported: %s", cert->fpr);
    for (unsigned i = 0; i < a.n; i++)
        printf(" %s", a.list[i]);
    printf(" (S/MIME, %s, expires ", cert->subject ? cert->subject : "");
    print_expiry(cert->expires);
    printf(")\n");
    im->imported++;
}

static void import_one(const crypto_key_info_t *key, void *arg)
{
    struct import *im = arg;
    char err[600];
    if (key->method == CRYPTO_SMIME) {
        import_certificate(im, key);
        return;
    }
    if (key->why_unusable) {
        queue_key_stored_t old;
        int stored =
            key->retired ? queue_admin_key_get(im->admin, key->fpr, &old, err, sizeof err) : 0;
        bool done = stored > 0 && retire(im, key, &old);
        if (!key->retired)
            printf("refused %s: %s\n", key->fpr, key->why_unusable);
        else if (stored <= 0)
            printf("refused %s: %s, and %s\n", key->fpr, key->why_unusable,
                   stored < 0 ? err : "not in the directory");
        if (done)
            im->imported++;
        else
            im->refused++;
        return;
    }
    struct addresses a;
    canonical_addresses(im->cfg, key, &a);
    if (a.n == 0) {
        printf("refused %s: no e-mail address in its user IDs\n", key->fpr);
        im->refused++;
        return;
    }
    queue_key_record_t rec = {.fpr = key->fpr,
                              .expires = key->expires,
                              .armored = key->armored,
                              .armored_len = key->armored_len,
                              .addresses = a.list,
                              .n_addresses = a.n};
    if (queue_admin_key_put(im->admin, &rec, err, sizeof err) < 0) {
        printf("refused %s: %s\n", key->fpr, err);
        im->refused++;
        return;
    }
    printf("imported %s expires ", key->fpr);
    print_expiry(key->expires);
    for (unsigned i = 0; i < a.n; i++)
        printf(" %s", a.list[i]);
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
    queue_key_stored_free(&key);
    return found;
}

static int import_keys(queue_admin_t *a, const config_t *cfg, const char *file)
{
    buf_t data;
    buf_init(&data);
    char err[600];
    struct import im = {a, cfg, file, 0, 0};
    int rc = read_input(file, &data);
    if (rc == 0 &&
        (crypto_gpg_init(err, sizeof err) < 0 || keydir_smime_configure(cfg, err, sizeof err) < 0 ||
         crypto_keys_inspect(data.data, data.len, cfg->crypto.home_dir, stored_key, import_one, &im,
                             err, sizeof err) < 0)) {
        fprintf(stderr, "sealpost: %s\n", err);
        rc = -1;
    }
    buf_free(&data);
    if (rc < 0) return 1;
    return im.refused ? 1 : 0;
}

/* What a command names: an id as given (in fprs[0]), or what is filed
 * under an address (its key in fprs[0], its certificate in fprs[1]). */
static int resolve(queue_admin_t *a, const config_t *cfg, const char *what,
                   char fprs[QUEUE_KEY_METHODS][65])
{
    char err[600], canon[300];
    fprs[0][0] = fprs[1][0] = 0;
    if (!strchr(what, '@')) {
        snprintf(fprs[0], 65, "%s", what);
        for (char *p = fprs[0]; *p; p++)
            if (*p >= 'a' && *p <= 'f') *p -= 'a' - 'A';
        return 0;
    }
    if (crypto_addr_canon(what, cfg->crypto.case_insensitive, cfg->crypto.strip_detail, canon,
                          sizeof canon) < 0) {
        fprintf(stderr, "sealpost: '%s' is not an address\n", what);
        return -1;
    }
    if (queue_admin_key_find(a, canon, fprs, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return -1;
    }
    if (!fprs[0][0] && !fprs[1][0]) {
        fprintf(stderr, "sealpost: no key for %s\n", canon);
        return -1;
    }
    if (!fprs[0][0]) memmove(fprs[0], fprs[1], 65), fprs[1][0] = 0;
    return 0;
}

static void list_one(const queue_key_stored_t *key, void *arg)
{
    bool json = *(const bool *)arg;
    static bool first = true;
    if (json) {
        printf("%s{\"fingerprint\":\"%s\",\"method\":\"%s\",\"expires\":%lld,"
               "\"imported\":%lld,\"addresses\":[",
               first ? "" : ",", key->fpr, key->smime ? "smime" : "openpgp", key->expires,
               key->imported);
        print_address_list(&key->addresses, "", ",", true);
        printf("]");
        if (key->smime) {
            printf(",\"subject\":");
            cmd_json_string(key->subject.data);
            printf(",\"issuer\":");
            cmd_json_string(key->issuer.data);
            printf(",\"serial\":");
            cmd_json_string(key->serial.data);
        }
        printf("}");
    } else {
        printf("%s ", key->fpr);
        print_expiry(key->expires);
        print_addresses(&key->addresses);
        if (key->smime)
            printf(" (S/MIME, subject %s, issuer %s, serial %s)", key->subject.data,
                   key->issuer.data, key->serial.data);
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
    printf("%s: %s\nmethod: %s\n", key.smime ? "id" : "fingerprint", key.fpr,
           key.smime ? "S/MIME" : "OpenPGP");
    if (key.smime)
        printf("subject: %s\nissuer: %s\nserial: %s\n", key.subject.data, key.issuer.data,
               key.serial.data);
    printf("expires: ");
    print_expiry(key.expires);
    printf("\nimported: ");
    print_expiry(key.imported);
    printf("\naddresses: ");
    print_address_list(&key.addresses, "", " ", false);
    printf("\n\n%.*s", (int)key.armored.len, key.armored.data);
    queue_key_stored_free(&key);
    return 0;
}

/* show: what an address has, its key and its certificate, one after the other. */
static int show_keys(queue_admin_t *a, const char fprs[QUEUE_KEY_METHODS][65])
{
    int rc = show_key(a, fprs[0]);
    if (rc == 0 && fprs[1][0]) {
        printf("\n");
        rc = show_key(a, fprs[1]);
    }
    return rc;
}

/* delete: an address with both a key and a certificate says which to delete. */
static int delete_key(queue_admin_t *a, const char *what, const char fprs[QUEUE_KEY_METHODS][65])
{
    char err[600];
    if (fprs[1][0]) {
        fprintf(stderr,
                "sealpost: %s has an OpenPGP key (%s) and a certificate (%s): delete one by "
                "its id\n",
                what, fprs[0], fprs[1]);
        return 1;
    }
    int found = queue_admin_key_delete(a, fprs[0], err, sizeof err);
    if (found < 0) fprintf(stderr, "sealpost: %s\n", err);
    if (found > 0) printf("key %s deleted\n", fprs[0]);
    if (found == 0) fprintf(stderr, "sealpost: no key %s\n", fprs[0]);
    return found > 0 ? 0 : 1;
}

/* A policy's target as the directory files it: a canonical address, or a
 * domain in lower case; "" when it is neither. */
static void policy_target(const config_t *cfg, const char *what, char *target, size_t len)
{
    snprintf(target, len, "%s", what);
    if (strchr(target, '@')) {
        if (crypto_addr_canon(what, cfg->crypto.case_insensitive, cfg->crypto.strip_detail, target,
                              len) < 0)
            target[0] = 0;
    } else {
        util_ascii_lower(target);
    }
    if (strchr(target, ' ')) target[0] = 0;
}

static int policy_list(queue_admin_t *a)
{
    char err[600];
    buf_t out;
    buf_init(&out);
    int rc = queue_admin_policy_list(a, &out, err, sizeof err);
    if (rc == 0) fwrite(out.data ? out.data : "", 1, out.len, stdout);
    buf_free(&out);
    if (rc < 0) fprintf(stderr, "sealpost: %s\n", err);
    return rc < 0 ? 1 : 0;
}

/* policy set|delete TARGET [prefer] VALUE: the encryption policy, or which
 * of a key and a certificate an address with both prefers. */
static int policy_command(queue_admin_t *a, const config_t *cfg, int argc, char **argv)
{
    char err[600];
    const char *action = argc > 0 ? argv[0] : "";
    if (!strcmp(action, "list") && argc == 1) return policy_list(a);
    bool prefer = argc >= 3 && !strcmp(argv[2], "prefer");
    bool set = !strcmp(action, "set") && argc == 3 + prefer;
    bool del = !strcmp(action, "delete") && argc == 2 + prefer;
    if (!set && !del) {
        fputs(usage, stderr);
        return 2;
    }
    const char *value = NULL;
    enum enc_policy p;
    enum enc_prefer m;
    if (set && prefer) {
        if (config_parse_enc_prefer(argv[3], &m) < 0) {
            fprintf(stderr, "sealpost: '%s' is not openpgp or smime\n", argv[3]);
            return 2;
        }
        value = config_enc_prefer_name(m);
    } else if (set) {
        if (config_parse_enc_policy(argv[2], &p) < 0) {
            fprintf(stderr, "sealpost: '%s' is not never, opportunistic or required\n", argv[2]);
            return 2;
        }
        value = config_enc_policy_name(p);
    }
    char target[300];
    policy_target(cfg, argv[1], target, sizeof target);
    if (!target[0]) {
        fprintf(stderr, "sealpost: '%s' is not an address or a domain\n", argv[1]);
        return 2;
    }
    int rc = prefer ? queue_admin_prefer_set(a, target, value, err, sizeof err)
                    : queue_admin_policy_set(a, target, value, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    printf("%s %s: %s\n", prefer ? "prefer" : "policy", target, value ? value : "(default)");
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
    char err[600], fprs[QUEUE_KEY_METHODS][65];
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
        rc = resolve(a, &cfg, rest[0], fprs) < 0 ? 1 : show_keys(a, fprs);
    } else if (!strcmp(action, "delete")) {
        rc = resolve(a, &cfg, rest[0], fprs) < 0 ? 1 : delete_key(a, rest[0], fprs);
    } else {
        rc = policy_command(a, &cfg, nargs, rest);
    }
    queue_admin_close(a);
    return rc;
}
