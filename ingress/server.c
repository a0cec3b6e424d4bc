/* The listener: accepts connections and hands each to a session. */
#include "ingress/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_close_discard(uv_handle_t *h)
{
    session_discard_handle((uv_tcp_t *)h);
}

static void on_connection(uv_stream_t *server, int status)
{
    ingress_t *ingress = server->data;
    if (status < 0) {
        log_warn("event=accept_failed error=\"%s\"", uv_strerror(status));
        return;
    }
    uv_tcp_t *tcp = session_alloc_handle();
    if (!tcp) {
        log_error("event=accept_failed error=\"out of memory\"");
        return;
    }
    uv_tcp_init(ingress->loop, tcp);
    if (uv_accept(server, (uv_stream_t *)tcp) < 0) {
        uv_close((uv_handle_t *)tcp, on_close_discard);
        return;
    }
    uv_tcp_nodelay(tcp, 1);
    ingress->n_sessions++;
    session_start(ingress, tcp);
}

static void on_failed_listener_closed(uv_handle_t *h)
{
    free(h->data);
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

void ingress_reload_tls(ingress_t *ingress)
{
    char err[600];
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

ingress_t *ingress_start(uv_loop_t *loop, const config_t *cfg, queue_t *queue, char *err,
                         size_t errlen)
{
    struct sockaddr_storage addr;
    if (net_sockaddr_from(&cfg->ingress.listen, &addr) < 0) {
        snprintf(err, errlen, "[ingress] listen: '%s' is not a numeric address",
                 cfg->ingress.listen.host);
        return NULL;
    }
    ingress_t *ingress = calloc(1, sizeof *ingress);
    if (!ingress) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (postmaster_address(cfg, ingress->postmaster, err, errlen) < 0) {
        free(ingress);
        return NULL;
    }
    if (load_tls(cfg, &ingress->tls_ctx, err, errlen) < 0) {
        free(ingress);
        return NULL;
    }
    ingress->loop = loop;
    ingress->cfg = cfg;
    ingress->queue = queue;
    uv_tcp_init(loop, &ingress->listener);
    ingress->listener.data = ingress;
    int rc = uv_tcp_bind(&ingress->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&ingress->listener, 511, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "listen on %s:%u: %s", cfg->ingress.listen.host,
                 cfg->ingress.listen.port, uv_strerror(rc));
        SSL_CTX_free(ingress->tls_ctx);
        uv_close((uv_handle_t *)&ingress->listener, on_failed_listener_closed);
        return NULL;
    }
    ingress->listening = true;
    log_info("event=listening listen=%s:%u starttls=%s", cfg->ingress.listen.host,
             cfg->ingress.listen.port, ingress->tls_ctx ? "yes" : "no");
    return ingress;
}

static void maybe_stopped(ingress_t *ingress)
{
    if (!ingress->stopping || ingress->n_sessions || ingress->listening) return;
    void (*done)(void *) = ingress->on_stopped;
    void *arg = ingress->on_stopped_arg;
    SSL_CTX_free(ingress->tls_ctx);
    free(ingress);
    if (done) done(arg);
}

static void on_listener_closed(uv_handle_t *h)
{
    ingress_t *ingress = h->data;
    ingress->listening = false;
    maybe_stopped(ingress);
}

void ingress_session_gone(ingress_t *ingress)
{
    ingress->n_sessions--;
    maybe_stopped(ingress);
}

void ingress_stop(ingress_t *ingress, void (*done)(void *arg), void *arg)
{
    ingress->stopping = true;
    ingress->on_stopped = done;
    ingress->on_stopped_arg = arg;
    uv_close((uv_handle_t *)&ingress->listener, on_listener_closed);
    session_shutdown_all(ingress);
}
