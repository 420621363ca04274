/* kernels/qlinear_had.h: the f32 in-place Hadamard transform the fused product applies to its
 * input and output vectors: x <- M_k x (transpose 0) or x <- M_kᵀ x (transpose 1), with
 * M_k = kron(R_K, WHT_{k/K}) / sqrt(k), index a·(k/K)+b, R [K, K] (NULL when K == 1).
 * Adapter over kernels/hadamard.h (quant). */
#ifndef E8Q_KERNELS_QLINEAR_HAD_H
#define E8Q_KERNELS_QLINEAR_HAD_H

#ifdef __cplusplus
extern "C" {
#endif

void e8q_qlinear_had(int k, int K, const float *R, int transpose, float *x /* [k] */);

#ifdef __cplusplus
}
#endif

#endif
