/* tests/quant/test_ldlq.c: the numeric steps of "quantize one linear": block LDLQ against the
 * reference's golden example, the buffered fast path against the unbuffered reference, row
 * splits, the factorisation fallbacks (also with a caller's Cholesky), an all-zero Hessian.
 * The driver that strings them together (every method, fused groups, padding, degenerate
 * weights) is tested in tests/pipeline/test_worker.c. */
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "golden.h"
#include "kernels/e8p.h"
#include "kernels/ldlq.h"
#include "synth.h"
#include "testutil.h"

/* ---------------------------------------------------------------- golden [ldlq_example] */
static void golden_problem(double *H, double *W) {
  enum { M = 8, N = 32, R = 64 };
  double A[R * N];
  for (int i = 0; i < R; i++)
    for (int j = 0; j < N; j++) A[i * N + j] = (double)(((7 * i + 13 * j + i * j) % 67) - 33) / 33;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int k = 0; k < R; k++) s += A[k * N + i] * A[k * N + j];
      H[i * N + j] = s / R;
    }
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) W[r * N + c] = (double)(((31 * r + 17 * c + r * c) % 29) - 14) / 9;
}

static void test_ldlq_golden_example(void **state) {
  (void)state;
  enum { M = 8, N = 32 };
  double H[N * N], W[M * N], Hp[N * N];
  golden_problem(H, W);
  memcpy(Hp, H, sizeof H);
  e8q_hessian_prep(Hp, N, 0.01);
  e8q_ldl f;
  e8q_ldl_status st;
  assert_true(e8q_ldl_build(&f, H, N, 0.01, E8Q_PREC_F64, &st));
  assert_int_equal(st.attempts, 1);
  char *all = g_constants();
  const char *p = g_section(all, "ldlq_example");
  char line[512];
  int tune = -1, rows_checked = 0;
  double proxy_want = 0;
  uint16_t codes[M * 4], codes_ref[M * 4];
  double hat[M * N], hat_ref[M * N];
  while ((p = g_line(p, line, sizeof line))) {
    if (sscanf(line, "tune_iters=%d proxy=%lf", &tune, &proxy_want) == 2) {
      e8q_ldlq_opts o = {.cb = E8Q_CB_E8P12, .tune_iters = tune, .feedback = 1};
      e8q_ldlq_rows(&f, &o, W, M, 0, M, codes, NULL, hat);
      e8q_ldlq_rows_ref(&f, &o, W, M, 0, M, codes_ref, NULL, hat_ref);
      double proxy = e8q_proxy_loss(W, hat, Hp, N, 0, M), proxy_ref = e8q_proxy_loss(W, hat_ref, Hp, N, 0, M);
      print_message("tune %d: proxy %.17g (reference %.17g), golden %.17g\n", tune, proxy, proxy_ref, proxy_want);
      T_NEAR(proxy, proxy_want, 1e-9, "LDLQ proxy loss");
      T_NEAR(proxy_ref, proxy_want, 1e-9, "LDLQ reference proxy loss");
      continue;
    }
    int r;
    unsigned q[4];
    if (sscanf(line, " Q[%d] = %x %x %x %x", &r, q, q + 1, q + 2, q + 3) != 5) continue;
    for (int k = 0; k < 4; k++) {
      if (codes[r * 4 + k] != q[k]) fail_msg("tune %d row %d block %d: 0x%04x, golden 0x%04x", tune, r, k, codes[r * 4 + k], q[k]);
      if (codes_ref[r * 4 + k] != q[k]) fail_msg("reference, tune %d row %d block %d: 0x%04x, golden 0x%04x", tune, r, k, codes_ref[r * 4 + k], q[k]);
    }
    rows_checked++;
  }
  assert_int_equal(rows_checked, 16);
  e8q_ldl_free(&f);
  free(all);
}

static void test_ldlq_fast_equals_ref(void **state) {
  (void)state;
  const int64_t m = 40, n = 264; /* 3 column buffers (128 + 128 + 8) */
  double *H = synth_hessian(n, 3, 41), *W = synth_weight(m, n, 42);
  e8q_ldl f;
  e8q_ldl_status st;
  assert_true(e8q_ldl_build(&f, H, n, 0.01, E8Q_PREC_F64, &st));
  const e8q_codebook_id cbs[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ4B, E8Q_CB_E8P12RVQ3B};
  for (int c = 0; c < 3; c++) {
    for (int tune = 0; tune <= 2; tune += 2) {
      e8q_ldlq_opts o = {.cb = cbs[c], .tune_iters = tune, .feedback = 1};
      uint16_t *a = malloc(2 * m * n / 8), *b = malloc(2 * m * n / 8), *a2 = calloc((size_t)(m * n / 8), 2), *b2 = calloc((size_t)(m * n / 8), 2);
      double *ha = malloc(sizeof(double) * m * n), *hb = malloc(sizeof(double) * m * n);
      e8q_ldlq_rows(&f, &o, W, m, 0, m, a, a2, ha);
      e8q_ldlq_rows_ref(&f, &o, W, m, 0, m, b, b2, hb);
      int diff = 0;
      for (int64_t i = 0; i < m * n / 8; i++) diff += a[i] != b[i] || a2[i] != b2[i];
      if (diff) fail_msg("%s tune %d: %d of %lld codes differ between buffered and reference LDLQ", e8q_cb_name(cbs[c]), tune, diff, (long long)(m * n / 8));
      /* the decoded values are the codebook points of the codes */
      for (int64_t i = 0; i < m * n / 8; i++) {
        double v[8];
        e8q_cb_decode_f64(cbs[c], a[i], cbs[c] == E8Q_CB_E8P12RVQ3B ? ((uint8_t *)a2)[i] : a2[i], v);
        for (int t = 0; t < 8; t++) assert_true(v[t] == ha[8 * i + t]);
      }
      free(a), free(b), free(a2), free(b2), free(ha), free(hb);
    }
  }
  e8q_ldl_free(&f);
  free(H), free(W);
}

static void test_ldlq_split_rows_identical(void **state) {
  (void)state;
  const int64_t m = 600, n = 64, nb = n / 8;
  double *H = synth_hessian(n, 2, 51), *W = synth_weight(m, n, 52);
  e8q_ldl f;
  e8q_ldl_status st;
  assert_true(e8q_ldl_build(&f, H, n, 0.01, E8Q_PREC_F32, &st));
  assert_int_equal(st.prec, E8Q_PREC_F32);
  e8q_ldlq_opts o = {.cb = E8Q_CB_E8P12RVQ4B, .tune_iters = 3, .feedback = 1};
  uint16_t *one = malloc(2 * m * nb), *one2 = malloc(2 * m * nb), *split = malloc(2 * m * nb), *split2 = malloc(2 * m * nb);
  double *h1 = malloc(sizeof(double) * m * n), *h2 = malloc(sizeof(double) * m * n);
  e8q_ldlq_rows(&f, &o, W, m, 0, m, one, one2, h1);
  for (int parts = 2; parts <= 3; parts++) {
    memset(split, 0, 2 * m * nb);
    int64_t covered = 0;
    for (int p = parts - 1; p >= 0; p--) { /* any order */
      int64_t r0, r1;
      e8q_ldlq_split_rows(m, parts, p, &r0, &r1);
      assert_true(r0 % E8Q_LDLQ_ROW_TILE == 0);
      covered += r1 - r0;
      e8q_ldlq_rows(&f, &o, W, m, r0, r1, split, split2, h2);
    }
    assert_int_equal(covered, m);
    assert_memory_equal(one, split, 2 * m * nb);
    assert_memory_equal(one2, split2, 2 * m * nb);
    assert_memory_equal(h1, h2, sizeof(double) * m * n);
  }
  /* and independent of the thread count: 1 thread against at least 2, whatever OMP_NUM_THREADS
   * says (`one` ran with the default, which may itself be 1) */
  int threads = omp_get_max_threads();
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t == 0 ? 1 : threads > 1 ? threads : 2);
    memset(split, 0, 2 * m * nb);
    memset(split2, 0, 2 * m * nb);
    e8q_ldlq_rows(&f, &o, W, m, 0, m, split, split2, h2);
    assert_memory_equal(one, split, 2 * m * nb);
    assert_memory_equal(one2, split2, 2 * m * nb);
    assert_memory_equal(h1, h2, sizeof(double) * m * n);
  }
  omp_set_num_threads(threads);
  e8q_ldl_free(&f);
  free(H), free(W), free(one), free(one2), free(split), free(split2), free(h1), free(h2);
}

/* ---------------------------------------------------------------- fallbacks */
static void test_non_pd_retry(void **state) {
  (void)state;
  const int64_t n = 32;
  /* H = I - 1.05 v v^T: eigenvalue -0.05 along v; after normalisation + 0.01 still negative
   * (f32 and f64 fail), + 0.1 positive */
  double *H = malloc(sizeof(double) * n * n), v[32];
  double nv = 0;
  for (int64_t i = 0; i < n; i++) v[i] = sin(1.0 + i), nv += v[i] * v[i];
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) H[i * n + j] = (i == j) - 1.05 * v[i] * v[j] / nv;
  e8q_ldl f;
  e8q_ldl_status st;
  assert_true(e8q_ldl_build(&f, H, n, 0.01, E8Q_PREC_F32, &st));
  print_message("%s\n", st.message);
  assert_int_equal(st.attempts, 3);
  assert_true(st.fell_back_f64 && st.more_damping);
  assert_int_equal(st.prec, E8Q_PREC_F64);
  T_NEAR(st.sigma_reg, 0.1, 1e-15, "damping after retry");
  assert_non_null(strstr(st.message, "10x damping"));
  e8q_ldl_free(&f);
  /* hopeless: eigenvalue about -2 along v, far beyond any damping */
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) H[i * n + j] = (i == j) - 3.0 * v[i] * v[j] / nv;
  assert_false(e8q_ldl_build(&f, H, n, 0.01, E8Q_PREC_F32, &st));
  assert_int_equal(st.attempts, 3);
  assert_non_null(strstr(st.message, "unusable"));
  free(H);
}

/* ---------------------------------------------------------------- a caller's Cholesky
 * e8q_ldl_build_chol (the ScaLAPACK path of worker/quantize_linear.c): LAPACK through the callback
 * is bit for bit e8q_ldl_build; a callback's failure or non-finite factor takes the same retries
 * and messages. */
static int chol_calls, chol_nan_calls, chol_fail_calls; /* calls so far; the first *_calls misbehave */
static int chol_lapack(int n, double *A) {
  chol_calls++;
  return LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, A, n);
}
static int chol_nan(int n, double *A) {
  int info = chol_lapack(n, A);
  if (chol_calls <= chol_nan_calls) A[(size_t)(n - 1) * n + 3] = NAN; /* below the diagonal blocks */
  return info;
}
static int chol_fail(int n, double *A) {
  int info = chol_lapack(n, A);
  return chol_calls <= chol_fail_calls ? 7 : info;
}

static void test_ldl_caller_cholesky(void **state) {
  (void)state;
  const int64_t n = 48;
  double *H = synth_hessian(n, 3, 5);
  e8q_ldl a, b;
  e8q_ldl_status sa, sb;
  assert_true(e8q_ldl_build(&a, H, n, 0.01, E8Q_PREC_F64, &sa));
  chol_calls = 0;
  assert_true(e8q_ldl_build_chol(&b, H, n, 0.01, E8Q_PREC_F64, chol_lapack, &sb));
  assert_int_equal(chol_calls, 1);
  assert_memory_equal(a.H, b.H, sizeof(double) * (size_t)(n * n));
  assert_memory_equal(a.L, b.L, sizeof(double) * (size_t)(n * n));
  assert_memory_equal(a.Hkk_inv, b.Hkk_inv, sizeof(double) * (size_t)(n * 8));
  assert_string_equal(sa.message, sb.message);
  assert_int_equal(sb.attempts, 1);
  e8q_ldl_free(&b);
  /* a non-finite factor once: the 10x damping retry, reported */
  chol_calls = 0, chol_nan_calls = 1;
  assert_true(e8q_ldl_build_chol(&b, H, n, 0.01, E8Q_PREC_F64, chol_nan, &sb));
  print_message("%s\n", sb.message);
  assert_int_equal(chol_calls, 2);
  assert_true(sb.ok && sb.more_damping);
  assert_int_equal(sb.attempts, 2);
  T_NEAR(sb.sigma_reg, 0.1, 1e-15, "damping after retry");
  assert_non_null(strstr(sb.message, "(non-finite factor); retried with 10x damping"));
  for (int64_t i = 0; i < n * n; i++) assert_true(isfinite(b.L[i]));
  e8q_ldl_free(&b);
  /* always non-finite: a failure, no factor */
  chol_calls = 0, chol_nan_calls = 2;
  assert_false(e8q_ldl_build_chol(&b, H, n, 0.01, E8Q_PREC_F64, chol_nan, &sb));
  assert_false(sb.ok);
  assert_int_equal(sb.attempts, 2);
  assert_null(b.L);
  assert_non_null(strstr(sb.message, "(non-finite factor) and with 10x damping (non-finite factor)"));
  /* not positive definite (info > 0) once: the same retry */
  chol_calls = 0, chol_fail_calls = 1;
  assert_true(e8q_ldl_build_chol(&b, H, n, 0.01, E8Q_PREC_F64, chol_fail, &sb));
  assert_int_equal(sb.attempts, 2);
  assert_non_null(strstr(sb.message, "(not positive definite); retried with 10x damping"));
  e8q_ldl_free(&b);
  /* the f32 attempt has no caller's Cholesky */
  E8Q_EXPECT_FATAL(e8q_ldl_build_chol(&b, H, n, 0.01, E8Q_PREC_F32, chol_lapack, &sb), "only in f64");
  e8q_ldl_free(&a);
  free(H);
}

/* ---------------------------------------------------------------- all-zero Hessian */
static void test_zero_hessian(void **state) {
  (void)state;
  /* A linear whose calibration inputs are all zero has H = 0: every What has proxy loss 0,
   * so there is nothing to fit. Preparing it must not divide by mean(diag H) = 0 (NaN, then
   * every factorisation attempt fails): it becomes sigma_reg * I, L = I, and LDLQ reduces to
   * nearest rounding of each block. */
  enum { M = 8, N = 32 };
  double *H = calloc(N * N, sizeof(double));
  e8q_hessian_prep(H, N, 0.01);
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) assert_true(H[i * N + j] == (i == j ? 0.01 : 0.0));
  memset(H, 0, sizeof(double) * N * N);
  e8q_ldl f;
  e8q_ldl_status st;
  assert_true(e8q_ldl_build(&f, H, N, 0.01, E8Q_PREC_F64, &st));
  assert_int_equal(st.attempts, 1);
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) assert_true(f.L[i * N + j] == (i == j ? 1.0 : 0.0));
  /* LDLQ with tune passes on it is nearest rounding: the same codes as without feedback */
  double W[M * N];
  uint16_t c_ldlq[M * N / 8], c_near[M * N / 8];
  for (int i = 0; i < M * N; i++) W[i] = sin(0.7 * i + 0.2) / 0.7;
  e8q_ldlq_opts lo = {.cb = E8Q_CB_E8P12, .tune_iters = 3, .feedback = 1}, ln = {.cb = E8Q_CB_E8P12, .feedback = 0};
  e8q_ldlq_rows(&f, &lo, W, M, 0, M, c_ldlq, NULL, NULL);
  e8q_ldlq_rows(&f, &ln, W, M, 0, M, c_near, NULL, NULL);
  assert_memory_equal(c_ldlq, c_near, sizeof c_ldlq);
  e8q_ldl_free(&f);
  free(H);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ldlq_golden_example),
      cmocka_unit_test(test_ldlq_fast_equals_ref),
      cmocka_unit_test(test_ldlq_split_rows_identical),
      cmocka_unit_test(test_non_pd_retry),
      cmocka_unit_test(test_ldl_caller_cholesky),
      cmocka_unit_test(test_zero_hessian),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
