/* Admission, the PROXY protocol, and relay and sender rules: the decisions
 * that say who a client is and what it may do, apart from the SMTP dialogue
 * that asks for them. */
#include "ingress/policy.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

void policy_client(const config_t *cfg, const struct sockaddr *sa, char peer[64], bool *trusted)
{
    net_addr_text(sa, peer, 64);
    *trusted = config_cidr_list_match(&cfg->ingress.trusted_networks, sa);
}

bool policy_expects_proxy(const config_t *cfg, const struct sockaddr *sa)
{
    return config_cidr_list_match(&cfg->ingress.proxy_networks, sa);
}

long policy_proxy_header(ingress_t *ingress, const char *peer, const char *in, size_t len,
                         struct sockaddr_storage *client, bool *local)
{
    proto_proxy_t p;
    long n = proto_proxy_parse(in, len, &p);
    if (n < 0) {
        log_info("event=refused reason=bad_proxy_header client=%s", peer);
        ingress_refused(ingress, REFUSED_BAD_PROXY_HEADER);
    }
    if (n <= 0) return n;
    *local = p.local;
    memset(client, 0, sizeof *client);
    if (p.local) return n;
    if (p.family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)client;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, p.addr, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)client;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, p.addr, 16);
    }
    return n;
}

/* A browser can be made to POST to port 25 with SMTP commands in the body,
 * so such a connection is closed at its first line (as Postfix's
 * smtpd_forbidden_commands does), before anything after it is read. */
bool policy_non_smtp(const char *line, size_t len)
{
    static const char *const http[] = {"GET",     "POST",   "HEAD",  "PUT",  "CONNECT",
                                       "OPTIONS", "DELETE", "PATCH", "TRACE"};
    if (len == 0) return false;
    unsigned char c = (unsigned char)line[0];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return true;
    const char *space = memchr(line, ' ', len);
    size_t vlen = space ? (size_t)(space - line) : len;
    for (size_t i = 0; i < sizeof http / sizeof http[0]; i++)
        if (strlen(http[i]) == vlen && !strncmp(line, http[i], vlen)) return true;
    return false;
}

void policy_refuse_non_smtp(ingress_t *ingress, const char *peer, char *reply, size_t len)
{
    log_info("event=refused reason=non_smtp client=%s", peer);
    ingress_refused(ingress, REFUSED_NON_SMTP);
    snprintf(reply, len, "421 4.7.0 %s Error: not an SMTP command; closing connection",
             ingress->cfg->ingress.hostname);
}

static enum refusal refuse(ingress_t *ingress, enum refusal why, const char *peer)
{
    ingress_refused(ingress, why);
    log_info("event=refused reason=%s client=%s", ingress_refusal_name(why), peer);
    return why;
}

enum refusal policy_admit(ingress_t *ingress, const char *peer, bool trusted, unsigned from_peer,
                          char *reply, size_t len)
{
    const config_t *cfg = ingress->cfg;
    const char *host = cfg->ingress.hostname;
    if (ingress->n_sessions > cfg->ingress.max_connections) {
        snprintf(reply, len, "421 4.7.0 %s Error: too many connections", host);
        return refuse(ingress, REFUSED_MAX_CONNECTIONS, peer);
    }
    if (!trusted && from_peer > cfg->ingress.max_connections_per_ip) {
        snprintf(reply, len, "421 4.7.0 %s Error: too many connections from your address", host);
        return refuse(ingress, REFUSED_MAX_CONNECTIONS_PER_IP, peer);
    }
    if (!queue_ready(ingress->queue)) {
        /* Nothing could be stored: a client that retries elsewhere or later
         * does better than one that sends a message to get 451. */
        snprintf(reply, len,
                 "421 4.3.2 %s Service not available: queue unreachable, try again later", host);
        return refuse(ingress, REFUSED_NOT_READY, peer);
    }
    return REFUSED_NONE;
}

enum refusal policy_mail(ingress_t *ingress, enum listener_kind kind, bool secure,
                         bool authenticated, char *reply, size_t len)
{
    /* A login travels only under TLS (RFC 3207 §4, RFC 4954 §6). */
    if (kind == LISTENER_RELAY || (secure && authenticated)) return REFUSED_NONE;
    snprintf(reply, len, "530 5.7.0 %s",
             secure ? "Authentication required" : "Must issue a STARTTLS command first");
    ingress_refused(ingress, REFUSED_AUTH_REQUIRED);
    return REFUSED_AUTH_REQUIRED;
}

enum refusal policy_sender(ingress_t *ingress, const char *peer, const proto_path_t *path,
                           const char *login, char *reply, size_t len)
{
    if (!login || !ingress->cfg->ingress.sender_login_match || !path->addr[0] ||
        !strcasecmp(path->addr, login))
        return REFUSED_NONE;
    char safe[LOG_SAFE_MAX], user[LOG_SAFE_MAX];
    ingress_refused(ingress, REFUSED_SENDER_LOGIN_MISMATCH);
    log_info("event=refused reason=sender_login_mismatch client=%s login=%s from=<%s>", peer,
             log_addr(login, user), log_addr(path->addr, safe));
    snprintf(reply, len, "553 5.7.1 <%s>: Sender address not owned by user %s", path->addr, login);
    return REFUSED_SENDER_LOGIN_MISMATCH;
}

static bool domain_is_relay(const config_t *cfg, const char *domain)
{
    for (unsigned i = 0; i < cfg->ingress.n_relay_domains; i++)
        if (!strcasecmp(cfg->ingress.relay_domains[i], domain)) return true;
    return false;
}

const char *policy_rcpt(ingress_t *ingress, const char *peer, const proto_path_t *path,
                        bool trusted, bool authenticated, char *reply, size_t len)
{
    if (path->postmaster) {
        if (ingress->postmaster[0]) return ingress->postmaster;
        snprintf(reply, len, "550 5.1.1 <Postmaster>: no postmaster address is configured here");
        ingress_refused(ingress, REFUSED_NO_POSTMASTER);
        return NULL;
    }
    if (trusted || authenticated || domain_is_relay(ingress->cfg, proto_path_domain(path)))
        return path->addr;
    char safe[LOG_SAFE_MAX];
    ingress_refused(ingress, REFUSED_RELAY_DENIED);
    log_info("event=refused reason=relay_denied client=%s rcpt=<%s>", peer,
             log_addr(path->addr, safe));
    snprintf(reply, len, "554 5.7.1 <%s>: Relay access denied", path->addr);
    return NULL;
}
