// tests/model/test_transformer_cuda_host.cu: the CUDA decoder-block kernels' arithmetic
// (kernels/transformer_cuda_dev.h, the same __host__ __device__ functions the kernels call)
// run on the HOST with the kernels' work split (256 lanes, partials combined as the block
// reductions do), against the CPU _refs of kernels/transformer.h: RMSNorm, RoPE, causal GQA
// attention, SwiGLU, on odd sizes. Needs no GPU: compiled by nvcc, only host code runs.
// Fresh random data each run (seed printed; E8Q_TEST_SEED repeats it).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vector>

extern "C" { // kernels/transformer.h is a C header without C++ guards
#include "kernels/transformer.h"
}
#include "kernels/transformer_cuda_dev.h"

#include "../check.h" // CHECK, n_pass/n_fail, g_seed, rnd/rndf, rel_err

static const int LANES = 256; // TF_THREADS of transformer_cuda.cu

// the block reductions of the kernels: a tree over the lanes' partials
template <class T, class Op> static T tree(std::vector<T> v, Op op) {
  for (size_t s = v.size() / 2; s > 0; s /= 2)
    for (size_t i = 0; i < s; i++) v[i] = op(v[i], v[i + s]);
  return v[0];
}

static std::vector<float> randv(size_t n, float scale) {
  std::vector<float> v(n);
  for (auto &x : v) x = rndf() * scale;
  return v;
}

static void test_rmsnorm(int T, int d) {
  std::vector<float> x = randv((size_t)T * d, 3.0f), w = randv(d, 1.0f), y((size_t)T * d), ref((size_t)T * d);
  const float eps = 1e-5f;
  for (int t = 0; t < T; t++) {
    std::vector<double> part(LANES);
    for (int l = 0; l < LANES; l++) part[l] = e8q_tdev_sumsq(&x[(size_t)t * d], d, l, LANES);
    const double ss = tree(part, [](double a, double b) { return a + b; });
    const float r = e8q_tdev_rms_inv(ss, d, eps);
    for (int l = 0; l < LANES; l++) e8q_tdev_rmsnorm_apply(&x[(size_t)t * d], w.data(), r, &y[(size_t)t * d], d, l, LANES);
  }
  e8q_rmsnorm_ref(T, d, x.data(), w.data(), eps, ref.data());
  const double e = rel_err(y.data(), ref.data(), y.size());
  CHECK(e < 1e-6, "rmsnorm T %d d %d: rel. error %.3g", T, d, e);
}

static void test_rope(int n_seq, int T, int pos0, int n_heads, int hd, int ld) {
  const size_t N = (size_t)n_seq * T;
  std::vector<float> x = randv(N * ld, 2.0f), ref = x;
  const double theta = 10000.0;
  for (size_t k = 0; k < N * n_heads * (hd / 2); k++)
    e8q_tdev_rope_pair(k, T, pos0, n_heads, hd, theta, 1.0f, x.data(), ld);
  e8q_rope_ref(n_seq, T, pos0, n_heads, hd, theta, ref.data(), ld);
  const double e = rel_err(x.data(), ref.data(), x.size());
  CHECK(e < 1e-6, "rope %d x %d from position %d, %d heads of %d (ld %d): rel. error %.3g", n_seq, T, pos0, n_heads,
        hd, ld, e);
}

static void test_attention(int n_seq, int T, int nh, int nkv, int hd) {
  const size_t ld = (size_t)(nh + 2 * nkv) * hd, N = (size_t)n_seq * T;
  std::vector<float> qkv = randv(N * ld, 1.5f), out(N * nh * hd), ref(N * nh * hd), att(T);
  const float scale = 1.0f / sqrtf((float)hd);
  for (int s = 0; s < n_seq; s++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < nh; h++) { // one kernel block
        const int kvh = h / (nh / nkv);
        const float *base = qkv.data() + (size_t)s * T * ld;
        const float *q = base + (size_t)t * ld + (size_t)h * hd, *k = base + (size_t)(nh + kvh) * hd;
        const float *v = base + (size_t)(nh + nkv + kvh) * hd;
        std::vector<float> part(LANES);
        for (int l = 0; l < LANES; l++) part[l] = e8q_tdev_scores(t, q, k, ld, hd, scale, att.data(), l, LANES);
        const float mx = tree(part, [](float a, float b) { return fmaxf(a, b); });
        for (int l = 0; l < LANES; l++) part[l] = e8q_tdev_exp(t, mx, att.data(), l, LANES);
        const float sum = tree(part, [](float a, float b) { return a + b; });
        float *o = out.data() + ((size_t)s * T + t) * nh * hd + (size_t)h * hd;
        for (int l = 0; l < LANES; l++) e8q_tdev_attend(t, att.data(), 1.0f / sum, v, ld, hd, o, l, LANES);
      }
  e8q_attention_ref(n_seq, T, nh, nkv, hd, qkv.data(), ref.data());
  const double e = rel_err(out.data(), ref.data(), out.size());
  CHECK(e < 1e-5, "attention %d x %d, %d/%d heads of %d: rel. error %.3g", n_seq, T, nh, nkv, hd, e);
}

// attention_step_kernel: one decode step at position pos against a KV cache, one block per head
static void test_attention_step(int pos, int nh, int nkv, int hd) {
  const size_t kvd = (size_t)nkv * hd;
  std::vector<float> q = randv((size_t)nh * hd, 1.5f), kc = randv((size_t)(pos + 1) * kvd, 1.5f),
                     vc = randv((size_t)(pos + 1) * kvd, 1.5f), out((size_t)nh * hd), ref(out.size()),
                     att(pos + 1), sref((size_t)nh * (pos + 1));
  const float scale = 1.0f / sqrtf((float)hd);
  for (int h = 0; h < nh; h++) {
    const int kvh = h / (nh / nkv);
    const float *qh = q.data() + (size_t)h * hd, *k = kc.data() + (size_t)kvh * hd, *v = vc.data() + (size_t)kvh * hd;
    std::vector<float> part(LANES);
    for (int l = 0; l < LANES; l++) part[l] = e8q_tdev_scores(pos, qh, k, kvd, hd, scale, att.data(), l, LANES);
    const float mx = tree(part, [](float a, float b) { return fmaxf(a, b); });
    for (int l = 0; l < LANES; l++) part[l] = e8q_tdev_exp(pos, mx, att.data(), l, LANES);
    const float sum = tree(part, [](float a, float b) { return a + b; });
    for (int l = 0; l < LANES; l++)
      e8q_tdev_attend(pos, att.data(), 1.0f / sum, v, kvd, hd, out.data() + (size_t)h * hd, l, LANES);
  }
  e8q_attention_step_ref(pos, nh, nkv, hd, q.data(), kc.data(), vc.data(), ref.data(), sref.data());
  const double e = rel_err(out.data(), ref.data(), out.size());
  CHECK(e < 1e-5, "attention step at %d, %d/%d heads of %d: rel. error %.3g", pos, nh, nkv, hd, e);
}

static void test_swiglu(int N, int hidden) {
  std::vector<float> ug = randv((size_t)N * 2 * hidden, 4.0f), h((size_t)N * hidden), ref((size_t)N * hidden);
  for (size_t k = 0; k < h.size(); k++) e8q_tdev_swiglu(k, hidden, ug.data(), h.data());
  e8q_swiglu_ref(N, hidden, ug.data(), ref.data());
  const double e = rel_err(h.data(), ref.data(), h.size());
  CHECK(e < 1e-6, "swiglu %d x %d: rel. error %.3g", N, hidden, e);
}

int main(void) {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_transformer_cuda_host: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  test_rmsnorm(1, 8);
  test_rmsnorm(5, 577);
  test_rmsnorm(3, 4096);
  test_rope(1, 1, 0, 1, 2, 2);
  test_rope(2, 7, 0, 5, 16, 5 * 16 + 3 * 16);
  test_rope(3, 33, 0, 3, 64, 4 * 64);
  test_rope(1, 1, 417, 6, 64, 8 * 64); // a decode step at position 417 (generate on a device)
  test_rope(2, 5, 9, 3, 16, 3 * 16);
  test_attention(1, 1, 1, 1, 8);
  test_attention(2, 9, 4, 2, 12);
  test_attention(1, 300, 6, 3, 64); // more keys than lanes
  test_attention(2, 17, 3, 3, 10);
  test_attention_step(0, 4, 2, 16);
  test_attention_step(300, 9, 3, 64); // more keys than lanes
  test_swiglu(1, 1);
  test_swiglu(7, 129);
  printf("test_transformer_cuda_host: %d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
