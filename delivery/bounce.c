/* Bounces: one multipart/report (RFC 3462/6522) with a human-readable part, a
 * message/delivery-status part (RFC 3464) and the original headers
 * (text/rfc822-headers) or message (message/rfc822), from the null sender to
 * the original sender. */
#include "delivery/bounce.h"

#include "proto/proto.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* Reads 1 to max digits at *p; -1 when there are none or too many. */
static int read_number(const char **p, int max)
{
    int v = 0, n = 0;
    while (**p >= '0' && **p <= '9') {
        if (++n > max) return -1;
        v = v * 10 + (*(*p)++ - '0');
    }
    return n ? v : -1;
}

void bounce_status_of(const char *reply, char out[16])
{
    /* "550 5.1.1 text": class, subject (1-3 digits), detail (1-3 digits),
     * the class matching the reply's (RFC 3463). */
    const char *p = strchr(reply, ' ');
    if (p) {
        p++;
        int class = read_number(&p, 1);
        int subject = *p == '.' ? (p++, read_number(&p, 3)) : -1;
        int detail = *p == '.' ? (p++, read_number(&p, 3)) : -1;
        if (class == reply[0] - '0' && (class == 2 || class == 4 || class == 5) && subject >= 0 &&
            detail >= 0 && (*p == ' ' || *p == 0)) {
            snprintf(out, 16, "%u.%u.%u", (unsigned)class % 10u, (unsigned)subject % 1000u,
                     (unsigned)detail % 1000u);
            return;
        }
    }
    snprintf(out, 16, "%c.0.0", reply[0] == '2' || reply[0] == '4' ? reply[0] : '5');
}

static void rfc5322_date_of(long long ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, outlen, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* The header section of the original: everything before the first empty line. */
static size_t header_length(const char *body, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (!memcmp(body + i, "\r\n\r\n", 4)) return i + 2;
    return len;
}

static const char *const action_names[] = {"failed", "delayed", "relayed"};

/* What the report is about, as said in its Subject: the worst news in it. */
static const char *subject_of(const bounce_report_t *r)
{
    bool failed = false, delayed = false;
    for (unsigned i = 0; i < r->n_rcpts; i++) {
        failed |= r->rcpts[i].action == BOUNCE_FAILED;
        delayed |= r->rcpts[i].action == BOUNCE_DELAYED;
    }
    return failed    ? "Undelivered Mail Returned to Sender"
           : delayed ? "Delayed Mail (still being retried)"
                     : "Successful Mail Relay Report";
}

static void human_part(const bounce_report_t *r, buf_t *out)
{
    static const char *const intro[] = {
        [BOUNCE_FAILED] = "I'm sorry to have to inform you that your message could not\r\n"
                          "be delivered to one or more recipients.\r\n\r\n",
        [BOUNCE_DELAYED] = "Your message could not be delivered yet to these recipients.\r\n"
                           "It will be tried again; you need not send it again.\r\n\r\n",
        [BOUNCE_RELAYED] = "Your message was handed on to the next mail system, which\r\n"
                           "does not report delivery, for these recipients:\r\n\r\n",
    };
    buf_printf(out, "This is the mail system at host %s.\r\n\r\n", r->reporting_mta);
    for (int action = BOUNCE_FAILED; action <= BOUNCE_RELAYED; action++) {
        bool header = false;
        for (unsigned i = 0; i < r->n_rcpts; i++) {
            if ((int)r->rcpts[i].action != action) continue;
            if (!header) buf_printf(out, "%s", intro[action]);
            header = true;
            buf_printf(out, "<%s>: %s\r\n", r->rcpts[i].addr, r->rcpts[i].diagnostic);
        }
        if (header) buf_append(out, "\r\n", 2);
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* RFC 3461 §6.3 and RFC 3464 §2.2.1, §2.3.1: ENVID and ORCPT come back
 * decoded from xtext ("+2B" is "+"). A decoded value may hold any octet;
 * it must stay one printable header line, and a "+00" must not end the C
 * string early (the field would name a shorter envelope id or recipient),
 * so every control octet comes out as '?'. Writes at most outlen - 1 octets. */
static void xtext_decode(const char *in, char *out, size_t outlen)
{
    size_t n = 0;
    for (; *in && n + 1 < outlen; n++) {
        int hi = in[0] == '+' ? hex_value(in[1]) : -1;
        int lo = hi >= 0 ? hex_value(in[2]) : -1;
        unsigned char c = lo >= 0 ? (unsigned char)(hi * 16 + lo) : (unsigned char)*in;
        in += lo >= 0 ? 3 : 1;
        out[n] = c < 32 || c == 127 ? '?' : (char)c;
    }
    out[n] = 0;
}

static void status_part(const bounce_report_t *r, buf_t *out)
{
    char arrival[64], value[PROTO_ORCPT_MAX + 1], decoded[PROTO_ORCPT_MAX + 1];
    rfc5322_date_of(r->job->received_ms, arrival, sizeof arrival);
    if (proto_param_find(r->job->mail_params, "ENVID", value, sizeof value)) {
        xtext_decode(value, decoded, sizeof decoded);
        buf_printf(out, "Original-Envelope-Id: %s\r\n", decoded);
    }
    buf_printf(out, "Reporting-MTA: dns; %s\r\nX-Sealpost-Queue-ID: %s\r\nArrival-Date: %s\r\n",
               r->reporting_mta, r->job->mid, arrival);
    for (unsigned i = 0; i < r->n_rcpts; i++) {
        const bounce_rcpt_t *rc = &r->rcpts[i];
        buf_append(out, "\r\n", 2);
        if (rc->params && proto_param_find(rc->params, "ORCPT", value, sizeof value)) {
            xtext_decode(value, decoded, sizeof decoded);
            buf_printf(out, "Original-Recipient: %s\r\n", decoded);
        }
        buf_printf(out, "Final-Recipient: rfc822; %s\r\nAction: %s\r\nStatus: %s\r\n", rc->addr,
                   action_names[rc->action], rc->status);
        if (rc->action == BOUNCE_DELAYED) { /* RFC 3464 §2.3.9 */
            char until[64];
            rfc5322_date_of(r->retry_until_ms, until, sizeof until);
            buf_printf(out, "Will-Retry-Until: %s\r\n", until);
        }
        if (rc->remote && r->remote_mta) buf_printf(out, "Remote-MTA: dns; %s\r\n", r->remote_mta);
        buf_printf(out, "Diagnostic-Code: %s; %s\r\n", rc->remote ? "smtp" : "x-sealpost",
                   rc->diagnostic);
    }
}

int bounce_build(const bounce_report_t *r, buf_t *out)
{
    char date[64], boundary[64], ret[8];
    /* RFC 3461 §4.3: RET=FULL asks for the message in a failure report; a
     * delay or relay notice carries the headers only. */
    bool any_failure = false;
    for (unsigned i = 0; i < r->n_rcpts; i++)
        any_failure |= r->rcpts[i].action == BOUNCE_FAILED;
    bool full = any_failure && proto_param_find(r->job->mail_params, "RET", ret, sizeof ret) &&
                !strcasecmp(ret, "FULL");
    util_rfc5322_date(date, sizeof date);
    /* Only RFC 2046 bchars, and a random part no message body will contain. */
    snprintf(boundary, sizeof boundary, "=_sealpost_%s", r->bounce_id);
    buf_printf(out,
               "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
               "To: <%s>\r\n"
               "Subject: %s\r\n"
               "Date: %s\r\n"
               "Message-ID: <%s@%s>\r\n"
               "Auto-Submitted: auto-replied\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"%s\"\r\n"
               "\r\n"
               "This is a MIME-encapsulated message.\r\n"
               "\r\n--%s\r\n"
               "Content-Description: Notification\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\n",
               r->reporting_mta, r->job->sender, subject_of(r), date, r->bounce_id,
               r->reporting_mta, boundary, boundary);
    human_part(r, out);
    buf_printf(out,
               "\r\n--%s\r\n"
               "Content-Description: Delivery report\r\n"
               "Content-Type: message/delivery-status\r\n\r\n",
               boundary);
    status_part(r, out);
    /* RFC 6532 §3.7: a message with UTF-8 headers travels as message/global. */
    bool utf8 = proto_param_find(r->job->mail_params, "SMTPUTF8", NULL, 0);
    buf_printf(out, "\r\n--%s\r\nContent-Description: %s\r\nContent-Type: %s\r\n\r\n", boundary,
               full ? "Original Message" : "Original Message Headers",
               full ? (utf8 ? "message/global" : "message/rfc822")
                    : (utf8 ? "message/global-headers" : "text/rfc822-headers"));
    buf_append(out, r->job->body,
               full ? r->job->body_len : header_length(r->job->body, r->job->body_len));
    return buf_printf(out, "\r\n--%s--\r\n", boundary);
}
