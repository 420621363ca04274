/* tests/io/test_safetensors.c: safetensors reading (stories260K f32 and bf16), the HF directory
 * layer (single and sharded), the atomic writer, f16/bf16 conversions, and every kind of bad
 * header, each built from a good file by byte edits. */
#define _GNU_SOURCE /* memfd_create */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

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
  char *path = t_join(dir, "all.safetensors");
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
  char *path = t_join(dir, "c.safetensors");
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
    char *p = t_join(dir, shard[s]);
    e8q_st_writer *w = e8q_st_writer_begin(p);
    for (int i = s; i < st->n_tensors; i += 2)
      e8q_st_writer_declare(w, st->tensors[i].name, st->tensors[i].dtype, st->tensors[i].ndim, st->tensors[i].shape);
    for (int i = s; i < st->n_tensors; i += 2)
      e8q_st_writer_write(w, e8q_st_data(st, &st->tensors[i]), st->tensors[i].end - st->tensors[i].begin);
    e8q_st_writer_finish(w);
    free(p);
  }
  char *idx = t_join(dir, "model.safetensors.index.json");
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
  char *p2 = t_join(dir, shard[1]);
  assert_int_equal(unlink(p2), 0);
  E8Q_EXPECT_FATAL(e8q_st_model_open(dir), "model.safetensors.index.json", shard[1], "missing");
  free(p2);
  free(idx);
  free(dir);
  e8q_st_model_close(m);
  free(src);
}


/* ---------------------------------------------------------------- bad files
 * Every bad file is made from a good one written by the writer: byte edits of the data, or a
 * string edit of the JSON header with the length prefix recomputed. */

typedef struct {
  char *dir, *good;   /* temp dir, path of the good file */
  uint8_t *bytes;     /* [n] the good file */
  size_t n;
  uint64_t hlen;      /* header length */
} badctx;

static const char *k_q = "model.layers.0.self_attn.q_proj.weight";
static const char *k_n = "model.norm.weight";

static badctx bad_setup(const char *tag) {
  badctx c;
  c.dir = t_tmpdir(tag);
  c.good = t_join(c.dir, "good.safetensors");
  int64_t sq[2] = {8, 4}, sn[1] = {4};
  float q[32], nw[4] = {1, 2, 3, 4};
  for (int i = 0; i < 32; i++) q[i] = 0.5f * (float)i - 3;
  uint16_t emb[6] = {0x3c00, 0x4000, 0xbc00, 0, 0x3800, 0x4200}; /* f16 */
  int64_t se[2] = {3, 2};
  e8q_st_writer *w = e8q_st_writer_begin(c.good);
  e8q_st_writer_meta(w, "format", "pt");
  e8q_st_writer_declare(w, "model.embed_tokens.weight", E8Q_DT_F16, 2, se);
  e8q_st_writer_declare(w, k_q, E8Q_DT_F32, 2, sq);
  e8q_st_writer_declare(w, k_n, E8Q_DT_F32, 1, sn);
  e8q_st_writer_write(w, emb, sizeof emb);
  e8q_st_writer_write(w, q, sizeof q);
  e8q_st_writer_write(w, nw, sizeof nw);
  e8q_st_writer_finish(w);
  c.bytes = (uint8_t *)t_read_file(c.good, &c.n);
  c.hlen = 0;
  for (int i = 7; i >= 0; i--) c.hlen = (c.hlen << 8) | c.bytes[i];
  /* the good file is good */
  e8q_safetensors *st = e8q_st_open(c.good);
  float back[32];
  e8q_st_read_f32(st, k_q, 2, sq, back);
  assert_memory_equal(back, q, sizeof q);
  e8q_st_read_f32(st, "model.embed_tokens.weight", 2, se, back);
  assert_true(back[0] == 1.0f && back[2] == -1.0f && back[5] == 3.0f);
  e8q_st_close(st);
  return c;
}

static void bad_free(badctx *c) {
  free(c->bytes);
  free(c->good);
  free(c->dir);
}

/* the good file with the header's first `from` replaced by `to`; returns the path (malloc'd) */
static char *bad_header_edit(badctx *c, const char *from, const char *to) {
  char *h = malloc(c->hlen + 1);
  memcpy(h, c->bytes + 8, c->hlen);
  h[c->hlen] = 0;
  char *at = strstr(h, from);
  if (!at) fail_msg("header lacks \"%s\"", from);
  size_t nh = c->hlen - strlen(from) + strlen(to);
  uint8_t *out = malloc(8 + nh + (c->n - 8 - c->hlen));
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)nh >> (8 * i));
  size_t pre = (size_t)(at - h);
  memcpy(out + 8, h, pre);
  memcpy(out + 8 + pre, to, strlen(to));
  memcpy(out + 8 + pre + strlen(to), at + strlen(from), c->hlen - pre - strlen(from));
  memcpy(out + 8 + nh, c->bytes + 8 + c->hlen, c->n - 8 - c->hlen);
  char *p = t_join(c->dir, "bad.safetensors");
  t_write_file(p, out, 8 + nh + (c->n - 8 - c->hlen));
  free(out);
  free(h);
  return p;
}

/* the good file cut to `len` bytes, or with bytes edited when `patch` is given */
static char *bad_bytes(badctx *c, size_t len, size_t at, const void *patch, size_t plen) {
  uint8_t *out = malloc(c->n);
  memcpy(out, c->bytes, c->n);
  if (patch) memcpy(out + at, patch, plen);
  char *p = t_join(c->dir, "bad.safetensors");
  t_write_file(p, out, len);
  free(out);
  return p;
}

static void test_bad_truncated(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_trunc");
  char *p = bad_bytes(&c, c.n - 3, 0, NULL, 0); /* inside the last tensor's data */
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, k_n, "past the end of the data block");
  free(p);
  p = bad_bytes(&c, 5, 0, NULL, 0); /* not even the length prefix */
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "truncated", "5 bytes");
  free(p);
  p = bad_bytes(&c, 0, 0, NULL, 0);
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "truncated");
  free(p);
  bad_free(&c);
}

static void test_bad_header_length_past_eof(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_hlen");
  uint8_t len[8] = {0};
  uint64_t v = c.n; /* 8 + n > file size */
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(v >> (8 * i));
  char *p = bad_bytes(&c, c.n, 0, len, 8);
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "header length", "past the end of the file");
  free(p);
  v = (uint64_t)1 << 40; /* absurd */
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(v >> (8 * i));
  p = bad_bytes(&c, c.n, 0, len, 8);
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "header length", "not a safetensors file");
  free(p);
  bad_free(&c);
}

static void test_bad_offsets_past_end(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_off");
  /* norm: 16 bytes at [172, 188] (12 f16 bytes + 128 f32 bytes before it) -> shifted past the end */
  char *p = bad_header_edit(&c, "[140,156]", "[1140,1156]");
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, k_n, "data_offsets [1140, 1156]", "past the end");
  free(p);
  bad_free(&c);
}

static void test_bad_overlapping_offsets(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_overlap");
  /* the norm's 16 bytes moved into q_proj's range [12, 140] */
  char *p = bad_header_edit(&c, "[140,156]", "[100,116]");
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, k_q, k_n, "overlapping");
  free(p);
  bad_free(&c);
}

static void test_bad_unknown_dtype(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_dtype");
  char *p = bad_header_edit(&c, "\"dtype\":\"F16\"", "\"dtype\":\"F8_E4M3\"");
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "model.embed_tokens.weight", "unknown dtype \"F8_E4M3\"");
  free(p);
  bad_free(&c);
}

static void test_bad_shape_byte_mismatch(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_shape");
  char *p = bad_header_edit(&c, "\"shape\":[8,4]", "\"shape\":[8,5]");
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, k_q, "shape/byte-count mismatch", "160 bytes");
  free(p);
  p = bad_header_edit(&c, "\"shape\":[8,4]", "\"shape\":[8,-4]");
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, k_q, "not a non-negative integer");
  free(p);
  /* dtype size changes the byte count too */
  p = bad_header_edit(&c, "\"dtype\":\"F16\"", "\"dtype\":\"F32\"");
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "model.embed_tokens.weight", "shape/byte-count mismatch");
  free(p);
  bad_free(&c);
}

static void test_bad_missing_tensor(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_missing");
  e8q_safetensors *st = e8q_st_open(c.good);
  float buf[64];
  E8Q_EXPECT_FATAL(e8q_st_read_f32(st, "model.layers.0.self_attn.k_proj.weight", -1, NULL, buf), c.good,
                   "missing tensor", "model.layers.0.self_attn.k_proj.weight");
  e8q_st_close(st);
  e8q_st_model *m = e8q_st_model_open(c.good);
  E8Q_EXPECT_FATAL(e8q_st_model_read_f32(m, "lm_head.weight", -1, NULL, buf), c.good, "missing tensor",
                   "lm_head.weight");
  e8q_st_model_close(m);
  bad_free(&c);
}

/* a tensor whose shape differs from what the config implies */
static void test_bad_expected_shape(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_expect");
  e8q_safetensors *st = e8q_st_open(c.good);
  float buf[64];
  int64_t want[2] = {4, 8};
  E8Q_EXPECT_FATAL(e8q_st_read_f32(st, k_q, 2, want, buf), c.good, k_q, "shape [8, 4]", "[4, 8]");
  E8Q_EXPECT_FATAL(e8q_st_read_f32(st, k_q, 1, want, buf), c.good, k_q, "shape [8, 4]", "[4]");
  e8q_st_close(st);
  bad_free(&c);
}

static void test_bad_model_dir(void **state) {
  (void)state;
  char *dir = t_tmpdir("st_bad_dir");
  E8Q_EXPECT_FATAL(e8q_st_model_open(dir), dir, "neither model.safetensors nor model.safetensors.index.json");
  char *idx = t_join(dir, "model.safetensors.index.json");
  t_write_file(idx, "{\"weight_map\": {\"a\": \"../x.safetensors\"}}", 42);
  E8Q_EXPECT_FATAL(e8q_st_model_open(dir), idx, "outside the model directory");
  t_write_file(idx, "{\"weight_map\": {\"a\": \"x.safetensors\"", 36);
  E8Q_EXPECT_FATAL(e8q_st_model_open(dir), idx, "not valid JSON");
  free(idx);
  free(dir);
}

static void test_bad_nan_in_weight(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_nan");
  uint32_t nan = 0x7fc00001u;
  size_t at = 8 + c.hlen + 12 + 4 * 9; /* q_proj element 9 = [2, 1] */
  char *p = bad_bytes(&c, c.n, at, &nan, 4);
  e8q_safetensors *st = e8q_st_open(p);
  float buf[32];
  E8Q_EXPECT_FATAL(e8q_st_read_f32(st, k_q, -1, NULL, buf), p, k_q, "NaN", "element 9", "[2, 1]");
  e8q_st_close(st);
  free(p);
  /* NaN in bf16/f16 data */
  uint16_t hnan = 0x7e00;
  p = bad_bytes(&c, c.n, 8 + c.hlen + 2, &hnan, 2);
  st = e8q_st_open(p);
  E8Q_EXPECT_FATAL(e8q_st_read_f32(st, "model.embed_tokens.weight", -1, NULL, buf), "model.embed_tokens.weight",
                   "NaN", "element 1");
  e8q_st_close(st);
  free(p);
  bad_free(&c);
}

static void test_bad_inf_in_weight(void **state) {
  (void)state;
  badctx c = bad_setup("st_bad_inf");
  uint32_t inf = 0xff800000u;
  size_t at = 8 + c.hlen + 12 + 128 + 4 * 3; /* norm element 3 */
  char *p = bad_bytes(&c, c.n, at, &inf, 4);
  e8q_st_model *m = e8q_st_model_open(p);
  float buf[4];
  E8Q_EXPECT_FATAL(e8q_st_model_read_f32(m, k_n, 1, (int64_t[]){4}, buf), p, k_n, "-Inf", "element 3");
  e8q_st_model_close(m);
  free(p);
  bad_free(&c);
}

/* every truncation of a valid file is a fatal error naming the file, never a crash; random byte
 * flips in the header either parse or fail cleanly */
/* fuzz files live in memory (memfd, opened by its /proc path) so that thousands of variants
 * cost no disk I/O; a regular file is the fallback */
typedef struct {
  int fd;
  char *path;
} memfile;

static memfile memfile_open(const char *dir) {
  memfile m;
  m.fd = memfd_create("e8q_st_fuzz", 0);
  m.path = malloc(4096);
  if (m.fd >= 0) snprintf(m.path, 4096, "/proc/self/fd/%d", m.fd);
  else snprintf(m.path, 4096, "%s/fuzz.safetensors", dir);
  return m;
}

static void memfile_set(memfile *m, const void *data, size_t n) {
  if (m->fd < 0) {
    t_write_file(m->path, data, n);
    return;
  }
  assert_int_equal(ftruncate(m->fd, 0), 0);
  assert_int_equal(pwrite(m->fd, data, n, 0), (ssize_t)n);
}

/* every truncation of a valid file is a fatal error naming the file, never a crash; random byte
 * edits in the header either parse into something consistent or fail cleanly */
static void test_fuzz_truncations_and_flips(void **state) {
  (void)state;
  badctx c = bad_setup("st_fuzz");
  memfile mf = memfile_open(c.dir);
  const char *p = mf.path;
  for (size_t len = 0; len < c.n; len++) {
    memfile_set(&mf, c.bytes, len);
    E8Q_EXPECT_FATAL(e8q_st_open(p), p);
  }
  t_rng rng = {t_fresh_seed("st_fuzz")};
  uint8_t *mut = malloc(c.n);
  volatile int ok = 0, bad = 0;
  for (volatile int it = 0; it < 3000; it++) {
    memcpy(mut, c.bytes, c.n);
    int flips = 1 + (int)(t_rng_u64(&rng) % 3);
    for (int f = 0; f < flips; f++) {
      size_t at = 8 + t_rng_u64(&rng) % c.hlen;
      static const char pool[] = "0123456789[]{}\",:-. eE";
      mut[at] = (t_rng_u64(&rng) & 1) ? (uint8_t)pool[t_rng_u64(&rng) % (sizeof pool - 1)] : (uint8_t)t_rng_u64(&rng);
    }
    memfile_set(&mf, mut, c.n);
    e8q_error_trap trap;
    if (setjmp(trap.env) == 0) {
      e8q_error_trap_arm(&trap);
      e8q_safetensors *st = e8q_st_open(p);
      e8q_error_trap_arm(NULL);
      /* whatever parsed is consistent: every tensor inside the data block, sizes matching */
      for (int i = 0; i < st->n_tensors; i++) {
        const e8q_st_tensor *t = &st->tensors[i];
        assert_true(st->data_offset + t->end <= st->file_size);
        assert_true((uint64_t)e8q_st_numel(t) * e8q_dtype_size(t->dtype) == t->end - t->begin);
      }
      e8q_st_close(st);
      ok++;
    } else {
      assert_non_null(strstr(trap.message, p));
      bad++;
    }
  }
  assert_true(bad > 0);
  print_message("header edits: %d parsed, %d refused\n", ok, bad);
  free(mut);
  if (mf.fd >= 0) close(mf.fd);
  free(mf.path);
  bad_free(&c);
}

/* a write error (the file size limit, as a full disk would) is fatal naming the file, and the
 * temporary is removed */
static void test_writer_io_error(void **state) {
  (void)state;
  char *dir = t_tmpdir("st_wr_err");
  char *p = t_join(dir, "big.safetensors");
  struct rlimit old, lim;
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
  lim = old;
  lim.rlim_cur = 4096;
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
  int64_t shape[1] = {1 << 20};
  e8q_st_writer *w = e8q_st_writer_begin(p);
  e8q_st_writer_declare(w, "x", E8Q_DT_U8, 1, shape);
  uint8_t *zeros = calloc(1, 1 << 20);
  E8Q_EXPECT_FATAL(e8q_st_writer_write(w, zeros, 1 << 20), p, "cannot write", "removed");
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, prev);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", dir);
  assert_int_equal(system(cmd), 0); /* neither the file nor the temporary */
  /* declared but not all written: finish() refuses */
  w = e8q_st_writer_begin(p);
  e8q_st_writer_declare(w, "x", E8Q_DT_U8, 1, shape);
  e8q_st_writer_write(w, zeros, 1000);
  E8Q_EXPECT_FATAL(e8q_st_writer_finish(w), p, "incomplete", "1000 of 1048576");
  assert_int_equal(system(cmd), 0);
  /* more than declared */
  w = e8q_st_writer_begin(p);
  e8q_st_writer_declare(w, "x", E8Q_DT_U8, 1, (int64_t[]){10});
  E8Q_EXPECT_FATAL(e8q_st_writer_write(w, zeros, 11), p, "past the 10 declared");
  free(zeros);
  free(p);
  free(dir);
}

/* skip() leaves holes: a Llama-2-70B-sized layer costs no disk, reads as zeros, has real headers */
static void test_writer_sparse(void **state) {
  (void)state;
  char *dir = t_tmpdir("st_sparse");
  char *p = t_join(dir, "model.safetensors");
  int64_t big[2] = {28672, 8192}, small[1] = {8192};
  e8q_st_writer *w = e8q_st_writer_begin(p);
  e8q_st_writer_declare(w, "model.layers.0.mlp.up_proj.weight", E8Q_DT_BF16, 2, big);
  e8q_st_writer_declare(w, "model.layers.0.input_layernorm.weight", E8Q_DT_BF16, 1, small);
  e8q_st_writer_declare(w, "model.layers.0.mlp.gate_proj.weight", E8Q_DT_BF16, 2, big);
  e8q_st_writer_skip(w, (uint64_t)28672 * 8192 * 2);
  uint16_t ones[8192];
  for (int i = 0; i < 8192; i++) ones[i] = 0x3f80; /* 1.0 */
  e8q_st_writer_write(w, ones, sizeof ones);
  e8q_st_writer_skip(w, (uint64_t)28672 * 8192 * 2); /* a trailing hole */
  e8q_st_writer_finish(w);
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  assert_true((uint64_t)sb.st_size > (uint64_t)2 * 28672 * 8192 * 2);
  assert_true((uint64_t)sb.st_blocks * 512 < (uint64_t)16 << 20); /* sparse */
  e8q_safetensors *st = e8q_st_open(p);
  assert_int_equal(st->n_tensors, 3);
  const e8q_st_tensor *t = e8q_st_find(st, "model.layers.0.mlp.gate_proj.weight");
  assert_int_equal(t->shape[0], 28672);
  assert_true(st->data_offset + t->end == st->file_size);
  float norm[8192];
  e8q_st_read_f32(st, "model.layers.0.input_layernorm.weight", 1, small, norm);
  for (int i = 0; i < 8192; i++) assert_true(norm[i] == 1.0f);
  const uint16_t *g = e8q_st_data(st, t);
  assert_int_equal(g[0] | g[12345] | g[e8q_st_numel(t) - 1], 0);
  e8q_st_close(st);
  free(p);
  free(dir);
}

/* row ranges of stories260K tensors (f32 and bf16, sharded or not) equal the whole-tensor read;
 * e8q_f32_convert matches the scalar converters */
static void test_read_range_and_convert(void **state) {
  (void)state;
  char *d16 = t_shared_path("models/stories260K-hf-bf16");
  e8q_st_model *m = e8q_st_model_open(d16);
  const char *name = "model.embed_tokens.weight";
  float *all = malloc(512 * 64 * 4), *part = malloc(512 * 64 * 4);
  e8q_st_model_read_f32(m, name, 2, (int64_t[]){512, 64}, all);
  t_rng rng = {t_fresh_seed("range")};
  for (int it = 0; it < 50; it++) {
    int64_t a = (int64_t)(t_rng_u64(&rng) % (512 * 64)), b = (int64_t)(t_rng_u64(&rng) % (512 * 64 + 1));
    if (a > b) { int64_t x = a; a = b; b = x; }
    e8q_st_model_read_f32_range(m, name, a, b - a, part);
    assert_memory_equal(part, all + a, (size_t)(b - a) * 4);
  }
  E8Q_EXPECT_FATAL(e8q_st_model_read_f32_range(m, name, 512 * 64 - 10, 11, part), name, "[32758, 32769)",
                   "of 32768");
  E8Q_EXPECT_FATAL(e8q_st_read_f32_range(m->files[0], "nope", 0, 1, part), "missing tensor", "nope");
  /* convert back to bf16: the file's bytes exactly */
  const e8q_safetensors *f;
  const e8q_st_tensor *t = e8q_st_model_find(m, name, &f);
  uint16_t *h = malloc(512 * 64 * 2);
  e8q_f32_convert(all, E8Q_DT_BF16, h, 512 * 64);
  assert_memory_equal(h, e8q_st_data(f, t), 512 * 64 * 2);
  e8q_f32_convert(all, E8Q_DT_F16, h, 512 * 64);
  for (int i = 0; i < 512 * 64; i++) assert_int_equal(h[i], e8q_f32_to_f16(all[i]));
  e8q_f32_convert(all, E8Q_DT_F32, part, 512 * 64);
  assert_memory_equal(part, all, 512 * 64 * 4);
  E8Q_EXPECT_FATAL(e8q_f32_convert(all, E8Q_DT_I8, h, 1), "I8");
  free(h);
  free(all);
  free(part);
  e8q_st_model_close(m);
  free(d16);
}

/* a safetensors file stored inside another file (as a tar member) at an unaligned offset is
 * mapped in place and reads exactly as the file itself; a region past the end is refused */
static void test_open_region(void **state) {
  (void)state;
  char *src;
  size_t n;
  char *raw = t_read_shared("models/stories260K-hf/model.safetensors", &n, &src);
  char *dir = t_tmpdir("st_region");
  char *arch = t_join(dir, "model.e8q");
  size_t pre = 4096 * 3 + 512; /* like a tar member: 512-aligned, not page-aligned */
  char *buf = calloc(1, pre + n + 1000);
  memset(buf, 'x', pre);
  memcpy(buf + pre, raw, n);
  memset(buf + pre + n, 'y', 1000);
  t_write_file(arch, buf, pre + n + 1000);
  e8q_safetensors *a = e8q_st_open(src), *b = e8q_st_open_region(arch, pre, n, "model.e8q:model.safetensors");
  assert_string_equal(b->path, "model.e8q:model.safetensors");
  assert_int_equal(a->n_tensors, b->n_tensors);
  for (int i = 0; i < a->n_tensors; i++) {
    const e8q_st_tensor *x = &a->tensors[i], *y = e8q_st_find(b, x->name);
    assert_non_null(y);
    assert_int_equal(x->end - x->begin, y->end - y->begin);
    assert_memory_equal(e8q_st_data(a, x), e8q_st_data(b, y), x->end - x->begin);
  }
  e8q_st_close(a);
  e8q_st_close(b);
  E8Q_EXPECT_FATAL(e8q_st_open_region(arch, pre, n + 1001, "m.e8q:model.safetensors"), "m.e8q:model.safetensors",
                   "past the end");
  /* a region that cuts the member short is a truncated safetensors file */
  E8Q_EXPECT_FATAL(e8q_st_open_region(arch, pre, n - 1, "m.e8q:model.safetensors"), "m.e8q:model.safetensors",
                   "past the end of the data block");
  free(buf);
  free(arch);
  free(dir);
  free(raw);
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
      cmocka_unit_test(test_writer_sparse),
      cmocka_unit_test(test_open_region),
      cmocka_unit_test(test_read_range_and_convert),
      cmocka_unit_test(test_bad_truncated),
      cmocka_unit_test(test_bad_header_length_past_eof),
      cmocka_unit_test(test_bad_offsets_past_end),
      cmocka_unit_test(test_bad_overlapping_offsets),
      cmocka_unit_test(test_bad_unknown_dtype),
      cmocka_unit_test(test_bad_shape_byte_mismatch),
      cmocka_unit_test(test_bad_missing_tensor),
      cmocka_unit_test(test_bad_expected_shape),
      cmocka_unit_test(test_bad_model_dir),
      cmocka_unit_test(test_bad_nan_in_weight),
      cmocka_unit_test(test_bad_inf_in_weight),
      cmocka_unit_test(test_fuzz_truncations_and_flips),
      cmocka_unit_test(test_writer_io_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
