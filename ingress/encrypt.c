/* The ingress side of the encryption gateway: see encrypt.h. */
#include "ingress/encrypt.h"

#include "ingress/discover.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* The directory's version is asked for this often: an import is in effect
 * on every node within about this long. */
#define KEYS_POLL_MS    250
#define KEYDIR_CAPACITY 8192
/* A version ahead of the index's seal is a write between its two steps
 * (the change, then the seal: cmd/keys.c); one that stays so this long was
 * not ours, or its writer died: the directory counts as tampered with. */
#define UNSEALED_GRACE_MS 10000
/* Lookups that wait for the first index (just after a start), at most: past
 * it, 451 at once. */
#define WAITING_MAX 1024

struct lookup;

static const char *const decision_names[DECISIONS] = {"plain", "encrypt", "refused", "in_doubt"};
static const char *const outcome_names[] = {[GATEWAY_PLAIN] = "plain",
                                            [GATEWAY_ENCRYPTED] = "encrypted",
                                            [GATEWAY_PASSTHROUGH] = "passthrough",
                                            [GATEWAY_FAILED] = "failed",
                                            [GATEWAY_OUTCOMES] = "busy"};

/* The engines a ciphertext can come from, as the metrics name them. */
enum cipher_engine { CIPHER_GPGME, CIPHER_RNP, CIPHER_OPENSSL, CIPHER_ENGINES };
static const char *const engine_names[CIPHER_ENGINES] = {"gpgme", "rnp", "openssl"};
static const char *const cipher_result_names[CIPHER_RESULTS] = {"ok", "failed", "timeout"};

struct encrypt {
    ingress_t *ingress;
    keydir_t *keydir;
    char homes[4096]; /* the per-thread GnuPG homes' parent */
    uv_timer_t poll;  /* asks for the directory's version */
    bool poll_open;
    bool polling;           /* a version call is out */
    unsigned running;       /* messages in the thread pool for encryption */
    bool gnupg;             /* OpenPGP by gpg processes, which need GnuPG homes */
    long long doubt_warned; /* when a key in doubt was last logged at warn */
    bool homes_ok;          /* GnuPG homes can be made (or none are needed): else why not */
    char homes_problem[256];
    unsigned homes_remade; /* crypto_homes_remade() when last counted */
    metric_t *decisions[DECISIONS];
    metric_t *outcomes[GATEWAY_OUTCOMES + 1]; /* the last: refused, busy */
    metric_t *timeouts;                       /* outcome="timeout": failed for gpg's deadline */
    metric_t *pending;
    metric_t *remade;
    /* Per ciphertext: by engine (which names its method) and how it ended;
     * the engine call's time. */
    metric_t *ciphers[CIPHER_ENGINES][CIPHER_RESULTS];
    metric_t *cipher_seconds[CIPHER_ENGINES];

    /* The directory's authentication (issue 18): the last index whose tag
     * held, and what a failed check found. Until an index is taken, and
     * while the directory counts as tampered with, every recipient gets 451. */
    keydir_index_t *index;
    long long index_version; /* the version it was sealed at */
    long long highest;       /* the highest version taken: none below it is */
    bool state_failed;       /* directory_state_file could not be written (logged) */
    bool reading;            /* a key_directory call is out */
    bool tampered;
    char tamper_why[64];
    bool logged;              /* a version was logged as tampered: */
    long long logged_version; /* ... this one */
    uint64_t unsealed_since;  /* loop time the version first ran ahead of the seal; 0: not */
    metric_t *tampered_total; /* findings: an index or an entry that failed its check */
    struct lookup *waiting;   /* for the first index: sent once it is read */
    unsigned n_waiting;
    /* The discovered keys' version (issue 16): the cache is dropped when it
     * moves, and only replies read at it are cached. */
    long long dversion;
    metric_t *disc_rejected; /* discovered keys whose tag did not hold */
    discover_t *discover;    /* look-ups at RCPT; NULL: [discovery] enabled is off */
};

/* One engine call takes from about 0.1 ms (OpenSSL's CMS, librnp to
 * cv25519) through 5 ms (a gpg process) to engine_timeout (10 s). */
static const double cipher_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,     0.25,   0.5,   1,      2.5,   10};

static void register_cipher_metrics(encrypt_t *e)
{
    static const char *const method_of[CIPHER_ENGINES] = {"openpgp", "openpgp", "smime"};
    for (int g = 0; g < CIPHER_ENGINES; g++) {
        for (int r = 0; r < CIPHER_RESULTS; r++) {
            char labels[96];
            snprintf(labels, sizeof labels, "method=\"%s\",engine=\"%s\",outcome=\"%s\"",
                     method_of[g], engine_names[g], cipher_result_names[r]);
            e->ciphers[g][r] = metric_counter(
                "sealpost_ingress_ciphertexts_total",
                "Ciphertexts made by the encryption gateway, one per encrypted body variant (a "
                "To/Cc copy per method, a copy per keyed Bcc recipient), by method, engine and "
                "how the engine call ended (timeout: past [crypto] engine_timeout).",
                labels);
        }
        char labels[48];
        snprintf(labels, sizeof labels, "engine=\"%s\"", engine_names[g]);
        e->cipher_seconds[g] = metric_histogram(
            "sealpost_ingress_encryption_duration_seconds",
            "Time of one engine call, per ciphertext: the encryption alone (crypto_encrypt or "
            "smime_encrypt, in a pool thread), without the MIME around it, sealing, or the wait "
            "for a thread.",
            labels, cipher_bounds, sizeof cipher_bounds / sizeof cipher_bounds[0]);
    }
}

/* The engine calls the job noted in its pool thread, counted here on the loop. */
static void count_ciphers(encrypt_t *e, const gateway_job_t *job)
{
    for (unsigned i = 0; i < job->n_ciphers; i++) {
        const gateway_cipher_t *c = &job->ciphers[i];
        enum cipher_engine g = c->method == CRYPTO_SMIME ? CIPHER_OPENSSL
                               : e->gnupg                ? CIPHER_GPGME
                                                         : CIPHER_RNP;
        metric_add(e->ciphers[g][c->result], 1);
        metric_observe(e->cipher_seconds[g], c->seconds);
    }
}

static void register_metrics(encrypt_t *e)
{
    static const char outcomes_help[] =
        "Messages through the encryption gateway, by outcome (busy: refused with 451 because "
        "the encryption queue was full; timeout: gpg gave no answer within [crypto] "
        "engine_timeout).";
    metric_counters(e->decisions, "sealpost_ingress_recipient_decisions_total",
                    "Recipients by encryption decision at RCPT TO: plain, encrypt, refused "
                    "(policy required, no usable key), or in_doubt (451: a key or certificate "
                    "that cannot be judged now, e.g. for a stale CRL).",
                    "decision", decision_names, DECISIONS);
    metric_counters(e->outcomes, "sealpost_ingress_encryptions_total", outcomes_help, "outcome",
                    outcome_names, GATEWAY_OUTCOMES + 1);
    e->timeouts =
        metric_counter("sealpost_ingress_encryptions_total", outcomes_help, "outcome=\"timeout\"");
    e->pending = metric_gauge("sealpost_ingress_encryptions_pending",
                              "Messages being encrypted or waiting for a thread.", "");
    register_cipher_metrics(e);
    e->tampered_total = metric_counter(
        "sealpost_directory_tampered_total",
        "Times the key directory in Redis failed its checks (an index whose tag does not hold, "
        "a version gone back, an entry whose tag does not hold or that the index does not "
        "list): each time, every recipient gets 451 until an authenticated version follows.",
        "");
    e->disc_rejected = metric_counter(
        "sealpost_discovered_keys_rejected_total",
        "Discovered keys in Redis whose tag did not hold (written by someone without the "
        "sealing key): ignored, as if there were none.",
        "");
    e->remade = metric_counter("sealpost_ingress_gnupg_homes_remade_total",
                               "GnuPG homes of the encryption threads made again because they "
                               "had vanished (a cleaner of temporary files) or were in doubt.",
                               "");
}

const char *encrypt_outcome_name(enum gateway_outcome outcome)
{
    return outcome_names[outcome];
}

/* ---- the directory's version ---- */

/* The directory failed a check at version: nothing cached is used, every
 * recipient gets 451 until an index at another version holds. Logged and
 * counted once per version. */
static void tamper(encrypt_t *e, long long version, const char *why)
{
    e->tampered = true;
    snprintf(e->tamper_why, sizeof e->tamper_why, "%s", why);
    keydir_drop(e->keydir);
    if (e->logged && e->logged_version == version) return;
    e->logged = true;
    e->logged_version = version;
    metric_add(e->tampered_total, 1);
    log_error("event=directory_tampered why=%s version=%lld highest=%lld", why, version,
              e->highest);
}

/* [crypto] directory_state_file keeps the highest version this node took
 * across its restarts, so that Redis's own history put back while the node
 * was down (an older snapshot, a wiped directory) is still a rollback to it.
 * The file holds the version in decimal and a newline; it is replaced
 * whole (written beside it, synced, renamed), so a crash leaves the old or
 * the new one. */

/* Replaces the file at path by one holding version; 0, or -1 with errno. */
static int state_store(const char *path, long long version)
{
    char tmp[PATH_MAX], line[32];
    int n = snprintf(line, sizeof line, "%lld\n", version);
    if (snprintf(tmp, sizeof tmp, "%s.new", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* not through a link someone else left in the state file's folder */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    ssize_t w = write(fd, line, (size_t)n);
    int failed = w == n ? 0 : w < 0 ? errno : EIO;
    if (!failed && fsync(fd) < 0) failed = errno;
    if (close(fd) < 0 && !failed) failed = errno;
    if (!failed && rename(tmp, path) < 0) failed = errno;
    if (failed) {
        unlink(tmp);
        errno = failed;
        return -1;
    }
    return 0;
}

/* At start: the mark kept, or a file made for it (first start: 0, nothing
 * taken yet), so that a file that cannot be written stops the node now
 * rather than leave it with a mark in memory only. */
static int state_read(const char *path, long long *highest, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f && errno == ENOENT && state_store(path, 0) == 0) {
        *highest = 0;
        return 0;
    }
    if (!f) {
        snprintf(err, errlen, "[crypto] directory_state_file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[32];
    size_t n = fread(line, 1, sizeof line, f);
    fclose(f);
    unsigned long long v;
    if (n == 0 || n == sizeof line || line[n - 1] != '\n' ||
        util_parse_decimal(line, n - 1, &v) < 0 || v >= LLONG_MAX) {
        snprintf(err, errlen, "[crypto] directory_state_file %s: not a version", path);
        return -1;
    }
    *highest = (long long)v;
    return 0;
}

/* The mark rose to version: kept in the file too, when there is one. On the
 * loop, synced: it happens once per change of the directory, not per message. */
static void state_write(encrypt_t *e, long long version)
{
    const char *path = e->ingress->cfg->crypto.directory_state_file;
    if (!path[0]) return;
    if (state_store(path, version) == 0) {
        if (e->state_failed) log_info("event=directory_state_written path=%s", path);
        e->state_failed = false;
        return;
    }
    if (!e->state_failed)
        log_error("event=directory_state_write_failed path=%s error=\"%s\"", path, strerror(errno));
    e->state_failed = true;
}

/* Takes x (sealed at version) as the index every lookup is checked against. */
static void take_index(encrypt_t *e, keydir_index_t *x, long long version)
{
    if (e->tampered) log_info("event=directory_verified version=%lld", version);
    keydir_index_free(e->index);
    e->index = x;
    e->index_version = version;
    if (version > e->highest) {
        e->highest = version;
        state_write(e, version);
    }
    e->tampered = false;
    e->unsealed_since = 0;
    keydir_drop(e->keydir);
    keydir_version(e->keydir, version);
    log_debug("event=keys_changed version=%lld entries=%zu", version, keydir_index_size(x));
}

/* A directory ahead of its seal: "" while that may be a write between its
 * change and its seal, why once it has stayed so UNSEALED_GRACE_MS. */
static const char *unsealed(encrypt_t *e, const char *why)
{
    uint64_t now = uv_now(e->ingress->loop);
    if (!e->unsealed_since) e->unsealed_since = now;
    return now - e->unsealed_since >= UNSEALED_GRACE_MS ? why : "";
}

/* Why dir's index cannot be taken (NULL: it can; "" not yet: a write is
 * between its change and its seal). A directory never written (version 0,
 * nothing stored, no index) needs no seal: a fresh Redis just works. One
 * with entries and no seal at all is the first write to a fresh directory
 * before its first seal, or one from before the index: the first gets the
 * grace of any write (a node that read it in between stayed at 451 for
 * good, since the seal does not move the version), the second is found
 * when the grace is over; to a node that took a sealed index before, it is
 * an index removed, at once. */
static const char *judge_directory(encrypt_t *e, const queue_key_directory_t *dir,
                                   const keydir_index_t *x)
{
    /* INCR counts from 0 and stops short of LLONG_MAX: anything else was SET */
    if (dir->version < 0 || dir->version == LLONG_MAX) return "version_bad";
    if (dir->sealed_version < 0) {
        if (dir->version == 0 && dir->stored == 0 && dir->n == 0)
            return e->highest > 0 ? "rollback" : NULL;
        return e->highest > 0 ? "unauthenticated" : unsealed(e, "unauthenticated");
    }
    int v = keydir_index_verify(e->ingress->seal, dir->sealed_version, x, dir->tag);
    if (v == -2) return "";
    if (v != 1) return v == 0 ? "index_tag_bad" : "index_key_unknown";
    if (dir->sealed_version < e->highest) return "rollback";
    if (dir->version < dir->sealed_version) return "version_behind_seal";
    if (dir->version == dir->sealed_version) return NULL;
    return unsealed(e, "unsealed_change");
}

static void release_waiting(encrypt_t *e);

static void on_directory(int status, const char *err, const queue_key_directory_t *dir, void *arg)
{
    encrypt_t *e = arg;
    e->reading = false;
    if (status < 0) {
        log_debug("event=keys_poll_failed error=\"%s\"", err);
    } else {
        keydir_index_t *x = keydir_index_new(dir->entries, dir->tags, dir->n);
        const char *why = x ? judge_directory(e, dir, x) : "";
        long long version = dir->sealed_version < 0 ? 0 : dir->sealed_version;
        if (!why)
            take_index(e, x, version);
        else if (why[0])
            tamper(e, dir->version, why);
        if (why) keydir_index_free(x);
    }
    release_waiting(e);
    e->ingress->check_stopped(e->ingress);
}

static void on_version(int status, const char *err, long long version, long long dversion,
                       void *arg)
{
    encrypt_t *e = arg;
    e->polling = false;
    if (status == 0 && dversion != e->dversion) {
        e->dversion = dversion;
        keydir_drop(e->keydir);
    }
    if (status < 0) {
        log_debug("event=keys_poll_failed error=\"%s\"", err);
    } else {
        /* The version moved (or there is no index yet), or a change not
         * sealed yet is being watched: the index is read and checked. One
         * found bad at this very version is not read again. */
        bool found_bad = e->logged && e->logged_version == version;
        bool moved = (!e->index || version != e->index_version) && !found_bad;
        if ((moved || (found_bad && e->unsealed_since)) && !e->reading)
            e->reading = queue_key_directory(e->ingress->queue, on_directory, e) == 0;
    }
    e->ingress->check_stopped(e->ingress);
}

/* Whether encryption can work, asked as often as the directory's version:
 * a homes directory removed meanwhile is made again here, before a message
 * waits for it; one that cannot be makes the node not ready (/readyz) until
 * it can. The homes a thread made again are counted here, on the loop. */
static void check_homes(encrypt_t *e)
{
    if (!e->gnupg) return;
    char why[sizeof e->homes_problem];
    bool ok = crypto_homes_check(e->ingress->cfg->crypto.home_dir, e->homes, why, sizeof why) == 0;
    if (!ok && (e->homes_ok || strcmp(why, e->homes_problem)))
        log_error("event=encryption_unavailable error=\"%s\"", why);
    else if (ok && !e->homes_ok)
        log_info("event=encryption_available");
    e->homes_ok = ok;
    snprintf(e->homes_problem, sizeof e->homes_problem, "%s", ok ? "" : why);
    unsigned remade = crypto_homes_remade();
    if (remade != e->homes_remade) {
        log_warn("event=gnupg_homes_remade count=%u", remade - e->homes_remade);
        metric_add(e->remade, remade - e->homes_remade);
        e->homes_remade = remade;
    }
}

void encrypt_reload(encrypt_t *e)
{
    const config_t *cfg = e->ingress->cfg;
    char err[600];
    if (!cfg->crypto.smime_ca_file[0]) return;
    if (crypto_smime_trust(cfg->crypto.smime_ca_file, cfg->crypto.smime_crl_file, err, sizeof err) <
        0)
        log_error("event=smime_trust_reload_failed error=\"%s\"", err);
    else
        log_info("event=smime_trust_reloaded ca=%s crl=%s", cfg->crypto.smime_ca_file,
                 cfg->crypto.smime_crl_file[0] ? cfg->crypto.smime_crl_file : "none");
}

bool encrypt_ready(const encrypt_t *e, const char **why)
{
    *why = !e->homes_ok  ? e->homes_problem
           : e->tampered ? "the key directory failed its checks (event=directory_tampered)"
                         : NULL;
    return !*why;
}

static void on_poll_timer(uv_timer_t *t)
{
    encrypt_t *e = t->data;
    check_homes(e);
    if (e->polling || !queue_ready(e->ingress->queue)) return;
    e->polling = true;
    if (queue_key_version(e->ingress->queue, on_version, e) < 0) e->polling = false;
}

encrypt_t *encrypt_start(ingress_t *ingress, char *err, size_t errlen)
{
    /* librnp works in-process: neither gpg, GPGME nor a GnuPG home is
     * needed then, and S/MIME never needs them. */
    bool rnp = ingress->cfg->crypto.openpgp_engine == CONFIG_OPENPGP_RNP;
    if (!rnp && crypto_gpg_init(err, errlen) < 0) return NULL;
    if (keydir_smime_configure(ingress->cfg, err, errlen) < 0) return NULL;
    if (crypto_openpgp_engine(rnp ? ENGINE_RNP : ENGINE_GPGME, err, errlen) < 0) return NULL;
    log_info("event=openpgp_engine engine=%s", rnp ? "rnp" : "gpgme");
    encrypt_t *e = calloc(1, sizeof *e);
    if (e) e->keydir = keydir_new(KEYDIR_CAPACITY);
    if (!e || !e->keydir) {
        free(e);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->ingress = ingress;
    e->gnupg = !rnp;
    e->highest = -1;
    e->dversion = -1;
    if (ingress->cfg->crypto.directory_state_file[0] &&
        state_read(ingress->cfg->crypto.directory_state_file, &e->highest, err, errlen) < 0) {
        keydir_free(e->keydir);
        free(e);
        return NULL;
    }
    if (e->highest >= 0) log_info("event=directory_state version=%lld", e->highest);
    /* on even under min_trust = imported: a policy may name discovered;
     * no look-up is made where a discovered key would not be used */
    if (ingress->cfg->discovery.enabled && !(e->discover = discover_new(ingress, err, errlen))) {
        keydir_free(e->keydir);
        free(e);
        return NULL;
    }
    register_metrics(e);
    e->homes_ok = true;
    check_homes(e);
    crypto_engine_timeout(ingress->cfg->crypto.engine_timeout);
    uv_timer_init(ingress->loop, &e->poll);
    e->poll.data = e;
    uv_timer_start(&e->poll, on_poll_timer, 0, KEYS_POLL_MS);
    e->poll_open = true;
    return e;
}

static void on_poll_closed(uv_handle_t *h)
{
    encrypt_t *e = h->data;
    e->poll_open = false;
    e->ingress->check_stopped(e->ingress);
}

void encrypt_stop(encrypt_t *e)
{
    if (e->discover) discover_stop(e->discover);
    if (e->poll_open && !uv_is_closing((uv_handle_t *)&e->poll))
        uv_close((uv_handle_t *)&e->poll, on_poll_closed);
}

bool encrypt_busy(const encrypt_t *e)
{
    return e->poll_open || e->polling || e->reading || (e->discover && discover_busy(e->discover));
}

void encrypt_free(encrypt_t *e)
{
    if (!e) return;
    keydir_free(e->keydir);
    keydir_index_free(e->index);
    discover_free(e->discover);
    crypto_homes_remove(e->homes);
    free(e);
}

/* ---- RCPT TO ---- */

/* A lookup in Redis, waiting for its reply. */
struct lookup {
    encrypt_t *e;
    char addr[PROTO_PATH_MAX + 1]; /* canonical */
    char peer[64];
    encrypt_rcpt_cb cb;
    void *arg;
    struct lookup *next; /* waiting for an index */
    bool again;          /* sent again once, after the index was read anew */
    bool may_discover;
    enum enc_policy policy; /* while discovery looks: the address's policy and preference */
    enum crypto_method prefer;
};

/* The verdict from what is known of the address (keydir_decide: the
 * preferred method's key, else the other's): counted, and a refusal logged
 * with what made each key unusable. */
static enum rcpt_verdict decide(encrypt_t *e, const char *addr, const char *peer,
                                const keydir_entry_t *entry, struct rcpt_key *key)
{
    enum crypto_method m;
    char why[512];
    enum crypto_decision d = keydir_decide(entry, (long long)time(NULL), &m, why, sizeof why);
    metric_add(e->decisions[d], 1);
    memset(key, 0, sizeof *key);
    snprintf(key->addr, sizeof key->addr, "%s", addr);
    if (d == DECIDE_REFUSE) {
        char safe[LOG_SAFE_MAX];
        bool any = entry->keys[CRYPTO_OPENPGP].fpr[0] || entry->keys[CRYPTO_SMIME].fpr[0];
        log_info("event=refused reason=encryption_required client=%s rcpt=<%s> key=%s why=\"%s\"",
                 peer, log_addr(addr, safe), any ? "unusable" : "none", why);
        ingress_refused(e->ingress, REFUSED_ENCRYPTION_REQUIRED);
        return RCPT_REFUSED;
    }
    if (d == DECIDE_UNKNOWN) {
        /* A stale CRL puts every recipient of its CA in doubt at once: a
         * warning a minute says so, the rest go to debug. */
        char safe[LOG_SAFE_MAX];
        long long now = (long long)time(NULL);
        bool warn = now - e->doubt_warned >= 60;
        if (warn) e->doubt_warned = now;
        log_write(warn ? LOG_WARN : LOG_DEBUG, "event=key_in_doubt client=%s rcpt=<%s> why=\"%s\"",
                  peer, log_addr(addr, safe), why);
        return RCPT_IN_DOUBT;
    }
    if (d == DECIDE_PLAIN) return RCPT_PLAIN;
    const keydir_key_t *chosen = &entry->keys[m];
    if (!chosen->armored_len) return RCPT_IN_DOUBT; /* keydir_decide encrypts only to data */
    key->armored = malloc(chosen->armored_len);
    if (!key->armored) return RCPT_NO_MEMORY;
    memcpy(key->armored, chosen->armored, chosen->armored_len);
    key->armored_len = chosen->armored_len;
    key->method = m;
    snprintf(key->fpr, sizeof key->fpr, "%s", chosen->fpr);
    if (why[0]) { /* the preferred one could not serve: say so once per decision */
        char safe[LOG_SAFE_MAX];
        log_debug("event=encryption_fallback rcpt=<%s> method=%s why=\"%s\"", log_addr(addr, safe),
                  m == CRYPTO_SMIME ? "smime" : "openpgp", why);
    }
    return RCPT_ENCRYPT;
}

_Static_assert(QUEUE_KEY_METHODS == CRYPTO_METHODS, "queue_key_found_t's keys by crypto_method");

/* What Redis said of one method's key, as the cache holds it (data not copied). */
static keydir_key_t entry_key(const queue_found_key_t *f)
{
    keydir_key_t k = {.expires = f->expires,
                      .armored = (char *)f->armored,
                      .armored_len = f->armored ? f->armored_len : 0};
    snprintf(k.fpr, sizeof k.fpr, "%s", f->fpr);
    return k;
}

/* The address's discovered key, when its tag holds: an operator's key, of
 * either method, is never replaced by one (the caller asks only without
 * one). One whose tag fails was not written by a node: ignored, logged
 * and counted, so the address is keyless (and a look-up finds the real key
 * again), which is what deleting it would have done too. */
static keydir_key_t discovered_key(encrypt_t *e, const char *addr, const queue_disc_t *d)
{
    keydir_key_t none = {0};
    if (!d->fpr[0]) return none;
    keydir_disc_t it;
    if (!discover_entry_holds(e->ingress->seal, addr, d, &it)) {
        char safe[LOG_SAFE_MAX];
        log_warn("event=discovered_key_rejected rcpt=<%s> fpr=%s why=tag", log_addr(addr, safe),
                 d->fpr);
        metric_add(e->disc_rejected, 1);
        return none;
    }
    keydir_key_t k = {.expires = d->expires, .armored = (char *)d->data, .armored_len = it.len};
    snprintf(k.fpr, sizeof k.fpr, "%s", d->fpr);
    return k;
}

/* Why an entry (present or not in Redis) disagrees with the index; NULL
 * when it agrees: listed with a tag that holds, or neither there nor listed. */
static const char *check_item(const encrypt_t *e, const keydir_item_t *it, bool present)
{
    char entry[PROTO_PATH_MAX + 32];
    if (keydir_item_entry(it, entry, sizeof entry) < 0) return "entry_name_too_long";
    const char *tag = keydir_index_find(e->index, entry);
    if (!present) return tag ? "entry_missing" : NULL;
    if (!tag) return "entry_not_listed";
    int v = keydir_item_verify(e->ingress->seal, it, tag);
    return v == 1 ? NULL : v == 0 ? "entry_tag_bad" : "entry_key_unknown";
}

static const char *check_setting(const encrypt_t *e, enum keydir_item_kind kind, const char *name,
                                 const char *value)
{
    keydir_item_t it = {
        .kind = kind, .name = name, .data = value, .len = value ? strlen(value) : 0};
    return name[0] ? check_item(e, &it, value != NULL) : NULL;
}

/* What Redis said of addr, checked against the index: NULL when every part
 * holds (the keys of both methods, the address's and its domain's policy
 * and preference), else why not. */
static const char *check_found(const encrypt_t *e, const char *addr, const queue_key_found_t *f)
{
    static const char *const methods[QUEUE_KEY_METHODS] = {"openpgp", "smime"};
    const char *at = strrchr(addr, '@');
    const char *domain = at ? at + 1 : "";
    const char *why = NULL;
    for (int m = 0; m < QUEUE_KEY_METHODS && !why; m++) {
        const queue_found_key_t *k = &f->keys[m];
        keydir_item_t it = {.kind = KEYDIR_ITEM_ADDRESS,
                            .name = addr,
                            .method = methods[m],
                            .fpr = k->fpr,
                            .expires = k->expires,
                            .data = k->armored,
                            .len = k->armored ? k->armored_len : 0};
        why = check_item(e, &it, k->fpr[0] != 0);
    }
    if (!why) why = check_setting(e, KEYDIR_ITEM_POLICY, addr, f->addr_policy);
    if (!why) why = check_setting(e, KEYDIR_ITEM_POLICY, domain, f->domain_policy);
    if (!why) why = check_setting(e, KEYDIR_ITEM_PREFER, addr, f->addr_prefer);
    if (!why) why = check_setting(e, KEYDIR_ITEM_PREFER, domain, f->domain_prefer);
    return why;
}

/* The verdict while no index can be trusted: 451, never clear text. */
static enum rcpt_verdict directory_in_doubt(encrypt_t *e, const char *addr, const char *peer,
                                            const char *why)
{
    char safe[LOG_SAFE_MAX];
    metric_add(e->decisions[DECIDE_UNKNOWN], 1);
    log_debug("event=key_in_doubt client=%s rcpt=<%s> why=\"directory %s\"", peer,
              log_addr(addr, safe), why);
    return RCPT_IN_DOUBT;
}

static enum rcpt_verdict wait_for_index(encrypt_t *e, struct lookup *l);

/* Discovery's answer for a keyless address: its key, nothing, or no answer
 * in time, which under required is 451 4.7.1 (try later), never 550. */
static enum rcpt_verdict discovered_verdict(encrypt_t *e, struct lookup *l, enum discover_result r,
                                            const keydir_key_t *found, struct rcpt_key *key)
{
    keydir_entry_t entry = {.policy = l->policy, .prefer = l->prefer};
    if (r == DISCOVER_FOUND) entry.keys[CRYPTO_OPENPGP] = *found;
    if (r == DISCOVER_FAILED && l->policy == ENC_POLICY_REQUIRED) {
        char safe[LOG_SAFE_MAX];
        metric_add(e->decisions[DECIDE_UNKNOWN], 1);
        log_info("event=key_lookup_in_doubt client=%s rcpt=<%s> policy=required", l->peer,
                 log_addr(l->addr, safe));
        return RCPT_LOOKUP_FAILED;
    }
    return decide(e, l->addr, l->peer, &entry, key);
}

static void on_discovered(void *arg, enum discover_result r, const keydir_key_t *found)
{
    struct lookup *l = arg;
    struct rcpt_key key = {0};
    enum rcpt_verdict v = discovered_verdict(l->e, l, r, found, &key);
    l->cb(l->arg, v, &key);
    rcpt_key_free(&key);
    free(l);
}

/* A miss filed for name (an address, or "@domain") that has not run out and
 * whose tag holds. One that fails its tag was not filed by a node: it is
 * ignored, and a look-up made. */
static bool miss_holds(const encrypt_t *e, const char *name, const queue_miss_t *m)
{
    return m->until > (long long)time(NULL) &&
           keydir_miss_verify(e->ingress->seal, name, m->until, m->failed, m->tag) == 1;
}

/* A keyless address under discovery: a miss another look-up filed (its tag
 * checked) decides now; else a look-up of its own, unless this RCPT may not
 * make one (the null sender, a skipped domain, max_parallel reached), when
 * it is keyless for now. RCPT_PENDING: on_discovered has l. */
static enum rcpt_verdict keyless_verdict(encrypt_t *e, struct lookup *l, const queue_key_found_t *f,
                                         const keydir_entry_t *entry, struct rcpt_key *key)
{
    l->policy = entry->policy;
    l->prefer = entry->prefer;
    const queue_miss_t *miss = NULL;
    char domain[PROTO_PATH_MAX + 2];
    const char *at = strrchr(l->addr, '@');
    snprintf(domain, sizeof domain, "%s", at ? at : "@");
    if (miss_holds(e, l->addr, &f->miss))
        miss = &f->miss;
    else if (miss_holds(e, domain, &f->domain_miss))
        miss = &f->domain_miss;
    if (miss) {
        discover_count_cached(e->discover);
        return discovered_verdict(e, l, miss->failed ? DISCOVER_FAILED : DISCOVER_NONE, NULL, key);
    }
    if (l->may_discover && discover_applies(e->discover, l->addr) &&
        discover_start(e->discover, l->addr, on_discovered, l) == 0)
        return RCPT_PENDING;
    return decide(e, l->addr, l->peer, entry, key);
}

static void on_lookup(int status, const char *err, const queue_key_found_t *f, void *arg)
{
    struct lookup *l = arg;
    encrypt_t *e = l->e;
    if (status == 0 && e->index && !e->tampered && f->version > e->index_version && !l->again) {
        /* newer than the index: read it now (the poll may not have yet),
         * then look up once more; a version still ahead of its seal then
         * gets 451 */
        l->again = true;
        encrypt_rcpt_cb cb = l->cb;
        void *cb_arg = l->arg;
        enum rcpt_verdict v = wait_for_index(e, l); /* which frees l unless pending */
        if (v != RCPT_PENDING) cb(cb_arg, v, &(struct rcpt_key){0});
        return;
    }
    struct rcpt_key key = {0};
    enum rcpt_verdict v = RCPT_UNAVAILABLE;
    const char *why = NULL;
    if (status == 0 && (!e->index || e->tampered)) {
        v = directory_in_doubt(e, l->addr, l->peer, e->tampered ? e->tamper_why : "not read yet");
    } else if (status == 0 && f->version != e->index_version) {
        /* read at another version than the index's: being changed now */
        v = directory_in_doubt(e, l->addr, l->peer, "changing");
    } else if (status == 0 && (why = check_found(e, l->addr, f))) {
        tamper(e, f->version, why);
        char safe[LOG_SAFE_MAX];
        log_warn("event=directory_entry_rejected rcpt=<%s> why=%s version=%lld",
                 log_addr(l->addr, safe), why, f->version);
        v = directory_in_doubt(e, l->addr, l->peer, why);
    } else if (status == 0) {
        const config_t *cfg = e->ingress->cfg;
        keydir_entry_t entry = {.prefer = keydir_prefer(f->addr_prefer, f->domain_prefer,
                                                        (enum enc_prefer)cfg->crypto.prefer),
                                .keys = {[CRYPTO_OPENPGP] = entry_key(&f->keys[CRYPTO_OPENPGP]),
                                         [CRYPTO_SMIME] = entry_key(&f->keys[CRYPTO_SMIME])}};
        keydir_policy(&entry, f->addr_policy, f->domain_policy, cfg->crypto.default_policy,
                      (enum config_trust)cfg->crypto.min_trust);
        /* a discovered key, and a look-up for one, only where one may encrypt */
        bool keyless = !entry.keys[CRYPTO_OPENPGP].fpr[0] && !entry.keys[CRYPTO_SMIME].fpr[0];
        bool takes_discovered = keyless && entry.trust == TRUST_DISCOVERED;
        if (takes_discovered) entry.keys[CRYPTO_OPENPGP] = discovered_key(e, l->addr, &f->disc);
        bool discoverable = takes_discovered && e->discover && entry.policy != ENC_POLICY_NEVER;
        bool found = entry.keys[CRYPTO_OPENPGP].fpr[0] != 0;
        if (discoverable && found) discover_count_cached(e->discover);
        /* a keyless entry is not cached while discovery may change it: its
         * miss, or its absence, is read from Redis at each RCPT */
        bool undecided = discoverable && !found;
        if (!undecided && f->dversion == e->dversion &&
            keydir_put(e->keydir, f->version, l->addr, &entry) < 0) {
            char safe[LOG_SAFE_MAX];
            log_warn("event=keys_cache_failed rcpt=%s", log_addr(l->addr, safe));
        }
        v = undecided ? keyless_verdict(e, l, f, &entry, &key)
                      : decide(e, l->addr, l->peer, &entry, &key);
        if (v == RCPT_PENDING) return;
    } else {
        log_warn("event=keys_lookup_failed client=%s error=\"%s\"", l->peer, err);
    }
    l->cb(l->arg, v, &key);
    rcpt_key_free(&key); /* unless the callback took it */
    free(l);
}

static int send_lookup(struct lookup *l)
{
    const char *at = strrchr(l->addr, '@');
    return queue_key_lookup(l->e->ingress->queue, l->addr, at ? at + 1 : "", on_lookup, l);
}

/* The first index was read (or could not be): the lookups that waited for
 * it go to Redis now, or get 451 when there is still none to trust. */
static void release_waiting(encrypt_t *e)
{
    struct lookup *l = e->waiting;
    e->waiting = NULL;
    e->n_waiting = 0;
    while (l) {
        struct lookup *next = l->next;
        struct rcpt_key key = {0};
        if (!e->index || e->tampered) {
            l->cb(l->arg,
                  directory_in_doubt(e, l->addr, l->peer,
                                     e->tampered ? e->tamper_why : "not read yet"),
                  &key);
            free(l);
        } else if (send_lookup(l) < 0) {
            log_warn("event=keys_lookup_failed client=%s error=\"redis not connected\"", l->peer);
            l->cb(l->arg, RCPT_UNAVAILABLE, &key);
            free(l);
        }
        l = next;
    }
}

/* A lookup waits for the index to be read (the first one, just after a
 * start; or a newer one); bounded. Else 451 at once, and l freed. */
static enum rcpt_verdict wait_for_index(encrypt_t *e, struct lookup *l)
{
    if (!e->reading && e->n_waiting < WAITING_MAX && queue_ready(e->ingress->queue))
        e->reading = queue_key_directory(e->ingress->queue, on_directory, e) == 0;
    if (!e->reading || e->n_waiting >= WAITING_MAX) {
        enum rcpt_verdict v =
            directory_in_doubt(e, l->addr, l->peer, e->index ? "changing" : "not read yet");
        free(l);
        return v;
    }
    l->next = e->waiting;
    e->waiting = l;
    e->n_waiting++;
    return RCPT_PENDING;
}

enum rcpt_verdict encrypt_rcpt(encrypt_t *e, const char *addr, const char *peer, bool may_discover,
                               struct rcpt_key *key, encrypt_rcpt_cb cb, void *arg)
{
    const config_t *cfg = e->ingress->cfg;
    char canon[PROTO_PATH_MAX + 1];
    if (crypto_addr_canon(addr, cfg->crypto.case_insensitive, cfg->crypto.strip_detail, canon,
                          sizeof canon) < 0)
        snprintf(canon, sizeof canon, "%s", addr);
    if (e->tampered) return directory_in_doubt(e, canon, peer, e->tamper_why);
    const keydir_entry_t *cached = e->index ? keydir_get(e->keydir, canon) : NULL;
    if (cached) return decide(e, canon, peer, cached, key);
    struct lookup *l = calloc(1, sizeof *l);
    if (!l) return RCPT_NO_MEMORY;
    *l = (struct lookup){.e = e, .cb = cb, .arg = arg, .may_discover = may_discover};
    memcpy(l->addr, canon, sizeof l->addr);
    snprintf(l->peer, sizeof l->peer, "%s", peer);
    if (!e->index) return wait_for_index(e, l);
    if (send_lookup(l) < 0) {
        log_warn("event=keys_lookup_failed client=%s error=\"redis not connected\"", peer);
        free(l);
        return RCPT_UNAVAILABLE;
    }
    return RCPT_PENDING;
}

/* ---- end of the body ---- */

struct encryption {
    uv_work_t work;
    encrypt_t *e;
    gateway_job_t job;
    gateway_rcpt_t *rcpts;
    crypto_rcpt_key_t *keys;
    bool needs_homes; /* gpg encrypts some copy */
    char peer[64];
    encrypt_done_cb done;
    void *arg;
};

static void encryption_free(struct encryption *en)
{
    gateway_job_release(&en->job);
    free(en->rcpts);
    free(en->keys);
    free(en);
}

static void finish(struct encryption *en)
{
    bool timeout = en->job.outcome == GATEWAY_FAILED && en->job.timed_out;
    metric_add(timeout ? en->e->timeouts : en->e->outcomes[en->job.outcome], 1);
    count_ciphers(en->e, &en->job);
    if (en->job.outcome == GATEWAY_FAILED)
        log_error("event=encryption_failed mid=%s client=%s error=\"%s\"", en->job.mid, en->peer,
                  en->job.error);
    en->done(en->arg, &en->job);
    encryption_free(en);
}

/* How much nicer than the event loop a pool thread runs once it has
 * encrypted. Under load the in-process engines would take their share of
 * the CPU from the loop, which every session waits on, plaintext ones too;
 * at nice 10 the kernel gives the loop about nine parts in ten of a core
 * they contend for, and the pool the rest, and all of any core left idle. */
#define POOL_NICENESS 10

static void encrypt_in_thread(uv_work_t *work)
{
    static _Thread_local bool niced;
    if (!niced) {
        niced = true;
        /* Linux keeps a nice value per thread; failing leaves it as it was. */
        errno = 0;
        int now = getpriority(PRIO_PROCESS, (id_t)gettid());
        if (errno == 0) setpriority(PRIO_PROCESS, (id_t)gettid(), now + POOL_NICENESS);
    }
    struct encryption *en = work->data;
    gateway_run(&en->job);
}

static void after_encrypt(uv_work_t *work, int status)
{
    struct encryption *en = work->data;
    en->e->running--;
    metric_add(en->e->pending, -1);
    if (status < 0) { /* cancelled: never ran */
        en->job.outcome = GATEWAY_FAILED;
        snprintf(en->job.error, sizeof en->job.error, "cancelled");
    }
    finish(en);
}

/* The job over tx; true when any recipient has a key. */
static bool prepare(struct encryption *en, const struct transaction *tx)
{
    const config_t *cfg = en->e->ingress->cfg;
    bool any_key = false;
    for (unsigned i = 0; i < tx->n_rcpts; i++) {
        const struct rcpt_key *k = &tx->rcpts[i].key;
        en->rcpts[i].addr = k->addr;
        if (k->armored) {
            en->keys[i] = (crypto_rcpt_key_t){.method = k->method,
                                              .fpr = k->fpr,
                                              .armored = k->armored,
                                              .armored_len = k->armored_len};
            en->rcpts[i].key = &en->keys[i];
            en->needs_homes |= en->e->gnupg && k->method == CRYPTO_OPENPGP;
            any_key = true;
        }
    }
    en->job = (gateway_job_t){.mid = tx->mid,
                              .msg = tx->body.data,
                              .len = tx->body.len,
                              .rcpts = en->rcpts,
                              .n_rcpts = tx->n_rcpts,
                              .hide_subject = cfg->crypto.hide_subject,
                              .legacy_display = cfg->crypto.legacy_display,
                              .case_insensitive = cfg->crypto.case_insensitive,
                              .strip_detail = cfg->crypto.strip_detail,
                              .homes = en->e->homes,
                              .max_bcc_copies = cfg->crypto.max_bcc_copies,
                              .seal = en->e->ingress->seal};
    return any_key;
}

/* Off to the thread pool, or refused now when its queue is full: that
 * refuses sooner than the client would wait for a retry. */
static void queue_encryption(struct encryption *en)
{
    encrypt_t *e = en->e;
    const config_t *cfg = e->ingress->cfg;
    if (e->running >= cfg->crypto.max_pending) {
        en->job.outcome = GATEWAY_OUTCOMES;
        log_warn("event=encryption_busy mid=%s client=%s pending=%u", en->job.mid, en->peer,
                 e->running);
        finish(en);
        return;
    }
    /* The GnuPG homes are made when first needed: a node that never
     * runs gpg leaves nothing behind, even when it is killed. */
    if (en->needs_homes && !e->homes[0] &&
        crypto_homes_create(cfg->crypto.home_dir, e->homes, sizeof e->homes, en->job.error,
                            sizeof en->job.error) < 0) {
        e->homes[0] = 0;
        en->job.outcome = GATEWAY_FAILED;
        finish(en);
        return;
    }
    en->work.data = en;
    if (uv_queue_work(e->ingress->loop, &en->work, encrypt_in_thread, after_encrypt) < 0) {
        en->job.outcome = GATEWAY_FAILED;
        snprintf(en->job.error, sizeof en->job.error, "thread pool refused the job");
        finish(en);
        return;
    }
    e->running++;
    metric_add(e->pending, 1);
}

void encrypt_message(encrypt_t *e, const struct transaction *tx, const char *peer,
                     encrypt_done_cb done, void *arg)
{
    struct encryption *en = calloc(1, sizeof *en);
    if (en) en->rcpts = calloc(tx->n_rcpts, sizeof *en->rcpts);
    if (en) en->keys = calloc(tx->n_rcpts, sizeof *en->keys);
    if (!en || !en->rcpts || !en->keys) {
        if (en) encryption_free(en);
        done(arg, NULL);
        return;
    }
    en->e = e;
    en->done = done;
    en->arg = arg;
    snprintf(en->peer, sizeof en->peer, "%s", peer);
    if (prepare(en, tx)) {
        queue_encryption(en);
        return;
    }
    gateway_run(&en->job); /* sealing alone is cheap enough for the loop */
    finish(en);
}
