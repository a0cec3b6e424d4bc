/* SMTP AUTH (RFC 4954) with PLAIN (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195),
 * offered only under TLS. The user's record comes from Redis, so every node
 * sees the same users; the argon2id check runs in the libuv thread pool, as
 * it takes tens of milliseconds of CPU and 64 MiB by design. Failed logins
 * are counted per client address in Redis, across all nodes, and past
 * auth_fail_limit in auth_fail_window the client is turned away before any
 * check is made. The session is busy from the lookup to the reply, so
 * pipelined input waits, as it does for a message being stored. */
#include "crypto/crypto.h"
#include "ingress/session.h"

#include <arpa/inet.h>
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

void auth_advertise(session_t *s)
{
    if (!session_secure(s) || s->authenticated) return;
    char line[64] = "";
    for (size_t i = 0; i < N_MECHANISMS; i++)
        if (enabled(s->cfg, mechanisms[i], strlen(mechanisms[i])))
            snprintf(line + strlen(line), sizeof line - strlen(line), " %s", mechanisms[i]);
    if (line[0]) session_reply(s, "250-AUTH%s", line);
}

/* ---- the exchange ---- */

/* The credentials being checked, handed to the thread pool and back. */
struct attempt {
    uv_work_t work;
    session_t *s;
    char hash[PASSWORD_HASH_MAX];
    char secret[SECRET_MAX]; /* the password, or the CRAM-MD5 digest */
    size_t secret_len;
    bool cram;
    bool ok;
};

static void attempt_free(struct attempt *a)
{
    sodium_memzero(a, sizeof *a);
    free(a);
}

/* Whose attempts count together: an IPv4 address, or an IPv6 /64 (one
 * host can have all of its /64, and would otherwise get a fresh count per
 * address). */
static void attempts_key(const session_t *s, char out[64])
{
    unsigned char addr[16];
    if (inet_pton(AF_INET6, s->peer, addr) != 1) {
        snprintf(out, 64, "%s", s->peer);
        return;
    }
    memset(addr + 8, 0, 8);
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, addr, text, sizeof text);
    snprintf(out, 64, "%s/64", text);
}

static void on_uncounted(int status, const char *err, void *arg)
{
    (void)arg;
    if (status < 0) log_warn("event=auth_count_failed error=\"%s\"", err);
}

/* Takes this session's attempt back from its client's count. */
static void uncount(session_t *s)
{
    char key[64];
    attempts_key(s, key);
    queue_auth_uncount(s->ingress->queue, key, on_uncounted, NULL);
}

/* Ends the exchange with the verdict, and reads on. A failed attempt
 * stays counted (auth_begin counted it); a good one is taken back. why, for
 * the log, says what made a temporary failure. */
static void finish(session_t *s, enum auth_result result, const char *why)
{
    static const char *const replies[AUTH_RESULTS] = {
        [AUTH_OK] = "235 2.7.0 Authentication successful",
        [AUTH_FAILED] = "535 5.7.8 Authentication credentials invalid",
        [AUTH_RATE_LIMITED] =
            "454 4.7.0 Temporary authentication failure: too many failed logins, try later",
        [AUTH_UNAVAILABLE] = "454 4.7.0 Temporary authentication failure",
    };
    s->busy = false;
    char safe[LOG_SAFE_MAX];
    log_info("event=auth client=%s user=%s result=%s%s%s", s->peer, log_addr(s->login, safe),
             result == AUTH_OK ? "ok" : "failed", why ? " reason=" : "", why ? why : "");
    if (result == AUTH_OK) uncount(s);
    metric_add(s->ingress->metrics.auth[result], 1);
    if (s->closed) {
        session_maybe_free(s);
        return;
    }
    s->authenticated = result == AUTH_OK;
    if (!s->authenticated) s->login[0] = 0;
    session_reply(s, "%s", replies[result]);
    session_process(s);
}

static void verify_in_thread(uv_work_t *work)
{
    struct attempt *a = work->data;
    a->ok = password_verify(a->hash, a->secret, a->secret_len);
}

static void after_verify(uv_work_t *work, int status)
{
    struct attempt *a = work->data;
    session_t *s = a->s;
    bool ok = status == 0 && a->ok;
    attempt_free(a);
    s->ingress->verifying--;
    finish(s, ok ? AUTH_OK : AUTH_FAILED, NULL);
}

/* The user's record is in: the CRAM-MD5 digest is checked here (an HMAC is
 * cheap), a password in the thread pool. An unknown user is checked against
 * a hash nobody matches, so the reply takes as long as for a known one. */
static void on_user(int status, const char *err, const queue_user_t *user, void *arg)
{
    struct attempt *a = arg;
    session_t *s = a->s;
    if (status < 0) {
        log_warn("event=auth_lookup_failed client=%s error=\"%s\"", s->peer, err);
        attempt_free(a);
        finish(s, AUTH_UNAVAILABLE, "redis");
        return;
    }
    if (user->attempts >= (long long)s->cfg->ingress.auth_fail_limit) {
        attempt_free(a);
        finish(s, AUTH_RATE_LIMITED, "rate_limited");
        return;
    }
    /* Each check holds 64 MiB and a pool thread for tens of ms: past a few
     * at once, more would only queue up and starve the others. */
    if (!a->cram && s->ingress->verifying >= AUTH_MAX_VERIFYING) {
        attempt_free(a);
        uncount(s);
        finish(s, AUTH_UNAVAILABLE, "busy");
        return;
    }
    if (a->cram) {
        char expected[33];
        password_cram_md5(user->cram, strlen(user->cram), s->challenge, strlen(s->challenge),
                          expected);
        bool ok = user->cram[0] && expected[0] && password_equal(expected, a->secret);
        attempt_free(a);
        finish(s, ok ? AUTH_OK : AUTH_FAILED, NULL);
        return;
    }
    snprintf(a->hash, sizeof a->hash, "%s", user->hash[0] ? user->hash : password_dummy_hash());
    a->work.data = a;
    if (uv_queue_work(s->ingress->loop, &a->work, verify_in_thread, after_verify) < 0) {
        attempt_free(a);
        uncount(s);
        finish(s, AUTH_UNAVAILABLE, "thread_pool");
        return;
    }
    s->ingress->verifying++;
}

/* Starts checking login with secret; the reply comes from finish(). */
static void check_credentials(session_t *s, const char *login, size_t login_len, const char *secret,
                              size_t secret_len, bool cram)
{
    if (login_len == 0 || login_len >= sizeof s->login || secret_len >= SECRET_MAX) {
        session_reply(s, "535 5.7.8 Authentication credentials invalid");
        return;
    }
    struct attempt *a = calloc(1, sizeof *a);
    if (!a) {
        session_reply(s, "454 4.7.0 Temporary authentication failure");
        return;
    }
    memcpy(s->login, login, login_len);
    s->login[login_len] = 0;
    memcpy(a->secret, secret, secret_len);
    a->secret_len = secret_len;
    a->cram = cram;
    a->s = s;
    s->busy = true;
    char key[64];
    attempts_key(s, key);
    queue_login_t login_spec = {.name = s->login,
                                .client = key,
                                .limit = s->cfg->ingress.auth_fail_limit,
                                .window_s = s->cfg->ingress.auth_fail_window,
                                .want_cram = cram};
    if (!queue_ready(s->ingress->queue) ||
        queue_auth_begin(s->ingress->queue, &login_spec, on_user, a) < 0) {
        attempt_free(a);
        finish(s, AUTH_UNAVAILABLE, "redis");
    }
}

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

static void challenge(session_t *s, enum auth_step next, const char *text)
{
    char b64[sodium_base64_ENCODED_LEN(sizeof s->challenge, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, (const unsigned char *)text, strlen(text),
                      sodium_base64_VARIANT_ORIGINAL);
    s->auth_step = next;
    session_reply(s, "334 %s", b64);
}

/* RFC 4616: [authzid] NUL authcid NUL passwd. Acting for someone else
 * (an authzid other than the authcid) is not offered. */
static void plain_response(session_t *s, const char *data, size_t len)
{
    const char *nul1 = memchr(data, 0, len);
    const char *nul2 = nul1 ? memchr(nul1 + 1, 0, len - (size_t)(nul1 + 1 - data)) : NULL;
    if (!nul2) {
        session_reply(s, "501 5.5.2 Malformed PLAIN response");
        return;
    }
    const char *user = nul1 + 1;
    size_t user_len = (size_t)(nul2 - user), authz_len = (size_t)(nul1 - data);
    if (authz_len && (authz_len != user_len || memcmp(data, user, user_len))) {
        session_reply(s, "535 5.7.8 Authentication credentials invalid");
        return;
    }
    check_credentials(s, user, user_len, nul2 + 1, len - (size_t)(nul2 + 1 - data), false);
}

/* "user SP digest" (RFC 2195 §2). */
static void cram_response(session_t *s, const char *data, size_t len)
{
    const char *space = memrchr(data, ' ', len);
    if (!space || (size_t)(data + len - space - 1) != 32) {
        session_reply(s, "501 5.5.2 Malformed CRAM-MD5 response");
        return;
    }
    check_credentials(s, data, (size_t)(space - data), space + 1, 32, true);
}

/* One response line: "*" cancels (RFC 4954 §4); otherwise base64. */
void auth_continue(session_t *s, const char *line, size_t len)
{
    enum auth_step step = s->auth_step;
    s->auth_step = AUTH_IDLE;
    char data[SECRET_MAX + 600];
    long n = -1;
    if (len == 1 && line[0] == '*') {
        session_reply(s, "501 5.7.0 Authentication cancelled");
        return;
    }
    n = decode64(line, len, data, sizeof data);
    if (n < 0) {
        session_reply(s, "501 5.5.2 Cannot decode the response");
        return;
    }
    switch (step) {
    case AUTH_PLAIN:
        plain_response(s, data, (size_t)n);
        break;
    case AUTH_LOGIN_USER:
        if ((size_t)n >= sizeof s->login || memchr(data, 0, (size_t)n)) {
            session_reply(s, "501 5.5.2 Malformed user name");
            break;
        }
        memcpy(s->login, data, (size_t)n + 1);
        challenge(s, AUTH_LOGIN_PASSWORD, "Password:");
        break;
    case AUTH_LOGIN_PASSWORD: {
        char user[sizeof s->login];
        memcpy(user, s->login, sizeof user);
        check_credentials(s, user, strlen(user), data, (size_t)n, false);
        break;
    }
    case AUTH_CRAM:
        cram_response(s, data, (size_t)n);
        break;
    case AUTH_IDLE:
        break;
    }
    sodium_memzero(data, sizeof data);
}

/* ---- the command ---- */

/* The mechanism's length in "MECH [initial-response]". */
static size_t mechanism_length(const proto_command_t *cmd)
{
    const char *space = memchr(cmd->args, ' ', cmd->args_len);
    return space ? (size_t)(space - cmd->args) : cmd->args_len;
}

bool auth_check(session_t *s, const proto_command_t *cmd)
{
    size_t mech_len = mechanism_length(cmd);
    if (!session_secure(s)) { /* RFC 4954 §4: 538 for a mechanism that needs encryption */
        session_reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return false;
    }
    if (s->authenticated) {
        session_reply(s, "503 5.5.1 Error: already authenticated");
        return false;
    }
    if (s->in_mail) {
        session_reply(s, "503 5.5.1 Error: AUTH not permitted during a mail transaction");
        return false;
    }
    if (!s->esmtp) {
        session_reply(s, "503 5.5.1 Error: send EHLO first");
        return false;
    }
    if (mech_len == 0 || !enabled(s->cfg, cmd->args, mech_len)) {
        session_reply(s, "504 5.5.4 Unrecognized authentication type");
        return false;
    }
    return true;
}

void auth_proceed(session_t *s, const proto_command_t *cmd)
{
    size_t mech_len = mechanism_length(cmd);
    const char *initial = mech_len < cmd->args_len ? cmd->args + mech_len + 1 : NULL;
    size_t initial_len = initial ? cmd->args_len - mech_len - 1 : 0;
    if (!strncasecmp(cmd->args, "PLAIN", mech_len)) {
        if (!initial) {
            s->auth_step = AUTH_PLAIN;
            session_reply(s, "334 ");
        } else if (initial_len == 1 && initial[0] == '=') { /* RFC 4954 §4: empty */
            plain_response(s, "", 0);
        } else {
            s->auth_step = AUTH_PLAIN;
            auth_continue(s, initial, initial_len);
        }
    } else if (!strncasecmp(cmd->args, "LOGIN", mech_len)) {
        if (initial) {
            s->auth_step = AUTH_LOGIN_USER;
            auth_continue(s, initial, initial_len);
        } else {
            challenge(s, AUTH_LOGIN_USER, "Username:");
        }
    } else if (initial) { /* CRAM-MD5 starts with the server's challenge */
        session_reply(s, "501 5.5.4 CRAM-MD5 takes no initial response");
    } else {
        unsigned char nonce[12];
        char hex[sizeof nonce * 2 + 1];
        randombytes_buf(nonce, sizeof nonce);
        sodium_bin2hex(hex, sizeof hex, nonce, sizeof nonce);
        snprintf(s->challenge, sizeof s->challenge, "<%s@%s>", hex, s->cfg->ingress.hostname);
        challenge(s, AUTH_CRAM, s->challenge);
    }
}
