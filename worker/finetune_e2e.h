/* worker/finetune_e2e.h: end-to-end fine-tuning (DESIGN §3, Fine-tuning; QuIP#'s
 * finetune_susv_e2e).
 *
 * After every block is quantized (and block-tuned), the whole quantized model is trained on the
 * cross-entropy of its next-token logits against the ORIGINAL model's distribution on the
 * calibration sequences (fp32 on the CPU, or with --device cuda the blocks and the head on the
 * GPU: e8q_e2e_work_use_device). Trainable, as one flat vector (e8q_e2e_state):
 *   [ SU, SV of every quantized linear, layer by layer, groups in order ]   lr susv_lr (Adam)
 *   [ attn_norm, ffn_norm of every layer | final norm | lm_head (untied) ]   lr lr
 * A TIED model's head is its embedding: it stays frozen (the artifact has no separate lm_head to
 * hold a tuned copy). The embedding is never trained (the reference embeds once, outside the
 * trained modules).
 *
 * Targets: for each sequence, positions 0..T-2 (the reference scores logits[:, :-1]; the last
 * position has no next token in the sequence) keep the top-k (id, probability) pairs of the
 * original model's softmax, computed in double (e8q_e2e_topk); the loss is e8q_xent_topk's
 * (the k probabilities renormalised, the rest of the mass dropped).
 *
 * One sequence's gradient (e8q_e2e_seq_grad): embed -> for each block, its input X_b saved
 * ([n_layers, T, dim]) and the block run (e8q_block_train_forward) -> final norm -> head ->
 * e8q_xent_topk -> backward through the head and the final norm, then block by block in
 * reverse, each block's internals recomputed from its saved input (memory: one block's
 * activations at a time).
 *
 * Data parallel exactly as worker/finetune.h: step t of epoch e uses the training sequences
 * perm_e[t*batch ..), perm_e a shuffle seeded by (seed, epoch) on its own stream; each rank
 * computes its sequences' gradients from zero, adds them (as double) into an e8q_xsum, and
 * e8q_comm_allreduce_sum_ordered gives every rank the same sum for any rank count; every rank
 * applies the same Adam step (kernels/adam.h, two learning-rate groups). The loss of a step is
 * the mean over its scored positions. After each epoch the held-out mean CE; the best held-out
 * state is kept (the loss before training counts as the first best); training stops after
 * early_stop epochs in a row without improvement. The state (e8q_e2e_state) is all there is to
 * resume: a run restarted from a checkpointed state continues bit for bit.
 */
#ifndef E8Q_WORKER_FINETUNE_E2E_H
#define E8Q_WORKER_FINETUNE_E2E_H

#include <stddef.h>
#include <stdint.h>

#include "common/comm.h"
#include "kernels/qlinear.h"
#include "shard/model.h"
#include "worker/trainer.h"

#define E8Q_E2E_TOPK_DEFAULT 64 /* --e2e-topk */

/* ---------------------------------------------------------------- the trainable state */
typedef struct {
  union { /* the shared training state (worker/trainer.h), also readable as S->p, S->epoch, ... */
    e8q_train_state tr;
    struct {
      E8Q_TRAIN_STATE_FIELDS
    };
  };
  int n_layers;
  int train_head;                  /* 1: lm_head is in the vector (untied model) */
  size_t *off_SU, *off_SV;         /* [n_layers * E8Q_N_GROUPS] offsets of [n_pad] and [m], owned */
  size_t *off_attn, *off_ffn;      /* [n_layers] offsets of [dim] each, owned */
  size_t off_final;                /* [dim] */
  size_t off_head;                 /* [vocab, dim], or (size_t)-1 when tied (frozen) */
} e8q_e2e_state;

/* the layout of cfg's model (offsets owned; p, best, m, v NULL) */
void e8q_e2e_layout(e8q_e2e_state *S, const e8q_config *cfg);
/* the layout and its arrays, zeroed */
void e8q_e2e_state_init(e8q_e2e_state *S, const e8q_config *cfg);
void e8q_e2e_state_free(e8q_e2e_state *S);

/* ---------------------------------------------------------------- the model under training
 * blocks: every linear quantized (lin[g].q, the caller's e8q_qlinear whose desc SU and SV point
 * at S->p + off_SU / off_SV of its layer and group); e8q_e2e_bind points the norms, the final
 * norm and (untied) lm_head at S->p. */
typedef struct {
  const e8q_config *cfg;
  e8q_block *blocks;               /* [n_layers], the caller's */
  const float *embed;              /* [vocab, dim] frozen */
  const float *final_norm;         /* [dim] */
  const float *lm_head;            /* [vocab, dim]; the embedding when tied */
} e8q_e2e_model;

void e8q_e2e_bind(e8q_e2e_state *S, e8q_e2e_model *M);
/* after S->p changed: the quantized linears' per-row output scales */
void e8q_e2e_refresh(e8q_e2e_state *S, e8q_e2e_model *M);

/* ---------------------------------------------------------------- targets
 * The top-k of softmax(logits[t,:]) for t < n_pos, softmax in double from the max logit; ties
 * broken by the lower id; k <= V. ids [n_pos, k] (descending probability), probs [n_pos, k]. */
void e8q_e2e_topk(int n_pos, int V, const float *logits /* [n_pos, V] */, int k, int *ids /* [n_pos, k] */,
                  float *probs /* [n_pos, k] */);

/* ---------------------------------------------------------------- one sequence
 * Work buffers of e8q_e2e_seq_grad / _seq_loss; zero-initialise, freed with e8q_e2e_work_free. */
typedef struct {
  int T;
  float *xs;       /* [n_layers, T, dim] saved block inputs */
  float *x;        /* [T, dim] residual stream / its gradient */
  float *xn;       /* [T, dim] final-normed stream */
  float *dxn;      /* [T, dim] its gradient */
  float *logits;   /* [T, vocab] logits, then their gradient */
  void *bt;        /* e8q_bt_saved of the block forward (worker/block_train.h), owned */
  void *gpu;       /* the device side (e8q_e2e_work_use_device), owned; NULL: the CPU */
} e8q_e2e_work;
void e8q_e2e_work_free(e8q_e2e_work *w);
/* --device cuda: the blocks (every quantized linear of M uploaded once), the final norm and the
 * head of every later e8q_e2e_seq_grad through w run on CUDA device `device` (kernels/
 * transformer_gpu.h: fixed-order kernels, so a sequence's gradient has the same bits on any
 * rank); the embedding lookup, the top-k cross-entropy and the trainer stay on the host. After
 * the trained scales or the head change, e8q_e2e_work_refresh. Fatal when the device cannot
 * take the model (the CPU would give other bits). e8q_e2e_train and e8q_e2e_loss call it
 * themselves when this process computes on a device (e8q_device_cuda) and T is at most
 * E8Q_TF_GPU_MAX_T (the device attention's limit; longer sequences train on the CPU). */
void e8q_e2e_work_use_device(e8q_e2e_work *w, const e8q_e2e_model *M, int device);
void e8q_e2e_work_refresh(e8q_e2e_work *w, const e8q_e2e_model *M);

/* Sum over positions t < T-1 of the top-k cross-entropy of sequence ids [T] against its targets
 * tid/tprob [T-1, k]. With grad != NULL ([S->n], ACCUMULATED +=): the gradient of that sum with
 * respect to every trainable tensor of S (M bound to S). */
double e8q_e2e_seq_grad(const e8q_e2e_model *M, const e8q_e2e_state *S, int T, int k, const int *ids,
                        const int *tid, const float *tprob, float *grad, e8q_e2e_work *w);

/* Held-out mean CE per scored position over sequences [v0, v1) (global indices), the same bits
 * for any rank count. Collective (comm NULL: one process). ids [s1-s0, T], tid/tprob
 * [s1-s0, T-1, k] this rank's sequences [s0, s1). */
double e8q_e2e_loss(e8q_comm *comm, const e8q_e2e_model *M, const e8q_e2e_state *S, int T, int k, int v0, int v1,
                    int s0, int s1, const int *ids, const int *tid, const float *tprob);

/* ---------------------------------------------------------------- training */
typedef struct {
  /* after each epoch (S->done = 0) and once at the end (S->done = 1), on every rank; the
   * caller checkpoints S (rank 0) and reports; may be NULL */
  void (*epoch_end)(void *ctx, const e8q_e2e_state *S);
  void *ctx;
} e8q_e2e_hooks;

/* Collective. Trains M (bound to S) from S (fresh or restored; nothing when S->done).
 * Sequences 0..n_train-1 train, n_train..n_train+n_valid-1 held out; this rank holds [s0, s1);
 * a step's (and the held-out) sequences are dealt evenly to the ranks (worker/seqdeal.h). On return S->done = 1 and S->p (and M) hold the best held-out state. */
void e8q_e2e_train(const e8q_train_hparams *hp, /* epochs: --e2e-epochs */ e8q_comm *comm, e8q_e2e_model *M, e8q_e2e_state *S, int T, int k,
                   int n_train, int n_valid, int s0, int s1, const int *ids, const int *tid, const float *tprob,
                   const e8q_e2e_hooks *hooks);

#endif
