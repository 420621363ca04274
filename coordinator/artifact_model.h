/* coordinator/artifact_model.h: a model from an .e8q artifact, for evaluation and generation.
 * Every rank unpacks the members it needs (config.json, model.safetensors, tokenizer files)
 * into a private temporary directory; the linears run through the fused kernels or, for
 * reference, as their dense decode. */
#ifndef E8Q_COORDINATOR_ARTIFACT_MODEL_H
#define E8Q_COORDINATOR_ARTIFACT_MODEL_H

#include "coordinator/qmodel.h"

typedef struct {
  char *dir;      /* the unpacked directory (removed by close), owned */
  e8q_qmodel q;
  e8q_model *m;   /* blocks' linears: q set (fused) or w set (dense) */
} e8q_artifact_model;

/* opens the artifact (structure checked, io/artifact.h), unpacks, builds the model */
void e8q_artifact_model_open(e8q_artifact_model *a, const char *artifact, int fused);
void e8q_artifact_model_close(e8q_artifact_model *a);

#endif
