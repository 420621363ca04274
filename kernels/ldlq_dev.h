/* kernels/ldlq_dev.h: one weight row of the buffered LDLQ (kernels/ldlq_impl.h, float64) as
 * __host__ __device__ functions, so that a CUDA LDLQ runs one row per thread with exactly the
 * CPU's per-row arithmetic (tests/quant/test_ldlq_dev.c holds a host loop over these rows plus
 * the CPU GEMMs to e8q_ldlq_rows bit for bit). What differs on a GPU is only the buffered
 * feedback products (cuBLAS instead of OpenBLAS: the order of a dot product's additions).
 *
 * Both walk the 8-column blocks k of one buffer [c0, c1) from last to first:
 *   pass:  x = w[k] + prod[k] + sum_{j in (k, c1)} (w[j] - h[j]) L[j, k];  h[k] = Q(x)
 *   tune:  x = h[k] + g[k - c0 buffer] Hkk_inv[k];  h[k] = Q(x); d += h_old - h; g updated
 * Codes go to c1row[k] and (second stage) c2row[k] (u16 for every codebook; RVQ3's index fits). */
#ifndef E8Q_KERNELS_LDLQ_DEV_H
#define E8Q_KERNELS_LDLQ_DEV_H

#include <stdint.h>

#include "kernels/e8p_encode_dev.h"

/* w, prod, h [n] this row; L [n, n] the unit block-lower factor; feedback 0: nearest rounding */
static inline E8Q_HD void e8q_ldqdev_pass_row(const e8q_e8p_enc_tables *T, int cb, int feedback, int64_t n,
                                              int64_t c0, int64_t c1, const double *L, const double *w,
                                              const double *prod, double *h, uint16_t *c1row, uint16_t *c2row) {
  for (int64_t k = c1 / 8 - 1; k >= c0 / 8; k--) {
    const int64_t j0 = 8 * k;
    double x[8], q[8];
    for (int t = 0; t < 8; t++) x[t] = w[j0 + t] + prod[j0 + t];
    if (feedback)
      for (int64_t j = j0 + 8; j < c1; j++) {
        const double e = w[j] - h[j];
        const double *l = L + j * n + j0;
        for (int t = 0; t < 8; t++) x[t] += E8Q_EDEV_MUL(e, l[t]);
      }
    uint16_t a, b;
    e8q_edev_cb_encode(T, cb, x, &a, &b, q);
    c1row[k] = a;
    c2row[k] = b;
    for (int t = 0; t < 8; t++) h[j0 + t] = q[t];
  }
}

/* h, d [n] this row (d = w - h, kept in step); g [c1 - c0] this row of (W - What) H[:, c0:c1];
 * H [n, n]; Hkk_inv [n/8, 8, 8] */
static inline E8Q_HD void e8q_ldqdev_tune_row(const e8q_e8p_enc_tables *T, int cb, int64_t n, int64_t c0, int64_t c1,
                                              const double *H, const double *Hkk_inv, double *h, double *d, double *g,
                                              uint16_t *c1row, uint16_t *c2row) {
  for (int64_t k = c1 / 8 - 1; k >= c0 / 8; k--) {
    const int64_t j0 = 8 * k;
    const double *hi = Hkk_inv + k * 64;
    double x[8], q[8], dd[8];
    for (int t = 0; t < 8; t++) {
      double v = h[j0 + t];
      for (int s = 0; s < 8; s++) v += E8Q_EDEV_MUL(g[j0 - c0 + s], hi[s * 8 + t]);
      x[t] = v;
    }
    uint16_t a, b;
    e8q_edev_cb_encode(T, cb, x, &a, &b, q);
    c1row[k] = a;
    c2row[k] = b;
    for (int t = 0; t < 8; t++) {
      dd[t] = h[j0 + t] - q[t];
      d[j0 + t] = d[j0 + t] + dd[t];
      h[j0 + t] = q[t];
    }
    for (int t = 0; t < 8; t++) {
      if (dd[t] == 0) continue;
      const double *hr = H + (j0 + t) * n;
      for (int64_t j = c0; j < j0; j++) g[j - c0] = g[j - c0] + E8Q_EDEV_MUL(dd[t], hr[j]);
    }
  }
}

#endif
