/* io/gguf.c: GGUF v2/v3 files, memory-mapped read-only and validated at open; typed metadata;
 * tensors dequantized row by row (io/ggml_quants.c); a llama GGUF seen as a Hugging Face model
 * (config.json equivalent, HF tensor names, llama.cpp's rotary row permutation undone). See
 * io/gguf.h for the format.
 *
 * Validation reads the file through a cursor that checks every length against the bytes left
 * before using it, so no count or length from the file can make the parser read past the mapping
 * or allocate more than the file could describe.
 */
#include "io/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/error.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ALIGNMENT ((uint64_t)1 << 30)
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 8          /* arrays of arrays nest at most this deep */
#define GGUF_HEADER_BYTES 24            /* magic, version, n_tensors, n_kv */
#define GGUF_MIN_KV_BYTES 14            /* key length 8 + one key byte + type 4 + one value byte */
#define GGUF_MIN_TENSOR_BYTES 33        /* name 8 + 1, n_dims 4, ne 8, type 4, offset 8 */

/* ---------------------------------------------------------------- types */

typedef struct gguf_value {
  int type;                     /* E8Q_GGUF_* */
  const uint8_t *p;             /* scalar: its bytes; string: its bytes; array: its first element */
  uint64_t n;                   /* string: length in bytes; array: element count */
  int elem_type;                /* arrays: element type */
  const uint8_t **elems;        /* arrays of strings: [n] the u64 length field of each string */
  struct gguf_value *sub;       /* arrays of arrays: [n] */
} gguf_value;

typedef struct {
  char *key;                    /* owned, NUL-terminated */
  gguf_value v;
  char *str;                    /* string values: owned NUL-terminated copy [v.n + 1] */
} gguf_kv;

struct e8q_gguf {
  char *path;                   /* owned */
  const uint8_t *map;           /* [size] read-only mapping */
  size_t size;
  int version;
  uint64_t alignment;
  uint64_t data_start;          /* file offset of the data section */
  int n_kv;
  gguf_kv *kv;                  /* [n_kv] in file order */
  int n_tensors;
  e8q_gguf_tensor *tensors;     /* [n_tensors] in file order */
  int *by_name;                 /* [n_tensors] indices into tensors, sorted by name */
};

static const char *const g_value_type_names[E8Q_GGUF_NTYPES] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
static const size_t g_value_sizes[E8Q_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *e8q_gguf_value_type_name(int type) {
  return type >= 0 && type < E8Q_GGUF_NTYPES ? g_value_type_names[type] : "unknown";
}

static int type_is_int(int t) {
  return t == E8Q_GGUF_U8 || t == E8Q_GGUF_I8 || t == E8Q_GGUF_U16 || t == E8Q_GGUF_I16 || t == E8Q_GGUF_U32 ||
         t == E8Q_GGUF_I32 || t == E8Q_GGUF_U64 || t == E8Q_GGUF_I64 || t == E8Q_GGUF_BOOL;
}
static int type_is_float(int t) { return t == E8Q_GGUF_F32 || t == E8Q_GGUF_F64; }

/* ---------------------------------------------------------------- little-endian loads */

static uint64_t ld_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static uint32_t ld_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t ld_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* ---------------------------------------------------------------- cursor */

typedef struct {
  const char *path;
  const uint8_t *map;           /* [size] */
  size_t size;
  size_t pos;
} gguf_cursor;

/* fatal unless n more bytes are in the file; `what` says what was being read */
static void cur_need(const gguf_cursor *c, uint64_t n, const char *what) {
  if (n > c->size - c->pos)
    E8Q_FATAL("%s: truncated or corrupt GGUF: %s needs %" PRIu64 " bytes at offset %zu but the file has %zu "
              "bytes; the file is incomplete (re-download it)",
              c->path, what, n, c->pos, c->size);
}

static size_t cur_left(const gguf_cursor *c) { return c->size - c->pos; }

static uint32_t cur_u32(gguf_cursor *c, const char *what) {
  cur_need(c, 4, what);
  uint32_t v = ld_u32(c->map + c->pos);
  c->pos += 4;
  return v;
}

static uint64_t cur_u64(gguf_cursor *c, const char *what) {
  cur_need(c, 8, what);
  uint64_t v = ld_u64(c->map + c->pos);
  c->pos += 8;
  return v;
}

/* a string: *len bytes at the returned pointer */
static const uint8_t *cur_str(gguf_cursor *c, uint64_t *len, const char *what) {
  char w[256];
  snprintf(w, sizeof w, "the length of %s", what);
  uint64_t n = cur_u64(c, w);
  if (n > cur_left(c))
    E8Q_FATAL("%s: truncated or corrupt GGUF: %s has length %" PRIu64 " at offset %zu, past the end of the file "
              "(%zu bytes left)",
              c->path, what, n, c->pos - 8, cur_left(c));
  const uint8_t *p = c->map + c->pos;
  c->pos += n;
  *len = n;
  return p;
}

/* ---------------------------------------------------------------- metadata values */

static void value_free(gguf_value *v) {
  if (v->sub)
    for (uint64_t i = 0; i < v->n; i++) value_free(&v->sub[i]);
  free(v->sub);
  free(v->elems);
  v->sub = NULL;
  v->elems = NULL;
}

/* parses one value of type `type` for key `key` (depth: array nesting) */
static void value_parse(gguf_cursor *c, int type, const char *key, int depth, gguf_value *v) {
  memset(v, 0, sizeof *v);
  v->type = type;
  E8Q_CHECK(type >= 0 && type < E8Q_GGUF_NTYPES, "%s: corrupt GGUF: key %s has value type %d (valid: 0..12)",
            c->path, key, type);
  char what[320];
  snprintf(what, sizeof what, "the value of key %s", key);
  if (type == E8Q_GGUF_STRING) {
    v->p = cur_str(c, &v->n, what);
    return;
  }
  if (type != E8Q_GGUF_ARRAY) {
    cur_need(c, g_value_sizes[type], what);
    v->p = c->map + c->pos;
    if (type == E8Q_GGUF_BOOL)
      E8Q_CHECK(v->p[0] <= 1, "%s: corrupt GGUF: key %s is a bool of value %u (must be 0 or 1)", c->path, key,
                v->p[0]);
    c->pos += g_value_sizes[type];
    return;
  }
  E8Q_CHECK(depth < GGUF_MAX_ARRAY_DEPTH, "%s: corrupt GGUF: key %s nests arrays deeper than %d levels", c->path,
            key, GGUF_MAX_ARRAY_DEPTH);
  snprintf(what, sizeof what, "the element type of array %s", key);
  v->elem_type = (int)cur_u32(c, what);
  E8Q_CHECK(v->elem_type >= 0 && v->elem_type < E8Q_GGUF_NTYPES,
            "%s: corrupt GGUF: array %s has element type %d (valid: 0..12)", c->path, key, v->elem_type);
  snprintf(what, sizeof what, "the element count of array %s", key);
  v->n = cur_u64(c, what);
  /* the least bytes one element takes, so a count can be checked before anything is allocated */
  uint64_t min_bytes = v->elem_type == E8Q_GGUF_STRING ? 8
                       : v->elem_type == E8Q_GGUF_ARRAY ? 12
                                                        : g_value_sizes[v->elem_type];
  if (v->n > cur_left(c) / min_bytes)
    E8Q_FATAL("%s: truncated or corrupt GGUF: array %s claims %" PRIu64 " elements of type %s at offset %zu, more than the "
              "%zu bytes left in the file can hold",
              c->path, key, v->n, e8q_gguf_value_type_name(v->elem_type), c->pos, cur_left(c));
  v->p = c->map + c->pos;
  if (v->elem_type == E8Q_GGUF_STRING) {
    v->elems = e8q_malloc((size_t)(v->n ? v->n : 1) * sizeof *v->elems, "GGUF string array index");
    for (uint64_t i = 0; i < v->n; i++) {
      v->elems[i] = c->map + c->pos;
      snprintf(what, sizeof what, "element %" PRIu64 " of array %s", i, key);
      uint64_t len;
      cur_str(c, &len, what);
    }
  } else if (v->elem_type == E8Q_GGUF_ARRAY) {
    v->sub = e8q_calloc((size_t)(v->n ? v->n : 1), sizeof *v->sub, "GGUF nested arrays");
    for (uint64_t i = 0; i < v->n; i++) {
      char sub_key[300];
      snprintf(sub_key, sizeof sub_key, "%.250s[%" PRIu64 "]", key, i);
      value_parse(c, E8Q_GGUF_ARRAY, sub_key, depth + 1, &v->sub[i]);
    }
  } else {
    uint64_t bytes = v->n * g_value_sizes[v->elem_type]; /* <= cur_left: checked above */
    if (v->elem_type == E8Q_GGUF_BOOL)
      for (uint64_t i = 0; i < v->n; i++)
        E8Q_CHECK(v->p[i] <= 1, "%s: corrupt GGUF: element %" PRIu64 " of bool array %s is %u (must be 0 or 1)",
                  c->path, i, key, v->p[i]);
    c->pos += bytes;
  }
}

/* integer value of the scalar of type t at p; 0 with *ok = 0 when it does not fit in int64 */
static int64_t scalar_int(int t, const uint8_t *p, int *ok) {
  *ok = 1;
  switch (t) {
    case E8Q_GGUF_U8:
    case E8Q_GGUF_BOOL: return p[0];
    case E8Q_GGUF_I8: return (int8_t)p[0];
    case E8Q_GGUF_U16: return ld_u16(p);
    case E8Q_GGUF_I16: return (int16_t)ld_u16(p);
    case E8Q_GGUF_U32: return ld_u32(p);
    case E8Q_GGUF_I32: return (int32_t)ld_u32(p);
    case E8Q_GGUF_I64: return (int64_t)ld_u64(p);
    case E8Q_GGUF_U64: {
      uint64_t u = ld_u64(p);
      if (u > (uint64_t)INT64_MAX) {
        *ok = 0;
        return 0;
      }
      return (int64_t)u;
    }
    default: *ok = 0; return 0;
  }
}

static double scalar_float(int t, const uint8_t *p) {
  if (t == E8Q_GGUF_F32) {
    uint32_t u = ld_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  if (t == E8Q_GGUF_F64) {
    uint64_t u = ld_u64(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
  }
  if (t == E8Q_GGUF_U64) return (double)ld_u64(p);
  int ok;
  return (double)scalar_int(t, p, &ok);
}

/* ---------------------------------------------------------------- open / close */

int e8q_gguf_is_file(const char *path) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat sb;
  char magic[4];
  int yes = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && pread(fd, magic, 4, 0) == 4 &&
            memcmp(magic, GGUF_MAGIC, 4) == 0;
  close(fd);
  return yes;
}

/* sort keys for tensors: by name (lookup, duplicates) and by offset (overlaps) */
typedef struct {
  const char *name;
  uint64_t offset;
  int index;                    /* into e8q_gguf.tensors */
} tensor_key;

static int cmp_key_name(const void *a, const void *b) {
  return strcmp(((const tensor_key *)a)->name, ((const tensor_key *)b)->name);
}

static int cmp_key_offset(const void *a, const void *b) {
  uint64_t x = ((const tensor_key *)a)->offset, y = ((const tensor_key *)b)->offset;
  return x < y ? -1 : x > y;
}

/* the tensors' keys sorted by cmp; caller frees */
static tensor_key *tensor_keys_sorted(const e8q_gguf *g, int (*cmp)(const void *, const void *)) {
  tensor_key *k = e8q_malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *k, "GGUF tensor order");
  for (int i = 0; i < g->n_tensors; i++) k[i] = (tensor_key){g->tensors[i].name, g->tensors[i].offset, i};
  qsort(k, (size_t)g->n_tensors, sizeof *k, cmp);
  return k;
}

static const gguf_kv *kv_find(const e8q_gguf *g, const char *key) {
  for (int i = 0; i < g->n_kv; i++)
    if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
  return NULL;
}

/* a NUL-terminated copy of a name from the file, refusing embedded NULs */
static char *name_copy(const char *path, const uint8_t *p, uint64_t n, const char *what, size_t at) {
  E8Q_CHECK(n > 0, "%s: corrupt GGUF: %s at offset %zu is empty", path, what, at);
  E8Q_CHECK(memchr(p, 0, n) == NULL, "%s: corrupt GGUF: %s at offset %zu contains a NUL byte", path, what, at);
  char *s = e8q_malloc(n + 1, "GGUF name");
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

static void parse_header(e8q_gguf *g, gguf_cursor *c, uint64_t *n_tensors, uint64_t *n_kv) {
  E8Q_CHECK(memcmp(c->map, GGUF_MAGIC, 4) == 0,
            "%s: not a GGUF file (the first bytes are %02x %02x %02x %02x, not \"GGUF\")", g->path, c->map[0],
            c->map[1], c->map[2], c->map[3]);
  c->pos = 4;
  uint32_t version = cur_u32(c, "the version");
  uint32_t swapped = (version >> 24) | ((version >> 8) & 0xff00u) | ((version << 8) & 0xff0000u) | (version << 24);
  if (version != 2 && version != 3) {
    if (swapped == 2 || swapped == 3)
      E8Q_FATAL("%s: a big-endian GGUF (version field 0x%08x); e8q reads little-endian GGUF files only", g->path,
                version);
    E8Q_FATAL("%s: GGUF version %u is not supported (e8q reads versions 2 and 3%s)", g->path, version,
              version == 1 ? "; convert the file with a current llama.cpp" : "");
  }
  g->version = (int)version;
  *n_tensors = cur_u64(c, "the tensor count");
  *n_kv = cur_u64(c, "the metadata key count");
  E8Q_CHECK(*n_kv <= cur_left(c) / GGUF_MIN_KV_BYTES && *n_kv <= INT_MAX,
            "%s: truncated or corrupt GGUF: %" PRIu64 " metadata keys cannot fit in the %zu bytes of the file", g->path, *n_kv,
            c->size);
  E8Q_CHECK(*n_tensors <= cur_left(c) / GGUF_MIN_TENSOR_BYTES && *n_tensors <= INT_MAX,
            "%s: truncated or corrupt GGUF: %" PRIu64 " tensors cannot fit in the %zu bytes of the file", g->path, *n_tensors,
            c->size);
}

/* the i-th metadata key or tensor name at the cursor, as a malloc'd C string; what_fmt (with one
 * PRIu64 conversion for i) names it in errors */
static char *cur_name(const e8q_gguf *g, gguf_cursor *c, const char *what_fmt, uint64_t i) {
  char what[64];
  snprintf(what, sizeof what, what_fmt, i);
  size_t at = c->pos;
  uint64_t len;
  const uint8_t *s = cur_str(c, &len, what);
  return name_copy(g->path, s, len, what, at);
}

static void parse_kv(e8q_gguf *g, gguf_cursor *c, uint64_t n_kv) {
  g->kv = e8q_calloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kv, "GGUF metadata");
  for (uint64_t i = 0; i < n_kv; i++) {
    gguf_kv *kv = &g->kv[g->n_kv];
    kv->key = cur_name(g, c, "metadata key %" PRIu64, i);
    g->n_kv++; /* owned from here on, so close() frees it */
    E8Q_CHECK(kv_find(g, kv->key) == kv, "%s: corrupt GGUF: metadata key %s appears twice", g->path, kv->key);
    char tw[320];
    snprintf(tw, sizeof tw, "the value type of key %.250s", kv->key);
    int type = (int)cur_u32(c, tw);
    value_parse(c, type, kv->key, 0, &kv->v);
    if (type == E8Q_GGUF_STRING) {
      kv->str = e8q_malloc(kv->v.n + 1, "GGUF string value");
      memcpy(kv->str, kv->v.p, kv->v.n);
      kv->str[kv->v.n] = 0;
    }
  }
}

/* a * b, fatal on overflow of int64 */
static int64_t mul_checked(int64_t a, int64_t b, const char *path, const char *tensor) {
  if (a != 0 && b > INT64_MAX / a)
    E8Q_FATAL("%s: corrupt GGUF: the size of tensor %s overflows 64 bits", path, tensor);
  return a * b;
}

static void parse_tensors(e8q_gguf *g, gguf_cursor *c, uint64_t n_tensors) {
  g->tensors = e8q_calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensors, "GGUF tensor infos");
  for (uint64_t i = 0; i < n_tensors; i++) {
    e8q_gguf_tensor *t = &g->tensors[g->n_tensors];
    t->name = cur_name(g, c, "the name of tensor %" PRIu64, i);
    g->n_tensors++;
    char w[320];
    snprintf(w, sizeof w, "the dimension count of tensor %.250s", t->name);
    uint32_t n_dims = cur_u32(c, w);
    E8Q_CHECK(n_dims >= 1 && n_dims <= GGUF_MAX_DIMS, "%s: tensor %s has %u dimensions (e8q reads 1 to %d)",
              g->path, t->name, n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (int d = 0; d < t->n_dims; d++) {
      snprintf(w, sizeof w, "dimension %d of tensor %.250s", d, t->name);
      uint64_t ne = cur_u64(c, w);
      E8Q_CHECK(ne >= 1 && ne <= (uint64_t)INT64_MAX, "%s: corrupt GGUF: tensor %s has ne[%d] = %" PRIu64
                " (must be 1 .. 2^63-1)", g->path, t->name, d, ne);
      t->ne[d] = (int64_t)ne;
    }
    snprintf(w, sizeof w, "the type of tensor %.250s", t->name);
    uint32_t type = cur_u32(c, w);
    E8Q_CHECK(type < E8Q_GGML_TYPE_LIMIT && e8q_ggml_block_size((int)type) > 0,
              "%s: tensor %s has unknown ggml type %u (a newer llama.cpp format? e8q knows the types of "
              "gguf-py 0.19)", g->path, t->name, type);
    t->type = (int)type;
    snprintf(w, sizeof w, "the data offset of tensor %.250s", t->name);
    t->offset = cur_u64(c, w);
  }
}

/* sizes, block multiples, offsets and overlaps, once the data section is known */
static void check_tensors(e8q_gguf *g) {
  uint64_t data_bytes = g->size - g->data_start;
  for (int i = 0; i < g->n_tensors; i++) {
    e8q_gguf_tensor *t = &g->tensors[i];
    int64_t n = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) n = mul_checked(n, t->ne[d], g->path, t->name);
    int bs = e8q_ggml_block_size(t->type);
    E8Q_CHECK(t->ne[0] % bs == 0,
              "%s: tensor %s: row length ne[0] = %" PRId64 " is not a multiple of the %s block size %d", g->path,
              t->name, t->ne[0], e8q_ggml_type_name(t->type), bs);
    /* ne[0] a multiple of the block size makes the element count one too */
    t->nbytes = (uint64_t)mul_checked(n / bs, (int64_t)e8q_ggml_block_bytes(t->type), g->path, t->name);
    E8Q_CHECK(t->offset % g->alignment == 0,
              "%s: corrupt GGUF: tensor %s has data offset %" PRIu64 ", not a multiple of the alignment %" PRIu64,
              g->path, t->name, t->offset, g->alignment);
    E8Q_CHECK(t->offset <= data_bytes && t->nbytes <= data_bytes - t->offset,
              "%s: truncated or corrupt GGUF: tensor %s (%s, %" PRIu64 " bytes at data offset %" PRIu64
              ") ends past the end of the file (the data section has %" PRIu64 " bytes)",
              g->path, t->name, e8q_ggml_type_name(t->type), t->nbytes, t->offset, data_bytes);
  }
  if (g->n_tensors < 2) return;
  tensor_key *order = tensor_keys_sorted(g, cmp_key_offset);
  for (int i = 0; i + 1 < g->n_tensors; i++) {
    const e8q_gguf_tensor *a = &g->tensors[order[i].index], *b = &g->tensors[order[i + 1].index];
    if (a->offset + a->nbytes > b->offset) {
      char an[256], bn[256];
      snprintf(an, sizeof an, "%s", a->name);
      snprintf(bn, sizeof bn, "%s", b->name);
      free(order);
      E8Q_FATAL("%s: corrupt GGUF: the data of tensors %s and %s overlap", g->path, an, bn);
    }
  }
  free(order);
}

e8q_gguf *e8q_gguf_open(const char *path) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* O_NONBLOCK: a FIFO must not block the open */
  E8Q_CHECK_ERRNO(fd >= 0, "cannot open GGUF file %s", path);
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    E8Q_CHECK_ERRNO(0, "cannot stat GGUF file %s", path);
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    E8Q_FATAL("%s is not a regular file (it is a %s); give the path of a .gguf file", path,
              S_ISDIR(sb.st_mode) ? "directory" : S_ISFIFO(sb.st_mode) ? "FIFO" : S_ISCHR(sb.st_mode) ? "character device"
                                                                     : "special file");
  }
  if ((uint64_t)sb.st_size < GGUF_HEADER_BYTES) {
    close(fd);
    E8Q_FATAL("%s: %lld bytes, too short to be a GGUF file (the header alone is %d bytes)", path,
              (long long)sb.st_size, GGUF_HEADER_BYTES);
  }
  E8Q_CHECK((uint64_t)sb.st_size <= SIZE_MAX, "%s: too large to map", path);
  void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  errno = e;
  E8Q_CHECK_ERRNO(m != MAP_FAILED, "cannot map GGUF file %s (%lld bytes)", path, (long long)sb.st_size);

  e8q_gguf *g = e8q_calloc(1, sizeof *g, "GGUF file");
  size_t pn = strlen(path) + 1;
  g->path = e8q_malloc(pn, "GGUF path");
  memcpy(g->path, path, pn);
  g->map = m;
  g->size = (size_t)sb.st_size;
  gguf_cursor c = {g->path, g->map, g->size, 0};

  uint64_t n_tensors, n_kv;
  parse_header(g, &c, &n_tensors, &n_kv);
  parse_kv(g, &c, n_kv);
  parse_tensors(g, &c, n_tensors);

  g->alignment = GGUF_DEFAULT_ALIGNMENT;
  const gguf_kv *al = kv_find(g, "general.alignment");
  if (al) {
    int ok = 0;
    int64_t a = type_is_int(al->v.type) && al->v.type != E8Q_GGUF_BOOL ? scalar_int(al->v.type, al->v.p, &ok) : 0;
    E8Q_CHECK(ok, "%s: metadata key general.alignment is a %s, not an integer", g->path,
              e8q_gguf_value_type_name(al->v.type));
    E8Q_CHECK(a > 0 && (uint64_t)a <= GGUF_MAX_ALIGNMENT && (a & (a - 1)) == 0,
              "%s: general.alignment = %" PRId64 " is not a power of two between 1 and 2^30", g->path, a);
    g->alignment = (uint64_t)a;
  }
  uint64_t end = c.pos;
  g->data_start = (end + g->alignment - 1) / g->alignment * g->alignment;
  if (g->data_start > g->size) {
    E8Q_CHECK(g->n_tensors == 0,
              "%s: truncated or corrupt GGUF: the data section would start at offset %" PRIu64 " but the file has %zu bytes",
              g->path, g->data_start, g->size);
    g->data_start = g->size;
  }
  check_tensors(g);

  tensor_key *by_name = tensor_keys_sorted(g, cmp_key_name);
  g->by_name = e8q_malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *g->by_name, "GGUF name index");
  for (int i = 0; i < g->n_tensors; i++) g->by_name[i] = by_name[i].index;
  free(by_name);
  for (int i = 0; i + 1 < g->n_tensors; i++)
    E8Q_CHECK(strcmp(g->tensors[g->by_name[i]].name, g->tensors[g->by_name[i + 1]].name) != 0,
              "%s: corrupt GGUF: tensor %s appears twice", g->path, g->tensors[g->by_name[i]].name);
  return g;
}

void e8q_gguf_close(e8q_gguf *g) {
  if (!g) return;
  for (int i = 0; i < g->n_kv; i++) {
    free(g->kv[i].key);
    free(g->kv[i].str);
    value_free(&g->kv[i].v);
  }
  free(g->kv);
  for (int i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
  free(g->tensors);
  free(g->by_name);
  if (g->map) munmap((void *)g->map, g->size);
  free(g->path);
  free(g);
}

const char *e8q_gguf_path(const e8q_gguf *g) { return g->path; }
int e8q_gguf_version(const e8q_gguf *g) { return g->version; }
uint64_t e8q_gguf_alignment(const e8q_gguf *g) { return g->alignment; }
uint64_t e8q_gguf_data_offset(const e8q_gguf *g) { return g->data_start; }

/* ---------------------------------------------------------------- metadata access */

int e8q_gguf_has(const e8q_gguf *g, const char *key) { return kv_find(g, key) != NULL; }

int e8q_gguf_kv_type(const e8q_gguf *g, const char *key) {
  const gguf_kv *kv = kv_find(g, key);
  return kv ? kv->v.type : -1;
}

int e8q_gguf_n_kv(const e8q_gguf *g) { return g->n_kv; }

const char *e8q_gguf_kv_key(const e8q_gguf *g, int i) {
  E8Q_CHECK(i >= 0 && i < g->n_kv, "%s: metadata index %d out of range (%d keys)", g->path, i, g->n_kv);
  return g->kv[i].key;
}

int64_t e8q_gguf_get_int(const e8q_gguf *g, const char *key, int64_t dflt, int required) {
  const gguf_kv *kv = kv_find(g, key);
  if (!kv) {
    E8Q_CHECK(!required, "%s: required metadata key %s is missing", g->path, key);
    return dflt;
  }
  E8Q_CHECK(type_is_int(kv->v.type), "%s: metadata key %s is a %s, not an integer", g->path, key,
            e8q_gguf_value_type_name(kv->v.type));
  int ok;
  int64_t v = scalar_int(kv->v.type, kv->v.p, &ok);
  E8Q_CHECK(ok, "%s: metadata key %s = %" PRIu64 " does not fit in a signed 64-bit integer", g->path, key,
            ld_u64(kv->v.p));
  return v;
}

double e8q_gguf_get_float(const e8q_gguf *g, const char *key, double dflt, int required) {
  const gguf_kv *kv = kv_find(g, key);
  if (!kv) {
    E8Q_CHECK(!required, "%s: required metadata key %s is missing", g->path, key);
    return dflt;
  }
  E8Q_CHECK(type_is_float(kv->v.type) || (type_is_int(kv->v.type) && kv->v.type != E8Q_GGUF_BOOL),
            "%s: metadata key %s is a %s, not a number", g->path, key, e8q_gguf_value_type_name(kv->v.type));
  return scalar_float(kv->v.type, kv->v.p);
}

const char *e8q_gguf_get_str(const e8q_gguf *g, const char *key, size_t *len) {
  const gguf_kv *kv = kv_find(g, key);
  if (!kv) {
    if (len) *len = 0;
    return NULL;
  }
  E8Q_CHECK(kv->v.type == E8Q_GGUF_STRING, "%s: metadata key %s is a %s, not a string", g->path, key,
            e8q_gguf_value_type_name(kv->v.type));
  if (len) *len = (size_t)kv->v.n;
  return kv->str;
}

size_t e8q_gguf_arr_len(const e8q_gguf *g, const char *key, int *elem_type) {
  const gguf_kv *kv = kv_find(g, key);
  if (!kv) {
    if (elem_type) *elem_type = -1;
    return 0;
  }
  E8Q_CHECK(kv->v.type == E8Q_GGUF_ARRAY, "%s: metadata key %s is a %s, not an array", g->path, key,
            e8q_gguf_value_type_name(kv->v.type));
  if (elem_type) *elem_type = kv->v.elem_type;
  return (size_t)kv->v.n;
}

/* the array value of key with element i in range; fatal otherwise */
static const gguf_value *arr_elem(const e8q_gguf *g, const char *key, size_t i) {
  const gguf_kv *kv = kv_find(g, key);
  E8Q_CHECK(kv, "%s: required metadata array %s is missing", g->path, key);
  E8Q_CHECK(kv->v.type == E8Q_GGUF_ARRAY, "%s: metadata key %s is a %s, not an array", g->path, key,
            e8q_gguf_value_type_name(kv->v.type));
  E8Q_CHECK(i < kv->v.n, "%s: index %zu is out of range of array %s (%" PRIu64 " elements)", g->path, i, key,
            kv->v.n);
  return &kv->v;
}

const char *e8q_gguf_arr_str(const e8q_gguf *g, const char *key, size_t i, size_t *len) {
  const gguf_value *v = arr_elem(g, key, i);
  E8Q_CHECK(v->elem_type == E8Q_GGUF_STRING, "%s: metadata array %s holds %s values, not strings", g->path, key,
            e8q_gguf_value_type_name(v->elem_type));
  *len = (size_t)ld_u64(v->elems[i]);
  return (const char *)v->elems[i] + 8;
}

int64_t e8q_gguf_arr_int(const e8q_gguf *g, const char *key, size_t i) {
  const gguf_value *v = arr_elem(g, key, i);
  E8Q_CHECK(type_is_int(v->elem_type), "%s: metadata array %s holds %s values, not integers", g->path, key,
            e8q_gguf_value_type_name(v->elem_type));
  int ok;
  int64_t x = scalar_int(v->elem_type, v->p + i * g_value_sizes[v->elem_type], &ok);
  E8Q_CHECK(ok, "%s: element %zu of metadata array %s does not fit in a signed 64-bit integer", g->path, i, key);
  return x;
}

double e8q_gguf_arr_float(const e8q_gguf *g, const char *key, size_t i) {
  const gguf_value *v = arr_elem(g, key, i);
  E8Q_CHECK(type_is_float(v->elem_type) || (type_is_int(v->elem_type) && v->elem_type != E8Q_GGUF_BOOL),
            "%s: metadata array %s holds %s values, not numbers", g->path, key,
            e8q_gguf_value_type_name(v->elem_type));
  return scalar_float(v->elem_type, v->p + i * g_value_sizes[v->elem_type]);
}

/* ---------------------------------------------------------------- tensors */

int e8q_gguf_n_tensors(const e8q_gguf *g) { return g->n_tensors; }

const e8q_gguf_tensor *e8q_gguf_tensor_at(const e8q_gguf *g, int i) {
  E8Q_CHECK(i >= 0 && i < g->n_tensors, "%s: tensor index %d out of range (%d tensors)", g->path, i,
            g->n_tensors);
  return &g->tensors[i];
}

const e8q_gguf_tensor *e8q_gguf_find(const e8q_gguf *g, const char *name) {
  int lo = 0, hi = g->n_tensors - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    const e8q_gguf_tensor *t = &g->tensors[g->by_name[mid]];
    int c = strcmp(name, t->name);
    if (c == 0) return t;
    if (c < 0) hi = mid - 1;
    else lo = mid + 1;
  }
  return NULL;
}

const void *e8q_gguf_data(const e8q_gguf *g, const e8q_gguf_tensor *t) { return g->map + g->data_start + t->offset; }

int64_t e8q_gguf_numel(const e8q_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

int64_t e8q_gguf_n_rows(const e8q_gguf_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

void e8q_gguf_read_rows_f32(const e8q_gguf *g, const e8q_gguf_tensor *t, int64_t row0, int64_t nrows,
                            float *dst) {
  const int64_t rows = e8q_gguf_n_rows(t), cols = t->ne[0];
  E8Q_CHECK(row0 >= 0 && nrows >= 0 && row0 <= rows && nrows <= rows - row0,
            "%s: tensor %s: rows [%" PRId64 ", %" PRId64 ") are outside its %" PRId64 " rows", g->path, t->name,
            row0, row0 + nrows, rows);
  E8Q_CHECK(e8q_ggml_type_supported(t->type), "%s: tensor %s has ggml type %s (%d), which e8q cannot dequantize",
            g->path, t->name, e8q_ggml_type_name(t->type), t->type);
  const size_t row_bytes = (size_t)(cols / e8q_ggml_block_size(t->type)) * e8q_ggml_block_bytes(t->type);
  const uint8_t *base = (const uint8_t *)e8q_gguf_data(g, t);
  for (int64_t r = 0; r < nrows; r++) {
    float *y = dst + r * cols;
    e8q_ggml_dequant_row(t->type, base + (size_t)(row0 + r) * row_bytes, cols, y);
    for (int64_t j = 0; j < cols; j++)
      if (!isfinite(y[j]))
        E8Q_FATAL("%s: tensor %s (%s) row %" PRId64 " column %" PRId64 " is %g: non-finite weights (a corrupt "
                  "file or a NaN/Inf scale)", g->path, t->name, e8q_ggml_type_name(t->type), row0 + r, j, y[j]);
  }
}

/* ---------------------------------------------------------------- llama as a HF model */

/* the shortest decimal that reads back as f, as a double (so 1e-5f prints as 1e-05) */
static double f32_shortest(float f) {
  char buf[64];
  for (int p = 1; p <= 9; p++) {
    snprintf(buf, sizeof buf, "%.*g", p, (double)f);
    if (strtof(buf, NULL) == f) return strtod(buf, NULL);
  }
  return f;
}

/* a float metadata value as it should appear in JSON: f32 values shortest, others as stored */
static double meta_number(const e8q_gguf *g, const char *key, double dflt, int required) {
  double v = e8q_gguf_get_float(g, key, dflt, required);
  if (e8q_gguf_kv_type(g, key) == E8Q_GGUF_F32) v = f32_shortest((float)v);
  return v;
}

/* "llama.<suffix>" */
static const char *lkey(char *buf, size_t n, const char *suffix) {
  snprintf(buf, n, "llama.%s", suffix);
  return buf;
}

/* a positive integer metadata value that fits in int */
static int64_t meta_pos_int(const e8q_gguf *g, const char *key, int64_t dflt, int required) {
  int64_t v = e8q_gguf_get_int(g, key, dflt, required);
  E8Q_CHECK(v > 0 && v <= INT_MAX, "%s: metadata key %s = %" PRId64 " must be a positive int", g->path, key, v);
  return v;
}

char *e8q_gguf_hf_config(const e8q_gguf *g) {
  char k[128];
  size_t alen;
  const char *arch = e8q_gguf_get_str(g, "general.architecture", &alen);
  E8Q_CHECK(arch, "%s: required metadata key general.architecture is missing", g->path);
  E8Q_CHECK(strcmp(arch, "llama") == 0 && alen == 5,
            "%s: general.architecture is \"%s\"; e8q reads only \"llama\" GGUF models", g->path, arch);

  /* refusals: what a plain llama of e8q does not compute */
  const char *rs = e8q_gguf_get_str(g, lkey(k, sizeof k, "rope.scaling.type"), NULL);
  E8Q_CHECK(!rs || strcmp(rs, "none") == 0,
            "%s: metadata key llama.rope.scaling.type is \"%s\"; e8q implements no RoPE scaling", g->path, rs);
  double f = e8q_gguf_get_float(g, lkey(k, sizeof k, "rope.scaling.factor"), 1.0, 0);
  E8Q_CHECK(f == 1.0, "%s: metadata key llama.rope.scaling.factor is %g; e8q implements no RoPE scaling", g->path, f);
  f = e8q_gguf_get_float(g, lkey(k, sizeof k, "rope.freq_scale"), 1.0, 0);
  E8Q_CHECK(f == 1.0, "%s: metadata key llama.rope.freq_scale is %g; e8q implements no RoPE scaling", g->path, f);
  int64_t experts = e8q_gguf_get_int(g, lkey(k, sizeof k, "expert_count"), 0, 0);
  E8Q_CHECK(experts <= 0, "%s: metadata key llama.expert_count is %" PRId64 "; e8q does not read mixture-of-experts "
            "models", g->path, experts);

  int64_t dim = meta_pos_int(g, lkey(k, sizeof k, "embedding_length"), 0, 1);
  int64_t hidden = meta_pos_int(g, lkey(k, sizeof k, "feed_forward_length"), 0, 1);
  int64_t layers = meta_pos_int(g, lkey(k, sizeof k, "block_count"), 0, 1);
  int64_t heads = meta_pos_int(g, lkey(k, sizeof k, "attention.head_count"), 0, 1);
  int64_t kv_heads = meta_pos_int(g, lkey(k, sizeof k, "attention.head_count_kv"), heads, 0);
  int64_t ctx = meta_pos_int(g, lkey(k, sizeof k, "context_length"), 0, 1);

  int64_t head_dim;
  int has_kl = e8q_gguf_has(g, "llama.attention.key_length"), has_vl = e8q_gguf_has(g, "llama.attention.value_length");
  int has_rd = e8q_gguf_has(g, "llama.rope.dimension_count");
  if (has_kl) head_dim = meta_pos_int(g, "llama.attention.key_length", 0, 1);
  else if (has_rd) head_dim = meta_pos_int(g, "llama.rope.dimension_count", 0, 1);
  else {
    E8Q_CHECK(dim % heads == 0, "%s: llama.embedding_length %" PRId64 " is not divisible by "
              "llama.attention.head_count %" PRId64 " (and no llama.attention.key_length is given)",
              g->path, dim, heads);
    head_dim = dim / heads;
  }
  if (has_vl || has_kl) {
    int64_t vl = has_vl ? meta_pos_int(g, "llama.attention.value_length", 0, 1) : head_dim;
    E8Q_CHECK(vl == head_dim, "%s: metadata keys llama.attention.key_length (%" PRId64 ") and "
              "llama.attention.value_length (%" PRId64 ") differ; e8q needs equal key and value head sizes",
              g->path, head_dim, vl);
  }
  if (has_rd) {
    int64_t rd = meta_pos_int(g, "llama.rope.dimension_count", 0, 1);
    E8Q_CHECK(rd == head_dim, "%s: metadata key llama.rope.dimension_count is %" PRId64 " but the head dimension "
              "is %" PRId64 "; e8q implements rotary embeddings over the whole head only", g->path, rd, head_dim);
  }

  int64_t vocab;
  if (e8q_gguf_has(g, "llama.vocab_size")) vocab = meta_pos_int(g, "llama.vocab_size", 0, 1);
  else {
    int et;
    size_t n = e8q_gguf_arr_len(g, "tokenizer.ggml.tokens", &et);
    E8Q_CHECK(n > 0 && n <= INT_MAX, "%s: neither llama.vocab_size nor tokenizer.ggml.tokens gives the vocabulary "
              "size", g->path);
    vocab = (int64_t)n;
  }
  const e8q_gguf_tensor *emb = e8q_gguf_find(g, "token_embd.weight");
  if (emb)
    E8Q_CHECK(emb->n_dims == 2 && emb->ne[0] == dim && emb->ne[1] == vocab,
              "%s: tensor token_embd.weight has ne = {%" PRId64 ", %" PRId64 "}, expected {%" PRId64 ", %" PRId64
              "} (llama.embedding_length, vocabulary size)", g->path, emb->ne[0], emb->ne[1], dim, vocab);

  /* the head sizes must be those of the attention weights */
  const e8q_gguf_tensor *aq = e8q_gguf_find(g, "blk.0.attn_q.weight"), *ak = e8q_gguf_find(g, "blk.0.attn_k.weight");
  if (aq)
    E8Q_CHECK(aq->ne[1] == heads * head_dim, "%s: tensor blk.0.attn_q.weight has %" PRId64 " rows, not "
              "llama.attention.head_count %" PRId64 " x head dimension %" PRId64, g->path, aq->ne[1], heads, head_dim);
  if (ak)
    E8Q_CHECK(ak->ne[1] == kv_heads * head_dim, "%s: tensor blk.0.attn_k.weight has %" PRId64 " rows, not "
              "llama.attention.head_count_kv %" PRId64 " x head dimension %" PRId64, g->path, ak->ne[1], kv_heads,
              head_dim);

  double theta = meta_number(g, "llama.rope.freq_base", 10000.0, 0);
  double eps = meta_number(g, "llama.attention.layer_norm_rms_epsilon", 0, 1);
  int tied = e8q_gguf_find(g, "output.weight") == NULL;

  /* torch_dtype: 16-bit only when every matrix is stored in that 16-bit type */
  int n16 = 0, nbf = 0, nmat = 0;
  for (int i = 0; i < g->n_tensors; i++) {
    const e8q_gguf_tensor *t = &g->tensors[i];
    if (t->n_dims != 2) continue;
    nmat++;
    n16 += t->type == E8Q_GGML_F16;
    nbf += t->type == E8Q_GGML_BF16;
  }
  const char *dtype = nmat > 0 && n16 == nmat ? "float16" : nmat > 0 && nbf == nmat ? "bfloat16" : "float32";

  cJSON *root = cJSON_CreateObject();
  E8Q_CHECK(root, "%s: out of memory building the config", g->path);
  cJSON_AddStringToObject(root, "model_type", "llama");
  cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
  cJSON_AddItemToArray(archs, cJSON_CreateString("LlamaForCausalLM"));
  cJSON_AddNumberToObject(root, "hidden_size", (double)dim);
  cJSON_AddNumberToObject(root, "intermediate_size", (double)hidden);
  cJSON_AddNumberToObject(root, "num_hidden_layers", (double)layers);
  cJSON_AddNumberToObject(root, "num_attention_heads", (double)heads);
  cJSON_AddNumberToObject(root, "num_key_value_heads", (double)kv_heads);
  cJSON_AddNumberToObject(root, "head_dim", (double)head_dim);
  cJSON_AddNumberToObject(root, "vocab_size", (double)vocab);
  cJSON_AddNumberToObject(root, "max_position_embeddings", (double)ctx);
  cJSON_AddNumberToObject(root, "rope_theta", theta);
  cJSON_AddNumberToObject(root, "rms_norm_eps", eps);
  cJSON_AddBoolToObject(root, "tie_word_embeddings", tied);
  if (e8q_gguf_has(g, "tokenizer.ggml.bos_token_id"))
    cJSON_AddNumberToObject(root, "bos_token_id", (double)e8q_gguf_get_int(g, "tokenizer.ggml.bos_token_id", 0, 1));
  if (e8q_gguf_has(g, "tokenizer.ggml.eos_token_id"))
    cJSON_AddNumberToObject(root, "eos_token_id", (double)e8q_gguf_get_int(g, "tokenizer.ggml.eos_token_id", 0, 1));
  cJSON_AddStringToObject(root, "hidden_act", "silu");
  cJSON_AddStringToObject(root, "torch_dtype", dtype);
  char *text = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  E8Q_CHECK(text, "%s: out of memory printing the config", g->path);
  size_t n = strlen(text) + 1;
  char *out = e8q_malloc(n, "GGUF HF config");
  memcpy(out, text, n);
  cJSON_free(text);
  return out;
}

/* HF layer tensor suffix -> GGUF blk.{i} suffix; rope: 1 for q (heads), 2 for k (kv heads) */
static const struct {
  const char *hf, *gguf;
  int rope;
} g_layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight", 0},
    {"post_attention_layernorm.weight", "ffn_norm.weight", 0},
    {"self_attn.q_proj.weight", "attn_q.weight", 1},
    {"self_attn.k_proj.weight", "attn_k.weight", 2},
    {"self_attn.v_proj.weight", "attn_v.weight", 0},
    {"self_attn.o_proj.weight", "attn_output.weight", 0},
    {"mlp.gate_proj.weight", "ffn_gate.weight", 0},
    {"mlp.up_proj.weight", "ffn_up.weight", 0},
    {"mlp.down_proj.weight", "ffn_down.weight", 0},
};

/* the GGUF name of hf_name into buf (0 when hf_name is not of this mapping); *rope as above */
static int hf_to_gguf(const char *hf_name, char *buf, size_t n, int *rope) {
  *rope = 0;
  static const struct {
    const char *hf, *gguf;
  } fixed[] = {{"model.embed_tokens.weight", "token_embd.weight"},
               {"model.norm.weight", "output_norm.weight"},
               {"lm_head.weight", "output.weight"}};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    if (strcmp(hf_name, fixed[i].hf) == 0) {
      snprintf(buf, n, "%s", fixed[i].gguf);
      return 1;
    }
  static const char prefix[] = "model.layers.";
  if (strncmp(hf_name, prefix, sizeof prefix - 1) != 0) return 0;
  const char *p = hf_name + sizeof prefix - 1;
  long layer = 0;
  int digits = 0;
  while (*p >= '0' && *p <= '9' && digits < 9) {
    layer = layer * 10 + (*p++ - '0');
    digits++;
  }
  if (digits == 0 || *p != '.' || (digits > 1 && hf_name[sizeof prefix - 1] == '0')) return 0;
  p++;
  for (size_t i = 0; i < sizeof g_layer_names / sizeof g_layer_names[0]; i++)
    if (strcmp(p, g_layer_names[i].hf) == 0) {
      snprintf(buf, n, "blk.%ld.%s", layer, g_layer_names[i].gguf);
      *rope = g_layer_names[i].rope;
      return 1;
    }
  return 0;
}

const e8q_gguf_tensor *e8q_gguf_find_hf(const e8q_gguf *g, const char *hf_name) {
  char name[256];
  int rope;
  if (!hf_to_gguf(hf_name, name, sizeof name, &rope)) return NULL;
  return e8q_gguf_find(g, name);
}

int e8q_gguf_hf_shape(const e8q_gguf *g, const char *hf_name, int64_t shape[2]) {
  const e8q_gguf_tensor *t = e8q_gguf_find_hf(g, hf_name);
  if (!t) return 0;
  E8Q_CHECK(t->n_dims <= 2, "%s: tensor %s (for %s) has %d dimensions; a Hugging Face weight has 1 or 2", g->path,
            t->name, hf_name, t->n_dims);
  if (t->n_dims == 1) {
    shape[0] = t->ne[0];
    shape[1] = 1;
    return 1;
  }
  shape[0] = t->ne[1];
  shape[1] = t->ne[0];
  return 2;
}

int64_t e8q_gguf_rope_row(int64_t r, int64_t hd) {
  int64_t h = r / hd, j = r % hd, half = hd / 2;
  int64_t s = j / half, i = j % half;
  return h * hd + 2 * i + s;
}

void e8q_gguf_read_hf_f32(const e8q_gguf *g, const char *hf_name, int64_t first, int64_t count, float *dst) {
  char name[256];
  int rope;
  E8Q_CHECK(hf_to_gguf(hf_name, name, sizeof name, &rope),
            "%s: %s is not a Hugging Face llama tensor name e8q maps to GGUF", g->path, hf_name);
  const e8q_gguf_tensor *t = e8q_gguf_find(g, name);
  E8Q_CHECK(t, "%s: no tensor %s (the GGUF name of %s)", g->path, name, hf_name);
  E8Q_CHECK(t->n_dims <= 2, "%s: tensor %s (for %s) has %d dimensions; a Hugging Face weight has 1 or 2", g->path,
            name, hf_name, t->n_dims);
  const int64_t cols = t->ne[0], rows = t->ne[1], n = cols * rows;
  E8Q_CHECK(first >= 0 && count >= 0 && first <= n && count <= n - first,
            "%s: elements [%" PRId64 ", %" PRId64 ") of %s (tensor %s) are outside its %" PRId64 " elements", g->path,
            first, first + count, hf_name, name, n);
  if (count == 0) return;
  int64_t hd = 0;
  if (rope) {
    const char *hk = rope == 1 ? "llama.attention.head_count" : "llama.attention.head_count_kv";
    int64_t heads = rope == 1 ? e8q_gguf_get_int(g, hk, 0, 1)
                              : e8q_gguf_get_int(g, hk, e8q_gguf_get_int(g, "llama.attention.head_count", 0, 1), 0);
    E8Q_CHECK(heads > 0 && rows % heads == 0 && (rows / heads) % 2 == 0,
              "%s: tensor %s has %" PRId64 " rows, not an even head size times %s = %" PRId64, g->path, name, rows,
              hk, heads);
    hd = rows / heads;
  }
  float *row = e8q_malloc((size_t)cols * sizeof *row, "GGUF row"); /* [cols] one dequantized row */
  int64_t done = 0;
  while (done < count) {
    int64_t e = first + done, r = e / cols, c0 = e % cols;
    int64_t take = cols - c0 < count - done ? cols - c0 : count - done;
    int64_t src = rope ? e8q_gguf_rope_row(r, hd) : r;
    if (c0 == 0 && take == cols) e8q_gguf_read_rows_f32(g, t, src, 1, dst + done);
    else {
      e8q_gguf_read_rows_f32(g, t, src, 1, row);
      memcpy(dst + done, row + c0, (size_t)take * sizeof *row);
    }
    done += take;
  }
  free(row);
}
