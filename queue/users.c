/* SMTP users in Redis, so every stateless ingress node sees the same ones.
 * All keys share the hash tag {sealpost:auth}, so a login's one call (count
 * the attempt, read the user) stays in one slot, on one Redis or on Redis
 * Cluster alike; how they are stored, the functions library alone knows. */
#include "queue/internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies a string reply into a bounded field; false when it does not fit. */
static bool copy_field(const redisReply *r, char *out, size_t size)
{
    if (r->type != REDIS_REPLY_STRING || r->len >= size) return false;
    memcpy(out, r->str, r->len);
    out[r->len] = 0;
    return true;
}

static void report_user(struct call *call, redisReply *reply, const char *err, queue_user_t *user)
{
    if (!reply) {
        call->cb.user(-1, err, NULL, call->arg);
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 5 ||
               !copy_field(reply->element[0], user->hash, sizeof user->hash) ||
               !copy_field(reply->element[1], user->cram, sizeof user->cram) ||
               reply->element[2]->type != REDIS_REPLY_INTEGER ||
               !copy_field(reply->element[3], user->hash_tag, sizeof user->hash_tag) ||
               !copy_field(reply->element[4], user->cram_tag, sizeof user->cram_tag)) {
        call->cb.user(-1, "unexpected reply", NULL, call->arg);
    } else {
        user->attempts = reply->element[2]->integer;
        call->cb.user(0, NULL, user, call->arg);
    }
}

static void on_user_reply(struct call *call, redisReply *reply, const char *err)
{
    queue_user_t user = {0};
    report_user(call, reply, err, &user);
    sodium_memzero(&user, sizeof user);
}

int queue_auth_begin(queue_t *q, const queue_login_t *login, queue_user_cb cb, void *arg)
{
    char limit[16], window[16];
    snprintf(limit, sizeof limit, "%u", login->limit);
    snprintf(window, sizeof window, "%u", login->window_s);
    const char *args[] = {login->name, limit, window, login->want_cram ? "1" : "0"};
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_user_reply;
    call->cb.user = cb;
    return fcall_keys(call, FN_AUTH_BEGIN, &(key_ids_t){.client = login->client}, 4, args, NULL);
}

int queue_auth_uncount(queue_t *q, const char *client, queue_status_cb cb, void *arg)
{
    return fcall_keys(call_status(q, cb, arg), FN_AUTH_UNCOUNT, &(key_ids_t){.client = client}, 0,
                      NULL, NULL);
}

/* ---- administration ---- */

int queue_admin_user_set(queue_admin_t *a, const char *name, const char *hash, const char *cram,
                         char *err, size_t errlen)
{
    const char *args[] = {name, hash, cram};
    redisReply *r =
        queue_admin_call(a, FN_USER_SET, &(key_ids_t){0}, cram ? 3 : 2, args, NULL, err, errlen);
    freeReplyObject(r);
    return r ? 0 : -1;
}

int queue_admin_user_tag(queue_admin_t *a, const char *name, const char *hash, const char *hash_tag,
                         const char *cram, const char *cram_tag, char *err, size_t errlen)
{
    const char *args[] = {name, hash, hash_tag, cram ? cram : "", cram ? cram_tag : ""};
    redisReply *r = queue_admin_call(a, FN_USER_TAG, &(key_ids_t){0}, 5, args, NULL, err, errlen);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_STRING && !strcmp(r->str, "ok")        ? 1
             : r->type == REDIS_REPLY_STRING && !strcmp(r->str, "changed") ? 0
                                                                           : -1;
    if (rc < 0) snprintf(err, errlen, "unexpected user_tag reply");
    freeReplyObject(r);
    return rc;
}

int queue_admin_user_records(queue_admin_t *a,
                             int (*cb)(const char *name, const char *hash, const char *cram,
                                       void *arg),
                             void *arg, char *err, size_t errlen)
{
    redisReply *r =
        queue_admin_call(a, FN_USER_RECORDS, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_ARRAY && r->elements % 3 == 0 ? 0 : -1;
    if (rc < 0) snprintf(err, errlen, "unexpected user_records reply");
    for (size_t i = 0; rc == 0 && i < r->elements; i += 3) {
        const char *cram = reply_str(r->element[i + 2]);
        rc = cb(reply_str(r->element[i]), reply_str(r->element[i + 1]), cram[0] ? cram : NULL, arg);
    }
    for (size_t i = 2; i < r->elements; i += 3) /* the secrets: not left in freed memory */
        if (r->element[i]->type == REDIS_REPLY_STRING)
            sodium_memzero(r->element[i]->str, r->element[i]->len);
    freeReplyObject(r);
    return rc;
}

int queue_admin_user_delete(queue_admin_t *a, const char *name, char *err, size_t errlen)
{
    const char *args[] = {name};
    redisReply *r =
        queue_admin_call(a, FN_USER_DELETE, &(key_ids_t){0}, 1, args, NULL, err, errlen);
    if (!r) return -1;
    int found = r->type == REDIS_REPLY_INTEGER ? r->integer > 0 : -1;
    if (found < 0) snprintf(err, errlen, "unexpected user_delete reply");
    freeReplyObject(r);
    return found;
}

static bool user_entry(const redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
           r->element[0]->type == REDIS_REPLY_STRING;
}

static int compare_names(const void *x, const void *y)
{
    const redisReply *a = *(const redisReply *const *)x, *b = *(const redisReply *const *)y;
    return strcmp(a->element[0]->str, b->element[0]->str);
}

int queue_admin_user_list(queue_admin_t *a, buf_t *out, char *err, size_t errlen)
{
    redisReply *r = queue_admin_call(a, FN_USER_LIST, &(key_ids_t){0}, 0, NULL, NULL, err, errlen);
    if (!r) return -1;
    bool ok = r->type == REDIS_REPLY_ARRAY;
    for (size_t i = 0; ok && i < r->elements; i++)
        ok = user_entry(r->element[i]);
    int rc = ok ? 0 : -1;
    if (!ok) snprintf(err, errlen, "unexpected user_list reply");
    if (ok && r->elements) /* by bytes, as the command line always listed them */
        qsort(r->element, r->elements, sizeof(redisReply *), compare_names);
    for (size_t i = 0; ok && i < r->elements && rc == 0; i++)
        rc = buf_printf(out, "%s%s\n", r->element[i]->element[0]->str,
                        reply_ll(r->element[i]->element[1], 0) ? " cram-md5" : "");
    freeReplyObject(r);
    return rc;
}
