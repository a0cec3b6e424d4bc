/* What MAIL, RCPT and BDAT take beyond the path: the ESMTP parameters the
 * server offers (SIZE, RFC 1870; BODY, RFC 6152; SMTPUTF8, RFC 6531; RET,
 * ENVID, NOTIFY, ORCPT, RFC 3461; AUTH, RFC 4954) and BDAT's chunk size
 * (RFC 3030). Each refusal comes with the reply a server gives for it, so
 * the session only has to send it. */
#include "proto/proto.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* 1*20DIGIT, as RFC 1870's size-value and RFC 3030's chunk-size; a value
 * past the range saturates. */
static bool parse_number(const char *p, size_t len, unsigned long long *out)
{
    if (len == 0 || len > 20) return false;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return false;
        unsigned digit = (unsigned)(p[i] - '0');
        v = v > (ULLONG_MAX - digit) / 10 ? ULLONG_MAX : v * 10 + digit;
    }
    *out = v;
    return true;
}

static bool param_is(const proto_param_t *p, const char *key)
{
    return p->key_len == strlen(key) && !strncasecmp(p->key, key, p->key_len);
}

static bool value_is(const proto_param_t *p, const char *value)
{
    return p->value && p->value_len == strlen(value) && !strncasecmp(p->value, value, p->value_len);
}

/* Appends " KEY=value" (or "KEY" when value is NULL) to a parameter list. */
static void params_add(char *list, size_t size, const char *key, const char *value,
                       size_t value_len)
{
    size_t used = strlen(list);
    snprintf(list + used, size - used, "%s%s%s%.*s", used ? " " : "", key, value ? "=" : "",
             value ? (int)value_len : 0, value ? value : "");
}

static int refuse(char *reply, size_t len, int code, const char *text)
{
    snprintf(reply, len, "%d %s", code, text);
    return code;
}

int proto_params_unique(const proto_path_t *path, char *reply, size_t len)
{
    for (unsigned i = 0; i < path->n_params; i++)
        for (unsigned j = 0; j < i; j++)
            if (path->params[i].key_len == path->params[j].key_len &&
                !strncasecmp(path->params[i].key, path->params[j].key, path->params[i].key_len)) {
                snprintf(reply, len, "501 5.5.4 Duplicate %.*s parameter",
                         (int)path->params[i].key_len, path->params[i].key);
                return 501;
            }
    return 0;
}

static int unsupported(const proto_param_t *p, char *reply, size_t len)
{
    snprintf(reply, len, "555 5.5.4 Unsupported parameter %.*s", (int)p->key_len, p->key);
    return 555;
}

/* One MAIL parameter into out; 0, or the refusal's code with its reply. */
static int mail_param(const proto_param_t *p, unsigned long long max_size, bool auth_ok,
                      proto_mail_params_t *out, char *reply, size_t len)
{
    unsigned long long size;
    if (param_is(p, "SIZE")) {
        if (!p->value || !parse_number(p->value, p->value_len, &size))
            return refuse(reply, len, 501, "5.5.4 Bad SIZE parameter");
        if (size > max_size)
            return refuse(reply, len, 552, "5.3.4 Message size exceeds fixed limit");
    } else if (param_is(p, "BODY")) {
        if (!value_is(p, "7BIT") && !value_is(p, "8BITMIME"))
            return refuse(reply, len, 501, "5.5.4 BODY takes 7BIT or 8BITMIME");
        out->body_8bit = value_is(p, "8BITMIME");
    } else if (param_is(p, "SMTPUTF8")) {
        if (p->value) return refuse(reply, len, 501, "5.5.4 SMTPUTF8 takes no value");
        out->smtputf8 = true;
    } else if (param_is(p, "RET")) {
        if (!value_is(p, "FULL") && !value_is(p, "HDRS"))
            return refuse(reply, len, 501, "5.5.4 RET takes FULL or HDRS");
        params_add(out->stored, sizeof out->stored, "RET", value_is(p, "FULL") ? "FULL" : "HDRS",
                   4);
    } else if (param_is(p, "AUTH") && auth_ok) {
        /* RFC 4954 §5: who submitted it, as a relay passes it on; we take
         * nobody's word for that and keep nothing of it. */
        if (!p->value || (!value_is(p, "<>") && !proto_xtext_valid(p->value, p->value_len)))
            return refuse(reply, len, 501, "5.5.4 AUTH takes <> or an xtext mailbox");
    } else if (param_is(p, "ENVID")) {
        if (!p->value || p->value_len > PROTO_ENVID_MAX ||
            !proto_xtext_valid(p->value, p->value_len))
            return refuse(reply, len, 501, "5.5.4 ENVID takes up to 100 octets of xtext");
        params_add(out->stored, sizeof out->stored, "ENVID", p->value, p->value_len);
    } else {
        return unsupported(p, reply, len);
    }
    return 0;
}

int proto_mail_params(const proto_path_t *path, unsigned long long max_size, bool auth_ok,
                      proto_mail_params_t *out, char *reply, size_t len)
{
    memset(out, 0, sizeof *out);
    /* Once each: so the stored list always has room for all of it, and is
     * never cut short. */
    int code = proto_params_unique(path, reply, len);
    for (unsigned i = 0; i < path->n_params && !code; i++)
        code = mail_param(&path->params[i], max_size, auth_ok, out, reply, len);
    if (code) return code;
    if (out->body_8bit) params_add(out->stored, sizeof out->stored, "BODY", "8BITMIME", 8);
    if (out->smtputf8) params_add(out->stored, sizeof out->stored, "SMTPUTF8", NULL, 0);
    return 0;
}

/* NOTIFY's words in a fixed order, whatever order and case they came in. */
static void notify_words(int notify, char words[32])
{
    static const char *const names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
    words[0] = 0;
    for (unsigned b = 0; b < 4; b++)
        if (notify & (1 << b))
            snprintf(words + strlen(words), 32 - strlen(words), "%s%s", words[0] ? "," : "",
                     names[b]);
}

int proto_rcpt_params(const proto_path_t *path, bool smtputf8, char dsn[PROTO_RCPT_PARAMS_MAX],
                      char *reply, size_t len)
{
    dsn[0] = 0;
    int code = proto_params_unique(path, reply, len); /* as for MAIL */
    for (unsigned i = 0; i < path->n_params && !code; i++) {
        const proto_param_t *p = &path->params[i];
        if (param_is(p, "NOTIFY")) {
            int notify = p->value ? proto_dsn_notify(p->value, p->value_len) : -1;
            if (notify < 0)
                return refuse(reply, len, 501,
                              "5.5.4 NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY");
            char words[32];
            notify_words(notify, words);
            params_add(dsn, PROTO_RCPT_PARAMS_MAX, "NOTIFY", words, strlen(words));
        } else if (param_is(p, "ORCPT")) {
            if (!p->value || !proto_dsn_orcpt_valid(p->value, p->value_len, smtputf8))
                return refuse(reply, len, 501, "5.5.4 ORCPT takes addr-type;xtext");
            params_add(dsn, PROTO_RCPT_PARAMS_MAX, "ORCPT", p->value, p->value_len);
        } else {
            code = unsupported(p, reply, len);
        }
    }
    return code;
}

bool proto_bdat_args(const char *args, size_t len, unsigned long long *size, bool *last)
{
    const char *space = memchr(args, ' ', len);
    size_t digits = space ? (size_t)(space - args) : len;
    *last = space && len - digits == 5 && !strncasecmp(space + 1, "LAST", 4);
    return parse_number(args, digits, size) && (!space || *last);
}
