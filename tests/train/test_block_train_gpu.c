/* tests/train/test_block_train_gpu.c: block fine-tuning on a CUDA device (kernels/transformer_gpu.h's
 * train forward and backward) against the CPU block of worker/block_train.h, on a small block:
 * dim 64, 4 query / 2 kv heads of 16, hidden 128, 2 sequences of 33 tokens; qkv quantized (E8P,
 * three fused pieces) and down quantized (RVQ4), o and upgate dense.
 *   - the forward's output, dx and every gradient (both norms, SU/SV of both quantized linears,
 *     the dense Wo and Wupgate) within 1e-4 of the CPU's, relative to the largest |value|
 *     (float32 chains a dozen ops deep, summed in other orders: the CPU's own paths differ by
 *     ~1e-6; a wrong sign or a missing term is off by O(1));
 *   - the same call twice gives the same bits (no atomics: the trainer's rank-count contract);
 *   - after a step changes SV (e8q_qlinear_gpu_set_scales) and a dense weight in place
 *     (e8q_tf_gpu_forget_weights) the device forward follows the CPU's again.
 * Exits 77 (CTest: skipped) with the reason when no CUDA device is usable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cuda_util.h"
#include "kernels/qlinear_gpu.h"
#include "kernels/transformer_gpu.h"
#include "kernels/transformer_grad.h"
#include "../qlayer.h"
#include "worker/block_train.h"

#include "../check.h" /* CHECK, n_pass/n_fail, g_seed, rel_err */

enum { NSEQ = 2, T = 33, D = 64, NH = 4, NKV = 2, HD = 16, H = 128 };
#define LD ((NH + 2 * NKV) * HD)
#define N (NSEQ * T)

static float *randn(t_rng *r, size_t n, double s) {
  float *x = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) x[i] = (float)(s * t_rng_normal(r));
  return x;
}

/* the gradient arrays of both sides, in the same order: attn, ffn, dSU/dSV qkv, dWo, dWug, dSU/dSV down */
enum { NG = 8 };
static const char *gname[NG] = {"attn_norm", "ffn_norm", "SU qkv", "SV qkv", "Wo", "Wupgate", "SU down", "SV down"};
static const size_t glen[NG] = {D, D, D, LD, (size_t)D * NH * HD, (size_t)2 * H * D, H, D};

static void grads_alloc(float *g[NG]) {
  for (int k = 0; k < NG; k++) g[k] = calloc(glen[k], sizeof(float));
}

static void compare(const char *what, const float *a, const float *b, size_t n, double tol) {
  const double e = rel_err(a, b, n);
  CHECK(e <= tol, "%s: device vs CPU relative error %.3g > %.3g", what, e, tol);
}

int main(void) {
  if (e8q_cuda_device_count() < 1) {
    printf("test_block_train_gpu: SKIPPED: no CUDA device (%s)\n", e8q_cuda_unavailable_reason());
    return 77;
  }
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  printf("test_block_train_gpu: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  t_rng r = {g_seed};
  const e8q_config cfg = {.dim = D, .hidden_dim = H, .n_layers = 1, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
                          .vocab_size = 32, .max_seq_len = 64, .rope_theta = 10000.0, .norm_eps = 1e-5};
  printf("test_block_train_gpu: qkv %s, down %s, o and upgate dense\n", QLAYER_CBN[0], QLAYER_CBN[2]);

  /* ---- the block */
  qlayer Lq, Ld;
  qlayer_make(&Lq, &r, LD, D, 1, 1, E8Q_CB_E8P12);
  qlayer_make(&Ld, &r, D, H, 1, 1, E8Q_CB_E8P12RVQ4B);
  e8q_qlinear qq, qd;
  e8q_qlinear_init(&qq, &Lq.d, "qkv");
  e8q_qlinear_init(&qd, &Ld.d, "down");
  float *w1 = randn(&r, D, 0.2), *w2 = randn(&r, D, 0.2);
  for (int i = 0; i < D; i++) w1[i] += 1.0f, w2[i] += 1.0f;
  float *wo = randn(&r, (size_t)D * NH * HD, 1.0 / sqrt(NH * HD)), *wug = randn(&r, (size_t)2 * H * D, 1.0 / sqrt(D));
  e8q_block blk;
  memset(&blk, 0, sizeof blk);
  blk.attn_norm = w1;
  blk.ffn_norm = w2;
  blk.qkv = (e8q_linear){.m = LD, .n = D, .q = &qq};
  blk.o = (e8q_linear){.m = D, .n = NH * HD, .w = wo};
  blk.upgate = (e8q_linear){.m = 2 * H, .n = D, .w = wug};
  blk.down = (e8q_linear){.m = D, .n = H, .q = &qd};
  float *x = randn(&r, (size_t)N * D, 1.0), *tgt = randn(&r, (size_t)N * D, 1.0);

  /* ---- the device side */
  const char *why = NULL;
  e8q_qlinear_gpu *gq = e8q_qlinear_gpu_create(&qq, 0, &why), *gd = gq ? e8q_qlinear_gpu_create(&qd, 0, &why) : NULL;
  const e8q_tf_shape sh = {.dim = D, .hidden = H, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
                           .rope_theta = cfg.rope_theta, .norm_eps = (float)cfg.norm_eps};
  e8q_tf_gpu *w = gd ? e8q_tf_gpu_create(0, &sh, &why) : NULL;
  if (!w) {
    printf("test_block_train_gpu: FAILED: a device is present but the GPU block is not: %s\n", why);
    return 1;
  }
  const e8q_tf_gpu_lin lin[4] = {{.q = gq, .m = LD, .n = D},
                                 {.w = wo, .m = D, .n = NH * HD},
                                 {.w = wug, .m = 2 * H, .n = D},
                                 {.q = gd, .m = D, .n = H}};

  /* ---- forward and backward, CPU and device, from the same dy */
  const size_t ND = (size_t)N * D;
  float *y = malloc(sizeof(float) * ND), *yg = malloc(sizeof(float) * ND), *dy = malloc(sizeof(float) * ND);
  float *dx = malloc(sizeof(float) * ND), *dxg = malloc(sizeof(float) * ND), *dxg2 = malloc(sizeof(float) * ND);
  e8q_bt_saved sv = {0};
  e8q_block_train_forward(&blk, &cfg, NSEQ, T, x, y, &sv);
  e8q_mse(ND, y, tgt, dy);
  float *gc[NG], *gg[NG], *gg2[NG];
  grads_alloc(gc), grads_alloc(gg), grads_alloc(gg2);
  e8q_bt_grads bc = {.d_attn_norm = gc[0], .d_ffn_norm = gc[1]};
  bc.dSU[0] = gc[2], bc.dSV[0] = gc[3], bc.dW[1] = gc[4], bc.dW[2] = gc[5], bc.dSU[3] = gc[6], bc.dSV[3] = gc[7];
  e8q_block_train_backward(&blk, &cfg, &sv, dy, dx, &bc);

  for (int pass = 0; pass < 2; pass++) {
    float **g = pass ? gg2 : gg;
    e8q_tf_gpu_grads bg = {.d_attn_norm = g[0], .d_ffn_norm = g[1]};
    bg.dSU[0] = g[2], bg.dSV[0] = g[3], bg.dW[1] = g[4], bg.dW[2] = g[5], bg.dSU[3] = g[6], bg.dSV[3] = g[7];
    e8q_tf_gpu_train_forward(w, NSEQ, T, x, yg, w1, w2, lin);
    e8q_tf_gpu_train_backward(w, dy, pass ? dxg2 : dxg, lin, &bg);
  }
  compare("forward y", yg, y, ND, 1e-5);
  compare("dx", dxg, dx, ND, 1e-4);
  for (int k = 0; k < NG; k++) {
    char what[64];
    snprintf(what, sizeof what, "d/d %s", gname[k]);
    compare(what, gg[k], gc[k], glen[k], 1e-4);
    CHECK(memcmp(gg[k], gg2[k], sizeof(float) * glen[k]) == 0, "%s: two identical device calls differ", gname[k]);
  }
  CHECK(memcmp(dxg, dxg2, sizeof(float) * ND) == 0, "dx: two identical device calls differ");

  /* ---- a step: SV of qkv and Wo change in place */
  for (int i = 0; i < LD; i++) Lq.SV[i] *= 1.25f;
  for (size_t i = 0; i < (size_t)D * NH * HD; i++) wo[i] *= -0.5f;
  e8q_qlinear_set_scales(&qq, Lq.SV, Lq.fs);
  e8q_qlinear_gpu_set_scales(gq, &qq);
  e8q_tf_gpu_forget_weights(w);
  e8q_block_train_forward(&blk, &cfg, NSEQ, T, x, y, &sv);
  e8q_tf_gpu_train_forward(w, NSEQ, T, x, yg, w1, w2, lin);
  compare("forward y after a step (new SV, new Wo)", yg, y, ND, 1e-5);

  e8q_tf_gpu_free(w);
  e8q_qlinear_gpu_free(gq);
  e8q_qlinear_gpu_free(gd);
  for (int k = 0; k < NG; k++) free(gc[k]), free(gg[k]), free(gg2[k]);
  e8q_bt_saved_free(&sv);
  e8q_qlinear_free(&qq);
  e8q_qlinear_free(&qd);
  qlayer_free(&Lq);
  qlayer_free(&Ld);
  free(w1), free(w2), free(wo), free(wug), free(x), free(tgt), free(y), free(yg), free(dy), free(dx), free(dxg),
      free(dxg2);
  return check_report_local("test_block_train_gpu");
}
