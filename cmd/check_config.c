/* sealpost check-config: prints the effective configuration, or the error.
 * Files the configuration names and the nodes would load at start (the
 * S/MIME CA and CRL files) are loaded here too, so a bad one shows now. */
#include "cmd/cmd.h"
#include "crypto/crypto.h"

#include <stdio.h>

int cmd_check_config(int argc, char **argv)
{
    config_t cfg;
    buf_t out;
    char err[600];
    cmd_load_config(argc, argv, "usage: sealpost check-config [-c FILE]\n", &cfg);
    if (keydir_smime_configure(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: configuration error: %s\n", err);
        return 2;
    }
    buf_init(&out);
    config_print(&cfg, &out);
    fwrite(out.data, 1, out.len, stdout);
    buf_free(&out);
    return 0;
}
