/* tests/quant/test_hadamard.c: FWHT against the explicit Sylvester product, Paley and random
 * factors, orthonormality of M_n for the Llama-family sizes, golden transforms with the
 * reference's factors, RHT of weights and Hessians, padding. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "golden.h"
#include "kernels/hadamard.h"
#include "testutil.h"

static double *randvec(int64_t n, uint64_t seed) {
  double *x = malloc(sizeof(double) * (size_t)n);
  e8q_rng_fill_normal(seed, E8Q_RNG_STREAM_TEST, 0, (size_t)n, x);
  return x;
}

static double maxabs_diff(const double *a, const double *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]));
  return m;
}

/* ---------------------------------------------------------------- FWHT */
static void test_fwht_vs_explicit(void **state) {
  (void)state;
  for (int64_t n = 1; n <= 2048; n *= 2) {
    double *x = randvec(n, (uint64_t)n), *y = malloc(sizeof(double) * n), *r = malloc(sizeof(double) * n);
    float *xf = malloc(sizeof(float) * n);
    memcpy(y, x, sizeof(double) * n);
    for (int64_t i = 0; i < n; i++) xf[i] = (float)x[i];
    e8q_fwht_f64(y, n);
    e8q_fwht_f32(xf, n);
    e8q_fwht_f64_ref(x, n, r);
    double scale = sqrt((double)n);
    T_NEAR(maxabs_diff(y, r, n) / scale, 0, 1e-14, "fwht_f64 vs explicit");
    for (int64_t i = 0; i < n; i++) T_NEAR(xf[i] / scale, r[i] / scale, 1e-5, "fwht_f32 vs explicit");
    free(x), free(y), free(r), free(xf);
  }
  float z[12];
  E8Q_EXPECT_FATAL(e8q_fwht_f32(z, 12), "power of two");
}

/* ---------------------------------------------------------------- factors */
static void test_paley_factors(void **state) {
  (void)state;
  const int paley[] = {12, 20, 28, 36, 44, 52, 60, 68, 76, 84, 100, 108, 124, 132, 140, 148, 164};
  for (size_t t = 0; t < sizeof paley / sizeof *paley; t++) {
    int K = paley[t];
    e8q_had_factor f;
    e8q_had_factor_build(&f, K, E8Q_HAD_SEED);
    if (f.kind != E8Q_HAD_PALEY1 && f.kind != E8Q_HAD_PALEY2) fail_msg("K=%d built as %s, expected a Paley construction", K, e8q_had_kind_name(f.kind));
    for (int i = 0; i < K * K; i++) assert_true(f.R[i] == 1.0 || f.R[i] == -1.0);
    /* +-1 entries: R R^T is computed exactly in double */
    if (e8q_had_factor_error(&f) != 0) fail_msg("K=%d: R R^T != K I", K);
    e8q_had_factor_free(&f);
  }
  /* no Paley construction: seeded random orthogonal, reproducible */
  e8q_had_factor a, b;
  e8q_had_factor_build(&a, 172, E8Q_HAD_SEED);
  e8q_had_factor_build(&b, 172, E8Q_HAD_SEED);
  assert_int_equal(a.kind, E8Q_HAD_RANDOM);
  assert_memory_equal(a.R, b.R, sizeof(double) * 172 * 172);
  T_NEAR(e8q_had_factor_error(&a) / 172, 0, 1e-13, "random orthogonal 172: |R R^T/K - I|");
  e8q_had_factor_free(&b);
  e8q_had_factor_build(&b, 172, E8Q_HAD_SEED + 1);
  assert_true(memcmp(a.R, b.R, sizeof(double) * 172 * 172) != 0);
  e8q_had_factor_free(&a);
  e8q_had_factor_free(&b);
  /* a corrupted factor is refused with a message */
  double bad[16] = {1, 1, 1, 1, 1, -1, 1, -1, 1, 1, -1, -1, 1, -1, -1, 2};
  E8Q_EXPECT_FATAL(e8q_had_factor_from(&a, 4, bad, E8Q_HAD_GIVEN, "hadamard.K4"), "hadamard.K4", "not orthogonal");
}

static void test_choose_K(void **state) {
  (void)state;
  const int64_t n[] = {64, 4096, 12, 24, 40, 56, 72, 104, 120, 172, 176, 344, 5120, 6144, 10240, 11008, 12288, 13824, 14336, 15360, 18944, 22016, 27648, 28672, 57344};
  const int K[] = {1, 1, 12, 12, 20, 28, 36, 52, 60, 172, 44, 172, 20, 12, 20, 172, 12, 108, 28, 60, 148, 172, 108, 28, 28};
  for (size_t i = 0; i < sizeof n / sizeof *n; i++)
    if (e8q_had_choose_K(n[i]) != K[i]) fail_msg("n=%lld: K=%d, expected %d", (long long)n[i], e8q_had_choose_K(n[i]), K[i]);
  E8Q_EXPECT_FATAL(e8q_had_choose_K(32001), "32001", "at most");
}

/* ---------------------------------------------------------------- orthonormality
 * M = kron(R, H_b)/sqrt(n) with H_b H_b^T = b I exactly (Sylvester), so
 * M M^T - I = kron(R R^T - K I, b I)/n and ||M M^T - I||_max = ||R R^T - K I||_max / K:
 * orthonormality is a property of the K x K factor, checked exactly in O(K^3). What remains
 * is that the fast transform really is kron(R, H_b)/sqrt(n): checked on explicit basis
 * columns (M e_j against the entry formula, O(n) each) and, to catch any indexing error
 * elsewhere, ||M x|| = ||x|| and M^T M x = x = M M^T x on random vectors. O(n^3) products are
 * out of reach for n = 57344 and are not needed. */
static double entry(const e8q_had *h, int64_t i, int64_t j) {
  int64_t b = h->b, ai = i / b, ci = i % b, aj = j / b, cj = j % b;
  double r = h->f.K == 1 ? 1.0 : h->f.R[ai * h->f.K + aj];
  return r * ((__builtin_popcountll((uint64_t)(ci & cj)) & 1) ? -1.0 : 1.0) / sqrt((double)h->n);
}

static void test_orthonormal_llama_sizes(void **state) {
  (void)state;
  const int64_t sizes[] = {64, 128, 172, 344, 4096, 5120, 6144, 8192, 10240, 11008, 12288, 13824, 14336, 15360, 18944, 22016, 27648, 28672, 57344};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    int64_t n = sizes[s];
    e8q_had h;
    e8q_had_init(&h, n, E8Q_HAD_SEED);
    double ferr = e8q_had_factor_error(&h.f) / h.f.K;
    if (ferr > 1e-12) fail_msg("n=%lld: factor K=%d has |R R^T/K - I| = %g", (long long)n, h.f.K, ferr);
    double *x = randvec(n, 100 + s), *y = malloc(sizeof(double) * n), *e = calloc((size_t)n, sizeof(double));
    for (int rep = 0; rep < 2; rep++) {
      int tr = rep;
      memcpy(y, x, sizeof(double) * n);
      e8q_had_vec_f64(&h, y, tr);
      double nx = 0, ny = 0;
      for (int64_t i = 0; i < n; i++) nx += x[i] * x[i], ny += y[i] * y[i];
      if (fabs(ny / nx - 1) > 1e-12) fail_msg("n=%lld: ||Mx||^2/||x||^2 - 1 = %g", (long long)n, ny / nx - 1);
      e8q_had_vec_f64(&h, y, !tr);
      double err = maxabs_diff(x, y, n);
      if (err > 1e-12) fail_msg("n=%lld: |M^T M x - x| = %g (transpose first %d)", (long long)n, err, tr);
    }
    const int64_t cols[] = {0, 1, n / 2 + 3, n - 1};
    for (int c = 0; c < 4; c++) {
      memset(e, 0, sizeof(double) * n);
      e[cols[c]] = 1;
      e8q_had_vec_f64(&h, e, 0);
      for (int64_t i = 0; i < n; i++)
        if (fabs(e[i] - entry(&h, i, cols[c])) > 1e-15) fail_msg("n=%lld: (M e_%lld)[%lld] = %g, formula %g", (long long)n, (long long)cols[c], (long long)i, e[i], entry(&h, i, cols[c]));
    }
    free(x), free(y), free(e);
    e8q_had_free(&h);
  }
}

/* ---------------------------------------------------------------- fast vs explicit */
static void test_transform_vs_explicit(void **state) {
  (void)state;
  const int64_t sizes[] = {8, 12, 24, 40, 64, 96, 172, 176, 344};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    int64_t n = sizes[s];
    e8q_had h;
    e8q_had_init(&h, n, 7);
    double *M = malloc(sizeof(double) * n * n);
    e8q_had_matrix_ref(&h, M);
    /* rows and columns of a matrix, both directions, double and float */
    int64_t rows = 5, ld = 7;
    double *A = randvec(rows * n, s), *B = malloc(sizeof(double) * rows * n), *ref = malloc(sizeof(double) * n);
    double *C = malloc(sizeof(double) * n * ld);
    float *Af = malloc(sizeof(float) * rows * n), *Cf = malloc(sizeof(float) * n * ld);
    for (int tr = 0; tr < 2; tr++) {
      memcpy(B, A, sizeof(double) * rows * n);
      for (int64_t i = 0; i < rows * n; i++) Af[i] = (float)A[i];
      e8q_had_rows_f64(&h, B, rows, n, tr);
      e8q_had_rows_f32(&h, Af, rows, n, tr);
      /* column matrix: C[:, c] = A[c, :] for c < rows, ld > rows */
      for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < ld; c++) C[i * ld + c] = c < rows ? A[c * n + i] : 99.0, Cf[i * ld + c] = (float)C[i * ld + c];
      e8q_had_cols_f64(&h, C, rows, ld, tr);
      e8q_had_cols_f32(&h, Cf, rows, ld, tr);
      for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < n; i++) {
          double v = 0;
          for (int64_t j = 0; j < n; j++) v += (tr ? M[j * n + i] : M[i * n + j]) * A[r * n + j];
          ref[i] = v;
        }
        double ref2[400];
        e8q_had_vec_f64_ref(&h, A + r * n, tr, ref2);
        for (int64_t i = 0; i < n; i++) {
          T_NEAR(B[r * n + i], ref[i], 1e-12, "rows_f64 vs explicit M");
          T_NEAR(ref2[i], ref[i], 1e-12, "vec_f64_ref vs explicit M");
          T_NEAR(C[i * ld + r], ref[i], 1e-12, "cols_f64 vs explicit M");
          T_NEAR(Af[r * n + i], ref[i], 2e-5, "rows_f32 vs explicit M");
          T_NEAR(Cf[i * ld + r], ref[i], 2e-5, "cols_f32 vs explicit M");
        }
      }
      for (int64_t i = 0; i < n; i++)
        for (int64_t c = rows; c < ld; c++) assert_true(C[i * ld + c] == 99.0); /* outside cols: untouched */
    }
    free(M), free(A), free(B), free(ref), free(C), free(Af), free(Cf);
    e8q_had_free(&h);
  }
}

/* ---------------------------------------------------------------- same bits on every path */
/* The float transform in its documented order, one scalar at a time: butterflies stage by stage
 * (u + v, u - v), then each output y_a = ((0 + R[a][0] z_0) + R[a][1] z_1) + ... with separate
 * multiplies and adds, then y / sqrt(n) rounded once. Whatever SIMD clone or thread split
 * e8q_had_rows_f32 takes, its bits must be these (they are what made artifacts before). */
static void rows_f32_plain(const e8q_had *h, float *x, int transpose) {
  const int64_t n = h->n, b = h->b;
  const int K = h->f.K;
  for (int a = 0; a < K; a++)
    for (int64_t st = 1; st < b; st <<= 1)
      for (int64_t i = 0; i < b; i += 2 * st)
        for (int64_t j = i; j < i + st; j++) {
          volatile float u = x[a * b + j], v = x[a * b + j + st];
          x[a * b + j] = u + v;
          x[a * b + j + st] = u - v;
        }
  float *y = malloc(sizeof(float) * (size_t)n);
  for (int a = 0; a < K; a++)
    for (int64_t c = 0; c < b; c++) {
      float acc = 0;
      for (int a2 = 0; a2 < K; a2++) {
        float r = K == 1 ? 1.0f : h->f.Rf[transpose ? a2 * K + a : a * K + a2];
        volatile float p = r * x[a2 * b + c]; /* volatile: no fused multiply-add here either */
        acc = K == 1 ? x[c] : acc + p;
      }
      y[a * b + c] = acc;
    }
  const float sn = (float)sqrt((double)n);
  for (int64_t i = 0; i < n; i++) x[i] = y[i] / sn;
  free(y);
}

static void test_rows_f32_same_bits(void **state) {
  (void)state;
  /* b = 16 (576, 960), 128, 256 (1536, 3072), 64 (11008: K = 172), 512 (14336: long enough
   * to be split across threads), 4096 (K = 1), 8 and 2 (shorter than a vector register) */
  const int64_t sizes[] = {576, 960, 1536, 3072, 11008, 14336, 4096, 96, 24};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    int64_t n = sizes[s];
    e8q_had h;
    e8q_had_init(&h, n, E8Q_HAD_SEED);
    for (int rows = 1; rows <= 3; rows += 2)
      for (int tr = 0; tr < 2; tr++) {
        double *A = randvec(rows * n, 100 + s);
        float *fast = malloc(sizeof(float) * (size_t)(rows * n)), *plain = malloc(sizeof(float) * (size_t)(rows * n));
        for (int64_t i = 0; i < rows * n; i++) fast[i] = plain[i] = (float)A[i];
        e8q_had_rows_f32(&h, fast, rows, n, tr);
        for (int r = 0; r < rows; r++) rows_f32_plain(&h, plain + r * n, tr);
        int64_t differ = 0;
        for (int64_t i = 0; i < rows * n; i++) differ += memcmp(&fast[i], &plain[i], sizeof(float)) != 0;
        if (differ) fprintf(stderr, "n=%lld K=%d rows=%d transpose=%d: %lld of %lld values differ in their bits\n",
                            (long long)n, h.f.K, rows, tr, (long long)differ, (long long)(rows * n));
        assert_int_equal(differ, 0);
        free(A), free(fast), free(plain);
      }
    e8q_had_free(&h);
  }
}

/* ---------------------------------------------------------------- golden */
static double *read_ref_factor(const char *all, int K) {
  char tag[32];
  snprintf(tag, sizeof tag, "[had%d]", K);
  const char *p = strstr(all, tag);
  if (!p) fail_msg("hadamard_matrices.txt has no %s", tag);
  p = strchr(p, '\n') + 1;
  double *R = malloc(sizeof(double) * K * K);
  for (int i = 0; i < K; i++) {
    for (int j = 0; j < K; j++) {
      if (p[j] != '+' && p[j] != '-') fail_msg("%s row %d: bad character", tag, i);
      R[i * K + j] = p[j] == '+' ? 1.0 : -1.0;
    }
    p = strchr(p, '\n') + 1;
  }
  return R;
}

static void test_golden_examples(void **state) {
  (void)state;
  char *all = g_constants();
  char *mp = t_shared_path("golden/quipsharp/hadamard_matrices.txt");
  char *mats = t_read_file(mp, NULL);
  const char *p = g_section(all, "hadamard_examples");
  static char line[1 << 16];
  int count = 0;
  while ((p = g_line(p, line, sizeof line))) {
    int n;
    char which[16];
    int off;
    if (sscanf(line, "n=%d %15s %n", &n, which, &off) != 2) continue;
    double *want = malloc(sizeof(double) * n), *x = malloc(sizeof(double) * n);
    char *q = line + off;
    for (int i = 0; i < n; i++) want[i] = strtod(q, &q);
    for (int i = 0; i < n; i++) x[i] = (double)((i * 5) % 11 - 5) / 4;
    /* the reference picks K by divisibility in the order 172 156 140 124 116 108 60 52 36 28 20 12 */
    const int order[] = {172, 156, 140, 124, 116, 108, 60, 52, 36, 28, 20, 12};
    int K = 1;
    for (int t = 0; t < 12; t++)
      if (n % order[t] == 0) {
        K = order[t];
        break;
      }
    e8q_had h;
    e8q_had_factor f;
    if (K == 1) {
      e8q_had_factor_build(&f, 1, 0);
    } else {
      double *R = read_ref_factor(mats, K);
      e8q_had_factor_from(&f, K, R, E8Q_HAD_GIVEN, "reference factor");
      free(R);
    }
    e8q_had_init_factor(&h, n, &f);
    int tr = strcmp(which, "hadUt") == 0;
    e8q_had_vec_f64(&h, x, tr);
    for (int i = 0; i < n; i++) {
      if (n == 8) {
        if (x[i] != want[i]) fail_msg("n=8 %s[%d] = %.17g, golden %.17g (must be exact)", which, i, x[i], want[i]);
      } else if (fabs(x[i] - want[i]) > 1e-13) {
        fail_msg("n=%d %s[%d] = %.17g, golden %.17g", n, which, i, x[i], want[i]);
      }
    }
    count++;
    free(want), free(x);
    e8q_had_free(&h);
    e8q_had_factor_free(&f);
  }
  assert_int_equal(count, 16);
  free(all), free(mp), free(mats);
}

/* ---------------------------------------------------------------- RHT */
static void test_rht_weight_and_hessian(void **state) {
  (void)state;
  const int64_t m = 24, n = 40;
  e8q_had hm, hn;
  e8q_had_init(&hm, m, 1);
  e8q_had_init(&hn, n, 1);
  double *W = randvec(m * n, 5), *Wr = malloc(sizeof(double) * m * n), *SU = malloc(sizeof(double) * n), *SV = malloc(sizeof(double) * m);
  for (int64_t j = 0; j < n; j++) SU[j] = e8q_rng_sign_at(9, E8Q_RNG_STREAM_SU, (uint64_t)j);
  for (int64_t i = 0; i < m; i++) SV[i] = e8q_rng_sign_at(9, E8Q_RNG_STREAM_SV, (uint64_t)i);
  memcpy(Wr, W, sizeof(double) * m * n);
  e8q_rht_weight(&hm, &hn, SU, SV, Wr);
  /* explicit: Wr = Mm^T SV W SU Mn */
  double *Mm = malloc(sizeof(double) * m * m), *Mn = malloc(sizeof(double) * n * n);
  e8q_had_matrix_ref(&hm, Mm);
  e8q_had_matrix_ref(&hn, Mn);
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double s = 0;
      for (int64_t k = 0; k < m; k++)
        for (int64_t l = 0; l < n; l++) s += Mm[k * m + i] * SV[k] * W[k * n + l] * SU[l] * Mn[l * n + j];
      T_NEAR(Wr[i * n + j], s, 1e-12, "RHT weight vs explicit");
    }
  e8q_rht_weight_inv(&hm, &hn, SU, SV, Wr);
  T_NEAR(maxabs_diff(Wr, W, m * n), 0, 1e-12, "RHT weight inverse");
  /* Hessian: explicit product and the proxy invariant tr(W H W^T) */
  double *A = randvec(n * 64, 6), *H = calloc((size_t)(n * n), sizeof(double)), *Hr = malloc(sizeof(double) * n * n);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t k = 0; k < 64; k++) H[i * n + j] += A[i * 64 + k] * A[j * 64 + k] / 64;
  memcpy(Hr, H, sizeof(double) * n * n);
  e8q_rht_hessian(&hn, SU, Hr);
  for (int64_t i = 0; i < n; i += 3)
    for (int64_t j = 0; j < n; j++) {
      double s = 0;
      for (int64_t k = 0; k < n; k++)
        for (int64_t l = 0; l < n; l++) s += Mn[k * n + i] * SU[k] * H[k * n + l] * SU[l] * Mn[l * n + j];
      T_NEAR(Hr[i * n + j], s, 1e-12, "RHT Hessian vs explicit");
    }
  memcpy(Wr, W, sizeof(double) * m * n);
  e8q_rht_weight(&hm, &hn, SU, SV, Wr);
  double t0 = 0, t1 = 0;
  for (int64_t r = 0; r < m; r++)
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < n; j++) t0 += W[r * n + i] * H[i * n + j] * W[r * n + j], t1 += Wr[r * n + i] * Hr[i * n + j] * Wr[r * n + j];
  T_NEAR(t1 / t0, 1.0, 1e-12, "tr(W H W^T) invariant under RHT");
  e8q_rht_hessian_inv(&hn, SU, Hr);
  T_NEAR(maxabs_diff(Hr, H, n * n), 0, 1e-12, "RHT Hessian inverse");
  free(W), free(Wr), free(SU), free(SV), free(Mm), free(Mn), free(A), free(H), free(Hr);
  e8q_had_free(&hm);
  e8q_had_free(&hn);
}

static void test_padding(void **state) {
  (void)state;
  assert_int_equal(e8q_pad8(172), 176);
  assert_int_equal(e8q_pad8(176), 176);
  float W[2 * 3] = {1, 2, 3, 4, 5, 6};
  double P[2 * 8];
  e8q_pad_weight(W, 2, 3, 8, P);
  const double want[16] = {1, 2, 3, 0, 0, 0, 0, 0, 4, 5, 6, 0, 0, 0, 0, 0};
  assert_memory_equal(P, want, sizeof want);
  double H[4] = {2, 1, 1, 3}, Hp[9];
  e8q_pad_hessian(H, 2, 3, Hp);
  const double wh[9] = {2, 1, 0, 1, 3, 0, 0, 0, 0};
  assert_memory_equal(Hp, wh, sizeof wh);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fwht_vs_explicit),
      cmocka_unit_test(test_paley_factors),
      cmocka_unit_test(test_choose_K),
      cmocka_unit_test(test_orthonormal_llama_sizes),
      cmocka_unit_test(test_transform_vs_explicit),
      cmocka_unit_test(test_rows_f32_same_bits),
      cmocka_unit_test(test_golden_examples),
      cmocka_unit_test(test_rht_weight_and_hessian),
      cmocka_unit_test(test_padding),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
