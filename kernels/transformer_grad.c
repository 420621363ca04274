/* kernels/transformer_grad.c: backward passes of RMSNorm, RoPE, causal GQA attention, SwiGLU
 * and the dense linear; soft and top-k cross-entropy; MSE (fp32, sums in double). */
#include "kernels/transformer_grad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "common/error.h"
#include "kernels/transformer.h"

/* below this many element operations a loop runs on one thread (a parallel region costs more
 * than it saves, far more when cores are shared) */
#define GRAD_PAR_MIN ((size_t)1 << 16)

/* ---------------------------------------------------------------- RMSNorm */

enum { RMS_COLS = 64 }; /* dw columns per task: fixed, so the sums do not depend on threads */

/* one row's 1 / rms(x) (the forward's r) and *dot = sum_i dy_i w_i x_i, both in double */
static inline double rms_row(int d, const float *xr, const float *w, const float *gr, float eps, double *dot) {
  double ss = 0.0, dt = 0.0;
  for (int i = 0; i < d; i++) {
    ss += (double)xr[i] * xr[i];
    dt += (double)gr[i] * w[i] * xr[i];
  }
  *dot = dt;
  return 1.0 / sqrt(ss / d + eps);
}

void e8q_rmsnorm_backward_ref(int T, int d, const float *x, const float *w, float eps, const float *dy, float *dx,
                              float *dw) {
  double *acc = e8q_calloc((size_t)d, sizeof(double), "rmsnorm backward dw sums");
  for (int t = 0; t < T; t++) {
    const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
    double dot, r = rms_row(d, xr, w, gr, eps, &dot), c = r * r * r * dot / d;
    /* dy is read for dw before dx (which may alias it) is written */
    for (int i = 0; i < d; i++) acc[i] += (double)gr[i] * xr[i] * r;
    if (dx) {
      float *o = dx + (size_t)t * d;
      for (int i = 0; i < d; i++) o[i] = (float)(r * w[i] * gr[i] - c * xr[i]);
    }
  }
  if (dw)
    for (int i = 0; i < d; i++) dw[i] += (float)acc[i];
  free(acc);
}

void e8q_rmsnorm_backward(int T, int d, const float *x, const float *w, float eps, const float *dy, float *dx,
                          float *dw) {
  /* pass 1, per row: r_t and the coefficient c_t of x in dx */
  double *rc = e8q_malloc(sizeof(double) * 2 * (size_t)(T > 0 ? T : 1), "rmsnorm backward row factors");
  int par = (size_t)T * d > GRAD_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
  for (int t = 0; t < T; t++) {
    const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
    double dot, r = rms_row(d, xr, w, gr, eps, &dot);
    rc[2 * t] = r;
    rc[2 * t + 1] = r * r * r * dot / d;
  }
  /* pass 2: dw by blocks of columns, each summed over t in order (before dx overwrites dy) */
  if (dw) {
    int nb = (d + RMS_COLS - 1) / RMS_COLS;
#pragma omp parallel for schedule(static) if (par)
    for (int b = 0; b < nb; b++) {
      int i0 = b * RMS_COLS, i1 = i0 + RMS_COLS < d ? i0 + RMS_COLS : d;
      double acc[RMS_COLS] = {0};
      for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
        double r = rc[2 * t];
        for (int i = i0; i < i1; i++) acc[i - i0] += (double)gr[i] * xr[i] * r;
      }
      for (int i = i0; i < i1; i++) dw[i] += (float)acc[i - i0];
    }
  }
  /* pass 3: dx */
  if (dx) {
#pragma omp parallel for schedule(static) if (par)
    for (int t = 0; t < T; t++) {
      const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
      float *o = dx + (size_t)t * d;
      double r = rc[2 * t], c = rc[2 * t + 1];
      for (int i = 0; i < d; i++) o[i] = (float)(r * w[i] * gr[i] - c * xr[i]);
    }
  }
  free(rc);
}

/* ---------------------------------------------------------------- RoPE
 * forward (a, b) -> (a c - b s, b c + a s); its transpose (inverse) is
 * (da, db) -> (da c + db s, db c - da s) */

void e8q_rope_backward_ref(int n_seq, int T, int pos0, int n_heads, int hd, double theta, float *dx, int ld) {
  e8q_rope_turn_ref("rope backward", n_seq, T, pos0, n_heads, hd, theta, -1.0, dx, ld);
}

void e8q_rope_backward(int n_seq, int T, int pos0, int n_heads, int hd, double theta, float *dx, int ld) {
  E8Q_CHECK(hd % 2 == 0, "rope backward: head_dim %d is odd", hd);
  int half = hd / 2;
  float *cs = e8q_rope_table(T, pos0, hd, theta); /* the forward's */
  int N = n_seq * T;
#pragma omp parallel for schedule(static) if ((size_t)N * n_heads * hd > GRAD_PAR_MIN)
  for (int r = 0; r < N; r++) {
    const float *c = cs + (size_t)(r % T) * half * 2;
    float *row = dx + (size_t)r * ld;
    for (int h = 0; h < n_heads; h++) {
      float *v = row + (size_t)h * hd;
      for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half], co = c[2 * i], si = c[2 * i + 1];
        v[i] = a * co + b * si;
        v[i + half] = b * co - a * si;
      }
    }
  }
  free(cs);
}

/* ---------------------------------------------------------------- attention
 * Per (sequence, query head), with P = softmax(scale Q Kᵀ) (causal), O = P V:
 *   dP = dO Vᵀ,  dS = P ⊙ (dP - rowsum(P ⊙ dP)),
 *   dQ = scale dS K,  dK += scale dSᵀ Q,  dV += Pᵀ dO,
 * dK and dV summed over the query heads of a kv head's group. */

static void attention_backward_check(int n_heads, int n_kv_heads, int hd) {
  E8Q_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            "attention backward: %d heads not a multiple of %d kv heads", n_heads, n_kv_heads);
  E8Q_CHECK(hd > 0, "attention backward: head_dim %d", hd);
}

void e8q_attention_backward_ref(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv,
                                const float *dout, float *dqkv) {
  attention_backward_check(n_heads, n_kv_heads, hd);
  size_t ld = (size_t)(n_heads + 2 * n_kv_heads) * hd, ldo = (size_t)n_heads * hd;
  int group = n_heads / n_kv_heads;
  double scale = 1.0 / sqrt((double)hd);
  size_t Tp = T > 0 ? (size_t)T : 1;
  double *acc = e8q_malloc(sizeof(double) * Tp * ld, "attention backward sums");
  double *p = e8q_malloc(sizeof(double) * Tp, "attention backward probabilities");
  double *dp = e8q_malloc(sizeof(double) * Tp, "attention backward dP");
  for (int s = 0; s < n_seq; s++) {
    const float *base = qkv + (size_t)s * T * ld, *obase = dout + (size_t)s * T * ldo;
    memset(acc, 0, sizeof(double) * (size_t)T * ld);
    for (int t = 0; t < T; t++)
      for (int h = 0; h < n_heads; h++) {
        int kvh = h / group;
        size_t qo = (size_t)h * hd, ko = (size_t)(n_heads + kvh) * hd, vo = (size_t)(n_heads + n_kv_heads + kvh) * hd;
        const float *q = base + (size_t)t * ld + qo, *dO = obase + (size_t)t * ldo + qo;
        /* probabilities over keys 0..t */
        double mx = -INFINITY;
        for (int j = 0; j <= t; j++) {
          double sc = 0.0;
          for (int i = 0; i < hd; i++) sc += (double)q[i] * base[(size_t)j * ld + ko + i];
          p[j] = sc * scale;
          if (p[j] > mx) mx = p[j];
        }
        double sum = 0.0;
        for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        for (int j = 0; j <= t; j++) p[j] /= sum;
        /* dP, its P-weighted mean, dS */
        double D = 0.0;
        for (int j = 0; j <= t; j++) {
          double a = 0.0;
          for (int i = 0; i < hd; i++) a += (double)dO[i] * base[(size_t)j * ld + vo + i];
          dp[j] = a;
          D += p[j] * a;
        }
        for (int j = 0; j <= t; j++) {
          double ds = p[j] * (dp[j] - D);
          for (int i = 0; i < hd; i++) {
            acc[(size_t)t * ld + qo + i] += scale * ds * base[(size_t)j * ld + ko + i];
            acc[(size_t)j * ld + ko + i] += scale * ds * q[i];
            acc[(size_t)j * ld + vo + i] += p[j] * dO[i];
          }
        }
      }
    float *d = dqkv + (size_t)s * T * ld;
    for (size_t e = 0; e < (size_t)T * ld; e++) d[e] = (float)acc[e];
  }
  free(acc);
  free(p);
  free(dp);
}

/* Fast path: per (sequence, head) and block of query rows, five BLAS products around a
 * row-parallel softmax / dS step. BLAS threads itself, so the loops around it are sequential;
 * the kv heads' sums run over query heads in order, so the bits do not depend on threads. */
enum { ATTB_BLOCK = 128 }; /* query rows per block: bounds the scratch to 2 x ATTB_BLOCK x T */

void e8q_attention_backward(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv,
                            const float *dout, float *dqkv) {
  attention_backward_check(n_heads, n_kv_heads, hd);
  int ld = (n_heads + 2 * n_kv_heads) * hd, ldo = n_heads * hd;
  int group = n_heads / n_kv_heads;
  float scale = 1.0f / sqrtf((float)hd);
  if (n_seq <= 0 || T <= 0) return;
  int B = T < ATTB_BLOCK ? T : ATTB_BLOCK;
  float *P = e8q_malloc(sizeof(float) * (size_t)B * T, "attention backward probabilities");
  float *dS = e8q_malloc(sizeof(float) * (size_t)B * T, "attention backward dS");
  memset(dqkv, 0, sizeof(float) * (size_t)n_seq * T * ld);
  for (int s = 0; s < n_seq; s++)
    for (int h = 0; h < n_heads; h++) {
      int kvh = h / group;
      const float *base = qkv + (size_t)s * T * ld, *obase = dout + (size_t)s * T * ldo;
      float *dbase = dqkv + (size_t)s * T * ld;
      size_t ko = (size_t)(n_heads + kvh) * hd, vo = (size_t)(n_heads + n_kv_heads + kvh) * hd;
      const float *k = base + ko, *v = base + vo;
      float *dk = dbase + ko, *dv = dbase + vo;
      for (int i0 = 0; i0 < T; i0 += B) {
        int rows = T - i0 < B ? T - i0 : B, keys = i0 + rows; /* rows i0.. see keys 0..keys-1 */
        const float *q = base + (size_t)i0 * ld + (size_t)h * hd, *dO = obase + (size_t)i0 * ldo + (size_t)h * hd;
        float *dq = dbase + (size_t)i0 * ld + (size_t)h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale, q, ld, k, ld, 0.0f, P, keys);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, 1.0f, dO, ldo, v, ld, 0.0f, dS, keys);
#pragma omp parallel for schedule(static) if ((size_t)rows * keys * hd > GRAD_PAR_MIN)
        for (int r = 0; r < rows; r++) {
          float *pr = P + (size_t)r * keys, *sr = dS + (size_t)r * keys;
          int n = i0 + r + 1; /* causal: keys 0..i0+r */
          float mx = pr[0];
          for (int j = 1; j < n; j++) mx = pr[j] > mx ? pr[j] : mx;
          float sum = 0.0f;
          for (int j = 0; j < n; j++) sum += (pr[j] = expf(pr[j] - mx));
          float inv = 1.0f / sum;
          double D = 0.0;
          for (int j = 0; j < n; j++) {
            pr[j] *= inv;
            D += (double)pr[j] * sr[j];
          }
          float Df = (float)D;
          for (int j = 0; j < n; j++) sr[j] = pr[j] * (sr[j] - Df);
          for (int j = n; j < keys; j++) pr[j] = sr[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, scale, dS, keys, k, ld, 0.0f, dq, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hd, rows, scale, dS, keys, q, ld, 1.0f, dk, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hd, rows, 1.0f, P, keys, dO, ldo, 1.0f, dv, ld);
      }
    }
  free(P);
  free(dS);
}

/* ---------------------------------------------------------------- SwiGLU */

void e8q_swiglu_backward_ref(int T, int hidden, const float *ug, const float *dh, float *dug) {
  for (int t = 0; t < T; t++) {
    const float *up = ug + (size_t)t * 2 * hidden, *gate = up + hidden, *g = dh + (size_t)t * hidden;
    float *dup = dug + (size_t)t * 2 * hidden, *dgate = dup + hidden;
    for (int i = 0; i < hidden; i++) {
      double x = gate[i], s = 1.0 / (1.0 + exp(-x));
      dup[i] = (float)(g[i] * x * s);
      dgate[i] = (float)(g[i] * up[i] * s * (1.0 + x * (1.0 - s)));
    }
  }
}

void e8q_swiglu_backward(int T, int hidden, const float *ug, const float *dh, float *dug) {
#pragma omp parallel for schedule(static) if ((size_t)T * hidden > GRAD_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const float *up = ug + (size_t)t * 2 * hidden, *gate = up + hidden, *g = dh + (size_t)t * hidden;
    float *dup = dug + (size_t)t * 2 * hidden, *dgate = dup + hidden;
    for (int i = 0; i < hidden; i++) {
      float x = gate[i], s = 1.0f / (1.0f + expf(-x));
      dup[i] = g[i] * x * s;
      dgate[i] = g[i] * up[i] * s * (1.0f + x * (1.0f - s));
    }
  }
}

/* ---------------------------------------------------------------- dense linear */

void e8q_linear_backward_ref(int T, int m, int n, const float *x, const float *W, const float *dy, float *dx,
                             float *dW) {
  if (dx)
    for (int t = 0; t < T; t++)
      for (int j = 0; j < n; j++) {
        double a = 0.0;
        for (int i = 0; i < m; i++) a += (double)dy[(size_t)t * m + i] * W[(size_t)i * n + j];
        dx[(size_t)t * n + j] = (float)a;
      }
  if (dW)
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) {
        double a = 0.0;
        for (int t = 0; t < T; t++) a += (double)dy[(size_t)t * m + i] * x[(size_t)t * n + j];
        dW[(size_t)i * n + j] += (float)a;
      }
}

void e8q_linear_backward(int T, int m, int n, const float *x, const float *W, const float *dy, float *dx,
                         float *dW) {
  if (T <= 0 || m <= 0 || n <= 0) {
    if (dx && T > 0 && n > 0) memset(dx, 0, sizeof(float) * (size_t)T * n);
    return;
  }
  if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, n, m, 1.0f, dy, m, W, n, 0.0f, dx, n);
  if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, T, 1.0f, dy, m, x, n, 1.0f, dW, n);
}

/* ---------------------------------------------------------------- soft cross-entropy
 * One token, stably: lse = max + log sum exp(z - max); loss = sum_v p_v (lse - z_v);
 * dz_v = (sum p) exp(z_v - lse) - p_v. The last pass reads z_v before writing dz_v, so dz may
 * alias z. Exactly one of p (probabilities) and tz (teacher logits) is given. */

static double xent_row(int V, const float *z, const float *p, const float *tz, float *dz) {
  double zmax = z[0];
  for (int v = 1; v < V; v++)
    if (z[v] > zmax) zmax = z[v];
  double zs = 0.0;
  for (int v = 0; v < V; v++) zs += exp((double)z[v] - zmax);
  double lse = zmax + log(zs);
  double tmax = 0.0, tls = 0.0;
  if (tz) {
    tmax = tz[0];
    for (int v = 1; v < V; v++)
      if (tz[v] > tmax) tmax = tz[v];
    double ts = 0.0;
    for (int v = 0; v < V; v++) ts += exp((double)tz[v] - tmax);
    tls = log(ts);
  }
  /* sum of the targets, for the exact gradient */
  double psum = 0.0;
  for (int v = 0; v < V; v++) psum += tz ? exp((double)tz[v] - tmax - tls) : (double)p[v];
  double loss = 0.0;
  for (int v = 0; v < V; v++) {
    double pv = tz ? exp((double)tz[v] - tmax - tls) : (double)p[v], zv = z[v];
    if (pv != 0.0) loss += pv * (lse - zv);
    if (dz) dz[v] = (float)(psum * exp(zv - lse) - pv);
  }
  return loss;
}

static void xent_check_probs(size_t n, const float *p) {
  for (size_t i = 0; i < n; i++)
    E8Q_CHECK(p[i] >= 0.0f && isfinite(p[i]), "cross-entropy: target probability %g (element %zu) is not >= 0",
              (double)p[i], i);
}

static double xent_soft_fast(int T, int V, const float *logits, const float *p, const float *tz, float *dlogits) {
  E8Q_CHECK(V > 0, "cross-entropy: vocabulary of %d", V);
  if (T <= 0) return 0.0;
  double *row = e8q_malloc(sizeof(double) * (size_t)T, "cross-entropy row losses");
#pragma omp parallel for schedule(static) if ((size_t)T * V > GRAD_PAR_MIN / 8)
  for (int t = 0; t < T; t++) {
    size_t o = (size_t)t * V;
    row[t] = xent_row(V, logits + o, p ? p + o : NULL, tz ? tz + o : NULL, dlogits ? dlogits + o : NULL);
  }
  double loss = 0.0;
  for (int t = 0; t < T; t++) loss += row[t]; /* in order: the same bits for any thread count */
  free(row);
  return loss;
}

/* the reference: probabilities of both sides into double buffers first, then loss and gradient */
static double xent_soft_plain(int T, int V, const float *logits, const float *p, const float *tz, float *dlogits) {
  E8Q_CHECK(V > 0, "cross-entropy: vocabulary of %d", V);
  double *q = e8q_malloc(sizeof(double) * (size_t)V, "cross-entropy softmax");
  double *pt = e8q_malloc(sizeof(double) * (size_t)V, "cross-entropy targets");
  double loss = 0.0;
  for (int t = 0; t < T; t++) {
    const float *z = logits + (size_t)t * V;
    double mx = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < V; v++) sum += exp(z[v] - mx);
    double lse = mx + log(sum);
    for (int v = 0; v < V; v++) q[v] = exp(z[v] - lse);
    if (tz) {
      const float *y = tz + (size_t)t * V;
      double tm = -INFINITY, ts = 0.0;
      for (int v = 0; v < V; v++) tm = y[v] > tm ? y[v] : tm;
      for (int v = 0; v < V; v++) ts += exp(y[v] - tm);
      for (int v = 0; v < V; v++) pt[v] = exp(y[v] - tm - log(ts));
    } else {
      for (int v = 0; v < V; v++) pt[v] = p[(size_t)t * V + v];
    }
    double psum = 0.0;
    for (int v = 0; v < V; v++) {
      psum += pt[v];
      if (pt[v] != 0.0) loss += pt[v] * (lse - z[v]);
    }
    if (dlogits)
      for (int v = 0; v < V; v++) dlogits[(size_t)t * V + v] = (float)(psum * q[v] - pt[v]);
  }
  free(q);
  free(pt);
  return loss;
}

double e8q_xent_soft(int T, int V, const float *logits, const float *target_prob, float *dlogits) {
  if (T > 0) xent_check_probs((size_t)T * V, target_prob);
  return xent_soft_fast(T, V, logits, target_prob, NULL, dlogits);
}

double e8q_xent_soft_ref(int T, int V, const float *logits, const float *target_prob, float *dlogits) {
  if (T > 0) xent_check_probs((size_t)T * V, target_prob);
  return xent_soft_plain(T, V, logits, target_prob, NULL, dlogits);
}

double e8q_xent_soft_logits(int T, int V, const float *logits, const float *target_logits, float *dlogits) {
  return xent_soft_fast(T, V, logits, NULL, target_logits, dlogits);
}

double e8q_xent_soft_logits_ref(int T, int V, const float *logits, const float *target_logits, float *dlogits) {
  return xent_soft_plain(T, V, logits, NULL, target_logits, dlogits);
}

/* ---------------------------------------------------------------- top-k cross-entropy */

static void xent_topk_check(int T, int V, int k, const int *ids, const float *probs) {
  E8Q_CHECK(V > 0 && k > 0, "top-k cross-entropy: vocabulary %d, k %d", V, k);
  for (size_t e = 0; e < (size_t)T * k; e++) {
    E8Q_CHECK(ids[e] < V, "top-k cross-entropy: target id %d (token %zu) outside the vocabulary [0, %d)", ids[e],
              e / (size_t)k, V);
    E8Q_CHECK(ids[e] < 0 || (probs[e] >= 0.0f && isfinite(probs[e])),
              "top-k cross-entropy: probability %g (token %zu) is not >= 0", (double)probs[e], e / (size_t)k);
  }
}

/* one token; dz may alias z: the loss reads z at the ids before dz is written */
static double xent_topk_row(int V, const float *z, int k, const int *ids, const float *pr, float *dz) {
  double psum = 0.0;
  for (int j = 0; j < k; j++)
    if (ids[j] >= 0) psum += pr[j];
  if (!(psum > 0.0)) {
    if (dz) memset(dz, 0, sizeof(float) * (size_t)V);
    return 0.0;
  }
  double zmax = z[0];
  for (int v = 1; v < V; v++)
    if (z[v] > zmax) zmax = z[v];
  double zs = 0.0;
  for (int v = 0; v < V; v++) zs += exp((double)z[v] - zmax);
  double lse = zmax + log(zs), loss = 0.0;
  for (int j = 0; j < k; j++)
    if (ids[j] >= 0) loss += (double)pr[j] / psum * (lse - z[ids[j]]);
  if (dz) {
    for (int v = 0; v < V; v++) dz[v] = (float)exp((double)z[v] - lse);
    for (int j = 0; j < k; j++)
      if (ids[j] >= 0) dz[ids[j]] = (float)((double)dz[ids[j]] - (double)pr[j] / psum);
  }
  return loss;
}

double e8q_xent_topk(int T, int V, const float *logits, int k, const int *ids, const float *probs, float *dlogits) {
  xent_topk_check(T, V, k, ids, probs);
  if (T <= 0) return 0.0;
  double *row = e8q_malloc(sizeof(double) * (size_t)T, "top-k cross-entropy row losses");
#pragma omp parallel for schedule(static) if ((size_t)T * V > GRAD_PAR_MIN / 8)
  for (int t = 0; t < T; t++)
    row[t] = xent_topk_row(V, logits + (size_t)t * V, k, ids + (size_t)t * k, probs + (size_t)t * k,
                           dlogits ? dlogits + (size_t)t * V : NULL);
  double loss = 0.0;
  for (int t = 0; t < T; t++) loss += row[t];
  free(row);
  return loss;
}

double e8q_xent_topk_ref(int T, int V, const float *logits, int k, const int *ids, const float *probs,
                         float *dlogits) {
  xent_topk_check(T, V, k, ids, probs);
  double *q = e8q_malloc(sizeof(double) * (size_t)V, "top-k cross-entropy softmax");
  double *pt = e8q_malloc(sizeof(double) * (size_t)V, "top-k cross-entropy targets");
  double loss = 0.0;
  for (int t = 0; t < T; t++) {
    const float *z = logits + (size_t)t * V;
    const int *id = ids + (size_t)t * k;
    const float *pr = probs + (size_t)t * k;
    /* the renormalised target as a dense row */
    memset(pt, 0, sizeof(double) * (size_t)V);
    double psum = 0.0;
    for (int j = 0; j < k; j++)
      if (id[j] >= 0) psum += pr[j];
    if (psum > 0.0)
      for (int j = 0; j < k; j++)
        if (id[j] >= 0) pt[id[j]] += pr[j] / psum;
    double mx = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < V; v++) sum += exp(z[v] - mx);
    double lse = mx + log(sum);
    for (int v = 0; v < V; v++) {
      q[v] = psum > 0.0 ? exp(z[v] - lse) : 0.0;
      if (pt[v] != 0.0) loss += pt[v] * (lse - z[v]);
    }
    if (dlogits)
      for (int v = 0; v < V; v++) dlogits[(size_t)t * V + v] = (float)(q[v] - pt[v]);
  }
  free(q);
  free(pt);
  return loss;
}

/* ---------------------------------------------------------------- MSE */

enum { MSE_CHUNK = 8192 }; /* elements per partial sum: fixed, so the total does not depend on threads */

double e8q_mse_ref(size_t n, const float *y, const float *target, float *dy) {
  double loss = 0.0;
  for (size_t i = 0; i < n; i++) {
    double e = (double)y[i] - target[i];
    loss += e * e;
    if (dy) dy[i] = (float)(2.0 * e);
  }
  return loss;
}

double e8q_mse(size_t n, const float *y, const float *target, float *dy) {
  if (n == 0) return 0.0;
  size_t nc = (n + MSE_CHUNK - 1) / MSE_CHUNK;
  double *part = e8q_malloc(sizeof(double) * nc, "mse partial sums");
#pragma omp parallel for schedule(static) if (n > GRAD_PAR_MIN)
  for (size_t c = 0; c < nc; c++) {
    size_t i0 = c * MSE_CHUNK, i1 = i0 + MSE_CHUNK < n ? i0 + MSE_CHUNK : n;
    double s = 0.0;
    for (size_t i = i0; i < i1; i++) {
      double e = (double)y[i] - target[i];
      s += e * e;
      if (dy) dy[i] = (float)(2.0 * e);
    }
    part[c] = s;
  }
  double loss = 0.0;
  for (size_t c = 0; c < nc; c++) loss += part[c];
  free(part);
  return loss;
}
