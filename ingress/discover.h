/* Private to ingress/: key discovery at RCPT TO (issue 16). One look-up per
 * address at a time (RCPT's of the same address wait for the same one), at
 * most [discovery] max_parallel; what is found is filed for every node
 * (disc_put), a miss too (disc_miss), so a burst of mail to a domain
 * without WKD costs one look-up. The RCPT waits at most [discovery]
 * timeout_ms; a look-up still under way then goes on and files its answer
 * for the next message. WKD only: the keyserver, a third party, is never
 * asked here, or it would learn every recipient, Bcc ones too. */
#ifndef SEALPOST_INGRESS_DISCOVER_H
#define SEALPOST_INGRESS_DISCOVER_H

#include "crypto/crypto.h"
#include "ingress/ingress.h"

#include <stdbool.h>

typedef struct discover discover_t;

enum discover_result {
    DISCOVER_FOUND,  /* key is the address's, filed */
    DISCOVER_NONE,   /* nothing usable was found: filed as a miss */
    DISCOVER_FAILED, /* the look-up failed, or the RCPT's wait ran out */
};

/* key (DISCOVER_FOUND only) lives during the call. */
typedef void (*discover_cb)(void *arg, enum discover_result r, const keydir_key_t *key);

/* A discovered key as Redis returned it for addr, in *it (pointing into
 * d); true when its tag holds, i.e. a node or `keys lookup` filed it. */
bool discover_entry_holds(const seal_keyring_t *seal, const char *addr, const queue_disc_t *d,
                          keydir_disc_t *it);

/* NULL with err when the engine cannot be made. */
discover_t *discover_new(ingress_t *ingress, char *err, size_t errlen);
/* Whether addr's domain may be asked ([discovery] skip_domains). */
bool discover_applies(const discover_t *d, const char *addr);
/* Waits for addr's key: 0, and cb later (exactly once); -1 when the node
 * has max_parallel look-ups under way, or memory ran out (no callback). */
int discover_start(discover_t *d, const char *addr, discover_cb cb, void *arg);
/* A recipient decided from what Redis had filed (a key or a miss). */
void discover_count_cached(discover_t *d);
/* Cancels every look-up; their RCPTs get DISCOVER_FAILED now. */
void discover_stop(discover_t *d);
bool discover_busy(const discover_t *d);
void discover_free(discover_t *d);

#endif
