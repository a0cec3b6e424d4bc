/* OpenPGP through GPGME: reading keys for the directory, and encrypting.
 *
 * GPGME runs a gpg process per operation, and gpg processes that share a
 * home serialise on its keyring lock, so every thread that encrypts gets a
 * context and a GnuPG home of its own, made on first use under one private
 * parent directory that is removed at exit. The homes hold public keys only,
 * imported from the directory by fingerprint as jobs need them; gpg is told
 * never to look keys up anywhere but locally. Trust is ours: a key is in the
 * directory because it was validated when imported, so encryption uses
 * always-trust. */
#include "crypto/crypto.h"
#include "crypto/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <gpgme.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char gpg_conf[] = "auto-key-locate local\n"
                               "no-auto-key-retrieve\n"
                               "no-auto-key-import\n"
                               "trust-model always\n"
                               "no-greeting\n"
                               "no-permission-warning\n";

/* The gpg GPGME runs: $SEALPOST_GPG_PROGRAM, else GPGME's own choice (NULL). */
static const char *gpg_program;

int crypto_gpg_init(char *err, size_t errlen)
{
    if (!gpgme_check_version(NULL)) {
        snprintf(err, errlen, "GPGME failed to initialise");
        return -1;
    }
    const char *program = getenv("SEALPOST_GPG_PROGRAM");
    gpg_program = program && program[0] ? program : NULL;
    gpgme_error_t e =
        gpg_program ? gpgme_set_engine_info(GPGME_PROTOCOL_OpenPGP, gpg_program, NULL) : 0;
    if (!e) e = gpgme_engine_check_version(GPGME_PROTOCOL_OpenPGP);
    if (e) {
        snprintf(err, errlen, "no usable gpg for GPGME: %s (install the gpg package)",
                 gpgme_strerror(e));
        return -1;
    }
    return 0;
}

/* A fresh home: mode 0700 (gpg insists) with our gpg.conf. */
static int home_make(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create GnuPG home %s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/gpg.conf", dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(gpg_conf, f) == EOF || fclose(f) == EOF) {
        snprintf(err, errlen, "cannot write %s", path);
        return -1;
    }
    return 0;
}

static gpgme_ctx_t context_for(const char *home, char *err, size_t errlen)
{
    gpgme_ctx_t ctx = NULL;
    gpgme_error_t e = gpgme_new(&ctx);
    if (!e) e = gpgme_set_protocol(ctx, GPGME_PROTOCOL_OpenPGP);
    if (!e) e = gpgme_ctx_set_engine_info(ctx, GPGME_PROTOCOL_OpenPGP, gpg_program, home);
    if (e) {
        snprintf(err, errlen, "GPGME context: %s", gpgme_strerror(e));
        if (ctx) gpgme_release(ctx);
        return NULL;
    }
    gpgme_set_armor(ctx, 1);
    gpgme_set_offline(ctx, 1);
    return ctx;
}

static const char *homes_base(const char *parent)
{
    const char *base = parent && parent[0] ? parent : getenv("TMPDIR");
    return base && base[0] ? base : "/tmp";
}

int crypto_homes_create(const char *parent, char *out, size_t outlen, char *err, size_t errlen)
{
    const char *base = homes_base(parent);
    int n = snprintf(out, outlen, "%s/sealpost-gnupg-XXXXXX", base);
    if (n < 0 || (size_t)n >= outlen || !mkdtemp(out)) {
        snprintf(err, errlen, "cannot create a private directory under %s: %s", base,
                 strerror(errno));
        return -1;
    }
    return 0;
}

/* The name is known (logs, ps), so what stands there after the directory
 * vanished may be someone else's: only a directory of ours that nobody
 * else may enter is used. */
int crypto_homes_check(const char *parent, const char *dir, char *err, size_t errlen)
{
    if (!dir || !dir[0]) { /* none made yet: whether one can be */
        const char *base = homes_base(parent);
        if (access(base, W_OK | X_OK) < 0) {
            snprintf(err, errlen, "cannot create GnuPG homes under %s: %s", base, strerror(errno));
            return -1;
        }
        return 0;
    }
    struct stat st;
    if (lstat(dir, &st) < 0 &&
        (errno != ENOENT || (mkdir(dir, 0700) < 0 && errno != EEXIST) || lstat(dir, &st) < 0)) {
        snprintf(err, errlen, "cannot re-create the GnuPG homes' directory %s: %s", dir,
                 strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
        snprintf(err, errlen, "%s is not the GnuPG homes' private directory any more", dir);
        return -1;
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

void crypto_homes_remove(const char *dir)
{
    if (dir && dir[0]) nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- reading keys ---- */

int crypto_addr_canon(const char *addr, bool case_insensitive, bool strip_detail, char *out,
                      size_t outlen)
{
    const char *at = strrchr(addr, '@');
    if (!at || at == addr || !at[1]) return -1;
    size_t local = (size_t)(at - addr);
    if (strip_detail) {
        const char *plus = memchr(addr, '+', local);
        if (plus && plus > addr) local = (size_t)(plus - addr);
    }
    int n = snprintf(out, outlen, "%.*s%s", (int)local, addr, at);
    if (n < 0 || (size_t)n >= outlen) return -1;
    for (size_t i = 0; out[i]; i++) {
        bool in_domain = i >= local;
        if ((in_domain || case_insensitive) && out[i] >= 'A' && out[i] <= 'Z') out[i] += 'a' - 'A';
    }
    return 0;
}

/* Why a key cannot take mail, or NULL; *expires is when it stops being
 * usable (0: never): the latest usable encryption subkey's expiry, or the
 * primary key's, whichever comes first. */
static const char *key_unusable(gpgme_key_t key, long long *expires)
{
    *expires = 0;
    if (key->revoked) return "revoked";
    if (key->expired) return "expired";
    if (key->disabled) return "disabled";
    if (key->invalid) return "invalid";
    bool found = false;
    long long latest = 0;
    for (gpgme_subkey_t sk = key->subkeys; sk; sk = sk->next) {
        if (!sk->can_encrypt || sk->revoked || sk->expired || sk->disabled || sk->invalid) continue;
        if (!found || (latest && (sk->expires == 0 || sk->expires > latest))) latest = sk->expires;
        found = true;
    }
    if (!found) return key->can_encrypt ? "no valid encryption subkey" : "cannot encrypt";
    long long primary = key->subkeys ? key->subkeys->expires : 0;
    *expires = primary && (latest == 0 || primary < latest) ? primary : latest;
    return NULL;
}

static const char *key_unusable_now(gpgme_key_t key)
{
    long long expires;
    return key_unusable(key, &expires);
}

static int key_export(gpgme_ctx_t ctx, const char *fpr, crypto_key_info_t *info)
{
    gpgme_data_t out = NULL;
    if (gpgme_data_new(&out)) return -1;
    int rc = -1;
    if (!gpgme_op_export(ctx, fpr, GPGME_EXPORT_MODE_MINIMAL, out)) {
        size_t len = 0;
        char *data = gpgme_data_release_and_get_mem(out, &len);
        out = NULL;
        if (data && len) {
            info->armored = malloc(len + 1);
            if (info->armored) {
                memcpy(info->armored, data, len);
                info->armored[len] = 0;
                info->armored_len = len;
                rc = 0;
            }
        }
        gpgme_free(data);
    }
    if (out) gpgme_data_release(out);
    return rc;
}

/* Whether a user ID's address can be one of a key's addresses. A user ID
 * is any octets, and GPGME hands back what gpg escaped ("\n" as a line
 * feed): the directory keeps a key's addresses one to a line and looks them
 * up as RCPT names them, so one with a control octet or a space in it
 * would be read back as other addresses, or as none that mail could reach. */
static bool uid_address_usable(const struct _gpgme_user_id *uid)
{
    if (uid->revoked || uid->invalid || !uid->email || !strchr(uid->email, '@')) return false;
    for (const unsigned char *p = (const unsigned char *)uid->email; *p; p++)
        if (*p <= ' ' || *p == 0x7f) return false;
    return true;
}

static int key_describe(gpgme_ctx_t ctx, gpgme_key_t key, crypto_key_info_t *info)
{
    snprintf(info->fpr, sizeof info->fpr, "%s", key->fpr ? key->fpr : "");
    info->why_unusable = key_unusable(key, &info->expires);
    info->retired = key->revoked || key->expired;
    unsigned n = 0;
    for (gpgme_user_id_t uid = key->uids; uid; uid = uid->next)
        n++;
    info->addresses = calloc(n ? n : 1, sizeof *info->addresses);
    if (!info->addresses) return -1;
    for (gpgme_user_id_t uid = key->uids; uid; uid = uid->next) {
        if (!uid_address_usable(uid)) continue;
        bool seen = false;
        for (unsigned i = 0; i < info->n_addresses && !seen; i++)
            seen = info->addresses[i] && !strcasecmp(info->addresses[i], uid->email);
        if (seen) continue;
        if (!(info->addresses[info->n_addresses] = strdup(uid->email))) return -1;
        info->n_addresses++;
    }
    return key_export(ctx, info->fpr, info);
}

/* The fingerprints an inspection reports, in the order found, once each. */
struct fpr_list {
    char (*fpr)[CRYPTO_FPR_MAX + 1];
    unsigned n, cap;
};

static int fpr_add(struct fpr_list *l, const char *fpr)
{
    if (!fpr || strlen(fpr) > CRYPTO_FPR_MAX) return 0;
    for (unsigned i = 0; i < l->n; i++)
        if (!strcmp(l->fpr[i], fpr)) return 0;
    if (l->n == l->cap) {
        unsigned cap = l->cap ? 2 * l->cap : 8;
        void *p = realloc(l->fpr, cap * sizeof *l->fpr);
        if (!p) return -1;
        l->fpr = p, l->cap = cap;
    }
    snprintf(l->fpr[l->n++], sizeof l->fpr[0], "%s", fpr);
    return 0;
}

static gpgme_error_t import_mem(gpgme_ctx_t ctx, const void *data, size_t len)
{
    gpgme_data_t in = NULL;
    gpgme_error_t e = gpgme_data_new_from_mem(&in, data, len, 0);
    if (!e) e = gpgme_op_import(ctx, in);
    if (in) gpgme_data_release(in);
    return e;
}

/* What one inspection has found and is to report. */
struct inspection {
    gpgme_ctx_t ctx;
    crypto_stored_key_fn stored;
    void (*cb)(const crypto_key_info_t *key, void *arg);
    void *arg;
    struct fpr_list keys;
    unsigned reported;
    char *err;
    size_t errlen;
};

static void report_problem(struct inspection *in, const char *issuer, const char *why)
{
    crypto_key_info_t info = {.why_unusable = why};
    snprintf(info.fpr, sizeof info.fpr, "%s", issuer);
    in->cb(&info, in->arg);
    in->reported++;
}

/* The key a revocation names, in the home: from the input, else the
 * directory's copy imported now. 1 with its fingerprint; 0 when neither has
 * it; -1 on failure. */
static int revoked_key(struct inspection *in, const char *issuer, char *fpr, size_t fprlen)
{
    gpgme_key_t key = NULL;
    if (gpgme_get_key(in->ctx, issuer, &key, 0) || !key) {
        buf_t copy;
        buf_init(&copy);
        int found = in->stored ? in->stored(issuer, &copy, in->arg, in->err, in->errlen) : 0;
        if (found > 0 && import_mem(in->ctx, copy.data, copy.len)) found = 0;
        buf_free(&copy);
        if (found <= 0 || gpgme_get_key(in->ctx, issuer, &key, 0) || !key)
            return found < 0 ? -1 : 0;
    }
    snprintf(fpr, fprlen, "%s", key->fpr ? key->fpr : "");
    gpgme_key_unref(key);
    return fpr[0] ? 1 : 0;
}

/* Applies one key revocation certificate: gpg imports it only into a home
 * that holds its key, and checks its signature against that key there, so
 * the key's revoked flag afterwards is the verdict. */
static int apply_revocation(struct inspection *in, const openpgp_packet_t *p, const char *issuer)
{
    char fpr[CRYPTO_FPR_MAX + 1];
    int found = revoked_key(in, issuer, fpr, sizeof fpr);
    if (found < 0) return -1;
    if (found == 0) {
        report_problem(in, issuer, "a revocation of a key that is not in the directory");
        return 0;
    }
    gpgme_key_t key = NULL;
    bool revoked = !import_mem(in->ctx, p->raw, p->raw_len) &&
                   !gpgme_get_key(in->ctx, fpr, &key, 0) && key && key->revoked;
    if (key) gpgme_key_unref(key);
    if (!revoked) {
        report_problem(in, fpr, "a revocation that does not verify against the key");
        return 0;
    }
    return fpr_add(&in->keys, fpr);
}

/* The key revocations at the head of one stream of packets, before any
 * key: a bare certificate. One after a key is the key's own, which gpg has
 * read with it. */
static int revocations_in(const char *kind, size_t kind_len, const unsigned char *bin, size_t len,
                          void *arg)
{
    (void)kind, (void)kind_len;
    struct inspection *in = arg;
    openpgp_packet_t p;
    size_t pos = 0;
    while (openpgp_packet_next(bin, len, &pos, &p) == 1 && p.tag == OPENPGP_TAG_SIGNATURE) {
        unsigned type;
        char issuer[OPENPGP_ISSUER_MAX];
        if (openpgp_signature_issuer(&p, &type, issuer, sizeof issuer) < 0) {
            /* it may be a revocation: never ignored without a word */
            report_problem(in, "", "a signature that cannot be read (no issuer found)");
            continue;
        }
        if (type == OPENPGP_SIG_KEY_REVOCATION && apply_revocation(in, &p, issuer) < 0) return -1;
    }
    return 0;
}

static bool is_armored(const char *data, size_t len)
{
    return memmem(data, len, "-----BEGIN PGP ", 15) != NULL;
}

static int report_keys(struct inspection *in)
{
    for (unsigned i = 0; i < in->keys.n; i++) {
        gpgme_key_t key = NULL;
        if (gpgme_get_key(in->ctx, in->keys.fpr[i], &key, 0) || !key) continue;
        crypto_key_info_t info = {0};
        if (key_describe(in->ctx, key, &info) == 0) {
            in->cb(&info, in->arg);
            in->reported++;
        }
        crypto_key_info_free(&info);
        gpgme_key_unref(key);
    }
    return 0;
}

static int inspect(struct inspection *in, const char *data, size_t len)
{
    gpgme_error_t e = import_mem(in->ctx, data, len);
    if (e) {
        snprintf(in->err, in->errlen, "gpg could not read the keys: %s", gpgme_strerror(e));
        return -1;
    }
    /* The import result lives only until the next operation on ctx. */
    gpgme_import_result_t result = gpgme_op_import_result(in->ctx);
    for (gpgme_import_status_t st = result ? result->imports : NULL; st; st = st->next)
        if (!st->result && fpr_add(&in->keys, st->fpr) < 0) goto oom;
    int r = is_armored(data, len) ? openpgp_armor_each(data, len, revocations_in, in)
                                  : revocations_in("", 0, (const unsigned char *)data, len, in);
    if (r < 0) {
        if (!in->err[0]) goto oom;
        return -1;
    }
    return report_keys(in);
oom:
    snprintf(in->err, in->errlen, "out of memory");
    return -1;
}

int crypto_keys_inspect(const char *data, size_t len, const char *parent,
                        crypto_stored_key_fn stored,
                        void (*cb)(const crypto_key_info_t *key, void *arg), void *arg, char *err,
                        size_t errlen)
{
    /* X.509 is OpenSSL's to read; OpenPGP armor beside it still gpg's. */
    int certs = smime_inspect(data, len, cb, arg, err, errlen);
    if (certs < 0) return -1;
    if (certs > 0 && !is_armored(data, len)) return 0;
    char home[PATH_MAX];
    if (crypto_homes_create(parent, home, sizeof home, err, errlen) < 0) return -1;
    struct inspection in = {.stored = stored, .cb = cb, .arg = arg, .err = err, .errlen = errlen};
    int rc = -1;
    err[0] = 0;
    if (home_make(home, err, errlen) == 0 && (in.ctx = context_for(home, err, errlen)) &&
        inspect(&in, data, len) == 0) {
        rc = in.reported || certs > 0 ? 0 : -1; /* the certificates were reported */
        if (rc < 0) snprintf(err, errlen, "no OpenPGP public key or key revocation in the input");
    }
    free(in.keys.fpr);
    if (in.ctx) gpgme_release(in.ctx);
    crypto_homes_remove(home);
    return rc;
}

/* ---- encrypting, one home per thread ---- */

/* Keys a thread has imported, by fingerprint and a digest of the data they
 * came from: a hit costs no gpg process (a lookup would cost one, as much as
 * the encryption itself); new data for a fingerprint is imported again.
 *
 * The thread's home holds exactly the keys its cache lists. gpg merges an
 * import into the key the keyring already has, so new data for a
 * fingerprint would keep every subkey of the old (one the operator dropped
 * as compromised, say), and gpg encrypts to the newest of them: a warm
 * thread would go on using what a fresh one never sees. So a key leaves the
 * home before its new data comes in, and when its slot goes to another.
 *
 * A slot the current job uses is never given to another key of that job:
 * its key would leave the home before gpg encrypts to it. A job with more
 * keys than a thread's home holds gets a home of its own for that job. */
#define KEY_CACHE 64

struct cached_key {
    char fpr[CRYPTO_FPR_MAX + 1];
    unsigned char digest[16];
    gpgme_key_t key;  /* NULL: a free slot, nothing of it in the home */
    unsigned long op; /* the last job that used it: not reused within that job */
};

struct gpg_thread {
    gpgme_ctx_t ctx; /* NULL: the home is to be made (again) */
    char parent[PATH_MAX];
    char home[PATH_MAX];
    struct cached_key *keys;
    unsigned cap;
    unsigned next;    /* where the search for a slot to reuse starts */
    unsigned long op; /* the current job */
    bool unlisted;    /* the home may hold a key no slot lists: made again before use */
    /* the watchdog's, under watch_lock */
    long long deadline; /* CLOCK_MONOTONIC ms; 0: no operation running */
    bool expired;       /* the deadline passed and gpg was killed */
    bool watched;
    struct gpg_thread *watch_next;
};

static _Thread_local struct gpg_thread *this_thread;
static atomic_uint threads_made;
static atomic_uint homes_remade;

unsigned crypto_homes_remade(void)
{
    return atomic_load(&homes_remade);
}

/* Makes the thread's home afresh, its parent too when it has gone: the keys
 * went with the old one, so the cache is emptied. */
static int home_remake(struct gpg_thread *t, char *err, size_t errlen)
{
    if (t->ctx) {
        gpgme_release(t->ctx);
        t->ctx = NULL;
        atomic_fetch_add(&homes_remade, 1);
    }
    for (unsigned i = 0; i < t->cap; i++) {
        if (t->keys[i].key) gpgme_key_unref(t->keys[i].key);
        t->keys[i].key = NULL;
    }
    t->unlisted = false;
    /* The parent first: what stands at its known name is removed from only
     * once it is ours again. */
    if (crypto_homes_check(NULL, t->parent, err, errlen) < 0) return -1;
    crypto_homes_remove(t->home);
    if (home_make(t->home, err, errlen) < 0 || !(t->ctx = context_for(t->home, err, errlen)))
        return -1;
    return 0;
}

/* Whether the home is still as made: a cleaner of temporary files may have
 * removed it, its parent, or files in it. Two stat calls; a gpg process
 * costs a thousand times more. */
static bool home_intact(const struct gpg_thread *t)
{
    char path[PATH_MAX + 16];
    struct stat st;
    bool any_key = false;
    for (unsigned i = 0; i < t->cap && !any_key; i++)
        any_key = t->keys[i].key != NULL;
    snprintf(path, sizeof path, "%s/gpg.conf", t->home);
    if (!t->ctx || t->unlisted || stat(path, &st) < 0) return false;
    snprintf(path, sizeof path, "%s/pubring.kbx", t->home);
    return !any_key || stat(path, &st) == 0;
}

/* A home of cap slots under parent, not made yet (its first use makes
 * it); NULL when memory ran out. */
static struct gpg_thread *home_new(const char *parent, unsigned cap, char *err, size_t errlen)
{
    struct gpg_thread *t = calloc(1, sizeof *t);
    if (t && !(t->keys = calloc(cap, sizeof *t->keys))) {
        free(t);
        t = NULL;
    }
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->cap = cap;
    snprintf(t->parent, sizeof t->parent, "%s", parent);
    snprintf(t->home, sizeof t->home, "%s/t%u", parent, atomic_fetch_add(&threads_made, 1));
    return t;
}

/* The calling thread's GnuPG home, made on first use (by encrypt_in, as
 * again whenever it is not intact). */
static struct gpg_thread *thread_home(const char *parent, char *err, size_t errlen)
{
    if (!this_thread) this_thread = home_new(parent, KEY_CACHE, err, errlen);
    return this_thread;
}

/* Whether the home still holds a key with this fingerprint. */
static bool key_present(struct gpg_thread *t, const char *fpr)
{
    gpgme_key_t key = NULL;
    gpgme_error_t e = gpgme_get_key(t->ctx, fpr, &key, 0);
    if (key) gpgme_key_unref(key);
    return !e || gpgme_err_code(e) != GPG_ERR_EOF;
}

/* Takes the slot's key out of the home and frees the slot. */
static int slot_clear(struct gpg_thread *t, struct cached_key *c, char *err, size_t errlen)
{
    if (!c->key) return 0;
    gpgme_error_t e = gpgme_op_delete_ext(t->ctx, c->key, GPGME_DELETE_FORCE);
    gpgme_key_unref(c->key);
    c->key = NULL;
    if (e && key_present(t, c->fpr)) {
        t->unlisted = true;
        snprintf(err, errlen, "key %s: cannot take it out of the GnuPG home: %s", c->fpr,
                 gpgme_strerror(e));
        return -1;
    }
    return 0;
}

/* The slot for a fingerprint: its own, else a free one, else the next in
 * turn that the current job does not use; *hit when the slot already holds
 * this very data. NULL when the job uses every slot (it has more keys than
 * the home holds: crypto_encrypt gives such a job a home of its own). */
static struct cached_key *slot_for(struct gpg_thread *t, const char *fpr,
                                   const unsigned char digest[16], bool *hit)
{
    *hit = false;
    for (unsigned i = 0; i < t->cap; i++) {
        struct cached_key *c = &t->keys[i];
        if (c->key && !strcmp(c->fpr, fpr)) {
            *hit = !memcmp(c->digest, digest, sizeof c->digest);
            return c;
        }
    }
    for (unsigned i = 0; i < t->cap; i++)
        if (!t->keys[i].key) return &t->keys[i];
    for (unsigned i = 0; i < t->cap; i++) {
        struct cached_key *c = &t->keys[(t->next + i) % t->cap];
        if (c->op != t->op) {
            t->next = (unsigned)(c - t->keys + 1) % t->cap;
            return c;
        }
    }
    return NULL;
}

/* The key with this fingerprint in the thread's home, imported from the
 * directory's copy when the home has not got this very data. */
static gpgme_key_t key_in_home(struct gpg_thread *t, const crypto_rcpt_key_t *k, char *err,
                               size_t errlen)
{
    unsigned char digest[16];
    crypto_generichash(digest, sizeof digest, (const unsigned char *)k->armored, k->armored_len,
                       NULL, 0);
    bool hit;
    struct cached_key *c = slot_for(t, k->fpr, digest, &hit);
    if (!c) {
        snprintf(err, errlen, "key %s: no free key slot in the GnuPG home", k->fpr);
        return NULL;
    }
    c->op = t->op;
    if (hit) {
        gpgme_key_ref(c->key);
        return c->key;
    }
    if (slot_clear(t, c, err, errlen) < 0) return NULL;
    gpgme_key_t key = NULL;
    gpgme_data_t in = NULL;
    gpgme_error_t e = gpgme_data_new_from_mem(&in, k->armored, k->armored_len, 0);
    if (!e) e = gpgme_op_import(t->ctx, in);
    if (in) gpgme_data_release(in);
    if (!e) e = gpgme_get_key(t->ctx, k->fpr, &key, 0);
    if (e || !key) {
        t->unlisted = true; /* the import may have left it, in no slot: the home is made again */
        snprintf(err, errlen, "key %s: %s", k->fpr, e ? gpgme_strerror(e) : "not in its data");
        return NULL;
    }
    snprintf(c->fpr, sizeof c->fpr, "%s", k->fpr);
    memcpy(c->digest, digest, sizeof c->digest);
    c->key = key; /* listed, so that it leaves the home with its slot */
    const char *why = key_unusable_now(key);
    if (why) {
        snprintf(err, errlen, "key %s: %s", k->fpr, why);
        char ignored[8];
        slot_clear(t, c, ignored, sizeof ignored);
        return NULL;
    }
    gpgme_key_ref(key);
    return key;
}

static int encrypt_in_home(struct gpg_thread *t, const crypto_rcpt_key_t *keys, unsigned n,
                           const char *plain, size_t len, buf_t *armor, char *err, size_t errlen)
{
    gpgme_key_t *list = calloc((size_t)n + 1, sizeof(gpgme_key_t)); /* NULL-terminated */
    if (!list) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = -1;
    unsigned got = 0;
    t->op++;
    while (got < n && (list[got] = key_in_home(t, &keys[got], err, errlen)))
        got++;
    gpgme_data_t in = NULL, out = NULL;
    if (got == n) {
        gpgme_error_t e = gpgme_data_new_from_mem(&in, plain, len, 0);
        if (!e) e = gpgme_data_new(&out);
        if (!e) e = gpgme_op_encrypt(t->ctx, list, GPGME_ENCRYPT_ALWAYS_TRUST, in, out);
        gpgme_encrypt_result_t result = e ? NULL : gpgme_op_encrypt_result(t->ctx);
        if (e || !result || result->invalid_recipients) {
            snprintf(err, errlen, "gpg encryption failed: %s",
                     e ? gpgme_strerror(e) : "a recipient key was refused");
        } else {
            size_t olen = 0;
            char *data = gpgme_data_release_and_get_mem(out, &olen);
            out = NULL;
            /* a gpg that died unasked ends the operation without an error */
            if (!data || olen == 0)
                snprintf(err, errlen, "gpg wrote no ciphertext");
            else if (buf_append(armor, data, olen) < 0)
                snprintf(err, errlen, "out of memory");
            else
                rc = 0;
            gpgme_free(data);
        }
    }
    if (in) gpgme_data_release(in);
    if (out) gpgme_data_release(out);
    for (unsigned i = 0; i < got; i++)
        gpgme_key_unref(list[i]);
    free(list);
    return rc;
}

/* ---- the engine's deadline ----
 *
 * A gpg that hangs would hold a pool thread, and the session waiting for
 * it, for ever. GPGME offers no deadline for a synchronous operation:
 * gpgme_cancel works only on an event loop of the caller's
 * (gpgme_set_io_cbs, which gpgme_get_key's inner context does not use),
 * gpgme_cancel_async takes effect at the next I/O a stopped gpg never makes,
 * and neither ends the process. So a watchdog thread kills the gpg of an
 * operation past its deadline: its pipes close, the GPGME call returns
 * at once, and the thread is free. GPGME starts gpg through a double fork,
 * so it is no child of ours and GPGME names no pid; what names it is the
 * home, which only one thread uses: "--homedir <home>" in its arguments. */
static unsigned engine_timeout_ms = 10000;
static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond;
static pthread_once_t watch_once = PTHREAD_ONCE_INIT;
static bool watch_started;
static struct gpg_thread *watched; /* every thread that has encrypted */

void crypto_engine_timeout(unsigned seconds)
{
    engine_timeout_ms = seconds * 1000;
}

static long long monotonic_ms(void)
{
    return (long long)(util_monotonic_us() / 1000);
}

static bool names_home(const char *args, size_t n, const char *home)
{
    for (const char *a = args; a < args + n; a += strlen(a) + 1) {
        const char *value = a + strlen(a) + 1;
        if (!strcmp(a, "--homedir") && value < args + n && !strcmp(value, home)) return true;
    }
    return false;
}

/* Kills every process of ours that runs gpg (or anything) in home. */
static void kill_engine(const char *home)
{
    DIR *proc = opendir("/proc");
    if (!proc) return;
    for (struct dirent *de; (de = readdir(proc));) {
        char *end, path[64], args[8192];
        long pid = strtol(de->d_name, &end, 10);
        struct stat st;
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n =
            fstat(fd, &st) == 0 && st.st_uid == geteuid() ? read(fd, args, sizeof args - 1) : -1;
        close(fd);
        if (n <= 0) continue;
        args[n] = 0;
        if (names_home(args, (size_t)n, home)) kill((pid_t)pid, SIGKILL);
    }
    closedir(proc);
}

/* Kills under the lock, so that a thread that takes the lock to learn its
 * deadline passed does so after the kill; and kills again while the
 * thread is away, for the gpg it may start after one. (A gpg that exits
 * between the reading of its cmdline and the kill, its pid reused at once,
 * would have the new process killed: a window of microseconds that
 * pidfd_open and pidfd_send_signal would close; not done yet.) */
static void *watchdog(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&watch_lock);
    for (;;) {
        long long now = monotonic_ms(), next = 0;
        for (struct gpg_thread *t = watched; t; t = t->watch_next) {
            if (!t->deadline) continue;
            if (t->deadline <= now) {
                /* Again every 200 ms until the thread is back: after a kill
                 * it may start another gpg (a key lookup), and one caught
                 * between fork and exec had no --homedir to be found by. */
                t->deadline = now + 200;
                t->expired = true;
                kill_engine(t->home);
            } else if (!next || t->deadline < next) {
                next = t->deadline;
            }
        }
        if (!next) {
            pthread_cond_wait(&watch_cond, &watch_lock);
        } else {
            struct timespec at = {.tv_sec = next / 1000, .tv_nsec = (next % 1000) * 1000000};
            pthread_cond_timedwait(&watch_cond, &watch_lock, &at);
        }
    }
    return NULL;
}

static void watch_start(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&watch_cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_attr_t thread_attr;
    pthread_t thread;
    pthread_attr_init(&thread_attr);
    pthread_attr_setdetachstate(&thread_attr, PTHREAD_CREATE_DETACHED);
    watch_started = pthread_create(&thread, &thread_attr, watchdog, NULL) == 0;
    pthread_attr_destroy(&thread_attr);
}

/* -1 when there is no watchdog (no thread could be made): then gpg runs
 * without a deadline, and the encryption is refused rather than risk it. */
static int watch_arm(struct gpg_thread *t)
{
    pthread_once(&watch_once, watch_start);
    if (!watch_started) return -1;
    pthread_mutex_lock(&watch_lock);
    if (!t->watched) {
        t->watch_next = watched;
        watched = t;
        t->watched = true;
    }
    t->deadline = monotonic_ms() + engine_timeout_ms;
    t->expired = false;
    pthread_cond_signal(&watch_cond);
    pthread_mutex_unlock(&watch_lock);
    return 0;
}

/* Takes a home that goes away out of the watchdog's list. */
static void watch_forget(struct gpg_thread *t)
{
    pthread_mutex_lock(&watch_lock);
    for (struct gpg_thread **p = &watched; *p; p = &(*p)->watch_next)
        if (*p == t) {
            *p = t->watch_next;
            break;
        }
    t->watched = false;
    pthread_mutex_unlock(&watch_lock);
}

/* Whether the deadline passed (and gpg was killed). */
static bool watch_disarm(struct gpg_thread *t)
{
    pthread_mutex_lock(&watch_lock);
    bool expired = t->expired;
    t->deadline = 0;
    t->expired = false;
    pthread_mutex_unlock(&watch_lock);
    return expired;
}

/* One try under the deadline. After a kill the home is in doubt (a lock
 * left, a keyring half written): it is made again before its next use. */
static int encrypt_watched(struct gpg_thread *t, const crypto_rcpt_key_t *keys, unsigned n,
                           const char *plain, size_t len, buf_t *armor, char *err, size_t errlen)
{
    if (watch_arm(t) < 0) {
        snprintf(err, errlen, "no watchdog thread for gpg's deadline");
        return -1;
    }
    size_t before = armor->len;
    int rc = encrypt_in_home(t, keys, n, plain, len, armor, err, errlen);
    if (!watch_disarm(t)) return rc;
    armor->len = before;
    if (armor->data) armor->data[before] = 0;
    t->unlisted = true;
    snprintf(err, errlen, "gpg gave no answer within %u s ([crypto] engine_timeout): killed",
             engine_timeout_ms / 1000);
    return CRYPTO_TIMED_OUT;
}

/* ---- the engine that encrypts ---- */

static enum crypto_openpgp_engine openpgp_engine = ENGINE_GPGME;

int crypto_openpgp_engine(enum crypto_openpgp_engine e, char *err, size_t errlen)
{
    if (e == ENGINE_RNP && rnp_engine_load(err, errlen) < 0) return -1;
    openpgp_engine = e;
    return 0;
}

/* A home that went while gpg used it is made again, and the encryption
 * tried once more: the first failure was the home's, not the message's. */
static int encrypt_in(struct gpg_thread *t, const crypto_rcpt_key_t *keys, unsigned n,
                      const char *plain, size_t len, buf_t *armor, char *err, size_t errlen)
{
    if (!home_intact(t) && home_remake(t, err, errlen) < 0) return -1;
    int rc = encrypt_watched(t, keys, n, plain, len, armor, err, errlen);
    if (rc == -1 && !home_intact(t)) {
        if (home_remake(t, err, errlen) < 0) return -1;
        rc = encrypt_watched(t, keys, n, plain, len, armor, err, errlen);
    }
    return rc;
}

/* A job with more keys than a thread's home holds: a home for it alone,
 * removed after it. Rare (a message to more than KEY_CACHE keyed
 * recipients), and each key costs an import then anyway. */
static int encrypt_in_own_home(const char *parent, const crypto_rcpt_key_t *keys, unsigned n,
                               const char *plain, size_t len, buf_t *armor, char *err,
                               size_t errlen)
{
    struct gpg_thread *t = home_new(parent, n, err, errlen);
    if (!t) return -1;
    int rc = encrypt_in(t, keys, n, plain, len, armor, err, errlen);
    if (t->watched) watch_forget(t);
    if (t->ctx) gpgme_release(t->ctx);
    for (unsigned i = 0; i < t->cap; i++)
        if (t->keys[i].key) gpgme_key_unref(t->keys[i].key);
    crypto_homes_remove(t->home);
    free(t->keys);
    free(t);
    return rc;
}

/* librnp needs no home (rnp.c); GPGME encrypts in the thread's. */
int crypto_encrypt(const char *parent, const crypto_rcpt_key_t *keys, unsigned n, const char *plain,
                   size_t len, buf_t *armor, char *err, size_t errlen)
{
    if (openpgp_engine == ENGINE_RNP)
        return rnp_engine_encrypt(keys, n, plain, len, armor, err, errlen);
    if (n > KEY_CACHE) return encrypt_in_own_home(parent, keys, n, plain, len, armor, err, errlen);
    struct gpg_thread *t = thread_home(parent, err, errlen);
    if (!t) return -1;
    return encrypt_in(t, keys, n, plain, len, armor, err, errlen);
}
