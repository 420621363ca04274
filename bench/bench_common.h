/* bench/bench_common.h: timing and the bounds the benchmarks compare against. */
#ifndef E8Q_BENCH_COMMON_H
#define E8Q_BENCH_COMMON_H

#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* memcpy bandwidth in GB/s counting bytes read + written, best of reps over `bytes` */
static inline double bench_memcpy_gbs(size_t bytes, int reps) {
  char *a = malloc(bytes), *b = malloc(bytes);
  memset(a, 1, bytes);
  memset(b, 2, bytes);
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t = bench_now();
    memcpy(b, a, bytes);
    t = bench_now() - t;
    if (t < best) best = t;
    a[r % bytes] = b[(r * 7) % bytes]; /* keep the copies observable */
  }
  free(a);
  free(b);
  return 2.0 * (double)bytes / best / 1e9;
}

/* qsort order of doubles */
static inline int bench_cmp_d(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* STREAM copy on the current OpenMP threads over two arrays of `bytes`: bytes read + written per
 * second (not GB/s), the median of reps timed passes after one untimed pass that faults the
 * pages in */
static inline double bench_copy_bw_omp(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float);
  float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
  if (!a || !b) abort();
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = (float)i;
  double t[64];
  if (reps > 64) reps = 64;
  if (reps < 1) reps = 1;
  for (int r = -1; r < reps; r++) {
    const double t0 = bench_now();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) b[i] = a[i];
    if (r >= 0) t[r] = bench_now() - t0;
  }
  volatile float sink = b[n / 3];
  (void)sink;
  free(a);
  free(b);
  qsort(t, (size_t)reps, sizeof(double), bench_cmp_d);
  return 2.0 * (double)n * sizeof(float) / t[reps / 2];
}

#endif
