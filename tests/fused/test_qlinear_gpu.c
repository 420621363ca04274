/* tests/fused/test_qlinear_gpu.c: the CUDA quantized linear on a real device against the CPU
 * _ref, every codebook, batch 1..9 and 64, odd shapes; and the clean fallback (no device or an
 * unsupported shape gives NULL with a reason, and forward_gpu(NULL) equals the CPU path).
 * Exits 77 (CTest: skipped) with the reason when no CUDA device is usable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cuda_util.h"
#include "kernels/qlinear_gpu.h"

#include "../check.h" /* CHECK, n_pass/n_fail, g_seed, rnd/rndf, rel_err */

/* a real Hadamard factor of order K into R [K*K] (untouched for K = 1) */
static void factor(float *R, int K) {
  if (K == 1) return;
  e8q_had_factor f;
  e8q_had_factor_build(&f, K, rnd());
  memcpy(R, f.Rf, sizeof(float) * K * K);
  e8q_had_factor_free(&f);
}

typedef struct { uint16_t *codes; void *codes2; float *SU, *SV, *R_in, *R_out; e8q_qlinear q; } layer;

static void make(layer *L, int m, int n, int K_out, int K_in, e8q_codebook_id cb) {
  int np = (n + 7) / 8 * 8, nc = np / 8;
  L->codes = malloc(2 * (size_t)m * nc);
  for (size_t i = 0; i < (size_t)m * nc; i++) L->codes[i] = (uint16_t)rnd();
  L->codes2 = malloc(2 * (size_t)m * nc);
  for (size_t i = 0; i < (size_t)m * nc; i++) ((uint16_t *)L->codes2)[i] = (uint16_t)rnd();
  L->SU = malloc(4 * (size_t)np);
  L->SV = malloc(4 * (size_t)m);
  for (int i = 0; i < np; i++) L->SU[i] = rndf() + (rnd() & 1 ? 1.5f : -1.5f);
  for (int i = 0; i < m; i++) L->SV[i] = rndf() + (rnd() & 1 ? 1.5f : -1.5f);
  L->R_in = malloc(4 * (size_t)K_in * K_in);
  L->R_out = malloc(4 * (size_t)K_out * K_out);
  factor(L->R_in, K_in);
  factor(L->R_out, K_out);
  e8q_qlinear_desc d = {.m = m, .n = n, .n_pad = np, .codebook = cb, .codes = L->codes,
                        .codes2 = cb == E8Q_CB_E8P12 ? NULL : L->codes2, .SU = L->SU, .SV = L->SV,
                        .Wscale = 0.05f, .n_pieces = 1, .K_in = K_in, .R_in = K_in > 1 ? L->R_in : NULL,
                        .K_out = K_out, .R_out = K_out > 1 ? L->R_out : NULL};
  e8q_qlinear_init(&L->q, &d, "gpu test layer");
}
static void unmake(layer *L) {
  e8q_qlinear_free(&L->q);
  free(L->codes); free(L->codes2); free(L->SU); free(L->SV); free(L->R_in); free(L->R_out);
}

int main(void) {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_qlinear_gpu: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);

  /* fallback without a device (or in a CPU-only build) */
  if (e8q_cuda_device_count() == 0) {
    layer L;
    make(&L, 13, 172, 13, 11, E8Q_CB_E8P12);
    const char *why = NULL;
    e8q_qlinear_gpu *g = e8q_qlinear_gpu_create(&L.q, 0, &why);
    CHECK(g == NULL && why && *why, "create without a device must return NULL with a reason");
    float x[172 * 2], y1[13 * 2], y2[13 * 2];
    for (int i = 0; i < 344; i++) x[i] = rndf();
    e8q_qlinear_forward_gpu(&L.q, NULL, 2, x, y1);
    e8q_qlinear_forward(&L.q, 2, x, y2);
    CHECK(memcmp(y1, y2, sizeof y1) == 0, "fallback forward differs from the CPU path");
    unmake(&L);
    printf("test_qlinear_gpu: fallback %d passed, %d failed\n", n_pass, n_fail);
    if (n_fail) return 1;
    printf("SKIP test_qlinear_gpu: no CUDA device (%s); the GPU comparison needs one\n",
           e8q_cuda_unavailable_reason() ? e8q_cuda_unavailable_reason() : "?");
    return 77;
  }

  const e8q_codebook_id cbs[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ3B, E8Q_CB_E8P12RVQ4B};
  const int shapes[][4] = {{13, 172, 13, 11}, {96, 104, 3, 13}, {256, 1024, 1, 1}, {4096, 14336, 1, 28}};
  for (int s = 0; s < 4; s++)
    for (int c = 0; c < 3; c++) {
      layer L;
      make(&L, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], cbs[c]);
      const char *why = NULL;
      e8q_qlinear_gpu *g = e8q_qlinear_gpu_create(&L.q, 0, &why);
      CHECK(g != NULL, "create failed on a device: %s", why ? why : "?");
      if (!g) { unmake(&L); continue; }
      for (int batch = 1; batch <= 64; batch = batch < 9 ? batch + 1 : 64) {
        const int m = L.q.d.m, n = L.q.d.n;
        float *x = malloc(4 * (size_t)batch * n), *y = malloc(4 * ((size_t)batch * m + 16)),
              *yr = malloc(4 * (size_t)batch * m);
        for (size_t i = 0; i < (size_t)batch * n; i++) x[i] = rndf();
        for (int i = 0; i < 16; i++) y[(size_t)batch * m + i] = -777.f;
        e8q_qlinear_forward_gpu(&L.q, g, batch, x, y);
        e8q_qlinear_forward(&L.q, batch, x, yr);
        double e = rel_err(y, yr, (size_t)batch * m);
        CHECK(e <= 1e-5, "GPU vs CPU: cb %d m %d n %d batch %d: %.3g", (int)cbs[c], m, n, batch, e);
        int guard = 0;
        for (int i = 0; i < 16; i++) guard += y[(size_t)batch * m + i] != -777.f;
        CHECK(guard == 0, "GPU forward wrote past its output");
        free(x); free(y); free(yr);
        if (batch == 64) break;
      }
      e8q_qlinear_gpu_free(g);
      unmake(&L);
    }
  /* an unsupported shape (input Hadamard longer than shared memory) falls back cleanly */
  layer L;
  make(&L, 8, 1 << 17, 1, 1, E8Q_CB_E8P12);
  const char *why = NULL;
  e8q_qlinear_gpu *g = e8q_qlinear_gpu_create(&L.q, 0, &why);
  CHECK(g == NULL && why && strstr(why, "shared memory"), "unsupported shape must be refused with a reason");
  e8q_qlinear_gpu_free(g);
  unmake(&L);
  return check_report_local("test_qlinear_gpu");
}
