/* fuzz/fuzz_gguf.c: a GGUF file: header, metadata, tensor infos; then the Hugging Face config
 * derived from it, small tensors dequantized, and its tokenizer. */
#include <stdlib.h>

#include "harness.h"
#include "io/gguf.h"
#include "io/tokenizer.h"

typedef struct {
  const char *path;
  e8q_gguf *g;
  e8q_tokenizer *t;
} ctx;

static void open_g(void *a) {
  ctx *c = a;
  c->g = e8q_gguf_open(c->path);
}
static void hf_config(void *a) {
  ctx *c = a;
  free(e8q_gguf_hf_config(c->g));
}
typedef struct {
  const e8q_gguf *g;
  const e8q_gguf_tensor *t;
} rd;
static void read_rows(void *a) {
  rd *r = a;
  static float buf[1 << 16];
  int64_t rows = e8q_gguf_n_rows(r->t);
  if (r->t->ne[0] > 0 && r->t->ne[0] <= 4096 && rows > 0) {
    int64_t take = (1 << 16) / r->t->ne[0];
    if (take > rows) take = rows;
    if (take > 0) e8q_gguf_read_rows_f32(r->g, r->t, 0, take, buf);
  }
}
static void tok(void *a) {
  ctx *c = a;
  c->t = e8q_tokenizer_load(c->path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  ctx c = {fz_write("model.gguf", data, n), NULL, NULL};
  if (fz_call(open_g, &c)) return 0;
  fz_call(hf_config, &c);
  for (int i = 0; i < e8q_gguf_n_tensors(c.g) && i < 32; i++) {
    rd r = {c.g, e8q_gguf_tensor_at(c.g, i)};
    fz_call(read_rows, &r);
  }
  e8q_gguf_close(c.g);
  if (!fz_call(tok, &c)) e8q_tokenizer_free(c.t);
  return 0;
}
