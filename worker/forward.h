/* worker/forward.h: the Llama forward pass in fp32 on the CPU.
 *
 * Batched: n_seq sequences of T tokens each, positions 0..T-1, rows stored sequence after
 * sequence ([n_seq*T, dim]). Used for evaluation and, through the taps, for Hessian
 * collection (issue 5: the inputs of the four linears of a block, exactly as multiplied).
 * KV-cached: one token at a time, for generation.
 * Every weight product goes through e8q_linear_forward (worker/linear.h).
 */
#ifndef E8Q_WORKER_FORWARD_H
#define E8Q_WORKER_FORWARD_H

#include <stddef.h>

#include "shard/model.h"

/* ---------------------------------------------------------------- taps
 * Called with the input of each linear group of a block, just before the product:
 * group E8Q_GROUP_QKV / _O / _UPGATE / _DOWN, x [rows, cols] (rows = n_seq*T tokens,
 * cols = the linear's n). The pointer is valid only during the call. */
typedef struct {
  void (*fn)(void *ctx, int group, int rows, int cols, const float *x);
  void *ctx;
  /* the same on a GPU block (kernels/transformer_gpu.h: x on the device, ready once `stream`
   * runs to here); NULL: a block with taps runs on the CPU */
  void (*dev_fn)(void *ctx, int group, int rows, int cols, const float *x_dev, void *stream);
} e8q_taps;

/* ---------------------------------------------------------------- scratch
 * Activation buffers of a block forward; zero-initialise, grown on demand, freed with
 * e8q_fwd_scratch_free. */
typedef struct {
  size_t cap;        /* tokens the buffers hold */
  float *xn;         /* [cap, dim] normed input */
  float *qkv;        /* [cap, (n_heads+2*n_kv_heads)*hd] */
  float *att;        /* [cap, n_heads*hd] attention output */
  float *proj;       /* [cap, dim] o_proj / down_proj output */
  float *ug;         /* [cap, 2*hidden] up | gate */
  float *h;          /* [cap, hidden] silu(gate)*up */
  struct e8q_tf_gpu *gpu; /* the device workspace of blocks whose linears are on a GPU
                             (kernels/transformer_gpu.h), created on first use; owned */
} e8q_fwd_scratch;
void e8q_fwd_scratch_free(e8q_fwd_scratch *s);
/* a device workspace for blocks of c's shape on CUDA `device` (kernels/transformer_gpu.h);
 * fatal, naming `what`, when the device cannot take it */
struct e8q_tf_gpu *e8q_block_gpu_open(const e8q_config *c, int device, const char *what);

/* ---------------------------------------------------------------- batched
 * x [n_seq*T, dim] in/out: x <- block(x). taps may be NULL; scratch may be NULL (temporary). */
void e8q_block_forward(const e8q_block *b, const e8q_config *cfg, int n_seq, int T, float *x, const e8q_taps *taps,
                       e8q_fwd_scratch *scratch);
/* x [N, dim] <- embedding rows of ids [N]; fatal on an id outside the vocabulary */
void e8q_model_embed(const e8q_model *m, int N, const int *ids, float *x);
/* logits [N, vocab] <- lm_head(final_norm(x)); x [N, dim] is overwritten by the normed x */
void e8q_model_head(const e8q_model *m, int N, float *x, float *logits);
/* all logits: ids [n_seq*T] -> logits [n_seq*T, vocab] */
void e8q_model_forward(const e8q_model *m, int n_seq, int T, const int *ids, float *logits);
/* Sum over positions p with targets[p] >= 0 of -log softmax(logits[p])[targets[p]] (double),
 * without holding all logits (computed in chunks of rows). *count gets the scored positions. */
double e8q_model_nll(const e8q_model *m, int n_seq, int T, const int *ids, const int *targets, long *count);

/* ---------------------------------------------------------------- evaluation
 * Scores each sequence separately (fresh context, positions from 0): tokens 1..len-1 are
 * predicted from their prefixes. nll[i] gets the sum for sequence i (double) and cnt[i] the
 * number of scored tokens (len - 1). Sequence i's result depends only on that sequence, so
 * a list can be split across ranks and the per-sequence sums added in a fixed order. */
void e8q_score_seqs(const e8q_model *m, int n, const int *const *seqs, const int *lens, double *nll, long *cnt);

/* ---------------------------------------------------------------- KV-cached generation */
typedef struct {
  int max_T;          /* positions the cache holds */
  float *k, *v;       /* [n_layers, max_T, n_kv_heads*hd] */
  float *x;           /* [dim] residual stream */
  float *xn;          /* [dim] */
  float *qkv;         /* [(n_heads+2*n_kv_heads)*hd] */
  float *att;         /* [n_heads*hd] */
  float *proj;        /* [dim] */
  float *ug;          /* [2*hidden] */
  float *h;           /* [hidden] */
  float *scores;      /* [n_heads, max_T] */
  float *logits;      /* [vocab] */
} e8q_kv_cache;
void e8q_kv_init(e8q_kv_cache *c, const e8q_config *cfg, int max_T);
void e8q_kv_free(e8q_kv_cache *c);
/* Runs token at position pos (0 <= pos < max_T; positions before it already in the cache)
 * and returns its logits [vocab] (owned by the cache, valid until the next step). */
const float *e8q_model_step(const e8q_model *m, e8q_kv_cache *c, int token, int pos);

#endif
