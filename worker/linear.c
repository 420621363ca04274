/* worker/linear.c: y = x Wᵀ, dense through BLAS (bfloat16: e8q_matvec_bf16 or converted panels),
 * quantized through the fused kernels (worker/linear.h). */
#include "worker/linear.h"

#include <stdlib.h>

#include "common/error.h"
#include "common/f16.h"
#include "kernels/gemm_panels.h"
#include "kernels/matvec_f16.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_gpu.h"

void e8q_linear_forward(const e8q_linear *L, int T, const float *x, float *y) { e8q_linear_forward_keep(L, T, x, y, NULL); }

/* a panel of a bfloat16 weight converted to float32 (exact) */
static void bf16_panel(const void *ctx, int r0, int rows, float *P) {
  const e8q_linear *L = ctx;
  const uint16_t *w = L->w_bf16 + (size_t)r0 * L->n;
  for (size_t i = 0; i < (size_t)rows * L->n; i++) P[i] = e8q_bf16_to_f32(w[i]);
}

/* y [T, m] = x [T, n] Wᵀ with W [m, n] bfloat16: one token through the in-place matvec, more tokens
 * through float32 panels (each converted once for all T tokens) and sgemm */
static void bf16_forward(const e8q_linear *L, int T, const float *x, float *y) {
  if (T == 1)
    e8q_matvec_bf16(L->m, L->n, L->w_bf16, x, y);
  else
    e8q_gemm_panels(T, L->m, L->n, x, NULL, bf16_panel, L, e8q_gemm_panel_rows(L->m), y, L->m);
}

void e8q_linear_forward_keep(const e8q_linear *L, int T, const float *x, float *y, float *z) {
  if (T <= 0) return;
  if (L->w) { /* row panels across the OpenMP threads, single-threaded BLAS each */
    e8q_gemm_panels(T, L->m, L->n, x, L->w, NULL, NULL, e8q_gemm_panel_rows(L->m), y, L->m);
    return;
  }
  if (L->w_bf16) {
    bf16_forward(L, T, x, y);
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
  if (!L->w && L->w_bf16) {
    for (int t = 0; t < T; t++) e8q_matvec_bf16_ref(L->m, L->n, L->w_bf16, x + (size_t)t * L->n, y + (size_t)t * L->m);
    return;
  }
  E8Q_CHECK(L->w, "e8q_linear_forward_ref: linear [%d x %d] has no dense weights", L->m, L->n);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < L->m; i++) {
      double acc = 0.0;
      for (int j = 0; j < L->n; j++) acc += (double)x[(size_t)t * L->n + j] * L->w[(size_t)i * L->n + j];
      y[(size_t)t * L->m + i] = (float)acc;
    }
}
