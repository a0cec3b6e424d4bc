/* The ingress's counters, gauges and histograms, and the names of the
 * reasons it refuses things for, which are also their series' labels. */
#include "ingress/internal.h"

#include <stdio.h>

static const char *const listener_names[LISTENER_KINDS] = {"listen", "submission_listen",
                                                           "smtps_listen"};

static const char *const refusal_names[REFUSALS] = {
    [REFUSED_RELAY_DENIED] = "relay_denied",
    [REFUSED_MAX_CONNECTIONS] = "max_connections",
    [REFUSED_MAX_CONNECTIONS_PER_IP] = "max_connections_per_ip",
    [REFUSED_CONNECTION_RATE] = "connection_rate",
    [REFUSED_NON_SMTP] = "non_smtp",
    [REFUSED_BAD_PROXY_HEADER] = "bad_proxy_header",
    [REFUSED_BARE_LINE_END] = "bare_line_end",
    [REFUSED_NUL_IN_DATA] = "nul_in_data",
    [REFUSED_LINE_TOO_LONG] = "line_too_long",
    [REFUSED_MESSAGE_TOO_BIG] = "message_too_big",
    [REFUSED_TOO_MANY_RECIPIENTS] = "too_many_recipients",
    [REFUSED_TOO_MANY_ERRORS] = "too_many_errors",
    [REFUSED_TIMEOUT] = "timeout",
    [REFUSED_SENDER_LOGIN_MISMATCH] = "sender_login_mismatch",
    [REFUSED_AUTH_REQUIRED] = "auth_required",
    [REFUSED_SMTPUTF8_REQUIRED] = "smtputf8_required",
    [REFUSED_NO_POSTMASTER] = "no_postmaster",
    [REFUSED_ENCRYPTION_REQUIRED] = "encryption_required",
    [REFUSED_NOT_READY] = "not_ready",
};

static const char *const auth_result_names[AUTH_RESULTS] = {"ok", "failed", "rate_limited",
                                                            "unavailable"};

const char *ingress_refusal_name(enum refusal why)
{
    return why >= 0 && why < REFUSALS ? refusal_names[why] : "none";
}

const char *ingress_listener_name(enum listener_kind kind)
{
    return listener_names[kind];
}

void ingress_refused(ingress_t *ingress, enum refusal why)
{
    if (why >= 0 && why < REFUSALS) metric_add(ingress->metrics.refused[why], 1);
}

void ingress_register_metrics(struct ingress_metrics *m)
{
    metric_counters(m->connections, "sealpost_ingress_connections_total",
                    "SMTP connections accepted, by listener.", "listener", listener_names,
                    LISTENER_KINDS);
    m->open = metric_gauge("sealpost_ingress_connections", "SMTP connections open now.", "");
    m->stress = metric_gauge("sealpost_ingress_stress",
                             "1 while the ingress is under stress (stress_threshold), else 0.", "");
    metric_counters(m->refused, "sealpost_ingress_refused_total",
                    "Commands, messages and connections refused, by reason.", "reason",
                    refusal_names, REFUSALS);
    m->accepted = metric_counter("sealpost_ingress_messages_accepted_total",
                                 "Messages stored in the queue and acknowledged with 250.", "");
    m->received_bytes = metric_counter("sealpost_ingress_received_bytes_total",
                                       "Octets of accepted messages, Received: included.", "");
    m->recipients =
        metric_counter("sealpost_ingress_recipients_total", "Recipients of accepted messages.", "");
    m->enqueue_failed =
        metric_counter("sealpost_ingress_enqueue_failures_total",
                       "Messages answered 451 because Redis did not store them.", "");
    metric_counters(m->auth, "sealpost_ingress_auth_total", "SMTP AUTH attempts, by result.",
                    "result", auth_result_names, AUTH_RESULTS);
    m->tls[0] =
        metric_counter("sealpost_ingress_tls_handshakes_total",
                       "TLS handshakes (STARTTLS or implicit), by result.", "result=\"failed\"");
    static const double seconds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,   0.25,   0.5,   1,    2.5};
    m->enqueue_seconds = metric_histogram("sealpost_ingress_enqueue_duration_seconds",
                                          "Redis round trip of storing a message, answered or not.",
                                          "", seconds, sizeof seconds / sizeof seconds[0]);
    m->tls[1] =
        metric_counter("sealpost_ingress_tls_handshakes_total",
                       "TLS handshakes (STARTTLS or implicit), by result.", "result=\"ok\"");
}
