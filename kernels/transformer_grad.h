/* kernels/transformer_grad.h: backward passes of the Llama decoder's operations and the
 * fine-tuning losses (DESIGN §3, Fine-tuning), fp32, no I/O.
 *
 * Conventions: the forward ops are those of kernels/transformer.h, with the same layouts:
 * activations row-major [tokens, features]; a batch is n_seq sequences of T tokens stored one
 * after another; attention reads fused qkv rows [q (n_heads*hd) | k (n_kv_heads*hd) |
 * v (n_kv_heads*hd)]; RoPE is rotate-half; SwiGLU reads ug rows [up | gate].
 *
 * A backward takes the forward's inputs (not its outputs: what it needs is recomputed) and
 * the gradient of the loss with respect to the forward's output (dy, dout, dh, ...), and
 *   - WRITES (=) the gradient with respect to the forward's activation input (dx, dqkv, dug),
 *   - ACCUMULATES (+=) into the gradient of a parameter (dw of RMSNorm, dW of a linear), so
 *     one parameter used by several sequences, chunks or ranks sums its contributions.
 * Activation-input gradients may be NULL where documented (nothing is computed for them).
 *
 * Losses return their value as a SUM over tokens (or elements) in double, never a mean, so
 * ranks and chunks merge by addition (DESIGN §2); the gradient written is the exact gradient
 * of the returned value. A caller that wants a mean scales the gradients by 1/count.
 *
 * Fast paths are multi-threaded with OpenMP over fixed-size pieces of work whose results are
 * combined in a fixed order, so they give the same bits for any thread count (BLAS, where
 * used, is called outside parallel regions and must be single-threaded for that, DESIGN §5).
 * Each has a sequential `_ref` twin with the same signature, written as plain loops in
 * double, that the tests hold it to.
 */
#ifndef E8Q_KERNELS_TRANSFORMER_GRAD_H
#define E8Q_KERNELS_TRANSFORMER_GRAD_H

#include <stddef.h>

/* ---------------------------------------------------------------- RMSNorm
 * Forward y[t,:] = x[t,:] * r_t * w, r_t = 1/sqrt(mean(x[t,:]^2) + eps).
 * dx[t,:] = r_t * w * dy[t,:] - (r_t^3 / d) * x[t,:] * sum_i(dy[t,i] w[i] x[t,i])   (written;
 *           may be NULL; may alias dy)
 * dw[i]  += sum_t dy[t,i] * x[t,i] * r_t                                           (accumulated;
 *           may be NULL) */
void e8q_rmsnorm_backward(int T, int d, const float *x /* [T, d] */, const float *w /* [d] */, float eps,
                          const float *dy /* [T, d] */, float *dx /* [T, d] */, float *dw /* [d] */);
void e8q_rmsnorm_backward_ref(int T, int d, const float *x /* [T, d] */, const float *w /* [d] */, float eps,
                              const float *dy /* [T, d] */, float *dx /* [T, d] */, float *dw /* [d] */);

/* ---------------------------------------------------------------- RoPE
 * The forward is a rotation of each (i, i + hd/2) pair, so its backward is the inverse
 * rotation (angle negated), applied in place to the gradient: on entry dx holds dL/d(rotated),
 * on return dL/d(unrotated). Same arguments as e8q_rope: the first n_heads*hd columns of each
 * row (stride ld) are turned, token t of each sequence at position pos0 + t; hd even. For the
 * fused qkv gradient, n_heads = n_q_heads + n_kv_heads turns q and k in one pass, as forward. */
void e8q_rope_backward(int n_seq, int T, int pos0, int n_heads, int hd, double theta,
                       float *dx /* [n_seq*T, ld] */, int ld);
void e8q_rope_backward_ref(int n_seq, int T, int pos0, int n_heads, int hd, double theta,
                           float *dx /* [n_seq*T, ld] */, int ld);

/* ---------------------------------------------------------------- attention
 * Backward of e8q_attention (causal GQA softmax attention scaled by 1/sqrt(hd), q and k
 * already rotated). The probabilities are recomputed from qkv (nothing saved by the forward).
 * dout: gradient of out [n_seq*T, n_heads*hd]. dqkv: written in full, in the qkv layout:
 * q columns get dQ; k and v columns get the sum over the n_heads/n_kv_heads query heads that
 * share each kv head. dqkv must not alias qkv or dout. */
void e8q_attention_backward(int n_seq, int T, int n_heads, int n_kv_heads, int hd,
                            const float *qkv /* [n_seq*T, (n_heads+2*n_kv_heads)*hd] */,
                            const float *dout /* [n_seq*T, n_heads*hd] */,
                            float *dqkv /* [n_seq*T, (n_heads+2*n_kv_heads)*hd] */);
void e8q_attention_backward_ref(int n_seq, int T, int n_heads, int n_kv_heads, int hd,
                                const float *qkv /* [n_seq*T, (n_heads+2*n_kv_heads)*hd] */,
                                const float *dout /* [n_seq*T, n_heads*hd] */,
                                float *dqkv /* [n_seq*T, (n_heads+2*n_kv_heads)*hd] */);

/* ---------------------------------------------------------------- SwiGLU
 * Forward h = silu(gate) * up, ug rows [up (hidden) | gate (hidden)].
 * dug rows [dup | dgate] (written): dup = dh * silu(gate),
 * dgate = dh * up * s * (1 + gate * (1 - s)), s = sigmoid(gate). dug must not alias ug. */
void e8q_swiglu_backward(int T, int hidden, const float *ug /* [T, 2*hidden] */, const float *dh /* [T, hidden] */,
                         float *dug /* [T, 2*hidden] */);
void e8q_swiglu_backward_ref(int T, int hidden, const float *ug /* [T, 2*hidden] */,
                             const float *dh /* [T, hidden] */, float *dug /* [T, 2*hidden] */);

/* ---------------------------------------------------------------- dense linear
 * Forward y = x Wᵀ with W [m out, n in] (e8q_linear's layout).
 * dx  = dy W     (written; may be NULL)
 * dW += dyᵀ x    (accumulated; may be NULL)
 * The fast path is two cblas_sgemm calls (no OpenMP of its own). */
void e8q_linear_backward(int T, int m, int n, const float *x /* [T, n] */, const float *W /* [m, n] */,
                         const float *dy /* [T, m] */, float *dx /* [T, n] */, float *dW /* [m, n] */);
void e8q_linear_backward_ref(int T, int m, int n, const float *x /* [T, n] */, const float *W /* [m, n] */,
                             const float *dy /* [T, m] */, float *dx /* [T, n] */, float *dW /* [m, n] */);

/* ---------------------------------------------------------------- soft cross-entropy
 * For end-to-end fine-tuning against the original model's distribution.
 * Returns L = sum_t sum_v -p[t,v] * log softmax(z[t,:])[v], computed in double with the max
 * subtracted (finite for any finite logits), and writes the exact gradient of L:
 *   dlogits[t,v] = (sum_u p[t,u]) * softmax(z[t,:])[v] - p[t,v],
 * i.e. softmax(z) - p for targets that sum to one. dlogits may be NULL (loss only) and may
 * alias logits (the gradient overwrites the logits row by row). Targets must be >= 0. */
double e8q_xent_soft(int T, int V, const float *logits /* [T, V] */, const float *target_prob /* [T, V] */,
                     float *dlogits /* [T, V] */);
double e8q_xent_soft_ref(int T, int V, const float *logits /* [T, V] */, const float *target_prob /* [T, V] */,
                         float *dlogits /* [T, V] */);
/* The same with the targets given as the teacher's logits: p = softmax(target_logits), in
 * double (no float probabilities in between). Aliasing as above. */
double e8q_xent_soft_logits(int T, int V, const float *logits /* [T, V] */,
                            const float *target_logits /* [T, V] */, float *dlogits /* [T, V] */);
double e8q_xent_soft_logits_ref(int T, int V, const float *logits /* [T, V] */,
                                const float *target_logits /* [T, V] */, float *dlogits /* [T, V] */);

/* Top-k targets: token t's target is k (id, prob) pairs, ids[t*k + j] with probs[t*k + j].
 * The mass outside the k ids is DROPPED and the k probabilities are RENORMALISED to sum to
 * one: p'[id] = prob / sum_j prob. Entries with a negative id are ignored (padding); ids may
 * repeat (their probabilities add). A token whose kept probabilities sum to zero contributes
 * nothing: loss 0 and a zero dlogits row.
 * Returns L = sum_t sum_j -p'[t,j] * log softmax(z[t,:])[ids[t,j]] (double, max-subtracted);
 * dlogits[t,:] = softmax(z[t,:]) - p'[t,:] (written; may be NULL; may alias logits). */
double e8q_xent_topk(int T, int V, const float *logits /* [T, V] */, int k, const int *ids /* [T, k] */,
                     const float *probs /* [T, k] */, float *dlogits /* [T, V] */);
double e8q_xent_topk_ref(int T, int V, const float *logits /* [T, V] */, int k, const int *ids /* [T, k] */,
                         const float *probs /* [T, k] */, float *dlogits /* [T, V] */);

/* ---------------------------------------------------------------- MSE
 * For block fine-tuning against the original block's outputs.
 * Returns L = sum_i (y[i] - target[i])^2 (a sum, in double; not divided by n) and writes its
 * exact gradient dy[i] = 2 * (y[i] - target[i]) (unnormalised; may be NULL; may alias y). */
double e8q_mse(size_t n, const float *y /* [n] */, const float *target /* [n] */, float *dy /* [n] */);
double e8q_mse_ref(size_t n, const float *y /* [n] */, const float *target /* [n] */, float *dy /* [n] */);

#endif
