/* common/rng.c: counter-based generator (see rng.h). */
#include "common/rng.h"

#include <math.h>

/* ---------------------------------------------------------------- mixing */
static inline uint64_t mix64(uint64_t z) {
  /* splitmix64 finalizer (Stafford variant 13) */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t e8q_rng_at(uint64_t seed, uint64_t stream, uint64_t index) {
  /* key from (seed, stream); then two finalizer rounds over key + golden * (index + 1) */
  uint64_t key = mix64(seed + 0x9e3779b97f4a7c15ull) ^ mix64(stream * 0xd1342543de82ef95ull + 0x632be59bd9b4e019ull);
  uint64_t z = key + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = mix64(z);
  return mix64(z ^ key);
}

double e8q_rng_uniform_at(uint64_t seed, uint64_t stream, uint64_t index) {
  return (double)(e8q_rng_at(seed, stream, index) >> 11) * 0x1.0p-53;
}

double e8q_rng_normal_at(uint64_t seed, uint64_t stream, uint64_t index) {
  /* u1 in (0, 1]: never log(0) */
  double u1 = (double)((e8q_rng_at(seed, stream, 2 * index) >> 11) + 1) * 0x1.0p-53;
  double u2 = (double)(e8q_rng_at(seed, stream, 2 * index + 1) >> 11) * 0x1.0p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

float e8q_rng_sign_at(uint64_t seed, uint64_t stream, uint64_t index) {
  return (e8q_rng_at(seed, stream, index) >> 63) ? -1.0f : 1.0f;
}

/* ---------------------------------------------------------------- cursor */
void e8q_rng_init(e8q_rng *r, uint64_t seed, uint64_t stream) {
  r->seed = seed;
  r->stream = stream;
  r->counter = 0;
}

uint64_t e8q_rng_u64(e8q_rng *r) { return e8q_rng_at(r->seed, r->stream, r->counter++); }

double e8q_rng_uniform(e8q_rng *r) { return e8q_rng_uniform_at(r->seed, r->stream, r->counter++); }

double e8q_rng_normal(e8q_rng *r) {
  r->counter = (r->counter + 1) & ~1ull;
  double v = e8q_rng_normal_at(r->seed, r->stream, r->counter / 2);
  r->counter += 2;
  return v;
}

float e8q_rng_sign(e8q_rng *r) { return e8q_rng_sign_at(r->seed, r->stream, r->counter++); }

uint64_t e8q_rng_below(e8q_rng *r, uint64_t bound) {
  if (bound <= 1) return 0;
  /* rejection: accept below the largest multiple of bound */
  uint64_t limit = UINT64_MAX - (UINT64_MAX % bound + 1) % bound;
  for (;;) {
    uint64_t v = e8q_rng_u64(r);
    if (v <= limit) return v % bound;
  }
}

/* ---------------------------------------------------------------- bulk */
void e8q_rng_fill_signs(uint64_t seed, uint64_t stream, uint64_t offset, size_t n, float *out) {
  for (size_t i = 0; i < n; i++) out[i] = e8q_rng_sign_at(seed, stream, offset + i);
}

void e8q_rng_fill_normal(uint64_t seed, uint64_t stream, uint64_t offset, size_t n, double *out) {
  for (size_t i = 0; i < n; i++) out[i] = e8q_rng_normal_at(seed, stream, offset + i);
}
