/* tests/common/test_common.c: error trapping, SHA-256 against FIPS 180-2 vectors, and the
 * int64 limbs that carry e8q_xsum's 128-bit values through NCCL (common/comm.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/hash.h"
#include "testutil.h"

static void raise_error(int v) { E8Q_CHECK(v == 0, "tensor %s has value %d", "x.weight", v); }

static void test_error_trap(void **state) {
  (void)state;
  E8Q_EXPECT_FATAL(raise_error(7), "x.weight", "value 7");
  assert_string_equal(e8q_error_last(), "tensor x.weight has value 7");
  raise_error(0); /* no error, trap not armed: must simply return */
}

static void test_sha256_vectors(void **state) {
  (void)state;
  uint8_t d[32];
  char hex[65];
  e8q_sha256_bytes("abc", 3, d);
  e8q_hex(d, 32, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  e8q_sha256 *h = e8q_sha256_new();
  for (size_t i = 0; i < strlen(m); i++) e8q_sha256_update(h, m + i, 1); /* streaming, byte by byte */
  e8q_sha256_finish(h, d);
  e8q_hex(d, 32, hex);
  assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* ---------------------------------------------------------------- e8q_xsum limbs (NCCL) */
#define I128_MAX ((__int128)(((unsigned __int128)1 << 127) - 1))
#define I128_MIN (-I128_MAX - 1)
#define P2(k) ((__int128)1 << (k))

/* acc [n][3] += limbs [n][3] as NCCL's int64 sum would; asserts no int64 sum wraps */
static void sim_nccl_add(int64_t *acc, const int64_t *limbs, size_t n) {
  for (size_t j = 0; j < 3 * n; j++) {
    int64_t r;
    if (__builtin_add_overflow(acc[j], limbs[j], &r)) fail_msg("int64 limb sum %zu wraps", j);
    acc[j] = r;
  }
}

/* a test value from class k, |v| <= bound (bound >= 2^44): extremes, random bits at every
 * scale, small, zero, -1, runs of ones across the limb borders 2^42 and 2^84 */
static __int128 limb_value(t_rng *g, int k, __int128 bound) {
  const unsigned __int128 bits = ((unsigned __int128)t_rng_u64(g) << 64) | t_rng_u64(g);
  const int sh = (int)(t_rng_u64(g) % 127);
  const __int128 sign = t_rng_u64(g) & 1 ? -1 : 1;
  switch (k % 10) {
    case 0: return bound;
    case 1: return -bound;
    case 2: return (__int128)(bits % (unsigned __int128)bound) * sign; /* full range */
    case 3: return (__int128)((bits >> 1) >> sh) % bound * sign;      /* any scale */
    case 4: return (__int128)(t_rng_u64(g) % 1000) * sign;            /* small */
    case 5: return 0;
    case 6: return -1;
    case 7: return (P2(42 * (1 + (int)(t_rng_u64(g) % 2))) - 1) * sign; /* 2^42-1, 2^84-1 */
    case 8: return (P2(42 * (1 + (int)(t_rng_u64(g) % 2))) + (__int128)(t_rng_u64(g) % 3) - 1) * sign;
    default: return (P2(44 + (int)(t_rng_u64(g) % 80)) - 1) * sign % bound; /* low bits all set */
  }
}

static void test_xsum_limbs_layout(void **state) {
  (void)state;
  /* the documented layout: v = l0 + l1 2^42 + l2 2^84, l0, l1 in [0, 2^42), l2 = v >> 84 */
  const struct { __int128 v; int64_t l[3]; } ex[] = {
      {0, {0, 0, 0}},
      {-1, {(INT64_C(1) << 42) - 1, (INT64_C(1) << 42) - 1, -1}},
      {P2(42), {0, 1, 0}},
      {P2(84) + 5, {5, 0, 1}},
      {-P2(84), {0, 0, -1}},
      {-P2(42) - 1, {(INT64_C(1) << 42) - 1, (INT64_C(1) << 42) - 2, -1}},
      {I128_MAX, {(INT64_C(1) << 42) - 1, (INT64_C(1) << 42) - 1, (INT64_C(1) << 43) - 1}},
      {I128_MIN, {0, 0, -(INT64_C(1) << 43)}},
  };
  for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
    int64_t l[3];
    __int128 back = 7;
    e8q_xsum_limbs(&ex[i].v, 1, l);
    for (int j = 0; j < 3; j++)
      if (l[j] != ex[i].l[j])
        fail_msg("case %zu: limb %d is %lld, expected %lld", i, j, (long long)l[j], (long long)ex[i].l[j]);
    assert_true(e8q_xsum_limbs_join(l, &back));
    assert_true(back == ex[i].v);
  }
}

/* R simulated ranks, each with N values: the limbs summed as int64 and recombined equal the
 * direct 128-bit sum, for R from 1 to 64 and values up to 2^127 / R */
static void test_xsum_limbs_sum(void **state) {
  (void)state;
  enum { N = 4000 };
  const uint64_t seed = t_fresh_seed("test_xsum_limbs_sum");
  t_rng g = {seed | 1};
  const int ranks[] = {1, 2, 3, 7, 64};
  __int128 *v = malloc(sizeof(__int128) * N), *want = malloc(sizeof(__int128) * N),
           *got = malloc(sizeof(__int128) * N);
  int64_t *limbs = malloc(sizeof(int64_t) * 3 * N), *acc = malloc(sizeof(int64_t) * 3 * N);
  for (size_t t = 0; t < sizeof ranks / sizeof ranks[0]; t++) {
    const int R = ranks[t];
    const __int128 bound = I128_MAX / R; /* R values of |v| <= bound cannot overflow */
    memset(want, 0, sizeof(__int128) * N);
    memset(acc, 0, sizeof(int64_t) * 3 * N);
    for (int r = 0; r < R; r++) {
      for (int i = 0; i < N; i++) {
        v[i] = limb_value(&g, i + r, bound); /* class varies by rank: mixed signs per index */
        want[i] += v[i];
      }
      e8q_xsum_limbs(v, N, limbs);
      sim_nccl_add(acc, limbs, N);
    }
    int bad = 0, over = 0; /* one value at a time first: a wrong split fails here, not fatally */
    for (int i = 0; i < N; i++) {
      __int128 t;
      if (!e8q_xsum_limbs_join(acc + 3 * i, &t)) over++;
      else bad += t != want[i];
    }
    if (bad || over)
      fail_msg("%d ranks: of %d recombined sums %d differ from the 128-bit sum, %d report a false overflow "
               "(seed %llu)", R, N, bad, over, (unsigned long long)seed);
    e8q_xsum_from_limbs(acc, N, got); /* the array form gives the same */
    assert_memory_equal(got, want, sizeof(__int128) * N);
  }
  free(v); free(want); free(got); free(limbs); free(acc);
}

/* the edges: the rank bound, a top limb out of range with an in-range total, and overflow */
static void test_xsum_limbs_overflow(void **state) {
  (void)state;
  int64_t acc[3] = {0, 0, 0}, l[3];
  __int128 v, tot;
  /* E8Q_XSUM_LIMB_MAX_RANKS ranks of -2^127: every int64 limb sum stays exact (-2^63 at the
   * top), and the total is reported as overflow rather than wrapped */
  assert_int_equal(E8Q_XSUM_LIMB_MAX_RANKS, 1 << 20);
  v = I128_MIN;
  e8q_xsum_limbs(&v, 1, l);
  for (int r = 0; r < E8Q_XSUM_LIMB_MAX_RANKS; r++) sim_nccl_add(acc, l, 1);
  assert_true(acc[2] == INT64_MIN);
  assert_false(e8q_xsum_limbs_join(acc, &tot));
  /* ... and the largest low limbs, 2^20 (2^42 - 1), do not wrap either */
  memset(acc, 0, sizeof acc);
  v = -1;
  e8q_xsum_limbs(&v, 1, l);
  for (int r = 0; r < E8Q_XSUM_LIMB_MAX_RANKS; r++) sim_nccl_add(acc, l, 1);
  assert_true(e8q_xsum_limbs_join(acc, &tot));
  assert_true(tot == -(__int128)E8Q_XSUM_LIMB_MAX_RANKS);
  /* pairs whose top limbs sum outside [-2^43, 2^43) while the total fits, and the reverse */
  const struct { __int128 a, b; int fits; } ex[] = {
      {I128_MIN + P2(84) - 1, -1, 1},  /* top limbs -2^43 - 1, total -2^127 + 2^84 - 2 */
      {I128_MIN, -P2(84), 0},          /* top limbs -2^43 - 1, total < -2^127 */
      {I128_MIN, -1, 0},
      {I128_MIN, 0, 1},
      {I128_MAX, 1, 0},
      {I128_MAX, 0, 1},
      {I128_MAX, -1, 1},
      {P2(126), P2(126), 0},           /* exactly 2^127 */
      {P2(126), P2(126) - 1, 1},       /* 2^127 - 1 */
      {-P2(126), -P2(126), 1},         /* exactly -2^127 */
      {-P2(126), -P2(126) - 1, 0},
      {I128_MAX, I128_MIN, 1},         /* -1 */
  };
  for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
    int64_t la[3], lb[3];
    e8q_xsum_limbs(&ex[i].a, 1, la);
    e8q_xsum_limbs(&ex[i].b, 1, lb);
    memset(acc, 0, sizeof acc);
    sim_nccl_add(acc, la, 1);
    sim_nccl_add(acc, lb, 1);
    tot = 7;
    const int fits = e8q_xsum_limbs_join(acc, &tot);
    if (fits != ex[i].fits) fail_msg("pair %zu: join says %s", i, fits ? "fits" : "overflow");
    if (fits) assert_true(tot == ex[i].a + ex[i].b);
    else assert_true(tot == 7); /* untouched */
  }
  /* the array form is fatal on overflow, naming the value */
  int64_t two[6];
  __int128 pair[2] = {I128_MAX, 3}, out[2];
  e8q_xsum_limbs(pair, 2, two);
  two[3] += two[0]; /* value 1 := 3 + I128_MAX, as a sum of limbs */
  two[4] += two[1];
  two[5] += two[2];
  E8Q_EXPECT_FATAL(e8q_xsum_from_limbs(two, 2, out), "overflow", "value 1 of 2");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_error_trap),
      cmocka_unit_test(test_sha256_vectors),
      cmocka_unit_test(test_xsum_limbs_layout),
      cmocka_unit_test(test_xsum_limbs_sum),
      cmocka_unit_test(test_xsum_limbs_overflow),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
