/* kernels/qlinear_amx.c: the AMX-INT8 batched core (kernels/qlinear_amx.h). */
#include "kernels/qlinear_amx.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels/qlinear_avx2_decode.h" /* the int8 decode tables */
#include "kernels/qlinear_vnni.h"       /* the input digits */

#define AMX __attribute__((target("amx-tile,amx-int8")))
#define AMX_K 64                /* int8 per tile row: weights of a k-block */
#define AMX_R 16                /* tile rows: tokens (A, C) or k/4 (B); rows of a group (C columns) */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* ---------------------------------------------------------------- availability */
static int amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void) {
  unsigned a, b, c, d;
  if (getenv("E8Q_NO_AMX") && *getenv("E8Q_NO_AMX") && strcmp(getenv("E8Q_NO_AMX"), "0")) return;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
  if (!((d >> 24) & 1) || !((d >> 25) & 1)) return; /* AMX-TILE, AMX-INT8 */
  if (!e8q_cpu_has_avx2()) return;                   /* the decode tables */
  amx_ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

int e8q_qlinear_amx_available(void) {
  pthread_once(&amx_once, amx_probe);
  return amx_ok;
}

/* ---------------------------------------------------------------- input digits */
/* one token's digits (kernels/qlinear_vnni.h: e8q_digits3, nearbyint rounding as lrint's) into
 * the three planes (plane stride ps) */
__attribute__((target("avx512f,avx512vl,avx512bw"))) static void digits_row(const float *u, int np, double inv,
                                                                            int8_t *d, size_t ps) {
#pragma omp simd
  for (int k = 0; k < np; k++) {
    int32_t dg[3];
    e8q_digits3((int32_t)nearbyint((double)u[k] * inv), dg);
    d[k] = (int8_t)dg[0];
    d[ps + k] = (int8_t)dg[1];
    d[2 * ps + k] = (int8_t)dg[2];
  }
}

/* D [3][Bp][KP] int8: the three balanced digits of each token's fixed-point copy (zeros past
 * batch and n_pad); scale [batch] max|u| / E8Q_DIGITS_XMAX (0 for a zero column). 0 on a non-finite. */
static int digits_make(int batch, int np, int Bp, int KP, const float *u, int8_t *D, double *scale) {
  int finite = 1;
  memset(D, 0, (size_t)3 * Bp * KP);
#pragma omp parallel for schedule(static) reduction(&& : finite)
  for (int b = 0; b < batch; b++) {
    const float *ub = u + (size_t)b * np;
    float mx = 0;
    for (int k = 0; k < np; k++) {
      const float a = fabsf(ub[k]);
      if (!(a <= FLT_MAX)) finite = 0;
      mx = a > mx ? a : mx;
    }
    scale[b] = (double)mx / E8Q_DIGITS_XMAX;
    if (!finite || mx == 0) continue;
    digits_row(ub, np, E8Q_DIGITS_XMAX / (double)mx, D + (size_t)b * KP, (size_t)Bp * KP);
  }
  return finite;
}

/* ---------------------------------------------------------------- weights as B tiles */
/* W [KP/64][16][16][4] int8 of rows g*16 .. g*16+15 (zeros past m and n_pad): stage 1 (4·E8P),
 * or stage 2 (RVQ4: 4·E8P of codes2; RVQ3: 2·E81B of codes2) */
static void group_pack(const e8q_qlinear *q, int g, int stage, int KP, int8_t *W) {
  const int m = q->d.m, nc = q->nc;
  memset(W, 0, (size_t)AMX_R * KP);
  for (int r = 0; r < AMX_R && g * AMX_R + r < m; r++) {
    const size_t row = (size_t)(g * AMX_R + r) * nc;
    for (int j = 0; j < nc; j++) {
      const int8_t *w8;
      if (stage == 0)
        w8 = e8q_avx2_e8p_q4[q->d.codes[row + j]];
      else if (q->d.codebook == E8Q_CB_E8P12RVQ4B)
        w8 = e8q_avx2_e8p_q4[((const uint16_t *)q->d.codes2)[row + j]];
      else
        w8 = e8q_avx2_e81b_h2[((const uint8_t *)q->d.codes2)[row + j]];
      /* weights 8j..8j+7: k-block 8j / 64, rows 2(j % 8) and 2(j % 8) + 1 of its B tile, 4 each */
      int8_t *dst = W + (size_t)(j / 8) * AMX_R * AMX_K + (size_t)(2 * (j % 8)) * AMX_K + r * 4;
      memcpy(dst, w8, 4);
      memcpy(dst + AMX_K, w8 + 4, 4);
    }
  }
}

/* ---------------------------------------------------------------- tiles */
typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((aligned(64))) amx_cfg; /* LDTILECFG faulted on one in a leaf function's red zone */

/* C0-2 (tiles 0-2), A0-2 (3-5), B (6): 16 rows x 64 bytes each; one config for every thread */
static const amx_cfg tile_cfg = {
    .palette = 1,
    .colsb = {AMX_K, AMX_K, AMX_K, AMX_K, AMX_K, AMX_K, AMX_K},
    .rows = {AMX_R, AMX_R, AMX_R, AMX_R, AMX_R, AMX_R, AMX_R},
};

static AMX void tiles_config(void) { _tile_loadconfig(&tile_cfg); }

/* Y[d] [16 tokens][16 rows] int32 = digits plane d of tokens tb*16.. times the group's weights */
static AMX void block_dot(const int8_t *D, int Bp, int KP, int tb, const int8_t *W, int32_t Y[3][AMX_R][AMX_R]) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  const size_t plane = (size_t)Bp * KP;
  const int8_t *a = D + (size_t)tb * AMX_R * KP;
  for (int kb = 0; kb < KP / AMX_K; kb++) {
    _tile_loadd(6, W + (size_t)kb * AMX_R * AMX_K, AMX_K);
    _tile_loadd(3, a + (size_t)kb * AMX_K, KP);
    _tile_loadd(4, a + plane + (size_t)kb * AMX_K, KP);
    _tile_loadd(5, a + 2 * plane + (size_t)kb * AMX_K, KP);
    _tile_dpbssd(0, 3, 6);
    _tile_dpbssd(1, 4, 6);
    _tile_dpbssd(2, 5, 6);
  }
  _tile_stored(0, Y[0], AMX_R * sizeof(int32_t));
  _tile_stored(1, Y[1], AMX_R * sizeof(int32_t));
  _tile_stored(2, Y[2], AMX_R * sizeof(int32_t));
}

static AMX void tiles_release(void) { _tile_release(); }

/* acc (=, or += when add) (Y0 + 256 Y1 + 65536 Y2) · unit: the digit sums recombined in double,
 * exactly (|Y| < 2^31, so the sum stays below 2^53), then one scaling */
__attribute__((target("avx512f"), noinline)) static void combine(int32_t Y[3][AMX_R][AMX_R], double unit, int add,
                                                                  double acc[AMX_R * AMX_R]) {
  const int32_t *y0 = &Y[0][0][0], *y1 = &Y[1][0][0], *y2 = &Y[2][0][0];
#pragma omp simd
  for (int i = 0; i < AMX_R * AMX_R; i++) {
    const double v = ((double)y0[i] + 256.0 * (double)y1[i] + 65536.0 * (double)y2[i]) * unit;
    acc[i] = add ? acc[i] + v : v;
  }
}

/* ---------------------------------------------------------------- entry */
int e8q_qlinear_amx_matmul(const e8q_qlinear *q, int batch, const float *u, float *z) {
  E8Q_CHECK(e8q_qlinear_amx_available(), "e8q_qlinear_amx_matmul: AMX is not available to this process");
  E8Q_CHECK(q->d.n_pad <= E8Q_QLINEAR_AMX_MAX_NPAD, "e8q_qlinear_amx_matmul: n_pad %d beyond the int32 bound %d",
            q->d.n_pad, E8Q_QLINEAR_AMX_MAX_NPAD);
  e8q_avx2_tables_init();
  const int m = q->d.m, np = q->d.n_pad, KP = (np + AMX_K - 1) / AMX_K * AMX_K;
  const int Bp = (batch + AMX_R - 1) / AMX_R * AMX_R, groups = (m + AMX_R - 1) / AMX_R;
  const int stages = q->d.codebook == E8Q_CB_E8P12 ? 1 : 2;
  int8_t *D = e8q_alloc_aligned((size_t)3 * Bp * KP, "AMX input digits"); /* [3][Bp][KP] */
  double *scale = e8q_malloc(sizeof(double) * (size_t)batch, "AMX input scales"); /* [batch] */
  if (!digits_make(batch, np, Bp, KP, u, D, scale)) {
    free(D);
    free(scale);
    return 0;
  }
  /* units: stage 1 in quarters; stage 2 in quarters (RVQ4) or halves (RVQ3), over resid_scale */
  const double unit[2] = {0.25, (q->d.codebook == E8Q_CB_E8P12RVQ3B ? 0.5 : 0.25) / (double)q->resid_scale};
#pragma omp parallel
  {
    tiles_config();
    int8_t *W = e8q_alloc_aligned((size_t)stages * AMX_R * KP, "AMX weight tiles"); /* [stages][KP/64][16][64] */
    int32_t(*Y)[AMX_R][AMX_R] = e8q_alloc_aligned(sizeof(int32_t) * 3 * AMX_R * AMX_R, "AMX sums");
#pragma omp for schedule(static)
    for (int g = 0; g < groups; g++) {
      for (int s = 0; s < stages; s++) group_pack(q, g, s, KP, W + (size_t)s * AMX_R * KP);
      for (int tb = 0; tb < Bp / AMX_R; tb++) {
        double acc[AMX_R * AMX_R];
        for (int s = 0; s < stages; s++) {
          block_dot(D, Bp, KP, tb, W + (size_t)s * AMX_R * KP, Y);
          combine(Y, unit[s], s > 0, acc);
        }
        for (int i = 0; i < AMX_R && tb * AMX_R + i < batch; i++) {
          const int b = tb * AMX_R + i;
          for (int j = 0; j < AMX_R && g * AMX_R + j < m; j++)
            z[(size_t)b * m + g * AMX_R + j] = (float)(acc[i * AMX_R + j] * scale[b]);
        }
      }
    }
    free(W);
    free(Y);
    tiles_release();
  }
  free(D);
  free(scale);
  return 1;
}

#else /* not x86-64 GCC: never available */
int e8q_qlinear_amx_available(void) { return 0; }
int e8q_qlinear_amx_matmul(const e8q_qlinear *q, int batch, const float *u, float *z) {
  (void)q, (void)batch, (void)u, (void)z;
  E8Q_FATAL("e8q_qlinear_amx_matmul: AMX is not available on this build");
}
#endif
