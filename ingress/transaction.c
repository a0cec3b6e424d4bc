/* One mail transaction: its envelope, its recipients and their keys, and
 * the body as it is decoded (DATA or BDAT). Nothing here speaks SMTP: the
 * session decides what to do, this keeps what was decided. */
#include "ingress/transaction.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct transaction *transaction_new(const char *sender, const proto_mail_params_t *params)
{
    struct transaction *tx = calloc(1, sizeof *tx);
    if (!tx) return NULL;
    snprintf(tx->sender, sizeof tx->sender, "%s", sender);
    tx->params = *params;
    return tx;
}

void rcpt_key_free(struct rcpt_key *key)
{
    if (key->armored) sodium_memzero(key->armored, key->armored_len);
    free(key->armored);
    key->armored = NULL;
}

void transaction_free(struct transaction *tx)
{
    if (!tx) return;
    for (unsigned i = 0; i < tx->n_rcpts; i++) {
        free(tx->rcpts[i].addr);
        rcpt_key_free(&tx->rcpts[i].key);
    }
    free(tx->rcpts);
    buf_free(&tx->body);
    free(tx);
}

bool transaction_has_rcpt(const struct transaction *tx, const char *addr)
{
    for (unsigned i = 0; i < tx->n_rcpts; i++)
        if (!strcmp(tx->rcpts[i].addr, addr)) return true;
    return false;
}

int transaction_add_rcpt(struct transaction *tx, const char *addr, const char *dsn,
                         struct rcpt_key *key)
{
    size_t addr_len = strlen(addr), dsn_len = strlen(dsn);
    char *entry = malloc(addr_len + dsn_len + 2);
    struct rcpt *grown = entry ? realloc(tx->rcpts, (tx->n_rcpts + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(entry);
        rcpt_key_free(key);
        return -1;
    }
    tx->rcpts = grown;
    memcpy(entry, addr, addr_len + 1);
    memcpy(entry + addr_len + 1, dsn, dsn_len + 1);
    struct rcpt *r = &tx->rcpts[tx->n_rcpts++];
    r->addr = entry;
    r->dsn = entry + addr_len + 1;
    r->key = *key;
    key->armored = NULL; /* taken over */
    return 0;
}

/* The "with" of a Received: line (RFC 3848, RFC 6531 §3.7.3). */
static const char *with_protocol(const struct transaction *tx, const struct received *r)
{
    static const char *const with[2][2][2] = {
        {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
        {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}}};
    if (!r->esmtp) return "SMTP";
    return with[tx->params.smtputf8][r->tls_info != NULL][r->authenticated];
}

int transaction_start_body(struct transaction *tx, const struct received *r, const config_t *cfg,
                           bool chunked)
{
    char date[64];
    util_random_id(tx->mid);
    util_rfc5322_date(date, sizeof date);
    buf_reset(&tx->body);
    int rc = buf_printf(&tx->body, "Received: from %s ([%s])\r\n", r->helo, r->peer);
    if (rc == 0 && r->tls_info) rc = buf_printf(&tx->body, "\t(using %s)\r\n", r->tls_info);
    if (rc == 0)
        rc = buf_printf(&tx->body, "\tby %s (sealpost) with %s id %s", r->hostname,
                        with_protocol(tx, r), tx->mid);
    if (rc == 0 && tx->n_rcpts == 1)
        rc = buf_printf(&tx->body, "\r\n\tfor <%s>", tx->rcpts[0].addr);
    /* RFC 5322 §3.6.7: the date-time comes after a ";", whatever came before. */
    if (rc == 0) rc = buf_printf(&tx->body, ";\r\n\t%s\r\n", date);
    tx->content_start = tx->body.len;
    if (chunked)
        proto_chunk_init(&tx->data, cfg->ingress.max_line_length, cfg->ingress.max_message_size);
    else
        proto_data_init(&tx->data, cfg->ingress.max_line_length, cfg->ingress.max_message_size);
    tx->chunking = chunked;
    return rc;
}

long transaction_feed(struct transaction *tx, const char *in, size_t len)
{
    if (buf_reserve(&tx->body, len) < 0) return -1;
    size_t out_len;
    size_t used = proto_data_feed(&tx->data, in, len, tx->body.data + tx->body.len, &out_len);
    tx->body.len += out_len;
    return (long)used;
}

enum refusal transaction_refusal(ingress_t *ingress, const struct transaction *tx, char *reply,
                                 size_t len)
{
    static const enum refusal why[] = {
        [PROTO_DATA_OK] = REFUSED_NONE,
        [PROTO_DATA_BARE_LF] = REFUSED_BARE_LINE_END,
        [PROTO_DATA_BARE_CR] = REFUSED_BARE_LINE_END,
        [PROTO_DATA_LONG_LINE] = REFUSED_LINE_TOO_LONG,
        [PROTO_DATA_TOO_BIG] = REFUSED_MESSAGE_TOO_BIG,
        [PROTO_DATA_NUL] = REFUSED_NUL_IN_DATA,
    };
    switch (tx->data.error) {
    case PROTO_DATA_OK:
        return REFUSED_NONE;
    case PROTO_DATA_BARE_LF:
    case PROTO_DATA_BARE_CR:
        snprintf(reply, len, "550 5.6.0 Message refused: bare <CR> or <LF> in message data");
        break;
    case PROTO_DATA_LONG_LINE:
        snprintf(reply, len, "550 5.6.0 Message refused: line longer than %zu octets",
                 tx->data.max_line);
        break;
    case PROTO_DATA_TOO_BIG:
        snprintf(reply, len, "552 5.3.4 Message size exceeds fixed limit");
        break;
    case PROTO_DATA_NUL:
        snprintf(reply, len, "550 5.6.0 Message refused: NUL octet in message data");
        break;
    }
    ingress_refused(ingress, why[tx->data.error]);
    return why[tx->data.error];
}

int transaction_complete_header(struct transaction *tx, const char *hostname)
{
    const char *content = tx->body.data + tx->content_start;
    size_t len = tx->body.len - tx->content_start;
    char added[400] = "", date[64];
    if (!proto_header_has(content, len, "Date")) {
        util_rfc5322_date(date, sizeof date);
        snprintf(added, sizeof added, "Date: %s\r\n", date);
    }
    if (!proto_header_has(content, len, "Message-ID"))
        snprintf(added + strlen(added), sizeof added - strlen(added), "Message-ID: <%s@%s>\r\n",
                 tx->mid, hostname);
    size_t n = strlen(added);
    if (n == 0) return 0;
    if (buf_reserve(&tx->body, n) < 0) return -1;
    char *at = tx->body.data + tx->content_start;
    memmove(at + n, at, len);
    memcpy(at, added, n);
    tx->body.len += n;
    return 0;
}
