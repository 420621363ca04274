/* coordinator/gather.h: the gather and pack stages of `e8q quantize` (coordinator/gather.c).
 * Not a public interface. */
#ifndef E8Q_COORDINATOR_GATHER_H
#define E8Q_COORDINATOR_GATHER_H

#include "coordinator/runstate.h"

/* rank 0: R/model.safetensors and R/config.json from the block shards; journals STEP "gather" */
void e8q_run_gather(e8q_run *R);
/* rank 0: OUT.e8q from R/ */
void e8q_run_pack(e8q_run *R);

#endif
