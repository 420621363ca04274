/* kernels/qlinear_cuda_dev.h: the arithmetic of the CUDA quantized-linear kernels as
 * __host__ __device__ functions (E8Q_HD), so that the host can run exactly the code the device
 * runs and test it against the CPU _ref (tests/fused/test_qlinear_cuda_host.cu, no GPU needed).
 *
 * Decoding reads the codebook tables from pointers (the kernels stage them in shared memory;
 * the host passes codebook.h's host arrays) and uses codebook.h's e8q_e8p_decode_word.
 *
 * Work split used by the kernels: a row's codes j = lane, lane + nlanes, ... belong to one lane
 * (nlanes = 32: one warp per row); the lanes' partial sums are then added (warp shuffles).
 * Hadamard: a vector of k = K·p values is transformed in place by log2(p) butterfly stages on
 * each of the K segments (pair idx of stage h touches i = (idx / h)·2h + idx % h and i + h),
 * then mixed across segments by R (or Rᵀ) and scaled by 1/sqrt(k).
 */
#ifndef E8Q_KERNELS_QLINEAR_CUDA_DEV_H
#define E8Q_KERNELS_QLINEAR_CUDA_DEV_H

#include <stdint.h>

#include "kernels/codebook.h"

#define E8Q_QDEV_BT 8 /* batch columns per pass (registers per lane) */

/* Ŵr values of one code (both stages): w[t] = E8P(c1)[t] + S2(c2)[t] * inv_rs */
static inline E8Q_HD void e8q_qdev_decode(int cb, const uint32_t *abs_tab /* [256] */,
                                          const int8_t *grid2 /* [256*8] half units */, uint16_t c1,
                                          uint32_t c2, float inv_rs, float w[8]) {
  e8q_e8p_decode_word(abs_tab[c1 >> 8], c1 & 0xFFu, w);
  if (cb == E8Q_CB_E8P12RVQ4B) {
    float b[8];
    e8q_e8p_decode_word(abs_tab[(c2 >> 8) & 0xFFu], c2 & 0xFFu, b);
    for (int t = 0; t < 8; t++) w[t] += b[t] * inv_rs;
  } else if (cb == E8Q_CB_E8P12RVQ3B) {
    const int8_t *g = grid2 + 8 * (c2 & 0xFFu);
    for (int t = 0; t < 8; t++) w[t] += 0.5f * (float)g[t] * inv_rs;
  }
}

/* Ŵr values of code idx of codes1 / codes2 (u16 RVQ4, u8 RVQ3, ignored at 2 bit) */
static inline E8Q_HD void e8q_qdev_decode_at(int cb, const uint32_t *abs_tab, const int8_t *grid2,
                                             const uint16_t *codes1, const void *codes2, size_t idx, float inv_rs,
                                             float w[8]) {
  uint32_t c2 = 0;
  if (cb == E8Q_CB_E8P12RVQ4B) c2 = ((const uint16_t *)codes2)[idx];
  else if (cb == E8Q_CB_E8P12RVQ3B) c2 = ((const uint8_t *)codes2)[idx];
  e8q_qdev_decode(cb, abs_tab, grid2, codes1[idx], c2, inv_rs, w);
}

/* acc[t] += Σ_{j ≡ lane mod nlanes} Ŵr[row, 8j..8j+7] · u[b0+t, 8j..8j+7] for t < bt.
 * codes1/codes2: the row's codes (codes2 u16 for RVQ4, u8 for RVQ3, ignored at 2 bit);
 * u: [batch, n_pad] row-major. */
static inline E8Q_HD void e8q_qdev_row_partial(int cb, const uint32_t *abs_tab, const int8_t *grid2,
                                               const uint16_t *codes1, const void *codes2, int nc,
                                               float inv_rs, const float *u, int n_pad, int b0, int bt,
                                               int lane, int nlanes, float acc[E8Q_QDEV_BT]) {
  for (int j = lane; j < nc; j += nlanes) {
    float w[8];
    e8q_qdev_decode_at(cb, abs_tab, grid2, codes1, codes2, (size_t)j, inv_rs, w);
    for (int t = 0; t < E8Q_QDEV_BT; t++) {
      if (t < bt) {
        const float *x = u + (long)(b0 + t) * n_pad + 8 * j;
        float s = 0;
        for (int i = 0; i < 8; i++) s += w[i] * x[i];
        acc[t] += s;
      }
    }
  }
}

/* one butterfly of stage h (h = 1, 2, 4, ... < p) on the segment-local pair idx < p/2 */
static inline E8Q_HD void e8q_qdev_fwht_pair(float *seg, int h, int idx) {
  int i = (idx / h) * 2 * h + idx % h;
  float a = seg[i], b = seg[i + h];
  seg[i] = a + b;
  seg[i + h] = a - b;
}

/* output a·p + b of the cross-segment mix: Σ_c R[a,c] X[c·p+b] (transpose: R[c,a]), times sc */
static inline E8Q_HD float e8q_qdev_had_mix(const float *X, const float *R, int K, int p, int transpose,
                                            int a, int b, float sc) {
  if (K == 1) return X[b] * sc;
  float acc = 0;
  for (int c = 0; c < K; c++) acc += (transpose ? R[c * K + a] : R[a * K + c]) * X[c * p + b];
  return acc * sc;
}

/* ---------------------------------------------------------------- the transpose product (backward)
 * t[b, 8j+e] = Σ_r Ŵr[r, 8j+e] · g[b, r] (e8q_qlinear_codes_matmul_t_ref's product). A thread owns
 * one code column j, a tile of up to E8Q_QDEV_BT batch rows and one chunk of rows r0..r1-1,
 * summed in row order; the launcher splits the rows into e8q_qdev_t_chunks chunks (a function
 * of the shape and batch only, so the bits do not depend on the device) and adds the chunks'
 * partial products in chunk order. */
#define E8Q_QDEV_T_ROWS_MIN 64          /* rows per chunk at least */
#define E8Q_QDEV_T_THREADS 65536L       /* threads the split aims at (a device's worth) */
#define E8Q_QDEV_T_SCRATCH (1L << 26)   /* floats of partial products at most (256 MiB) */

static inline E8Q_HD int e8q_qdev_t_chunks(int m, int nc, int batch, int n_pad) {
  const long cols = (long)nc * ((batch + E8Q_QDEV_BT - 1) / E8Q_QDEV_BT);
  long c = (E8Q_QDEV_T_THREADS + cols - 1) / (cols > 0 ? cols : 1);
  const long by_rows = (m + E8Q_QDEV_T_ROWS_MIN - 1) / E8Q_QDEV_T_ROWS_MIN;
  const long by_mem = E8Q_QDEV_T_SCRATCH / ((long)(batch > 0 ? batch : 1) * n_pad);
  if (c > by_rows) c = by_rows;
  if (c > by_mem) c = by_mem;
  return c > 1 ? (int)c : 1;
}

/* acc[t][e] += Σ_{r0 ≤ r < r1} Ŵr[r, 8j+e] · g[(b0+t)·m + r] for t < bt, rows in order.
 * codes1 [m, nc], codes2 [m, nc] (u16 RVQ4, u8 RVQ3, ignored at 2 bit), g [batch, m]. */
static inline E8Q_HD void e8q_qdev_col_partial(int cb, const uint32_t *abs_tab, const int8_t *grid2,
                                               const uint16_t *codes1, const void *codes2, int nc, float inv_rs,
                                               const float *g, int m, int r0, int r1, int j, int b0, int bt,
                                               float acc[E8Q_QDEV_BT][8]) {
  for (int r = r0; r < r1; r++) {
    float w[8];
    e8q_qdev_decode_at(cb, abs_tab, grid2, codes1, codes2, (size_t)r * nc + j, inv_rs, w);
    for (int t = 0; t < E8Q_QDEV_BT; t++) {
      if (t < bt) {
        const float gv = g[(size_t)(b0 + t) * m + r];
        for (int e = 0; e < 8; e++) acc[t][e] += w[e] * gv;
      }
    }
  }
}

/* ---------------------------------------------------------------- scale gradients (backward)
 * Σ_b a[b·lda + k] · c[b·ldc + k] over b = 0..batch-1 in order, in double: dSV's and dSU's sums
 * (e8q_qlinear_backward's, the same order and precision) */
static inline E8Q_HD double e8q_qdev_coldot(int batch, const float *a, int lda, const float *c, int ldc, int k) {
  double s = 0;
  for (int b = 0; b < batch; b++) s += (double)a[(size_t)b * lda + k] * (double)c[(size_t)b * ldc + k];
  return s;
}

#endif
