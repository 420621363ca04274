/* bench/bench_forward.c: one decoder block of the CPU reference forward pass (batched and
 * KV-cached) against the bound measured in the same run: the time of its four dense
 * products alone (cblas_sgemm on the same shapes). The ratio shows what the non-matmul ops
 * (norms, RoPE, attention, SwiGLU) cost on top of the weights.
 *
 *   bench_forward [dim hidden heads kv_heads T n_seq]   (default 1024 2816 16 4 512 2)
 * Threads: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS as usual. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/forward.h"
#include "worker/linear.h"

static float *rnd(size_t n, float scale, uint64_t *s) {
  float *x = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = scale * ((float)(*s >> 40) / (float)(1u << 24) - 0.5f);
  }
  return x;
}

int main(int argc, char **argv) {
  int a[6] = {1024, 2816, 16, 4, 512, 2};
  for (int i = 1; i < argc && i <= 6; i++) a[i - 1] = atoi(argv[i]);
  e8q_config c = {.dim = a[0], .hidden_dim = a[1], .n_layers = 1, .n_heads = a[2], .n_kv_heads = a[3],
                  .head_dim = a[0] / a[2], .vocab_size = 1, .max_seq_len = a[4], .rope_theta = 10000.0,
                  .norm_eps = 1e-5};
  int T = a[4], n_seq = a[5], N = T * n_seq;
  uint64_t s = 42;
  e8q_block b;
  memset(&b, 0, sizeof b);
  b.attn_norm = rnd(c.dim, 2.0f, &s);
  b.ffn_norm = rnd(c.dim, 2.0f, &s);
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    e8q_group_shape(&c, g, &b.lin[g].m, &b.lin[g].n);
    b.lin[g].w = rnd((size_t)b.lin[g].m * b.lin[g].n, 0.1f, &s);
  }
  float *x = rnd((size_t)N * c.dim, 1.0f, &s);
  e8q_fwd_scratch sc = {0};
  e8q_block_forward(&b, &c, n_seq, T, x, NULL, &sc); /* warm-up */

  int reps = 3;
  double t0 = e8q_now();
  for (int r = 0; r < reps; r++) e8q_block_forward(&b, &c, n_seq, T, x, NULL, &sc);
  double t_block = (e8q_now() - t0) / reps;

  /* bound: the four products alone */
  size_t maxn = (size_t)(c.hidden_dim > c.dim ? c.hidden_dim : c.dim) * 2;
  float *in = rnd((size_t)N * maxn, 1.0f, &s), *out = malloc(sizeof(float) * (size_t)N * maxn);
  t0 = e8q_now();
  for (int r = 0; r < reps; r++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_linear_forward(&b.lin[g], N, in, out);
  double t_gemm = (e8q_now() - t0) / reps;

  /* KV-cached: T steps of one token against the bound of T matrix-vector products */
  e8q_model m = {.cfg = c, .blocks = &b};
  float *emb = rnd((size_t)c.dim, 1.0f, &s), *norm1 = malloc(sizeof(float) * (size_t)c.dim); /* [dim] */
  for (int i = 0; i < c.dim; i++) norm1[i] = 1.0f;
  m.embed = emb, m.lm_head = emb, m.final_norm = norm1;
  m.cfg.vocab_size = 1;
  e8q_kv_cache kv;
  e8q_kv_init(&kv, &m.cfg, T);
  t0 = e8q_now();
  for (int p = 0; p < T; p++) e8q_model_step(&m, &kv, 0, p);
  double t_step = (e8q_now() - t0) / T;
  t0 = e8q_now();
  for (int p = 0; p < T; p++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_linear_forward(&b.lin[g], 1, in, out);
  double t_gemv = (e8q_now() - t0) / T;

  double flops = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) flops += 2.0 * N * b.lin[g].m * b.lin[g].n;
  printf("block dim %d hidden %d heads %d/%d, %d x %d tokens\n", c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, n_seq, T);
  printf("batched : %.2f ms per block (%.0f tokens/s), products alone %.2f ms (%.1f GFLOP/s): ratio %.2f\n",
         1e3 * t_block, N / t_block, 1e3 * t_gemm, flops / t_gemm * 1e-9, t_block / t_gemm);
  printf("KV step : %.3f ms per token (mean over positions 0..%d), matvecs alone %.3f ms: ratio %.2f\n", 1e3 * t_step,
         T - 1, 1e3 * t_gemv, t_step / t_gemv);
  e8q_kv_free(&kv);
  e8q_fwd_scratch_free(&sc);
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(b.lin[g].w);
  free(b.attn_norm), free(b.ffn_norm), free(x), free(in), free(out), free(emb), free(norm1);
  return 0;
}
