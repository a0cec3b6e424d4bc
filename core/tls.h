/* TLS over any byte stream with OpenSSL memory BIOs: the caller moves
 * ciphertext between the socket and this object, so nothing here blocks or
 * touches a file descriptor. Used by the SMTP client (STARTTLS) and the SMTP
 * server (STARTTLS and implicit TLS). Part of core/, declared apart because
 * only the network code needs OpenSSL. */
#ifndef SEALPOST_CORE_TLS_H
#define SEALPOST_CORE_TLS_H

#include "core/core.h"

#include <openssl/ssl.h>
#include <stdbool.h>

typedef struct tls_conn tls_conn_t;

enum tls_state { TLS_HANDSHAKING, TLS_OPEN, TLS_FAILED };

/* A client context: TLS 1.2 or later, the system's trust store plus ca_file
 * (may be NULL or ""). Returns NULL and writes err on failure. */
SSL_CTX *tls_client_context(const char *ca_file, char *err, size_t errlen);

/* A server context: TLS 1.2 or later, the certificate chain and key from
 * PEM files, TLS 1.2 ciphers from the list given (OpenSSL syntax; TLS 1.3
 * keeps its own, all of them sound), the server's cipher order. Returns NULL
 * and writes err on failure (a key that does not match the certificate). */
SSL_CTX *tls_server_context(const char *cert_file, const char *key_file, const char *ciphers,
                            char *err, size_t errlen);
/* Writes a self-signed certificate for host (ECDSA P-256, 10 years, the
 * name as CN and subjectAltName) and its key (mode 0600) to the two paths. */
int tls_make_self_signed(const char *cert_file, const char *key_file, const char *host, char *err,
                         size_t errlen);

/* host is sent as SNI and, with verify set, checked against the certificate. */
tls_conn_t *tls_client_new(SSL_CTX *ctx, const char *host, bool verify);
/* The server end of a connection: waits for the ClientHello. */
tls_conn_t *tls_server_new(SSL_CTX *ctx);
void tls_free(tls_conn_t *t);

/* Ciphertext from the peer in; plaintext that it carried appended to plain.
 * Drives the handshake too. Returns the state afterwards. */
enum tls_state tls_receive(tls_conn_t *t, const char *data, size_t len, buf_t *plain);
/* Plaintext to send; encrypted once the handshake is done. */
int tls_send(tls_conn_t *t, const char *data, size_t len);
/* Ciphertext waiting to go to the peer, moved into out. */
int tls_take_output(tls_conn_t *t, buf_t *out);
/* Starts the handshake (client side: produces the ClientHello). */
enum tls_state tls_start(tls_conn_t *t);

/* After TLS_OPEN: "TLSv1.3 TLS_AES_256_GCM_SHA384", and whether the
 * certificate checked out (always true when verify was not asked for). */
void tls_describe(const tls_conn_t *t, char *out, size_t outlen);
/* The peer ended TLS with close_notify: nothing more will come. */
bool tls_peer_closed(const tls_conn_t *t);
/* Why the handshake or verification failed. */
const char *tls_error(const tls_conn_t *t);

#endif
