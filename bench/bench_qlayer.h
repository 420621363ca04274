/* bench/bench_qlayer.h: the random quantized layer the qlinear benchmarks (bench_qlinear,
 * bench_qlinear_grad) time: a fixed xorshift stream (same numbers every run), codes for all three
 * codebooks, ±1 scales and e8q's Hadamard factors (E8Q_HAD_SEED).
 *   bench_qcodes_make  codes [m, np/8] (uint16), codes2 [m, np/8] (uint16, RVQ4's stage 2),
 *                      codes3 [m, np/8] (uint8, RVQ3's stage 2), SU [np], SV [m],
 *                      R_in [K_in, K_in], R_out [K_out, K_out]
 *   bench_qcodes_desc  the layer of one codebook over those arrays
 * Everything through e8q_malloc, released by bench_qcodes_free. */
#ifndef E8Q_BENCH_QLAYER_H
#define E8Q_BENCH_QLAYER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/hadamard.h"
#include "kernels/qlinear.h"

/* ---------------------------------------------------------------- fixed random stream */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static inline float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2 - 1); }

/* ---------------------------------------------------------------- the layer's arrays */
typedef struct {
  uint16_t *codes, *codes2;
  uint8_t *codes3;
  float *SU, *SV, *R_in, *R_out;
} bench_qcodes;

/* e8q's factor of order K (the pipeline's seed) into R [K, K]; nothing for K = 1 */
static inline void bench_factor_f32(float *R, int K) {
  if (K == 1) return;
  e8q_had_factor f;
  e8q_had_factor_build(&f, K, E8Q_HAD_SEED);
  memcpy(R, f.Rf, sizeof(float) * K * K);
  e8q_had_factor_free(&f);
}

static inline void bench_qcodes_make(bench_qcodes *c, int m, int np, int K_in, int K_out) {
  const size_t ncodes = (size_t)m * (np / 8);
  c->codes = e8q_malloc(ncodes * 2, "codes");
  c->codes2 = e8q_malloc(ncodes * 2, "codes2");
  c->codes3 = e8q_malloc(ncodes, "codes2 (3 bit)");
  for (size_t i = 0; i < ncodes; i++) {
    uint64_t v = rnd();
    c->codes[i] = (uint16_t)v;
    c->codes2[i] = (uint16_t)(v >> 16);
    c->codes3[i] = (uint8_t)(v >> 32);
  }
  c->SU = e8q_malloc(sizeof(float) * np, "SU");
  c->SV = e8q_malloc(sizeof(float) * m, "SV");
  for (int i = 0; i < np; i++) c->SU[i] = rnd() & 1 ? 1.f : -1.f;
  for (int i = 0; i < m; i++) c->SV[i] = rnd() & 1 ? 1.f : -1.f;
  c->R_in = e8q_malloc(sizeof(float) * K_in * K_in, "R_in");
  c->R_out = e8q_malloc(sizeof(float) * K_out * K_out, "R_out");
  bench_factor_f32(c->R_in, K_in);
  bench_factor_f32(c->R_out, K_out);
}

static const e8q_codebook_id BENCH_CBS[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ3B, E8Q_CB_E8P12RVQ4B};
static const char *BENCH_CB_NAMES[3] = {"E8P ", "RVQ3", "RVQ4"};

/* the m x n layer (n_pad np) of codebook BENCH_CBS[c] over c's arrays: one piece, Wscale 0.01 */
static inline e8q_qlinear_desc bench_qcodes_desc(const bench_qcodes *C, int c, int m, int n, int np, int K_in,
                                                 int K_out) {
  return (e8q_qlinear_desc){.m = m, .n = n, .n_pad = np, .codebook = BENCH_CBS[c], .codes = C->codes,
                            .codes2 = c == 0 ? NULL : c == 1 ? (const void *)C->codes3 : (const void *)C->codes2,
                            .SU = C->SU, .SV = C->SV, .Wscale = 0.01f, .n_pieces = 1, .K_in = K_in,
                            .R_in = K_in > 1 ? C->R_in : NULL, .K_out = K_out, .R_out = K_out > 1 ? C->R_out : NULL};
}

static inline void bench_qcodes_free(bench_qcodes *c) {
  void *bufs[] = {c->codes, c->codes2, c->codes3, c->SU, c->SV, c->R_in, c->R_out};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

#endif
