/* bench/bench_qlinear.c: fused quantized-linear products against f32 BLAS and memory bandwidth,
 * all measured in the same run.
 *
 *   bench_qlinear [--quick] [--kernels-only] [--cb 0|1|2] [--shape MxN] [--threads T] [--batch B] [--reps R]
 *                 [--matrices N|auto] [--inference]
 *
 * For each shape (default 4096x14336 and 8192x28672), threads (1, 2) and batch (1, 8):
 *   - e8q_qlinear_forward (the whole fused call: SU, input Hadamard, decode product, output
 *     Hadamard, scales) for E8P (2 bit), RVQ3, RVQ4: median time per product;
 *   - OpenBLAS sgemv (batch 1) / sgemm (batch 8) on an f32 matrix of the same shape;
 *   - STREAM-style copy bandwidth with the same thread count, for arrays far larger than the
 *     caches (DRAM) and for arrays the size of the E8P codes (cache resident, as the codes are
 *     between repeated products when they fit in the last-level cache).
 * Ratios printed: speedup over f32 BLAS; effective weight bandwidth (code bytes / time) as a
 * fraction of the copy bandwidth (the bound for streaming those bytes).
 *
 * --matrices N cycles the fused products through N distinct weight matrices of the shape (each
 * its own random codes), so that the codes do not stay in the last-level cache between products
 * as one matrix's do; `auto` takes the smallest N whose E8P codes exceed twice the last-level
 * cache size read from sysfs. The time printed is per product; the bandwidth is then a DRAM
 * figure, compared with the DRAM copy of the same run.
 *
 * --inference sets the layers' gemm_min as an artifact's model does (coordinator/qmodel.c):
 * batches of E8Q_QLINEAR_GEMM_MIN or more then take the AMX-INT8 tiles (or decoded panels and
 * sgemm), the prefill path, to compare with the f32 sgemm rate (GFLOP/s) of the same shape.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/log.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_vnni.h"
#include "bench_common.h"
#include "bench_qlayer.h"

/* median seconds of reps runs (one warm-up run first) */
/* also sets g_cpu: mean CPU seconds of the calling thread per run, a noise-robust figure on a
 * shared machine where other processes steal the cores (time while descheduled is not
 * counted). With T OpenMP threads the calling thread does 1/T of the rows and waits for the
 * others, so this estimates the run time on free cores. Idle BLAS threads are not counted. */
static double g_cpu;
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#define TIME_MEDIAN(reps, out, stmt)                        \
  do {                                                      \
    double t_[64];                                          \
    int r_ = (reps) > 64 ? 64 : (reps);                     \
    stmt;                                                   \
    double c0_ = cpu_now();                                 \
    for (int i_ = 0; i_ < r_; i_++) {                       \
      double t0_ = e8q_now();                               \
      stmt;                                                 \
      t_[i_] = e8q_now() - t0_;                             \
    }                                                       \
    g_cpu = (cpu_now() - c0_) / r_;                         \
    qsort(t_, r_, sizeof(double), bench_cmp_d);                   \
    (out) = t_[r_ / 2];                                     \
  } while (0)

static int K_of(int d) { return e8q_had_choose_K(d); } /* the factor e8q would choose */


static int g_kernels_only, g_cb = -1; /* --cb 0|1|2: only E8P, RVQ3 or RVQ4 */
static int g_matrices = 1;            /* --matrices: distinct weight matrices cycled; 0 = auto */
static int g_inference;               /* --inference: the layers as an artifact's model has them (gemm_min) */

/* the last-level cache of cpu0 in bytes (the highest-level unified cache sysfs lists), or 0 */
static size_t llc_bytes(void) {
  size_t best = 0;
  int best_level = 0;
  for (int i = 0; i < 8; i++) {
    char path[128], type[32] = "";
    int level = 0;
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
    FILE *f = fopen(path, "r");
    if (!f) break;
    if (fscanf(f, "%31s", type) != 1) type[0] = 0;
    fclose(f);
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
    if ((f = fopen(path, "r"))) {
      if (fscanf(f, "%d", &level) != 1) level = 0;
      fclose(f);
    }
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    if (strcmp(type, "Unified") || level < best_level || !(f = fopen(path, "r"))) continue;
    size_t v = 0;
    char unit = 0;
    if (fscanf(f, "%zu%c", &v, &unit) >= 1) {
      if (unit == 'K') v <<= 10;
      else if (unit == 'M') v <<= 20;
      best = v;
      best_level = level;
    }
    fclose(f);
  }
  return best;
}

static void run_shape(int m, int n, int threads, int batch, int reps, double bw_dram) {
  const int np = n, nc = np / 8, K_in = K_of(np), K_out = K_of(m);
  size_t ncodes = (size_t)m * nc;
  int nmat = g_matrices;
  if (nmat == 0) { /* auto: E8P codes beyond twice the last-level cache */
    const size_t llc = llc_bytes();
    E8Q_CHECK(llc, "bench_qlinear --matrices auto: no last-level cache size in /sys/devices/system/cpu/cpu0/cache; give N");
    nmat = (int)(2 * llc / (2 * ncodes)) + 1;
    printf("  --matrices auto: %d matrices, %.0f MiB of E8P codes (last-level cache %.0f MiB)\n", nmat,
           2.0 * ncodes * nmat / (1 << 20), (double)llc / (1 << 20));
  }
  bench_qcodes *C = e8q_malloc(sizeof(bench_qcodes) * (size_t)nmat, "bench layers"); /* [nmat] */
  for (int k = 0; k < nmat; k++) bench_qcodes_make(&C[k], m, np, K_in, K_out);
  float *x = e8q_malloc(sizeof(float) * (size_t)batch * n, "x"), *y = e8q_malloc(sizeof(float) * (size_t)batch * m, "y");
  for (size_t i = 0; i < (size_t)batch * n; i++) x[i] = rndf();

  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  double bw_codes = 1, t_blas = 1;
  if (!g_kernels_only) {
  bw_codes = bench_copy_bw_omp(ncodes * 2, reps * 4); /* copy of arrays the size of the E8P codes */

  /* f32 BLAS on the same shape */
  float *W = e8q_malloc(sizeof(float) * (size_t)m * n, "f32 weight");
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < (size_t)m * n; i++) W[i] = (float)((int)(i % 17) - 8) * 0.01f;
  if (batch == 1)
    TIME_MEDIAN(reps, t_blas, cblas_sgemv(CblasRowMajor, CblasNoTrans, m, n, 1.f, W, n, x, 1, 0.f, y, 1));
  else
    TIME_MEDIAN(reps, t_blas, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, m, n, 1.f, x, n, W, n,
                                          0.f, y, m));
  free(W);
  double cpu_blas = g_cpu;
  printf("%5dx%-5d thr %d batch %2d | f32 %s %8.3f ms (cpu %7.3f ms; %5.1f GB/s of weights, %6.1f GFLOP/s) | copy DRAM %5.1f GB/s, codes-sized %5.1f GB/s\n",
         m, n, threads, batch, batch == 1 ? "sgemv" : "sgemm", t_blas * 1e3, cpu_blas * 1e3, 4.0 * m * n / t_blas / 1e9,
         2.0 * m * n * batch / t_blas / 1e9, bw_dram / 1e9, bw_codes / 1e9);
  }

  const char *const *names = BENCH_CB_NAMES;
  const double bytes_per_code[3] = {2, 3, 4};
  double t_e8p = 0;
  for (int c = 0; c < 3; c++) {
    if (g_cb >= 0 && c != g_cb) continue;
    e8q_qlinear *q = e8q_malloc(sizeof(e8q_qlinear) * (size_t)nmat, "bench qlinears"); /* [nmat] */
    for (int k = 0; k < nmat; k++) {
      e8q_qlinear_desc d = bench_qcodes_desc(&C[k], c, m, n, np, K_in, K_out);
      e8q_qlinear_init(&q[k], &d, names[c]);
      if (g_inference) q[k].gemm_min = E8Q_QLINEAR_GEMM_MIN;
    }
    const char *path = e8q_qlinear_path_batch(q, batch);
    double t;
    TIME_MEDIAN(reps, t, for (int k = 0; k < nmat; k++) e8q_qlinear_forward(&q[k], batch, x, y));
    t /= nmat; /* per product */
    g_cpu /= nmat;
    if (c == 0) t_e8p = t;
    double wb = bytes_per_code[c] * (double)ncodes / t;
    if (g_kernels_only) /* no BLAS or copy reference measured */
      printf("    %s %8.3f ms (cpu %7.3f ms) | weights %5.1f GB/s | %.3f ns per code per thread (cpu) | %s\n",
             names[c], t * 1e3, g_cpu * 1e3, wb / 1e9, g_cpu * 1e9 / ((double)ncodes / threads), path);
    else
      printf("    %s %8.3f ms (cpu %7.3f ms) | %5.1fx f32 | weights %5.1f GB/s = %3.0f%% of DRAM copy, %3.0f%% of codes-sized copy%s | %s\n",
             names[c], t * 1e3, g_cpu * 1e3, t_blas / t, wb / 1e9, 100 * wb / bw_dram, 100 * wb / bw_codes,
             c == 2 ? (t <= 2 * t_e8p ? " | RVQ4 <= 2x E8P" : " | RVQ4 > 2x E8P") : "", path);
    for (int k = 0; k < nmat; k++) e8q_qlinear_free(&q[k]);
    free(q);
  }
  for (int k = 0; k < nmat; k++) bench_qcodes_free(&C[k]);
  free(C);
  free(x);
  free(y);
}

int main(int argc, char **argv) {
  int shapes[2][2] = {{4096, 14336}, {8192, 28672}}, nshapes = 2;
  int thr_list[2] = {1, 2}, nthr = 2, b_list[2] = {1, 8}, nb = 2, reps = 9;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--kernels-only")) g_kernels_only = 1;
    else if (!strcmp(argv[i], "--cb") && i + 1 < argc) g_cb = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) { nshapes = 1; reps = 5; }
    else if (!strcmp(argv[i], "--shape") && i + 1 < argc) { sscanf(argv[++i], "%dx%d", &shapes[0][0], &shapes[0][1]); nshapes = 1; }
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) { thr_list[0] = atoi(argv[++i]); nthr = 1; }
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) { b_list[0] = atoi(argv[++i]); nb = 1; }
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--inference")) g_inference = 1;
    else if (!strcmp(argv[i], "--matrices") && i + 1 < argc) {
      i++;
      g_matrices = strcmp(argv[i], "auto") ? atoi(argv[i]) : 0;
      if (g_matrices < 0 || (g_matrices == 0 && strcmp(argv[i], "auto"))) { fprintf(stderr, "--matrices N|auto\n"); return 2; }
    }
    else { fprintf(stderr, "usage: %s [--quick] [--kernels-only] [--cb 0|1|2] [--shape MxN] [--threads T] [--batch B] [--reps R] [--matrices N|auto] [--inference]\n", argv[0]); return 2; }
  }
  /* each product line ends with the core e8q_qlinear_forward ran (e8q_qlinear_path) */
  printf("bench_qlinear: CPU: AVX2 %s, AVX-512 %s, VNNI %s (E8Q_NO_VNNI=1 / E8Q_NO_AVX512=1 / E8Q_NO_AVX2=1 "
         "select the other cores); median of %d runs; GB = 1e9 bytes\n", e8q_cpu_has_avx2() ? "yes" : "no",
         e8q_cpu_has_avx512() ? "yes" : "no", e8q_cpu_has_vnni() ? "yes" : "no", reps);
  for (int t = 0; t < nthr; t++) {
    omp_set_num_threads(thr_list[t]);
    double bw = g_kernels_only ? 1 : bench_copy_bw_omp((size_t)1 << 29, 5); /* 2 x 512 MiB: beyond any cache */
    for (int s = 0; s < nshapes; s++)
      for (int b = 0; b < nb; b++) run_shape(shapes[s][0], shapes[s][1], thr_list[t], b_list[b], reps, bw);
  }
  return 0;
}
