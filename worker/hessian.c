/* worker/hessian.c: Hessian accumulation through the forward taps (worker/hessian.h). */
#include "worker/hessian.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "kernels/gram_gpu.h"

/* ---------------------------------------------------------------- Gram matrices */
/* upper triangle of G (+)= xᵀ x, row blocks of E8Q_HESS_ROWS in order */
static void gram_upper(int rows, int cols, const float *x, double *xd, double *G, double beta) {
  for (int r0 = 0; r0 < rows; r0 += E8Q_HESS_ROWS) {
    int k = rows - r0 < E8Q_HESS_ROWS ? rows - r0 : E8Q_HESS_ROWS;
    size_t nk = (size_t)k * cols;
    for (size_t i = 0; i < nk; i++) xd[i] = x[(size_t)r0 * cols + i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, k, 1.0, xd, cols, beta, G, cols);
    beta = 1.0;
  }
}

static void mirror(int n, double *G) {
  for (int i = 0; i < n; i++)
    for (int j = 0; j < i; j++) G[(size_t)i * n + j] = G[(size_t)j * n + i];
}

void e8q_hessian_gram(int rows, int cols, const float *x, double *xd, double *G, int accumulate) {
  if (!accumulate) memset(G, 0, sizeof(double) * (size_t)cols * cols);
  gram_upper(rows, cols, x, xd, G, 1.0);
  mirror(cols, G);
}

void e8q_hessian_gram_ref(int rows, int cols, const float *x, double *G) {
  for (int i = 0; i < cols; i++)
    for (int j = 0; j < cols; j++) {
      double s = 0;
      for (int t = 0; t < rows; t++) s += (double)x[(size_t)t * cols + i] * (double)x[(size_t)t * cols + j];
      G[(size_t)i * cols + j] = s;
    }
}

/* ---------------------------------------------------------------- accumulator */
void e8q_hessian_acc_init(e8q_hessian_acc *a, const e8q_config *cfg, int T) {
  memset(a, 0, sizeof *a);
  a->T = T;
  int nmax = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    int m;
    e8q_group_shape(cfg, g, &m, &a->n[g]);
    e8q_xsum_init(&a->sum[g], (size_t)a->n[g] * a->n[g], E8Q_XSUM_FRAC_DEFAULT);
    a->chunk[g] = e8q_calloc((size_t)a->n[g] * a->n[g], sizeof(double), "Hessian chunk sum");
    if (a->n[g] > nmax) nmax = a->n[g];
  }
  a->xd = e8q_malloc(sizeof(double) * (size_t)E8Q_HESS_ROWS * nmax, "Hessian tap scratch");
}

void e8q_hessian_acc_free(e8q_hessian_acc *a) {
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    e8q_xsum_free(&a->sum[g]);
    free(a->chunk[g]);
    e8q_gram_gpu_free(a->gpu[g]);
  }
  free(a->xd);
  memset(a, 0, sizeof *a);
}

/* the largest |weight| of block b (its Hugging Face tensor name into name[cap]) */
static float largest_weight(const e8q_block *b, const e8q_config *cfg, char *name, size_t cap) {
  static const char *const pieces[E8Q_N_GROUPS][3] = {{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
                                                       {"self_attn.o_proj"},
                                                       {"mlp.up_proj", "mlp.gate_proj"},
                                                       {"mlp.down_proj"}};
  float best = -1;
  snprintf(name, cap, "(none)");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_linear *L = &b->lin[g];
    if (!L->w) continue;
    for (size_t i = 0; i < (size_t)L->m * L->n; i++) {
      float v = fabsf(L->w[i]);
      if (!(v > best)) continue;
      best = v;
      int row = (int)(i / (size_t)L->n), k = 0;
      int q = cfg->n_heads * cfg->head_dim, kv = cfg->n_kv_heads * cfg->head_dim;
      if (g == E8Q_GROUP_QKV) k = row < q ? 0 : row < q + kv ? 1 : 2;
      if (g == E8Q_GROUP_UPGATE) k = row < cfg->hidden_dim ? 0 : 1;
      snprintf(name, cap, "%s.weight", pieces[g][k]);
    }
  }
  return best;
}

static void hessian_tap(void *ctx, int group, int rows, int cols, const float *x) {
  e8q_hessian_acc *a = ctx;
  E8Q_CHECK(group >= 0 && group < E8Q_N_GROUPS && cols == a->n[group] && rows == a->T,
            "internal: Hessian tap of group %d got [%d, %d], expected [%d, %d]", group, rows, cols, a->T,
            group >= 0 && group < E8Q_N_GROUPS ? a->n[group] : -1);
  /* x [rows, cols]: a NaN/Inf here would surface later as an anonymous "non-finite value" of the
   * exact accumulator; name the layer and the linear instead */
  for (size_t i = 0; i < (size_t)rows * cols; i++) {
    if (isfinite(x[i])) continue;
    char wname[64] = "(unknown)", layer[32] = "a block";
    float wmax = a->blk && a->cfg ? largest_weight(a->blk, a->cfg, wname, sizeof wname) : NAN;
    if (a->blk && a->blk->layer1 > 0) snprintf(layer, sizeof layer, "model.layers.%d", a->blk->layer1 - 1);
    E8Q_FATAL("%s: the input of %s holds %s at token %zu, feature %zu while accumulating its Hessian: the "
              "activations overflow float32 in this layer (its largest weight is %g, in %s.%s); the checkpoint is "
              "corrupt or holds values e8q cannot run in float32, so it cannot be quantized",
              layer, e8q_group_names[group], isnan(x[i]) ? "NaN" : "Inf", i / (size_t)cols, i % (size_t)cols,
              (double)wmax, layer, wname);
  }
  if (a->gpu[group])
    e8q_gram_gpu_add(a->gpu[group], rows, x, a->xd);
  else
    gram_upper(rows, cols, x, a->xd, a->chunk[group], 1.0);
}

/* the same tap on a GPU block: x on the device goes straight into the device sum */
static void hessian_tap_dev(void *ctx, int group, int rows, int cols, const float *x_dev, void *stream) {
  e8q_hessian_acc *a = ctx;
  E8Q_CHECK(group >= 0 && group < E8Q_N_GROUPS && cols == a->n[group] && rows == a->T && a->gpu[group],
            "internal: device Hessian tap of group %d got [%d, %d], expected [%d, %d]", group, rows, cols, a->T,
            group >= 0 && group < E8Q_N_GROUPS ? a->n[group] : -1);
  e8q_gram_gpu_add_dev(a->gpu[group], rows, x_dev, stream);
}

int e8q_hessian_acc_use_device(e8q_hessian_acc *a, int cuda) {
  if (cuda < 0) return 0;
  E8Q_CHECK(E8Q_GRAM_GPU_ROWS <= E8Q_HESS_ROWS, "internal: GPU row blocks exceed the tap scratch");
  int on = 0, off = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const char *why = NULL;
    a->gpu[g] = e8q_gram_gpu_create(cuda, a->n[g], &why);
    if (!a->gpu[g] && !off++)
      e8q_warn("Hessian of %s [%d x %d] stays on the CPU: %s", e8q_group_names[g], a->n[g], a->n[g], why);
    on += a->gpu[g] != NULL;
  }
  return on;
}

void e8q_hessian_acc_seq(e8q_hessian_acc *a, const e8q_block *b, const e8q_config *cfg, float *x,
                         e8q_fwd_scratch *scratch) {
  /* every group's sum on the device: the block may run there too (worker/forward.c), its taps
   * feeding the device sums; else the host taps */
  int all_gpu = 1;
  for (int g = 0; g < E8Q_N_GROUPS; g++) all_gpu &= a->gpu[g] != NULL;
  const e8q_taps taps = {.fn = hessian_tap, .ctx = a, .dev_fn = all_gpu ? hessian_tap_dev : NULL};
  a->blk = b;
  a->cfg = cfg;
  e8q_block_forward(b, cfg, 1, a->T, x, &taps, scratch);
  a->blk = NULL;
  a->cfg = NULL;
  a->tokens += a->T;
  a->in_chunk++;
}

void e8q_hessian_acc_flush(e8q_hessian_acc *a) {
  if (a->in_chunk == 0) return;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    if (a->gpu[g]) {
      e8q_gram_gpu_take(a->gpu[g], a->chunk[g]); /* full and symmetric */
      /* the device taps do not look at each input: a non-finite one shows here, per chunk */
      for (int i = 0; i < a->n[g]; i++)
        E8Q_CHECK(isfinite(a->chunk[g][(size_t)i * a->n[g] + i]),
                  "the inputs of %s hold NaN or Inf (feature %d) while accumulating its Hessian on the GPU: the "
                  "activations overflow float32; the checkpoint is corrupt or holds values e8q cannot run in float32",
                  e8q_group_names[g], i);
    } else
      mirror(a->n[g], a->chunk[g]);
    e8q_xsum_add(&a->sum[g], a->chunk[g]);
    memset(a->chunk[g], 0, sizeof(double) * (size_t)a->n[g] * a->n[g]);
  }
  a->in_chunk = 0;
}

void e8q_hessian_acc_reduce(e8q_hessian_acc *a, double *const H[E8Q_N_GROUPS], long *tokens) {
  e8q_hessian_acc_flush(a);
  /* the chunk sums and the tap scratch are not needed any more: release them before H is
   * filled, so the peak is 24 bytes per entry (exact sums + H), as shard/plan.c counts */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    free(a->chunk[g]);
    a->chunk[g] = NULL;
    e8q_gram_gpu_free(a->gpu[g]);
    a->gpu[g] = NULL;
  }
  free(a->xd);
  a->xd = NULL;
  e8q_comm *c = e8q_comm_get();
  for (int g = 0; g < E8Q_N_GROUPS; g++) e8q_comm_allreduce_sum_ordered(c, &a->sum[g], H[g]);
  int64_t t = a->tokens;
  e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_I64, &t, 1);
  *tokens = (long)t;
}
