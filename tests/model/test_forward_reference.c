/* tests/model/test_forward_reference.c: a random Llama checkpoint written as a HF directory
 * (GQA, head_dim given explicitly and != hidden/heads, rope_theta 500000, untied lm_head, f32
 * and bf16 tensors) loaded and run by e8q, against a float64 forward pass written here from
 * the Hugging Face definitions on the original per-projection weights. Fresh weights per run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "testutil.h"
#include "worker/forward.h"

enum { D = 48, NH = 4, HD = 16, NKV = 2, HID = 40, L = 2, V = 37, T = 13 };
static const double THETA = 500000.0, EPS = 1e-6;

typedef struct {
  float *embed, *norm, *lm;                       /* [V,D], [D], [V,D] */
  float *in_norm[L], *post_norm[L];               /* [D] */
  float *wq[L], *wk[L], *wv[L], *wo[L];           /* [NH*HD,D], [NKV*HD,D], [NKV*HD,D], [D,NH*HD] */
  float *wg[L], *wu[L], *wd[L];                   /* [HID,D], [HID,D], [D,HID] */
} weights;

static float *rnd(t_rng *r, size_t n, double scale, double mean) {
  float *x = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) x[i] = (float)(mean + scale * t_rng_normal(r));
  return x;
}

/* rounds every weight through bf16 so the f32 reference matches a bf16 file exactly */
static void to_bf16(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = e8q_bf16_to_f32(e8q_f32_to_bf16(x[i]));
}

static void weights_make(weights *w, uint64_t seed, int bf16) {
  t_rng r = {seed};
  w->embed = rnd(&r, (size_t)V * D, 1.0, 0), w->norm = rnd(&r, D, 0.2, 1.0), w->lm = rnd(&r, (size_t)V * D, 0.3, 0);
  for (int l = 0; l < L; l++) {
    w->in_norm[l] = rnd(&r, D, 0.2, 1.0), w->post_norm[l] = rnd(&r, D, 0.2, 1.0);
    w->wq[l] = rnd(&r, (size_t)NH * HD * D, 0.3, 0), w->wk[l] = rnd(&r, (size_t)NKV * HD * D, 0.3, 0);
    w->wv[l] = rnd(&r, (size_t)NKV * HD * D, 0.3, 0), w->wo[l] = rnd(&r, (size_t)D * NH * HD, 0.1, 0);
    w->wg[l] = rnd(&r, (size_t)HID * D, 0.3, 0), w->wu[l] = rnd(&r, (size_t)HID * D, 0.3, 0);
    w->wd[l] = rnd(&r, (size_t)D * HID, 0.1, 0);
  }
  if (bf16) {
    to_bf16(w->embed, (size_t)V * D), to_bf16(w->norm, D), to_bf16(w->lm, (size_t)V * D);
    for (int l = 0; l < L; l++) {
      to_bf16(w->in_norm[l], D), to_bf16(w->post_norm[l], D), to_bf16(w->wq[l], (size_t)NH * HD * D);
      to_bf16(w->wk[l], (size_t)NKV * HD * D), to_bf16(w->wv[l], (size_t)NKV * HD * D);
      to_bf16(w->wo[l], (size_t)D * NH * HD), to_bf16(w->wg[l], (size_t)HID * D), to_bf16(w->wu[l], (size_t)HID * D);
      to_bf16(w->wd[l], (size_t)D * HID);
    }
  }
}

static void weights_free(weights *w) {
  free(w->embed), free(w->norm), free(w->lm);
  for (int l = 0; l < L; l++) {
    free(w->in_norm[l]), free(w->post_norm[l]), free(w->wq[l]), free(w->wk[l]), free(w->wv[l]), free(w->wo[l]);
    free(w->wg[l]), free(w->wu[l]), free(w->wd[l]);
  }
}

/* ---------------------------------------------------------------- writing the HF directory */
static void write_hf(const char *dir, const weights *w, int bf16) {
  char p[1024];
  snprintf(p, sizeof p, "%s/config.json", dir);
  char cfg[1024];
  int n = snprintf(cfg, sizeof cfg,
                   "{\"model_type\": \"llama\", \"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
                   "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, \"vocab_size\": %d, "
                   "\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"rope_theta\": 500000.0, "
                   "\"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}\n",
                   D, HID, L, NH, NKV, HD, V);
  t_write_file(p, cfg, (size_t)n);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  struct { char name[96]; const float *x; int64_t shape[2]; int nd; } ts[3 + 9 * L];
  int nt = 0;
#define T_ADD(nm, ptr, r, c) \
  (snprintf(ts[nt].name, 96, "%s", nm), ts[nt].x = (ptr), ts[nt].shape[0] = (r), ts[nt].shape[1] = (c), ts[nt].nd = (c) ? 2 : 1, nt++)
  T_ADD("model.embed_tokens.weight", w->embed, V, D);
  T_ADD("model.norm.weight", w->norm, D, 0);
  T_ADD("lm_head.weight", w->lm, V, D);
  for (int l = 0; l < L; l++) {
    char nm[96];
#define T_LAYER(suffix, ptr, r, c) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), T_ADD(nm, ptr, r, c))
    T_LAYER("input_layernorm.weight", w->in_norm[l], D, 0);
    T_LAYER("post_attention_layernorm.weight", w->post_norm[l], D, 0);
    T_LAYER("self_attn.q_proj.weight", w->wq[l], NH * HD, D);
    T_LAYER("self_attn.k_proj.weight", w->wk[l], NKV * HD, D);
    T_LAYER("self_attn.v_proj.weight", w->wv[l], NKV * HD, D);
    T_LAYER("self_attn.o_proj.weight", w->wo[l], D, NH * HD);
    T_LAYER("mlp.gate_proj.weight", w->wg[l], HID, D);
    T_LAYER("mlp.up_proj.weight", w->wu[l], HID, D);
    T_LAYER("mlp.down_proj.weight", w->wd[l], D, HID);
#undef T_LAYER
  }
#undef T_ADD
  e8q_st_writer *wr = e8q_st_writer_begin(p);
  for (int i = 0; i < nt; i++) e8q_st_writer_declare(wr, ts[i].name, bf16 ? E8Q_DT_BF16 : E8Q_DT_F32, ts[i].nd, ts[i].shape);
  for (int i = 0; i < nt; i++) {
    size_t cnt = (size_t)ts[i].shape[0] * (ts[i].nd > 1 ? (size_t)ts[i].shape[1] : 1);
    if (bf16) {
      uint16_t *h = malloc(2 * cnt);
      for (size_t j = 0; j < cnt; j++) h[j] = e8q_f32_to_bf16(ts[i].x[j]);
      e8q_st_writer_write(wr, h, 2 * cnt);
      free(h);
    } else {
      e8q_st_writer_write(wr, ts[i].x, 4 * cnt);
    }
  }
  e8q_st_writer_finish(wr);
}

/* ---------------------------------------------------------------- the float64 reference */
static void matvec(const float *W, int m, int n, const double *x, double *y) { /* y = W x */
  for (int i = 0; i < m; i++) {
    double a = 0;
    for (int j = 0; j < n; j++) a += (double)W[(size_t)i * n + j] * x[j];
    y[i] = a;
  }
}

static void rmsnorm(const double *x, const float *w, double *y) {
  double ss = 0;
  for (int i = 0; i < D; i++) ss += x[i] * x[i];
  double inv = 1.0 / sqrt(ss / D + EPS);
  for (int i = 0; i < D; i++) y[i] = x[i] * inv * w[i];
}

/* HF rotate_half: x*cos + rotate_half(x)*sin with rotate_half(x) = [-x2, x1] */
static void rope(double *v, int pos) {
  double out[HD];
  for (int i = 0; i < HD; i++) {
    int j = i % (HD / 2);
    double ang = pos / pow(THETA, 2.0 * j / HD);
    double rot = i < HD / 2 ? -v[i + HD / 2] : v[i - HD / 2];
    out[i] = v[i] * cos(ang) + rot * sin(ang);
  }
  memcpy(v, out, sizeof out);
}

static void reference(const weights *w, const int *ids, double *logits /* [T, V] */) {
  static double h[T][D], q[T][NH * HD], k[T][NKV * HD], v[T][NKV * HD], att[T][NH * HD];
  double xn[D], tmp[D], g[HID], u[HID];
  for (int t = 0; t < T; t++)
    for (int i = 0; i < D; i++) h[t][i] = w->embed[(size_t)ids[t] * D + i];
  for (int l = 0; l < L; l++) {
    for (int t = 0; t < T; t++) {
      rmsnorm(h[t], w->in_norm[l], xn);
      matvec(w->wq[l], NH * HD, D, xn, q[t]);
      matvec(w->wk[l], NKV * HD, D, xn, k[t]);
      matvec(w->wv[l], NKV * HD, D, xn, v[t]);
      for (int hh = 0; hh < NH; hh++) rope(q[t] + hh * HD, t);
      for (int hh = 0; hh < NKV; hh++) rope(k[t] + hh * HD, t);
    }
    for (int t = 0; t < T; t++)
      for (int hh = 0; hh < NH; hh++) {
        int kv = hh / (NH / NKV);
        double s[T], mx = -INFINITY, z = 0;
        for (int j = 0; j <= t; j++) {
          s[j] = 0;
          for (int i = 0; i < HD; i++) s[j] += q[t][hh * HD + i] * k[j][kv * HD + i];
          s[j] /= sqrt((double)HD);
          mx = fmax(mx, s[j]);
        }
        for (int j = 0; j <= t; j++) z += (s[j] = exp(s[j] - mx));
        for (int i = 0; i < HD; i++) {
          double a = 0;
          for (int j = 0; j <= t; j++) a += s[j] / z * v[j][kv * HD + i];
          att[t][hh * HD + i] = a;
        }
      }
    for (int t = 0; t < T; t++) {
      matvec(w->wo[l], D, NH * HD, att[t], tmp);
      for (int i = 0; i < D; i++) h[t][i] += tmp[i];
      rmsnorm(h[t], w->post_norm[l], xn);
      matvec(w->wg[l], HID, D, xn, g);
      matvec(w->wu[l], HID, D, xn, u);
      for (int i = 0; i < HID; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
      matvec(w->wd[l], D, HID, g, tmp);
      for (int i = 0; i < D; i++) h[t][i] += tmp[i];
    }
  }
  for (int t = 0; t < T; t++) {
    rmsnorm(h[t], w->norm, xn);
    matvec(w->lm, V, D, xn, logits + (size_t)t * V);
  }
}

static void check(int bf16) {
  uint64_t seed = t_fresh_seed(bf16 ? "test_forward_reference bf16" : "test_forward_reference f32");
  weights w;
  weights_make(&w, seed, bf16);
  char *dir = t_tmpdir(bf16 ? "fwd_ref_bf16" : "fwd_ref_f32");
  write_hf(dir, &w, bf16);
  e8q_model *m = e8q_model_load(dir);
  assert_int_equal(m->cfg.head_dim, HD);
  assert_false(m->cfg.tied);
  t_rng r = {seed ^ 77};
  int ids[T];
  for (int t = 0; t < T; t++) ids[t] = (int)(t_rng_u64(&r) % V);
  double *ref = malloc(sizeof(double) * T * V);
  reference(&w, ids, ref);
  float *got = malloc(sizeof(float) * T * V);
  e8q_model_forward(m, 1, T, ids, got);
  e8q_kv_cache kv;
  e8q_kv_init(&kv, &m->cfg, T);
  double worst = 0;
  for (int t = 0; t < T; t++) {
    const float *step = e8q_model_step(m, &kv, ids[t], t);
    for (int i = 0; i < V; i++) {
      double d = ref[(size_t)t * V + i];
      T_NEAR(got[(size_t)t * V + i], d, 1e-4 * (1 + fabs(d)), "batched logits vs float64 reference");
      T_NEAR(step[i], d, 1e-4 * (1 + fabs(d)), "KV-step logits vs float64 reference");
      worst = fmax(worst, fabs(got[(size_t)t * V + i] - d));
    }
  }
  print_message("max |logit - float64 reference| = %.3g\n", worst);
  e8q_kv_free(&kv);
  e8q_model_free(m);
  free(ref), free(got), free(dir);
  weights_free(&w);
}

static void test_forward_reference_f32(void **s) { (void)s; check(0); }
static void test_forward_reference_bf16(void **s) { (void)s; check(1); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_reference_f32),
      cmocka_unit_test(test_forward_reference_bf16),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
