/* worker/finetune_e2e.c: end-to-end fine-tuning (worker/finetune_e2e.h). */
#include "worker/finetune_e2e.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/rng.h"
#include "kernels/adam.h"
#include "kernels/transformer.h"
#include "kernels/transformer_grad.h"
#include "worker/block_train.h"
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
  S->p = e8q_calloc(S->n, sizeof(float), "e2e parameters");          /* [n] */
  S->best = e8q_calloc(S->n, sizeof(float), "e2e best parameters");  /* [n] */
  S->m = e8q_calloc(S->n, sizeof(float), "e2e Adam first moment");   /* [n] */
  S->v = e8q_calloc(S->n, sizeof(float), "e2e Adam second moment");  /* [n] */
}

void e8q_e2e_state_free(e8q_e2e_state *S) {
  free(S->off_SU);
  free(S->off_SV);
  free(S->off_attn);
  free(S->off_ffn);
  free(S->p);
  free(S->best);
  free(S->m);
  free(S->v);
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
  e8q_e2e_work_free(w);
  const size_t TD = (size_t)T * c->dim;
  w->T = T;
  w->xs = e8q_alloc_aligned(sizeof(float) * TD * (size_t)c->n_layers, "e2e block inputs"); /* [L, T, dim] */
  w->x = e8q_alloc_aligned(sizeof(float) * TD, "e2e stream");                            /* [T, dim] */
  w->xn = e8q_alloc_aligned(sizeof(float) * TD, "e2e normed stream");                    /* [T, dim] */
  w->dxn = e8q_alloc_aligned(sizeof(float) * TD, "e2e stream gradient");                 /* [T, dim] */
  w->logits = e8q_alloc_aligned(sizeof(float) * (size_t)T * c->vocab_size, "e2e logits"); /* [T, vocab] */
  w->bt = e8q_calloc(1, sizeof(e8q_bt_saved), "e2e block activations");
}

void e8q_e2e_work_free(e8q_e2e_work *w) {
  free(w->xs);
  free(w->x);
  free(w->xn);
  free(w->dxn);
  free(w->logits);
  if (w->bt) e8q_bt_saved_free(w->bt);
  free(w->bt);
  memset(w, 0, sizeof *w);
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
  for (int b = 0; b < L; b++) {
    float *xb = w->xs + (size_t)b * TD;
    memcpy(xb, w->x, sizeof(float) * TD);
    e8q_block_train_forward(&M->blocks[b], c, 1, T, xb, w->x, w->bt);
  }
  e8q_rmsnorm(P, D, w->x, M->final_norm, eps, w->xn);
  const e8q_linear head = {V, D, (float *)M->lm_head, NULL};
  e8q_linear_forward(&head, P, w->xn, w->logits);
  const double loss = e8q_xent_topk(P, V, w->logits, k, tid, tprob, grad ? w->logits : NULL);
  if (!grad) return loss;
  /* ---------------------------------------------------------- backward */
  e8q_linear_backward(P, V, D, w->xn, M->lm_head, w->logits, w->dxn, S->train_head ? grad + S->off_head : NULL);
  e8q_rmsnorm_backward(P, D, w->x, M->final_norm, eps, w->dxn, w->dxn, grad + S->off_final);
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
    e8q_block_train_forward(&M->blocks[b], c, 1, T, w->xs + (size_t)b * TD, w->dxn, w->bt);
    e8q_block_train_backward(&M->blocks[b], c, w->bt, w->x, w->x, &gr);
  }
  return loss;
}

/* ---------------------------------------------------------------- losses */
/* the deal of ids [s1-s0, T] and tid/tprob [s1-s0, T-1, k] (worker/seqdeal.h) */
static void deal_init(e8q_seqdeal *d, e8q_comm *comm, int T, int k, int s0, int s1, const int *ids, const int *tid,
                      const float *tprob) {
  const size_t tk = (size_t)(T - 1) * k;
  const void *base[3] = {ids, tid, tprob};
  const size_t bytes[3] = {sizeof(int) * (size_t)T, sizeof(int) * tk, sizeof(float) * tk};
  e8q_seqdeal_init(d, comm, s0, s1, 3, base, bytes);
}

/* the held-out loss with the caller's work buffers (training keeps one set) */
static double loss_with(e8q_comm *comm, const e8q_e2e_model *M, const e8q_e2e_state *S, int T, int k, int v0, int v1,
                        int s0, int s1, const int *ids, const int *tid, const float *tprob, e8q_e2e_work *w) {
  e8q_xsum acc;
  e8q_xsum_init(&acc, 1, E8Q_XSUM_FRAC_DEFAULT);
  /* the held-out sequences dealt evenly to the ranks, one sequence per forward */
  e8q_seqdeal d;
  deal_init(&d, comm, T, k, s0, s1, ids, tid, tprob);
  const int n = v1 > v0 ? v1 - v0 : 0;
  int *list = e8q_malloc(sizeof(int) * (size_t)(n ? n : 1), "e2e held-out list"); /* [n] */
  for (int j = 0; j < n; j++) list[j] = v0 + j;
  for (int r = 0; r < e8q_seqdeal_rounds(&d, n); r++) {
    const void *pt[3];
    if (e8q_seqdeal_round(&d, list, n, r, pt) < 0) continue;
    double l = e8q_e2e_seq_grad(M, S, T, k, pt[0], pt[1], pt[2], NULL, w);
    e8q_xsum_add(&acc, &l);
  }
  free(list);
  e8q_seqdeal_free(&d);
  double sum = 0;
  if (comm) e8q_comm_allreduce_sum_ordered(comm, &acc, &sum);
  else e8q_xsum_get(&acc, &sum);
  e8q_xsum_free(&acc);
  return v1 > v0 ? sum / ((double)(v1 - v0) * (double)(T - 1)) : NAN;
}

double e8q_e2e_loss(e8q_comm *comm, const e8q_e2e_model *M, const e8q_e2e_state *S, int T, int k, int v0, int v1,
                    int s0, int s1, const int *ids, const int *tid, const float *tprob) {
  e8q_e2e_work w = {0};
  double l = loss_with(comm, M, S, T, k, v0, v1, s0, s1, ids, tid, tprob, &w);
  e8q_e2e_work_free(&w);
  return l;
}

/* ---------------------------------------------------------------- training */
/* perm [n] <- a shuffle of 0..n-1 (Fisher-Yates) from (seed, epoch) */
static void epoch_order(uint64_t seed, int epoch, int n, int *perm) {
  e8q_rng r;
  e8q_rng_init(&r, seed, E8Q_E2E_RNG_STREAM + (uint64_t)epoch);
  for (int i = 0; i < n; i++) perm[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)e8q_rng_below(&r, (uint64_t)i + 1);
    int t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

void e8q_e2e_train(const e8q_e2e_opts *o, e8q_comm *comm, e8q_e2e_model *M, e8q_e2e_state *S, int T, int k,
                   int n_train, int n_valid, int s0, int s1, const int *ids, const int *tid, const float *tprob,
                   const e8q_e2e_hooks *hooks) {
  if (S->done) return;
  E8Q_CHECK(n_train >= 1 && n_valid >= 1,
            "end-to-end fine-tuning: %d training and %d held-out sequences (at least one of each is needed)", n_train,
            n_valid);
  E8Q_CHECK(o->batch >= 1 && o->epochs >= 0, "end-to-end fine-tuning: batch %d, epochs %d", o->batch, o->epochs);
  const int v0 = n_train, v1 = n_train + n_valid;
  const size_t n = S->n;
  e8q_e2e_work w = {0}; /* one set of work buffers for training and held-out losses */
  if (!S->started) { /* the loss before training is the first best */
    S->init_loss = S->best_loss = loss_with(comm, M, S, T, k, v0, v1, s0, s1, ids, tid, tprob, &w);
    memcpy(S->best, S->p, sizeof(float) * n);
    S->started = 1;
  }
  float *grad = e8q_alloc_aligned(sizeof(float) * n, "e2e gradient");                  /* [n] one sequence's */
  float *gmean = e8q_alloc_aligned(sizeof(float) * n, "e2e step gradient");            /* [n] the step's mean */
  double *acc = e8q_malloc(sizeof(double) * (n + 1), "e2e gradient (double)");          /* [n+1] grad | loss */
  int *perm = e8q_malloc(sizeof(int) * (size_t)n_train, "e2e order");                   /* [n_train] */
  e8q_xsum xs;
  e8q_xsum_init(&xs, n + 1, E8Q_XSUM_FRAC_DEFAULT);
  e8q_adam A;
  e8q_adam_init(&A);
  A.step = S->step;
  const e8q_adam_param aps[2] = {
      {S->p, gmean, S->m, S->v, S->n_susv, (float)o->susv_lr},
      {S->p + S->n_susv, gmean + S->n_susv, S->m + S->n_susv, S->v + S->n_susv, n - S->n_susv, (float)o->lr},
  };
  const int steps = (n_train + o->batch - 1) / o->batch;
  e8q_seqdeal d; /* a step's sequences dealt evenly to the ranks */
  deal_init(&d, comm, T, k, s0, s1, ids, tid, tprob);

  while (S->epoch < o->epochs && S->worse < o->early_stop) {
    epoch_order(o->seed, S->epoch, n_train, perm);
    double train_sum = 0; /* the same doubles in the same order on every rank */
    for (int t = 0; t < steps; t++) {
      e8q_fault_point("e2e.step");
      const int k0 = t * o->batch, k1 = k0 + o->batch < n_train ? k0 + o->batch : n_train;
      e8q_xsum_zero(&xs);
      for (int r = 0; r < e8q_seqdeal_rounds(&d, k1 - k0); r++) {
        const void *pt[3];
        if (e8q_seqdeal_round(&d, perm + k0, k1 - k0, r, pt) < 0) continue; /* none for this rank */
        memset(grad, 0, sizeof(float) * n);
        acc[n] = e8q_e2e_seq_grad(M, S, T, k, pt[0], pt[1], pt[2], grad, &w);
        for (size_t q = 0; q < n; q++) acc[q] = grad[q];
        e8q_xsum_add(&xs, acc);
      }
      if (comm) e8q_comm_allreduce_sum_ordered(comm, &xs, acc);
      else e8q_xsum_get(&xs, acc);
      const double scale = 1.0 / ((double)(k1 - k0) * (double)(T - 1)); /* mean over the step's positions */
      for (size_t q = 0; q < n; q++) gmean[q] = (float)(acc[q] * scale);
      train_sum += acc[n];
      e8q_adam_step(&A, 2, aps);
      e8q_e2e_refresh(S, M);
    }
    S->step = A.step;
    S->train_loss = train_sum / ((double)n_train * (double)(T - 1));
    S->valid_loss = loss_with(comm, M, S, T, k, v0, v1, s0, s1, ids, tid, tprob, &w);
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
  e8q_e2e_refresh(S, M);
  S->done = 1;
  if (hooks && hooks->epoch_end) hooks->epoch_end(hooks->ctx, S);

  e8q_seqdeal_free(&d);
  e8q_e2e_work_free(&w);
  e8q_xsum_free(&xs);
  free(perm);
  free(acc);
  free(gmean);
  free(grad);
}
