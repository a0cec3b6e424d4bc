/* discovery/: the WKD names (the draft's own example) and the HTTP
 * response parser's framing, each refusal named. The look-ups themselves
 * run against a real WKD server in tests/integration/test_discovery.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "discovery/internal.h"

static void test_the_drafts_example(void **state)
{
    (void)state;
    wkd_url_t u;
    assert_int_equal(wkd_url("Joe.Doe@Example.ORG", true, &u), 0);
    assert_string_equal(u.host, "openpgpkey.example.org");
    assert_string_equal(u.path,
                        "/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q"
                        "?l=Joe.Doe");
    assert_int_equal(wkd_url("Joe.Doe@Example.ORG", false, &u), 0);
    assert_string_equal(u.host, "example.org");
    assert_string_equal(u.path, "/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q"
                                "?l=Joe.Doe");
}

static void test_names_that_are_not_addresses(void **state)
{
    (void)state;
    wkd_url_t u;
    assert_int_equal(wkd_url("nobody", true, &u), -1);
    assert_int_equal(wkd_url("@example.org", true, &u), -1);
    assert_int_equal(wkd_url("joe@", true, &u), -1);
    char out[16];
    assert_int_equal(wkd_percent_encode("a b&c", 5, out, sizeof out), 0);
    assert_string_equal(out, "a%20b%26c");
    assert_int_equal(wkd_percent_encode("&&&&&&", 6, out, sizeof out), -1);
}

/* Parses in whole, with the stream's end after it: the status and body, or -1. */
static int parse(const char *in, size_t max, http_response_t *r, char *err)
{
    return http_response_parse(in, strlen(in), true, max, r, err, 160);
}

static void test_framing(void **state)
{
    (void)state;
    http_response_t r;
    char err[160];
    const char *cl = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_int_equal(parse(cl, 100, &r, err), 1);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 5);
    assert_memory_equal(r.body.data, "hello", 5);
    buf_free(&r.body);
    /* incomplete without the end of the stream: more is needed */
    assert_int_equal(http_response_parse(cl, strlen(cl) - 1, false, 100, &r, err, sizeof err), 0);
    assert_int_equal(http_response_parse(cl, 10, false, 100, &r, err, sizeof err), 0);
    assert_int_equal(http_response_parse(cl, strlen(cl) - 1, true, 100, &r, err, sizeof err), -1);

    const char *chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: y\r\n\r\n";
    assert_int_equal(parse(chunked, 100, &r, err), 1);
    assert_int_equal(r.body.len, 5);
    assert_memory_equal(r.body.data, "abcde", 5);
    buf_free(&r.body);

    const char *closed = "HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnone";
    assert_int_equal(parse(closed, 100, &r, err), 1);
    assert_int_equal(r.status, 404);
    buf_free(&r.body);
    assert_int_equal(http_response_parse(closed, strlen(closed), false, 100, &r, err, sizeof err),
                     0);

    const char *redirect = "HTTP/1.1 301 Moved\r\nLocation: https://b.test/x \r\n"
                           "Content-Length: 0\r\n\r\n";
    assert_int_equal(parse(redirect, 100, &r, err), 1);
    assert_string_equal(r.location, "https://b.test/x");
    buf_free(&r.body);
}

static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *in, *why;
    } cases[] = {
        {"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"},
        {"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.x status line"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
         "bad Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         "both Content-Length and chunked"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         "unsupported Transfer-Encoding"},
        {"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "folded header field"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
         "chunk not followed by CRLF"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", "response larger than 100 octets"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
         "response larger than 100 octets"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
         "the connection closed inside a chunk"},
        {"HTTP/1.1 200 OK\r\nServer:", "the connection closed inside the header"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_response_t r;
        char err[160] = "";
        assert_int_equal(parse(cases[i].in, 100, &r, err), -1);
        assert_string_equal(err, cases[i].why);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_drafts_example),
        cmocka_unit_test(test_names_that_are_not_addresses),
        cmocka_unit_test(test_framing),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
