/* coordinator/commands.c: the subcommand table. */
#include "coordinator/commands.h"

#include <stddef.h>

const e8q_command e8q_commands[] = {
    {"plan", cmd_plan, "print the layer schedule and peak memory per rank of a model"},
    {"inspect", cmd_inspect, "print an artifact's manifest; --verify checks every member's hash"},
    {NULL, NULL, NULL},
};
