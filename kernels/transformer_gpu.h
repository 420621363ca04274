/* kernels/transformer_gpu.h: a Llama decoder block on a CUDA device, with host activations in
 * and out (--device cuda in eval, generate and quantize's validation; worker/forward.c).
 *
 *   e8q_tf_gpu *w = e8q_tf_gpu_create(device, &shape, &why);   // NULL (and why): use the CPU
 *   e8q_tf_gpu_block(w, n_seq, T, x, attn_norm, ffn_norm, lin, tap, ctx); // x [n_seq*T, dim] host
 *
 * The block is kernels/transformer.h's ops in the same order as e8q_block_forward (RMSNorm, the
 * fused qkv product, rotate-half RoPE, causal GQA attention, o product and residual, RMSNorm,
 * up|gate product, SwiGLU, down product and residual), the activations staying on the device:
 * x goes up once and comes back once per block. A linear is either quantized (the CUDA fused
 * kernels, kernels/qlinear_gpu.h, on device buffers) or dense: its host weights are uploaded
 * once into the workspace's weight cache, keyed by host address, and kept while they fit (half
 * the device memory free at the first upload; least recently used evicted first), so a dense
 * model that fits is uploaded once for all its forwards; multiplied by cuBLAS SGEMM in pedantic
 * float32 (no TF32). A tap sees each linear's input on the device, for the Hessians.
 * Arithmetic: RMSNorm sums squares in float64 like the CPU; RoPE angles in float64, rounded to
 * float like e8q_rope_table; attention and SwiGLU in float32. Results agree with the CPU block
 * to float32 rounding (the order of sums differs), held to the CPU by tests/pipeline/device.sh
 * (eval NLL within 1e-4 relative). Launch geometry and limits are the launchers'
 * (kernels/transformer_cuda.cu): attention keeps one query's scores in shared memory, so T is
 * at most E8Q_TF_GPU_MAX_T. CUDA errors are fatal, naming the op and the shape. */
#ifndef E8Q_KERNELS_TRANSFORMER_GPU_H
#define E8Q_KERNELS_TRANSFORMER_GPU_H

#include "kernels/qlinear_gpu.h"

#define E8Q_TF_GPU_MAX_T 8192 /* tokens per sequence (attention scores: 32 KiB of shared memory) */

typedef struct {
  int dim, hidden, n_heads, n_kv_heads, head_dim;
  double rope_theta;
  float norm_eps;
} e8q_tf_shape;

typedef struct e8q_tf_gpu e8q_tf_gpu;

/* one linear of a block: quantized on the device (q), or dense host weights (w [m, n], q NULL),
 * uploaded by the workspace and cached by address (a caller that changes them in place between
 * calls must call e8q_tf_gpu_forget_weights) */
typedef struct {
  e8q_qlinear_gpu *q;
  const float *w;
  int m, n;
} e8q_tf_gpu_lin;

/* the input x_dev [rows, cols] (device) of linear group `group` (E8Q_GROUP_* order: qkv, o,
 * upgate, down) just before its product, complete once `stream` (a cudaStream_t) runs to here;
 * valid during the call */
typedef void (*e8q_tf_gpu_tap)(void *ctx, int group, int rows, int cols, const float *x_dev, void *stream);

/* the device workspace of blocks of this shape (grows with the tokens of a call) */
e8q_tf_gpu *e8q_tf_gpu_create(int device, const e8q_tf_shape *s, const char **why_not);
void e8q_tf_gpu_free(e8q_tf_gpu *w); /* NULL is a no-op */
/* lin: the block's qkv, o, upgate, down (quantized ones on w's device); norms [dim] host (uploaded
 * per call); tap may be NULL */
void e8q_tf_gpu_block(e8q_tf_gpu *w, int n_seq, int T, float *x, const float *attn_norm, const float *ffn_norm,
                      const e8q_tf_gpu_lin lin[4], e8q_tf_gpu_tap tap, void *tap_ctx);

/* ---------------------------------------------------------------- fine-tuning
 * The block forward with its activations kept on the device, and its backward: the computation
 * of worker/block_train.h (the same ops in the same order), with the backward ops of
 * kernels/transformer_grad_cuda.cu and, for quantized linears, e8q_qlinear_backward_gpu_dev
 * (kernels/qlinear_gpu.h). Dense linears: cuBLAS SGEMM in pedantic float32, dx = dy W and
 * dW += dyᵀ x. Every kernel sums in a fixed order (no atomics), so a sequence's gradient has
 * the same bits whichever rank computes it: worker/trainer.h's contract holds on GPU ranks.
 * The results differ from the CPU block by float32 rounding (tests/train/test_finetune_gpu.c).
 *
 *   e8q_tf_gpu_train_forward(w, n_seq, T, x, y, attn_norm, ffn_norm, lin);   // host x, y [N, dim]
 *   e8q_tf_gpu_train_backward(w, dy, dx, lin, &grads);                       // host dy, dx, grads
 *   e8q_tf_gpu_forget_weights(w);   // after a step changed dense weights in place
 *
 * lin[g].q must have been created from layers whose device scales are current
 * (e8q_qlinear_gpu_set_scales after each step). */
typedef struct {
  float *dSU[4];                   /* [n_pad] of quantized group g (host), or NULL */
  float *dSV[4];                   /* [m] of quantized group g, or NULL */
  float *dW[4];                    /* [m, n] of dense group g, or NULL */
  float *d_attn_norm, *d_ffn_norm; /* [dim] each, or NULL */
} e8q_tf_gpu_grads;                /* also the CPU block's (worker/block_train.h: e8q_bt_grads) */

/* x, y [n_seq*T, dim] host (y NULL: not downloaded, a recompute for the backward); the
 * activations stay in w for the backward that follows */
void e8q_tf_gpu_train_forward(e8q_tf_gpu *w, int n_seq, int T, const float *x, float *y, const float *attn_norm,
                              const float *ffn_norm, const e8q_tf_gpu_lin lin[4]);
/* dy [N, dim] host (the loss gradient at the last forward's y); dx [N, dim] host written, or
 * NULL; the gradients of g ACCUMULATED (+=) into its host arrays */
void e8q_tf_gpu_train_backward(e8q_tf_gpu *w, const float *dy, float *dx, const e8q_tf_gpu_lin lin[4],
                               const e8q_tf_gpu_grads *g);
/* The final norm and the head (eval and end-to-end fine-tuning): logits [P, V] (host) =
 * rmsnorm(x [P, dim] host, norm [dim]) headᵀ, head [V, dim] host (uploaded once and cached by
 * address, like the dense linears); xn [P, dim] (host, may be x, or NULL) gets the normed x.
 * Then the backward from dlogits [P, V] (host): dx [P, dim] (host) written, d_norm [dim] and
 * d_head [V, dim] (or NULL: a frozen, tied head) ACCUMULATED (+=) */
void e8q_tf_gpu_head_forward(e8q_tf_gpu *w, int P, const float *x, const float *norm, const float *head, int V,
                             float *logits, float *xn);
void e8q_tf_gpu_head_backward(e8q_tf_gpu *w, const float *dlogits, float *dx, float *d_norm, float *d_head);
/* ---------------------------------------------------------------- one decode step (generate)
 * worker/forward.c's e8q_model_step on the device: the residual stream and the KV cache
 * [n_layers, max_T, n_kv_heads hd] stay on the device (a new cache when n_layers or max_T
 * change), so a token costs one upload (its embedding row) and one download (the logits). The
 * norms and the head are cached by address like dense weights. The same ops and rounding as the
 * batched block: a step's logits agree with e8q_model_step's to float32 rounding.
 *   e8q_tf_gpu_step_begin(w, n_layers, max_T, x);              // x [dim] host
 *   for l: e8q_tf_gpu_step_layer(w, l, pos, attn_norm, ffn_norm, lin);
 *   e8q_tf_gpu_step_head(w, final_norm, head, V, logits);      // logits [V] host */
void e8q_tf_gpu_step_begin(e8q_tf_gpu *w, int n_layers, int max_T, const float *x);
void e8q_tf_gpu_step_layer(e8q_tf_gpu *w, int layer, int pos, const float *attn_norm, const float *ffn_norm,
                           const e8q_tf_gpu_lin lin[4]);
void e8q_tf_gpu_step_head(e8q_tf_gpu *w, const float *norm, const float *head, int V, float *logits);

/* the dense weights' (and the head's) device copies are stale (changed in place): uploaded
 * again at next use */
void e8q_tf_gpu_forget_weights(e8q_tf_gpu *w);

#endif
