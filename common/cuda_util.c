/* common/cuda_util.c: CUDA presence checks (see cuda_util.h). */
#include "common/cuda_util.h"

#include <stddef.h>
#include <stdio.h>
#ifdef E8Q_HAVE_CUDA
#include <cuda_runtime.h>
#endif

const char *e8q_cuda_unavailable_reason(void) {
#ifdef E8Q_HAVE_CUDA
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); /* clear the sticky error so later calls start clean */
    return cudaGetErrorString(e);
  }
  return n > 0 ? NULL : "0 CUDA devices";
#else
  return "e8q was built without CUDA";
#endif
}

int e8q_cuda_device_count(void) {
#ifdef E8Q_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

void e8q_cuda_device_name(int device, char *buf, size_t n) {
  snprintf(buf, n, "?");
#ifdef E8Q_HAVE_CUDA
  struct cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) == cudaSuccess)
    snprintf(buf, n, "%s", p.name);
  else
    (void)cudaGetLastError();
#else
  (void)device;
#endif
}
