/* kernels/matvec_f16.h: y = W x for a float16 or bfloat16 matrix read in place (a model's head or
 * tied embedding as stored, a dense bf16 linear: half the bytes of the float32 copy, and a decode
 * step reads all of it).
 *
 * The float16 values convert exactly to float32 (F16C / AVX-512 conversions), so the products
 * are those of the float32 copy; only the order of the additions differs from BLAS sgemv (four
 * 16-lane accumulators per row, a final lane sum). OpenMP over row blocks. Paths: AVX-512F, AVX2 with
 * F16C and FMA, scalar; the `_ref` is plain loops in double. */
#ifndef E8Q_KERNELS_MATVEC_F16_H
#define E8Q_KERNELS_MATVEC_F16_H

#include <stdint.h>

/* W [m, n] float16 bits (any 2-byte alignment), x [n], y [m] */
void e8q_matvec_f16(int m, int n, const uint16_t *W, const float *x, float *y);
void e8q_matvec_f16_ref(int m, int n, const uint16_t *W, const float *x, float *y);

/* The same for bfloat16 bits, W [m, n] (any 2-byte alignment), x [n], y [m]. bfloat16 -> float32
 * is a 16-bit shift, exact, and the arithmetic is that of the float16 kernel (convert, f32 FMA,
 * the same accumulators and paths), so the products are those of the float32 copy. AVX512-BF16
 * (vdpbf16ps) is not used: it would round x to bfloat16 and change the results. */
void e8q_matvec_bf16(int m, int n, const uint16_t *W, const float *x, float *y);
void e8q_matvec_bf16_ref(int m, int n, const uint16_t *W, const float *x, float *y);
/* e8q_matvec_bf16 through one path, for tests: 2 AVX-512F, 1 AVX2+FMA, 0 scalar. Returns 0
 * without writing y when this CPU lacks that path, 1 when done. */
int e8q_matvec_bf16_path(int path, int m, int n, const uint16_t *W, const float *x, float *y);

#endif
