/* io/ggml_quants.h: ggml tensor types (as stored in GGUF files) and their dequantization to f32.
 *
 * A ggml tensor row is a sequence of blocks; a block packs block_size elements into block_bytes
 * bytes, little-endian, with no alignment (read every multi-byte field with memcpy). Layouts of the
 * types decoded here (d, dmin, m: IEEE f16 scales; QK_K = 256):
 *   F32   1 element, 4 bytes            F16  1 element, 2 bytes (IEEE half)
 *   BF16  1 element, 2 bytes (top half of an f32)
 *   Q4_0  32 el, 18 B: d, qs[16]        x[j] = d*(lo4(qs[j]) - 8), x[j+16] = d*(hi4(qs[j]) - 8)
 *   Q4_1  32 el, 20 B: d, m, qs[16]     x[j] = d*lo4(qs[j]) + m,   x[j+16] = d*hi4(qs[j]) + m
 *   Q5_0  32 el, 22 B: d, qh (u32), qs[16]   5th bit of element e is bit e of qh; q - 16, times d
 *   Q5_1  32 el, 24 B: d, m, qh (u32), qs[16]   d*q + m
 *   Q8_0  32 el, 34 B: d, qs[32] (int8) x[j] = d*qs[j]
 *   Q2_K  256 el, 84 B: scales[16] (lo4 scale, hi4 min, one per 16 elements), qs[64] (2-bit),
 *         d, dmin                     x = (d*sc)*q - (dmin*mn)
 *   Q3_K  256 el, 110 B: hmask[32], qs[64] (low 2 bits), scales[12] (16 6-bit scales, offset 32), d
 *         x = (d*(sc - 32))*(q2 - (hmask bit ? 0 : 4))
 *   Q4_K  256 el, 144 B: d, dmin, scales[12] (8 6-bit scales + 8 6-bit mins), qs[128]
 *         x = (d*sc)*q4 - (dmin*mn)
 *   Q5_K  256 el, 176 B: d, dmin, scales[12], qh[32] (5th bits), qs[128]     as Q4_K with 5-bit q
 *   Q6_K  256 el, 210 B: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d
 *         x = (d*sc)*(q6 - 32)
 * The exact bit positions are spelled out next to each decoder in ggml_quants.c. The products are
 * evaluated in f32 in the order shown (as ggml's reference dequantizers do), so results are
 * bit-identical to ggml's and to the Python gguf package's (tests/io/data/ggml_golden.bin).
 *
 * Other ggml types (Q8_1, Q8_K, the IQ and TQ families, integer and f64 types, MXFP4, ...) are known
 * by name and size, so files holding them open, but dequantizing them is a fatal error.
 */
#ifndef E8Q_IO_GGML_QUANTS_H
#define E8Q_IO_GGML_QUANTS_H

#include <stddef.h>
#include <stdint.h>

/* ggml_type numbers, as in ggml.h / GGUF files */
enum {
  E8Q_GGML_F32 = 0,
  E8Q_GGML_F16 = 1,
  E8Q_GGML_Q4_0 = 2,
  E8Q_GGML_Q4_1 = 3,
  E8Q_GGML_Q5_0 = 6,
  E8Q_GGML_Q5_1 = 7,
  E8Q_GGML_Q8_0 = 8,
  E8Q_GGML_Q8_1 = 9,
  E8Q_GGML_Q2_K = 10,
  E8Q_GGML_Q3_K = 11,
  E8Q_GGML_Q4_K = 12,
  E8Q_GGML_Q5_K = 13,
  E8Q_GGML_Q6_K = 14,
  E8Q_GGML_Q8_K = 15,
  E8Q_GGML_BF16 = 30,
  E8Q_GGML_TYPE_LIMIT = 64 /* every type number is below this */
};

/* elements per block (1 for F32/F16/BF16), 0 for a type number ggml does not define */
int e8q_ggml_block_size(int type);
/* bytes per block, 0 for an unknown type */
size_t e8q_ggml_block_bytes(int type);
/* "Q4_1", ...; "unknown" */
const char *e8q_ggml_type_name(int type);
/* 1 when e8q can dequantize the type (the 13 listed above), else 0 */
int e8q_ggml_type_supported(int type);

/* n elements (a multiple of the block size) of type `type` at src (any alignment) to f32.
 * Fatal for an unsupported type or a bad n. Non-finite results are written as they come; the caller
 * checks (e8q_gguf_read_rows_f32 does). _ref decodes one block at a time in plain C; the plain name
 * is the one to call (today the same code: every decoder is memory-bound at these sizes). */
void e8q_ggml_dequant_row_ref(int type, const void *src, int64_t n, float *dst);
void e8q_ggml_dequant_row(int type, const void *src, int64_t n, float *dst);

#endif
