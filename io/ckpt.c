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
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "format", E8Q_CKPT_FORMAT);
  cJSON_AddStringToObject(m, "version", E8Q_CKPT_VERSION);
  cJSON_AddStringToObject(m, "kind", kind);
  cJSON_AddStringToObject(m, "e8q_version", E8Q_VERSION);
  for (int i = 0; meta && meta[i]; i += 2) {
    E8Q_CHECK(meta[i + 1], "internal: checkpoint metadata key %s has no value", meta[i]);
    cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
  }
  e8q_st_decl *d = e8q_malloc(sizeof(e8q_st_decl) * (size_t)(n ? n : 1), "checkpoint tensors");
  for (int i = 0; i < n; i++) d[i] = (e8q_st_decl){t[i].name, t[i].dt, t[i].ndim, t[i].shape};
  size_t hlen;
  uint8_t *hdr = e8q_st_header(m, n, d, &hlen);
  free(d);
  e8q_atomic_file *f = e8q_atomic_begin(path, kind);
  e8q_atomic_write(f, hdr, hlen);
  free(hdr);
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

double e8q_ckpt_meta_num(const e8q_safetensors *st, const char *key, const char *path) {
  const char *v = e8q_ckpt_meta(st, key);
  E8Q_CHECK(v, "%s: checkpoint without '%s' in its metadata (damaged: remove it and rerun)", path, key);
  return strtod(v, NULL);
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
