/* The node's cache of the key directory: what Redis said about each
 * recipient address lately. The whole cache is dropped when the
 * directory's version moves (any import, deletion or policy change), so a
 * change is seen within one poll of the version; a key's expiry is checked
 * at every use, so a key expires here when it expires in fact. */
#include "crypto/crypto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct keydir_slot {
    char *addr; /* NULL: free */
    keydir_entry_t entry;
};

struct keydir {
    struct keydir_slot *slots;
    unsigned capacity, used;
    long long version;
};

keydir_t *keydir_new(unsigned capacity)
{
    keydir_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->capacity = capacity < 16 ? 16 : capacity;
    d->slots = calloc(d->capacity, sizeof *d->slots);
    if (!d->slots) {
        free(d);
        return NULL;
    }
    d->version = -1;
    return d;
}

static void keydir_clear(keydir_t *d)
{
    for (unsigned i = 0; i < d->capacity; i++) {
        free(d->slots[i].addr);
        free(d->slots[i].entry.armored);
    }
    memset(d->slots, 0, d->capacity * sizeof *d->slots);
    d->used = 0;
}

void keydir_free(keydir_t *d)
{
    if (!d) return;
    keydir_clear(d);
    free(d->slots);
    free(d);
}

bool keydir_version(keydir_t *d, long long version)
{
    if (version == d->version) return false;
    keydir_clear(d);
    d->version = version;
    return true;
}

/* FNV-1a: the addresses are ours to hash, no attacker picks the table size. */
static unsigned slot_of(const keydir_t *d, const char *addr)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % d->capacity;
}

/* Linear probing; the table is never more than half full. */
static struct keydir_slot *find(const keydir_t *d, const char *addr)
{
    for (unsigned i = slot_of(d, addr), n = 0; n < d->capacity; i = (i + 1) % d->capacity, n++) {
        struct keydir_slot *s = &d->slots[i];
        if (!s->addr || !strcmp(s->addr, addr)) return s;
    }
    return NULL;
}

const keydir_entry_t *keydir_get(const keydir_t *d, const char *addr)
{
    const struct keydir_slot *s = find(d, addr);
    return s && s->addr ? &s->entry : NULL;
}

int keydir_put(keydir_t *d, long long version, const char *addr, const keydir_entry_t *e)
{
    if (version < d->version) return 0; /* read before the change we already saw */
    keydir_version(d, version);
    if (d->used * 2 >= d->capacity) keydir_clear(d); /* full: start over, Redis has it all */
    struct keydir_slot *s = find(d, addr);
    if (!s) return -1;
    char *armored = NULL;
    if (e->armored_len) {
        armored = malloc(e->armored_len);
        if (!armored) return -1;
        memcpy(armored, e->armored, e->armored_len);
    }
    if (!s->addr) {
        if (!(s->addr = strdup(addr))) {
            free(armored);
            return -1;
        }
        d->used++;
    }
    free(s->entry.armored);
    s->entry = *e;
    s->entry.armored = armored;
    return 0;
}

enum enc_policy keydir_policy(const char *addr_policy, const char *domain_policy,
                              enum enc_policy fallback)
{
    enum enc_policy p;
    if (addr_policy && config_parse_enc_policy(addr_policy, &p) == 0) return p;
    if (domain_policy && config_parse_enc_policy(domain_policy, &p) == 0) return p;
    return fallback;
}

enum crypto_decision keydir_decide(const keydir_entry_t *e, long long now)
{
    bool usable = e->fpr[0] && e->armored_len && (e->expires == 0 || e->expires > now);
    if (e->policy == ENC_POLICY_NEVER) return DECIDE_PLAIN;
    if (usable) return DECIDE_ENCRYPT;
    return e->policy == ENC_POLICY_REQUIRED ? DECIDE_REFUSE : DECIDE_PLAIN;
}
