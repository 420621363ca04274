/* tests/io/test_config.c: config.json parsing and refusals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/config.h"
#include "testutil.h"

static void test_config_stories(void **state) {
  (void)state;
  char *d = t_shared_path("models/stories260K-hf");
  e8q_config c;
  e8q_config_load(d, &c);
  assert_string_equal(c.model_type, "llama");
  assert_int_equal(c.dim, 64);
  assert_int_equal(c.hidden_dim, 172);
  assert_int_equal(c.n_layers, 5);
  assert_int_equal(c.n_heads, 8);
  assert_int_equal(c.n_kv_heads, 4);
  assert_int_equal(c.head_dim, 8);
  assert_int_equal(c.vocab_size, 512);
  assert_int_equal(c.max_seq_len, 512);
  assert_true(c.rope_theta == 10000.0);
  assert_true(c.norm_eps == 1e-5);
  assert_int_equal(c.tied, 1);
  assert_int_equal(c.bos_id, 1);
  assert_int_equal(c.eos_id, 2);
  assert_int_equal(c.sliding_window, 0);
  char *j = e8q_config_json(d);
  assert_non_null(strstr(j, "\"hidden_size\":\t64"));
  free(j);
  free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_stories),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
