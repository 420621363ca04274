/* tests/fused/test_qlinear_quant.c: the fused kernel decodes what the quantizer encodes.
 *
 * kernels/ldlq's e8q_quantize_linear returns the codes, SU, SV, Wscale and, independently, the
 * quantized weight What in the original basis (its own inverse RHT in float64). A layer built
 * from those codes must compute What·x: this holds only if the decoder's conventions (SU on the
 * input side, M_n_padᵀ on the input, M_m on the output, padding, RVQ stage scaling) are the
 * quantizer's. Every bit width, a padded input dimension (n = 172 -> 176), non-power-of-two
 * factors on both sides, fresh random data each run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ldlq.h"
#include "kernels/qlinear.h"
#include "testutil.h"

static void check_bits(int bits, uint64_t seed) {
  const int m = 48, n = 172, nsamp = 400;
  t_rng g = {seed ^ (uint64_t)bits};
  float *W = malloc(sizeof(float) * m * n);
  for (int i = 0; i < m * n; i++) W[i] = (float)t_rng_normal(&g) * 0.02f;
  /* H = X^T X of correlated samples */
  double *X = malloc(sizeof(double) * nsamp * n), *H = calloc((size_t)n * n, sizeof(double));
  for (int s = 0; s < nsamp; s++) {
    double common = t_rng_normal(&g);
    for (int k = 0; k < n; k++) X[s * n + k] = t_rng_normal(&g) + 0.5 * common;
  }
  for (int s = 0; s < nsamp; s++)
    for (int i = 0; i < n; i++)
      for (int k = 0; k < n; k++) H[i * n + k] += X[s * n + i] * X[s * n + k];

  const int n_pad = 176;
  e8q_had_factor fm, fn;
  e8q_had_factor_build(&fm, e8q_had_choose_K(m), t_rng_u64(&g));
  e8q_had_factor_build(&fn, e8q_had_choose_K(n_pad), t_rng_u64(&g));
  e8q_quant_opts o = {.bits = bits, .rho = 0, .tune_iters = 2, .method = E8Q_METHOD_LDLQ,
                      .seed = t_rng_u64(&g), .sigma_reg = 0, .prec = E8Q_PREC_F64, .had_m = &fm, .had_n = &fn};
  e8q_quant_result r;
  e8q_quantize_linear(W, m, n, H, &o, &r);
  assert_non_null(r.What);
  assert_int_equal(r.n_pad, n_pad);

  e8q_qlinear_desc d = {.m = m, .n = n, .n_pad = n_pad, .codebook = r.cb, .codes = r.codes,
                        .codes2 = r.codes2, .SU = r.SU, .SV = r.SV, .Wscale = r.Wscale, .n_pieces = 1,
                        .K_in = fn.K, .R_in = fn.K > 1 ? fn.Rf : NULL, .K_out = fm.K,
                        .R_out = fm.K > 1 ? fm.Rf : NULL};
  e8q_qlinear q;
  e8q_qlinear_init(&q, &d, "quantized test linear");
  const int batch = 3;
  float *x = malloc(sizeof(float) * batch * n), *y = malloc(sizeof(float) * batch * m);
  for (int i = 0; i < batch * n; i++) x[i] = (float)t_rng_normal(&g) + 0.01f;
  e8q_qlinear_forward(&q, batch, x, y);
  for (int b = 0; b < batch; b++) {
    double mx = 0, err = 0;
    for (int i = 0; i < m; i++) {
      double acc = 0;
      for (int k = 0; k < n; k++) acc += (double)r.What[i * n + k] * x[b * n + k];
      mx = fmax(mx, fabs(acc));
      err = fmax(err, fabs(acc - (double)y[b * m + i]));
    }
    if (!(mx > 0) || !(err <= 1e-5 * mx))
      fail_msg("%d bit: fused forward differs from the quantizer's What x by %.3g relative (seed %llu)",
               bits, err / mx, (unsigned long long)seed);
  }
  /* and the dense decode equals What */
  double *Wd = malloc(sizeof(double) * m * n), worst = 0, wmax = 0;
  e8q_qlinear_dequant_ref(&q, Wd);
  for (int i = 0; i < m * n; i++) {
    worst = fmax(worst, fabs(Wd[i] - (double)r.What[i]));
    wmax = fmax(wmax, fabs((double)r.What[i]));
  }
  if (!(worst <= 1e-5 * wmax)) fail_msg("%d bit: dense decode differs from What by %.3g", bits, worst / wmax);
  free(Wd);
  free(x);
  free(y);
  e8q_qlinear_free(&q);
  e8q_quant_result_free(&r);
  e8q_had_factor_free(&fm);
  e8q_had_factor_free(&fn);
  free(W);
  free(X);
  free(H);
}

static uint64_t g_seed;
static void test_2bit(void **s) { (void)s; check_bits(2, g_seed); }
static void test_3bit(void **s) { (void)s; check_bits(3, g_seed); }
static void test_4bit(void **s) { (void)s; check_bits(4, g_seed); }

int main(void) {
  g_seed = t_fresh_seed("test_qlinear_quant");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_2bit),
      cmocka_unit_test(test_3bit),
      cmocka_unit_test(test_4bit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
