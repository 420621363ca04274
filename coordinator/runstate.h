/* coordinator/runstate.h: the state of one `e8q quantize` run and the helpers every stage uses
 * on it (coordinator/run.c drives the stages; block.c, e2e.c, gather.c and validate.c are the
 * stages; each includes this header and the headers of the stages it reads from, never run.c's).
 * Not a public interface.
 *
 * Resumable state: every file of the run directory is committed atomically and journalled
 * (io/rundir.h); e8q_run_have / e8q_run_has_step ask rank 0 and broadcast the answer, so every
 * rank takes the same branch. */
#ifndef E8Q_COORDINATOR_RUNSTATE_H
#define E8Q_COORDINATOR_RUNSTATE_H

#include <signal.h>

#include <cjson/cJSON.h>

#include "common/comm.h"
#include "coordinator/calib.h"
#include "coordinator/run.h"
#include "io/rundir.h"
#include "io/safetensors.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "kernels/qlinear.h"
#include "shard/model.h"
#include "shard/plan.h"
#include "worker/trainer.h"

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
/* a table row whose stage times itself, or nothing */
#define E8Q_STAGE_UNTIMED E8Q_N_STAGES

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
  int block0;            /* the first block not committed when the run started (resume point) */
  double stage_s[E8Q_N_STAGES]; /* wall seconds spent in each stage by this process */
  e8q_device dev;        /* this rank's device (--device; common/device.h) */
} e8q_run;

/* stage timing: t = e8q_run_stage_begin(); ...; e8q_run_stage_end(R, stage, t) */
double e8q_run_stage_begin(void);
void e8q_run_stage_end(e8q_run *R, e8q_run_stage s, double t);

/* ---------------------------------------------------------------- stage tables
 * A run is a table of stages (coordinator/run.c), a block a table of sub-stages
 * (coordinator/block.c); e8q_stages_run walks one in order, and for each row:
 *   st = resume(R, ctx)   collective (NULL: E8Q_STAGE_RUN, the stage resumes inside itself):
 *                         restores what an earlier run committed and says what is left
 *   if st == RUN:         run(R, ctx), timed under `timer` (E8Q_STAGE_UNTIMED: it times itself)
 *   check(R, ctx)         (NULL: none) whether it ran or not, e.g. a source model check
 *   fault                 the fault point passed after it ran (common/fault.h; NULL: none), and
 *                         also after it was resumed when fault_resumed
 *   progress              the progress step reported (resumed when st == RESUMED), or NULL when
 *                         the stage reports its own (per group, per block, with a detail) */
enum {
  E8Q_STAGE_RUN = 0,     /* run it */
  E8Q_STAGE_RESUMED = 1, /* committed by an earlier run: skipped, reported as resumed */
  E8Q_STAGE_NOTHING = 2  /* nothing to do in this run: skipped, reported as done */
};
typedef struct {
  const char *name;
  int (*resume)(e8q_run *R, void *ctx);
  void (*run)(e8q_run *R, void *ctx);
  int timer; /* e8q_run_stage, or E8Q_STAGE_UNTIMED */
  void (*check)(e8q_run *R, void *ctx);
  const char *fault;
  int fault_resumed;
  const char *progress;
} e8q_stage;

/* collective: rows [0, n) in order; layer goes to the progress steps (-1: none) */
void e8q_stages_run(const e8q_stage *rows, int n, e8q_run *R, void *ctx, int layer);

/* ---------------------------------------------------------------- rank agreement and the journal */
/* rank 0 decides, every rank gets the answer */
int e8q_run_bcast_int(int v);
void e8q_run_barrier(void);
/* 1 when rel was committed and is intact (checked on rank 0, broadcast) */
int e8q_run_have(e8q_run *R, const char *rel);
int e8q_run_has_step(e8q_run *R, const char *step);
/* rank 0: journal a STEP */
void e8q_run_step(e8q_run *R, const char *step);
/* journals the files every rank wrote: each rank's "rel sha size\n" lines, journalled by rank 0
 * in rank order (collective) */
void e8q_run_journal_files(e8q_run *R, const char *lines);

/* ---------------------------------------------------------------- the source model under the run */
/* all ranks: SIGBUS while the run reads mapped files names the source model (old: the handler
 * to restore at the end) */
void e8q_run_source_sigbus_install(const e8q_run_opts *o, struct sigaction *old);
/* rank 0, right after the fingerprint was hashed: the size, inode and mtime of each file it names */
void e8q_run_source_record(e8q_run *R);
/* Collective: fatal (naming the file) when a source model file's size, inode or mtime changed
 * since its fingerprint was taken, i.e. the weights read since may mix old and new bytes. Called
 * after reading and before committing what was computed from them; `cleanup` (may be NULL) runs
 * on every rank first, to remove uncommitted intermediates. */
void e8q_run_source_check(e8q_run *R, const char *stage, void (*cleanup)(e8q_run *R, int b), int b);

/* ---------------------------------------------------------------- activations
 * acts/x{b}/s{i}.ckpt: X_b of calibration sequence i, F32 [T, dim] (T*dim floats a sequence:
 * e8q_run_act_floats) */
size_t e8q_run_act_floats(const e8q_run *R);
/* collective: X_b [s1-s0, T, dim] of this rank's sequences committed and journalled */
void e8q_run_acts_commit(e8q_run *R, int b, const float *X);
/* collective: X_b of this rank's sequences loaded when every sequence's file is intact; 0 otherwise */
int e8q_run_acts_load(e8q_run *R, int b, float *X);
/* rank 0 removes acts/x{b} */
void e8q_run_acts_remove(e8q_run *R, int b);
/* X_0 of this rank's sequences: the embeddings of their tokens */
void e8q_run_acts_embed(e8q_run *R, float *X);
/* X_b [s1-s0, T, dim] of this rank's sequences from scratch: embed, original blocks 0..b-1 */
void e8q_run_acts_rebuild(e8q_run *R, int b, float *X);

/* ---------------------------------------------------------------- quantized linears to train
 * Group g of block b as the fused kernels take it (kernels/qlinear.h), read from an open part
 * (g's part file, shard 0) or block shard (shard 1) for a fine-tuning stage: the codes, Wscale and
 * fuse scales copied (the file may be closed afterwards); SU [n_pad] and SV [m] are the caller's
 * (the trained vector), and so are the Hadamard factors fac[0] (of n_pad) and fac[1] (of m). */
typedef struct {
  e8q_qlinear ql;
  uint16_t *codes;                   /* [m, n_pad/8] owned (aligned) */
  void *codes2;                      /* [m, n_pad/8] u16 / u8 owned, or NULL */
  float fs[E8Q_PLAN_MAX_PIECES];     /* fuse scales, borrowed by ql: the struct must not move */
} e8q_run_qlin;
void e8q_run_qlin_open(e8q_run_qlin *q, const e8q_run *R, const e8q_safetensors *st, int shard, int b, int g,
                       float *SU, float *SV, const e8q_had_factor fac[2]);
void e8q_run_qlin_close(e8q_run_qlin *q);

/* ---------------------------------------------------------------- training
 * the options' learning rates, batch and seed with `epochs` (--ft-epochs or --e2e-epochs) */
e8q_train_hparams e8q_run_train_hparams(const e8q_run *R, int epochs);

/* ---------------------------------------------------------------- training checkpoints
 * A fine-tuning state (worker/trainer.h) as a checkpoint of kind `kind` (io/ckpt.h): the caller's
 * extra (key, value) metadata pairs (NULL-terminated; may be NULL), then epoch, step, worse,
 * started, done and the four losses, and the tensors p, best, m, v [S->n]. Rank 0; the file is
 * written atomically (sha and size for the journal). */
void e8q_run_train_ckpt_write(const char *path, const char *kind, const e8q_train_state *S,
                              const char *const *extra, char sha[65], uint64_t *size);
/* the counters, losses and tensors of such a checkpoint into S (its layout, S->n, set) */
void e8q_run_train_ckpt_read(const e8q_safetensors *st, const char *path, e8q_train_state *S);

#endif
