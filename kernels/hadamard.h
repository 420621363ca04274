/* kernels/hadamard.h: fast Walsh-Hadamard transform, the Hadamard factors R_K, the
 * orthonormal transform M_n = kron(R_K, WHT_{n/K}) / sqrt(n), and the randomized Hadamard
 * transform (RHT) of weights and Hessians (DESIGN.md section 3).
 *
 * Index convention: for n = K * b (b = n/K a power of two), i = a * b + c (a < K, c < b);
 * (M_n x)[a*b + c] = sum_{a'} R[a][a'] (WHT_b x_{a'})[c] / sqrt(n), x_{a'} = x[a'*b .. a'*b+b-1].
 * WHT_b is the Sylvester matrix in natural order (H_2 = [[1,1],[1,-1]]), symmetric, so
 * M_n^T = kron(R_K^T, WHT_b) / sqrt(n). With R R^T = K I, M_n M_n^T = I exactly in exact
 * arithmetic: this is how every n = K * 2^p gets an orthonormal transform.
 *
 * Factors (an e8q_had_factor is data: K, its kind and the K x K matrix; the pipeline records
 * it in the artifact as hadamard.K{K} and a decoder rebuilds nothing):
 *   K = 1                         none (pure WHT)
 *   Paley I  (K = q + 1,  q = 3 mod 4 a prime)           e.g. 12 20 44 60 68 84 108 132 140 164
 *   Paley II (K = 2(q + 1), q = 1 mod 4 a prime or p^2)  e.g. 28 36 52 76 100 124 148
 *   otherwise a random orthogonal matrix (QR of a Gaussian matrix from e8q_rng, stream
 *   E8Q_RNG_STREAM_HAD + K), scaled so R R^T = K I     e.g. 172 = 4 * 43
 * Factor selection for n (e8q_had_choose_K): K = 1 for a power of two; else with n = o * 2^p
 * (o odd), the smallest K = o * 2^j (2 <= j <= p, K <= max(o * 4, E8Q_HAD_MAX_PALEY)) with a
 * Paley construction, else the random orthogonal factor of order o * 4 (n itself when p < 2).
 * (11008 = 43 * 256: 172 and 344 have no prime-field Paley construction, 5504 = 5503 + 1 has
 * one but would cost 32x more per element than 172, hence the bound.)
 */
#ifndef E8Q_KERNELS_HADAMARD_H
#define E8Q_KERNELS_HADAMARD_H

#include <stddef.h>
#include <stdint.h>

#define E8Q_HAD_MAX_PALEY 256 /* largest Paley order preferred over a random order o * 4 */
#define E8Q_HAD_MAX_K 8192 /* largest dense factor (random orthogonal: QR of K x K) */
#define E8Q_HAD_SEED 0x6538712048414421ull /* default seed of random orthogonal factors */

/* ---------------------------------------------------------------- FWHT (unnormalized) */
/* x [n] <- WHT_n x in place, n a power of two (fatal otherwise) */
void e8q_fwht_f32(float *x, int64_t n);
void e8q_fwht_f64(double *x, int64_t n);
/* explicit O(n^2) Sylvester product (entry (-1)^popcount(i & j)): out [n] = WHT_n x */
void e8q_fwht_f64_ref(const double *x, int64_t n, double *out);

/* ---------------------------------------------------------------- factors */
typedef enum {
  E8Q_HAD_NONE = 0,     /* K = 1 */
  E8Q_HAD_PALEY1 = 1,
  E8Q_HAD_PALEY2 = 2,
  E8Q_HAD_RANDOM = 3,   /* seeded random orthogonal */
  E8Q_HAD_GIVEN = 4,    /* supplied by the caller (artifact, golden tests) */
} e8q_had_kind;

typedef struct {
  int K;             /* order; 1 = no factor */
  e8q_had_kind kind;
  uint64_t seed;     /* E8Q_HAD_RANDOM only */
  double *R;         /* [K, K] row-major, R R^T = K I; NULL when K == 1 */
  float *Rf;         /* [K, K] float copy of R */
} e8q_had_factor;

/* which Paley construction gives order K (E8Q_HAD_PALEY1/2), or E8Q_HAD_NONE */
e8q_had_kind e8q_had_paley_kind(int K);
/* the factor order chosen for n (see above) */
int e8q_had_choose_K(int64_t n);
/* build the factor of order K: Paley when possible, else random orthogonal from seed */
void e8q_had_factor_build(e8q_had_factor *f, int K, uint64_t seed);
/* copy a given K x K matrix (checked: R R^T = K I within 1e-9 K, fatal otherwise, naming what) */
void e8q_had_factor_from(e8q_had_factor *f, int K, const double *R, e8q_had_kind kind, const char *what);
void e8q_had_factor_copy(e8q_had_factor *dst, const e8q_had_factor *src);
void e8q_had_factor_free(e8q_had_factor *f);
const char *e8q_had_kind_name(e8q_had_kind kind);
/* max |R R^T - K I| (0 for K = 1) */
double e8q_had_factor_error(const e8q_had_factor *f);

/* ---------------------------------------------------------------- the transform M_n */
typedef struct {
  int64_t n;
  int64_t b;           /* n / K, a power of two */
  e8q_had_factor f;    /* owned */
} e8q_had;

/* n = K * 2^p with K = e8q_had_choose_K(n); factor built with seed (E8Q_HAD_SEED by default) */
void e8q_had_init(e8q_had *h, int64_t n, uint64_t seed);
/* with a given factor (copied); fatal unless n = f->K * 2^p */
void e8q_had_init_factor(e8q_had *h, int64_t n, const e8q_had_factor *f);
void e8q_had_free(e8q_had *h);

/* x [n] <- M x (transpose = 0) or M^T x (transpose = 1), in place */
void e8q_had_vec_f64(const e8q_had *h, double *x, int transpose);
void e8q_had_vec_f32(const e8q_had *h, float *x, int transpose);
/* every row of A [rows, ld] (first n entries): row <- M row (or M^T row); OpenMP over rows */
void e8q_had_rows_f64(const e8q_had *h, double *A, int64_t rows, int64_t ld, int transpose);
void e8q_had_rows_f32(const e8q_had *h, float *A, int64_t rows, int64_t ld, int transpose);
/* every column of A [n, ld] (first cols entries of each row): col <- M col (or M^T col) */
void e8q_had_cols_f64(const e8q_had *h, double *A, int64_t cols, int64_t ld, int transpose);
void e8q_had_cols_f32(const e8q_had *h, float *A, int64_t cols, int64_t ld, int transpose);
/* the explicit matrix M [n, n] (O(n^2), for tests and small n) */
void e8q_had_matrix_ref(const e8q_had *h, double *M);
/* out [n] = M x or M^T x through the explicit formula, O(n^2) */
void e8q_had_vec_f64_ref(const e8q_had *h, const double *x, int transpose, double *out);

/* ---------------------------------------------------------------- RHT (double, in place) */
/* W [m, n] <- M_m^T diag(SV) W diag(SU) M_n ; SU [n], SV [m] */
void e8q_rht_weight(const e8q_had *hm, const e8q_had *hn, const double *SU, const double *SV, double *W);
/* inverse: Wr [m, n] <- diag(SV) M_m Wr M_n^T diag(SU) */
void e8q_rht_weight_inv(const e8q_had *hm, const e8q_had *hn, const double *SU, const double *SV, double *W);
/* H [n, n] <- M_n^T diag(SU) H diag(SU) M_n */
void e8q_rht_hessian(const e8q_had *hn, const double *SU, double *H);
/* inverse: Hr [n, n] <- diag(SU) M_n Hr M_n^T diag(SU) */
void e8q_rht_hessian_inv(const e8q_had *hn, const double *SU, double *H);

/* ---------------------------------------------------------------- padding (DESIGN "Shapes that do not fit") */
/* next multiple of 8 */
static inline int64_t e8q_pad8(int64_t n) { return (n + 7) / 8 * 8; }
/* W [m, n] f32 -> out [m, n_pad] f64 with zero columns n..n_pad-1 */
void e8q_pad_weight(const float *W, int64_t m, int64_t n, int64_t n_pad, double *out);
/* H [n, n] -> out [n_pad, n_pad] with zero rows and columns n..n_pad-1 */
void e8q_pad_hessian(const double *H, int64_t n, int64_t n_pad, double *out);

#endif
