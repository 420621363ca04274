/* kernels/matvec_q8.h: a matrix at 8 bits per weight with one float scale per block of 32
 * consecutive weights of a row, and y = W x on it. This is the 8-bit head (and embedding)
 * of `e8q generate|eval --head q8`. A decode step reads the whole head for every token; this
 * form reads 1.125 bytes per weight, where float16 reads 2 and float32 reads 4.
 *
 * Rounding: scale = max|w| / 127 over the block, q = round(w / scale) in [-127, 127], so
 * |w - scale·q| <= scale / 2 = max|w_block| / 254 for every weight (an all-zero block has scale
 * 0). Product: per block, the int8 values are converted exactly to float32 and multiplied by x;
 * the block sum is scaled and accumulated. Only the order of the float additions differs from
 * the `_ref`, which is plain loops in double over the same dequantized weights. OpenMP over row
 * blocks. Paths: AVX-512F, AVX2 with FMA, scalar. */
#ifndef E8Q_KERNELS_MATVEC_Q8_H
#define E8Q_KERNELS_MATVEC_Q8_H

#include <stdint.h>

#include "common/f16.h" /* E8Q_Q8_BLOCK (weights per scale; n must be a multiple), e8q_q8_value */

typedef struct {
  int m, n;           /* rows, columns */
  const int8_t *q;    /* [m, n] round(w / scale); owned (64-byte aligned) unless borrowed */
  const float *scale; /* [m, n / E8Q_Q8_BLOCK] max|w| / 127 of each block; owned unless borrowed */
  int borrowed;       /* 1: q and scale point into a mapping (a stored 8-bit head), not freed */
} e8q_q8_matrix;

/* M <- W [m, n] f32 rounded as above; fatal (naming `what`) unless n % E8Q_Q8_BLOCK == 0 and
 * every weight is finite */
void e8q_q8_quantize(e8q_q8_matrix *M, int m, int n, const float *W, const char *what);
void e8q_q8_free(e8q_q8_matrix *M);
/* out [n] <- row r of M dequantized (scale·q, the values every product uses) */
void e8q_q8_dequant_row(const e8q_q8_matrix *M, int r, float *out);
/* W [m, n] <- its values through the 8-bit format (e8q_q8_quantize, then dequantized in place);
 * the 8-bit form goes to *keep (owned by the caller) or, keep NULL, is dropped. A block's rounding
 * depends on its own 32 values only, so rounding rows one block of rows at a time gives the bits
 * of rounding the whole matrix. Fatal (naming `what`) as e8q_q8_quantize. */
void e8q_q8_round(int m, int n, float *W, const char *what, e8q_q8_matrix *keep);

/* x [n], y [m] */
void e8q_matvec_q8(const e8q_q8_matrix *M, const float *x, float *y);
void e8q_matvec_q8_ref(const e8q_q8_matrix *M, const float *x, float *y);

#endif
