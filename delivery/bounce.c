/* Bounces: one multipart/report (RFC 3462/6522) with a human-readable part, a
 * message/delivery-status part (RFC 3464) and the original headers
 * (text/rfc822-headers), from the null sender to the original sender. */
#include "delivery/bounce.h"

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
        if (class == reply[0] - '0' && (class == 4 || class == 5) && subject >= 0 && detail >= 0 &&
            (*p == ' ' || *p == 0)) {
            snprintf(out, 16, "%u.%u.%u", (unsigned)class % 10u, (unsigned)subject % 1000u,
                     (unsigned)detail % 1000u);
            return;
        }
    }
    snprintf(out, 16, "%c.0.0", reply[0] == '4' ? '4' : '5');
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

static void human_part(const bounce_report_t *r, buf_t *out)
{
    buf_printf(out,
               "This is the mail system at host %s.\r\n\r\n"
               "I'm sorry to have to inform you that your message could not\r\n"
               "be delivered to one or more recipients.\r\n\r\n",
               r->reporting_mta);
    for (unsigned i = 0; i < r->n_rcpts; i++)
        buf_printf(out, "<%s>: %s\r\n", r->rcpts[i].addr, r->rcpts[i].diagnostic);
}

static void status_part(const bounce_report_t *r, buf_t *out)
{
    char arrival[64];
    rfc5322_date_of(r->job->received_ms, arrival, sizeof arrival);
    buf_printf(out, "Reporting-MTA: dns; %s\r\nX-Sealpost-Queue-ID: %s\r\nArrival-Date: %s\r\n",
               r->reporting_mta, r->job->mid, arrival);
    for (unsigned i = 0; i < r->n_rcpts; i++) {
        const bounce_rcpt_t *rc = &r->rcpts[i];
        buf_printf(out, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n",
                   rc->addr, rc->status);
        if (rc->remote && r->remote_mta) buf_printf(out, "Remote-MTA: dns; %s\r\n", r->remote_mta);
        buf_printf(out, "Diagnostic-Code: %s; %s\r\n", rc->remote ? "smtp" : "x-sealpost",
                   rc->diagnostic);
    }
}

int bounce_build(const bounce_report_t *r, buf_t *out)
{
    char date[64], boundary[64];
    util_rfc5322_date(date, sizeof date);
    /* Only RFC 2046 bchars, and a random part no message body will contain. */
    snprintf(boundary, sizeof boundary, "=_sealpost_%s", r->bounce_id);
    buf_printf(out,
               "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
               "To: <%s>\r\n"
               "Subject: Undelivered Mail Returned to Sender\r\n"
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
               r->reporting_mta, r->job->sender, date, r->bounce_id, r->reporting_mta, boundary,
               boundary);
    human_part(r, out);
    buf_printf(out,
               "\r\n--%s\r\n"
               "Content-Description: Delivery report\r\n"
               "Content-Type: message/delivery-status\r\n\r\n",
               boundary);
    status_part(r, out);
    buf_printf(out,
               "\r\n--%s\r\n"
               "Content-Description: Undelivered Message Headers\r\n"
               "Content-Type: text/rfc822-headers\r\n\r\n",
               boundary);
    buf_append(out, r->job->body, header_length(r->job->body, r->job->body_len));
    return buf_printf(out, "\r\n--%s--\r\n", boundary);
}
