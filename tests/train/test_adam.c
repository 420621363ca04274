/* tests/train/test_adam.c: kernels/adam.h against Adam written out by hand in double (one and
 * three steps, two tensors with their own learning rates, bias correction, weight decay), and
 * its determinism: same bits for 1 and 2 OpenMP threads, for the _ref twin, and after a
 * checkpoint of (step, m, v) is restored.
 *
 * Tolerances: the kernel updates in float, the hand version in double, so m and v agree to
 * 1e-6 relative and each parameter's change to 2e-7 absolute + 1e-5 relative (m, a difference of gradients
 * of size ~1, with 1e-6 absolute added) (the float
 * rounding of p near 1 is 6e-8; a missing bias correction changes a step-1 update by ~3x). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/adam.h"
#include "testutil.h"

static uint64_t g_seed;

/* ---------------------------------------------------------------- hand-written Adam */
typedef struct {
  double p[3], m[3], v[3];
} hand_t;

static void hand_step(hand_t *h, const double *g_in, double lr, long t, double wd) {
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  for (int i = 0; i < 3; i++) {
    double g = g_in[i] + wd * h->p[i];
    h->m[i] = b1 * h->m[i] + (1 - b1) * g;
    h->v[i] = b2 * h->v[i] + (1 - b2) * g * g;
    double mhat = h->m[i] / (1 - pow(b1, (double)t)), vhat = h->v[i] / (1 - pow(b2, (double)t));
    h->p[i] -= lr * mhat / (sqrt(vhat) + eps);
  }
}

static void expect_matches_hand(const float *p, const float *p_prev, const float *m, const float *v, const hand_t *h,
                                const double *h_prev, const char *what) {
  for (int i = 0; i < 3; i++) {
    double dp = (double)p[i] - p_prev[i], dh = h->p[i] - h_prev[i];
    if (!(fabs(dp - dh) <= 2e-7 + 1e-5 * fabs(dh)))
      fail_msg("%s: p[%d] moved by %.9g, by hand %.9g", what, i, dp, dh);
    if (!(fabs((double)p[i] - h->p[i]) <= 1e-6 * (1 + fabs(h->p[i]))))
      fail_msg("%s: p[%d] = %.9g, by hand %.9g", what, i, (double)p[i], h->p[i]);
    /* m can be a small difference of gradients of size ~1: absolute part 1e-6 */
    if (!(fabs((double)m[i] - h->m[i]) <= 1e-6 * fabs(h->m[i]) + 1e-6))
      fail_msg("%s: m[%d] = %.9g, by hand %.9g", what, i, (double)m[i], h->m[i]);
    if (!(fabs((double)v[i] - h->v[i]) <= 1e-6 * fabs(h->v[i]) + 1e-15))
      fail_msg("%s: v[%d] = %.9g, by hand %.9g", what, i, (double)v[i], h->v[i]);
  }
}

/* ---------------------------------------------------------------- tiny case by hand */
static void run_tiny(double wd) {
  /* gradients of three steps for two tensors; a zero gradient at step 1 moves nothing */
  const double gA[3][3] = {{0.5, -2.0, 0.0}, {0.25, 1.0, -3.0}, {-0.75, 0.5, 1.5}};
  const double gB[3][3] = {{1e-3, 4.0, -0.2}, {-1e-3, -4.0, 0.3}, {2e-3, 1.0, 0.0}};
  float pA[3] = {1.0f, -0.5f, 0.25f}, pB[3] = {0.3f, 2.0f, -1.5f};
  float gAf[3], gBf[3], mA[3] = {0}, vA[3] = {0}, mB[3] = {0}, vB[3] = {0};
  hand_t hA = {{1.0, -0.5, 0.25}, {0}, {0}}, hB = {{0.3, 2.0, -1.5}, {0}, {0}};
  e8q_adam a;
  e8q_adam_init(&a);
  assert_true(a.beta1 == 0.9 && a.beta2 == 0.999 && a.eps == 1e-8 && a.weight_decay == 0.0 && a.step == 0);
  a.weight_decay = wd;
  e8q_adam_param ps[2] = {{pA, gAf, mA, vA, 3, 0.1f}, {pB, gBf, mB, vB, 3, 0.01f}};
  for (int s = 0; s < 3; s++) {
    for (int i = 0; i < 3; i++) gAf[i] = (float)gA[s][i], gBf[i] = (float)gB[s][i];
    double hpA[3], hpB[3];
    float fpA[3], fpB[3];
    memcpy(hpA, hA.p, sizeof hpA), memcpy(hpB, hB.p, sizeof hpB);
    memcpy(fpA, pA, sizeof fpA), memcpy(fpB, pB, sizeof fpB);
    double gAd[3], gBd[3];
    for (int i = 0; i < 3; i++) gAd[i] = gAf[i], gBd[i] = gBf[i];
    hand_step(&hA, gAd, 0.1, s + 1, wd);
    hand_step(&hB, gBd, 0.01, s + 1, wd);
    e8q_adam_step(&a, 2, ps);
    assert_int_equal(a.step, s + 1);
    expect_matches_hand(pA, fpA, mA, vA, &hA, hpA, s == 0 ? "tensor A, step 1" : "tensor A, steps 2-3");
    expect_matches_hand(pB, fpB, mB, vB, &hB, hpB, s == 0 ? "tensor B, step 1" : "tensor B, steps 2-3");
    for (int i = 0; i < 3; i++) /* the gradient is read, never cleared */
      assert_true(gAf[i] == (float)gA[s][i] && gBf[i] == (float)gB[s][i]);
    if (s == 0 && wd == 0.0) {
      /* step 1 with bias correction: p moves by -lr * g / (|g| + eps) = -lr sign(g) */
      const float want_a[3] = {1.0f - 0.1f, -0.5f + 0.1f, 0.25f}, want_b[3] = {0.3f - 0.01f, 2.0f - 0.01f, -1.5f + 0.01f};
      for (int i = 0; i < 3; i++) {
        T_NEAR(pA[i], want_a[i], 1e-6, "tensor A after step 1: -lr sign(g)");
        T_NEAR(pB[i], want_b[i], 1e-5, "tensor B after step 1: -lr sign(g)"); /* g 1e-3: eps shows at 1e-5 */
      }
    }
  }
}

static void test_adam_by_hand(void **state) {
  (void)state;
  run_tiny(0.0);
}

static void test_adam_weight_decay(void **state) {
  (void)state;
  run_tiny(0.1);
}

/* ---------------------------------------------------------------- determinism */
static void test_adam_deterministic(void **state) {
  (void)state;
  t_rng r = {g_seed};
  enum { NP = 3 };
  size_t n[NP] = {100003, 17, 65536};
  float lr[NP] = {5e-4f, 5e-5f, 1e-3f};
  float *p0[NP], *g[3][NP];
  for (int k = 0; k < NP; k++) {
    p0[k] = malloc(sizeof(float) * n[k]);
    for (size_t i = 0; i < n[k]; i++) p0[k][i] = (float)t_rng_normal(&r);
    for (int s = 0; s < 3; s++) {
      g[s][k] = malloc(sizeof(float) * n[k]);
      for (size_t i = 0; i < n[k]; i++) g[s][k][i] = (float)(t_rng_normal(&r) * (k + 1) * 0.1);
    }
  }
  /* runs: 1 thread, 2 threads, _ref, and 2 threads resumed from a checkpoint after step 2 */
  float *P[4][NP], *M[4][NP], *Vv[4][NP];
  int saved = omp_get_max_threads();
  for (int run = 0; run < 4; run++) {
    for (int k = 0; k < NP; k++) {
      P[run][k] = malloc(sizeof(float) * n[k]);
      memcpy(P[run][k], p0[k], sizeof(float) * n[k]);
      M[run][k] = calloc(n[k], sizeof(float));
      Vv[run][k] = calloc(n[k], sizeof(float));
    }
    omp_set_num_threads(run == 0 ? 1 : 2);
    e8q_adam a;
    e8q_adam_init(&a);
    for (int s = 0; s < 3; s++) {
      e8q_adam_param ps[NP];
      for (int k = 0; k < NP; k++) ps[k] = (e8q_adam_param){P[run][k], g[s][k], M[run][k], Vv[run][k], n[k], lr[k]};
      if (run == 3 && s == 2) {
        /* checkpoint: copy out (step, p, m, v), restore into fresh buffers and a fresh optimizer */
        e8q_adam b;
        e8q_adam_init(&b);
        b.step = a.step;
        for (int k = 0; k < NP; k++) {
          float *cp = malloc(sizeof(float) * n[k]), *cm = malloc(sizeof(float) * n[k]), *cv = malloc(sizeof(float) * n[k]);
          memcpy(cp, P[run][k], sizeof(float) * n[k]), memcpy(cm, M[run][k], sizeof(float) * n[k]);
          memcpy(cv, Vv[run][k], sizeof(float) * n[k]);
          free(P[run][k]), free(M[run][k]), free(Vv[run][k]);
          P[run][k] = cp, M[run][k] = cm, Vv[run][k] = cv;
          ps[k] = (e8q_adam_param){cp, g[s][k], cm, cv, n[k], lr[k]};
        }
        a = b;
      }
      if (run == 2)
        e8q_adam_step_ref(&a, NP, ps);
      else
        e8q_adam_step(&a, NP, ps);
    }
    assert_int_equal(a.step, 3);
  }
  omp_set_num_threads(saved);
  for (int run = 1; run < 4; run++)
    for (int k = 0; k < NP; k++) {
      const char *what[] = {"", "2 threads vs 1", "_ref vs 1 thread", "resumed from a checkpoint vs 1 thread"};
      if (memcmp(P[run][k], P[0][k], sizeof(float) * n[k]) || memcmp(M[run][k], M[0][k], sizeof(float) * n[k]) ||
          memcmp(Vv[run][k], Vv[0][k], sizeof(float) * n[k]))
        fail_msg("adam, tensor %d: %s differ in bits (seed %llu)", k, what[run], (unsigned long long)g_seed);
    }
  /* and it did move the parameters (three steps of size ~lr with gradients of random signs can
   * cancel for a few elements, not for most) */
  for (int k = 0; k < NP; k++) {
    size_t moved = 0;
    for (size_t i = 0; i < n[k]; i++) moved += P[0][k][i] != p0[k][i];
    if (!(moved >= n[k] * 9 / 10)) fail_msg("adam: only %zu of %zu elements of tensor %d moved", moved, n[k], k);
  }
  for (int k = 0; k < NP; k++) {
    free(p0[k]);
    for (int s = 0; s < 3; s++) free(g[s][k]);
    for (int run = 0; run < 4; run++) free(P[run][k]), free(M[run][k]), free(Vv[run][k]);
  }
}

static void test_adam_errors(void **state) {
  (void)state;
  e8q_adam a;
  e8q_adam_init(&a);
  float p[2] = {0};
  e8q_adam_param ps[1] = {{p, NULL, p, p, 2, 1e-3f}};
  E8Q_EXPECT_FATAL(e8q_adam_step(&a, 1, ps), "parameter tensor 0", "lacks");
  a.beta2 = 1.0;
  E8Q_EXPECT_FATAL(e8q_adam_step(&a, 0, NULL), "betas");
}

int main(void) {
  g_seed = t_fresh_seed("test_adam");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_adam_by_hand),
      cmocka_unit_test(test_adam_weight_decay),
      cmocka_unit_test(test_adam_deterministic),
      cmocka_unit_test(test_adam_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
