/* sealpost ingress: an SMTP ingress node. */
#include "cmd/cmd.h"

int cmd_ingress(int argc, char **argv)
{
    config_t cfg;
    cmd_load_config(argc, argv, "usage: sealpost ingress [-c FILE]\n", &cfg);
    return cmd_serve(&cfg, (serve_options_t){.ingress = true});
}
