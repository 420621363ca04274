/* coordinator/qmodel.c: loading a quantized model (coordinator/qmodel.h). */
#include "coordinator/qmodel.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stdint.h>

#include "common/error.h"
#include "common/log.h"
#include "io/config.h"
#include "io/text.h"
#include "kernels/e8p.h"
#include "kernels/qlinear_gpu.h"
#include "shard/layout.h"

static void *own(e8q_qmodel *q, size_t bytes) {
  q->owned = realloc(q->owned, sizeof(void *) * (size_t)(q->n_owned + 1));
  E8Q_CHECK(q->owned, "out of memory");
  void *p = e8q_alloc_aligned(bytes ? bytes : 64, "quantized model tensor");
  q->owned[q->n_owned++] = p;
  return p;
}

/* tensor `name` with dtype dt and numel elements, read-only: in place in the mapping when it is
 * aligned for its type (the artifact orders tensors F32, U16, U8 for that), else an aligned copy */
static const void *tensor_ptr(e8q_qmodel *q, const char *name, e8q_dtype dt, int64_t numel) {
  const e8q_st_tensor *t = e8q_st_find(q->st, name);
  E8Q_CHECK(t, "%s/model.safetensors: tensor %s is missing; the artifact is incomplete", q->dir, name);
  E8Q_CHECK(t->dtype == dt && e8q_st_numel(t) == numel,
            "%s/model.safetensors: tensor %s is %s with %lld elements, expected %s with %lld", q->dir, name,
            e8q_dtype_name(t->dtype), (long long)e8q_st_numel(t), e8q_dtype_name(dt), (long long)numel);
  const void *src = e8q_st_data(q->st, t);
  if ((uintptr_t)src % e8q_dtype_size(dt) == 0) return src;
  size_t bytes = (size_t)numel * e8q_dtype_size(dt);
  void *p = own(q, bytes);
  memcpy(p, src, bytes);
  return p;
}

static int had_K(const cJSON *had, int dim, const char *path) {
  char key[32];
  snprintf(key, sizeof key, "%d", dim);
  const cJSON *k = cJSON_GetObjectItemCaseSensitive(had, key);
  E8Q_CHECK(cJSON_IsNumber(k) && k->valueint >= 1,
            "%s: quantization_config.hadamard has no factor for dimension %d; the artifact is incomplete", path, dim);
  return k->valueint;
}

void e8q_qmodel_open(e8q_qmodel *q, const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  char *txt = e8q_file_read(path, NULL, "quantized model config");
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  e8q_qmodel_open_st(q, dir, txt, e8q_st_open(path));
  free(txt);
}

void e8q_qmodel_open_st(e8q_qmodel *q, const char *dir, const char *config_text, e8q_safetensors *st) {
  e8q_qmodel_open_st_range(q, dir, config_text, st, 0, -1);
}

void e8q_qmodel_open_st_range(e8q_qmodel *q, const char *dir, const char *config_text, e8q_safetensors *st, int lo,
                              int hi) {
  memset(q, 0, sizeof *q);
  q->dir = strdup(dir);
  q->st = st;
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  cJSON *cj = cJSON_Parse(config_text);
  E8Q_CHECK(cj, "%s is not valid JSON", path);
  /* the architecture: the config without its quantization_config, through the config checks
   * (which refuse quantized configs as sources to quantize) */
  {
    cJSON *plain = cJSON_Duplicate(cj, 1);
    E8Q_CHECK(plain, "%s: out of memory copying the config", path);
    cJSON_DeleteItemFromObjectCaseSensitive(plain, "quantization_config");
    e8q_config_from_json(plain, path, &q->cfg);
    cJSON_Delete(plain);
  }
  const cJSON *qc = cJSON_GetObjectItemCaseSensitive(cj, "quantization_config");
  const cJSON *meth = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
  E8Q_CHECK(cJSON_IsString(meth) && !strcmp(meth->valuestring, "e8q"),
            "%s: no \"quantization_config\" with quant_method \"e8q\": not an e8q-quantized model", path);
  const cJSON *bits = cJSON_GetObjectItemCaseSensitive(qc, "bits");
  E8Q_CHECK(cJSON_IsNumber(bits) && bits->valueint >= 2 && bits->valueint <= 4, "%s: quantization_config.bits must be 2, 3 or 4",
            path);
  q->bits = bits->valueint;
  q->cb = e8q_cb_from_bits(q->bits);
  const cJSON *had = cJSON_GetObjectItemCaseSensitive(qc, "hadamard");
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(qc, "resid_scale");
  snprintf(path, sizeof path, "%s", q->st->path);
  int L = q->cfg.n_layers;
  if (hi < 0) hi = L;
  E8Q_CHECK(0 <= lo && lo <= hi && hi <= L, "%s: layer range [%d, %d) outside the model's %d layers", path, lo, hi, L);
  q->lo = lo;
  q->hi = hi;
  char name[256];
  q->dense = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(qc, "dense_ablation"));
  if (q->dense) {
    q->W = e8q_calloc((size_t)L * E8Q_N_GROUPS, sizeof *q->W, "dense ablation weights");
    for (int b = lo; b < hi; b++)
      for (int g = 0; g < E8Q_N_GROUPS; g++) {
        int m, n;
        e8q_group_shape(&q->cfg, g, &m, &n);
        e8q_layout_group_tensor(name, sizeof name, b, g, E8Q_FIELD_WEIGHT);
        q->W[b * E8Q_N_GROUPS + g] = tensor_ptr(q, name, E8Q_DT_F32, (int64_t)m * n);
      }
    cJSON_Delete(cj);
    return;
  }
  q->lin = e8q_calloc((size_t)L * E8Q_N_GROUPS, sizeof *q->lin, "quantized linears");
  for (int b = lo; b < hi; b++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      e8q_qlinear_desc d;
      memset(&d, 0, sizeof d);
      e8q_group_shape(&q->cfg, g, &d.m, &d.n);
      d.n_pad = (int)e8q_pad8(d.n);
      d.codebook = q->cb;
      int64_t nc = d.n_pad / 8;
      const char *G = e8q_group_names[g];
#define TN(field) (e8q_layout_group_tensor(name, sizeof name, b, g, (field)), name)
      d.codes = tensor_ptr(q, TN(E8Q_FIELD_CODES), E8Q_DT_U16, d.m * nc);
      size_t c2_bytes;
      const e8q_dtype c2_dt = e8q_layout_codes2_dtype(q->cb, &c2_bytes);
      if (c2_bytes) d.codes2 = tensor_ptr(q, TN(E8Q_FIELD_CODES2), c2_dt, d.m * nc);
      d.resid_scale = cJSON_IsNumber(rs) ? (float)rs->valuedouble : 0;
      d.SU = tensor_ptr(q, TN(E8Q_FIELD_SU), E8Q_DT_F32, d.n_pad);
      d.SV = tensor_ptr(q, TN(E8Q_FIELD_SV), E8Q_DT_F32, d.m);
      d.Wscale = *(const float *)tensor_ptr(q, TN(E8Q_FIELD_WSCALE), E8Q_DT_F32, 1);
      const e8q_st_tensor *fs = e8q_st_find(q->st, TN(E8Q_FIELD_FUSE_SCALES));
      E8Q_CHECK(fs, "%s: tensor %s is missing", path, name);
      d.n_pieces = (int)e8q_st_numel(fs);
      d.fuse_scales = tensor_ptr(q, name, E8Q_DT_F32, d.n_pieces);
#undef TN
      /* the layout's pieces, or one scale for the whole group */
      int *rows = own(q, sizeof(int) * E8Q_PLAN_MAX_PIECES);
      const int np = e8q_layout_pieces(&q->cfg, g, rows, NULL);
      E8Q_CHECK(d.n_pieces == np || d.n_pieces == 1, "%s: layer %d %s has %d fuse scales", path, b, G, d.n_pieces);
      if (d.n_pieces == 1) rows[0] = d.m;
      d.piece_rows = d.n_pieces > 1 ? rows : NULL;
      d.K_in = had_K(had, d.n_pad, path);
      d.K_out = had_K(had, d.m, path);
      if (d.K_in > 1) {
        e8q_layout_hadamard_tensor(name, sizeof name, d.K_in);
        d.R_in = tensor_ptr(q, name, E8Q_DT_F32, (int64_t)d.K_in * d.K_in);
      }
      if (d.K_out > 1) {
        e8q_layout_hadamard_tensor(name, sizeof name, d.K_out);
        d.R_out = tensor_ptr(q, name, E8Q_DT_F32, (int64_t)d.K_out * d.K_out);
      }
      e8q_layout_layer_tensor(name, sizeof name, b, G);
      e8q_qlinear_init(&q->lin[b * E8Q_N_GROUPS + g], &d, name);
      q->lin[b * E8Q_N_GROUPS + g].gemm_min = E8Q_QLINEAR_GEMM_MIN; /* inference: batches through BLAS */
    }
  cJSON_Delete(cj);
}

int e8q_qmodel_upload(e8q_qmodel *q, e8q_model *m, int cuda) {
  if (cuda < 0 || q->dense) return 0;
  const int nl = q->cfg.n_layers;
  if (!q->gpu) q->gpu = e8q_calloc((size_t)nl * E8Q_N_GROUPS, sizeof *q->gpu, "GPU linears");
  int n = 0, refused = 0;
  for (int l = q->lo; l < q->hi; l++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      e8q_linear *L = &m->blocks[l].lin[g];
      E8Q_CHECK(L->q == (const struct e8q_qlinear *)e8q_qmodel_linear(q, l, g),
                "%s: e8q_qmodel_upload needs the fused model of the same artifact", q->dir);
      const char *why = NULL;
      e8q_qlinear_gpu *G = q->gpu[l * E8Q_N_GROUPS + g];
      if (!G) G = q->gpu[l * E8Q_N_GROUPS + g] = e8q_qlinear_gpu_create(e8q_qmodel_linear(q, l, g), cuda, &why);
      if (!G && !refused++)
        e8q_warn("%s: layer %d %s [%d x %d] stays on the CPU: %s", q->dir, l, e8q_group_names[g], L->m, L->n, why);
      L->gpu = G;
      n += G != NULL;
    }
  return n;
}

void e8q_qmodel_close(e8q_qmodel *q) {
  if (q->gpu)
    for (int i = 0; i < q->cfg.n_layers * E8Q_N_GROUPS; i++) e8q_qlinear_gpu_free(q->gpu[i]);
  free(q->gpu);
  if (q->lin)
    for (int i = 0; i < q->cfg.n_layers * E8Q_N_GROUPS; i++) e8q_qlinear_free(&q->lin[i]);
  free(q->lin);
  free((void *)q->W);
  for (int i = 0; i < q->n_owned; i++) free(q->owned[i]);
  free(q->owned);
  if (q->st) e8q_st_close(q->st);
  free(q->dir);
  memset(q, 0, sizeof *q);
}

/* the head stored at 8 bits (an I8 tensor and its scales, common/f16.h) as the kernel's matrix,
 * read in place from the mapping (the scales are 4-byte aligned there: F32 tensors, after an I8
 * one of a multiple of 32 bytes), copied where they are not */
static e8q_q8_matrix *q8_from_st(const e8q_qmodel *q, const e8q_st_tensor *t, int64_t V, int64_t D) {
  char sname[256];
  snprintf(sname, sizeof sname, "%s%s", t->name, E8Q_Q8_SCALES_SUFFIX);
  const e8q_st_tensor *s = e8q_st_find(q->st, sname);
  E8Q_CHECK(e8q_st_numel(t) == V * D && D % E8Q_Q8_BLOCK == 0 && s && s->dtype == E8Q_DT_F32 &&
                e8q_st_numel(s) * E8Q_Q8_BLOCK == V * D,
            "%s: the 8-bit head %s [%lld x %lld] lacks its F32 scales %s (one per %d weights)", q->dir, t->name,
            (long long)V, (long long)D, sname, E8Q_Q8_BLOCK);
  e8q_q8_matrix *M = e8q_calloc(1, sizeof *M, "8-bit head");
  M->m = (int)V;
  M->n = (int)D;
  M->q = e8q_st_data(q->st, t);
  const float *sc = e8q_st_data(q->st, s);
  if (((uintptr_t)sc & 3) == 0) {
    M->scale = sc;
    M->borrowed = 1;
  } else { /* both copied, so that one free releases the pair */
    const size_t ns = (size_t)(V * D / E8Q_Q8_BLOCK);
    int8_t *qc = e8q_alloc_aligned((size_t)(V * D), "8-bit head");
    float *scc = e8q_alloc_aligned(sizeof(float) * ns, "8-bit head scales");
    memcpy(qc, M->q, (size_t)(V * D));
    memcpy(scc, sc, sizeof(float) * ns);
    M->q = qc;
    M->scale = scc;
  }
  return M;
}

e8q_model *e8q_qmodel_head(const e8q_qmodel *q) {
  e8q_model *m = e8q_calloc(1, sizeof *m, "model");
  m->cfg = q->cfg;
  m->path = strdup(q->dir);
  int64_t D = q->cfg.dim, V = q->cfg.vocab_size;
  /* the head as stored, when float16 or bfloat16 and 2-byte aligned in the mapping: one-token
   * steps read it in place (e8q_matvec_f16 / _bf16), half the bytes of the float32 copy below */
  const e8q_st_tensor *ht = e8q_st_find(q->st, q->cfg.tied ? E8Q_LAYOUT_EMBED : E8Q_LAYOUT_LM_HEAD);
  if (ht && e8q_st_numel(ht) == V * D && ((uintptr_t)e8q_st_data(q->st, ht) & 1) == 0) {
    if (ht->dtype == E8Q_DT_F16) m->lm_head_f16 = e8q_st_data(q->st, ht);
    if (ht->dtype == E8Q_DT_BF16) m->lm_head_bf16 = e8q_st_data(q->st, ht); /* a bf16 source's */
  }
  if (ht && ht->dtype == E8Q_DT_I8) /* quantize --head q8: the stored 8-bit form, in place */
    m->lm_head_q8 = q8_from_st(q, ht, V, D);
  int64_t s_embed[2] = {V, D};
  m->embed = e8q_malloc(sizeof(float) * (size_t)(V * D), "embed_tokens");
  e8q_st_read_f32(q->st, E8Q_LAYOUT_EMBED, 2, s_embed, m->embed);
  m->final_norm = e8q_malloc(sizeof(float) * (size_t)D, "model.norm");
  e8q_st_read_f32(q->st, E8Q_LAYOUT_FINAL_NORM, 1, &D, m->final_norm);
  if (q->cfg.tied) {
    m->lm_head = m->embed;
  } else {
    m->lm_head = e8q_malloc(sizeof(float) * (size_t)(V * D), "lm_head");
    e8q_st_read_f32(q->st, E8Q_LAYOUT_LM_HEAD, 2, s_embed, m->lm_head);
  }
  return m;
}

/* The head model plus every block's norms, with the four linears of each block set by
 * set_linear(q, b, g, L) (dense weights or a pointer to the quantized form). */
static e8q_model *model_with_blocks(const e8q_qmodel *q, void (*set_linear)(const e8q_qmodel *, int, int, e8q_linear *),
                                     int with_head) {
  e8q_model *m;
  if (with_head) {
    m = e8q_qmodel_head(q);
  } else {
    m = e8q_calloc(1, sizeof *m, "model");
    m->cfg = q->cfg;
    m->path = strdup(q->dir);
  }
  const e8q_config *c = &m->cfg;
  m->blocks = e8q_calloc((size_t)c->n_layers, sizeof(e8q_block), "blocks");
  int64_t D = c->dim;
  char name[256];
  for (int b = q->lo; b < q->hi; b++) {
    e8q_block *blk = &m->blocks[b];
    blk->attn_norm = e8q_malloc(sizeof(float) * (size_t)D, "attn_norm");
    blk->ffn_norm = e8q_malloc(sizeof(float) * (size_t)D, "ffn_norm");
    e8q_layout_layer_tensor(name, sizeof name, b, e8q_layout_norm_names[E8Q_NORM_ATTN]);
    e8q_st_read_f32(q->st, name, 1, &D, blk->attn_norm);
    e8q_layout_layer_tensor(name, sizeof name, b, e8q_layout_norm_names[E8Q_NORM_FFN]);
    e8q_st_read_f32(q->st, name, 1, &D, blk->ffn_norm);
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      e8q_group_shape(c, g, &blk->lin[g].m, &blk->lin[g].n);
      set_linear(q, b, g, &blk->lin[g]);
    }
  }
  return m;
}

/* dense: the ablation's weights, or the float64 decode of the codes rounded to float */
static void set_dense(const e8q_qmodel *q, int b, int g, e8q_linear *L) {
  L->w = e8q_malloc(sizeof(float) * (size_t)L->m * L->n, e8q_group_names[g]);
  L->q = NULL;
  if (q->dense) {
    memcpy(L->w, q->W[b * E8Q_N_GROUPS + g], sizeof(float) * (size_t)L->m * L->n);
    return;
  }
  double *W = e8q_malloc(sizeof(double) * (size_t)L->m * L->n, "decoded weight");
  e8q_qlinear_dequant(e8q_qmodel_linear(q, b, g), W);
  for (size_t i = 0; i < (size_t)L->m * L->n; i++) L->w[i] = (float)W[i];
  free(W);
}

/* fused: the linear points at q's e8q_qlinear */
static void set_fused(const e8q_qmodel *q, int b, int g, e8q_linear *L) {
  const e8q_qlinear *ql = e8q_qmodel_linear(q, b, g);
  E8Q_CHECK(ql->d.m == L->m && ql->d.n == L->n, "%s: layer %d %s is %dx%d in the codes, %dx%d in the config", q->dir,
            b, e8q_group_names[g], ql->d.m, ql->d.n, L->m, L->n);
  L->w = NULL;
  L->q = (const struct e8q_qlinear *)ql;
}

e8q_model *e8q_qmodel_dense(const e8q_qmodel *q) { return model_with_blocks(q, set_dense, 1); }

/* The model whose quantized linears run through the fused decode kernels (no dense matrix;
 * q must outlive the model). Not for dense ablations (they have no codes). */
e8q_model *e8q_qmodel_fused(const e8q_qmodel *q) {
  E8Q_CHECK(!q->dense, "%s: a dense ablation has no codes for the fused kernels; use its dense model", q->dir);
  return model_with_blocks(q, set_fused, 1);
}

e8q_model *e8q_qmodel_blocks(const e8q_qmodel *q, int fused) {
  return model_with_blocks(q, fused && !q->dense ? set_fused : set_dense, 0);
}
