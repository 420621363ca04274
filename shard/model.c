/* shard/model.c: loading the fp32 model from a HF directory or a llama2.c .bin. */
#include "shard/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "io/gguf.h"
#include "io/llama2c.h"
#include "kernels/transformer_gpu.h"
#include "shard/layout.h"

const char *const e8q_group_names[E8Q_N_GROUPS] = {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.upgate_proj",
                                                   "mlp.down_proj"};

void e8q_group_shape(const e8q_config *cfg, int group, int *m, int *n) {
  int hd = cfg->head_dim, q = cfg->n_heads * hd, kv = cfg->n_kv_heads * hd;
  switch (group) {
  case E8Q_GROUP_QKV: *m = q + 2 * kv; *n = cfg->dim; break;
  case E8Q_GROUP_O: *m = cfg->dim; *n = q; break;
  case E8Q_GROUP_UPGATE: *m = 2 * cfg->hidden_dim; *n = cfg->dim; break;
  case E8Q_GROUP_DOWN: *m = cfg->dim; *n = cfg->hidden_dim; break;
  default: E8Q_FATAL("unknown linear group %d", group);
  }
}

/* ---------------------------------------------------------------- blocks */

static void block_alloc(const e8q_config *cfg, e8q_block *b) {
  memset(b, 0, sizeof *b);
  b->attn_norm = e8q_malloc(sizeof(float) * cfg->dim, "attn_norm");
  b->ffn_norm = e8q_malloc(sizeof(float) * cfg->dim, "ffn_norm");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    e8q_linear *L = &b->lin[g];
    e8q_group_shape(cfg, g, &L->m, &L->n);
    L->w = e8q_malloc(sizeof(float) * (size_t)L->m * L->n, e8q_group_names[g]);
    L->q = NULL;
  }
}

void e8q_block_free(e8q_block *b) {
  if (!b) return;
  free(b->attn_norm);
  free(b->ffn_norm);
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(b->lin[g].w);
  memset(b, 0, sizeof *b);
}

/* reads HF tensor "model.layers.{i}.{suffix}" of shape [rows, cols] (cols 0: a vector) into dst */
static void read_layer(const e8q_st_model *st, int i, const char *suffix, int64_t rows, int64_t cols, float *dst) {
  char name[256];
  e8q_layout_layer_tensor(name, sizeof name, i, suffix);
  int64_t shape[2] = {rows, cols};
  e8q_st_model_read_f32(st, name, cols ? 2 : 1, shape, dst);
}

void e8q_block_load(const e8q_st_model *st, const e8q_config *cfg, int i, e8q_block *b) {
  E8Q_CHECK(i >= 0 && i < cfg->n_layers, "block %d outside the model's %d layers", i, cfg->n_layers);
  block_alloc(cfg, b);
  b->layer1 = i + 1;
  read_layer(st, i, e8q_layout_norm_names[E8Q_NORM_ATTN], cfg->dim, 0, b->attn_norm);
  read_layer(st, i, e8q_layout_norm_names[E8Q_NORM_FFN], cfg->dim, 0, b->ffn_norm);
  for (int g = 0; g < E8Q_N_GROUPS; g++) { /* the pieces of each group, stacked in order */
    int rows[E8Q_PLAN_MAX_PIECES];
    const char *names[E8Q_PLAN_MAX_PIECES];
    const int np = e8q_layout_pieces(cfg, g, rows, names), n = b->lin[g].n;
    int64_t row = 0;
    for (int k = 0; k < np; k++) {
      char suffix[96];
      snprintf(suffix, sizeof suffix, "%s.weight", names[k]);
      read_layer(st, i, suffix, rows[k], n, b->lin[g].w + row * n);
      row += rows[k];
    }
  }
}

/* ---------------------------------------------------------------- HF directory or GGUF file */

static void load_hf(e8q_model *m, const char *dir, int with_blocks) {
  e8q_config_load(dir, &m->cfg);
  const e8q_config *c = &m->cfg;
  e8q_st_model *st = e8q_st_model_open(dir);
  int64_t D = c->dim, V = c->vocab_size;
  int64_t s_embed[2] = {V, D}, s_norm[1] = {D};
  m->embed = e8q_malloc(sizeof(float) * (size_t)(V * D), "embed_tokens");
  e8q_st_model_read_f32(st, E8Q_LAYOUT_EMBED, 2, s_embed, m->embed);
  m->final_norm = e8q_malloc(sizeof(float) * (size_t)D, "model.norm");
  e8q_st_model_read_f32(st, E8Q_LAYOUT_FINAL_NORM, 1, s_norm, m->final_norm);
  if (c->tied) {
    m->lm_head = m->embed;
  } else {
    m->lm_head = e8q_malloc(sizeof(float) * (size_t)(V * D), "lm_head");
    e8q_st_model_read_f32(st, E8Q_LAYOUT_LM_HEAD, 2, s_embed, m->lm_head);
  }
  if (with_blocks) {
    m->blocks = e8q_calloc((size_t)c->n_layers, sizeof(e8q_block), "blocks");
    for (int i = 0; i < c->n_layers; i++) e8q_block_load(st, c, i, &m->blocks[i]);
  }
  e8q_st_model_close(st);
}

/* ---------------------------------------------------------------- llama2.c .bin */

static float *copy_floats(const float *src, size_t n, const char *what) {
  float *d = e8q_malloc(sizeof(float) * n, what);
  memcpy(d, src, sizeof(float) * n);
  return d;
}

static void load_llama2c(e8q_model *m, const char *path, int with_blocks) {
  e8q_llama2c ck;
  e8q_llama2c_load(path, &ck);
  m->cfg = ck.cfg;
  const e8q_config *c = &m->cfg;
  size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
  size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
  m->embed = copy_floats(ck.embed, V * D, "embed_tokens");
  m->final_norm = copy_floats(ck.rms_final, D, "model.norm");
  m->lm_head = c->tied ? m->embed : copy_floats(ck.wcls, V * D, "lm_head");
  if (with_blocks) {
    m->blocks = e8q_calloc((size_t)c->n_layers, sizeof(e8q_block), "blocks");
    for (int i = 0; i < c->n_layers; i++) {
      e8q_block *b = &m->blocks[i];
      block_alloc(c, b);
      memcpy(b->attn_norm, ck.rms_att + i * D, sizeof(float) * D);
      memcpy(b->ffn_norm, ck.rms_ffn + i * D, sizeof(float) * D);
      memcpy(b->qkv.w, ck.wq + i * q * D, sizeof(float) * q * D);
      memcpy(b->qkv.w + q * D, ck.wk + i * kv * D, sizeof(float) * kv * D);
      memcpy(b->qkv.w + (q + kv) * D, ck.wv + i * kv * D, sizeof(float) * kv * D);
      memcpy(b->o.w, ck.wo + i * D * q, sizeof(float) * D * q);
      memcpy(b->upgate.w, ck.w3 + i * H * D, sizeof(float) * H * D);     /* up = w3 */
      memcpy(b->upgate.w + H * D, ck.w1 + i * H * D, sizeof(float) * H * D); /* gate = w1 */
      memcpy(b->down.w, ck.w2 + i * D * H, sizeof(float) * D * H);       /* down = w2 */
    }
  }
  e8q_llama2c_free(&ck);
}

/* ---------------------------------------------------------------- public */

e8q_model *e8q_model_load_ex(const char *path, int with_blocks) {
  struct stat st;
  E8Q_CHECK_ERRNO(stat(path, &st) == 0, "cannot open model %s (expected a Hugging Face directory, a GGUF file or a llama2.c .bin)",
                  path);
  e8q_model *m = e8q_calloc(1, sizeof *m, "model");
  m->path = strdup(path);
  if (S_ISDIR(st.st_mode) || e8q_gguf_is_file(path)) /* io/safetensors.h reads both alike */
    load_hf(m, path, with_blocks);
  else
    load_llama2c(m, path, with_blocks);
  return m;
}

e8q_model *e8q_model_load(const char *path) { return e8q_model_load_ex(path, 1); }

void e8q_model_head_to_q8(e8q_model *m) {
  if (m->lm_head_q8) return;
  E8Q_CHECK(m->lm_head, "--head q8: model %s has no head loaded on this rank", m->path ? m->path : "(memory)");
  const int V = m->cfg.vocab_size, D = m->cfg.dim;
  char what[64];
  snprintf(what, sizeof what, "--head q8 (head [%d x %d])", V, D);
  m->lm_head_q8 = e8q_malloc(sizeof *m->lm_head_q8, "8-bit head");
  e8q_q8_round(V, D, m->lm_head, what, m->lm_head_q8);
  if (m->embed && m->embed != m->lm_head) { /* an untied embedding too, as quantize --head q8 stores it */
    snprintf(what, sizeof what, "--head q8 (embedding [%d x %d])", V, D);
    e8q_q8_round(V, D, m->embed, what, NULL);
  }
  m->lm_head_f16 = m->lm_head_bf16 = NULL;
}

void e8q_model_free(e8q_model *m) {
  if (!m) return;
  e8q_tf_gpu_free(m->gpu);
  if (m->blocks)
    for (int i = 0; i < m->cfg.n_layers; i++) e8q_block_free(&m->blocks[i]);
  free(m->blocks);
  if (m->lm_head_q8) e8q_q8_free(m->lm_head_q8);
  free(m->lm_head_q8);
  if (m->lm_head != m->embed) free(m->lm_head);
  free(m->embed);
  free(m->final_norm);
  free(m->path);
  free(m);
}

