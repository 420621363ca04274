/* worker/finetune.h: block fine-tuning (DESIGN §3, Fine-tuning; QuIP#'s finetune_decoder_layer).
 *
 * One ROUND follows the quantization of group g of a block (g = qkv, o, upgate; not down): the
 * block with groups 0..g quantized is trained on MSE(block(X), Y), Y = the ORIGINAL block's
 * output on X (X = the block's input from the original model). Trainable, as one flat vector:
 *   [ SU, SV of quantized group 0 | ... | SU, SV of group g ]           lr susv_lr (Adam)
 *   [ attn_norm | ffn_norm | W of dense group g+1 | ... | W of group 3 ] lr lr
 * Adam (PyTorch's, kernels/adam.h, a fresh optimizer per round), `batch` sequences per step,
 * `epochs` epochs over the training sequences; after each epoch the held-out loss; the best
 * held-out state is kept (the loss before training counts as the first best); training stops
 * after `early_stop` epochs in a row without improvement.
 *
 * Sequences: global indices 0..n_train-1 train, n_train..n_train+n_valid-1 held out. Each rank
 * holds sequences [s0, s1) of X and Y. Step t of epoch e uses the training sequences
 * perm_e[t*batch .. t*batch+batch), perm_e a shuffle seeded by (seed, layer, group, epoch)
 * (common/rng.h), so the data order is a function of the epoch and needs no checkpoint. A
 * step's sequences are dealt evenly to the ranks (worker/seqdeal.h: the holder sends X and Y to
 * the rank that trains it), so every rank works even at one or two sequences per rank and step.
 * Every rank computes each of its dealt sequences' gradient from zero (one sequence per forward:
 * the bits of a sequence's gradient do not depend on which rank computes it), adds it (as double) into an
 * exact accumulator (e8q_xsum) and e8q_comm_allreduce_sum_ordered gives every rank the same
 * summed gradient bit for bit, for any rank count; every rank then applies the same Adam
 * update. Losses travel in the same accumulator. The loss of a step is the mean squared error
 * over the elements of its sequences (the reference sums two batch means instead: a factor
 * 2 on the gradient, which Adam does not see but through eps).
 *
 * The state (e8q_ft_state: parameters, best parameters, Adam moments and step, epoch reached,
 * losses) is all there is to resume a round: the caller checkpoints it in the epoch hook, and a
 * round restarted from a checkpointed state continues bit for bit as if never stopped.
 */
#ifndef E8Q_WORKER_FINETUNE_H
#define E8Q_WORKER_FINETUNE_H

#include <stddef.h>
#include <stdint.h>

#include "common/comm.h"
#include "kernels/qlinear.h"
#include "shard/model.h"
#include "worker/trainer.h"

typedef struct {
  e8q_train_hparams hp; /* epochs: --ft-epochs */
  int layer, group;  /* what is trained: the round after group `group` of block `layer` */
} e8q_ft_opts;

/* ---------------------------------------------------------------- the trainable state */
#define E8Q_FT_NONE ((size_t)-1) /* offset of a tensor that is not in the layout */
typedef struct {
  union { /* the shared training state (worker/trainer.h), also readable as S->p, S->epoch, ... */
    e8q_train_state tr;
    struct {
      E8Q_TRAIN_STATE_FIELDS
    };
  };
  int n_quant;                     /* groups 0..n_quant-1 quantized, the others dense */
  size_t off_SU[E8Q_N_GROUPS];     /* [n_pad] of quantized group g, or E8Q_FT_NONE */
  size_t off_SV[E8Q_N_GROUPS];     /* [m] */
  size_t off_W[E8Q_N_GROUPS];      /* [m, n] of dense group g, or E8Q_FT_NONE */
  size_t off_attn, off_ffn;        /* [dim] each */
} e8q_ft_state;

/* the layout (n, n_susv, offsets) for a block with groups 0..n_quant-1 quantized, nothing
 * allocated (p, best, m, v NULL): for reading a checkpointed vector */
void e8q_ft_layout(e8q_ft_state *S, const e8q_config *cfg, int n_quant);
/* the layout and its arrays, zeroed */
void e8q_ft_state_init(e8q_ft_state *S, const e8q_config *cfg, int n_quant);
void e8q_ft_state_free(e8q_ft_state *S);

/* Points the trainable tensors of tb at S->p: the norms and the dense linears' w (lin[g].q =
 * NULL). The quantized linears are the caller's: lin[g].q must be an e8q_qlinear whose desc SU
 * and SV point at S->p + off_SU[g], S->p + off_SV[g] (e8q_ft_refresh keeps its scales). */
void e8q_ft_bind(e8q_ft_state *S, const e8q_config *cfg, e8q_block *tb);
/* after S->p changed: the quantized linears' per-row scales (e8q_qlinear_set_scales) */
void e8q_ft_refresh(e8q_ft_state *S, e8q_block *tb);

/* ---------------------------------------------------------------- the round */
typedef struct {
  /* called on every rank after each epoch (S->done = 0) and once at the end of the round
   * (S->done = 1); the caller checkpoints S (rank 0) and reports; may be NULL */
  void (*epoch_end)(void *ctx, const e8q_ft_state *S);
  void *ctx;
} e8q_ft_hooks;

/* Collective over comm (NULL: one process, no MPI). Trains the block tb (bound to S) from the
 * state S (fresh or restored from a checkpoint; nothing is done when S->done).
 * X, Y: [s1-s0, T, dim] this rank's sequences; 1 <= n_train, 0 <= n_valid, n_train + n_valid
 * = the number of sequences over all ranks. On return S->done = 1 and S->p (and tb) hold the
 * best held-out state. */
void e8q_ft_round(const e8q_ft_opts *o, e8q_comm *comm, const e8q_config *cfg, e8q_block *tb, e8q_ft_state *S, int T,
                  int n_train, int n_valid, int s0, int s1, const float *X, const float *Y, const e8q_ft_hooks *hooks);

/* Held-out MSE (mean over elements) of block tb on sequences [v0, v1) (global indices), the
 * same bits for any rank count. Collective. */
double e8q_ft_loss(e8q_comm *comm, const e8q_config *cfg, const e8q_block *tb, int T, int v0, int v1, int s0, int s1,
                   const float *X, const float *Y);

#endif
