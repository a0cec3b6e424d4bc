/* Unit tests for the queue's Redis Cluster routing pieces that need no
 * server: key slots (the values Redis itself gives, see CLUSTER KEYSLOT),
 * which word of a command is its key, redirect errors, and CLUSTER SLOTS
 * replies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "queue/cluster.h"

static unsigned slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

static void test_key_slots(void **state)
{
    (void)state;
    /* CRC16/XMODEM("123456789") is 0x31C3: 12739 mod 16384. */
    assert_int_equal(slot_of("123456789"), 12739);
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    /* Only the hash tag counts, and only a non-empty one. */
    assert_int_equal(slot_of("{mq:7}:due"), slot_of("mq:7"));
    assert_int_equal(slot_of("{mq:7}:m:abc"), slot_of("{mq:7}:b:abc:0"));
    /* An empty tag, or none closed: the whole key (values from CRC16/XMODEM). */
    assert_int_equal(slot_of("{}foo"), 9500);
    assert_int_equal(slot_of("a{b}{c}"), slot_of("b"));
    assert_int_equal(slot_of("a{bc"), 13842);
}

static void test_command_slots(void **state)
{
    (void)state;
    const char *fcall[] = {"FCALL", "claim", "2", "{mq:3}:due", "{mq:3}:lease", "x"};
    assert_int_equal(cluster_command_slot(6, fcall, NULL), (int)slot_of("mq:3"));
    const char *nokeys[] = {"FCALL_RO", "f", "0", "arg"};
    assert_int_equal(cluster_command_slot(4, nokeys, NULL), -1);
    const char *hset[] = {"HSET", "{sealpost:auth}:users", "u", "h"};
    assert_int_equal(cluster_command_slot(4, hset, NULL), (int)slot_of("sealpost:auth"));
    const char *wait[] = {"WAIT", "1", "100"};
    assert_int_equal(cluster_command_slot(3, wait, NULL), -1);
    const char *load[] = {"FUNCTION", "LOAD", "REPLACE", "lib"};
    assert_int_equal(cluster_command_slot(4, load, NULL), -1);
    /* Binary-safe: the length given counts, not a NUL. */
    const char *bin[] = {"GET", "foo\0bar"};
    size_t lens[] = {3, 7};
    assert_int_equal(cluster_command_slot(2, bin, lens), 10180);
}

static void test_redirects(void **state)
{
    (void)state;
    unsigned slot = 0;
    char host[64];
    int port = 0;
    assert_int_equal(cluster_redirect_parse("MOVED 3999 127.0.0.1:6381", "10.0.0.9", &slot, host,
                                            sizeof host, &port),
                     REDIRECT_MOVED);
    assert_int_equal(slot, 3999);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6381);
    assert_int_equal(
        cluster_redirect_parse("ASK 1 ::1:7000", "10.0.0.9", &slot, host, sizeof host, &port),
        REDIRECT_ASK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7000);
    assert_int_equal(cluster_redirect_parse("TRYAGAIN Multiple keys request during rehashing",
                                            "10.0.0.9", &slot, host, sizeof host, &port),
                     REDIRECT_RETRY);
    assert_int_equal(cluster_redirect_parse("CLUSTERDOWN The cluster is down", "10.0.0.9", &slot,
                                            host, sizeof host, &port),
                     REDIRECT_RETRY);
    /* Anything malformed is an ordinary error, never a redirect to nowhere. */
    static const char *const bad[] = {
        "MOVED 16384 127.0.0.1:1", "MOVED 1 127.0.0.1:0",  "MOVED 1 127.0.0.1:70000",
        "MOVED x 127.0.0.1:1",     "MOVED 1 nohost",       "MOVED 1",
        "ERR wrong number",        "MOVED 1 127.0.0.1:1x", "ASK",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(
            cluster_redirect_parse(bad[i], "10.0.0.9", &slot, host, sizeof host, &port),
            REDIRECT_NONE);
    /* No host: the node that answered. */
    assert_int_equal(
        cluster_redirect_parse("MOVED 5 :6390", "10.0.0.9", &slot, host, sizeof host, &port),
        REDIRECT_MOVED);
    assert_string_equal(host, "10.0.0.9");
    assert_int_equal(port, 6390);
    char tiny[4];
    assert_int_equal(
        cluster_redirect_parse("MOVED 1 localhost:1", "10.0.0.9", &slot, tiny, sizeof tiny, &port),
        REDIRECT_NONE);
}

/* ---- CLUSTER SLOTS replies, built by hand ---- */

static redisReply *r_int(long long v)
{
    static redisReply pool[64];
    static int used;
    redisReply *r = &pool[used++ % 64];
    memset(r, 0, sizeof *r);
    r->type = REDIS_REPLY_INTEGER;
    r->integer = v;
    return r;
}

static redisReply *r_str(const char *s)
{
    static redisReply pool[16];
    static int used;
    redisReply *r = &pool[used++ % 16];
    memset(r, 0, sizeof *r);
    r->type = REDIS_REPLY_STRING;
    r->str = (char *)s;
    r->len = strlen(s);
    return r;
}

struct seen {
    unsigned from[4], to[4];
    char host[4][32];
    int port[4];
    int n;
};

static int collect(unsigned from, unsigned to, const char *host, int port, void *arg)
{
    struct seen *s = arg;
    s->from[s->n] = from;
    s->to[s->n] = to;
    strncpy(s->host[s->n], host, sizeof s->host[0] - 1);
    s->port[s->n++] = port;
    return 0;
}

static void test_slots_reply(void **state)
{
    (void)state;
    redisReply *m1[] = {r_str("127.0.0.1"), r_int(7000), r_str("id1")};
    redisReply *m2[] = {r_str(""), r_int(7001), r_str("id2")};
    redisReply master1 = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = m1};
    redisReply master2 = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = m2};
    redisReply *e1[] = {r_int(0), r_int(8191), &master1};
    redisReply *e2[] = {r_int(8192), r_int(16383), &master2};
    redisReply range1 = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = e1};
    redisReply range2 = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = e2};
    redisReply *ranges[] = {&range1, &range2};
    redisReply top = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = ranges};
    struct seen s = {0};
    assert_int_equal(cluster_slots_parse(&top, "10.0.0.9", collect, &s), 0);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.to[0], 8191);
    assert_string_equal(s.host[0], "127.0.0.1");
    /* An empty host: the address the reply came from. */
    assert_string_equal(s.host[1], "10.0.0.9");
    assert_int_equal(s.port[1], 7001);

    /* A range past the last slot is refused. */
    redisReply *e3[] = {r_int(0), r_int(16384), &master1};
    redisReply range3 = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = e3};
    redisReply *bad_ranges[] = {&range3};
    redisReply bad = {.type = REDIS_REPLY_ARRAY, .elements = 1, .element = bad_ranges};
    struct seen t = {0};
    assert_int_equal(cluster_slots_parse(&bad, "h", collect, &t), -1);
    assert_int_equal(cluster_slots_parse(r_int(1), "h", collect, &t), -1);

    assert_true(cluster_single_error("ERR This instance has cluster support disabled"));
    assert_true(cluster_single_error("ERR unknown command 'CLUSTER'"));
    assert_true(cluster_single_error("NOPERM this user has no permissions to run 'cluster'"));
    assert_false(cluster_single_error("LOADING Redis is loading the dataset in memory"));
    assert_false(cluster_single_error("BUSY Redis is busy running a script"));
    assert_false(cluster_single_error("NOAUTH Authentication required."));
    assert_false(cluster_single_error("ERR max number of clients reached"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slots),
        cmocka_unit_test(test_command_slots),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_slots_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
