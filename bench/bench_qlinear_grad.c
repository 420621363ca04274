/* bench/bench_qlinear_grad.c: the quantized linear's backward (kernels/qlinear_grad.h) against
 * f32 BLAS on a dense matrix of the same shape, measured in the same run.
 *
 *   bench_qlinear_grad [--quick] [--cb 0|1|2] [--shape MxN] [--batch B] [--threads T] [--reps R]
 *
 * For each shape (default 4096x4096, 4096x14336 and SmolLM2-135M's down_proj 576x1536) and batch
 * (1, 16), with T OpenMP threads (default: OMP_NUM_THREADS) and as many BLAS threads:
 *   - f32 BLAS bounds: y = W x (sgemv / sgemm, the forward's shape) and t = Wᵀ g (sgemv
 *     transposed / sgemm, the backward's shape) for W f32 [m, n];
 *   - e8q_qlinear_forward (the whole fused forward) for E8P, RVQ3, RVQ4;
 *   - e8q_qlinear_codes_matmul_t (the transpose fused product alone, no transforms);
 *   - e8q_qlinear_backward with dx and dSU only (no forward recomputation) and with all of
 *     dx, dSU, dSV, dfs (recomputes M_m z by one forward).
 * Best (fastest) of R runs after one warm-up (robust on a shared machine); ratios are BLAS time / e8q time (> 1: faster than f32
 * BLAS), the forward against the forward-shaped BLAS call, the rest against the transposed one.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_grad.h"
#include "bench_qlayer.h"

/* the fastest of reps runs (one warm-up run first): on a shared machine other processes only
 * ever add time, so the minimum is the figure least disturbed by them */
#define TIME_BEST(reps, out, stmt)          \
  do {                                      \
    double best_ = 1e30;                    \
    stmt;                                   \
    for (int i_ = 0; i_ < (reps); i_++) {   \
      double t0_ = e8q_now();               \
      stmt;                                 \
      double t_ = e8q_now() - t0_;          \
      if (t_ < best_) best_ = t_;           \
    }                                       \
    (out) = best_;                          \
  } while (0)


static int g_cb = -1;

/* ---------------------------------------------------------------- one shape */
static void run_shape(int m, int n, int batch, int reps) {
  const int np = (int)e8q_pad8(n), K_in = e8q_had_choose_K(np), K_out = e8q_had_choose_K(m);
  bench_qcodes C;
  bench_qcodes_make(&C, m, np, K_in, K_out);
  float *x = e8q_malloc(sizeof(float) * (size_t)batch * n, "x");          /* [batch, n] */
  float *y = e8q_malloc(sizeof(float) * (size_t)batch * m, "y");          /* [batch, m] */
  float *dy = e8q_malloc(sizeof(float) * (size_t)batch * m, "dy");        /* [batch, m] */
  float *dx = e8q_malloc(sizeof(float) * (size_t)batch * n, "dx");        /* [batch, n] */
  float *t = e8q_malloc(sizeof(float) * (size_t)batch * np, "t");         /* [batch, n_pad] */
  float *dSU = e8q_calloc((size_t)np, sizeof(float), "dSU"), *dSV = e8q_calloc((size_t)m, sizeof(float), "dSV");
  float dfs[1] = {0};
  for (size_t i = 0; i < (size_t)batch * n; i++) x[i] = rndf();
  for (size_t i = 0; i < (size_t)batch * m; i++) dy[i] = rndf();

  /* f32 BLAS on the same shape: forward y = W x, backward t = Wᵀ g */
  double t_bf, t_bt;
  {
    float *W = e8q_malloc(sizeof(float) * (size_t)m * n, "f32 weight"); /* [m, n] */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < (size_t)m * n; i++) W[i] = (float)((int)(i % 17) - 8) * 0.01f;
    if (batch == 1) {
      TIME_BEST(reps, t_bf, cblas_sgemv(CblasRowMajor, CblasNoTrans, m, n, 1.f, W, n, x, 1, 0.f, y, 1));
      TIME_BEST(reps, t_bt, cblas_sgemv(CblasRowMajor, CblasTrans, m, n, 1.f, W, n, dy, 1, 0.f, dx, 1));
    } else {
      TIME_BEST(reps, t_bf, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, m, n, 1.f, x, n, W, n, 0.f, y, m));
      TIME_BEST(reps, t_bt, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, n, m, 1.f, dy, m, W, n, 0.f, dx, n));
    }
    free(W);
  }
  printf("%5dx%-5d batch %2d | f32 BLAS: W x %8.3f ms, Wᵀ g %8.3f ms (%s)\n", m, n, batch, t_bf * 1e3, t_bt * 1e3,
         batch == 1 ? "sgemv" : "sgemm");

  const char *const *names = BENCH_CB_NAMES;
  for (int c = 0; c < 3; c++) {
    if (g_cb >= 0 && c != g_cb) continue;
    e8q_qlinear_desc d = bench_qcodes_desc(&C, c, m, n, np, K_in, K_out);
    e8q_qlinear q;
    e8q_qlinear_init(&q, &d, names[c]);
    double tf, tt, tb1, tb2;
    TIME_BEST(reps, tf, e8q_qlinear_forward(&q, batch, x, y));
    TIME_BEST(reps, tt, e8q_qlinear_codes_matmul_t(&q, batch, dy, t));
    TIME_BEST(reps, tb1, e8q_qlinear_backward(&q, batch, x, dy, dx, dSU, NULL, NULL));
    TIME_BEST(reps, tb2, e8q_qlinear_backward(&q, batch, x, dy, dx, dSU, dSV, dfs));
    printf("    %s fwd %8.3f ms (%5.2fx BLAS) | Ŵrᵀg %8.3f ms (%5.2fx) | bwd dx,dSU %8.3f ms (%5.2fx) | "
           "bwd all %8.3f ms (%5.2fx) | bwd all / fwd %4.2f | fwd core %s\n",
           names[c], tf * 1e3, t_bf / tf, tt * 1e3, t_bt / tt, tb1 * 1e3, t_bt / tb1, tb2 * 1e3, t_bt / tb2, tb2 / tf,
           e8q_qlinear_path(&q));
    e8q_qlinear_free(&q);
  }
  bench_qcodes_free(&C);
  free(x); free(y); free(dy); free(dx); free(t); free(dSU); free(dSV);
}

int main(int argc, char **argv) {
  int shapes[3][2] = {{4096, 4096}, {4096, 14336}, {576, 1536}}, nshapes = 3;
  int b_list[2] = {1, 16}, nb = 2, reps = 9, threads = omp_get_max_threads();
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--cb") && i + 1 < argc) g_cb = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) reps = 3;
    else if (!strcmp(argv[i], "--shape") && i + 1 < argc) { sscanf(argv[++i], "%dx%d", &shapes[0][0], &shapes[0][1]); nshapes = 1; }
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) { b_list[0] = atoi(argv[++i]); nb = 1; }
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else { fprintf(stderr, "usage: %s [--quick] [--cb 0|1|2] [--shape MxN] [--batch B] [--threads T] [--reps R]\n", argv[0]); return 2; }
  }
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  printf("bench_qlinear_grad: %d threads; transpose product: %s; best of %d runs\n", threads,
         e8q_qlinear_grad_path(), reps);
  for (int s = 0; s < nshapes; s++)
    for (int b = 0; b < nb; b++) run_shape(shapes[s][0], shapes[s][1], b_list[b], reps);
  return 0;
}
