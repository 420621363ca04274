/* coordinator/demo_model.c: the deterministic random demo model (see demo_model.h). */
#include "coordinator/demo_model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "common/error.h"
#include "io/atomic.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"

enum { DEMO_DIM = 128, DEMO_HIDDEN = 344, DEMO_LAYERS = 4, DEMO_HEADS = 4, DEMO_KV_HEADS = 2, DEMO_MAXPOS = 512 };
#define DEMO_HD (DEMO_DIM / DEMO_HEADS)
#define DEMO_NOTE "e8q demo model: RANDOM weights (Student-t, outlier channels), not a trained model; for demos and tests only"

/* ---------------------------------------------------------------- deterministic numbers */
typedef struct { uint64_t s; } demo_rng;

static uint64_t rng_u64(demo_rng *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double rng_uniform(demo_rng *r) { return ((double)(rng_u64(r) >> 11) + 0.5) * 0x1.0p-53; } /* (0,1) */
static double rng_normal(demo_rng *r) {
  double u1 = rng_uniform(r), u2 = rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
/* Student-t with 4 degrees of freedom, scaled to unit variance */
static double rng_t4(demo_rng *r) {
  double z = rng_normal(r), chi = 0;
  for (int i = 0; i < 4; i++) {
    double g = rng_normal(r);
    chi += g * g;
  }
  return z / sqrt(chi / 4.0) / sqrt(2.0);
}
static int rng_below(demo_rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }

/* ---------------------------------------------------------------- files */
static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = e8q_malloc(n, "path");
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

/* temporary, fsync, rename (io/atomic.h): a reader never sees a partial file */
static void write_atomic(const char *path, const char *data, size_t n) {
  e8q_atomic_write_file(path, "demo", data, n, NULL);
}

/* ---------------------------------------------------------------- config.json */
static void write_config(const char *dir, uint64_t seed) {
  cJSON *o = cJSON_CreateObject();
  cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
  cJSON_AddStringToObject(o, "model_type", "llama");
  cJSON_AddNumberToObject(o, "hidden_size", DEMO_DIM);
  cJSON_AddNumberToObject(o, "intermediate_size", DEMO_HIDDEN);
  cJSON_AddNumberToObject(o, "num_hidden_layers", DEMO_LAYERS);
  cJSON_AddNumberToObject(o, "num_attention_heads", DEMO_HEADS);
  cJSON_AddNumberToObject(o, "num_key_value_heads", DEMO_KV_HEADS);
  cJSON_AddNumberToObject(o, "vocab_size", E8Q_DEMO_VOCAB);
  cJSON_AddNumberToObject(o, "max_position_embeddings", DEMO_MAXPOS);
  cJSON_AddNumberToObject(o, "rms_norm_eps", 1e-5);
  cJSON_AddNumberToObject(o, "rope_theta", 10000.0);
  cJSON_AddFalseToObject(o, "tie_word_embeddings");
  cJSON_AddStringToObject(o, "hidden_act", "silu");
  cJSON_AddNumberToObject(o, "bos_token_id", 1);
  cJSON_AddNumberToObject(o, "eos_token_id", 2);
  cJSON_AddStringToObject(o, "torch_dtype", "float32");
  cJSON *demo = cJSON_AddObjectToObject(o, "e8q_demo");
  char s[32];
  snprintf(s, sizeof s, "%llu", (unsigned long long)seed);
  cJSON_AddStringToObject(demo, "seed", s);
  cJSON_AddStringToObject(demo, "note", DEMO_NOTE);
  char *js = cJSON_Print(o);
  char *path = join(dir, "config.json");
  size_t n = strlen(js);
  js = realloc(js, n + 2);
  js[n] = '\n';
  js[n + 1] = '\0';
  write_atomic(path, js, n + 1);
  free(path);
  free(js);
  cJSON_Delete(o);
}

/* ---------------------------------------------------------------- model.safetensors */
typedef struct {
  char name[96];
  int64_t shape[2];
  int ndim;
  int kind; /* 0 embedding, 1 linear (fan in = shape[1]), 2 output projection, 3 block norm, 4 final norm, 5 lm_head */
} demo_tensor;

static const int demo_outliers[3] = {7, 42, 99}; /* hidden channels with large norm weights */

static void fill_tensor(demo_rng *r, const demo_tensor *t, float *w) {
  int64_t n = t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1);
  double fan = t->ndim > 1 ? (double)t->shape[1] : 1.0;
  switch (t->kind) {
  case 0: for (int64_t i = 0; i < n; i++) w[i] = (float)rng_t4(r); break;
  case 1: for (int64_t i = 0; i < n; i++) w[i] = (float)(rng_t4(r) / sqrt(fan)); break;
  case 2: for (int64_t i = 0; i < n; i++) w[i] = (float)(0.5 * rng_t4(r) / sqrt(fan)); break;
  case 3: /* block norms: outlier channels */
    for (int64_t i = 0; i < n; i++) w[i] = (float)(1.0 + 0.1 * rng_t4(r));
    for (int k = 0; k < 3; k++) w[demo_outliers[k]] *= 8.0f;
    break;
  case 4: /* final norm */
    for (int64_t i = 0; i < n; i++) w[i] = (float)(1.0 + 0.1 * rng_t4(r));
    break;
  default: for (int64_t i = 0; i < n; i++) w[i] = (float)(rng_t4(r) / sqrt(fan)); break;
  }
}

static void write_weights(const char *dir, uint64_t seed) {
  enum { MAX_T = 3 + 9 * DEMO_LAYERS };
  demo_tensor ts[MAX_T];
  int nt = 0;
#define ADD(nm, r, c, k)                                                      \
  do {                                                                        \
    demo_tensor *t_ = &ts[nt++];                                              \
    snprintf(t_->name, sizeof t_->name, "%s", nm);                            \
    t_->shape[0] = (r), t_->shape[1] = (c), t_->ndim = (c) ? 2 : 1, t_->kind = (k); \
  } while (0)
  char nm[96];
  int q = DEMO_HEADS * DEMO_HD, kv = DEMO_KV_HEADS * DEMO_HD;
  ADD("model.embed_tokens.weight", E8Q_DEMO_VOCAB, DEMO_DIM, 0);
  for (int l = 0; l < DEMO_LAYERS; l++) {
    const char *suffix[9] = {"input_layernorm",     "self_attn.q_proj", "self_attn.k_proj",
                             "self_attn.v_proj",    "self_attn.o_proj", "post_attention_layernorm",
                             "mlp.gate_proj",       "mlp.up_proj",      "mlp.down_proj"};
    int rows[9] = {DEMO_DIM, q, kv, kv, DEMO_DIM, DEMO_DIM, DEMO_HIDDEN, DEMO_HIDDEN, DEMO_DIM};
    int cols[9] = {0, DEMO_DIM, DEMO_DIM, DEMO_DIM, q, 0, DEMO_DIM, DEMO_DIM, DEMO_HIDDEN};
    int kind[9] = {3, 1, 1, 1, 2, 3, 1, 1, 2};
    for (int j = 0; j < 9; j++) {
      snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, suffix[j]);
      ADD(nm, rows[j], cols[j], kind[j]);
    }
  }
  ADD("model.norm.weight", DEMO_DIM, 0, 4);
  ADD("lm_head.weight", E8Q_DEMO_VOCAB, DEMO_DIM, 5);
#undef ADD

  char *path = join(dir, "model.safetensors");
  e8q_st_writer *w = e8q_st_writer_begin(path);
  e8q_st_writer_meta(w, "format", "pt");
  e8q_st_writer_meta(w, "e8q_demo", DEMO_NOTE);
  for (int i = 0; i < nt; i++) e8q_st_writer_declare(w, ts[i].name, E8Q_DT_F32, ts[i].ndim, ts[i].shape);
  demo_rng r = {seed ^ 0x6538712d64656d6full};
  float *buf = e8q_malloc(sizeof(float) * (size_t)E8Q_DEMO_VOCAB * DEMO_HIDDEN * 2, "demo tensor");
  for (int i = 0; i < nt; i++) {
    int64_t n = ts[i].shape[0] * (ts[i].ndim > 1 ? ts[i].shape[1] : 1);
    fill_tensor(&r, &ts[i], buf);
    e8q_st_writer_write(w, buf, sizeof(float) * (size_t)n);
  }
  e8q_st_writer_finish(w);
  free(buf);
  free(path);
}

/* ---------------------------------------------------------------- tokenizer.model */
static void write_tokenizer(const char *dir) {
  static const char *merges[] = {" t", "he", " the", "in", "er", "an", " a", "on", "at", " s", "ed", "nd"};
  const char *pieces[E8Q_DEMO_VOCAB];
  float scores[E8Q_DEMO_VOCAB];
  int types[E8Q_DEMO_VOCAB];
  char store[E8Q_DEMO_VOCAB][8];
  int n = 0;
  pieces[n] = "<unk>", scores[n] = 0, types[n++] = 2;
  pieces[n] = "<s>", scores[n] = 0, types[n++] = 3;
  pieces[n] = "</s>", scores[n] = 0, types[n++] = 3;
  for (int b = 0; b < 256; b++) {
    snprintf(store[n], sizeof store[n], "<0x%02X>", b);
    pieces[n] = store[n], scores[n] = 0, types[n++] = 6;
  }
  const char *chars = " abcdefghijklmnopqrstuvwxyz.,";
  for (const char *c = chars; *c; c++) {
    store[n][0] = *c, store[n][1] = '\0';
    pieces[n] = store[n], scores[n] = -100.0f - (float)(c - chars), types[n++] = 1;
  }
  for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++)
    pieces[n] = merges[i], scores[n] = -1.0f - (float)i, types[n++] = 1;
  E8Q_CHECK(n == E8Q_DEMO_VOCAB, "demo tokenizer has %d pieces, expected %d", n, E8Q_DEMO_VOCAB);
  char *path = join(dir, "tokenizer.model");
  e8q_tokenizer_write_spm(path, n, pieces, scores, types);
  free(path);
}

/* ---------------------------------------------------------------- texts */
static char *demo_text(demo_rng *r, int n_lines, size_t *len) {
  static const char *subj[] = {"the cat", "a dog", "the little girl", "my friend", "the old man", "a bird",
                               "the teacher", "our team", "the farmer", "a small boy"};
  static const char *verb[] = {"sat on", "looked at", "ran to", "played with", "found", "saw", "liked",
                               "painted", "cleaned", "walked around"};
  static const char *obj[] = {"the mat", "a red ball", "the park", "the house", "a tall tree", "the river",
                              "an apple", "the garden", "the station", "a green hat"};
  static const char *end[] = {".", " and smiled.", " in the morning.", " after lunch.", ", then went home.",
                              " with a friend."};
#define PICK(a) a[rng_below(r, (int)(sizeof a / sizeof a[0]))]
  size_t cap = (size_t)n_lines * 256 + 1, n = 0;
  char *s = e8q_malloc(cap, "demo text");
  for (int l = 0; l < n_lines; l++) {
    int sentences = 1 + rng_below(r, 3);
    for (int k = 0; k < sentences; k++) {
      char sent[200];
      int m = snprintf(sent, sizeof sent, "%s%s %s %s%s", k ? " " : "", PICK(subj), PICK(verb), PICK(obj), PICK(end));
      char *first = sent + (k ? 1 : 0);
      *first = (char)(*first - 'a' + 'A'); /* capital letters take the byte fallback */
      memcpy(s + n, sent, (size_t)m);
      n += (size_t)m;
    }
    s[n++] = '\n';
  }
#undef PICK
  s[n] = '\0';
  *len = n;
  return s;
}

static void write_texts(const char *dir, uint64_t seed) {
  demo_rng r = {seed ^ 0x74657874ull};
  size_t n;
  char *t = demo_text(&r, 2000, &n);
  char *p = join(dir, "calib.txt");
  write_atomic(p, t, n);
  free(p), free(t);
  t = demo_text(&r, 200, &n);
  p = join(dir, "eval.txt");
  write_atomic(p, t, n);
  free(p), free(t);
}

/* ---------------------------------------------------------------- public */
void e8q_demo_write(const char *dir, uint64_t seed) {
  struct stat st;
  if (stat(dir, &st) != 0) E8Q_CHECK_ERRNO(mkdir(dir, 0755) == 0, "cannot create the demo directory %s", dir);
  else E8Q_CHECK(S_ISDIR(st.st_mode), "%s exists and is not a directory", dir);
  write_config(dir, seed);
  write_weights(dir, seed);
  write_tokenizer(dir);
  write_texts(dir, seed);
}
