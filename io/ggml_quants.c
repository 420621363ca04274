/* io/ggml_quants.c: ggml block types, decoded one block at a time to f32.
 *
 * Each decoder below is written from the block layout (io/ggml_quants.h) and computes every element
 * by its own index: element e of a block, the bytes and bits it comes from, its scale. Scales are
 * f16 (converted exactly to f32); products are taken in f32 in the order ggml's reference
 * dequantizers use ((d*sc)*q - (dmin*m) for the K types, d*q + m for Q4_1/Q5_1), with floating-point
 * contraction off, so the results are bit-identical to ggml and to the gguf Python package.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off") /* a fused multiply-add would change the last bit */
#endif

#include "io/ggml_quants.h"

#include <string.h>

#include "common/error.h"
#include "io/safetensors.h" /* e8q_f16_to_f32, e8q_bf16_to_f32 */

#define QK_K 256

/* ---------------------------------------------------------------- type table */

typedef struct {
  const char *name;
  int block_size;     /* elements per block */
  int block_bytes;    /* bytes per block */
  int supported;      /* dequantized here */
} ggml_type_info;

/* every type ggml defines (as listed by the gguf Python package 0.19); the holes are retired numbers */
static const ggml_type_info g_types[E8Q_GGML_TYPE_LIMIT] = {
    [0] = {"F32", 1, 4, 1},
    [1] = {"F16", 1, 2, 1},
    [2] = {"Q4_0", 32, 18, 1},
    [3] = {"Q4_1", 32, 20, 1},
    [6] = {"Q5_0", 32, 22, 1},
    [7] = {"Q5_1", 32, 24, 1},
    [8] = {"Q8_0", 32, 34, 1},
    [9] = {"Q8_1", 32, 36, 0},
    [10] = {"Q2_K", QK_K, 84, 1},
    [11] = {"Q3_K", QK_K, 110, 1},
    [12] = {"Q4_K", QK_K, 144, 1},
    [13] = {"Q5_K", QK_K, 176, 1},
    [14] = {"Q6_K", QK_K, 210, 1},
    [15] = {"Q8_K", QK_K, 292, 0},
    [16] = {"IQ2_XXS", QK_K, 66, 0},
    [17] = {"IQ2_XS", QK_K, 74, 0},
    [18] = {"IQ3_XXS", QK_K, 98, 0},
    [19] = {"IQ1_S", QK_K, 50, 0},
    [20] = {"IQ4_NL", 32, 18, 0},
    [21] = {"IQ3_S", QK_K, 110, 0},
    [22] = {"IQ2_S", QK_K, 82, 0},
    [23] = {"IQ4_XS", QK_K, 136, 0},
    [24] = {"I8", 1, 1, 0},
    [25] = {"I16", 1, 2, 0},
    [26] = {"I32", 1, 4, 0},
    [27] = {"I64", 1, 8, 0},
    [28] = {"F64", 1, 8, 0},
    [29] = {"IQ1_M", QK_K, 56, 0},
    [30] = {"BF16", 1, 2, 1},
    [34] = {"TQ1_0", QK_K, 54, 0},
    [35] = {"TQ2_0", QK_K, 66, 0},
    [39] = {"MXFP4", 32, 17, 0},
    [40] = {"NVFP4", 64, 36, 0},
    [41] = {"Q1_0", 128, 18, 0},
};

static const ggml_type_info *type_info(int type) {
  if (type < 0 || type >= E8Q_GGML_TYPE_LIMIT || !g_types[type].name) return NULL;
  return &g_types[type];
}

int e8q_ggml_block_size(int type) {
  const ggml_type_info *ti = type_info(type);
  return ti ? ti->block_size : 0;
}

size_t e8q_ggml_block_bytes(int type) {
  const ggml_type_info *ti = type_info(type);
  return ti ? (size_t)ti->block_bytes : 0;
}

const char *e8q_ggml_type_name(int type) {
  const ggml_type_info *ti = type_info(type);
  return ti ? ti->name : "unknown";
}

int e8q_ggml_type_supported(int type) {
  const ggml_type_info *ti = type_info(type);
  return ti ? ti->supported : 0;
}

/* ---------------------------------------------------------------- little-endian loads */

static inline float ld_f16(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return e8q_f16_to_f32(h);
}

static inline float ld_bf16(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return e8q_bf16_to_f32(h);
}

static inline uint32_t ld_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---------------------------------------------------------------- 32-element blocks */

/* Q4_0 (18 B): d f16 | qs[16]. Element j < 16 is the low nibble of qs[j], element j + 16 the high
 * nibble; value d * (q - 8). */
static void block_q4_0(const uint8_t *b, float *y /* [32] */) {
  const float d = ld_f16(b);
  const uint8_t *qs = b + 2;
  for (int e = 0; e < 32; e++) {
    int q = e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
    y[e] = d * (float)(q - 8);
  }
}

/* Q4_1 (20 B): d f16 | m f16 | qs[16]; nibbles as Q4_0; value d * q + m. */
static void block_q4_1(const uint8_t *b, float *y /* [32] */) {
  const float d = ld_f16(b), m = ld_f16(b + 2);
  const uint8_t *qs = b + 4;
  for (int e = 0; e < 32; e++) {
    int q = e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
    y[e] = d * (float)q + m;
  }
}

/* Q5_0 (22 B): d f16 | qh u32 | qs[16]. Low 4 bits as Q4_0, bit 4 of element e is bit e of qh;
 * value d * (q - 16). */
static void block_q5_0(const uint8_t *b, float *y /* [32] */) {
  const float d = ld_f16(b);
  const uint32_t qh = ld_u32(b + 2);
  const uint8_t *qs = b + 6;
  for (int e = 0; e < 32; e++) {
    int lo = e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
    int q = lo | (int)((qh >> e) & 1u) << 4;
    y[e] = d * (float)(q - 16);
  }
}

/* Q5_1 (24 B): d f16 | m f16 | qh u32 | qs[16]; q as Q5_0; value d * q + m. */
static void block_q5_1(const uint8_t *b, float *y /* [32] */) {
  const float d = ld_f16(b), m = ld_f16(b + 2);
  const uint32_t qh = ld_u32(b + 4);
  const uint8_t *qs = b + 8;
  for (int e = 0; e < 32; e++) {
    int lo = e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
    int q = lo | (int)((qh >> e) & 1u) << 4;
    y[e] = d * (float)q + m;
  }
}

/* Q8_0 (34 B): d f16 | qs[32] int8; value d * q. */
static void block_q8_0(const uint8_t *b, float *y /* [32] */) {
  const float d = ld_f16(b);
  for (int e = 0; e < 32; e++) y[e] = (float)(int8_t)b[2 + e] * d;
}

/* ---------------------------------------------------------------- 256-element (K) blocks */

/* Q2_K (84 B): scales[16] | qs[64] | d f16 | dmin f16. Element e: half h = e / 128, w = e % 128,
 * group j = w / 32 (bits 2j..2j+1), lane l = w % 32: q = (qs[32h + l] >> 2j) & 3. scales[e / 16]:
 * low nibble scales d, high nibble scales dmin; value (d * sc) * q - (dmin * mn). */
static void block_q2_k(const uint8_t *b, float *y /* [256] */) {
  const uint8_t *scales = b, *qs = b + 16;
  const float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
  for (int e = 0; e < QK_K; e++) {
    int h = e / 128, w = e % 128, j = w / 32, l = w % 32;
    int q = (qs[32 * h + l] >> (2 * j)) & 3;
    uint8_t sc = scales[e / 16];
    float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
    y[e] = dl * (float)q - ml;
  }
}

/* 6-bit scale k (0..15) of a Q3_K block: low 4 bits in byte k (k < 8, low nibble) or byte k - 8
 * (high nibble); high 2 bits at bits 2(k/4).. of byte 8 + k % 4. Stored with an offset of 32. */
static int q3_k_scale(const uint8_t *s /* [12] */, int k) {
  int lo = k < 8 ? (s[k] & 0xF) : (s[k - 8] >> 4);
  int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
  return (lo | hi << 4) - 32;
}

/* Q3_K (110 B): hmask[32] | qs[64] | scales[12] | d f16. Element e: h = e / 128, w = e % 128,
 * j = w / 32, l = w % 32: low bits q2 = (qs[32h + l] >> 2j) & 3; high-bit mask bit (4h + j) of
 * hmask[l]: set means q = q2, clear means q = q2 - 4. Value (d * scale[e / 16]) * q. */
static void block_q3_k(const uint8_t *b, float *y /* [256] */) {
  const uint8_t *hmask = b, *qs = b + 32, *scales = b + 96;
  const float d = ld_f16(b + 108);
  for (int e = 0; e < QK_K; e++) {
    int h = e / 128, w = e % 128, j = w / 32, l = w % 32;
    int q2 = (qs[32 * h + l] >> (2 * j)) & 3;
    int high = (hmask[l] >> (4 * h + j)) & 1;
    int q = q2 - (high ? 0 : 4);
    float dl = d * (float)q3_k_scale(scales, e / 16);
    y[e] = dl * (float)q;
  }
}

/* 6-bit scale and min of sub-block s (0..7) of a Q4_K/Q5_K block: for s < 4 the low 6 bits of
 * bytes s and s + 4; for s >= 4 the nibbles of byte s + 4 (low: scale, high: min) with bits 6-7 of
 * bytes s - 4 (scale) and s (min) on top. */
static void k4_scale_min(const uint8_t *s /* [12] */, int sub, int *sc, int *mn) {
  if (sub < 4) {
    *sc = s[sub] & 63;
    *mn = s[sub + 4] & 63;
  } else {
    *sc = (s[sub + 4] & 0xF) | (s[sub - 4] >> 6) << 4;
    *mn = (s[sub + 4] >> 4) | (s[sub] >> 6) << 4;
  }
}

/* Q4_K (144 B): d f16 | dmin f16 | scales[12] | qs[128]. Element e: sub-block s = e / 32, lane
 * l = e % 32: q = nibble of qs[32 (s / 2) + l], low for even s, high for odd s. Value
 * (d * sc[s]) * q - (dmin * mn[s]). */
static void block_q4_k(const uint8_t *b, float *y /* [256] */) {
  const float d = ld_f16(b), dmin = ld_f16(b + 2);
  const uint8_t *scales = b + 4, *qs = b + 16;
  for (int s = 0; s < 8; s++) {
    int sc, mn;
    k4_scale_min(scales, s, &sc, &mn);
    float dl = d * (float)sc, ml = dmin * (float)mn;
    for (int l = 0; l < 32; l++) {
      uint8_t byte = qs[32 * (s / 2) + l];
      int q = (s & 1) ? (byte >> 4) : (byte & 0xF);
      y[32 * s + l] = dl * (float)q - ml;
    }
  }
}

/* Q5_K (176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]. Low 4 bits as Q4_K; bit 4 of
 * element 32 s + l is bit s of qh[l]. Value (d * sc[s]) * q - (dmin * mn[s]). */
static void block_q5_k(const uint8_t *b, float *y /* [256] */) {
  const float d = ld_f16(b), dmin = ld_f16(b + 2);
  const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
  for (int s = 0; s < 8; s++) {
    int sc, mn;
    k4_scale_min(scales, s, &sc, &mn);
    float dl = d * (float)sc, ml = dmin * (float)mn;
    for (int l = 0; l < 32; l++) {
      uint8_t byte = qs[32 * (s / 2) + l];
      int q = ((s & 1) ? (byte >> 4) : (byte & 0xF)) | ((qh[l] >> s) & 1) << 4;
      y[32 * s + l] = dl * (float)q - ml;
    }
  }
}

/* Q6_K (210 B): ql[128] | qh[64] | scales[16] int8 | d f16. Element e: h = e / 128, w = e % 128,
 * quarter k = w / 32, lane l = w % 32. Low 4 bits: byte ql[64 h + 32 (k & 1) + l], low nibble for
 * k < 2, high nibble for k >= 2; high 2 bits: (qh[32 h + l] >> 2k) & 3. Value
 * (d * scales[e / 16]) * (q - 32). */
static void block_q6_k(const uint8_t *b, float *y /* [256] */) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t *scales = (const int8_t *)(b + 192);
  const float d = ld_f16(b + 208);
  for (int e = 0; e < QK_K; e++) {
    int h = e / 128, w = e % 128, k = w / 32, l = w % 32;
    uint8_t lo_byte = ql[64 * h + 32 * (k & 1) + l];
    int lo = k < 2 ? (lo_byte & 0xF) : (lo_byte >> 4);
    int hi = (qh[32 * h + l] >> (2 * k)) & 3;
    int q = (lo | hi << 4) - 32;
    float dl = d * (float)scales[e / 16];
    y[e] = dl * (float)q;
  }
}

/* ---------------------------------------------------------------- rows */

void e8q_ggml_dequant_row_ref(int type, const void *src, int64_t n, float *dst) {
  const ggml_type_info *ti = type_info(type);
  E8Q_CHECK(ti && ti->supported, "ggml type %d (%s) cannot be dequantized by e8q (supported: F32, F16, "
            "BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)", type, e8q_ggml_type_name(type));
  E8Q_CHECK(n >= 0 && n % ti->block_size == 0,
            "dequantizing %s: %lld elements is not a multiple of the block size %d", ti->name,
            (long long)n, ti->block_size);
  const uint8_t *p = src;
  const int64_t nb = n / ti->block_size;
  switch (type) {
    case E8Q_GGML_F32: memcpy(dst, src, (size_t)n * 4); return;
    case E8Q_GGML_F16:
      for (int64_t i = 0; i < n; i++) dst[i] = ld_f16(p + 2 * i);
      return;
    case E8Q_GGML_BF16:
      for (int64_t i = 0; i < n; i++) dst[i] = ld_bf16(p + 2 * i);
      return;
    default: break;
  }
  void (*block)(const uint8_t *, float *) = NULL;
  switch (type) {
    case E8Q_GGML_Q4_0: block = block_q4_0; break;
    case E8Q_GGML_Q4_1: block = block_q4_1; break;
    case E8Q_GGML_Q5_0: block = block_q5_0; break;
    case E8Q_GGML_Q5_1: block = block_q5_1; break;
    case E8Q_GGML_Q8_0: block = block_q8_0; break;
    case E8Q_GGML_Q2_K: block = block_q2_k; break;
    case E8Q_GGML_Q3_K: block = block_q3_k; break;
    case E8Q_GGML_Q4_K: block = block_q4_k; break;
    case E8Q_GGML_Q5_K: block = block_q5_k; break;
    case E8Q_GGML_Q6_K: block = block_q6_k; break;
    default: E8Q_FATAL("ggml type %d (%s): no decoder", type, ti->name);
  }
  for (int64_t i = 0; i < nb; i++)
    block(p + (size_t)i * (size_t)ti->block_bytes, dst + i * ti->block_size);
}

void e8q_ggml_dequant_row(int type, const void *src, int64_t n, float *dst) {
  e8q_ggml_dequant_row_ref(type, src, n, dst);
}
