/* fuzz/tok_common.h: a tokenizer file loaded, then used: encode, decode, pieces. */
#ifndef E8Q_FUZZ_TOK_COMMON_H
#define E8Q_FUZZ_TOK_COMMON_H

#include <stdlib.h>

#include "harness.h"
#include "io/tokenizer.h"

static void *tok_load(const char *path) { return e8q_tokenizer_load(path); }

static void tok_use(void *a) {
  e8q_tokenizer *t = a;
  int *ids = NULL;
  int n = e8q_tokenizer_encode(t, "Once upon a time, a tiny \xc3\xa9l\xc3\xa8ve said \"hi\" 123\n<s> </s>",
                               e8q_tokenizer_add_bos(t), 1, &ids);
  int prev = ids && n > 0 ? ids[0] : 0;
  for (int i = 0; i < n; i++) {
    (void)e8q_tokenizer_decode(t, prev, ids[i]);
    prev = ids[i];
  }
  free(ids);
  int v = e8q_tokenizer_vocab_size(t);
  for (int i = 0; i < v && i < 64; i++) {
    (void)e8q_tokenizer_piece(t, i);
    (void)e8q_tokenizer_decode(t, i, v - 1 - i);
  }
}

static int tok_fuzz(const char *name, const uint8_t *data, size_t n) {
  e8q_tokenizer *t = fz_open(tok_load, fz_write(name, data, n));
  if (!t) return 0;
  fz_call(tok_use, t);
  e8q_tokenizer_free(t);
  return 0;
}

#endif
