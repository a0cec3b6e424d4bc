/* SMTP AUTH, offered only under TLS. The user's record comes from Redis,
 * so every node sees the same users; the argon2id check runs in the libuv
 * thread pool, as it takes tens of milliseconds of CPU and 64 MiB by design.
 * Failed logins are counted per client address in Redis, across all nodes,
 * and past auth_fail_limit in auth_fail_window the client is turned away
 * before any check is made. */
#include "ingress/auth.h"

#include "ingress/policy.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SECRET_MAX 1024 /* a password, or a CRAM-MD5 digest */
/* Password checks at once per node: the libuv pool has 4 threads by default. */
#define AUTH_MAX_VERIFYING 8

static const char *const mechanisms[] = {"PLAIN", "LOGIN", "CRAM-MD5"};
#define N_MECHANISMS (sizeof mechanisms / sizeof mechanisms[0])

/* Whether the word, case-insensitive, is in the configured list. */
static bool enabled(const config_t *cfg, const char *mech, size_t len)
{
    const char *p = cfg->ingress.auth_mechanisms;
    while (*p) {
        size_t n = strcspn(p, " ,");
        if (n == len && !strncasecmp(p, mech, len)) return true;
        p += n;
        p += strspn(p, " ,");
    }
    return false;
}

int auth_check_config(const config_t *cfg, char *err, size_t errlen)
{
    const char *p = cfg->ingress.auth_mechanisms + strspn(cfg->ingress.auth_mechanisms, " ,");
    while (*p) {
        size_t n = strcspn(p, " ,");
        bool known = false;
        for (size_t i = 0; i < N_MECHANISMS; i++)
            known |= strlen(mechanisms[i]) == n && !strncasecmp(p, mechanisms[i], n);
        if (!known) {
            snprintf(err, errlen,
                     "[ingress] auth_mechanisms: '%.*s' is not one of PLAIN, LOGIN, "
                     "CRAM-MD5",
                     (int)n, p);
            return -1;
        }
        p += n;
        p += strspn(p, " ,");
    }
    return 0;
}

void auth_keyword(const config_t *cfg, char *out, size_t len)
{
    char line[64] = "";
    for (size_t i = 0; i < N_MECHANISMS; i++)
        if (enabled(cfg, mechanisms[i], strlen(mechanisms[i])))
            snprintf(line + strlen(line), sizeof line - strlen(line), " %s", mechanisms[i]);
    snprintf(out, len, "%s%s", line[0] ? "AUTH" : "", line);
}

/* The mechanism's length in "MECH [initial-response]". */
static size_t mechanism_length(const char *args, size_t len)
{
    const char *space = memchr(args, ' ', len);
    return space ? (size_t)(space - args) : len;
}

const char *auth_refusal(const config_t *cfg, bool secure, bool authenticated, bool in_mail,
                         bool esmtp, const char *args, size_t len)
{
    size_t n = mechanism_length(args, len);
    if (!secure) /* RFC 4954 §4: 538 for a mechanism that needs encryption */
        return "538 5.7.11 Encryption required for requested authentication mechanism";
    if (authenticated) return "503 5.5.1 Error: already authenticated";
    if (in_mail) return "503 5.5.1 Error: AUTH not permitted during a mail transaction";
    if (!esmtp) return "503 5.5.1 Error: send EHLO first";
    if (n == 0 || !enabled(cfg, args, n)) return "504 5.5.4 Unrecognized authentication type";
    return NULL;
}

const char *auth_verdict_reply(enum auth_result result)
{
    static const char *const replies[AUTH_RESULTS] = {
        [AUTH_OK] = "235 2.7.0 Authentication successful",
        [AUTH_FAILED] = "535 5.7.8 Authentication credentials invalid",
        [AUTH_RATE_LIMITED] =
            "454 4.7.0 Temporary authentication failure: too many failed logins, try later",
        [AUTH_UNAVAILABLE] = "454 4.7.0 Temporary authentication failure",
    };
    return replies[result];
}

/* ---- the check ---- */

/* The credentials being checked, handed to the thread pool and back. */
struct attempt {
    uv_work_t work;
    auth_exchange_t *a;
    char hash[PASSWORD_HASH_MAX];
    char secret[SECRET_MAX]; /* the password, or the CRAM-MD5 digest */
    size_t secret_len;
    bool cram;
    bool ok;
    bool tampered; /* the user's tag did not hold: checked against no hash at all */
};

static void attempt_free(struct attempt *at)
{
    sodium_memzero(at, sizeof *at);
    free(at);
}

static void on_uncounted(int status, const char *err, void *arg)
{
    (void)arg;
    if (status < 0) log_warn("event=auth_count_failed error=\"%s\"", err);
}

/* Takes this attempt back from its client's count. */
static void uncount(const auth_exchange_t *a)
{
    char key[64];
    policy_client_key(a->peer, key);
    queue_auth_uncount(a->ingress->queue, key, on_uncounted, NULL);
}

/* The verdict: logged, counted, told. A failed attempt stays counted
 * (auth_begin's call counted it); a good one is taken back. why, for the
 * log, says what made a temporary failure. */
static void finish(auth_exchange_t *a, enum auth_result result, const char *why)
{
    char safe[LOG_SAFE_MAX];
    log_info("event=auth client=%s user=%s result=%s%s%s", a->peer, log_addr(a->login, safe),
             result == AUTH_OK ? "ok" : "failed", why ? " reason=" : "", why ? why : "");
    if (result == AUTH_OK) uncount(a);
    metric_add(a->ingress->metrics.auth[result], 1);
    if (result != AUTH_OK) a->login[0] = 0;
    a->done(a->arg, result);
}

static void verify_in_thread(uv_work_t *work)
{
    struct attempt *at = work->data;
    at->ok = password_verify(at->hash, at->secret, at->secret_len);
}

static void after_verify(uv_work_t *work, int status)
{
    struct attempt *at = work->data;
    auth_exchange_t *a = at->a;
    bool ok = status == 0 && at->ok && !at->tampered;
    bool tampered = at->tampered;
    attempt_free(at);
    a->ingress->verifying--;
    finish(a, ok ? AUTH_OK : AUTH_FAILED, tampered ? "tampered" : NULL);
}

/* Whether the stored secret (the hash, or with cram the CRAM-MD5 secret) of
 * a user who exists carries the tag `sealpost users` made (issue 18): a user
 * added or changed in Redis by hand has none that holds, and logs in as an
 * unknown one would not. Logged once per attempt. */
static bool user_tampered(const auth_exchange_t *a, const queue_user_t *user, bool cram)
{
    const char *secret = cram ? user->cram : user->hash;
    if (!secret[0]) return false; /* no such user, or no secret: fails as it is */
    keydir_item_t it = {.kind = cram ? KEYDIR_ITEM_CRAM : KEYDIR_ITEM_USER,
                        .name = a->login,
                        .data = secret,
                        .len = strlen(secret)};
    const char *tag = cram ? user->cram_tag : user->hash_tag;
    int v = tag[0] ? keydir_item_verify(a->ingress->seal, &it, tag) : 0;
    if (v == 1) return false;
    char safe[LOG_SAFE_MAX];
    log_warn("event=user_tampered client=%s user=%s why=%s", a->peer, log_addr(a->login, safe),
             !tag[0]  ? "no_tag"
             : v == 0 ? "tag_bad"
                      : "tag_key_unknown");
    return true;
}

/* The user's record is in: the CRAM-MD5 digest is checked here (an HMAC is
 * cheap), a password in the thread pool. An unknown user is checked against
 * a hash nobody matches, so the reply takes as long as for a known one; so
 * is a user whose record fails its tag. */
static void on_user(int status, const char *err, const queue_user_t *user, void *arg)
{
    struct attempt *at = arg;
    auth_exchange_t *a = at->a;
    ingress_t *ingress = a->ingress;
    const char *why = NULL;
    enum auth_result result = AUTH_UNAVAILABLE;
    if (status < 0) {
        log_warn("event=auth_lookup_failed client=%s error=\"%s\"", a->peer, err);
        why = "redis";
    } else if (user->attempts >= (long long)ingress->cfg->ingress.auth_fail_limit) {
        result = AUTH_RATE_LIMITED;
        why = "rate_limited";
    } else if (at->cram) {
        char expected[33];
        bool tampered = user_tampered(a, user, true);
        password_cram_md5(user->cram, strlen(user->cram), a->challenge, strlen(a->challenge),
                          expected);
        result = !tampered && user->cram[0] && expected[0] && password_equal(expected, at->secret)
                     ? AUTH_OK
                     : AUTH_FAILED;
        if (tampered) why = "tampered";
    } else if (ingress->verifying >= AUTH_MAX_VERIFYING) {
        /* Each check holds 64 MiB and a pool thread for tens of ms: past a
         * few at once, more would only queue up and starve the others. */
        uncount(a);
        why = "busy";
    } else {
        at->tampered = user_tampered(a, user, false);
        snprintf(at->hash, sizeof at->hash, "%s",
                 user->hash[0] && !at->tampered ? user->hash : password_dummy_hash());
        at->work.data = at;
        if (uv_queue_work(ingress->loop, &at->work, verify_in_thread, after_verify) == 0) {
            ingress->verifying++;
            return;
        }
        uncount(a);
        why = "thread_pool";
    }
    attempt_free(at);
    finish(a, result, why);
}

/* Starts checking the login with secret; the verdict comes to done. */
static enum auth_next check_credentials(auth_exchange_t *a, const char *login, size_t login_len,
                                        const char *secret, size_t secret_len, bool cram,
                                        char *reply, size_t replylen)
{
    if (login_len == 0 || login_len >= sizeof a->login || secret_len >= SECRET_MAX) {
        snprintf(reply, replylen, "%s", auth_verdict_reply(AUTH_FAILED));
        return AUTH_REPLY;
    }
    struct attempt *at = calloc(1, sizeof *at);
    if (!at) {
        snprintf(reply, replylen, "%s", auth_verdict_reply(AUTH_UNAVAILABLE));
        return AUTH_REPLY;
    }
    memmove(a->login, login, login_len); /* login may be a->login itself (LOGIN) */
    a->login[login_len] = 0;
    memcpy(at->secret, secret, secret_len);
    at->secret_len = secret_len;
    at->cram = cram;
    at->a = a;
    char key[64];
    policy_client_key(a->peer, key);
    const config_t *cfg = a->ingress->cfg;
    queue_login_t spec = {.name = a->login,
                          .client = key,
                          .limit = cfg->ingress.auth_fail_limit,
                          .window_s = cfg->ingress.auth_fail_window,
                          .want_cram = cram};
    if (!queue_ready(a->ingress->queue) ||
        queue_auth_begin(a->ingress->queue, &spec, on_user, at) < 0) {
        attempt_free(at);
        finish(a, AUTH_UNAVAILABLE, "redis");
    }
    return AUTH_CHECKING;
}

/* ---- the exchange ---- */

/* Base64 (RFC 4648, as RFC 4954 §4 uses it) into out; -1 when malformed. */
static long decode64(const char *in, size_t len, char *out, size_t size)
{
    size_t n;
    if (sodium_base642bin((unsigned char *)out, size - 1, in, len, NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return -1;
    out[n] = 0;
    return (long)n;
}

static enum auth_next challenge(auth_exchange_t *a, enum auth_step next, const char *text,
                                char *reply, size_t replylen)
{
    char b64[sodium_base64_ENCODED_LEN(sizeof a->challenge, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, (const unsigned char *)text, strlen(text),
                      sodium_base64_VARIANT_ORIGINAL);
    a->step = next;
    snprintf(reply, replylen, "334 %s", b64);
    return AUTH_ANSWER;
}

static enum auth_next refuse(char *reply, size_t replylen, const char *text)
{
    snprintf(reply, replylen, "%s", text);
    return AUTH_REPLY;
}

/* RFC 4616: [authzid] NUL authcid NUL passwd. Acting for someone else
 * (an authzid other than the authcid) is not offered. */
static enum auth_next plain_response(auth_exchange_t *a, const char *data, size_t len, char *reply,
                                     size_t replylen)
{
    const char *nul1 = memchr(data, 0, len);
    const char *nul2 = nul1 ? memchr(nul1 + 1, 0, len - (size_t)(nul1 + 1 - data)) : NULL;
    if (!nul2) return refuse(reply, replylen, "501 5.5.2 Malformed PLAIN response");
    const char *user = nul1 + 1;
    size_t user_len = (size_t)(nul2 - user), authz_len = (size_t)(nul1 - data);
    if (authz_len && (authz_len != user_len || memcmp(data, user, user_len)))
        return refuse(reply, replylen, auth_verdict_reply(AUTH_FAILED));
    return check_credentials(a, user, user_len, nul2 + 1, len - (size_t)(nul2 + 1 - data), false,
                             reply, replylen);
}

/* "user SP digest" (RFC 2195 §2). */
static enum auth_next cram_response(auth_exchange_t *a, const char *data, size_t len, char *reply,
                                    size_t replylen)
{
    const char *space = memrchr(data, ' ', len);
    if (!space || (size_t)(data + len - space - 1) != 32)
        return refuse(reply, replylen, "501 5.5.2 Malformed CRAM-MD5 response");
    return check_credentials(a, data, (size_t)(space - data), space + 1, 32, true, reply, replylen);
}

/* One decoded response, by the step it answers. */
static enum auth_next respond(auth_exchange_t *a, enum auth_step step, const char *data, size_t n,
                              char *reply, size_t replylen)
{
    switch (step) {
    case AUTH_PLAIN:
        return plain_response(a, data, n, reply, replylen);
    case AUTH_LOGIN_USER:
        if (n >= sizeof a->login || memchr(data, 0, n))
            return refuse(reply, replylen, "501 5.5.2 Malformed user name");
        memcpy(a->login, data, n + 1);
        return challenge(a, AUTH_LOGIN_PASSWORD, "Password:", reply, replylen);
    case AUTH_LOGIN_PASSWORD:
        return check_credentials(a, a->login, strlen(a->login), data, n, false, reply, replylen);
    case AUTH_CRAM:
        return cram_response(a, data, n, reply, replylen);
    case AUTH_IDLE:
        break;
    }
    return refuse(reply, replylen, "501 5.5.2 Cannot decode the response");
}

enum auth_next auth_answer(auth_exchange_t *a, const char *line, size_t len, char *reply,
                           size_t replylen)
{
    enum auth_step step = a->step;
    a->step = AUTH_IDLE;
    if (len == 1 && line[0] == '*')
        return refuse(reply, replylen, "501 5.7.0 Authentication cancelled");
    char data[SECRET_MAX + 600];
    long n = decode64(line, len, data, sizeof data);
    enum auth_next next = n < 0 ? refuse(reply, replylen, "501 5.5.2 Cannot decode the response")
                                : respond(a, step, data, (size_t)n, reply, replylen);
    sodium_memzero(data, sizeof data);
    return next;
}

enum auth_next auth_begin(auth_exchange_t *a, const char *args, size_t len, char *reply,
                          size_t replylen)
{
    size_t mech_len = mechanism_length(args, len);
    const char *initial = mech_len < len ? args + mech_len + 1 : NULL;
    size_t initial_len = initial ? len - mech_len - 1 : 0;
    if (!strncasecmp(args, "PLAIN", mech_len)) {
        if (!initial) {
            a->step = AUTH_PLAIN;
            snprintf(reply, replylen, "334 ");
            return AUTH_ANSWER;
        }
        if (initial_len == 1 && initial[0] == '=') /* RFC 4954 §4: empty */
            return plain_response(a, "", 0, reply, replylen);
        a->step = AUTH_PLAIN;
        return auth_answer(a, initial, initial_len, reply, replylen);
    }
    if (!strncasecmp(args, "LOGIN", mech_len)) {
        if (!initial) return challenge(a, AUTH_LOGIN_USER, "Username:", reply, replylen);
        a->step = AUTH_LOGIN_USER;
        return auth_answer(a, initial, initial_len, reply, replylen);
    }
    /* CRAM-MD5 starts with the server's challenge */
    if (initial) return refuse(reply, replylen, "501 5.5.4 CRAM-MD5 takes no initial response");
    unsigned char nonce[12];
    char hex[sizeof nonce * 2 + 1];
    randombytes_buf(nonce, sizeof nonce);
    sodium_bin2hex(hex, sizeof hex, nonce, sizeof nonce);
    snprintf(a->challenge, sizeof a->challenge, "<%s@%s>", hex, a->ingress->cfg->ingress.hostname);
    return challenge(a, AUTH_CRAM, a->challenge, reply, replylen);
}
