/* common/f16.h: the compact number formats shared by the tensor readers (io/) and the kernels
 * that multiply such matrices in place (kernels/): float16 and bfloat16 bits to float32, exact
 * (Inf and NaN kept, subnormals scaled), float32 to bfloat16 bits, and the 8-bit block format of
 * `--head q8`. */
#ifndef E8Q_COMMON_F16_H
#define E8Q_COMMON_F16_H

#include <stdint.h>

float e8q_f16_to_f32(uint16_t h);
/* bfloat16 is the upper half of a float32: a 16-bit shift, exact for every value */
float e8q_bf16_to_f32(uint16_t h);
/* round to nearest, ties to even (overflow gives Inf); a NaN stays a NaN (quiet bit set) */
uint16_t e8q_f32_to_bf16(float f);

/* The 8-bit block format: E8Q_Q8_BLOCK consecutive int8 values q of a row share one float scale
 * s, and each stands for s·q (rounded once to float). In a file: an I8 tensor and beside it an
 * F32 tensor named with E8Q_Q8_SCALES_SUFFIX, one scale per block in row-major order.
 * kernels/matvec_q8.h makes and multiplies it; io/safetensors.c reads it as float. */
#define E8Q_Q8_BLOCK 32
#define E8Q_Q8_SCALES_SUFFIX ".q8_scales"
static inline float e8q_q8_value(float s, int8_t q) { return s * (float)q; }

#endif
