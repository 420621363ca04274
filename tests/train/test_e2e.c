/* tests/train/test_e2e.c: end-to-end fine-tuning (worker/finetune_e2e.h).
 *
 * 1. The gradient of a whole tiny model's top-k cross-entropy (2 blocks, every linear quantized
 *    with random E8P codes, real-valued SU/SV and fuse scales; GQA 4/2; T 6, 5 scored positions;
 *    untied lm_head; k 8 of a vocabulary of 32), from e8q_e2e_seq_grad (fp32: fused kernels, the
 *    block backward recomputed from saved inputs, the head), against central finite differences
 *    of a float64 forward written here from the definitions. Checked: SU and SV of block 0's qkv
 *    (the deepest: every later op is in its chain), SV of block 1's down, block 0's attn_norm,
 *    block 1's ffn_norm, the final norm and rows of lm_head. The quantized linears enter the
 *    float64 model as diag(fs ⊙ SV) · B · diag(SU), B the float64 decode with unit scales.
 *    Tolerance: |g - fd| <= 1e-4 (|fd| + rms(fd)) per entry, as for one block (fp32 chain two
 *    blocks deep plus the head; the central differences, h = 1e-5, are exact to ~1e-9); errors
 *    seen ~3e-7 (AVX-512) to ~6e-7 (AVX2).
 * 2. Training: the student has the teacher's codes with SV rounded to signs; targets are the
 *    teacher's top-k next-token distributions. One epoch lowers the held-out CE; the best state
 *    is kept; resumed from the state after epoch 1, the run ends with the same bits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/qlinear.h"
#include "ref64.h"
#include "testutil.h"
#include "worker/finetune.h"
#include "worker/finetune_e2e.h"
#include "worker/forward.h"

static uint64_t g_seed;

enum { L = 2, D = 16, NH = 4, NKV = 2, HD = 4, H = 16, V = 32, K = 8 };
#define LD ((NH + 2 * NKV) * HD) /* qkv rows: 32 */
#define QD (NH * HD)             /* 16 */
static const double EPS = 1e-5, THETA = 10000.0;

/* ---------------------------------------------------------------- helpers */
static e8q_config tiny_config(void) { return tiny_config_make(D, H, L, NH, NKV, HD, V, THETA, EPS); }

static void shape_of(int g, int *m, int *n) {
  static const int M[4] = {LD, D, 2 * H, D}, N[4] = {D, QD, D, H};
  *m = M[g];
  *n = N[g];
}

/* the model: codes of every linear, the state S holding its trainable tensors */
typedef struct {
  e8q_config cfg;
  e8q_e2e_state S;
  e8q_e2e_model M;
  e8q_block blocks[L];
  e8q_qlinear ql[L][4];
  uint16_t *codes[L][4]; /* [m, n/8] */
  float Wscale[L][4];
  float fs[L][4][3];
  int rows[4][3];
  int n_pieces[4];
  double *B[L][4];       /* [m, n] float64 decode with unit scales */
  float *embed;          /* [V, D] */
} tiny;

static void tiny_init(tiny *m, t_rng *r) {
  memset(m, 0, sizeof *m);
  m->cfg = tiny_config();
  e8q_e2e_state_init(&m->S, &m->cfg);
  e8q_e2e_state *S = &m->S;
  m->n_pieces[0] = 3, m->rows[0][0] = QD, m->rows[0][1] = m->rows[0][2] = NKV * HD;
  m->n_pieces[1] = 1, m->rows[1][0] = D;
  m->n_pieces[2] = 2, m->rows[2][0] = m->rows[2][1] = H;
  m->n_pieces[3] = 1, m->rows[3][0] = D;
  for (size_t i = 0; i < S->n_susv; i++) S->p[i] = (float)((t_rng_u64(r) & 1 ? 1 : -1) * (1.0 + 0.2 * t_rng_normal(r)));
  for (size_t i = S->n_susv; i < S->off_final + D; i++) S->p[i] = (float)(1.0 + 0.2 * t_rng_normal(r));
  for (size_t i = 0; i < (size_t)V * D; i++) S->p[S->off_head + i] = (float)(0.5 * t_rng_normal(r));
  m->embed = malloc(sizeof(float) * V * D);
  for (int i = 0; i < V * D; i++) m->embed[i] = (float)t_rng_normal(r);
  for (int b = 0; b < L; b++)
    for (int g = 0; g < 4; g++) {
      int mm, n;
      shape_of(g, &mm, &n);
      m->codes[b][g] = malloc(sizeof(uint16_t) * (size_t)mm * (n / 8));
      for (int i = 0; i < mm * (n / 8); i++) m->codes[b][g][i] = (uint16_t)(t_rng_u64(r) & 0xffff);
      m->Wscale[b][g] = (float)(0.7 / sqrt((double)n));
      for (int k = 0; k < m->n_pieces[g]; k++) m->fs[b][g][k] = (float)(0.8 + 0.4 * t_rng_uniform(r));
      e8q_qlinear_desc d;
      memset(&d, 0, sizeof d);
      d.m = mm, d.n = n, d.n_pad = n, d.codebook = E8Q_CB_E8P12, d.codes = m->codes[b][g];
      d.Wscale = m->Wscale[b][g];
      d.n_pieces = m->n_pieces[g];
      d.piece_rows = m->n_pieces[g] > 1 ? m->rows[g] : NULL;
      d.K_in = d.K_out = 1;
      /* B: unit scales */
      float one[64];
      for (int i = 0; i < 64; i++) one[i] = 1.0f;
      d.SU = d.SV = one;
      d.fuse_scales = NULL;
      e8q_qlinear qu;
      e8q_qlinear_init(&qu, &d, "unit scales");
      m->B[b][g] = malloc(sizeof(double) * (size_t)mm * n);
      e8q_qlinear_dequant(&qu, m->B[b][g]);
      e8q_qlinear_free(&qu);
      /* the trained one: SU/SV in S */
      d.SU = S->p + S->off_SU[b * 4 + g];
      d.SV = S->p + S->off_SV[b * 4 + g];
      d.fuse_scales = m->fs[b][g];
      e8q_qlinear_init(&m->ql[b][g], &d, "tiny linear");
      m->blocks[b].lin[g] = (e8q_linear){.m = mm, .n = n, .w = NULL, .q = &m->ql[b][g]};
    }
  m->M.cfg = &m->cfg;
  m->M.blocks = m->blocks;
  m->M.embed = m->embed;
  e8q_e2e_bind(S, &m->M);
  e8q_e2e_refresh(S, &m->M);
}

static void tiny_free(tiny *m) {
  for (int b = 0; b < L; b++)
    for (int g = 0; g < 4; g++) {
      e8q_qlinear_free(&m->ql[b][g]);
      free(m->codes[b][g]);
      free(m->B[b][g]);
    }
  free(m->embed);
  e8q_e2e_state_free(&m->S);
}

/* ---------------------------------------------------------------- float64 model */
/* W[r, c] = fs(r) SV[r] B[r, c] SU[c] */
static void qdense_d(const tiny *m, int b, int g, const double *p, double *W) {
  int mm, n;
  shape_of(g, &mm, &n);
  const double *SU = p + m->S.off_SU[b * 4 + g], *SV = p + m->S.off_SV[b * 4 + g];
  int piece = 0, left = m->rows[g][0];
  for (int r = 0; r < mm; r++) {
    while (left == 0) left = m->rows[g][++piece];
    for (int c = 0; c < n; c++)
      W[(size_t)r * n + c] = m->fs[b][g][piece] * SV[r] * m->B[b][g][(size_t)r * n + c] * SU[c];
    left--;
  }
}

typedef struct {
  const tiny *m;
  double *p;          /* [S.n] the parameters in double */
  int T;
  const int *ids;     /* [T] */
  const int *tid;     /* [T-1, K] */
  const float *tprob; /* [T-1, K] */
} loss_ctx;

static double model_loss(void *vc) {
  loss_ctx *c = vc;
  const tiny *m = c->m;
  const int T = c->T;
  double *x = malloc(sizeof(double) * T * D), *xn = malloc(sizeof(double) * T * D), *qkv = malloc(sizeof(double) * T * LD),
         *att = malloc(sizeof(double) * T * QD), *proj = malloc(sizeof(double) * T * D),
         *ug = malloc(sizeof(double) * T * 2 * H), *h = malloc(sizeof(double) * T * H), *W = malloc(sizeof(double) * 64 * 64),
         *z = malloc(sizeof(double) * T * V);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < D; i++) x[t * D + i] = m->embed[c->ids[t] * D + i];
  for (int b = 0; b < L; b++) {
    rmsnorm_d(T, D, x, c->p + m->S.off_attn[b], EPS, xn);
    qdense_d(m, b, 0, c->p, W);
    linear_d(T, LD, D, xn, W, qkv);
    for (int t = 0; t < T; t++) /* rope on q and k heads */
      for (int hh = 0; hh < NH + NKV; hh++) {
        double *v = qkv + (size_t)t * LD + hh * HD;
        for (int i = 0; i < HD / 2; i++) {
          double ang = t * exp(-2.0 * i / HD * log(THETA)), a = v[i], bb = v[i + HD / 2];
          v[i] = a * cos(ang) - bb * sin(ang);
          v[i + HD / 2] = a * sin(ang) + bb * cos(ang);
        }
      }
    for (int t = 0; t < T; t++) /* causal GQA attention */
      for (int hh = 0; hh < NH; hh++) {
        const double *q = qkv + (size_t)t * LD + hh * HD, *k = qkv + (NH + hh / (NH / NKV)) * HD,
                     *v = qkv + (NH + NKV + hh / (NH / NKV)) * HD;
        double pr[64], mx = -INFINITY, sum = 0.0;
        for (int j = 0; j <= t; j++) {
          pr[j] = dot_d(q, k + (size_t)j * LD, HD) / sqrt((double)HD);
          mx = pr[j] > mx ? pr[j] : mx;
        }
        for (int j = 0; j <= t; j++) sum += (pr[j] = exp(pr[j] - mx));
        for (int i = 0; i < HD; i++) {
          double o = 0.0;
          for (int j = 0; j <= t; j++) o += pr[j] / sum * v[(size_t)j * LD + i];
          att[(size_t)t * QD + hh * HD + i] = o;
        }
      }
    qdense_d(m, b, 1, c->p, W);
    linear_d(T, D, QD, att, W, proj);
    for (int i = 0; i < T * D; i++) x[i] += proj[i];
    rmsnorm_d(T, D, x, c->p + m->S.off_ffn[b], EPS, xn);
    qdense_d(m, b, 2, c->p, W);
    linear_d(T, 2 * H, D, xn, W, ug);
    for (int t = 0; t < T; t++)
      for (int i = 0; i < H; i++) {
        double u = ug[t * 2 * H + i], g = ug[t * 2 * H + H + i];
        h[t * H + i] = g / (1.0 + exp(-g)) * u;
      }
    qdense_d(m, b, 3, c->p, W);
    linear_d(T, D, H, h, W, proj);
    for (int i = 0; i < T * D; i++) x[i] += proj[i];
  }
  rmsnorm_d(T - 1, D, x, c->p + m->S.off_final, EPS, xn);
  linear_d(T - 1, V, D, xn, c->p + m->S.off_head, z);
  double loss = 0.0;
  for (int t = 0; t < T - 1; t++) {
    const double *zt = z + (size_t)t * V;
    double mx = -INFINITY, s = 0.0, ps = 0.0;
    for (int v = 0; v < V; v++) mx = zt[v] > mx ? zt[v] : mx;
    for (int v = 0; v < V; v++) s += exp(zt[v] - mx);
    for (int j = 0; j < K; j++) ps += c->tprob[t * K + j];
    for (int j = 0; j < K; j++) loss -= c->tprob[t * K + j] / ps * (zt[c->tid[t * K + j]] - mx - log(s));
  }
  free(x), free(xn), free(qkv), free(att), free(proj), free(ug), free(h), free(W), free(z);
  return loss;
}

/* ---------------------------------------------------------------- 1. gradients */
static void test_e2e_grad(void **state) {
  (void)state;
  t_rng r = {g_seed + 1};
  tiny m;
  tiny_init(&m, &r);
  enum { T = 6 };
  int ids[T], tid[(T - 1) * K];
  float tprob[(T - 1) * K], tl[(T - 1) * V];
  for (int t = 0; t < T; t++) ids[t] = (int)(t_rng_u64(&r) % V);
  for (int i = 0; i < (T - 1) * V; i++) tl[i] = (float)(2.0 * t_rng_normal(&r));
  e8q_e2e_topk(T - 1, V, tl, K, tid, tprob);
  for (int t = 0; t < T - 1; t++) /* descending, the top of the row first */
    for (int j = 1; j < K; j++) assert_true(tprob[t * K + j] <= tprob[t * K + j - 1]);

  const e8q_e2e_state *S = &m.S;
  float *grad = calloc(S->n, sizeof(float));
  e8q_e2e_work w = {0};
  double Lf = e8q_e2e_seq_grad(&m.M, S, T, K, ids, tid, tprob, grad, &w);
  double Lf2 = e8q_e2e_seq_grad(&m.M, S, T, K, ids, tid, tprob, NULL, &w);
  assert_true(Lf == Lf2); /* the loss alone: the same bits */
  e8q_e2e_work_free(&w);

  double *pd = malloc(sizeof(double) * S->n);
  for (size_t i = 0; i < S->n; i++) pd[i] = S->p[i];
  loss_ctx c = {&m, pd, T, ids, tid, tprob};
  double Ld = model_loss(&c);
  T_NEAR(Lf, Ld, 1e-4 * Ld, "model loss, fp32 pipeline vs float64 composition");
  const double rtol = 1e-4;
  const fd_opts fo = {.rtol = rtol, .min_rms = 1e-7};
  fd_check("d/d SU qkv, block 0", model_loss, &c, pd + S->off_SU[0], D, grad + S->off_SU[0], fo);
  fd_check("d/d SV qkv, block 0", model_loss, &c, pd + S->off_SV[0], LD, grad + S->off_SV[0], fo);
  fd_check("d/d SV down, block 1", model_loss, &c, pd + S->off_SV[4 + 3], D, grad + S->off_SV[4 + 3], fo);
  fd_check("d/d attn_norm, block 0", model_loss, &c, pd + S->off_attn[0], D, grad + S->off_attn[0], fo);
  fd_check("d/d ffn_norm, block 1", model_loss, &c, pd + S->off_ffn[1], D, grad + S->off_ffn[1], fo);
  fd_check("d/d final norm", model_loss, &c, pd + S->off_final, D, grad + S->off_final, fo);
  fd_check("d/d lm_head (rows 0-3)", model_loss, &c, pd + S->off_head, 4 * D, grad + S->off_head, fo);
  free(pd);
  free(grad);
  tiny_free(&m);
}

/* ---------------------------------------------------------------- 2. training */
enum { NS = 16, NV = 4, TT = 8, EPOCHS = 3 };

typedef struct {
  int calls;
  double after1;       /* held-out CE after epoch 1 */
  e8q_e2e_state snap;  /* the state after epoch 1 (as e2e/state.ckpt holds it) */
} hook_ctx;

static void snap_copy(e8q_e2e_state *dst, const e8q_e2e_state *src) {
  memcpy(dst->p, src->p, sizeof(float) * src->n);
  memcpy(dst->best, src->best, sizeof(float) * src->n);
  memcpy(dst->m, src->m, sizeof(float) * src->n);
  memcpy(dst->v, src->v, sizeof(float) * src->n);
  dst->step = src->step, dst->epoch = src->epoch, dst->worse = src->worse, dst->started = src->started;
  dst->done = src->done, dst->init_loss = src->init_loss, dst->best_loss = src->best_loss;
  dst->train_loss = src->train_loss, dst->valid_loss = src->valid_loss;
}

static void on_epoch(void *vc, const e8q_e2e_state *S) {
  hook_ctx *h = vc;
  h->calls++;
  if (S->epoch == 1 && !S->done) {
    h->after1 = S->valid_loss;
    snap_copy(&h->snap, S);
  }
}

static void test_e2e_train(void **state) {
  (void)state;
  t_rng r = {g_seed + 2};
  tiny teacher, student, resumed;
  tiny_init(&teacher, &r);
  /* the student and the resumed run: the teacher's codes and tensors, SV rounded to signs */
  t_rng r2 = {g_seed + 2};
  tiny_init(&student, &r2);
  t_rng r3 = {g_seed + 2};
  tiny_init(&resumed, &r3);
  for (size_t i = 0; i < student.S.n_susv; i++) {
    int is_sv = 0;
    for (int q = 0; q < L * 4; q++) {
      int mm, n;
      shape_of(q % 4, &mm, &n);
      is_sv |= i >= student.S.off_SV[q] && i < student.S.off_SV[q] + (size_t)mm;
    }
    if (is_sv) student.S.p[i] = resumed.S.p[i] = student.S.p[i] > 0 ? 1.0f : -1.0f;
  }
  e8q_e2e_refresh(&student.S, &student.M);
  e8q_e2e_refresh(&resumed.S, &resumed.M);
  /* the teacher's targets */
  int *ids = malloc(sizeof(int) * NS * TT), *tid = malloc(sizeof(int) * NS * (TT - 1) * K);
  float *tprob = malloc(sizeof(float) * NS * (TT - 1) * K), *logits = malloc(sizeof(float) * TT * V);
  for (int i = 0; i < NS * TT; i++) ids[i] = (int)(t_rng_u64(&r) % V);
  e8q_model tm;
  memset(&tm, 0, sizeof tm);
  tm.cfg = teacher.cfg;
  tm.embed = teacher.embed;
  tm.final_norm = (float *)teacher.M.final_norm;
  tm.lm_head = (float *)teacher.M.lm_head;
  tm.blocks = teacher.blocks;
  for (int s = 0; s < NS; s++) {
    e8q_model_forward(&tm, 1, TT, ids + s * TT, logits);
    e8q_e2e_topk(TT - 1, V, logits, K, tid + s * (TT - 1) * K, tprob + s * (TT - 1) * K);
  }

  hook_ctx hc = {0};
  e8q_e2e_state_init(&hc.snap, &student.cfg);
  e8q_train_hparams o = {.epochs = EPOCHS, .lr = 1e-3, .susv_lr = 1e-2, .batch = 4, .early_stop = 3, .seed = 5};
  e8q_e2e_hooks hk = {on_epoch, &hc};
  e8q_e2e_train(&o, NULL, &student.M, &student.S, TT, K, NS - NV, NV, 0, NS, ids, tid, tprob, &hk);
  const e8q_e2e_state *S = &student.S;
  print_message("  held-out CE %.6g -> %.6g after epoch 1, best %.6g after %d epochs (%ld Adam steps)\n", S->init_loss,
                hc.after1, S->best_loss, S->epoch, S->step);
  assert_true(S->done);
  assert_int_equal(hc.calls, S->epoch + 1);
  assert_true(hc.after1 < S->init_loss); /* one epoch lowers the held-out CE */
  assert_true(S->best_loss <= hc.after1);
  assert_int_equal(S->step, (long)S->epoch * 3);
  assert_memory_equal(S->p, S->best, sizeof(float) * S->n);
  double vl = e8q_e2e_loss(NULL, &student.M, S, TT, K, NS - NV, NS, 0, NS, ids, tid, tprob);
  assert_true(vl == S->best_loss); /* the model computes the best state */

  /* resumed from the state after epoch 1: the same bits */
  assert_int_equal(hc.snap.epoch, 1);
  snap_copy(&resumed.S, &hc.snap);
  e8q_e2e_refresh(&resumed.S, &resumed.M);
  e8q_e2e_train(&o, NULL, &resumed.M, &resumed.S, TT, K, NS - NV, NV, 0, NS, ids, tid, tprob, NULL);
  assert_true(resumed.S.done);
  assert_int_equal(resumed.S.epoch, S->epoch);
  assert_memory_equal(resumed.S.p, S->p, sizeof(float) * S->n);
  assert_true(resumed.S.best_loss == S->best_loss && resumed.S.init_loss == S->init_loss);

  e8q_e2e_state_free(&hc.snap);
  free(ids), free(tid), free(tprob), free(logits);
  tiny_free(&teacher);
  tiny_free(&student);
  tiny_free(&resumed);
}

int main(void) {
  g_seed = t_fresh_seed("test_e2e");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_e2e_grad),
      cmocka_unit_test(test_e2e_train),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
