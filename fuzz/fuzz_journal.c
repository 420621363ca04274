/* fuzz/fuzz_journal.c: a run journal replayed (records, checksums, torn tails, damage), then
 * queried and appended to. */
#include "harness.h"
#include "io/journal.h"

typedef struct {
  e8q_journal *j;
} ctx;

static void open_j(void *p) {
  ctx *c = p;
  c->j = e8q_journal_open(fz_dir());
}
static void use(void *p) {
  ctx *c = p;
  (void)e8q_journal_has_step(c->j, "plan");
  (void)e8q_journal_file_ok(c->j, "shards/0.e8qs");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  fz_write("journal", data, n);
  ctx c = {NULL};
  if (fz_call(open_j, &c)) return 0;
  fz_call(use, &c);
  e8q_journal_close(c.j);
  return 0;
}
