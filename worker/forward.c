/* worker/forward.c: batched and KV-cached Llama forward passes (fp32). */
#include "worker/forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/device.h"
#include "common/error.h"
#include "kernels/matvec_f16.h"
#include "kernels/matvec_q8.h"
#include "kernels/transformer.h"
#include "kernels/transformer_gpu.h"
#include "worker/linear.h"

/* ---------------------------------------------------------------- scratch */

static void host_free(e8q_fwd_scratch *s) {
  free(s->xn);
  free(s->qkv);
  free(s->att);
  free(s->proj);
  free(s->ug);
  free(s->h);
  s->xn = s->qkv = s->att = s->proj = s->ug = s->h = NULL;
  s->cap = 0;
}

static void scratch_ensure(e8q_fwd_scratch *s, const e8q_config *c, size_t N) {
  if (s->cap >= N) return;
  host_free(s);
  size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, hd = (size_t)c->head_dim;
  size_t q = (size_t)c->n_heads * hd, qkv = q + 2 * (size_t)c->n_kv_heads * hd;
  s->xn = e8q_alloc_aligned(sizeof(float) * N * D, "forward xn");
  s->qkv = e8q_alloc_aligned(sizeof(float) * N * qkv, "forward qkv");
  s->att = e8q_alloc_aligned(sizeof(float) * N * q, "forward attention");
  s->proj = e8q_alloc_aligned(sizeof(float) * N * D, "forward projection");
  s->ug = e8q_alloc_aligned(sizeof(float) * N * 2 * H, "forward up|gate");
  s->h = e8q_alloc_aligned(sizeof(float) * N * H, "forward hidden");
  s->cap = N;
}

void e8q_fwd_scratch_free(e8q_fwd_scratch *s) {
  host_free(s);
  e8q_tf_gpu_free(s->gpu);
  memset(s, 0, sizeof *s);
}

static void add_inplace(size_t n, float *x, const float *y) {
#pragma omp parallel for schedule(static) if (n > ((size_t)1 << 20))
  for (size_t i = 0; i < n; i++) x[i] += y[i];
}

static void tap(const e8q_taps *taps, int group, int rows, int cols, const float *x) {
  if (taps && taps->fn) taps->fn(taps->ctx, group, rows, cols, x);
}

/* ---------------------------------------------------------------- batched block */

/* --device cuda: lin [4] <- block b's linears on a device when every one is there (quantized
 * ones uploaded by e8q_qmodel_upload) or dense with this process on a device (e8q_device_cuda);
 * returns that device, or -1: the CPU */
static int block_device(const e8q_block *b, e8q_tf_gpu_lin lin[E8Q_N_GROUPS]) {
  int device = -1;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_linear *L = &b->lin[g];
    lin[g] = (e8q_tf_gpu_lin){.q = L->gpu, .w = L->gpu ? NULL : L->w, .m = L->m, .n = L->n};
    if (L->gpu) device = e8q_qlinear_gpu_device(L->gpu);
    else if (!L->w || e8q_device_cuda() < 0) return -1;
  }
  return device >= 0 ? device : e8q_device_cuda();
}

e8q_tf_gpu *e8q_block_gpu_open(const e8q_config *c, int device, const char *what) {
  const e8q_tf_shape sh = {.dim = c->dim, .hidden = c->hidden_dim, .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
                           .head_dim = c->head_dim, .rope_theta = c->rope_theta, .norm_eps = (float)c->norm_eps};
  const char *why = NULL;
  e8q_tf_gpu *w = e8q_tf_gpu_create(device, &sh, &why);
  E8Q_CHECK(w, "%s: CUDA device %d cannot take the decoder's workspace: %s (run with --device cpu)", what, device,
            why);
  return w;
}

/* *ws, the device workspace of blocks of shape c, created on first use (what: for messages) */
static e8q_tf_gpu *workspace(e8q_tf_gpu **ws, const e8q_config *c, int device, const char *what) {
  if (!*ws) *ws = e8q_block_gpu_open(c, device, what);
  return *ws;
}

/* --device cuda: the whole block on the GPU when block_device says so, and the taps (if any)
 * take device buffers; 0: the CPU block below */
static int block_gpu(const e8q_block *b, const e8q_config *c, int n_seq, int T, float *x, const e8q_taps *taps,
                     e8q_fwd_scratch *s) {
  if ((taps && !taps->dev_fn) || T > E8Q_TF_GPU_MAX_T) return 0;
  e8q_tf_gpu_lin lin[E8Q_N_GROUPS];
  const int device = block_device(b, lin);
  if (device < 0) return 0;
  char what[64];
  snprintf(what, sizeof what, "layer %d", b->layer1 - 1);
  e8q_tf_gpu_block(workspace(&s->gpu, c, device, what), n_seq, T, x, b->attn_norm, b->ffn_norm, lin,
                   taps ? taps->dev_fn : NULL, taps ? taps->ctx : NULL);
  return 1;
}

void e8q_block_forward(const e8q_block *b, const e8q_config *c, int n_seq, int T, float *x, const e8q_taps *taps,
                       e8q_fwd_scratch *scratch) {
  e8q_fwd_scratch local = {0};
  e8q_fwd_scratch *s = scratch ? scratch : &local;
  int N = n_seq * T, D = c->dim, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
  int ld = (nh + 2 * nkv) * hd;
  E8Q_CHECK(c->sliding_window <= 0 || T <= c->sliding_window,
            "sequences of %d tokens exceed the model's sliding_window %d, which e8q does not implement: use a "
            "shorter context", T, c->sliding_window);
  if (block_gpu(b, c, n_seq, T, x, taps, s)) {
    if (s == &local) e8q_fwd_scratch_free(&local);
    return;
  }
  scratch_ensure(s, c, (size_t)N);

  /* attention */
  e8q_rmsnorm(N, D, x, b->attn_norm, (float)c->norm_eps, s->xn);
  tap(taps, E8Q_GROUP_QKV, N, D, s->xn);
  e8q_linear_forward(&b->qkv, N, s->xn, s->qkv);
  /* q and k heads sit side by side at stride hd in each qkv row: one pass rotates both */
  e8q_rope(n_seq, T, 0, nh + nkv, hd, c->rope_theta, s->qkv, ld);
  e8q_attention(n_seq, T, nh, nkv, hd, s->qkv, s->att);
  tap(taps, E8Q_GROUP_O, N, nh * hd, s->att);
  e8q_linear_forward(&b->o, N, s->att, s->proj);
  add_inplace((size_t)N * D, x, s->proj);

  /* feed-forward */
  e8q_rmsnorm(N, D, x, b->ffn_norm, (float)c->norm_eps, s->xn);
  tap(taps, E8Q_GROUP_UPGATE, N, D, s->xn);
  e8q_linear_forward(&b->upgate, N, s->xn, s->ug);
  e8q_swiglu(N, c->hidden_dim, s->ug, s->h);
  tap(taps, E8Q_GROUP_DOWN, N, c->hidden_dim, s->h);
  e8q_linear_forward(&b->down, N, s->h, s->proj);
  add_inplace((size_t)N * D, x, s->proj);

  if (s == &local) e8q_fwd_scratch_free(&local);
}

/* ---------------------------------------------------------------- embedding and head */

void e8q_model_embed(const e8q_model *m, int N, const int *ids, float *x) {
  int D = m->cfg.dim;
  for (int t = 0; t < N; t++) {
    E8Q_CHECK(ids[t] >= 0 && ids[t] < m->cfg.vocab_size,
              "token id %d (position %d) is outside the model's vocabulary [0, %d): wrong tokenizer or id file?", ids[t],
              t, m->cfg.vocab_size);
    memcpy(x + (size_t)t * D, m->embed + (size_t)ids[t] * D, sizeof(float) * D);
  }
}

static e8q_linear head_linear(const e8q_model *m) {
  e8q_linear L = {.m = m->cfg.vocab_size, .n = m->cfg.dim, .w = m->lm_head, .q = NULL};
  return L;
}

void e8q_model_head(const e8q_model *m, int N, float *x, float *logits) {
  /* on a device (its blocks ran there, or this process computes on one): the head too (cuBLAS);
   * m->gpu is a cache of the model's */
  if (N > 1 && m->lm_head && (m->gpu || e8q_device_cuda() >= 0)) {
    e8q_tf_gpu *w = workspace(&((e8q_model *)m)->gpu, &m->cfg, e8q_device_cuda(), "the head");
    e8q_tf_gpu_head_forward(w, N, x, m->final_norm, m->lm_head, m->cfg.vocab_size, logits, x);
    return;
  }
  e8q_rmsnorm(N, m->cfg.dim, x, m->final_norm, (float)m->cfg.norm_eps, x);
  if (N == 1 && m->lm_head_q8) { /* a decode step, --head q8: 1.125 bytes per weight */
    e8q_matvec_q8(m->lm_head_q8, x, logits);
    return;
  }
  if (N == 1 && m->lm_head_f16) { /* a decode step: the float16 head in place, half the bytes */
    e8q_matvec_f16(m->cfg.vocab_size, m->cfg.dim, m->lm_head_f16, x, logits);
    return;
  }
  if (N == 1 && m->lm_head_bf16) { /* the same for a bfloat16 head */
    e8q_matvec_bf16(m->cfg.vocab_size, m->cfg.dim, m->lm_head_bf16, x, logits);
    return;
  }
  e8q_linear L = head_linear(m);
  e8q_linear_forward(&L, N, x, logits);
}

/* x [N, dim] <- the residual stream after the last block */
static float *model_trunk(const e8q_model *m, int n_seq, int T, const int *ids) {
  E8Q_CHECK(m->blocks, "model %s was loaded without its blocks", m->path ? m->path : "(memory)");
  int N = n_seq * T;
  float *x = e8q_alloc_aligned(sizeof(float) * (size_t)N * m->cfg.dim, "residual stream");
  e8q_model_embed(m, N, ids, x);
  /* the device workspace (blocks on a GPU) persists with the model: its dense weights and head
   * are uploaded once for all forwards, not per sequence (m->gpu is a cache of the model's) */
  e8q_fwd_scratch s = {.gpu = m->gpu};
  for (int l = 0; l < m->cfg.n_layers; l++) e8q_block_forward(&m->blocks[l], &m->cfg, n_seq, T, x, NULL, &s);
  ((e8q_model *)m)->gpu = s.gpu;
  s.gpu = NULL;
  e8q_fwd_scratch_free(&s);
  return x;
}

void e8q_model_forward(const e8q_model *m, int n_seq, int T, const int *ids, float *logits) {
  float *x = model_trunk(m, n_seq, T, ids);
  e8q_model_head(m, n_seq * T, x, logits);
  free(x);
}

double e8q_model_nll(const e8q_model *m, int n_seq, int T, const int *ids, const int *targets, long *count) {
  enum { CHUNK = 64 };
  float *x = model_trunk(m, n_seq, T, ids);
  int N = n_seq * T, V = m->cfg.vocab_size, D = m->cfg.dim;
  float *logits = e8q_alloc_aligned(sizeof(float) * CHUNK * (size_t)V, "logits chunk");
  double sum = 0.0;
  long cnt = 0;
  for (int r0 = 0; r0 < N; r0 += CHUNK) {
    int rows = N - r0 < CHUNK ? N - r0 : CHUNK;
    e8q_model_head(m, rows, x + (size_t)r0 * D, logits);
    e8q_nll_rows(rows, V, logits, targets + r0, &sum, &cnt);
  }
  free(logits);
  free(x);
  if (count) *count = cnt;
  return sum;
}

/* ---------------------------------------------------------------- evaluation */

void e8q_score_seqs(const e8q_model *m, int n, const int *const *seqs, const int *lens, double *nll, long *cnt) {
  for (int i = 0; i < n; i++) {
    int T = lens[i];
    nll[i] = 0.0;
    cnt[i] = 0;
    if (T < 2) continue;
    int *targets = e8q_malloc(sizeof(int) * (size_t)T, "targets");
    for (int t = 0; t + 1 < T; t++) targets[t] = seqs[i][t + 1];
    targets[T - 1] = -1;
    nll[i] = e8q_model_nll(m, 1, T, seqs[i], targets, &cnt[i]);
    free(targets);
  }
}

/* ---------------------------------------------------------------- KV-cached generation */

void e8q_kv_init(e8q_kv_cache *c, const e8q_config *cfg, int max_T) {
  memset(c, 0, sizeof *c);
  E8Q_CHECK(max_T > 0, "KV cache: %d positions requested", max_T);
  size_t D = (size_t)cfg->dim, H = (size_t)cfg->hidden_dim, hd = (size_t)cfg->head_dim;
  size_t q = (size_t)cfg->n_heads * hd, kv = (size_t)cfg->n_kv_heads * hd;
  c->max_T = max_T;
  c->k = e8q_alloc_aligned(sizeof(float) * (size_t)cfg->n_layers * max_T * kv, "KV cache keys");
  c->v = e8q_alloc_aligned(sizeof(float) * (size_t)cfg->n_layers * max_T * kv, "KV cache values");
  c->x = e8q_alloc_aligned(sizeof(float) * D, "step x");
  c->xn = e8q_alloc_aligned(sizeof(float) * D, "step xn");
  c->qkv = e8q_alloc_aligned(sizeof(float) * (q + 2 * kv), "step qkv");
  c->att = e8q_alloc_aligned(sizeof(float) * q, "step attention");
  c->proj = e8q_alloc_aligned(sizeof(float) * D, "step projection");
  c->ug = e8q_alloc_aligned(sizeof(float) * 2 * H, "step up|gate");
  c->h = e8q_alloc_aligned(sizeof(float) * H, "step hidden");
  c->scores = e8q_alloc_aligned(sizeof(float) * (size_t)cfg->n_heads * max_T, "step scores");
  c->logits = e8q_alloc_aligned(sizeof(float) * (size_t)cfg->vocab_size, "step logits");
}

void e8q_kv_free(e8q_kv_cache *c) {
  float *bufs[] = {c->k, c->v, c->x, c->xn, c->qkv, c->att, c->proj, c->ug, c->h, c->scores, c->logits};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  memset(c, 0, sizeof *c);
}

/* --device cuda: the step on the device when every block is there and the head is a float32
 * one (not --head q8); decided by the cache's size, not the position, so a generation never
 * mixes the device's cache with the host's. The model's workspace holds the device cache. */
static int step_gpu(const e8q_model *m, e8q_kv_cache *c, int pos) {
  const e8q_config *cfg = &m->cfg;
  if (!m->lm_head || m->lm_head_q8 || c->max_T > E8Q_TF_GPU_MAX_T) return 0;
  e8q_tf_gpu_lin lin[E8Q_N_GROUPS];
  int device = -1;
  for (int l = 0; l < cfg->n_layers; l++)
    if ((device = block_device(&m->blocks[l], lin)) < 0) return 0;
  e8q_tf_gpu *w = workspace(&((e8q_model *)m)->gpu, cfg, device, "generate's step"); /* a cache of the model's */
  e8q_tf_gpu_step_begin(w, cfg->n_layers, c->max_T, c->x);
  for (int l = 0; l < cfg->n_layers; l++) {
    const e8q_block *b = &m->blocks[l];
    block_device(b, lin);
    e8q_tf_gpu_step_layer(w, l, pos, b->attn_norm, b->ffn_norm, lin);
  }
  e8q_tf_gpu_step_head(w, m->final_norm, m->lm_head, cfg->vocab_size, c->logits);
  return 1;
}

const float *e8q_model_step(const e8q_model *m, e8q_kv_cache *c, int token, int pos) {
  const e8q_config *cfg = &m->cfg;
  E8Q_CHECK(m->blocks, "model %s was loaded without its blocks", m->path ? m->path : "(memory)");
  E8Q_CHECK(pos >= 0 && pos < c->max_T, "position %d outside the KV cache's %d positions", pos, c->max_T);
  E8Q_CHECK(cfg->sliding_window <= 0 || pos < cfg->sliding_window,
            "position %d is beyond the model's sliding_window %d, which e8q does not implement: generate fewer tokens",
            pos, cfg->sliding_window);
  int D = cfg->dim, hd = cfg->head_dim, nh = cfg->n_heads, nkv = cfg->n_kv_heads;
  size_t kvd = (size_t)nkv * hd;
  float eps = (float)cfg->norm_eps;
  e8q_model_embed(m, 1, &token, c->x);
  if (step_gpu(m, c, pos)) return c->logits;
  for (int l = 0; l < cfg->n_layers; l++) {
    const e8q_block *b = &m->blocks[l];
    float *kc = c->k + (size_t)l * c->max_T * kvd, *vc = c->v + (size_t)l * c->max_T * kvd;
    e8q_rmsnorm(1, D, c->x, b->attn_norm, eps, c->xn);
    e8q_linear_forward(&b->qkv, 1, c->xn, c->qkv);
    float *q = c->qkv, *k = q + (size_t)nh * hd, *v = k + kvd;
    e8q_rope(1, 1, pos, nh + nkv, hd, cfg->rope_theta, q, nh * hd + (int)kvd); /* q then k heads */
    memcpy(kc + (size_t)pos * kvd, k, sizeof(float) * kvd);
    memcpy(vc + (size_t)pos * kvd, v, sizeof(float) * kvd);
    e8q_attention_step(pos, nh, nkv, hd, q, kc, vc, c->att, c->scores);
    e8q_linear_forward(&b->o, 1, c->att, c->proj);
    add_inplace((size_t)D, c->x, c->proj);
    e8q_rmsnorm(1, D, c->x, b->ffn_norm, eps, c->xn);
    e8q_linear_forward(&b->upgate, 1, c->xn, c->ug);
    e8q_swiglu(1, cfg->hidden_dim, c->ug, c->h);
    e8q_linear_forward(&b->down, 1, c->h, c->proj);
    add_inplace((size_t)D, c->x, c->proj);
  }
  e8q_model_head(m, 1, c->x, c->logits);
  return c->logits;
}
