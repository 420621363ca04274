/* shard/plan.c: layers, groups, shapes, padding, Hadamard factors, rank split and memory
 * (shard/plan.h). */
#include "shard/plan.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "kernels/e8p_encode_dev.h"
#include "kernels/hadamard.h"
#include "kernels/ldlq.h"
#include "kernels/qlinear_cuda_dev.h" /* e8q_qdev_t_chunks: the transpose product's partials */
#include "shard/layout.h"

/* ---------------------------------------------------------------- small rules */
int e8q_plan_hadamard_factor(int n, const char *what) {
  E8Q_CHECK(n > 0, "%s: dimension %d must be positive", what, n);
  int k = e8q_had_choose_K(n);
  E8Q_CHECK(k <= E8Q_HADAMARD_MAX_K,
            "%s: dimension %d = %d * 2^p needs a %dx%d Hadamard factor, larger than the %d e8q builds; this model "
            "shape is not supported (dimensions of the form K * 2^p with K <= %d are)",
            what, n, k, k, k, E8Q_HADAMARD_MAX_K, E8Q_HADAMARD_MAX_K);
  return k;
}

int e8q_plan_split(int total, int parts, int r) { return (int)((int64_t)total * r / parts); }

/* ---------------------------------------------------------------- groups */
static void group_fill(e8q_group_plan *g, const e8q_config *cfg, int id) {
  memset(g, 0, sizeof *g);
  g->name = e8q_group_names[id];
  e8q_group_shape(cfg, id, &g->m, &g->n);
  g->n_pad = (int)e8q_pad8(g->n);
  char what[96];
  snprintf(what, sizeof what, "%s input (n_pad)", g->name);
  g->K_n = e8q_plan_hadamard_factor(g->n_pad, what);
  snprintf(what, sizeof what, "%s output (m)", g->name);
  g->K_m = e8q_plan_hadamard_factor(g->m, what);
  g->n_pieces = e8q_layout_pieces(cfg, id, g->piece_rows, g->piece_names);
}

/* ---------------------------------------------------------------- memory
 * Byte counts of a config's shapes can pass 2^64 (a config with dimensions near 2^30): sums and
 * products saturate at SIZE_MAX, and a saturated estimate is a fatal error naming the config
 * rather than a wrapped, small number. */
static size_t mul_sat(size_t a, size_t b) { return a && b > SIZE_MAX / a ? SIZE_MAX : a * b; }
static size_t add_sat(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }
static size_t mul3_sat(size_t a, size_t b, size_t c) { return mul_sat(mul_sat(a, b), c); }

static void plan_memory(e8q_plan *p) {
  const e8q_config *c = &p->cfg;
  size_t weights = 2 * (size_t)c->dim, sum_n2 = 0, nmax = 0, ldlq = 0, sum_n = 0;
  size_t susv = 0, codes = 0; /* SU+SV floats and code bytes (4 bit: codes + codes2) of one block */
  size_t dense_tail = 0;      /* weights of o, upgate and down: dense in block round 0 */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &p->groups[g];
    size_t m = (size_t)gp->m, n = (size_t)gp->n, np = (size_t)gp->n_pad;
    weights = add_sat(weights, mul_sat(m, n));
    sum_n2 = add_sat(sum_n2, mul_sat(n, n));
    sum_n = add_sat(sum_n, n);
    if (n > nmax) nmax = n;
    /* Wr, 3 n_pad^2 (Hessian, prepared H, L), quantized rows + H E per tile, codes */
    size_t need = add_sat(add_sat(mul3_sat(8, m, np), mul3_sat(24, np, np)),
                          add_sat(mul3_sat(16, (size_t)E8Q_LDLQ_ROW_TILE, np), mul3_sat(4, m, np) / 8));
    if (need > ldlq) ldlq = need;
    susv = add_sat(susv, np + m);
    codes = add_sat(codes, mul_sat(m, np) / 2);
    if (g > 0) dense_tail = add_sat(dense_tail, mul_sat(m, n));
  }
  weights = mul_sat(weights, 4);
  size_t T = (size_t)p->ctx;
  size_t widths = (size_t)c->dim + p->groups[E8Q_GROUP_QKV].m + p->groups[E8Q_GROUP_O].n + c->dim +
                  3 * (size_t)c->hidden_dim; /* < 2^34: config integers are at most 2^30 */
  size_t scratch = add_sat(mul3_sat(4, T, widths), mul_sat(mul3_sat(4, (size_t)c->n_heads, T), T));
  /* fine-tuning (shard/plan.h): one block forward's saved activations and their gradients
   * (worker/block_train.h), 7 dim + 2 m_qkv + 2 q_dim + 6 hidden floats per token */
  const e8q_group_plan *gq = &p->groups[E8Q_GROUP_QKV];
  size_t bt = mul3_sat(4, T, 7 * (size_t)c->dim + 2 * (size_t)gq->m + 2 * (size_t)p->groups[E8Q_GROUP_O].n +
                                 6 * (size_t)c->hidden_dim);
  /* block rounds: the largest trained vector is round 0's (qkv's SU/SV, the norms, the dense o,
   * upgate and down), 48 bytes per parameter; the output y of a sequence */
  size_t n_ft = add_sat((size_t)gq->n_pad + gq->m + 2 * (size_t)c->dim, dense_tail);
  size_t ft_block = add_sat(add_sat(mul_sat(48, n_ft), bt), mul3_sat(4, T, (size_t)c->dim));
  /* end to end: the quantized model, the head (embed, untied lm_head), the trained vector
   * (every SU/SV and norm, the final norm, an untied lm_head) at 48 bytes per parameter, a
   * sequence's saved block inputs, stream buffers and logits, one block's activations, the
   * attention scores, the targets of the rank's sequences */
  const size_t L = (size_t)c->n_layers, VD = mul_sat((size_t)c->vocab_size, (size_t)c->dim);
  size_t n_e2e = add_sat(mul_sat(L, susv + 2 * (size_t)c->dim), add_sat((size_t)c->dim, c->tied ? 0 : VD));
  size_t e2e_fixed = add_sat(add_sat(mul_sat(L, codes), mul3_sat(4, VD, c->tied ? 1 : 2)), mul_sat(48, n_e2e));
  e2e_fixed = add_sat(e2e_fixed, mul3_sat(4, T, add_sat(mul_sat(L + 3, (size_t)c->dim), (size_t)c->vocab_size)));
  e2e_fixed = add_sat(e2e_fixed, add_sat(bt, mul_sat(mul3_sat(4, (size_t)c->n_heads, T), T)));
  /* the device path (shard/plan.h): a block, LDLQ of one group, the validation's fused model */
  const size_t dev_ws = mul3_sat(4, T, add_sat(widths, (size_t)c->dim));
  const size_t dev_block = add_sat(add_sat(weights, dev_ws), add_sat(mul_sat(8, sum_n2), mul3_sat(8, 256, sum_n)));
  /* the validation: every layer's codes and scales, the block workspace, the cached head and its
   * buffers for at most ctx rows (logits, the stream and its norm) */
  const size_t dev_eval =
      add_sat(add_sat(mul_sat(L, add_sat(codes, mul_sat(4, susv))), dev_ws),
              add_sat(mul_sat(4, VD), mul3_sat(4, T, add_sat((size_t)c->vocab_size, 3 * (size_t)c->dim))));
  /* fine-tuning on the device (kernels/transformer_gpu.h): one sequence's kept block activations
   * and their gradients, the attention backward's P and dS, the RMSNorm backward's row factors,
   * and the device's shared work buffers of the quantized layers (kernels/qlinear_cuda.cu) */
  size_t dev_acts = mul3_sat(4, T, 10 * (size_t)c->dim + 3 * (size_t)gq->m + 2 * (size_t)p->groups[E8Q_GROUP_O].n +
                                       8 * (size_t)c->hidden_dim);
  dev_acts = add_sat(dev_acts, add_sat(mul_sat(mul3_sat(8, (size_t)c->n_heads, T), T), mul_sat(16, T)));
  size_t wmax[4] = {0, 0, 0, 0}, sum_m = 0; /* widest n, n_pad, m, partials; the block's rows */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &p->groups[g];
    const int chunks = e8q_qdev_t_chunks(gp->m, gp->n_pad / 8, (int)T, gp->n_pad);
    const size_t w[4] = {(size_t)gp->n, (size_t)gp->n_pad, (size_t)gp->m,
                         chunks > 1 ? mul_sat((size_t)chunks, (size_t)gp->n_pad) : 0};
    for (int i = 0; i < 4; i++) wmax[i] = w[i] > wmax[i] ? w[i] : wmax[i];
    sum_m += (size_t)gp->m;
  }
  dev_acts = add_sat(dev_acts, mul3_sat(4, T, add_sat(add_sat(wmax[0], wmax[1]), add_sat(mul_sat(2, wmax[2]), wmax[3]))));
  /* block rounds (bounded over the rounds): the block's dense weights and codes, the gradient sums */
  const size_t dev_ft = add_sat(add_sat(add_sat(weights, codes), mul_sat(4, n_ft)), dev_acts);
  /* end to end: every layer's codes and device scales (SU, output scales, fuse scales, 3 KiB of
   * codebook tables a layer), the head (and its gradient when untied), the logits, the head's
   * stream buffers, one block's gradient sums */
  size_t dev_layer = add_sat(codes, add_sat(mul_sat(4, add_sat(susv, sum_m)), (size_t)E8Q_N_GROUPS * 3072));
  size_t dev_e2e = add_sat(mul_sat(L, dev_layer), mul3_sat(4, VD, c->tied ? 1 : 2));
  dev_e2e = add_sat(dev_e2e, add_sat(mul3_sat(4, T, (size_t)c->vocab_size), mul3_sat(12, T, (size_t)c->dim)));
  dev_e2e = add_sat(add_sat(dev_e2e, mul_sat(4, add_sat(susv, 2 * (size_t)c->dim))), dev_acts);
  for (int r = 0; r < p->n_ranks; r++) {
    e8q_rank_mem *m = &p->mem[r];
    size_t seqs = (size_t)(p->seq_start[r + 1] - p->seq_start[r]);
    size_t dev_ldlq = 0;
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      const size_t np = (size_t)p->groups[g].n_pad, rows = (size_t)(p->row_start[g][r + 1] - p->row_start[g][r]);
      size_t need = add_sat(mul3_sat(16, np, np), mul3_sat(8, rows, add_sat(mul_sat(4, np), 128)));
      need = add_sat(add_sat(need, mul3_sat(4, rows, np) / 8), sizeof(e8q_e8p_enc_tables));
      if (need > dev_ldlq) dev_ldlq = need;
    }
    m->device = dev_block > dev_ldlq ? dev_block : dev_ldlq;
    if (dev_eval > m->device) m->device = dev_eval;
    if (dev_ft > m->device) m->device = dev_ft;
    if (dev_e2e > m->device) m->device = dev_e2e;
    m->dev_ft = dev_ft;
    m->dev_e2e = dev_e2e;
    m->weights = weights;
    m->acts = add_sat(mul_sat(mul3_sat(8, seqs, T), (size_t)c->dim), scratch);
    /* 256: E8Q_HESS_ROWS (worker/hessian.h, xd scratch), which shard/ cannot include (DESIGN §1) */
    m->hess_acc = add_sat(mul_sat(24, sum_n2), mul_sat(8 * 256, nmax));
    m->hessians = mul_sat(8, sum_n2);
    m->ldlq = ldlq;
    m->ft_block = ft_block;
    m->e2e = add_sat(e2e_fixed, mul3_sat(8, seqs, mul_sat(T - 1, E8Q_PLAN_E2E_TOPK)));
    /* quantizing a group after a block round holds that round's state (16 bytes a parameter) */
    size_t quant = add_sat(m->hessians, add_sat(m->ldlq, mul_sat(16, n_ft)));
    size_t tune = add_sat(m->hessians, m->ft_block);
    if (tune > quant) quant = tune;
    m->peak = add_sat(add_sat(m->weights, m->acts), m->hess_acc > quant ? m->hess_acc : quant);
    if (m->e2e > m->peak) m->peak = m->e2e;
    E8Q_CHECK(m->peak < SIZE_MAX && m->device < SIZE_MAX,
              "the memory a rank needs for this model overflows 64 bits (hidden_size %d, intermediate_size %d, "
              "%d heads, --ctx %d, %zu sequences): the config's sizes are implausible; check config.json",
              c->dim, c->hidden_dim, c->n_heads, p->ctx, seqs);
  }
}

/* ---------------------------------------------------------------- build */
void e8q_plan_from_config(e8q_plan *p, const e8q_config *cfg, int n_ranks, int devset, int ctx) {
  E8Q_CHECK(n_ranks >= 1, "the number of ranks must be at least 1 (got %d)", n_ranks);
  E8Q_CHECK(devset >= 1, "--devset must be at least 1 (got %d)", devset);
  E8Q_CHECK(ctx >= 2 && ctx <= cfg->max_seq_len, "--ctx %d must be between 2 and the model's max_position_embeddings %d",
            ctx, cfg->max_seq_len);
  memset(p, 0, sizeof *p);
  p->cfg = *cfg;
  p->n_layers = cfg->n_layers;
  p->n_ranks = n_ranks;
  p->devset = devset;
  p->ctx = ctx;
  for (int g = 0; g < E8Q_N_GROUPS; g++) group_fill(&p->groups[g], cfg, g);
  p->seq_start = e8q_malloc(sizeof(int) * (size_t)(n_ranks + 1), "plan sequence split");
  int chunks = (devset + E8Q_SEQ_CHUNK - 1) / E8Q_SEQ_CHUNK;
  for (int r = 0; r <= n_ranks; r++) {
    int s0 = e8q_plan_split(chunks, n_ranks, r) * E8Q_SEQ_CHUNK;
    p->seq_start[r] = s0 < devset ? s0 : devset;
  }
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    p->row_start[g] = e8q_malloc(sizeof(int) * (size_t)(n_ranks + 1), "plan row split");
    for (int r = 0; r < n_ranks; r++) {
      int64_t r0, r1;
      e8q_ldlq_split_rows(p->groups[g].m, n_ranks, r, &r0, &r1);
      p->row_start[g][r] = (int)r0;
      p->row_start[g][r + 1] = (int)r1;
    }
  }
  p->mem = e8q_calloc((size_t)n_ranks, sizeof *p->mem, "plan memory");
  plan_memory(p); /* fatal when the sizes overflow: the counts below then fit in int64 */
  size_t lin = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) lin = add_sat(lin, mul_sat((size_t)p->groups[g].m, (size_t)p->groups[g].n));
  size_t lin_all = mul_sat(lin, (size_t)cfg->n_layers);
  size_t other = add_sat(mul3_sat((size_t)cfg->vocab_size, (size_t)cfg->dim, cfg->tied ? 1 : 2),
                         mul_sat((size_t)cfg->dim, 2 * (size_t)cfg->n_layers + 1));
  E8Q_CHECK(lin_all <= INT64_MAX && other <= INT64_MAX,
            "the model's parameter count overflows 64 bits (hidden_size %d, intermediate_size %d, %d layers, vocab "
            "%d): the config's sizes are implausible; check config.json",
            cfg->dim, cfg->hidden_dim, cfg->n_layers, cfg->vocab_size);
  p->n_params_linear = (int64_t)lin_all;
  p->n_params_other = (int64_t)other;
}

static void check_tensor(const e8q_st_model *st, const char *dir, const char *name, int64_t rows, int64_t cols) {
  int64_t shape[2];
  e8q_dtype keep;
  const char *type = NULL;
  int nd = e8q_st_model_info(st, name, shape, &keep, &type);
  E8Q_CHECK(nd, "%s: tensor %s is missing from the checkpoint; the model is incomplete", dir, name);
  int ndim = cols ? 2 : 1;
  int ok = nd == ndim && shape[0] == rows && (ndim == 1 || shape[1] == cols);
  E8Q_CHECK(ok, "%s: tensor %s has shape [%lld%s%lld] but the config implies [%lld%s%lld]; the checkpoint and its "
            "config do not match",
            dir, name, (long long)shape[0], nd > 1 ? ", " : "", nd > 1 ? (long long)shape[1] : 0LL, (long long)rows,
            cols ? ", " : "", (long long)cols);
  E8Q_CHECK(keep == E8Q_DT_F32 || keep == E8Q_DT_F16 || keep == E8Q_DT_BF16,
            "%s: tensor %s has dtype %s; e8q reads F32, F16 and BF16 weights (and GGUF block types)", dir, name, type);
}

/* the layer index of a tensor name "<prefix><i>." (HF "model.layers.", GGUF "blk."), -1 otherwise */
static long layer_of(const char *name, const char *prefix) {
  size_t k = strlen(prefix);
  if (strncmp(name, prefix, k) != 0) return -1;
  const char *s = name + k;
  if (*s < '0' || *s > '9') return -1;
  long i = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (i > (1L << 40)) return LONG_MAX; /* absurdly large: still a layer past the config's */
    i = i * 10 + (*s - '0');
  }
  return *s == '.' ? i : -1;
}

/* Tensors of layers the config does not account for (num_hidden_layers smaller than the
 * checkpoint's layers): quantizing only the first layers would silently make a different model.
 * Fatal, naming up to 3 of them. */
static void check_no_extra_layers(const e8q_st_model *st, const char *dir, int n_layers) {
  char names[3][160];
  long n_extra = 0, max_layer = -1;
  const char *prefix = st->gguf ? "blk." : E8Q_LAYOUT_LAYER_PREFIX;
#define NOTE_NAME(nm)                                                       \
  do {                                                                      \
    long li_ = layer_of((nm), prefix);                                      \
    if (li_ >= n_layers) {                                                  \
      if (n_extra < 3) snprintf(names[n_extra], sizeof names[0], "%s", (nm)); \
      n_extra++;                                                            \
      if (li_ > max_layer) max_layer = li_;                                 \
    }                                                                       \
  } while (0)
  if (st->gguf) {
    for (int i = 0; i < e8q_gguf_n_tensors(st->gguf); i++) NOTE_NAME(e8q_gguf_tensor_at(st->gguf, i)->name);
  } else if (st->n_index > 0) {
    for (int i = 0; i < st->n_index; i++) NOTE_NAME(st->index_names[i]);
  } else {
    for (int f = 0; f < st->n_files; f++)
      for (int i = 0; i < st->files[f]->n_tensors; i++) NOTE_NAME(st->files[f]->tensors[i].name);
  }
#undef NOTE_NAME
  if (n_extra == 0) return;
  E8Q_FATAL("%s: the checkpoint holds %ld tensor%s of layers the config does not have (num_hidden_layers is %d, "
            "but there are layers up to %ld): %s%s%s%s%s%s; fix num_hidden_layers in the config (or remove those "
            "tensors): e8q would otherwise quantize only part of the model",
            dir, n_extra, n_extra > 1 ? "s" : "", n_layers, max_layer, names[0], n_extra > 1 ? ", " : "",
            n_extra > 1 ? names[1] : "", n_extra > 2 ? ", " : "", n_extra > 2 ? names[2] : "", n_extra > 3 ? ", ..." : "");
}

void e8q_plan_build(e8q_plan *p, const char *model_dir, int n_ranks, int devset, int ctx) {
  e8q_config cfg;
  e8q_config_load(model_dir, &cfg);
  e8q_plan_from_config(p, &cfg, n_ranks, devset, ctx);
  e8q_st_model *st = e8q_st_model_open(model_dir);
  check_no_extra_layers(st, model_dir, cfg.n_layers);
  char name[256], what[128];
  for (int i = 0; i < cfg.n_layers; i++) {
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      const e8q_group_plan *gp = &p->groups[g];
      for (int k = 0; k < gp->n_pieces; k++) {
        snprintf(what, sizeof what, "%s.weight", gp->piece_names[k]);
        e8q_layout_layer_tensor(name, sizeof name, i, what);
        check_tensor(st, model_dir, name, gp->piece_rows[k], gp->n);
      }
    }
    for (int j = 0; j < 2; j++) {
      e8q_layout_layer_tensor(name, sizeof name, i, e8q_layout_norm_names[j]);
      check_tensor(st, model_dir, name, cfg.dim, 0);
    }
  }
  check_tensor(st, model_dir, E8Q_LAYOUT_EMBED, cfg.vocab_size, cfg.dim);
  check_tensor(st, model_dir, E8Q_LAYOUT_FINAL_NORM, cfg.dim, 0);
  if (!cfg.tied) check_tensor(st, model_dir, E8Q_LAYOUT_LM_HEAD, cfg.vocab_size, cfg.dim);
  e8q_st_model_close(st);
}

void e8q_plan_free(e8q_plan *p) {
  free(p->seq_start);
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(p->row_start[g]);
  free(p->mem);
  memset(p, 0, sizeof *p);
}

/* ---------------------------------------------------------------- print */
static double gib(size_t b) { return (double)b / (double)(1ull << 30); }

int e8q_plan_rank_fits(const e8q_rank_mem *m, double host_mem_gib, double gpu_mem_gib) {
  return (host_mem_gib <= 0 || gib(m->peak) <= host_mem_gib) && (gpu_mem_gib <= 0 || gib(m->device) <= gpu_mem_gib);
}

void e8q_plan_print(const e8q_plan *p, double host_mem_gib, double gpu_mem_gib, void *file) {
  FILE *f = file;
  const e8q_config *c = &p->cfg;
  fprintf(f, "model: %s, %d layers, dim %d, hidden %d, heads %d (kv %d, head_dim %d), vocab %d\n", c->model_type,
          c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size);
  fprintf(f, "parameters: %lld in quantized linears, %lld kept in float\n", (long long)p->n_params_linear,
          (long long)p->n_params_other);
  fprintf(f, "calibration: %d sequences x %d tokens, %d rank%s\n\n", p->devset, p->ctx, p->n_ranks,
          p->n_ranks > 1 ? "s" : "");
  fprintf(f, "schedule: blocks 0..%d one after another; per block: hessian -> quantize qkv, o, upgate, down -> "
             "propagate -> commit\n",
          p->n_layers - 1);
  fprintf(f, "  %-20s %7s %7s %7s %5s %5s  %s\n", "group", "m", "n", "n_pad", "K_n", "K_m", "pieces");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &p->groups[g];
    fprintf(f, "  %-20s %7d %7d %7d %5d %5d  ", gp->name, gp->m, gp->n, gp->n_pad, gp->K_n, gp->K_m);
    for (int k = 0; k < gp->n_pieces; k++) fprintf(f, "%s%s(%d)", k ? ", " : "", gp->piece_names[k], gp->piece_rows[k]);
    fprintf(f, "\n");
  }
  fprintf(f, "\nper rank (rows of qkv/o/upgate/down; memory in GiB,\n"
             "peak = max(weights + acts + max(hess_acc, hessians + ldlq + 16 n_ft, hessians + ft_block), e2e); the\n"
             "fine-tuning terms are those of the default --ft all; device = the GPU's bytes with --device cuda,\n"
             "see shard/plan.h; fits: peak <= --mem and device <= --gpu-mem):\n");
  const int check = host_mem_gib > 0 || gpu_mem_gib > 0;
  fprintf(f, "  %4s %11s %27s %9s %9s %9s %9s %9s %9s %9s%s\n", "rank", "sequences", "rows", "weights", "acts",
          "hess_acc", "hessians", "ldlq", "peak", "device", check ? "  fits" : "");
  int all_fit = 1;
  for (int r = 0; r < p->n_ranks; r++) {
    const e8q_rank_mem *m = &p->mem[r];
    char rows[64];
    snprintf(rows, sizeof rows, "%d/%d/%d/%d", p->row_start[0][r + 1] - p->row_start[0][r],
             p->row_start[1][r + 1] - p->row_start[1][r], p->row_start[2][r + 1] - p->row_start[2][r],
             p->row_start[3][r + 1] - p->row_start[3][r]);
    char seqs[32];
    if (p->seq_start[r + 1] > p->seq_start[r]) snprintf(seqs, sizeof seqs, "%d-%d", p->seq_start[r], p->seq_start[r + 1] - 1);
    else snprintf(seqs, sizeof seqs, "none");
    const int fits = e8q_plan_rank_fits(m, host_mem_gib, gpu_mem_gib);
    all_fit &= fits;
    fprintf(f, "  %4d %11s %27s %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f%s\n", r, seqs, rows, gib(m->weights),
            gib(m->acts), gib(m->hess_acc), gib(m->hessians), gib(m->ldlq), gib(m->peak), gib(m->device),
            check ? (fits ? "  yes" : "  NO") : "");
    fprintf(f, "       ft_block %.3f, e2e %.3f; bytes: weights %zu acts %zu hess_acc %zu hessians %zu ldlq %zu ft_block %zu "
               "e2e %zu peak %zu device %zu\n",
            gib(m->ft_block), gib(m->e2e), m->weights, m->acts, m->hess_acc, m->hessians, m->ldlq, m->ft_block, m->e2e,
            m->peak, m->device);
  }
  if (check && !all_fit)
    fprintf(f, "\nsome ranks need more than --mem %.1f GiB (host) or --gpu-mem %.1f GiB (device): use more ranks or a "
               "smaller --devset/--ctx\n",
            host_mem_gib, gpu_mem_gib);
}
