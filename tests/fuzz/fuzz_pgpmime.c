/* libFuzzer target: the PGP/MIME builders never read or write out of bounds,
 * never copy a Bcc, keep the body byte for byte in the inner entity (at its
 * end, under a legacy display element), and write CRLF lines whenever the
 * header they were given had them; the clear copy keeps no Bcc and nothing
 * else is lost from it; the passthrough check never faults, takes the
 * builders' own PGP/MIME output for encrypted when its armor holds an
 * encrypted message, and not when the armor does not or a clear third part
 * is added. The first input octet chooses the flags. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "crypto/crypto.h"
#include "proto/proto.h"
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
static void no_bcc(const char *m, size_t n, size_t *body)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, m, n);
    while (proto_header_next(&it, &f)) {
        CHECK(!(f.name_len == 3 && !strncasecmp(f.name, "Bcc", 3)));
        CHECK(!(f.name_len == 10 && !strncasecmp(f.name, "Resent-Bcc", 10)));
    }
    *body = it.body;
}
static bool crlf(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n')) return false;
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) return false;
    }
    return true;
}
/* A PKESK and a SEIPD packet: the framing of an encrypted message. */
static const char sealed[] =
    "-----BEGIN PGP MESSAGE-----\n\nwQwDAQIDBAUGBwgBAAHSAwGquw==\n-----END PGP MESSAGE-----\n";

/* Puts a clear part before the close delimiter, the last line of ours. */
static void third_part(buf_t *b)
{
    const char *close = b->data + b->len - 2;
    while (close > b->data && close[-1] != '\n')
        close--;
    size_t at = (size_t)(close - b->data);
    buf_t out;
    buf_init(&out);
    CHECK(buf_append(&out, b->data, at) == 0);
    /* "--<boundary>" without the closing "--" and the CRLF */
    CHECK(buf_append(&out, close, b->len - at - 4) == 0);
    CHECK(buf_printf(&out, "\r\nContent-Type: text/plain\r\n\r\nclear\r\n") == 0);
    CHECK(buf_append(&out, close, b->len - at) == 0);
    buf_reset(b);
    CHECK(buf_append(b, out.data, out.len) == 0);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size) return 0;
    unsigned flags = data[0] & (PGPMIME_HIDE_SUBJECT | PGPMIME_LEGACY_DISPLAY);
    char *msg = malloc(size - 1 ? size - 1 : 1);
    memcpy(msg, data + 1, size - 1);
    size_t len = size - 1;
    (void)pgpmime_is_encrypted(msg, len);
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    bool any = proto_header_next(&it, &f);
    while (proto_header_next(&it, &f)) {
    }
    buf_t b;
    buf_init(&b);
    int r = pgpmime_inner(msg, len, flags, &b);
    CHECK((r == 0) == any);
    if (r == 0) {
        size_t body, tail = len - it.body;
        no_bcc(b.data, b.len, &body);
        if (flags & PGPMIME_LEGACY_DISPLAY) /* the body, then the closing delimiter */
            CHECK(b.len - body >= tail && memmem(b.data + body, b.len - body, msg + it.body, tail));
        else
            CHECK(b.len - body == tail && !memcmp(b.data + body, msg + it.body, tail));
        /* header is CRLF unless the input had lone CRs inside lines */
        if (!memchr(msg, '\r', it.body)) CHECK(crlf(b.data, body));
    }
    buf_reset(&b);
    static const char armor[] = "-----BEGIN PGP MESSAGE-----\n\nabc\n-----END PGP MESSAGE-----\n";
    r = pgpmime_outer(msg, len, armor, sizeof armor - 1, flags, &b);
    CHECK((r == 0) == any);
    if (r == 0) {
        size_t body;
        no_bcc(b.data, b.len, &body);
        if (!memchr(msg, '\r', it.body)) CHECK(crlf(b.data, b.len));
        CHECK(!pgpmime_is_encrypted(b.data, b.len));
    }
    buf_reset(&b);
    r = pgpmime_outer(msg, len, sealed, sizeof sealed - 1, flags, &b);
    if (r == 0) {
        CHECK(pgpmime_is_encrypted(b.data, b.len));
        third_part(&b);
        CHECK(!pgpmime_is_encrypted(b.data, b.len));
    }
    buf_reset(&b);
    CHECK(pgpmime_without_blind(msg, len, &b) == 0);
    size_t clear_body;
    no_bcc(b.data, b.len, &clear_body);
    CHECK(!pgpmime_has_blind(b.data, b.len));
    CHECK(pgpmime_has_blind(msg, len) ? b.len < len : b.len == len && !memcmp(b.data, msg, len));
    buf_free(&b);
    free(msg);
    return 0;
}
