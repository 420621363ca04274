/* coordinator/runstate.c: the helpers every stage of `e8q quantize` uses on the run state
 * (coordinator/runstate.h): stage timers, rank agreement, the journal, the source model under
 * the run, the activations X_b. */
#include "coordinator/runstate.h"

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
#include "common/log.h"
#include "coordinator/progress.h"
#include "io/atomic.h"
#include "io/ckpt.h"
#include "io/gguf.h"
#include "shard/layout.h"
#include "worker/forward.h"

/* ---------------------------------------------------------------- stage timing */
const char *const e8q_run_stage_names[E8Q_N_STAGES] = {"embed",      "hessian",     "quantize", "block-ft",
                                                        "propagate",  "e2e-targets", "e2e",      "gather",
                                                        "validate",   "pack"};

double e8q_run_stage_begin(void) { return e8q_now(); }

void e8q_run_stage_end(e8q_run *R, e8q_run_stage s, double t) { R->stage_s[s] += e8q_now() - t; }

/* ---------------------------------------------------------------- stage tables */
void e8q_stages_run(const e8q_stage *rows, int n, e8q_run *R, void *ctx, int layer) {
  for (int i = 0; i < n; i++) {
    const e8q_stage *s = &rows[i];
    const int st = s->resume ? s->resume(R, ctx) : E8Q_STAGE_RUN;
    if (st == E8Q_STAGE_RUN) {
      const double t = e8q_run_stage_begin();
      s->run(R, ctx);
      if (s->timer != E8Q_STAGE_UNTIMED) e8q_run_stage_end(R, (e8q_run_stage)s->timer, t);
    }
    if (s->check) s->check(R, ctx);
    if (s->fault && (st == E8Q_STAGE_RUN || (st == E8Q_STAGE_RESUMED && s->fault_resumed))) e8q_fault_point(s->fault);
    if (s->progress) e8q_progress_step(s->progress, layer, NULL, st == E8Q_STAGE_RESUMED);
  }
}

/* ---------------------------------------------------------------- helpers */
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

void e8q_run_barrier(void) { e8q_comm_barrier(e8q_comm_get()); }

size_t e8q_run_act_floats(const e8q_run *R) { return (size_t)R->T * R->dim; }

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

/* ---------------------------------------------------------------- the source model under the run
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
void e8q_run_source_sigbus_install(const e8q_run_opts *o, struct sigaction *old) {
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
void e8q_run_source_record(e8q_run *R) {
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
  e8q_run_barrier();
  if (R->rank == 0)
    E8Q_FATAL("the source model file %s changed (size, inode or modification time) while this run read it (at %s): "
              "what was computed from it is discarded, nothing read from the changed bytes was committed. Restore "
              "the original file and rerun the same command (the run resumes from %s; a changed file is refused)",
              R->src[bad].path, stage, R->o->run_dir);
  e8q_run_barrier(); /* rank 0 aborts the job */
}

/* ---------------------------------------------------------------- activations
 * acts/x{b}/s{i}.ckpt: X_b of calibration sequence i, F32 [T, dim]. */
static void act_rel(int b, int i, char *out, size_t cap) { snprintf(out, cap, "acts/x%d/s%d.ckpt", b, i); }

void e8q_run_acts_commit(e8q_run *R, int b, const float *X) {
  char rel[256], path[4096];
  if (R->rank == 0) {
    snprintf(rel, sizeof rel, "acts/x%d", b);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    e8q_mkdirs(path);
    e8q_atomic_sweep(path); /* temporaries of a killed run (no rank writes before the barrier) */
  }
  e8q_run_barrier();
  size_t cap = 256 * (size_t)(R->s1 - R->s0 + 1);
  char *lines = e8q_calloc(cap, 1, "file lines");
  for (int i = R->s0; i < R->s1; i++) {
    act_rel(b, i, rel, sizeof rel);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    char lb[16], sb[16], sha[65];
    snprintf(lb, sizeof lb, "%d", b);
    snprintf(sb, sizeof sb, "%d", i);
    const char *meta[] = {"layer_input", lb, "sequence", sb, NULL};
    e8q_ckpt_tensor t = {"x", E8Q_DT_F32, 2, {R->T, R->dim}, X + (size_t)(i - R->s0) * e8q_run_act_floats(R)};
    uint64_t size = 0;
    e8q_ckpt_write(path, "acts", meta, 1, &t, sha, &size);
    size_t l = strlen(lines);
    snprintf(lines + l, cap - l, "%s %s %llu\n", rel, sha, (unsigned long long)size);
  }
  e8q_run_journal_files(R, lines);
  free(lines);
}

/* loads X_b of this rank's sequences when every file is intact; 0 otherwise */
int e8q_run_acts_load(e8q_run *R, int b, float *X) {
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
    memcpy(X + (size_t)(i - R->s0) * e8q_run_act_floats(R), e8q_ckpt_get(st, "x", E8Q_DT_F32, (int64_t)e8q_run_act_floats(R)),
           sizeof(float) * e8q_run_act_floats(R));
    e8q_st_close(st);
  }
  return 1;
}

void e8q_run_acts_remove(e8q_run *R, int b) {
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
void e8q_run_acts_embed(e8q_run *R, float *X) {
  for (int i = R->s0; i < R->s1; i++)
    e8q_model_embed(R->head, R->T, R->calib.ids + (size_t)i * R->T, X + (size_t)(i - R->s0) * e8q_run_act_floats(R));
}

/* X_b from scratch (when its checkpoint is missing or corrupt): embed, then original blocks 0..b-1 */
void e8q_run_acts_rebuild(e8q_run *R, int b, float *X) {
  e8q_run_acts_embed(R, X);
  e8q_fwd_scratch sc = {0};
  for (int l = 0; l < b; l++) {
    e8q_block blk;
    e8q_block_load(R->st, &R->cfg, l, &blk);
    for (int i = R->s0; i < R->s1; i++)
      e8q_block_forward(&blk, &R->cfg, 1, R->T, X + (size_t)(i - R->s0) * e8q_run_act_floats(R), NULL, &sc);
    e8q_block_free(&blk);
  }
  e8q_fwd_scratch_free(&sc);
}

/* ---------------------------------------------------------------- quantized linears to train */
void e8q_run_qlin_open(e8q_run_qlin *q, const e8q_run *R, const e8q_safetensors *st, int shard, int b, int g,
                       float *SU, float *SV, const e8q_had_factor fac[2]) {
  const e8q_group_plan *gp = &R->plan.groups[g];
  const int in = shard ? g : E8Q_LAYOUT_PART; /* the names of g's tensors in st */
  const e8q_codebook_id cb = e8q_cb_from_bits(R->o->bits);
  char name[160];
  memset(q, 0, sizeof *q);
  e8q_qlinear_desc d;
  memset(&d, 0, sizeof d);
  d.m = gp->m;
  d.n = gp->n;
  d.n_pad = gp->n_pad;
  d.codebook = cb;
  e8q_layout_codes_read(st, in, cb, (int64_t)gp->m * (gp->n_pad / 8), &q->codes, &q->codes2);
  d.codes = q->codes;
  d.codes2 = q->codes2;
  d.SU = SU;
  d.SV = SV;
  e8q_layout_group_name(name, sizeof name, in, E8Q_FIELD_WSCALE);
  memcpy(&d.Wscale, e8q_ckpt_get(st, name, E8Q_DT_F32, 1), sizeof(float));
  d.n_pieces = gp->n_pieces;
  d.piece_rows = gp->n_pieces > 1 ? gp->piece_rows : NULL;
  e8q_layout_group_name(name, sizeof name, in, E8Q_FIELD_FUSE_SCALES);
  memcpy(q->fs, e8q_ckpt_get(st, name, E8Q_DT_F32, gp->n_pieces), sizeof(float) * (size_t)gp->n_pieces);
  d.fuse_scales = q->fs;
  d.K_in = gp->K_n;
  d.R_in = gp->K_n > 1 ? fac[0].Rf : NULL;
  d.K_out = gp->K_m;
  d.R_out = gp->K_m > 1 ? fac[1].Rf : NULL;
  e8q_layout_layer_tensor(name, sizeof name, b, gp->name);
  e8q_qlinear_init(&q->ql, &d, name);
}

void e8q_run_qlin_close(e8q_run_qlin *q) {
  e8q_qlinear_free(&q->ql);
  free(q->codes);
  free(q->codes2);
  memset(q, 0, sizeof *q);
}

/* ================================================================ training checkpoints */
e8q_train_hparams e8q_run_train_hparams(const e8q_run *R, int epochs) {
  return (e8q_train_hparams){.epochs = epochs,
                             .lr = R->o->ft_lr,
                             .susv_lr = R->o->ft_susv_lr,
                             .batch = R->o->ft_batch,
                             .early_stop = E8Q_TRAIN_EARLY_STOP,
                             .seed = R->o->seed};
}

void e8q_run_train_ckpt_write(const char *path, const char *kind, const e8q_train_state *S,
                              const char *const *extra, char sha[65], uint64_t *size) {
  enum { N_OWN = 9, MAX_EXTRA = 8 };
  char v[N_OWN][40];
  snprintf(v[0], sizeof v[0], "%d", S->epoch);
  snprintf(v[1], sizeof v[1], "%ld", S->step);
  snprintf(v[2], sizeof v[2], "%d", S->worse);
  snprintf(v[3], sizeof v[3], "%d", S->started);
  snprintf(v[4], sizeof v[4], "%d", S->done);
  snprintf(v[5], sizeof v[5], "%.17g", S->init_loss);
  snprintf(v[6], sizeof v[6], "%.17g", S->best_loss);
  snprintf(v[7], sizeof v[7], "%.17g", S->train_loss);
  snprintf(v[8], sizeof v[8], "%.17g", S->valid_loss);
  static const char *const keys[N_OWN] = {"epoch",     "step",      "worse",      "started",   "done",
                                          "init_loss", "best_loss", "train_loss", "valid_loss"};
  const char *meta[2 * (MAX_EXTRA + N_OWN) + 1];
  int k = 0;
  for (int i = 0; extra && extra[i]; i += 2) {
    E8Q_CHECK(k < 2 * MAX_EXTRA, "internal: more than %d extra metadata pairs for %s", MAX_EXTRA, path);
    meta[k++] = extra[i];
    meta[k++] = extra[i + 1];
  }
  for (int i = 0; i < N_OWN; i++) {
    meta[k++] = keys[i];
    meta[k++] = v[i];
  }
  meta[k] = NULL;
  const int64_t n = (int64_t)S->n;
  e8q_ckpt_tensor t[4] = {{"p", E8Q_DT_F32, 1, {n}, S->p},
                          {"best", E8Q_DT_F32, 1, {n}, S->best},
                          {"m", E8Q_DT_F32, 1, {n}, S->m},
                          {"v", E8Q_DT_F32, 1, {n}, S->v}};
  e8q_ckpt_write(path, kind, meta, 4, t, sha, size);
}

void e8q_run_train_ckpt_read(const e8q_safetensors *st, const char *path, e8q_train_state *S) {
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
}
