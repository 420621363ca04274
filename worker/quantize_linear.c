/* worker/quantize_linear.c: one linear group across all ranks (worker/quantize_linear.h).
 *
 * The LDLQ here (ldlq_rows) is the readable double-precision form of DESIGN §3 "LDLQ"; when
 * the kernels' LDLQ lands it replaces it behind the same call. */
#include "worker/quantize_linear.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "worker/cholesky.h"
#include "worker/exact_sum.h"

/* ---------------------------------------------------------------- methods */
e8q_method e8q_method_parse(const char *s) {
  if (!strcmp(s, "e8p")) return E8Q_METHOD_E8P;
  if (!strcmp(s, "nearest")) return E8Q_METHOD_NEAREST;
  if (!strcmp(s, "noe8") || !strcmp(s, "rtn"))
    E8Q_FATAL("--method %s: the scalar-grid ablations are not available yet (their codes do not fit the E8P "
              "artifact layout); use e8p or nearest",
              s);
  E8Q_FATAL("--method '%s': use e8p (default), nearest, noe8 or rtn", s);
}

const char *e8q_method_name(e8q_method m) {
  static const char *const n[] = {"e8p", "nearest", "noe8", "rtn"};
  return m >= 0 && m <= E8Q_METHOD_RTN ? n[m] : "?";
}

/* DESIGN §3: rho 0.9 for E8P (the paper's runs), 0.98 for RVQ3, 1.03 for RVQ4 */
static double default_rho(int bits) { return bits == 2 ? 0.9 : bits == 3 ? 0.98 : 1.03; }

/* ---------------------------------------------------------------- LDLQ (rows of one chunk)
 * Wr [rows, n] (scaled), L [n, n] unit block-lower (8x8 blocks), Hr [n, n]; writes codes and
 * What [rows, n]. */
static void ldlq_rows(e8q_codebook_id cb, e8q_method method, int tune, int rows, int n, const double *Wr,
                      const double *L, const double *Hr, uint16_t *c1, uint16_t *c2, double *What) {
  int nb = n / 8, nc = n / 8;
  double *E = e8q_calloc((size_t)rows * n, sizeof(double), "LDLQ residual"); /* Wr - What on done blocks */
  double *X = e8q_malloc(sizeof(double) * (size_t)rows * 8, "LDLQ block");
  memset(What, 0, sizeof(double) * (size_t)rows * n);
  for (int k = nb - 1; k >= 0; k--) {
    int c = 8 * k, rest = n - c - 8;
    for (int r = 0; r < rows; r++) memcpy(X + r * 8, Wr + (size_t)r * n + c, sizeof(double) * 8);
    if (method == E8Q_METHOD_E8P && rest > 0) /* X += E[:, >k] L[>k, k] */
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, 8, rest, 1.0, E + c + 8, n, L + (size_t)(c + 8) * n + c,
                  n, 1.0, X, 8);
    for (int r = 0; r < rows; r++) {
      uint16_t a = 0, b = 0;
      e8q_cb_encode(cb, X + r * 8, &a, &b, What + (size_t)r * n + c);
      c1[(size_t)r * nc + k] = a;
      if (c2) c2[(size_t)r * nc + k] = b;
      for (int t = 0; t < 8; t++) E[(size_t)r * n + c + t] = Wr[(size_t)r * n + c + t] - What[(size_t)r * n + c + t];
    }
  }
  /* block coordinate descent: X = What[:,k] + (Wr - What) Hr[:,k] Hr[k,k]^-1, with
   * G = blockdiag(Hr)^-1 Hr precomputed ([n, n]; rows 8k..8k+7 = Hkk^-1 Hr[k, :]) */
  if (method == E8Q_METHOD_E8P && tune > 0) {
    double *G = e8q_malloc(sizeof(double) * (size_t)n * n, "tune feedback matrix");
    double *Hkk = e8q_malloc(sizeof(double) * 64, "Hkk");
    double *P = e8q_malloc(sizeof(double) * (size_t)rows * 8, "feedback");
    memcpy(G, Hr, sizeof(double) * (size_t)n * n);
    for (int k = 0; k < nb; k++) {
      for (int i = 0; i < 8; i++) memcpy(Hkk + i * 8, Hr + (size_t)(8 * k + i) * n + 8 * k, sizeof(double) * 8);
      int info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'L', 8, n, Hkk, 8, G + (size_t)8 * k * n, n);
      E8Q_CHECK(info == 0, "internal: a diagonal 8x8 block of the prepared Hessian is singular (info %d)", info);
    }
    for (int it = 0; it < tune; it++)
      for (int k = nb - 1; k >= 0; k--) {
        int c = 8 * k;
        /* P = E Gᵀ[:, k] = E (rows 8k.. of G)ᵀ */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, 8, n, 1.0, E, n, G + (size_t)c * n, n, 0.0, P, 8);
        for (int r = 0; r < rows; r++) {
          for (int t = 0; t < 8; t++) X[r * 8 + t] = What[(size_t)r * n + c + t] + P[r * 8 + t];
          uint16_t a = 0, b = 0;
          e8q_cb_encode(cb, X + r * 8, &a, &b, What + (size_t)r * n + c);
          c1[(size_t)r * nc + k] = a;
          if (c2) c2[(size_t)r * nc + k] = b;
          for (int t = 0; t < 8; t++) E[(size_t)r * n + c + t] = Wr[(size_t)r * n + c + t] - What[(size_t)r * n + c + t];
        }
      }
    free(G);
    free(Hkk);
    free(P);
  }
  free(E);
  free(X);
}

/* ---------------------------------------------------------------- block LDL
 * C [n, n] lower Cholesky factor (H = C Cᵀ) -> L unit block-lower (8x8 blocks), in place:
 * L[j, k] = C[j, k] C[k, k]^-1 for j > k, identity diagonal blocks, zero above. */
static void block_ldl_from_cholesky(int n, double *C) {
  int nb = n / 8;
  for (int k = 0; k < nb; k++) {
    int c = 8 * k, below = n - c - 8;
    if (below > 0)
      cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, below, 8, 1.0, C + (size_t)c * n + c, n,
                  C + (size_t)(c + 8) * n + c, n);
  }
  for (int k = 0; k < nb; k++)
    for (int i = 0; i < 8; i++)
      for (int j = 0; j < 8; j++) C[(size_t)(8 * k + i) * n + 8 * k + j] = i == j ? 1.0 : 0.0;
}

/* ---------------------------------------------------------------- one group */
void e8q_quantize_group(const e8q_qlin_opts *o, const e8q_group_plan *g, int layer, int group, const float *W,
                        const double *H, long tokens, e8q_qlin_result *res) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int m = g->m, n = g->n, np = g->n_pad, nc = np / 8;
  E8Q_CHECK(tokens > 0, "layer %d %s: the Hessian holds no tokens", layer, g->name);
  memset(res, 0, sizeof *res);
  res->m = m, res->n = n, res->n_pad = np, res->nc = nc, res->n_pieces = g->n_pieces;
  e8q_codebook_id cb = e8q_cb_from_bits(o->bits);
  double rho = o->rho > 0 ? o->rho : default_rho(o->bits);

  /* fuse: each piece over its RMS; pad to n_pad */
  double *Wr = e8q_calloc((size_t)m * np, sizeof(double), "rotated weight");
  int row = 0;
  for (int p = 0; p < g->n_pieces; p++) {
    double ss = 0;
    for (int r = row; r < row + g->piece_rows[p]; r++)
      for (int j = 0; j < n; j++) ss += (double)W[(size_t)r * n + j] * W[(size_t)r * n + j];
    double rms = sqrt(ss / ((double)g->piece_rows[p] * n));
    if (!(rms > 0)) rms = 1; /* an all-zero piece stays zero */
    res->fuse_scales[p] = (float)rms;
    for (int r = row; r < row + g->piece_rows[p]; r++)
      for (int j = 0; j < n; j++) Wr[(size_t)r * np + j] = W[(size_t)r * n + j] / (double)res->fuse_scales[p];
    row += g->piece_rows[p];
  }
  /* prepare H: / mean(diag H) over the real columns, pad, damp */
  double *Hr = e8q_calloc((size_t)np * np, sizeof(double), "prepared Hessian");
  for (size_t i = 0; i < (size_t)n * n; i++)
    E8Q_CHECK(isfinite(H[i]), "layer %d %s: the Hessian has a non-finite entry (%g at [%zu, %zu]): the calibration "
              "activations overflowed or the checkpoint holds NaN/Inf", layer, g->name, H[i], i / (size_t)n, i % (size_t)n);
  double md = 0;
  for (int i = 0; i < n; i++) md += H[(size_t)i * n + i];
  md /= n;
  E8Q_CHECK(md > 0 && isfinite(md), "layer %d %s: the Hessian's diagonal mean is %g (no signal in the calibration "
            "activations?)", layer, g->name, md);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) Hr[(size_t)i * np + j] = H[(size_t)i * n + j] / md;
  /* RHT */
  res->SU = e8q_malloc(sizeof(float) * (size_t)np, "SU");
  res->SV = e8q_malloc(sizeof(float) * (size_t)m, "SV");
  uint64_t lin_seed = o->seed * 0x9E3779B97F4A7C15ull + (uint64_t)layer * E8Q_N_GROUPS + (uint64_t)group;
  e8q_rng_fill_signs(lin_seed, E8Q_RNG_STREAM_SU, 0, (size_t)np, res->SU);
  e8q_rng_fill_signs(lin_seed, E8Q_RNG_STREAM_SV, 0, (size_t)m, res->SV);
  double *SU = e8q_malloc(sizeof(double) * (size_t)np, "SU f64"), *SV = e8q_malloc(sizeof(double) * (size_t)m, "SV f64");
  for (int i = 0; i < np; i++) SU[i] = res->SU[i];
  for (int i = 0; i < m; i++) SV[i] = res->SV[i];
  e8q_had hn, hm;
  e8q_had_init(&hn, np, E8Q_HAD_SEED);
  e8q_had_init(&hm, m, E8Q_HAD_SEED);
  E8Q_CHECK(hn.f.K == g->K_n && hm.f.K == g->K_m, "internal: Hadamard factors %d/%d differ from the plan's %d/%d",
            hn.f.K, hm.f.K, g->K_n, g->K_m);
  e8q_rht_weight(&hm, &hn, SU, SV, Wr);
  e8q_rht_hessian(&hn, SU, Hr);
  double ss = 0;
  for (size_t i = 0; i < (size_t)m * np; i++) ss += Wr[i] * Wr[i];
  double wrms = sqrt(ss / ((double)m * np));
  res->Wscale = (float)(wrms > 0 ? wrms / rho : 1);
  for (size_t i = 0; i < (size_t)m * np; i++) Wr[i] /= (double)res->Wscale;

  /* factor Hr + damp I, retrying with ten times the damping */
  double *C = e8q_malloc(sizeof(double) * (size_t)np * np, "Cholesky factor");
  double damp = 0.01;
  for (;;) {
    memcpy(C, Hr, sizeof(double) * (size_t)np * np);
    for (int i = 0; i < np; i++) C[(size_t)i * np + i] += damp;
    int info = o->scalapack ? e8q_cholesky_scalapack(np, C, 0) : e8q_cholesky_lapack(np, C);
    if (info == 0) break;
    E8Q_CHECK(res->retries < 4,
              "layer %d %s: the Hessian is not positive definite even with damping %g (leading minor %d); the "
              "calibration data may be degenerate: use more or other --calib data",
              layer, g->name, damp, info);
    res->retries++;
    damp *= 10;
  }
  res->damp = damp;
  for (int i = 0; i < np; i++) Hr[(size_t)i * np + i] += damp;
  block_ldl_from_cholesky(np, C);

  /* LDLQ on this rank's row chunks */
  int n_chunks = (m + E8Q_QLIN_ROW_CHUNK - 1) / E8Q_QLIN_ROW_CHUNK;
  int c0 = (int)((int64_t)n_chunks * rank / size), c1 = (int)((int64_t)n_chunks * (rank + 1) / size);
  int r0 = c0 * E8Q_QLIN_ROW_CHUNK, r1 = c1 * E8Q_QLIN_ROW_CHUNK < m ? c1 * E8Q_QLIN_ROW_CHUNK : m;
  int my_rows = r1 > r0 ? r1 - r0 : 0;
  uint16_t *codes = e8q_calloc((size_t)(my_rows ? my_rows : 1) * nc, sizeof(uint16_t), "codes");
  uint16_t *codes2 = o->bits > 2 ? e8q_calloc((size_t)(my_rows ? my_rows : 1) * nc, sizeof(uint16_t), "codes2") : NULL;
  double *What = e8q_malloc(sizeof(double) * (size_t)E8Q_QLIN_ROW_CHUNK * np, "quantized rows");
  double *HE = e8q_malloc(sizeof(double) * (size_t)E8Q_QLIN_ROW_CHUNK * np, "H E");
  double *chunk_loss = e8q_calloc(2, sizeof(double), "chunk loss");
  e8q_exact_sum *loss = e8q_exact_sum_new(2);
  for (int c = c0; c < c1; c++) {
    int a = c * E8Q_QLIN_ROW_CHUNK, b = a + E8Q_QLIN_ROW_CHUNK < m ? a + E8Q_QLIN_ROW_CHUNK : m, rows = b - a;
    ldlq_rows(cb, o->method, o->tune_iters, rows, np, Wr + (size_t)a * np, C, Hr, codes + (size_t)(a - r0) * nc,
              codes2 ? codes2 + (size_t)(a - r0) * nc : NULL, What);
    /* proxy loss terms of the chunk: sum_r e_r Hr e_rᵀ and sum_r w_r Hr w_rᵀ */
    for (int r = 0; r < rows; r++)
      for (int j = 0; j < np; j++) What[(size_t)r * np + j] = Wr[(size_t)(a + r) * np + j] - What[(size_t)r * np + j];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, np, np, 1.0, What, np, Hr, np, 0.0, HE, np);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)rows * np; i++) num += HE[i] * What[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, np, np, 1.0, Wr + (size_t)a * np, np, Hr, np, 0.0, HE, np);
    for (size_t i = 0; i < (size_t)rows * np; i++) den += HE[i] * Wr[(size_t)a * np + i];
    chunk_loss[0] = num;
    chunk_loss[1] = den;
    e8q_exact_sum_add(loss, chunk_loss);
  }
  double tot[2];
  e8q_exact_sum_allreduce(loss, tot);
  res->proxy_loss = tot[1] > 0 ? tot[0] / tot[1] : 0;
  e8q_exact_sum_free(loss);

  /* gather codes (row order = rank order) to rank 0 */
  int *counts = e8q_malloc(sizeof(int) * (size_t)size, "counts"), *displ = e8q_malloc(sizeof(int) * (size_t)size, "displ");
  for (int r = 0; r < size; r++) {
    int q0 = (int)((int64_t)n_chunks * r / size) * E8Q_QLIN_ROW_CHUNK, q1 = (int)((int64_t)n_chunks * (r + 1) / size) * E8Q_QLIN_ROW_CHUNK;
    if (q1 > m) q1 = m;
    if (q0 > m) q0 = m;
    counts[r] = (q1 - q0) * nc;
    displ[r] = q0 * nc;
  }
  if (rank == 0) {
    res->codes = e8q_malloc(sizeof(uint16_t) * (size_t)m * nc, "codes");
    if (o->bits > 2) res->codes2 = e8q_malloc(sizeof(uint16_t) * (size_t)m * nc, "codes2");
  }
  E8Q_CHECK_MPI(MPI_Gatherv(codes, my_rows * nc, MPI_UINT16_T, res->codes, counts, displ, MPI_UINT16_T, 0, MPI_COMM_WORLD));
  if (o->bits > 2)
    E8Q_CHECK_MPI(MPI_Gatherv(codes2, my_rows * nc, MPI_UINT16_T, res->codes2, counts, displ, MPI_UINT16_T, 0, MPI_COMM_WORLD));
  if (rank == 0 && o->bits == 3) { /* 3 bit: the second stage is a u8 index */
    uint8_t *u8 = e8q_malloc((size_t)m * nc, "codes2 u8");
    const uint16_t *c16 = res->codes2;
    for (size_t i = 0; i < (size_t)m * nc; i++) u8[i] = (uint8_t)c16[i];
    free(res->codes2);
    res->codes2 = u8;
  }
  free(counts);
  free(displ);
  free(chunk_loss);
  free(What);
  free(HE);
  free(codes);
  free(codes2);
  free(C);
  free(SU);
  free(SV);
  free(Wr);
  free(Hr);
  e8q_had_free(&hn);
  e8q_had_free(&hm);
}

void e8q_qlin_result_free(e8q_qlin_result *r) {
  free(r->codes);
  free(r->codes2);
  free(r->SU);
  free(r->SV);
  memset(r, 0, sizeof *r);
}
