/* tests/quant/test_quantize_gpu.c: a Hessian's GPU paths (--device cuda) against float64 loops.
 *   - Gram products (kernels/gram_gpu.h) vs e8q_hessian_gram_ref and the CPU DSYRK path
 *     (e8q_hessian_gram): odd shapes, row counts across the upload blocks, sums over several
 *     adds, exact symmetry, and a take that resets the sum;
 *   - the cuSOLVER Cholesky (worker/cholesky.h) vs e8q_cholesky_ref on random SPD matrices, and
 *     LAPACK's info (the failing minor) on one that is not positive definite;
 *   - the CUDA LDLQ (kernels/ldlq_gpu.h) vs e8q_ldlq_rows, every codebook, with and without
 *     feedback: at least 99% of the codes equal (only the feedback products' order of additions
 *     differs, so rounding ties can flip), the proxy loss within 1e-3 relative, and a second
 *     call over the rows split at a tile multiple giving the same bits.
 * Without a device: the fallback contract (NULL and a reason, for create and for the Hessian
 * accumulator, and the LDLQ), then exit 77 (CTest: skipped) with the reason. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cuda_util.h"
#ifdef E8Q_HAVE_CUDA
#include "kernels/cuda_libs.h"
#endif
#include "kernels/e8p.h"
#include "kernels/gram_gpu.h"
#include "kernels/ldlq_gpu.h"
#include "worker/cholesky.h"
#include "worker/hessian.h"

#include "../check.h" /* CHECK, n_pass/n_fail, g_seed, rnd/rndf */

/* |A - B| <= tol * sqrt(B_ii B_jj) for every entry (the Cauchy-Schwarz scale of entry ij) */
static double worst_rel(int n, const double *A, const double *B) {
  double w = 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double s = sqrt(B[(size_t)i * n + i] * B[(size_t)j * n + j]);
      double e = fabs(A[(size_t)i * n + j] - B[(size_t)i * n + j]) / (s > 0 ? s : 1);
      if (e > w) w = e;
    }
  return w;
}

int main(void) {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_quantize_gpu: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);

  if (e8q_cuda_device_count() == 0) {
    const char *why = NULL;
    e8q_gram_gpu *g = e8q_gram_gpu_create(0, 17, &why);
    CHECK(g == NULL && why && *why, "create without a device must return NULL with a reason");
    e8q_config cfg = {.dim = 16, .hidden_dim = 40, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .head_dim = 8,
                      .vocab_size = 32, .max_seq_len = 8};
    e8q_hessian_acc a;
    e8q_hessian_acc_init(&a, &cfg, 4);
    CHECK(e8q_hessian_acc_use_device(&a, 0) == 0, "the accumulator put a group on a device that does not exist");
    for (int gr = 0; gr < E8Q_N_GROUPS; gr++) CHECK(a.gpu[gr] == NULL, "group %d has a GPU sum", gr);
    e8q_hessian_acc_free(&a);
    double H8[64] = {0};
    for (int i = 0; i < 8; i++) H8[i * 9] = 1;
    e8q_ldl f8;
    e8q_ldl_status s8;
    CHECK(e8q_ldl_build(&f8, H8, 8, E8Q_SIGMA_REG, E8Q_PREC_F64, &s8), "identity factorisation: %s", s8.message);
    const char *lwhy = NULL;
    CHECK(e8q_ldlq_gpu_create(0, &f8, &lwhy) == NULL && lwhy && *lwhy, "LDLQ create without a device must return NULL");
    e8q_ldl_free(&f8);
#ifdef E8Q_HAVE_CUDA
    /* cuBLAS and cuSOLVER are loaded at run time (kernels/cuda_libs.h): a CUDA build finds them */
    const char *lib_why = NULL;
    CHECK(e8q_cuda_libs_load(&lib_why), "cuBLAS/cuSOLVER not loadable: %s", lib_why ? lib_why : "?");
    CHECK(e8q_cuda_libs()->dgemm && e8q_cuda_libs()->dpotrf, "entry points missing");
#endif
    printf("test_quantize_gpu: fallback %d passed, %d failed\n", n_pass, n_fail);
    if (n_fail) return 1;
    printf("SKIP test_quantize_gpu: no CUDA device (%s); the GPU comparison needs one\n",
           e8q_cuda_unavailable_reason() ? e8q_cuda_unavailable_reason() : "?");
    return 77;
  }

  /* rows, n, adds: within one block, across blocks, a model's widths */
  const int cases[][3] = {{1, 8, 1}, {300, 17, 2}, {513, 576, 3}, {256, 1000, 1}, {2048, 1536, 2}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const int rows = cases[c][0], n = cases[c][1], adds = cases[c][2];
    float *x = malloc(sizeof(float) * (size_t)rows * n * adds);                     /* [adds, rows, n] */
    for (size_t i = 0; i < (size_t)rows * n * adds; i++) x[i] = rndf() * (1 + (float)(i % 7)); /* uneven scales */
    double *ref = calloc((size_t)n * n, sizeof(double)), *cpu = calloc((size_t)n * n, sizeof(double));
    double *gpu = malloc(sizeof(double) * (size_t)n * n), *xd = malloc(sizeof(double) * (size_t)E8Q_GRAM_GPU_ROWS * n);
    double *xdc = malloc(sizeof(double) * (size_t)E8Q_HESS_ROWS * n);
    e8q_hessian_gram_ref(rows * adds, n, x, ref); /* the adds are consecutive rows */
    const char *why = NULL;
    e8q_gram_gpu *g = e8q_gram_gpu_create(0, n, &why);
    CHECK(g != NULL, "create [%d x %d]: %s", n, n, why ? why : "?");
    if (!g) return 1;
    for (int k = 0; k < adds; k++) {
      e8q_gram_gpu_add(g, rows, x + (size_t)k * rows * n, xd);
      e8q_hessian_gram(rows, n, x + (size_t)k * rows * n, xdc, cpu, 1);
    }
    e8q_gram_gpu_take(g, gpu);
    double wr = worst_rel(n, gpu, ref), wc = worst_rel(n, gpu, cpu);
    int sym = 1;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < i; j++) sym &= gpu[(size_t)i * n + j] == gpu[(size_t)j * n + i];
    CHECK(wr <= 1e-12, "[%d rows x %d adds, n %d]: GPU vs float64 loops: %.3g", rows, adds, n, wr);
    CHECK(wc <= 1e-12, "[%d rows x %d adds, n %d]: GPU vs CPU DSYRK: %.3g", rows, adds, n, wc);
    CHECK(sym, "[n %d]: the taken sum is not exactly symmetric", n);
    e8q_gram_gpu_take(g, gpu); /* the sum was reset */
    int zero = 1;
    for (size_t i = 0; i < (size_t)n * n; i++) zero &= gpu[i] == 0;
    CHECK(zero, "[n %d]: take did not reset the device sum", n);
    printf("  rows %4d x %d adds, n %4d: max rel. error vs float64 %.2e, vs CPU %.2e\n", rows, adds, n, wr, wc);
    e8q_gram_gpu_free(g);
    free(x); free(ref); free(cpu); free(gpu); free(xd); free(xdc);
  }
  /* Cholesky: A = B Bᵀ + n I, and one with a negative pivot at order 3 */
  const int orders[] = {8, 97, 576};
  for (size_t c = 0; c < sizeof orders / sizeof orders[0]; c++) {
    const int n = orders[c];
    double *B = malloc(sizeof(double) * (size_t)n * n), *A = malloc(sizeof(double) * (size_t)n * n);
    double *L = malloc(sizeof(double) * (size_t)n * n), *R = malloc(sizeof(double) * (size_t)n * n);
    for (size_t i = 0; i < (size_t)n * n; i++) B[i] = rndf();
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) {
        double s = i == j ? n : 0;
        for (int k = 0; k < n; k++) s += B[(size_t)i * n + k] * B[(size_t)j * n + k];
        A[(size_t)i * n + j] = s;
      }
    memcpy(L, A, sizeof(double) * (size_t)n * n);
    memcpy(R, A, sizeof(double) * (size_t)n * n);
    const int info = e8q_cholesky_cusolver_on(0, n, L), rinfo = e8q_cholesky_ref(n, R);
    double worst = 0, scale = 0;
    for (int i = 0; i < n; i++)
      for (int j = 0; j <= i; j++) { /* the lower triangle is the factor */
        worst = fmax(worst, fabs(L[(size_t)i * n + j] - R[(size_t)i * n + j]));
        scale = fmax(scale, fabs(R[(size_t)i * n + j]));
      }
    CHECK(info == 0 && rinfo == 0, "Cholesky n %d: info %d (reference %d)", n, info, rinfo);
    CHECK(worst <= 1e-12 * scale, "Cholesky n %d: max |L - L_ref| %.3g of %.3g", n, worst, scale);
    printf("  Cholesky n %4d: max rel. difference to the float64 loops %.2e\n", n, worst / scale);
    A[2 * n + 2] = -1.0; /* leading minor of order 3 not positive definite */
    memcpy(L, A, sizeof(double) * (size_t)n * n);
    const int bad = e8q_cholesky_cusolver_on(0, n, L);
    CHECK(n < 3 || bad == 3, "Cholesky n %d of a matrix with a negative pivot at 3: info %d, expected 3", n, bad);
    free(B); free(A); free(L); free(R);
  }
  /* LDLQ */
  const e8q_codebook_id cbs[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ3B, E8Q_CB_E8P12RVQ4B};
  for (int c = 0; c < 3; c++)
    for (int fb = 0; fb < 2; fb++) {
      const int64_t m = 600, n = 264, nb = n / 8;
      double *X = malloc(sizeof(double) * n * (n + 9)), *H = malloc(sizeof(double) * n * n);
      double *W = malloc(sizeof(double) * m * n), *a = malloc(sizeof(double) * m * n), *b = malloc(sizeof(double) * m * n);
      double *b2 = malloc(sizeof(double) * m * n);
      for (int64_t i = 0; i < n * (n + 9); i++) X[i] = rndf();
      for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
          double s = 0;
          for (int64_t k = 0; k < n + 9; k++) s += X[i * (n + 9) + k] * X[j * (n + 9) + k];
          H[i * n + j] = s;
        }
      for (int64_t i = 0; i < m * n; i++) W[i] = 1.7 * rndf();
      e8q_ldl f;
      e8q_ldl_status st;
      CHECK(e8q_ldl_build(&f, H, n, E8Q_SIGMA_REG, E8Q_PREC_F64, &st), "factorisation: %s", st.message);
      const e8q_ldlq_opts o = {.cb = cbs[c], .tune_iters = fb ? 2 : 0, .feedback = fb};
      uint16_t *ca = calloc(m * nb, 2), *cb1 = calloc(m * nb, 2), *cb2 = calloc(m * nb, 2);
      e8q_ldlq_rows(&f, &o, W, m, 0, m, ca, NULL, a);
      const char *why = NULL;
      e8q_ldlq_gpu *g = e8q_ldlq_gpu_create(0, &f, &why);
      CHECK(g != NULL, "LDLQ create: %s", why ? why : "?");
      if (!g) return 1;
      e8q_ldlq_gpu_rows(g, &o, W, m, cb1, NULL, b);
      e8q_ldlq_gpu_rows(g, &o, W, 512, cb2, NULL, b2); /* the rows split at a tile multiple */
      e8q_ldlq_gpu_rows(g, &o, W + 512 * n, m - 512, cb2 + 512 * nb, NULL, b2 + 512 * n);
      e8q_ldlq_gpu_free(g);
      int64_t same = 0;
      for (int64_t i = 0; i < m * nb; i++) same += ca[i] == cb1[i];
      const double pa = e8q_proxy_loss(W, a, f.H, n, 0, m), pb = e8q_proxy_loss(W, b, f.H, n, 0, m);
      CHECK(same >= 0.99 * m * nb, "LDLQ %s feedback %d: %lld of %lld codes equal to the CPU's", e8q_cb_name(cbs[c]), fb,
            (long long)same, (long long)(m * nb));
      CHECK(fabs(pa - pb) <= 1e-3 * pa, "LDLQ %s feedback %d: proxy %.6g vs CPU %.6g", e8q_cb_name(cbs[c]), fb, pb, pa);
      CHECK(memcmp(cb1, cb2, 2 * m * nb) == 0 && memcmp(b, b2, sizeof(double) * m * n) == 0,
            "LDLQ %s feedback %d: splitting the rows at a tile multiple changed the result", e8q_cb_name(cbs[c]), fb);
      printf("  LDLQ %-11s feedback %d: %.3f%% codes equal to the CPU's, proxy %.6g vs %.6g\n", e8q_cb_name(cbs[c]), fb,
             100.0 * same / (m * nb), pb, pa);
      e8q_ldl_free(&f);
      free(X), free(H), free(W), free(a), free(b), free(b2), free(ca), free(cb1), free(cb2);
    }
  printf("test_quantize_gpu: %d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
