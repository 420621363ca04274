/* worker/block_train.h: one decoder block, forward with its activations kept, and backward
 * (DESIGN §3, Fine-tuning), fp32 on the CPU.
 *
 * The forward is the computation of e8q_block_forward (worker/forward.h) written out so that the
 * intermediate activations stay in an e8q_bt_saved:
 *   xn1 = rmsnorm(x0, attn_norm)          qkv = rope(xn1 Wqkvᵀ)        att = attention(qkv)
 *   x1  = x0 + att Woᵀ                    xn2 = rmsnorm(x1, ffn_norm)  ug  = xn2 Wupgateᵀ
 *   h   = swiglu(ug)                      y   = x1 + h Wdownᵀ
 * Each linear is either dense (L->w) or quantized (L->q, an e8q_qlinear through the fused
 * kernels), exactly as in e8q_linear_forward.
 *
 * The backward composes the ops of kernels/transformer_grad.h and, for quantized linears,
 * e8q_qlinear_backward (kernels/qlinear_grad.h): the gradients of the block's parameters are
 * ACCUMULATED (+=) into the arrays of an e8q_bt_grads (NULL entries are not computed), the
 * gradient with respect to the block input is written. Nothing here depends on the thread
 * count (the kernels' contract) as long as BLAS is single-threaded.
 */
#ifndef E8Q_WORKER_BLOCK_TRAIN_H
#define E8Q_WORKER_BLOCK_TRAIN_H

#include <stddef.h>

#include "kernels/transformer_gpu.h"
#include "shard/model.h"

/* ---------------------------------------------------------------- saved activations
 * Zero-initialise; grown on demand to the tokens of a call; freed with e8q_bt_saved_free. */
typedef struct {
  size_t cap;        /* tokens the buffers hold */
  int N;             /* tokens of the last forward (n_seq * T) */
  int n_seq, T;      /* its shape */
  float *x0;         /* [cap, dim] block input */
  float *xn1;        /* [cap, dim] rmsnorm(x0, attn_norm): input of qkv */
  float *qkv;        /* [cap, (n_heads+2*n_kv_heads)*hd] after RoPE: input of attention */
  float *att;        /* [cap, n_heads*hd] attention output: input of o */
  float *x1;         /* [cap, dim] x0 + o(att) */
  float *xn2;        /* [cap, dim] rmsnorm(x1, ffn_norm): input of upgate */
  float *ug;         /* [cap, 2*hidden] up | gate */
  float *h;          /* [cap, hidden] swiglu(ug): input of down */
  float *z[E8Q_N_GROUPS]; /* [cap, m of group g] a quantized linear's output before its output
                           * scales (e8q_linear_forward_keep), for its backward; unused when dense */
  /* backward work buffers */
  float *d1;         /* [cap, dim] dL/dx1 */
  float *dn;         /* [cap, dim] dL/dxn (either norm's output) */
  float *dt;         /* [cap, dim] a norm's input gradient before the residual add */
  float *dh;         /* [cap, hidden] */
  float *dug;        /* [cap, 2*hidden] */
  float *datt;       /* [cap, n_heads*hd] */
  float *dqkv;       /* [cap, (n_heads+2*n_kv_heads)*hd] */
} e8q_bt_saved;
void e8q_bt_saved_free(e8q_bt_saved *s);

/* ---------------------------------------------------------------- gradients
 * Destinations of the parameter gradients, accumulated (+=); NULL: not computed.
 * dW[g] only for a dense linear g, dSU[g] / dSV[g] only for a quantized one. The device
 * block's own (kernels/transformer_gpu.h), so one filled struct serves either backward. */
typedef e8q_tf_gpu_grads e8q_bt_grads;

/* ---------------------------------------------------------------- forward / backward
 * x [n_seq*T, dim] (not modified), y [n_seq*T, dim] <- block(x); the activations go into s. */
void e8q_block_train_forward(const e8q_block *b, const e8q_config *cfg, int n_seq, int T, const float *x, float *y,
                             e8q_bt_saved *s);
/* Backward of the last e8q_block_train_forward on s (same block, unchanged since):
 * dy [n_seq*T, dim] = dL/dy; dx [n_seq*T, dim] <- dL/dx (may be NULL; may alias dy);
 * parameter gradients accumulated into g (may be NULL: input gradient only). */
void e8q_block_train_backward(const e8q_block *b, const e8q_config *cfg, e8q_bt_saved *s, const float *dy, float *dx,
                              const e8q_bt_grads *g);

#endif
