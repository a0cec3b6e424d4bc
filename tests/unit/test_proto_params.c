/* Unit tests for proto/'s ESMTP parameter values: xtext, NOTIFY and ORCPT
 * (RFC 3461), the stored parameter list, and what MAIL, RCPT and BDAT take
 * (proto/params.c), each refusal with the exact reply a client sees. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

/* --------------------------------------------------------------------- DSN */

static bool xtext(const char *s)
{
    return proto_xtext_valid(s, strlen(s));
}

static void test_xtext(void **state)
{
    (void)state;
    assert_true(xtext("abc"));
    assert_true(xtext("a+2Bb+3D"));
    assert_true(xtext(""));
    assert_false(xtext("a b"));
    assert_false(xtext("a=b"));
    assert_false(xtext("a+2b")); /* hex must be upper case */
    assert_false(xtext("a+2"));
    assert_false(xtext("a+"));
    assert_false(xtext("caf\xc3\xa9"));
}

static int notify(const char *s)
{
    return proto_dsn_notify(s, strlen(s));
}

static void test_dsn_notify(void **state)
{
    (void)state;
    assert_int_equal(notify("NEVER"), PROTO_NOTIFY_NEVER);
    assert_int_equal(notify("success,Failure"), PROTO_NOTIFY_SUCCESS | PROTO_NOTIFY_FAILURE);
    assert_int_equal(notify("DELAY"), PROTO_NOTIFY_DELAY);
    assert_int_equal(notify("NEVER,FAILURE"), -1);
    assert_int_equal(notify("FAILURE,FAILURE"), -1);
    assert_int_equal(notify("FAILURE,"), -1);
    assert_int_equal(notify(",FAILURE"), -1);
    assert_int_equal(notify(""), -1);
    assert_int_equal(notify("SOMETIMES"), -1);
}

static bool orcpt(const char *s, bool utf8)
{
    return proto_dsn_orcpt_valid(s, strlen(s), utf8);
}

static void test_dsn_orcpt(void **state)
{
    (void)state;
    assert_true(orcpt("rfc822;user@example.test", false));
    assert_true(orcpt("RFC822;a+2Bb@example.test", false));
    assert_false(orcpt("rfc822;", false));
    assert_false(orcpt(";user@example.test", false));
    assert_false(orcpt("user@example.test", false));
    assert_false(orcpt("rfc822;a b@example.test", false));
    assert_false(orcpt("utf-8;j\xc3\xb6rg@example.test", false));
    assert_true(orcpt("utf-8;j\xc3\xb6rg@example.test", true));
    assert_false(orcpt("utf-8;j\xc3(rg@example.test", true));    /* bad continuation */
    assert_false(orcpt("utf-8;j\xc0\xafrg@example.test", true)); /* overlong */
    char big[PROTO_ORCPT_MAX + 2];
    memset(big, 'a', sizeof big - 1);
    memcpy(big, "rfc822;", 7);
    big[sizeof big - 1] = 0;
    assert_false(orcpt(big, false));
    big[sizeof big - 2] = 0;
    assert_true(orcpt(big, false));
}

static void test_param_find(void **state)
{
    (void)state;
    char v[16];
    const char *list = "BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abcdefghijklmnopqrstuvwxyz";
    assert_true(proto_param_find(list, "body", v, sizeof v));
    assert_string_equal(v, "8BITMIME");
    assert_true(proto_param_find(list, "SMTPUTF8", v, sizeof v));
    assert_string_equal(v, "");
    /* too long for v: not cut to fit, as another ENVID would go on */
    assert_false(proto_param_find(list, "ENVID", v, sizeof v));
    char whole[27];
    assert_true(proto_param_find(list, "ENVID", whole, sizeof whole));
    assert_string_equal(whole, "abcdefghijklmnopqrstuvwxyz");
    assert_false(proto_param_find(list, "ENVID", whole, sizeof whole - 1));
    assert_true(proto_param_find(list, "ENVID", NULL, 0)); /* only whether it is there */
    assert_false(proto_param_find(list, "SMTP", v, sizeof v));
    assert_false(proto_param_find(list, "NOTIFY", v, sizeof v));
    assert_false(proto_param_find("", "BODY", v, sizeof v));
}

/* ------------------------------------------------ MAIL and RCPT parameters */

/* What one MAIL or RCPT command's parameters came to. */
typedef struct outcome {
    const char *args;
    bool rcpt;
    int code;
    char reply[128];
    proto_mail_params_t mail;
    char dsn[PROTO_RCPT_PARAMS_MAX];
} outcome_t;

/* args as after "MAIL FROM:" or "RCPT TO:", through the path parser. */
static proto_path_t parsed(const char *args, enum proto_path_kind kind)
{
    proto_path_t path;
    enum proto_status st = proto_path_parse(args, strlen(args), kind, &path);
    if (st != PROTO_OK) fail_msg("'%s' did not parse: %d", args, st);
    return path;
}

static outcome_t mail(const char *args, unsigned long long max_size, bool auth_ok)
{
    outcome_t o = {.args = args};
    proto_path_t path = parsed(args, PROTO_REVERSE_PATH);
    o.code = proto_mail_params(&path, max_size, auth_ok, &o.mail, o.reply, sizeof o.reply);
    return o;
}

static outcome_t rcpt(const char *args, bool smtputf8)
{
    outcome_t o = {.args = args, .rcpt = true};
    proto_path_t path = parsed(args, PROTO_FORWARD_PATH);
    o.code = proto_rcpt_params(&path, smtputf8, o.dsn, o.reply, sizeof o.reply);
    return o;
}

/* The exact reply line, and a code that is the one the line starts with. */
static void expect_refused(outcome_t o, const char *want)
{
    if (o.code != (int)strtol(want, NULL, 10) || strcmp(o.reply, want))
        fail_msg("'%s' gave %d \"%s\", expected \"%s\"", o.args, o.code, o.reply, want);
}

static void expect_accepted(outcome_t o)
{
    if (o.code) fail_msg("'%s' gave %d \"%s\", expected 0", o.args, o.code, o.reply);
}

/* Accepted, with this stored form: MAIL's parameter list or RCPT's DSN. */
static void expect_stored(outcome_t o, const char *want)
{
    expect_accepted(o);
    const char *got = o.rcpt ? o.dsn : o.mail.stored;
    if (strcmp(got, want)) fail_msg("'%s' stored \"%s\", expected \"%s\"", o.args, got, want);
}

static void test_params_unique(void **state)
{
    (void)state;
    char reply[128] = "";
    proto_path_t p = parsed("<a@b.test>", PROTO_REVERSE_PATH);
    assert_int_equal(proto_params_unique(&p, reply, sizeof reply), 0);
    p = parsed("<a@b.test> RET=FULL ENVID=x SIZE=1 SIZES=2 SIZ=3", PROTO_REVERSE_PATH);
    assert_int_equal(proto_params_unique(&p, reply, sizeof reply), 0);

    /* the second occurrence is named, as the client spelled it */
    p = parsed("<a@b.test> RET=FULL SIZE=1 ret=HDRS", PROTO_REVERSE_PATH);
    assert_int_equal(proto_params_unique(&p, reply, sizeof reply), 501);
    assert_string_equal(reply, "501 5.5.4 Duplicate ret parameter");
    p = parsed("<a@b.test> SMTPUTF8 SmtpUtf8", PROTO_REVERSE_PATH);
    assert_int_equal(proto_params_unique(&p, reply, sizeof reply), 501);
    assert_string_equal(reply, "501 5.5.4 Duplicate SmtpUtf8 parameter");
    p = parsed("<r@b.test> NOTIFY=FAILURE NOTIFY=DELAY", PROTO_FORWARD_PATH);
    assert_int_equal(proto_params_unique(&p, reply, sizeof reply), 501);
    assert_string_equal(reply, "501 5.5.4 Duplicate NOTIFY parameter");

    /* MAIL's and RCPT's checks refuse them too, rather than store a list
     * cut short where eight ENVIDs or ORCPTs do not fit */
    char args[1200] = "<a@b.test>";
    for (int i = 0; i < PROTO_MAX_PARAMS; i++)
        snprintf(args + strlen(args), sizeof args - strlen(args), " ENVID=%0*d", PROTO_ENVID_MAX,
                 i);
    expect_refused(mail(args, 100, false), "501 5.5.4 Duplicate ENVID parameter");
    memcpy(args, "<a@b.test> ORCPT=rfc822;", 24);
    for (size_t i = 24; i < 24 + 300; i++)
        args[i] = 'x';
    snprintf(args + 324, sizeof args - 324, " ORCPT=rfc822;%0*d", 300, 1);
    expect_refused(rcpt(args, false), "501 5.5.4 Duplicate ORCPT parameter");

    /* a reply cut to a small buffer keeps its code and stays terminated */
    assert_int_equal(proto_params_unique(&p, reply, 4), 501);
    assert_string_equal(reply, "501");
}

static void test_mail_params_size(void **state)
{
    (void)state;
    outcome_t o = mail("<a@b.test> SIZE=100", 100, false);
    expect_stored(o, ""); /* SIZE is ours to check, not passed on */
    assert_false(o.mail.body_8bit);
    assert_false(o.mail.smtputf8);
    expect_accepted(mail("<a@b.test> SIZE=0", 100, false));
    expect_accepted(mail("<> size=00000000000000000100", 100, false)); /* 20 digits */

    static const char too_big[] = "552 5.3.4 Message size exceeds fixed limit";
    expect_refused(mail("<a@b.test> SIZE=101", 100, false), too_big);
    /* past the range of the number: it saturates, never wraps to a small one */
    expect_refused(mail("<a@b.test> SIZE=18446744073709551616", 100, false), too_big);
    expect_refused(mail("<a@b.test> SIZE=99999999999999999999", ULLONG_MAX - 1, false), too_big);
    expect_accepted(mail("<a@b.test> SIZE=18446744073709551615", ULLONG_MAX, false));

    static const char bad[] = "501 5.5.4 Bad SIZE parameter";
    expect_refused(mail("<a@b.test> SIZE", 100, false), bad);
    expect_refused(mail("<a@b.test> SIZE=abc", 100, false), bad);
    expect_refused(mail("<a@b.test> SIZE=10k", 100, false), bad);
    expect_refused(mail("<a@b.test> SIZE=-1", 100, false), bad);
    expect_refused(mail("<a@b.test> SIZE=+1", 100, false), bad);
    expect_refused(mail("<a@b.test> SIZE=000000000000000000001", 100, false), bad); /* 21 digits */
}

static void test_mail_params_body(void **state)
{
    (void)state;
    outcome_t o = mail("<a@b.test> BODY=7BIT", 100, false);
    expect_stored(o, "");
    assert_false(o.mail.body_8bit);
    expect_accepted(mail("<a@b.test> body=7bit", 100, false));

    o = mail("<a@b.test> BODY=8bitmime", 100, false);
    expect_stored(o, "BODY=8BITMIME");
    assert_true(o.mail.body_8bit);
    assert_false(o.mail.smtputf8);

    static const char bad[] = "501 5.5.4 BODY takes 7BIT or 8BITMIME";
    expect_refused(mail("<a@b.test> BODY=BINARYMIME", 100, false), bad);
    expect_refused(mail("<a@b.test> BODY", 100, false), bad);
    expect_refused(mail("<a@b.test> BODY=8BIT", 100, false), bad);
    expect_refused(mail("<a@b.test> BODY=8BITMIMEX", 100, false), bad);
}

static void test_mail_params_smtputf8(void **state)
{
    (void)state;
    outcome_t o = mail("<j\xc3\xb6rg@b.test> smtputf8", 100, false);
    expect_stored(o, "SMTPUTF8");
    assert_true(o.mail.smtputf8);
    assert_false(o.mail.body_8bit);

    static const char bad[] = "501 5.5.4 SMTPUTF8 takes no value";
    expect_refused(mail("<a@b.test> SMTPUTF8=yes", 100, false), bad);
    expect_refused(mail("<a@b.test> SMTPUTF8=no", 100, false), bad);
}

static void test_mail_params_ret(void **state)
{
    (void)state;
    expect_stored(mail("<a@b.test> RET=FULL", 100, false), "RET=FULL");
    expect_stored(mail("<a@b.test> ret=hdrs", 100, false),
                  "RET=HDRS"); /* passed on in upper case */
    expect_stored(mail("<> RET=Full", 100, false), "RET=FULL");

    static const char bad[] = "501 5.5.4 RET takes FULL or HDRS";
    expect_refused(mail("<a@b.test> RET=ALL", 100, false), bad);
    expect_refused(mail("<a@b.test> RET", 100, false), bad);
    expect_refused(mail("<a@b.test> RET=FULLY", 100, false), bad);
    expect_refused(mail("<a@b.test> RET=HDR", 100, false), bad);
}

static void test_mail_params_envid(void **state)
{
    (void)state;
    /* kept as sent */
    expect_stored(mail("<a@b.test> ENVID=QQ314159+2Bx", 100, false), "ENVID=QQ314159+2Bx");

    /* PROTO_ENVID_MAX octets of xtext, and one more */
    char args[160], want[160];
    snprintf(args, sizeof args, "<a@b.test> ENVID=%0*d", PROTO_ENVID_MAX, 7);
    snprintf(want, sizeof want, "ENVID=%0*d", PROTO_ENVID_MAX, 7);
    expect_stored(mail(args, 100, false), want);
    static const char bad[] = "501 5.5.4 ENVID takes up to 100 octets of xtext";
    snprintf(args, sizeof args, "<a@b.test> ENVID=%0*d", PROTO_ENVID_MAX + 1, 7);
    expect_refused(mail(args, 100, false), bad);

    expect_refused(mail("<a@b.test> ENVID", 100, false), bad);
    expect_refused(mail("<a@b.test> ENVID=a+zz", 100, false), bad);
    expect_refused(mail("<a@b.test> ENVID=a+2b", 100, false), bad);
    expect_refused(mail("<a@b.test> ENVID=a+", 100, false), bad);
    expect_refused(mail("<a@b.test> ENVID=caf\xc3\xa9", 100, false), bad);
}

static void test_mail_params_auth(void **state)
{
    (void)state;
    /* AUTH is offered under TLS only: elsewhere it is like any unknown keyword */
    expect_refused(mail("<a@b.test> AUTH=<>", 100, false), "555 5.5.4 Unsupported parameter AUTH");

    expect_stored(mail("<a@b.test> AUTH=<>", 100, true), ""); /* nobody's word is kept */
    expect_stored(mail("<a@b.test> auth=user+40example.test", 100, true), "");

    static const char bad[] = "501 5.5.4 AUTH takes <> or an xtext mailbox";
    expect_refused(mail("<a@b.test> AUTH", 100, true), bad);
    expect_refused(mail("<a@b.test> AUTH=a+zz", 100, true), bad);
    expect_refused(mail("<a@b.test> AUTH=a+2b", 100, true), bad);
}

static void test_mail_params_unsupported(void **state)
{
    (void)state;
    expect_refused(mail("<a@b.test> FROB=1", 100, false), "555 5.5.4 Unsupported parameter FROB");
    expect_refused(mail("<a@b.test> x-Frob", 100, true), "555 5.5.4 Unsupported parameter x-Frob");
    /* RCPT's parameters are not MAIL's */
    expect_refused(mail("<a@b.test> NOTIFY=NEVER", 100, false),
                   "555 5.5.4 Unsupported parameter NOTIFY");
    expect_refused(mail("<a@b.test> ORCPT=rfc822;a@b.test", 100, false),
                   "555 5.5.4 Unsupported parameter ORCPT");
    /* the first refusal is the one given, after any number of good ones */
    expect_refused(mail("<a@b.test> SIZE=1 BODY=7BIT FROB RET=BAD", 100, false),
                   "555 5.5.4 Unsupported parameter FROB");
    expect_refused(mail("<a@b.test> SIZE=1 BODY=BINARYMIME FROB", 100, false),
                   "501 5.5.4 BODY takes 7BIT or 8BITMIME");
}

/* What a relay passes on: RET and ENVID as they came, then BODY and SMTPUTF8. */
static void test_mail_params_stored(void **state)
{
    (void)state;
    outcome_t o =
        mail("<a@b.test> SMTPUTF8 BODY=8bitmime SIZE=10 RET=hdrs ENVID=q+2Bx AUTH=<>", 100, true);
    expect_stored(o, "RET=HDRS ENVID=q+2Bx BODY=8BITMIME SMTPUTF8");
    assert_true(o.mail.body_8bit);
    assert_true(o.mail.smtputf8);

    /* the longest stored form fits */
    char args[256], want[256];
    snprintf(args, sizeof args, "<a@b.test> BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=%0*d",
             PROTO_ENVID_MAX, 1);
    snprintf(want, sizeof want, "RET=FULL ENVID=%0*d BODY=8BITMIME SMTPUTF8", PROTO_ENVID_MAX, 1);
    expect_stored(mail(args, 100, false), want);

    /* each call starts afresh: nothing stays from the one before */
    proto_mail_params_t mp;
    char reply[128];
    memset(&mp, 0x55, sizeof mp);
    proto_path_t p = parsed("<a@b.test>", PROTO_REVERSE_PATH);
    assert_int_equal(proto_mail_params(&p, 100, false, &mp, reply, sizeof reply), 0);
    assert_false(mp.body_8bit);
    assert_false(mp.smtputf8);
    assert_string_equal(mp.stored, "");
}

static void test_rcpt_params_notify(void **state)
{
    (void)state;
    /* one order and one case, whatever the client sent */
    expect_stored(rcpt("<r@b.test> NOTIFY=delay,Success,FAILURE", false),
                  "NOTIFY=SUCCESS,FAILURE,DELAY");
    expect_stored(rcpt("<r@b.test> notify=failure", false), "NOTIFY=FAILURE");
    expect_stored(rcpt("<r@b.test> NOTIFY=never", false), "NOTIFY=NEVER");

    static const char bad[] = "501 5.5.4 NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY";
    expect_refused(rcpt("<r@b.test> NOTIFY=NEVER,SUCCESS", false), bad);
    expect_refused(rcpt("<r@b.test> NOTIFY=SOMETIMES", false), bad);
    expect_refused(rcpt("<r@b.test> NOTIFY", false), bad);
    expect_refused(rcpt("<r@b.test> NOTIFY=FAILURE,FAILURE", false), bad);
    expect_refused(rcpt("<r@b.test> NOTIFY=FAILURE,", false), bad);
}

static void test_rcpt_params_orcpt(void **state)
{
    (void)state;
    /* kept as sent */
    expect_stored(rcpt("<r@b.test> ORCPT=rfc822;R+2Bx@B.test", false), "ORCPT=rfc822;R+2Bx@B.test");

    static const char bad[] = "501 5.5.4 ORCPT takes addr-type;xtext";
    expect_refused(rcpt("<r@b.test> ORCPT=a@example.test", false), bad);
    expect_refused(rcpt("<r@b.test> ORCPT=rfc822;a+zzb", false), bad);
    expect_refused(rcpt("<r@b.test> ORCPT=rfc822;", false), bad);
    expect_refused(rcpt("<r@b.test> ORCPT", false), bad);

    /* UTF-8 only in a transaction that asked for SMTPUTF8 (RFC 6533) */
    expect_stored(rcpt("<r@b.test> ORCPT=utf-8;j\xc3\xb6rg@b.test", true),
                  "ORCPT=utf-8;j\xc3\xb6rg@b.test");
    expect_refused(rcpt("<r@b.test> ORCPT=utf-8;j\xc3\xb6rg@b.test", false), bad);
    expect_refused(rcpt("<r@b.test> ORCPT=utf-8;j\xc3(rg@b.test", true), bad);
}

static void test_rcpt_params_stored(void **state)
{
    (void)state;
    expect_stored(rcpt("<r@b.test> NOTIFY=Failure,delay ORCPT=rfc822;r@b.test", false),
                  "NOTIFY=FAILURE,DELAY ORCPT=rfc822;r@b.test");

    /* the longest stored form fits: every NOTIFY word and a full-length ORCPT */
    char args[PROTO_ORCPT_MAX + 64], want[PROTO_RCPT_PARAMS_MAX];
    char orcpt_value[PROTO_ORCPT_MAX + 1];
    memset(orcpt_value, 'o', PROTO_ORCPT_MAX);
    memcpy(orcpt_value, "rfc822;", 7);
    orcpt_value[PROTO_ORCPT_MAX] = 0;
    snprintf(args, sizeof args, "<r@b.test> NOTIFY=DELAY,FAILURE,SUCCESS ORCPT=%s", orcpt_value);
    snprintf(want, sizeof want, "NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=%s", orcpt_value);
    expect_stored(rcpt(args, false), want);

    /* no parameters: nothing stored, nothing left from before */
    char dsn[PROTO_RCPT_PARAMS_MAX] = "NOTIFY=NEVER", reply[128];
    proto_path_t p = parsed("<r@b.test>", PROTO_FORWARD_PATH);
    assert_int_equal(proto_rcpt_params(&p, false, dsn, reply, sizeof reply), 0);
    assert_string_equal(dsn, "");
}

static void test_rcpt_params_unsupported(void **state)
{
    (void)state;
    expect_refused(rcpt("<r@b.test> FROB", false), "555 5.5.4 Unsupported parameter FROB");
    /* MAIL's parameters are not RCPT's */
    expect_refused(rcpt("<r@b.test> SIZE=1", false), "555 5.5.4 Unsupported parameter SIZE");
    expect_refused(rcpt("<r@b.test> ret=FULL", true), "555 5.5.4 Unsupported parameter ret");
    expect_refused(rcpt("<r@b.test> NOTIFY=NEVER SMTPUTF8", true),
                   "555 5.5.4 Unsupported parameter SMTPUTF8");
    expect_refused(rcpt("<Postmaster> NOTIFY=BAD FROB", false),
                   "501 5.5.4 NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY");
}

/* -------------------------------------------------------------- BDAT's args */

static bool bdat(const char *args, unsigned long long *size, bool *last)
{
    *size = 12345;
    *last = true;
    return proto_bdat_args(args, strlen(args), size, last);
}

static void test_bdat_args(void **state)
{
    (void)state;
    unsigned long long size;
    bool last;
    assert_true(bdat("100", &size, &last));
    assert_int_equal(size, 100);
    assert_false(last);
    assert_true(bdat("100 LAST", &size, &last));
    assert_int_equal(size, 100);
    assert_true(last);
    assert_true(bdat("0 last", &size, &last)); /* an empty last chunk ends the message */
    assert_int_equal(size, 0);
    assert_true(last);
    assert_true(bdat("7 LaSt", &size, &last));
    assert_int_equal(size, 7);
    assert_true(last);
    assert_true(bdat("00000000000000000042", &size, &last)); /* 20 digits */
    assert_int_equal(size, 42);

    /* the largest number there is, and past it: saturated, never wrapped */
    assert_true(bdat("18446744073709551614", &size, &last));
    assert_true(size == ULLONG_MAX - 1);
    assert_true(bdat("18446744073709551615", &size, &last));
    assert_true(size == ULLONG_MAX);
    assert_true(bdat("18446744073709551616", &size, &last));
    assert_true(size == ULLONG_MAX);
    assert_true(bdat("99999999999999999999 LAST", &size, &last));
    assert_true(size == ULLONG_MAX);
    assert_true(last);

    /* only len octets are read */
    assert_true(proto_bdat_args("100 LASTjunk", 8, &size, &last));
    assert_int_equal(size, 100);
    assert_true(last);
    assert_true(proto_bdat_args("1005", 3, &size, &last));
    assert_int_equal(size, 100);
    assert_false(last);
}

static void test_bdat_args_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",         "LAST",      " 100",
        "100 ",     "100  LAST", "100 LASTX",
        "100 LAS",  "100 FIRST", "100\tLAST",
        "-1",       "+1",        "1x",
        "1 2",      "0x10",      "1 LAST 2",
        "LAST 100", "1e3",       "000000000000000000001", /* 21 digits */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned long long size;
        bool last;
        if (bdat(bad[i], &size, &last)) fail_msg("BDAT '%s' was accepted", bad[i]);
    }
}
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_dsn_notify),
        cmocka_unit_test(test_dsn_orcpt),
        cmocka_unit_test(test_param_find),
        cmocka_unit_test(test_params_unique),
        cmocka_unit_test(test_mail_params_size),
        cmocka_unit_test(test_mail_params_body),
        cmocka_unit_test(test_mail_params_smtputf8),
        cmocka_unit_test(test_mail_params_ret),
        cmocka_unit_test(test_mail_params_envid),
        cmocka_unit_test(test_mail_params_auth),
        cmocka_unit_test(test_mail_params_unsupported),
        cmocka_unit_test(test_mail_params_stored),
        cmocka_unit_test(test_rcpt_params_notify),
        cmocka_unit_test(test_rcpt_params_orcpt),
        cmocka_unit_test(test_rcpt_params_stored),
        cmocka_unit_test(test_rcpt_params_unsupported),
        cmocka_unit_test(test_bdat_args),
        cmocka_unit_test(test_bdat_args_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
