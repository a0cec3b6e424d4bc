/* RFC 5322 header fields: one walker over the header section, and the
 * addresses of To/Cc-like fields. */
#include "proto/proto.h"

#include <string.h>
#include <strings.h>

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* The offset just after the line that starts at i: after its LF, or len. */
static size_t next_line(const char *msg, size_t len, size_t i)
{
    const char *lf = memchr(msg + i, '\n', len - i);
    return lf ? (size_t)(lf - msg) + 1 : len;
}

/* The length of the empty line at i, 0 when the line has content. A lone CR
 * counts only at the very end: elsewhere it is content (the DATA decoder
 * refuses bare CRs, so only broken input gets here). */
static size_t empty_line(const char *msg, size_t len, size_t i)
{
    if (msg[i] == '\n') return 1;
    if (msg[i] != '\r') return 0;
    if (i + 1 == len) return 1;
    return msg[i + 1] == '\n' ? 2 : 0;
}

/* The length of the field name that starts p, 0 when p starts no field.
 * *colon gets the colon's offset. RFC 5322 §3.6.8: a name is printable
 * ASCII but ':'; §4.5.3 (obsolete) lets white space precede the colon. */
static size_t field_name(const char *p, size_t n, size_t *colon)
{
    size_t i = 0;
    while (i < n && (unsigned char)p[i] > ' ' && (unsigned char)p[i] < 0x7f && p[i] != ':')
        i++;
    size_t name_len = i;
    while (i < n && is_wsp(p[i]))
        i++;
    if (name_len == 0 || i == n || p[i] != ':') return 0;
    *colon = i;
    return name_len;
}

void proto_header_iter_init(proto_header_iter_t *it, const char *msg, size_t len)
{
    it->msg = msg;
    it->len = len;
    it->pos = 0;
    it->body = len;
    it->done = false;
}

static void fill_field(const char *raw, size_t raw_len, size_t name_len, size_t colon,
                       proto_header_field_t *f)
{
    size_t end = raw_len; /* the value stops before the field's last line end */
    if (end > colon + 1 && raw[end - 1] == '\n') end--;
    if (end > colon + 1 && raw[end - 1] == '\r') end--;
    f->name = raw;
    f->name_len = name_len;
    f->value = raw + colon + 1;
    f->value_len = end - colon - 1;
    f->raw = raw;
    f->raw_len = raw_len;
}

bool proto_header_next(proto_header_iter_t *it, proto_header_field_t *field)
{
    while (!it->done) {
        size_t i = it->pos;
        size_t empty = i < it->len ? empty_line(it->msg, it->len, i) : 0;
        if (i >= it->len || empty) {
            it->body = i + empty;
            it->done = true;
            break;
        }
        size_t end = next_line(it->msg, it->len, i);
        while (end < it->len && is_wsp(it->msg[end])) /* folded: the field goes on */
            end = next_line(it->msg, it->len, end);
        it->pos = end;
        size_t colon = 0;
        size_t name_len = field_name(it->msg + i, end - i, &colon);
        if (name_len) {
            fill_field(it->msg + i, end - i, name_len, colon, field);
            return true;
        }
    }
    return false;
}

static bool name_is(const proto_header_field_t *f, const char *name, size_t name_len)
{
    return f->name_len == name_len && !strncasecmp(f->name, name, name_len);
}

bool proto_header_has(const char *msg, size_t len, const char *name)
{
    size_t name_len = strlen(name);
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (name_is(&f, name, name_len)) return true;
    return false;
}

/* ---- address lists (RFC 5322 §3.4, §4.4) ----
 *
 * One pass, no recursion and no token list: a small tokenizer hands each
 * token to a state machine that builds the current addr-spec in a fixed
 * buffer. Nesting (comments) is a counter, so hostile input costs linear time
 * and constant stack. */

enum tok_kind { TOK_END, TOK_ATOM, TOK_QUOTED, TOK_LITERAL, TOK_SPECIAL, TOK_BAD };

typedef struct token {
    enum tok_kind kind;
    const char *p;
    size_t n;
    char c; /* the character of a TOK_SPECIAL */
} token_t;

static bool is_fws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* A comment may nest and hold quoted-pairs; one left open runs to the end. */
size_t proto_header_skip_cfws(const char *p, size_t n, size_t i)
{
    while (i < n) {
        if (is_fws(p[i])) {
            i++;
            continue;
        }
        if (p[i] != '(') break;
        size_t depth = 0;
        while (i < n) {
            char c = p[i++];
            if (c == '\\' && i < n) {
                i++;
            } else if (c == '(') {
                depth++;
            } else if (c == ')' && --depth == 0) {
                break;
            }
        }
    }
    return i;
}

/* The end of the quoted string or domain literal that opens at i (just after
 * its closing character), or 0 when it never closes. */
static size_t scan_delimited(const char *p, size_t n, size_t i, char close)
{
    for (i++; i < n; i++) {
        if (p[i] == '\\') {
            i++;
        } else if (p[i] == close) {
            return i + 1;
        }
    }
    return 0;
}

static bool is_special(char c)
{
    return c != 0 && strchr("()<>[]:;@\\,.\"", c) != NULL;
}

/* atext, leniently: UTF-8 octets are welcome (RFC 6532), controls are not. */
static bool is_atom_char(char c)
{
    unsigned char u = (unsigned char)c;
    return u > ' ' && u != 0x7f && !is_special(c);
}

static token_t next_token(const char *p, size_t n, size_t *pos)
{
    size_t i = proto_header_skip_cfws(p, n, *pos);
    token_t t = {TOK_END, p + i, 0, 0};
    if (i >= n) {
        *pos = n;
        return t;
    }
    size_t end = i + 1;
    if (p[i] == '"' || p[i] == '[') {
        end = scan_delimited(p, n, i, p[i] == '"' ? '"' : ']');
        t.kind = !end ? TOK_BAD : p[i] == '"' ? TOK_QUOTED : TOK_LITERAL;
        if (!end) end = n;
    } else if (is_atom_char(p[i])) {
        while (end < n && is_atom_char(p[end]))
            end++;
        t.kind = TOK_ATOM;
    } else if (p[i] != '\\' && p[i] != ')' && is_special(p[i])) {
        t.kind = TOK_SPECIAL;
        t.c = p[i];
    } else {
        t.kind = TOK_BAD; /* a control character, a stray ')' or '\' */
    }
    t.n = end - i;
    *pos = end;
    return t;
}

/* The addr-spec being put together. */
typedef struct addr {
    char buf[PROTO_PATH_MAX + 1];
    size_t len;
    size_t at; /* offset of the '@', once there is one */
    bool has_at;
    bool bad;
    enum { LAST_NONE, LAST_WORD, LAST_DOT, LAST_AT } last;
} addr_t;

static void addr_reset(addr_t *a)
{
    a->len = 0;
    a->at = 0;
    a->has_at = false;
    a->bad = false;
    a->last = LAST_NONE;
}

/* Appends without the CR and LF of folding inside a quoted string or literal
 * (RFC 5322 §3.2.4: they are not part of its content). */
static void addr_append(addr_t *a, const char *p, size_t n)
{
    for (size_t i = 0; i < n && !a->bad; i++) {
        if (p[i] == '\r' || p[i] == '\n') continue;
        if (a->len == PROTO_PATH_MAX) {
            a->bad = true; /* too long for any SMTP path */
            break;
        }
        a->buf[a->len++] = p[i];
    }
}

/* Controls have no place in an address (a quoted string's or literal's
 * white space and folding aside): the envelope refuses them too. */
static bool has_controls(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char u = (unsigned char)p[i];
        if ((u < ' ' && !is_fws(p[i])) || u == 0x7f) return true;
    }
    return false;
}

static void addr_word(addr_t *a, const token_t *t)
{
    if (has_controls(t->p, t->n)) a->bad = true;
    /* Two words in a row are a display name ("John Doe"), never an address;
     * a domain literal is a whole domain, and a domain has no quoted strings. */
    if (a->last == LAST_WORD || (t->kind == TOK_LITERAL && a->last != LAST_AT) ||
        (t->kind == TOK_QUOTED && a->has_at))
        a->bad = true;
    addr_append(a, t->p, t->n);
    a->last = LAST_WORD;
}

static void addr_dot(addr_t *a)
{
    /* The local part may have any dots (obsolete "john..doe", "john.@" are
     * seen in the wild); a domain may not start with one or double them. */
    if (a->has_at && a->last != LAST_WORD) a->bad = true;
    addr_append(a, ".", 1);
    a->last = LAST_DOT;
}

static void addr_at(addr_t *a)
{
    if (a->has_at || a->len == 0) a->bad = true;
    a->has_at = true;
    a->at = a->len;
    addr_append(a, "@", 1);
    a->last = LAST_AT;
}

/* The state of one address-list value. */
typedef struct addr_list {
    addr_t a;
    enum { IN_NAME, IN_ROUTE, IN_ANGLE, AFTER_ANGLE } state;
    proto_addr_fn cb;
    void *arg;
    size_t count;
} addr_list_t;

static void emit(addr_list_t *l)
{
    addr_t *a = &l->a;
    if (a->bad || !a->has_at || a->last != LAST_WORD) return;
    for (size_t i = a->at + 1; i < a->len; i++)
        if (a->buf[i] >= 'A' && a->buf[i] <= 'Z') a->buf[i] = (char)(a->buf[i] - 'A' + 'a');
    a->buf[a->len] = 0;
    l->cb(a->buf, a->len, l->arg);
    l->count++;
}

/* The end of one address (',' or ';' or the end of the value). An angle-addr
 * left open is dropped; one that closed was sent when it did. */
static void end_address(addr_list_t *l)
{
    if (l->state == IN_NAME) emit(l);
    addr_reset(&l->a);
    l->state = IN_NAME;
}

/* Adds a word, dot or '@' to the address; false for any other token. */
static bool addr_token(addr_t *a, const token_t *t)
{
    if (t->kind == TOK_ATOM || t->kind == TOK_QUOTED || t->kind == TOK_LITERAL) {
        addr_word(a, t);
    } else if (t->kind == TOK_SPECIAL && t->c == '.') {
        addr_dot(a);
    } else if (t->kind == TOK_SPECIAL && t->c == '@') {
        addr_at(a);
    } else {
        return false;
    }
    return true;
}

/* Outside angle brackets: a bare addr-spec, or a display name (of a mailbox
 * or of a group) that '<' or ':' will show it was. */
static void in_name(addr_list_t *l, const token_t *t)
{
    if (addr_token(&l->a, t)) return;
    char c = t->kind == TOK_SPECIAL ? t->c : 0;
    if (c == '<') {
        addr_reset(&l->a);
        l->state = IN_ANGLE;
    } else if (c == ':') {
        addr_reset(&l->a); /* "group name:" */
    } else {
        l->a.bad = true;
    }
}

/* Inside "<...>": an obsolete route ("@a,@b:") first, then the addr-spec. */
static void in_angle(addr_list_t *l, const token_t *t)
{
    char c = t->kind == TOK_SPECIAL ? t->c : 0;
    if (c == '@' && l->a.len == 0 && l->a.last == LAST_NONE) {
        l->state = IN_ROUTE;
    } else if (c == '>') {
        emit(l);
        l->state = AFTER_ANGLE;
    } else if (!addr_token(&l->a, t)) {
        l->a.bad = true;
    }
}

static void in_route(addr_list_t *l, const token_t *t)
{
    char c = t->kind == TOK_SPECIAL ? t->c : 0;
    if (c == ':') {
        l->state = IN_ANGLE; /* the route's domains are not kept */
    } else if (c == '>') {
        l->state = AFTER_ANGLE; /* a route and no address */
    } else if (t->kind == TOK_BAD) {
        l->a.bad = true;
    }
}

static void parse_address_list(addr_list_t *l, const char *p, size_t n)
{
    size_t pos = 0;
    addr_reset(&l->a);
    l->state = IN_NAME;
    for (;;) {
        token_t t = next_token(p, n, &pos);
        if (t.kind == TOK_END) break;
        char c = t.kind == TOK_SPECIAL ? t.c : 0;
        /* ';' ends a group and ',' a mailbox, except that a route's ','
         * belongs to the route. */
        if (c == ';' || (c == ',' && l->state != IN_ROUTE)) {
            end_address(l);
        } else if (l->state == IN_NAME) {
            in_name(l, &t);
        } else if (l->state == IN_ANGLE) {
            in_angle(l, &t);
        } else if (l->state == IN_ROUTE) {
            in_route(l, &t);
        } /* AFTER_ANGLE: only CFWS belongs here; anything else is ignored */
    }
    end_address(l);
}

size_t proto_header_addresses(const char *msg, size_t len, const char *field_name, proto_addr_fn cb,
                              void *arg)
{
    size_t name_len = strlen(field_name);
    addr_list_t l = {.cb = cb, .arg = arg, .count = 0};
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (name_is(&f, field_name, name_len)) parse_address_list(&l, f.value, f.value_len);
    return l.count;
}
