/* coordinator/artifact_model.c: unpack an artifact and build its model
 * (coordinator/artifact_model.h). */
#include "coordinator/artifact_model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/comm.h"
#include "common/error.h"
#include "common/f16.h" /* the 8-bit head's scales suffix */
#include "common/log.h"
#include "io/artifact.h"

static const char *const tok_names[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", NULL};

/* Every float tensor of the weights (scales SU/SV/Wscale/fuse_scales, Hadamard factors,
 * embeddings, norms, dense weights) holds finite values only: the manifest's hashes say the
 * archive is as written, not that what was written is sound, and one NaN in a scale turns every
 * logit into NaN without an error. lo >= 0: only the tensors of layers [lo, hi) and the Hadamard
 * factors (a pipeline stage touches no other page of the mapping). */
static void check_floats_finite(const e8q_safetensors *st, const char *artifact, int lo, int hi) {
  for (int k = 0; k < st->n_tensors; k++) {
    const e8q_st_tensor *t = &st->tensors[k];
    if (t->dtype != E8Q_DT_F32 && t->dtype != E8Q_DT_F16 && t->dtype != E8Q_DT_BF16) continue;
    int layer = -1;
    if (lo >= 0 && strncmp(t->name, "hadamard.", 9) != 0 &&
        !(sscanf(t->name, "model.layers.%d.", &layer) == 1 && layer >= lo && layer < hi))
      continue; /* layers [lo, hi) only: the embedding and head are checked as they are read */
    const unsigned char *p = e8q_st_data(st, t);
    int64_t n = e8q_st_numel(t);
    for (int64_t i = 0; i < n; i++) {
      float v;
      if (t->dtype == E8Q_DT_F32) {
        memcpy(&v, p + 4 * i, 4);
      } else {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        v = t->dtype == E8Q_DT_F16 ? e8q_f16_to_f32(h) : e8q_bf16_to_f32(h);
      }
      E8Q_CHECK(isfinite(v),
                "artifact %s: tensor %s holds %s at element %lld: the artifact is damaged or was written from a "
                "diverged run (its hashes match what was written); re-create it with e8q quantize",
                artifact, t->name, isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf", (long long)i);
    }
  }
}

/* verification, the tokenizer files unpacked into a->dir, model.safetensors mapped in place;
 * returns the mapping and (*cfg, malloc'd) the config text */
static e8q_safetensors *artifact_map(e8q_artifact_model *a, const char *artifact, char **cfg) {
  memset(a, 0, sizeof *a);
  e8q_artifact *ar = e8q_artifact_open(artifact);
  /* every member against its sha256 (rank 0 reads, all ranks learn the outcome and, when it is
   * bad, the report: whichever rank aborts first prints the whole message) */
  int bad = 0;
  char report[4096] = "";
  if (e8q_rank() == 0) bad = e8q_artifact_verify(ar, report, sizeof report);
  e8q_comm_bcast(e8q_comm_get(), E8Q_MEM_HOST, &bad, sizeof bad, 0);
  if (bad) e8q_comm_bcast(e8q_comm_get(), E8Q_MEM_HOST, report, sizeof report, 0);
  E8Q_CHECK(bad == 0, "artifact %s fails verification (%d problem%s; e8q inspect --verify lists them): %s", artifact, bad,
            bad > 1 ? "s" : "", report);
  /* the tokenizer files are unpacked (the tokenizer reads a path); the weights are mapped in
   * place inside the archive */
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/e8q-artifact-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  E8Q_CHECK_ERRNO(mkdtemp(dir), "cannot create a temporary directory %s to unpack %s; set TMPDIR to a writable place",
                  dir, artifact);
  a->dir = strdup(dir);
  /* removed on every way out, a fatal error or a signal included (common/cleanup.h): the
   * directory first, then each file before it is written (removal runs in reverse order) */
  e8q_cleanup_add(dir);
  for (int i = 0; tok_names[i]; i++) {
    if (!e8q_artifact_find(ar, tok_names[i])) continue;
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, tok_names[i]);
    e8q_cleanup_add(p);
    e8q_artifact_extract(ar, tok_names[i], p);
  }
  const e8q_artifact_member *mm = e8q_artifact_find(ar, "model.safetensors");
  E8Q_CHECK(mm && e8q_artifact_find(ar, "config.json"), "artifact %s lacks model.safetensors or config.json", artifact);
  *cfg = e8q_artifact_read(ar, "config.json", NULL);
  char label[4200];
  snprintf(label, sizeof label, "%s:model.safetensors", artifact);
  e8q_safetensors *st = e8q_st_open_region(artifact, mm->offset, mm->size, label);
  e8q_artifact_close(ar);
  return st;
}

void e8q_artifact_model_open(e8q_artifact_model *a, const char *artifact, int fused) {
  char *cfg = NULL;
  e8q_safetensors *st = artifact_map(a, artifact, &cfg);
  check_floats_finite(st, artifact, -1, -1);
  e8q_qmodel_open_st(&a->q, artifact, cfg, st);
  free(cfg);
  if (!fused || a->q.dense) { /* dense ablations have no codes for the fused kernels */
    a->m = e8q_qmodel_dense(&a->q);
    return;
  }
  a->m = e8q_qmodel_fused(&a->q);
}

void e8q_artifact_model_open_layers(e8q_artifact_model *a, const char *artifact, int fused, int lo, int hi) {
  char *cfg = NULL;
  e8q_safetensors *st = artifact_map(a, artifact, &cfg);
  check_floats_finite(st, artifact, lo, hi);
  e8q_qmodel_open_st_range(&a->q, artifact, cfg, st, lo, hi);
  free(cfg);
  a->m = e8q_qmodel_blocks(&a->q, fused);
}

/* ---------------------------------------------------------------- sizes */

void e8q_artifact_eval_bytes(const char *artifact, int fused, e8q_config *cfg, e8q_eval_bytes *b) {
  memset(b, 0, sizeof *b);
  e8q_artifact *ar = e8q_artifact_open(artifact);
  const e8q_artifact_member *mm = e8q_artifact_find(ar, "model.safetensors");
  E8Q_CHECK(mm && e8q_artifact_find(ar, "config.json"), "artifact %s lacks model.safetensors or config.json", artifact);
  char *txt = e8q_artifact_read(ar, "config.json", NULL);
  char label[4200];
  snprintf(label, sizeof label, "%s:model.safetensors", artifact);
  e8q_safetensors *st = e8q_st_open_region(artifact, mm->offset, mm->size, label);
  e8q_artifact_close(ar);
  e8q_qmodel q; /* no layer described: the config and the header only */
  e8q_qmodel_open_st_range(&q, artifact, txt, st, 0, 0);
  free(txt);
  *cfg = q.cfg;
  const e8q_config *c = &q.cfg;
  int L = c->n_layers;
  size_t D = (size_t)c->dim, V = (size_t)c->vocab_size;
  b->n_layers = L;
  b->tied = c->tied;
  b->layer = e8q_calloc((size_t)L, sizeof(size_t), "layer bytes"); /* [L] */
  size_t codes = 0;
  for (int k = 0; k < st->n_tensors; k++) {
    const e8q_st_tensor *t = &st->tensors[k];
    size_t bytes = (size_t)(t->end - t->begin);
    int layer = -1;
    if (sscanf(t->name, "model.layers.%d.", &layer) == 1 && layer >= 0 && layer < L) {
      b->layer[layer] += bytes;
      if (strstr(t->name, ".codes")) codes += bytes;
    } else if (!strncmp(t->name, "hadamard.", 9)) {
      b->shared += bytes;
    } else if (!strcmp(t->name, "model.embed_tokens.weight") ||
               !strcmp(t->name, "model.embed_tokens.weight" E8Q_Q8_SCALES_SUFFIX)) { /* --head q8: + scales */
      b->embed += bytes;
      if (c->tied) b->head += bytes;
    } else if (!strcmp(t->name, "lm_head.weight") || !strcmp(t->name, "lm_head.weight" E8Q_Q8_SCALES_SUFFIX) ||
               !strcmp(t->name, "model.norm.weight")) {
      b->head += bytes;
    }
  }
  /* what loading adds per layer: the two norms in f32, and per linear its output scales (fused)
   * plus the VNNI core's copy of the codes (an upper bound: AVX512-VNNI CPUs only), or (dense) the
   * decoded f32 weights */
  for (int l = 0; l < L; l++) {
    size_t add = 2 * 4 * D;
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      int m, n;
      e8q_group_shape(c, g, &m, &n);
      add += fused && !q.dense ? 4 * (size_t)m : 4 * (size_t)m * (size_t)n;
    }
    b->layer[l] += add + (fused && !q.dense ? codes / (size_t)L : 0);
  }
  b->f32_copies = 4 * V * D * (c->tied ? 1 : 2);
  e8q_qmodel_close(&q); /* closes st */
}

void e8q_artifact_model_close(e8q_artifact_model *a) {
  e8q_model_free(a->m);
  e8q_qmodel_close(&a->q);
  if (a->dir) {
    char p[4200];
    for (int i = 0; tok_names[i]; i++) {
      snprintf(p, sizeof p, "%s/%s", a->dir, tok_names[i]);
      e8q_cleanup_forget(p);
      unlink(p);
    }
    e8q_cleanup_forget(a->dir);
    rmdir(a->dir);
  }
  free(a->dir);
  memset(a, 0, sizeof *a);
}
