/* kernels/e8p.c: E8P12 / RVQ encoders, tables from their definitions, reference packing. */
#include "kernels/e8p.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common/error.h"

/* ---------------------------------------------------------------- definitions */
/* The 29 rows of |v|^2 = 12 (five 3/2 and three 1/2) that complete the table, in half units,
 * as in the reference implementation (Cornell-RelaxML/quip-sharp @ 1d8f873). */
static const int8_t norm12_rows2[29][8] = {
    {3, 1, 1, 1, 3, 3, 3, 3}, {1, 3, 1, 1, 3, 3, 3, 3}, {1, 1, 3, 1, 3, 3, 3, 3}, {1, 1, 1, 3, 3, 3, 3, 3},
    {3, 3, 3, 1, 3, 3, 1, 1}, {3, 3, 3, 1, 3, 1, 3, 1}, {3, 3, 3, 1, 1, 3, 3, 1}, {3, 3, 3, 1, 3, 1, 1, 3},
    {3, 3, 3, 1, 1, 3, 1, 3}, {3, 3, 3, 1, 1, 1, 3, 3}, {3, 3, 1, 3, 3, 3, 1, 1}, {3, 3, 1, 3, 3, 1, 3, 1},
    {3, 3, 1, 3, 1, 3, 3, 1}, {3, 3, 1, 3, 3, 1, 1, 3}, {3, 3, 1, 3, 1, 3, 1, 3}, {3, 3, 1, 3, 1, 1, 3, 3},
    {3, 1, 3, 3, 3, 3, 1, 1}, {3, 1, 3, 3, 3, 1, 3, 1}, {3, 1, 3, 3, 1, 3, 3, 1}, {3, 1, 3, 3, 3, 1, 1, 3},
    {3, 1, 3, 3, 1, 3, 1, 3}, {1, 3, 3, 3, 1, 1, 3, 3}, {1, 3, 3, 3, 3, 3, 1, 1}, {1, 3, 3, 3, 3, 1, 3, 1},
    {1, 3, 3, 3, 1, 3, 3, 1}, {1, 3, 3, 3, 3, 1, 1, 3}, {1, 3, 3, 3, 1, 3, 1, 3}, {1, 1, 3, 3, 1, 3, 3, 3},
    {3, 3, 1, 1, 3, 3, 3, 1},
};

void e8q_e8p_build_abs_rows(double rows[E8Q_E8P_ROWS][8]) {
  /* |v| for v in (Z+1/2)^8 with even sum and |v|^2 <= 10. |v_i| <= sqrt(10) leaves 1/2, 3/2,
   * 5/2; a sign flip changes the sum by the odd integer 2|v_i|, so every such abs vector is
   * reached by a v with even sum. Counting t = 0..3^8-1 with digit 7 least significant
   * enumerates the candidates in lexicographic order, so no sort is needed. */
  int n = 0;
  for (int t = 0; t < 6561; t++) {
    double a[8];
    int u = t;
    double n2 = 0;
    for (int i = 7; i >= 0; i--) {
      a[i] = 0.5 + (double)(u % 3);
      u /= 3;
      n2 += a[i] * a[i];
    }
    if (n2 > 10.0) continue;
    E8Q_CHECK(n < E8Q_E8P_ROWS_ENUM, "E8P table: more than %d rows of norm <= 10", E8Q_E8P_ROWS_ENUM);
    memcpy(rows[n++], a, sizeof a);
  }
  E8Q_CHECK(n == E8Q_E8P_ROWS_ENUM, "E8P table: %d rows of norm <= 10, expected %d", n, E8Q_E8P_ROWS_ENUM);
  for (int r = 0; r < 29; r++)
    for (int i = 0; i < 8; i++) rows[n + r][i] = 0.5 * norm12_rows2[r][i];
}

void e8q_e8p_build_packed_abs(uint32_t packed[E8Q_E8P_ROWS]) {
  static const int perm[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  double rows[E8Q_E8P_ROWS][8];
  e8q_e8p_build_abs_rows(rows);
  for (int r = 0; r < E8Q_E8P_ROWS; r++) {
    double sum = 0;
    for (int i = 0; i < 8; i++) sum += rows[r][i];
    uint32_t w = 0;
    for (int j = 0; j < 8; j++) {
      double u = rows[r][perm[j]];
      if (j == 7 && ((int)sum & 1)) u = -u;
      w |= (uint32_t)(int)(2 * u + 8) << (4 * j);
    }
    packed[r] = w;
  }
}

void e8q_e81b_build_grid2(int8_t g[E8Q_E81B_SIZE][8]) {
  int n = 0;
  /* integer points of norm 0 or 2 in {-1,0,1}^8, lexicographic */
  for (int t = 0; t < 6561; t++) {
    int v[8], u = t, n2 = 0;
    for (int i = 7; i >= 0; i--) {
      v[i] = u % 3 - 1;
      u /= 3;
      n2 += v[i] * v[i];
    }
    if (n2 != 0 && n2 != 2) continue;
    for (int i = 0; i < 8; i++) g[n][i] = (int8_t)(2 * v[i]);
    n++;
  }
  /* (+-1/2)^8 with an even number of minus signs, lexicographic (bit 7-i set = minus... ) */
  for (int t = 0; t < 256; t++) {
    int neg = 0;
    int8_t v[8];
    for (int i = 0; i < 8; i++) {
      /* most significant bit first; a clear bit is -1/2 so that -1/2 sorts first */
      int bit = (t >> (7 - i)) & 1;
      v[i] = bit ? 1 : -1;
      neg += !bit;
    }
    if (neg & 1) continue;
    memcpy(g[n++], v, 8);
  }
  for (int i = 0; i < 8; i++, n++) {
    memset(g[n], 0, 8);
    g[n][i] = 4;
  }
  for (int i = 0; i < 7; i++, n++) {
    memset(g[n], 0, 8);
    g[n][i] = -4;
  }
  E8Q_CHECK(n == E8Q_E81B_SIZE, "1-bit E8 grid: built %d points, expected %d", n, E8Q_E81B_SIZE);
}

/* ---------------------------------------------------------------- encoder tables
 * Structure of arrays so the 256-row search vectorises: a[i][r] = |v| of row r, element i. */
static struct {
  e8q_e8p_enc_tables enc;          /* shared with the __host__ __device__ twins (e8p_encode_dev.h):
                                      abs rows, norms, sign-parity mismatch, the canonical half of
                                      D8^ for ties, the 1-bit grid */
  double full[E8Q_E8P_NCODES][8];  /* every point, for the brute force */
  double full_n2[E8Q_E8P_NCODES];
  double e81b_t[8][E8Q_E81B_SIZE]; /* the 1-bit grid transposed, for the vectorised scores */
} T;
static pthread_once_t T_once = PTHREAD_ONCE_INIT;

static void tables_init(void) {
  for (int r = 0; r < E8Q_E8P_ROWS; r++) {
    uint32_t w = e8q_e8p_packed_abs_host[r];
    double n2 = 0, sum = 0;
    for (int i = 0; i < 8; i++) {
      double v = fabs((double)((int)((w >> (4 * e8q_e8p_sigma(i))) & 15u) - 8) * 0.5);
      T.enc.a[i][r] = v;
      n2 += v * v;
      sum += v;
    }
    T.enc.n2[r] = n2;
    T.enc.odd[r] = (uint32_t)((int)sum & 1);
    T.enc.mismatch[0][r] = T.enc.odd[r] ? 1.0 : 0.0;
    T.enc.mismatch[1][r] = T.enc.odd[r] ? 0.0 : 1.0;
  }
  for (uint32_t c = 0; c < E8Q_E8P_NCODES; c++) {
    e8q_e8p_decode_f64((uint16_t)c, T.full[c]);
    double n2 = 0;
    for (int i = 0; i < 8; i++) n2 += T.full[c][i] * T.full[c][i];
    T.full_n2[c] = n2;
  }
  T.enc.npart = 0;
  for (uint32_t c = 0; c < E8Q_E8P_NCODES; c++) {
    if (!e8q_parity8(c)) continue;
    double g[8], mn = 1e9, n2 = 0;
    int neg = 0;
    for (int i = 0; i < 8; i++) g[i] = T.full[c][i] + 0.25;
    for (int i = 0; i < 7; i++) neg += g[i] < 0, mn = g[i] < mn ? g[i] : mn;
    if (neg > 1 || mn < -0.5) continue;
    E8Q_CHECK(T.enc.npart < E8Q_E8P_PART_MAX, "E8P canonical half: too many points");
    for (int i = 0; i < 8; i++) T.enc.part[T.enc.npart][i] = g[i], n2 += g[i] * g[i];
    T.enc.part_n2[T.enc.npart++] = n2;
  }
  for (int g = 0; g < E8Q_E81B_SIZE; g++) {
    double n2 = 0;
    for (int i = 0; i < 8; i++) {
      T.enc.e81b[g][i] = 0.5 * e8q_e81b_grid2_host[g][i];
      T.e81b_t[i][g] = T.enc.e81b[g][i];
      n2 += T.enc.e81b[g][i] * T.enc.e81b[g][i];
    }
    T.enc.e81b_n2[g] = n2;
  }
}
static inline void tables_ready(void) { pthread_once(&T_once, tables_init); }

void e8q_e8p_enc_tables_fill(e8q_e8p_enc_tables *t) {
  tables_ready();
  *t = T.enc;
}

/* ---------------------------------------------------------------- E8P encoder */
/* score[r] = max over allowed signs of 2 y.v - |v|^2 for row r (v = signed row),
 * given ay = |y| and the parity of the number of negative coordinates of y. The same code
 * runs in every clone (no FMA contraction without the fma target), so all machines agree. */
__attribute__((target_clones("avx2", "default"), optimize("O3", "tree-vectorize")))
static void row_scores(const double ay[8], int negpar, double *restrict score) {
  const double *restrict mis = T.enc.mismatch[negpar];
  const double *restrict n2 = T.enc.n2;
  const double *restrict a0 = T.enc.a[0], *restrict a1 = T.enc.a[1], *restrict a2 = T.enc.a[2], *restrict a3 = T.enc.a[3];
  const double *restrict a4 = T.enc.a[4], *restrict a5 = T.enc.a[5], *restrict a6 = T.enc.a[6], *restrict a7 = T.enc.a[7];
  const double y0 = ay[0], y1 = ay[1], y2 = ay[2], y3 = ay[3], y4 = ay[4], y5 = ay[5], y6 = ay[6], y7 = ay[7];
#pragma GCC ivdep
  for (int r = 0; r < E8Q_E8P_ROWS; r++) {
    double p0 = a0[r] * y0, p1 = a1[r] * y1, p2 = a2[r] * y2, p3 = a3[r] * y3;
    double p4 = a4[r] * y4, p5 = a5[r] * y5, p6 = a6[r] * y6, p7 = a7[r] * y7;
    double d = ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7));
    double m01 = p0 < p1 ? p0 : p1, m23 = p2 < p3 ? p2 : p3, m45 = p4 < p5 ? p4 : p5, m67 = p6 < p7 ? p6 : p7;
    double ma = m01 < m23 ? m01 : m23, mb = m45 < m67 ? m45 : m67;
    double mn = ma < mb ? ma : mb;
    score[r] = 2.0 * d - n2[r] - 4.0 * mn * mis[r];
  }
}

/* best code for one shift: returns the score, writes the code; *tie is set when another
 * candidate scores within a relative 1e-9 (an exact tie in exact arithmetic is then possible) */
static double encode_shift(const double x[8], double shift, uint16_t *code, int *tie) {
  double y[8], ay[8];
  uint32_t neg = 0;
  int negpar = 0;
  for (int i = 0; i < 8; i++) {
    y[i] = x[i] - shift;
    ay[i] = fabs(y[i]);
    if (y[i] < 0) {
      neg |= 1u << i;
      negpar ^= 1;
    }
  }
  double score[E8Q_E8P_ROWS];
  row_scores(ay, negpar, score);
  /* best row (first maximum) and the runner-up score, in one scan */
  int best = 0;
  double s1 = score[0], s2 = -INFINITY;
  for (int r = 1; r < E8Q_E8P_ROWS; r++) {
    double v = score[r];
    if (v > s1) {
      s2 = s1;
      s1 = v;
      best = r;
    } else if (v > s2) {
      s2 = v;
    }
  }
  double tol = 1e-9 * (1.0 + fabs(s1));
  if (s2 >= s1 - tol) *tie = 1;
  /* signs of the best row: follow y; flip the weakest coordinate when the parity is wrong */
  int k = 0;
  double mk = T.enc.a[0][best] * ay[0];
  for (int i = 1; i < 8; i++)
    if (T.enc.a[i][best] * ay[i] < mk) {
      mk = T.enc.a[i][best] * ay[i];
      k = i;
    }
  for (int i = 0; i < 8; i++) {
    double pi = T.enc.a[i][best] * ay[i];
    if (pi <= tol || (i != k && pi <= mk + tol)) *tie = 1; /* a sign choice ties */
  }
  if (T.enc.odd[best] != (uint32_t)negpar) neg ^= 1u << k;
  /* sign bits relative to the packed row (its element 7 is already negative when odd) */
  uint32_t s = 0;
  for (int i = 0; i < 8; i++) {
    uint32_t t = (neg >> i) & 1u;
    if (i == 7) t ^= T.enc.odd[best];
    s |= t << e8q_e8p_sigma(i);
  }
  uint32_t b = shift > 0 ? s : (s ^ 1u); /* s has even parity; B = S ^ p */
  *code = (uint16_t)(((uint32_t)best << 8) | b);
  return score[best];
}

/* ---- the reference's own search, for (near-)ties
 * Exact ties are real (weights on a rational grid hit them) and the reference breaks them by
 * the order and the floating-point rounding of its search: quantize x - 1/4 and x + 1/4 each
 * by canonicalising signs (|y|, last coordinate negated when y has an odd number of
 * negatives), taking the first maximum over its canonical half of D8^ of
 * (2|y|) . g - |g|^2 (the dot product accumulated left to right with fused multiply-adds, as
 * its float64 matmul did), restoring the signs, and keeping the x + 1/4 candidate only when
 * its error (the norm, squares summed pairwise) is strictly smaller. The floating-point
 * details were chosen because they reproduce every tie in golden [ldlq_example]. This path reproduces the golden codes on ties; it is used
 * only when the fast search sees a near tie, so generic inputs never pay for it. */
static double compat_part(const double y[8], double vals[8]) { return e8q_edev_compat_part(&T.enc, y, vals); }

static uint16_t encode_compat(const double x[8]) {
  double yp[8], ym[8], vp[8], vm[8], q[8];
  for (int i = 0; i < 8; i++) yp[i] = x[i] + 0.25, ym[i] = x[i] - 0.25;
  double ep = compat_part(yp, vp), em = compat_part(ym, vm);
  for (int i = 0; i < 8; i++) q[i] = ep < em ? vp[i] - 0.25 : vm[i] + 0.25;
  /* q is a codebook point: the fast search at distance 0 has no tie and returns its code */
  uint16_t cp, cm;
  int tie = 0;
  double sp = encode_shift(q, 0.25, &cp, &tie), sm = encode_shift(q, -0.25, &cm, &tie);
  double sum = q[0] + q[1] + q[2] + q[3] + q[4] + q[5] + q[6] + q[7];
  return (-sp - 0.5 * sum) < (-sm + 0.5 * sum) ? cp : cm;
}

uint16_t e8q_e8p_encode(const double x[8], double xhat[8]) {
  tables_ready();
  uint16_t cp, cm;
  int tie = 0;
  double sp = encode_shift(x, 0.25, &cp, &tie), sm = encode_shift(x, -0.25, &cm, &tie);
  /* the scores are relative to x - shift: put both on the scale of ||x - q||^2 */
  double sum = x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7];
  double ep = -sp - 0.5 * sum, em = -sm + 0.5 * sum;
  if (fabs(ep - em) <= 1e-9 * (1.0 + fabs(ep))) tie = 1;
  uint16_t c = tie ? encode_compat(x) : ep < em ? cp : cm;
  if (xhat) e8q_e8p_decode_f64(c, xhat);
  return c;
}

uint16_t e8q_e8p_encode_ref(const double x[8], double xhat[8]) {
  tables_ready();
  uint32_t best = 0;
  double bs = -INFINITY;
  for (uint32_t c = 0; c < E8Q_E8P_NCODES; c++) {
    double d = 0;
    for (int i = 0; i < 8; i++) d += x[i] * T.full[c][i];
    double s = 2 * d - T.full_n2[c];
    if (s > bs) {
      bs = s;
      best = c;
    }
  }
  if (xhat) e8q_e8p_decode_f64((uint16_t)best, xhat);
  return (uint16_t)best;
}

void e8q_e8p_encode_batch(const double *x, size_t n, uint16_t *codes, double *xhat) {
  tables_ready();
#pragma omp parallel for schedule(static)
  for (size_t k = 0; k < n; k++) codes[k] = e8q_e8p_encode(x + 8 * k, xhat ? xhat + 8 * k : NULL);
}

/* ---------------------------------------------------------------- RVQ */
uint16_t e8q_rvq4_encode(const double x[8], uint16_t *c2, double xhat[8]) {
  double q1[8], r[8], q2[8];
  uint16_t c1 = e8q_e8p_encode(x, q1);
  for (int i = 0; i < 8; i++) r[i] = (x[i] - q1[i]) * E8Q_RVQ4_RESID_SCALE;
  *c2 = e8q_e8p_encode(r, q2);
  if (xhat)
    for (int i = 0; i < 8; i++) xhat[i] = q1[i] + q2[i] / E8Q_RVQ4_RESID_SCALE;
  return c1;
}

/* s[g] = 2 r.g - |g|^2 for the 256 points (sum over i left to right in every clone) */
__attribute__((target_clones("avx2", "default")))
static void e81b_scores(const double r[8], double *restrict s) {
  const double *restrict g0 = T.e81b_t[0], *restrict g1 = T.e81b_t[1], *restrict g2 = T.e81b_t[2], *restrict g3 = T.e81b_t[3];
  const double *restrict g4 = T.e81b_t[4], *restrict g5 = T.e81b_t[5], *restrict g6 = T.e81b_t[6], *restrict g7 = T.e81b_t[7];
  const double *restrict n2 = T.enc.e81b_n2;
  const double r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3], r4 = r[4], r5 = r[5], r6 = r[6], r7 = r[7];
#pragma GCC ivdep
  for (int g = 0; g < E8Q_E81B_SIZE; g++) {
    double d = r0 * g0[g];
    d += r1 * g1[g];
    d += r2 * g2[g];
    d += r3 * g3[g];
    d += r4 * g4[g];
    d += r5 * g5[g];
    d += r6 * g6[g];
    d += r7 * g7[g];
    s[g] = 2 * d - n2[g];
  }
}

uint8_t e8q_e81b_encode(const double r[8]) {
  tables_ready();
  double s[E8Q_E81B_SIZE];
  e81b_scores(r, s);
  int best = 0;
  for (int g = 1; g < E8Q_E81B_SIZE; g++)
    if (s[g] > s[best]) best = g; /* first maximum wins */
  return (uint8_t)best;
}

uint16_t e8q_rvq3_encode(const double x[8], uint8_t *c2, double xhat[8]) {
  double q1[8], r[8];
  uint16_t c1 = e8q_e8p_encode(x, q1);
  for (int i = 0; i < 8; i++) r[i] = (x[i] - q1[i]) * E8Q_RVQ3_RESID_SCALE;
  *c2 = e8q_e81b_encode(r);
  if (xhat)
    for (int i = 0; i < 8; i++) xhat[i] = q1[i] + T.enc.e81b[*c2][i] / E8Q_RVQ3_RESID_SCALE;
  return c1;
}

/* ---------------------------------------------------------------- codebook traits */
static void e8p12_encode(const double x[8], uint16_t *c1, uint16_t *c2, double xhat[8]) {
  *c1 = e8q_e8p_encode(x, xhat);
  *c2 = 0;
}
static void rvq4_encode(const double x[8], uint16_t *c1, uint16_t *c2, double xhat[8]) {
  *c1 = e8q_rvq4_encode(x, c2, xhat);
}
static void rvq3_encode(const double x[8], uint16_t *c1, uint16_t *c2, double xhat[8]) {
  uint8_t s;
  *c1 = e8q_rvq3_encode(x, &s, xhat);
  *c2 = s;
}
static void e8p12_decode_f64(uint16_t c1, uint16_t c2, double out[8]) {
  (void)c2;
  e8q_e8p_decode_f64(c1, out);
}
static void rvq4_decode_f64(uint16_t c1, uint16_t c2, double out[8]) {
  double b[8];
  e8q_e8p_decode_f64(c1, out);
  e8q_e8p_decode_f64(c2, b);
  for (int i = 0; i < 8; i++) out[i] += b[i] / E8Q_RVQ4_RESID_SCALE;
}
static void rvq3_decode_f64(uint16_t c1, uint16_t c2, double out[8]) {
  double b[8];
  e8q_e8p_decode_f64(c1, out);
  e8q_e81b_decode_f64(c2, b);
  for (int i = 0; i < 8; i++) out[i] += b[i] / E8Q_RVQ3_RESID_SCALE;
}

static const e8q_codebook_traits cb_traits[] = {
    /* id                 name          bits c2B c2 dtype resid scale            default rho   encode        decode */
    {E8Q_CB_E8P12,      "E8P12",      2, 0, NULL,  0,                    E8Q_RHO_E8P,  e8p12_encode, e8p12_decode_f64},
    {E8Q_CB_E8P12RVQ3B, "E8P12RVQ3B", 3, 1, "U8",  E8Q_RVQ3_RESID_SCALE, E8Q_RHO_RVQ3, rvq3_encode,  rvq3_decode_f64},
    {E8Q_CB_E8P12RVQ4B, "E8P12RVQ4B", 4, 2, "U16", E8Q_RVQ4_RESID_SCALE, E8Q_RHO_RVQ4, rvq4_encode,  rvq4_decode_f64},
};
#define N_CB ((int)(sizeof cb_traits / sizeof *cb_traits))

static const e8q_codebook_traits *cb_find(e8q_codebook_id cb) {
  for (int i = 0; i < N_CB; i++)
    if (cb_traits[i].id == cb) return &cb_traits[i];
  return NULL;
}

int e8q_cb_known(e8q_codebook_id cb) { return cb_find(cb) != NULL; }

const e8q_codebook_traits *e8q_cb_traits(e8q_codebook_id cb) {
  const e8q_codebook_traits *t = cb_find(cb);
  if (t) return t;
  E8Q_FATAL("unknown codebook id %d (expected 2, 3 or 4 bits)", (int)cb);
}

e8q_codebook_id e8q_cb_from_bits(int bits) {
  for (int i = 0; i < N_CB; i++)
    if (cb_traits[i].bits == bits) return cb_traits[i].id;
  E8Q_FATAL("--bits %d is not supported: use 2 (E8P12), 3 (E8P12RVQ3B) or 4 (E8P12RVQ4B)", bits);
}

void e8q_cb_encode(e8q_codebook_id cb, const double x[8], uint16_t *c1, uint16_t *c2, double xhat[8]) {
  uint16_t s;
  e8q_cb_traits(cb)->encode(x, c1, &s, xhat);
  if (c2) *c2 = s;
}

void e8q_cb_decode_f64(e8q_codebook_id cb, uint16_t c1, uint16_t c2, double out[8]) {
  e8q_cb_traits(cb)->decode_f64(c1, c2, out);
}

const char *e8q_cb_name(e8q_codebook_id cb) { return e8q_cb_traits(cb)->name; }

double e8q_cb_default_rho(e8q_codebook_id cb) { return e8q_cb_traits(cb)->default_rho; }

/* ---------------------------------------------------------------- reference packing */
static inline int64_t pack_word_index(int64_t R, int64_t C, int64_t nc) {
  int64_t A = R / 8, a = R % 8, B = C / 4, b = C % 4;
  return ((A * (nc / 8) + B) * 8 + a) * 4 + b;
}

/* the reference packing's shape rule; what: "packing" or "unpacking" */
static void check_ref_shape(int64_t m, int64_t nc, const char *what) {
  E8Q_CHECK(m % 16 == 0 && nc % 8 == 0,
            "reference E8P %s needs rows %% 16 == 0 and codes per row %% 8 == 0 (got %lld x %lld)", what,
            (long long)m, (long long)nc);
}

void e8q_e8p_pack_ref(const uint16_t *codes, int64_t m, int64_t nc, uint64_t *words) {
  check_ref_shape(m, nc, "packing");
  for (int64_t R = 0; R < m / 2; R++)
    for (int64_t C = 0; C < nc / 2; C++) {
      uint16_t q[4] = {codes[(2 * R) * nc + 2 * C], codes[(2 * R + 1) * nc + 2 * C], codes[(2 * R) * nc + 2 * C + 1],
                       codes[(2 * R + 1) * nc + 2 * C + 1]};
      uint64_t abs32 = 0, sign32 = 0;
      for (int k = 0; k < 4; k++) {
        abs32 |= (uint64_t)(q[k] >> 8) << (8 * k);
        for (int j = 0; j < 8; j++) sign32 |= (uint64_t)((q[k] >> j) & 1u) << (4 * j + k);
      }
      words[pack_word_index(R, C, nc)] = (sign32 << 32) | abs32;
    }
}

void e8q_e8p_unpack_ref(const uint64_t *words, int64_t m, int64_t nc, uint16_t *codes) {
  check_ref_shape(m, nc, "unpacking");
  for (int64_t R = 0; R < m / 2; R++)
    for (int64_t C = 0; C < nc / 2; C++) {
      uint64_t w = words[pack_word_index(R, C, nc)];
      for (int k = 0; k < 4; k++) {
        uint32_t c = (uint32_t)((w >> (8 * k)) & 0xFFu) << 8;
        for (int j = 0; j < 8; j++) c |= (uint32_t)((w >> (32 + 4 * j + k)) & 1u) << j;
        int64_t r = 2 * R + (k & 1), col = 2 * C + (k >> 1);
        codes[r * nc + col] = (uint16_t)c;
      }
    }
}
