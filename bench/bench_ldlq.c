/* bench/bench_ldlq.c: buffered LDLQ (f32, E8P12, 1 tune pass) on an m x n problem, rows
 * sampled, against the OpenBLAS sgemm rate measured on the same shapes in the same run.
 * The LDLQ phase does an (rows x n x n/2) product and each tune pass an (rows x n x n) one;
 * the ratio reported is (gemm-equivalent time of that work at the measured sgemm rate) /
 * (LDLQ time): 1.0 would mean the codebook search and feedback loops cost nothing.
 * H and L are synthetic (H = I + small symmetric noise, L small random unit block-lower):
 * the timing does not depend on their values, and a real Cholesky of n = 28672 would take
 * longer than the loop being measured.
 * usage: bench_ldlq [m n rows] ...; default: 4096 4096 256 and 8192 28672 64 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "common/rng.h"
#include "kernels/ldlq.h"

static void bench(int64_t m, int64_t n, int64_t rows) {
  e8q_ldl f;
  memset(&f, 0, sizeof f);
  f.n = n;
  f.prec = E8Q_PREC_F32;
  f.sigma_reg = 0.01;
  f.Hf = malloc(sizeof(float) * (size_t)(n * n));
  f.Lf = malloc(sizeof(float) * (size_t)(n * n));
  f.Hkk_inv = malloc(sizeof(double) * (size_t)(n * 8));
  if (!f.Hf || !f.Lf || !f.Hkk_inv) {
    printf("m=%lld n=%lld: not enough memory (%.1f GB)\n", (long long)m, (long long)n, 8e-9 * (double)(n * n));
    free(f.Hf), free(f.Lf), free(f.Hkk_inv);
    return;
  }
  double sc = 0.01 / (double)n;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) {
      double u = e8q_rng_uniform_at(1, 1, (uint64_t)(i < j ? i * n + j : j * n + i)) - 0.5;
      f.Hf[i * n + j] = (float)((i == j) + sc * u);
      f.Lf[i * n + j] = (i / 8 > j / 8) ? (float)(sc * (e8q_rng_uniform_at(1, 2, (uint64_t)(i * n + j)) - 0.5)) : (float)((i == j) ? 1 : 0);
    }
  for (int64_t k = 0; k < n / 8; k++)
    for (int a = 0; a < 8; a++)
      for (int b = 0; b < 8; b++) f.Hkk_inv[k * 64 + a * 8 + b] = a == b;
  double *W = malloc(sizeof(double) * (size_t)(rows * n));
  e8q_rng_fill_normal(3, 4, 0, (size_t)(rows * n), W);
  uint16_t *codes = malloc(sizeof(uint16_t) * (size_t)(rows * n / 8));
  /* sgemm rate on the shapes LDLQ uses: rows x n x n */
  float *A = malloc(sizeof(float) * (size_t)(rows * n)), *C = malloc(sizeof(float) * (size_t)(rows * n));
  for (int64_t i = 0; i < rows * n; i++) A[i] = (float)W[i];
  double t = bench_now();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)n, (int)n, 1.0f, A, (int)n, f.Hf, (int)n, 0.0f, C, (int)n);
  double tg = bench_now() - t;
  double gflops = 2.0 * (double)rows * (double)n * (double)n / tg / 1e9;
  e8q_ldlq_opts o0 = {.cb = E8Q_CB_E8P12, .tune_iters = 0, .feedback = 1};
  e8q_ldlq_opts o1 = {.cb = E8Q_CB_E8P12, .tune_iters = 1, .feedback = 1};
  t = bench_now();
  e8q_ldlq_rows(&f, &o0, W, rows, 0, rows, codes, NULL, NULL);
  double t0 = bench_now() - t;
  t = bench_now();
  e8q_ldlq_rows(&f, &o1, W, rows, 0, rows, codes, NULL, NULL);
  double t1 = bench_now() - t - t0; /* one tune pass */
  double g0 = (double)rows * (double)n * (double)n / (gflops * 1e9); /* rows x n x n/2 at 2 flops */
  double g1 = 2.0 * (double)rows * (double)n * (double)n / (gflops * 1e9);
  printf("m=%lld n=%lld (%lld rows sampled, %d threads): sgemm %.1f GFLOP/s; LDLQ %.2f s (gemm bound %.2f s, ratio %.2f); "
         "tune pass %.2f s (gemm bound %.2f s, ratio %.2f); full matrix, 1 + %d passes: about %.0f s\n",
         (long long)m, (long long)n, (long long)rows, omp_get_max_threads(), gflops, t0, g0, g0 / t0, t1, g1, g1 / t1,
         E8Q_TUNE_ITERS, (t0 + E8Q_TUNE_ITERS * t1) * (double)m / (double)rows);
  free(A), free(C), free(W), free(codes);
  free(f.Hf), free(f.Lf), free(f.Hkk_inv);
}

int main(int argc, char **argv) {
  if (argc >= 4) {
    for (int a = 1; a + 2 < argc; a += 3) bench(atoll(argv[a]), atoll(argv[a + 1]), atoll(argv[a + 2]));
    return 0;
  }
  bench(4096, 4096, 256);
  bench(8192, 28672, 64);
  return 0;
}
