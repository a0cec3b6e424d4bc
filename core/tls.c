/* TLS contexts for the SMTP server and client, and the self-signed
 * certificate of a first start. The connections themselves are the
 * stream's (stream.c). */
#include "core/tls.h"

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

SSL_CTX *tls_redis_context(const char *ca_file, const char *cert_file, const char *key_file,
                           char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    int ok = 1;
    if (ca_file && *ca_file) {
        if ((ok = SSL_CTX_load_verify_locations(ctx, ca_file, NULL)) != 1)
            openssl_error("cannot load CA file", ca_file, err, errlen);
    } else {
        SSL_CTX_set_default_verify_paths(ctx);
    }
    if (ok == 1 && cert_file && *cert_file) {
        if ((ok = SSL_CTX_use_certificate_chain_file(ctx, cert_file)) != 1)
            openssl_error("cannot load certificate", cert_file, err, errlen);
        else if ((ok = SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM)) != 1)
            openssl_error("cannot load key", key_file, err, errlen);
        else if ((ok = SSL_CTX_check_private_key(ctx)) != 1)
            openssl_error("key does not match certificate", cert_file, err, errlen);
    }
    if (ok != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
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
