/* TLS contexts: the SMTP client's and server's, and a self-signed
 * certificate for a first start. Connections run TLS through the stream
 * (core/stream.h). Part of core/, declared apart because only the network
 * code needs OpenSSL. */
#ifndef SEALPOST_CORE_TLS_H
#define SEALPOST_CORE_TLS_H

#include "core/core.h"

#include <openssl/ssl.h>
#include <stdbool.h>

/* A client context: TLS 1.2 or later, the system's trust store plus ca_file
 * (may be NULL or ""). Returns NULL and writes err on failure. */
SSL_CTX *tls_client_context(const char *ca_file, char *err, size_t errlen);

/* A client context for Redis (rediss://): TLS 1.2 or later, trusting
 * ca_file alone when given (a private CA is not the Web's), else the
 * system's store, with a client certificate when cert_file and key_file
 * are given. Peers are verified by the stream (stream_tls_t.verify). */
SSL_CTX *tls_redis_context(const char *ca_file, const char *cert_file, const char *key_file,
                           char *err, size_t errlen);

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

#endif
