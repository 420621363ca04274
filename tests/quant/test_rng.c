/* tests/quant/test_rng.c: the counter-based generator: random access equals the cursor,
 * streams are independent, known answers pin the bits across platforms, and the
 * distributions have the right moments. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "testutil.h"

/* Known answers: computed once with this implementation; any platform or compiler that
 * gives different bits breaks the promise that the same seed gives the same model. */
static void test_rng_known_answers(void **state) {
  (void)state;
  uint64_t got[4] = {e8q_rng_at(0, 0, 0), e8q_rng_at(0, 0, 1), e8q_rng_at(42, 7, 1000000),
                     e8q_rng_at(UINT64_MAX, E8Q_RNG_STREAM_SU, 3)};
  const uint64_t want[4] = {0xe29a92d1eeb44471ull, 0x3f3b60512955a8c2ull, 0x92ac813c5f85c50dull,
                             0x48dd2387ab8418d5ull};
  for (int i = 0; i < 4; i++)
    if (got[i] != want[i]) fail_msg("output %d: 0x%016llx, want 0x%016llx", i, (unsigned long long)got[i], (unsigned long long)want[i]);
}

static void test_rng_cursor_equals_random_access(void **state) {
  (void)state;
  e8q_rng r;
  e8q_rng_init(&r, 123, 9);
  for (uint64_t i = 0; i < 100; i++) assert_true(e8q_rng_u64(&r) == e8q_rng_at(123, 9, i));
  e8q_rng_init(&r, 123, 9);
  e8q_rng_u64(&r); /* odd counter: the normal starts at the next even output */
  double v = e8q_rng_normal(&r);
  assert_true(v == e8q_rng_normal_at(123, 9, 1));
  assert_int_equal(r.counter, 4);
  float s[64];
  e8q_rng_fill_signs(5, 6, 10, 64, s);
  e8q_rng_init(&r, 5, 6);
  r.counter = 10;
  for (int i = 0; i < 64; i++) assert_true(s[i] == e8q_rng_sign(&r));
}

static void test_rng_streams_and_seeds_differ(void **state) {
  (void)state;
  int same_stream = 0, same_seed = 0;
  for (uint64_t i = 0; i < 1000; i++) {
    same_stream += e8q_rng_at(1, 1, i) == e8q_rng_at(1, 2, i);
    same_seed += e8q_rng_at(1, 1, i) == e8q_rng_at(2, 1, i);
  }
  assert_int_equal(same_stream, 0);
  assert_int_equal(same_seed, 0);
  /* stream s index i+1 must not equal stream s+1 index i (no diagonal aliasing) */
  for (uint64_t i = 0; i < 1000; i++) assert_true(e8q_rng_at(1, 2, i + 1) != e8q_rng_at(1, 3, i));
}

static void test_rng_thread_count_independent(void **state) {
  (void)state;
  enum { N = 100000 };
  double *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
  e8q_rng_fill_normal(77, 3, 0, N, a);
#pragma omp parallel for schedule(dynamic, 1000)
  for (int i = 0; i < N; i++) e8q_rng_fill_normal(77, 3, (uint64_t)i, 1, b + i);
  assert_memory_equal(a, b, N * sizeof *a);
  free(a);
  free(b);
}

static void test_rng_moments(void **state) {
  (void)state;
  enum { N = 1000000 };
  double su = 0, su2 = 0, sn = 0, sn2 = 0, sn4 = 0, ss = 0;
  e8q_rng r;
  e8q_rng_init(&r, 2024, E8Q_RNG_STREAM_TEST);
  for (int i = 0; i < N; i++) {
    double u = e8q_rng_uniform(&r);
    assert_true(u >= 0 && u < 1);
    su += u;
    su2 += u * u;
    double z = e8q_rng_normal_at(2024, 1, (uint64_t)i);
    sn += z;
    sn2 += z * z;
    sn4 += z * z * z * z;
    ss += e8q_rng_sign_at(2024, 2, (uint64_t)i);
  }
  /* tolerances ~ 5 standard errors */
  T_NEAR(su / N, 0.5, 5 * sqrt(1.0 / 12 / N), "uniform mean");
  T_NEAR(su2 / N, 1.0 / 3, 5 * sqrt(4.0 / 45 / N), "uniform second moment");
  T_NEAR(sn / N, 0.0, 5 / sqrt((double)N), "normal mean");
  T_NEAR(sn2 / N, 1.0, 5 * sqrt(2.0 / N), "normal variance");
  T_NEAR(sn4 / N, 3.0, 5 * sqrt(96.0 / N), "normal fourth moment");
  T_NEAR(ss / N, 0.0, 5 / sqrt((double)N), "sign balance");
  uint64_t hist[10] = {0};
  for (int i = 0; i < 100000; i++) hist[e8q_rng_below(&r, 10)]++;
  for (int k = 0; k < 10; k++) T_NEAR((double)hist[k], 10000.0, 500.0, "e8q_rng_below histogram");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rng_known_answers),
      cmocka_unit_test(test_rng_cursor_equals_random_access),
      cmocka_unit_test(test_rng_streams_and_seeds_differ),
      cmocka_unit_test(test_rng_thread_count_independent),
      cmocka_unit_test(test_rng_moments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
