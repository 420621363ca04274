/* worker/trainer.h: the data-parallel training loop both fine-tuning stages run (block:
 * worker/finetune.h, end to end: worker/finetune_e2e.h), and the state they share.
 *
 * One flat vector of trainable floats p [n]; its first n_susv floats (SU/SV) take learning rate
 * susv_lr, the rest lr (Adam, kernels/adam.h, fp32 moments). Epoch e visits the training
 * sequences 0..n_train-1 in the order of a Fisher-Yates shuffle seeded by (seed, stream + e)
 * (common/rng.h: the order is a function of the epoch and needs no checkpoint); step t takes
 * positions [t*batch, t*batch + batch). A step's sequences are dealt evenly to the ranks
 * (worker/seqdeal.h); each rank computes each dealt sequence's loss and gradient FROM ZERO (the
 * caller's `seq`, one sequence per forward: the bits do not depend on which rank computes it),
 * adds them (as double) into an exact accumulator (e8q_xsum), and
 * e8q_comm_allreduce_sum_ordered gives every rank the same sums bit for bit for any rank count;
 * every rank applies the same Adam step to the mean over the step's elements
 * (elems_per_seq per sequence). After each epoch the held-out loss (sequences n_train ..
 * n_train+n_valid-1, dealt the same way); the best held-out state is kept (the loss before
 * training counts as the first best); training stops after early_stop epochs in a row without
 * improvement. The state is all there is to resume: a run restarted from a checkpointed state
 * continues bit for bit as if never stopped. */
#ifndef E8Q_WORKER_TRAINER_H
#define E8Q_WORKER_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "common/comm.h"
#include "worker/seqdeal.h"

/* the fields of a training state, spelled once: e8q_train_state, and the stages' states that
 * embed them (anonymous, so S->p reads as before, and S->tr is the shared part) */
#define E8Q_TRAIN_STATE_FIELDS                                                                  \
  size_t n;          /* floats in the flat vector */                                            \
  size_t n_susv;     /* the first n_susv floats are SU/SV (lr susv_lr) */                       \
  float *p;          /* [n] current parameters (NULL for a layout only) */                      \
  float *best;       /* [n] parameters of the best held-out loss */                             \
  float *m, *v;      /* [n] Adam moments */                                                     \
  long step;         /* Adam steps taken */                                                     \
  int epoch;         /* epochs finished */                                                      \
  int worse;         /* epochs in a row without improvement */                                  \
  int started;       /* 1 once init_loss is measured */                                         \
  int done;          /* 1 when finished: p holds the best state */                              \
  double init_loss;  /* held-out loss before training */                                        \
  double best_loss;  /* best held-out loss (init_loss counts) */                                \
  double train_loss; /* mean training loss of the last epoch (NAN before) */                    \
  double valid_loss; /* held-out loss after the last epoch (NAN before) */

typedef struct {
  E8Q_TRAIN_STATE_FIELDS
} e8q_train_state;

/* p, best, m, v [S->n] allocated and zeroed (S->n set by the caller's layout) */
void e8q_train_state_alloc(e8q_train_state *S);
void e8q_train_state_release(e8q_train_state *S); /* frees p, best, m, v */

/* the user's training choices, shared by block (--ft-epochs) and end-to-end (--e2e-epochs)
 * fine-tuning; the learning rates, batch and seed come from the same options for both */
typedef struct {
  int epochs;         /* --ft-epochs or --e2e-epochs */
  double lr;          /* --ft-lr: norms, dense weights, final norm, lm_head */
  double susv_lr;     /* --ft-susv-lr: SU and SV of the quantized linears */
  int batch;          /* --ft-batch: sequences per Adam step */
  int early_stop;     /* epochs without improvement before stopping (E8Q_TRAIN_EARLY_STOP) */
  uint64_t seed;      /* run seed */
} e8q_train_hparams;

#define E8Q_TRAIN_EARLY_STOP 3 /* the reference's ft_early_stop */

typedef struct {
  e8q_train_hparams hp;
  uint64_t stream;    /* epoch e's order: e8q_rng stream `stream + e` */
  double elems_per_seq; /* the loss is a mean over the elements: T*dim (MSE) or T-1 positions (CE) */
  const char *what;   /* what is trained, in messages */
  const char *fault_step; /* the fault point before every step (common/fault.h) */
} e8q_train_opts;

typedef struct {
  /* one sequence: its arrays (the deal's parts); returns its loss summed over its elements and,
   * with grad != NULL, ACCUMULATES (+=) that sum's gradient into grad [n] */
  double (*seq)(void *ctx, const void *const *parts, float *grad);
  void (*refresh)(void *ctx); /* after S->p changed (per-row scales of the quantized linears) */
  /* after each epoch (S->done = 0) and once at the end (S->done = 1), on every rank; may be NULL */
  void (*epoch_end)(void *ctx, const e8q_train_state *S);
  void *ctx;
} e8q_train_fns;

/* Collective. Trains from S (fresh or restored; nothing when S->done); d deals this rank's
 * sequences. On return S->done = 1 and S->p holds the best held-out state (refreshed). */
void e8q_train_run(const e8q_train_opts *o, e8q_comm *comm, e8q_seqdeal *d, e8q_train_state *S, int n_train,
                   int n_valid, const e8q_train_fns *f);

/* Collective: the mean loss per element over sequences [v0, v1) (NAN when empty), the same
 * bits for any rank count */
double e8q_train_loss(e8q_comm *comm, e8q_seqdeal *d, int v0, int v1, double elems_per_seq, const e8q_train_fns *f);

#endif
