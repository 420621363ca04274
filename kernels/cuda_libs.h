/* kernels/cuda_libs.h: cuBLAS and cuSOLVER, loaded at run time (dlopen) by the GPU paths that use
 * them, never linked: linked, their relocation alone costs every process ~190 MB of resident
 * memory (measured: cuBLAS 154 MB, cuSOLVER 32 MB), CPU runs included.
 *
 *   if (!e8q_cuda_libs_load(&why)) ... fall back to the CPU, saying why
 *   cublasCreate(&h);   // the usual names: macros over the loaded entry points below
 *
 * Include this header instead of cublas_v2.h / cusolverDn.h. Compiled only with E8Q_HAVE_CUDA. */
#ifndef E8Q_KERNELS_CUDA_LIBS_H
#define E8Q_KERNELS_CUDA_LIBS_H

#include <cublas_v2.h>
#include <cusolverDn.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  cublasStatus_t (*create)(cublasHandle_t *);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
  const char *(*status_string)(cublasStatus_t);
  cublasStatus_t (*dsyrk)(cublasHandle_t, cublasFillMode_t, cublasOperation_t, int, int, const double *, const double *,
                          int, const double *, double *, int);
  cublasStatus_t (*dgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const double *,
                          const double *, int, const double *, int, const double *, double *, int);
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float *,
                          const float *, int, const float *, int, const float *, float *, int);
  cusolverStatus_t (*dn_create)(cusolverDnHandle_t *);
  cusolverStatus_t (*dn_destroy)(cusolverDnHandle_t);
  cusolverStatus_t (*dpotrf_buffer_size)(cusolverDnHandle_t, cublasFillMode_t, int, double *, int, int *);
  cusolverStatus_t (*dpotrf)(cusolverDnHandle_t, cublasFillMode_t, int, double *, int, double *, int, int *);
} e8q_cuda_libs_api;

/* 1 when both libraries and every entry point were found (loaded once, thread-safe); else 0 and
 * *why_not (a static text: the library names tried and dlerror's) */
int e8q_cuda_libs_load(const char **why_not);
/* the entry points; fatal, naming the libraries, when e8q_cuda_libs_load failed */
const e8q_cuda_libs_api *e8q_cuda_libs(void);

#ifdef __cplusplus
}
#endif

#undef cublasCreate
#undef cublasDestroy
#undef cublasSetStream
#undef cublasDsyrk
#undef cublasDgemm
#undef cublasSgemm
#define cublasCreate (e8q_cuda_libs()->create)
#define cublasDestroy (e8q_cuda_libs()->destroy)
#define cublasSetStream (e8q_cuda_libs()->set_stream)
#define cublasSetMathMode (e8q_cuda_libs()->set_math_mode)
#define cublasGetStatusString (e8q_cuda_libs()->status_string)
#define cublasDsyrk (e8q_cuda_libs()->dsyrk)
#define cublasDgemm (e8q_cuda_libs()->dgemm)
#define cublasSgemm (e8q_cuda_libs()->sgemm)
#define cusolverDnCreate (e8q_cuda_libs()->dn_create)
#define cusolverDnDestroy (e8q_cuda_libs()->dn_destroy)
#define cusolverDnDpotrf_bufferSize (e8q_cuda_libs()->dpotrf_buffer_size)
#define cusolverDnDpotrf (e8q_cuda_libs()->dpotrf)

#endif
