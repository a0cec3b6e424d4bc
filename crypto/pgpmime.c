/* PGP/MIME assembly (RFC 3156) with header protection (RFC 9788): see
 * crypto.h. Pure: no I/O and no GPGME; the caller encrypts the inner part
 * and hands back the armor. */
#include "crypto/crypto.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto/internal.h"
#include "proto/proto.h"

#define BOUNDARY_LEN 32 /* 62^32: about 190 bits, never guessed nor met by chance */

/* Trace fields (RFC 5322 §3.6.7): they tell the trip, so they stay outside. */
static const char *const trace_fields[] = {"Received", "Return-Path", NULL};

/* Added by hops on the way and only true of the outer message as it was: a
 * signature over it, what a verifier concluded, where it was delivered. */
static const char *const transport_fields[] = {"DKIM-Signature",
                                               "DomainKey-Signature",
                                               "ARC-Seal",
                                               "ARC-Message-Signature",
                                               "ARC-Authentication-Results",
                                               "Authentication-Results",
                                               "Received-SPF",
                                               "X-Received",
                                               "Delivered-To",
                                               "X-Original-To",
                                               NULL};

/* Never written anywhere: they name the blind recipients. */
static const char *const blind_fields[] = {"Bcc", "Resent-Bcc", NULL};

/* What the outer header shows besides trace and Subject, in this order; every
 * field is inside as well. RFC 9788's hcp_baseline keeps all but Subject
 * (made "[...]") and the informational Keywords and Comments; ours keeps
 * fewer: what delivery, threading and a list view need, and what software
 * on the way acts on without decrypting. Reply-To and Sender, where a reply
 * or a bounce goes (a vacation responder answers Reply-To); Auto-Submitted
 * (RFC 3834) and Precedence, which stop auto-responders from answering
 * automatic mail and looping; List-* (RFC 2369, RFC 2919, RFC 8058), which
 * list views and one-click unsubscribe read, and which large receivers now
 * require of bulk senders. The rest (Keywords, Comments, User-Agent, X-*...)
 * is only inside. "List-*" is the prefix. */
static const char *const outer_fields[] = {
    "From",        "To",         "Cc",       "Date",   "Message-ID",
    "In-Reply-To", "References", "Reply-To", "Sender", "Auto-Submitted",
    "Precedence",  "List-*",     NULL};

/* What a legacy display element repeats (RFC 9788 §4.5.3): the fields a
 * reader that does not look inside misses. Subject when hidden; Keywords and
 * Comments always, as they are never outside. */
static const char *const informational_fields[] = {"Keywords", "Comments", NULL};

static const char hidden_subject[] = "[...]";

/* Whether f is called name (case-insensitive); a name ending in "-*" is a
 * prefix: "List-*" is every field whose name starts "List-" and goes on. */
static bool field_is(const proto_header_field_t *f, const char *name)
{
    size_t n = strlen(name);
    if (n > 2 && name[n - 1] == '*' && name[n - 2] == '-')
        return f->name_len > n - 1 && !strncasecmp(f->name, name, n - 1);
    return f->name_len == n && !strncasecmp(f->name, name, n);
}

static bool field_in(const proto_header_field_t *f, const char *const *names)
{
    for (; *names; names++)
        if (field_is(f, *names)) return true;
    return false;
}

/* MIME's own fields (RFC 2045): they describe the body, so they go with it. */
static bool is_content_field(const proto_header_field_t *f)
{
    return f->name_len > 8 && !strncasecmp(f->name, "Content-", 8);
}

/* Whether a field is copied into the Cryptographic Payload's header. An
 * HP-Outer of the original is dropped: only ours may say what is outside. */
static bool is_protected_copy(const proto_header_field_t *f)
{
    return !is_content_field(f) && !field_is(f, "MIME-Version") && !field_is(f, "HP-Outer") &&
           !field_in(f, trace_fields) && !field_in(f, transport_fields) &&
           !field_in(f, blind_fields);
}

static bool is_fws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool has_fields(const char *msg, size_t len)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    return proto_header_next(&it, &f);
}

/* Appends p, with each bare LF made CRLF: GPGME's armor ends lines in LF,
 * and mail wants CRLF everywhere. */
static int append_crlf(buf_t *out, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const char *lf = memchr(p + i, '\n', n - i);
        size_t end = lf ? (size_t)(lf - p) : n;
        if (buf_append(out, p + i, end - i) < 0) return -1;
        if (!lf) break;
        bool has_cr = end > 0 && p[end - 1] == '\r';
        if (buf_append(out, has_cr ? "\n" : "\r\n", has_cr ? 1 : 2) < 0) return -1;
        i = end + 1;
    }
    return 0;
}

/* Appends p as whole lines: bare LFs made CRLF, and the last line ended. */
static int append_lines(buf_t *out, const char *p, size_t n)
{
    if (append_crlf(out, p, n) < 0) return -1;
    if (n && p[n - 1] == '\n') return 0;
    if (n && p[n - 1] == '\r') return buf_append(out, "\n", 1);
    return buf_append(out, "\r\n", 2);
}

static int append_field(buf_t *out, const proto_header_field_t *f)
{
    return append_lines(out, f->raw, f->raw_len);
}

typedef int (*field_fn)(buf_t *out, const proto_header_field_t *f);

/* Calls fn for each field of msg called name, in their order. */
static int each_named(const char *msg, size_t len, const char *name, field_fn fn, buf_t *out)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (field_is(&f, name) && fn(out, &f) < 0) return -1;
    return 0;
}

/* Calls fn for each field the outer header copies, but Subject and trace,
 * in the order they are written: pgpmime_outer writes them and
 * pgpmime_inner records them, so the two cannot disagree. */
static int each_outer(const char *msg, size_t len, field_fn fn, buf_t *out)
{
    for (const char *const *name = outer_fields; *name; name++)
        if (each_named(msg, len, *name, fn, out) < 0) return -1;
    return 0;
}

/* Undoes a failed build: out is as the caller gave it. */
static int rollback(buf_t *out, size_t len)
{
    out->len = len;
    if (out->data) out->data[len] = 0;
    return -1;
}

/* A boundary (RFC 2046 §5.1.1) that the text it will delimit does not hold. */
static int make_boundary(const char *text, size_t text_len, char b[BOUNDARY_LEN + 1])
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    for (int tries = 0; tries < 8; tries++) {
        for (size_t i = 0; i < BOUNDARY_LEN; i++)
            b[i] = alnum[randombytes_uniform((uint32_t)(sizeof alnum - 1))];
        b[BOUNDARY_LEN] = 0;
        if (!memmem(text, text_len, b, BOUNDARY_LEN)) return 0;
    }
    return -1; /* only a broken random source gets here */
}

/* ---- the blind recipients ---- */

bool pgpmime_has_blind(const char *msg, size_t len)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (field_in(&f, blind_fields)) return true;
    return false;
}

/* Copies what lies between the blind fields as it is, lines that are no
 * field included: only the blind fields' own octets (name, value and
 * continuation lines) go. */
int pgpmime_without_blind(const char *msg, size_t len, buf_t *out)
{
    size_t start = out->len, kept = 0;
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f)) {
        if (!field_in(&f, blind_fields)) continue;
        size_t at = (size_t)(f.raw - msg);
        if (buf_append(out, msg + kept, at - kept) < 0) return rollback(out, start);
        kept = at + f.raw_len;
    }
    if (buf_append(out, msg + kept, len - kept) < 0) return rollback(out, start);
    return 0;
}

/* ---- already encrypted? ---- */

/* RFC 2045 §5.1: token characters, i.e. printable ASCII but tspecials. */
static bool is_token_char(char c)
{
    unsigned char u = (unsigned char)c;
    return u > ' ' && u < 0x7f && !strchr("()<>@,;:\\\"/[]?=", c);
}

/* Reads "type / subtype" (CFWS allowed around the slash, as RFC 822's
 * lexical rules let it be) from a Content-Type value. */
static bool media_type(const char *v, size_t n, const char **type, size_t *type_len,
                       const char **sub, size_t *sub_len)
{
    size_t i = proto_header_skip_cfws(v, n, 0);
    size_t start = i;
    while (i < n && is_token_char(v[i]))
        i++;
    *type = v + start;
    *type_len = i - start;
    i = proto_header_skip_cfws(v, n, i);
    if (i >= n || v[i] != '/') return false;
    i = proto_header_skip_cfws(v, n, i + 1);
    start = i;
    while (i < n && is_token_char(v[i]))
        i++;
    *sub = v + start;
    *sub_len = i - start;
    return *type_len > 0 && *sub_len > 0;
}

static bool token_is(const char *p, size_t n, const char *want)
{
    return n == strlen(want) && !strncasecmp(p, want, n);
}

/* The next parameter called name in a Content-Type value from *i (RFC 2045
 * §5.1): its value, token or quoted-string (the quotes not included, any
 * backslash left in). */
static bool param_next(const char *v, size_t n, size_t *i, const char *name, const char **val,
                       size_t *val_len)
{
    for (; *i < n; (*i)++) {
        if (v[*i] == '"') { /* skip quoted strings: a ';' inside is no separator */
            for ((*i)++; *i < n && v[*i] != '"'; (*i)++)
                if (v[*i] == '\\') (*i)++;
            continue;
        }
        if (v[*i] != ';') continue;
        size_t j = proto_header_skip_cfws(v, n, *i + 1), start = j;
        while (j < n && is_token_char(v[j]))
            j++;
        if (!token_is(v + start, j - start, name)) continue;
        j = proto_header_skip_cfws(v, n, j);
        if (j >= n || v[j] != '=') continue;
        j = proto_header_skip_cfws(v, n, j + 1);
        bool quoted = j < n && v[j] == '"';
        start = j + quoted;
        /* Unquoted, read leniently up to a separator: "protocol=application/
         * pgp-encrypted" without quotes is common, if not RFC 2045's. */
        for (j = start; j < n && (quoted ? v[j] != '"' : !strchr("; \t\r\n(", v[j])); j++)
            ;
        *val = v + start;
        *val_len = j - start;
        *i = j;
        return true;
    }
    return false;
}

/* Whether the Content-Type value has parameter name with the value want
 * (case-insensitive). */
static bool param_is(const char *v, size_t n, const char *name, const char *want)
{
    const char *val;
    size_t val_len, i = 0;
    while (param_next(v, n, &i, name, &val, &val_len))
        if (token_is(val, val_len, want)) return true;
    return false;
}

/* The one parameter called name, escapes and all; false when there are
 * none or several, as readers would differ on which one counts. */
static bool param_single(const char *v, size_t n, const char *name, const char **val,
                         size_t *val_len)
{
    const char *other;
    size_t other_len, i = 0;
    return param_next(v, n, &i, name, val, val_len) &&
           !param_next(v, n, &i, name, &other, &other_len);
}

/* Lines of the body, without their line ends. */
static bool next_line(const char *body, size_t n, size_t *pos, const char **line, size_t *len)
{
    if (*pos >= n) return false;
    const char *lf = memchr(body + *pos, '\n', n - *pos);
    size_t end = lf ? (size_t)(lf - body) : n;
    *line = body + *pos;
    *len = (end > *pos && body[end - 1] == '\r' ? end - 1 : end) - *pos;
    *pos = end + 1;
    return true;
}

static bool line_is(const char *line, size_t len, const char *want)
{
    return len == strlen(want) && !memcmp(line, want, len);
}

/* Whether text is one armored OpenPGP message (empty lines aside) whose
 * packets are an encrypted message, so nothing in it or next to it is
 * clear: the inline PGP of a text/plain body, and RFC 3156's second part. */
static bool is_armored_encrypted(const char *text, size_t n)
{
    const char *kind;
    size_t kind_len, bin_len;
    unsigned char *bin = NULL;
    if (openpgp_dearmor(text, n, &kind, &kind_len, &bin, &bin_len) <= 0) return false;
    bool ok = token_is(kind, kind_len, "MESSAGE") && openpgp_is_encrypted_message(bin, bin_len);
    free(bin);
    return ok;
}

/* The number of fields called name in the header of part (a message or a
 * body part), the last one into *f, and where the part's body starts. */
static unsigned fields_named(const char *part, size_t n, const char *name, proto_header_field_t *f,
                             size_t *body)
{
    proto_header_iter_t it;
    proto_header_field_t each;
    unsigned count = 0;
    proto_header_iter_init(&it, part, n);
    while (proto_header_next(&it, &each))
        if (field_is(&each, name)) *f = each, count++;
    *body = it.body;
    return count;
}

static bool type_is(const proto_header_field_t *f, const char *want_type, const char *want_sub)
{
    const char *type, *sub;
    size_t type_len, sub_len;
    return media_type(f->value, f->value_len, &type, &type_len, &sub, &sub_len) &&
           token_is(type, type_len, want_type) && token_is(sub, sub_len, want_sub);
}

/* A Content-Transfer-Encoding value (RFC 2045 §6.1) is one token. */
static bool encoding_is(const proto_header_field_t *f, const char *want)
{
    size_t i = proto_header_skip_cfws(f->value, f->value_len, 0), start = i;
    while (i < f->value_len && is_token_char(f->value[i]))
        i++;
    return token_is(f->value + start, i - start, want) &&
           proto_header_skip_cfws(f->value, f->value_len, i) == f->value_len;
}

/* A part's one Content-Type is type/sub, and its body starts at *body. */
static bool part_type_is(const char *part, size_t n, const char *type, const char *sub,
                         size_t *body)
{
    proto_header_field_t f;
    return fields_named(part, n, "Content-Type", &f, body) == 1 && type_is(&f, type, sub);
}

typedef struct span {
    const char *p;
    size_t n;
} span_t;

/* Whether p[0..n) holds only octets of set (no NUL among them). */
static bool only_of(const char *p, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (!p[i] || !strchr(set, p[i])) return false;
    return true;
}

static bool only_wsp(const char *p, size_t n)
{
    return only_of(p, n, " \t");
}

/* Octets that readers do not show but that travel in clear all the same:
 * a preamble of one line (Thunderbird writes "This is an OpenPGP/MIME
 * encrypted message (RFC 4880 and 3156)"), and no epilogue but white space. */
#define PREAMBLE_MAX 256

/* The body parts of a multipart body (RFC 2046 §5.1.1): what lies between
 * its delimiter lines "--boundary" (transport padding allowed) up to the
 * close delimiter "--boundary--". The preamble and the epilogue, which
 * readers do not show, are no parts, and may hold no more than a line and
 * white space (PREAMBLE_MAX). False when there is no close delimiter, or
 * more than max parts. */
static bool multipart_parts(const char *body, size_t n, const char *b, size_t b_len, span_t *parts,
                            unsigned max, unsigned *count)
{
    const char *line;
    size_t len, pos = 0;
    *count = 0;
    for (size_t at = 0; next_line(body, n, &pos, &line, &len); at = pos) {
        if (len < b_len + 2 || memcmp(line, "--", 2) || memcmp(line + 2, b, b_len)) continue;
        const char *rest = line + 2 + b_len;
        size_t rest_len = len - 2 - b_len;
        bool close = rest_len >= 2 && !memcmp(rest, "--", 2);
        size_t dashes = close ? 2 : 0;
        if (!only_wsp(rest + dashes, rest_len - dashes)) continue;
        if (*count == 0 && at > PREAMBLE_MAX) return false;
        if (*count) parts[*count - 1].n = (size_t)(body + at - parts[*count - 1].p);
        if (close) return *count > 0 && only_of(body + pos, n - pos, " \t\r\n");
        if (*count == max) return false;
        parts[(*count)++] = (span_t){body + (pos < n ? pos : n), 0};
    }
    return false;
}

/* RFC 3156 §4's first part: application/pgp-encrypted saying "Version: 1". */
static bool is_version_part(span_t part)
{
    size_t body, pos, len, seen = 0;
    const char *line;
    if (!part_type_is(part.p, part.n, "application", "pgp-encrypted", &body)) return false;
    for (pos = body; next_line(part.p, part.n, &pos, &line, &len);)
        if (len && (seen++ || !line_is(line, len, "Version: 1"))) return false;
    return seen == 1;
}

/* The second: application/octet-stream holding the armored message, in no
 * transfer encoding that would hide what it holds. */
static bool is_encrypted_part(span_t part)
{
    proto_header_field_t cte;
    size_t body;
    if (!part_type_is(part.p, part.n, "application", "octet-stream", &body)) return false;
    unsigned encodings = fields_named(part.p, part.n, "Content-Transfer-Encoding", &cte, &body);
    if (encodings > 1 || (encodings && !encoding_is(&cte, "7bit") && !encoding_is(&cte, "8bit")))
        return false;
    return is_armored_encrypted(part.p + body, part.n - body);
}

/* PGP/MIME (RFC 3156 §4): exactly the two parts, the second encrypted. A
 * third part, or any other part, would travel in clear. */
static bool is_pgp_mime(const proto_header_field_t *type, const char *body, size_t n)
{
    const char *b;
    size_t b_len;
    span_t parts[2];
    unsigned count;
    if (!param_single(type->value, type->value_len, "boundary", &b, &b_len) || b_len == 0 ||
        memchr(b, '\\', b_len))
        return false;
    return multipart_parts(body, n, b, b_len, parts, 2, &count) && count == 2 &&
           is_version_part(parts[0]) && is_encrypted_part(parts[1]);
}

/* S/MIME (RFC 8551 §3.2.2): base64 of a CMS structure that is the
 * enveloped data its label says, not signed data relabelled. */
static bool is_smime_enveloped(const char *msg, size_t len, const proto_header_field_t *type)
{
    proto_header_field_t cte;
    size_t body;
    if (fields_named(msg, len, "Content-Transfer-Encoding", &cte, &body) != 1 ||
        !encoding_is(&cte, "base64"))
        return false;
    size_t b64_len = len - body, der_len = 0;
    unsigned char *der = malloc(b64_len / 4 * 3 + 3);
    if (!der) return false;
    bool auth = param_is(type->value, type->value_len, "smime-type", "authEnveloped-data");
    bool ok = sodium_base642bin(der, b64_len / 4 * 3 + 3, msg + body, b64_len, " \t\r\n", &der_len,
                                NULL, sodium_base64_VARIANT_ORIGINAL) == 0 &&
              smime_is_enveloped(der, der_len, auth);
    free(der);
    return ok;
}

enum body_kind { BODY_CLEAR, BODY_PGP_MIME, BODY_SMIME, BODY_MAYBE_INLINE };

/* What one Content-Type says: encrypted only for PGP/MIME (RFC 3156 §4)
 * and S/MIME enveloped data (RFC 8551 §3.2.2); signed-only S/MIME and
 * anything unclear are clear text. */
static enum body_kind content_kind(const proto_header_field_t *f)
{
    const char *type, *sub, *v = f->value;
    size_t type_len, sub_len, n = f->value_len;
    if (!media_type(v, n, &type, &type_len, &sub, &sub_len)) return BODY_CLEAR;
    if (token_is(type, type_len, "multipart") && token_is(sub, sub_len, "encrypted"))
        return param_is(v, n, "protocol", "application/pgp-encrypted") ? BODY_PGP_MIME : BODY_CLEAR;
    if (token_is(type, type_len, "application") &&
        (token_is(sub, sub_len, "pkcs7-mime") || token_is(sub, sub_len, "x-pkcs7-mime")))
        return param_is(v, n, "smime-type", "enveloped-data") ||
                       param_is(v, n, "smime-type", "authEnveloped-data")
                   ? BODY_SMIME
                   : BODY_CLEAR;
    if (token_is(type, type_len, "text") && token_is(sub, sub_len, "plain"))
        return BODY_MAYBE_INLINE;
    return BODY_CLEAR;
}

/* The label is where the check starts, not where it ends: it says which
 * structure the body must have, and only a body that has it passes. */
bool pgpmime_is_encrypted(const char *msg, size_t len)
{
    proto_header_iter_t it;
    proto_header_field_t f, type = {0};
    proto_header_iter_init(&it, msg, len);
    /* With several Content-Type fields, readers differ on which counts; only
     * when all say text/plain (or none is there) may the body be inline PGP,
     * and a MIME structure is only believed with one field naming it. */
    size_t count[BODY_MAYBE_INLINE + 1] = {0}, types = 0;
    while (proto_header_next(&it, &f)) {
        if (!field_is(&f, "Content-Type")) continue;
        types++;
        count[content_kind(&f)]++;
        type = f;
    }
    const char *body = msg + it.body;
    size_t body_len = len - it.body;
    if (types == 1 && count[BODY_SMIME]) return is_smime_enveloped(msg, len, &type);
    if (types == 1 && count[BODY_PGP_MIME]) return is_pgp_mime(&type, body, body_len);
    /* No Content-Type is text/plain (RFC 2045 §5.2). */
    if (count[BODY_MAYBE_INLINE] == types) return is_armored_encrypted(body, body_len);
    return false;
}

/* ---- the Cryptographic Payload ---- */

/* "HP-Outer: Name: value" (RFC 9788 §2.2), the value as the outer header
 * has it, folding kept. */
static int append_hp_outer(buf_t *out, const proto_header_field_t *f)
{
    size_t skip = 0; /* the white space after the colon; ours takes its place */
    while (skip < f->value_len && is_fws(f->value[skip]))
        skip++;
    if (buf_append(out, "HP-Outer: ", 10) < 0 || buf_append(out, f->name, f->name_len) < 0 ||
        buf_append(out, ": ", 2) < 0)
        return -1;
    return append_lines(out, f->value + skip, f->value_len - skip);
}

static int append_hp_outers(const char *msg, size_t len, bool hide_subject, buf_t *out)
{
    if (each_outer(msg, len, append_hp_outer, out) < 0) return -1;
    if (hide_subject) return buf_printf(out, "HP-Outer: Subject: %s\r\n", hidden_subject);
    return each_named(msg, len, "Subject", append_hp_outer, out);
}

/* The parameters the payload's Content-Type gets: hp="cipher" (RFC 9788
 * §2.1), and for readers from before it, protected-headers="v1" (the
 * Autocrypt draft's marker, which Thunderbird and notmuch look for). */
static const char *payload_params(unsigned flags)
{
    return flags & PGPMIME_LEGACY_DISPLAY ? "hp=\"cipher\";\r\n protected-headers=\"v1\""
                                          : "hp=\"cipher\"";
}

/* Content-Type with params after its last parameter. */
static int append_content_type(buf_t *out, const proto_header_field_t *f, const char *params)
{
    const char *end = f->value + f->value_len;
    while (end > f->value && is_fws(end[-1])) /* before trailing space */
        end--;
    if (end == f->value) /* empty: RFC 2045 §5.2's default */
        return buf_printf(out, "Content-Type: text/plain; charset=us-ascii; %s\r\n", params);
    const char *sep = end[-1] == ';' ? " " : "; ";
    if (append_crlf(out, f->raw, (size_t)(end - f->raw)) < 0) return -1;
    return buf_printf(out, "%s%s\r\n", sep, params);
}

/* msg's Content-* fields; with params, the Content-Type marked with them
 * (text/plain when msg has none). */
static int append_structural(const char *msg, size_t len, const char *params, buf_t *out)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    bool has_type = false;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f)) {
        if (!is_content_field(&f)) continue;
        bool type = params && field_is(&f, "Content-Type");
        has_type |= type;
        if ((type ? append_content_type(out, &f, params) : append_field(out, &f)) < 0) return -1;
    }
    if (has_type || !params) return 0;
    return buf_printf(out, "Content-Type: text/plain; charset=us-ascii; %s\r\n", params);
}

static bool is_legacy_shown(const proto_header_field_t *f, bool hide_subject)
{
    return (hide_subject && field_is(f, "Subject")) || field_in(f, informational_fields);
}

static bool is_8bit(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80) return true;
    return false;
}

/* Whether a legacy display element has anything to show, and whether what
 * it shows is 8-bit (the fields as they came: SMTPUTF8 lets them be UTF-8). */
static bool legacy_fields(const char *msg, size_t len, bool hide_subject, bool *eight_bit)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    bool any = false;
    *eight_bit = false;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f)) {
        if (!is_legacy_shown(&f, hide_subject)) continue;
        any = true;
        *eight_bit |= is_8bit(f.raw, f.raw_len);
    }
    return any;
}

/* The legacy display element (RFC 9788 §4.5.3, the text/plain form of its
 * Appendix E) as a part of its own: the fields a legacy reader would miss,
 * as they are, then an empty line (RFC 9788 readers hide the lines up to
 * it). Marked hp-legacy-display="1", which RFC
 * 9788 readers hide, and protected-headers="v1", which notmuch needs to hide
 * it; text/plain (not the older text/rfc822-headers) because legacy readers
 * show text/plain inline, which is the point of it. */
static int append_legacy_part(const char *msg, size_t len, bool hide_subject, bool eight_bit,
                              const char *boundary, buf_t *out)
{
    if (buf_printf(out,
                   "--%s\r\n"
                   "Content-Type: text/plain; charset=%s; hp-legacy-display=\"1\";\r\n"
                   " protected-headers=\"v1\"\r\n"
                   "%s"
                   "Content-Disposition: inline\r\n"
                   "\r\n",
                   boundary, eight_bit ? "utf-8" : "us-ascii",
                   eight_bit ? "Content-Transfer-Encoding: 8bit\r\n" : "") < 0)
        return -1;
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (is_legacy_shown(&f, hide_subject) && append_field(out, &f) < 0) return -1;
    return buf_append(out, "\r\n", 2);
}

/* With a legacy display element, the payload is a multipart/mixed of two:
 * the element, then msg's body under its own Content-* fields, untouched (so
 * no encoding of it is ever redone, whatever its structure). That is the
 * shape notmuch recognizes and hides the element of. */
static int append_legacy_body(const char *msg, size_t len, size_t body, bool hide_subject,
                              bool eight_bit, buf_t *out)
{
    char boundary[BOUNDARY_LEN + 1];
    if (make_boundary(msg, len, boundary) < 0 ||
        buf_printf(out,
                   "Content-Type: multipart/mixed; boundary=\"%s\";\r\n"
                   " hp=\"cipher\"; protected-headers=\"v1\"\r\n\r\n",
                   boundary) < 0 ||
        append_legacy_part(msg, len, hide_subject, eight_bit, boundary, out) < 0 ||
        buf_printf(out, "\r\n--%s\r\n", boundary) < 0 ||
        append_structural(msg, len, NULL, out) < 0 || buf_append(out, "\r\n", 2) < 0 ||
        buf_append(out, msg + body, len - body) < 0)
        return -1;
    /* the CRLF before the close belongs to the delimiter (RFC 2046 §5.1.1) */
    return buf_printf(out, "\r\n--%s--\r\n", boundary);
}

static int build_inner(const char *msg, size_t len, unsigned flags, buf_t *out)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    bool hide_subject = flags & PGPMIME_HIDE_SUBJECT, eight_bit;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f))
        if (is_protected_copy(&f) && append_field(out, &f) < 0) return -1;
    if (append_hp_outers(msg, len, hide_subject, out) < 0) return -1;
    if (flags & PGPMIME_LEGACY_DISPLAY && legacy_fields(msg, len, hide_subject, &eight_bit))
        return append_legacy_body(msg, len, it.body, hide_subject, eight_bit, out);
    if (append_structural(msg, len, payload_params(flags), out) < 0 ||
        buf_append(out, "\r\n", 2) < 0)
        return -1;
    return buf_append(out, msg + it.body, len - it.body);
}

int pgpmime_inner(const char *msg, size_t len, unsigned flags, buf_t *out)
{
    size_t start = out->len;
    if (!has_fields(msg, len) || build_inner(msg, len, flags, out) < 0) return rollback(out, start);
    return 0;
}

/* ---- the outer message ---- */

/* The outer header of every encrypted copy, PGP/MIME or S/MIME, but its
 * MIME fields: trace, the fields each_outer names, the Subject (or
 * "[...]"), then MIME-Version. The one place that chooses what an
 * encrypted message shows outside. */
static int append_outer_fields(const char *msg, size_t len, bool hide_subject, buf_t *out)
{
    proto_header_iter_t it;
    proto_header_field_t f;
    proto_header_iter_init(&it, msg, len);
    while (proto_header_next(&it, &f)) /* trace first, as hops prepend it */
        if (field_in(&f, trace_fields) && append_field(out, &f) < 0) return -1;
    if (each_outer(msg, len, append_field, out) < 0) return -1;
    if (hide_subject) {
        if (buf_printf(out, "Subject: %s\r\n", hidden_subject) < 0) return -1;
    } else if (each_named(msg, len, "Subject", append_field, out) < 0) {
        return -1;
    }
    return buf_append(out, "MIME-Version: 1.0\r\n", 19);
}

static int append_outer_header(const char *msg, size_t len, bool hide_subject, const char *boundary,
                               buf_t *out)
{
    if (append_outer_fields(msg, len, hide_subject, out) < 0) return -1;
    /* Folded so that the line stays under 78 octets (RFC 5322 §2.1.1). */
    return buf_printf(
        out,
        "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n"
        " boundary=\"%s\"\r\n"
        "\r\n",
        boundary);
}

/* The body of RFC 3156 §4: the version part, then the armor. */
static int append_outer_body(const char *armor, size_t armor_len, const char *boundary, buf_t *out)
{
    if (buf_printf(out,
                   "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
                   "--%s\r\n"
                   "Content-Type: application/pgp-encrypted\r\n"
                   "Content-Description: PGP/MIME version identification\r\n"
                   "\r\n"
                   "Version: 1\r\n"
                   "\r\n"
                   "--%s\r\n"
                   "Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
                   "Content-Description: OpenPGP encrypted message\r\n"
                   "Content-Disposition: inline; filename=\"encrypted.asc\"\r\n"
                   "\r\n",
                   boundary, boundary) < 0)
        return -1;
    if (armor_len && append_lines(out, armor, armor_len) < 0) return -1;
    return buf_printf(out, "\r\n--%s--\r\n", boundary);
}

int pgpmime_outer(const char *msg, size_t len, const char *armor, size_t armor_len, unsigned flags,
                  buf_t *out)
{
    bool hide_subject = flags & PGPMIME_HIDE_SUBJECT;
    size_t start = out->len;
    char boundary[BOUNDARY_LEN + 1];
    if (!has_fields(msg, len) || make_boundary(armor, armor_len, boundary) < 0 ||
        append_outer_header(msg, len, hide_subject, boundary, out) < 0 ||
        append_outer_body(armor, armor_len, boundary, out) < 0)
        return rollback(out, start);
    return 0;
}

/* ---- the S/MIME message (RFC 8551 §3.2.2, §3.5) ---- */

#define BASE64_LINE 76 /* RFC 2045 §6.8's longest line */

/* der in base64, lines of 76 and CRLF. */
static int append_base64_lines(buf_t *out, const unsigned char *der, size_t len)
{
    enum { CHUNK = BASE64_LINE / 4 * 3 };
    char line[BASE64_LINE + 1];
    for (size_t i = 0; i < len; i += CHUNK) {
        size_t n = len - i < CHUNK ? len - i : CHUNK;
        sodium_bin2base64(line, sizeof line, der + i, n, sodium_base64_VARIANT_ORIGINAL);
        if (buf_append(out, line, strlen(line)) < 0 || buf_append(out, "\r\n", 2) < 0) return -1;
    }
    return 0;
}

int smime_outer(const char *msg, size_t len, const unsigned char *der, size_t der_len,
                unsigned flags, buf_t *out)
{
    size_t start = out->len;
    /* The label says what the structure is, as the passthrough check asks
     * of what senders send (RFC 8551 §3.2.2; RFC 5083 §4 for GCM's). */
    enum smime_structure type = smime_structure(der, der_len);
    bool auth = type == SMIME_AUTH_ENVELOPED;
    if (type == SMIME_OTHER) return -1;
    if (!has_fields(msg, len) ||
        append_outer_fields(msg, len, flags & PGPMIME_HIDE_SUBJECT, out) < 0 ||
        buf_printf(out,
                   "Content-Type: application/pkcs7-mime; smime-type=%s;\r\n"
                   " name=\"smime.p7m\"\r\n"
                   "Content-Disposition: attachment; filename=\"smime.p7m\"\r\n"
                   "Content-Transfer-Encoding: base64\r\n"
                   "\r\n",
                   auth ? "authEnveloped-data" : "enveloped-data") < 0 ||
        append_base64_lines(out, der, der_len) < 0)
        return rollback(out, start);
    return 0;
}
