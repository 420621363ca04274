/* kernels/qlinear_vnni.h: the integer core of the quantized linear product for E8P, RVQ3 and RVQ4 codes on CPUs with AVX-512 VBMI, GFNI and VNNI (kernels/qlinear_vnni.c).
 *
 * The codes are repacked once, at e8q_qlinear_init, into groups of 16 rows x 4 codes whose 64
 * abs-row bytes (A) and 64 sign bytes (B) each fill one register (a permutation of the same
 * bytes: 2 bits per weight, as in the artifact). The kernel decodes 64 codes at a time in
 * registers into int8 weights in quarter units (every E8P value is an odd multiple of 1/4,
 * |4w| <= 15) and multiplies them with VNNI against the input held as a 24-bit fixed-point
 * number split into three signed 8-bit digits, accumulating exactly in int32. The input's only
 * rounding is that fixed-point copy: 2^-24 of max |u| per element, about the f32 path's own
 * rounding; the sums themselves are exact (the f32 paths round at every FMA).
 * E8Q_NO_VNNI=1 in the environment (read at e8q_qlinear_init) keeps the f32 AVX-512 path. */
#ifndef E8Q_KERNELS_QLINEAR_VNNI_H
#define E8Q_KERNELS_QLINEAR_VNNI_H

#include <stdint.h>

#include "kernels/qlinear.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The input's fixed point, shared by the integer cores (this one and kernels/qlinear_amx.c): a
 * column u becomes X = round(u · E8Q_DIGITS_XMAX / max|u|) (to nearest, ties to even), and X the
 * balanced digits d0 + 256 d1 + 65536 d2 with d0, d1 in [-128, 127] and d2 in [-127, 127]
 * (2^23 - 2^16 keeps the top digit there). */
#define E8Q_DIGITS_XMAX 8323072.0
static inline void e8q_digits3(int32_t X, int32_t d[3]) {
  d[0] = ((X + 128) & 255) - 128;
  const int32_t X1 = (X - d[0]) >> 8; /* X - d0 is a multiple of 256: the shift is exact */
  d[1] = ((X1 + 128) & 255) - 128;
  d[2] = (X1 - d[1]) >> 8;
}

/* largest n_pad whose int32 digit sums cannot overflow: 143 * 128 * n_pad < 2^31 */
#define E8Q_VNNI_MAX_NPAD 114688

typedef struct e8q_qlinear_vnni {
  int mg;      /* row groups of 16 (m rounded up; pad rows decode code 0 and are not written) */
  int nq;      /* quads of 4 codes per row (nc rounded up; pad codes meet zero inputs) */
  int cb;      /* e8q_codebook_id of the codes */
  uint8_t *pk; /* per row group: [nq][2][64] E8P A bytes then B bytes, then the second stage's
                  [nq][64] 1-bit E8 indices (RVQ3) or [nq][2][64] E8P bytes (RVQ4); lane
                  4*row + code; owned */
} e8q_qlinear_vnni;

int e8q_cpu_has_vnni(void); /* e8q_cpu_has_avx512() and AVX512-VNNI (cpuid) */
/* 1 when the shape fits this path (n_pad <= E8Q_VNNI_MAX_NPAD; every codebook does) */
int e8q_qlinear_vnni_fits(const e8q_qlinear_desc *d);
/* the repacked codes of d (callers check e8q_qlinear_vnni_fits first); freed by _free */
void e8q_qlinear_vnni_init(e8q_qlinear_vnni *v, const e8q_qlinear_desc *d);
void e8q_qlinear_vnni_free(e8q_qlinear_vnni *v);
#if defined(__x86_64__) || defined(__i386__)
/* z[b, r] = Σ_k Ŵr[r, k] · u[b, k] (as e8q_qlinear_codes_matmul_ref); u: [batch, n_pad],
 * z: [batch, m]. Each column gets its own fixed-point scale; columns go through the codes 4 at
 * a time (each group of 64 codes decoded once per 4 columns). Returns 0 without writing z when
 * u holds a NaN or an infinity, which no fixed-point copy can carry (the caller then runs the
 * f32 path, which propagates them). */
int e8q_qlinear_vnni_matmul(const e8q_qlinear *q, const e8q_qlinear_vnni *v, int batch, const float *u, float *z);
#endif

#ifdef __cplusplus
}
#endif
#endif
