/* The DATA decoder (RFC 5321 §4.1.1.4, §4.5.2) and dot-stuffing for sending.
 *
 * Only CRLF "." CRLF ends the data. A bare LF or a bare CR anywhere is an error
 * (SMTP smuggling relies on receivers that accept <LF>.<LF> or <CR>.<CR> as the
 * end while the next hop does not), but the decoder keeps scanning for the
 * real end marker so the session stays in step with the client. A NUL is
 * an error too: no body type we offer carries one (RFC 6152 §2), and a next
 * hop that drops NULs would read "\r\n\0.\r\n" as the end of data. */
#include "proto/proto.h"

#include <stdint.h>
#include <string.h>

enum { S_LINE_START, S_IN_LINE, S_CR, S_DOT, S_DOT_CR };

void proto_data_init(proto_data_t *d, size_t max_line, size_t max_size)
{
    memset(d, 0, sizeof *d);
    d->max_line = max_line;
    d->max_size = max_size;
    d->state = S_LINE_START;
}

void proto_chunk_init(proto_data_t *d, size_t max_line, size_t max_size)
{
    proto_data_init(d, max_line, max_size);
    d->chunked = true;
}

static void fail(proto_data_t *d, enum proto_data_error e)
{
    if (d->error == PROTO_DATA_OK) d->error = e;
}

static void emit(proto_data_t *d, char c, char *out, size_t *out_len)
{
    if (d->error) return;
    if (d->size >= d->max_size) {
        fail(d, PROTO_DATA_TOO_BIG);
        return;
    }
    out[(*out_len)++] = c;
    d->size++;
}

/* The position of the next c at or after i in in[0..len), or len; *at
 * remembers it, so a buffer of many short lines is searched once per byte
 * value, not once per line (a body of bare LFs would otherwise cost a
 * search to the end of the buffer for every line). */
static size_t next_at(const char *in, size_t len, size_t i, char c, size_t *at)
{
    if (*at < i || *at == SIZE_MAX) {
        const char *p = memchr(in + i, c, len - i);
        *at = p ? (size_t)(p - in) : len;
    }
    return *at;
}

/* Inside a line, a run of ordinary bytes is taken at once: the same
 * checks as byte by byte (the line's length first, then the size, each
 * failing at the byte where it is exceeded), one memcpy. */
static void take_run(proto_data_t *d, const char *p, size_t n, char *out, size_t *out_len)
{
    if (!d->error) {
        size_t line_room = d->max_line > d->line_len ? d->max_line - d->line_len : 0;
        size_t size_room = d->max_size > d->size ? d->max_size - d->size : 0;
        size_t copy = n < size_room ? n : size_room;
        bool too_long = line_room < n && line_room <= size_room;
        if (too_long) copy = line_room;
        memcpy(out + *out_len, p, copy);
        *out_len += copy;
        d->size += copy;
        if (too_long)
            fail(d, PROTO_DATA_LONG_LINE);
        else if (copy < n)
            fail(d, PROTO_DATA_TOO_BIG);
    }
    d->line_len += n;
}

size_t proto_data_feed(proto_data_t *d, const char *in, size_t len, char *out, size_t *out_len)
{
    size_t i = 0, cr = SIZE_MAX, lf = SIZE_MAX, nul = SIZE_MAX;
    *out_len = 0;
    while (i < len && !d->done) {
        if (d->state == S_IN_LINE) {
            size_t end = next_at(in, len, i, '\r', &cr);
            size_t lf_at = next_at(in, len, i, '\n', &lf);
            size_t nul_at = next_at(in, len, i, '\0', &nul);
            if (lf_at < end) end = lf_at;
            if (nul_at < end) end = nul_at;
            size_t run = end - i;
            if (run) {
                take_run(d, in + i, run, out, out_len);
                i += run;
                continue;
            }
        }
        char c = in[i++];
        if (++d->line_len > d->max_line) fail(d, PROTO_DATA_LONG_LINE);
    again:
        switch (d->state) {
        case S_LINE_START:
            if (c == '.' && !d->chunked) {
                d->state = S_DOT;
                d->line_len--; /* the transparency dot is not the line's (RFC 5321 §4.5.3.1.6) */
                break;
            }
            d->state = S_IN_LINE;
            goto again;
        case S_IN_LINE:
            if (c == '\r') {
                emit(d, c, out, out_len);
                d->state = S_CR;
            } else if (c == '\n') {
                /* Not a line end: a "." after it must not look like a line start,
                 * or "\n.\r\n" would end the data early. */
                fail(d, PROTO_DATA_BARE_LF);
                d->line_len = 0;
            } else if (c == '\0') {
                fail(d, PROTO_DATA_NUL);
            } else {
                emit(d, c, out, out_len);
            }
            break;
        case S_CR:
            if (c == '\n') {
                emit(d, c, out, out_len);
                d->state = S_LINE_START;
                d->line_len = 0;
                break;
            }
            fail(d, PROTO_DATA_BARE_CR);
            d->state = S_IN_LINE;
            goto again;
        case S_DOT:
            if (c == '\r') {
                d->state = S_DOT_CR;
                break;
            }
            d->state = S_IN_LINE; /* a leading dot is dropped: dot-unstuffing */
            goto again;
        case S_DOT_CR:
            if (c == '\n') {
                d->done = true;
                break;
            }
            fail(d, PROTO_DATA_BARE_CR);
            d->state = S_IN_LINE;
            goto again;
        }
    }
    return i;
}

void proto_data_end(proto_data_t *d)
{
    if (d->state == S_CR) fail(d, PROTO_DATA_BARE_CR);
}

/* The length of the line that starts at p (its LF included), or left when
 * no LF follows. Lines go by memchr, not octet by octet: the worker stuffs
 * every body it sends, and octet by octet this was 30% of its instructions
 * per message. */
static size_t line_len(const char *p, size_t left)
{
    const char *lf = memchr(p, '\n', left);
    return lf ? (size_t)(lf + 1 - p) : left;
}

static bool ends_in_crlf(const char *body, size_t len)
{
    return len >= 2 && body[len - 2] == '\r' && body[len - 1] == '\n';
}

size_t proto_dot_stuffed_len(const char *body, size_t len)
{
    size_t n = len;
    for (size_t i = 0; i < len; i += line_len(body + i, len - i))
        if (body[i] == '.') n++;
    if (len && !ends_in_crlf(body, len)) n += 2;
    return n + 3;
}

void proto_dot_stuff(const char *body, size_t len, char *out)
{
    for (size_t i = 0, n; i < len; i += n) {
        n = line_len(body + i, len - i);
        if (body[i] == '.') *out++ = '.';
        memcpy(out, body + i, n);
        out += n;
    }
    if (len && !ends_in_crlf(body, len)) {
        *out++ = '\r';
        *out++ = '\n';
    }
    memcpy(out, ".\r\n", 3);
}
