/* bench/bench_e8p_encode.c: encoder throughput (vectors of 8 per second) for E8P12, RVQ4 and
 * RVQ3, single thread and all OpenMP threads, against the brute-force search over all 65,536
 * points (the bound an exact encoder must beat) measured in the same run.
 * usage: bench_e8p_encode [vectors, default 1<<20] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "common/rng.h"
#include "kernels/e8p.h"

static double run(e8q_codebook_id cb, const double *x, long n, int threads) {
  double t = bench_now();
  uint16_t sink = 0;
#pragma omp parallel for num_threads(threads) reduction(^ : sink) schedule(static)
  for (long k = 0; k < n; k++) {
    uint16_t c1, c2;
    double q[8];
    e8q_cb_encode(cb, x + 8 * k, &c1, &c2, q);
    sink ^= c1 ^ c2;
  }
  t = bench_now() - t;
  if (sink == 0x1234) printf(" ");
  return (double)n / t;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1L << 20;
  double *x = malloc(sizeof(double) * 8 * (size_t)n);
  e8q_rng_fill_normal(5, 6, 0, (size_t)(8 * n), x);
  uint16_t warm;
  e8q_e8p_encode(x, NULL); /* tables */
  long nb = 2000;
  double t = bench_now();
  for (long k = 0; k < nb; k++) warm = e8q_e8p_encode_ref(x + 8 * k, NULL);
  double brute = (double)nb / (bench_now() - t);
  (void)warm;
  int maxt = omp_get_max_threads();
  printf("brute force (65,536 points, 1 thread): %.0f vectors/s\n", brute);
  const e8q_codebook_id cbs[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ4B, E8Q_CB_E8P12RVQ3B};
  for (int c = 0; c < 3; c++) {
    double v1 = run(cbs[c], x, n, 1), vt = run(cbs[c], x, n, maxt);
    printf("%-11s 1 thread: %9.0f vectors/s (%6.1f x brute force)   %d threads: %9.0f vectors/s (%.2f x 1 thread), %.1f Mweights/s\n",
           e8q_cb_name(cbs[c]), v1, v1 / brute, maxt, vt, vt / v1, 8 * vt / 1e6);
  }
  free(x);
  return 0;
}
