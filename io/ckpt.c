/* io/ckpt.c: checkpoint files as atomically written safetensors (io/ckpt.h). */
#include "io/ckpt.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "io/atomic.h"

void e8q_ckpt_write(const char *path, const char *kind, const char *const *meta, int n, const e8q_ckpt_tensor *t,
                    char sha_hex[65], uint64_t *size) {
  cJSON *h = cJSON_CreateObject();
  cJSON *m = cJSON_AddObjectToObject(h, "__metadata__");
  cJSON_AddStringToObject(m, "format", E8Q_CKPT_FORMAT);
  cJSON_AddStringToObject(m, "version", E8Q_CKPT_VERSION);
  cJSON_AddStringToObject(m, "kind", kind);
  cJSON_AddStringToObject(m, "e8q_version", E8Q_VERSION);
  for (int i = 0; meta && meta[i]; i += 2) {
    E8Q_CHECK(meta[i + 1], "internal: checkpoint metadata key %s has no value", meta[i]);
    cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    cJSON *o = cJSON_AddObjectToObject(h, t[i].name);
    cJSON_AddStringToObject(o, "dtype", e8q_dtype_name(t[i].dt));
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    uint64_t numel = 1;
    for (int d = 0; d < t[i].ndim; d++) {
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
      numel *= (uint64_t)t[i].shape[d];
    }
    uint64_t bytes = numel * e8q_dtype_size(t[i].dt);
    cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + bytes)));
    off += bytes;
  }
  char *js = cJSON_PrintUnformatted(h);
  cJSON_Delete(h);
  size_t len = strlen(js), padded = (len + 7) / 8 * 8;
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  e8q_atomic_file *f = e8q_atomic_begin(path, kind);
  e8q_atomic_write(f, le, 8);
  e8q_atomic_write(f, js, len);
  static const char spaces[8] = "        ";
  e8q_atomic_write(f, spaces, padded - len);
  free(js);
  for (int i = 0; i < n; i++) {
    uint64_t numel = 1;
    for (int d = 0; d < t[i].ndim; d++) numel *= (uint64_t)t[i].shape[d];
    if (numel) e8q_atomic_write(f, t[i].data, numel * e8q_dtype_size(t[i].dt));
  }
  if (size) *size = e8q_atomic_size(f);
  e8q_atomic_commit(f, sha_hex);
}

const char *e8q_ckpt_meta(const e8q_safetensors *st, const char *key) {
  for (int i = 0; i < st->n_meta; i++)
    if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
  return NULL;
}

e8q_safetensors *e8q_ckpt_open(const char *path, const char *kind) {
  e8q_safetensors *st = e8q_st_open(path);
  const char *f = e8q_ckpt_meta(st, "format"), *v = e8q_ckpt_meta(st, "version"), *k = e8q_ckpt_meta(st, "kind");
  E8Q_CHECK(f && !strcmp(f, E8Q_CKPT_FORMAT), "%s is not an e8q checkpoint (metadata \"format\" is not \"%s\")", path,
            E8Q_CKPT_FORMAT);
  E8Q_CHECK(v && !strcmp(v, E8Q_CKPT_VERSION), "%s: checkpoint version %s, this e8q reads %s; use another --run-dir",
            path, v ? v : "(none)", E8Q_CKPT_VERSION);
  E8Q_CHECK(k && !strcmp(k, kind), "%s: a \"%s\" checkpoint where a \"%s\" one was expected", path, k ? k : "(none)",
            kind);
  return st;
}

const void *e8q_ckpt_get(const e8q_safetensors *st, const char *name, e8q_dtype dt, int64_t numel) {
  const e8q_st_tensor *t = e8q_st_find(st, name);
  E8Q_CHECK(t, "%s: checkpoint tensor %s is missing", st->path, name);
  E8Q_CHECK(t->dtype == dt && e8q_st_numel(t) == numel, "%s: checkpoint tensor %s is %s with %lld elements, expected %s with %lld",
            st->path, name, e8q_dtype_name(t->dtype), (long long)e8q_st_numel(t), e8q_dtype_name(dt), (long long)numel);
  return e8q_st_data(st, t);
}
