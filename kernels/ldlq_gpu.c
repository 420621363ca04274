/* kernels/ldlq_gpu.c: C side of the CUDA LDLQ (kernels/ldlq_gpu.h): the fallback decisions, the
 * codes2 width, and fatal errors from the launcher's text. */
#include "kernels/ldlq_gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/e8p.h"

#ifdef E8Q_HAVE_CUDA
#include "kernels/cuda_libs.h"
#endif

#ifdef E8Q_HAVE_CUDA
/* kernels/ldlq_cuda.cu */
int e8q_cu_ldlq_create(int device, const e8q_e8p_enc_tables *T, int64_t n, const double *L, const double *H,
                       const double *Hkk_inv, void **out, char *err, size_t errlen);
void e8q_cu_ldlq_free(void *h);
int e8q_cu_ldlq_rows(void *h, int cb, int feedback, int tune_iters, const double *W, int64_t rows, uint16_t *c1s,
                     uint16_t *c2s, double *What, char *err, size_t errlen);
#endif

struct e8q_ldlq_gpu {
  void *impl; /* e8q_cu_ldlq */
  int64_t n;
};

e8q_ldlq_gpu *e8q_ldlq_gpu_create(int device, const e8q_ldl *f, const char **why_not) {
  static _Thread_local char reason[256];
  if (why_not) *why_not = reason;
#ifdef E8Q_HAVE_CUDA
  if (f->prec != E8Q_PREC_F64 || !f->L || !f->H) {
    snprintf(reason, sizeof reason, "the CUDA LDLQ needs a float64 factorisation");
    return NULL;
  }
  const char *lib_why = NULL;
  if (!e8q_cuda_libs_load(&lib_why)) {
    snprintf(reason, sizeof reason, "%s", lib_why);
    return NULL;
  }
  e8q_e8p_enc_tables *T = e8q_malloc(sizeof *T, "encoder tables");
  e8q_e8p_enc_tables_fill(T);
  void *impl = NULL;
  const int rc = e8q_cu_ldlq_create(device, T, f->n, f->L, f->H, f->Hkk_inv, &impl, reason, sizeof reason);
  free(T);
  if (rc) return NULL;
  e8q_ldlq_gpu *g = e8q_calloc(1, sizeof *g, "GPU LDLQ");
  g->impl = impl;
  g->n = f->n;
  if (why_not) *why_not = NULL;
  return g;
#else
  (void)device;
  (void)f;
  snprintf(reason, sizeof reason, "e8q was built without CUDA");
  return NULL;
#endif
}

void e8q_ldlq_gpu_free(e8q_ldlq_gpu *g) {
  if (!g) return;
#ifdef E8Q_HAVE_CUDA
  e8q_cu_ldlq_free(g->impl);
#endif
  free(g);
}

void e8q_ldlq_gpu_rows(e8q_ldlq_gpu *g, const e8q_ldlq_opts *o, const double *W, int64_t rows, uint16_t *codes,
                       void *codes2, double *What) {
  E8Q_CHECK(g, "e8q_ldlq_gpu_rows: no GPU LDLQ (e8q_ldlq_gpu_create returned NULL: use e8q_ldlq_rows)");
  E8Q_CHECK(o->noe8_bits == 0, "e8q_ldlq_gpu_rows: the noe8 ablation runs on the CPU");
#ifdef E8Q_HAVE_CUDA
  const int64_t nb = g->n / 8;
  const int c2b = e8q_cb_traits(o->cb)->codes2_bytes;
  uint16_t *c1 = codes ? codes : e8q_malloc(sizeof(uint16_t) * (size_t)(rows * nb), "GPU LDLQ codes");
  uint16_t *c2 = e8q_malloc(sizeof(uint16_t) * (size_t)(rows * nb), "GPU LDLQ second codes");
  double *wh = What ? What : e8q_malloc(sizeof(double) * (size_t)(rows * g->n), "GPU LDLQ weights");
  char err[256];
  E8Q_CHECK(e8q_cu_ldlq_rows(g->impl, o->cb, o->feedback, o->tune_iters, W, rows, c1, c2, wh, err, sizeof err) == 0,
            "GPU LDLQ [%lld x %lld] (%s): %s", (long long)rows, (long long)g->n, e8q_cb_name(o->cb), err);
  for (int64_t i = 0; codes2 && i < rows * nb; i++) {
    if (c2b == 2) ((uint16_t *)codes2)[i] = c2[i];
    else if (c2b == 1) ((uint8_t *)codes2)[i] = (uint8_t)c2[i];
  }
  if (c1 != codes) free(c1);
  if (wh != What) free(wh);
  free(c2);
#else
  (void)W; (void)rows; (void)codes; (void)codes2; (void)What;
#endif
}
