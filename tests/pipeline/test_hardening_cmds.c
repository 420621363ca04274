/* tests/pipeline/test_hardening_cmds.c: the hardening issue's points that need a model, an
 * artifact or the e8q binary. A 2-bit artifact of stories260K-hf is built once, then:
 *   - eval/generate --artifact that fail after unpacking leave no $TMPDIR/e8q-artifact-* behind
 *     (one rank, and two ranks where the second is ended by MPI_Abort);
 *   - an artifact with consistent hashes but NaN in an SU or Inf in a fuse_scales is refused at
 *     open, naming the tensor (it used to evaluate to "mean_nll": null with exit 0);
 *   - 3000 random bytes appended: inspect --verify fails, naming the archive's end;
 *   - option misuse refused: eval --dense with --model, generate --top-p without --temperature,
 *     eval --ctx 1 before any artifact is opened;
 *   - generate --temperature 1e-38 / 1e-30 (and with --top-p) gives the greedy ids; the sampler
 *     at extreme temperatures, in process;
 *   - num_hidden_layers smaller than the checkpoint's layers: the plan names the extra tensors;
 *   - a weight of 3e38: the Hessian accumulation names the layer, the linear and the weight;
 *   - a model whose evaluation is not finite: eval is an error, not "mean_nll": null. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "coordinator/eval.h"
#include "coordinator/sample.h"
#include "io/artifact.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "shard/plan.h"
#include "testutil.h"
#include "worker/forward.h"
#include "worker/hessian.h"

static char *g_dir;      /* temporary directory of the artifact */
static char g_art[4200]; /* the 2-bit artifact */
static char *g_model;    /* stories260K-hf */

/* runs a shell command (stderr joined to stdout), returns its output (malloc'd) and exit status */
static char *run(const char *cmd, int *status) {
  char full[20000];
  snprintf(full, sizeof full, "%s 2>&1", cmd);
  return t_run(full, status);
}

/* fails unless the command exits non-zero with every needle in its output */
static void expect_refused(const char *cmd, const char *const *needles) {
  int st;
  char *out = run(cmd, &st);
  if (st == 0) fail_msg("expected a failure from: %s\n%s", cmd, out);
  for (int i = 0; needles[i]; i++)
    if (!strstr(out, needles[i])) fail_msg("output of '%s' lacks \"%s\":\n%s", cmd, needles[i], out);
  free(out);
}

static int setup(void **state) {
  (void)state;
  g_model = t_shared_path("models/stories260K-hf");
  char *text = t_shared_path("text/tinystories_valid_head.txt");
  g_dir = t_tmpdir("hardcmd");
  snprintf(g_art, sizeof g_art, "%s/a2.e8q", g_dir);
  char cmd[16384];
  snprintf(cmd, sizeof cmd,
           "OMP_NUM_THREADS=1 timeout 120 %s quantize --model %s --calib %s --calib-skip 1000 --devset 16 --ctx 64 "
           "--tune-iters 1 --seed 7 --ft none --bits 2 --out %s > %s/quantize.log 2>&1",
           E8Q_BIN, g_model, text, g_art, g_dir);
  print_message("$ %s\n", cmd);
  int rc = system(cmd) == 0 ? 0 : -1;
  if (rc) {
    snprintf(cmd, sizeof cmd, "cat %s/quantize.log >&2", g_dir);
    if (system(cmd)) {}
  }
  free(text);
  return rc;
}

static int teardown(void **state) {
  (void)state;
  if (t_rm_rf(g_dir)) {}
  free(g_dir), free(g_model);
  return 0;
}

/* entries of a directory other than . and .. */
static int count_entries(const char *dir, char *first, size_t cap) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (n++ == 0 && first) snprintf(first, cap, "%s", e->d_name);
  }
  closedir(d);
  return n;
}

/* ---------------------------------------------------------------- temporary directories */
static void test_tmpdir_removed_on_failure(void **state) {
  (void)state;
  char tmp[4300], cmd[16384], left[256] = "";
  snprintf(tmp, sizeof tmp, "%s/tmp", g_dir);
  mkdir(tmp, 0755);
  const char *const cases[] = {
      "%s %s eval --artifact %s --text /nonexistent/e8q-text.txt",
      "%s %s generate --artifact %s --prompt 'Once upon' --tokenizer /nonexistent/tok.model",
      "%s -np 2 %s eval --artifact %s --text /nonexistent/e8q-text.txt",
  };
  const char *mpirun = E8Q_MPIEXEC;
  for (int c = 0; c < 3; c++) {
    char inner[8192];
    snprintf(inner, sizeof inner, cases[c], c == 2 ? mpirun : "", E8Q_BIN, g_art);
    snprintf(cmd, sizeof cmd, "TMPDIR=%s OMP_NUM_THREADS=1 timeout 120 %s", tmp, inner);
    int st;
    char *out = run(cmd, &st);
    if (st == 0) fail_msg("expected a failure: %s", out);
    free(out);
    int n = count_entries(tmp, left, sizeof left);
    if (n != 0) fail_msg("case %d left %d entr%s in TMPDIR, e.g. %s", c, n, n > 1 ? "ies" : "y", left);
  }
  rmdir(tmp);
}

/* ---------------------------------------------------------------- damaged values */
/* a copy of the artifact whose model.safetensors has element `at` of tensor `name` set to v, with
 * every hash recomputed (the archive is consistent: only its values are wrong) */
static void write_damaged(const char *out, const char *name, int64_t at, float v) {
  e8q_artifact *a = e8q_artifact_open(g_art);
  e8q_artifact_writer *w = e8q_artifact_create(out);
  for (int i = 0; i < a->n; i++) {
    const char *mn = a->members[i].name;
    if (!strcmp(mn, "manifest.json") || !strcmp(mn, "manifest.json.sha256")) continue;
    size_t n = 0;
    char *buf = e8q_artifact_read(a, mn, &n);
    if (!strcmp(mn, "model.safetensors")) {
      e8q_safetensors *st = e8q_st_open_region(g_art, a->members[i].offset, a->members[i].size, "damaged");
      const e8q_st_tensor *t = e8q_st_find(st, name);
      if (!t) fail_msg("no tensor %s in %s", name, g_art);
      assert_int_equal(t->dtype, E8Q_DT_F32);
      assert_true(at < e8q_st_numel(t));
      memcpy(buf + st->data_offset + t->begin + 4 * (size_t)at, &v, 4);
      e8q_st_close(st);
    }
    e8q_artifact_add_bytes(w, mn, buf, n);
    free(buf);
  }
  e8q_artifact_finish(w, a->manifest);
  e8q_artifact_close(a);
}

static void test_nonfinite_scales_refused(void **state) {
  (void)state;
  struct {
    const char *tensor;
    int64_t at;
    float v;
    const char *what;
  } cases[] = {{"model.layers.0.self_attn.qkv_proj.SU", 3, NAN, "NaN"},
               {"model.layers.1.mlp.upgate_proj.fuse_scales", 1, INFINITY, "+Inf"},
               {"model.layers.2.mlp.down_proj.SV", 0, -INFINITY, "-Inf"}};
  char *text = t_shared_path("text/tinystories_valid_head.txt");
  for (int c = 0; c < 3; c++) {
    char bad[4300], cmd[16384];
    snprintf(bad, sizeof bad, "%s/bad%d.e8q", g_dir, c);
    write_damaged(bad, cases[c].tensor, cases[c].at, cases[c].v);
    /* the hashes are consistent */
    snprintf(cmd, sizeof cmd, "timeout 60 %s inspect %s --verify", E8Q_BIN, bad);
    int st;
    char *out = run(cmd, &st);
    if (st != 0) fail_msg("inspect --verify should pass the consistent archive: %s", out);
    free(out);
    for (int dense = 0; dense < 2; dense++) {
      snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 timeout 60 %s eval --artifact %s %s --text %s --per-line 2", E8Q_BIN,
               bad, dense ? "--dense" : "", text);
      const char *needles[] = {bad, cases[c].tensor, cases[c].what, "re-create it", NULL};
      expect_refused(cmd, needles);
    }
    snprintf(cmd, sizeof cmd, "timeout 60 %s generate --artifact %s --ids --tokens 3", E8Q_BIN, bad);
    const char *needles[] = {cases[c].tensor, NULL};
    expect_refused(cmd, needles);
    unlink(bad);
  }
  free(text);
}

static void test_appended_bytes_fail_verify(void **state) {
  (void)state;
  char copy[4300], cmd[16384];
  snprintf(copy, sizeof copy, "%s/appended.e8q", g_dir);
  size_t n = 0;
  char *s = t_read_file(g_art, &n);
  char *b = malloc(n + 3000);
  memcpy(b, s, n);
  t_rng r = {99};
  for (int i = 0; i < 3000; i++) b[n + i] = (char)(t_rng_u64(&r) | 1);
  t_write_file(copy, b, n + 3000);
  free(s), free(b);
  snprintf(cmd, sizeof cmd, "timeout 60 %s inspect %s --verify", E8Q_BIN, copy);
  const char *needles[] = {"archive end", "appended", NULL};
  expect_refused(cmd, needles);
  unlink(copy);
}

/* ---------------------------------------------------------------- options */
static void test_option_misuse_refused(void **state) {
  (void)state;
  char *text = t_shared_path("text/tinystories_valid_head.txt");
  char cmd[16384];
  snprintf(cmd, sizeof cmd, "timeout 60 %s eval --model %s --dense --text %s --per-line 2", E8Q_BIN, g_model, text);
  const char *n1[] = {"--dense applies to --artifact only", "drop --dense", NULL};
  expect_refused(cmd, n1);
  snprintf(cmd, sizeof cmd, "timeout 60 %s generate --model %s --top-p 0.9 --tokens 3 --ids", E8Q_BIN, g_model);
  const char *n2[] = {"--top-p 0.9", "--temperature", NULL};
  expect_refused(cmd, n2);
  /* --ctx 1 is refused before the artifact is even opened */
  snprintf(cmd, sizeof cmd, "timeout 60 %s eval --artifact /nonexistent/x.e8q --text %s --ctx 1", E8Q_BIN, text);
  int st;
  char *out = run(cmd, &st);
  assert_int_not_equal(st, 0);
  if (!strstr(out, "--ctx 1") || strstr(out, "/nonexistent/x.e8q")) fail_msg("output: %s", out);
  free(out);
  free(text);
}

/* ---------------------------------------------------------------- temperatures */
static char *generate_out(const char *extra) {
  char cmd[16384];
  snprintf(cmd, sizeof cmd, "timeout 60 %s generate --model %s --ids --tokens 25 %s", E8Q_BIN, g_model, extra);
  int st;
  char *out = run(cmd, &st);
  if (st != 0) fail_msg("generate %s failed: %s", extra, out);
  char *last = strrchr(out, '[');
  assert_non_null(last);
  char *end = strchr(last, ']');
  assert_non_null(end);
  end[1] = '\0'; /* the tokens/s line on stderr follows */
  char *ids = strdup(last);
  free(out);
  return ids;
}

static void test_tiny_temperature_is_greedy(void **state) {
  (void)state;
  char *greedy = generate_out("");
  const char *extras[] = {"--temperature 1e-38", "--temperature 1e-30", "--temperature 1e-38 --top-p 0.5 --seed 3"};
  for (int i = 0; i < 3; i++) {
    char *ids = generate_out(extras[i]);
    if (strcmp(ids, greedy) != 0) fail_msg("%s gives %s, greedy gives %s", extras[i], ids, greedy);
    free(ids);
  }
  free(greedy);
}

static void test_sampler_extremes(void **state) {
  (void)state;
  enum { N = 1000 };
  float logits[N];
  e8q_prob_id scratch[N];
  t_rng tr = {4242};
  for (int i = 0; i < N; i++) logits[i] = (float)(t_rng_normal(&tr) * 10.0);
  logits[417] = 80.0f; /* the argmax, well clear of the rest */
  logits[N - 1] = 79.0f;
  e8q_rng r;
  e8q_rng_init(&r, 7, E8Q_RNG_STREAM_TEST);
  const double tiny[] = {1e-38, 1e-30, 1e-300, 4.9e-324};
  for (int k = 0; k < 4; k++)
    for (int rep = 0; rep < 20; rep++) {
      assert_int_equal(e8q_sample_token(N, logits, tiny[k], 1.0, &r, scratch), 417);
      assert_int_equal(e8q_sample_token(N, logits, tiny[k], 0.5, &r, scratch), 417);
      assert_int_equal(e8q_sample_token(N, logits, tiny[k], 1e-9, &r, scratch), 417);
    }
  /* logits near the float limit do not overflow either */
  float big[3] = {3e38f, -3e38f, 2.9e38f};
  for (int rep = 0; rep < 20; rep++) assert_int_equal(e8q_sample_token(3, big, 1e-38, 1.0, &r, scratch), 0);
  /* a huge temperature: every token drawn, about uniformly */
  static int hits[N];
  memset(hits, 0, sizeof hits);
  const int draws = 200000;
  for (int d = 0; d < draws; d++) {
    int id = e8q_sample_token(N, logits, 1e6, 1.0, &r, scratch);
    assert_true(id >= 0 && id < N);
    hits[id]++;
  }
  int lo = draws, hi = 0;
  for (int i = 0; i < N; i++) lo = hits[i] < lo ? hits[i] : lo, hi = hits[i] > hi ? hits[i] : hi;
  if (lo < 120 || hi > 290) fail_msg("T = 1e6: hits per token between %d and %d, expected about %d", lo, hi, draws / N);
  /* two tied maxima at a tiny temperature share the draws */
  float tie[4] = {1, 5, 5, 2};
  int a = 0;
  for (int d = 0; d < 2000; d++) {
    int id = e8q_sample_token(4, tie, 1e-38, 1.0, &r, scratch);
    assert_true(id == 1 || id == 2);
    a += id == 1;
  }
  assert_true(a > 800 && a < 1200);
  /* a NaN logit is an error naming the token */
  float nan_l[3] = {1, NAN, 2};
  E8Q_EXPECT_FATAL(e8q_sample_token(3, nan_l, 1.0, 1.0, &r, scratch), "logit for token 1", "nan");
}

/* ---------------------------------------------------------------- model checks */
static void copy_file(const char *from, const char *to) {
  size_t n = 0;
  char *s = t_read_file(from, &n);
  t_write_file(to, s, n);
  free(s);
}

static void test_plan_refuses_extra_layers(void **state) {
  (void)state;
  char d[4300], p[4400], q[4400];
  snprintf(d, sizeof d, "%s/four-layers", g_dir);
  mkdir(d, 0755);
  snprintf(p, sizeof p, "%s/model.safetensors", g_model);
  snprintf(q, sizeof q, "%s/model.safetensors", d);
  copy_file(p, q);
  snprintf(p, sizeof p, "%s/config.json", g_model);
  char *cfg = t_read_file(p, NULL);
  char *at = strstr(cfg, "\"num_hidden_layers\": 5");
  assert_non_null(at);
  at[strlen("\"num_hidden_layers\": ")] = '4';
  snprintf(q, sizeof q, "%s/config.json", d);
  t_write_file(q, cfg, strlen(cfg));
  free(cfg);
  e8q_plan plan;
  E8Q_EXPECT_FATAL(e8q_plan_build(&plan, d, 1, 16, 64), d, "9 tensors of layers the config does not have",
                   "num_hidden_layers is 4", "up to 4", "model.layers.4.", "fix num_hidden_layers");
  assert_int_equal(t_rm_rf(d), 0);
}

static void test_hessian_overflow_named(void **state) {
  (void)state;
  e8q_config cfg;
  e8q_config_load(g_model, &cfg);
  e8q_st_model *st = e8q_st_model_open(g_model);
  e8q_block blk;
  e8q_block_load(st, &cfg, 1, &blk);
  e8q_st_model_close(st);
  blk.qkv.w[5] = 3e38f; /* a finite float32 weight whose products overflow */
  const int T = 16;
  e8q_hessian_acc acc;
  e8q_hessian_acc_init(&acc, &cfg, T);
  float *x = malloc(sizeof(float) * (size_t)T * cfg.dim); /* [T, dim] */
  t_rng r = {77};
  for (int i = 0; i < T * cfg.dim; i++) x[i] = (float)t_rng_normal(&r);
  e8q_fwd_scratch sc = {0};
  E8Q_EXPECT_FATAL(e8q_hessian_acc_seq(&acc, &blk, &cfg, x, &sc), "model.layers.1: the input of self_attn.",
                   "overflow float32", "largest weight is 3e+38", "model.layers.1.self_attn.q_proj.weight");
  e8q_fwd_scratch_free(&sc);
  e8q_hessian_acc_free(&acc);
  e8q_block_free(&blk);
  free(x);
}

static void test_eval_nonfinite_is_error(void **state) {
  (void)state;
  e8q_model *m = e8q_model_load(g_model);
  m->blocks[0].qkv.w[0] = 3e38f;
  e8q_eval_set s = {0};
  int seq[20];
  for (int i = 0; i < 20; i++) seq[i] = 1 + (i * 37) % 500;
  int *seqs[1] = {seq}, len[1] = {20};
  s.n = 1, s.seq = seqs, s.len = len;
  E8Q_EXPECT_FATAL(e8q_eval_run(m, &s, 0), "evaluation of", "non-finite NLL", "sequence 0");
  e8q_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tmpdir_removed_on_failure),
      cmocka_unit_test(test_nonfinite_scales_refused),
      cmocka_unit_test(test_appended_bytes_fail_verify),
      cmocka_unit_test(test_option_misuse_refused),
      cmocka_unit_test(test_tiny_temperature_is_greedy),
      cmocka_unit_test(test_sampler_extremes),
      cmocka_unit_test(test_plan_refuses_extra_layers),
      cmocka_unit_test(test_hessian_overflow_named),
      cmocka_unit_test(test_eval_nonfinite_is_error),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
