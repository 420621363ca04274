/* worker/exact_sum.h: rank-count-independent sums over MPI_COMM_WORLD.
 *
 * A thin wrapper over common/comm.h's exact accumulator (e8q_xsum) and ordered allreduce, so
 * code that also includes io/safetensors.h can use it (both headers define an e8q_dtype enum;
 * this header exposes neither). Contract (common/comm.h): add one chunk's contribution at a
 * time, chunks fixed independently of the rank count (one calibration sequence each); the
 * total is then bit-identical for any number of ranks.
 */
#ifndef E8Q_WORKER_EXACT_SUM_H
#define E8Q_WORKER_EXACT_SUM_H

#include <stddef.h>

typedef struct e8q_exact_sum e8q_exact_sum;

/* the run's communicator (host-only): call once on every rank before any sum, free at the end */
void e8q_exact_comm_init(void);
void e8q_exact_comm_free(void);

e8q_exact_sum *e8q_exact_sum_new(size_t n);
void e8q_exact_sum_free(e8q_exact_sum *s);
/* s += x, x [n] */
void e8q_exact_sum_add(e8q_exact_sum *s, const double *x);
/* collective: every rank's out [n] = the exact total over ranks, rounded to double */
void e8q_exact_sum_allreduce(e8q_exact_sum *s, double *out);

#endif
