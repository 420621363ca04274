/* fuzz/tok_common.h: a tokenizer file loaded, then used: encode, decode, pieces. */
#ifndef E8Q_FUZZ_TOK_COMMON_H
#define E8Q_FUZZ_TOK_COMMON_H

#include <stdlib.h>

#include "harness.h"
#include "io/tokenizer.h"

typedef struct {
  const char *path;
  e8q_tokenizer *t;
} tok_ctx;

static void tok_load(void *a) {
  tok_ctx *c = a;
  c->t = e8q_tokenizer_load(c->path);
}

static void tok_use(void *a) {
  tok_ctx *c = a;
  int *ids = NULL;
  int n = e8q_tokenizer_encode(c->t, "Once upon a time, a tiny \xc3\xa9l\xc3\xa8ve said \"hi\" 123\n<s> </s>",
                               e8q_tokenizer_add_bos(c->t), 1, &ids);
  int prev = ids && n > 0 ? ids[0] : 0;
  for (int i = 0; i < n; i++) {
    (void)e8q_tokenizer_decode(c->t, prev, ids[i]);
    prev = ids[i];
  }
  free(ids);
  int v = e8q_tokenizer_vocab_size(c->t);
  for (int i = 0; i < v && i < 64; i++) {
    (void)e8q_tokenizer_piece(c->t, i);
    (void)e8q_tokenizer_decode(c->t, i, v - 1 - i);
  }
}

static int tok_fuzz(const char *name, const uint8_t *data, size_t n) {
  tok_ctx c = {fz_write(name, data, n), NULL};
  if (fz_call(tok_load, &c)) return 0;
  fz_call(tok_use, &c);
  e8q_tokenizer_free(c.t);
  return 0;
}

#endif
