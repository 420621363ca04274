/* coordinator/sample.h: choosing the next token from a model's logits (e8q generate).
 *
 * Greedy (argmax) at temperature <= 0; otherwise a draw from softmax(logits / T) restricted to
 * the top-p nucleus (the smallest set of most probable tokens whose mass reaches top_p).
 * The softmax is computed in float64 as exp((l_i - max l) / T): every exponent is <= 0 and the
 * maximum's term is exactly 1, so no temperature, however small (1e-38) or large, overflows; a
 * tiny T gives the argmax (ties share the mass). */
#ifndef E8Q_COORDINATOR_SAMPLE_H
#define E8Q_COORDINATOR_SAMPLE_H

#include "common/rng.h"

typedef struct {
  double p;
  int id;
} e8q_prob_id;

/* logits [n]; scratch [n]; r advances by one draw when sampling. Fatal when a logit is NaN or
 * infinite (a damaged model). */
int e8q_sample_token(int n, const float *logits, double temp, double top_p, e8q_rng *r, e8q_prob_id *scratch);

#endif
