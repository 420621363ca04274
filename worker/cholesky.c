/* worker/cholesky.c: LAPACK and ScaLAPACK Cholesky (worker/cholesky.h). */
#include "worker/cholesky.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"

/* ---------------------------------------------------------------- ScaLAPACK / BLACS
 * No C headers ship with Debian's ScaLAPACK: the prototypes, as the Fortran/C libraries export
 * them. */
void Cblacs_pinfo(int *mypnum, int *nprocs);
void Cblacs_get(int icontxt, int what, int *val);
void Cblacs_gridinit(int *icontxt, const char *order, int nprow, int npcol);
void Cblacs_gridinfo(int icontxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int icontxt);
void Cblacs_exit(int error_code);
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb, const int *irsrc, const int *icsrc,
               const int *ictxt, const int *lld, int *info);
void pdpotrf_(const char *uplo, const int *n, double *a, const int *ia, const int *ja, const int *desca, int *info);

static int g_blacs_used;

/* zero the strict upper triangle of a row-major matrix */
static void zero_upper(int n, double *A) {
  for (int i = 0; i < n; i++) memset(A + (size_t)i * n + i + 1, 0, sizeof(double) * (size_t)(n - i - 1));
}

int e8q_cholesky_lapack(int n, double *A) {
  int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, A, n);
  E8Q_CHECK(info >= 0, "internal: LAPACKE_dpotrf argument %d invalid", -info);
  if (info == 0) zero_upper(n, A);
  return info;
}

int e8q_cholesky_ref(int n, double *A) {
  for (int i = 0; i < n; i++) {
    for (int j = 0; j <= i; j++) {
      double s = A[(size_t)i * n + j];
      for (int k = 0; k < j; k++) s -= A[(size_t)i * n + k] * A[(size_t)j * n + k];
      if (i == j) {
        if (!(s > 0)) return i + 1;
        A[(size_t)i * n + i] = sqrt(s);
      } else {
        A[(size_t)i * n + j] = s / A[(size_t)j * n + j];
      }
    }
  }
  zero_upper(n, A);
  return 0;
}

int e8q_cholesky_scalapack(int n, double *A, int nb) {
  int me, np;
  Cblacs_pinfo(&me, &np);
  int nprow = 1;
  for (int d = 1; d * d <= np; d++)
    if (np % d == 0) nprow = d;
  int npcol = np / nprow;
  if (nb <= 0) {
    nb = 64;
    while (nb > 8 && (n + nb - 1) / nb < 2 * (nprow > npcol ? nprow : npcol)) nb /= 2;
  }
  int ctx;
  Cblacs_get(-1, 0, &ctx);
  Cblacs_gridinit(&ctx, "Row", nprow, npcol);
  g_blacs_used = 1;
  int myrow, mycol, pr, pc;
  Cblacs_gridinfo(ctx, &pr, &pc, &myrow, &mycol);
  const int izero = 0, ione = 1;
  int lr = numroc_(&n, &nb, &myrow, &izero, &nprow);
  int lc = numroc_(&n, &nb, &mycol, &izero, &npcol);
  int lld = lr > 1 ? lr : 1;
  double *loc = e8q_calloc((size_t)lld * (lc > 0 ? lc : 1), sizeof(double), "ScaLAPACK local block");
  /* every rank holds all of A: copy out its blocks (column-major local; A symmetric) */
  for (int lj = 0; lj < lc; lj++) {
    int gj = ((lj / nb) * npcol + mycol) * nb + lj % nb;
    for (int li = 0; li < lr; li++) {
      int gi = ((li / nb) * nprow + myrow) * nb + li % nb;
      loc[(size_t)lj * lld + li] = A[(size_t)gi * n + gj];
    }
  }
  int desc[9], info = 0;
  descinit_(desc, &n, &n, &nb, &nb, &izero, &izero, &ctx, &lld, &info);
  E8Q_CHECK(info == 0, "internal: ScaLAPACK descinit failed (info %d) for n %d nb %d grid %dx%d", info, n, nb, nprow,
            npcol);
  pdpotrf_("L", &n, loc, &ione, &ione, desc, &info);
  /* assemble L on every rank: each entry is owned by one rank, the others add zeros (exact) */
  memset(A, 0, sizeof(double) * (size_t)n * n);
  if (info == 0) {
    for (int lj = 0; lj < lc; lj++) {
      int gj = ((lj / nb) * npcol + mycol) * nb + lj % nb;
      for (int li = 0; li < lr; li++) {
        int gi = ((li / nb) * nprow + myrow) * nb + li % nb;
        if (gi >= gj) A[(size_t)gi * n + gj] = loc[(size_t)lj * lld + li];
      }
    }
  }
  free(loc);
  Cblacs_gridexit(ctx);
  /* info agrees across the grid; reduce it anyway so every rank returns the same */
  e8q_comm *c = e8q_comm_get();
  int32_t info32 = info;
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_I32, &info32, 1);
  info = (int)info32;
  E8Q_CHECK(info >= 0, "internal: pdpotrf argument %d invalid", -info);
  if (info == 0) e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_F64, A, (size_t)n * n);
  return info;
}

void e8q_scalapack_finish(void) {
  if (g_blacs_used) Cblacs_exit(1);
  g_blacs_used = 0;
}
