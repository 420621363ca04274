/* io/llama2c.c: llama2.c legacy v0 checkpoint import (layout in io/llama2c.h). */
#include "io/llama2c.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/file.h"

/* ---------------------------------------------------------------- q/k row permutation
 * Per head: new row i < hd/2 is old row 2i, new row hd/2 + i is old row 2i + 1. */
static void permute_heads(float *w /* [n_heads*hd, dim] */, int n_heads, int hd, int dim, float *tmp /* [hd, dim] */) {
  int half = hd / 2;
  for (int h = 0; h < n_heads; h++) {
    float *wh = w + (size_t)h * hd * dim;
    memcpy(tmp, wh, sizeof(float) * (size_t)hd * dim);
    for (int i = 0; i < half; i++) {
      memcpy(wh + (size_t)i * dim, tmp + (size_t)(2 * i) * dim, sizeof(float) * dim);
      memcpy(wh + (size_t)(half + i) * dim, tmp + (size_t)(2 * i + 1) * dim, sizeof(float) * dim);
    }
  }
}

static void check_finite(const char *path, const char *tensor, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    E8Q_CHECK(isfinite(x[i]), "%s: tensor %s holds a non-finite value (%g) at element %lld: the checkpoint is corrupt",
              path, tensor, (double)x[i], (long long)i);
}

/* ---------------------------------------------------------------- load */

void e8q_llama2c_load(const char *path, e8q_llama2c *ck) {
  memset(ck, 0, sizeof *ck);
  FILE *f = e8q_fopen_regular(path, "llama2.c checkpoint");
  struct stat st;
  E8Q_CHECK_ERRNO(fstat(fileno(f), &st) == 0, "cannot stat %s", path);
  E8Q_CHECK(S_ISREG(st.st_mode), "%s is not a regular file (expected a llama2.c .bin checkpoint)", path);
  int32_t h[7];
  E8Q_CHECK(fread(h, sizeof(int32_t), 7, f) == 7,
            "%s: file too short (%lld bytes) for the 28-byte llama2.c header", path, (long long)st.st_size);
  int dim = h[0], hidden = h[1], L = h[2], nh = h[3], nkv = h[4], vocab = h[5], seq = h[6];
  int shared = vocab > 0;
  if (vocab < 0) vocab = -vocab;
  E8Q_CHECK(dim > 0 && hidden > 0 && L > 0 && nh > 0 && nkv > 0 && vocab > 0 && seq > 0,
            "%s: llama2.c header has a non-positive size (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
            "n_kv_heads %d, vocab_size %d, seq_len %d): not a llama2.c v0 checkpoint?",
            path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
  E8Q_CHECK(dim <= (1 << 20) && hidden <= (1 << 22) && L <= 4096 && nh <= dim && nkv <= nh && vocab <= (1 << 24) &&
                seq <= (1 << 24),
            "%s: llama2.c header sizes are implausible (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, "
            "vocab_size %d, seq_len %d): not a llama2.c v0 checkpoint?",
            path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
  E8Q_CHECK(dim % nh == 0 && (dim / nh) % 2 == 0,
            "%s: dim %d is not a multiple of 2*n_heads (n_heads %d): head_dim must be an even integer", path, dim, nh);
  E8Q_CHECK(nh % nkv == 0, "%s: n_heads %d is not a multiple of n_kv_heads %d", path, nh, nkv);
  int64_t hd = dim / nh, kvd = (int64_t)nkv * hd;
  int64_t D = dim, H = hidden, V = vocab;
  int64_t n_embed = V * D, n_att = L * D, n_wq = L * D * D, n_wk = L * kvd * D, n_wo = L * D * D;
  int64_t n_w1 = L * H * D, n_freq = (int64_t)seq * hd / 2;
  int64_t n_floats = n_embed + n_att + n_wq + 2 * n_wk + n_wo + n_att + 3 * n_w1 + D + 2 * n_freq + (shared ? 0 : n_embed);
  int64_t want = 28 + 4 * n_floats;
  E8Q_CHECK((int64_t)st.st_size == want,
            "%s: size %lld bytes does not match its llama2.c header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
            "n_kv_heads %d, vocab_size %d, seq_len %d, %s classifier), which needs exactly %lld bytes: "
            "truncated or not a legacy v0 checkpoint",
            path, (long long)st.st_size, dim, hidden, L, nh, nkv, h[5], seq, shared ? "shared" : "unshared",
            (long long)want);

  float *d = e8q_malloc(sizeof(float) * (size_t)n_floats, "llama2.c weights");
  E8Q_CHECK(fread(d, sizeof(float), (size_t)n_floats, f) == (size_t)n_floats, "%s: short read", path);
  fclose(f);

  e8q_config *c = &ck->cfg;
  memset(c, 0, sizeof *c);
  snprintf(c->model_type, sizeof c->model_type, "llama");
  c->dim = dim;
  c->hidden_dim = hidden;
  c->n_layers = L;
  c->n_heads = nh;
  c->n_kv_heads = nkv;
  c->head_dim = (int)hd;
  c->vocab_size = vocab;
  c->max_seq_len = seq;
  c->rope_theta = 10000.0;
  c->norm_eps = 1e-5;
  c->tied = shared;
  c->bos_id = 1;
  c->eos_id = 2;
  c->sliding_window = 0;

  ck->data = d;
  float *p = d;
  ck->embed = p; p += n_embed;
  ck->rms_att = p; p += n_att;
  float *wq = p; p += n_wq; /* permuted in place below */
  float *wk = p; p += n_wk;
  ck->wq = wq, ck->wk = wk;
  ck->wv = p; p += n_wk;
  ck->wo = p; p += n_wo;
  ck->rms_ffn = p; p += n_att;
  ck->w1 = p; p += n_w1;
  ck->w2 = p; p += n_w1;
  ck->w3 = p; p += n_w1;
  ck->rms_final = p; p += D;
  p += 2 * n_freq; /* freq_cis_real, freq_cis_imag: RoPE is recomputed from theta */
  ck->wcls = shared ? ck->embed : p;

  struct { const char *name; const float *x; int64_t n; } all[] = {
      {"token_embedding", ck->embed, n_embed}, {"rms_att", ck->rms_att, n_att}, {"wq", wq, n_wq},
      {"wk", wk, n_wk}, {"wv", ck->wv, n_wk}, {"wo", ck->wo, n_wo}, {"rms_ffn", ck->rms_ffn, n_att},
      {"w1", ck->w1, n_w1}, {"w2", ck->w2, n_w1}, {"w3", ck->w3, n_w1}, {"rms_final", ck->rms_final, D},
      {"wcls", ck->wcls, shared ? 0 : n_embed}};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) check_finite(path, all[i].name, all[i].x, all[i].n);

  /* interleaved-pair RoPE rows -> rotate-half rows */
  float *tmp = e8q_malloc(sizeof(float) * (size_t)hd * D, "permutation scratch");
  for (int l = 0; l < L; l++) {
    permute_heads(wq + (size_t)l * D * D, nh, (int)hd, dim, tmp);
    permute_heads(wk + (size_t)l * kvd * D, nkv, (int)hd, dim, tmp);
  }
  free(tmp);
}

void e8q_llama2c_free(e8q_llama2c *ck) {
  free(ck->data);
  memset(ck, 0, sizeof *ck);
}
