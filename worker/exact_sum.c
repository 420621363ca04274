/* worker/exact_sum.c: exact sums through the communicator (worker/exact_sum.h). */
#include "worker/exact_sum.h"

#include <stdlib.h>

#include "common/comm.h"
#include "common/error.h"

static e8q_comm *g_comm;

void e8q_exact_comm_init(void) {
  if (!g_comm) g_comm = e8q_comm_world(-1);
}

void e8q_exact_comm_free(void) {
  e8q_comm_free(g_comm);
  g_comm = NULL;
}

struct e8q_exact_sum {
  e8q_xsum x;
};

e8q_exact_sum *e8q_exact_sum_new(size_t n) {
  e8q_exact_sum *s = e8q_calloc(1, sizeof *s, "exact sum");
  e8q_xsum_init(&s->x, n, E8Q_XSUM_FRAC_DEFAULT);
  return s;
}

void e8q_exact_sum_free(e8q_exact_sum *s) {
  if (!s) return;
  e8q_xsum_free(&s->x);
  free(s);
}

void e8q_exact_sum_add(e8q_exact_sum *s, const double *x) { e8q_xsum_add(&s->x, x); }

void e8q_exact_sum_allreduce(e8q_exact_sum *s, double *out) {
  E8Q_CHECK(g_comm, "internal: e8q_exact_comm_init was not called");
  e8q_comm_allreduce_sum_ordered(g_comm, &s->x, out);
}
