/* tests/comm/comm_check.h: pass/fail counting shared by the communicator tests. Every rank
 * checks; check_report sums the counts over ranks and prints them on rank 0. */
#ifndef E8Q_TESTS_COMM_CHECK_H
#define E8Q_TESTS_COMM_CHECK_H

#include <mpi.h>
#include <stdio.h>

#include "../check.h" /* CHECK, n_pass/n_fail, g_rank (set by main) */

/* collective over MPI_COMM_WORLD: "<name> on P ranks: N passed, M failed" on rank 0;
 * returns the exit code (1 when any rank failed a check) */
static int check_report(const char *name) {
  int fails = n_fail, passes = n_pass, p = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  MPI_Allreduce(MPI_IN_PLACE, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &passes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) printf("%s on %d ranks: %d passed, %d failed\n", name, p, passes, fails);
  return fails ? 1 : 0;
}

#endif
