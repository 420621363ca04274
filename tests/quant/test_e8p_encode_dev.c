/* tests/quant/test_e8p_encode_dev.c: the encoders' __host__ __device__ twins
 * (kernels/e8p_encode_dev.h, what a CUDA LDLQ runs) against kernels/e8p.c, bit for bit: c1, c2
 * and the decoded point for every codebook, on Gaussian vectors at several scales, on points of
 * the rational grids where exact ties occur (multiples of 1/4 and 1/2) and just off them, on
 * codebook points themselves and on large values (outer rows).
 * Fresh random data each run (seed printed; E8Q_TEST_SEED repeats it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/e8p.h"
#include "kernels/e8p_encode_dev.h"

#include "../check.h" /* CHECK, n_pass/n_fail, g_seed, rnd/rndf */

static double gauss(void) {
  double u = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0, v = (double)(rnd() >> 11) / 9007199254740992.0;
  return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* one vector through both, every codebook; returns the number of mismatches */
static int compare(const e8q_e8p_enc_tables *T, const double x[8], long *ties_seen) {
  static const e8q_codebook_id cbs[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ3B, E8Q_CB_E8P12RVQ4B};
  int bad = 0;
  for (int c = 0; c < 3; c++) {
    uint16_t a1, a2 = 0, b1, b2;
    double ah[8], bh[8];
    e8q_cb_encode(cbs[c], x, &a1, &a2, ah);
    e8q_edev_cb_encode(T, cbs[c], x, &b1, &b2, bh);
    if (a1 != b1 || a2 != b2 || memcmp(ah, bh, sizeof ah) != 0) {
      if (bad++ == 0)
        printf("  mismatch %s at x = [%.17g %.17g %.17g %.17g %.17g %.17g %.17g %.17g]: e8p.c %u/%u, dev %u/%u\n",
               e8q_cb_name(cbs[c]), x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], a1, a2, b1, b2);
    }
  }
  if (ties_seen) {
    int tie = 0;
    uint16_t cp, cm;
    e8q_edev_shift(T, x, 0.25, &cp, &tie);
    e8q_edev_shift(T, x, -0.25, &cm, &tie);
    *ties_seen += tie;
  }
  return bad;
}

int main(void) {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_e8p_encode_dev: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  e8q_e8p_enc_tables *T = malloc(sizeof *T);
  e8q_e8p_enc_tables_fill(T);
  CHECK(T->npart > 0 && T->npart <= E8Q_E8P_PART_MAX, "canonical half: %d points", T->npart);

  const double scales[] = {0.3, 1.0, 1.03, 2.0, 4.0};
  long ties = 0;
  int bad = 0;
  for (size_t s = 0; s < sizeof scales / sizeof scales[0]; s++)
    for (int k = 0; k < 8000; k++) {
      double x[8];
      for (int i = 0; i < 8; i++) x[i] = gauss() * scales[s];
      bad += compare(T, x, NULL);
    }
  CHECK(bad == 0, "Gaussian vectors: %d mismatches", bad);
  /* rational grids: exact ties, and points a few ulps off them */
  bad = 0;
  for (int k = 0; k < 16000; k++) {
    double x[8];
    const double step = k % 2 ? 0.25 : 0.5;
    for (int i = 0; i < 8; i++) {
      x[i] = step * (double)((int)(rnd() % 17) - 8);
      if (k % 3 == 0) x[i] = nextafter(x[i], (rnd() & 1) ? 1e9 : -1e9);
    }
    bad += compare(T, x, &ties);
  }
  CHECK(bad == 0, "grid points and their neighbours: %d mismatches", bad);
  CHECK(ties > 500, "the grid cases reached the tie fallback only %ld times", ties);
  /* the codebook's own points (distance 0) and large values */
  bad = 0;
  for (int k = 0; k < 8000; k++) {
    double x[8];
    e8q_e8p_decode_f64((uint16_t)rnd(), x);
    if (k % 2)
      for (int i = 0; i < 8; i++) x[i] *= 10;
    bad += compare(T, x, NULL);
  }
  CHECK(bad == 0, "codebook points and large values: %d mismatches", bad);
  printf("  %ld grid vectors took the tie fallback\n", ties);
  free(T);
  printf("test_e8p_encode_dev: %d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
