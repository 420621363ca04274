/* coordinator/run.c: the stage loop of `e8q quantize` (coordinator/run.h). */
#include "coordinator/eval.h"
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
#include "coordinator/progress.h"
#include "coordinator/run_internal.h"
#include "io/atomic.h"
#include "io/ckpt.h"
#include "io/gguf.h"
#include "io/text.h"
#include "io/tokenizer.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "shard/layout.h"
#include "worker/cholesky.h"
#include "worker/finetune.h"
#include "worker/forward.h"
#include "worker/hessian.h"

/* ================================================================ stage timing */
const char *const e8q_run_stage_names[E8Q_N_STAGES] = {"embed",      "hessian",     "quantize", "block-ft",
                                                        "propagate",  "e2e-targets", "e2e",      "gather",
                                                        "validate",   "pack"};

double e8q_run_stage_begin(void) { return e8q_now(); }

void e8q_run_stage_end(e8q_run *R, e8q_run_stage s, double t) { R->stage_s[s] += e8q_now() - t; }

/* ================================================================ helpers */
int e8q_run_bcast_int(int v) {
  e8q_comm_bcast(e8q_comm_get(), E8Q_MEM_HOST, &v, sizeof v, 0);
  return v;
}

int e8q_run_have(e8q_run *R, const char *rel) { return e8q_run_bcast_int(R->rank == 0 ? e8q_rundir_have(R->rd, rel) : 0); }

int e8q_run_has_step(e8q_run *R, const char *step) {
  return e8q_run_bcast_int(R->rank == 0 ? e8q_journal_has_step(R->rd->journal, step) : 0);
}

void e8q_run_step(e8q_run *R, const char *step) {
  if (R->rank == 0) e8q_journal_step(R->rd->journal, step);
}

static void barrier(void) { e8q_comm_barrier(e8q_comm_get()); }

static size_t act_floats(const e8q_run *R) { return (size_t)R->T * R->dim; }

/* Files written by every rank: each sends "rel sha size\n" lines to rank 0, which journals them
 * in rank order (so the journal does not depend on timing). */
void e8q_run_journal_files(e8q_run *R, const char *lines) {
  size_t len = strlen(lines);
  size_t *lens = R->rank == 0 ? e8q_malloc(sizeof(size_t) * (size_t)R->size, "lengths") : NULL; /* [size] */
  e8q_comm_gather(R->comm, E8Q_MEM_HOST, &len, sizeof len, lens, 0);
  char *all = NULL;
  if (R->rank == 0) {
    size_t tot = 0;
    for (int r = 0; r < R->size; r++) tot += lens[r];
    all = e8q_malloc(tot + 1, "journal lines");
    all[tot] = '\0';
  }
  e8q_comm_gatherv(R->comm, E8Q_MEM_HOST, lines, len, all, lens, 0);
  if (R->rank == 0) {
    char *save = NULL;
    for (char *l = strtok_r(all, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
      char rel[512], sha[65];
      unsigned long long size;
      E8Q_CHECK(sscanf(l, "%511s %64s %llu", rel, sha, &size) == 3, "internal: bad file line '%s'", l);
      e8q_journal_file(R->rd->journal, rel, sha, size);
    }
    free(all);
    free(lens);
  }
}

/* ================================================================ the source model under the run
 * A source file changed during the run: truncated, its mapped pages raise SIGBUS (turned into a
 * message naming the model by source_sigbus); rewritten in place, its size/inode/mtime no longer
 * match what was recorded when the fingerprint was hashed (e8q_run_source_check, before every
 * block commit and after gather). A rerun re-hashes every file (plan.json's fingerprint) and
 * refuses a changed one by name. */
static char g_sigbus_msg[8704];
static size_t g_sigbus_len;

static void source_sigbus(int sig) {
  (void)sig;
  ssize_t w = write(2, g_sigbus_msg, g_sigbus_len); /* async-signal-safe: a fixed message */
  (void)w;
  _exit(70);
}

/* all ranks: SIGBUS while the run reads mapped files names the source model */
static void source_sigbus_install(const e8q_run_opts *o, struct sigaction *old) {
  int n = snprintf(g_sigbus_msg, sizeof g_sigbus_msg,
                   "e8q: error: SIGBUS reading a memory-mapped file: a file of the source model %s (for example "
                   "%s/model.safetensors) or of --run-dir %s was truncated or changed while this run read it. Restore "
                   "the original file and rerun the same command (the run resumes from %s)\n",
                   o->model, o->model, o->run_dir, o->run_dir);
  g_sigbus_len = n > 0 && (size_t)n < sizeof g_sigbus_msg ? (size_t)n : sizeof g_sigbus_msg - 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = source_sigbus;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, old);
}

static int src_stat(const char *path, e8q_run_src_file *f) {
  struct stat sb;
  if (stat(path, &sb) != 0) return 0;
  f->size = (long long)sb.st_size;
  f->ino = (long long)sb.st_ino;
  f->mtime_ns = (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
  return 1;
}

/* rank 0, right after the fingerprint was hashed: the state of each file it names */
static void source_record(e8q_run *R) {
  const cJSON *files = cJSON_GetObjectItemCaseSensitive(R->fingerprint, "files");
  R->n_src = cJSON_GetArraySize(files);
  R->src = e8q_calloc((size_t)(R->n_src > 0 ? R->n_src : 1), sizeof *R->src, "source files");
  int i = 0;
  const cJSON *c;
  cJSON_ArrayForEach(c, files) {
    e8q_run_src_file *f = &R->src[i++];
    if (e8q_gguf_is_file(R->o->model)) snprintf(f->path, sizeof f->path, "%s", R->o->model);
    else snprintf(f->path, sizeof f->path, "%s/%s", R->o->model, c->string);
    E8Q_CHECK_ERRNO(src_stat(f->path, f), "--model %s: cannot stat %s", R->o->model, f->path);
  }
}

void e8q_run_source_check(e8q_run *R, const char *stage, void (*cleanup)(e8q_run *R, int b), int b) {
  int bad = -1;
  if (R->rank == 0)
    for (int i = 0; i < R->n_src && bad < 0; i++) {
      e8q_run_src_file now;
      if (!src_stat(R->src[i].path, &now) || now.size != R->src[i].size || now.ino != R->src[i].ino ||
          now.mtime_ns != R->src[i].mtime_ns)
        bad = i;
    }
  bad = e8q_run_bcast_int(bad);
  if (bad < 0) return;
  if (cleanup) cleanup(R, b);
  barrier();
  if (R->rank == 0)
    E8Q_FATAL("the source model file %s changed (size, inode or modification time) while this run read it (at %s): "
              "what was computed from it is discarded, nothing read from the changed bytes was committed. Restore "
              "the original file and rerun the same command (the run resumes from %s; a changed file is refused)",
              R->src[bad].path, stage, R->o->run_dir);
  barrier(); /* rank 0 aborts the job */
}

/* ================================================================ activations
 * acts/x{b}/s{i}.ckpt: X_b of calibration sequence i, F32 [T, dim]. */
static void act_rel(int b, int i, char *out, size_t cap) { snprintf(out, cap, "acts/x%d/s%d.ckpt", b, i); }

static void acts_commit(e8q_run *R, int b, const float *X) {
  char rel[256], path[4096];
  if (R->rank == 0) {
    snprintf(rel, sizeof rel, "acts/x%d", b);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    e8q_mkdirs(path);
    e8q_atomic_sweep(path); /* temporaries of a killed run (no rank writes before the barrier) */
  }
  barrier();
  size_t cap = 256 * (size_t)(R->s1 - R->s0 + 1);
  char *lines = e8q_calloc(cap, 1, "file lines");
  for (int i = R->s0; i < R->s1; i++) {
    act_rel(b, i, rel, sizeof rel);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    char lb[16], sb[16], sha[65];
    snprintf(lb, sizeof lb, "%d", b);
    snprintf(sb, sizeof sb, "%d", i);
    const char *meta[] = {"layer_input", lb, "sequence", sb, NULL};
    e8q_ckpt_tensor t = {"x", E8Q_DT_F32, 2, {R->T, R->dim}, X + (size_t)(i - R->s0) * act_floats(R)};
    uint64_t size = 0;
    e8q_ckpt_write(path, "acts", meta, 1, &t, sha, &size);
    size_t l = strlen(lines);
    snprintf(lines + l, cap - l, "%s %s %llu\n", rel, sha, (unsigned long long)size);
  }
  e8q_run_journal_files(R, lines);
  free(lines);
}

/* loads X_b of this rank's sequences when every file is intact; 0 otherwise */
static int acts_load(e8q_run *R, int b, float *X) {
  int ok = 1;
  char rel[256], path[4096];
  if (R->rank == 0)
    for (int i = 0; i < R->plan.devset && ok; i++) {
      act_rel(b, i, rel, sizeof rel);
      ok = e8q_rundir_have(R->rd, rel);
    }
  if (!e8q_run_bcast_int(ok)) return 0;
  for (int i = R->s0; i < R->s1; i++) {
    act_rel(b, i, rel, sizeof rel);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    e8q_safetensors *st = e8q_ckpt_open(path, "acts");
    memcpy(X + (size_t)(i - R->s0) * act_floats(R), e8q_ckpt_get(st, "x", E8Q_DT_F32, (int64_t)act_floats(R)),
           sizeof(float) * act_floats(R));
    e8q_st_close(st);
  }
  return 1;
}

static void acts_remove(e8q_run *R, int b) {
  if (R->rank != 0) return;
  char rel[256], path[4096];
  for (int i = 0; i < R->plan.devset; i++) {
    act_rel(b, i, rel, sizeof rel);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    unlink(path);
  }
  snprintf(rel, sizeof rel, "acts/x%d", b);
  e8q_rundir_path(R->rd, rel, path, sizeof path);
  rmdir(path);
}

/* X0 of this rank's sequences: the embeddings of their tokens */
static void embed_mine(e8q_run *R, float *X) {
  for (int i = R->s0; i < R->s1; i++)
    e8q_model_embed(R->head, R->T, R->calib.ids + (size_t)i * R->T, X + (size_t)(i - R->s0) * act_floats(R));
}

/* X_b from scratch (when its checkpoint is missing or corrupt): embed, then original blocks 0..b-1 */
static void acts_rebuild(e8q_run *R, int b, float *X) {
  embed_mine(R, X);
  e8q_fwd_scratch sc = {0};
  for (int l = 0; l < b; l++) {
    e8q_block blk;
    e8q_block_load(R->st, &R->cfg, l, &blk);
    for (int i = R->s0; i < R->s1; i++)
      e8q_block_forward(&blk, &R->cfg, 1, R->T, X + (size_t)(i - R->s0) * act_floats(R), NULL, &sc);
    e8q_block_free(&blk);
  }
  e8q_fwd_scratch_free(&sc);
}

void e8q_run_acts_rebuild(e8q_run *R, int b, float *X) { acts_rebuild(R, b, X); }

/* ================================================================ Hessians
 * hessians/{b}.{g}.ckpt: "H" F64 [n, n] (sums), "tokens" I64 [1]. */
static void hess_rel(int b, int g, char *out, size_t cap) { snprintf(out, cap, "hessians/%d.%d.ckpt", b, g); }

static void hessians_commit(e8q_run *R, int b, double *const H[E8Q_N_GROUPS], long tokens) {
  if (R->rank != 0) return;
  char rel[256], path[4096], sha[65], lb[16], gb[16];
  int64_t tk = tokens;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    hess_rel(b, g, rel, sizeof rel);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    snprintf(lb, sizeof lb, "%d", b);
    snprintf(gb, sizeof gb, "%d", g);
    const char *meta[] = {"layer", lb, "group", gb, "group_name", e8q_group_names[g], NULL};
    int n = R->plan.groups[g].n;
    e8q_ckpt_tensor t[2] = {{"H", E8Q_DT_F64, 2, {n, n}, H[g]}, {"tokens", E8Q_DT_I64, 1, {1}, &tk}};
    uint64_t size = 0;
    e8q_ckpt_write(path, "hessian", meta, 2, t, sha, &size);
    e8q_journal_file(R->rd->journal, rel, sha, size);
  }
}

static int hessians_load(e8q_run *R, int b, double *const H[E8Q_N_GROUPS], long *tokens) {
  int ok = 1;
  char rel[256], path[4096];
  if (R->rank == 0)
    for (int g = 0; g < E8Q_N_GROUPS && ok; g++) {
      hess_rel(b, g, rel, sizeof rel);
      ok = e8q_rundir_have(R->rd, rel);
    }
  if (!e8q_run_bcast_int(ok)) return 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    hess_rel(b, g, rel, sizeof rel);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    e8q_safetensors *st = e8q_ckpt_open(path, "hessian");
    int64_t n = R->plan.groups[g].n, tk;
    memcpy(H[g], e8q_ckpt_get(st, "H", E8Q_DT_F64, n * n), sizeof(double) * (size_t)(n * n));
    memcpy(&tk, e8q_ckpt_get(st, "tokens", E8Q_DT_I64, 1), sizeof tk);
    *tokens = (long)tk;
    e8q_st_close(st);
  }
  return 1;
}

static void hessians_remove(e8q_run *R, int b) {
  if (R->rank != 0) return;
  char rel[256], path[4096];
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    hess_rel(b, g, rel, sizeof rel);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    unlink(path);
  }
}

/* ================================================================ shards
 * shards/{b}.{g}.part: one quantized group; shards/{b}.e8qs: the block (4 groups, names
 * prefixed with the group name); shards/{b}.ft{g}.ckpt: fine-tuning round g of block b (see
 * "block fine-tuning" below). Names, dtypes and shapes: shard/layout.h. */
static int ft_on(const e8q_run *R);

/* field f of a quantized group's result */
static const void *field_data(const e8q_qlin_result *q, e8q_field f) {
  switch (f) {
  case E8Q_FIELD_SU: return q->SU;
  case E8Q_FIELD_SV: return q->SV;
  case E8Q_FIELD_WSCALE: return &q->Wscale;
  case E8Q_FIELD_FUSE_SCALES: return q->fuse_scales;
  case E8Q_FIELD_WEIGHT: return q->dense;
  case E8Q_FIELD_CODES: return q->codes;
  case E8Q_FIELD_CODES2: return q->codes2;
  default: E8Q_FATAL("internal: unknown field %d", (int)f);
  }
}

/* the fields of group gp (shard/layout.h), named for a shard (g, its index) or for a part
 * (g = E8Q_LAYOUT_PART), with their data from `data` (one pointer per field) */
static int group_tensors(const e8q_run *R, const e8q_group_plan *gp, int g, const void *const data[E8Q_N_FIELDS],
                         char names[][160], e8q_ckpt_tensor *t) {
  e8q_field_desc fd[E8Q_LAYOUT_MAX_FIELDS];
  const int k = e8q_layout_group_fields(gp, e8q_method_dense(R->o->method), e8q_cb_from_bits(R->o->bits), fd);
  for (int i = 0; i < k; i++) {
    e8q_layout_group_name(names[i], 160, g, fd[i].f);
    t[i] = (e8q_ckpt_tensor){names[i], fd[i].dt, fd[i].ndim, {fd[i].shape[0], fd[i].shape[1]}, data[fd[i].f]};
  }
  return k;
}

static void part_commit(e8q_run *R, int b, int g, const e8q_qlin_result *q) {
  if (R->rank != 0) return;
  const e8q_group_plan *gp = &R->plan.groups[g];
  char names[E8Q_LAYOUT_MAX_FIELDS][160];
  e8q_ckpt_tensor t[E8Q_LAYOUT_MAX_FIELDS];
  const void *data[E8Q_N_FIELDS];
  for (int f = 0; f < E8Q_N_FIELDS; f++) data[f] = field_data(q, (e8q_field)f);
  int k = group_tensors(R, gp, E8Q_LAYOUT_PART, data, names, t);
  char rel[256], path[4096], sha[65], lb[16], gb[16], pl[40], rt[16], dp[40];
  e8q_layout_part_rel(rel, sizeof rel, b, g);
  e8q_rundir_path(R->rd, rel, path, sizeof path);
  snprintf(lb, sizeof lb, "%d", b);
  snprintf(gb, sizeof gb, "%d", g);
  snprintf(pl, sizeof pl, "%.17g", q->proxy_loss);
  snprintf(rt, sizeof rt, "%d", q->retries);
  snprintf(dp, sizeof dp, "%.17g", q->damp);
  const char *meta[] = {"layer", lb, "group", gb, "group_name", gp->name, "proxy_loss", pl, "retries", rt, "damp", dp,
                        "factorisation", q->ldl_message, NULL};
  uint64_t size = 0;
  e8q_ckpt_write(path, "part", meta, k, t, sha, &size);
  e8q_journal_file(R->rd->journal, rel, sha, size);
  if (q->retries > 0) {
    char note[256];
    snprintf(note, sizeof note,
             "{\"event\":\"factorisation_retry\",\"layer\":%d,\"group\":\"%s\",\"retries\":%d,\"damp\":%.6g}", b,
             gp->name, q->retries, q->damp);
    e8q_journal_note(R->rd->journal, note);
    e8q_warn("layer %d %s: Hessian not positive definite, factorised after %d retr%s with damping %.3g (recorded)", b,
             gp->name, q->retries, q->retries > 1 ? "ies" : "y", q->damp);
  }
}

/* rank 0: shards/{b}.e8qs from the four parts; the stats of each group in the metadata. With
 * block fine-tuning: SU/SV of the groups tuned in the last round (qkv, o, upgate) and the tuned
 * norms ("input_layernorm.weight", "post_attention_layernorm.weight" F32 [dim]) from that
 * round's checkpoint, and per round the held-out MSE before and after in the stats. */
static void block_commit(e8q_run *R, int b) {
  if (R->rank != 0) return;
  e8q_safetensors *parts[E8Q_N_GROUPS];
  e8q_ckpt_tensor t[E8Q_N_GROUPS * E8Q_LAYOUT_MAX_FIELDS + 2];
  char names[E8Q_N_GROUPS * E8Q_LAYOUT_MAX_FIELDS + 2][160];
  int k = 0;
  cJSON *stats = cJSON_CreateObject();
  e8q_safetensors *ft = NULL; /* the last round's checkpoint */
  e8q_ft_state L;              /* its layout */
  const float *pft = NULL;     /* [L.n] its tuned parameters */
  if (ft_on(R)) {
    char rel[256], path[4096];
    e8q_layout_ft_rel(rel, sizeof rel, b, E8Q_GROUP_DOWN - 1);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    ft = e8q_ckpt_open(path, "ft");
    e8q_ft_layout(&L, &R->cfg, E8Q_GROUP_DOWN);
    pft = e8q_ckpt_get(ft, "p", E8Q_DT_F32, (int64_t)L.n);
  }
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    char rel[256], path[4096];
    e8q_layout_part_rel(rel, sizeof rel, b, g);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    parts[g] = e8q_ckpt_open(path, "part");
    const e8q_group_plan *gp = &R->plan.groups[g];
    /* the part's fields, in place in its mapping (SU/SV tuned by the last round instead) */
    e8q_field_desc fd[E8Q_LAYOUT_MAX_FIELDS];
    const int nf = e8q_layout_group_fields(gp, e8q_method_dense(R->o->method), e8q_cb_from_bits(R->o->bits), fd);
    const void *data[E8Q_N_FIELDS] = {0};
    for (int i = 0; i < nf; i++)
      data[fd[i].f] = e8q_ckpt_get(parts[g], e8q_field_names[fd[i].f], fd[i].dt, e8q_field_numel(&fd[i]));
    if (pft && g < L.n_quant) {
      data[E8Q_FIELD_SU] = pft + L.off_SU[g];
      data[E8Q_FIELD_SV] = pft + L.off_SV[g];
    }
    k += group_tensors(R, gp, g, data, names + k, t + k);
    cJSON *s = cJSON_AddObjectToObject(stats, gp->name);
    const char *pl = e8q_ckpt_meta(parts[g], "proxy_loss"), *rt = e8q_ckpt_meta(parts[g], "retries"),
               *dp = e8q_ckpt_meta(parts[g], "damp");
    cJSON_AddNumberToObject(s, "proxy_loss", pl ? atof(pl) : -1);
    cJSON_AddNumberToObject(s, "retries", rt ? atoi(rt) : 0);
    cJSON_AddNumberToObject(s, "damp", dp ? atof(dp) : 0);
    const char *fm = e8q_ckpt_meta(parts[g], "factorisation");
    cJSON_AddStringToObject(s, "factorisation", fm ? fm : "");
    if (ft && g < E8Q_GROUP_DOWN) { /* the round after this group */
      char rel[256], path[4096];
      e8q_layout_ft_rel(rel, sizeof rel, b, g);
      e8q_rundir_path(R->rd, rel, path, sizeof path);
      e8q_safetensors *fr = e8q_ckpt_open(path, "ft");
      cJSON *f = cJSON_AddObjectToObject(s, "fine_tuning");
      cJSON_AddNumberToObject(f, "held_out_mse_before", e8q_ckpt_meta_num(fr, "init_loss", path));
      cJSON_AddNumberToObject(f, "held_out_mse_after", e8q_ckpt_meta_num(fr, "best_loss", path));
      cJSON_AddNumberToObject(f, "epochs", e8q_ckpt_meta_num(fr, "epoch", path));
      cJSON_AddNumberToObject(f, "steps", e8q_ckpt_meta_num(fr, "step", path));
      e8q_st_close(fr);
    }
  }
  if (pft) { /* the tuned norms */
    t[k++] = (e8q_ckpt_tensor){e8q_layout_norm_names[E8Q_NORM_ATTN], E8Q_DT_F32, 1, {R->cfg.dim}, pft + L.off_attn};
    t[k++] = (e8q_ckpt_tensor){e8q_layout_norm_names[E8Q_NORM_FFN], E8Q_DT_F32, 1, {R->cfg.dim}, pft + L.off_ffn};
  }
  char *stats_s = cJSON_PrintUnformatted(stats);
  cJSON_Delete(stats);
  char rel[256], path[4096], sha[65], lb[16];
  e8q_layout_shard_rel(rel, sizeof rel, b);
  e8q_rundir_path(R->rd, rel, path, sizeof path);
  snprintf(lb, sizeof lb, "%d", b);
  const char *meta[] = {"layer", lb, "stats", stats_s, NULL};
  uint64_t size = 0;
  e8q_ckpt_write(path, "shard", meta, k, t, sha, &size);
  free(stats_s);
  for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_st_close(parts[g]);
  if (ft) e8q_st_close(ft);
  e8q_fault_point("commit.mid");
  e8q_journal_file(R->rd->journal, rel, sha, size);
}

static void parts_remove(e8q_run *R, int b) {
  if (R->rank != 0) return;
  char rel[256], path[4096];
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    e8q_layout_part_rel(rel, sizeof rel, b, g);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    unlink(path);
    e8q_layout_ft_rel(rel, sizeof rel, b, g); /* fine-tuning checkpoints (any mode: a run may have left them) */
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    unlink(path);
  }
}

/* ================================================================ block fine-tuning
 * shards/{b}.ft{g}.ckpt: the state of fine-tuning round g of block b (after group g was
 * quantized, g < E8Q_GROUP_DOWN; worker/finetune.h): "p", "best", "m", "v" F32 [n] (the flat
 * layout of e8q_ft_layout with groups 0..g quantized; "p" is the best held-out state once the
 * round is done); metadata: epoch, step, worse, started, done and the losses (%.17g, exact).
 * Rank 0 commits it after every epoch and at the end of the round; the data order is a function
 * of the epoch, so a rerun continues from the last epoch reached, bit for bit. */
static int ft_on(const e8q_run *R) {
  return (R->o->ft == E8Q_FT_BLOCK || R->o->ft == E8Q_FT_ALL) && !e8q_method_dense(R->o->method);
}

static void ft_commit(e8q_run *R, int b, int g, const e8q_ft_state *S) {
  if (R->rank != 0) return;
  char rel[256], path[4096], sha[65], v[12][40];
  e8q_layout_ft_rel(rel, sizeof rel, b, g);
  e8q_rundir_path(R->rd, rel, path, sizeof path);
  snprintf(v[0], sizeof v[0], "%d", b);
  snprintf(v[1], sizeof v[1], "%d", g);
  snprintf(v[2], sizeof v[2], "%d", S->n_quant);
  snprintf(v[3], sizeof v[3], "%d", S->epoch);
  snprintf(v[4], sizeof v[4], "%ld", S->step);
  snprintf(v[5], sizeof v[5], "%d", S->worse);
  snprintf(v[6], sizeof v[6], "%d", S->started);
  snprintf(v[7], sizeof v[7], "%d", S->done);
  snprintf(v[8], sizeof v[8], "%.17g", S->init_loss);
  snprintf(v[9], sizeof v[9], "%.17g", S->best_loss);
  snprintf(v[10], sizeof v[10], "%.17g", S->train_loss);
  snprintf(v[11], sizeof v[11], "%.17g", S->valid_loss);
  const char *meta[] = {"layer", v[0], "group", v[1], "group_name", e8q_group_names[g], "n_quant", v[2],
                        "epoch", v[3], "step", v[4], "worse", v[5], "started", v[6], "done", v[7],
                        "init_loss", v[8], "best_loss", v[9], "train_loss", v[10], "valid_loss", v[11], NULL};
  int64_t n = (int64_t)S->n;
  e8q_ckpt_tensor t[4] = {{"p", E8Q_DT_F32, 1, {n}, S->p},
                          {"best", E8Q_DT_F32, 1, {n}, S->best},
                          {"m", E8Q_DT_F32, 1, {n}, S->m},
                          {"v", E8Q_DT_F32, 1, {n}, S->v}};
  uint64_t size = 0;
  e8q_ckpt_write(path, "ft", meta, 4, t, sha, &size);
  e8q_journal_file(R->rd->journal, rel, sha, size);
}

/* S initialised for round g (e8q_ft_state_init with g+1 quantized groups). Collective: 1 and S
 * restored when shards/{b}.ft{g}.ckpt was committed and is intact, else 0 and S untouched. */
static int ft_load(e8q_run *R, int b, int g, e8q_ft_state *S) {
  char rel[256], path[4096];
  e8q_layout_ft_rel(rel, sizeof rel, b, g);
  if (!e8q_run_have(R, rel)) return 0;
  snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
  e8q_safetensors *st = e8q_ckpt_open(path, "ft");
  E8Q_CHECK((int)e8q_ckpt_meta_num(st, "n_quant", path) == S->n_quant,
            "%s: layer %d round %s: %d quantized groups in the checkpoint, %d expected", path, b, e8q_group_names[g],
            (int)e8q_ckpt_meta_num(st, "n_quant", path), S->n_quant);
  const int64_t n = (int64_t)S->n;
  memcpy(S->p, e8q_ckpt_get(st, "p", E8Q_DT_F32, n), sizeof(float) * S->n);
  memcpy(S->best, e8q_ckpt_get(st, "best", E8Q_DT_F32, n), sizeof(float) * S->n);
  memcpy(S->m, e8q_ckpt_get(st, "m", E8Q_DT_F32, n), sizeof(float) * S->n);
  memcpy(S->v, e8q_ckpt_get(st, "v", E8Q_DT_F32, n), sizeof(float) * S->n);
  S->epoch = (int)e8q_ckpt_meta_num(st, "epoch", path);
  S->step = (long)e8q_ckpt_meta_num(st, "step", path);
  S->worse = (int)e8q_ckpt_meta_num(st, "worse", path);
  S->started = (int)e8q_ckpt_meta_num(st, "started", path);
  S->done = (int)e8q_ckpt_meta_num(st, "done", path);
  S->init_loss = e8q_ckpt_meta_num(st, "init_loss", path);
  S->best_loss = e8q_ckpt_meta_num(st, "best_loss", path);
  S->train_loss = e8q_ckpt_meta_num(st, "train_loss", path);
  S->valid_loss = e8q_ckpt_meta_num(st, "valid_loss", path);
  e8q_st_close(st);
  return 1;
}

/* the finished state of round g (its tuned dense weights and norms feed what follows) */
static void ft_finished(e8q_run *R, int b, int g, e8q_ft_state *S) {
  e8q_ft_state_init(S, &R->cfg, g + 1);
  E8Q_CHECK(ft_load(R, b, g, S) && S->done,
            "internal: layer %d: the fine-tuning round after %s is not finished in %s (rerun the same command)", b,
            e8q_group_names[g], R->o->run_dir);
}

/* one round: the block with groups 0..g quantized (codes from their parts), bound to S */
typedef struct {
  e8q_run *R;
  int b, g;
  e8q_ft_state S;
  e8q_block tb;                                  /* the block under training */
  e8q_qlinear ql[E8Q_N_GROUPS];                  /* quantized groups 0..g, SU/SV in S.p */
  uint16_t *codes[E8Q_N_GROUPS];                 /* [m, n_pad/8] owned copies (aligned) */
  void *codes2[E8Q_N_GROUPS];                    /* [m, n_pad/8] u16 / u8, or NULL */
  float fs[E8Q_N_GROUPS][E8Q_PLAN_MAX_PIECES];   /* fuse scales (borrowed by ql) */
  e8q_had_factor fac[E8Q_N_GROUPS][2];           /* factors of n_pad and of m */
} ft_round_ctx;

/* S of round g from the last round (or the original block blk for g = 0) and part g */
static void ft_round_fresh(e8q_run *R, int b, int g, const e8q_block *blk, e8q_ft_state *S) {
  const int D = R->cfg.dim;
  if (g == 0) {
    memcpy(S->p + S->off_attn, blk->attn_norm, sizeof(float) * (size_t)D);
    memcpy(S->p + S->off_ffn, blk->ffn_norm, sizeof(float) * (size_t)D);
    for (int k = 1; k < E8Q_N_GROUPS; k++)
      memcpy(S->p + S->off_W[k], blk->lin[k].w, sizeof(float) * (size_t)blk->lin[k].m * blk->lin[k].n);
  } else {
    e8q_ft_state P;
    ft_finished(R, b, g - 1, &P);
    for (int k = 0; k < g; k++) {
      memcpy(S->p + S->off_SU[k], P.p + P.off_SU[k], sizeof(float) * (size_t)R->plan.groups[k].n_pad);
      memcpy(S->p + S->off_SV[k], P.p + P.off_SV[k], sizeof(float) * (size_t)R->plan.groups[k].m);
    }
    memcpy(S->p + S->off_attn, P.p + P.off_attn, sizeof(float) * (size_t)D);
    memcpy(S->p + S->off_ffn, P.p + P.off_ffn, sizeof(float) * (size_t)D);
    for (int k = g + 1; k < E8Q_N_GROUPS; k++)
      memcpy(S->p + S->off_W[k], P.p + P.off_W[k], sizeof(float) * (size_t)R->plan.groups[k].m * R->plan.groups[k].n);
    e8q_ft_state_free(&P);
  }
  /* the new group's signs from its part */
  const e8q_group_plan *gp = &R->plan.groups[g];
  char rel[256], path[4096];
  e8q_layout_part_rel(rel, sizeof rel, b, g);
  snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
  e8q_safetensors *st = e8q_ckpt_open(path, "part");
  memcpy(S->p + S->off_SU[g], e8q_ckpt_get(st, e8q_field_names[E8Q_FIELD_SU], E8Q_DT_F32, gp->n_pad),
         sizeof(float) * (size_t)gp->n_pad);
  memcpy(S->p + S->off_SV[g], e8q_ckpt_get(st, e8q_field_names[E8Q_FIELD_SV], E8Q_DT_F32, gp->m),
         sizeof(float) * (size_t)gp->m);
  e8q_st_close(st);
}

/* Collective. 0 when round g is already finished (nothing built); else 1 with F ready to train
 * (its state from the round's checkpoint when there is one, fresh otherwise). */
static int ft_round_open(e8q_run *R, int b, int g, const e8q_block *blk, ft_round_ctx *F) {
  memset(F, 0, sizeof *F);
  F->R = R;
  F->b = b;
  F->g = g;
  e8q_ft_state_init(&F->S, &R->cfg, g + 1);
  if (ft_load(R, b, g, &F->S)) {
    if (F->S.done) {
      e8q_ft_state_free(&F->S);
      return 0;
    }
  } else {
    ft_round_fresh(R, b, g, blk, &F->S);
  }
  const e8q_codebook_id cb = e8q_cb_from_bits(R->o->bits);
  for (int k = 0; k <= g; k++) {
    const e8q_group_plan *gp = &R->plan.groups[k];
    char rel[256], path[4096], name[128];
    e8q_layout_part_rel(rel, sizeof rel, b, k);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    e8q_safetensors *st = e8q_ckpt_open(path, "part");
    const int64_t nc = gp->n_pad / 8, nco = (int64_t)gp->m * nc;
    e8q_qlinear_desc d;
    memset(&d, 0, sizeof d);
    d.m = gp->m;
    d.n = gp->n;
    d.n_pad = gp->n_pad;
    d.codebook = cb;
    e8q_layout_codes_read(st, E8Q_LAYOUT_PART, cb, nco, &F->codes[k], &F->codes2[k]);
    d.codes = F->codes[k];
    d.codes2 = F->codes2[k];
    d.SU = F->S.p + F->S.off_SU[k];
    d.SV = F->S.p + F->S.off_SV[k];
    memcpy(&d.Wscale, e8q_ckpt_get(st, e8q_field_names[E8Q_FIELD_WSCALE], E8Q_DT_F32, 1), sizeof(float));
    d.n_pieces = gp->n_pieces;
    d.piece_rows = gp->n_pieces > 1 ? gp->piece_rows : NULL;
    memcpy(F->fs[k], e8q_ckpt_get(st, e8q_field_names[E8Q_FIELD_FUSE_SCALES], E8Q_DT_F32, gp->n_pieces),
           sizeof(float) * (size_t)gp->n_pieces);
    d.fuse_scales = F->fs[k];
    e8q_st_close(st);
    e8q_had_factor_build(&F->fac[k][0], gp->K_n, E8Q_HAD_SEED);
    e8q_had_factor_build(&F->fac[k][1], gp->K_m, E8Q_HAD_SEED);
    d.K_in = gp->K_n;
    d.R_in = gp->K_n > 1 ? F->fac[k][0].Rf : NULL;
    d.K_out = gp->K_m;
    d.R_out = gp->K_m > 1 ? F->fac[k][1].Rf : NULL;
    e8q_layout_layer_tensor(name, sizeof name, b, gp->name);
    e8q_qlinear_init(&F->ql[k], &d, name);
    F->tb.lin[k].m = gp->m;
    F->tb.lin[k].n = gp->n;
    F->tb.lin[k].w = NULL;
    F->tb.lin[k].q = &F->ql[k];
  }
  e8q_ft_bind(&F->S, &R->cfg, &F->tb);
  return 1;
}

static void ft_round_close(ft_round_ctx *F) {
  for (int k = 0; k <= F->g; k++) {
    e8q_qlinear_free(&F->ql[k]);
    free(F->codes[k]);
    free(F->codes2[k]);
    e8q_had_factor_free(&F->fac[k][0]);
    e8q_had_factor_free(&F->fac[k][1]);
  }
  e8q_ft_state_free(&F->S);
  memset(F, 0, sizeof *F);
}

/* after every epoch and at the end of a round (every rank): commit, report, fault point */
static void ft_epoch_end(void *ctx, const e8q_ft_state *S) {
  ft_round_ctx *F = ctx;
  e8q_run *R = F->R;
  ft_commit(R, F->b, F->g, S);
  barrier(); /* the checkpoint is on disk before any rank can be killed at ft.epoch */
  const char *gn = R->plan.groups[F->g].name;
  if (R->rank == 0) {
    cJSON *f = cJSON_CreateObject();
    cJSON_AddNumberToObject(f, "layer", F->b);
    cJSON_AddStringToObject(f, "group", gn);
    cJSON_AddNumberToObject(f, "epoch", S->epoch);
    if (S->done) {
      cJSON_AddNumberToObject(f, "held_out_mse_before", S->init_loss);
      cJSON_AddNumberToObject(f, "held_out_mse_after", S->best_loss);
      e8q_info("e8q: layer %d %s: fine-tuned, %d epoch%s: held-out MSE %.6g -> %.6g", F->b, gn, S->epoch,
               S->epoch == 1 ? "" : "s", S->init_loss, S->best_loss);
      e8q_progress_event("ft_round", f, 0);
    } else {
      cJSON_AddNumberToObject(f, "train_mse", S->train_loss);
      cJSON_AddNumberToObject(f, "held_out_mse", S->valid_loss);
      cJSON_AddNumberToObject(f, "held_out_mse_before", S->init_loss);
      e8q_info("e8q: layer %d %s: fine-tuning epoch %d/%d: train MSE %.6g, held-out MSE %.6g (before %.6g)", F->b, gn,
               S->epoch, R->o->ft_epochs, S->train_loss, S->valid_loss, S->init_loss);
      e8q_progress_event("ft_epoch", f, 0);
    }
  }
  if (!S->done) e8q_fault_point("ft.epoch");
}

/* Y = original block(X) of this rank's sequences (the targets of fine-tuning and X_{b+1}) */
static void targets_compute(e8q_run *R, const e8q_block *blk) {
  const int n_my = R->s1 - R->s0;
  e8q_fwd_scratch sc = {0};
  memcpy(R->Y, R->X, sizeof(float) * (size_t)n_my * act_floats(R));
  for (int i = 0; i < n_my; i++) e8q_block_forward(blk, &R->cfg, 1, R->T, R->Y + (size_t)i * act_floats(R), NULL, &sc);
  e8q_fwd_scratch_free(&sc);
}

/* the round after group g of block b, unless finished; *y_valid: R->Y holds original block(X) */
static void ft_block_round(e8q_run *R, int b, int g, const e8q_block *blk, int *y_valid) {
  ft_round_ctx F;
  if (!ft_round_open(R, b, g, blk, &F)) return;
  const double t = e8q_run_stage_begin();
  if (!*y_valid) { /* Hessians were loaded from disk: the targets were never computed */
    targets_compute(R, blk);
    *y_valid = 1;
  }
  e8q_ft_opts fo = {.epochs = R->o->ft_epochs,
                    .lr = R->o->ft_lr,
                    .susv_lr = R->o->ft_susv_lr,
                    .batch = R->o->ft_batch,
                    .early_stop = E8Q_FT_EARLY_STOP,
                    .seed = R->o->seed,
                    .layer = b,
                    .group = g};
  e8q_ft_hooks hk = {ft_epoch_end, &F};
  const int n_valid = R->o->ft_valid, n_train = R->plan.devset - n_valid;
  e8q_ft_round(&fo, R->comm, &R->cfg, &F.tb, &F.S, R->T, n_train, n_valid, R->s0, R->s1, R->X, R->Y, &hk);
  ft_round_close(&F);
  e8q_run_stage_end(R, E8Q_STAGE_BLOCK_FT, t);
}

/* ================================================================ one block */
/* the uncommitted intermediates of block b (e8q_run_source_check's cleanup) */
static void block_discard(e8q_run *R, int b) {
  parts_remove(R, b);
  hessians_remove(R, b);
  if (b + 1 < R->cfg.n_layers) acts_remove(R, b + 1);
  else if (e8q_run_e2e_on(R)) e8q_run_e2e_targets_remove(R);
}

/* what gather read from the source model (embeddings, norms): redone by the rerun */
static void gather_discard(e8q_run *R, int b) {
  (void)b;
  if (R->rank != 0) return;
  char path[4096];
  e8q_rundir_path(R->rd, "model.safetensors", path, sizeof path);
  unlink(path);
}

static void run_block(e8q_run *R, int b) {
  char step[64], what[64];
  e8q_block blk;
  e8q_block_load(R->st, &R->cfg, b, &blk);
  int n_my = R->s1 - R->s0;

  /* ---------------------------------------------------------- hessian */
  double *H[E8Q_N_GROUPS];
  for (int g = 0; g < E8Q_N_GROUPS; g++)
    H[g] = e8q_malloc(sizeof(double) * (size_t)R->plan.groups[g].n * R->plan.groups[g].n, "Hessian");
  long tokens = 0;
  const int resumed = hessians_load(R, b, H, &tokens);
  int y_valid = !resumed; /* the Hessian pass leaves Y = block(X) */
  if (!resumed) {
    const double t = e8q_run_stage_begin();
    e8q_hessian_acc acc;
    e8q_hessian_acc_init(&acc, &R->cfg, R->T);
    e8q_fwd_scratch sc = {0};
    memcpy(R->Y, R->X, sizeof(float) * (size_t)n_my * act_floats(R));
    for (int i = 0; i < n_my; i++) {
      e8q_hessian_acc_seq(&acc, &blk, &R->cfg, R->Y + (size_t)i * act_floats(R), &sc);
      /* chunks of E8Q_SEQ_CHUNK sequences (absolute indices; rank splits are chunk-aligned) */
      if ((R->s0 + i + 1) % E8Q_SEQ_CHUNK == 0) e8q_hessian_acc_flush(&acc);
      if (i == 0) e8q_fault_point("hessian.mid");
    }
    e8q_fwd_scratch_free(&sc);
    e8q_hessian_acc_reduce(&acc, H, &tokens);
    e8q_hessian_acc_free(&acc);
    hessians_commit(R, b, H, tokens);
    e8q_run_stage_end(R, E8Q_STAGE_HESSIAN, t);
    e8q_fault_point("hessian.done");
  }
  e8q_progress_step("hessian", b, NULL, resumed);

  /* ---------------------------------------------------------- quantize */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &R->plan.groups[g];
    char rel[256];
    e8q_layout_part_rel(rel, sizeof rel, b, g);
    int done = e8q_run_have(R, rel);
    if (!done) {
      const double t = e8q_run_stage_begin();
      e8q_qlin_result q;
      /* after a fine-tuning round, the group is quantized from its TUNED dense weight (its
       * Hessian stays the one of the original activations) */
      e8q_ft_state P;
      memset(&P, 0, sizeof P);
      const float *W = blk.lin[g].w;
      if (ft_on(R) && g > 0) {
        ft_finished(R, b, g - 1, &P);
        W = P.p + P.off_W[g];
      }
      /* ScaLAPACK for Hessians of n_pad >= --scalapack-min on more than one rank, or always */
      R->q.scalapack = R->o->scalapack == E8Q_SCALAPACK_ALWAYS ||
                       (R->o->scalapack == E8Q_SCALAPACK_AUTO && R->size > 1 && gp->n_pad >= R->o->scalapack_min);
      e8q_quantize_group(&R->q, gp, b, g, W, H[g], tokens, &q);
      e8q_ft_state_free(&P);
      part_commit(R, b, g, &q);
      if (R->rank == 0) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddNumberToObject(f, "layer", b);
        cJSON_AddStringToObject(f, "group", gp->name);
        cJSON_AddNumberToObject(f, "proxy_loss", q.proxy_loss);
        cJSON_AddNumberToObject(f, "retries", q.retries);
        e8q_progress_event("linear", f, 0);
      }
      e8q_qlin_result_free(&q);
      e8q_run_stage_end(R, E8Q_STAGE_QUANTIZE, t);
      if (g < E8Q_N_GROUPS - 1) e8q_fault_point("quantize.mid");
    }
    snprintf(what, sizeof what, "%s", gp->name);
    e8q_progress_step("quantize", b, what, done);
    /* block fine-tuning after qkv, o and upgate (not after down): SU/SV of the quantized
     * linears, the norms and the dense weights of the others, on MSE to Y = original block(X),
     * data parallel with exact gradient sums (worker/finetune.h); checkpointed per epoch */
    if (ft_on(R) && g < E8Q_GROUP_DOWN) ft_block_round(R, b, g, &blk, &y_valid);
  }
  e8q_fault_point("quantize.done");
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(H[g]);

  /* ---------------------------------------------------------- propagate
   * reference behaviour: X_{b+1} = original block b (X_b) */
  int last = b + 1 == R->cfg.n_layers; /* nothing to propagate after the last block */
  int have_next = last || acts_load(R, b + 1, R->Y);
  if (!have_next) {
    const double t = e8q_run_stage_begin();
    if (!y_valid) targets_compute(R, &blk);
    y_valid = 1;
    acts_commit(R, b + 1, R->Y);
    e8q_run_stage_end(R, E8Q_STAGE_PROPAGATE, t);
    e8q_fault_point("propagate.done");
  }
  /* end-to-end fine-tuning: the last block propagates too, X_L = original block L-1 (X_{L-1}),
   * for the original model's next-token targets (coordinator/e2e.c) */
  if (last && e8q_run_e2e_on(R) && !e8q_run_e2e_targets_have(R)) {
    const double t = e8q_run_stage_begin();
    if (!y_valid) targets_compute(R, &blk);
    e8q_run_e2e_targets_commit(R, R->Y);
    e8q_run_stage_end(R, E8Q_STAGE_E2E_TARGETS, t);
  }
  e8q_progress_step("propagate", b, NULL, have_next && !last);
  e8q_block_free(&blk);

  /* ---------------------------------------------------------- commit
   * only when the source model did not change while block b was read: otherwise its
   * intermediates (Hessians, parts, fine-tuning rounds, X_{b+1}) are removed and the run stops */
  snprintf(step, sizeof step, "layer %d commit", b);
  e8q_run_source_check(R, step, block_discard, b);
  block_commit(R, b);
  snprintf(step, sizeof step, "block %d", b);
  e8q_run_step(R, step);
  barrier();
  e8q_fault_point("commit.done");
  parts_remove(R, b);
  hessians_remove(R, b);
  acts_remove(R, b);
  e8q_progress_step("commit", b, NULL, 0);
}

/* ================================================================ the run */
static cJSON *options_json(const e8q_run_opts *o, const e8q_run *R) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "bits", o->bits);
  cJSON_AddStringToObject(j, "method", e8q_method_cli_name(o->method));
  cJSON_AddNumberToObject(j, "rho", R->q.rho);
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
  /* --eval-text, --eval-lines and --log-json only affect reporting: not part of the run's
   * identity (a rerun may change or drop them; validation_current decides whether the recorded
   * evaluation still holds) */
  return j;
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

int e8q_run_quantize(const e8q_run_opts *o) {
  e8q_run RS;
  e8q_run *R = &RS;
  memset(R, 0, sizeof *R);
  R->o = o;
  R->comm = e8q_comm_get();
  R->rank = e8q_comm_rank(R->comm);
  R->size = e8q_comm_size(R->comm);
  double t0 = e8q_now();
  /* Determinism: OpenBLAS's multi-threaded kernels can change the last bits of sums (Hessians,
   * LDLQ feedback, proxy losses) with the thread count; one BLAS thread per rank makes the
   * artifact independent of OPENBLAS_NUM_THREADS. Parallelism comes from the ranks (and from
   * OpenMP in the kernels, whose results do not depend on the thread count). */
  openblas_set_num_threads(1);
  struct sigaction old_sigbus;
  source_sigbus_install(o, &old_sigbus);

  /* ---------------------------------------------------------- plan */
  e8q_config_load(o->model, &R->cfg);
  /* every input and output, before plan.json (a bad file must not cost the run directory) */
  if (R->rank == 0) {
    input_file_check("--calib", o->calib);
    if (o->eval_text) eval_text_check(o, &R->cfg);
    out_check(o->out);
  }
  barrier();
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
    source_record(R);
    cJSON *plan = cJSON_CreateObject();
    cJSON_AddItemToObject(plan, "fingerprint", cJSON_Duplicate(R->fingerprint, 1));
    cJSON_AddItemToObject(plan, "options", cJSON_Duplicate(R->options, 1));
    cJSON_AddNumberToObject(plan, "seed", (double)o->seed);
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
    R->rd = e8q_rundir_open(o->run_dir, plan);
    cJSON_Delete(plan);
    if (R->rd->resumed) e8q_info("e8q: resuming the run in %s (%d journal records)", o->run_dir, R->rd->journal->n);
  }
  barrier();
  e8q_fault_point("plan.done");
  e8q_progress_step("plan", -1, NULL, 0);

  /* ---------------------------------------------------------- calibration + embed */
  R->s0 = R->plan.seq_start[R->rank];
  R->s1 = R->plan.seq_start[R->rank + 1];
  R->head = e8q_model_load_ex(o->model, 0);
  R->st = e8q_st_model_open(o->model);
  size_t act_bytes = sizeof(float) * (size_t)(R->s1 - R->s0 > 0 ? R->s1 - R->s0 : 1) * act_floats(R);
  R->X = e8q_malloc(act_bytes, "activations X_b");
  R->Y = e8q_malloc(act_bytes, "activations X_b+1");

  int start = 0;
  if (R->rank == 0) {
    char step[64], rel[64];
    for (;;) {
      if (start >= R->cfg.n_layers) break;
      snprintf(step, sizeof step, "block %d", start);
      e8q_layout_shard_rel(rel, sizeof rel, start);
      if (!e8q_journal_has_step(R->rd->journal, step) || !e8q_rundir_have(R->rd, rel)) break;
      start++;
    }
  }
  start = e8q_run_bcast_int(start);
  /* a run killed between block start-1's STEP record and the removal of its intermediates
   * (commit.done) left its parts, Hessians and X_{start-1} behind: nothing reads them again */
  if (start > 0) {
    parts_remove(R, start - 1);
    hessians_remove(R, start - 1);
    acts_remove(R, start - 1);
  }
  int embed_resumed = start > 0;
  double t_stage = e8q_run_stage_begin();
  if (start < R->cfg.n_layers) {
    if (start == 0) {
      embed_resumed = acts_load(R, 0, R->X);
      if (!embed_resumed) {
        embed_mine(R, R->X);
        acts_commit(R, 0, R->X);
      }
    } else if (!acts_load(R, start, R->X)) {
      e8q_info("e8q: activations entering layer %d are missing or corrupt: recomputing them", start);
      acts_rebuild(R, start, R->X);
      acts_commit(R, start, R->X);
    }
  }
  if (!embed_resumed) {
    e8q_run_step(R, "embed");
    e8q_run_stage_end(R, E8Q_STAGE_EMBED, t_stage);
    e8q_fault_point("embed.done");
  }
  e8q_progress_step("embed", -1, NULL, embed_resumed);

  /* ---------------------------------------------------------- blocks */
  for (int b = 0; b < start; b++) {
    e8q_progress_step("hessian", b, NULL, 1);
    for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_progress_step("quantize", b, R->plan.groups[g].name, 1);
    e8q_progress_step("propagate", b, NULL, 1);
    e8q_progress_step("commit", b, NULL, 1);
  }
  for (int b = start; b < R->cfg.n_layers; b++) {
    run_block(R, b);
    float *t = R->X;
    R->X = R->Y;
    R->Y = t;
  }
  free(R->X);
  free(R->Y);
  R->X = R->Y = NULL;

  /* ---------------------------------------------------------- end-to-end fine-tuning
   * every SU/SV, the norms, the final norm and an untied lm_head on cross-entropy against the
   * original model's top-k next-token distribution; data parallel with exact gradient sums;
   * e2e/state.ckpt per epoch (coordinator/e2e.c, worker/finetune_e2e.h) */
  e8q_run_e2e(R);

  /* ---------------------------------------------------------- gather, validate, pack */
  int gathered = e8q_run_has_step(R, "gather") && e8q_run_have(R, "model.safetensors") && e8q_run_have(R, "config.json");
  t_stage = e8q_run_stage_begin();
  if (!gathered && R->rank == 0) e8q_run_gather(R);
  barrier();
  e8q_run_stage_end(R, E8Q_STAGE_GATHER, t_stage);
  e8q_run_source_check(R, "gather", gather_discard, 0);
  e8q_fault_point("gather.done");
  e8q_progress_step("gather", -1, NULL, gathered);

  /* the evaluation record follows the reporting options of THIS run: another --eval-text or
   * --eval-lines (or none) redoes validation (then pack) on the same quantized model */
  int validated = e8q_run_has_step(R, "validate") && e8q_run_have(R, "validation.json");
  if (validated) validated = e8q_run_bcast_int(R->rank == 0 ? validation_current(R) : 0);
  if (!validated) {
    t_stage = e8q_run_stage_begin();
    e8q_run_validate(R);
    e8q_run_stage_end(R, E8Q_STAGE_VALIDATE, t_stage);
  }
  e8q_fault_point("validate.done");
  e8q_progress_step("validate", -1, NULL, validated);

  t_stage = e8q_run_stage_begin();
  if (R->rank == 0) e8q_run_pack(R);
  barrier();
  e8q_run_stage_end(R, E8Q_STAGE_PACK, t_stage);
  e8q_progress_step("pack", -1, o->out, 0);

  /* ---------------------------------------------------------- report */
  double rss = (double)e8q_peak_rss();
  double *all = R->rank == 0 ? e8q_malloc(sizeof(double) * (size_t)R->size, "rss") : NULL;
  e8q_comm_gather(R->comm, E8Q_MEM_HOST, &rss, sizeof rss, all, 0);
  if (R->rank == 0) {
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
    cJSON_AddStringToObject(f, "out", o->out);
    e8q_progress_event("done", f, 1);
    for (int r = 0; r < R->size; r++) e8q_info("e8q: rank %d peak RSS %.1f MiB", r, all[r] / (1 << 20));
    e8q_info("e8q: wall %.1f s by stage (this process, rank 0's clock):%s", e8q_now() - t0, len ? line : " none");
    free(all);
  }
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
