/* coordinator/artifact_model.c: unpack an artifact and build its model
 * (coordinator/artifact_model.h). */
#include "coordinator/artifact_model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/comm.h"
#include "common/error.h"
#include "common/log.h"
#include "io/artifact.h"

static const char *const tok_names[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", NULL};

void e8q_artifact_model_open(e8q_artifact_model *a, const char *artifact, int fused) {
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
  for (int i = 0; tok_names[i]; i++) {
    if (!e8q_artifact_find(ar, tok_names[i])) continue;
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, tok_names[i]);
    e8q_artifact_extract(ar, tok_names[i], p);
  }
  const e8q_artifact_member *mm = e8q_artifact_find(ar, "model.safetensors");
  E8Q_CHECK(mm && e8q_artifact_find(ar, "config.json"), "artifact %s lacks model.safetensors or config.json", artifact);
  char *cfg = e8q_artifact_read(ar, "config.json", NULL);
  char label[4200];
  snprintf(label, sizeof label, "%s:model.safetensors", artifact);
  e8q_qmodel_open_st(&a->q, artifact, cfg, e8q_st_open_region(artifact, mm->offset, mm->size, label));
  free(cfg);
  e8q_artifact_close(ar);
  if (!fused || a->q.dense) { /* dense ablations have no codes for the fused kernels */
    a->m = e8q_qmodel_dense(&a->q);
    return;
  }
  a->m = e8q_qmodel_fused(&a->q);
}

void e8q_artifact_model_close(e8q_artifact_model *a) {
  e8q_model_free(a->m);
  e8q_qmodel_close(&a->q);
  if (a->dir) {
    char p[4200];
    for (int i = 0; tok_names[i]; i++) {
      snprintf(p, sizeof p, "%s/%s", a->dir, tok_names[i]);
      unlink(p);
    }
    rmdir(a->dir);
  }
  free(a->dir);
  memset(a, 0, sizeof *a);
}
