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
int e8q_cu_rope(int N, int T, int n_heads, int hd, double theta, float *x, int ld, void *stream, char *err,
                size_t errlen);
int e8q_cu_attention(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv, float *out, void *stream,
                     char *err, size_t errlen);
int e8q_cu_swiglu(int N, int hidden, const float *ug, float *h, void *stream, char *err, size_t errlen);
int e8q_cu_add(size_t n, float *x, const float *y, void *stream, char *err, size_t errlen);

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
  const float *dsrc[4]; /* host weights the device copies below hold (NULL: none) */
  float *dw[4];         /* [m, n] device copies of a block's dense linears */
  size_t dcap[4];       /* floats allocated in dw[g] */
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

/* y [N, m] = x [N, n] Wᵀ on the device: the quantized kernels, or SGEMM on the cached dense copy */
static void lin_forward(e8q_tf_gpu *w, int g, const e8q_tf_gpu_lin *L, int N, const float *x, float *y) {
  if (L->q) {
    e8q_qlinear_forward_gpu_dev(L->q, N, x, y, (void *)w->stream);
    return;
  }
  E8Q_CHECK(L->w, "GPU decoder block: linear %d has neither a device form nor dense weights", g);
  const size_t mn = (size_t)L->m * L->n;
  if (!w->blas) {
    TF_BLAS(cublasCreate(&w->blas));
    TF_BLAS(cublasSetMathMode(w->blas, CUBLAS_PEDANTIC_MATH)); /* float32 products: no TF32 */
  }
  TF_BLAS(cublasSetStream(w->blas, w->stream));
  if (w->dsrc[g] != L->w || w->dcap[g] < mn) {
    if (w->dcap[g] < mn) {
      cudaFree(w->dw[g]);
      w->dw[g] = NULL;
      TF_CUDA(cudaMalloc((void **)&w->dw[g], sizeof(float) * mn));
      w->dcap[g] = mn;
    }
    TF_CUDA(cudaMemcpyAsync(w->dw[g], L->w, sizeof(float) * mn, cudaMemcpyHostToDevice, w->stream));
    w->dsrc[g] = L->w;
  }
  const float one = 1.0f, zero = 0.0f;
  /* row-major y = x Wᵀ is column-major yᵀ = W xᵀ, W being column-major [n, m] */
  TF_BLAS(cublasSgemm(w->blas, CUBLAS_OP_T, CUBLAS_OP_N, L->m, N, L->n, &one, w->dw[g], L->n, x, L->n, &zero, y, L->m));
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
  for (int g = 0; g < 4; g++) cudaFree(w->dw[g]);
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
  TF_LAUNCH(e8q_cu_rope(N, T, nh + nkv, hd, w->s.rope_theta, w->qkv, ld, st, err_, sizeof err_));
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
