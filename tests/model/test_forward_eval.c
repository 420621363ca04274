/* tests/model/test_forward_eval.c: the per-line protocol of golden/stories260K_tsval40.json in
 * the three layouts, window evaluation against a direct NLL, id files, and the tokenizer
 * checks (a tokenizer with another vocabulary size is refused, naming both files). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "coordinator/eval.h"
#include "coordinator/demo_model.h"
#include "testutil.h"
#include "worker/forward.h"

typedef struct {
  double mean_nll;
  long tokens;
  int first_ids[256];
  int n_first;
} tsval;

static void tsval_load(tsval *g) {
  char *path = t_shared_path("golden/stories260K_tsval40.json");
  char *text = t_read_file(path, NULL);
  cJSON *root = cJSON_Parse(text);
  assert_non_null(root);
  g->mean_nll = cJSON_GetObjectItemCaseSensitive(root, "mean_nll_nats")->valuedouble;
  g->tokens = (long)cJSON_GetObjectItemCaseSensitive(root, "scored_tokens")->valuedouble;
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "first_line_ids");
  g->n_first = cJSON_GetArraySize(ids);
  assert_true(g->n_first > 1 && g->n_first <= 256);
  for (int i = 0; i < g->n_first; i++) g->first_ids[i] = cJSON_GetArrayItem(ids, i)->valueint;
  cJSON_Delete(root);
  free(text);
  free(path);
}

/* model layout, tokenizer (NULL: the default lookup), tolerance on the mean NLL */
static void check_per_line(const char *model_rel, const char *tok_rel, double tol) {
  tsval g;
  tsval_load(&g);
  char *mp = t_shared_path(model_rel), *tp = tok_rel ? t_shared_path(tok_rel) : NULL;
  char *text = t_shared_path("text/tinystories_valid_head.txt");
  e8q_model *m = e8q_model_load(mp);
  char *used = NULL;
  e8q_tokenizer *tok = e8q_eval_open_tokenizer(mp, &m->cfg, tp, 1, &used);
  print_message("%s with tokenizer %s\n", model_rel, used);
  e8q_eval_set set;
  e8q_eval_set_lines(&set, text, tok, 40);
  assert_int_equal(set.n, 40);
  assert_int_equal(set.len[0], g.n_first);
  for (int i = 0; i < g.n_first; i++) assert_int_equal(set.seq[0][i], g.first_ids[i]);
  e8q_eval_result r = e8q_eval_run(m, &set, 0);
  assert_int_equal(r.tokens, g.tokens);
  print_message("mean NLL %.6f (golden %.6f)\n", r.mean_nll, g.mean_nll);
  T_NEAR(r.mean_nll, g.mean_nll, tol, "per-line mean NLL");
  T_NEAR(r.ppl, exp(r.mean_nll), 1e-12, "ppl");
  /* the same lines pre-tokenized: [BOS]+ids of each line concatenated in an id file */
  char *dir = t_tmpdir("fwd_eval_lines_ids"), ip[1024];
  snprintf(ip, sizeof ip, "%s/lines.ids", dir);
  size_t total = 0;
  for (int i = 0; i < set.n; i++) total += (size_t)set.len[i];
  uint32_t *raw = malloc(sizeof(uint32_t) * total);
  for (int i = 0, k = 0; i < set.n; i++)
    for (int t = 0; t < set.len[i]; t++) raw[k++] = (uint32_t)set.seq[i][t];
  t_write_file(ip, raw, sizeof(uint32_t) * total);
  e8q_eval_set set2;
  e8q_eval_set_lines(&set2, ip, NULL, 40);
  assert_int_equal(set2.n, 40);
  e8q_eval_result r2 = e8q_eval_run(m, &set2, 0);
  assert_int_equal(r2.tokens, r.tokens);
  assert_memory_equal(&r2.sum_nll, &r.sum_nll, sizeof(double));
  e8q_eval_set_free(&set2);
  free(raw), free(dir);
  e8q_eval_set_free(&set);
  e8q_tokenizer_free(tok);
  e8q_model_free(m);
  free(used), free(mp), free(tp), free(text);
}

static void test_forward_eval_bin(void **s) {
  (void)s;
  check_per_line("models/stories260K/stories260K.bin", "models/stories260K/tok512.bin", 5e-4);
}
static void test_forward_eval_bin_default_tok(void **s) {
  (void)s; /* tok512.model found beside the .bin (e8q_tokenizer_find) */
  check_per_line("models/stories260K/stories260K.bin", NULL, 5e-4);
}
static void test_forward_eval_hf(void **s) { (void)s; check_per_line("models/stories260K-hf", NULL, 5e-4); }
static void test_forward_eval_hf_spm_on_bin(void **s) {
  (void)s; /* the SentencePiece form of the same vocabulary gives the same result */
  check_per_line("models/stories260K/stories260K.bin", "models/stories260K/tok512.model", 5e-4);
}
static void test_forward_eval_bf16(void **s) { (void)s; check_per_line("models/stories260K-hf-bf16", NULL, 1e-2); }

/* ---------------------------------------------------------------- windows and id files */
static void test_forward_eval_windows(void **s) {
  (void)s;
  char *mp = t_shared_path("models/stories260K-hf");
  e8q_model *m = e8q_model_load(mp);
  /* an id file of 3 windows of 50 plus a tail of 7 */
  int n = 157;
  uint32_t raw[157];
  int ids[157];
  for (int i = 0; i < n; i++) ids[i] = (int)(raw[i] = (uint32_t)((i * 131 + 7) % 512));
  char *dir = t_tmpdir("fwd_eval_ids");
  char path[1024];
  snprintf(path, sizeof path, "%s/x.ids", dir);
  t_write_file(path, raw, sizeof raw);
  e8q_eval_set set;
  e8q_eval_set_windows(&set, path, NULL, 512, 50, 0);
  assert_int_equal(set.n, 3);
  for (int w = 0; w < 3; w++) {
    assert_int_equal(set.len[w], 50);
    for (int i = 0; i < 50; i++) assert_int_equal(set.seq[w][i], ids[w * 50 + i]);
  }
  e8q_eval_result r = e8q_eval_run(m, &set, 0);
  assert_int_equal(r.tokens, 3 * 49);
  /* the same windows as one batch of 3 sequences through e8q_model_nll */
  int tg[150];
  for (int w = 0; w < 3; w++)
    for (int t = 0; t < 50; t++) tg[w * 50 + t] = t < 49 ? ids[w * 50 + t + 1] : -1;
  long cnt;
  double direct = e8q_model_nll(m, 3, 50, ids, tg, &cnt);
  assert_int_equal(cnt, 147);
  T_NEAR(r.sum_nll, direct, 1e-6 * direct, "windowed sum NLL vs batched");
  e8q_eval_set_free(&set);
  /* shorter than one window: scored as one */
  e8q_eval_set_windows(&set, path, NULL, 512, 400, 0);
  assert_int_equal(set.n, 1);
  assert_int_equal(set.len[0], 157);
  e8q_eval_set_free(&set);
  /* a sequence longer than the model's 512 positions is scored on its first 512 tokens */
  uint32_t lraw[600];
  int lids[600];
  for (int i = 0; i < 600; i++) lids[i] = (int)(lraw[i] = (uint32_t)(i ? (i * 17 + 3) % 512 : 1));
  for (int i = 1; i < 600; i++)
    if (lids[i] == 1) lids[i] = (int)(lraw[i] = 5); /* one BOS: one sequence */
  char lp[1024];
  snprintf(lp, sizeof lp, "%s/long.ids", dir);
  t_write_file(lp, lraw, sizeof lraw);
  e8q_eval_set_lines(&set, lp, NULL, 3);
  assert_int_equal(set.n, 1);
  assert_int_equal(set.len[0], 600);
  r = e8q_eval_run(m, &set, 0);
  assert_int_equal(r.tokens, 511);
  int tg512[512];
  for (int t = 0; t < 512; t++) tg512[t] = t < 511 ? lids[t + 1] : -1;
  double direct512 = e8q_model_nll(m, 1, 512, lids, tg512, &cnt);
  T_NEAR(r.sum_nll, direct512, 1e-9 * direct512, "truncated sequence NLL");
  e8q_eval_set_free(&set);
  /* an id beyond the vocabulary is refused */
  E8Q_EXPECT_FATAL(e8q_eval_set_windows(&set, path, NULL, 100, 50, 0), "x.ids");
  e8q_model_free(m);
  free(mp), free(dir);
}

/* ---------------------------------------------------------------- tokenizer / model mismatch */
static void test_forward_tokenizer_mismatch(void **s) {
  (void)s;
  char *dir = t_tmpdir("fwd_tok_mismatch");
  e8q_demo_write(dir, 3); /* a 300-piece tokenizer */
  char tok[1024];
  snprintf(tok, sizeof tok, "%s/tokenizer.model", dir);
  char *mp = t_shared_path("models/stories260K/stories260K.bin");
  e8q_model *m = e8q_model_load(mp);
  E8Q_EXPECT_FATAL(e8q_eval_open_tokenizer(mp, &m->cfg, tok, 1, NULL), tok, "stories260K.bin", "300", "512");
  e8q_model_free(m);
  /* and the other way round: the demo model with stories260K's tokenizer */
  char *t512 = t_shared_path("models/stories260K/tok512.bin");
  m = e8q_model_load(dir);
  E8Q_EXPECT_FATAL(e8q_eval_open_tokenizer(dir, &m->cfg, t512, 1, NULL), "tok512.bin", dir, "512", "300");
  e8q_model_free(m);
  free(mp), free(t512), free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_eval_bin),     cmocka_unit_test(test_forward_eval_bin_default_tok),
      cmocka_unit_test(test_forward_eval_hf),      cmocka_unit_test(test_forward_eval_hf_spm_on_bin),
      cmocka_unit_test(test_forward_eval_bf16),    cmocka_unit_test(test_forward_eval_windows),
      cmocka_unit_test(test_forward_tokenizer_mismatch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
