/* kernels/matvec_f16.h: y = W x for a float16 matrix read in place (a model's head or tied
 * embedding as stored: half the bytes of its float32 copy, and a decode step reads all of it).
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

#endif
