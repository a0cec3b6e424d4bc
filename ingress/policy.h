/* Private to ingress/: who may connect, who is who behind a load balancer,
 * and who may send to whom. Each check decides, counts and logs a refusal,
 * and hands the caller the reply to send. */
#ifndef SEALPOST_INGRESS_POLICY_H
#define SEALPOST_INGRESS_POLICY_H

#include "ingress/internal.h"

#include <sys/socket.h>

#define POLICY_REPLY_MAX 600

/* The client's address as text ("192.0.2.1"), and whether it is in
 * trusted_networks. */
void policy_client(const config_t *cfg, const struct sockaddr *sa, char peer[64], bool *trusted);
/* A connection from a balancer in proxy_networks starts with a PROXY header. */
bool policy_expects_proxy(const config_t *cfg, const struct sockaddr *sa);
/* Reads the PROXY header at the start of in: its length once it is all
 * there (*local for the balancer's own connection, else the real client in
 * *client), 0 while more is needed, -1 when it is not one (counted and
 * logged: such a connection is closed unanswered). */
long policy_proxy_header(ingress_t *ingress, const char *peer, const char *in, size_t len,
                         struct sockaddr_storage *client, bool *local);
/* An HTTP request, or a TLS handshake on a plain port: not SMTP at all. */
bool policy_non_smtp(const char *line, size_t len);
/* Counts and logs such a connection, and gives its 421. */
void policy_refuse_non_smtp(ingress_t *ingress, const char *peer, char *reply, size_t len);
/* Whose connections and logins count together: an IPv4 address, or an
 * IPv6 /64 (one host can have all of its /64, and would otherwise get a
 * fresh count per address). */
void policy_client_key(const char *peer, char out[64]);
/* Enters or leaves stress by the number of admitted sessions (logged once
 * each way, and the gauge set); true when it changed. */
bool policy_stress_update(ingress_t *ingress);
/* The limits in force now, stress or not: seconds a command line (or an
 * AUTH answer, or a TLS handshake) may take, the floor of the content's
 * deadline, and the error replies before a session is dropped. */
unsigned policy_command_timeout(const ingress_t *ingress);
unsigned policy_data_timeout(const ingress_t *ingress);
unsigned policy_max_errors(const ingress_t *ingress);
/* NOOP, RSET, VRFY, HELP and repeated HELO/EHLO allowed before each
 * counts as an error. */
unsigned policy_junk_limit(const ingress_t *ingress);
/* The connection's limits and whether anything could be stored now:
 * REFUSED_NONE, or the refusal and its 421. peer_key is policy_client_key
 * of peer; from_peer counts the open sessions with that key, this one
 * included: trusted networks are limited only under stress, and never by
 * max_connection_rate. */
enum refusal policy_admit(ingress_t *ingress, const char *peer, const char *peer_key, bool trusted,
                          unsigned from_peer, char *reply, size_t len);
/* Submission (RFC 6409 §4.3, RFC 8314): TLS first, then a login, before MAIL. */
enum refusal policy_mail(ingress_t *ingress, enum listener_kind kind, bool secure,
                         bool authenticated, char *reply, size_t len);
/* With sender_login_match, a logged-in session sends only as its login (the
 * null sender aside, for notifications). login is NULL when not logged in. */
enum refusal policy_sender(ingress_t *ingress, const char *peer, const proto_path_t *path,
                           const char *login, char *reply, size_t len);
/* The address a recipient is queued for: itself, or the configured
 * postmaster for the bare "<Postmaster>" (RFC 5321 §4.5.1); NULL when it is
 * refused (no open relay: relay_domains, trusted networks or a login). */
const char *policy_rcpt(ingress_t *ingress, const char *peer, const proto_path_t *path,
                        bool trusted, bool authenticated, char *reply, size_t len);

#endif
