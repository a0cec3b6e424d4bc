/* The listeners: accept connections, each with its port's rules, and hand
 * them to SMTP sessions; the certificate shared by all of them; the
 * ingress's start and its stop, which waits until nothing refers to it. */
#include "ingress/auth.h"
#include "ingress/encrypt.h"
#include "ingress/session.h"
#include "ingress/smtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    ingress_t *ingress = l->ingress;
    if (status < 0) {
        log_warn("event=accept_failed error=\"%s\"", uv_strerror(status));
        return;
    }
    if (!smtp_accept(ingress, server, l->kind))
        log_warn("event=accept_failed error=\"no connection, or out of memory\"");
}

int ingress_open_fd(ingress_t *ingress, int fd, bool submission, const struct sockaddr *peer)
{
    enum listener_kind kind = submission ? LISTENER_SUBMISSION : LISTENER_RELAY;
    return smtp_open_fd(ingress, fd, kind, peer) ? 0 : -1;
}

/* [ingress] postmaster, or postmaster@ the first relay domain. */
static int postmaster_address(const config_t *cfg, char out[PROTO_PATH_MAX + 1], char *err,
                              size_t errlen)
{
    char text[PROTO_PATH_MAX + 300];
    out[0] = 0;
    if (cfg->ingress.postmaster[0])
        snprintf(text, sizeof text, "<%s>", cfg->ingress.postmaster);
    else if (cfg->ingress.n_relay_domains)
        snprintf(text, sizeof text, "<postmaster@%s>", cfg->ingress.relay_domains[0]);
    else
        return 0; /* <Postmaster> is refused: there is nowhere to send it */
    proto_path_t path;
    if (proto_path_parse(text, strlen(text), PROTO_FORWARD_PATH, &path) != PROTO_OK ||
        path.postmaster || path.utf8) {
        snprintf(err, errlen, "[ingress] postmaster: '%s' is not an address",
                 cfg->ingress.postmaster);
        return -1;
    }
    memcpy(out, path.addr, sizeof path.addr);
    return 0;
}

/* A certificate and key make STARTTLS available; one without the other is
 * a mistake worth stopping for. */
static int load_tls(const config_t *cfg, SSL_CTX **out, char *err, size_t errlen)
{
    const char *cert = cfg->ingress.tls_cert, *key = cfg->ingress.tls_key;
    *out = NULL;
    if (!cert[0] && !key[0]) return 0;
    if (!cert[0] || !key[0]) {
        snprintf(err, errlen, "[ingress] tls_cert and tls_key go together");
        return -1;
    }
    *out = tls_server_context(cert, key, cfg->ingress.tls_ciphers, err, errlen);
    return *out ? 0 : -1;
}

void ingress_reload(ingress_t *ingress)
{
    char err[600];
    if (ingress->encrypt) encrypt_reload(ingress->encrypt);
    SSL_CTX *fresh;
    if (load_tls(ingress->cfg, &fresh, err, sizeof err) < 0) {
        log_error("event=tls_reload_failed error=\"%s\"", err);
        return;
    }
    /* Open sessions hold their own reference to the old context. */
    SSL_CTX_free(ingress->tls_ctx);
    ingress->tls_ctx = fresh;
    log_info("event=tls_reloaded cert=%s", ingress->cfg->ingress.tls_cert);
}

bool ingress_ready(const ingress_t *ingress, const char **why)
{
    *why = NULL;
    return !ingress->encrypt || encrypt_ready(ingress->encrypt, why);
}

/* Frees a stopping ingress once nothing refers to it any more: sessions,
 * listeners and the gateway's timer all call here when they go. */
static void maybe_stopped(ingress_t *ingress)
{
    if (!ingress->stopping || ingress->n_sessions || ingress->listeners_open ||
        (ingress->encrypt && encrypt_busy(ingress->encrypt)))
        return;
    void (*done)(void *) = ingress->on_stopped;
    void *arg = ingress->on_stopped_arg;
    SSL_CTX_free(ingress->tls_ctx);
    encrypt_free(ingress->encrypt);
    free(ingress);
    if (done) done(arg);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    l->ingress->listeners_open--;
    maybe_stopped(l->ingress);
}

static void close_listeners(ingress_t *ingress)
{
    for (int k = 0; k < LISTENER_KINDS; k++)
        if (ingress->listeners[k].ingress &&
            !uv_is_closing((uv_handle_t *)&ingress->listeners[k].tcp))
            uv_close((uv_handle_t *)&ingress->listeners[k].tcp, on_listener_closed);
}

/* Opens the listener of one kind when its address is set. */
static int open_listener(ingress_t *ingress, enum listener_kind kind, const net_hostport_t *hp,
                         char *err, size_t errlen)
{
    if (!hp->host[0]) return 0;
    if (kind != LISTENER_RELAY && !ingress->tls_ctx) {
        snprintf(err, errlen,
                 "[ingress] %s needs tls_cert and tls_key: logins travel only "
                 "under TLS",
                 ingress_listener_name(kind));
        return -1;
    }
    struct listener *l = &ingress->listeners[kind];
    uv_tcp_init(ingress->loop, &l->tcp);
    l->tcp.data = l;
    l->ingress = ingress;
    l->kind = kind;
    ingress->listeners_open++;
    char why[400];
    if (net_listen(&l->tcp, hp, 511, on_connection, why, sizeof why) < 0) {
        snprintf(err, errlen, "[ingress] %s %s", ingress_listener_name(kind), why);
        return -1;
    }
    log_info("event=listening kind=%s listen=%s:%u starttls=%s", ingress_listener_name(kind),
             hp->host, hp->port, ingress->tls_ctx ? "yes" : "no");
    return 0;
}

ingress_t *ingress_start(uv_loop_t *loop, const config_t *cfg, queue_t *queue,
                         const seal_keyring_t *seal, char *err, size_t errlen)
{
    ingress_t *ingress = calloc(1, sizeof *ingress);
    if (!ingress) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ingress->loop = loop;
    ingress->cfg = cfg;
    ingress->queue = queue;
    ingress->seal = seal;
    ingress->check_stopped = maybe_stopped;
    ingress_register_metrics(&ingress->metrics);
    if (postmaster_address(cfg, ingress->postmaster, err, errlen) < 0 ||
        auth_check_config(cfg, err, errlen) < 0 ||
        load_tls(cfg, &ingress->tls_ctx, err, errlen) < 0) {
        SSL_CTX_free(ingress->tls_ctx);
        free(ingress);
        return NULL;
    }
    password_dummy_hash(); /* made once here, not by two worker threads at once */
    const net_hostport_t *addrs[LISTENER_KINDS] = {
        &cfg->ingress.listen, &cfg->ingress.submission_listen, &cfg->ingress.smtps_listen};
    for (int k = 0; k < LISTENER_KINDS; k++) {
        if (open_listener(ingress, (enum listener_kind)k, addrs[k], err, errlen) < 0) {
            ingress->stopping = true;
            if (ingress->listeners_open)
                close_listeners(ingress); /* the last one closed frees it */
            else
                maybe_stopped(ingress);
            return NULL;
        }
    }
    if (!ingress->listeners_open) {
        snprintf(err, errlen,
                 "[ingress] no listener: set listen, submission_listen or smtps_listen");
        free(ingress);
        return NULL;
    }
    /* The loop has not run yet: no session can have started. */
    if (!(ingress->encrypt = encrypt_start(ingress, err, errlen))) {
        ingress->stopping = true;
        close_listeners(ingress); /* the last one closed frees it */
        return NULL;
    }
    return ingress;
}

void ingress_stop(ingress_t *ingress, void (*done)(void *arg), void *arg)
{
    ingress->stopping = true;
    ingress->on_stopped = done;
    ingress->on_stopped_arg = arg;
    close_listeners(ingress);
    encrypt_stop(ingress->encrypt);
    session_shutdown_all(ingress);
}
