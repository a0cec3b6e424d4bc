/* TLS with OpenSSL memory BIOs. The read BIO is fed what came from the
 * socket, the write BIO collects what must go to it; SSL_* calls then never
 * block and never see a file descriptor, which is what an event loop needs. */
#include "core/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    enum tls_state state;
    bool peer_closed; /* close_notify received */
    buf_t queued;     /* plaintext sent before the handshake finished */
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

static void openssl_error(const char *what, const char *path, char *err, size_t errlen)
{
    char reason[200] = "";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    snprintf(err, errlen, "TLS: %s '%s'%s%s", what, path, reason[0] ? ": " : "", reason);
}

SSL_CTX *tls_server_context(const char *cert_file, const char *key_file, const char *ciphers,
                            char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* No renegotiation (a client-driven CPU sink), the server's preference. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        openssl_error("bad cipher list", ciphers, err, errlen);
    } else if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        openssl_error("cannot load the certificate", cert_file, err, errlen);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        openssl_error("cannot load the key", key_file, err, errlen);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        openssl_error("the key does not match the certificate", key_file, err, errlen);
    } else {
        return ctx;
    }
    SSL_CTX_free(ctx);
    return NULL;
}

static int write_pem(const char *path, int mode, EVP_PKEY *key, X509 *cert)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return -1;
    }
    int ok =
        key ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, cert);
    return fclose(f) == 0 && ok == 1 ? 0 : -1;
}

int tls_make_self_signed(const char *cert_file, const char *key_file, const char *host, char *err,
                         size_t errlen)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", host);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    int rc = -1;
    if (key && cert && name && ext && RAND_bytes(serial, sizeof serial) == 1 &&
        (bn = BN_bin2bn(serial, sizeof serial, NULL)) &&
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) && X509_set_version(cert, 2) == 1 &&
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)host, -1, -1,
                                   0) == 1 &&
        X509_set_subject_name(cert, name) == 1 && X509_set_issuer_name(cert, name) == 1 &&
        X509_gmtime_adj(X509_getm_notBefore(cert), 0) &&
        X509_gmtime_adj(X509_getm_notAfter(cert), 10L * 365 * 24 * 3600) &&
        X509_set_pubkey(cert, key) == 1 && X509_add_ext(cert, ext, -1) == 1 &&
        X509_sign(cert, key, EVP_sha256()) > 0) {
        if (write_pem(key_file, 0600, key, NULL) < 0 || write_pem(cert_file, 0644, NULL, cert) < 0)
            snprintf(err, errlen, "TLS: cannot write '%s' or '%s'", key_file, cert_file);
        else
            rc = 0;
    } else {
        openssl_error("cannot make a self-signed certificate for", host, err, errlen);
    }
    BN_free(bn);
    X509_EXTENSION_free(ext);
    X509_NAME_free(name);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

static tls_conn_t *tls_new(SSL_CTX *ctx)
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
    buf_init(&t->queued);
    return t;
}

tls_conn_t *tls_server_new(SSL_CTX *ctx)
{
    tls_conn_t *t = tls_new(ctx);
    if (t) SSL_set_accept_state(t->ssl);
    return t;
}

tls_conn_t *tls_client_new(SSL_CTX *ctx, const char *host, bool verify)
{
    tls_conn_t *t = tls_new(ctx);
    if (!t) return NULL;
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
    /* Straight into the caller's buffer: no copy, and no plaintext (a
     * password, say) left behind on the stack. */
    while (t->state == TLS_OPEN && plain) {
        if (buf_reserve(plain, 16384) < 0) return failed(t, SSL_ERROR_SSL);
        int n = SSL_read(t->ssl, plain->data + plain->len, 16384);
        if (n > 0) {
            plain->len += (size_t)n;
            continue;
        }
        int e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_ZERO_RETURN) t->peer_closed = true;
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

bool tls_peer_closed(const tls_conn_t *t)
{
    return t->peer_closed;
}

const char *tls_error(const tls_conn_t *t)
{
    return t->error[0] ? t->error : "no error";
}
