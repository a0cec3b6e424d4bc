/* Private to ingress/: one mail transaction (RFC 5321 §3.3), from MAIL to
 * the reply for its message: the envelope, the recipients with the keys their
 * mail is encrypted to, and the body as it is read. Made at MAIL, freed in one
 * place, transaction_free. */
#ifndef SEALPOST_INGRESS_TRANSACTION_H
#define SEALPOST_INGRESS_TRANSACTION_H

#include "ingress/internal.h"

/* A recipient's address as the key directory files it, and the key its
 * mail is encrypted to (armored NULL: it gets the original): an OpenPGP key
 * (armored) or an S/MIME certificate (PEM; fpr its id), as method says. */
struct rcpt_key {
    char addr[PROTO_PATH_MAX + 1];
    enum crypto_method method;
    char fpr[CRYPTO_FPR_MAX + 1];
    char *armored;
    size_t armored_len;
};

struct rcpt {
    char *addr;      /* "local@domain", as it is queued */
    const char *dsn; /* its DSN parameters ("" for none), in addr's allocation */
    struct rcpt_key key;
};

struct transaction {
    char mid[33]; /* made when the body begins */
    char sender[PROTO_PATH_MAX + 1];
    proto_mail_params_t params;
    bool chunking; /* the body comes in BDAT chunks (RFC 3030) */
    /* For the content rate over all of BDAT's chunks (session.c's clocks):
     * when the first began (uv_now, 0: none yet), and the octets since. */
    uint64_t chunks_since;
    uint64_t chunk_octets;
    struct rcpt *rcpts;
    unsigned n_rcpts;
    unsigned overshoot; /* RCPTs refused past max_recipients (smtp.c: refuse_overshoot) */
    buf_t body;
    size_t content_start; /* where the client's content begins in body, after Received: */
    proto_data_t data;
};

/* What the Received: line says of the session (RFC 5321 §4.4). */
struct received {
    const char *helo, *peer, *tls_info; /* tls_info NULL: not under TLS */
    const char *hostname;
    bool esmtp, authenticated;
};

struct transaction *transaction_new(const char *sender, const proto_mail_params_t *params);
void transaction_free(struct transaction *tx);
void rcpt_key_free(struct rcpt_key *key);

bool transaction_has_rcpt(const struct transaction *tx, const char *addr);
/* Adds a recipient, taking over key's data; -1 (key freed) when memory ran out. */
int transaction_add_rcpt(struct transaction *tx, const char *addr, const char *dsn,
                         struct rcpt_key *key);

/* Begins the body: a new message id, the Received: line, and the decoder
 * (for DATA, or BDAT chunks). -1 when memory ran out. */
int transaction_start_body(struct transaction *tx, const struct received *r, const config_t *cfg,
                           bool chunked);
/* Decodes input into the body; the octets consumed (DATA stops after its
 * end marker), or -1 when memory ran out. */
long transaction_feed(struct transaction *tx, const char *in, size_t len);
/* The content broke a rule (tx->data.error): the refusal, counted, and its reply. */
enum refusal transaction_refusal(ingress_t *ingress, const struct transaction *tx, char *reply,
                                 size_t len);
/* RFC 6409 §8.2, §8.3: Date and Message-ID added when the client left them
 * out, right after our Received: line; nothing else is touched. */
int transaction_complete_header(struct transaction *tx, const char *hostname);

#endif
