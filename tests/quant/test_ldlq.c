/* tests/quant/test_ldlq.c: block LDLQ against the reference's golden example, the buffered
 * fast path against the unbuffered reference, row splits, ordering of the proxy loss on an
 * ill-conditioned Hessian, the factorisation fallbacks, and the one-linear helper. */
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

/* ---------------------------------------------------------------- synthetic problems */
/* H = Q diag(lambda) Q^T + noise-free, lambda log-spaced over `decades`; W Gaussian */
static double *synth_hessian(int64_t n, double decades, uint64_t seed) {
  e8q_had_factor q;
  e8q_had_factor_build(&q, (int)n, seed); /* random orthogonal when no Paley order: any n works */
  double *H = calloc((size_t)(n * n), sizeof(double));
  double s = 1.0 / (double)n;
  for (int64_t k = 0; k < n; k++) {
    double lam = pow(10.0, -decades * (double)k / (double)(n - 1));
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < n; j++) H[i * n + j] += lam * q.R[i * n + k] * q.R[j * n + k] * s;
  }
  e8q_had_factor_free(&q);
  return H;
}

static double *synth_weight(int64_t m, int64_t n, uint64_t seed) {
  double *W = malloc(sizeof(double) * (size_t)(m * n));
  e8q_rng_fill_normal(seed, E8Q_RNG_STREAM_TEST, 0, (size_t)(m * n), W);
  return W;
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

/* ---------------------------------------------------------------- proxy ordering */
static void test_ill_conditioned_ordering(void **state) {
  (void)state;
  const int64_t m = 64, n = 128;
  double *H = synth_hessian(n, 5, 61), *Wd = synth_weight(m, n, 62);
  float *W = malloc(sizeof(float) * m * n);
  for (int64_t i = 0; i < m * n; i++) W[i] = (float)Wd[i];
  double proxy[6];
  const char *name[6] = {"ldlq+tune", "ldlq", "nearest", "noe8", "rtn", "ldlq+tune 4 bit"};
  for (int v = 0; v < 6; v++) {
    e8q_quant_opts o = {.bits = v == 5 ? 4 : 2, .rho = 0, .tune_iters = v == 0 || v == 5 ? 10 : 0, .seed = 7, .prec = E8Q_PREC_F64,
                        .method = v <= 1 || v == 5 ? E8Q_METHOD_LDLQ : v == 2 ? E8Q_METHOD_NEAREST : v == 3 ? E8Q_METHOD_NOE8 : E8Q_METHOD_RTN};
    e8q_quant_result r;
    e8q_quantize_linear(W, m, n, H, &o, &r);
    assert_true(r.status.ok);
    assert_non_null(r.What);
    proxy[v] = r.proxy;
    print_message("%-16s proxy %.5f  rel_fro %.4f  (%s)\n", name[v], r.proxy, r.rel_fro, r.status.message);
    /* the helper's proxy equals the proxy of its What in the original basis */
    if (v == 0) {
      double *Hp = malloc(sizeof(double) * n * n), *Wh = malloc(sizeof(double) * m * n);
      memcpy(Hp, H, sizeof(double) * n * n);
      e8q_hessian_prep(Hp, n, 0.01);
      for (int64_t i = 0; i < m * n; i++) Wh[i] = r.What[i];
      double direct = e8q_proxy_loss(Wd, Wh, Hp, n, 0, m);
      T_NEAR(direct, r.proxy, 1e-5 * r.proxy + 1e-9, "proxy in the original basis");
      assert_non_null(r.codes);
      assert_null(r.codes2);
      assert_int_equal(r.K_n, 1);
      free(Hp), free(Wh);
    }
    e8q_quant_result_free(&r);
  }
  assert_true(proxy[0] < proxy[1]);
  assert_true(proxy[1] < proxy[2]);
  assert_true(proxy[0] < proxy[3]); /* E8 beats the scalar grid */
  assert_true(proxy[0] < proxy[4]); /* and plain round to nearest */
  assert_true(proxy[5] < proxy[0] / 4);
  free(H), free(Wd), free(W);
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
  /* the one-linear helper reports it instead of failing */
  float W[8 * 32];
  for (int i = 0; i < 8 * 32; i++) W[i] = (float)cos(i);
  e8q_quant_opts o = {.bits = 2, .tune_iters = 0, .seed = 1, .method = E8Q_METHOD_LDLQ};
  e8q_quant_result r;
  e8q_quantize_linear(W, 8, n, H, &o, &r);
  assert_false(r.status.ok);
  assert_null(r.What);
  e8q_quant_result_free(&r);
  /* non-finite Hessians are bad input */
  H[5] = NAN;
  E8Q_EXPECT_FATAL(e8q_quantize_linear(W, 8, n, H, &o, &r), "linear: Hessian entry (0, 5)");
  /* messages name the linear when the caller gives its name */
  o.name = "model.layers.1.mlp.down_proj";
  E8Q_EXPECT_FATAL(e8q_quantize_linear(W, 8, n, H, &o, &r), "model.layers.1.mlp.down_proj: Hessian entry (0, 5)");
  H[5] = 0;
  W[9] = INFINITY;
  E8Q_EXPECT_FATAL(e8q_quantize_linear(W, 8, n, H, &o, &r), "model.layers.1.mlp.down_proj: weight entry (0, 9) is inf");
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

/* ---------------------------------------------------------------- one linear, padded shape */
static void test_quantize_linear_padded(void **state) {
  (void)state;
  /* stories260K's down_proj shape: n = 172 -> 176, K = 44 (Paley) for the padded input */
  const int64_t m = 64, n = 172;
  double *H = synth_hessian(n, 2, 71), *Wd = synth_weight(m, n, 72);
  float *W = malloc(sizeof(float) * m * n);
  for (int64_t i = 0; i < m * n; i++) W[i] = (float)(0.02 * Wd[i]);
  double proxies[5] = {0};
  for (int bits = 2; bits <= 4; bits++) {
    e8q_quant_opts o = {.bits = bits, .rho = 0, .tune_iters = 2, .seed = 99, .method = E8Q_METHOD_LDLQ, .prec = E8Q_PREC_F32};
    e8q_quant_result r;
    e8q_quantize_linear(W, m, n, H, &o, &r);
    assert_true(r.status.ok);
    assert_int_equal(r.n_pad, 176);
    assert_int_equal(r.K_n, 44);
    assert_int_equal(r.K_m, 1);
    print_message("bits %d: proxy %.5f rel_fro %.4f Wscale %g\n", bits, r.proxy, r.rel_fro, r.Wscale);
    /* decode the codes by hand: What = first n columns of SV M_m (Wscale Q) M_n^T SU */
    e8q_had hm, hn;
    e8q_had_init(&hm, m, E8Q_HAD_SEED);
    e8q_had_init(&hn, r.n_pad, E8Q_HAD_SEED);
    double *Q = malloc(sizeof(double) * m * r.n_pad), SU[176], SV[64];
    for (int64_t i = 0; i < m * r.n_pad / 8; i++) {
      uint16_t c2 = bits == 4 ? ((uint16_t *)r.codes2)[i] : bits == 3 ? ((uint8_t *)r.codes2)[i] : 0;
      e8q_cb_decode_f64(r.cb, r.codes[i], c2, Q + 8 * i);
    }
    for (int64_t i = 0; i < m * r.n_pad; i++) Q[i] *= r.Wscale;
    for (int64_t j = 0; j < r.n_pad; j++) SU[j] = r.SU[j];
    for (int64_t i = 0; i < m; i++) SV[i] = r.SV[i];
    e8q_rht_weight_inv(&hm, &hn, SU, SV, Q);
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) T_NEAR(Q[i * r.n_pad + j], r.What[i * n + j], 1e-6, "decoded codes vs What");
    proxies[bits] = r.proxy;
    free(Q);
    e8q_had_free(&hm), e8q_had_free(&hn);
    e8q_quant_result_free(&r);
  }
  /* more bits, less loss: each extra bit should cut the proxy loss by well over half */
  assert_true(proxies[2] < 0.1);
  assert_true(proxies[3] < proxies[2] / 2);
  assert_true(proxies[4] < proxies[3] / 2);
  E8Q_EXPECT_FATAL(e8q_method_from_name("gptq"), "gptq", "ldlq");
  assert_int_equal(e8q_method_from_name("noe8"), E8Q_METHOD_NOE8);
  free(H), free(Wd), free(W);
}

/* ---------------------------------------------------------------- fused groups */
static void test_quantize_fused(void **state) {
  (void)state;
  /* q, k, v with very different scales: v is 1000x smaller. With fuse scales every piece keeps
   * its own relative precision; stacking raw rows would leave v with almost none. */
  const int64_t n = 64, mq = 64, mk = 32, mv = 32;
  double *H = synth_hessian(n, 2, 81);
  double *Wd = synth_weight(mq + mk + mv, n, 82);
  float *q = malloc(sizeof(float) * mq * n), *k = malloc(sizeof(float) * mk * n), *v = malloc(sizeof(float) * mv * n);
  for (int64_t i = 0; i < mq * n; i++) q[i] = (float)(0.05 * Wd[i]);
  for (int64_t i = 0; i < mk * n; i++) k[i] = (float)(0.02 * Wd[mq * n + i]);
  for (int64_t i = 0; i < mv * n; i++) v[i] = (float)(5e-5 * Wd[(mq + mk) * n + i]);
  const float *W[3] = {q, k, v};
  const int64_t m[3] = {mq, mk, mv};
  float fs[3];
  e8q_quant_opts o = {.bits = 2, .tune_iters = 2, .seed = 3, .method = E8Q_METHOD_LDLQ, .prec = E8Q_PREC_F64};
  e8q_quant_result r;
  e8q_quantize_fused(W, m, 3, n, H, &o, &r, fs);
  assert_true(r.status.ok);
  assert_int_equal(r.m, mq + mk + mv);
  T_NEAR(fs[0], 0.05, 0.005, "fuse scale of q");
  T_NEAR(fs[2], 5e-5, 5e-6, "fuse scale of v");
  double err[3];
  int64_t off = 0;
  for (int p = 0; p < 3; p++) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < m[p] * n; i++) {
      double d = (double)r.What[off * n + i] - W[p][i];
      num += d * d, den += (double)W[p][i] * W[p][i];
    }
    err[p] = sqrt(num / den);
    off += m[p];
  }
  print_message("fused q/k/v relative errors %.3f %.3f %.3f (stack %.3f)\n", err[0], err[1], err[2], r.rel_fro);
  assert_true(err[2] < 2 * err[0] && err[2] < 0.8);
  e8q_quant_result_free(&r);
  free(H), free(Wd), free(q), free(k), free(v);
}


/* ---------------------------------------------------------------- rtn on a padded shape */
static void test_rtn_padded_minmax(void **state) {
  (void)state;
  /* n = 12 is padded to 16 inside e8q_quantize_linear. Per-row min-max round to nearest must
   * use the row's own range: rows of one sign (here all in [1, 2]) must not see the zero pad
   * columns, so the row's minimum and maximum are reproduced exactly and every value lies on
   * the grid lo + k (hi - lo) / 3 (2 bits). */
  enum { M = 4, N = 12 };
  float W[M * N];
  double H[N * N];
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) H[i * N + j] = i == j ? 1.0 + 0.1 * i : 0.05;
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) W[r * N + c] = (float)((r % 2 ? -1.0 : 1.0) * (1.0 + fmod(0.37 * (c + 1) * (r + 2), 1.0)));
  e8q_quant_opts o = {.bits = 2, .tune_iters = 0, .seed = 1, .method = E8Q_METHOD_RTN};
  e8q_quant_result res;
  e8q_quantize_linear(W, M, N, H, &o, &res);
  assert_true(res.status.ok);
  assert_int_equal(res.n_pad, 16);
  for (int r = 0; r < M; r++) {
    double lo = W[r * N], hi = W[r * N];
    for (int c = 1; c < N; c++) lo = fmin(lo, W[r * N + c]), hi = fmax(hi, W[r * N + c]);
    double step = (hi - lo) / 3;
    for (int c = 0; c < N; c++) {
      double want = lo + round((W[r * N + c] - lo) / step) * step;
      T_NEAR(res.What[r * N + c], want, 1e-6, "rtn value on the row's own min-max grid");
    }
  }
  e8q_quant_result_free(&res);
}

/* ---------------------------------------------------------------- fused group, degenerate pieces */
static void test_quantize_fused_zero_and_tiny_pieces(void **state) {
  (void)state;
  /* piece 0 ordinary, piece 1 all zero, piece 2 all zero but one subnormal entry: its RMS
   * (about 2e-47) is positive in double but 0 in float. The fuse scale must stay a usable
   * divisor (finite, > 0), and the result finite with the zero piece decoded near zero. */
  enum { N = 64, M0 = 16, M1 = 16, M2 = 32 };
  double *H = synth_hessian(N, 2, 91), *Wd = synth_weight(M0, N, 92);
  float *a = malloc(sizeof(float) * M0 * N), *b = calloc(M1 * N, sizeof(float)), *c = calloc(M2 * N, sizeof(float));
  for (int i = 0; i < M0 * N; i++) a[i] = (float)(0.03 * Wd[i]);
  c[5] = 1e-44f;
  assert_true(c[5] > 0);
  const float *W[3] = {a, b, c};
  const int64_t m[3] = {M0, M1, M2};
  float fs[3];
  e8q_quant_opts o = {.bits = 2, .tune_iters = 1, .seed = 5, .method = E8Q_METHOD_LDLQ, .prec = E8Q_PREC_F64};
  e8q_quant_result r;
  e8q_quantize_fused(W, m, 3, N, H, &o, &r, fs);
  assert_true(r.status.ok);
  for (int p = 0; p < 3; p++) assert_true(isfinite(fs[p]) && fs[p] > 0);
  for (int64_t i = 0; i < (int64_t)(M0 + M1 + M2) * N; i++) assert_true(isfinite(r.What[i]));
  T_NEAR(fs[0], 0.03, 0.006, "fuse scale of the ordinary piece");
  e8q_quant_result_free(&r);
  /* a bad piece shape names the group */
  const int64_t m0[3] = {M0, 0, M2};
  o.name = "model.layers.0.self_attn.qkv_proj";
  E8Q_EXPECT_FATAL(e8q_quantize_fused(W, m0, 3, N, H, &o, &r, fs), "model.layers.0.self_attn.qkv_proj: fused piece 1 has 0 rows");
  free(H), free(Wd), free(a), free(b), free(c);
}

/* ---------------------------------------------------------------- all-zero weight */
static void test_quantize_linear_zero_weight(void **state) {
  (void)state;
  /* No codebook (E8P, RVQ, the noe8 half-integer grid) has a zero point, so an all-zero weight
   * must get Wscale 0 and decode to exactly 0, not to Wscale 1 times the codewords nearest 0.
   * A weight whose scale underflows in float (one subnormal entry) is treated the same way:
   * finite, |What| at most that entry. */
  enum { M = 8, N = 64 };
  double *H = synth_hessian(N, 2, 93);
  float *W = calloc(M * N, sizeof(float));
  for (int tiny = 0; tiny <= 1; tiny++) {
    W[7] = tiny ? 1e-44f : 0.0f;
    for (int v = 0; v < 5; v++) {
      e8q_quant_opts o = {.bits = v < 3 ? 2 + v : 2, .tune_iters = 2, .seed = 4, .prec = E8Q_PREC_F64,
                          .method = v < 3 ? E8Q_METHOD_LDLQ : v == 3 ? E8Q_METHOD_NEAREST : E8Q_METHOD_NOE8};
      e8q_quant_result r;
      e8q_quantize_linear(W, M, N, H, &o, &r);
      assert_true(r.status.ok);
      assert_true(isfinite(r.Wscale) && r.Wscale >= 0);
      for (int i = 0; i < M * N; i++) {
        assert_true(isfinite(r.What[i]));
        assert_true(fabsf(r.What[i]) <= W[7]);
      }
      assert_true(r.proxy == 0 || tiny);
      e8q_quant_result_free(&r);
    }
  }
  free(H), free(W);
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
  e8q_ldl_free(&f);
  float W[M * N];
  for (int i = 0; i < M * N; i++) W[i] = (float)sin(0.7 * i + 0.2);
  e8q_quant_opts o = {.bits = 2, .tune_iters = 3, .seed = 2, .method = E8Q_METHOD_LDLQ, .prec = E8Q_PREC_F64};
  e8q_quant_result r, rn;
  e8q_quantize_linear(W, M, N, H, &o, &r);
  assert_true(r.status.ok);
  assert_non_null(r.What);
  o.method = E8Q_METHOD_NEAREST;
  e8q_quantize_linear(W, M, N, H, &o, &rn);
  assert_true(rn.status.ok);
  assert_memory_equal(r.codes, rn.codes, sizeof(uint16_t) * M * N / 8);
  e8q_quant_result_free(&r);
  e8q_quant_result_free(&rn);
  free(H);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ldlq_golden_example),
      cmocka_unit_test(test_ldlq_fast_equals_ref),
      cmocka_unit_test(test_ldlq_split_rows_identical),
      cmocka_unit_test(test_ill_conditioned_ordering),
      cmocka_unit_test(test_non_pd_retry),
      cmocka_unit_test(test_ldl_caller_cholesky),
      cmocka_unit_test(test_quantize_linear_padded),
      cmocka_unit_test(test_quantize_fused),
      cmocka_unit_test(test_rtn_padded_minmax),
      cmocka_unit_test(test_quantize_fused_zero_and_tiny_pieces),
      cmocka_unit_test(test_quantize_linear_zero_weight),
      cmocka_unit_test(test_zero_hessian),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
