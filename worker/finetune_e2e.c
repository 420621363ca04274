/* worker/finetune_e2e.c: end-to-end fine-tuning (worker/finetune_e2e.h). */
#include "worker/finetune_e2e.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/device.h"
#include "common/error.h"
#include "kernels/qlinear_gpu.h"
#include "kernels/transformer.h"
#include "kernels/transformer_gpu.h"
#include "kernels/transformer_grad.h"
#include "worker/block_train.h"
#include "worker/forward.h"
#include "worker/linear.h"
#include "worker/seqdeal.h"

/* the data order of epoch e: its own stream under the run seed */
#define E8Q_E2E_RNG_STREAM (0x4532ull << 32) /* "E2" */
#define E8Q_E2E_NONE ((size_t)-1)

/* ---------------------------------------------------------------- state */
void e8q_e2e_layout(e8q_e2e_state *S, const e8q_config *cfg) {
  memset(S, 0, sizeof *S);
  const int L = cfg->n_layers;
  S->n_layers = L;
  S->train_head = !cfg->tied;
  S->off_SU = e8q_malloc(sizeof(size_t) * (size_t)L * E8Q_N_GROUPS, "e2e SU offsets");  /* [L*4] */
  S->off_SV = e8q_malloc(sizeof(size_t) * (size_t)L * E8Q_N_GROUPS, "e2e SV offsets");  /* [L*4] */
  S->off_attn = e8q_malloc(sizeof(size_t) * (size_t)L, "e2e norm offsets");              /* [L] */
  S->off_ffn = e8q_malloc(sizeof(size_t) * (size_t)L, "e2e norm offsets");               /* [L] */
  size_t off = 0;
  for (int b = 0; b < L; b++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      int m, n;
      e8q_group_shape(cfg, g, &m, &n);
      S->off_SU[b * E8Q_N_GROUPS + g] = off;
      off += (size_t)e8q_pad8(n);
      S->off_SV[b * E8Q_N_GROUPS + g] = off;
      off += (size_t)m;
    }
  S->n_susv = off;
  for (int b = 0; b < L; b++) {
    S->off_attn[b] = off;
    off += (size_t)cfg->dim;
    S->off_ffn[b] = off;
    off += (size_t)cfg->dim;
  }
  S->off_final = off;
  off += (size_t)cfg->dim;
  S->off_head = E8Q_E2E_NONE;
  if (S->train_head) {
    S->off_head = off;
    off += (size_t)cfg->vocab_size * (size_t)cfg->dim;
  }
  S->n = off;
  S->train_loss = S->valid_loss = NAN;
}

void e8q_e2e_state_init(e8q_e2e_state *S, const e8q_config *cfg) {
  e8q_e2e_layout(S, cfg);
  e8q_train_state_alloc(&S->tr);
}

void e8q_e2e_state_free(e8q_e2e_state *S) {
  free(S->off_SU);
  free(S->off_SV);
  free(S->off_attn);
  free(S->off_ffn);
  e8q_train_state_release(&S->tr);
  memset(S, 0, sizeof *S);
}

/* ---------------------------------------------------------------- binding */
void e8q_e2e_bind(e8q_e2e_state *S, e8q_e2e_model *M) {
  for (int b = 0; b < S->n_layers; b++) {
    M->blocks[b].attn_norm = S->p + S->off_attn[b];
    M->blocks[b].ffn_norm = S->p + S->off_ffn[b];
  }
  M->final_norm = S->p + S->off_final;
  if (S->train_head) M->lm_head = S->p + S->off_head;
}

void e8q_e2e_refresh(e8q_e2e_state *S, e8q_e2e_model *M) {
  for (int b = 0; b < S->n_layers; b++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      e8q_qlinear *q = (e8q_qlinear *)M->blocks[b].lin[g].q; /* the caller's, bound to S->p */
      const size_t k = (size_t)b * E8Q_N_GROUPS + g;
      E8Q_CHECK(q && q->d.SU == S->p + S->off_SU[k],
                "end-to-end fine-tuning: layer %d %s is not a quantized linear bound to the trained SU/SV", b,
                e8q_group_names[g]);
      e8q_qlinear_set_scales(q, S->p + S->off_SV[k], q->d.fuse_scales);
    }
}

/* ---------------------------------------------------------------- targets */
void e8q_e2e_topk(int n_pos, int V, const float *logits, int k, int *ids, float *probs) {
  E8Q_CHECK(k >= 1 && k <= V, "end-to-end targets: top-k %d of a vocabulary of %d", k, V);
  for (int t = 0; t < n_pos; t++) {
    const float *z = logits + (size_t)t * V;
    int *id = ids + (size_t)t * k;
    float *pr = probs + (size_t)t * k;
    double mx = -INFINITY, sum = 0;
    for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < V; v++) sum += exp((double)z[v] - mx);
    /* the k largest logits, descending; a later id enters only when strictly larger (ties keep
     * the lower id) */
    int c = 0;
    for (int v = 0; v < V; v++) {
      if (c == k && !(z[v] > z[id[k - 1]])) continue;
      int j = c < k ? c++ : k - 1;
      while (j > 0 && z[v] > z[id[j - 1]]) {
        id[j] = id[j - 1];
        j--;
      }
      id[j] = v;
    }
    for (int j = 0; j < k; j++) pr[j] = (float)(exp((double)z[id[j]] - mx) / sum);
  }
}

/* ---------------------------------------------------------------- one sequence */
static void work_ensure(e8q_e2e_work *w, const e8q_config *c, int T) {
  if (w->T == T && w->xs) return;
  void *gpu = w->gpu; /* the device side does not depend on T */
  w->gpu = NULL;
  e8q_e2e_work_free(w);
  w->gpu = gpu;
  const size_t TD = (size_t)T * c->dim;
  w->T = T;
  w->xs = e8q_alloc_aligned(sizeof(float) * TD * (size_t)c->n_layers, "e2e block inputs"); /* [L, T, dim] */
  w->x = e8q_alloc_aligned(sizeof(float) * TD, "e2e stream");                            /* [T, dim] */
  w->xn = e8q_alloc_aligned(sizeof(float) * TD, "e2e normed stream");                    /* [T, dim] */
  w->dxn = e8q_alloc_aligned(sizeof(float) * TD, "e2e stream gradient");                 /* [T, dim] */
  w->logits = e8q_alloc_aligned(sizeof(float) * (size_t)T * c->vocab_size, "e2e logits"); /* [T, vocab] */
  w->bt = e8q_calloc(1, sizeof(e8q_bt_saved), "e2e block activations");
}

/* ---------------------------------------------------------------- the device side */
typedef struct {
  e8q_tf_gpu *tf;        /* one block workspace for every layer (same shape), and the head */
  int n;                 /* n_layers * E8Q_N_GROUPS */
  e8q_qlinear_gpu **q;   /* [n] every quantized linear on the device, owned */
  e8q_tf_gpu_lin *lin;   /* [n] layer b's groups at lin + 4b */
} e2e_gpu;

static void e2e_gpu_free(e2e_gpu *g) {
  if (!g) return;
  for (int i = 0; i < g->n; i++) e8q_qlinear_gpu_free(g->q[i]);
  e8q_tf_gpu_free(g->tf);
  free(g->q);
  free(g->lin);
  free(g);
}

void e8q_e2e_work_use_device(e8q_e2e_work *w, const e8q_e2e_model *M, int device) {
  if (w->gpu) return;
  const e8q_config *c = M->cfg;
  e2e_gpu *g = e8q_calloc(1, sizeof *g, "end-to-end GPU state");
  const char *why = NULL;
  g->tf = e8q_block_gpu_open(c, device, "end-to-end fine-tuning");
  g->n = c->n_layers * E8Q_N_GROUPS;
  g->q = e8q_calloc((size_t)g->n, sizeof *g->q, "end-to-end GPU layers");    /* [n] */
  g->lin = e8q_calloc((size_t)g->n, sizeof *g->lin, "end-to-end GPU linears"); /* [n] */
  for (int i = 0; i < g->n; i++) {
    const e8q_linear *L = &M->blocks[i / E8Q_N_GROUPS].lin[i % E8Q_N_GROUPS];
    E8Q_CHECK(L->q, "end-to-end fine-tuning: layer %d %s is not quantized", i / E8Q_N_GROUPS,
              e8q_group_names[i % E8Q_N_GROUPS]);
    g->q[i] = e8q_qlinear_gpu_create((const e8q_qlinear *)L->q, device, &why);
    E8Q_CHECK(g->q[i], "end-to-end fine-tuning on CUDA device %d: layer %d %s [%d x %d]: %s (run with --device cpu)",
              device, i / E8Q_N_GROUPS, e8q_group_names[i % E8Q_N_GROUPS], L->m, L->n, why);
    g->lin[i] = (e8q_tf_gpu_lin){.q = g->q[i], .m = L->m, .n = L->n};
  }
  w->gpu = g;
}

void e8q_e2e_work_refresh(e8q_e2e_work *w, const e8q_e2e_model *M) {
  e2e_gpu *g = w->gpu;
  if (!g) return;
  for (int i = 0; i < g->n; i++)
    e8q_qlinear_gpu_set_scales(g->q[i], (const e8q_qlinear *)M->blocks[i / E8Q_N_GROUPS].lin[i % E8Q_N_GROUPS].q);
  e8q_tf_gpu_forget_weights(g->tf); /* an untied head is trained in place */
}

void e8q_e2e_work_free(e8q_e2e_work *w) {
  e2e_gpu_free(w->gpu);
  free(w->xs);
  free(w->x);
  free(w->xn);
  free(w->dxn);
  free(w->logits);
  if (w->bt) e8q_bt_saved_free(w->bt);
  free(w->bt);
  memset(w, 0, sizeof *w);
}

/* block b's forward from x [T, dim] into y (on the device, y may be NULL: not downloaded), its
 * activations kept (in bt, or on the device) */
static void block_forward(const e8q_e2e_model *M, const e2e_gpu *G, int b, int T, const float *x, float *y, void *bt) {
  const e8q_block *blk = &M->blocks[b];
  if (G)
    e8q_tf_gpu_train_forward(G->tf, 1, T, x, y, blk->attn_norm, blk->ffn_norm, G->lin + (size_t)b * E8Q_N_GROUPS);
  else
    e8q_block_train_forward(blk, M->cfg, 1, T, x, y, bt);
}

double e8q_e2e_seq_grad(const e8q_e2e_model *M, const e8q_e2e_state *S, int T, int k, const int *ids,
                        const int *tid, const float *tprob, float *grad, e8q_e2e_work *w) {
  const e8q_config *c = M->cfg;
  const int D = c->dim, V = c->vocab_size, L = c->n_layers, P = T - 1; /* P scored positions */
  const size_t TD = (size_t)T * D;
  const float eps = (float)c->norm_eps;
  E8Q_CHECK(T >= 2, "end-to-end fine-tuning: sequences of %d tokens (at least 2 are needed)", T);
  work_ensure(w, c, T);
  /* ---------------------------------------------------------- forward */
  for (int t = 0; t < T; t++) {
    E8Q_CHECK(ids[t] >= 0 && ids[t] < V, "end-to-end fine-tuning: token id %d outside the vocabulary of %d", ids[t], V);
    memcpy(w->x + (size_t)t * D, M->embed + (size_t)ids[t] * D, sizeof(float) * (size_t)D);
  }
  const e2e_gpu *G = w->gpu;
  for (int b = 0; b < L; b++) {
    float *xb = w->xs + (size_t)b * TD;
    memcpy(xb, w->x, sizeof(float) * TD);
    block_forward(M, G, b, T, xb, w->x, w->bt);
  }
  if (G) {
    e8q_tf_gpu_head_forward(G->tf, P, w->x, M->final_norm, M->lm_head, V, w->logits, NULL);
  } else {
    e8q_rmsnorm(P, D, w->x, M->final_norm, eps, w->xn);
    const e8q_linear head = {.m = V, .n = D, .w = (float *)M->lm_head, .q = NULL};
    e8q_linear_forward(&head, P, w->xn, w->logits);
  }
  const double loss = e8q_xent_topk(P, V, w->logits, k, tid, tprob, grad ? w->logits : NULL);
  if (!grad) return loss;
  /* ---------------------------------------------------------- backward */
  float *d_head = S->train_head ? grad + S->off_head : NULL;
  if (G) {
    e8q_tf_gpu_head_backward(G->tf, w->logits, w->dxn, grad + S->off_final, d_head);
  } else {
    e8q_linear_backward(P, V, D, w->xn, M->lm_head, w->logits, w->dxn, d_head);
    e8q_rmsnorm_backward(P, D, w->x, M->final_norm, eps, w->dxn, w->dxn, grad + S->off_final);
  }
  memcpy(w->x, w->dxn, sizeof(float) * (size_t)P * D);
  memset(w->x + (size_t)P * D, 0, sizeof(float) * (size_t)D); /* the last position is not scored */
  for (int b = L - 1; b >= 0; b--) {
    e8q_bt_grads gr;
    memset(&gr, 0, sizeof gr);
    gr.d_attn_norm = grad + S->off_attn[b];
    gr.d_ffn_norm = grad + S->off_ffn[b];
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      gr.dSU[g] = grad + S->off_SU[(size_t)b * E8Q_N_GROUPS + g];
      gr.dSV[g] = grad + S->off_SV[(size_t)b * E8Q_N_GROUPS + g];
    }
    /* the block's internals again, from its saved input (its output is not needed) */
    block_forward(M, G, b, T, w->xs + (size_t)b * TD, G ? NULL : w->dxn, w->bt);
    if (G) e8q_tf_gpu_train_backward(G->tf, w->x, w->x, G->lin + (size_t)b * E8Q_N_GROUPS, &gr);
    else e8q_block_train_backward(&M->blocks[b], c, w->bt, w->x, w->x, &gr);
  }
  return loss;
}

/* ---------------------------------------------------------------- the trainer's callbacks */
typedef struct {
  const e8q_e2e_model *M;
  e8q_e2e_state *S;
  int T, k;
  e8q_e2e_work w;             /* one set of work buffers for training and held-out losses */
  const e8q_e2e_hooks *hooks; /* the caller's, or NULL */
} e2e_ctx;

/* parts: ids [T], tid [T-1, k], tprob [T-1, k] */
static double e2e_seq(void *ctx, const void *const *parts, float *grad) {
  e2e_ctx *c = ctx;
  return e8q_e2e_seq_grad(c->M, c->S, c->T, c->k, parts[0], parts[1], parts[2], grad, &c->w);
}

static void e2e_refresh_cb(void *ctx) {
  e2e_ctx *c = ctx;
  e8q_e2e_refresh(c->S, (e8q_e2e_model *)c->M);
  e8q_e2e_work_refresh(&c->w, c->M);
}

static void e2e_epoch_cb(void *ctx, const e8q_train_state *S) {
  e2e_ctx *c = ctx;
  (void)S; /* c->S's shared part */
  if (c->hooks && c->hooks->epoch_end) c->hooks->epoch_end(c->hooks->ctx, c->S);
}

/* the deal of ids [s1-s0, T] and tid/tprob [s1-s0, T-1, k] (worker/seqdeal.h) */
static void deal_init(e8q_seqdeal *d, e8q_comm *comm, int T, int k, int s0, int s1, const int *ids, const int *tid,
                      const float *tprob) {
  const size_t tk = (size_t)(T - 1) * k;
  const void *base[3] = {ids, tid, tprob};
  const size_t bytes[3] = {sizeof(int) * (size_t)T, sizeof(int) * tk, sizeof(float) * tk};
  e8q_seqdeal_init(d, comm, s0, s1, 3, base, bytes);
}

/* ---------------------------------------------------------------- losses */
double e8q_e2e_loss(e8q_comm *comm, const e8q_e2e_model *M, const e8q_e2e_state *S, int T, int k, int v0, int v1,
                    int s0, int s1, const int *ids, const int *tid, const float *tprob) {
  e2e_ctx c = {.M = M, .S = (e8q_e2e_state *)S, .T = T, .k = k}; /* forward only: S is not changed */
  if (e8q_device_cuda() >= 0 && T <= E8Q_TF_GPU_MAX_T) e8q_e2e_work_use_device(&c.w, M, e8q_device_cuda());
  e8q_seqdeal d;
  deal_init(&d, comm, T, k, s0, s1, ids, tid, tprob);
  const e8q_train_fns f = {e2e_seq, NULL, NULL, &c};
  double l = e8q_train_loss(comm, &d, v0, v1, (double)(T - 1), &f);
  e8q_seqdeal_free(&d);
  e8q_e2e_work_free(&c.w);
  return l;
}

/* ---------------------------------------------------------------- training */
void e8q_e2e_train(const e8q_train_hparams *hp, e8q_comm *comm, e8q_e2e_model *M, e8q_e2e_state *S, int T, int k,
                   int n_train, int n_valid, int s0, int s1, const int *ids, const int *tid, const float *tprob,
                   const e8q_e2e_hooks *hooks) {
  if (S->done) return;
  const e8q_train_opts to = {
      .hp = *hp,
      .stream = E8Q_E2E_RNG_STREAM, /* + epoch: the data order of each epoch */
      .elems_per_seq = (double)(T - 1), /* scored positions */
      .what = "end-to-end fine-tuning",
      .fault_step = "e2e.step",
  };
  e2e_ctx c = {.M = M, .S = S, .T = T, .k = k, .hooks = hooks};
  if (e8q_device_cuda() >= 0 && T <= E8Q_TF_GPU_MAX_T) e8q_e2e_work_use_device(&c.w, M, e8q_device_cuda());
  e8q_seqdeal d; /* a step's sequences dealt evenly to the ranks */
  deal_init(&d, comm, T, k, s0, s1, ids, tid, tprob);
  const e8q_train_fns f = {e2e_seq, e2e_refresh_cb, e2e_epoch_cb, &c};
  e8q_train_run(&to, comm, &d, &S->tr, n_train, n_valid, &f);
  e8q_seqdeal_free(&d);
  e8q_e2e_work_free(&c.w);
}
