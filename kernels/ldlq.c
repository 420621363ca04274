/* kernels/ldlq.c: Hessian preparation, block LDL with reported fallbacks, buffered LDLQ
 * (float and double through kernels/ldlq_impl.h), the unbuffered reference, losses,
 * baselines and the one-linear helper. */
#include "kernels/ldlq.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"
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

/* Cholesky (lower, by chol) of A in place, then unit block-lower L. Returns 0 on success, else a reason. */
static const char *block_ldl_f64(double *A, int64_t n, e8q_ldl_cholesky chol) {
  int info = chol((int)n, A);
  if (info != 0) return info > 0 ? "not positive definite" : "invalid argument to dpotrf";
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = i + 1; j < n; j++) A[i * n + j] = 0;
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    if (j0 + 8 < n)
      cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)(n - j0 - 8), 8, 1.0,
                  A + j0 * n + j0, (int)n, A + (j0 + 8) * n + j0, (int)n);
    for (int a = 0; a < 8; a++)
      for (int b = 0; b < 8; b++) A[(j0 + a) * n + j0 + b] = a == b;
  }
  return all_finite_d(A, n * n) ? NULL : "non-finite factor";
}

static const char *block_ldl_f32(float *A, int64_t n) {
  int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', (int)n, A, (int)n);
  if (info != 0) return info > 0 ? "not positive definite" : "invalid argument to spotrf";
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = i + 1; j < n; j++) A[i * n + j] = 0;
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    if (j0 + 8 < n)
      cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)(n - j0 - 8), 8, 1.0f,
                  A + j0 * n + j0, (int)n, A + (j0 + 8) * n + j0, (int)n);
    for (int a = 0; a < 8; a++)
      for (int b = 0; b < 8; b++) A[(j0 + a) * n + j0 + b] = a == b;
  }
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

/* ---------------------------------------------------------------- baselines and names */
static const char *method_names[] = {"ldlq", "nearest", "noe8", "rtn"};

e8q_method e8q_method_from_name(const char *name) {
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, method_names[i]) == 0) return (e8q_method)i;
  E8Q_FATAL("unknown quantization method \"%s\": use ldlq (QuIP#), nearest, noe8 or rtn", name ? name : "(null)");
}

const char *e8q_method_name(e8q_method m) { return (unsigned)m < 4 ? method_names[m] : "?"; }

double e8q_noe8_rho(int bits) {
  E8Q_CHECK(bits >= 2 && bits <= 4, "noe8 baseline: %d bits is not supported (2, 3 or 4)", bits);
  return bits == 2 ? 1.00 : bits == 3 ? 1.71 : 2.98;
}

/* per-row min-max round to nearest with 2^bits levels (no RHT). W, What [m, ld]: the range
 * and the rounding cover the first n columns only (the zero pad columns n..ld-1 would widen
 * the range of a row of one sign); pad columns of What are set to 0. */
static void rtn_rows(const double *W, int64_t m, int64_t n, int64_t ld, int bits, double *What) {
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

/* ---------------------------------------------------------------- one linear */
void e8q_quantize_linear(const float *W, int64_t m, int64_t n, const double *H, const e8q_quant_opts *o,
                         e8q_quant_result *res) {
  const char *nm = o->name ? o->name : "linear";
  E8Q_CHECK(m > 0 && n > 0, "%s: quantize a %lld x %lld weight: empty shape", nm, (long long)m, (long long)n);
  e8q_codebook_id cb = e8q_cb_from_bits(o->bits);
  for (int64_t i = 0; i < n * n; i++)
    E8Q_CHECK(isfinite(H[i]), "%s: Hessian entry (%lld, %lld) is %g: the calibration activations overflowed", nm,
              (long long)(i / n), (long long)(i % n), H[i]);
  for (int64_t i = 0; i < m * n; i++)
    E8Q_CHECK(isfinite(W[i]), "%s: weight entry (%lld, %lld) is %g: the checkpoint is corrupt", nm, (long long)(i / n),
              (long long)(i % n), (double)W[i]);
  memset(res, 0, sizeof *res);
  const int64_t np = e8q_pad8(n), nb = np / 8;
  const double sigma = o->sigma_reg > 0 ? o->sigma_reg : E8Q_SIGMA_REG;
  res->m = m, res->n = n, res->n_pad = np, res->cb = cb, res->K_m = 1, res->K_n = 1;
  double *Wd = e8q_malloc(sizeof(double) * (size_t)(m * np), "padded weight");
  double *Hd = e8q_malloc(sizeof(double) * (size_t)(np * np), "padded Hessian");
  e8q_pad_weight(W, m, n, np, Wd);
  e8q_pad_hessian(H, n, np, Hd);
  double *hat = e8q_malloc(sizeof(double) * (size_t)(m * np), "quantized weight");

  if (o->method == E8Q_METHOD_RTN) {
    /* no RHT: quantize W directly; the proxy uses the prepared (unrotated) Hessian */
    rtn_rows(Wd, m, n, np, o->bits, hat);
    e8q_hessian_prep(Hd, np, sigma);
    res->status.ok = 1, res->status.attempts = 1, res->status.prec = E8Q_PREC_F64, res->status.sigma_reg = sigma;
    snprintf(res->status.message, sizeof res->status.message, "rtn: no factorisation");
    res->Wscale = 1;
  } else {
    e8q_had hm, hn;
    if (o->had_m) e8q_had_init_factor(&hm, m, o->had_m);
    else e8q_had_init(&hm, m, E8Q_HAD_SEED);
    if (o->had_n) e8q_had_init_factor(&hn, np, o->had_n);
    else e8q_had_init(&hn, np, E8Q_HAD_SEED);
    res->K_m = hm.f.K, res->K_n = hn.f.K;
    double *SU = e8q_malloc(sizeof(double) * (size_t)np, "SU"), *SV = e8q_malloc(sizeof(double) * (size_t)m, "SV");
    res->SU = e8q_malloc(sizeof(float) * (size_t)np, "SU");
    res->SV = e8q_malloc(sizeof(float) * (size_t)m, "SV");
    e8q_rng_fill_signs(o->seed, E8Q_RNG_STREAM_SU, 0, (size_t)np, res->SU);
    e8q_rng_fill_signs(o->seed, E8Q_RNG_STREAM_SV, 0, (size_t)m, res->SV);
    for (int64_t j = 0; j < np; j++) SU[j] = res->SU[j];
    for (int64_t i = 0; i < m; i++) SV[i] = res->SV[i];
    e8q_rht_weight(&hm, &hn, SU, SV, Wd);
    e8q_rht_hessian(&hn, SU, Hd);
    e8q_ldl f;
    if (!e8q_ldl_build(&f, Hd, np, sigma, o->prec, &res->status)) {
      free(Wd), free(Hd), free(hat), free(SU), free(SV);
      e8q_had_free(&hm), e8q_had_free(&hn);
      return; /* res->What == NULL; the caller reports res->status.message */
    }
    /* the prepared rotated Hessian for the proxy: the factorisation's own copy in f64 (the raw
     * one is no longer needed: one n x n matrix less at peak), else prepare the raw one */
    const double *Hp;
    if (f.H) {
      free(Hd);
      Hd = NULL;
      Hp = f.H;
    } else {
      e8q_hessian_prep(Hd, np, res->status.sigma_reg);
      Hp = Hd;
    }
    double ms = 0;
    for (int64_t i = 0; i < m * np; i++) ms += Wd[i] * Wd[i];
    double rho = o->method == E8Q_METHOD_NOE8 ? e8q_noe8_rho(o->bits) : o->rho > 0 ? o->rho : e8q_cb_default_rho(cb);
    double ws = sqrt(ms / (double)(m * np)) / rho;
    /* an all-zero weight, or one whose scale underflows to 0 in float: Wscale 0 and a zero
     * input to the codebook, so What is exactly 0 (no codebook has a zero point: a scale of 1
     * would decode to the codewords nearest 0, and dividing by a float 0 gives inf/NaN) */
    res->Wscale = (float)ws > 0 ? (float)ws : 0.0f;
    double *Ws = e8q_malloc(sizeof(double) * (size_t)(m * np), "scaled rotated weight");
    for (int64_t i = 0; i < m * np; i++) Ws[i] = res->Wscale > 0 ? Wd[i] / (double)res->Wscale : 0.0;
    e8q_ldlq_opts lo = {.cb = cb,
                        .tune_iters = o->tune_iters < 0 ? E8Q_TUNE_ITERS : o->tune_iters,
                        .feedback = o->method != E8Q_METHOD_NEAREST,
                        .noe8_bits = o->method == E8Q_METHOD_NOE8 ? o->bits : 0};
    if (o->method != E8Q_METHOD_NOE8) {
      res->codes = e8q_malloc(sizeof(uint16_t) * (size_t)(m * nb), "codes");
      if (cb == E8Q_CB_E8P12RVQ4B) res->codes2 = e8q_malloc(sizeof(uint16_t) * (size_t)(m * nb), "codes2");
      if (cb == E8Q_CB_E8P12RVQ3B) res->codes2 = e8q_malloc(sizeof(uint8_t) * (size_t)(m * nb), "codes2");
    }
    e8q_ldlq_rows(&f, &lo, Ws, m, 0, m, res->codes, res->codes2, hat);
    for (int64_t i = 0; i < m * np; i++) hat[i] *= (double)res->Wscale;
    free(Ws);
    /* proxy in the rotated basis (orthogonal invariance), then back to the original basis */
    res->proxy = e8q_proxy_loss(Wd, hat, Hp, np, 0, m);
    e8q_ldl_free(&f);
    e8q_rht_weight_inv(&hm, &hn, SU, SV, hat);
    free(SU), free(SV);
    e8q_had_free(&hm), e8q_had_free(&hn);
    e8q_pad_weight(W, m, n, np, Wd); /* original basis again, for the Frobenius error */
  }
  if (o->method == E8Q_METHOD_RTN) res->proxy = e8q_proxy_loss(Wd, hat, Hd, np, 0, m);
  res->What = e8q_malloc(sizeof(float) * (size_t)(m * n), "quantized weight");
  double num = 0, den = 0;
  for (int64_t r = 0; r < m; r++)
    for (int64_t j = 0; j < n; j++) {
      double v = hat[r * np + j], w = Wd[r * np + j];
      res->What[r * n + j] = (float)v;
      num += (v - w) * (v - w);
      den += w * w;
    }
  res->rel_fro = den > 0 ? sqrt(num / den) : sqrt(num);
  free(Wd), free(Hd), free(hat);
}

void e8q_quant_result_free(e8q_quant_result *r) {
  free(r->codes), free(r->codes2), free(r->SU), free(r->SV), free(r->What);
  memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- fused groups */
void e8q_quantize_fused(const float *const *W, const int64_t *m, int npieces, int64_t n, const double *H,
                        const e8q_quant_opts *o, e8q_quant_result *res, float *fuse_scales) {
  const char *nm = o->name ? o->name : "fused group";
  E8Q_CHECK(npieces >= 1, "%s: a fused group needs at least one piece (got %d)", nm, npieces);
  int64_t mt = 0;
  for (int p = 0; p < npieces; p++) {
    E8Q_CHECK(m[p] > 0, "%s: fused piece %d has %lld rows", nm, p, (long long)m[p]);
    mt += m[p];
  }
  float *S = e8q_malloc(sizeof(float) * (size_t)(mt * n), "stacked fused group");
  int64_t off = 0;
  for (int p = 0; p < npieces; p++) {
    double ss = 0;
    for (int64_t i = 0; i < m[p] * n; i++) ss += (double)W[p][i] * (double)W[p][i];
    double rms = sqrt(ss / (double)(m[p] * n));
    /* an all-zero piece keeps scale 1; so does one whose RMS underflows to 0 in float (a few
     * subnormal entries), else the division below gives inf and 0/0 */
    fuse_scales[p] = (float)rms > 0 ? (float)rms : 1.0f;
    for (int64_t i = 0; i < m[p] * n; i++) S[off * n + i] = W[p][i] / fuse_scales[p];
    off += m[p];
  }
  e8q_quantize_linear(S, mt, n, H, o, res);
  free(S);
  if (!res->What) return; /* factorisation failed: res->status says why */
  double num = 0, den = 0;
  off = 0;
  for (int p = 0; p < npieces; p++) {
    for (int64_t i = 0; i < m[p] * n; i++) {
      float v = res->What[off * n + i] * fuse_scales[p];
      res->What[off * n + i] = v;
      num += ((double)v - W[p][i]) * ((double)v - W[p][i]);
      den += (double)W[p][i] * W[p][i];
    }
    off += m[p];
  }
  res->rel_fro = den > 0 ? sqrt(num / den) : sqrt(num);
}
