/* shard/model.h: the in-memory fp32 Llama model, in the artifact's fused-group layout.
 *
 * Each decoder block holds two RMSNorm weights and four linears (DESIGN §4):
 *   qkv    [(n_heads + 2*n_kv_heads)*hd, dim]  rows q, then k, then v (q_proj, k_proj, v_proj)
 *   o      [dim, n_heads*hd]                   o_proj
 *   upgate [2*hidden, dim]                     rows up, then gate (up_proj, gate_proj)
 *   down   [dim, hidden]                       down_proj
 * Weights of a linear W of shape [m, n] map inputs x [n] to outputs W x [m]; every product
 * goes through e8q_linear_forward (worker/linear.h) so quantized linears plug in there.
 *
 * Sources: a Hugging Face directory (config.json + model.safetensors[.index.json], f32/f16/
 * bf16) or a llama2.c .bin (io/llama2c.h). Every expected tensor must be present with its
 * shape and finite values; errors name the file and tensor.
 */
#ifndef E8Q_SHARD_MODEL_H
#define E8Q_SHARD_MODEL_H

#include <stdint.h>

#include "io/config.h"
#include "io/safetensors.h"
#include "kernels/matvec_q8.h"

/* A quantized linear (codes, SU/SV, Hadamard factors): defined by the fused kernels
 * (kernels/qlinear.h), whose typedef must carry this tag: typedef struct e8q_qlinear {...}. */
struct e8q_qlinear;
struct e8q_qlinear_gpu; /* its copy on a CUDA device (kernels/qlinear_gpu.h) */
struct e8q_tf_gpu;      /* a decoder block's device workspace (kernels/transformer_gpu.h) */

/* A linear layer y = W x, W [m, n].
 * w is the dense row-major weight (owned by whoever filled it, see e8q_block_free); it is
 * NULL when the linear is quantized, and then q points at the quantized form that
 * e8q_linear_forward decodes on the fly (the one place to wire e8q_qlinear_forward in; until
 * then q is unused and a linear with q set is refused there with a message). */
typedef struct e8q_linear {
  int m, n;                      /* out features, in features */
  float *w;                      /* [m, n] row-major, NULL when quantized */
  const struct e8q_qlinear *q;   /* quantized form; not owned */
  struct e8q_qlinear_gpu *gpu;   /* q uploaded to this rank's CUDA device (--device cuda), used by
                                    e8q_linear_forward; not owned; NULL: the CPU kernels */
  const uint16_t *w_bf16;        /* [m, n] row-major bfloat16 bits, the dense weight read in place when w
                                    is NULL (worker/linear.h); not owned; NULL: none */
} e8q_linear;

/* linear groups of a block, in quantization order (the Hessian taps use the same ids) */
enum { E8Q_GROUP_QKV = 0, E8Q_GROUP_O = 1, E8Q_GROUP_UPGATE = 2, E8Q_GROUP_DOWN = 3, E8Q_N_GROUPS = 4 };
extern const char *const e8q_group_names[E8Q_N_GROUPS]; /* "self_attn.qkv_proj", ... (DESIGN §4) */

typedef struct {
  float *attn_norm;              /* [dim] input_layernorm */
  float *ffn_norm;               /* [dim] post_attention_layernorm */
  union {                        /* the four linears, by name or by E8Q_GROUP_* index */
    e8q_linear lin[E8Q_N_GROUPS];
    struct { e8q_linear qkv, o, upgate, down; };
  };
  int layer1;                    /* 1 + the layer index (e8q_block_load), for messages; 0 unknown */
} e8q_block;

typedef struct {
  e8q_config cfg;
  float *embed;                  /* [vocab, dim] */
  float *final_norm;             /* [dim] */
  float *lm_head;                /* [vocab, dim]; == embed when cfg.tied */
  const uint16_t *lm_head_f16;   /* [vocab, dim] the head as float16 bits where the source stores it so
                                    (an artifact's tied embedding), read in place by one-token steps
                                    (e8q_model_head: half the bytes); not owned; NULL: lm_head */
  const uint16_t *lm_head_bf16;  /* the same for a head stored as bfloat16 (e8q_matvec_bf16); not owned */
  e8q_q8_matrix *lm_head_q8;     /* the head at 8 bits (e8q_model_head_to_q8, or stored), read by one-token steps
                                    in place of lm_head_f16 / _bf16 / lm_head; owned; NULL: none */
  e8q_block *blocks;             /* [n_layers], NULL when loaded without blocks */
  char *path;                    /* owned copy of the source path */
  struct e8q_tf_gpu *gpu;        /* the device workspace of its forwards (--device cuda; worker/forward.c):
                                    activations, cached dense weights and head; created on first use,
                                    owned; NULL: none */
} e8q_model;

/* shape of group g of a block: rows m, columns n */
void e8q_group_shape(const e8q_config *cfg, int group, int *m, int *n);

/* ---------------------------------------------------------------- whole model
 * path: a HF model directory or a llama2.c .bin file. with_blocks = 0 loads only embed,
 * final_norm and lm_head (workers then load blocks one at a time with e8q_block_load). */
e8q_model *e8q_model_load(const char *path);
e8q_model *e8q_model_load_ex(const char *path, int with_blocks);
void e8q_model_free(e8q_model *m);
/* --head q8: the head and the embedding rounded to 8 bits with a scale per 32 weights
 * (kernels/matvec_q8.h), as `quantize --head q8` stores them. One-token steps read the head's
 * 8-bit form; lm_head and embed (f32) are overwritten with their dequantized values, so batched
 * products (eval) use the same weights. lm_head_f16 and lm_head_bf16 are dropped. Idempotent (a
 * stored 8-bit head is left as it is). */
void e8q_model_head_to_q8(e8q_model *m);

/* ---------------------------------------------------------------- one block at a time
 * Reads block i of a HF model (its 9 tensors) into freshly allocated fp32 buffers. */
void e8q_block_load(const e8q_st_model *st, const e8q_config *cfg, int i, e8q_block *b);
/* frees the buffers e8q_block_load (or e8q_model_load) allocated; quantized forms are not owned */
void e8q_block_free(e8q_block *b);

/* the tokenizer of a model: io/tokenizer.h (e8q_tokenizer_find, e8q_tokenizer_check_vocab) */

#endif
