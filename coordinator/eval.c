/* coordinator/eval.c: building evaluation sequences and scoring them across ranks. */
#include "coordinator/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/log.h"
#include "io/text.h"
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

/* ---------------------------------------------------------------- scoring */

e8q_eval_result e8q_eval_run(const e8q_model *m, const e8q_eval_set *s, int progress) {
  e8q_comm *c = e8q_comm_get_opt(); /* NULL: a lone process without MPI (unit tests) */
  int rank = c ? e8q_comm_rank(c) : 0, size = c ? e8q_comm_size(c) : 1;
  double *nll = e8q_calloc((size_t)s->n, sizeof(double), "per-sequence NLL");   /* [n] */
  int64_t *cnt = e8q_calloc((size_t)s->n, sizeof(int64_t), "per-sequence counts"); /* [n] */
  double t0 = e8q_now(), last = t0;
  int cut = 0;
  for (int i = rank; i < s->n; i += size) {
    const int *seq = s->seq[i];
    int len = s->len[i];
    if (len > m->cfg.max_seq_len) { /* positions beyond the model's are not scored */
      len = m->cfg.max_seq_len;
      cut++;
    }
    long tokens = 0;
    e8q_score_seqs(m, 1, &seq, &len, &nll[i], &tokens);
    cnt[i] = tokens;
    if (progress && e8q_now() - last > 2.0) {
      last = e8q_now();
      e8q_info("eval: %d/%d sequences on rank 0, %.1f s", (i - rank) / size + 1, (s->n - rank + size - 1) / size,
               last - t0);
    }
  }
  if (cut)
    e8q_warn("eval: %d sequence%s longer than the model's %d positions: only the first %d tokens of each were scored",
             cut, cut > 1 ? "s" : "", m->cfg.max_seq_len, m->cfg.max_seq_len);
  /* every other rank holds zeros for sequence i: the sums are exact, the order fixed */
  if (size > 1) {
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
              m->path ? m->path : "the model", i, s->len[i], nll[i]);
  r.mean_nll = r.sum_nll / (double)r.tokens;
  r.ppl = exp(r.mean_nll);
  free(nll);
  free(cnt);
  return r;
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
