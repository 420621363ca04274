/* fuzz/fuzz_bpe_json.c: tokenizer.json text through e8q_bpe_parse_json (model, vocab, merges,
 * added tokens, pre-tokenizer), then encoding and decoding. */
#include <stdlib.h>

#include "harness.h"
#include "io/bpe.h"

typedef struct {
  const uint8_t *data;
  size_t n;
  e8q_bpe *b;
} ctx;

static void parse(void *a) {
  ctx *c = a;
  c->b = e8q_bpe_parse_json("fuzz/tokenizer.json", (const char *)c->data, c->n);
}

static void use(void *a) {
  ctx *c = a;
  int *ids = NULL;
  int n = e8q_bpe_encode(c->b, "Hello world! It's 2024 -- caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87  spaces\n\ttab", 1, 1, &ids);
  for (int i = 0; i < n; i++) {
    size_t len;
    (void)e8q_bpe_text(c->b, ids[i], &len);
  }
  free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  ctx c = {data, n, NULL};
  if (fz_call(parse, &c)) return 0;
  fz_call(use, &c);
  e8q_bpe_free(c.b);
  return 0;
}
