/* worker/linear.h: the one entry point for every weight product of the forward pass.
 *
 * y = x Wᵀ for a batch of T input rows. Dense linears (L->w set) go through cblas_sgemv/sgemm.
 * Quantized linears (L->w NULL, L->q an e8q_qlinear) are decoded on the fly by the fused kernels
 * (e8q_qlinear_forward, kernels/qlinear.h), or by the CUDA ones when L->gpu is set
 * (e8q_qlinear_forward_gpu, kernels/qlinear_gpu.h): this is the single place where they plug in; a
 * quantized form of another shape, or a linear with neither form, is refused with a message.
 *
 * Dense bfloat16 (L->w NULL, L->w_bf16 set: the weight as bf16 bits [m, n], read in place, half the
 * bytes of float32): T == 1 runs e8q_matvec_bf16 (kernels/matvec_f16.h); T > 1 converts panels of
 * 256 rows to float32 (exact) and multiplies each with cblas_sgemm, so every product is that of the
 * float32 copy and only the order of the additions differs. */
#ifndef E8Q_WORKER_LINEAR_H
#define E8Q_WORKER_LINEAR_H

#include "shard/model.h"

void e8q_linear_forward(const e8q_linear *L, int T, const float *x /* [T, n] */, float *y /* [T, m] */);
/* the same; for a quantized linear z [T, m] (may be NULL) also gets its output before the output
 * scales (e8q_qlinear_forward_keep), which the training backward reuses; a dense one ignores z */
void e8q_linear_forward_keep(const e8q_linear *L, int T, const float *x, float *y, float *z);
/* plain loops in double accumulation, dense only (float32 or bfloat16): the reference for tests */
void e8q_linear_forward_ref(const e8q_linear *L, int T, const float *x /* [T, n] */, float *y /* [T, m] */);

#endif
