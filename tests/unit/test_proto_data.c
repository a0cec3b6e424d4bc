/* Unit tests for proto/'s message content: the DATA decoder (end marker,
 * unstuffing, smuggling, line and size limits, any chunking), the BDAT
 * chunk rules, and dot-stuffing on the way out. */
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

/* A NUL is refused wherever it is (RFC 6152 §2: not even 8BITMIME content
 * holds one), and the data is still read to its real end: "\r\n\0.\r\n" is
 * the end of data to a next hop that drops NULs, so it must not be relayed,
 * and it must not end the data here either. */
static void test_data_nul(void **state)
{
    (void)state;
    static const char smuggling[] = "first\r\n\0.\r\nMAIL FROM:<evil@x.test>\r\n.\r\nQUIT\r\n";
    expect_data(LIT(smuggling), 1000, 1000, LIT("first\r\n"), sizeof smuggling - 1 - 6,
                PROTO_DATA_NUL, true);
    expect_data(LIT("a\0b\r\n.\r\n"), 1000, 1000, LIT("a"), 8, PROTO_DATA_NUL, true);
    expect_data(LIT("\0\r\n.\r\n"), 1000, 1000, LIT(""), 6, PROTO_DATA_NUL, true);
    expect_data(LIT(".\0\r\n.\r\n"), 1000, 1000, LIT(""), 7, PROTO_DATA_NUL, true);
    expect_data(LIT("end\0"), 1000, 1000, LIT("end"), 4, PROTO_DATA_NUL, false);
    /* the first error is kept */
    expect_data(LIT("a\nb\0\r\n.\r\n"), 1000, 1000, NULL, 0, 9, PROTO_DATA_BARE_LF, true);
    expect_data(LIT("a\0b\n\r\n.\r\n"), 1000, 1000, NULL, 0, 9, PROTO_DATA_NUL, true);
    expect_data(LIT("abcdef\0\r\n.\r\n"), 4, 1000, NULL, 0, 12, PROTO_DATA_LONG_LINE, true);
    expect_data(LIT("abcd\0\r\n.\r\n"), 1000, 4, NULL, 0, 10, PROTO_DATA_NUL, true);
    expect_data(LIT("abcde\0\r\n.\r\n"), 1000, 4, NULL, 0, 11, PROTO_DATA_TOO_BIG, true);
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
    /* we offer no BINARYMIME, so a chunk is text like DATA's content */
    expect_chunked(LIT("a\r\n\0.\r\nb\r\n"), 1000, 1000, NULL, 0, PROTO_DATA_NUL);
    expect_chunked(LIT("\0"), 1000, 1000, NULL, 0, PROTO_DATA_NUL);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_plain),
        cmocka_unit_test(test_data_unstuffing),
        cmocka_unit_test(test_data_empty),
        cmocka_unit_test(test_data_marker_split),
        cmocka_unit_test(test_data_rest_unconsumed),
        cmocka_unit_test(test_data_no_end),
        cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_bare_line_endings),
        cmocka_unit_test(test_data_nul),
        cmocka_unit_test(test_data_many_bare_lfs),
        cmocka_unit_test(test_data_line_length),
        cmocka_unit_test(test_data_too_big),
        cmocka_unit_test(test_data_chunking_equivalence),
        cmocka_unit_test(test_dot_stuff_roundtrip),
        cmocka_unit_test(test_dot_stuff_exact),
        cmocka_unit_test(test_dot_stuff_random),
        cmocka_unit_test(test_chunk_content_is_literal),
        cmocka_unit_test(test_chunk_line_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
