/* tests/train/test_finetune_gpu.c: fine-tuning on a CUDA device against the CPU.
 * 1. Block (kernels/transformer_gpu.h's train forward and backward) against the CPU block of
 *    worker/block_train.h, on a small block:
 * dim 64, 4 query / 2 kv heads of 16, hidden 128, 2 sequences of 33 tokens; qkv quantized (E8P,
 * three fused pieces) and down quantized (RVQ4), o and upgate dense.
 *   - the forward's output, dx and every gradient (both norms, SU/SV of both quantized linears,
 *     the dense Wo and Wupgate) within 1e-4 of the CPU's, relative to the largest |value|
 *     (float32 chains a dozen ops deep, summed in other orders: the CPU's own paths differ by
 *     ~1e-6; a wrong sign or a missing term is off by O(1));
 *   - the same call twice gives the same bits (no atomics: the trainer's rank-count contract);
 *   - after a step changes SV (e8q_qlinear_gpu_set_scales) and a dense weight in place
 *     (e8q_tf_gpu_forget_weights) the device forward follows the CPU's again.
 * 2. End to end (worker/finetune_e2e.h with e8q_e2e_work_use_device: blocks, final norm and head
 *    on the device) against the CPU's e8q_e2e_seq_grad, on a 2-layer model with every linear
 *    quantized (E8P), an untied head over 64 tokens, 17 tokens, top-8 targets: the loss within
 *    1e-5 and the whole gradient (SU/SV, norms, final norm, head) within 1e-4 of the largest
 *    value of each part; bit-repeatable; after a step (e8q_e2e_refresh, e8q_e2e_work_refresh)
 *    the held-out loss follows the CPU's.
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
#include "worker/finetune_e2e.h"

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

/* ================================================================ 1. a block */
static void test_block(t_rng *rr) {
  t_rng r = *rr;
  const e8q_config cfg = {.dim = D, .hidden_dim = H, .n_layers = 1, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
                          .vocab_size = 32, .max_seq_len = 64, .rope_theta = 10000.0, .norm_eps = 1e-5};
  printf("test_finetune_gpu: block: qkv %s, down %s, o and upgate dense\n", QLAYER_CBN[0], QLAYER_CBN[2]);

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
  CHECK(w != NULL, "a device is present but the GPU block is not: %s", why);
  if (!w) return;
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
}

/* ================================================================ 2. end to end */
enum { EL = 2, EV = 64, ET = 17, EK = 8 };

static void test_e2e(t_rng *r) {
  const e8q_config cfg = {.dim = D, .hidden_dim = H, .n_layers = EL, .n_heads = NH, .n_kv_heads = NKV,
                          .head_dim = HD, .vocab_size = EV, .max_seq_len = 64, .rope_theta = 10000.0,
                          .norm_eps = 1e-5, .tied = 0};
  e8q_e2e_state S;
  e8q_e2e_state_init(&S, &cfg);
  for (size_t i = 0; i < S.n_susv; i++) S.p[i] = (float)((t_rng_u64(r) & 1 ? 1 : -1) * (1.0 + 0.2 * t_rng_normal(r)));
  for (size_t i = S.n_susv; i < S.off_final + D; i++) S.p[i] = (float)(1.0 + 0.2 * t_rng_normal(r));
  for (size_t i = 0; i < (size_t)EV * D; i++) S.p[S.off_head + i] = (float)(t_rng_normal(r) / sqrt(D));
  float *embed = randn(r, (size_t)EV * D, 1.0);
  e8q_block blocks[EL];
  e8q_qlinear ql[EL][4];
  uint16_t *codes[EL][4];
  memset(blocks, 0, sizeof blocks);
  for (int b = 0; b < EL; b++)
    for (int g = 0; g < 4; g++) {
      int m, n;
      e8q_group_shape(&cfg, g, &m, &n);
      codes[b][g] = malloc(sizeof(uint16_t) * (size_t)m * (n / 8));
      for (int i = 0; i < m * (n / 8); i++) codes[b][g][i] = (uint16_t)t_rng_u64(r);
      const e8q_qlinear_desc d = {.m = m, .n = n, .n_pad = n, .codebook = E8Q_CB_E8P12, .codes = codes[b][g],
                                  .SU = S.p + S.off_SU[b * 4 + g], .SV = S.p + S.off_SV[b * 4 + g],
                                  .Wscale = (float)(0.7 / sqrt((double)n)), .n_pieces = 1, .K_in = 1, .K_out = 1};
      e8q_qlinear_init(&ql[b][g], &d, "e2e test linear");
      blocks[b].lin[g] = (e8q_linear){.m = m, .n = n, .q = &ql[b][g]};
    }
  e8q_e2e_model M = {.cfg = &cfg, .blocks = blocks, .embed = embed};
  e8q_e2e_bind(&S, &M);
  e8q_e2e_refresh(&S, &M);
  /* one sequence and its top-k targets (from random logits) */
  int ids[ET], tid[(ET - 1) * EK];
  float tprob[(ET - 1) * EK], *tl = randn(r, (size_t)(ET - 1) * EV, 2.0);
  for (int t = 0; t < ET; t++) ids[t] = (int)(t_rng_u64(r) % EV);
  e8q_e2e_topk(ET - 1, EV, tl, EK, tid, tprob);

  float *gc = calloc(S.n, sizeof(float)), *gg = calloc(S.n, sizeof(float)), *gg2 = calloc(S.n, sizeof(float));
  e8q_e2e_work wc = {0}, wg = {0};
  e8q_e2e_work_use_device(&wg, &M, 0);
  const double lc = e8q_e2e_seq_grad(&M, &S, ET, EK, ids, tid, tprob, gc, &wc);
  const double lg = e8q_e2e_seq_grad(&M, &S, ET, EK, ids, tid, tprob, gg, &wg);
  const double lg2 = e8q_e2e_seq_grad(&M, &S, ET, EK, ids, tid, tprob, gg2, &wg);
  CHECK(fabs(lg - lc) <= 1e-5 * fabs(lc), "e2e loss: device %.9g vs CPU %.9g", lg, lc);
  CHECK(lg == lg2 && memcmp(gg, gg2, sizeof(float) * S.n) == 0, "e2e: two identical device calls differ");
  const size_t part[4] = {0, S.n_susv, S.off_head, S.n};
  const char *pname[3] = {"SU/SV", "norms and final norm", "lm_head"};
  for (int k = 0; k < 3; k++) {
    char what[64];
    snprintf(what, sizeof what, "e2e d/d %s", pname[k]);
    compare(what, gg + part[k], gc + part[k], part[k + 1] - part[k], 1e-4);
  }
  /* a step: every SV and the head change; both sides follow */
  for (size_t i = 0; i < S.n_susv; i++) S.p[i] *= 0.9f;
  for (size_t i = 0; i < (size_t)EV * D; i++) S.p[S.off_head + i] *= -1.0f;
  e8q_e2e_refresh(&S, &M);
  e8q_e2e_work_refresh(&wg, &M);
  const double l2c = e8q_e2e_seq_grad(&M, &S, ET, EK, ids, tid, tprob, NULL, &wc);
  const double l2g = e8q_e2e_seq_grad(&M, &S, ET, EK, ids, tid, tprob, NULL, &wg);
  CHECK(fabs(l2g - l2c) <= 1e-5 * fabs(l2c) && fabs(l2c - lc) > 1e-3 * fabs(lc),
        "e2e loss after a step: device %.9g vs CPU %.9g (before %.9g)", l2g, l2c, lc);
  printf("test_finetune_gpu: e2e loss CPU %.9g device %.9g; after a step CPU %.9g device %.9g\n", lc, lg, l2c, l2g);

  e8q_e2e_work_free(&wc);
  e8q_e2e_work_free(&wg);
  for (int b = 0; b < EL; b++)
    for (int g = 0; g < 4; g++) {
      e8q_qlinear_free(&ql[b][g]);
      free(codes[b][g]);
    }
  free(gc), free(gg), free(gg2), free(tl), free(embed);
  e8q_e2e_state_free(&S);
}

int main(void) {
  if (e8q_cuda_device_count() < 1) {
    printf("test_finetune_gpu: SKIPPED: no CUDA device (%s)\n", e8q_cuda_unavailable_reason());
    return 77;
  }
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  printf("test_finetune_gpu: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  t_rng r = {g_seed};
  test_block(&r);
  test_e2e(&r);
  return check_report_local("test_finetune_gpu");
}
