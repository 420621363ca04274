/* coordinator/cmd_quantize.c: `[mpirun -np N] e8q quantize ...`: options, defaults, then the
 * driver (coordinator/run.c). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "coordinator/run.h"
#include "io/atomic.h"
#include "io/config.h"

#define E8Q_DEFAULT_SEED 0
#define E8Q_DEFAULT_TUNE 10
#define E8Q_DEFAULT_SCALAPACK_MIN 8192

static void quantize_usage(FILE *f) {
  fprintf(f,
          "usage: [mpirun -np N] e8q quantize --model DIR --bits 2|3|4 --calib FILE --out OUT.e8q [options]\n\n"
          "Quantizes a Llama-family model with QuIP# (RHT + block LDLQ onto E8P / RVQ) into one archive.\n"
          "Every step is committed to the run directory: rerunning the same command resumes.\n\n"
          "  --model DIR          Hugging Face directory (config.json, model.safetensors[.index.json], tokenizer)\n"
          "  --bits B             2 (E8P12), 3 (E8P12 + 1-bit E8 residual), 4 (E8P12 + E8P12 residual)\n"
          "  --calib FILE         calibration text (or .ids/.u32 token ids)\n"
          "  --calib-skip N       skip the first N non-empty lines of the calibration text (default 0)\n"
          "  --out OUT.e8q        the artifact to write\n"
          "  --run-dir R          run directory (default OUT.e8q.run)\n"
          "  --devset S           calibration sequences (default %d)\n"
          "  --ctx T              tokens per sequence (default min(%d, max_position_embeddings))\n"
          "  --seed X             seed of calibration sampling and RHT signs (default %d)\n"
          "  --rho R              RMS of the rotated weights before rounding (default: the codebook's)\n"
          "  --tune-iters K       LDLQ coordinate-descent passes (default %d)\n"
          "  --method M           e8p (default), nearest, noe8, rtn (ablations)\n"
          "  --scalapack MODE     auto (default: when n_pad >= --scalapack-min on >1 rank), always, never\n"
          "  --scalapack-min N    dimension from which auto uses ScaLAPACK (default %d)\n"
          "  --eval-text FILE     held-out text: perplexity recorded in the manifest\n"
          "  --eval-lines K       first K non-empty lines, each [BOS]+tokens (default 40)\n"
          "  --log-json FILE      append one JSON event per step\n",
          E8Q_DEFAULT_DEVSET, E8Q_DEFAULT_CTX, E8Q_DEFAULT_SEED, E8Q_DEFAULT_TUNE, E8Q_DEFAULT_SCALAPACK_MIN);
}

int cmd_quantize(int argc, char **argv) {
  e8q_run_opts o;
  memset(&o, 0, sizeof o);
  o.devset = E8Q_DEFAULT_DEVSET;
  o.seed = E8Q_DEFAULT_SEED;
  o.tune_iters = E8Q_DEFAULT_TUNE;
  o.scalapack_min = E8Q_DEFAULT_SCALAPACK_MIN;
  o.eval_lines = 40;
  o.method = E8Q_METHOD_LDLQ;
  o.rho = 0;
  const char *method = "e8p";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (e8q_rank() == 0) quantize_usage(stdout);
      return 0;
    }
    E8Q_CHECK(i + 1 < argc && a[0] == '-', "quantize: '%s' %s (see e8q quantize --help)", a,
              a[0] == '-' ? "needs a value" : "is not an option");
    const char *v = argv[++i];
    if (!strcmp(a, "--model")) o.model = v;
    else if (!strcmp(a, "--bits")) o.bits = e8q_opt_int(a, v, 2, 4);
    else if (!strcmp(a, "--calib")) o.calib = v;
    else if (!strcmp(a, "--calib-skip")) o.calib_skip = e8q_opt_int(a, v, 0, 1 << 30);
    else if (!strcmp(a, "--out")) o.out = v;
    else if (!strcmp(a, "--run-dir")) o.run_dir = v;
    else if (!strcmp(a, "--devset")) o.devset = e8q_opt_int(a, v, 1, 1 << 24);
    else if (!strcmp(a, "--ctx")) o.ctx = e8q_opt_int(a, v, 2, 1 << 24);
    else if (!strcmp(a, "--seed")) o.seed = (uint64_t)e8q_opt_double(a, v, 0, 9.007199254740992e15);
    else if (!strcmp(a, "--rho")) o.rho = e8q_opt_double(a, v, 1e-3, 100);
    else if (!strcmp(a, "--tune-iters")) o.tune_iters = e8q_opt_int(a, v, 0, 1000);
    else if (!strcmp(a, "--method")) method = v;
    else if (!strcmp(a, "--scalapack")) {
      if (!strcmp(v, "auto")) o.scalapack = E8Q_SCALAPACK_AUTO;
      else if (!strcmp(v, "always")) o.scalapack = E8Q_SCALAPACK_ALWAYS;
      else if (!strcmp(v, "never")) o.scalapack = E8Q_SCALAPACK_NEVER;
      else E8Q_FATAL("quantize: --scalapack '%s': use auto, always or never", v);
    } else if (!strcmp(a, "--scalapack-min")) o.scalapack_min = e8q_opt_int(a, v, 1, 1 << 30);
    else if (!strcmp(a, "--eval-text")) o.eval_text = v;
    else if (!strcmp(a, "--eval-lines")) o.eval_lines = e8q_opt_int(a, v, 1, 1 << 30);
    else if (!strcmp(a, "--log-json")) o.log_json = v;
    else E8Q_FATAL("quantize: unknown option '%s' (see e8q quantize --help)", a);
  }
  E8Q_CHECK(o.model, "quantize: --model DIR is required (see e8q quantize --help)");
  E8Q_CHECK(o.bits, "quantize: --bits 2|3|4 is required");
  E8Q_CHECK(o.calib, "quantize: --calib FILE is required (calibration text)");
  E8Q_CHECK(o.out, "quantize: --out OUT.e8q is required");
  o.method = e8q_method_parse(method);
  char run_dir[4096];
  if (!o.run_dir) {
    snprintf(run_dir, sizeof run_dir, "%s.run", o.out);
    o.run_dir = run_dir;
  }
  /* an unwritable output is refused before any work (the artifact is written last) */
  if (e8q_rank() == 0) e8q_atomic_abort(e8q_atomic_begin(o.out, "artifact"));
  e8q_config cfg;
  e8q_config_load(o.model, &cfg);
  if (!o.ctx) o.ctx = cfg.max_seq_len < E8Q_DEFAULT_CTX ? cfg.max_seq_len : E8Q_DEFAULT_CTX;
  E8Q_CHECK(o.ctx <= cfg.max_seq_len, "quantize: --ctx %d exceeds the model's max_position_embeddings %d", o.ctx,
            cfg.max_seq_len);
  int np = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &np);
  e8q_info("e8q quantize %s: %d-bit %s, %d rank%s\n"
           "  model %s\n  calib %s (skip %d lines), devset %d x ctx %d, seed %llu\n"
           "  rho %s, tune-iters %d, scalapack %s (min %d)\n  out %s, run-dir %s%s%s",
           E8Q_VERSION, o.bits, method, np, np > 1 ? "s" : "", o.model, o.calib, o.calib_skip, o.devset, o.ctx,
           (unsigned long long)o.seed, o.rho > 0 ? "given" : "codebook default", o.tune_iters,
           o.scalapack == E8Q_SCALAPACK_ALWAYS ? "always" : o.scalapack == E8Q_SCALAPACK_NEVER ? "never" : "auto",
           o.scalapack_min, o.out, o.run_dir, o.eval_text ? ", eval " : "", o.eval_text ? o.eval_text : "");
  return e8q_run_quantize(&o);
}
