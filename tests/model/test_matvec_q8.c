/* tests/model/test_matvec_q8.c: the 8-bit head (kernels/matvec_q8.h, --head q8). The rounding
 * bound of every weight, the product against its `_ref` and against the definition in double,
 * refusals that name the matrix, and a model's one-token head against its batched head on the
 * same rounded weights; and the bfloat16 head read in place (an artifact of a bf16 source) against
 * the batched head on its float32 copy. Registered three times: the dispatched path, E8Q_NO_AVX512 (AVX2) and
 * E8Q_NO_AVX2 (scalar). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/f16.h"
#include "kernels/matvec_q8.h"
#include "shard/model.h"
#include "testutil.h"
#include "worker/forward.h"

static uint64_t g_seed;

/* weights of a N(0,1) kind with outliers (x100) and, in row 0, an all-zero block */
static float *weights(t_rng *r, int m, int n) {
  float *W = malloc(sizeof(float) * (size_t)m * n);
  for (size_t i = 0; i < (size_t)m * n; i++) {
    W[i] = (float)t_rng_normal(r);
    if (t_rng_uniform(r) < 0.01) W[i] *= 100.0f;
  }
  if (n >= 64)
    for (int j = 32; j < 64; j++) W[j] = 0;
  return W;
}

static const int shapes[][2] = {{1, 32}, {37, 96}, {300, 576}, {5, 1024}, {513, 64}};

/* ---------------------------------------------------------------- rounding */
static void test_q8_rounding(void **state) {
  (void)state;
  t_rng r = {g_seed};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int m = shapes[s][0], n = shapes[s][1], nb = n / E8Q_Q8_BLOCK;
    float *W = weights(&r, m, n), *row = malloc(sizeof(float) * n);
    e8q_q8_matrix M;
    e8q_q8_quantize(&M, m, n, W, "test matrix");
    assert_int_equal(M.m, m);
    assert_int_equal(M.n, n);
    for (int i = 0; i < m; i++) {
      e8q_q8_dequant_row(&M, i, row);
      for (int b = 0; b < nb; b++) {
        double amax = 0;
        for (int j = b * E8Q_Q8_BLOCK; j < (b + 1) * E8Q_Q8_BLOCK; j++) amax = fmax(amax, fabs(W[(size_t)i * n + j]));
        const double sc = M.scale[(size_t)i * nb + b];
        T_NEAR(sc, amax / 127.0, 1e-6 * amax, "block scale = max|w| / 127");
        for (int j = b * E8Q_Q8_BLOCK; j < (b + 1) * E8Q_Q8_BLOCK; j++) {
          const int q = M.q[(size_t)i * n + j];
          if (q < -127 || q > 127) fail_msg("[%d x %d] (%d, %d): q = %d outside [-127, 127]", m, n, i, j, q);
          /* half a step, plus the float rounding of w / scale and of scale * q */
          if (!(fabs(row[j] - W[(size_t)i * n + j]) <= 0.5 * sc + 4e-7 * amax))
            fail_msg("[%d x %d] (%d, %d): w %.9g dequantized %.9g, more than half a step %.9g apart (seed %llu)", m, n, i,
                     j, (double)W[(size_t)i * n + j], (double)row[j], 0.5 * sc, (unsigned long long)g_seed);
        }
        if (amax == 0) assert_true(sc == 0);
      }
    }
    if (n >= 64) { /* the all-zero block of row 0 stays exactly zero */
      e8q_q8_dequant_row(&M, 0, row);
      for (int j = 32; j < 64; j++) assert_true(row[j] == 0.0f);
    }
    e8q_q8_free(&M);
    assert_null(M.q);
    free(W), free(row);
  }
}

/* ---------------------------------------------------------------- product */
static void test_q8_matvec(void **state) {
  (void)state;
  t_rng r = {g_seed + 1};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int m = shapes[s][0], n = shapes[s][1];
    float *W = weights(&r, m, n), *x = malloc(sizeof(float) * n), *row = malloc(sizeof(float) * n);
    for (int j = 0; j < n; j++) x[j] = (float)(3.0 * t_rng_normal(&r));
    float *y = malloc(sizeof(float) * m), *yr = malloc(sizeof(float) * m);
    e8q_q8_matrix M;
    e8q_q8_quantize(&M, m, n, W, "test matrix");
    e8q_matvec_q8(&M, x, y);
    e8q_matvec_q8_ref(&M, x, yr);
    for (int i = 0; i < m; i++) {
      e8q_q8_dequant_row(&M, i, row);
      double def = 0, mag = 0; /* the definition: the dequantized row times x, in double */
      for (int j = 0; j < n; j++) def += (double)row[j] * x[j], mag += fabs((double)row[j] * x[j]);
      if (!(fabs(y[i] - def) <= 1e-5 * mag + 1e-30) || !(fabs(yr[i] - def) <= 1e-6 * mag + 1e-30))
        fail_msg("matvec_q8 [%d x %d] row %d: %.9g, _ref %.9g, definition %.9g (seed %llu)", m, n, i, (double)y[i],
                 (double)yr[i], def, (unsigned long long)g_seed);
    }
    e8q_q8_free(&M);
    free(W), free(x), free(row), free(y), free(yr);
  }
}

/* ---------------------------------------------------------------- refusals */
static void test_q8_refusals(void **state) {
  (void)state;
  float W[2 * 33] = {0};
  e8q_q8_matrix M;
  E8Q_EXPECT_FATAL(e8q_q8_quantize(&M, 2, 33, W, "head of test"), "head of test: an 8-bit matrix needs rows of a multiple of 32");
  float V[64] = {0};
  V[40] = NAN;
  E8Q_EXPECT_FATAL(e8q_q8_quantize(&M, 2, 32, V, "head of test"), "head of test: row 1 holds a NaN or Inf");
}

/* ---------------------------------------------------------------- a model's head */
static void test_model_head_q8(void **state) {
  (void)state;
  char *path = t_shared_path("models/stories260K/stories260K.bin");
  e8q_model *m = e8q_model_load(path), *src = e8q_model_load(path);
  e8q_model_head_to_q8(m);
  e8q_model_head_to_q8(m); /* idempotent */
  assert_non_null(m->lm_head_q8);
  assert_null(m->lm_head_f16);
  const int D = m->cfg.dim, V = m->cfg.vocab_size;
  t_rng r = {g_seed + 2};
  float *x = malloc(sizeof(float) * 2 * D), *x1 = malloc(sizeof(float) * D), *xs = malloc(sizeof(float) * D);
  for (int j = 0; j < D; j++) x[j] = x[D + j] = x1[j] = xs[j] = (float)t_rng_normal(&r);
  float *batch = malloc(sizeof(float) * 2 * V), *one = malloc(sizeof(float) * V), *ls = malloc(sizeof(float) * V);
  e8q_model_head(m, 2, x, batch); /* BLAS on the dequantized f32 head */
  e8q_model_head(m, 1, x1, one);  /* the 8-bit kernel */
  e8q_model_head(src, 1, xs, ls); /* the source head */
  double max_src = 0, max_mag = 0;
  for (int v = 0; v < V; v++) {
    double mag = 0;
    for (int j = 0; j < D; j++) mag += fabs((double)m->lm_head[(size_t)v * D + j] * x1[j]);
    T_NEAR(one[v], batch[v], 1e-5 * mag + 1e-30, "one-token 8-bit head vs batched head on the same weights");
    assert_true(batch[v] == batch[V + v]);
    max_src = fmax(max_src, fabs(one[v] - ls[v]));
    max_mag = fmax(max_mag, mag);
  }
  /* the rounding moves logits, within half a step per weight: far below their magnitude */
  assert_true(max_src > 0);
  assert_true(max_src < 0.02 * max_mag);
  /* a tied embedding is the same tensor: rounded with the head */
  if (m->cfg.tied) assert_true(m->embed == m->lm_head);
  e8q_model_free(m), e8q_model_free(src);
  free(path), free(x), free(x1), free(xs), free(batch), free(one), free(ls);
}

/* ---------------------------------------------------------------- a bfloat16 head in place */
static void test_model_head_bf16(void **state) {
  (void)state;
  char *path = t_shared_path("models/stories260K-hf-bf16");
  e8q_model *m = e8q_model_load(path);
  const int D = m->cfg.dim, V = m->cfg.vocab_size;
  /* the f32 copy holds bfloat16 values exactly, so its bits are the stored tensor's */
  uint16_t *bits = malloc(sizeof(uint16_t) * (size_t)V * D);
  for (size_t i = 0; i < (size_t)V * D; i++) {
    bits[i] = e8q_f32_to_bf16(m->lm_head[i]);
    assert_true(e8q_bf16_to_f32(bits[i]) == m->lm_head[i]);
  }
  m->lm_head_bf16 = bits;
  t_rng r = {g_seed + 3};
  float *x = malloc(sizeof(float) * 2 * D), *x1 = malloc(sizeof(float) * D), *x0 = malloc(sizeof(float) * D);
  for (int j = 0; j < D; j++) x[j] = x[D + j] = x1[j] = x0[j] = (float)t_rng_normal(&r);
  float *batch = malloc(sizeof(float) * 2 * V), *one = malloc(sizeof(float) * V);
  e8q_model_head(m, 2, x, batch); /* BLAS on the f32 copy */
  e8q_model_head(m, 1, x1, one);  /* e8q_matvec_bf16 on the bits */
  for (int v = 0; v < V; v++) {
    double mag = 0;
    for (int j = 0; j < D; j++) mag += fabs((double)m->lm_head[(size_t)v * D + j] * x1[j]);
    T_NEAR(one[v], batch[v], 1e-5 * mag + 1e-30, "one-token bfloat16 head vs batched head on its f32 copy");
  }
  /* the step really reads the bits: a changed weight of row 0 moves logit 0 by its product */
  const float before = one[0], w_old = e8q_bf16_to_f32(bits[0]);
  bits[0] = e8q_f32_to_bf16(w_old + 8.0f);
  memcpy(x1, x0, sizeof(float) * D); /* the head norms its input in place: the raw input again */
  e8q_model_head(m, 1, x1, one);
  const double moved = ((double)e8q_bf16_to_f32(bits[0]) - w_old) * x1[0];
  T_NEAR(one[0] - before, moved, 1e-4 * fabs(moved) + 1e-5, "logit 0 after changing one bfloat16 weight");
  assert_true(fabs(moved) > 1e-3);
  m->lm_head_bf16 = NULL; /* not owned */
  e8q_model_free(m);
  free(path), free(bits), free(x), free(x1), free(x0), free(batch), free(one);
}

int main(void) {
  g_seed = t_fresh_seed("test_matvec_q8");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_q8_rounding),
      cmocka_unit_test(test_q8_matvec),
      cmocka_unit_test(test_q8_refusals),
      cmocka_unit_test(test_model_head_q8),
      cmocka_unit_test(test_model_head_bf16),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
