/* kernels/matvec_q8.c: 8-bit matrix with per-32 scales, and its product (kernels/matvec_q8.h). */
#include "kernels/matvec_q8.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear.h" /* e8q_qlinear_simd_level: the process's SIMD level and its overrides */

/* ---------------------------------------------------------------- storage */
void e8q_q8_quantize(e8q_q8_matrix *M, int m, int n, const float *W, const char *what) {
  memset(M, 0, sizeof *M);
  E8Q_CHECK(m > 0 && n > 0 && n % E8Q_Q8_BLOCK == 0,
            "%s: an 8-bit matrix needs rows of a multiple of %d weights (this one is [%d x %d]); keep the source "
            "precision for this model",
            what, E8Q_Q8_BLOCK, m, n);
  const int nb = n / E8Q_Q8_BLOCK;
  M->m = m;
  M->n = n;
  int8_t *Q = e8q_alloc_aligned((size_t)m * n, "8-bit matrix");                        /* [m, n] */
  float *S = e8q_alloc_aligned(sizeof(float) * (size_t)m * nb, "8-bit matrix scales"); /* [m, nb] */
  M->q = Q;
  M->scale = S;
  int bad = -1;
#pragma omp parallel for schedule(static)
  for (int r = 0; r < m; r++)
    for (int b = 0; b < nb; b++) {
      const float *w = W + (size_t)r * n + (size_t)b * E8Q_Q8_BLOCK;
      int8_t *q = Q + (size_t)r * n + (size_t)b * E8Q_Q8_BLOCK;
      float amax = 0;
      for (int j = 0; j < E8Q_Q8_BLOCK; j++) {
        if (!isfinite(w[j])) {
#pragma omp atomic write
          bad = r;
        }
        amax = fmaxf(amax, fabsf(w[j]));
      }
      const float s = amax / 127.0f;
      S[(size_t)r * nb + b] = s;
      for (int j = 0; j < E8Q_Q8_BLOCK; j++) {
        float v = s > 0 ? nearbyintf(w[j] / s) : 0.0f;
        q[j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
      }
    }
  E8Q_CHECK(bad < 0, "%s: row %d holds a NaN or Inf weight; the source tensor is damaged", what, bad);
}

void e8q_q8_free(e8q_q8_matrix *M) {
  if (!M->borrowed) {
    free((void *)M->q);
    free((void *)M->scale);
  }
  memset(M, 0, sizeof *M);
}

void e8q_q8_dequant_row(const e8q_q8_matrix *M, int r, float *out) {
  const int nb = M->n / E8Q_Q8_BLOCK;
  for (int j = 0; j < M->n; j++) out[j] = e8q_q8_value(M->scale[(size_t)r * nb + j / E8Q_Q8_BLOCK], M->q[(size_t)r * M->n + j]);
}

void e8q_q8_round(int m, int n, float *W, const char *what, e8q_q8_matrix *keep) {
  e8q_q8_matrix M;
  e8q_q8_quantize(&M, m, n, W, what);
#pragma omp parallel for schedule(static) if ((size_t)m * n > ((size_t)1 << 18))
  for (int r = 0; r < m; r++) e8q_q8_dequant_row(&M, r, W + (size_t)r * n);
  if (keep)
    *keep = M;
  else
    e8q_q8_free(&M);
}

/* ---------------------------------------------------------------- reference */
void e8q_matvec_q8_ref(const e8q_q8_matrix *M, const float *x, float *y) {
  const int nb = M->n / E8Q_Q8_BLOCK;
  for (int i = 0; i < M->m; i++) {
    double s = 0;
    for (int j = 0; j < M->n; j++) {
      const float w = e8q_q8_value(M->scale[(size_t)i * nb + j / E8Q_Q8_BLOCK], M->q[(size_t)i * M->n + j]);
      s += (double)w * x[j];
    }
    y[i] = (float)s;
  }
}

/* ---------------------------------------------------------------- scalar (any CPU) */
static void rows_scalar(const e8q_q8_matrix *M, int i0, int i1, const float *x, float *y) {
  const int n = M->n, nb = n / E8Q_Q8_BLOCK;
  for (int i = i0; i < i1; i++) {
    float s = 0;
    for (int b = 0; b < nb; b++) {
      const int8_t *q = M->q + (size_t)i * n + (size_t)b * E8Q_Q8_BLOCK;
      float p = 0;
      for (int j = 0; j < E8Q_Q8_BLOCK; j++) p += (float)q[j] * x[b * E8Q_Q8_BLOCK + j];
      s += M->scale[(size_t)i * nb + b] * p;
    }
    y[i] = s;
  }
}

/* ---------------------------------------------------------------- AVX2 + FMA: 8 lanes */
__attribute__((target("avx2,fma"))) static void rows_avx2(const e8q_q8_matrix *M, int i0, int i1, const float *x,
                                                          float *y) {
  const int n = M->n, nb = n / E8Q_Q8_BLOCK;
  for (int i = i0; i < i1; i++) {
    const int8_t *q = M->q + (size_t)i * n;
    const float *sc = M->scale + (size_t)i * nb;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
      const int8_t *qb = q + (size_t)b * E8Q_Q8_BLOCK;
      const float *xb = x + (size_t)b * E8Q_Q8_BLOCK;
      __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)qb))),
                               _mm256_loadu_ps(xb));
      for (int j = 8; j < E8Q_Q8_BLOCK; j += 8)
        p = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qb + j)))),
                            _mm256_loadu_ps(xb + j), p);
      acc = _mm256_fmadd_ps(p, _mm256_set1_ps(sc[b]), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    y[i] = _mm_cvtss_f32(s);
  }
}

/* ---------------------------------------------------------------- AVX-512F: 16 lanes
 * Two rows at a time, two blocks per step, four independent accumulators (the FMA chains'
 * latency); x's two blocks are loaded once for both rows. */
__attribute__((target("avx512f"))) static inline __m512 q16(const int8_t *q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}
__attribute__((target("avx512f"))) static inline __m512 block_dot(const int8_t *q, __m512 x0, __m512 x1) {
  return _mm512_fmadd_ps(q16(q + 16), x1, _mm512_mul_ps(q16(q), x0));
}
__attribute__((target("avx512f"))) static void rows_avx512(const e8q_q8_matrix *M, int i0, int i1, const float *x,
                                                            float *y) {
  const int n = M->n, nb = n / E8Q_Q8_BLOCK;
  int i = i0;
  for (; i + 2 <= i1; i += 2) {
    const int8_t *qa = M->q + (size_t)i * n, *qc = qa + n;
    const float *sa = M->scale + (size_t)i * nb, *sc = sa + nb;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, c0 = a0, c1 = a0;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
      const float *xb = x + (size_t)b * E8Q_Q8_BLOCK;
      const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16), x2 = _mm512_loadu_ps(xb + 32),
                   x3 = _mm512_loadu_ps(xb + 48);
      const size_t o = (size_t)b * E8Q_Q8_BLOCK;
      a0 = _mm512_fmadd_ps(block_dot(qa + o, x0, x1), _mm512_set1_ps(sa[b]), a0);
      a1 = _mm512_fmadd_ps(block_dot(qa + o + 32, x2, x3), _mm512_set1_ps(sa[b + 1]), a1);
      c0 = _mm512_fmadd_ps(block_dot(qc + o, x0, x1), _mm512_set1_ps(sc[b]), c0);
      c1 = _mm512_fmadd_ps(block_dot(qc + o + 32, x2, x3), _mm512_set1_ps(sc[b + 1]), c1);
    }
    if (b < nb) {
      const float *xb = x + (size_t)b * E8Q_Q8_BLOCK;
      const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
      const size_t o = (size_t)b * E8Q_Q8_BLOCK;
      a0 = _mm512_fmadd_ps(block_dot(qa + o, x0, x1), _mm512_set1_ps(sa[b]), a0);
      c0 = _mm512_fmadd_ps(block_dot(qc + o, x0, x1), _mm512_set1_ps(sc[b]), c0);
    }
    y[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    y[i + 1] = _mm512_reduce_add_ps(_mm512_add_ps(c0, c1));
  }
  for (; i < i1; i++) {
    const int8_t *qa = M->q + (size_t)i * n;
    const float *sa = M->scale + (size_t)i * nb;
    __m512 a0 = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
      const float *xb = x + (size_t)b * E8Q_Q8_BLOCK;
      a0 = _mm512_fmadd_ps(block_dot(qa + (size_t)b * E8Q_Q8_BLOCK, _mm512_loadu_ps(xb), _mm512_loadu_ps(xb + 16)),
                           _mm512_set1_ps(sa[b]), a0);
    }
    y[i] = _mm512_reduce_add_ps(a0);
  }
}

/* ---------------------------------------------------------------- dispatch */
typedef void (*rows_fn)(const e8q_q8_matrix *, int, int, const float *, float *);

void e8q_matvec_q8(const e8q_q8_matrix *M, const float *x, float *y) {
  const int level = e8q_qlinear_simd_level(); /* 2: AVX-512, 1: AVX2 + FMA, 0: scalar */
  const rows_fn fn = level == 2 ? rows_avx512 : level == 1 ? rows_avx2 : rows_scalar;
  enum { ROWS = 256 }; /* a block of rows per task: 256 x 576 bytes = 144 KB of a head */
  const int m = M->m, blocks = (m + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) if ((size_t)m * M->n > ((size_t)1 << 18))
  for (int b = 0; b < blocks; b++) {
    const int i0 = b * ROWS, i1 = i0 + ROWS < m ? i0 + ROWS : m;
    fn(M, i0, i1, x, y);
  }
}
