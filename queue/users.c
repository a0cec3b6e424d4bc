/* SMTP users in Redis, so every stateless ingress node sees the same ones.
 * All keys share the hash tag {sealpost:auth}, so a login's one call (count
 * the attempt, read the user) stays in one slot, on one Redis or on Redis
 * Cluster alike:
 *   {sealpost:auth}:users           hash  name -> argon2id string
 *   {sealpost:auth}:cram            hash  name -> CRAM-MD5 secret (only when enabled)
 *   {sealpost:auth}:fail:<client>   string, login attempts, expiring with the window */
#include "queue/internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define USERS_KEY "{sealpost:auth}:users"
#define CRAM_KEY  "{sealpost:auth}:cram"

static void fail_key(char out[200], const char *client)
{
    snprintf(out, 200, "{sealpost:auth}:fail:%s", client);
}

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
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
               !copy_field(reply->element[0], user->hash, sizeof user->hash) ||
               !copy_field(reply->element[1], user->cram, sizeof user->cram) ||
               reply->element[2]->type != REDIS_REPLY_INTEGER) {
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
    char fails[200], limit[16], window[16];
    fail_key(fails, login->client);
    snprintf(limit, sizeof limit, "%u", login->limit);
    snprintf(window, sizeof window, "%u", login->window_s);
    const char *keys[] = {USERS_KEY, CRAM_KEY, fails};
    const char *args[] = {login->name, limit, window, login->want_cram ? "1" : "0"};
    struct call *call = call_new(q, arg);
    if (!call) return -1;
    call->done = on_user_reply;
    call->cb.user = cb;
    return fcall(call, "auth_begin", false, 3, keys, 4, args, NULL);
}

int queue_auth_uncount(queue_t *q, const char *client, queue_status_cb cb, void *arg)
{
    char fails[200];
    fail_key(fails, client);
    const char *keys[] = {fails};
    return fcall_status(q, "auth_uncount", 1, keys, 0, NULL, NULL, cb, arg);
}

/* ---- administration ---- */

int queue_admin_user_set(queue_admin_t *a, const char *name, const char *hash, const char *cram,
                         char *err, size_t errlen)
{
    /* MULTI/EXEC: a user is never seen with a new hash and an old secret. */
    const char *exec[] = {"EXEC"};
    const char *set[] = {"HSET", USERS_KEY, name, hash};
    const char *set_cram[] = {"HSET", CRAM_KEY, name, cram ? cram : ""};
    const char *del_cram[] = {"HDEL", CRAM_KEY, name};
    if (queue_admin_multi(a, USERS_KEY, err, errlen) < 0) return -1;
    int rc = queue_admin_run(a, err, errlen, 4, set);
    if (rc == 0)
        rc = cram ? queue_admin_run(a, err, errlen, 4, set_cram)
                  : queue_admin_run(a, err, errlen, 3, del_cram);
    if (queue_admin_run(a, err, errlen, 1, exec) < 0) rc = -1;
    return rc;
}

int queue_admin_user_delete(queue_admin_t *a, const char *name, char *err, size_t errlen)
{
    const char *del[] = {"HDEL", USERS_KEY, name}, *del_cram[] = {"HDEL", CRAM_KEY, name};
    redisReply *r = queue_admin_command(a, err, errlen, 3, del);
    if (!r) return -1;
    int found = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    return queue_admin_run(a, err, errlen, 3, del_cram) < 0 ? -1 : found;
}

static int compare_names(const void *x, const void *y)
{
    const redisReply *a = *(const redisReply *const *)x, *b = *(const redisReply *const *)y;
    return strcmp(a->str, b->str);
}

int queue_admin_user_list(queue_admin_t *a, buf_t *out, char *err, size_t errlen)
{
    const char *keys[] = {"HKEYS", USERS_KEY}, *cram[] = {"HKEYS", CRAM_KEY};
    redisReply *users = queue_admin_command(a, err, errlen, 2, keys);
    redisReply *crams = users ? queue_admin_command(a, err, errlen, 2, cram) : NULL;
    int rc = -1;
    if (users && crams && users->type == REDIS_REPLY_ARRAY && crams->type == REDIS_REPLY_ARRAY) {
        if (users->elements) /* an empty reply has no array at all */
            qsort(users->element, users->elements, sizeof(redisReply *), compare_names);
        rc = 0;
        for (size_t i = 0; i < users->elements && rc == 0; i++) {
            bool has_cram = false;
            for (size_t j = 0; j < crams->elements; j++)
                has_cram |= !strcmp(crams->element[j]->str, users->element[i]->str);
            rc = buf_printf(out, "%s%s\n", users->element[i]->str, has_cram ? " cram-md5" : "");
        }
    }
    freeReplyObject(users);
    freeReplyObject(crams);
    return rc;
}
