/* kernels/qlinear_avx2.c: the AVX2+FMA core of the quantized linear product.
 *
 * Decoding: a process-wide table holds every E8P code's 8 values as int8 in quarter units
 * (4·value ∈ {±1, ±3, ..., ±11}), 65,536 x 8 bytes = 512 KiB (L2 resident), built once from
 * codebook.h's e8q_e8p_decode. Decoding a code is then one 8-byte load, a sign extension and
 * an int->float conversion. The 1-bit E8 grid of RVQ3 is a 256 x 8 int8 table in half units.
 * The power-of-two unit scales (1/4, 1/2) are applied once per output.
 *
 * batch 1: four rows at a time share each load of the input block; independent accumulators.
 * batch > 1: inputs regrouped in column tiles of 8 (then 4, 2, 1), each tile stored
 *            [n_pad/8][BT][8] so a row pass streams it sequentially; each code is decoded once
 *            per tile and multiplied into BT accumulators.
 * Rows are split across OpenMP threads. Compiled for AVX2/FMA by function attribute, so the
 * rest of the project keeps the baseline ISA; callers dispatch on e8q_cpu_has_avx2().
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_avx2_decode.h"


/* ---------------------------------------------------------------- decode tables (kernels/qlinear_avx2_decode.h) */
int8_t e8q_avx2_e8p_q4[E8Q_E8P_NCODES][8] __attribute__((aligned(64)));  /* 4 * E8P(c) */
int8_t e8q_avx2_e81b_h2[E8Q_E81B_SIZE][8] __attribute__((aligned(64)));  /* 2 * E81B(i) */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_build(void) {
  for (int c = 0; c < E8Q_E8P_NCODES; c++) {
    float w[8];
    e8q_e8p_decode((uint16_t)c, w);
    for (int t = 0; t < 8; t++) e8q_avx2_e8p_q4[c][t] = (int8_t)lrintf(4.0f * w[t]);
  }
  for (int i = 0; i < E8Q_E81B_SIZE; i++) {
    float w[8];
    e8q_e81b_decode((uint32_t)i, w);
    for (int t = 0; t < 8; t++) e8q_avx2_e81b_h2[i][t] = (int8_t)lrintf(2.0f * w[t]);
  }
}

void e8q_avx2_tables_init(void) { pthread_once(&tables_once, tables_build); }

static AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* ---------------------------------------------------------------- batch 1 */
#define INLINE __attribute__((always_inline)) inline
#define MV_RMAX 8
/* z[r] for rows r0..r0+R-1. cb and R are literals at every call site (the wrappers below), so
 * the codebook tests fold away and the row loops unroll into registers. Units: a1 quarter
 * units of stage 1, a2 quarter (RVQ4) or half (RVQ3) units of stage 2. */
static AVX2 INLINE void mv_rows(const e8q_qlinear *q, const int cb, const int R, int r0, const float *u,
                                float *z) {
  const int nc = q->nc;
  const uint16_t *c1[MV_RMAX];
  const uint16_t *c2w[MV_RMAX];
  const uint8_t *c2b[MV_RMAX];
  __m256 a1[MV_RMAX], a2[MV_RMAX];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++) {
    c1[i] = q->d.codes + (size_t)(r0 + i) * nc;
    c2w[i] = cb == E8Q_CB_E8P12RVQ4B ? (const uint16_t *)q->d.codes2 + (size_t)(r0 + i) * nc : NULL;
    c2b[i] = cb == E8Q_CB_E8P12RVQ3B ? (const uint8_t *)q->d.codes2 + (size_t)(r0 + i) * nc : NULL;
    a1[i] = _mm256_setzero_ps();
    a2[i] = _mm256_setzero_ps();
  }
  for (int j = 0; j < nc; j++) {
    const __m256 x = _mm256_loadu_ps(u + 8 * j);
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      a1[i] = _mm256_fmadd_ps(ld_i8(e8q_avx2_e8p_q4[c1[i][j]]), x, a1[i]);
      if (cb == E8Q_CB_E8P12RVQ4B) a2[i] = _mm256_fmadd_ps(ld_i8(e8q_avx2_e8p_q4[c2w[i][j]]), x, a2[i]);
      if (cb == E8Q_CB_E8P12RVQ3B) a2[i] = _mm256_fmadd_ps(ld_i8(e8q_avx2_e81b_h2[c2b[i][j]]), x, a2[i]);
    }
  }
  const float k2 = cb == E8Q_CB_E8P12RVQ4B ? 0.25f / q->resid_scale : 0.5f / q->resid_scale;
#pragma GCC unroll 8
  for (int i = 0; i < R; i++) {
    float s = 0.25f * hsum(a1[i]);
    if (cb != E8Q_CB_E8P12) s += k2 * hsum(a2[i]);
    z[r0 + i] = s;
  }
}

/* the OpenMP region must sit in each specialised function: the outlined body is created
 * before inlining, so a shared region would keep cb as a run-time value */
#define MATVEC_FN(name, CB, MV_R)                                                      \
  static AVX2 void name(const e8q_qlinear *q, const float *u, float *z) {              \
    const int m = q->d.m, groups = m / MV_R;                                           \
    _Pragma("omp parallel for schedule(static)")                                      \
    for (int g = 0; g < groups; g++) mv_rows(q, CB, MV_R, MV_R * g, u, z);             \
    for (int r = MV_R * groups; r < m; r++) mv_rows(q, CB, 1, r, u, z);                \
  }
/* rows per group sharing each input load: 8 for E8P (8 accumulators), 4 for RVQ (8 too) */
MATVEC_FN(matvec_e8p, E8Q_CB_E8P12, 8)
MATVEC_FN(matvec_rvq4, E8Q_CB_E8P12RVQ4B, 4)
MATVEC_FN(matvec_rvq3, E8Q_CB_E8P12RVQ3B, 4)

/* ---------------------------------------------------------------- batch > 1 */
/* one row, batch columns b0..b0+BT-1; the tile's inputs are contiguous at ut + b0·n_pad,
 * laid out [nc][BT][8] */
static AVX2 INLINE void mm_tile(const e8q_qlinear *q, const int cb, const int BT, int r, int b0,
                                const float *ut, float *z) {
  const int nc = q->nc, m = q->d.m, np = q->d.n_pad;
  const uint16_t *c1 = q->d.codes + (size_t)r * nc;
  const uint16_t *c2w = cb == E8Q_CB_E8P12RVQ4B ? (const uint16_t *)q->d.codes2 + (size_t)r * nc : NULL;
  const uint8_t *c2b = cb == E8Q_CB_E8P12RVQ3B ? (const uint8_t *)q->d.codes2 + (size_t)r * nc : NULL;
  /* stage 2 in quarter units: value/rs = q4/(4 rs) (RVQ4) or h2/(2 rs) = (2 h2/rs)/4 (RVQ3) */
  const __m256 k2 = _mm256_set1_ps(cb == E8Q_CB_E8P12RVQ4B ? 1.0f / q->resid_scale : 2.0f / q->resid_scale);
  __m256 acc[8];
#pragma GCC unroll 8
  for (int t = 0; t < BT; t++) acc[t] = _mm256_setzero_ps();
  for (int j = 0; j < nc; j++) {
    __m256 w = ld_i8(e8q_avx2_e8p_q4[c1[j]]);
    if (cb == E8Q_CB_E8P12RVQ4B) w = _mm256_fmadd_ps(ld_i8(e8q_avx2_e8p_q4[c2w[j]]), k2, w);
    if (cb == E8Q_CB_E8P12RVQ3B) w = _mm256_fmadd_ps(ld_i8(e8q_avx2_e81b_h2[c2b[j]]), k2, w);
    const float *x = ut + (size_t)b0 * np + (size_t)j * BT * 8;
#pragma GCC unroll 8
    for (int t = 0; t < BT; t++) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8 * t), acc[t]);
  }
#pragma GCC unroll 8
  for (int t = 0; t < BT; t++) z[(size_t)(b0 + t) * m + r] = 0.25f * hsum(acc[t]);
}

/* column tiles outermost: one tile's inputs (BT·n_pad floats) stay in L2 while all the rows of
 * the thread pass over it; the codes are re-read once per tile */
#define MATMUL_FN(name, CB)                                                                  \
  static AVX2 void name(const e8q_qlinear *q, int batch, const float *ut, float *z) {        \
    const int m = q->d.m;                                                                    \
    _Pragma("omp parallel")                                                                 \
    {                                                                                        \
      const int nth = omp_get_num_threads(), tid = omp_get_thread_num();                     \
      const int r0 = (int)((long)m * tid / nth), r1 = (int)((long)m * (tid + 1) / nth);      \
      int b0 = 0;                                                                            \
      for (; b0 + 8 <= batch; b0 += 8)                                                       \
        for (int r = r0; r < r1; r++) mm_tile(q, CB, 8, r, b0, ut, z);                       \
      if (b0 + 4 <= batch) {                                                                 \
        for (int r = r0; r < r1; r++) mm_tile(q, CB, 4, r, b0, ut, z);                       \
        b0 += 4;                                                                             \
      }                                                                                      \
      if (b0 + 2 <= batch) {                                                                 \
        for (int r = r0; r < r1; r++) mm_tile(q, CB, 2, r, b0, ut, z);                       \
        b0 += 2;                                                                             \
      }                                                                                      \
      if (b0 < batch)                                                                        \
        for (int r = r0; r < r1; r++) mm_tile(q, CB, 1, r, b0, ut, z);                       \
    }                                                                                        \
  }
MATMUL_FN(matmul_e8p, E8Q_CB_E8P12)
MATMUL_FN(matmul_rvq4, E8Q_CB_E8P12RVQ4B)
MATMUL_FN(matmul_rvq3, E8Q_CB_E8P12RVQ3B)

void e8q_qlinear_codes_matmul_avx2(const e8q_qlinear *q, int batch, const float *u, float *z) {
  pthread_once(&tables_once, tables_build);
  if (batch == 1) {
    switch (q->d.codebook) {
      case E8Q_CB_E8P12: matvec_e8p(q, u, z); break;
      case E8Q_CB_E8P12RVQ4B: matvec_rvq4(q, u, z); break;
      case E8Q_CB_E8P12RVQ3B: matvec_rvq3(q, u, z); break;
    }
    return;
  }
  const int nc = q->nc, np = q->d.n_pad;
  float *ut = e8q_alloc_aligned(sizeof(float) * (size_t)batch * np, "qlinear transposed input");
  /* tiles of 8, 4, 2, 1 columns (as the kernels walk them), each stored [nc][BT][8] */
  for (int b0 = 0, bt = 8; b0 < batch; b0 += bt) {
    while (b0 + bt > batch) bt /= 2;
    for (int t = 0; t < bt; t++)
      for (int j = 0; j < nc; j++)
        memcpy(ut + (size_t)b0 * np + ((size_t)j * bt + t) * 8, u + (size_t)(b0 + t) * np + 8 * j, 32);
  }
  switch (q->d.codebook) {
    case E8Q_CB_E8P12: matmul_e8p(q, batch, ut, z); break;
    case E8Q_CB_E8P12RVQ4B: matmul_rvq4(q, batch, ut, z); break;
    case E8Q_CB_E8P12RVQ3B: matmul_rvq3(q, batch, ut, z); break;
  }
  free(ut);
}

/* ---------------------------------------------------------------- rows decoded to f32 */
void e8q_qlinear_decode_rows_avx2(const e8q_qlinear *q, int r0, int rows, float *W) {
  e8q_avx2_tables_init();
  const int nc = q->nc, np = q->d.n_pad, cb = q->d.codebook;
  const float rs = q->resid_scale;
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < nc; j++) {
      const size_t idx = (size_t)(r0 + r) * nc + j;
      float a[8], b[8];
      for (int t = 0; t < 8; t++) a[t] = 0.25f * (float)e8q_avx2_e8p_q4[q->d.codes[idx]][t]; /* exact */
      if (cb == E8Q_CB_E8P12RVQ4B)
        for (int t = 0; t < 8; t++) b[t] = 0.25f * (float)e8q_avx2_e8p_q4[((const uint16_t *)q->d.codes2)[idx]][t];
      else if (cb == E8Q_CB_E8P12RVQ3B)
        for (int t = 0; t < 8; t++) b[t] = 0.5f * (float)e8q_avx2_e81b_h2[((const uint8_t *)q->d.codes2)[idx]][t];
      float *w = W + (size_t)r * np + 8 * j;
      if (cb == E8Q_CB_E8P12)
        memcpy(w, a, sizeof a);
      else
        for (int t = 0; t < 8; t++) w[t] = a[t] + b[t] / rs; /* decode_f32's operations (qlinear.c) */
    }
}
#else
typedef int e8q_qlinear_avx2_unused;
#endif
