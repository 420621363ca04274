/* tests/io/test_gguf.c: the GGUF reader and the ggml block decoders.
 *
 *  - golden blocks: every decodable ggml type, random blocks dequantized by llama.cpp's Python gguf
 *    package (tests/io/data/ggml_golden.bin, made by scripts/gen_ggml_golden.py), compared bit for
 *    bit with e8q_ggml_dequant_row_ref and e8q_ggml_dequant_row;
 *  - a tiny llama GGUF written here (every metadata value type, nested arrays, 8 tensor types) read
 *    back through every accessor; the HF view's name mapping and rotary row permutation on rows
 *    whose values say which GGUF row they came from;
 *  - the real SmolLM2-135M Q4_1 GGUF (skipped with a message when absent): its config, whole rows and
 *    exact tensor sums in HF order against gguf's values, the permutation round trip and its
 *    direction (RoPE pairs (i, i + hd/2) of the HF layout have matching row norms);
 *  - bad files, each made from the tiny GGUF by truncation or byte edits, each refused with a
 *    message naming the file and what is wrong.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/config.h"
#include "io/ggml_quants.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "expect_config.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

/* exact sum with Neumaier compensation, and the sum of magnitudes (for tolerances) */
typedef struct {
  double s, c, abs;
} t_sum;
static void sum_add(t_sum *k, double x) {
  double t = k->s + x;
  if (fabs(k->s) >= fabs(x)) k->c += (k->s - t) + x;
  else k->c += (x - t) + k->s;
  k->s = t;
  k->abs += fabs(x);
}
static double sum_value(const t_sum *k) { return k->s + k->c; }

/* the SmolLM2 GGUF, or a cmocka skip naming where it was looked for */
static char *model_path(void) {
  const char *dir = getenv("E8Q_MODELS");
  char buf[4096];
  if (dir && *dir) snprintf(buf, sizeof buf, "%s", dir);
  else snprintf(buf, sizeof buf, "%s/.cache/e8q", getenv("HOME") ? getenv("HOME") : "/root");
  char *p = t_join(buf, "SmolLM2-135M-Instruct.Q4_1.gguf");
  struct stat sb;
  if (stat(p, &sb) != 0) {
    print_message("SmolLM2 GGUF %s not found (run bash scripts/fetch_smollm2.sh, or set E8Q_MODELS): skipping\n",
                  p);
    free(p);
    skip();
  }
  return p;
}

/* ---------------------------------------------------------------- golden file */

typedef struct {
  int kind;                     /* 1 blocks, 2 HF row, 3 HF sums, 4 model size */
  int type, n_blocks, block_bytes, block_size;
  const uint8_t *raw;           /* kind 1: [n_blocks * block_bytes] */
  float *values;                /* kind 1: [n_blocks * block_size], kind 2: [cols] (owned) */
  char name[128];               /* kinds 2, 3 */
  int64_t row, numel;
  int cols;
  double sum, wsum, sumsq;
  uint64_t model_size;
} golden_rec;

typedef struct {
  uint8_t *bytes;               /* the whole file (owned) */
  size_t n;
  int n_recs;
  golden_rec *recs;             /* [n_recs] */
} golden;

static uint32_t rd_u32(const uint8_t **p) {
  uint32_t v;
  memcpy(&v, *p, 4);
  *p += 4;
  return v;
}
static uint64_t rd_u64(const uint8_t **p) {
  uint64_t v;
  memcpy(&v, *p, 8);
  *p += 8;
  return v;
}
static double rd_f64(const uint8_t **p) {
  double v;
  memcpy(&v, *p, 8);
  *p += 8;
  return v;
}

static golden *golden_load(void) {
  const char *env = getenv("E8Q_GGML_GOLDEN");
  char *path;
  if (env && *env) path = strdup(env);
  else {
    /* next to this source file (CMake compiles it by its absolute path) */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    path = t_join(dir, "data/ggml_golden.bin");
  }
  golden *g = calloc(1, sizeof *g);
  g->bytes = (uint8_t *)t_read_file(path, &g->n);
  if (g->n < 12 || memcmp(g->bytes, "E8QGGML1", 8) != 0) fail_msg("%s is not an e8q ggml golden file", path);
  const uint8_t *p = g->bytes + 8, *end = g->bytes + g->n;
  g->n_recs = (int)rd_u32(&p);
  g->recs = calloc((size_t)g->n_recs, sizeof *g->recs);
  for (int i = 0; i < g->n_recs; i++) {
    golden_rec *r = &g->recs[i];
    r->kind = (int)rd_u32(&p);
    if (r->kind == 1) {
      r->type = (int)rd_u32(&p);
      r->n_blocks = (int)rd_u32(&p);
      r->block_bytes = (int)rd_u32(&p);
      r->block_size = (int)rd_u32(&p);
      r->raw = p;
      p += (size_t)r->n_blocks * r->block_bytes;
      size_t nv = (size_t)r->n_blocks * r->block_size;
      r->values = malloc(nv * 4);
      memcpy(r->values, p, nv * 4);
      p += nv * 4;
    } else if (r->kind == 2 || r->kind == 3) {
      uint32_t len = rd_u32(&p);
      assert_true(len < sizeof r->name);
      memcpy(r->name, p, len);
      p += len;
      if (r->kind == 2) {
        r->row = (int64_t)rd_u64(&p);
        r->cols = (int)rd_u32(&p);
        r->values = malloc((size_t)r->cols * 4);
        memcpy(r->values, p, (size_t)r->cols * 4);
        p += (size_t)r->cols * 4;
      } else {
        r->numel = (int64_t)rd_u64(&p);
        r->sum = rd_f64(&p);
        r->wsum = rd_f64(&p);
        r->sumsq = rd_f64(&p);
      }
    } else if (r->kind == 4) {
      r->model_size = rd_u64(&p);
    } else {
      fail_msg("%s: record %d has unknown kind %d", path, i, r->kind);
    }
    if (p > end) fail_msg("%s: truncated at record %d", path, i);
  }
  assert_true(p == end);
  free(path);
  return g;
}

static void golden_free(golden *g) {
  for (int i = 0; i < g->n_recs; i++) free(g->recs[i].values);
  free(g->recs);
  free(g->bytes);
  free(g);
}

/* ---------------------------------------------------------------- golden blocks */

static void test_golden_blocks(void **state) {
  (void)state;
  golden *g = golden_load();
  static const int want[] = {E8Q_GGML_F32,  E8Q_GGML_F16,  E8Q_GGML_BF16, E8Q_GGML_Q4_0, E8Q_GGML_Q4_1,
                             E8Q_GGML_Q5_0, E8Q_GGML_Q5_1, E8Q_GGML_Q8_0, E8Q_GGML_Q2_K, E8Q_GGML_Q3_K,
                             E8Q_GGML_Q4_K, E8Q_GGML_Q5_K, E8Q_GGML_Q6_K};
  int seen[E8Q_GGML_TYPE_LIMIT] = {0};
  for (int i = 0; i < g->n_recs; i++) {
    const golden_rec *r = &g->recs[i];
    if (r->kind != 1) continue;
    const char *tn = e8q_ggml_type_name(r->type);
    assert_true(e8q_ggml_type_supported(r->type));
    assert_int_equal(e8q_ggml_block_size(r->type), r->block_size);
    assert_int_equal(e8q_ggml_block_bytes(r->type), (size_t)r->block_bytes);
    int64_t n = (int64_t)r->n_blocks * r->block_size;
    float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    /* poison, so an element a decoder skips cannot match by accident */
    for (int64_t j = 0; j < n; j++) a[j] = b[j] = NAN;
    e8q_ggml_dequant_row_ref(r->type, r->raw, n, a);
    e8q_ggml_dequant_row(r->type, r->raw, n, b);
    for (int64_t j = 0; j < n; j++) {
      if (!same_bits(a[j], r->values[j]))
        fail_msg("%s _ref: element %lld (block %lld) is %.9g, gguf says %.9g", tn, (long long)j,
                 (long long)(j / r->block_size), a[j], r->values[j]);
      if (!same_bits(b[j], a[j])) fail_msg("%s: fast path element %lld is %.9g, _ref %.9g", tn, (long long)j, b[j], a[j]);
    }
    /* block by block gives the same as the whole row */
    for (int k = 0; k < r->n_blocks; k++) {
      e8q_ggml_dequant_row_ref(r->type, r->raw + (size_t)k * r->block_bytes, r->block_size, b);
      assert_memory_equal(b, a + (size_t)k * r->block_size, (size_t)r->block_size * 4);
    }
    seen[r->type] = 1;
    free(a);
    free(b);
  }
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!seen[want[i]]) fail_msg("golden file has no blocks of %s", e8q_ggml_type_name(want[i]));
  golden_free(g);
}

/* hand-made blocks with values worked out from the format definition (independent of gguf) */
static void test_blocks_by_hand(void **state) {
  (void)state;
  float y[256];
  /* Q4_0: d = 0.5, element j low nibble of qs[j], j+16 high nibble; value d*(q-8) */
  uint8_t q40[18] = {0x00, 0x38}; /* f16 0.5 */
  for (int j = 0; j < 16; j++) q40[2 + j] = (uint8_t)(j | (15 - j) << 4);
  e8q_ggml_dequant_row_ref(E8Q_GGML_Q4_0, q40, 32, y);
  for (int j = 0; j < 16; j++) {
    assert_true(y[j] == 0.5f * (float)(j - 8));
    assert_true(y[j + 16] == 0.5f * (float)(15 - j - 8));
  }
  /* Q5_1: d = 1, m = -2, qh bit e gives 16 */
  uint8_t q51[24] = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0x00, 0x80}; /* qh: bits 0 and 31 */
  for (int j = 0; j < 16; j++) q51[8 + j] = (uint8_t)(3 | 5 << 4);
  e8q_ggml_dequant_row_ref(E8Q_GGML_Q5_1, q51, 32, y);
  assert_true(y[0] == 19.0f - 2.0f && y[1] == 1.0f && y[16] == 3.0f && y[31] == 21.0f - 2.0f);
  /* Q6_K: d = 1, scales[k] = k + 1, every 6-bit q = 33 (ql nibble 1, qh bits 2): value sc * 1 */
  uint8_t q6[210] = {0};
  memset(q6, 0x11, 128);
  memset(q6 + 128, 0xAA, 64);
  for (int k = 0; k < 16; k++) q6[192 + k] = (uint8_t)(k + 1);
  q6[208] = 0x00;
  q6[209] = 0x3c;
  e8q_ggml_dequant_row_ref(E8Q_GGML_Q6_K, q6, 256, y);
  for (int e = 0; e < 256; e++) assert_true(y[e] == (float)(e / 16 + 1));
  /* unsupported and unknown types, bad counts */
  E8Q_EXPECT_FATAL(e8q_ggml_dequant_row_ref(E8Q_GGML_Q8_K, q6, 256, y), "Q8_K", "cannot be dequantized");
  E8Q_EXPECT_FATAL(e8q_ggml_dequant_row(4, q6, 32, y), "type 4", "unknown");
  E8Q_EXPECT_FATAL(e8q_ggml_dequant_row_ref(E8Q_GGML_Q4_0, q40, 31, y), "not a multiple", "32");
  assert_int_equal(e8q_ggml_block_size(4), 0);
  assert_int_equal(e8q_ggml_block_bytes(99), 0);
  assert_string_equal(e8q_ggml_type_name(3), "Q4_1");
  assert_string_equal(e8q_ggml_type_name(-1), "unknown");
  assert_int_equal(e8q_ggml_block_bytes(E8Q_GGML_Q8_K), 292);
}

/* ---------------------------------------------------------------- a GGUF writer for tests */

typedef struct {
  uint8_t *p;
  size_t n, cap;
} wbuf;

static void wb_bytes(wbuf *b, const void *d, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 256;
    b->p = realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void wb_u8(wbuf *b, uint8_t v) { wb_bytes(b, &v, 1); }
static void wb_u16(wbuf *b, uint16_t v) { wb_bytes(b, &v, 2); }
static void wb_u32(wbuf *b, uint32_t v) { wb_bytes(b, &v, 4); }
static void wb_u64(wbuf *b, uint64_t v) { wb_bytes(b, &v, 8); }
static void wb_f32(wbuf *b, float v) { wb_bytes(b, &v, 4); }
static void wb_f64(wbuf *b, double v) { wb_bytes(b, &v, 8); }
static void wb_str(wbuf *b, const char *s) {
  wb_u64(b, strlen(s));
  wb_bytes(b, s, strlen(s));
}
static void wb_zeros(wbuf *b, size_t n) {
  for (size_t i = 0; i < n; i++) wb_u8(b, 0);
}

#define TINY_MAX_T 16
#define TINY_MAX_KV 64
#define TINY_DIM 32
#define TINY_HEADS 2
#define TINY_KV_HEADS 1
#define TINY_HD 16
#define TINY_HIDDEN 64
#define TINY_VOCAB 40

typedef struct {
  uint32_t version;             /* 3 */
  const char *arch;             /* "llama" */
  uint32_t alignment;           /* 0: no general.alignment key (32) */
  const char *rope_scaling_type;/* NULL: absent */
  float rope_scaling_factor;    /* 0: absent */
  float freq_scale;             /* 0: absent */
  int expert_count;             /* 0: absent */
  int key_length, value_length; /* 0: absent */
  int rope_dim;                 /* 0: absent */
  int untied;                   /* output.weight present */
  int no_vocab_size;            /* vocabulary size from tokenizer.ggml.tokens only */
  int nan_embd_row;             /* token whose Q8_0 scale is NaN; -1 none */
} tiny_opts;

static tiny_opts tiny_defaults(void) {
  tiny_opts o = {0};
  o.version = 3;
  o.arch = "llama";
  o.rope_dim = TINY_HD;
  o.nan_embd_row = -1;
  return o;
}

/* where things are in the written file, for byte edits */
typedef struct {
  size_t size;
  size_t header_end, kv_mid, ti_start, ti_mid, ti_end, data_start, data_mid;
  int n_kv;
  char keys[TINY_MAX_KV][64];
  size_t key_at[TINY_MAX_KV];    /* the key's u64 length field */
  size_t value_at[TINY_MAX_KV];  /* the u32 value type field */
  int n_t;
  char names[TINY_MAX_T][64];
  int types[TINY_MAX_T];
  int64_t ne[TINY_MAX_T][2];
  size_t name_at[TINY_MAX_T], ndims_at[TINY_MAX_T], ne0_at[TINY_MAX_T], type_at[TINY_MAX_T], offset_at[TINY_MAX_T];
  size_t data_at[TINY_MAX_T];    /* absolute file position of the tensor's data */
  uint64_t nbytes[TINY_MAX_T];
} tiny_layout;

typedef struct {
  char name[64];
  int type, n_dims;
  int64_t ne[2];
  wbuf data;
} tiny_tensor;

static int kv_index(const tiny_layout *L, const char *key) {
  for (int i = 0; i < L->n_kv; i++)
    if (strcmp(L->keys[i], key) == 0) return i;
  fail_msg("tiny GGUF has no key %s", key);
  return -1;
}
static int t_index(const tiny_layout *L, const char *name) {
  for (int i = 0; i < L->n_t; i++)
    if (strcmp(L->names[i], name) == 0) return i;
  fail_msg("tiny GGUF has no tensor %s", name);
  return -1;
}

/* values the tiny tensors hold, by GGUF row and column (exactly representable in their types) */
static float tiny_embd(int64_t row, int64_t col) { return (float)(row * 3 + col - 50) / 128.0f; }
static float tiny_q(int64_t row, int64_t col) { return (float)row + (float)col / 64.0f; }
static float tiny_k(int64_t row, int64_t col) { return (float)((row + col) % 16 - 8); }
static float tiny_v(int64_t row, int64_t col) { return (float)row * 0.5f - (float)col * 0.25f; }
static float tiny_down(int64_t row, int64_t col) { return (float)row - (float)col * 0.5f; }

/* a bounded copy of a short name */
static void set_name(char *dst, size_t n, const char *s) {
  size_t l = strlen(s);
  assert_true(l < n);
  memcpy(dst, s, l + 1);
}

static void tt_add(tiny_tensor *ts, int *n, const char *name, int type, int n_dims, int64_t ne0, int64_t ne1) {
  tiny_tensor *t = &ts[(*n)++];
  memset(t, 0, sizeof *t);
  set_name(t->name, sizeof t->name, name);
  t->type = type;
  t->n_dims = n_dims;
  t->ne[0] = ne0;
  t->ne[1] = ne1;
}

/* random bytes for a quantized tensor, every f16 scale at the given block offsets made finite */
static void tt_random(tiny_tensor *t, t_rng *rng, const int *scale_offs, int n_offs) {
  size_t bb = e8q_ggml_block_bytes(t->type), nb = (size_t)(t->ne[0] * t->ne[1]) / (size_t)e8q_ggml_block_size(t->type);
  for (size_t b = 0; b < nb; b++) {
    uint8_t blk[512];
    for (size_t i = 0; i < bb; i++) blk[i] = (uint8_t)t_rng_u64(rng);
    for (int k = 0; k < n_offs; k++) {
      uint16_t h = e8q_f32_to_f16((float)(t_rng_uniform(rng) * 0.1 - 0.05));
      memcpy(blk + scale_offs[k], &h, 2);
    }
    wb_bytes(&t->data, blk, bb);
  }
}

/* writes the tiny llama GGUF to path; L gets its layout */
static void tiny_write(const char *path, const tiny_opts *o, tiny_layout *L) {
  memset(L, 0, sizeof *L);
  t_rng rng = {12345};
  tiny_tensor ts[TINY_MAX_T];
  int nt = 0;
  /* ---- tensors and their data */
  tt_add(ts, &nt, "token_embd.weight", E8Q_GGML_Q8_0, 2, TINY_DIM, TINY_VOCAB);
  for (int r = 0; r < TINY_VOCAB; r++) {
    uint16_t d = r == o->nan_embd_row ? 0x7e00 : e8q_f32_to_f16(1.0f / 128.0f);
    wb_u16(&ts[nt - 1].data, d);
    for (int c = 0; c < TINY_DIM; c++) wb_u8(&ts[nt - 1].data, (uint8_t)(int8_t)(r * 3 + c - 50));
  }
  const char *norms[] = {"output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"};
  for (int k = 0; k < 3; k++) {
    tt_add(ts, &nt, norms[k], E8Q_GGML_F32, 1, TINY_DIM, 1);
    for (int c = 0; c < TINY_DIM; c++) wb_f32(&ts[nt - 1].data, 1.0f + (float)c / 32.0f + (float)k);
  }
  tt_add(ts, &nt, "blk.0.attn_q.weight", E8Q_GGML_F16, 2, TINY_DIM, TINY_HEADS * TINY_HD);
  for (int r = 0; r < TINY_HEADS * TINY_HD; r++)
    for (int c = 0; c < TINY_DIM; c++) wb_u16(&ts[nt - 1].data, e8q_f32_to_f16(tiny_q(r, c)));
  tt_add(ts, &nt, "blk.0.attn_k.weight", E8Q_GGML_Q4_0, 2, TINY_DIM, TINY_KV_HEADS * TINY_HD);
  for (int r = 0; r < TINY_KV_HEADS * TINY_HD; r++) {
    wb_u16(&ts[nt - 1].data, 0x3c00); /* d = 1 */
    for (int j = 0; j < 16; j++)
      wb_u8(&ts[nt - 1].data, (uint8_t)(((r + j) % 16) | ((r + j + 16) % 16) << 4));
  }
  tt_add(ts, &nt, "blk.0.attn_v.weight", E8Q_GGML_BF16, 2, TINY_DIM, TINY_KV_HEADS * TINY_HD);
  for (int r = 0; r < TINY_KV_HEADS * TINY_HD; r++)
    for (int c = 0; c < TINY_DIM; c++) wb_u16(&ts[nt - 1].data, e8q_f32_to_bf16(tiny_v(r, c)));
  static const int off_d[] = {0}, off_dm[] = {0, 2};
  tt_add(ts, &nt, "blk.0.attn_output.weight", E8Q_GGML_Q4_1, 2, TINY_DIM, TINY_DIM);
  tt_random(&ts[nt - 1], &rng, off_dm, 2);
  tt_add(ts, &nt, "blk.0.ffn_gate.weight", E8Q_GGML_Q5_0, 2, TINY_DIM, TINY_HIDDEN);
  tt_random(&ts[nt - 1], &rng, off_d, 1);
  tt_add(ts, &nt, "blk.0.ffn_up.weight", E8Q_GGML_Q5_1, 2, TINY_DIM, TINY_HIDDEN);
  tt_random(&ts[nt - 1], &rng, off_dm, 2);
  tt_add(ts, &nt, "blk.0.ffn_down.weight", E8Q_GGML_F32, 2, TINY_HIDDEN, TINY_DIM);
  for (int r = 0; r < TINY_DIM; r++)
    for (int c = 0; c < TINY_HIDDEN; c++) wb_f32(&ts[nt - 1].data, tiny_down(r, c));
  tt_add(ts, &nt, "test.q4_k", E8Q_GGML_Q4_K, 2, 256, 2);
  tt_random(&ts[nt - 1], &rng, off_dm, 2);
  tt_add(ts, &nt, "test.iq4_nl", 20 /* IQ4_NL: known, not decodable */, 2, 32, 2);
  tt_random(&ts[nt - 1], &rng, off_d, 1);
  if (o->untied) {
    tt_add(ts, &nt, "output.weight", E8Q_GGML_Q8_0, 2, TINY_DIM, TINY_VOCAB);
    for (int r = 0; r < TINY_VOCAB; r++) {
      wb_u16(&ts[nt - 1].data, 0x3c00);
      for (int c = 0; c < TINY_DIM; c++) wb_u8(&ts[nt - 1].data, (uint8_t)(r - c));
    }
  }

  /* ---- header */
  wbuf b = {0};
  wb_bytes(&b, "GGUF", 4);
  wb_u32(&b, o->version);
  wb_u64(&b, (uint64_t)nt);
  size_t nkv_at = b.n;
  wb_u64(&b, 0); /* patched below */
  L->header_end = b.n;

  /* ---- metadata */
#define KEY(k, type)                                                    \
  do {                                                                  \
    set_name(L->keys[L->n_kv], sizeof L->keys[0], (k));                 \
    L->key_at[L->n_kv] = b.n;                                           \
    wb_str(&b, (k));                                                    \
    L->value_at[L->n_kv] = b.n;                                         \
    wb_u32(&b, (type));                                                 \
    L->n_kv++;                                                          \
  } while (0)
  KEY("general.architecture", E8Q_GGUF_STRING);
  wb_str(&b, o->arch);
  char ak[128];
#define AKEY(suffix, type)                                              \
  do {                                                                  \
    snprintf(ak, sizeof ak, "%s.%s", o->arch, (suffix));                \
    KEY(ak, type);                                                      \
  } while (0)
  AKEY("block_count", E8Q_GGUF_U32);
  wb_u32(&b, 1);
  AKEY("context_length", E8Q_GGUF_U32);
  wb_u32(&b, 128);
  AKEY("embedding_length", E8Q_GGUF_U32);
  wb_u32(&b, TINY_DIM);
  AKEY("feed_forward_length", E8Q_GGUF_U32);
  wb_u32(&b, TINY_HIDDEN);
  AKEY("attention.head_count", E8Q_GGUF_U32);
  wb_u32(&b, TINY_HEADS);
  AKEY("attention.head_count_kv", E8Q_GGUF_U64);
  wb_u64(&b, TINY_KV_HEADS);
  AKEY("rope.freq_base", E8Q_GGUF_F32);
  wb_f32(&b, 500000.0f);
  AKEY("attention.layer_norm_rms_epsilon", E8Q_GGUF_F32);
  wb_f32(&b, 1e-6f);
  if (!o->no_vocab_size) {
    AKEY("vocab_size", E8Q_GGUF_I32);
    wb_u32(&b, TINY_VOCAB);
  }
  if (o->rope_dim) {
    AKEY("rope.dimension_count", E8Q_GGUF_U32);
    wb_u32(&b, (uint32_t)o->rope_dim);
  }
  if (o->key_length) {
    AKEY("attention.key_length", E8Q_GGUF_U32);
    wb_u32(&b, (uint32_t)o->key_length);
  }
  if (o->value_length) {
    AKEY("attention.value_length", E8Q_GGUF_U32);
    wb_u32(&b, (uint32_t)o->value_length);
  }
  if (o->rope_scaling_type) {
    AKEY("rope.scaling.type", E8Q_GGUF_STRING);
    wb_str(&b, o->rope_scaling_type);
  }
  if (o->rope_scaling_factor != 0) {
    AKEY("rope.scaling.factor", E8Q_GGUF_F32);
    wb_f32(&b, o->rope_scaling_factor);
  }
  if (o->freq_scale != 0) {
    AKEY("rope.freq_scale", E8Q_GGUF_F32);
    wb_f32(&b, o->freq_scale);
  }
  if (o->expert_count) {
    AKEY("expert_count", E8Q_GGUF_U32);
    wb_u32(&b, (uint32_t)o->expert_count);
  }
  L->kv_mid = b.n + 3;
  if (o->alignment) {
    KEY("general.alignment", E8Q_GGUF_U32);
    wb_u32(&b, o->alignment);
  }
  KEY("tokenizer.ggml.tokens", E8Q_GGUF_ARRAY);
  wb_u32(&b, E8Q_GGUF_STRING);
  wb_u64(&b, TINY_VOCAB);
  for (int i = 0; i < TINY_VOCAB; i++) {
    char tok[16];
    snprintf(tok, sizeof tok, "t%d", i);
    wb_str(&b, tok);
  }
  KEY("tokenizer.ggml.bos_token_id", E8Q_GGUF_U32);
  wb_u32(&b, 3);
  KEY("tokenizer.ggml.eos_token_id", E8Q_GGUF_I16);
  wb_u16(&b, 4);
  /* one of every value type */
  KEY("test.u8", E8Q_GGUF_U8);
  wb_u8(&b, 200);
  KEY("test.i8", E8Q_GGUF_I8);
  wb_u8(&b, (uint8_t)-5);
  KEY("test.u16", E8Q_GGUF_U16);
  wb_u16(&b, 60000);
  KEY("test.i16", E8Q_GGUF_I16);
  wb_u16(&b, (uint16_t)-30000);
  KEY("test.u32", E8Q_GGUF_U32);
  wb_u32(&b, 4000000000u);
  KEY("test.i32", E8Q_GGUF_I32);
  wb_u32(&b, (uint32_t)-2000000000);
  KEY("test.f32", E8Q_GGUF_F32);
  wb_f32(&b, 0.1f);
  KEY("test.bool", E8Q_GGUF_BOOL);
  wb_u8(&b, 1);
  KEY("test.str", E8Q_GGUF_STRING);
  wb_u64(&b, 7);
  wb_bytes(&b, "ab\0cdef", 7); /* a NUL inside */
  KEY("test.u64", E8Q_GGUF_U64);
  wb_u64(&b, ((uint64_t)1 << 63) + 5);
  KEY("test.i64", E8Q_GGUF_I64);
  wb_u64(&b, (uint64_t)-((int64_t)1 << 40));
  KEY("test.f64", E8Q_GGUF_F64);
  wb_f64(&b, 1e-300);
  KEY("test.arr_i32", E8Q_GGUF_ARRAY);
  wb_u32(&b, E8Q_GGUF_I32);
  wb_u64(&b, 3);
  wb_u32(&b, 7);
  wb_u32(&b, (uint32_t)-8);
  wb_u32(&b, 9);
  KEY("test.arr_f32", E8Q_GGUF_ARRAY);
  wb_u32(&b, E8Q_GGUF_F32);
  wb_u64(&b, 2);
  wb_f32(&b, 1.5f);
  wb_f32(&b, -2.25f);
  KEY("test.arr_bool", E8Q_GGUF_ARRAY);
  wb_u32(&b, E8Q_GGUF_BOOL);
  wb_u64(&b, 2);
  wb_u8(&b, 0);
  wb_u8(&b, 1);
  KEY("test.arr_empty", E8Q_GGUF_ARRAY);
  wb_u32(&b, E8Q_GGUF_U8);
  wb_u64(&b, 0);
  KEY("test.arr_nested", E8Q_GGUF_ARRAY); /* [["x", "yz"], [[1, 2]]] as arrays of arrays */
  wb_u32(&b, E8Q_GGUF_ARRAY);
  wb_u64(&b, 2);
  wb_u32(&b, E8Q_GGUF_STRING);
  wb_u64(&b, 2);
  wb_str(&b, "x");
  wb_str(&b, "yz");
  wb_u32(&b, E8Q_GGUF_ARRAY);
  wb_u64(&b, 1);
  wb_u32(&b, E8Q_GGUF_U16);
  wb_u64(&b, 2);
  wb_u16(&b, 1);
  wb_u16(&b, 2);
#undef AKEY
#undef KEY
  memcpy(b.p + nkv_at, &(uint64_t){(uint64_t)L->n_kv}, 8);

  /* ---- tensor infos */
  uint64_t align = o->alignment ? o->alignment : 32, off = 0;
  L->ti_start = b.n;
  for (int i = 0; i < nt; i++) {
    tiny_tensor *t = &ts[i];
    set_name(L->names[i], sizeof L->names[0], t->name);
    L->types[i] = t->type;
    L->ne[i][0] = t->ne[0];
    L->ne[i][1] = t->ne[1];
    L->name_at[i] = b.n;
    wb_str(&b, t->name);
    L->ndims_at[i] = b.n;
    wb_u32(&b, (uint32_t)t->n_dims);
    L->ne0_at[i] = b.n;
    for (int d = 0; d < t->n_dims; d++) wb_u64(&b, (uint64_t)t->ne[d]);
    L->type_at[i] = b.n;
    wb_u32(&b, (uint32_t)t->type);
    L->offset_at[i] = b.n;
    off = (off + align - 1) / align * align;
    wb_u64(&b, off);
    L->data_at[i] = off; /* relative for now */
    L->nbytes[i] = t->data.n;
    off += t->data.n;
    if (i == nt / 2) L->ti_mid = b.n - 5;
  }
  L->ti_end = b.n;
  L->n_t = nt;
  wb_zeros(&b, (size_t)((b.n + align - 1) / align * align - b.n));
  L->data_start = b.n;
  for (int i = 0; i < nt; i++) {
    L->data_at[i] += L->data_start;
    wb_zeros(&b, L->data_at[i] - b.n);
    wb_bytes(&b, ts[i].data.p, ts[i].data.n);
    free(ts[i].data.p);
  }
  L->data_mid = L->data_start + (b.n - L->data_start) / 2;
  L->size = b.n;
  t_write_file(path, b.p, b.n);
  free(b.p);
}

/* the tiny file's bytes, edited by the caller, written to path */
static uint8_t *tiny_bytes(const tiny_opts *o, tiny_layout *L, const char *path) {
  tiny_write(path, o, L);
  size_t n;
  uint8_t *p = (uint8_t *)t_read_file(path, &n);
  assert_int_equal(n, L->size);
  return p;
}

/* ---------------------------------------------------------------- tiny GGUF: reading */

static void test_tiny_metadata(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_meta");
  char *path = t_join(dir, "tiny.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  tiny_write(path, &o, &L);
  assert_true(e8q_gguf_is_file(path));
  e8q_gguf *g = e8q_gguf_open(path);
  assert_string_equal(e8q_gguf_path(g), path);
  assert_int_equal(e8q_gguf_version(g), 3);
  assert_int_equal(e8q_gguf_alignment(g), 32);
  assert_int_equal(e8q_gguf_data_offset(g), L.data_start);
  assert_int_equal(e8q_gguf_n_kv(g), L.n_kv);
  for (int i = 0; i < L.n_kv; i++) assert_string_equal(e8q_gguf_kv_key(g, i), L.keys[i]);
  E8Q_EXPECT_FATAL(e8q_gguf_kv_key(g, L.n_kv), "metadata index", "out of range");

  /* integers of every width, sign-extended or not */
  assert_int_equal(e8q_gguf_get_int(g, "test.u8", 0, 1), 200);
  assert_int_equal(e8q_gguf_get_int(g, "test.i8", 0, 1), -5);
  assert_int_equal(e8q_gguf_get_int(g, "test.u16", 0, 1), 60000);
  assert_int_equal(e8q_gguf_get_int(g, "test.i16", 0, 1), -30000);
  assert_int_equal(e8q_gguf_get_int(g, "test.u32", 0, 1), 4000000000LL);
  assert_int_equal(e8q_gguf_get_int(g, "test.i32", 0, 1), -2000000000LL);
  assert_int_equal(e8q_gguf_get_int(g, "test.i64", 0, 1), -((int64_t)1 << 40));
  assert_int_equal(e8q_gguf_get_int(g, "test.bool", 0, 1), 1);
  assert_int_equal(e8q_gguf_get_int(g, "absent", 77, 0), 77);
  assert_int_equal(e8q_gguf_kv_type(g, "test.u64"), E8Q_GGUF_U64);
  assert_int_equal(e8q_gguf_kv_type(g, "absent"), -1);
  E8Q_EXPECT_FATAL(e8q_gguf_get_int(g, "test.u64", 0, 1), path, "test.u64", "does not fit");
  E8Q_EXPECT_FATAL(e8q_gguf_get_int(g, "absent.key", 0, 1), path, "absent.key", "missing");
  E8Q_EXPECT_FATAL(e8q_gguf_get_int(g, "test.f32", 0, 0), path, "test.f32", "is a f32, not an integer");
  E8Q_EXPECT_FATAL(e8q_gguf_get_int(g, "test.str", 0, 1), path, "test.str", "string");
  /* floats */
  assert_true(e8q_gguf_get_float(g, "test.f32", 0, 1) == (double)0.1f);
  assert_true(e8q_gguf_get_float(g, "test.f64", 0, 1) == 1e-300);
  assert_true(e8q_gguf_get_float(g, "test.i16", 0, 1) == -30000.0);
  assert_true(e8q_gguf_get_float(g, "test.u64", 0, 1) == ldexp(1.0, 63));
  assert_true(e8q_gguf_get_float(g, "absent", 2.5, 0) == 2.5);
  E8Q_EXPECT_FATAL(e8q_gguf_get_float(g, "test.bool", 0, 1), path, "test.bool", "not a number");
  E8Q_EXPECT_FATAL(e8q_gguf_get_float(g, "nope", 0, 1), path, "nope", "missing");
  /* strings */
  size_t len = 0;
  const char *s = e8q_gguf_get_str(g, "test.str", &len);
  assert_int_equal(len, 7);
  assert_memory_equal(s, "ab\0cdef", 8); /* with the terminator of the copy */
  assert_string_equal(e8q_gguf_get_str(g, "general.architecture", NULL), "llama");
  assert_null(e8q_gguf_get_str(g, "absent", &len));
  assert_int_equal(len, 0);
  E8Q_EXPECT_FATAL(e8q_gguf_get_str(g, "test.u8", &len), path, "test.u8", "not a string");
  /* arrays */
  int et = 99;
  assert_int_equal(e8q_gguf_arr_len(g, "tokenizer.ggml.tokens", &et), TINY_VOCAB);
  assert_int_equal(et, E8Q_GGUF_STRING);
  const char *tok = e8q_gguf_arr_str(g, "tokenizer.ggml.tokens", 37, &len);
  assert_int_equal(len, 3);
  assert_memory_equal(tok, "t37", 3);
  assert_int_equal(e8q_gguf_arr_len(g, "absent", &et), 0);
  assert_int_equal(et, -1);
  E8Q_EXPECT_FATAL(e8q_gguf_arr_len(g, "test.i32", &et), path, "test.i32", "not an array");
  assert_int_equal(e8q_gguf_arr_len(g, "test.arr_i32", &et), 3);
  assert_int_equal(et, E8Q_GGUF_I32);
  assert_int_equal(e8q_gguf_arr_int(g, "test.arr_i32", 1), -8);
  assert_true(e8q_gguf_arr_float(g, "test.arr_i32", 2) == 9.0);
  assert_true(e8q_gguf_arr_float(g, "test.arr_f32", 1) == -2.25);
  assert_int_equal(e8q_gguf_arr_int(g, "test.arr_bool", 1), 1);
  assert_int_equal(e8q_gguf_arr_len(g, "test.arr_empty", &et), 0);
  assert_int_equal(et, E8Q_GGUF_U8);
  assert_int_equal(e8q_gguf_arr_len(g, "test.arr_nested", &et), 2);
  assert_int_equal(et, E8Q_GGUF_ARRAY);
  E8Q_EXPECT_FATAL(e8q_gguf_arr_int(g, "test.arr_i32", 3), path, "index 3", "test.arr_i32", "3 elements");
  E8Q_EXPECT_FATAL(e8q_gguf_arr_int(g, "test.arr_f32", 0), path, "test.arr_f32", "f32 values, not integers");
  E8Q_EXPECT_FATAL(e8q_gguf_arr_str(g, "test.arr_i32", 0, &len), path, "not strings");
  E8Q_EXPECT_FATAL(e8q_gguf_arr_float(g, "tokenizer.ggml.tokens", 0), path, "not numbers");
  E8Q_EXPECT_FATAL(e8q_gguf_arr_int(g, "test.arr_nested", 0), path, "array values");
  E8Q_EXPECT_FATAL(e8q_gguf_arr_int(g, "nope", 0), path, "nope", "missing");
  e8q_gguf_close(g);
  free(path);
  free(dir);
}

static void test_tiny_tensors(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_tensors");
  char *path = t_join(dir, "tiny.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  tiny_write(path, &o, &L);
  e8q_gguf *g = e8q_gguf_open(path);
  assert_int_equal(e8q_gguf_n_tensors(g), L.n_t);
  for (int i = 0; i < L.n_t; i++) {
    const e8q_gguf_tensor *t = e8q_gguf_tensor_at(g, i);
    assert_string_equal(t->name, L.names[i]);
    assert_ptr_equal(e8q_gguf_find(g, L.names[i]), t);
    assert_int_equal(t->type, L.types[i]);
    assert_int_equal(t->ne[0], L.ne[i][0]);
    assert_int_equal(t->ne[1], L.ne[i][1]);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->nbytes, L.nbytes[i]);
    assert_int_equal(t->offset + L.data_start, L.data_at[i]);
    /* the data pointer lies where the writer put the bytes */
    uint8_t *file = (uint8_t *)t_read_file(path, &(size_t){0});
    assert_memory_equal(e8q_gguf_data(g, t), file + L.data_at[i], t->nbytes);
    free(file);
    if (!e8q_ggml_type_supported(t->type)) continue;
    /* rows through the tensor API equal the block decoder on the raw bytes */
    int64_t rows = e8q_gguf_n_rows(t), n = e8q_gguf_numel(t);
    float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    e8q_gguf_read_rows_f32(g, t, 0, rows, a);
    e8q_ggml_dequant_row_ref(t->type, e8q_gguf_data(g, t), n, b);
    assert_memory_equal(a, b, (size_t)n * 4);
    if (rows > 2) { /* a middle range */
      e8q_gguf_read_rows_f32(g, t, 1, rows - 2, b);
      assert_memory_equal(b, a + t->ne[0], (size_t)((rows - 2) * t->ne[0]) * 4);
    }
    free(a);
    free(b);
  }
  assert_null(e8q_gguf_find(g, "nope"));
  assert_null(e8q_gguf_find(g, ""));
  E8Q_EXPECT_FATAL(e8q_gguf_tensor_at(g, L.n_t), "tensor index", "out of range");
  /* exact values, from the writer's own formulas */
  const e8q_gguf_tensor *emb = e8q_gguf_find(g, "token_embd.weight");
  float row[TINY_HIDDEN];
  e8q_gguf_read_rows_f32(g, emb, 39, 1, row);
  for (int c = 0; c < TINY_DIM; c++) assert_true(row[c] == tiny_embd(39, c));
  const e8q_gguf_tensor *k = e8q_gguf_find(g, "blk.0.attn_k.weight");
  e8q_gguf_read_rows_f32(g, k, 5, 1, row);
  for (int c = 0; c < TINY_DIM; c++) assert_true(row[c] == tiny_k(5, c));
  /* ranges and types the tensor API refuses */
  E8Q_EXPECT_FATAL(e8q_gguf_read_rows_f32(g, emb, 39, 2, row), path, "token_embd.weight", "rows [39, 41)",
                   "40 rows");
  E8Q_EXPECT_FATAL(e8q_gguf_read_rows_f32(g, emb, -1, 1, row), path, "token_embd.weight", "outside");
  const e8q_gguf_tensor *iq = e8q_gguf_find(g, "test.iq4_nl");
  assert_non_null(iq);
  assert_int_equal(iq->nbytes, 36);
  E8Q_EXPECT_FATAL(e8q_gguf_read_rows_f32(g, iq, 0, 1, row), path, "test.iq4_nl", "IQ4_NL", "cannot dequantize");
  e8q_gguf_close(g);
  free(path);
  free(dir);
}

static void test_tiny_nonfinite(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_nan");
  char *path = t_join(dir, "tiny.gguf");
  tiny_opts o = tiny_defaults();
  o.nan_embd_row = 7;
  tiny_layout L;
  tiny_write(path, &o, &L);
  e8q_gguf *g = e8q_gguf_open(path); /* opens: values are only looked at when read */
  const e8q_gguf_tensor *emb = e8q_gguf_find(g, "token_embd.weight");
  float buf[TINY_DIM * TINY_VOCAB];
  e8q_gguf_read_rows_f32(g, emb, 0, 7, buf); /* rows before the bad one are fine */
  e8q_gguf_read_rows_f32(g, emb, 8, 32, buf);
  E8Q_EXPECT_FATAL(e8q_gguf_read_rows_f32(g, emb, 5, 4, buf), path, "token_embd.weight", "row 7", "non-finite");
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "model.embed_tokens.weight", 0, TINY_DIM * TINY_VOCAB, buf), path,
                   "token_embd.weight", "non-finite");
  e8q_gguf_close(g);

  /* an Inf in an f32 norm */
  uint8_t *bytes = tiny_bytes(&(tiny_opts){.version = 3, .arch = "llama", .nan_embd_row = -1}, &L, path);
  int ti = t_index(&L, "blk.0.ffn_norm.weight");
  float inf = INFINITY;
  memcpy(bytes + L.data_at[ti] + 4 * 3, &inf, 4);
  t_write_file(path, bytes, L.size);
  free(bytes);
  g = e8q_gguf_open(path);
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "model.layers.0.post_attention_layernorm.weight", 0, TINY_DIM, buf),
                   path, "blk.0.ffn_norm.weight", "column 3", "non-finite");
  e8q_gguf_close(g);
  free(path);
  free(dir);
}

/* ---------------------------------------------------------------- tiny GGUF: HF view */

static e8q_config config_of(const e8q_gguf *g) {
  char *json = e8q_gguf_hf_config(g);
  cJSON *root = cJSON_Parse(json);
  assert_non_null(root);
  e8q_config cfg;
  e8q_config_from_json(root, e8q_gguf_path(g), &cfg);
  const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
  assert_true(cJSON_IsArray(arch) && cJSON_GetArraySize(arch) == 1);
  assert_string_equal(cJSON_GetArrayItem(arch, 0)->valuestring, "LlamaForCausalLM");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(root, "hidden_act")->valuestring, "silu");
  cJSON_Delete(root);
  free(json);
  return cfg;
}

static void test_tiny_hf_view(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_hf");
  char *path = t_join(dir, "tiny.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  tiny_write(path, &o, &L);
  e8q_gguf *g = e8q_gguf_open(path);

  e8q_config cfg = config_of(g);
  assert_string_equal(cfg.model_type, "llama");
  assert_int_equal(cfg.dim, TINY_DIM);
  assert_int_equal(cfg.hidden_dim, TINY_HIDDEN);
  assert_int_equal(cfg.n_layers, 1);
  assert_int_equal(cfg.n_heads, TINY_HEADS);
  assert_int_equal(cfg.n_kv_heads, TINY_KV_HEADS);
  assert_int_equal(cfg.head_dim, TINY_HD);
  assert_int_equal(cfg.vocab_size, TINY_VOCAB);
  assert_int_equal(cfg.max_seq_len, 128);
  assert_true(cfg.rope_theta == 500000.0);
  assert_true(cfg.norm_eps == 1e-6); /* the f32 1e-6 written as its shortest decimal */
  assert_int_equal(cfg.tied, 1);
  assert_int_equal(cfg.bos_id, 3);
  assert_int_equal(cfg.eos_id, 4);
  char *json = e8q_gguf_hf_config(g);
  assert_non_null(strstr(json, "\"torch_dtype\":\"float32\""));
  free(json);

  /* names */
  static const char *const pairs[][2] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"},
      {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
      {"model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"},
      {"model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"},
      {"model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"},
      {"model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"},
      {"model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"},
      {"model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"},
  };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    const e8q_gguf_tensor *t = e8q_gguf_find_hf(g, pairs[i][0]);
    if (!t || strcmp(t->name, pairs[i][1]) != 0) fail_msg("%s does not map to %s", pairs[i][0], pairs[i][1]);
  }
  assert_null(e8q_gguf_find_hf(g, "lm_head.weight")); /* tied: no output.weight */
  assert_null(e8q_gguf_find_hf(g, "model.layers.1.mlp.up_proj.weight"));
  assert_null(e8q_gguf_find_hf(g, "model.layers.00.mlp.up_proj.weight"));
  assert_null(e8q_gguf_find_hf(g, "model.layers.0.mlp.up_proj"));
  assert_null(e8q_gguf_find_hf(g, "model.layers..mlp.up_proj.weight"));
  assert_null(e8q_gguf_find_hf(g, "token_embd.weight"));

  int64_t shape[2];
  assert_int_equal(e8q_gguf_hf_shape(g, "model.layers.0.mlp.down_proj.weight", shape), 2);
  assert_int_equal(shape[0], TINY_DIM);
  assert_int_equal(shape[1], TINY_HIDDEN);
  assert_int_equal(e8q_gguf_hf_shape(g, "model.embed_tokens.weight", shape), 2);
  assert_int_equal(shape[0], TINY_VOCAB);
  assert_int_equal(shape[1], TINY_DIM);
  assert_int_equal(e8q_gguf_hf_shape(g, "model.norm.weight", shape), 1);
  assert_int_equal(shape[0], TINY_DIM);
  assert_int_equal(e8q_gguf_hf_shape(g, "lm_head.weight", shape), 0);

  /* q and k: HF row h*hd + s*hd/2 + i comes from GGUF row h*hd + 2i + s (the values say which) */
  float q[TINY_HEADS * TINY_HD * TINY_DIM], kk[TINY_KV_HEADS * TINY_HD * TINY_DIM];
  e8q_gguf_read_hf_f32(g, "model.layers.0.self_attn.q_proj.weight", 0, TINY_HEADS * TINY_HD * TINY_DIM, q);
  e8q_gguf_read_hf_f32(g, "model.layers.0.self_attn.k_proj.weight", 0, TINY_KV_HEADS * TINY_HD * TINY_DIM, kk);
  for (int h = 0; h < TINY_HEADS; h++)
    for (int s = 0; s < 2; s++)
      for (int i = 0; i < TINY_HD / 2; i++) {
        int hf = h * TINY_HD + s * TINY_HD / 2 + i, gg = h * TINY_HD + 2 * i + s;
        assert_int_equal(e8q_gguf_rope_row(hf, TINY_HD), gg);
        for (int c = 0; c < TINY_DIM; c++) {
          if (q[hf * TINY_DIM + c] != tiny_q(gg, c)) fail_msg("q HF row %d col %d: %g, want GGUF row %d's %g", hf,
                                                            c, q[hf * TINY_DIM + c], gg, tiny_q(gg, c));
          if (h < TINY_KV_HEADS && kk[hf * TINY_DIM + c] != tiny_k(gg, c))
            fail_msg("k HF row %d col %d: %g, want %g", hf, c, kk[hf * TINY_DIM + c], tiny_k(gg, c));
        }
      }
  /* v, down: no permutation; partial ranges crossing rows */
  float v[TINY_KV_HEADS * TINY_HD * TINY_DIM];
  e8q_gguf_read_hf_f32(g, "model.layers.0.self_attn.v_proj.weight", 0, TINY_HD * TINY_DIM, v);
  for (int r = 0; r < TINY_HD; r++)
    for (int c = 0; c < TINY_DIM; c++) assert_true(v[r * TINY_DIM + c] == tiny_v(r, c));
  float part[100];
  e8q_gguf_read_hf_f32(g, "model.layers.0.self_attn.q_proj.weight", 45, 100, part);
  assert_memory_equal(part, q + 45, sizeof part);
  e8q_gguf_read_hf_f32(g, "model.layers.0.mlp.down_proj.weight", 63, 3, part);
  assert_true(part[0] == tiny_down(0, 63) && part[1] == tiny_down(1, 0) && part[2] == tiny_down(1, 1));
  e8q_gguf_read_hf_f32(g, "model.norm.weight", 31, 1, part);
  assert_true(part[0] == 1.0f + 31.0f / 32.0f);
  e8q_gguf_read_hf_f32(g, "model.norm.weight", 0, 0, part);
  /* refusals */
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "model.layers.5.mlp.up_proj.weight", 0, 1, part), path,
                   "blk.5.ffn_up.weight", "model.layers.5.mlp.up_proj.weight");
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "lm_head.weight", 0, 1, part), path, "output.weight");
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "model.whatever", 0, 1, part), path, "model.whatever");
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "model.norm.weight", 30, 3, part), path, "output_norm.weight",
                   "[30, 33)", "32 elements");
  E8Q_EXPECT_FATAL(e8q_gguf_read_hf_f32(g, "model.norm.weight", -1, 1, part), path, "outside");
  e8q_gguf_close(g);

  /* untied, vocab from the token list, explicit key/value lengths */
  o = tiny_defaults();
  o.untied = 1;
  o.no_vocab_size = 1;
  o.key_length = o.value_length = TINY_HD;
  tiny_write(path, &o, &L);
  g = e8q_gguf_open(path);
  cfg = config_of(g);
  assert_int_equal(cfg.tied, 0);
  assert_int_equal(cfg.vocab_size, TINY_VOCAB);
  assert_int_equal(cfg.head_dim, TINY_HD);
  const e8q_gguf_tensor *lm = e8q_gguf_find_hf(g, "lm_head.weight");
  assert_non_null(lm);
  assert_string_equal(lm->name, "output.weight");
  e8q_gguf_read_hf_f32(g, "lm_head.weight", 5 * TINY_DIM, TINY_DIM, part);
  for (int c = 0; c < TINY_DIM; c++) assert_true(part[c] == (float)(int8_t)(uint8_t)(5 - c));
  e8q_gguf_close(g);
  free(path);
  free(dir);
}

/* every refusal of e8q_gguf_hf_config, by the key it names */
static void test_tiny_hf_refusals(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_refuse");
  char *path = t_join(dir, "tiny.gguf");
  tiny_layout L;
  e8q_gguf *g;
#define REFUSED(setup, ...)                                       \
  do {                                                            \
    tiny_opts o = tiny_defaults();                                \
    setup;                                                        \
    tiny_write(path, &o, &L);                                     \
    g = e8q_gguf_open(path);                                      \
    E8Q_EXPECT_FATAL(e8q_gguf_hf_config(g), path, __VA_ARGS__);   \
    e8q_gguf_close(g);                                            \
  } while (0)
  REFUSED(o.arch = "qwen2", "general.architecture", "qwen2");
  REFUSED(o.rope_scaling_type = "linear", "llama.rope.scaling.type", "linear");
  REFUSED(o.rope_scaling_factor = 4.0f, "llama.rope.scaling.factor", "4");
  REFUSED(o.freq_scale = 0.5f, "llama.rope.freq_scale", "0.5");
  REFUSED(o.expert_count = 8, "llama.expert_count", "8");
  REFUSED((o.key_length = TINY_HD, o.value_length = 8), "key_length", "value_length", "16", "8");
  REFUSED((o.key_length = TINY_HD, o.rope_dim = 8), "llama.rope.dimension_count", "8", "16");
  REFUSED(o.rope_dim = 8, "blk.0.attn_q.weight", "32 rows", "head dimension 8");
#undef REFUSED
  /* explicitly "none" scaling and unit factors are accepted */
  tiny_opts o = tiny_defaults();
  o.rope_scaling_type = "none";
  o.rope_scaling_factor = 1.0f;
  o.freq_scale = 1.0f;
  tiny_write(path, &o, &L);
  g = e8q_gguf_open(path);
  e8q_config cfg = config_of(g);
  assert_int_equal(cfg.head_dim, TINY_HD);
  e8q_gguf_close(g);
  free(path);
  free(dir);
}

/* ---------------------------------------------------------------- bad files */

/* writes bytes[0, n) to path and expects e8q_gguf_open to refuse it with a message holding every
 * string of need (NULL-terminated); a function of its own, so callers keep no state across longjmp */
static __attribute__((noinline)) void open_refused(const char *path, const void *bytes, size_t n,
                                                   const char *const *need) {
  t_write_file(path, bytes, n);
  e8q_error_trap trap;
  if (setjmp(trap.env) == 0) {
    e8q_error_trap_arm(&trap);
    e8q_gguf *g = e8q_gguf_open(path);
    e8q_error_trap_arm(NULL);
    e8q_gguf_close(g);
    fail_msg("%s (%zu bytes) was accepted; expected a refusal mentioning \"%s\"", path, n, need[1]);
  }
  for (int i = 0; need[i]; i++)
    if (!strstr(trap.message, need[i])) fail_msg("fatal message \"%s\" lacks \"%s\"", trap.message, need[i]);
}
#define OPEN_REFUSED(bytes, n, ...) open_refused(path, (bytes), (n), (const char *const[]){path, __VA_ARGS__, NULL})
/* c = a fresh copy of the L.size bytes of b, stmt applied to it, then refused with every needle
 * (the test's b, c, L and path) */
#define EDIT(stmt, ...)                   \
  do {                                    \
    memcpy(c, b, L.size);                 \
    stmt;                                 \
    OPEN_REFUSED(c, L.size, __VA_ARGS__); \
  } while (0)

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* the tensor whose data holds file position pos */
static int tensor_at_pos(const tiny_layout *L, size_t pos) {
  for (int i = 0; i < L->n_t; i++)
    if (pos >= L->data_at[i] && pos < L->data_at[i] + L->nbytes[i]) return i;
  fail_msg("no tensor data at %zu", pos);
  return -1;
}

static void test_bad_truncated(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_trunc");
  char *path = t_join(dir, "bad.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  uint8_t *b = tiny_bytes(&o, &L, path);
  OPEN_REFUSED(b, 0, "too short");
  OPEN_REFUSED(b, 10, "10 bytes", "too short");
  OPEN_REFUSED(b, L.header_end, "truncated or corrupt GGUF", "metadata keys cannot fit");
  OPEN_REFUSED(b, L.kv_mid, "truncated or corrupt GGUF");
  OPEN_REFUSED(b, L.ti_mid, "truncated or corrupt GGUF", "tensor");
  assert_true(L.ti_end < L.data_start); /* the writer pads */
  OPEN_REFUSED(b, L.ti_end, "truncated or corrupt GGUF", "data section");
  int t = tensor_at_pos(&L, L.data_mid);
  OPEN_REFUSED(b, L.data_mid, "truncated or corrupt GGUF", L.names[t], "ends past the end of the file");
  OPEN_REFUSED(b, L.size - 1, "truncated or corrupt GGUF", L.names[L.n_t - 1], "ends past the end of the file");
  /* every cut refused, none crashes */
  for (size_t cut = 1; cut < L.size; cut += 7) OPEN_REFUSED(b, cut, "GGUF");
  /* the whole file is fine */
  t_write_file(path, b, L.size);
  e8q_gguf_close(e8q_gguf_open(path));
  free(b);
  free(path);
  free(dir);
}

static void test_bad_header_and_metadata(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_badmeta");
  char *path = t_join(dir, "bad.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  uint8_t *b = tiny_bytes(&o, &L, path), *c = malloc(L.size);
  EDIT(memcpy(c, "GGUX", 4), "not a GGUF file");
  EDIT(memcpy(c, "\0\0\0\0", 4), "not a GGUF file");
  EDIT(put_u32(c + 4, 1), "GGUF version 1 is not supported", "2 and 3");
  EDIT(put_u32(c + 4, 4), "GGUF version 4 is not supported");
  EDIT(put_u32(c + 4, 0x03000000u), "big-endian");
  EDIT(put_u64(c + 8, (uint64_t)1 << 40), "tensors cannot fit");
  EDIT(put_u64(c + 16, (uint64_t)-1), "metadata keys cannot fit");
  /* a string length past the end of the file */
  EDIT(put_u64(c + L.key_at[2], (uint64_t)1 << 40), "truncated or corrupt GGUF", "metadata key 2", "past the end");
  EDIT(put_u64(c + L.key_at[2], (uint64_t)-1), "metadata key 2", "past the end");
  int k = kv_index(&L, "general.architecture");
  EDIT(put_u64(c + L.value_at[k] + 4, L.size), "general.architecture", "past the end");
  EDIT(put_u64(c + L.name_at[3], L.size), "the name of tensor 3", "past the end");
  EDIT(put_u64(c + L.key_at[4], 0), "metadata key 4", "is empty");
  EDIT(c[L.key_at[4] + 9] = 0, "metadata key 4", "NUL byte");
  /* value types and values */
  EDIT(put_u32(c + L.value_at[k], 13), "key general.architecture has value type 13");
  k = kv_index(&L, "test.bool");
  EDIT(c[L.value_at[k] + 4] = 2, "test.bool", "must be 0 or 1");
  k = kv_index(&L, "test.arr_bool");
  EDIT(c[L.value_at[k] + 4 + 4 + 8 + 1] = 7, "element 1 of bool array test.arr_bool");
  k = kv_index(&L, "tokenizer.ggml.tokens");
  EDIT(put_u64(c + L.value_at[k] + 8, (uint64_t)1 << 40), "array tokenizer.ggml.tokens claims 1099511627776");
  EDIT(put_u64(c + L.value_at[k] + 8, TINY_VOCAB + 500), "truncated or corrupt GGUF");
  EDIT(put_u32(c + L.value_at[k] + 4, 99), "array tokenizer.ggml.tokens has element type 99");
  k = kv_index(&L, "test.arr_nested");
  /* the inner u16 array of element 1: outer type+elemtype+count, string array (4+8+9+10), then its own */
  EDIT(put_u64(c + L.value_at[k] + 4 + 4 + 8 + (4 + 8 + 9 + 10) + 4 + 8 + 4, (uint64_t)1 << 50),
       "test.arr_nested[1][0]", "claims");
  /* duplicate keys */
  k = kv_index(&L, "test.i8");
  EDIT(memcpy(c + L.key_at[k] + 8, "test.u8", 7), "metadata key test.u8 appears twice");
  free(c);
  free(b);

  /* alignments: a valid 64 (offsets follow it), a bad 24 */
  o.alignment = 64;
  tiny_write(path, &o, &L);
  e8q_gguf *g = e8q_gguf_open(path);
  assert_int_equal(e8q_gguf_alignment(g), 64);
  assert_int_equal(e8q_gguf_data_offset(g) % 64, 0);
  for (int i = 0; i < e8q_gguf_n_tensors(g); i++) assert_int_equal(e8q_gguf_tensor_at(g, i)->offset % 64, 0);
  e8q_gguf_close(g);
  o.alignment = 24;
  tiny_write(path, &o, &L);
  E8Q_EXPECT_FATAL(e8q_gguf_open(path), path, "general.alignment = 24", "power of two");

  /* hand-built files: no tensors and no keys; arrays nested too deep; alignment as a string */
  wbuf w = {0};
  wb_bytes(&w, "GGUF", 4);
  wb_u32(&w, 2);
  wb_u64(&w, 0);
  wb_u64(&w, 0);
  t_write_file(path, w.p, w.n);
  g = e8q_gguf_open(path);
  assert_int_equal(e8q_gguf_n_tensors(g), 0);
  assert_int_equal(e8q_gguf_n_kv(g), 0);
  assert_int_equal(e8q_gguf_version(g), 2);
  e8q_gguf_close(g);
  w.n = 16;
  wb_u64(&w, 1);
  wb_str(&w, "deep");
  wb_u32(&w, E8Q_GGUF_ARRAY);
  for (int d = 0; d < 9; d++) {
    wb_u32(&w, E8Q_GGUF_ARRAY);
    wb_u64(&w, 1);
  }
  wb_u32(&w, E8Q_GGUF_U8);
  wb_u64(&w, 0);
  OPEN_REFUSED(w.p, w.n, "deep", "nests arrays deeper than 8");
  w.n = 24;
  wb_str(&w, "general.alignment");
  wb_u32(&w, E8Q_GGUF_STRING);
  wb_str(&w, "32");
  OPEN_REFUSED(w.p, w.n, "general.alignment is a string, not an integer");
  free(w.p);
  free(path);
  free(dir);
}

static void test_bad_tensor_infos(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_badti");
  char *path = t_join(dir, "bad.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  uint8_t *b = tiny_bytes(&o, &L, path), *c = malloc(L.size);
  int emb = t_index(&L, "token_embd.weight"), q = t_index(&L, "blk.0.attn_q.weight");
  int kt = t_index(&L, "blk.0.attn_k.weight"), last = L.n_t - 1, down = t_index(&L, "blk.0.ffn_down.weight");
  /* unknown types, by number, naming the tensor */
  EDIT(put_u32(c + L.type_at[q], 4), "tensor blk.0.attn_q.weight has unknown ggml type 4");
  EDIT(put_u32(c + L.type_at[q], 200), "tensor blk.0.attn_q.weight has unknown ggml type 200");
  EDIT(put_u32(c + L.type_at[q], 31), "unknown ggml type 31");
  /* dimensions */
  EDIT(put_u32(c + L.ndims_at[q], 5), "blk.0.attn_q.weight has 5 dimensions");
  EDIT(put_u32(c + L.ndims_at[q], 0), "blk.0.attn_q.weight has 0 dimensions");
  EDIT(put_u64(c + L.ne0_at[q], 0), "blk.0.attn_q.weight has ne[0] = 0");
  EDIT(put_u64(c + L.ne0_at[q] + 8, (uint64_t)1 << 63), "blk.0.attn_q.weight has ne[1] = 9223372036854775808");
  EDIT(put_u64(c + L.ne0_at[down], (uint64_t)1 << 62), "blk.0.ffn_down.weight", "overflows 64 bits");
  /* block size multiples: a row of 48 in Q8_0 (blocks of 32); a Q4_K row of 384 */
  EDIT(put_u64(c + L.ne0_at[emb], 48), "token_embd.weight", "ne[0] = 48 is not a multiple of the Q8_0 block size 32");
  int q4k = t_index(&L, "test.q4_k");
  EDIT(put_u64(c + L.ne0_at[q4k], 384), "test.q4_k", "not a multiple of the Q4_K block size 256");
  /* the row length changed from 32 to 64 with the type fixed: the size no longer fits its space */
  EDIT(put_u64(c + L.ne0_at[kt], 64), "overlap");
  /* offsets */
  EDIT(put_u64(c + L.offset_at[last], (uint64_t)1 << 40), L.names[last], "ends past the end of the file");
  EDIT(put_u64(c + L.offset_at[last], (uint64_t)-32), L.names[last], "ends past the end of the file");
  EDIT(put_u64(c + L.offset_at[emb], 1), "token_embd.weight", "not a multiple of the alignment 32");
  EDIT(put_u64(c + L.offset_at[q], L.data_at[q - 1] - L.data_start), "overlap", L.names[q - 1],
       "blk.0.attn_q.weight");
  /* names */
  EDIT(memcpy(c + L.name_at[kt] + 8, "blk.0.attn_v.weight", 19), "tensor blk.0.attn_v.weight appears twice");
  EDIT(put_u64(c + L.name_at[q], 0), "the name of tensor", "is empty");
  free(c);
  free(b);
  free(path);
  free(dir);
}

static void test_bad_paths(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_paths");
  char *path = t_join(dir, "missing.gguf");
  E8Q_EXPECT_FATAL(e8q_gguf_open(path), "cannot open GGUF file", path);
  assert_false(e8q_gguf_is_file(path));
  E8Q_EXPECT_FATAL(e8q_gguf_open(dir), dir, "is not a regular file", "directory");
  assert_false(e8q_gguf_is_file(dir));
  char *fifo = t_join(dir, "fifo.gguf");
  if (mkfifo(fifo, 0600) == 0) {
    E8Q_EXPECT_FATAL(e8q_gguf_open(fifo), fifo, "is not a regular file", "FIFO");
    assert_false(e8q_gguf_is_file(fifo));
  } else {
    print_message("mkfifo %s: %s; FIFO case not run\n", fifo, strerror(errno));
  }
  char *small = t_join(dir, "small.gguf");
  t_write_file(small, "GGU", 3);
  assert_false(e8q_gguf_is_file(small));
  t_write_file(small, "GGUFxx", 6);
  assert_true(e8q_gguf_is_file(small)); /* the magic only */
  E8Q_EXPECT_FATAL(e8q_gguf_open(small), small, "too short");
  t_write_file(small, "{\"a\": 1}", 8);
  assert_false(e8q_gguf_is_file(small));
  free(small);
  free(fifo);
  free(path);
  free(dir);
}

/* one trapped attempt: open, read every tensor and the config; 1 if all of it went through */
static __attribute__((noinline)) int try_everything(const char *path) {
  e8q_error_trap trap;
  static e8q_gguf *volatile g;
  static float *volatile buf;
  g = NULL;
  buf = NULL;
  if (setjmp(trap.env) != 0) {
    free(buf); /* g leaks: a fatal mid-call leaves it half made (tests only) */
    return 0;
  }
  e8q_error_trap_arm(&trap);
  g = e8q_gguf_open(path);
  for (int i = 0; i < e8q_gguf_n_tensors(g); i++) {
    const e8q_gguf_tensor *t = e8q_gguf_tensor_at(g, i);
    if (!e8q_ggml_type_supported(t->type) || e8q_gguf_numel(t) > (1 << 20)) continue;
    buf = malloc((size_t)e8q_gguf_numel(t) * 4);
    e8q_gguf_read_rows_f32(g, t, 0, e8q_gguf_n_rows(t), buf);
    free(buf);
    buf = NULL;
  }
  free(e8q_gguf_hf_config(g));
  e8q_error_trap_arm(NULL);
  e8q_gguf_close(g);
  return 1;
}

/* random byte edits of the tiny file: every one is read or refused, none crashes (run under a
 * sanitizer to make "crash" mean any out-of-bounds access) */
static void test_bad_random_edits(void **state) {
  (void)state;
  char *dir = t_tmpdir("gguf_fuzz");
  char *path = t_join(dir, "fuzz.gguf");
  tiny_opts o = tiny_defaults();
  tiny_layout L;
  uint8_t *b = tiny_bytes(&o, &L, path), *c = malloc(L.size);
  t_rng rng = {t_fresh_seed("gguf_fuzz")};
  int ok = 0, refused = 0;
  for (int it = 0; it < 1500; it++) {
    memcpy(c, b, L.size);
    size_t n = L.size;
    int edits = 1 + (int)(t_rng_u64(&rng) % 4);
    for (int e = 0; e < edits; e++) {
      /* mostly inside the header and infos, where the structure is */
      size_t span = t_rng_u64(&rng) % 4 ? L.data_start : L.size;
      size_t at = (size_t)(t_rng_u64(&rng) % span);
      switch (t_rng_u64(&rng) % 4) {
        case 0: c[at] = (uint8_t)t_rng_u64(&rng); break;
        case 1: c[at] ^= (uint8_t)(1u << (t_rng_u64(&rng) % 8)); break;
        case 2: c[at] = (uint8_t)(c[at] + (t_rng_u64(&rng) % 2 ? 1 : 0xff)); break;
        default: n = at > 0 ? at : 1; break; /* truncation */
      }
    }
    t_write_file(path, c, n);
    if (try_everything(path)) ok++;
    else refused++;
  }
  print_message("random edits: %d read, %d refused\n", ok, refused);
  assert_true(refused > 0);
  free(c);
  free(b);
  free(path);
  free(dir);
}

/* ---------------------------------------------------------------- SmolLM2-135M (real model) */

static void test_smollm2_file(void **state) {
  (void)state;
  char *path = model_path();
  assert_true(e8q_gguf_is_file(path));
  e8q_gguf *g = e8q_gguf_open(path);
  golden *gold = golden_load();
  for (int i = 0; i < gold->n_recs; i++)
    if (gold->recs[i].kind == 4) {
      struct stat sb;
      assert_int_equal(stat(path, &sb), 0);
      if ((uint64_t)sb.st_size != gold->recs[i].model_size)
        fail_msg("%s has %lld bytes; the golden file was made from one of %llu (regenerate it)", path,
                 (long long)sb.st_size, (unsigned long long)gold->recs[i].model_size);
    }
  golden_free(gold);
  /* as gguf-py's GGUFReader reads the file */
  assert_int_equal(e8q_gguf_version(g), 3);
  assert_int_equal(e8q_gguf_n_tensors(g), 272);
  assert_int_equal(e8q_gguf_n_kv(g), 33);
  assert_int_equal(e8q_gguf_data_offset(g), 1785664);
  int counts[E8Q_GGML_TYPE_LIMIT] = {0};
  for (int i = 0; i < e8q_gguf_n_tensors(g); i++) counts[e8q_gguf_tensor_at(g, i)->type]++;
  assert_int_equal(counts[E8Q_GGML_Q4_1], 210);
  assert_int_equal(counts[E8Q_GGML_F32], 61);
  assert_int_equal(counts[E8Q_GGML_Q8_0], 1);
  const e8q_gguf_tensor *emb = e8q_gguf_find(g, "token_embd.weight");
  assert_non_null(emb);
  assert_int_equal(emb->type, E8Q_GGML_Q8_0);
  assert_int_equal(emb->n_dims, 2);
  assert_int_equal(emb->ne[0], 576);
  assert_int_equal(emb->ne[1], 49152);
  assert_int_equal(emb->offset, 0);
  assert_int_equal(emb->nbytes, (uint64_t)49152 * 18 * 34);
  const e8q_gguf_tensor *q = e8q_gguf_find(g, "blk.0.attn_q.weight");
  assert_int_equal(q->type, E8Q_GGML_Q4_1);
  assert_int_equal(q->offset, 33806656 - 1785664);
  assert_string_equal(e8q_gguf_get_str(g, "general.name", NULL), "Smollm2 135M 8k Lc100K Mix1 Ep2");
  size_t len;
  assert_non_null(e8q_gguf_get_str(g, "tokenizer.chat_template", &len));
  assert_int_equal(len, 368);
  int et;
  assert_int_equal(e8q_gguf_arr_len(g, "tokenizer.ggml.tokens", &et), 49152);
  assert_int_equal(et, E8Q_GGUF_STRING);
  const char *s = e8q_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &len);
  assert_true(len == 13 && memcmp(s, "<|endoftext|>", 13) == 0);
  s = e8q_gguf_arr_str(g, "tokenizer.ggml.tokens", 49151, &len);
  assert_true(len == 7 && memcmp(s, "ectable", 7) == 0);
  s = e8q_gguf_arr_str(g, "tokenizer.ggml.merges", 0, &len);
  assert_true(len == 4 && memcmp(s, "\xc4\xa0 t", 4) == 0);
  assert_int_equal(e8q_gguf_arr_len(g, "tokenizer.ggml.merges", &et), 48900);
  assert_int_equal(e8q_gguf_arr_int(g, "tokenizer.ggml.token_type", 0), 3);
  assert_int_equal(e8q_gguf_arr_int(g, "tokenizer.ggml.token_type", 1000), 1);
  assert_int_equal(e8q_gguf_get_int(g, "tokenizer.ggml.add_bos_token", -1, 1), 0);
  e8q_gguf_close(g);
  free(path);
}

static void test_smollm2_config(void **state) {
  (void)state;
  char *path = model_path();
  e8q_gguf *g = e8q_gguf_open(path);
  e8q_config cfg = config_of(g);
  expect_config(&cfg, &(e8q_config){.model_type = "llama", .dim = 576, .hidden_dim = 1536, .n_layers = 30,
                                    .n_heads = 9, .n_kv_heads = 3, .head_dim = 64, .vocab_size = 49152,
                                    .max_seq_len = 8192, .rope_theta = 100000.0, .norm_eps = 1e-5, .tied = 1,
                                    .bos_id = 1, .eos_id = 2});
  char *json = e8q_gguf_hf_config(g);
  assert_non_null(strstr(json, "\"torch_dtype\":\"float32\""));
  assert_non_null(strstr(json, "\"rms_norm_eps\":1e-05"));
  free(json);
  e8q_gguf_close(g);
  free(path);
}

/* whole rows and whole-tensor sums in HF order, against gguf-py's dequantization */
static void test_smollm2_golden(void **state) {
  (void)state;
  char *path = model_path();
  e8q_gguf *g = e8q_gguf_open(path);
  golden *gold = golden_load();
  int n_rows = 0, n_sums = 0;
  for (int i = 0; i < gold->n_recs; i++) {
    const golden_rec *r = &gold->recs[i];
    if (r->kind == 2) {
      int64_t shape[2];
      int nd = e8q_gguf_hf_shape(g, r->name, shape);
      assert_true(nd == 1 || nd == 2);
      int64_t cols = nd == 2 ? shape[1] : shape[0];
      assert_int_equal(cols, r->cols);
      float *v = malloc((size_t)cols * 4);
      e8q_gguf_read_hf_f32(g, r->name, r->row * cols, cols, v);
      for (int64_t c = 0; c < cols; c++)
        if (!same_bits(v[c], r->values[c]))
          fail_msg("%s row %lld col %lld: %.9g, gguf says %.9g", r->name, (long long)r->row, (long long)c, v[c],
                   r->values[c]);
      free(v);
      n_rows++;
    } else if (r->kind == 3) {
      int64_t shape[2];
      int nd = e8q_gguf_hf_shape(g, r->name, shape);
      int64_t n = nd == 2 ? shape[0] * shape[1] : shape[0];
      assert_int_equal(n, r->numel);
      const int64_t chunk = (int64_t)1 << 20;
      float *v = malloc((size_t)chunk * 4);
      t_sum s = {0}, ws = {0}, ss = {0};
      for (int64_t at = 0; at < n; at += chunk) {
        int64_t m = n - at < chunk ? n - at : chunk;
        e8q_gguf_read_hf_f32(g, r->name, at, m, v);
        for (int64_t j = 0; j < m; j++) {
          double x = v[j];
          sum_add(&s, x);
          sum_add(&ws, x * (double)((at + j) % 1000 + 1)); /* exact products: 24-bit x times < 2^10 */
          sum_add(&ss, x * x);                             /* exact: 48 bits */
        }
      }
      free(v);
      /* compensated sums of exact terms against math.fsum: agree to a few units of the last place */
      T_NEAR(sum_value(&s), r->sum, 1e-13 * s.abs, r->name);
      T_NEAR(sum_value(&ws), r->wsum, 1e-13 * ws.abs, r->name);
      T_NEAR(sum_value(&ss), r->sumsq, 1e-13 * ss.abs, r->name);
      n_sums++;
    }
  }
  assert_true(n_rows >= 20 && n_sums >= 4);
  golden_free(gold);
  e8q_gguf_close(g);
  free(path);
}

/* mean over heads and i < hd/2 of |log(norm of row h*hd+i / norm of row h*hd+i+hd/2)| */
static double half_pair_score(const double *norms, int heads, int hd) {
  double s = 0;
  for (int h = 0; h < heads; h++)
    for (int i = 0; i < hd / 2; i++) s += fabs(log(norms[h * hd + i] / norms[h * hd + i + hd / 2]));
  return s / (heads * hd / 2);
}

static void test_smollm2_permutation(void **state) {
  (void)state;
  char *path = model_path();
  e8q_gguf *g = e8q_gguf_open(path);
  const int hd = 64, cols = 576;
  /* the row map is a bijection within each head and matches the converter's formula */
  int seen[576] = {0};
  for (int r = 0; r < 576; r++) {
    int64_t gg = e8q_gguf_rope_row(r, hd);
    int h = r / hd, j = r % hd, s = j / (hd / 2), i = j % (hd / 2);
    assert_int_equal(gg, h * hd + 2 * i + s);
    assert_true(gg / hd == h);
    seen[gg]++;
  }
  for (int r = 0; r < 576; r++) assert_int_equal(seen[r], 1);

  double score[2][3] = {{0}}; /* [q, k][HF, raw GGUF, the opposite permutation] */
  float *hf = malloc((size_t)576 * cols * 4), *raw = malloc((size_t)576 * cols * 4);
  double *n_hf = malloc(576 * sizeof(double)), *n_raw = malloc(576 * sizeof(double)), *n_wrong = malloc(576 * sizeof(double));
  for (int layer = 0; layer < 30; layer++)
    for (int which = 0; which < 2; which++) {
      int heads = which == 0 ? 9 : 3, rows = heads * hd;
      char hf_name[96], gg_name[64];
      snprintf(hf_name, sizeof hf_name, "model.layers.%d.self_attn.%s_proj.weight", layer, which == 0 ? "q" : "k");
      snprintf(gg_name, sizeof gg_name, "blk.%d.attn_%s.weight", layer, which == 0 ? "q" : "k");
      const e8q_gguf_tensor *t = e8q_gguf_find(g, gg_name);
      assert_ptr_equal(e8q_gguf_find_hf(g, hf_name), t);
      assert_int_equal(e8q_gguf_n_rows(t), rows);
      e8q_gguf_read_hf_f32(g, hf_name, 0, (int64_t)rows * cols, hf);
      e8q_gguf_read_rows_f32(g, t, 0, rows, raw);
      /* round trip: HF row r is GGUF row h*hd + 2i + s, bit for bit */
      for (int r = 0; r < rows; r++) {
        int h = r / hd, j = r % hd, s = j / (hd / 2), i = j % (hd / 2), gg = h * hd + 2 * i + s;
        if (memcmp(hf + (size_t)r * cols, raw + (size_t)gg * cols, (size_t)cols * 4) != 0)
          fail_msg("%s: HF row %d is not GGUF row %d", hf_name, r, gg);
      }
      for (int r = 0; r < rows; r++) {
        double a = 0, b = 0;
        for (int c = 0; c < cols; c++) {
          a += (double)hf[(size_t)r * cols + c] * hf[(size_t)r * cols + c];
          b += (double)raw[(size_t)r * cols + c] * raw[(size_t)r * cols + c];
        }
        n_hf[r] = sqrt(a);
        n_raw[r] = sqrt(b);
      }
      /* the other direction: row h*hd + 2i + s taken from GGUF row h*hd + s*hd/2 + i */
      for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++)
          for (int s = 0; s < 2; s++) n_wrong[h * hd + 2 * i + s] = n_raw[h * hd + s * hd / 2 + i];
      score[which][0] += half_pair_score(n_hf, heads, hd) / 30;
      score[which][1] += half_pair_score(n_raw, heads, hd) / 30;
      score[which][2] += half_pair_score(n_wrong, heads, hd) / 30;
    }
  /* RoPE rotates HF rows i and i + hd/2 of a head together: their norms match far better in the
   * un-permuted layout than in the GGUF layout or after the opposite permutation (measured with
   * gguf-py: q 0.148 / 0.442 / 0.265, k 0.161 / 0.410 / 0.261) */
  for (int w = 0; w < 2; w++) {
    print_message("%s: half-pair log-norm gap HF %.3f, GGUF %.3f, opposite %.3f\n", w ? "k" : "q", score[w][0],
                  score[w][1], score[w][2]);
    assert_true(score[w][0] < 0.75 * score[w][2]);
    assert_true(score[w][0] < 0.5 * score[w][1]);
  }
  free(hf);
  free(raw);
  free(n_hf);
  free(n_raw);
  free(n_wrong);
  e8q_gguf_close(g);
  free(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_blocks),
      cmocka_unit_test(test_blocks_by_hand),
      cmocka_unit_test(test_tiny_metadata),
      cmocka_unit_test(test_tiny_tensors),
      cmocka_unit_test(test_tiny_nonfinite),
      cmocka_unit_test(test_tiny_hf_view),
      cmocka_unit_test(test_tiny_hf_refusals),
      cmocka_unit_test(test_bad_truncated),
      cmocka_unit_test(test_bad_header_and_metadata),
      cmocka_unit_test(test_bad_tensor_infos),
      cmocka_unit_test(test_bad_paths),
      cmocka_unit_test(test_bad_random_edits),
      cmocka_unit_test(test_smollm2_file),
      cmocka_unit_test(test_smollm2_config),
      cmocka_unit_test(test_smollm2_golden),
      cmocka_unit_test(test_smollm2_permutation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
