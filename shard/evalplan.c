/* shard/evalplan.c: layout and memory of a layer-pipelined evaluation (shard/evalplan.h). */
#include "shard/evalplan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* ---------------------------------------------------------------- activations */

static size_t acts_bytes(const e8q_config *c, int ctx, int head, int two_buffers) {
  size_t T = (size_t)ctx, D = (size_t)c->dim, H = (size_t)c->hidden_dim, hd = (size_t)c->head_dim;
  size_t q = (size_t)c->n_heads * hd, qkv = q + 2 * (size_t)c->n_kv_heads * hd;
  size_t a = 4 * (two_buffers ? 2 : 1) * T * D;           /* residual stream buffers [ctx, dim] */
  a += 4 * T * (D + qkv + q + D + 2 * H + H);              /* e8q_fwd_scratch for ctx tokens */
  a += 4 * (size_t)c->n_heads * T * T;                     /* attention scores */
  if (head) a += 4 * (size_t)E8Q_EVAL_HEAD_ROWS * (size_t)c->vocab_size; /* logits [64, vocab] */
  return a;
}

/* weights of a stage holding layers [lo, hi) */
static size_t stage_weights(const e8q_eval_bytes *b, const size_t *prefix, int lo, int hi, int embed, int head) {
  size_t w = prefix[hi] - prefix[lo] + b->shared;
  if (embed && head && b->tied) w += b->head; /* one tensor */
  else w += (embed ? b->embed : 0) + (head ? b->head : 0);
  return w;
}

/* ---------------------------------------------------------------- build */

void e8q_eval_plan_build(e8q_eval_plan *p, const e8q_config *cfg, const e8q_eval_bytes *b, int n_ranks, int P,
                         int ctx) {
  memset(p, 0, sizeof *p);
  int L = b->n_layers;
  E8Q_CHECK(n_ranks >= 1, "eval plan: %d ranks", n_ranks);
  E8Q_CHECK(P >= 0 && (P == 0 || n_ranks % P == 0),
            "--pipeline %d: the rank count %d is not a multiple of it (ranks form groups of P)", P, n_ranks);
  E8Q_CHECK(P <= L, "--pipeline %d exceeds the model's %d layers (every stage holds at least one layer)", P, L);
  p->n_ranks = n_ranks;
  p->P = P;
  p->groups = P ? n_ranks / P : n_ranks;
  p->ctx = ctx;
  int S = P ? P : 1;
  p->stage = e8q_calloc((size_t)S, sizeof *p->stage, "eval plan stages");
  size_t *prefix = e8q_calloc((size_t)L + 1, sizeof(size_t), "layer byte prefix sums"); /* [L+1] */
  for (int l = 0; l < L; l++) prefix[l + 1] = prefix[l] + b->layer[l];
  size_t vblock = 4 * (size_t)E8Q_EVAL_VOCAB_BLOCK * (size_t)cfg->dim; /* lm_head rows in f32 */
  if (P == 0) { /* the data-parallel rank: everything, plus the f32 copies the whole model builds */
    e8q_eval_stage *s = &p->stage[0];
    s->lo = 0;
    s->hi = L;
    s->embed = s->head = 1;
    s->weights = prefix[L] + b->shared + b->embed + (b->tied ? 0 : b->head) + b->f32_copies;
    s->acts = acts_bytes(cfg, ctx, 1, 0);
    s->total = s->weights + s->acts;
    free(prefix);
    return;
  }
  /* best[s][j]: the smallest largest-stage total when stages 0..s hold layers [0, j), and among
   * those the smallest sum of squared stage totals (sq[s][j]: the stages under the largest are
   * balanced too); cut[s][j] the first layer of stage s there. Exact ties go to the earliest cut. */
  size_t *best = e8q_malloc(sizeof(size_t) * (size_t)P * (size_t)(L + 1), "pipeline split costs"); /* [P, L+1] */
  double *sq = e8q_malloc(sizeof(double) * (size_t)P * (size_t)(L + 1), "pipeline split balance");  /* [P, L+1] */
  int *cut = e8q_malloc(sizeof(int) * (size_t)P * (size_t)(L + 1), "pipeline split points");       /* [P, L+1] */
  for (int s = 0; s < P; s++)
    for (int j = 0; j <= L; j++) {
      size_t *bj = &best[(size_t)s * (L + 1) + j];
      double *qj = &sq[(size_t)s * (L + 1) + j];
      *bj = SIZE_MAX;
      *qj = 0;
      cut[(size_t)s * (L + 1) + j] = -1;
      int last = s == P - 1;
      if (last && j != L) continue;
      for (int i = s; i < j; i++) { /* stage s holds [i, j), i >= s so earlier stages hold >= 1 each */
        size_t prev = s == 0 ? (i == 0 ? 0 : SIZE_MAX) : best[(size_t)(s - 1) * (L + 1) + i];
        if (prev == SIZE_MAX) continue;
        size_t mine = stage_weights(b, prefix, i, j, s == 0, last) + acts_bytes(cfg, ctx, last, 1) + (last ? vblock : 0);
        size_t v = prev > mine ? prev : mine;
        double q = (s == 0 ? 0.0 : sq[(size_t)(s - 1) * (L + 1) + i]) + (double)mine * (double)mine;
        if (v < *bj || (v == *bj && q < *qj)) {
          *bj = v;
          *qj = q;
          cut[(size_t)s * (L + 1) + j] = i;
        }
      }
    }
  int j = L;
  for (int s = P - 1; s >= 0; s--) {
    int i = cut[(size_t)s * (L + 1) + j];
    E8Q_CHECK(i >= 0, "eval plan: no split of %d layers into %d stages", L, P);
    e8q_eval_stage *st = &p->stage[s];
    st->lo = i;
    st->hi = j;
    st->embed = s == 0;
    st->head = s == P - 1;
    st->weights = stage_weights(b, prefix, i, j, st->embed, st->head);
    st->acts = acts_bytes(cfg, ctx, st->head, 1) + (st->head ? vblock : 0);
    st->total = st->weights + st->acts;
    j = i;
  }
  free(best);
  free(sq);
  free(cut);
  free(prefix);
}

void e8q_eval_plan_free(e8q_eval_plan *p) {
  free(p->stage);
  memset(p, 0, sizeof *p);
}

void e8q_eval_bytes_free(e8q_eval_bytes *b) {
  free(b->layer);
  memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- print */

int e8q_eval_plan_print(const e8q_eval_plan *p, double mem_gib, void *file) {
  FILE *f = file;
  const double MiB = 1024.0 * 1024.0;
  if (p->P)
    fprintf(f, "evaluation: %d rank%s in %d group%s of %d pipeline stage%s, ctx %d\n", p->n_ranks,
            p->n_ranks > 1 ? "s" : "", p->groups, p->groups > 1 ? "s" : "", p->P, p->P > 1 ? "s" : "", p->ctx);
  else
    fprintf(f, "evaluation: %d rank%s, data parallel (every rank holds the whole model), ctx %d\n", p->n_ranks,
            p->n_ranks > 1 ? "s" : "", p->ctx);
  fprintf(f, "%5s %5s %5s %-9s %-11s %12s %12s %12s%s\n", "rank", "group", "stage", "layers", "holds", "weights_MiB",
          "acts_MiB", "total_MiB", mem_gib > 0 ? "  fits" : "");
  int bad = 0;
  for (int r = 0; r < p->n_ranks; r++) {
    const e8q_eval_stage *s = e8q_eval_plan_rank(p, r);
    char layers[32], holds[32];
    snprintf(layers, sizeof layers, "%d-%d", s->lo, s->hi - 1);
    snprintf(holds, sizeof holds, "%s", s->embed && s->head ? "embed+head" : s->embed ? "embed" : s->head ? "head" : "-");
    int fits = mem_gib <= 0 || (double)s->total <= mem_gib * 1024.0 * MiB;
    bad += !fits;
    fprintf(f, "%5d %5d %5d %-9s %-11s %12.1f %12.1f %12.1f%s\n", r, p->P ? r / p->P : r, p->P ? r % p->P : 0, layers,
            holds, (double)s->weights / MiB, (double)s->acts / MiB, (double)s->total / MiB,
            mem_gib > 0 ? (fits ? "  yes" : "  NO") : "");
  }
  return bad;
}
