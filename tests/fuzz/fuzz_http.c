/* libFuzzer target: a hostile WKD server or keyserver. The input is the
 * octets of a response; discovery/http.c's parser reads it as the client
 * does: every prefix as the stream delivers it, then the whole with the
 * stream's end. The first octet is the size bound, in 16-octet steps.
 *
 * Beyond "no crash, no out-of-bounds read, no leak", it checks what the
 * parser promises: 1, 0 or -1 and nothing else; 0 never at the stream's
 * end; a complete response has a status of 100..599 and a body within the
 * bound; a response complete before the end of the input stays complete
 * with the same body (framing does not depend on what follows), except a
 * body that runs to the end of the stream. A broken promise traps. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "discovery/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t max = (size_t)data[0] * 16;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    char err[160];
    http_response_t first = {0};
    bool have_first = false;
    for (size_t n = 0; n <= len; n++) {
        http_response_t r;
        int rc = http_response_parse(in, n, false, max, &r, err, sizeof err);
        CHECK(rc == 1 || rc == 0 || rc == -1);
        if (rc != 1) continue;
        CHECK(r.status >= 100 && r.status <= 599 && r.body.len <= max);
        if (!have_first) {
            first = r;
            have_first = true;
            continue;
        }
        CHECK(r.status == first.status && r.body.len == first.body.len &&
              (!r.body.len || !memcmp(r.body.data, first.body.data, r.body.len)));
        buf_free(&r.body);
    }
    http_response_t whole;
    int rc = http_response_parse(in, len, true, max, &whole, err, sizeof err);
    CHECK(rc == 1 || rc == -1);
    if (rc == 1) {
        CHECK(whole.status >= 100 && whole.status <= 599 && whole.body.len <= max);
        if (have_first) CHECK(whole.status == first.status);
        buf_free(&whole.body);
    } else {
        CHECK(err[0]);
    }
    buf_free(&first.body);
    return 0;
}
