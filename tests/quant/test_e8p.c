/* tests/quant/test_e8p.c: E8P12 and RVQ codebooks against the reference's golden values,
 * the fast encoder against brute force, and Gaussian MSE at the reference scales. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "golden.h"
#include "kernels/e8p.h"
#include "testutil.h"

static char *G;
static int setup(void **state) {
  (void)state;
  return 0;
}
static int teardown(void **state) {
  (void)state;
  free(G);
  G = NULL;
  return 0;
}
static const char *golden(const char *sec) {
  if (!G) G = g_constants();
  return g_section(G, sec);
}

/* ---------------------------------------------------------------- tables */
static void test_e8p_abs_table(void **state) {
  (void)state;
  double rows[256][8];
  uint32_t packed[256];
  e8q_e8p_build_abs_rows(rows);
  e8q_e8p_build_packed_abs(packed);
  const char *p = golden("e8p_abs_grid");
  char line[512];
  int n = 0;
  while ((p = g_line(p, line, sizeof line))) {
    if (!*line) continue;
    int idx;
    double v[8];
    unsigned w;
    if (sscanf(line, "%d %lf %lf %lf %lf %lf %lf %lf %lf %x", &idx, v, v + 1, v + 2, v + 3, v + 4, v + 5, v + 6, v + 7, &w) != 10)
      continue;
    assert_int_equal(idx, n);
    for (int i = 0; i < 8; i++)
      if (rows[idx][i] != v[i]) fail_msg("abs row %d element %d: %g, golden %g", idx, i, rows[idx][i], v[i]);
    if (packed[idx] != w) fail_msg("packed word %d: built 0x%08x, golden 0x%08x", idx, packed[idx], w);
    if (e8q_e8p_packed_abs_host[idx] != w) fail_msg("codebook.h literal word %d: 0x%08x, golden 0x%08x", idx, e8q_e8p_packed_abs_host[idx], w);
    n++;
  }
  assert_int_equal(n, 256);
}

/* a golden row: key (scanned with key_fmt into *key, an int or unsigned) then 8 numbers; 1 when whole */
static int read_row(const char *line, const char *key_fmt, void *key, double v[8]) {
  char fmt[64];
  snprintf(fmt, sizeof fmt, "%s %%lf %%lf %%lf %%lf %%lf %%lf %%lf %%lf", key_fmt);
  return sscanf(line, fmt, key, v, v + 1, v + 2, v + 3, v + 4, v + 5, v + 6, v + 7) == 9;
}
/* past the next such row after p (the lines that are not one skipped); NULL at the section's end */
static const char *next_row(const char *p, const char *key_fmt, void *key, double v[8]) {
  char line[512];
  while ((p = g_line(p, line, sizeof line)))
    if (read_row(line, key_fmt, key, v)) return p;
  return NULL;
}

static void test_e81b_grid(void **state) {
  (void)state;
  int8_t g2[256][8];
  e8q_e81b_build_grid2(g2);
  assert_memory_equal(g2, e8q_e81b_grid2_host, sizeof g2);
  const char *p = golden("e81b_grid");
  int n = 0, idx;
  double v[8];
  while ((p = next_row(p, "%d", &idx, v))) {
    assert_int_equal(idx, n);
    double d[8];
    float f[8];
    e8q_e81b_decode_f64((uint32_t)idx, d);
    e8q_e81b_decode((uint32_t)idx, f);
    for (int i = 0; i < 8; i++) {
      if (d[i] != v[i] || f[i] != (float)v[i]) fail_msg("1-bit grid %d element %d: %g, golden %g", idx, i, d[i], v[i]);
      if (0.5 * g2[idx][i] != v[i]) fail_msg("built 1-bit grid %d element %d differs", idx, i);
    }
    n++;
  }
  assert_int_equal(n, 256);
}

/* ---------------------------------------------------------------- golden examples */
static void test_e8p_decode_examples(void **state) {
  (void)state;
  const char *p = golden("e8p_decode_examples");
  int n = 0;
  unsigned c;
  double v[8];
  while ((p = next_row(p, "%x", &c, v))) {
    float f[8];
    double d[8];
    e8q_e8p_decode((uint16_t)c, f);
    e8q_e8p_decode_f64((uint16_t)c, d);
    for (int i = 0; i < 8; i++)
      if (f[i] != (float)v[i] || d[i] != v[i]) fail_msg("code 0x%04x element %d: %g, golden %g", c, i, d[i], v[i]);
    n++;
  }
  assert_int_equal(n, 14);
}

static int read_in(const char *line, double x[8]) {
  return sscanf(line, "in %lf %lf %lf %lf %lf %lf %lf %lf", x, x + 1, x + 2, x + 3, x + 4, x + 5, x + 6, x + 7) == 8;
}

static void test_e8p_quantize_examples(void **state) {
  (void)state;
  const char *p = golden("e8p_quantize_examples");
  char line[1024];
  double x[8];
  int have = 0, n = 0;
  while ((p = g_line(p, line, sizeof line))) {
    if (read_in(line, x)) {
      have = 1;
      continue;
    }
    unsigned c;
    double v[8];
    if (!have || !read_row(line, "out %x", &c, v)) continue;
    double q[8], qr[8];
    uint16_t got = e8q_e8p_encode(x, q), ref = e8q_e8p_encode_ref(x, qr);
    if (got != c || ref != c) fail_msg("example %d: fast 0x%04x, brute force 0x%04x, golden 0x%04x", n, got, ref, c);
    for (int i = 0; i < 8; i++) assert_true(q[i] == v[i] && qr[i] == v[i]);
    have = 0;
    n++;
  }
  assert_int_equal(n, 24);
}

/* every example of golden section `section` for RVQ at `bits` (4: E8P + E8P residual, 3: E8P +
 * 1-bit E8 residual): encoder codes and values, and both decoders, exactly; returns the count */
static int check_rvq_section(const char *section, int bits) {
  char line[1024];
  double x[8];
  int n = 0, have = 0;
  const char *p = golden(section);
  while ((p = g_line(p, line, sizeof line))) {
    if (read_in(line, x)) {
      have = 1;
      continue;
    }
    unsigned c1, c2;
    double v[8];
    const char *fmt = bits == 4 ? "out %x %x %lf %lf %lf %lf %lf %lf %lf %lf" : "out %x %u %lf %lf %lf %lf %lf %lf %lf %lf";
    if (!have || sscanf(line, fmt, &c1, &c2, v, v + 1, v + 2, v + 3, v + 4, v + 5, v + 6, v + 7) != 10) continue;
    double q[8], d[8];
    float f[8];
    uint16_t g1, g2;
    if (bits == 4) {
      g1 = e8q_rvq4_encode(x, &g2, q);
      e8q_rvq4_decode(g1, g2, f);
    } else {
      uint8_t g2b;
      g1 = e8q_rvq3_encode(x, &g2b, q);
      g2 = g2b;
      e8q_rvq3_decode(g1, g2b, f);
    }
    if (g1 != c1 || g2 != c2) fail_msg("rvq%d example %d: 0x%04x %u, golden 0x%04x %u", bits, n, g1, g2, c1, c2);
    e8q_cb_decode_f64(bits == 4 ? E8Q_CB_E8P12RVQ4B : E8Q_CB_E8P12RVQ3B, g1, g2, d);
    for (int i = 0; i < 8; i++) {
      T_NEAR(q[i], v[i], 0, "rvq encoder value");
      T_NEAR(d[i], v[i], 0, "rvq decoded value");
      T_NEAR(f[i], v[i], 1e-6, "rvq float decoded value");
    }
    have = 0;
    n++;
  }
  return n;
}

static void test_rvq_examples(void **state) {
  (void)state;
  assert_int_equal(check_rvq_section("rvq4b_examples", 4), 8);
  assert_int_equal(check_rvq_section("rvq3b_examples", 3), 8);
}

static void test_e8p_pack_example(void **state) {
  (void)state;
  enum { M = 16, NC = 8 };
  uint16_t codes[M * NC], back[M * NC];
  for (int r = 0; r < M; r++)
    for (int b = 0; b < NC; b++) codes[r * NC + b] = (uint16_t)(((r * 8 + b) * 40503 + 12345) & 0xffff);
  uint64_t words[M * NC / 4];
  e8q_e8p_pack_ref(codes, M, NC, words);
  const char *p = golden("e8p_pack_example");
  char line[512];
  int n = 0;
  while ((p = g_line(p, line, sizeof line))) {
    int k;
    unsigned long long w;
    unsigned c[8];
    if (sscanf(line, "codes[%d] = %x %x %x %x %x %x %x %x", &k, c, c + 1, c + 2, c + 3, c + 4, c + 5, c + 6, c + 7) == 9) {
      for (int b = 0; b < 8; b++) assert_int_equal(codes[k * NC + b], c[b]);
      continue;
    }
    if (sscanf(line, "word[%d] = %llx", &k, &w) != 2) continue;
    if (words[k] != w) fail_msg("word %d: 0x%016llx, golden 0x%016llx", k, (unsigned long long)words[k], w);
    n++;
  }
  assert_int_equal(n, 32);
  e8q_e8p_unpack_ref(words, M, NC, back);
  assert_memory_equal(codes, back, sizeof codes);
  /* a larger shape round-trips too (several 16x8 tiles) */
  enum { M2 = 48, NC2 = 24 };
  uint16_t *c2 = malloc(M2 * NC2 * 2), *b2 = malloc(M2 * NC2 * 2);
  uint64_t *w2 = malloc(M2 * NC2 / 4 * 8);
  for (int i = 0; i < M2 * NC2; i++) c2[i] = (uint16_t)(e8q_rng_at(1, 2, (uint64_t)i) >> 48);
  e8q_e8p_pack_ref(c2, M2, NC2, w2);
  e8q_e8p_unpack_ref(w2, M2, NC2, b2);
  assert_memory_equal(c2, b2, M2 * NC2 * 2);
  E8Q_EXPECT_FATAL(e8q_e8p_pack_ref(c2, 8, 8, w2), "rows % 16");
  free(c2);
  free(b2);
  free(w2);
}

/* ---------------------------------------------------------------- encoder vs brute force */
static void test_e8p_encode_equals_bruteforce(void **state) {
  (void)state;
  enum { N = 10240 };
  uint64_t seed = t_fresh_seed("test_e8p_encode_equals_bruteforce");
  int bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(dynamic, 64)
  for (int k = 0; k < N; k++) {
    double x[8];
    /* scales from well inside to far outside the codebook's ball */
    double s = (k % 4 == 0) ? 0.3 : (k % 4 == 1) ? 1.0 : (k % 4 == 2) ? 2.0 : 5.0;
    for (int i = 0; i < 8; i++) x[i] = s * e8q_rng_normal_at(seed, E8Q_RNG_STREAM_TEST, (uint64_t)(8 * k + i));
    uint16_t a = e8q_e8p_encode(x, NULL), b = e8q_e8p_encode_ref(x, NULL);
    if (a != b) {
      double qa[8], qb[8], da = 0, db = 0;
      e8q_e8p_decode_f64(a, qa);
      e8q_e8p_decode_f64(b, qb);
      for (int i = 0; i < 8; i++) {
        da += (x[i] - qa[i]) * (x[i] - qa[i]);
        db += (x[i] - qb[i]) * (x[i] - qb[i]);
      }
      if (fabs(da - db) > 1e-12) bad++; /* an exact tie is not a failure */
    }
  }
  assert_int_equal(bad, 0);
  /* codebook points themselves (and points nudged off them) encode to themselves */
  for (uint32_t c = 0; c < 65536; c += 97) {
    double x[8];
    e8q_e8p_decode_f64((uint16_t)c, x);
    for (int i = 0; i < 8; i++) x[i] += 0.01 * e8q_rng_normal_at(3, 4, 8 * c + (uint64_t)i);
    assert_int_equal(e8q_e8p_encode(x, NULL), c);
  }
}

/* ---------------------------------------------------------------- Gaussian MSE */
static double gaussian_mse(e8q_codebook_id cb, double rho, long nvec, uint64_t seed) {
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (long k = 0; k < nvec; k++) {
    double z[8], x[8], q[8];
    uint16_t c1, c2;
    for (int i = 0; i < 8; i++) {
      z[i] = e8q_rng_normal_at(seed, (uint64_t)cb, (uint64_t)(8 * k + i));
      x[i] = rho * z[i];
    }
    e8q_cb_encode(cb, x, &c1, &c2, q);
    double e = 0;
    for (int i = 0; i < 8; i++) e += (q[i] / rho - z[i]) * (q[i] / rho - z[i]);
    total += e;
  }
  return total / (8.0 * (double)nvec);
}

static void test_gaussian_mse(void **state) {
  (void)state;
  const long N = 1L << 20;
  double e8p = gaussian_mse(E8Q_CB_E8P12, 1.03, N, 11);
  double rvq4 = gaussian_mse(E8Q_CB_E8P12RVQ4B, 1.03, N, 12);
  double rvq3 = gaussian_mse(E8Q_CB_E8P12RVQ3B, 0.98, N, 13);
  print_message("Gaussian MSE per dim over %ld vectors: E8P %.5f  RVQ4 %.6f  RVQ3 %.5f\n", N, e8p, rvq4, rvq3);
  T_NEAR(e8p, 0.0912, 0.0005, "E8P MSE at rho 1.03");
  T_NEAR(rvq4, 0.00958, 0.0002, "RVQ4 MSE at rho 1.03, resid 3.45");
  T_NEAR(rvq3, 0.0295, 0.0005, "RVQ3 MSE at rho 0.98, resid 2.04");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_e8p_abs_table),
      cmocka_unit_test(test_e81b_grid),
      cmocka_unit_test(test_e8p_decode_examples),
      cmocka_unit_test(test_e8p_quantize_examples),
      cmocka_unit_test(test_rvq_examples),
      cmocka_unit_test(test_e8p_pack_example),
      cmocka_unit_test(test_e8p_encode_equals_bruteforce),
      cmocka_unit_test(test_gaussian_mse),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
