/* tests/model/test_forward_golden.c: stories260K in its three layouts (llama2.c .bin, HF f32,
 * HF bf16) against golden/stories260K_greedy.json (computed in float64 by an independent
 * forward pass); the KV-cached step against the batched pass; one-block-at-a-time loading and
 * the Hessian taps; corrupt checkpoints refused with the file and tensor named. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/llama2c.h"
#include "io/safetensors.h"
#include "kernels/transformer.h"
#include "testutil.h"
#include "worker/forward.h"

#define N_GREEDY 100

typedef struct {
  int ids[N_GREEDY];
  float logits[3][8];
} golden;

static void golden_load(golden *g) {
  char *path = t_shared_path("golden/stories260K_greedy.json");
  char *text = t_read_file(path, NULL);
  cJSON *root = cJSON_Parse(text);
  assert_non_null(root);
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "ids");
  assert_int_equal(cJSON_GetArraySize(ids), N_GREEDY);
  for (int i = 0; i < N_GREEDY; i++) g->ids[i] = cJSON_GetArrayItem(ids, i)->valueint;
  const cJSON *lg = cJSON_GetObjectItemCaseSensitive(root, "logits_first8_at_pos");
  for (int p = 0; p < 3; p++) {
    char key[4];
    snprintf(key, sizeof key, "%d", p);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(lg, key);
    assert_int_equal(cJSON_GetArraySize(arr), 8);
    for (int i = 0; i < 8; i++) g->logits[p][i] = (float)cJSON_GetArrayItem(arr, i)->valuedouble;
  }
  cJSON_Delete(root);
  free(text);
  free(path);
}

static const char *layouts[3] = {"models/stories260K/stories260K.bin", "models/stories260K-hf",
                                 "models/stories260K-hf-bf16"};

static e8q_model *load_layout(int which) {
  char *p = t_shared_path(layouts[which]);
  e8q_model *m = e8q_model_load(p);
  free(p);
  assert_int_equal(m->cfg.dim, 64);
  assert_int_equal(m->cfg.n_layers, 5);
  assert_int_equal(m->cfg.n_kv_heads, 4);
  assert_int_equal(m->cfg.vocab_size, 512);
  return m;
}

/* ---------------------------------------------------------------- logits at positions 0..2 */
static void check_logits(int which) {
  golden g;
  golden_load(&g);
  e8q_model *m = load_layout(which);
  int ids[3] = {1, g.ids[0], g.ids[1]};
  float *logits = malloc(sizeof(float) * 3 * 512);
  e8q_model_forward(m, 1, 3, ids, logits);
  for (int p = 0; p < 3; p++)
    for (int i = 0; i < 8; i++) T_NEAR(logits[p * 512 + i], g.logits[p][i], 1e-4, "golden logit");
  free(logits);
  e8q_model_free(m);
}
static void test_forward_logits_bin(void **s) { (void)s; check_logits(0); }
static void test_forward_logits_hf(void **s) { (void)s; check_logits(1); }

/* ---------------------------------------------------------------- greedy ids, KV step == batched */
static void check_greedy(int which, int check_batched) {
  golden g;
  golden_load(&g);
  e8q_model *m = load_layout(which);
  int V = m->cfg.vocab_size;
  e8q_kv_cache kv;
  e8q_kv_init(&kv, &m->cfg, N_GREEDY + 1);
  int seq[N_GREEDY + 1];
  float *step_logits = malloc(sizeof(float) * N_GREEDY * V);
  seq[0] = m->cfg.bos_id;
  for (int t = 0; t < N_GREEDY; t++) {
    const float *l = e8q_model_step(m, &kv, seq[t], t);
    memcpy(step_logits + (size_t)t * V, l, sizeof(float) * V);
    seq[t + 1] = e8q_argmax(V, l);
  }
  for (int t = 0; t < N_GREEDY; t++)
    if (seq[t + 1] != g.ids[t]) fail_msg("%s: greedy id %d is %d, golden %d", layouts[which], t, seq[t + 1], g.ids[t]);
  if (check_batched) {
    /* the batched pass over the same 100 tokens gives the same logits at every position */
    float *bl = malloc(sizeof(float) * N_GREEDY * V);
    e8q_model_forward(m, 1, N_GREEDY, seq, bl);
    double worst = 0;
    for (size_t i = 0; i < (size_t)N_GREEDY * V; i++) worst = fmax(worst, fabs(bl[i] - step_logits[i]));
    print_message("KV step vs batched: max |diff| %.3g\n", worst);
    assert_true(worst < 1e-4);
    /* two sequences in one batch equal each run alone */
    int two[2 * 40];
    memcpy(two, seq, sizeof(int) * 40);
    memcpy(two + 40, seq + 50, sizeof(int) * 40);
    float *b2 = malloc(sizeof(float) * 80 * V), *b1 = malloc(sizeof(float) * 40 * V);
    e8q_model_forward(m, 2, 40, two, b2);
    e8q_model_forward(m, 1, 40, seq + 50, b1);
    for (size_t i = 0; i < (size_t)40 * V; i++) T_NEAR(b2[(size_t)40 * V + i], b1[i], 1e-5 * (1 + fabs(b1[i])), "batch of 2 vs alone");
    for (size_t i = 0; i < (size_t)40 * V; i++) T_NEAR(b2[i], bl[i], 1e-5 * (1 + fabs(bl[i])), "batch of 2 vs alone (first)");
    /* NLL through the chunked head equals NLL from the full logits */
    int tg[N_GREEDY];
    for (int t = 0; t < N_GREEDY; t++) tg[t] = t + 1 < N_GREEDY ? seq[t + 1] : -1;
    long cnt = 0;
    double nll = e8q_model_nll(m, 1, N_GREEDY, seq, tg, &cnt), want = 0;
    for (int t = 0; t + 1 < N_GREEDY; t++) want += e8q_nll(V, bl + (size_t)t * V, seq[t + 1]);
    assert_int_equal(cnt, N_GREEDY - 1);
    T_NEAR(nll, want, 1e-6 * want, "chunked NLL");
    free(bl), free(b2), free(b1);
  }
  free(step_logits);
  e8q_kv_free(&kv);
  e8q_model_free(m);
}
static void test_forward_greedy_bin(void **s) { (void)s; check_greedy(0, 0); }
static void test_forward_greedy_hf(void **s) { (void)s; check_greedy(1, 1); }
static void test_forward_greedy_bf16(void **s) { (void)s; check_greedy(2, 0); }

/* ---------------------------------------------------------------- block at a time + taps */
typedef struct {
  int calls[E8Q_N_GROUPS];
  int rows[E8Q_N_GROUPS], cols[E8Q_N_GROUPS];
  double sum[E8Q_N_GROUPS];
} tap_log;

static void tap_fn(void *ctx, int group, int rows, int cols, const float *x) {
  tap_log *t = ctx;
  t->calls[group]++;
  t->rows[group] = rows;
  t->cols[group] = cols;
  for (size_t i = 0; i < (size_t)rows * cols; i++) t->sum[group] += x[i];
}

static void test_forward_block_streaming(void **s) {
  (void)s;
  char *dir = t_shared_path("models/stories260K-hf");
  e8q_model *full = e8q_model_load(dir);
  e8q_model *outer = e8q_model_load_ex(dir, 0);
  assert_null(outer->blocks);
  const e8q_config *c = &outer->cfg;
  int n_seq = 2, T = 17, N = n_seq * T, V = c->vocab_size;
  int ids[34];
  for (int i = 0; i < N; i++) ids[i] = (i * 37 + 5) % V;
  float *x = malloc(sizeof(float) * N * c->dim);
  e8q_model_embed(outer, N, ids, x);
  e8q_st_model *st = e8q_st_model_open(dir);
  e8q_fwd_scratch scr = {0};
  for (int l = 0; l < c->n_layers; l++) {
    e8q_block b;
    e8q_block_load(st, c, l, &b);
    tap_log tl = {0};
    e8q_taps taps = {.fn = tap_fn, .ctx = &tl};
    /* the qkv tap sees rmsnorm(x) with the block's attn_norm */
    float *xn = malloc(sizeof(float) * N * c->dim);
    e8q_rmsnorm_ref(N, c->dim, x, b.attn_norm, (float)c->norm_eps, xn);
    double want = 0;
    for (int i = 0; i < N * c->dim; i++) want += xn[i];
    e8q_block_forward(&b, c, n_seq, T, x, &taps, &scr);
    int want_cols[4] = {c->dim, c->n_heads * c->head_dim, c->dim, c->hidden_dim};
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      assert_int_equal(tl.calls[g], 1);
      assert_int_equal(tl.rows[g], N);
      assert_int_equal(tl.cols[g], want_cols[g]);
    }
    T_NEAR(tl.sum[E8Q_GROUP_QKV], want, 1e-4 * (1 + fabs(want)), "qkv tap input");
    free(xn);
    e8q_block_free(&b);
  }
  e8q_fwd_scratch_free(&scr);
  e8q_st_model_close(st);
  float *l1 = malloc(sizeof(float) * N * V), *l2 = malloc(sizeof(float) * N * V);
  e8q_model_head(outer, N, x, l1);
  e8q_model_forward(full, n_seq, T, ids, l2);
  for (size_t i = 0; i < (size_t)N * V; i++) T_NEAR(l1[i], l2[i], 1e-5 * (1 + fabs(l2[i])), "streamed vs whole model");
  free(l1), free(l2), free(x), free(dir);
  e8q_model_free(outer);
  e8q_model_free(full);
}

/* ---------------------------------------------------------------- bad checkpoints */
static void test_forward_bad_bin(void **s) {
  (void)s;
  size_t n;
  char *bytes = t_read_shared("models/stories260K/stories260K.bin", &n, NULL);
  char *dir = t_tmpdir("fwd_bad_bin");
  char path[1024];
  /* truncated by 4 bytes */
  snprintf(path, sizeof path, "%s/trunc.bin", dir);
  t_write_file(path, bytes, n - 4);
  E8Q_EXPECT_FATAL(e8q_model_load(path), "trunc.bin", "does not match its llama2.c header", "1056540");
  /* NaN in the first element of wk: header 28 bytes + embed + rms_att + wq */
  size_t off = 28 + 4 * (size_t)(512 * 64 + 5 * 64 + 5 * 64 * 64);
  float nan = NAN;
  memcpy(bytes + off, &nan, 4);
  snprintf(path, sizeof path, "%s/nan.bin", dir);
  t_write_file(path, bytes, n);
  E8Q_EXPECT_FATAL(e8q_model_load(path), "nan.bin", "tensor wk", "non-finite");
  /* not a checkpoint at all: text where the header should be */
  snprintf(path, sizeof path, "%s/text.bin", dir);
  const char *txt = "Once upon a time there was a checkpoint that was not one.";
  t_write_file(path, txt, strlen(txt));
  E8Q_EXPECT_FATAL(e8q_model_load(path), "text.bin", "not a llama2.c v0 checkpoint");
  /* shorter than the header */
  snprintf(path, sizeof path, "%s/tiny.bin", dir);
  t_write_file(path, bytes, 10);
  E8Q_EXPECT_FATAL(e8q_model_load(path), "tiny.bin", "28-byte llama2.c header");
  free(bytes), free(dir);
}

static void copy_file(const char *from, const char *to) {
  size_t n;
  char *b = t_read_file(from, &n);
  t_write_file(to, b, n);
  free(b);
}

/* copies stories260K-hf's config.json into dir; a and b (1024 bytes each) get the path of its
 * model.safetensors and that of one in dir */
static void hf_config_into(const char *dir, char *a, char *b) {
  char *src = t_shared_path("models/stories260K-hf");
  snprintf(a, 1024, "%s/config.json", src), snprintf(b, 1024, "%s/config.json", dir);
  copy_file(a, b);
  snprintf(a, 1024, "%s/model.safetensors", src), snprintf(b, 1024, "%s/model.safetensors", dir);
  free(src);
}

static void test_forward_bad_hf(void **s) {
  (void)s;
  char *dir = t_tmpdir("fwd_bad_hf");
  char a[1024], b[1024];
  hf_config_into(dir, a, b);
  /* find where model.layers.3.mlp.up_proj.weight lives and put an Inf in it */
  e8q_safetensors *st = e8q_st_open(a);
  const char *victim = "model.layers.3.mlp.up_proj.weight";
  const e8q_st_tensor *t = e8q_st_find(st, victim);
  assert_non_null(t);
  size_t off = st->data_offset + t->begin + 4 * 100;
  e8q_st_close(st);
  size_t n;
  char *bytes = t_read_file(a, &n);
  float inf = INFINITY;
  memcpy(bytes + off, &inf, 4);
  t_write_file(b, bytes, n);
  E8Q_EXPECT_FATAL(e8q_model_load(dir), victim);
  free(bytes), free(dir);
}


/* ---------------------------------------------------------------- unshared classifier
 * stories260K rewritten with vocab_size -512 and the embedding appended as wcls: the
 * unshared-classifier path must give the same logits. */
static void test_forward_bin_unshared(void **s) {
  (void)s;
  char *src;
  size_t n;
  char *bytes = t_read_shared("models/stories260K/stories260K.bin", &n, &src);
  size_t emb = 4 * (size_t)512 * 64;
  char *out = malloc(n + emb);
  memcpy(out, bytes, n);
  memcpy(out + n, bytes + 28, emb);
  int32_t v = -512;
  memcpy(out + 5 * 4, &v, 4);
  char *dir = t_tmpdir("fwd_unshared"), path[1024];
  snprintf(path, sizeof path, "%s/unshared.bin", dir);
  t_write_file(path, out, n + emb);
  e8q_model *a = e8q_model_load(src), *b = e8q_model_load(path);
  assert_true(a->cfg.tied);
  assert_false(b->cfg.tied);
  assert_true(b->lm_head != b->embed);
  int ids[6] = {1, 403, 407, 261, 378, 432};
  float *la = malloc(sizeof(float) * 6 * 512), *lb = malloc(sizeof(float) * 6 * 512);
  e8q_model_forward(a, 1, 6, ids, la);
  e8q_model_forward(b, 1, 6, ids, lb);
  assert_memory_equal(la, lb, sizeof(float) * 6 * 512);
  /* one byte short of the unshared size is refused, naming the layout */
  t_write_file(path, out, n + emb - 1);
  E8Q_EXPECT_FATAL(e8q_model_load(path), "unshared.bin", "unshared classifier");
  e8q_model_free(a), e8q_model_free(b);
  free(la), free(lb), free(out), free(bytes), free(src), free(dir);
}

/* ---------------------------------------------------------------- HF tensors missing or misshapen
 * The stories260K-hf tensors rewritten with one left out, or one declared with another shape
 * of the same size. */
static void rewrite_hf(const char *dir, const char *drop, const char *reshape) {
  char a[1024], b[1024];
  hf_config_into(dir, a, b);
  e8q_safetensors *st = e8q_st_open(a);
  e8q_st_writer *w = e8q_st_writer_begin(b);
  for (int i = 0; i < st->n_tensors; i++) {
    const e8q_st_tensor *t = &st->tensors[i];
    if (!strcmp(t->name, drop)) continue;
    int64_t shape[E8Q_ST_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    if (!strcmp(t->name, reshape)) shape[0] = t->shape[1], shape[1] = t->shape[0];
    e8q_st_writer_declare(w, t->name, t->dtype, t->ndim, shape);
  }
  for (int i = 0; i < st->n_tensors; i++) {
    const e8q_st_tensor *t = &st->tensors[i];
    if (!strcmp(t->name, drop)) continue;
    e8q_st_writer_write(w, e8q_st_data(st, t), t->end - t->begin);
  }
  e8q_st_writer_finish(w);
  e8q_st_close(st);
}

static void test_forward_hf_tensor_checks(void **s) {
  (void)s;
  char *d1 = t_tmpdir("fwd_hf_missing"), *d2 = t_tmpdir("fwd_hf_shape");
  rewrite_hf(d1, "model.layers.2.self_attn.v_proj.weight", "");
  E8Q_EXPECT_FATAL(e8q_model_load(d1), "model.layers.2.self_attn.v_proj.weight", "missing");
  rewrite_hf(d2, "", "model.layers.4.mlp.down_proj.weight"); /* [64, 172] declared as [172, 64] */
  E8Q_EXPECT_FATAL(e8q_model_load(d2), "model.layers.4.mlp.down_proj.weight", "[64, 172]");
  /* both load when nothing is changed */
  char *d3 = t_tmpdir("fwd_hf_same");
  rewrite_hf(d3, "", "");
  e8q_model_free(e8q_model_load(d3));
  free(d1), free(d2), free(d3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_logits_bin),  cmocka_unit_test(test_forward_logits_hf),
      cmocka_unit_test(test_forward_greedy_bin),  cmocka_unit_test(test_forward_greedy_hf),
      cmocka_unit_test(test_forward_greedy_bf16), cmocka_unit_test(test_forward_block_streaming),
      cmocka_unit_test(test_forward_bad_bin),     cmocka_unit_test(test_forward_bad_hf),
      cmocka_unit_test(test_forward_bin_unshared), cmocka_unit_test(test_forward_hf_tensor_checks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
