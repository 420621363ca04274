/* worker/quantize_linear.h: quantize one linear group of a block across all ranks.
 *
 * Steps (DESIGN §3), for the stacked W [m, n] of group g of layer l and its Hessian sum H:
 *   fuse      each piece (q, k, v / up, gate) divided by its RMS, kept as its fuse scale;
 *   pad       n -> n_pad (zero columns of W, zero rows/columns of H);
 *   prepare   H / mean(diag H), + damping on the diagonal (0.01, raised tenfold on a failed
 *             factorisation: the retry is counted and recorded);
 *   RHT       SU [n_pad], SV [m] random signs from (seed, layer, group); Wr = M_mᵀ SV W SU M_n,
 *             Hr = M_nᵀ SU H SU M_n; Wscale = RMS(Wr) / rho;
 *   factor    Cholesky of Hr with LAPACK on every rank, or ScaLAPACK across ranks;
 *   LDLQ      rows in fixed chunks of E8Q_QLIN_ROW_CHUNK assigned to ranks (the chunking does not
 *             depend on the rank count, so neither do the codes), tune passes, proxy loss
 *             (sum over rows, reduced exactly);
 *   gather    codes (and codes2) to rank 0.
 * Methods: e8p (LDLQ + E8P/RVQ, the default), nearest (RHT, E8P nearest point, no LDLQ),
 * noe8 (RHT + LDLQ onto the half-integer scalar grid), rtn (no RHT, nearest scalar grid).
 */
#ifndef E8Q_WORKER_QUANTIZE_LINEAR_H
#define E8Q_WORKER_QUANTIZE_LINEAR_H

#include <stdint.h>

#include "shard/plan.h"

#define E8Q_QLIN_ROW_CHUNK 32

typedef enum { E8Q_METHOD_E8P = 0, E8Q_METHOD_NEAREST, E8Q_METHOD_NOE8, E8Q_METHOD_RTN } e8q_method;
/* "e8p" ... -> method; fatal naming the option otherwise */
e8q_method e8q_method_parse(const char *s);
const char *e8q_method_name(e8q_method m);

typedef struct {
  int bits;          /* 2, 3, 4 */
  e8q_method method;
  double rho;        /* RMS of Wr before rounding; <= 0: the codebook default */
  int tune_iters;    /* LDLQ block coordinate-descent passes */
  uint64_t seed;     /* run seed */
  int scalapack;     /* 1: factorise with ScaLAPACK across ranks */
} e8q_qlin_opts;

typedef struct {
  int m, n, n_pad, nc, n_pieces;
  uint16_t *codes;   /* [m, nc] (rank 0) */
  void *codes2;      /* [m, nc] u16 (4 bit) or u8 (3 bit); NULL at 2 bit */
  float *SU;         /* [n_pad] */
  float *SV;         /* [m] */
  float Wscale;
  float fuse_scales[E8Q_PLAN_MAX_PIECES];
  double proxy_loss; /* tr((Ŵ-W) H (Ŵ-W)ᵀ) / tr(W H Wᵀ) in the rotated, fused frame */
  int retries;       /* factorisations retried with more damping */
  double damp;       /* the damping finally used */
} e8q_qlin_result;

/* collective: every rank passes the same W [m, n] and H [n, n] (sums over `tokens` tokens);
 * the complete result on rank 0 (other ranks: everything but codes/codes2). */
void e8q_quantize_group(const e8q_qlin_opts *o, const e8q_group_plan *g, int layer, int group, const float *W,
                        const double *H, long tokens, e8q_qlin_result *r);
void e8q_qlin_result_free(e8q_qlin_result *r);

#endif
