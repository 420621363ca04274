/* kernels/e8p_encode_dev.h: the exact encoders (E8P12, RVQ4, RVQ3) as __host__ __device__
 * functions (E8Q_HD), for a CUDA LDLQ (one thread per weight row) and for the host tests that
 * hold them to kernels/e8p.c bit for bit (tests/quant/test_e8p_encode_dev.cu).
 *
 * The arithmetic is kernels/e8p.c's, operation for operation: the 2 shifts x 256 abs rows search
 * with closed-form signs, the near-tie fallback to the reference's own search (its canonical
 * half of D8^, fused multiply-adds where it used them), and the RVQ second stages. e8p.c's CPU
 * loops are vectorised over rows; here one call searches serially. Products that the CPU rounds
 * on their own go through E8Q_EDEV_MUL so nvcc never fuses them into an FMA (which rounds once
 * and could change a comparison, hence a code).
 * The tables (from e8q_e8p_enc_tables_fill, e8p.c) are read through a pointer: global memory on
 * the device, ~190 KB. */
#ifndef E8Q_KERNELS_E8P_ENCODE_DEV_H
#define E8Q_KERNELS_E8P_ENCODE_DEV_H

#include <math.h>
#include <stdint.h>

#include "kernels/codebook.h"

#ifdef __CUDA_ARCH__
#define E8Q_EDEV_MUL(a, b) __dmul_rn((a), (b))
#else
#define E8Q_EDEV_MUL(a, b) ((a) * (b))
#endif

#define E8Q_E8P_PART_MAX 2048 /* points of the reference's canonical half of D8^ (e8p.c counts them) */

typedef struct {
  double a[8][E8Q_E8P_ROWS];          /* |v| of abs row r, element i */
  double n2[E8Q_E8P_ROWS];            /* |v|^2 */
  double mismatch[2][E8Q_E8P_ROWS];   /* [parity of negatives in y][row]: 1 when a flip is forced */
  uint32_t odd[E8Q_E8P_ROWS];         /* sum |v| odd: packed element 7 is negative */
  double part[E8Q_E8P_PART_MAX][8];   /* the reference's canonical half (tie fallback) */
  double part_n2[E8Q_E8P_PART_MAX];
  int npart;
  double e81b[E8Q_E81B_SIZE][8];      /* the 1-bit E8 grid (RVQ3 second stage) */
  double e81b_n2[E8Q_E81B_SIZE];
} e8q_e8p_enc_tables;

/* best code for one shift: the score, *code; *tie set on a near tie (e8p.c encode_shift) */
static inline E8Q_HD double e8q_edev_shift(const e8q_e8p_enc_tables *T, const double x[8], double shift,
                                           uint16_t *code, int *tie) {
  double y[8], ay[8];
  uint32_t neg = 0;
  int negpar = 0;
  for (int i = 0; i < 8; i++) {
    y[i] = x[i] - shift;
    ay[i] = fabs(y[i]);
    if (y[i] < 0) {
      neg |= 1u << i;
      negpar ^= 1;
    }
  }
  const double *mis = T->mismatch[negpar];
  int best = 0;
  double s1 = -INFINITY, s2 = -INFINITY;
  for (int r = 0; r < E8Q_E8P_ROWS; r++) {
    double p[8];
    for (int i = 0; i < 8; i++) p[i] = E8Q_EDEV_MUL(T->a[i][r], ay[i]);
    const double d = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    const double m01 = p[0] < p[1] ? p[0] : p[1], m23 = p[2] < p[3] ? p[2] : p[3];
    const double m45 = p[4] < p[5] ? p[4] : p[5], m67 = p[6] < p[7] ? p[6] : p[7];
    const double ma = m01 < m23 ? m01 : m23, mb = m45 < m67 ? m45 : m67, mn = ma < mb ? ma : mb;
    const double v = 2.0 * d - T->n2[r] - E8Q_EDEV_MUL(4.0 * mn, mis[r]);
    /* e8p.c takes score[0] first, then the first maximum and the runner-up in one scan */
    if (r == 0) {
      s1 = v;
    } else if (v > s1) {
      s2 = s1;
      s1 = v;
      best = r;
    } else if (v > s2) {
      s2 = v;
    }
  }
  const double tol = E8Q_EDEV_MUL(1e-9, 1.0 + fabs(s1));
  if (s2 >= s1 - tol) *tie = 1;
  int k = 0;
  double mk = E8Q_EDEV_MUL(T->a[0][best], ay[0]);
  for (int i = 1; i < 8; i++) {
    const double pi = E8Q_EDEV_MUL(T->a[i][best], ay[i]);
    if (pi < mk) {
      mk = pi;
      k = i;
    }
  }
  for (int i = 0; i < 8; i++) {
    const double pi = E8Q_EDEV_MUL(T->a[i][best], ay[i]);
    if (pi <= tol || (i != k && pi <= mk + tol)) *tie = 1;
  }
  if (T->odd[best] != (uint32_t)negpar) neg ^= 1u << k;
  uint32_t s = 0;
  for (int i = 0; i < 8; i++) {
    uint32_t t = (neg >> i) & 1u;
    if (i == 7) t ^= T->odd[best];
    s |= t << e8q_e8p_sigma(i);
  }
  const uint32_t b = shift > 0 ? s : (s ^ 1u);
  *code = (uint16_t)(((uint32_t)best << 8) | b);
  /* the winning row's score, recomputed exactly as in the scan */
  return s1;
}

/* the reference's search over its canonical half for y: the point into vals, ||y - vals|| */
static inline E8Q_HD double e8q_edev_compat_part(const e8q_e8p_enc_tables *T, const double y[8], double vals[8]) {
  double P[8], mask[8];
  int cnt = 0;
  for (int i = 0; i < 8; i++) {
    P[i] = fabs(y[i]);
    mask[i] = y[i] < 0 ? -1.0 : 1.0;
    cnt += y[i] < 0;
  }
  if (cnt & 1) P[7] = -P[7], mask[7] = -mask[7];
  int best = 0;
  double bs = -INFINITY;
  for (int k = 0; k < T->npart; k++) {
    double d = 0;
    for (int i = 0; i < 8; i++) d = fma(2.0 * P[i], T->part[k][i], d);
    const double sc = d - T->part_n2[k];
    if (sc > bs) bs = sc, best = k;
  }
  double r[8];
  for (int i = 0; i < 8; i++) {
    vals[i] = T->part[best][i] * mask[i];
    r[i] = E8Q_EDEV_MUL(y[i] - vals[i], y[i] - vals[i]);
  }
  return sqrt(((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])));
}

static inline E8Q_HD uint16_t e8q_edev_compat(const e8q_e8p_enc_tables *T, const double x[8]) {
  double yp[8], ym[8], vp[8], vm[8], q[8];
  for (int i = 0; i < 8; i++) yp[i] = x[i] + 0.25, ym[i] = x[i] - 0.25;
  const double ep = e8q_edev_compat_part(T, yp, vp), em = e8q_edev_compat_part(T, ym, vm);
  for (int i = 0; i < 8; i++) q[i] = ep < em ? vp[i] - 0.25 : vm[i] + 0.25;
  uint16_t cp, cm;
  int tie = 0;
  const double sp = e8q_edev_shift(T, q, 0.25, &cp, &tie), sm = e8q_edev_shift(T, q, -0.25, &cm, &tie);
  const double sum = q[0] + q[1] + q[2] + q[3] + q[4] + q[5] + q[6] + q[7];
  return (-sp - 0.5 * sum) < (-sm + 0.5 * sum) ? cp : cm;
}

/* e8q_e8p_encode */
static inline E8Q_HD uint16_t e8q_edev_e8p(const e8q_e8p_enc_tables *T, const double x[8], double xhat[8]) {
  uint16_t cp, cm;
  int tie = 0;
  const double sp = e8q_edev_shift(T, x, 0.25, &cp, &tie), sm = e8q_edev_shift(T, x, -0.25, &cm, &tie);
  const double sum = x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7];
  const double ep = -sp - 0.5 * sum, em = -sm + 0.5 * sum;
  if (fabs(ep - em) <= E8Q_EDEV_MUL(1e-9, 1.0 + fabs(ep))) tie = 1;
  const uint16_t c = tie ? e8q_edev_compat(T, x) : ep < em ? cp : cm;
  if (xhat) e8q_e8p_decode_f64(c, xhat);
  return c;
}

/* e8q_e81b_encode: first maximum of 2 r.g - |g|^2, the dot product left to right */
static inline E8Q_HD uint8_t e8q_edev_e81b(const e8q_e8p_enc_tables *T, const double r[8]) {
  int best = 0;
  double bs = 0;
  for (int g = 0; g < E8Q_E81B_SIZE; g++) {
    double d = E8Q_EDEV_MUL(r[0], T->e81b[g][0]);
    for (int i = 1; i < 8; i++) d += E8Q_EDEV_MUL(r[i], T->e81b[g][i]);
    const double s = 2 * d - T->e81b_n2[g];
    if (g == 0 || s > bs) bs = s, best = g;
  }
  return (uint8_t)best;
}

/* e8q_cb_encode for every codebook: c1, c2 (RVQ4 u16, RVQ3 u8 index, 0 at 2 bit), xhat [8] */
static inline E8Q_HD void e8q_edev_cb_encode(const e8q_e8p_enc_tables *T, int cb, const double x[8], uint16_t *c1,
                                            uint16_t *c2, double xhat[8]) {
  double q1[8], r[8], q2[8];
  *c1 = e8q_edev_e8p(T, x, q1);
  *c2 = 0;
  if (cb == E8Q_CB_E8P12) {
    for (int i = 0; i < 8; i++) xhat[i] = q1[i];
  } else if (cb == E8Q_CB_E8P12RVQ4B) {
    for (int i = 0; i < 8; i++) r[i] = E8Q_EDEV_MUL(x[i] - q1[i], E8Q_RVQ4_RESID_SCALE);
    *c2 = e8q_edev_e8p(T, r, q2);
    for (int i = 0; i < 8; i++) xhat[i] = q1[i] + q2[i] / E8Q_RVQ4_RESID_SCALE;
  } else {
    for (int i = 0; i < 8; i++) r[i] = E8Q_EDEV_MUL(x[i] - q1[i], E8Q_RVQ3_RESID_SCALE);
    const uint8_t g = e8q_edev_e81b(T, r);
    *c2 = g;
    for (int i = 0; i < 8; i++) xhat[i] = q1[i] + T->e81b[g][i] / E8Q_RVQ3_RESID_SCALE;
  }
}

#endif
