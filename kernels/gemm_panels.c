/* kernels/gemm_panels.c: batched products in OpenMP panels of single-threaded sgemm
 * (kernels/gemm_panels.h). */
#include "kernels/gemm_panels.h"

#include <cblas.h>
#include <stdlib.h>

#include "common/error.h"

void e8q_gemm_panels(int batch, int m, int n, const float *x, const float *W, e8q_panel_fill_fn fill,
                     const void *ctx, int panel_rows, float *y, int ldy) {
  E8Q_CHECK(panel_rows > 0 && (W || fill) && ldy >= m, "e8q_gemm_panels: %d rows per panel, %s, ldy %d for %d rows",
            panel_rows, W || fill ? "a weight" : "no weight and no fill", ldy, m);
  if (batch <= 0 || m <= 0) return;
  const int P = panel_rows > m ? m : panel_rows, panels = (m + P - 1) / P;
#pragma omp parallel if (panels > 1)
  {
    float *scratch = W ? NULL : e8q_alloc_aligned(sizeof(float) * (size_t)P * n, "decoded weight panel"); /* [P, n] */
#pragma omp for schedule(static)
    for (int p = 0; p < panels; p++) {
      const int r0 = p * P, rows = m - r0 < P ? m - r0 : P;
      const float *Wp = W ? W + (size_t)r0 * n : scratch;
      if (!W) fill(ctx, r0, rows, scratch);
      if (batch == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, n, 1.0f, Wp, n, x, 1, 0.0f, y + r0, 1);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, rows, n, 1.0f, x, n, Wp, n, 0.0f, y + r0, ldy);
    }
    free(scratch);
  }
}
