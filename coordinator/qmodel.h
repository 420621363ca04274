/* coordinator/qmodel.h: a quantized model as stored in an artifact directory (config.json with
 * "quantization_config" + model.safetensors, DESIGN §4), memory-mapped, every quantized linear
 * described for the fused kernels (kernels/qlinear.h), and its dense decoded equivalent. */
#ifndef E8Q_COORDINATOR_QMODEL_H
#define E8Q_COORDINATOR_QMODEL_H

#include "io/safetensors.h"
#include "kernels/qlinear.h"
#include "shard/model.h"

typedef struct {
  char *dir;                /* owned */
  e8q_safetensors *st;      /* dir/model.safetensors, mapped */
  e8q_config cfg;
  e8q_codebook_id cb;
  int bits;
  int dense;                /* 1: a dense ablation (noe8 / rtn): no codes, `W` holds the weights */
  e8q_qlinear *lin;         /* [n_layers * E8Q_N_GROUPS], layer-major (NULL when dense) */
  const float **W;          /* [n_layers * E8Q_N_GROUPS] dense weights [m, n] (dense only; read-only) */
  int n_owned;
  void **owned;             /* aligned copies of small tensors, owned */
  int lo, hi;               /* layers described: [lo, hi) (all unless opened with a range) */
  struct e8q_qlinear_gpu **gpu; /* [n_layers * E8Q_N_GROUPS] uploaded linears (e8q_qmodel_upload), owned;
                                   NULL entries: not uploaded */
} e8q_qmodel;

/* Fatal, naming the file and tensor, on anything missing or inconsistent. */
void e8q_qmodel_open(e8q_qmodel *q, const char *dir);
/* the same from a config text and an open safetensors (owned from here on; e.g. a member of an
 * artifact mapped in place with e8q_st_open_region); label names it in messages */
void e8q_qmodel_open_st(e8q_qmodel *q, const char *label, const char *config_text, e8q_safetensors *st);
/* the same describing only layers [lo, hi) (hi = -1: up to the last): the tensors of other
 * layers are never read, so their pages of a mapping stay untouched (layer-pipelined evaluation) */
void e8q_qmodel_open_st_range(e8q_qmodel *q, const char *label, const char *config_text, e8q_safetensors *st, int lo,
                              int hi);
void e8q_qmodel_close(e8q_qmodel *q);
static inline const e8q_qlinear *e8q_qmodel_linear(const e8q_qmodel *q, int layer, int group) {
  return &q->lin[layer * E8Q_N_GROUPS + group];
}
/* embeddings, final norm and lm_head (no blocks) */
e8q_model *e8q_qmodel_head(const e8q_qmodel *q);
/* The dense fp32 model: embeddings and norms from the safetensors, every linear decoded
 * (e8q_qlinear_dequant, float64 then rounded to float). */
e8q_model *e8q_qmodel_dense(const e8q_qmodel *q);
/* The model with every quantized linear through the fused decode kernels (the dense matrices are
 * never built; q must outlive it). Fatal for a dense ablation. */
e8q_model *e8q_qmodel_fused(const e8q_qmodel *q);
/* Only the blocks of q's layer range (fused, or dense decoded when `fused` is 0 or q is a dense
 * ablation): no embeddings, final norm or lm_head; blocks outside the range are zero (no weights). */
e8q_model *e8q_qmodel_blocks(const e8q_qmodel *q, int fused);
/* Uploads every quantized linear of q's layer range to CUDA device `cuda` once (codes, scales,
 * Hadamard factors; kernels/qlinear_gpu.h) and points m's linears at them, so the forward runs
 * them on the device. A linear the CUDA kernels refuse (shape) stays on the CPU, said once;
 * m must be q's fused model; nothing for cuda < 0 or a dense ablation. Freed by close. Returns
 * the number uploaded. */
int e8q_qmodel_upload(e8q_qmodel *q, e8q_model *m, int cuda);

#endif
