/* kernels/qlinear_avx512.c: the AVX-512 core of the quantized linear product.
 *
 * Decoding an E8P code c = (A << 8) | B splits into an abs row, signs and a shift:
 *   w[i] = (sign bit i of B' ? -1 : +1) · abs[A][i] + (p ? -1/4 : +1/4),   p = parity(B),
 * with abs[A] the signed-abs row (codebook.h's packed row A decoded with no signs) and B' the
 * sign byte in element order. B' is linear in B over GF(2) (bit i = B_σ(i), bit 0 of B
 * flipped when p = 1), so one GFNI affine instruction turns 32 codes' sign bytes into
 * element-order sign masks at once, and a second one their parities. Per row and chunk of 32 codes the kernel first unpacks, in
 * registers, the abs-row byte offsets (A·32), the 32 sign bytes and a 32-bit parity mask into a
 * small L1 scratch (a few uops per 32 codes); the inner loop then decodes TWO codes into one
 * 16-float register with two loads from an 8 KiB f32 abs table (L1 resident), applies the
 * signs with a masked XOR whose 16-bit mask is loaded straight from the sign bytes, and does
 * one FMA against the 16 inputs of the two blocks. The shift never enters the inner loop:
 *   Σ_j shift_j · X_j = (X_total − 2 Σ_{j: p_j} X_j) / 4,   X_j = Σ_t u[8j + t],
 * one masked add of 16 block sums per 16 codes.
 * RVQ4 decodes its second E8P stage the same way (own accumulators, divided by resid_scale at
 * the end); RVQ3's second stage is an 8 KiB f32 table of the 1-bit E8 grid indexed by byte.
 *
 * Where e8q_qlinear_init prepared it (CPUs with AVX512-VNNI), every product goes to the integer
 * core of qlinear_vnni.c instead (2.3-2.5x faster at batch 1, 1.6x at batch 8); this f32 core
 * serves CPUs without VNNI, inputs with NaN or Inf, and E8Q_NO_VNNI=1.
 * batch 1: rows in groups (8 for E8P, 4 for RVQ) share each 16-float input load.
 * batch > 1: inputs regrouped into tiles of BT = 8, 4, 2, 1 columns stored [pairs][BT][16];
 *            each pair of codes is decoded once (both stages combined, the shift folded in as
 *            a masked subtract of 1/2 where the parity is odd, the constant +1/4 added once per
 *            output as Σx/4) and multiplied into BT accumulators; two rows share each input load.
 * Costs (Sapphire Rapids, 512-bit uops issue on ports 0 and 5 only): ~1.75 vector uops per code
 * at batch 1 against 3 on three ports for AVX2, so batch 1 gains little; at batch > 1 the 16-wide
 * FMAs dominate and the gain is ~1.3-1.4x (bench/README.md).
 * Inputs are copied into buffers padded to a multiple of 32 codes (zeros), and code loads past
 * the end of a row are masked, so no tail loop and no out-of-bounds access.
 * Compiled by function attribute: the rest of the project keeps the baseline ISA. */
#if defined(__x86_64__) || defined(__i386__)
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_vnni.h"

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear_avx512_decode.h"

/* ---------------------------------------------------------------- tables (kernels/qlinear_avx512_decode.h) */
float e8q_avx512_abs_tab[E8Q_E8P_ROWS][8] __attribute__((aligned(64)));   /* signed-abs rows */
float e8q_avx512_e81b_tab[E8Q_E81B_SIZE][8] __attribute__((aligned(64))); /* 1-bit E8 grid values */
uint64_t e8q_avx512_gf_sign, e8q_avx512_gf_par; /* GF(2) 8x8 matrices: B -> element-order signs, B -> parity (all bits) */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_build(void) {
  uint8_t sign_rows[8], par_rows[8];
  for (int i = 0; i < 8; i++) {
    sign_rows[i] = e8q_e8p_sign_bits(i);
    par_rows[i] = 0xFF;
  }
  e8q_avx512_gf_sign = e8q_gf2_matrix(sign_rows);
  e8q_avx512_gf_par = e8q_gf2_matrix(par_rows);
  for (int A = 0; A < E8Q_E8P_ROWS; A++) {
    float w[8];
    e8q_e8p_decode((uint16_t)(A << 8), w); /* B = 0: no signs, shift +1/4 */
    for (int i = 0; i < 8; i++) e8q_avx512_abs_tab[A][i] = w[i] - 0.25f;
  }
  for (int k = 0; k < E8Q_E81B_SIZE; k++) e8q_e81b_decode((uint32_t)k, e8q_avx512_e81b_tab[k]);
  /* the decomposition must reproduce codebook.h exactly for every code */
  for (int c = 0; c < E8Q_E8P_NCODES; c++) {
    float w[8];
    e8q_e8p_decode((uint16_t)c, w);
    const uint8_t B = (uint8_t)(c & 0xFF), s = e8q_gf2_affine(e8q_avx512_gf_sign, B, 0), p = e8q_gf2_affine(e8q_avx512_gf_par, B, 0);
    for (int i = 0; i < 8; i++) {
      float v = ((s >> i) & 1 ? -e8q_avx512_abs_tab[c >> 8][i] : e8q_avx512_abs_tab[c >> 8][i]) + (p ? -0.25f : 0.25f);
      E8Q_CHECK(v == w[i] && (p == 0 || p == 0xFF),
                "qlinear AVX-512: E8P sign/shift decomposition disagrees with codebook.h at code %d", c);
    }
  }
}

void e8q_avx512_tables_init(void) { pthread_once(&tables_once, tables_build); }


/* Σ_{j: p_j} X_j for a chunk: masked adds of the 32 block sums */
static AVX512 INLINE __m512 par_add(__m512 s, uint32_t par, const float *X) {
  s = _mm512_mask_add_ps(s, (__mmask16)(par & 0xFFFFu), s, _mm512_loadu_ps(X));
  return _mm512_mask_add_ps(s, (__mmask16)(par >> 16), s, _mm512_loadu_ps(X + 16));
}

/* Σ_j w_j·x_j from the accumulators: signed-abs part + shift part (X_total − 2 Σ_p X) / 4 */
static AVX512 INLINE float finish(__m512 acc, __m512 spar, float Xtot) {
  return _mm512_reduce_add_ps(acc) + 0.25f * (Xtot - 2.0f * _mm512_reduce_add_ps(spar));
}

/* ---------------------------------------------------------------- batch 1 */
#define MV_RMAX 8
/* z[r] for rows r0..r0+R-1 (cb and R literals at every call site). up: [ncp*8] inputs padded
 * with zeros to a multiple of CH codes; X: [ncp] block sums; Xtot their sum. */
static AVX512 INLINE void mv_rows(const e8q_qlinear *q, const int cb, const int R, int r0, const float *up,
                                  const float *X, float Xtot, float *z) {
  const int nc = q->nc;
  __m512 a1[MV_RMAX], a2[MV_RMAX], s1[MV_RMAX], s2[MV_RMAX];
  e8p_chunk ch1[MV_RMAX], ch2[MV_RMAX];
  e81b_chunk chb[MV_RMAX];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++) a1[i] = a2[i] = s1[i] = s2[i] = _mm512_setzero_ps();
  for (int j0 = 0; j0 < nc; j0 += CH) {
    const int cnt = nc - j0 < CH ? nc - j0 : CH;
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      const size_t at = (size_t)(r0 + i) * nc + j0;
      e8p_unpack(q->d.codes + at, cnt, &ch1[i], 0);
      s1[i] = par_add(s1[i], ch1[i].par, X + j0);
      if (cb == E8Q_CB_E8P12RVQ4B) {
        e8p_unpack((const uint16_t *)q->d.codes2 + at, cnt, &ch2[i], 0);
        s2[i] = par_add(s2[i], ch2[i].par, X + j0);
      }
      if (cb == E8Q_CB_E8P12RVQ3B) e81b_unpack((const uint8_t *)q->d.codes2 + at, cnt, &chb[i]);
    }
    const int np2 = (cnt + 1) / 2;
    for (int p = 0; p < np2; p++) {
      const __m512 x = _mm512_load_ps(up + 8 * (size_t)j0 + 16 * p);
#pragma GCC unroll 8
      for (int i = 0; i < R; i++) {
        a1[i] = _mm512_fmadd_ps(e8p_pair(&ch1[i], p), x, a1[i]);
        if (cb == E8Q_CB_E8P12RVQ4B) a2[i] = _mm512_fmadd_ps(e8p_pair(&ch2[i], p), x, a2[i]);
        if (cb == E8Q_CB_E8P12RVQ3B) a2[i] = _mm512_fmadd_ps(e81b_pair(&chb[i], p), x, a2[i]);
      }
    }
  }
  const float k2 = 1.0f / q->resid_scale;
#pragma GCC unroll 8
  for (int i = 0; i < R; i++) {
    float s = finish(a1[i], s1[i], Xtot);
    if (cb == E8Q_CB_E8P12RVQ4B) s += k2 * finish(a2[i], s2[i], Xtot);
    if (cb == E8Q_CB_E8P12RVQ3B) s += k2 * _mm512_reduce_add_ps(a2[i]);
    z[r0 + i] = s;
  }
}

#define MATVEC_FN(name, CB, MV_R)                                                              \
  static AVX512 void name(const e8q_qlinear *q, const float *up, const float *X, float Xtot, float *z) { \
    const int m = q->d.m, groups = m / MV_R;                                                   \
    _Pragma("omp parallel for schedule(static)")                                              \
    for (int g = 0; g < groups; g++) mv_rows(q, CB, MV_R, MV_R * g, up, X, Xtot, z);           \
    for (int r = MV_R * groups; r < m; r++) mv_rows(q, CB, 1, r, up, X, Xtot, z);              \
  }
MATVEC_FN(matvec_e8p, E8Q_CB_E8P12, 8)
MATVEC_FN(matvec_rvq4, E8Q_CB_E8P12RVQ4B, 4)
MATVEC_FN(matvec_rvq3, E8Q_CB_E8P12RVQ3B, 4)

/* ---------------------------------------------------------------- batch > 1 */
/* R rows (1 or 2), columns b0..b0+BT-1 of one tile. xt: the tile's inputs [ncp/2][BT][16].
 * Each pair of codes is decoded once (shift folded in, see e8p_pair_m) and multiplied into BT
 * accumulators per row; the R rows share every input load (loads, not FMAs, bound this loop). */
static AVX512 INLINE void mm_tile(const e8q_qlinear *q, const int cb, const int BT, const int R, int r, int b0,
                                  const float *xt, const float *Xtot, float *z) {
  const int nc = q->nc, m = q->d.m;
  const __m512 k2 = _mm512_set1_ps(1.0f / q->resid_scale);
  __m512 acc[2][8];
  e8p_chunk ch1[2], ch2[2];
  e81b_chunk chb[2];
#pragma GCC unroll 2
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int t = 0; t < BT; t++) acc[i][t] = _mm512_setzero_ps();
  for (int j0 = 0; j0 < nc; j0 += CH) {
    const int cnt = nc - j0 < CH ? nc - j0 : CH;
#pragma GCC unroll 2
    for (int i = 0; i < R; i++) {
      const size_t at = (size_t)(r + i) * nc + j0;
      e8p_unpack(q->d.codes + at, cnt, &ch1[i], 1);
      if (cb == E8Q_CB_E8P12RVQ4B) e8p_unpack((const uint16_t *)q->d.codes2 + at, cnt, &ch2[i], 1);
      if (cb == E8Q_CB_E8P12RVQ3B) e81b_unpack((const uint8_t *)q->d.codes2 + at, cnt, &chb[i]);
    }
    const int np2 = (cnt + 1) / 2;
    const float *x = xt + (size_t)(j0 / 2) * BT * 16;
    for (int p = 0; p < np2; p++) {
      __m512 w[2];
#pragma GCC unroll 2
      for (int i = 0; i < R; i++) {
        w[i] = e8p_pair_m(&ch1[i], p);
        if (cb == E8Q_CB_E8P12RVQ4B) w[i] = _mm512_fmadd_ps(e8p_pair_m(&ch2[i], p), k2, w[i]);
        if (cb == E8Q_CB_E8P12RVQ3B) w[i] = _mm512_fmadd_ps(e81b_pair(&chb[i], p), k2, w[i]);
      }
#pragma GCC unroll 8
      for (int t = 0; t < BT; t++) {
        const __m512 xv = _mm512_load_ps(x + ((size_t)p * BT + t) * 16);
#pragma GCC unroll 2
        for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(w[i], xv, acc[i][t]);
      }
    }
  }
  /* the constant part of the shift: 1/4 per stage-1 weight, 1/(4 resid_scale) per RVQ4
   * stage-2 weight, times Σ x */
  const float cst = cb == E8Q_CB_E8P12RVQ4B ? 0.25f + 0.25f / q->resid_scale : 0.25f;
#pragma GCC unroll 2
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int t = 0; t < BT; t++) z[(size_t)(b0 + t) * m + r + i] = _mm512_reduce_add_ps(acc[i][t]) + cst * Xtot[b0 + t];
}

/* rows r0..r1 of one tile, two at a time */
static AVX512 INLINE void mm_rows(const e8q_qlinear *q, const int cb, const int BT, int r0, int r1, int b0,
                                  const float *xt, const float *Xtot, float *z) {
  int r = r0;
  for (; r + 2 <= r1; r += 2) mm_tile(q, cb, BT, 2, r, b0, xt, Xtot, z);
  if (r < r1) mm_tile(q, cb, BT, 1, r, b0, xt, Xtot, z);
}

/* column tiles outermost; rows split statically across threads, no shared writes */
#define MATMUL_FN(name, CB)                                                                          \
  static AVX512 void name(const e8q_qlinear *q, int batch, int ncp, const float *ut, const float *Xtot, \
                          float *z) {                                                                \
    const int m = q->d.m;                                                                            \
    _Pragma("omp parallel")                                                                         \
    {                                                                                                \
      const int nth = omp_get_num_threads(), tid = omp_get_thread_num();                             \
      const int r0 = (int)((long)m * tid / nth), r1 = (int)((long)m * (tid + 1) / nth);              \
      for (int b0 = 0, bt = 8; b0 < batch; b0 += bt) {                                               \
        while (b0 + bt > batch) bt /= 2;                                                             \
        const float *xt = ut + (size_t)b0 * ncp * 8;                                                 \
        switch (bt) {                                                                                \
          case 8: mm_rows(q, CB, 8, r0, r1, b0, xt, Xtot, z); break;                                 \
          case 4: mm_rows(q, CB, 4, r0, r1, b0, xt, Xtot, z); break;                                 \
          case 2: mm_rows(q, CB, 2, r0, r1, b0, xt, Xtot, z); break;                                 \
          default: mm_rows(q, CB, 1, r0, r1, b0, xt, Xtot, z); break;                                \
        }                                                                                            \
      }                                                                                              \
    }                                                                                                \
  }
MATMUL_FN(matmul_e8p, E8Q_CB_E8P12)
MATMUL_FN(matmul_rvq4, E8Q_CB_E8P12RVQ4B)
MATMUL_FN(matmul_rvq3, E8Q_CB_E8P12RVQ3B)

/* ---------------------------------------------------------------- entry */
void e8q_qlinear_codes_matmul_avx512(const e8q_qlinear *q, int batch, const float *u, float *z) {
  E8Q_CHECK(e8q_cpu_has_avx512(), "e8q_qlinear_codes_matmul_avx512: this CPU lacks AVX-512/GFNI");
  if (batch > 0 && q->vnni && e8q_qlinear_vnni_matmul(q, q->vnni, batch, u, z)) return;
  pthread_once(&tables_once, tables_build);
  if (batch <= 0) return;
  const int nc = q->nc, np = q->d.n_pad, ncp = (nc + CH - 1) / CH * CH;
  /* padded inputs: tiles of 8, 4, 2, 1 columns (as the kernels walk them), each [ncp/2][bt][16];
   * batch 1 is the same layout with bt = 1 (plain padded vector) */
  float *ut = e8q_alloc_aligned(sizeof(float) * (size_t)batch * ncp * 8, "qlinear padded input");
  float *X = e8q_alloc_aligned(sizeof(float) * (size_t)batch * ncp, "qlinear block sums");
  float *Xtot = e8q_malloc(sizeof(float) * (size_t)batch, "qlinear input sums");
  for (int b0 = 0, bt = 8; b0 < batch; b0 += bt) {
    while (b0 + bt > batch) bt /= 2;
    float *tile = ut + (size_t)b0 * ncp * 8;
    for (int t = 0; t < bt; t++) {
      const float *ub = u + (size_t)(b0 + t) * np;
      float *Xb = X + (size_t)(b0 + t) * ncp, tot = 0;
      for (int j2 = 0; j2 < ncp / 2; j2++) {
        float *dst = tile + ((size_t)j2 * bt + t) * 16;
        for (int h = 0; h < 2; h++) {
          const int j = 2 * j2 + h;
          float s = 0;
          for (int e = 0; e < 8; e++) {
            const float v = j < nc ? ub[8 * j + e] : 0.0f;
            dst[8 * h + e] = v;
            s += v;
          }
          Xb[j] = s;
          tot += s;
        }
      }
      Xtot[b0 + t] = tot;
    }
  }
  if (batch == 1) {
    switch (q->d.codebook) {
      case E8Q_CB_E8P12: matvec_e8p(q, ut, X, Xtot[0], z); break;
      case E8Q_CB_E8P12RVQ4B: matvec_rvq4(q, ut, X, Xtot[0], z); break;
      case E8Q_CB_E8P12RVQ3B: matvec_rvq3(q, ut, X, Xtot[0], z); break;
    }
  } else {
    switch (q->d.codebook) {
      case E8Q_CB_E8P12: matmul_e8p(q, batch, ncp, ut, Xtot, z); break;
      case E8Q_CB_E8P12RVQ4B: matmul_rvq4(q, batch, ncp, ut, Xtot, z); break;
      case E8Q_CB_E8P12RVQ3B: matmul_rvq3(q, batch, ncp, ut, Xtot, z); break;
    }
  }
  free(ut);
  free(X);
  free(Xtot);
}
#else
typedef int e8q_qlinear_avx512_unused;
#endif
