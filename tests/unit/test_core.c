/* Unit tests for core/: network addresses (CIDR, host:port, sockaddr), byte
 * buffers, utilities, logging and metrics. The configuration loader is in
 * test_config.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "core/core.h"

/* ----------------------------------------------------------------- helpers */

static struct sockaddr_storage sockaddr_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
        sin6->sin6_family = AF_INET6;
    }
    return ss;
}

static bool cidr_matches(const char *cidr, const char *addr)
{
    net_cidr_t c;
    if (net_cidr_parse(cidr, &c) < 0) fail_msg("'%s' did not parse", cidr);
    struct sockaddr_storage ss = sockaddr_of(addr);
    return net_cidr_match(&c, (const struct sockaddr *)&ss);
}

/* -------------------------------------------------------------------- CIDR */

static void test_cidr_parse(void **state)
{
    (void)state;
    net_cidr_t c;
    assert_int_equal(net_cidr_parse("10.0.0.0/8", &c), 0);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 8);
    assert_int_equal(c.addr[0], 10);

    assert_int_equal(net_cidr_parse("192.0.2.7", &c), 0);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(c.addr[3], 7);

    assert_int_equal(net_cidr_parse("::1/128", &c), 0);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(c.addr[15], 1);

    assert_int_equal(net_cidr_parse("2001:db8::", &c), 0);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(c.addr[0], 0x20);

    assert_int_equal(net_cidr_parse("0.0.0.0/0", &c), 0);
    assert_int_equal(c.prefix, 0);
    assert_int_equal(net_cidr_parse("::/0", &c), 0);
    assert_int_equal(c.prefix, 0);
    assert_int_equal(net_cidr_parse("10.0.0.0/32", &c), 0);
    assert_int_equal(c.prefix, 32);
}

static void test_cidr_parse_bad(void **state)
{
    (void)state;
    net_cidr_t c;
    static const char *const bad[] = {
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/8x",
        "10.0.0.0/8/8",
        "/8",
        "",
        "10.0.0/8",
        "300.0.0.0/8",
        "example.test",
        "10.0.0.0/99999999999999999999",
        "1:2:3:4:5:6:7:8:9/64",
        "::1/1x",
        "aaaa:aaaa:aaaa:aaaa:aaaa:aaaa:aaaa:aaaa:aaaa:aaaa:aaaa:aaaa/8",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (net_cidr_parse(bad[i], &c) == 0) fail_msg("'%s' was accepted", bad[i]);
}

static void test_cidr_match_v4(void **state)
{
    (void)state;
    assert_true(cidr_matches("127.0.0.0/8", "127.0.0.1"));
    assert_true(cidr_matches("127.0.0.0/8", "127.255.255.255"));
    assert_false(cidr_matches("127.0.0.0/8", "128.0.0.1"));
    assert_false(cidr_matches("127.0.0.0/8", "126.255.255.255"));

    assert_true(cidr_matches("192.0.2.1/32", "192.0.2.1"));
    assert_false(cidr_matches("192.0.2.1/32", "192.0.2.0"));
    assert_true(cidr_matches("192.0.2.1", "192.0.2.1"));
    assert_false(cidr_matches("192.0.2.1", "192.0.2.2"));

    assert_true(cidr_matches("0.0.0.0/0", "8.8.8.8"));
    assert_true(cidr_matches("0.0.0.0/0", "255.255.255.255"));

    /* prefixes that are not whole octets */
    assert_true(cidr_matches("10.0.0.0/9", "10.127.255.255"));
    assert_false(cidr_matches("10.0.0.0/9", "10.128.0.0"));
    assert_true(cidr_matches("192.168.1.0/31", "192.168.1.1"));
    assert_false(cidr_matches("192.168.1.0/31", "192.168.1.2"));
    /* host bits in the network are ignored */
    assert_true(cidr_matches("10.1.2.3/8", "10.200.0.1"));
}

static void test_cidr_match_v6(void **state)
{
    (void)state;
    assert_true(cidr_matches("::1/128", "::1"));
    assert_false(cidr_matches("::1/128", "::2"));
    assert_true(cidr_matches("2001:db8::/32", "2001:db8:ffff::1"));
    assert_false(cidr_matches("2001:db8::/32", "2001:db9::1"));
    assert_true(cidr_matches("2001:db8::/33", "2001:db8:7fff::1"));
    assert_false(cidr_matches("2001:db8::/33", "2001:db8:8000::1"));
    assert_true(cidr_matches("::/0", "2001:db8::1"));
    assert_true(cidr_matches("fe80::/10", "febf::1"));
    assert_false(cidr_matches("fe80::/10", "fec0::1"));

    /* families do not mix, except through v4-mapped addresses */
    assert_false(cidr_matches("::1/128", "127.0.0.1"));
    assert_false(cidr_matches("127.0.0.0/8", "::1"));
    assert_false(cidr_matches("10.0.0.0/8", "::10.0.0.1")); /* v4-compatible is not mapped */
}

static void test_cidr_match_mapped(void **state)
{
    (void)state;
    assert_true(cidr_matches("127.0.0.0/8", "::ffff:127.0.0.1"));
    assert_true(cidr_matches("127.0.0.1", "::ffff:127.0.0.1"));
    assert_false(cidr_matches("127.0.0.0/8", "::ffff:10.0.0.1"));
    assert_true(cidr_matches("10.0.0.0/9", "::ffff:10.1.2.3"));
    assert_false(cidr_matches("10.0.0.0/9", "::ffff:10.128.0.1"));
    assert_true(cidr_matches("0.0.0.0/0", "::ffff:1.2.3.4"));
}

static void test_cidr_match_other_family(void **state)
{
    (void)state;
    net_cidr_t c;
    assert_int_equal(net_cidr_parse("0.0.0.0/0", &c), 0);
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    assert_false(net_cidr_match(&c, (const struct sockaddr *)&un));
}

/* --------------------------------------------------------------- host:port */

static void test_hostport_parse(void **state)
{
    (void)state;
    net_hostport_t hp;
    assert_int_equal(net_hostport_parse("h:25", 0, &hp), 0);
    assert_string_equal(hp.host, "h");
    assert_int_equal(hp.port, 25);

    assert_int_equal(net_hostport_parse("mx.example.test:2525", 25, &hp), 0);
    assert_string_equal(hp.host, "mx.example.test");
    assert_int_equal(hp.port, 2525);

    assert_int_equal(net_hostport_parse("[::1]:2525", 0, &hp), 0);
    assert_string_equal(hp.host, "::1");
    assert_int_equal(hp.port, 2525);

    assert_int_equal(net_hostport_parse("h", 25, &hp), 0);
    assert_string_equal(hp.host, "h");
    assert_int_equal(hp.port, 25);

    assert_int_equal(net_hostport_parse("[2001:db8::1]", 587, &hp), 0);
    assert_string_equal(hp.host, "2001:db8::1");
    assert_int_equal(hp.port, 587);

    assert_int_equal(net_hostport_parse("10.0.0.1:65535", 0, &hp), 0);
    assert_string_equal(hp.host, "10.0.0.1");
    assert_int_equal(hp.port, 65535);

    assert_int_equal(net_hostport_parse("h:1", 0, &hp), 0);
    assert_int_equal(hp.port, 1);
}

static void test_hostport_parse_bad(void **state)
{
    (void)state;
    net_hostport_t hp;
    static const char *const bad[] = {
        "::1",  "2001:db8::1:25", "h:0",   "h:70000", "h:65536", "h:", "h:x",  "h:25x", ":25",
        "[::1", "[::1]x",         "[]:25", "[::1]:",  "[::1]:0", "",   "h:-1", "a:b:c",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (net_hostport_parse(bad[i], 25, &hp) == 0) fail_msg("'%s' was accepted", bad[i]);
    /* no default port: the port is required */
    assert_int_equal(net_hostport_parse("h", 0, &hp), -1);
    assert_int_equal(net_hostport_parse("[::1]", 0, &hp), -1);

    /* the host must fit */
    char text[300];
    memset(text, 'a', 255);
    snprintf(text + 255, sizeof text - 255, ":25");
    assert_int_equal(net_hostport_parse(text, 0, &hp), 0);
    assert_int_equal(strlen(hp.host), 255);
    memset(text, 'a', 256);
    snprintf(text + 256, sizeof text - 256, ":25");
    assert_int_equal(net_hostport_parse(text, 0, &hp), -1);
}

static void test_sockaddr_from(void **state)
{
    (void)state;
    net_hostport_t hp;
    struct sockaddr_storage ss;
    char text[64];

    assert_int_equal(net_hostport_parse("127.0.0.1:2525", 0, &hp), 0);
    assert_int_equal(net_sockaddr_from(&hp, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 2525);
    net_addr_text((struct sockaddr *)&ss, text, sizeof text);
    assert_string_equal(text, "127.0.0.1");

    assert_int_equal(net_hostport_parse("[::1]:25", 0, &hp), 0);
    assert_int_equal(net_sockaddr_from(&hp, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 25);
    net_addr_text((struct sockaddr *)&ss, text, sizeof text);
    assert_string_equal(text, "::1");

    assert_int_equal(net_hostport_parse("localhost:26", 0, &hp), 0);
    assert_int_equal(net_sockaddr_from(&hp, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    net_addr_text((struct sockaddr *)&ss, text, sizeof text);
    assert_string_equal(text, "127.0.0.1");

    assert_int_equal(net_hostport_parse("mx.example.test:25", 0, &hp), 0);
    assert_int_equal(net_sockaddr_from(&hp, &ss), -1);
}

/* ------------------------------------------------------------------ buffer */

static void test_domain_valid(void **state)
{
    (void)state;
    char longest[254], label64[80];
    memset(longest, 'a', sizeof longest - 1);
    for (size_t i = 63; i < sizeof longest - 1; i += 64)
        longest[i] = '.';
    longest[sizeof longest - 1] = 0;
    snprintf(label64, sizeof label64, "%064d.test", 0);
    static const char *const good[] = {"example.test", "MX-1.Example.TEST", "a", "3com.test",
                                       "xn--caf-dma.test"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!net_domain_valid(good[i])) fail_msg("'%s' refused", good[i]);
    assert_true(net_domain_valid(longest));
    /* what c-ares writes for octets a host name cannot have ("\\000", "\\.") */
    static const char *const bad[] = {"",          "mx\\000a.test",    "m\\.x.test", "m x.test",
                                      "m\"x.test", "m\\195\\169.test", "a..test",    ".test",
                                      "test.",     "-mx.test",         "mx-.test",   "mx_1.test",
                                      "mx\r.test"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (net_domain_valid(bad[i])) fail_msg("'%s' accepted", bad[i]);
    assert_false(net_domain_valid(label64));
    char too_long[256];
    snprintf(too_long, sizeof too_long, "%s.b", longest);
    assert_false(net_domain_valid(too_long));
}

static void test_parse_decimal(void **state)
{
    (void)state;
    unsigned long long v = 7;
    assert_int_equal(util_parse_decimal("0", 1, &v), 0);
    assert_true(v == 0);
    assert_int_equal(util_parse_decimal("18446744073709551615", 20, &v), 0);
    assert_true(v == ULLONG_MAX);
    /* only the octets given count: "12" of "123" */
    assert_int_equal(util_parse_decimal("123", 2, &v), 0);
    assert_true(v == 12);
    static const char *const bad[] = {"",
                                      "-1",
                                      "+1",
                                      " 1",
                                      "1 ",
                                      "1x",
                                      "0x10",
                                      "18446744073709551616",
                                      "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 7;
        if (util_parse_decimal(bad[i], strlen(bad[i]), &v) == 0) fail_msg("'%s' accepted", bad[i]);
        assert_true(v == 7);
    }
    assert_int_equal(util_parse_decimal("1\0"
                                        "2",
                                        3, &v),
                     -1); /* a NUL is no digit */
}

static void test_buf_append(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);

    assert_int_equal(buf_append(&b, "hello", 5), 0);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "hello"); /* kept NUL-terminated */
    assert_int_equal(buf_append(&b, " world", 6), 0);
    assert_string_equal(b.data, "hello world");
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_int_equal(b.len, 11);

    /* binary data with NULs, and growth well past the first allocation */
    char big[10000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7);
    assert_int_equal(buf_append(&b, big, sizeof big), 0);
    assert_int_equal(b.len, 11 + sizeof big);
    assert_true(b.cap > b.len);
    assert_memory_equal(b.data, "hello world", 11);
    assert_memory_equal(b.data + 11, big, sizeof big);
    assert_int_equal(b.data[b.len], 0);

    /* an impossible size fails and leaves the buffer alone */
    char *data = b.data;
    size_t len = b.len;
    assert_int_equal(buf_append(&b, "x", SIZE_MAX - 8), -1);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.len, len);

    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_buf_printf(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_printf(&b, "%d-%s", 42, "x"), 0);
    assert_string_equal(b.data, "42-x");
    assert_int_equal(b.len, 4);
    assert_int_equal(buf_printf(&b, "%s", ""), 0);
    assert_int_equal(b.len, 4);
    char big[3001];
    memset(big, 'z', 3000);
    big[3000] = 0;
    assert_int_equal(buf_printf(&b, "[%s]", big), 0);
    assert_int_equal(b.len, 4 + 3002);
    assert_memory_equal(b.data, "42-x[", 5);
    assert_memory_equal(b.data + 5, big, 3000);
    assert_string_equal(b.data + 3005, "]");
    buf_free(&b);
}

static void test_buf_consume_reset(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    buf_consume(&b, 10); /* on an empty buffer: nothing to do, no crash */
    assert_int_equal(b.len, 0);

    assert_int_equal(buf_append(&b, "hello world", 11), 0);
    buf_consume(&b, 0);
    assert_string_equal(b.data, "hello world");
    buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "world");
    buf_consume(&b, 5);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");

    assert_int_equal(buf_append(&b, "abc", 3), 0);
    size_t cap = b.cap;
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap); /* the memory is kept */
    assert_int_equal(buf_append(&b, "xy", 2), 0);
    assert_string_equal(b.data, "xy");
    buf_free(&b);
}

/* --------------------------------------------------------------- utilities */

static void test_random_id(void **state)
{
    (void)state;
    char a[33], b[33];
    memset(a, 'X', sizeof a);
    memset(b, 'X', sizeof b);
    util_random_id(a);
    util_random_id(b);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strlen(b), 32);
    for (int i = 0; i < 32; i++) {
        assert_non_null(strchr("0123456789abcdef", a[i]));
        assert_non_null(strchr("0123456789abcdef", b[i]));
    }
    assert_string_not_equal(a, b);
}

static void test_random_below(void **state)
{
    (void)state;
    assert_int_equal(util_random_below(0), 0);
    assert_int_equal(util_random_below(1), 0);
    bool seen[10] = {false};
    for (int i = 0; i < 2000; i++) {
        uint32_t v = util_random_below(10);
        assert_true(v < 10);
        seen[v] = true;
    }
    for (int i = 0; i < 10; i++)
        assert_true(seen[i]);
}

static void test_time_and_date(void **state)
{
    (void)state;
    int64_t now = util_now_ms();
    assert_true(now > INT64_C(1600000000000));
    char date[64];
    util_rfc5322_date(date, sizeof date);
    /* "Sat, 28 Nov 2026 16:41:52 +0000" */
    assert_int_equal(strlen(date), 31);
    assert_int_equal(date[3], ',');
    assert_int_equal(date[4], ' ');
    assert_string_equal(date + 25, " +0000");
    assert_int_equal(date[19], ':');
    assert_int_equal(date[22], ':');
}

static void test_iso_time(void **state)
{
    (void)state;
    char t[UTIL_ISO_TIME_LEN];
    util_iso_time(0, t);
    assert_string_equal(t, "1970-01-01T00:00:00Z");
    util_iso_time(1796308513, t);
    assert_string_equal(t, "2026-12-03T14:35:13Z");
}

static void test_ascii_lower(void **state)
{
    (void)state;
    char s[] = "MiXeD-123.Test_\xc3\x84Z";
    util_ascii_lower(s);
    assert_string_equal(s, "mixed-123.test_\xc3\x84z");
}

static void test_log_parse_level(void **state)
{
    (void)state;
    enum log_level l = LOG_ERROR;
    assert_int_equal(log_parse_level("debug", &l), 0);
    assert_int_equal(l, LOG_DEBUG);
    assert_int_equal(log_parse_level("WARN", &l), 0);
    assert_int_equal(l, LOG_WARN);
    assert_int_equal(log_parse_level("Error", &l), 0);
    assert_int_equal(l, LOG_ERROR);
    assert_int_equal(log_parse_level("info", &l), 0);
    assert_int_equal(l, LOG_INFO);
    assert_int_equal(log_parse_level("verbose", &l), -1);
    assert_int_equal(log_parse_level("", &l), -1);
}

struct collected {
    char items[16][600];
    int n;
    int fail_at; /* the callback fails on this call (1-based); 0: never */
};

static int collect(const char *item, void *arg)
{
    struct collected *c = arg;
    if (c->n >= 16) return -1;
    snprintf(c->items[c->n], sizeof c->items[c->n], "%s", item);
    c->n++;
    return c->n == c->fail_at ? -1 : 0;
}

static void test_split_list(void **state)
{
    (void)state;
    struct collected c = {.n = 0};
    assert_int_equal(util_split_list("a, b\tc\n,,d  ,e", collect, &c), 0);
    assert_int_equal(c.n, 5);
    assert_string_equal(c.items[0], "a");
    assert_string_equal(c.items[1], "b");
    assert_string_equal(c.items[2], "c");
    assert_string_equal(c.items[3], "d");
    assert_string_equal(c.items[4], "e");

    c.n = 0;
    assert_int_equal(util_split_list("", collect, &c), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(util_split_list(" ,\t,\n ", collect, &c), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(util_split_list("  10.0.0.0/8 ::1/128", collect, &c), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.items[0], "10.0.0.0/8");
    assert_string_equal(c.items[1], "::1/128");

    /* a failing callback stops the walk */
    c.n = 0;
    c.fail_at = 2;
    assert_int_equal(util_split_list("a b c d", collect, &c), -1);
    assert_int_equal(c.n, 2);

    /* an item of 511 characters fits, 512 does not */
    char text[600];
    c.n = 0;
    c.fail_at = 0;
    memset(text, 'x', 511);
    text[511] = 0;
    assert_int_equal(util_split_list(text, collect, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(strlen(c.items[0]), 511);
    memset(text, 'x', 512);
    text[512] = 0;
    assert_int_equal(util_split_list(text, collect, &c), -1);
}

/* An address from a client cannot forge key=value fields in a log line. */
static void test_log_addr_redacts_when_asked(void **state)
{
    (void)state;
    char out[LOG_SAFE_MAX], again[LOG_SAFE_MAX];
    assert_string_equal(log_addr("user@example.test", out), "user@example.test");
    log_set_redact(true, (const unsigned char *)"a key of ours", 13);
    log_addr("user@example.test", out);
    assert_int_equal(strlen(out), 16 + strlen("@example.test"));
    assert_string_equal(out + 16, "@example.test");
    assert_null(strstr(out, "user"));
    assert_string_equal(log_addr("user@example.test", again), out); /* stable: lines match */
    assert_string_not_equal(log_addr("other@example.test", again), out);
    assert_string_equal(log_addr("", out), ""); /* the null sender */
    /* addresses inside a server's reply are masked alike */
    char text[LOG_SAFE_MAX];
    log_addr("user@example.test", out);
    log_text("550 5.1.1 <user@example.test>: no such user", text);
    assert_null(strstr(text, "user@"));
    assert_non_null(strstr(text, out));
    assert_string_equal(log_text("451 4.3.0 \"try\" later", text), "451 4.3.0 \\x22try\\x22 later");
    /* another key, other hashes: a list of likely addresses does not reverse them */
    log_set_redact(true, (const unsigned char *)"another key", 11);
    assert_string_not_equal(log_addr("user@example.test", again), out);
    log_set_redact(false, NULL, 0);
}

static void test_log_safe(void **state)
{
    (void)state;
    char out[LOG_SAFE_MAX];
    assert_string_equal(log_safe("user@example.test", out), "user@example.test");
    assert_string_equal(log_safe("\"x event=accepted\"@evil.test", out),
                        "\\x22x\\x20event=accepted\\x22@evil.test");
    assert_string_equal(log_safe("a\\b\r\n\xc3\xa9", out), "a\\x5cb\\x0d\\x0a\\xc3\\xa9");
    char big[4000];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_true(strlen(log_safe(big, out)) < LOG_SAFE_MAX); /* bounded, still terminated */
}

static void test_metrics_render(void **state)
{
    (void)state;
    static const double bounds[] = {1, 2.5};
    metric_t *h =
        metric_histogram("sealpost_test_seconds", "A test histogram.", "kind=\"x\"", bounds, 2);
    metric_t *c = metric_counter("sealpost_test_total", "A test counter.", "");
    metric_observe(h, 0.5);
    metric_observe(h, 2);
    metric_observe(h, 7);
    metric_add(c, 3);
    assert_ptr_equal(c, metric_counter("sealpost_test_total", "A test counter.", ""));
    buf_t out;
    buf_init(&out);
    assert_int_equal(metrics_render(&out), 0);
    assert_non_null(strstr(out.data, "# TYPE sealpost_test_seconds histogram\n"
                                     "sealpost_test_seconds_bucket{kind=\"x\",le=\"1\"} 1\n"
                                     "sealpost_test_seconds_bucket{kind=\"x\",le=\"2.5\"} 2\n"
                                     "sealpost_test_seconds_bucket{kind=\"x\",le=\"+Inf\"} 3\n"
                                     "sealpost_test_seconds_sum{kind=\"x\"} 9.5\n"
                                     "sealpost_test_seconds_count{kind=\"x\"} 3\n"));
    assert_non_null(strstr(out.data, "# HELP sealpost_test_total A test counter.\n"
                                     "# TYPE sealpost_test_total counter\n"
                                     "sealpost_test_total 3\n"));
    buf_free(&out);
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_parse_bad),
        cmocka_unit_test(test_cidr_match_v4),
        cmocka_unit_test(test_cidr_match_v6),
        cmocka_unit_test(test_cidr_match_mapped),
        cmocka_unit_test(test_cidr_match_other_family),
        cmocka_unit_test(test_hostport_parse),
        cmocka_unit_test(test_hostport_parse_bad),
        cmocka_unit_test(test_sockaddr_from),
        cmocka_unit_test(test_domain_valid),
        cmocka_unit_test(test_parse_decimal),
        cmocka_unit_test(test_buf_append),
        cmocka_unit_test(test_buf_printf),
        cmocka_unit_test(test_buf_consume_reset),
        cmocka_unit_test(test_random_id),
        cmocka_unit_test(test_random_below),
        cmocka_unit_test(test_time_and_date),
        cmocka_unit_test(test_iso_time),
        cmocka_unit_test(test_ascii_lower),
        cmocka_unit_test(test_log_parse_level),
        cmocka_unit_test(test_split_list),
        cmocka_unit_test(test_log_safe),
        cmocka_unit_test(test_log_addr_redacts_when_asked),
        cmocka_unit_test(test_metrics_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
