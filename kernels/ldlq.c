/* kernels/ldlq.c: Hessian preparation, block LDL with reported fallbacks, buffered LDLQ
 * (float and double through kernels/ldlq_impl.h), the unbuffered reference, losses and the
 * baselines' numeric steps. The driver that strings them together is worker/quantize_linear.c. */
#include "kernels/ldlq.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/e8p.h"

/* ---------------------------------------------------------------- quantizer of 8 values */
static void quant8(const e8q_ldlq_opts *o, const double x[8], double q[8], uint16_t *codes, void *codes2, int64_t idx) {
  if (o->noe8_bits > 0) {
    double top = (double)((1 << o->noe8_bits) - 1) / 2; /* levels -top..top in steps of 1 */
    /* the nearest half-integer to x is floor(x) + 1/2; then clamp to the outer levels */
    for (int t = 0; t < 8; t++) q[t] = fmin(fmax(floor(x[t]) + 0.5, -top), top);
    return;
  }
  uint16_t c1, c2;
  e8q_cb_encode(o->cb, x, &c1, &c2, q);
  if (codes) codes[idx] = c1;
  if (codes2) {
    int bytes = e8q_cb_traits(o->cb)->codes2_bytes;
    if (bytes == 2) ((uint16_t *)codes2)[idx] = c2;
    else if (bytes == 1) ((uint8_t *)codes2)[idx] = (uint8_t)c2;
  }
}

/* ---------------------------------------------------------------- buffered LDLQ (f32, f64) */
#define REAL double
#define SFX(x) x##_f64
#define GEMM cblas_dgemm
#include "kernels/ldlq_impl.h"
#undef REAL
#undef SFX
#undef GEMM
#define REAL float
#define SFX(x) x##_f32
#define GEMM cblas_sgemm
#include "kernels/ldlq_impl.h"
#undef REAL
#undef SFX
#undef GEMM

/* ---------------------------------------------------------------- Hessian and factorisation */
void e8q_hessian_prep(double *H, int64_t n, double sigma_reg) {
  double mean = 0;
  for (int64_t i = 0; i < n; i++) mean += H[i * n + i];
  mean /= (double)n;
  /* H = 0 (inputs never excited; a PSD H with zero trace is 0): nothing to normalise, it
   * becomes sigma_reg * I (LDLQ = nearest rounding) instead of 0/0 */
  if (!(mean > 0)) mean = 1;
  for (int64_t i = 0; i < n * n; i++) H[i] /= mean;
  for (int64_t i = 0; i < n; i++) H[i * n + i] += sigma_reg;
}

static int all_finite_d(const double *a, int64_t count) {
  for (int64_t i = 0; i < count; i++)
    if (!isfinite(a[i])) return 0;
  return 1;
}
static int all_finite_f(const float *a, int64_t count) {
  for (int64_t i = 0; i < count; i++)
    if (!isfinite(a[i])) return 0;
  return 1;
}

/* the default f64 Cholesky: LAPACK on this process's copy */
static int cholesky_lapacke(int n, double *A) { return LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, A, n); }

/* the Cholesky factor C (lower) in A -> the unit block-lower L = C diag(C's 8x8 diagonal blocks)^-1:
 * the upper triangle zeroed, each column block below the diagonal solved against its diagonal
 * block, which becomes I */
#define UNIT_BLOCK_LOWER(name, T, trsm)                                                              \
  static void name(T *A, int64_t n) {                                                                \
    for (int64_t i = 0; i < n; i++)                                                                  \
      for (int64_t j = i + 1; j < n; j++) A[i * n + j] = 0;                                          \
    for (int64_t j0 = 0; j0 < n; j0 += 8) {                                                          \
      if (j0 + 8 < n)                                                                                \
        trsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)(n - j0 - 8), 8, \
             (T)1, A + j0 * n + j0, (int)n, A + (j0 + 8) * n + j0, (int)n);                          \
      for (int a = 0; a < 8; a++)                                                                    \
        for (int b = 0; b < 8; b++) A[(j0 + a) * n + j0 + b] = a == b;                               \
    }                                                                                                \
  }
UNIT_BLOCK_LOWER(unit_block_lower_f64, double, cblas_dtrsm)
UNIT_BLOCK_LOWER(unit_block_lower_f32, float, cblas_strsm)
#undef UNIT_BLOCK_LOWER

/* Cholesky (lower, by chol) of A in place, then unit block-lower L. Returns 0 on success, else a reason. */
static const char *block_ldl_f64(double *A, int64_t n, e8q_ldl_cholesky chol) {
  int info = chol((int)n, A);
  if (info != 0) return info > 0 ? "not positive definite" : "invalid argument to dpotrf";
  unit_block_lower_f64(A, n);
  return all_finite_d(A, n * n) ? NULL : "non-finite factor";
}

static const char *block_ldl_f32(float *A, int64_t n) {
  int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', (int)n, A, (int)n);
  if (info != 0) return info > 0 ? "not positive definite" : "invalid argument to spotrf";
  unit_block_lower_f32(A, n);
  return all_finite_f(A, n * n) ? NULL : "non-finite factor";
}

/* inverses of the 8x8 diagonal blocks of the prepared H */
static const char *block_inverses(const double *H, int64_t n, double *out) {
  for (int64_t k = 0; k < n / 8; k++) {
    double *B = out + k * 64;
    for (int a = 0; a < 8; a++)
      for (int b = 0; b < 8; b++) B[a * 8 + b] = H[(8 * k + a) * n + 8 * k + b];
    if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', 8, B, 8) != 0) return "diagonal block not positive definite";
    if (LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', 8, B, 8) != 0) return "diagonal block not invertible";
    for (int a = 0; a < 8; a++)
      for (int b = a + 1; b < 8; b++) B[a * 8 + b] = B[b * 8 + a];
  }
  return all_finite_d(out, n * 8) ? NULL : "non-finite block inverse";
}

/* one attempt; fills f on success */
static const char *ldl_try(e8q_ldl *f, const double *H_raw, int64_t n, double sigma, e8q_prec prec,
                           e8q_ldl_cholesky chol) {
  memset(f, 0, sizeof *f);
  f->n = n;
  f->prec = prec;
  f->sigma_reg = sigma;
  double *H = e8q_malloc(sizeof(double) * (size_t)(n * n), "prepared Hessian");
  memcpy(H, H_raw, sizeof(double) * (size_t)(n * n));
  e8q_hessian_prep(H, n, sigma);
  const char *why = all_finite_d(H, n * n) ? NULL : "non-finite Hessian";
  f->Hkk_inv = e8q_malloc(sizeof(double) * (size_t)(n * 8), "Hessian block inverses");
  if (!why) why = block_inverses(H, n, f->Hkk_inv);
  if (!why && prec == E8Q_PREC_F64) {
    f->L = e8q_malloc(sizeof(double) * (size_t)(n * n), "LDL factor");
    memcpy(f->L, H, sizeof(double) * (size_t)(n * n));
    why = block_ldl_f64(f->L, n, chol);
    f->H = H;
    H = NULL;
  } else if (!why) {
    f->Lf = e8q_malloc(sizeof(float) * (size_t)(n * n), "LDL factor (f32)");
    f->Hf = e8q_malloc(sizeof(float) * (size_t)(n * n), "prepared Hessian (f32)");
    for (int64_t i = 0; i < n * n; i++) f->Lf[i] = f->Hf[i] = (float)H[i];
    why = block_ldl_f32(f->Lf, n);
  }
  free(H);
  if (why) e8q_ldl_free(f);
  return why;
}

int e8q_ldl_build(e8q_ldl *f, const double *H_raw, int64_t n, double sigma_reg, e8q_prec prec, e8q_ldl_status *st) {
  return e8q_ldl_build_chol(f, H_raw, n, sigma_reg, prec, NULL, st);
}

int e8q_ldl_build_chol(e8q_ldl *f, const double *H_raw, int64_t n, double sigma_reg, e8q_prec prec,
                       e8q_ldl_cholesky chol, e8q_ldl_status *st) {
  E8Q_CHECK(n > 0 && n % 8 == 0, "LDL of a %lld x %lld Hessian: the size must be a positive multiple of 8 (pad first)",
            (long long)n, (long long)n);
  E8Q_CHECK(!chol || prec == E8Q_PREC_F64, "LDL with a caller's Cholesky: only in f64 (the f32 attempt is LAPACK's)");
  if (!chol) chol = cholesky_lapacke;
  memset(st, 0, sizeof *st);
  const char *why1 = NULL, *why2 = NULL, *why3 = NULL;
  st->attempts = 1;
  if (prec == E8Q_PREC_F32) {
    why1 = ldl_try(f, H_raw, n, sigma_reg, E8Q_PREC_F32, chol);
    if (!why1) {
      st->ok = 1, st->prec = E8Q_PREC_F32, st->sigma_reg = sigma_reg;
      snprintf(st->message, sizeof st->message, "LDL ok (f32, sigma_reg %g)", sigma_reg);
      return 1;
    }
    st->fell_back_f64 = 1;
    st->attempts++;
  }
  why2 = ldl_try(f, H_raw, n, sigma_reg, E8Q_PREC_F64, chol);
  if (!why2) {
    st->ok = 1, st->prec = E8Q_PREC_F64, st->sigma_reg = sigma_reg;
    if (why1) snprintf(st->message, sizeof st->message, "LDL in f32 failed (%s); retried in f64: ok (sigma_reg %g)", why1, sigma_reg);
    else snprintf(st->message, sizeof st->message, "LDL ok (f64, sigma_reg %g)", sigma_reg);
    return 1;
  }
  st->attempts++;
  st->more_damping = 1;
  why3 = ldl_try(f, H_raw, n, 10 * sigma_reg, E8Q_PREC_F64, chol);
  st->prec = E8Q_PREC_F64;
  st->sigma_reg = 10 * sigma_reg;
  if (!why3) {
    st->ok = 1;
    snprintf(st->message, sizeof st->message, "LDL failed%s%s%s, in f64 (%s); retried with 10x damping (sigma_reg %g): ok",
             why1 ? " in f32 (" : "", why1 ? why1 : "", why1 ? ")" : "", why2, 10 * sigma_reg);
    return 1;
  }
  snprintf(st->message, sizeof st->message,
           "LDL failed%s%s%s, in f64 (%s) and with 10x damping (%s): the Hessian is unusable (check the calibration data)",
           why1 ? " in f32 (" : "", why1 ? why1 : "", why1 ? ")" : "", why2, why3);
  return 0;
}

void e8q_ldl_free(e8q_ldl *f) {
  free(f->H), free(f->L), free(f->Hf), free(f->Lf), free(f->Hkk_inv);
  memset(f, 0, sizeof *f);
}

/* ---------------------------------------------------------------- LDLQ entry points */
static void check_rows(const e8q_ldl *f, int64_t m, int64_t r0, int64_t r1) {
  E8Q_CHECK(f->L || f->Lf, "LDLQ without a factorisation (e8q_ldl_build failed or was not called)");
  E8Q_CHECK(0 <= r0 && r0 <= r1 && r1 <= m, "LDLQ rows [%lld, %lld) outside the %lld rows", (long long)r0, (long long)r1,
            (long long)m);
}

void e8q_ldlq_rows(const e8q_ldl *f, const e8q_ldlq_opts *o, const double *W, int64_t m, int64_t r0, int64_t r1,
                   uint16_t *codes, void *codes2, double *What) {
  check_rows(f, m, r0, r1);
  if (r0 == r1) return;
  if (f->prec == E8Q_PREC_F64) ldlq_rows_f64(f, o, f->L, f->H, W, r0, r1, codes, codes2, What);
  else ldlq_rows_f32(f, o, f->Lf, f->Hf, W, r0, r1, codes, codes2, What);
}

static double fac_L(const e8q_ldl *f, int64_t i, int64_t j) { return f->L ? f->L[i * f->n + j] : (double)f->Lf[i * f->n + j]; }
static double fac_H(const e8q_ldl *f, int64_t i, int64_t j) { return f->H ? f->H[i * f->n + j] : (double)f->Hf[i * f->n + j]; }

void e8q_ldlq_rows_ref(const e8q_ldl *f, const e8q_ldlq_opts *o, const double *W, int64_t m, int64_t r0, int64_t r1,
                       uint16_t *codes, void *codes2, double *What) {
  check_rows(f, m, r0, r1);
  const int64_t n = f->n, nb = n / 8;
  double *hat = e8q_calloc((size_t)n, sizeof(double), "LDLQ reference row");
  for (int64_t r = r0; r < r1; r++) {
    const double *w = W + r * n;
    memset(hat, 0, sizeof(double) * n);
    for (int64_t k = nb - 1; k >= 0; k--) {
      double x[8], q[8];
      for (int t = 0; t < 8; t++) {
        x[t] = w[8 * k + t];
        if (o->feedback)
          for (int64_t j = 8 * k + 8; j < n; j++) x[t] += (w[j] - hat[j]) * fac_L(f, j, 8 * k + t);
      }
      quant8(o, x, q, codes, codes2, r * nb + k);
      memcpy(hat + 8 * k, q, sizeof q);
    }
    for (int it = 0; o->feedback && it < o->tune_iters; it++)
      for (int64_t k = nb - 1; k >= 0; k--) {
        double g[8], x[8], q[8];
        for (int s = 0; s < 8; s++) {
          g[s] = 0;
          for (int64_t j = 0; j < n; j++) g[s] += (w[j] - hat[j]) * fac_H(f, j, 8 * k + s);
        }
        for (int t = 0; t < 8; t++) {
          x[t] = hat[8 * k + t];
          for (int s = 0; s < 8; s++) x[t] += g[s] * f->Hkk_inv[k * 64 + s * 8 + t];
        }
        quant8(o, x, q, codes, codes2, r * nb + k);
        memcpy(hat + 8 * k, q, sizeof q);
      }
    if (What) memcpy(What + r * n, hat, sizeof(double) * n);
  }
  free(hat);
}

void e8q_ldlq_split_rows(int64_t m, int nparts, int part, int64_t *r0, int64_t *r1) {
  E8Q_CHECK(nparts >= 1 && part >= 0 && part < nparts, "row split: part %d of %d", part, nparts);
  int64_t tiles = (m + E8Q_LDLQ_ROW_TILE - 1) / E8Q_LDLQ_ROW_TILE;
  int64_t t0 = tiles * part / nparts, t1 = tiles * (part + 1) / nparts;
  *r0 = t0 * E8Q_LDLQ_ROW_TILE < m ? t0 * E8Q_LDLQ_ROW_TILE : m;
  *r1 = t1 * E8Q_LDLQ_ROW_TILE < m ? t1 * E8Q_LDLQ_ROW_TILE : m;
}

/* ---------------------------------------------------------------- losses */
double e8q_proxy_loss(const double *W, const double *What, const double *H, int64_t n, int64_t r0, int64_t r1) {
  int64_t rows = r1 - r0;
  if (rows <= 0) return 0;
  double *E = e8q_malloc(sizeof(double) * (size_t)(rows * n), "proxy residual");
  double *P = e8q_malloc(sizeof(double) * (size_t)(rows * n), "proxy product");
  for (int64_t i = 0; i < rows * n; i++) E[i] = What[r0 * n + i] - W[r0 * n + i];
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)n, (int)n, 1.0, E, (int)n, H, (int)n, 0.0, P, (int)n);
  double num = 0, den = 0;
  for (int64_t i = 0; i < rows * n; i++) num += E[i] * P[i];
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)n, (int)n, 1.0, W + r0 * n, (int)n, H, (int)n, 0.0,
              P, (int)n);
  for (int64_t i = 0; i < rows * n; i++) den += W[r0 * n + i] * P[i];
  free(E), free(P);
  return den > 0 ? num / den : (num > 0 ? INFINITY : 0);
}

double e8q_rel_fro(const double *W, const double *What, int64_t count) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < count; i++) {
    double e = What[i] - W[i];
    num += e * e;
    den += W[i] * W[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---------------------------------------------------------------- baselines */
double e8q_noe8_rho(int bits) {
  E8Q_CHECK(bits >= 2 && bits <= 4, "noe8 baseline: %d bits is not supported (2, 3 or 4)", bits);
  return bits == 2 ? 1.00 : bits == 3 ? 1.71 : 2.98;
}

void e8q_rtn_rows(const double *W, int64_t m, int64_t n, int64_t ld, int bits, double *What) {
  E8Q_CHECK(bits >= 1 && bits <= 16 && n >= 1 && n <= ld, "rtn: %d bits, %lld of %lld columns", bits, (long long)n,
            (long long)ld);
  double levels = (double)((1 << bits) - 1);
  for (int64_t r = 0; r < m; r++) {
    const double *w = W + r * ld;
    double lo = w[0], hi = w[0];
    for (int64_t j = 1; j < n; j++) lo = fmin(lo, w[j]), hi = fmax(hi, w[j]);
    double step = (hi - lo) / levels;
    for (int64_t j = 0; j < n; j++) What[r * ld + j] = step > 0 ? lo + round((w[j] - lo) / step) * step : w[j];
    for (int64_t j = n; j < ld; j++) What[r * ld + j] = 0;
  }
}
