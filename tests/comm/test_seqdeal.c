/* tests/comm/test_seqdeal.c: worker/seqdeal (a step's sequences dealt evenly to the ranks) under
 * mpirun -np 1/2/4.
 *
 * Each rank holds an uneven range of sequences (on 4 ranks one holds none); every sequence's
 * parts are byte patterns of (sequence, part, byte). For lists of several lengths (shuffled,
 * with repeats, shorter and longer than the rank count): position j of round r goes to rank
 * j - r*size, every position is trained exactly once over all ranks, and the bytes a rank gets
 * are the holder's. */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm_check.h"
#include "common/comm.h"
#include "common/rng.h"
#include "worker/seqdeal.h"

enum { N_SEQ = 13 };
static const size_t BYTES[2] = {1000, 37}; /* an odd size and a small one */

static unsigned char pattern(int seq, int part, size_t b) { return (unsigned char)(seq * 31 + part * 7 + b * 13); }

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  e8q_comm *c = e8q_comm_world(-1);
  const int p = e8q_comm_size(c);
  /* uneven ranges: rank r holds cut[r]..cut[r+1] (4 ranks: rank 1 holds none) */
  int cut[5] = {0, N_SEQ, N_SEQ, N_SEQ, N_SEQ};
  if (p == 2) cut[1] = 4;
  if (p == 4) cut[1] = 5, cut[2] = 5, cut[3] = 11;
  const int s0 = cut[g_rank], s1 = cut[g_rank + 1], n_my = s1 - s0;
  unsigned char *part[2];
  for (int q = 0; q < 2; q++) {
    part[q] = malloc(BYTES[q] * (size_t)(n_my ? n_my : 1));
    for (int i = s0; i < s1; i++)
      for (size_t b = 0; b < BYTES[q]; b++) part[q][(size_t)(i - s0) * BYTES[q] + b] = pattern(i, q, b);
  }
  e8q_seqdeal d;
  const void *base[2] = {part[0], part[1]};
  e8q_seqdeal_init(&d, c, s0, s1, 2, base, BYTES);
  CHECK(d.seq_start[0] == 0 && d.seq_start[p] == N_SEQ, "gathered ranges [%d, %d)", d.seq_start[0], d.seq_start[p]);

  e8q_rng rng;
  e8q_rng_init(&rng, 42, 0); /* the same lists on every rank */
  const int lengths[] = {1, 2, 3, 5, N_SEQ, 2 * N_SEQ + 1};
  for (size_t t = 0; t < sizeof lengths / sizeof lengths[0]; t++) {
    const int n = lengths[t];
    int *list = malloc(sizeof(int) * (size_t)n), *count = calloc((size_t)n, sizeof(int));
    for (int j = 0; j < n; j++) list[j] = (int)e8q_rng_below(&rng, N_SEQ); /* repeats allowed */
    const int rounds = e8q_seqdeal_rounds(&d, n);
    CHECK(rounds == (n + p - 1) / p, "list of %d: %d rounds on %d ranks", n, rounds, p);
    int bad = 0;
    for (int r = 0; r < rounds; r++) {
      const void *got[2] = {NULL, NULL};
      const int j = e8q_seqdeal_round(&d, list, n, r, got);
      const int want = r * p + g_rank < n ? r * p + g_rank : -1;
      CHECK(j == want, "list of %d, round %d: position %d, expected %d", n, r, j, want);
      if (j < 0) continue;
      count[j]++;
      for (int q = 0; q < 2; q++)
        for (size_t b = 0; b < BYTES[q]; b++) bad += ((const unsigned char *)got[q])[b] != pattern(list[j], q, b);
    }
    CHECK(bad == 0, "list of %d: %d bytes differ from the holder's", n, bad);
    MPI_Allreduce(MPI_IN_PLACE, count, n, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int off = 0;
    for (int j = 0; j < n; j++) off += count[j] != 1;
    CHECK(off == 0, "list of %d: %d positions not trained exactly once", n, off);
    free(list);
    free(count);
  }
  e8q_seqdeal_free(&d);
  for (int q = 0; q < 2; q++) free(part[q]);
  int rc = check_report("test_seqdeal");
  e8q_comm_free(c);
  MPI_Finalize();
  return rc;
}
