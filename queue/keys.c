/* The crypto side's data in Redis: the check values of the sealing keys,
 * and the key directory with the encryption policies, which nodes read and
 * `sealpost keys` writes. Everything lives under the hash tag
 * {sealpost:crypto}, so each call is in one slot on Redis Cluster; what is
 * stored how, the functions library alone knows. */
#include "queue/internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    const char *args[] = {key_id, check};
    size_t lens[] = {strlen(key_id), len};
    return fcall_keys(call, FN_SEAL_CHECK, &(key_ids_t){0}, 2, args, lens);
}

/* The blocking twin of queue_seal_check, for the commands that seal
 * (sealpost dkim): the same function, so a command stores the first check
 * of a key id exactly as a node would. out receives the stored check. */
int queue_admin_seal_check(queue_admin_t *a, const char *key_id, const void *check, size_t len,
                           buf_t *out, char *err, size_t errlen)
{
    const char *args[] = {key_id, check};
    size_t lens[] = {strlen(key_id), len};
    redisReply *r = queue_admin_call(a, FN_SEAL_CHECK, &(key_ids_t){0}, 2, args, lens, err, errlen);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_STRING ? buf_append(out, r->str, r->len) : -1;
    if (rc < 0) snprintf(err, errlen, "seal_check: unexpected reply");
    freeReplyObject(r);
    return rc;
}

/* ---- the key directory ---- */

static const char *reply_text(const redisReply *r, size_t *len)
{
    if (r->type != REDIS_REPLY_STRING) {
        *len = 0;
        return NULL;
    }
    *len = r->len;
    return r->str;
}

/* One method's key from the reply's elements at at (id), at + 1 (expires),
 * at + 2 (data). */
static void found_key(queue_found_key_t *k, redisReply **at)
{
    size_t len;
    const char *v = reply_text(at[0], &len);
    if (v && len < sizeof k->fpr) memcpy(k->fpr, v, len);
    k->expires = reply_ll(at[1], 0);
    k->armored = reply_text(at[2], &k->armored_len);
}

/* A discovered key's fpr, expires, data, source, found, checked, tag from
 * the reply's elements at at (url is not in key_lookup's reply). */
static void disc_fields(queue_disc_t *d, redisReply **at, bool with_url)
{
    size_t len;
    const char *v = reply_text(at[0], &len);
    if (v && len < sizeof d->fpr) memcpy(d->fpr, v, len);
    d->expires = reply_ll(at[1], 0);
    d->data = reply_text(at[2], &d->len);
    d->source = reply_text(at[3], &len);
    if (with_url) d->url = reply_text(at++[4], &len);
    d->found = reply_ll(at[4], 0);
    d->checked = reply_ll(at[5], 0);
    d->tag = reply_text(at[6], &len);
    if (with_url) d->change = reply_text(at[7], &len);
}

/* A miss as stored, "until kind tag" (kind "none" or "error"). */
static void miss_fields(queue_miss_t *m, const redisReply *r)
{
    size_t len;
    const char *v = reply_text(r, &len);
    const char *space = v ? memchr(v, ' ', len) : NULL;
    unsigned long long until;
    if (!space || util_parse_decimal(v, (size_t)(space - v), &until) < 0 || until > LLONG_MAX)
        return;
    const char *kind = space + 1, *end = v + len;
    bool failed = end - kind > 6 && !memcmp(kind, "error ", 6);
    if (!failed && !(end - kind > 5 && !memcmp(kind, "none ", 5))) return;
    m->until = (long long)until;
    m->failed = failed;
    m->tag = kind + (failed ? 6 : 5);
}

/* key_lookup's reply as f (pointing into it); false when malformed. */
static bool parse_found(const redisReply *reply, queue_key_found_t *f)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 21) return false;
    *f = (queue_key_found_t){0};
    size_t len;
    f->version = reply_ll(reply->element[0], 0);
    found_key(&f->keys[0], reply->element + 1);
    f->addr_policy = reply_text(reply->element[4], &len);
    f->domain_policy = reply_text(reply->element[5], &len);
    found_key(&f->keys[1], reply->element + 6);
    f->addr_prefer = reply_text(reply->element[9], &len);
    f->domain_prefer = reply_text(reply->element[10], &len);
    f->dversion = reply_ll(reply->element[11], 0);
    disc_fields(&f->disc, reply->element + 12, false);
    miss_fields(&f->miss, reply->element[19]);
    miss_fields(&f->domain_miss, reply->element[20]);
    return true;
}

static void on_lookup_reply(struct call *call, redisReply *reply, const char *err)
{
    queue_key_found_t f;
    if (!parse_found(reply, &f)) {
        call->cb.key(-1, reply ? "unexpected reply" : err, NULL, call->arg);
        return;
    }
    call->cb.key(0, NULL, &f, call->arg);
}

int queue_key_lookup(queue_t *q, const char *addr, const char *domain, queue_key_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_lookup_reply;
    call->cb.key = cb;
    const char *args[] = {addr, domain};
    return fcall_keys(call, FN_KEY_LOOKUP, &(key_ids_t){.addr = addr, .domain = domain}, 2, args,
                      NULL);
}

static void on_version_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_STRING)
        call->cb.version(-1, reply ? "unexpected reply" : err, 0, call->arg);
    else
        call->cb.version(0, NULL, reply_ll(reply, 0), call->arg);
}

struct call *call_version(queue_t *q, queue_version_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (call) {
        call->done = on_version_reply;
        call->cb.version = cb;
    }
    return call;
}

static void on_versions_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2)
        call->cb.versions(-1, reply ? "unexpected reply" : err, 0, 0, call->arg);
    else
        call->cb.versions(0, NULL, reply_ll(reply->element[0], 0), reply_ll(reply->element[1], 0),
                          call->arg);
}

int queue_key_version(queue_t *q, queue_versions_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_versions_reply;
    call->cb.versions = cb;
    return fcall_keys(call, FN_KEY_VERSION, &(key_ids_t){0}, 0, NULL, NULL);
}

/* ---- discovered keys (issue 16) ---- */

#define DISC_PUT_ARGS 10

/* disc_put's arguments, their text in nums. */
static void disc_args(const queue_disc_t *d, char nums[3][24], const char *args[DISC_PUT_ARGS],
                      size_t lens[DISC_PUT_ARGS])
{
    snprintf(nums[0], 24, "%lld", d->expires);
    snprintf(nums[1], 24, "%lld", d->found);
    snprintf(nums[2], 24, "%lld", d->checked);
    const char *v[DISC_PUT_ARGS] = {
        d->address,           d->fpr,  nums[0], d->data, d->source,
        d->url ? d->url : "", nums[1], nums[2], d->tag,  d->change ? d->change : ""};
    for (int i = 0; i < DISC_PUT_ARGS; i++) {
        args[i] = v[i];
        lens[i] = i == 3 ? d->len : strlen(v[i]);
    }
}

int queue_disc_put(queue_t *q, const queue_disc_t *d, queue_status_cb cb, void *arg)
{
    char nums[3][24];
    const char *args[DISC_PUT_ARGS];
    size_t lens[DISC_PUT_ARGS];
    disc_args(d, nums, args, lens);
    return fcall_keys(call_status(q, cb, arg), FN_DISC_PUT, &(key_ids_t){.addr = d->address},
                      DISC_PUT_ARGS, args, lens);
}

int queue_disc_miss(queue_t *q, const char *address, long long until, bool failed, const char *tag,
                    queue_status_cb cb, void *arg)
{
    char text[24];
    snprintf(text, sizeof text, "%lld", until);
    const char *args[] = {text, failed ? "error" : "none", tag};
    return fcall_keys(call_status(q, cb, arg), FN_DISC_MISS, &(key_ids_t){.addr = address}, 3, args,
                      NULL);
}

static void on_names_reply(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        call->cb.names(-1, reply ? "unexpected reply" : err, NULL, 0, call->arg);
        return;
    }
    const char **names = calloc(reply->elements ? reply->elements : 1, sizeof *names);
    size_t n = 0;
    for (size_t i = 0; names && i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING) names[n++] = reply->element[i]->str;
    if (names)
        call->cb.names(0, NULL, names, n, call->arg);
    else
        call->cb.names(-1, "out of memory", NULL, 0, call->arg);
    free(names);
}

int queue_disc_due(queue_t *q, long long before, long long now, unsigned max, queue_names_cb cb,
                   void *arg)
{
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_names_reply;
    call->cb.names = cb;
    char t[3][24];
    snprintf(t[0], sizeof t[0], "%lld", before);
    snprintf(t[1], sizeof t[1], "%lld", now);
    snprintf(t[2], sizeof t[2], "%u", max);
    const char *args[] = {t[0], t[1], t[2]};
    return fcall_keys(call, FN_DISC_DUE, &(key_ids_t){0}, 3, args, NULL);
}

int queue_disc_delete(queue_t *q, const char *address, queue_status_cb cb, void *arg)
{
    const char *args[] = {address};
    return fcall_keys(call_status(q, cb, arg), FN_DISC_DELETE, &(key_ids_t){.addr = address}, 1,
                      args, NULL);
}

int queue_disc_domain_miss(queue_t *q, const char *domain, long long until, const char *tag,
                           queue_status_cb cb, void *arg)
{
    char text[24];
    snprintf(text, sizeof text, "%lld", until);
    const char *args[] = {text, "none", tag};
    return fcall_keys(call_status(q, cb, arg), FN_DISC_DOMAIN_MISS, &(key_ids_t){.domain = domain},
                      3, args, NULL);
}

int queue_admin_disc_put(queue_admin_t *a, const queue_disc_t *d, char *err, size_t errlen)
{
    char nums[3][24];
    const char *args[DISC_PUT_ARGS];
    size_t lens[DISC_PUT_ARGS];
    disc_args(d, nums, args, lens);
    redisReply *r = queue_admin_call(a, FN_DISC_PUT, &(key_ids_t){.addr = d->address},
                                     DISC_PUT_ARGS, args, lens, err, errlen);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_STRING && !strcmp(r->str, "ok") ? 0 : -1;
    if (rc < 0) snprintf(err, errlen, "disc_put: unexpected reply");
    freeReplyObject(r);
    return rc;
}

int queue_admin_disc_list(queue_admin_t *a, void (*cb)(const queue_disc_t *d, void *arg), void *arg,
                          char *err, size_t errlen)
{
    redisReply *list =
        queue_admin_call(a, FN_DISC_ADDRESSES, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (!list) return -1;
    int rc = list->type == REDIS_REPLY_ARRAY ? 0 : -1;
    if (rc < 0) snprintf(err, errlen, "disc_addresses: unexpected reply");
    for (size_t i = 0; rc == 0 && i < list->elements; i++) {
        const char *addr = list->element[i]->str;
        if (list->element[i]->type != REDIS_REPLY_STRING) continue;
        redisReply *r = queue_admin_call(a, FN_DISC_GET, &(key_ids_t){.addr = addr}, 0, NULL, NULL,
                                         err, errlen);
        if (!r) {
            rc = -1;
            break;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 9 &&
            r->element[0]->type == REDIS_REPLY_STRING) {
            queue_disc_t d = {.address = addr};
            disc_fields(&d, r->element, true);
            cb(&d, arg);
        }
        freeReplyObject(r);
    }
    freeReplyObject(list);
    return rc;
}

int queue_admin_disc_delete(queue_admin_t *a, const char *address, char *err, size_t errlen)
{
    const char *args[] = {address};
    redisReply *r = queue_admin_call(a, FN_DISC_DELETE, &(key_ids_t){.addr = address}, 1, args,
                                     NULL, err, errlen);
    if (!r) return -1;
    int rc = r->type != REDIS_REPLY_STRING ? -1 : !strcmp(r->str, "deleted") ? 1 : 0;
    if (rc < 0) snprintf(err, errlen, "disc_delete: unexpected reply");
    freeReplyObject(r);
    return rc;
}

/* ---- the directory's index (issue 18) ---- */

int key_directory_parse(const redisReply *r, queue_key_directory_t *out)
{
    *out = (queue_key_directory_t){.sealed_version = -1};
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5 ||
        r->element[4]->type != REDIS_REPLY_ARRAY || r->element[4]->elements % 2)
        return -1;
    out->version = reply_ll(r->element[0], 0);
    const char *sealed = reply_str(r->element[1]);
    if (sealed[0]) {
        out->sealed_version = reply_ll(r->element[1], -1);
        out->tag = reply_str(r->element[2]);
    }
    out->stored = reply_ll(r->element[3], 0);
    const redisReply *pairs = r->element[4];
    out->n = pairs->elements / 2;
    if (!out->n) return 0;
    out->entries = calloc(out->n, sizeof *out->entries);
    out->tags = calloc(out->n, sizeof *out->tags);
    if (!out->entries || !out->tags) {
        free(out->entries);
        free(out->tags);
        return -1;
    }
    for (size_t i = 0; i < out->n; i++) {
        out->entries[i] = reply_str(pairs->element[2 * i]);
        out->tags[i] = reply_str(pairs->element[2 * i + 1]);
    }
    return 0;
}

static void on_directory_reply(struct call *call, redisReply *reply, const char *err)
{
    queue_key_directory_t dir;
    if (!reply || key_directory_parse(reply, &dir) < 0) {
        call->cb.directory(-1, reply ? "unexpected reply" : err, NULL, call->arg);
        return;
    }
    call->cb.directory(0, NULL, &dir, call->arg);
    free(dir.entries);
    free(dir.tags);
}

int queue_key_directory(queue_t *q, queue_key_directory_cb cb, void *arg)
{
    struct call *call = call_new(q, arg);
    if (call) {
        call->done = on_directory_reply;
        call->cb.directory = cb;
    }
    return fcall_keys(call, FN_KEY_DIRECTORY, &(key_ids_t){0}, 0, NULL, NULL);
}

int queue_admin_key_directory(queue_admin_t *a, queue_key_directory_cb cb, void *arg, char *err,
                              size_t errlen)
{
    redisReply *r =
        queue_admin_call(a, FN_KEY_DIRECTORY, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (!r) return -1;
    queue_key_directory_t dir;
    int rc = key_directory_parse(r, &dir);
    if (rc < 0)
        snprintf(err, errlen, "unexpected key_directory reply");
    else
        cb(0, NULL, &dir, arg);
    if (rc == 0) {
        free(dir.entries);
        free(dir.tags);
    }
    freeReplyObject(r);
    return rc;
}

int queue_admin_key_address(queue_admin_t *a, const char *addr, queue_key_cb cb, void *arg,
                            char *err, size_t errlen)
{
    const char *at = strrchr(addr, '@');
    const char *args[] = {addr, ""};
    redisReply *r =
        queue_admin_call(a, FN_KEY_LOOKUP, &(key_ids_t){.addr = addr, .domain = at ? at + 1 : ""},
                         2, args, NULL, err, errlen);
    if (!r) return -1;
    queue_key_found_t f;
    bool ok = parse_found(r, &f);
    if (ok)
        cb(0, NULL, &f, arg);
    else
        snprintf(err, errlen, "unexpected key_lookup reply");
    freeReplyObject(r);
    return ok ? 0 : -1;
}

int queue_admin_key_seal(queue_admin_t *a, long long version, long long sealed, const char *tag,
                         const char *const *entries, const char *const *tags, size_t n, char *err,
                         size_t errlen)
{
    if (n > ((size_t)INT_MAX - 3) / 2) {
        snprintf(err, errlen, "the index is too large");
        return -1;
    }
    const char **args = calloc(3 + 2 * n, sizeof *args);
    if (!args) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char v[24], sv[24];
    snprintf(v, sizeof v, "%lld", version);
    snprintf(sv, sizeof sv, "%lld", sealed);
    args[0] = v;
    args[1] = sv;
    args[2] = tag;
    for (size_t i = 0; i < n; i++) {
        args[3 + 2 * i] = entries[i];
        args[4 + 2 * i] = tags[i];
    }
    redisReply *r = queue_admin_call(a, FN_KEY_SEAL, &(key_ids_t){0}, (int)(3 + 2 * n), args, NULL,
                                     err, errlen);
    free(args);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_STRING && !strcmp(r->str, "ok")        ? 1
             : r->type == REDIS_REPLY_STRING && !strcmp(r->str, "changed") ? 0
                                                                           : -1;
    if (rc < 0) snprintf(err, errlen, "unexpected key_seal reply");
    freeReplyObject(r);
    return rc;
}

/* ---- the expiry index's backfill ---- */

/* Ids filed per key_index call: each names its keys in KEYS. */
#define INDEX_BATCH 256

static void on_indexed(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        log_warn("event=keys_index_failed error=\"%s\"", reply ? "unexpected reply" : err);
        call->q->keys_indexing = false; /* the next report files them all again */
        return;
    }
    log_info("event=keys_indexed count=%lld", reply->integer);
}

static void index_batch(queue_t *q, redisReply *const *ids, size_t n)
{
    const char *args[INDEX_BATCH];
    call_keys_t keys;
    call_keys_init(&keys, FN_KEY_INDEX, &(key_ids_t){0});
    for (size_t i = 0; i < n; i++) {
        args[i] = reply_str(ids[i]);
        call_keys_add(&keys, KEY_INDEX_KEY, &(key_ids_t){.fpr = args[i]});
    }
    struct call *call = call_new(q, NULL);
    if (call) call->done = on_indexed;
    if (fcall(call, &keys, (int)n, args, NULL) < 0) {
        log_warn("event=keys_index_failed error=\"redis not connected\"");
        q->keys_indexing = false;
    }
    call_keys_free(&keys);
}

static void on_index_fprs(struct call *call, redisReply *reply, const char *err)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        log_warn("event=keys_index_failed error=\"%s\"", reply ? "unexpected reply" : err);
        call->q->keys_indexing = false; /* the next report tries again */
        return;
    }
    log_info("event=keys_indexing ids=%zu", reply->elements);
    for (size_t at = 0; at < reply->elements; at += INDEX_BATCH) {
        size_t n = reply->elements - at < INDEX_BATCH ? reply->elements - at : INDEX_BATCH;
        index_batch(call->q, reply->element + at, n);
    }
}

/* Every stored id is filed again (ZADD is idempotent, and a key stored
 * meanwhile is filed by key_put alike): simpler than finding those
 * missing, and done once per process. */
void queue_key_index(queue_t *q)
{
    if (q->keys_indexing) return;
    struct call *call = call_new(q, NULL);
    if (call) call->done = on_index_fprs;
    q->keys_indexing = fcall_keys(call, FN_KEY_FPRS, &(key_ids_t){0}, 0, NULL, NULL) == 0;
}

/* ---- administration of the key directory ---- */

void queue_key_stored_free(queue_key_stored_t *k)
{
    buf_free(&k->addresses);
    buf_free(&k->armored);
    buf_free(&k->subject);
    buf_free(&k->issuer);
    buf_free(&k->serial);
}

/* Appends a reply's text and a NUL (not counted in len); -1 when memory ran out. */
static int take_text(buf_t *b, const redisReply *r)
{
    size_t len;
    const char *v = reply_text(r, &len);
    if (buf_append(b, v ? v : "", len) < 0 || buf_append(b, "", 1) < 0) return -1;
    b->len--;
    return 0;
}

int queue_admin_key_get(queue_admin_t *a, const char *fpr, queue_key_stored_t *out, char *err,
                        size_t errlen)
{
    redisReply *r =
        queue_admin_call(a, FN_KEY_GET, &(key_ids_t){.fpr = fpr}, 0, NULL, NULL, err, errlen);
    if (!r) return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 8 &&
        r->element[3]->type == REDIS_REPLY_STRING) {
        *out = (queue_key_stored_t){0};
        snprintf(out->fpr, sizeof out->fpr, "%s", fpr);
        out->expires = reply_ll(r->element[1], 0);
        out->imported = reply_ll(r->element[2], 0);
        out->smime = !strcmp(reply_str(r->element[4]), "smime");
        rc = take_text(&out->addresses, r->element[0]) < 0 ||
                     buf_append(&out->armored, r->element[3]->str, r->element[3]->len) < 0 ||
                     take_text(&out->subject, r->element[5]) < 0 ||
                     take_text(&out->issuer, r->element[6]) < 0 ||
                     take_text(&out->serial, r->element[7]) < 0
                 ? -1
                 : 1;
        if (rc < 0) {
            queue_key_stored_free(out);
            snprintf(err, errlen, "out of memory");
        }
    } else if (r->type != REDIS_REPLY_NIL) {
        snprintf(err, errlen, "unexpected key_get reply");
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

int queue_admin_key_find(queue_admin_t *a, const char *addr, char fprs[QUEUE_KEY_METHODS][65],
                         char *err, size_t errlen)
{
    const char *at = strrchr(addr, '@');
    const char *args[] = {addr, ""};
    redisReply *r =
        queue_admin_call(a, FN_KEY_LOOKUP, &(key_ids_t){.addr = addr, .domain = at ? at + 1 : ""},
                         2, args, NULL, err, errlen);
    if (!r) return -1;
    queue_key_found_t f;
    bool ok = parse_found(r, &f);
    for (int m = 0; m < QUEUE_KEY_METHODS; m++)
        snprintf(fprs[m], 65, "%s", ok ? f.keys[m].fpr : "");
    if (!ok) snprintf(err, errlen, "unexpected key_lookup reply");
    freeReplyObject(r);
    return ok ? 0 : -1;
}

static int compare_replies(const void *x, const void *y)
{
    const redisReply *a = *(const redisReply *const *)x, *b = *(const redisReply *const *)y;
    return strcmp(reply_str(a), reply_str(b));
}

/* Every stored key's fingerprint, sorted: an array reply, for the caller to free. */
static redisReply *stored_fprs(queue_admin_t *a, char *err, size_t errlen)
{
    redisReply *r = queue_admin_call(a, FN_KEY_FPRS, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (r && r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "unexpected key_fprs reply");
        freeReplyObject(r);
        return NULL;
    }
    if (r && r->elements) qsort(r->element, r->elements, sizeof(redisReply *), compare_replies);
    return r;
}

int queue_admin_key_list(queue_admin_t *a, void (*cb)(const queue_key_stored_t *key, void *arg),
                         void *arg, char *err, size_t errlen)
{
    redisReply *r = stored_fprs(a, err, errlen);
    if (!r) return -1;
    int rc = 0;
    for (size_t i = 0; i < r->elements && rc == 0; i++) {
        queue_key_stored_t key;
        int found = queue_admin_key_get(a, reply_str(r->element[i]), &key, err, errlen);
        if (found < 0) rc = -1;
        if (found <= 0) continue;
        cb(&key, arg);
        queue_key_stored_free(&key);
    }
    freeReplyObject(r);
    return rc;
}

/* ---- key_put and key_delete ---- */

/* Both name in KEYS what they touch besides the key: the addresses it
 * loses, and then every other stored key, to file those addresses under
 * one of them again. They are read first; a change in between makes the
 * call answer "changed" with nothing written, and it is read and sent again. */
#define DIRECTORY_TRIES 8

static bool listed(const char *addr, const char *const *list, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(addr, list[i])) return true;
    return false;
}

/* One call of key_put or key_delete, as its keys and args are gathered. */
struct directory_call {
    call_keys_t keys;
    const char **args;
    size_t *lens;
    unsigned nargs, cap;
    char *stored;      /* the key's addresses as stored, split in place */
    const char **lost; /* those of them the call takes away */
    unsigned n_lost;
    redisReply *fprs; /* every stored key, when there are addresses to file again */
    char counts[2][16];
};

static void directory_call_free(struct directory_call *c)
{
    call_keys_free(&c->keys);
    free(c->args);
    free(c->lens);
    free(c->stored);
    free(c->lost);
    freeReplyObject(c->fprs);
}

static void arg_add(struct directory_call *c, const char *arg, size_t len)
{
    if (c->nargs == c->cap) {
        unsigned cap = c->cap ? 2 * c->cap : 16;
        const char **args = realloc(c->args, cap * sizeof *args);
        if (args) c->args = args;
        size_t *lens = realloc(c->lens, cap * sizeof *lens);
        if (lens) c->lens = lens;
        if (!args || !lens) {
            c->keys.failed = true;
            return;
        }
        c->cap = cap;
    }
    c->args[c->nargs] = arg;
    c->lens[c->nargs++] = len;
}

/* Reads what the call must name: the key's stored addresses that are not
 * in keep, and every stored key when there are any. */
static int directory_read(queue_admin_t *a, struct directory_call *c, const char *fpr,
                          const char *const *keep, unsigned n_keep, char *err, size_t errlen)
{
    queue_key_stored_t old;
    int found = queue_admin_key_get(a, fpr, &old, err, errlen);
    if (found <= 0) return found;
    c->stored = (char *)old.addresses.data; /* NUL-terminated by key_get */
    old.addresses = (buf_t){0};             /* c->stored owns it now */
    queue_key_stored_free(&old);
    size_t n = 1;
    for (const char *p = c->stored; *p; p++)
        n += *p == '\n';
    if (!(c->lost = calloc(n, sizeof *c->lost))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (char *save = NULL, *addr = strtok_r(c->stored, "\n", &save); addr;
         addr = strtok_r(NULL, "\n", &save))
        if (!listed(addr, keep, n_keep)) c->lost[c->n_lost++] = addr;
    if (c->n_lost && !(c->fprs = stored_fprs(a, err, errlen))) return -1;
    return 0;
}

/* Names the addresses lost (keys part lost, args) and then the other keys
 * (part others, args). */
static void name_lost_and_others(struct directory_call *c, const char *fpr, unsigned lost,
                                 unsigned others)
{
    for (unsigned i = 0; i < c->n_lost; i++) {
        call_keys_add(&c->keys, lost, &(key_ids_t){.addr = c->lost[i]});
        arg_add(c, c->lost[i], strlen(c->lost[i]));
    }
    for (size_t i = 0; c->fprs && i < c->fprs->elements; i++) {
        const char *other = reply_str(c->fprs->element[i]);
        if (!strcmp(other, fpr)) continue;
        call_keys_add(&c->keys, others, &(key_ids_t){.fpr = other});
        arg_add(c, other, strlen(other));
    }
}

/* Sends the call: its reply, or NULL with err set. "changed" sets *changed. */
static redisReply *directory_send(queue_admin_t *a, struct directory_call *c, bool *changed,
                                  char *err, size_t errlen)
{
    if (c->keys.failed) {
        snprintf(err, errlen, "out of memory, or a name too long for a key");
        return NULL;
    }
    redisReply *r = queue_admin_fcall(a, &c->keys, (int)c->nargs, c->args, c->lens, err, errlen);
    *changed = r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "changed");
    return r;
}

/* 1 when stored, 0 when the directory changed meanwhile, -1 on error. */
static int key_put_once(queue_admin_t *a, const queue_key_record_t *key, char *err, size_t errlen)
{
    struct directory_call c = {0};
    if (directory_read(a, &c, key->fpr, key->addresses, key->n_addresses, err, errlen) < 0) {
        directory_call_free(&c);
        return -1;
    }
    call_keys_init(&c.keys, FN_KEY_PUT, &(key_ids_t){.fpr = key->fpr});
    char expires[24];
    snprintf(expires, sizeof expires, "%lld", key->expires);
    snprintf(c.counts[0], sizeof c.counts[0], "%u", key->n_addresses);
    snprintf(c.counts[1], sizeof c.counts[1], "%u", c.n_lost);
    const char *head[] = {key->fpr,
                          expires,
                          key->armored,
                          c.counts[0],
                          c.counts[1],
                          key->smime ? "smime" : "openpgp",
                          key->smime && key->subject ? key->subject : "",
                          key->smime && key->issuer ? key->issuer : "",
                          key->smime && key->serial ? key->serial : ""};
    for (int i = 0; i < 9; i++)
        arg_add(&c, head[i], i == 2 ? key->armored_len : strlen(head[i]));
    for (unsigned i = 0; i < key->n_addresses; i++) {
        call_keys_add(&c.keys, KEY_PUT_ADDRESS, &(key_ids_t){.addr = key->addresses[i]});
        arg_add(&c, key->addresses[i], strlen(key->addresses[i]));
    }
    name_lost_and_others(&c, key->fpr, KEY_PUT_DROPPED, KEY_PUT_OTHER);
    bool changed = false;
    redisReply *r = directory_send(a, &c, &changed, err, errlen);
    int rc = !r ? -1 : changed ? 0 : 1;
    if (rc > 0 && (r->type != REDIS_REPLY_STRING || strcmp(r->str, "ok"))) {
        snprintf(err, errlen, "redis refused the key");
        rc = -1;
    }
    freeReplyObject(r);
    directory_call_free(&c);
    return rc;
}

int queue_admin_key_put(queue_admin_t *a, const queue_key_record_t *key, char *err, size_t errlen)
{
    for (int tries = 0; tries < DIRECTORY_TRIES; tries++) {
        int rc = key_put_once(a, key, err, errlen);
        if (rc != 0) return rc < 0 ? -1 : 0;
    }
    snprintf(err, errlen, "the key directory kept changing; try again");
    return -1;
}

/* 1 or 0 as queue_admin_key_delete, 2 when the directory changed meanwhile. */
static int key_delete_once(queue_admin_t *a, const char *fpr, char *err, size_t errlen)
{
    struct directory_call c = {0};
    if (directory_read(a, &c, fpr, NULL, 0, err, errlen) < 0) {
        directory_call_free(&c);
        return -1;
    }
    call_keys_init(&c.keys, FN_KEY_DELETE, &(key_ids_t){.fpr = fpr});
    snprintf(c.counts[0], sizeof c.counts[0], "%u", c.n_lost);
    arg_add(&c, fpr, strlen(fpr));
    arg_add(&c, c.counts[0], strlen(c.counts[0]));
    name_lost_and_others(&c, fpr, KEY_DELETE_ADDRESS, KEY_DELETE_OTHER);
    bool changed = false;
    redisReply *r = directory_send(a, &c, &changed, err, errlen);
    int rc = !r ? -1 : changed ? 2 : r->type == REDIS_REPLY_INTEGER ? r->integer > 0 : -1;
    if (r && rc < 0) snprintf(err, errlen, "unexpected key_delete reply");
    freeReplyObject(r);
    directory_call_free(&c);
    return rc;
}

int queue_admin_key_delete(queue_admin_t *a, const char *fpr, char *err, size_t errlen)
{
    for (int tries = 0; tries < DIRECTORY_TRIES; tries++) {
        int rc = key_delete_once(a, fpr, err, errlen);
        if (rc != 2) return rc;
    }
    snprintf(err, errlen, "the key directory kept changing; try again");
    return -1;
}

/* ---- policies ---- */

/* policy_set and prefer_set: target's value, or with value NULL none. */
static int setting_set(queue_admin_t *a, enum queue_fn fn, const char *target, const char *value,
                       char *err, size_t errlen)
{
    const char *args[] = {target, value};
    redisReply *r =
        queue_admin_call(a, fn, &(key_ids_t){0}, value ? 2 : 1, args, NULL, err, errlen);
    freeReplyObject(r);
    return r ? 0 : -1;
}

int queue_admin_policy_set(queue_admin_t *a, const char *target, const char *policy, char *err,
                           size_t errlen)
{
    return setting_set(a, FN_POLICY_SET, target, policy, err, errlen);
}

int queue_admin_prefer_set(queue_admin_t *a, const char *target, const char *method, char *err,
                           size_t errlen)
{
    return setting_set(a, FN_PREFER_SET, target, method, err, errlen);
}

/* policy_list's reply, the policies and the preferences as two arrays of
 * pairs, or NULL with err. */
static redisReply *policy_list(queue_admin_t *a, char *err, size_t errlen)
{
    redisReply *r =
        queue_admin_call(a, FN_POLICY_LIST, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (r &&
        (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
         r->element[0]->type != REDIS_REPLY_ARRAY || r->element[1]->type != REDIS_REPLY_ARRAY)) {
        snprintf(err, errlen, "unexpected policy_list reply");
        freeReplyObject(r);
        r = NULL;
    }
    return r;
}

int queue_admin_settings(queue_admin_t *a,
                         void (*cb)(bool prefer, const char *name, const char *value, void *arg),
                         void *arg, char *err, size_t errlen)
{
    redisReply *r = policy_list(a, err, errlen);
    if (!r) return -1;
    for (int h = 0; h < 2; h++)
        for (size_t i = 0; i + 1 < r->element[h]->elements; i += 2)
            cb(h == 1, reply_str(r->element[h]->element[i]),
               reply_str(r->element[h]->element[i + 1]), arg);
    freeReplyObject(r);
    return 0;
}

/* The lines of one hash's pairs: "field[ infix] value". */
static int print_pairs(buf_t *out, const redisReply *pairs, const char *infix)
{
    int rc = 0;
    for (size_t i = 0; i + 1 < pairs->elements && rc == 0; i += 2)
        rc = buf_printf(out, "%s%s %s\n", reply_str(pairs->element[i]), infix,
                        reply_str(pairs->element[i + 1]));
    return rc;
}

int queue_admin_policy_list(queue_admin_t *a, buf_t *out, char *err, size_t errlen)
{
    redisReply *r = policy_list(a, err, errlen);
    if (!r) return -1;
    int rc = print_pairs(out, r->element[0], "");
    if (rc == 0) rc = print_pairs(out, r->element[1], " prefer");
    freeReplyObject(r);
    return rc;
}
