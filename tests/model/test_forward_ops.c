/* tests/model/test_forward_ops.c: transformer ops (fast and _ref) against float64 references
 * written here from the definitions, plus invariants. Fresh random inputs per run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/f16.h"
#include "kernels/matvec_f16.h"
#include "kernels/transformer.h"
#include "testutil.h"
#include "worker/linear.h"

static uint64_t g_seed;

static float *rand_vec(t_rng *r, size_t n, double scale) {
  float *x = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) x[i] = (float)(scale * t_rng_normal(r));
  return x;
}

static void expect_close(const float *a, const double *ref, size_t n, double rtol, double atol, const char *what) {
  for (size_t i = 0; i < n; i++) {
    double tol = atol + rtol * fabs(ref[i]);
    if (!(fabs(a[i] - ref[i]) <= tol))
      fail_msg("%s[%zu]: %.9g vs reference %.9g (seed %llu)", what, i, (double)a[i], ref[i], (unsigned long long)g_seed);
  }
}

/* ---------------------------------------------------------------- rmsnorm */
static void test_rmsnorm(void **state) {
  (void)state;
  t_rng r = {g_seed};
  int T = 37, d = 200;
  float *x = rand_vec(&r, (size_t)T * d, 3.0), *w = rand_vec(&r, d, 1.0);
  float *y = malloc(sizeof(float) * T * d), *yr = malloc(sizeof(float) * T * d);
  double *ref = malloc(sizeof(double) * T * d);
  for (int t = 0; t < T; t++) {
    double ss = 0;
    for (int i = 0; i < d; i++) ss += (double)x[t * d + i] * x[t * d + i];
    double inv = 1.0 / sqrt(ss / d + 1e-5);
    for (int i = 0; i < d; i++) ref[t * d + i] = x[t * d + i] * inv * w[i];
  }
  e8q_rmsnorm(T, d, x, w, 1e-5f, y);
  e8q_rmsnorm_ref(T, d, x, w, 1e-5f, yr);
  expect_close(y, ref, (size_t)T * d, 1e-5, 1e-6, "rmsnorm");
  expect_close(yr, ref, (size_t)T * d, 1e-5, 1e-6, "rmsnorm_ref");
  /* in place */
  e8q_rmsnorm(T, d, x, w, 1e-5f, x);
  expect_close(x, ref, (size_t)T * d, 1e-5, 1e-6, "rmsnorm in place");
  free(x), free(w), free(y), free(yr), free(ref);
}

/* ---------------------------------------------------------------- rope */
static void rope_double(int n_seq, int T, int pos0, int nh, int hd, double theta, const float *x, int ld, double *out) {
  /* complex rotation of (x_i, x_{i+hd/2}) by (pos) * theta^(-2i/hd) */
  for (int s = 0; s < n_seq; s++)
    for (int t = 0; t < T; t++)
      for (int c = 0; c < ld; c++) {
        size_t row = (size_t)s * T + t;
        double v = x[row * ld + c];
        if (c < nh * hd) {
          int h = c / hd, i = c % hd, half = hd / 2, j = i % half;
          double ang = (pos0 + t) * exp(-2.0 * j / hd * log(theta));
          double a = x[row * ld + h * hd + j], b = x[row * ld + h * hd + j + half];
          v = i < half ? a * cos(ang) - b * sin(ang) : a * sin(ang) + b * cos(ang);
        }
        out[row * ld + c] = v;
      }
}

static void test_rope(void **state) {
  (void)state;
  t_rng r = {g_seed + 1};
  int n_seq = 3, T = 11, nh = 4, hd = 16, ld = nh * hd + 24, pos0 = 5;
  double theta = 500000.0;
  size_t n = (size_t)n_seq * T * ld;
  float *x = rand_vec(&r, n, 1.0), *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
  double *ref = malloc(sizeof(double) * n);
  memcpy(a, x, sizeof(float) * n);
  memcpy(b, x, sizeof(float) * n);
  rope_double(n_seq, T, pos0, nh, hd, theta, x, ld, ref);
  e8q_rope(n_seq, T, pos0, nh, hd, theta, a, ld);
  e8q_rope_ref(n_seq, T, pos0, nh, hd, theta, b, ld);
  expect_close(a, ref, n, 1e-5, 2e-6, "rope");
  expect_close(b, ref, n, 1e-5, 2e-6, "rope_ref");
  /* columns past n_heads*hd untouched (bitwise) */
  for (size_t row = 0; row < (size_t)n_seq * T; row++)
    for (int c = nh * hd; c < ld; c++) assert_true(a[row * ld + c] == x[row * ld + c]);
  /* relative position: <rope(q,p), rope(k,p')> depends only on p - p' */
  float q[16], k[16], q1[16], k1[16], q2[16], k2[16];
  for (int i = 0; i < 16; i++) q[i] = (float)t_rng_normal(&r), k[i] = (float)t_rng_normal(&r);
  memcpy(q1, q, sizeof q), memcpy(k1, k, sizeof k), memcpy(q2, q, sizeof q), memcpy(k2, k, sizeof k);
  e8q_rope(1, 1, 9, 1, 16, 10000.0, q1, 16);
  e8q_rope(1, 1, 3, 1, 16, 10000.0, k1, 16);
  e8q_rope(1, 1, 106, 1, 16, 10000.0, q2, 16);
  e8q_rope(1, 1, 100, 1, 16, 10000.0, k2, 16);
  double d1 = 0, d2 = 0;
  for (int i = 0; i < 16; i++) d1 += (double)q1[i] * k1[i], d2 += (double)q2[i] * k2[i];
  T_NEAR(d1, d2, 1e-4 * (1 + fabs(d1)), "rope relative-position dot product");
  free(x), free(a), free(b), free(ref);
}

/* ---------------------------------------------------------------- attention */
static void attention_double(int n_seq, int T, int nh, int nkv, int hd, const float *qkv, double *out) {
  int ld = (nh + 2 * nkv) * hd;
  double *p = malloc(sizeof(double) * T);
  for (int s = 0; s < n_seq; s++)
    for (int h = 0; h < nh; h++) {
      int kvh = h * nkv / nh;
      for (int t = 0; t < T; t++) {
        const float *q = qkv + ((size_t)s * T + t) * ld + h * hd;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= t; j++) {
          const float *k = qkv + ((size_t)s * T + j) * ld + (nh + kvh) * hd;
          double d = 0;
          for (int i = 0; i < hd; i++) d += (double)q[i] * k[i];
          p[j] = d / sqrt((double)hd);
          if (p[j] > mx) mx = p[j];
        }
        for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        for (int i = 0; i < hd; i++) {
          double acc = 0;
          for (int j = 0; j <= t; j++) acc += p[j] / sum * qkv[((size_t)s * T + j) * ld + (nh + nkv + kvh) * hd + i];
          out[((size_t)s * T + t) * nh * hd + h * hd + i] = acc;
        }
      }
    }
  free(p);
}

static void check_attention(int n_seq, int T, int nh, int nkv, int hd, uint64_t seed) {
  t_rng r = {seed};
  int ld = (nh + 2 * nkv) * hd;
  size_t n_in = (size_t)n_seq * T * ld, n_out = (size_t)n_seq * T * nh * hd;
  float *qkv = rand_vec(&r, n_in, 1.5);
  float *a = malloc(sizeof(float) * n_out), *b = malloc(sizeof(float) * n_out);
  double *ref = malloc(sizeof(double) * n_out);
  attention_double(n_seq, T, nh, nkv, hd, qkv, ref);
  e8q_attention(n_seq, T, nh, nkv, hd, qkv, a);
  e8q_attention_ref(n_seq, T, nh, nkv, hd, qkv, b);
  expect_close(a, ref, n_out, 1e-4, 1e-5, "attention");
  expect_close(b, ref, n_out, 1e-4, 1e-5, "attention_ref");

  /* one token at a time against a cache equals the batched rows (sequence 0) */
  int kvd = nkv * hd;
  float *kc = malloc(sizeof(float) * T * kvd), *vc = malloc(sizeof(float) * T * kvd);
  float *o = malloc(sizeof(float) * nh * hd), *att = malloc(sizeof(float) * nh * T);
  float *o_ref = malloc(sizeof(float) * nh * hd);
  double *o_d = malloc(sizeof(double) * nh * hd);
  for (int t = 0; t < T; t++) {
    memcpy(kc + (size_t)t * kvd, qkv + (size_t)t * ld + nh * hd, sizeof(float) * kvd);
    memcpy(vc + (size_t)t * kvd, qkv + (size_t)t * ld + nh * hd + kvd, sizeof(float) * kvd);
    e8q_attention_step(t, nh, nkv, hd, qkv + (size_t)t * ld, kc, vc, o, att);
    expect_close(o, ref + (size_t)t * nh * hd, (size_t)nh * hd, 1e-4, 1e-5, "attention_step");
    e8q_attention_step_ref(t, nh, nkv, hd, qkv + (size_t)t * ld, kc, vc, o_ref, att);
    expect_close(o_ref, ref + (size_t)t * nh * hd, (size_t)nh * hd, 1e-5, 1e-6, "attention_step_ref");
    /* the fast step holds to its _ref */
    for (int i = 0; i < nh * hd; i++) o_d[i] = o_ref[i];
    expect_close(o, o_d, (size_t)nh * hd, 1e-4, 1e-5, "attention_step vs _ref");
  }
  free(qkv), free(a), free(b), free(ref), free(kc), free(vc), free(o), free(att), free(o_ref), free(o_d);
}

static void test_attention(void **state) {
  (void)state;
  check_attention(2, 9, 4, 2, 8, g_seed + 2);   /* GQA */
  check_attention(1, 33, 3, 3, 16, g_seed + 3); /* MHA, odd length */
  check_attention(3, 20, 8, 1, 4, g_seed + 4);  /* MQA */
  check_attention(1, 300, 2, 1, 8, g_seed + 7); /* more rows than one query block */
}

/* ---------------------------------------------------------------- swiglu, softmax, nll */
static void test_swiglu_softmax_nll(void **state) {
  (void)state;
  t_rng r = {g_seed + 5};
  int T = 5, H = 43;
  float *ug = rand_vec(&r, (size_t)T * 2 * H, 4.0), *h = malloc(sizeof(float) * T * H);
  double *ref = malloc(sizeof(double) * T * H);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < H; i++) {
      double up = ug[t * 2 * H + i], g = ug[t * 2 * H + H + i];
      ref[t * H + i] = g / (1 + exp(-g)) * up;
    }
  e8q_swiglu(T, H, ug, h);
  expect_close(h, ref, (size_t)T * H, 1e-5, 1e-6, "swiglu");
  float *h_ref = malloc(sizeof(float) * T * H);
  double *h_d = malloc(sizeof(double) * T * H);
  e8q_swiglu_ref(T, H, ug, h_ref);
  expect_close(h_ref, ref, (size_t)T * H, 1e-6, 1e-7, "swiglu_ref");
  for (int i = 0; i < T * H; i++) h_d[i] = h_ref[i];
  expect_close(h, h_d, (size_t)T * H, 1e-5, 1e-6, "swiglu vs _ref");
  free(h_ref), free(h_d);

  int V = 301;
  float *l = rand_vec(&r, V, 8.0), *p = malloc(sizeof(float) * V);
  l[17] = 80.0f; /* large logit: the max-subtraction must hold */
  memcpy(p, l, sizeof(float) * V);
  e8q_softmax(V, p);
  double mx = 80.0, z = 0;
  for (int i = 0; i < V; i++) z += exp(l[i] - mx);
  double *pr = malloc(sizeof(double) * V);
  for (int i = 0; i < V; i++) pr[i] = exp(l[i] - mx) / z;
  expect_close(p, pr, V, 1e-5, 1e-9, "softmax");
  float *p_ref = malloc(sizeof(float) * V);
  double *p_d = malloc(sizeof(double) * V);
  memcpy(p_ref, l, sizeof(float) * V);
  e8q_softmax_ref(V, p_ref);
  expect_close(p_ref, pr, V, 1e-6, 1e-12, "softmax_ref");
  for (int i = 0; i < V; i++) p_d[i] = p_ref[i];
  expect_close(p, p_d, V, 1e-5, 1e-9, "softmax vs _ref");
  free(p_ref), free(p_d);
  for (int tgt = 0; tgt < V; tgt += 50) {
    double want = log(z) - ((double)l[tgt] - mx); /* -log softmax, exact in double */
    T_NEAR(e8q_nll(V, l, tgt), want, 1e-9 * (1 + want), "nll");
  }
  T_NEAR(e8q_nll(V, l, 17), log(z), 1e-9, "nll of the max");
  assert_int_equal(e8q_argmax(V, l), 17);
  E8Q_EXPECT_FATAL(e8q_nll(V, l, V), "target id 301", "outside the vocabulary");
  free(ug), free(h), free(ref), free(l), free(p), free(pr);
}

/* ---------------------------------------------------------------- linear */
static void test_linear(void **state) {
  (void)state;
  t_rng r = {g_seed + 6};
  int shapes[][3] = {{1, 7, 13}, {5, 64, 172}, {33, 96, 40}};
  for (size_t s = 0; s < 3; s++) {
    int T = shapes[s][0], m = shapes[s][1], n = shapes[s][2];
    e8q_linear L = {.m = m, .n = n, .w = rand_vec(&r, (size_t)m * n, 1.0), .q = NULL};
    float *x = rand_vec(&r, (size_t)T * n, 1.0), *y = malloc(sizeof(float) * T * m), *yr = malloc(sizeof(float) * T * m);
    double *ref = malloc(sizeof(double) * T * m);
    e8q_linear_forward(&L, T, x, y);
    e8q_linear_forward_ref(&L, T, x, yr);
    for (int i = 0; i < T * m; i++) ref[i] = yr[i];
    expect_close(y, ref, (size_t)T * m, 1e-5, 1e-5, "linear vs _ref");
    free(L.w), free(x), free(y), free(yr), free(ref);
  }
  /* dense bfloat16 (shard/model.h: w_bf16): one token through e8q_matvec_bf16, more through f32
   * panels of 256 rows and sgemm (300 rows: two panels); against the float64 _ref, within the
   * summation bound of any order, gamma(n + 1) * sum |w x| (see test_matvec_bf16) */
  for (int T = 1; T <= 6; T += 5) {
    const int m = 300, n = 131;
    uint16_t *Wb = malloc(sizeof(uint16_t) * (size_t)m * n);
    for (size_t i = 0; i < (size_t)m * n; i++) Wb[i] = e8q_f32_to_bf16((float)t_rng_normal(&r));
    e8q_linear L = {.m = m, .n = n, .w = NULL, .q = NULL, .w_bf16 = Wb};
    float *x = rand_vec(&r, (size_t)T * n, 1.0), *y = malloc(sizeof(float) * T * m), *yr = malloc(sizeof(float) * T * m);
    e8q_linear_forward(&L, T, x, y);
    e8q_linear_forward_ref(&L, T, x, yr);
    for (int t = 0; t < T; t++)
      for (int i = 0; i < m; i++) {
        double mag = 0;
        for (int j = 0; j < n; j++) mag += fabs((double)e8q_bf16_to_f32(Wb[(size_t)i * n + j]) * x[(size_t)t * n + j]);
        const double tol = (n + 1) * 0x1p-24 / (1 - (n + 1) * 0x1p-24) * mag + 0x1p-24 * mag;
        T_NEAR(y[(size_t)t * m + i], yr[(size_t)t * m + i], tol, T == 1 ? "bf16 linear, 1 token" : "bf16 linear, 6 tokens");
      }
    free(Wb), free(x), free(y), free(yr);
  }
  e8q_linear none = {.m = 3, .n = 4, .w = NULL, .q = NULL};
  float x[4] = {0}, y[3];
  E8Q_EXPECT_FATAL(e8q_linear_forward(&none, 1, x, y), "neither dense weights nor a quantized form");
}

/* ---------------------------------------------------------------- float16 head */
static void test_matvec_f16(void **state) {
  (void)state;
  t_rng r = {g_seed + 7};
  /* float16 bits of every kind: normal, subnormal, zero, both signs; odd widths for the tails */
  const int shapes[][2] = {{1, 1}, {37, 15}, {300, 576}, {5, 1000}, {1030, 17}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int m = shapes[s][0], n = shapes[s][1];
    uint16_t *W = malloc(sizeof(uint16_t) * (size_t)m * n + 2);
    uint16_t *Wu = W + 1; /* odd address of a 2-byte element: unaligned to 4 */
    for (size_t i = 0; i < (size_t)m * n; i++) {
      uint16_t h = (uint16_t)(t_rng_u64(&r) & 0xffff);
      if (((h >> 10) & 0x1f) == 0x1f) h &= 0xbfff; /* no Inf/NaN */
      Wu[i] = h;
    }
    float *x = rand_vec(&r, (size_t)n, 1.0), *y = malloc(sizeof(float) * m), *yr = malloc(sizeof(float) * m);
    double *ref = malloc(sizeof(double) * m), *mag = malloc(sizeof(double) * m);
    e8q_matvec_f16(m, n, Wu, x, y);
    e8q_matvec_f16_ref(m, n, Wu, x, yr);
    for (int i = 0; i < m; i++) {
      ref[i] = 0, mag[i] = 0;
      for (int j = 0; j < n; j++) { /* the definition, from the float16 bits by hand */
        const uint16_t h = Wu[(size_t)i * n + j];
        const int e = (h >> 10) & 0x1f, f = h & 0x3ff;
        const double v = (h & 0x8000 ? -1 : 1) * (e ? ldexp(1024 + f, e - 25) : ldexp(f, -24));
        ref[i] += v * x[j];
        mag[i] += fabs(v * x[j]);
      }
      if (!(fabs(y[i] - ref[i]) <= 1e-5 * mag[i] + 1e-30) || !(fabs(yr[i] - ref[i]) <= 1e-6 * mag[i] + 1e-30))
        fail_msg("matvec_f16 [%d x %d] row %d: %.9g, _ref %.9g, definition %.9g (seed %llu)", m, n, i, (double)y[i],
                 (double)yr[i], ref[i], (unsigned long long)g_seed);
    }
    free(W), free(x), free(y), free(yr), free(ref), free(mag);
  }
  for (uint32_t h = 0; h < 0x10000; h++) { /* the scalar conversion, every value */
    const int e = (h >> 10) & 0x1f, f = h & 0x3ff;
    const float v = e8q_f16_to_f32((uint16_t)h);
    if (e == 0x1f) {
      assert_true(f ? isnan(v) : isinf(v) && (v < 0) == ((h & 0x8000) != 0));
    } else {
      const double want = (h & 0x8000 ? -1 : 1) * (e ? ldexp(1024 + f, e - 25) : ldexp(f, -24));
      assert_true(v == want && !!signbit(v) == ((h & 0x8000) != 0));
    }
  }
}

/* ---------------------------------------------------------------- bfloat16 dense weights
 * Error bound: a sum of n products evaluated in float32, where each term reaches the total
 * through at most d roundings (one per FMA or addition on its way), differs from the exact sum
 * by at most gamma(d) * sum_j |w_j x_j| with gamma(d) = d u / (1 - d u), u = 2^-24 (Higham,
 * Accuracy and Stability, §3.1; the products are exact inside an FMA, or add one rounding).
 * d per path (rows_* in kernels/matvec_f16.c): scalar n + 1 (product, addition); AVX2 n/8 FMAs
 * per lane + 3 (lane sum) + 7 (scalar tail) + 1; AVX-512 n/64 + 3 FMAs in a0 (every 64-block and
 * the last 16-blocks) + 2 (accumulator sums) + 4 (lane sum) + 1. A product that underflows loses
 * up to 2^-150 more, in absolute terms: n * 2^-149 covers them. */
static double sum_gamma(double d) { return d * 0x1p-24 / (1 - d * 0x1p-24); }
static double bf16_depth(int path, int n) {
  return path == 2 ? n / 64 + 10 : path == 1 ? n / 8 + 11 : n + 1;
}

/* bfloat16 bits of every finite kind (normal, subnormal, zero, both signs), exponents limited so
 * that no sum overflows float32 */
static uint16_t rand_bf16(t_rng *r) {
  const uint64_t v = t_rng_u64(r);
  const uint16_t sign = (uint16_t)(v & 0x8000), man = (uint16_t)((v >> 16) & 0x7f);
  const unsigned e = (unsigned)((v >> 32) % 160u); /* 0 (subnormal/zero) .. 2^32 */
  return (uint16_t)(sign | (e << 7) | man);
}
/* the value of bfloat16 bits from the definition (not the shift the kernels use) */
static double bf16_def(uint16_t h) {
  const int e = (h >> 7) & 0xff, f = h & 0x7f;
  return (h & 0x8000 ? -1 : 1) * (e ? ldexp(128 + f, e - 134) : ldexp(f, -133));
}

static void test_matvec_bf16(void **state) {
  (void)state;
  t_rng r = {g_seed + 8};
  /* odd widths for the tails (n % 64, n % 16, n % 8), a shape over the OpenMP threshold */
  const int shapes[][2] = {{1, 1}, {37, 15}, {300, 576}, {5, 1000}, {1030, 17}, {3, 4103}, {777, 515}};
  int ran[3] = {0, 0, 0};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int m = shapes[s][0], n = shapes[s][1];
    uint16_t *W = malloc(sizeof(uint16_t) * (size_t)m * n + 2);
    uint16_t *Wu = W + 1; /* odd address of a 2-byte element: unaligned to 4 */
    for (size_t i = 0; i < (size_t)m * n; i++) Wu[i] = rand_bf16(&r);
    Wu[0] = 0x8000;                    /* -0 */
    if ((size_t)m * n > 2) Wu[1] = 1; /* the smallest subnormal */
    float *x = rand_vec(&r, (size_t)n, 1.0), *y = malloc(sizeof(float) * m), *yr = malloc(sizeof(float) * m);
    double *ref = malloc(sizeof(double) * m), *mag = malloc(sizeof(double) * m);
    for (int i = 0; i < m; i++) {
      ref[i] = 0, mag[i] = 0;
      for (int j = 0; j < n; j++) { /* exact: 8-bit significands times 24-bit ones, in double */
        const double v = bf16_def(Wu[(size_t)i * n + j]) * x[j];
        ref[i] += v;
        mag[i] += fabs(v);
      }
    }
    const double tiny = n * 0x1p-149;
    e8q_matvec_bf16_ref(m, n, Wu, x, yr); /* double sums (error n 2^-53 mag), then one rounding to float */
    for (int i = 0; i < m; i++)
      if (!(fabs(yr[i] - ref[i]) <= 0x1p-24 * fabs(ref[i]) + (n + 1) * 0x1p-53 * mag[i] + 0x1p-149))
        fail_msg("matvec_bf16_ref [%d x %d] row %d: %.9g, definition %.9g (seed %llu)", m, n, i, (double)yr[i], ref[i],
                 (unsigned long long)g_seed);
    for (int path = -1; path <= 2; path++) { /* -1: the dispatch (whichever path it picked) */
      for (int i = 0; i < m; i++) y[i] = NAN;
      if (path < 0)
        e8q_matvec_bf16(m, n, Wu, x, y);
      else if (!e8q_matvec_bf16_path(path, m, n, Wu, x, y))
        continue;
      else
        ran[path]++;
      const double g = sum_gamma(path < 0 ? bf16_depth(0, n) : bf16_depth(path, n));
      for (int i = 0; i < m; i++)
        if (!(fabs(y[i] - ref[i]) <= g * mag[i] + tiny))
          fail_msg("matvec_bf16 path %d [%d x %d] row %d: %.9g, definition %.9g, bound %.3g (seed %llu)", path, m, n, i,
                   (double)y[i], ref[i], g * mag[i] + tiny, (unsigned long long)g_seed);
    }
    free(W), free(x), free(y), free(yr), free(ref), free(mag);
  }
  assert_true(ran[0] > 0); /* the scalar path runs everywhere */
  if (!ran[1]) printf("test_matvec_bf16: this CPU has no AVX2+FMA: that path not tested\n");
  if (!ran[2]) printf("test_matvec_bf16: this CPU has no AVX-512F: that path not tested\n");
  /* the conversions, every value: bf16 -> f32 against the definition, and back unchanged */
  for (uint32_t h = 0; h < 0x10000; h++) {
    const int e = (h >> 7) & 0xff, f = h & 0x7f;
    const float v = e8q_bf16_to_f32((uint16_t)h);
    if (e == 0xff) {
      assert_true(f ? isnan(v) : isinf(v) && (v < 0) == ((h & 0x8000) != 0));
      if (f) assert_true((e8q_f32_to_bf16(v) & 0x7fc0) == 0x7fc0); /* a quiet NaN */
    } else {
      assert_true(v == bf16_def((uint16_t)h) && !!signbit(v) == ((h & 0x8000) != 0));
      assert_int_equal(e8q_f32_to_bf16(v), h);
    }
  }
  /* rounding to nearest, ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 */
  assert_int_equal(e8q_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  assert_int_equal(e8q_f32_to_bf16(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82);
  assert_int_equal(e8q_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  assert_int_equal(e8q_f32_to_bf16(0x1.fffffep127f), 0x7f80); /* FLT_MAX rounds up to Inf */
}

int main(void) {
  g_seed = t_fresh_seed("test_forward_ops");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rmsnorm), cmocka_unit_test(test_rope), cmocka_unit_test(test_attention),
      cmocka_unit_test(test_swiglu_softmax_nll), cmocka_unit_test(test_linear), cmocka_unit_test(test_matvec_f16),
      cmocka_unit_test(test_matvec_bf16),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
