/* bench/bench_tokenizer.c: tokenizer encode throughput on a text file, as ratios against bounds
 * measured in the same run: one UTF-8 validation pass over the same bytes (a lower bound on any
 * per-byte work) and the readable O(n^2) _ref encoder on a prefix (the baseline).
 *
 *   bench_tokenizer [TOKENIZER] [TEXT]   (defaults: ../shared stories260K tok512.model, TinyStories) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "io/text.h"
#include "io/tokenizer.h"

static double best_of(int reps, double (*fn)(void *), void *arg) {
  double best = 1e30;
  for (int i = 0; i < reps; i++) {
    double s = fn(arg);
    if (s < best) best = s;
  }
  return best;
}

typedef struct {
  const e8q_tokenizer *t;
  const char *text;
  size_t len;
  int ref;
  int n_ids;
} job;

static double run_encode(void *p) {
  job *j = p;
  int *ids;
  double t0 = e8q_now();
  j->n_ids = j->ref ? e8q_tokenizer_encode_ref(j->t, j->text, 1, 0, &ids) : e8q_tokenizer_encode(j->t, j->text, 1, 0, &ids);
  double s = e8q_now() - t0;
  free(ids);
  return s;
}

static double run_utf8(void *p) {
  job *j = p;
  double t0 = e8q_now();
  volatile size_t r = e8q_utf8_check(j->text, j->len);
  (void)r;
  return e8q_now() - t0;
}

int main(int argc, char **argv) {
  const char *shared = getenv("E8Q_SHARED") ? getenv("E8Q_SHARED") : "../shared";
  char tokp[4096], textp[4096];
  snprintf(tokp, sizeof tokp, "%s", argc > 1 ? argv[1] : "");
  snprintf(textp, sizeof textp, "%s", argc > 2 ? argv[2] : "");
  if (argc <= 1) snprintf(tokp, sizeof tokp, "%s/models/stories260K/tok512.model", shared);
  if (argc <= 2) snprintf(textp, sizeof textp, "%s/text/tinystories_valid_head.txt", shared);
  e8q_tokenizer *t = e8q_tokenizer_load(tokp);
  size_t len;
  char *text = e8q_text_read(textp, &len);

  job j = {t, text, len, 0, 0};
  double enc = best_of(5, run_encode, &j);
  double utf8 = best_of(5, run_utf8, &j);
  printf("encode     %zu bytes -> %d ids: %.4f s, %.1f MB/s\n", len, j.n_ids, enc, len / enc / 1e6);
  printf("utf8 pass  %.4f s, %.1f MB/s  (encode / utf8-pass time: %.1fx)\n", utf8, len / utf8 / 1e6, enc / utf8);

  size_t pre = len < 16384 ? len : 16384; /* the _ref baseline on a prefix */
  char saved = text[pre];
  text[pre] = 0;
  job jp = {t, text, pre, 0, 0}, jr = {t, text, pre, 1, 0};
  double fast = best_of(3, run_encode, &jp), ref = best_of(1, run_encode, &jr);
  text[pre] = saved;
  printf("%zu-byte prefix: encode %.5f s, encode_ref %.4f s: %.0fx faster, same count: %s\n", pre, fast, ref,
         ref / fast, jp.n_ids == jr.n_ids ? "yes" : "NO");
  free(text);
  e8q_tokenizer_free(t);
  return 0;
}
