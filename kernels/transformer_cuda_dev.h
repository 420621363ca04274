/* kernels/transformer_cuda_dev.h: the arithmetic of the CUDA decoder-block kernels
 * (kernels/transformer_cuda.cu) as __host__ __device__ functions (E8Q_HD), so that the host
 * runs exactly the code the device runs and tests it against the CPU _refs
 * (tests/model/test_transformer_cuda_host.cu, no GPU needed).
 *
 * Work split used by the kernels: a row's (or a query's) elements j = lane, lane + nlanes, ...
 * belong to one thread (nlanes = the block's threads); the partial results are then combined by
 * a block reduction (sum or max). Elementwise ops take one flat index k. */
#ifndef E8Q_KERNELS_TRANSFORMER_CUDA_DEV_H
#define E8Q_KERNELS_TRANSFORMER_CUDA_DEV_H

#include <math.h>
#include <stddef.h>

#include "kernels/codebook.h" /* E8Q_HD */

/* a float product rounded on its own (never fused into an FMA by nvcc) */
#ifdef __CUDA_ARCH__
#define E8Q_TDEV_MUL(a, b) __fmul_rn((a), (b))
#else
#define E8Q_TDEV_MUL(a, b) ((a) * (b))
#endif

/* ---------------------------------------------------------------- RMSNorm (one row x [d]) */
/* this lane's float64 sum of squares */
static inline E8Q_HD double e8q_tdev_sumsq(const float *x, int d, int lane, int nlanes) {
  double ss = 0.0;
  for (int i = lane; i < d; i += nlanes) ss += (double)x[i] * x[i];
  return ss;
}
/* 1 / RMS from the row's total sum of squares, rounded to float as the CPU does */
static inline E8Q_HD float e8q_tdev_rms_inv(double ss, int d, float eps) { return (float)(1.0 / sqrt(ss / d + eps)); }
static inline E8Q_HD void e8q_tdev_rmsnorm_apply(const float *x, const float *w, float r, float *y, int d, int lane,
                                                 int nlanes) {
  for (int i = lane; i < d; i += nlanes) y[i] = x[i] * r * w[i];
}

/* ---------------------------------------------------------------- RoPE
 * flat index k over [N rows, n_heads, hd/2 pairs]; row r is position pos0 + r % T; rotate-half pairs
 * (i, i + hd/2); the angle in float64, its cos and sin rounded to float (e8q_rope_table).
 * sgn = +1: the forward (a, b) -> (a c - b s, b c + a s); sgn = -1: its inverse, the backward
 * (a, b) -> (a c + b s, b c - a s) of e8q_rope_backward (the sine negated, exactly) */
static inline E8Q_HD void e8q_tdev_rope_pair(size_t k, int T, int pos0, int n_heads, int hd, double theta, float sgn,
                                             float *x, int ld) {
  const int half = hd / 2;
  const int i = (int)(k % half), h = (int)(k / half % n_heads);
  const size_t r = k / half / n_heads;
  const double ang = (double)(pos0 + (int)(r % T)) * pow(theta, -2.0 * i / hd);
  const float co = (float)cos(ang), si = sgn * (float)sin(ang);
  float *v = x + r * ld + (size_t)h * hd;
  const float a = v[i], b = v[i + half];
  /* two products then one sum, as e8q_rope */
  v[i] = E8Q_TDEV_MUL(a, co) - E8Q_TDEV_MUL(b, si);
  v[i + half] = E8Q_TDEV_MUL(b, co) + E8Q_TDEV_MUL(a, si);
}

/* ---------------------------------------------------------------- attention (one query)
 * query t of a sequence, heads at stride ld in the fused qkv rows (kernels/transformer.h):
 * q [hd] the query, k and v the key and value of position 0 (row j at + j*ld), att [t+1]. */
/* this lane's scores (att[j] = q.k_j * scale for its j) and their max (-inf when it has none) */
static inline E8Q_HD float e8q_tdev_scores(int t, const float *q, const float *k, size_t ld, int hd, float scale,
                                           float *att, int lane, int nlanes) {
  float mx = -INFINITY;
  for (int j = lane; j <= t; j += nlanes) {
    const float *kr = k + (size_t)j * ld;
    float sc = 0.0f;
    for (int i = 0; i < hd; i++) sc += q[i] * kr[i];
    sc *= scale;
    att[j] = sc;
    mx = sc > mx ? sc : mx;
  }
  return mx;
}
/* att[j] = exp(att[j] - mx) for this lane's j; returns their sum */
static inline E8Q_HD float e8q_tdev_exp(int t, float mx, float *att, int lane, int nlanes) {
  float sum = 0.0f;
  for (int j = lane; j <= t; j += nlanes) {
    const float e = expf(att[j] - mx);
    att[j] = e;
    sum += e;
  }
  return sum;
}
/* o[i] = sum_j att[j] * inv * v_j[i] for this lane's i */
static inline E8Q_HD void e8q_tdev_attend(int t, const float *att, float inv, const float *v, size_t ld, int hd,
                                          float *o, int lane, int nlanes) {
  for (int i = lane; i < hd; i += nlanes) {
    float acc = 0.0f;
    for (int j = 0; j <= t; j++) acc += att[j] * inv * v[(size_t)j * ld + i];
    o[i] = acc;
  }
}

/* ---------------------------------------------------------------- SwiGLU (flat index k over [N, hidden]) */
static inline E8Q_HD void e8q_tdev_swiglu(size_t k, int hidden, const float *ug, float *h) {
  const size_t t = k / hidden, i = k % hidden;
  const float up = ug[t * 2 * hidden + i], g = ug[t * 2 * hidden + hidden + i];
  h[k] = g / (1.0f + expf(-g)) * up;
}

#endif
