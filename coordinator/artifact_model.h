/* coordinator/artifact_model.h: a model from an .e8q artifact, for evaluation and generation.
 * model.safetensors is memory-mapped in place inside the archive (e8q_st_open_region); every
 * rank unpacks only the tokenizer files into a private temporary directory. The linears run
 * through the fused kernels or, for reference, as their dense decode. */
#ifndef E8Q_COORDINATOR_ARTIFACT_MODEL_H
#define E8Q_COORDINATOR_ARTIFACT_MODEL_H

#include "coordinator/qmodel.h"

typedef struct {
  char *dir;      /* the directory with the unpacked tokenizer files (removed by close), owned */
  e8q_qmodel q;
  e8q_model *m;   /* blocks' linears: q set (fused) or w set (dense) */
} e8q_artifact_model;

/* opens the artifact (structure checked, io/artifact.h), maps the weights, builds the model */
void e8q_artifact_model_open(e8q_artifact_model *a, const char *artifact, int fused);
void e8q_artifact_model_close(e8q_artifact_model *a);

#endif
