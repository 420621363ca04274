/* kernels/qlinear_grad.c: the quantized linear's backward (see qlinear_grad.h): the scalar
 * transpose product, the dispatch to the AVX-512 / AVX2 paths, and the backward chain. */
#include "kernels/qlinear_grad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear_avx512.h"

/* ---------------------------------------------------------------- decoding one code */
/* Ŵr[r, 8j..8j+7] in f32 with codebook.h's decoders (as qlinear.c decodes it) */
static inline void decode_f32(const e8q_qlinear *q, size_t idx, float w[8]) {
  e8q_e8p_decode(q->d.codes[idx], w);
  if (q->d.codebook == E8Q_CB_E8P12) return;
  float b[8];
  if (q->d.codebook == E8Q_CB_E8P12RVQ4B) e8q_e8p_decode(((const uint16_t *)q->d.codes2)[idx], b);
  else e8q_e81b_decode(((const uint8_t *)q->d.codes2)[idx], b);
  for (int t = 0; t < 8; t++) w[t] = w[t] + b[t] / q->resid_scale;
}

/* ---------------------------------------------------------------- transpose product: _ref */
void e8q_qlinear_codes_matmul_t_ref(const e8q_qlinear *q, int batch, const float *g, float *t) {
  E8Q_CHECK(batch >= 0, "e8q_qlinear_codes_matmul_t_ref: batch %d < 0", batch);
  const int m = q->d.m, nc = q->nc, np = q->d.n_pad;
#pragma omp parallel for schedule(static)
  for (int j = 0; j < nc; j++) {
    for (int b = 0; b < batch; b++)
      for (int e = 0; e < 8; e++) t[(size_t)b * np + 8 * j + e] = 0;
    for (int r = 0; r < m; r++) {
      float w[8];
      decode_f32(q, (size_t)r * nc + j, w);
      for (int b = 0; b < batch; b++) {
        const float gv = g[(size_t)b * m + r];
        float *tb = t + (size_t)b * np + 8 * j;
        for (int e = 0; e < 8; e++) tb[e] += w[e] * gv;
      }
    }
  }
}

/* ---------------------------------------------------------------- dispatch */
/* the forward's SIMD level (e8q_qlinear_simd_level: E8Q_NO_AVX512 / E8Q_NO_AVX2 act on both) */
const char *e8q_qlinear_grad_path(void) {
  switch (e8q_qlinear_simd_level()) {
    case 2: return "AVX-512 (f32)";
    case 1: return "AVX2";
    default: return "scalar _ref";
  }
}

void e8q_qlinear_codes_matmul_t(const e8q_qlinear *q, int batch, const float *g, float *t) {
#if defined(__x86_64__) || defined(__i386__)
  switch (e8q_qlinear_simd_level()) {
    case 2: e8q_qlinear_codes_matmul_t_avx512(q, batch, g, t); return;
    case 1: e8q_qlinear_codes_matmul_t_avx2(q, batch, g, t); return;
    default: break;
  }
#endif
  e8q_qlinear_codes_matmul_t_ref(q, batch, g, t);
}

/* ---------------------------------------------------------------- the backward */
typedef void (*fwd_fn)(const e8q_qlinear *, int, const float *, float *);
typedef void (*mmt_fn)(const e8q_qlinear *, int, const float *, float *);

/* fs of each row's piece and the piece index [m] (the walk of e8q_qlinear_init), checking that
 * the cached output scales still equal fs · SV */
static void row_scales(const e8q_qlinear *q, float *fs_row, int *piece_of, const char *who) {
  const int m = q->d.m;
  int piece = 0, left = q->d.piece_rows ? q->d.piece_rows[0] : m;
  for (int r = 0; r < m; r++) {
    while (left == 0) left = q->d.piece_rows[++piece];
    const float fs = q->d.fuse_scales ? q->d.fuse_scales[piece] : 1.0f;
    E8Q_CHECK(q->out_scale[r] == fs * q->d.SV[r] || (isnan(q->out_scale[r]) && isnan(fs * q->d.SV[r])),
              "%s: output scale of row %d is %g but fs * SV = %g * %g: SV or the fuse scales changed "
              "without e8q_qlinear_set_scales", who, r, (double)q->out_scale[r], (double)fs, (double)q->d.SV[r]);
    fs_row[r] = fs;
    piece_of[r] = piece;
    left--;
  }
}

static void backward_with(const e8q_qlinear *q, int batch, const float *x, const float *zk, const float *dy, float *dx,
                          float *dSU, float *dSV, float *dfs, fwd_fn fwd, mmt_fn mmt, const char *who) {
  const int m = q->d.m, n = q->d.n, np = q->d.n_pad;
  E8Q_CHECK(batch >= 0, "%s: batch %d < 0", who, batch);
  if (batch == 0) return;
  E8Q_CHECK(dy && (x || !dSU) && (x || !(dSV || dfs)), "%s: dy [%d, %d] and, for dSU/dSV/dfs, x [%d, %d] are required",
            who, batch, m, batch, n);
  float *fs_row = e8q_malloc(sizeof(float) * (size_t)m, "qlinear grad row fuse scales");
  int *piece_of = e8q_malloc(sizeof(int) * (size_t)m, "qlinear grad row pieces");
  row_scales(q, fs_row, piece_of, who);

  /* ---- dSV, dfs: need M_m z, the forward's (zk) or recomputed with unit output scales */
  if (dSV || dfs) {
    float *ones = NULL, *zbuf = NULL;
    const float *zm = zk;
    if (!zm) {
      ones = e8q_alloc_aligned(sizeof(float) * (size_t)m, "qlinear grad unit scales");
      zbuf = e8q_alloc_aligned(sizeof(float) * (size_t)batch * m, "qlinear grad M_m z");
      for (int r = 0; r < m; r++) ones[r] = 1.0f;
      e8q_qlinear qq = *q; /* shallow: same codes, transforms, VNNI copy; only the scales differ */
      qq.out_scale = ones;
      fwd(&qq, batch, x, zbuf);
      zm = zbuf;
    }
    double *fsum = dfs ? e8q_calloc((size_t)q->d.n_pieces, sizeof(double), "qlinear grad dfs") : NULL;
    for (int r = 0; r < m; r++) {
      double a = 0; /* dL/d(os[r]) */
      for (int b = 0; b < batch; b++) a += (double)dy[(size_t)b * m + r] * (double)zm[(size_t)b * m + r];
      if (dSV) dSV[r] += (float)(a * (double)fs_row[r]);
      if (fsum) fsum[piece_of[r]] += a * (double)q->d.SV[r];
    }
    if (fsum)
      for (int p = 0; p < q->d.n_pieces; p++) dfs[p] += (float)fsum[p];
    free(fsum);
    free(ones);
    free(zbuf);
  }

  /* ---- dx, dSU: dz = Wscale · M_mᵀ (os ⊙ dy), v = M_n_pad Ŵrᵀ dz */
  if (dx || dSU) {
    float *dz = e8q_alloc_aligned(sizeof(float) * (size_t)batch * m, "qlinear grad dz");
    float *v = e8q_alloc_aligned(sizeof(float) * (size_t)batch * np, "qlinear grad v");
    for (int b = 0; b < batch; b++)
      for (int r = 0; r < m; r++) dz[(size_t)b * m + r] = q->out_scale[r] * dy[(size_t)b * m + r];
    e8q_had_rows_f32(&q->h_out, dz, batch, m, 1); /* M_mᵀ */
    for (size_t i = 0; i < (size_t)batch * m; i++) dz[i] *= q->d.Wscale;
    mmt(q, batch, dz, v);                        /* Ŵrᵀ */
    e8q_had_rows_f32(&q->h_in, v, batch, np, 0); /* M_n_pad */
    if (dx)
      for (int b = 0; b < batch; b++)
        for (int i = 0; i < n; i++) dx[(size_t)b * n + i] = q->d.SU[i] * v[(size_t)b * np + i];
    if (dSU)
#pragma omp parallel for schedule(static)
      for (int k = 0; k < n; k++) {
        double s = 0;
        for (int b = 0; b < batch; b++) s += (double)x[(size_t)b * n + k] * (double)v[(size_t)b * np + k];
        dSU[k] += (float)s;
      }
    free(dz);
    free(v);
  }
  free(fs_row);
  free(piece_of);
}

void e8q_qlinear_backward(const e8q_qlinear *q, int batch, const float *x, const float *dy, float *dx, float *dSU,
                          float *dSV, float *dfs) {
  backward_with(q, batch, x, NULL, dy, dx, dSU, dSV, dfs, e8q_qlinear_forward, e8q_qlinear_codes_matmul_t,
                "e8q_qlinear_backward");
}

void e8q_qlinear_backward_z(const e8q_qlinear *q, int batch, const float *x, const float *z, const float *dy,
                            float *dx, float *dSU, float *dSV, float *dfs) {
  backward_with(q, batch, x, z, dy, dx, dSU, dSV, dfs, e8q_qlinear_forward, e8q_qlinear_codes_matmul_t,
                "e8q_qlinear_backward_z");
}

void e8q_qlinear_backward_ref(const e8q_qlinear *q, int batch, const float *x, const float *dy, float *dx,
                              float *dSU, float *dSV, float *dfs) {
  backward_with(q, batch, x, NULL, dy, dx, dSU, dSV, dfs, e8q_qlinear_forward_ref, e8q_qlinear_codes_matmul_t_ref,
                "e8q_qlinear_backward_ref");
}
