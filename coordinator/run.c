/* coordinator/run.c: `e8q quantize` as a table of stages (coordinator/run.h, DESIGN §2).
 *
 * Each stage commits its results to the run directory and journals them, so a rerun of the same
 * command resumes: a stage's resume function restores what an earlier run committed and says
 * whether anything is left to do (coordinator/runstate.h, e8q_stages_run). The per-block stage
 * has its own table (coordinator/block.c); end-to-end fine-tuning, gather, validate and pack
 * live in e2e.c, gather.c and validate.c. */
#include "coordinator/run.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/log.h"
#include "coordinator/block.h"
#include "coordinator/e2e.h"
#include "coordinator/eval.h"
#include "coordinator/gather.h"
#include "coordinator/progress.h"
#include "coordinator/runstate.h"
#include "coordinator/validate.h"
#include "io/text.h"
#include "io/tokenizer.h"
#include "kernels/e8p.h"
#include "worker/cholesky.h"

/* ================================================================ plan.json */
static cJSON *options_json(const e8q_run_opts *o, const e8q_run *R) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "bits", o->bits);
  cJSON_AddStringToObject(j, "method", e8q_method_cli_name(o->method));
  cJSON_AddNumberToObject(j, "rho", e8q_qlin_rho(&R->q)); /* the one used, given or default */
  cJSON_AddNumberToObject(j, "tune_iters", o->tune_iters);
  cJSON_AddNumberToObject(j, "devset", o->devset);
  cJSON_AddNumberToObject(j, "ctx", R->T);
  cJSON_AddNumberToObject(j, "calib_skip", o->calib_skip);
  char hex[65];
  e8q_sha256_file_hex(o->calib, hex);
  cJSON_AddStringToObject(j, "calib_sha256", hex);
  cJSON_AddStringToObject(j, "scalapack",
                          o->scalapack == E8Q_SCALAPACK_ALWAYS ? "always" : o->scalapack == E8Q_SCALAPACK_NEVER ? "never" : "auto");
  cJSON_AddNumberToObject(j, "scalapack_min", o->scalapack_min);
  cJSON_AddStringToObject(j, "ft", e8q_ft_mode_name(o->ft));
  cJSON_AddNumberToObject(j, "ft_epochs", o->ft_epochs);
  cJSON_AddNumberToObject(j, "ft_lr", o->ft_lr);
  cJSON_AddNumberToObject(j, "ft_susv_lr", o->ft_susv_lr);
  cJSON_AddNumberToObject(j, "ft_valid", o->ft_valid);
  cJSON_AddNumberToObject(j, "ft_batch", o->ft_batch);
  cJSON_AddNumberToObject(j, "e2e_epochs", o->e2e_epochs);
  cJSON_AddNumberToObject(j, "e2e_topk", o->e2e_topk);
  cJSON_AddStringToObject(j, "head", o->head_q8 ? "q8" : "source");
  /* --eval-text, --eval-lines and --log-json only affect reporting: not part of the run's
   * identity (a rerun may change or drop them; validation_current decides whether the recorded
   * evaluation still holds) */
  return j;
}

/* plan.json: fingerprint, options, seed and the schedule (rank 0) */
static cJSON *plan_json(const e8q_run *R) {
  cJSON *plan = cJSON_CreateObject();
  cJSON_AddItemToObject(plan, "fingerprint", cJSON_Duplicate(R->fingerprint, 1));
  cJSON_AddItemToObject(plan, "options", cJSON_Duplicate(R->options, 1));
  cJSON_AddNumberToObject(plan, "seed", (double)R->o->seed);
  cJSON *sched = cJSON_AddObjectToObject(plan, "schedule");
  cJSON_AddNumberToObject(sched, "layers", R->plan.n_layers);
  cJSON *groups = cJSON_AddArrayToObject(sched, "groups");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &R->plan.groups[g];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "name", gp->name);
    cJSON_AddNumberToObject(x, "m", gp->m);
    cJSON_AddNumberToObject(x, "n", gp->n);
    cJSON_AddNumberToObject(x, "n_pad", gp->n_pad);
    cJSON_AddNumberToObject(x, "K_n", gp->K_n);
    cJSON_AddNumberToObject(x, "K_m", gp->K_m);
    cJSON_AddItemToArray(groups, x);
  }
  return plan;
}

/* ================================================================ input checks
 * Every input and output path is checked before plan.json is written, so that a bad file never
 * costs the run directory (rank 0 only: cheap, and only rank 0 prints). */

/* opt's path is an existing, readable regular file; fatal naming the option and the file */
static void input_file_check(const char *opt, const char *path) {
  struct stat sb;
  E8Q_CHECK_ERRNO(stat(path, &sb) == 0, "%s %s: cannot read it; give an existing file", opt, path);
  E8Q_CHECK(!S_ISDIR(sb.st_mode), "%s %s is a directory, not a file: give the file itself", opt, path);
  E8Q_CHECK(S_ISREG(sb.st_mode), "%s %s is not a regular file: give a text file or a token id file (.ids/.u32)", opt,
            path);
  E8Q_CHECK_ERRNO(access(path, R_OK) == 0, "%s %s: cannot read it (permissions?)", opt, path);
}

/* --eval-text: token ids inside the vocabulary (e8q_ids_read names the file) and not empty, or
 * UTF-8 text with at least one non-blank line among the first --eval-lines, and a tokenizer */
static void eval_text_check(const e8q_run_opts *o, const e8q_config *cfg) {
  input_file_check("--eval-text", o->eval_text);
  if (e8q_ids_is_file(o->eval_text)) {
    int *ids = NULL;
    size_t n = e8q_ids_read(o->eval_text, cfg->vocab_size, &ids);
    free(ids);
    E8Q_CHECK(n > 0, "--eval-text %s holds no token ids: give a non-empty id file or a text file", o->eval_text);
    return;
  }
  char *tp = e8q_tokenizer_find(o->model, cfg->vocab_size);
  E8Q_CHECK(tp,
            "--eval-text %s is text but no tokenizer was found with the model (e8q quantize reads tokenizer.model "
            "from the --model directory %s): put the model's tokenizer.model there, or give a token id file (.ids "
            "or .u32, little-endian uint32)",
            o->eval_text, o->model);
  free(tp);
  size_t n = 0;
  char *text = e8q_file_read(o->eval_text, &n, "held-out text");
  size_t bad = e8q_utf8_check(text, n);
  if (bad < n) {
    unsigned b = (uint8_t)text[bad];
    free(text);
    E8Q_FATAL("--eval-text %s is not valid UTF-8 (bad byte 0x%02x at byte offset %zu): convert it to UTF-8 (for "
              "example with iconv) or drop --eval-text",
              o->eval_text, b, bad);
  }
  char **lines = NULL;
  int k = e8q_text_lines(text, 0, o->eval_lines, &lines);
  e8q_text_lines_free(lines, k);
  free(text);
  E8Q_CHECK(k > 0, "--eval-text %s holds no non-blank line: give a file with held-out text, or drop --eval-text",
            o->eval_text);
}

/* --out: not a directory (its directory's writability: cmd_quantize's e8q_atomic_begin) */
static void out_check(const char *out) {
  struct stat sb;
  E8Q_CHECK(stat(out, &sb) != 0 || !S_ISDIR(sb.st_mode),
            "--out %s is a directory: --out names the artifact file (OUT.e8q); give a file name", out);
}

/* rank 0: 1 when R/validation.json's evaluation record is the one this run's reporting options
 * ask for (--eval-text's sha256 and --eval-lines, or none), 0 when validation must be redone */
static int validation_current(e8q_run *R) {
  char path[4096];
  e8q_rundir_path(R->rd, "validation.json", path, sizeof path);
  char *txt = e8q_file_read(path, NULL, "validation record");
  cJSON *v = cJSON_Parse(txt);
  free(txt);
  const cJSON *ev = cJSON_GetObjectItemCaseSensitive(v, "evaluation");
  int ok;
  if (!R->o->eval_text) {
    ok = cJSON_IsString(ev);
  } else {
    char hex[65];
    e8q_sha256_file_hex(R->o->eval_text, hex);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(ev, "text_sha256");
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(ev, "per_line");
    ok = cJSON_IsString(h) && !strcmp(h->valuestring, hex) && cJSON_IsNumber(pl) && pl->valueint == R->o->eval_lines;
  }
  cJSON_Delete(v);
  return ok;
}

/* ================================================================ the stages */
/* ---------------------------------------------------------------- plan
 * rank 0 reads config.json and the safetensors headers only (shard/plan.h) and writes plan.json:
 * fingerprint, options, seed, the schedule (groups, shapes, Hadamard factors); every input is
 * checked first. */
static void stage_plan(e8q_run *R, void *ctx) {
  (void)ctx;
  const e8q_run_opts *o = R->o;
  e8q_config_load(o->model, &R->cfg);
  /* every input and output, before plan.json (a bad file must not cost the run directory) */
  if (R->rank == 0) {
    input_file_check("--calib", o->calib);
    if (o->eval_text) eval_text_check(o, &R->cfg);
    out_check(o->out);
  }
  e8q_run_barrier();
  R->T = o->ctx;
  R->dim = R->cfg.dim;
  /* the calibration windows (all ranks), checked before plan.json: the text decodes and gives
   * --devset windows of --ctx tokens after --calib-skip lines */
  e8q_tokenizer *tok = e8q_eval_open_tokenizer(o->model, &R->cfg, NULL, 0, NULL);
  e8q_calib_build(&R->calib, o->calib, tok, R->cfg.vocab_size, o->calib_skip, o->devset, R->T, o->seed);
  if (tok) e8q_tokenizer_free(tok);
  e8q_plan_build(&R->plan, o->model, R->size, o->devset, R->T);
  R->q.bits = o->bits;
  R->q.method = o->method;
  R->q.rho = o->rho;
  R->q.tune_iters = o->tune_iters;
  R->q.seed = o->seed;
  int steps = 2 + R->cfg.n_layers * (1 + E8Q_N_GROUPS + 2) + e8q_run_e2e_on(R) + 3;
  e8q_progress_begin(steps, o->log_json);
  if (R->rank == 0) { /* the options (file hashes) and fingerprint only go into rank 0's plan and pack */
    R->options = options_json(o, R);
    R->fingerprint = e8q_model_fingerprint(o->model);
    e8q_run_source_record(R);
    cJSON *plan = plan_json(R);
    R->rd = e8q_rundir_open(o->run_dir, plan);
    cJSON_Delete(plan);
    if (R->rd->resumed) e8q_info("e8q: resuming the run in %s (%d journal records)", o->run_dir, R->rd->journal->n);
  }
  e8q_run_barrier();
}

/* ---------------------------------------------------------------- embed
 * X_0 = the embeddings of this rank's calibration sequences. embed_resume first opens the source
 * model for every later stage (embeddings, the mapped checkpoint) and allocates X_b, X_{b+1};
 * then finds the first block not committed (R->block0) and loads X_b entering it (recomputed
 * from scratch when missing or corrupt). */
static int embed_resume(e8q_run *R, void *ctx) {
  (void)ctx;
  R->s0 = R->plan.seq_start[R->rank];
  R->s1 = R->plan.seq_start[R->rank + 1];
  R->head = e8q_model_load_ex(R->o->model, 0);
  R->st = e8q_st_model_open(R->o->model);
  size_t act_bytes = sizeof(float) * (size_t)(R->s1 - R->s0 > 0 ? R->s1 - R->s0 : 1) * e8q_run_act_floats(R);
  R->X = e8q_malloc(act_bytes, "activations X_b");   /* [s1-s0, T, dim] */
  R->Y = e8q_malloc(act_bytes, "activations X_b+1"); /* [s1-s0, T, dim] */
  R->block0 = e8q_run_blocks_resume(R);
  const int start = R->block0;
  if (start == 0) return e8q_run_acts_load(R, 0, R->X) ? E8Q_STAGE_RESUMED : E8Q_STAGE_RUN;
  if (start < R->cfg.n_layers && !e8q_run_acts_load(R, start, R->X)) {
    e8q_info("e8q: activations entering layer %d are missing or corrupt: recomputing them", start);
    e8q_run_acts_rebuild(R, start, R->X);
    e8q_run_acts_commit(R, start, R->X);
  }
  return E8Q_STAGE_RESUMED;
}

static void stage_embed(e8q_run *R, void *ctx) {
  (void)ctx;
  e8q_run_acts_embed(R, R->X);
  e8q_run_acts_commit(R, 0, R->X);
  e8q_run_step(R, "embed");
}

/* ---------------------------------------------------------------- blocks (coordinator/block.c) */
static void stage_blocks(e8q_run *R, void *ctx) {
  (void)ctx;
  for (int b = 0; b < R->block0; b++) e8q_run_block_resumed(R, b);
  for (int b = R->block0; b < R->cfg.n_layers; b++) {
    e8q_run_block(R, b);
    float *t = R->X;
    R->X = R->Y;
    R->Y = t;
  }
  free(R->X);
  free(R->Y);
  R->X = R->Y = NULL;
}

/* ---------------------------------------------------------------- e2e (coordinator/e2e.c)
 * every SU/SV, the norms, the final norm and an untied lm_head on cross-entropy against the
 * original model's top-k next-token distribution; data parallel with exact gradient sums;
 * e2e/state.ckpt per epoch */
static void stage_e2e(e8q_run *R, void *ctx) {
  (void)ctx;
  e8q_run_e2e(R);
}

/* ---------------------------------------------------------------- gather, validate, pack */
static int gather_resume(e8q_run *R, void *ctx) {
  (void)ctx;
  return e8q_run_has_step(R, "gather") && e8q_run_have(R, "model.safetensors") && e8q_run_have(R, "config.json")
             ? E8Q_STAGE_RESUMED
             : E8Q_STAGE_RUN;
}

static void stage_gather(e8q_run *R, void *ctx) {
  (void)ctx;
  if (R->rank == 0) e8q_run_gather(R);
  e8q_run_barrier();
}

/* what gather read from the source model (embeddings, norms): redone by the rerun */
static void gather_discard(e8q_run *R, int b) {
  (void)b;
  if (R->rank != 0) return;
  char path[4096];
  e8q_rundir_path(R->rd, "model.safetensors", path, sizeof path);
  unlink(path);
}

static void gather_check(e8q_run *R, void *ctx) {
  (void)ctx;
  e8q_run_source_check(R, "gather", gather_discard, 0);
}

/* the evaluation record follows the reporting options of THIS run: another --eval-text or
 * --eval-lines (or none) redoes validation (then pack) on the same quantized model */
static int validate_resume(e8q_run *R, void *ctx) {
  (void)ctx;
  int validated = e8q_run_has_step(R, "validate") && e8q_run_have(R, "validation.json");
  if (validated) validated = e8q_run_bcast_int(R->rank == 0 ? validation_current(R) : 0);
  return validated ? E8Q_STAGE_RESUMED : E8Q_STAGE_RUN;
}

static void stage_validate(e8q_run *R, void *ctx) {
  (void)ctx;
  e8q_run_validate(R);
}

static void stage_pack(e8q_run *R, void *ctx) {
  (void)ctx;
  if (R->rank == 0) e8q_run_pack(R);
  e8q_run_barrier();
  e8q_progress_step("pack", -1, R->o->out, 0);
}

/* ---------------------------------------------------------------- the table (DESIGN §2)
 * Mid-stage fault points: hessian.mid, quantize.mid, ft.epoch, commit.mid (block.c), e2e.epoch
 * (e2e.c), gather.mid, pack.mid, pack.done (gather.c). */
static const e8q_stage run_stages[] = {
    /* name      resume           run             timer               check         fault            on resume progress */
    {"plan",     NULL,            stage_plan,     E8Q_STAGE_UNTIMED,  NULL,         "plan.done",     0, "plan"},
    {"embed",    embed_resume,    stage_embed,    E8Q_STAGE_EMBED,    NULL,         "embed.done",    0, "embed"},
    {"blocks",   NULL,            stage_blocks,   E8Q_STAGE_UNTIMED,  NULL,         NULL,            0, NULL}, /* block.c's table */
    {"e2e",      NULL,            stage_e2e,      E8Q_STAGE_UNTIMED,  NULL,         NULL,            0, NULL}, /* per epoch, e2e.c */
    {"gather",   gather_resume,   stage_gather,   E8Q_STAGE_GATHER,   gather_check, "gather.done",   1, "gather"},
    {"validate", validate_resume, stage_validate, E8Q_STAGE_VALIDATE, NULL,         "validate.done", 1, "validate"},
    {"pack",     NULL,            stage_pack,     E8Q_STAGE_PACK,     NULL,         NULL,            0, NULL},
};

/* ================================================================ the run */
/* rank 0 reports peak RSS per rank and the wall time by stage (the "done" event) */
static void report(e8q_run *R, double t0) {
  double rss = (double)e8q_peak_rss();
  double *all = R->rank == 0 ? e8q_malloc(sizeof(double) * (size_t)R->size, "rss") : NULL; /* [size] */
  e8q_comm_gather(R->comm, E8Q_MEM_HOST, &rss, sizeof rss, all, 0);
  if (R->rank != 0) return;
  cJSON *f = cJSON_CreateObject();
  cJSON *arr = cJSON_AddArrayToObject(f, "peak_rss_bytes");
  for (int r = 0; r < R->size; r++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(all[r]));
  cJSON_AddNumberToObject(f, "wall_s", e8q_now() - t0);
  cJSON *st = cJSON_AddObjectToObject(f, "stage_s");
  char line[1024];
  size_t len = 0;
  for (int k = 0; k < E8Q_N_STAGES; k++) {
    cJSON_AddNumberToObject(st, e8q_run_stage_names[k], R->stage_s[k]);
    if (R->stage_s[k] > 0 && len < sizeof line)
      len += (size_t)snprintf(line + len, sizeof line - len, "%s %s %.1f s", len ? "," : "", e8q_run_stage_names[k],
                              R->stage_s[k]);
  }
  cJSON_AddStringToObject(f, "out", R->o->out);
  e8q_progress_event("done", f, 1);
  for (int r = 0; r < R->size; r++) e8q_info("e8q: rank %d peak RSS %.1f MiB", r, all[r] / (1 << 20));
  e8q_info("e8q: wall %.1f s by stage (this process, rank 0's clock):%s", e8q_now() - t0, len ? line : " none");
  free(all);
}

int e8q_run_quantize(const e8q_run_opts *o) {
  e8q_run RS;
  e8q_run *R = &RS;
  memset(R, 0, sizeof *R);
  R->o = o;
  R->comm = e8q_comm_get();
  R->rank = e8q_comm_rank(R->comm);
  R->size = e8q_comm_size(R->comm);
  e8q_device_select(&R->dev, o->device, "quantize"); /* before any work: --device cuda without one is fatal here */
  double t0 = e8q_now();
  /* one BLAS thread (set in coordinator/main.c): the artifact does not depend on OPENBLAS_NUM_THREADS */
  struct sigaction old_sigbus;
  e8q_run_source_sigbus_install(o, &old_sigbus);

  e8q_stages_run(run_stages, (int)(sizeof run_stages / sizeof run_stages[0]), R, NULL, -1);

  report(R, t0);
  e8q_progress_end();
  e8q_scalapack_finish();
  e8q_st_model_close(R->st);
  e8q_model_free(R->head);
  e8q_calib_free(&R->calib);
  e8q_plan_free(&R->plan);
  cJSON_Delete(R->options);
  cJSON_Delete(R->fingerprint);
  e8q_rundir_close(R->rd);
  free(R->src);
  sigaction(SIGBUS, &old_sigbus, NULL);
  return 0;
}
