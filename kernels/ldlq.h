/* kernels/ldlq.h: block LDLQ onto the E8P12 / RVQ codebooks (QuIP#, DESIGN.md section 3),
 * Hessian preparation and factorisation with reported fallbacks, proxy loss and the ablation
 * baselines: the numeric steps of "quantize one linear", whose one driver is
 * worker/quantize_linear.c (e8q_quantize_group).
 *
 * Conventions follow the reference code (Cornell-RelaxML/quip-sharp, lib/algo/quip.py):
 *   H <- H / mean(diag H); H_ii += sigma_reg (0.01)
 *   Cholesky H = C C^T; L = C with each 8-column block right-multiplied by the inverse of its
 *   diagonal 8x8 block, diagonal blocks set to I (H = L D L^T, D block diagonal)
 *   LDLQ, blocks k of 8 columns from LAST to FIRST:
 *     X = W[:,k] + (W[:,>k] - What[:,>k]) L[>k,k];  What[:,k] = Q(X)
 *   tune passes (default 10), blocks from last to first:
 *     X = What[:,k] + (W - What) H[:,k] H[k,k]^-1;  What[:,k] = Q(X)
 * The feedback products go through BLAS in buffers of E8Q_LDLQ_BUF columns (the reference's
 * buffered variant; exact in exact arithmetic). Rows are independent given L and H: they are
 * processed in tiles of E8Q_LDLQ_ROW_TILE rows aligned to absolute row indices, so splitting
 * the rows at multiples of the tile (e8q_ldlq_split_rows) gives bit-identical codes to one call.
 * Ranks sharing one matrix must also share the factorisation bits: build e8q_ldl on every rank
 * from the same (allreduced) Hessian with the same BLAS thread count, or build it on one rank
 * and broadcast H, L and Hkk_inv.
 */
#ifndef E8Q_KERNELS_LDLQ_H
#define E8Q_KERNELS_LDLQ_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/codebook.h"

#define E8Q_LDLQ_BUF 128       /* columns per buffered feedback product */
#define E8Q_LDLQ_ROW_TILE 256  /* rows per tile (split points for identical results) */
#define E8Q_SIGMA_REG 0.01
#define E8Q_TUNE_ITERS 10

typedef enum { E8Q_PREC_F32 = 0, E8Q_PREC_F64 = 1 } e8q_prec;

/* ---------------------------------------------------------------- factorisation */
/* What happened while factorising: never silent. Attempts: requested precision; double
 * (when float failed); double with 10x damping. */
typedef struct {
  int ok;             /* 1: a factorisation was found */
  int attempts;       /* 1..3 */
  e8q_prec prec;      /* precision of the factorisation in use */
  double sigma_reg;   /* damping in use */
  int fell_back_f64;  /* float failed (non-finite or not positive definite) */
  int more_damping;   /* double with sigma_reg failed too: 10x damping used */
  char message[320];  /* one line describing the outcome */
} e8q_ldl_status;

typedef struct {
  int64_t n;          /* columns, multiple of 8 */
  e8q_prec prec;
  double sigma_reg;
  /* exactly one pair is allocated, per prec */
  double *H, *L;      /* [n, n] prepared Hessian and unit block-lower L (f64) */
  float *Hf, *Lf;     /* [n, n] the same in f32 */
  double *Hkk_inv;    /* [n/8, 8, 8] inverses of the diagonal blocks of H (tune passes) */
} e8q_ldl;

/* H [n, n] in place: H / mean(diag H) (H = 0 is left as is), then + sigma_reg on the diagonal */
void e8q_hessian_prep(double *H, int64_t n, double sigma_reg);
/* prepare a copy of H_raw [n, n] (not modified) and factorise it, falling back as above.
 * Returns status.ok; on failure f holds nothing and status.message says why. */
int e8q_ldl_build(e8q_ldl *f, const double *H_raw, int64_t n, double sigma_reg, e8q_prec prec, e8q_ldl_status *status);
/* a Cholesky for the f64 attempts: A [n, n] row-major symmetric in, lower factor L (A = L Lᵀ) out
 * in place (entries above the diagonal are ignored); returns 0, or a LAPACK-style info (> 0: not
 * positive definite, < 0: invalid argument) */
typedef int (*e8q_ldl_cholesky)(int n, double *A);
/* e8q_ldl_build with the f64 Cholesky from chol (NULL: LAPACKE dpotrf, as e8q_ldl_build), e.g. a
 * collective ScaLAPACK one (then every rank must pass the same H_raw: the attempts, and so the
 * collective calls, follow from it). The same preparation, checks, fallbacks and messages. chol
 * needs prec E8Q_PREC_F64. */
int e8q_ldl_build_chol(e8q_ldl *f, const double *H_raw, int64_t n, double sigma_reg, e8q_prec prec,
                       e8q_ldl_cholesky chol, e8q_ldl_status *status);
void e8q_ldl_free(e8q_ldl *f);

/* ---------------------------------------------------------------- LDLQ */
typedef struct {
  e8q_codebook_id cb;
  int tune_iters;     /* extra passes after LDLQ */
  int feedback;       /* 1: LDLQ; 0: nearest rounding of each block (no feedback, no tune) */
  int noe8_bits;      /* > 0: round each weight to the scalar half-integer grid of 2^noe8_bits
                         levels instead of cb ("noe8" ablation; no codes are written) */
} e8q_ldlq_opts;

/* Quantize rows [r0, r1) of W [m, n] (row-major, already rotated and scaled to RMS rho).
 * Writes codes [m, n/8] (and codes2 [m, n/8]: u16 for RVQ4, u8 for RVQ3, NULL otherwise) and
 * What [m, n] (decoded values, may be NULL) for those rows only. */
void e8q_ldlq_rows(const e8q_ldl *f, const e8q_ldlq_opts *o, const double *W, int64_t m, int64_t r0, int64_t r1,
                   uint16_t *codes, void *codes2, double *What);
/* straightforward unbuffered double-precision version (the definition; O(n^2) per block) */
void e8q_ldlq_rows_ref(const e8q_ldl *f, const e8q_ldlq_opts *o, const double *W, int64_t m, int64_t r0, int64_t r1,
                       uint16_t *codes, void *codes2, double *What);
/* rows of part `part` of `nparts`, split at multiples of E8Q_LDLQ_ROW_TILE */
void e8q_ldlq_split_rows(int64_t m, int nparts, int part, int64_t *r0, int64_t *r1);

/* ---------------------------------------------------------------- losses */
/* tr((What - W) H (What - W)^T) / tr(W H W^T) over rows [r0, r1) */
double e8q_proxy_loss(const double *W, const double *What, const double *H, int64_t n, int64_t r0, int64_t r1);
/* ||What - W||_F / ||W||_F over count entries */
double e8q_rel_fro(const double *W, const double *What, int64_t count);

/* ---------------------------------------------------------------- baselines
 * "noe8" grid: each rotated weight (scaled to RMS rho_noe8(bits)) is rounded to the nearest
 * of the 2^bits half-integers -(2^bits-1)/2 .. (2^bits-1)/2 (2 bits: -1.5 -0.5 0.5 1.5), by
 * e8q_ldlq_rows with e8q_ldlq_opts.noe8_bits = bits.
 * rho_noe8 = 1.00, 1.71, 2.98 for 2, 3, 4 bits: the std for which unit spacing is the optimal
 * uniform quantizer of a Gaussian (Max 1960). */
double e8q_noe8_rho(int bits);
/* "rtn": per-row min-max round to nearest with 2^bits levels (no RHT). W, What [m, ld]: the
 * range and the rounding cover the first n columns only (zero pad columns n..ld-1 would widen
 * the range of a row of one sign); pad columns of What are set to 0. */
void e8q_rtn_rows(const double *W, int64_t m, int64_t n, int64_t ld, int bits, double *What);

#endif
