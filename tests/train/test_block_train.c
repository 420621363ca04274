/* tests/train/test_block_train.c: the block fine-tuning of worker/block_train.h and
 * worker/finetune.h.
 *
 * 1. The whole block's gradient, from e8q_block_train_forward/_backward (fp32: fused quantized
 *    kernels, BLAS, the kernels of transformer_grad.h), against central finite differences of a
 *    float64 block forward written here from the definitions: GQA (4 heads, 2 kv heads), odd T (5),
 *    2 sequences; qkv (3 pieces with their fuse scales) and down (n = 12, n_pad = 16) quantized
 *    with random E8P codes and real-valued SU/SV, o and upgate dense. Checked: d/dX, both norms,
 *    SU and SV of both quantized linears, the dense Wo and Wupgate. The float64 forward uses each
 *    quantized linear's dense equivalent diag(fs ⊙ SV) · B · diag(SU), B the float64 decode with
 *    unit scales (e8q_qlinear_dequant), so SU and SV can be perturbed there.
 *    Tolerance: |g - fd| <= 1e-4 (|fd| + rms(fd)) per entry. The central differences (h = 1e-5,
 *    double) are exact to ~1e-9; the bound measures the fp32 analytic chain a dozen ops deep plus
 *    the fused kernels (the VNNI core rounds its input to 24-bit fixed point); errors seen ~1e-6.
 *    The padding entries of dSU are exactly 0.
 * 2. A fine-tuning round on a tiny synthetic block (target: the block whose qkv has real-valued
 *    SV, trained: the same codes with sign SV) lowers the held-out MSE, keeps the best state, and
 *    resumed from the state checkpointed after epoch 1 gives the same bits as uninterrupted. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/qlinear.h"
#include "kernels/transformer_grad.h"
#include "ref64.h"
#include "testutil.h"
#include "worker/block_train.h"
#include "worker/finetune.h"
#include "worker/forward.h"

static uint64_t g_seed;

enum { NSEQ = 2, T = 5, D = 16, NH = 4, NKV = 2, HD = 4, H = 12 };
#define LD ((NH + 2 * NKV) * HD) /* qkv rows: 32 */
#define QD (NH * HD)             /* 16 */
#define N (NSEQ * T)
static const double EPS = 1e-5, THETA = 10000.0;

/* ---------------------------------------------------------------- helpers */
static e8q_config tiny_config(void) { return tiny_config_make(D, H, 1, NH, NKV, HD, 32, THETA, EPS); }

/* ---------------------------------------------------------------- a quantized linear with random codes */
typedef struct {
  e8q_qlinear q;
  uint16_t *codes; /* [m, n_pad/8] */
  float *SU;       /* [n_pad] */
  float *SV;       /* [m] */
  float fs[3];
  int rows[3];
  int n_pieces;
  double *B;       /* [m, n] float64 decode with unit SU, SV, fuse scales */
} qlin;

static void qlin_init(qlin *L, t_rng *r, int m, int n, int n_pieces, const int *rows) {
  memset(L, 0, sizeof *L);
  int n_pad = (n + 7) / 8 * 8, nc = n_pad / 8;
  L->codes = malloc(sizeof(uint16_t) * (size_t)m * nc);
  for (int i = 0; i < m * nc; i++) L->codes[i] = (uint16_t)(t_rng_u64(r) & 0xffff);
  L->SU = malloc(sizeof(float) * n_pad);
  L->SV = malloc(sizeof(float) * m);
  for (int i = 0; i < n_pad; i++) L->SU[i] = (float)((t_rng_u64(r) & 1 ? 1 : -1) * (1.0 + 0.2 * t_rng_normal(r)));
  for (int i = 0; i < m; i++) L->SV[i] = (float)((t_rng_u64(r) & 1 ? 1 : -1) * (1.0 + 0.2 * t_rng_normal(r)));
  L->n_pieces = n_pieces;
  for (int k = 0; k < n_pieces; k++) {
    L->fs[k] = (float)(0.8 + 0.4 * t_rng_uniform(r));
    L->rows[k] = rows ? rows[k] : m;
  }
  e8q_qlinear_desc d;
  memset(&d, 0, sizeof d);
  d.m = m;
  d.n = n;
  d.n_pad = n_pad;
  d.codebook = E8Q_CB_E8P12;
  d.codes = L->codes;
  d.SU = L->SU;
  d.SV = L->SV;
  d.Wscale = (float)(0.7 / sqrt((double)n));
  d.n_pieces = n_pieces;
  d.piece_rows = n_pieces > 1 ? L->rows : NULL;
  d.fuse_scales = L->fs;
  d.K_in = e8q_had_choose_K(n_pad);
  d.K_out = e8q_had_choose_K(m);
  assert_int_equal(d.K_in, 1);
  assert_int_equal(d.K_out, 1);
  e8q_qlinear_init(&L->q, &d, "test linear");
  /* B: the same codes with unit scales */
  float *one = malloc(sizeof(float) * (size_t)(m > n_pad ? m : n_pad));
  for (int i = 0; i < (m > n_pad ? m : n_pad); i++) one[i] = 1.0f;
  e8q_qlinear_desc du = d;
  du.SU = one;
  du.SV = one;
  du.fuse_scales = NULL;
  e8q_qlinear qu;
  e8q_qlinear_init(&qu, &du, "test linear (unit scales)");
  L->B = malloc(sizeof(double) * (size_t)m * n);
  e8q_qlinear_dequant(&qu, L->B);
  e8q_qlinear_free(&qu);
  free(one);
}

static void qlin_free(qlin *L) {
  e8q_qlinear_free(&L->q);
  free(L->codes);
  free(L->SU);
  free(L->SV);
  free(L->B);
}

/* the test block: norms w1, w2; quantized qkv; dense o and up|gate; down quantized (Ldown) or
 * dense (wdown) */
static e8q_block block_make(float *w1, float *w2, qlin *Lqkv, float *wo, float *wug, float *wdown, qlin *Ldown) {
  e8q_block b;
  memset(&b, 0, sizeof b);
  b.attn_norm = w1;
  b.ffn_norm = w2;
  b.qkv = (e8q_linear){.m = LD, .n = D, .w = NULL, .q = &Lqkv->q};
  b.o = (e8q_linear){.m = D, .n = QD, .w = wo, .q = NULL};
  b.upgate = (e8q_linear){.m = 2 * H, .n = D, .w = wug, .q = NULL};
  b.down = (e8q_linear){.m = D, .n = H, .w = wdown, .q = Ldown ? &Ldown->q : NULL};
  return b;
}

/* ---------------------------------------------------------------- float64 block forward */
/* the dense equivalent of a quantized linear: W[r, c] = fs(r) SV[r] B[r, c] SU[c] */
static void qdense_d(const qlin *L, int m, int n, const double *SU, const double *SV, double *W) {
  int piece = 0, left = L->n_pieces > 1 ? L->rows[0] : m;
  for (int r = 0; r < m; r++) {
    while (left == 0) left = L->rows[++piece];
    for (int c = 0; c < n; c++) W[(size_t)r * n + c] = L->fs[piece] * SV[r] * L->B[(size_t)r * n + c] * SU[c];
    left--;
  }
}

typedef struct {
  const qlin *qkv, *down;
  double *x, *w1, *w2, *SUqkv, *SVqkv, *SUdown, *SVdown, *wo, *wug, *tgt;
} block_d;

static double block_loss(void *vc) {
  block_d *b = vc;
  static double Wqkv[LD * D], Wdown[D * H], xn[N * D], qkv[N * LD], att[N * QD], x1[N * D], ug[N * 2 * H], h[N * H],
      proj[N * D];
  qdense_d(b->qkv, LD, D, b->SUqkv, b->SVqkv, Wqkv);
  qdense_d(b->down, D, H, b->SUdown, b->SVdown, Wdown);
  rmsnorm_d(N, D, b->x, b->w1, EPS, xn);
  linear_d(N, LD, D, xn, Wqkv, qkv);
  rope_d(NSEQ, T, 0, NH + NKV, HD, THETA, qkv, LD); /* q and k heads, positions 0..T-1 */
  attention_d(NSEQ, T, NH, NKV, HD, qkv, att);
  linear_d(N, D, QD, att, b->wo, proj);
  for (int i = 0; i < N * D; i++) x1[i] = b->x[i] + proj[i];
  rmsnorm_d(N, D, x1, b->w2, EPS, xn);
  linear_d(N, 2 * H, D, xn, b->wug, ug);
  for (int t = 0; t < N; t++)
    for (int i = 0; i < H; i++) {
      double u = ug[t * 2 * H + i], g = ug[t * 2 * H + H + i];
      h[t * H + i] = g / (1.0 + exp(-g)) * u;
    }
  linear_d(N, D, H, h, Wdown, proj);
  double L = 0.0;
  for (int i = 0; i < N * D; i++) L += (x1[i] + proj[i] - b->tgt[i]) * (x1[i] + proj[i] - b->tgt[i]);
  return L;
}

/* ---------------------------------------------------------------- 1. gradients */
static void test_block_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 1};
  e8q_config cfg = tiny_config();
  const int qkv_rows[3] = {QD, NKV * HD, NKV * HD};
  qlin Lqkv, Ldown;
  qlin_init(&Lqkv, &r, LD, D, 3, qkv_rows);
  qlin_init(&Ldown, &r, D, H, 1, NULL);
  float *x = rand_vec(&r, N * D, 1.0), *w1 = rand_vec(&r, D, 0.3), *w2 = rand_vec(&r, D, 0.3);
  for (int i = 0; i < D; i++) w1[i] += 1.0f, w2[i] += 1.0f;
  float *wo = rand_vec(&r, D * QD, 1.0 / sqrt(QD)), *wug = rand_vec(&r, 2 * H * D, 1.0 / sqrt(D));
  float *tgt = rand_vec(&r, N * D, 1.0);
  e8q_block blk = block_make(w1, w2, &Lqkv, wo, wug, NULL, &Ldown);

  float *y = malloc(sizeof(float) * N * D), *dx = malloc(sizeof(float) * N * D);
  e8q_bt_saved sv = {0};
  e8q_block_train_forward(&blk, &cfg, NSEQ, T, x, y, &sv);
  /* the training forward is the pipeline's block forward */
  float *yf = malloc(sizeof(float) * N * D);
  memcpy(yf, x, sizeof(float) * N * D);
  e8q_block_forward(&blk, &cfg, NSEQ, T, yf, NULL, NULL);
  for (int i = 0; i < N * D; i++) T_NEAR(y[i], yf[i], 1e-5 * (1 + fabs(yf[i])), "training forward vs e8q_block_forward");
  double L = e8q_mse(N * D, y, tgt, y); /* y <- dL/dy */
  e8q_bt_grads gr;
  memset(&gr, 0, sizeof gr);
  gr.d_attn_norm = calloc(D, sizeof(float));
  gr.d_ffn_norm = calloc(D, sizeof(float));
  gr.dSU[0] = calloc(D, sizeof(float));
  gr.dSV[0] = calloc(LD, sizeof(float));
  gr.dW[1] = calloc(D * QD, sizeof(float));
  gr.dW[2] = calloc(2 * H * D, sizeof(float));
  gr.dSU[3] = calloc(16, sizeof(float));
  gr.dSV[3] = calloc(D, sizeof(float));
  e8q_block_train_backward(&blk, &cfg, &sv, y, dx, &gr);
  for (int i = H; i < 16; i++) assert_true(gr.dSU[3][i] == 0.0f); /* padding columns */

  block_d b = {&Lqkv, &Ldown, to_double(x, N * D), to_double(w1, D), to_double(w2, D), to_double(Lqkv.SU, D),
               to_double(Lqkv.SV, LD), to_double(Ldown.SU, H), to_double(Ldown.SV, D), to_double(wo, D * QD),
               to_double(wug, 2 * H * D), to_double(tgt, N * D)};
  double Ld = block_loss(&b);
  T_NEAR(L, Ld, 1e-4 * Ld, "block loss, fp32 training forward vs float64 composition");
  const double rtol = 1e-4;
  fd_check("d/dX", block_loss, &b, b.x, N * D, dx, (fd_opts){.rtol = rtol});
  fd_check("d/d attn_norm", block_loss, &b, b.w1, D, gr.d_attn_norm, (fd_opts){.rtol = rtol});
  fd_check("d/d ffn_norm", block_loss, &b, b.w2, D, gr.d_ffn_norm, (fd_opts){.rtol = rtol});
  fd_check("d/d SU qkv (quantized)", block_loss, &b, b.SUqkv, D, gr.dSU[0], (fd_opts){.rtol = rtol});
  fd_check("d/d SV qkv (quantized)", block_loss, &b, b.SVqkv, LD, gr.dSV[0], (fd_opts){.rtol = rtol});
  fd_check("d/d SU down (n 12, n_pad 16)", block_loss, &b, b.SUdown, H, gr.dSU[3], (fd_opts){.rtol = rtol});
  fd_check("d/d SV down", block_loss, &b, b.SVdown, D, gr.dSV[3], (fd_opts){.rtol = rtol});
  fd_check("d/d Wo (dense)", block_loss, &b, b.wo, D * QD, gr.dW[1], (fd_opts){.rtol = rtol});
  fd_check("d/d Wupgate (dense)", block_loss, &b, b.wug, 2 * H * D, gr.dW[2], (fd_opts){.rtol = rtol});

  double *bd[] = {b.x, b.w1, b.w2, b.SUqkv, b.SVqkv, b.SUdown, b.SVdown, b.wo, b.wug, b.tgt};
  for (size_t i = 0; i < sizeof bd / sizeof bd[0]; i++) free(bd[i]);
  float *gs[] = {gr.d_attn_norm, gr.d_ffn_norm, gr.dSU[0], gr.dSV[0], gr.dW[1], gr.dW[2], gr.dSU[3], gr.dSV[3]};
  for (size_t i = 0; i < sizeof gs / sizeof gs[0]; i++) free(gs[i]);
  e8q_bt_saved_free(&sv);
  free(x), free(w1), free(w2), free(wo), free(wug), free(tgt), free(y), free(yf), free(dx);
  qlin_free(&Lqkv);
  qlin_free(&Ldown);
}

/* ---------------------------------------------------------------- 2. a round */
enum { FT_SEQ = 16, FT_VALID = 4, FT_EPOCHS = 4 };

typedef struct {
  int calls;
  e8q_ft_state snap; /* the state after epoch 1 (as a checkpoint would hold it) */
} hook_ctx;

static void snap_copy(e8q_ft_state *dst, const e8q_ft_state *src) {
  float *p = dst->p, *best = dst->best, *m = dst->m, *v = dst->v;
  *dst = *src;
  dst->p = p, dst->best = best, dst->m = m, dst->v = v;
  memcpy(p, src->p, sizeof(float) * src->n);
  memcpy(best, src->best, sizeof(float) * src->n);
  memcpy(m, src->m, sizeof(float) * src->n);
  memcpy(v, src->v, sizeof(float) * src->n);
}

static void on_epoch(void *vc, const e8q_ft_state *S) {
  hook_ctx *h = vc;
  h->calls++;
  if (S->epoch == 1 && !S->done) snap_copy(&h->snap, S);
}

/* the trained block: qkv quantized with SU/SV in S, the rest dense in S */
static void bind_round(e8q_ft_state *S, const e8q_config *cfg, const qlin *L, e8q_qlinear *q, e8q_block *tb) {
  memset(tb, 0, sizeof *tb);
  e8q_qlinear_desc d = L->q.d;
  d.SU = S->p + S->off_SU[0];
  d.SV = S->p + S->off_SV[0];
  e8q_qlinear_init(q, &d, "trained qkv");
  tb->qkv = (e8q_linear){.m = LD, .n = D, .w = NULL, .q = q};
  e8q_ft_bind(S, cfg, tb);
}

static void test_ft_round(void **state) {
  (void)state;
  t_rng r = {g_seed + 2};
  e8q_config cfg = tiny_config();
  const int qkv_rows[3] = {QD, NKV * HD, NKV * HD};
  qlin Lqkv; /* the original block's qkv: codes with real-valued SU, SV */
  qlin_init(&Lqkv, &r, LD, D, 3, qkv_rows);
  float *w1 = rand_vec(&r, D, 0.1), *w2 = rand_vec(&r, D, 0.1);
  for (int i = 0; i < D; i++) w1[i] += 1.0f, w2[i] += 1.0f;
  float *wo = rand_vec(&r, D * QD, 1.0 / sqrt(QD)), *wug = rand_vec(&r, 2 * H * D, 1.0 / sqrt(D));
  float *wdown = rand_vec(&r, D * H, 1.0 / sqrt(H));
  e8q_block orig = block_make(w1, w2, &Lqkv, wo, wug, wdown, NULL);
  const size_t TD = (size_t)T * D;
  float *X = rand_vec(&r, FT_SEQ * TD, 1.0), *Y = malloc(sizeof(float) * FT_SEQ * TD);
  memcpy(Y, X, sizeof(float) * FT_SEQ * TD);
  for (int s = 0; s < FT_SEQ; s++) e8q_block_forward(&orig, &cfg, 1, T, Y + s * TD, NULL, NULL);

  /* the start of the round: the same codes, SV rounded to signs (what quantization gives) */
  e8q_ft_state S;
  e8q_ft_state_init(&S, &cfg, 1);
  memcpy(S.p + S.off_SU[0], Lqkv.SU, sizeof(float) * D);
  for (int i = 0; i < LD; i++) S.p[S.off_SV[0] + i] = Lqkv.SV[i] > 0 ? 1.0f : -1.0f;
  memcpy(S.p + S.off_attn, w1, sizeof(float) * D);
  memcpy(S.p + S.off_ffn, w2, sizeof(float) * D);
  memcpy(S.p + S.off_W[1], wo, sizeof(float) * D * QD);
  memcpy(S.p + S.off_W[2], wug, sizeof(float) * 2 * H * D);
  memcpy(S.p + S.off_W[3], wdown, sizeof(float) * D * H);
  e8q_ft_state S2; /* the resumed run: a copy of the fresh state, overwritten by the snapshot */
  e8q_ft_state_init(&S2, &cfg, 1);
  snap_copy(&S2, &S);
  hook_ctx hc = {0};
  e8q_ft_state_init(&hc.snap, &cfg, 1);

  e8q_qlinear q, q2;
  e8q_block tb, tb2;
  bind_round(&S, &cfg, &Lqkv, &q, &tb);
  e8q_ft_opts o = {
      .hp = {.epochs = FT_EPOCHS, .lr = 1e-3, .susv_lr = 1e-2, .batch = 4, .early_stop = 3, .seed = 11},
      .layer = 0,
      .group = 0};
  e8q_ft_hooks hk = {on_epoch, &hc};
  e8q_ft_round(&o, NULL, &cfg, &tb, &S, T, FT_SEQ - FT_VALID, FT_VALID, 0, FT_SEQ, X, Y, &hk);
  print_message("  held-out MSE %.6g -> %.6g after %d epochs (%ld Adam steps)\n", S.init_loss, S.best_loss, S.epoch,
                S.step);
  assert_true(S.done);
  assert_int_equal(hc.calls, S.epoch + 1);
  assert_true(S.best_loss < 0.9 * S.init_loss);
  assert_int_equal(S.step, (long)S.epoch * 3);
  assert_memory_equal(S.p, S.best, sizeof(float) * S.n);
  /* tb now computes the best state: its held-out loss is the recorded best */
  double vl = e8q_ft_loss(NULL, &cfg, &tb, T, FT_SEQ - FT_VALID, FT_SEQ, 0, FT_SEQ, X, Y);
  assert_true(vl == S.best_loss);

  /* resumed from the state after epoch 1: the same bits */
  assert_int_equal(hc.snap.epoch, 1);
  snap_copy(&S2, &hc.snap);
  bind_round(&S2, &cfg, &Lqkv, &q2, &tb2);
  e8q_ft_refresh(&S2, &tb2);
  e8q_ft_round(&o, NULL, &cfg, &tb2, &S2, T, FT_SEQ - FT_VALID, FT_VALID, 0, FT_SEQ, X, Y, NULL);
  assert_true(S2.done);
  assert_int_equal(S2.epoch, S.epoch);
  assert_memory_equal(S2.p, S.p, sizeof(float) * S.n);
  assert_true(S2.best_loss == S.best_loss && S2.init_loss == S.init_loss);

  e8q_qlinear_free(&q);
  e8q_qlinear_free(&q2);
  e8q_ft_state_free(&S);
  e8q_ft_state_free(&S2);
  e8q_ft_state_free(&hc.snap);
  qlin_free(&Lqkv);
  free(w1), free(w2), free(wo), free(wug), free(wdown), free(X), free(Y);
}

int main(void) {
  g_seed = t_fresh_seed("test_block_train");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_block_grad),
      cmocka_unit_test(test_ft_round),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
