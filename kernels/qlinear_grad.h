/* kernels/qlinear_grad.h: the backward of the quantized linear layer (kernels/qlinear.h) with
 * the codes frozen, for fine-tuning SU, SV and the fuse scales (DESIGN.md §3 "Fine-tuning").
 *
 * Forward (per batch row b), as in qlinear.h:
 *   u  = M_n_padᵀ (SU ⊙ pad(x))          [n_pad]
 *   z  = Wscale · Ŵr u                    [m]
 *   y  = os ⊙ (M_m z),  os[r] = fs(piece(r)) · SV[r]
 * Backward given dy [batch, m]:
 *   dSV[r]  += Σ_b dy[b,r] · fs(r) · (M_m z)[b,r]
 *   dfs[p]  += Σ_b Σ_{r ∈ piece p} dy[b,r] · SV[r] · (M_m z)[b,r]
 *   dz       = M_mᵀ (os ⊙ dy)             (M_m is orthogonal: its adjoint is its transpose)
 *   du       = Wscale · Ŵrᵀ dz            the transpose fused product, e8q_qlinear_codes_matmul_t
 *   v        = M_n_pad du                 = d(SU ⊙ pad(x))
 *   dSU[k]  += Σ_b pad(x)[b,k] · v[b,k]
 *   dx[b,i]  = SU[i] · v[b,i]             (i < n: the padding columns have no input)
 * Only M_m z has to be recomputed from the forward (for dSV and dfs): one fused forward product
 * with unit output scales, skipped when dSV and dfs are both NULL. u itself is never needed
 * (dSU pairs pad(x) with v, not with u).
 *
 * The transpose product never materialises Ŵr: codes are decoded on the fly, 8 weights per code
 * once per (code, batch tile), and accumulated into the columns of t they cover. The AVX-512 path
 * (CPUs with AVX-512 F/BW/VL/DQ/VBMI and GFNI; kernels/qlinear_grad_avx512.c) splits the code
 * columns across OpenMP threads, so each thread owns disjoint columns of t and every element is
 * summed over rows r = 0..m-1 in the same order whatever the thread count: the results are
 * bit-identical for any OMP_NUM_THREADS. CPUs with AVX2+FMA only (or E8Q_NO_AVX512=1) run the
 * AVX2 path of the same layout (kernels/qlinear_grad_avx2.c); the scalar _ref (same contract,
 * plain loops) serves other CPUs and E8Q_NO_AVX2=1. The three paths round differently (each is
 * deterministic on its own), as the forward's cores do.
 *
 * Scales after init: the backward and e8q_qlinear_set_scales (kernels/qlinear.h) read
 * q->d.SV, q->d.fuse_scales and q->d.piece_rows, so for training these arrays must outlive q (the
 * model loader's do: they point into the artifact). SU is read through q->d.SU at every call
 * (no path caches it: the VNNI core repacks codes only), so training may update SU in place;
 * after changing SV or the fuse scales, call e8q_qlinear_set_scales (the per-row output scales
 * are cached): the backward checks os[r] == fs(r) · SV[r] and is fatal otherwise.
 * (The CUDA layer of kernels/qlinear_gpu.h keeps device copies of SU and the output scales:
 * e8q_qlinear_gpu_set_scales uploads them again after either changes.)
 */
#ifndef E8Q_KERNELS_QLINEAR_GRAD_H
#define E8Q_KERNELS_QLINEAR_GRAD_H

#include "kernels/qlinear.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- the transpose product */
/* t[b, k] = Σ_r Ŵr[r, k] · g[b, r] for b < batch, k < n_pad (no scales): the adjoint of
 * e8q_qlinear_codes_matmul_ref. g: [batch, m], t: [batch, n_pad] (overwritten), not aliased.
 * Dispatches to AVX-512, else AVX2, else _ref (see above). Deterministic. */
void e8q_qlinear_codes_matmul_t(const e8q_qlinear *q, int batch, const float *g, float *t);
/* the scalar reference: codes decoded with codebook.h's decoders, OpenMP over code columns,
 * each element summed over r in order */
void e8q_qlinear_codes_matmul_t_ref(const e8q_qlinear *q, int batch, const float *g, float *t);
#if defined(__x86_64__) || defined(__i386__)
/* the AVX-512 path; callers must check e8q_cpu_has_avx512() (kernels/qlinear_avx512.h) first */
void e8q_qlinear_codes_matmul_t_avx512(const e8q_qlinear *q, int batch, const float *g, float *t);
/* the AVX2+FMA path (kernels/qlinear_grad_avx2.c); callers must check e8q_cpu_has_avx2() first */
void e8q_qlinear_codes_matmul_t_avx2(const e8q_qlinear *q, int batch, const float *g, float *t);
#endif
/* which core e8q_qlinear_codes_matmul_t runs, in words (benchmarks, logs) */
const char *e8q_qlinear_grad_path(void);

/* ---------------------------------------------------------------- the backward */
/* Gradients of the layer at inputs x for output gradient dy (see above).
 *   x   [batch, n]    the forward's inputs (needed for dSU; for dSV/dfs the forward is recomputed)
 *   dy  [batch, m]    dL/dy
 *   dx  [batch, n]    dL/dx, overwritten; or NULL
 *   dSU [n_pad]       dL/dSU, ACCUMULATED (+=); entries n..n_pad-1 get += 0; or NULL
 *   dSV [m]           dL/dSV, accumulated; or NULL
 *   dfs [n_pieces]    dL/d(fuse scale of each piece), accumulated; or NULL
 * No output may alias an input. f32 in and out; sums over the batch for dSU, dSV, dfs are
 * accumulated in double, in batch order. Runs e8q_qlinear_forward's core for the recomputation
 * and e8q_qlinear_codes_matmul_t for Ŵrᵀ; the transforms are q->h_out / q->h_in
 * (kernels/hadamard.h), the same as the forward's. Deterministic for any thread count. */
void e8q_qlinear_backward(const e8q_qlinear *q, int batch, const float *x, const float *dy, float *dx,
                          float *dSU, float *dSV, float *dfs);
/* the same, with z [batch, m] the forward's output before the output scales, as
 * e8q_qlinear_forward_keep gave it for this x (NULL: recomputed): saves the recomputation */
void e8q_qlinear_backward_z(const e8q_qlinear *q, int batch, const float *x, const float *z, const float *dy,
                            float *dx, float *dSU, float *dSV, float *dfs);
/* the same chain through e8q_qlinear_forward_ref and e8q_qlinear_codes_matmul_t_ref */
void e8q_qlinear_backward_ref(const e8q_qlinear *q, int batch, const float *x, const float *dy, float *dx,
                              float *dSU, float *dSV, float *dfs);

#ifdef __cplusplus
}
#endif
#endif
