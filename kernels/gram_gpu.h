/* kernels/gram_gpu.h: Gram matrices G = sum xᵀx on a CUDA device, for the Hessians of
 * --device cuda (worker/hessian.c), with a clean CPU fallback.
 *
 *   e8q_gram_gpu *g = e8q_gram_gpu_create(device, n, &why);  // NULL (and why): use the CPU
 *   e8q_gram_gpu_add(g, rows, x, xd);   // device sum += xᵀx, x [rows, n] f32 on the host
 *   e8q_gram_gpu_take(g, G);            // G [n, n] (host, full, symmetric) = device sum; sum = 0
 *
 * Arithmetic (the choice the GPU issue asks to state): the host converts x to float64 (exact)
 * and cuBLAS DSYRK multiplies and adds in float64, the CPU path's arithmetic (cblas_dsyrk on the
 * same row blocks of E8Q_GRAM_GPU_ROWS); only the order of the additions is cuBLAS's, so each
 * entry agrees with the float64 sum to a relative ~n_tokens * 2^-53 (tests/quant/test_quantize_gpu
 * holds it to 1e-12 against e8q_hessian_gram_ref). TF32/FP32 products were not chosen: they
 * lose the low bits of the products that DESIGN §3's float64 Hessians keep.
 * Device memory: n*n doubles for the sum plus E8Q_GRAM_GPU_ROWS*n for one row block.
 * CUDA/cuBLAS errors after create are fatal, naming the call and the shape. */
#ifndef E8Q_KERNELS_GRAM_GPU_H
#define E8Q_KERNELS_GRAM_GPU_H

#define E8Q_GRAM_GPU_ROWS 256 /* tokens uploaded per DSYRK */

typedef struct e8q_gram_gpu e8q_gram_gpu;

/* NULL with *why_not (a thread-local text valid until the next call) when e8q was built without
 * CUDA, the device is not usable or memory is short; never aborts for those */
e8q_gram_gpu *e8q_gram_gpu_create(int device, int n, const char **why_not);
void e8q_gram_gpu_free(e8q_gram_gpu *g); /* NULL is a no-op */
/* x [rows, n] f32 (host); xd [E8Q_GRAM_GPU_ROWS * n] f64 host scratch */
void e8q_gram_gpu_add(e8q_gram_gpu *g, int rows, const float *x, double *xd);
/* the same for x [rows, n] f32 on g's device (a block's activations, kernels/transformer_gpu.h),
 * ready once `stream` (a cudaStream_t) has run to here: converted to float64 on the device */
void e8q_gram_gpu_add_dev(e8q_gram_gpu *g, int rows, const float *x_dev, void *stream);
/* G [n, n] host, overwritten with the full symmetric sum; the device sum is reset to 0 */
void e8q_gram_gpu_take(e8q_gram_gpu *g, double *G);

#endif
