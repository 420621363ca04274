/* kernels/hadamard.c: FWHT, Hadamard factors (Paley I/II, random orthogonal), M_n on
 * vectors, rows and columns, RHT of weights and Hessians, padding. */
#include "kernels/hadamard.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"

static int is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

/* ---------------------------------------------------------------- FWHT */
/* One body for both precisions: T the element type, TI the integer of its width. The stages h
 * below 64 bytes of elements run inside one register: the partner of lane i is lane i ^ h (a
 * shuffle), and lane i takes x_i + x_(i^h) where bit h of i is clear, x_(i^h) - x_i where it is
 * set: the operands and operations of the scalar butterfly, so the same bits. The stages from 64
 * bytes on add and subtract whole 64-byte vectors (h a power of two, a multiple of the lane
 * count; GCC lowers them to the clone's widths). Shorter vectors take the scalar butterflies. */
#define E8Q_FWHT_DEFINE(name, T, TI)                                                               \
  __attribute__((target_clones("avx512f", "avx2", "default"))) void name(T *x, int64_t n) {       \
    E8Q_CHECK(is_pow2(n), "Walsh-Hadamard transform of length %lld: the length must be a power of two", \
              (long long)n);                                                                       \
    typedef T VW __attribute__((vector_size(64)));                                                 \
    typedef TI VI __attribute__((vector_size(64)));                                                \
    enum { LW = 64 / sizeof(T) };                                                                  \
    int64_t h0 = 1;                                                                                \
    if (n >= LW) {                                                                                 \
      VI perm[8], pick[8]; /* per stage: lane i ^ h; the sum (i) or the difference (LW + i) */    \
      int ns = 0;                                                                                  \
      for (int h = 1; h < LW; h <<= 1, ns++)                                                       \
        for (int l = 0; l < LW; l++) {                                                             \
          perm[ns][l] = (TI)(l ^ h);                                                               \
          pick[ns][l] = (TI)((l & h) ? LW + l : l);                                                \
        }                                                                                          \
      for (int64_t i = 0; i < n; i += LW) {                                                        \
        VW v;                                                                                      \
        memcpy(&v, x + i, sizeof v);                                                               \
        for (int st = 0; st < ns; st++) {                                                          \
          VW p = __builtin_shuffle(v, perm[st]);                                                   \
          v = __builtin_shuffle(v + p, p - v, pick[st]);                                           \
        }                                                                                          \
        memcpy(x + i, &v, sizeof v);                                                               \
      }                                                                                            \
      h0 = LW;                                                                                     \
    }                                                                                              \
    for (int64_t h = h0; h < n; h <<= 1)                                                           \
      for (int64_t i = 0; i < n; i += 2 * h) {                                                     \
        T *restrict u = x + i, *restrict v = x + i + h;                                            \
        if (h >= LW) {                                                                             \
          for (int64_t j = 0; j < h; j += LW) {                                                    \
            VW a, b, s, d;                                                                         \
            memcpy(&a, u + j, sizeof a);                                                           \
            memcpy(&b, v + j, sizeof b);                                                           \
            s = a + b;                                                                             \
            d = a - b;                                                                             \
            memcpy(u + j, &s, sizeof s);                                                           \
            memcpy(v + j, &d, sizeof d);                                                           \
          }                                                                                        \
        } else {                                                                                   \
          for (int64_t j = 0; j < h; j++) {                                                        \
            T a = u[j], b = v[j];                                                                  \
            u[j] = a + b;                                                                          \
            v[j] = a - b;                                                                          \
          }                                                                                        \
        }                                                                                          \
      }                                                                                            \
  }

E8Q_FWHT_DEFINE(e8q_fwht_f64, double, int64_t)
E8Q_FWHT_DEFINE(e8q_fwht_f32, float, int32_t)

void e8q_fwht_f64_ref(const double *x, int64_t n, double *out) {
  E8Q_CHECK(is_pow2(n), "Walsh-Hadamard transform of length %lld: the length must be a power of two", (long long)n);
  for (int64_t i = 0; i < n; i++) {
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += (__builtin_popcountll((uint64_t)(i & j)) & 1) ? -x[j] : x[j];
    out[i] = s;
  }
}

/* ---------------------------------------------------------------- finite fields GF(p), GF(p^2) */
static int is_prime(int64_t q) {
  if (q < 2) return 0;
  for (int64_t d = 2; d * d <= q; d++)
    if (q % d == 0) return 0;
  return 1;
}

/* q = p or p^2 (p an odd prime): *p and *deg, else 0 */
static int field_order(int64_t q, int64_t *p, int *deg) {
  if (q < 3 || q % 2 == 0) return 0;
  if (is_prime(q)) {
    *p = q;
    *deg = 1;
    return 1;
  }
  int64_t r = (int64_t)llround(sqrt((double)q));
  if (r * r == q && is_prime(r)) {
    *p = r;
    *deg = 2;
    return 1;
  }
  return 0;
}

/* quadratic character table chi[x] for the q elements (x = a + b p, GF(p^2) = GF(p)[t]/(t^2 - nr)) */
static int8_t *field_chi(int64_t p, int deg) {
  int64_t q = deg == 1 ? p : p * p;
  int8_t *chi = e8q_calloc((size_t)q, 1, "Paley quadratic character");
  int64_t nr = 0; /* a quadratic non-residue mod p */
  if (deg == 2) {
    for (int64_t c = 2; c < p && !nr; c++) {
      int sq = 0;
      for (int64_t y = 1; y < p; y++)
        if ((y * y) % p == c) sq = 1;
      if (!sq) nr = c;
    }
    E8Q_CHECK(nr, "no quadratic non-residue mod %lld", (long long)p);
  }
  for (int64_t x = 0; x < q; x++) chi[x] = -1;
  chi[0] = 0;
  for (int64_t x = 1; x < q; x++) {
    int64_t a = x % p, b = x / p, s;
    if (deg == 1) s = (a * a) % p;
    else s = ((a * a + b * b % p * nr) % p) + ((2 * a * b) % p) * p;
    chi[s] = 1;
  }
  return chi;
}

static int64_t field_sub(int64_t x, int64_t y, int64_t p, int deg) {
  if (deg == 1) return ((x - y) % p + p) % p;
  int64_t a = ((x % p - y % p) % p + p) % p, b = ((x / p - y / p) % p + p) % p;
  return a + b * p;
}

/* ---------------------------------------------------------------- factors */
e8q_had_kind e8q_had_paley_kind(int K) {
  if (K < 4 || K % 4 != 0) return E8Q_HAD_NONE;
  int64_t p;
  int deg;
  if ((K - 1) % 4 == 3 && field_order(K - 1, &p, &deg)) return E8Q_HAD_PALEY1;
  int64_t q = K / 2 - 1;
  if (q % 4 == 1 && field_order(q, &p, &deg)) return E8Q_HAD_PALEY2;
  return E8Q_HAD_NONE;
}

int e8q_had_choose_K(int64_t n) {
  E8Q_CHECK(n >= 1, "Hadamard transform of length %lld: the length must be positive", (long long)n);
  if (is_pow2(n)) return 1;
  int64_t o = n;
  int p = 0;
  while (o % 2 == 0) {
    o /= 2;
    p++;
  }
  /* a large factor costs K flops per element: look no further than E8Q_HAD_MAX_PALEY */
  for (int j = 2; j <= p && ((o << j) <= E8Q_HAD_MAX_PALEY || j == 2); j++)
    if (e8q_had_paley_kind((int)(o << j)) != E8Q_HAD_NONE) return (int)(o << j);
  int64_t K = p >= 2 ? o * 4 : n;
  E8Q_CHECK(K <= E8Q_HAD_MAX_K,
            "Hadamard transform of length %lld needs a dense %lld x %lld factor (odd part %lld): at most %d is supported; "
            "pad or split this dimension", (long long)n, (long long)K, (long long)K, (long long)o, E8Q_HAD_MAX_K);
  return (int)K;
}

static void paley1(int K, double *R) {
  int64_t p;
  int deg;
  field_order(K - 1, &p, &deg);
  int64_t q = K - 1;
  int8_t *chi = field_chi(p, deg);
  for (int i = 0; i < K; i++)
    for (int j = 0; j < K; j++) {
      double v;
      if (i == 0) v = 1;
      else if (j == 0) v = -1;
      else v = (i == j) ? 1 : chi[field_sub(i - 1, j - 1, p, deg)];
      R[(size_t)i * K + j] = v;
    }
  (void)q;
  free(chi);
}

static void paley2(int K, double *R) {
  int64_t p;
  int deg;
  int64_t q = K / 2 - 1;
  field_order(q, &p, &deg);
  int8_t *chi = field_chi(p, deg);
  int C = (int)q + 1; /* symmetric conference matrix of order q + 1 */
  for (int i = 0; i < C; i++)
    for (int j = 0; j < C; j++) {
      int c;
      if (i == 0 && j == 0) c = 0;
      else if (i == 0 || j == 0) c = 1;
      else c = chi[field_sub(i - 1, j - 1, p, deg)];
      /* 0 -> [[1,-1],[-1,-1]], +-1 -> +-[[1,1],[1,-1]] */
      double blk[2][2];
      if (c == 0) {
        blk[0][0] = 1, blk[0][1] = -1, blk[1][0] = -1, blk[1][1] = -1;
      } else {
        blk[0][0] = c, blk[0][1] = c, blk[1][0] = c, blk[1][1] = -c;
      }
      for (int u = 0; u < 2; u++)
        for (int v = 0; v < 2; v++) R[(size_t)(2 * i + u) * K + 2 * j + v] = blk[u][v];
    }
  free(chi);
}

static void random_orthogonal(int K, uint64_t seed, double *R) {
  double *tau = e8q_malloc(sizeof(double) * K, "QR tau");
  double *d = e8q_malloc(sizeof(double) * K, "QR diagonal");
  for (int64_t i = 0; i < (int64_t)K * K; i++) R[i] = e8q_rng_normal_at(seed, E8Q_RNG_STREAM_HAD + (uint64_t)K, (uint64_t)i);
  int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, K, K, R, K, tau);
  E8Q_CHECK(info == 0, "random orthogonal factor K=%d: dgeqrf failed (info %d)", K, info);
  for (int i = 0; i < K; i++) d[i] = R[(size_t)i * K + i] < 0 ? -1.0 : 1.0;
  info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, K, K, K, R, K, tau);
  E8Q_CHECK(info == 0, "random orthogonal factor K=%d: dorgqr failed (info %d)", K, info);
  /* Q diag(sign(diag R)) (the Haar-distributed choice), scaled so R R^T = K I */
  double s = sqrt((double)K);
  for (int i = 0; i < K; i++)
    for (int j = 0; j < K; j++) R[(size_t)i * K + j] *= s * d[j];
  free(tau);
  free(d);
}

static void factor_alloc(e8q_had_factor *f, int K) {
  memset(f, 0, sizeof *f);
  f->K = K;
  if (K > 1) {
    f->R = e8q_malloc(sizeof(double) * (size_t)K * K, "Hadamard factor");
    f->Rf = e8q_malloc(sizeof(float) * (size_t)K * K, "Hadamard factor (float)");
  }
}

static void factor_sync_float(e8q_had_factor *f) {
  for (int64_t i = 0; i < (int64_t)f->K * f->K && f->K > 1; i++) f->Rf[i] = (float)f->R[i];
}

void e8q_had_factor_build(e8q_had_factor *f, int K, uint64_t seed) {
  E8Q_CHECK(K >= 1, "Hadamard factor order %d must be positive", K);
  factor_alloc(f, K);
  if (K == 1) {
    f->kind = E8Q_HAD_NONE;
    return;
  }
  f->kind = e8q_had_paley_kind(K);
  if (f->kind == E8Q_HAD_PALEY1) paley1(K, f->R);
  else if (f->kind == E8Q_HAD_PALEY2) paley2(K, f->R);
  else {
    f->kind = E8Q_HAD_RANDOM;
    f->seed = seed;
    random_orthogonal(K, seed, f->R);
  }
  factor_sync_float(f);
  double err = e8q_had_factor_error(f);
  E8Q_CHECK(err <= 1e-9 * K, "Hadamard factor K=%d (%s): |R R^T - K I| = %g", K, e8q_had_kind_name(f->kind), err);
}

void e8q_had_factor_from(e8q_had_factor *f, int K, const double *R, e8q_had_kind kind, const char *what) {
  E8Q_CHECK(K >= 1, "%s: Hadamard factor order %d must be positive", what, K);
  factor_alloc(f, K);
  f->kind = K == 1 ? E8Q_HAD_NONE : kind;
  if (K > 1) memcpy(f->R, R, sizeof(double) * (size_t)K * K);
  factor_sync_float(f);
  double err = e8q_had_factor_error(f);
  E8Q_CHECK(err <= 1e-4 * K, "%s: the %dx%d Hadamard factor is not orthogonal (max |R R^T - K I| = %g); the data is corrupt or not a factor", what, K, K, err);
}

void e8q_had_factor_copy(e8q_had_factor *dst, const e8q_had_factor *src) {
  factor_alloc(dst, src->K);
  dst->kind = src->kind;
  dst->seed = src->seed;
  if (src->K > 1) {
    memcpy(dst->R, src->R, sizeof(double) * (size_t)src->K * src->K);
    memcpy(dst->Rf, src->Rf, sizeof(float) * (size_t)src->K * src->K);
  }
}

void e8q_had_factor_free(e8q_had_factor *f) {
  free(f->R);
  free(f->Rf);
  memset(f, 0, sizeof *f);
}

const char *e8q_had_kind_name(e8q_had_kind kind) {
  switch (kind) {
  case E8Q_HAD_NONE: return "none";
  case E8Q_HAD_PALEY1: return "paley1";
  case E8Q_HAD_PALEY2: return "paley2";
  case E8Q_HAD_RANDOM: return "random_orthogonal";
  case E8Q_HAD_GIVEN: return "given";
  }
  return "?";
}

double e8q_had_factor_error(const e8q_had_factor *f) {
  int K = f->K;
  if (K == 1) return 0;
  double err = 0;
  for (int i = 0; i < K; i++)
    for (int j = 0; j < K; j++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += f->R[(size_t)i * K + k] * f->R[(size_t)j * K + k];
      double e = fabs(s - (i == j ? K : 0));
      if (e > err) err = e;
    }
  return err;
}

/* ---------------------------------------------------------------- M_n */
void e8q_had_init(e8q_had *h, int64_t n, uint64_t seed) {
  int K = e8q_had_choose_K(n);
  e8q_had_factor f;
  e8q_had_factor_build(&f, K, seed);
  h->n = n;
  h->b = n / K;
  h->f = f;
}

void e8q_had_init_factor(e8q_had *h, int64_t n, const e8q_had_factor *f) {
  E8Q_CHECK(n % f->K == 0 && is_pow2(n / f->K),
            "Hadamard transform of length %lld cannot use the factor of order %d: n / K must be a power of two",
            (long long)n, f->K);
  h->n = n;
  h->b = n / f->K;
  e8q_had_factor_copy(&h->f, f);
}

void e8q_had_free(e8q_had *h) {
  e8q_had_factor_free(&h->f);
  memset(h, 0, sizeof *h);
}

/* output blocks a0 .. a0+na-1 (na <= E8Q_MIX_RB) of the mixing: y_a = Σ_a' R[a][a'] z_a' (R^T
 * when transposed), each element summed from 0 in the order a' = 0, 1, ... with separate
 * multiplies and adds (hadamard.c is compiled with -ffp-contract=off). A tile of E8Q_MIX_RB
 * output blocks x 64 bytes of columns stays in registers over the K terms: one load of z and
 * E8Q_MIX_RB broadcasts per term, where a block at a time reloaded its partial sums per term (a
 * 576-long vector has K = 36 blocks of b = 16). The clones only widen the vectors: every path
 * gives the same bits. */
#define E8Q_MIX_RB 4 /* the tile below names its four sums */
#define DEFINE_MIX(NAME, T)                                                                              \
  __attribute__((target_clones("avx512f", "avx2", "default"))) static void NAME(                        \
      T *y, const T *R, const T *x, int K, int a0, int na, int64_t b, int transpose) {                  \
    typedef T VT __attribute__((vector_size(64)));                                                      \
    enum { L = 64 / sizeof(T) };                                                                        \
    const int64_t rs = transpose ? 1 : K, cs = transpose ? K : 1; /* R[a][a'] at a*rs + a'*cs */         \
    int64_t c = 0;                                                                                      \
    if (na == E8Q_MIX_RB)                                                                               \
      for (; c + L <= b; c += L) {                                                                      \
        const T *r0 = R + a0 * rs, *r1 = r0 + rs, *r2 = r1 + rs, *r3 = r2 + rs;                         \
        VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}; /* four named sums: an array stays on the stack */  \
        for (int a2 = 0; a2 < K; a2++) {                                                                \
          VT zv;                                                                                        \
          memcpy(&zv, x + a2 * b + c, sizeof zv);                                                       \
          s0 = s0 + r0[a2 * cs] * zv;                                                                   \
          s1 = s1 + r1[a2 * cs] * zv;                                                                   \
          s2 = s2 + r2[a2 * cs] * zv;                                                                   \
          s3 = s3 + r3[a2 * cs] * zv;                                                                   \
        }                                                                                               \
        memcpy(y + (a0 + 0) * b + c, &s0, sizeof s0);                                                   \
        memcpy(y + (a0 + 1) * b + c, &s1, sizeof s1);                                                   \
        memcpy(y + (a0 + 2) * b + c, &s2, sizeof s2);                                                   \
        memcpy(y + (a0 + 3) * b + c, &s3, sizeof s3);                                                   \
      }                                                                                                 \
    for (int t = 0; t < na; t++) /* a short tile, or b not a multiple of 64 bytes */                    \
      for (int64_t c2 = c; c2 < b; c2++) {                                                              \
        T acc = 0;                                                                                      \
        for (int a2 = 0; a2 < K; a2++) acc = acc + R[(a0 + t) * rs + a2 * cs] * x[a2 * b + c2];         \
        y[(a0 + t) * b + c2] = acc;                                                                     \
      }                                                                                                 \
  }
DEFINE_MIX(mix_f64, double)
DEFINE_MIX(mix_f32, float)

/* x[i] = src[i] / s (src may be x): an IEEE division per element, 64 bytes at a time, so every
 * clone gives the bits of the scalar loop */
#define DEFINE_DIV(NAME, T)                                                                         \
  __attribute__((target_clones("avx512f", "avx2", "default"))) static void NAME(                   \
      T *x, const T *src, int64_t n, T s) {                                                        \
    typedef T VT __attribute__((vector_size(64)));                                                 \
    enum { L = 64 / sizeof(T) };                                                                   \
    int64_t i = 0;                                                                                 \
    for (; i + L <= n; i += L) {                                                                   \
      VT v;                                                                                        \
      memcpy(&v, src + i, sizeof v);                                                               \
      v = v / s;                                                                                   \
      memcpy(x + i, &v, sizeof v);                                                                 \
    }                                                                                              \
    for (; i < n; i++) x[i] = src[i] / s;                                                          \
  }
DEFINE_DIV(div_f64, double)
DEFINE_DIV(div_f32, float)

/* one vector: FWHT of each block, then y_a = sum_a' R[a][a'] z_a' (R^T when transposed),
 * divided by sqrt(n). tmp [n] scratch. par: split the blocks across the threads (one long
 * vector; a batch-1 product would otherwise rotate its input on one thread); the operations
 * per element are the same either way, so are the bits. */
#define DEFINE_VEC(NAME, T, FWHT, RMEMBER, MIX, DIV)                                               \
  static void NAME(const e8q_had *h, T *x, int transpose, T *tmp, int par) {                      \
    const int64_t n = h->n, b = h->b;                                                            \
    const int K = h->f.K;                                                                        \
    const T sn = (T)sqrt((double)n);                                                             \
    if (K == 1) {                                                                                \
      FWHT(x, n);                                                                                \
      DIV(x, x, n, sn);                                                                          \
      return;                                                                                    \
    }                                                                                            \
    const T *R = h->f.RMEMBER;                                                                   \
    if (!par) { /* the same steps with no parallel region (a short vector's usual case) */       \
      for (int a = 0; a < K; a++) FWHT(x + a * b, b);                                            \
      for (int a = 0; a < K; a += E8Q_MIX_RB)                                                    \
        MIX(tmp, R, x, K, a, K - a < E8Q_MIX_RB ? K - a : E8Q_MIX_RB, b, transpose);             \
      DIV(x, tmp, n, sn);                                                                        \
      return;                                                                                    \
    }                                                                                            \
    _Pragma("omp parallel")                                                                      \
    {                                                                                            \
      _Pragma("omp for schedule(static)")                                                        \
      for (int a = 0; a < K; a++) FWHT(x + a * b, b);                                            \
      _Pragma("omp for schedule(static)")                                                        \
      for (int a = 0; a < K; a += E8Q_MIX_RB)                                                    \
        MIX(tmp, R, x, K, a, K - a < E8Q_MIX_RB ? K - a : E8Q_MIX_RB, b, transpose);             \
      _Pragma("omp for schedule(static)")                                                        \
      for (int a = 0; a < K; a++) DIV(x + a * b, tmp + a * b, b, sn);                            \
    }                                                                                            \
  }
DEFINE_VEC(vec_f64, double, e8q_fwht_f64, R, mix_f64, div_f64)
DEFINE_VEC(vec_f32, float, e8q_fwht_f32, Rf, mix_f32, div_f32)

void e8q_had_vec_f64(const e8q_had *h, double *x, int transpose) {
  double *tmp = h->f.K > 1 ? e8q_malloc(sizeof(double) * h->n, "Hadamard scratch") : NULL;
  vec_f64(h, x, transpose, tmp, 0);
  free(tmp);
}

void e8q_had_vec_f32(const e8q_had *h, float *x, int transpose) {
  float *tmp = h->f.K > 1 ? e8q_malloc(sizeof(float) * h->n, "Hadamard scratch") : NULL;
  vec_f32(h, x, transpose, tmp, 0);
  free(tmp);
}

/* Below this many elements a vector is rotated on one thread: a transform of n = 576 or 1536 (a
 * 135M model's widths) takes about a microsecond, less than the fork and three barriers of a
 * parallel region, and a decode step runs a few hundred of them. */
#define E8Q_HAD_PAR_MIN 8192
#define E8Q_HAD_STACK 4096 /* a serial transform's scratch is on the stack up to this length */

/* a single long row with a factor (K > 1) and more than one thread: its blocks across the threads */
static int one_row_parallel(const e8q_had *h, int64_t rows) {
  return rows == 1 && h->n >= E8Q_HAD_PAR_MIN && h->f.K > 1 && omp_get_max_threads() > 1 && !omp_in_parallel();
}

/* rows of A (leading dimension ld), OpenMP over rows; one row on all threads */
#define DEFINE_ROWS(NAME, T, VEC)                                                                  \
  void NAME(const e8q_had *h, T *A, int64_t rows, int64_t ld, int transpose) {                   \
    if (one_row_parallel(h, rows)) {                                                             \
      T *tmp = e8q_malloc(sizeof(T) * h->n, "Hadamard scratch");                                 \
      VEC(h, A, transpose, tmp, 1);                                                              \
      free(tmp);                                                                                 \
      return;                                                                                    \
    }                                                                                            \
    if (rows == 1 || rows * h->n < E8Q_HAD_PAR_MIN) { /* no parallel region, scratch on the stack */ \
      T stack[h->n <= E8Q_HAD_STACK ? h->n : 1];                                                 \
      T *tmp = h->n <= E8Q_HAD_STACK ? stack : e8q_malloc(sizeof(T) * h->n, "Hadamard scratch"); \
      for (int64_t r = 0; r < rows; r++) VEC(h, A + r * ld, transpose, tmp, 0);                  \
      if (tmp != stack) free(tmp);                                                               \
      return;                                                                                    \
    }                                                                                            \
    _Pragma("omp parallel")                                                                      \
    {                                                                                            \
      T *tmp = e8q_malloc(sizeof(T) * h->n, "Hadamard scratch");                                 \
      _Pragma("omp for schedule(static)")                                                        \
      for (int64_t r = 0; r < rows; r++) VEC(h, A + r * ld, transpose, tmp, 0);                  \
      free(tmp);                                                                                 \
    }                                                                                            \
  }
DEFINE_ROWS(e8q_had_rows_f64, double, vec_f64)
DEFINE_ROWS(e8q_had_rows_f32, float, vec_f32)

/* columns: butterflies combine whole rows; the factor is a GEMM over row blocks */
#define DEFINE_COLS(NAME, T, GEMM, RMEMBER)                                                   \
  void NAME(const e8q_had *h, T *A, int64_t cols, int64_t ld, int transpose) {               \
    int64_t n = h->n, b = h->b;                                                              \
    int K = h->f.K;                                                                          \
    E8Q_CHECK(ld >= cols, "Hadamard on columns: leading dimension %lld < %lld columns",      \
              (long long)ld, (long long)cols);                                               \
    for (int a = 0; a < K; a++) {                                                            \
      T *blk = A + (int64_t)a * b * ld;                                                      \
      for (int64_t hh = 1; hh < b; hh <<= 1) {                                               \
        _Pragma("omp parallel for schedule(static)")                                         \
        for (int64_t jj = 0; jj < b / 2; jj++) {                                             \
          int64_t i = (jj / hh) * 2 * hh, j = i + jj % hh;                                   \
          T *u = blk + j * ld, *v = blk + (j + hh) * ld;                                     \
          for (int64_t c = 0; c < cols; c++) {                                               \
            T x = u[c], y = v[c];                                                            \
            u[c] = x + y;                                                                    \
            v[c] = x - y;                                                                    \
          }                                                                                  \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
    T inv = (T)(1.0 / sqrt((double)n));                                                      \
    if (K == 1) {                                                                            \
      _Pragma("omp parallel for schedule(static)")                                           \
      for (int64_t i = 0; i < n; i++)                                                        \
        for (int64_t c = 0; c < cols; c++) A[i * ld + c] *= inv;                             \
      return;                                                                                \
    }                                                                                        \
    T *tmp = e8q_malloc(sizeof(T) * (size_t)K * cols, "Hadamard column scratch");            \
    for (int64_t c = 0; c < b; c++) {                                                        \
      GEMM(CblasRowMajor, transpose ? CblasTrans : CblasNoTrans, CblasNoTrans, K, (int)cols, \
           K, inv, h->f.RMEMBER, K, A + c * ld, (int)(b * ld), 0, tmp, (int)cols);           \
      for (int a = 0; a < K; a++) memcpy(A + (a * b + c) * ld, tmp + (int64_t)a * cols,      \
                                         sizeof(T) * cols);                                  \
    }                                                                                        \
    free(tmp);                                                                               \
  }
DEFINE_COLS(e8q_had_cols_f64, double, cblas_dgemm, R)
DEFINE_COLS(e8q_had_cols_f32, float, cblas_sgemm, Rf)

void e8q_had_matrix_ref(const e8q_had *h, double *M) {
  int64_t n = h->n, b = h->b;
  double sn = sqrt((double)n);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) {
      int64_t ai = i / b, ci = i % b, aj = j / b, cj = j % b;
      double r = h->f.K == 1 ? 1.0 : h->f.R[ai * h->f.K + aj];
      double w = (__builtin_popcountll((uint64_t)(ci & cj)) & 1) ? -1.0 : 1.0;
      M[i * n + j] = r * w / sn;
    }
}

void e8q_had_vec_f64_ref(const e8q_had *h, const double *x, int transpose, double *out) {
  int64_t n = h->n, b = h->b;
  double sn = sqrt((double)n);
  for (int64_t i = 0; i < n; i++) {
    double s = 0;
    for (int64_t j = 0; j < n; j++) {
      int64_t ai = i / b, ci = i % b, aj = j / b, cj = j % b;
      double r = h->f.K == 1 ? 1.0 : transpose ? h->f.R[aj * h->f.K + ai] : h->f.R[ai * h->f.K + aj];
      double w = (__builtin_popcountll((uint64_t)(ci & cj)) & 1) ? -1.0 : 1.0;
      s += r * w * x[j];
    }
    out[i] = s / sn;
  }
}

/* ---------------------------------------------------------------- RHT */
static void scale_rows_cols(double *A, int64_t m, int64_t n, const double *rs, const double *cs) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) A[i * n + j] *= (rs ? rs[i] : 1.0) * (cs ? cs[j] : 1.0);
}

static void transpose_square(double *A, int64_t n) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = i + 1; j < n; j++) {
      double t = A[i * n + j];
      A[i * n + j] = A[j * n + i];
      A[j * n + i] = t;
    }
}

void e8q_rht_weight(const e8q_had *hm, const e8q_had *hn, const double *SU, const double *SV, double *W) {
  int64_t m = hm->n, n = hn->n;
  scale_rows_cols(W, m, n, SV, SU);
  e8q_had_rows_f64(hn, W, m, n, 1); /* W SU M_n: row <- M_n^T row */
  e8q_had_cols_f64(hm, W, n, n, 1); /* M_m^T (...) */
}

void e8q_rht_weight_inv(const e8q_had *hm, const e8q_had *hn, const double *SU, const double *SV, double *W) {
  int64_t m = hm->n, n = hn->n;
  e8q_had_cols_f64(hm, W, n, n, 0); /* M_m Wr */
  e8q_had_rows_f64(hn, W, m, n, 0); /* (...) M_n^T: row <- M_n row */
  scale_rows_cols(W, m, n, SV, SU);
}

void e8q_rht_hessian(const e8q_had *hn, const double *SU, double *H) {
  int64_t n = hn->n;
  scale_rows_cols(H, n, n, SU, SU);
  e8q_had_cols_f64(hn, H, n, n, 1); /* A = M^T H' */
  transpose_square(H, n);           /* A^T = H' M */
  e8q_had_cols_f64(hn, H, n, n, 1); /* M^T H' M (symmetric, so no transpose back is needed) */
  transpose_square(H, n);           /* keep exact orientation anyway */
}

void e8q_rht_hessian_inv(const e8q_had *hn, const double *SU, double *H) {
  int64_t n = hn->n;
  e8q_had_cols_f64(hn, H, n, n, 0);
  transpose_square(H, n);
  e8q_had_cols_f64(hn, H, n, n, 0);
  transpose_square(H, n);
  scale_rows_cols(H, n, n, SU, SU);
}

/* ---------------------------------------------------------------- padding */
void e8q_pad_weight(const float *W, int64_t m, int64_t n, int64_t n_pad, double *out) {
  E8Q_CHECK(n_pad >= n, "padding %lld columns to %lld", (long long)n, (long long)n_pad);
  for (int64_t i = 0; i < m; i++) {
    for (int64_t j = 0; j < n; j++) out[i * n_pad + j] = W[i * n + j];
    for (int64_t j = n; j < n_pad; j++) out[i * n_pad + j] = 0;
  }
}

void e8q_pad_hessian(const double *H, int64_t n, int64_t n_pad, double *out) {
  E8Q_CHECK(n_pad >= n, "padding a %lld x %lld Hessian to %lld", (long long)n, (long long)n, (long long)n_pad);
  for (int64_t i = 0; i < n_pad; i++)
    for (int64_t j = 0; j < n_pad; j++) out[i * n_pad + j] = (i < n && j < n) ? H[i * n + j] : 0.0;
}
