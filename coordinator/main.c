/* coordinator/main.c: `e8q <command> [options]`, one MPI program.
 * Rank 0 is the coordinator; every rank is also a worker. */
#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"

static void usage(FILE *f) {
  fprintf(f,
          "e8q %s: QuIP# quantization of Llama-family models (E8P 2 bit, RVQ 3 and 4 bit)\n\n"
          "usage: [mpirun -np N] e8q <command> [options]   (e8q <command> --help for its options)\n\n"
          "commands:\n",
          E8Q_VERSION);
  for (const e8q_command *c = e8q_commands; c->name; c++) fprintf(f, "  %-10s %s\n", c->name, c->summary);
}

int main(int argc, char **argv) {
  int provided = 0;
  E8Q_CHECK_MPI(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
  e8q_comm_global_open(-1); /* host-only: every collective of the pipeline goes through it */
  /* One BLAS thread in every command; OpenMP is the only source of threads. The quantizer's bits
   * then do not depend on OPENBLAS_NUM_THREADS (threaded kernels change the last bits of sums:
   * Hessians, LDLQ feedback, proxy losses), and inference's batched products run as OpenMP
   * panels of single-threaded BLAS (kernels/gemm_panels.h), whose pthreads would otherwise fight
   * OpenMP's waiting threads for the cores. */
  openblas_set_num_threads(1);
  int rc = 2;
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    if (e8q_rank() == 0) usage(argc < 2 ? stderr : stdout);
    rc = argc < 2 ? 2 : 0;
  } else if (!strcmp(argv[1], "--version")) {
    if (e8q_rank() == 0) printf("e8q %s\n", E8Q_VERSION);
    rc = 0;
  } else {
    const e8q_command *cmd = NULL;
    for (const e8q_command *c = e8q_commands; c->name; c++)
      if (!strcmp(c->name, argv[1])) cmd = c;
    if (!cmd) {
      if (e8q_rank() == 0) {
        fprintf(stderr, "e8q: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
      }
    } else {
      rc = cmd->run(argc - 1, argv + 1);
    }
  }
  e8q_comm_global_close();
  MPI_Finalize();
  return rc;
}
