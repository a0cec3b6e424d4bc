/* sealpost up: the single-node stack in one process, with a private
 * redis-server as a child unless [redis] url points elsewhere. */
#include "cmd/cmd.h"

int cmd_up(int argc, char **argv)
{
    config_t cfg;
    cmd_load_config(argc, argv, "usage: sealpost up [-c FILE]\n", &cfg);
    return cmd_serve(&cfg,
                     (serve_options_t){.ingress = true, .worker = true, .private_redis = true});
}
