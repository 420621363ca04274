/* kernels/ldlq_impl.h: the buffered LDLQ tile loop, instantiated for float and double by
 * kernels/ldlq.c (REAL, SFX, GEMM defined before inclusion). Not a public header. */

/* One tile of mt rows (absolute rows t0..t0+mt-1). Wt, hat, prod, D [mt, n]; scratch [mt, BUF]. */
static void SFX(ldlq_tile)(const e8q_ldl *f, const e8q_ldlq_opts *o, const REAL *L, const REAL *H, int64_t t0,
                           int64_t mt, const REAL *Wt, REAL *hat, REAL *prod, REAL *D, REAL *S,
                           uint16_t *codes, void *codes2) {
  const int64_t n = f->n, nb = n / 8, BUF = E8Q_LDLQ_BUF;
  memset(hat, 0, sizeof(REAL) * (size_t)(mt * n));
  memset(prod, 0, sizeof(REAL) * (size_t)(mt * n));
  /* ---- LDLQ: buffers of columns from last to first */
  for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
    c0 = c1 - BUF > 0 ? c1 - BUF : 0;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < mt; r++) {
      const REAL *w = Wt + r * n;
      REAL *h = hat + r * n;
      for (int64_t k = c1 / 8 - 1; k >= c0 / 8; k--) {
        int64_t j0 = 8 * k;
        double x[8], q[8];
        for (int t = 0; t < 8; t++) x[t] = (double)w[j0 + t] + (double)prod[r * n + j0 + t];
        if (o->feedback)
          for (int64_t j = j0 + 8; j < c1; j++) {
            double e = (double)w[j] - (double)h[j];
            const REAL *l = L + j * n + j0;
            for (int t = 0; t < 8; t++) x[t] += e * (double)l[t];
          }
        quant8(o, x, q, codes, codes2, (t0 + r) * nb + k);
        for (int t = 0; t < 8; t++) h[j0 + t] = (REAL)q[t];
      }
    }
    if (o->feedback && c0 > 0) {
      int64_t wdt = c1 - c0;
      for (int64_t r = 0; r < mt; r++)
        for (int64_t j = 0; j < wdt; j++) S[r * BUF + j] = Wt[r * n + c0 + j] - hat[r * n + c0 + j];
      /* prod[:, 0:c0] += (W - What)[:, c0:c1] L[c0:c1, 0:c0] */
      GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mt, (int)c0, (int)wdt, (REAL)1, S, (int)BUF,
           L + c0 * n, (int)n, (REAL)1, prod, (int)n);
    }
  }
  if (!o->feedback) return;
  /* ---- tune passes: G = (W - What) H[:, buffer], corrected as blocks of the buffer change */
  for (int it = 0; it < o->tune_iters; it++) {
    for (int64_t i = 0; i < mt * n; i++) D[i] = Wt[i] - hat[i];
    for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
      c0 = c1 - BUF > 0 ? c1 - BUF : 0;
      GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mt, (int)(c1 - c0), (int)n, (REAL)1, D, (int)n, H + c0,
           (int)n, (REAL)0, S, (int)BUF);
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < mt; r++) {
        REAL *h = hat + r * n, *d = D + r * n, *g = S + r * BUF;
        for (int64_t k = c1 / 8 - 1; k >= c0 / 8; k--) {
          int64_t j0 = 8 * k;
          const double *hi = f->Hkk_inv + k * 64;
          double x[8], q[8], dd[8];
          for (int t = 0; t < 8; t++) {
            double v = (double)h[j0 + t];
            for (int s = 0; s < 8; s++) v += (double)g[j0 - c0 + s] * hi[s * 8 + t];
            x[t] = v;
          }
          quant8(o, x, q, codes, codes2, (t0 + r) * nb + k);
          for (int t = 0; t < 8; t++) {
            dd[t] = (double)h[j0 + t] - q[t];
            d[j0 + t] = (REAL)((double)d[j0 + t] + dd[t]);
            h[j0 + t] = (REAL)q[t];
          }
          for (int t = 0; t < 8; t++) {
            if (dd[t] == 0) continue;
            const REAL *hr = H + (j0 + t) * n;
            for (int64_t j = c0; j < j0; j++) g[j - c0] = (REAL)((double)g[j - c0] + dd[t] * (double)hr[j]);
          }
        }
      }
    }
  }
}

static void SFX(ldlq_rows)(const e8q_ldl *f, const e8q_ldlq_opts *o, const REAL *L, const REAL *H, const double *W,
                           int64_t r0, int64_t r1, uint16_t *codes, void *codes2, double *What) {
  const int64_t n = f->n, T = E8Q_LDLQ_ROW_TILE;
  int64_t tmax = r1 - r0 < T ? r1 - r0 : T;
  REAL *Wt = e8q_malloc(sizeof(REAL) * (size_t)(tmax * n), "LDLQ tile weights");
  REAL *hat = e8q_malloc(sizeof(REAL) * (size_t)(tmax * n), "LDLQ tile result");
  REAL *prod = e8q_malloc(sizeof(REAL) * (size_t)(tmax * n), "LDLQ feedback");
  REAL *D = e8q_malloc(sizeof(REAL) * (size_t)(tmax * n), "LDLQ tune residual");
  REAL *S = e8q_malloc(sizeof(REAL) * (size_t)(tmax * E8Q_LDLQ_BUF), "LDLQ buffer");
  /* tiles aligned to absolute multiples of T, so any split at multiples of T sees the same tiles */
  for (int64_t a = r0; a < r1;) {
    int64_t b = (a / T + 1) * T;
    if (b > r1) b = r1;
    int64_t mt = b - a;
    for (int64_t i = 0; i < mt * n; i++) Wt[i] = (REAL)W[a * n + i];
    SFX(ldlq_tile)(f, o, L, H, a, mt, Wt, hat, prod, D, S, codes, codes2);
    if (What)
      for (int64_t i = 0; i < mt * n; i++) What[a * n + i] = (double)hat[i];
    a = b;
  }
  free(Wt), free(hat), free(prod), free(D), free(S);
}
