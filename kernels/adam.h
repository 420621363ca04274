/* kernels/adam.h: the Adam optimizer of fine-tuning (DESIGN §3, Fine-tuning), fp32, no I/O.
 *
 * The update is PyTorch's torch.optim.Adam (single-tensor form, amsgrad off, L2 weight decay
 * added to the gradient as PyTorch does, not AdamW), element by element in float:
 *   g  = g + weight_decay * p                       (only when weight_decay != 0)
 *   m  = m + (1 - beta1) * (g - m)                  (torch's lerp)
 *   v  = beta2 * v + (1 - beta2) * g * g
 *   p  = p - (lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 * with step counted from 1 (e8q_adam_step increments it before updating). The bias
 * corrections and the step size are computed in double and rounded to float once per step.
 *
 * The optimizer's state is the step count (e8q_adam) and, per tensor, the moments m and v,
 * which the caller owns (fp32 master state; zero-filled before the first step) so they can be
 * checkpointed and restored bit-exactly. The gradient g is read, never cleared.
 * Deterministic: every element is updated by the same float operations, in fixed-size chunks,
 * so the result has the same bits for any number of OpenMP threads.
 */
#ifndef E8Q_KERNELS_ADAM_H
#define E8Q_KERNELS_ADAM_H

#include <stddef.h>

/* ---------------------------------------------------------------- state */
typedef struct {
  float *p;        /* [n] parameters, updated in place */
  const float *g;  /* [n] gradient (read only) */
  float *m;        /* [n] first moment, caller-owned, zero before the first step */
  float *v;        /* [n] second moment, caller-owned, zero before the first step */
  size_t n;
  float lr;        /* this tensor's learning rate (DESIGN: 5e-4 for SU/SV, 5e-5 for the rest) */
} e8q_adam_param;

typedef struct {
  double beta1, beta2, eps, weight_decay;
  long step; /* steps taken so far */
} e8q_adam;

/* ---------------------------------------------------------------- init and step
 * PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0, step 0. */
void e8q_adam_init(e8q_adam *a);
/* a->step++, then updates every tensor of ps with that step's bias corrections */
void e8q_adam_step(e8q_adam *a, int n_params, const e8q_adam_param *ps /* [n_params] */);
/* sequential twin */
void e8q_adam_step_ref(e8q_adam *a, int n_params, const e8q_adam_param *ps /* [n_params] */);

#endif
