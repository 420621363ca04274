/* kernels/qlinear_vnni.c: E8P, RVQ3 and RVQ4 products decoded in registers, multiplied with
 * AVX512-VNNI (see qlinear_vnni.h for the contract).
 *
 * Quarter units. Every E8P weight is 4w = 2h + 1 with h = s·o - p in [-8, 7]: o the odd
 * signed-abs value 2·abs[A][i] = (b3 b2 b1 1) in 4-bit two's complement, s the element's sign
 * (bit σ(i) of B, bit 0 flipped by the parity) and p = parity(B) (the -1/4 shift). Negating
 * an odd number flips bits 1..3 and subtracting p clears bit 0, so
 *     h = (b3^sn, b2^sn, b1^sn, !p)      and     4w = h sign-extended, shifted left, plus 1,
 * every bit of the int8 4w an affine GF(2) function of (b1, b2, b3) and B. Per 64 codes (one
 * register of A bytes, one of B bytes; lanes = 16 rows x 4 consecutive codes):
 *   t_k  = T_k[A]                     the b-bits of elements 2k (bits 0-2), 2k+1 (4-6), four 64-entry
 *                                     vpermb lookups merged by bits 6 and 7 of A
 *   t_k ^= GF(B, Q_k) ^ 0x88          their signs xor'd in, !p in bits 3, 7 (one gf2p8affineqb)
 *   v_2k = LUT[t_k & 63], v_2k+1 = GF(t_k, M) ^ 0x81    4w + 128 as u8: one vpermb (port 5)
 *                                     and one gf2p8affineqb (port 0), balancing the two ports
 * and vpdpbusd multiplies the four u8 weights of a row's dword lane (element i of its 4 codes)
 * with the four matching s8 input digits, broadcast from memory, into an int32 per row.
 * The input u is held as X = round(u / scale), |X| <= 8323072 (24 bits), split into balanced
 * base-256 digits X = d0 + 256 d1 + 65536 d2; Σ (4w + 128) d = Σ 4w d + 128 Σ d, and the
 * second sum is the same for every row. No step rounds but the one fixed-point copy of u.
 * Costs per 64 codes: 20 vpermb, ~8 mask/blend, 8 gf2p8affineqb, 4 xor, 24 vpdpbusd: about
 * 0.5 cycles per code per core against ~1.5 for the f32 AVX-512 loop (bench/README.md).
 * RVQ4 runs its second E8P stage the same way; RVQ3's second stage (1-bit E8 indices, half
 * units) is a 256-entry lookup to one of <= 64 value quads per half, then one vpermb per
 * element. Batch > 1: 4 columns per pass over the codes, each column its own fixed-point scale. */
#include "kernels/qlinear_vnni.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear_avx512.h"

#define VQ_ROWS 16  /* rows per group: one int32 lane each */
#define VQ_CODES 4  /* consecutive codes per lane: one VNNI dword */
#define VQ_PREFETCH 4096 /* bytes ahead of the codes being decoded (32 quads) */

/* ---------------------------------------------------------------- tables */
static uint8_t tpair[4][256] __attribute__((aligned(64))); /* [k][A]: b1..b3 of elements 2k (bits 0-2), 2k+1 (4-6) */
static uint8_t lut_even[64] __attribute__((aligned(64)));  /* t_k bits 0-3 -> 4w_2k + 128 (bits 4, 5 ignored) */
static uint64_t gf_q[4];                                   /* B -> signs of 2k, 2k+1 over their b-bits, parity in bits 3, 7 */
static uint64_t gf_m[8];                                   /* t_k -> 4w_i + 128 (with the constant 0x81); odd i used */
static uint8_t e81b_quad[2][256] __attribute__((aligned(64))); /* [half][idx]: which of <= 64 value quads */
static uint8_t e81b_val[8][64] __attribute__((aligned(64)));   /* [element][quad]: 2w + 128 (half units) */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_build(void) {
  for (int A = 0; A < E8Q_E8P_ROWS; A++) {
    float w[8];
    e8q_e8p_decode((uint16_t)(A << 8), w); /* B = 0: no signs, shift +1/4 */
    for (int k = 0; k < 4; k++) {
      uint8_t b = 0;
      for (int t = 0; t < 2; t++) {
        const int o = (int)lrintf(2.0f * (w[2 * k + t] - 0.25f)); /* odd, -7..7 */
        b |= (uint8_t)(((o & 0xE) >> 1) << (4 * t));
      }
      tpair[k][A] = b;
    }
  }
  for (int k = 0; k < 4; k++) {
    uint8_t rows[8] = {0};
    for (int t = 0; t < 2; t++) {
      for (int b = 0; b < 3; b++) rows[4 * t + b] = e8q_e8p_sign_bits(2 * k + t);
    }
    rows[3] = rows[7] = 0xFF; /* parity(B) next to each element, complemented by the constant 0x88 */
    gf_q[k] = e8q_gf2_matrix(rows);
  }
  for (int i = 0; i < 8; i++) {
    const int t = i & 1;
    uint8_t rows[8] = {0}; /* bit 0: constant 1; 1: !p; 2, 3: h1, h2; 4..7: h3 (sign extension) */
    rows[1] = (uint8_t)(8u << (4 * t));
    rows[2] = (uint8_t)(1u << (4 * t));
    rows[3] = (uint8_t)(2u << (4 * t));
    for (int j = 4; j < 8; j++) rows[j] = (uint8_t)(4u << (4 * t));
    gf_m[i] = e8q_gf2_matrix(rows);
  }
  for (int idx = 0; idx < 64; idx++) { /* bits 0-2: h1..h3, bit 3: h0 = !p */
    const int h = ((idx >> 3) & 1) | ((idx & 7) << 1), hs = h >= 8 ? h - 16 : h;
    lut_even[idx] = (uint8_t)(2 * hs + 1 + 128);
  }
  /* RVQ3's second stage: the 1-bit E8 grid has <= 64 distinct value quads per half (57 and 56),
   * so a 256-entry lookup gives a 6-bit quad index and one 64-entry vpermb per element its
   * value; unused entries decode to 0 */
  memset(e81b_val, 128, sizeof e81b_val);
  for (int h = 0; h < 2; h++) {
    int nquad = 0;
    for (int idx = 0; idx < E8Q_E81B_SIZE; idx++) {
      int found = -1;
      for (int qd = 0; qd < nquad && found < 0; qd++) {
        int same = 1;
        for (int e = 0; e < 4; e++) same &= (int)e81b_val[4 * h + e][qd] - 128 == E8Q_E81B_GRID2[idx][4 * h + e];
        if (same) found = qd;
      }
      if (found < 0) {
        E8Q_CHECK(nquad < 64, "qlinear VNNI: the 1-bit E8 grid has more than 64 value quads in half %d", h);
        found = nquad++;
        for (int e = 0; e < 4; e++) e81b_val[4 * h + e][found] = (uint8_t)(E8Q_E81B_GRID2[idx][4 * h + e] + 128);
      }
      e81b_quad[h][idx] = (uint8_t)found;
    }
  }
  for (int idx = 0; idx < E8Q_E81B_SIZE; idx++) {
    float w[8];
    e8q_e81b_decode((uint32_t)idx, w);
    for (int e = 0; e < 8; e++)
      E8Q_CHECK((float)((int)e81b_val[e][e81b_quad[e / 4][idx]] - 128) == 2.0f * w[e],
                "qlinear VNNI: 1-bit E8 quads disagree with codebook.h at index %d", idx);
  }
  /* the decomposition must reproduce codebook.h exactly for every code */
  for (int c = 0; c < E8Q_E8P_NCODES; c++) {
    float w[8];
    e8q_e8p_decode((uint16_t)c, w);
    for (int i = 0; i < 8; i++) {
      const uint8_t t = (uint8_t)(tpair[i >> 1][c >> 8] ^ e8q_gf2_affine(gf_q[i >> 1], (uint8_t)c, 0x88));
      const int v = (int)e8q_gf2_affine(gf_m[i], t, 0x81) - 128, ve = (int)lut_even[t & 63] - 128;
      E8Q_CHECK((float)v == 4.0f * w[i] && (i % 2 || (float)ve == 4.0f * w[i]),
                "qlinear VNNI: int8 decomposition disagrees with codebook.h at code %d", c);
    }
  }
}

/* ---------------------------------------------------------------- repacking */
int e8q_cpu_has_vnni(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  return e8q_cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
#else
  return 0;
#endif
}

int e8q_qlinear_vnni_fits(const e8q_qlinear_desc *d) { return d->n_pad <= E8Q_VNNI_MAX_NPAD; }

/* second-stage bytes per quad: 0 (E8P), 64 (RVQ3: 1-bit E8 indices), 128 (RVQ4: E8P codes) */
static inline int stage2_bytes(int cb) {
  return cb == E8Q_CB_E8P12RVQ4B ? 128 : cb == E8Q_CB_E8P12RVQ3B ? 64 : 0;
}

void e8q_qlinear_vnni_init(e8q_qlinear_vnni *v, const e8q_qlinear_desc *d) {
  const int nc = d->n_pad / 8;
  v->mg = (d->m + VQ_ROWS - 1) / VQ_ROWS;
  v->nq = (nc + VQ_CODES - 1) / VQ_CODES;
  v->cb = d->codebook;
  const int stage2 = stage2_bytes(v->cb);
  const size_t gsz = (size_t)v->nq * (128 + stage2), bytes = (size_t)v->mg * gsz;
  v->pk = e8q_alloc_aligned(bytes, "qlinear VNNI repacked codes");
  memset(v->pk, 0, bytes);
#pragma omp parallel for schedule(static)
  for (int r = 0; r < d->m; r++)
    for (int j = 0; j < nc; j++) {
      const size_t at = (size_t)r * nc + j;
      const int lane = VQ_CODES * (r % VQ_ROWS) + j % VQ_CODES;
      uint8_t *g = v->pk + (size_t)(r / VQ_ROWS) * gsz, *q1 = g + (size_t)(j / VQ_CODES) * 128;
      uint8_t *q2 = g + (size_t)v->nq * 128 + (size_t)(j / VQ_CODES) * stage2;
      q1[lane] = (uint8_t)(d->codes[at] >> 8);
      q1[64 + lane] = (uint8_t)(d->codes[at] & 0xFF);
      if (stage2 == 128) {
        const uint16_t c2 = ((const uint16_t *)d->codes2)[at];
        q2[lane] = (uint8_t)(c2 >> 8);
        q2[64 + lane] = (uint8_t)(c2 & 0xFF);
      } else if (stage2 == 64) {
        q2[lane] = ((const uint8_t *)d->codes2)[at];
      }
    }
}

void e8q_qlinear_vnni_free(e8q_qlinear_vnni *v) {
  free(v->pk);
  memset(v, 0, sizeof *v);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,gfni,avx512vnni")))
#define INLINE __attribute__((always_inline)) inline

/* ---------------------------------------------------------------- the kernel */
#define VQ_BT 4 /* batch columns per pass over the codes (batch > 1) */

/* a 256-entry byte table (four registers) at 64 indices: four vpermb merged by bits 6 and 7 */
static VNNI INLINE __m512i lookup256(const __m512i *T4, __m512i A, __mmask64 k6, __mmask64 k7) {
  const __m512i t = _mm512_mask_permutexvar_epi8(_mm512_permutexvar_epi8(A, T4[0]), k6, A, T4[1]);
  const __m512i u = _mm512_mask_permutexvar_epi8(_mm512_permutexvar_epi8(A, T4[2]), k6, A, T4[3]);
  return _mm512_mask_blend_epi8(k7, t, u);
}

/* 4w + 128 of elements 2k (v0) and 2k + 1 (v1) of 64 codes (A, B); k6, k7: bits 6, 7 of A */
static VNNI INLINE void decode_pair(const __m512i *T, __m512i A, __m512i B, __mmask64 k6, __mmask64 k7, int k,
                                    __m512i *v0, __m512i *v1) {
  __m512i t = lookup256(T + 4 * k, A, k6, k7);
  t = _mm512_xor_si512(t, _mm512_gf2p8affine_epi64_epi8(B, _mm512_set1_epi64((long long)gf_q[k]), 0x88));
  *v0 = _mm512_permutexvar_epi8(t, _mm512_load_si512(lut_even)); /* vpermb (port 5) for one, */
  *v1 = _mm512_gf2p8affine_epi64_epi8(t, _mm512_set1_epi64((long long)gf_m[2 * k + 1]), 0x81); /* GFNI (0) */
}

/* 64 codes times the digits of BT columns. x: column t's digits for this quad at x + t·xs,
 * element-major [8][3]. BT = 1: elements 2k into acc[0], 2k+1 into acc[1] (two sets keep each
 * chain 4 deep per quad); BT > 1: column t into acc[t] (the columns are the independent chains). */
static VNNI INLINE void quad(const __m512i *T, __m512i A, __m512i B, const int32_t *x, size_t xs, const int BT,
                             __m512i acc[][3]) {
  const __mmask64 k7 = _mm512_movepi8_mask(A), k6 = _mm512_test_epi8_mask(A, _mm512_set1_epi8(0x40));
#pragma GCC unroll 4
  for (int k = 0; k < 4; k++) {
    __m512i v0, v1;
    decode_pair(T, A, B, k6, k7, k, &v0, &v1);
#pragma GCC unroll 4
    for (int t = 0; t < BT; t++) {
      const int32_t *x0 = x + (size_t)t * xs + 3 * (2 * k), *x1 = x0 + 3;
      __m512i *e = acc[t], *o = acc[BT == 1 ? 1 : t];
#pragma GCC unroll 3
      for (int d = 0; d < 3; d++) {
        e[d] = _mm512_dpbusd_epi32(e[d], v0, _mm512_set1_epi32(x0[d]));
        o[d] = _mm512_dpbusd_epi32(o[d], v1, _mm512_set1_epi32(x1[d]));
      }
    }
  }
}

/* RVQ3's second stage: 64 1-bit E8 indices C times the digits, as quad (2w + 128, half units) */
static VNNI INLINE void quad_e81b(const __m512i *Q /* [8] */, const __m512i *V /* [8] */, __m512i C, const int32_t *x,
                                  size_t xs, const int BT, __m512i acc[][3]) {
  const __mmask64 k7 = _mm512_movepi8_mask(C), k6 = _mm512_test_epi8_mask(C, _mm512_set1_epi8(0x40));
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++) {
    const __m512i qd = lookup256(Q + 4 * h, C, k6, k7);
#pragma GCC unroll 4
    for (int e = 4 * h; e < 4 * h + 4; e++) {
      const __m512i w = _mm512_permutexvar_epi8(qd, V[e]);
#pragma GCC unroll 4
      for (int t = 0; t < BT; t++) {
        const int32_t *xe = x + (size_t)t * xs + 3 * e;
        __m512i *a = acc[BT == 1 ? e & 1 : t];
#pragma GCC unroll 3
        for (int d = 0; d < 3; d++) a[d] = _mm512_dpbusd_epi32(a[d], w, _mm512_set1_epi32(xe[d]));
      }
    }
  }
}

/* one group of 16 rows times BT columns: sums of the stage's integer weights (4w, or 2w for the
 * 1-bit E8 stage) times X per stage and column, y[s][t][r] (exact, before the digit offset).
 * xd: column t's digits at xd + t·xs, [nq][8][3]. */
static VNNI INLINE void group(const e8q_qlinear_vnni *v, int g, const int32_t *xd, size_t xs, const int cb,
                              const int BT, int64_t y[2][VQ_BT][VQ_ROWS]) {
  const int stage2 = stage2_bytes(cb);
  __m512i T[16];
  for (int i = 0; i < 16; i++) T[i] = _mm512_load_si512(tpair[i / 4] + 64 * (i % 4));
  int32_t r[3][VQ_ROWS] __attribute__((aligned(64)));
  const uint8_t *pg = v->pk + (size_t)g * v->nq * (128 + stage2);
  /* the stages run one after the other (one pass each, same registers): interleaving them in
   * one pass needs twice the accumulators, which spill */
  for (int s = 0; s < (stage2 ? 2 : 1); s++) {
    __m512i acc[BT == 1 ? 2 : BT][3];
    for (int t = 0; t < (BT == 1 ? 2 : BT); t++)
      for (int d = 0; d < 3; d++) acc[t][d] = _mm512_setzero_si512();
    if (s == 0 || stage2 == 128) { /* E8P codes */
      const uint8_t *ps = pg + (size_t)s * v->nq * 128;
      for (int q = 0; q < v->nq; q++) {
        const uint8_t *p = ps + (size_t)q * 128;
        _mm_prefetch((const char *)p + VQ_PREFETCH, _MM_HINT_T0); /* beyond the caches one thread's */
        _mm_prefetch((const char *)p + VQ_PREFETCH + 64, _MM_HINT_T0); /* hardware prefetch falls short */
        quad(T, _mm512_load_si512(p), _mm512_load_si512(p + 64), xd + (size_t)q * 24, xs, BT, acc);
      }
    } else { /* RVQ3: 1-bit E8 indices */
      __m512i Q[8], V[8];
      for (int i = 0; i < 8; i++) {
        Q[i] = _mm512_load_si512(e81b_quad[i / 4] + 64 * (i % 4));
        V[i] = _mm512_load_si512(e81b_val[i]);
      }
      const uint8_t *ps = pg + (size_t)v->nq * 128;
      for (int q = 0; q < v->nq; q++) {
        const uint8_t *p = ps + (size_t)q * 64;
        _mm_prefetch((const char *)p + VQ_PREFETCH, _MM_HINT_T0);
        quad_e81b(Q, V, _mm512_load_si512(p), xd + (size_t)q * 24, xs, BT, acc);
      }
    }
    for (int t = 0; t < BT; t++) {
      for (int d = 0; d < 3; d++)
        _mm512_store_si512(r[d], BT == 1 ? _mm512_add_epi32(acc[0][d], acc[1][d]) : acc[t][d]);
      for (int i = 0; i < VQ_ROWS; i++)
        y[s][t][i] = (int64_t)r[0][i] + 256 * (int64_t)r[1][i] + 65536 * (int64_t)r[2][i];
    }
  }
}

/* ---------------------------------------------------------------- entry */
/* one column's digits [nq][8][3] (byte c of a dword = code 4q + c) and its digit offset
 * 128·Σ X (every u8 weight carries +128); returns the fixed-point scale, 0 for a zero input,
 * -1 (nothing written) for an input with a NaN or an infinity. Quads are split across threads
 * unless called inside a parallel region. */
static double digits_make(const float *u, int nc, int nq, int32_t *xd, int64_t *offset) {
  float mx = 0;
  for (int k = 0; k < 8 * nc; k++) {
    const float a = fabsf(u[k]);
    if (!(a <= FLT_MAX)) return -1;
    mx = a > mx ? a : mx;
  }
  *offset = 0;
  if (mx == 0) {
    memset(xd, 0, sizeof(int32_t) * (size_t)nq * 24);
    return 0;
  }
  const double inv = E8Q_DIGITS_XMAX / (double)mx;
  int64_t s0 = 0, s1 = 0, s2 = 0;
#pragma omp parallel for schedule(static) reduction(+ : s0, s1, s2) if (!omp_in_parallel() && nq >= 256)
  for (int q = 0; q < nq; q++) {
    int8_t *dq = (int8_t *)(xd + (size_t)q * 24);
    for (int c = 0; c < VQ_CODES; c++) {
      const int j = VQ_CODES * q + c;
      for (int i = 0; i < 8; i++) {
        int32_t d[3];
        e8q_digits3(j < nc ? (int32_t)lrint((double)u[8 * j + i] * inv) : 0, d);
        dq[12 * i + c] = (int8_t)d[0];
        dq[12 * i + 4 + c] = (int8_t)d[1];
        dq[12 * i + 8 + c] = (int8_t)d[2];
        s0 += d[0];
        s1 += d[1];
        s2 += d[2];
      }
    }
  }
  *offset = 128 * (s0 + 256 * s1 + 65536 * s2);
  return (double)mx / E8Q_DIGITS_XMAX;
}

/* rows of group g for columns b0..b0+BT-1 */
static VNNI INLINE void group_out(const e8q_qlinear *q, const e8q_qlinear_vnni *v, int g, int b0, const int BT,
                                  const int32_t *xd, size_t xs, const double *scale, const int64_t *offset,
                                  float *z) {
  const int m = q->d.m;
  int64_t y[2][VQ_BT][VQ_ROWS];
  const int32_t *xb = xd + (size_t)b0 * xs;
  switch (v->cb) {
    case E8Q_CB_E8P12RVQ4B: group(v, g, xb, xs, E8Q_CB_E8P12RVQ4B, BT, y); break;
    case E8Q_CB_E8P12RVQ3B: group(v, g, xb, xs, E8Q_CB_E8P12RVQ3B, BT, y); break;
    default: group(v, g, xb, xs, E8Q_CB_E8P12, BT, y); break;
  }
  /* stage 1 in quarter units; stage 2 in quarter (RVQ4) or half (RVQ3) units, over resid_scale */
  const double unit2 = v->cb == E8Q_CB_E8P12RVQ3B ? 2.0 : 4.0;
  for (int t = 0; t < BT; t++) {
    const double s1 = scale[b0 + t] / 4.0, s2 = scale[b0 + t] / unit2 / (double)q->resid_scale;
    const int64_t off = offset[b0 + t];
    for (int i = 0; i < VQ_ROWS && g * VQ_ROWS + i < m; i++) {
      double s = (double)(y[0][t][i] - off) * s1;
      if (v->cb != E8Q_CB_E8P12) s += (double)(y[1][t][i] - off) * s2;
      z[(size_t)(b0 + t) * m + g * VQ_ROWS + i] = (float)s;
    }
  }
}

VNNI int e8q_qlinear_vnni_matmul(const e8q_qlinear *q, const e8q_qlinear_vnni *v, int batch, const float *u,
                                 float *z) {
  pthread_once(&tables_once, tables_build);
  const int nc = q->nc, nq = v->nq, np = q->d.n_pad;
  const size_t xs = (size_t)nq * 24; /* digits per column */
  int32_t *xd = e8q_alloc_aligned(sizeof(int32_t) * xs * (size_t)batch, "qlinear VNNI input digits");
  double *scale = e8q_malloc(sizeof(double) * (size_t)batch, "qlinear VNNI input scales");
  int64_t *offset = e8q_malloc(sizeof(int64_t) * (size_t)batch, "qlinear VNNI digit offsets");
  if (batch == 1) { /* quads across threads */
    scale[0] = digits_make(u, nc, nq, xd, &offset[0]);
  } else { /* columns across threads */
#pragma omp parallel for schedule(static)
    for (int b = 0; b < batch; b++) scale[b] = digits_make(u + (size_t)b * np, nc, nq, xd + (size_t)b * xs, &offset[b]);
  }
  int finite = 1;
  for (int b = 0; b < batch; b++) finite &= scale[b] >= 0;
  if (!finite) {
    free(xd);
    free(scale);
    free(offset);
    return 0;
  }
  /* rows split statically across threads; columns in passes of 4, 2, 1 */
#pragma omp parallel for schedule(static)
  for (int g = 0; g < v->mg; g++) {
    for (int b0 = 0, bt = VQ_BT; b0 < batch; b0 += bt) {
      while (b0 + bt > batch) bt /= 2;
      switch (bt) {
        case 4: group_out(q, v, g, b0, 4, xd, xs, scale, offset, z); break;
        case 2: group_out(q, v, g, b0, 2, xd, xs, scale, offset, z); break;
        default: group_out(q, v, g, b0, 1, xd, xs, scale, offset, z); break;
      }
    }
  }
  free(xd);
  free(scale);
  free(offset);
  return 1;
}
#endif
