/* worker/linear.c: y = x Wᵀ, dense through BLAS, quantized through the fused kernels (worker/linear.h). */
#include "worker/linear.h"

#include <cblas.h>

#include "common/error.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_gpu.h"

void e8q_linear_forward(const e8q_linear *L, int T, const float *x, float *y) { e8q_linear_forward_keep(L, T, x, y, NULL); }

void e8q_linear_forward_keep(const e8q_linear *L, int T, const float *x, float *y, float *z) {
  if (T <= 0) return;
  if (L->w) {
    if (T == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, L->m, L->n, 1.0f, L->w, L->n, x, 1, 0.0f, y, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L->m, L->n, 1.0f, x, L->n, L->w, L->n, 0.0f, y, L->m);
    return;
  }
  /* the quantized path: fused decode kernels (kernels/qlinear.h; L->q points at an e8q_qlinear) */
  if (L->q) {
    const e8q_qlinear *q = (const e8q_qlinear *)L->q;
    E8Q_CHECK(q->d.m == L->m && q->d.n == L->n, "linear [%d x %d] has a quantized form of shape [%d x %d]", L->m, L->n,
              q->d.m, q->d.n);
    if (L->gpu && !z) /* the CUDA fused kernels on host buffers; training (z) stays on the CPU */
      e8q_qlinear_forward_gpu(q, L->gpu, T, x, y);
    else
      e8q_qlinear_forward_keep(q, T, x, y, z);
    return;
  }
  E8Q_FATAL("linear [%d x %d] has neither dense weights nor a quantized form", L->m, L->n);
}

void e8q_linear_forward_ref(const e8q_linear *L, int T, const float *x, float *y) {
  E8Q_CHECK(L->w, "e8q_linear_forward_ref: linear [%d x %d] has no dense weights", L->m, L->n);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < L->m; i++) {
      double acc = 0.0;
      for (int j = 0; j < L->n; j++) acc += (double)x[(size_t)t * L->n + j] * L->w[(size_t)i * L->n + j];
      y[(size_t)t * L->m + i] = (float)acc;
    }
}
