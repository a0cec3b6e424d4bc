/* Unit tests for crypto/: password hashes and CRAM-MD5. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "crypto/crypto.h"
#include "crypto/internal.h"

extern char **environ;

static void test_hash_and_verify(void **state)
{
    (void)state;
    char hash[PASSWORD_HASH_MAX];
    const char pw[] = "correct horse";
    assert_int_equal(password_hash(pw, strlen(pw), hash), 0);
    assert_memory_equal(hash, "$argon2id$", 10);
    assert_true(password_verify(hash, pw, strlen(pw)));
    assert_false(password_verify(hash, "correct horsE", strlen(pw)));
    assert_false(password_verify(hash, pw, strlen(pw) - 1));
    /* a password with a NUL in it is all of its octets */
    char with_nul[] = {'a', 0, 'b'};
    assert_int_equal(password_hash(with_nul, sizeof with_nul, hash), 0);
    assert_true(password_verify(hash, with_nul, sizeof with_nul));
    assert_false(password_verify(hash, "a", 1));
}

static void test_malformed_and_dummy_hashes_never_match(void **state)
{
    (void)state;
    assert_false(password_verify("", "", 0));
    assert_false(password_verify("plain text", "plain text", 10));
    assert_false(password_verify("$argon2id$broken", "x", 1));
    const char *dummy = password_dummy_hash();
    assert_memory_equal(dummy, "$argon2id$", 10);
    assert_ptr_equal(dummy, password_dummy_hash()); /* made once */
    assert_false(password_verify(dummy, "", 0));
    assert_false(password_verify(dummy, "password", 8));
}

static void test_cram_md5_rfc2195_example(void **state)
{
    (void)state;
    /* RFC 2195 §2 */
    const char challenge[] = "<1896.697170952@postoffice.reston.mci.net>";
    const char secret[] = "tanstaaftanstaaf";
    char digest[33];
    password_cram_md5(secret, strlen(secret), challenge, strlen(challenge), digest);
    assert_string_equal(digest, "b913a602c7eda7a495b4e6e7334d3890");
}

static void test_equal(void **state)
{
    (void)state;
    assert_true(password_equal("abc", "abc"));
    assert_false(password_equal("abc", "abd"));
    assert_false(password_equal("abc", "ab"));
    assert_true(password_equal("", ""));
}

/* ---------------------------------------------------------------- PGP/MIME */

static const char sample[] = "Received: from a.example.org by b.example.org; Mon, 1 Jan 2024\r\n"
                             "Return-Path: <a@example.org>\r\n"
                             "DKIM-Signature: v=1; d=example.org;\r\n b=abc\r\n"
                             "From: Alice <a@example.org>\r\n"
                             "To: Bob <b@example.org>\r\n"
                             "Cc: c@example.org\r\n"
                             "Bcc: hidden@example.org\r\n"
                             "Resent-Bcc: hidden2@example.org\r\n"
                             "Subject: a folded\r\n subject\r\n"
                             "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                             "Message-ID: <m1@example.org>\r\n"
                             "In-Reply-To: <m0@example.org>\r\n"
                             "References: <m-1@example.org>\r\n <m0@example.org>\r\n"
                             "Reply-To: r@example.org\r\n"
                             "Keywords: secret plans\r\n"
                             "X-Custom: kept inside\r\n"
                             "HP-Outer: Subject: forged by the sender\r\n"
                             "MIME-Version: 1.0\r\n"
                             "Content-Type: text/plain;\r\n\tcharset=\"utf-8\"\r\n"
                             "Content-Transfer-Encoding: 8bit\r\n"
                             "Content-Disposition: inline\r\n"
                             "\r\n"
                             "caf\xc3\xa9 \xff\x00 8-bit body\r\n"
                             "-- \r\nAlice\r\n";
#define SAMPLE_BODY "caf\xc3\xa9 \xff\x00 8-bit body\r\n-- \r\nAlice\r\n"

static const char armor[] = "-----BEGIN PGP MESSAGE-----\n\nhQEMA0123456789ABCDEF\n=abcd\n"
                            "-----END PGP MESSAGE-----\n";

static bool has_text(const buf_t *b, const char *s)
{
    return memmem(b->data, b->len, s, strlen(s)) != NULL;
}

static size_t count_text(const char *p, size_t n, const char *s)
{
    size_t c = 0, len = strlen(s);
    for (const char *q = p; (q = memmem(q, n - (size_t)(q - p), s, len)) != NULL; q += len)
        c++;
    return c;
}

/* Every CR is followed by LF and every LF follows a CR. */
static bool all_crlf(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n')) return false;
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) return false;
    }
    return true;
}

/* The header section of a built message (through its empty line). */
static size_t header_len(const buf_t *b)
{
    const char *end = memmem(b->data, b->len, "\r\n\r\n", 4);
    assert_non_null(end);
    return (size_t)(end - b->data) + 4;
}

static void test_pgpmime_inner(void **state)
{
    (void)state;
    for (int hide = 0; hide < 2; hide++) {
        buf_t b;
        buf_init(&b);
        assert_int_equal(
            pgpmime_inner(sample, sizeof sample - 1, hide ? PGPMIME_HIDE_SUBJECT : 0, &b), 0);
        size_t h = header_len(&b);
        assert_true(all_crlf(b.data, h));
        /* the body follows untouched, 8-bit octets and NUL included */
        assert_int_equal(b.len - h, sizeof SAMPLE_BODY - 1);
        assert_memory_equal(b.data + h, SAMPLE_BODY, sizeof SAMPLE_BODY - 1);
        /* the user's fields, byte for byte, folding kept */
        assert_true(has_text(&b, "\r\nSubject: a folded\r\n subject\r\n"));
        assert_true(has_text(&b, "From: Alice <a@example.org>\r\n"));
        assert_true(has_text(&b, "\r\nReferences: <m-1@example.org>\r\n <m0@example.org>\r\n"));
        assert_true(has_text(&b, "\r\nReply-To: r@example.org\r\n"));
        assert_true(has_text(&b, "\r\nKeywords: secret plans\r\n"));
        assert_true(has_text(&b, "\r\nX-Custom: kept inside\r\n"));
        /* never the blind copies, the trace, or what transport added */
        assert_false(has_text(&b, "hidden"));
        assert_false(has_text(&b, "Bcc"));
        assert_false(has_text(&b, "Received:"));
        assert_false(has_text(&b, "Return-Path:"));
        assert_false(has_text(&b, "DKIM"));
        assert_false(has_text(&b, "MIME-Version"));
        assert_false(has_text(&b, "forged"));
        /* what the outer header shows */
        assert_true(has_text(&b, "\r\nHP-Outer: From: Alice <a@example.org>\r\n"));
        assert_true(has_text(&b, "\r\nHP-Outer: To: Bob <b@example.org>\r\n"));
        assert_true(has_text(&b, "\r\nHP-Outer: Cc: c@example.org\r\n"));
        assert_true(has_text(&b, "\r\nHP-Outer: Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"));
        assert_true(has_text(&b, "\r\nHP-Outer: Message-ID: <m1@example.org>\r\n"));
        assert_true(has_text(&b, "\r\nHP-Outer: In-Reply-To: <m0@example.org>\r\n"));
        assert_true(
            has_text(&b, "\r\nHP-Outer: References: <m-1@example.org>\r\n <m0@example.org>\r\n"));
        assert_true(has_text(&b, "\r\nHP-Outer: Reply-To: r@example.org\r\n"));
        assert_false(has_text(&b, "HP-Outer: Keywords"));
        assert_false(has_text(&b, "HP-Outer: X-Custom"));
        if (hide) {
            assert_true(has_text(&b, "\r\nHP-Outer: Subject: [...]\r\n"));
            assert_false(has_text(&b, "HP-Outer: Subject: a folded"));
        } else {
            assert_true(has_text(&b, "\r\nHP-Outer: Subject: a folded\r\n subject\r\n"));
            assert_false(has_text(&b, "[...]"));
        }
        assert_int_equal(count_text(b.data, h, "HP-Outer:"), 9);
        /* the MIME fields, Content-Type marked */
        assert_true(has_text(&b, "\r\nContent-Type: text/plain;\r\n\tcharset=\"utf-8\"; "
                                 "hp=\"cipher\"\r\n"));
        assert_true(has_text(&b, "\r\nContent-Transfer-Encoding: 8bit\r\n"));
        assert_true(has_text(&b, "\r\nContent-Disposition: inline\r\n"));
        assert_int_equal(count_text(b.data, h, "Content-Type:"), 1);
        buf_free(&b);
    }
}

static void test_pgpmime_inner_content_type(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    /* none: text/plain, as RFC 2045 has it */
    const char *m = "From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
    assert_int_equal(pgpmime_inner(m, strlen(m), 0, &b), 0);
    assert_true(has_text(&b, "\r\nContent-Type: text/plain; charset=us-ascii; hp=\"cipher\"\r\n"
                             "\r\nbody\r\n"));
    assert_true(all_crlf(b.data, b.len));
    buf_reset(&b);
    /* a trailing ';' or white space, and a header with no line end at all */
    m = "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"x\"; ";
    assert_int_equal(pgpmime_inner(m, strlen(m), 0, &b), 0);
    assert_true(has_text(&b, "\r\nContent-Type: multipart/mixed; boundary=\"x\"; hp=\"cipher\"\r\n"
                             "\r\n"));
    assert_int_equal(b.data[b.len - 1], '\n');
    assert_true(all_crlf(b.data, b.len));
    buf_reset(&b);
    /* bare LFs become CRLF in the header; the body is left alone */
    m = "From: a@example.org\nSubject: x\n y\n\nbare\nlf\n";
    assert_int_equal(pgpmime_inner(m, strlen(m), 0, &b), 0);
    size_t h = header_len(&b);
    assert_true(all_crlf(b.data, h));
    assert_true(has_text(&b, "\r\nSubject: x\r\n y\r\n"));
    assert_string_equal(b.data + h, "bare\nlf\n");
    buf_free(&b);
}

static void test_pgpmime_no_header(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "keep", 4), 0);
    assert_int_equal(pgpmime_inner("", 0, 0, &b), -1);
    assert_int_equal(pgpmime_inner("\r\nbody\r\n", 8, 0, &b), -1);
    assert_int_equal(pgpmime_inner("no field here\r\n\r\nbody", 21, PGPMIME_HIDE_SUBJECT, &b), -1);
    assert_int_equal(pgpmime_outer("\r\nbody\r\n", 8, armor, sizeof armor - 1, 0, &b), -1);
    assert_int_equal(b.len, 4); /* out as it was */
    assert_string_equal(b.data, "keep");
    buf_free(&b);
}

/* The boundary of an outer message, from its Content-Type. */
static void outer_boundary(const buf_t *b, char *out, size_t outlen)
{
    const char *p = memmem(b->data, b->len, "boundary=\"", 10);
    assert_non_null(p);
    p += 10;
    const char *q = memchr(p, '"', b->len - (size_t)(p - b->data));
    assert_non_null(q);
    size_t n = (size_t)(q - p);
    assert_true(n >= 24 && n < outlen);
    for (size_t i = 0; i < n; i++)
        assert_true((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z') ||
                    (p[i] >= '0' && p[i] <= '9'));
    memcpy(out, p, n);
    out[n] = 0;
}

static void check_outer_body(const buf_t *b, size_t h, const char *boundary)
{
    char want[1024];
    snprintf(want, sizeof want,
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
             "\r\n"
             "-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA0123456789ABCDEF\r\n=abcd\r\n"
             "-----END PGP MESSAGE-----\r\n"
             "\r\n"
             "--%s--\r\n",
             boundary, boundary, boundary);
    assert_int_equal(b->len - h, strlen(want));
    assert_memory_equal(b->data + h, want, strlen(want));
}

static void test_pgpmime_outer(void **state)
{
    (void)state;
    char first[64] = "";
    for (int hide = 0; hide < 2; hide++) {
        buf_t b;
        buf_init(&b);
        assert_int_equal(pgpmime_outer(sample, sizeof sample - 1, armor, sizeof armor - 1,
                                       hide ? PGPMIME_HIDE_SUBJECT : 0, &b),
                         0);
        assert_true(all_crlf(b.data, b.len));
        size_t h = header_len(&b);
        /* trace first, in its order, then the fields delivery and threading need */
        const char *want_start =
            "Received: from a.example.org by b.example.org; Mon, 1 Jan 2024\r\n"
            "Return-Path: <a@example.org>\r\n"
            "From: Alice <a@example.org>\r\n"
            "To: Bob <b@example.org>\r\n"
            "Cc: c@example.org\r\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            "Message-ID: <m1@example.org>\r\n"
            "In-Reply-To: <m0@example.org>\r\n"
            "References: <m-1@example.org>\r\n <m0@example.org>\r\n"
            "Reply-To: r@example.org\r\n";
        assert_memory_equal(b.data, want_start, strlen(want_start));
        const char *rest = b.data + strlen(want_start);
        const char *subject = hide ? "Subject: [...]\r\n" : "Subject: a folded\r\n subject\r\n";
        assert_memory_equal(rest, subject, strlen(subject));
        rest += strlen(subject);
        const char *mime = "MIME-Version: 1.0\r\n"
                           "Content-Type: multipart/encrypted; "
                           "protocol=\"application/pgp-encrypted\";\r\n boundary=\"";
        assert_memory_equal(rest, mime, strlen(mime));
        char boundary[64];
        outer_boundary(&b, boundary, sizeof boundary);
        rest += strlen(mime) + strlen(boundary);
        assert_memory_equal(rest, "\"\r\n\r\n", 5);
        assert_ptr_equal(rest + 5, b.data + h); /* and nothing else in the header */
        assert_null(memmem(armor, sizeof armor - 1, boundary, strlen(boundary)));
        assert_false(has_text(&b, "hidden"));
        assert_false(has_text(&b, "Bcc"));
        assert_false(has_text(&b, "Content-Transfer-Encoding"));
        assert_false(has_text(&b, "secret plans"));
        assert_false(has_text(&b, "8-bit body"));
        check_outer_body(&b, h, boundary);
        /* a fresh boundary each time */
        assert_string_not_equal(boundary, first);
        snprintf(first, sizeof first, "%s", boundary);
        buf_free(&b);
    }
}

static void test_pgpmime_outer_subject(void **state)
{
    (void)state;
    const char *m = "From: a@example.org\r\nTo: b@example.org\r\n\r\nbody\r\n";
    buf_t b;
    buf_init(&b);
    /* no Subject: none outside, unless hiding (then nobody learns it was empty) */
    assert_int_equal(pgpmime_outer(m, strlen(m), armor, sizeof armor - 1, 0, &b), 0);
    assert_false(has_text(&b, "Subject"));
    buf_reset(&b);
    assert_int_equal(pgpmime_outer(m, strlen(m), armor, sizeof armor - 1, PGPMIME_HIDE_SUBJECT, &b),
                     0);
    assert_true(has_text(&b, "\r\nSubject: [...]\r\n"));
    buf_reset(&b);
    assert_int_equal(pgpmime_inner(m, strlen(m), PGPMIME_HIDE_SUBJECT, &b), 0);
    assert_true(has_text(&b, "\r\nHP-Outer: Subject: [...]\r\n"));
    assert_int_equal(count_text(b.data, b.len, "Subject"), 1);
    buf_reset(&b);
    /* an armor with CRLF already, or none at all, still ends in CRLF */
    const char crlf_armor[] = "-----BEGIN PGP MESSAGE-----\r\n\r\nx\r\n-----END PGP MESSAGE-----";
    assert_int_equal(pgpmime_outer(m, strlen(m), crlf_armor, sizeof crlf_armor - 1, 0, &b), 0);
    assert_true(all_crlf(b.data, b.len));
    assert_true(has_text(&b, "x\r\n-----END PGP MESSAGE-----\r\n\r\n--"));
    buf_free(&b);
}

/* What software on the way acts on stays outside, verbatim and in its order;
 * it is protected inside as well, and recorded in HP-Outer. */
static void test_pgpmime_outer_keeps_what_mail_software_reads(void **state)
{
    (void)state;
    const char m[] = "From: news@list.example\r\n"
                     "To: a@example.org\r\n"
                     "Subject: weekly\r\n"
                     "List-Id: Weekly news <weekly.list.example>\r\n"
                     "List-Unsubscribe: <https://list.example/u/123>,\r\n"
                     " <mailto:unsub@list.example?subject=123>\r\n"
                     "Sender: bounces@list.example\r\n"
                     "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                     "Auto-Submitted: auto-generated\r\n"
                     "Precedence: bulk\r\n"
                     "Reply-To: help@list.example\r\n"
                     "Listed: stays inside\r\n"
                     "List-: stays inside too\r\n"
                     "Keywords: inside only\r\n"
                     "\r\nbody\r\n";
    buf_t b;
    buf_init(&b);
    assert_int_equal(
        pgpmime_outer(m, sizeof m - 1, armor, sizeof armor - 1, PGPMIME_HIDE_SUBJECT, &b), 0);
    size_t h = header_len(&b);
    const char *want = "From: news@list.example\r\n"
                       "To: a@example.org\r\n"
                       "Reply-To: help@list.example\r\n"
                       "Sender: bounces@list.example\r\n"
                       "Auto-Submitted: auto-generated\r\n"
                       "Precedence: bulk\r\n"
                       "List-Id: Weekly news <weekly.list.example>\r\n"
                       "List-Unsubscribe: <https://list.example/u/123>,\r\n"
                       " <mailto:unsub@list.example?subject=123>\r\n"
                       "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                       "Subject: [...]\r\n"
                       "MIME-Version: 1.0\r\n";
    assert_true(h > strlen(want));
    assert_memory_equal(b.data, want, strlen(want));
    assert_null(memmem(b.data, h, "inside", 6));
    buf_reset(&b);
    assert_int_equal(pgpmime_inner(m, sizeof m - 1, PGPMIME_HIDE_SUBJECT, &b), 0);
    h = header_len(&b);
    assert_true(has_text(&b, "\r\nHP-Outer: List-Unsubscribe: <https://list.example/u/123>,\r\n"
                             " <mailto:unsub@list.example?subject=123>\r\n"));
    assert_true(has_text(&b, "\r\nHP-Outer: Precedence: bulk\r\n"));
    assert_true(has_text(&b, "\r\nPrecedence: bulk\r\n"));
    assert_true(has_text(&b, "\r\nListed: stays inside\r\n"));
    assert_false(has_text(&b, "HP-Outer: Listed"));
    assert_false(has_text(&b, "HP-Outer: List-:"));
    assert_int_equal(count_text(b.data, h, "HP-Outer:"), 10);
    buf_free(&b);
}

/* The boundary of a multipart Content-Type value that starts at p. */
static void part_boundary(const char *p, size_t n, char *out, size_t outlen)
{
    const char *q = memmem(p, n, "boundary=\"", 10);
    assert_non_null(q);
    q += 10;
    const char *end = memchr(q, '"', n - (size_t)(q - p));
    assert_non_null(end);
    assert_true((size_t)(end - q) < outlen);
    memcpy(out, q, (size_t)(end - q));
    out[end - q] = 0;
}

static void test_pgpmime_legacy_display(void **state)
{
    (void)state;
    unsigned both = PGPMIME_HIDE_SUBJECT | PGPMIME_LEGACY_DISPLAY;
    buf_t b;
    buf_init(&b);
    assert_int_equal(pgpmime_inner(sample, sizeof sample - 1, both, &b), 0);
    size_t h = header_len(&b);
    assert_true(all_crlf(b.data, h));
    /* the payload: a multipart/mixed marked both ways */
    const char *ct = memmem(b.data, h, "\r\nContent-Type: multipart/mixed; boundary=\"", 43);
    assert_non_null(ct);
    char boundary[64], want[2048];
    part_boundary(ct, h - (size_t)(ct - b.data), boundary, sizeof boundary);
    snprintf(want, sizeof want,
             "\r\nContent-Type: multipart/mixed; boundary=\"%s\";\r\n"
             " hp=\"cipher\"; protected-headers=\"v1\"\r\n\r\n",
             boundary);
    assert_int_equal(count_text(b.data, h, "Content-"), 1);
    assert_memory_equal(b.data + h - strlen(want), want, strlen(want));
    /* the legacy display element, then the original body under its own fields */
    snprintf(want, sizeof want,
             "--%s\r\n"
             "Content-Type: text/plain; charset=us-ascii; hp-legacy-display=\"1\";\r\n"
             " protected-headers=\"v1\"\r\n"
             "Content-Disposition: inline\r\n"
             "\r\n"
             "Subject: a folded\r\n subject\r\n"
             "Keywords: secret plans\r\n"
             "\r\n"
             "\r\n--%s\r\n"
             "Content-Type: text/plain;\r\n\tcharset=\"utf-8\"\r\n"
             "Content-Transfer-Encoding: 8bit\r\n"
             "Content-Disposition: inline\r\n"
             "\r\n",
             boundary, boundary);
    size_t wl = strlen(want);
    assert_true(b.len - h > wl);
    assert_memory_equal(b.data + h, want, wl);
    assert_memory_equal(b.data + h + wl, SAMPLE_BODY, sizeof SAMPLE_BODY - 1);
    snprintf(want, sizeof want, "\r\n--%s--\r\n", boundary);
    assert_int_equal(b.len - h - wl - (sizeof SAMPLE_BODY - 1), strlen(want));
    assert_memory_equal(b.data + b.len - strlen(want), want, strlen(want));
    assert_false(has_text(&b, "hidden"));
    buf_reset(&b);
    /* nothing hidden outside: no element, only the marker */
    const char m[] =
        "From: a@example.org\r\nSubject: open\r\nContent-Type: text/plain\r\n\r\nbody\r\n";
    assert_int_equal(pgpmime_inner(m, sizeof m - 1, PGPMIME_LEGACY_DISPLAY, &b), 0);
    assert_true(has_text(&b, "\r\nContent-Type: text/plain; hp=\"cipher\";\r\n"
                             " protected-headers=\"v1\"\r\n\r\nbody\r\n"));
    assert_false(has_text(&b, "multipart"));
    buf_reset(&b);
    /* a UTF-8 Subject (SMTPUTF8) says so; no Content-Type gives the part none */
    const char u[] = "From: a@example.org\r\nSubject: Gr\xc3\xbc\xc3\x9f"
                     "e\r\n\r\nbody";
    assert_int_equal(pgpmime_inner(u, sizeof u - 1, both, &b), 0);
    assert_true(has_text(&b,
                         "charset=utf-8; hp-legacy-display=\"1\";\r\n protected-headers=\"v1\"\r\n"
                         "Content-Transfer-Encoding: 8bit\r\n"));
    assert_true(has_text(&b, "\r\n\r\nSubject: Gr\xc3\xbc\xc3\x9f"
                             "e\r\n\r\n\r\n--"));
    part_boundary(b.data, b.len, boundary, sizeof boundary);
    snprintf(want, sizeof want, "\r\n--%s\r\n\r\nbody\r\n--%s--\r\n", boundary, boundary);
    assert_true(b.len > strlen(want));
    assert_memory_equal(b.data + b.len - strlen(want), want, strlen(want));
    buf_free(&b);
}

static void test_pgpmime_without_blind(void **state)
{
    (void)state;
    const char m[] = "From: a@example.org\r\n"
                     "Bcc: secret@x.test,\r\n"
                     "\tother@x.test\r\n"
                     "To: b@example.org\r\n"
                     "bcc: lower@x.test\r\n"
                     "no field line\r\n"
                     "BCC : obsolete@x.test\r\n"
                     "Resent-Bcc: resent@x.test\r\n"
                     "Bcc-Note: not a Bcc\r\n"
                     "Subject: s\r\n"
                     "\r\n"
                     "Bcc: in the body stays\r\n";
    const char want[] = "From: a@example.org\r\n"
                        "To: b@example.org\r\n"
                        "no field line\r\n"
                        "Bcc-Note: not a Bcc\r\n"
                        "Subject: s\r\n"
                        "\r\n"
                        "Bcc: in the body stays\r\n";
    assert_true(pgpmime_has_blind(m, sizeof m - 1));
    buf_t b;
    buf_init(&b);
    assert_int_equal(pgpmime_without_blind(m, sizeof m - 1, &b), 0);
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(b.data, want, sizeof want - 1);
    assert_false(pgpmime_has_blind(b.data, b.len));
    /* a Bcc last, with no line end and no body */
    const char last[] = "To: b@example.org\r\nBcc: x@x.test";
    buf_reset(&b);
    assert_int_equal(pgpmime_without_blind(last, sizeof last - 1, &b), 0);
    assert_string_equal(b.data, "To: b@example.org\r\n");
    assert_false(pgpmime_has_blind(want, sizeof want - 1));
    buf_free(&b);
}

static bool encrypted(const char *msg)
{
    return pgpmime_is_encrypted(msg, strlen(msg));
}

/* Crafted OpenPGP messages: a PKESK (v3) and a SEIPD (v1), the packets of
 * an encrypted message; the same with a literal data packet after it (clear
 * text in the armor); a signature packet first; an SED after an SKESK; the
 * SEIPD in partial body lengths; no session key at all; an unknown PKESK
 * version. Only the framing is real: these are checks of the structure. */
#define ARMOR_OF(b64)  "-----BEGIN PGP MESSAGE-----\r\n\r\n" b64 "\r\n-----END PGP MESSAGE-----\r\n"
#define ARMOR          ARMOR_OF("wQwDAQIDBAUGBwgBAAHSAwGquw==")
#define ARMOR_TRAILING ARMOR_OF("wQwDAQIDBAUGBwgBAAHSAwGqu8sFYgBhYlg=")
#define ARMOR_SKESK    ARMOR_OF("wwQECQMAyQMBAgM=")
#define ARMOR_PARTIAL  ARMOR_OF("wQwDAQIDBAUGBwgBAAHS4QFVAmZ3")
#define ARMOR_NO_KEYS  ARMOR_OF("0gMBqrs=")
#define ARMOR_V9       ARMOR_OF("wQwJAQIDBAUGBwgBAAHSAwGquw==")

/* S/MIME made by `openssl cms` for a P-256 certificate: EnvelopedData
 * (-encrypt), SignedData (-sign -nodetach), AuthEnvelopedData (-aes-128-gcm). */
#define SMIME_ENV                                                                                  \
    "MIIBDwYJKoZIhvcNAQcDoIIBADCB/QIBAjGBuaGBtgIBA6BRoU8wCQYHKoZIzj0CAQNCAAQJwcRY\r\n"             \
    "YUFhBEYJYr2NfuajOJLOqF0NkfsVnGpe7F0KFd0RbCkrOSbkaig8WOpVXgWFmDRsaZp6N1C/2RF5\r\n"             \
    "/c4RMBgGCSuBBRCGSD8AAjALBglghkgBZQMEAQUwRDBCMCYwDjEMMAoGA1UEAwwDQm9iAhRvjCka\r\n"             \
    "SNC+2Vwby0Z04lPafZhjmwQYMn/EBA4tzQ0E9vSzg9G8YXgI5kYiMvttMDwGCSqGSIb3DQEHATAd\r\n"             \
    "BglghkgBZQMEAQIEELhacltaUT02m8u8i3W3uySAEMwUC7gpDQK70OwamXu1FeM=\r\n"

#define SMIME_SIG                                                                                  \
    "MIIBsgYJKoZIhvcNAQcCoIIBozCCAZ8CAQExDTALBglghkgBZQMEAgEwEAYJKoZIhvcNAQcBoAME\r\n"             \
    "AXgxggF3MIIBcwIBATAmMA4xDDAKBgNVBAMMA0JvYgIUb4wpGkjQvtlcG8tGdOJT2n2YY5swCwYJ\r\n"             \
    "YIZIAWUDBAIBoIHkMBgGCSqGSIb3DQEJAzELBgkqhkiG9w0BBwEwHAYJKoZIhvcNAQkFMQ8XDTI2\r\n"             \
    "MTIwMjAwMjkwMFowLwYJKoZIhvcNAQkEMSIEIC1xFkK3JrBEAWJ8qfusMvXIUw+xkDzE2wIlhxeS\r\n"             \
    "GkiBMHkGCSqGSIb3DQEJDzFsMGowCwYJYIZIAWUDBAEqMAsGCWCGSAFlAwQBFjALBglghkgBZQME\r\n"             \
    "AQIwCgYIKoZIhvcNAwcwDgYIKoZIhvcNAwICAgCAMA0GCCqGSIb3DQMCAgFAMAcGBSsOAwIHMA0G\r\n"             \
    "CCqGSIb3DQMCAgEoMAoGCCqGSM49BAMCBEYwRAIgIcEcprIvXILToKSS3+jmSFaDPUwiILbQVW2a\r\n"             \
    "eFIx/sMCIHRpiHGFCg/m/nYRV096/ESuTUsYBSmbOQ4ZBiKHZ072\r\n"

#define SMIME_AUTH                                                                                 \
    "MIIBFgYLKoZIhvcNAQkQARegggEFMIIBAQIBADGBuaGBtgIBA6BRoU8wCQYHKoZIzj0CAQNCAAQ0\r\n"             \
    "VDcQsv5TOpoYm6YPjzxurSOFmSnp41fnmpKGLza7Fe6Aaiwg5V8tXj12Iy9bzR7ErsvMSVCPDfuU\r\n"             \
    "HA9T9gY2MBgGCSuBBRCGSD8AAjALBglghkgBZQMEAQUwRDBCMCYwDjEMMAoGA1UEAwwDQm9iAhRv\r\n"             \
    "jCkaSNC+2Vwby0Z04lPafZhjmwQYN/mRn9tieeYdcpBme0Ixy/SAkY3uLoSUMC4GCSqGSIb3DQEH\r\n"             \
    "ATAeBglghkgBZQMEAQYwEQQMC0qg6Dp7l0u5QwxiAgEQgAFSBBDN+ybb+bMaTc9jfWD3BjVY\r\n"

#define PGP_MIME_HEAD                                                                              \
    "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; "                  \
    "boundary=\"b\"\r\n\r\n"
#define VERSION_PART     "--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
#define DATA_PART(armor) "--b\r\nContent-Type: application/octet-stream\r\n\r\n" armor
#define SMIME_HEAD(type)                                                                           \
    "Content-Type: application/pkcs7-mime; smime-type=" type "; name=smime.p7m\r\n"                \
    "Content-Transfer-Encoding: base64\r\n\r\n"

static void test_pgpmime_is_encrypted(void **state)
{
    (void)state;
    /* PGP/MIME: the protocol named, the two parts, an encrypted message */
    assert_true(encrypted(PGP_MIME_HEAD VERSION_PART DATA_PART(ARMOR) "--b--\r\n"));
    assert_true(encrypted("From: a@example.org\r\ncontent-type:\r\n\tMultipart/ENCRYPTED\r\n"
                          " ; boundary=b; PROTOCOL=application/pgp-encrypted\r\n\r\n"
                          "preamble\r\n" VERSION_PART DATA_PART(ARMOR_PARTIAL) "--b--  \r\n"
                                                                               "\r\n  \r\n"));
    /* but not with text in clear after it, or a preamble of more than a line */
    assert_false(encrypted(PGP_MIME_HEAD VERSION_PART DATA_PART(ARMOR) "--b--\r\nsecret\r\n"));
    {
        char big[4096];
        snprintf(big, sizeof big, "%s%0300d\r\n%s%s--b--\r\n", PGP_MIME_HEAD, 0, VERSION_PART,
                 DATA_PART(ARMOR));
        assert_false(encrypted(big));
    }
    assert_true(encrypted("Content-Type: (a comment) multipart / encrypted (more); "
                          "protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n" VERSION_PART
                          "--b\r\nContent-Type: application/octet-stream; name=x.asc\r\n"
                          "Content-Transfer-Encoding: 7bit\r\n\r\n" ARMOR_SKESK "\r\n--b--\r\n"));
    /* S/MIME enveloped data, as labelled */
    assert_true(encrypted(SMIME_HEAD("enveloped-data") SMIME_ENV));
    assert_true(encrypted("Content-Type: application/x-pkcs7-mime;\r\n"
                          " smime-type=\"authEnveloped-data\"\r\n"
                          "Content-Transfer-Encoding: BASE64\r\n\r\n" SMIME_AUTH));
    /* inline PGP: the whole body is one armored message */
    assert_true(encrypted("Content-Type: text/plain\r\n\r\n" ARMOR));
    assert_true(encrypted("Subject: x\r\n\r\n\r\n" ARMOR "\r\n"));
    assert_true(encrypted("Subject: x\n\n-----BEGIN PGP MESSAGE-----\nVersion: x\n\n"
                          "wQwDAQIDBAUGBwgBAAHSAwGquw==\n=abcd\n-----END PGP MESSAGE-----\n"));

    assert_false(encrypted(""));
    assert_false(encrypted("Subject: x\r\n\r\nplain\r\n"));
    assert_false(encrypted("Content-Type: text/plain\r\n\r\nplain\r\n"));
    assert_false(encrypted("Content-Type: multipart/signed; protocol=x\r\n\r\n"));
    assert_false(encrypted("Content-Type: multipart/encryptedx\r\n\r\n"));
    assert_false(encrypted("Content-Type: multipart\r\n\r\n"));
    assert_false(encrypted("Content-Type: application/pkcs7-signature\r\n\r\n"));
    assert_false(encrypted("X-Note: multipart/encrypted\r\n\r\n"));
    assert_false(encrypted("Content-Type: text/plain; x=\"multipart/encrypted\"\r\n\r\n"));
    /* labelled encrypted, but nothing to prove it: readable text stays readable */
    assert_false(encrypted("Content-Type: multipart/encrypted; "
                           "protocol=\"application/pgp-encrypted\"\r\n\r\nsecret\r\n"));
    assert_false(encrypted(
        "Content-Type: multipart/encrypted; protocol=x; boundary=b\r\n\r\n" VERSION_PART DATA_PART(
            ARMOR) "--b--\r\n"));
    assert_false(
        encrypted("Content-Type: multipart/encrypted; x=\"; protocol="
                  "application/pgp-encrypted\"; boundary=b\"\r\n\r\n" VERSION_PART DATA_PART(
                      ARMOR) "--b--\r\n"));
    /* PGP/MIME with a third part, one part, parts swapped or mislabelled */
    assert_false(encrypted(PGP_MIME_HEAD VERSION_PART DATA_PART(
        ARMOR) "--b\r\nContent-Type: text/plain\r\n\r\nSECRET\r\n--b--\r\n"));
    assert_false(encrypted(PGP_MIME_HEAD DATA_PART(ARMOR) "--b--\r\n"));
    assert_false(encrypted(PGP_MIME_HEAD DATA_PART(ARMOR) VERSION_PART "--b--\r\n"));
    assert_false(encrypted(PGP_MIME_HEAD VERSION_PART
                           "--b\r\nContent-Type: text/plain\r\n\r\n" ARMOR "--b--\r\n"));
    assert_false(encrypted(PGP_MIME_HEAD "--b\r\nContent-Type: application/pgp-encrypted\r\n"
                                         "\r\nVersion: 2\r\n" DATA_PART(ARMOR) "--b--\r\n"));
    /* no close delimiter; two boundaries; text inside the second part */
    assert_false(encrypted(PGP_MIME_HEAD VERSION_PART DATA_PART(ARMOR)));
    assert_false(encrypted("Content-Type: multipart/encrypted; boundary=b; boundary=c; "
                           "protocol=\"application/pgp-encrypted\"\r\n\r\n" VERSION_PART DATA_PART(
                               ARMOR) "--b--\r\n"));
    assert_false(encrypted(PGP_MIME_HEAD VERSION_PART DATA_PART("SECRET\r\n" ARMOR) "--b--\r\n"));
    assert_false(encrypted(PGP_MIME_HEAD VERSION_PART
                           "--b\r\nContent-Type: application/octet-stream\r\n"
                           "Content-Transfer-Encoding: base64\r\n\r\n" ARMOR "--b--\r\n"));
    /* armor that holds no encrypted message, or clear text besides it */
    static const char *const not_encrypted[] = {ARMOR_TRAILING, ARMOR_NO_KEYS, ARMOR_V9,
                                                ARMOR_OF("xsBNBF"), ARMOR_OF("wQwDAQ")};
    for (size_t i = 0; i < sizeof not_encrypted / sizeof *not_encrypted; i++) {
        char msg[1024];
        snprintf(msg, sizeof msg, PGP_MIME_HEAD VERSION_PART DATA_PART("%s") "--b--\r\n",
                 not_encrypted[i]);
        assert_false(encrypted(msg));
        snprintf(msg, sizeof msg, "Subject: x\r\n\r\n%s", not_encrypted[i]);
        assert_false(encrypted(msg));
    }
    assert_false(encrypted("Subject: x\r\n\r\n-----BEGIN PGP MESSAGE-----\r\nSECRET: x\r\n\r\n"
                           "wQwDAQIDBAUGBwgBAAHSAwGquw==\r\n-----END PGP MESSAGE-----\r\n"));
    assert_false(encrypted("Subject: x\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nSECRET\r\n"
                           ":" ARMOR "-----END PGP MESSAGE-----\r\n"));
    /* S/MIME: signed data relabelled, the other enveloped kind, no base64, extra octets */
    assert_false(encrypted(SMIME_HEAD("enveloped-data") SMIME_SIG));
    assert_false(encrypted(SMIME_HEAD("enveloped-data") SMIME_AUTH));
    assert_false(encrypted(SMIME_HEAD("authEnveloped-data") SMIME_ENV));
    assert_false(encrypted(SMIME_HEAD("enveloped-data") SMIME_ENV "AAAA\r\n"));
    assert_false(encrypted(SMIME_HEAD("enveloped-data") "MIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n"));
    assert_false(encrypted("Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
                           "\r\n" SMIME_ENV));
    assert_false(encrypted("Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
                           "Content-Transfer-Encoding: base64\r\n\r\n" SMIME_SIG));
    assert_false(encrypted("Content-Type: application/x-pkcs7-mime\r\n\r\n"));
    /* two Content-Types, even when both agree: not surely encrypted */
    assert_false(encrypted("Content-Type: multipart/encrypted; "
                           "protocol=application/pgp-encrypted\r\n"
                           "Content-Type: text/plain\r\n\r\nsecret\r\n" ARMOR));
    assert_false(
        encrypted("Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n" SMIME_HEAD(
            "enveloped-data") SMIME_ENV));
    /* inline armor with text around it, or in a multipart: the text is clear */
    assert_false(encrypted("Content-Type: text/plain\r\n\r\nHi,\r\n" ARMOR));
    assert_false(encrypted("Subject: x\r\n\r\n" ARMOR "-- \r\nsignature\r\n"));
    assert_false(encrypted("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
                           "TOP SECRET\r\n--b\r\n\r\n" ARMOR "--b--\r\n"));
    assert_false(encrypted("Subject: x\r\n\r\n" ARMOR ARMOR));
    /* the markers only count as whole body lines */
    assert_false(encrypted("X-Armor: -----BEGIN PGP MESSAGE-----\r\n\r\nplain\r\n"));
    assert_false(encrypted("Subject: x\r\n\r\n -----BEGIN PGP MESSAGE-----\r\n"));
    assert_false(encrypted("Subject: x\r\n\r\n> -----BEGIN PGP MESSAGE-----\r\n"));
    assert_false(encrypted("Subject: x\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\n"));
    assert_false(encrypted("Subject: x\r\n\r\n-----BEGIN PGP MESSAGE-----"));
}

/* ---- sealing at rest ---- */

#define KEY_A "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "b:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="

static void test_seal_round_trip_and_binding(void **state)
{
    (void)state;
    char err[256];
    seal_keyring_t *k = seal_keyring_load(KEY_A, NULL, err, sizeof err);
    assert_non_null(k);
    assert_string_equal(seal_current_id(k), "a");
    const char msg[] = "Subject: hi\r\n\r\nbody\r\n";
    buf_t sealed, plain;
    buf_init(&sealed);
    buf_init(&plain);
    assert_int_equal(seal_body(k, "m1:0", msg, strlen(msg), &sealed), 0);
    assert_true(sealed.len <= strlen(msg) + SEAL_OVERHEAD);
    assert_null(memmem(sealed.data, sealed.len, "body", 4));
    assert_int_equal(seal_open(k, "m1:0", sealed.data, sealed.len, &plain, err, sizeof err), 0);
    assert_int_equal(plain.len, strlen(msg));
    assert_memory_equal(plain.data, msg, plain.len);
    /* another message or variant, a flipped bit, a cut: none opens */
    buf_reset(&plain);
    assert_int_equal(seal_open(k, "m1:1", sealed.data, sealed.len, &plain, err, sizeof err), -1);
    assert_int_equal(seal_open(k, "m2:0", sealed.data, sealed.len, &plain, err, sizeof err), -1);
    sealed.data[sealed.len - 1] ^= 1;
    assert_int_equal(seal_open(k, "m1:0", sealed.data, sealed.len, &plain, err, sizeof err), -1);
    assert_int_equal(seal_open(k, "m1:0", sealed.data, 10, &plain, err, sizeof err), -1);
    assert_int_equal(seal_open(k, "m1:0", "plain text", 10, &plain, err, sizeof err), -1);
    assert_string_equal(err, "not a sealed body");
    assert_int_equal(plain.len, 0);
    buf_free(&sealed);
    buf_free(&plain);
    seal_keyring_free(k);
}

static void test_seal_rotation_and_unknown_keys(void **state)
{
    (void)state;
    char err[256];
    seal_keyring_t *old = seal_keyring_load(KEY_A, NULL, err, sizeof err);
    seal_keyring_t *both = seal_keyring_load(KEY_B ", " KEY_A, NULL, err, sizeof err);
    seal_keyring_t *only_b = seal_keyring_load(KEY_B, NULL, err, sizeof err);
    assert_non_null(old);
    assert_non_null(both);
    assert_non_null(only_b);
    assert_int_equal(seal_key_count(both), 2);
    assert_string_equal(seal_current_id(both), "b");
    buf_t sealed, plain;
    buf_init(&sealed);
    buf_init(&plain);
    assert_int_equal(seal_body(old, "m:0", "x", 1, &sealed), 0);
    assert_int_equal(seal_open(both, "m:0", sealed.data, sealed.len, &plain, err, sizeof err), 0);
    assert_int_equal(seal_open(only_b, "m:0", sealed.data, sealed.len, &plain, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "\"a\", which this node does not have"));
    /* the check value: a different key under the same id fails it */
    buf_reset(&sealed);
    assert_int_equal(seal_check_make(old, 0, &sealed), 0);
    assert_true(seal_check_verify(both, sealed.data, sealed.len));
    seal_keyring_t *impostor =
        seal_keyring_load("a:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=", NULL, err, sizeof err);
    assert_false(seal_check_verify(impostor, sealed.data, sealed.len));
    buf_free(&sealed);
    buf_free(&plain);
    seal_keyring_free(old);
    seal_keyring_free(both);
    seal_keyring_free(only_b);
    seal_keyring_free(impostor);
}

static void test_seal_mac(void **state)
{
    (void)state;
    char err[256], tag[SEAL_MAC_LEN + 1], other[SEAL_MAC_LEN + 1];
    seal_keyring_t *old = seal_keyring_load(KEY_A, NULL, err, sizeof err);
    seal_keyring_t *both = seal_keyring_load(KEY_B ", " KEY_A, NULL, err, sizeof err);
    seal_keyring_t *only_b = seal_keyring_load(KEY_B, NULL, err, sizeof err);
    seal_field_t f[] = {{"ab", 2}, {"c", 1}};
    seal_mac(old, "job", f, 2, tag);
    assert_memory_equal(tag, "a:", 2);
    assert_int_equal(strlen(tag), 66);
    assert_int_equal(seal_mac_verify(old, "job", f, 2, tag, strlen(tag)), 1);
    /* a rotation: the old key still verifies what it made */
    assert_int_equal(seal_mac_verify(both, "job", f, 2, tag, strlen(tag)), 1);
    assert_int_equal(seal_mac_verify(only_b, "job", f, 2, tag, strlen(tag)), -1);
    /* another purpose, other fields, a moved boundary: all fail */
    assert_int_equal(seal_mac_verify(old, "key", f, 2, tag, strlen(tag)), 0);
    seal_field_t moved[] = {{"a", 1}, {"bc", 2}};
    assert_int_equal(seal_mac_verify(old, "job", moved, 2, tag, strlen(tag)), 0);
    assert_int_equal(seal_mac_verify(old, "job", f, 1, tag, strlen(tag)), 0);
    /* a flipped digit, a short tag, no tag */
    memcpy(other, tag, sizeof other);
    other[10] = other[10] == '0' ? '1' : '0';
    assert_int_equal(seal_mac_verify(old, "job", f, 2, other, strlen(other)), 0);
    assert_int_equal(seal_mac_verify(old, "job", f, 2, tag, strlen(tag) - 1), 0);
    assert_int_equal(seal_mac_verify(old, "job", f, 2, "", 0), 0);
    assert_int_equal(seal_mac_verify(old, "job", f, 2, NULL, 0), 0);
    /* the current key makes the tag; a different key under the same id fails */
    seal_mac(both, "job", f, 2, other);
    assert_memory_equal(other, "b:", 2);
    seal_keyring_t *impostor =
        seal_keyring_load("a:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=", NULL, err, sizeof err);
    assert_int_equal(seal_mac_verify(impostor, "job", f, 2, tag, strlen(tag)), 0);
    seal_keyring_free(old);
    seal_keyring_free(both);
    seal_keyring_free(only_b);
    seal_keyring_free(impostor);
}

static void test_seal_keyring_errors(void **state)
{
    (void)state;
    char err[256];
    assert_null(seal_keyring_load("", "", err, sizeof err));
    assert_non_null(strstr(err, "no sealing key"));
    assert_null(seal_keyring_load("a:c2hvcnQ=", NULL, err, sizeof err));
    assert_null(seal_keyring_load("nocolon", NULL, err, sizeof err));
    assert_null(seal_keyring_load(KEY_A " " KEY_A, NULL, err, sizeof err));
    assert_non_null(strstr(err, "twice"));
    assert_null(seal_keyring_load(NULL, "/nonexistent/seal.key", err, sizeof err));
    char line[128];
    assert_int_equal(seal_key_new("k1", line, sizeof line), 0);
    assert_memory_equal(line, "k1:", 3);
    seal_keyring_t *k = seal_keyring_load(line, NULL, err, sizeof err);
    assert_non_null(k);
    seal_keyring_free(k);
    assert_int_equal(seal_key_new("bad id", line, sizeof line), -1);
}

/* ---- the key directory cache and the decision ---- */

static void collect_addresses(const crypto_key_info_t *key, void *arg)
{
    buf_t *out = arg;
    for (unsigned i = 0; i < key->n_addresses; i++)
        buf_printf(out, "[%s]", key->addresses[i]);
}

/* Runs argv; its exit status. */
static int run(const char *const *argv)
{
    pid_t pid;
    if (posix_spawnp(&pid, argv[0], NULL, NULL, (char *const *)argv, environ) != 0) return -1;
    int status;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs gpg with args in the GnuPG home home; its exit status. */
static int run_gpg(const char *home, const char *const *args)
{
    const char *argv[16] = {"gpg", "--homedir", home, "--batch", "--quiet", "--passphrase", ""};
    size_t n = 7;
    for (; *args && n + 1 < sizeof argv / sizeof argv[0]; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    return run(argv);
}

/* A user ID is any octets; gpg prints "\n" in one escaped and GPGME gives
 * it back as a line feed. The key directory keeps a key's addresses one to
 * a line and looks them up as RCPT gives them, so an address with a control
 * octet or a space in it is not taken (it would turn into another one). */
static void test_key_addresses_with_controls_are_not_taken(void **state)
{
    (void)state;
    char home[] = "/tmp/sealpost-gpg-XXXXXX", path[64];
    assert_non_null(mkdtemp(home));
    snprintf(path, sizeof path, "%s/key.asc", home);
    const char *const make[] = {
        "--quick-generate-key", "Eve <eve@evil.test>", "future-default", "default", "never", NULL};
    const char *const lf[] = {"--quick-add-uid", "eve@evil.test",
                              "Eve <x@evil.test\nceo@bank.test>", NULL};
    const char *const space[] = {"--quick-add-uid", "eve@evil.test", "Eve <a b@evil.test>", NULL};
    const char *const export[] = {"--armor", "--output", path, "--export", NULL};
    assert_int_equal(run_gpg(home, make), 0);
    assert_int_equal(run_gpg(home, lf), 0);
    assert_int_equal(run_gpg(home, space), 0);
    assert_int_equal(run_gpg(home, export), 0);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char armored[65536];
    size_t len = fread(armored, 1, sizeof armored, f);
    fclose(f);
    assert_true(len > 0);
    buf_t got;
    buf_init(&got);
    char err[256];
    if (crypto_gpg_init(err, sizeof err) < 0) fail_msg("%s", err);
    if (crypto_keys_inspect(armored, len, NULL, NULL, collect_addresses, &got, err, sizeof err) < 0)
        fail_msg("%s", err);
    buf_append(&got, "", 1);
    assert_string_equal(got.data, "[eve@evil.test]");
    buf_free(&got);
    const char *const stop_agent[] = {"gpgconf", "--homedir", home, "--kill", "gpg-agent", NULL};
    assert_int_equal(run(stop_agent), 0);
    crypto_homes_remove(home);
}

/* ---- the librnp engine (rnp.c) ---- */

/* The key IDs an armored message's PKESK packets name, as hex, one after
 * the other; "" when it is no encrypted message. */
static void pkesk_ids(const buf_t *ciphertext, char *out, size_t outlen)
{
    const char *kind;
    size_t kind_len, bin_len, pos = 0, used = 0;
    unsigned char *bin = NULL;
    out[0] = 0;
    assert_null(memchr(ciphertext->data, '\r', ciphertext->len)); /* LF line ends, as GPGME's */
    assert_int_equal(
        openpgp_dearmor(ciphertext->data, ciphertext->len, &kind, &kind_len, &bin, &bin_len), 1);
    assert_true(kind_len == 7 && !memcmp(kind, "MESSAGE", 7));
    assert_true(openpgp_is_encrypted_message(bin, bin_len));
    openpgp_packet_t p;
    while (openpgp_packet_next(bin, bin_len, &pos, &p) == 1)
        if (p.tag == OPENPGP_TAG_PKESK && p.body_len > 9 && p.body[0] == 3)
            for (int i = 1; i <= 8 && used + 3 <= outlen; i++)
                used += (size_t)snprintf(out + used, outlen - used, "%02X", p.body[i]);
    free(bin);
}

struct rnp_job {
    const crypto_rcpt_key_t *key;
    char ids[64];
};

static void rnp_encrypt_ids(const crypto_rcpt_key_t *key, char *ids, size_t idslen)
{
    buf_t ciphertext;
    buf_init(&ciphertext);
    char err[256];
    static const char plain[] = "Subject: s\r\n\r\nbody\r\n";
    if (rnp_engine_encrypt(key, 1, plain, sizeof plain - 1, &ciphertext, err, sizeof err) < 0)
        fail_msg("%s", err);
    pkesk_ids(&ciphertext, ids, idslen);
    buf_free(&ciphertext);
}

static void *rnp_in_fresh_thread(void *arg)
{
    struct rnp_job *job = arg;
    rnp_encrypt_ids(job->key, job->ids, sizeof job->ids);
    return NULL;
}

static void read_file(const char *path, char *out, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    *len = fread(out, 1, cap, f);
    fclose(f);
    assert_true(*len > 0 && *len < cap);
}

static void take_fpr(const crypto_key_info_t *key, void *arg)
{
    snprintf(arg, CRYPTO_FPR_MAX + 1, "%s", key->fpr);
}

/* librnp, like gpg, merges an import into the key it holds: a warm thread
 * given a key's new data (its newer encryption subkey dropped, say,
 * because it was compromised) must encrypt as a fresh thread does, to
 * what the new data has, never to what the old had. */
static void test_rnp_replaced_key_is_not_used_again(void **state)
{
    (void)state;
    char home[] = "/tmp/sealpost-rnp-XXXXXX", old_path[64], new_path[64], fpr[CRYPTO_FPR_MAX + 1];
    assert_non_null(mkdtemp(home));
    snprintf(old_path, sizeof old_path, "%s/one-subkey.asc", home);
    snprintf(new_path, sizeof new_path, "%s/two-subkeys.asc", home);
    char earlier[32];
    snprintf(earlier, sizeof earlier, "%lld", (long long)time(NULL) - 3600);
    const char *const make[] = {"--faked-system-time",
                                earlier,
                                "--quick-generate-key",
                                "Bob <bob@example.test>",
                                "future-default",
                                "default",
                                "never",
                                NULL};
    const char *const export_one[] = {"--armor", "--output", old_path, "--export", NULL};
    const char *const export_two[] = {"--armor", "--output", new_path, "--export", NULL};
    assert_int_equal(run_gpg(home, make), 0);
    assert_int_equal(run_gpg(home, export_one), 0);
    char err[256];
    if (crypto_gpg_init(err, sizeof err) < 0) fail_msg("%s", err);
    static char one[16384], two[16384];
    size_t one_len, two_len;
    read_file(old_path, one, sizeof one, &one_len);
    if (crypto_keys_inspect(one, one_len, NULL, NULL, take_fpr, fpr, err, sizeof err) < 0)
        fail_msg("%s", err);
    const char *const add[] = {"--quick-add-key", fpr, "cv25519", "encr", NULL};
    assert_int_equal(run_gpg(home, add), 0);
    assert_int_equal(run_gpg(home, export_two), 0);
    read_file(new_path, two, sizeof two, &two_len);
    crypto_rcpt_key_t with_one = {.fpr = fpr, .armored = one, .armored_len = one_len};
    crypto_rcpt_key_t with_two = {.fpr = fpr, .armored = two, .armored_len = two_len};

    struct rnp_job fresh = {.key = &with_one};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, rnp_in_fresh_thread, &fresh), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(strlen(fresh.ids), 16);

    char ids[64];
    rnp_encrypt_ids(&with_two, ids, sizeof ids);
    assert_int_equal(strlen(ids), 16);
    assert_string_not_equal(ids, fresh.ids); /* the newer subkey, as gpg picks */
    rnp_encrypt_ids(&with_one, ids, sizeof ids);
    assert_string_equal(ids, fresh.ids);         /* this warm thread forgot the newer one */
    rnp_encrypt_ids(&with_one, ids, sizeof ids); /* and a hit keeps it so */
    assert_string_equal(ids, fresh.ids);

    /* data that holds another key than the fingerprint says is refused */
    crypto_rcpt_key_t wrong = {
        .fpr = "0123456789ABCDEF0123456789ABCDEF01234567", .armored = two, .armored_len = two_len};
    buf_t ciphertext;
    buf_init(&ciphertext);
    assert_int_equal(rnp_engine_encrypt(&wrong, 1, "x", 1, &ciphertext, err, sizeof err), -1);
    assert_non_null(strstr(err, "not in its data"));
    assert_int_equal(ciphertext.len, 0);
    buf_free(&ciphertext);

    const char *const stop_agent[] = {"gpgconf", "--homedir", home, "--kill", "gpg-agent", NULL};
    assert_int_equal(run(stop_agent), 0);
    crypto_homes_remove(home);
}

/* ---- the GPGME engine's per-thread key cache (gpg.c) ---- */

/* More keys than a thread's GnuPG home holds (gpg.c's KEY_CACHE, 64). */
#define MANY_KEYS 66

struct many_keys {
    crypto_rcpt_key_t keys[MANY_KEYS];
    unsigned n;
    int failures; /* the jobs that failed, in the thread below */
    char err[256];
};

static void take_key(const crypto_key_info_t *key, void *arg)
{
    struct many_keys *m = arg;
    if (m->n < MANY_KEYS)
        m->keys[m->n] = (crypto_rcpt_key_t){.fpr = strdup(key->fpr),
                                            .armored = strndup(key->armored, key->armored_len),
                                            .armored_len = key->armored_len};
    m->n++;
}

/* Encrypts to keys with the GPGME engine; the number of PKESK packets
 * written, each to a key of its own, or -1 with m->err. */
static int gpgme_recipients(const char *parent, const crypto_rcpt_key_t *keys, unsigned n,
                            struct many_keys *m)
{
    static const char plain[] = "Subject: s\r\n\r\nbody\r\n";
    buf_t ciphertext;
    buf_init(&ciphertext);
    int rc = crypto_encrypt(parent, keys, n, plain, sizeof plain - 1, &ciphertext, m->err,
                            sizeof m->err);
    char ids[MANY_KEYS * 16 + 1];
    if (rc == 0) {
        pkesk_ids(&ciphertext, ids, sizeof ids);
        size_t found = strlen(ids) / 16;
        rc = (int)found;
        for (size_t i = 0; i < found; i++)
            for (size_t j = i + 1; j < found; j++)
                if (!memcmp(ids + 16 * i, ids + 16 * j, 16)) rc = -1; /* not the keys asked */
    }
    buf_free(&ciphertext);
    return rc;
}

static void *gpgme_jobs_in_fresh_thread(void *arg)
{
    struct many_keys *m = arg;
    char parent[256], err[256];
    if (crypto_homes_create(NULL, parent, sizeof parent, err, sizeof err) < 0) {
        snprintf(m->err, sizeof m->err, "%s", err);
        m->failures = -1;
        return NULL;
    }
    const crypto_rcpt_key_t pair[] = {m->keys[0], m->keys[64]};
    /* the home full: 64 keys, the first in the slot to be reused next */
    int fill = gpgme_recipients(parent, m->keys, 64, m);
    /* a job that uses that slot's key and brings a new one */
    int two = fill == 64 ? gpgme_recipients(parent, pair, 2, m) : -1;
    /* a job with more keys than the home holds */
    int all = two == 2 ? gpgme_recipients(parent, m->keys, MANY_KEYS, m) : -1;
    /* and the thread's home serves on */
    int one = all == MANY_KEYS ? gpgme_recipients(parent, &m->keys[1], 1, m) : -1;
    m->failures = (fill != 64) + (two != 2) + (all != MANY_KEYS) + (one != 1);
    /* the big job's own home is gone: only the thread's is left */
    unsigned entries = 0;
    DIR *d = opendir(parent);
    for (struct dirent *e; d && (e = readdir(d));)
        entries += e->d_name[0] != '.';
    if (d) closedir(d);
    if (entries != 1) {
        snprintf(m->err, sizeof m->err, "%u homes left, not the thread's alone", entries);
        m->failures++;
    }
    crypto_homes_remove(parent);
    return NULL;
}

/* A key already picked for a job stays in the thread's home until gpg has
 * encrypted to it: a new key of the same job takes another slot, and a job
 * with more keys than the home holds gets a home of its own. Before, the
 * next slot in turn was reused whatever it held, and such a job failed
 * (451) for want of a key deleted under it. */
static void test_gpgme_keeps_the_keys_of_the_job(void **state)
{
    (void)state;
    char home[] = "/tmp/sealpost-gpg-XXXXXX", params[64], path[64];
    assert_non_null(mkdtemp(home));
    snprintf(params, sizeof params, "%s/params", home);
    snprintf(path, sizeof path, "%s/keys.asc", home);
    FILE *f = fopen(params, "w");
    assert_non_null(f);
    fputs("%no-protection\n", f);
    for (int i = 0; i < MANY_KEYS; i++)
        fprintf(f,
                "Key-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nSubkey-Type: ecdh\n"
                "Subkey-Curve: cv25519\nSubkey-Usage: encrypt\nName-Email: r%d@example.test\n"
                "Expire-Date: 0\n%%commit\n",
                i);
    fclose(f);
    const char *const make[] = {"--gen-key", params, NULL};
    const char *const export[] = {"--armor", "--output", path, "--export", NULL};
    assert_int_equal(run_gpg(home, make), 0);
    assert_int_equal(run_gpg(home, export), 0);
    static char armored[MANY_KEYS * 1024];
    size_t len;
    read_file(path, armored, sizeof armored, &len);
    char err[256];
    if (crypto_gpg_init(err, sizeof err) < 0) fail_msg("%s", err);
    static struct many_keys m;
    if (crypto_keys_inspect(armored, len, NULL, NULL, take_key, &m, err, sizeof err) < 0)
        fail_msg("%s", err);
    assert_int_equal(m.n, MANY_KEYS);

    char engine_err[256];
    assert_int_equal(crypto_openpgp_engine(ENGINE_GPGME, engine_err, sizeof engine_err), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, gpgme_jobs_in_fresh_thread, &m), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (m.failures) fail_msg("%d jobs failed: %s", m.failures, m.err);

    for (unsigned i = 0; i < MANY_KEYS; i++) {
        free((char *)m.keys[i].fpr);
        free((char *)m.keys[i].armored);
    }
    const char *const stop_agent[] = {"gpgconf", "--homedir", home, "--kill", "gpg-agent", NULL};
    assert_int_equal(run(stop_agent), 0);
    crypto_homes_remove(home);
}

/* A signature's issuer, read from its subpacket areas: a packet too short
 * for them, or an area whose lengths run past it, is refused, never read
 * beyond; two-octet subpacket lengths from 224 up are lengths, not partial
 * ones (RFC 9580 §5.2.3.7). Each packet is a malloc'd copy of its octets,
 * so ASan sees a read past the end. */
static int issuer_of(const unsigned char *bytes, size_t n, unsigned *type, char *issuer)
{
    unsigned char *copy = malloc(n);
    memcpy(copy, bytes, n);
    openpgp_packet_t p;
    size_t pos = 0;
    int rc = openpgp_packet_next(copy, n, &pos, &p) == 1
                 ? openpgp_signature_issuer(&p, type, issuer, OPENPGP_ISSUER_MAX)
                 : -2;
    free(copy);
    return rc;
}

static void test_signature_issuer_bounds(void **state)
{
    (void)state;
    unsigned type = 0;
    char issuer[OPENPGP_ISSUER_MAX] = "";
    static const unsigned char short_v4[] = {0xc2, 0x02, 0x04, 0x20};
    assert_int_equal(issuer_of(short_v4, sizeof short_v4, &type, issuer), -1);
    static const unsigned char short_v6[] = {0xc2, 0x05, 0x06, 0x20, 0x01, 0x08, 0x00};
    assert_int_equal(issuer_of(short_v6, sizeof short_v6, &type, issuer), -1);
    /* v4 key revocation: hashed area with an issuer key ID subpacket (16) */
    static const unsigned char v4[] = {0xc2, 0x12, 0x04, 0x20, 0x01, 0x08, 0x00, 0x0a, 0x09, 0x10,
                                       1,    2,    3,    4,    5,    6,    7,    8,    0x00, 0x00};
    assert_int_equal(issuer_of(v4, sizeof v4, &type, issuer), 0);
    assert_int_equal(type, 0x20);
    assert_string_equal(issuer, "0102030405060708");
    /* a subpacket length that runs past its area */
    unsigned char bad[sizeof v4];
    memcpy(bad, v4, sizeof bad);
    bad[8] = 0x0b;
    assert_int_equal(issuer_of(bad, sizeof bad, &type, issuer), -1);
    /* A subpacket of 8,384 octets (two-octet length 0xe0 0x00, which a
     * packet's length rules would take for a partial length) before the
     * issuer: it is skipped whole and the issuer found behind it. */
    enum { NOTE = 8384, AREA = 2 + NOTE + 10, BODY = 4 + 2 + AREA + 2 };
    unsigned char *big = calloc(1, 6 + BODY);
    unsigned char *b = big;
    *b++ = 0xc2, *b++ = 0xff; /* tag 2, five-octet length */
    *b++ = 0, *b++ = 0, *b++ = BODY >> 8, *b++ = BODY & 0xff;
    *b++ = 4, *b++ = 0x20, *b++ = 1, *b++ = 8;
    *b++ = AREA >> 8, *b++ = AREA & 0xff;
    *b++ = 0xe0, *b++ = 0x00, *b++ = 20; /* notation data, its octets zero */
    b += NOTE - 1;
    *b++ = 9, *b++ = 16;
    for (int i = 1; i <= 8; i++)
        *b++ = (unsigned char)(0xa0 + i);
    *b++ = 0, *b++ = 0;
    assert_int_equal(b - big, 6 + BODY);
    assert_int_equal(issuer_of(big, 6 + BODY, &type, issuer), 0);
    assert_string_equal(issuer, "A1A2A3A4A5A6A7A8");
    free(big);
}

static void test_addr_canon(void **state)
{
    (void)state;
    char out[300];
    assert_int_equal(crypto_addr_canon("Alice+Work@Example.TEST", true, true, out, sizeof out), 0);
    assert_string_equal(out, "alice@example.test");
    assert_int_equal(crypto_addr_canon("Alice+Work@Example.TEST", false, false, out, sizeof out),
                     0);
    assert_string_equal(out, "Alice+Work@example.test");
    assert_int_equal(crypto_addr_canon("+x@a.test", true, true, out, sizeof out), 0);
    assert_string_equal(out, "+x@a.test"); /* nothing before the '+': kept */
    assert_int_equal(crypto_addr_canon("no-at", true, true, out, sizeof out), -1);
    assert_int_equal(crypto_addr_canon("@a.test", true, true, out, sizeof out), -1);
    assert_int_equal(crypto_addr_canon("a@", true, true, out, sizeof out), -1);
}

/* keydir_decide with no interest in the method or the reason. */
static enum crypto_decision decide_at(const keydir_entry_t *e, long long now)
{
    enum crypto_method m;
    char why[256];
    return keydir_decide(e, now, &m, why, sizeof why);
}

/* The directory's authentication: an entry's tag binds its name and
 * content, so one moved onto another name, or changed, fails; the index's
 * tag binds every entry and tag and the version it was sealed at. */
static void test_keydir_item_tags(void **state)
{
    (void)state;
    char err[256], tag[SEAL_MAC_LEN + 1], entry[128];
    seal_keyring_t *k = seal_keyring_load(KEY_A, NULL, err, sizeof err);
    keydir_item_t alice = {.kind = KEYDIR_ITEM_ADDRESS,
                           .name = "alice@x.test",
                           .method = "openpgp",
                           .fpr = "AAAA",
                           .expires = 0,
                           .data = "key-a",
                           .len = 5};
    assert_int_equal(keydir_item_entry(&alice, entry, sizeof entry), 0);
    assert_string_equal(entry, "a:alice@x.test:openpgp");
    assert_int_equal(keydir_item_entry(&alice, entry, 8), -1);
    keydir_item_tag(k, &alice, tag);
    assert_int_equal(keydir_item_verify(k, &alice, tag), 1);
    keydir_item_t moved = alice; /* mallory's entry renamed onto alice's */
    moved.name = "mallory@x.test";
    assert_int_equal(keydir_item_verify(k, &moved, tag), 0);
    keydir_item_t swapped = alice;
    swapped.data = "key-m";
    assert_int_equal(keydir_item_verify(k, &swapped, tag), 0);
    swapped = alice;
    swapped.expires = 1;
    assert_int_equal(keydir_item_verify(k, &swapped, tag), 0);
    swapped = alice;
    swapped.method = "smime";
    assert_int_equal(keydir_item_verify(k, &swapped, tag), 0);
    /* a policy's tag is for its value and its name */
    keydir_item_t p = {
        .kind = KEYDIR_ITEM_POLICY, .name = "alice@x.test", .data = "required", .len = 8};
    keydir_item_tag(k, &p, tag);
    assert_int_equal(keydir_item_verify(k, &p, tag), 1);
    p.data = "never";
    p.len = 5;
    assert_int_equal(keydir_item_verify(k, &p, tag), 0);
    p.kind = KEYDIR_ITEM_PREFER; /* the same text as another kind */
    assert_int_equal(keydir_item_verify(k, &p, tag), 0);
    seal_keyring_free(k);
}

static void test_keydir_index(void **state)
{
    (void)state;
    char err[256], tag[SEAL_MAC_LEN + 1];
    seal_keyring_t *k = seal_keyring_load(KEY_A, NULL, err, sizeof err);
    const char *entries[] = {"p:x.test", "a:b@x.test:openpgp", "k:F1"};
    const char *tags[] = {"t1", "t2", "t3"};
    keydir_index_t *x = keydir_index_new(entries, tags, 3);
    assert_non_null(x);
    assert_int_equal(keydir_index_size(x), 3);
    assert_string_equal(keydir_index_entry(x, 0), "a:b@x.test:openpgp"); /* sorted */
    assert_string_equal(keydir_index_find(x, "k:F1"), "t3");
    assert_null(keydir_index_find(x, "k:F2"));
    assert_int_equal(keydir_index_tag(k, 7, x, tag), 0);
    assert_int_equal(keydir_index_verify(k, 7, x, tag), 1);
    assert_int_equal(keydir_index_verify(k, 6, x, tag), 0); /* another version */
    /* the same entries given in another order: the same index */
    const char *e2[] = {"k:F1", "p:x.test", "a:b@x.test:openpgp"};
    const char *t2[] = {"t3", "t1", "t2"};
    keydir_index_t *y = keydir_index_new(e2, t2, 3);
    assert_int_equal(keydir_index_verify(k, 7, y, tag), 1);
    keydir_index_free(y);
    /* one entry fewer (a deletion), or one tag changed: fails */
    y = keydir_index_new(entries, tags, 2);
    assert_int_equal(keydir_index_verify(k, 7, y, tag), 0);
    keydir_index_free(y);
    const char *t3[] = {"t1", "t2", "t4"};
    y = keydir_index_new(entries, t3, 3);
    assert_int_equal(keydir_index_verify(k, 7, y, tag), 0);
    keydir_index_free(y);
    /* the empty index has a tag too */
    y = keydir_index_new(NULL, NULL, 0);
    assert_null(keydir_index_find(y, "k:F1"));
    assert_int_equal(keydir_index_tag(k, 0, y, tag), 0);
    assert_int_equal(keydir_index_verify(k, 0, y, tag), 1);
    keydir_index_free(y);
    keydir_index_free(x);
    seal_keyring_free(k);
}

static void test_keydir_versions_and_decisions(void **state)
{
    (void)state;
    keydir_t *d = keydir_new(16);
    assert_non_null(d);
    keydir_entry_t e = {
        .policy = ENC_POLICY_OPPORTUNISTIC,
        .keys[CRYPTO_OPENPGP] = {
            .fpr = "ABCD", .expires = 0, .armored = (char *)"KEY", .armored_len = 3}};
    assert_int_equal(keydir_put(d, 5, "a@x.test", &e), 0);
    const keydir_entry_t *got = keydir_get(d, "a@x.test");
    assert_non_null(got);
    assert_memory_equal(got->keys[CRYPTO_OPENPGP].armored, "KEY", 3);
    assert_ptr_not_equal(got->keys[CRYPTO_OPENPGP].armored, e.keys[CRYPTO_OPENPGP].armored);
    assert_int_equal(decide_at(got, 1000), DECIDE_ENCRYPT);
    /* a reply older than what the cache knows is dropped */
    assert_int_equal(keydir_put(d, 4, "b@x.test", &e), 0);
    assert_null(keydir_get(d, "b@x.test"));
    /* the version moves: everything goes */
    assert_false(keydir_version(d, 5));
    assert_true(keydir_version(d, 6));
    assert_null(keydir_get(d, "a@x.test"));
    /* many entries: the table starts over rather than fill up */
    char addr[32];
    for (int i = 0; i < 100; i++) {
        snprintf(addr, sizeof addr, "u%d@x.test", i);
        assert_int_equal(keydir_put(d, 6, addr, &e), 0);
        assert_non_null(keydir_get(d, addr));
    }
    keydir_free(d);

    /* expiry is checked at use */
    e.keys[CRYPTO_OPENPGP].expires = 2000;
    assert_int_equal(decide_at(&e, 1999), DECIDE_ENCRYPT);
    assert_int_equal(decide_at(&e, 2000), DECIDE_PLAIN);
    e.policy = ENC_POLICY_REQUIRED;
    assert_int_equal(decide_at(&e, 2000), DECIDE_REFUSE);
    e.policy = ENC_POLICY_NEVER;
    e.keys[CRYPTO_OPENPGP].expires = 0;
    assert_int_equal(decide_at(&e, 2000), DECIDE_PLAIN);
    keydir_entry_t none = {.policy = ENC_POLICY_REQUIRED};
    assert_int_equal(decide_at(&none, 0), DECIDE_REFUSE);
    none.policy = ENC_POLICY_OPPORTUNISTIC;
    assert_int_equal(decide_at(&none, 0), DECIDE_PLAIN);
    /* the address's policy over the domain's over the default */
    keydir_entry_t p = {0};
    keydir_policy(&p, "never", "required", ENC_POLICY_OPPORTUNISTIC, TRUST_IMPORTED);
    assert_int_equal(p.policy, ENC_POLICY_NEVER);
    assert_int_equal(p.trust, TRUST_IMPORTED);
    keydir_policy(&p, NULL, "required", ENC_POLICY_OPPORTUNISTIC, TRUST_DISCOVERED);
    assert_int_equal(p.policy, ENC_POLICY_REQUIRED);
    keydir_policy(&p, NULL, "bogus", ENC_POLICY_NEVER, TRUST_DISCOVERED);
    assert_int_equal(p.policy, ENC_POLICY_NEVER);
    /* a trust named by the setting that applies, else min_trust: the
     * address's "required" does not take its domain's trust */
    keydir_policy(&p, NULL, "required imported", ENC_POLICY_OPPORTUNISTIC, TRUST_DISCOVERED);
    assert_int_equal(p.policy, ENC_POLICY_REQUIRED);
    assert_int_equal(p.trust, TRUST_IMPORTED);
    keydir_policy(&p, "opportunistic discovered", NULL, ENC_POLICY_NEVER, TRUST_IMPORTED);
    assert_int_equal(p.policy, ENC_POLICY_OPPORTUNISTIC);
    assert_int_equal(p.trust, TRUST_DISCOVERED);
    keydir_policy(&p, "required", "required imported", ENC_POLICY_NEVER, TRUST_DISCOVERED);
    assert_int_equal(p.trust, TRUST_DISCOVERED);
    /* what is not a policy: the next setting applies */
    static const char *const bad[] = {
        "never imported", "required  imported", "required trusted",       "required imported x",
        "required ",      "requiredimported",   "opportunistic-imported", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        enum enc_policy ep;
        int trust;
        assert_int_equal(keydir_parse_policy(bad[i], &ep, &trust), -1);
        keydir_policy(&p, bad[i], "never", ENC_POLICY_REQUIRED, TRUST_DISCOVERED);
        assert_int_equal(p.policy, ENC_POLICY_NEVER);
    }
    /* and so the preference */
    assert_int_equal(keydir_prefer("smime", "openpgp", ENC_PREFER_OPENPGP), CRYPTO_SMIME);
    assert_int_equal(keydir_prefer(NULL, "smime", ENC_PREFER_OPENPGP), CRYPTO_SMIME);
    assert_int_equal(keydir_prefer("bogus", NULL, ENC_PREFER_SMIME), CRYPTO_SMIME);
    assert_int_equal(keydir_prefer(NULL, NULL, ENC_PREFER_OPENPGP), CRYPTO_OPENPGP);
}

/* With a key and a certificate, the preferred one when it is usable, else
 * the other; why names each that was not, by method. */
static void test_keydir_chooses_by_preference(void **state)
{
    (void)state;
    keydir_entry_t e = {
        .policy = ENC_POLICY_REQUIRED,
        .prefer = CRYPTO_SMIME,
        .keys = {[CRYPTO_OPENPGP] = {.fpr = "ABCD", .armored = (char *)"KEY", .armored_len = 3},
                 [CRYPTO_SMIME] = {.fpr = "EF01",
                                   .expires = 2000,
                                   .armored = (char *)"not a certificate",
                                   .armored_len = 17}}};
    enum crypto_method m;
    char why[256];
    /* expired: the OpenPGP key stands in */
    assert_int_equal(keydir_decide(&e, 3000, &m, why, sizeof why), DECIDE_ENCRYPT);
    assert_int_equal(m, CRYPTO_OPENPGP);
    assert_string_equal(why, "smime: expired");
    /* in date, but the certificate's own checks fail (it is none) */
    assert_int_equal(keydir_decide(&e, 1000, &m, why, sizeof why), DECIDE_ENCRYPT);
    assert_int_equal(m, CRYPTO_OPENPGP);
    assert_true(!strncmp(why, "smime: ", 7) && strlen(why) > 7);
    /* the other way round: OpenPGP preferred and usable, the certificate untouched */
    e.prefer = CRYPTO_OPENPGP;
    assert_int_equal(keydir_decide(&e, 3000, &m, why, sizeof why), DECIDE_ENCRYPT);
    assert_int_equal(m, CRYPTO_OPENPGP);
    assert_string_equal(why, "");
    /* neither usable: required refuses, saying why for each */
    e.keys[CRYPTO_OPENPGP].expires = 2500;
    assert_int_equal(keydir_decide(&e, 3000, &m, why, sizeof why), DECIDE_REFUSE);
    assert_string_equal(why, "openpgp: expired; smime: expired");
    e.policy = ENC_POLICY_OPPORTUNISTIC;
    assert_int_equal(keydir_decide(&e, 3000, &m, why, sizeof why), DECIDE_PLAIN);
    /* a certificate alone, expired, under required */
    keydir_entry_t cert = {.policy = ENC_POLICY_REQUIRED,
                           .keys[CRYPTO_SMIME] = e.keys[CRYPTO_SMIME]};
    assert_int_equal(keydir_decide(&cert, 3000, &m, why, sizeof why), DECIDE_REFUSE);
    assert_string_equal(why, "smime: expired");
    /* in date but unreadable: in doubt, so neither clear text nor a refusal,
     * under either policy; a usable other key still serves */
    for (int p = ENC_POLICY_OPPORTUNISTIC; p <= ENC_POLICY_REQUIRED; p++) {
        cert.policy = (enum enc_policy)p;
        assert_int_equal(keydir_decide(&cert, 1000, &m, why, sizeof why), DECIDE_UNKNOWN);
        assert_string_equal(why, "smime: the stored certificate cannot be read");
    }
    e.keys[CRYPTO_OPENPGP].expires = 0;
    e.prefer = CRYPTO_SMIME;
    assert_int_equal(keydir_decide(&e, 1000, &m, why, sizeof why), DECIDE_ENCRYPT);
    assert_int_equal(m, CRYPTO_OPENPGP);
    /* a fingerprint without its data: in doubt too, never clear text */
    keydir_entry_t bare = {.policy = ENC_POLICY_OPPORTUNISTIC,
                           .keys[CRYPTO_OPENPGP] = {.fpr = "AB"}};
    assert_int_equal(keydir_decide(&bare, 1000, &m, why, sizeof why), DECIDE_UNKNOWN);
    assert_string_equal(why, "openpgp: no data");
}

/* Runs the gateway over msg for two keyless recipients: it only seals, one
 * variant for both, which must open to want. */
static void check_clear_copy(const char *msg, const char *want)
{
    char err[256];
    seal_keyring_t *k = seal_keyring_load(KEY_A, NULL, err, sizeof err);
    gateway_rcpt_t rcpts[2] = {{.addr = "a@x.test"}, {.addr = "b@x.test"}};
    gateway_job_t job = {
        .mid = "m", .msg = msg, .len = strlen(msg), .rcpts = rcpts, .n_rcpts = 2, .seal = k};
    assert_int_equal(gateway_run(&job), 0);
    assert_int_equal(job.outcome, GATEWAY_PLAIN);
    assert_int_equal(job.n_variants, 1);
    assert_int_equal(rcpts[0].variant, 0);
    assert_int_equal(rcpts[1].variant, 0);
    buf_t plain;
    buf_init(&plain);
    assert_int_equal(
        seal_open(k, "m:0", job.variants[0].data, job.variants[0].len, &plain, err, sizeof err), 0);
    assert_int_equal(plain.len, strlen(want));
    assert_memory_equal(plain.data, want, strlen(want));
    buf_free(&plain);
    gateway_job_release(&job);
    seal_keyring_free(k);
}

/* Without any key, the gateway only seals: one variant, the original. */
static void test_gateway_without_keys_seals_the_original(void **state)
{
    (void)state;
    const char msg[] = "To: a@x.test\r\nSubject: s\r\n\r\nbody\r\n";
    check_clear_copy(msg, msg);
}

/* The clear copy keeps no Bcc: it would name the blind recipients to all. */
static void test_gateway_clear_copy_has_no_bcc(void **state)
{
    (void)state;
    check_clear_copy("To: a@x.test\r\nBcc: b@x.test,\r\n c@x.test\r\nSubject: s\r\n\r\nbody\r\n",
                     "To: a@x.test\r\nSubject: s\r\n\r\nbody\r\n");
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_and_verify),
        cmocka_unit_test(test_malformed_and_dummy_hashes_never_match),
        cmocka_unit_test(test_cram_md5_rfc2195_example),
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_pgpmime_inner),
        cmocka_unit_test(test_pgpmime_inner_content_type),
        cmocka_unit_test(test_pgpmime_no_header),
        cmocka_unit_test(test_pgpmime_outer),
        cmocka_unit_test(test_pgpmime_outer_subject),
        cmocka_unit_test(test_pgpmime_outer_keeps_what_mail_software_reads),
        cmocka_unit_test(test_pgpmime_legacy_display),
        cmocka_unit_test(test_pgpmime_without_blind),
        cmocka_unit_test(test_pgpmime_is_encrypted),
        cmocka_unit_test(test_signature_issuer_bounds),
        cmocka_unit_test(test_seal_round_trip_and_binding),
        cmocka_unit_test(test_seal_rotation_and_unknown_keys),
        cmocka_unit_test(test_seal_mac),
        cmocka_unit_test(test_seal_keyring_errors),
        cmocka_unit_test(test_key_addresses_with_controls_are_not_taken),
        cmocka_unit_test(test_rnp_replaced_key_is_not_used_again),
        cmocka_unit_test(test_gpgme_keeps_the_keys_of_the_job),
        cmocka_unit_test(test_addr_canon),
        cmocka_unit_test(test_keydir_versions_and_decisions),
        cmocka_unit_test(test_keydir_item_tags),
        cmocka_unit_test(test_keydir_index),
        cmocka_unit_test(test_keydir_chooses_by_preference),
        cmocka_unit_test(test_gateway_without_keys_seals_the_original),
        cmocka_unit_test(test_gateway_clear_copy_has_no_bcc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
