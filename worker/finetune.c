/* worker/finetune.c: the block fine-tuning round (worker/finetune.h). */
#include "worker/finetune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/rng.h"
#include "kernels/adam.h"
#include "kernels/hadamard.h"
#include "kernels/transformer_grad.h"
#include "worker/block_train.h"
#include "worker/seqdeal.h"

/* the data order of epoch e of round (layer, group): its own stream under the run seed */
#define E8Q_FT_RNG_STREAM (0x4674ull << 32) /* "Ft" */

/* ---------------------------------------------------------------- state */
void e8q_ft_layout(e8q_ft_state *S, const e8q_config *cfg, int n_quant) {
  memset(S, 0, sizeof *S);
  E8Q_CHECK(n_quant >= 0 && n_quant <= E8Q_N_GROUPS, "fine-tuning: %d quantized groups", n_quant);
  S->n_quant = n_quant;
  size_t off = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) S->off_SU[g] = S->off_SV[g] = S->off_W[g] = E8Q_FT_NONE;
  for (int g = 0; g < n_quant; g++) {
    int m, n;
    e8q_group_shape(cfg, g, &m, &n);
    S->off_SU[g] = off;
    off += (size_t)e8q_pad8(n);
    S->off_SV[g] = off;
    off += (size_t)m;
  }
  S->n_susv = off;
  S->off_attn = off;
  off += (size_t)cfg->dim;
  S->off_ffn = off;
  off += (size_t)cfg->dim;
  for (int g = n_quant; g < E8Q_N_GROUPS; g++) {
    int m, n;
    e8q_group_shape(cfg, g, &m, &n);
    S->off_W[g] = off;
    off += (size_t)m * n;
  }
  S->n = off;
  S->train_loss = S->valid_loss = NAN;
}

void e8q_ft_state_init(e8q_ft_state *S, const e8q_config *cfg, int n_quant) {
  e8q_ft_layout(S, cfg, n_quant);
  size_t off = S->n;
  S->p = e8q_calloc(off, sizeof(float), "fine-tuning parameters");
  S->best = e8q_calloc(off, sizeof(float), "fine-tuning best parameters");
  S->m = e8q_calloc(off, sizeof(float), "Adam first moment");
  S->v = e8q_calloc(off, sizeof(float), "Adam second moment");
}

void e8q_ft_state_free(e8q_ft_state *S) {
  free(S->p);
  free(S->best);
  free(S->m);
  free(S->v);
  memset(S, 0, sizeof *S);
}

void e8q_ft_bind(e8q_ft_state *S, const e8q_config *cfg, e8q_block *tb) {
  tb->attn_norm = S->p + S->off_attn;
  tb->ffn_norm = S->p + S->off_ffn;
  for (int g = S->n_quant; g < E8Q_N_GROUPS; g++) {
    e8q_group_shape(cfg, g, &tb->lin[g].m, &tb->lin[g].n);
    tb->lin[g].w = S->p + S->off_W[g];
    tb->lin[g].q = NULL;
  }
}

void e8q_ft_refresh(e8q_ft_state *S, e8q_block *tb) {
  for (int g = 0; g < S->n_quant; g++) {
    e8q_qlinear *q = (e8q_qlinear *)tb->lin[g].q; /* the caller's, bound to S->p */
    E8Q_CHECK(q && q->d.SU == S->p + S->off_SU[g],
              "fine-tuning: quantized linear %s is not bound to the trained SU/SV", e8q_group_names[g]);
    e8q_qlinear_set_scales(q, S->p + S->off_SV[g], q->d.fuse_scales);
  }
}

/* ---------------------------------------------------------------- losses */
/* the deal of X and Y [s1-s0, T, dim] (worker/seqdeal.h) */
static void deal_init(e8q_seqdeal *d, e8q_comm *comm, int s0, int s1, size_t TD, const float *X, const float *Y) {
  const void *base[2] = {X, Y};
  const size_t bytes[2] = {sizeof(float) * TD, sizeof(float) * TD};
  e8q_seqdeal_init(d, comm, s0, s1, 2, base, bytes);
}

double e8q_ft_loss(e8q_comm *comm, const e8q_config *cfg, const e8q_block *tb, int T, int v0, int v1, int s0, int s1,
                   const float *X, const float *Y) {
  const size_t TD = (size_t)T * cfg->dim;
  float *y = e8q_alloc_aligned(sizeof(float) * TD, "fine-tuning output"); /* [T, dim] */
  e8q_bt_saved sv = {0};
  e8q_xsum acc;
  e8q_xsum_init(&acc, 1, E8Q_XSUM_FRAC_DEFAULT);
  /* the held-out sequences dealt evenly to the ranks, one sequence per forward */
  e8q_seqdeal d;
  deal_init(&d, comm, s0, s1, TD, X, Y);
  const int n = v1 > v0 ? v1 - v0 : 0;
  int *list = e8q_malloc(sizeof(int) * (size_t)(n ? n : 1), "fine-tuning held-out list"); /* [n] */
  for (int k = 0; k < n; k++) list[k] = v0 + k;
  for (int r = 0; r < e8q_seqdeal_rounds(&d, n); r++) {
    const void *xy[2];
    if (e8q_seqdeal_round(&d, list, n, r, xy) < 0) continue;
    e8q_block_train_forward(tb, cfg, 1, T, xy[0], y, &sv);
    double l = e8q_mse(TD, y, xy[1], NULL);
    e8q_xsum_add(&acc, &l);
  }
  free(list);
  e8q_seqdeal_free(&d);
  double sum = 0;
  if (comm) e8q_comm_allreduce_sum_ordered(comm, &acc, &sum);
  else e8q_xsum_get(&acc, &sum);
  e8q_xsum_free(&acc);
  e8q_bt_saved_free(&sv);
  free(y);
  return v1 > v0 ? sum / ((double)(v1 - v0) * (double)TD) : NAN;
}

/* ---------------------------------------------------------------- the round */
/* perm [n] <- a shuffle of 0..n-1 (Fisher-Yates) from (seed, layer, group, epoch) */
static void epoch_order(const e8q_ft_opts *o, int epoch, int n, int *perm) {
  e8q_rng r;
  e8q_rng_init(&r, o->seed,
               E8Q_FT_RNG_STREAM + ((uint64_t)o->layer << 20) + ((uint64_t)o->group << 16) + (uint64_t)epoch);
  for (int i = 0; i < n; i++) perm[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)e8q_rng_below(&r, (uint64_t)i + 1);
    int t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

void e8q_ft_round(const e8q_ft_opts *o, e8q_comm *comm, const e8q_config *cfg, e8q_block *tb, e8q_ft_state *S, int T,
                  int n_train, int n_valid, int s0, int s1, const float *X, const float *Y, const e8q_ft_hooks *hooks) {
  if (S->done) return;
  E8Q_CHECK(n_train >= 1 && n_valid >= 1,
            "fine-tuning layer %d group %s: %d training and %d held-out sequences (at least one of each is needed)",
            o->layer, e8q_group_names[o->group], n_train, n_valid);
  E8Q_CHECK(o->batch >= 1 && o->epochs >= 0, "fine-tuning: batch %d, epochs %d", o->batch, o->epochs);
  const int v0 = n_train, v1 = n_train + n_valid;
  const size_t TD = (size_t)T * cfg->dim, n = S->n;
  if (!S->started) { /* the loss before training is the first best */
    S->init_loss = S->best_loss = e8q_ft_loss(comm, cfg, tb, T, v0, v1, s0, s1, X, Y);
    memcpy(S->best, S->p, sizeof(float) * n);
    S->started = 1;
  }
  float *grad = e8q_alloc_aligned(sizeof(float) * n, "fine-tuning gradient");          /* [n] one sequence's */
  float *gmean = e8q_alloc_aligned(sizeof(float) * n, "fine-tuning step gradient");    /* [n] the step's mean */
  double *acc = e8q_malloc(sizeof(double) * (n + 1), "fine-tuning gradient (double)"); /* [n+1] grad | loss */
  float *y = e8q_alloc_aligned(sizeof(float) * TD, "fine-tuning output");             /* [T, dim] */
  int *perm = e8q_malloc(sizeof(int) * (size_t)n_train, "fine-tuning order");          /* [n_train] */
  e8q_xsum xs;
  e8q_xsum_init(&xs, n + 1, E8Q_XSUM_FRAC_DEFAULT);
  e8q_bt_saved sv = {0};
  e8q_bt_grads gr;
  memset(&gr, 0, sizeof gr);
  gr.d_attn_norm = grad + S->off_attn;
  gr.d_ffn_norm = grad + S->off_ffn;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    if (g < S->n_quant) {
      gr.dSU[g] = grad + S->off_SU[g];
      gr.dSV[g] = grad + S->off_SV[g];
    } else {
      gr.dW[g] = grad + S->off_W[g];
    }
  }
  e8q_adam A;
  e8q_adam_init(&A);
  A.step = S->step;
  e8q_adam_param ap[2] = {
      {S->p, gmean, S->m, S->v, S->n_susv, (float)o->susv_lr},
      {S->p + S->n_susv, gmean + S->n_susv, S->m + S->n_susv, S->v + S->n_susv, n - S->n_susv, (float)o->lr},
  };
  const int n_ap = S->n_susv ? 2 : 1;
  const e8q_adam_param *aps = S->n_susv ? ap : ap + 1;
  const int steps = (n_train + o->batch - 1) / o->batch;
  e8q_seqdeal d; /* a step's sequences dealt evenly to the ranks */
  deal_init(&d, comm, s0, s1, TD, X, Y);

  while (S->epoch < o->epochs && S->worse < o->early_stop) {
    epoch_order(o, S->epoch, n_train, perm);
    double train_sum = 0; /* the same doubles in the same order on every rank */
    for (int t = 0; t < steps; t++) {
      e8q_fault_point("ft.step");
      const int k0 = t * o->batch, k1 = k0 + o->batch < n_train ? k0 + o->batch : n_train;
      e8q_xsum_zero(&xs);
      for (int r = 0; r < e8q_seqdeal_rounds(&d, k1 - k0); r++) {
        const void *xy[2];
        if (e8q_seqdeal_round(&d, perm + k0, k1 - k0, r, xy) < 0) continue; /* none for this rank */
        memset(grad, 0, sizeof(float) * n);
        e8q_block_train_forward(tb, cfg, 1, T, xy[0], y, &sv);
        acc[n] = e8q_mse(TD, y, xy[1], y); /* y <- dL/dy */
        e8q_block_train_backward(tb, cfg, &sv, y, NULL, &gr);
        for (size_t j = 0; j < n; j++) acc[j] = grad[j];
        e8q_xsum_add(&xs, acc);
      }
      if (comm) e8q_comm_allreduce_sum_ordered(comm, &xs, acc);
      else e8q_xsum_get(&xs, acc);
      const double scale = 1.0 / ((double)(k1 - k0) * (double)TD); /* mean over the step's elements */
      for (size_t j = 0; j < n; j++) gmean[j] = (float)(acc[j] * scale);
      train_sum += acc[n];
      e8q_adam_step(&A, n_ap, aps);
      e8q_ft_refresh(S, tb);
    }
    S->step = A.step;
    S->train_loss = train_sum / ((double)n_train * (double)TD);
    S->valid_loss = e8q_ft_loss(comm, cfg, tb, T, v0, v1, s0, s1, X, Y);
    if (S->valid_loss < S->best_loss) {
      S->best_loss = S->valid_loss;
      memcpy(S->best, S->p, sizeof(float) * n);
      S->worse = 0;
    } else {
      S->worse++;
    }
    S->epoch++;
    if (hooks && hooks->epoch_end) hooks->epoch_end(hooks->ctx, S);
  }
  /* the best held-out state is the result */
  memcpy(S->p, S->best, sizeof(float) * n);
  e8q_ft_refresh(S, tb);
  S->done = 1;
  if (hooks && hooks->epoch_end) hooks->epoch_end(hooks->ctx, S);

  e8q_seqdeal_free(&d);
  e8q_bt_saved_free(&sv);
  e8q_xsum_free(&xs);
  free(perm);
  free(y);
  free(acc);
  free(gmean);
  free(grad);
}
