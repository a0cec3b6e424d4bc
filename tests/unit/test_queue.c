/* Unit tests for the queue's pieces that need no server: the Redis Cluster
 * routing (key slots, the values Redis itself gives, see CLUSTER KEYSLOT;
 * which word of a command is its key; redirect errors; CLUSTER SLOTS
 * replies), and the schema: each function's KEYS as declared in C against
 * the functions library's own source, the keys built for calls, job ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "queue/cluster.h"
#include "queue/internal.h"
#include "queue/schema.h"

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

/* A reply with n octets of s, NULs included. */
static redisReply r_bytes(const char *s, size_t n)
{
    return (redisReply){.type = REDIS_REPLY_STRING, .str = (char *)s, .len = n};
}

/* What a hostile or broken Redis sends is refused, never cut into another
 * value: a job id or domain with a NUL or too long, a number with junk. */
static void test_replies_read_whole_or_not_at_all(void **state)
{
    (void)state;
    char out[8];
    redisReply r = r_bytes("abc", 3);
    assert_true(reply_copy(&r, out, sizeof out));
    assert_string_equal(out, "abc");
    r = r_bytes("ab\0cd", 5);
    assert_false(reply_copy(&r, out, sizeof out));
    r = r_bytes("12345678", 8); /* no room for its NUL */
    assert_false(reply_copy(&r, out, sizeof out));
    assert_false(reply_copy(r_int(1), out, sizeof out));
    assert_false(reply_copy(NULL, out, sizeof out));

    assert_int_equal(reply_ll(r_str("42"), -1), 42);
    assert_int_equal(reply_ll(r_str("-7"), 0), -7);
    assert_int_equal(reply_ll(r_int(-3), 0), -3);
    assert_int_equal(reply_ll(r_str("12abc"), -1), -1);
    assert_int_equal(reply_ll(r_str(" 12"), -1), -1);
    assert_int_equal(reply_ll(r_str(""), -1), -1);
    assert_int_equal(reply_ll(r_str("-"), -1), -1);
    assert_int_equal(reply_ll(r_str("99999999999999999999"), -1), -1);
    r = r_bytes("1\0"
                "2",
                3);
    assert_int_equal(reply_ll(&r, -1), -1);
}

/* ---- the schema against sealpost.lua ---- */

/* The library's source (the copy compiled in, from queue/functions/), line
 * by line: the text after "-- KEYS: " on the last such line above
 * `local function <name>(`, with none between; "" when there is none. */
static void lua_keys_line(const char *name, char *out, size_t len)
{
    char keys[256] = "", def[96];
    snprintf(def, sizeof def, "local function %s(", name);
    out[0] = 0;
    for (const char *line = queue_functions_lua; *line;) {
        size_t n = strcspn(line, "\n");
        if (n > 9 && !strncmp(line, "-- KEYS: ", 9))
            snprintf(keys, sizeof keys, "%.*s", (int)(n - 9), line + 9);
        if (!strncmp(line, "local function ", 15)) {
            if (!strncmp(line, def, strlen(def))) {
                snprintf(out, len, "%s", keys);
                return;
            }
            keys[0] = 0; /* it belonged to another function */
        }
        line += n + (line[n] == '\n');
    }
}

/* How name is registered: 0 not at all, 1 as a writing function, 2 with
 * the no-writes flag. */
static int lua_registration(const char *name)
{
    char plain[96], table[96];
    snprintf(plain, sizeof plain, "redis.register_function('%s',", name);
    snprintf(table, sizeof table, "redis.register_function{function_name = '%s',", name);
    const char *at = strstr(queue_functions_lua, plain);
    if (!at) at = strstr(queue_functions_lua, table);
    if (!at) return 0;
    const char *next = strstr(at + 1, "redis.register_function");
    const char *flag = strstr(at, "'no-writes'");
    return flag && (!next || flag < next) ? 2 : 1;
}

static unsigned lua_registrations(void)
{
    unsigned n = 0;
    for (const char *p = queue_functions_lua; (p = strstr(p, "redis.register_function")); p++)
        n++;
    return n;
}

static void test_schema_matches_the_library(void **state)
{
    (void)state;
    for (int fn = 0; fn < FNS; fn++) {
        const char *name = schema_fn_name((enum queue_fn)fn);
        char c_side[256], lua_side[256];
        assert_int_equal(schema_keys_text((enum queue_fn)fn, c_side, sizeof c_side), 0);
        lua_keys_line(name, lua_side, sizeof lua_side);
        if (strcmp(c_side, lua_side))
            fail_msg("%s: KEYS in C \"%s\", in sealpost.lua \"%s\"", name, c_side, lua_side);
        int registered = lua_registration(name);
        if (registered == 0) fail_msg("%s is not registered in sealpost.lua", name);
        if ((registered == 2) != schema_fn_read_only((enum queue_fn)fn))
            fail_msg("%s: no-writes in C %d, in sealpost.lua %d", name,
                     schema_fn_read_only((enum queue_fn)fn), registered == 2);
    }
    /* and no function of the library is unknown to C */
    assert_int_equal(lua_registrations(), FNS);
}

static void test_keys_text(void **state)
{
    (void)state;
    char text[256];
    assert_int_equal(schema_keys_text(FN_CLAIM, text, sizeof text), 0);
    assert_string_equal(text, "due, lease, meta, held, st");
    assert_int_equal(schema_keys_text(FN_ENQUEUE, text, sizeof text), 0);
    assert_string_equal(text, "m, due, st, dom, age, log, dq, w, enc, b..., j...");
    assert_int_equal(schema_keys_text(FN_WITHDRAW, text, sizeof text), 0);
    assert_string_equal(text, "m, due, held, meta, st, dom, age, log, dq, w, b..., j...");
    assert_int_equal(schema_keys_text(FN_COMPLETE, text, sizeof text), 0);
    assert_string_equal(text, "due, lease, meta, st, dom, j, m, b, age, log, held, dq, [m, b, j]");
    /* a function with no fixed keys starts with its run */
    assert_int_equal(schema_keys_text(FN_KEY_ADDRESSES, text, sizeof text), 0);
    assert_string_equal(text, "k...");
    char tiny[8];
    assert_int_equal(schema_keys_text(FN_CLAIM, tiny, sizeof tiny), -1);
}

#define MID  "0123456789abcdef0123456789abcdef"
#define BMID "fedcba9876543210fedcba9876543210"

static void test_call_keys(void **state)
{
    (void)state;
    call_keys_t keys;
    call_keys_init(&keys, FN_COMPLETE,
                   &(key_ids_t){.shard = 3, .mid = MID, .variant = 1, .jid = MID ".1.4"});
    call_keys_add(&keys, COMPLETE_BOUNCE,
                  &(key_ids_t){.shard = 3, .mid = BMID, .jid = BMID ".0.0"});
    assert_false(keys.failed);
    assert_int_equal(keys.n, 15);
    assert_string_equal(keys.list[0], "{mq:3}:due");
    assert_string_equal(keys.list[5], "{mq:3}:j:" MID ".1.4");
    assert_string_equal(keys.list[6], "{mq:3}:m:" MID);
    assert_string_equal(keys.list[7], "{mq:3}:b:" MID ":1");
    assert_string_equal(keys.list[11], "{mq:3}:dq");
    assert_string_equal(keys.list[12], "{mq:3}:m:" BMID);
    assert_string_equal(keys.list[13], "{mq:3}:b:" BMID ":0");
    assert_string_equal(keys.list[14], "{mq:3}:j:" BMID ".0.0");
    for (unsigned i = 0; i < keys.n; i++) /* one call, one slot */
        assert_int_equal(slot_of(keys.list[i]), slot_of("mq:3"));
    /* the bounce is there once or not at all */
    call_keys_add(&keys, COMPLETE_BOUNCE,
                  &(key_ids_t){.shard = 3, .mid = BMID, .jid = BMID ".0.0"});
    assert_true(keys.failed);
    call_keys_free(&keys);

    /* runs grow one item at a time, in their order */
    call_keys_init(&keys, FN_ENQUEUE, &(key_ids_t){.shard = 0, .mid = MID});
    for (unsigned v = 0; v < 40; v++)
        call_keys_add(&keys, ENQUEUE_BODY, &(key_ids_t){.shard = 0, .mid = MID, .variant = v});
    call_keys_add(&keys, ENQUEUE_JOB, &(key_ids_t){.shard = 0, .jid = MID ".0.0"});
    assert_false(keys.failed);
    assert_int_equal(keys.n, 9 + 40 + 1);
    assert_string_equal(keys.list[0], "{mq:0}:m:" MID);
    assert_string_equal(keys.list[7], "{mq:0}:w:" MID); /* the tombstone a withdraw leaves */
    assert_string_equal(keys.list[8], "{mq:0}:enc");    /* the status page's counts */
    assert_string_equal(keys.list[9 + 39], "{mq:0}:b:" MID ":39");
    assert_string_equal(keys.list[49], "{mq:0}:j:" MID ".0.0");
    call_keys_add(&keys, ENQUEUE_BODY, &(key_ids_t){.shard = 0, .mid = MID}); /* too late */
    assert_true(keys.failed);
    call_keys_free(&keys);

    /* the crypto side's keys share one tag; an id a key needs must be there */
    call_keys_init(&keys, FN_KEY_PUT, &(key_ids_t){.fpr = "ABCD"});
    call_keys_add(&keys, KEY_PUT_ADDRESS, &(key_ids_t){.addr = "a@example.test"});
    call_keys_add(&keys, KEY_PUT_OTHER, &(key_ids_t){.fpr = "EF01"});
    assert_false(keys.failed);
    assert_int_equal(keys.n, 7);
    assert_string_equal(keys.list[0], "{sealpost:crypto}:k:ABCD");
    assert_string_equal(keys.list[2], "{sealpost:crypto}:version");
    assert_string_equal(keys.list[3], "{sealpost:crypto}:expiry_openpgp");
    assert_string_equal(keys.list[4], "{sealpost:crypto}:expiry_smime");
    assert_string_equal(keys.list[5], "{sealpost:crypto}:a:a@example.test");
    assert_string_equal(keys.list[6], "{sealpost:crypto}:k:EF01");
    for (unsigned i = 0; i < keys.n; i++)
        assert_int_equal(slot_of(keys.list[i]), slot_of("sealpost:crypto"));
    call_keys_free(&keys);
    /* the DKIM keys share a tag of their own; a domain's hash needs its domain */
    call_keys_init(&keys, FN_DKIM_PUT, &(key_ids_t){.domain = "example.test"});
    assert_false(keys.failed);
    assert_int_equal(keys.n, 3);
    assert_string_equal(keys.list[0], "{sealpost:dkim}:d:example.test");
    assert_string_equal(keys.list[1], "{sealpost:dkim}:domains");
    assert_string_equal(keys.list[2], "{sealpost:dkim}:version");
    for (unsigned i = 0; i < keys.n; i++)
        assert_int_equal(slot_of(keys.list[i]), slot_of("sealpost:dkim"));
    call_keys_free(&keys);
    call_keys_init(&keys, FN_DKIM_GET, &(key_ids_t){0}); /* no domain */
    assert_true(keys.failed);
    call_keys_free(&keys);
    call_keys_init(&keys, FN_AUTH_BEGIN, &(key_ids_t){0}); /* no client */
    assert_true(keys.failed);
    call_keys_free(&keys);
    call_keys_init(&keys, FN_CLAIM, &(key_ids_t){0}); /* a part it does not have */
    call_keys_add(&keys, 0, &(key_ids_t){0});
    assert_true(keys.failed);
    call_keys_free(&keys);

    char long_addr[400];
    memset(long_addr, 'x', sizeof long_addr - 1);
    long_addr[sizeof long_addr - 1] = 0;
    key_t_ k;
    assert_int_equal(schema_key(k, KEY_ADDRESS, &(key_ids_t){.addr = long_addr}), -1);
    assert_int_equal(schema_key(k, KEY_FAIL, &(key_ids_t){.client = "127.0.0.1"}), 0);
    assert_string_equal(k, "{sealpost:auth}:fail:127.0.0.1");
}

static void test_fcall_argv(void **state)
{
    (void)state;
    call_keys_t keys;
    call_keys_init(&keys, FN_STATS, &(key_ids_t){.shard = 2});
    fcall_argv_t v;
    assert_int_equal(fcall_argv_build(&v, &keys, 0, NULL, NULL), 0);
    assert_int_equal(v.argc, 7);
    assert_string_equal(v.argv[0], "FCALL_RO");
    assert_string_equal(v.argv[1], "stats");
    assert_string_equal(v.argv[2], "4");
    assert_string_equal(v.argv[6], "{mq:2}:age");
    assert_int_equal(cluster_command_slot(v.argc, v.argv, v.lens), (int)slot_of("mq:2"));
    fcall_argv_free(&v);
    call_keys_free(&keys);

    call_keys_init(&keys, FN_SEAL_CHECK, &(key_ids_t){0});
    const char *args[] = {"id", "c\0eck"};
    size_t lens[] = {2, 5};
    assert_int_equal(fcall_argv_build(&v, &keys, 2, args, lens), 0);
    assert_string_equal(v.argv[0], "FCALL");
    assert_int_equal(v.argc, 6);
    assert_int_equal(v.lens[5], 5);
    fcall_argv_free(&v);
    keys.failed = true; /* keys that failed are never sent */
    assert_int_equal(fcall_argv_build(&v, &keys, 2, args, lens), -1);
    call_keys_free(&keys);
}

static void test_job_ids(void **state)
{
    (void)state;
    job_id_t id;
    assert_int_equal(job_id_parse(MID ".2.17", &id), 0);
    assert_string_equal(id.mid, MID);
    assert_int_equal(id.variant, 2);
    assert_int_equal(id.n, 17);
    static const char *const bad[] = {
        "",
        MID,
        MID ".",
        MID ".1",
        MID ".1.",
        MID "..1",
        MID ".1.2.3",
        MID ".1.2x",
        MID ".-1.2",
        MID ".+1.2",
        MID ".1234567890.0", /* more digits than any variant */
        "0123456789ABCDEF0123456789abcdef.0.0",
        "0123456789abcdef0123456789abcde.0.0",
        "0123456789abcdef0123456789abcdef0.0.0",
        "0123456789abcdef0123456789abcdeg.0.0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (job_id_parse(bad[i], &id) == 0) fail_msg("\"%s\" taken for a job id", bad[i]);
    char jid[JOB_ID_MAX];
    assert_int_equal(job_id_format(jid, MID, 3, 41), 0);
    assert_string_equal(jid, MID ".3.41");
    assert_int_equal(job_id_parse(jid, &id), 0);
    assert_int_equal(id.variant, 3);
    assert_int_equal(id.n, 41);
    assert_int_equal(job_id_format(jid, "not-a-message-id", 0, 0), -1);
    assert_int_equal(job_id_format(jid, MID "00", 0, 0), -1);
}

static void test_library_digest(void **state)
{
    (void)state;
    library_t a, b;
    assert_int_equal(library_prepare(&a), 0);
    assert_int_equal(library_prepare(&b), 0);
    assert_int_equal(strlen(a.digest), 32);
    assert_string_equal(a.digest, b.digest);
    assert_int_equal(strncmp(a.code.data, "#!lua name=sealpost\n", 20), 0);
    char call[96];
    snprintf(call, sizeof call, "return '%s' end", a.digest);
    assert_non_null(strstr(a.code.data, "function_name='" LIBRARY_DIGEST_FUNCTION "'"));
    assert_non_null(strstr(a.code.data, call));
    assert_true(a.code.len > queue_functions_lua_len);
    library_free(&a);
    library_free(&b);
}

/* One reply fed to a bounded reader: REDIS_OK with the reply, or the error. */
static int read_one(const char *wire, redisReply **reply)
{
    size_t announced = 0;
    redisReader *r = rconn_reader_new(&announced);
    assert_non_null(r);
    assert_int_equal(redisReaderFeed(r, wire, strlen(wire)), REDIS_OK);
    *reply = NULL;
    int rc = redisReaderGetReply(r, (void **)reply);
    redisReaderFree(r);
    return rc;
}

static void test_reader_bounds_the_elements_a_reply_announces(void **state)
{
    (void)state;
    redisReply *reply;
    assert_int_equal(read_one("*2\r\n$1\r\na\r\n*1\r\n:5\r\n", &reply), REDIS_OK);
    assert_non_null(reply);
    assert_int_equal(reply->elements, 2);
    assert_int_equal(reply->element[1]->element[0]->integer, 5);
    freeReplyObject(reply);
    /* what fuzz_resp found: 4.8 GB of element pointers asked for at the header */
    assert_int_equal(read_one("*600000000\r\n", &reply), REDIS_ERR);
    assert_null(reply);
    /* the bound is on the reply: 2 + 16 Mi - 1 nested is one too many */
    assert_int_equal(read_one("*2\r\n*16777215\r\n", &reply), REDIS_ERR);
    assert_null(reply);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slots),
        cmocka_unit_test(test_command_slots),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_slots_reply),
        cmocka_unit_test(test_replies_read_whole_or_not_at_all),
        cmocka_unit_test(test_schema_matches_the_library),
        cmocka_unit_test(test_keys_text),
        cmocka_unit_test(test_call_keys),
        cmocka_unit_test(test_fcall_argv),
        cmocka_unit_test(test_job_ids),
        cmocka_unit_test(test_library_digest),
        cmocka_unit_test(test_reader_bounds_the_elements_a_reply_announces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
