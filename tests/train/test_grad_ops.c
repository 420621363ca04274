/* tests/train/test_grad_ops.c: the backward ops of kernels/transformer_grad.h held to central
 * finite differences of float64 forwards written here from the definitions (each op alone, then
 * a whole composed Llama block with an MSE loss), fast paths held to their _ref twins with 1
 * and 2 OpenMP threads, and the losses held to their definitions. Fresh random inputs per run
 * (E8Q_TEST_SEED repeats one).
 *
 * Tolerances. Central differences in double with h = 1e-5 are exact to about 1e-9 relative here,
 * so the bound measures the analytic gradient: the fp32 kernels (fast and _ref, whose outputs
 * are float) must satisfy |g - fd| <= rtol (|fd| + rms(fd)) with rtol = 1e-5 for a single op
 * and 1e-4 for the composed block (a dozen fp32 ops deep); the errors seen are ~1e-7 and ~1e-6.
 * Fast against _ref: |a - b| <= 1e-5 (|b| + rms(b)) (fp32 and BLAS sums against double sums;
 * 1e-6 for the cross-entropies). Fast with 1 and 2 threads: the same bits. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/transformer.h"
#include "kernels/transformer_grad.h"
#include "ref64.h"
#include "testutil.h"

static uint64_t g_seed;

/* ---------------------------------------------------------------- helpers */

static float *copy_f(const float *x, size_t n) {
  float *y = malloc(sizeof(float) * (n ? n : 1));
  memcpy(y, x, sizeof(float) * n);
  return y;
}

/* |a - b| <= rtol (|b| + rms(b)) elementwise */
static void expect_close_rms(const float *a, const float *b, size_t n, double rtol, const char *what) {
  double ss = 0.0;
  for (size_t i = 0; i < n; i++) ss += (double)b[i] * b[i];
  double rms = sqrt(ss / (double)(n ? n : 1)) + 1e-30;
  for (size_t i = 0; i < n; i++) {
    double tol = rtol * (fabs((double)b[i]) + rms);
    if (!(fabs((double)a[i] - b[i]) <= tol))
      fail_msg("%s[%zu]: %.9g vs %.9g (tolerance %.3g, seed %llu)", what, i, (double)a[i], (double)b[i], tol,
               (unsigned long long)g_seed);
  }
}

static void expect_same_bits(const void *a, const void *b, size_t bytes, const char *what) {
  if (memcmp(a, b, bytes) != 0) fail_msg("%s: 1 and 2 threads give different bits (seed %llu)", what, (unsigned long long)g_seed);
}

/* ---------------------------------------------------------------- float64 forwards, from the definitions */

static void swiglu_d(int T, int H, const double *ug, double *h) {
  for (int t = 0; t < T; t++)
    for (int i = 0; i < H; i++) {
      double u = ug[(size_t)t * 2 * H + i], g = ug[(size_t)t * 2 * H + H + i];
      h[(size_t)t * H + i] = g / (1.0 + exp(-g)) * u;
    }
}

/* sum_t -sum_v p log softmax(z) */
static double xent_d(int T, int V, const double *z, const double *p) {
  double L = 0.0;
  for (int t = 0; t < T; t++) {
    const double *zr = z + (size_t)t * V;
    double mx = zr[0], s = 0.0;
    for (int v = 1; v < V; v++) mx = zr[v] > mx ? zr[v] : mx;
    for (int v = 0; v < V; v++) s += exp(zr[v] - mx);
    for (int v = 0; v < V; v++) L -= p[(size_t)t * V + v] * (zr[v] - mx - log(s));
  }
  return L;
}

/* ---------------------------------------------------------------- RMSNorm */

typedef struct {
  int T, d;
  double eps, *x, *w, *c;
} rms_ctx;

static double rms_loss(void *vc) {
  rms_ctx *c = vc;
  double *y = malloc(sizeof(double) * c->T * c->d);
  rmsnorm_d(c->T, c->d, c->x, c->w, c->eps, y);
  double L = dot_d(y, c->c, (size_t)c->T * c->d);
  free(y);
  return L;
}

static void test_rmsnorm_grad(void **state) {
  (void)state;
  t_rng r = {g_seed};
  int T = 7, d = 13;
  float eps = 0.05f; /* large enough that a gradient ignoring eps fails the bound */
  size_t n = (size_t)T * d;
  float *x = rand_vec(&r, n, 1.5), *w = rand_vec(&r, d, 1.0), *dy = rand_vec(&r, n, 1.0);
  float *dw0 = rand_vec(&r, d, 1.0);
  rms_ctx c = {T, d, eps, to_double(x, n), to_double(w, d), to_double(dy, n)};
  for (int variant = 0; variant < 2; variant++) {
    void (*fn)(int, int, const float *, const float *, float, const float *, float *, float *) =
        variant ? e8q_rmsnorm_backward_ref : e8q_rmsnorm_backward;
    const char *name = variant ? "rmsnorm_backward_ref" : "rmsnorm_backward";
    float *dx = malloc(sizeof(float) * n), *dw = copy_f(dw0, d), *dwinc = malloc(sizeof(float) * d);
    fn(T, d, x, w, eps, dy, dx, dw);
    for (int i = 0; i < d; i++) dwinc[i] = dw[i] - dw0[i]; /* accumulated onto dw0 */
    char what[64];
    snprintf(what, sizeof what, "%s dx", name);
    fd_check(what, rms_loss, &c, c.x, n, dx, (fd_opts){n, 1e-5, 0, &r});
    snprintf(what, sizeof what, "%s dw (accumulated)", name);
    fd_check(what, rms_loss, &c, c.w, d, dwinc, (fd_opts){d, 1e-5, 0, &r});
    /* dx aliasing dy, and the NULL outputs */
    float *alias = copy_f(dy, n), *dw2 = calloc(d, sizeof(float));
    fn(T, d, x, w, eps, alias, alias, dw2);
    for (int i = 0; i < d; i++) T_NEAR(dw2[i], dwinc[i], 1e-5 * (1 + fabs(dwinc[i])), "dw with dx aliasing dy");
    assert_memory_equal(alias, dx, sizeof(float) * n);
    float *dx2 = malloc(sizeof(float) * n);
    fn(T, d, x, w, eps, dy, dx2, NULL);
    assert_memory_equal(dx2, dx, sizeof(float) * n);
    fn(T, d, x, w, eps, dy, NULL, dw2); /* dx NULL: dw accumulates a second time */
    for (int i = 0; i < d; i++) T_NEAR(dw2[i], 2 * dwinc[i], 1e-5 * (1 + fabs(dwinc[i])), "dw accumulated twice");
    free(dx), free(dw), free(dwinc), free(alias), free(dw2), free(dx2);
  }
  free(x), free(w), free(dy), free(dw0), free(c.x), free(c.w), free(c.c);
}

/* ---------------------------------------------------------------- RoPE */

typedef struct {
  int n_seq, T, pos0, nh, hd, ld;
  double theta, *x, *c;
} rope_ctx;

static double rope_loss(void *vc) {
  rope_ctx *c = vc;
  size_t n = (size_t)c->n_seq * c->T * c->ld;
  double *y = malloc(sizeof(double) * n);
  memcpy(y, c->x, sizeof(double) * n);
  rope_d(c->n_seq, c->T, c->pos0, c->nh, c->hd, c->theta, y, c->ld);
  double L = dot_d(y, c->c, n);
  free(y);
  return L;
}

static void test_rope_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 1};
  /* hd 10: even, not a power of two; 7 columns past the heads are passed through */
  int n_seq = 2, T = 7, pos0 = 37, nh = 3, hd = 10, ld = nh * hd + 7;
  double theta = 10000.0;
  size_t n = (size_t)n_seq * T * ld;
  float *x = rand_vec(&r, n, 1.0), *dy = rand_vec(&r, n, 1.0);
  rope_ctx c = {n_seq, T, pos0, nh, hd, ld, theta, to_double(x, n), to_double(dy, n)};
  float *g = copy_f(dy, n), *gr = copy_f(dy, n);
  e8q_rope_backward(n_seq, T, pos0, nh, hd, theta, g, ld);
  e8q_rope_backward_ref(n_seq, T, pos0, nh, hd, theta, gr, ld);
  fd_check("rope_backward", rope_loss, &c, c.x, n, g, (fd_opts){n, 1e-5, 0, &r});
  fd_check("rope_backward_ref", rope_loss, &c, c.x, n, gr, (fd_opts){n, 1e-5, 0, &r});
  /* the backward is the inverse: backward(forward(x)) = x */
  float *y = copy_f(x, n);
  e8q_rope(n_seq, T, pos0, nh, hd, theta, y, ld);
  e8q_rope_backward(n_seq, T, pos0, nh, hd, theta, y, ld);
  for (size_t i = 0; i < n; i++) T_NEAR(y[i], x[i], 1e-5 * (1 + fabs(x[i])), "rope_backward(rope(x))");
  E8Q_EXPECT_FATAL(e8q_rope_backward(1, 1, 0, 1, 7, theta, y, 7), "head_dim 7 is odd");
  free(x), free(dy), free(g), free(gr), free(y), free(c.x), free(c.c);
}

/* ---------------------------------------------------------------- attention */

typedef struct {
  int n_seq, T, nh, nkv, hd;
  double *qkv, *c;
} att_ctx;

static double att_loss(void *vc) {
  att_ctx *c = vc;
  size_t no = (size_t)c->n_seq * c->T * c->nh * c->hd;
  double *o = malloc(sizeof(double) * no);
  attention_d(c->n_seq, c->T, c->nh, c->nkv, c->hd, c->qkv, o);
  double L = dot_d(o, c->c, no);
  free(o);
  return L;
}

static void test_attention_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 2};
  /* GQA 6/2 with hd 6, multi-head 4/4 with hd 10, multi-query 3/1 with hd 4 */
  int cfg[][3] = {{6, 2, 6}, {4, 4, 10}, {3, 1, 4}};
  for (int k = 0; k < 3; k++) {
    int n_seq = 2, T = 7, nh = cfg[k][0], nkv = cfg[k][1], hd = cfg[k][2], ld = (nh + 2 * nkv) * hd;
    size_t n = (size_t)n_seq * T * ld, no = (size_t)n_seq * T * nh * hd;
    float *qkv = rand_vec(&r, n, 1.2), *dout = rand_vec(&r, no, 1.0);
    att_ctx c = {n_seq, T, nh, nkv, hd, to_double(qkv, n), to_double(dout, no)};
    float *g = malloc(sizeof(float) * n), *gr = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) g[i] = gr[i] = NAN; /* written in full */
    e8q_attention_backward(n_seq, T, nh, nkv, hd, qkv, dout, g);
    e8q_attention_backward_ref(n_seq, T, nh, nkv, hd, qkv, dout, gr);
    char what[64];
    snprintf(what, sizeof what, "attention_backward %d/%d hd %d", nh, nkv, hd);
    fd_check(what, att_loss, &c, c.qkv, n, g, (fd_opts){n, 1e-5, 0, &r});
    snprintf(what, sizeof what, "attention_backward_ref %d/%d hd %d", nh, nkv, hd);
    fd_check(what, att_loss, &c, c.qkv, n, gr, (fd_opts){n, 1e-5, 0, &r});
    free(qkv), free(dout), free(g), free(gr), free(c.qkv), free(c.c);
  }
  float z[24] = {0};
  E8Q_EXPECT_FATAL(e8q_attention_backward(1, 1, 3, 2, 2, z, z, z), "3 heads not a multiple of 2 kv heads");
}

/* ---------------------------------------------------------------- SwiGLU */

typedef struct {
  int T, H;
  double *ug, *c;
} swiglu_ctx;

static double swiglu_loss(void *vc) {
  swiglu_ctx *c = vc;
  double *h = malloc(sizeof(double) * c->T * c->H);
  swiglu_d(c->T, c->H, c->ug, h);
  double L = dot_d(h, c->c, (size_t)c->T * c->H);
  free(h);
  return L;
}

static void test_swiglu_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 3};
  int T = 7, H = 13;
  size_t n = (size_t)T * 2 * H;
  float *ug = rand_vec(&r, n, 3.0), *dh = rand_vec(&r, (size_t)T * H, 1.0);
  swiglu_ctx c = {T, H, to_double(ug, n), to_double(dh, (size_t)T * H)};
  float *g = malloc(sizeof(float) * n), *gr = malloc(sizeof(float) * n);
  e8q_swiglu_backward(T, H, ug, dh, g);
  e8q_swiglu_backward_ref(T, H, ug, dh, gr);
  fd_check("swiglu_backward", swiglu_loss, &c, c.ug, n, g, (fd_opts){n, 1e-5, 0, &r});
  fd_check("swiglu_backward_ref", swiglu_loss, &c, c.ug, n, gr, (fd_opts){n, 1e-5, 0, &r});
  /* saturated gates stay finite: silu'(-100) = 0, silu'(100) = 1 */
  float ugx[4] = {2.0f, 3.0f, -100.0f, 100.0f}, dhx[2] = {1.0f, 1.0f}, dugx[4];
  e8q_swiglu_backward(1, 2, ugx, dhx, dugx);
  T_NEAR(dugx[0], 0.0, 1e-30, "dup at gate -100");
  T_NEAR(dugx[1], 100.0, 1e-4, "dup at gate 100");
  T_NEAR(dugx[2], 0.0, 1e-30, "dgate at gate -100");
  T_NEAR(dugx[3], 3.0, 1e-6, "dgate at gate 100");
  free(ug), free(dh), free(g), free(gr), free(c.ug), free(c.c);
}

/* ---------------------------------------------------------------- dense linear */

typedef struct {
  int T, m, n;
  double *x, *W, *c;
} lin_ctx;

static double lin_loss(void *vc) {
  lin_ctx *c = vc;
  double *y = malloc(sizeof(double) * c->T * c->m);
  linear_d(c->T, c->m, c->n, c->x, c->W, y);
  double L = dot_d(y, c->c, (size_t)c->T * c->m);
  free(y);
  return L;
}

static void test_linear_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 4};
  int T = 7, m = 13, n = 11;
  float *x = rand_vec(&r, (size_t)T * n, 1.0), *W = rand_vec(&r, (size_t)m * n, 1.0), *dy = rand_vec(&r, (size_t)T * m, 1.0);
  float *dW0 = rand_vec(&r, (size_t)m * n, 1.0);
  lin_ctx c = {T, m, n, to_double(x, (size_t)T * n), to_double(W, (size_t)m * n), to_double(dy, (size_t)T * m)};
  for (int variant = 0; variant < 2; variant++) {
    void (*fn)(int, int, int, const float *, const float *, const float *, float *, float *) =
        variant ? e8q_linear_backward_ref : e8q_linear_backward;
    const char *name = variant ? "linear_backward_ref" : "linear_backward";
    float *dx = malloc(sizeof(float) * T * n), *dW = copy_f(dW0, (size_t)m * n), *inc = malloc(sizeof(float) * m * n);
    fn(T, m, n, x, W, dy, dx, dW);
    for (int i = 0; i < m * n; i++) inc[i] = dW[i] - dW0[i];
    char what[64];
    snprintf(what, sizeof what, "%s dx", name);
    fd_check(what, lin_loss, &c, c.x, (size_t)T * n, dx, (fd_opts){1000, 1e-5, 0, &r});
    snprintf(what, sizeof what, "%s dW (accumulated)", name);
    fd_check(what, lin_loss, &c, c.W, (size_t)m * n, inc, (fd_opts){1000, 1e-5, 0, &r});
    /* NULL outputs */
    float *dx2 = malloc(sizeof(float) * T * n), *dW2 = calloc((size_t)m * n, sizeof(float));
    fn(T, m, n, x, W, dy, dx2, NULL);
    assert_memory_equal(dx2, dx, sizeof(float) * T * n);
    fn(T, m, n, x, W, dy, NULL, dW2);
    for (int i = 0; i < m * n; i++) T_NEAR(dW2[i], inc[i], 1e-5 * (1 + fabs(inc[i])), "dW alone");
    free(dx), free(dW), free(inc), free(dx2), free(dW2);
  }
  free(x), free(W), free(dy), free(dW0), free(c.x), free(c.W), free(c.c);
}

/* ---------------------------------------------------------------- soft cross-entropy */

typedef struct {
  int T, V;
  double *z, *p;
} xent_ctx;

static double xent_loss(void *vc) {
  xent_ctx *c = vc;
  return xent_d(c->T, c->V, c->z, c->p);
}

/* random distributions over V, rows summing to one (in float) */
static float *rand_probs(t_rng *r, int T, int V, double sharp) {
  float *p = malloc(sizeof(float) * T * V);
  for (int t = 0; t < T; t++) {
    double s = 0.0, *e = malloc(sizeof(double) * V);
    for (int v = 0; v < V; v++) s += (e[v] = exp(sharp * t_rng_normal(r)));
    for (int v = 0; v < V; v++) p[(size_t)t * V + v] = (float)(e[v] / s);
    free(e);
  }
  return p;
}

static void test_xent_soft(void **state) {
  (void)state;
  t_rng r = {g_seed + 5};
  int T = 5, V = 17;
  size_t n = (size_t)T * V;
  float *z = rand_vec(&r, n, 3.0), *p = rand_probs(&r, T, V, 1.5), *tz = rand_vec(&r, n, 2.0);
  /* the loss is sum -p log q with q computed directly (no max subtraction) */
  double direct = 0.0;
  for (int t = 0; t < T; t++) {
    double s = 0.0;
    for (int v = 0; v < V; v++) s += exp((double)z[t * V + v]);
    for (int v = 0; v < V; v++) direct -= (double)p[t * V + v] * log(exp((double)z[t * V + v]) / s);
  }
  float *g = malloc(sizeof(float) * n), *gr = malloc(sizeof(float) * n);
  double L = e8q_xent_soft(T, V, z, p, g), Lr = e8q_xent_soft_ref(T, V, z, p, gr);
  T_NEAR(L, direct, 1e-12 * fabs(direct), "xent_soft loss vs direct");
  T_NEAR(Lr, direct, 1e-12 * fabs(direct), "xent_soft_ref loss vs direct");
  T_NEAR(e8q_xent_soft(T, V, z, p, NULL), L, 0.0, "xent_soft without a gradient");
  xent_ctx c = {T, V, to_double(z, n), to_double(p, n)};
  fd_check("xent_soft dlogits", xent_loss, &c, c.z, n, g, (fd_opts){n, 1e-5, 0, &r});
  fd_check("xent_soft_ref dlogits", xent_loss, &c, c.z, n, gr, (fd_opts){n, 1e-5, 0, &r});
  /* softmax(z) - p: every row sums to zero */
  for (int t = 0; t < T; t++) {
    double s = 0.0;
    for (int v = 0; v < V; v++) s += g[t * V + v];
    T_NEAR(s, 0.0, 1e-6, "xent_soft dlogits row sum");
  }
  /* unnormalised targets: the gradient is still the exact gradient of the returned loss */
  float *p7 = copy_f(p, n);
  for (size_t i = 0; i < n; i++) p7[i] *= 0.7f;
  for (size_t i = 0; i < n; i++) c.p[i] = p7[i];
  double L7 = e8q_xent_soft(T, V, z, p7, g);
  T_NEAR(L7, xent_d(T, V, c.z, c.p), 1e-12 * fabs(L7), "xent_soft loss, targets summing to 0.7");
  fd_check("xent_soft dlogits, mass 0.7", xent_loss, &c, c.z, n, g, (fd_opts){n, 1e-5, 0, &r});
  /* dlogits aliasing logits */
  float *alias = copy_f(z, n);
  T_NEAR(e8q_xent_soft(T, V, alias, p7, alias), L7, 0.0, "xent_soft in place: loss");
  assert_memory_equal(alias, g, sizeof(float) * n);
  /* teacher logits: p = softmax(tz) in double */
  for (int t = 0; t < T; t++) {
    double mx = tz[t * V], s = 0.0;
    for (int v = 1; v < V; v++) mx = tz[t * V + v] > mx ? tz[t * V + v] : mx;
    for (int v = 0; v < V; v++) s += exp(tz[t * V + v] - mx);
    for (int v = 0; v < V; v++) c.p[t * V + v] = exp(tz[t * V + v] - mx) / s;
  }
  double Lt = e8q_xent_soft_logits(T, V, z, tz, g), Ltr = e8q_xent_soft_logits_ref(T, V, z, tz, gr);
  T_NEAR(Lt, xent_d(T, V, c.z, c.p), 1e-12 * fabs(Lt), "xent_soft_logits loss");
  T_NEAR(Ltr, Lt, 1e-12 * fabs(Lt), "xent_soft_logits_ref loss");
  fd_check("xent_soft_logits dlogits", xent_loss, &c, c.z, n, g, (fd_opts){n, 1e-5, 0, &r});
  fd_check("xent_soft_logits_ref dlogits", xent_loss, &c, c.z, n, gr, (fd_opts){n, 1e-5, 0, &r});
  float bad[2] = {0.5f, -0.1f}, zz[2] = {0};
  E8Q_EXPECT_FATAL(e8q_xent_soft(1, 2, zz, bad, NULL), "is not >= 0");
  free(z), free(p), free(tz), free(g), free(gr), free(p7), free(alias), free(c.z), free(c.p);
}

static void test_xent_extreme(void **state) {
  (void)state;
  t_rng r = {g_seed + 6};
  int T = 4, V = 9;
  size_t n = (size_t)T * V;
  float *z = malloc(sizeof(float) * n), *p = rand_probs(&r, T, V, 1.0), *g = malloc(sizeof(float) * n);
  int *top = malloc(sizeof(int) * T);
  for (int t = 0; t < T; t++) {
    top[t] = (int)(t_rng_u64(&r) % V);
    for (int v = 0; v < V; v++) z[t * V + v] = v == top[t] ? 1e4f : -1e4f;
  }
  /* log softmax is 0 at the top and -2e4 elsewhere (exp(-2e4) underflows against 1) */
  double expect = 0.0;
  for (int t = 0; t < T; t++)
    for (int v = 0; v < V; v++) expect += v == top[t] ? 0.0 : 2e4 * p[t * V + v];
  for (int variant = 0; variant < 2; variant++) {
    double L = variant ? e8q_xent_soft_ref(T, V, z, p, g) : e8q_xent_soft(T, V, z, p, g);
    assert_true(isfinite(L));
    T_NEAR(L, expect, 1e-9 * expect, "xent_soft loss at logits +-1e4");
    for (int t = 0; t < T; t++)
      for (int v = 0; v < V; v++) {
        float want = (v == top[t] ? 1.0f : 0.0f) - p[t * V + v];
        assert_true(isfinite(g[t * V + v]));
        T_NEAR(g[t * V + v], want, 1e-6, "xent_soft dlogits at logits +-1e4");
      }
  }
  /* teacher logits +-1e4 too: one-hot targets, loss 0 where student and teacher agree */
  double L = e8q_xent_soft_logits(T, V, z, z, g);
  T_NEAR(L, 0.0, 1e-9, "xent_soft_logits, identical extreme logits");
  for (size_t i = 0; i < n; i++) T_NEAR(g[i], 0.0, 1e-6, "xent_soft_logits dlogits, identical extreme logits");
  /* top-k with extreme logits */
  int ids[4] = {0, 1, 2, 3};
  float pr[4] = {0.25f, 0.25f, 0.25f, 0.25f};
  double Lk = e8q_xent_topk(1, V, z, 4, ids, pr, g);
  assert_true(isfinite(Lk));
  for (int v = 0; v < V; v++) assert_true(isfinite(g[v]));
  free(z), free(p), free(g), free(top);
}

/* ---------------------------------------------------------------- top-k cross-entropy */

static void test_xent_topk(void **state) {
  (void)state;
  t_rng r = {g_seed + 7};
  int T = 6, V = 19, k = 4;
  size_t n = (size_t)T * V;
  float *z = rand_vec(&r, n, 2.5);
  int *ids = malloc(sizeof(int) * T * k);
  float *pr = malloc(sizeof(float) * T * k);
  for (int t = 0; t < T; t++)
    for (int j = 0; j < k; j++) {
      int id;
      int fresh;
      do { /* distinct ids per token */
        id = (int)(t_rng_u64(&r) % V);
        fresh = 1;
        for (int i = 0; i < j; i++) fresh &= ids[t * k + i] != id;
      } while (!fresh);
      ids[t * k + j] = id;
      pr[t * k + j] = (float)(0.05 + t_rng_uniform(&r)) * 0.2f; /* sums well below one: mass dropped */
    }
  ids[1 * k + 2] = -1;                                     /* a padding slot */
  for (int j = 0; j < k; j++) ids[4 * k + j] = -1;         /* a token with no target */
  /* the dense renormalised targets, and the loss from the definition */
  double *pd = calloc(n, sizeof(double));
  for (int t = 0; t < T; t++) {
    double s = 0.0;
    for (int j = 0; j < k; j++)
      if (ids[t * k + j] >= 0) s += pr[t * k + j];
    for (int j = 0; j < k; j++)
      if (ids[t * k + j] >= 0) pd[(size_t)t * V + ids[t * k + j]] += pr[t * k + j] / s;
  }
  double *zd = to_double(z, n), expect = xent_d(T, V, zd, pd);
  float *g = malloc(sizeof(float) * n), *gr = malloc(sizeof(float) * n);
  double L = e8q_xent_topk(T, V, z, k, ids, pr, g), Lr = e8q_xent_topk_ref(T, V, z, k, ids, pr, gr);
  T_NEAR(L, expect, 1e-12 * fabs(expect), "xent_topk loss vs renormalised definition");
  T_NEAR(Lr, expect, 1e-12 * fabs(expect), "xent_topk_ref loss vs renormalised definition");
  xent_ctx c = {T, V, zd, pd};
  fd_check("xent_topk dlogits", xent_loss, &c, c.z, n, g, (fd_opts){n, 1e-5, 0, &r});
  fd_check("xent_topk_ref dlogits", xent_loss, &c, c.z, n, gr, (fd_opts){n, 1e-5, 0, &r});
  for (int v = 0; v < V; v++) assert_true(g[4 * V + v] == 0.0f && gr[4 * V + v] == 0.0f); /* no target */
  /* in place */
  float *alias = copy_f(z, n);
  T_NEAR(e8q_xent_topk(T, V, alias, k, ids, pr, alias), L, 0.0, "xent_topk in place: loss");
  assert_memory_equal(alias, g, sizeof(float) * n);
  /* k = V with every id equals the soft cross-entropy on the normalised distribution */
  float *p = rand_probs(&r, T, V, 1.0), *gs = malloc(sizeof(float) * n);
  int *all = malloc(sizeof(int) * n);
  for (int t = 0; t < T; t++)
    for (int v = 0; v < V; v++) all[t * V + v] = V - 1 - v;
  float *pperm = malloc(sizeof(float) * n);
  for (int t = 0; t < T; t++)
    for (int v = 0; v < V; v++) pperm[t * V + v] = p[t * V + (V - 1 - v)];
  double Lk = e8q_xent_topk(T, V, z, V, all, pperm, g), Ls = e8q_xent_soft(T, V, z, p, gs);
  T_NEAR(Lk, Ls, 1e-6 * fabs(Ls), "xent_topk with k = V vs xent_soft");
  expect_close_rms(g, gs, n, 1e-6, "xent_topk with k = V vs xent_soft, dlogits");
  int badid[1] = {V};
  float one[1] = {1.0f};
  E8Q_EXPECT_FATAL(e8q_xent_topk(1, V, z, 1, badid, one, NULL), "outside the vocabulary");
  free(z), free(ids), free(pr), free(pd), free(zd), free(g), free(gr), free(alias), free(p), free(gs), free(all),
      free(pperm);
}

/* ---------------------------------------------------------------- MSE */

static void test_mse(void **state) {
  (void)state;
  t_rng r = {g_seed + 8};
  size_t n = 1001;
  float *y = rand_vec(&r, n, 1.0), *tg = rand_vec(&r, n, 1.0), *dy = malloc(sizeof(float) * n);
  double direct = 0.0;
  for (size_t i = 0; i < n; i++) direct += ((double)y[i] - tg[i]) * ((double)y[i] - tg[i]);
  double L = e8q_mse(n, y, tg, dy);
  T_NEAR(L, direct, 1e-12 * direct, "mse loss (a sum, not a mean)");
  T_NEAR(e8q_mse_ref(n, y, tg, NULL), direct, 1e-12 * direct, "mse_ref loss");
  for (size_t i = 0; i < n; i++) {
    double e = (double)y[i] - tg[i], h = 1e-3;
    double fd = ((e + h) * (e + h) - (e - h) * (e - h)) / (2 * h); /* the loss is separable */
    T_NEAR(dy[i], fd, 1e-6 * (1 + fabs(fd)), "mse dy vs finite difference");
  }
  float *ya = copy_f(y, n);
  T_NEAR(e8q_mse(n, ya, tg, ya), L, 0.0, "mse in place: loss");
  assert_memory_equal(ya, dy, sizeof(float) * n);
  T_NEAR(e8q_mse(0, y, tg, dy), 0.0, 0.0, "mse of nothing");
  free(y), free(tg), free(dy), free(ya);
}

/* ---------------------------------------------------------------- fast vs _ref, 1 and 2 threads
 * Sizes above the kernels' parallel thresholds, so the second thread does work. */

static void test_fast_vs_ref(void **state) {
  (void)state;
  t_rng r = {g_seed + 9};
  int saved = omp_get_max_threads();
  { /* rmsnorm */
    int T = 129, d = 523;
    size_t n = (size_t)T * d;
    float *x = rand_vec(&r, n, 1.0), *w = rand_vec(&r, d, 1.0), *dy = rand_vec(&r, n, 1.0);
    float *dx[3], *dw[3];
    for (int k = 0; k < 3; k++) dx[k] = malloc(sizeof(float) * n), dw[k] = calloc(d, sizeof(float));
    for (int k = 0; k < 2; k++) {
      omp_set_num_threads(k + 1);
      e8q_rmsnorm_backward(T, d, x, w, 1e-6f, dy, dx[k], dw[k]);
    }
    e8q_rmsnorm_backward_ref(T, d, x, w, 1e-6f, dy, dx[2], dw[2]);
    expect_same_bits(dx[0], dx[1], sizeof(float) * n, "rmsnorm_backward dx");
    expect_same_bits(dw[0], dw[1], sizeof(float) * d, "rmsnorm_backward dw");
    expect_close_rms(dx[0], dx[2], n, 1e-5, "rmsnorm_backward dx vs _ref");
    expect_close_rms(dw[0], dw[2], d, 1e-5, "rmsnorm_backward dw vs _ref");
    for (int k = 0; k < 3; k++) free(dx[k]), free(dw[k]);
    free(x), free(w), free(dy);
  }
  { /* rope */
    int n_seq = 2, T = 200, nh = 8, hd = 24, ld = nh * hd + 8;
    size_t n = (size_t)n_seq * T * ld;
    float *g = rand_vec(&r, n, 1.0), *a[3];
    for (int k = 0; k < 3; k++) a[k] = copy_f(g, n);
    for (int k = 0; k < 2; k++) {
      omp_set_num_threads(k + 1);
      e8q_rope_backward(n_seq, T, 11, nh, hd, 500000.0, a[k], ld);
    }
    e8q_rope_backward_ref(n_seq, T, 11, nh, hd, 500000.0, a[2], ld);
    expect_same_bits(a[0], a[1], sizeof(float) * n, "rope_backward");
    expect_close_rms(a[0], a[2], n, 1e-5, "rope_backward vs _ref");
    for (int k = 0; k < 3; k++) free(a[k]);
    free(g);
  }
  { /* attention: T 150 spans two query blocks */
    int n_seq = 2, T = 150, nh = 6, nkv = 2, hd = 20, ld = (nh + 2 * nkv) * hd;
    size_t n = (size_t)n_seq * T * ld, no = (size_t)n_seq * T * nh * hd;
    float *qkv = rand_vec(&r, n, 1.0), *dout = rand_vec(&r, no, 1.0), *d[3];
    for (int k = 0; k < 3; k++) d[k] = malloc(sizeof(float) * n);
    for (int k = 0; k < 2; k++) {
      omp_set_num_threads(k + 1);
      e8q_attention_backward(n_seq, T, nh, nkv, hd, qkv, dout, d[k]);
    }
    e8q_attention_backward_ref(n_seq, T, nh, nkv, hd, qkv, dout, d[2]);
    expect_same_bits(d[0], d[1], sizeof(float) * n, "attention_backward");
    expect_close_rms(d[0], d[2], n, 1e-5, "attention_backward vs _ref");
    for (int k = 0; k < 3; k++) free(d[k]);
    free(qkv), free(dout);
  }
  { /* swiglu */
    int T = 100, H = 700;
    float *ug = rand_vec(&r, (size_t)T * 2 * H, 2.0), *dh = rand_vec(&r, (size_t)T * H, 1.0), *d[3];
    for (int k = 0; k < 3; k++) d[k] = malloc(sizeof(float) * T * 2 * H);
    for (int k = 0; k < 2; k++) {
      omp_set_num_threads(k + 1);
      e8q_swiglu_backward(T, H, ug, dh, d[k]);
    }
    e8q_swiglu_backward_ref(T, H, ug, dh, d[2]);
    expect_same_bits(d[0], d[1], sizeof(float) * T * 2 * H, "swiglu_backward");
    expect_close_rms(d[0], d[2], (size_t)T * 2 * H, 1e-5, "swiglu_backward vs _ref");
    for (int k = 0; k < 3; k++) free(d[k]);
    free(ug), free(dh);
  }
  { /* linear (BLAS; no threads of its own) */
    int T = 33, m = 40, n = 27;
    float *x = rand_vec(&r, (size_t)T * n, 1.0), *W = rand_vec(&r, (size_t)m * n, 1.0), *dy = rand_vec(&r, (size_t)T * m, 1.0);
    float *dx = malloc(sizeof(float) * T * n), *dxr = malloc(sizeof(float) * T * n);
    float *dW = calloc((size_t)m * n, sizeof(float)), *dWr = calloc((size_t)m * n, sizeof(float));
    e8q_linear_backward(T, m, n, x, W, dy, dx, dW);
    e8q_linear_backward_ref(T, m, n, x, W, dy, dxr, dWr);
    expect_close_rms(dx, dxr, (size_t)T * n, 1e-5, "linear_backward dx vs _ref");
    expect_close_rms(dW, dWr, (size_t)m * n, 1e-5, "linear_backward dW vs _ref");
    free(x), free(W), free(dy), free(dx), free(dxr), free(dW), free(dWr);
  }
  { /* cross-entropies */
    int T = 40, V = 300, k = 5;
    size_t n = (size_t)T * V;
    float *z = rand_vec(&r, n, 3.0), *p = rand_probs(&r, T, V, 2.0), *tz = rand_vec(&r, n, 3.0), *d[3];
    int *ids = malloc(sizeof(int) * T * k);
    float *pr = malloc(sizeof(float) * T * k);
    for (int i = 0; i < T * k; i++) ids[i] = (int)(t_rng_u64(&r) % V), pr[i] = (float)t_rng_uniform(&r);
    for (int i = 0; i < 3; i++) d[i] = malloc(sizeof(float) * n);
    for (int mode = 0; mode < 3; mode++) {
      double L[3];
      for (int i = 0; i < 3; i++) {
        if (i < 2) omp_set_num_threads(i + 1);
        L[i] = mode == 0   ? (i < 2 ? e8q_xent_soft : e8q_xent_soft_ref)(T, V, z, p, d[i])
               : mode == 1 ? (i < 2 ? e8q_xent_soft_logits : e8q_xent_soft_logits_ref)(T, V, z, tz, d[i])
                           : (i < 2 ? e8q_xent_topk : e8q_xent_topk_ref)(T, V, z, k, ids, pr, d[i]);
      }
      const char *name = mode == 0 ? "xent_soft" : mode == 1 ? "xent_soft_logits" : "xent_topk";
      char what[64];
      snprintf(what, sizeof what, "%s dlogits", name);
      expect_same_bits(d[0], d[1], sizeof(float) * n, what);
      expect_same_bits(&L[0], &L[1], sizeof(double), name);
      snprintf(what, sizeof what, "%s dlogits vs _ref", name);
      expect_close_rms(d[0], d[2], n, 1e-6, what);
      T_NEAR(L[0], L[2], 1e-12 * fabs(L[2]), name);
    }
    for (int i = 0; i < 3; i++) free(d[i]);
    free(z), free(p), free(tz), free(ids), free(pr);
  }
  { /* mse */
    size_t n = 300001;
    float *y = rand_vec(&r, n, 1.0), *tg = rand_vec(&r, n, 1.0), *d[3];
    double L[3];
    for (int k = 0; k < 3; k++) d[k] = malloc(sizeof(float) * n);
    for (int k = 0; k < 2; k++) {
      omp_set_num_threads(k + 1);
      L[k] = e8q_mse(n, y, tg, d[k]);
    }
    L[2] = e8q_mse_ref(n, y, tg, d[2]);
    expect_same_bits(d[0], d[1], sizeof(float) * n, "mse dy");
    expect_same_bits(&L[0], &L[1], sizeof(double), "mse loss");
    assert_memory_equal(d[0], d[2], sizeof(float) * n);
    T_NEAR(L[0], L[2], 1e-12 * L[2], "mse vs _ref");
    for (int k = 0; k < 3; k++) free(d[k]);
    free(y), free(tg);
  }
  omp_set_num_threads(saved);
}

/* ---------------------------------------------------------------- a whole block
 * x -> rmsnorm(w1) -> qkv linear -> rope (q and k heads, positions 0..T-1) -> attention
 *   -> o linear -> + x = x1 -> rmsnorm(w2) -> upgate linear -> swiglu -> down linear -> + x1 = y,
 * loss = sum (y - target)^2. The backward is composed from the fp32 kernels as a trainer would;
 * the finite differences are of the float64 composition of the forwards written above. */

enum { BN_SEQ = 2, BT = 7, BD = 20, BNH = 6, BNKV = 2, BHD = 6, BH = 28 };
#define BLD ((BNH + 2 * BNKV) * BHD)
#define BQ (BNH * BHD)
#define BN (BN_SEQ * BT)
static const double B_EPS = 1e-5, B_THETA = 10000.0;

typedef struct {
  double *x, *w1, *wqkv, *wo, *w2, *wug, *wdown, *tgt;
} block_d;

static double block_loss(void *vc) {
  block_d *b = vc;
  double xn[BN * BD], qkv[BN * BLD], att[BN * BQ], x1[BN * BD], ug[BN * 2 * BH], h[BN * BH], proj[BN * BD];
  rmsnorm_d(BN, BD, b->x, b->w1, B_EPS, xn);
  linear_d(BN, BLD, BD, xn, b->wqkv, qkv);
  rope_d(BN_SEQ, BT, 0, BNH + BNKV, BHD, B_THETA, qkv, BLD);
  attention_d(BN_SEQ, BT, BNH, BNKV, BHD, qkv, att);
  linear_d(BN, BD, BQ, att, b->wo, proj);
  for (int i = 0; i < BN * BD; i++) x1[i] = b->x[i] + proj[i];
  rmsnorm_d(BN, BD, x1, b->w2, B_EPS, xn);
  linear_d(BN, 2 * BH, BD, xn, b->wug, ug);
  swiglu_d(BN, BH, ug, h);
  linear_d(BN, BD, BH, h, b->wdown, proj);
  double L = 0.0;
  for (int i = 0; i < BN * BD; i++) L += (x1[i] + proj[i] - b->tgt[i]) * (x1[i] + proj[i] - b->tgt[i]);
  return L;
}

/* y = x Wᵀ in fp32 (double sums): the trainer's forward linear, which lives outside kernels */
static void linear_f(int T, int m, int n, const float *x, const float *W, float *y) {
  for (int t = 0; t < T; t++)
    for (int i = 0; i < m; i++) {
      double a = 0.0;
      for (int j = 0; j < n; j++) a += (double)x[t * n + j] * W[i * n + j];
      y[t * m + i] = (float)a;
    }
}

static void test_block_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 10};
  float *x = rand_vec(&r, BN * BD, 1.0), *w1 = rand_vec(&r, BD, 1.0), *w2 = rand_vec(&r, BD, 1.0);
  for (int i = 0; i < BD; i++) w1[i] += 1.0f, w2[i] += 1.0f;
  float *wqkv = rand_vec(&r, BLD * BD, 1.0 / sqrt(BD)), *wo = rand_vec(&r, BD * BQ, 1.0 / sqrt(BQ));
  float *wug = rand_vec(&r, 2 * BH * BD, 1.0 / sqrt(BD)), *wdown = rand_vec(&r, BD * BH, 1.0 / sqrt(BH));
  float *tgt = rand_vec(&r, BN * BD, 1.0);

  /* forward, keeping what the backward needs */
  static float xn1[BN * BD], qkv[BN * BLD], att[BN * BQ], x1[BN * BD], xn2[BN * BD], ug[BN * 2 * BH], h[BN * BH],
      proj[BN * BD], y[BN * BD];
  e8q_rmsnorm(BN, BD, x, w1, (float)B_EPS, xn1);
  linear_f(BN, BLD, BD, xn1, wqkv, qkv);
  e8q_rope(BN_SEQ, BT, 0, BNH + BNKV, BHD, B_THETA, qkv, BLD);
  e8q_attention(BN_SEQ, BT, BNH, BNKV, BHD, qkv, att);
  linear_f(BN, BD, BQ, att, wo, proj);
  for (int i = 0; i < BN * BD; i++) x1[i] = x[i] + proj[i];
  e8q_rmsnorm(BN, BD, x1, w2, (float)B_EPS, xn2);
  linear_f(BN, 2 * BH, BD, xn2, wug, ug);
  e8q_swiglu(BN, BH, ug, h);
  linear_f(BN, BD, BH, h, wdown, proj);
  for (int i = 0; i < BN * BD; i++) y[i] = x1[i] + proj[i];

  /* backward */
  static float dy[BN * BD], dx1[BN * BD], dh[BN * BH], dug[BN * 2 * BH], dxn[BN * BD], dtmp[BN * BD], datt[BN * BQ],
      dqkv[BN * BLD], dx[BN * BD];
  float *dw1 = calloc(BD, sizeof(float)), *dw2 = calloc(BD, sizeof(float));
  float *dwqkv = calloc(BLD * BD, sizeof(float)), *dwo = calloc(BD * BQ, sizeof(float));
  float *dwug = calloc(2 * BH * BD, sizeof(float)), *dwdown = calloc(BD * BH, sizeof(float));
  double L = e8q_mse(BN * BD, y, tgt, dy);
  memcpy(dx1, dy, sizeof dy); /* through the second residual */
  e8q_linear_backward(BN, BD, BH, h, wdown, dy, dh, dwdown);
  e8q_swiglu_backward(BN, BH, ug, dh, dug);
  e8q_linear_backward(BN, 2 * BH, BD, xn2, wug, dug, dxn, dwug);
  e8q_rmsnorm_backward(BN, BD, x1, w2, (float)B_EPS, dxn, dtmp, dw2);
  for (int i = 0; i < BN * BD; i++) dx1[i] += dtmp[i];
  memcpy(dx, dx1, sizeof dx1); /* through the first residual */
  e8q_linear_backward(BN, BD, BQ, att, wo, dx1, datt, dwo);
  e8q_attention_backward(BN_SEQ, BT, BNH, BNKV, BHD, qkv, datt, dqkv);
  e8q_rope_backward(BN_SEQ, BT, 0, BNH + BNKV, BHD, B_THETA, dqkv, BLD);
  e8q_linear_backward(BN, BLD, BD, xn1, wqkv, dqkv, dxn, dwqkv);
  e8q_rmsnorm_backward(BN, BD, x, w1, (float)B_EPS, dxn, dtmp, dw1);
  for (int i = 0; i < BN * BD; i++) dx[i] += dtmp[i];

  block_d b = {to_double(x, BN * BD), to_double(w1, BD), to_double(wqkv, BLD * BD), to_double(wo, BD * BQ),
               to_double(w2, BD), to_double(wug, 2 * BH * BD), to_double(wdown, BD * BH), to_double(tgt, BN * BD)};
  double Ld = block_loss(&b);
  T_NEAR(L, Ld, 1e-4 * Ld, "block loss, fp32 kernels vs float64 composition");
  fd_check("block d/dx", block_loss, &b, b.x, BN * BD, dx, (fd_opts){1000, 1e-4, 0, &r});
  fd_check("block d/d attn_norm", block_loss, &b, b.w1, BD, dw1, (fd_opts){1000, 1e-4, 0, &r});
  fd_check("block d/d ffn_norm", block_loss, &b, b.w2, BD, dw2, (fd_opts){1000, 1e-4, 0, &r});
  fd_check("block d/d Wqkv (sample)", block_loss, &b, b.wqkv, BLD * BD, dwqkv, (fd_opts){200, 1e-4, 0, &r});
  fd_check("block d/d Wo (sample)", block_loss, &b, b.wo, BD * BQ, dwo, (fd_opts){100, 1e-4, 0, &r});
  fd_check("block d/d Wupgate (sample)", block_loss, &b, b.wug, 2 * BH * BD, dwug, (fd_opts){100, 1e-4, 0, &r});
  fd_check("block d/d Wdown (sample)", block_loss, &b, b.wdown, BD * BH, dwdown, (fd_opts){100, 1e-4, 0, &r});
  free(x), free(w1), free(w2), free(wqkv), free(wo), free(wug), free(wdown), free(tgt);
  free(dw1), free(dw2), free(dwqkv), free(dwo), free(dwug), free(dwdown);
  free(b.x), free(b.w1), free(b.wqkv), free(b.wo), free(b.w2), free(b.wug), free(b.wdown), free(b.tgt);
}

int main(void) {
  g_seed = t_fresh_seed("test_grad_ops");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rmsnorm_grad), cmocka_unit_test(test_rope_grad),   cmocka_unit_test(test_attention_grad),
      cmocka_unit_test(test_swiglu_grad),  cmocka_unit_test(test_linear_grad), cmocka_unit_test(test_xent_soft),
      cmocka_unit_test(test_xent_extreme), cmocka_unit_test(test_xent_topk),   cmocka_unit_test(test_mse),
      cmocka_unit_test(test_fast_vs_ref),  cmocka_unit_test(test_block_grad),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
