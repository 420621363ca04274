/* io/ckpt.h: checkpoint files of the run directory (Hessians, activations, shards).
 *
 * A checkpoint is a safetensors file (so any safetensors tool reads it) written whole through
 * io/atomic.h, which makes it fault-injectable (E8Q_FAULT_ENOSPC=<kind>) and gives its SHA-256
 * in the same pass for the journal. Its __metadata__ always holds
 *     "format": "e8q-ckpt", "version": "1", "kind": <kind>, "e8q_version": ...
 * plus the caller's key/values (provenance: layer, group, sequence...). Reading goes through
 * the validating safetensors reader and checks format, version and kind.
 */
#ifndef E8Q_IO_CKPT_H
#define E8Q_IO_CKPT_H

#include <stdint.h>

#include "io/safetensors.h"

#define E8Q_CKPT_FORMAT "e8q-ckpt"
#define E8Q_CKPT_VERSION "1"

typedef struct {
  const char *name;
  e8q_dtype dt;
  int ndim;
  int64_t shape[4];
  const void *data; /* numel * dtype size bytes */
} e8q_ckpt_tensor;

/* writes path atomically; meta: NULL-terminated list key, value, key, value, ...;
 * sha_hex[65] and size (may be NULL) receive the file's hash and byte count */
void e8q_ckpt_write(const char *path, const char *kind, const char *const *meta, int n, const e8q_ckpt_tensor *t,
                    char sha_hex[65], uint64_t *size);
/* opens a checkpoint; fatal (naming the file) unless it is an e8q checkpoint of this kind */
e8q_safetensors *e8q_ckpt_open(const char *path, const char *kind);
/* a metadata value, NULL when absent */
const char *e8q_ckpt_meta(const e8q_safetensors *st, const char *key);
/* the number stored under key (exact when written with %.17g); fatal naming the file (path) and
 * the key when it is absent: the checkpoint is damaged and must be recomputed */
double e8q_ckpt_meta_num(const e8q_safetensors *st, const char *key, const char *path);
/* a tensor's bytes, checking dtype and element count; fatal naming file and tensor otherwise */
const void *e8q_ckpt_get(const e8q_safetensors *st, const char *name, e8q_dtype dt, int64_t numel);

#endif
