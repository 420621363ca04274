/* kernels/transformer_grad_cuda_dev.h: the arithmetic of the CUDA backward kernels of a decoder
 * block's non-matmul ops (kernels/transformer_grad_cuda.cu) as __host__ __device__ functions
 * (E8Q_HD), so that the host runs exactly the code the device runs and tests it against the CPU
 * _refs of kernels/transformer_grad.h (tests/model/test_transformer_grad_cuda_host.cu, no GPU).
 *
 * Same quantities and precision as the CPU fast paths of kernels/transformer_grad.c: float32
 * arithmetic, with double where they use double (RMSNorm's sums of squares, its dot and dw
 * sums and dx's two terms; attention's D = sum_j P_j dP_j).
 *
 * Work split, as transformer_cuda_dev.h: a row's (or a query's) elements j = lane,
 * lane + nlanes, ... belong to one thread, their partial results combined by a block reduction
 * (a tree); a column or an output element summed by one thread in a fixed order; elementwise
 * ops take one flat index k. Nothing depends on the launch but through those trees, so the
 * results are deterministic. The RoPE backward is e8q_tdev_rope_pair with sgn = -1. */
#ifndef E8Q_KERNELS_TRANSFORMER_GRAD_CUDA_DEV_H
#define E8Q_KERNELS_TRANSFORMER_GRAD_CUDA_DEV_H

#include <math.h>
#include <stddef.h>

#include "kernels/transformer_cuda_dev.h" /* E8Q_HD, e8q_tdev_sumsq, e8q_tdev_scores, e8q_tdev_exp */

/* ---------------------------------------------------------------- RMSNorm backward
 * rows x, dy [N, d]; per row t: r_t = 1/sqrt(sum x^2 / d + eps), c_t = r_t^3 dot_t / d with
 * dot_t = sum_i dy_i w_i x_i, kept as doubles rc [N, 2] = (r_t, c_t).
 * The sum of squares is e8q_tdev_sumsq (the forward's). */
/* this lane's float64 part of dot_t */
static inline E8Q_HD double e8q_gdev_rms_dot(const float *x, const float *w, const float *dy, int d, int lane,
                                            int nlanes) {
  double dt = 0.0;
  for (int i = lane; i < d; i += nlanes) dt += (double)dy[i] * w[i] * x[i];
  return dt;
}
/* (r_t, c_t) from the row's totals */
static inline E8Q_HD void e8q_gdev_rms_factors(double ss, double dot, int d, float eps, double *rc /* [2] */) {
  const double r = 1.0 / sqrt(ss / d + eps);
  rc[0] = r;
  rc[1] = r * r * r * dot / d;
}
/* column i: dw[i] += (float) sum_t dy[t,i] x[t,i] r_t, rows in order, in double */
static inline E8Q_HD void e8q_gdev_rms_dw(int i, int N, int d, const float *x, const float *dy, const double *rc,
                                          float *dw) {
  double acc = 0.0;
  for (int t = 0; t < N; t++) acc += (double)dy[(size_t)t * d + i] * x[(size_t)t * d + i] * rc[2 * t];
  dw[i] += (float)acc;
}
/* flat index k over [N, d]: dx[k] = r w dy - c x (double, rounded once); reads dy[k] before
 * writing dx[k], so dx may alias dy */
static inline E8Q_HD void e8q_gdev_rms_dx(size_t k, int d, const float *x, const float *w, const float *dy,
                                          const double *rc, float *dx) {
  const size_t t = k / d, i = k % d;
  const double r = rc[2 * t], c = rc[2 * t + 1];
  dx[k] = (float)(r * w[i] * dy[k] - c * x[k]);
}

/* ---------------------------------------------------------------- SwiGLU backward
 * flat index k over [N, hidden]; ug rows [up | gate], dug rows [dup | dgate], s = sigmoid(gate):
 * dup = dh silu(gate), dgate = dh up s (1 + gate (1 - s)), float32 as e8q_swiglu_backward */
static inline E8Q_HD void e8q_gdev_swiglu(size_t k, int hidden, const float *ug, const float *dh, float *dug) {
  const size_t t = k / hidden, i = k % hidden, o = t * 2 * hidden + i;
  const float up = ug[o], x = ug[o + hidden], g = dh[k];
  const float s = 1.0f / (1.0f + expf(-x));
  dug[o] = g * x * s;
  dug[o + hidden] = g * up * s * (1.0f + x * (1.0f - s));
}

/* ---------------------------------------------------------------- attention backward
 * Per (sequence s, head h, query t), keys j = 0..t (causal), scale = 1/sqrt(hd):
 *   P_j = softmax_j(scale q.k_j) (the forward's e8q_tdev_scores / e8q_tdev_exp, then * inv),
 *   dP_j = dO.v_j,  D = sum_j P_j dP_j (double),  dS_j = P_j (dP_j - (float)D),
 *   dQ = scale sum_j dS_j k_j;
 * per (s, kv head g, key j), over the query heads h of g and queries t >= j:
 *   dK_j = sum_h scale sum_t dS[h,t,j] q_t[h],  dV_j = sum_h sum_t P[h,t,j] dO_t[h].
 * Heads at stride ld in the fused qkv rows (kernels/transformer.h): q, k, v point at position 0
 * of the head (row j at + j*ld); dO rows at stride ldo; the per-query rows P, dS [t+1] are rows
 * of the P and dS planes [T, T] of one (s, h) (query t's row at + t*T). */
/* for this lane's j (att [t+1] holding exp(score - max)): P[j] = att[j] * inv, dP_j into
 * att[j]; returns this lane's float64 part of D */
static inline E8Q_HD double e8q_gdev_attn_dp(int t, float *att, float inv, const float *dO, const float *v, size_t ld,
                                            int hd, float *P, int lane, int nlanes) {
  double D = 0.0;
  for (int j = lane; j <= t; j += nlanes) {
    const float *vr = v + (size_t)j * ld;
    float dp = 0.0f;
    for (int i = 0; i < hd; i++) dp += dO[i] * vr[i];
    const float p = att[j] * inv;
    P[j] = p;
    att[j] = dp;
    D += (double)p * dp;
  }
  return D;
}
/* for this lane's j: dS_j = P_j (dP_j - D), into att[j] (in place of dP_j) and dS[j] */
static inline E8Q_HD void e8q_gdev_attn_ds(int t, float *att, const float *P, float D, float *dS, int lane,
                                           int nlanes) {
  for (int j = lane; j <= t; j += nlanes) {
    const float ds = P[j] * (att[j] - D);
    att[j] = ds;
    dS[j] = ds;
  }
}
/* dq[i] = scale sum_{j<=t} dS_j k_j[i] for this lane's i, j in order */
static inline E8Q_HD void e8q_gdev_attn_dq(int t, const float *dS, const float *k, size_t ld, int hd, float scale,
                                           float *dq, int lane, int nlanes) {
  for (int i = lane; i < hd; i += nlanes) {
    float acc = 0.0f;
    for (int j = 0; j <= t; j++) acc += dS[j] * k[(size_t)j * ld + i];
    dq[i] = scale * acc;
  }
}
/* key j of a kv head shared by the `group` query heads h0.., for this lane's i, heads in order
 * and per head queries t = j..T-1 in order:
 *   dk[i] = sum_h scale sum_t dS_h[t,j] q_h[t,i],  dv[i] = sum_h sum_t P_h[t,j] dO_h[t,i].
 * q, dO: head h0's position 0 (next head + hd, row t at + t*ld resp. t*ldo); P, dS: head h0's
 * [T, T] plane (next head + T*T). */
static inline E8Q_HD void e8q_gdev_attn_dkv(int j, int T, int group, const float *q, size_t ld, const float *dO,
                                            size_t ldo, int hd, float scale, const float *P, const float *dS,
                                            float *dk, float *dv, int lane, int nlanes) {
  const size_t plane = (size_t)T * T;
  for (int i = lane; i < hd; i += nlanes) {
    float ak = 0.0f, av = 0.0f;
    for (int g = 0; g < group; g++) {
      const float *qh = q + (size_t)g * hd + i, *oh = dO + (size_t)g * hd + i;
      const float *Ph = P + g * plane + j, *Sh = dS + g * plane + j;
      float sk = 0.0f, sv = 0.0f;
      for (int t = j; t < T; t++) {
        sk += Sh[(size_t)t * T] * qh[(size_t)t * ld];
        sv += Ph[(size_t)t * T] * oh[(size_t)t * ldo];
      }
      ak += scale * sk;
      av += sv;
    }
    dk[i] = ak;
    dv[i] = av;
  }
}

#endif
