/* worker/cholesky_gpu.c: the Cholesky of a Hessian on a CUDA device through cuSOLVER
 * (worker/cholesky.h; --device cuda). */
#include "worker/cholesky.h"

#include <stddef.h>

#include "common/device.h"
#include "common/error.h"

#ifdef E8Q_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda_libs.h"

#define CHOL_CUDA(call)                                                                                  \
  do {                                                                                                   \
    cudaError_t e8q_ce_ = (call);                                                                        \
    E8Q_CHECK(e8q_ce_ == cudaSuccess, "cuSOLVER Cholesky [%d x %d] on CUDA device %d: %s failed: %s", n, n, device, \
              #call, cudaGetErrorString(e8q_ce_));                                                       \
  } while (0)
#define CHOL_SOLVER(call)                                                                                \
  do {                                                                                                   \
    cusolverStatus_t e8q_cs_ = (call);                                                                   \
    E8Q_CHECK(e8q_cs_ == CUSOLVER_STATUS_SUCCESS, "cuSOLVER Cholesky [%d x %d] on CUDA device %d: %s failed (status %d)", \
              n, n, device, #call, (int)e8q_cs_);                                                        \
  } while (0)
#endif

int e8q_cholesky_cusolver_on(int device, int n, double *A) {
#ifdef E8Q_HAVE_CUDA
  cusolverDnHandle_t h = NULL;
  double *dA = NULL, *work = NULL;
  int *dinfo = NULL, lwork = 0, info = 0;
  const size_t bytes = sizeof(double) * (size_t)n * n;
  CHOL_CUDA(cudaSetDevice(device));
  CHOL_SOLVER(cusolverDnCreate(&h));
  CHOL_CUDA(cudaMalloc((void **)&dA, bytes));
  CHOL_CUDA(cudaMalloc((void **)&dinfo, sizeof(int)));
  CHOL_CUDA(cudaMemcpy(dA, A, bytes, cudaMemcpyHostToDevice));
  /* row-major A is column-major Aᵀ = A: the column-major upper factor U (A = Uᵀ U) read back
   * row-major is the lower factor L = Uᵀ (A = L Lᵀ); the other triangle is left as it was */
  CHOL_SOLVER(cusolverDnDpotrf_bufferSize(h, CUBLAS_FILL_MODE_UPPER, n, dA, n, &lwork));
  CHOL_CUDA(cudaMalloc((void **)&work, sizeof(double) * (size_t)(lwork > 0 ? lwork : 1)));
  CHOL_SOLVER(cusolverDnDpotrf(h, CUBLAS_FILL_MODE_UPPER, n, dA, n, work, lwork, dinfo));
  CHOL_CUDA(cudaMemcpy(&info, dinfo, sizeof(int), cudaMemcpyDeviceToHost));
  if (info == 0) CHOL_CUDA(cudaMemcpy(A, dA, bytes, cudaMemcpyDeviceToHost));
  cudaFree(work);
  cudaFree(dinfo);
  cudaFree(dA);
  cusolverDnDestroy(h);
  return info; /* LAPACK's convention: > 0, the order of the leading minor that is not positive definite */
#else
  (void)n;
  (void)A;
  E8Q_FATAL("cuSOLVER Cholesky on CUDA device %d: e8q was built without CUDA", device);
#endif
}

int e8q_cholesky_cusolver(int n, double *A) {
  const int device = e8q_device_cuda();
  E8Q_CHECK(device >= 0, "cuSOLVER Cholesky [%d x %d]: this rank has no CUDA device (--device)", n, n);
  return e8q_cholesky_cusolver_on(device, n, A);
}
