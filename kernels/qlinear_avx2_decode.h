/* kernels/qlinear_avx2_decode.h: the AVX2 decode tables shared by the forward core
 * (kernels/qlinear_avx2.c), the backward's transpose product (kernels/qlinear_grad_avx2.c)
 * and the AMX core's weight tiles (kernels/qlinear_amx.c). Private to those files (x86 only,
 * included after <immintrin.h>).
 *
 *   e8q_avx2_e8p_q4   [E8Q_E8P_NCODES][8] int8: 4 · E8P(c), 512 KiB (L2 resident)
 *   e8q_avx2_e81b_h2  [E8Q_E81B_SIZE][8] int8: 2 · E81B(i) (RVQ3's second stage)
 * One copy, defined and built in qlinear_avx2.c (e8q_avx2_tables_init, once per process). */
#ifndef E8Q_KERNELS_QLINEAR_AVX2_DECODE_H
#define E8Q_KERNELS_QLINEAR_AVX2_DECODE_H

#include <immintrin.h>
#include <stdint.h>

#include "kernels/codebook.h"

#define AVX2 __attribute__((target("avx2,fma")))

/* ---------------------------------------------------------------- decode tables */
extern int8_t e8q_avx2_e8p_q4[E8Q_E8P_NCODES][8]; /* 4 * E8P(c) */
extern int8_t e8q_avx2_e81b_h2[E8Q_E81B_SIZE][8]; /* 2 * E81B(i) */
/* builds the tables once per process (pthread_once); call before any decode */
void e8q_avx2_tables_init(void);

/* 8 int8 table values as 8 floats (exact) */
static AVX2 __attribute__((always_inline)) inline __m256 ld_i8(const int8_t *p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

#endif
