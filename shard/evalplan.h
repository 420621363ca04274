/* shard/evalplan.h: the layout of a layer-pipelined evaluation and the resident memory of every
 * rank (`e8q eval --pipeline P`, `e8q plan --artifact A`), from byte counts alone.
 *
 * Ranks form groups of P consecutive ranks (world rank = group * P + stage). Stage s of every
 * group holds layers [first[s], first[s+1]); stage 0 also embeds the tokens, stage P-1 also holds
 * the final norm and lm_head and scores. The split minimises the largest stage's resident bytes
 * (embeddings and head counted), every stage owning at least one layer. Groups take windows
 * round-robin, as ranks do in the data-parallel evaluation.
 *
 * Resident bytes of a stage (what the memory table prints):
 *   weights = sum of its layers' bytes (e8q_eval_bytes.layer) + shared
 *           + embed (stage 0; rows are read as used, so this is an upper bound)
 *           + head (stage P-1; with P = 1 and a tied head, the embedding is that tensor: counted once)
 *   acts    = 4 * 2 * ctx*dim                                    two activation buffers (receive/compute, send)
 *           + 4 * ctx * (dim + m_qkv + q_dim + dim + 2*hidden + hidden) block forward scratch
 *           + 4 * n_heads*ctx*ctx                                 attention scores
 *           + (stage P-1) 4 * E8Q_EVAL_HEAD_ROWS*vocab            logits of a chunk of rows
 *             + 4 * E8Q_EVAL_VOCAB_BLOCK*dim                      a block of lm_head rows in f32
 * The data-parallel rank (no --pipeline): every layer, the embedding as stored, its f32 copy and
 * (untied) lm_head as stored plus its f32 copy, one activation buffer, scratch and logits.
 * The process itself (MPI, libraries) comes on top: tens of MiB, not counted. */
#ifndef E8Q_SHARD_EVALPLAN_H
#define E8Q_SHARD_EVALPLAN_H

#include <stddef.h>

#include "io/config.h"

/* rows of the residual stream scored together, and lm_head rows converted to f32 at a time: fixed,
 * so every way of running an evaluation does the same arithmetic */
#define E8Q_EVAL_HEAD_ROWS 64
#define E8Q_EVAL_VOCAB_BLOCK 2048

typedef struct {
  int n_layers;
  size_t *layer;      /* [n_layers] resident bytes of each layer (mapped tensors it reads + its allocations), owned */
  size_t embed;       /* the embedding tensor as stored */
  size_t head;        /* final norm + lm_head as stored (tied: the embedding tensor) */
  size_t f32_copies;  /* data-parallel only: the f32 embedding (and untied lm_head) built at load */
  size_t shared;      /* every rank: Hadamard factors */
  int tied;
} e8q_eval_bytes;

typedef struct {
  int lo, hi;         /* layers [lo, hi) */
  int embed, head;    /* 1: this stage embeds / scores */
  size_t weights, acts, total;
} e8q_eval_stage;

typedef struct {
  int n_ranks, P, groups; /* P = 0: the data-parallel evaluation (every rank the whole model) */
  int ctx;
  e8q_eval_stage *stage;  /* [max(P, 1)] (P = 0: stage[0] is the data-parallel rank), owned */
} e8q_eval_plan;

/* Fatal with a message naming --pipeline when P does not divide n_ranks or exceeds n_layers. */
void e8q_eval_plan_build(e8q_eval_plan *p, const e8q_config *cfg, const e8q_eval_bytes *b, int n_ranks, int P,
                         int ctx);
void e8q_eval_plan_free(e8q_eval_plan *p);
/* the stage of world rank r (r % P; 0 for the data-parallel plan) */
static inline const e8q_eval_stage *e8q_eval_plan_rank(const e8q_eval_plan *p, int r) {
  return &p->stage[p->P > 0 ? r % p->P : 0];
}
/* one line per rank: group, stage, layers, embed/head, weights, activations, total and, when
 * mem_gib > 0, whether it fits; returns the number of ranks that do not fit */
int e8q_eval_plan_print(const e8q_eval_plan *p, double mem_gib, void *file /* FILE* */);
void e8q_eval_bytes_free(e8q_eval_bytes *b);

#endif
