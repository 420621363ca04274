/* tests/fused/test_qlinear_quant.c: the fused kernel decodes what the quantizer encodes.
 *
 * The quantizer (worker/quantize_linear.c, e8q_quantize_group) returns the codes, SU, SV,
 * Wscale and fuse scale; the quantized weight What in the original basis is rebuilt here with
 * the quantizer's own steps in float64 (codebook decode, Wscale, the inverse RHT of
 * kernels/hadamard.h). A layer built from those codes must compute What·x: this holds only if
 * the decoder's conventions (SU on the input side, M_n_padᵀ on the input, M_m on the output,
 * padding, RVQ stage scaling) are the quantizer's. Every bit width, a padded input dimension
 * (n = 172 -> 176), non-power-of-two factors on both sides, fresh random data each run. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "kernels/e8p.h"
#include "kernels/qlinear.h"
#include "testutil.h"
#include "worker/quantize_linear.h"

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
  e8q_group_plan gp;
  memset(&gp, 0, sizeof gp);
  gp.name = "test", gp.m = m, gp.n = n, gp.n_pad = n_pad, gp.n_pieces = 1, gp.piece_rows[0] = m;
  gp.K_m = e8q_had_choose_K(m), gp.K_n = e8q_had_choose_K(n_pad);
  e8q_qlin_opts o = {.bits = bits, .method = E8Q_METHOD_LDLQ, .tune_iters = 2, .seed = t_rng_u64(&g)};
  e8q_qlin_result r;
  e8q_quantize_group(&o, &gp, 1, 2, W, H, nsamp, &r);
  assert_non_null(r.codes);
  assert_int_equal(r.n_pad, n_pad);
  e8q_had hm, hn;
  e8q_had_init(&hm, m, E8Q_HAD_SEED);
  e8q_had_init(&hn, n_pad, E8Q_HAD_SEED);
  const e8q_had_factor fm = hm.f, fn = hn.f;
  assert_true(fm.K > 1 && fn.K > 1); /* non-power-of-two factors on both sides */
  /* What [m, n] in the original basis: fuse scale x SV M_m (Wscale Q) M_n_padᵀ SU, first n columns */
  const e8q_codebook_id cb = e8q_cb_from_bits(bits);
  const int c2 = e8q_cb_traits(cb)->codes2_bytes;
  double *Q = malloc(sizeof(double) * m * n_pad), *SU = malloc(sizeof(double) * n_pad), *SV = malloc(sizeof(double) * m);
  for (int i = 0; i < m * n_pad / 8; i++) {
    uint16_t s2 = c2 == 2 ? ((uint16_t *)r.codes2)[i] : c2 == 1 ? ((uint8_t *)r.codes2)[i] : 0;
    e8q_cb_decode_f64(cb, r.codes[i], s2, Q + 8 * i);
  }
  for (int i = 0; i < m * n_pad; i++) Q[i] *= (double)r.Wscale;
  for (int j = 0; j < n_pad; j++) SU[j] = r.SU[j];
  for (int i = 0; i < m; i++) SV[i] = r.SV[i];
  e8q_rht_weight_inv(&hm, &hn, SU, SV, Q);
  float *What = malloc(sizeof(float) * m * n);
  for (int i = 0; i < m; i++)
    for (int k = 0; k < n; k++) What[i * n + k] = (float)(Q[i * n_pad + k] * r.fuse_scales[0]);
  free(Q), free(SU), free(SV);

  e8q_qlinear_desc d = {.m = m, .n = n, .n_pad = n_pad, .codebook = cb, .codes = r.codes,
                        .codes2 = r.codes2, .SU = r.SU, .SV = r.SV, .Wscale = r.Wscale, .n_pieces = 1,
                        .fuse_scales = r.fuse_scales,
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
      for (int k = 0; k < n; k++) acc += (double)What[i * n + k] * x[b * n + k];
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
    worst = fmax(worst, fabs(Wd[i] - (double)What[i]));
    wmax = fmax(wmax, fabs((double)What[i]));
  }
  if (!(worst <= 1e-5 * wmax)) fail_msg("%d bit: dense decode differs from What by %.3g", bits, worst / wmax);
  free(Wd);
  free(x);
  free(y);
  e8q_qlinear_free(&q);
  e8q_qlin_result_free(&r);
  e8q_had_free(&hm);
  e8q_had_free(&hn);
  free(What);
  free(W);
  free(X);
  free(H);
}

static uint64_t g_seed;
static void test_2bit(void **s) { (void)s; check_bits(2, g_seed); }
static void test_3bit(void **s) { (void)s; check_bits(3, g_seed); }
static void test_4bit(void **s) { (void)s; check_bits(4, g_seed); }

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  e8q_comm_global_open(-1);
  g_seed = t_fresh_seed("test_qlinear_quant");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_2bit),
      cmocka_unit_test(test_3bit),
      cmocka_unit_test(test_4bit),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  e8q_comm_global_close();
  MPI_Finalize();
  return rc;
}
