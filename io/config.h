/* io/config.h: the model architecture, from a Hugging Face config.json or a llama2.c header.
 * Anything e8q does not implement is refused with a message naming the file and field. */
#ifndef E8Q_IO_CONFIG_H
#define E8Q_IO_CONFIG_H

#include <cjson/cJSON.h>

typedef struct {
  char model_type[32];    /* "llama" or "mistral" */
  int dim;                /* hidden_size */
  int hidden_dim;         /* intermediate_size */
  int n_layers;           /* num_hidden_layers */
  int n_heads;            /* num_attention_heads */
  int n_kv_heads;         /* num_key_value_heads (= n_heads when absent) */
  int head_dim;           /* dim / n_heads unless "head_dim" is given */
  int vocab_size;
  int max_seq_len;        /* max_position_embeddings */
  double rope_theta;      /* default 10000 */
  double norm_eps;        /* rms_norm_eps */
  int tied;               /* tie_word_embeddings (default false for llama) */
  int bos_id, eos_id;     /* default 1, 2 */
  int sliding_window;     /* mistral; 0 = none. Refused if smaller than max_seq_len is used */
} e8q_config;

/* Parses DIR/config.json (or a path to a .json file). Fatal with the file and field named for:
 * missing required fields, model_type other than llama/mistral, hidden_act other than silu,
 * rope_scaling other than null, non-positive sizes, dim not divisible by n_heads, n_heads not
 * divisible by n_kv_heads.
 * Required: model_type, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
 * vocab_size. Defaults as in transformers: num_key_value_heads = heads, rms_norm_eps 1e-6,
 * rope_theta 10000, max_position_embeddings 2048 (llama) / 32768 (mistral), tie false,
 * bos/eos 1/2 (a list takes its first id). Also refused: rope_scaling other than
 * {"rope_type": "default"}, attention_bias or mlp_bias true, use_qk_norm, quantization_config
 * (an already quantized model), an odd head_dim, bos/eos outside the vocabulary. */
void e8q_config_load(const char *path, e8q_config *cfg);
/* The same checks on a parsed config (a cJSON object, not modified); `label` names its source in
 * every message (a file path, or an artifact and its member). */
void e8q_config_from_json(const cJSON *root, const char *label, e8q_config *cfg);
/* The JSON text of the config, canonical (cJSON printed), malloc'd: for fingerprints and the
 * artifact's config.json. */
char *e8q_config_json(const char *path);

#endif
