/* kernels/gemm_panels.h: y = x Wᵀ for a batch, the rows of W in fixed panels shared out to the
 * OpenMP threads, each panel one BLAS call (sgemm; sgemv for one input) on its thread.
 *
 * BLAS runs single-threaded in every e8q command (coordinator/main.c): OpenMP is the one source
 * of threads. Inference interleaves these products with OpenMP regions (attention, norms, the
 * Hadamard transforms), and OpenBLAS's own pthreads then contend with OpenMP's waiting threads
 * for the same cores (SmolLM2 prefill: about a fifth of the time in the scheduler and in
 * sched_yield, measured). The quantizer wants one BLAS thread anyway, for bits that do not depend
 * on OPENBLAS_NUM_THREADS.
 *
 * The panels are E8Q_GEMM_PANEL_ROWS rows whatever the thread count, so the BLAS calls, and
 * with them the bits, depend only on the shapes. A panel either points into W (dense) or is
 * filled by the caller's callback into a per-thread f32 scratch (quantized or bf16 rows
 * converted). */
#ifndef E8Q_KERNELS_GEMM_PANELS_H
#define E8Q_KERNELS_GEMM_PANELS_H

#define E8Q_GEMM_PANEL_ROWS 64
/* the panel height for m rows: m/16 rounded to 64 rows, within [64, 512]: enough panels to
 * share out, and few enough that a tall matrix (a 49152-row head) does not repack its input
 * hundreds of times. A function of m alone, so the calls do not depend on the thread count. */
static inline int e8q_gemm_panel_rows(int m) {
  int p = m / 16 / 64 * 64;
  return p < E8Q_GEMM_PANEL_ROWS ? E8Q_GEMM_PANEL_ROWS : p > 512 ? 512 : p;
}

/* fills panel [rows, n] with rows r0 .. r0+rows-1 of the weight, as f32 */
typedef void (*e8q_panel_fill_fn)(const void *ctx, int r0, int rows, float *panel);

/* x [batch, n], y [batch, ldy >= m] (row-major; the first m of each row written). W [m, n] f32, or
 * NULL with fill set. panel_rows: rows per panel (e8q_gemm_panel_rows(m); tests pass others). */
void e8q_gemm_panels(int batch, int m, int n, const float *x, const float *W, e8q_panel_fill_fn fill,
                     const void *ctx, int panel_rows, float *y, int ldy);

#endif
