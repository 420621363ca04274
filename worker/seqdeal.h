/* worker/seqdeal.h: the sequences of a data-parallel step dealt evenly to the ranks.
 *
 * Each rank HOLDS a contiguous range [s0, s1) of the calibration sequences (their activations,
 * targets, ids: whatever per-sequence arrays the trainer needs). A step's sequences are chosen
 * by a random order over all of them, so a step's sequences are rarely spread evenly over the
 * holders: with one sequence per step one rank would do all the work. The deal fixes that: the
 * sequences of a list are taken in ROUNDS of `size` positions; in round r, position
 * j = r*size + w is TRAINED by rank w, and the rank holding sequence list[j] sends its arrays
 * there when w is not itself. Each round is one exchange (every rank waits for its sends and
 * receives), so at most one sequence per part is buffered per rank.
 *
 * Who computes a sequence never changes its bits (one sequence per forward, from zero) and the
 * trainers sum per-sequence results exactly (e8q_xsum), so the deal changes the time, not the
 * result. */
#ifndef E8Q_WORKER_SEQDEAL_H
#define E8Q_WORKER_SEQDEAL_H

#include <stddef.h>

#include "common/comm.h"

#define E8Q_DEAL_MAX_PARTS 4

typedef struct {
  e8q_comm *comm;                       /* NULL: one process holds every sequence */
  int rank, size;
  int *seq_start;                       /* [size+1] rank r holds sequences [seq_start[r], seq_start[r+1]) */
  int n_parts;                          /* per-sequence arrays */
  const char *base[E8Q_DEAL_MAX_PARTS]; /* this rank's arrays: sequence i at base[p] + (i - s0) * bytes[p] */
  size_t bytes[E8Q_DEAL_MAX_PARTS];     /* bytes of one sequence in part p */
  char *buf[E8Q_DEAL_MAX_PARTS];        /* [bytes[p]] the sequence received this round */
  e8q_comm_req **req;                   /* [size * n_parts] one round's sends and receives */
} e8q_seqdeal;

/* Collective (gathers every rank's [s0, s1)). base[p] / bytes[p]: this rank's n_parts arrays. */
void e8q_seqdeal_init(e8q_seqdeal *d, e8q_comm *comm, int s0, int s1, int n_parts, const void *const *base,
                      const size_t *bytes);
void e8q_seqdeal_free(e8q_seqdeal *d);

/* rounds needed for a list of n sequences */
int e8q_seqdeal_rounds(const e8q_seqdeal *d, int n);

/* Collective: round r of the list seq[0..n) (global sequence indices, the same on every rank).
 * Returns the list position this rank trains in the round, with parts[p] pointing at its arrays
 * (its own or the received copy, valid until the next round), or -1 when it has none. */
int e8q_seqdeal_round(e8q_seqdeal *d, const int *seq, int n, int r, const void **parts);

#endif
