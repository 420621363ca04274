/* kernels/matvec_f16.c: float16 and bfloat16 matrices times a float32 vector (kernels/matvec_f16.h).
 * One body for both formats: the row kernels below are written once over a conversion of 1, 8
 * and 16 values; float16 converts with F16C / AVX-512F, bfloat16 by a 16-bit shift into the top
 * of the word (exact for every value, Inf and NaN included). */
#include "kernels/matvec_f16.h"

#include <immintrin.h>
#include <string.h>

#include "common/f16.h"
#include "kernels/qlinear.h" /* e8q_cpu_has_avx2 */

typedef void (*rows_fn)(int, int, int, const uint16_t *, const float *, float *);

/* ---------------------------------------------------------------- conversions */
__attribute__((target("avx2,f16c,fma"))) static inline __m256 f16x8(const uint16_t *w) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
}
__attribute__((target("avx2,fma"))) static inline __m256 bf16x8(const uint16_t *w) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w)), 16));
}
__attribute__((target("avx512f"))) static inline __m512 f16x16(const uint16_t *w) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)w));
}
__attribute__((target("avx512f"))) static inline __m512 bf16x16(const uint16_t *w) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)w)), 16));
}

__attribute__((target("avx2,fma"))) static float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/* ---------------------------------------------------------------- the row kernels
 * PFX_ref: plain loops in double. PFX_rows_scalar: any CPU. PFX_rows_avx2: 8 lanes, one
 * accumulator. PFX_rows_avx512: one row at a time with four independent 16-lane accumulators
 * over its columns (64 per step): measured 2.5x faster here than four rows with one accumulator
 * each (the FMA chains' latency); a ragged end is zero-padded to 16. */
#define DEFINE_MATVEC(PFX, CVT1, CVT8, TARGET8, CVT16)                                                        \
  void e8q_matvec_##PFX##_ref(int m, int n, const uint16_t *W, const float *x, float *y) {                   \
    for (int i = 0; i < m; i++) {                                                                             \
      double s = 0;                                                                                           \
      for (int j = 0; j < n; j++) s += (double)CVT1(W[(size_t)i * n + j]) * x[j];                             \
      y[i] = (float)s;                                                                                        \
    }                                                                                                         \
  }                                                                                                           \
  static void PFX##_rows_scalar(int i0, int i1, int n, const uint16_t *W, const float *x, float *y) {        \
    for (int i = i0; i < i1; i++) {                                                                           \
      float s = 0;                                                                                            \
      for (int j = 0; j < n; j++) s += CVT1(W[(size_t)i * n + j]) * x[j];                                     \
      y[i] = s;                                                                                               \
    }                                                                                                         \
  }                                                                                                           \
  __attribute__((target(TARGET8))) static void PFX##_rows_avx2(int i0, int i1, int n, const uint16_t *W,     \
                                                               const float *x, float *y) {                   \
    const int n8 = n & ~7;                                                                                    \
    for (int i = i0; i < i1; i++) {                                                                           \
      const uint16_t *w = W + (size_t)i * n;                                                                  \
      __m256 acc = _mm256_setzero_ps();                                                                       \
      for (int j = 0; j < n8; j += 8) acc = _mm256_fmadd_ps(CVT8(w + j), _mm256_loadu_ps(x + j), acc);        \
      float s = hsum8(acc);                                                                                   \
      for (int j = n8; j < n; j++) s += CVT1(w[j]) * x[j];                                                    \
      y[i] = s;                                                                                               \
    }                                                                                                         \
  }                                                                                                           \
  __attribute__((target("avx512f"))) static void PFX##_rows_avx512(int i0, int i1, int n, const uint16_t *W, \
                                                                   const float *x, float *y) {              \
    const int n16 = n & ~15, k = n - n16;                                                                     \
    const __mmask16 tail = (__mmask16)((1u << k) - 1u);                                                       \
    for (int i = i0; i < i1; i++) {                                                                           \
      const uint16_t *w = W + (size_t)i * n;                                                                  \
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                             \
      int j = 0;                                                                                              \
      for (; j + 64 <= n16; j += 64) {                                                                        \
        a0 = _mm512_fmadd_ps(CVT16(w + j), _mm512_loadu_ps(x + j), a0);                                       \
        a1 = _mm512_fmadd_ps(CVT16(w + j + 16), _mm512_loadu_ps(x + j + 16), a1);                            \
        a2 = _mm512_fmadd_ps(CVT16(w + j + 32), _mm512_loadu_ps(x + j + 32), a2);                            \
        a3 = _mm512_fmadd_ps(CVT16(w + j + 48), _mm512_loadu_ps(x + j + 48), a3);                            \
      }                                                                                                       \
      for (; j < n16; j += 16) a0 = _mm512_fmadd_ps(CVT16(w + j), _mm512_loadu_ps(x + j), a0);                \
      if (k) {                                                                                                \
        uint16_t b[16] = {0};                                                                                 \
        memcpy(b, w + n16, sizeof(uint16_t) * (size_t)k);                                                     \
        a1 = _mm512_fmadd_ps(CVT16(b), _mm512_maskz_loadu_ps(tail, x + n16), a1);                             \
      }                                                                                                       \
      y[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));               \
    }                                                                                                         \
  }
DEFINE_MATVEC(f16, e8q_f16_to_f32, f16x8, "avx2,f16c,fma", f16x16)
DEFINE_MATVEC(bf16, e8q_bf16_to_f32, bf16x8, "avx2,fma", bf16x16)

/* ---------------------------------------------------------------- dispatch */
/* the rows of `path` (2 AVX-512F, 1 AVX2+FMA (+F16C for float16), 0 scalar), NULL when this CPU
 * lacks it */
static rows_fn path_fn(int bf, int path) {
  switch (path) {
  case 2: return __builtin_cpu_supports("avx512f") ? (bf ? bf16_rows_avx512 : f16_rows_avx512) : NULL;
  case 1:
    return !e8q_cpu_has_avx2() ? NULL : bf ? bf16_rows_avx2 : __builtin_cpu_supports("f16c") ? f16_rows_avx2 : NULL;
  case 0: return bf ? bf16_rows_scalar : f16_rows_scalar;
  default: return NULL;
  }
}

static rows_fn best_fn(int bf) {
  for (int p = 2; p > 0; p--)
    if (path_fn(bf, p)) return path_fn(bf, p);
  return path_fn(bf, 0);
}

static void run(rows_fn fn, int m, int n, const uint16_t *W, const float *x, float *y) {
  enum { ROWS = 256 }; /* a block of rows per task: 256 x 576 halves = 288 KB of a head */
  const int blocks = (m + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) if ((size_t)m * n > ((size_t)1 << 18))
  for (int b = 0; b < blocks; b++) {
    const int i0 = b * ROWS, i1 = i0 + ROWS < m ? i0 + ROWS : m;
    fn(i0, i1, n, W, x, y);
  }
}

void e8q_matvec_f16(int m, int n, const uint16_t *W, const float *x, float *y) {
  static rows_fn fn; /* chosen once (a benign race: every thread picks the same) */
  if (!fn) fn = best_fn(0);
  run(fn, m, n, W, x, y);
}

void e8q_matvec_bf16(int m, int n, const uint16_t *W, const float *x, float *y) {
  static rows_fn fn;
  if (!fn) fn = best_fn(1);
  run(fn, m, n, W, x, y);
}

int e8q_matvec_bf16_path(int path, int m, int n, const uint16_t *W, const float *x, float *y) {
  const rows_fn fn = path_fn(1, path);
  if (!fn) return 0;
  run(fn, m, n, W, x, y);
  return 1;
}
