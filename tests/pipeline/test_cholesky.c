/* tests/pipeline/test_cholesky.c: LAPACK and ScaLAPACK Cholesky against the plain-loop
 * reference, on random SPD matrices (same on every rank); run on 1 rank and forced on 4. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "testutil.h"
#include "worker/cholesky.h"

static double *random_spd(int n, uint64_t seed) {
  t_rng r = {seed};
  double *B = malloc(sizeof(double) * (size_t)n * n), *A = calloc((size_t)n * n, sizeof(double));
  for (int i = 0; i < n * n; i++) B[i] = t_rng_normal(&r);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int k = 0; k < n; k++) s += B[i * n + k] * B[j * n + k];
      A[i * n + j] = s / n + (i == j ? 0.01 : 0);
    }
  free(B);
  return A;
}

static double max_diff(int n, const double *a, const double *b) {
  double m = 0;
  for (int i = 0; i < n * n; i++) m = fmax(m, fabs(a[i] - b[i]));
  return m;
}

static void test_factor_sizes(void **state) {
  (void)state;
  const int sizes[] = {8, 64, 176, 200};
  for (int s = 0; s < 4; s++) {
    int n = sizes[s];
    double *A = random_spd(n, 1000 + n);
    double *ref = malloc(sizeof(double) * n * n), *lap = malloc(sizeof(double) * n * n),
           *sca = malloc(sizeof(double) * n * n);
    memcpy(ref, A, sizeof(double) * n * n);
    memcpy(lap, A, sizeof(double) * n * n);
    memcpy(sca, A, sizeof(double) * n * n);
    assert_int_equal(e8q_cholesky_ref(n, ref), 0);
    assert_int_equal(e8q_cholesky_lapack(n, lap), 0);
    assert_int_equal(e8q_cholesky_scalapack(n, sca, 0), 0);
    T_NEAR(max_diff(n, ref, lap), 0, 1e-11, "LAPACK vs reference");
    T_NEAR(max_diff(n, ref, sca), 0, 1e-11, "ScaLAPACK vs reference");
    /* L Lᵀ = A */
    double err = 0;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) {
        double v = 0;
        for (int k = 0; k < n; k++) v += sca[i * n + k] * sca[j * n + k];
        err = fmax(err, fabs(v - A[i * n + j]));
      }
    T_NEAR(err, 0, 1e-12, "L L^T - A");
    /* explicit small block size: more blocks than ranks in both directions */
    memcpy(sca, A, sizeof(double) * n * n);
    assert_int_equal(e8q_cholesky_scalapack(n, sca, 8), 0);
    T_NEAR(max_diff(n, ref, sca), 0, 1e-11, "ScaLAPACK nb=8 vs reference");
    free(A), free(ref), free(lap), free(sca);
  }
}

static void test_not_positive_definite(void **state) {
  (void)state;
  int n = 40;
  double *A = random_spd(n, 7);
  A[17 * n + 17] = -1.0; /* minor of order 18 fails */
  double *B = malloc(sizeof(double) * n * n), *C = malloc(sizeof(double) * n * n);
  memcpy(B, A, sizeof(double) * n * n);
  memcpy(C, A, sizeof(double) * n * n);
  assert_int_equal(e8q_cholesky_ref(n, A), 18);
  assert_int_equal(e8q_cholesky_lapack(n, B), 18);
  assert_int_equal(e8q_cholesky_scalapack(n, C, 8), 18);
  free(A), free(B), free(C);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  e8q_comm_global_open(-1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_factor_sizes),
      cmocka_unit_test(test_not_positive_definite),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  e8q_scalapack_finish();
  e8q_comm_global_close();
  MPI_Finalize();
  return rc;
}
