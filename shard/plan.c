/* shard/plan.c: layers, groups, shapes, padding, Hadamard factors, rank split and memory
 * (shard/plan.h). */
#include "shard/plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "io/safetensors.h"
#include "kernels/hadamard.h"
#include "kernels/ldlq.h"

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
  int hd = cfg->head_dim;
  switch (id) {
  case E8Q_GROUP_QKV:
    g->n_pieces = 3;
    g->piece_rows[0] = cfg->n_heads * hd;
    g->piece_rows[1] = g->piece_rows[2] = cfg->n_kv_heads * hd;
    g->piece_names[0] = "self_attn.q_proj";
    g->piece_names[1] = "self_attn.k_proj";
    g->piece_names[2] = "self_attn.v_proj";
    break;
  case E8Q_GROUP_O:
    g->n_pieces = 1;
    g->piece_rows[0] = g->m;
    g->piece_names[0] = "self_attn.o_proj";
    break;
  case E8Q_GROUP_UPGATE:
    g->n_pieces = 2;
    g->piece_rows[0] = g->piece_rows[1] = cfg->hidden_dim;
    g->piece_names[0] = "mlp.up_proj";
    g->piece_names[1] = "mlp.gate_proj";
    break;
  default:
    g->n_pieces = 1;
    g->piece_rows[0] = g->m;
    g->piece_names[0] = "mlp.down_proj";
  }
}

/* ---------------------------------------------------------------- memory */
static void plan_memory(e8q_plan *p) {
  const e8q_config *c = &p->cfg;
  size_t weights = 2 * (size_t)c->dim, sum_n2 = 0, nmax = 0, ldlq = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &p->groups[g];
    size_t m = (size_t)gp->m, n = (size_t)gp->n, np = (size_t)gp->n_pad;
    weights += m * n;
    sum_n2 += n * n;
    if (n > nmax) nmax = n;
    /* Wr, 3 n_pad^2 (Hessian, prepared H, L), quantized rows + H E per tile, codes */
    size_t need = 8 * m * np + 8 * 3 * np * np + 8 * 2 * (size_t)E8Q_LDLQ_ROW_TILE * np + 4 * m * np / 8;
    if (need > ldlq) ldlq = need;
  }
  weights *= 4;
  size_t T = (size_t)p->ctx;
  size_t scratch = 4 * T *
                       ((size_t)c->dim + p->groups[E8Q_GROUP_QKV].m + p->groups[E8Q_GROUP_O].n + c->dim +
                        2 * (size_t)c->hidden_dim + c->hidden_dim) +
                   4 * (size_t)c->n_heads * T * T;
  for (int r = 0; r < p->n_ranks; r++) {
    e8q_rank_mem *m = &p->mem[r];
    size_t seqs = (size_t)(p->seq_start[r + 1] - p->seq_start[r]);
    m->weights = weights;
    m->acts = 2 * 4 * seqs * T * c->dim + scratch;
    /* 256: E8Q_HESS_ROWS (worker/hessian.h, xd scratch), which shard/ cannot include (DESIGN §1) */
    m->hess_acc = 24 * sum_n2 + 8 * 256 * nmax;
    m->hessians = 8 * sum_n2;
    m->ldlq = ldlq;
    size_t quant = m->hessians + m->ldlq;
    m->peak = m->weights + m->acts + (m->hess_acc > quant ? m->hess_acc : quant);
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
  int64_t lin = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) lin += (int64_t)p->groups[g].m * p->groups[g].n;
  p->n_params_linear = lin * cfg->n_layers;
  p->n_params_other = (int64_t)cfg->vocab_size * cfg->dim * (cfg->tied ? 1 : 2) + (int64_t)cfg->dim * (2 * cfg->n_layers + 1);
  plan_memory(p);
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

void e8q_plan_build(e8q_plan *p, const char *model_dir, int n_ranks, int devset, int ctx) {
  e8q_config cfg;
  e8q_config_load(model_dir, &cfg);
  e8q_plan_from_config(p, &cfg, n_ranks, devset, ctx);
  e8q_st_model *st = e8q_st_model_open(model_dir);
  char name[256];
  for (int i = 0; i < cfg.n_layers; i++) {
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      const e8q_group_plan *gp = &p->groups[g];
      for (int k = 0; k < gp->n_pieces; k++) {
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", i, gp->piece_names[k]);
        check_tensor(st, model_dir, name, gp->piece_rows[k], gp->n);
      }
    }
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
    check_tensor(st, model_dir, name, cfg.dim, 0);
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
    check_tensor(st, model_dir, name, cfg.dim, 0);
  }
  check_tensor(st, model_dir, "model.embed_tokens.weight", cfg.vocab_size, cfg.dim);
  check_tensor(st, model_dir, "model.norm.weight", cfg.dim, 0);
  if (!cfg.tied) check_tensor(st, model_dir, "lm_head.weight", cfg.vocab_size, cfg.dim);
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

void e8q_plan_print(const e8q_plan *p, double gpu_mem_gib, void *file) {
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
             "peak = weights + acts + max(hess_acc, hessians + ldlq)):\n");
  fprintf(f, "  %4s %11s %27s %9s %9s %9s %9s %9s %9s%s\n", "rank", "sequences", "rows", "weights", "acts", "hess_acc",
          "hessians", "ldlq", "peak", gpu_mem_gib > 0 ? "  fits" : "");
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
    int fits = gib(m->peak) <= gpu_mem_gib;
    all_fit &= fits;
    fprintf(f, "  %4d %11s %27s %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f%s\n", r, seqs, rows, gib(m->weights), gib(m->acts),
            gib(m->hess_acc), gib(m->hessians), gib(m->ldlq), gib(m->peak), gpu_mem_gib > 0 ? (fits ? "  yes" : "  NO") : "");
    fprintf(f, "       bytes: weights %zu acts %zu hess_acc %zu hessians %zu ldlq %zu peak %zu\n", m->weights, m->acts,
            m->hess_acc, m->hessians, m->ldlq, m->peak);
  }
  if (gpu_mem_gib > 0 && !all_fit)
    fprintf(f, "\nsome ranks need more than %.1f GiB: use more ranks or a smaller --devset/--ctx\n", gpu_mem_gib);
}
