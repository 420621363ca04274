/* coordinator/commands.c: the subcommand table. */
#include "coordinator/commands.h"

#include <stddef.h>

const e8q_command e8q_commands[] = {
    {"inspect", cmd_inspect, "print an artifact's manifest; --verify checks every member's hash"},
    {NULL, NULL, NULL},
};
