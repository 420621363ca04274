/* io/safetensors.h: safetensors files, memory-mapped, validated, read lazily.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {str: str}}, then the data block. Offsets are relative to the
 * data block. e8q_st_open validates everything before returning: header size
 * limits, JSON well-formed, dtype known, shape consistent with the byte count,
 * offsets inside the file and not overlapping. Every failure is a fatal error
 * naming the file (and tensor) and saying what is wrong.
 */
#ifndef E8Q_IO_SAFETENSORS_H
#define E8Q_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/f16.h" /* e8q_f16_to_f32, e8q_bf16_to_f32, e8q_f32_to_bf16 */

typedef enum {
  E8Q_DT_F32 = 0,
  E8Q_DT_F16,
  E8Q_DT_BF16,
  E8Q_DT_F64,
  E8Q_DT_I64,
  E8Q_DT_I32,
  E8Q_DT_U32,
  E8Q_DT_I16,
  E8Q_DT_U16,
  E8Q_DT_I8,
  E8Q_DT_U8,
  E8Q_DT_BOOL,
  E8Q_DT_COUNT
} e8q_dtype;

const char *e8q_dtype_name(e8q_dtype dt); /* "F32", "BF16", ... as in safetensors */
size_t e8q_dtype_size(e8q_dtype dt);      /* bytes per element */
e8q_dtype e8q_dtype_from_name(const char *name); /* "U16" -> E8Q_DT_U16, ...; fatal when unknown */

#define E8Q_ST_MAX_DIMS 8

typedef struct {
  char *name;                       /* owned */
  e8q_dtype dtype;
  int ndim;
  int64_t shape[E8Q_ST_MAX_DIMS];
  uint64_t begin, end;              /* byte offsets in the data block */
} e8q_st_tensor;

typedef struct {
  char *path;                       /* owned copy of the file name */
  int fd;
  const uint8_t *map;               /* [file_size] read-only mapping */
  size_t file_size;
  size_t data_offset;               /* 8 + header length */
  int n_tensors;
  e8q_st_tensor *tensors;           /* [n_tensors], sorted by name */
  int n_meta;
  char **meta_keys, **meta_values;  /* [n_meta] __metadata__ entries, owned */
  const void *map_base;             /* the mapping as made (page-aligned, map_len bytes) */
  size_t map_len;
} e8q_safetensors;

e8q_safetensors *e8q_st_open(const char *path);
/* A safetensors file stored as bytes [offset, offset + size) of `file` (a member of an
 * uncompressed tar archive, mapped in place); `label` names it in messages (for example
 * "model.e8q:model.safetensors"), NULL for the file name. Same validation as e8q_st_open;
 * `path` of the result is the label. */
e8q_safetensors *e8q_st_open_region(const char *file, uint64_t offset, uint64_t size, const char *label);
void e8q_st_close(e8q_safetensors *st);
/* NULL when absent */
const e8q_st_tensor *e8q_st_find(const e8q_safetensors *st, const char *name);
/* pointer to the tensor's bytes inside the mapping (unaligned possible for f16/bf16) */
const void *e8q_st_data(const e8q_safetensors *st, const e8q_st_tensor *t);
int64_t e8q_st_numel(const e8q_st_tensor *t);

/* Reads tensor `name` converted to f32 into dst (numel floats). Fatal, naming the file and
 * tensor, if it is absent, not a float dtype, its shape differs from expect[0..ndim) (pass
 * ndim < 0 to skip the shape check), or any value is NaN/Inf. */
void e8q_st_read_f32(const e8q_safetensors *st, const char *name, int ndim, const int64_t *expect,
                     float *dst);

/* Elements [first, first + count) of tensor `name` in row-major order, converted to f32 and
 * checked as e8q_st_read_f32 (for reading some rows of a large tensor). */
void e8q_st_read_f32_range(const e8q_safetensors *st, const char *name, int64_t first, int64_t count,
                           float *dst);

/* ---------------------------------------------------------------- a model's tensors
 * A Hugging Face directory (model.safetensors, or model.safetensors.index.json naming several
 * shards; lookups go to the shard that holds the tensor; shards are opened (mmapped) once), a
 * single .safetensors file, or a llama GGUF file (io/gguf.h), whose tensors are read under their
 * Hugging Face names and in Hugging Face row order (dequantized, q/k rotary permutation undone). */
struct e8q_gguf;
typedef struct {
  char *dir;                        /* owned: the directory or file given */
  int n_files;
  e8q_safetensors **files;          /* [n_files] */
  int n_index;                      /* index entries (sharded models), 0 for one file */
  char **index_names;               /* [n_index] tensor names, sorted */
  int *index_file;                  /* [n_index] which file holds each */
  struct e8q_gguf *gguf;            /* a GGUF model (then n_files == 0), owned; NULL otherwise */
} e8q_st_model;

/* path: a HF model directory, a .safetensors file or a .gguf file */
e8q_st_model *e8q_st_model_open(const char *dir);
void e8q_st_model_close(e8q_st_model *m);
/* finds the tensor and the safetensors file holding it; NULL when absent (and always for a GGUF
 * model, whose tensors have no safetensors form: use e8q_st_model_info) */
const e8q_st_tensor *e8q_st_model_find(const e8q_st_model *m, const char *name, const e8q_safetensors **file);
/* Shape of tensor `name` in Hugging Face order (shape[1] = 0 for a vector) and the dtype an
 * artifact keeps it in: a safetensors tensor its own dtype; a GGUF F32/F16/BF16 tensor its own,
 * a block-quantized GGUF tensor (Q8_0, Q4_K, ...) F16 (its values are products of an f16 scale
 * and small integers). src_type names the source type ("BF16", "Q8_0").
 * Returns the number of dimensions, 0 when the tensor is absent. */
int e8q_st_model_info(const e8q_st_model *m, const char *name, int64_t shape[2], e8q_dtype *keep,
                      const char **src_type);
/* as e8q_st_read_f32, across shards; the message names the model directory and tensor */
void e8q_st_model_read_f32(const e8q_st_model *m, const char *name, int ndim, const int64_t *expect, float *dst);
/* as e8q_st_read_f32_range, across shards */
void e8q_st_model_read_f32_range(const e8q_st_model *m, const char *name, int64_t first, int64_t count,
                                 float *dst);

/* ---------------------------------------------------------------- writing
 * Streaming writer: declare every tensor (name, dtype, shape), then write their bytes in the
 * declared order (any chunking); finish() checks every byte was written, fsyncs and renames
 * the temporary file into place, so a reader never sees a partial file. A full disk or any
 * I/O error is a fatal error naming the file; the temporary is removed. */
/* The one safetensors header builder (e8q_st_writer and checkpoints, io/ckpt.c): the 8-byte
 * little-endian length, then the JSON, __metadata__ first (meta: a cJSON object, taken over;
 * NULL: none), then each tensor in order with packed data_offsets, padded with spaces to a
 * multiple of 8. Returns malloc'd bytes, *len their count. */
typedef struct {
  const char *name;
  e8q_dtype dt;
  int ndim;
  const int64_t *shape; /* [ndim] */
} e8q_st_decl;
struct cJSON;
uint8_t *e8q_st_header(struct cJSON *meta, int n, const e8q_st_decl *t, size_t *len);

typedef struct e8q_st_writer e8q_st_writer;
e8q_st_writer *e8q_st_writer_begin(const char *path);
void e8q_st_writer_meta(e8q_st_writer *w, const char *key, const char *value);
void e8q_st_writer_declare(e8q_st_writer *w, const char *name, e8q_dtype dt, int ndim, const int64_t *shape);
void e8q_st_writer_write(e8q_st_writer *w, const void *data, size_t bytes);
void e8q_st_writer_finish(e8q_st_writer *w);
/* Advances past `bytes` of tensor data without writing them: they read as zeros and take no
 * disk space (a sparse file). For tests and planning on large model shapes. */
void e8q_st_writer_skip(e8q_st_writer *w, uint64_t bytes);

/* f32 -> f16 (round to nearest even); f16/bf16 -> f32 and f32 -> bf16 are in common/f16.h */
uint16_t e8q_f32_to_f16(float f);
/* n floats to dtype F32, F16 or BF16 (round to nearest even) into dst (n * dtype size bytes, any
 * alignment); for writing tensors */
void e8q_f32_convert(const float *src, e8q_dtype dt, void *dst, size_t n);
/* the reverse: n values of dtype F32, F16, BF16 or F64 at src (any alignment) to floats (exact but
 * for F64); 0, nothing written, for another dtype */
int e8q_f32_from(const void *src, e8q_dtype dt, float *dst, size_t n);

#endif
