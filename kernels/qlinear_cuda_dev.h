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

/* acc[t] += Σ_{j ≡ lane mod nlanes} Ŵr[row, 8j..8j+7] · u[b0+t, 8j..8j+7] for t < bt.
 * codes1/codes2: the row's codes (codes2 u16 for RVQ4, u8 for RVQ3, ignored at 2 bit);
 * u: [batch, n_pad] row-major. */
static inline E8Q_HD void e8q_qdev_row_partial(int cb, const uint32_t *abs_tab, const int8_t *grid2,
                                               const uint16_t *codes1, const void *codes2, int nc,
                                               float inv_rs, const float *u, int n_pad, int b0, int bt,
                                               int lane, int nlanes, float acc[E8Q_QDEV_BT]) {
  for (int j = lane; j < nc; j += nlanes) {
    uint32_t c2 = 0;
    if (cb == E8Q_CB_E8P12RVQ4B) c2 = ((const uint16_t *)codes2)[j];
    else if (cb == E8Q_CB_E8P12RVQ3B) c2 = ((const uint8_t *)codes2)[j];
    float w[8];
    e8q_qdev_decode(cb, abs_tab, grid2, codes1[j], c2, inv_rs, w);
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

#endif
