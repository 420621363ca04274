/* coordinator/run.c: the stage loop of `e8q quantize` (coordinator/run.h). */
#include "coordinator/eval.h"
#include "coordinator/run.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/log.h"
#include "coordinator/progress.h"
#include "coordinator/run_internal.h"
#include "io/atomic.h"
#include "io/ckpt.h"
#include "io/text.h"
#include "io/tokenizer.h"
#include "worker/cholesky.h"
#include "worker/forward.h"
#include "worker/hessian.h"

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
static void journal_from_all(e8q_run *R, const char *lines) {
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
  journal_from_all(R, lines);
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
 * prefixed with the group name). */
static void part_rel(int b, int g, char *out, size_t cap) { snprintf(out, cap, "shards/%d.%d.part", b, g); }

static int group_tensors(const e8q_run *R, const e8q_group_plan *gp, const e8q_qlin_result *q, const char *prefix,
                         char names[6][160], e8q_ckpt_tensor *t) {
  int k = 0, nc = gp->n_pad / 8;
  if (e8q_method_dense(R->o->method)) { /* noe8 / rtn ablations: the quantized weight, dense */
    snprintf(names[k], 160, "%sweight", prefix);
    t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_F32, 2, {gp->m, gp->n}, q->dense};
    snprintf(names[k], 160, "%sfuse_scales", prefix);
    t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_F32, 1, {gp->n_pieces}, q->fuse_scales};
    return k;
  }
  snprintf(names[k], 160, "%scodes", prefix);
  t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_U16, 2, {gp->m, nc}, q->codes};
  if (R->o->bits == 4) {
    snprintf(names[k], 160, "%scodes2", prefix);
    t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_U16, 2, {gp->m, nc}, q->codes2};
  } else if (R->o->bits == 3) {
    snprintf(names[k], 160, "%scodes2", prefix);
    t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_U8, 2, {gp->m, nc}, q->codes2};
  }
  snprintf(names[k], 160, "%sSU", prefix);
  t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_F32, 1, {gp->n_pad}, q->SU};
  snprintf(names[k], 160, "%sSV", prefix);
  t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_F32, 1, {gp->m}, q->SV};
  snprintf(names[k], 160, "%sWscale", prefix);
  t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_F32, 1, {1}, &q->Wscale};
  snprintf(names[k], 160, "%sfuse_scales", prefix);
  t[k++] = (e8q_ckpt_tensor){names[k - 1], E8Q_DT_F32, 1, {gp->n_pieces}, q->fuse_scales};
  return k;
}

static void part_commit(e8q_run *R, int b, int g, const e8q_qlin_result *q) {
  if (R->rank != 0) return;
  const e8q_group_plan *gp = &R->plan.groups[g];
  char names[6][160];
  e8q_ckpt_tensor t[6];
  int k = group_tensors(R, gp, q, "", names, t);
  char rel[256], path[4096], sha[65], lb[16], gb[16], pl[40], rt[16], dp[40];
  part_rel(b, g, rel, sizeof rel);
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

/* rank 0: shards/{b}.e8qs from the four parts; the stats of each group in the metadata */
static void block_commit(e8q_run *R, int b) {
  if (R->rank != 0) return;
  e8q_safetensors *parts[E8Q_N_GROUPS];
  e8q_ckpt_tensor t[E8Q_N_GROUPS * 6];
  char names[E8Q_N_GROUPS * 6][160];
  int k = 0;
  cJSON *stats = cJSON_CreateObject();
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    char rel[256], path[4096];
    part_rel(b, g, rel, sizeof rel);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    parts[g] = e8q_ckpt_open(path, "part");
    const e8q_group_plan *gp = &R->plan.groups[g];
    e8q_qlin_result q;
    memset(&q, 0, sizeof q);
    int64_t nc = gp->n_pad / 8;
    if (e8q_method_dense(R->o->method)) {
      q.dense = (float *)e8q_ckpt_get(parts[g], "weight", E8Q_DT_F32, (int64_t)gp->m * gp->n);
    } else {
      q.codes = (uint16_t *)e8q_ckpt_get(parts[g], "codes", E8Q_DT_U16, gp->m * nc);
      if (R->o->bits == 4) q.codes2 = (void *)e8q_ckpt_get(parts[g], "codes2", E8Q_DT_U16, gp->m * nc);
      if (R->o->bits == 3) q.codes2 = (void *)e8q_ckpt_get(parts[g], "codes2", E8Q_DT_U8, gp->m * nc);
      q.SU = (float *)e8q_ckpt_get(parts[g], "SU", E8Q_DT_F32, gp->n_pad);
      q.SV = (float *)e8q_ckpt_get(parts[g], "SV", E8Q_DT_F32, gp->m);
      memcpy(&q.Wscale, e8q_ckpt_get(parts[g], "Wscale", E8Q_DT_F32, 1), sizeof(float));
    }
    memcpy(q.fuse_scales, e8q_ckpt_get(parts[g], "fuse_scales", E8Q_DT_F32, gp->n_pieces), sizeof(float) * gp->n_pieces);
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%s.", gp->name);
    /* tensor data must stay valid until written: Wscale and fuse_scales point into q (stack):
     * point them at the mapped part instead */
    int k0 = k;
    k += group_tensors(R, gp, &q, prefix, names + k0, t + k0);
    for (int j = k0; j < k; j++) {
      t[j].name = names[j];
      const char *base = names[j] + strlen(prefix);
      if (!strcmp(base, "Wscale")) t[j].data = e8q_ckpt_get(parts[g], "Wscale", E8Q_DT_F32, 1);
      if (!strcmp(base, "fuse_scales")) t[j].data = e8q_ckpt_get(parts[g], "fuse_scales", E8Q_DT_F32, gp->n_pieces);
    }
    cJSON *s = cJSON_AddObjectToObject(stats, gp->name);
    const char *pl = e8q_ckpt_meta(parts[g], "proxy_loss"), *rt = e8q_ckpt_meta(parts[g], "retries"),
               *dp = e8q_ckpt_meta(parts[g], "damp");
    cJSON_AddNumberToObject(s, "proxy_loss", pl ? atof(pl) : -1);
    cJSON_AddNumberToObject(s, "retries", rt ? atoi(rt) : 0);
    cJSON_AddNumberToObject(s, "damp", dp ? atof(dp) : 0);
    const char *fm = e8q_ckpt_meta(parts[g], "factorisation");
    cJSON_AddStringToObject(s, "factorisation", fm ? fm : "");
  }
  char *stats_s = cJSON_PrintUnformatted(stats);
  cJSON_Delete(stats);
  char rel[256], path[4096], sha[65], lb[16];
  snprintf(rel, sizeof rel, "shards/%d.e8qs", b);
  e8q_rundir_path(R->rd, rel, path, sizeof path);
  snprintf(lb, sizeof lb, "%d", b);
  const char *meta[] = {"layer", lb, "stats", stats_s, NULL};
  uint64_t size = 0;
  e8q_ckpt_write(path, "shard", meta, k, t, sha, &size);
  free(stats_s);
  for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_st_close(parts[g]);
  e8q_fault_point("commit.mid");
  e8q_journal_file(R->rd->journal, rel, sha, size);
}

static void parts_remove(e8q_run *R, int b) {
  if (R->rank != 0) return;
  char rel[256], path[4096];
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    part_rel(b, g, rel, sizeof rel);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    unlink(path);
  }
}

/* ================================================================ one block */
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
  const int y_valid = !resumed; /* the Hessian pass leaves Y = block(X) */
  if (!resumed) {
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
    e8q_fault_point("hessian.done");
  }
  e8q_progress_step("hessian", b, NULL, resumed);

  /* ---------------------------------------------------------- quantize */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &R->plan.groups[g];
    char rel[256];
    part_rel(b, g, rel, sizeof rel);
    int done = e8q_run_have(R, rel);
    if (!done) {
      e8q_qlin_result q;
      /* ScaLAPACK for Hessians of n_pad >= --scalapack-min on more than one rank, or always */
      R->q.scalapack = R->o->scalapack == E8Q_SCALAPACK_ALWAYS ||
                       (R->o->scalapack == E8Q_SCALAPACK_AUTO && R->size > 1 && gp->n_pad >= R->o->scalapack_min);
      e8q_quantize_group(&R->q, gp, b, g, blk.lin[g].w, H[g], tokens, &q);
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
      if (g < E8Q_N_GROUPS - 1) e8q_fault_point("quantize.mid");
    }
    /* BLOCK FINE-TUNING goes here (a later issue): after qkv, o and upgate (g < E8Q_GROUP_DOWN),
     * train SU/SV of the quantized linears and the remaining float weights of block b on MSE
     * to Y = original block(X), data parallel over this rank's sequences with gradients
     * all-reduced, then commit the tuned parameters with the part. */
    snprintf(what, sizeof what, "%s", gp->name);
    e8q_progress_step("quantize", b, what, done);
  }
  e8q_fault_point("quantize.done");
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(H[g]);

  /* ---------------------------------------------------------- propagate
   * reference behaviour: X_{b+1} = original block b (X_b) */
  int last = b + 1 == R->cfg.n_layers; /* nothing to propagate after the last block */
  int have_next = last || acts_load(R, b + 1, R->Y);
  if (!have_next) {
    if (!y_valid) {
      e8q_fwd_scratch sc = {0};
      memcpy(R->Y, R->X, sizeof(float) * (size_t)n_my * act_floats(R));
      for (int i = 0; i < n_my; i++) e8q_block_forward(&blk, &R->cfg, 1, R->T, R->Y + (size_t)i * act_floats(R), NULL, &sc);
      e8q_fwd_scratch_free(&sc);
    }
    acts_commit(R, b + 1, R->Y);
    e8q_fault_point("propagate.done");
  }
  e8q_progress_step("propagate", b, NULL, have_next && !last);
  e8q_block_free(&blk);

  /* ---------------------------------------------------------- commit */
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
  if (o->eval_text) {
    e8q_sha256_file_hex(o->eval_text, hex);
    cJSON_AddStringToObject(j, "eval_text_sha256", hex);
    cJSON_AddNumberToObject(j, "eval_lines", o->eval_lines);
  }
  return j;
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

  /* ---------------------------------------------------------- plan */
  e8q_config_load(o->model, &R->cfg);
  if (o->eval_text && !e8q_ids_is_file(o->eval_text)) { /* scored at the very end: refuse now, before any work */
    char *tp = e8q_tokenizer_find(o->model, R->cfg.vocab_size);
    E8Q_CHECK(tp,
              "--eval-text %s is text but no tokenizer was found with the model (e8q quantize reads tokenizer.model "
              "from the --model directory %s): put the model's tokenizer.model there, or give a token id file (.ids "
              "or .u32, little-endian uint32)",
              o->eval_text, o->model);
    free(tp);
  }
  if (o->eval_text && e8q_ids_is_file(o->eval_text)) { /* ids outside the vocabulary: refused now, naming the file */
    int *ids = NULL;
    e8q_ids_read(o->eval_text, R->cfg.vocab_size, &ids);
    free(ids);
  }
  R->T = o->ctx;
  R->dim = R->cfg.dim;
  e8q_plan_build(&R->plan, o->model, R->size, o->devset, R->T);
  R->q.bits = o->bits;
  R->q.method = o->method;
  R->q.rho = o->rho;
  R->q.tune_iters = o->tune_iters;
  R->q.seed = o->seed;
  int steps = 2 + R->cfg.n_layers * (1 + E8Q_N_GROUPS + 2) + 3;
  e8q_progress_begin(steps, o->log_json);
  if (R->rank == 0) { /* the options (file hashes) and fingerprint only go into rank 0's plan and pack */
    R->options = options_json(o, R);
    R->fingerprint = e8q_model_fingerprint(o->model);
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
  e8q_tokenizer *tok = e8q_eval_open_tokenizer(o->model, &R->cfg, NULL, 0, NULL);
  e8q_calib_build(&R->calib, o->calib, tok, R->cfg.vocab_size, o->calib_skip, o->devset, R->T, o->seed);
  if (tok) e8q_tokenizer_free(tok);
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
      snprintf(rel, sizeof rel, "shards/%d.e8qs", start);
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

  /* END-TO-END FINE-TUNING goes here (a later issue): train every SU/SV, the norms, the final
   * norm and lm_head on cross-entropy against the original model's softmax, data parallel over
   * the calibration sequences with gradients all-reduced; committed like a block. */

  /* ---------------------------------------------------------- gather, validate, pack */
  int gathered = e8q_run_has_step(R, "gather") && e8q_run_have(R, "model.safetensors") && e8q_run_have(R, "config.json");
  if (!gathered && R->rank == 0) e8q_run_gather(R);
  barrier();
  e8q_fault_point("gather.done");
  e8q_progress_step("gather", -1, NULL, gathered);

  int validated = e8q_run_has_step(R, "validate") && e8q_run_have(R, "validation.json");
  if (!validated) e8q_run_validate(R);
  e8q_fault_point("validate.done");
  e8q_progress_step("validate", -1, NULL, validated);

  if (R->rank == 0) e8q_run_pack(R);
  barrier();
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
    cJSON_AddStringToObject(f, "out", o->out);
    e8q_progress_event("done", f, 1);
    for (int r = 0; r < R->size; r++) e8q_info("e8q: rank %d peak RSS %.1f MiB", r, all[r] / (1 << 20));
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
  return 0;
}
