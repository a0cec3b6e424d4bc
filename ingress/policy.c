/* Admission, the PROXY protocol, and relay and sender rules: the decisions
 * that say who a client is and what it may do, apart from the SMTP dialogue
 * that asks for them. */
#include "ingress/policy.h"

#include <arpa/inet.h>
#include <sodium.h>
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

void policy_client_key(const char *peer, char out[64])
{
    unsigned char addr[16];
    if (inet_pton(AF_INET6, peer, addr) != 1) {
        snprintf(out, 64, "%s", peer);
        return;
    }
    memset(addr + 8, 0, 8);
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, addr, text, sizeof text);
    snprintf(out, 64, "%s/64", text);
}

/* ---- stress ----
 * Modelled on Postfix's stress mode (smtpd_timeout ${stress?10}{300},
 * smtpd_hard_error_limit ${stress?1}{20}): when most connection slots are
 * taken, a slot is worth more than the patience owed to a slow or erring
 * client. stress_command_timeout (10 s) is still ample for any MTA on a
 * working network, where a command line takes milliseconds, and it cuts a
 * client that holds a slot by trickling within seconds; stress_max_errors
 * (1) gives the slot of a client that errs to one that does not, which can
 * retry (every refusal here is a 4xx or closes with 421). It ends below
 * 90% of the level it began at, so a count hovering at the threshold does
 * not flap in and out. */

bool policy_stress_update(ingress_t *ingress)
{
    const config_t *cfg = ingress->cfg;
    /* In hundredths of max_connections, without a division. */
    unsigned long long open = (unsigned long long)ingress->n_admitted * 100;
    unsigned long long level =
        (unsigned long long)cfg->ingress.stress_threshold * cfg->ingress.max_connections;
    bool stressed = level && (ingress->stressed ? open * 10 >= level * 9 : open >= level);
    if (stressed == ingress->stressed) return false;
    ingress->stressed = stressed;
    metric_set(ingress->metrics.stress, stressed);
    if (stressed)
        log_warn("event=stress_begins connections=%u max_connections=%u command_timeout=%u "
                 "max_errors=%u",
                 ingress->n_admitted, cfg->ingress.max_connections,
                 cfg->ingress.stress_command_timeout, cfg->ingress.stress_max_errors);
    else
        log_info("event=stress_ends connections=%u max_connections=%u", ingress->n_admitted,
                 cfg->ingress.max_connections);
    return true;
}

/* The normal limit, or under stress the stress one where it is lower. */
static unsigned stressed_limit(const ingress_t *ingress, unsigned normal, unsigned stress)
{
    return ingress->stressed && stress < normal ? stress : normal;
}

unsigned policy_command_timeout(const ingress_t *ingress)
{
    const config_t *cfg = ingress->cfg;
    return stressed_limit(ingress, cfg->ingress.command_timeout,
                          cfg->ingress.stress_command_timeout);
}

/* Under stress the content's idle allowance shrinks with the commands'
 * (Postfix's one smtpd_timeout covers both); its rate rule stays. */
unsigned policy_data_timeout(const ingress_t *ingress)
{
    const config_t *cfg = ingress->cfg;
    return stressed_limit(ingress, cfg->ingress.data_timeout, cfg->ingress.stress_command_timeout);
}

unsigned policy_max_errors(const ingress_t *ingress)
{
    const config_t *cfg = ingress->cfg;
    return stressed_limit(ingress, cfg->ingress.max_errors, cfg->ingress.stress_max_errors);
}

/* A command that moves nothing forward holds a slot as well as a trickle
 * does, and a deadline cannot tell it from a client at work: past the
 * limit (Postfix's smtpd_junk_command_limit, 1 under stress) each counts. */
unsigned policy_junk_limit(const ingress_t *ingress)
{
    return stressed_limit(ingress, ingress->cfg->ingress.junk_command_limit, 1);
}

/* ---- admission ---- */

/* The client's bucket: its own slot in its set, else the set's least
 * recently seen one, taken over with a full bucket. The set is chosen by a
 * keyed hash (SipHash, a key per process), so that no one can pick
 * addresses that share a set to push each other out for fresh buckets. */
static struct connection_rate *rate_slot(ingress_t *ingress, const char *key, double full)
{
    static unsigned char secret[crypto_shorthash_KEYBYTES];
    static bool keyed;
    if (!keyed) {
        randombytes_buf(secret, sizeof secret);
        keyed = true;
    }
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const unsigned char *)key, strlen(key), secret);
    uint32_t set_no = ((uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16) % RATE_SETS;
    struct connection_rate *set = &ingress->rates[(size_t)set_no * RATE_WAYS], *oldest = set;
    for (unsigned i = 0; i < RATE_WAYS; i++) {
        if (!strcmp(set[i].client, key)) return &set[i];
        if (set[i].at < oldest->at) oldest = &set[i];
    }
    snprintf(oldest->client, sizeof oldest->client, "%s", key);
    oldest->tokens = full;
    oldest->at = uv_now(ingress->loop);
    return oldest;
}

/* A token bucket per address: max_connection_rate tokens, refilled evenly
 * over a minute, one taken per connection admitted. A sender that opens a
 * connection per message gets a burst of a minute's worth at once; only a
 * sustained rate above the limit is refused. Trusted networks are exempt
 * even under stress: they are our own hosts, which may well open one
 * connection per message, and what they could take from others under
 * stress, slots, max_connections_per_trusted_ip bounds. */
static bool rate_allows(ingress_t *ingress, const char *peer_key, bool trusted)
{
    unsigned per_minute = ingress->cfg->ingress.max_connection_rate;
    if (!per_minute || trusted) return true;
    struct connection_rate *r = rate_slot(ingress, peer_key, per_minute);
    uint64_t now = uv_now(ingress->loop);
    r->tokens += (double)(now - r->at) * per_minute / 60000.0;
    if (r->tokens > per_minute) r->tokens = per_minute;
    r->at = now;
    if (r->tokens < 1) return false;
    r->tokens -= 1;
    return true;
}

/* Outside stress trusted networks have no per-address limit: a relay in
 * front of us may hold many connections. Under stress they have a higher
 * one than strangers, so that one trusted address alone cannot fill the
 * node (the 1,000 trickling connections from loopback). */
static bool too_many_from(const ingress_t *ingress, bool trusted, unsigned from_peer)
{
    const config_t *cfg = ingress->cfg;
    if (!trusted) return from_peer > cfg->ingress.max_connections_per_ip;
    return ingress->stressed && from_peer > cfg->ingress.max_connections_per_trusted_ip;
}

enum refusal policy_admit(ingress_t *ingress, const char *peer, const char *peer_key, bool trusted,
                          unsigned from_peer, char *reply, size_t len)
{
    const config_t *cfg = ingress->cfg;
    const char *host = cfg->ingress.hostname;
    if (ingress->n_admitted >= cfg->ingress.max_connections) {
        snprintf(reply, len, "421 4.7.0 %s Error: too many connections", host);
        return refuse(ingress, REFUSED_MAX_CONNECTIONS, peer);
    }
    if (too_many_from(ingress, trusted, from_peer)) {
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
    /* last: a connection refused for another reason spends no token */
    if (!rate_allows(ingress, peer_key, trusted)) {
        snprintf(reply, len, "421 4.7.0 %s Error: too many connections from your address lately",
                 host);
        return refuse(ingress, REFUSED_CONNECTION_RATE, peer);
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
