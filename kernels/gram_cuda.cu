// kernels/gram_cuda.cu: the float32 -> float64 conversion in front of the Gram products of
// device activations (kernels/gram_gpu.h, e8q_gram_gpu_add_dev). The launcher owns the geometry.
#include <cuda_runtime.h>
#include <stdio.h>

__global__ void f32_to_f64_kernel(size_t n, const float *src, double *dst) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x)
    dst[k] = (double)src[k];
}

extern "C" int e8q_cu_f32_to_f64(size_t n, const float *src, double *dst, void *stream, char *err, size_t errlen) {
  if (n == 0) return 0;
  size_t blocks = (n + 255) / 256;
  f32_to_f64_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, (cudaStream_t)stream>>>(n, src, dst);
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return 0;
  snprintf(err, errlen, "f32_to_f64_kernel: %s", cudaGetErrorString(e));
  return -1;
}
