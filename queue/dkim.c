/* The DKIM signing keys in Redis: what workers sign with, and what
 * `sealpost dkim` stores. Everything lives under the hash tag
 * {sealpost:dkim}, so each call is in one slot on Redis Cluster; what is
 * stored how, and the rules of a rotation (two selectors per algorithm, one
 * of them active), the functions library alone knows. The private keys come
 * and go sealed: this file never sees one in clear. */
#include "queue/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading keys, for the node and the command line alike ---- */

/* Keys read so far, of every domain. */
struct dkim_set {
    queue_dkim_key_t *keys;
    size_t n, cap;
};

static void dkim_set_free(struct dkim_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->keys[i].record);
        free(s->keys[i].sealed);
    }
    free(s->keys);
    *s = (struct dkim_set){0};
}

/* A copy of a string reply with a NUL after it (not counted in *len). */
static char *reply_dup(const redisReply *r, size_t *len)
{
    char *out = malloc(r->len + 1);
    if (!out) return NULL;
    memcpy(out, r->str, r->len);
    out[r->len] = 0;
    if (len) *len = r->len;
    return out;
}

static bool dkim_set_room(struct dkim_set *s)
{
    if (s->n < s->cap) return true;
    size_t cap = s->cap ? 2 * s->cap : 8;
    queue_dkim_key_t *keys = realloc(s->keys, cap * sizeof *keys);
    if (!keys) return false;
    s->keys = keys;
    s->cap = cap;
    return true;
}

/* What of a string reply fits in out, up to a NUL in it, and "..." after
 * it when cut short (which makes it no valid name): the name of an entry
 * too long to be read whole, for the log and the listing. */
static void reply_prefix(const redisReply *r, char *out, size_t size)
{
    out[0] = 0;
    if (r->type != REDIS_REPLY_STRING) return;
    size_t n = strnlen(r->str, r->len < size ? r->len : size - 4);
    memcpy(out, r->str, n);
    snprintf(out + n, size - n, "%s", n < r->len ? "..." : "");
}

/* k, named already, becomes an unreadable entry saying why: -1 when there
 * is no memory for that. */
static int dkim_key_malformed(queue_dkim_key_t *k, const char *why)
{
    k->malformed = true;
    k->record = strdup(why);
    return k->record ? 0 : -1;
}

/* One selector from seven elements of dkim_get's reply: selector, algorithm,
 * created, active (1 or 0), record, sealed key, tag. One that cannot be read is
 * taken as malformed (see queue.h); -1 only when memory ran out. */
static int dkim_key_take(queue_dkim_key_t *k, const char *domain, redisReply *const *e)
{
    *k = (queue_dkim_key_t){0};
    snprintf(k->domain, sizeof k->domain, "%s", domain); /* dkim_domain_take checked it */
    k->created = reply_ll(e[2], 0);
    k->active = reply_ll(e[3], 0) == 1;
    const char *why = NULL;
    if (!reply_copy(e[0], k->selector, sizeof k->selector))
        why = "the selector is not a string of at most 253 octets";
    else if (!reply_copy(e[1], k->algorithm, sizeof k->algorithm))
        why = "the algorithm is not a string of at most 7 octets";
    else if (e[4]->type != REDIS_REPLY_STRING || e[5]->type != REDIS_REPLY_STRING)
        why = "the record or the key is not a string";
    if (why) {
        reply_prefix(e[0], k->selector, sizeof k->selector);
        snprintf(k->algorithm, sizeof k->algorithm, "?");
        return dkim_key_malformed(k, why);
    }
    if (!reply_copy(e[6], k->tag, sizeof k->tag)) k->tag[0] = 0; /* too long: fails as none */
    k->record = reply_dup(e[4], NULL);
    k->sealed = reply_dup(e[5], &k->sealed_len);
    if (k->record && k->sealed) return 0;
    free(k->record);
    free(k->sealed);
    return -1;
}

/* A domain of dkim_domains' reply into out; false, with an unreadable
 * entry for it added to s, when it is not one (too long, or not a string):
 * its keys are not asked for. -1 when memory ran out. */
static int dkim_domain_take(struct dkim_set *s, const redisReply *r, char out[254])
{
    if (reply_copy(r, out, 254)) return 1;
    if (!dkim_set_room(s)) return -1;
    queue_dkim_key_t *k = &s->keys[s->n];
    *k = (queue_dkim_key_t){0};
    reply_prefix(r, k->domain, sizeof k->domain);
    if (dkim_key_malformed(k, "the domain is not a string of at most 253 octets") < 0) return -1;
    s->n++;
    return 0;
}

/* Adds a domain's keys from its dkim_get reply; -1 when the reply is not
 * one, or memory ran out. */
static int dkim_set_take(struct dkim_set *s, const char *domain, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 7) return -1;
    for (size_t i = 0; i < r->elements; i += 7) {
        if (!dkim_set_room(s) || dkim_key_take(&s->keys[s->n], domain, r->element + i) < 0)
            return -1;
        s->n++;
    }
    return 0;
}

static int by_domain_and_selector(const void *x, const void *y)
{
    const queue_dkim_key_t *a = x, *b = y;
    int d = strcmp(a->domain, b->domain);
    return d ? d : strcmp(a->selector, b->selector);
}

/* By bytes: Lua would compare strings by the server's locale. */
static void dkim_set_sort(struct dkim_set *s)
{
    if (s->n) qsort(s->keys, s->n, sizeof *s->keys, by_domain_and_selector);
}

/* ---- the node side ---- */

int queue_dkim_version(queue_t *q, queue_version_cb cb, void *arg)
{
    return fcall_keys(call_version(q, cb, arg), FN_DKIM_VERSION, &(key_ids_t){0}, 0, NULL, NULL);
}

/* One queue_dkim_keys: the domains, then a dkim_get per domain in flight. */
struct dkim_read {
    struct dkim_set set;
    char (*domains)[254]; /* call->shard of a dkim_get indexes it */
    unsigned pending;
    char err[160];
    queue_dkim_keys_cb cb;
    void *arg;
};

static void read_finish(struct dkim_read *rd, const char *err)
{
    if (err && !rd->err[0]) snprintf(rd->err, sizeof rd->err, "%s", err);
    if (rd->pending && --rd->pending > 0) return;
    dkim_set_sort(&rd->set);
    if (rd->err[0])
        rd->cb(-1, rd->err, NULL, 0, rd->arg);
    else
        rd->cb(0, NULL, rd->set.keys, rd->set.n, rd->arg);
    dkim_set_free(&rd->set);
    free(rd->domains);
    free(rd);
}

static void on_dkim_get(struct call *call, redisReply *reply, const char *err)
{
    struct dkim_read *rd = call->arg;
    if (!reply)
        read_finish(rd, err);
    else if (dkim_set_take(&rd->set, rd->domains[call->shard], reply) < 0)
        read_finish(rd, "unexpected dkim_get reply, or out of memory");
    else
        read_finish(rd, NULL);
}

/* Sends one dkim_get per domain at once: they pipeline on the one
 * connection to the slot's master, and the last reply ends the read. */
static void on_dkim_domains(struct call *call, redisReply *reply, const char *err)
{
    struct dkim_read *rd = call->arg;
    rd->pending = 1; /* held back until every call is sent */
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        read_finish(rd, reply ? "unexpected dkim_domains reply" : err);
        return;
    }
    if (reply->elements && !(rd->domains = calloc(reply->elements, sizeof *rd->domains))) {
        read_finish(rd, "out of memory");
        return;
    }
    for (size_t i = 0; i < reply->elements && !rd->err[0]; i++) {
        int named = dkim_domain_take(&rd->set, reply->element[i], rd->domains[i]);
        struct call *get = named > 0 ? call_new(call->q, rd) : NULL;
        if (named == 0) continue;
        if (!get) {
            snprintf(rd->err, sizeof rd->err, "out of memory");
            break;
        }
        get->done = on_dkim_get;
        get->shard = (unsigned)i;
        rd->pending++;
        if (fcall_keys(get, FN_DKIM_GET, &(key_ids_t){.domain = rd->domains[i]}, 0, NULL, NULL) <
            0) {
            rd->pending--;
            snprintf(rd->err, sizeof rd->err, "redis not connected");
        }
    }
    read_finish(rd, NULL);
}

int queue_dkim_keys(queue_t *q, queue_dkim_keys_cb cb, void *arg)
{
    struct dkim_read *rd = calloc(1, sizeof *rd);
    struct call *call = rd ? call_new(q, rd) : NULL;
    if (!call) {
        free(rd);
        return -1;
    }
    rd->cb = cb;
    rd->arg = arg;
    call->done = on_dkim_domains;
    if (fcall_keys(call, FN_DKIM_DOMAINS, &(key_ids_t){0}, 0, NULL, NULL) < 0) {
        free(rd); /* fcall freed the call */
        return -1;
    }
    return 0;
}

/* ---- the command line's side ---- */

int queue_admin_dkim_put(queue_admin_t *a, const queue_dkim_key_t *k, bool *active, char *err,
                         size_t errlen)
{
    const char *args[] = {k->domain, k->selector, k->algorithm, k->record, k->sealed, k->tag};
    size_t lens[] = {strlen(k->domain), strlen(k->selector), strlen(k->algorithm),
                     strlen(k->record), k->sealed_len,       strlen(k->tag)};
    redisReply *r = queue_admin_call(a, FN_DKIM_PUT, &(key_ids_t){.domain = k->domain}, 6, args,
                                     lens, err, errlen);
    if (!r) return -1;
    const char *said = r->type == REDIS_REPLY_STRING ? r->str : "";
    int rc = -1;
    if (!strcmp(said, "active") || !strcmp(said, "inactive")) {
        *active = !strcmp(said, "active");
        rc = 0;
    } else if (!strcmp(said, "exists")) {
        snprintf(err, errlen, "selector %s of %s exists: delete it first, or choose another",
                 k->selector, k->domain);
    } else if (!strcmp(said, "full")) {
        snprintf(err, errlen,
                 "%s is full: it has two %s selectors already (the old and the new of a "
                 "rotation); delete one first",
                 k->domain, k->algorithm);
    } else {
        snprintf(err, errlen, "unexpected dkim_put reply");
    }
    freeReplyObject(r);
    return rc;
}

/* dkim_delete and dkim_activate: 1 done, 0 no such selector, -1. */
static int dkim_change(queue_admin_t *a, enum queue_fn fn, const char *domain, const char *selector,
                       char *err, size_t errlen)
{
    const char *args[] = {domain, selector};
    bool with_domain = fn != FN_DKIM_ACTIVATE; /* it keeps no list of domains */
    redisReply *r = queue_admin_call(a, fn, &(key_ids_t){.domain = domain}, with_domain ? 2 : 1,
                                     with_domain ? args : args + 1, NULL, err, errlen);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_INTEGER ? r->integer > 0 : -1;
    if (rc < 0) snprintf(err, errlen, "unexpected %s reply", schema_fn_name(fn));
    freeReplyObject(r);
    return rc;
}

int queue_admin_dkim_delete(queue_admin_t *a, const char *domain, const char *selector, char *err,
                            size_t errlen)
{
    return dkim_change(a, FN_DKIM_DELETE, domain, selector, err, errlen);
}

int queue_admin_dkim_activate(queue_admin_t *a, const char *domain, const char *selector, char *err,
                              size_t errlen)
{
    return dkim_change(a, FN_DKIM_ACTIVATE, domain, selector, err, errlen);
}

/* Every domain's keys into s. */
static int dkim_read_all(queue_admin_t *a, struct dkim_set *s, char *err, size_t errlen)
{
    redisReply *domains =
        queue_admin_call(a, FN_DKIM_DOMAINS, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (!domains) return -1;
    int rc = domains->type == REDIS_REPLY_ARRAY ? 0 : -1;
    if (rc < 0) snprintf(err, errlen, "unexpected dkim_domains reply");
    for (size_t i = 0; rc == 0 && i < domains->elements; i++) {
        char domain[254];
        int named = dkim_domain_take(s, domains->element[i], domain);
        if (named < 0) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        }
        if (named <= 0) continue;
        redisReply *r = queue_admin_call(a, FN_DKIM_GET, &(key_ids_t){.domain = domain}, 0, NULL,
                                         NULL, err, errlen);
        if (!r) rc = -1;
        if (r && dkim_set_take(s, domain, r) < 0) {
            snprintf(err, errlen, "unexpected dkim_get reply, or out of memory");
            rc = -1;
        }
        freeReplyObject(r);
    }
    freeReplyObject(domains);
    return rc;
}

int queue_admin_dkim_tag(queue_admin_t *a, const queue_dkim_key_t *k, const char *tag, char *err,
                         size_t errlen)
{
    const char *args[] = {k->selector, k->sealed, tag};
    size_t lens[] = {strlen(k->selector), k->sealed_len, strlen(tag)};
    redisReply *r = queue_admin_call(a, FN_DKIM_TAG, &(key_ids_t){.domain = k->domain}, 3, args,
                                     lens, err, errlen);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    if (rc < 0) snprintf(err, errlen, "unexpected dkim_tag reply");
    freeReplyObject(r);
    return rc;
}

int queue_admin_dkim_list(queue_admin_t *a, void (*cb)(const queue_dkim_key_t *k, void *arg),
                          void *arg, char *err, size_t errlen)
{
    struct dkim_set s = {0};
    int rc = dkim_read_all(a, &s, err, errlen);
    dkim_set_sort(&s);
    for (size_t i = 0; rc == 0 && i < s.n; i++)
        cb(&s.keys[i], arg);
    dkim_set_free(&s);
    return rc;
}
