/* fuzz/fuzz_ckpt.c: a run-directory checkpoint (io/ckpt.h read side: a safetensors file with
 * e8q metadata), opened as each kind and its tensors fetched. */
#include "harness.h"
#include "io/ckpt.h"

typedef struct {
  const char *path, *kind;
  e8q_safetensors *st;
} ctx;

static void open_c(void *p) {
  ctx *c = p;
  c->st = e8q_ckpt_open(c->path, c->kind);
}
static void get(void *p) {
  ctx *c = p;
  for (int i = 0; i < c->st->n_tensors; i++) {
    const e8q_st_tensor *t = &c->st->tensors[i];
    (void)e8q_ckpt_get(c->st, t->name, t->dtype, e8q_st_numel(t));
  }
  (void)e8q_ckpt_meta(c->st, "kind");
  (void)e8q_ckpt_get(c->st, "H", E8Q_DT_F64, 16);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  static const char *const kinds[] = {"shard", "hessian", "acts", "part", "ft"};
  ctx c = {fz_write("0.e8qs", data, n), kinds[n % 5], NULL};
  if (fz_call(open_c, &c)) return 0;
  fz_call(get, &c);
  e8q_st_close(c.st);
  return 0;
}
