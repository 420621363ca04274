/* coordinator/artifact_model.h: a model from an .e8q artifact, for evaluation and generation.
 * model.safetensors is memory-mapped in place inside the archive (e8q_st_open_region); every
 * rank unpacks only the tokenizer files into a private temporary directory. The linears run
 * through the fused kernels or, for reference, as their dense decode. */
#ifndef E8Q_COORDINATOR_ARTIFACT_MODEL_H
#define E8Q_COORDINATOR_ARTIFACT_MODEL_H

#include "coordinator/qmodel.h"
#include "shard/evalplan.h"

typedef struct {
  char *dir;      /* the directory with the unpacked tokenizer files (removed by close), owned */
  e8q_qmodel q;
  e8q_model *m;   /* blocks' linears: q set (fused) or w set (dense) */
} e8q_artifact_model;

/* opens the artifact (structure checked, io/artifact.h), maps the weights, builds the model */
void e8q_artifact_model_open(e8q_artifact_model *a, const char *artifact, int fused);
/* The same for one stage of a layer-pipelined evaluation: only layers [lo, hi) are described
 * and built (a->m holds no embeddings, final norm or lm_head: read them from a->q.st with
 * e8q_eval_ends_from_st); the finiteness check covers those layers and the Hadamard factors.
 * model.safetensors is mapped whole, but only the pages of the tensors used are ever touched, so
 * the resident memory (RSS) is that of this stage's tensors. */
void e8q_artifact_model_open_layers(e8q_artifact_model *a, const char *artifact, int fused, int lo, int hi);
void e8q_artifact_model_close(e8q_artifact_model *a);
/* Resident bytes of an evaluation of the artifact (shard/evalplan.h), from config.json and the
 * safetensors header only (no verification); *cfg gets the model's config. */
void e8q_artifact_eval_bytes(const char *artifact, int fused, e8q_config *cfg, e8q_eval_bytes *b);

#endif
