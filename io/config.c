/* io/config.c: Hugging Face config.json -> e8q_config, refusing what e8q does not implement. */
#include "io/config.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "common/error.h"
#include "io/gguf.h"
#include "io/text.h"

/* ---------------------------------------------------------------- helpers */
#define E8Q_CONFIG_INT_MAX (1 << 30) /* largest integer field accepted */

/* DIR/config.json, or path itself when it is a file; malloc'd */
static char *config_path(const char *path) {
  struct stat sb;
  E8Q_CHECK_ERRNO(stat(path, &sb) == 0, "cannot open model config %s", path);
  size_t n = strlen(path) + 16;
  char *p = e8q_malloc(n, "config path");
  if (S_ISDIR(sb.st_mode)) snprintf(p, n, "%s/config.json", path);
  else snprintf(p, n, "%s", path);
  return p;
}

static cJSON *config_parse(const char *file) {
  size_t n;
  char *buf = e8q_file_read(file, &n, "model config (a Hugging Face model directory needs config.json)");
  E8Q_CHECK(n > 0 && n < ((size_t)64 << 20), "%s: %zu bytes, not a config.json", file, n);
  cJSON *root = cJSON_ParseWithLength(buf, n);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    long off = (at && at >= buf && at <= buf + n) ? (long)(at - buf) : -1;
    free(buf);
    E8Q_FATAL("%s: not valid JSON (near byte %ld); fix or re-download the file", file, off);
  }
  free(buf);
  E8Q_CHECK(cJSON_IsObject(root), "%s: the top level is not a JSON object", file);
  return root;
}

static int is_absent(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* integer field; required fields are fatal when absent */
static int get_int(const cJSON *root, const char *file, const char *key, int required, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (is_absent(v)) {
    E8Q_CHECK(!required, "%s: required field \"%s\" is missing; add it (see the model's documentation)",
              file, key);
    return dflt;
  }
  E8Q_CHECK(cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble),
            "%s: field \"%s\" must be an integer", file, key);
  /* sizes are multiplied together in int64 (shapes, KV caches): 2^30 keeps them exact */
  E8Q_CHECK(fabs(v->valuedouble) <= E8Q_CONFIG_INT_MAX,
            "%s: field \"%s\" = %.0f is too large: e8q accepts at most %d; fix the config (for "
            "\"max_position_embeddings\", the context length the model was trained for)",
            file, key, v->valuedouble, E8Q_CONFIG_INT_MAX);
  return (int)v->valuedouble;
}

static double get_num(const cJSON *root, const char *file, const char *key, int required, double dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (is_absent(v)) {
    E8Q_CHECK(!required, "%s: required field \"%s\" is missing; add it", file, key);
    return dflt;
  }
  E8Q_CHECK(cJSON_IsNumber(v) && isfinite(v->valuedouble), "%s: field \"%s\" must be a number", file, key);
  return v->valuedouble;
}

static int get_bool(const cJSON *root, const char *file, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (is_absent(v)) return dflt;
  E8Q_CHECK(cJSON_IsBool(v), "%s: field \"%s\" must be true or false", file, key);
  return cJSON_IsTrue(v);
}

/* token id field that may be an int or a list of ints (first taken) */
static int get_token(const cJSON *root, const char *file, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (is_absent(v)) return dflt;
  if (cJSON_IsArray(v)) {
    v = cJSON_GetArrayItem(v, 0);
    if (!v) return dflt;
  }
  E8Q_CHECK(cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble == floor(v->valuedouble) &&
                v->valuedouble <= E8Q_CONFIG_INT_MAX,
            "%s: field \"%s\" must be a non-negative integer token id (at most %d)", file, key, E8Q_CONFIG_INT_MAX);
  return (int)v->valuedouble;
}

/* ---------------------------------------------------------------- load */

void e8q_config_from_json(const cJSON *root, const char *file, e8q_config *cfg) {
  E8Q_CHECK(cJSON_IsObject(root), "%s: the top level is not a JSON object", file);
  memset(cfg, 0, sizeof(*cfg));

  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  E8Q_CHECK(cJSON_IsString(mt), "%s: required field \"model_type\" is missing or not a string", file);
  E8Q_CHECK(strcmp(mt->valuestring, "llama") == 0 || strcmp(mt->valuestring, "mistral") == 0,
            "%s: unsupported model_type \"%s\": e8q implements \"llama\" and \"mistral\" only", file,
            mt->valuestring);
  snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt->valuestring);
  int mistral = strcmp(cfg->model_type, "mistral") == 0;

  cfg->dim = get_int(root, file, "hidden_size", 1, 0);
  cfg->hidden_dim = get_int(root, file, "intermediate_size", 1, 0);
  cfg->n_layers = get_int(root, file, "num_hidden_layers", 1, 0);
  cfg->n_heads = get_int(root, file, "num_attention_heads", 1, 0);
  cfg->vocab_size = get_int(root, file, "vocab_size", 1, 0);
  cfg->n_kv_heads = get_int(root, file, "num_key_value_heads", 0, cfg->n_heads);
  cfg->max_seq_len = get_int(root, file, "max_position_embeddings", 0, mistral ? 32768 : 2048);
  cfg->rope_theta = get_num(root, file, "rope_theta", 0, 10000.0);
  cfg->norm_eps = get_num(root, file, "rms_norm_eps", 0, 1e-6);
  cfg->tied = get_bool(root, file, "tie_word_embeddings", 0);
  cfg->bos_id = get_token(root, file, "bos_token_id", 1);
  cfg->eos_id = get_token(root, file, "eos_token_id", 2);
  cfg->sliding_window = mistral ? get_int(root, file, "sliding_window", 0, 0) : 0;

  struct {
    const char *key;
    int v;
  } pos[] = {{"hidden_size", cfg->dim},           {"intermediate_size", cfg->hidden_dim},
             {"num_hidden_layers", cfg->n_layers}, {"num_attention_heads", cfg->n_heads},
             {"vocab_size", cfg->vocab_size},      {"num_key_value_heads", cfg->n_kv_heads},
             {"max_position_embeddings", cfg->max_seq_len}};
  for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
    E8Q_CHECK(pos[i].v > 0, "%s: field \"%s\" = %d must be positive", file, pos[i].key, pos[i].v);
  E8Q_CHECK(cfg->sliding_window >= 0, "%s: field \"sliding_window\" = %d must be >= 0 or null", file,
            cfg->sliding_window);
  E8Q_CHECK(cfg->rope_theta > 0, "%s: field \"rope_theta\" must be positive", file);
  E8Q_CHECK(cfg->norm_eps > 0 && cfg->norm_eps < 1, "%s: field \"rms_norm_eps\" = %g must be in (0, 1)", file,
            cfg->norm_eps);

  const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
  if (is_absent(hd)) {
    E8Q_CHECK(cfg->dim % cfg->n_heads == 0,
              "%s: hidden_size %d is not divisible by num_attention_heads %d (and no \"head_dim\" is given)",
              file, cfg->dim, cfg->n_heads);
    cfg->head_dim = cfg->dim / cfg->n_heads;
  } else {
    cfg->head_dim = get_int(root, file, "head_dim", 1, 0);
    E8Q_CHECK(cfg->head_dim > 0, "%s: field \"head_dim\" must be positive", file);
  }
  E8Q_CHECK(cfg->head_dim % 2 == 0, "%s: head_dim %d is odd; RoPE needs an even head dimension", file,
            cfg->head_dim);
  /* the stacked linears' rows (shard/model.h e8q_group_shape) are ints and are multiplied in int64 */
  int64_t qkv_rows = ((int64_t)cfg->n_heads + 2 * (int64_t)cfg->n_kv_heads) * cfg->head_dim;
  E8Q_CHECK(qkv_rows <= E8Q_CONFIG_INT_MAX && (int64_t)cfg->n_heads * cfg->head_dim <= E8Q_CONFIG_INT_MAX,
            "%s: num_attention_heads %d and num_key_value_heads %d of head_dim %d give %lld stacked q/k/v rows, more "
            "than the %d e8q accepts; fix the config",
            file, cfg->n_heads, cfg->n_kv_heads, cfg->head_dim, (long long)qkv_rows, E8Q_CONFIG_INT_MAX);
  E8Q_CHECK(2 * (int64_t)cfg->hidden_dim <= E8Q_CONFIG_INT_MAX,
            "%s: intermediate_size %d is too large: up and gate stacked give %lld rows, more than the %d e8q accepts",
            file, cfg->hidden_dim, 2 * (long long)cfg->hidden_dim, E8Q_CONFIG_INT_MAX);
  E8Q_CHECK(cfg->n_heads % cfg->n_kv_heads == 0,
            "%s: num_attention_heads %d is not divisible by num_key_value_heads %d", file, cfg->n_heads,
            cfg->n_kv_heads);
  E8Q_CHECK(cfg->bos_id < cfg->vocab_size && cfg->eos_id < cfg->vocab_size,
            "%s: bos_token_id %d / eos_token_id %d outside vocab_size %d", file, cfg->bos_id, cfg->eos_id,
            cfg->vocab_size);

  /* ---- features e8q does not implement: refuse rather than compute something else */
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
  if (is_absent(act)) act = cJSON_GetObjectItemCaseSensitive(root, "hidden_activation");
  E8Q_CHECK(is_absent(act) || (cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0),
            "%s: field \"hidden_act\" = %s is not supported: e8q implements SwiGLU with \"silu\" only", file,
            cJSON_IsString(act) ? act->valuestring : "(not a string)");
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
  if (!is_absent(rs)) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!ty) ty = cJSON_GetObjectItemCaseSensitive(rs, "type");
    int plain = cJSON_IsObject(rs) && cJSON_IsString(ty) && strcmp(ty->valuestring, "default") == 0;
    E8Q_CHECK(plain,
              "%s: field \"rope_scaling\" (type \"%s\") is not supported: e8q implements plain RoPE only; use a "
              "model without rope scaling, or set \"rope_scaling\": null if the scaling is not needed for "
              "your context length",
              file, cJSON_IsString(ty) ? ty->valuestring : "?");
  }
  E8Q_CHECK(!get_bool(root, file, "attention_bias", 0),
            "%s: field \"attention_bias\" = true is not supported: e8q implements bias-free attention", file);
  E8Q_CHECK(!get_bool(root, file, "mlp_bias", 0),
            "%s: field \"mlp_bias\" = true is not supported: e8q implements a bias-free MLP", file);
  E8Q_CHECK(is_absent(cJSON_GetObjectItemCaseSensitive(root, "quantization_config")),
            "%s: field \"quantization_config\" is present: the model is already quantized; give e8q the "
            "original float checkpoint",
            file);
  E8Q_CHECK(!get_bool(root, file, "use_qk_norm", 0), "%s: field \"use_qk_norm\" = true is not supported", file);
  /* a sliding window is kept in cfg: the forward pass refuses contexts longer than it */
}

/* a GGUF file stands for its Hugging Face config (io/gguf.h): the parsed equivalent, or NULL */
static cJSON *gguf_config(const char *path) {
  if (!e8q_gguf_is_file(path)) return NULL;
  e8q_gguf *g = e8q_gguf_open(path);
  char *txt = e8q_gguf_hf_config(g);
  e8q_gguf_close(g);
  cJSON *root = cJSON_Parse(txt);
  E8Q_CHECK(root, "%s: the config derived from its GGUF metadata is not valid JSON", path);
  free(txt);
  return root;
}

void e8q_config_load(const char *path, e8q_config *cfg) {
  cJSON *groot = gguf_config(path);
  if (groot) {
    e8q_config_from_json(groot, path, cfg);
    cJSON_Delete(groot);
    return;
  }
  char *file = config_path(path);
  cJSON *root = config_parse(file);
  e8q_config_from_json(root, file, cfg);
  cJSON_Delete(root);
  free(file);
}

char *e8q_config_json(const char *path) {
  cJSON *groot = gguf_config(path);
  if (groot) {
    char *s = cJSON_Print(groot);
    E8Q_CHECK(s, "%s: out of memory printing JSON", path);
    cJSON_Delete(groot);
    return s;
  }
  char *file = config_path(path);
  cJSON *root = config_parse(file);
  char *s = cJSON_Print(root);
  E8Q_CHECK(s, "%s: out of memory printing JSON", file);
  cJSON_Delete(root);
  free(file);
  return s;
}
