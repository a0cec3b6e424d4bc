/* Unit tests for core/: network addresses, byte buffers, utilities and the
 * configuration loader. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/core.h"

extern char **environ;

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

/* Removes every SEALPOST_* variable, so the environment the tests run in
 * cannot change what config_load sees. */
static void clear_sealpost_env(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; *e; e++) {
            if (!strncmp(*e, "SEALPOST_", 9)) {
                size_t n = strcspn(*e, "=");
                if (n >= sizeof name) n = sizeof name - 1;
                memcpy(name, *e, n);
                name[n] = 0;
                break;
            }
        }
        if (!name[0]) return;
        assert_int_equal(unsetenv(name), 0);
    }
}

static int config_setup(void **state)
{
    (void)state;
    clear_sealpost_env();
    return 0;
}

static int config_teardown(void **state)
{
    (void)state;
    clear_sealpost_env();
    return 0;
}

/* Writes text to a new file in /tmp; path gets its name. */
static void write_temp(const char *text, char path[64])
{
    snprintf(path, 64, "/tmp/sealpost-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Loads text as a config file; returns config_load's result. */
static int load_text(const char *text, config_t *cfg, char *err, size_t errlen, char path[64])
{
    write_temp(text, path);
    err[0] = 0;
    int rc = config_load(cfg, path, err, errlen);
    unlink(path);
    return rc;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle)) fail_msg("'%s' does not contain '%s'", haystack, needle);
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

/* ------------------------------------------------------------------ config */

static void test_config_defaults(void **state)
{
    (void)state;
    config_t cfg;
    config_defaults(&cfg);
    assert_string_equal(cfg.path, "");
    assert_int_equal(cfg.redis.shards, 128);
    assert_string_equal(cfg.ingress.listen.host, "127.0.0.1");
    assert_int_equal(cfg.ingress.listen.port, 2525);
    assert_int_equal(cfg.ingress.max_message_size, 26214400);
    assert_int_equal(cfg.ingress.max_recipients, 1000);
    assert_int_equal(cfg.ingress.max_line_length, 1000);
    assert_int_equal(cfg.ingress.n_relay_domains, 0);
    assert_int_equal(cfg.ingress.trusted_networks.n, 2);
    assert_int_equal(cfg.worker.relayhost.host[0], 0);
    assert_int_equal(cfg.up.redis_port, 6380);
    assert_int_equal(cfg.log.level, LOG_INFO);
    assert_int_equal(cfg.n_domains, 0);
    assert_null(config_route_for(&cfg, "example.test"));
}

static const char good_conf[] = "; a comment\n"
                                "[redis]\n"
                                "url = redis://127.0.0.1:7000\n"
                                "[ingress]\n"
                                "listen = [::1]:2600\n"
                                "hostname = mx.example.test\n"
                                "max_message_size = 1048576\n"
                                "max_recipients = 50\n"
                                "relay_domains = Example.TEST, other.test\n"
                                "trusted_networks = 10.0.0.0/8, 192.168.1.0/24 ::1\n"
                                "[worker]\n"
                                "concurrency = 4\n"
                                "relayhost = smarthost.test:587\n"
                                "[up]\n"
                                "redis_port = 7001\n"
                                "[log]\n"
                                "level = debug\n"
                                "[routes]\n"
                                "example.test = 127.0.0.1:2526\n";

static void test_config_good_file(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text(good_conf, &cfg, err, sizeof err, path), 0);
    assert_string_equal(cfg.path, path);
    assert_string_equal(cfg.redis.url, "redis://127.0.0.1:7000");
    assert_int_equal(cfg.redis.shards, 128); /* untouched keys keep their defaults */
    assert_string_equal(cfg.ingress.listen.host, "::1");
    assert_int_equal(cfg.ingress.listen.port, 2600);
    assert_string_equal(cfg.ingress.hostname, "mx.example.test");
    assert_int_equal(cfg.ingress.max_message_size, 1048576);
    assert_int_equal(cfg.ingress.max_recipients, 50);
    assert_int_equal(cfg.ingress.n_relay_domains, 2);
    assert_string_equal(cfg.ingress.relay_domains[0], "example.test");
    assert_string_equal(cfg.ingress.relay_domains[1], "other.test");
    assert_int_equal(cfg.ingress.trusted_networks.n, 3); /* the list replaces the default */
    assert_int_equal(cfg.ingress.trusted_networks.items[0].prefix, 8);
    assert_int_equal(cfg.ingress.trusted_networks.items[2].family, AF_INET6);
    assert_int_equal(cfg.worker.concurrency, 4);
    assert_string_equal(cfg.worker.helo_name, "mx.example.test"); /* defaults to hostname */
    assert_string_equal(cfg.worker.relayhost.host, "smarthost.test");
    assert_int_equal(cfg.worker.relayhost.port, 587);
    assert_int_equal(cfg.up.redis_port, 7001);
    assert_int_equal(cfg.log.level, LOG_DEBUG);
    assert_int_equal(cfg.n_domains, 1);

    net_hostport_t hp;
    assert_int_equal(config_redis_address(&cfg, &hp), 0);
    assert_string_equal(hp.host, "127.0.0.1");
    assert_int_equal(hp.port, 7000);
}

static void test_config_unknown_key(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(
        load_text("[ingress]\nmax_recipients = 5\nbogus_key = 1\n", &cfg, err, sizeof err, path),
        -1);
    assert_contains(err, path);
    assert_contains(err, ":3:");
    assert_contains(err, "bogus_key");

    /* a known key in the wrong section is unknown there */
    assert_int_equal(load_text("[worker]\n\n\n\nmax_recipients = 5\n", &cfg, err, sizeof err, path),
                     -1);
    assert_contains(err, path);
    assert_contains(err, ":5:");
    assert_contains(err, "max_recipients");
}

static void test_config_bad_value(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[ingress]\nmax_recipients = abc\n", &cfg, err, sizeof err, path),
                     -1);
    assert_contains(err, path);
    assert_contains(err, ":2:");
    assert_contains(err, "max_recipients");
    assert_contains(err, "abc");

    static const char *const bad[] = {
        "[ingress]\nmax_recipients = 0\n",
        "[ingress]\nmax_recipients = 100001\n",
        "[ingress]\nmax_recipients = -1\n",
        "[ingress]\nmax_recipients = 5x\n",
        "[ingress]\nmax_recipients = 99999999999999999999999\n",
        "[ingress]\nmax_message_size = 100\n",
        "[ingress]\nlisten = ::1\n",
        "[ingress]\ntrusted_networks = 10.0.0.0/33\n",
        "[ingress]\nrelay_domains = bad_domain.test\n",
        "[up]\nredis_port = 70000\n",
        "[log]\nlevel = loud\n",
        "[redis]\nurl = redis://host:port\n",
        "[routes]\nbad_domain.test = 127.0.0.1:25\n",
        "[routes]\nexample.test = ::1\n",
        "[ingress\n",
        "just some text\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (load_text(bad[i], &cfg, err, sizeof err, path) != -1) fail_msg("accepted: %s", bad[i]);
        if (!err[0]) fail_msg("no error message for: %s", bad[i]);
    }

    assert_int_equal(load_text("[ingress]\nx = 1\n[log]\nlevel = debug\nnot a pair\n", &cfg, err,
                               sizeof err, path),
                     -1);
    assert_contains(err, ":2:"); /* the first error is the one reported */
}

static void test_config_syntax_error_line(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[ingress]\nmax_recipients = 5\nnot a key value line\n", &cfg, err,
                               sizeof err, path),
                     -1);
    assert_contains(err, path);
    assert_contains(err, ":3:");
}

static void test_config_missing_file(void **state)
{
    (void)state;
    config_t cfg;
    char err[512] = "";
    assert_int_equal(config_load(&cfg, "/nonexistent/sealpost-test.conf", err, sizeof err), -1);
    assert_contains(err, "/nonexistent/sealpost-test.conf");
}

static void test_config_routes(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[routes]\nexample.test = 127.0.0.1:2526\n"
                               "Mixed.Case.Test = [::1]:2527\n"
                               "noport.test = relay.test\n",
                               &cfg, err, sizeof err, path),
                     0);
    const net_hostport_t *hp = config_route_for(&cfg, "example.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "127.0.0.1");
    assert_int_equal(hp->port, 2526);
    assert_ptr_equal(config_route_for(&cfg, "EXAMPLE.Test"), hp);

    hp = config_route_for(&cfg, "mixed.case.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "::1");
    assert_int_equal(hp->port, 2527);
    assert_ptr_equal(config_route_for(&cfg, "MIXED.CASE.TEST"), hp);

    hp = config_route_for(&cfg, "noport.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "relay.test");
    assert_int_equal(hp->port, 25);

    /* no route and no relayhost */
    assert_null(config_route_for(&cfg, "elsewhere.test"));
    assert_null(config_route_for(&cfg, "test"));
    assert_null(config_route_for(&cfg, "sub.example.test"));
}

static void test_config_relayhost_fallback(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[worker]\nrelayhost = smarthost.test\n"
                               "[routes]\nexample.test = 127.0.0.1:2526\n",
                               &cfg, err, sizeof err, path),
                     0);
    const net_hostport_t *hp = config_route_for(&cfg, "elsewhere.test");
    assert_non_null(hp);
    assert_ptr_equal(hp, &cfg.worker.relayhost);
    assert_string_equal(hp->host, "smarthost.test");
    assert_int_equal(hp->port, 25);
    hp = config_route_for(&cfg, "example.test");
    assert_non_null(hp);
    assert_int_equal(hp->port, 2526); /* a route wins over the relayhost */
}

static void test_config_env_override(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(setenv("SEALPOST_INGRESS_MAX_RECIPIENTS", "7", 1), 0);
    assert_int_equal(setenv("SEALPOST_ROUTES_OTHER_TEST", "127.0.0.1:9", 1), 0);
    assert_int_equal(setenv("SEALPOST_LOG_LEVEL", "warn", 1), 0);
    assert_int_equal(load_text("[ingress]\nmax_recipients = 50\nmax_connections = 9\n"
                               "[routes]\nexample.test = 127.0.0.1:2526\n",
                               &cfg, err, sizeof err, path),
                     0);
    assert_int_equal(cfg.ingress.max_recipients, 7);  /* the environment wins */
    assert_int_equal(cfg.ingress.max_connections, 9); /* the file still counts */
    assert_int_equal(cfg.log.level, LOG_WARN);
    const net_hostport_t *hp = config_route_for(&cfg, "other.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "127.0.0.1");
    assert_int_equal(hp->port, 9);
    assert_non_null(config_route_for(&cfg, "example.test"));

    /* an environment route replaces the file's route for the same domain */
    assert_int_equal(setenv("SEALPOST_ROUTES_EXAMPLE_TEST", "127.0.0.1:10", 1), 0);
    assert_int_equal(
        load_text("[routes]\nexample.test = 127.0.0.1:2526\n", &cfg, err, sizeof err, path), 0);
    hp = config_route_for(&cfg, "example.test");
    assert_non_null(hp);
    assert_int_equal(hp->port, 10);

    /* "none" empties a list, where an empty value cannot be written */
    assert_int_equal(setenv("SEALPOST_INGRESS_TRUSTED_NETWORKS", "none", 1), 0);
    assert_int_equal(load_text("", &cfg, err, sizeof err, path), 0);
    assert_int_equal(cfg.ingress.trusted_networks.n, 0);
    assert_int_equal(unsetenv("SEALPOST_INGRESS_TRUSTED_NETWORKS"), 0);

    /* without any file */
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), 0);
    assert_int_equal(cfg.ingress.max_recipients, 7);
}

static void test_config_env_bad(void **state)
{
    (void)state;
    config_t cfg;
    char err[512] = "";
    assert_int_equal(setenv("SEALPOST_INGRESS_MAX_RECIPIENTS", "abc", 1), 0);
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), -1);
    assert_contains(err, "SEALPOST_INGRESS_MAX_RECIPIENTS");
    assert_contains(err, "abc");
    assert_int_equal(unsetenv("SEALPOST_INGRESS_MAX_RECIPIENTS"), 0);

    err[0] = 0;
    assert_int_equal(setenv("SEALPOST_INGRESS_NO_SUCH_KEY", "1", 1), 0);
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), -1);
    assert_contains(err, "SEALPOST_INGRESS_NO_SUCH_KEY");
    assert_int_equal(unsetenv("SEALPOST_INGRESS_NO_SUCH_KEY"), 0);

    err[0] = 0;
    assert_int_equal(setenv("SEALPOST_ROUTES_OTHER_TEST", "::1", 1), 0);
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), -1);
    assert_contains(err, "SEALPOST_ROUTES_OTHER_TEST");
    assert_int_equal(unsetenv("SEALPOST_ROUTES_OTHER_TEST"), 0);

    /* with the bad variables gone, the same load works */
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), 0);
}

/* A scratch working directory for the config_load(NULL) tests; the teardown
 * goes back and removes it even when a test fails half-way. */
struct cwd_state {
    char old_cwd[4096];
    char dir[64];
};

static int cwd_setup(void **state)
{
    static struct cwd_state cs;
    clear_sealpost_env();
    if (!getcwd(cs.old_cwd, sizeof cs.old_cwd)) return -1;
    snprintf(cs.dir, sizeof cs.dir, "/tmp/sealpost-test-dir-XXXXXX");
    if (!mkdtemp(cs.dir) || chdir(cs.dir) < 0) return -1;
    *state = &cs;
    return 0;
}

static int cwd_teardown(void **state)
{
    struct cwd_state *cs = *state;
    clear_sealpost_env();
    unlink("sealpost.conf");
    unlink("other.conf");
    if (chdir(cs->old_cwd) < 0) return -1;
    return rmdir(cs->dir);
}

/* config_load(NULL): $SEALPOST_CONFIG, else ./sealpost.conf, else defaults. */
static void test_config_default_path(void **state)
{
    (void)state;
    config_t cfg;
    char err[512] = "";
    assert_int_equal(config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.path, "");
    assert_int_equal(cfg.ingress.max_recipients, 1000);
    assert_true(cfg.ingress.hostname[0] != 0); /* from gethostname */

    write_file("sealpost.conf", "[ingress]\nmax_recipients = 33\n");
    assert_int_equal(config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.path, "sealpost.conf");
    assert_int_equal(cfg.ingress.max_recipients, 33);
    assert_int_equal(config_load(&cfg, "", err, sizeof err), 0);
    assert_int_equal(cfg.ingress.max_recipients, 33);

    write_file("other.conf", "[ingress]\nmax_recipients = 44\n");
    assert_int_equal(setenv("SEALPOST_CONFIG", "other.conf", 1), 0);
    assert_int_equal(config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.path, "other.conf");
    assert_int_equal(cfg.ingress.max_recipients, 44);
    /* an explicit path wins over $SEALPOST_CONFIG */
    assert_int_equal(config_load(&cfg, "sealpost.conf", err, sizeof err), 0);
    assert_int_equal(cfg.ingress.max_recipients, 33);
}

/* What config_print writes reads back as the same configuration. */
static void test_config_print_roundtrip(void **state)
{
    (void)state;
    config_t cfg, again;
    char err[512], path[64];
    assert_int_equal(load_text(good_conf, &cfg, err, sizeof err, path), 0);
    buf_t first, second;
    buf_init(&first);
    buf_init(&second);
    assert_int_equal(config_print(&cfg, &first), 0);
    assert_non_null(strstr(first.data, "[routes]\nexample.test = 127.0.0.1:2526\n"));
    assert_non_null(strstr(first.data, "listen = [::1]:2600\n"));
    assert_non_null(strstr(first.data, "trusted_networks = 10.0.0.0/8 192.168.1.0/24 ::1/128\n"));

    assert_int_equal(load_text(first.data, &again, err, sizeof err, path), 0);
    assert_int_equal(config_print(&again, &second), 0);
    /* the first line names the file read; the rest must be identical */
    const char *a = strchr(first.data, '\n'), *b = strchr(second.data, '\n');
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, b);
    buf_free(&first);
    buf_free(&second);
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
        cmocka_unit_test(test_buf_append),
        cmocka_unit_test(test_buf_printf),
        cmocka_unit_test(test_buf_consume_reset),
        cmocka_unit_test(test_random_id),
        cmocka_unit_test(test_random_below),
        cmocka_unit_test(test_time_and_date),
        cmocka_unit_test(test_ascii_lower),
        cmocka_unit_test(test_log_parse_level),
        cmocka_unit_test(test_split_list),
        cmocka_unit_test_setup_teardown(test_config_defaults, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_good_file, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_unknown_key, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_bad_value, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_syntax_error_line, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(test_config_missing_file, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_routes, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_relayhost_fallback, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(test_config_env_override, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_env_bad, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_default_path, cwd_setup, cwd_teardown),
        cmocka_unit_test_setup_teardown(test_config_print_roundtrip, config_setup, config_teardown),
        cmocka_unit_test(test_log_safe),
        cmocka_unit_test(test_log_addr_redacts_when_asked),
        cmocka_unit_test(test_metrics_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
