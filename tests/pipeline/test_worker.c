/* tests/pipeline/test_worker.c: the worker pieces of `e8q quantize` on one rank: Gram
 * matrices against their plain-loop twin, the Hessian accumulator against a float64 reference,
 * calibration windows, and quantize_group, the one driver of "quantize one linear" (every
 * method; fuse scales; proxy loss against a direct recomputation from the decoded weight;
 * padding decoded by hand; zero, tiny and zero-Hessian cases; the retry path; bad input). */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "coordinator/calib.h"
#include "coordinator/qmodel.h"
#include "io/tokenizer.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "kernels/qlinear.h"
#include "synth.h"
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
  e8q_taps taps = {.fn = ref_tap, .ctx = &rt};
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

/* the decoded weight of a result (through the fused kernel's dense reference; a dense
 * ablation's weight as it is) */
static void decode(const e8q_group_plan *g, const e8q_qlin_result *q, int bits, double *W) {
  if (q->dense) {
    for (int i = 0; i < g->m * g->n; i++) W[i] = q->dense[i];
    return;
  }
  e8q_had hn, hm;
  e8q_had_init(&hn, g->n_pad, E8Q_HAD_SEED);
  e8q_had_init(&hm, g->m, E8Q_HAD_SEED);
  e8q_qlinear_desc d;
  memset(&d, 0, sizeof d);
  d.m = g->m, d.n = g->n, d.n_pad = g->n_pad;
  d.codebook = e8q_cb_from_bits(bits);
  d.codes = q->codes, d.codes2 = q->codes2, d.SU = q->SU, d.SV = q->SV, d.Wscale = q->Wscale;
  d.n_pieces = g->n_pieces, d.piece_rows = g->n_pieces > 1 ? g->piece_rows : NULL, d.fuse_scales = q->fuse_scales;
  d.K_in = hn.f.K, d.R_in = hn.f.Rf, d.K_out = hm.f.K, d.R_out = hm.f.Rf;
  e8q_qlinear ql;
  e8q_qlinear_init(&ql, &d, "test");
  e8q_qlinear_dequant_ref(&ql, W);
  e8q_qlinear_free(&ql);
  e8q_had_free(&hn), e8q_had_free(&hm);
}

/* tr(E H Eᵀ)/tr(W H Wᵀ) of the decoded weight Wd [m, ld] (ld = n, or n_pad with the decoded pad
 * columns) against W [m, n] (zero beyond n), with H [n, n] padded to ld and prepared (over mean
 * diag, + damping), computed directly in the source frame, each piece normalised by its fuse
 * scale as the quantizer saw it */
static double direct_proxy(const e8q_group_plan *g, const e8q_qlin_result *q, const float *W, const double *H,
                           const double *Wd, int ld) {
  const int m = g->m, n = g->n;
  double md = 0;
  for (int i = 0; i < n; i++) md += H[i * n + i];
  md /= ld;
  if (!(md > 0)) md = 1;
  double num = 0, den = 0;
  for (int r = 0, p = 0, left = g->piece_rows[0]; r < m; r++, left--) {
    while (left == 0) left = g->piece_rows[++p];
    double fs = q->fuse_scales[p];
    for (int i = 0; i < ld; i++)
      for (int j = 0; j < ld; j++) {
        double h = (i < n && j < n ? H[i * n + j] / md : 0) + (i == j ? q->damp : 0);
        double wi = i < n ? W[r * n + i] : 0, wj = j < n ? W[r * n + j] : 0;
        double ei = (Wd[r * ld + i] - wi) / fs, ej = (Wd[r * ld + j] - wj) / fs;
        num += ei * h * ej;
        den += wi / fs * h * wj / fs;
      }
  }
  return den > 0 ? num / den : 0;
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
    /* the recorded proxy loss equals the one of the decoded weight */
    decode(&g, &q, 2, Wd);
    double want = direct_proxy(&g, &q, W, H, Wd, n);
    T_NEAR(q.proxy_loss, want, 1e-9 + 1e-6 * want, "proxy loss");
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

/* ---------------------------------------------------------------- every method on one problem
 * an ill-conditioned H (5 decades): the proxy losses rank as they must, and each equals the one
 * of its decoded weight (coded methods: decoded codes; noe8, rtn: the dense weight) */
static float *to_f32(const double *a, int count, double scale) {
  float *f = malloc(sizeof(float) * (size_t)count);
  for (int i = 0; i < count; i++) f[i] = (float)(scale * a[i]);
  return f;
}

static void test_quantize_group_methods(void **state) {
  (void)state;
  const int m = 64, n = 128;
  double *H = synth_hessian(n, 5, 61), *Wd0 = synth_weight(m, n, 62), *Wd = malloc(sizeof(double) * m * n);
  float *W = to_f32(Wd0, m * n, 1);
  e8q_group_plan g = group(m, n, 1);
  assert_int_equal(g.K_n, 1);
  double proxy[6];
  const char *name[6] = {"e8p+tune", "e8p", "nearest", "noe8", "rtn", "e8p+tune 4 bit"};
  for (int v = 0; v < 6; v++) {
    e8q_qlin_opts o = {.bits = v == 5 ? 4 : 2, .tune_iters = v == 0 || v == 5 ? 10 : 0, .seed = 7,
                       .method = v <= 1 || v == 5 ? E8Q_METHOD_LDLQ : v == 2 ? E8Q_METHOD_NEAREST : v == 3 ? E8Q_METHOD_NOE8 : E8Q_METHOD_RTN};
    e8q_qlin_result q;
    e8q_quantize_group(&o, &g, 0, 0, W, H, 1000, &q);
    proxy[v] = q.proxy_loss;
    print_message("%-16s proxy %.5f  (%s)\n", name[v], q.proxy_loss, q.ldl_message);
    if (e8q_method_dense(o.method)) {
      assert_non_null(q.dense);
      assert_null(q.codes);
    } else {
      assert_non_null(q.codes);
      assert_true(o.bits == 2 ? q.codes2 == NULL : q.codes2 != NULL);
    }
    decode(&g, &q, o.bits, Wd);
    double want = direct_proxy(&g, &q, W, H, Wd, n);
    T_NEAR(q.proxy_loss, want, 1e-9 + 1e-5 * want, "proxy of the decoded weight");
    e8q_qlin_result_free(&q);
  }
  assert_true(proxy[0] < proxy[1]);
  assert_true(proxy[1] < proxy[2]);
  assert_true(proxy[0] < proxy[3]); /* E8 beats the scalar grid */
  assert_true(proxy[0] < proxy[4]); /* and plain round to nearest */
  assert_true(proxy[5] < proxy[0] / 4);
  /* one parser, one name table */
  assert_int_equal(e8q_method_parse("e8p"), E8Q_METHOD_LDLQ);
  assert_int_equal(e8q_method_parse("ldlq"), E8Q_METHOD_LDLQ);
  assert_int_equal(e8q_method_parse("noe8"), E8Q_METHOD_NOE8);
  for (int k = 0; k < 4; k++) assert_int_equal(e8q_method_parse(e8q_method_cli_name((e8q_method)k)), k);
  assert_string_equal(e8q_method_cli_name(E8Q_METHOD_LDLQ), "e8p");
  E8Q_EXPECT_FATAL(e8q_method_parse("gptq"), "gptq", "e8p", "nearest", "noe8", "rtn");
  free(H), free(Wd0), free(Wd), free(W);
}

/* ---------------------------------------------------------------- a padded shape, decoded by hand
 * stories260K's down_proj shape: n = 172 -> 176 (K = 44, Paley). The codes decoded with the
 * codebook, Wscale and the inverse RHT of kernels/hadamard.h (the quantizer's conventions)
 * equal the fused kernel's dense decode, and give the recorded proxy loss, pad columns included */
static void test_quantize_group_padded(void **state) {
  (void)state;
  const int m = 64, n = 172;
  double *H = synth_hessian(n, 2, 71), *Wd0 = synth_weight(m, n, 72);
  float *W = to_f32(Wd0, m * n, 0.02);
  e8q_group_plan g = group(m, n, 1);
  assert_int_equal(g.n_pad, 176);
  assert_int_equal(g.K_n, 44);
  assert_int_equal(g.K_m, 1);
  double proxies[5] = {0};
  double *Q = malloc(sizeof(double) * m * 176), *D = malloc(sizeof(double) * m * n), SU[176], SV[64];
  for (int bits = 2; bits <= 4; bits++) {
    e8q_qlin_opts o = {.bits = bits, .method = E8Q_METHOD_LDLQ, .tune_iters = 2, .seed = 99};
    e8q_qlin_result q;
    e8q_quantize_group(&o, &g, 2, 3, W, H, 1000, &q);
    assert_int_equal(q.n_pad, 176);
    print_message("bits %d: proxy %.5f Wscale %g\n", bits, q.proxy_loss, q.Wscale);
    const e8q_codebook_id cb = e8q_cb_from_bits(bits);
    const int c2 = e8q_cb_traits(cb)->codes2_bytes;
    for (int i = 0; i < m * 176 / 8; i++) {
      uint16_t s = c2 == 2 ? ((uint16_t *)q.codes2)[i] : c2 == 1 ? ((uint8_t *)q.codes2)[i] : 0;
      e8q_cb_decode_f64(cb, q.codes[i], s, Q + 8 * i);
    }
    for (int i = 0; i < m * 176; i++) Q[i] *= (double)q.Wscale * q.fuse_scales[0];
    for (int j = 0; j < 176; j++) SU[j] = q.SU[j];
    for (int i = 0; i < m; i++) SV[i] = q.SV[i];
    e8q_had hm, hn;
    e8q_had_init(&hm, m, E8Q_HAD_SEED);
    e8q_had_init(&hn, 176, E8Q_HAD_SEED);
    e8q_rht_weight_inv(&hm, &hn, SU, SV, Q);
    e8q_had_free(&hm), e8q_had_free(&hn);
    decode(&g, &q, bits, D);
    double wmax = 0;
    for (int i = 0; i < m * n; i++) wmax = fmax(wmax, fabs(D[i]));
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) T_NEAR(Q[i * 176 + j], D[i * n + j], 1e-6 * wmax, "decoded by hand vs fused decode");
    double want = direct_proxy(&g, &q, W, H, Q, 176);
    T_NEAR(q.proxy_loss, want, 1e-9 + 1e-6 * want, "proxy of the decoded weight, pad columns included");
    proxies[bits] = q.proxy_loss;
    e8q_qlin_result_free(&q);
  }
  /* more bits, less loss: each extra bit should cut the proxy loss by well over half */
  assert_true(proxies[2] < 0.1);
  assert_true(proxies[3] < proxies[2] / 2);
  assert_true(proxies[4] < proxies[3] / 2);
  free(H), free(Wd0), free(W), free(Q), free(D);
}

/* ---------------------------------------------------------------- fused pieces of very different scale
 * q, k, v with v 1000x smaller: with fuse scales every piece keeps its own relative precision;
 * stacking raw rows would leave v with almost none */
static void test_quantize_group_fused_scales(void **state) {
  (void)state;
  const int n = 64, mq = 64, mk = 32, mv = 32, m = mq + mk + mv;
  double *H = synth_hessian(n, 2, 81), *Wd0 = synth_weight(m, n, 82), *D = malloc(sizeof(double) * m * n);
  float *W = malloc(sizeof(float) * m * n);
  for (int i = 0; i < m * n; i++) W[i] = (float)((i < mq * n ? 0.05 : i < (mq + mk) * n ? 0.02 : 5e-5) * Wd0[i]);
  e8q_group_plan g = group(m, n, 3);
  g.piece_rows[0] = mq, g.piece_rows[1] = mk, g.piece_rows[2] = mv;
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 2, .seed = 3};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 0, 0, W, H, 1000, &q);
  T_NEAR(q.fuse_scales[0], 0.05, 0.005, "fuse scale of q");
  T_NEAR(q.fuse_scales[2], 5e-5, 5e-6, "fuse scale of v");
  decode(&g, &q, 2, D);
  double err[3];
  for (int p = 0, off = 0; p < 3; off += g.piece_rows[p] * n, p++) {
    double num = 0, den = 0;
    for (int i = off; i < off + g.piece_rows[p] * n; i++) num += (D[i] - W[i]) * (D[i] - W[i]), den += (double)W[i] * W[i];
    err[p] = sqrt(num / den);
  }
  print_message("fused q/k/v relative errors %.3f %.3f %.3f\n", err[0], err[1], err[2]);
  assert_true(err[2] < 2 * err[0] && err[2] < 0.8);
  e8q_qlin_result_free(&q);
  free(H), free(Wd0), free(D), free(W);
}

/* ---------------------------------------------------------------- rtn on a padded shape
 * n = 12 is padded to 16. Per-row min-max round to nearest must use the row's own range: rows
 * of one sign (here all in [1, 2]) must not see the zero pad columns, so every value lies on the
 * grid lo + k (hi - lo) / 3 (2 bits) of its row */
static void test_quantize_group_rtn_padded(void **state) {
  (void)state;
  enum { M = 4, N = 12 };
  float W[M * N];
  double H[N * N];
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) H[i * N + j] = i == j ? 1.0 + 0.1 * i : 0.05;
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) W[r * N + c] = (float)((r % 2 ? -1.0 : 1.0) * (1.0 + fmod(0.37 * (c + 1) * (r + 2), 1.0)));
  e8q_group_plan g = group(M, N, 1);
  assert_int_equal(g.n_pad, 16);
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_RTN, .seed = 1};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 0, 0, W, H, 100, &q);
  assert_non_null(q.dense);
  assert_int_equal(q.retries, 0);
  assert_string_equal(q.ldl_message, "rtn: no factorisation");
  for (int r = 0; r < M; r++) {
    double lo = W[r * N], hi = W[r * N];
    for (int c = 1; c < N; c++) lo = fmin(lo, W[r * N + c]), hi = fmax(hi, W[r * N + c]);
    double step = (hi - lo) / 3;
    for (int c = 0; c < N; c++) {
      double want = lo + round((W[r * N + c] - lo) / step) * step;
      T_NEAR(q.dense[r * N + c], want, 1e-6, "rtn value on the row's own min-max grid");
    }
  }
  e8q_qlin_result_free(&q);
}

/* ---------------------------------------------------------------- degenerate pieces and weights
 * piece 0 ordinary, piece 1 all zero, piece 2 all zero but one subnormal entry: its RMS (about
 * 2e-47) is positive in double but 0 in float. Fuse scales stay usable divisors (finite, > 0)
 * and the result is finite. A piece of 0 rows is refused, naming the layer and group. */
static void test_quantize_group_tiny_pieces(void **state) {
  (void)state;
  enum { N = 64, M0 = 16, M1 = 16, M2 = 32, M = M0 + M1 + M2 };
  double *H = synth_hessian(N, 2, 91), *Wd0 = synth_weight(M0, N, 92), *D = malloc(sizeof(double) * M * N);
  float *W = calloc(M * N, sizeof(float));
  for (int i = 0; i < M0 * N; i++) W[i] = (float)(0.03 * Wd0[i]);
  W[(M0 + M1) * N + 5] = 1e-44f;
  assert_true(W[(M0 + M1) * N + 5] > 0);
  e8q_group_plan g = group(M, N, 3);
  g.piece_rows[0] = M0, g.piece_rows[1] = M1, g.piece_rows[2] = M2;
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 1, .seed = 5};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 0, 0, W, H, 100, &q);
  for (int p = 0; p < 3; p++) assert_true(isfinite(q.fuse_scales[p]) && q.fuse_scales[p] > 0);
  decode(&g, &q, 2, D);
  for (int i = 0; i < M * N; i++) assert_true(isfinite(D[i]));
  T_NEAR(q.fuse_scales[0], 0.03, 0.006, "fuse scale of the ordinary piece");
  e8q_qlin_result_free(&q);
  g.piece_rows[1] = 0, g.piece_rows[2] = M1 + M2;
  g.name = "self_attn.qkv_proj";
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 0, 0, W, H, 100, &q), "layer 0 self_attn.qkv_proj: fused piece 1 has 0 rows");
  free(H), free(Wd0), free(D), free(W);
}

/* No codebook (E8P, RVQ, the noe8 half-integer grid) has a zero point, so an all-zero weight
 * must decode to exactly 0, not to the codewords nearest 0. A weight whose scale underflows in
 * float (one subnormal entry) is treated the same way: finite, |Ŵ| at most that entry. */
static void test_quantize_group_zero_weight(void **state) {
  (void)state;
  enum { M = 8, N = 64 };
  double *H = synth_hessian(N, 2, 93), *D = malloc(sizeof(double) * M * N);
  float *W = calloc(M * N, sizeof(float));
  e8q_group_plan g = group(M, N, 1);
  for (int tiny = 0; tiny <= 1; tiny++) {
    W[7] = tiny ? 1e-44f : 0.0f;
    for (int v = 0; v < 5; v++) {
      e8q_qlin_opts o = {.bits = v < 3 ? 2 + v : 2, .tune_iters = 2, .seed = 4,
                         .method = v < 3 ? E8Q_METHOD_LDLQ : v == 3 ? E8Q_METHOD_NEAREST : E8Q_METHOD_NOE8};
      e8q_qlin_result q;
      e8q_quantize_group(&o, &g, 0, 1, W, H, 100, &q);
      assert_true(isfinite(q.Wscale) && q.Wscale >= 0);
      decode(&g, &q, o.bits, D);
      for (int i = 0; i < M * N; i++) {
        assert_true(isfinite(D[i]));
        assert_true(fabs(D[i]) <= W[7]);
      }
      assert_true(q.proxy_loss == 0 || tiny);
      e8q_qlin_result_free(&q);
    }
  }
  free(H), free(D), free(W);
}

/* A linear whose calibration inputs are all zero has H = 0: it becomes sigma_reg * I, L = I,
 * and LDLQ with its tune passes gives the codes of nearest rounding */
static void test_quantize_group_zero_hessian(void **state) {
  (void)state;
  enum { M = 8, N = 32 };
  double *H = calloc(N * N, sizeof(double));
  float W[M * N];
  for (int i = 0; i < M * N; i++) W[i] = (float)sin(0.7 * i + 0.2);
  e8q_group_plan g = group(M, N, 1);
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 3, .seed = 2};
  e8q_qlin_result q, qn;
  e8q_quantize_group(&o, &g, 0, 0, W, H, 100, &q);
  assert_int_equal(q.retries, 0);
  o.method = E8Q_METHOD_NEAREST;
  e8q_quantize_group(&o, &g, 0, 0, W, H, 100, &qn);
  assert_memory_equal(q.codes, qn.codes, sizeof(uint16_t) * M * N / 8);
  e8q_qlin_result_free(&q);
  e8q_qlin_result_free(&qn);
  free(H);
}

/* the retry tests' problem: W (2 RN x RN) and H from make_problem (seed 6), one group */
enum { RN = 16 };
static e8q_group_plan retry_problem(float **W, double **H) {
  *W = malloc(sizeof(float) * 2 * RN * RN);
  *H = malloc(sizeof(double) * RN * RN);
  make_problem(2 * RN, RN, 6, *W, *H);
  return group(2 * RN, RN, 1);
}

/* H (RN x RN) made indefinite: identity but for one eigenvalue of -0.06 (normalised: about -0.064).
 * Damping 0.01 is not enough, tenfold is: quantizing takes one retry, reported with message. */
static void expect_one_retry(const e8q_qlin_opts *o, const e8q_group_plan *g, const float *W, double *H,
                             const char *message) {
  memset(H, 0, sizeof(double) * RN * RN);
  for (int i = 0; i < RN; i++) H[i * RN + i] = 1.0;
  H[5 * RN + 5] = -0.06;
  e8q_qlin_result q;
  e8q_quantize_group(o, g, 3, 1, W, H, 100, &q);
  assert_int_equal(q.retries, 1);
  T_NEAR(q.damp, 0.1, 1e-12, "damping after the retry");
  assert_non_null(strstr(q.ldl_message, message));
  assert_true(q.proxy_loss > 0 && q.proxy_loss < 1);
  e8q_qlin_result_free(&q);
}

static void test_not_positive_definite_retry(void **state) {
  (void)state;
  float *W;
  double *H;
  e8q_group_plan g = retry_problem(&W, &H);
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 1, .seed = 1};
  e8q_qlin_result q;
  expect_one_retry(&o, &g, W, H, "10x damping");
  /* beyond tenfold damping: a fatal error naming the layer and group */
  H[5 * RN + 5] = -0.5;
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q), "layer 3 test", "damping", "unusable");
  /* hopeless (NaN): a clear fatal error naming the layer and the entry */
  H[3] = NAN;
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q), "layer 3 test: the Hessian has a non-finite entry",
                   "at [0, 3]");
  /* a non-finite weight: the checkpoint is corrupt */
  H[3] = 0;
  W[9] = INFINITY;
  E8Q_EXPECT_FATAL(e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q), "layer 3 test: weight entry [0, 9] is inf",
                   "corrupt");
  free(W), free(H);
}

/* --scalapack: the same factorisation builder (kernels/ldlq.c) with ScaLAPACK's Cholesky, so the
 * same retries, damping and messages as the LAPACK path, marked "ScaLAPACK" */
static void test_scalapack_retry(void **state) {
  (void)state;
  float *W;
  double *H;
  e8q_group_plan g = retry_problem(&W, &H);
  e8q_qlin_opts o = {.bits = 2, .method = E8Q_METHOD_LDLQ, .tune_iters = 1, .seed = 1, .scalapack = 1};
  e8q_qlin_result q;
  e8q_quantize_group(&o, &g, 3, 1, W, H, 100, &q);
  assert_int_equal(q.retries, 0);
  assert_string_equal(q.ldl_message, "ScaLAPACK LDL ok (f64, sigma_reg 0.01)");
  e8q_qlin_result_free(&q);
  /* the same indefinite H: one retry with tenfold damping */
  expect_one_retry(&o, &g, W, H, "ScaLAPACK LDL failed, in f64 (not positive definite); retried with 10x damping");
  H[5 * RN + 5] = -0.5;
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
      cmocka_unit_test(test_quantize_group_methods),
      cmocka_unit_test(test_quantize_group_padded),
      cmocka_unit_test(test_quantize_group_fused_scales),
      cmocka_unit_test(test_quantize_group_rtn_padded),
      cmocka_unit_test(test_quantize_group_tiny_pieces),
      cmocka_unit_test(test_quantize_group_zero_weight),
      cmocka_unit_test(test_quantize_group_zero_hessian),
      cmocka_unit_test(test_not_positive_definite_retry),
      cmocka_unit_test(test_scalapack_retry),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  e8q_scalapack_finish();
  e8q_comm_global_close();
  MPI_Finalize();
  return rc;
}
