/* kernels/qlinear.c: quantized linear (see qlinear.h): validation, the scalar reference
 * product, dense float64 references and the run-time dispatch to the AVX-512 or AVX2 path. */
#include "kernels/qlinear.h"
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_vnni.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"
#include "kernels/e8p.h"
#include "kernels/gemm_panels.h"
#include "kernels/qlinear_amx.h"

static int env_set(const char *name) {
  const char *env = getenv(name);
  return env && *env && strcmp(env, "0") != 0;
}

/* ---------------------------------------------------------------- validation */
static int is_pow2(long v) { return v > 0 && (v & (v - 1)) == 0; }

static void check_factor(const char *name, const char *side, int dim, int K, const float *R) {
  E8Q_CHECK(K >= 1 && dim % K == 0 && is_pow2(dim / K),
            "%s: Hadamard factor K_%s = %d does not fit dimension %d (need %d = K * 2^p); "
            "use the factor recorded in the artifact for this dimension", name, side, K, dim, dim);
  E8Q_CHECK(K == 1 || R, "%s: Hadamard factor K_%s = %d > 1 needs its matrix R_%s [%d, %d]",
            name, side, K, side, K, K);
}

/* M_dim from the given factor (checked orthogonal by e8q_had_factor_from) */
static void had_make(e8q_had *h, int dim, int K, const float *R, const char *name, const char *field) {
  double *Rd = NULL;
  if (K > 1) {
    Rd = e8q_malloc(sizeof(double) * (size_t)K * K, "Hadamard factor copy");
    for (size_t i = 0; i < (size_t)K * K; i++) Rd[i] = (double)R[i];
  }
  char what[512];
  snprintf(what, sizeof what, "%s: %s", name, field);
  e8q_had_factor f;
  e8q_had_factor_from(&f, K, Rd, E8Q_HAD_GIVEN, what);
  e8q_had_init_factor(h, dim, &f);
  e8q_had_factor_free(&f);
  free(Rd);
}

void e8q_qlinear_init(e8q_qlinear *q, const e8q_qlinear_desc *d, const char *name) {
  if (!name) name = "quantized linear";
  memset(q, 0, sizeof *q);
  E8Q_CHECK(d->m >= 1 && d->n >= 1, "%s: bad shape m = %d, n = %d", name, d->m, d->n);
  E8Q_CHECK(d->n_pad % 8 == 0 && d->n_pad >= d->n && d->n_pad < d->n + 8,
            "%s: n_pad = %d must be n = %d rounded up to a multiple of 8", name, d->n_pad, d->n);
  E8Q_CHECK(d->codes, "%s: codes [%d, %d] missing", name, d->m, d->n_pad / 8);
  E8Q_CHECK(d->SU && d->SV, "%s: SU [%d] and SV [%d] are required", name, d->n_pad, d->m);
  E8Q_CHECK(isfinite(d->Wscale), "%s: Wscale is not finite", name);
  E8Q_CHECK(e8q_cb_known(d->codebook), "%s: unknown codebook id %d (expected 2, 3 or 4 bits)", name, (int)d->codebook);
  const e8q_codebook_traits *cbt = e8q_cb_traits(d->codebook);
  if (!cbt->codes2_bytes) E8Q_CHECK(!d->codes2, "%s: codebook %s (%d bit) takes no codes2", name, cbt->name, cbt->bits);
  else E8Q_CHECK(d->codes2, "%s: codebook %s needs codes2 [%d, %d]", name, cbt->name, d->m, d->n_pad / 8);
  check_factor(name, "in", d->n_pad, d->K_in, d->R_in);
  check_factor(name, "out", d->m, d->K_out, d->R_out);
  E8Q_CHECK(d->n_pieces >= 1, "%s: n_pieces = %d must be >= 1", name, d->n_pieces);
  E8Q_CHECK(d->n_pieces == 1 || d->piece_rows, "%s: %d fused pieces need piece_rows", name, d->n_pieces);
  if (d->piece_rows) {
    long tot = 0;
    for (int i = 0; i < d->n_pieces; i++) {
      E8Q_CHECK(d->piece_rows[i] >= 1, "%s: piece %d has %d rows", name, i, d->piece_rows[i]);
      tot += d->piece_rows[i];
    }
    E8Q_CHECK(tot == d->m, "%s: piece rows sum to %ld, expected m = %d", name, tot, d->m);
  }
  q->d = *d;
  q->nc = d->n_pad / 8;
  q->resid_scale = d->resid_scale;
  if (q->resid_scale == 0) q->resid_scale = cbt->codes2_bytes ? (float)cbt->resid_scale : (float)E8Q_RVQ4_RESID_SCALE;
  E8Q_CHECK(isfinite(q->resid_scale) && q->resid_scale > 0, "%s: resid_scale %g must be positive",
            name, (double)q->resid_scale);
  q->out_scale = e8q_alloc_aligned(sizeof(float) * (size_t)d->m, "qlinear output scales");
  int piece = 0, left = d->piece_rows ? d->piece_rows[0] : d->m;
  for (int r = 0; r < d->m; r++) {
    while (left == 0) left = d->piece_rows[++piece];
    float fs = d->fuse_scales ? d->fuse_scales[piece] : 1.0f;
    q->out_scale[r] = fs * d->SV[r];
    left--;
  }
  had_make(&q->h_in, d->n_pad, d->K_in, d->R_in, name, "R_in");
  had_make(&q->h_out, d->m, d->K_out, d->R_out, name, "R_out");
  /* the VNNI core reads its own copy of the codes (the same 2, 3 or 4 bits per weight) */
  if (e8q_qlinear_simd_level() == 2 && e8q_cpu_has_vnni() && !env_set("E8Q_NO_VNNI") && e8q_qlinear_vnni_fits(d)) {
    q->vnni = e8q_malloc(sizeof *q->vnni, "qlinear VNNI codes");
    e8q_qlinear_vnni_init(q->vnni, d);
  }
}

void e8q_qlinear_free(e8q_qlinear *q) {
  free(q->out_scale);
  e8q_had_free(&q->h_in);
  e8q_had_free(&q->h_out);
  if (q->vnni) e8q_qlinear_vnni_free(q->vnni);
  free(q->vnni);
  memset(q, 0, sizeof *q);
}

/* ---------------------------------------------------------------- scales (fine-tuning) */
void e8q_qlinear_set_scales(e8q_qlinear *q, const float *SV, const float *fuse_scales) {
  E8Q_CHECK(SV, "e8q_qlinear_set_scales: SV [%d] is required", q->d.m);
  int piece = 0, left = q->d.piece_rows ? q->d.piece_rows[0] : q->d.m;
  for (int r = 0; r < q->d.m; r++) { /* the walk of e8q_qlinear_init */
    while (left == 0) left = q->d.piece_rows[++piece];
    float fs = fuse_scales ? fuse_scales[piece] : 1.0f;
    q->out_scale[r] = fs * SV[r];
    left--;
  }
  q->d.SV = SV;
  q->d.fuse_scales = fuse_scales;
}

/* ---------------------------------------------------------------- decoding one code */
/* Ŵr[r, 8j..8j+7] in f32, exactly as codebook.h decodes it */
static inline void decode_f32(const e8q_qlinear *q, size_t idx, float w[8]) {
  const uint16_t c = q->d.codes[idx];
  switch (q->d.codebook) {
    case E8Q_CB_E8P12:
      e8q_e8p_decode(c, w);
      return;
    case E8Q_CB_E8P12RVQ4B:
    case E8Q_CB_E8P12RVQ3B: {
      float a[8], b[8];
      e8q_e8p_decode(c, a);
      if (q->d.codebook == E8Q_CB_E8P12RVQ4B)
        e8q_e8p_decode(((const uint16_t *)q->d.codes2)[idx], b);
      else
        e8q_e81b_decode(((const uint8_t *)q->d.codes2)[idx], b);
      for (int t = 0; t < 8; t++) w[t] = a[t] + b[t] / q->resid_scale;
      return;
    }
  }
}

static inline void decode_f64(const e8q_qlinear *q, size_t idx, double w[8]) {
  double b[8];
  e8q_e8p_decode_f64(q->d.codes[idx], w);
  if (q->d.codebook == E8Q_CB_E8P12RVQ4B) e8q_e8p_decode_f64(((const uint16_t *)q->d.codes2)[idx], b);
  else if (q->d.codebook == E8Q_CB_E8P12RVQ3B) e8q_e81b_decode_f64(((const uint8_t *)q->d.codes2)[idx], b);
  else return;
  for (int t = 0; t < 8; t++) w[t] += b[t] / (double)q->resid_scale;
}

/* ---------------------------------------------------------------- scalar reference */
void e8q_qlinear_codes_matmul_ref(const e8q_qlinear *q, int batch, const float *u, float *z) {
  const int m = q->d.m, nc = q->nc, np = q->d.n_pad;
#pragma omp parallel for schedule(static)
  for (int r = 0; r < m; r++) {
    for (int b = 0; b < batch; b++) {
      const float *ub = u + (size_t)b * np;
      float acc = 0;
      for (int j = 0; j < nc; j++) {
        float w[8];
        decode_f32(q, (size_t)r * nc + j, w);
        for (int t = 0; t < 8; t++) acc += w[t] * ub[8 * j + t];
      }
      z[(size_t)b * m + r] = acc;
    }
  }
}

/* ---------------------------------------------------------------- batched: decode, then GEMM */
static void panel_decode(const void *ctx, int r0, int rows, float *W) {
  const e8q_qlinear *q = ctx;
#if defined(__x86_64__) || defined(__i386__)
  if (e8q_cpu_has_avx2()) {
    e8q_qlinear_decode_rows_avx2(q, r0, rows, W);
    return;
  }
#endif
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < q->nc; j++) decode_f32(q, (size_t)(r0 + r) * q->nc + j, W + (size_t)r * q->d.n_pad + 8 * j);
}

void e8q_qlinear_codes_matmul_gemm_rows(const e8q_qlinear *q, int batch, const float *u, float *z, int P) {
  e8q_gemm_panels(batch, q->d.m, q->d.n_pad, u, NULL, panel_decode, q, P, z, q->d.m);
}

/* the AMX-INT8 tiles for q's batches (E8Q_NO_AVX512 turns them off with the other AVX-512 paths) */
static int use_amx(const e8q_qlinear *q) {
  return e8q_qlinear_simd_level() == 2 && e8q_qlinear_amx_available() && q->d.n_pad <= E8Q_QLINEAR_AMX_MAX_NPAD;
}

/* decode + GEMM for q at this batch (its gemm_min, set by inference models) */
static int use_gemm(const e8q_qlinear *q, int batch) {
  return q->gemm_min > 0 && batch >= q->gemm_min && e8q_qlinear_simd_level() > 0;
}

void e8q_qlinear_codes_matmul_gemm(const e8q_qlinear *q, int batch, const float *u, float *z) {
  if (use_amx(q) && e8q_qlinear_amx_matmul(q, batch, u, z)) return; /* a non-finite input: the panels */
  e8q_gemm_panels(batch, q->d.m, q->d.n_pad, u, NULL, panel_decode, q, e8q_gemm_panel_rows(q->d.m), z, q->d.m);
}

/* the shared frame of both paths: rotate inputs, run the core, rotate outputs */
typedef void (*core_fn)(const e8q_qlinear *, int, const float *, float *);

/* zk: NULL, or [batch, m] <- the output before the output scales (y = out_scale ⊙ zk) */
static void forward_with(const e8q_qlinear *q, int batch, const float *x, float *y, float *zk, core_fn core) {
  const int m = q->d.m, n = q->d.n, np = q->d.n_pad;
  E8Q_CHECK(batch >= 0, "e8q_qlinear_forward: batch %d < 0", batch);
  if (batch == 0) return;
  float *u = e8q_alloc_aligned(sizeof(float) * (size_t)batch * np, "qlinear rotated input");
  float *z = zk ? zk : e8q_alloc_aligned(sizeof(float) * (size_t)batch * m, "qlinear rotated output");
  const int par = batch > 1 && (size_t)batch * (np + m) >= ((size_t)1 << 16); /* a batch worth a team */
#pragma omp parallel for schedule(static) if (par)
  for (int b = 0; b < batch; b++) {
    float *ub = u + (size_t)b * np;
    const float *xb = x + (size_t)b * n;
    for (int k = 0; k < n; k++) ub[k] = q->d.SU[k] * xb[k];
    for (int k = n; k < np; k++) ub[k] = 0;
  }
  e8q_had_rows_f32(&q->h_in, u, batch, np, 1); /* M_n_padᵀ, OpenMP over the batch */
  core(q, batch, u, z);
#pragma omp parallel for schedule(static) if (par)
  for (int b = 0; b < batch; b++)
    for (int r = 0; r < m; r++) z[(size_t)b * m + r] *= q->d.Wscale;
  e8q_had_rows_f32(&q->h_out, z, batch, m, 0); /* M_m */
#pragma omp parallel for schedule(static) if (par)
  for (int b = 0; b < batch; b++)
    for (int r = 0; r < m; r++) y[(size_t)b * m + r] = q->out_scale[r] * z[(size_t)b * m + r];
  free(u);
  if (!zk) free(z);
}

void e8q_qlinear_forward_ref(const e8q_qlinear *q, int batch, const float *x, float *y) {
  forward_with(q, batch, x, y, NULL, e8q_qlinear_codes_matmul_ref);
}

void e8q_qlinear_forward_keep_ref(const e8q_qlinear *q, int batch, const float *x, float *y, float *z) {
  forward_with(q, batch, x, y, z, e8q_qlinear_codes_matmul_ref);
}

/* ---------------------------------------------------------------- dispatch */
int e8q_cpu_has_avx2(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

int e8q_cpu_has_avx512(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni") && e8q_cpu_has_avx2();
#else
  return 0;
#endif
}

/* 0 = scalar _ref, 1 = AVX2, 2 = AVX-512 (qlinear.h) */
int e8q_qlinear_simd_level(void) {
  static int decided = -1;
  int v = __atomic_load_n(&decided, __ATOMIC_RELAXED);
  if (v < 0) {
    v = 0;
    if (e8q_cpu_has_avx2() && !env_set("E8Q_NO_AVX2")) v = e8q_cpu_has_avx512() && !env_set("E8Q_NO_AVX512") ? 2 : 1;
    __atomic_store_n(&decided, v, __ATOMIC_RELAXED);
  }
  return v;
}

const char *e8q_qlinear_path_batch(const e8q_qlinear *q, int batch) {
  if (use_gemm(q, batch)) return use_amx(q) ? "AMX-INT8 tiles (inference batch)" : "decoded panels + sgemm (inference batch)";
  return e8q_qlinear_path(q);
}

const char *e8q_qlinear_path(const e8q_qlinear *q) {
#if defined(__x86_64__) || defined(__i386__)
  switch (e8q_qlinear_simd_level()) {
    case 2: return q->vnni ? "AVX-512 VNNI (integer core)" : "AVX-512 (f32)";
    case 1: return "AVX2";
    default: break;
  }
#endif
  (void)q;
  return "scalar _ref";
}

void e8q_qlinear_forward_keep(const e8q_qlinear *q, int batch, const float *x, float *y, float *z) {
  if (use_gemm(q, batch)) {
    forward_with(q, batch, x, y, z, e8q_qlinear_codes_matmul_gemm);
    return;
  }
#if defined(__x86_64__) || defined(__i386__)
  switch (e8q_qlinear_simd_level()) {
    case 2: forward_with(q, batch, x, y, z, e8q_qlinear_codes_matmul_avx512); return;
    case 1: forward_with(q, batch, x, y, z, e8q_qlinear_codes_matmul_avx2); return;
    default: break;
  }
#endif
  forward_with(q, batch, x, y, z, e8q_qlinear_codes_matmul_ref);
}

void e8q_qlinear_forward(const e8q_qlinear *q, int batch, const float *x, float *y) {
  e8q_qlinear_forward_keep(q, batch, x, y, NULL);
}

#if defined(__x86_64__) || defined(__i386__)
void e8q_qlinear_forward_avx2(const e8q_qlinear *q, int batch, const float *x, float *y) {
  E8Q_CHECK(e8q_cpu_has_avx2(), "e8q_qlinear_forward_avx2: this CPU lacks AVX2/FMA");
  forward_with(q, batch, x, y, NULL, e8q_qlinear_codes_matmul_avx2);
}

void e8q_qlinear_forward_avx512(const e8q_qlinear *q, int batch, const float *x, float *y) {
  E8Q_CHECK(e8q_cpu_has_avx512(), "e8q_qlinear_forward_avx512: this CPU lacks AVX-512 (F/BW/VL/DQ/VBMI) or GFNI");
  forward_with(q, batch, x, y, NULL, e8q_qlinear_codes_matmul_avx512);
}
#endif

/* ---------------------------------------------------------------- dense float64 references */
void e8q_qlinear_decode_f64(const e8q_qlinear *q, double *what) {
  const int m = q->d.m, nc = q->nc;
  for (int r = 0; r < m; r++)
    for (int j = 0; j < nc; j++) decode_f64(q, (size_t)r * nc + j, what + (size_t)r * q->d.n_pad + 8 * j);
}

void e8q_qlinear_dequant(const e8q_qlinear *q, double *W) {
  const int m = q->d.m, n = q->d.n, np = q->d.n_pad;
  double *Wh = e8q_malloc(sizeof(double) * (size_t)m * np, "decoded weight");
  double *SU = e8q_malloc(sizeof(double) * (size_t)np, "dequant SU"), *os = e8q_malloc(sizeof(double) * (size_t)m, "dequant scales");
  e8q_qlinear_decode_f64(q, Wh);
  for (size_t i = 0; i < (size_t)m * np; i++) Wh[i] *= (double)q->d.Wscale;
  for (int c = 0; c < np; c++) SU[c] = (double)q->d.SU[c];
  for (int r = 0; r < m; r++) os[r] = (double)q->out_scale[r];
  e8q_rht_weight_inv(&q->h_out, &q->h_in, SU, os, Wh); /* diag(os) M_m Wh M_n_padᵀ diag(SU) */
  for (int r = 0; r < m; r++) memcpy(W + (size_t)r * n, Wh + (size_t)r * np, sizeof(double) * (size_t)n);
  free(Wh);
  free(SU);
  free(os);
}

void e8q_qlinear_dequant_ref(const e8q_qlinear *q, double *W) {
  const int m = q->d.m, n = q->d.n, np = q->d.n_pad;
  double *Wh = e8q_malloc(sizeof(double) * (size_t)m * np, "decoded weight");
  double *T = e8q_calloc((size_t)m * np, sizeof(double), "dequant temp");
  e8q_qlinear_decode_f64(q, Wh);
  double *Mm = e8q_malloc(sizeof(double) * (size_t)m * m, "dense M_m");
  double *Mn = e8q_malloc(sizeof(double) * (size_t)np * np, "dense M_n_pad");
  e8q_had_matrix_ref(&q->h_out, Mm); /* explicit kron(R_K, WHT)/sqrt(k), O(k^2) */
  e8q_had_matrix_ref(&q->h_in, Mn);
  /* T = M_m (Wscale Ŵr) */
  for (int r = 0; r < m; r++)
    for (int i = 0; i < m; i++) {
      double a = Mm[(size_t)r * m + i] * (double)q->d.Wscale;
      const double *src = Wh + (size_t)i * np;
      double *dst = T + (size_t)r * np;
      for (int k = 0; k < np; k++) dst[k] += a * src[k];
    }
  /* W[r, c] = os[r] * Σ_k T[r, k] M_n[c, k] * SU[c]   (T M_nᵀ: (M_nᵀ)[k, c] = M_n[c, k]) */
  for (int r = 0; r < m; r++)
    for (int c = 0; c < n; c++) {
      double acc = 0;
      const double *t = T + (size_t)r * np, *mc = Mn + (size_t)c * np;
      for (int k = 0; k < np; k++) acc += t[k] * mc[k];
      W[(size_t)r * n + c] = (double)q->out_scale[r] * acc * (double)q->d.SU[c];
    }
  free(Wh);
  free(T);
  free(Mm);
  free(Mn);
}

/* ---------------------------------------------------------------- validation */
void e8q_qlinear_forward_f64_ref(const e8q_qlinear *q, int batch, const double *x, double *y) {
  const int m = q->d.m, n = q->d.n, np = q->d.n_pad, nc = q->nc;
  double *u = e8q_malloc(sizeof(double) * (size_t)batch * np, "f64 reference input");
  double *z = e8q_malloc(sizeof(double) * (size_t)batch * m, "f64 reference output");
  for (int b = 0; b < batch; b++)
    for (int k = 0; k < np; k++) u[(size_t)b * np + k] = k < n ? (double)q->d.SU[k] * x[(size_t)b * n + k] : 0.0;
  e8q_had_rows_f64(&q->h_in, u, batch, np, 1);
#pragma omp parallel for schedule(static)
  for (int r = 0; r < m; r++) {
    double *acc = e8q_calloc((size_t)batch, sizeof(double), "f64 reference row");
    for (int j = 0; j < nc; j++) {
      double w[8];
      decode_f64(q, (size_t)r * nc + j, w);
      for (int b = 0; b < batch; b++)
        for (int t = 0; t < 8; t++) acc[b] += w[t] * u[(size_t)b * np + 8 * j + t];
    }
    for (int b = 0; b < batch; b++) z[(size_t)b * m + r] = (double)q->d.Wscale * acc[b];
    free(acc);
  }
  e8q_had_rows_f64(&q->h_out, z, batch, m, 0);
  for (int b = 0; b < batch; b++)
    for (int r = 0; r < m; r++) y[(size_t)b * m + r] = (double)q->out_scale[r] * z[(size_t)b * m + r];
  free(u);
  free(z);
}

double e8q_qlinear_validate(const e8q_qlinear *q, int batch, uint64_t seed) {
  const int m = q->d.m, n = q->d.n;
  E8Q_CHECK(batch >= 1, "e8q_qlinear_validate: batch %d < 1", batch);
  double *xd = e8q_malloc(sizeof(double) * (size_t)batch * n, "validation input");
  float *xf = e8q_malloc(sizeof(float) * (size_t)batch * n, "validation input (f32)");
  double *yd = e8q_malloc(sizeof(double) * (size_t)batch * m, "validation reference");
  float *yf = e8q_malloc(sizeof(float) * (size_t)batch * m, "validation output");
  e8q_rng_fill_normal(seed, E8Q_RNG_STREAM_TEST, 0, (size_t)batch * n, xd);
  for (size_t i = 0; i < (size_t)batch * n; i++) {
    xf[i] = (float)xd[i];
    xd[i] = (double)xf[i]; /* both products see the same inputs */
  }
  e8q_qlinear_forward(q, batch, xf, yf);
  e8q_qlinear_forward_f64_ref(q, batch, xd, yd);
  double worst = 0;
  for (int b = 0; b < batch; b++) {
    double mx = 0, d = 0;
    for (int r = 0; r < m; r++) {
      mx = fmax(mx, fabs(yd[(size_t)b * m + r]));
      d = fmax(d, fabs((double)yf[(size_t)b * m + r] - yd[(size_t)b * m + r]));
    }
    worst = fmax(worst, mx > 0 ? d / mx : d);
  }
  free(xd);
  free(xf);
  free(yd);
  free(yf);
  return worst;
}
