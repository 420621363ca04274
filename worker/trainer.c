/* worker/trainer.c: the data-parallel training loop of both fine-tuning stages
 * (worker/trainer.h). */
#include "worker/trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/rng.h"
#include "kernels/adam.h"

/* ---------------------------------------------------------------- state */
void e8q_train_state_alloc(e8q_train_state *S) {
  S->p = e8q_calloc(S->n, sizeof(float), "fine-tuning parameters");
  S->best = e8q_calloc(S->n, sizeof(float), "fine-tuning best parameters");
  S->m = e8q_calloc(S->n, sizeof(float), "Adam first moment");
  S->v = e8q_calloc(S->n, sizeof(float), "Adam second moment");
}

void e8q_train_state_release(e8q_train_state *S) {
  free(S->p);
  free(S->best);
  free(S->m);
  free(S->v);
  S->p = S->best = S->m = S->v = NULL;
}

/* ---------------------------------------------------------------- losses */
double e8q_train_loss(e8q_comm *comm, e8q_seqdeal *d, int v0, int v1, double elems_per_seq, const e8q_train_fns *f) {
  e8q_xsum acc;
  e8q_xsum_init(&acc, 1, E8Q_XSUM_FRAC_DEFAULT);
  const int n = v1 > v0 ? v1 - v0 : 0;
  int *list = e8q_malloc(sizeof(int) * (size_t)(n ? n : 1), "held-out list"); /* [n] */
  for (int k = 0; k < n; k++) list[k] = v0 + k;
  for (int r = 0; r < e8q_seqdeal_rounds(d, n); r++) {
    const void *parts[E8Q_DEAL_MAX_PARTS];
    if (e8q_seqdeal_round(d, list, n, r, parts) < 0) continue;
    double l = f->seq(f->ctx, parts, NULL);
    e8q_xsum_add(&acc, &l);
  }
  free(list);
  double sum = 0;
  if (comm) e8q_comm_allreduce_sum_ordered(comm, &acc, &sum);
  else e8q_xsum_get(&acc, &sum);
  e8q_xsum_free(&acc);
  return n ? sum / ((double)n * elems_per_seq) : NAN;
}

/* ---------------------------------------------------------------- the loop */
/* perm [n] <- a shuffle of 0..n-1 (Fisher-Yates) of epoch e */
static void epoch_order(const e8q_train_opts *o, int epoch, int n, int *perm) {
  e8q_rng r;
  e8q_rng_init(&r, o->hp.seed, o->stream + (uint64_t)epoch);
  for (int i = 0; i < n; i++) perm[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)e8q_rng_below(&r, (uint64_t)i + 1);
    int t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

void e8q_train_run(const e8q_train_opts *o, e8q_comm *comm, e8q_seqdeal *d, e8q_train_state *S, int n_train,
                   int n_valid, const e8q_train_fns *f) {
  if (S->done) return;
  E8Q_CHECK(n_train >= 1 && n_valid >= 1,
            "%s: %d training and %d held-out sequences (at least one of each is needed)", o->what, n_train, n_valid);
  E8Q_CHECK(o->hp.batch >= 1 && o->hp.epochs >= 0, "%s: batch %d, epochs %d", o->what, o->hp.batch, o->hp.epochs);
  const int v0 = n_train, v1 = n_train + n_valid;
  const size_t n = S->n;
  if (!S->started) { /* the loss before training is the first best */
    S->init_loss = S->best_loss = e8q_train_loss(comm, d, v0, v1, o->elems_per_seq, f);
    memcpy(S->best, S->p, sizeof(float) * n);
    S->started = 1;
  }
  float *grad = e8q_alloc_aligned(sizeof(float) * n, "fine-tuning gradient");          /* [n] one sequence's */
  float *gmean = e8q_alloc_aligned(sizeof(float) * n, "fine-tuning step gradient");    /* [n] the step's mean */
  double *acc = e8q_malloc(sizeof(double) * (n + 1), "fine-tuning gradient (double)"); /* [n+1] grad | loss */
  int *perm = e8q_malloc(sizeof(int) * (size_t)n_train, "fine-tuning order");          /* [n_train] */
  e8q_xsum xs;
  e8q_xsum_init(&xs, n + 1, E8Q_XSUM_FRAC_DEFAULT);
  e8q_adam A;
  e8q_adam_init(&A);
  A.step = S->step;
  e8q_adam_param ap[2] = {
      {S->p, gmean, S->m, S->v, S->n_susv, (float)o->hp.susv_lr},
      {S->p + S->n_susv, gmean + S->n_susv, S->m + S->n_susv, S->v + S->n_susv, n - S->n_susv, (float)o->hp.lr},
  };
  const int n_ap = S->n_susv ? 2 : 1;
  const e8q_adam_param *aps = S->n_susv ? ap : ap + 1;
  const int steps = (n_train + o->hp.batch - 1) / o->hp.batch;

  while (S->epoch < o->hp.epochs && S->worse < o->hp.early_stop) {
    epoch_order(o, S->epoch, n_train, perm);
    double train_sum = 0; /* the same doubles in the same order on every rank */
    for (int t = 0; t < steps; t++) {
      e8q_fault_point(o->fault_step);
      const int k0 = t * o->hp.batch, k1 = k0 + o->hp.batch < n_train ? k0 + o->hp.batch : n_train;
      e8q_xsum_zero(&xs);
      for (int r = 0; r < e8q_seqdeal_rounds(d, k1 - k0); r++) {
        const void *parts[E8Q_DEAL_MAX_PARTS];
        if (e8q_seqdeal_round(d, perm + k0, k1 - k0, r, parts) < 0) continue; /* none for this rank */
        memset(grad, 0, sizeof(float) * n);
        acc[n] = f->seq(f->ctx, parts, grad);
        for (size_t j = 0; j < n; j++) acc[j] = grad[j];
        e8q_xsum_add(&xs, acc);
      }
      if (comm) e8q_comm_allreduce_sum_ordered(comm, &xs, acc);
      else e8q_xsum_get(&xs, acc);
      const double scale = 1.0 / ((double)(k1 - k0) * o->elems_per_seq); /* mean over the step's elements */
      for (size_t j = 0; j < n; j++) gmean[j] = (float)(acc[j] * scale);
      train_sum += acc[n];
      e8q_adam_step(&A, n_ap, aps);
      f->refresh(f->ctx);
    }
    S->step = A.step;
    S->train_loss = train_sum / ((double)n_train * o->elems_per_seq);
    S->valid_loss = e8q_train_loss(comm, d, v0, v1, o->elems_per_seq, f);
    if (S->valid_loss < S->best_loss) {
      S->best_loss = S->valid_loss;
      memcpy(S->best, S->p, sizeof(float) * n);
      S->worse = 0;
    } else {
      S->worse++;
    }
    S->epoch++;
    if (f->epoch_end) f->epoch_end(f->ctx, S);
  }
  /* the best held-out state is the result */
  memcpy(S->p, S->best, sizeof(float) * n);
  f->refresh(f->ctx);
  S->done = 1;
  if (f->epoch_end) f->epoch_end(f->ctx, S);

  e8q_xsum_free(&xs);
  free(perm);
  free(acc);
  free(gmean);
  free(grad);
}
