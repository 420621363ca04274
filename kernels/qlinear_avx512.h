/* kernels/qlinear_avx512.h: the AVX-512 path of the quantized linear product (kernels/qlinear.h).
 *
 * Chosen at run time by e8q_qlinear_forward when the CPU has AVX-512 F/BW/VL/DQ/VBMI and GFNI
 * (e8q_cpu_has_avx512); E8Q_NO_AVX512=1 in the environment falls back to AVX2, E8Q_NO_AVX2=1
 * to the scalar _ref. Same contract as the AVX2 path: f32 in, f32 out, f32 accumulation. */
#ifndef E8Q_KERNELS_QLINEAR_AVX512_H
#define E8Q_KERNELS_QLINEAR_AVX512_H

#include "kernels/qlinear.h"

#ifdef __cplusplus
extern "C" {
#endif

int e8q_cpu_has_avx512(void); /* AVX-512 F, BW, VL, DQ, VBMI and GFNI present (cpuid) */
#if defined(__x86_64__) || defined(__i386__)
/* z[b, r] = Σ_k Ŵr[r, k] · u[b, k] (as e8q_qlinear_codes_matmul_ref); u: [batch, n_pad],
 * z: [batch, m]. Callers must check e8q_cpu_has_avx512() first. */
void e8q_qlinear_codes_matmul_avx512(const e8q_qlinear *q, int batch, const float *u, float *z);
/* the whole product through the AVX-512 core (fatal on CPUs without it) */
void e8q_qlinear_forward_avx512(const e8q_qlinear *q, int batch, const float *x, float *y);
#endif

#ifdef __cplusplus
}
#endif
#endif
