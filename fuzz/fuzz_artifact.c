/* fuzz/fuzz_artifact.c: an .e8q archive: the tar walk, member names and sizes, manifest and its
 * hash (e8q_artifact_open), then every member hashed against the manifest and the archive's end
 * (e8q_artifact_verify), and members read back. */
#include <stdlib.h>

#include "harness.h"
#include "io/artifact.h"

typedef struct {
  const char *path;
  e8q_artifact *a;
} ctx;

static void open_a(void *p) {
  ctx *c = p;
  c->a = e8q_artifact_open(c->path);
}
static void verify(void *p) {
  ctx *c = p;
  char report[1024];
  (void)e8q_artifact_verify(c->a, report, sizeof report);
  for (int i = 0; i < c->a->n && i < 8; i++)
    if (c->a->members[i].size < (1u << 20)) free(e8q_artifact_read(c->a, c->a->members[i].name, NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  ctx c = {fz_write("model.e8q", data, n), NULL};
  if (fz_call(open_a, &c)) return 0;
  fz_call(verify, &c);
  e8q_artifact_close(c.a);
  return 0;
}
