/* Unit tests for proto/: command lines, paths and parameters, the DATA decoder,
 * dot-stuffing and reply lines. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

/* A string literal and its length, embedded NULs included. */
#define LIT(s) (s), (sizeof(s) - 1)

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

static bool has(const char *msg, const char *name)
{
    return proto_header_has(msg, strlen(msg), name);
}

static void test_header_has(void **state)
{
    (void)state;
    const char *msg = "Subject: hi\r\nmessage-id: <a@b>\r\nX-Long: one\r\n two: not a field\r\n"
                      "Date : Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nFrom: in the body\r\n";
    assert_true(has(msg, "Message-ID"));
    assert_true(has(msg, "subject"));
    assert_true(has(msg, "Date"));  /* obsolete white space before the colon */
    assert_false(has(msg, "two"));  /* a continuation line is no field */
    assert_false(has(msg, "From")); /* the body is not the header */
    assert_false(has(msg, "Message"));
    assert_false(has("", "Date"));
    assert_false(has("\r\nDate: x\r\n", "Date"));
    assert_true(has("Date: no line end", "Date"));
}

static void expect_field(proto_header_iter_t *it, const char *name, const char *value,
                         const char *raw)
{
    proto_header_field_t f;
    assert_true(proto_header_next(it, &f));
    assert_int_equal(f.name_len, strlen(name));
    assert_memory_equal(f.name, name, f.name_len);
    assert_int_equal(f.value_len, strlen(value));
    assert_memory_equal(f.value, value, f.value_len);
    assert_int_equal(f.raw_len, strlen(raw));
    assert_memory_equal(f.raw, raw, f.raw_len);
    /* every span lies in the message, the name and value inside the raw field */
    assert_true(f.raw >= it->msg && f.raw + f.raw_len <= it->msg + it->len);
    assert_ptr_equal(f.name, f.raw);
    assert_true(f.value > f.name && f.value + f.value_len <= f.raw + f.raw_len);
}

static void test_header_iter(void **state)
{
    (void)state;
    const char msg[] = " stray: continuation first\r\n"
                       "Subject: one\r\n two\r\n\tthree\r\n"
                       "From alice@example.org Mon Jan  1 00:00:00 2024\r\n"
                       " and its continuation: x\r\n"
                       "Date : now\r\n"
                       "X-Empty:\r\n"
                       ": no name\r\n"
                       "To:bob@example.org\r\n"
                       "\r\n"
                       "Body: not a field\r\n";
    proto_header_iter_t it;
    proto_header_iter_init(&it, msg, sizeof msg - 1);
    expect_field(&it, "Subject", " one\r\n two\r\n\tthree", "Subject: one\r\n two\r\n\tthree\r\n");
    expect_field(&it, "Date", " now", "Date : now\r\n");
    expect_field(&it, "X-Empty", "", "X-Empty:\r\n");
    expect_field(&it, "To", "bob@example.org", "To:bob@example.org\r\n");
    proto_header_field_t f;
    assert_false(proto_header_next(&it, &f));
    assert_false(proto_header_next(&it, &f)); /* and stays at the end */
    assert_string_equal(msg + it.body, "Body: not a field\r\n");
}

static void test_header_iter_edges(void **state)
{
    (void)state;
    proto_header_iter_t it;
    proto_header_field_t f;

    /* no empty line: the header runs to the end, the body is empty */
    const char *m = "A: 1\r\nB: 2";
    proto_header_iter_init(&it, m, strlen(m));
    expect_field(&it, "A", " 1", "A: 1\r\n");
    expect_field(&it, "B", " 2", "B: 2");
    assert_false(proto_header_next(&it, &f));
    assert_int_equal(it.body, strlen(m));

    /* bare LF line ends are line ends too */
    m = "A: 1\n folded\nB: 2\n\nbody\n";
    proto_header_iter_init(&it, m, strlen(m));
    expect_field(&it, "A", " 1\n folded", "A: 1\n folded\n");
    expect_field(&it, "B", " 2", "B: 2\n");
    assert_false(proto_header_next(&it, &f));
    assert_string_equal(m + it.body, "body\n");

    /* no header at all */
    proto_header_iter_init(&it, "\r\nbody", 6);
    assert_false(proto_header_next(&it, &f));
    assert_int_equal(it.body, 2);
    proto_header_iter_init(&it, "", 0);
    assert_false(proto_header_next(&it, &f));
    assert_int_equal(it.body, 0);

    /* the empty line as the last octets */
    m = "A: 1\r\n\r\n";
    proto_header_iter_init(&it, m, strlen(m));
    expect_field(&it, "A", " 1", "A: 1\r\n");
    assert_false(proto_header_next(&it, &f));
    assert_int_equal(it.body, strlen(m));

    /* a lone CR starting a line is content, not the end of the header */
    m = "A: 1\r\n\rB: 2\r\nC: 3\r\n";
    proto_header_iter_init(&it, m, strlen(m));
    expect_field(&it, "A", " 1", "A: 1\r\n");
    expect_field(&it, "C", " 3", "C: 3\r\n");
    assert_false(proto_header_next(&it, &f));
}

/* Collects the addresses a field yields as "a|b|c". */
typedef struct collected {
    char text[4096];
    size_t n;
} collected_t;

static void collect(const char *addr, size_t len, void *arg)
{
    collected_t *c = arg;
    assert_int_equal(strlen(addr), len); /* NUL-terminated, no NUL inside */
    assert_true(len <= PROTO_PATH_MAX);
    c->n += (size_t)snprintf(c->text + c->n, sizeof c->text - c->n, "%s%s", c->n ? "|" : "", addr);
    assert_true(c->n < sizeof c->text);
}

static void check_addresses(const char *msg, const char *field, const char *want)
{
    collected_t c = {{0}, 0};
    size_t count = proto_header_addresses(msg, strlen(msg), field, collect, &c);
    assert_string_equal(c.text, want);
    size_t seps = 0;
    for (const char *p = want; *p; p++)
        seps += *p == '|';
    assert_int_equal(count, *want ? seps + 1 : 0);
}

/* The addresses of one "To:" field whose value is v. */
static void check_to(const char *v, const char *want)
{
    char msg[2048];
    snprintf(msg, sizeof msg, "To:%s\r\n\r\n", v);
    check_addresses(msg, "To", want);
}

static void test_addresses_mailboxes(void **state)
{
    (void)state;
    check_to(" a@example.org", "a@example.org");
    check_to(" a@example.org, b@example.net", "a@example.org|b@example.net");
    check_to(" Alice <a@example.org>", "a@example.org");
    check_to(" Alice Q. Public <a@example.org>", "a@example.org"); /* obs-phrase */
    check_to(" \"Smith, John\" <j@example.org>, x@example.org", "j@example.org|x@example.org");
    check_to(" \"<fake@evil.test>, q\\\"uoted\" <j@example.org>", "j@example.org");
    check_to(" \"bob@example.org\" <a@example.org>", "a@example.org");
    check_to(" Alice<a@example.org>,Bob<b@example.org>", "a@example.org|b@example.org");
    check_to(" < a @ example.org >", "a@example.org");
    check_to(" <a@example.org> (Alice)", "a@example.org");
    check_to(" a@Example.ORG", "a@example.org");         /* the domain lower-cased */
    check_to(" Alice@example.org", "Alice@example.org"); /* the local part kept */
}

static void test_addresses_comments_and_quotes(void **state)
{
    (void)state;
    check_to(" a@example.org (Alice (the (first)) <x@evil.test>)", "a@example.org");
    check_to(" (c) a(c)@(c)example.org(c)", "a@example.org");
    check_to(" a@example.org (unclosed <x@evil.test>, b@example.org", "a@example.org");
    check_to(" (\\) still a comment b@evil.test) a@example.org", "a@example.org");
    check_to(" \"john doe\"@example.org", "\"john doe\"@example.org");
    check_to(" \"a\\\"b\"@example.org", "\"a\\\"b\"@example.org");
    check_to(" \"a@b\"@example.org", "\"a@b\"@example.org");
    check_to(" \"unclosed@example.org", "");
    check_to(" a@[192.0.2.1]", "a@[192.0.2.1]");
    check_to(" a@[IPv6:2001:db8::1], b@example.org", "a@[ipv6:2001:db8::1]|b@example.org");
}

static void test_addresses_groups_routes_obsolete(void **state)
{
    (void)state;
    check_to(" undisclosed-recipients:;", "");
    check_to(" Friends: a@example.org, B <b@example.org>;, c@example.org",
             "a@example.org|b@example.org|c@example.org");
    check_to(" \"The Team\": a@example.org;", "a@example.org");
    check_to(" <@relay.test,@other.test:a@example.org>", "a@example.org");
    check_to(" Alice <@relay.test:a@example.org>, b@example.org", "a@example.org|b@example.org");
    check_to(" john . doe @ example . org", "john.doe@example.org");
    check_to(" \"john\".\"doe\"@example.org", "\"john\".\"doe\"@example.org");
    check_to(" john..doe@example.org, john.@example.org",
             "john..doe@example.org|john.@example.org");
    check_to(" ,, a@example.org ,, ,b@example.org,",
             "a@example.org|b@example.org"); /* obs-addr-list */
    check_to("\r\n a@example.org,\r\n\tB\r\n <b@example.org>", "a@example.org|b@example.org");
    check_to(" \"folded\r\n quote\"@example.org", "\"folded quote\"@example.org");
}

static void test_addresses_garbage(void **state)
{
    (void)state;
    check_to(" John Doe", "");
    check_to(" John Doe a@example.org", ""); /* words run together: no address */
    check_to(" a@@example.org, a@b@example.org, @example.org, a@, a@.example.org, a@x..org", "");
    check_to(" a@example.org.", ""); /* a domain does not end in a dot */
    check_to(" <a@example.org, b@example.org", "b@example.org"); /* unclosed angle */
    check_to(" <>, <@route.test>, <@route.test:>", "");
    check_to(" a@\"quoted\".org, a@[1.2.3.4]x, a@x.[1.2.3.4]", "");
    check_to(" a\\b@example.org, a)@example.org, >a@example.org, a>@example.org", "");
    check_to(" a\x01@example.org, b@example.org", "b@example.org");
    check_to(" \"a\x01\"@example.org, \"a\\\x7f\"@example.org, a@[1.2\x02]", "");
    check_to(" \"tab\tin\"@example.org", "\"tab\tin\"@example.org");
    check_to(" a@example.org> trailing, b@example.org", "b@example.org");
    check_to(" <a@example.org> <b@example.org>", "a@example.org"); /* the first one counts */

    /* an address too long for any SMTP path */
    char v[600];
    memset(v, 'a', sizeof v);
    v[0] = ' ';
    memcpy(v + 400, "@example.org, b@example.org", 28);
    check_to(v, "b@example.org");

    /* hostile nesting: linear, no recursion */
    size_t n = 200000;
    char *deep = malloc(n + 64);
    assert_non_null(deep);
    memcpy(deep, "To: ", 4);
    memset(deep + 4, '(', n);
    snprintf(deep + 4 + n, 64, " a@example.org\r\n\r\n");
    check_addresses(deep, "To", "");
    memset(deep + 4, '<', n);
    check_addresses(deep, "To", "");
    for (size_t i = 0; i < n; i++)
        deep[4 + i] = "\"\\"[i % 2];
    check_addresses(deep, "To", "");
    free(deep);
}

static void test_addresses_fields(void **state)
{
    (void)state;
    const char *msg = "From: f@example.org\r\n"
                      "to: a@example.org\r\n"
                      "Cc: c@example.org\r\n"
                      "X-To: x@example.org\r\n"
                      "TO : b@example.org,\r\n"
                      " d@example.org\r\n"
                      "\r\n"
                      "To: body@example.org\r\n";
    check_addresses(msg, "To", "a@example.org|b@example.org|d@example.org");
    check_addresses(msg, "cc", "c@example.org");
    check_addresses(msg, "Bcc", "");
    check_addresses("", "To", "");
    check_addresses("\r\nTo: a@example.org\r\n", "To", "");
}

/* ------------------------------------------------------------------- PROXY */

static void test_proxy_v1(void **state)
{
    (void)state;
    proto_proxy_t p;
    const char v4[] = "PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO x\r\n";
    assert_int_equal(proto_proxy_parse(LIT(v4), &p), 43);
    assert_false(p.local);
    assert_int_equal(p.family, 4);
    assert_memory_equal(p.addr, "\xcb\x00\x71\x07", 4);
    assert_int_equal(p.port, 40000);
    const char v6[] = "PROXY TCP6 2001:db8::1 2001:db8::2 1 587\r\n";
    assert_int_equal(proto_proxy_parse(LIT(v6), &p), (long)sizeof v6 - 1);
    assert_int_equal(p.family, 6);
    assert_int_equal(p.addr[0], 0x20);
    assert_int_equal(p.addr[15], 1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY UNKNOWN\r\n"), &p), 15);
    assert_true(p.local);
    /* incomplete: wait */
    assert_int_equal(proto_proxy_parse(NULL, 0, &p), 0);
    assert_int_equal(proto_proxy_parse(LIT("PROX"), &p), 0);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4"), &p), 0);
    /* malformed */
    assert_int_equal(proto_proxy_parse(LIT("EHLO client\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), &p), -1);
    /* one space apart, plain digits, no junk after UNKNOWN glued on */
    assert_int_equal(proto_proxy_parse(LIT("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY UNKNOWNjunk\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY UNKNOWN anything at all\r\n"), &p), 31);
    assert_true(p.local);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n"), &p), 36);
    char long_line[200];
    memset(long_line, '1', sizeof long_line);
    memcpy(long_line, "PROXY ", 6);
    assert_int_equal(proto_proxy_parse(long_line, sizeof long_line, &p), -1);
}

static void test_proxy_v2(void **state)
{
    (void)state;
    proto_proxy_t p;
    unsigned char h[64] = "\r\n\r\n\0\r\nQUIT\n";
    h[12] = 0x21; /* v2, PROXY */
    h[13] = 0x11; /* TCP over IPv4 */
    h[14] = 0;
    h[15] = 12 + 3;                        /* addresses and one 3-octet TLV */
    memcpy(h + 16, "\xc6\x33\x64\x09", 4); /* 198.51.100.9 */
    memcpy(h + 20, "\x7f\x00\x00\x01", 4);
    h[24] = 0x30, h[25] = 0x39; /* 12345 */
    h[26] = 0, h[27] = 25;
    h[28] = 0x04, h[29] = 0, h[30] = 0; /* a NOOP TLV */
    assert_int_equal(proto_proxy_parse((const char *)h, 31, &p), 31);
    assert_int_equal(p.family, 4);
    assert_memory_equal(p.addr, "\xc6\x33\x64\x09", 4);
    assert_int_equal(p.port, 12345);
    for (size_t n = 0; n < 31; n++) /* any prefix: wait for more */
        assert_int_equal(proto_proxy_parse((const char *)h, n, &p), 0);
    h[12] = 0x20; /* LOCAL */
    assert_int_equal(proto_proxy_parse((const char *)h, 31, &p), 31);
    assert_true(p.local);
    h[12] = 0x21;
    h[13] = 0x12; /* UDP over IPv4 */
    assert_int_equal(proto_proxy_parse((const char *)h, 31, &p), -1);
    h[13] = 0x21; /* IPv6 needs 36 octets of addresses */
    assert_int_equal(proto_proxy_parse((const char *)h, 31, &p), -1);
    h[12] = 0x11; /* version 1 in a v2 header */
    assert_int_equal(proto_proxy_parse((const char *)h, 31, &p), -1);
}

/* --------------------------------------------------------------------- DSN */

static bool xtext(const char *s)
{
    return proto_xtext_valid(s, strlen(s));
}

static void test_xtext(void **state)
{
    (void)state;
    assert_true(xtext("abc"));
    assert_true(xtext("a+2Bb+3D"));
    assert_true(xtext(""));
    assert_false(xtext("a b"));
    assert_false(xtext("a=b"));
    assert_false(xtext("a+2b")); /* hex must be upper case */
    assert_false(xtext("a+2"));
    assert_false(xtext("a+"));
    assert_false(xtext("caf\xc3\xa9"));
}

static int notify(const char *s)
{
    return proto_dsn_notify(s, strlen(s));
}

static void test_dsn_notify(void **state)
{
    (void)state;
    assert_int_equal(notify("NEVER"), PROTO_NOTIFY_NEVER);
    assert_int_equal(notify("success,Failure"), PROTO_NOTIFY_SUCCESS | PROTO_NOTIFY_FAILURE);
    assert_int_equal(notify("DELAY"), PROTO_NOTIFY_DELAY);
    assert_int_equal(notify("NEVER,FAILURE"), -1);
    assert_int_equal(notify("FAILURE,FAILURE"), -1);
    assert_int_equal(notify("FAILURE,"), -1);
    assert_int_equal(notify(",FAILURE"), -1);
    assert_int_equal(notify(""), -1);
    assert_int_equal(notify("SOMETIMES"), -1);
}

static bool orcpt(const char *s, bool utf8)
{
    return proto_dsn_orcpt_valid(s, strlen(s), utf8);
}

static void test_dsn_orcpt(void **state)
{
    (void)state;
    assert_true(orcpt("rfc822;user@example.test", false));
    assert_true(orcpt("RFC822;a+2Bb@example.test", false));
    assert_false(orcpt("rfc822;", false));
    assert_false(orcpt(";user@example.test", false));
    assert_false(orcpt("user@example.test", false));
    assert_false(orcpt("rfc822;a b@example.test", false));
    assert_false(orcpt("utf-8;j\xc3\xb6rg@example.test", false));
    assert_true(orcpt("utf-8;j\xc3\xb6rg@example.test", true));
    assert_false(orcpt("utf-8;j\xc3(rg@example.test", true));    /* bad continuation */
    assert_false(orcpt("utf-8;j\xc0\xafrg@example.test", true)); /* overlong */
    char big[PROTO_ORCPT_MAX + 2];
    memset(big, 'a', sizeof big - 1);
    memcpy(big, "rfc822;", 7);
    big[sizeof big - 1] = 0;
    assert_false(orcpt(big, false));
    big[sizeof big - 2] = 0;
    assert_true(orcpt(big, false));
}

static void test_param_find(void **state)
{
    (void)state;
    char v[16];
    const char *list = "BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abcdefghijklmnopqrstuvwxyz";
    assert_true(proto_param_find(list, "body", v, sizeof v));
    assert_string_equal(v, "8BITMIME");
    assert_true(proto_param_find(list, "SMTPUTF8", v, sizeof v));
    assert_string_equal(v, "");
    assert_true(proto_param_find(list, "ENVID", v, sizeof v));
    assert_string_equal(v, "abcdefghijklmno"); /* cut to fit */
    assert_false(proto_param_find(list, "SMTP", v, sizeof v));
    assert_false(proto_param_find(list, "NOTIFY", v, sizeof v));
    assert_false(proto_param_find("", "BODY", v, sizeof v));
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

/* -------------------------------------------------------------------- DATA */

typedef struct decoded {
    char *out;
    size_t out_len;
    size_t consumed;
    enum proto_data_error error;
    bool done;
} decoded_t;

enum chunking { ONE_SHOT, BYTE_BY_BYTE, RANDOM_CHUNKS };

static unsigned rng_state = 12345;

static unsigned rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 16) & 0x7fff;
}

/* Feeds in to a fresh decoder in chunks, checking the promises of each call. */
static decoded_t decode(const char *in, size_t len, size_t max_line, size_t max_size,
                        enum chunking how)
{
    decoded_t r = {test_malloc(len + 1), 0, 0, PROTO_DATA_OK, false};
    assert_non_null(r.out);
    proto_data_t d;
    proto_data_init(&d, max_line, max_size);
    while (r.consumed < len && !d.done) {
        size_t n = len - r.consumed;
        if (how == BYTE_BY_BYTE)
            n = 1;
        else if (how == RANDOM_CHUNKS && n > 1)
            n = 1 + rng() % (n < 17 ? n : 17);
        size_t got = 0;
        size_t used = proto_data_feed(&d, in + r.consumed, n, r.out + r.out_len, &got);
        assert_true(used <= n);
        assert_true(got <= used);
        if (used < n) assert_true(d.done); /* stops early only at the end marker */
        r.consumed += used;
        r.out_len += got;
    }
    r.error = d.error;
    r.done = d.done;
    /* once done, more input is left alone */
    if (d.done) {
        size_t got = 99;
        assert_int_equal(proto_data_feed(&d, LIT("more\r\n"), r.out + r.out_len, &got), 0);
        assert_int_equal(got, 0);
    }
    return r;
}

static void expect_data(const char *in, size_t len, size_t max_line, size_t max_size,
                        const char *want, size_t want_len, size_t want_consumed,
                        enum proto_data_error want_error, bool want_done)
{
    static const enum chunking modes[] = {ONE_SHOT, BYTE_BY_BYTE, RANDOM_CHUNKS, RANDOM_CHUNKS};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        decoded_t r = decode(in, len, max_line, max_size, modes[m]);
        if (r.error != want_error || r.done != want_done || r.consumed != want_consumed)
            fail_msg("mode %zu: error %d done %d consumed %zu, expected %d %d %zu", m, r.error,
                     r.done, r.consumed, want_error, want_done, want_consumed);
        if (want) {
            assert_int_equal(r.out_len, want_len);
            assert_memory_equal(r.out, want, want_len);
        }
        test_free(r.out);
    }
}

static void test_data_plain(void **state)
{
    (void)state;
    static const char msg[] = "Subject: hi\r\n\r\nHello.\r\nBye.\r\n.\r\n";
    static const char want[] = "Subject: hi\r\n\r\nHello.\r\nBye.\r\n";
    expect_data(LIT(msg), 1000, 1 << 20, LIT(want), sizeof msg - 1, PROTO_DATA_OK, true);
}

static void test_data_unstuffing(void **state)
{
    (void)state;
    expect_data(LIT("..x\r\n.\r\n"), 1000, 1000, LIT(".x\r\n"), 8, PROTO_DATA_OK, true);
    expect_data(LIT("a\r\n..\r\n...\r\n.\r\n"), 1000, 1000, LIT("a\r\n.\r\n..\r\n"), 15,
                PROTO_DATA_OK, true);
    /* a dot not at the start of a line stays */
    expect_data(LIT("a.b.\r\n.\r\n"), 1000, 1000, LIT("a.b.\r\n"), 9, PROTO_DATA_OK, true);
}

static void test_data_empty(void **state)
{
    (void)state;
    expect_data(LIT(".\r\n"), 1000, 1000, LIT(""), 3, PROTO_DATA_OK, true);
    expect_data(LIT("\r\n.\r\n"), 1000, 1000, LIT("\r\n"), 5, PROTO_DATA_OK, true);
}

static void test_data_marker_split(void **state)
{
    (void)state;
    static const char msg[] = "line one\r\nline two\r\n.\r\n";
    proto_data_t d;
    char out[sizeof msg];
    size_t total = 0;
    proto_data_init(&d, 1000, 1000);
    for (size_t i = 0; i < sizeof msg - 1; i++) {
        size_t got;
        assert_false(d.done);
        assert_int_equal(proto_data_feed(&d, msg + i, 1, out + total, &got), 1);
        total += got;
    }
    assert_true(d.done);
    assert_int_equal(d.error, PROTO_DATA_OK);
    assert_int_equal(total, sizeof msg - 4);
    assert_memory_equal(out, "line one\r\nline two\r\n", total);

    /* marker split as "\r" | "\n." | "\r" | "\n" */
    proto_data_init(&d, 1000, 1000);
    size_t got;
    assert_int_equal(proto_data_feed(&d, LIT("x\r"), out, &got), 2);
    assert_int_equal(proto_data_feed(&d, LIT("\n."), out, &got), 2);
    assert_false(d.done);
    assert_int_equal(proto_data_feed(&d, LIT("\r"), out, &got), 1);
    assert_false(d.done);
    assert_int_equal(got, 0); /* the end marker is not content */
    assert_int_equal(proto_data_feed(&d, LIT("\nQUIT\r\n"), out, &got), 1);
    assert_true(d.done);
    assert_int_equal(got, 0);
}

static void test_data_rest_unconsumed(void **state)
{
    (void)state;
    static const char in[] = "body\r\n.\r\nQUIT\r\n";
    expect_data(LIT(in), 1000, 1000, LIT("body\r\n"), 9, PROTO_DATA_OK, true);
    proto_data_t d;
    char out[sizeof in];
    size_t got;
    proto_data_init(&d, 1000, 1000);
    size_t used = proto_data_feed(&d, LIT(in), out, &got);
    assert_int_equal(used, 9);
    assert_memory_equal(in + used, "QUIT\r\n", 6);
    /* pipelined: the next message's DATA starts right after */
    expect_data(LIT(".\r\n.\r\n"), 1000, 1000, LIT(""), 3, PROTO_DATA_OK, true);
}

static void test_data_no_end(void **state)
{
    (void)state;
    static const char in[] = "body\r\n.x\r\n";
    expect_data(LIT(in), 1000, 1000, LIT("body\r\nx\r\n"), sizeof in - 1, PROTO_DATA_OK, false);
}

/* Each smuggling end marker, then a smuggled command, then the real end. The
 * decoder must flag the bare line ending, keep going, end only at the real
 * marker, and write nothing once the error is known. */
static void test_data_smuggling(void **state)
{
    (void)state;
    static const struct {
        const char *fake;
        enum proto_data_error error;
    } cases[] = {
        {"\n.\n", PROTO_DATA_BARE_LF},   {"\n.\r\n", PROTO_DATA_BARE_LF},
        {"\r.\r", PROTO_DATA_BARE_CR},   {"\r\n.\n", PROTO_DATA_BARE_LF},
        {"\r\n.\r", PROTO_DATA_BARE_CR}, {"\r.\r\n", PROTO_DATA_BARE_CR},
        {"\n.\r", PROTO_DATA_BARE_LF},
    };
    static const char smuggled[] = "MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\n";
    static const char tail[] = "QUIT\r\n";
    static const char head[] = "Subject: a\r\n\r\nhello\r\n";
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char in[256];
        int n = snprintf(in, sizeof in, "Subject: a\r\n\r\nhello%s%sevil\r\n.\r\n%s", cases[i].fake,
                         smuggled, tail);
        assert_true(n > 0 && (size_t)n < sizeof in);
        size_t len = (size_t)n;
        static const enum chunking modes[] = {ONE_SHOT, BYTE_BY_BYTE, RANDOM_CHUNKS};
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            decoded_t r = decode(in, len, 1000, 1 << 20, modes[m]);
            bool ok = r.done && r.consumed == len - strlen(tail) && r.error == cases[i].error &&
                      /* everything before the fake marker is content; nothing after it is */
                      r.out_len >= strlen("Subject: a\r\n\r\nhello") && r.out_len <= strlen(head) &&
                      !memcmp(r.out, head, r.out_len);
            if (!ok) {
                print_error("fake end marker #%zu (mode %zu): done %d, consumed %zu of %zu "
                            "(expected %zu), error %d (expected %d), %zu octets of content\n",
                            i, m, r.done, r.consumed, len, len - strlen(tail), r.error,
                            cases[i].error, r.out_len);
                failures++;
            }
            test_free(r.out);
        }
    }
    if (failures) fail_msg("%d decodes ended at a fake end marker or misreported it", failures);
}

static void test_data_bare_line_endings(void **state)
{
    (void)state;
    expect_data(LIT("a\nb\r\n.\r\n"), 1000, 1000, LIT("a"), 8, PROTO_DATA_BARE_LF, true);
    expect_data(LIT("a\rb\r\n.\r\n"), 1000, 1000, NULL, 0, 8, PROTO_DATA_BARE_CR, true);
    expect_data(LIT("a\r\r\nb\r\n.\r\n"), 1000, 1000, NULL, 0, 10, PROTO_DATA_BARE_CR, true);
    /* the first error is kept */
    expect_data(LIT("a\rb\nc\r\n.\r\n"), 1000, 1000, NULL, 0, 10, PROTO_DATA_BARE_CR, true);
    expect_data(LIT("a\nb\rc\r\n.\r\n"), 1000, 1000, NULL, 0, 10, PROTO_DATA_BARE_LF, true);
}

/* Chunked (BDAT) content: fed in two pieces split at every position. */
static void expect_chunked(const char *in, size_t len, size_t max_line, size_t max_size,
                           const char *want, size_t want_len, enum proto_data_error want_error)
{
    for (size_t split = 0; split <= len; split++) {
        proto_data_t d;
        char *out = test_malloc(len + 1);
        size_t n1 = 0, n2 = 0;
        proto_chunk_init(&d, max_line, max_size);
        assert_int_equal(proto_data_feed(&d, in, split, out, &n1), split);
        assert_int_equal(proto_data_feed(&d, in + split, len - split, out + n1, &n2), len - split);
        proto_data_end(&d);
        assert_false(d.done);
        if (d.error != want_error)
            fail_msg("split %zu: error %d, expected %d", split, d.error, want_error);
        if (want_error == PROTO_DATA_OK) {
            assert_int_equal(n1 + n2, want_len);
            assert_memory_equal(out, want, want_len);
        }
        test_free(out);
    }
}

static void test_chunk_content_is_literal(void **state)
{
    (void)state;
    /* a "." line is content: only the count ends a chunk */
    expect_chunked(LIT("a\r\n.\r\n..b\r\n"), 1000, 1000, LIT("a\r\n.\r\n..b\r\n"), PROTO_DATA_OK);
    expect_chunked(LIT(".\r\n"), 1000, 1000, LIT(".\r\n"), PROTO_DATA_OK);
    expect_chunked(LIT("no final line end"), 1000, 1000, LIT("no final line end"), PROTO_DATA_OK);
}

static void test_chunk_line_rules(void **state)
{
    (void)state;
    expect_chunked(LIT("a\n.\nb\r\n"), 1000, 1000, NULL, 0, PROTO_DATA_BARE_LF);
    expect_chunked(LIT("a\r.\rb\r\n"), 1000, 1000, NULL, 0, PROTO_DATA_BARE_CR);
    expect_chunked(LIT("ends in CR\r"), 1000, 1000, NULL, 0, PROTO_DATA_BARE_CR);
    expect_chunked(LIT("0123456789\r\n"), 5, 1000, NULL, 0, PROTO_DATA_LONG_LINE);
    expect_chunked(LIT("0123456789\r\n"), 1000, 5, NULL, 0, PROTO_DATA_TOO_BIG);
}

static char *make_line(size_t n, char fill, const char *suffix, size_t *len)
{
    size_t sl = strlen(suffix);
    char *s = test_malloc(n + sl + 1);
    assert_non_null(s);
    memset(s, fill, n);
    memcpy(s + n, suffix, sl + 1);
    *len = n + sl;
    return s;
}

/* A large body of bare LFs in one buffer (what a client can send while
 * the session is busy): refused, and read to its real end in one pass.
 * Each line end once meant a search to the end of the buffer, so the cost
 * grew with the square of the buffer; this runs in milliseconds now. */
static void test_data_many_bare_lfs(void **state)
{
    (void)state;
    size_t n = 4u << 20;
    char *in = malloc(n + 5), *out = malloc(n + 5);
    assert_non_null(in);
    assert_non_null(out);
    for (size_t i = 0; i < n; i += 2)
        in[i] = 'a', in[i + 1] = '\n';
    memcpy(in + n, "\r\n.\r\n", 5);
    proto_data_t d;
    proto_data_init(&d, 1000, 64u << 20);
    size_t got = 0;
    assert_int_equal(proto_data_feed(&d, in, n + 5, out, &got), n + 5);
    assert_true(d.done);
    assert_int_equal(d.error, PROTO_DATA_BARE_LF);
    free(in);
    free(out);
}

static void test_data_line_length(void **state)
{
    (void)state;
    size_t len;
    char *in = make_line(998, 'x', "\r\n.\r\n", &len);
    expect_data(in, len, 1000, 1 << 20, in, 1000, len, PROTO_DATA_OK, true);
    test_free(in);

    in = make_line(999, 'x', "\r\n.\r\n", &len);
    expect_data(in, len, 1000, 1 << 20, NULL, 0, len, PROTO_DATA_LONG_LINE, true);
    test_free(in);

    /* the transparency dot does not count (RFC 5321 §4.5.3.1.6): 1001 octets
     * sent, a 1000-octet line */
    in = make_line(999, '.', "\r\n.\r\n", &len);
    expect_data(in, len, 1000, 1 << 20, in + 1, 1000, len, PROTO_DATA_OK, true);
    test_free(in);
    in = make_line(1000, '.', "\r\n.\r\n", &len);
    expect_data(in, len, 1000, 1 << 20, NULL, 0, len, PROTO_DATA_LONG_LINE, true);
    test_free(in);

    /* many lines of 998 are fine: the count starts again on each line */
    char *big = test_malloc(5 * 1000 + 4);
    assert_non_null(big);
    for (int i = 0; i < 5; i++) {
        memset(big + (size_t)i * 1000, 'a' + i, 998);
        memcpy(big + (size_t)i * 1000 + 998, "\r\n", 2);
    }
    memcpy(big + 5000, ".\r\n", 3);
    expect_data(big, 5003, 1000, 1 << 20, big, 5000, 5003, PROTO_DATA_OK, true);
    test_free(big);

    /* the end marker still ends an over-long message */
    in = make_line(5000, 'y', "\r\n.\r\nQUIT\r\n", &len);
    expect_data(in, len, 1000, 1 << 20, NULL, 0, len - 6, PROTO_DATA_LONG_LINE, true);
    test_free(in);
}

static void test_data_too_big(void **state)
{
    (void)state;
    /* exactly max_size octets of content is fine */
    expect_data(LIT("12345678\r\n.\r\n"), 1000, 10, LIT("12345678\r\n"), 13, PROTO_DATA_OK, true);
    expect_data(LIT("123456789\r\n.\r\n"), 1000, 10, LIT("123456789\r"), 14, PROTO_DATA_TOO_BIG,
                true);

    /* output stops growing, but the marker is still found */
    proto_data_t d;
    char out[64];
    size_t got;
    proto_data_init(&d, 1000, 10);
    assert_int_equal(proto_data_feed(&d, LIT("0123456789abc"), out, &got), 13);
    assert_int_equal(got, 10);
    assert_int_equal(d.error, PROTO_DATA_TOO_BIG);
    assert_int_equal(proto_data_feed(&d, LIT("def\r\nmore\r\n"), out, &got), 11);
    assert_int_equal(got, 0);
    assert_false(d.done);
    assert_int_equal(proto_data_feed(&d, LIT(".\r\nNOOP\r\n"), out, &got), 3);
    assert_int_equal(got, 0);
    assert_true(d.done);
    assert_int_equal(d.error, PROTO_DATA_TOO_BIG);
}

/* Every message above, in every chunking, gives the one-shot result. */
static void test_data_chunking_equivalence(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
    } msgs[] = {
        {LIT("Subject: x\r\n\r\nbody\r\n.\r\n")},
        {LIT("..a\r\n.b\r\n..\r\n.\r\nafter")},
        {LIT(".\r\n")},
        {LIT("a\n.\nb\r\n.\r\n")},
        {LIT("a\r.\rb\r\n.\r\n")},
        {LIT("a\r\n.\nb\r\n.\r\n")},
        {LIT("a\r\n.\rb\r\n.\r\n")},
        {LIT("a\n.\r\nb\r\n.\r\n")},
        {LIT("\r\r\n\n\r\n.\r\n")},
        {LIT("no end at all\r\n")},
        {LIT("0123456789012345678901234567890123456789\r\nx\r\n.\r\n")},
        {LIT("a\r\n\r\n.\r\n.\r\n")},
        {LIT("\x00\xff\x80.\r\n\r\n.\r\n")},
    };
    static const size_t limits[][2] = {{1000, 1 << 20}, {8, 1 << 20}, {1000, 12}, {5, 5}};
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        for (size_t l = 0; l < sizeof limits / sizeof limits[0]; l++) {
            decoded_t one = decode(msgs[i].s, msgs[i].len, limits[l][0], limits[l][1], ONE_SHOT);
            for (int rep = 0; rep < 20; rep++) {
                enum chunking how = rep == 0 ? BYTE_BY_BYTE : RANDOM_CHUNKS;
                decoded_t r = decode(msgs[i].s, msgs[i].len, limits[l][0], limits[l][1], how);
                if (r.consumed != one.consumed || r.done != one.done || r.error != one.error ||
                    r.out_len != one.out_len || memcmp(r.out, one.out, r.out_len))
                    fail_msg("message #%zu limits #%zu differs when chunked", i, l);
                test_free(r.out);
            }
            test_free(one.out);
        }
    }
}

/* ------------------------------------------------------------ dot-stuffing */

static void check_stuff_roundtrip(const char *body, size_t len)
{
    size_t n = proto_dot_stuffed_len(body, len);
    char *stuffed = test_malloc(n + 1);
    assert_non_null(stuffed);
    stuffed[n] = '#'; /* writes exactly n octets */
    proto_dot_stuff(body, len, stuffed);
    assert_int_equal(stuffed[n], '#');
    assert_true(n >= 3);
    assert_memory_equal(stuffed + n - 3, ".\r\n", 3);
    if (len) assert_true(n >= 5 && !memcmp(stuffed + n - 5, "\r\n.\r\n", 5));

    /* no line of the stuffed text but the last is "." */
    for (size_t i = 0; i + 3 < n; i++)
        if ((i == 0 || stuffed[i - 1] == '\n') && !memcmp(stuffed + i, ".\r\n", 3))
            fail_msg("early end marker at %zu", i);

    bool has_crlf = len >= 2 && body[len - 2] == '\r' && body[len - 1] == '\n';
    size_t want_len = len + (len && !has_crlf ? 2 : 0);
    decoded_t r = decode(stuffed, n, n + 1, n + 1, ONE_SHOT);
    assert_true(r.done);
    assert_int_equal(r.error, PROTO_DATA_OK);
    assert_int_equal(r.consumed, n);
    assert_int_equal(r.out_len, want_len);
    assert_memory_equal(r.out, body, len);
    if (want_len > len) assert_memory_equal(r.out + len, "\r\n", 2);
    test_free(r.out);
    test_free(stuffed);
}

static void test_dot_stuff_roundtrip(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
    } bodies[] = {
        {LIT("")},           {LIT("a")},         {LIT("\r\n")},
        {LIT("hello\r\n")},  {LIT(".")},         {LIT(".\r\n")},
        {LIT("..\r\n")},     {LIT(".a\r\n.b")},  {LIT("x\r\n.\r\n.")},
        {LIT("x\r\n.\r\n")}, {LIT("\r\n.\r\n")}, {LIT("a\r\n\r\n..\r\n...x\r\ny")},
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        check_stuff_roundtrip(bodies[i].s, bodies[i].len);
}

static void test_dot_stuff_exact(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(proto_dot_stuffed_len("", 0), 3);
    proto_dot_stuff("", 0, out);
    assert_memory_equal(out, ".\r\n", 3);

    assert_int_equal(proto_dot_stuffed_len(LIT(".a")), 8);
    proto_dot_stuff(LIT(".a"), out);
    assert_memory_equal(out, "..a\r\n.\r\n", 8);

    assert_int_equal(proto_dot_stuffed_len(LIT("a\r\n.\r\n")), 10);
    proto_dot_stuff(LIT("a\r\n.\r\n"), out);
    assert_memory_equal(out, "a\r\n..\r\n.\r\n", 10);

    assert_int_equal(proto_dot_stuffed_len(LIT("x.y\r\n")), 8);
    proto_dot_stuff(LIT("x.y\r\n"), out);
    assert_memory_equal(out, "x.y\r\n.\r\n", 8);
}

/* Random bodies made of CRLF lines, some with leading dots. */
static void test_dot_stuff_random(void **state)
{
    (void)state;
    static const char alphabet[] = "..ab \t";
    for (int iter = 0; iter < 500; iter++) {
        char body[128];
        size_t len = 0;
        size_t want = rng() % 100;
        while (len + 3 < want) {
            unsigned k = rng() % 8;
            if (k == 0) {
                body[len++] = '\r';
                body[len++] = '\n';
            } else {
                body[len++] = alphabet[rng() % (sizeof alphabet - 1)];
            }
        }
        check_stuff_roundtrip(body, len);
    }
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
        cmocka_unit_test(test_data_plain),
        cmocka_unit_test(test_data_unstuffing),
        cmocka_unit_test(test_data_empty),
        cmocka_unit_test(test_data_marker_split),
        cmocka_unit_test(test_data_rest_unconsumed),
        cmocka_unit_test(test_data_no_end),
        cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_bare_line_endings),
        cmocka_unit_test(test_data_many_bare_lfs),
        cmocka_unit_test(test_data_line_length),
        cmocka_unit_test(test_data_too_big),
        cmocka_unit_test(test_data_chunking_equivalence),
        cmocka_unit_test(test_dot_stuff_roundtrip),
        cmocka_unit_test(test_dot_stuff_exact),
        cmocka_unit_test(test_dot_stuff_random),
        cmocka_unit_test(test_reply_line),
        cmocka_unit_test(test_path_postmaster),
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_dsn_notify),
        cmocka_unit_test(test_dsn_orcpt),
        cmocka_unit_test(test_param_find),
        cmocka_unit_test(test_header_has),
        cmocka_unit_test(test_header_iter),
        cmocka_unit_test(test_header_iter_edges),
        cmocka_unit_test(test_addresses_mailboxes),
        cmocka_unit_test(test_addresses_comments_and_quotes),
        cmocka_unit_test(test_addresses_groups_routes_obsolete),
        cmocka_unit_test(test_addresses_garbage),
        cmocka_unit_test(test_addresses_fields),
        cmocka_unit_test(test_proxy_v1),
        cmocka_unit_test(test_proxy_v2),
        cmocka_unit_test(test_chunk_content_is_literal),
        cmocka_unit_test(test_chunk_line_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
