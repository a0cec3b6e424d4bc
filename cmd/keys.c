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

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
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
    "       sealpost keys lookup ADDRESS         discover the address's OpenPGP key now (WKD,\n"
    "                                            then [discovery] keyserver) and file it\n"
    "       sealpost keys policy set ADDRESS|DOMAIN never|opportunistic|required "
    "[discovered|imported]\n"
    "       sealpost keys policy set ADDRESS|DOMAIN prefer openpgp|smime\n"
    "       sealpost keys policy delete ADDRESS|DOMAIN [prefer]\n"
    "       sealpost keys policy list\n"
    "       sealpost keys verify                 check the directory against its authentication\n"
    "       sealpost keys authenticate [VERSION] tag and seal the directory as it is now (once\n"
    "                                            after an upgrade; after checking it by hand),\n"
    "                                            above VERSION when given: the highest= a node\n"
    "                                            logged, to take back a restored directory\n"
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

/* ---- what a write may leave in the directory (issue 18) ----
 *
 * A write is checked against the directory as verified before it and sealed
 * after it. Between the two, anyone with Redis write access could change an
 * entry; sealing what is read back would bless that change. So each write
 * here notes what it may leave: an entry with exactly the content written
 * (by its tag, which under one key is a function of the content), an entry
 * gone, or an address that lost its key and is now keyless or filed under
 * another stored key that lists it (key_put and key_delete relink it in
 * Lua). At the seal, every entry must be one of those or unchanged since
 * the check; anything else is refused, and the directory left unsealed,
 * which every node answers with 451. */

enum expect_kind {
    EXPECT_ITEM,   /* present, with the content written */
    EXPECT_GONE,   /* deleted */
    EXPECT_RELINK, /* an address's key of a method: gone, or another stored key's */
};

struct expect {
    char *entry;
    enum expect_kind kind;
    char tag[SEAL_MAC_LEN + 1]; /* EXPECT_ITEM */
    char *addrs;                /* a stored key's, as written: LF-separated */
    const char *method;         /* a stored key's */
};

struct directory;

struct change {
    const seal_keyring_t *seal;
    const struct directory *before; /* as checked before the first write */
    struct expect *x;
    size_t n, cap;
    bool failed;
};

static const keydir_item_t *directory_key(const struct directory *d, const char *fpr);

static struct expect *expected(const struct change *c, const char *entry)
{
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->x[i].entry, entry)) return &c->x[i];
    return NULL;
}

/* Notes what entry may be after this write; a later write of the same
 * entry replaces what an earlier one noted. */
static struct expect *expect(struct change *c, const char *entry, enum expect_kind kind)
{
    struct expect *x = expected(c, entry);
    if (!x) {
        if (c->n == c->cap) {
            size_t more = c->cap ? 2 * c->cap : 16;
            struct expect *p = realloc(c->x, more * sizeof *p);
            if (!p) {
                c->failed = true;
                return NULL;
            }
            c->x = p;
            c->cap = more;
        }
        x = &c->x[c->n];
        *x = (struct expect){.entry = strdup(entry)};
        if (!x->entry) {
            c->failed = true;
            return NULL;
        }
        c->n++;
    }
    free(x->addrs);
    x->addrs = NULL;
    x->kind = kind;
    return x;
}

static void expect_item(struct change *c, const keydir_item_t *it)
{
    char entry[1024];
    struct expect *x = keydir_item_entry(it, entry, sizeof entry) == 0
                           ? expect(c, entry, EXPECT_ITEM)
                           : (c->failed = true, NULL);
    if (!x) return;
    keydir_item_tag(c->seal, it, x->tag);
    if (it->kind == KEYDIR_ITEM_KEY) {
        x->method = it->method;
        if (!(x->addrs = strdup(it->addrs))) c->failed = true;
    }
}

static void expect_entry(struct change *c, enum keydir_item_kind kind, const char *name,
                         const char *method, enum expect_kind what)
{
    keydir_item_t it = {.kind = kind, .name = name, .method = method};
    char entry[1024];
    if (keydir_item_entry(&it, entry, sizeof entry) < 0 || !expect(c, entry, what))
        c->failed = true;
}

/* The addresses and method key fpr had before this write: as an earlier
 * write of this command left it, else as checked; false when unknown. */
static bool key_before(const struct change *c, const char *fpr, const char **addrs,
                       const char **method)
{
    char entry[1024];
    snprintf(entry, sizeof entry, "k:%s", fpr);
    const struct expect *x = expected(c, entry);
    if (x && x->kind == EXPECT_ITEM) {
        *addrs = x->addrs, *method = x->method;
        return true;
    }
    const keydir_item_t *it = x ? NULL : directory_key(c->before, fpr);
    if (it) *addrs = it->addrs, *method = it->method;
    return it != NULL;
}

static bool listed(const char *addrs, const char *addr)
{
    size_t n = strlen(addr);
    for (const char *p = addrs; p && *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !memcmp(p, addr, n)) return true;
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* Every address key fpr (method) had and keep does not list goes to
 * another key of its method, or is left keyless. */
static void expect_relinks(struct change *c, const char *fpr, const char *keep)
{
    const char *addrs, *method;
    if (!key_before(c, fpr, &addrs, &method)) return;
    char *copy = strdup(addrs);
    if (!copy) c->failed = true;
    for (char *save = NULL, *a = copy ? strtok_r(copy, "\n", &save) : NULL; a;
         a = strtok_r(NULL, "\n", &save))
        if (!listed(keep, a)) expect_entry(c, KEYDIR_ITEM_ADDRESS, a, method, EXPECT_RELINK);
    free(copy);
}

/* key_put: the key under its id and each of its addresses, as in rec. */
static void expect_key_put(struct change *c, const queue_key_record_t *rec)
{
    buf_t addrs;
    buf_init(&addrs);
    for (unsigned i = 0; i < rec->n_addresses; i++)
        if ((i && buf_append(&addrs, "\n", 1) < 0) ||
            buf_append(&addrs, rec->addresses[i], strlen(rec->addresses[i])) < 0)
            c->failed = true;
    if (buf_append(&addrs, "", 1) < 0) c->failed = true; /* NUL-terminated */
    const char *list = addrs.data ? addrs.data : "";
    expect_relinks(c, rec->fpr, list);
    keydir_item_t it = {.kind = KEYDIR_ITEM_KEY,
                        .name = rec->fpr,
                        .method = rec->smime ? "smime" : "openpgp",
                        .addrs = list,
                        .expires = rec->expires,
                        .data = rec->armored,
                        .len = rec->armored_len};
    expect_item(c, &it);
    for (unsigned i = 0; i < rec->n_addresses; i++) {
        keydir_item_t a = {.kind = KEYDIR_ITEM_ADDRESS,
                           .name = rec->addresses[i],
                           .method = it.method,
                           .fpr = rec->fpr,
                           .expires = rec->expires,
                           .data = rec->armored,
                           .len = rec->armored_len};
        expect_item(c, &a);
    }
    buf_free(&addrs);
}

/* key_delete: the key gone, its addresses relinked. */
static void expect_key_gone(struct change *c, const char *fpr)
{
    expect_relinks(c, fpr, "");
    expect_entry(c, KEYDIR_ITEM_KEY, fpr, NULL, EXPECT_GONE);
}

/* policy_set, prefer_set: target's value, or none. */
static void expect_setting(struct change *c, bool prefer, const char *target, const char *value)
{
    enum keydir_item_kind kind = prefer ? KEYDIR_ITEM_PREFER : KEYDIR_ITEM_POLICY;
    if (!value) {
        expect_entry(c, kind, target, NULL, EXPECT_GONE);
        return;
    }
    keydir_item_t it = {.kind = kind, .name = target, .data = value, .len = strlen(value)};
    expect_item(c, &it);
}

static void change_free(struct change *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->x[i].entry);
        free(c->x[i].addrs);
    }
    free(c->x);
    c->x = NULL;
    c->n = c->cap = 0;
}

struct import {
    queue_admin_t *admin;
    const config_t *cfg;
    const char *file; /* as given; "-" is stdin */
    unsigned imported, refused;
    struct change *change;
};

static const char *input_name(const char *file)
{
    return strcmp(file, "-") ? file : "stdin";
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
        cmd_print_time(old.expires);
        printf("): kept\n");
        queue_key_stored_free(&old);
        return false;
    }
    bool removed = queue_admin_key_delete(im->admin, key->fpr, err, sizeof err) > 0;
    if (removed) {
        expect_key_gone(im->change, key->fpr);
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
    expect_key_put(im->change, &rec);
    printf("imported: %s", cert->fpr);
    for (unsigned i = 0; i < a.n; i++)
        printf(" %s", a.list[i]);
    printf(" (S/MIME, %s, expires ", cert->subject ? cert->subject : "");
    cmd_print_time(cert->expires);
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
    expect_key_put(im->change, &rec);
    printf("imported %s expires ", key->fpr);
    cmd_print_time(key->expires);
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

static int import_keys(queue_admin_t *a, const config_t *cfg, const char *file,
                       struct change *change)
{
    buf_t data;
    buf_init(&data);
    char err[600];
    struct import im = {a, cfg, file, 0, 0, change};
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

struct key_listing {
    bool json, first;
};

static void list_one(const queue_key_stored_t *key, void *arg)
{
    struct key_listing *l = arg;
    bool json = l->json, first = l->first;
    if (json) {
        printf("%s{\"fingerprint\":\"%s\",\"method\":\"%s\",\"expires\":%lld,"
               "\"imported\":%lld,\"source\":\"operator\",\"trust\":\"imported\","
               "\"addresses\":[",
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
        cmd_print_time(key->expires);
        print_addresses(&key->addresses);
        if (key->smime)
            printf(" (S/MIME, subject %s, issuer %s, serial %s)", key->subject.data,
                   key->issuer.data, key->serial.data);
        printf("\n");
    }
    l->first = false;
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
    cmd_print_time(key.expires);
    printf("\nimported: ");
    cmd_print_time(key.imported);
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
static int delete_key(queue_admin_t *a, const char *what, const char fprs[QUEUE_KEY_METHODS][65],
                      struct change *change)
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
    if (found > 0) {
        expect_key_gone(change, fprs[0]);
        printf("key %s deleted\n", fprs[0]);
    }
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

/* POLICY [TRUST] as the directory stores it ("required imported"), into
 * out; -1 with the reason printed. */
static int policy_value(int argc, char **argv, char *out, size_t len)
{
    enum enc_policy p;
    int trust;
    snprintf(out, len, "%s%s%s", argv[0], argc > 1 ? " " : "", argc > 1 ? argv[1] : "");
    if (keydir_parse_policy(out, &p, &trust) < 0) {
        fprintf(stderr,
                "sealpost: '%s' is not a policy: never, opportunistic or required, "
                "the last two optionally followed by discovered or imported\n",
                out);
        return -1;
    }
    snprintf(out, len, "%s%s%s", config_enc_policy_name(p), trust < 0 ? "" : " ",
             trust < 0 ? "" : config_trust_name((enum config_trust)trust));
    return 0;
}

/* policy set|delete TARGET [prefer] VALUE: the encryption policy, or which
 * of a key and a certificate an address with both prefers. */
static int policy_command(queue_admin_t *a, const config_t *cfg, int argc, char **argv,
                          struct change *change)
{
    char err[600];
    const char *action = argc > 0 ? argv[0] : "";
    if (!strcmp(action, "list") && argc == 1) return policy_list(a);
    bool prefer = argc >= 3 && !strcmp(argv[2], "prefer");
    bool set = !strcmp(action, "set") && (argc == 3 + prefer || (!prefer && argc == 4));
    bool del = !strcmp(action, "delete") && argc == 2 + prefer;
    if (!set && !del) {
        fputs(usage, stderr);
        return 2;
    }
    const char *value = NULL;
    char policy[64];
    enum enc_prefer m;
    if (set && prefer) {
        if (config_parse_enc_prefer(argv[3], &m) < 0) {
            fprintf(stderr, "sealpost: '%s' is not openpgp or smime\n", argv[3]);
            return 2;
        }
        value = config_enc_prefer_name(m);
    } else if (set && policy_value(argc - 2, argv + 2, policy, sizeof policy) < 0) {
        return 2;
    } else if (set) {
        value = policy;
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
    expect_setting(change, prefer, target, value);
    printf("%s %s: %s\n", prefer ? "prefer" : "policy", target, value ? value : "(default)");
    return 0;
}

/* ---- the directory's authentication (issue 18) ----
 *
 * Every write here goes: read the whole directory and check it against its
 * index (refused when it does not hold: a write must not seal what someone
 * changed in Redis behind our back); make the change (key_put, key_delete,
 * policy_set, prefer_set, which move the version), noting what it may leave
 * (struct change, above); read it all again, check every entry against
 * what was checked and what was noted, tag every entry and seal the index
 * at the new version (key_seal, only while the directory is still at that
 * version). Nodes check lookups against the index; between the change and
 * the seal they keep what they had. */

#define DIRECTORY_READS 8

struct directory {
    const seal_keyring_t *seal;
    long long version, sealed_version, stored;
    char *tag;             /* the index's, NULL when never sealed */
    keydir_index_t *index; /* as stored */
    keydir_item_t *items;  /* every entry, as read; strings owned by the directory */
    size_t n, cap;
    char **addrs; /* every address some key lists, sorted and unique once read */
    size_t n_addrs, cap_addrs;
    char **owned;
    size_t n_owned, cap_owned;
    bool moved; /* read at another version than the index: read again */
    bool failed;
};

static void directory_free(struct directory *d)
{
    for (size_t i = 0; i < d->n_owned; i++)
        free(d->owned[i]);
    free(d->owned);
    free(d->items);
    free(d->addrs);
    free(d->tag);
    keydir_index_free(d->index);
    const seal_keyring_t *seal = d->seal;
    *d = (struct directory){.seal = seal};
}

static bool grow(void **array, size_t *cap, size_t n, size_t size)
{
    if (n < *cap) return true;
    size_t more = *cap ? 2 * *cap : 32;
    void *p = realloc(*array, more * size);
    if (!p) return false;
    *array = p;
    *cap = more;
    return true;
}

/* A copy of len octets (and a NUL) that the directory frees. */
static const char *own(struct directory *d, const char *s, size_t len)
{
    char *c = s ? malloc(len + 1) : NULL;
    if (!s) return NULL;
    if (!c || !grow((void **)&d->owned, &d->cap_owned, d->n_owned, sizeof *d->owned)) {
        free(c);
        d->failed = true;
        return "";
    }
    memcpy(c, s, len);
    c[len] = 0;
    d->owned[d->n_owned++] = c;
    return c;
}

static void add_item(struct directory *d, const keydir_item_t *it)
{
    if (!grow((void **)&d->items, &d->cap, d->n, sizeof *d->items)) {
        d->failed = true;
        return;
    }
    d->items[d->n++] = *it;
}

static void read_index(int status, const char *err, const queue_key_directory_t *dir, void *arg)
{
    (void)status, (void)err;
    struct directory *d = arg;
    d->version = dir->version;
    d->sealed_version = dir->sealed_version;
    d->stored = dir->stored;
    d->tag = dir->tag ? strdup(dir->tag) : NULL;
    d->index = keydir_index_new(dir->entries, dir->tags, dir->n);
    if (!d->index || (dir->tag && !d->tag)) d->failed = true;
}

static void read_key(const queue_key_stored_t *key, void *arg)
{
    struct directory *d = arg;
    const char *addrs = own(d, key->addresses.data ? key->addresses.data : "", key->addresses.len);
    keydir_item_t it = {.kind = KEYDIR_ITEM_KEY,
                        .name = own(d, key->fpr, strlen(key->fpr)),
                        .method = key->smime ? "smime" : "openpgp",
                        .addrs = addrs,
                        .expires = key->expires,
                        .data =
                            own(d, key->armored.data ? key->armored.data : "", key->armored.len),
                        .len = key->armored.len};
    add_item(d, &it);
    char *copy = (char *)own(d, addrs, strlen(addrs));
    for (char *save = NULL, *a = strtok_r(copy, "\n", &save); a; a = strtok_r(NULL, "\n", &save)) {
        if (!grow((void **)&d->addrs, &d->cap_addrs, d->n_addrs, sizeof *d->addrs)) {
            d->failed = true;
            return;
        }
        d->addrs[d->n_addrs++] = a;
    }
}

struct address_read {
    struct directory *d;
    const char *addr;
};

static void read_address(int status, const char *err, const queue_key_found_t *f, void *arg)
{
    (void)status, (void)err;
    struct address_read *r = arg;
    static const char *const methods[QUEUE_KEY_METHODS] = {"openpgp", "smime"};
    if (f->version != r->d->version) r->d->moved = true;
    for (int m = 0; m < QUEUE_KEY_METHODS; m++) {
        const queue_found_key_t *k = &f->keys[m];
        if (!k->fpr[0]) continue;
        size_t len = k->armored ? k->armored_len : 0;
        keydir_item_t it = {.kind = KEYDIR_ITEM_ADDRESS,
                            .name = r->addr,
                            .method = methods[m],
                            .fpr = own(r->d, k->fpr, strlen(k->fpr)),
                            .expires = k->expires,
                            .data = own(r->d, k->armored ? k->armored : "", len),
                            .len = len};
        add_item(r->d, &it);
    }
}

static void read_setting(bool prefer, const char *name, const char *value, void *arg)
{
    struct directory *d = arg;
    keydir_item_t it = {.kind = prefer ? KEYDIR_ITEM_PREFER : KEYDIR_ITEM_POLICY,
                        .name = own(d, name, strlen(name)),
                        .data = own(d, value, strlen(value)),
                        .len = strlen(value)};
    add_item(d, &it);
}

/* The stored key fpr as read, or NULL. */
static const keydir_item_t *directory_key(const struct directory *d, const char *fpr)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->items[i].kind == KEYDIR_ITEM_KEY && !strcmp(d->items[i].name, fpr))
            return &d->items[i];
    return NULL;
}

static int compare_strings(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void check_version(int status, const char *err, const queue_key_directory_t *dir, void *arg)
{
    (void)status, (void)err;
    struct directory *d = arg;
    if (dir->version != d->version) d->moved = true;
}

/* One read of everything: the index, every key, the addresses they list,
 * the policies and preferences; -1 on error, 0 read, 1 moved meanwhile. */
static int directory_read_once(queue_admin_t *a, struct directory *d, char *err, size_t errlen)
{
    directory_free(d);
    if (queue_admin_key_directory(a, read_index, d, err, errlen) < 0 ||
        queue_admin_key_list(a, read_key, d, err, errlen) < 0)
        return -1;
    if (d->n_addrs) qsort(d->addrs, d->n_addrs, sizeof *d->addrs, compare_strings);
    for (size_t i = 0; i < d->n_addrs; i++) {
        if (i && !strcmp(d->addrs[i], d->addrs[i - 1])) continue;
        struct address_read r = {d, d->addrs[i]};
        if (queue_admin_key_address(a, d->addrs[i], read_address, &r, err, errlen) < 0) return -1;
    }
    if (queue_admin_settings(a, read_setting, d, err, errlen) < 0 ||
        queue_admin_key_directory(a, check_version, d, err, errlen) < 0)
        return -1;
    if (d->failed) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return d->moved ? 1 : 0;
}

static int directory_read(queue_admin_t *a, struct directory *d, char *err, size_t errlen)
{
    for (int i = 0; i < DIRECTORY_READS; i++) {
        int rc = directory_read_once(a, d, err, errlen);
        if (rc <= 0) return rc;
    }
    snprintf(err, errlen, "the key directory kept changing; try again");
    return -1;
}

static void say_problem(unsigned *problems, const char *entry, const char *why)
{
    if (++*problems <= 20) fprintf(stderr, "sealpost: key directory: %s: %s\n", entry, why);
}

/* The number of entries in the directory that disagree with its index (each
 * said on stderr), of index entries with no entry, and 1 for an index whose
 * own tag or version does not hold. */
static unsigned directory_check(const struct directory *d)
{
    unsigned problems = 0;
    if (d->sealed_version < 0) {
        if (d->version == 0 && d->n == 0 && keydir_index_size(d->index) == 0 && d->stored == 0)
            return 0; /* never written: nothing to check */
        say_problem(&problems, "index",
                    "none: the directory was written before it had one, or "
                    "by hand");
        return problems;
    }
    int v = keydir_index_verify(d->seal, d->sealed_version, d->index, d->tag);
    if (v != 1)
        say_problem(&problems, "index",
                    v < 0 ? "its tag names a sealing key this node does not have"
                          : "its tag does not hold (changed in Redis, or another sealing key)");
    if (d->version != d->sealed_version) say_problem(&problems, "version", "not the one sealed");
    const char **names = calloc(d->n ? d->n : 1, sizeof *names);
    char **bufs = calloc(d->n ? d->n : 1, sizeof *bufs);
    bool whole = names && bufs; /* every entry named: else no name is left NULL */
    for (size_t i = 0; whole && i < d->n; i++) {
        char entry[1024];
        whole = keydir_item_entry(&d->items[i], entry, sizeof entry) == 0 &&
                (names[i] = bufs[i] = strdup(entry)) != NULL;
        if (!whole) break;
        const char *tag = keydir_index_find(d->index, entry);
        if (!tag)
            say_problem(&problems, entry, "not in the index (added in Redis?)");
        else if (keydir_item_verify(d->seal, &d->items[i], tag) != 1)
            say_problem(&problems, entry, "its tag does not hold (changed in Redis?)");
    }
    keydir_index_t *present = whole ? keydir_index_new(names, names, d->n) : NULL;
    for (size_t i = 0; present && i < keydir_index_size(d->index); i++)
        if (!keydir_index_find(present, keydir_index_entry(d->index, i)))
            say_problem(&problems, keydir_index_entry(d->index, i),
                        "in the index, not in the directory (deleted in Redis?)");
    if (!present) say_problem(&problems, "index", "out of memory, or an entry name too long");
    keydir_index_free(present);
    for (size_t i = 0; bufs && i < d->n; i++)
        free(bufs[i]);
    free(bufs);
    free(names);
    return problems;
}

static const char *entry_verdict(const struct change *c, const struct directory *after,
                                 const keydir_item_t *it, const char *entry, const char *tag);

/* An address's entry for a method whose key this write deleted or took it
 * from: filed now under another stored key, one that may be sealed itself,
 * that lists the address, with that key's expiry and data. */
static bool relinked(const struct change *c, const struct directory *after, const keydir_item_t *it)
{
    const keydir_item_t *k = it->kind == KEYDIR_ITEM_ADDRESS ? directory_key(after, it->fpr) : NULL;
    char entry[1024], tag[SEAL_MAC_LEN + 1];
    if (!k || strcmp(k->method, it->method) || !listed(k->addrs, it->name) ||
        k->expires != it->expires || k->len != it->len ||
        (k->len && memcmp(k->data, it->data, k->len)) ||
        keydir_item_entry(k, entry, sizeof entry) < 0)
        return false;
    keydir_item_tag(c->seal, k, tag);
    return entry_verdict(c, after, k, entry, tag) == NULL;
}

/* Why an entry read after this command's writes may not be sealed (NULL: it
 * may): it must be as checked before them, or as they left it. */
static const char *entry_verdict(const struct change *c, const struct directory *after,
                                 const keydir_item_t *it, const char *entry, const char *tag)
{
    const struct expect *x = expected(c, entry);
    if (!x) {
        const char *old = keydir_index_find(c->before->index, entry);
        if (!old) return "added in Redis during this write";
        return keydir_item_verify(c->seal, it, old) == 1 ? NULL
                                                         : "changed in Redis during this write";
    }
    if (x->kind == EXPECT_ITEM)
        return strcmp(x->tag, tag) ? "not what this write stored (changed in Redis?)" : NULL;
    if (x->kind == EXPECT_GONE) return "still there, though this write deleted it";
    return relinked(c, after, it) ? NULL : "not filed under a stored key that lists it";
}

/* What a write's change may not leave: an entry gone that was checked, or
 * that the write stored, unless the write deleted it. */
static unsigned missing_problems(const struct change *c, const keydir_index_t *present)
{
    unsigned problems = 0;
    const keydir_index_t *was = c->before->index;
    for (size_t i = 0; i < keydir_index_size(was); i++) {
        const char *entry = keydir_index_entry(was, i);
        const struct expect *x = expected(c, entry);
        if (!keydir_index_find(present, entry) && (!x || x->kind == EXPECT_ITEM))
            say_problem(&problems, entry, "deleted in Redis during this write");
    }
    for (size_t i = 0; i < c->n; i++)
        if (c->x[i].kind == EXPECT_ITEM && !keydir_index_find(present, c->x[i].entry))
            say_problem(&problems, c->x[i].entry, "stored by this write, then deleted in Redis");
    return problems;
}

/* Tags every entry read, and seals the index at sealed; 1, 0 moved, -1, or
 * -2 when change (not NULL: what a write noted) does not explain what was
 * read (each entry said on stderr). */
static int directory_seal_once(queue_admin_t *a, const struct directory *d, long long sealed,
                               const struct change *change, char *err, size_t errlen)
{
    char **entries = calloc(d->n ? d->n : 1, sizeof *entries);
    char **tags = calloc(d->n ? d->n : 1, sizeof *tags);
    int rc = entries && tags ? 0 : -1;
    unsigned problems = 0;
    for (size_t i = 0; rc == 0 && i < d->n; i++) {
        char entry[1024];
        entries[i] =
            keydir_item_entry(&d->items[i], entry, sizeof entry) == 0 ? strdup(entry) : NULL;
        tags[i] = malloc(SEAL_MAC_LEN + 1);
        if (!entries[i] || !tags[i]) rc = -1;
        if (rc < 0) break;
        keydir_item_tag(d->seal, &d->items[i], tags[i]);
        const char *why = change ? entry_verdict(change, d, &d->items[i], entry, tags[i]) : NULL;
        if (why) say_problem(&problems, entry, why);
    }
    keydir_index_t *x =
        rc == 0 ? keydir_index_new((const char *const *)entries, (const char *const *)tags, d->n)
                : NULL;
    if (x && change) problems += missing_problems(change, x);
    char tag[SEAL_MAC_LEN + 1];
    if (!x || keydir_index_tag(d->seal, sealed, x, tag) < 0) {
        snprintf(err, errlen, "out of memory, or an entry name too long");
        rc = -1;
    } else if (problems) {
        snprintf(err, errlen, "%u entr%s changed in Redis while this command wrote (above)",
                 problems, problems == 1 ? "y" : "ies");
        rc = -2;
    } else {
        rc = queue_admin_key_seal(a, d->version, sealed, tag, (const char *const *)entries,
                                  (const char *const *)tags, d->n, err, errlen);
    }
    keydir_index_free(x);
    for (size_t i = 0; i < d->n && entries && tags; i++) {
        free(entries[i]);
        free(tags[i]);
    }
    free(entries);
    free(tags);
    return rc;
}

/* Reads the directory and seals it as it is now; move: at a version above
 * the one read, and above `above` too (`keys authenticate`: every node
 * reads the index again, and one that took a higher version than the
 * directory has now takes it back); change: only when it explains what was
 * read. */
static int directory_seal(queue_admin_t *a, struct directory *d, bool move, long long above,
                          const struct change *change, long long *at, char *err, size_t errlen)
{
    for (int i = 0; i < DIRECTORY_READS; i++) {
        if (directory_read(a, d, err, errlen) < 0) return -1;
        /* INCR made neither: someone SET it (a negative one is sealed above 0) */
        if (d->version >= LLONG_MAX - 1 || (d->version < 0 && !move)) {
            snprintf(err, errlen,
                     "the directory's version %lld was not made by sealpost: `sealpost keys "
                     "authenticate VERSION` with the highest= a node logged%s",
                     d->version, d->version < 0 ? "" : ", after setting it back with redis-cli");
            return -1;
        }
        long long base = (d->version < 0 ? 0 : d->version) + move;
        long long sealed = base > above ? base : above + 1;
        int rc = directory_seal_once(a, d, sealed, change, err, errlen);
        if (rc > 0 && at) *at = sealed;
        if (rc != 0) return rc < 0 ? -1 : 0;
    }
    snprintf(err, errlen, "the key directory kept changing; try again");
    return -1;
}

/* Before a write: the directory as read must hold against its index. */
static int directory_trusted(queue_admin_t *a, struct directory *d)
{
    char err[600];
    if (directory_read(a, d, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return -1;
    }
    unsigned problems = directory_check(d);
    if (!problems) return 0;
    fprintf(stderr,
            "sealpost: refused: the key directory in Redis does not match its authentication "
            "(%u problem%s above): nodes answer 451 to its recipients. Check what is stored "
            "(`sealpost keys list`, `keys policy list`), remove what is not yours, then "
            "`sealpost keys authenticate`\n",
            problems, problems == 1 ? "" : "s");
    return -1;
}

/* After a write: sealed as it is now, if the write's change explains it; -1 said. */
static int directory_sealed(queue_admin_t *a, const struct change *change)
{
    char err[600];
    struct directory after = {.seal = change->seal};
    int rc =
        change->failed ? -1 : directory_seal(a, &after, false, -1, change, NULL, err, sizeof err);
    if (change->failed) snprintf(err, sizeof err, "out of memory");
    directory_free(&after);
    if (rc == 0) return 0;
    fprintf(stderr,
            "sealpost: the change is stored but not sealed (%s): nodes answer 451 to its "
            "recipients. Check what is stored (`sealpost keys verify`, `keys list`), remove what "
            "is not yours, then `sealpost keys authenticate`\n",
            err);
    return -1;
}

/* keys verify: the check alone; keys authenticate: seal what is there. */
static int directory_command(queue_admin_t *a, struct directory *d, bool authenticate,
                             const char *above)
{
    char err[600];
    unsigned long long floor = 0;
    if (above && (util_parse_decimal(above, strlen(above), &floor) < 0 || floor >= LLONG_MAX - 1)) {
        fprintf(stderr, "sealpost: '%s' is not a version\n", above);
        return 2;
    }
    if (authenticate) {
        long long sealed = 0;
        if (directory_seal(a, d, true, above ? (long long)floor : -1, NULL, &sealed, err,
                           sizeof err) < 0) {
            fprintf(stderr, "sealpost: %s\n", err);
            return 1;
        }
        printf("key directory authenticated: %zu entries, version %lld\n", d->n, sealed);
        return 0;
    }
    if (directory_trusted(a, d) < 0) return 1;
    printf("key directory verified: %zu entries, version %lld\n", d->n, d->version);
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
    bool ok =
        (!strcmp(action, "import") && nargs == 1) || (!strcmp(action, "list") && !nargs) ||
        ((!strcmp(action, "show") || !strcmp(action, "delete") || !strcmp(action, "lookup")) &&
         nargs == 1) ||
        (!strcmp(action, "policy") && nargs >= 1) ||
        (!strcmp(action, "authenticate") && nargs <= 1) || (!strcmp(action, "verify") && !nargs);
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
    /* what writes, and keys verify, need the sealing key to check and seal */
    bool writes = !strcmp(action, "import") || !strcmp(action, "delete") ||
                  (!strcmp(action, "policy") && nargs >= 1 && strcmp(rest[0], "list"));
    bool lookup = !strcmp(action, "lookup");
    bool directory =
        writes || lookup || !strcmp(action, "authenticate") || !strcmp(action, "verify");
    struct directory dir = {0};
    seal_keyring_t *seal = directory ? cmd_seal_keyring(&cfg, a, &rc) : NULL;
    dir.seal = seal;
    struct change change = {.seal = seal, .before = &dir};
    if (directory && !seal) {
        queue_admin_close(a);
        return rc;
    }
    bool refused = writes && directory_trusted(a, &dir) < 0;
    if (refused) {
        rc = 1;
    } else if (lookup) {
        rc = cmd_keys_lookup(a, &cfg, seal, rest[0]);
    } else if (!strcmp(action, "authenticate") || !strcmp(action, "verify")) {
        rc = directory_command(a, &dir, !strcmp(action, "authenticate"), nargs ? rest[0] : NULL);
    } else if (!strcmp(action, "import")) {
        rc = import_keys(a, &cfg, rest[0], &change);
    } else if (!strcmp(action, "list")) {
        if (json) printf("[");
        struct key_listing listing = {json, true};
        rc = queue_admin_key_list(a, list_one, &listing, err, sizeof err) < 0 ? 1 : 0;
        if (rc) fprintf(stderr, "sealpost: %s\n", err);
        if (!rc && cmd_keys_list_discovered(a, json, listing.first) < 0) rc = 1;
        if (json) printf("]\n");
    } else if (!strcmp(action, "show")) {
        rc = resolve(a, &cfg, rest[0], fprs) < 0 ? 1 : show_keys(a, fprs);
    } else if (!strcmp(action, "delete")) {
        rc = resolve(a, &cfg, rest[0], fprs) < 0 ? 1 : delete_key(a, rest[0], fprs, &change);
    } else {
        rc = policy_command(a, &cfg, nargs, rest, &change);
    }
    /* sealed whatever the write came to: part of an import may be stored */
    if (writes && !refused && directory_sealed(a, &change) < 0) rc = 1;
    change_free(&change);
    directory_free(&dir);
    seal_keyring_free(seal);
    queue_admin_close(a);
    return rc;
}
