/* sealpost worker: a delivery worker. */
#include "cmd/cmd.h"

int cmd_worker(int argc, char **argv)
{
    config_t cfg;
    cmd_load_config(argc, argv, "usage: sealpost worker [-c FILE]\n", &cfg);
    return cmd_serve(&cfg, (serve_options_t){.worker = true});
}
