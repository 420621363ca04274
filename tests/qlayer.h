/* tests/qlayer.h: random quantized-linear layers shared by the forward (tests/fused/test_qlinear.c)
 * and backward (tests/train/test_qlinear_grad.c) kernel tests.
 *   qlayer_make          an m x n layer [codes m x n_pad/8 (+ codes2 for RVQ3/RVQ4), SU [n_pad],
 *                        SV [m], real Hadamard factors of order K_in / K_out, three fused pieces
 *                        when m >= 3]; every value random and nonzero
 *   qlayer_guarded       a float buffer [n] with QLAYER_GUARD sentinels on each side
 *   qlayer_random_input  x [n] standard normal, never zero
 * Everything malloc'd, owned by the caller (qlayer_free, qlayer_guarded_check_free, free). */
#ifndef E8Q_TESTS_QLAYER_H
#define E8Q_TESTS_QLAYER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/hadamard.h"
#include "kernels/qlinear.h"
#include "testutil.h"

/* ---------------------------------------------------------------- a random layer */
typedef struct {
  e8q_qlinear_desc d;
  uint16_t *codes;
  void *codes2;
  float *SU, *SV, *R_in, *R_out, *fs;
  int piece_rows[3];
} qlayer;

static const e8q_codebook_id QLAYER_CBS[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ3B, E8Q_CB_E8P12RVQ4B};
static const char *QLAYER_CBN[3] = {"E8P12", "E8P12RVQ3B", "E8P12RVQ4B"};

static inline float qlayer_nonzero_uniform(t_rng *g, float lo, float hi) {
  float v;
  do v = lo + (hi - lo) * (float)t_rng_uniform(g);
  while (v == 0);
  return v;
}

static inline float qlayer_signed_scale(t_rng *g) {
  return (t_rng_u64(g) & 1 ? 1.f : -1.f) * qlayer_nonzero_uniform(g, 0.5f, 1.5f);
}

/* the float copy of a Hadamard factor of order K (NULL for K = 1), caller frees */
static inline float *qlayer_factor_f32(int K, uint64_t seed) {
  if (K == 1) return NULL;
  e8q_had_factor f;
  e8q_had_factor_build(&f, K, seed);
  float *R = malloc(sizeof(float) * K * K);
  memcpy(R, f.Rf, sizeof(float) * K * K);
  e8q_had_factor_free(&f);
  return R;
}

/* m x n layer, K_out | m and K_in | n_pad with power-of-two quotients; three fused pieces when
 * m >= 3 (like q, k, v) */
static inline void qlayer_make(qlayer *L, t_rng *g, int m, int n, int K_out, int K_in, e8q_codebook_id cb) {
  memset(L, 0, sizeof *L);
  const int np = (n + 7) / 8 * 8, nc = np / 8;
  L->codes = malloc(sizeof(uint16_t) * (size_t)m * nc);
  for (size_t i = 0; i < (size_t)m * nc; i++) L->codes[i] = (uint16_t)t_rng_u64(g);
  if (cb == E8Q_CB_E8P12RVQ4B) {
    uint16_t *c2 = malloc(sizeof(uint16_t) * (size_t)m * nc);
    for (size_t i = 0; i < (size_t)m * nc; i++) c2[i] = (uint16_t)t_rng_u64(g);
    L->codes2 = c2;
  } else if (cb == E8Q_CB_E8P12RVQ3B) {
    uint8_t *c2 = malloc((size_t)m * nc);
    for (size_t i = 0; i < (size_t)m * nc; i++) c2[i] = (uint8_t)t_rng_u64(g);
    L->codes2 = c2;
  }
  L->SU = malloc(sizeof(float) * np);
  L->SV = malloc(sizeof(float) * m);
  for (int i = 0; i < np; i++) L->SU[i] = qlayer_signed_scale(g);
  for (int i = 0; i < m; i++) L->SV[i] = qlayer_signed_scale(g);
  /* real factors (Paley or seeded random orthogonal, kernels/hadamard.h), fresh seed */
  L->R_in = qlayer_factor_f32(K_in, t_rng_u64(g));
  L->R_out = qlayer_factor_f32(K_out, t_rng_u64(g));
  int pieces = m >= 3 ? 3 : 1;
  L->fs = malloc(sizeof(float) * 3);
  if (pieces == 3) {
    L->piece_rows[0] = m / 2;
    L->piece_rows[1] = m / 4;
    L->piece_rows[2] = m - m / 2 - m / 4;
  }
  for (int i = 0; i < 3; i++) L->fs[i] = qlayer_nonzero_uniform(g, 0.2f, 2.0f);
  L->d = (e8q_qlinear_desc){
      .m = m, .n = n, .n_pad = np, .codebook = cb, .codes = L->codes, .codes2 = L->codes2,
      .resid_scale = 0, .SU = L->SU, .SV = L->SV, .Wscale = qlayer_nonzero_uniform(g, 0.01f, 0.1f),
      .n_pieces = pieces, .piece_rows = pieces == 3 ? L->piece_rows : NULL, .fuse_scales = L->fs,
      .K_in = K_in, .R_in = L->R_in, .K_out = K_out, .R_out = L->R_out};
}

static inline void qlayer_free(qlayer *L) {
  free(L->codes);
  free(L->codes2);
  free(L->SU);
  free(L->SV);
  free(L->R_in);
  free(L->R_out);
  free(L->fs);
}

/* ---------------------------------------------------------------- guarded outputs, inputs */
#define QLAYER_GUARD 16
#define QLAYER_GUARD_VAL (-1234.5678f)

/* buffer with QLAYER_GUARD floats of QLAYER_GUARD_VAL on each side; returns the inside */
static inline float *qlayer_guarded(size_t n) {
  float *p = malloc(sizeof(float) * (n + 2 * QLAYER_GUARD));
  for (size_t i = 0; i < n + 2 * QLAYER_GUARD; i++) p[i] = QLAYER_GUARD_VAL;
  return p + QLAYER_GUARD;
}
static inline void qlayer_guarded_check_free(float *p, size_t n, const char *what) {
  for (int i = 0; i < QLAYER_GUARD; i++) {
    if (p[-1 - i] != QLAYER_GUARD_VAL) fail_msg("%s: write before the output (guard %d)", what, i);
    if (p[n + i] != QLAYER_GUARD_VAL) fail_msg("%s: write past the output (guard %d)", what, i);
  }
  free(p - QLAYER_GUARD);
}

static inline float *qlayer_random_input(t_rng *g, size_t n) {
  float *x = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) {
    x[i] = (float)t_rng_normal(g);
    if (x[i] == 0) x[i] = 0.5f;
  }
  return x;
}

#endif
