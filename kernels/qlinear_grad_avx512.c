/* kernels/qlinear_grad_avx512.c: the AVX-512 transpose product t = Ŵrᵀ g of the quantized
 * linear's backward (kernels/qlinear_grad.h), decoded on the fly from the codes.
 *
 * Decoding is that of the forward's AVX-512 core (kernels/qlinear_avx512_decode.h, shared with
 * kernels/qlinear_avx512.c, tables included): per row and group of 32 codes, one GFNI
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
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_avx512_decode.h"

#define RB 32 /* rows per block */

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
      e8p_unpack(q->d.codes + at, cnt, &ch1[i], 1);
      if (cb == E8Q_CB_E8P12RVQ4B) e8p_unpack((const uint16_t *)q->d.codes2 + at, cnt, &ch2[i], 1);
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
  e8q_avx512_tables_init();
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
