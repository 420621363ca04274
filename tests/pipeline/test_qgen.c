/* tests/pipeline/test_qgen.c: generation from a quantized artifact (issue 4, Integration).
 *
 * Artifacts of stories260K-hf at 2, 3 and 4 bits are built once (the e8q binary, the small calibration set
 * of tests/pipeline/pipeline.sh), then:
 *   - `e8q generate --artifact --ids` (every quantized linear through the fused kernels) gives
 *     the same greedy ids as `--dense` (the dense decode of the same linears), on 1 and 2 ranks,
 *     valid and not degenerate, with tokens/s on stderr; a prompt is encoded with the archive's
 *     own tokenizer;
 *   - in process, for each codebook (E8P12, RVQ3, RVQ4): the KV-cached step with the fused
 *     quantized linears gives the logits of the batched forward with them, and both stay close
 *     to the dense decode. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "common/comm.h"
#include "coordinator/artifact_model.h"
#include "testutil.h"
#include "worker/forward.h"

#define N_TOKENS 40

static char *g_dir;      /* temporary directory of the artifact */
static char g_art[4200]; /* the 4-bit artifact */
static char g_art_b[5][4200]; /* [bits]: the 2-, 3- and 4-bit artifacts (g_art_b[4] == g_art) */


static int setup(void **state) {
  (void)state;
  char *model = t_shared_path("models/stories260K-hf");
  char *text = t_shared_path("text/tinystories_valid_head.txt");
  g_dir = t_tmpdir("qgen");
  int rc = 0;
  for (int bits = 2; bits <= 4 && rc == 0; bits++) {
    snprintf(g_art_b[bits], sizeof g_art_b[bits], "%s/a%d.e8q", g_dir, bits);
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=1 timeout 120 %s quantize --model %s --calib %s --calib-skip 1000 --devset 24 --ctx 64 "
             "--tune-iters 2 --seed 7 --ft block --ft-epochs 1 --bits %d --out %s > %s/quantize.log 2>&1",
             E8Q_BIN, model, text, bits, g_art_b[bits], g_dir);
    print_message("$ %s\n", cmd);
    if (system(cmd) != 0) {
      snprintf(cmd, sizeof cmd, "cat %s/quantize.log >&2", g_dir);
      if (system(cmd)) {}
      rc = -1;
    }
  }
  snprintf(g_art, sizeof g_art, "%s", g_art_b[4]);
  free(model), free(text);
  return rc;
}

static int teardown(void **state) {
  (void)state;
  if (t_rm_rf(g_dir)) {}
  free(g_dir);
  return 0;
}

/* the ids printed by `generate --artifact A --ids` (last stdout line); *n gets their count;
 * the stderr text goes to *err (malloc'd) */
static int *generate_ids(const char *launcher, const char *extra, int *n, char **err) {
  char cmd[16384], errpath[4300];
  snprintf(errpath, sizeof errpath, "%s/generate.err", g_dir);
  snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 timeout 120 %s %s generate --artifact %s --ids --tokens %d %s 2> %s",
           launcher, E8Q_BIN, g_art, N_TOKENS, extra, errpath);
  int st;
  char *out = t_run(cmd, &st);
  *err = t_read_file(errpath, NULL);
  if (st != 0) fail_msg("generate failed (%d): %s", st, *err);
  size_t len = strlen(out);
  while (len && out[len - 1] == '\n') out[--len] = '\0';
  char *line = strrchr(out, '\n');
  cJSON *j = cJSON_Parse(line ? line + 1 : out);
  if (!cJSON_IsArray(j)) fail_msg("not a JSON list of ids: %s", out);
  *n = cJSON_GetArraySize(j);
  int *ids = malloc(sizeof(int) * (size_t)(*n + 1));
  for (int i = 0; i < *n; i++) ids[i] = cJSON_GetArrayItem(j, i)->valueint;
  cJSON_Delete(j);
  free(out);
  return ids;
}

/* ---------------------------------------------------------------- the command */
static void test_qgen_fused_equals_dense(void **state) {
  (void)state;
  int nf, nd, n2;
  char *ef, *ed, *e2;
  int *fused = generate_ids("", "", &nf, &ef);
  int *dense = generate_ids("", "--dense", &nd, &ed);
  int *two = generate_ids(E8Q_MPIEXEC " -np 2", "", &n2, &e2);
  /* stories260K's EOS never comes this early in greedy decoding: all N_TOKENS are there */
  assert_int_equal(nf, N_TOKENS);
  assert_int_equal(nd, N_TOKENS);
  assert_int_equal(n2, N_TOKENS);
  int distinct = 0;
  for (int i = 0; i < nf; i++) {
    if (fused[i] != dense[i]) fail_msg("id %d: fused kernels %d, dense decode %d", i, fused[i], dense[i]);
    if (fused[i] != two[i]) fail_msg("id %d: 1 rank %d, 2 ranks %d", i, fused[i], two[i]);
    if (fused[i] < 3 || fused[i] >= 512) fail_msg("id %d = %d is not a text token of the 512-token vocabulary", i, fused[i]);
    int seen = 0;
    for (int j = 0; j < i; j++) seen |= fused[j] == fused[i];
    distinct += !seen;
  }
  if (distinct < 10) fail_msg("only %d distinct ids in %d: a degenerate generation", distinct, nf);
  /* tokens per second on stderr, naming the path the linears took */
  if (!strstr(ef, "tokens/s") || !strstr(ef, "fused kernels")) fail_msg("fused run's stderr: %s", ef);
  if (!strstr(ed, "tokens/s") || !strstr(ed, "dense decode")) fail_msg("dense run's stderr: %s", ed);
  if (!strstr(e2, "tokens/s") || !strstr(e2, "fused kernels")) fail_msg("2-rank run's stderr: %s", e2);
  free(fused), free(dense), free(two), free(ef), free(ed), free(e2);
}

static void test_qgen_prompt_uses_archive_tokenizer(void **state) {
  (void)state;
  char cmd[16384];
  snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 timeout 120 %s generate --artifact %s --prompt 'Once upon a time' --tokens 20",
           E8Q_BIN, g_art);
  int st;
  char *out = t_run(cmd, &st);
  assert_int_equal(st, 0);
  if (strncmp(out, "Once upon a time", 16) != 0 || strlen(out) < 40) fail_msg("generated text: %s", out);
  free(out);
  /* --dense without --artifact, and both sources, are refused */
  snprintf(cmd, sizeof cmd, "%s generate --model x --artifact %s 2>&1", E8Q_BIN, g_art);
  out = t_run(cmd, &st);
  assert_int_not_equal(st, 0);
  assert_non_null(strstr(out, "not both"));
  free(out);
  snprintf(cmd, sizeof cmd, "%s generate --model x --dense 2>&1", E8Q_BIN);
  out = t_run(cmd, &st);
  assert_int_not_equal(st, 0);
  if (!strstr(out, "--dense applies to --artifact only")) fail_msg("--dense without --artifact: %s", out);
  free(out);
}

/* ---------------------------------------------------------------- step vs batched */
static double max_abs(const float *a, const float *b, size_t n, double *scale) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; i++) {
    d = fmax(d, fabs((double)a[i] - b[i]));
    s = fmax(s, fabs((double)b[i]));
  }
  *scale = s;
  return d;
}

/* bits: which artifact (2: E8P12, 3: RVQ3, 4: RVQ4) */
static void check_step_equals_batched(int bits) {
  const char *art = g_art_b[bits];
  /* MPI only now (the artifact's verification is collective): the command tests above launch
   * mpirun, which a singleton-initialised parent's environment would confuse */
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    MPI_Init(NULL, NULL);
    e8q_comm_global_open(-1); /* the process communicator the pipeline's collectives use */
  }
  e8q_artifact_model fa, da;
  e8q_artifact_model_open(&fa, art, 1);
  e8q_artifact_model_open(&da, art, 0);
  assert_int_equal(fa.q.bits, bits);
  const e8q_model *m = fa.m;
  const e8q_config *c = &m->cfg;
  /* really the fused path: no dense weight, a quantized form on every linear */
  for (int b = 0; b < c->n_layers; b++)
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      assert_null(m->blocks[b].lin[g].w);
      assert_non_null(m->blocks[b].lin[g].q);
      assert_non_null(da.m->blocks[b].lin[g].w);
    }
  enum { T = 48 };
  int ids[T];
  t_rng r = {t_fresh_seed("qgen step")};
  ids[0] = c->bos_id;
  for (int i = 1; i < T; i++) ids[i] = 3 + (int)(t_rng_u64(&r) % (uint64_t)(c->vocab_size - 3));
  size_t V = (size_t)c->vocab_size;
  float *batched = malloc(sizeof(float) * T * V), *dense = malloc(sizeof(float) * T * V);
  e8q_model_forward(m, 1, T, ids, batched);
  e8q_model_forward(da.m, 1, T, ids, dense);
  e8q_kv_cache kv;
  e8q_kv_init(&kv, c, T);
  double worst = 0, worst_dense = 0;
  for (int p = 0; p < T; p++) {
    const float *l = e8q_model_step(m, &kv, ids[p], p);
    double scale, sd;
    double d = max_abs(l, batched + (size_t)p * V, V, &scale);
    double dd = max_abs(batched + (size_t)p * V, dense + (size_t)p * V, V, &sd);
    assert_true(scale > 0.1); /* real logits, not zeros */
    if (d > 1e-4 * scale) fail_msg("%d bits, position %d: step vs batched (fused) differ by %.3g (max |logit| %.3g)", bits, p, d,
                                   scale);
    if (dd > 1e-4 * sd)
      fail_msg("%d bits, position %d: fused vs dense decode differ by %.3g (max |logit| %.3g)", bits, p, dd, sd);
    worst = fmax(worst, d / scale);
    worst_dense = fmax(worst_dense, dd / sd);
  }
  print_message("%d bits: max relative logit difference: step vs batched %.3g, fused vs dense %.3g\n", bits, worst,
                worst_dense);
  e8q_kv_free(&kv);
  free(batched), free(dense);
  e8q_artifact_model_close(&fa);
  e8q_artifact_model_close(&da);
}
static void test_qgen_step_equals_batched_e8p(void **s) { (void)s; check_step_equals_batched(2); }
static void test_qgen_step_equals_batched_rvq3(void **s) { (void)s; check_step_equals_batched(3); }
static void test_qgen_step_equals_batched_rvq4(void **s) { (void)s; check_step_equals_batched(4); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_qgen_fused_equals_dense),
      cmocka_unit_test(test_qgen_prompt_uses_archive_tokenizer),
      cmocka_unit_test(test_qgen_step_equals_batched_e8p),
      cmocka_unit_test(test_qgen_step_equals_batched_rvq3),
      cmocka_unit_test(test_qgen_step_equals_batched_rvq4),
  };
  int rc = cmocka_run_group_tests(tests, setup, teardown);
  int inited = 0;
  MPI_Initialized(&inited);
  if (inited) {
    e8q_comm_global_close();
    MPI_Finalize();
  }
  return rc;
}
