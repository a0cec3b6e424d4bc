/* libFuzzer target: command lines, paths and parameters, reply lines.
 *
 * Beyond "no crash, no out-of-bounds read" (ASan/UBSan), it checks what the
 * parsers promise: arguments point into the line, a parsed path is bounded and
 * well-formed, parsing it again gives the same address, and a reply code is in
 * range. A broken promise is a __builtin_trap(). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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

static void check_path(const char *args, size_t len, bool allow_null)
{
    proto_path_t p;
    enum proto_status st = proto_path_parse(args, len, allow_null, &p);
    CHECK(st == PROTO_OK || st == PROTO_E_PATH || st == PROTO_E_PATH_LENGTH || st == PROTO_E_PARAM);
    if (st != PROTO_OK) {
        if (allow_null) { /* what the lax parse refuses, the strict one refuses too */
            proto_path_t strict;
            CHECK(proto_path_parse(args, len, false, &strict) != PROTO_OK);
        }
        return;
    }

    size_t n = strnlen(p.addr, sizeof p.addr);
    CHECK(n <= PROTO_PATH_MAX);
    bool non_ascii = false;
    for (size_t i = 0; i < n; i++)
        non_ascii |= (unsigned char)p.addr[i] >= 0x80;
    CHECK(non_ascii == p.utf8);
    /* A '>' can only be inside a quoted local part. */
    const char *gt = memchr(p.addr, '>', n);
    CHECK(gt == NULL || (p.addr[0] == '"' && (size_t)(gt - p.addr) < p.at));
    if (n == 0) {
        CHECK(allow_null);
        CHECK(p.at == 0);
        CHECK(proto_path_domain(&p)[0] == 0);
    } else {
        CHECK(p.at > 0 && p.at <= 64 && p.at < n - 1);
        CHECK(p.addr[p.at] == '@');
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

    /* the normalised address parses again to itself */
    char again[PROTO_PATH_MAX + 3];
    again[0] = '<';
    memcpy(again + 1, p.addr, n);
    again[n + 1] = '>';
    proto_path_t q;
    CHECK(proto_path_parse(again, n + 2, allow_null, &q) == PROTO_OK);
    CHECK(!strcmp(q.addr, p.addr) && q.at == p.at && q.utf8 == p.utf8 && q.n_params == 0);

    /* what the strict parse accepts, the lax one accepts alike */
    if (!allow_null) {
        proto_path_t lax;
        CHECK(proto_path_parse(args, len, true, &lax) == PROTO_OK);
        CHECK(!strcmp(lax.addr, p.addr) && lax.n_params == p.n_params);
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
        if (cmd.verb == PROTO_MAIL || cmd.verb == PROTO_RCPT) {
            check_path(cmd.args, cmd.args_len, true);
            check_path(cmd.args, cmd.args_len, false);
        }
    }

    check_path(line, size, true);
    check_path(line, size, false);

    bool last = false;
    int code = proto_reply_line(line, size, &last);
    if (code != -1) {
        CHECK(code >= 200 && code <= 599 && size >= 3);
        CHECK(code == (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
        CHECK(last == (size == 3 || line[3] == ' '));
        CHECK(last || line[3] == '-');
    }
    return 0;
}
