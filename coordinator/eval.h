/* coordinator/eval.h: perplexity evaluation, shared by `e8q eval` and the pipeline.
 *
 * An evaluation is a list of token sequences, each scored with a fresh context (tokens
 * 1..len-1 predicted from their prefixes). Sequences are split across MPI ranks round-robin;
 * per-sequence sums come back to every rank and are added in sequence order, so the result
 * is bit-identical for any number of ranks. */
#ifndef E8Q_COORDINATOR_EVAL_H
#define E8Q_COORDINATOR_EVAL_H

#include "io/tokenizer.h"
#include "shard/evalplan.h"
#include "shard/model.h"

typedef struct {
  int n;          /* sequences */
  int **seq;      /* [n] token ids, owned */
  int *len;       /* [n] */
} e8q_eval_set;

/* --per-line N: the first n_lines non-empty lines of a text file, each [BOS] + encode(line) (no
 * BOS for a tokenizer whose model adds none, e8q_tokenizer_add_bos).
 * An id file (.ids/.u32) is cut before each BOS id (the tokenizer's, or 1 when tok is NULL):
 * the first n_lines pieces, so [BOS]+ids of each line concatenated give the same result. */
void e8q_eval_set_lines(e8q_eval_set *s, const char *text_path, const e8q_tokenizer *tok, int n_lines);
/* --ctx T: the whole text encoded once ([BOS] + encode(text) when the tokenizer's model adds a
 * BOS, e8q_tokenizer_add_bos; an id file is taken as is) and cut into non-overlapping windows of
 * T tokens; a shorter tail is dropped unless it is the only window; max_windows > 0 keeps only
 * the first max_windows. tok may be NULL for an id file; vocab_size bounds the ids. */
void e8q_eval_set_windows(e8q_eval_set *s, const char *text_path, const e8q_tokenizer *tok, int vocab_size, int ctx,
                          int max_windows);
void e8q_eval_set_free(e8q_eval_set *s);

typedef struct {
  double sum_nll; /* nats over all scored tokens */
  long tokens;    /* scored tokens */
  double mean_nll, ppl;
} e8q_eval_result;

/* Scores the set on all ranks of the process communicator (e8q_comm_get_opt(); without one, on
 * this process alone; every rank holds the model). A sequence longer
 * than the model's max positions is scored on its first max_seq_len tokens (with a warning).
 * progress: a line every few seconds on rank 0. */
e8q_eval_result e8q_eval_run(const e8q_model *m, const e8q_eval_set *s, int progress);

/* ---------------------------------------------------------------- layer-pipelined evaluation
 * The two ends of a model for scoring: token embedding and final norm + lm_head, either the f32
 * tables of a whole model, or read from a safetensors mapping as they are needed (embedding rows
 * as tokens come, lm_head in blocks of E8Q_EVAL_VOCAB_BLOCK rows converted to f32), so a stage of
 * a pipeline touches only the pages it uses. Both give the same floats (f16/bf16 -> f32 is exact),
 * and scoring goes through the same chunks (shard/evalplan.h), so the sums are the same bits. */
typedef struct {
  e8q_config cfg;
  const float *embed, *lm_head;       /* [vocab, dim] f32 tables, or NULL: read from st */
  const float *final_norm;            /* [dim] */
  const e8q_safetensors *st;          /* the mapping (not owned) when the tables are NULL */
  const char *embed_name, *head_name; /* their tensors in st */
  const char *label;                  /* for messages */
  float *norm_owned;                  /* [dim], owned */
  int head_q8;                        /* --head q8 on rows read from st: head blocks and embedding
                                         rows rounded as they are read (e8q_q8_round), the bits of
                                         e8q_model_head_to_q8 on the whole tables */
} e8q_eval_ends;
void e8q_eval_ends_from_model(e8q_eval_ends *e, const e8q_model *m);
/* head: also the final norm (read now) and lm_head (checked now, read while scoring) */
void e8q_eval_ends_from_st(e8q_eval_ends *e, const e8q_config *cfg, const e8q_safetensors *st, int head);
void e8q_eval_ends_free(e8q_eval_ends *e);

/* Ranks form groups of P consecutive ranks (rank = group * P + stage); this rank, stage
 * rank % P, holds blocks[lo, hi) of `blocks` (the other blocks may be empty); stage 0 embeds with
 * `ends`, stage P-1 scores with it. Groups take the sequences round-robin; within a group each
 * sequence's residual stream [T, dim] goes stage to stage (nonblocking MPI point to point: a stage
 * receives the next window while it computes this one). Every window runs alone (one sequence per
 * block forward), so its NLL is the same bits whatever P and the group count, and the sums are
 * added in sequence order: the result equals e8q_eval_run's. Collective over all ranks. */
e8q_eval_result e8q_eval_run_pipeline(const e8q_model *blocks, int lo, int hi, const e8q_eval_ends *ends, int P,
                                      const e8q_eval_set *s, int progress);

/* The tokenizer for a model: tok_opt when given, else the model's own (DIR/tokenizer.model,
 * or tokenizer.bin / tok<vocab>.bin / tokenizer.model beside a .bin). Its vocabulary size must equal the model's
 * (fatal naming both files). NULL when none is found and !required (fatal otherwise).
 * *used gets the path (malloc'd) when not NULL. */
e8q_tokenizer *e8q_eval_open_tokenizer(const char *model_path, const e8q_config *cfg, const char *tok_opt, int required,
                                       char **used);

#endif
