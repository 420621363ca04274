/* fuzz/fuzz_gguf.c: a GGUF file: header, metadata, tensor infos; then the Hugging Face config
 * derived from it, small tensors dequantized, and its tokenizer. */
#include <stdlib.h>

#include "harness.h"
#include "io/gguf.h"
#include "io/tokenizer.h"

static void *open_g(const char *path) { return e8q_gguf_open(path); }
static void *load_tok(const char *path) { return e8q_tokenizer_load(path); }
static void hf_config(void *g) { free(e8q_gguf_hf_config(g)); }
static void read_rows(void *a) {
  const fz_item *r = a;
  const e8q_gguf_tensor *t = r->item;
  static float buf[1 << 16];
  int64_t rows = e8q_gguf_n_rows(t);
  if (t->ne[0] > 0 && t->ne[0] <= 4096 && rows > 0) {
    int64_t take = (1 << 16) / t->ne[0];
    if (take > rows) take = rows;
    if (take > 0) e8q_gguf_read_rows_f32(r->file, t, 0, take, buf);
  }
}
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  const char *path = fz_write("model.gguf", data, n);
  e8q_gguf *g = fz_open(open_g, path);
  if (!g) return 0;
  fz_call(hf_config, g);
  for (int i = 0; i < e8q_gguf_n_tensors(g) && i < 32; i++) {
    fz_item r = {g, e8q_gguf_tensor_at(g, i)};
    fz_call(read_rows, &r);
  }
  e8q_gguf_close(g);
  e8q_tokenizer *t = fz_open(load_tok, path);
  if (t) e8q_tokenizer_free(t);
  return 0;
}
