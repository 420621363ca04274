/* tests/quant/test_ldlq_dev.c: the per-row LDLQ of a CUDA LDLQ (kernels/ldlq_dev.h, one row per
 * thread there) run on the host, row by row, with the CPU's GEMMs for the buffered feedback, in
 * the CPU's tiles and buffers: it must equal e8q_ldlq_rows bit for bit (codes, codes2 and the
 * decoded weights) for every codebook, with and without feedback, several buffers (n > 128)
 * and several row tiles (m > 256), tune passes included.
 * Fresh random data each run (seed printed; E8Q_TEST_SEED repeats it). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/e8p.h"
#include "kernels/ldlq.h"
#include "kernels/ldlq_dev.h"

#include "../check.h" /* CHECK, n_pass/n_fail, g_seed, rnd/rndf */

/* e8q_ldlq_rows over all m rows, built from the device row functions (kernels/ldlq_impl.h's loop) */
static void ldlq_dev_host(const e8q_e8p_enc_tables *T, const e8q_ldl *f, const e8q_ldlq_opts *o, const double *W,
                          int64_t m, uint16_t *c1s, uint16_t *c2s, double *What) {
  const int64_t n = f->n, nb = n / 8, BUF = E8Q_LDLQ_BUF, TL = E8Q_LDLQ_ROW_TILE;
  double *hat = malloc(sizeof(double) * TL * n), *prod = malloc(sizeof(double) * TL * n);
  double *D = malloc(sizeof(double) * TL * n), *S = malloc(sizeof(double) * TL * BUF);
  for (int64_t a = 0; a < m; a += TL) {
    const int64_t mt = m - a < TL ? m - a : TL;
    const double *Wt = W + a * n;
    memset(hat, 0, sizeof(double) * mt * n);
    memset(prod, 0, sizeof(double) * mt * n);
    for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
      c0 = c1 - BUF > 0 ? c1 - BUF : 0;
      for (int64_t r = 0; r < mt; r++)
        e8q_ldqdev_pass_row(T, o->cb, o->feedback, n, c0, c1, f->L, Wt + r * n, prod + r * n, hat + r * n,
                            c1s + (a + r) * nb, c2s + (a + r) * nb);
      if (o->feedback && c0 > 0) {
        const int64_t wdt = c1 - c0;
        for (int64_t r = 0; r < mt; r++)
          for (int64_t j = 0; j < wdt; j++) S[r * BUF + j] = Wt[r * n + c0 + j] - hat[r * n + c0 + j];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mt, (int)c0, (int)wdt, 1.0, S, (int)BUF,
                    f->L + c0 * n, (int)n, 1.0, prod, (int)n);
      }
    }
    for (int it = 0; o->feedback && it < o->tune_iters; it++) {
      for (int64_t i = 0; i < mt * n; i++) D[i] = Wt[i] - hat[i];
      for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
        c0 = c1 - BUF > 0 ? c1 - BUF : 0;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mt, (int)(c1 - c0), (int)n, 1.0, D, (int)n,
                    f->H + c0, (int)n, 0.0, S, (int)BUF);
        for (int64_t r = 0; r < mt; r++)
          e8q_ldqdev_tune_row(T, o->cb, n, c0, c1, f->H, f->Hkk_inv, hat + r * n, D + r * n, S + r * BUF,
                              c1s + (a + r) * nb, c2s + (a + r) * nb);
      }
    }
    memcpy(What + a * n, hat, sizeof(double) * mt * n);
  }
  free(hat), free(prod), free(D), free(S);
}

static void one(const e8q_e8p_enc_tables *T, e8q_codebook_id cb, int64_t m, int64_t n, int feedback, int tune) {
  /* H = A Aᵀ/k + a little, W Gaussian-ish at RMS ~1 */
  const int64_t k = n + 7;
  double *A = malloc(sizeof(double) * n * k), *H = malloc(sizeof(double) * n * n), *W = malloc(sizeof(double) * m * n);
  for (int64_t i = 0; i < n * k; i++) A[i] = rndf();
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)k, 1.0 / k, A, (int)k, A, (int)k, 0.0, H,
              (int)n);
  for (int64_t i = 0; i < m * n; i++) W[i] = 1.7 * rndf();
  e8q_ldl f;
  e8q_ldl_status st;
  CHECK(e8q_ldl_build(&f, H, n, E8Q_SIGMA_REG, E8Q_PREC_F64, &st), "factorisation: %s", st.message);
  const e8q_ldlq_opts o = {.cb = cb, .tune_iters = tune, .feedback = feedback};
  const int64_t nb = n / 8, c2b = e8q_cb_traits(cb)->codes2_bytes;
  uint16_t *a1 = calloc(m * nb, 2), *b1 = calloc(m * nb, 2), *b2 = calloc(m * nb, 2);
  void *a2 = c2b ? calloc(m * nb, c2b) : NULL;
  double *aw = malloc(sizeof(double) * m * n), *bw = malloc(sizeof(double) * m * n);
  e8q_ldlq_rows(&f, &o, W, m, 0, m, a1, a2, aw);
  ldlq_dev_host(T, &f, &o, W, m, b1, b2, bw);
  int64_t c1_diff = 0, c2_diff = 0, w_diff = 0;
  for (int64_t i = 0; i < m * nb; i++) {
    c1_diff += a1[i] != b1[i];
    if (c2b == 2) c2_diff += ((uint16_t *)a2)[i] != b2[i];
    if (c2b == 1) c2_diff += ((uint8_t *)a2)[i] != b2[i];
    if (c2b == 0) c2_diff += b2[i] != 0;
  }
  for (int64_t i = 0; i < m * n; i++) w_diff += memcmp(&aw[i], &bw[i], sizeof(double)) != 0;
  CHECK(c1_diff == 0 && c2_diff == 0 && w_diff == 0,
        "%s m %lld n %lld feedback %d tune %d: %lld codes, %lld second codes, %lld weights differ", e8q_cb_name(cb),
        (long long)m, (long long)n, feedback, tune, (long long)c1_diff, (long long)c2_diff, (long long)w_diff);
  e8q_ldl_free(&f);
  free(A), free(H), free(W), free(a1), free(a2), free(b1), free(b2), free(aw), free(bw);
}

int main(void) {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_ldlq_dev: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  e8q_e8p_enc_tables *T = malloc(sizeof *T);
  e8q_e8p_enc_tables_fill(T);
  one(T, E8Q_CB_E8P12, 300, 264, 1, 2); /* 3 buffers, 2 row tiles */
  one(T, E8Q_CB_E8P12, 40, 64, 0, 0);   /* nearest rounding */
  one(T, E8Q_CB_E8P12RVQ4B, 57, 136, 1, 1);
  one(T, E8Q_CB_E8P12RVQ3B, 57, 136, 1, 1);
  free(T);
  printf("test_ldlq_dev: %d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
