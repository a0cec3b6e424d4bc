/* Unit tests for proto/'s message-header readers: field lookup and
 * iteration, the addresses in To/Cc-style fields, and the PROXY protocol
 * header that can precede a session. */
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
#include "proto_test.h"

/* ----------------------------------------------------------- header fields */

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
    /* A NUL (or any octet that is not printable ASCII) is no part of a v1
     * line: read as C strings, these fields were once taken for 1.2.3.4, 2
     * and UNKNOWN. */
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4\0x 5.6.7.8 1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP6 ::1\0 ::1 1 2\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY UNKNOWN\0junk\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY UNKNOWN \x01\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY UNKNOWN \xc3\xa9\r\n"), &p), -1);
    assert_int_equal(proto_proxy_parse(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n"), &p), -1);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
