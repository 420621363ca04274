/* kernels/transformer.h: the Llama decoder's non-matmul operations, fp32, no I/O.
 *
 * Conventions: activations are row-major [tokens, features]. A batch is n_seq sequences of
 * T tokens each, stored one sequence after another (row s*T + t is token t of sequence s).
 * Attention reads the fused qkv rows of the artifact layout (DESIGN §4): each token's row is
 * [q (n_heads*hd) | k (n_kv_heads*hd) | v (n_kv_heads*hd)].
 * RoPE is Hugging Face's rotate-half: within a head, element i pairs with i + hd/2 and turns
 * by angle pos * theta^(-2i/hd) (llama2.c checkpoints are permuted into this convention on
 * import, io/llama2c.h).
 *
 * Fast paths are multi-threaded with OpenMP (never calling BLAS inside a parallel region);
 * each has a sequential `_ref` twin with the same signature that the tests hold it to.
 */
#ifndef E8Q_KERNELS_TRANSFORMER_H
#define E8Q_KERNELS_TRANSFORMER_H

#include <stddef.h>

/* ---------------------------------------------------------------- RMSNorm
 * y[t,:] = x[t,:] / sqrt(mean(x[t,:]^2) + eps) * w. y may alias x. */
void e8q_rmsnorm(int T, int d, const float *x /* [T, d] */, const float *w /* [d] */, float eps,
                 float *y /* [T, d] */);
void e8q_rmsnorm_ref(int T, int d, const float *x /* [T, d] */, const float *w /* [d] */, float eps,
                     float *y /* [T, d] */);

/* ---------------------------------------------------------------- RoPE
 * Rotates, in place, the first n_heads*hd columns of each row of x (row stride ld floats):
 * token t of each sequence sits at position pos0 + t. hd must be even. */
void e8q_rope(int n_seq, int T, int pos0, int n_heads, int hd, double theta,
              float *x /* [n_seq*T, ld] */, int ld);
/* e8q_rope's table: cos and sin (float pairs) of the angle of position pos0 + t and frequency i
 * (computed in double), [T, hd/2, 2], malloc'd */
float *e8q_rope_table(int T, int pos0, int hd, double theta);
void e8q_rope_ref(int n_seq, int T, int pos0, int n_heads, int hd, double theta,
                  float *x /* [n_seq*T, ld] */, int ld);
/* the reference turn by sign times the RoPE angle (1: e8q_rope_ref, -1: e8q_rope_backward_ref,
 * the inverse), in double; what names the caller in the error for an odd hd */
void e8q_rope_turn_ref(const char *what, int n_seq, int T, int pos0, int n_heads, int hd, double theta, double sign,
                       float *x /* [n_seq*T, ld] */, int ld);

/* ---------------------------------------------------------------- attention (batched)
 * Causal grouped-query attention within each sequence: query head h reads kv head
 * h / (n_heads / n_kv_heads); scores scaled by 1/sqrt(hd).
 * qkv: [n_seq*T, (n_heads + 2*n_kv_heads)*hd], q and k already rotated.
 * out: [n_seq*T, n_heads*hd]. */
void e8q_attention(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv,
                   float *out);
void e8q_attention_ref(int n_seq, int T, int n_heads, int n_kv_heads, int hd, const float *qkv,
                       float *out);

/* ---------------------------------------------------------------- attention (one token)
 * The token at position pos attends to positions 0..pos of a KV cache.
 * q: [n_heads*hd] (rotated); kc, vc: [>= pos+1, n_kv_heads*hd] (row p = position p);
 * out: [n_heads*hd]; att: scratch [n_heads, pos+1]. */
void e8q_attention_step(int pos, int n_heads, int n_kv_heads, int hd, const float *q, const float *kc,
                        const float *vc, float *out, float *att);
/* plain loops in double accumulation, one head after another: the reference for tests */
void e8q_attention_step_ref(int pos, int n_heads, int n_kv_heads, int hd, const float *q, const float *kc,
                            const float *vc, float *out, float *att);

/* ---------------------------------------------------------------- SwiGLU
 * h[t,i] = silu(gate[t,i]) * up[t,i], with ug rows [up (hidden) | gate (hidden)]
 * (the upgate group's row order, DESIGN §4). */
void e8q_swiglu(int T, int hidden, const float *ug /* [T, 2*hidden] */, float *h /* [T, hidden] */);
/* the same in double, sequential: the reference for tests */
void e8q_swiglu_ref(int T, int hidden, const float *ug /* [T, 2*hidden] */, float *h /* [T, hidden] */);

/* ---------------------------------------------------------------- softmax and NLL
 * in place, max-subtracted */
void e8q_softmax(int n, float *x /* [n] */);
/* the same in double throughout: the reference for tests */
void e8q_softmax_ref(int n, float *x /* [n] */);
/* -log softmax(logits)[target], computed in double */
double e8q_nll(int n, const float *logits /* [n] */, int target);
/* adds e8q_nll of each row r of logits [rows, n] whose targets[r] >= 0 to *sum, in row order,
 * and counts it in *count (a negative target is not scored; one >= n is a fatal error) */
void e8q_nll_rows(int rows, int n, const float *logits, const int *targets, double *sum, long *count);
/* index of the largest logit (first on ties) */
int e8q_argmax(int n, const float *x /* [n] */);

#endif
