/* tests/synth.h: synthetic quantization problems shared by the LDLQ and driver tests.
 *   synth_hessian   H [n, n] = Q diag(10^(-decades k/(n-1))) Qᵀ / n, Q a seeded orthogonal
 *                   matrix (kernels/hadamard.h random factor when n has no Paley order)
 *   synth_weight    W [m, n] standard normal from (seed, E8Q_RNG_STREAM_TEST)
 * Both malloc'd, owned by the caller. */
#ifndef E8Q_TESTS_SYNTH_H
#define E8Q_TESTS_SYNTH_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/rng.h"
#include "kernels/hadamard.h"

static inline double *synth_hessian(int64_t n, double decades, uint64_t seed) {
  e8q_had_factor q;
  e8q_had_factor_build(&q, (int)n, seed); /* random orthogonal when no Paley order: any n works */
  double *H = calloc((size_t)(n * n), sizeof(double));
  double s = 1.0 / (double)n;
  for (int64_t k = 0; k < n; k++) {
    double lam = pow(10.0, -decades * (double)k / (double)(n - 1));
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < n; j++) H[i * n + j] += lam * q.R[i * n + k] * q.R[j * n + k] * s;
  }
  e8q_had_factor_free(&q);
  return H;
}

static inline double *synth_weight(int64_t m, int64_t n, uint64_t seed) {
  double *W = malloc(sizeof(double) * (size_t)(m * n));
  e8q_rng_fill_normal(seed, E8Q_RNG_STREAM_TEST, 0, (size_t)(m * n), W);
  return W;
}

#endif
