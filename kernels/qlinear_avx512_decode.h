/* kernels/qlinear_avx512_decode.h: the AVX-512 decoding of E8P / 1-bit E8 codes shared by the
 * forward core (kernels/qlinear_avx512.c) and the backward's transpose product
 * (kernels/qlinear_grad_avx512.c). Private to those two files (x86 only, included after
 * <immintrin.h>): the functions carry the AVX-512 target attribute and are always inlined.
 *
 *   tables       signed-abs rows [E8Q_E8P_ROWS][8], the 1-bit E8 grid [E8Q_E81B_SIZE][8] and the
 *                GF(2) matrices (B -> element-order signs, B -> parity in all bits); one copy,
 *                defined and built in qlinear_avx512.c (e8q_avx512_tables_init, once per process,
 *                checked against codebook.h for every code)
 *   e8p_unpack   32 codes' abs-row byte offsets, sign bytes, parity bits (and parity masks)
 *   e8p_pair     two codes in one 16-float register without the shift; e8p_pair_m with it folded
 *                in, less the +1/4 every code has
 * See qlinear_avx512.c for the decomposition w[i] = ±abs[A][i] + (p ? -1/4 : +1/4). */
#ifndef E8Q_KERNELS_QLINEAR_AVX512_DECODE_H
#define E8Q_KERNELS_QLINEAR_AVX512_DECODE_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/codebook.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,gfni")))
#define INLINE __attribute__((always_inline)) inline
#define CH 32 /* codes per unpacked chunk */

/* ---------------------------------------------------------------- tables */
extern float e8q_avx512_abs_tab[E8Q_E8P_ROWS][8];   /* signed-abs rows */
extern float e8q_avx512_e81b_tab[E8Q_E81B_SIZE][8]; /* 1-bit E8 grid values */
extern uint64_t e8q_avx512_gf_sign, e8q_avx512_gf_par; /* GF(2) 8x8 matrices */
/* builds the tables once per process (pthread_once); call before any decode */
void e8q_avx512_tables_init(void);

/* ---------------------------------------------------------------- unpacking 32 codes */
typedef struct {
  uint16_t off[CH]; /* [CH] byte offset of the abs row (A * 32) */
  uint8_t sgn[CH];  /* [CH] element-order sign bits */
  uint8_t pm[CH];   /* [CH] 0xFF where the code's parity is odd (shift -1/4), else 0 (batch path) */
  uint32_t par;     /* bit k: parity of code k (shift -1/4) */
} __attribute__((aligned(64))) e8p_chunk;

typedef struct {
  uint16_t off[CH]; /* [CH] byte offset of the 1-bit E8 row (index * 32) */
} __attribute__((aligned(64))) e81b_chunk;

static AVX512 INLINE void e8p_unpack(const uint16_t *c, int cnt, e8p_chunk *o, const int want_pm) {
  const __mmask32 lm = cnt >= CH ? 0xFFFFFFFFu : (1u << cnt) - 1;
  const __m512i v = _mm512_maskz_loadu_epi16(lm, c);
  const __m512i s = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64((long long)e8q_avx512_gf_sign), 0);
  const __m512i pb = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64((long long)e8q_avx512_gf_par), 0);
  o->par = _mm512_test_epi16_mask(pb, _mm512_set1_epi16(0x00FF));
  if (want_pm) _mm256_store_si256((__m256i *)o->pm, _mm256_movm_epi8(o->par));
  _mm512_store_si512(o->off, _mm512_slli_epi16(_mm512_srli_epi16(v, 8), 5));
  const __m512i even = _mm512_set_epi8(
      63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17,
      15, 13, 11, 9, 7, 5, 3, 1, 62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30,
      28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  _mm256_store_si256((__m256i *)o->sgn, _mm512_castsi512_si256(_mm512_permutexvar_epi8(even, s)));
}

static AVX512 INLINE void e81b_unpack(const uint8_t *c, int cnt, e81b_chunk *o) {
  const __mmask32 lm = cnt >= CH ? 0xFFFFFFFFu : (1u << cnt) - 1;
  _mm512_store_si512(o->off, _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(lm, c)), 5));
}

/* two rows of a table (byte offsets packed in o) in one register: row lo | row hi */
static AVX512 INLINE __m512 rows2(const char *tab, uint32_t o) {
  __m512 w = _mm512_castps256_ps512(_mm256_load_ps((const float *)(tab + (o & 0xFFFFu))));
  return _mm512_insertf32x8(w, _mm256_load_ps((const float *)(tab + (o >> 16))), 1);
}

/* codes 2p, 2p+1 of an unpacked chunk, without the shift */
static AVX512 INLINE __m512 e8p_pair(const e8p_chunk *c, int p) {
  uint32_t o;
  memcpy(&o, c->off + 2 * p, 4);
  __m512 w = rows2((const char *)e8q_avx512_abs_tab, o);
  /* written out so the mask comes straight from memory (kmovw k, m16: a load, no port-5 uop)
   * and the XOR goes into w in place (GCC otherwise adds a GPR->mask move and a copy) */
  __mmask16 k;
  __asm__("kmovw %1, %0" : "=Yk"(k) : "m"(*(const uint16_t *)(const void *)(c->sgn + 2 * p)));
  __asm__("vpxord %2, %0, %0%{%1%}" : "+v"(w) : "Yk"(k), "v"(_mm512_set1_epi32((int)0x80000000u)));
  return w;
}

/* the same with the shift folded in, less the +1/4 every code has (added back once per output
 * as Σ x / 4): w - 1/4 = signed abs, minus 1/2 where the parity is odd */
static AVX512 INLINE __m512 e8p_pair_m(const e8p_chunk *c, int p) {
  __m512 w = e8p_pair(c, p);
  __mmask16 k;
  __asm__("kmovw %1, %0" : "=Yk"(k) : "m"(*(const uint16_t *)(const void *)(c->pm + 2 * p)));
  __asm__("vsubps %2, %0, %0%{%1%}" : "+v"(w) : "Yk"(k), "v"(_mm512_set1_ps(0.5f)));
  return w;
}

static AVX512 INLINE __m512 e81b_pair(const e81b_chunk *c, int p) {
  uint32_t o;
  memcpy(&o, c->off + 2 * p, 4);
  return rows2((const char *)e8q_avx512_e81b_tab, o);
}

#endif
