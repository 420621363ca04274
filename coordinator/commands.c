/* coordinator/commands.c: the subcommand table. */
#include "coordinator/commands.h"

#include <stddef.h>

const e8q_command e8q_commands[] = {
    {NULL, NULL, NULL},
};
