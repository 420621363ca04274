/* common/f16.h: float16 and bfloat16 bits to float32, exact (Inf and NaN kept, subnormals
 * scaled), and float32 to bfloat16 bits. One definition for the readers of 16-bit tensors
 * (io/safetensors.c, io/ggml_quants.c) and the code that multiplies 16-bit matrices in place
 * (kernels/matvec_f16.c, worker/linear.c). */
#ifndef E8Q_COMMON_F16_H
#define E8Q_COMMON_F16_H

#include <stdint.h>

float e8q_f16_to_f32(uint16_t h);
/* bfloat16 is the upper half of a float32: a 16-bit shift, exact for every value */
float e8q_bf16_to_f32(uint16_t h);
/* round to nearest, ties to even (overflow gives Inf); a NaN stays a NaN (quiet bit set) */
uint16_t e8q_f32_to_bf16(float f);

#endif
