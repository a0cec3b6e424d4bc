/* TLS with OpenSSL memory BIOs. The read BIO is fed what came from the
 * socket, the write BIO collects what must go to it; SSL_* calls then never
 * block and never see a file descriptor, which is what an event loop needs. */
#include "core/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    enum tls_state state;
    buf_t queued; /* plaintext sent before the handshake finished */
    char error[256];
};

SSL_CTX *tls_client_context(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_default_verify_paths(ctx);
    if (ca_file && *ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        snprintf(err, errlen, "TLS: cannot load CA file '%s'", ca_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

tls_conn_t *tls_client_new(SSL_CTX *ctx, const char *host, bool verify)
{
    tls_conn_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_connect_state(t->ssl);
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(t->ssl, host); /* SNI takes names only */
    if (verify) {
        SSL_set_verify(t->ssl, SSL_VERIFY_PEER, NULL);
        X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
        if (is_ip)
            X509_VERIFY_PARAM_set1_ip_asc(param, host);
        else
            SSL_set1_host(t->ssl, host);
    } else {
        SSL_set_verify(t->ssl, SSL_VERIFY_NONE, NULL);
    }
    buf_init(&t->queued);
    return t;
}

void tls_free(tls_conn_t *t)
{
    if (!t) return;
    SSL_free(t->ssl);
    buf_free(&t->queued);
    free(t);
}

static enum tls_state failed(tls_conn_t *t, int ssl_error)
{
    long verify = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_get_error();
    char reason[200] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (verify != X509_V_OK)
        snprintf(t->error, sizeof t->error, "certificate verify failed: %s",
                 X509_verify_cert_error_string(verify));
    else
        snprintf(t->error, sizeof t->error, "TLS error %d%s%s", ssl_error, reason[0] ? ": " : "",
                 reason);
    t->state = TLS_FAILED;
    return t->state;
}

/* Moves the connection on as far as the input allows. */
static enum tls_state advance(tls_conn_t *t, buf_t *plain)
{
    if (t->state == TLS_HANDSHAKING) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return t->state;
            return failed(t, e);
        }
        t->state = TLS_OPEN;
        if (t->queued.len && SSL_write(t->ssl, t->queued.data, (int)t->queued.len) <= 0)
            return failed(t, SSL_ERROR_SSL);
        buf_free(&t->queued);
    }
    char chunk[16384];
    while (t->state == TLS_OPEN && plain) {
        int n = SSL_read(t->ssl, chunk, sizeof chunk);
        if (n > 0) {
            if (buf_append(plain, chunk, (size_t)n) < 0) return failed(t, SSL_ERROR_SSL);
            continue;
        }
        int e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN) break;
        return failed(t, e);
    }
    return t->state;
}

enum tls_state tls_start(tls_conn_t *t)
{
    return advance(t, NULL);
}

enum tls_state tls_receive(tls_conn_t *t, const char *data, size_t len, buf_t *plain)
{
    if (t->state == TLS_FAILED) return t->state;
    if (len && BIO_write(t->rbio, data, (int)len) != (int)len) return failed(t, SSL_ERROR_SSL);
    return advance(t, plain);
}

int tls_send(tls_conn_t *t, const char *data, size_t len)
{
    if (t->state == TLS_FAILED) return -1;
    if (t->state == TLS_HANDSHAKING) return buf_append(&t->queued, data, len);
    while (len > 0) { /* a memory BIO takes everything: no partial writes to resume */
        int chunk = len > (1U << 30) ? 1 << 30 : (int)len;
        if (SSL_write(t->ssl, data, chunk) != chunk) return -1;
        data += chunk;
        len -= (size_t)chunk;
    }
    return 0;
}

int tls_take_output(tls_conn_t *t, buf_t *out)
{
    size_t pending = BIO_ctrl_pending(t->wbio);
    if (pending == 0) return 0;
    if (buf_reserve(out, pending) < 0) return -1;
    int n = BIO_read(t->wbio, out->data + out->len, (int)pending);
    if (n > 0) out->len += (size_t)n;
    return 0;
}

void tls_describe(const tls_conn_t *t, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s %s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
}

const char *tls_error(const tls_conn_t *t)
{
    return t->error[0] ? t->error : "no error";
}
