/* libFuzzer target: the DATA decoder and dot-stuffing.
 *
 * Input layout: byte 0 picks max_line, byte 1 picks max_size, byte 2 (mod 8)
 * says how many chunk-size bytes follow; the rest is the DATA stream, fed to
 * proto_data_feed in chunks of those sizes (cycling). Checks, each a
 * __builtin_trap() when broken:
 *  - each call consumes at most what it was given, stops short only at the end
 *    marker, and writes no more than it consumed; content never exceeds max_size;
 *  - the chunked decode equals the one-shot decode (consumed, content, error, done);
 *  - the decoder ends only after a real CRLF "." CRLF (or "." CRLF at the very start);
 *  - no NUL is ever written, and what was read has one exactly when it was
 *    refused for one (DATA and BDAT alike: we offer no BINARYMIME);
 *  - when the content is clean (no error, empty or ending in CRLF), dot-stuffing it
 *    and decoding that again gives the same content back;
 *  - the same input as BDAT chunks: all of it is consumed, nothing ends it, and
 *    when it passes the line rules it is the content unchanged and survives
 *    being relayed with DATA (dot-stuffed, decoded) byte for byte. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

typedef struct result {
    size_t consumed;
    size_t out_len;
    enum proto_data_error error;
    bool done;
} result_t;

/* A NUL in what was read is an error, the first one unless another came
 * before it; without one, no NUL error. */
static void check_nul(const char *in, size_t len, enum proto_data_error error)
{
    const char *nul = memchr(in, 0, len);
    CHECK(nul ? error != PROTO_DATA_OK : error != PROTO_DATA_NUL);
}

/* Decodes in[0..len) in chunks of the given sizes (cycling; none: one shot). */
static result_t decode(const char *in, size_t len, size_t max_line, size_t max_size,
                       const uint8_t *chunks, size_t n_chunks, char *out)
{
    proto_data_t d;
    proto_data_init(&d, max_line, max_size);
    result_t r = {0, 0, PROTO_DATA_OK, false};
    size_t k = 0;
    while (r.consumed < len && !d.done) {
        size_t want = len - r.consumed;
        if (n_chunks) {
            size_t c = 1 + chunks[k++ % n_chunks] % 64;
            if (c < want) want = c;
        }
        size_t got = 0;
        size_t used = proto_data_feed(&d, in + r.consumed, want, out + r.out_len, &got);
        CHECK(used <= want);
        CHECK(got <= used);
        CHECK(used == want || d.done);
        r.consumed += used;
        r.out_len += got;
        CHECK(r.out_len <= r.consumed);
        CHECK(r.out_len <= max_size);
        CHECK(d.size == r.out_len);
    }
    CHECK(r.consumed <= len);
    CHECK(!memchr(out, 0, r.out_len));
    check_nul(in, r.consumed, d.error);
    r.error = d.error;
    r.done = d.done;
    if (d.done) { /* the end marker really was there */
        CHECK(r.consumed >= 3);
        CHECK(!memcmp(in + r.consumed - 3, ".\r\n", 3));
        CHECK(r.consumed == 3 || (r.consumed >= 5 && !memcmp(in + r.consumed - 5, "\r\n", 2)));
    }
    return r;
}

static void check_chunked(const char *in, size_t len, size_t max_line, size_t max_size)
{
    proto_data_t d;
    proto_chunk_init(&d, max_line, max_size);
    char *out = malloc(len + 1);
    if (!out) abort();
    size_t got = 0;
    CHECK(proto_data_feed(&d, in, len, out, &got) == len);
    proto_data_end(&d);
    CHECK(!d.done && got <= len);
    CHECK(!memchr(out, 0, got));
    check_nul(in, len, d.error);
    bool ends_in_crlf = len >= 2 && in[len - 2] == '\r' && in[len - 1] == '\n';
    if (d.error == PROTO_DATA_OK) {
        CHECK(got == len && !memcmp(out, in, len));
        if (len == 0 || ends_in_crlf) {
            size_t n = proto_dot_stuffed_len(out, got);
            char *stuffed = malloc(n);
            char *back = malloc(n);
            if (!stuffed || !back) abort();
            proto_dot_stuff(out, got, stuffed);
            result_t s = decode(stuffed, n, SIZE_MAX, SIZE_MAX, NULL, 0, back);
            CHECK(s.done && s.consumed == n && s.error == PROTO_DATA_OK);
            CHECK(s.out_len == got && !memcmp(back, out, got));
            free(stuffed);
            free(back);
        }
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) return 0;
    size_t max_line = data[0] < 200 ? 1 + data[0] % 80 : data[0] < 230 ? 1000 : SIZE_MAX;
    size_t max_size = data[1] < 200 ? data[1] % 128 : SIZE_MAX;
    size_t n_chunks = data[2] % 8;
    if (size < 3 + n_chunks) return 0;
    const uint8_t *chunks = data + 3;
    const char *in = (const char *)data + 3 + n_chunks;
    size_t len = size - 3 - n_chunks;

    char *out = malloc(len + 1);
    char *one = malloc(len + 1);
    if (!out || !one) abort();

    check_chunked(in, len, max_line, max_size);
    result_t r = decode(in, len, max_line, max_size, chunks, n_chunks, out);
    result_t o = decode(in, len, max_line, max_size, NULL, 0, one);
    CHECK(r.consumed == o.consumed && r.out_len == o.out_len && r.error == o.error &&
          r.done == o.done);
    CHECK(!memcmp(out, one, r.out_len));
    free(one);

    bool clean = r.error == PROTO_DATA_OK &&
                 (r.out_len == 0 ||
                  (r.out_len >= 2 && out[r.out_len - 2] == '\r' && out[r.out_len - 1] == '\n'));
    if (clean) {
        size_t n = proto_dot_stuffed_len(out, r.out_len);
        CHECK(n >= r.out_len + 3);
        char *stuffed = malloc(n + 1);
        char *back = malloc(n + 1);
        if (!stuffed || !back) abort();
        stuffed[n] = 0x5a;
        proto_dot_stuff(out, r.out_len, stuffed);
        CHECK(stuffed[n] == 0x5a); /* wrote exactly n octets */
        result_t s = decode(stuffed, n, SIZE_MAX, SIZE_MAX, chunks, n_chunks, back);
        CHECK(s.done && s.consumed == n && s.error == PROTO_DATA_OK);
        CHECK(s.out_len == r.out_len && !memcmp(back, out, r.out_len));
        free(stuffed);
        free(back);
    }
    free(out);
    return 0;
}
