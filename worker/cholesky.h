/* worker/cholesky.h: Cholesky factorisation of a Hessian, with LAPACK on one rank's copy or
 * with ScaLAPACK across all ranks (DESIGN §5: Hessians above a size threshold, or on request).
 *
 * Both take the full symmetric matrix A [n, n] (row-major; every rank holds the same A) and
 * leave on every rank the lower factor L [n, n] (row-major, zeros above the diagonal) with
 * A = L Lᵀ. They return 0, or the LAPACK info (> 0: the leading minor of that order is not
 * positive definite) so the caller can retry with more damping. ScaLAPACK runs on a
 * near-square process grid with 2-D block-cyclic blocks; its result equals LAPACK's to
 * rounding (about 1e-15 relative), not bit for bit.
 */
#ifndef E8Q_WORKER_CHOLESKY_H
#define E8Q_WORKER_CHOLESKY_H

int e8q_cholesky_lapack(int n, double *A);
/* collective over MPI_COMM_WORLD; nb = block size (0: chosen from n and the grid) */
int e8q_cholesky_scalapack(int n, double *A, int nb);
/* on CUDA device `device` through cuSOLVER dpotrf (float64; equals LAPACK's to rounding); the
 * same contract, so e8q_ldl_build_chol retries with more damping on info > 0 as for LAPACK */
int e8q_cholesky_cusolver_on(int device, int n, double *A);
/* the same on this rank's device (e8q_device_cuda(); fatal without one): --device cuda */
int e8q_cholesky_cusolver(int n, double *A);
/* the readable twin: textbook Cholesky-Banachiewicz in plain loops */
int e8q_cholesky_ref(int n, double *A);
/* call once before MPI_Finalize when ScaLAPACK was used (Cblacs_exit(1)) */
void e8q_scalapack_finish(void);

#endif
