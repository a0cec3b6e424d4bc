/* Private to delivery/: RFC 3464 delivery status notifications: failures
 * (bounces), warnings for mail still being retried, and, for NOTIFY=SUCCESS
 * recipients handed to a peer without DSN, "relayed" notices (RFC 3461
 * §5.2.2). */
#ifndef SEALPOST_DELIVERY_BOUNCE_H
#define SEALPOST_DELIVERY_BOUNCE_H

#include "core/core.h"
#include "queue/queue.h"

typedef struct bounce_rcpt {
    const char *addr;
    const char *params; /* its DSN parameters as queued (ORCPT, NOTIFY), or "" */
    enum bounce_action { BOUNCE_FAILED, BOUNCE_DELAYED, BOUNCE_RELAYED } action;
    const char *status;     /* "5.1.1" */
    const char *diagnostic; /* the remote reply, or our reason */
    bool remote;            /* diagnostic is an SMTP reply from remote_mta */
} bounce_rcpt_t;

typedef struct bounce_report {
    const char *reporting_mta; /* our host name */
    const char *remote_mta;    /* the host that answered, or NULL */
    const char *bounce_id;     /* the new message's id, for its Message-ID */
    const queue_job_t *job;    /* the message reported on */
    const bounce_rcpt_t *rcpts;
    unsigned n_rcpts;
    long long retry_until_ms; /* for delayed recipients: when they will be given up */
} bounce_report_t;

/* Writes the whole notification (headers and body, CRLF line ends): the
 * original's headers, or all of it when it was sent with RET=FULL. */
int bounce_build(const bounce_report_t *report, buf_t *out);
/* The RFC 3463 status in an SMTP reply text ("550 5.1.1 ..."), or a generic
 * one from its class ("5.0.0", "4.0.0", "2.0.0") when the reply has none. */
void bounce_status_of(const char *reply, char out[16]);

#endif
