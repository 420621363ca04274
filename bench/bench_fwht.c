/* bench/bench_fwht.c: Hadamard transform throughput against memcpy bandwidth measured in the
 * same run. For n = 4096 (K = 1) and 28672 (K = 28), transforms a [rows, n] matrix row by row
 * (M^T per row, f32 and f64) and column by column, best of 5, and prints GB/s (bytes read +
 * written once) and the ratio to memcpy.   usage: bench_fwht [MiB per matrix, default 64] */
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "common/rng.h"
#include "kernels/hadamard.h"

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 64;
  double bw = bench_memcpy_gbs(mib << 20, 5);
  printf("memcpy: %.2f GB/s (read + write, %zu MiB)\n", bw, mib);
  const int64_t sizes[2] = {4096, 28672};
  for (int s = 0; s < 2; s++) {
    int64_t n = sizes[s];
    e8q_had h;
    e8q_had_init(&h, n, E8Q_HAD_SEED);
    for (int prec = 0; prec < 2; prec++) {
      size_t esz = prec ? sizeof(double) : sizeof(float);
      int64_t rows = (int64_t)((mib << 20) / (esz * (size_t)n));
      void *A = malloc(esz * (size_t)(rows * n));
      for (int64_t i = 0; i < rows * n; i++) {
        double v = e8q_rng_uniform_at(1, 2, (uint64_t)i) - 0.5;
        if (prec) ((double *)A)[i] = v;
        else ((float *)A)[i] = (float)v;
      }
      for (int layout = 0; layout < 2; layout++) {
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
          double t = bench_now();
          if (layout == 0) {
            if (prec) e8q_had_rows_f64(&h, A, rows, n, 1);
            else e8q_had_rows_f32(&h, A, rows, n, 1);
          } else {
            /* the same bytes seen as [n, rows]: every column a length-n vector */
            if (prec) e8q_had_cols_f64(&h, A, rows, rows, 1);
            else e8q_had_cols_f32(&h, A, rows, rows, 1);
          }
          t = bench_now() - t;
          if (t < best) best = t;
        }
        double gbs = 2.0 * (double)esz * (double)(rows * n) / best / 1e9;
        printf("n=%6lld K=%3d %s %-4s %6lld vectors: %8.2f ms  %6.2f GB/s  = %.2f x memcpy\n", (long long)n, h.f.K,
               prec ? "f64" : "f32", layout ? "cols" : "rows", (long long)rows, 1e3 * best, gbs, gbs / bw);
      }
      free(A);
    }
    e8q_had_free(&h);
  }
  return 0;
}
