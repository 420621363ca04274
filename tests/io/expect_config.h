/* tests/io/expect_config.h: a parsed model configuration checked field by field against the
 * expected one (test_config: a Hugging Face config.json; test_gguf: a GGUF's metadata). */
#ifndef E8Q_TESTS_IO_EXPECT_CONFIG_H
#define E8Q_TESTS_IO_EXPECT_CONFIG_H

#include "io/config.h"
#include "testutil.h"

/* every field of c == want's (floating-point fields exactly), each failure naming the field */
static inline void expect_config(const e8q_config *c, const e8q_config *want) {
  assert_string_equal(c->model_type, want->model_type);
  assert_int_equal(c->dim, want->dim);
  assert_int_equal(c->hidden_dim, want->hidden_dim);
  assert_int_equal(c->n_layers, want->n_layers);
  assert_int_equal(c->n_heads, want->n_heads);
  assert_int_equal(c->n_kv_heads, want->n_kv_heads);
  assert_int_equal(c->head_dim, want->head_dim);
  assert_int_equal(c->vocab_size, want->vocab_size);
  assert_int_equal(c->max_seq_len, want->max_seq_len);
  assert_true(c->rope_theta == want->rope_theta);
  assert_true(c->norm_eps == want->norm_eps);
  assert_int_equal(c->tied, want->tied);
  assert_int_equal(c->bos_id, want->bos_id);
  assert_int_equal(c->eos_id, want->eos_id);
  assert_int_equal(c->sliding_window, want->sliding_window);
}

#endif
