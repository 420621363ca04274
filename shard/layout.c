/* shard/layout.c: names, dtypes and shapes of a quantized model's tensors and of the run
 * directory's block files (shard/layout.h). */
#include "shard/layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "io/ckpt.h"

const char *const e8q_field_names[E8Q_N_FIELDS] = {"SU", "SV", "Wscale", "fuse_scales", "weight", "codes", "codes2"};
const char *const e8q_layout_norm_names[2] = {"input_layernorm.weight", "post_attention_layernorm.weight"};

/* ---------------------------------------------------------------- fields */
e8q_dtype e8q_layout_codes2_dtype(e8q_codebook_id cb, size_t *bytes) {
  const e8q_codebook_traits *t = e8q_cb_traits(cb);
  *bytes = (size_t)t->codes2_bytes;
  return t->codes2_dtype ? e8q_dtype_from_name(t->codes2_dtype) : E8Q_DT_U8;
}

static int field_add(e8q_field_desc *out, int k, e8q_field f, e8q_dtype dt, int64_t s0, int64_t s1) {
  out[k] = (e8q_field_desc){f, dt, s1 ? 2 : 1, {s0, s1}};
  return k + 1;
}

int e8q_layout_group_fields(const e8q_group_plan *gp, int dense, e8q_codebook_id cb,
                            e8q_field_desc out[E8Q_LAYOUT_MAX_FIELDS]) {
  int k = 0;
  const int64_t nc = gp->n_pad / 8;
  if (dense) { /* noe8 / rtn ablations: the quantized weight, dense */
    k = field_add(out, k, E8Q_FIELD_WEIGHT, E8Q_DT_F32, gp->m, gp->n);
    return field_add(out, k, E8Q_FIELD_FUSE_SCALES, E8Q_DT_F32, gp->n_pieces, 0);
  }
  k = field_add(out, k, E8Q_FIELD_CODES, E8Q_DT_U16, gp->m, nc);
  size_t c2_bytes;
  const e8q_dtype c2_dt = e8q_layout_codes2_dtype(cb, &c2_bytes);
  if (c2_bytes) k = field_add(out, k, E8Q_FIELD_CODES2, c2_dt, gp->m, nc);
  k = field_add(out, k, E8Q_FIELD_SU, E8Q_DT_F32, gp->n_pad, 0);
  k = field_add(out, k, E8Q_FIELD_SV, E8Q_DT_F32, gp->m, 0);
  k = field_add(out, k, E8Q_FIELD_WSCALE, E8Q_DT_F32, 1, 0);
  return field_add(out, k, E8Q_FIELD_FUSE_SCALES, E8Q_DT_F32, gp->n_pieces, 0);
}

/* ---------------------------------------------------------------- names */
void e8q_layout_layer_tensor(char *out, size_t cap, int b, const char *what) {
  snprintf(out, cap, E8Q_LAYOUT_LAYER_PREFIX "%d.%s", b, what);
}

void e8q_layout_group_tensor(char *out, size_t cap, int b, int g, e8q_field f) {
  snprintf(out, cap, E8Q_LAYOUT_LAYER_PREFIX "%d.%s.%s", b, e8q_group_names[g], e8q_field_names[f]);
}

void e8q_layout_group_name(char *out, size_t cap, int g, e8q_field f) {
  if (g == E8Q_LAYOUT_PART) snprintf(out, cap, "%s", e8q_field_names[f]);
  else snprintf(out, cap, "%s.%s", e8q_group_names[g], e8q_field_names[f]);
}

void e8q_layout_hadamard_tensor(char *out, size_t cap, int K) { snprintf(out, cap, "hadamard.K%d", K); }

int e8q_layout_layer_of(const char *name, const char **rest) {
  const size_t k = strlen(E8Q_LAYOUT_LAYER_PREFIX);
  if (strncmp(name, E8Q_LAYOUT_LAYER_PREFIX, k) != 0) return -1;
  const char *s = name + k;
  int b = 0, digits = 0;
  for (; *s >= '0' && *s <= '9' && digits < 9; s++, digits++) b = b * 10 + (*s - '0');
  if (!digits || *s != '.') return -1;
  if (rest) *rest = s + 1;
  return b;
}

void e8q_layout_codes_read(const e8q_safetensors *st, int g, e8q_codebook_id cb, int64_t n_codes, uint16_t **codes,
                           void **codes2) {
  char name[160];
  e8q_layout_group_name(name, sizeof name, g, E8Q_FIELD_CODES);
  *codes = e8q_alloc_aligned(sizeof(uint16_t) * (size_t)n_codes, "codes");
  memcpy(*codes, e8q_ckpt_get(st, name, E8Q_DT_U16, n_codes), sizeof(uint16_t) * (size_t)n_codes);
  size_t es;
  const e8q_dtype dt = e8q_layout_codes2_dtype(cb, &es);
  *codes2 = NULL;
  if (!es) return;
  e8q_layout_group_name(name, sizeof name, g, E8Q_FIELD_CODES2);
  *codes2 = e8q_alloc_aligned(es * (size_t)n_codes, "codes2");
  memcpy(*codes2, e8q_ckpt_get(st, name, dt, n_codes), es * (size_t)n_codes);
}

/* ---------------------------------------------------------------- fused pieces */
int e8q_layout_pieces(const e8q_config *cfg, int g, int rows[E8Q_PLAN_MAX_PIECES],
                      const char *names[E8Q_PLAN_MAX_PIECES]) {
  static const char *const qkv[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
  static const char *const upgate[2] = {"mlp.up_proj", "mlp.gate_proj"};
  const int hd = cfg->head_dim;
  int m, n, k;
  e8q_group_shape(cfg, g, &m, &n);
  switch (g) {
  case E8Q_GROUP_QKV:
    rows[0] = cfg->n_heads * hd;
    rows[1] = rows[2] = cfg->n_kv_heads * hd;
    for (k = 0; k < 3 && names; k++) names[k] = qkv[k];
    return 3;
  case E8Q_GROUP_UPGATE:
    rows[0] = rows[1] = cfg->hidden_dim;
    for (k = 0; k < 2 && names; k++) names[k] = upgate[k];
    return 2;
  default:
    rows[0] = m;
    if (names) names[0] = g == E8Q_GROUP_O ? "self_attn.o_proj" : "mlp.down_proj";
    return 1;
  }
}

/* ---------------------------------------------------------------- run directory files */
void e8q_layout_shard_rel(char *out, size_t cap, int b) { snprintf(out, cap, "shards/%d.e8qs", b); }

void e8q_layout_part_rel(char *out, size_t cap, int b, int g) { snprintf(out, cap, "shards/%d.%d.part", b, g); }

void e8q_layout_ft_rel(char *out, size_t cap, int b, int g) { snprintf(out, cap, "shards/%d.ft%d.ckpt", b, g); }
