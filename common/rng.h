/* common/rng.h: the one deterministic random generator of e8q.
 *
 * Counter based: the k-th number of stream `stream` under `seed` is a pure function
 * e8q_rng_at(seed, stream, k) (two rounds of the splitmix64 / murmur3 64-bit finalizer over
 * seed, stream and k). Nothing depends on how many numbers were drawn before, on thread
 * count or on the platform: integer outputs, uniforms and signs are bit-identical
 * everywhere. Normals use Box-Muller through libm's log/sqrt/cos, so they are bit-identical
 * wherever libm is (glibc on x86-64 and aarch64 give the same results for these inputs in
 * practice); anything whose bits matter across machines (RHT signs) uses signs, not normals.
 *
 * Conventions used by e8q (streams, so that different uses never share numbers):
 *   E8Q_RNG_STREAM_SU / _SV   RHT sign vectors of a linear (seed = the linear's seed)
 *   E8Q_RNG_STREAM_HAD        random orthogonal Hadamard factors (stream + K)
 *   E8Q_RNG_STREAM_CALIB      calibration sampling
 *   E8Q_RNG_STREAM_SAMPLE     token sampling (e8q generate --temperature)
 * A sequential cursor (e8q_rng) is the same function with an incrementing counter.
 */
#ifndef E8Q_COMMON_RNG_H
#define E8Q_COMMON_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define E8Q_RNG_STREAM_SU 0x5375ull     /* "Su" */
#define E8Q_RNG_STREAM_SV 0x5376ull     /* "Sv" */
#define E8Q_RNG_STREAM_HAD 0x48000000ull /* + K */
#define E8Q_RNG_STREAM_CALIB 0x43616cull /* "Cal" */
#define E8Q_RNG_STREAM_SAMPLE 0x536d70ull /* "Smp": sampling in e8q generate --temperature */
#define E8Q_RNG_STREAM_TEST 0x54657374ull

/* ---------------------------------------------------------------- random access */
/* the index-th 64-bit output of (seed, stream) */
uint64_t e8q_rng_at(uint64_t seed, uint64_t stream, uint64_t index);
/* uniform double in [0, 1) with 53 random bits, from output `index` */
double e8q_rng_uniform_at(uint64_t seed, uint64_t stream, uint64_t index);
/* standard normal from outputs 2*index and 2*index+1 (Box-Muller, cosine branch) */
double e8q_rng_normal_at(uint64_t seed, uint64_t stream, uint64_t index);
/* +1 or -1 from the top bit of output `index` */
float e8q_rng_sign_at(uint64_t seed, uint64_t stream, uint64_t index);

/* ---------------------------------------------------------------- sequential cursor */
typedef struct {
  uint64_t seed, stream;
  uint64_t counter; /* index of the next 64-bit output */
} e8q_rng;

void e8q_rng_init(e8q_rng *r, uint64_t seed, uint64_t stream);
uint64_t e8q_rng_u64(e8q_rng *r);     /* output `counter`, counter += 1 */
double e8q_rng_uniform(e8q_rng *r);   /* [0,1), counter += 1 */
double e8q_rng_normal(e8q_rng *r);    /* counter rounded up to even, then += 2 */
float e8q_rng_sign(e8q_rng *r);       /* +-1, counter += 1 */
uint64_t e8q_rng_below(e8q_rng *r, uint64_t bound); /* uniform in [0, bound), unbiased */

/* ---------------------------------------------------------------- bulk (parallel-safe) */
/* out[i] = e8q_rng_sign_at(seed, stream, offset + i), i < n */
void e8q_rng_fill_signs(uint64_t seed, uint64_t stream, uint64_t offset, size_t n, float *out);
/* out[i] = e8q_rng_normal_at(seed, stream, offset + i), i < n */
void e8q_rng_fill_normal(uint64_t seed, uint64_t stream, uint64_t offset, size_t n, double *out);

#ifdef __cplusplus
}
#endif
#endif
