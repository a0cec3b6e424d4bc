/* sealpost up: the single-node stack in one process, with a private
 * redis-server as a child unless [redis] url points elsewhere. */
#include "cmd/cmd.h"
#include "core/tls.h"

#include <stdio.h>
#include <unistd.h>

/* Without a certificate of the operator's, the single-node stack makes a
 * self-signed one on first start (as Debian does for Postfix), so STARTTLS
 * works out of the box; an existing pair is kept across starts. */
static int ensure_certificate(config_t *cfg)
{
    if (cfg->ingress.tls_cert[0] || cfg->ingress.tls_key[0]) return 0;
    char cert[sizeof cfg->ingress.tls_cert], key[sizeof cfg->ingress.tls_key], err[600] = "";
    int n = snprintf(cert, sizeof cert, "%s/tls-cert.pem", cfg->up.data_dir);
    int m = snprintf(key, sizeof key, "%s/tls-key.pem", cfg->up.data_dir);
    if (n < 0 || m < 0 || (size_t)n >= sizeof cert || (size_t)m >= sizeof key) {
        log_error("event=start_failed what=tls error=\"[up] data_dir is too long\"");
        return -1;
    }
    if (access(cert, R_OK) != 0 || access(key, R_OK) != 0) {
        if (cmd_mkdir_p(cfg->up.data_dir) < 0)
            snprintf(err, sizeof err, "cannot create '%s'", cfg->up.data_dir);
        else if (tls_make_self_signed(cert, key, cfg->ingress.hostname, err, sizeof err) == 0)
            err[0] = 0;
        if (err[0]) {
            log_error("event=start_failed what=tls error=\"%s\"", err);
            return -1;
        }
        log_info("event=tls_self_signed cert=%s host=%s", cert, cfg->ingress.hostname);
    }
    snprintf(cfg->ingress.tls_cert, sizeof cfg->ingress.tls_cert, "%s", cert);
    snprintf(cfg->ingress.tls_key, sizeof cfg->ingress.tls_key, "%s", key);
    return 0;
}

int cmd_up(int argc, char **argv)
{
    config_t cfg;
    cmd_load_config(argc, argv, "usage: sealpost up [-c FILE]\n", &cfg);
    if (ensure_certificate(&cfg) < 0 || cmd_ensure_seal_key(&cfg) < 0) return 1;
    return cmd_serve(&cfg,
                     (serve_options_t){.ingress = true, .worker = true, .private_redis = true});
}
