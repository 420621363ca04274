/* kernels/qlinear_had.c: see qlinear_had.h.
 * PROVISIONAL: a direct implementation of the definition until kernels/hadamard.{h,c}
 * (quant) lands; then this file becomes a call into it. */
#include "kernels/qlinear_had.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

void e8q_qlinear_had(int k, int K, const float *R, int transpose, float *x) {
  const int p = k / K;
  for (int a = 0; a < K; a++) { /* WHT_{p} on each of the K segments (natural order) */
    float *v = x + (size_t)a * p;
    for (int h = 1; h < p; h *= 2)
      for (int i = 0; i < p; i += 2 * h)
        for (int j = i; j < i + h; j++) {
          float s = v[j], d = v[j + h];
          v[j] = s + d;
          v[j + h] = s - d;
        }
  }
  const float sc = (float)(1.0 / sqrt((double)k));
  if (K == 1) {
    for (int i = 0; i < k; i++) x[i] *= sc;
    return;
  }
  float *t = e8q_malloc(sizeof(float) * (size_t)k, "Hadamard temp");
  for (int a = 0; a < K; a++)
    for (int b = 0; b < p; b++) {
      float acc = 0;
      for (int c = 0; c < K; c++) acc += (transpose ? R[c * K + a] : R[a * K + c]) * x[(size_t)c * p + b];
      t[(size_t)a * p + b] = acc * sc;
    }
  memcpy(x, t, sizeof(float) * (size_t)k);
  free(t);
}
