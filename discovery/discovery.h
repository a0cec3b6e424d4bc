/* Key discovery: an OpenPGP key for an address, looked up where its
 * domain publishes it (the Web Key Directory,
 * draft-koch-openpgp-webkey-service: the advanced method, then the direct
 * one) and then, when one is configured, at a verifying keyserver (the
 * VKS API of keys.openpgp.org). Asynchronous, on the caller's libuv loop,
 * bounded by one deadline for the whole look-up ([discovery] timeout_ms).
 * What a server sends is only a candidate: discovery_select keeps a key
 * only when it is usable and has a valid user ID for exactly the address. */
#ifndef SEALPOST_DISCOVERY_DISCOVERY_H
#define SEALPOST_DISCOVERY_DISCOVERY_H

#include "core/core.h"
#include "crypto/crypto.h"

#include <stddef.h>
#include <uv.h>

typedef struct discovery discovery_t;
typedef struct discovery_lookup discovery_lookup_t;

enum discovery_outcome {
    DISCOVERY_FOUND,     /* a server sent key material for the address */
    DISCOVERY_NOT_FOUND, /* every source asked said it has none */
    DISCOVERY_ERROR,     /* a source could not be asked (DNS, TLS, HTTP) */
    DISCOVERY_TIMEOUT    /* the deadline came first */
};
enum discovery_source { SOURCE_WKD, SOURCE_KEYSERVER };

const char *discovery_outcome_name(enum discovery_outcome o);
const char *discovery_source_name(enum discovery_source s);

typedef struct discovery_result {
    enum discovery_outcome outcome;
    enum discovery_source source; /* of FOUND */
    const char *data;             /* FOUND: the response body, valid during the callback */
    size_t len;
    char url[1600];   /* FOUND: where; else the last URL asked */
    char detail[300]; /* what each source said, for the log and the CLI */
    bool no_wkd;      /* NOT_FOUND: the domain has no WKD at all (no host, no policy file) */
} discovery_result_t;

typedef void (*discovery_cb)(const discovery_result_t *result, void *arg);

/* cfg's [discovery]: its own resolver (dns_servers) and TLS context
 * (ca_file alone when set, else the system's store). NULL with err. */
discovery_t *discovery_new(uv_loop_t *loop, const config_t *cfg, char *err, size_t errlen);
/* Cancels every look-up (their callbacks do not run). */
void discovery_free(discovery_t *d);

/* Starts a look-up: WKD, then, with keyserver and one configured, the
 * keyserver. cb runs exactly once, from the loop, unless cancelled. NULL
 * (and no callback) when memory ran out or the address has no domain. */
discovery_lookup_t *discovery_lookup(discovery_t *d, const char *address, bool keyserver,
                                     discovery_cb cb, void *arg);
void discovery_cancel(discovery_lookup_t *l);

/* The key kept from a response. */
typedef struct discovery_key {
    char fpr[CRYPTO_FPR_MAX + 1];
    long long expires; /* 0: never */
    char *armored;     /* minimal, ASCII-armored, as the directory stores keys */
    size_t armored_len;
} discovery_key_t;

/* Of the OpenPGP keys in data, the usable one (not revoked, not expired,
 * can encrypt) with a valid user ID for address (compared without regard
 * to case), the one that lasts longest when there are several: 1. 0 with
 * why when there is none; -1 with why when the keys could not be read.
 * Runs gpg in a throw-away home under parent ("" or NULL: $TMPDIR): not
 * on an event loop. */
int discovery_select(const char *address, const char *data, size_t len, const char *parent,
                     discovery_key_t *out, char *why, size_t whylen);
void discovery_key_free(discovery_key_t *k);

#endif
