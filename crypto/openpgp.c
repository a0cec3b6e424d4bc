/* OpenPGP's ASCII armor and packet framing (RFC 9580 §4.2, §5.2, §6),
 * read without GnuPG: what the passthrough check needs to see that a body
 * is an encrypted message, and what key import needs to find revocation
 * certificates that gpg would not take on their own. Pure: no I/O. */
#include "crypto/internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- packets ---- */

/* A new-format length (RFC 9580 §4.2.1) at bin[*pos]: the octets it
 * counts, and whether it is a partial body length. */
static int new_length(const unsigned char *bin, size_t len, size_t *pos, size_t *n, bool *partial)
{
    if (*pos >= len) return -1;
    unsigned a = bin[(*pos)++];
    *partial = false;
    if (a < 192) {
        *n = a;
    } else if (a < 224) {
        if (*pos >= len) return -1;
        *n = ((size_t)(a - 192) << 8) + bin[(*pos)++] + 192;
    } else if (a == 255) {
        if (len - *pos < 4) return -1;
        *n = (size_t)bin[*pos] << 24 | (size_t)bin[*pos + 1] << 16 | (size_t)bin[*pos + 2] << 8 |
             bin[*pos + 3];
        *pos += 4;
    } else {
        *n = (size_t)1 << (a & 0x1f);
        *partial = true;
    }
    return 0;
}

/* The old format's length (§4.2.2): 1, 2 or 4 octets, or up to the end. */
static int old_length(const unsigned char *bin, size_t len, size_t *pos, unsigned type, size_t *n)
{
    if (type == 3) {
        *n = len - *pos;
        return 0;
    }
    size_t octets = type == 0 ? 1 : type == 1 ? 2 : 4;
    if (len - *pos < octets) return -1;
    *n = 0;
    for (size_t i = 0; i < octets; i++)
        *n = *n << 8 | bin[(*pos)++];
    return 0;
}

int openpgp_packet_next(const unsigned char *bin, size_t len, size_t *pos, openpgp_packet_t *p)
{
    size_t i = *pos, n;
    if (i >= len) return 0;
    unsigned ctb = bin[i++];
    if (!(ctb & 0x80)) return -1;
    bool is_new = ctb & 0x40, partial = false;
    p->tag = is_new ? ctb & 0x3f : (ctb >> 2) & 0x0f;
    if ((is_new ? new_length(bin, len, &i, &n, &partial) : old_length(bin, len, &i, ctb & 3, &n)) <
            0 ||
        n > len - i)
        return -1;
    p->body = bin + i;
    p->body_len = n;
    p->partial = partial;
    i += n;
    /* Partial chunks go on until a chunk with a definite length. */
    while (partial) {
        if (new_length(bin, len, &i, &n, &partial) < 0 || n > len - i) return -1;
        i += n;
    }
    p->raw = bin + *pos;
    p->raw_len = i - *pos;
    *pos = i;
    return 1;
}

/* The version octets RFC 9580 (and RFC 4880 before it) define for each. */
static bool known_session_key(const openpgp_packet_t *p)
{
    if (p->body_len == 0) return false;
    unsigned v = p->body[0];
    if (p->tag == OPENPGP_TAG_PKESK) return v == 3 || v == 6;
    return p->tag == OPENPGP_TAG_SKESK && (v == 4 || v == 5 || v == 6);
}

static bool known_encrypted_data(const openpgp_packet_t *p)
{
    if (p->tag == OPENPGP_TAG_SED) return p->body_len > 0;
    if (p->body_len == 0) return false;
    if (p->tag == OPENPGP_TAG_SEIPD) return p->body[0] == 1 || p->body[0] == 2;
    return p->tag == OPENPGP_TAG_AEAD && p->body[0] == 1;
}

bool openpgp_is_encrypted_message(const unsigned char *bin, size_t len)
{
    size_t pos = 0, keys = 0;
    openpgp_packet_t p;
    int r;
    while ((r = openpgp_packet_next(bin, len, &pos, &p)) == 1 && known_session_key(&p))
        keys++;
    return r == 1 && keys > 0 && known_encrypted_data(&p) && pos == len;
}

/* ---- signatures ---- */

static void hex_upper(const unsigned char *p, size_t n, char *out, size_t outlen)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t i = 0;
    for (; i < n && 2 * i + 2 < outlen; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * i] = 0;
}

/* A subpacket's length (§5.2.3.7): one octet below 192, two from 192 to
 * 254, five from 255; unlike a packet's, there are no partial lengths, and
 * 224 to 254 start two-octet lengths too. */
static int subpacket_length(const unsigned char *a, size_t n, size_t *pos, size_t *len)
{
    if (*pos >= n) return -1;
    unsigned first = a[(*pos)++];
    if (first < 192) {
        *len = first;
    } else if (first < 255) {
        if (*pos >= n) return -1;
        *len = ((size_t)(first - 192) << 8) + a[(*pos)++] + 192;
    } else {
        if (n - *pos < 4) return -1;
        *len = (size_t)a[*pos] << 24 | (size_t)a[*pos + 1] << 16 | (size_t)a[*pos + 2] << 8 |
               a[*pos + 3];
        *pos += 4;
    }
    return 0;
}

/* Looks through one subpacket area (§5.2.3.7) for the issuer: a
 * fingerprint wins over a key ID, wherever either was found. False when
 * the area is malformed. */
static bool area_issuer(const unsigned char *a, size_t n, char *fpr, char *keyid, size_t outlen)
{
    size_t pos = 0, len;
    while (pos < n) {
        if (subpacket_length(a, n, &pos, &len) < 0 || len == 0 || len > n - pos) return false;
        unsigned type = a[pos] & 0x7f;
        const unsigned char *d = a + pos + 1;
        size_t dlen = len - 1;
        if (type == 33 && (dlen == 21 || dlen == 33)) hex_upper(d + 1, dlen - 1, fpr, outlen);
        if (type == 16 && dlen == 8) hex_upper(d, 8, keyid, outlen);
        pos += len;
    }
    return true;
}

static size_t be(const unsigned char *p, size_t octets)
{
    size_t v = 0;
    for (size_t i = 0; i < octets; i++)
        v = v << 8 | p[i];
    return v;
}

int openpgp_signature_issuer(const openpgp_packet_t *p, unsigned *type, char *issuer,
                             size_t issuer_len)
{
    const unsigned char *b = p->body;
    size_t n = p->body_len;
    if (p->tag != OPENPGP_TAG_SIGNATURE || p->partial || n < 1) return -1;
    if (b[0] == 3) { /* v3: type, time and the key ID at fixed places */
        if (n < 15 || b[1] != 5) return -1;
        *type = b[2];
        hex_upper(b + 7, 8, issuer, issuer_len);
        return 0;
    }
    if (b[0] != 4 && b[0] != 6) return -1;
    size_t octets = b[0] == 4 ? 2 : 4; /* of each subpacket area's length */
    if (n < 4 + octets) return -1;     /* version, type, algorithms, then the first area */
    char fpr[OPENPGP_ISSUER_MAX] = "", keyid[OPENPGP_ISSUER_MAX] = "";
    size_t pos = 4;
    for (int area = 0; area < 2; area++) {
        if (n - pos < octets) return -1;
        size_t alen = be(b + pos, octets);
        pos += octets;
        if (alen > n - pos || !area_issuer(b + pos, alen, fpr, keyid, sizeof fpr)) return -1;
        pos += alen;
    }
    *type = b[1];
    const char *found = fpr[0] ? fpr : keyid;
    if (!found[0] || strlen(found) >= issuer_len) return -1;
    snprintf(issuer, issuer_len, "%s", found);
    return 0;
}

/* ---- ASCII armor ---- */

/* The next line of text from *pos, without its line end. */
static bool text_line(const char *text, size_t n, size_t *pos, const char **line, size_t *len)
{
    if (*pos >= n) return false;
    const char *lf = memchr(text + *pos, '\n', n - *pos);
    size_t end = lf ? (size_t)(lf - text) : n;
    *line = text + *pos;
    *len = end - *pos;
    while (*len &&
           ((*line)[*len - 1] == '\r' || (*line)[*len - 1] == ' ' || (*line)[*len - 1] == '\t'))
        (*len)--;
    *pos = lf ? end + 1 : n;
    return true;
}

static bool starts(const char *line, size_t len, const char *want)
{
    size_t n = strlen(want);
    return len >= n && !memcmp(line, want, n);
}

/* The kind of a "-----BEGIN PGP <kind>-----" line, in place. */
static bool begin_line(const char *line, size_t len, const char **kind, size_t *kind_len)
{
    if (len && line[0] == ':') line++, len--;
    if (!starts(line, len, "-----BEGIN PGP ") || len < 20 || memcmp(line + len - 5, "-----", 5))
        return false;
    *kind = line + 15;
    *kind_len = len - 20;
    return *kind_len > 0;
}

/* Decodes the block whose BEGIN line ended at *pos: armor headers (lines
 * with a colon, which base64 never has) and the empty line after them,
 * then base64 up to the checksum or the END line. *pos ends after END. */
/* The armor header keys of §6.2.2: in a strict read, a header line must
 * start with one, so that no text rides along in clear as a "header". */
static bool known_header(const char *line, size_t len)
{
    static const char *const keys[] = {
        "Version: ", "Comment: ", "Hash: ", "Charset: ", "MessageID: ", NULL};
    for (const char *const *k = keys; *k; k++)
        if (starts(line, len, *k)) return true;
    return false;
}

static int decode_block(const char *text, size_t n, size_t *pos, bool strict, unsigned char **bin,
                        size_t *bin_len)
{
    const char *line;
    size_t len, start = 0, end = 0;
    bool body = false;
    for (size_t at = *pos; text_line(text, n, pos, &line, &len); at = *pos) {
        const char *kind;
        size_t kind_len;
        if (begin_line(line, len, &kind, &kind_len)) { /* no END: this one starts anew */
            *pos = at;
            return 0;
        }
        if (starts(line, len, "-----END PGP ")) {
            if (!body) return 0;
            size_t b64_len = end - start, cap = b64_len / 4 * 3 + 3;
            if (!(*bin = malloc(cap ? cap : 1))) return -1;
            if (sodium_base642bin(*bin, cap, text + start, b64_len, " \t\r\n", bin_len, NULL,
                                  sodium_base64_VARIANT_ORIGINAL) == 0)
                return 1;
            free(*bin);
            *bin = NULL;
            return 0;
        }
        if (!body && strict && len && !known_header(line, len)) return 0;
        if (body) {
            if (len && line[0] == '=' && len == 5) continue; /* the CRC-24, optional (§6.1) */
            end = (size_t)(line - text) + len;
        } else if (strict ? len == 0 : !memchr(line, ':', len)) {
            body = true; /* the empty line after the headers, or (leniently) base64 */
            start = len ? (size_t)(line - text) : *pos;
            end = len ? (size_t)(line - text) + len : *pos;
        }
    }
    return 0;
}

int openpgp_armor_each(const char *text, size_t len, openpgp_block_fn fn, void *arg)
{
    const char *line, *kind;
    size_t line_len, kind_len, pos = 0;
    int blocks = 0;
    while (text_line(text, len, &pos, &line, &line_len)) {
        if (!begin_line(line, line_len, &kind, &kind_len)) continue;
        unsigned char *bin = NULL;
        size_t bin_len = 0;
        int r = decode_block(text, len, &pos, false, &bin, &bin_len);
        if (r < 0) return -1;
        if (r == 0) continue;
        r = fn(kind, kind_len, bin, bin_len, arg);
        free(bin);
        if (r < 0) return -1;
        blocks++;
    }
    return blocks;
}

/* Skips empty lines from *pos; true when nothing else follows. */
static bool skip_empty(const char *text, size_t n, size_t *pos)
{
    const char *line;
    size_t len, at = *pos;
    for (; text_line(text, n, pos, &line, &len); at = *pos)
        if (len) {
            *pos = at;
            return false;
        }
    return true;
}

int openpgp_dearmor(const char *text, size_t len, const char **kind, size_t *kind_len,
                    unsigned char **bin, size_t *bin_len)
{
    const char *line;
    size_t line_len, pos = 0;
    skip_empty(text, len, &pos);
    if (!text_line(text, len, &pos, &line, &line_len) || line[0] == ':' ||
        !begin_line(line, line_len, kind, kind_len))
        return 0;
    int r = decode_block(text, len, &pos, true, bin, bin_len);
    if (r <= 0) return r;
    if (skip_empty(text, len, &pos)) return 1;
    free(*bin);
    *bin = NULL;
    return 0;
}
