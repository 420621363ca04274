/* coordinator/options.h: option parsing shared by the commands, and the defaults. */
#ifndef E8Q_COORDINATOR_OPTIONS_H
#define E8Q_COORDINATOR_OPTIONS_H

#define E8Q_DEFAULT_DEVSET 128   /* calibration sequences */
#define E8Q_DEFAULT_CTX 2048     /* tokens per sequence, capped by max_position_embeddings */

#include <stdint.h>
#include <stdio.h>

/* the default --ctx of a model with max_position_embeddings max_seq_len */
static inline int e8q_default_ctx(int max_seq_len) {
  return max_seq_len < E8Q_DEFAULT_CTX ? max_seq_len : E8Q_DEFAULT_CTX;
}

/* the value of option argv[*i] (advances *i); fatal naming the command and option when missing */
const char *e8q_opt_value(const char *cmd, int argc, char **argv, int *i);
/* 1 when a is --help or -h, after rank 0 printed usage to stdout (the command then returns 0) */
int e8q_opt_help(const char *a, void (*usage)(FILE *));
/* the options naming the model a command runs (eval, generate): --model PATH, --artifact OUT.e8q
 * (an .e8q archive, coordinator/artifact_model.h), --dense (with --artifact: dense decoded linears
 * instead of the fused kernels), --tokenizer PATH. 1 when argv[*i] is one of them (its value
 * stored, *i advanced past it), else 0. */
int e8q_opt_model(const char *cmd, int argc, char **argv, int *i, const char **model, const char **artifact,
                  int *dense, const char **tokenizer);
/* --head source|q8 (eval, generate): the head and the embedding in their stored precision
 * (default) or rounded to 8 bits with a scale per 32 weights (e8q_model_head_to_q8). 1 when
 * argv[*i] is --head (*head_q8 set, *i advanced), else 0; fatal on another value. */
int e8q_opt_head(const char *cmd, int argc, char **argv, int *i, int *head_q8);
/* the value of --head: 1 for q8, 0 for source; fatal naming cmd otherwise */
int e8q_head_parse(const char *cmd, const char *v);
#define E8Q_OPT_HEAD_HELP                                                                          \
  "  --head H          source (default: the head in its stored precision, float16 in place for an\n" \
  "                    artifact) or q8: rounded to 8 bits with a scale per 32 weights (1.125 bytes\n" \
  "                    per weight; the embedding is rounded with it), read so by one-token steps\n"
/* integer/double option values in [lo, hi]; fatal naming the option otherwise */
int e8q_opt_int(const char *opt, const char *v, int lo, int hi);
double e8q_opt_double(const char *opt, const char *v, double lo, double hi);
/* a non-negative integer (decimal or 0x hex) such as a seed */
uint64_t e8q_opt_u64(const char *opt, const char *v);

#endif
