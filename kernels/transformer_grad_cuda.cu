// kernels/transformer_grad_cuda.cu: CUDA kernels of the backward passes of a decoder block's
// non-matmul ops (the CPU twins and the quantities: kernels/transformer_grad.h; the arithmetic:
// transformer_grad_cuda_dev.h, host-tested). Deterministic: no atomics, every output element
// summed by one thread in a fixed order or by a fixed tree over a block's threads.
//
//   rms_rows_kernel      one block per row: float64 partial sums of squares and of dy w x, two
//                        tree reductions, then (r_t, c_t) into the scratch [N, 2] doubles
//   rms_dw_kernel        one thread per column: dw[i] += the rows' terms summed in row order
//   rms_dx_kernel        elementwise over [N, d], grid-stride (after rms_dw_kernel: dx may alias dy)
//   rope_back_kernel     one thread per (row, head, pair), grid-stride: the forward's pair with
//                        the sine negated
//   swiglu_back_kernel   elementwise over [N, hidden], grid-stride
//   attn_back_q_kernel   grid (query t, head h, sequence s), TF_THREADS: the forward's scores
//                        over keys 0..t in shared memory, block max and sum, P and dP, D by a
//                        float64 tree, dS; the rows P, dS [t+1] into the scratch planes
//                        [n_seq, n_heads, T, T] (two of them); then dQ with lanes over i
//   attn_back_kv_kernel  grid (key j, kv head, sequence s), lanes over i (no reduction, so any
//                        block size gives the same bits): dK and dV from the scratch planes,
//                        the group's heads in order, per head queries t = j..T-1 in order
// The launchers own the geometry and return an error text instead of launching shapes they do
// not support; the C side (transformer_gpu.c) turns it into a fatal error. No e8q_common here.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>

#include "kernels/transformer_grad_cuda_dev.h"
#include "kernels/transformer_gpu.h" // E8Q_TF_GPU_MAX_T

#define TF_THREADS 256 // a power of two (the tree reductions)

// the attention's static shared memory (two reduction buffers) and its scores row of T floats
// stay under the 48 KiB a kernel gets without opting in
static_assert(sizeof(float) * E8Q_TF_GPU_MAX_T + (sizeof(double) + sizeof(float)) * TF_THREADS <= 48 * 1024,
              "attn_back_q_kernel's shared memory");

static int grad_err(cudaError_t e, const char *what, char *err, size_t errlen) {
  if (e == cudaSuccess) return 0;
  snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e));
  return -1;
}

// ---------------------------------------------------------------- block reductions
// sm[0] after a tree over the block's threads (blockDim.x a power of two): at step s, thread
// i < s combines its value with thread i + s's; every thread gets the result
template <class T> __device__ T grad_tree_sum(T v, T *sm) {
  sm[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) sm[threadIdx.x] += sm[threadIdx.x + s];
    __syncthreads();
  }
  const T r = sm[0];
  __syncthreads(); // sm may be refilled at once
  return r;
}
__device__ float grad_tree_max(float v, float *sm) {
  sm[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) sm[threadIdx.x] = fmaxf(sm[threadIdx.x], sm[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = sm[0];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------- RMSNorm backward
// grid N, TF_THREADS: x, dy [N, d]; rc [N, 2] = (r_t, c_t)
__global__ void rms_rows_kernel(int d, const float *x, const float *w, float eps, const float *dy, double *rc) {
  __shared__ double sm[TF_THREADS];
  const size_t o = (size_t)blockIdx.x * d;
  const double ss = grad_tree_sum(e8q_tdev_sumsq(x + o, d, threadIdx.x, blockDim.x), sm);
  const double dot = grad_tree_sum(e8q_gdev_rms_dot(x + o, w, dy + o, d, threadIdx.x, blockDim.x), sm);
  if (threadIdx.x == 0) e8q_gdev_rms_factors(ss, dot, d, eps, rc + 2 * (size_t)blockIdx.x);
}

// one thread per column i < d: dw [d]
__global__ void rms_dw_kernel(int N, int d, const float *x, const float *dy, const double *rc, float *dw) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < d) e8q_gdev_rms_dw(i, N, d, x, dy, rc, dw);
}

// grid-stride over [N, d]; dx may alias dy (each element read, then written, by one thread)
__global__ void rms_dx_kernel(size_t total, int d, const float *x, const float *w, const float *dy, const double *rc,
                              float *dx) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (size_t)gridDim.x * blockDim.x)
    e8q_gdev_rms_dx(k, d, x, w, dy, rc, dx);
}

// ---------------------------------------------------------------- RoPE and SwiGLU backward
__global__ void rope_back_kernel(size_t pairs, int T, int n_heads, int hd, double theta, float *dx, int ld) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < pairs; k += (size_t)gridDim.x * blockDim.x)
    e8q_tdev_rope_pair(k, T, 0, n_heads, hd, theta, -1.0f, dx, ld);
}

// ug, dug [N, 2*hidden]; dh [N, hidden]
__global__ void swiglu_back_kernel(size_t total, int hidden, const float *ug, const float *dh, float *dug) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (size_t)gridDim.x * blockDim.x)
    e8q_gdev_swiglu(k, hidden, ug, dh, dug);
}

// ---------------------------------------------------------------- attention backward
// the geometry shared by both kernels: qkv, dqkv [n_seq*T, ld]; dout [n_seq*T, ldo];
// P, dS [n_seq, n_heads, T, T] (row t of plane (s, h) holds query t's keys 0..t)
struct AttnShape {
  int T, n_heads, n_kv_heads, hd;
  size_t ld, ldo;
  float scale;
};

// grid (T, n_heads, n_seq), TF_THREADS; dynamic shared memory: T floats (att: exp scores, then
// dP, then dS of this query)
__global__ void attn_back_q_kernel(AttnShape a, const float *qkv, const float *dout, float *dqkv, float *P,
                                   float *dS) {
  extern __shared__ float att[];
  __shared__ float redf[TF_THREADS];
  __shared__ double redd[TF_THREADS];
  const int t = blockIdx.x, h = blockIdx.y, s = blockIdx.z, T = a.T;
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const size_t row = (size_t)s * T + t;
  const float *base = qkv + (size_t)s * T * a.ld;
  const float *q = qkv + row * a.ld + (size_t)h * a.hd, *dO = dout + row * a.ldo + (size_t)h * a.hd;
  const float *k = base + (size_t)(a.n_heads + kvh) * a.hd;
  const float *v = base + (size_t)(a.n_heads + a.n_kv_heads + kvh) * a.hd;
  const size_t prow = (((size_t)s * a.n_heads + h) * T + t) * T;
  const int lane = threadIdx.x, nl = blockDim.x;
  // the forward's probabilities (each tree's barriers order the att writes before later reads)
  const float mx = grad_tree_max(e8q_tdev_scores(t, q, k, a.ld, a.hd, a.scale, att, lane, nl), redf);
  const float sum = grad_tree_sum(e8q_tdev_exp(t, mx, att, lane, nl), redf);
  const double D = grad_tree_sum(e8q_gdev_attn_dp(t, att, 1.0f / sum, dO, v, a.ld, a.hd, P + prow, lane, nl), redd);
  e8q_gdev_attn_ds(t, att, P + prow, (float)D, dS + prow, lane, nl);
  __syncthreads(); // every lane's dS_j in att before the sums over j
  e8q_gdev_attn_dq(t, att, k, a.ld, a.hd, a.scale, dqkv + row * a.ld + (size_t)h * a.hd, lane, nl);
}

// grid (T, n_kv_heads, n_seq), any block size (lanes over i): after attn_back_q_kernel
__global__ void attn_back_kv_kernel(AttnShape a, const float *qkv, const float *dout, float *dqkv, const float *P,
                                    const float *dS) {
  const int j = blockIdx.x, g = blockIdx.y, s = blockIdx.z, T = a.T;
  const int group = a.n_heads / a.n_kv_heads, h0 = g * group;
  const size_t r0 = (size_t)s * T, plane = ((size_t)s * a.n_heads + h0) * T * T;
  const size_t ko = (size_t)(a.n_heads + g) * a.hd, vo = (size_t)(a.n_heads + a.n_kv_heads + g) * a.hd;
  float *drow = dqkv + (r0 + j) * a.ld;
  e8q_gdev_attn_dkv(j, T, group, qkv + r0 * a.ld + (size_t)h0 * a.hd, a.ld, dout + r0 * a.ldo + (size_t)h0 * a.hd,
                    a.ldo, a.hd, a.scale, P + plane, dS + plane, drow + ko, drow + vo, threadIdx.x, blockDim.x);
}

// ---------------------------------------------------------------- launchers
static unsigned grad_grid(size_t n) {
  const size_t g = (n + TF_THREADS - 1) / TF_THREADS;
  return (unsigned)(g < 65535 ? (g > 0 ? g : 1) : 65535);
}

extern "C" size_t e8q_cu_rmsnorm_backward_scratch(int N) { return N > 0 ? sizeof(double) * 2 * (size_t)N : 0; }

extern "C" int e8q_cu_rmsnorm_backward(int N, int d, const float *x, const float *w, float eps, const float *dy,
                                       float *dx, float *dw, void *scratch, void *stream, char *err, size_t errlen) {
  if (N < 0 || (N > 0 && (d <= 0 || !scratch))) {
    snprintf(err, errlen, "rmsnorm backward: %d x %d%s not supported", N, d,
             N > 0 && !scratch ? " without scratch" : "");
    return -1;
  }
  if (N == 0) return 0;
  cudaStream_t st = (cudaStream_t)stream;
  double *rc = (double *)scratch;
  rms_rows_kernel<<<N, TF_THREADS, 0, st>>>(d, x, w, eps, dy, rc);
  if (grad_err(cudaGetLastError(), "rms_rows_kernel", err, errlen)) return -1;
  if (dw) { // before dx overwrites dy
    rms_dw_kernel<<<(d + TF_THREADS - 1) / TF_THREADS, TF_THREADS, 0, st>>>(N, d, x, dy, rc, dw);
    if (grad_err(cudaGetLastError(), "rms_dw_kernel", err, errlen)) return -1;
  }
  if (dx) {
    const size_t total = (size_t)N * d;
    rms_dx_kernel<<<grad_grid(total), TF_THREADS, 0, st>>>(total, d, x, w, dy, rc, dx);
    if (grad_err(cudaGetLastError(), "rms_dx_kernel", err, errlen)) return -1;
  }
  return 0;
}

extern "C" int e8q_cu_rope_backward(int N, int T, int n_heads, int hd, double theta, float *dx, int ld, void *stream,
                                    char *err, size_t errlen) {
  const size_t pairs = N > 0 && n_heads > 0 && hd > 0 ? (size_t)N * n_heads * (hd / 2) : 0;
  if (hd % 2 || N < 0 || n_heads < 0 || hd < 0 || (pairs && (T <= 0 || ld < n_heads * hd))) {
    snprintf(err, errlen, "rope backward: %d rows of %d tokens, %d heads of %d (ld %d) not supported", N, T, n_heads,
             hd, ld);
    return -1;
  }
  if (pairs == 0) return 0;
  rope_back_kernel<<<grad_grid(pairs), TF_THREADS, 0, (cudaStream_t)stream>>>(pairs, T, n_heads, hd, theta, dx, ld);
  return grad_err(cudaGetLastError(), "rope_back_kernel", err, errlen);
}

extern "C" int e8q_cu_swiglu_backward(int N, int hidden, const float *ug, const float *dh, float *dug, void *stream,
                                      char *err, size_t errlen) {
  if (N < 0 || hidden < 0) {
    snprintf(err, errlen, "swiglu backward: %d x %d not supported", N, hidden);
    return -1;
  }
  const size_t total = (size_t)N * hidden;
  if (total == 0) return 0;
  swiglu_back_kernel<<<grad_grid(total), TF_THREADS, 0, (cudaStream_t)stream>>>(total, hidden, ug, dh, dug);
  return grad_err(cudaGetLastError(), "swiglu_back_kernel", err, errlen);
}

extern "C" size_t e8q_cu_attention_backward_scratch(int n_seq, int T, int n_heads) {
  if (n_seq <= 0 || T <= 0 || n_heads <= 0) return 0;
  return 2 * sizeof(float) * (size_t)n_seq * n_heads * T * T; // the P and dS planes
}

extern "C" int e8q_cu_attention_backward(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv,
                                         const float *dout, float *dqkv, void *scratch, void *stream, char *err,
                                         size_t errlen) {
  const int empty = n_seq == 0 || T == 0;
  if (n_seq < 0 || T < 0 || T > E8Q_TF_GPU_MAX_T || hd <= 0 || n_heads <= 0 || n_kv_heads <= 0 ||
      n_heads % n_kv_heads || n_heads > 65535 || n_kv_heads > 65535 || n_seq > 65535 || (!empty && !scratch)) {
    snprintf(err, errlen,
             "attention backward: %d sequences of %d tokens (at most %d), %d heads, %d kv heads of %d%s not supported",
             n_seq, T, E8Q_TF_GPU_MAX_T, n_heads, n_kv_heads, hd, !empty && !scratch ? " without scratch" : "");
    return -1;
  }
  if (empty) return 0;
  AttnShape a;
  a.T = T;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv_heads;
  a.hd = hd;
  a.ld = (size_t)(n_heads + 2 * n_kv_heads) * hd;
  a.ldo = (size_t)n_heads * hd;
  a.scale = 1.0f / sqrtf((float)hd);
  float *P = (float *)scratch, *dS = P + (size_t)n_seq * n_heads * T * T;
  cudaStream_t st = (cudaStream_t)stream;
  attn_back_q_kernel<<<dim3(T, n_heads, n_seq), TF_THREADS, sizeof(float) * T, st>>>(a, qkv, dout, dqkv, P, dS);
  if (grad_err(cudaGetLastError(), "attn_back_q_kernel", err, errlen)) return -1;
  const int kv_threads = hd < TF_THREADS ? (hd + 31) / 32 * 32 : TF_THREADS; // whole warps, lanes over i
  attn_back_kv_kernel<<<dim3(T, n_kv_heads, n_seq), kv_threads, 0, st>>>(a, qkv, dout, dqkv, P, dS);
  return grad_err(cudaGetLastError(), "attn_back_kv_kernel", err, errlen);
}
