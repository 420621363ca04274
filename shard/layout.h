/* shard/layout.h: the one place that spells what a quantized model is made of on disk (DESIGN §4):
 * the tensor names of the artifact's model.safetensors, the tensors of a quantized group with
 * their dtypes and shapes, the rows of the fused pieces, and the names of the per-block files of
 * the run directory.
 *
 * A quantized group G of layer b ("self_attn.qkv_proj", ... e8q_group_names) is stored as the
 * fields below, under three spellings of the same name:
 *   artifact   model.layers.{b}.{G}.{field}    (model.safetensors)
 *   shard      {G}.{field}                     (shards/{b}.e8qs: the block's four groups)
 *   part       {field}                         (shards/{b}.{g}.part: one group)
 * fields (m rows, n columns, n_pad = n rounded up to a multiple of 8):
 *   codes        U16 [m, n_pad/8]      E8P codes of the rotated weight
 *   codes2       [m, n_pad/8]          second stage: U16 (4 bit), U8 (3 bit), absent (2 bit)
 *   SU           F32 [n_pad]           input-side signs (scales after fine-tuning)
 *   SV           F32 [m]               output-side signs (scales after fine-tuning)
 *   Wscale       F32 [1]               the weight scale
 *   fuse_scales  F32 [pieces]          RMS of each fused piece before stacking
 *   weight       F32 [m, n]            dense ablations (noe8, rtn) only: the quantized weight
 * A shard also holds a block's tuned norms ("input_layernorm.weight", "post_attention_layernorm.
 * weight" F32 [dim]) when block fine-tuning ran; the artifact holds them (and every other
 * unquantized tensor) under their Hugging Face names, and the Hadamard factors as hadamard.K{K}.
 *
 * Run directory (DESIGN §4), per block b and group g:
 *   shards/{b}.e8qs       the committed block (kind "shard")
 *   shards/{b}.{g}.part   one quantized group before the block commit (kind "part")
 *   shards/{b}.ft{g}.ckpt the state of block fine-tuning round g (kind "ft")
 */
#ifndef E8Q_SHARD_LAYOUT_H
#define E8Q_SHARD_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "io/config.h"
#include "io/safetensors.h"
#include "kernels/e8p.h"
#include "shard/plan.h"

/* ---------------------------------------------------------------- a quantized group's fields
 * In this order the artifact lists them (within each dtype pass, gather). */
typedef enum {
  E8Q_FIELD_SU = 0,
  E8Q_FIELD_SV,
  E8Q_FIELD_WSCALE,
  E8Q_FIELD_FUSE_SCALES,
  E8Q_FIELD_WEIGHT,
  E8Q_FIELD_CODES,
  E8Q_FIELD_CODES2,
  E8Q_N_FIELDS
} e8q_field;
extern const char *const e8q_field_names[E8Q_N_FIELDS]; /* "SU", "SV", "Wscale", "fuse_scales", "weight", "codes", "codes2" */

/* the most fields a group stores */
#define E8Q_LAYOUT_MAX_FIELDS 6

typedef struct {
  e8q_field f;
  e8q_dtype dt;
  int ndim;
  int64_t shape[2]; /* shape[1] = 0 when ndim == 1 */
} e8q_field_desc;

/* The fields group gp stores, in the order a part and a shard write them: dense ablations weight,
 * fuse_scales; otherwise codes, codes2 (when codebook cb has a second stage), SU, SV, Wscale,
 * fuse_scales. Returns the count (<= E8Q_LAYOUT_MAX_FIELDS). */
int e8q_layout_group_fields(const e8q_group_plan *gp, int dense, e8q_codebook_id cb,
                            e8q_field_desc out[E8Q_LAYOUT_MAX_FIELDS]);
static inline int64_t e8q_field_numel(const e8q_field_desc *d) {
  return d->shape[0] * (d->ndim > 1 ? d->shape[1] : 1);
}
/* codebook cb's codes2: its dtype and element bytes (e8q_cb_traits; bytes 0, dtype U8 when the
 * codebook has no second stage) */
e8q_dtype e8q_layout_codes2_dtype(e8q_codebook_id cb, size_t *bytes);

/* ---------------------------------------------------------------- tensor names */
#define E8Q_LAYOUT_LAYER_PREFIX "model.layers."
#define E8Q_LAYOUT_EMBED "model.embed_tokens.weight"
#define E8Q_LAYOUT_FINAL_NORM "model.norm.weight"
#define E8Q_LAYOUT_LM_HEAD "lm_head.weight"
/* a block's norms, E8Q_NORM_ATTN and E8Q_NORM_FFN: "input_layernorm.weight",
 * "post_attention_layernorm.weight" (the shard's name; the artifact's under the layer prefix) */
enum { E8Q_NORM_ATTN = 0, E8Q_NORM_FFN = 1 };
extern const char *const e8q_layout_norm_names[2];
/* group argument of e8q_layout_group_name for a part file: the bare field name */
#define E8Q_LAYOUT_PART (-1)

/* "model.layers.{b}.{what}" */
void e8q_layout_layer_tensor(char *out, size_t cap, int b, const char *what);
/* "model.layers.{b}.{G}.{field}" (the artifact) */
void e8q_layout_group_tensor(char *out, size_t cap, int b, int g, e8q_field f);
/* "{G}.{field}" in a shard, "{field}" for g = E8Q_LAYOUT_PART */
void e8q_layout_group_name(char *out, size_t cap, int g, e8q_field f);
/* "hadamard.K{K}" */
void e8q_layout_hadamard_tensor(char *out, size_t cap, int K);
/* the layer of an artifact tensor name "model.layers.{b}.{rest}" and *rest (may be NULL), or -1 */
int e8q_layout_layer_of(const char *name, const char **rest);

/* Owned copies (aligned) of group g's codes [m, n_pad/8] (u16) and codes2 (NULL when cb has
 * none) from an open part (g = E8Q_LAYOUT_PART) or shard; n_codes = m * n_pad/8. */
void e8q_layout_codes_read(const e8q_safetensors *st, int g, e8q_codebook_id cb, int64_t n_codes, uint16_t **codes,
                           void **codes2);

/* ---------------------------------------------------------------- fused pieces
 * Group g of cfg: rows (and HF names, may be NULL) of each piece, stacked in order (qkv: q, k, v;
 * upgate: up, gate; o and down: one piece of m rows). Returns the count. */
int e8q_layout_pieces(const e8q_config *cfg, int g, int rows[E8Q_PLAN_MAX_PIECES],
                      const char *names[E8Q_PLAN_MAX_PIECES]);

/* ---------------------------------------------------------------- run directory files */
void e8q_layout_shard_rel(char *out, size_t cap, int b);       /* shards/{b}.e8qs */
void e8q_layout_part_rel(char *out, size_t cap, int b, int g);  /* shards/{b}.{g}.part */
void e8q_layout_ft_rel(char *out, size_t cap, int b, int g);    /* shards/{b}.ft{g}.ckpt */

#endif
