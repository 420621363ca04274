// kernels/transformer_cuda.cu: CUDA kernels of a decoder block's non-matmul ops (see
// transformer_gpu.h for the C API and the arithmetic; transformer.h for the CPU twins).
//
//   rmsnorm_kernel    one block per row: float64 partial sums of squares, tree reduction in
//                     shared memory, then the scaled row
//   rope_kernel       one thread per (row, head, pair); the angle in float64 as e8q_rope_table
//   attention_kernel  one block per (query, head, sequence): the query's scores over keys 0..t
//                     in shared memory, block max and sum, then the weighted values
//   attention_step_kernel  the same for one decode step, one block per head, keys from the
//                     layer's KV cache
//   swiglu_kernel, add_kernel  elementwise, grid-stride
// The launchers own the geometry and return an error text instead of launching shapes they do
// not support; the C side (transformer_gpu.c) turns it into a fatal error. No e8q_common here.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>

#include "kernels/transformer_cuda_dev.h"
#include "kernels/transformer_gpu.h"

#define TF_THREADS 256

static int tf_err(cudaError_t e, const char *what, char *err, size_t errlen) {
  if (e == cudaSuccess) return 0;
  snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e));
  return -1;
}

// ---------------------------------------------------------------- block reductions
// a tree over the block's threads (blockDim.x a power of two); every thread gets the result
struct SumOp { template <class T> __device__ T operator()(T a, T b) const { return a + b; } };
struct MaxOp { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };
template <class T, class Op> __device__ T block_reduce(T v, T *sm, Op op) {
  sm[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) sm[threadIdx.x] = op(sm[threadIdx.x], sm[threadIdx.x + s]);
    __syncthreads();
  }
  T r = sm[0];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------- kernels
// (the arithmetic: transformer_cuda_dev.h, host-tested; here only the work split and reductions)
__global__ void rmsnorm_kernel(int d, const float *x, const float *w, float eps, float *y) {
  __shared__ double sm[TF_THREADS];
  const float *xr = x + (size_t)blockIdx.x * d;
  const double ss = block_reduce(e8q_tdev_sumsq(xr, d, threadIdx.x, blockDim.x), sm, SumOp());
  e8q_tdev_rmsnorm_apply(xr, w, e8q_tdev_rms_inv(ss, d, eps), y + (size_t)blockIdx.x * d, d, threadIdx.x, blockDim.x);
}

__global__ void rope_kernel(size_t pairs, int T, int pos0, int n_heads, int hd, double theta, float *x, int ld) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < pairs; k += (size_t)gridDim.x * blockDim.x)
    e8q_tdev_rope_pair(k, T, pos0, n_heads, hd, theta, 1.0f, x, ld);
}

// grid (T, n_heads, n_seq); dynamic shared memory: T floats of scores + TF_THREADS floats
__global__ void attention_kernel(int T, int n_heads, int n_kv_heads, int hd, float scale, const float *qkv,
                                 float *out) {
  extern __shared__ float sm[];
  float *att = sm, *red = sm + T;
  const int t = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
  const int kvh = h / (n_heads / n_kv_heads);
  const size_t ld = (size_t)(n_heads + 2 * n_kv_heads) * hd;
  const float *base = qkv + (size_t)s * T * ld;
  const float *q = base + (size_t)t * ld + (size_t)h * hd;
  const float *k = base + (size_t)(n_heads + kvh) * hd;
  const float *v = base + (size_t)(n_heads + n_kv_heads + kvh) * hd;
  const float mx = block_reduce(e8q_tdev_scores(t, q, k, ld, hd, scale, att, threadIdx.x, blockDim.x), red, MaxOp());
  // the block sum also orders every lane's att writes before the reads of e8q_tdev_attend
  const float sum = block_reduce(e8q_tdev_exp(t, mx, att, threadIdx.x, blockDim.x), red, SumOp());
  float *o = out + ((size_t)s * T + t) * ((size_t)n_heads * hd) + (size_t)h * hd;
  e8q_tdev_attend(t, att, 1.0f / sum, v, ld, hd, o, threadIdx.x, blockDim.x);
}

// one decode step: grid (n_heads), the query against keys 0..pos of the layer's cache (rows of
// n_kv_heads*hd); dynamic shared memory: pos+1 floats of scores + TF_THREADS floats
__global__ void attention_step_kernel(int pos, int n_heads, int n_kv_heads, int hd, float scale, const float *q,
                                      const float *kc, const float *vc, float *out) {
  extern __shared__ float sm[];
  float *att = sm, *red = sm + pos + 1;
  const int h = blockIdx.x, kvh = h / (n_heads / n_kv_heads);
  const size_t ld = (size_t)n_kv_heads * hd;
  const float *qh = q + (size_t)h * hd, *k = kc + (size_t)kvh * hd, *v = vc + (size_t)kvh * hd;
  const float mx = block_reduce(e8q_tdev_scores(pos, qh, k, ld, hd, scale, att, threadIdx.x, blockDim.x), red, MaxOp());
  const float sum = block_reduce(e8q_tdev_exp(pos, mx, att, threadIdx.x, blockDim.x), red, SumOp());
  e8q_tdev_attend(pos, att, 1.0f / sum, v, ld, hd, out + (size_t)h * hd, threadIdx.x, blockDim.x);
}

__global__ void swiglu_kernel(size_t total, int hidden, const float *ug, float *h) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (size_t)gridDim.x * blockDim.x)
    e8q_tdev_swiglu(k, hidden, ug, h);
}

__global__ void add_kernel(size_t n, float *x, const float *y) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x)
    x[k] += y[k];
}

// ---------------------------------------------------------------- launchers
static unsigned grid_for(size_t n) {
  size_t g = (n + TF_THREADS - 1) / TF_THREADS;
  return (unsigned)(g < 65535 ? (g > 0 ? g : 1) : 65535);
}

extern "C" int e8q_cu_rmsnorm(int N, int d, const float *x, const float *w, float eps, float *y, void *stream,
                              char *err, size_t errlen) {
  if (N <= 0) return 0;
  rmsnorm_kernel<<<N, TF_THREADS, 0, (cudaStream_t)stream>>>(d, x, w, eps, y);
  return tf_err(cudaGetLastError(), "rmsnorm_kernel", err, errlen);
}

extern "C" int e8q_cu_rope(int N, int T, int pos0, int n_heads, int hd, double theta, float *x, int ld, void *stream,
                           char *err, size_t errlen) {
  if (hd % 2) {
    snprintf(err, errlen, "rope: head_dim %d is odd", hd);
    return -1;
  }
  const size_t pairs = (size_t)N * n_heads * (hd / 2);
  rope_kernel<<<grid_for(pairs), TF_THREADS, 0, (cudaStream_t)stream>>>(pairs, T, pos0, n_heads, hd, theta, x, ld);
  return tf_err(cudaGetLastError(), "rope_kernel", err, errlen);
}

extern "C" int e8q_cu_attention(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv, float *out,
                                void *stream, char *err, size_t errlen) {
  if (T > E8Q_TF_GPU_MAX_T || n_kv_heads <= 0 || n_heads % n_kv_heads || n_heads > 65535 || n_seq > 65535) {
    snprintf(err, errlen, "attention: %d tokens (at most %d), %d heads, %d kv heads, %d sequences not supported", T,
             E8Q_TF_GPU_MAX_T, n_heads, n_kv_heads, n_seq);
    return -1;
  }
  if (n_seq <= 0 || T <= 0) return 0;
  const size_t smem = sizeof(float) * ((size_t)T + TF_THREADS);
  if (smem > 48 * 1024 &&
      tf_err(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
             "cudaFuncSetAttribute(attention_kernel)", err, errlen))
    return -1;
  attention_kernel<<<dim3(T, n_heads, n_seq), TF_THREADS, smem, (cudaStream_t)stream>>>(
      T, n_heads, n_kv_heads, hd, 1.0f / sqrtf((float)hd), qkv, out);
  return tf_err(cudaGetLastError(), "attention_kernel", err, errlen);
}

extern "C" int e8q_cu_attention_step(int pos, int n_heads, int n_kv_heads, int hd, const float *q, const float *kc,
                                     const float *vc, float *out, void *stream, char *err, size_t errlen) {
  if (pos < 0 || pos >= E8Q_TF_GPU_MAX_T || n_kv_heads <= 0 || n_heads % n_kv_heads || n_heads > 65535) {
    snprintf(err, errlen, "attention step: position %d (at most %d), %d heads, %d kv heads not supported", pos,
             E8Q_TF_GPU_MAX_T - 1, n_heads, n_kv_heads);
    return -1;
  }
  const size_t smem = sizeof(float) * ((size_t)pos + 1 + TF_THREADS);
  if (smem > 48 * 1024 &&
      tf_err(cudaFuncSetAttribute(attention_step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
             "cudaFuncSetAttribute(attention_step_kernel)", err, errlen))
    return -1;
  attention_step_kernel<<<n_heads, TF_THREADS, smem, (cudaStream_t)stream>>>(pos, n_heads, n_kv_heads, hd,
                                                                             1.0f / sqrtf((float)hd), q, kc, vc, out);
  return tf_err(cudaGetLastError(), "attention_step_kernel", err, errlen);
}

extern "C" int e8q_cu_swiglu(int N, int hidden, const float *ug, float *h, void *stream, char *err, size_t errlen) {
  swiglu_kernel<<<grid_for((size_t)N * hidden), TF_THREADS, 0, (cudaStream_t)stream>>>((size_t)N * hidden, hidden, ug, h);
  return tf_err(cudaGetLastError(), "swiglu_kernel", err, errlen);
}

extern "C" int e8q_cu_add(size_t n, float *x, const float *y, void *stream, char *err, size_t errlen) {
  add_kernel<<<grid_for(n), TF_THREADS, 0, (cudaStream_t)stream>>>(n, x, y);
  return tf_err(cudaGetLastError(), "add_kernel", err, errlen);
}
