/* coordinator/validate.h: the validate stage of `e8q quantize` (coordinator/validate.c).
 * Not a public interface. */
#ifndef E8Q_COORDINATOR_VALIDATE_H
#define E8Q_COORDINATOR_VALIDATE_H

#include "coordinator/runstate.h"

/* R/validation.json (collective: perplexity is evaluated on all ranks); journals STEP "validate" */
void e8q_run_validate(e8q_run *R);

#endif
