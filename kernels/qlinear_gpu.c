/* kernels/qlinear_gpu.c: C side of the CUDA quantized linear (see qlinear_gpu.h): owns the
 * fallback decisions and turns the launchers' error text into fatal errors. */
#include "kernels/qlinear_gpu.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"

#ifdef E8Q_HAVE_CUDA
/* kernels/qlinear_cuda.cu */
int e8q_cu_qlinear_create(const e8q_qlinear *q, int device, void **out, char *err, size_t errlen);
void e8q_cu_qlinear_free(void *h);
int e8q_cu_qlinear_forward_host(void *h, int batch, const float *x, float *y, char *err, size_t errlen);
int e8q_cu_qlinear_forward_dev(void *h, int batch, const float *x, float *y, void *stream, char *err, size_t errlen);
int e8q_cu_qlinear_forward_keep_dev(void *h, int batch, const float *x, float *y, float *zk, void *stream, char *err,
                                    size_t errlen);
int e8q_cu_qlinear_backward_dev(void *h, int batch, const float *x, const float *zk, const float *dy, float *dx,
                                float *dSU, float *dSV, void *stream, char *err, size_t errlen);
int e8q_cu_qlinear_set_scales(void *h, const float *SU, const float *out_scale, char *err, size_t errlen);
#endif

struct e8q_qlinear_gpu {
  void *impl; /* e8q_cu_qlinear */
  int m, n;
  int device;
};

int e8q_qlinear_gpu_device(const e8q_qlinear_gpu *g) { return g->device; }

e8q_qlinear_gpu *e8q_qlinear_gpu_create(const e8q_qlinear *q, int device, const char **why_not) {
  static _Thread_local char reason[256];
#ifdef E8Q_HAVE_CUDA
  void *impl = NULL;
  if (e8q_cu_qlinear_create(q, device, &impl, reason, sizeof reason) != 0) {
    if (why_not) *why_not = reason;
    return NULL;
  }
  e8q_qlinear_gpu *g = e8q_calloc(1, sizeof *g, "GPU quantized linear");
  g->impl = impl;
  g->m = q->d.m;
  g->n = q->d.n;
  g->device = device;
  if (why_not) *why_not = NULL;
  return g;
#else
  (void)q;
  (void)device;
  snprintf(reason, sizeof reason, "e8q was built without CUDA");
  if (why_not) *why_not = reason;
  return NULL;
#endif
}

void e8q_qlinear_gpu_free(e8q_qlinear_gpu *g) {
  if (!g) return;
#ifdef E8Q_HAVE_CUDA
  e8q_cu_qlinear_free(g->impl);
#endif
  free(g);
}

void e8q_qlinear_forward_gpu(const e8q_qlinear *q, e8q_qlinear_gpu *g, int batch, const float *x, float *y) {
  if (!g) {
    e8q_qlinear_forward(q, batch, x, y);
    return;
  }
#ifdef E8Q_HAVE_CUDA
  char err[256];
  E8Q_CHECK(e8q_cu_qlinear_forward_host(g->impl, batch, x, y, err, sizeof err) == 0,
            "GPU quantized linear [%d x %d], batch %d: %s", g->m, g->n, batch, err);
#endif
}

void e8q_qlinear_forward_gpu_dev(e8q_qlinear_gpu *g, int batch, const float *x, float *y, void *stream) {
  E8Q_CHECK(g, "e8q_qlinear_forward_gpu_dev: no GPU layer (device buffers need e8q_qlinear_gpu_create)");
#ifdef E8Q_HAVE_CUDA
  char err[256];
  E8Q_CHECK(e8q_cu_qlinear_forward_dev(g->impl, batch, x, y, stream, err, sizeof err) == 0,
            "GPU quantized linear [%d x %d], batch %d: %s", g->m, g->n, batch, err);
#else
  (void)batch; (void)x; (void)y; (void)stream;
#endif
}

/* ---------------------------------------------------------------- fine-tuning */
void e8q_qlinear_forward_keep_gpu_dev(e8q_qlinear_gpu *g, int batch, const float *x, float *y, float *zk, void *stream) {
  E8Q_CHECK(g && zk, "e8q_qlinear_forward_keep_gpu_dev: needs a GPU layer and a zk buffer");
#ifdef E8Q_HAVE_CUDA
  char err[256];
  E8Q_CHECK(e8q_cu_qlinear_forward_keep_dev(g->impl, batch, x, y, zk, stream, err, sizeof err) == 0,
            "GPU quantized linear [%d x %d] (fine-tuning forward), batch %d: %s", g->m, g->n, batch, err);
#else
  (void)batch; (void)x; (void)y; (void)stream;
#endif
}

void e8q_qlinear_backward_gpu_dev(e8q_qlinear_gpu *g, int batch, const float *x, const float *zk, const float *dy,
                                  float *dx, float *dSU, float *dSV, void *stream) {
  E8Q_CHECK(g && dy && (x || !dSU) && (zk || !dSV),
            "e8q_qlinear_backward_gpu_dev: needs a GPU layer, dy, x for dSU and zk for dSV");
#ifdef E8Q_HAVE_CUDA
  char err[256];
  E8Q_CHECK(e8q_cu_qlinear_backward_dev(g->impl, batch, x, zk, dy, dx, dSU, dSV, stream, err, sizeof err) == 0,
            "GPU quantized linear [%d x %d] (backward), batch %d: %s", g->m, g->n, batch, err);
#else
  (void)batch; (void)dx; (void)stream;
#endif
}

void e8q_qlinear_gpu_set_scales(e8q_qlinear_gpu *g, const e8q_qlinear *q) {
  E8Q_CHECK(g && q->d.m == g->m && q->d.n == g->n, "e8q_qlinear_gpu_set_scales: layer [%d x %d] is not this GPU layer's",
            q->d.m, q->d.n);
#ifdef E8Q_HAVE_CUDA
  char err[256];
  E8Q_CHECK(e8q_cu_qlinear_set_scales(g->impl, q->d.SU, q->out_scale, err, sizeof err) == 0,
            "GPU quantized linear [%d x %d]: uploading the trained scales: %s", g->m, g->n, err);
#endif
}
