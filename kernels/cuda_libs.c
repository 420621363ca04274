/* kernels/cuda_libs.c: cuBLAS and cuSOLVER loaded at run time (kernels/cuda_libs.h). */
#ifdef E8Q_HAVE_CUDA
#include "kernels/cuda_libs.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "common/error.h"

#ifndef E8Q_CUDA_LIBDIR
#define E8Q_CUDA_LIBDIR ""
#endif

static e8q_cuda_libs_api g_api;
static int g_ok;
static char g_why[512];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* the first of the names that loads, searched as dlopen does, then in the toolkit's directory */
static void *open_one(const char *const *names, char *tried, size_t cap) {
  for (int i = 0; names[i]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", E8Q_CUDA_LIBDIR, names[i]);
    if (E8Q_CUDA_LIBDIR[0] && (h = dlopen(path, RTLD_NOW | RTLD_LOCAL))) return h;
    snprintf(tried, cap, "%s (%s)", names[i], dlerror());
  }
  return NULL;
}

#define SYM(lib, field, name)                                              \
  do {                                                                     \
    *(void **)&g_api.field = dlsym(lib, name);                             \
    if (!g_api.field) {                                                    \
      snprintf(g_why, sizeof g_why, "%s has no entry point %s", #lib, name); \
      return;                                                              \
    }                                                                      \
  } while (0)

static void load(void) {
  static const char *const blas_names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so", NULL};
  static const char *const solver_names[] = {"libcusolver.so.12", "libcusolver.so.11", "libcusolver.so", NULL};
  char tried[256] = "";
  void *cublas = open_one(blas_names, tried, sizeof tried);
  if (!cublas) {
    snprintf(g_why, sizeof g_why, "cuBLAS could not be loaded: %s", tried);
    return;
  }
  void *cusolver = open_one(solver_names, tried, sizeof tried);
  if (!cusolver) {
    snprintf(g_why, sizeof g_why, "cuSOLVER could not be loaded: %s", tried);
    return;
  }
  SYM(cublas, create, "cublasCreate_v2");
  SYM(cublas, destroy, "cublasDestroy_v2");
  SYM(cublas, set_stream, "cublasSetStream_v2");
  SYM(cublas, set_math_mode, "cublasSetMathMode");
  SYM(cublas, status_string, "cublasGetStatusString");
  SYM(cublas, dsyrk, "cublasDsyrk_v2");
  SYM(cublas, dgemm, "cublasDgemm_v2");
  SYM(cublas, sgemm, "cublasSgemm_v2");
  SYM(cusolver, dn_create, "cusolverDnCreate");
  SYM(cusolver, dn_destroy, "cusolverDnDestroy");
  SYM(cusolver, dpotrf_buffer_size, "cusolverDnDpotrf_bufferSize");
  SYM(cusolver, dpotrf, "cusolverDnDpotrf");
  g_ok = 1;
}

int e8q_cuda_libs_load(const char **why_not) {
  pthread_once(&g_once, load);
  if (why_not) *why_not = g_ok ? NULL : g_why;
  return g_ok;
}

const e8q_cuda_libs_api *e8q_cuda_libs(void) {
  const char *why = NULL;
  E8Q_CHECK(e8q_cuda_libs_load(&why), "GPU path: %s; install the CUDA toolkit's libraries or run with --device cpu",
            why);
  return &g_api;
}
#endif
