/* coordinator/eval.c: building evaluation sequences and scoring them across ranks. */
#include "coordinator/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/log.h"
#include "io/text.h"
#include "kernels/gemm_panels.h"
#include "kernels/matvec_q8.h"
#include "kernels/transformer.h"
#include "worker/forward.h"

/* ---------------------------------------------------------------- building sets */

/* an id file for --per-line: one sequence per BOS (each BOS starts a new "line") */
static void set_lines_ids(e8q_eval_set *s, const char *path, int bos, int n_lines) {
  int *ids = NULL;
  long n = (long)e8q_ids_read(path, 0, &ids);
  int count = 0;
  for (long i = 0; i < n; i++)
    if (ids[i] == bos || i == 0) count++;
  if (count > n_lines) count = n_lines;
  s->n = count;
  s->seq = e8q_calloc((size_t)count, sizeof(int *), "eval sequences");
  s->len = e8q_calloc((size_t)count, sizeof(int), "eval lengths");
  long start = 0;
  for (int k = 0; k < count; k++) {
    long end = start + 1;
    while (end < n && ids[end] != bos) end++;
    E8Q_CHECK(end - start < (1L << 30), "%s: sequence %d is too long", path, k);
    s->len[k] = (int)(end - start);
    s->seq[k] = e8q_malloc(sizeof(int) * (size_t)s->len[k], "eval sequence");
    memcpy(s->seq[k], ids + start, sizeof(int) * (size_t)s->len[k]);
    start = end;
  }
  if (count < n_lines) e8q_warn("%s holds only %d BOS-separated sequences (--per-line %d asked for more)", path, count, n_lines);
  free(ids);
}

void e8q_eval_set_lines(e8q_eval_set *s, const char *text_path, const e8q_tokenizer *tok, int n_lines) {
  memset(s, 0, sizeof *s);
  E8Q_CHECK(n_lines > 0, "--per-line %d: the number of lines must be positive", n_lines);
  if (e8q_ids_is_file(text_path)) {
    set_lines_ids(s, text_path, tok ? e8q_tokenizer_bos_id(tok) : 1, n_lines);
    return;
  }
  E8Q_CHECK(tok, "--per-line needs a tokenizer for %s", text_path);
  size_t len = 0;
  char *text = e8q_text_read(text_path, &len);
  char **lines = NULL;
  int n = e8q_text_lines(text, 0, n_lines, &lines);
  E8Q_CHECK(n > 0, "%s has no non-empty lines to score", text_path);
  if (n < n_lines) e8q_warn("%s has only %d non-empty lines (--per-line %d asked for more)", text_path, n, n_lines);
  s->n = n;
  s->seq = e8q_calloc((size_t)n, sizeof(int *), "eval sequences");
  s->len = e8q_calloc((size_t)n, sizeof(int), "eval lengths");
  for (int i = 0; i < n; i++) s->len[i] = e8q_tokenizer_encode(tok, lines[i], e8q_tokenizer_add_bos(tok), 0, &s->seq[i]);
  e8q_text_lines_free(lines, n);
  free(text);
}

void e8q_eval_set_windows(e8q_eval_set *s, const char *text_path, const e8q_tokenizer *tok, int vocab_size, int ctx,
                          int max_windows) {
  memset(s, 0, sizeof *s);
  E8Q_CHECK(ctx >= 2, "--ctx %d: a window needs at least 2 tokens", ctx);
  int *ids = NULL;
  long n_ids;
  if (e8q_ids_is_file(text_path)) {
    n_ids = (long)e8q_ids_read(text_path, vocab_size, &ids);
  } else {
    E8Q_CHECK(tok, "--ctx needs a tokenizer for the text %s", text_path);
    size_t len = 0;
    char *text = e8q_text_read(text_path, &len);
    n_ids = e8q_tokenizer_encode(tok, text, e8q_tokenizer_add_bos(tok), 0, &ids);
    free(text);
  }
  E8Q_CHECK(n_ids >= 2, "%s holds %ld tokens: nothing to score", text_path, n_ids);
  long n_win = n_ids / ctx;
  int tail_only = 0;
  if (n_win == 0) {
    e8q_warn("%s holds %ld tokens, fewer than --ctx %d: scoring it as one shorter window", text_path, n_ids, ctx);
    n_win = 1;
    tail_only = 1;
  }
  E8Q_CHECK(n_win < (1L << 30), "%s: too many windows", text_path);
  if (max_windows > 0 && n_win > max_windows) n_win = max_windows;
  s->n = (int)n_win;
  s->seq = e8q_calloc((size_t)n_win, sizeof(int *), "eval windows");
  s->len = e8q_calloc((size_t)n_win, sizeof(int), "eval lengths");
  for (long w = 0; w < n_win; w++) {
    int L = tail_only ? (int)n_ids : ctx;
    s->len[w] = L;
    s->seq[w] = e8q_malloc(sizeof(int) * (size_t)L, "eval window");
    memcpy(s->seq[w], ids + w * ctx, sizeof(int) * (size_t)L);
  }
  free(ids);
}

void e8q_eval_set_free(e8q_eval_set *s) {
  for (int i = 0; i < s->n; i++) free(s->seq[i]);
  free(s->seq);
  free(s->len);
  memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- model ends */

void e8q_eval_ends_from_model(e8q_eval_ends *e, const e8q_model *m) {
  memset(e, 0, sizeof *e);
  e->cfg = m->cfg;
  e->embed = m->embed;
  e->lm_head = m->lm_head;
  e->final_norm = m->final_norm;
  e->label = m->path;
}

void e8q_eval_ends_from_st(e8q_eval_ends *e, const e8q_config *cfg, const e8q_safetensors *st, int head) {
  memset(e, 0, sizeof *e);
  e->cfg = *cfg;
  e->st = st;
  e->label = st->path;
  e->embed_name = "model.embed_tokens.weight";
  e->head_name = cfg->tied ? "model.embed_tokens.weight" : "lm_head.weight";
  const e8q_st_tensor *t = e8q_st_find(st, e->embed_name);
  E8Q_CHECK(t && e8q_st_numel(t) == (int64_t)cfg->vocab_size * cfg->dim,
            "%s: tensor %s is missing or not [%d, %d]", st->path, e->embed_name, cfg->vocab_size, cfg->dim);
  if (!head) return;
  t = e8q_st_find(st, e->head_name);
  E8Q_CHECK(t && e8q_st_numel(t) == (int64_t)cfg->vocab_size * cfg->dim, "%s: tensor %s is missing or not [%d, %d]",
            st->path, e->head_name, cfg->vocab_size, cfg->dim);
  int64_t D = cfg->dim;
  e->norm_owned = e8q_malloc(sizeof(float) * (size_t)D, "model.norm"); /* [dim] */
  e8q_st_read_f32(st, "model.norm.weight", 1, &D, e->norm_owned);
  e->final_norm = e->norm_owned;
}

void e8q_eval_ends_free(e8q_eval_ends *e) {
  free(e->norm_owned);
  memset(e, 0, sizeof *e);
}

/* x [T, dim] <- the embedding rows of ids [T] (the f32 table, or rows converted from the mapping:
 * the same floats, f16/bf16 -> f32 being exact; non-finite rows are fatal there) */
static void ends_embed(const e8q_eval_ends *e, int T, const int *ids, float *x) {
  int D = e->cfg.dim;
  for (int t = 0; t < T; t++) {
    E8Q_CHECK(ids[t] >= 0 && ids[t] < e->cfg.vocab_size,
              "token id %d (position %d) is outside the model's vocabulary [0, %d): wrong tokenizer or id file?", ids[t],
              t, e->cfg.vocab_size);
    if (e->embed)
      memcpy(x + (size_t)t * D, e->embed + (size_t)ids[t] * D, sizeof(float) * (size_t)D);
    else {
      e8q_st_read_f32_range(e->st, e->embed_name, (int64_t)ids[t] * D, D, x + (size_t)t * D);
      if (e->head_q8) e8q_q8_round(1, D, x + (size_t)t * D, e->embed_name, NULL);
    }
  }
}

/* Sum over rows r of x [N, dim] with targets[r] >= 0 of -log softmax(lm_head(norm(x_r)))[targets[r]],
 * in chunks of E8Q_EVAL_HEAD_ROWS rows, each chunk's logits computed over blocks of
 * E8Q_EVAL_VOCAB_BLOCK lm_head rows (f32 in place, or converted into wblk). x is overwritten by
 * the normed rows. logits [E8Q_EVAL_HEAD_ROWS, vocab], wblk [E8Q_EVAL_VOCAB_BLOCK, dim] (unused
 * with an f32 head). */
static double ends_nll(const e8q_eval_ends *e, int N, float *x, const int *targets, long *count, float *logits,
                       float *wblk) {
  int D = e->cfg.dim, V = e->cfg.vocab_size;
  double sum = 0.0;
  long cnt = 0;
  for (int r0 = 0; r0 < N; r0 += E8Q_EVAL_HEAD_ROWS) {
    int rows = N - r0 < E8Q_EVAL_HEAD_ROWS ? N - r0 : E8Q_EVAL_HEAD_ROWS;
    float *xr = x + (size_t)r0 * D; /* [rows, dim] */
    e8q_rmsnorm(rows, D, xr, e->final_norm, (float)e->cfg.norm_eps, xr);
    for (int v0 = 0; v0 < V; v0 += E8Q_EVAL_VOCAB_BLOCK) {
      int vb = V - v0 < E8Q_EVAL_VOCAB_BLOCK ? V - v0 : E8Q_EVAL_VOCAB_BLOCK;
      const float *W = e->lm_head ? e->lm_head + (size_t)v0 * D : wblk; /* [vb, dim] */
      if (!e->lm_head) {
        e8q_st_read_f32_range(e->st, e->head_name, (int64_t)v0 * D, (int64_t)vb * D, wblk);
        if (e->head_q8) e8q_q8_round(vb, D, wblk, e->head_name, NULL);
      }
      /* OpenMP panels of single-threaded BLAS, as every batched product (kernels/gemm_panels.h) */
      e8q_gemm_panels(rows, vb, D, xr, W, NULL, NULL, e8q_gemm_panel_rows(vb), logits + v0, V);
    }
    e8q_nll_rows(rows, V, logits, targets + r0, &sum, &cnt);
  }
  if (count) *count = cnt;
  return sum;
}

/* ---------------------------------------------------------------- scoring */

/* the tokens of sequence i that are scored: at most the model's positions */
static int eval_len(const e8q_eval_set *s, int i, int max_len) { return s->len[i] < max_len ? s->len[i] : max_len; }

/* per-sequence sums (zero where another rank computed them) -> the result, in sequence order */
static e8q_eval_result eval_finish(e8q_comm *c, const e8q_eval_set *s, double *nll, int64_t *cnt, const char *label) {
  if (c && e8q_comm_size(c) > 1) { /* one rank holds sequence i's values, every other zeros: exact */
    e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_F64, nll, (size_t)s->n);
    e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_I64, cnt, (size_t)s->n);
  }
  e8q_eval_result r = {0};
  for (int i = 0; i < s->n; i++) {
    r.sum_nll += nll[i];
    r.tokens += cnt[i];
  }
  E8Q_CHECK(r.tokens > 0, "evaluation scored no tokens (every sequence shorter than 2 tokens)");
  /* a NaN or Inf would print "mean_nll": null and exit 0: the model is broken, say so (every rank
   * holds the same sums, so every rank stops here) */
  for (int i = 0; i < s->n; i++)
    E8Q_CHECK(isfinite(nll[i]),
              "evaluation of %s: sequence %d (%d tokens) has a non-finite NLL (%g): the model's logits overflow "
              "or hold NaN, so its weights are damaged or out of float32 range; check the model (e8q inspect "
              "--verify for an artifact) or re-create it",
              label ? label : "the model", i, s->len[i], nll[i]);
  r.mean_nll = r.sum_nll / (double)r.tokens;
  r.ppl = exp(r.mean_nll);
  return r;
}

e8q_eval_result e8q_eval_run_pipeline(const e8q_model *blocks, int lo, int hi, const e8q_eval_ends *ends, int P,
                                      const e8q_eval_set *s, int progress) {
  e8q_comm *c = e8q_comm_get_opt(); /* NULL: a lone process without MPI (unit tests) */
  int rank = c ? e8q_comm_rank(c) : 0, size = c ? e8q_comm_size(c) : 1;
  E8Q_CHECK(P >= 1 && size % P == 0, "--pipeline %d: the rank count %d is not a multiple of it", P, size);
  const e8q_config *cfg = &ends->cfg;
  int G = size / P, g = rank / P, st = rank % P, first = st == 0, last = st == P - 1;
  int D = cfg->dim, max_len = cfg->max_seq_len;
  double *nll = e8q_calloc((size_t)s->n, sizeof(double), "per-sequence NLL");   /* [n] */
  int64_t *cnt = e8q_calloc((size_t)s->n, sizeof(int64_t), "per-sequence counts"); /* [n] */
  /* this group's windows that score anything, in order: every stage of the group walks the same list */
  int *mine = e8q_malloc(sizeof(int) * (size_t)(s->n / G + 1), "group windows"); /* [<= n/G + 1] */
  int nm = 0, maxT = 2, cut = 0;
  for (int i = g; i < s->n; i += G) {
    int T = eval_len(s, i, max_len);
    if (s->len[i] > max_len) cut++;
    if (T < 2) continue;
    mine[nm++] = i;
    if (T > maxT) maxT = T;
  }
  if (cut && first)
    e8q_warn("eval: %d sequence%s longer than the model's %d positions: only the first %d tokens of each were scored",
             cut, cut > 1 ? "s" : "", max_len, max_len);
  float *buf[2]; /* [maxT, dim] each: the residual stream of a window (receive/compute, send) */
  for (int k = 0; k < 2; k++) buf[k] = e8q_alloc_aligned(sizeof(float) * (size_t)maxT * D, "residual stream");
  e8q_comm_req *rq[2] = {NULL, NULL}, *sq[2] = {NULL, NULL};
  float *logits = last ? e8q_alloc_aligned(sizeof(float) * E8Q_EVAL_HEAD_ROWS * (size_t)cfg->vocab_size, "logits chunk")
                       : NULL; /* [64, vocab] */
  float *wblk = last && !ends->lm_head
                    ? e8q_alloc_aligned(sizeof(float) * E8Q_EVAL_VOCAB_BLOCK * (size_t)D, "lm_head block")
                    : NULL; /* [2048, dim] */
  int *targets = e8q_malloc(sizeof(int) * (size_t)maxT, "targets"); /* [maxT] */
  e8q_fwd_scratch scr = {0};
  double t0 = e8q_now(), tlast = t0;
  /* stage s > 0 keeps the next window's receive posted while it computes (buffers alternate) */
  if (!first && nm > 0) rq[0] = e8q_comm_irecv(c, buf[0], sizeof(float) * (size_t)eval_len(s, mine[0], max_len) * D,
                                               rank - 1, 0);
  for (int k = 0; k < nm; k++) {
    int i = mine[k], T = eval_len(s, i, max_len), b = k % 2, tag = k % 32768;
    float *x = buf[b]; /* [T, dim] */
    if (first) {
      e8q_comm_wait(sq[b]); /* window k-2's send from this buffer */
      sq[b] = NULL;
      ends_embed(ends, T, s->seq[i], x);
    } else {
      e8q_comm_wait(rq[b]);
      rq[b] = NULL;
      if (k + 1 < nm) {
        e8q_comm_wait(sq[1 - b]); /* window k-1 left from the other buffer */
        sq[1 - b] = NULL;
        rq[1 - b] = e8q_comm_irecv(c, buf[1 - b], sizeof(float) * (size_t)eval_len(s, mine[k + 1], max_len) * D,
                                   rank - 1, (k + 1) % 32768);
      }
    }
    for (int l = lo; l < hi; l++) e8q_block_forward(&blocks->blocks[l], cfg, 1, T, x, NULL, &scr);
    if (!last) {
      sq[b] = e8q_comm_isend(c, x, sizeof(float) * (size_t)T * D, rank + 1, tag);
    } else {
      for (int t = 0; t + 1 < T; t++) targets[t] = s->seq[i][t + 1];
      targets[T - 1] = -1;
      long n_scored = 0;
      nll[i] = ends_nll(ends, T, x, targets, &n_scored, logits, wblk);
      cnt[i] = n_scored;
    }
    if (progress && e8q_now() - tlast > 2.0) {
      tlast = e8q_now();
      e8q_info("eval: %d/%d sequences on rank 0, %.1f s", k + 1, nm, tlast - t0);
    }
  }
  for (int k = 0; k < 2; k++) {
    e8q_comm_wait(sq[k]);
    e8q_comm_wait(rq[k]);
  }
  e8q_fwd_scratch_free(&scr);
  free(targets);
  free(wblk);
  free(logits);
  for (int k = 0; k < 2; k++) free(buf[k]);
  free(mine);
  e8q_eval_result r = eval_finish(c, s, nll, cnt, ends->label);
  free(nll);
  free(cnt);
  return r;
}

e8q_eval_result e8q_eval_run(const e8q_model *m, const e8q_eval_set *s, int progress) {
  E8Q_CHECK(m->blocks, "model %s was loaded without its blocks", m->path ? m->path : "(memory)");
  e8q_eval_ends e;
  e8q_eval_ends_from_model(&e, m);
  return e8q_eval_run_pipeline(m, 0, m->cfg.n_layers, &e, 1, s, progress);
}

/* ---------------------------------------------------------------- tokenizer */

e8q_tokenizer *e8q_eval_open_tokenizer(const char *model_path, const e8q_config *cfg, const char *tok_opt, int required,
                                       char **used) {
  char *path = tok_opt ? strdup(tok_opt) : e8q_tokenizer_find(model_path, cfg->vocab_size);
  if (!path) {
    E8Q_CHECK(!required,
              "no tokenizer found for model %s (looked for tokenizer.model in a model directory, tokenizer.bin, "
              "tok%d.bin or tokenizer.model beside a .bin): pass --tokenizer FILE",
              model_path, cfg->vocab_size);
    if (used) *used = NULL;
    return NULL;
  }
  e8q_tokenizer *t = e8q_tokenizer_load(path);
  e8q_tokenizer_check_vocab(t, cfg->vocab_size, model_path);
  if (used)
    *used = path;
  else
    free(path);
  return t;
}
