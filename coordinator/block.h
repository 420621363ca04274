/* coordinator/block.h: the per-block stage of `e8q quantize` (coordinator/block.c): hessian,
 * quantize (with block fine-tuning rounds), propagate, e2e-targets, commit and cleanup of one
 * decoder block. Not a public interface. */
#ifndef E8Q_COORDINATOR_BLOCK_H
#define E8Q_COORDINATOR_BLOCK_H

#include "coordinator/runstate.h"

/* Collective: the first block not committed (its STEP "block b" journalled and shards/{b}.e8qs
 * intact); removes what a run killed after the previous block's STEP left behind. */
int e8q_run_blocks_resume(e8q_run *R);
/* collective: block b from X_b in R->X; leaves X_{b+1} in R->Y (the caller swaps them) */
void e8q_run_block(e8q_run *R, int b);
/* the progress steps of a block committed by an earlier run */
void e8q_run_block_resumed(e8q_run *R, int b);

#endif
