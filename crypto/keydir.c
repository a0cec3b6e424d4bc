/* The node's cache of the key directory: what Redis said about each
 * recipient address lately (its OpenPGP key, its S/MIME certificate, the
 * policy and the preference). The whole cache is dropped when the
 * directory's version moves (any import, deletion, policy or preference
 * change), so a change is seen within one poll of the version; a key's
 * expiry, and a certificate's checks, are run at every use, so a key
 * expires here when it expires in fact. */
#include "crypto/crypto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)CRYPTO_OPENPGP == (int)ENC_PREFER_OPENPGP &&
                   (int)CRYPTO_SMIME == (int)ENC_PREFER_SMIME,
               "[crypto] prefer names the methods in crypto_method's order");

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
        for (int m = 0; m < CRYPTO_METHODS; m++)
            free(d->slots[i].entry.keys[m].armored);
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

void keydir_drop(keydir_t *d)
{
    keydir_clear(d);
    d->version = -1;
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

/* A copy of e's keys' data in out's keys (out a copy of e); -1 when memory ran out. */
static int copy_keys(keydir_entry_t *out, const keydir_entry_t *e)
{
    *out = *e;
    for (int m = 0; m < CRYPTO_METHODS; m++) {
        out->keys[m].armored = NULL;
        if (!e->keys[m].armored_len) continue;
        if (!(out->keys[m].armored = malloc(e->keys[m].armored_len))) {
            while (m-- > 0)
                free(out->keys[m].armored);
            return -1;
        }
        memcpy(out->keys[m].armored, e->keys[m].armored, e->keys[m].armored_len);
    }
    return 0;
}

int keydir_put(keydir_t *d, long long version, const char *addr, const keydir_entry_t *e)
{
    if (version < d->version) return 0; /* read before the change we already saw */
    keydir_version(d, version);
    if (d->used * 2 >= d->capacity) keydir_clear(d); /* full: start over, Redis has it all */
    struct keydir_slot *s = find(d, addr);
    if (!s) return -1;
    keydir_entry_t copy;
    if (copy_keys(&copy, e) < 0) return -1;
    if (!s->addr) {
        if (!(s->addr = strdup(addr))) {
            for (int m = 0; m < CRYPTO_METHODS; m++)
                free(copy.keys[m].armored);
            return -1;
        }
        d->used++;
    }
    for (int m = 0; m < CRYPTO_METHODS; m++)
        free(s->entry.keys[m].armored);
    s->entry = copy;
    return 0;
}

int keydir_parse_policy(const char *value, enum enc_policy *policy, int *trust)
{
    char name[16];
    const char *space = strchr(value, ' ');
    size_t n = space ? (size_t)(space - value) : strlen(value);
    if (n >= sizeof name) return -1;
    memcpy(name, value, n);
    name[n] = 0;
    if (config_parse_enc_policy(name, policy) < 0) return -1;
    *trust = -1;
    if (!space) return 0;
    enum config_trust t;
    if (*policy == ENC_POLICY_NEVER || config_parse_trust(space + 1, &t) < 0) return -1;
    *trust = (int)t;
    return 0;
}

void keydir_policy(keydir_entry_t *e, const char *addr_policy, const char *domain_policy,
                   enum enc_policy fallback, enum config_trust min_trust)
{
    int trust = -1;
    if (!(addr_policy && keydir_parse_policy(addr_policy, &e->policy, &trust) == 0) &&
        !(domain_policy && keydir_parse_policy(domain_policy, &e->policy, &trust) == 0))
        e->policy = fallback;
    e->trust = trust < 0 ? min_trust : (enum config_trust)trust;
}

int keydir_smime_configure(const config_t *cfg, char *err, size_t errlen)
{
    crypto_smime_options_t o = {.gcm = cfg->crypto.smime_cipher == SMIME_AES256_GCM,
                                .oaep = cfg->crypto.smime_rsa_padding == SMIME_RSA_OAEP,
                                .ca_file = cfg->crypto.smime_ca_file,
                                .crl_file = cfg->crypto.smime_crl_file};
    return crypto_smime_configure(&o, err, errlen);
}

enum crypto_method keydir_prefer(const char *addr_prefer, const char *domain_prefer,
                                 enum enc_prefer fallback)
{
    enum enc_prefer p = fallback;
    if (!(addr_prefer && config_parse_enc_prefer(addr_prefer, &p) == 0) && domain_prefer)
        config_parse_enc_prefer(domain_prefer, &p);
    return (enum crypto_method)p;
}

static const char *const method_names[CRYPTO_METHODS] = {"openpgp", "smime"};

enum usability { KEY_ABSENT, KEY_USABLE, KEY_UNUSABLE, KEY_IN_DOUBT };

/* Whether method m's key can take mail at now; when it is there and cannot,
 * or cannot be judged, why (appended to the text in why) says so. */
static enum usability key_usable(const keydir_entry_t *e, enum crypto_method m, long long now,
                                 char *why, size_t whylen)
{
    const keydir_key_t *k = &e->keys[m];
    if (!k->fpr[0]) return KEY_ABSENT;
    char reason[256] = "";
    enum usability u = KEY_UNUSABLE;
    if (!k->armored_len) { /* a fingerprint without its key: never clear text for that */
        snprintf(reason, sizeof reason, "no data");
        u = KEY_IN_DOUBT;
    } else if (k->expires != 0 && k->expires <= now) {
        snprintf(reason, sizeof reason, "expired");
    } else if (m == CRYPTO_SMIME) {
        int rc = crypto_cert_check(k->armored, k->armored_len, now, reason, sizeof reason);
        if (rc > 0) return KEY_USABLE;
        if (rc < 0) u = KEY_IN_DOUBT;
    } else {
        return KEY_USABLE;
    }
    if (!reason[0]) snprintf(reason, sizeof reason, "failed its checks");
    size_t used = whylen ? strlen(why) : 0;
    if (used + 1 < whylen)
        snprintf(why + used, whylen - used, "%s%s: %s", used ? "; " : "", method_names[m], reason);
    return u;
}

enum crypto_decision keydir_decide(const keydir_entry_t *e, long long now,
                                   enum crypto_method *method, char *why, size_t whylen)
{
    if (whylen) why[0] = 0;
    *method = e->prefer;
    if (e->policy == ENC_POLICY_NEVER) return DECIDE_PLAIN;
    enum crypto_method other = e->prefer == CRYPTO_OPENPGP ? CRYPTO_SMIME : CRYPTO_OPENPGP;
    enum usability preferred = key_usable(e, e->prefer, now, why, whylen);
    if (preferred == KEY_USABLE) return DECIDE_ENCRYPT;
    enum usability second = key_usable(e, other, now, why, whylen);
    if (second == KEY_USABLE) {
        *method = other;
        return DECIDE_ENCRYPT;
    }
    if (preferred == KEY_IN_DOUBT || second == KEY_IN_DOUBT) return DECIDE_UNKNOWN;
    if (whylen && !why[0]) snprintf(why, whylen, "none");
    return e->policy == ENC_POLICY_REQUIRED ? DECIDE_REFUSE : DECIDE_PLAIN;
}

/* ---- the directory's authentication ---- */

static const char *const item_prefix[] = {
    [KEYDIR_ITEM_ADDRESS] = "a", [KEYDIR_ITEM_KEY] = "k",  [KEYDIR_ITEM_POLICY] = "p",
    [KEYDIR_ITEM_PREFER] = "r",  [KEYDIR_ITEM_USER] = "h", [KEYDIR_ITEM_CRAM] = "c"};

int keydir_item_entry(const keydir_item_t *it, char *out, size_t outlen)
{
    int n = it->kind == KEYDIR_ITEM_ADDRESS
                ? snprintf(out, outlen, "a:%s:%s", it->name, it->method)
                : snprintf(out, outlen, "%s:%s", item_prefix[it->kind], it->name);
    return n > 0 && (size_t)n < outlen ? 0 : -1;
}

static seal_field_t text_field(const char *s)
{
    return (seal_field_t){s ? s : "", s ? strlen(s) : 0};
}

/* What an item's tag covers: its kind and name, and for a key its method,
 * id or addresses, expiry and data; for a setting its value; for a user
 * the hash, or the CRAM-MD5 secret. The data goes
 * in whole (the MAC is its digest): a key swapped under the same id fails. */
static size_t item_fields(const keydir_item_t *it, char expires[24], seal_field_t f[6])
{
    f[0] = text_field(item_prefix[it->kind]);
    f[1] = text_field(it->name);
    if (it->kind != KEYDIR_ITEM_ADDRESS && it->kind != KEYDIR_ITEM_KEY) {
        f[2] = (seal_field_t){it->data ? it->data : "", it->data ? it->len : 0};
        return 3;
    }
    snprintf(expires, 24, "%lld", it->expires);
    f[2] = text_field(it->method);
    f[3] = text_field(it->kind == KEYDIR_ITEM_ADDRESS ? it->fpr : it->addrs);
    f[4] = text_field(expires);
    f[5] = (seal_field_t){it->data ? it->data : "", it->data ? it->len : 0};
    return 6;
}

void keydir_item_tag(const seal_keyring_t *k, const keydir_item_t *it, char out[SEAL_MAC_LEN + 1])
{
    char expires[24];
    seal_field_t f[6];
    seal_mac(k, "keydir-entry", f, item_fields(it, expires, f), out);
}

int keydir_item_verify(const seal_keyring_t *k, const keydir_item_t *it, const char *tag)
{
    char expires[24];
    seal_field_t f[6];
    size_t n = item_fields(it, expires, f);
    return seal_mac_verify(k, "keydir-entry", f, n, tag, strlen(tag));
}

struct keydir_pair {
    char *entry, *tag;
};

struct keydir_index {
    struct keydir_pair *pairs;
    size_t n;
};

static int compare_pairs(const void *x, const void *y)
{
    return strcmp(((const struct keydir_pair *)x)->entry, ((const struct keydir_pair *)y)->entry);
}

keydir_index_t *keydir_index_new(const char *const *entries, const char *const *tags, size_t n)
{
    keydir_index_t *x = calloc(1, sizeof *x);
    if (!x || (n && !(x->pairs = calloc(n, sizeof *x->pairs)))) {
        free(x);
        return NULL;
    }
    for (; x->n < n; x->n++) {
        struct keydir_pair *p = &x->pairs[x->n];
        p->entry = strdup(entries[x->n]);
        p->tag = strdup(tags[x->n]);
        if (!p->entry || !p->tag) {
            x->n++;
            keydir_index_free(x);
            return NULL;
        }
    }
    if (n) qsort(x->pairs, n, sizeof *x->pairs, compare_pairs);
    return x;
}

void keydir_index_free(keydir_index_t *x)
{
    if (!x) return;
    for (size_t i = 0; i < x->n; i++) {
        free(x->pairs[i].entry);
        free(x->pairs[i].tag);
    }
    free(x->pairs);
    free(x);
}

size_t keydir_index_size(const keydir_index_t *x)
{
    return x->n;
}

const char *keydir_index_entry(const keydir_index_t *x, size_t i)
{
    return x->pairs[i].entry;
}

const char *keydir_index_entry_tag(const keydir_index_t *x, size_t i)
{
    return x->pairs[i].tag;
}

const char *keydir_index_find(const keydir_index_t *x, const char *entry)
{
    if (!x->n) return NULL;
    struct keydir_pair key = {.entry = (char *)entry};
    const struct keydir_pair *p = bsearch(&key, x->pairs, x->n, sizeof *x->pairs, compare_pairs);
    return p ? p->tag : NULL;
}

/* The index as fields: the version, then each entry and its tag, sorted. */
static seal_field_t *index_fields(long long version, const keydir_index_t *x, char v[24])
{
    seal_field_t *f = calloc(1 + 2 * x->n, sizeof *f);
    if (!f) return NULL;
    snprintf(v, 24, "%lld", version);
    f[0] = text_field(v);
    for (size_t i = 0; i < x->n; i++) {
        f[1 + 2 * i] = text_field(x->pairs[i].entry);
        f[2 + 2 * i] = text_field(x->pairs[i].tag);
    }
    return f;
}

int keydir_index_tag(const seal_keyring_t *k, long long version, const keydir_index_t *x,
                     char out[SEAL_MAC_LEN + 1])
{
    char v[24];
    seal_field_t *f = index_fields(version, x, v);
    if (!f) return -1;
    seal_mac(k, "keydir-index", f, 1 + 2 * x->n, out);
    free(f);
    return 0;
}

int keydir_index_verify(const seal_keyring_t *k, long long version, const keydir_index_t *x,
                        const char *tag)
{
    char v[24];
    seal_field_t *f = index_fields(version, x, v);
    if (!f) return -2;
    int rc = seal_mac_verify(k, "keydir-index", f, 1 + 2 * x->n, tag, strlen(tag));
    free(f);
    return rc;
}

static void dkim_fields(seal_field_t f[5], const char *domain, const char *selector,
                        const char *algorithm, const char *record, const void *sealed, size_t len)
{
    f[0] = text_field(domain);
    f[1] = text_field(selector);
    f[2] = text_field(algorithm);
    f[3] = text_field(record);
    f[4] = (seal_field_t){sealed ? sealed : "", sealed ? len : 0};
}

void keydir_dkim_tag(const seal_keyring_t *k, const char *domain, const char *selector,
                     const char *algorithm, const char *record, const void *sealed, size_t len,
                     char out[SEAL_MAC_LEN + 1])
{
    seal_field_t f[5];
    dkim_fields(f, domain, selector, algorithm, record, sealed, len);
    seal_mac(k, "dkim-entry", f, 5, out);
}

int keydir_dkim_verify(const seal_keyring_t *k, const char *domain, const char *selector,
                       const char *algorithm, const char *record, const void *sealed, size_t len,
                       const char *tag)
{
    seal_field_t f[5];
    dkim_fields(f, domain, selector, algorithm, record, sealed, len);
    return seal_mac_verify(k, "dkim-entry", f, 5, tag, strlen(tag));
}

/* ---- discovered keys and misses (issue 16) ---- */

struct disc_fields {
    char expires[24], found[24], checked[24];
    seal_field_t f[7];
};

static void disc_fields(struct disc_fields *x, const keydir_disc_t *d)
{
    snprintf(x->expires, sizeof x->expires, "%lld", d->expires);
    snprintf(x->found, sizeof x->found, "%lld", d->found);
    snprintf(x->checked, sizeof x->checked, "%lld", d->checked);
    x->f[0] = text_field(d->address);
    x->f[1] = text_field(d->fpr);
    x->f[2] = text_field(x->expires);
    x->f[3] = (seal_field_t){d->data ? d->data : "", d->data ? d->len : 0};
    x->f[4] = text_field(d->source);
    x->f[5] = text_field(x->found);
    x->f[6] = text_field(x->checked);
}

void keydir_disc_tag(const seal_keyring_t *k, const keydir_disc_t *d, char out[SEAL_MAC_LEN + 1])
{
    struct disc_fields x = {0};
    disc_fields(&x, d);
    seal_mac(k, "keydir-discovered", x.f, 7, out);
}

int keydir_disc_verify(const seal_keyring_t *k, const keydir_disc_t *d, const char *tag)
{
    if (!tag || !tag[0]) return 0;
    struct disc_fields x = {0};
    disc_fields(&x, d);
    return seal_mac_verify(k, "keydir-discovered", x.f, 7, tag, strlen(tag));
}

/* The miss's fields, its time's text in text. */
static void miss_fields(seal_field_t f[3], char text[24], const char *address, long long until,
                        bool failed)
{
    snprintf(text, 24, "%lld", until);
    f[0] = text_field(address);
    f[1] = text_field(text);
    f[2] = text_field(failed ? "error" : "none");
}

void keydir_miss_tag(const seal_keyring_t *k, const char *address, long long until, bool failed,
                     char out[SEAL_MAC_LEN + 1])
{
    char text[24];
    seal_field_t f[3];
    miss_fields(f, text, address, until, failed);
    seal_mac(k, "keydir-miss", f, 3, out);
}

int keydir_miss_verify(const seal_keyring_t *k, const char *address, long long until, bool failed,
                       const char *tag)
{
    if (!tag || !tag[0]) return 0;
    char text[24];
    seal_field_t f[3];
    miss_fields(f, text, address, until, failed);
    return seal_mac_verify(k, "keydir-miss", f, 3, tag, strlen(tag));
}
