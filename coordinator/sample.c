/* coordinator/sample.c: greedy and nucleus sampling (coordinator/sample.h). */
#include "coordinator/sample.h"

#include <math.h>
#include <stdlib.h>

#include "common/error.h"
#include "kernels/transformer.h"

static int cmp_prob_desc(const void *a, const void *b) {
  const e8q_prob_id *x = a, *y = b;
  return x->p < y->p ? 1 : x->p > y->p ? -1 : (x->id - y->id);
}

int e8q_sample_token(int n, const float *logits, double temp, double top_p, e8q_rng *r, e8q_prob_id *probs) {
  if (temp <= 0.0) return e8q_argmax(n, logits);
  /* ---- softmax((l - max) / T) in float64: exponents <= 0, the maximum's term is 1 */
  double mx = -INFINITY;
  for (int i = 0; i < n; i++) {
    E8Q_CHECK(isfinite(logits[i]),
              "generate: the model's logit for token %d is %g: the model's weights are damaged or overflow float32; "
              "check the model (e8q inspect --verify for an artifact)",
              i, (double)logits[i]);
    if (logits[i] > mx) mx = logits[i];
  }
  double total = 0;
  for (int i = 0; i < n; i++) {
    double z = ((double)logits[i] - mx) / temp; /* <= 0; -inf when T is tiny, exp gives 0 */
    probs[i].p = exp(z);
    probs[i].id = i;
    total += probs[i].p; /* >= 1: the maximum contributes exp(0) */
  }
  for (int i = 0; i < n; i++) probs[i].p /= total;
  qsort(probs, (size_t)n, sizeof *probs, cmp_prob_desc);
  /* ---- nucleus: the smallest prefix with mass >= top_p */
  int keep = n;
  double cum = 0;
  for (int i = 0; i < n; i++) {
    cum += probs[i].p;
    if (cum >= top_p) {
      keep = i + 1;
      break;
    }
  }
  double mass = 0;
  for (int i = 0; i < keep; i++) mass += probs[i].p;
  double u = e8q_rng_uniform(r) * mass, acc = 0;
  for (int i = 0; i < keep; i++) {
    acc += probs[i].p;
    if (u < acc) return probs[i].id;
  }
  return probs[keep - 1].id;
}
