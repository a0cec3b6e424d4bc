/* The crypto side's data in Redis: the check values of the sealing keys.
 * Everything lives under the hash tag {sealpost:crypto}, so each call is in
 * one slot on Redis Cluster. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEAL_CHECK_KEY "{sealpost:crypto}:sealcheck"

static void on_blob_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply)
        call->cb.blob(-1, err, NULL, 0, call->arg);
    else if (reply->type == REDIS_REPLY_STRING)
        call->cb.blob(0, NULL, reply->str, reply->len, call->arg);
    else
        call->cb.blob(-1, "unexpected reply", NULL, 0, call->arg);
}

int queue_seal_check(queue_t *q, const char *key_id, const void *check, size_t len,
                     queue_blob_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_blob_reply;
    call->cb.blob = cb;
    const char *keys[] = {SEAL_CHECK_KEY};
    const char *args[] = {key_id, check};
    size_t lens[] = {strlen(key_id), len};
    return fcall(call, "seal_check", false, 1, keys, 2, args, lens);
}

/* ---- the key directory ---- */

#define KD_PREFIX  "{sealpost:crypto}:"
#define KD_KEYS    KD_PREFIX "keys"
#define KD_POLICY  KD_PREFIX "policy"
#define KD_VERSION KD_PREFIX "version"

static void addr_key(key_t_ out, const char *addr)
{
    snprintf(out, KEY_MAX, KD_PREFIX "a:%s", addr);
}

static void fpr_key(key_t_ out, const char *fpr)
{
    snprintf(out, KEY_MAX, KD_PREFIX "k:%s", fpr);
}

static const char *reply_text(const redisReply *r, size_t *len)
{
    if (r->type != REDIS_REPLY_STRING) {
        *len = 0;
        return NULL;
    }
    *len = r->len;
    return r->str;
}

static void on_lookup_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 6) {
        call->cb.key(-1, reply ? "unexpected reply" : err, NULL, call->arg);
        return;
    }
    queue_key_found_t f = {0};
    size_t len;
    f.version = reply_ll(reply->element[0], 0);
    const char *v = reply_text(reply->element[1], &len);
    if (v && len < sizeof f.fpr) memcpy(f.fpr, v, len);
    f.expires = reply_ll(reply->element[2], 0);
    f.armored = reply_text(reply->element[3], &f.armored_len);
    f.addr_policy = reply_text(reply->element[4], &len);
    f.domain_policy = reply_text(reply->element[5], &len);
    call->cb.key(0, NULL, &f, call->arg);
}

int queue_key_lookup(queue_t *q, const char *addr, const char *domain, queue_key_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_lookup_reply;
    call->cb.key = cb;
    key_t_ a;
    addr_key(a, addr);
    const char *keys[] = {a, KD_POLICY, KD_VERSION};
    const char *args[] = {addr, domain};
    return fcall(call, "key_lookup", true, 3, keys, 2, args, NULL);
}

static void on_version_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_STRING)
        call->cb.version(-1, reply ? "unexpected reply" : err, 0, call->arg);
    else
        call->cb.version(0, NULL, reply_ll(reply, 0), call->arg);
}

int queue_key_version(queue_t *q, queue_version_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_version_reply;
    call->cb.version = cb;
    const char *keys[] = {KD_VERSION};
    return fcall(call, "key_version", true, 1, keys, 0, NULL, NULL);
}

/* ---- administration of the key directory ---- */

/* A field of a hash, copied into out; "" when absent. */
static int hget(queue_admin_t *a, const char *key, const char *field, buf_t *out, char *err,
                size_t errlen)
{
    const char *argv[] = {"HGET", key, field};
    redisReply *r = queue_admin_command(a, err, errlen, 3, argv);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_STRING ? buf_append(out, r->str, r->len) : 0;
    freeReplyObject(r);
    return rc;
}

static bool listed_in(const char *addrs, const char *addr)
{
    size_t n = strlen(addr);
    for (const char *p = addrs; *p;) {
        size_t len = strcspn(p, "\n");
        if (len == n && !memcmp(p, addr, n)) return true;
        p += len + (p[len] == '\n');
    }
    return false;
}

/* Files addr under the most recently imported stored key, other than
 * except, that lists it: with two keys for one address, deleting the newer
 * leaves the older in charge, as `keys list` shows it. */
static int relink_address(queue_admin_t *a, const char *addr, const char *except, char *err,
                          size_t errlen)
{
    const char *members[] = {"SMEMBERS", KD_KEYS};
    redisReply *r = queue_admin_command(a, err, errlen, 2, members);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return -1;
    }
    queue_key_stored_t best = {0}, key;
    bool found = false;
    int rc = 0;
    for (size_t i = 0; i < r->elements && rc == 0; i++) {
        if (!strcmp(r->element[i]->str, except)) continue;
        int got = queue_admin_key_get(a, r->element[i]->str, &key, err, errlen);
        if (got < 0) rc = -1;
        if (got <= 0) continue;
        bool better = listed_in(key.addresses.data ? key.addresses.data : "", addr) &&
                      (!found || key.imported > best.imported);
        if (better && found) {
            buf_free(&best.addresses);
            buf_free(&best.armored);
        }
        if (better) {
            best = key;
            found = true;
        } else {
            buf_free(&key.addresses);
            buf_free(&key.armored);
        }
    }
    freeReplyObject(r);
    if (rc == 0 && found) {
        key_t_ k;
        addr_key(k, addr);
        char expires[24];
        snprintf(expires, sizeof expires, "%lld", best.expires);
        const char *set[] = {"HSET",    k,       "fpr",  best.fpr,
                             "expires", expires, "data", best.armored.data};
        size_t lens[8];
        for (int j = 0; j < 7; j++)
            lens[j] = strlen(set[j]);
        lens[7] = best.armored.len;
        redisReply *s = queue_admin_command_lens(a, err, errlen, 8, set, lens);
        rc = s ? 0 : -1;
        if (rc < 0) snprintf(err, errlen, "redis refused to file %s again", addr);
        freeReplyObject(s);
    }
    if (found) {
        buf_free(&best.addresses);
        buf_free(&best.armored);
    }
    return rc;
}

/* Drops address -> fpr when the address still points at fpr (a later
 * import of another key for it wins), and files the address under another
 * key that lists it, if any. */
static int unlink_address(queue_admin_t *a, const char *addr, const char *fpr, char *err,
                          size_t errlen)
{
    key_t_ k;
    addr_key(k, addr);
    buf_t cur;
    buf_init(&cur);
    int rc = hget(a, k, "fpr", &cur, err, errlen);
    if (rc == 0 && cur.len && !strcmp(cur.data, fpr)) {
        const char *del[] = {"DEL", k};
        rc = queue_admin_run(a, err, errlen, 2, del);
        if (rc == 0) rc = relink_address(a, addr, fpr, err, errlen);
    }
    buf_free(&cur);
    return rc;
}

static bool listed(const char *addr, const char *const *list, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(addr, list[i])) return true;
    return false;
}

/* The addresses a stored key was filed under, one allocation per call. */
static char *stored_addresses(queue_admin_t *a, const char *fpr, char *err, size_t errlen)
{
    key_t_ k;
    fpr_key(k, fpr);
    buf_t addrs;
    buf_init(&addrs);
    if (hget(a, k, "addrs", &addrs, err, errlen) < 0 || buf_append(&addrs, "", 0) < 0) {
        buf_free(&addrs);
        return NULL;
    }
    return addrs.data;
}

int queue_admin_key_put(queue_admin_t *a, const queue_key_record_t *key, char *err, size_t errlen)
{
    char *old = stored_addresses(a, key->fpr, err, errlen);
    if (!old) return -1;
    /* Addresses the key no longer has lose it. */
    int rc = 0;
    for (char *save = NULL, *addr = strtok_r(old, "\n", &save); addr && rc == 0;
         addr = strtok_r(NULL, "\n", &save))
        if (!listed(addr, key->addresses, key->n_addresses))
            rc = unlink_address(a, addr, key->fpr, err, errlen);
    free(old);
    if (rc < 0) return -1;

    buf_t addrs;
    buf_init(&addrs);
    for (unsigned i = 0; i < key->n_addresses; i++)
        buf_printf(&addrs, "%s%s", i ? "\n" : "", key->addresses[i]);
    char expires[24], now[24];
    snprintf(expires, sizeof expires, "%lld", key->expires);
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    key_t_ k;
    fpr_key(k, key->fpr);
    const char *exec[] = {"EXEC"};
    const char *set_key[] = {"HSET",    k,           "addrs",    addrs.data ? addrs.data : "",
                             "expires", expires,     "imported", now,
                             "data",    key->armored};
    size_t set_lens[10];
    for (int i = 0; i < 9; i++)
        set_lens[i] = strlen(set_key[i]);
    set_lens[9] = key->armored_len;
    const char *sadd[] = {"SADD", KD_KEYS, key->fpr}, *incr[] = {"INCR", KD_VERSION};
    rc = queue_admin_multi(a, KD_KEYS, err, errlen);
    if (rc == 0) {
        redisReply *r = queue_admin_command_lens(a, err, errlen, 10, set_key, set_lens);
        rc = r ? 0 : -1;
        freeReplyObject(r);
    }
    for (unsigned i = 0; i < key->n_addresses && rc == 0; i++) {
        key_t_ ak;
        addr_key(ak, key->addresses[i]);
        const char *set_addr[] = {"HSET",    ak,      "fpr",  key->fpr,
                                  "expires", expires, "data", key->armored};
        size_t lens[8];
        for (int j = 0; j < 7; j++)
            lens[j] = strlen(set_addr[j]);
        lens[7] = key->armored_len;
        redisReply *r = queue_admin_command_lens(a, err, errlen, 8, set_addr, lens);
        rc = r ? 0 : -1;
        freeReplyObject(r);
    }
    if (rc == 0) rc = queue_admin_run(a, err, errlen, 3, sadd);
    if (rc == 0) rc = queue_admin_run(a, err, errlen, 2, incr);
    const char *discard[] = {"DISCARD"};
    if (rc < 0) { /* nothing of it is written */
        char ignored[64];
        queue_admin_run(a, ignored, sizeof ignored, 1, discard);
        snprintf(err, errlen, "redis refused the key");
    } else if (queue_admin_run(a, err, errlen, 1, exec) < 0) {
        rc = -1;
    }
    buf_free(&addrs);
    return rc;
}

int queue_admin_key_delete(queue_admin_t *a, const char *fpr, char *err, size_t errlen)
{
    char *addrs = stored_addresses(a, fpr, err, errlen);
    if (!addrs) return -1;
    key_t_ k;
    fpr_key(k, fpr);
    const char *exists[] = {"EXISTS", k};
    redisReply *r = queue_admin_command(a, err, errlen, 2, exists);
    int found = r && r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    int rc = r ? 0 : -1;
    freeReplyObject(r);
    for (char *save = NULL, *addr = strtok_r(addrs, "\n", &save); addr && rc == 0;
         addr = strtok_r(NULL, "\n", &save))
        rc = unlink_address(a, addr, fpr, err, errlen);
    free(addrs);
    const char *del[] = {"DEL", k}, *srem[] = {"SREM", KD_KEYS, fpr},
               *incr[] = {"INCR", KD_VERSION};
    if (rc == 0) rc = queue_admin_run(a, err, errlen, 2, del);
    if (rc == 0) rc = queue_admin_run(a, err, errlen, 3, srem);
    if (rc == 0) rc = queue_admin_run(a, err, errlen, 2, incr);
    return rc < 0 ? -1 : found;
}

int queue_admin_key_find(queue_admin_t *a, const char *addr, char *fpr, size_t fprlen, char *err,
                         size_t errlen)
{
    key_t_ k;
    addr_key(k, addr);
    buf_t v;
    buf_init(&v);
    int rc = hget(a, k, "fpr", &v, err, errlen);
    snprintf(fpr, fprlen, "%s", rc == 0 && v.len ? v.data : "");
    buf_free(&v);
    return rc;
}

int queue_admin_key_get(queue_admin_t *a, const char *fpr, queue_key_stored_t *out, char *err,
                        size_t errlen)
{
    key_t_ k;
    fpr_key(k, fpr);
    const char *argv[] = {"HMGET", k, "addrs", "expires", "imported", "data"};
    redisReply *r = queue_admin_command(a, err, errlen, 6, argv);
    if (!r) return -1;
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[3]->type != REDIS_REPLY_STRING) {
        rc = r->type == REDIS_REPLY_ARRAY ? 0 : -1;
        freeReplyObject(r);
        return rc < 0 ? -1 : 0;
    }
    snprintf(out->fpr, sizeof out->fpr, "%s", fpr);
    out->expires = reply_ll(r->element[1], 0);
    out->imported = reply_ll(r->element[2], 0);
    buf_init(&out->addresses);
    buf_init(&out->armored);
    const char *v = reply_str(r->element[0]);
    if (buf_append(&out->addresses, v, strlen(v)) < 0 ||
        buf_append(&out->armored, r->element[3]->str, r->element[3]->len) < 0)
        rc = -1;
    freeReplyObject(r);
    return rc < 0 ? -1 : 1;
}

static int compare_replies(const void *x, const void *y)
{
    const redisReply *a = *(const redisReply *const *)x, *b = *(const redisReply *const *)y;
    return strcmp(a->str, b->str);
}

int queue_admin_key_list(queue_admin_t *a, void (*cb)(const queue_key_stored_t *key, void *arg),
                         void *arg, char *err, size_t errlen)
{
    const char *argv[] = {"SMEMBERS", KD_KEYS};
    redisReply *r = queue_admin_command(a, err, errlen, 2, argv);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return -1;
    }
    if (r->elements) qsort(r->element, r->elements, sizeof(redisReply *), compare_replies);
    int rc = 0;
    for (size_t i = 0; i < r->elements && rc == 0; i++) {
        queue_key_stored_t key;
        int found = queue_admin_key_get(a, r->element[i]->str, &key, err, errlen);
        if (found < 0) rc = -1;
        if (found <= 0) continue;
        cb(&key, arg);
        buf_free(&key.addresses);
        buf_free(&key.armored);
    }
    freeReplyObject(r);
    return rc;
}

int queue_admin_policy_set(queue_admin_t *a, const char *target, const char *policy, char *err,
                           size_t errlen)
{
    const char *set[] = {"HSET", KD_POLICY, target, policy}, *del[] = {"HDEL", KD_POLICY, target};
    const char *incr[] = {"INCR", KD_VERSION};
    int rc =
        policy ? queue_admin_run(a, err, errlen, 4, set) : queue_admin_run(a, err, errlen, 3, del);
    return rc == 0 ? queue_admin_run(a, err, errlen, 2, incr) : -1;
}

int queue_admin_policy_list(queue_admin_t *a, buf_t *out, char *err, size_t errlen)
{
    const char *argv[] = {"HGETALL", KD_POLICY};
    redisReply *r = queue_admin_command(a, err, errlen, 2, argv);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i + 1 < r->elements && rc == 0; i += 2)
        rc = buf_printf(out, "%s %s\n", r->element[i]->str, r->element[i + 1]->str);
    freeReplyObject(r);
    return rc;
}
