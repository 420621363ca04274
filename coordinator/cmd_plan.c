/* coordinator/cmd_plan.c: `e8q plan --model DIR --ranks N [--gpu-mem G]`: the schedule and the
 * peak memory per rank, from config.json and safetensors headers only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "coordinator/artifact_model.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "shard/evalplan.h"
#include "shard/plan.h"

static void plan_usage(FILE *f) {
  fprintf(f,
          "usage: e8q plan --model DIR [--ranks N] [--mem G] [--gpu-mem G] [--devset S] [--ctx T]\n\n"
          "Prints the quantization schedule of a Hugging Face model directory (layers, linear groups,\n"
          "shapes, padding, Hadamard factors, rows and sequences per rank) and the peak memory of\n"
          "every rank, reading only config.json and the safetensors headers.\n"
          "  --model DIR    Hugging Face directory (config.json, model.safetensors[.index.json])\n"
          "  --ranks N      number of MPI ranks to plan for (default 1)\n"
          "  --mem G        host memory per rank in GiB: marks which ranks fit (peak; exit status 3 if not)\n"
          "  --gpu-mem G    GPU memory per rank in GiB: marks which ranks fit with --device cuda (the device\n"
          "                column: block, LDLQ and validation buffers; exit status 3 if not)\n"
          "  --devset S     calibration sequences (default %d)\n"
          "  --ctx T        tokens per sequence (default min(%d, max_position_embeddings))\n\n"
          "usage: e8q plan --artifact OUT.e8q --ranks N [--pipeline P] [--mem G] [--ctx T] [--dense]\n\n"
          "The evaluation of an artifact (e8q eval): every rank's resident bytes (weights it maps or\n"
          "builds, activations for windows of T tokens), from config.json and the safetensors header.\n"
          "  --pipeline P   layer-pipelined: groups of P ranks, each rank holding a range of layers (the\n"
          "                split e8q eval --pipeline P uses); without it, data parallel (whole model per rank)\n"
          "  --mem G        memory per rank in GiB (--gpu-mem is the same): marks which ranks fit;\n"
          "                exit status 3 when one does not\n"
          "  --dense        plan e8q eval --dense (decoded f32 linears)\n"
          "The process itself (MPI, libraries: tens of MiB) is not counted.\n",
          E8Q_DEFAULT_DEVSET, E8Q_DEFAULT_CTX);
}

int cmd_plan(int argc, char **argv) {
  const char *model = NULL, *artifact = NULL;
  int ranks = 1, devset = E8Q_DEFAULT_DEVSET, ctx = 0, pipeline = 0, dense = 0;
  double gpu_mem = 0, host_mem = 0; /* --gpu-mem, --mem (the same for an artifact's evaluation) */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (e8q_opt_help(a, plan_usage)) return 0;
    if (!strcmp(a, "--dense")) {
      dense = 1;
      continue;
    }
    if (i + 1 >= argc) {
      if (e8q_rank() == 0) fprintf(stderr, "e8q plan: option %s needs a value (or is unknown)\n", a);
      return 2;
    }
    const char *v = argv[++i];
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--artifact")) artifact = v;
    else if (!strcmp(a, "--pipeline")) pipeline = e8q_opt_int("--pipeline", v, 1, 1 << 20);
    else if (!strcmp(a, "--mem")) host_mem = e8q_opt_double("--mem", v, 1e-9, 1e9);
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
  if (artifact) {
    E8Q_CHECK(!model, "plan: give --model DIR (quantization) or --artifact OUT.e8q (evaluation), not both");
    if (e8q_rank() != 0) return 0;
    e8q_config cfg;
    e8q_eval_bytes eb;
    e8q_artifact_eval_bytes(artifact, !dense, &cfg, &eb);
    if (ctx == 0) ctx = e8q_default_ctx(cfg.max_seq_len);
    e8q_eval_plan ep, dp;
    e8q_eval_plan_build(&ep, &cfg, &eb, ranks, pipeline, ctx);
    printf("evaluation plan for %s (%d layers, dim %d, vocab %d%s)\n", artifact, cfg.n_layers, cfg.dim,
           cfg.vocab_size, cfg.tied ? ", tied head" : "");
    int bad = e8q_eval_plan_print(&ep, host_mem > 0 ? host_mem : gpu_mem, stdout);
    if (pipeline) { /* the data-parallel rank, for comparison */
      e8q_eval_plan_build(&dp, &cfg, &eb, 1, 0, ctx);
      printf("data parallel, for comparison: %.1f MiB per rank\n", (double)dp.stage[0].total / (1 << 20));
      e8q_eval_plan_free(&dp);
    }
    e8q_eval_plan_free(&ep);
    e8q_eval_bytes_free(&eb);
    return bad ? 3 : 0;
  }
  if (!model) {
    if (e8q_rank() == 0) {
      fprintf(stderr, "e8q plan: --model DIR or --artifact OUT.e8q is required\n");
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
  e8q_plan_print(&p, host_mem, gpu_mem, stdout);
  int fits = 1;
  for (int r = 0; r < p.n_ranks; r++) fits &= e8q_plan_rank_fits(&p.mem[r], host_mem, gpu_mem);
  e8q_plan_free(&p);
  return fits ? 0 : 3;
}
