/* kernels/transformer_gpu.h: a Llama decoder block on a CUDA device, with host activations in
 * and out (--device cuda in eval, generate and quantize's validation; worker/forward.c).
 *
 *   e8q_tf_gpu *w = e8q_tf_gpu_create(device, &shape, &why);   // NULL (and why): use the CPU
 *   e8q_tf_gpu_block(w, n_seq, T, x, attn_norm, ffn_norm, lin); // x [n_seq*T, dim] host, in place
 *
 * The block is kernels/transformer.h's ops in the same order as e8q_block_forward (RMSNorm, the
 * fused qkv product, rotate-half RoPE, causal GQA attention, o product and residual, RMSNorm,
 * up|gate product, SwiGLU, down product and residual), with the four quantized linears through
 * the CUDA fused kernels (kernels/qlinear_gpu.h, device buffers) and the activations staying on
 * the device between them: x goes up once and comes back once per block.
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

/* the device workspace of blocks of this shape (grows with the tokens of a call) */
e8q_tf_gpu *e8q_tf_gpu_create(int device, const e8q_tf_shape *s, const char **why_not);
void e8q_tf_gpu_free(e8q_tf_gpu *w); /* NULL is a no-op */
/* lin: the block's qkv, o, upgate, down on w's device; norms [dim] host (uploaded per call) */
void e8q_tf_gpu_block(e8q_tf_gpu *w, int n_seq, int T, float *x, const float *attn_norm, const float *ffn_norm,
                      e8q_qlinear_gpu *const lin[4]);

#endif
