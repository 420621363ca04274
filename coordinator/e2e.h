/* coordinator/e2e.h: the end-to-end fine-tuning stage of `e8q quantize` (DESIGN §2 "e2e";
 * coordinator/e2e.c, worker/finetune_e2e.h) and what the block, gather and validate stages take
 * from it. Not a public interface. */
#ifndef E8Q_COORDINATOR_E2E_H
#define E8Q_COORDINATOR_E2E_H

#include <stdint.h>

#include <cjson/cJSON.h>

#include "coordinator/runstate.h"

/* --ft e2e|all on a method with SU/SV */
int e8q_run_e2e_on(const e8q_run *R);
/* collective: e2e/targets of this rank's sequences from X_L [s1-s0, T, dim], the original
 * model's final hidden states (before the final norm), committed and journalled */
void e8q_run_e2e_targets_commit(e8q_run *R, const float *XL);
/* collective: 1 when every sequence's targets were committed and are intact */
int e8q_run_e2e_targets_have(e8q_run *R);
/* rank 0 removes e2e/targets (e8q_run_source_check's cleanup of the last block) */
void e8q_run_e2e_targets_remove(e8q_run *R);
/* collective: the stage (trains, checkpoints e2e/state.ckpt per epoch, journals STEP "e2e");
 * resumes from the checkpoint, reports its own progress step */
void e8q_run_e2e(e8q_run *R);

/* rank 0, for gather: the tuned tensors of e2e/state.ckpt (NULL when e2e is off) */
typedef struct e8q_e2e_tuned e8q_e2e_tuned;
e8q_e2e_tuned *e8q_run_e2e_tuned_open(e8q_run *R);
/* the tuned F32 tensor of artifact name `name` (its ndim and shape), or NULL (t may be NULL) */
const float *e8q_run_e2e_tuned_find(const e8q_e2e_tuned *t, const char *name, int *ndim, int64_t shape[2]);
void e8q_run_e2e_tuned_close(e8q_e2e_tuned *t);
/* rank 0, for validate: held-out CE before/after, epochs, steps, top-k (NULL when e2e is off) */
cJSON *e8q_run_e2e_record(e8q_run *R);

#endif
