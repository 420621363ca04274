/* coordinator/run.h: the `e8q quantize` driver (DESIGN §2): plan, embed, then per block
 * hessian -> quantize (qkv, o, upgate, down) -> propagate -> commit, then gather, validate and
 * pack, every step committed atomically to the run directory and journalled, so a rerun of the
 * same command resumes where a killed run stopped and produces the same bytes. */
#ifndef E8Q_COORDINATOR_RUN_H
#define E8Q_COORDINATOR_RUN_H

#include <stdint.h>

#include "common/device.h"
#include "worker/quantize_linear.h"

typedef enum { E8Q_SCALAPACK_AUTO = 0, E8Q_SCALAPACK_ALWAYS, E8Q_SCALAPACK_NEVER } e8q_scalapack_mode;

/* --ft: which fine-tuning runs (DESIGN §3): block rounds (worker/finetune.h), end to end
 * (worker/finetune_e2e.h), both (all) or none */
typedef enum { E8Q_FT_OFF = 0, E8Q_FT_BLOCK, E8Q_FT_E2E, E8Q_FT_ALL } e8q_ft_mode;
/* "none", "block", "e2e", "all" */
static inline const char *e8q_ft_mode_name(e8q_ft_mode m) {
  return m == E8Q_FT_BLOCK ? "block" : m == E8Q_FT_E2E ? "e2e" : m == E8Q_FT_ALL ? "all" : "none";
}

typedef struct {
  const char *model;       /* HF directory */
  const char *calib;       /* calibration text or id file */
  const char *out;         /* OUT.e8q */
  const char *run_dir;     /* run directory (default OUT.e8q.run) */
  const char *log_json;    /* JSON events, or NULL */
  const char *eval_text;   /* held-out text for the recorded perplexity, or NULL */
  int eval_lines;          /* --eval-lines: per-line protocol on the first K lines */
  int bits, devset, ctx, tune_iters, calib_skip;
  int scalapack_min;       /* factorise with ScaLAPACK when n_pad >= this (auto mode) */
  e8q_scalapack_mode scalapack;
  uint64_t seed;
  double rho;              /* <= 0: the codebook default */
  e8q_method method;
  /* fine-tuning (worker/finetune.h) */
  e8q_ft_mode ft;          /* --ft */
  int ft_epochs;           /* --ft-epochs: block fine-tuning epochs per round */
  double ft_lr;            /* --ft-lr: norms and dense weights */
  double ft_susv_lr;       /* --ft-susv-lr: SU and SV */
  int ft_valid;            /* --ft-valid: held-out sequences (the last ones of the devset) */
  int ft_batch;            /* --ft-batch: sequences per Adam step */
  int e2e_epochs;          /* --e2e-epochs: end-to-end fine-tuning epochs */
  int e2e_topk;            /* --e2e-topk: ids kept per position of the original model's distribution */
  e8q_device_mode device;  /* --device: what the run computes on (common/device.h) */
  int head_q8;             /* --head q8: the artifact stores the head and the embedding at 8 bits */
} e8q_run_opts;

/* collective; returns the exit code */
int e8q_run_quantize(const e8q_run_opts *o);

#endif
