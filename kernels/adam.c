/* kernels/adam.c: Adam with PyTorch's update (see kernels/adam.h). */
#include "kernels/adam.h"

#include <math.h>

#include "common/error.h"

enum { ADAM_CHUNK = 4096 }; /* elements per task: fixed, so the bits do not depend on threads */

/* ---------------------------------------------------------------- init */

void e8q_adam_init(e8q_adam *a) {
  a->beta1 = 0.9;
  a->beta2 = 0.999;
  a->eps = 1e-8;
  a->weight_decay = 0.0;
  a->step = 0;
}

/* ---------------------------------------------------------------- step
 * The per-step float constants, shared by the fast path and the reference. */
typedef struct {
  float b1, omb1, b2, omb2, eps, bc2s, wd;
  double bc1;
} adam_consts;

static adam_consts adam_begin(e8q_adam *a, int n_params, const e8q_adam_param *ps) {
  E8Q_CHECK(a->beta1 >= 0.0 && a->beta1 < 1.0 && a->beta2 >= 0.0 && a->beta2 < 1.0,
            "adam: betas (%g, %g) outside [0, 1)", a->beta1, a->beta2);
  E8Q_CHECK(n_params >= 0 && (n_params == 0 || ps), "adam: %d parameter tensors", n_params);
  for (int k = 0; k < n_params; k++)
    E8Q_CHECK(ps[k].n == 0 || (ps[k].p && ps[k].g && ps[k].m && ps[k].v),
              "adam: parameter tensor %d (%zu elements) lacks a p, g, m or v buffer", k, ps[k].n);
  a->step++;
  adam_consts c;
  c.b1 = (float)a->beta1;
  c.omb1 = (float)(1.0 - a->beta1);
  c.b2 = (float)a->beta2;
  c.omb2 = (float)(1.0 - a->beta2);
  c.eps = (float)a->eps;
  c.wd = (float)a->weight_decay;
  c.bc1 = 1.0 - pow(a->beta1, (double)a->step);
  c.bc2s = (float)sqrt(1.0 - pow(a->beta2, (double)a->step));
  return c;
}

static void adam_range(const adam_consts *c, const e8q_adam_param *q, size_t i0, size_t i1) {
  float step_size = (float)((double)q->lr / c->bc1);
  for (size_t i = i0; i < i1; i++) {
    float g = q->g[i];
    if (c->wd != 0.0f) g = g + c->wd * q->p[i];
    float m = q->m[i] + c->omb1 * (g - q->m[i]);
    float v = c->b2 * q->v[i] + c->omb2 * g * g;
    q->m[i] = m;
    q->v[i] = v;
    float denom = sqrtf(v) / c->bc2s + c->eps;
    q->p[i] = q->p[i] - step_size * m / denom;
  }
}

void e8q_adam_step_ref(e8q_adam *a, int n_params, const e8q_adam_param *ps) {
  adam_consts c = adam_begin(a, n_params, ps);
  for (int k = 0; k < n_params; k++) adam_range(&c, &ps[k], 0, ps[k].n);
}

void e8q_adam_step(e8q_adam *a, int n_params, const e8q_adam_param *ps) {
  adam_consts c = adam_begin(a, n_params, ps);
  for (int k = 0; k < n_params; k++) {
    const e8q_adam_param *q = &ps[k];
    long nc = (long)((q->n + ADAM_CHUNK - 1) / ADAM_CHUNK);
#pragma omp parallel for schedule(static) if (q->n > (size_t)8 * ADAM_CHUNK)
    for (long b = 0; b < nc; b++) {
      size_t i0 = (size_t)b * ADAM_CHUNK, i1 = i0 + ADAM_CHUNK < q->n ? i0 + ADAM_CHUNK : q->n;
      adam_range(&c, q, i0, i1);
    }
  }
}
