/* worker/hessian.h: the four input Hessians of a block (DESIGN §3 "Hessians").
 *
 * H_g = sum over calibration tokens of x xᵀ, x the input of linear group g exactly as
 * multiplied (captured through the forward pass's taps), accumulated in float64 with a token
 * count: sums, never means, so ranks and resumed runs merge by addition. The sequences of a
 * chunk (E8Q_SEQ_CHUNK consecutive calibration sequences, shard/plan.h) are added in float64 in
 * sequence order (dsyrk on row blocks of E8Q_HESS_ROWS tokens), then the chunk's sum goes into
 * an exact accumulator (e8q_xsum, common/comm.h) and the accumulators are reduced with
 * e8q_comm_allreduce_sum_ordered over the process communicator. Chunks are fixed by the plan,
 * never straddle ranks and are summed the same way whichever rank owns them (the contract of
 * common/comm.h), so the reduced H is bit-identical for any number of ranks.
 */
#ifndef E8Q_WORKER_HESSIAN_H
#define E8Q_WORKER_HESSIAN_H

#include "shard/model.h"
#include "common/comm.h"
#include "worker/forward.h"

#define E8Q_HESS_ROWS 256 /* tokens converted to float64 at a time */

typedef struct {
  int n[E8Q_N_GROUPS];               /* input dimension of each group */
  int T;                             /* tokens per sequence */
  e8q_xsum sum[E8Q_N_GROUPS];        /* [n*n] exact running sums over flushed chunks */
  double *chunk[E8Q_N_GROUPS];       /* [n*n] float64 sum of the current chunk (upper triangle) */
  int in_chunk;                      /* sequences in the current chunk */
  long tokens;                       /* tokens this rank added */
  double *xd;                        /* [E8Q_HESS_ROWS, max n] tap rows converted to double */
  struct e8q_gram_gpu *gpu[E8Q_N_GROUPS]; /* the chunk sums on a CUDA device (e8q_hessian_acc_use_device),
                                             owned; NULL: chunk[] on the CPU */
  const e8q_block *blk;              /* the block of the sequence being added (messages) */
  const e8q_config *cfg;
} e8q_hessian_acc;

void e8q_hessian_acc_init(e8q_hessian_acc *a, const e8q_config *cfg, int T);
void e8q_hessian_acc_free(e8q_hessian_acc *a);
/* --device cuda: the chunk sums' products on CUDA device `cuda` (kernels/gram_gpu.h: float64
 * DSYRK, only the order of additions differs from the CPU's); they come back to the host at
 * every flush, so the exact accumulators and the ordered reduction are unchanged and the result
 * still does not depend on the rank count (among runs on the same GPU model). A group the device
 * cannot hold stays on the CPU, said once. Call right after init; nothing for cuda < 0. Returns
 * the number of groups on the device. */
int e8q_hessian_acc_use_device(e8q_hessian_acc *a, int cuda);
/* one sequence: x [T, dim] <- block(x) with the original weights, its four Gram matrices added.
 * A linear's input that is not finite (activations overflowing float32: a weight of 3e38) is a
 * fatal error naming the layer, the linear and the block's largest weight. */
void e8q_hessian_acc_seq(e8q_hessian_acc *a, const e8q_block *b, const e8q_config *cfg, float *x,
                         e8q_fwd_scratch *scratch);
/* ends the current chunk: its sums go into the exact accumulators (call after the last sequence
 * of every chunk; a no-op when the chunk is empty) */
void e8q_hessian_acc_flush(e8q_hessian_acc *a);
/* collective: H[g] [n_g, n_g] (caller's buffers) = total over ranks; *tokens = total tokens
 * (flushes first, then releases the chunk sums and tap scratch before filling H: no more
 * sequences can be added; e8q_hessian_acc_free still frees the rest) */
void e8q_hessian_acc_reduce(e8q_hessian_acc *a, double *const H[E8Q_N_GROUPS], long *tokens);

/* G [cols, cols] (+)= xᵀ x for x [rows, cols] f32, in float64 through BLAS, upper triangle and
 * mirrored (accumulate: 1 adds to G, 0 overwrites); xd: [E8Q_HESS_ROWS*cols] scratch */
void e8q_hessian_gram(int rows, int cols, const float *x, double *xd, double *G, int accumulate);
/* the same in plain loops (the readable twin) */
void e8q_hessian_gram_ref(int rows, int cols, const float *x, double *G);

#endif
