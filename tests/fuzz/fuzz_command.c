/* libFuzzer target: command lines, paths and parameters (with the checks of
 * MAIL, RCPT and BDAT arguments), reply lines, DSN parameters, PROXY headers
 * and header-field lookups.
 *
 * Beyond "no crash, no out-of-bounds read" (ASan/UBSan), it checks what the
 * parsers promise: arguments point into the line, and a command written out
 * again parses to the same verb and arguments; a parsed path is bounded and
 * well-formed, its address is the path's own text whole (no NUL, nothing cut),
 * and it parses again to itself, parameters included; what MAIL and RCPT
 * store gives back the values they were sent; a PROXY v1 header is printable
 * text whose IPv4 address reads back as it was written; a reply code is in
 * range. A broken promise is a __builtin_trap(). */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static bool within(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && n <= len && (size_t)(p - base) <= len - n;
}

static bool is_postmaster(const char *args, size_t len)
{
    return len >= 12 && !strncasecmp(args, "<Postmaster>", 12);
}

/* The address is what stood between '<' (or a source route's ':') and
 * '>', whole: an embedded NUL would end it early and leave no '>' there. The
 * local part is as sent, the domain the same but for case. */
static void check_own_text(const char *args, size_t len, const proto_path_t *p, size_t n)
{
    size_t start = 1;
    if (args[1] == '@') {
        const char *colon = memchr(args, ':', len);
        CHECK(colon != NULL);
        start = (size_t)(colon - args) + 1;
    }
    CHECK(strlen(p->addr) == n && start + n < len && args[start + n] == '>');
    CHECK(!memcmp(args + start, p->addr, p->at + 1));
    for (size_t i = p->at + 1; i < n; i++) {
        unsigned char a = (unsigned char)args[start + i], b = (unsigned char)p->addr[i];
        CHECK(a == b || (a >= 'A' && a <= 'Z' && a + 32 == b));
    }
}

/* "<addr>" and the parameters written out again, one space apart, parse to
 * the same path. */
static void check_reparse(const proto_path_t *p, enum proto_path_kind kind)
{
    size_t n = strlen(p->addr), size = n + 3;
    for (unsigned i = 0; i < p->n_params; i++)
        size += 2 + p->params[i].key_len + p->params[i].value_len;
    char *text = malloc(size);
    if (!text) abort();
    size_t k = 0;
    text[k++] = '<';
    memcpy(text + k, p->addr, n);
    k += n;
    text[k++] = '>';
    for (unsigned i = 0; i < p->n_params; i++) {
        text[k++] = ' ';
        memcpy(text + k, p->params[i].key, p->params[i].key_len);
        k += p->params[i].key_len;
        if (p->params[i].value) {
            text[k++] = '=';
            memcpy(text + k, p->params[i].value, p->params[i].value_len);
            k += p->params[i].value_len;
        }
    }
    proto_path_t q;
    CHECK(proto_path_parse(text, k, kind, &q) == PROTO_OK);
    CHECK(!strcmp(q.addr, p->addr) && q.at == p->at && q.utf8 == p->utf8 &&
          q.postmaster == p->postmaster && q.n_params == p->n_params);
    for (unsigned i = 0; i < p->n_params; i++) {
        const proto_param_t *a = &p->params[i], *b = &q.params[i];
        CHECK(a->key_len == b->key_len && !memcmp(a->key, b->key, a->key_len));
        CHECK((a->value == NULL) == (b->value == NULL) && a->value_len == b->value_len);
        if (a->value) CHECK(!memcmp(a->value, b->value, a->value_len));
    }
    free(text);
}

static void check_path(const char *args, size_t len, enum proto_path_kind kind)
{
    bool reverse = kind == PROTO_REVERSE_PATH;
    proto_path_t p;
    enum proto_status st = proto_path_parse(args, len, kind, &p);
    CHECK(st == PROTO_OK || st == PROTO_E_PATH || st == PROTO_E_PATH_LENGTH || st == PROTO_E_PARAM);
    if (st != PROTO_OK) {
        if (reverse && !is_postmaster(args, len)) {
            /* apart from <Postmaster>, what a reverse path refuses a forward one refuses too */
            proto_path_t strict;
            CHECK(proto_path_parse(args, len, PROTO_FORWARD_PATH, &strict) != PROTO_OK);
        }
        return;
    }
    CHECK(p.postmaster == (!reverse && is_postmaster(args, len)));

    size_t n = strnlen(p.addr, sizeof p.addr);
    CHECK(n <= PROTO_PATH_MAX);
    bool non_ascii = false;
    for (size_t i = 0; i < n; i++)
        non_ascii |= (unsigned char)p.addr[i] >= 0x80;
    CHECK(non_ascii == p.utf8);
    /* A '>' can only be inside a quoted local part. */
    const char *gt = memchr(p.addr, '>', n);
    CHECK(gt == NULL || (p.addr[0] == '"' && (size_t)(gt - p.addr) < p.at));
    if (p.postmaster) {
        CHECK(!strcmp(p.addr, "Postmaster") && p.at == 0 && proto_path_domain(&p)[0] == 0);
    } else if (n == 0) {
        CHECK(reverse);
        CHECK(p.at == 0);
        CHECK(proto_path_domain(&p)[0] == 0);
    } else {
        CHECK(p.at > 0 && p.at <= 64 && p.at < n - 1);
        CHECK(p.addr[p.at] == '@');
        check_own_text(args, len, &p, n);
        const char *domain = proto_path_domain(&p);
        CHECK(domain == p.addr + p.at + 1);
        CHECK(strlen(domain) <= 255);
        for (const char *d = domain; *d; d++)
            CHECK(!(*d >= 'A' && *d <= 'Z'));
    }

    CHECK(p.n_params <= PROTO_MAX_PARAMS);
    for (unsigned i = 0; i < p.n_params; i++) {
        const proto_param_t *pa = &p.params[i];
        CHECK(pa->key_len > 0 && within(pa->key, pa->key_len, args, len));
        if (pa->value)
            CHECK(pa->value_len > 0 && within(pa->value, pa->value_len, args, len));
        else
            CHECK(pa->value_len == 0);
        char key[64];
        if (pa->key_len < sizeof key) {
            memcpy(key, pa->key, pa->key_len);
            key[pa->key_len] = 0;
            const proto_param_t *found = proto_path_param(&p, key);
            CHECK(found != NULL && found <= pa);
            CHECK(found->key_len == pa->key_len && !strncasecmp(found->key, key, pa->key_len));
        }
    }

    check_reparse(&p, kind);

    /* the normalised address parses again to itself */
    char again[PROTO_PATH_MAX + 3];
    again[0] = '<';
    memcpy(again + 1, p.addr, n);
    again[n + 1] = '>';
    proto_path_t q;
    CHECK(proto_path_parse(again, n + 2, kind, &q) == PROTO_OK);
    CHECK(!strcmp(q.addr, p.addr) && q.at == p.at && q.utf8 == p.utf8 && q.n_params == 0);

    /* apart from <Postmaster>, what a forward path accepts a reverse one accepts alike */
    if (!reverse && !p.postmaster) {
        proto_path_t lax;
        CHECK(proto_path_parse(args, len, PROTO_REVERSE_PATH, &lax) == PROTO_OK);
        CHECK(!strcmp(lax.addr, p.addr) && lax.n_params == p.n_params);
    }
}

/* A refusal is a whole reply line with its code first; what is kept is
 * bounded and made of the client's own (checked) text. */
static void check_refusal(int code, const char *reply)
{
    CHECK(code == 0 || (code >= 500 && code <= 555));
    if (!code) return;
    CHECK(strlen(reply) >= 4 && reply[3] == ' ');
    CHECK(code == (reply[0] - '0') * 100 + (reply[1] - '0') * 10 + (reply[2] - '0'));
}

/* A parameter the checks accepted is in the stored list with its value whole
 * (or, for NOTIFY, the same words), found by what a relay reads it with. */
static void check_stored(const proto_path_t *p, const char *list, const char *key)
{
    const proto_param_t *param = proto_path_param(p, key);
    char value[PROTO_ORCPT_MAX + 1];
    if (!param) {
        CHECK(!proto_param_find(list, key, value, sizeof value));
        return;
    }
    CHECK(param->value && proto_param_find(list, key, value, sizeof value));
    if (!strcmp(key, "NOTIFY"))
        CHECK(proto_dsn_notify(value, strlen(value)) ==
              proto_dsn_notify(param->value, param->value_len));
    else if (!strcmp(key, "RET"))
        CHECK(strlen(value) == param->value_len &&
              !strncasecmp(value, param->value, param->value_len));
    else
        CHECK(strlen(value) == param->value_len && !memcmp(value, param->value, param->value_len));
}

static void check_params(const char *args, size_t len)
{
    proto_path_t p;
    char reply[600], dsn[PROTO_RCPT_PARAMS_MAX];
    if (proto_path_parse(args, len, PROTO_REVERSE_PATH, &p) == PROTO_OK) {
        proto_mail_params_t mp;
        int unique = proto_params_unique(&p, reply, sizeof reply);
        check_refusal(unique, reply);
        int code = proto_mail_params(&p, 1000, true, &mp, reply, sizeof reply);
        check_refusal(code, reply);
        CHECK(!unique || code == unique);
        CHECK(strlen(mp.stored) < sizeof mp.stored);
        if (!code) {
            CHECK(mp.body_8bit == (strstr(mp.stored, "BODY=8BITMIME") != NULL));
            CHECK(mp.smtputf8 == proto_param_find(mp.stored, "SMTPUTF8", NULL, 0));
            check_stored(&p, mp.stored, "ENVID");
            check_stored(&p, mp.stored, "RET");
        }
    }
    if (proto_path_parse(args, len, PROTO_FORWARD_PATH, &p) == PROTO_OK) {
        int unique = proto_params_unique(&p, reply, sizeof reply);
        int code = proto_rcpt_params(&p, true, dsn, reply, sizeof reply);
        check_refusal(code, reply);
        CHECK(!unique || code == unique);
        CHECK(strlen(dsn) < sizeof dsn);
        if (!code && !p.n_params) CHECK(dsn[0] == 0);
        if (!code) {
            check_stored(&p, dsn, "ORCPT");
            check_stored(&p, dsn, "NOTIFY");
        }
    }
    unsigned long long size;
    bool last;
    if (proto_bdat_args(args, len, &size, &last))
        CHECK(len > 0 && args[0] >= '0' && args[0] <= '9');
}

/* A known command written out again ("MAIL FROM:" for MAIL, "RCPT TO:" for
 * RCPT, one space before other arguments) parses to the same verb and
 * arguments. */
static void check_command_again(const proto_command_t *cmd)
{
    if (cmd->verb == PROTO_UNKNOWN) return;
    const char *prefix = cmd->verb == PROTO_MAIL   ? "MAIL FROM:"
                         : cmd->verb == PROTO_RCPT ? "RCPT TO:"
                                                   : proto_verb_name(cmd->verb);
    size_t n = strlen(prefix), k = n;
    char *line = malloc(n + 1 + cmd->args_len);
    if (!line) abort();
    memcpy(line, prefix, n);
    if (cmd->args_len && cmd->verb != PROTO_MAIL && cmd->verb != PROTO_RCPT) line[k++] = ' ';
    memcpy(line + k, cmd->args, cmd->args_len);
    k += cmd->args_len;
    proto_command_t again;
    CHECK(proto_command_parse(line, k, &again) == PROTO_OK && again.verb == cmd->verb);
    CHECK(again.args_len == cmd->args_len && !memcmp(again.args, cmd->args, cmd->args_len));
    free(line);
}

/* A PROXY header: its length within the input, an address family when it
 * is not local; a v1 line is printable text up to its CRLF, and an IPv4
 * source written back is the text that was read. */
static void check_proxy(const char *in, size_t size)
{
    proto_proxy_t proxy;
    long header = proto_proxy_parse(in, size, &proxy);
    CHECK(header >= -1 && header <= (long)size);
    if (header <= 0) return;
    CHECK(proxy.local || proxy.family == 4 || proxy.family == 6);
    if (memcmp(in, "PROXY ", 6)) return;
    for (long i = 0; i < header - 2; i++)
        CHECK((unsigned char)in[i] >= 0x20 && (unsigned char)in[i] <= 0x7e);
    CHECK(in[header - 2] == '\r' && in[header - 1] == '\n');
    if (proxy.family == 4) {
        char text[INET_ADDRSTRLEN];
        CHECK(inet_ntop(AF_INET, proxy.addr, text, sizeof text) != NULL);
        size_t n = strlen(text);
        CHECK((size_t)header > 11 + n && !memcmp(in, "PROXY TCP4 ", 11) &&
              !memcmp(in + 11, text, n) && in[11 + n] == ' ');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;

    proto_command_t cmd;
    enum proto_status st = proto_command_parse(line, size, &cmd);
    CHECK(st == PROTO_OK || st == PROTO_E_SYNTAX);
    if (memchr(line, 0, size)) CHECK(st == PROTO_E_SYNTAX);
    CHECK(cmd.verb < PROTO_VERB_COUNT);
    if (st == PROTO_OK) {
        CHECK(within(cmd.args, cmd.args_len, line, size));
        if (cmd.args_len)
            CHECK(cmd.args[cmd.args_len - 1] != ' ' && cmd.args[cmd.args_len - 1] != '\t');
        if (cmd.verb != PROTO_UNKNOWN) {
            const char *name = proto_verb_name(cmd.verb);
            size_t nl = strlen(name);
            CHECK(size >= nl && !strncasecmp(line, name, nl) && (size == nl || line[nl] == ' '));
        }
        check_command_again(&cmd);
        if (cmd.verb == PROTO_MAIL || cmd.verb == PROTO_RCPT) {
            check_path(cmd.args, cmd.args_len, PROTO_REVERSE_PATH);
            check_path(cmd.args, cmd.args_len, PROTO_FORWARD_PATH);
        }
        check_params(cmd.args, cmd.args_len);
    }

    check_path(line, size, PROTO_REVERSE_PATH);
    check_path(line, size, PROTO_FORWARD_PATH);

    /* DSN parameter checks: bounded, and NOTIFY's bits are consistent */
    int notify = proto_dsn_notify(line, size);
    CHECK(notify == -1 || (notify > 0 && notify < 16));
    if (notify > 0 && (notify & PROTO_NOTIFY_NEVER)) CHECK(notify == PROTO_NOTIFY_NEVER);
    if (proto_xtext_valid(line, size))
        for (size_t i = 0; i < size; i++)
            CHECK(line[i] > 32 && line[i] < 127 && line[i] != '=');
    (void)proto_dsn_orcpt_valid(line, size, true);

    check_proxy(line, size);
    (void)proto_header_has(line, size, "Message-ID");

    bool last = false;
    int code = proto_reply_line(line, size, &last);
    if (code != -1) {
        CHECK(code >= 200 && code <= 599 && size >= 3 && !memchr(line, 0, size));
        CHECK(code == (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
        CHECK(last == (size == 3 || line[3] == ' '));
        CHECK(last || line[3] == '-');
    }
    return 0;
}
