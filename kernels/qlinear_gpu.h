/* kernels/qlinear_gpu.h: the quantized linear on a CUDA device, with a clean CPU fallback.
 *
 *   e8q_qlinear_gpu *g = e8q_qlinear_gpu_create(&q, device, &why);   // NULL: use the CPU
 *   e8q_qlinear_forward_gpu(&q, g, batch, x, y);   // GPU when g, else e8q_qlinear_forward
 *
 * create returns NULL (and a reason in *why_not, a thread-local buffer valid until the next call) when e8q was built
 * without CUDA, no device is usable, or the shape is not supported by the kernels (both
 * Hadamard vectors must fit in one block's shared memory); it never aborts for those. CUDA
 * errors during a forward are fatal (message names the layer's shape and the CUDA error).
 * Kernels and their expected H100 performance: kernels/qlinear_cuda.cu, bench/README.md. */
#ifndef E8Q_KERNELS_QLINEAR_GPU_H
#define E8Q_KERNELS_QLINEAR_GPU_H

#include "kernels/qlinear.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct e8q_qlinear_gpu e8q_qlinear_gpu;

/* uploads q's codes, scales and factors to `device`; q must stay alive while g is used */
e8q_qlinear_gpu *e8q_qlinear_gpu_create(const e8q_qlinear *q, int device, const char **why_not);
void e8q_qlinear_gpu_free(e8q_qlinear_gpu *g);
int e8q_qlinear_gpu_device(const e8q_qlinear_gpu *g); /* the CUDA device it was uploaded to */
/* host buffers x [batch, n] -> y [batch, m]; g NULL runs e8q_qlinear_forward on the CPU */
void e8q_qlinear_forward_gpu(const e8q_qlinear *q, e8q_qlinear_gpu *g, int batch, const float *x, float *y);
/* device buffers, asynchronous on stream (a cudaStream_t; NULL = the device's shared stream).
 * Every layer on a device shares one stream and one set of work buffers (grown to the largest
 * product seen; kernels/qlinear_cuda.cu): the kernels run on that stream, ordered after and
 * before the caller's by events, so calls from several streams serialise on the buffers, and a
 * model of hundreds of layers holds one set of buffers, not one per layer. */
void e8q_qlinear_forward_gpu_dev(e8q_qlinear_gpu *g, int batch, const float *x, float *y, void *stream);

/* ---------------------------------------------------------------- fine-tuning (device buffers)
 * The backward of kernels/qlinear_grad.h on the device, the codes frozen (fuse scales are not
 * trained here: no dfs). The same chain and the same float64 sums over the batch in batch order
 * for dSU and dSV; the transpose product Ŵrᵀ dz sums rows in order within fixed chunks of rows
 * and the chunks in order (kernels/qlinear_cuda_dev.h: e8q_qdev_t_chunks depends on the shape
 * and batch only), so results are deterministic and independent of the device; they differ
 * from the CPU paths by float32 rounding (tests/fused/test_qlinear_cuda_host.cu: 1e-5). */
/* y [batch, m] and zk [batch, m] = the output before the per-row scales (e8q_qlinear_forward_keep's
 * z), for e8q_qlinear_backward_gpu_dev; x, y, zk device buffers, asynchronous on stream */
void e8q_qlinear_forward_keep_gpu_dev(e8q_qlinear_gpu *g, int batch, const float *x, float *y, float *zk, void *stream);
/* x [batch, n] and zk [batch, m] of the forward, dy [batch, m]: dx [batch, n] written (or NULL),
 * dSU [n] and dSV [m] ACCUMULATED (+=, or NULL; dSV needs zk); device buffers, on stream */
void e8q_qlinear_backward_gpu_dev(e8q_qlinear_gpu *g, int batch, const float *x, const float *zk, const float *dy,
                                  float *dx, float *dSU, float *dSV, void *stream);
/* after q's SU or output scales changed (e8q_qlinear_set_scales): uploads them again (waits for
 * the layer's pending products first) */
void e8q_qlinear_gpu_set_scales(e8q_qlinear_gpu *g, const e8q_qlinear *q);

#ifdef __cplusplus
}
#endif
#endif
