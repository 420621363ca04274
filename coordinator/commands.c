/* coordinator/commands.c: the subcommand table. */
#include "coordinator/commands.h"

#include <stddef.h>

const e8q_command e8q_commands[] = {
    {"quantize", cmd_quantize, "quantize a model into an .e8q artifact (resumable, any number of MPI ranks)"},
    {"plan", cmd_plan, "print the layer schedule and peak memory per rank of a model"},
    {"inspect", cmd_inspect, "print an artifact's manifest; --verify checks every member's hash"},
    {"generate", cmd_generate, "greedy text generation with a model (KV-cached CPU forward pass)"},
    {"eval", cmd_eval, "perplexity of a model on a text (per line or in windows), split across ranks"},
    {"demo", cmd_demo, "write a small random demo model (Llama architecture, HF format) and demo texts"},
    {NULL, NULL, NULL},
};
