/* fuzz/fuzz_safetensors.c: a .safetensors file (header JSON, dtypes, shapes, offsets), opened
 * whole and as a region of a larger file (artifact members), every small float tensor read. */
#include "harness.h"
#include "io/safetensors.h"

typedef struct {
  const char *path;
  uint64_t offset, size;
  e8q_safetensors *st;
} ctx;

static void *open_whole(const char *path) { return e8q_st_open(path); }
static void open_region(void *a) {
  ctx *c = a;
  c->st = e8q_st_open_region(c->path, c->offset, c->size, "fuzz.e8q:model.safetensors");
}

static void read_one(void *a) {
  const fz_item *r = a;
  const e8q_safetensors *st = r->file;
  const char *name = r->item;
  const e8q_st_tensor *t = e8q_st_find(st, name);
  float buf[4096];
  int64_t n = e8q_st_numel(t);
  if (n <= 4096) e8q_st_read_f32(st, name, -1, NULL, buf);
  if (n >= 2) e8q_st_read_f32_range(st, name, 1, n - 1 > 4096 ? 4096 : n - 1, buf);
}

static void read_all(const e8q_safetensors *st) {
  for (int i = 0; i < st->n_tensors; i++) {
    fz_item r = {st, st->tensors[i].name};
    fz_call(read_one, &r);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  e8q_safetensors *st = fz_open(open_whole, fz_write("model.safetensors", data, n));
  if (st) {
    read_all(st);
    e8q_st_close(st);
  }
  if (n > 16) { /* the same bytes as a member at offset 7 of a larger file */
    static uint8_t buf[1 << 20];
    if (n + 16 <= sizeof buf) {
      for (int i = 0; i < 7; i++) buf[i] = 0xA5;
      for (size_t i = 0; i < n; i++) buf[7 + i] = data[i];
      for (int i = 0; i < 9; i++) buf[7 + n + i] = 0x5A;
      ctx c = {fz_write("region.bin", buf, n + 16), 7, n, NULL};
      if (!fz_call(open_region, &c)) e8q_st_close(c.st);
    }
  }
  return 0;
}
