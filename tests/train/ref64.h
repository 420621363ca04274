/* tests/train/ref64.h: what the training tests (test_grad_ops, test_block_train, test_e2e) share:
 * random inputs, float64 forwards written from the definitions, and the finite-difference check
 * of an analytic gradient.
 *   rmsnorm_d   y [T, d] = x / sqrt(mean(x²) + eps) ⊙ w
 *   rope_d      rotate-half RoPE of the first nh heads (hd columns each) of rows of width ld,
 *               positions pos0.. per sequence, in place
 *   attention_d causal GQA softmax attention of qkv rows [n_seq·T, (nh + 2 nkv) hd] -> out
 *               [n_seq·T, nh hd]
 *   linear_d    y = x Wᵀ, W [m, n]
 *   fd_check    central differences against the analytic gradient
 *   tiny_config_make  a tiny model's configuration
 * g_seed: the including test's seed (set by its main), printed in failure messages. */
#ifndef E8Q_TESTS_TRAIN_REF64_H
#define E8Q_TESTS_TRAIN_REF64_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "io/config.h"
#include "testutil.h"

static uint64_t g_seed; /* a tentative definition: the test file repeats it */

/* ---------------------------------------------------------------- random inputs */
static inline float *rand_vec(t_rng *r, size_t n, double scale) {
  float *x = malloc(sizeof(float) * (n ? n : 1));
  for (size_t i = 0; i < n; i++) x[i] = (float)(scale * t_rng_normal(r));
  return x;
}

static inline double *to_double(const float *x, size_t n) {
  double *y = malloc(sizeof(double) * (n ? n : 1));
  for (size_t i = 0; i < n; i++) y[i] = x[i];
  return y;
}

/* ---------------------------------------------------------------- a tiny model */
/* dim x hidden, n_layers, nh query / nkv key-value heads of hd, vocab; 64 positions, untied */
static inline e8q_config tiny_config_make(int dim, int hidden, int n_layers, int nh, int nkv, int hd, int vocab,
                                          double theta, double eps) {
  return (e8q_config){.dim = dim, .hidden_dim = hidden, .n_layers = n_layers, .n_heads = nh, .n_kv_heads = nkv,
                      .head_dim = hd, .vocab_size = vocab, .max_seq_len = 64, .rope_theta = theta, .norm_eps = eps};
}

/* ---------------------------------------------------------------- finite differences */
typedef double (*loss_fn)(void *ctx);

typedef struct {
  size_t max_check; /* 0: every element; else at most this many, drawn with r */
  double rtol;      /* |g - fd| <= rtol (|fd| + rms(fd)) */
  double min_rms;   /* rms(fd) must exceed it (0: 1e-6), else the check would be vacuous */
  t_rng *r;         /* for the draws when n > max_check */
} fd_opts;

/* Central differences of f(ctx) with respect to p[i] (p is read by f through ctx), for every i
 * when n <= max_check (or max_check is 0), else for max_check random i; each compared with the
 * analytic g[i]: |g - fd| <= rtol (|fd| + rms(fd)). Fails unless the gradient is nonzero
 * somewhere. Returns the largest |g - fd| / (|fd| + rms). */
static inline double fd_check(const char *what, loss_fn f, void *ctx, double *p, size_t n, const float *g, fd_opts o) {
  const size_t max_check = o.max_check ? o.max_check : n;
  const double rtol = o.rtol, min_rms = o.min_rms > 0 ? o.min_rms : 1e-6;
  size_t m = n <= max_check ? n : max_check;
  size_t *idx = malloc(sizeof(size_t) * (m ? m : 1));
  double *fd = malloc(sizeof(double) * (m ? m : 1));
  double ss = 0.0;
  for (size_t k = 0; k < m; k++) {
    size_t i = n <= max_check ? k : (size_t)(t_rng_u64(o.r) % n);
    idx[k] = i;
    double p0 = p[i], h = 1e-5 * (fabs(p0) > 1.0 ? fabs(p0) : 1.0);
    p[i] = p0 + h;
    double lp = f(ctx);
    p[i] = p0 - h;
    double lm = f(ctx);
    p[i] = p0;
    fd[k] = (lp - lm) / (2.0 * h);
    ss += fd[k] * fd[k];
  }
  double rms = sqrt(ss / (double)m), worst = 0.0;
  if (!(rms > min_rms)) fail_msg("%s: finite-difference gradient is zero (rms %g): the check would be vacuous", what, rms);
  for (size_t k = 0; k < m; k++) {
    double err = fabs((double)g[idx[k]] - fd[k]) / (fabs(fd[k]) + rms);
    if (err > worst) worst = err;
    if (!(err <= rtol))
      fail_msg("%s[%zu]: analytic %.9g vs finite difference %.9g (relative error %.3g > %.3g, seed %llu)", what,
               idx[k], (double)g[idx[k]], fd[k], err, rtol, (unsigned long long)g_seed);
  }
  print_message("  %-34s %5zu checked, max rel err %.2e (bound %.0e)\n", what, m, worst, rtol);
  free(idx);
  free(fd);
  return worst;
}

/* ---------------------------------------------------------------- float64 forwards, from the definitions */
static inline double dot_d(const double *a, const double *b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static inline void rmsnorm_d(int T, int d, const double *x, const double *w, double eps, double *y) {
  for (int t = 0; t < T; t++) {
    double ss = 0.0;
    for (int i = 0; i < d; i++) ss += x[t * d + i] * x[t * d + i];
    double r = 1.0 / sqrt(ss / d + eps);
    for (int i = 0; i < d; i++) y[t * d + i] = x[t * d + i] * r * w[i];
  }
}

/* rotate-half RoPE of the first nh*hd columns, in place */
static inline void rope_d(int n_seq, int T, int pos0, int nh, int hd, double theta, double *x, int ld) {
  int half = hd / 2;
  for (int s = 0; s < n_seq; s++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < nh; h++) {
        double *v = x + ((size_t)s * T + t) * ld + (size_t)h * hd;
        for (int i = 0; i < half; i++) {
          double ang = (pos0 + t) * exp(-2.0 * i / hd * log(theta)), a = v[i], b = v[i + half];
          v[i] = a * cos(ang) - b * sin(ang);
          v[i + half] = a * sin(ang) + b * cos(ang);
        }
      }
}

static inline void attention_d(int n_seq, int T, int nh, int nkv, int hd, const double *qkv, double *out) {
  int ld = (nh + 2 * nkv) * hd, ldo = nh * hd, group = nh / nkv;
  double *p = malloc(sizeof(double) * T);
  for (int s = 0; s < n_seq; s++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < nh; h++) {
        const double *base = qkv + (size_t)s * T * ld, *q = base + (size_t)t * ld + h * hd;
        const double *k = base + (nh + h / group) * hd, *v = base + (nh + nkv + h / group) * hd;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j <= t; j++) {
          p[j] = dot_d(q, k + (size_t)j * ld, hd) / sqrt((double)hd);
          mx = p[j] > mx ? p[j] : mx;
        }
        for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        double *o = out + ((size_t)s * T + t) * ldo + h * hd;
        for (int i = 0; i < hd; i++) {
          o[i] = 0.0;
          for (int j = 0; j <= t; j++) o[i] += p[j] / sum * v[(size_t)j * ld + i];
        }
      }
  free(p);
}

/* y = x Wᵀ, W [m, n] */
static inline void linear_d(int T, int m, int n, const double *x, const double *W, double *y) {
  for (int t = 0; t < T; t++)
    for (int i = 0; i < m; i++) y[(size_t)t * m + i] = dot_d(x + (size_t)t * n, W + (size_t)i * n, n);
}

#endif
