/* Private to ingress/: the ingress side of the encryption gateway. At RCPT
 * TO, each recipient's policy and key, from the node's cache of the key
 * directory or else from Redis; at the end of the body, the gateway itself
 * (crypto/gateway.c), in the thread pool when anything is to be encrypted,
 * never on the event loop. It replies to nobody: the caller is told the
 * verdict and says what it means. */
#ifndef SEALPOST_INGRESS_ENCRYPT_H
#define SEALPOST_INGRESS_ENCRYPT_H

#include "ingress/transaction.h"

/* Starts the directory's version poll; its timer keeps ingress alive until
 * encrypt_stop has closed it (then ingress->check_stopped is called). */
encrypt_t *encrypt_start(ingress_t *ingress, char *err, size_t errlen);
void encrypt_stop(encrypt_t *e);
/* Whether encryption can work now (GnuPG homes can be made); else *why
 * says what is in the way. */
bool encrypt_ready(const encrypt_t *e, const char **why);
/* Reads [crypto] smime_ca_file and smime_crl_file again (SIGHUP), so that a
 * CRL fetched anew counts without a restart; logged either way. */
void encrypt_reload(encrypt_t *e);
/* Whether a handle or a call of the gateway is still open. */
bool encrypt_busy(const encrypt_t *e);
void encrypt_free(encrypt_t *e);

enum rcpt_verdict {
    RCPT_PLAIN,         /* the recipient gets the message as it came */
    RCPT_ENCRYPT,       /* ... encrypted to key */
    RCPT_REFUSED,       /* policy required and no usable key: counted and logged */
    RCPT_UNAVAILABLE,   /* the directory could not be asked: logged */
    RCPT_IN_DOUBT,      /* a key or certificate there cannot be judged now: logged */
    RCPT_LOOKUP_FAILED, /* required, and discovery could not say now: logged */
    RCPT_NO_MEMORY,
    RCPT_PENDING /* being asked: the callback tells */
};

typedef void (*encrypt_rcpt_cb)(void *arg, enum rcpt_verdict verdict, struct rcpt_key *key);
/* The verdict for a recipient address: at once from the cache (key filled
 * for RCPT_ENCRYPT), or RCPT_PENDING and cb later, exactly once. peer names
 * the client in logs. may_discover: the address's key may be looked up
 * (discovery on, and not for the null sender's bounces). */
enum rcpt_verdict encrypt_rcpt(encrypt_t *e, const char *addr, const char *peer, bool may_discover,
                               struct rcpt_key *key, encrypt_rcpt_cb cb, void *arg);

/* The gateway's work on a message: job holds the sealed variants, or why
 * none could be made (job->outcome GATEWAY_FAILED, logged; GATEWAY_OUTCOMES
 * when the encryption queue was full). NULL: no memory to begin with. */
typedef void (*encrypt_done_cb)(void *arg, const gateway_job_t *job);
/* Runs the gateway over tx's body for its recipients; done may run before
 * this returns (nothing to encrypt, or a failure). tx must outlive it. */
void encrypt_message(encrypt_t *e, const struct transaction *tx, const char *peer,
                     encrypt_done_cb done, void *arg);
/* "plain", "encrypted", "passthrough", "failed", "busy": for logs. */
const char *encrypt_outcome_name(enum gateway_outcome outcome);

#endif
