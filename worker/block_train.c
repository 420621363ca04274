/* worker/block_train.c: block forward with saved activations, and its backward
 * (worker/block_train.h). */
#include "worker/block_train.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_grad.h"
#include "kernels/transformer.h"
#include "kernels/transformer_grad.h"
#include "worker/linear.h"

/* ---------------------------------------------------------------- saved activations */
static void saved_ensure(e8q_bt_saved *s, const e8q_config *c, size_t N) {
  if (s->cap >= N) return;
  e8q_bt_saved_free(s);
  size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, hd = (size_t)c->head_dim;
  size_t q = (size_t)c->n_heads * hd, qkv = q + 2 * (size_t)c->n_kv_heads * hd;
  /* each buffer, its row width and what it holds (the name of an allocation failure) */
  const struct {
    float **p;
    size_t width;
    const char *what;
  } bufs[] = {
      {&s->x0, D, "train x0"},          {&s->xn1, D, "train xn1"},      {&s->qkv, qkv, "train qkv"},
      {&s->att, q, "train attention"},  {&s->x1, D, "train x1"},        {&s->xn2, D, "train xn2"},
      {&s->ug, 2 * H, "train up|gate"}, {&s->h, H, "train hidden"},     {&s->d1, D, "train dx1"},
      {&s->dn, D, "train dxn"},         {&s->dt, D, "train dnorm"},     {&s->dh, H, "train dh"},
      {&s->dug, 2 * H, "train dug"},    {&s->datt, q, "train datt"},    {&s->dqkv, qkv, "train dqkv"},
  };
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    *bufs[i].p = e8q_alloc_aligned(sizeof(float) * N * bufs[i].width, bufs[i].what); /* [N, width] */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    int m, n;
    e8q_group_shape(c, g, &m, &n);
    s->z[g] = e8q_alloc_aligned(sizeof(float) * N * (size_t)m, "train pre-scale output"); /* [N, m] */
  }
  s->cap = N;
}

void e8q_bt_saved_free(e8q_bt_saved *s) {
  float *bufs[] = {s->x0, s->xn1, s->qkv, s->att, s->x1, s->xn2, s->ug, s->h,
                   s->d1, s->dn, s->dt, s->dh, s->dug, s->datt, s->dqkv};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  for (int g = 0; g < E8Q_N_GROUPS; g++) free(s->z[g]);
  memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- forward */
void e8q_block_train_forward(const e8q_block *b, const e8q_config *c, int n_seq, int T, const float *x, float *y,
                             e8q_bt_saved *s) {
  const int N = n_seq * T, D = c->dim, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
  const int ld = (nh + 2 * nkv) * hd;
  saved_ensure(s, c, (size_t)N);
  s->N = N;
  s->n_seq = n_seq;
  s->T = T;
  const size_t ND = (size_t)N * D;
  memcpy(s->x0, x, sizeof(float) * ND);
  /* attention */
  e8q_rmsnorm(N, D, s->x0, b->attn_norm, (float)c->norm_eps, s->xn1);
  e8q_linear_forward_keep(&b->qkv, N, s->xn1, s->qkv, s->z[E8Q_GROUP_QKV]);
  e8q_rope(n_seq, T, 0, nh + nkv, hd, c->rope_theta, s->qkv, ld);
  e8q_attention(n_seq, T, nh, nkv, hd, s->qkv, s->att);
  e8q_linear_forward_keep(&b->o, N, s->att, s->x1, s->z[E8Q_GROUP_O]);
  for (size_t i = 0; i < ND; i++) s->x1[i] += s->x0[i];
  /* feed-forward */
  e8q_rmsnorm(N, D, s->x1, b->ffn_norm, (float)c->norm_eps, s->xn2);
  e8q_linear_forward_keep(&b->upgate, N, s->xn2, s->ug, s->z[E8Q_GROUP_UPGATE]);
  e8q_swiglu(N, c->hidden_dim, s->ug, s->h);
  e8q_linear_forward_keep(&b->down, N, s->h, y, s->z[E8Q_GROUP_DOWN]);
  for (size_t i = 0; i < ND; i++) y[i] += s->x1[i];
}

/* ---------------------------------------------------------------- backward */
/* one linear: dx <- dy W (dense) or the quantized chain; parameter gradients accumulated */
static void linear_backward(const e8q_linear *L, int g, int N, const float *x /* [N, n] */,
                            const float *z /* [N, m] the forward's pre-scale output */, const float *dy /* [N, m] */,
                            float *dx /* [N, n] */, const e8q_bt_grads *gr) {
  if (L->w) {
    e8q_linear_backward(N, L->m, L->n, x, L->w, dy, dx, gr ? gr->dW[g] : NULL);
    return;
  }
  E8Q_CHECK(L->q, "block backward: linear %s [%d x %d] has neither dense weights nor a quantized form",
            e8q_group_names[g], L->m, L->n);
  e8q_qlinear_backward_z((const e8q_qlinear *)L->q, N, x, z, dy, dx, gr ? gr->dSU[g] : NULL, gr ? gr->dSV[g] : NULL,
                         NULL);
}

void e8q_block_train_backward(const e8q_block *b, const e8q_config *c, e8q_bt_saved *s, const float *dy, float *dx,
                              const e8q_bt_grads *g) {
  const int N = s->N, D = c->dim, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
  const int ld = (nh + 2 * nkv) * hd;
  const size_t ND = (size_t)N * D;
  const float eps = (float)c->norm_eps;
  memcpy(s->d1, dy, sizeof(float) * ND); /* y = x1 + down(...): dL/dx1 starts as dy */
  /* feed-forward */
  linear_backward(&b->down, E8Q_GROUP_DOWN, N, s->h, s->z[E8Q_GROUP_DOWN], s->d1, s->dh, g);
  e8q_swiglu_backward(N, c->hidden_dim, s->ug, s->dh, s->dug);
  linear_backward(&b->upgate, E8Q_GROUP_UPGATE, N, s->xn2, s->z[E8Q_GROUP_UPGATE], s->dug, s->dn, g);
  e8q_rmsnorm_backward(N, D, s->x1, b->ffn_norm, eps, s->dn, s->dt, g ? g->d_ffn_norm : NULL);
  for (size_t i = 0; i < ND; i++) s->d1[i] += s->dt[i];
  /* attention: x1 = x0 + o(att) */
  linear_backward(&b->o, E8Q_GROUP_O, N, s->att, s->z[E8Q_GROUP_O], s->d1, s->datt, g);
  e8q_attention_backward(s->n_seq, s->T, nh, nkv, hd, s->qkv, s->datt, s->dqkv);
  e8q_rope_backward(s->n_seq, s->T, 0, nh + nkv, hd, c->rope_theta, s->dqkv, ld);
  linear_backward(&b->qkv, E8Q_GROUP_QKV, N, s->xn1, s->z[E8Q_GROUP_QKV], s->dqkv, s->dn, g);
  e8q_rmsnorm_backward(N, D, s->x0, b->attn_norm, eps, s->dn, s->dt, g ? g->d_attn_norm : NULL);
  if (dx)
    for (size_t i = 0; i < ND; i++) dx[i] = s->d1[i] + s->dt[i];
}
