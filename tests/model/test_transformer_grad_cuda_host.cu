// tests/model/test_transformer_grad_cuda_host.cu: the arithmetic of the CUDA backward kernels
// (kernels/transformer_grad_cuda_dev.h, the same __host__ __device__ functions the kernels of
// kernels/transformer_grad_cuda.cu call) run on the HOST with the kernels' work split (256 lanes,
// partials combined by the same trees), against the CPU _refs of kernels/transformer_grad.h
// (double): RMSNorm (dx, also aliasing dy, and dw accumulated), RoPE (and forward then backward
// restoring the input), causal GQA attention (dQ, dK, dV, every element written), SwiGLU, on odd
// sizes. Needs no GPU: compiled by nvcc, only host code runs. Fresh random data each run (seed
// printed; E8Q_TEST_SEED repeats it).
//
// Tolerances (the errors seen over 100 seeds in brackets): rel_err = max |a - b| / max |b| over
// the compared part (check.h), against the _refs' double sums rounded once to float.
//   RMSNorm 1e-6 [0]: the sums are float64 like the _ref's (only their order differs, ~1e-16)
//     and dx's two terms are in double, so dx and (float)sum_t differ from the _ref by at most
//     one float rounding (6e-8), rarely that; dw starts from the same values in both.
//   RoPE 1e-6 [1e-7]: float cos and sin (one rounding each), two float products and a sum,
//     against double arithmetic (the forward's test uses the same); forward then backward
//     restores the input to 1e-6 [2.4e-7] (twice that, and cos^2 + sin^2 of floats is 1 to 1e-7).
//   SwiGLU 2e-6 [4.7e-7], elementwise, over the size of the rounded terms (|dh gate s| for dup,
//     |dh up s| (1 + |gate| (1 - s)) for dgate, where 1 + gate (1 - s) may cancel): s carries
//     expf's <= 2 ulp and two roundings, then six float operations: at most ~13 roundings of
//     6e-8 = 8e-7.
//   attention 2e-5 [1.6e-6, T = 300]: float32 dot products over hd (<= 272) terms and sums over
//     <= 300 keys or queries, whose rounding grows like sqrt(terms) x 6e-8 on random data, through
//     exp and the cancellation dP - D; the CPU fast path is held to its _ref at 1e-5
//     (tests/train/test_grad_ops.c). A dropped -D, a missed key or a wrong sign gives errors of
//     order 0.1 to 1 (tried).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vector>

extern "C" { // C headers without C++ guards
#include "kernels/transformer.h"
#include "kernels/transformer_grad.h"
}
#include "kernels/transformer_grad_cuda_dev.h"

#include "../check.h" // CHECK, n_pass/n_fail, g_seed, rnd/rndf, rel_err

static const int LANES = 256; // TF_THREADS of transformer_grad_cuda.cu

// the kernels' block reductions (grad_tree_sum / grad_tree_max): at step s, lane i < s combines
// its value with lane i + s's
template <class T, class Op> static T lanes_tree(std::vector<T> v, Op op) {
  for (size_t s = v.size() / 2; s > 0; s /= 2)
    for (size_t i = 0; i < s; i++) v[i] = op(v[i], v[i + s]);
  return v[0];
}
static double dsum(double a, double b) { return a + b; }
static float fsum(float a, float b) { return a + b; }
static float fmax2(float a, float b) { return fmaxf(a, b); }

static std::vector<float> randv(size_t n, float scale) {
  std::vector<float> v(n);
  for (auto &x : v) x = rndf() * scale;
  return v;
}

// columns [c0, c0 + nc) of rows [rows, ld] of a and b, as rel_err
static double rel_err_cols(const float *a, const float *b, size_t rows, size_t ld, size_t c0, size_t nc) {
  std::vector<float> va, vb;
  for (size_t r = 0; r < rows; r++)
    for (size_t c = c0; c < c0 + nc; c++) {
      va.push_back(a[r * ld + c]);
      vb.push_back(b[r * ld + c]);
    }
  return rel_err(va.data(), vb.data(), va.size());
}

static int all_finite(const std::vector<float> &v) {
  for (float x : v)
    if (!isfinite(x)) return 0;
  return 1;
}

// ---------------------------------------------------------------- RMSNorm
static void test_rmsnorm(int N, int d, int alias) {
  const float eps = 1e-5f;
  std::vector<float> x = randv((size_t)N * d, 3.0f), w = randv(d, 1.0f), dy = randv((size_t)N * d, 2.0f);
  std::vector<float> dw = randv(d, 0.5f), dw_ref = dw, dx((size_t)N * d), dx_ref((size_t)N * d);
  std::vector<double> rc(2 * (size_t)N);
  e8q_rmsnorm_backward_ref(N, d, x.data(), w.data(), eps, dy.data(), dx_ref.data(), dw_ref.data());
  float *out = alias ? dy.data() : dx.data();
  for (int t = 0; t < N; t++) { // rms_rows_kernel, one block per row
    const float *xr = &x[(size_t)t * d], *gr = &dy[(size_t)t * d];
    std::vector<double> ss(LANES), dot(LANES);
    for (int l = 0; l < LANES; l++) ss[l] = e8q_tdev_sumsq(xr, d, l, LANES);
    for (int l = 0; l < LANES; l++) dot[l] = e8q_gdev_rms_dot(xr, w.data(), gr, d, l, LANES);
    e8q_gdev_rms_factors(lanes_tree(ss, dsum), lanes_tree(dot, dsum), d, eps, &rc[2 * (size_t)t]);
  }
  for (int i = 0; i < d; i++) e8q_gdev_rms_dw(i, N, d, x.data(), dy.data(), rc.data(), dw.data()); // rms_dw_kernel
  for (size_t k = 0; k < (size_t)N * d; k++) e8q_gdev_rms_dx(k, d, x.data(), w.data(), dy.data(), rc.data(), out);
  const double ex = rel_err(out, dx_ref.data(), dx_ref.size()), ew = rel_err(dw.data(), dw_ref.data(), d);
  CHECK(ex < 1e-6, "rmsnorm backward %d x %d%s: dx rel. error %.3g", N, d, alias ? " (dx = dy)" : "", ex);
  CHECK(ew < 1e-6, "rmsnorm backward %d x %d%s: dw rel. error %.3g", N, d, alias ? " (dx = dy)" : "", ew);
}

// ---------------------------------------------------------------- RoPE
static void rope_host(int n_seq, int T, int n_heads, int hd, float sgn, float *x, int ld) { // rope(_back)_kernel
  for (size_t k = 0; k < (size_t)n_seq * T * n_heads * (hd / 2); k++)
    e8q_tdev_rope_pair(k, T, 0, n_heads, hd, 10000.0, sgn, x, ld);
}

static void test_rope_backward(int n_seq, int T, int n_heads, int hd, int ld) {
  const size_t N = (size_t)n_seq * T;
  std::vector<float> g = randv(N * ld, 2.0f), ref = g, x = g;
  rope_host(n_seq, T, n_heads, hd, -1.0f, g.data(), ld);
  e8q_rope_backward_ref(n_seq, T, 0, n_heads, hd, 10000.0, ref.data(), ld);
  const double e = rel_err(g.data(), ref.data(), g.size());
  CHECK(e < 1e-6, "rope backward %d x %d, %d heads of %d (ld %d): rel. error %.3g", n_seq, T, n_heads, hd, ld, e);
  std::vector<float> y = x;
  rope_host(n_seq, T, n_heads, hd, 1.0f, y.data(), ld);
  rope_host(n_seq, T, n_heads, hd, -1.0f, y.data(), ld);
  const double er = rel_err(y.data(), x.data(), x.size());
  CHECK(er < 1e-6, "rope backward(rope(x)) %d x %d, %d heads of %d: rel. error %.3g", n_seq, T, n_heads, hd, er);
}

// ---------------------------------------------------------------- SwiGLU
// elementwise, |a - b| over the size of the terms the float arithmetic rounds (dgate's
// 1 + gate (1 - s) may cancel, so its relative error alone may not be small)
static void test_swiglu_backward(int N, int hidden) {
  std::vector<float> ug = randv((size_t)N * 2 * hidden, 5.0f), dh = randv((size_t)N * hidden, 2.0f);
  std::vector<float> dug((size_t)N * 2 * hidden, NAN), ref((size_t)N * 2 * hidden);
  for (size_t k = 0; k < (size_t)N * hidden; k++) e8q_gdev_swiglu(k, hidden, ug.data(), dh.data(), dug.data());
  e8q_swiglu_backward_ref(N, hidden, ug.data(), dh.data(), ref.data());
  double eu = 0, eg = 0;
  for (size_t k = 0; k < (size_t)N * hidden; k++) {
    const size_t o = k / hidden * 2 * hidden + k % hidden;
    const double x = ug[o + hidden], s = 1.0 / (1.0 + exp(-x)), gs = fabs(dh[k] * s);
    const double mu = gs * fabs(x), mg = gs * fabs(ug[o]) * (1.0 + fabs(x) * (1.0 - s));
    eu = fmax(eu, fabs((double)dug[o] - ref[o]) / (mu > 0 ? mu : 1e-30));
    eg = fmax(eg, fabs((double)dug[o + hidden] - ref[o + hidden]) / (mg > 0 ? mg : 1e-30));
  }
  CHECK(all_finite(dug) && eu < 2e-6 && eg < 2e-6, "swiglu backward %d x %d: dup error %.3g, dgate %.3g (relative)",
        N, hidden, eu, eg);
}

// ---------------------------------------------------------------- attention
// attn_back_q_kernel's block (t, h, s), 256 lanes; P, dS: the scratch planes [n_seq, nh, T, T]
static void attn_q_block(int t, int h, int s, int T, int nh, int nkv, int hd, const float *qkv, const float *dout,
                         float *dqkv, float *P, float *dS) {
  const size_t ld = (size_t)(nh + 2 * nkv) * hd, ldo = (size_t)nh * hd, row = (size_t)s * T + t;
  const int kvh = h / (nh / nkv);
  const float scale = 1.0f / sqrtf((float)hd);
  const float *base = qkv + (size_t)s * T * ld, *q = qkv + row * ld + (size_t)h * hd, *dO = dout + row * ldo + h * hd;
  const float *k = base + (size_t)(nh + kvh) * hd, *v = base + (size_t)(nh + nkv + kvh) * hd;
  const size_t prow = (((size_t)s * nh + h) * T + t) * T;
  std::vector<float> att(T), fp(LANES);
  std::vector<double> dp(LANES);
  for (int l = 0; l < LANES; l++) fp[l] = e8q_tdev_scores(t, q, k, ld, hd, scale, att.data(), l, LANES);
  const float mx = lanes_tree(fp, fmax2);
  for (int l = 0; l < LANES; l++) fp[l] = e8q_tdev_exp(t, mx, att.data(), l, LANES);
  const float inv = 1.0f / lanes_tree(fp, fsum);
  for (int l = 0; l < LANES; l++) dp[l] = e8q_gdev_attn_dp(t, att.data(), inv, dO, v, ld, hd, P + prow, l, LANES);
  const float D = (float)lanes_tree(dp, dsum);
  for (int l = 0; l < LANES; l++) e8q_gdev_attn_ds(t, att.data(), P + prow, D, dS + prow, l, LANES);
  for (int l = 0; l < LANES; l++) e8q_gdev_attn_dq(t, att.data(), k, ld, hd, scale, dqkv + row * ld + h * hd, l, LANES);
}

// attn_back_kv_kernel's block (j, g, s), with the launcher's block size
static void attn_kv_block(int j, int g, int s, int T, int nh, int nkv, int hd, const float *qkv, const float *dout,
                          float *dqkv, const float *P, const float *dS) {
  const size_t ld = (size_t)(nh + 2 * nkv) * hd, ldo = (size_t)nh * hd, r0 = (size_t)s * T;
  const int group = nh / nkv, h0 = g * group, nl = hd < LANES ? (hd + 31) / 32 * 32 : LANES;
  const size_t plane = ((size_t)s * nh + h0) * T * T;
  float *drow = dqkv + (r0 + j) * ld;
  for (int l = 0; l < nl; l++)
    e8q_gdev_attn_dkv(j, T, group, qkv + r0 * ld + (size_t)h0 * hd, ld, dout + r0 * ldo + (size_t)h0 * hd, ldo, hd,
                      1.0f / sqrtf((float)hd), P + plane, dS + plane, drow + (size_t)(nh + g) * hd,
                      drow + (size_t)(nh + nkv + g) * hd, l, nl);
}

static void test_attention_backward(int n_seq, int T, int nh, int nkv, int hd) {
  const size_t ld = (size_t)(nh + 2 * nkv) * hd, N = (size_t)n_seq * T, plane = (size_t)n_seq * nh * T * T;
  std::vector<float> qkv = randv(N * ld, 1.5f), dout = randv(N * nh * hd, 1.0f);
  std::vector<float> dqkv(N * ld, NAN), ref(N * ld), P(plane, NAN), dS(plane, NAN);
  for (int s = 0; s < n_seq; s++)
    for (int h = 0; h < nh; h++)
      for (int t = 0; t < T; t++)
        attn_q_block(t, h, s, T, nh, nkv, hd, qkv.data(), dout.data(), dqkv.data(), P.data(), dS.data());
  for (int s = 0; s < n_seq; s++)
    for (int g = 0; g < nkv; g++)
      for (int j = 0; j < T; j++)
        attn_kv_block(j, g, s, T, nh, nkv, hd, qkv.data(), dout.data(), dqkv.data(), P.data(), dS.data());
  e8q_attention_backward_ref(n_seq, T, nh, nkv, hd, qkv.data(), dout.data(), ref.data());
  const double eq = rel_err_cols(dqkv.data(), ref.data(), N, ld, 0, (size_t)nh * hd);
  const double ek = rel_err_cols(dqkv.data(), ref.data(), N, ld, (size_t)nh * hd, (size_t)nkv * hd);
  const double ev = rel_err_cols(dqkv.data(), ref.data(), N, ld, (size_t)(nh + nkv) * hd, (size_t)nkv * hd);
  CHECK(all_finite(dqkv), "attention backward %d x %d, %d/%d heads of %d: dqkv not written in full", n_seq, T, nh,
        nkv, hd);
  CHECK(eq < 2e-5 && ek < 2e-5 && ev < 2e-5,
        "attention backward %d x %d, %d/%d heads of %d: rel. error dQ %.3g, dK %.3g, dV %.3g", n_seq, T, nh, nkv, hd,
        eq, ek, ev);
}

int main(void) {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_transformer_grad_cuda_host: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  test_rmsnorm(1, 45, 0);
  test_rmsnorm(7, 45, 1);
  test_rmsnorm(5, 576, 0);
  test_rmsnorm(3, 4097, 1);
  test_rope_backward(1, 1, 1, 2, 2);
  test_rope_backward(2, 7, 8, 16, 8 * 16 + 2 * 16);      // q and k of 6/2 heads turned in one pass, v left
  test_rope_backward(3, 33, 3, 64, 4 * 64);
  test_swiglu_backward(1, 1);
  test_swiglu_backward(7, 129);
  test_swiglu_backward(3, 1536);
  test_attention_backward(1, 1, 1, 1, 8);
  test_attention_backward(2, 7, 6, 2, 16);
  test_attention_backward(1, 33, 6, 2, 64);
  test_attention_backward(2, 17, 3, 3, 10);
  test_attention_backward(1, 300, 2, 1, 16); // more keys than lanes
  test_attention_backward(1, 5, 2, 1, 272);  // more of a head's elements than lanes
  return check_report_local("test_transformer_grad_cuda_host");
}
