/* tests/comm/test_comm_nccl.c: e8q_comm on device buffers (NCCL), one GPU per rank.
 * Skips (exit code 77, with the reason) when there are fewer CUDA devices than ranks.
 * Values are exact; results are copied back to the host and checked there. The exact ordered
 * sum (e8q_xsum) on the NCCL communicator is checked bit for bit against MPI and a local sum. */
#include <cuda_runtime.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/cuda_util.h"
#include "common/error.h"
#include "comm_check.h"
#define CU(call) E8Q_CHECK((call) == cudaSuccess, "%s failed", #call)

/* chunk k of rank r's contribution to the ordered sum: x [n] from (r, k) only, both signs,
 * magnitudes 2^-70 .. 2^58 (|sum| of up to 32 chunks stays inside the default range 2^62),
 * exact zeros, one negative unit (-2^-64: every limb bit set) and exact 2^58s */
static uint64_t xs_mix(uint64_t z) { /* splitmix64 */
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
static void xsum_chunk(int r, int k, double *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const uint64_t h = xs_mix(((uint64_t)r << 40) ^ ((uint64_t)k << 32) ^ i);
    const double m = (double)(h >> 11) * 0x1p-53 * (h & 1 ? -1 : 1); /* (-1, 1) */
    if (i % 13 == 0) x[i] = 0;
    else if (i % 7 == 0) x[i] = -0x1p-64;
    else if (i % 11 == 0) x[i] = r % 2 ? -0x1p58 : 0x1p58;
    else x[i] = ldexp(m, (int)((h >> 1) % 129) - 70);
  }
}

/* every rank adds its chunks; e8q_comm_allreduce_sum_ordered on the NCCL communicator c must
 * give the bits of the same call on a host-only (MPI) communicator and of all ranks' chunks
 * summed here without communication */
static void test_ordered_sum_nccl(e8q_comm *c, int p) {
  enum { NX = 5003, K = 3 };
  e8q_comm *h = e8q_comm_world(-1); /* host-only: MPI path */
  CHECK(e8q_comm_has_device(c) && !e8q_comm_has_device(h), "communicator kinds");
  e8q_xsum sn, sh, sl; /* NCCL, MPI, local */
  e8q_xsum_init(&sn, NX, E8Q_XSUM_FRAC_DEFAULT);
  e8q_xsum_init(&sh, NX, E8Q_XSUM_FRAC_DEFAULT);
  e8q_xsum_init(&sl, NX, E8Q_XSUM_FRAC_DEFAULT);
  double *x = malloc(sizeof(double) * NX), *on = malloc(sizeof(double) * NX),
         *oh = malloc(sizeof(double) * NX), *ol = malloc(sizeof(double) * NX);
  for (int k = 0; k < K; k++) {
    xsum_chunk(g_rank, k, x, NX);
    e8q_xsum_add(&sn, x);
    e8q_xsum_add(&sh, x);
  }
  for (int r = 0; r < p; r++)
    for (int k = 0; k < K; k++) {
      xsum_chunk(r, k, x, NX);
      e8q_xsum_add(&sl, x);
    }
  e8q_comm_allreduce_sum_ordered(c, &sn, on);
  e8q_comm_allreduce_sum_ordered(h, &sh, oh);
  e8q_xsum_get(&sl, ol);
  int bad_h = 0, bad_l = 0, neg = 0;
  for (int i = 0; i < NX; i++) {
    bad_h += sn.v[i] != sh.v[i];
    bad_l += sn.v[i] != sl.v[i];
    neg += sl.v[i] < 0;
  }
  CHECK(bad_h == 0, "ordered sum: %d of %d fixed-point totals over NCCL differ from MPI's", bad_h, NX);
  CHECK(bad_l == 0, "ordered sum: %d of %d fixed-point totals over NCCL differ from the local sum", bad_l, NX);
  CHECK(memcmp(on, oh, sizeof(double) * NX) == 0, "ordered sum: doubles over NCCL differ from MPI's");
  CHECK(memcmp(on, ol, sizeof(double) * NX) == 0, "ordered sum: doubles over NCCL differ from the local sum");
  CHECK(neg > NX / 4 && neg < 3 * NX / 4, "ordered sum: %d of %d totals negative (test data lost its signs)",
        neg, NX);
  e8q_xsum_free(&sn);
  e8q_xsum_free(&sh);
  e8q_xsum_free(&sl);
  free(x); free(on); free(oh); free(ol);
  e8q_comm_free(h);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int p;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  int ndev = e8q_cuda_device_count();
  if (ndev < p) {
    const char *why = e8q_cuda_unavailable_reason();
    if (g_rank == 0)
      printf("SKIP test_comm_nccl: %d CUDA device(s) for %d ranks (%s); NCCL needs one GPU per rank\n",
             ndev, p, why ? why : "too few devices");
    MPI_Finalize();
    return 77;
  }
  e8q_comm *c = e8q_comm_world(g_rank % ndev);
  CHECK(e8q_comm_has_device(c), "device communicator has no device");
  enum { N = 4097 };
  float *hf = malloc(sizeof(float) * N), *df;
  double *hd = malloc(sizeof(double) * N), *dd;
  CU(cudaMalloc((void **)&df, sizeof(float) * N));
  CU(cudaMalloc((void **)&dd, sizeof(double) * N));
  for (int i = 0; i < N; i++) {
    hf[i] = (float)((g_rank + 1) * (i % 1000));
    hd[i] = (double)(g_rank + 1) * i;
  }
  CU(cudaMemcpy(df, hf, sizeof(float) * N, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(dd, hd, sizeof(double) * N, cudaMemcpyHostToDevice));
  e8q_comm_allreduce_sum(c, E8Q_MEM_DEVICE, E8Q_COMM_F32, df, N);
  e8q_comm_allreduce_sum(c, E8Q_MEM_DEVICE, E8Q_COMM_F64, dd, N);
  CU(cudaMemcpy(hf, df, sizeof(float) * N, cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(hd, dd, sizeof(double) * N, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int i = 0; i < N; i++) {
    double t = (double)p * (p + 1) / 2;
    bad += hf[i] != (float)(t * (i % 1000)) || hd[i] != t * i;
  }
  CHECK(bad == 0, "device allreduce: %d wrong", bad);

  /* allreduce_max (i32) and fixed-size allgather/gather on device */
  {
    int32_t hm[64], *dm;
    unsigned char hi[6], *hall = malloc((size_t)p * 6), *di, *dall;
    for (int i = 0; i < 64; i++) hm[i] = ((g_rank + i) % p) * 3 - i;
    for (int j = 0; j < 6; j++) hi[j] = (unsigned char)(13 * g_rank + j);
    CU(cudaMalloc((void **)&dm, sizeof hm));
    CU(cudaMalloc((void **)&di, sizeof hi));
    CU(cudaMalloc((void **)&dall, (size_t)p * 6));
    CU(cudaMemcpy(dm, hm, sizeof hm, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(di, hi, sizeof hi, cudaMemcpyHostToDevice));
    e8q_comm_allreduce_max(c, E8Q_MEM_DEVICE, E8Q_COMM_I32, dm, 64);
    CU(cudaMemcpy(hm, dm, sizeof hm, cudaMemcpyDeviceToHost));
    bad = 0;
    for (int i = 0; i < 64; i++) bad += hm[i] != (p - 1) * 3 - i;
    CHECK(bad == 0, "device allreduce_max: %d wrong", bad);
    for (int pass = 0; pass < 2; pass++) {
      CU(cudaMemset(dall, 0, (size_t)p * 6));
      if (pass == 0) e8q_comm_allgather(c, E8Q_MEM_DEVICE, di, 6, dall);
      else e8q_comm_gather(c, E8Q_MEM_DEVICE, di, 6, dall, 0);
      if (pass == 1 && g_rank != 0) continue;
      CU(cudaMemcpy(hall, dall, (size_t)p * 6, cudaMemcpyDeviceToHost));
      bad = 0;
      for (int k = 0; k < p; k++)
        for (int j = 0; j < 6; j++) bad += hall[k * 6 + j] != (unsigned char)(13 * k + j);
      CHECK(bad == 0, "device %s: %d wrong bytes", pass ? "gather" : "allgather", bad);
    }
    cudaFree(dm); cudaFree(di); cudaFree(dall);
    free(hall);
  }

  /* bcast from the last rank */
  for (int i = 0; i < N; i++) hd[i] = g_rank == p - 1 ? i * 3.0 : -1.0;
  CU(cudaMemcpy(dd, hd, sizeof(double) * N, cudaMemcpyHostToDevice));
  e8q_comm_bcast(c, E8Q_MEM_DEVICE, dd, sizeof(double) * N, p - 1);
  CU(cudaMemcpy(hd, dd, sizeof(double) * N, cudaMemcpyDeviceToHost));
  bad = 0;
  for (int i = 0; i < N; i++) bad += hd[i] != i * 3.0;
  CHECK(bad == 0, "device bcast: %d wrong", bad);

  /* allgatherv and gatherv of bytes: rank k sends 5k+3 bytes of value 11k + j */
  size_t *counts = malloc(sizeof(size_t) * p), total = 0;
  for (int k = 0; k < p; k++) total += counts[k] = (size_t)(5 * k + 3);
  unsigned char *hs = malloc(counts[g_rank]), *hr = malloc(total), *ds, *dr;
  for (size_t j = 0; j < counts[g_rank]; j++) hs[j] = (unsigned char)(11 * g_rank + j);
  CU(cudaMalloc((void **)&ds, counts[g_rank]));
  CU(cudaMalloc((void **)&dr, total));
  CU(cudaMemcpy(ds, hs, counts[g_rank], cudaMemcpyHostToDevice));
  for (int pass = 0; pass < 2; pass++) {
    CU(cudaMemset(dr, 0xAB, total));
    if (pass == 0) e8q_comm_allgatherv(c, E8Q_MEM_DEVICE, ds, counts[g_rank], dr, counts);
    else e8q_comm_gatherv(c, E8Q_MEM_DEVICE, ds, counts[g_rank], dr, counts, 0);
    if (pass == 1 && g_rank != 0) continue;
    CU(cudaMemcpy(hr, dr, total, cudaMemcpyDeviceToHost));
    bad = 0;
    size_t off = 0;
    for (int k = 0; k < p; k++)
      for (size_t j = 0; j < counts[k]; j++) bad += hr[off++] != (unsigned char)(11 * k + j);
    CHECK(bad == 0, "device %s: %d wrong bytes", pass ? "gatherv" : "allgatherv", bad);
  }

  test_ordered_sum_nccl(c, p);

  int rc = check_report("test_comm_nccl");
  cudaFree(df); cudaFree(dd); cudaFree(ds); cudaFree(dr);
  free(hf); free(hd); free(hs); free(hr); free(counts);
  e8q_comm_free(c);
  MPI_Finalize();
  return rc;
}
