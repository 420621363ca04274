/* kernels/gram_gpu.c: Gram matrices on a CUDA device through cuBLAS DSYRK (kernels/gram_gpu.h). */
#include "kernels/gram_gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#ifdef E8Q_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda_libs.h"

/* kernels/gram_cuda.cu */
int e8q_cu_f32_to_f64(size_t n, const float *src, double *dst, void *stream, char *err, size_t errlen);

struct e8q_gram_gpu {
  int device, n;
  cublasHandle_t blas;
  cudaStream_t stream;
  double *G;  /* [n, n] device: the running sum (column-major upper = row-major lower triangle) */
  double *xd; /* [E8Q_GRAM_GPU_ROWS, n] device: one row block */
};

#define GRAM_CUDA(call)                                                                           \
  do {                                                                                            \
    cudaError_t e8q_ce_ = (call);                                                                 \
    E8Q_CHECK(e8q_ce_ == cudaSuccess, "GPU Gram matrix [%d x %d]: %s failed: %s", g->n, g->n, #call, \
              cudaGetErrorString(e8q_ce_));                                                       \
  } while (0)
#define GRAM_BLAS(call)                                                                          \
  do {                                                                                           \
    cublasStatus_t e8q_bs_ = (call);                                                             \
    E8Q_CHECK(e8q_bs_ == CUBLAS_STATUS_SUCCESS, "GPU Gram matrix [%d x %d]: %s failed: %s", g->n, g->n, #call, \
              cublasGetStatusString(e8q_bs_));                                                   \
  } while (0)
#endif

e8q_gram_gpu *e8q_gram_gpu_create(int device, int n, const char **why_not) {
  static _Thread_local char reason[256];
  if (why_not) *why_not = reason;
#ifdef E8Q_HAVE_CUDA
  int ndev = 0;
  cudaError_t ce = cudaGetDeviceCount(&ndev);
  if (ce != cudaSuccess || device < 0 || device >= ndev) {
    snprintf(reason, sizeof reason, "CUDA device %d not usable (%s)", device,
             ce != cudaSuccess ? cudaGetErrorString(ce) : "fewer devices");
    (void)cudaGetLastError();
    return NULL;
  }
  const char *lib_why = NULL;
  if (!e8q_cuda_libs_load(&lib_why)) {
    snprintf(reason, sizeof reason, "%s", lib_why);
    return NULL;
  }
  e8q_gram_gpu *g = e8q_calloc(1, sizeof *g, "GPU Gram matrix");
  g->device = device;
  g->n = n;
  const size_t nn = (size_t)n * n, nr = (size_t)E8Q_GRAM_GPU_ROWS * n;
  if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc((void **)&g->G, sizeof(double) * nn) != cudaSuccess ||
      cudaMalloc((void **)&g->xd, sizeof(double) * nr) != cudaSuccess || cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
    snprintf(reason, sizeof reason, "CUDA device %d: cannot set up a [%d x %d] float64 Gram matrix (%.1f MiB): %s",
             device, n, n, (double)(nn + nr) * 8 / (1 << 20), cudaGetErrorString(cudaGetLastError()));
    if (g->blas) cublasDestroy(g->blas);
    cudaFree(g->G);
    cudaFree(g->xd);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g);
    return NULL;
  }
  GRAM_BLAS(cublasSetStream(g->blas, g->stream));
  GRAM_CUDA(cudaMemsetAsync(g->G, 0, sizeof(double) * nn, g->stream));
  if (why_not) *why_not = NULL;
  return g;
#else
  (void)device;
  (void)n;
  snprintf(reason, sizeof reason, "e8q was built without CUDA");
  return NULL;
#endif
}

void e8q_gram_gpu_free(e8q_gram_gpu *g) {
  if (!g) return;
#ifdef E8Q_HAVE_CUDA
  cudaSetDevice(g->device);
  cublasDestroy(g->blas);
  cudaFree(g->G);
  cudaFree(g->xd);
  cudaStreamDestroy(g->stream);
#endif
  free(g);
}

void e8q_gram_gpu_add(e8q_gram_gpu *g, int rows, const float *x, double *xd) {
  E8Q_CHECK(g, "e8q_gram_gpu_add: no GPU Gram matrix (e8q_gram_gpu_create returned NULL: use the CPU path)");
#ifdef E8Q_HAVE_CUDA
  const int n = g->n;
  const double one = 1.0;
  GRAM_CUDA(cudaSetDevice(g->device));
  for (int r0 = 0; r0 < rows; r0 += E8Q_GRAM_GPU_ROWS) {
    const int k = rows - r0 < E8Q_GRAM_GPU_ROWS ? rows - r0 : E8Q_GRAM_GPU_ROWS;
    const size_t nk = (size_t)k * n;
    /* xd is reused: the previous block's upload must have left it */
    GRAM_CUDA(cudaStreamSynchronize(g->stream));
    for (size_t i = 0; i < nk; i++) xd[i] = x[(size_t)r0 * n + i];
    GRAM_CUDA(cudaMemcpyAsync(g->xd, xd, sizeof(double) * nk, cudaMemcpyHostToDevice, g->stream));
    /* row-major x [k, n] is column-major A [n, k]: G += A Aᵀ */
    GRAM_BLAS(cublasDsyrk(g->blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, n, k, &one, g->xd, n, &one, g->G, n));
  }
  GRAM_CUDA(cudaStreamSynchronize(g->stream));
#else
  (void)rows;
  (void)x;
  (void)xd;
#endif
}

void e8q_gram_gpu_add_dev(e8q_gram_gpu *g, int rows, const float *x_dev, void *stream) {
  E8Q_CHECK(g, "e8q_gram_gpu_add_dev: no GPU Gram matrix");
#ifdef E8Q_HAVE_CUDA
  const int n = g->n;
  const double one = 1.0;
  char err[256];
  GRAM_CUDA(cudaSetDevice(g->device));
  GRAM_CUDA(cudaStreamSynchronize((cudaStream_t)stream)); /* x is complete */
  for (int r0 = 0; r0 < rows; r0 += E8Q_GRAM_GPU_ROWS) {
    const int k = rows - r0 < E8Q_GRAM_GPU_ROWS ? rows - r0 : E8Q_GRAM_GPU_ROWS;
    /* g->xd is reused: the previous block's DSYRK is ordered before this conversion on g->stream */
    E8Q_CHECK(e8q_cu_f32_to_f64((size_t)k * n, x_dev + (size_t)r0 * n, g->xd, g->stream, err, sizeof err) == 0,
              "GPU Gram matrix [%d x %d]: %s", n, n, err);
    GRAM_BLAS(cublasDsyrk(g->blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, n, k, &one, g->xd, n, &one, g->G, n));
  }
  GRAM_CUDA(cudaStreamSynchronize(g->stream)); /* x may be overwritten after return */
#else
  (void)rows;
  (void)x_dev;
  (void)stream;
#endif
}

void e8q_gram_gpu_take(e8q_gram_gpu *g, double *G) {
  E8Q_CHECK(g, "e8q_gram_gpu_take: no GPU Gram matrix");
#ifdef E8Q_HAVE_CUDA
  const int n = g->n;
  GRAM_CUDA(cudaSetDevice(g->device));
  GRAM_CUDA(cudaMemcpyAsync(G, g->G, sizeof(double) * (size_t)n * n, cudaMemcpyDeviceToHost, g->stream));
  GRAM_CUDA(cudaMemsetAsync(g->G, 0, sizeof(double) * (size_t)n * n, g->stream));
  GRAM_CUDA(cudaStreamSynchronize(g->stream));
  /* column-major upper = row-major lower: mirror it up */
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) G[(size_t)i * n + j] = G[(size_t)j * n + i];
#else
  (void)G;
#endif
}
