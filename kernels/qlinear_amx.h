/* kernels/qlinear_amx.h: the batched core of the quantized linear product on Intel AMX
 * (AMX-TILE + AMX-INT8: Sapphire Rapids and later), for inference batches (prefill, eval).
 *
 * Numerics are those of the VNNI core (kernels/qlinear_vnni.h): every input column becomes a
 * 24-bit fixed-point number (scale max|u| / (2^23 - 2^16)) split into three balanced signed 8-bit
 * digits, the weights are the codes' exact int8 values (4·E8P in quarter units; RVQ4's second
 * stage 4·E8P, RVQ3's 2·E81B), and each digit plane is multiplied by the weights with TDPBSSD into
 * exact int32 sums, combined in int64 and scaled once in double. The only rounding is the
 * fixed-point copy of the input (2^-24 of max|u|) and the final float.
 *
 * Layout: per group of 16 output rows the codes are decoded into B tiles (16 rows x 64 weights,
 * 4 consecutive weights of a row per int32 column: [k/4][row][k%4]); the batch is padded to
 * blocks of 16 tokens (A tiles: 16 tokens x 64 digits); C tiles hold 16 tokens x 16 rows. OpenMP
 * over row groups; every thread configures its own tiles.
 *
 * Availability: the CPU flags (cpuid), the kernel's permission for the tile state
 * (arch_prctl(ARCH_REQ_XCOMP_PERM)), and E8Q_NO_AMX unset; decided once per process. */
#ifndef E8Q_KERNELS_QLINEAR_AMX_H
#define E8Q_KERNELS_QLINEAR_AMX_H

#include "kernels/qlinear.h"

/* largest n_pad whose int32 sums cannot overflow: |4w| <= 15, |digit| <= 128, 1920 n_pad < 2^31 */
#define E8Q_QLINEAR_AMX_MAX_NPAD (1 << 20)

/* 1 when this process may use AMX for the batched core (see above) */
int e8q_qlinear_amx_available(void);

/* z [batch, m] <- Ŵr u for u [batch, n_pad] (no scales, as the other cores). Returns 1, or 0
 * (z untouched) when an input holds a NaN or an infinity: the caller then takes a float path,
 * which carries them through. Requires e8q_qlinear_amx_available(). */
int e8q_qlinear_amx_matmul(const e8q_qlinear *q, int batch, const float *u, float *z);

#endif
