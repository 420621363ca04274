/* coordinator/artifact_model.c: unpack an artifact and build its model
 * (coordinator/artifact_model.h). */
#include "coordinator/artifact_model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "io/artifact.h"

void e8q_artifact_model_open(e8q_artifact_model *a, const char *artifact, int fused) {
  memset(a, 0, sizeof *a);
  e8q_artifact *ar = e8q_artifact_open(artifact);
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/e8q-artifact-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  E8Q_CHECK_ERRNO(mkdtemp(dir), "cannot create a temporary directory %s to unpack %s; set TMPDIR to a writable place",
                  dir, artifact);
  a->dir = strdup(dir);
  static const char *const names[] = {"config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
                                      "tokenizer_config.json", "special_tokens_map.json", NULL};
  for (int i = 0; names[i]; i++) {
    if (!e8q_artifact_find(ar, names[i])) {
      E8Q_CHECK(i >= 2, "artifact %s has no %s", artifact, names[i]);
      continue;
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    e8q_artifact_extract(ar, names[i], p);
  }
  e8q_artifact_close(ar);
  e8q_qmodel_open(&a->q, dir);
  if (!fused || a->q.dense) { /* dense ablations have no codes for the fused kernels */
    a->m = e8q_qmodel_dense(&a->q);
    return;
  }
  a->m = e8q_qmodel_head(&a->q);
  const e8q_config *c = &a->m->cfg;
  a->m->blocks = e8q_calloc((size_t)c->n_layers, sizeof(e8q_block), "blocks");
  int64_t D = c->dim;
  char name[256];
  for (int b = 0; b < c->n_layers; b++) {
    e8q_block *blk = &a->m->blocks[b];
    blk->attn_norm = e8q_malloc(sizeof(float) * (size_t)D, "attn_norm");
    blk->ffn_norm = e8q_malloc(sizeof(float) * (size_t)D, "ffn_norm");
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", b);
    e8q_st_read_f32(a->q.st, name, 1, &D, blk->attn_norm);
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", b);
    e8q_st_read_f32(a->q.st, name, 1, &D, blk->ffn_norm);
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      const e8q_qlinear *ql = e8q_qmodel_linear(&a->q, b, g);
      blk->lin[g].m = ql->d.m;
      blk->lin[g].n = ql->d.n;
      blk->lin[g].w = NULL;
      blk->lin[g].q = (const struct e8q_qlinear *)ql;
    }
  }
}

void e8q_artifact_model_close(e8q_artifact_model *a) {
  e8q_model_free(a->m);
  e8q_qmodel_close(&a->q);
  if (a->dir) {
    static const char *const names[] = {"config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json", NULL};
    char p[4200];
    for (int i = 0; names[i]; i++) {
      snprintf(p, sizeof p, "%s/%s", a->dir, names[i]);
      unlink(p);
    }
    rmdir(a->dir);
  }
  free(a->dir);
  memset(a, 0, sizeof *a);
}
