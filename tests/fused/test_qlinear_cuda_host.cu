// tests/fused/test_qlinear_cuda_host.cu: the CUDA kernels' arithmetic (qlinear_cuda_dev.h, the
// same __host__ __device__ functions the kernels call) run on the HOST, against the CPU _ref.
// Needs no GPU: compiled by nvcc, only host code runs.
//   - e8q_qdev_decode == the CPU decoders (codebook.h) and the float64 dense decode, all codes;
//   - a warp's partial sums (32 lanes emulated) == e8q_qlinear_codes_matmul_ref, every codebook,
//     batch sizes 1..20 and 64, odd shapes;
//   - the Hadamard kernel's butterflies + mix == e8q_had_vec_f32 (CPU, kernels/hadamard.h), both ways;
//   - the three kernels chained as the launcher chains them == e8q_qlinear_forward_ref;
//   - the backward: the transpose product's column partials, split into row chunks as the
//     launcher splits them and added in chunk order == e8q_qlinear_codes_matmul_t_ref, every
//     codebook, one chunk and several; the backward chain (output transform, transpose product,
//     input transform, float64 column sums) == e8q_qlinear_backward_ref (dx, dSU, dSV).
// Fresh random data each run (seed printed; E8Q_TEST_SEED repeats it). Prints "N passed, M failed".
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vector>

#include "kernels/qlinear.h"
#include "kernels/qlinear_grad.h"
#include "kernels/qlinear_cuda_dev.h"

#include "../check.h" // CHECK, n_pass/n_fail, g_seed, rnd/rndf, rel_err

// a real Hadamard factor of order K (Paley or seeded random orthogonal), float copy
static void factor(std::vector<float> &R, int K) {
  R.assign((size_t)K * K, 1.0f);
  if (K == 1) return;
  e8q_had_factor f;
  e8q_had_factor_build(&f, K, rnd());
  memcpy(R.data(), f.Rf, sizeof(float) * K * K);
  e8q_had_factor_free(&f);
}

struct Layer {
  std::vector<uint16_t> codes, c2w;
  std::vector<uint8_t> c2b;
  std::vector<float> SU, SV, R_in, R_out;
  e8q_qlinear q;
};

static void make(Layer &L, int m, int n, int K_out, int K_in, e8q_codebook_id cb) {
  int np = (n + 7) / 8 * 8, nc = np / 8;
  L.codes.resize((size_t)m * nc);
  for (auto &c : L.codes) c = (uint16_t)rnd();
  L.c2w.resize((size_t)m * nc);
  for (auto &c : L.c2w) c = (uint16_t)rnd();
  L.c2b.resize((size_t)m * nc);
  for (auto &c : L.c2b) c = (uint8_t)rnd();
  L.SU.resize(np);
  for (auto &v : L.SU) v = rndf() + (rnd() & 1 ? 1.5f : -1.5f);
  L.SV.resize(m);
  for (auto &v : L.SV) v = rndf() + (rnd() & 1 ? 1.5f : -1.5f);
  factor(L.R_in, K_in);
  factor(L.R_out, K_out);
  e8q_qlinear_desc d;
  memset(&d, 0, sizeof d);
  d.m = m; d.n = n; d.n_pad = np; d.codebook = cb; d.codes = L.codes.data();
  d.codes2 = cb == E8Q_CB_E8P12RVQ4B ? (const void *)L.c2w.data() : cb == E8Q_CB_E8P12RVQ3B ? (const void *)L.c2b.data() : NULL;
  d.SU = L.SU.data(); d.SV = L.SV.data(); d.Wscale = 0.05f; d.n_pieces = 1;
  d.K_in = K_in; d.R_in = K_in > 1 ? L.R_in.data() : NULL; d.K_out = K_out; d.R_out = K_out > 1 ? L.R_out.data() : NULL;
  e8q_qlinear_init(&L.q, &d, "cuda host test layer");
}

static const e8q_codebook_id CBS[3] = {E8Q_CB_E8P12, E8Q_CB_E8P12RVQ3B, E8Q_CB_E8P12RVQ4B};

// ---------------------------------------------------------------- decode
static void test_decode() {
  const int8_t *grid = &e8q_e81b_grid2_host[0][0];
  int bad = 0;
  for (int c = 0; c < 65536; c++) { // every E8P code, stage 1
    float a[8], b[8];
    e8q_e8p_decode((uint16_t)c, a);
    e8q_qdev_decode(E8Q_CB_E8P12, e8q_e8p_packed_abs_host, grid, (uint16_t)c, 0, 1.0f, b);
    for (int t = 0; t < 8; t++) bad += a[t] != b[t];
  }
  CHECK(bad == 0, "E8P device decode differs from codebook.h on %d values", bad);
  // RVQ: against the f32 CPU decoders (tolerance: multiply by 1/rs vs divide by rs) and f64
  double worst = 0;
  for (int i = 0; i < 200000; i++) {
    uint16_t c1 = (uint16_t)rnd(), c2 = (uint16_t)rnd();
    uint8_t c3 = (uint8_t)rnd();
    float a[8], b[8], a3[8], b3[8];
    e8q_rvq4_decode(c1, c2, a);
    e8q_qdev_decode(E8Q_CB_E8P12RVQ4B, e8q_e8p_packed_abs_host, grid, c1, c2, 1.0f / (float)E8Q_RVQ4_RESID_SCALE, b);
    e8q_rvq3_decode(c1, c3, a3);
    e8q_qdev_decode(E8Q_CB_E8P12RVQ3B, e8q_e8p_packed_abs_host, grid, c1, c3, 1.0f / (float)E8Q_RVQ3_RESID_SCALE, b3);
    for (int t = 0; t < 8; t++) worst = fmax(worst, fmax(fabs(a[t] - b[t]), fabs(a3[t] - b3[t])));
  }
  CHECK(worst <= 1e-6, "RVQ device decode differs from codebook.h by %.3g", worst);
}

// ---------------------------------------------------------------- warp partial sums
// what codes_kernel computes, on the host: one emulated warp per row
static void emulate_codes(const e8q_qlinear *q, int batch, const float *u, float *z) {
  const int m = q->d.m, nc = q->nc, np = q->d.n_pad;
  const float inv_rs = 1.0f / q->resid_scale;
  for (int r = 0; r < m; r++) {
    const void *c2 = q->d.codebook == E8Q_CB_E8P12RVQ4B ? (const void *)((const uint16_t *)q->d.codes2 + (size_t)r * nc)
                   : q->d.codebook == E8Q_CB_E8P12RVQ3B ? (const void *)((const uint8_t *)q->d.codes2 + (size_t)r * nc)
                                                        : NULL;
    for (int b0 = 0; b0 < batch; b0 += E8Q_QDEV_BT) {
      int bt = batch - b0 < E8Q_QDEV_BT ? batch - b0 : E8Q_QDEV_BT;
      float tot[E8Q_QDEV_BT] = {0};
      for (int lane = 0; lane < 32; lane++) {
        float acc[E8Q_QDEV_BT] = {0};
        e8q_qdev_row_partial((int)q->d.codebook, e8q_e8p_packed_abs_host, &e8q_e81b_grid2_host[0][0],
                             q->d.codes + (size_t)r * nc, c2, nc, inv_rs, u, np, b0, bt, lane, 32, acc);
        for (int t = 0; t < bt; t++) tot[t] += acc[t];
      }
      for (int t = 0; t < bt; t++) z[(size_t)(b0 + t) * m + r] = tot[t];
    }
  }
}

static void test_codes() {
  const int shapes[][4] = {{13, 172, 13, 11}, {37, 104, 37, 13}, {16, 512, 1, 1}};
  for (int s = 0; s < 3; s++)
    for (int c = 0; c < 3; c++) {
      Layer L;
      make(L, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], CBS[c]);
      for (int batch = 1; batch <= 64; batch = batch < 20 ? batch + 1 : 64) {
        std::vector<float> u((size_t)batch * L.q.d.n_pad), z1((size_t)batch * L.q.d.m), z2(z1.size());
        for (auto &v : u) v = rndf();
        e8q_qlinear_codes_matmul_ref(&L.q, batch, u.data(), z1.data());
        emulate_codes(&L.q, batch, u.data(), z2.data());
        double e = rel_err(z2.data(), z1.data(), z1.size());
        CHECK(e <= 1e-5, "codes kernel (host) vs _ref: cb %d m %d n %d batch %d: %.3g", (int)CBS[c], L.q.d.m,
              L.q.d.n, batch, e);
        if (batch == 64) break;
      }
      e8q_qlinear_free(&L.q);
    }
}

// ---------------------------------------------------------------- Hadamard
// what had_kernel computes for one vector (pre/post scales applied by the caller)
static void emulate_had(int k, int K, const float *R, int transpose, float *x) {
  const int p = k / K;
  for (int h = 1; h < p; h *= 2)
    for (int t = 0; t < k / 2; t++) e8q_qdev_fwht_pair(x + (t / (p / 2)) * p, h, t % (p / 2));
  std::vector<float> out(k);
  const float sc = 1.0f / sqrtf((float)k);
  for (int i = 0; i < k; i++) out[i] = e8q_qdev_had_mix(x, R, K, p, transpose, i / p, i % p, sc);
  memcpy(x, out.data(), sizeof(float) * k);
}

static void test_hadamard() {
  const int cases[][2] = {{176, 44}, {176, 11}, {104, 13}, {512, 1}, {13, 13}, {96, 12}, {1, 1}};
  for (int c = 0; c < 7; c++)
    for (int tr = 0; tr < 2; tr++) {
      int k = cases[c][0], K = cases[c][1];
      std::vector<float> R, x(k), y;
      factor(R, K);
      for (auto &v : x) v = rndf();
      y = x;
      e8q_had_factor f;
      std::vector<double> Rd(R.begin(), R.end());
      e8q_had_factor_from(&f, K, Rd.data(), E8Q_HAD_GIVEN, "test factor");
      e8q_had h;
      e8q_had_init_factor(&h, k, &f);
      e8q_had_vec_f32(&h, x.data(), tr);
      e8q_had_free(&h);
      e8q_had_factor_free(&f);
      emulate_had(k, K, R.data(), tr, y.data());
      CHECK(rel_err(y.data(), x.data(), k) <= 1e-6, "Hadamard kernel (host) vs CPU: k %d K %d transpose %d", k, K, tr);
    }
}

// ---------------------------------------------------------------- the chained forward
static void test_forward() {
  for (int c = 0; c < 3; c++) {
    Layer L;
    make(L, 13, 172, 13, 11, CBS[c]);
    const e8q_qlinear *q = &L.q;
    const int batch = 3, m = q->d.m, n = q->d.n, np = q->d.n_pad;
    std::vector<float> x((size_t)batch * n), y_ref((size_t)batch * m), u((size_t)batch * np), z((size_t)batch * m), y(z.size());
    for (auto &v : x) v = rndf();
    e8q_qlinear_forward_ref(q, batch, x.data(), y_ref.data());
    for (int b = 0; b < batch; b++) { // had_kernel, input side
      for (int i = 0; i < np; i++) u[(size_t)b * np + i] = i < n ? q->d.SU[i] * x[(size_t)b * n + i] : 0.0f;
      emulate_had(np, q->d.K_in, q->d.R_in, 1, &u[(size_t)b * np]);
    }
    emulate_codes(q, batch, u.data(), z.data());
    for (int b = 0; b < batch; b++) { // had_kernel, output side
      for (int r = 0; r < m; r++) z[(size_t)b * m + r] *= q->d.Wscale;
      emulate_had(m, q->d.K_out, q->d.R_out, 0, &z[(size_t)b * m]);
      for (int r = 0; r < m; r++) y[(size_t)b * m + r] = q->out_scale[r] * z[(size_t)b * m + r];
    }
    double e = rel_err(y.data(), y_ref.data(), y.size());
    CHECK(e <= 1e-5, "chained kernels (host) vs e8q_qlinear_forward_ref, cb %d: %.3g", (int)CBS[c], e);
    e8q_qlinear_free(&L.q);
  }
}

// ---------------------------------------------------------------- the backward
// what codes_t_kernel + sum_chunks_kernel compute, on the host, with `chunks` row chunks
static void emulate_codes_t(const e8q_qlinear *q, int batch, const float *g, float *t, int chunks) {
  const int m = q->d.m, nc = q->nc, np = q->d.n_pad, rows = (m + chunks - 1) / chunks;
  std::vector<float> part((size_t)chunks * batch * np, 0.0f);
  for (int c = 0; c < chunks; c++)
    for (int j = 0; j < nc; j++)
      for (int b0 = 0; b0 < batch; b0 += E8Q_QDEV_BT) {
        const int bt = batch - b0 < E8Q_QDEV_BT ? batch - b0 : E8Q_QDEV_BT;
        const int r0 = c * rows, r1 = r0 + rows < m ? r0 + rows : m;
        float acc[E8Q_QDEV_BT][8] = {{0}};
        e8q_qdev_col_partial((int)q->d.codebook, e8q_e8p_packed_abs_host, &e8q_e81b_grid2_host[0][0], q->d.codes,
                             q->d.codes2, nc, 1.0f / q->resid_scale, g, m, r0, r1, j, b0, bt, acc);
        for (int tt = 0; tt < bt; tt++)
          for (int e = 0; e < 8; e++) part[((size_t)c * batch + b0 + tt) * np + 8 * j + e] = acc[tt][e];
      }
  for (size_t i = 0; i < (size_t)batch * np; i++) {
    float v = part[i];
    for (int c = 1; c < chunks; c++) v += part[(size_t)c * batch * np + i];
    t[i] = v;
  }
}

static void test_codes_t() {
  const int shapes[][4] = {{13, 172, 13, 11}, {208, 104, 13, 13}, {16, 512, 1, 1}};
  for (int s = 0; s < 3; s++)
    for (int c = 0; c < 3; c++) {
      Layer L;
      make(L, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], CBS[c]);
      const int m = L.q.d.m, np = L.q.d.n_pad;
      for (int batch : {1, 5, 9, 64}) {
        std::vector<float> g((size_t)batch * m), t1((size_t)batch * np), t2(t1.size());
        for (auto &v : g) v = rndf();
        e8q_qlinear_codes_matmul_t_ref(&L.q, batch, g.data(), t1.data());
        const int auto_chunks = e8q_qdev_t_chunks(m, L.q.nc, batch, np);
        for (int chunks : {1, auto_chunks, 7}) {
          emulate_codes_t(&L.q, batch, g.data(), t2.data(), chunks);
          double e = rel_err(t2.data(), t1.data(), t1.size());
          CHECK(e <= 1e-5, "transpose product (host) vs _t_ref: cb %d m %d n %d batch %d chunks %d: %.3g", (int)CBS[c],
                m, L.q.d.n, batch, chunks, e);
        }
      }
      e8q_qlinear_free(&L.q);
    }
  // the split itself: several chunks on a tall layer at batch 1, one when the columns fill a device
  CHECK(e8q_qdev_t_chunks(208, 13, 1, 104) == 4, "chunks of a 208-row layer: %d", e8q_qdev_t_chunks(208, 13, 1, 104));
  CHECK(e8q_qdev_t_chunks(28672, 1024, 4096, 8192) == 1, "chunks of a 70B down product: %d",
        e8q_qdev_t_chunks(28672, 1024, 4096, 8192));
}

// the launcher's backward chain on the host (fs = 1: the test layers have one piece, no fuse scale)
static void test_backward() {
  for (int c = 0; c < 3; c++) {
    Layer L;
    make(L, 208, 104, 13, 13, CBS[c]);
    const e8q_qlinear *q = &L.q;
    const int batch = 6, m = q->d.m, n = q->d.n, np = q->d.n_pad;
    std::vector<float> x((size_t)batch * n), dy((size_t)batch * m), u((size_t)batch * np), z((size_t)batch * m);
    for (auto &v : x) v = rndf();
    for (auto &v : dy) v = rndf();
    std::vector<float> dx_ref((size_t)batch * n), dSU_ref(np, 0.5f), dSV_ref(m, 0.25f);
    e8q_qlinear_backward_ref(q, batch, x.data(), dy.data(), dx_ref.data(), dSU_ref.data(), dSV_ref.data(), NULL);
    // the kept forward output zk (forward_run with zk)
    for (int b = 0; b < batch; b++) {
      for (int i = 0; i < np; i++) u[(size_t)b * np + i] = i < n ? q->d.SU[i] * x[(size_t)b * n + i] : 0.0f;
      emulate_had(np, q->d.K_in, q->d.R_in, 1, &u[(size_t)b * np]);
    }
    emulate_codes(q, batch, u.data(), z.data());
    for (int b = 0; b < batch; b++) {
      for (int r = 0; r < m; r++) z[(size_t)b * m + r] *= q->d.Wscale;
      emulate_had(m, q->d.K_out, q->d.R_out, 0, &z[(size_t)b * m]);
    }
    std::vector<float> dSU(np, 0.5f), dSV(m, 0.25f), dz((size_t)batch * m), v((size_t)batch * np), dx((size_t)batch * n);
    for (int r = 0; r < m; r++) dSV[r] += (float)(e8q_qdev_coldot(batch, dy.data(), m, z.data(), m, r) * 1.0);
    for (int b = 0; b < batch; b++) {
      for (int r = 0; r < m; r++) dz[(size_t)b * m + r] = q->out_scale[r] * dy[(size_t)b * m + r] * q->d.Wscale;
      emulate_had(m, q->d.K_out, q->d.R_out, 1, &dz[(size_t)b * m]);
    }
    emulate_codes_t(q, batch, dz.data(), v.data(), e8q_qdev_t_chunks(m, q->nc, batch, np));
    for (int b = 0; b < batch; b++) emulate_had(np, q->d.K_in, q->d.R_in, 0, &v[(size_t)b * np]);
    for (int k = 0; k < n; k++) dSU[k] += (float)e8q_qdev_coldot(batch, x.data(), n, v.data(), np, k);
    for (int b = 0; b < batch; b++)
      for (int i = 0; i < n; i++) dx[(size_t)b * n + i] = q->d.SU[i] * v[(size_t)b * np + i];
    CHECK(rel_err(dx.data(), dx_ref.data(), dx.size()) <= 1e-5, "backward chain (host) dx vs _ref, cb %d: %.3g",
          (int)CBS[c], rel_err(dx.data(), dx_ref.data(), dx.size()));
    CHECK(rel_err(dSU.data(), dSU_ref.data(), np) <= 1e-5, "backward chain (host) dSU vs _ref, cb %d: %.3g", (int)CBS[c],
          rel_err(dSU.data(), dSU_ref.data(), np));
    CHECK(rel_err(dSV.data(), dSV_ref.data(), m) <= 1e-5, "backward chain (host) dSV vs _ref, cb %d: %.3g", (int)CBS[c],
          rel_err(dSV.data(), dSV_ref.data(), m));
    e8q_qlinear_free(&L.q);
  }
}

int main() {
  const char *env = getenv("E8Q_TEST_SEED");
  g_seed = env ? strtoull(env, NULL, 0) : ((unsigned long long)time(NULL) << 20) ^ (unsigned long long)getpid();
  check_rs = g_seed * 0x9E3779B97F4A7C15ull + 1;
  printf("test_qlinear_cuda_host: seed %llu (E8Q_TEST_SEED to repeat)\n", g_seed);
  test_decode();
  test_codes();
  test_hadamard();
  test_forward();
  test_codes_t();
  test_backward();
  return check_report_local("test_qlinear_cuda_host");
}
