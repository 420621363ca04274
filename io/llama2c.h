/* io/llama2c.h: llama2.c checkpoints (.bin, legacy "v0" layout).
 *
 * Layout (little-endian): 7 int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len (vocab_size < 0: the classifier is not shared with the embedding), then float32
 * token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
 * wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim],
 * w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim], freq_cis_real and freq_cis_imag
 * [seq_len, head_dim/2] each (unused), and when unshared wcls [vocab, dim].
 * (kv_dim = n_kv_heads * head_dim, head_dim = dim / n_heads.)
 *
 * The file size must match the header exactly. llama2.c rotates interleaved pairs (2i, 2i+1)
 * in RoPE while Hugging Face rotates halves (i, i + hd/2): on import the rows of wq and wk are
 * permuted, per head, to [0, 2, 4, ..., hd-2, 1, 3, ..., hd-1], so the one rotate-half forward
 * pass gives the same logits for both layouts. w1 is the gate, w3 the up and w2 the down
 * projection. Every weight is checked finite; the message names the file and tensor.
 */
#ifndef E8Q_IO_LLAMA2C_H
#define E8Q_IO_LLAMA2C_H

#include "io/config.h"

typedef struct {
  e8q_config cfg;      /* model_type "llama", rope_theta 10000, norm_eps 1e-5, bos 1, eos 2 */
  float *data;         /* owned: every float of the file after the header */
  /* views into data (HF row convention, q/k already permuted) */
  const float *embed;  /* [vocab, dim] */
  const float *rms_att;/* [L, dim] */
  const float *wq;     /* [L, n_heads*hd, dim] */
  const float *wk;     /* [L, n_kv_heads*hd, dim] */
  const float *wv;     /* [L, n_kv_heads*hd, dim] */
  const float *wo;     /* [L, dim, n_heads*hd] */
  const float *rms_ffn;/* [L, dim] */
  const float *w1;     /* [L, hidden, dim] gate */
  const float *w2;     /* [L, dim, hidden] down */
  const float *w3;     /* [L, hidden, dim] up */
  const float *rms_final; /* [dim] */
  const float *wcls;   /* [vocab, dim]; == embed when shared (cfg.tied = 1) */
} e8q_llama2c;

/* Reads and validates path; fatal with the file named on any inconsistency. */
void e8q_llama2c_load(const char *path, e8q_llama2c *ck);
void e8q_llama2c_free(e8q_llama2c *ck);

#endif
