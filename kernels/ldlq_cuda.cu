// kernels/ldlq_cuda.cu: the buffered LDLQ on a CUDA device (C API: kernels/ldlq_gpu.h).
//
//   pass_kernel / tune_kernel  one thread per weight row, running kernels/ldlq_dev.h (the CPU's
//                              per-row arithmetic, host-tested bit for bit) over one buffer
//   diff_kernel                S = (W - What)[:, c0:c1] or D = W - What
//   feedback products          cuBLAS DGEMM per row tile of E8Q_LDLQ_ROW_TILE rows, the CPU's
//                              tiles and shapes, so any split of the rows at tile multiples gives
//                              the same bits (as on the CPU)
// The launcher owns the geometry; errors come back as text (the C side makes them fatal).
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda_libs.h"
#include "kernels/ldlq.h"
#include "kernels/ldlq_dev.h"

#define LDQ_THREADS 64 // rows per block: each thread holds a row's search state in local memory

struct e8q_cu_ldlq {
  int device;
  int64_t n;
  cublasHandle_t blas;
  cudaStream_t stream;
  e8q_e8p_enc_tables *T;      // device copy of the encoders' tables
  double *L, *H, *Hkk_inv;    // [n, n], [n, n], [n/8, 8, 8]
  int64_t cap;                // rows the buffers below hold
  double *W, *hat, *prod, *D; // [cap, n]
  double *S;                  // [cap, E8Q_LDLQ_BUF]
  uint16_t *c1, *c2;          // [cap, n/8]
};

static int ldq_err(cudaError_t e, const char *what, char *err, size_t errlen) {
  if (e == cudaSuccess) return 0;
  snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e));
  return -1;
}
static int ldq_blas(cublasStatus_t s, const char *what, char *err, size_t errlen) {
  if (s == CUBLAS_STATUS_SUCCESS) return 0;
  snprintf(err, errlen, "%s: %s", what, cublasGetStatusString(s));
  return -1;
}
#define LDQ_TRY(call)                                    \
  do {                                                   \
    if (ldq_err((call), #call, err, errlen)) return -1;  \
  } while (0)
#define LDQ_BLAS(call)                                   \
  do {                                                   \
    if (ldq_blas((call), #call, err, errlen)) return -1; \
  } while (0)

// ---------------------------------------------------------------- kernels
__global__ void pass_kernel(const e8q_e8p_enc_tables *T, int cb, int feedback, int64_t n, int64_t c0, int64_t c1,
                            const double *L, const double *W, const double *prod, double *hat, uint16_t *c1s,
                            uint16_t *c2s, int64_t rows) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  e8q_ldqdev_pass_row(T, cb, feedback, n, c0, c1, L, W + r * n, prod + r * n, hat + r * n, c1s + r * (n / 8),
                      c2s + r * (n / 8));
}

__global__ void tune_kernel(const e8q_e8p_enc_tables *T, int cb, int64_t n, int64_t c0, int64_t c1, const double *H,
                            const double *Hkk_inv, double *hat, double *D, double *S, uint16_t *c1s, uint16_t *c2s,
                            int64_t rows) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  e8q_ldqdev_tune_row(T, cb, n, c0, c1, H, Hkk_inv, hat + r * n, D + r * n, S + r * E8Q_LDLQ_BUF, c1s + r * (n / 8),
                      c2s + r * (n / 8));
}

// out[r, j] = W[r, c0 + j] - hat[r, c0 + j] for j < wdt (ld_out: E8Q_LDLQ_BUF or n)
__global__ void diff_kernel(int64_t rows, int64_t n, int64_t c0, int64_t wdt, const double *W, const double *hat,
                            double *out, int64_t ld_out) {
  const int64_t total = rows * wdt;
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / wdt, j = k % wdt;
    out[r * ld_out + j] = W[r * n + c0 + j] - hat[r * n + c0 + j];
  }
}

// ---------------------------------------------------------------- host side
static unsigned blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

static void bufs_free(e8q_cu_ldlq *g) {
  cudaFree(g->W), cudaFree(g->hat), cudaFree(g->prod), cudaFree(g->D), cudaFree(g->S), cudaFree(g->c1), cudaFree(g->c2);
  g->W = g->hat = g->prod = g->D = g->S = NULL;
  g->c1 = g->c2 = NULL;
  g->cap = 0;
}

extern "C" void e8q_cu_ldlq_free(void *h) {
  e8q_cu_ldlq *g = (e8q_cu_ldlq *)h;
  if (!g) return;
  cudaSetDevice(g->device);
  bufs_free(g);
  cudaFree(g->T), cudaFree(g->L), cudaFree(g->H), cudaFree(g->Hkk_inv);
  if (g->blas) cublasDestroy(g->blas);
  if (g->stream) cudaStreamDestroy(g->stream);
  delete g;
}

// uploads the tables and the factorisation (float64: L, H [n, n], Hkk_inv [n/8, 64])
extern "C" int e8q_cu_ldlq_create(int device, const e8q_e8p_enc_tables *T, int64_t n, const double *L, const double *H,
                                  const double *Hkk_inv, void **out, char *err, size_t errlen) {
  *out = NULL;
  e8q_cu_ldlq *g = new e8q_cu_ldlq();
  memset(g, 0, sizeof *g);
  g->device = device;
  g->n = n;
  int rc = ldq_err(cudaSetDevice(device), "cudaSetDevice", err, errlen);
  const size_t nn = sizeof(double) * (size_t)n * n, nk = sizeof(double) * (size_t)n * 8;
  if (!rc) rc = ldq_err(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking), "cudaStreamCreate", err, errlen);
  if (!rc) rc = ldq_blas(cublasCreate(&g->blas), "cublasCreate", err, errlen);
  if (!rc) rc = ldq_blas(cublasSetStream(g->blas, g->stream), "cublasSetStream", err, errlen);
  if (!rc) rc = ldq_err(cudaMalloc((void **)&g->T, sizeof *T), "cudaMalloc(tables)", err, errlen);
  if (!rc) rc = ldq_err(cudaMalloc((void **)&g->L, nn), "cudaMalloc(L)", err, errlen);
  if (!rc) rc = ldq_err(cudaMalloc((void **)&g->H, nn), "cudaMalloc(H)", err, errlen);
  if (!rc) rc = ldq_err(cudaMalloc((void **)&g->Hkk_inv, nk), "cudaMalloc(Hkk_inv)", err, errlen);
  if (!rc) rc = ldq_err(cudaMemcpy(g->T, T, sizeof *T, cudaMemcpyHostToDevice), "upload tables", err, errlen);
  if (!rc) rc = ldq_err(cudaMemcpy(g->L, L, nn, cudaMemcpyHostToDevice), "upload L", err, errlen);
  if (!rc) rc = ldq_err(cudaMemcpy(g->H, H, nn, cudaMemcpyHostToDevice), "upload H", err, errlen);
  if (!rc) rc = ldq_err(cudaMemcpy(g->Hkk_inv, Hkk_inv, nk, cudaMemcpyHostToDevice), "upload Hkk_inv", err, errlen);
  if (rc) {
    e8q_cu_ldlq_free(g);
    return -1;
  }
  *out = g;
  return 0;
}

static int bufs_ensure(e8q_cu_ldlq *g, int64_t rows, char *err, size_t errlen) {
  if (g->cap >= rows) return 0;
  bufs_free(g);
  const size_t rn = sizeof(double) * (size_t)rows * g->n, rc = sizeof(uint16_t) * (size_t)rows * (g->n / 8);
  LDQ_TRY(cudaMalloc((void **)&g->W, rn));
  LDQ_TRY(cudaMalloc((void **)&g->hat, rn));
  LDQ_TRY(cudaMalloc((void **)&g->prod, rn));
  LDQ_TRY(cudaMalloc((void **)&g->D, rn));
  LDQ_TRY(cudaMalloc((void **)&g->S, sizeof(double) * (size_t)rows * E8Q_LDLQ_BUF));
  LDQ_TRY(cudaMalloc((void **)&g->c1, rc));
  LDQ_TRY(cudaMalloc((void **)&g->c2, rc));
  g->cap = rows;
  return 0;
}

// W [rows, n] host (rows in tiles of E8Q_LDLQ_ROW_TILE from the first); c1s, c2s [rows, n/8] host
// (u16 second codes for every codebook); What [rows, n] host
extern "C" int e8q_cu_ldlq_rows(void *h, int cb, int feedback, int tune_iters, const double *W, int64_t rows,
                                uint16_t *c1s, uint16_t *c2s, double *What, char *err, size_t errlen) {
  e8q_cu_ldlq *g = (e8q_cu_ldlq *)h;
  const int64_t n = g->n, BUF = E8Q_LDLQ_BUF, TL = E8Q_LDLQ_ROW_TILE;
  const double one = 1.0, zero = 0.0;
  if (rows <= 0) return 0;
  LDQ_TRY(cudaSetDevice(g->device));
  if (bufs_ensure(g, rows, err, errlen)) return -1;
  const cudaStream_t st = g->stream;
  const size_t rn = sizeof(double) * (size_t)rows * n;
  LDQ_TRY(cudaMemcpyAsync(g->W, W, rn, cudaMemcpyHostToDevice, st));
  LDQ_TRY(cudaMemsetAsync(g->hat, 0, rn, st));
  LDQ_TRY(cudaMemsetAsync(g->prod, 0, rn, st));
  const unsigned rb = blocks_for(rows, LDQ_THREADS);
  for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
    c0 = c1 - BUF > 0 ? c1 - BUF : 0;
    pass_kernel<<<rb, LDQ_THREADS, 0, st>>>(g->T, cb, feedback, n, c0, c1, g->L, g->W, g->prod, g->hat, g->c1, g->c2,
                                            rows);
    LDQ_TRY(cudaGetLastError());
    if (!feedback || c0 == 0) continue;
    const int64_t wdt = c1 - c0;
    diff_kernel<<<blocks_for(rows * wdt, 256), 256, 0, st>>>(rows, n, c0, wdt, g->W, g->hat, g->S, BUF);
    LDQ_TRY(cudaGetLastError());
    // per tile, row-major prod[tile, 0:c0] += S[tile, 0:wdt] L[c0:c1, 0:c0] (column-major: the transposes)
    for (int64_t a = 0; a < rows; a += TL) {
      const int64_t mt = rows - a < TL ? rows - a : TL;
      LDQ_BLAS(cublasDgemm(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)c0, (int)mt, (int)wdt, &one, g->L + c0 * n, (int)n,
                           g->S + a * BUF, (int)BUF, &one, g->prod + a * n, (int)n));
    }
  }
  for (int it = 0; feedback && it < tune_iters; it++) {
    diff_kernel<<<blocks_for(rows * n, 256), 256, 0, st>>>(rows, n, 0, n, g->W, g->hat, g->D, n);
    LDQ_TRY(cudaGetLastError());
    for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
      c0 = c1 - BUF > 0 ? c1 - BUF : 0;
      // per tile, row-major S[tile, 0:wdt] = D[tile, :] H[:, c0:c1]
      for (int64_t a = 0; a < rows; a += TL) {
        const int64_t mt = rows - a < TL ? rows - a : TL;
        LDQ_BLAS(cublasDgemm(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)(c1 - c0), (int)mt, (int)n, &one, g->H + c0,
                             (int)n, g->D + a * n, (int)n, &zero, g->S + a * BUF, (int)BUF));
      }
      tune_kernel<<<rb, LDQ_THREADS, 0, st>>>(g->T, cb, n, c0, c1, g->H, g->Hkk_inv, g->hat, g->D, g->S, g->c1, g->c2,
                                              rows);
      LDQ_TRY(cudaGetLastError());
    }
  }
  const size_t rc = sizeof(uint16_t) * (size_t)rows * (n / 8);
  LDQ_TRY(cudaMemcpyAsync(c1s, g->c1, rc, cudaMemcpyDeviceToHost, st));
  LDQ_TRY(cudaMemcpyAsync(c2s, g->c2, rc, cudaMemcpyDeviceToHost, st));
  LDQ_TRY(cudaMemcpyAsync(What, g->hat, rn, cudaMemcpyDeviceToHost, st));
  LDQ_TRY(cudaStreamSynchronize(st));
  return 0;
}
