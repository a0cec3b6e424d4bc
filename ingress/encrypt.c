/* The ingress side of the encryption gateway: the policy and key of each
 * recipient at RCPT TO (from the node's cache of the key directory, else
 * from Redis), and at the end of the body the gateway itself, in the thread
 * pool when anything is to be encrypted, never on the event loop. */
#include "ingress/session.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The directory's version is asked for this often: an import is in effect
 * on every node within about this long. */
#define KEYS_POLL_MS    250
#define KEYDIR_CAPACITY 8192

static const char *const decision_names[DECISIONS] = {"plain", "encrypt", "refused"};
static const char *const outcome_names[] = {[GATEWAY_PLAIN] = "plain",
                                            [GATEWAY_ENCRYPTED] = "encrypted",
                                            [GATEWAY_PASSTHROUGH] = "passthrough",
                                            [GATEWAY_FAILED] = "failed",
                                            [GATEWAY_OUTCOMES] = "busy"};

static void register_metrics(ingress_t *ingress)
{
    char labels[64];
    for (int d = 0; d < DECISIONS; d++) {
        snprintf(labels, sizeof labels, "decision=\"%s\"", decision_names[d]);
        ingress->crypt.decisions[d] = metric_counter(
            "sealpost_ingress_recipient_decisions_total",
            "Recipients by encryption decision at RCPT TO: plain, encrypt, or refused "
            "(policy required, no usable key).",
            labels);
    }
    for (int o = 0; o <= GATEWAY_OUTCOMES; o++) {
        snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome_names[o]);
        ingress->crypt.outcomes[o] =
            metric_counter("sealpost_ingress_encryptions_total",
                           "Messages through the encryption gateway, by outcome (busy: refused "
                           "with 451 because the encryption queue was full).",
                           labels);
    }
    ingress->crypt.pending = metric_gauge("sealpost_ingress_encryptions_pending",
                                          "Messages being encrypted or waiting for a thread.", "");
}

/* ---- the directory's version ---- */

static void on_version(int status, const char *err, long long version, void *arg)
{
    ingress_t *ingress = arg;
    ingress->crypt.polling = false;
    if (status == 0 && keydir_version(ingress->crypt.keydir, version))
        log_debug("event=keys_changed version=%lld", version);
    else if (status < 0)
        log_debug("event=keys_poll_failed error=\"%s\"", err);
    ingress_maybe_stopped(ingress);
}

static void on_poll_timer(uv_timer_t *t)
{
    ingress_t *ingress = t->data;
    if (ingress->crypt.polling || !queue_ready(ingress->queue)) return;
    ingress->crypt.polling = true;
    if (queue_key_version(ingress->queue, on_version, ingress) < 0) ingress->crypt.polling = false;
}

int encrypt_start(ingress_t *ingress, char *err, size_t errlen)
{
    if (crypto_gpg_init(err, errlen) < 0) return -1;
    ingress->crypt.keydir = keydir_new(KEYDIR_CAPACITY);
    if (!ingress->crypt.keydir) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    register_metrics(ingress);
    uv_timer_init(ingress->loop, &ingress->crypt.poll);
    ingress->crypt.poll.data = ingress;
    uv_timer_start(&ingress->crypt.poll, on_poll_timer, 0, KEYS_POLL_MS);
    ingress->crypt.poll_open = true;
    return 0;
}

static void on_poll_closed(uv_handle_t *h)
{
    ingress_t *ingress = h->data;
    ingress->crypt.poll_open = false;
    ingress_maybe_stopped(ingress);
}

void encrypt_stop(ingress_t *ingress)
{
    if (ingress->crypt.poll_open && !uv_is_closing((uv_handle_t *)&ingress->crypt.poll))
        uv_close((uv_handle_t *)&ingress->crypt.poll, on_poll_closed);
}

bool encrypt_busy(const ingress_t *ingress)
{
    return ingress->crypt.poll_open || ingress->crypt.polling;
}

void encrypt_free(ingress_t *ingress)
{
    keydir_free(ingress->crypt.keydir);
    crypto_homes_remove(ingress->crypt.homes);
}

/* ---- RCPT TO ---- */

void encrypt_rcpt_free(struct rcpt_key *k)
{
    if (k->armored) sodium_memzero(k->armored, k->armored_len);
    free(k->armored);
    k->armored = NULL;
}

/* The decision is made: the recipient is added (250) or refused (550). */
static void decided(session_t *s, const keydir_entry_t *e)
{
    char *entry = s->pending_rcpt;
    s->pending_rcpt = NULL;
    enum crypto_decision d = keydir_decide(e, (long long)time(NULL));
    metric_add(s->ingress->crypt.decisions[d], 1);
    if (d == DECIDE_REFUSE) {
        char safe[LOG_SAFE_MAX];
        log_info("event=refused reason=encryption_required client=%s rcpt=<%s> key=%s", s->peer,
                 log_addr(entry, safe), e->fpr[0] ? "unusable" : "none");
        session_reply(s,
                      "550 5.7.1 <%s>: Recipient requires encryption and no usable key is "
                      "known",
                      entry);
        ingress_refused(s->ingress, REFUSED_ENCRYPTION_REQUIRED);
        free(entry);
        return;
    }
    struct rcpt_key key = {0};
    snprintf(key.addr, sizeof key.addr, "%s", s->pending_canon);
    if (d == DECIDE_ENCRYPT) {
        key.armored = malloc(e->armored_len);
        if (!key.armored) {
            free(entry);
            session_reply(s, "452 4.3.1 Insufficient system resources");
            return;
        }
        memcpy(key.armored, e->armored, e->armored_len);
        key.armored_len = e->armored_len;
        snprintf(key.fpr, sizeof key.fpr, "%s", e->fpr);
    }
    session_add_rcpt(s, entry, &key);
}

static void on_lookup(int status, const char *err, const queue_key_found_t *f, void *arg)
{
    session_t *s = arg;
    s->busy = false;
    keydir_entry_t e = {0};
    if (status == 0) {
        e.policy = keydir_policy(f->addr_policy, f->domain_policy, s->cfg->crypto.default_policy);
        snprintf(e.fpr, sizeof e.fpr, "%s", f->fpr);
        e.expires = f->expires;
        e.armored = (char *)f->armored;
        e.armored_len = f->armored ? f->armored_len : 0;
        if (keydir_put(s->ingress->crypt.keydir, f->version, s->pending_canon, &e) < 0) {
            char safe[LOG_SAFE_MAX];
            log_warn("event=keys_cache_failed rcpt=%s", log_addr(s->pending_canon, safe));
        }
    }
    if (s->closed) {
        free(s->pending_rcpt);
        s->pending_rcpt = NULL;
        session_maybe_free(s);
        return;
    }
    if (status < 0) {
        log_warn("event=keys_lookup_failed client=%s error=\"%s\"", s->peer, err);
        free(s->pending_rcpt);
        s->pending_rcpt = NULL;
        session_reply(s, "451 4.3.0 Recipient's encryption policy unavailable, try again later");
    } else {
        decided(s, &e);
    }
    session_process(s);
}

void encrypt_rcpt(session_t *s, char *entry)
{
    const config_t *cfg = s->cfg;
    s->pending_rcpt = entry;
    if (crypto_addr_canon(entry, cfg->crypto.case_insensitive, cfg->crypto.strip_detail,
                          s->pending_canon, sizeof s->pending_canon) < 0)
        snprintf(s->pending_canon, sizeof s->pending_canon, "%s", entry);
    const keydir_entry_t *cached = keydir_get(s->ingress->crypt.keydir, s->pending_canon);
    if (cached) {
        decided(s, cached);
        return;
    }
    const char *at = strrchr(s->pending_canon, '@');
    s->busy = true;
    if (queue_key_lookup(s->ingress->queue, s->pending_canon, at ? at + 1 : "", on_lookup, s) < 0)
        on_lookup(-1, "redis not connected", NULL, s);
}

/* ---- end of the body ---- */

struct encryption {
    uv_work_t work;
    session_t *s;
    gateway_job_t job;
    gateway_rcpt_t *rcpts;
    crypto_rcpt_key_t *keys;
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
    session_t *s = en->s;
    metric_add(s->ingress->crypt.outcomes[en->job.outcome], 1);
    if (en->job.outcome == GATEWAY_FAILED) {
        log_error("event=encryption_failed mid=%s client=%s error=\"%s\"", s->mid, s->peer,
                  en->job.error);
        if (en->job.too_many_copies)
            session_reply(s,
                          "552 5.5.3 Too many Bcc recipients with keys in one message "
                          "(at most %u): send to fewer at once",
                          s->cfg->crypto.max_bcc_copies);
        else
            session_reply(s, "451 4.7.0 Encryption failed, message not accepted; try again later");
        session_commit_failed(s);
    } else if (s->closed) { /* nobody to acknowledge: the client sends it again */
        log_info("event=client_gone mid=%s client=%s", s->mid, s->peer);
        session_commit_failed(s);
    } else {
        if (en->job.outcome != GATEWAY_PLAIN)
            log_info("event=encrypted mid=%s outcome=%s variants=%u", s->mid,
                     outcome_names[en->job.outcome], en->job.n_variants);
        session_enqueue(s, &en->job);
    }
    encryption_free(en);
}

static void encrypt_in_thread(uv_work_t *work)
{
    struct encryption *en = work->data;
    gateway_run(&en->job);
}

static void after_encrypt(uv_work_t *work, int status)
{
    struct encryption *en = work->data;
    ingress_t *ingress = en->s->ingress;
    ingress->crypt.running--;
    metric_add(ingress->crypt.pending, -1);
    if (status < 0) { /* cancelled: never ran */
        en->job.outcome = GATEWAY_FAILED;
        snprintf(en->job.error, sizeof en->job.error, "cancelled");
    }
    finish(en);
}

void encrypt_commit(session_t *s)
{
    ingress_t *ingress = s->ingress;
    const config_t *cfg = s->cfg;
    struct encryption *en = calloc(1, sizeof *en);
    if (en) en->rcpts = calloc(s->n_rcpts, sizeof *en->rcpts);
    if (en) en->keys = calloc(s->n_rcpts, sizeof *en->keys);
    if (!en || !en->rcpts || !en->keys) {
        if (en) encryption_free(en);
        session_reply(s, "451 4.3.1 Insufficient system resources");
        session_commit_failed(s);
        return;
    }
    en->s = s;
    bool any_key = false;
    for (unsigned i = 0; i < s->n_rcpts; i++) {
        const struct rcpt_key *k = &s->rcpt_keys[i];
        en->rcpts[i].addr = k->addr;
        if (k->armored) {
            en->keys[i] = (crypto_rcpt_key_t){k->fpr, k->armored, k->armored_len};
            en->rcpts[i].key = &en->keys[i];
            any_key = true;
        }
    }
    en->job = (gateway_job_t){.mid = s->mid,
                              .msg = s->body.data,
                              .len = s->body.len,
                              .rcpts = en->rcpts,
                              .n_rcpts = s->n_rcpts,
                              .hide_subject = cfg->crypto.hide_subject,
                              .case_insensitive = cfg->crypto.case_insensitive,
                              .strip_detail = cfg->crypto.strip_detail,
                              .homes = ingress->crypt.homes,
                              .max_bcc_copies = cfg->crypto.max_bcc_copies,
                              .seal = ingress->seal};
    s->busy = true;
    if (!any_key) { /* sealing alone is cheap enough for the loop */
        gateway_run(&en->job);
        finish(en);
        return;
    }
    /* A full encryption queue refuses now rather than keeping the client
     * waiting longer than it would wait for a retry. */
    if (ingress->crypt.running >= cfg->crypto.max_pending) {
        en->job.outcome = GATEWAY_OUTCOMES;
        metric_add(ingress->crypt.outcomes[GATEWAY_OUTCOMES], 1);
        log_warn("event=encryption_busy mid=%s client=%s pending=%u", s->mid, s->peer,
                 ingress->crypt.running);
        session_reply(s, "451 4.3.2 System busy encrypting, try again later");
        encryption_free(en);
        session_commit_failed(s);
        return;
    }
    /* The GnuPG homes are made when first needed: a node that never
     * encrypts leaves nothing behind, even when it is killed. */
    if (!ingress->crypt.homes[0] &&
        crypto_homes_create(cfg->crypto.home_dir, ingress->crypt.homes, sizeof ingress->crypt.homes,
                            en->job.error, sizeof en->job.error) < 0) {
        ingress->crypt.homes[0] = 0;
        en->job.outcome = GATEWAY_FAILED;
        finish(en);
        return;
    }
    en->work.data = en;
    if (uv_queue_work(ingress->loop, &en->work, encrypt_in_thread, after_encrypt) < 0) {
        en->job.outcome = GATEWAY_FAILED;
        snprintf(en->job.error, sizeof en->job.error, "thread pool refused the job");
        finish(en);
        return;
    }
    ingress->crypt.running++;
    metric_add(ingress->crypt.pending, 1);
}
