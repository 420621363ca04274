/* kernels/qlinear_grad_avx512.c: the AVX-512 transpose product t = Ŵrᵀ g of the quantized
 * linear's backward (kernels/qlinear_grad.h), decoded on the fly from the codes.
 *
 * Decoding is that of the forward's AVX-512 core (kernels/qlinear_avx512.c, whose helpers are
 * file-static, so the few needed are repeated here): per row and group of 32 codes, one GFNI
 * affine instruction turns the sign bytes into element-order sign masks and a second one their
 * parities; a pair of codes then decodes into one 16-float register with two loads from an
 * 8 KiB f32 table of signed-abs rows (L1 resident) and a masked XOR of the signs. The shift is
 * folded as in the forward's batch path: each weight is taken as (w - 1/4), i.e. the signed abs
 * minus 1/2 where the parity is odd, and the constant 1/4 (1/4 + 1/(4 resid_scale) for RVQ4's
 * two E8P stages) times Σ_r g[b, r] is added once per output at the end.
 *
 * Layout of the work: the code columns are cut into groups of 32 codes (256 columns of t);
 * OpenMP threads take whole groups (static schedule), so each thread owns disjoint columns of t.
 * Within a group, rows go in blocks of 32: the block's 32 x 32 codes are unpacked once into an
 * L1 scratch, then every batch tile (8, 4, 2, 1 columns of g) passes over the block with its
 * accumulators in registers (16 zmm: BT batch columns x P pairs of codes, BT·P = 16, 8 at
 * BT = 1), loaded from and stored back to t between row blocks. Each code's line is read once
 * per call; g is transposed first ([m][batch]) so a row's batch values are one cache line and
 * each FMA takes its g value as an embedded broadcast. Every element of t is accumulated over
 * r = 0..m-1 in order, FMA after FMA, whatever the thread count: bit-identical results for any
 * OMP_NUM_THREADS. The last group is padded to 32 codes (masked code loads read zeros, whose
 * decoded values land in padding columns of the scratch t that are never copied out).
 * Compiled by function attribute: the rest of the project keeps the baseline ISA. */
#if defined(__x86_64__) || defined(__i386__)
#include "kernels/qlinear_grad.h"

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear_avx512.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,gfni")))
#define INLINE __attribute__((always_inline)) inline
#define CH 32 /* codes per column group (one unpacked chunk per row) */
#define RB 32 /* rows per block */

/* ---------------------------------------------------------------- tables */
static float abs_tab[E8Q_E8P_ROWS][8] __attribute__((aligned(64)));   /* signed-abs rows */
static float e81b_tab[E8Q_E81B_SIZE][8] __attribute__((aligned(64))); /* 1-bit E8 grid values */
static uint64_t gf_sign, gf_par; /* GF(2) 8x8 matrices: B -> element-order signs, B -> parity */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_build(void) {
  uint8_t sign_rows[8], par_rows[8];
  for (int i = 0; i < 8; i++) {
    sign_rows[i] = e8q_e8p_sign_bits(i);
    par_rows[i] = 0xFF;
  }
  gf_sign = e8q_gf2_matrix(sign_rows);
  gf_par = e8q_gf2_matrix(par_rows);
  for (int A = 0; A < E8Q_E8P_ROWS; A++) {
    float w[8];
    e8q_e8p_decode((uint16_t)(A << 8), w); /* B = 0: no signs, shift +1/4 */
    for (int i = 0; i < 8; i++) abs_tab[A][i] = w[i] - 0.25f;
  }
  for (int k = 0; k < E8Q_E81B_SIZE; k++) e8q_e81b_decode((uint32_t)k, e81b_tab[k]);
  /* the decomposition must reproduce codebook.h exactly for every code */
  for (int c = 0; c < E8Q_E8P_NCODES; c++) {
    float w[8];
    e8q_e8p_decode((uint16_t)c, w);
    const uint8_t B = (uint8_t)(c & 0xFF), s = e8q_gf2_affine(gf_sign, B, 0), p = e8q_gf2_affine(gf_par, B, 0);
    for (int i = 0; i < 8; i++) {
      float v = ((s >> i) & 1 ? -abs_tab[c >> 8][i] : abs_tab[c >> 8][i]) + (p ? -0.25f : 0.25f);
      E8Q_CHECK(v == w[i] && (p == 0 || p == 0xFF),
                "qlinear grad AVX-512: E8P sign/shift decomposition disagrees with codebook.h at code %d", c);
    }
  }
}

/* ---------------------------------------------------------------- unpacking 32 codes */
typedef struct {
  uint16_t off[CH]; /* [CH] byte offset of the abs row (A * 32) */
  uint8_t sgn[CH];  /* [CH] element-order sign bits */
  uint8_t pm[CH];   /* [CH] 0xFF where the code's parity is odd (shift -1/4), else 0 */
} __attribute__((aligned(64))) e8p_chunk;

typedef struct {
  uint16_t off[CH]; /* [CH] byte offset of the 1-bit E8 row (index * 32) */
} __attribute__((aligned(64))) e81b_chunk;

static AVX512 INLINE void e8p_unpack(const uint16_t *c, int cnt, e8p_chunk *o) {
  const __mmask32 lm = cnt >= CH ? 0xFFFFFFFFu : (1u << cnt) - 1;
  const __m512i v = _mm512_maskz_loadu_epi16(lm, c);
  const __m512i s = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64((long long)gf_sign), 0);
  const __m512i pb = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64((long long)gf_par), 0);
  const __mmask32 par = _mm512_test_epi16_mask(pb, _mm512_set1_epi16(0x00FF));
  _mm256_store_si256((__m256i *)o->pm, _mm256_movm_epi8(par));
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

/* codes 2p, 2p+1 of an unpacked chunk, less the +1/4 every code has: signed abs, minus 1/2
 * where the parity is odd */
static AVX512 INLINE __m512 e8p_pair_m(const e8p_chunk *c, int p) {
  uint32_t o;
  memcpy(&o, c->off + 2 * p, 4);
  __m512 w = rows2((const char *)abs_tab, o);
  __mmask16 k, kp;
  /* masks straight from memory, XOR and subtract in place (see qlinear_avx512.c) */
  __asm__("kmovw %1, %0" : "=Yk"(k) : "m"(*(const uint16_t *)(const void *)(c->sgn + 2 * p)));
  __asm__("vpxord %2, %0, %0%{%1%}" : "+v"(w) : "Yk"(k), "v"(_mm512_set1_epi32((int)0x80000000u)));
  __asm__("kmovw %1, %0" : "=Yk"(kp) : "m"(*(const uint16_t *)(const void *)(c->pm + 2 * p)));
  __asm__("vsubps %2, %0, %0%{%1%}" : "+v"(w) : "Yk"(kp), "v"(_mm512_set1_ps(0.5f)));
  return w;
}

static AVX512 INLINE __m512 e81b_pair(const e81b_chunk *c, int p) {
  uint32_t o;
  memcpy(&o, c->off + 2 * p, 4);
  return rows2((const char *)e81b_tab, o);
}

/* ---------------------------------------------------------------- one register tile */
/* BT batch columns x P code pairs (starting at pair p0 of the group), over the `rows` rows of the
 * current block (chunks ch1/ch2/chb [rows]). gt: [rows][batch] from the block's first row and the
 * tile's first batch column; tp: [BT][ldt] from the tile's first column. first: the block is the
 * first one (accumulators start at zero, else from tp). */
static AVX512 INLINE void tile(const int cb, const int BT, const int P, const e8p_chunk *ch1, const e8p_chunk *ch2,
                               const e81b_chunk *chb, int rows, int p0, const float *gt, int batch, float *tp,
                               size_t ldt, int first, __m512 k2) {
  __m512 acc[16];
#pragma GCC unroll 8
  for (int t = 0; t < BT; t++)
#pragma GCC unroll 16
    for (int p = 0; p < P; p++)
      acc[t * P + p] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(tp + (size_t)t * ldt + 16 * p);
  for (int i = 0; i < rows; i++) {
    __m512 w[16];
#pragma GCC unroll 16
    for (int p = 0; p < P; p++) {
      w[p] = e8p_pair_m(&ch1[i], p0 + p);
      if (cb == E8Q_CB_E8P12RVQ4B) w[p] = _mm512_fmadd_ps(e8p_pair_m(&ch2[i], p0 + p), k2, w[p]);
      if (cb == E8Q_CB_E8P12RVQ3B) w[p] = _mm512_fmadd_ps(e81b_pair(&chb[i], p0 + p), k2, w[p]);
    }
    const float *gr = gt + (size_t)i * batch;
#pragma GCC unroll 8
    for (int t = 0; t < BT; t++) {
      const __m512 gv = _mm512_set1_ps(gr[t]);
#pragma GCC unroll 16
      for (int p = 0; p < P; p++) acc[t * P + p] = _mm512_fmadd_ps(w[p], gv, acc[t * P + p]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < BT; t++)
#pragma GCC unroll 16
    for (int p = 0; p < P; p++) _mm512_storeu_ps(tp + (size_t)t * ldt + 16 * p, acc[t * P + p]);
}

/* ---------------------------------------------------------------- one column group */
/* group gi (codes 32 gi .. 32 gi + 31 of every row) for all rows and batch columns.
 * gt: [m][batch]; tp: [batch][ldt]; ch1/ch2/chb: [RB] scratch. */
static AVX512 INLINE void group(const e8q_qlinear *q, const int cb, int gi, int batch, const float *gt, float *tp,
                                size_t ldt, e8p_chunk *ch1, e8p_chunk *ch2, e81b_chunk *chb) {
  const int nc = q->nc, m = q->d.m, j0 = gi * CH, cnt = nc - j0 < CH ? nc - j0 : CH;
  const __m512 k2 = _mm512_set1_ps(1.0f / q->resid_scale);
  for (int r0 = 0; r0 < m; r0 += RB) {
    const int rows = m - r0 < RB ? m - r0 : RB;
    for (int i = 0; i < rows; i++) {
      const size_t at = (size_t)(r0 + i) * nc + j0;
      e8p_unpack(q->d.codes + at, cnt, &ch1[i]);
      if (cb == E8Q_CB_E8P12RVQ4B) e8p_unpack((const uint16_t *)q->d.codes2 + at, cnt, &ch2[i]);
      if (cb == E8Q_CB_E8P12RVQ3B) e81b_unpack((const uint8_t *)q->d.codes2 + at, cnt, &chb[i]);
    }
    const int first = r0 == 0;
    for (int b0 = 0, bt = 8; b0 < batch; b0 += bt) {
      while (b0 + bt > batch) bt /= 2;
      const float *g0 = gt + (size_t)r0 * batch + b0;
      float *t0 = tp + (size_t)b0 * ldt + 8 * (size_t)j0;
      switch (bt) { /* 16 pairs per group: BT x P accumulators, s the sub-tile */
        case 8:
          for (int s = 0; s < 8; s++) tile(cb, 8, 2, ch1, ch2, chb, rows, 2 * s, g0, batch, t0 + 32 * s, ldt, first, k2);
          break;
        case 4:
          for (int s = 0; s < 4; s++) tile(cb, 4, 4, ch1, ch2, chb, rows, 4 * s, g0, batch, t0 + 64 * s, ldt, first, k2);
          break;
        case 2:
          for (int s = 0; s < 2; s++) tile(cb, 2, 8, ch1, ch2, chb, rows, 8 * s, g0, batch, t0 + 128 * s, ldt, first, k2);
          break;
        default:
          for (int s = 0; s < 2; s++) tile(cb, 1, 8, ch1, ch2, chb, rows, 8 * s, g0, batch, t0 + 128 * s, ldt, first, k2);
          break;
      }
    }
  }
}

/* the OpenMP region sits in each specialised function so cb is a literal in the outlined body */
#define MMT_FN(name, CB)                                                                              \
  static AVX512 void name(const e8q_qlinear *q, int batch, const float *gt, float *tp, size_t ldt, int ngroups) { \
    _Pragma("omp parallel")                                                                          \
    {                                                                                                 \
      e8p_chunk ch1[RB], ch2[CB == E8Q_CB_E8P12RVQ4B ? RB : 1];                                       \
      e81b_chunk chb[CB == E8Q_CB_E8P12RVQ3B ? RB : 1];                                               \
      _Pragma("omp for schedule(static)")                                                            \
      for (int gi = 0; gi < ngroups; gi++) group(q, CB, gi, batch, gt, tp, ldt, ch1, ch2, chb);       \
    }                                                                                                 \
  }
MMT_FN(mmt_e8p, E8Q_CB_E8P12)
MMT_FN(mmt_rvq4, E8Q_CB_E8P12RVQ4B)
MMT_FN(mmt_rvq3, E8Q_CB_E8P12RVQ3B)

/* ---------------------------------------------------------------- entry */
void e8q_qlinear_codes_matmul_t_avx512(const e8q_qlinear *q, int batch, const float *g, float *t) {
  E8Q_CHECK(e8q_cpu_has_avx512(), "e8q_qlinear_codes_matmul_t_avx512: this CPU lacks AVX-512 (F/BW/VL/DQ/VBMI) or GFNI");
  E8Q_CHECK(batch >= 0, "e8q_qlinear_codes_matmul_t_avx512: batch %d < 0", batch);
  if (batch == 0) return;
  pthread_once(&tables_once, tables_build);
  const int m = q->d.m, nc = q->nc, np = q->d.n_pad, ncp = (nc + CH - 1) / CH * CH, ngroups = ncp / CH;
  const size_t ldt = (size_t)ncp * 8;
  float *gt = e8q_alloc_aligned(sizeof(float) * (size_t)m * batch, "qlinear grad transposed g");
  float *tp = e8q_alloc_aligned(sizeof(float) * (size_t)batch * ldt, "qlinear grad padded t");
  float *gsum = e8q_malloc(sizeof(float) * (size_t)batch, "qlinear grad g sums");
  for (int b = 0; b < batch; b++) {
    const float *gb = g + (size_t)b * m;
    float s = 0;
    for (int r = 0; r < m; r++) {
      gt[(size_t)r * batch + b] = gb[r];
      s += gb[r];
    }
    gsum[b] = s;
  }
  switch (q->d.codebook) {
    case E8Q_CB_E8P12: mmt_e8p(q, batch, gt, tp, ldt, ngroups); break;
    case E8Q_CB_E8P12RVQ4B: mmt_rvq4(q, batch, gt, tp, ldt, ngroups); break;
    case E8Q_CB_E8P12RVQ3B: mmt_rvq3(q, batch, gt, tp, ldt, ngroups); break;
  }
  /* the constant part of the shift: 1/4 per stage-1 weight (and 1/(4 resid_scale) per RVQ4
   * stage-2 weight), times Σ_r g[b, r] */
  const float cst = q->d.codebook == E8Q_CB_E8P12RVQ4B ? 0.25f + 0.25f / q->resid_scale : 0.25f;
  for (int b = 0; b < batch; b++) {
    const float c = cst * gsum[b], *src = tp + (size_t)b * ldt;
    float *dst = t + (size_t)b * np;
    for (int k = 0; k < np; k++) dst[k] = src[k] + c;
  }
  free(gt);
  free(tp);
  free(gsum);
}
#else
typedef int e8q_qlinear_grad_avx512_unused;
#endif
