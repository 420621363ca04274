/* coordinator/cmd_plan.c: `e8q plan --model DIR --ranks N [--gpu-mem G]`: the schedule and the
 * peak memory per rank, from config.json and safetensors headers only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "shard/plan.h"

static void plan_usage(FILE *f) {
  fprintf(f,
          "usage: e8q plan --model DIR [--ranks N] [--gpu-mem G] [--devset S] [--ctx T]\n\n"
          "Prints the quantization schedule of a Hugging Face model directory (layers, linear groups,\n"
          "shapes, padding, Hadamard factors, rows and sequences per rank) and the peak memory of\n"
          "every rank, reading only config.json and the safetensors headers.\n"
          "  --model DIR    Hugging Face directory (config.json, model.safetensors[.index.json])\n"
          "  --ranks N      number of MPI ranks to plan for (default 1)\n"
          "  --gpu-mem G    memory per rank in GiB: marks which ranks fit\n"
          "  --devset S     calibration sequences (default %d)\n"
          "  --ctx T        tokens per sequence (default min(%d, max_position_embeddings))\n",
          E8Q_DEFAULT_DEVSET, E8Q_DEFAULT_CTX);
}

int cmd_plan(int argc, char **argv) {
  const char *model = NULL;
  int ranks = 1, devset = E8Q_DEFAULT_DEVSET, ctx = 0;
  double gpu_mem = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (e8q_rank() == 0) plan_usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      if (e8q_rank() == 0) fprintf(stderr, "e8q plan: option %s needs a value (or is unknown)\n", a);
      return 2;
    }
    const char *v = argv[++i];
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--ranks")) ranks = e8q_opt_int("--ranks", v, 1, 1 << 20);
    else if (!strcmp(a, "--devset")) devset = e8q_opt_int("--devset", v, 1, 1 << 24);
    else if (!strcmp(a, "--ctx")) ctx = e8q_opt_int("--ctx", v, 2, 1 << 24);
    else if (!strcmp(a, "--gpu-mem")) gpu_mem = e8q_opt_double("--gpu-mem", v, 1e-9, 1e9);
    else {
      if (e8q_rank() == 0) {
        fprintf(stderr, "e8q plan: unknown option %s\n", a);
        plan_usage(stderr);
      }
      return 2;
    }
  }
  if (!model) {
    if (e8q_rank() == 0) {
      fprintf(stderr, "e8q plan: --model DIR is required\n");
      plan_usage(stderr);
    }
    return 2;
  }
  if (e8q_rank() != 0) return 0;
  e8q_config cfg;
  e8q_config_load(model, &cfg);
  if (ctx == 0) ctx = e8q_default_ctx(cfg.max_seq_len);
  e8q_plan p;
  e8q_plan_build(&p, model, ranks, devset, ctx);
  printf("plan for %s\n", model);
  e8q_plan_print(&p, gpu_mem, stdout);
  int fits = 1;
  for (int r = 0; r < p.n_ranks; r++)
    if (gpu_mem > 0 && (double)p.mem[r].peak > gpu_mem * (double)(1ull << 30)) fits = 0;
  e8q_plan_free(&p);
  return fits ? 0 : 3;
}
