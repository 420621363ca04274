/* worker/quantize_linear.c: one linear group across all ranks (worker/quantize_linear.h). */
#include "worker/quantize_linear.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/rng.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "worker/cholesky.h"

/* ---------------------------------------------------------------- methods */
e8q_method e8q_method_parse(const char *s) {
  if (!strcmp(s, "e8p") || !strcmp(s, "ldlq")) return E8Q_METHOD_LDLQ;
  if (!strcmp(s, "nearest")) return E8Q_METHOD_NEAREST;
  if (!strcmp(s, "noe8")) return E8Q_METHOD_NOE8;
  if (!strcmp(s, "rtn")) return E8Q_METHOD_RTN;
  E8Q_FATAL("--method '%s': use e8p (default), nearest, noe8 or rtn", s);
}

const char *e8q_method_cli_name(e8q_method m) { return m == E8Q_METHOD_LDLQ ? "e8p" : e8q_method_name(m); }

/* DESIGN §3: rho 0.9 for E8P (the paper's runs), 0.98 for RVQ3, 1.03 for RVQ4 */
static double default_rho(int bits) { return bits == 2 ? E8Q_RHO_E8P : bits == 3 ? E8Q_RHO_RVQ3 : E8Q_RHO_RVQ4; }

/* the per-linear seed (RHT signs, ablation RNG): the run's --seed mixed with the layer and group */
static uint64_t linear_seed(uint64_t seed, int layer, int group) {
  return seed * 0x9E3779B97F4A7C15ull + (uint64_t)layer * E8Q_N_GROUPS + (uint64_t)group;
}

/* RMS of rows [r0, r0+rows) of W [m, n] (a fused piece, DESIGN §3 "Fused groups"), as the float
 * the artifact stores; 1 for an all-zero piece, or one whose RMS underflows in float (a 0 fuse
 * scale would divide by zero) */
static double piece_rms(const float *W, int r0, int rows, int n) {
  double ss = 0;
  for (int r = r0; r < r0 + rows; r++)
    for (int j = 0; j < n; j++) ss += (double)W[(size_t)r * n + j] * W[(size_t)r * n + j];
  float rms = (float)sqrt(ss / ((double)rows * n));
  return rms > 0 ? (double)rms : 1;
}

/* ---------------------------------------------------------------- ScaLAPACK factorisation
 * The Cholesky e8q_ldl_build_chol (kernels/ldlq.h) uses on the ScaLAPACK path: across all ranks,
 * block size chosen from n and the grid. Collective. */
static int cholesky_scalapack(int n, double *A) { return e8q_cholesky_scalapack(n, A, 0); }

/* ---------------------------------------------------------------- dense ablations
 * noe8 / rtn through e8q_quantize_linear on rank 0 (the others wait at the broadcast): each
 * piece over its RMS as for the E8P methods, the quantized weight scaled back. */
static void dense_ablation(const e8q_qlin_opts *o, const e8q_group_plan *g, int layer, int group, const float *W,
                           const double *H, e8q_qlin_result *res) {
  e8q_comm *c = e8q_comm_get();
  int rank = e8q_comm_rank(c);
  int m = g->m, n = g->n;
  double info[2] = {0, 0}; /* proxy loss, attempts */
  if (rank == 0) {
    float *Wf = e8q_malloc(sizeof(float) * (size_t)m * n, "fused weight");
    int row = 0;
    for (int p = 0; p < g->n_pieces; p++) {
      double rms = piece_rms(W, row, g->piece_rows[p], n);
      res->fuse_scales[p] = (float)rms;
      for (int r = row; r < row + g->piece_rows[p]; r++)
        for (int j = 0; j < n; j++) Wf[(size_t)r * n + j] = (float)(W[(size_t)r * n + j] / rms);
      row += g->piece_rows[p];
    }
    e8q_quant_opts qo = {.bits = o->bits, .rho = 0, .tune_iters = o->tune_iters, .method = o->method,
                         .seed = linear_seed(o->seed, layer, group),
                         .sigma_reg = 0, .prec = E8Q_PREC_F64};
    e8q_quant_result qr;
    e8q_quantize_linear(Wf, m, n, H, &qo, &qr);
    E8Q_CHECK(qr.status.ok && qr.What, "layer %d %s: %s", layer, g->name, qr.status.message);
    res->dense = e8q_malloc(sizeof(float) * (size_t)m * n, "dense ablation weight");
    row = 0;
    for (int p = 0; p < g->n_pieces; p++) {
      for (int r = row; r < row + g->piece_rows[p]; r++)
        for (int j = 0; j < n; j++) res->dense[(size_t)r * n + j] = qr.What[(size_t)r * n + j] * res->fuse_scales[p];
      row += g->piece_rows[p];
    }
    info[0] = qr.proxy;
    info[1] = qr.status.attempts;
    res->damp = qr.status.sigma_reg;
    snprintf(res->ldl_message, sizeof res->ldl_message, "%s", qr.status.message);
    e8q_quant_result_free(&qr);
    free(Wf);
  }
  e8q_comm_bcast(c, E8Q_MEM_HOST, info, sizeof info, 0);
  res->proxy_loss = info[0];
  res->retries = info[1] > 1 ? (int)info[1] - 1 : 0;
  res->Wscale = 1;
}

/* M_n with rank 0's factor on every rank. Sylvester and Paley factors are exact integer
 * constructions, but a random orthogonal factor comes from LAPACK's QR, whose last bits depend
 * on the BLAS kernels (OpenBLAS picks them per CPU model): on a cluster of mixed nodes ranks
 * could otherwise rotate with different matrices. gather.c builds the artifact's factors on
 * rank 0, so they are the ones recorded. Collective. */
static void had_init_shared(e8q_had *h, int64_t n) {
  e8q_comm *c = e8q_comm_get();
  e8q_had_init(h, n, E8Q_HAD_SEED);
  if (e8q_comm_size(c) == 1 || h->f.K == 1 || h->f.kind != E8Q_HAD_RANDOM) return;
  size_t kk = (size_t)h->f.K * (size_t)h->f.K;
  e8q_comm_bcast(c, E8Q_MEM_HOST, h->f.R, kk * sizeof(double), 0);
  for (size_t i = 0; i < kk; i++) h->f.Rf[i] = (float)h->f.R[i];
}


/* ---------------------------------------------------------------- one group */
void e8q_quantize_group(const e8q_qlin_opts *o, const e8q_group_plan *g, int layer, int group, const float *W,
                        const double *H, long tokens, e8q_qlin_result *res) {
  e8q_comm *c = e8q_comm_get();
  const int rank = e8q_comm_rank(c), size = e8q_comm_size(c);
  int m = g->m, n = g->n, np = g->n_pad, nc = np / 8;
  E8Q_CHECK(tokens > 0, "layer %d %s: the Hessian holds no tokens", layer, g->name);
  for (size_t i = 0; i < (size_t)n * n; i++)
    E8Q_CHECK(isfinite(H[i]), "layer %d %s: the Hessian has a non-finite entry (%g at [%zu, %zu]): the calibration "
              "activations overflowed or the checkpoint holds NaN/Inf", layer, g->name, H[i], i / (size_t)n, i % (size_t)n);
  memset(res, 0, sizeof *res);
  res->m = m, res->n = n, res->n_pad = np, res->nc = nc, res->n_pieces = g->n_pieces;
  e8q_codebook_id cb = e8q_cb_from_bits(o->bits);
  double rho = o->rho > 0 ? o->rho : default_rho(o->bits);
  if (e8q_method_dense(o->method)) {
    dense_ablation(o, g, layer, group, W, H, res);
    return;
  }

  /* fuse: each piece over its RMS; pad to n_pad */
  double *Wr = e8q_calloc((size_t)m * np, sizeof(double), "rotated weight");
  int row = 0;
  for (int p = 0; p < g->n_pieces; p++) {
    res->fuse_scales[p] = (float)piece_rms(W, row, g->piece_rows[p], n);
    for (int r = row; r < row + g->piece_rows[p]; r++)
      for (int j = 0; j < n; j++) Wr[(size_t)r * np + j] = W[(size_t)r * n + j] / (double)res->fuse_scales[p];
    row += g->piece_rows[p];
  }
  double *Hr = e8q_calloc((size_t)np * np, sizeof(double), "rotated Hessian");
  for (int i = 0; i < n; i++) memcpy(Hr + (size_t)i * np, H + (size_t)i * n, sizeof(double) * (size_t)n);

  /* RHT */
  res->SU = e8q_malloc(sizeof(float) * (size_t)np, "SU");
  res->SV = e8q_malloc(sizeof(float) * (size_t)m, "SV");
  uint64_t lin_seed = linear_seed(o->seed, layer, group);
  e8q_rng_fill_signs(lin_seed, E8Q_RNG_STREAM_SU, 0, (size_t)np, res->SU);
  e8q_rng_fill_signs(lin_seed, E8Q_RNG_STREAM_SV, 0, (size_t)m, res->SV);
  double *SU = e8q_malloc(sizeof(double) * (size_t)np, "SU f64"), *SV = e8q_malloc(sizeof(double) * (size_t)m, "SV f64");
  for (int i = 0; i < np; i++) SU[i] = res->SU[i];
  for (int i = 0; i < m; i++) SV[i] = res->SV[i];
  e8q_had hn, hm;
  had_init_shared(&hn, np);
  had_init_shared(&hm, m);
  E8Q_CHECK(hn.f.K == g->K_n && hm.f.K == g->K_m, "internal: Hadamard factors %d/%d differ from the plan's %d/%d",
            hn.f.K, hm.f.K, g->K_n, g->K_m);
  e8q_rht_weight(&hm, &hn, SU, SV, Wr);
  e8q_rht_hessian(&hn, SU, Hr);
  double ss = 0;
  for (size_t i = 0; i < (size_t)m * np; i++) ss += Wr[i] * Wr[i];
  double wrms = sqrt(ss / ((double)m * np));
  /* an all-zero group (or one whose scale underflows in float) gets Wscale 0: no codebook has a
   * zero point, so only a zero scale decodes it to exactly 0 (as kernels/ldlq.c does) */
  res->Wscale = (float)(wrms / rho);
  if (res->Wscale > 0)
    for (size_t i = 0; i < (size_t)m * np; i++) Wr[i] /= (double)res->Wscale;
  else
    memset(Wr, 0, sizeof(double) * (size_t)m * np);

  /* factor (prepared H, block LDL) */
  e8q_ldl f;
  e8q_ldl_status st;
  int ok = e8q_ldl_build_chol(&f, Hr, np, E8Q_SIGMA_REG, E8Q_PREC_F64, o->scalapack ? cholesky_scalapack : NULL, &st);
  E8Q_CHECK(ok, "layer %d %s: %s%s", layer, g->name, o->scalapack ? "ScaLAPACK " : "", st.message);
  res->retries = st.attempts - 1;
  res->damp = st.sigma_reg;
  snprintf(res->ldl_message, sizeof res->ldl_message, "%s%s", o->scalapack ? "ScaLAPACK " : "", st.message);

  /* LDLQ on this rank's row tiles; proxy loss per tile (rank-count independent), reduced exactly */
  int64_t r0, r1;
  e8q_ldlq_split_rows(m, size, rank, &r0, &r1);
  int my_rows = (int)(r1 - r0);
  size_t c2sz = o->bits == 4 ? 2 : 1;
  uint16_t *codes = e8q_calloc((size_t)(my_rows ? my_rows : 1) * nc, sizeof(uint16_t), "codes");
  uint8_t *codes2 = o->bits > 2 ? e8q_calloc((size_t)(my_rows ? my_rows : 1) * nc, c2sz, "codes2") : NULL;
  int tile = E8Q_LDLQ_ROW_TILE;
  double *What = e8q_malloc(sizeof(double) * (size_t)tile * np, "quantized rows");
  double *HE = e8q_malloc(sizeof(double) * (size_t)tile * np, "H E");
  e8q_ldlq_opts lo = {.cb = cb, .tune_iters = o->tune_iters, .feedback = o->method == E8Q_METHOD_LDLQ, .noe8_bits = 0};
  E8Q_CHECK(o->method == E8Q_METHOD_LDLQ || o->method == E8Q_METHOD_NEAREST, "internal: method %s not supported here",
            e8q_method_name(o->method));
  e8q_xsum loss; /* [2] tr(E H Eᵀ), tr(W H Wᵀ) */
  e8q_xsum_init(&loss, 2, E8Q_XSUM_FRAC_DEFAULT);
  for (int64_t a = r0; a < r1; a += tile) {
    int rows = (int)(a + tile < r1 ? tile : r1 - a);
    /* rows [a, a+rows) as their own matrix: tile boundaries are absolute, so the codes are
     * those of one call over all rows */
    e8q_ldlq_rows(&f, &lo, Wr + (size_t)a * np, rows, 0, rows, codes + (size_t)(a - r0) * nc,
                  codes2 ? codes2 + (size_t)(a - r0) * nc * c2sz : NULL, What);
    for (size_t i = 0; i < (size_t)rows * np; i++) What[i] = Wr[(size_t)a * np + i] - What[i];
    double t[2] = {0, 0};
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, np, np, 1.0, What, np, f.H, np, 0.0, HE, np);
    for (size_t i = 0; i < (size_t)rows * np; i++) t[0] += HE[i] * What[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, np, np, 1.0, Wr + (size_t)a * np, np, f.H, np, 0.0, HE, np);
    for (size_t i = 0; i < (size_t)rows * np; i++) t[1] += HE[i] * Wr[(size_t)a * np + i];
    e8q_xsum_add(&loss, t);
  }
  double tot[2];
  e8q_comm_allreduce_sum_ordered(c, &loss, tot);
  res->proxy_loss = tot[1] > 0 ? tot[0] / tot[1] : 0;
  e8q_xsum_free(&loss);

  /* gather codes to rank 0: the row ranges are contiguous in rank order (e8q_ldlq_split_rows),
   * so packing them without gaps puts every row in its place */
  size_t *counts = e8q_malloc(sizeof(size_t) * (size_t)size, "counts"); /* [size] bytes per rank */
  for (int pass = 0; pass < (o->bits > 2 ? 2 : 1); pass++) {
    size_t el = pass == 0 ? 2 : c2sz;
    int64_t next = 0;
    for (int r = 0; r < size; r++) {
      int64_t q0, q1;
      e8q_ldlq_split_rows(m, size, r, &q0, &q1);
      E8Q_CHECK(q0 == next, "internal: row split of rank %d starts at %lld, not %lld", r, (long long)q0, (long long)next);
      next = q1;
      counts[r] = (size_t)(q1 - q0) * (size_t)nc * el;
    }
    void *dst = NULL;
    if (rank == 0) dst = e8q_malloc(el * (size_t)m * nc, pass == 0 ? "codes" : "codes2");
    e8q_comm_gatherv(c, E8Q_MEM_HOST, pass == 0 ? (void *)codes : (void *)codes2, counts[rank], dst, counts, 0);
    if (pass == 0) res->codes = dst;
    else res->codes2 = dst;
  }
  free(counts);
  free(What);
  free(HE);
  free(codes);
  free(codes2);
  e8q_ldl_free(&f);
  free(SU);
  free(SV);
  free(Wr);
  free(Hr);
  e8q_had_free(&hn);
  e8q_had_free(&hm);
}

void e8q_qlin_result_free(e8q_qlin_result *r) {
  free(r->dense);
  free(r->codes);
  free(r->codes2);
  free(r->SU);
  free(r->SV);
  memset(r, 0, sizeof *r);
}
