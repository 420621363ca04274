// kernels/qlinear_cuda.cu: CUDA kernels of the fused quantized linear (see qlinear_gpu.h for
// the public C API, qlinear_cuda_dev.h for the arithmetic shared with the host tests).
//
//   had_kernel    one block per batch row: the vector is staged in shared memory (pre-scaled,
//                 zero-padded), butterflies per segment, then the cross-segment mix and the
//                 post scales are written to global memory. Used for the input (SU, M_n_padᵀ)
//                 and output (Wscale, M_m, fs ⊙ SV) transforms.
//   codes_kernel  one warp per output row, 8 rows per block; lane l decodes codes l, l+32, ...
//                 of the row (codebook tables staged in shared memory), multiplies them into up
//                 to 8 batch columns at a time, warp-shuffle reduction, lane 0 writes z.
//   codes_kernel_b1  the same at batch 1 with the input vector staged in shared memory per
//                 block (used when n_pad floats fit).
// Fine-tuning (the backward, qlinear_grad.h's chain on device buffers):
//   codes_t_kernel  the transpose product: one thread per (code column, tile of 8 batch rows,
//                 chunk of rows), 128 threads a block; rows summed in order within a chunk
//   sum_chunks_kernel  the chunks' partial products added in chunk order (grid-stride)
//   coldot_kernel one thread per column: a float64 sum over the batch in order (dSU, dSV)
//   rowscale_kernel  out[b, i] = s[i] · in[b, i] (grid-stride): y from the kept z, dx from v
// The launchers own the geometry and report unsupported shapes instead of launching; the C
// side (qlinear_gpu.c) then falls back to the CPU path. No e8q_common calls here: errors are
// returned as text.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include <mutex>

#include "kernels/codebook.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_cuda_dev.h"

#define ROWS_PER_BLOCK 8
#define HAD_THREADS 1024

struct e8q_cu_qlinear {
  int device, m, n, n_pad, nc, cb, K_in, K_out;
  int b1_smem;          // batch 1 stages the input in shared memory when this is set
  float Wscale, inv_rs;
  uint16_t *codes;      // [m, nc] device
  void *codes2;         // [m, nc] u16 or u8, device (NULL at 2 bit)
  float *SU;            // [n_pad]
  float *out_scale;     // [m] fs(piece(r)) · SV[r]
  float *fs_row;        // [m] fs(piece(r)): dSV's factor
  float *R_in, *R_out;  // [K, K] or NULL
  uint32_t *abs_tab;    // [256] packed abs rows (codebook.h host table, uploaded)
  int8_t *grid2;        // [256 * 8] 1-bit grid in half units
  struct e8q_cu_pool *pool; // the device's stream and work buffers, shared by its layers
};

static int cu_err(cudaError_t e, const char *what, char *err, size_t errlen) {
  if (e == cudaSuccess) return 0;
  snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e));
  return -1;
}
#define CU_TRY(call)                                            \
  do {                                                          \
    if (cu_err((call), #call, err, errlen)) return -1;          \
  } while (0)

// ---------------------------------------------------------------- the device's shared work buffers
// Every layer on a device runs its products on the device's one stream with the device's one set
// of work buffers, each grown to the largest product seen: a model's hundreds of layers hold one
// set, not one each. Products of different layers serialise on that stream; two events order
// them after and before each caller's stream. Refcounted by the layers (create / free), under a
// mutex (layers may be created from several threads; products are issued from one at a time).
enum { POOL_X, POOL_U, POOL_Z, POOL_Y, POOL_T, POOL_BUFS };
struct e8q_cu_pool {
  int device, refs;
  cudaStream_t stream;
  cudaEvent_t ev_in, ev_out;   // a caller's stream -> stream -> the caller's stream
  float *buf[POOL_BUFS];       // x [batch, n], u [batch, n_pad], z [batch, m], y [batch, m],
                               // t [chunks, batch, n_pad] (the transpose product's partials)
  size_t cap[POOL_BUFS];       // floats allocated in buf[i]
};
#define POOL_MAX_DEVICES 64
static e8q_cu_pool *g_pools[POOL_MAX_DEVICES];
static std::mutex g_pools_mu;

static void pool_destroy(e8q_cu_pool *p) {
  cudaSetDevice(p->device);
  if (p->stream) cudaStreamSynchronize(p->stream);
  for (int i = 0; i < POOL_BUFS; i++) cudaFree(p->buf[i]);
  if (p->ev_in) cudaEventDestroy(p->ev_in);
  if (p->ev_out) cudaEventDestroy(p->ev_out);
  if (p->stream) cudaStreamDestroy(p->stream);
  delete p;
}

static e8q_cu_pool *pool_acquire(int device, char *err, size_t errlen) {
  if (device < 0 || device >= POOL_MAX_DEVICES) {
    snprintf(err, errlen, "CUDA device %d: at most %d devices per process", device, POOL_MAX_DEVICES);
    return NULL;
  }
  std::lock_guard<std::mutex> lock(g_pools_mu);
  e8q_cu_pool *p = g_pools[device];
  if (!p) {
    p = new e8q_cu_pool();
    memset(p, 0, sizeof *p);
    p->device = device;
    if (cu_err(cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking), "cudaStreamCreate", err, errlen) ||
        cu_err(cudaEventCreateWithFlags(&p->ev_in, cudaEventDisableTiming), "cudaEventCreate", err, errlen) ||
        cu_err(cudaEventCreateWithFlags(&p->ev_out, cudaEventDisableTiming), "cudaEventCreate", err, errlen)) {
      pool_destroy(p);
      return NULL;
    }
    g_pools[device] = p;
  }
  p->refs++;
  return p;
}

static void pool_release(e8q_cu_pool *p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(g_pools_mu);
  if (--p->refs > 0) return;
  g_pools[p->device] = NULL;
  pool_destroy(p);
}

// buffer i of at least `floats` floats (the pool's stream drained before a smaller one is freed)
static float *pool_buf(e8q_cu_pool *p, int i, size_t floats, char *err, size_t errlen) {
  if (floats <= p->cap[i]) return p->buf[i];
  if (cu_err(cudaStreamSynchronize(p->stream), "cudaStreamSynchronize", err, errlen)) return NULL;
  cudaFree(p->buf[i]);
  p->buf[i] = NULL;
  p->cap[i] = 0;
  if (cu_err(cudaMalloc((void **)&p->buf[i], sizeof(float) * floats), "cudaMalloc (work buffer)", err, errlen))
    return NULL;
  p->cap[i] = floats;
  return p->buf[i];
}

// ---------------------------------------------------------------- kernels
__global__ void had_kernel(const float *in, int in_stride, int n_valid, const float *pre, int k, int K,
                           const float *R, int transpose, float scalar, const float *post, float *out) {
  extern __shared__ float sm[];
  const int b = blockIdx.x, p = k / K;
  const float *x = in + (size_t)b * in_stride;
  for (int i = threadIdx.x; i < k; i += blockDim.x) sm[i] = i < n_valid ? (pre ? pre[i] * x[i] : x[i]) : 0.0f;
  __syncthreads();
  for (int h = 1; h < p; h *= 2) {
    for (int t = threadIdx.x; t < k / 2; t += blockDim.x) {
      int seg = t / (p / 2), idx = t % (p / 2);
      e8q_qdev_fwht_pair(sm + seg * p, h, idx);
    }
    __syncthreads();
  }
  const float sc = scalar * rsqrtf((float)k);
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    float v = e8q_qdev_had_mix(sm, R, K, p, transpose, i / p, i % p, sc);
    out[(size_t)b * k + i] = post ? post[i] * v : v;
  }
}

// the block's copy of the codebook tables (the 1-bit E8 grid only for RVQ3); caller syncs
__device__ static void stage_tables(int cb, const uint32_t *abs_g, const int8_t *grid_g, uint32_t *abs_tab,
                                    int8_t *grid2) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) abs_tab[i] = abs_g[i];
  if (cb == E8Q_CB_E8P12RVQ3B)
    for (int i = threadIdx.x; i < 256 * 8; i += blockDim.x) grid2[i] = grid_g[i];
}

// row `row` of the second-stage codes: U16 (RVQ4), U8 (RVQ3), none (E8P)
__device__ static const void *row_codes2(int cb, const void *codes2, int row, int nc) {
  return cb == E8Q_CB_E8P12RVQ4B ? (const void *)((const uint16_t *)codes2 + (size_t)row * nc)
       : cb == E8Q_CB_E8P12RVQ3B ? (const void *)((const uint8_t *)codes2 + (size_t)row * nc)
                                 : (const void *)0;
}

// the row this warp computes: ROWS_PER_BLOCK warps a block, one row each
__device__ __forceinline__ int warp_row() { return blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32; }

__global__ void codes_kernel(int cb, const uint16_t *codes, const void *codes2, int m, int nc, float inv_rs,
                             const uint32_t *abs_g, const int8_t *grid_g, const float *u, int n_pad, int batch,
                             float *z) {
  __shared__ uint32_t abs_tab[256];
  __shared__ int8_t grid2[256 * 8];
  stage_tables(cb, abs_g, grid_g, abs_tab, grid2);
  __syncthreads();
  const int row = warp_row(), lane = threadIdx.x % 32;
  if (row >= m) return;
  const uint16_t *c1 = codes + (size_t)row * nc;
  const void *c2 = row_codes2(cb, codes2, row, nc);
  for (int b0 = 0; b0 < batch; b0 += E8Q_QDEV_BT) {
    const int bt = batch - b0 < E8Q_QDEV_BT ? batch - b0 : E8Q_QDEV_BT;
    float acc[E8Q_QDEV_BT];
#pragma unroll
    for (int t = 0; t < E8Q_QDEV_BT; t++) acc[t] = 0.0f;
    e8q_qdev_row_partial(cb, abs_tab, grid2, c1, c2, nc, inv_rs, u, n_pad, b0, bt, lane, 32, acc);
#pragma unroll
    for (int t = 0; t < E8Q_QDEV_BT; t++) {
      float v = acc[t];
      for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && t < bt) z[(size_t)(b0 + t) * m + row] = v;
    }
  }
}

// batch 1: the block's 8 rows share one input vector, staged in shared memory once per block
// (the input is read 8x less from L2 than by codes_kernel); dynamic shared memory = n_pad floats
__global__ void codes_kernel_b1(int cb, const uint16_t *codes, const void *codes2, int m, int nc, float inv_rs,
                                const uint32_t *abs_g, const int8_t *grid_g, const float *u, int n_pad, float *z) {
  extern __shared__ float us[];
  __shared__ uint32_t abs_tab[256];
  __shared__ int8_t grid2[256 * 8];
  stage_tables(cb, abs_g, grid_g, abs_tab, grid2);
  for (int i = threadIdx.x; i < n_pad; i += blockDim.x) us[i] = u[i];
  __syncthreads();
  const int row = warp_row(), lane = threadIdx.x % 32;
  if (row >= m) return;
  const uint16_t *c1 = codes + (size_t)row * nc;
  const void *c2 = row_codes2(cb, codes2, row, nc);
  float acc[E8Q_QDEV_BT];
#pragma unroll
  for (int t = 0; t < E8Q_QDEV_BT; t++) acc[t] = 0.0f;
  e8q_qdev_row_partial(cb, abs_tab, grid2, c1, c2, nc, inv_rs, us, n_pad, 0, 1, lane, 32, acc);
  float v = acc[0];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) z[row] = v;
}

// ---------------------------------------------------------------- backward kernels
// grid (ceil(nc / 128), batch tiles, chunks), 128 threads; out: t [batch, n_pad] when there is
// one chunk, else the chunk's slice of the partials [chunks, batch, n_pad]
#define T_THREADS 128
__global__ void codes_t_kernel(int cb, const uint16_t *codes, const void *codes2, int m, int nc, float inv_rs,
                               const uint32_t *abs_g, const int8_t *grid_g, const float *g, int batch, int n_pad,
                               int rows_per_chunk, float *out) {
  __shared__ uint32_t abs_tab[256];
  __shared__ int8_t grid2[256 * 8];
  stage_tables(cb, abs_g, grid_g, abs_tab, grid2);
  __syncthreads();
  const int j = blockIdx.x * T_THREADS + threadIdx.x, b0 = blockIdx.y * E8Q_QDEV_BT, c = blockIdx.z;
  if (j >= nc) return;
  const int bt = batch - b0 < E8Q_QDEV_BT ? batch - b0 : E8Q_QDEV_BT;
  const int r0 = c * rows_per_chunk, r1 = r0 + rows_per_chunk < m ? r0 + rows_per_chunk : m;
  float acc[E8Q_QDEV_BT][8];
#pragma unroll
  for (int t = 0; t < E8Q_QDEV_BT; t++)
#pragma unroll
    for (int e = 0; e < 8; e++) acc[t][e] = 0.0f;
  e8q_qdev_col_partial(cb, abs_tab, grid2, codes, codes2, nc, inv_rs, g, m, r0, r1, j, b0, bt, acc);
  float *o = out + (size_t)c * batch * n_pad;
  for (int t = 0; t < bt; t++)
#pragma unroll
    for (int e = 0; e < 8; e++) o[(size_t)(b0 + t) * n_pad + 8 * j + e] = acc[t][e];
}

__global__ void sum_chunks_kernel(size_t total, int chunks, const float *part, float *t) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    float s = part[i];
    for (int c = 1; c < chunks; c++) s += part[(size_t)c * total + i];
    t[i] = s;
  }
}

// acc[k] += (float)(Σ_b a[b, k] c[b, k] · scale[k]) for k < cols (scale NULL: 1)
__global__ void coldot_kernel(int batch, int cols, const float *a, int lda, const float *c, int ldc,
                              const float *scale, float *acc) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= cols) return;
  double s = e8q_qdev_coldot(batch, a, lda, c, ldc, k);
  if (scale) s *= (double)scale[k];
  acc[k] += (float)s;
}

__global__ void rowscale_kernel(int batch, int cols, const float *s, const float *in, int ldi, float *out, int ldo) {
  const size_t total = (size_t)batch * cols;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t b = i / cols, k = i % cols;
    out[b * ldo + k] = s[k] * in[b * ldi + k];
  }
}

static unsigned grid_1d(size_t n, int threads) {
  size_t g = (n + threads - 1) / threads;
  return (unsigned)(g < 65535 ? (g > 0 ? g : 1) : 65535);
}

// ---------------------------------------------------------------- host side
extern "C" void e8q_cu_qlinear_free(void *h) {
  e8q_cu_qlinear *g = (e8q_cu_qlinear *)h;
  if (!g) return;
  cudaSetDevice(g->device);
  if (g->pool) cudaStreamSynchronize(g->pool->stream); // no product of this layer in flight
  cudaFree(g->codes); cudaFree(g->codes2); cudaFree(g->SU); cudaFree(g->out_scale); cudaFree(g->fs_row);
  cudaFree(g->R_in); cudaFree(g->R_out); cudaFree(g->abs_tab); cudaFree(g->grid2);
  pool_release(g->pool);
  delete g;
}

static int upload(void **dst, const void *src, size_t bytes, char *err, size_t errlen) {
  CU_TRY(cudaMalloc(dst, bytes));
  CU_TRY(cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice));
  return 0;
}

// the largest dynamic shared memory a block may use on this device (opt-in included)
static int max_smem(int device) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return 48 * 1024;
  return v;
}

// Shapes the kernels support: both Hadamard vectors fit in shared memory. Returns 0 or -1 with
// the reason in err (no device needed for the shape part when device < 0).
extern "C" int e8q_cu_qlinear_supported(const e8q_qlinear *q, int device, char *err, size_t errlen) {
  int smem = device >= 0 ? max_smem(device) : 227 * 1024;
  size_t need = sizeof(float) * (size_t)(q->d.n_pad > q->d.m ? q->d.n_pad : q->d.m);
  if (need > (size_t)smem) {
    snprintf(err, errlen, "Hadamard of length %d needs %zu bytes of shared memory, the device allows %d",
             q->d.n_pad > q->d.m ? q->d.n_pad : q->d.m, need, smem);
    return -1;
  }
  return 0;
}

extern "C" int e8q_cu_qlinear_create(const e8q_qlinear *q, int device, void **out, char *err, size_t errlen) {
  *out = NULL;
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev == 0) {
    (void)cudaGetLastError();
    snprintf(err, errlen, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return -1;
  }
  if (device < 0 || device >= ndev) {
    snprintf(err, errlen, "CUDA device %d requested, %d present", device, ndev);
    return -1;
  }
  if (e8q_cu_qlinear_supported(q, device, err, errlen)) return -1;
  CU_TRY(cudaSetDevice(device));
  e8q_cu_qlinear *g = new e8q_cu_qlinear();
  memset(g, 0, sizeof *g);
  g->device = device;
  g->m = q->d.m; g->n = q->d.n; g->n_pad = q->d.n_pad; g->nc = q->nc; g->cb = (int)q->d.codebook;
  g->K_in = q->d.K_in; g->K_out = q->d.K_out; g->Wscale = q->d.Wscale; g->inv_rs = 1.0f / q->resid_scale;
  const size_t ncodes = (size_t)q->d.m * q->nc;
  int rc = 0;
  rc |= upload((void **)&g->codes, q->d.codes, ncodes * 2, err, errlen);
  if (!rc && q->d.codes2)
    rc |= upload(&g->codes2, q->d.codes2, ncodes * (q->d.codebook == E8Q_CB_E8P12RVQ4B ? 2 : 1), err, errlen);
  if (!rc) rc |= upload((void **)&g->SU, q->d.SU, sizeof(float) * q->d.n_pad, err, errlen);
  if (!rc) rc |= upload((void **)&g->out_scale, q->out_scale, sizeof(float) * q->d.m, err, errlen);
  if (!rc) { // each row's fuse scale (the walk over pieces of e8q_qlinear_init)
    float *fs = new float[q->d.m];
    for (int r = 0, piece = 0, left = q->d.piece_rows ? q->d.piece_rows[0] : q->d.m; r < q->d.m; r++, left--) {
      while (left == 0) left = q->d.piece_rows[++piece];
      fs[r] = q->d.fuse_scales ? q->d.fuse_scales[piece] : 1.0f;
    }
    rc |= upload((void **)&g->fs_row, fs, sizeof(float) * q->d.m, err, errlen);
    delete[] fs;
  }
  // the factors from the layer's own transforms (the desc's R pointers are only valid during init)
  if (!rc && q->d.K_in > 1) rc |= upload((void **)&g->R_in, q->h_in.f.Rf, sizeof(float) * q->d.K_in * q->d.K_in, err, errlen);
  if (!rc && q->d.K_out > 1) rc |= upload((void **)&g->R_out, q->h_out.f.Rf, sizeof(float) * q->d.K_out * q->d.K_out, err, errlen);
  if (!rc) rc |= upload((void **)&g->abs_tab, e8q_e8p_packed_abs_host, sizeof e8q_e8p_packed_abs_host, err, errlen);
  if (!rc) rc |= upload((void **)&g->grid2, e8q_e81b_grid2_host, sizeof e8q_e81b_grid2_host, err, errlen);
  if (!rc && !(g->pool = pool_acquire(device, err, errlen))) rc = -1;
  if (!rc) rc |= cu_err(cudaFuncSetAttribute(had_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem(device)),
                        "cudaFuncSetAttribute(had_kernel)", err, errlen);
  // static shared memory of codes_kernel_b1: 1 KiB abs table + 2 KiB grid
  g->b1_smem = (size_t)q->d.n_pad * sizeof(float) + 3 * 1024 + 1024 <= (size_t)max_smem(device);
  if (!rc && g->b1_smem)
    rc |= cu_err(cudaFuncSetAttribute(codes_kernel_b1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      max_smem(device) - 4 * 1024),
                 "cudaFuncSetAttribute(codes_kernel_b1)", err, errlen);
  if (rc) {
    e8q_cu_qlinear_free(g);
    return -1;
  }
  *out = g;
  return 0;
}

// the pool's u, z for `batch` rows of this layer, and with host = 1 the staging x, y of host
// buffers (e8q_cu_qlinear_forward_host; NULL otherwise); tpart: e8q_cu_qlinear_backward_dev
struct work {
  float *x, *u, *z, *y;
};
static int work_get(e8q_cu_qlinear *g, int batch, int host, work *w, char *err, size_t errlen) {
  const size_t b = (size_t)batch;
  w->x = w->y = NULL;
  w->u = pool_buf(g->pool, POOL_U, b * g->n_pad, err, errlen);
  w->z = w->u ? pool_buf(g->pool, POOL_Z, b * g->m, err, errlen) : NULL;
  if (!w->z) return -1;
  if (!host) return 0;
  w->x = pool_buf(g->pool, POOL_X, b * g->n, err, errlen);
  w->y = w->x ? pool_buf(g->pool, POOL_Y, b * g->m, err, errlen) : NULL;
  return w->y ? 0 : -1;
}

// the caller's stream -> the pool's stream (begin) and back (end): the kernels always run on
// the pool's stream, so products from several streams serialise on the shared work buffers
static int stream_begin(e8q_cu_pool *p, cudaStream_t caller, char *err, size_t errlen) {
  if (caller == p->stream) return 0;
  CU_TRY(cudaEventRecord(p->ev_in, caller));
  CU_TRY(cudaStreamWaitEvent(p->stream, p->ev_in, 0));
  return 0;
}
static int stream_end(e8q_cu_pool *p, cudaStream_t caller, char *err, size_t errlen) {
  if (caller == p->stream) return 0;
  CU_TRY(cudaEventRecord(p->ev_out, p->stream));
  CU_TRY(cudaStreamWaitEvent(caller, p->ev_out, 0));
  return 0;
}

// x [batch, n] -> y [batch, m] on the pool's stream; zk [batch, m] (or NULL): the output
// before the per-row scales, Wscale · M_m z (e8q_qlinear_forward_keep's z), for the backward
static int forward_run(e8q_cu_qlinear *g, const work *w, int batch, const float *x, float *y, float *zk, char *err,
                       size_t errlen) {
  const cudaStream_t st = g->pool->stream;
  had_kernel<<<batch, HAD_THREADS, sizeof(float) * g->n_pad, st>>>(x, g->n, g->n, g->SU, g->n_pad, g->K_in, g->R_in, 1,
                                                                   1.0f, NULL, w->u);
  CU_TRY(cudaGetLastError());
  int blocks = (g->m + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
  if (batch == 1 && g->b1_smem)
    codes_kernel_b1<<<blocks, 32 * ROWS_PER_BLOCK, sizeof(float) * g->n_pad, st>>>(
        g->cb, g->codes, g->codes2, g->m, g->nc, g->inv_rs, g->abs_tab, g->grid2, w->u, g->n_pad, w->z);
  else
    codes_kernel<<<blocks, 32 * ROWS_PER_BLOCK, 0, st>>>(g->cb, g->codes, g->codes2, g->m, g->nc, g->inv_rs,
                                                        g->abs_tab, g->grid2, w->u, g->n_pad, batch, w->z);
  CU_TRY(cudaGetLastError());
  had_kernel<<<batch, HAD_THREADS, sizeof(float) * g->m, st>>>(w->z, g->m, g->m, NULL, g->m, g->K_out, g->R_out, 0,
                                                               g->Wscale, zk ? NULL : g->out_scale, zk ? zk : y);
  CU_TRY(cudaGetLastError());
  if (zk) {
    rowscale_kernel<<<grid_1d((size_t)batch * g->m, 256), 256, 0, st>>>(batch, g->m, g->out_scale, zk, g->m, y, g->m);
    CU_TRY(cudaGetLastError());
  }
  return 0;
}

// device pointers: x [batch, n] -> y [batch, m], asynchronous on `stream` (NULL: the pool's
// stream), ordered after the caller's stream and before its later work by two events
extern "C" int e8q_cu_qlinear_forward_keep_dev(void *h, int batch, const float *x, float *y, float *zk,
                                               void *stream_, char *err, size_t errlen) {
  e8q_cu_qlinear *g = (e8q_cu_qlinear *)h;
  const cudaStream_t caller = stream_ ? (cudaStream_t)stream_ : g->pool->stream;
  if (batch <= 0) return 0;
  CU_TRY(cudaSetDevice(g->device));
  work w;
  if (work_get(g, batch, 0, &w, err, errlen)) return -1;
  if (stream_begin(g->pool, caller, err, errlen) || forward_run(g, &w, batch, x, y, zk, err, errlen)) return -1;
  return stream_end(g->pool, caller, err, errlen);
}

extern "C" int e8q_cu_qlinear_forward_dev(void *h, int batch, const float *x, float *y, void *stream_,
                                          char *err, size_t errlen) {
  return e8q_cu_qlinear_forward_keep_dev(h, batch, x, y, NULL, stream_, err, errlen);
}

// the backward chain of qlinear_grad.h on device buffers (see qlinear_gpu.h)
extern "C" int e8q_cu_qlinear_backward_dev(void *h, int batch, const float *x, const float *zk, const float *dy,
                                           float *dx, float *dSU, float *dSV, void *stream_, char *err,
                                           size_t errlen) {
  e8q_cu_qlinear *g = (e8q_cu_qlinear *)h;
  const cudaStream_t st = g->pool->stream, caller = stream_ ? (cudaStream_t)stream_ : st;
  if (batch <= 0) return 0;
  CU_TRY(cudaSetDevice(g->device));
  work w;
  if (work_get(g, batch, 0, &w, err, errlen)) return -1;
  const int chunks = e8q_qdev_t_chunks(g->m, g->nc, batch, g->n_pad);
  float *tpart = NULL; // [chunks, batch, n_pad]
  if (chunks > 1 && !(tpart = pool_buf(g->pool, POOL_T, (size_t)chunks * batch * g->n_pad, err, errlen))) return -1;
  if (stream_begin(g->pool, caller, err, errlen)) return -1;
  if (dSV) { // dSV[r] += fs[r] · Σ_b dy[b, r] zk[b, r]
    coldot_kernel<<<grid_1d(g->m, 256), 256, 0, st>>>(batch, g->m, dy, g->m, zk, g->m, g->fs_row, dSV);
    CU_TRY(cudaGetLastError());
  }
  if (dx || dSU) {
    // dz = Wscale · M_mᵀ (os ⊙ dy)
    had_kernel<<<batch, HAD_THREADS, sizeof(float) * g->m, st>>>(dy, g->m, g->m, g->out_scale, g->m, g->K_out, g->R_out,
                                                                 1, g->Wscale, NULL, w.z);
    CU_TRY(cudaGetLastError());
    // t = Ŵrᵀ dz into u, by chunks of rows added in order
    const int rows = (g->m + chunks - 1) / chunks;
    const dim3 grid((g->nc + T_THREADS - 1) / T_THREADS, (batch + E8Q_QDEV_BT - 1) / E8Q_QDEV_BT, chunks);
    codes_t_kernel<<<grid, T_THREADS, 0, st>>>(g->cb, g->codes, g->codes2, g->m, g->nc, g->inv_rs, g->abs_tab,
                                               g->grid2, w.z, batch, g->n_pad, rows, chunks > 1 ? tpart : w.u);
    CU_TRY(cudaGetLastError());
    if (chunks > 1) {
      const size_t total = (size_t)batch * g->n_pad;
      sum_chunks_kernel<<<grid_1d(total, 256), 256, 0, st>>>(total, chunks, tpart, w.u);
      CU_TRY(cudaGetLastError());
    }
    // v = M_n_pad t, in place (each block stages its row before writing it)
    had_kernel<<<batch, HAD_THREADS, sizeof(float) * g->n_pad, st>>>(w.u, g->n_pad, g->n_pad, NULL, g->n_pad, g->K_in,
                                                                     g->R_in, 0, 1.0f, NULL, w.u);
    CU_TRY(cudaGetLastError());
    if (dSU) { // dSU[k] += Σ_b x[b, k] v[b, k], k < n
      coldot_kernel<<<grid_1d(g->n, 256), 256, 0, st>>>(batch, g->n, x, g->n, w.u, g->n_pad, NULL, dSU);
      CU_TRY(cudaGetLastError());
    }
    if (dx) { // dx = SU ⊙ v (the padding columns have no input)
      rowscale_kernel<<<grid_1d((size_t)batch * g->n, 256), 256, 0, st>>>(batch, g->n, g->SU, w.u, g->n_pad, dx, g->n);
      CU_TRY(cudaGetLastError());
    }
  }
  return stream_end(g->pool, caller, err, errlen);
}

// SU [n_pad] and the output scales [m] again (after a fine-tuning step changed them)
extern "C" int e8q_cu_qlinear_set_scales(void *h, const float *SU, const float *out_scale, char *err, size_t errlen) {
  e8q_cu_qlinear *g = (e8q_cu_qlinear *)h;
  CU_TRY(cudaSetDevice(g->device));
  CU_TRY(cudaStreamSynchronize(g->pool->stream)); // no product still reads them
  CU_TRY(cudaMemcpy(g->SU, SU, sizeof(float) * g->n_pad, cudaMemcpyHostToDevice));
  CU_TRY(cudaMemcpy(g->out_scale, out_scale, sizeof(float) * g->m, cudaMemcpyHostToDevice));
  return 0;
}

// host pointers: copies in, runs, copies out, synchronises
extern "C" int e8q_cu_qlinear_forward_host(void *h, int batch, const float *x, float *y, char *err, size_t errlen) {
  e8q_cu_qlinear *g = (e8q_cu_qlinear *)h;
  const cudaStream_t st = g->pool->stream;
  if (batch <= 0) return 0;
  CU_TRY(cudaSetDevice(g->device));
  work w;
  if (work_get(g, batch, 1, &w, err, errlen)) return -1;
  CU_TRY(cudaMemcpyAsync(w.x, x, sizeof(float) * (size_t)batch * g->n, cudaMemcpyHostToDevice, st));
  if (forward_run(g, &w, batch, w.x, w.y, NULL, err, errlen)) return -1;
  CU_TRY(cudaMemcpyAsync(y, w.y, sizeof(float) * (size_t)batch * g->m, cudaMemcpyDeviceToHost, st));
  CU_TRY(cudaStreamSynchronize(st));
  return 0;
}
