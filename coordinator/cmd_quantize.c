/* coordinator/cmd_quantize.c: `[mpirun -np N] e8q quantize ...`: options, defaults, then the
 * driver (coordinator/run.c). Without --model it runs on the built-in DEMO model (coordinator/demo_model.h),
 * written into R/demo-model/ of the run directory, so `e8q quantize` alone does a whole run. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "coordinator/run.h"
#include "io/artifact.h"
#include "io/atomic.h"
#include "io/config.h"
#include "io/rundir.h"
#include "coordinator/demo_model.h"
#include "worker/finetune_e2e.h"

#define E8Q_DEFAULT_SEED 0
#define E8Q_DEFAULT_TUNE 10
#define E8Q_DEFAULT_SCALAPACK_MIN 8192
/* fine-tuning defaults: the reference's (quip-sharp quantize_finetune_llama.py) */
#define E8Q_DEFAULT_FT_EPOCHS 5
#define E8Q_DEFAULT_FT_LR 5e-5
#define E8Q_DEFAULT_FT_SUSV_LR 5e-4
#define E8Q_DEFAULT_FT_BATCH 8
#define E8Q_DEFAULT_E2E_EPOCHS 5
/* the built-in demo (no --model): a small run, a few seconds on one core */
#define E8Q_DEMO_OUT "demo.e8q"
#define E8Q_DEMO_BITS 2
#define E8Q_DEMO_DEVSET 64
#define E8Q_DEMO_CTX 256
#define E8Q_DEMO_SEED 1

static void quantize_usage(FILE *f) {
  fprintf(f,
          "usage: [mpirun -np N] e8q quantize --model DIR --bits 2|3|4 --calib FILE --out OUT.e8q [options]\n"
          "       [mpirun -np N] e8q quantize [options]      (no --model: the built-in DEMO model)\n\n"
          "Quantizes a Llama-family model with QuIP# (RHT + block LDLQ onto E8P / RVQ) into one archive.\n"
          "Every step is committed to the run directory: rerunning the same command resumes.\n\n"
          "Without --model, e8q writes its DEMO model (random heavy-tailed weights, NOT a trained model:\n"
          "Llama architecture, dim 128, intermediate 344, 4 layers, vocab %d; see e8q demo --help) with\n"
          "its calibration and evaluation texts into R/" E8Q_RUNDIR_DEMO_MODEL "/ and quantizes it; the defaults\n"
          "then are --bits %d --out " E8Q_DEMO_OUT " --devset %d --ctx %d --ft none (fine-tuning a random-weight\n"
          "model takes minutes and recovers nothing; give --ft block to see it), --calib and --eval-text the demo's\n"
          "calib.txt and eval.txt (any option given still applies). Rerunning it resumes like any run.\n\n"
          "  --model DIR          Hugging Face directory (config.json, model.safetensors[.index.json], tokenizer);\n"
          "                       without it: the DEMO model\n"
          "  --bits B             2 (E8P12), 3 (E8P12 + 1-bit E8 residual), 4 (E8P12 + E8P12 residual);\n"
          "                       required with --model\n"
          "  --calib FILE         calibration text (or .ids/.u32 token ids); required with --model\n"
          "  --calib-skip N       skip the first N non-empty lines of the calibration text (default 0)\n"
          "  --out OUT.e8q        the artifact to write; required with --model\n"
          "  --run-dir R          run directory (default OUT.e8q.run)\n"
          "  --devset S           calibration sequences (default %d; demo %d)\n"
          "  --ctx T              tokens per sequence (default min(%d, max_position_embeddings); demo %d)\n"
          "  --seed X             seed of calibration sampling and RHT signs (default %d)\n"
          "  --rho R              RMS of the rotated weights before rounding (default: the codebook's)\n"
          "  --tune-iters K       LDLQ coordinate-descent passes (default %d)\n"
          "  --method M           e8p (default), nearest, noe8, rtn (ablations)\n"
          "  --scalapack MODE     auto (default: when n_pad >= --scalapack-min on >1 rank), always, never\n"
          "  --scalapack-min N    dimension from which auto uses ScaLAPACK (default %d)\n"
          "  --eval-text FILE     held-out text: perplexity recorded in the manifest\n"
          "  --eval-lines K       first K non-empty lines, each [BOS]+tokens (default 40)\n"
          "  --device D           auto (default: CUDA when every rank has a device, else the CPU), cpu or\n"
          "                       cuda (fatal without a device); per block the calibration forward\n"
          "                       with the Hessians' Gram products (float64 DSYRK), their Cholesky\n"
          "                       (cuSOLVER), LDLQ (one thread per weight row, cuBLAS feedback\n"
          "                       products), propagation, block and end-to-end fine-tuning (forward\n"
          "                       and backward; gradients summed exactly through NCCL) run on it,\n"
          "                       and the validation evaluation\n"
          "  --ft MODE            fine-tuning: none, block, e2e, all (default all = block + e2e)\n"
          "  --ft-epochs E        block fine-tuning epochs per round (default %d; early stop after 3\n"
          "                       epochs without held-out improvement, the best held-out state kept)\n"
          "  --ft-lr LR           Adam learning rate of norms and not yet quantized weights (default %g)\n"
          "  --ft-susv-lr LR      Adam learning rate of SU and SV of quantized linears (default %g)\n"
          "  --ft-valid V         held-out calibration sequences for fine-tuning (default devset/3)\n"
          "  --ft-batch B         sequences per Adam step (default %d)\n"
          "  --e2e-epochs E       end-to-end fine-tuning epochs (default %d; SU/SV, norms, final norm and an\n"
          "                       untied lm_head on cross-entropy against the original model's next-token\n"
          "                       distribution; --ft-lr, --ft-susv-lr, --ft-batch, --ft-valid as above)\n"
          "  --e2e-topk K         ids kept per position of the original distribution (default %d)\n"
          "  --head H             source (default: the head and embeddings in the source's precision) or\n"
          "                       q8: stored at 8 bits with a float scale per 32 weights (1.125 bytes per\n"
          "                       weight), read so by eval and generate\n"
          "  --log-json FILE      append one JSON event per step\n"
          "  --help               this text\n",
          E8Q_DEMO_VOCAB, E8Q_DEMO_BITS, E8Q_DEMO_DEVSET, E8Q_DEMO_CTX, E8Q_DEFAULT_DEVSET, E8Q_DEMO_DEVSET, E8Q_DEFAULT_CTX, E8Q_DEMO_CTX, E8Q_DEFAULT_SEED, E8Q_DEFAULT_TUNE, E8Q_DEFAULT_SCALAPACK_MIN,
          E8Q_DEFAULT_FT_EPOCHS, E8Q_DEFAULT_FT_LR, E8Q_DEFAULT_FT_SUSV_LR, E8Q_DEFAULT_FT_BATCH, E8Q_DEFAULT_E2E_EPOCHS, E8Q_E2E_TOPK_DEFAULT);
}

/* the recorded evaluation and size of a finished artifact, in one line (rank 0) */
static void demo_print_result(const char *out) {
  e8q_artifact *a = e8q_artifact_open(out);
  char *txt = e8q_artifact_read(a, "manifest.json", NULL);
  e8q_artifact_close(a);
  cJSON *m = cJSON_Parse(txt);
  free(txt);
  E8Q_CHECK(m, "%s: manifest.json is not valid JSON", out);
  const cJSON *ev = cJSON_GetObjectItemCaseSensitive(m, "evaluation");
  const cJSON *sz = cJSON_GetObjectItemCaseSensitive(m, "size");
  const cJSON *nll = cJSON_GetObjectItemCaseSensitive(ev, "mean_nll"), *ppl = cJSON_GetObjectItemCaseSensitive(ev, "ppl");
  const cJSON *lb = cJSON_GetObjectItemCaseSensitive(sz, "linear_bpw"), *mb = cJSON_GetObjectItemCaseSensitive(sz, "model_bpw");
  if (cJSON_IsNumber(nll) && cJSON_IsNumber(ppl) && cJSON_IsNumber(lb) && cJSON_IsNumber(mb))
    e8q_info("e8q quantize: %s: held-out mean NLL %.4f (perplexity %.1f; random weights: no meaning as a\n"
             "  language model, a uniform guess scores %.2f), %.3f bits per weight in the quantized linears, %.2f over model.safetensors",
             out, nll->valuedouble, ppl->valuedouble, log((double)E8Q_DEMO_VOCAB), lb->valuedouble, mb->valuedouble);
  cJSON_Delete(m);
}

int cmd_quantize(int argc, char **argv) {
  e8q_run_opts o;
  memset(&o, 0, sizeof o);
  o.devset = 0; /* 0: not given, the default follows below */
  o.seed = E8Q_DEFAULT_SEED;
  o.tune_iters = E8Q_DEFAULT_TUNE;
  o.scalapack_min = E8Q_DEFAULT_SCALAPACK_MIN;
  o.eval_lines = 40;
  o.method = E8Q_METHOD_LDLQ;
  o.rho = 0;
  o.ft = (e8q_ft_mode)-1; /* not given: all (demo: none), below */
  o.ft_epochs = E8Q_DEFAULT_FT_EPOCHS;
  o.ft_lr = E8Q_DEFAULT_FT_LR;
  o.ft_susv_lr = E8Q_DEFAULT_FT_SUSV_LR;
  o.ft_valid = -1; /* not given: devset/3 below */
  o.ft_batch = E8Q_DEFAULT_FT_BATCH;
  o.e2e_epochs = E8Q_DEFAULT_E2E_EPOCHS;
  o.e2e_topk = E8Q_E2E_TOPK_DEFAULT;
  const char *method = "e8p";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (e8q_opt_help(a, quantize_usage)) return 0;
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
    else if (!strcmp(a, "--seed")) { /* a JSON number in plan.json and the manifest: at most 2^53 */
      double s = e8q_opt_double(a, v, 0, 9.007199254740992e15);
      E8Q_CHECK(s == floor(s), "option --seed: '%s' is not an integer (0 to 2^53)", v);
      o.seed = (uint64_t)s;
    }
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
    else if (!strcmp(a, "--ft")) {
      if (!strcmp(v, "none")) o.ft = E8Q_FT_OFF;
      else if (!strcmp(v, "block")) o.ft = E8Q_FT_BLOCK;
      else if (!strcmp(v, "e2e")) o.ft = E8Q_FT_E2E;
      else if (!strcmp(v, "all")) o.ft = E8Q_FT_ALL;
      else E8Q_FATAL("quantize: --ft '%s': use none, block, e2e or all", v);
    } else if (!strcmp(a, "--ft-epochs")) o.ft_epochs = e8q_opt_int(a, v, 0, 1000000);
    else if (!strcmp(a, "--ft-lr")) o.ft_lr = e8q_opt_double(a, v, 0, 1);
    else if (!strcmp(a, "--ft-susv-lr")) o.ft_susv_lr = e8q_opt_double(a, v, 0, 1);
    else if (!strcmp(a, "--ft-valid")) o.ft_valid = e8q_opt_int(a, v, 1, 1 << 24);
    else if (!strcmp(a, "--ft-batch")) o.ft_batch = e8q_opt_int(a, v, 1, 1 << 24);
    else if (!strcmp(a, "--e2e-epochs")) o.e2e_epochs = e8q_opt_int(a, v, 0, 1000000);
    else if (!strcmp(a, "--e2e-topk")) o.e2e_topk = e8q_opt_int(a, v, 1, 1 << 20);
    else if (!strcmp(a, "--device")) o.device = e8q_device_parse(a, v);
    else if (!strcmp(a, "--head")) o.head_q8 = e8q_head_parse("quantize", v);
    else E8Q_FATAL("quantize: unknown option '%s' (see e8q quantize --help)", a);
  }
  const int demo = o.model == NULL;
  if (demo) { /* the built-in demo model: defaults for whatever was not given */
    if (!o.bits) o.bits = E8Q_DEMO_BITS;
    if (!o.out) o.out = E8Q_DEMO_OUT;
    if (!o.devset) o.devset = E8Q_DEMO_DEVSET;
    if (!o.ctx) o.ctx = E8Q_DEMO_CTX;
    if ((int)o.ft < 0) o.ft = E8Q_FT_OFF;
  }
  if (!o.devset) o.devset = E8Q_DEFAULT_DEVSET;
  if ((int)o.ft < 0) o.ft = E8Q_FT_ALL;
  if (o.ft_valid < 0) o.ft_valid = o.devset / 3;
  E8Q_CHECK(o.ft == E8Q_FT_OFF || e8q_method_dense(e8q_method_parse(method)) || (o.ft_valid >= 1 && o.ft_valid < o.devset),
            "quantize: fine-tuning needs held-out and training sequences: --ft-valid %d of --devset %d (give "
            "1 <= --ft-valid < --devset, a larger --devset, or --ft none)",
            o.ft_valid, o.devset);
  E8Q_CHECK(o.bits, "quantize: --bits 2|3|4 is required");
  E8Q_CHECK(demo || o.calib, "quantize: --calib FILE is required (calibration text)");
  E8Q_CHECK(o.out, "quantize: --out OUT.e8q is required");
  o.method = e8q_method_parse(method);
  char run_dir[4096];
  if (!o.run_dir) {
    snprintf(run_dir, sizeof run_dir, "%s.run", o.out);
    o.run_dir = run_dir;
  }
  /* an unwritable output is refused before any work (the artifact is written last) */
  if (e8q_rank() == 0) e8q_atomic_abort(e8q_atomic_begin(o.out, "artifact"));
  char demo_dir[4200], demo_calib[4300], demo_eval[4300];
  if (demo) {
    snprintf(demo_dir, sizeof demo_dir, "%s/%s", o.run_dir, E8Q_RUNDIR_DEMO_MODEL);
    e8q_info("e8q quantize: no --model given: running on the built-in DEMO model.\n"
             "  ** The DEMO model has RANDOM weights: it is NOT a trained model and generates gibberish. **\n"
             "  It shows the whole pipeline on a small Llama-architecture checkpoint (dim 128, 4 layers) in seconds.\n"
             "  For a real model: e8q quantize --model HF_DIR --bits 2|3|4 --calib TEXT --out OUT.e8q [--eval-text TEXT]\n"
             "  (HF_DIR: a Hugging Face Llama/Mistral directory with config.json, *.safetensors, tokenizer.model;\n"
             "  see e8q quantize --help)\n"
             "  demo model (seed %d) written to %s; demo defaults: --bits %d --devset %d --ctx %d --out %s --ft none",
             E8Q_DEMO_SEED, demo_dir, E8Q_DEMO_BITS, E8Q_DEMO_DEVSET, E8Q_DEMO_CTX, E8Q_DEMO_OUT);
    if (e8q_rank() == 0) {
      /* never write into an unrelated directory; the demo is deterministic, so rewriting it on
       * a rerun gives the same bytes (and the run's fingerprint check still guards it) */
      e8q_rundir_check_usable(o.run_dir);
      e8q_mkdirs(o.run_dir);
      e8q_demo_write(demo_dir, E8Q_DEMO_SEED);
    }
    e8q_comm_barrier(e8q_comm_get());
    o.model = demo_dir;
    if (!o.calib) {
      snprintf(demo_calib, sizeof demo_calib, "%s/calib.txt", demo_dir);
      o.calib = demo_calib;
    }
    if (!o.eval_text) {
      snprintf(demo_eval, sizeof demo_eval, "%s/eval.txt", demo_dir);
      o.eval_text = demo_eval;
    }
  }
  e8q_config cfg;
  e8q_config_load(o.model, &cfg);
  if (!o.ctx) o.ctx = e8q_default_ctx(cfg.max_seq_len);
  E8Q_CHECK(o.ctx <= cfg.max_seq_len, "quantize: --ctx %d exceeds the model's max_position_embeddings %d", o.ctx,
            cfg.max_seq_len);
  int np = e8q_comm_size(e8q_comm_get());
  e8q_info("e8q quantize %s: %d-bit %s, %d rank%s%s\n"
           "  model %s\n  calib %s (skip %d lines), devset %d x ctx %d, seed %llu\n"
           "  rho %s, tune-iters %d, scalapack %s (min %d)\n  out %s, run-dir %s%s%s",
           E8Q_VERSION, o.bits, method, np, np > 1 ? "s" : "", demo ? " (DEMO model, random weights)" : "", o.model, o.calib, o.calib_skip, o.devset, o.ctx,
           (unsigned long long)o.seed, o.rho > 0 ? "given" : "codebook default", o.tune_iters,
           o.scalapack == E8Q_SCALAPACK_ALWAYS ? "always" : o.scalapack == E8Q_SCALAPACK_NEVER ? "never" : "auto",
           o.scalapack_min, o.out, o.run_dir, o.eval_text ? ", eval " : "", o.eval_text ? o.eval_text : "");
  e8q_info("  ft %s: epochs %d, lr %g, susv-lr %g, batch %d, held-out %d of %d; e2e-epochs %d, e2e-topk %d",
           e8q_ft_mode_name(o.ft), o.ft_epochs, o.ft_lr, o.ft_susv_lr, o.ft_batch, o.ft_valid, o.devset, o.e2e_epochs,
           o.e2e_topk);
  if (o.ft != E8Q_FT_OFF && e8q_method_dense(o.method))
    e8q_info("  note: --method %s stores dense quantized weights without SU/SV: fine-tuning does not apply and is "
             "skipped",
             method);
  int rc = e8q_run_quantize(&o);
  if (demo && rc == 0) {
    if (e8q_rank() == 0) demo_print_result(o.out);
    e8q_info("e8q quantize: DEMO done (random weights, not a trained model): %s. Next:\n"
             "  e8q inspect %s --verify\n"
             "  e8q eval --artifact %s --text %s --per-line 40\n"
             "  e8q generate --artifact %s --prompt 'the cat' --tokens 20\n"
             "  and for a real model: e8q quantize --model HF_DIR --bits 2 --calib TEXT --out OUT.e8q",
             o.out, o.out, o.out, o.eval_text, o.out);
  }
  return rc;
}
