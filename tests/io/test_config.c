/* tests/io/test_config.c: config.json parsing and refusals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/config.h"
#include "expect_config.h"
#include "testutil.h"

static void test_config_stories(void **state) {
  (void)state;
  char *d = t_shared_path("models/stories260K-hf");
  e8q_config c;
  e8q_config_load(d, &c);
  expect_config(&c, &(e8q_config){.model_type = "llama", .dim = 64, .hidden_dim = 172, .n_layers = 5, .n_heads = 8,
                                  .n_kv_heads = 4, .head_dim = 8, .vocab_size = 512, .max_seq_len = 512,
                                  .rope_theta = 10000.0, .norm_eps = 1e-5, .tied = 1, .bos_id = 1, .eos_id = 2});
  char *j = e8q_config_json(d);
  assert_non_null(strstr(j, "\"hidden_size\":\t64"));
  free(j);
  free(d);
}

/* the parsed-JSON entry: the same config as the file loader, and the label in every message */
static void test_config_from_json(void **state) {
  (void)state;
  char *src;
  size_t n;
  char *text = t_read_shared("models/stories260K-hf/config.json", &n, &src);
  cJSON *root = cJSON_Parse(text);
  assert_non_null(root);
  e8q_config a, b;
  e8q_config_load(src, &a);
  memset(&b, 0x5a, sizeof b);
  e8q_config_from_json(root, "x.e8q/config.json", &b);
  assert_memory_equal(&a, &b, sizeof a);
  char *before = cJSON_PrintUnformatted(root);
  e8q_config_from_json(root, "x.e8q/config.json", &b); /* root is not modified */
  char *after = cJSON_PrintUnformatted(root);
  assert_string_equal(before, after);
  free(before);
  free(after);
  cJSON_DeleteItemFromObjectCaseSensitive(root, "vocab_size");
  E8Q_EXPECT_FATAL(e8q_config_from_json(root, "x.e8q/config.json", &b), "x.e8q/config.json", "\"vocab_size\"",
                   "missing");
  cJSON_Delete(root);
  cJSON *arr = cJSON_CreateArray();
  E8Q_EXPECT_FATAL(e8q_config_from_json(arr, "x.e8q/config.json", &b), "x.e8q/config.json", "not a JSON object");
  cJSON_Delete(arr);
  free(text);
  free(src);
}


/* ---------------------------------------------------------------- variants of a good config */

static char *g_dir;

/* stories260K's config.json with `from` replaced by `to`, written to a temp dir; returns its path */
static char *config_variant(const char *from, const char *to) {
  size_t n;
  char *text = t_read_shared("models/stories260K-hf/config.json", &n, NULL);
  char *at = strstr(text, from);
  if (!at) fail_msg("config.json lacks \"%s\"", from);
  size_t cap = n + strlen(to) + 1;
  char *out = malloc(cap);
  size_t pre = (size_t)(at - text);
  memcpy(out, text, pre);
  strcpy(out + pre, to);
  strcat(out, at + strlen(from));
  if (!g_dir) g_dir = t_tmpdir("config");
  size_t pn = strlen(g_dir) + 32;
  char *p = malloc(pn);
  snprintf(p, pn, "%s/config.json", g_dir);
  t_write_file(p, out, strlen(out));
  free(out);
  free(text);
  return p;
}

static void test_config_mistral_gqa_head_dim(void **state) {
  (void)state;
  char *p = config_variant("\"model_type\": \"llama\",",
                           "\"model_type\": \"mistral\", \"sliding_window\": 4096, \"head_dim\": 16,");
  e8q_config c;
  e8q_config_load(p, &c);
  assert_string_equal(c.model_type, "mistral");
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.sliding_window, 4096);
  free(p);
  p = config_variant("\"num_key_value_heads\": 4,", "\"rope_scaling\": null,");
  e8q_config_load(p, &c); /* absent kv heads = n_heads */
  assert_int_equal(c.n_kv_heads, 8);
  free(p);
  p = config_variant("\"tie_word_embeddings\": true,", "\"tie_word_embeddings\": false, \"eos_token_id\": [2, 7],");
  e8q_config_load(p, &c);
  assert_int_equal(c.tied, 0);
  assert_int_equal(c.eos_id, 2);
  free(p);
}

/* stories260K's config.json with from replaced by to is refused naming the file and every further string */
#define EXPECT_REFUSED(from, to, ...)                                             \
  do {                                                                            \
    char *p_ = config_variant(from, to);                                          \
    e8q_config c_;                                                                \
    E8Q_EXPECT_FATAL(e8q_config_load(p_, &c_), p_, __VA_ARGS__);                  \
    free(p_);                                                                     \
  } while (0)

static void test_config_bad_model_type(void **state) {
  (void)state;
  EXPECT_REFUSED("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"",
                 "unsupported model_type \"gpt2\"", "llama");
}

static void test_config_missing_field(void **state) {
  (void)state;
  EXPECT_REFUSED("\"hidden_size\": 64,", "", "\"hidden_size\"", "missing");
  EXPECT_REFUSED("\"vocab_size\": 512,", "\"vocab_size\": null,", "\"vocab_size\"", "missing");
  EXPECT_REFUSED("\"model_type\": \"llama\",", "", "\"model_type\"", "missing");
}

static void test_config_rope_scaling_refused(void **state) {
  (void)state;
  EXPECT_REFUSED("\"rope_theta\": 10000.0,",
                 "\"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0},",
                 "\"rope_scaling\"", "linear", "not supported");
  e8q_config c;
  char *p = config_variant("\"rope_theta\": 10000.0,",
                     "\"rope_theta\": 10000.0, \"rope_scaling\": {\"rope_type\": \"default\"},");
  e8q_config_load(p, &c); /* the explicit default is plain RoPE */
  free(p);
}

static void test_config_other_refusals(void **state) {
  (void)state;
  e8q_config c;
  EXPECT_REFUSED("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "\"hidden_act\"", "gelu", "silu");
  EXPECT_REFUSED("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 3", "not divisible by num_key_value_heads 3");
  EXPECT_REFUSED("\"hidden_size\": 64", "\"hidden_size\": 60", "hidden_size 60", "num_attention_heads 8");
  EXPECT_REFUSED("\"num_hidden_layers\": 5", "\"num_hidden_layers\": 0", "\"num_hidden_layers\"", "positive");
  EXPECT_REFUSED("\"intermediate_size\": 172", "\"intermediate_size\": 172.5", "\"intermediate_size\"",
                 "integer");
  EXPECT_REFUSED("\"hidden_act\": \"silu\"", "\"hidden_act\": \"silu\", \"attention_bias\": true",
                 "\"attention_bias\"");
  EXPECT_REFUSED("\"hidden_act\": \"silu\"", "\"hidden_act\": \"silu\", \"quantization_config\": {}",
                 "already quantized");
  EXPECT_REFUSED("\"hidden_act\": \"silu\",", "\"hidden_act\": \"silu\"", "not valid JSON");
  E8Q_EXPECT_FATAL(e8q_config_load("/nonexistent/model", &c), "/nonexistent/model");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_stories),
      cmocka_unit_test(test_config_from_json),
      cmocka_unit_test(test_config_mistral_gqa_head_dim),
      cmocka_unit_test(test_config_bad_model_type),
      cmocka_unit_test(test_config_missing_field),
      cmocka_unit_test(test_config_rope_scaling_refused),
      cmocka_unit_test(test_config_other_refusals),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  free(g_dir);
  return rc;
}
