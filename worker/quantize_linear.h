/* worker/quantize_linear.h: quantize one linear group of a block across all ranks.
 *
 * Steps (DESIGN §3), for the stacked W [m, n] of group g of layer l and its Hessian sum H:
 *   fuse      each piece (q, k, v / up, gate) divided by its RMS, kept as its fuse scale;
 *   pad       n -> n_pad (zero columns of W, zero rows/columns of H);
 *   RHT       SU [n_pad], SV [m] random signs from (seed, layer, group); Wr = M_mᵀ SV W SU M_n,
 *             Hr = M_nᵀ SU H SU M_n; Wscale = RMS(Wr) / rho;
 *   prepare   Hr / mean(diag Hr), + damping 0.01 on the diagonal (kernels/ldlq.h);
 *   factor    block LDL (e8q_ldl_build_chol, with its checks and reported fallbacks) from a
 *             Cholesky with LAPACK on every rank, or with ScaLAPACK across all ranks; retries
 *             are counted and recorded;
 *   LDLQ      e8q_ldlq_rows (kernels/ldlq.h) on row tiles of E8Q_LDLQ_ROW_TILE split across
 *             ranks at tile boundaries (the codes do not depend on the rank count); the proxy
 *             loss is summed per tile and reduced exactly;
 *   gather    codes (and codes2) to rank 0.
 * Methods: e8p (the default; "ldlq", the reference code's name, is accepted: LDLQ + tune onto
 * E8P/RVQ) and nearest (RHT, nearest codebook point, no LDLQ) write E8P codes, their rows split
 * across ranks. The ablations noe8 (RHT + LDLQ + tune onto the scalar half-integer grid) and
 * rtn (no RHT, per-row round to nearest) have no E8P codes: the same steps run all rows on
 * rank 0, which turns the result back into a dense matrix (`dense`), stored as such in the
 * artifact (quantization_config "dense_ablation": true) so their perplexity can be measured.
 * One rule for each choice: rho (--rho, else e8q_cb_default_rho of the codebook, or
 * e8q_noe8_rho for noe8), the per-linear seed (from seed, layer, group), damping E8Q_SIGMA_REG.
 */
#ifndef E8Q_WORKER_QUANTIZE_LINEAR_H
#define E8Q_WORKER_QUANTIZE_LINEAR_H

#include <stdint.h>

#include "shard/plan.h"

#include "kernels/ldlq.h"

typedef enum {
  E8Q_METHOD_LDLQ = 0,    /* "e8p": RHT + LDLQ + tune onto E8P/RVQ (QuIP#) */
  E8Q_METHOD_NEAREST = 1, /* "nearest": RHT + nearest E8P/RVQ point per block, no LDLQ */
  E8Q_METHOD_NOE8 = 2,    /* "noe8": RHT + LDLQ + tune onto the scalar half-integer grid */
  E8Q_METHOD_RTN = 3,     /* "rtn": no RHT; per-row min-max round to nearest, 2^bits levels */
} e8q_method;

/* "e8p" (= "ldlq"), "nearest", "noe8", "rtn" -> method; anything else: fatal naming the option */
e8q_method e8q_method_parse(const char *s);
/* the command-line name: "e8p", "nearest", ... */
const char *e8q_method_cli_name(e8q_method m);
/* 1 for methods whose result is a dense matrix (noe8, rtn) */
static inline int e8q_method_dense(e8q_method m) { return m == E8Q_METHOD_NOE8 || m == E8Q_METHOD_RTN; }

typedef struct {
  int bits;          /* 2, 3, 4 */
  e8q_method method;
  double rho;        /* RMS of Wr before rounding; <= 0: the codebook default (noe8: e8q_noe8_rho) */
  int tune_iters;    /* LDLQ block coordinate-descent passes */
  uint64_t seed;     /* run seed */
  int scalapack;     /* 1: factorise with ScaLAPACK across ranks */
} e8q_qlin_opts;

/* the RMS o's run rounds at: o->rho when given, else the codebook's default (noe8: its own) */
double e8q_qlin_rho(const e8q_qlin_opts *o);

typedef struct {
  int m, n, n_pad, nc, n_pieces;
  uint16_t *codes;   /* [m, nc] (rank 0); NULL for the dense ablations */
  float *dense;      /* [m, n] quantized weight of a dense ablation (noe8, rtn; rank 0), else NULL */
  void *codes2;      /* [m, nc] u16 (4 bit) or u8 (3 bit); NULL at 2 bit */
  float *SU;         /* [n_pad] (NULL for rtn) */
  float *SV;         /* [m] (NULL for rtn) */
  float Wscale;      /* Ŵr = Wscale * codebook values; 0 for an all-zero group; 1 for the dense ablations */
  float fuse_scales[E8Q_PLAN_MAX_PIECES];
  double proxy_loss; /* tr((Ŵ-W) H (Ŵ-W)ᵀ) / tr(W H Wᵀ) in the rotated, fused frame */
  int retries;       /* factorisation attempts beyond the first (kernels/ldlq.h fallbacks) */
  double damp;       /* the damping finally used */
  char ldl_message[336]; /* what the factorisation did (e8q_ldl_status.message, after "ScaLAPACK ") */
} e8q_qlin_result;

/* collective: every rank passes the same W [m, n] and H [n, n] (sums over `tokens` tokens);
 * the complete result on rank 0 (other ranks: everything but codes/codes2). */
void e8q_quantize_group(const e8q_qlin_opts *o, const e8q_group_plan *g, int layer, int group, const float *W,
                        const double *H, long tokens, e8q_qlin_result *r);
void e8q_qlin_result_free(e8q_qlin_result *r);

#endif
