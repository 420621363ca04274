/* coordinator/commands.c: the subcommand table. */
#include "coordinator/commands.h"

#include <stddef.h>

const e8q_command e8q_commands[] = {
    {"generate", cmd_generate, "greedy text generation with a model (KV-cached CPU forward pass)"},
    {"eval", cmd_eval, "perplexity of a model on a text (per line or in windows), split across ranks"},
    {"demo", cmd_demo, "write a small random demo model (Llama architecture, HF format) and demo texts"},
    {NULL, NULL, NULL},
};
