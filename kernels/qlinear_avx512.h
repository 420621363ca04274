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

/* ---------------------------------------------------------------- GF(2) helpers (host side)
 * For building and checking gf2p8affineqb matrices here and in qlinear_vnni.c. */
/* the 8x8 matrix whose output bit i is parity(x & rows[i]) (the instruction reads row i from
 * byte 7 - i) */
static inline uint64_t e8q_gf2_matrix(const uint8_t rows[8]) {
  uint64_t M = 0;
  for (int i = 0; i < 8; i++) M |= (uint64_t)rows[i] << (8 * (7 - i));
  return M;
}
/* what gf2p8affineqb computes for one byte x, matrix M and constant c */
static inline uint8_t e8q_gf2_affine(uint64_t M, uint8_t x, uint8_t c) {
  uint8_t r = 0;
  for (int i = 0; i < 8; i++) r |= (uint8_t)(e8q_parity8((uint32_t)((M >> (8 * (7 - i))) & x)) << i);
  return (uint8_t)(r ^ c);
}
/* the bits of an E8P sign byte B whose parity is the sign of element i: bit σ(i) of B, with bit
 * 0 flipped when parity(B) is odd (B_0 ^ parity(B) = B_1 ^ ... ^ B_7) */
static inline uint8_t e8q_e8p_sign_bits(int i) {
  const int s = e8q_e8p_sigma(i);
  return s == 0 ? (uint8_t)0xFE : (uint8_t)(1u << s);
}
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
