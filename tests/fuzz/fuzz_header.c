/* libFuzzer target: the header walker and the address-list parser.
 *
 * Input layout: byte 0 picks the field name to read addresses from; the
 * rest is the message. Checks, each a __builtin_trap() when broken:
 *  - every field lies inside the message, after the one before it, with its
 *    name at its start, its value after the colon and inside it, and a name
 *    of printable ASCII without ':'; proto_header_has finds each name;
 *  - the body starts after the last field and within the message, and the
 *    header alone (msg cut at the body) walks to the same fields;
 *  - each address is NUL-terminated with no NUL inside, within PROTO_PATH_MAX,
 *    has an '@' with something on both sides, no line ends or other controls
 *    (a quoted string's or literal's HTAB aside) and no upper-case domain; the
 *    count returned is the number of calls, and the body changes nothing. */
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

static const char *const names[] = {"To", "Cc", "From", "Reply-To", "Bcc", "Resent-To"};

/* Walks the header of msg; returns the number of fields and the body offset. */
static size_t walk(const char *msg, size_t len, size_t *body)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    size_t n = 0, prev_end = 0;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f)) {
        CHECK(f.raw >= msg + prev_end && f.raw_len > 0 && f.raw + f.raw_len <= msg + len);
        CHECK(f.name == f.raw && f.name_len > 0 && f.name_len < f.raw_len);
        for (size_t i = 0; i < f.name_len; i++)
            CHECK(f.name[i] > ' ' && f.name[i] < 0x7f && f.name[i] != ':');
        CHECK(f.value > f.name + f.name_len && f.value[-1] == ':');
        CHECK(f.value + f.value_len <= f.raw + f.raw_len);
        if (f.name_len < 64) {
            char name[64];
            memcpy(name, f.name, f.name_len);
            name[f.name_len] = 0;
            CHECK(proto_header_has(msg, len, name));
        }
        prev_end = (size_t)(f.raw + f.raw_len - msg);
        n++;
    }
    CHECK(it.body >= prev_end && it.body <= len);
    *body = it.body;
    return n;
}

static void check_addr(const char *addr, size_t len, void *arg)
{
    size_t *calls = arg;
    (*calls)++;
    CHECK(len > 0 && len <= PROTO_PATH_MAX && addr[len] == 0 && strlen(addr) == len);
    for (size_t i = 0; i < len; i++)
        CHECK(((unsigned char)addr[i] >= ' ' || addr[i] == '\t') && addr[i] != 0x7f);
    const char *at = memrchr(addr, '@', len);
    CHECK(at && at > addr && at < addr + len - 1);
    for (const char *p = at + 1; p < addr + len; p++)
        CHECK(!(*p >= 'A' && *p <= 'Z'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *name = names[data[0] % (sizeof names / sizeof names[0])];
    size_t len = size - 1;
    /* a copy of its own size, so reading one octet past the end is caught */
    char *msg = malloc(len ? len : 1);
    if (!msg) abort();
    memcpy(msg, data + 1, len);

    size_t body = 0, body_again = 0;
    size_t fields = walk(msg, len, &body);
    CHECK(walk(msg, body, &body_again) == fields && body_again == body);

    size_t calls = 0, calls_header = 0;
    size_t n = proto_header_addresses(msg, len, name, check_addr, &calls);
    CHECK(n == calls);
    CHECK(proto_header_addresses(msg, body, name, check_addr, &calls_header) == n);
    CHECK(n == 0 || fields > 0);

    size_t at = data[0] < len ? data[0] : 0;
    size_t skipped = proto_header_skip_cfws(msg, len, at);
    CHECK(skipped >= at && skipped <= len);
    free(msg);
    return 0;
}
