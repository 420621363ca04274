/* kernels/transformer.c: RMSNorm, RoPE, causal GQA attention, SwiGLU, softmax, NLL (fp32). */
#include "kernels/transformer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "common/error.h"

/* below this many element operations a loop runs on one thread: a parallel region costs more
 * than it saves, and far more when the cores are shared */
#define E8Q_PAR_MIN ((size_t)1 << 18)

/* ---------------------------------------------------------------- RMSNorm */

void e8q_rmsnorm_ref(int T, int d, const float *x, const float *w, float eps, float *y) {
  for (int t = 0; t < T; t++) {
    const float *xr = x + (size_t)t * d;
    float *yr = y + (size_t)t * d;
    double ss = 0.0;
    for (int i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
    float r = (float)(1.0 / sqrt(ss / d + eps));
    for (int i = 0; i < d; i++) yr[i] = xr[i] * r * w[i];
  }
}

void e8q_rmsnorm(int T, int d, const float *x, const float *w, float eps, float *y) {
#pragma omp parallel for schedule(static) if ((size_t)T * d > E8Q_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const float *xr = x + (size_t)t * d;
    float *yr = y + (size_t)t * d;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
    float r = (float)(1.0 / sqrt(ss / d + eps));
#pragma omp simd
    for (int i = 0; i < d; i++) yr[i] = xr[i] * r * w[i];
  }
}

/* ---------------------------------------------------------------- RoPE */

void e8q_rope_turn_ref(const char *what, int n_seq, int T, int pos0, int n_heads, int hd, double theta, double sign,
                       float *x, int ld) {
  E8Q_CHECK(hd % 2 == 0, "%s: head_dim %d is odd", what, hd);
  int half = hd / 2;
  for (int s = 0; s < n_seq; s++)
    for (int t = 0; t < T; t++) {
      float *row = x + ((size_t)s * T + t) * ld;
      for (int h = 0; h < n_heads; h++) {
        float *v = row + (size_t)h * hd;
        for (int i = 0; i < half; i++) {
          double ang = (double)(pos0 + t) * pow(theta, -2.0 * i / hd);
          double a = v[i], b = v[i + half], sn = sign * sin(ang);
          v[i] = (float)(a * cos(ang) - b * sn);
          v[i + half] = (float)(b * cos(ang) + a * sn);
        }
      }
    }
}

void e8q_rope_ref(int n_seq, int T, int pos0, int n_heads, int hd, double theta, float *x, int ld) {
  e8q_rope_turn_ref("rope", n_seq, T, pos0, n_heads, hd, theta, 1.0, x, ld);
}

float *e8q_rope_table(int T, int pos0, int hd, double theta) {
  int half = hd / 2;
  float *cs = e8q_malloc(sizeof(float) * 2 * (size_t)(T > 0 ? T : 1) * (half > 0 ? half : 1), "rope cos/sin table");
  double *inv_freq = e8q_malloc(sizeof(double) * (size_t)(half > 0 ? half : 1), "rope frequencies");
  for (int i = 0; i < half; i++) inv_freq[i] = pow(theta, -2.0 * i / hd);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      double ang = (double)(pos0 + t) * inv_freq[i];
      cs[((size_t)t * half + i) * 2] = (float)cos(ang);
      cs[((size_t)t * half + i) * 2 + 1] = (float)sin(ang);
    }
  free(inv_freq);
  return cs;
}

void e8q_rope(int n_seq, int T, int pos0, int n_heads, int hd, double theta, float *x, int ld) {
  E8Q_CHECK(hd % 2 == 0, "rope: head_dim %d is odd", hd);
  int half = hd / 2;
  float *cs = e8q_rope_table(T, pos0, hd, theta);
  int N = n_seq * T;
#pragma omp parallel for schedule(static) if ((size_t)N * n_heads * hd > E8Q_PAR_MIN)
  for (int r = 0; r < N; r++) {
    const float *c = cs + (size_t)(r % T) * half * 2;
    float *row = x + (size_t)r * ld;
    for (int h = 0; h < n_heads; h++) {
      float *v = row + (size_t)h * hd;
      for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half], co = c[2 * i], si = c[2 * i + 1];
        v[i] = a * co - b * si;
        v[i + half] = b * co + a * si;
      }
    }
  }
  free(cs);
}

/* ---------------------------------------------------------------- attention
 * query heads per KV head (GQA), checked */
static int kv_group(int n_heads, int n_kv_heads) {
  E8Q_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: %d heads not a multiple of %d kv heads",
            n_heads, n_kv_heads);
  return n_heads / n_kv_heads;
}

/* e^x for x <= 0 (a softmax's shifted scores) in plain float arithmetic the compiler vectorises,
 * where a call of expf per score kept the loop scalar (a third of a decode step's attention):
 * x = n ln2 + r with ln2 in two parts (Cody-Waite), |r| <= ln2/2, e^r by the degree-7 Taylor-
 * like polynomial of Cephes' expf (within 2 ulp of expf), times 2^n built in the exponent bits.
 * Below -87.3 the result is held at e^-87.3 ~ 1.2e-38 instead of going subnormal: against the
 * softmax's largest term, 1, that is nothing. NaN in, NaN out. */
#pragma omp declare simd notinbranch
static inline float exp_nonpos(float x) {
  x = x < -87.3f ? -87.3f : x;
  const float n = nearbyintf(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } two_n = {.i = ((int32_t)(n > -126.0f ? n : -126.0f) + 127) << 23}; /* NaN: no UB */
  return p * two_n.f;
}

/* One query row: scores against keys 0..n-1 (row stride ldk), softmax, weighted sum of
 * values (row stride ldv). att: scratch [n]. Clones for AVX-512 and AVX2 widen the simd loops
 * (a head of 64 is then 4 vectors, not 16): the order of the dot products' additions follows the
 * vector width, within the tests' tolerance of the double _ref. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void attend_row(int n, int hd, float scale, const float *q, const float *k, size_t ldk,
                       const float *v, size_t ldv, float *att, float *out) {
  float mx = -INFINITY;
  for (int j = 0; j < n; j++) {
    const float *kr = k + (size_t)j * ldk;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < hd; i++) s += q[i] * kr[i];
    s *= scale;
    att[j] = s;
    if (s > mx) mx = s;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; j++) {
    att[j] = exp_nonpos(att[j] - mx);
    sum += att[j];
  }
  float inv = 1.0f / sum;
  memset(out, 0, sizeof(float) * hd);
  for (int j = 0; j < n; j++) {
    const float *vr = v + (size_t)j * ldv;
    float p = att[j] * inv;
#pragma omp simd
    for (int i = 0; i < hd; i++) out[i] += p * vr[i];
  }
}

void e8q_attention_ref(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv, float *out) {
  size_t ld = (size_t)(n_heads + 2 * n_kv_heads) * hd, ldo = (size_t)n_heads * hd;
  int group = kv_group(n_heads, n_kv_heads);
  float scale = 1.0f / sqrtf((float)hd);
  float *att = e8q_malloc(sizeof(float) * (size_t)T, "attention scores");
  for (int s = 0; s < n_seq; s++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < n_heads; h++) {
        int kvh = h / group;
        const float *base = qkv + (size_t)s * T * ld;
        const float *q = base + (size_t)t * ld + (size_t)h * hd;
        const float *k = base + (size_t)(n_heads + kvh) * hd;
        const float *v = base + (size_t)(n_heads + n_kv_heads + kvh) * hd;
        /* scores, softmax, weighted values, written out plainly */
        float mx = -INFINITY;
        for (int j = 0; j <= t; j++) {
          float sc = 0.0f;
          for (int i = 0; i < hd; i++) sc += q[i] * k[(size_t)j * ld + i];
          att[j] = sc * scale;
          if (att[j] > mx) mx = att[j];
        }
        float sum = 0.0f;
        for (int j = 0; j <= t; j++) {
          att[j] = expf(att[j] - mx);
          sum += att[j];
        }
        float *o = out + ((size_t)s * T + t) * ldo + (size_t)h * hd;
        for (int i = 0; i < hd; i++) {
          float acc = 0.0f;
          for (int j = 0; j <= t; j++) acc += att[j] / sum * v[(size_t)j * ld + i];
          o[i] = acc;
        }
      }
  free(att);
}

/* Fast path: per (sequence, head) and block of query rows, the scores and the weighted values
 * are two BLAS products (S = Q Kᵀ over the keys the block can see, O = P V); the causal mask
 * and the softmax run between them. BLAS threads itself, so this loop is sequential. */
enum { ATT_BLOCK = 256 }; /* query rows per block: bounds the score scratch to ATT_BLOCK x T */

void e8q_attention(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv, float *out) {
  int ld = (n_heads + 2 * n_kv_heads) * hd, ldo = n_heads * hd;
  int group = kv_group(n_heads, n_kv_heads);
  float scale = 1.0f / sqrtf((float)hd);
  int B = T < ATT_BLOCK ? T : ATT_BLOCK;
  float *S = e8q_malloc(sizeof(float) * (size_t)B * T, "attention scores");
  for (int s = 0; s < n_seq; s++)
    for (int h = 0; h < n_heads; h++) {
      int kvh = h / group;
      const float *base = qkv + (size_t)s * T * ld;
      const float *k = base + (size_t)(n_heads + kvh) * hd;
      const float *v = base + (size_t)(n_heads + n_kv_heads + kvh) * hd;
      for (int i0 = 0; i0 < T; i0 += B) {
        int rows = T - i0 < B ? T - i0 : B, keys = i0 + rows; /* rows i0..i0+rows-1 see keys 0..keys-1 */
        const float *q = base + (size_t)i0 * ld + (size_t)h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale, q, ld, k, ld, 0.0f, S, keys);
#pragma omp parallel for schedule(static) if ((size_t)rows * keys > 4 * E8Q_PAR_MIN)
        for (int r = 0; r < rows; r++) {
          float *sr = S + (size_t)r * keys;
          int n = i0 + r + 1; /* causal: keys 0..i0+r */
          float mx = sr[0];
          for (int j = 1; j < n; j++) mx = sr[j] > mx ? sr[j] : mx;
          float sum = 0.0f;
          for (int j = 0; j < n; j++) sum += (sr[j] = expf(sr[j] - mx));
          float inv = 1.0f / sum;
          for (int j = 0; j < n; j++) sr[j] *= inv;
          for (int j = n; j < keys; j++) sr[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, S, keys, v, ld, 0.0f,
                    out + ((size_t)s * T + i0) * ldo + (size_t)h * hd, ldo);
      }
    }
  free(S);
}

void e8q_attention_step(int pos, int n_heads, int n_kv_heads, int hd, const float *q, const float *kc,
                        const float *vc, float *out, float *att) {
  size_t ldkv = (size_t)n_kv_heads * hd;
  int group = kv_group(n_heads, n_kv_heads);
  float scale = 1.0f / sqrtf((float)hd);
  /* heads across the threads from a few hundred keys' worth of work (a step is small: the
   * threshold of the batched kernels would leave every position below ~450 of SmolLM2 serial) */
#pragma omp parallel for schedule(static) if ((size_t)(pos + 1) * n_heads * hd > ((size_t)1 << 13))
  for (int h = 0; h < n_heads; h++) {
    int kvh = h / group;
    attend_row(pos + 1, hd, scale, q + (size_t)h * hd, kc + (size_t)kvh * hd, ldkv, vc + (size_t)kvh * hd, ldkv,
               att + (size_t)h * (pos + 1), out + (size_t)h * hd);
  }
}

void e8q_attention_step_ref(int pos, int n_heads, int n_kv_heads, int hd, const float *q, const float *kc,
                            const float *vc, float *out, float *att) {
  size_t ldkv = (size_t)n_kv_heads * hd;
  int group = kv_group(n_heads, n_kv_heads);
  double scale = 1.0 / sqrt((double)hd);
  for (int h = 0; h < n_heads; h++) {
    /* scores, softmax, weighted values, written out plainly (double accumulation) */
    const float *qh = q + (size_t)h * hd, *k = kc + (size_t)(h / group) * hd, *v = vc + (size_t)(h / group) * hd;
    float *a = att + (size_t)h * (pos + 1);
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j <= pos; j++) {
      double sc = 0;
      for (int i = 0; i < hd; i++) sc += (double)qh[i] * k[(size_t)j * ldkv + i];
      a[j] = (float)(sc * scale);
      if (a[j] > mx) mx = a[j];
    }
    for (int j = 0; j <= pos; j++) sum += exp((double)a[j] - mx);
    for (int i = 0; i < hd; i++) {
      double acc = 0;
      for (int j = 0; j <= pos; j++) acc += exp((double)a[j] - mx) / sum * v[(size_t)j * ldkv + i];
      out[(size_t)h * hd + i] = (float)acc;
    }
  }
}

/* ---------------------------------------------------------------- SwiGLU */

void e8q_swiglu_ref(int T, int hidden, const float *ug, float *h) {
  for (int t = 0; t < T; t++)
    for (int i = 0; i < hidden; i++) {
      double up = ug[(size_t)t * 2 * hidden + i], g = ug[(size_t)t * 2 * hidden + hidden + i];
      h[(size_t)t * hidden + i] = (float)(g / (1.0 + exp(-g)) * up);
    }
}

void e8q_swiglu(int T, int hidden, const float *ug, float *h) {
#pragma omp parallel for schedule(static) if ((size_t)T * hidden > E8Q_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const float *up = ug + (size_t)t * 2 * hidden, *gate = up + hidden;
    float *hr = h + (size_t)t * hidden;
    for (int i = 0; i < hidden; i++) {
      float g = gate[i];
      hr[i] = g / (1.0f + expf(-g)) * up[i];
    }
  }
}

/* ---------------------------------------------------------------- softmax and NLL */

void e8q_softmax_ref(int n, float *x) {
  double mx = x[0], sum = 0;
  for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
  for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
  for (int i = 0; i < n; i++) x[i] = (float)(exp((double)x[i] - mx) / sum);
}

void e8q_softmax(int n, float *x) {
  float mx = x[0];
  for (int i = 1; i < n; i++)
    if (x[i] > mx) mx = x[i];
  double sum = 0.0;
  for (int i = 0; i < n; i++) {
    x[i] = expf(x[i] - mx);
    sum += x[i];
  }
  float inv = (float)(1.0 / sum);
  for (int i = 0; i < n; i++) x[i] *= inv;
}

double e8q_nll(int n, const float *logits, int target) {
  E8Q_CHECK(target >= 0 && target < n, "nll: target id %d outside the vocabulary [0, %d)", target, n);
  double mx = logits[0];
  for (int i = 1; i < n; i++)
    if (logits[i] > mx) mx = logits[i];
  double sum = 0.0;
  for (int i = 0; i < n; i++) sum += exp((double)logits[i] - mx);
  return mx + log(sum) - (double)logits[target];
}

void e8q_nll_rows(int rows, int n, const float *logits, const int *targets, double *sum, long *count) {
  for (int r = 0; r < rows; r++)
    E8Q_CHECK(targets[r] < n, "target token id %d is outside the model's vocabulary [0, %d)", targets[r], n);
  double *v = e8q_malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1), "NLL of each row"); /* [rows] */
  /* rows across the threads, then summed in row order: the bits of a serial loop */
#pragma omp parallel for schedule(static) if (rows > 1 && (size_t)rows * n > E8Q_PAR_MIN)
  for (int r = 0; r < rows; r++) v[r] = targets[r] < 0 ? 0.0 : e8q_nll(n, logits + (size_t)r * n, targets[r]);
  for (int r = 0; r < rows; r++)
    if (targets[r] >= 0) {
      *sum += v[r];
      (*count)++;
    }
  free(v);
}

int e8q_argmax(int n, const float *x) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}
