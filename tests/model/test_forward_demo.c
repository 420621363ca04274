/* tests/model/test_forward_demo.c: the demo model is a loadable Llama checkpoint, its files are
 * bit-identical when written twice with one seed, and another seed gives other weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "coordinator/eval.h"
#include "kernels/transformer.h"
#include "coordinator/demo_model.h"
#include "testutil.h"
#include "worker/forward.h"

static const char *demo_files[5] = {"config.json", "model.safetensors", "tokenizer.model", "calib.txt", "eval.txt"};

static char *file_in(const char *dir, const char *name, size_t *n) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return t_read_file(p, n);
}

static void test_forward_demo_deterministic(void **s) {
  (void)s;
  char *a = t_tmpdir("fwd_demo_a"), *b = t_tmpdir("fwd_demo_b"), *c = t_tmpdir("fwd_demo_c");
  e8q_demo_write(a, 11);
  e8q_demo_write(b, 11);
  e8q_demo_write(c, 12);
  for (int i = 0; i < 5; i++) {
    size_t na, nb, nc;
    char *fa = file_in(a, demo_files[i], &na), *fb = file_in(b, demo_files[i], &nb), *fc = file_in(c, demo_files[i], &nc);
    assert_true(na > 0);
    if (na != nb || memcmp(fa, fb, na) != 0) fail_msg("%s differs between two writes with seed 11", demo_files[i]);
    if (i == 1 || i == 3) assert_true(na != nc || memcmp(fa, fc, na) != 0); /* weights and text follow the seed */
    free(fa), free(fb), free(fc);
  }
  free(a), free(b), free(c);
}

static void test_forward_demo_runs(void **s) {
  (void)s;
  char *dir = t_tmpdir("fwd_demo_run");
  e8q_demo_write(dir, 5);
  /* config: the documented shape, marked as a demo */
  size_t n;
  char *cj = file_in(dir, "config.json", &n);
  cJSON *root = cJSON_Parse(cj);
  assert_non_null(root);
  const cJSON *demo = cJSON_GetObjectItemCaseSensitive(root, "e8q_demo");
  assert_non_null(demo);
  assert_non_null(strstr(cJSON_GetObjectItemCaseSensitive(demo, "note")->valuestring, "RANDOM weights"));
  cJSON_Delete(root);
  free(cj);
  e8q_model *m = e8q_model_load(dir);
  const e8q_config *c = &m->cfg;
  assert_int_equal(c->dim, 128);
  assert_int_equal(c->hidden_dim, 344);
  assert_int_equal(c->n_layers, 4);
  assert_int_equal(c->n_heads, 4);
  assert_int_equal(c->n_kv_heads, 2);
  assert_int_equal(c->vocab_size, E8Q_DEMO_VOCAB);
  assert_false(c->tied);
  assert_true(m->lm_head != m->embed);
  /* heavy tails: excess kurtosis of a Student-t(4) sample is large (a Gaussian gives ~0) */
  const float *w = m->blocks[0].upgate.w;
  size_t nw = (size_t)m->blocks[0].upgate.m * m->blocks[0].upgate.n;
  double m2 = 0, m4 = 0;
  for (size_t i = 0; i < nw; i++) m2 += (double)w[i] * w[i], m4 += (double)w[i] * w[i] * w[i] * w[i];
  m2 /= nw, m4 /= nw;
  print_message("demo upgate kurtosis %.2f\n", m4 / (m2 * m2));
  assert_true(m4 / (m2 * m2) > 4.0);
  /* it runs: KV step equals batched, logits finite */
  char *tp = NULL;
  e8q_tokenizer *tok = e8q_eval_open_tokenizer(dir, c, NULL, 1, &tp);
  int *ids;
  int nt = e8q_tokenizer_encode(tok, "The cat sat on the mat and smiled.", 1, 0, &ids);
  assert_true(nt > 5 && nt < 30); /* merges shorten the byte-per-character count */
  float *bl = malloc(sizeof(float) * nt * c->vocab_size);
  e8q_model_forward(m, 1, nt, ids, bl);
  e8q_kv_cache kv;
  e8q_kv_init(&kv, c, nt);
  for (int t = 0; t < nt; t++) {
    const float *l = e8q_model_step(m, &kv, ids[t], t);
    for (int v = 0; v < c->vocab_size; v++) {
      assert_true(isfinite(l[v]));
      T_NEAR(l[v], bl[(size_t)t * c->vocab_size + v], 1e-4 * (1 + fabs(l[v])), "demo step vs batched");
    }
  }
  /* the eval text is scored to a finite NLL */
  char ep[1024];
  snprintf(ep, sizeof ep, "%s/eval.txt", dir);
  e8q_eval_set set;
  e8q_eval_set_lines(&set, ep, tok, 10);
  e8q_eval_result r = e8q_eval_run(m, &set, 0);
  print_message("demo per-line 10: mean NLL %.4f over %ld tokens\n", r.mean_nll, r.tokens);
  assert_true(isfinite(r.mean_nll) && r.tokens > 100);
  e8q_eval_set_free(&set);
  e8q_kv_free(&kv);
  free(bl), free(ids), free(tp), free(dir);
  e8q_tokenizer_free(tok);
  e8q_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_demo_deterministic),
      cmocka_unit_test(test_forward_demo_runs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
