/* common/f16.h: float16 bits to float32, exact (Inf and NaN kept, subnormals scaled). One
 * definition for the readers of float16 tensors (io/safetensors.c) and the kernels that
 * multiply them in place (kernels/matvec_f16.c). */
#ifndef E8Q_COMMON_F16_H
#define E8Q_COMMON_F16_H

#include <stdint.h>

float e8q_f16_to_f32(uint16_t h);

#endif
