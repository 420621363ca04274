/* worker/finetune.c: the block fine-tuning round (worker/finetune.h). */
#include "worker/finetune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/device.h"
#include "common/error.h"
#include "kernels/hadamard.h"
#include "kernels/qlinear_gpu.h"
#include "kernels/transformer_gpu.h"
#include "kernels/transformer_grad.h"
#include "worker/block_train.h"
#include "worker/forward.h"
#include "worker/seqdeal.h"

/* the streams of the rounds' data orders (e8q_train_opts.stream) */
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
  e8q_train_state_alloc(&S->tr);
}

void e8q_ft_state_free(e8q_ft_state *S) {
  e8q_train_state_release(&S->tr);
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

/* ---------------------------------------------------------------- one sequence */
/* what e8q_train_run needs of a round: the block, its state and work buffers */
typedef struct {
  const e8q_config *cfg;
  e8q_block *tb;
  e8q_ft_state *S;            /* NULL for a loss only */
  int T;
  float *y;                   /* [T, dim] the block's output, then dL/dy */
  e8q_bt_saved sv;            /* the forward's activations */
  const e8q_ft_hooks *hooks;  /* the caller's, or NULL */
  /* --device cuda: the block on this rank's GPU (gw NULL: the CPU) */
  e8q_tf_gpu *gw;                      /* the device workspace, activations and gradients */
  e8q_qlinear_gpu *gq[E8Q_N_GROUPS];   /* the quantized groups' device layers (owned) */
  e8q_tf_gpu_lin lin[E8Q_N_GROUPS];    /* each group's device form or dense host weights */
} ft_ctx;

/* the block's output y [T, dim] for x on the CPU or the device (activations kept for a backward) */
static void ft_forward(ft_ctx *c, const float *x) {
  if (c->gw) {
    e8q_tf_gpu_train_forward(c->gw, 1, c->T, x, c->y, c->tb->attn_norm, c->tb->ffn_norm, c->lin);
  } else {
    e8q_block_train_forward(c->tb, c->cfg, 1, c->T, x, c->y, &c->sv);
  }
}

/* parts: X [T, dim], Y [T, dim] (the original block's output) */
static double ft_seq(void *ctx, const void *const *parts, float *grad) {
  ft_ctx *c = ctx;
  const size_t TD = (size_t)c->T * c->cfg->dim;
  ft_forward(c, parts[0]);
  if (!grad) return e8q_mse(TD, c->y, parts[1], NULL);
  const double l = e8q_mse(TD, c->y, parts[1], c->y); /* y <- dL/dy */
  const e8q_ft_state *S = c->S;
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
  if (c->gw) e8q_tf_gpu_train_backward(c->gw, c->y, NULL, c->lin, &gr);
  else e8q_block_train_backward(c->tb, c->cfg, &c->sv, c->y, NULL, &gr);
  return l;
}

static void ft_refresh_cb(void *ctx) {
  ft_ctx *c = ctx;
  e8q_ft_refresh(c->S, c->tb);
  if (!c->gw) return;
  for (int g = 0; g < E8Q_N_GROUPS; g++)
    if (c->gq[g]) e8q_qlinear_gpu_set_scales(c->gq[g], (const e8q_qlinear *)c->tb->lin[g].q);
  e8q_tf_gpu_forget_weights(c->gw); /* the dense weights changed in place */
}

static void ft_epoch_cb(void *ctx, const e8q_train_state *S) {
  ft_ctx *c = ctx;
  (void)S; /* c->S's shared part */
  if (c->hooks && c->hooks->epoch_end) c->hooks->epoch_end(c->hooks->ctx, c->S);
}

/* the deal of X and Y [s1-s0, T, dim] (worker/seqdeal.h) */
static void deal_init(e8q_seqdeal *d, e8q_comm *comm, int s0, int s1, size_t TD, const float *X, const float *Y) {
  const void *base[2] = {X, Y};
  const size_t bytes[2] = {sizeof(float) * TD, sizeof(float) * TD};
  e8q_seqdeal_init(d, comm, s0, s1, 2, base, bytes);
}

/* --device cuda (e8q_device_cuda): the block's workspace and quantized layers on this rank's
 * GPU; a rank on a device that cannot take them is fatal (the CPU would give other bits) */
static void ctx_gpu_open(ft_ctx *c) {
  const int dev = e8q_device_cuda();
  if (dev < 0 || c->T > E8Q_TF_GPU_MAX_T) return;
  const char *why = NULL;
  c->gw = e8q_block_gpu_open(c->cfg, dev, "block fine-tuning");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_linear *L = &c->tb->lin[g];
    c->lin[g] = (e8q_tf_gpu_lin){.w = L->w, .m = L->m, .n = L->n};
    if (!L->q) continue;
    c->gq[g] = e8q_qlinear_gpu_create((const e8q_qlinear *)L->q, dev, &why);
    E8Q_CHECK(c->gq[g], "fine-tuning on CUDA device %d: quantized %s [%d x %d]: %s (run with --device cpu)", dev,
              e8q_group_names[g], L->m, L->n, why);
    c->lin[g] = (e8q_tf_gpu_lin){.q = c->gq[g], .m = L->m, .n = L->n};
  }
}

static void ctx_init(ft_ctx *c, const e8q_config *cfg, e8q_block *tb, e8q_ft_state *S, int T,
                     const e8q_ft_hooks *hooks) {
  memset(c, 0, sizeof *c);
  c->cfg = cfg;
  c->tb = tb;
  c->S = S;
  c->T = T;
  c->hooks = hooks;
  c->y = e8q_alloc_aligned(sizeof(float) * (size_t)T * cfg->dim, "fine-tuning output"); /* [T, dim] */
  ctx_gpu_open(c);
}

static void ctx_free(ft_ctx *c) {
  e8q_bt_saved_free(&c->sv);
  for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_qlinear_gpu_free(c->gq[g]);
  e8q_tf_gpu_free(c->gw);
  free(c->y);
}

/* ---------------------------------------------------------------- losses */
double e8q_ft_loss(e8q_comm *comm, const e8q_config *cfg, const e8q_block *tb, int T, int v0, int v1, int s0, int s1,
                   const float *X, const float *Y) {
  ft_ctx c;
  ctx_init(&c, cfg, (e8q_block *)tb, NULL, T, NULL); /* forward only: tb is not changed */
  e8q_seqdeal d;
  deal_init(&d, comm, s0, s1, (size_t)T * cfg->dim, X, Y);
  const e8q_train_fns f = {ft_seq, NULL, NULL, &c};
  double l = e8q_train_loss(comm, &d, v0, v1, (double)T * cfg->dim, &f);
  e8q_seqdeal_free(&d);
  ctx_free(&c);
  return l;
}

/* ---------------------------------------------------------------- the round */
void e8q_ft_round(const e8q_ft_opts *o, e8q_comm *comm, const e8q_config *cfg, e8q_block *tb, e8q_ft_state *S, int T,
                  int n_train, int n_valid, int s0, int s1, const float *X, const float *Y, const e8q_ft_hooks *hooks) {
  if (S->done) return;
  char what[160];
  snprintf(what, sizeof what, "fine-tuning layer %d group %s", o->layer, e8q_group_names[o->group]);
  const e8q_train_opts to = {
      .hp = o->hp,
      /* the data order of epoch e of round (layer, group): its own stream under the run seed */
      .stream = E8Q_FT_RNG_STREAM + ((uint64_t)o->layer << 20) + ((uint64_t)o->group << 16),
      .elems_per_seq = (double)T * cfg->dim,
      .what = what,
      .fault_step = "ft.step",
  };
  ft_ctx c;
  ctx_init(&c, cfg, tb, S, T, hooks);
  e8q_seqdeal d; /* a step's sequences dealt evenly to the ranks */
  deal_init(&d, comm, s0, s1, (size_t)T * cfg->dim, X, Y);
  const e8q_train_fns f = {ft_seq, ft_refresh_cb, ft_epoch_cb, &c};
  e8q_train_run(&to, comm, &d, &S->tr, n_train, n_valid, &f);
  e8q_seqdeal_free(&d);
  ctx_free(&c);
}
