/* Unit tests for proto/: command lines, paths and their parameters, and
 * reply lines. Header fields and PROXY are in test_proto_header.c, the DATA
 * decoder and dot-stuffing in test_proto_data.c, ESMTP parameter values in
 * test_proto_params.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto.h"
#include "proto_test.h"

/* ---------------------------------------------------------------- commands */

static void check_command(const char *line, proto_verb_t verb, const char *args)
{
    proto_command_t cmd;
    assert_int_equal(proto_command_parse(line, strlen(line), &cmd), PROTO_OK);
    assert_int_equal(cmd.verb, verb);
    assert_int_equal(cmd.args_len, strlen(args));
    assert_memory_equal(cmd.args, args, cmd.args_len);
    /* args points into the line, never into a copy */
    assert_true(cmd.args >= line && cmd.args + cmd.args_len <= line + strlen(line));
}

static void test_command_every_verb(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        proto_verb_t verb;
        const char *args;
    } cases[] = {
        {"HELO client.test", PROTO_HELO, "client.test"},
        {"EHLO client.test", PROTO_EHLO, "client.test"},
        {"MAIL FROM:<a@b.test>", PROTO_MAIL, "<a@b.test>"},
        {"RCPT TO:<c@d.test>", PROTO_RCPT, "<c@d.test>"},
        {"DATA", PROTO_DATA, ""},
        {"RSET", PROTO_RSET, ""},
        {"NOOP", PROTO_NOOP, ""},
        {"QUIT", PROTO_QUIT, ""},
        {"HELP", PROTO_HELP, ""},
        {"HELP MAIL", PROTO_HELP, "MAIL"},
        {"VRFY postmaster", PROTO_VRFY, "postmaster"},
        {"EXPN staff", PROTO_EXPN, "staff"},
        {"STARTTLS", PROTO_STARTTLS, ""},
        {"AUTH PLAIN dGVzdA==", PROTO_AUTH, "PLAIN dGVzdA=="},
        {"BDAT 100 LAST", PROTO_BDAT, "100 LAST"},
        {"TURN", PROTO_TURN, ""},
    };
    bool seen[PROTO_VERB_COUNT] = {false};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_command(cases[i].line, cases[i].verb, cases[i].args);
        seen[cases[i].verb] = true;
        /* the verb's name is the first word of the line */
        const char *name = proto_verb_name(cases[i].verb);
        assert_int_equal(strncmp(cases[i].line, name, strlen(name)), 0);
    }
    for (int v = PROTO_HELO; v < PROTO_VERB_COUNT; v++)
        assert_true(seen[v]);
    assert_string_equal(proto_verb_name(PROTO_UNKNOWN), "");
    assert_string_equal(proto_verb_name(PROTO_VERB_COUNT), "");
    assert_string_equal(proto_verb_name(PROTO_STARTTLS), "STARTTLS");
}

static void test_command_case_insensitive(void **state)
{
    (void)state;
    check_command("helo client.test", PROTO_HELO, "client.test");
    check_command("EhLo Client.Test", PROTO_EHLO, "Client.Test");
    check_command("mail from:<a@b.test>", PROTO_MAIL, "<a@b.test>");
    check_command("Mail From:<a@b.test>", PROTO_MAIL, "<a@b.test>");
    check_command("rcpt to:<c@d.test>", PROTO_RCPT, "<c@d.test>");
    check_command("rCpT tO:<c@d.test>", PROTO_RCPT, "<c@d.test>");
    check_command("data", PROTO_DATA, "");
    check_command("quit", PROTO_QUIT, "");
    check_command("starttls", PROTO_STARTTLS, "");
    check_command("bdat 5", PROTO_BDAT, "5");
}

static void test_command_unknown(void **state)
{
    (void)state;
    check_command("XYZZY plugh", PROTO_UNKNOWN, "");
    check_command("MAILFROM:<a@b.test>", PROTO_UNKNOWN, "");
    check_command("DATAX", PROTO_UNKNOWN, "");
    check_command("HEL", PROTO_UNKNOWN, "");
    check_command("", PROTO_UNKNOWN, "");
    check_command(" NOOP", PROTO_UNKNOWN, "");
}

static void test_command_mail_rcpt_need_prefix(void **state)
{
    (void)state;
    proto_command_t cmd;
    assert_int_equal(proto_command_parse(LIT("MAIL <a@b.test>"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("MAIL"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("MAIL "), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("MAIL FROM"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("MAIL TO:<a@b.test>"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("RCPT FROM:<a@b.test>"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("RCPT <a@b.test>"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("RCPT"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("RCPT T:<a@b.test>"), &cmd), PROTO_E_SYNTAX);
}

static void test_command_space_after_colon(void **state)
{
    (void)state;
    check_command("MAIL FROM: <a@b.test>", PROTO_MAIL, "<a@b.test>");
    check_command("MAIL FROM:   <a@b.test> SIZE=10", PROTO_MAIL, "<a@b.test> SIZE=10");
    check_command("RCPT TO: <c@d.test>", PROTO_RCPT, "<c@d.test>");
}

static void test_command_nul_byte(void **state)
{
    (void)state;
    proto_command_t cmd;
    assert_int_equal(proto_command_parse(LIT("NOOP\0"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("\0NOOP"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("MAIL FROM:<a\0@b.test>"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("EHLO a\0b"), &cmd), PROTO_E_SYNTAX);
    assert_int_equal(proto_command_parse(LIT("XYZZY \0"), &cmd), PROTO_E_SYNTAX);
}

static void test_command_trailing_space(void **state)
{
    (void)state;
    check_command("EHLO client.test   ", PROTO_EHLO, "client.test");
    check_command("EHLO client.test \t \t", PROTO_EHLO, "client.test");
    check_command("MAIL FROM:<a@b.test> SIZE=10  ", PROTO_MAIL, "<a@b.test> SIZE=10");
    check_command("RCPT TO:<c@d.test> ", PROTO_RCPT, "<c@d.test>");
    check_command("NOOP    ", PROTO_NOOP, "");
    check_command("DATA ", PROTO_DATA, "");
}

/* ------------------------------------------------------------------- paths */

static enum proto_status parse_path(const char *args, bool allow_null, proto_path_t *out)
{
    return proto_path_parse(args, strlen(args),
                            allow_null ? PROTO_REVERSE_PATH : PROTO_FORWARD_PATH, out);
}

static void test_path_postmaster(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<postMASTER> NOTIFY=NEVER", false, &p), PROTO_OK);
    assert_true(p.postmaster);
    assert_string_equal(p.addr, "Postmaster");
    assert_string_equal(proto_path_domain(&p), "");
    assert_int_equal(p.n_params, 1);
    /* only a forward path, only without a domain, nothing glued on */
    assert_int_equal(parse_path("<Postmaster>", true, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<Postmasterx>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<Postmaster>x", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<postmaster@Example.test>", false, &p), PROTO_OK);
    assert_false(p.postmaster);
    assert_string_equal(p.addr, "postmaster@example.test");
}

static void test_path_simple(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<user@example.test>", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "user@example.test");
    assert_int_equal(p.at, 4);
    assert_false(p.utf8);
    assert_int_equal(p.n_params, 0);
    assert_string_equal(proto_path_domain(&p), "example.test");

    assert_int_equal(parse_path("<first.last+tag@a-b.c.example>", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "first.last+tag@a-b.c.example");
    assert_string_equal(proto_path_domain(&p), "a-b.c.example");

    assert_int_equal(parse_path("<x@y>", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "x@y");
}

static void test_path_null(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<>", true, &p), PROTO_OK);
    assert_string_equal(p.addr, "");
    assert_int_equal(p.at, 0);
    assert_string_equal(proto_path_domain(&p), "");
    assert_int_equal(parse_path("<>", false, &p), PROTO_E_PATH);

    assert_int_equal(parse_path("<> SIZE=100", true, &p), PROTO_OK);
    assert_int_equal(p.n_params, 1);
    assert_int_equal(parse_path("<> SIZE=100", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("", true, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<", true, &p), PROTO_E_PATH);
}

static void test_path_quoted_local_part(void **state)
{
    (void)state;
    proto_path_t p;
    const char *q = "\"john \\\"q\\\" doe\"";
    char args[64];
    snprintf(args, sizeof args, "<%s@Example.TEST>", q);
    assert_int_equal(parse_path(args, false, &p), PROTO_OK);
    char want[64];
    snprintf(want, sizeof want, "%s@example.test", q);
    assert_string_equal(p.addr, want);
    assert_int_equal(p.at, strlen(q));
    assert_string_equal(proto_path_domain(&p), "example.test");

    assert_int_equal(parse_path("<\"a@b\"@c.test>", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "\"a@b\"@c.test");
    assert_int_equal(p.at, 5);
    assert_int_equal(parse_path("<\"a\\\\b\"@c.test>", false, &p), PROTO_OK);
    assert_int_equal(parse_path("<\"\"@c.test>", false, &p), PROTO_OK);

    /* unterminated, escape of a control character, raw control character */
    assert_int_equal(parse_path("<\"abc@c.test>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<\"a\\\x01\"@c.test>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<\"a\x01\"@c.test>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<\"a\"b@c.test>", false, &p), PROTO_E_PATH);
}

static void test_path_source_route(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<@a.test,@b.test:user@c.test>", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "user@c.test");
    assert_int_equal(p.at, 4);
    assert_int_equal(parse_path("<@relay.test:User@C.TEST> SIZE=5", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "User@c.test");
    assert_int_equal(p.n_params, 1);

    assert_int_equal(parse_path("<@a.test:>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<@:user@c.test>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<@a.test,user@c.test>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<@-a.test:user@c.test>", false, &p), PROTO_E_PATH);
}

static void test_path_address_literal(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<postmaster@[127.0.0.1]>", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "postmaster@[127.0.0.1]");
    assert_string_equal(proto_path_domain(&p), "[127.0.0.1]");
    assert_int_equal(parse_path("<u@[IPv6:2001:db8::1]>", false, &p), PROTO_OK);

    assert_int_equal(parse_path("<u@[]>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<u@[127.0.0.1>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<u@[127.0.0.1]x>", false, &p), PROTO_E_PATH);
    assert_int_equal(parse_path("<u@[1 2]>", false, &p), PROTO_E_PATH);

    /* A NUL ends the literal's text for inet_pton, not for the path: once
     * "[7.0.0.1\0]" passed as "[7.0.0.1]" and the address kept a NUL. The
     * first is what fuzz_command found (tests/fuzz/corpus/command/literal_nul). */
    static const struct {
        const char *args;
        size_t len;
    } nul[] = {{LIT("<\"j\\>\"@[7.0.0.1\0]> N")},
               {LIT("<u@[7.0.0.1\0]>")},
               {LIT("<u@[7.0.0.1\0.2]>")},
               {LIT("<u@[IPv6:::1\0]>")},
               {LIT("<u@[\0]>")},
               {LIT("<@[1.2.3.4\0]:u@c.test>")}};
    for (size_t i = 0; i < sizeof nul / sizeof nul[0]; i++) {
        assert_int_equal(proto_path_parse(nul[i].args, nul[i].len, PROTO_FORWARD_PATH, &p),
                         PROTO_E_PATH);
        assert_int_equal(proto_path_parse(nul[i].args, nul[i].len, PROTO_REVERSE_PATH, &p),
                         PROTO_E_PATH);
    }
    /* the same text without the NUL is a path */
    assert_int_equal(parse_path("<\"j\\>\"@[7.0.0.1]> N", false, &p), PROTO_OK);
    assert_string_equal(p.addr, "\"j\\>\"@[7.0.0.1]");
}

static void test_path_domain_lowercased(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<John.Smith@EXAMPLE.Test>", false, &p), PROTO_OK);
    /* the local part keeps its case: only the receiving host may fold it */
    assert_string_equal(p.addr, "John.Smith@example.test");
    assert_string_equal(proto_path_domain(&p), "example.test");
}

static void test_path_lengths(void **state)
{
    (void)state;
    proto_path_t p;
    char args[700];
    char local[80];

    memset(local, 'a', 64);
    local[64] = 0;
    snprintf(args, sizeof args, "<%s@x.test>", local);
    assert_int_equal(parse_path(args, false, &p), PROTO_OK);
    assert_int_equal(p.at, 64);

    memset(local, 'a', 65);
    local[65] = 0;
    snprintf(args, sizeof args, "<%s@x.test>", local);
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PATH_LENGTH);

    /* a quoted local part counts its quotes */
    memset(local + 1, 'q', 63);
    local[0] = local[64] = '"';
    local[65] = 0;
    snprintf(args, sizeof args, "<%s@x.test>", local);
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PATH_LENGTH);

    /* a label of 63 is fine, 64 is not */
    char label[80];
    memset(label, 'b', 63);
    label[63] = 0;
    snprintf(args, sizeof args, "<u@%s.test>", label);
    assert_int_equal(parse_path(args, false, &p), PROTO_OK);
    memset(label, 'b', 64);
    label[64] = 0;
    snprintf(args, sizeof args, "<u@%s.test>", label);
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PATH);

    /* a domain of 5 * 63 + 4 dots = 319 octets */
    memset(label, 'c', 63);
    label[63] = 0;
    snprintf(args, sizeof args, "<u@%s.%s.%s.%s.%s>", label, label, label, label, label);
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PATH_LENGTH);

    /* local 64 + '@' + domain 4 * 63 + 3 = 320 octets: each part fits, the path does not */
    memset(local, 'a', 64);
    local[64] = 0;
    snprintf(args, sizeof args, "<%s@%s.%s.%s.%s>", local, label, label, label, label);
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PATH_LENGTH);

    /* exactly PROTO_PATH_MAX octets: 64 + '@' + 3 * 63 + 2 dots */
    char domain[300];
    snprintf(domain, sizeof domain, "%s.%s.%s", label, label, label);
    snprintf(args, sizeof args, "<%s@%s>", local, domain);
    assert_int_equal(parse_path(args, false, &p), PROTO_OK);
    assert_int_equal(strlen(p.addr), PROTO_PATH_MAX);
    snprintf(args, sizeof args, "<%s@%s.d>", local, domain); /* 258 */
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PATH_LENGTH);
}

static void test_path_bad_syntax(void **state)
{
    (void)state;
    proto_path_t p;
    static const char *const bad[] = {
        "<u@-a.test>", "<u@a-.test>",  "<u@a.-b>",      "<u@a.b->",    "<u@a..test>",
        "<u@.a.test>", "<u@a.test.>",  "<a..b@c.test>", "<.a@c.test>", "<a.@c.test>",
        "<u@c.test",   "u@c.test>",    "u@c.test",      "<u@>",        "<@c.test>",
        "<uc.test>",   "<u@a_b.test>", "<u v@c.test>",  "<u@c test>",  "<u@@c.test>",
        "<>",          " <u@c.test>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        enum proto_status st = parse_path(bad[i], false, &p);
        if (st != PROTO_E_PATH) fail_msg("'%s' gave %d, expected PROTO_E_PATH", bad[i], st);
    }
    assert_int_equal(parse_path("<u@a-b.test>", false, &p), PROTO_OK);
    assert_int_equal(parse_path("<u@a--b.test>", false, &p), PROTO_OK);
    assert_int_equal(parse_path("<u@123.test>", false, &p), PROTO_OK);
}

static void test_path_utf8(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<j\xc3\xb6rg@example.test>", false, &p), PROTO_OK);
    assert_true(p.utf8);
    assert_string_equal(p.addr, "j\xc3\xb6rg@example.test");
    assert_int_equal(p.at, 5);
    /* four-octet sequence, and a non-ASCII domain */
    assert_int_equal(parse_path("<\xf0\x9f\x93\xa7@example.test>", false, &p), PROTO_OK);
    assert_true(p.utf8);
    assert_int_equal(parse_path("<u@b\xc3\xbc\x63her.test>", false, &p), PROTO_OK);
    assert_true(p.utf8);
    assert_int_equal(parse_path("<\"\xc3\xa9t\xc3\xa9\"@example.test>", false, &p), PROTO_OK);
    assert_true(p.utf8);

    assert_int_equal(parse_path("<plain@example.test>", false, &p), PROTO_OK);
    assert_false(p.utf8);

    static const char *const bad[] = {
        "<j\xc3\x28@example.test>",        /* bad continuation */
        "<j\xff@example.test>",            /* never valid */
        "<j\xc3@example.test>",            /* truncated */
        "<\xc0\xaf@example.test>",         /* overlong '/' */
        "<\xe0\x80\xaf@example.test>",     /* overlong, three octets */
        "<\xed\xa0\x80@example.test>",     /* surrogate */
        "<\xf4\x90\x80\x80@example.test>", /* over U+10FFFF */
        "<\x80@example.test>",             /* lone continuation */
        "<u@b\xc3.test>",                  /* truncated, in the domain */
        "<\"\xc3\x28\"@example.test>",     /* in a quoted string */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parse_path(bad[i], false, &p) != PROTO_E_PATH) fail_msg("bad UTF-8 #%zu accepted", i);
}

static void test_path_params(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<a@b.test> SIZE=100 BODY=8BITMIME", false, &p), PROTO_OK);
    assert_int_equal(p.n_params, 2);
    const proto_param_t *size = proto_path_param(&p, "size");
    assert_non_null(size);
    assert_int_equal(size->key_len, 4);
    assert_memory_equal(size->key, "SIZE", 4);
    assert_non_null(size->value);
    assert_int_equal(size->value_len, 3);
    assert_memory_equal(size->value, "100", 3);
    assert_ptr_equal(proto_path_param(&p, "SIZE"), size);
    assert_ptr_equal(proto_path_param(&p, "SiZe"), size);
    const proto_param_t *body = proto_path_param(&p, "Body");
    assert_non_null(body);
    assert_int_equal(body->value_len, 8);
    assert_memory_equal(body->value, "8BITMIME", 8);
    assert_null(proto_path_param(&p, "SMTPUTF8"));
    assert_null(proto_path_param(&p, "SIZ"));
    assert_null(proto_path_param(&p, "SIZES"));

    /* a keyword without a value, and runs of spaces */
    assert_int_equal(parse_path("<a@b.test>  SMTPUTF8   RET=HDRS ", false, &p), PROTO_OK);
    assert_int_equal(p.n_params, 2);
    const proto_param_t *u = proto_path_param(&p, "smtputf8");
    assert_non_null(u);
    assert_null(u->value);
    assert_int_equal(u->value_len, 0);
    assert_non_null(proto_path_param(&p, "ret"));

    /* trailing space only */
    assert_int_equal(parse_path("<a@b.test> ", false, &p), PROTO_OK);
    assert_int_equal(p.n_params, 0);
}

static void test_path_params_bad(void **state)
{
    (void)state;
    proto_path_t p;
    assert_int_equal(parse_path("<a@b.test> =x", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> SIZE=", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> SIZE= BODY=7BIT", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test>SIZE=1", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> SIZE=1=2", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> -X", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> X_Y=1", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> X=a\x01", false, &p), PROTO_E_PARAM);
    assert_int_equal(parse_path("<a@b.test> X=a\x7f", false, &p), PROTO_E_PARAM);

    /* PROTO_MAX_PARAMS are fine, one more is not */
    char args[256] = "<a@b.test>";
    for (int i = 0; i < PROTO_MAX_PARAMS; i++)
        snprintf(args + strlen(args), sizeof args - strlen(args), " P%d=%d", i, i);
    assert_int_equal(parse_path(args, false, &p), PROTO_OK);
    assert_int_equal(p.n_params, PROTO_MAX_PARAMS);
    assert_non_null(proto_path_param(&p, "p7"));
    snprintf(args + strlen(args), sizeof args - strlen(args), " EXTRA");
    assert_int_equal(parse_path(args, false, &p), PROTO_E_PARAM);
}

/* Parameters with the command parser in front, as a server runs them. */
static void test_path_after_command(void **state)
{
    (void)state;
    proto_command_t cmd;
    proto_path_t p;
    const char *line = "mail from: <Bob@Example.TEST> size=2048 body=8bitmime  ";
    assert_int_equal(proto_command_parse(line, strlen(line), &cmd), PROTO_OK);
    assert_int_equal(cmd.verb, PROTO_MAIL);
    assert_int_equal(proto_path_parse(cmd.args, cmd.args_len, PROTO_REVERSE_PATH, &p), PROTO_OK);
    assert_string_equal(p.addr, "Bob@example.test");
    const proto_param_t *size = proto_path_param(&p, "SIZE");
    assert_non_null(size);
    assert_int_equal(size->value_len, 4);
    assert_memory_equal(size->value, "2048", 4);
}

/* ----------------------------------------------------------------- replies */

static void test_reply_line(void **state)
{
    (void)state;
    bool last = false;
    assert_int_equal(proto_reply_line(LIT("250 ok"), &last), 250);
    assert_true(last);
    assert_int_equal(proto_reply_line(LIT("250-x"), &last), 250);
    assert_false(last);
    assert_int_equal(proto_reply_line(LIT("250"), &last), 250);
    assert_true(last);
    assert_int_equal(proto_reply_line(LIT("554-5.7.1 no"), &last), 554);
    assert_false(last);
    assert_int_equal(proto_reply_line(LIT("220 mx.test ESMTP"), &last), 220);
    assert_true(last);
    assert_int_equal(proto_reply_line(LIT("599 x"), &last), 599);
    assert_int_equal(proto_reply_line(LIT("200 x"), &last), 200);

    last = true;
    assert_int_equal(proto_reply_line(LIT("25"), &last), -1);
    assert_int_equal(proto_reply_line(LIT(""), &last), -1);
    assert_int_equal(proto_reply_line(LIT("abc"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("600 x"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("199 x"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("099 x"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("250x"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("2a0 x"), &last), -1);
    assert_int_equal(proto_reply_line(LIT(" 250 x"), &last), -1);
    /* a NUL would cut the text its reader keeps as a C string */
    assert_int_equal(proto_reply_line(LIT("250 ok\0 and more"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("250\0"), &last), -1);
    assert_int_equal(proto_reply_line(LIT("25\0 x"), &last), -1);
    /* "250" is only the first three octets of a longer buffer here */
    assert_int_equal(proto_reply_line("2505", 3, &last), 250);
    assert_true(last);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_every_verb),
        cmocka_unit_test(test_command_case_insensitive),
        cmocka_unit_test(test_command_unknown),
        cmocka_unit_test(test_command_mail_rcpt_need_prefix),
        cmocka_unit_test(test_command_space_after_colon),
        cmocka_unit_test(test_command_nul_byte),
        cmocka_unit_test(test_command_trailing_space),
        cmocka_unit_test(test_path_simple),
        cmocka_unit_test(test_path_null),
        cmocka_unit_test(test_path_quoted_local_part),
        cmocka_unit_test(test_path_source_route),
        cmocka_unit_test(test_path_address_literal),
        cmocka_unit_test(test_path_domain_lowercased),
        cmocka_unit_test(test_path_lengths),
        cmocka_unit_test(test_path_bad_syntax),
        cmocka_unit_test(test_path_utf8),
        cmocka_unit_test(test_path_params),
        cmocka_unit_test(test_path_params_bad),
        cmocka_unit_test(test_path_after_command),
        cmocka_unit_test(test_path_postmaster),
        cmocka_unit_test(test_reply_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
