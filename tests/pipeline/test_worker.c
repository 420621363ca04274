/* tests/pipeline/test_worker.c: the worker pieces of `e8q quantize` on one rank: Gram
 * matrices against their plain-loop twin, the Hessian accumulator against a float64 reference,
 * calibration windows, and quantize_group (fuse scales, proxy loss against a direct
 * recomputation from the decoded weight, the non-positive-definite retry path). */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "coordinator/calib.h"
#include "coordinator/qmodel.h"
#include "io/tokenizer.h"
#include "kernels/hadamard.h"
#include "kernels/qlinear.h"
#include "testutil.h"
#include "worker/cholesky.h"
#include "worker/hessian.h"
#include "worker/quantize_linear.h"

static void test_gram_vs_ref(void **state) {
  (void)state;
  t_rng r = {t_fresh_seed("gram")};
  int rows = 37, cols = 24;
  float *x = malloc(sizeof(float) * rows * cols);
  for (int i = 0; i < rows * cols; i++) x[i] = (float)t_rng_normal(&r);
  double *a = malloc(sizeof(double) * cols * cols), *b = malloc(sizeof(double) * cols * cols),
         *xd = malloc(sizeof(double) * rows * cols);
  e8q_hessian_gram(rows, cols, x, xd, a, 0);
  e8q_hessian_gram_ref(rows, cols, x, b);
  for (int i = 0; i < cols * cols; i++) T_NEAR(a[i], b[i], 1e-10 * (1 + fabs(b[i])), "gram entry");
  /* more rows than one block of E8Q_HESS_ROWS, accumulated onto an existing sum */
  int big = 2 * E8Q_HESS_ROWS + 17;
  float *y = malloc(sizeof(float) * big * cols);
  for (int i = 0; i < big * cols; i++) y[i] = (float)t_rng_normal(&r);
  double *yd = malloc(sizeof(double) * E8Q_HESS_ROWS * cols), *c = malloc(sizeof(double) * cols * cols);
  e8q_hessian_gram(big, cols, y, yd, a, 1);
  e8q_hessian_gram_ref(big, cols, y, c);
  for (int i = 0; i < cols * cols; i++) T_NEAR(a[i], b[i] + c[i], 1e-9 * (1 + fabs(c[i])), "accumulated gram entry");
  free(y), free(yd), free(c);
  free(x), free(a), free(b), free(xd);
}

/* the accumulator's reduced H of every group against float64 Gram sums of the same taps, and
 * its memory: after the reduce only the exact sums remain (the float64 chunk sums and the tap
 * scratch are released before H is filled), so a rank peaks at 24 bytes per Hessian entry
 * (16 exact + 8 for H) as the plan's memory model (shard/plan.c hess_acc) counts, not 32 */
typedef struct {
  int n[E8Q_N_GROUPS];
  double *G[E8Q_N_GROUPS]; /* [n, n] */
} ref_taps;

static void ref_tap(void *ctx, int group, int rows, int cols, const float *x) {
  ref_taps *r = ctx;
  double *g = malloc(sizeof(double) * (size_t)cols * cols);
  e8q_hessian_gram_ref(rows, cols, x, g);
  for (size_t i = 0; i < (size_t)cols * cols; i++) r->G[group][i] += g[i];
  free(g);
}

static void test_hessian_acc(void **state) {
  (void)state;
  char *dir = t_shared_path("models/stories260K-hf");
  e8q_config cfg;
  e8q_config_load(dir, &cfg);
  e8q_st_model *st = e8q_st_model_open(dir);
  e8q_block blk;
  e8q_block_load(st, &cfg, 1, &blk);
  const int T = 16, S = E8Q_SEQ_CHUNK + 3; /* one full chunk and a partial one */
  t_rng r = {t_fresh_seed("hessian_acc")};
  float *x = malloc(sizeof(float) * (size_t)S * T * cfg.dim), *y = malloc(sizeof(float) * (size_t)T * cfg.dim);
  for (size_t i = 0; i < (size_t)S * T * cfg.dim; i++) x[i] = (float)t_rng_normal(&r);
  ref_taps rt;
  double *H[E8Q_N_GROUPS];
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    int m;
    e8q_group_shape(&cfg, g, &m, &rt.n[g]);
    rt.G[g] = calloc((size_t)rt.n[g] * rt.n[g], sizeof(double));
    H[g] = malloc(sizeof(double) * (size_t)rt.n[g] * rt.n[g]);
  }
  e8q_taps taps = {ref_tap, &rt};
  e8q_fwd_scratch sc = {0};
  e8q_hessian_acc acc;
  e8q_hessian_acc_init(&acc, &cfg, T);
  for (int s = 0; s < S; s++) {
    memcpy(y, x + (size_t)s * T * cfg.dim, sizeof(float) * (size_t)T * cfg.dim);
    e8q_block_forward(&blk, &cfg, 1, T, y, &taps, &sc);
    e8q_hessian_acc_seq(&acc, &blk, &cfg, x + (size_t)s * T * cfg.dim, &sc);
    assert_memory_equal(y, x + (size_t)s * T * cfg.dim, sizeof(float) * (size_t)T * cfg.dim); /* x <- block(x) */
    if ((s + 1) % E8Q_SEQ_CHUNK == 0) e8q_hessian_acc_flush(&acc);
  }
  long tokens = 0;
  e8q_hessian_acc_reduce(&acc, H, &tokens);
  assert_int_equal(tokens, (long)S * T);
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    assert_null(acc.chunk[g]); /* released before H was filled */
    for (size_t i = 0; i < (size_t)rt.n[g] * rt.n[g]; i++)
      T_NEAR(H[g][i], rt.G[g][i], 1e-9 * (1 + fabs(rt.G[g][i])), "reduced Hessian entry");
  }
  assert_null(acc.xd);
  e8q_hessian_acc_free(&acc);
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(rt.G[g]), free(H[g]);
  e8q_fwd_scratch_free(&sc);
  e8q_block_free(&blk);
  e8q_st_model_close(st);
  free(x), free(y), free(dir);
}

static void test_calibration_windows(void **state) {
  (void)state;
  char *text = t_shared_path("text/tinystories_valid_head.txt");
  char *tokp = t_shared_path("models/stories260K-hf/tokenizer.model");
  e8q_tokenizer *tok = e8q_tokenizer_load(tokp);
  e8q_calib a, b, c;
  e8q_calib_build(&a, text, tok, 512, 1000, 6, 32, 11);
  e8q_calib_build(&b, text, tok, 512, 1000, 6, 32, 11);
  e8q_calib_build(&c, text, tok, 512, 1000, 6, 32, 12);
  assert_memory_equal(a.ids, b.ids, sizeof(int) * 6 * 32); /* deterministic */
  assert_memory_not_equal(a.ids, c.ids, sizeof(int) * 6 * 32); /* the seed matters */
  for (int i = 0; i < 6 * 32; i++) assert_true(a.ids[i] >= 0 && a.ids[i] < 512);
  /* the first 1000 lines are never used: the stream starts with line 1001's BOS */
  e8q_calib all;
  e8q_calib_build(&all, text, tok, 512, 1000, 1, 1, 0);
  assert_true(all.stream_len > 100000);
  E8Q_EXPECT_FATAL(e8q_calib_build(&c, text, tok, 512, 1000, 100000, 64, 1), "too short", "--devset 100000");
  /* text without a tokenizer: the message says what quantize accepts (it has no --tokenizer) */
  E8Q_EXPECT_FATAL(e8q_calib_build(&c, text, NULL, 512, 0, 1, 8, 1), text, "tokenizer.model", "--model directory",
                   ".ids or .u32");
  e8q_calib_free(&a), e8q_calib_free(&b), e8q_calib_free(&all);
  e8q_tokenizer_free(tok);
  free(text), free(tokp);
}

/* a W [m, n] with heavy-ish tails and an H = Xᵀ X from correlated inputs */
static void make_problem(int m, int n, uint64_t seed, float *W, double *H) {
  t_rng r = {seed};
  for (int i = 0; i < m * n; i++) W[i] = (float)(t_rng_normal(&r) * (1 + (i % 7 == 0 ? 2.0 : 0.0)));
  int T = 4 * n;
  double *X = malloc(sizeof(double) * T * n);
  for (int t = 0; t < T; t++) {
    double common = t_rng_normal(&r);
    for (int j = 0; j < n; j++) X[t * n + j] = t_rng_normal(&r) + 0.8 * common * (j % 3);
  }
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int t = 0; t < T; t++) s += X[t * n + i] * X[t * n + j];
      H[i * n + j] = s;
    }
  free(X);
}

static e8q_group_plan group(int m, int n, int pieces) {
  e8q_group_plan g;
  memset(&g, 0, sizeof g);
  g.name = "test";
  g.m = m, g.n = n, g.n_pad = (n + 7) / 8 * 8;
  g.K_n = e8q_had_choose_K(g.n_pad);
  g.K_m = e8q_had_choose_K(m);
  g.n_pieces = pieces;
  for (int p = 0; p < pieces; p++) g.piece_rows[p] = m / pieces;
  return g;
}

/* the decoded weight of a result (through the fused kernel's dense reference) */
static void decode(const e8q_group_plan *g, const e8q_qlin_result *q, int bits, double *W) {
  e8q_had hn, hm;
  e8q_had_init(&hn, g->n_pad, E8Q_HAD_SEED);
  e8q_had_init(&hm, g->m, E8Q_HAD_SEED);
  e8q_qlinear_desc d;
  memset(&d, 0, sizeof d);
  d.m = g->m, d.n = g->n, d.n_pad = g->n_pad;
  d.codebook = bits == 2 ? E8Q_CB_E8P12 : bits == 3 ? E8Q_CB_E8P12RVQ3B : E8Q_CB_E8P12RVQ4B;
  d.codes = q->codes, d.codes2 = q->codes2, d.SU = q->SU, d.SV = q->SV, d.Wscale = q->Wscale;
  d.n_pieces = g->n_pieces, d.piece_rows = g->n_pieces > 1 ? g->piece_rows : NULL, d.fuse_scales = q->fuse_scales;
  d.K_in = hn.f.K, d.R_in = hn.f.Rf, d.K_out = hm.f.K, d.R_out = hm.f.Rf;
  e8q_qlinear ql;
  e8q_qlinear_init(&ql, &d, "test");
  e8q_qlinear_dequant_ref(&ql, W);
  e8q_qlinear_free(&ql);
  e8q_had_free(&hn), e8q_had_free(&hm);
}

static void test_quantize_group(void **state) {
  (void)state;
  const int m = 96, n = 48; /* no padding: the proxy loss then covers exactly the n columns */
  float *W = malloc(sizeof(float) * m * n);
  double *H = malloc(sizeof(double) * n * n), *Wd = malloc(sizeof(double) * m * n);
  make_problem(m, n, 5, W, H);
  for (int i = 0; i < n * 32; i++) W[i] *= 0.05f; /* a small first piece, as v_proj often is */
  e8q_group_plan g = group(m, n, 3);
  double proxy[2];
  for (int meth = 0; meth < 2; meth++) {
    e8q_qlin_opts o = {.bits = 2, .method = meth ? E8Q_METHOD_NEAREST : E8Q_METHOD_LDLQ, .rho = 0, .tune_iters = 3, .seed = 9};
    e8q_qlin_result q;
    e8q_quantize_group(&o, &g, 0, 0, W, H, 1000, &q);
    assert_int_equal(q.retries, 0);
    T_NEAR(q.damp, 0.01, 1e-15, "damping");
    /* fuse scales are the pieces' RMS */
    for (int p = 0; p < 3; p++) {
      double ss = 0;
      for (int i = p * 32 * n; i < (p + 1) * 32 * n; i++) ss += (double)W[i] * W[i];
      T_NEAR(q.fuse_scales[p], sqrt(ss / (32.0 * n)), 1e-6 * sqrt(ss / (32.0 * n)), "fuse scale");
    }
    /* the recorded proxy loss equals tr(E H Eᵀ)/tr(W H Wᵀ) of the decoded weight, with H as
     * prepared (over mean diag, + damping), computed here directly in the source frame, per
     * piece normalised as the quantizer saw it */
    decode(&g, &q, 2, Wd);
    double md = 0;
    for (int i = 0; i < n; i++) md += H[i * n + i];
    md /= n;
    double num = 0, den = 0;
    for (int r = 0; r < m; r++) {
      double fs = q.fuse_scales[r / 32];
      for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
          double h = H[i * n + j] / md + (i == j ? q.damp : 0);
          double ei = (Wd[r * n + i] - W[r * n + i]) / fs, ej = (Wd[r * n + j] - W[r * n + j]) / fs;
          num += ei * h * ej;
          den += W[r * n + i] / fs * h * W[r * n + j] / fs;
        }
    }
    T_NEAR(q.proxy_loss, num / den, 1e-9 + 1e-6 * num / den, "proxy loss");
    proxy[meth] = q.proxy_loss;
    e8q_qlin_result_free(&q);
  }
  /* LDLQ with tune passes beats nearest rounding on this correlated H */
  if (!(proxy[0] < proxy[1])) fail_msg("LDLQ proxy %.5g not below nearest %.5g", proxy[0], proxy[1]);
  free(W), free(H), free(Wd);
}

/* an all-zero group decodes to exactly zero (Wscale 0), with proxy loss 0 and no NaN; a zero
 * piece among non-zero ones keeps fuse scale 1 */
static void test_quantize_group_zero(void **state) {
  (void)state;
  const int m = 64, n = 40; /* n_pad 40: no padding */
  float *W = calloc((size_t)m * n, sizeof(float));
  double *H = malloc(sizeof(double) * n * n), *Wd = malloc(sizeof(double) * m * n);
  float *Wdummy = malloc(sizeof(float) * m * n);
  make_problem(m, n, 11, Wdummy, H);
  e8q_group_plan g = group(m, n, 2);
  for (int bits = 2; bits <= 4; bits++) {
    e8q_qlin_opts o = {.bits = bits, .method = E8Q_METHOD_LDLQ, .rho = 0, .tune_iters = 2, .seed = 3};
    e8q_qlin_result q;
    e8q_quantize_group(&o, &g, 1, 2, W, H, 100, &q);
    assert_true(q.Wscale == 0.0f);
    assert_true(q.fuse_scales[0] == 1.0f && q.fuse_scales[1] == 1.0f);
    assert_true(q.proxy_loss == 0.0);
    decode(&g, &q, bits, Wd);
    for (int i = 0; i < m * n; i++)
      if (Wd[i] != 0.0) fail_msg("%d bit: decoded entry %d is %g, not 0", bits, i, Wd[i]);
    e8q_qlin_result_free(&q);
  }
  /* second piece non-zero: its fuse scale is its RMS, the zero piece's is 1 */
  for (int i = m / 2 * n; i < m * n; i++) W[i] = Wdummy[i];
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .rho = 0, .tune_iters = 2, .seed = 3};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 1, 2, W, H, 100, &q);
  assert_true(q.fuse_scales[0] == 1.0f);
  assert_true(q.Wscale > 0 && q.fuse_scales[1] > 0 && isfinite(q.proxy_loss));
  e8q_qlin_result_free(&q);
  free(W), free(H), free(Wd), free(Wdummy);
}

static void test_not_positive_definite_retry(void **state) {
  (void)state;
  const int m = 32, n = 16;
  float *W = malloc(sizeof(float) * m * n);
  double *H = malloc(sizeof(double) * n * n);
  make_problem(m, n, 6, W, H);
  /* an indefinite H: identity but for one eigenvalue of -0.06 (normalised: about -0.064) */
  memset(H, 0, sizeof(double) * n * n);
  for (int i = 0; i < n; i++) H[i * n + i] = 1.0;
  H[5 * n + 5] = -0.06;
  e8q_group_plan g = group(m, n, 1);
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 1, .seed = 1};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q);
  /* damping 0.01 is not enough, tenfold is: one retry, reported */
  assert_int_equal(q.retries, 1);
  T_NEAR(q.damp, 0.1, 1e-12, "damping after the retry");
  assert_non_null(strstr(q.ldl_message, "10x damping"));
  assert_true(q.proxy_loss > 0 && q.proxy_loss < 1);
  e8q_qlin_result_free(&q);
  /* beyond tenfold damping: a fatal error naming the layer and group */
  H[5 * n + 5] = -0.5;
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q), "layer 3 test", "damping");
  /* hopeless (NaN): a clear fatal error naming the layer */
  H[3] = NAN;
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q), "layer 3");
  free(W), free(H);
}

/* --scalapack: the same factorisation builder (kernels/ldlq.c) with ScaLAPACK's Cholesky, so the
 * same retries, damping and messages as the LAPACK path, marked "ScaLAPACK" */
static void test_scalapack_retry(void **state) {
  (void)state;
  const int m = 32, n = 16;
  float *W = malloc(sizeof(float) * m * n);
  double *H = malloc(sizeof(double) * n * n);
  make_problem(m, n, 6, W, H);
  e8q_group_plan g = group(m, n, 1);
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 1, .seed = 1, .scalapack = 1};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q);
  assert_int_equal(q.retries, 0);
  assert_string_equal(q.ldl_message, "ScaLAPACK LDL ok (f64, sigma_reg 0.01)");
  e8q_qlin_result_free(&q);
  /* the indefinite H of test_not_positive_definite_retry: one retry with tenfold damping */
  memset(H, 0, sizeof(double) * n * n);
  for (int i = 0; i < n; i++) H[i * n + i] = 1.0;
  H[5 * n + 5] = -0.06;
  e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q);
  assert_int_equal(q.retries, 1);
  T_NEAR(q.damp, 0.1, 1e-12, "damping after the retry");
  assert_non_null(strstr(q.ldl_message, "ScaLAPACK LDL failed, in f64 (not positive definite); retried with 10x damping"));
  assert_true(q.proxy_loss > 0 && q.proxy_loss < 1);
  e8q_qlin_result_free(&q);
  H[5 * n + 5] = -0.5;
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q), "layer 3 test", "ScaLAPACK LDL failed", "damping");
  free(W), free(H);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  e8q_comm_global_open(-1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gram_vs_ref),
      cmocka_unit_test(test_hessian_acc),
      cmocka_unit_test(test_calibration_windows),
      cmocka_unit_test(test_quantize_group),
      cmocka_unit_test(test_quantize_group_zero),
      cmocka_unit_test(test_not_positive_definite_retry),
      cmocka_unit_test(test_scalapack_retry),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  e8q_scalapack_finish();
  e8q_comm_global_close();
  MPI_Finalize();
  return rc;
}
