/* The end of a message's data to its reply: see commit.h. */
#include "ingress/commit.h"

#include "ingress/encrypt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct commit {
    ingress_t *ingress;
    struct transaction *tx;
    struct commit_client client;
    commit_done_cb done;
    void *arg;
    uint64_t enqueue_start; /* uv_now when the enqueue call went out */
    size_t size;            /* the message's, as received: its body is freed at the enqueue */
    /* From the enqueue on, what names the message's keys, for a withdraw:
     * each recipient's address (in tx) and body variant, and how many bodies. */
    const char **addrs;
    unsigned *variant;
    unsigned n_bodies;
};

static void finish(struct commit *c, const char *reply)
{
    c->done(c->arg, *c->client.gone ? NULL : reply);
    transaction_free(c->tx);
    free(c->addrs);
    free(c->variant);
    free(c);
}

/* The client sends the message again, as it has no 250 for it: the copy
 * Redis may hold is taken back (queue_withdraw, which logs what became of
 * it), so the retry is the only one delivered. */
static void withdraw(struct commit *c)
{
    queue_message_t m = {.sender = c->tx->sender,
                         .rcpts = c->addrs,
                         .n_rcpts = c->tx->n_rcpts,
                         .n_bodies = c->n_bodies,
                         .rcpt_body = c->variant};
    memcpy(m.id, c->tx->mid, sizeof m.id);
    queue_withdraw(c->ingress->queue, &m);
}

static void on_enqueued(int status, const char *err, void *arg)
{
    struct commit *c = arg;
    struct transaction *tx = c->tx;
    struct ingress_metrics *m = &c->ingress->metrics;
    metric_observe(m->enqueue_seconds,
                   (double)(uv_now(c->ingress->loop) - c->enqueue_start) / 1000.0);
    /* Stored maybe: no reply came, or too few replicas acknowledged it. */
    bool unanswered = status == QUEUE_UNANSWERED;
    if (*c->client.gone) {
        /* Stored or not, unacknowledged: the client sends it again. A stored
         * copy is withdrawn too, as after a 451: RFC 5321 §6.1 puts the
         * responsibility on us only with the 250, and a client that did not
         * get it keeps the message (RFC 1047); delivering ours as well would
         * be the duplicate. */
        log_info("event=%s mid=%s client=%s reason=client_gone withdraw=%s",
                 status ? "enqueue_failed" : "accepted_unacknowledged", tx->mid, c->client.peer,
                 status == 0 || unanswered ? "yes" : "no");
        if (status == 0 || unanswered) withdraw(c);
        finish(c, NULL);
        return;
    }
    if (status < 0) {
        log_warn("event=enqueue_failed mid=%s client=%s error=\"%s\" withdraw=%s", tx->mid,
                 c->client.peer, err, unanswered ? "yes" : "no");
        metric_add(m->enqueue_failed, 1);
        if (unanswered) withdraw(c);
        finish(c, "451 4.3.0 Error: queue file write error, try again later");
        return;
    }
    char safe[LOG_SAFE_MAX], reply[64];
    log_info("event=accepted mid=%s client=%s from=<%s> rcpts=%u size=%zu", tx->mid, c->client.peer,
             log_addr(tx->sender, safe), tx->n_rcpts, c->size);
    metric_add(m->accepted, 1);
    metric_add(m->received_bytes, (double)c->size);
    metric_add(m->recipients, tx->n_rcpts);
    snprintf(reply, sizeof reply, "250 2.0.0 Ok: queued as %s", tx->mid);
    finish(c, reply);
}

/* The kind of copy each recipient gets, counted for the status page: a
 * keyed recipient of an encrypted message gets its method's, everyone else
 * the message as it came (passthrough when the sender had encrypted it). */
static enum queue_copy_kind copy_kind(const gateway_job_t *job, const crypto_rcpt_key_t *key)
{
    if (job->outcome == GATEWAY_PASSTHROUGH) return QUEUE_COPY_PASSTHROUGH;
    if (job->outcome != GATEWAY_ENCRYPTED || !key) return QUEUE_COPY_PLAIN;
    return key->method == CRYPTO_SMIME ? QUEUE_COPY_SMIME : QUEUE_COPY_OPENPGP;
}

static void count_copies(const gateway_job_t *job, unsigned copies[QUEUE_COPY_KINDS])
{
    for (unsigned i = 0; i < job->n_rcpts; i++)
        copies[copy_kind(job, job->rcpts[i].key)]++;
}

/* The envelope's MAC, over what a worker acts on: the message id, the
 * sender, the MAIL parameters, the variants' sealed lengths, and each
 * recipient with its variant and DSN parameters in order (env, which is
 * stored beside it). A worker recomputes it before it unseals anything. */
static int envelope_mac(const seal_keyring_t *seal, const queue_message_t *m, buf_t *env,
                        char mac[SEAL_MAC_LEN + 1])
{
    buf_t lens;
    buf_init(&lens);
    for (unsigned v = 0; v < m->n_bodies; v++) {
        char n[24];
        int w = snprintf(n, sizeof n, v ? " %zu" : "%zu", m->bodies[v].len);
        if (buf_append(&lens, n, (size_t)w) < 0) goto fail;
    }
    for (unsigned i = 0; i < m->n_rcpts; i++)
        if (queue_env_append(env, m->rcpts[i], m->rcpt_body[i], m->rcpt_params[i]) < 0) goto fail;
    if (buf_append(&lens, "", 1) < 0 || buf_append(env, "", 1) < 0) goto fail;
    seal_envelope_t e = {m->id, m->sender, m->mail_params ? m->mail_params : "", lens.data,
                         env->data};
    seal_envelope_tag(seal, &e, mac);
    buf_free(&lens);
    return 0;
fail:
    buf_free(&lens);
    return -1;
}

/* Stores the envelope with the gateway's sealed variants in one call. */
static void enqueue(struct commit *c, const gateway_job_t *job)
{
    struct transaction *tx = c->tx;
    queue_message_t m = {0};
    char info[400];
    const char **addrs = c->addrs = calloc(tx->n_rcpts, sizeof *addrs);
    const char **dsn = calloc(tx->n_rcpts, sizeof *dsn);
    unsigned *variant = c->variant = calloc(tx->n_rcpts, sizeof *variant);
    queue_body_t *bodies = calloc(job->n_variants, sizeof *bodies);
    c->n_bodies = job->n_variants;
    int rc = -1;
    buf_t env;
    buf_init(&env);
    char mac[SEAL_MAC_LEN + 1];
    if (addrs && dsn && variant && bodies) {
        for (unsigned i = 0; i < tx->n_rcpts; i++) {
            addrs[i] = tx->rcpts[i].addr;
            dsn[i] = tx->rcpts[i].dsn;
            variant[i] = job->rcpts[i].variant;
        }
        for (unsigned v = 0; v < job->n_variants; v++)
            bodies[v] = (queue_body_t){job->variants[v].data, job->variants[v].len};
        memcpy(m.id, tx->mid, sizeof m.id);
        snprintf(info, sizeof info, "client=%s helo=%s", c->client.peer, c->client.helo);
        m.sender = tx->sender;
        m.rcpts = addrs;
        m.rcpt_params = dsn;
        m.n_rcpts = tx->n_rcpts;
        m.info = info;
        m.mail_params = tx->params.stored;
        m.bodies = bodies;
        m.n_bodies = job->n_variants;
        m.rcpt_body = variant;
        count_copies(job, m.copies);
        m.mac = mac;
        c->enqueue_start = uv_now(c->ingress->loop);
        bool made = envelope_mac(c->ingress->seal, &m, &env, mac) == 0;
        m.env = env.data; /* written by envelope_mac */
        if (made && queue_ready(c->ingress->queue))
            rc = queue_enqueue(c->ingress->queue, &m, on_enqueued, c);
    }
    /* queue_enqueue copied what it needs into the request; a withdraw
     * needs addrs and variant again */
    free(dsn);
    free(bodies);
    buf_free(&env);
    if (rc < 0) on_enqueued(-1, "redis not connected", c);
}

static void on_encrypted(void *arg, const gateway_job_t *job)
{
    struct commit *c = arg;
    if (!job) {
        finish(c, "451 4.3.1 Insufficient system resources");
    } else if (job->outcome == GATEWAY_OUTCOMES) {
        finish(c, "451 4.3.2 System busy encrypting, try again later");
    } else if (job->outcome == GATEWAY_FAILED && job->too_many_copies) {
        char reply[160];
        snprintf(reply, sizeof reply,
                 "552 5.5.3 Too many Bcc recipients with keys in one message (at most %u): "
                 "send to fewer at once",
                 c->ingress->cfg->crypto.max_bcc_copies);
        finish(c, reply);
    } else if (job->outcome == GATEWAY_FAILED && job->timed_out) {
        finish(c, "451 4.7.0 Encryption timed out, message not accepted; try again later");
    } else if (job->outcome == GATEWAY_FAILED) {
        finish(c, "451 4.7.0 Encryption failed, message not accepted; try again later");
    } else if (*c->client.gone) { /* nobody to acknowledge: the client sends it again */
        log_info("event=client_gone mid=%s client=%s", c->tx->mid, c->client.peer);
        finish(c, NULL);
    } else {
        if (job->outcome != GATEWAY_PLAIN)
            log_info("event=encrypted mid=%s outcome=%s variants=%u", c->tx->mid,
                     encrypt_outcome_name(job->outcome), job->n_variants);
        /* Every variant is sealed now, and the body as received is read no
         * more: freed before the enqueue formats its command, so a large
         * message is not held three times over at once. */
        c->size = c->tx->body.len;
        buf_free(&c->tx->body);
        enqueue(c, job);
    }
}

void commit_message(ingress_t *ingress, struct transaction *tx, const struct commit_client *client,
                    commit_done_cb done, void *arg)
{
    struct commit *c = calloc(1, sizeof *c);
    if (!c) {
        transaction_free(tx);
        done(arg, *client->gone ? NULL : "451 4.3.1 Insufficient system resources");
        return;
    }
    *c = (struct commit){.ingress = ingress, .tx = tx, .client = *client, .done = done, .arg = arg};
    if (client->authenticated &&
        transaction_complete_header(tx, ingress->cfg->ingress.hostname) < 0) {
        finish(c, "451 4.3.1 Insufficient system resources");
        return;
    }
    encrypt_message(ingress->encrypt, tx, client->peer, on_encrypted, c);
}
