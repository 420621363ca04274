/* kernels/transformer_gpu.c: a decoder block on a CUDA device (kernels/transformer_gpu.h): the
 * workspace, the order of the ops, and fatal errors from the launchers' texts. */
#include "kernels/transformer_gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#ifdef E8Q_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda_libs.h"

/* kernels/transformer_cuda.cu */
int e8q_cu_rmsnorm(int N, int d, const float *x, const float *w, float eps, float *y, void *stream, char *err,
                   size_t errlen);
int e8q_cu_rope(int N, int T, int pos0, int n_heads, int hd, double theta, float *x, int ld, void *stream, char *err,
                size_t errlen);
int e8q_cu_attention(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv, float *out, void *stream,
                     char *err, size_t errlen);
int e8q_cu_attention_step(int pos, int n_heads, int n_kv_heads, int hd, const float *q, const float *kc,
                          const float *vc, float *out, void *stream, char *err, size_t errlen);
int e8q_cu_swiglu(int N, int hidden, const float *ug, float *h, void *stream, char *err, size_t errlen);
int e8q_cu_add(size_t n, float *x, const float *y, void *stream, char *err, size_t errlen);
/* kernels/transformer_grad_cuda.cu */
size_t e8q_cu_rmsnorm_backward_scratch(int N);
int e8q_cu_rmsnorm_backward(int N, int d, const float *x, const float *w, float eps, const float *dy, float *dx,
                            float *dw, void *scratch, void *stream, char *err, size_t errlen);
int e8q_cu_rope_backward(int N, int T, int n_heads, int hd, double theta, float *dx, int ld, void *stream, char *err,
                         size_t errlen);
int e8q_cu_swiglu_backward(int N, int hidden, const float *ug, const float *dh, float *dug, void *stream, char *err,
                           size_t errlen);
size_t e8q_cu_attention_backward_scratch(int n_seq, int T, int n_heads);
int e8q_cu_attention_backward(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv,
                              const float *dout, float *dqkv, void *scratch, void *stream, char *err, size_t errlen);

enum { TF_HEAD = 4, TF_NORM = 5 }; /* the head's and a norm's "group" in messages (the groups are 0..3) */
static const char *const tf_group_names[4] = {"qkv", "o", "up|gate", "down"};

/* a dense weight's device copy (the cache below) */
typedef struct {
  const float *src; /* the host weights it copies */
  float *dev;       /* [floats] */
  size_t floats;
  unsigned long used; /* the cache clock at its last use */
} tf_wentry;

/* the final norm and the head of end-to-end fine-tuning (device) */
typedef struct {
  int P, V;                 /* the last head forward's positions and vocabulary */
  size_t cap_x, cap_l;      /* floats allocated: x-sized buffers, logits */
  float *x, *xn, *dxn;      /* [P, dim] stream, normed, gradient */
  float *logits;            /* [P, V] logits, then their gradient */
  float *norm;              /* [dim] the final norm (uploaded by the forward) */
  float *dnorm;             /* [dim] the final norm's gradient */
  const float *head;        /* the host head of the last forward (its copy is in the weight cache) */
  float *dhead;             /* [V, dim] the head's gradient (when asked) */
  size_t cap_dhead;
  float *host;              /* [V*dim + dim] host staging of the gradients */
  size_t cap_host;
  void *rms_scratch;        /* e8q_cu_rmsnorm_backward_scratch(P) bytes */
} tf_head;

/* the fine-tuning activations and gradients of one call's tokens (device) */
typedef struct {
  size_t cap;                    /* tokens the buffers hold */
  int n_seq, T;                  /* the last train forward's shape */
  float *x0, *xn1, *x1, *xn2, *y; /* [cap, dim] block input, normed, mid residual, normed, output */
  float *qkv, *att;              /* [cap, qkv] rotated, [cap, n_heads hd] */
  float *ug, *h;                 /* [cap, 2 hidden], [cap, hidden] */
  float *z[4];                   /* [cap, m_g] the quantized linears' outputs before the row scales */
  float *d1, *dn, *dt;           /* [cap, dim] residual gradient, normed-input gradient, norm gradient */
  float *dh, *dug, *datt, *dqkv; /* [cap, hidden], [cap, 2 hidden], [cap, n_heads hd], [cap, qkv] */
  void *rms_scratch;             /* e8q_cu_rmsnorm_backward_scratch(cap) bytes */
  void *att_scratch;             /* e8q_cu_attention_backward_scratch(n_seq, T, n_heads) bytes */
  size_t att_bytes;
  float *grad;                   /* [grad_cap] device gradient accumulators of one backward */
  size_t grad_cap;
  float *host;                   /* [grad_cap] host staging of grad */
} tf_train;

struct e8q_tf_gpu {
  int device;
  e8q_tf_shape s;
  cudaStream_t stream;
  size_t cap;   /* tokens the buffers below hold */
  float *x;     /* [cap, dim] the residual stream */
  float *xn;    /* [cap, dim] */
  float *qkv;   /* [cap, (n_heads + 2 n_kv_heads) hd] */
  float *att;   /* [cap, n_heads hd] */
  float *proj;  /* [cap, dim] */
  float *ug;    /* [cap, 2 hidden] */
  float *h;     /* [cap, hidden] */
  float *norms; /* [2, dim] attn_norm | ffn_norm of the current block */
  cublasHandle_t blas;  /* dense products (created on first use) */
  /* device copies of dense weights (blocks' dense linears, the head), keyed by host address and
   * kept while they fit the budget (half the device memory free at the first upload), least
   * recently used evicted first: a dense model that fits is uploaded once, not per forward */
  tf_wentry *wc;        /* [wc_n] */
  int wc_n, wc_cap;
  size_t wc_bytes, wc_budget;
  unsigned long wc_clock;
  tf_train tr;          /* fine-tuning buffers (allocated by the first train forward) */
  tf_head hd;           /* end-to-end fine-tuning's head (allocated by the first head forward) */
  float *kc, *vc;       /* [kv_layers, kv_T, n_kv_heads hd] the decode steps' KV cache */
  int kv_layers, kv_T;
};

#define TF_CUDA(call)                                                                                       \
  do {                                                                                                      \
    cudaError_t e8q_ce_ = (call);                                                                           \
    E8Q_CHECK(e8q_ce_ == cudaSuccess, "GPU decoder block (dim %d, %d tokens): %s failed: %s", w->s.dim, N, #call, \
              cudaGetErrorString(e8q_ce_));                                                                 \
  } while (0)
#define TF_LAUNCH(call)                                                                          \
  do {                                                                                           \
    char err_[256];                                                                              \
    E8Q_CHECK((call) == 0, "GPU decoder block (dim %d, %d tokens): %s", w->s.dim, N, err_); \
  } while (0)

#define TF_BLAS(call)                                                                                         \
  do {                                                                                                        \
    cublasStatus_t e8q_bs_ = (call);                                                                          \
    E8Q_CHECK(e8q_bs_ == CUBLAS_STATUS_SUCCESS, "GPU decoder block (dim %d, %d tokens): %s failed: %s", w->s.dim, N, \
              #call, cublasGetStatusString(e8q_bs_));                                                         \
  } while (0)

/* the cuBLAS handle on the workspace's stream (created on first use) */
static void blas_ready(e8q_tf_gpu *w, int N) {
  if (!w->blas) {
    TF_BLAS(cublasCreate(&w->blas));
    TF_BLAS(cublasSetMathMode(w->blas, CUBLAS_PEDANTIC_MATH)); /* float32 products: no TF32 */
  }
  TF_BLAS(cublasSetStream(w->blas, w->stream));
}

static void wcache_drop(e8q_tf_gpu *w, int i) {
  cudaFree(w->wc[i].dev);
  w->wc_bytes -= sizeof(float) * w->wc[i].floats;
  w->wc[i] = w->wc[--w->wc_n];
}

static void wcache_clear(e8q_tf_gpu *w) {
  if (w->wc_n) cudaStreamSynchronize(w->stream); /* no product still reads them */
  while (w->wc_n) wcache_drop(w, w->wc_n - 1);
}

/* dense linear g's device copy of L->w: cached by address, uploaded when new or forgotten */
static const float *dense_weights(e8q_tf_gpu *w, int g, const e8q_tf_gpu_lin *L, int N) {
  const size_t mn = (size_t)L->m * L->n, bytes = sizeof(float) * mn;
  for (int i = 0; i < w->wc_n; i++)
    if (w->wc[i].src == L->w && w->wc[i].floats == mn) {
      w->wc[i].used = ++w->wc_clock;
      return w->wc[i].dev;
    }
  if (!w->wc_budget) {
    size_t free_b = 0, total_b = 0;
    TF_CUDA(cudaMemGetInfo(&free_b, &total_b));
    w->wc_budget = free_b / 2;
  }
  if (w->wc_n && w->wc_bytes + bytes > w->wc_budget) {
    TF_CUDA(cudaStreamSynchronize(w->stream)); /* evicted copies may still be read */
    while (w->wc_n && w->wc_bytes + bytes > w->wc_budget) {
      int lru = 0;
      for (int i = 1; i < w->wc_n; i++)
        if (w->wc[i].used < w->wc[lru].used) lru = i;
      wcache_drop(w, lru);
    }
  }
  if (w->wc_n == w->wc_cap) {
    const int cap = w->wc_cap ? 2 * w->wc_cap : 16;
    tf_wentry *grown = e8q_calloc((size_t)cap, sizeof *grown, "GPU weight cache"); /* [cap] */
    if (w->wc_n) memcpy(grown, w->wc, sizeof *grown * (size_t)w->wc_n);
    free(w->wc);
    w->wc = grown;
    w->wc_cap = cap;
  }
  tf_wentry *e = &w->wc[w->wc_n];
  e->dev = NULL;
  E8Q_CHECK(cudaMalloc((void **)&e->dev, bytes) == cudaSuccess,
            "GPU decoder block: no device memory for the dense weights of %s [%d x %d] (%zu MiB; %zu MiB cached): "
            "use fewer ranks per GPU or --device cpu",
            g == TF_HEAD ? "the head" : g == TF_NORM ? "a norm" : tf_group_names[g], L->m, L->n, bytes >> 20,
            w->wc_bytes >> 20);
  TF_CUDA(cudaMemcpyAsync(e->dev, L->w, bytes, cudaMemcpyHostToDevice, w->stream));
  e->src = L->w;
  e->floats = mn;
  e->used = ++w->wc_clock;
  w->wc_n++;
  w->wc_bytes += bytes;
  return e->dev;
}

/* y [N, m] = x [N, n] Wᵀ on the device: the quantized kernels (zk: also the output before the
 * row scales, for the backward), or SGEMM on the cached dense copy */
static void lin_forward_keep(e8q_tf_gpu *w, int g, const e8q_tf_gpu_lin *L, int N, const float *x, float *y, float *zk) {
  if (L->q) {
    if (zk) e8q_qlinear_forward_keep_gpu_dev(L->q, N, x, y, zk, (void *)w->stream);
    else e8q_qlinear_forward_gpu_dev(L->q, N, x, y, (void *)w->stream);
    return;
  }
  E8Q_CHECK(L->w, "GPU decoder block: linear %d has neither a device form nor dense weights", g);
  blas_ready(w, N);
  const float *W = dense_weights(w, g, L, N);
  const float one = 1.0f, zero = 0.0f;
  /* row-major y = x Wᵀ is column-major yᵀ = W xᵀ, W being column-major [n, m] */
  TF_BLAS(cublasSgemm(w->blas, CUBLAS_OP_T, CUBLAS_OP_N, L->m, N, L->n, &one, W, L->n, x, L->n, &zero, y, L->m));
}

static void lin_forward(e8q_tf_gpu *w, int g, const e8q_tf_gpu_lin *L, int N, const float *x, float *y) {
  lin_forward_keep(w, g, L, N, x, y, NULL);
}

/* the backward of linear g: dx [N, n] written; dSU/dSV (quantized) or dW (dense) accumulated
 * (device arrays, or NULL) */
static void lin_backward(e8q_tf_gpu *w, int g, const e8q_tf_gpu_lin *L, int N, const float *x, const float *zk,
                         const float *dy, float *dx, float *dSU, float *dSV, float *dW) {
  if (L->q) {
    e8q_qlinear_backward_gpu_dev(L->q, N, x, zk, dy, dx, dSU, dSV, (void *)w->stream);
    return;
  }
  blas_ready(w, N);
  const float *W = dense_weights(w, g, L, N);
  const float one = 1.0f, zero = 0.0f;
  /* dx = dy W: column-major dxᵀ [n, N] = Wᵀ-as-stored [n, m] · dyᵀ [m, N] */
  TF_BLAS(cublasSgemm(w->blas, CUBLAS_OP_N, CUBLAS_OP_N, L->n, N, L->m, &one, W, L->n, dy, L->m, &zero, dx, L->n));
  /* dW += dyᵀ x: column-major dWᵀ [n, m] += xᵀ [n, N] · dy [N, m] */
  if (dW)
    TF_BLAS(cublasSgemm(w->blas, CUBLAS_OP_N, CUBLAS_OP_T, L->n, L->m, N, &one, x, L->n, dy, L->m, &one, dW, L->n));
}

static void bufs_free(e8q_tf_gpu *w) {
  float **b[] = {&w->x, &w->xn, &w->qkv, &w->att, &w->proj, &w->ug, &w->h};
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
    cudaFree(*b[i]);
    *b[i] = NULL;
  }
  w->cap = 0;
}

static void bufs_ensure(e8q_tf_gpu *w, int N) {
  if (w->cap >= (size_t)N) return;
  bufs_free(w);
  const size_t n = (size_t)N, D = (size_t)w->s.dim, H = (size_t)w->s.hidden, hd = (size_t)w->s.head_dim;
  const size_t q = (size_t)w->s.n_heads * hd, qkv = q + 2 * (size_t)w->s.n_kv_heads * hd;
  const struct { float **p; size_t floats; } b[] = {{&w->x, n * D},   {&w->xn, n * D},     {&w->qkv, n * qkv},
                                                   {&w->att, n * q}, {&w->proj, n * D},   {&w->ug, n * 2 * H},
                                                   {&w->h, n * H}};
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) TF_CUDA(cudaMalloc((void **)b[i].p, sizeof(float) * b[i].floats));
  w->cap = n;
}

/* ---------------------------------------------------------------- fine-tuning buffers */
/* the activation buffers (grown with the tokens) */
static void train_acts_free(tf_train *t) {
  float **b[] = {&t->x0, &t->xn1, &t->x1,  &t->xn2, &t->y,  &t->qkv, &t->att, &t->ug,   &t->h,    &t->z[0],
                 &t->z[1], &t->z[2], &t->z[3], &t->d1, &t->dn, &t->dt, &t->dh, &t->dug, &t->datt, &t->dqkv};
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
    cudaFree(*b[i]);
    *b[i] = NULL;
  }
  cudaFree(t->rms_scratch);
  t->rms_scratch = NULL;
  t->cap = 0;
}

static void train_free(tf_train *t) {
  train_acts_free(t);
  cudaFree(t->att_scratch);
  cudaFree(t->grad);
  free(t->host);
  memset(t, 0, sizeof *t);
}

static void train_ensure(e8q_tf_gpu *w, int n_seq, int T) {
  tf_train *t = &w->tr;
  const int N = n_seq * T;
  if (t->cap < (size_t)N) {
    train_acts_free(t);
    const size_t n = (size_t)N, D = (size_t)w->s.dim, H = (size_t)w->s.hidden, hd = (size_t)w->s.head_dim;
    const size_t q = (size_t)w->s.n_heads * hd, qkv = q + 2 * (size_t)w->s.n_kv_heads * hd;
    const struct { float **p; size_t floats; } b[] = {
        {&t->x0, n * D},   {&t->xn1, n * D},      {&t->x1, n * D},   {&t->xn2, n * D},   {&t->y, n * D},
        {&t->qkv, n * qkv}, {&t->att, n * q},     {&t->ug, n * 2 * H}, {&t->h, n * H},   {&t->z[0], n * qkv},
        {&t->z[1], n * D}, {&t->z[2], n * 2 * H}, {&t->z[3], n * D}, {&t->d1, n * D},    {&t->dn, n * D},
        {&t->dt, n * D},   {&t->dh, n * H},       {&t->dug, n * 2 * H}, {&t->datt, n * q}, {&t->dqkv, n * qkv}};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
      TF_CUDA(cudaMalloc((void **)b[i].p, sizeof(float) * b[i].floats));
    TF_CUDA(cudaMalloc(&t->rms_scratch, e8q_cu_rmsnorm_backward_scratch(N)));
    t->cap = n;
  }
  const size_t ab = e8q_cu_attention_backward_scratch(n_seq, T, w->s.n_heads);
  if (ab > t->att_bytes) {
    cudaFree(t->att_scratch);
    t->att_scratch = NULL;
    t->att_bytes = 0;
    TF_CUDA(cudaMalloc(&t->att_scratch, ab));
    t->att_bytes = ab;
  }
  t->n_seq = n_seq;
  t->T = T;
}

static void head_free(tf_head *h) {
  float **b[] = {&h->x, &h->xn, &h->dxn, &h->logits, &h->norm, &h->dnorm, &h->dhead};
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) cudaFree(*b[i]);
  cudaFree(h->rms_scratch);
  free(h->host);
  memset(h, 0, sizeof *h);
}
#endif

e8q_tf_gpu *e8q_tf_gpu_create(int device, const e8q_tf_shape *s, const char **why_not) {
  static _Thread_local char reason[256];
  if (why_not) *why_not = reason;
#ifdef E8Q_HAVE_CUDA
  e8q_tf_gpu *w = e8q_calloc(1, sizeof *w, "GPU decoder block");
  w->device = device;
  w->s = *s;
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&w->stream, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaMalloc((void **)&w->norms, sizeof(float) * 2 * (size_t)s->dim);
  if (e != cudaSuccess) {
    snprintf(reason, sizeof reason, "CUDA device %d: %s", device, cudaGetErrorString(e));
    (void)cudaGetLastError();
    if (w->stream) cudaStreamDestroy(w->stream);
    cudaFree(w->norms);
    free(w);
    return NULL;
  }
  if (why_not) *why_not = NULL;
  return w;
#else
  (void)device;
  (void)s;
  snprintf(reason, sizeof reason, "e8q was built without CUDA");
  return NULL;
#endif
}

void e8q_tf_gpu_free(e8q_tf_gpu *w) {
  if (!w) return;
#ifdef E8Q_HAVE_CUDA
  cudaSetDevice(w->device);
  bufs_free(w);
  train_free(&w->tr);
  head_free(&w->hd);
  cudaFree(w->kc);
  cudaFree(w->vc);
  wcache_clear(w);
  free(w->wc);
  if (w->blas) cublasDestroy(w->blas);
  cudaFree(w->norms);
  cudaStreamDestroy(w->stream);
#endif
  free(w);
}

void e8q_tf_gpu_block(e8q_tf_gpu *w, int n_seq, int T, float *x, const float *attn_norm, const float *ffn_norm,
                      const e8q_tf_gpu_lin lin[4], e8q_tf_gpu_tap tap, void *tap_ctx) {
  E8Q_CHECK(w, "e8q_tf_gpu_block: no GPU workspace (e8q_tf_gpu_create returned NULL: use the CPU block)");
#ifdef E8Q_HAVE_CUDA
  const int N = n_seq * T, D = w->s.dim, hd = w->s.head_dim, nh = w->s.n_heads, nkv = w->s.n_kv_heads;
  const int ld = (nh + 2 * nkv) * hd;
  const float eps = w->s.norm_eps;
  if (N <= 0) return;
  void *st = (void *)w->stream;
  TF_CUDA(cudaSetDevice(w->device));
  bufs_ensure(w, N);
  TF_CUDA(cudaMemcpyAsync(w->x, x, sizeof(float) * (size_t)N * D, cudaMemcpyHostToDevice, w->stream));
  TF_CUDA(cudaMemcpyAsync(w->norms, attn_norm, sizeof(float) * D, cudaMemcpyHostToDevice, w->stream));
  TF_CUDA(cudaMemcpyAsync(w->norms + D, ffn_norm, sizeof(float) * D, cudaMemcpyHostToDevice, w->stream));
  /* attention */
  TF_LAUNCH(e8q_cu_rmsnorm(N, D, w->x, w->norms, eps, w->xn, st, err_, sizeof err_));
  if (tap) tap(tap_ctx, 0, N, D, w->xn, st);
  lin_forward(w, 0, &lin[0], N, w->xn, w->qkv);
  /* q and k heads sit side by side at stride hd in each qkv row: one pass rotates both */
  TF_LAUNCH(e8q_cu_rope(N, T, 0, nh + nkv, hd, w->s.rope_theta, w->qkv, ld, st, err_, sizeof err_));
  TF_LAUNCH(e8q_cu_attention(n_seq, T, nh, nkv, hd, w->qkv, w->att, st, err_, sizeof err_));
  if (tap) tap(tap_ctx, 1, N, nh * hd, w->att, st);
  lin_forward(w, 1, &lin[1], N, w->att, w->proj);
  TF_LAUNCH(e8q_cu_add((size_t)N * D, w->x, w->proj, st, err_, sizeof err_));
  /* feed-forward */
  TF_LAUNCH(e8q_cu_rmsnorm(N, D, w->x, w->norms + D, eps, w->xn, st, err_, sizeof err_));
  if (tap) tap(tap_ctx, 2, N, D, w->xn, st);
  lin_forward(w, 2, &lin[2], N, w->xn, w->ug);
  TF_LAUNCH(e8q_cu_swiglu(N, w->s.hidden, w->ug, w->h, st, err_, sizeof err_));
  if (tap) tap(tap_ctx, 3, N, w->s.hidden, w->h, st);
  lin_forward(w, 3, &lin[3], N, w->h, w->proj);
  TF_LAUNCH(e8q_cu_add((size_t)N * D, w->x, w->proj, st, err_, sizeof err_));
  TF_CUDA(cudaMemcpyAsync(x, w->x, sizeof(float) * (size_t)N * D, cudaMemcpyDeviceToHost, w->stream));
  TF_CUDA(cudaStreamSynchronize(w->stream));
#else
  (void)n_seq; (void)T; (void)x; (void)attn_norm; (void)ffn_norm; (void)lin; (void)tap; (void)tap_ctx;
#endif
}

/* ---------------------------------------------------------------- fine-tuning */
void e8q_tf_gpu_forget_weights(e8q_tf_gpu *w) {
  if (!w) return;
#ifdef E8Q_HAVE_CUDA
  cudaSetDevice(w->device);
  wcache_clear(w);
#endif
}

void e8q_tf_gpu_train_forward(e8q_tf_gpu *w, int n_seq, int T, const float *x, float *y, const float *attn_norm,
                              const float *ffn_norm, const e8q_tf_gpu_lin lin[4]) {
  E8Q_CHECK(w, "e8q_tf_gpu_train_forward: no GPU workspace (e8q_tf_gpu_create returned NULL)");
#ifdef E8Q_HAVE_CUDA
  const int N = n_seq * T, D = w->s.dim, hd = w->s.head_dim, nh = w->s.n_heads, nkv = w->s.n_kv_heads;
  const int ld = (nh + 2 * nkv) * hd;
  const float eps = w->s.norm_eps;
  E8Q_CHECK(N > 0 && T <= E8Q_TF_GPU_MAX_T, "GPU fine-tuning: %d sequences of %d tokens (1..%d tokens each)", n_seq,
            T, E8Q_TF_GPU_MAX_T);
  void *st = (void *)w->stream;
  tf_train *t = &w->tr;
  TF_CUDA(cudaSetDevice(w->device));
  train_ensure(w, n_seq, T);
  const size_t ND = (size_t)N * D;
  TF_CUDA(cudaMemcpyAsync(t->x0, x, sizeof(float) * ND, cudaMemcpyHostToDevice, w->stream));
  TF_CUDA(cudaMemcpyAsync(w->norms, attn_norm, sizeof(float) * D, cudaMemcpyHostToDevice, w->stream));
  TF_CUDA(cudaMemcpyAsync(w->norms + D, ffn_norm, sizeof(float) * D, cudaMemcpyHostToDevice, w->stream));
  /* attention (worker/block_train.c's order) */
  TF_LAUNCH(e8q_cu_rmsnorm(N, D, t->x0, w->norms, eps, t->xn1, st, err_, sizeof err_));
  lin_forward_keep(w, 0, &lin[0], N, t->xn1, t->qkv, t->z[0]);
  TF_LAUNCH(e8q_cu_rope(N, T, 0, nh + nkv, hd, w->s.rope_theta, t->qkv, ld, st, err_, sizeof err_));
  TF_LAUNCH(e8q_cu_attention(n_seq, T, nh, nkv, hd, t->qkv, t->att, st, err_, sizeof err_));
  lin_forward_keep(w, 1, &lin[1], N, t->att, t->x1, t->z[1]);
  TF_LAUNCH(e8q_cu_add(ND, t->x1, t->x0, st, err_, sizeof err_));
  /* feed-forward */
  TF_LAUNCH(e8q_cu_rmsnorm(N, D, t->x1, w->norms + D, eps, t->xn2, st, err_, sizeof err_));
  lin_forward_keep(w, 2, &lin[2], N, t->xn2, t->ug, t->z[2]);
  TF_LAUNCH(e8q_cu_swiglu(N, w->s.hidden, t->ug, t->h, st, err_, sizeof err_));
  lin_forward_keep(w, 3, &lin[3], N, t->h, t->y, t->z[3]);
  TF_LAUNCH(e8q_cu_add(ND, t->y, t->x1, st, err_, sizeof err_));
  if (y) { /* NULL: a recompute for the backward, whose output is not needed */
    TF_CUDA(cudaMemcpyAsync(y, t->y, sizeof(float) * ND, cudaMemcpyDeviceToHost, w->stream));
    TF_CUDA(cudaStreamSynchronize(w->stream));
  }
#else
  (void)n_seq; (void)T; (void)x; (void)y; (void)attn_norm; (void)ffn_norm; (void)lin;
#endif
}

#ifdef E8Q_HAVE_CUDA
/* the device accumulators of the gradients g asks for, zeroed: dev[k] for host array k of
 * (dSU, dSV, dW per group; the two norms), NULL where g's is NULL */
typedef struct {
  float *host[14], *dev[14];
  size_t len[14];
} grad_map;

static void grads_open(e8q_tf_gpu *w, int N, const e8q_tf_gpu_lin lin[4], const e8q_tf_gpu_grads *g, grad_map *M) {
  memset(M, 0, sizeof *M);
  for (int k = 0; k < 4; k++) {
    const size_t m = (size_t)lin[k].m, n = (size_t)lin[k].n, n_pad = (n + 7) / 8 * 8;
    M->host[3 * k] = lin[k].q ? g->dSU[k] : NULL;
    M->len[3 * k] = n_pad;
    M->host[3 * k + 1] = lin[k].q ? g->dSV[k] : NULL;
    M->len[3 * k + 1] = m;
    M->host[3 * k + 2] = lin[k].q ? NULL : g->dW[k];
    M->len[3 * k + 2] = m * n;
  }
  M->host[12] = g->d_attn_norm;
  M->host[13] = g->d_ffn_norm;
  M->len[12] = M->len[13] = (size_t)w->s.dim;
  size_t total = 0;
  for (int k = 0; k < 14; k++)
    if (M->host[k]) total += M->len[k];
  tf_train *t = &w->tr;
  if (total > t->grad_cap) {
    cudaFree(t->grad);
    free(t->host);
    t->grad = NULL;
    t->grad_cap = 0;
    TF_CUDA(cudaMalloc((void **)&t->grad, sizeof(float) * total));
    t->host = e8q_malloc(sizeof(float) * total, "GPU fine-tuning gradient staging");
    t->grad_cap = total;
  }
  if (total) TF_CUDA(cudaMemsetAsync(t->grad, 0, sizeof(float) * total, w->stream));
  size_t off = 0;
  for (int k = 0; k < 14; k++)
    if (M->host[k]) {
      M->dev[k] = t->grad + off;
      off += M->len[k];
    }
}

/* the device sums added (+=) into the host arrays (after the stream's work) */
static void grads_close(e8q_tf_gpu *w, int N, grad_map *M) {
  tf_train *t = &w->tr;
  size_t total = 0;
  for (int k = 0; k < 14; k++)
    if (M->host[k]) total += M->len[k];
  if (total) TF_CUDA(cudaMemcpyAsync(t->host, t->grad, sizeof(float) * total, cudaMemcpyDeviceToHost, w->stream));
  TF_CUDA(cudaStreamSynchronize(w->stream));
  size_t off = 0;
  for (int k = 0; k < 14; k++)
    if (M->host[k]) {
      for (size_t i = 0; i < M->len[k]; i++) M->host[k][i] += t->host[off + i];
      off += M->len[k];
    }
}
#endif

void e8q_tf_gpu_train_backward(e8q_tf_gpu *w, const float *dy, float *dx, const e8q_tf_gpu_lin lin[4],
                               const e8q_tf_gpu_grads *g) {
  E8Q_CHECK(w && w->tr.cap, "e8q_tf_gpu_train_backward: no fine-tuning forward ran on this workspace");
#ifdef E8Q_HAVE_CUDA
  tf_train *t = &w->tr;
  const int n_seq = t->n_seq, T = t->T, N = n_seq * T, D = w->s.dim, hd = w->s.head_dim, nh = w->s.n_heads,
            nkv = w->s.n_kv_heads;
  const int ld = (nh + 2 * nkv) * hd;
  const float eps = w->s.norm_eps;
  const size_t ND = (size_t)N * D;
  void *st = (void *)w->stream;
  const e8q_tf_gpu_grads none = {0};
  if (!g) g = &none;
  TF_CUDA(cudaSetDevice(w->device));
  grad_map M;
  grads_open(w, N, lin, g, &M);
#define GSU(k) M.dev[3 * (k)]
#define GSV(k) M.dev[3 * (k) + 1]
#define GW(k) M.dev[3 * (k) + 2]
  TF_CUDA(cudaMemcpyAsync(t->d1, dy, sizeof(float) * ND, cudaMemcpyHostToDevice, w->stream)); /* dL/dx1 starts as dy */
  /* feed-forward */
  lin_backward(w, 3, &lin[3], N, t->h, t->z[3], t->d1, t->dh, GSU(3), GSV(3), GW(3));
  TF_LAUNCH(e8q_cu_swiglu_backward(N, w->s.hidden, t->ug, t->dh, t->dug, st, err_, sizeof err_));
  lin_backward(w, 2, &lin[2], N, t->xn2, t->z[2], t->dug, t->dn, GSU(2), GSV(2), GW(2));
  TF_LAUNCH(e8q_cu_rmsnorm_backward(N, D, t->x1, w->norms + D, eps, t->dn, t->dt, M.dev[13], t->rms_scratch, st, err_,
                                    sizeof err_));
  TF_LAUNCH(e8q_cu_add(ND, t->d1, t->dt, st, err_, sizeof err_));
  /* attention: x1 = x0 + o(att) */
  lin_backward(w, 1, &lin[1], N, t->att, t->z[1], t->d1, t->datt, GSU(1), GSV(1), GW(1));
  TF_LAUNCH(e8q_cu_attention_backward(n_seq, T, nh, nkv, hd, t->qkv, t->datt, t->dqkv, t->att_scratch, st, err_,
                                      sizeof err_));
  TF_LAUNCH(e8q_cu_rope_backward(N, T, nh + nkv, hd, w->s.rope_theta, t->dqkv, ld, st, err_, sizeof err_));
  lin_backward(w, 0, &lin[0], N, t->xn1, t->z[0], t->dqkv, t->dn, GSU(0), GSV(0), GW(0));
  TF_LAUNCH(e8q_cu_rmsnorm_backward(N, D, t->x0, w->norms, eps, t->dn, t->dt, M.dev[12], t->rms_scratch, st, err_,
                                    sizeof err_));
#undef GSU
#undef GSV
#undef GW
  if (dx) {
    TF_LAUNCH(e8q_cu_add(ND, t->d1, t->dt, st, err_, sizeof err_));
    TF_CUDA(cudaMemcpyAsync(dx, t->d1, sizeof(float) * ND, cudaMemcpyDeviceToHost, w->stream));
  }
  grads_close(w, N, &M);
#else
  (void)dy; (void)dx; (void)lin; (void)g;
#endif
}

/* ---------------------------------------------------------------- end-to-end: the head */
#ifdef E8Q_HAVE_CUDA
/* device buffer *p of at least `floats` floats (*cap: allocated), contents not kept */
static void head_buf(e8q_tf_gpu *w, int N, float **p, size_t *cap, size_t floats) {
  if (*cap >= floats) return;
  cudaFree(*p);
  *p = NULL;
  *cap = 0;
  TF_CUDA(cudaMalloc((void **)p, sizeof(float) * floats));
  *cap = floats;
}
#endif

void e8q_tf_gpu_head_forward(e8q_tf_gpu *w, int P, const float *x, const float *norm, const float *head, int V,
                             float *logits, float *xn) {
  E8Q_CHECK(w, "e8q_tf_gpu_head_forward: no GPU workspace (e8q_tf_gpu_create returned NULL)");
#ifdef E8Q_HAVE_CUDA
  const int N = P, D = w->s.dim;
  tf_head *h = &w->hd;
  E8Q_CHECK(P > 0 && V > 0, "GPU head: %d positions, vocabulary %d", P, V);
  TF_CUDA(cudaSetDevice(w->device));
  const size_t PD = (size_t)P * D, PV = (size_t)P * V;
  if (h->cap_x < PD) { /* x, xn, dxn and the row factors grow together */
    float **b[] = {&h->x, &h->xn, &h->dxn};
    for (int i = 0; i < 3; i++) {
      cudaFree(*b[i]);
      *b[i] = NULL;
      TF_CUDA(cudaMalloc((void **)b[i], sizeof(float) * PD));
    }
    cudaFree(h->rms_scratch);
    h->rms_scratch = NULL;
    TF_CUDA(cudaMalloc(&h->rms_scratch, e8q_cu_rmsnorm_backward_scratch(P)));
    h->cap_x = PD;
  }
  head_buf(w, N, &h->logits, &h->cap_l, PV);
  if (!h->norm) {
    TF_CUDA(cudaMalloc((void **)&h->norm, sizeof(float) * D));
    TF_CUDA(cudaMalloc((void **)&h->dnorm, sizeof(float) * D));
  }
  TF_CUDA(cudaMemcpyAsync(h->x, x, sizeof(float) * PD, cudaMemcpyHostToDevice, w->stream));
  TF_CUDA(cudaMemcpyAsync(h->norm, norm, sizeof(float) * D, cudaMemcpyHostToDevice, w->stream));
  TF_LAUNCH(e8q_cu_rmsnorm(P, D, h->x, h->norm, w->s.norm_eps, h->xn, (void *)w->stream, err_, sizeof err_));
  const e8q_tf_gpu_lin L = {.w = head, .m = V, .n = D};
  lin_forward_keep(w, TF_HEAD, &L, P, h->xn, h->logits, NULL);
  TF_CUDA(cudaMemcpyAsync(logits, h->logits, sizeof(float) * PV, cudaMemcpyDeviceToHost, w->stream));
  if (xn) TF_CUDA(cudaMemcpyAsync(xn, h->xn, sizeof(float) * PD, cudaMemcpyDeviceToHost, w->stream));
  TF_CUDA(cudaStreamSynchronize(w->stream));
  h->P = P;
  h->V = V;
  h->head = head;
#else
  (void)P; (void)x; (void)norm; (void)head; (void)V; (void)logits; (void)xn;
#endif
}

void e8q_tf_gpu_head_backward(e8q_tf_gpu *w, const float *dlogits, float *dx, float *d_norm, float *d_head) {
  E8Q_CHECK(w && w->hd.P > 0, "e8q_tf_gpu_head_backward: no head forward ran on this workspace");
#ifdef E8Q_HAVE_CUDA
  tf_head *h = &w->hd;
  const int P = h->P, V = h->V, N = P, D = w->s.dim;
  const size_t PD = (size_t)P * D, VD = (size_t)V * D;
  TF_CUDA(cudaSetDevice(w->device));
  TF_CUDA(cudaMemcpyAsync(h->logits, dlogits, sizeof(float) * (size_t)P * V, cudaMemcpyHostToDevice, w->stream));
  if (d_head) {
    head_buf(w, N, &h->dhead, &h->cap_dhead, VD);
    TF_CUDA(cudaMemsetAsync(h->dhead, 0, sizeof(float) * VD, w->stream));
  }
  const e8q_tf_gpu_lin L = {.w = h->head, .m = V, .n = D};
  lin_backward(w, TF_HEAD, &L, P, h->xn, NULL, h->logits, h->dxn, NULL, NULL, d_head ? h->dhead : NULL);
  TF_CUDA(cudaMemsetAsync(h->dnorm, 0, sizeof(float) * D, w->stream));
  TF_LAUNCH(e8q_cu_rmsnorm_backward(P, D, h->x, h->norm, w->s.norm_eps, h->dxn, h->dxn, h->dnorm, h->rms_scratch,
                                    (void *)w->stream, err_, sizeof err_));
  const size_t staged = (size_t)D + (d_head ? VD : 0);
  if (h->cap_host < staged) {
    free(h->host);
    h->host = e8q_malloc(sizeof(float) * staged, "GPU head gradient staging");
    h->cap_host = staged;
  }
  TF_CUDA(cudaMemcpyAsync(dx, h->dxn, sizeof(float) * PD, cudaMemcpyDeviceToHost, w->stream));
  TF_CUDA(cudaMemcpyAsync(h->host, h->dnorm, sizeof(float) * D, cudaMemcpyDeviceToHost, w->stream));
  if (d_head)
    TF_CUDA(cudaMemcpyAsync(h->host + D, h->dhead, sizeof(float) * VD, cudaMemcpyDeviceToHost, w->stream));
  TF_CUDA(cudaStreamSynchronize(w->stream));
  for (int i = 0; i < D; i++) d_norm[i] += h->host[i];
  if (d_head)
    for (size_t i = 0; i < VD; i++) d_head[i] += h->host[D + i];
#else
  (void)dlogits; (void)dx; (void)d_norm; (void)d_head;
#endif
}

/* ---------------------------------------------------------------- one decode step */
void e8q_tf_gpu_step_begin(e8q_tf_gpu *w, int n_layers, int max_T, const float *x) {
  E8Q_CHECK(w, "e8q_tf_gpu_step_begin: no GPU workspace (e8q_tf_gpu_create returned NULL)");
#ifdef E8Q_HAVE_CUDA
  const int N = 1;
  TF_CUDA(cudaSetDevice(w->device));
  bufs_ensure(w, 1);
  if (w->kv_layers != n_layers || w->kv_T != max_T) { /* a new cache (a new generation) */
    cudaFree(w->kc);
    cudaFree(w->vc);
    w->kc = w->vc = NULL;
    w->kv_layers = w->kv_T = 0;
    const size_t floats = (size_t)n_layers * max_T * w->s.n_kv_heads * w->s.head_dim;
    TF_CUDA(cudaMalloc((void **)&w->kc, sizeof(float) * floats));
    TF_CUDA(cudaMalloc((void **)&w->vc, sizeof(float) * floats));
    w->kv_layers = n_layers;
    w->kv_T = max_T;
  }
  TF_CUDA(cudaMemcpyAsync(w->x, x, sizeof(float) * w->s.dim, cudaMemcpyHostToDevice, w->stream));
#else
  (void)n_layers; (void)max_T; (void)x;
#endif
}

void e8q_tf_gpu_step_layer(e8q_tf_gpu *w, int layer, int pos, const float *attn_norm, const float *ffn_norm,
                           const e8q_tf_gpu_lin lin[4]) {
  E8Q_CHECK(w && layer >= 0 && layer < w->kv_layers && pos >= 0 && pos < w->kv_T,
            "e8q_tf_gpu_step_layer: layer %d, position %d outside the device cache (e8q_tf_gpu_step_begin first)",
            layer, pos);
#ifdef E8Q_HAVE_CUDA
  const int N = 1, D = w->s.dim, hd = w->s.head_dim, nh = w->s.n_heads, nkv = w->s.n_kv_heads;
  const int ld = (nh + 2 * nkv) * hd;
  const size_t kvd = (size_t)nkv * hd, at = ((size_t)layer * w->kv_T + pos) * kvd;
  const size_t lay = (size_t)layer * w->kv_T * kvd;
  const float eps = w->s.norm_eps;
  void *st = (void *)w->stream;
  const e8q_tf_gpu_lin n1 = {.w = attn_norm, .m = 1, .n = D}, n2 = {.w = ffn_norm, .m = 1, .n = D};
  const float *dn1 = dense_weights(w, TF_NORM, &n1, N), *dn2 = dense_weights(w, TF_NORM, &n2, N);
  /* attention: the new key and value join the cache at pos, the query attends to 0..pos */
  TF_LAUNCH(e8q_cu_rmsnorm(1, D, w->x, dn1, eps, w->xn, st, err_, sizeof err_));
  lin_forward(w, 0, &lin[0], 1, w->xn, w->qkv);
  TF_LAUNCH(e8q_cu_rope(1, 1, pos, nh + nkv, hd, w->s.rope_theta, w->qkv, ld, st, err_, sizeof err_));
  TF_CUDA(cudaMemcpyAsync(w->kc + at, w->qkv + (size_t)nh * hd, sizeof(float) * kvd, cudaMemcpyDeviceToDevice,
                          w->stream));
  TF_CUDA(cudaMemcpyAsync(w->vc + at, w->qkv + (size_t)nh * hd + kvd, sizeof(float) * kvd, cudaMemcpyDeviceToDevice,
                          w->stream));
  TF_LAUNCH(e8q_cu_attention_step(pos, nh, nkv, hd, w->qkv, w->kc + lay, w->vc + lay, w->att, st, err_, sizeof err_));
  lin_forward(w, 1, &lin[1], 1, w->att, w->proj);
  TF_LAUNCH(e8q_cu_add((size_t)D, w->x, w->proj, st, err_, sizeof err_));
  /* feed-forward */
  TF_LAUNCH(e8q_cu_rmsnorm(1, D, w->x, dn2, eps, w->xn, st, err_, sizeof err_));
  lin_forward(w, 2, &lin[2], 1, w->xn, w->ug);
  TF_LAUNCH(e8q_cu_swiglu(1, w->s.hidden, w->ug, w->h, st, err_, sizeof err_));
  lin_forward(w, 3, &lin[3], 1, w->h, w->proj);
  TF_LAUNCH(e8q_cu_add((size_t)D, w->x, w->proj, st, err_, sizeof err_));
#else
  (void)attn_norm; (void)ffn_norm; (void)lin;
#endif
}

void e8q_tf_gpu_step_head(e8q_tf_gpu *w, const float *norm, const float *head, int V, float *logits) {
  E8Q_CHECK(w && w->kv_layers, "e8q_tf_gpu_step_head: no decode step on this workspace");
#ifdef E8Q_HAVE_CUDA
  const int N = 1, D = w->s.dim;
  tf_head *h = &w->hd;
  const e8q_tf_gpu_lin nf = {.w = norm, .m = 1, .n = D}, L = {.w = head, .m = V, .n = D};
  const float *dnf = dense_weights(w, TF_NORM, &nf, N);
  head_buf(w, N, &h->logits, &h->cap_l, (size_t)V);
  TF_LAUNCH(e8q_cu_rmsnorm(1, D, w->x, dnf, w->s.norm_eps, w->xn, (void *)w->stream, err_, sizeof err_));
  lin_forward_keep(w, TF_HEAD, &L, 1, w->xn, h->logits, NULL);
  TF_CUDA(cudaMemcpyAsync(logits, h->logits, sizeof(float) * (size_t)V, cudaMemcpyDeviceToHost, w->stream));
  TF_CUDA(cudaStreamSynchronize(w->stream));
#else
  (void)norm; (void)head; (void)V; (void)logits;
#endif
}
