/* coordinator/block.c: the per-block stage of `e8q quantize` (DESIGN §2 "for each decoder
 * block b"; coordinator/block.h): a table of sub-stages, each committed to the run directory
 * and journalled, so a killed run resumes inside a block.
 *
 *   hessian      H_b of the four group inputs (original block b on X_b), summed over ranks
 *   quantize     per group qkv, o, upgate, down: RHT + LDLQ (a part file each), and after qkv,
 *                o and upgate a block fine-tuning round (per-epoch checkpoints)
 *   propagate    X_{b+1} = original block b (X_b)
 *   e2e-targets  after the last block, with end-to-end fine-tuning: the original model's
 *                next-token targets from X_L
 *   commit       shards/{b}.e8qs from the parts (and the last round), STEP "block b"
 *   cleanup      the block's parts, Hessians and X_b removed
 *
 * Files (besides shard/layout.h's shards/):
 *   hessians/{b}.{g}.ckpt  "H" F64 [n, n] (sums), "tokens" I64 [1]
 */
#include "coordinator/block.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/log.h"
#include "coordinator/e2e.h"
#include "coordinator/progress.h"
#include "io/ckpt.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "shard/layout.h"
#include "worker/finetune.h"
#include "worker/forward.h"
#include "worker/hessian.h"

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
  char rel[256], path[4096], sha[65], v[3][24];
  e8q_layout_ft_rel(rel, sizeof rel, b, g);
  e8q_rundir_path(R->rd, rel, path, sizeof path);
  snprintf(v[0], sizeof v[0], "%d", b);
  snprintf(v[1], sizeof v[1], "%d", g);
  snprintf(v[2], sizeof v[2], "%d", S->n_quant);
  const char *extra[] = {"layer", v[0], "group", v[1], "group_name", e8q_group_names[g], "n_quant", v[2], NULL};
  uint64_t size = 0;
  e8q_run_train_ckpt_write(path, "ft", &S->tr, extra, sha, &size);
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
  e8q_run_train_ckpt_read(st, path, &S->tr);
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
  e8q_run_qlin lin[E8Q_N_GROUPS];                /* quantized groups 0..g, SU/SV in S.p */
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
  for (int k = 0; k <= g; k++) {
    const e8q_group_plan *gp = &R->plan.groups[k];
    char rel[256], path[4096];
    e8q_layout_part_rel(rel, sizeof rel, b, k);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    e8q_safetensors *st = e8q_ckpt_open(path, "part");
    e8q_had_factor_build(&F->fac[k][0], gp->K_n, E8Q_HAD_SEED);
    e8q_had_factor_build(&F->fac[k][1], gp->K_m, E8Q_HAD_SEED);
    e8q_run_qlin_open(&F->lin[k], R, st, 0, b, k, F->S.p + F->S.off_SU[k], F->S.p + F->S.off_SV[k], F->fac[k]);
    e8q_st_close(st);
    F->tb.lin[k].m = gp->m;
    F->tb.lin[k].n = gp->n;
    F->tb.lin[k].w = NULL;
    F->tb.lin[k].q = &F->lin[k].ql;
  }
  e8q_ft_bind(&F->S, &R->cfg, &F->tb);
  return 1;
}

static void ft_round_close(ft_round_ctx *F) {
  for (int k = 0; k <= F->g; k++) {
    e8q_run_qlin_close(&F->lin[k]);
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
  e8q_run_barrier(); /* the checkpoint is on disk before any rank can be killed at ft.epoch */
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
  memcpy(R->Y, R->X, sizeof(float) * (size_t)n_my * e8q_run_act_floats(R));
  for (int i = 0; i < n_my; i++) e8q_block_forward(blk, &R->cfg, 1, R->T, R->Y + (size_t)i * e8q_run_act_floats(R), NULL, &sc);
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
  const e8q_ft_opts fo = {.hp = e8q_run_train_hparams(R, R->o->ft_epochs), .layer = b, .group = g};
  e8q_ft_hooks hk = {ft_epoch_end, &F};
  const int n_valid = R->o->ft_valid, n_train = R->plan.devset - n_valid;
  e8q_ft_round(&fo, R->comm, &R->cfg, &F.tb, &F.S, R->T, n_train, n_valid, R->s0, R->s1, R->X, R->Y, &hk);
  ft_round_close(&F);
  e8q_run_stage_end(R, E8Q_STAGE_BLOCK_FT, t);
}

/* ================================================================ the sub-stages of one block */
typedef struct {
  int b;
  int last;                  /* b is the last block: nothing to propagate */
  e8q_block blk;             /* the original block b */
  double *H[E8Q_N_GROUPS];   /* [n, n] per group: the Hessian sums (freed after quantize) */
  long tokens;
  int y_valid;               /* R->Y holds original block(X) */
} block_ctx;

/* the uncommitted intermediates of block b (e8q_run_source_check's cleanup) */
static void block_discard(e8q_run *R, int b) {
  parts_remove(R, b);
  hessians_remove(R, b);
  if (b + 1 < R->cfg.n_layers) e8q_run_acts_remove(R, b + 1);
  else if (e8q_run_e2e_on(R)) e8q_run_e2e_targets_remove(R);
}

/* ---------------------------------------------------------------- hessian */
static int hessian_resume(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  const int loaded = hessians_load(R, C->b, C->H, &C->tokens);
  C->y_valid = !loaded; /* the Hessian pass leaves Y = block(X) */
  return loaded ? E8Q_STAGE_RESUMED : E8Q_STAGE_RUN;
}

static void hessian_run(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  const int n_my = R->s1 - R->s0;
  e8q_hessian_acc acc;
  e8q_hessian_acc_init(&acc, &R->cfg, R->T);
  e8q_hessian_acc_use_device(&acc, R->dev.cuda); /* --device cuda: the Gram products on the GPU */
  e8q_fwd_scratch sc = {0};
  memcpy(R->Y, R->X, sizeof(float) * (size_t)n_my * e8q_run_act_floats(R));
  for (int i = 0; i < n_my; i++) {
    e8q_hessian_acc_seq(&acc, &C->blk, &R->cfg, R->Y + (size_t)i * e8q_run_act_floats(R), &sc);
    /* chunks of E8Q_SEQ_CHUNK sequences (absolute indices; rank splits are chunk-aligned) */
    if ((R->s0 + i + 1) % E8Q_SEQ_CHUNK == 0) e8q_hessian_acc_flush(&acc);
    if (i == 0) e8q_fault_point("hessian.mid");
  }
  e8q_fwd_scratch_free(&sc);
  e8q_hessian_acc_reduce(&acc, C->H, &C->tokens);
  e8q_hessian_acc_free(&acc);
  hessians_commit(R, C->b, C->H, C->tokens);
}

/* ---------------------------------------------------------------- quantize (+ block fine-tuning)
 * Resumes per group (its part file) and per round (its checkpoint); reports a progress step per
 * group and times each group under "quantize", each round under "block-ft". */
static void quantize_run(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  const int b = C->b;
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
      const float *W = C->blk.lin[g].w;
      if (ft_on(R) && g > 0) {
        ft_finished(R, b, g - 1, &P);
        W = P.p + P.off_W[g];
      }
      /* ScaLAPACK for Hessians of n_pad >= --scalapack-min on more than one rank, or always */
      R->q.scalapack = R->o->scalapack == E8Q_SCALAPACK_ALWAYS ||
                       (R->o->scalapack == E8Q_SCALAPACK_AUTO && R->size > 1 && gp->n_pad >= R->o->scalapack_min);
      e8q_quantize_group(&R->q, gp, b, g, W, C->H[g], C->tokens, &q);
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
    e8q_progress_step("quantize", b, gp->name, done);
    /* block fine-tuning after qkv, o and upgate (not after down): SU/SV of the quantized
     * linears, the norms and the dense weights of the others, on MSE to Y = original block(X),
     * data parallel with exact gradient sums (worker/finetune.h); checkpointed per epoch */
    if (ft_on(R) && g < E8Q_GROUP_DOWN) ft_block_round(R, b, g, &C->blk, &C->y_valid);
  }
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    free(C->H[g]);
    C->H[g] = NULL;
  }
}

/* ---------------------------------------------------------------- propagate
 * reference behaviour: X_{b+1} = original block b (X_b) */
static int propagate_resume(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  if (C->last) return E8Q_STAGE_NOTHING;
  return e8q_run_acts_load(R, C->b + 1, R->Y) ? E8Q_STAGE_RESUMED : E8Q_STAGE_RUN;
}

static void propagate_run(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  if (!C->y_valid) targets_compute(R, &C->blk);
  C->y_valid = 1;
  e8q_run_acts_commit(R, C->b + 1, R->Y);
}

/* ---------------------------------------------------------------- e2e-targets
 * end-to-end fine-tuning: the last block propagates too, X_L = original block L-1 (X_{L-1}), for
 * the original model's next-token targets (coordinator/e2e.c) */
static int e2e_targets_resume(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  if (!C->last || !e8q_run_e2e_on(R)) return E8Q_STAGE_NOTHING;
  return e8q_run_e2e_targets_have(R) ? E8Q_STAGE_RESUMED : E8Q_STAGE_RUN;
}

static void e2e_targets_run(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  if (!C->y_valid) targets_compute(R, &C->blk);
  C->y_valid = 1;
  e8q_run_e2e_targets_commit(R, R->Y);
}

/* ---------------------------------------------------------------- commit
 * only when the source model did not change while block b was read: otherwise its
 * intermediates (Hessians, parts, fine-tuning rounds, X_{b+1}) are removed and the run stops */
static void commit_run(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  char step[64];
  snprintf(step, sizeof step, "layer %d commit", C->b);
  e8q_run_source_check(R, step, block_discard, C->b);
  block_commit(R, C->b);
  snprintf(step, sizeof step, "block %d", C->b);
  e8q_run_step(R, step);
  e8q_run_barrier();
}

/* what nothing reads again once the block is committed */
static void cleanup_run(e8q_run *R, void *ctx) {
  block_ctx *C = ctx;
  parts_remove(R, C->b);
  hessians_remove(R, C->b);
  e8q_run_acts_remove(R, C->b);
}

/* ---------------------------------------------------------------- the table */
static const e8q_stage block_stages[] = {
    /* name                resume              run              timer                  check fault      on resume progress */
    {"hessian",           hessian_resume,     hessian_run,     E8Q_STAGE_HESSIAN,     NULL, "hessian.done",   0, "hessian"},
    {"quantize+block-ft", NULL,               quantize_run,    E8Q_STAGE_UNTIMED,     NULL, "quantize.done",  1, NULL},
    {"propagate",         propagate_resume,   propagate_run,   E8Q_STAGE_PROPAGATE,   NULL, "propagate.done", 0, "propagate"},
    {"e2e-targets",       e2e_targets_resume, e2e_targets_run, E8Q_STAGE_E2E_TARGETS, NULL, NULL,             0, NULL},
    {"commit",            NULL,               commit_run,      E8Q_STAGE_UNTIMED,     NULL, "commit.done",    1, NULL},
    {"cleanup",           NULL,               cleanup_run,     E8Q_STAGE_UNTIMED,     NULL, NULL,             0, "commit"},
};

void e8q_run_block(e8q_run *R, int b) {
  block_ctx C;
  memset(&C, 0, sizeof C);
  C.b = b;
  C.last = b + 1 == R->cfg.n_layers;
  e8q_block_load(R->st, &R->cfg, b, &C.blk);
  for (int g = 0; g < E8Q_N_GROUPS; g++)
    C.H[g] = e8q_malloc(sizeof(double) * (size_t)R->plan.groups[g].n * R->plan.groups[g].n, "Hessian");
  e8q_stages_run(block_stages, (int)(sizeof block_stages / sizeof block_stages[0]), R, &C, b);
  e8q_block_free(&C.blk);
}

/* ================================================================ resume */
int e8q_run_blocks_resume(e8q_run *R) {
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
    e8q_run_acts_remove(R, start - 1);
  }
  return start;
}

void e8q_run_block_resumed(e8q_run *R, int b) {
  e8q_progress_step("hessian", b, NULL, 1);
  for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_progress_step("quantize", b, R->plan.groups[g].name, 1);
  e8q_progress_step("propagate", b, NULL, 1);
  e8q_progress_step("commit", b, NULL, 1);
}
