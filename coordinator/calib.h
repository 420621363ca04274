/* coordinator/calib.h: the calibration set of `e8q quantize`.
 *
 * The text (after its first `skip` non-empty lines) becomes one token stream, each line
 * contributing [BOS] + encode(line); a pre-tokenized id file is taken as is. The stream is cut
 * into W = len / T non-overlapping windows of T tokens and n_seq of them are drawn without
 * replacement by a seeded Fisher-Yates shuffle (common/rng.h, stream E8Q_RNG_STREAM_CALIB), so
 * the set depends only on the file, the options and the seed. Every rank builds the same set.
 */
#ifndef E8Q_COORDINATOR_CALIB_H
#define E8Q_COORDINATOR_CALIB_H

#include <stdint.h>

#include "io/tokenizer.h"

typedef struct {
  int n_seq, T;
  int *ids;        /* [n_seq, T] */
  long stream_len; /* tokens in the whole stream */
} e8q_calib;

/* Fatal, naming the file and the numbers, when the stream holds fewer than n_seq windows. */
void e8q_calib_build(e8q_calib *c, const char *path, const e8q_tokenizer *tok, int vocab_size, int skip_lines,
                     int n_seq, int T, uint64_t seed);
void e8q_calib_free(e8q_calib *c);

#endif
