/* tests/train/test_qlinear_grad.c: the quantized linear's backward (kernels/qlinear_grad.h).
 *
 *  - the transpose product t = Ŵrᵀ g: AVX-512 and AVX2 paths and _ref against a float64 product with the
 *    densely decoded Ŵr (e8q_qlinear_decode_f64), every codebook, batch 1..5, 8, 9, 16 (all the
 *    batch tiles), odd m, n % 8 != 0 (n_pad > n), non-power-of-two Hadamard factors, rows of
 *    several 32-code groups with a ragged tail and more rows than one 32-row block; tolerance
 *    5e-6 · max_k Σ_r |Ŵr[r,k] g[b,r]| per batch row (the f32 summation bound (m + 2)·2^-24 for
 *    m <= 71 terms; observed errors are ~10x smaller); guard regions
 *    around every output catch out-of-bounds writes; the AVX-512 (AVX2) part skips (with a
 *    message) on CPUs without AVX-512/GFNI (AVX2/FMA);
 *  - determinism: transpose product (AVX-512, AVX2, _ref) and whole backward bit-identical with
 *    1, 2 and 3 threads;
 *  - the backward (dispatching path and _ref) against central finite differences of a float64
 *    forward written here (exact decode, f64 transforms, float64 parameters) for EVERY element of
 *    SU, SV, the fuse scales and x, loss = Σ c ⊙ y with random c (so dy = c). The loss is linear
 *    in each single parameter, so the difference quotient is exact up to f64 rounding and the
 *    tolerance measures the f32 analytic gradient alone: |analytic - FD| <= 1e-4 · max |FD| of
 *    that parameter family. dSU/dSV/dfs accumulate (+=) onto a nonzero start; dSU's padding
 *    entries stay untouched; the fast and _ref backwards agree within 1e-5 · max |gradient|;
 *  - e8q_qlinear_set_scales: afterwards the forward is bit-equal to a freshly initialised layer
 *    with the new SV / fuse scales (and differs from before), SU updated in place is picked up
 *    by the forward, and a backward after SV changed without set_scales is fatal.
 * Codes, scales and inputs are fresh random values each run (t_fresh_seed, printed). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/qlinear.h"
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_grad.h"
#include "qlayer.h"
#include "testutil.h"

static uint64_t g_seed;

/* ---------------------------------------------------------------- transpose product */
typedef void (*mmt_fn)(const e8q_qlinear *, int, const float *, float *);

/* t = Ŵrᵀ g through `fn` against the float64 dense product; tolerance per batch row relative to
 * max_k Σ_r |w g| (the scale of the f32 rounding) */
static void mmt_check(const e8q_qlinear *q, const double *what, int batch, const float *g, mmt_fn fn,
                      const char *path, int cbi) {
  const int m = q->d.m, np = q->d.n_pad;
  float *t = qlayer_guarded((size_t)batch * np);
  fn(q, batch, g, t);
  for (int b = 0; b < batch; b++) {
    double scale = 0, worst = 0;
    int wk = 0;
    for (int k = 0; k < np; k++) {
      double s = 0, sa = 0;
      for (int r = 0; r < m; r++) {
        const double p = what[(size_t)r * np + k] * (double)g[(size_t)b * m + r];
        s += p;
        sa += fabs(p);
      }
      scale = fmax(scale, sa);
      const double e = fabs((double)t[(size_t)b * np + k] - s);
      if (!(e <= worst)) {
        worst = e;
        wk = k;
      }
    }
    if (!(worst <= 5e-6 * scale))
      fail_msg("%s m=%d n=%d batch=%d row %d: %s transpose product off by %.3g at column %d, > 5e-6 x %.3g (seed %llu)",
               QLAYER_CBN[cbi], m, q->d.n, batch, b, path, worst, wk, scale, (unsigned long long)g_seed);
  }
  qlayer_guarded_check_free(t, (size_t)batch * np, path);
}

static void mmt_case(t_rng *g, int m, int n, int K_out, int K_in, int cbi, const int *batches, int nb) {
  qlayer L;
  qlayer_make(&L, g, m, n, K_out, K_in, QLAYER_CBS[cbi]);
  e8q_qlinear q;
  e8q_qlinear_init(&q, &L.d, "test layer");
  const int np = L.d.n_pad;
  double *what = malloc(sizeof(double) * (size_t)m * np);
  e8q_qlinear_decode_f64(&q, what);
  for (int i = 0; i < nb; i++) {
    const int batch = batches[i];
    float *gr = qlayer_random_input(g, (size_t)batch * m);
    mmt_check(&q, what, batch, gr, e8q_qlinear_codes_matmul_t_ref, "_ref", cbi);
    if (e8q_cpu_has_avx512()) mmt_check(&q, what, batch, gr, e8q_qlinear_codes_matmul_t_avx512, "AVX-512", cbi);
    if (e8q_cpu_has_avx2()) mmt_check(&q, what, batch, gr, e8q_qlinear_codes_matmul_t_avx2, "AVX2", cbi);
    mmt_check(&q, what, batch, gr, e8q_qlinear_codes_matmul_t, "dispatch", cbi);
    free(gr);
  }
  free(what);
  e8q_qlinear_free(&q);
  qlayer_free(&L);
}

static void test_matmul_t(void **state) {
  (void)state;
  if (!e8q_cpu_has_avx512())
    print_message("test_matmul_t: AVX-512 part SKIPPED, this CPU lacks AVX-512 F/BW/VL/DQ/VBMI or GFNI\n");
  if (!e8q_cpu_has_avx2()) print_message("test_matmul_t: AVX2 part SKIPPED, this CPU lacks AVX2/FMA\n");
  t_rng g = {g_seed ^ 0x7171};
  const int b15[] = {1, 2, 3, 4, 5}, bbig[] = {8, 9, 16};
  for (int cbi = 0; cbi < 3; cbi++) {
    mmt_case(&g, 13, 172, 13, 11, cbi, b15, 5); /* m odd, n 172 -> n_pad 176 = 11 x 16 */
    mmt_case(&g, 37, 101, 37, 13, cbi, b15, 5); /* n_pad 104 = 13 x 8 */
    mmt_case(&g, 12, 44, 12, 12, cbi, b15, 5);  /* Paley 12 both sides, n_pad 48 */
    mmt_case(&g, 71, 597, 71, 75, cbi, b15, 5); /* nc 75: 2 groups + 11, rows 32 + 32 + 7 */
    mmt_case(&g, 71, 597, 71, 75, cbi, bbig, 3);
    mmt_case(&g, 9, 8, 9, 1, cbi, bbig, 3);     /* nc 1 */
  }
}

/* ---------------------------------------------------------------- the kept forward output
 * e8q_qlinear_forward_keep gives the forward's y bit for bit and z with y = os ⊙ z exactly;
 * the backward from that z equals the backward that recomputes it, bit for bit (so the block
 * training backward, which reuses it, changes no result) */
static void test_backward_kept_z(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x5a5a};
  for (int cbi = 0; cbi < 3; cbi++) {
    const int m = 37, n = 203, np = 208, batch = 19;
    qlayer L;
    qlayer_make(&L, &g, m, n, m, np / 8, QLAYER_CBS[cbi]);
    e8q_qlinear q;
    e8q_qlinear_init(&q, &L.d, "test layer");
    float *x = qlayer_random_input(&g, (size_t)batch * n), *dy = qlayer_random_input(&g, (size_t)batch * m);
    float *y = malloc(sizeof(float) * batch * m), *yk = malloc(sizeof(float) * batch * m);
    float *z = malloc(sizeof(float) * batch * m);
    e8q_qlinear_forward(&q, batch, x, y);
    e8q_qlinear_forward_keep(&q, batch, x, yk, z);
    assert_memory_equal(y, yk, sizeof(float) * batch * m);
    for (int b = 0; b < batch; b++)
      for (int r = 0; r < m; r++) assert_true(yk[b * m + r] == q.out_scale[r] * z[b * m + r]);
    float *dx[2], *dSU[2], *dSV[2], *dfs[2];
    for (int k = 0; k < 2; k++) {
      dx[k] = malloc(sizeof(float) * batch * n);
      dSU[k] = calloc(np, sizeof(float));
      dSV[k] = calloc(m, sizeof(float));
      dfs[k] = calloc(3, sizeof(float));
    }
    e8q_qlinear_backward(&q, batch, x, dy, dx[0], dSU[0], dSV[0], dfs[0]);
    e8q_qlinear_backward_z(&q, batch, x, z, dy, dx[1], dSU[1], dSV[1], dfs[1]);
    assert_memory_equal(dx[0], dx[1], sizeof(float) * batch * n);
    assert_memory_equal(dSU[0], dSU[1], sizeof(float) * np);
    assert_memory_equal(dSV[0], dSV[1], sizeof(float) * m);
    assert_memory_equal(dfs[0], dfs[1], sizeof(float) * 3);
    double sv = 0;
    for (int r = 0; r < m; r++) sv += fabs(dSV[0][r]);
    assert_true(sv > 0); /* the compared gradient is not all zeros */
    for (int k = 0; k < 2; k++) {
      free(dx[k]);
      free(dSU[k]);
      free(dSV[k]);
      free(dfs[k]);
    }
    free(x);
    free(dy);
    free(y);
    free(yk);
    free(z);
    e8q_qlinear_free(&q);
    qlayer_free(&L);
  }
}

/* ---------------------------------------------------------------- determinism */
static void test_threads_bitwise(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x3333};
  const int maxthr = omp_get_max_threads();
  for (int cbi = 0; cbi < 3; cbi++) {
    qlayer L;
    qlayer_make(&L, &g, 71, 2053, 71, 257, QLAYER_CBS[cbi]); /* n_pad 2056 = 257 x 8: 9 groups */
    e8q_qlinear q;
    e8q_qlinear_init(&q, &L.d, "test layer");
    const int m = 71, n = 2053, np = 2056, batches[] = {1, 6, 16};
    for (int bi = 0; bi < 3; bi++) {
      const int batch = batches[bi];
      float *gr = qlayer_random_input(&g, (size_t)batch * m), *x = qlayer_random_input(&g, (size_t)batch * n);
      /* the transpose product of every path the CPU has, and the dispatching backward */
      const mmt_fn paths[3] = {e8q_qlinear_codes_matmul_t_ref, e8q_qlinear_codes_matmul_t_avx2,
                               e8q_qlinear_codes_matmul_t_avx512};
      const char *pname[3] = {"_ref", "AVX2", "AVX-512"};
      const int have[3] = {1, e8q_cpu_has_avx2(), e8q_cpu_has_avx512()};
      float *t[3][3], *dx[3], *dSU[3], *dSV[3], *dfs[3];
      for (int th = 0; th < 3; th++) {
        omp_set_num_threads(th + 1);
        for (int pi = 0; pi < 3; pi++) {
          t[pi][th] = malloc(sizeof(float) * (size_t)batch * np);
          if (have[pi]) paths[pi](&q, batch, gr, t[pi][th]);
        }
        dx[th] = malloc(sizeof(float) * (size_t)batch * n);
        dSU[th] = calloc(np, sizeof(float));
        dSV[th] = calloc(m, sizeof(float));
        dfs[th] = calloc(3, sizeof(float));
        e8q_qlinear_backward(&q, batch, x, gr, dx[th], dSU[th], dSV[th], dfs[th]);
      }
      omp_set_num_threads(maxthr);
      for (int th = 1; th < 3; th++) {
        for (int pi = 0; pi < 3; pi++)
          if (have[pi] && memcmp(t[pi][0], t[pi][th], sizeof(float) * (size_t)batch * np))
            fail_msg("%s batch %d: %s transpose product differs between 1 and %d threads", QLAYER_CBN[cbi], batch, pname[pi],
                     th + 1);
        if (memcmp(dx[0], dx[th], sizeof(float) * (size_t)batch * n) || memcmp(dSU[0], dSU[th], sizeof(float) * np) ||
            memcmp(dSV[0], dSV[th], sizeof(float) * m) || memcmp(dfs[0], dfs[th], sizeof(float) * 3))
          fail_msg("%s batch %d: backward differs between 1 and %d threads", QLAYER_CBN[cbi], batch, th + 1);
      }
      for (int th = 0; th < 3; th++) {
        for (int pi = 0; pi < 3; pi++) free(t[pi][th]);
        free(dx[th]);
        free(dSU[th]);
        free(dSV[th]);
        free(dfs[th]);
      }
      free(gr);
      free(x);
    }
    e8q_qlinear_free(&q);
    qlayer_free(&L);
  }
}

/* ---------------------------------------------------------------- finite differences */
/* the loss Σ_b Σ_r c[b,r] y[b,r] in float64 with float64 parameters; the codes, Wscale, pieces
 * and transforms are q's. what: Ŵr [m, n_pad] decoded in f64. */
typedef struct {
  const e8q_qlinear *q;
  const double *what, *c; /* [m, n_pad], [batch, m] */
  int batch;
  double *SU, *SV, *fs, *x; /* [n_pad], [m], [n_pieces], [batch, n] */
} fd_model;

static double fd_loss(const fd_model *M) {
  const e8q_qlinear *q = M->q;
  const int m = q->d.m, n = q->d.n, np = q->d.n_pad;
  double *u = malloc(sizeof(double) * np), *z = malloc(sizeof(double) * m), loss = 0;
  for (int b = 0; b < M->batch; b++) {
    for (int k = 0; k < np; k++) u[k] = k < n ? M->SU[k] * M->x[(size_t)b * n + k] : 0.0;
    e8q_had_vec_f64(&q->h_in, u, 1);
    for (int r = 0; r < m; r++) {
      double s = 0;
      for (int k = 0; k < np; k++) s += M->what[(size_t)r * np + k] * u[k];
      z[r] = (double)q->d.Wscale * s;
    }
    e8q_had_vec_f64(&q->h_out, z, 0);
    int piece = 0, left = q->d.piece_rows ? q->d.piece_rows[0] : m;
    for (int r = 0; r < m; r++) {
      while (left == 0) left = q->d.piece_rows[++piece];
      loss += M->c[(size_t)b * m + r] * M->fs[piece] * M->SV[r] * z[r];
      left--;
    }
  }
  free(u);
  free(z);
  return loss;
}

/* central difference in parameter *p */
static double fd_grad(fd_model *M, double *p) {
  const double v = *p, h = 1e-2 * fmax(1.0, fabs(v));
  *p = v + h;
  const double lp = fd_loss(M);
  *p = v - h;
  const double lm = fd_loss(M);
  *p = v;
  return (lp - lm) / (2 * h);
}

/* analytic (after - start) against fd for one parameter family of cnt elements */
static void fd_compare(const float *after, float start, const double *fd, int cnt, const char *fam, const char *path,
                       int cbi, int m, int n) {
  double mx = 0;
  for (int i = 0; i < cnt; i++) mx = fmax(mx, fabs(fd[i]));
  if (!(mx > 0)) fail_msg("%s %s: finite-difference gradient is all zero", QLAYER_CBN[cbi], fam);
  for (int i = 0; i < cnt; i++) {
    const double a = (double)after[i] - (double)start;
    if (!(fabs(a - fd[i]) <= 1e-4 * mx))
      fail_msg("%s m=%d n=%d %s: %s[%d] = %.9g, finite difference %.9g (|diff| %.3g > 1e-4 x max %.3g) (seed %llu)",
               QLAYER_CBN[cbi], m, n, path, fam, i, a, fd[i], fabs(a - fd[i]), mx, (unsigned long long)g_seed);
  }
}

typedef void (*bwd_fn)(const e8q_qlinear *, int, const float *, const float *, float *, float *, float *, float *);

static void fd_case(t_rng *g, int m, int n, int K_out, int K_in, int cbi, int batch) {
  qlayer L;
  qlayer_make(&L, g, m, n, K_out, K_in, QLAYER_CBS[cbi]);
  e8q_qlinear q;
  e8q_qlinear_init(&q, &L.d, "test layer");
  const int np = L.d.n_pad, npc = L.d.n_pieces;
  float *x = qlayer_random_input(g, (size_t)batch * n), *c = qlayer_random_input(g, (size_t)batch * m);
  double *what = malloc(sizeof(double) * (size_t)m * np);
  e8q_qlinear_decode_f64(&q, what);
  fd_model M = {.q = &q, .what = what, .batch = batch};
  double *cd = malloc(sizeof(double) * batch * m);
  M.SU = malloc(sizeof(double) * np);
  M.SV = malloc(sizeof(double) * m);
  M.fs = malloc(sizeof(double) * npc);
  M.x = malloc(sizeof(double) * batch * n);
  for (int i = 0; i < batch * m; i++) cd[i] = c[i];
  M.c = cd;
  for (int i = 0; i < np; i++) M.SU[i] = L.SU[i];
  for (int i = 0; i < m; i++) M.SV[i] = L.SV[i];
  for (int i = 0; i < npc; i++) M.fs[i] = L.fs[i];
  for (int i = 0; i < batch * n; i++) M.x[i] = x[i];
  /* the f64 model at the float parameters must be the layer: check its loss against the f32 forward */
  {
    float *y = malloc(sizeof(float) * batch * m);
    e8q_qlinear_forward(&q, batch, x, y);
    double l32 = 0, sa = 0;
    for (int i = 0; i < batch * m; i++) {
      l32 += (double)c[i] * y[i];
      sa += fabs((double)c[i] * y[i]);
    }
    T_NEAR(l32, fd_loss(&M), 1e-5 * sa, "float64 model loss vs the f32 forward");
    free(y);
  }
  double *gSU = malloc(sizeof(double) * np), *gSV = malloc(sizeof(double) * m), *gfs = malloc(sizeof(double) * npc);
  double *gx = malloc(sizeof(double) * batch * n);
  for (int i = 0; i < np; i++) gSU[i] = fd_grad(&M, &M.SU[i]);
  for (int i = 0; i < m; i++) gSV[i] = fd_grad(&M, &M.SV[i]);
  for (int i = 0; i < npc; i++) gfs[i] = fd_grad(&M, &M.fs[i]);
  for (int i = 0; i < batch * n; i++) gx[i] = fd_grad(&M, &M.x[i]);

  const bwd_fn fns[2] = {e8q_qlinear_backward, e8q_qlinear_backward_ref};
  const char *names[2] = {"backward", "backward_ref"};
  const float START = 0.5f; /* accumulation onto a nonzero start */
  float *res[2][4];
  for (int f = 0; f < 2; f++) {
    float *dx = qlayer_guarded((size_t)batch * n), *dSU = qlayer_guarded(np), *dSV = qlayer_guarded(m), *dfs = qlayer_guarded(npc);
    for (int i = 0; i < np; i++) dSU[i] = START;
    for (int i = 0; i < m; i++) dSV[i] = START;
    for (int i = 0; i < npc; i++) dfs[i] = START;
    fns[f](&q, batch, x, c, dx, dSU, dSV, dfs);
    fd_compare(dSU, START, gSU, n, "dSU", names[f], cbi, m, n);
    for (int i = n; i < np; i++)
      if (dSU[i] != START) fail_msg("%s: dSU padding entry %d changed to %g", names[f], i, (double)dSU[i]);
    fd_compare(dSV, START, gSV, m, "dSV", names[f], cbi, m, n);
    fd_compare(dfs, START, gfs, npc, "dfs", names[f], cbi, m, n);
    fd_compare(dx, 0.0f, gx, batch * n, "dx", names[f], cbi, m, n);
    res[f][0] = dx;
    res[f][1] = dSU;
    res[f][2] = dSV;
    res[f][3] = dfs;
  }
  /* fast vs _ref */
  const int cnt[4] = {batch * n, np, m, npc};
  const char *fam[4] = {"dx", "dSU", "dSV", "dfs"};
  for (int k = 0; k < 4; k++) {
    double mx = 0, d = 0;
    for (int i = 0; i < cnt[k]; i++) {
      mx = fmax(mx, fabs((double)res[1][k][i]));
      d = fmax(d, fabs((double)res[0][k][i] - (double)res[1][k][i]));
    }
    if (!(d <= 1e-5 * mx))
      fail_msg("%s m=%d n=%d: %s of backward and backward_ref differ by %.3g (max %.3g)", QLAYER_CBN[cbi], m, n, fam[k], d, mx);
    qlayer_guarded_check_free(res[0][k], cnt[k], fam[k]);
    qlayer_guarded_check_free(res[1][k], cnt[k], fam[k]);
  }
  /* the NULL outputs are really optional: dx alone equals the full call's dx */
  {
    float *dx = malloc(sizeof(float) * batch * n);
    float *dSV = malloc(sizeof(float) * m);
    for (int i = 0; i < m; i++) dSV[i] = 0;
    e8q_qlinear_backward(&q, batch, x, c, dx, NULL, NULL, NULL);
    fd_compare(dx, 0.0f, gx, batch * n, "dx (alone)", "backward", cbi, m, n);
    e8q_qlinear_backward(&q, batch, x, c, NULL, NULL, dSV, NULL);
    fd_compare(dSV, 0.0f, gSV, m, "dSV (alone)", "backward", cbi, m, n);
    free(dx);
    free(dSV);
  }
  free(gSU);
  free(gSV);
  free(gfs);
  free(gx);
  free(M.SU);
  free(M.SV);
  free(M.fs);
  free(M.x);
  free(cd);
  free(what);
  free(x);
  free(c);
  e8q_qlinear_free(&q);
  qlayer_free(&L);
}

static void test_backward_fd(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x4242};
  for (int cbi = 0; cbi < 3; cbi++) {
    fd_case(&g, 13, 21, 13, 3, cbi, 3);  /* m odd (random orthogonal 13), n_pad 24 = 3 x 8 */
    fd_case(&g, 12, 44, 12, 12, cbi, 2); /* Paley 12 both sides, n_pad 48 (4 padding columns) */
    fd_case(&g, 20, 36, 5, 5, cbi, 4);   /* m = 5 x 4, n_pad 40 = 5 x 8 */
    fd_case(&g, 2, 8, 1, 1, cbi, 1);     /* one piece (no fuse scales walk), powers of two */
  }
}

/* ---------------------------------------------------------------- scales after init */
/* the backward refuses output scales that no longer match SV (setjmp kept out of the caller's loop) */
static __attribute__((noinline)) void expect_stale(const e8q_qlinear *q, int batch, const float *x, const float *dy,
                                                   float *dSV) {
  E8Q_EXPECT_FATAL(e8q_qlinear_backward(q, batch, x, dy, NULL, NULL, dSV, NULL), "row 5", "e8q_qlinear_set_scales");
}

static void test_set_scales(void **state) {
  (void)state;
  t_rng g = {g_seed ^ 0x5555};
  for (int cbi = 0; cbi < 3; cbi++) {
    qlayer L;
    qlayer_make(&L, &g, 37, 101, 37, 13, QLAYER_CBS[cbi]);
    const int m = 37, n = 101, batch = 3;
    e8q_qlinear q;
    e8q_qlinear_init(&q, &L.d, "test layer");
    float *x = qlayer_random_input(&g, (size_t)batch * n);
    float *y0 = malloc(sizeof(float) * batch * m), *y1 = malloc(sizeof(float) * batch * m),
          *y2 = malloc(sizeof(float) * batch * m);
    e8q_qlinear_forward(&q, batch, x, y0);
    float SV2[37], fs2[3];
    for (int r = 0; r < m; r++) SV2[r] = qlayer_signed_scale(&g);
    for (int p = 0; p < 3; p++) fs2[p] = qlayer_nonzero_uniform(&g, 0.2f, 2.0f);
    e8q_qlinear_set_scales(&q, SV2, fs2);
    e8q_qlinear_desc d2 = L.d;
    d2.SV = SV2;
    d2.fuse_scales = fs2;
    e8q_qlinear q2;
    e8q_qlinear_init(&q2, &d2, "fresh layer");
    if (memcmp(q.out_scale, q2.out_scale, sizeof(float) * m)) fail_msg("%s: set_scales output scales != fresh init", QLAYER_CBN[cbi]);
    e8q_qlinear_forward(&q, batch, x, y1);
    e8q_qlinear_forward(&q2, batch, x, y2);
    if (memcmp(y1, y2, sizeof(float) * batch * m)) fail_msg("%s: forward after set_scales != fresh layer", QLAYER_CBN[cbi]);
    if (!memcmp(y0, y1, sizeof(float) * batch * m)) fail_msg("%s: set_scales changed nothing", QLAYER_CBN[cbi]);
    e8q_qlinear_forward_ref(&q, batch, x, y1);
    e8q_qlinear_forward_ref(&q2, batch, x, y2);
    if (memcmp(y1, y2, sizeof(float) * batch * m)) fail_msg("%s: forward_ref after set_scales != fresh layer", QLAYER_CBN[cbi]);
    /* NULL fuse scales: all 1 */
    e8q_qlinear_set_scales(&q, SV2, NULL);
    for (int r = 0; r < m; r++)
      if (q.out_scale[r] != SV2[r]) fail_msg("%s: set_scales(fs NULL) row %d: %g != SV %g", QLAYER_CBN[cbi], r, (double)q.out_scale[r], (double)SV2[r]);
    e8q_qlinear_set_scales(&q, SV2, fs2);
    /* SU updated in place is read by the next forward (both layers borrow L.SU) */
    for (int k = 0; k < L.d.n_pad; k++) L.SU[k] *= 1.25f;
    e8q_qlinear q3;
    e8q_qlinear_init(&q3, &d2, "fresh layer 3");
    e8q_qlinear_forward(&q, batch, x, y1);
    e8q_qlinear_forward(&q3, batch, x, y2);
    if (memcmp(y1, y2, sizeof(float) * batch * m)) fail_msg("%s: forward after SU update != fresh layer", QLAYER_CBN[cbi]);
    /* SV changed without set_scales: the backward refuses */
    float dSV[37] = {0};
    SV2[5] *= 2.0f;
    expect_stale(&q, batch, x, y0, dSV);
    e8q_qlinear_set_scales(&q, SV2, fs2);
    e8q_qlinear_backward(&q, batch, x, y0, NULL, NULL, dSV, NULL);
    free(x);
    free(y0);
    free(y1);
    free(y2);
    e8q_qlinear_free(&q);
    e8q_qlinear_free(&q2);
    e8q_qlinear_free(&q3);
    qlayer_free(&L);
  }
}

int main(void) {
  g_seed = t_fresh_seed("test_qlinear_grad");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matmul_t),
      cmocka_unit_test(test_threads_bitwise),
      cmocka_unit_test(test_backward_kept_z),
      cmocka_unit_test(test_backward_fd),
      cmocka_unit_test(test_set_scales),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
