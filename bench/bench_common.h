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

#endif
