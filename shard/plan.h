/* shard/plan.h: the quantization plan of a model, from config.json and safetensors headers
 * only (no weight is read).
 *
 * Every decoder block has four linear groups, quantized in this order (DESIGN §2, §4):
 *   qkv    m = (n_heads + 2*n_kv_heads)*hd   n = dim            pieces q, k, v
 *   o      m = dim                           n = n_heads*hd     piece  o
 *   upgate m = 2*hidden                      n = dim            pieces up, gate
 *   down   m = dim                           n = hidden         piece  down
 * The input dimension n is zero-padded to n_pad (next multiple of 8); the Hadamard factor K
 * (n = K * 2^p) is chosen for n_pad and for m. Blocks go one after another through all ranks:
 * calibration sequences are split across ranks (data parallel), and the rows of each group are
 * split across ranks for LDLQ.
 *
 * Sequences are split across ranks in whole chunks of E8Q_SEQ_CHUNK (the Hessian of a chunk
 * is accumulated in float64 in sequence order, then added exactly: chunk-aligned splits keep
 * the sums independent of the rank count); rows in whole tiles of E8Q_LDLQ_ROW_TILE.
 *
 * Peak memory per rank (bytes; what `e8q plan` prints and tests check), while block b is
 * worked on (rows_r etc. do not enter: every rank rotates the whole group, and rank 0 gathers
 * all codes):
 *   weights   = 4 * (sum over groups of m*n + 2*dim)                 the block in fp32
 *   acts      = 2 * 4 * seqs_r*ctx*dim                               X_b and X_{b+1} of its sequences
 *             + 4 * ctx * (dim + m_qkv + q_dim + dim + 2*hidden + hidden)  forward scratch, one sequence
 *             + 4 * n_heads*ctx*ctx                                  attention scores, one sequence
 *   hess_acc  = 24 * sum over groups of n^2 + 8 * 256 * max n        accumulating: exact sums (16 B),
 *                                                                    chunk sums (8 B), tap scratch
 *   hessians  = 8 * sum over groups of n^2                           the four reduced sums
 *   ldlq      = max over groups of  8 * m*n_pad                      the rotated group
 *                                 + 8 * 3*n_pad^2                    rotated H, prepared H, factor L
 *                                 + 8 * 2*256*n_pad                  a row tile's residual and H E
 *                                 + 4 * m*n_pad/8                    codes and codes2 (rank 0)
 *   ft_block  = 48 * n_ft                                            block fine-tuning round 0's vector:
 *                                                                    p, best, Adam m, v, gradient, step
 *                                                                    mean (4 B each), double sum (8 B),
 *                                                                    exact sum (16 B) per parameter
 *             + 4 * ctx * (7*dim + 2*m_qkv + 2*q_dim + 6*hidden)      one block forward's saved activations
 *                                                                    and their gradients (one sequence)
 *             + 4 * ctx * dim                                        its output
 *     n_ft    = n_pad_qkv + m_qkv + 2*dim + m*n of o, upgate, down    (the largest round)
 *   e2e       = layers * sum over groups of m*n_pad/2                 the quantized model's codes at 4 bit
 *                                                                    (codes + codes2; 2 bit needs half)
 *             + 4 * vocab*dim * (tied ? 1 : 2)                        embedding and lm_head
 *             + 48 * n_e2e                                           the trained vector, as ft_block
 *             + 4 * ctx * ((layers + 3)*dim + vocab)                 a sequence's saved block inputs,
 *                                                                    stream buffers and logits
 *             + 4 * ctx * (7*dim + 2*m_qkv + 2*q_dim + 6*hidden)      one block's activations (recompute)
 *             + 4 * n_heads*ctx*ctx                                  attention scores
 *             + 8 * seqs_r*(ctx-1)*E8Q_PLAN_E2E_TOPK                 the targets (id, probability)
 *     n_e2e   = layers * (sum over groups of n_pad + m, + 2*dim) + dim + (tied ? 0 : vocab*dim)
 *   peak      = max(weights + acts + max(hess_acc, hessians + ldlq + 16*n_ft, hessians + ft_block),
 *                   e2e)
 * with seqs_r = the sequences of rank r. The fine-tuning terms are those of the default --ft all
 * (e2e runs after the blocks, when their buffers are freed; quantizing a group after a block round
 * holds that round's state, 16 bytes a parameter).
 * On a GPU (--device cuda) the device holds, stage by stage (the buffers of the kernels' GPU paths):
 *   dev_block = weights                                               the block in fp32 (cuBLAS)
 *             + 4 * ctx * (widths + dim)                             one sequence's block workspace
 *             + sum over groups of 8 * (n^2 + 256*n)                 Gram sums and one row block
 *   dev_ldlq  = max over groups of  8 * 2*n_pad^2                    L and H
 *                                 + 8 * rows_r*(4*n_pad + 128)       W, What, feedback, residual, buffer
 *                                 + 4 * rows_r*n_pad/8               codes and second codes (u16)
 *                                 + the encoder tables (~190 KB)
 *   dev_eval  = layers * (sum over groups of m*n_pad/2 + 4*(n_pad + m))  codes at 4 bit, SU, SV
 *             + 4 * ctx * (widths + dim)                             the block workspace
 *             + 4 * vocab*dim + 4 * ctx * (vocab + 3*dim)            the cached head, its buffers
 *   dev_acts  = 4 * ctx * (10*dim + 3*m_qkv + 2*q_dim + 8*hidden)    one sequence's kept block
 *                                                                    activations and their gradients
 *             + 8 * n_heads*ctx*ctx + 16 * ctx                       attention backward's P and dS,
 *                                                                    RMSNorm backward's row factors
 *             + 4 * ctx * (max n + max n_pad + 2 max m               the quantized layers' shared
 *                          + max chunks*n_pad over chunks > 1)       work buffers and transpose
 *                                                                    partials (e8q_qdev_t_chunks,
 *                                                                    batch ctx; max over groups)
 *   dev_ft    = weights + sum over groups of m*n_pad/2              block fine-tuning: the block in
 *             + 4 * n_ft + dev_acts                                  fp32 and codes, gradient sums
 *   dev_e2e   = layers * (sum over groups of m*n_pad/2                end to end: every layer's codes,
 *                         + 4*(n_pad + 2m) + 3072)                   SU, output and fuse scales, tables
 *             + 4 * vocab*dim * (tied ? 1 : 2)                       the head (and its gradient)
 *             + 4 * ctx * vocab + 12 * ctx * dim                     logits, the head's stream buffers
 *             + 4 * (sum over groups of n_pad + m, + 2*dim)          one block's gradient sums
 *             + dev_acts
 *   device    = max(dev_block, dev_ldlq, dev_eval, dev_ft, dev_e2e)  (fine-tuning's host terms stay
 *               in peak: the trainer's state and exact sums live on the host)
 * with widths = dim + m_qkv + q_dim + dim + 3*hidden and rows_r = rank r's rows of the group.
 * The eval term leaves out the fused kernels' work buffers (one set per device, shared by its
 * layers: 4 * batch * (n + n_pad + 2m) of the largest group), small at the validation's batches.
 */
#ifndef E8Q_SHARD_PLAN_H
#define E8Q_SHARD_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "io/config.h"
#include "shard/model.h"

#define E8Q_PLAN_MAX_PIECES 3
/* largest non-power-of-two Hadamard factor e8q builds */
#define E8Q_HADAMARD_MAX_K 1024

typedef struct {
  const char *name;     /* "self_attn.qkv_proj", ... (e8q_group_names) */
  int m, n, n_pad;      /* rows (out), columns (in), padded columns */
  int K_n, K_m;         /* Hadamard factors for n_pad and m (1 = pure Sylvester) */
  int n_pieces;         /* 3 (q, k, v), 1, 2 (up, gate), 1 */
  int piece_rows[E8Q_PLAN_MAX_PIECES];          /* rows of each piece, stacked in order */
  const char *piece_names[E8Q_PLAN_MAX_PIECES]; /* HF names: "self_attn.q_proj", ... */
} e8q_group_plan;

/* calibration sequences per Hessian chunk (a constant of the format of the sums) */
#define E8Q_SEQ_CHUNK 8
/* ids kept per position of the original distribution in the e2e memory estimate: the default
 * --e2e-topk (E8Q_E2E_TOPK_DEFAULT, worker/finetune_e2e.h, which shard/ cannot include) */
#define E8Q_PLAN_E2E_TOPK 64

typedef struct {
  size_t weights, acts, hess_acc, hessians, ldlq, peak; /* bytes, see the formula above */
  size_t ft_block, e2e;                                /* fine-tuning, see the formula above */
  size_t device;                                       /* --device cuda: device bytes, as above */
  size_t dev_ft;                                       /* its block fine-tuning term (dev_ft) */
  size_t dev_e2e;                                      /* its end-to-end fine-tuning term (dev_e2e) */
} e8q_rank_mem;

typedef struct {
  e8q_config cfg;
  int n_layers;
  e8q_group_plan groups[E8Q_N_GROUPS]; /* identical for every layer */
  int n_ranks;
  int devset, ctx;                     /* calibration sequences and their length */
  int *seq_start;                      /* [n_ranks+1] rank r holds sequences [seq_start[r], seq_start[r+1]),
                                          split at multiples of E8Q_SEQ_CHUNK */
  int *row_start[E8Q_N_GROUPS];        /* [n_ranks+1] per group: rows of rank r (e8q_ldlq_split_rows) */
  e8q_rank_mem *mem;                   /* [n_ranks] */
  int64_t n_params_linear;             /* weights in quantized linears, whole model */
  int64_t n_params_other;              /* embeddings, norms, lm_head */
} e8q_plan;

/* Hadamard factor K for a dimension n (n = K * 2^p): e8q_had_choose_K (kernels/hadamard.h).
 * Fatal, naming `what`, when K would exceed E8Q_HADAMARD_MAX_K. */
int e8q_plan_hadamard_factor(int n, const char *what);
/* first index of [0, total) owned by part r of `parts` (balanced contiguous split) */
int e8q_plan_split(int total, int parts, int r);

/* Builds the plan of the HF model in model_dir: checks every block's tensors exist with the
 * shapes of config.json (headers only); fatal naming the file and tensor otherwise. */
void e8q_plan_build(e8q_plan *p, const char *model_dir, int n_ranks, int devset, int ctx);
/* The same from a config alone (no files): for tests and the memory formula. */
void e8q_plan_from_config(e8q_plan *p, const e8q_config *cfg, int n_ranks, int devset, int ctx);
void e8q_plan_free(e8q_plan *p);

/* prints the schedule and per-rank memory; gpu_mem_gib > 0 adds a "fits" column */
/* host_mem_gib (--mem) against peak, gpu_mem_gib (--gpu-mem) against device; <= 0: not checked */
void e8q_plan_print(const e8q_plan *p, double host_mem_gib, double gpu_mem_gib, void *file /* FILE* */);
/* 1 when rank memory m fits both limits (a limit <= 0 is not checked) */
int e8q_plan_rank_fits(const e8q_rank_mem *m, double host_mem_gib, double gpu_mem_gib);

#endif
