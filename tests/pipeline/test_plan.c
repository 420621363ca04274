/* tests/pipeline/test_plan.c: the plan from config.json + safetensors headers only.
 * A Llama-2-70B-shaped checkpoint (two shards with real headers and an index, data left as
 * sparse unwritten holes: no disk used) is planned for 8 ranks; the per-rank memory is checked
 * against numbers worked out here from the 70B shapes. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/e8p_encode_dev.h"
#include "shard/plan.h"
#include "testutil.h"

/* ---------------------------------------------------------------- a sparse checkpoint */
typedef struct {
  char name[128];
  int64_t rows, cols; /* cols 0: vector */
} tinfo;

static void write_sparse_st(const char *path, const tinfo *t, int n) {
  cJSON *h = cJSON_CreateObject();
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    cJSON *e = cJSON_AddObjectToObject(h, t[i].name);
    cJSON_AddStringToObject(e, "dtype", "BF16");
    cJSON *shape = cJSON_AddArrayToObject(e, "shape");
    cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].rows));
    if (t[i].cols) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].cols));
    uint64_t bytes = (uint64_t)t[i].rows * (uint64_t)(t[i].cols ? t[i].cols : 1) * 2;
    cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + bytes)));
    off += bytes;
  }
  char *js = cJSON_PrintUnformatted(h);
  cJSON_Delete(h);
  size_t len = strlen(js);
  size_t padded = (len + 7) / 8 * 8;
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint64_t hl = padded;
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hl >> (8 * i));
  assert_int_equal(fwrite(le, 1, 8, f), 8);
  assert_int_equal(fwrite(js, 1, len, f), len);
  for (size_t i = len; i < padded; i++) fputc(' ', f);
  fclose(f);
  free(js);
  assert_int_equal(truncate(path, (off_t)(8 + padded + off)), 0); /* sparse: no blocks written */
}

/* config + 2 shards + index in dir, Llama-2-70B shapes (or smaller via the arguments) */
static void write_model(const char *dir, int dim, int hidden, int layers, int heads, int kv, int vocab) {
  char p[4096];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  fprintf(f,
          "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d,\n"
          " \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,\n"
          " \"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 4096,\n"
          " \"rms_norm_eps\": 1e-05, \"hidden_act\": \"silu\", \"rope_theta\": 10000.0,\n"
          " \"tie_word_embeddings\": false, \"bos_token_id\": 1, \"eos_token_id\": 2, \"rope_scaling\": null}\n",
          dim, hidden, layers, heads, kv, vocab);
  fclose(f);
  int hd = dim / heads, n = 0;
  tinfo *t = calloc((size_t)layers * 9 + 3, sizeof *t);
  int *file_of = calloc((size_t)layers * 9 + 3, sizeof *file_of);
  for (int i = 0; i < layers; i++) {
    const struct { const char *s; int64_t r, c; } L[9] = {
        {"self_attn.q_proj.weight", (int64_t)heads * hd, dim}, {"self_attn.k_proj.weight", (int64_t)kv * hd, dim},
        {"self_attn.v_proj.weight", (int64_t)kv * hd, dim},    {"self_attn.o_proj.weight", dim, (int64_t)heads * hd},
        {"mlp.gate_proj.weight", hidden, dim},                 {"mlp.up_proj.weight", hidden, dim},
        {"mlp.down_proj.weight", dim, hidden},                 {"input_layernorm.weight", dim, 0},
        {"post_attention_layernorm.weight", dim, 0}};
    for (int k = 0; k < 9; k++) {
      snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.%s", i, L[k].s);
      t[n].rows = L[k].r;
      t[n].cols = L[k].c;
      file_of[n++] = i < layers / 2 ? 0 : 1;
    }
  }
  snprintf(t[n].name, sizeof t[n].name, "model.embed_tokens.weight");
  t[n].rows = vocab, t[n].cols = dim, file_of[n++] = 0;
  snprintf(t[n].name, sizeof t[n].name, "model.norm.weight");
  t[n].rows = dim, t[n].cols = 0, file_of[n++] = 1;
  snprintf(t[n].name, sizeof t[n].name, "lm_head.weight");
  t[n].rows = vocab, t[n].cols = dim, file_of[n++] = 1;
  cJSON *idx = cJSON_CreateObject();
  cJSON_AddObjectToObject(idx, "metadata");
  cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
  for (int s = 0; s < 2; s++) {
    tinfo *sub = calloc((size_t)n, sizeof *sub);
    int k = 0;
    char fname[64];
    snprintf(fname, sizeof fname, "model-%05d-of-00002.safetensors", s + 1);
    for (int i = 0; i < n; i++)
      if (file_of[i] == s) {
        sub[k++] = t[i];
        cJSON_AddStringToObject(wm, t[i].name, fname);
      }
    snprintf(p, sizeof p, "%s/%s", dir, fname);
    write_sparse_st(p, sub, k);
    free(sub);
  }
  char *js = cJSON_Print(idx);
  cJSON_Delete(idx);
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
  t_write_file(p, js, strlen(js));
  free(js);
  free(t);
  free(file_of);
}

/* ---------------------------------------------------------------- 70B on 8 ranks */
static void test_llama70b_8_ranks(void **state) {
  (void)state;
  char *d = t_tmpdir("plan70b");
  write_model(d, 8192, 28672, 80, 64, 8, 32000);
  e8q_plan p;
  const int R = 8, S = 128, T = 4096;
  e8q_plan_build(&p, d, R, S, T);
  assert_int_equal(p.n_layers, 80);
  /* the groups: qkv m = (64 + 2*8)*128 = 10240, n = 8192; o 8192 x 8192; upgate 57344 x 8192;
   * down 8192 x 28672. Hadamard factors: 10240 = 20*2^9, 57344 = 28*2^11, 28672 = 28*2^10. */
  const int M[4] = {10240, 8192, 57344, 8192}, N[4] = {8192, 8192, 8192, 28672};
  const int KN[4] = {1, 1, 1, 28}, KM[4] = {20, 1, 28, 1};
  for (int g = 0; g < 4; g++) {
    assert_int_equal(p.groups[g].m, M[g]);
    assert_int_equal(p.groups[g].n, N[g]);
    assert_int_equal(p.groups[g].n_pad, N[g]);
    assert_int_equal(p.groups[g].K_n, KN[g]);
    assert_int_equal(p.groups[g].K_m, KM[g]);
  }
  assert_int_equal(p.groups[0].piece_rows[1], 1024);
  /* 70B: 80 * (10240*8192 + 8192^2 + 57344*8192 + 8192*28672) = 68.45e9 linear weights */
  assert_int_equal(p.n_params_linear, 68451041280LL);
  /* every rank: 16 sequences, rows 1280 / 1024 / 7168 / 1024 */
  const double w = 4.0 * (10240.0 * 8192 + 8192.0 * 8192 + 57344.0 * 8192 + 8192.0 * 28672 + 2 * 8192);
  const double acts = 2 * 4.0 * 16 * 4096 * 8192 +
                      4.0 * 4096 * (8192 + 10240 + 8192 + 8192 + 2 * 28672 + 28672) + 4.0 * 64 * 4096 * 4096;
  const double sum_n2 = 3 * 8192.0 * 8192 + 28672.0 * 28672;
  const double hess_acc = 24.0 * sum_n2 + 8.0 * 256 * 28672; /* exact sums, chunk sums, tap scratch */
  const double hess = 8.0 * sum_n2;
  /* LDLQ workspace: the rotated group, 3 n_pad^2 matrices, a row tile's buffers, the codes;
   * largest for down (n_pad 28672) against upgate (57344 rows of 8192) */
  const double l_down = 8.0 * 8192 * 28672 + 24.0 * 28672 * 28672 + 16.0 * 256 * 28672 + 4.0 * 8192 * 28672 / 8;
  const double l_up = 8.0 * 57344 * 8192 + 24.0 * 8192 * 8192 + 16.0 * 256 * 8192 + 4.0 * 57344 * 8192 / 8;
  const double ldlq = l_down > l_up ? l_down : l_up;
  /* fine-tuning (the default --ft all). Block round 0 trains qkv's SU/SV, the norms and the dense
   * o, upgate, down: 48 bytes a parameter, plus one sequence's saved block activations and output */
  const double n_ft = 8192.0 + 10240 + 2 * 8192 + 8192.0 * 8192 + 57344.0 * 8192 + 8192.0 * 28672;
  const double bt = 4.0 * 4096 * (7 * 8192 + 2 * 10240 + 2 * 8192 + 6 * 28672);
  const double ft_block = 48 * n_ft + bt + 4.0 * 4096 * 8192;
  /* end to end: 4-bit codes of 80 blocks, embed + lm_head, the trained vector (SU/SV, norms, final
   * norm, untied lm_head), saved inputs of 80 blocks + 3 stream buffers + logits, one block's
   * activations, attention scores, the targets of 16 sequences (top 64) */
  const double susv = (8192.0 + 10240) + (8192.0 + 8192) + (8192.0 + 57344) + (28672.0 + 8192);
  const double n_e2e = 80 * (susv + 2 * 8192) + 8192 + 32000.0 * 8192;
  const double e2e = 80 * (10240.0 * 8192 + 8192.0 * 8192 + 57344.0 * 8192 + 8192.0 * 28672) / 2 +
                     4.0 * 32000 * 8192 * 2 + 48 * n_e2e + 4.0 * 4096 * (83 * 8192 + 32000) + bt +
                     4.0 * 64 * 4096 * 4096 + 8.0 * 16 * 4095 * 64;
  double quant = hess + ldlq + 16 * n_ft;
  if (hess + ft_block > quant) quant = hess + ft_block;
  double peak = w + acts + (hess_acc > quant ? hess_acc : quant);
  if (e2e > peak) peak = e2e;
  /* the device path (--device cuda): a block with its workspace and Gram sums, LDLQ of one group
   * (L, H, the rank's rows), the validation's fused model (4-bit codes, SU, SV) */
  const double dev_ws = 4.0 * 4096 * (8192 + 10240 + 8192 + 8192 + 3 * 28672.0 + 8192);
  const double dev_block = w + dev_ws + 8 * sum_n2 + 8.0 * 256 * (3 * 8192 + 28672);
  const double dev_eval = 80 * ((10240.0 * 8192 + 8192.0 * 8192 + 57344.0 * 8192 + 8192.0 * 28672) / 2 + 4 * susv) +
                          dev_ws + 4.0 * 32000 * 8192 + 4.0 * 4096 * (32000 + 3 * 8192);
  const double rows_r[4] = {1280, 1024, 7168, 1024}, np_g[4] = {8192, 8192, 8192, 28672};
  double dev_ldlq = 0;
  for (int g = 0; g < 4; g++) {
    const double need = 16 * np_g[g] * np_g[g] + 8 * rows_r[g] * (4 * np_g[g] + 128) + 4 * rows_r[g] * np_g[g] / 8 +
                        (double)sizeof(e8q_e8p_enc_tables);
    if (need > dev_ldlq) dev_ldlq = need;
  }
  /* fine-tuning on the device. One sequence's activations and gradients (10 dim + 3 m_qkv +
   * 2 q_dim + 8 hidden per token), the attention backward's P and dS, RMSNorm row factors, the
   * device's shared work buffers of the widest n (28672), n_pad (28672) and m (57344) (the
   * transpose product needs no partials at 4096 tokens: 512 batch tiles x >= 1024 code columns
   * fill a device). Block rounds add the fp32 block, its codes and the gradient sums; end to end
   * adds every layer's codes, SU, output and fuse scales and tables, the untied head and its
   * gradient, the logits, the head's stream buffers and one block's gradient sums. */
  const double codes_b = (10240.0 * 8192 + 8192.0 * 8192 + 57344.0 * 8192 + 8192.0 * 28672) / 2;
  const double dev_acts = 4.0 * 4096 * (10 * 8192 + 3 * 10240 + 2 * 8192 + 8 * 28672.0) + 8.0 * 64 * 4096 * 4096 +
                          16.0 * 4096 + 4.0 * 4096 * (28672 + 28672 + 2 * 57344.0);
  const double dev_ft = w + codes_b + 4 * n_ft + dev_acts;
  const double sum_m = 10240.0 + 8192 + 57344 + 8192;
  const double dev_e2e = 80 * (codes_b + 4 * (susv + sum_m) + 4 * 3072.0) + 4.0 * 32000 * 8192 * 2 + 4.0 * 4096 * 32000 +
                         12.0 * 4096 * 8192 + 4 * (susv + 2 * 8192) + dev_acts;
  double device = dev_block > dev_ldlq ? dev_block : dev_ldlq;
  if (dev_eval > device) device = dev_eval;
  if (dev_ft > device) device = dev_ft;
  if (dev_e2e > device) device = dev_e2e;
  for (int r = 0; r < R; r++) {
    assert_int_equal(p.seq_start[r + 1] - p.seq_start[r], 16);
    assert_int_equal(p.row_start[2][r + 1] - p.row_start[2][r], 7168);
    assert_true((double)p.mem[r].weights == w);
    assert_true((double)p.mem[r].acts == acts);
    assert_true((double)p.mem[r].hess_acc == hess_acc);
    assert_true((double)p.mem[r].hessians == hess);
    assert_true((double)p.mem[r].ldlq == ldlq);
    assert_true((double)p.mem[r].ft_block == ft_block);
    assert_true((double)p.mem[r].e2e == e2e);
    assert_true((double)p.mem[r].peak == peak);
    assert_true((double)p.mem[r].device == device);
    assert_true((double)p.mem[r].dev_ft == dev_ft);
    assert_true((double)p.mem[r].dev_e2e == dev_e2e);
  }
  /* about 51 GiB on the device, end-to-end fine-tuning's (every layer's 4-bit codes, 31.9 GiB, and
   * one sequence's activations and attention backward at 4096 tokens): under 80 GB */
  T_NEAR((double)p.mem[0].device / (1ull << 30), dev_e2e / (1ull << 30), 1e-9, "device GiB");
  assert_true(dev_e2e > dev_eval && dev_eval > dev_block && dev_eval > dev_ldlq && dev_eval > dev_ft &&
              device > 50.0 * (1ull << 30) && device < 52.0 * (1ull << 30));
  /* about 65 GiB per rank, end-to-end fine-tuning's: 31.9 (4-bit codes of 80 blocks) + 12.3 (the
   * trained vector, lm_head's 262M parameters most of it, 48 bytes each) + 10.9 (one sequence's
   * inputs of 80 blocks and its logits) + 4.1 (a block's activations) + 4.0 (attention scores) +
   * 2.0 (embed, lm_head). The blocks' stage needs 59.3: 3.2 (weights) + 9.8 (acts) + 7.7
   * (Hessians) + 38.7 (block round 0: 34.5 for its 772M trained parameters), more than the 41.0
   * of quantizing without fine-tuning (20.3 for LDLQ of down_proj) */
  T_NEAR((double)p.mem[0].peak / (1ull << 30), 65.05, 0.01, "peak GiB");
  T_NEAR((w + acts + hess + ft_block) / (1ull << 30), 59.35, 0.01, "blocks' stage GiB");
  e8q_plan_free(&p);
  /* the command prints the same bytes */
  char cmd[8192], out[4096];
  snprintf(out, sizeof out, "%s/plan.txt", d);
  snprintf(cmd, sizeof cmd, "'%s' plan --model '%s' --ranks 8 --devset 128 --ctx 4096 --gpu-mem 80 > '%s' 2>&1", E8Q_BIN,
           d, out);
  int st = system(cmd);
  char *txt = t_read_file(out, NULL);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("e8q plan failed:\n%s", txt);
  char want[256];
  snprintf(want, sizeof want, "peak %.0f device %.0f", peak, device);
  if (!strstr(txt, want)) fail_msg("e8q plan output lacks \"%s\":\n%s", want, txt);
  assert_non_null(strstr(txt, "mlp.down_proj"));
  assert_non_null(strstr(txt, "  yes"));
  free(txt);
  /* too little memory, on the device (51 GiB > 24) or on the host (65 GiB > 60 with --mem):
   * exit status 3 and a hint; each limit checks its own column (host 70 and device 56 fit) */
  const char *limits[3] = {"--gpu-mem 24", "--mem 60", "--mem 70 --gpu-mem 56"};
  for (int k = 0; k < 3; k++) {
    snprintf(cmd, sizeof cmd, "'%s' plan --model '%s' --ranks 8 --devset 128 --ctx 4096 %s > '%s' 2>&1", E8Q_BIN, d,
             limits[k], out);
    st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == (k < 2 ? 3 : 0));
    txt = t_read_file(out, NULL);
    if (k < 2) assert_non_null(strstr(txt, "use more ranks"));
    else assert_null(strstr(txt, "  NO"));
    free(txt);
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d); /* the sparse 138 GB files */
  assert_int_equal(system(cmd), 0);
  free(d);
}

/* ---------------------------------------------------------------- stories260K: padding */
static void test_stories260k_padding(void **state) {
  (void)state;
  char *m = t_shared_path("models/stories260K-hf");
  e8q_plan p;
  e8q_plan_build(&p, m, 3, 10, 64);
  /* down_proj: n = 172 padded to 176 = 11 * 16, factor 44; upgate m = 344 = 43 * 8, factor 172 */
  assert_int_equal(p.groups[E8Q_GROUP_DOWN].n, 172);
  assert_int_equal(p.groups[E8Q_GROUP_DOWN].n_pad, 176);
  assert_int_equal(p.groups[E8Q_GROUP_DOWN].K_n, 44);
  assert_int_equal(p.groups[E8Q_GROUP_UPGATE].K_m, 172);
  assert_int_equal(p.groups[E8Q_GROUP_QKV].m, 128);
  /* 10 sequences = 2 chunks of 8 over 3 ranks: none, 0-7, 8-9; 344 upgate rows = 2 tiles of
   * 256: none, 0-255, 256-343 */
  assert_int_equal(p.seq_start[1], 0);
  assert_int_equal(p.seq_start[2], 8);
  assert_int_equal(p.seq_start[3], 10);
  assert_int_equal(p.row_start[2][1], 0);
  assert_int_equal(p.row_start[2][2], 256);
  assert_int_equal(p.row_start[2][3], 344);
  e8q_plan_free(&p);
  free(m);
}

static void test_bad_shapes(void **state) {
  (void)state;
  /* 8248 = 8 * 1031: a 4124 x 4124 factor is beyond what e8q builds */
  E8Q_EXPECT_FATAL(e8q_plan_hadamard_factor(8248, "mlp.down_proj input"), "mlp.down_proj input", "8248",
                   "not supported");
  char *d = t_tmpdir("plan-bad");
  write_model(d, 64, 8248, 2, 8, 4, 100);
  e8q_plan p;
  E8Q_EXPECT_FATAL(e8q_plan_build(&p, d, 1, 4, 32), "mlp.upgate_proj output (m)", "16496", "Hadamard");
  /* a checkpoint whose tensors disagree with config.json */
  write_model(d, 64, 128, 2, 8, 4, 100);
  char p2[4096];
  snprintf(p2, sizeof p2, "%s/config.json", d);
  char *c = t_read_file(p2, NULL);
  char *at = strstr(c, "\"intermediate_size\": 128");
  memcpy(at, "\"intermediate_size\": 136", 24);
  t_write_file(p2, c, strlen(c));
  free(c);
  E8Q_EXPECT_FATAL(e8q_plan_build(&p, d, 1, 4, 32), "model.layers.0.mlp.up_proj.weight", "[128, 64]", "[136, 64]");
  free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_llama70b_8_ranks),
      cmocka_unit_test(test_stories260k_padding),
      cmocka_unit_test(test_bad_shapes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
