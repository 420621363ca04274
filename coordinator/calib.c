/* coordinator/calib.c: deterministic calibration windows (coordinator/calib.h). */
#include "coordinator/calib.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"
#include "io/text.h"

void e8q_calib_build(e8q_calib *c, const char *path, const e8q_tokenizer *tok, int vocab_size, int skip_lines,
                     int n_seq, int T, uint64_t seed) {
  memset(c, 0, sizeof *c);
  int *stream = NULL;
  long len = 0;
  if (e8q_ids_is_file(path)) {
    E8Q_CHECK(skip_lines == 0, "--calib %s is a token id file: it has no lines to skip (drop --calib-skip)", path);
    len = (long)e8q_ids_read(path, vocab_size, &stream);
  } else {
    E8Q_CHECK(tok,
              "--calib %s is text but no tokenizer was found with the model (e8q quantize reads tokenizer.model "
              "from the --model directory): put the model's tokenizer.model there, or give --calib a token id "
              "file (.ids or .u32, little-endian uint32)",
              path);
    char *text = e8q_text_read_for(path, "--calib", NULL);
    char **lines = NULL;
    int n = e8q_text_lines(text, skip_lines, 0, &lines);
    free(text);
    long cap = 0;
    for (int i = 0; i < n; i++) {
      int *ids = NULL;
      int k = e8q_tokenizer_encode(tok, lines[i], e8q_tokenizer_add_bos(tok), 0, &ids);
      if (len + k > cap) {
        cap = 2 * (len + k) + 1024;
        stream = realloc(stream, sizeof(int) * (size_t)cap);
        E8Q_CHECK(stream, "out of memory reading the calibration text %s", path);
      }
      memcpy(stream + len, ids, sizeof(int) * (size_t)k);
      len += k;
      free(ids);
    }
    e8q_text_lines_free(lines, n);
  }
  long W = len / T;
  E8Q_CHECK(W >= n_seq,
            "--calib %s is too short: after skipping %d lines it gives %ld tokens = %ld windows of --ctx %d, but "
            "--devset %d needs %d windows (%ld tokens); use a longer file or lower --devset or --ctx",
            path, skip_lines, len, W, T, n_seq, n_seq, (long)n_seq * T);
  /* seeded partial Fisher-Yates over the window indices */
  long *idx = e8q_malloc(sizeof(long) * (size_t)W, "calibration window order");
  for (long i = 0; i < W; i++) idx[i] = i;
  e8q_rng r;
  e8q_rng_init(&r, seed, E8Q_RNG_STREAM_CALIB);
  for (int i = 0; i < n_seq; i++) {
    long j = i + (long)e8q_rng_below(&r, (uint64_t)(W - i));
    long t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
  c->n_seq = n_seq;
  c->T = T;
  c->stream_len = len;
  c->ids = e8q_malloc(sizeof(int) * (size_t)n_seq * T, "calibration ids");
  for (int i = 0; i < n_seq; i++) memcpy(c->ids + (size_t)i * T, stream + idx[i] * T, sizeof(int) * (size_t)T);
  free(idx);
  free(stream);
}

void e8q_calib_free(e8q_calib *c) {
  free(c->ids);
  memset(c, 0, sizeof *c);
}
