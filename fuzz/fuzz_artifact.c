/* fuzz/fuzz_artifact.c: an .e8q archive: the tar walk, member names and sizes, manifest and its
 * hash (e8q_artifact_open), then every member hashed against the manifest and the archive's end
 * (e8q_artifact_verify), and members read back. */
#include <stdlib.h>

#include "harness.h"
#include "io/artifact.h"

static void *open_a(const char *path) { return e8q_artifact_open(path); }
static void verify(void *p) {
  e8q_artifact *a = p;
  char report[1024];
  (void)e8q_artifact_verify(a, report, sizeof report);
  for (int i = 0; i < a->n && i < 8; i++)
    if (a->members[i].size < (1u << 20)) free(e8q_artifact_read(a, a->members[i].name, NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  e8q_artifact *a = fz_open(open_a, fz_write("model.e8q", data, n));
  if (!a) return 0;
  fz_call(verify, a);
  e8q_artifact_close(a);
  return 0;
}
