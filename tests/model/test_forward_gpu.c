/* tests/model/test_forward_gpu.c: a model's forwards with its linears on a CUDA device against the
 * same model on the CPU, on a small model: 2 layers, dim 64, 4 query / 2 kv heads of 16, hidden
 * 128, every linear quantized (E8P, random codes), an untied head over 96 tokens.
 *   - e8q_model_forward (blocks on the device, then the final norm and head through the model's
 *     device workspace): the logits of 21 tokens within 1e-4 of the CPU's (relative to the largest);
 *   - e8q_model_step (generate's step on the device: residual stream and KV cache there): the
 *     logits of every position within 1e-4 of the CPU step's, and the last one of the batched
 *     device forward's within 1e-4;
 *   - a second generation on the same workspace (its device cache reused) gives the same bits.
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
#include "testutil.h"
#include "worker/forward.h"

#include "../check.h" /* CHECK, n_pass/n_fail, g_seed, rel_err */

enum { NL = 2, D = 64, NH = 4, NKV = 2, HD = 16, H = 128, V = 96, T = 21 };

static float *randn(t_rng *r, size_t n, double s, double mean) {
  float *x = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) x[i] = (float)(mean + s * t_rng_normal(r));
  return x;
}

int main(void) {
  if (e8q_cuda_device_count() < 1) {
    printf("test_forward_gpu: SKIPPED: no CUDA device (%s)\n", e8q_cuda_unavailable_reason());
    return 77;
  }
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  printf("test_forward_gpu: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  t_rng r = {g_seed};
  e8q_model cpu, gpu;
  memset(&cpu, 0, sizeof cpu);
  cpu.cfg = (e8q_config){.dim = D, .hidden_dim = H, .n_layers = NL, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
                         .vocab_size = V, .max_seq_len = 64, .rope_theta = 10000.0, .norm_eps = 1e-5};
  cpu.embed = randn(&r, (size_t)V * D, 1.0, 0.0);
  cpu.final_norm = randn(&r, D, 0.2, 1.0);
  cpu.lm_head = randn(&r, (size_t)V * D, 1.0 / sqrt(D), 0.0);
  e8q_block bc[NL], bg[NL];
  e8q_qlinear ql[NL][4];
  e8q_qlinear_gpu *qg[NL][4];
  uint16_t *codes[NL][4];
  float *scales[NL][4];
  memset(bc, 0, sizeof bc);
  for (int b = 0; b < NL; b++) {
    bc[b].attn_norm = randn(&r, D, 0.2, 1.0);
    bc[b].ffn_norm = randn(&r, D, 0.2, 1.0);
    bc[b].layer1 = b + 1;
    for (int g = 0; g < 4; g++) {
      int m, n;
      e8q_group_shape(&cpu.cfg, g, &m, &n);
      codes[b][g] = malloc(sizeof(uint16_t) * (size_t)m * (n / 8));
      for (int i = 0; i < m * (n / 8); i++) codes[b][g][i] = (uint16_t)t_rng_u64(&r);
      scales[b][g] = malloc(sizeof(float) * (size_t)(n + m)); /* SU [n] | SV [m] */
      for (int i = 0; i < n + m; i++) scales[b][g][i] = (float)((t_rng_u64(&r) & 1 ? 1 : -1) * (1 + 0.2 * t_rng_normal(&r)));
      const e8q_qlinear_desc d = {.m = m, .n = n, .n_pad = n, .codebook = E8Q_CB_E8P12, .codes = codes[b][g],
                                  .SU = scales[b][g], .SV = scales[b][g] + n, .Wscale = (float)(0.8 / sqrt((double)n)),
                                  .n_pieces = 1, .K_in = 1, .K_out = 1};
      e8q_qlinear_init(&ql[b][g], &d, "forward test linear");
      const char *why = NULL;
      qg[b][g] = e8q_qlinear_gpu_create(&ql[b][g], 0, &why);
      CHECK(qg[b][g] != NULL, "a device is present but layer %d group %d is not on it: %s", b, g, why);
      if (!qg[b][g]) return check_report_local("test_forward_gpu");
      bc[b].lin[g] = (e8q_linear){.m = m, .n = n, .q = &ql[b][g]};
    }
  }
  memcpy(bg, bc, sizeof bc);
  for (int b = 0; b < NL; b++)
    for (int g = 0; g < 4; g++) bg[b].lin[g].gpu = qg[b][g];
  cpu.blocks = bc;
  gpu = cpu;
  gpu.blocks = bg;
  int ids[T];
  for (int t = 0; t < T; t++) ids[t] = (int)(t_rng_u64(&r) % V);

  /* ---- batched: blocks and head on the device */
  float *lc = malloc(sizeof(float) * T * V), *lg = malloc(sizeof(float) * T * V);
  e8q_model_forward(&cpu, 1, T, ids, lc);
  e8q_model_forward(&gpu, 1, T, ids, lg);
  CHECK(gpu.gpu != NULL, "the device forward left no workspace with the model");
  CHECK(rel_err(lg, lc, (size_t)T * V) <= 1e-4, "batched logits: device vs CPU %.3g", rel_err(lg, lc, (size_t)T * V));

  /* ---- steps: twice on the device (the cache reused), once on the CPU */
  float *sg[2];
  for (int run = 0; run < 2; run++) {
    sg[run] = malloc(sizeof(float) * T * V);
    e8q_kv_cache kv;
    e8q_kv_init(&kv, &gpu.cfg, T);
    for (int t = 0; t < T; t++) memcpy(sg[run] + (size_t)t * V, e8q_model_step(&gpu, &kv, ids[t], t), sizeof(float) * V);
    e8q_kv_free(&kv);
  }
  e8q_kv_cache kv;
  e8q_kv_init(&kv, &cpu.cfg, T);
  for (int t = 0; t < T; t++) {
    const float *l = e8q_model_step(&cpu, &kv, ids[t], t);
    const double e = rel_err(sg[0] + (size_t)t * V, l, V);
    CHECK(e <= 1e-4, "step %d: device vs CPU logits %.3g", t, e);
  }
  e8q_kv_free(&kv);
  CHECK(rel_err(sg[0] + (size_t)(T - 1) * V, lg + (size_t)(T - 1) * V, V) <= 1e-4,
        "the last step vs the batched device forward's last row: %.3g",
        rel_err(sg[0] + (size_t)(T - 1) * V, lg + (size_t)(T - 1) * V, V));
  CHECK(memcmp(sg[0], sg[1], sizeof(float) * T * V) == 0, "a second generation on the same workspace differs");

  e8q_tf_gpu_free(gpu.gpu);
  e8q_tf_gpu_free(cpu.gpu);
  for (int b = 0; b < NL; b++) {
    free(bc[b].attn_norm), free(bc[b].ffn_norm);
    for (int g = 0; g < 4; g++) {
      e8q_qlinear_gpu_free(qg[b][g]);
      e8q_qlinear_free(&ql[b][g]);
      free(codes[b][g]), free(scales[b][g]);
    }
  }
  free(cpu.embed), free(cpu.final_norm), free(cpu.lm_head), free(lc), free(lg), free(sg[0]), free(sg[1]);
  return check_report_local("test_forward_gpu");
}
