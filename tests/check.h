/* tests/check.h: pass/fail counting for the test programs that cannot use cmocka (the CUDA host
 * test is C++ compiled by nvcc; the GPU and MPI tests report their own skip codes and ranks), and
 * their fixed xorshift stream. Every failure prints file, line, the seed and (MPI tests, g_rank
 * set) the rank. Header-only, C and C++. */
#ifndef E8Q_TESTS_CHECK_H
#define E8Q_TESTS_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdio.h>

static int n_pass, n_fail;
static unsigned long long g_seed; /* printed with every failure: what reproduces it */
static int g_rank = -1;           /* >= 0: printed with every failure (MPI tests) */

#define CHECK(cond, ...)                                                                        \
  do {                                                                                          \
    if (cond) {                                                                                 \
      n_pass++;                                                                                 \
    } else {                                                                                    \
      n_fail++;                                                                                 \
      if (g_rank >= 0) fprintf(stderr, "[rank %d] ", g_rank);                                   \
      fprintf(stderr, "FAIL %s:%d (seed %llu): ", __FILE__, __LINE__, (unsigned long long)g_seed); \
      fprintf(stderr, __VA_ARGS__);                                                             \
      fprintf(stderr, "\n");                                                                    \
    }                                                                                           \
  } while (0)

/* "<name>: N passed, M failed"; the exit code (1 on any failure) */
static inline int check_report_local(const char *name) {
  printf("%s: %d passed, %d failed\n", name, n_pass, n_fail);
  return n_fail ? 1 : 0;
}

/* max |a - b| over max |b| (over 1 when b is all zero), in double */
static inline double rel_err(const float *a, const float *b, size_t n) {
  double mx = 0, d = 0;
  for (size_t i = 0; i < n; i++) {
    mx = fmax(mx, fabs((double)b[i]));
    d = fmax(d, fabs((double)a[i] - (double)b[i]));
  }
  return d / (mx > 0 ? mx : 1);
}

/* ---------------------------------------------------------------- fixed xorshift stream */
static unsigned long long check_rs = 0x9E3779B97F4A7C15ull; /* set from g_seed by the test */
static inline unsigned long long rnd(void) {
  check_rs ^= check_rs << 13;
  check_rs ^= check_rs >> 7;
  check_rs ^= check_rs << 17;
  return check_rs;
}
/* uniform in [-1, 1), never exactly 0 */
static inline float rndf(void) {
  float v = (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2 - 1);
  return v == 0 ? 0.5f : v;
}

#endif
