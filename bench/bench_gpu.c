/* bench/bench_gpu.c: the CUDA paths against bounds measured in the same run, on the same device.
 *
 *   bench_gpu [--quick] [--reps R]
 *
 * 1. The device's copy bandwidth: cudaMemcpy device to device of 1 GiB, bytes read + written.
 * 2. The fused forward (e8q_qlinear_forward_gpu_dev: input transform, codes, output transform)
 *    for 4096x14336, 14336x4096 and 8192x28672 (--quick: the first; e8q's Hadamard factors for
 *    each dimension, as the pipeline chooses them), E8P, RVQ3 and RVQ4, batch
 *    1 and 8: µs per product, the codes' bytes per second, and that as a fraction of the copy
 *    bandwidth (the bound: every code read once per product; batch 8 reads the same bytes).
 * 3. The fine-tuning backward (e8q_qlinear_backward_gpu_dev with dx, dSU and dSV) at batch 512
 *    (one sequence) against cuBLAS SGEMM (pedantic float32) of the same m x n x 512 product
 *    with a dense float32 weight: SGEMM time / backward time (> 1: faster than dense float32).
 * Each figure is the median of R runs (default 9) after a warm-up; a run issues enough products
 * back to back (at least 1 ms of work) that launch latency does not dominate, then synchronises.
 * Without CUDA, or without a usable device, it says so and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "bench_qlayer.h"
#include "common/cuda_util.h"
#include "common/error.h"
#include "kernels/qlinear_gpu.h"

#ifdef E8Q_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda_libs.h"

#define CU(call)                                                                                         \
  do {                                                                                                   \
    cudaError_t e_ = (call);                                                                             \
    E8Q_CHECK(e_ == cudaSuccess, "bench_gpu: %s failed: %s", #call, cudaGetErrorString(e_));             \
  } while (0)

enum { MAX_REPS = 64 };

/* median seconds of one call of fn(ctx) over reps runs of `inner` calls each, after a warm-up run */
static double time_median(int reps, int inner, void (*fn)(void *), void *ctx) {
  double t[MAX_REPS];
  for (int r = -1; r < reps; r++) {
    CU(cudaDeviceSynchronize());
    const double t0 = bench_now();
    for (int i = 0; i < inner; i++) fn(ctx);
    CU(cudaDeviceSynchronize());
    if (r >= 0) t[r] = (bench_now() - t0) / inner;
  }
  qsort(t, (size_t)reps, sizeof t[0], bench_cmp_d);
  return t[reps / 2];
}

/* calls of fn that take about 1 ms together (from one timed call) */
static int inner_for(void (*fn)(void *), void *ctx) {
  CU(cudaDeviceSynchronize());
  const double t0 = bench_now();
  fn(ctx);
  CU(cudaDeviceSynchronize());
  const double t = bench_now() - t0;
  const int n = t > 0 ? (int)(1e-3 / t) : 1000;
  return n < 1 ? 1 : n > 1000 ? 1000 : n;
}

/* ---------------------------------------------------------------- 1. copy bandwidth */
typedef struct {
  void *a, *b;
  size_t bytes;
} copy_ctx;
static void copy_run(void *p) {
  copy_ctx *c = p;
  CU(cudaMemcpyAsync(c->b, c->a, c->bytes, cudaMemcpyDeviceToDevice, 0));
}

/* ---------------------------------------------------------------- 2. and 3. the layer */
typedef struct {
  e8q_qlinear_gpu *g;
  int batch;
  float *x, *y, *zk, *dy, *dx, *dSU, *dSV; /* device: [batch, n], [batch, m] x 3, [batch, n], [n_pad], [m] */
} layer_ctx;
static void forward_run(void *p) {
  layer_ctx *c = p;
  e8q_qlinear_forward_gpu_dev(c->g, c->batch, c->x, c->y, NULL);
}
static void backward_run(void *p) {
  layer_ctx *c = p;
  e8q_qlinear_backward_gpu_dev(c->g, c->batch, c->x, c->zk, c->dy, c->dx, c->dSU, c->dSV, NULL);
}

typedef struct {
  cublasHandle_t h;
  int m, n, batch;
  const float *W, *G; /* device: W [m, n] row-major, G [batch, m] */
  float *T;           /* device: [batch, n] */
} sgemm_ctx;
static void sgemm_run(void *p) {
  sgemm_ctx *c = p;
  const float one = 1.0f, zero = 0.0f;
  /* T = G W (the transpose product's shape): column-major Tᵀ [n, batch] = W-as-stored [n, m] · Gᵀ */
  E8Q_CHECK(cublasSgemm(c->h, CUBLAS_OP_N, CUBLAS_OP_N, c->n, c->batch, c->m, &one, c->W, c->n, c->G, c->m, &zero,
                        c->T, c->n) == CUBLAS_STATUS_SUCCESS,
            "bench_gpu: cublasSgemm failed");
}

/* device buffer of n floats, filled with the fixed random stream */
static float *dev_random(size_t n) {
  float *h = e8q_malloc(sizeof(float) * (n ? n : 1), "bench host staging");
  for (size_t i = 0; i < n; i++) h[i] = rndf();
  float *d = NULL;
  CU(cudaMalloc((void **)&d, sizeof(float) * (n ? n : 1)));
  CU(cudaMemcpy(d, h, sizeof(float) * n, cudaMemcpyHostToDevice));
  free(h);
  return d;
}

static void bench_shape(int m, int n, int reps, double copy_gbs, cublasHandle_t blas) {
  const int np = (n + 7) / 8 * 8, K_in = e8q_had_choose_K(np), K_out = e8q_had_choose_K(m);
  bench_qcodes C;
  bench_qcodes_make(&C, m, np, K_in, K_out);
  const int BT = 512;
  layer_ctx L = {.x = dev_random((size_t)BT * n), .y = dev_random((size_t)BT * m), .zk = dev_random((size_t)BT * m),
                 .dy = dev_random((size_t)BT * m), .dx = dev_random((size_t)BT * n), .dSU = dev_random((size_t)np),
                 .dSV = dev_random((size_t)m)};
  sgemm_ctx S = {.h = blas, .m = m, .n = n, .batch = BT, .W = dev_random((size_t)m * n), .G = L.dy, .T = L.dx};
  const double t_sgemm = time_median(reps, inner_for(sgemm_run, &S), sgemm_run, &S);
  for (int c = 0; c < 3; c++) {
    const e8q_qlinear_desc d = bench_qcodes_desc(&C, c, m, n, np, K_in, K_out);
    e8q_qlinear q;
    e8q_qlinear_init(&q, &d, "bench_gpu layer");
    const char *why = NULL;
    L.g = e8q_qlinear_gpu_create(&q, 0, &why);
    E8Q_CHECK(L.g, "bench_gpu: the %dx%d layer is not on the device: %s", m, n, why);
    const double code_bytes = (double)m * (np / 8) * (2.0 + (c == 1 ? 1 : c == 2 ? 2 : 0));
    for (int bi = 0; bi < 2; bi++) {
      L.batch = bi ? 8 : 1;
      const double t = time_median(reps, inner_for(forward_run, &L), forward_run, &L);
      const double gbs = code_bytes / t / 1e9;
      printf("  %5dx%-5d %s batch %d  forward %8.1f us  %7.0f GB/s of codes  %5.1f%% of copy\n", m, n,
             BENCH_CB_NAMES[c], L.batch, t * 1e6, gbs, 100 * gbs / copy_gbs);
    }
    L.batch = BT;
    const double tb = time_median(reps, inner_for(backward_run, &L), backward_run, &L);
    printf("  %5dx%-5d %s batch %d backward %8.1f us  SGEMM %8.1f us  ratio %.2f\n", m, n, BENCH_CB_NAMES[c], BT,
           tb * 1e6, t_sgemm * 1e6, t_sgemm / tb);
    e8q_qlinear_gpu_free(L.g);
    e8q_qlinear_free(&q);
  }
  float *bufs[] = {L.x, L.y, L.zk, L.dy, L.dx, L.dSU, L.dSV, (float *)S.W};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
  bench_qcodes_free(&C);
}
#endif

int main(int argc, char **argv) {
  int quick = 0, reps = 9;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--quick] [--reps R]\n", argv[0]);
      return 2;
    }
  }
  if (reps < 1 || reps > 64) reps = 9;
  if (e8q_cuda_device_count() < 1) {
    printf("bench_gpu: no CUDA device (%s): nothing measured\n", e8q_cuda_unavailable_reason());
    return 0;
  }
#ifdef E8Q_HAVE_CUDA
  char name[128];
  e8q_cuda_device_name(0, name, sizeof name);
  const char *why = NULL;
  E8Q_CHECK(e8q_cuda_libs_load(&why), "bench_gpu: cuBLAS: %s", why);
  CU(cudaSetDevice(0));
  cublasHandle_t blas;
  E8Q_CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS, "bench_gpu: cublasCreate failed");
  E8Q_CHECK(cublasSetMathMode(blas, CUBLAS_PEDANTIC_MATH) == CUBLAS_STATUS_SUCCESS, "bench_gpu: no pedantic math");
  copy_ctx cp = {.bytes = (size_t)1 << 30};
  CU(cudaMalloc(&cp.a, cp.bytes));
  CU(cudaMalloc(&cp.b, cp.bytes));
  CU(cudaMemset(cp.a, 1, cp.bytes));
  const double copy_gbs = 2.0 * (double)cp.bytes / time_median(reps, 1, copy_run, &cp) / 1e9;
  cudaFree(cp.a);
  cudaFree(cp.b);
  printf("bench_gpu: device 0 (%s); copy bandwidth %.0f GB/s (read + written), median of %d\n", name, copy_gbs, reps);
  const int shapes[3][2] = {{4096, 14336}, {14336, 4096}, {8192, 28672}};
  for (int s = 0; s < (quick ? 1 : 3); s++) bench_shape(shapes[s][0], shapes[s][1], reps, copy_gbs, blas);
  cublasDestroy(blas);
#endif
  return 0;
}
