/* Private to delivery/: DKIM signing of what the worker sends. The signer
 * keeps every active DKIM key of the key store, unsealed and loaded, and
 * puts the signatures before a job's body right after it is unsealed, so
 * the octets signed are those that go on the wire. */
#ifndef SEALPOST_DELIVERY_SIGNER_H
#define SEALPOST_DELIVERY_SIGNER_H

#include "core/core.h"
#include "crypto/crypto.h"
#include "queue/queue.h"

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct signer signer_t;

/* Keeps every active DKIM key, unsealed and loaded, in a table by domain:
 * asks for queue_dkim_version every 500 ms and reloads (queue_dkim_keys)
 * when it moved, so a change is in effect within a second; a failed reload
 * keeps the table it had. cfg, q and seal must outlive the signer. NULL
 * (with err) when there is no memory. */
signer_t *signer_start(uv_loop_t *loop, const config_t *cfg, queue_t *q, const seal_keyring_t *seal,
                       char *err, size_t errlen);
/* Stops polling and frees the signer once its timer is closed and no reply
 * of the queue is due to it: it never holds up the caller's stop. */
void signer_stop(signer_t *s);
/* Whether the table has been loaded once, or 5 s have gone by since the
 * first poll without a load (logged as dkim_keys_unavailable): until then
 * the worker claims nothing, or a message sent just after a start would
 * leave unsigned; after that, rather than stop all mail, it goes unsigned
 * (counted as keys_unavailable) until a load succeeds. */
bool signer_ready(const signer_t *s);
/* Puts the DKIM-Signature fields before job->body when a key is loaded for
 * its From domain (or default_domain). 0 when signed or when there is
 * nothing to sign with (counted and logged at debug), -1 when signing
 * failed (err: the attempt is deferred, 451 4.3.0). */
int signer_sign(signer_t *s, queue_job_t *job, char *err, size_t errlen);

#endif
