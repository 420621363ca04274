/* tests/quant/test_hessian_gpu.c: a Hessian's GPU paths (--device cuda) against float64 loops.
 *   - Gram products (kernels/gram_gpu.h) vs e8q_hessian_gram_ref and the CPU DSYRK path
 *     (e8q_hessian_gram): odd shapes, row counts across the upload blocks, sums over several
 *     adds, exact symmetry, and a take that resets the sum;
 *   - the cuSOLVER Cholesky (worker/cholesky.h) vs e8q_cholesky_ref on random SPD matrices, and
 *     LAPACK's info (the failing minor) on one that is not positive definite.
 * Without a device: the fallback contract (NULL and a reason, for create and for the Hessian
 * accumulator), then exit 77 (CTest: skipped) with the reason. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cuda_util.h"
#include "kernels/gram_gpu.h"
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
  printf("test_hessian_gpu: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);

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
    printf("test_hessian_gpu: fallback %d passed, %d failed\n", n_pass, n_fail);
    if (n_fail) return 1;
    printf("SKIP test_hessian_gpu: no CUDA device (%s); the GPU comparison needs one\n",
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
  printf("test_hessian_gpu: %d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
