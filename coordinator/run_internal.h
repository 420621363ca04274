/* coordinator/run_internal.h: state shared by the driver's files (run.c, gather.c,
 * validate.c). Not a public interface. */
#ifndef E8Q_COORDINATOR_RUN_INTERNAL_H
#define E8Q_COORDINATOR_RUN_INTERNAL_H

#include <cjson/cJSON.h>

#include "common/comm.h"
#include "coordinator/calib.h"
#include "coordinator/run.h"
#include "io/rundir.h"
#include "io/safetensors.h"
#include "kernels/e8p.h"
#include "shard/model.h"
#include "shard/plan.h"

/* a source model file as it was when its sha256 went into the fingerprint (rank 0) */
typedef struct {
  char path[4096];
  long long size, ino, mtime_ns;
} e8q_run_src_file;

/* the stages whose wall time a run reports at its end (rank 0's clock; this process only: a
 * resumed run counts what it redid) */
typedef enum {
  E8Q_STAGE_EMBED,       /* calibration ids embedded: X_0 */
  E8Q_STAGE_HESSIAN,     /* the Hessian pass over each block */
  E8Q_STAGE_QUANTIZE,    /* RHT + LDLQ of each linear */
  E8Q_STAGE_BLOCK_FT,    /* block fine-tuning rounds (with their targets when recomputed) */
  E8Q_STAGE_PROPAGATE,   /* X_{b+1} = original block b (X_b), committed */
  E8Q_STAGE_E2E_TARGETS, /* the original model's top-k next-token targets */
  E8Q_STAGE_E2E,         /* end-to-end fine-tuning */
  E8Q_STAGE_GATHER,      /* model.safetensors from the shards */
  E8Q_STAGE_VALIDATE,    /* decode check and evaluation */
  E8Q_STAGE_PACK,        /* OUT.e8q */
  E8Q_N_STAGES
} e8q_run_stage;
extern const char *const e8q_run_stage_names[E8Q_N_STAGES];

typedef struct {
  const e8q_run_opts *o;
  e8q_comm *comm; /* the process communicator (e8q_comm_get) */
  int rank, size;
  e8q_config cfg;
  e8q_plan plan;
  e8q_rundir *rd;        /* rank 0 only */
  cJSON *fingerprint;    /* rank 0: the model's */
  cJSON *options;        /* rank 0: options that shape the result (plan.json "options") */
  e8q_calib calib;
  int s0, s1;            /* this rank's sequences [s0, s1) */
  int T, dim;
  float *X, *Y;          /* [s1-s0, T, dim] activations in / out of the current block */
  e8q_model *head;       /* embeddings, final norm, lm_head (no blocks) */
  e8q_st_model *st;      /* the source checkpoint */
  e8q_qlin_opts q;       /* per-linear options */
  e8q_run_src_file *src; /* rank 0: [n_src] the source model files (e8q_run_source_check) */
  int n_src;
  double stage_s[E8Q_N_STAGES]; /* wall seconds spent in each stage by this process */
} e8q_run;

/* stage timing: t = e8q_run_stage_begin(); ...; e8q_run_stage_end(R, stage, t) */
double e8q_run_stage_begin(void);
void e8q_run_stage_end(e8q_run *R, e8q_run_stage s, double t);

/* Collective: fatal (naming the file) when a source model file's size, inode or mtime changed
 * since its fingerprint was taken, i.e. the weights read since may mix old and new bytes. Called
 * after reading and before committing what was computed from them; `cleanup` (may be NULL) runs
 * on every rank first, to remove uncommitted intermediates. */
void e8q_run_source_check(e8q_run *R, const char *stage, void (*cleanup)(e8q_run *R, int b), int b);

/* rank 0 decides, every rank gets the answer */
int e8q_run_bcast_int(int v);
/* 1 when rel was committed and is intact (checked on rank 0, broadcast) */
int e8q_run_have(e8q_run *R, const char *rel);
int e8q_run_has_step(e8q_run *R, const char *step);
/* rank 0: journal a STEP */
void e8q_run_step(e8q_run *R, const char *step);

/* run.c: journals the files every rank wrote: each rank's "rel sha size\n" lines, journalled by
 * rank 0 in rank order (collective) */
void e8q_run_journal_files(e8q_run *R, const char *lines);
/* run.c: X_b [s1-s0, T, dim] of this rank's sequences from scratch: embed, original blocks 0..b-1 */
void e8q_run_acts_rebuild(e8q_run *R, int b, float *X);

/* e2e.c: end-to-end fine-tuning (worker/finetune_e2e.h) */
int e8q_run_e2e_on(const e8q_run *R); /* --ft e2e|all on a method with SU/SV */
/* collective: e2e/targets of this rank's sequences from X_L [s1-s0, T, dim], the original
 * model's final hidden states (before the final norm), committed and journalled */
void e8q_run_e2e_targets_commit(e8q_run *R, const float *XL);
/* collective: 1 when every sequence's targets were committed and are intact */
int e8q_run_e2e_targets_have(e8q_run *R);
/* rank 0 removes e2e/targets (e8q_run_source_check's cleanup of the last block) */
void e8q_run_e2e_targets_remove(e8q_run *R);
/* collective: the stage (trains, checkpoints e2e/state.ckpt per epoch, journals STEP "e2e") */
void e8q_run_e2e(e8q_run *R);
/* rank 0, for gather: the tuned tensors of e2e/state.ckpt (NULL when e2e is off) */
typedef struct e8q_e2e_tuned e8q_e2e_tuned;
e8q_e2e_tuned *e8q_run_e2e_tuned_open(e8q_run *R);
/* the tuned F32 tensor of artifact name `name` (its ndim and shape), or NULL (t may be NULL) */
const float *e8q_run_e2e_tuned_find(const e8q_e2e_tuned *t, const char *name, int *ndim, int64_t shape[2]);
void e8q_run_e2e_tuned_close(e8q_e2e_tuned *t);
/* rank 0, for validate: held-out CE before/after, epochs, steps, top-k (NULL when e2e is off) */
cJSON *e8q_run_e2e_record(e8q_run *R);

/* gather.c: R/model.safetensors and R/config.json from the block shards (rank 0) */
void e8q_run_gather(e8q_run *R);
/* validate.c: R/validation.json (collective: perplexity is evaluated on all ranks) */
void e8q_run_validate(e8q_run *R);
/* gather.c: OUT.e8q from R/ (rank 0) */
void e8q_run_pack(e8q_run *R);

#endif
