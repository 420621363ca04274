/* tests/io/test_safetensors.c: safetensors reading (stories260K f32 and bf16), the HF directory
 * layer (single and sharded), the atomic writer, f16/bf16 conversions, and every kind of bad
 * header, each built from a good file by byte edits. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

static char *join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s", a, b);
  return p;
}

/* exact double-precision value of an f16 bit pattern (slow, obviously correct) */
static double f16_value_ref(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31) v = m ? NAN : INFINITY;
  else if (e == 0) v = ldexp((double)m, -24);
  else v = ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

/* ---------------------------------------------------------------- conversions */

static void test_f16_exhaustive(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    double r = f16_value_ref((uint16_t)h);
    float f = e8q_f16_to_f32((uint16_t)h);
    if (isnan(r)) {
      assert_true(isnan(f));
      assert_true(isnan(e8q_f16_to_f32(e8q_f32_to_f16(f))));
      continue;
    }
    if ((double)f != r) fail_msg("f16 0x%04x: %.10g vs %.10g", h, f, r);
    if (e8q_f32_to_f16(f) != (uint16_t)h) fail_msg("f16 0x%04x does not round-trip", h);
  }
  /* midpoints between consecutive positive finite f16 values round to the even neighbour; points just
   * above/below a midpoint round up/down */
  for (uint32_t h = 0; h < 0x7bff; h++) {
    double a = f16_value_ref((uint16_t)h), b = f16_value_ref((uint16_t)(h + 1));
    float mid = (float)((a + b) / 2); /* exact in f32 */
    assert_true((double)mid == (a + b) / 2);
    uint16_t want = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    if (e8q_f32_to_f16(mid) != want) fail_msg("midpoint above 0x%04x rounds to 0x%04x", h, e8q_f32_to_f16(mid));
    if (e8q_f32_to_f16(-mid) != (uint16_t)(want | 0x8000)) fail_msg("negative midpoint above 0x%04x", h);
    if (e8q_f32_to_f16(nextafterf(mid, INFINITY)) != h + 1) fail_msg("above midpoint 0x%04x", h);
    if (e8q_f32_to_f16(nextafterf(mid, 0)) != h) fail_msg("below midpoint 0x%04x", h);
  }
  assert_int_equal(e8q_f32_to_f16(65519.99f), 0x7bff);
  assert_int_equal(e8q_f32_to_f16(65520.0f), 0x7c00);
  assert_int_equal(e8q_f32_to_f16(1e30f), 0x7c00);
  assert_int_equal(e8q_f32_to_f16(-INFINITY), 0xfc00);
  assert_int_equal(e8q_f32_to_f16(0x1p-25f), 0);           /* tie between 0 and the smallest subnormal */
  assert_int_equal(e8q_f32_to_f16(0x1.000002p-25f), 1);    /* just above the tie */
}

static void test_bf16_rounding(void **state) {
  (void)state;
  t_rng rng = {t_fresh_seed("bf16")};
  for (uint32_t h = 0; h < 65536; h++) { /* every bf16 value round-trips */
    float f = e8q_bf16_to_f32((uint16_t)h);
    if (isnan(f)) assert_true(isnan(e8q_bf16_to_f32(e8q_f32_to_bf16(f))));
    else if (e8q_f32_to_bf16(f) != h) fail_msg("bf16 0x%04x does not round-trip", h);
  }
  for (int i = 0; i < 200000; i++) { /* random f32: nearest bf16, ties to even, by double arithmetic */
    uint32_t u = (uint32_t)t_rng_u64(&rng);
    float f;
    memcpy(&f, &u, 4);
    if (!isfinite(f)) continue;
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double vh = e8q_bf16_to_f32(hi);
    if (isinf(vh)) vh = copysign(ldexp(1.0, 128), vh); /* IEEE rounds as if the exponent were unbounded */
    double dl = fabs((double)e8q_bf16_to_f32(lo) - f), dh = fabs(vh - f);
    uint16_t want = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    if (e8q_f32_to_bf16(f) != want) fail_msg("bf16 of 0x%08x: 0x%04x, want 0x%04x", u, e8q_f32_to_bf16(f), want);
  }
}

/* ---------------------------------------------------------------- stories260K */

static void test_read_stories_f32_bf16(void **state) {
  (void)state;
  char *d32 = t_shared_path("models/stories260K-hf"), *d16 = t_shared_path("models/stories260K-hf-bf16");
  e8q_st_model *m32 = e8q_st_model_open(d32), *m16 = e8q_st_model_open(d16);
  assert_int_equal(m32->n_files, 1);
  const e8q_safetensors *st = m32->files[0];
  /* 5 layers x 9 tensors + embed + final norm (tied head) */
  assert_int_equal(st->n_tensors, 5 * 9 + 2);
  assert_int_equal(st->n_meta, 1);
  assert_string_equal(st->meta_keys[0], "format");
  assert_string_equal(st->meta_values[0], "pt");
  const e8q_st_tensor *t = e8q_st_find(st, "model.layers.0.mlp.down_proj.weight");
  assert_non_null(t);
  assert_int_equal(t->dtype, E8Q_DT_F32);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 64);
  assert_int_equal(t->shape[1], 172);
  assert_int_equal(e8q_st_numel(t), 64 * 172);
  assert_null(e8q_st_find(st, "lm_head.weight"));
  for (int i = 0; i < st->n_tensors; i++) {
    const e8q_st_tensor *a = &st->tensors[i];
    const e8q_safetensors *f16file;
    const e8q_st_tensor *b = e8q_st_model_find(m16, a->name, &f16file);
    assert_non_null(b);
    assert_int_equal(b->dtype, E8Q_DT_BF16);
    int64_t n = e8q_st_numel(a);
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    e8q_st_model_read_f32(m32, a->name, a->ndim, a->shape, x);
    e8q_st_model_read_f32(m16, a->name, a->ndim, a->shape, y);
    /* the f32 path is the file's bytes */
    assert_memory_equal(x, e8q_st_data(st, a), (size_t)n * 4);
    double ss = 0;
    for (int64_t k = 0; k < n; k++) {
      if (y[k] != e8q_bf16_to_f32(e8q_f32_to_bf16(x[k])))
        fail_msg("%s[%lld]: bf16 file has %.9g, round-to-nearest-even of %.9g is %.9g", a->name, (long long)k,
                 y[k], x[k], e8q_bf16_to_f32(e8q_f32_to_bf16(x[k])));
      ss += (double)x[k] * x[k];
    }
    assert_true(ss > 0); /* real weights, not zeros */
    free(x);
    free(y);
  }
  e8q_st_model_close(m32);
  e8q_st_model_close(m16);
  free(d32);
  free(d16);
}

/* ---------------------------------------------------------------- writer */

static const e8q_dtype k_all[] = {E8Q_DT_F32, E8Q_DT_F16, E8Q_DT_BF16, E8Q_DT_F64, E8Q_DT_I64, E8Q_DT_I32,
                                  E8Q_DT_U32, E8Q_DT_I16, E8Q_DT_U16,  E8Q_DT_I8,  E8Q_DT_U8,  E8Q_DT_BOOL};

static void test_writer_roundtrip_all_dtypes(void **state) {
  (void)state;
  char *dir = t_tmpdir("st_writer");
  char *path = join(dir, "all.safetensors");
  t_rng rng = {t_fresh_seed("writer")};
  int nt = (int)(sizeof k_all / sizeof k_all[0]);
  uint8_t *bytes[16];
  size_t nbytes[16];
  int64_t shapes[16][3];
  e8q_st_writer *w = e8q_st_writer_begin(path);
  e8q_st_writer_meta(w, "format", "pt");
  e8q_st_writer_meta(w, "e8q", "test");
  for (int i = 0; i < nt; i++) {
    shapes[i][0] = 1 + (int64_t)(t_rng_u64(&rng) % 5);
    shapes[i][1] = 1 + (int64_t)(t_rng_u64(&rng) % 7);
    shapes[i][2] = 3;
    nbytes[i] = (size_t)(shapes[i][0] * shapes[i][1] * 3) * e8q_dtype_size(k_all[i]);
    bytes[i] = malloc(nbytes[i]);
    for (size_t k = 0; k < nbytes[i]; k++) bytes[i][k] = (uint8_t)t_rng_u64(&rng);
    char name[64];
    snprintf(name, sizeof name, "t.%s", e8q_dtype_name(k_all[i]));
    e8q_st_writer_declare(w, name, k_all[i], 3, shapes[i]);
  }
  int64_t zero_shape[1] = {0};
  e8q_st_writer_declare(w, "empty", E8Q_DT_F32, 1, zero_shape);
  e8q_st_writer_declare(w, "scalar", E8Q_DT_F32, 0, NULL);
  for (int i = 0; i < nt; i++) /* written in uneven chunks */
    for (size_t k = 0; k < nbytes[i];) {
      size_t c = 1 + t_rng_u64(&rng) % 9;
      if (c > nbytes[i] - k) c = nbytes[i] - k;
      e8q_st_writer_write(w, bytes[i] + k, c);
      k += c;
    }
  float pi = 3.25f;
  e8q_st_writer_write(w, &pi, 4);
  e8q_st_writer_finish(w);

  e8q_safetensors *st = e8q_st_open(path);
  assert_int_equal(st->n_tensors, nt + 2);
  assert_int_equal(st->n_meta, 2);
  assert_int_equal(st->data_offset % 8, 0);
  for (int i = 0; i < nt; i++) {
    char name[64];
    snprintf(name, sizeof name, "t.%s", e8q_dtype_name(k_all[i]));
    const e8q_st_tensor *t = e8q_st_find(st, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, k_all[i]);
    assert_int_equal(t->ndim, 3);
    for (int d = 0; d < 3; d++) assert_int_equal(t->shape[d], shapes[i][d]);
    assert_int_equal(t->end - t->begin, nbytes[i]);
    assert_memory_equal(e8q_st_data(st, t), bytes[i], nbytes[i]);
    free(bytes[i]);
  }
  assert_int_equal(e8q_st_numel(e8q_st_find(st, "empty")), 0);
  float got;
  e8q_st_read_f32(st, "scalar", 0, NULL, &got);
  assert_true(got == 3.25f);
  e8q_st_close(st);
  /* no temporary left behind */
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir);
  assert_int_equal(system(cmd), 0);
  free(path);
  free(dir);
}

/* f32 weights written as f16 and bf16 read back as the rounded values */
static void test_writer_float_conversions(void **state) {
  (void)state;
  char *dir = t_tmpdir("st_conv");
  char *path = join(dir, "c.safetensors");
  t_rng rng = {t_fresh_seed("conv")};
  enum { N = 1000 };
  float x[N];
  uint16_t h[N], b[N];
  for (int i = 0; i < N; i++) {
    x[i] = (float)(t_rng_normal(&rng) * 3);
    h[i] = e8q_f32_to_f16(x[i]);
    b[i] = e8q_f32_to_bf16(x[i]);
  }
  int64_t shape[2] = {10, 100};
  e8q_st_writer *w = e8q_st_writer_begin(path);
  e8q_st_writer_declare(w, "h", E8Q_DT_F16, 2, shape);
  e8q_st_writer_declare(w, "b", E8Q_DT_BF16, 2, shape);
  e8q_st_writer_write(w, h, sizeof h);
  e8q_st_writer_write(w, b, sizeof b);
  e8q_st_writer_finish(w);
  e8q_safetensors *st = e8q_st_open(path);
  float y[N];
  e8q_st_read_f32(st, "h", 2, shape, y);
  for (int i = 0; i < N; i++) {
    assert_true(y[i] == e8q_f16_to_f32(h[i]));
    T_NEAR(y[i], x[i], fabs(x[i]) * 0x1p-11 + 0x1p-25, "f16 rounding error");
  }
  e8q_st_read_f32(st, "b", 2, shape, y);
  for (int i = 0; i < N; i++) T_NEAR(y[i], x[i], fabs(x[i]) * 0x1p-8, "bf16 rounding error");
  e8q_st_close(st);
  free(path);
  free(dir);
}

static void test_sharded_model(void **state) {
  (void)state;
  char *src = t_shared_path("models/stories260K-hf");
  e8q_st_model *m = e8q_st_model_open(src);
  const e8q_safetensors *st = m->files[0];
  char *dir = t_tmpdir("st_sharded");
  /* tensors alternate between two shards; the index maps each to its file */
  const char *shard[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  for (int s = 0; s < 2; s++) {
    char *p = join(dir, shard[s]);
    e8q_st_writer *w = e8q_st_writer_begin(p);
    for (int i = s; i < st->n_tensors; i += 2)
      e8q_st_writer_declare(w, st->tensors[i].name, st->tensors[i].dtype, st->tensors[i].ndim, st->tensors[i].shape);
    for (int i = s; i < st->n_tensors; i += 2)
      e8q_st_writer_write(w, e8q_st_data(st, &st->tensors[i]), st->tensors[i].end - st->tensors[i].begin);
    e8q_st_writer_finish(w);
    free(p);
  }
  char *idx = join(dir, "model.safetensors.index.json");
  FILE *f = fopen(idx, "w");
  fprintf(f, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
  for (int i = 0; i < st->n_tensors; i++)
    fprintf(f, "%s\"%s\": \"%s\"", i ? ", " : "", st->tensors[i].name, shard[i % 2]);
  fprintf(f, "}}\n");
  fclose(f);

  e8q_st_model *sm = e8q_st_model_open(dir);
  assert_int_equal(sm->n_files, 2);
  assert_int_equal(sm->n_index, st->n_tensors);
  for (int i = 0; i < st->n_tensors; i++) {
    const e8q_st_tensor *a = &st->tensors[i];
    const e8q_safetensors *holder = NULL;
    const e8q_st_tensor *b = e8q_st_model_find(sm, a->name, &holder);
    assert_non_null(b);
    assert_non_null(strstr(holder->path, shard[i % 2]));
    int64_t n = e8q_st_numel(a);
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    e8q_st_model_read_f32(m, a->name, a->ndim, a->shape, x);
    e8q_st_model_read_f32(sm, a->name, a->ndim, a->shape, y);
    assert_memory_equal(x, y, (size_t)n * 4);
    free(x);
    free(y);
  }
  assert_null(e8q_st_model_find(sm, "lm_head.weight", NULL));
  E8Q_EXPECT_FATAL(e8q_st_model_read_f32(sm, "lm_head.weight", -1, NULL, NULL), dir, "missing tensor",
                   "lm_head.weight");
  e8q_st_model_close(sm);

  /* a shard named in the index but absent */
  char *p2 = join(dir, shard[1]);
  assert_int_equal(unlink(p2), 0);
  E8Q_EXPECT_FATAL(e8q_st_model_open(dir), "model.safetensors.index.json", shard[1], "missing");
  free(p2);
  free(idx);
  free(dir);
  e8q_st_model_close(m);
  free(src);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f16_exhaustive),
      cmocka_unit_test(test_bf16_rounding),
      cmocka_unit_test(test_read_stories_f32_bf16),
      cmocka_unit_test(test_writer_roundtrip_all_dtypes),
      cmocka_unit_test(test_writer_float_conversions),
      cmocka_unit_test(test_sharded_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
