/* worker/quantize_linear.c: one linear group across all ranks, every method (worker/quantize_linear.h).
 * The one driver of "quantize one linear": kernels/ give it the numeric steps (RHT, LDL, the LDLQ
 * sweep with its tune passes, the encoders, round to nearest). */
#include "worker/quantize_linear.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#include "common/rng.h"
#include "kernels/e8p.h"
#include "kernels/ldlq_gpu.h"
#include "kernels/hadamard.h"
#include "worker/cholesky.h"

/* ---------------------------------------------------------------- methods */
static const char *const method_names[] = {"e8p", "nearest", "noe8", "rtn"}; /* [e8q_method] */

e8q_method e8q_method_parse(const char *s) {
  if (s && !strcmp(s, "ldlq")) return E8Q_METHOD_LDLQ; /* the reference code's name of e8p */
  for (int i = 0; i < (int)(sizeof method_names / sizeof *method_names); i++)
    if (s && !strcmp(s, method_names[i])) return (e8q_method)i;
  E8Q_FATAL("--method '%s': use e8p (default), nearest, noe8 or rtn", s ? s : "(null)");
}

const char *e8q_method_cli_name(e8q_method m) {
  return (unsigned)m < sizeof method_names / sizeof *method_names ? method_names[m] : "?";
}

/* the per-linear seed (RHT signs): the run's --seed mixed with the layer and group */
static uint64_t linear_seed(uint64_t seed, int layer, int group) {
  return seed * 0x9E3779B97F4A7C15ull + (uint64_t)layer * E8Q_N_GROUPS + (uint64_t)group;
}

/* ---------------------------------------------------------------- fuse and pad
 * RMS of rows [r0, r0+rows) of W [m, n] (a fused piece, DESIGN §3 "Fused groups"), as the float
 * the artifact stores; 1 for an all-zero piece, or one whose RMS underflows in float (a 0 fuse
 * scale would divide by zero) */
static double piece_rms(const float *W, int r0, int rows, int n) {
  double ss = 0;
  for (int r = r0; r < r0 + rows; r++)
    for (int j = 0; j < n; j++) ss += (double)W[(size_t)r * n + j] * W[(size_t)r * n + j];
  float rms = (float)sqrt(ss / ((double)rows * n));
  return rms > 0 ? (double)rms : 1;
}

/* Wp [m, n_pad] <- each piece of W [m, n] over its RMS (fuse_scales [n_pieces] out), zero pad
 * columns. The dense ablations quantize the normalised weight rounded to float (their artifacts
 * always have). */
static void fuse_pad(const e8q_group_plan *g, const float *W, int round_f32, double *Wp, float *fuse_scales) {
  const int n = g->n, np = g->n_pad;
  memset(Wp, 0, sizeof(double) * (size_t)g->m * np);
  int row = 0;
  for (int p = 0; p < g->n_pieces; p++) {
    fuse_scales[p] = (float)piece_rms(W, row, g->piece_rows[p], n);
    for (int r = row; r < row + g->piece_rows[p]; r++)
      for (int j = 0; j < n; j++) {
        double v = W[(size_t)r * n + j] / (double)fuse_scales[p];
        Wp[(size_t)r * np + j] = round_f32 ? (double)(float)v : v;
      }
    row += g->piece_rows[p];
  }
}

/* ---------------------------------------------------------------- Hadamard and factorisation
 * M_n with rank 0's factor on every rank. Sylvester and Paley factors are exact integer
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

/* The Cholesky e8q_ldl_build_chol (kernels/ldlq.h) uses on the ScaLAPACK path: across all ranks,
 * block size chosen from n and the grid. Collective. */
static int cholesky_scalapack(int n, double *A) { return e8q_cholesky_scalapack(n, A, 0); }

/* ---------------------------------------------------------------- proxy loss
 * tr(E H Eᵀ), tr(W H Wᵀ) of rows [0, rows) of W, What [rows, n] (E = W - What; What is
 * overwritten by E) into t[2]; HE [rows, n] scratch */
static void proxy_terms(const double *W, double *What, const double *H, int rows, int n, double *HE, double t[2]) {
  for (size_t i = 0; i < (size_t)rows * n; i++) What[i] = W[i] - What[i];
  t[0] = t[1] = 0;
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n, n, 1.0, What, n, H, n, 0.0, HE, n);
  for (size_t i = 0; i < (size_t)rows * n; i++) t[0] += HE[i] * What[i];
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n, n, 1.0, W, n, H, n, 0.0, HE, n);
  for (size_t i = 0; i < (size_t)rows * n; i++) t[1] += HE[i] * W[i];
}

/* ---------------------------------------------------------------- codes to rank 0
 * the row ranges are contiguous in rank order (e8q_ldlq_split_rows), so packing them without
 * gaps puts every row in its place. mine: this rank's rows [el bytes x nc each]. Collective. */
static void *gather_rows(const void *mine, int m, int nc, size_t el, const char *what) {
  e8q_comm *c = e8q_comm_get();
  const int rank = e8q_comm_rank(c), size = e8q_comm_size(c);
  size_t *counts = e8q_malloc(sizeof(size_t) * (size_t)size, "counts"); /* [size] bytes per rank */
  int64_t next = 0;
  for (int r = 0; r < size; r++) {
    int64_t q0, q1;
    e8q_ldlq_split_rows(m, size, r, &q0, &q1);
    E8Q_CHECK(q0 == next, "internal: row split of rank %d starts at %lld, not %lld", r, (long long)q0, (long long)next);
    next = q1;
    counts[r] = (size_t)(q1 - q0) * (size_t)nc * el;
  }
  void *dst = rank == 0 ? e8q_malloc(el * (size_t)m * nc, what) : NULL;
  e8q_comm_gatherv(c, E8Q_MEM_HOST, mine, counts[rank], dst, counts, 0);
  free(counts);
  return dst;
}

double e8q_qlin_rho(const e8q_qlin_opts *o) {
  if (o->rho > 0) return o->rho;
  return o->method == E8Q_METHOD_NOE8 ? e8q_noe8_rho(o->bits) : e8q_cb_default_rho(e8q_cb_from_bits(o->bits));
}

/* ---------------------------------------------------------------- one group */
void e8q_quantize_group(const e8q_qlin_opts *o, const e8q_group_plan *g, int layer, int group, const float *W,
                        const double *H, long tokens, e8q_qlin_result *res) {
  e8q_comm *c = e8q_comm_get();
  const int rank = e8q_comm_rank(c), size = e8q_comm_size(c);
  const int m = g->m, n = g->n, np = g->n_pad, nc = np / 8;
  const int dense = e8q_method_dense(o->method);
  /* ---------------------------------------------------------- checks */
  E8Q_CHECK(tokens > 0, "layer %d %s: the Hessian holds no tokens", layer, g->name);
  E8Q_CHECK((unsigned)o->method < sizeof method_names / sizeof *method_names, "internal: method %d", (int)o->method);
  int rows_total = 0;
  for (int p = 0; p < g->n_pieces; p++) {
    E8Q_CHECK(g->piece_rows[p] > 0, "layer %d %s: fused piece %d has %d rows", layer, g->name, p, g->piece_rows[p]);
    rows_total += g->piece_rows[p];
  }
  E8Q_CHECK(g->n_pieces >= 1 && rows_total == m && np == e8q_pad8(n),
            "internal: layer %d %s: %d pieces of %d rows in all for %d rows, n_pad %d for n %d", layer, g->name,
            g->n_pieces, rows_total, m, np, n);
  for (size_t i = 0; i < (size_t)n * n; i++)
    E8Q_CHECK(isfinite(H[i]), "layer %d %s: the Hessian has a non-finite entry (%g at [%zu, %zu]): the calibration "
              "activations overflowed or the checkpoint holds NaN/Inf", layer, g->name, H[i], i / (size_t)n, i % (size_t)n);
  for (size_t i = 0; i < (size_t)m * n; i++)
    E8Q_CHECK(isfinite(W[i]), "layer %d %s: weight entry [%zu, %zu] is %g: the checkpoint is corrupt", layer, g->name,
              i / (size_t)n, i % (size_t)n, (double)W[i]);
  memset(res, 0, sizeof *res);
  res->m = m, res->n = n, res->n_pad = np, res->nc = nc, res->n_pieces = g->n_pieces;
  const e8q_codebook_id cb = e8q_cb_from_bits(o->bits);

  /* ---------------------------------------------------------- fuse, pad */
  double *Wr = e8q_malloc(sizeof(double) * (size_t)m * np, "rotated weight");
  fuse_pad(g, W, dense, Wr, res->fuse_scales);
  double *Hr = e8q_malloc(sizeof(double) * (size_t)np * np, "rotated Hessian");
  e8q_pad_hessian(H, n, np, Hr);
  double *hat = NULL; /* [m, np] a dense ablation's quantized weight (rank 0) */
  double info[1] = {0}; /* a dense ablation's proxy loss, from rank 0 */
  if (dense && rank == 0) hat = e8q_malloc(sizeof(double) * (size_t)m * np, "quantized weight");

  if (o->method == E8Q_METHOD_RTN) {
    /* ---------------------------------------------------------- rtn: no RHT, no factorisation
     * rank 0; the proxy with the prepared (unrotated) Hessian */
    res->damp = E8Q_SIGMA_REG;
    snprintf(res->ldl_message, sizeof res->ldl_message, "rtn: no factorisation");
    if (rank == 0) {
      e8q_rtn_rows(Wr, m, n, np, o->bits, hat);
      e8q_hessian_prep(Hr, np, E8Q_SIGMA_REG);
      info[0] = e8q_proxy_loss(Wr, hat, Hr, np, 0, m);
    }
  } else {
    /* ---------------------------------------------------------- RHT */
    res->SU = e8q_malloc(sizeof(float) * (size_t)np, "SU");
    res->SV = e8q_malloc(sizeof(float) * (size_t)m, "SV");
    const uint64_t lin_seed = linear_seed(o->seed, layer, group);
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

    /* ---------------------------------------------------------- scale to RMS rho */
    double ss = 0;
    for (size_t i = 0; i < (size_t)m * np; i++) ss += Wr[i] * Wr[i];
    const double wrms = sqrt(ss / ((double)m * np));
    const double rho = e8q_qlin_rho(o);
    /* an all-zero group (or one whose scale underflows in float) gets Wscale 0: no codebook has a
     * zero point, so only a zero scale decodes it to exactly 0 */
    res->Wscale = (float)(wrms / rho);
    double *Wu = NULL; /* [m, np] a dense ablation's rotated weight before scaling (rank 0, for its proxy) */
    if (hat) {
      Wu = e8q_malloc(sizeof(double) * (size_t)m * np, "rotated weight");
      memcpy(Wu, Wr, sizeof(double) * (size_t)m * np);
    }
    for (size_t i = 0; i < (size_t)m * np; i++) Wr[i] = res->Wscale > 0 ? Wr[i] / (double)res->Wscale : 0.0;

    /* ---------------------------------------------------------- factor (prepared H, block LDL) */
    e8q_ldl f;
    e8q_ldl_status st;
    /* the Cholesky: ScaLAPACK across the ranks, else cuSOLVER on this rank's GPU (--device cuda),
     * else LAPACK; every rank factors the same Hr */
    const int gpu = !o->scalapack && e8q_device_cuda() >= 0;
    const char *via = o->scalapack ? "ScaLAPACK " : gpu ? "cuSOLVER " : "";
    int ok = e8q_ldl_build_chol(&f, Hr, np, E8Q_SIGMA_REG, E8Q_PREC_F64,
                                o->scalapack ? cholesky_scalapack : gpu ? e8q_cholesky_cusolver : NULL, &st);
    E8Q_CHECK(ok, "layer %d %s: %s%s", layer, g->name, via, st.message);
    res->retries = st.attempts - 1;
    res->damp = st.sigma_reg;
    snprintf(res->ldl_message, sizeof res->ldl_message, "%s%s", via, st.message);

    /* ---------------------------------------------------------- LDLQ sweep
     * coded methods: this rank's row tiles, the proxy loss summed per tile (rank-count
     * independent) and reduced exactly; dense ablations: every row on rank 0, which turns the
     * result back into a dense weight */
    e8q_ldlq_opts lo = {.cb = cb,
                        .tune_iters = o->tune_iters,
                        .feedback = o->method != E8Q_METHOD_NEAREST,
                        .noe8_bits = o->method == E8Q_METHOD_NOE8 ? o->bits : 0};
    int64_t r0 = 0, r1 = 0;
    if (!dense) e8q_ldlq_split_rows(m, size, rank, &r0, &r1);
    else if (rank == 0) r1 = m;
    const int my_rows = (int)(r1 - r0), tile = E8Q_LDLQ_ROW_TILE;
    const size_t c2sz = (size_t)e8q_cb_traits(cb)->codes2_bytes;
    uint16_t *codes = dense ? NULL : e8q_calloc((size_t)(my_rows ? my_rows : 1) * nc, sizeof(uint16_t), "codes");
    uint8_t *codes2 = dense || !c2sz ? NULL : e8q_calloc((size_t)(my_rows ? my_rows : 1) * nc, c2sz, "codes2");
    /* --device cuda: all of this rank's rows in one GPU call (its tiles are the CPU's, r0 being a
     * tile multiple), their decoded rows kept for the proxy; else tile by tile on the CPU */
    const char *why_cpu = NULL;
    e8q_ldlq_gpu *gl = !dense && my_rows > 0 && e8q_device_cuda() >= 0 ? e8q_ldlq_gpu_create(e8q_device_cuda(), &f, &why_cpu)
                                                                      : NULL;
    if (!gl && why_cpu && layer == 0 && rank == 0) e8q_warn("layer 0 %s: LDLQ stays on the CPU: %s", g->name, why_cpu);
    const int on_gpu = gl != NULL;
    double *What = dense ? NULL
                         : e8q_malloc(sizeof(double) * (size_t)(on_gpu ? my_rows : tile) * np, "quantized rows");
    if (on_gpu) e8q_ldlq_gpu_rows(gl, &lo, Wr + (size_t)r0 * np, my_rows, codes, codes2, What);
    e8q_ldlq_gpu_free(gl);
    double *HE = dense ? NULL : e8q_malloc(sizeof(double) * (size_t)tile * np, "H E");
    e8q_xsum loss; /* [2] tr(E H Eᵀ), tr(W H Wᵀ) */
    e8q_xsum_init(&loss, 2, E8Q_XSUM_FRAC_DEFAULT);
    for (int64_t a = r0; a < r1; a += tile) {
      int rows = (int)(a + tile < r1 ? tile : r1 - a);
      /* rows [a, a+rows) as their own matrix: tile boundaries are absolute, so the codes are
       * those of one call over all rows */
      double *out = dense ? hat + (size_t)a * np : on_gpu ? What + (size_t)(a - r0) * np : What;
      if (!on_gpu)
        e8q_ldlq_rows(&f, &lo, Wr + (size_t)a * np, rows, 0, rows, codes ? codes + (size_t)(a - r0) * nc : NULL,
                      codes2 ? codes2 + (size_t)(a - r0) * nc * c2sz : NULL, out);
      if (dense) continue;
      double t[2];
      proxy_terms(Wr + (size_t)a * np, out, f.H, rows, np, HE, t);
      e8q_xsum_add(&loss, t);
    }
    if (!dense) {
      double tot[2];
      e8q_comm_allreduce_sum_ordered(c, &loss, tot);
      res->proxy_loss = tot[1] > 0 ? tot[0] / tot[1] : 0;
      res->codes = gather_rows(codes, m, nc, sizeof(uint16_t), "codes");
      if (codes2) res->codes2 = gather_rows(codes2, m, nc, c2sz, "codes2");
    } else if (hat) {
      /* the proxy in the rotated basis at the original scale, then back to the original basis */
      for (size_t i = 0; i < (size_t)m * np; i++) hat[i] *= (double)res->Wscale;
      info[0] = e8q_proxy_loss(Wu, hat, f.H, np, 0, m);
      e8q_rht_weight_inv(&hm, &hn, SU, SV, hat);
    }
    e8q_xsum_free(&loss);
    free(What), free(HE), free(codes), free(codes2), free(Wu);
    e8q_ldl_free(&f);
    free(SU), free(SV);
    e8q_had_free(&hn), e8q_had_free(&hm);
  }

  /* ---------------------------------------------------------- dense ablations: W = fs ⊙ What */
  if (dense) {
    e8q_comm_bcast(c, E8Q_MEM_HOST, info, sizeof info, 0);
    res->proxy_loss = info[0];
    res->Wscale = 1; /* the dense weight carries its scale */
    if (hat) {
      res->dense = e8q_malloc(sizeof(float) * (size_t)m * n, "dense ablation weight");
      int row = 0;
      for (int p = 0; p < g->n_pieces; p++) {
        for (int r = row; r < row + g->piece_rows[p]; r++)
          for (int j = 0; j < n; j++) res->dense[(size_t)r * n + j] = (float)hat[(size_t)r * np + j] * res->fuse_scales[p];
        row += g->piece_rows[p];
      }
    }
  }
  free(hat), free(Wr), free(Hr);
}

void e8q_qlin_result_free(e8q_qlin_result *r) {
  free(r->dense), free(r->codes), free(r->codes2), free(r->SU), free(r->SV);
  memset(r, 0, sizeof *r);
}
