/* sealpost check-config: prints the effective configuration, or the error. */
#include "cmd/cmd.h"

#include <stdio.h>

int cmd_check_config(int argc, char **argv)
{
    config_t cfg;
    buf_t out;
    cmd_load_config(argc, argv, "usage: sealpost check-config [-c FILE]\n", &cfg);
    buf_init(&out);
    config_print(&cfg, &out);
    fwrite(out.data, 1, out.len, stdout);
    buf_free(&out);
    return 0;
}
