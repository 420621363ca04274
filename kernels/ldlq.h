/* kernels/ldlq.h: block LDLQ onto the E8P12 / RVQ codebooks (QuIP#, DESIGN.md section 3),
 * Hessian preparation and factorisation with reported fallbacks, proxy loss, ablation
 * baselines, and the "quantize one linear" helper the pipeline calls.
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
#include "kernels/hadamard.h"

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

/* ---------------------------------------------------------------- one linear */
typedef enum {
  E8Q_METHOD_LDLQ = 0,    /* "ldlq": RHT + LDLQ + tune onto E8P/RVQ (QuIP#) */
  E8Q_METHOD_NEAREST = 1, /* "nearest": RHT + nearest E8P/RVQ point per block, no LDLQ */
  E8Q_METHOD_NOE8 = 2,    /* "noe8": RHT + LDLQ + tune onto the scalar half-integer grid */
  E8Q_METHOD_RTN = 3,     /* "rtn": no RHT; per-row min-max round to nearest, 2^bits levels */
} e8q_method;
/* "ldlq" | "nearest" | "noe8" | "rtn" (fatal otherwise, listing the names) */
e8q_method e8q_method_from_name(const char *name);
const char *e8q_method_name(e8q_method m);

/* "noe8" grid: each rotated weight (scaled to RMS rho_noe8(bits)) is rounded to the nearest
 * of the 2^bits half-integers -(2^bits-1)/2 .. (2^bits-1)/2 (2 bits: -1.5 -0.5 0.5 1.5).
 * rho_noe8 = 1.00, 1.71, 2.98 for 2, 3, 4 bits: the std for which unit spacing is the optimal
 * uniform quantizer of a Gaussian (Max 1960). */
double e8q_noe8_rho(int bits);

typedef struct {
  int bits;            /* 2, 3, 4 */
  double rho;          /* target RMS of the rotated weight; <= 0: codebook default (1.03, 0.98, 1.03) */
  int tune_iters;      /* < 0: E8Q_TUNE_ITERS */
  e8q_method method;
  uint64_t seed;       /* SU / SV signs: e8q_rng streams E8Q_RNG_STREAM_SU / _SV */
  double sigma_reg;    /* <= 0: E8Q_SIGMA_REG */
  e8q_prec prec;       /* LDLQ precision to try first */
  const e8q_had_factor *had_m, *had_n; /* factors to use (NULL: built with E8Q_HAD_SEED) */
  const char *name;    /* the linear, for error messages (e.g. "model.layers.3.mlp.down_proj"); NULL: "linear" */
} e8q_quant_opts;

typedef struct {
  int64_t m, n, n_pad;
  e8q_codebook_id cb;
  uint16_t *codes;     /* [m, n_pad/8] (NULL for noe8 and rtn) */
  void *codes2;        /* [m, n_pad/8]: u16 (4 bit), u8 (3 bit), NULL (2 bit, noe8, rtn) */
  float *SU;           /* [n_pad] (NULL for rtn) */
  float *SV;           /* [m] (NULL for rtn) */
  float Wscale;        /* decode: What_r = Wscale * codebook values; 0 for an all-zero weight (What = 0) */
  int K_m, K_n;        /* Hadamard factor orders used (1 = none) */
  float *What;         /* [m, n] the quantized weight in the original basis */
  double proxy;        /* tr((What-W) H (What-W)^T) / tr(W H W^T), prepared H */
  double rel_fro;      /* ||What - W||_F / ||W||_F */
  e8q_ldl_status status;
} e8q_quant_result;

/* W [m, n] f32, H [n, n] f64 (a sum or mean of x x^T; it is prepared here). Fatal on bad
 * shapes; a failed factorisation is reported in res->status (res->What is NULL then). */
void e8q_quantize_linear(const float *W, int64_t m, int64_t n, const double *H, const e8q_quant_opts *o,
                         e8q_quant_result *res);
void e8q_quant_result_free(e8q_quant_result *r);

/* A fused group (q, k, v or up, gate: one input, one Hessian): each piece W_p [m_p, n] is
 * divided by its own RMS, fuse_scales[p] (DESIGN "Fused groups"), the pieces are stacked in
 * order into one [sum m_p, n] matrix and quantized as one linear. res describes the stacked
 * matrix (codes, SV, Wscale, proxy of the normalised stack); res->What and res->rel_fro are
 * rescaled back, so What rows of piece p approximate W_p. fuse_scales [npieces] out. */
void e8q_quantize_fused(const float *const *W, const int64_t *m, int npieces, int64_t n, const double *H,
                        const e8q_quant_opts *o, e8q_quant_result *res, float *fuse_scales);

#endif
