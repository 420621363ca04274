/* common/error.c: fatal errors, rank-aware, MPI_Abort so no rank hangs. */
#include "common/error.h"

#include <errno.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"

static e8q_error_trap *g_trap;
static char g_last[2048];

void e8q_error_trap_arm(e8q_error_trap *trap) { g_trap = trap; }
const char *e8q_error_last(void) { return g_last; }

static int mpi_running(void) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

E8Q_NORETURN static void fatal_finish(const char *file, int line) {
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  if (g_trap) {
    e8q_error_trap *t = g_trap;
    g_trap = NULL; /* one shot: a trap catches one error */
    snprintf(t->message, sizeof t->message, "%s", g_last);
    longjmp(t->env, 1);
  }
  int rank = -1;
  if (mpi_running()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank >= 0)
    fprintf(stderr, "e8q: error [rank %d] %s:%d: %s\n", rank, base, line, g_last);
  else
    fprintf(stderr, "e8q: error %s:%d: %s\n", base, line, g_last);
  fflush(stderr);
  e8q_cleanup_run(); /* temporary directories (common/cleanup.h): MPI_Abort and exit skip their owners */
  if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

void e8q_fatal(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last, sizeof g_last, fmt, ap);
  va_end(ap);
  fatal_finish(file, line);
}

void e8q_fatal_errno(const char *file, int line, int errnum, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(g_last, sizeof g_last, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof g_last)
    snprintf(g_last + n, sizeof g_last - (size_t)n, ": %s", strerror(errnum));
  fatal_finish(file, line);
}

void e8q_fatal_mpi(const char *file, int line, int rc, const char *what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
  e8q_fatal(file, line, "MPI call %s failed: %s", what, msg);
}

void *e8q_malloc_(size_t bytes, const char *what, const char *file, int line) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) e8q_fatal(file, line, "out of memory allocating %zu bytes for %s", bytes, what);
  return p;
}

void *e8q_calloc_(size_t n, size_t size, const char *what, const char *file, int line) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) e8q_fatal(file, line, "out of memory allocating %zu x %zu bytes for %s", n, size, what);
  return p;
}

void *e8q_alloc_aligned_(size_t bytes, const char *what, const char *file, int line) {
  void *p = NULL;
  size_t rounded = (bytes + 63) & ~(size_t)63;
  if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
    e8q_fatal(file, line, "out of memory allocating %zu aligned bytes for %s", bytes, what);
  memset(p, 0, rounded ? rounded : 64);
  return p;
}
