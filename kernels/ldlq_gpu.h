/* kernels/ldlq_gpu.h: the buffered LDLQ on a CUDA device (--device cuda), with a clean CPU
 * fallback.
 *
 *   e8q_ldlq_gpu *g = e8q_ldlq_gpu_create(device, &f, &why);    // NULL (and why): the CPU
 *   e8q_ldlq_gpu_rows(g, &o, W, rows, codes, codes2, What);     // as e8q_ldlq_rows(.., 0, rows, ..)
 *
 * One thread per weight row runs kernels/ldlq_dev.h, the CPU's per-row arithmetic (held to
 * e8q_ldlq_rows bit for bit on the host by tests/quant/test_ldlq_dev); the buffered feedback
 * products are cuBLAS DGEMMs in the CPU's row tiles, so the result differs from the CPU's only
 * by those products' order of additions (a rounding tie can then flip a code, and the row's
 * later columns follow it), and any split of the rows at multiples of E8Q_LDLQ_ROW_TILE still
 * gives the same bits. Float64 factorisations only; the noe8 ablation stays on the CPU.
 * Device memory: L, H [n, n] and 4 [rows, n] float64 buffers. CUDA errors are fatal. */
#ifndef E8Q_KERNELS_LDLQ_GPU_H
#define E8Q_KERNELS_LDLQ_GPU_H

#include "kernels/ldlq.h"

typedef struct e8q_ldlq_gpu e8q_ldlq_gpu;

/* uploads f (float64) and the encoders' tables; NULL with *why_not (thread-local text) when e8q
 * was built without CUDA, the device is not usable, memory is short or f is float32 */
e8q_ldlq_gpu *e8q_ldlq_gpu_create(int device, const e8q_ldl *f, const char **why_not);
void e8q_ldlq_gpu_free(e8q_ldlq_gpu *g); /* NULL is a no-op */
/* W [rows, f->n] (its first row starts a row tile); codes [rows, n/8], codes2 (u16 RVQ4, u8
 * RVQ3, NULL at 2 bit), What [rows, n] (may be NULL); o->noe8_bits must be 0 */
void e8q_ldlq_gpu_rows(e8q_ldlq_gpu *g, const e8q_ldlq_opts *o, const double *W, int64_t rows, uint16_t *codes,
                       void *codes2, double *What);

#endif
