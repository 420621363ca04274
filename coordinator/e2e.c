/* coordinator/e2e.c: the end-to-end fine-tuning stage of `e8q quantize` (DESIGN §2 "e2e";
 * worker/finetune_e2e.h): the original model's targets, the quantized model built from the
 * committed shards, training with a checkpoint per epoch, and what gather and validate take from
 * the result.
 *
 * Files of the run directory:
 *   e2e/targets/s{i}.ckpt  kind "e2e_targets", calibration sequence i: "ids" I32 [T-1, k] and
 *                          "probs" F32 [T-1, k], the top-k of the ORIGINAL model's next-token
 *                          softmax at positions 0..T-2 (k = min(--e2e-topk, vocab)). Written by
 *                          the rank that owns i when the last block is propagated (the final
 *                          hidden states are X_L = original block L-1 (X_{L-1})), journalled in
 *                          rank order; removed once the STEP "e2e" is journalled.
 *   e2e/state.ckpt         kind "e2e": "p", "best", "m", "v" F32 [n] in e8q_e2e_layout's order;
 *                          metadata epoch, step, worse, started, done and the losses (%.17g,
 *                          exact). Rank 0 commits it after every epoch and at the end; the data
 *                          order is a function of the epoch, so a rerun continues from the last
 *                          epoch reached, bit for bit. Gather takes the tuned tensors from "best".
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/log.h"
#include "coordinator/progress.h"
#include "coordinator/e2e.h"
#include "io/atomic.h"
#include "io/ckpt.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "shard/layout.h"
#include "worker/finetune.h"
#include "worker/finetune_e2e.h"
#include "worker/forward.h"

#define E2E_STATE "e2e/state.ckpt"

/* ---------------------------------------------------------------- small rules */
int e8q_run_e2e_on(const e8q_run *R) {
  return (R->o->ft == E8Q_FT_E2E || R->o->ft == E8Q_FT_ALL) && !e8q_method_dense(R->o->method);
}

/* k: the kept ids per position */
static int topk_of(const e8q_run *R) { return R->o->e2e_topk < R->cfg.vocab_size ? R->o->e2e_topk : R->cfg.vocab_size; }

static void target_rel(int i, char *out, size_t cap) { snprintf(out, cap, "e2e/targets/s%d.ckpt", i); }


/* ---------------------------------------------------------------- targets */
void e8q_run_e2e_targets_commit(e8q_run *R, const float *XL) {
  const int T = R->T, P = T - 1, D = R->dim, V = R->cfg.vocab_size, k = topk_of(R);
  char rel[256], path[4096];
  if (R->rank == 0) {
    e8q_rundir_path(R->rd, "e2e/targets", path, sizeof path);
    e8q_mkdirs(path);
    e8q_atomic_sweep(path); /* temporaries of a killed run (no rank writes before the barrier) */
  }
  e8q_run_barrier();
  float *x = e8q_malloc(sizeof(float) * (size_t)P * D, "e2e final hidden");       /* [T-1, dim] */
  float *logits = e8q_malloc(sizeof(float) * (size_t)P * V, "e2e original logits"); /* [T-1, vocab] */
  int *ids = e8q_malloc(sizeof(int) * (size_t)P * k, "e2e target ids");             /* [T-1, k] */
  float *probs = e8q_malloc(sizeof(float) * (size_t)P * k, "e2e target probs");     /* [T-1, k] */
  size_t cap = 256 * (size_t)(R->s1 - R->s0 + 1);
  char *lines = e8q_calloc(cap, 1, "file lines");
  for (int i = R->s0; i < R->s1; i++) {
    memcpy(x, XL + (size_t)(i - R->s0) * T * D, sizeof(float) * (size_t)P * D);
    e8q_model_head(R->head, P, x, logits);
    e8q_e2e_topk(P, V, logits, k, ids, probs);
    target_rel(i, rel, sizeof rel);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    char sb[16], kb[16], sha[65];
    snprintf(sb, sizeof sb, "%d", i);
    snprintf(kb, sizeof kb, "%d", k);
    const char *meta[] = {"sequence", sb, "topk", kb, NULL};
    e8q_ckpt_tensor t[2] = {{"ids", E8Q_DT_I32, 2, {P, k}, ids}, {"probs", E8Q_DT_F32, 2, {P, k}, probs}};
    uint64_t size = 0;
    e8q_ckpt_write(path, "e2e_targets", meta, 2, t, sha, &size);
    size_t l = strlen(lines);
    snprintf(lines + l, cap - l, "%s %s %llu\n", rel, sha, (unsigned long long)size);
  }
  e8q_run_journal_files(R, lines);
  free(lines);
  free(probs);
  free(ids);
  free(logits);
  free(x);
}

int e8q_run_e2e_targets_have(e8q_run *R) {
  int ok = 1;
  char rel[256];
  if (R->rank == 0)
    for (int i = 0; i < R->plan.devset && ok; i++) {
      target_rel(i, rel, sizeof rel);
      ok = e8q_rundir_have(R->rd, rel);
    }
  return e8q_run_bcast_int(ok);
}

/* tid, tprob [s1-s0, T-1, k]: this rank's targets */
static void targets_load(e8q_run *R, int *tid, float *tprob) {
  const int64_t pk = (int64_t)(R->T - 1) * topk_of(R);
  char rel[256], path[4096];
  for (int i = R->s0; i < R->s1; i++) {
    target_rel(i, rel, sizeof rel);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    e8q_safetensors *st = e8q_ckpt_open(path, "e2e_targets");
    memcpy(tid + (size_t)(i - R->s0) * pk, e8q_ckpt_get(st, "ids", E8Q_DT_I32, pk), sizeof(int) * (size_t)pk);
    memcpy(tprob + (size_t)(i - R->s0) * pk, e8q_ckpt_get(st, "probs", E8Q_DT_F32, pk), sizeof(float) * (size_t)pk);
    e8q_st_close(st);
  }
}

static void targets_remove(e8q_run *R) {
  if (R->rank != 0) return;
  char rel[256], path[4096];
  for (int i = 0; i < R->plan.devset; i++) {
    target_rel(i, rel, sizeof rel);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    unlink(path);
  }
  e8q_rundir_path(R->rd, "e2e/targets", path, sizeof path);
  rmdir(path);
}

void e8q_run_e2e_targets_remove(e8q_run *R) { targets_remove(R); }

/* ---------------------------------------------------------------- the state checkpoint */
static void state_commit(e8q_run *R, const e8q_e2e_state *S) {
  if (R->rank != 0) return;
  char path[4096], sha[65], v[2][24];
  e8q_rundir_path(R->rd, "e2e", path, sizeof path);
  e8q_mkdirs(path);
  e8q_rundir_path(R->rd, E2E_STATE, path, sizeof path);
  snprintf(v[0], sizeof v[0], "%d", topk_of(R));
  snprintf(v[1], sizeof v[1], "%d", S->train_head);
  const char *extra[] = {"topk", v[0], "train_head", v[1], NULL};
  uint64_t size = 0;
  e8q_run_train_ckpt_write(path, "e2e", &S->tr, extra, sha, &size);
  e8q_journal_file(R->rd->journal, E2E_STATE, sha, size);
}

/* Collective: 1 and S (allocated by e8q_e2e_state_init) restored when e2e/state.ckpt was
 * committed and is intact, else 0 and S untouched. */
static int state_load(e8q_run *R, e8q_e2e_state *S) {
  if (!e8q_run_have(R, E2E_STATE)) return 0;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", R->o->run_dir, E2E_STATE);
  e8q_safetensors *st = e8q_ckpt_open(path, "e2e");
  e8q_run_train_ckpt_read(st, path, &S->tr);
  e8q_st_close(st);
  return 1;
}

/* ---------------------------------------------------------------- the quantized model */
typedef struct {
  e8q_run *R;
  e8q_e2e_state S;
  e8q_e2e_model M;
  e8q_block *blocks;                                /* [L] */
  e8q_run_qlin *lin;                                /* [L*4] the quantized linears, SU/SV in S.p */
  e8q_had_factor fac[E8Q_N_GROUPS][2];              /* factors of n_pad and of m */
} e2e_ctx;

/* S's starting point: SU/SV and norms of the committed shards (norms from the source when block
 * fine-tuning did not tune them), the source's final norm and (untied) lm_head */
static void state_fresh(e8q_run *R, int b, const e8q_safetensors *sh, e8q_e2e_state *S) {
  const int D = R->dim;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &R->plan.groups[g];
    const size_t k = (size_t)b * E8Q_N_GROUPS + g;
    char name[160];
    e8q_layout_group_name(name, sizeof name, g, E8Q_FIELD_SU);
    memcpy(S->p + S->off_SU[k], e8q_ckpt_get(sh, name, E8Q_DT_F32, gp->n_pad), sizeof(float) * (size_t)gp->n_pad);
    e8q_layout_group_name(name, sizeof name, g, E8Q_FIELD_SV);
    memcpy(S->p + S->off_SV[k], e8q_ckpt_get(sh, name, E8Q_DT_F32, gp->m), sizeof(float) * (size_t)gp->m);
  }
  const char *const *norms = e8q_layout_norm_names;
  for (int j = 0; j < 2; j++) {
    float *dst = S->p + (j == E8Q_NORM_ATTN ? S->off_attn[b] : S->off_ffn[b]);
    if (e8q_st_find(sh, norms[j])) {
      memcpy(dst, e8q_ckpt_get(sh, norms[j], E8Q_DT_F32, D), sizeof(float) * (size_t)D);
    } else {
      char name[192];
      e8q_layout_layer_tensor(name, sizeof name, b, norms[j]);
      e8q_st_model_read_f32_range(R->st, name, 0, D, dst);
    }
  }
}

/* C->S allocated; fresh (from the shards) unless e2e/state.ckpt restored it; the model built */
static void ctx_open(e8q_run *R, e2e_ctx *C) {
  memset(C, 0, sizeof *C);
  C->R = R;
  const int L = R->cfg.n_layers, D = R->dim;
  e8q_e2e_state_init(&C->S, &R->cfg);
  const int loaded = state_load(R, &C->S);
  C->blocks = e8q_calloc((size_t)L, sizeof *C->blocks, "e2e blocks");
  C->lin = e8q_calloc((size_t)L * E8Q_N_GROUPS, sizeof *C->lin, "e2e quantized linears");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    e8q_had_factor_build(&C->fac[g][0], R->plan.groups[g].K_n, E8Q_HAD_SEED);
    e8q_had_factor_build(&C->fac[g][1], R->plan.groups[g].K_m, E8Q_HAD_SEED);
  }
  for (int b = 0; b < L; b++) {
    char rel[64], path[4096];
    e8q_layout_shard_rel(rel, sizeof rel, b);
    snprintf(path, sizeof path, "%s/%s", R->o->run_dir, rel);
    e8q_safetensors *sh = e8q_ckpt_open(path, "shard");
    if (!loaded) state_fresh(R, b, sh, &C->S);
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      const e8q_group_plan *gp = &R->plan.groups[g];
      const size_t q = (size_t)b * E8Q_N_GROUPS + g;
      e8q_run_qlin_open(&C->lin[q], R, sh, 1, b, g, C->S.p + C->S.off_SU[q], C->S.p + C->S.off_SV[q], C->fac[g]);
      C->blocks[b].lin[g] = (e8q_linear){.m = gp->m, .n = gp->n, .w = NULL, .q = &C->lin[q].ql};
    }
    C->blocks[b].layer1 = b + 1;
    e8q_st_close(sh);
  }
  if (!loaded) {
    memcpy(C->S.p + C->S.off_final, R->head->final_norm, sizeof(float) * (size_t)D);
    if (C->S.train_head)
      memcpy(C->S.p + C->S.off_head, R->head->lm_head, sizeof(float) * (size_t)R->cfg.vocab_size * D);
  }
  C->M.cfg = &R->cfg;
  C->M.blocks = C->blocks;
  C->M.embed = R->head->embed;
  C->M.final_norm = R->head->final_norm;
  C->M.lm_head = R->head->lm_head; /* tied: the embedding, frozen */
  e8q_e2e_bind(&C->S, &C->M);
  e8q_e2e_refresh(&C->S, &C->M);
}

static void ctx_close(e2e_ctx *C) {
  const int nq = C->R->cfg.n_layers * E8Q_N_GROUPS;
  for (int q = 0; q < nq; q++) {
    e8q_run_qlin_close(&C->lin[q]);
  }
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    e8q_had_factor_free(&C->fac[g][0]);
    e8q_had_factor_free(&C->fac[g][1]);
  }
  free(C->lin);
  free(C->blocks);
  e8q_e2e_state_free(&C->S);
  memset(C, 0, sizeof *C);
}

/* ---------------------------------------------------------------- the stage */
/* after every epoch and at the end (every rank): commit, report, fault point */
static void epoch_end(void *ctx, const e8q_e2e_state *S) {
  e2e_ctx *C = ctx;
  e8q_run *R = C->R;
  state_commit(R, S);
  e8q_run_barrier(); /* the checkpoint is on disk before any rank can be killed at e2e.epoch */
  if (R->rank == 0) {
    cJSON *f = cJSON_CreateObject();
    cJSON_AddNumberToObject(f, "epoch", S->epoch);
    if (S->done) {
      cJSON_AddNumberToObject(f, "held_out_ce_before", S->init_loss);
      cJSON_AddNumberToObject(f, "held_out_ce_after", S->best_loss);
      e8q_info("e8q: end-to-end fine-tuned, %d epoch%s: held-out CE %.6g -> %.6g", S->epoch, S->epoch == 1 ? "" : "s",
               S->init_loss, S->best_loss);
      e8q_progress_event("e2e_done", f, 0);
    } else {
      cJSON_AddNumberToObject(f, "train_ce", S->train_loss);
      cJSON_AddNumberToObject(f, "held_out_ce", S->valid_loss);
      cJSON_AddNumberToObject(f, "held_out_ce_before", S->init_loss);
      e8q_info("e8q: end-to-end fine-tuning epoch %d/%d: train CE %.6g, held-out CE %.6g (before %.6g)", S->epoch,
               R->o->e2e_epochs, S->train_loss, S->valid_loss, S->init_loss);
      e8q_progress_event("e2e_epoch", f, 0);
    }
  }
  if (!S->done) e8q_fault_point("e2e.epoch");
}

void e8q_run_e2e(e8q_run *R) {
  if (!e8q_run_e2e_on(R)) return;
  if (e8q_run_has_step(R, "e2e") && e8q_run_have(R, E2E_STATE)) {
    targets_remove(R); /* a run killed between the STEP and the removal */
    e8q_progress_step("e2e", -1, NULL, 1);
    return;
  }
  e2e_ctx C;
  ctx_open(R, &C);
  if (!C.S.done) {
    const int T = R->T, k = topk_of(R), n_my = R->s1 - R->s0;
    const size_t pk = (size_t)(T - 1) * k, TD = (size_t)T * R->dim;
    if (!e8q_run_e2e_targets_have(R)) { /* missing or corrupt: the original model again */
      e8q_info("e8q: end-to-end targets are missing or corrupt: recomputing them from the original model");
      const double t = e8q_run_stage_begin();
      float *X = e8q_malloc(sizeof(float) * (size_t)(n_my > 0 ? n_my : 1) * TD, "final hidden states"); /* [n_my, T, dim] */
      e8q_run_acts_rebuild(R, R->cfg.n_layers, X);
      e8q_run_e2e_targets_commit(R, X);
      free(X);
      e8q_run_stage_end(R, E8Q_STAGE_E2E_TARGETS, t);
    }
    int *tid = e8q_malloc(sizeof(int) * (size_t)(n_my > 0 ? n_my : 1) * pk, "e2e target ids");       /* [n_my, T-1, k] */
    float *tprob = e8q_malloc(sizeof(float) * (size_t)(n_my > 0 ? n_my : 1) * pk, "e2e target probs"); /* [n_my, T-1, k] */
    targets_load(R, tid, tprob);
    const e8q_train_hparams hp = e8q_run_train_hparams(R, R->o->e2e_epochs);
    e8q_e2e_hooks hk = {epoch_end, &C};
    const int n_valid = R->o->ft_valid, n_train = R->plan.devset - n_valid;
    const double t = e8q_run_stage_begin();
    e8q_e2e_train(&hp, R->comm, &C.M, &C.S, T, k, n_train, n_valid, R->s0, R->s1,
                  R->calib.ids + (size_t)R->s0 * T, tid, tprob, &hk);
    e8q_run_stage_end(R, E8Q_STAGE_E2E, t);
    free(tprob);
    free(tid);
  }
  ctx_close(&C);
  e8q_run_step(R, "e2e");
  e8q_run_barrier();
  targets_remove(R);
  e8q_progress_step("e2e", -1, NULL, 0);
}

/* ---------------------------------------------------------------- what gather and validate take */
struct e8q_e2e_tuned {
  e8q_safetensors *st; /* e2e/state.ckpt */
  e8q_e2e_state L;     /* its layout */
  const e8q_config *cfg;
  const e8q_plan *plan;
  const float *best;   /* [L.n] the tuned parameters */
};

e8q_e2e_tuned *e8q_run_e2e_tuned_open(e8q_run *R) {
  if (!e8q_run_e2e_on(R)) return NULL;
  char path[4096];
  e8q_rundir_path(R->rd, E2E_STATE, path, sizeof path);
  e8q_e2e_tuned *t = e8q_calloc(1, sizeof *t, "e2e tuned tensors");
  t->st = e8q_ckpt_open(path, "e2e");
  E8Q_CHECK((int)e8q_ckpt_meta_num(t->st, "done", path) == 1,
            "internal: %s: end-to-end fine-tuning is not finished (rerun the same command)", path);
  e8q_e2e_layout(&t->L, &R->cfg);
  t->cfg = &R->cfg;
  t->plan = &R->plan;
  t->best = e8q_ckpt_get(t->st, "best", E8Q_DT_F32, (int64_t)t->L.n);
  return t;
}

const float *e8q_run_e2e_tuned_find(const e8q_e2e_tuned *t, const char *name, int *ndim, int64_t shape[2]) {
  if (!t) return NULL;
  const e8q_config *c = t->cfg;
  const char *rest = NULL;
  *ndim = 1;
  shape[0] = c->dim;
  shape[1] = 0;
  const int b = e8q_layout_layer_of(name, &rest);
  if (b >= 0 && b < c->n_layers && *rest) {
    if (!strcmp(rest, e8q_layout_norm_names[E8Q_NORM_ATTN])) return t->best + t->L.off_attn[b];
    if (!strcmp(rest, e8q_layout_norm_names[E8Q_NORM_FFN])) return t->best + t->L.off_ffn[b];
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      const e8q_group_plan *gp = &t->plan->groups[g];
      const size_t len = strlen(gp->name), q = (size_t)b * E8Q_N_GROUPS + g;
      if (strncmp(rest, gp->name, len) != 0 || rest[len] != '.') continue;
      if (!strcmp(rest + len + 1, e8q_field_names[E8Q_FIELD_SU])) {
        shape[0] = gp->n_pad;
        return t->best + t->L.off_SU[q];
      }
      if (!strcmp(rest + len + 1, e8q_field_names[E8Q_FIELD_SV])) {
        shape[0] = gp->m;
        return t->best + t->L.off_SV[q];
      }
    }
    return NULL;
  }
  if (!strcmp(name, E8Q_LAYOUT_FINAL_NORM)) return t->best + t->L.off_final;
  if (!strcmp(name, E8Q_LAYOUT_LM_HEAD) && t->L.train_head) {
    *ndim = 2;
    shape[0] = c->vocab_size;
    shape[1] = c->dim;
    return t->best + t->L.off_head;
  }
  return NULL;
}

void e8q_run_e2e_tuned_close(e8q_e2e_tuned *t) {
  if (!t) return;
  e8q_st_close(t->st);
  e8q_e2e_state_free(&t->L);
  free(t);
}

cJSON *e8q_run_e2e_record(e8q_run *R) {
  if (!e8q_run_e2e_on(R)) return NULL;
  char path[4096];
  e8q_rundir_path(R->rd, E2E_STATE, path, sizeof path);
  e8q_safetensors *st = e8q_ckpt_open(path, "e2e");
  cJSON *e = cJSON_CreateObject();
  cJSON_AddNumberToObject(e, "held_out_ce_before", e8q_ckpt_meta_num(st, "init_loss", path));
  cJSON_AddNumberToObject(e, "held_out_ce_after", e8q_ckpt_meta_num(st, "best_loss", path));
  cJSON_AddNumberToObject(e, "epochs", e8q_ckpt_meta_num(st, "epoch", path));
  cJSON_AddNumberToObject(e, "steps", e8q_ckpt_meta_num(st, "step", path));
  cJSON_AddNumberToObject(e, "topk", e8q_ckpt_meta_num(st, "topk", path));
  cJSON_AddStringToObject(e, "trained",
                          R->cfg.tied ? "SU/SV of every linear, every norm, the final norm (lm_head tied to the "
                                        "embedding: frozen)"
                                      : "SU/SV of every linear, every norm, the final norm, lm_head");
  e8q_st_close(st);
  return e;
}
