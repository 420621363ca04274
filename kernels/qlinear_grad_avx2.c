/* kernels/qlinear_grad_avx2.c: the AVX2+FMA transpose product t = Ŵrᵀ g of the quantized
 * linear's backward (kernels/qlinear_grad.h), for CPUs without AVX-512 (and E8Q_NO_AVX512=1).
 *
 * Decoding as in the forward's AVX2 core (kernels/qlinear_avx2.c; one copy of its tables, shared
 * through kernels/qlinear_avx2_decode.h): a process-wide table holds every E8P code's 8 values as
 * int8 in quarter units (4·value, exact), 65,536 x 8 bytes = 512 KiB, built once from codebook.h; the 1-bit E8
 * grid of RVQ3 is a 256 x 8 int8 table in half units. A code decodes with one 8-byte load, a sign
 * extension and a conversion; the sums run in quarter units and t is scaled by 1/4 (exact) at
 * the end.
 *
 * Layout of the work as in the AVX-512 path (qlinear_grad_avx512.c): code columns in groups of
 * 32 codes, whole groups per OpenMP thread (disjoint columns of t); rows in blocks of 64 whose
 * codes are first copied into a zero-padded L1 scratch (the last group's missing codes read as
 * code 0 and land in padding columns never copied out); register tiles of BT batch columns x P
 * codes (BT·P = 8 accumulators), loaded from and stored to t between row blocks. Every element
 * is accumulated over r = 0..m-1 in order: bit-identical results for any thread count.
 * Compiled for AVX2/FMA by function attribute. */
#if defined(__x86_64__) || defined(__i386__)
#include "kernels/qlinear_grad.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear_avx2_decode.h"

#define INLINE __attribute__((always_inline)) inline
#define CH 32 /* codes per column group */
#define RB 64 /* rows per block */

/* ---------------------------------------------------------------- one register tile */
/* BT batch columns x P codes (from code c0 of the group) over `rows` rows of the block.
 * c1/c2w/c2b: the block's codes [rows][CH]; gt: [rows][batch] from the block's first row and the
 * tile's first batch column; tp: [BT][ldt] from the tile's first column. k2: the stage-2 factor
 * in quarter units. */
static AVX2 INLINE void tile(const int cb, const int BT, const int P, const uint16_t *c1, const uint16_t *c2w,
                             const uint8_t *c2b, int rows, int c0, const float *gt, int batch, float *tp, size_t ldt,
                             int first, __m256 k2) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int t = 0; t < BT; t++)
#pragma GCC unroll 8
    for (int p = 0; p < P; p++)
      acc[t * P + p] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(tp + (size_t)t * ldt + 8 * p);
  for (int i = 0; i < rows; i++) {
    __m256 w[8];
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) {
      const size_t at = (size_t)i * CH + c0 + p;
      w[p] = ld_i8(e8q_avx2_e8p_q4[c1[at]]);
      if (cb == E8Q_CB_E8P12RVQ4B) w[p] = _mm256_fmadd_ps(ld_i8(e8q_avx2_e8p_q4[c2w[at]]), k2, w[p]);
      if (cb == E8Q_CB_E8P12RVQ3B) w[p] = _mm256_fmadd_ps(ld_i8(e8q_avx2_e81b_h2[c2b[at]]), k2, w[p]);
    }
    const float *gr = gt + (size_t)i * batch;
#pragma GCC unroll 8
    for (int t = 0; t < BT; t++) {
      const __m256 gv = _mm256_broadcast_ss(gr + t);
#pragma GCC unroll 8
      for (int p = 0; p < P; p++) acc[t * P + p] = _mm256_fmadd_ps(w[p], gv, acc[t * P + p]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < BT; t++)
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) _mm256_storeu_ps(tp + (size_t)t * ldt + 8 * p, acc[t * P + p]);
}

/* ---------------------------------------------------------------- one column group */
/* gt: [m][batch]; tp: [batch][ldt]; c1/c2w/c2b: [RB][CH] scratch */
static AVX2 INLINE void group(const e8q_qlinear *q, const int cb, int gi, int batch, const float *gt, float *tp,
                              size_t ldt, uint16_t *c1, uint16_t *c2w, uint8_t *c2b) {
  const int nc = q->nc, m = q->d.m, j0 = gi * CH, cnt = nc - j0 < CH ? nc - j0 : CH;
  /* stage 2 in quarter units: value/rs = q4/(4 rs) (RVQ4) or h2/(2 rs) = (2 h2/rs)/4 (RVQ3) */
  const __m256 k2 = _mm256_set1_ps(cb == E8Q_CB_E8P12RVQ4B ? 1.0f / q->resid_scale : 2.0f / q->resid_scale);
  for (int r0 = 0; r0 < m; r0 += RB) {
    const int rows = m - r0 < RB ? m - r0 : RB;
    for (int i = 0; i < rows; i++) {
      const size_t at = (size_t)(r0 + i) * nc + j0;
      memcpy(c1 + (size_t)i * CH, q->d.codes + at, sizeof(uint16_t) * cnt);
      if (cb == E8Q_CB_E8P12RVQ4B) memcpy(c2w + (size_t)i * CH, (const uint16_t *)q->d.codes2 + at, sizeof(uint16_t) * cnt);
      if (cb == E8Q_CB_E8P12RVQ3B) memcpy(c2b + (size_t)i * CH, (const uint8_t *)q->d.codes2 + at, cnt);
      if (cnt < CH) {
        memset(c1 + (size_t)i * CH + cnt, 0, sizeof(uint16_t) * (CH - cnt));
        if (cb == E8Q_CB_E8P12RVQ4B) memset(c2w + (size_t)i * CH + cnt, 0, sizeof(uint16_t) * (CH - cnt));
        if (cb == E8Q_CB_E8P12RVQ3B) memset(c2b + (size_t)i * CH + cnt, 0, CH - cnt);
      }
    }
    const int first = r0 == 0, used = (cnt + 7) / 8 * 8; /* codes worth computing (whole 8-code sub-tiles) */
    for (int b0 = 0, bt = 8; b0 < batch; b0 += bt) {
      while (b0 + bt > batch) bt /= 2;
      const float *g0 = gt + (size_t)r0 * batch + b0;
      float *t0 = tp + (size_t)b0 * ldt + 8 * (size_t)j0;
      switch (bt) { /* BT x P = 8 accumulators */
        case 8:
          for (int s = 0; s < used; s++) tile(cb, 8, 1, c1, c2w, c2b, rows, s, g0, batch, t0 + 8 * s, ldt, first, k2);
          break;
        case 4:
          for (int s = 0; s < used; s += 2) tile(cb, 4, 2, c1, c2w, c2b, rows, s, g0, batch, t0 + 8 * s, ldt, first, k2);
          break;
        case 2:
          for (int s = 0; s < used; s += 4) tile(cb, 2, 4, c1, c2w, c2b, rows, s, g0, batch, t0 + 8 * s, ldt, first, k2);
          break;
        default:
          for (int s = 0; s < used; s += 8) tile(cb, 1, 8, c1, c2w, c2b, rows, s, g0, batch, t0 + 8 * s, ldt, first, k2);
          break;
      }
    }
  }
}

#define MMT_FN(name, CB)                                                                              \
  static AVX2 void name(const e8q_qlinear *q, int batch, const float *gt, float *tp, size_t ldt, int ngroups) { \
    _Pragma("omp parallel")                                                                          \
    {                                                                                                 \
      uint16_t c1[RB * CH] __attribute__((aligned(64)));                                              \
      uint16_t c2w[CB == E8Q_CB_E8P12RVQ4B ? RB * CH : 1];                                            \
      uint8_t c2b[CB == E8Q_CB_E8P12RVQ3B ? RB * CH : 1];                                             \
      _Pragma("omp for schedule(static)")                                                            \
      for (int gi = 0; gi < ngroups; gi++) group(q, CB, gi, batch, gt, tp, ldt, c1, c2w, c2b);        \
    }                                                                                                 \
  }
MMT_FN(mmt_e8p, E8Q_CB_E8P12)
MMT_FN(mmt_rvq4, E8Q_CB_E8P12RVQ4B)
MMT_FN(mmt_rvq3, E8Q_CB_E8P12RVQ3B)

/* ---------------------------------------------------------------- entry */
void e8q_qlinear_codes_matmul_t_avx2(const e8q_qlinear *q, int batch, const float *g, float *t) {
  E8Q_CHECK(e8q_cpu_has_avx2(), "e8q_qlinear_codes_matmul_t_avx2: this CPU lacks AVX2/FMA");
  E8Q_CHECK(batch >= 0, "e8q_qlinear_codes_matmul_t_avx2: batch %d < 0", batch);
  if (batch == 0) return;
  e8q_avx2_tables_init();
  const int m = q->d.m, nc = q->nc, np = q->d.n_pad, ncp = (nc + CH - 1) / CH * CH, ngroups = ncp / CH;
  const size_t ldt = (size_t)ncp * 8;
  float *gt = e8q_alloc_aligned(sizeof(float) * (size_t)m * batch, "qlinear grad transposed g");
  float *tp = e8q_alloc_aligned(sizeof(float) * (size_t)batch * ldt, "qlinear grad padded t");
  for (int b = 0; b < batch; b++)
    for (int r = 0; r < m; r++) gt[(size_t)r * batch + b] = g[(size_t)b * m + r];
  switch (q->d.codebook) {
    case E8Q_CB_E8P12: mmt_e8p(q, batch, gt, tp, ldt, ngroups); break;
    case E8Q_CB_E8P12RVQ4B: mmt_rvq4(q, batch, gt, tp, ldt, ngroups); break;
    case E8Q_CB_E8P12RVQ3B: mmt_rvq3(q, batch, gt, tp, ldt, ngroups); break;
  }
  for (int b = 0; b < batch; b++)
    for (int k = 0; k < np; k++) t[(size_t)b * np + k] = 0.25f * tp[(size_t)b * ldt + k];
  free(gt);
  free(tp);
}
#else
typedef int e8q_qlinear_grad_avx2_unused;
#endif
