/* OpenPGP encryption in-process through librnp ([crypto] openpgp_engine =
 * rnp): no gpg process, no GnuPG home, no file. The engine crypto_encrypt
 * (gpg.c) hands the job to when chosen.
 *
 * Each thread keeps its own keyring in memory (an rnp_ffi_t is not to be
 * shared between threads), holding the public keys jobs needed lately, as
 * gpg.c's per-thread home does and for the same reasons: a hit costs no
 * parse and no self-signature check, and the keyring holds exactly the keys
 * its cache lists, each as the directory's data had it. Trust is ours, as
 * with GPGME: a key is in the directory because it was checked at import.
 *
 * What is written: one PKESK per key, to the encryption subkey librnp picks
 * as gpg does (the newest valid one able to encrypt), then SEIPD v1 with
 * its MDC under AES-256, which every OpenPGP reader takes (no AEAD packet,
 * which older readers do not); the literal data uncompressed: the CPU
 * compression would cost is about what the encryption costs, and RFC 9580
 * (§5.6, §13) counsels against compressing content an attacker can
 * influence alongside secrets, as quoted mail does. ASCII armor with LF line
 * ends, as GPGME writes it, so pgpmime_outer wraps either alike.
 *
 * Nothing here can be interrupted: an in-process call has no process to
 * kill, so [crypto] engine_timeout does not apply. What bounds a call is its
 * input: the message ([ingress] max_message_size; AES runs at hundreds of
 * MB/s) and the keys (at most one per recipient, each one public-key
 * operation of about a millisecond or less; RSA and ECDH encryption use the
 * public key only). */
#include "crypto/crypto.h"
#include "crypto/internal.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <rnp/rnp.h>
#include <rnp/rnp_err.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Keys a thread's keyring holds at most; a job with more recipients' keys
 * than this gets a keyring of its own for that job. */
#define KEY_CACHE 64

/* ---- librnp, loaded when chosen ----
 *
 * librnp is opened when the engine is first wanted, not linked: a process
 * that maps it (Botan, libstdc++ and their state) makes the kernel's fork
 * dearer, and the gpgme engine forks twice for each message. Measured here,
 * a double fork and exec of /bin/true: 0.8 ms from a small process, 1.5-1.7
 * ms from the same with librnp loaded; the gpgme engine's accept rate
 * fell by a sixth with librnp linked. Each call below goes through the
 * table, under the name the header gives it. */
#ifndef SEALPOST_RNP_SONAME
#define SEALPOST_RNP_SONAME "librnp.so.0" /* Debian's librnp0 */
#endif

#define RNP_CALLS(X)                                                                               \
    X(rnp_ffi_create)                                                                              \
    X(rnp_ffi_destroy)                                                                             \
    X(rnp_ffi_set_log_fd)                                                                          \
    X(rnp_get_public_key_count)                                                                    \
    X(rnp_import_keys)                                                                             \
    X(rnp_input_destroy)                                                                           \
    X(rnp_input_from_memory)                                                                       \
    X(rnp_key_get_default_key)                                                                     \
    X(rnp_key_get_subkey_at)                                                                       \
    X(rnp_key_get_subkey_count)                                                                    \
    X(rnp_key_handle_destroy)                                                                      \
    X(rnp_key_is_expired)                                                                          \
    X(rnp_key_is_revoked)                                                                          \
    X(rnp_key_is_valid)                                                                            \
    X(rnp_key_remove)                                                                              \
    X(rnp_key_valid_till64)                                                                        \
    X(rnp_locate_key)                                                                              \
    X(rnp_op_encrypt_add_recipient)                                                                \
    X(rnp_op_encrypt_create)                                                                       \
    X(rnp_op_encrypt_destroy)                                                                      \
    X(rnp_op_encrypt_execute)                                                                      \
    X(rnp_op_encrypt_set_aead)                                                                     \
    X(rnp_op_encrypt_set_armor)                                                                    \
    X(rnp_op_encrypt_set_cipher)                                                                   \
    X(rnp_op_encrypt_set_compression)                                                              \
    X(rnp_output_destroy)                                                                          \
    X(rnp_output_memory_get_buf)                                                                   \
    X(rnp_output_to_memory)                                                                        \
    X(rnp_result_to_string)

/* A member named as the function, of a pointer to its type. */
#define RNP_POINTER(f) __typeof__(f) *(f);
static struct {
    RNP_CALLS(RNP_POINTER)
} lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static char lib_error[256]; /* "" once loaded */

static void lib_open(void)
{
    void *h = dlopen(SEALPOST_RNP_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(lib_error, sizeof lib_error, "cannot load %s: %s", SEALPOST_RNP_SONAME, dlerror());
        return;
    }
#define RNP_RESOLVE(f)                                                                             \
    if (!lib_error[0] && !(*(void **)&lib.f = dlsym(h, #f)))                                       \
        snprintf(lib_error, sizeof lib_error, "%s has no %s", SEALPOST_RNP_SONAME, #f);
    RNP_CALLS(RNP_RESOLVE)
#undef RNP_RESOLVE
}

int rnp_engine_load(char *err, size_t errlen)
{
    pthread_once(&lib_once, lib_open); /* lib_error is written there alone */
    if (!lib_error[0]) return 0;
    snprintf(err, errlen, "%s", lib_error);
    return -1;
}

/* One key in a keyring, by fingerprint and a digest of the data it came
 * from: other data for the same fingerprint (a subkey dropped, say) takes
 * the old key out before it comes in, because librnp, like gpg, merges an
 * import into the key it already has. */
struct slot {
    char fpr[CRYPTO_FPR_MAX + 1]; /* "": free */
    unsigned char digest[16];
    size_t n_keys;     /* the primary key and its subkeys, as the keyring counts them */
    uint64_t stale_at; /* librnp judged validity at import: judged again from then on */
    unsigned long op;  /* the last job that used it: not reused within that job */
};

struct keyring {
    rnp_ffi_t ffi; /* NULL: made on first use, and again after a doubt */
    struct slot *slots;
    unsigned cap;
    unsigned next;        /* where the search for a slot to reuse starts */
    size_t listed;        /* the keys the slots account for: the keyring holds these only */
    unsigned long op;     /* the current job */
    unsigned long resets; /* how often it was emptied */
};

/* The calling thread's keyring, freed when the thread ends. */
static pthread_key_t keyring_key;
static pthread_once_t keyring_once = PTHREAD_ONCE_INIT;
static bool keyring_key_made;
static int devnull = -1; /* where librnp's own diagnostics go */

static int fail(char *err, size_t errlen, const char *fpr, const char *what, rnp_result_t r)
{
    if (fpr)
        snprintf(err, errlen, "key %s: %s: %s", fpr, what, lib.rnp_result_to_string(r));
    else
        snprintf(err, errlen, "rnp: %s: %s", what, lib.rnp_result_to_string(r));
    return -1;
}

/* A new ffi for the keyring. librnp writes its own diagnostics to stderr
 * unless told otherwise: every failure reaches our log through the result
 * code and the job's error instead, so they go nowhere. The ffi takes the
 * descriptor it is given for its own (fdopen) and closes it when destroyed:
 * each gets a duplicate, never the one kept here, or a destroyed keyring
 * would close a number the kernel has since given to a socket. */
static rnp_result_t keyring_open(struct keyring *kr)
{
    rnp_result_t r = lib.rnp_ffi_create(&kr->ffi, "GPG", "GPG");
    if (r != RNP_SUCCESS) {
        kr->ffi = NULL;
        return r;
    }
    int fd = devnull >= 0 ? fcntl(devnull, F_DUPFD_CLOEXEC, 0) : -1;
    if (fd >= 0 && lib.rnp_ffi_set_log_fd(kr->ffi, fd) != RNP_SUCCESS) close(fd);
    return RNP_SUCCESS;
}

/* Empties the keyring: the ffi goes, and every slot with it. */
static void keyring_reset(struct keyring *kr)
{
    if (kr->ffi) lib.rnp_ffi_destroy(kr->ffi);
    kr->ffi = NULL;
    kr->resets++;
    memset(kr->slots, 0, kr->cap * sizeof *kr->slots);
    kr->listed = 0;
    kr->next = 0;
}

static struct keyring *keyring_new(unsigned cap)
{
    struct keyring *kr = calloc(1, sizeof *kr);
    if (kr && !(kr->slots = calloc(cap, sizeof *kr->slots))) {
        free(kr);
        return NULL;
    }
    if (kr) kr->cap = cap;
    return kr;
}

static void keyring_free(void *arg)
{
    struct keyring *kr = arg;
    if (!kr) return;
    keyring_reset(kr);
    free(kr->slots);
    free(kr);
}

static void keyring_key_make(void)
{
    keyring_key_made = pthread_key_create(&keyring_key, keyring_free) == 0;
    devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
}

/* The calling thread's keyring, made on first use; NULL when memory ran out. */
static struct keyring *thread_keyring(void)
{
    pthread_once(&keyring_once, keyring_key_make);
    if (!keyring_key_made) return NULL;
    struct keyring *kr = pthread_getspecific(keyring_key);
    if (!kr && (kr = keyring_new(KEY_CACHE)) && pthread_setspecific(keyring_key, kr) != 0) {
        keyring_free(kr);
        kr = NULL;
    }
    return kr;
}

/* Whether the keyring holds exactly what its slots list: a key count that
 * differs means an import brought or merged something no slot accounts for. */
static bool keyring_as_listed(const struct keyring *kr)
{
    size_t count = 0;
    return lib.rnp_get_public_key_count(kr->ffi, &count) == RNP_SUCCESS && count == kr->listed;
}

/* The slot holding this fingerprint, *hit when with this very data; else
 * NULL. */
static struct slot *slot_find(struct keyring *kr, const char *fpr, const unsigned char digest[16],
                              bool *hit)
{
    for (unsigned i = 0; i < kr->cap; i++) {
        struct slot *s = &kr->slots[i];
        if (s->fpr[0] && !strcmp(s->fpr, fpr)) {
            *hit = !memcmp(s->digest, digest, sizeof s->digest);
            return s;
        }
    }
    *hit = false;
    return NULL;
}

/* A slot to take for a new key: a free one, else the next in turn that the
 * current job does not use (there is one: a job has at most cap keys). */
static struct slot *slot_victim(struct keyring *kr)
{
    for (unsigned i = 0; i < kr->cap; i++)
        if (!kr->slots[i].fpr[0]) return &kr->slots[i];
    for (unsigned i = 0; i < kr->cap; i++) {
        struct slot *s = &kr->slots[(kr->next + i) % kr->cap];
        if (s->op != kr->op) {
            kr->next = (unsigned)(s - kr->slots + 1) % kr->cap;
            return s;
        }
    }
    return NULL;
}

/* Takes the slot's key, subkeys and all, out of the keyring. Where what
 * leaves is not what the slot listed, the keyring is emptied instead. */
static void slot_drop(struct keyring *kr, struct slot *s)
{
    if (!s->fpr[0]) return;
    rnp_key_handle_t key = NULL;
    bool gone =
        lib.rnp_locate_key(kr->ffi, "fingerprint", s->fpr, &key) == RNP_SUCCESS && key &&
        lib.rnp_key_remove(key, RNP_KEY_REMOVE_PUBLIC | RNP_KEY_REMOVE_SUBKEYS) == RNP_SUCCESS;
    if (key) lib.rnp_key_handle_destroy(key);
    kr->listed -= s->n_keys;
    memset(s, 0, sizeof *s);
    if (!gone || !keyring_as_listed(kr)) keyring_reset(kr);
}

/* When the earliest of the key's validities that held at import ends:
 * librnp works out whether a key or subkey is valid when it imports it and
 * keeps that answer, so a subkey expiring later would still look valid to
 * this keyring, and still be encrypted to, while gpg moves to another. */
static uint64_t first_expiry(rnp_key_handle_t key, size_t subkeys, uint64_t now)
{
    uint64_t first = UINT64_MAX, till = 0;
    if (lib.rnp_key_valid_till64(key, &till) == RNP_SUCCESS && till > now) first = till;
    for (size_t i = 0; i < subkeys; i++) {
        rnp_key_handle_t sub = NULL;
        if (lib.rnp_key_get_subkey_at(key, i, &sub) == RNP_SUCCESS && sub &&
            lib.rnp_key_valid_till64(sub, &till) == RNP_SUCCESS && till > now && till < first)
            first = till;
        if (sub) lib.rnp_key_handle_destroy(sub);
    }
    return first;
}

/* Imports the first key of the directory's data into the slot. Only that
 * key may come in: data whose first key is another one, or that merges
 * into a key of another slot, leaves the keyring emptied and the job
 * failed. */
static int slot_fill(struct keyring *kr, struct slot *s, const crypto_rcpt_key_t *k,
                     const unsigned char digest[16], char *err, size_t errlen)
{
    rnp_input_t in = NULL;
    rnp_key_handle_t key = NULL;
    size_t subkeys = 0;
    rnp_result_t r =
        lib.rnp_input_from_memory(&in, (const uint8_t *)k->armored, k->armored_len, false);
    if (r == RNP_SUCCESS)
        r = lib.rnp_import_keys(kr->ffi, in, RNP_LOAD_SAVE_PUBLIC_KEYS | RNP_LOAD_SAVE_SINGLE,
                                NULL);
    if (in) lib.rnp_input_destroy(in);
    if (r != RNP_SUCCESS) {
        keyring_reset(kr); /* it may have taken part of it */
        return fail(err, errlen, k->fpr, "rnp could not read it", r);
    }
    r = lib.rnp_locate_key(kr->ffi, "fingerprint", k->fpr, &key);
    if (r == RNP_SUCCESS && key) r = lib.rnp_key_get_subkey_count(key, &subkeys);
    if (r == RNP_SUCCESS && key) s->stale_at = first_expiry(key, subkeys, (uint64_t)time(NULL));
    if (key) lib.rnp_key_handle_destroy(key);
    if (r != RNP_SUCCESS || !key) {
        keyring_reset(kr);
        return r != RNP_SUCCESS ? fail(err, errlen, k->fpr, "rnp", r)
                                : (snprintf(err, errlen, "key %s: not in its data", k->fpr), -1);
    }
    snprintf(s->fpr, sizeof s->fpr, "%s", k->fpr);
    memcpy(s->digest, digest, sizeof s->digest);
    s->n_keys = 1 + subkeys;
    kr->listed += s->n_keys;
    if (!keyring_as_listed(kr)) {
        keyring_reset(kr);
        snprintf(err, errlen, "key %s: its data brought other keys along", k->fpr);
        return -1;
    }
    return 0;
}

/* The key in the keyring as the directory's data has it: kept from an
 * earlier job when the data is the same, else (re)imported. */
static int key_ready(struct keyring *kr, const crypto_rcpt_key_t *k, char *err, size_t errlen)
{
    unsigned char digest[16];
    crypto_generichash(digest, sizeof digest, (const unsigned char *)k->armored, k->armored_len,
                       NULL, 0);
    bool hit;
    struct slot *s = slot_find(kr, k->fpr, digest, &hit);
    if (hit && (uint64_t)time(NULL) >= s->stale_at) hit = false; /* judged again, from its data */
    if (!hit) {
        if (s) slot_drop(kr, s);
        if (!(s = slot_victim(kr))) {
            snprintf(err, errlen, "rnp: no free key slot");
            return -1;
        }
        slot_drop(kr, s);
        rnp_result_t r = kr->ffi ? RNP_SUCCESS : keyring_open(kr);
        if (r != RNP_SUCCESS) return fail(err, errlen, NULL, "cannot make a keyring", r);
        if (slot_fill(kr, s, k, digest, err, errlen) < 0) return -1;
    }
    s->op = kr->op;
    return 0;
}

/* Why the key cannot take mail now, or NULL. */
static const char *key_unusable(rnp_key_handle_t key)
{
    bool revoked = false, expired = false, valid = false;
    if (lib.rnp_key_is_revoked(key, &revoked) != RNP_SUCCESS || revoked) return "revoked";
    if (lib.rnp_key_is_expired(key, &expired) != RNP_SUCCESS || expired) return "expired";
    if (lib.rnp_key_is_valid(key, &valid) != RNP_SUCCESS || !valid) return "invalid";
    return NULL;
}

static int add_recipients(struct keyring *kr, rnp_op_encrypt_t op, const crypto_rcpt_key_t *keys,
                          unsigned n, char *err, size_t errlen)
{
    for (unsigned i = 0; i < n; i++) {
        rnp_key_handle_t key = NULL;
        rnp_result_t r = lib.rnp_locate_key(kr->ffi, "fingerprint", keys[i].fpr, &key);
        const char *why = r != RNP_SUCCESS || !key ? "not in the keyring" : key_unusable(key);
        /* gpg encrypts to the newest valid encryption subkey even when the
         * primary key could encrypt too; librnp would take the primary
         * first. The primary only when no subkey can. */
        rnp_key_handle_t to = NULL;
        if (!why &&
            lib.rnp_key_get_default_key(key, "encrypt", RNP_KEY_SUBKEYS_ONLY, &to) != RNP_SUCCESS)
            to = NULL;
        if (!why && (r = lib.rnp_op_encrypt_add_recipient(op, to ? to : key)) != RNP_SUCCESS)
            why = r == RNP_ERROR_NO_SUITABLE_KEY ? "no valid encryption subkey" : "refused";
        if (to) lib.rnp_key_handle_destroy(to);
        if (key) lib.rnp_key_handle_destroy(key);
        if (why) {
            if (r != RNP_SUCCESS) return fail(err, errlen, keys[i].fpr, why, r);
            snprintf(err, errlen, "key %s: %s", keys[i].fpr, why);
            return -1;
        }
    }
    return 0;
}

/* Appends the armor with each CRLF made LF, as GPGME writes it. */
static int append_armor(buf_t *armor, const uint8_t *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\r' || i + 1 >= n || p[i + 1] != '\n') continue;
        if (buf_append(armor, p + start, i - start) < 0) return -1;
        start = i + 1;
    }
    return buf_append(armor, p + start, n - start);
}

static int encrypt_with(struct keyring *kr, const crypto_rcpt_key_t *keys, unsigned n,
                        const char *plain, size_t len, buf_t *armor, char *err, size_t errlen)
{
    rnp_input_t in = NULL;
    rnp_output_t out = NULL;
    rnp_op_encrypt_t op = NULL;
    uint8_t *data = NULL;
    size_t data_len = 0;
    rnp_result_t r = lib.rnp_input_from_memory(&in, (const uint8_t *)plain, len, false);
    if (r == RNP_SUCCESS) r = lib.rnp_output_to_memory(&out, 0);
    if (r == RNP_SUCCESS) r = lib.rnp_op_encrypt_create(&op, kr->ffi, in, out);
    if (r == RNP_SUCCESS) r = lib.rnp_op_encrypt_set_armor(op, true);
    if (r == RNP_SUCCESS) r = lib.rnp_op_encrypt_set_cipher(op, "AES256");
    if (r == RNP_SUCCESS) r = lib.rnp_op_encrypt_set_aead(op, "None");
    if (r == RNP_SUCCESS) r = lib.rnp_op_encrypt_set_compression(op, "Uncompressed", 0);
    int rc = -1;
    if (r != RNP_SUCCESS)
        fail(err, errlen, NULL, "cannot set the encryption up", r);
    else if (add_recipients(kr, op, keys, n, err, errlen) < 0)
        ; /* err says which key */
    else if ((r = lib.rnp_op_encrypt_execute(op)) != RNP_SUCCESS ||
             (r = lib.rnp_output_memory_get_buf(out, &data, &data_len, false)) != RNP_SUCCESS)
        fail(err, errlen, NULL, "encryption failed", r);
    else if (data_len == 0 || append_armor(armor, data, data_len) < 0)
        snprintf(err, errlen, data_len ? "out of memory" : "rnp wrote no ciphertext");
    else
        rc = 0;
    if (op) lib.rnp_op_encrypt_destroy(op);
    if (out) lib.rnp_output_destroy(out);
    if (in) lib.rnp_input_destroy(in);
    return rc;
}

/* Every key in the keyring, then the encryption. A keyring emptied while
 * the keys went in (a removal in doubt) lost those before: they go in
 * again, once. On failure armor is as it was. */
static int encrypt_in(struct keyring *kr, const crypto_rcpt_key_t *keys, unsigned n,
                      const char *plain, size_t len, buf_t *armor, char *err, size_t errlen)
{
    for (int pass = 0;; pass++) {
        unsigned long resets = kr->resets;
        kr->op++;
        for (unsigned i = 0; i < n; i++)
            if (key_ready(kr, &keys[i], err, errlen) < 0) return -1;
        if (kr->resets == resets) break;
        if (pass == 1) {
            snprintf(err, errlen, "rnp: the keyring does not keep the keys put in");
            return -1;
        }
    }
    size_t before = armor->len;
    if (encrypt_with(kr, keys, n, plain, len, armor, err, errlen) == 0) return 0;
    armor->len = before;
    if (armor->data) armor->data[before] = 0;
    return -1;
}

int rnp_engine_encrypt(const crypto_rcpt_key_t *keys, unsigned n, const char *plain, size_t len,
                       buf_t *armor, char *err, size_t errlen)
{
    if (n == 0) {
        snprintf(err, errlen, "no recipient key");
        return -1;
    }
    if (rnp_engine_load(err, errlen) < 0) return -1;
    pthread_once(&keyring_once, keyring_key_make);
    if (n > KEY_CACHE) { /* more than the thread's keyring holds: one for this job */
        struct keyring *once = keyring_new(n);
        int rc = once ? encrypt_in(once, keys, n, plain, len, armor, err, errlen)
                      : (snprintf(err, errlen, "out of memory"), -1);
        keyring_free(once);
        return rc;
    }
    struct keyring *kr = thread_keyring();
    if (!kr) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return encrypt_in(kr, keys, n, plain, len, armor, err, errlen);
}
