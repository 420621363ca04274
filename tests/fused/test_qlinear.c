/* tests/fused/test_qlinear.c: the fused quantized-linear product.
 *
 *  - AVX2 and AVX-512 cores == scalar _ref core within 1e-5 relative, every codebook, batch
 *    1..64, odd shapes (n_pad = 8k not a multiple of 64, m odd, non-power-of-two Hadamard
 *    factors, rows longer than one 32-code chunk with a ragged tail); the AVX-512 test skips
 *    with a message on CPUs without AVX-512/GFNI;
 *  - the whole forward (_ref and AVX2) == a float64 dense reference built by decoding every
 *    code and multiplying the Hadamard matrices written out from their definition, and the
 *    pipeline's fast dense decode (e8q_qlinear_dequant) == that reference within 1e-12;
 *  - guard regions before and after every output catch out-of-bounds writes;
 *  - the VNNI core (E8P, RVQ3, RVQ4) == _ref within 1e-5 and within its own error bound against
 *    float64 (only the 24-bit fixed-point copy of each input column rounds: |z - z64| <=
 *    (max|u| / 2^24) · Σ|w| per row, plus the f32 output rounding), batch 1..13 (passes of
 *    4, 2, 1 columns), rows outside its 16-row groups, codes outside its 4-code quads, columns
 *    scaled 1e-30..1e30 apart, an all-zero column (exact zeros) and a NaN input (refused,
 *    output untouched); it skips with a message on CPUs without AVX512-VNNI;
 *  - bad descriptions are fatal with a message naming the layer and field.
 * Inputs, codes and scales are fresh random values each run (t_fresh_seed); never zeros. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/qlinear.h"
#include "kernels/qlinear_amx.h"
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_vnni.h"
#include "qlayer.h"
#include "testutil.h"

static uint64_t g_seed;

/* ---------------------------------------------------------------- core: AVX2 vs _ref */
/* max |a - b| over a batch row, relative to max |b| of that row */
static double rel_err_rows(const float *a, const float *b, int batch, int m) {
  double worst = 0;
  for (int i = 0; i < batch; i++) {
    double mx = 0, d = 0;
    for (int r = 0; r < m; r++) {
      mx = fmax(mx, fabs((double)b[(size_t)i * m + r]));
      d = fmax(d, fabs((double)a[(size_t)i * m + r] - (double)b[(size_t)i * m + r]));
    }
    worst = fmax(worst, d / (mx > 0 ? mx : 1));
  }
  return worst;
}

typedef void (*core_fn)(const e8q_qlinear *, int, const float *, float *);

static void core_case_with(t_rng *g, int m, int n, int K_out, int K_in, int cbi, int batch, core_fn core,
                           const char *path) {
  qlayer L;
  qlayer_make(&L, g, m, n, K_out, K_in, QLAYER_CBS[cbi]);
  e8q_qlinear q;
  e8q_qlinear_init(&q, &L.d, "test layer");
  const int np = L.d.n_pad;
  float *u = qlayer_random_input(g, (size_t)batch * np);
  float *z_ref = qlayer_guarded((size_t)batch * m), *z_avx = qlayer_guarded((size_t)batch * m);
  e8q_qlinear_codes_matmul_ref(&q, batch, u, z_ref);
  core(&q, batch, u, z_avx);
  double e = rel_err_rows(z_avx, z_ref, batch, m);
  if (!(e <= 1e-5))
    fail_msg("%s m=%d n=%d batch=%d: %s core differs from _ref by %.3g relative (seed %llu)",
             QLAYER_CBN[cbi], m, n, batch, path, e, (unsigned long long)g_seed);
  qlayer_guarded_check_free(z_ref, (size_t)batch * m, "core _ref");
  qlayer_guarded_check_free(z_avx, (size_t)batch * m, path);
  free(u);
  e8q_qlinear_free(&q);
  qlayer_free(&L);
}

static void core_case(t_rng *g, int m, int n, int K_out, int K_in, int cbi, int batch) {
  core_case_with(g, m, n, K_out, K_in, cbi, batch, e8q_qlinear_codes_matmul_avx2, "AVX2");
}

static void test_core_avx2_vs_ref(void **state) {
  (void)state;
  if (!e8q_cpu_has_avx2()) skip();
  t_rng g = {g_seed ^ 0x1111};
  for (int cbi = 0; cbi < 3; cbi++) {
    for (int batch = 1; batch <= 64; batch++) core_case(&g, 13, 172, 13, 11, cbi, batch); /* m odd, n_pad 176 */
    for (int batch = 1; batch <= 64; batch += 7) core_case(&g, 37, 104, 37, 13, cbi, batch);
    const int bs[] = {1, 2, 3, 8, 17, 64};
    for (int i = 0; i < 6; i++) core_case(&g, 96, 512, 3, 1, cbi, bs[i]);  /* 4-row groups, long rows */
    for (int i = 0; i < 6; i++) core_case(&g, 7, 1000, 7, 125, cbi, bs[i]); /* m < 4 rows per group */
  }
}

/* decode + GEMM (inference batches): panels of 1, 5 and all rows, so the panel seams are crossed */
static int g_panel;
static void core_gemm_panel(const e8q_qlinear *q, int batch, const float *u, float *z) {
  e8q_qlinear_codes_matmul_gemm_rows(q, batch, u, z, g_panel);
}

static void test_core_gemm_vs_ref(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x7777};
  const int panels[] = {1, 5, 1 << 20};
  const int bs[] = {1, 2, 16, 17, 64};
  for (int cbi = 0; cbi < 3; cbi++)
    for (int p = 0; p < 3; p++) {
      g_panel = panels[p];
      for (int i = 0; i < 5; i++) {
        core_case_with(&g, 13, 172, 13, 11, cbi, bs[i], core_gemm_panel, "decode + GEMM");
        core_case_with(&g, 96, 512, 3, 1, cbi, bs[i], core_gemm_panel, "decode + GEMM");
        core_case_with(&g, 7, 1000, 7, 125, cbi, bs[i], core_gemm_panel, "decode + GEMM");
      }
    }
  /* the whole forward with gemm_min set: the same product as the _ref frame */
  for (int cbi = 0; cbi < 3; cbi++) {
    qlayer L;
    qlayer_make(&L, &g, 40, 96, 5, 3, QLAYER_CBS[cbi]);
    e8q_qlinear q;
    e8q_qlinear_init(&q, &L.d, "test layer");
    assert_int_equal(q.gemm_min, 0); /* off unless an inference model asks */
    q.gemm_min = E8Q_QLINEAR_GEMM_MIN;
    const int batch = E8Q_QLINEAR_GEMM_MIN + 3;
    float *x = qlayer_random_input(&g, (size_t)batch * 96), *y = malloc(sizeof(float) * batch * 40),
          *yr = malloc(sizeof(float) * batch * 40);
    e8q_qlinear_forward(&q, batch, x, y);
    e8q_qlinear_forward_ref(&q, batch, x, yr);
    double e = rel_err_rows(y, yr, batch, 40);
    if (!(e <= 1e-5)) fail_msg("%s: forward through decode + GEMM differs from _ref by %.3g relative", QLAYER_CBN[cbi], e);
    free(x), free(y), free(yr);
    e8q_qlinear_free(&q);
    qlayer_free(&L);
  }
}

/* AMX-INT8 (Sapphire Rapids and later): token blocks of 16 and row groups of 16 with ragged
 * edges, n_pad not a multiple of 64; the fixed-point contract of the VNNI core */
static void core_amx(const e8q_qlinear *q, int batch, const float *u, float *z) {
  assert_int_equal(e8q_qlinear_amx_matmul(q, batch, u, z), 1);
}

static void test_core_amx_vs_ref(void **state) {
  (void)state;
  if (!e8q_qlinear_amx_available()) {
    print_message("test_core_amx_vs_ref: SKIPPED, no AMX-INT8 here (CPU flags, kernel permission or E8Q_NO_AMX)\n");
    skip();
  }
  t_rng g = {g_seed ^ 0x8888};
  const int bs[] = {1, 15, 16, 17, 40};
  for (int cbi = 0; cbi < 3; cbi++)
    for (int i = 0; i < 5; i++) {
      core_case_with(&g, 13, 172, 13, 11, cbi, bs[i], core_amx, "AMX");   /* n_pad 176: 2 k-blocks + 48 */
      core_case_with(&g, 96, 512, 3, 1, cbi, bs[i], core_amx, "AMX");     /* 6 whole row groups */
      core_case_with(&g, 37, 104, 37, 13, cbi, bs[i], core_amx, "AMX");   /* 2 groups + 5 rows */
    }
  /* a NaN anywhere in the batch: refused (0), z untouched, the caller takes a float path */
  qlayer L;
  qlayer_make(&L, &g, 16, 64, 1, 1, QLAYER_CBS[0]);
  e8q_qlinear q;
  e8q_qlinear_init(&q, &L.d, "test layer");
  float *u = qlayer_random_input(&g, 3 * 64), z[3 * 16];
  for (int i = 0; i < 3 * 16; i++) z[i] = 7.0f;
  u[64 + 5] = NAN;
  assert_int_equal(e8q_qlinear_amx_matmul(&q, 3, u, z), 0);
  for (int i = 0; i < 3 * 16; i++) assert_true(z[i] == 7.0f);
  free(u);
  e8q_qlinear_free(&q);
  qlayer_free(&L);
}

/* AVX-512: same shapes, plus rows of several 32-code chunks with a ragged tail (nc = 67, 33, 1)
 * and row counts that leave 1..7 rows outside the 8-row groups */
static void avx512_case(t_rng *g, int m, int n, int K_out, int K_in, int cbi, int batch) {
  core_case_with(g, m, n, K_out, K_in, cbi, batch, e8q_qlinear_codes_matmul_avx512, "AVX-512");
}

static void test_core_avx512_vs_ref(void **state) {
  (void)state;
  if (!e8q_cpu_has_avx512()) {
    print_message("test_core_avx512_vs_ref: SKIPPED, this CPU lacks AVX-512 F/BW/VL/DQ/VBMI or GFNI\n");
    skip();
  }
  t_rng g = {g_seed ^ 0x6666};
  for (int cbi = 0; cbi < 3; cbi++) {
    for (int batch = 1; batch <= 64; batch++) avx512_case(&g, 13, 172, 13, 11, cbi, batch); /* m odd, n_pad 176 */
    for (int batch = 1; batch <= 64; batch += 7) avx512_case(&g, 37, 104, 37, 13, cbi, batch);
    const int bs[] = {1, 2, 3, 8, 17, 64};
    for (int i = 0; i < 6; i++) avx512_case(&g, 96, 512, 3, 1, cbi, bs[i]);
    for (int i = 0; i < 6; i++) avx512_case(&g, 7, 1000, 7, 125, cbi, bs[i]);  /* fewer rows than a group */
    for (int i = 0; i < 6; i++) avx512_case(&g, 23, 536, 23, 67, cbi, bs[i]);  /* nc = 67: 2 chunks + 3 */
    for (int i = 0; i < 6; i++) avx512_case(&g, 17, 264, 17, 33, cbi, bs[i]);  /* nc = 33: 1 chunk + 1 */
    for (int i = 0; i < 6; i++) avx512_case(&g, 9, 8, 9, 1, cbi, bs[i]);      /* nc = 1 */
  }
}

/* ---------------------------------------------------------------- VNNI integer core */
/* batch columns; column c scaled by in_scale · 10^(3·(c % 3) - 3) (its own fixed-point scale),
 * column 2 all zeros when batch > 2 */
static void vnni_case(t_rng *g, int m, int n, int K_out, int K_in, int cbi, float in_scale, int batch) {
  qlayer L;
  qlayer_make(&L, g, m, n, K_out, K_in, QLAYER_CBS[cbi]);
  e8q_qlinear q;
  e8q_qlinear_init(&q, &L.d, "test layer");
  if (!e8q_qlinear_vnni_fits(&L.d)) fail_msg("%s m=%d n=%d should fit the VNNI core", QLAYER_CBN[cbi], m, n);
  e8q_qlinear_vnni v; /* its own copy: q->vnni is NULL under E8Q_NO_VNNI */
  e8q_qlinear_vnni_init(&v, &L.d);
  const int np = L.d.n_pad;
  float *u = qlayer_random_input(g, (size_t)batch * np);
  for (int c = 0; c < batch; c++)
    for (int k = 0; k < np; k++)
      u[(size_t)c * np + k] *= c == 2 ? 0.0f : in_scale * powf(10.0f, (float)(3 * (c % 3) - 3));
  float *z_ref = qlayer_guarded((size_t)batch * m), *z = qlayer_guarded((size_t)batch * m);
  e8q_qlinear_codes_matmul_ref(&q, batch, u, z_ref);
  if (!e8q_qlinear_vnni_matmul(&q, &v, batch, u, z)) fail_msg("VNNI core refused a finite input");
  double *what = malloc(sizeof(double) * (size_t)m * np); /* Ŵr decoded in float64 */
  e8q_qlinear_decode_f64(&q, what);
  for (int c = 0; c < batch; c++) {
    const float *uc = u + (size_t)c * np, *zc = z + (size_t)c * m, *zr = z_ref + (size_t)c * m;
    /* the _ref comparison is relative to max_r Σ|w u|, the scale both roundings are bounded by
     * (max |z| alone is ill-conditioned for one row of one code, where the sum can cancel) */
    double umax = 0, zmax = 0, worst = 0;
    for (int k = 0; k < np; k++) umax = fmax(umax, fabs((double)uc[k]));
    for (int r = 0; r < m; r++) {
      double z64 = 0, wabs = 0, wu = 0;
      for (int k = 0; k < np; k++) {
        const double w = what[(size_t)r * np + k];
        z64 += w * (double)uc[k];
        wabs += fabs(w);
        wu += fabs(w * (double)uc[k]);
      }
      zmax = fmax(zmax, wu);
      const double bound = umax / 16777216.0 * wabs * 1.0001 + fabs(z64) * 6e-8;
      if (!(fabs((double)zc[r] - z64) <= bound))
        fail_msg("%s m=%d n=%d column %d/%d row %d: VNNI %.9g vs float64 %.9g, error %.3g > bound %.3g (seed %llu)",
                 QLAYER_CBN[cbi], m, n, c, batch, r, (double)zc[r], z64, fabs((double)zc[r] - z64), bound,
                 (unsigned long long)g_seed);
      if (umax == 0 && zc[r] != 0.0f) fail_msg("VNNI core: zero column gave %g in row %d", (double)zc[r], r);
      worst = fmax(worst, fabs((double)zc[r] - (double)zr[r]));
    }
    if (!(worst <= 1e-5 * (zmax > 0 ? zmax : 1)))
      fail_msg("%s m=%d n=%d column %d/%d: VNNI core differs from _ref by %.3g relative (seed %llu)", QLAYER_CBN[cbi], m,
               n, c, batch, worst / zmax, (unsigned long long)g_seed);
  }
  /* a NaN anywhere is refused before anything is written */
  for (size_t i = 0; i < (size_t)batch * m; i++) z[i] = 7.0f;
  u[(size_t)(batch - 1) * np + np / 2] = NAN;
  if (e8q_qlinear_vnni_matmul(&q, &v, batch, u, z)) fail_msg("VNNI core accepted a NaN input");
  for (size_t i = 0; i < (size_t)batch * m; i++)
    if (z[i] != 7.0f) fail_msg("VNNI core wrote output %zu of a refused input", i);
  qlayer_guarded_check_free(z_ref, (size_t)batch * m, "core _ref");
  qlayer_guarded_check_free(z, (size_t)batch * m, "VNNI core");
  free(what);
  free(u);
  e8q_qlinear_vnni_free(&v);
  e8q_qlinear_free(&q);
  qlayer_free(&L);
}

static void test_core_vnni(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x7777};
  /* longer rows could overflow the int32 digit sums: refused */
  e8q_qlinear_desc d = {.m = 1, .n = E8Q_VNNI_MAX_NPAD, .n_pad = E8Q_VNNI_MAX_NPAD};
  if (!e8q_qlinear_vnni_fits(&d)) fail_msg("n_pad = %d should fit the VNNI core", d.n_pad);
  d.n = d.n_pad = E8Q_VNNI_MAX_NPAD + 8;
  if (e8q_qlinear_vnni_fits(&d)) fail_msg("n_pad = %d must not fit the VNNI core", d.n_pad);
  if (!e8q_cpu_has_vnni()) {
    print_message("test_core_vnni: SKIPPED, this CPU lacks AVX512-VNNI (or AVX-512 VBMI/GFNI)\n");
    skip();
  }
  const int cb[3] = {0, 1, 2};
  for (int c = 0; c < 3; c++) {
    const int bs[] = {1, 2, 3, 4, 5, 7, 8, 13};
    for (int i = 0; i < 8; i++) {
      vnni_case(&g, 13, 172, 13, 11, cb[c], 1.0f, bs[i]); /* one partial group; nc = 22: 5 quads + 2 */
      vnni_case(&g, 37, 104, 37, 13, cb[c], 1.0f, bs[i]); /* groups 16, 16, 5; nc = 13 */
    }
    vnni_case(&g, 64, 512, 1, 1, cb[c], 1.0f, 1);        /* whole groups and quads */
    vnni_case(&g, 1, 8, 1, 1, cb[c], 1.0f, 6);           /* one row, one code */
    vnni_case(&g, 23, 536, 23, 67, cb[c], 1e-27f, 3);    /* the fixed-point scale follows each column */
    vnni_case(&g, 17, 264, 17, 33, cb[c], 1e27f, 3);
  }
}

/* ---------------------------------------------------------------- forward vs float64 dense */
static void forward_case(t_rng *g, int m, int n, int K_out, int K_in, int cbi, int batch) {
  qlayer L;
  qlayer_make(&L, g, m, n, K_out, K_in, QLAYER_CBS[cbi]);
  e8q_qlinear q;
  e8q_qlinear_init(&q, &L.d, "test layer");
  double *W = malloc(sizeof(double) * (size_t)m * n);
  e8q_qlinear_dequant_ref(&q, W);
  float *x = qlayer_random_input(g, (size_t)batch * n);
  float *y_ref = qlayer_guarded((size_t)batch * m), *y_avx = qlayer_guarded((size_t)batch * m),
        *y_512 = qlayer_guarded((size_t)batch * m), *y_disp = qlayer_guarded((size_t)batch * m);
  e8q_qlinear_forward_ref(&q, batch, x, y_ref);
  const int avx = e8q_cpu_has_avx2(), avx512 = e8q_cpu_has_avx512();
  if (avx) e8q_qlinear_forward_avx2(&q, batch, x, y_avx);
  if (avx512) e8q_qlinear_forward_avx512(&q, batch, x, y_512);
  e8q_qlinear_forward(&q, batch, x, y_disp);
  for (int b = 0; b < batch; b++) {
    double mx = 0, e_ref = 0, e_avx = 0, e_512 = 0;
    for (int r = 0; r < m; r++) {
      double acc = 0;
      for (int c = 0; c < n; c++) acc += W[(size_t)r * n + c] * (double)x[(size_t)b * n + c];
      mx = fmax(mx, fabs(acc));
      e_ref = fmax(e_ref, fabs((double)y_ref[(size_t)b * m + r] - acc));
      if (avx) e_avx = fmax(e_avx, fabs((double)y_avx[(size_t)b * m + r] - acc));
      if (avx512) e_512 = fmax(e_512, fabs((double)y_512[(size_t)b * m + r] - acc));
    }
    if (!(mx > 0)) fail_msg("dense output is zero: the test data is degenerate");
    if (!(e_ref <= 1e-5 * mx) || !(e_avx <= 1e-5 * mx) || !(e_512 <= 1e-5 * mx))
      fail_msg("%s m=%d n=%d K_out=%d K_in=%d batch=%d: vs float64 dense: _ref %.3g, AVX2 %.3g, "
               "AVX-512 %.3g relative (seed %llu)", QLAYER_CBN[cbi], m, n, K_out, K_in, batch, e_ref / mx,
               e_avx / mx, e_512 / mx, (unsigned long long)g_seed);
  }
  /* the dispatcher runs one of the paths exactly: E8Q_NO_AVX2=1 forces _ref, E8Q_NO_AVX512=1
   * stops at AVX2 */
  const char *no = getenv("E8Q_NO_AVX2"), *no512 = getenv("E8Q_NO_AVX512");
  const int use_avx = avx && !(no && *no && strcmp(no, "0") != 0);
  const int use_512 = use_avx && avx512 && !(no512 && *no512 && strcmp(no512, "0") != 0);
  const float *want = use_512 ? y_512 : use_avx ? y_avx : y_ref;
  if (memcmp(y_disp, want, sizeof(float) * (size_t)batch * m) != 0)
    fail_msg("e8q_qlinear_forward differs from the %s path it should dispatch to",
             use_512 ? "AVX-512" : use_avx ? "AVX2" : "_ref");
  qlayer_guarded_check_free(y_ref, (size_t)batch * m, "forward _ref");
  qlayer_guarded_check_free(y_avx, (size_t)batch * m, "forward AVX2");
  qlayer_guarded_check_free(y_512, (size_t)batch * m, "forward AVX-512");
  qlayer_guarded_check_free(y_disp, (size_t)batch * m, "forward");
  free(x);
  free(W);
  e8q_qlinear_free(&q);
  qlayer_free(&L);
}

static void test_forward_vs_dense(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x2222};
  for (int cbi = 0; cbi < 3; cbi++) {
    forward_case(&g, 13, 172, 13, 11, cbi, 1);   /* m odd (K_out = m), n = 172 padded to 176 */
    forward_case(&g, 13, 172, 13, 11, cbi, 5);
    forward_case(&g, 48, 104, 3, 13, cbi, 1);    /* n = 104 = 8*13, not a multiple of 64 */
    forward_case(&g, 48, 104, 3, 13, cbi, 64);
    forward_case(&g, 64, 256, 1, 1, cbi, 3);     /* powers of two: pure Sylvester */
    forward_case(&g, 40, 61, 5, 1, cbi, 2);      /* n = 61 padded to 64 */
  }
}

/* ---------------------------------------------------------------- float64 product, validation */
static void test_f64_ref_and_validate(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x5555};
  for (int cbi = 0; cbi < 3; cbi++) {
    qlayer L;
    qlayer_make(&L, &g, 13, 172, 13, 11, QLAYER_CBS[cbi]);
    e8q_qlinear q;
    e8q_qlinear_init(&q, &L.d, "test layer");
    const int m = 13, n = 172, batch = 3;
    double *W = malloc(sizeof(double) * m * n), *x = malloc(sizeof(double) * batch * n),
           *y = malloc(sizeof(double) * batch * m);
    e8q_qlinear_dequant_ref(&q, W);
    /* the pipeline's fast dequant (Hadamard transforms) == the written-out matrices */
    double *Wf = malloc(sizeof(double) * m * n), wmax = 0, dmax = 0;
    e8q_qlinear_dequant(&q, Wf);
    for (int i = 0; i < m * n; i++) {
      wmax = fmax(wmax, fabs(W[i]));
      dmax = fmax(dmax, fabs(Wf[i] - W[i]));
    }
    if (!(wmax > 0 && dmax <= 1e-12 * wmax))
      fail_msg("%s: e8q_qlinear_dequant differs from the _ref by %.3g (max |W| %.3g)", QLAYER_CBN[cbi], dmax, wmax);
    free(Wf);
    for (int i = 0; i < batch * n; i++) x[i] = t_rng_normal(&g) + 0.01;
    e8q_qlinear_forward_f64_ref(&q, batch, x, y);
    for (int b = 0; b < batch; b++) {
      double mx = 0;
      for (int r = 0; r < m; r++) {
        double acc = 0;
        for (int c = 0; c < n; c++) acc += W[r * n + c] * x[b * n + c];
        mx = fmax(mx, fabs(acc));
        T_NEAR(y[b * m + r], acc, 1e-12 * (1 + fabs(acc)) + 1e-12 * mx, "f64 product vs dense");
      }
    }
    double e = e8q_qlinear_validate(&q, 4, g_seed);
    if (!(e > 0 && e < 1e-5)) fail_msg("%s: validate error %.3g outside (0, 1e-5)", QLAYER_CBN[cbi], e);
    free(W);
    free(x);
    free(y);
    e8q_qlinear_free(&q);
    qlayer_free(&L);
  }
}

/* ---------------------------------------------------------------- the decoded weight */
/* e8q_qlinear_decode_f64 agrees with codebook.h's f32 decoders, code by code */
static void test_decode_f64_matches_codebook(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x3333};
  for (int cbi = 0; cbi < 3; cbi++) {
    qlayer L;
    qlayer_make(&L, &g, 5, 64, 5, 1, QLAYER_CBS[cbi]);
    e8q_qlinear q;
    e8q_qlinear_init(&q, &L.d, "test layer");
    double *W = malloc(sizeof(double) * 5 * 64);
    e8q_qlinear_decode_f64(&q, W);
    for (int r = 0; r < 5; r++)
      for (int j = 0; j < 8; j++) {
        float w[8];
        size_t i = (size_t)r * 8 + j;
        if (cbi == 0) e8q_e8p_decode(L.codes[i], w);
        else if (cbi == 1) e8q_rvq3_decode(L.codes[i], ((uint8_t *)L.codes2)[i], w);
        else e8q_rvq4_decode(L.codes[i], ((uint16_t *)L.codes2)[i], w);
        for (int t = 0; t < 8; t++) T_NEAR(W[(size_t)r * 64 + 8 * j + t], w[t], 1e-6, QLAYER_CBN[cbi]);
      }
    free(W);
    e8q_qlinear_free(&q);
    qlayer_free(&L);
  }
}

/* ---------------------------------------------------------------- bad descriptions */
static void test_bad_desc(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x4444};
  qlayer L;
  qlayer_make(&L, &g, 12, 40, 3, 5, E8Q_CB_E8P12);
  e8q_qlinear q;
  e8q_qlinear_desc d = L.d;
  d.n_pad = 48;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.down"), "layers.0.down", "n_pad = 48");
  d = L.d;
  d.K_in = 3;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.down"), "K_in = 3", "dimension 40");
  d = L.d;
  d.R_out = NULL;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.down"), "R_out");
  d = L.d;
  d.codes2 = L.codes;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.down"), "E8P12 (2 bit) takes no codes2");
  d = L.d;
  d.codebook = E8Q_CB_E8P12RVQ4B;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.down"), "needs codes2");
  d = L.d;
  float *bad_R = malloc(sizeof(float) * 25);
  memcpy(bad_R, L.R_in, sizeof(float) * 25);
  bad_R[7] = -bad_R[7]; /* one flipped entry: no longer orthogonal */
  d.R_in = bad_R;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.down"), "layers.0.down: R_in", "not orthogonal");
  free(bad_R);
  d = L.d;
  L.piece_rows[2] += 1;
  E8Q_EXPECT_FATAL(e8q_qlinear_init(&q, &d, "layers.0.qkv"), "layers.0.qkv", "sum to 13");
  qlayer_free(&L);
}

int main(void) {
  g_seed = t_fresh_seed("test_qlinear");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_f64_matches_codebook),
      cmocka_unit_test(test_core_avx2_vs_ref),
      cmocka_unit_test(test_core_avx512_vs_ref),
      cmocka_unit_test(test_core_vnni),
      cmocka_unit_test(test_core_gemm_vs_ref),
      cmocka_unit_test(test_core_amx_vs_ref),
      cmocka_unit_test(test_forward_vs_dense),
      cmocka_unit_test(test_f64_ref_and_validate),
      cmocka_unit_test(test_bad_desc),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
