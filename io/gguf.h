/* io/gguf.h: GGUF files (llama.cpp's model format, versions 2 and 3), memory-mapped, validated,
 * dequantized per tensor; and a view of a llama GGUF as a Hugging Face model.
 *
 * Format (all little-endian):
 *   u32 magic "GGUF" | u32 version (2, 3) | u64 n_tensors | u64 n_kv
 *   n_kv times:       string key | u32 value type | value
 *   n_tensors times:  string name | u32 n_dims (1..4) | u64 ne[n_dims] | u32 ggml type | u64 offset
 *   padding to `general.alignment` (default 32) | data section (tensor offsets are relative to it)
 * string = u64 length + bytes (no terminator); value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32,
 * 6 f32, 7 bool (one byte, 0 or 1), 8 string, 9 array (u32 element type, u64 count, elements;
 * arrays may nest), 10 u64, 11 i64, 12 f64.
 * A tensor's ne[0] is its contiguous (row) length: a Hugging Face weight [m, n] is stored with
 * ne = {n, m}. Rows are sequences of ggml blocks (io/ggml_quants.h).
 *
 * e8q_gguf_open validates everything before returning: magic and version, every count, string and
 * array length against the bytes left in the file, value types, duplicate keys and tensor names,
 * the alignment, dimensions (1..4, each >= 1, product without overflow), ggml types (unknown
 * numbers are refused naming the tensor), ne[0] a multiple of the type's block size, tensor offsets
 * aligned, inside the data section and not overlapping. Every failure is a fatal error naming the
 * file (and key or tensor) and saying what is wrong.
 */
#ifndef E8Q_IO_GGUF_H
#define E8Q_IO_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "io/ggml_quants.h"

/* GGUF metadata value types */
enum {
  E8Q_GGUF_U8 = 0,
  E8Q_GGUF_I8 = 1,
  E8Q_GGUF_U16 = 2,
  E8Q_GGUF_I16 = 3,
  E8Q_GGUF_U32 = 4,
  E8Q_GGUF_I32 = 5,
  E8Q_GGUF_F32 = 6,
  E8Q_GGUF_BOOL = 7,
  E8Q_GGUF_STRING = 8,
  E8Q_GGUF_ARRAY = 9,
  E8Q_GGUF_U64 = 10,
  E8Q_GGUF_I64 = 11,
  E8Q_GGUF_F64 = 12,
  E8Q_GGUF_NTYPES = 13
};

typedef struct e8q_gguf e8q_gguf; /* opaque */

/* a regular file starting with the "GGUF" magic: 1, else 0; never fatal */
int e8q_gguf_is_file(const char *path);
/* maps and validates the file; fatal (naming it) on anything wrong, including a path that is not a
 * regular file (directory, FIFO, device) */
e8q_gguf *e8q_gguf_open(const char *path);
void e8q_gguf_close(e8q_gguf *g);
const char *e8q_gguf_path(const e8q_gguf *g);
int e8q_gguf_version(const e8q_gguf *g);
uint64_t e8q_gguf_alignment(const e8q_gguf *g);
/* file offset of the data section */
uint64_t e8q_gguf_data_offset(const e8q_gguf *g);

/* ---------------------------------------------------------------- metadata
 * A key present with a type that cannot be converted is fatal (naming file, key and its type)
 * whether or not the call says required; required=1 also makes absence fatal. */
int e8q_gguf_has(const e8q_gguf *g, const char *key);
/* the value type of key (E8Q_GGUF_*), -1 when absent */
int e8q_gguf_kv_type(const e8q_gguf *g, const char *key);
const char *e8q_gguf_value_type_name(int type); /* "u32", "string", ...; "unknown" */
/* any integer type, or bool (0/1); a u64 above INT64_MAX is fatal */
int64_t e8q_gguf_get_int(const e8q_gguf *g, const char *key, int64_t dflt, int required);
/* f32/f64 or any integer type */
double e8q_gguf_get_float(const e8q_gguf *g, const char *key, double dflt, int required);
/* a string value: NULL when absent; a NUL-terminated copy owned by g (the value may itself contain
 * NUL bytes: *len, when len is not NULL, gets its full length). Fatal when the key is not a string. */
const char *e8q_gguf_get_str(const e8q_gguf *g, const char *key, size_t *len);
/* element count of an array: 0 and *elem_type -1 when absent; fatal when the key is not an array.
 * An array of arrays reports E8Q_GGUF_ARRAY; its elements are validated at open but not readable
 * through the accessors below (fatal). elem_type may be NULL. */
size_t e8q_gguf_arr_len(const e8q_gguf *g, const char *key, int *elem_type);
/* element i of an array of strings: pointer into the map, NOT NUL-terminated, *len bytes */
const char *e8q_gguf_arr_str(const e8q_gguf *g, const char *key, size_t i, size_t *len);
/* element i of an array of integers or bools */
int64_t e8q_gguf_arr_int(const e8q_gguf *g, const char *key, size_t i);
/* element i of an array of floats or integers */
double e8q_gguf_arr_float(const e8q_gguf *g, const char *key, size_t i);
/* keys in file order */
int e8q_gguf_n_kv(const e8q_gguf *g);
const char *e8q_gguf_kv_key(const e8q_gguf *g, int i);

/* ---------------------------------------------------------------- tensors */
typedef struct {
  const char *name;   /* NUL-terminated, owned by the e8q_gguf */
  int type;           /* ggml type (E8Q_GGML_*) */
  int n_dims;         /* 1..4 */
  int64_t ne[4];      /* elements per dimension, ne[0] contiguous; 1 past n_dims */
  uint64_t offset;    /* byte offset in the data section */
  uint64_t nbytes;    /* bytes of data */
} e8q_gguf_tensor;

int e8q_gguf_n_tensors(const e8q_gguf *g);
/* i-th tensor in file order */
const e8q_gguf_tensor *e8q_gguf_tensor_at(const e8q_gguf *g, int i);
/* NULL if absent */
const e8q_gguf_tensor *e8q_gguf_find(const e8q_gguf *g, const char *name);
/* the tensor's bytes inside the mapping (any alignment beyond the file's) */
const void *e8q_gguf_data(const e8q_gguf *g, const e8q_gguf_tensor *t);
int64_t e8q_gguf_numel(const e8q_gguf_tensor *t);
int64_t e8q_gguf_n_rows(const e8q_gguf_tensor *t); /* numel / ne[0] */
/* "Q4_1", ...; "unknown" (same as in io/ggml_quants.h) */
const char *e8q_ggml_type_name(int type);
/* rows [row0, row0 + nrows) of a tensor (a row is ne[0] elements) dequantized to f32 into dst
 * (nrows * ne[0] floats). Fatal naming file and tensor for a range outside the tensor or a type e8q
 * cannot dequantize, and naming file, tensor, row and column for a non-finite value. */
void e8q_gguf_read_rows_f32(const e8q_gguf *g, const e8q_gguf_tensor *t, int64_t row0, int64_t nrows,
                            float *dst);

/* ---------------------------------------------------------------- llama GGUF as a HF model */
/* The Hugging Face config.json equivalent of a llama GGUF's metadata, as a malloc'd JSON text that
 * e8q_config_from_json accepts (caller frees): model_type "llama", architectures
 * ["LlamaForCausalLM"], hidden_size (llama.embedding_length), intermediate_size
 * (llama.feed_forward_length), num_hidden_layers (llama.block_count), num_attention_heads,
 * num_key_value_heads (llama.attention.head_count_kv, default the heads), head_dim
 * (llama.attention.key_length, else llama.rope.dimension_count, else dim / heads), vocab_size
 * (llama.vocab_size, else the length of tokenizer.ggml.tokens), max_position_embeddings
 * (llama.context_length), rope_theta (llama.rope.freq_base, default 10000), rms_norm_eps
 * (llama.attention.layer_norm_rms_epsilon), tie_word_embeddings (true when there is no
 * output.weight), bos_token_id / eos_token_id (tokenizer.ggml.*_token_id, when present),
 * hidden_act "silu", torch_dtype ("float16" / "bfloat16" when every 2-D tensor has that type, else
 * "float32": dequantized values are exact in f32 only). f32 metadata is written as the shortest
 * decimal that reads back as the same f32 (an epsilon stored as f32 1e-5 becomes 1e-05).
 * Fatal naming the file and key: general.architecture other than "llama", llama.rope.scaling.type
 * other than "none", llama.rope.scaling.factor != 1, llama.rope.freq_scale != 1,
 * llama.expert_count > 0, llama.attention.key_length != value_length, llama.rope.dimension_count
 * != head_dim, a required key missing, token_embd.weight not of shape [vocab, dim]. */
char *e8q_gguf_hf_config(const e8q_gguf *g);
/* The tensor holding Hugging Face tensor hf_name: model.embed_tokens.weight -> token_embd.weight,
 * model.norm.weight -> output_norm.weight, lm_head.weight -> output.weight,
 * model.layers.{i}.input_layernorm.weight -> blk.{i}.attn_norm.weight, post_attention_layernorm ->
 * ffn_norm, self_attn.{q,k,v,o}_proj -> attn_{q,k,v,output}, mlp.{gate,up,down}_proj ->
 * ffn_{gate,up,down}. NULL when absent or not a name of this mapping. */
const e8q_gguf_tensor *e8q_gguf_find_hf(const e8q_gguf *g, const char *hf_name);
/* Elements [first, first + count) in row-major Hugging Face order of tensor hf_name, as f32:
 * dequantized, and for self_attn.q_proj / k_proj with llama.cpp's rotary row permutation undone
 * (GGUF row h*hd + 2*i + s holds HF row h*hd + s*hd/2 + i, s in {0,1}, i < hd/2; heads =
 * llama.attention.head_count for q, head_count_kv for k). Fatal naming the file and tensor when
 * absent, out of range or non-finite. */
void e8q_gguf_read_hf_f32(const e8q_gguf *g, const char *hf_name, int64_t first, int64_t count, float *dst);
/* Shape of hf_name in HF order: a matrix gives 2 and shape = {rows, cols} = {ne[1], ne[0]}, a
 * vector 1 and shape[0] = ne[0]. Returns 0 when absent; fatal for a tensor with more than 2
 * dimensions. */
int e8q_gguf_hf_shape(const e8q_gguf *g, const char *hf_name, int64_t shape[2]);
/* the GGUF row holding HF row r of a q/k projection with `heads` heads of hd = rows / heads rows */
int64_t e8q_gguf_rope_row(int64_t r, int64_t hd);

#endif
