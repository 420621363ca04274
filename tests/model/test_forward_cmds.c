/* tests/model/test_forward_cmds.c: the `e8q generate | eval | demo` commands, run as the user
 * runs them (the built binary through popen), checked against the golden files. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "testutil.h"


/* the last non-empty line of s, parsed as JSON */
static cJSON *last_json(char *s) {
  size_t n = strlen(s);
  while (n && s[n - 1] == '\n') s[--n] = '\0';
  char *line = strrchr(s, '\n');
  line = line ? line + 1 : s;
  cJSON *j = cJSON_Parse(line);
  if (!j) fail_msg("last line is not JSON: %s", line);
  return j;
}

static cJSON *golden_greedy(void) {
  char *path = t_shared_path("golden/stories260K_greedy.json");
  char *text = t_read_file(path, NULL);
  cJSON *g = cJSON_Parse(text);
  assert_non_null(g);
  free(text), free(path);
  return g;
}

/* ---------------------------------------------------------------- generate */
static void check_generate_ids(const char *model_rel) {
  cJSON *g = golden_greedy();
  const cJSON *want = cJSON_GetObjectItemCaseSensitive(g, "ids");
  char *mp = t_shared_path(model_rel), cmd[2048];
  snprintf(cmd, sizeof cmd, "timeout 120 %s generate --model %s --tokens 100 --ids", E8Q_BIN, mp);
  int st;
  char *out = t_run(cmd, &st);
  assert_int_equal(st, 0);
  cJSON *got = last_json(out);
  assert_true(cJSON_IsArray(got));
  assert_int_equal(cJSON_GetArraySize(got), cJSON_GetArraySize(want));
  for (int i = 0; i < cJSON_GetArraySize(want); i++)
    if (cJSON_GetArrayItem(got, i)->valueint != cJSON_GetArrayItem(want, i)->valueint)
      fail_msg("%s: id %d is %d, golden %d", model_rel, i, cJSON_GetArrayItem(got, i)->valueint,
               cJSON_GetArrayItem(want, i)->valueint);
  cJSON_Delete(got), cJSON_Delete(g);
  free(out), free(mp);
}
static void test_forward_cmd_generate_bin(void **s) { (void)s; check_generate_ids("models/stories260K/stories260K.bin"); }
static void test_forward_cmd_generate_hf(void **s) { (void)s; check_generate_ids("models/stories260K-hf"); }
static void test_forward_cmd_generate_bf16(void **s) { (void)s; check_generate_ids("models/stories260K-hf-bf16"); }

static void test_forward_cmd_generate_text(void **s) {
  (void)s;
  cJSON *g = golden_greedy();
  const char *want = cJSON_GetObjectItemCaseSensitive(g, "text")->valuestring;
  char *mp = t_shared_path("models/stories260K/stories260K.bin"), cmd[2048];
  snprintf(cmd, sizeof cmd, "timeout 120 %s generate --model %s --tokens 100", E8Q_BIN, mp);
  int st;
  char *out = t_run(cmd, &st);
  assert_int_equal(st, 0);
  size_t n = strlen(out);
  assert_true(n > 0 && out[n - 1] == '\n');
  out[n - 1] = '\0';
  assert_string_equal(out, want);
  /* with a prompt: the text continues it */
  free(out);
  snprintf(cmd, sizeof cmd, "timeout 120 %s generate --model %s --prompt 'Once upon a time' --tokens 10", E8Q_BIN, mp);
  out = t_run(cmd, &st);
  assert_int_equal(st, 0);
  assert_true(strncmp(out, "Once upon a time, there was", 27) == 0);
  cJSON_Delete(g);
  free(out), free(mp);
}


static void test_forward_cmd_generate_sampled(void **s) {
  (void)s;
  /* the same seed gives the same ids; sampling at temperature 1.5 departs from greedy */
  cJSON *g = golden_greedy();
  const cJSON *greedy = cJSON_GetObjectItemCaseSensitive(g, "ids");
  char *mp = t_shared_path("models/stories260K-hf"), cmd[2048];
  snprintf(cmd, sizeof cmd, "timeout 120 %s generate --model %s --tokens 30 --ids --temperature 1.5 --top-p 0.95 --seed 7",
           E8Q_BIN, mp);
  int st;
  char *o1 = t_run(cmd, &st);
  assert_int_equal(st, 0);
  char *o2 = t_run(cmd, &st);
  assert_int_equal(st, 0);
  assert_string_equal(o1, o2);
  cJSON *ids = last_json(o1);
  int differ = 0;
  for (int i = 0; i < cJSON_GetArraySize(ids); i++)
    differ |= cJSON_GetArrayItem(ids, i)->valueint != cJSON_GetArrayItem(greedy, i)->valueint;
  assert_true(differ);
  cJSON_Delete(ids), cJSON_Delete(g);
  free(o1), free(o2), free(mp);
}

/* ---------------------------------------------------------------- eval */
static char *eval_cmd(const char *launcher, const char *model_rel, const char *extra, int *st) {
  char *mp = t_shared_path(model_rel), *tp = t_shared_path("text/tinystories_valid_head.txt"), cmd[4096];
  snprintf(cmd, sizeof cmd, "timeout 120 %s %s eval --model %s --text %s %s", launcher, E8Q_BIN, mp, tp, extra);
  char *out = t_run(cmd, st);
  free(mp), free(tp);
  return out;
}

static void test_forward_cmd_eval(void **s) {
  (void)s;
  int st;
  char *out = eval_cmd("", "models/stories260K-hf", "--per-line 40", &st);
  assert_int_equal(st, 0);
  cJSON *j = last_json(out);
  T_NEAR(cJSON_GetObjectItemCaseSensitive(j, "mean_nll")->valuedouble, 1.35651, 5e-4, "eval mean_nll");
  assert_int_equal((long)cJSON_GetObjectItemCaseSensitive(j, "tokens")->valuedouble, 4059);
  T_NEAR(cJSON_GetObjectItemCaseSensitive(j, "ppl")->valuedouble, exp(1.35651), 3e-3, "eval ppl");
  cJSON_Delete(j);
  free(out);
  /* windows mode over the first 40 kB of the text (cut at a line end) reports its windows */
  char *tp = t_shared_path("text/tinystories_valid_head.txt"), *mp = t_shared_path("models/stories260K/stories260K.bin");
  size_t n;
  char *text = t_read_file(tp, &n);
  size_t cut = 40000;
  while (cut < n && text[cut - 1] != '\n') cut++;
  char *dir = t_tmpdir("fwd_cmd_ctx"), path[1024], cmd[4096];
  snprintf(path, sizeof path, "%s/head.txt", dir);
  t_write_file(path, text, cut);
  snprintf(cmd, sizeof cmd, "timeout 120 %s eval --model %s --text %s --ctx 256", E8Q_BIN, mp, path);
  out = t_run(cmd, &st);
  free(text), free(tp), free(mp), free(dir);
  assert_int_equal(st, 0);
  j = last_json(out);
  double mean = cJSON_GetObjectItemCaseSensitive(j, "mean_nll")->valuedouble;
  int windows = cJSON_GetObjectItemCaseSensitive(j, "windows")->valueint;
  print_message("ctx 256: %d windows, mean NLL %.4f\n", windows, mean);
  assert_true(windows > 20 && isfinite(mean) && mean > 0.5 && mean < 3.0);
  assert_int_equal((long)cJSON_GetObjectItemCaseSensitive(j, "tokens")->valuedouble, (long)windows * 255);
  cJSON_Delete(j);
  free(out);
}

static void test_forward_cmd_eval_ranks(void **s) {
  (void)s;
  /* the per-sequence sums are reduced in a fixed order: 1 and 3 ranks give the same bits */
  char launcher[512];
  snprintf(launcher, sizeof launcher, "%s -np 3", E8Q_MPIEXEC);
  int st1, st3;
  char *o1 = eval_cmd("", "models/stories260K-hf", "--per-line 25", &st1);
  char *o3 = eval_cmd(launcher, "models/stories260K-hf", "--per-line 25", &st3);
  assert_int_equal(st1, 0);
  assert_int_equal(st3, 0);
  cJSON *a = last_json(o1), *b = last_json(o3);
  assert_int_equal(cJSON_GetObjectItemCaseSensitive(b, "ranks")->valueint, 3);
  double sa = cJSON_GetObjectItemCaseSensitive(a, "sum_nll")->valuedouble;
  double sb = cJSON_GetObjectItemCaseSensitive(b, "sum_nll")->valuedouble;
  if (memcmp(&sa, &sb, sizeof sa) != 0) fail_msg("sum_nll %.17g on 1 rank, %.17g on 3 ranks", sa, sb);
  cJSON_Delete(a), cJSON_Delete(b);
  free(o1), free(o3);
}

/* ---------------------------------------------------------------- options */
static void test_forward_cmd_options(void **s) {
  (void)s;
  const char *cmds[] = {"generate", "eval", "demo"};
  const char *mention[] = {"--tokens", "--per-line", "--seed"};
  char cmd[2048];
  int st;
  for (int i = 0; i < 3; i++) {
    snprintf(cmd, sizeof cmd, "timeout 60 %s %s --help", E8Q_BIN, cmds[i]);
    char *out = t_run(cmd, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, mention[i]));
    free(out);
    snprintf(cmd, sizeof cmd, "timeout 60 %s %s --bogus-option 2>&1", E8Q_BIN, cmds[i]);
    out = t_run(cmd, &st);
    assert_int_not_equal(st, 0);
    if (!strstr(out, "unknown option '--bogus-option'")) fail_msg("%s: message does not name the option: %s", cmds[i], out);
    free(out);
  }
  snprintf(cmd, sizeof cmd, "timeout 60 %s eval --model /nonexistent 2>&1", E8Q_BIN);
  char *out = t_run(cmd, &st);
  assert_int_not_equal(st, 0);
  assert_non_null(strstr(out, "--text"));
  free(out);
}

/* ---------------------------------------------------------------- demo */
static void test_forward_cmd_demo(void **s) {
  (void)s;
  char *dir = t_tmpdir("fwd_cmd_demo"), cmd[4096];
  int st;
  snprintf(cmd, sizeof cmd, "timeout 60 %s demo --out %s/m --seed 9", E8Q_BIN, dir);
  free(t_run(cmd, &st));
  assert_int_equal(st, 0);
  snprintf(cmd, sizeof cmd, "timeout 60 %s eval --model %s/m --text %s/m/eval.txt --per-line 20", E8Q_BIN, dir, dir);
  char *out = t_run(cmd, &st);
  assert_int_equal(st, 0);
  cJSON *j = last_json(out);
  double mean = cJSON_GetObjectItemCaseSensitive(j, "mean_nll")->valuedouble;
  assert_true(isfinite(mean) && mean > 0);
  cJSON_Delete(j);
  free(out);
  snprintf(cmd, sizeof cmd, "timeout 60 %s generate --model %s/m --prompt 'The cat' --tokens 8 --ids", E8Q_BIN, dir);
  out = t_run(cmd, &st);
  assert_int_equal(st, 0);
  j = last_json(out);
  assert_true(cJSON_IsArray(j) && cJSON_GetArraySize(j) <= 8);
  cJSON_Delete(j);
  free(out), free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_cmd_generate_bin),  cmocka_unit_test(test_forward_cmd_generate_hf),
      cmocka_unit_test(test_forward_cmd_generate_bf16), cmocka_unit_test(test_forward_cmd_generate_text),
      cmocka_unit_test(test_forward_cmd_generate_sampled),
      cmocka_unit_test(test_forward_cmd_eval),          cmocka_unit_test(test_forward_cmd_eval_ranks),
      cmocka_unit_test(test_forward_cmd_options),       cmocka_unit_test(test_forward_cmd_demo),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
