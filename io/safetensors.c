/* io/safetensors.c: safetensors files, memory-mapped and validated; HF model directories
 * (single file or sharded with model.safetensors.index.json); an atomic streaming writer;
 * f16/bf16 conversions. See io/safetensors.h for the format. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
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
#include "common/file.h"
#include "io/gguf.h"
#include "io/text.h"

/* the header may not exceed this (the safetensors reference uses the same limit) */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
/* offsets and sizes above 2^53 cannot be exact JSON numbers in cJSON (double) */
#define ST_MAX_EXACT ((double)(1ULL << 53))

/* ---------------------------------------------------------------- dtypes */

static const char *const g_dtype_names[E8Q_DT_COUNT] = {"F32", "F16", "BF16", "F64", "I64", "I32",
                                                        "U32", "I16", "U16", "I8",  "U8",  "BOOL"};
static const size_t g_dtype_sizes[E8Q_DT_COUNT] = {4, 2, 2, 8, 8, 4, 4, 2, 2, 1, 1, 1};

const char *e8q_dtype_name(e8q_dtype dt) {
  E8Q_CHECK(dt >= 0 && dt < E8Q_DT_COUNT, "e8q_dtype_name: invalid dtype code %d", (int)dt);
  return g_dtype_names[dt];
}

size_t e8q_dtype_size(e8q_dtype dt) {
  E8Q_CHECK(dt >= 0 && dt < E8Q_DT_COUNT, "e8q_dtype_size: invalid dtype code %d", (int)dt);
  return g_dtype_sizes[dt];
}

/* -1 when unknown */
static int dtype_parse(const char *s) {
  for (int i = 0; i < E8Q_DT_COUNT; i++)
    if (strcmp(s, g_dtype_names[i]) == 0) return i;
  return -1;
}

e8q_dtype e8q_dtype_from_name(const char *name) {
  int dt = dtype_parse(name ? name : "");
  E8Q_CHECK(dt >= 0, "unknown safetensors dtype \"%s\"", name ? name : "(null)");
  return (e8q_dtype)dt;
}

/* ---------------------------------------------------------------- f16 / bf16 */

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

uint16_t e8q_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN stays NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
  if (a < 0x38800000u) {
    /* below the smallest normal 2^-14: subnormal f16, value = m * 2^-24 with m rounded */
    if (a < 0x33000000u) return sign; /* < 2^-25: rounds to zero (2^-25 itself ties to even 0) */
    uint32_t e = a >> 23;             /* 102..112 */
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;        /* so that the result is m >> shift in units of 2^-24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  /* normal: rebias exponent, round the 13 dropped mantissa bits to nearest even */
  uint32_t r = a - 0x38000000u; /* exponent 127 -> 15 */
  r += 0xfffu + ((r >> 13) & 1u);
  return (uint16_t)(sign | (r >> 13));
}

void e8q_f32_convert(const float *src, e8q_dtype dt, void *dst, size_t n) {
  uint8_t *d = dst;
  switch (dt) {
    case E8Q_DT_F32: memcpy(dst, src, n * 4); break;
    case E8Q_DT_F16:
      for (size_t i = 0; i < n; i++) {
        uint16_t h = e8q_f32_to_f16(src[i]);
        memcpy(d + 2 * i, &h, 2);
      }
      break;
    case E8Q_DT_BF16:
      for (size_t i = 0; i < n; i++) {
        uint16_t h = e8q_f32_to_bf16(src[i]);
        memcpy(d + 2 * i, &h, 2);
      }
      break;
    default: E8Q_FATAL("e8q_f32_convert: dtype %s is not F32, F16 or BF16", e8q_dtype_name(dt));
  }
}

int e8q_f32_from(const void *src, e8q_dtype dt, float *dst, size_t n) {
  const uint8_t *s = src;
  uint16_t h;
  switch (dt) {
    case E8Q_DT_F32: memcpy(dst, src, n * 4); return 1;
    case E8Q_DT_F16:
      for (size_t i = 0; i < n; i++) memcpy(&h, s + 2 * i, 2), dst[i] = e8q_f16_to_f32(h);
      return 1;
    case E8Q_DT_BF16:
      for (size_t i = 0; i < n; i++) memcpy(&h, s + 2 * i, 2), dst[i] = e8q_bf16_to_f32(h);
      return 1;
    case E8Q_DT_F64:
      for (size_t i = 0; i < n; i++) {
        double d;
        memcpy(&d, s + 8 * i, 8);
        dst[i] = (float)d;
      }
      return 1;
    default: return 0;
  }
}

/* ---------------------------------------------------------------- reading */

static int cmp_tensor_name(const void *a, const void *b) {
  return strcmp(((const e8q_st_tensor *)a)->name, ((const e8q_st_tensor *)b)->name);
}

static int cmp_tensor_begin(const void *a, const void *b) {
  const e8q_st_tensor *x = *(const e8q_st_tensor *const *)a, *y = *(const e8q_st_tensor *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* a JSON number that is a non-negative integer exactly representable; fatal otherwise */
static uint64_t json_uint(const cJSON *v, const char *path, const char *tensor, const char *what) {
  E8Q_CHECK(cJSON_IsNumber(v), "%s: tensor \"%s\": %s is not a number; the safetensors header is corrupt",
            path, tensor, what);
  double d = v->valuedouble;
  E8Q_CHECK(d >= 0 && d < ST_MAX_EXACT && d == floor(d),
            "%s: tensor \"%s\": %s = %.17g is not a non-negative integer below 2^53; the safetensors "
            "header is corrupt",
            path, tensor, what, d);
  return (uint64_t)d;
}

static void parse_tensor(e8q_safetensors *st, const cJSON *item, e8q_st_tensor *t, uint64_t data_size) {
  const char *path = st->path, *name = item->string;
  E8Q_CHECK(cJSON_IsObject(item), "%s: tensor \"%s\": header entry is not a JSON object", path, name);
  t->name = strdup(name);
  E8Q_CHECK(t->name, "out of memory copying a tensor name");

  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  E8Q_CHECK(cJSON_IsString(dt), "%s: tensor \"%s\": missing or non-string \"dtype\"", path, name);
  int code = dtype_parse(dt->valuestring);
  E8Q_CHECK(code >= 0,
            "%s: tensor \"%s\": unknown dtype \"%s\" (e8q reads F32, F16, BF16, F64, I64, I32, U32, I16, "
            "U16, I8, U8, BOOL); convert the checkpoint",
            path, name, dt->valuestring);
  t->dtype = (e8q_dtype)code;

  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  E8Q_CHECK(cJSON_IsArray(shape), "%s: tensor \"%s\": missing or non-array \"shape\"", path, name);
  int nd = cJSON_GetArraySize(shape);
  E8Q_CHECK(nd <= E8Q_ST_MAX_DIMS, "%s: tensor \"%s\": %d dimensions, at most %d supported", path, name, nd,
            E8Q_ST_MAX_DIMS);
  t->ndim = nd;
  uint64_t numel = 1;
  int overflow = 0, empty = 0;
  for (int i = 0; i < nd; i++) {
    uint64_t d = json_uint(cJSON_GetArrayItem(shape, i), path, name, "a shape entry");
    t->shape[i] = (int64_t)d;
    if (d == 0) empty = 1;
    else if (numel > UINT64_MAX / d) overflow = 1;
    numel = overflow ? UINT64_MAX : numel * d;
  }
  if (empty) numel = 0, overflow = 0;
  const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  E8Q_CHECK(cJSON_IsArray(off) && cJSON_GetArraySize(off) == 2,
            "%s: tensor \"%s\": \"data_offsets\" must be an array [begin, end]", path, name);
  t->begin = json_uint(cJSON_GetArrayItem(off, 0), path, name, "data_offsets[0]");
  t->end = json_uint(cJSON_GetArrayItem(off, 1), path, name, "data_offsets[1]");
  E8Q_CHECK(t->begin <= t->end, "%s: tensor \"%s\": data_offsets [%llu, %llu] end before begin", path, name,
            (unsigned long long)t->begin, (unsigned long long)t->end);
  E8Q_CHECK(t->end <= data_size,
            "%s: tensor \"%s\": data_offsets [%llu, %llu] past the end of the data block (%llu bytes); the "
            "file is truncated or corrupt, download it again",
            path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
            (unsigned long long)data_size);
  uint64_t esz = g_dtype_sizes[t->dtype];
  if (overflow || numel > UINT64_MAX / esz) { /* the product would wrap: say so, not "0 elements" */
    char shp[256];
    shape_str(shp, sizeof shp, t->ndim, t->shape);
    E8Q_FATAL("%s: tensor \"%s\": shape %s of %s needs more than 2^64 bytes, but its data_offsets [%llu, %llu] hold "
              "%llu; the safetensors header is corrupt, download the file again",
              path, name, shp, g_dtype_names[t->dtype], (unsigned long long)t->begin, (unsigned long long)t->end,
              (unsigned long long)(t->end - t->begin));
  }
  E8Q_CHECK(numel * esz == t->end - t->begin,
            "%s: tensor \"%s\": shape/byte-count mismatch: %s with %llu elements needs %llu bytes but "
            "data_offsets [%llu, %llu] hold %llu",
            path, name, g_dtype_names[t->dtype], (unsigned long long)numel,
            (unsigned long long)(numel * esz), (unsigned long long)t->begin, (unsigned long long)t->end,
            (unsigned long long)(t->end - t->begin));
}

/* maps bytes [offset, offset + size) of `file` (size UINT64_MAX: to the end); `path` is the name
 * used in messages (the file, or "archive:member" for a region) */
static e8q_safetensors *st_map(const char *file, const char *path, uint64_t offset, uint64_t size) {
  e8q_safetensors *st = e8q_calloc(1, sizeof(*st), "safetensors handle");
  st->path = strdup(path);
  E8Q_CHECK(st->path, "out of memory");
  st->fd = -1;
  int fd = e8q_open_regular(file, "safetensors file"); /* FIFOs and devices refused, not waited on */
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    e8q_fatal_errno(__FILE__, __LINE__, e, "cannot stat %s", file);
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    E8Q_FATAL("%s: not a regular file; pass a .safetensors file", file);
  }
  uint64_t fsize = (uint64_t)sb.st_size;
  if (size == UINT64_MAX) size = offset <= fsize ? fsize - offset : 0;
  if (offset > fsize || size > fsize - offset) {
    close(fd);
    E8Q_FATAL("%s: the region [%llu, %llu) lies past the end of %s (%llu bytes); the archive is truncated", path,
              (unsigned long long)offset, (unsigned long long)(offset + size), file, (unsigned long long)fsize);
  }
  st->file_size = (size_t)size;
  if (st->file_size < 8) {
    close(fd);
    E8Q_FATAL("%s: truncated safetensors file: %zu bytes, shorter than the 8-byte header length; download "
              "it again",
              path, st->file_size);
  }
  long page = sysconf(_SC_PAGESIZE);
  uint64_t base = offset - offset % (uint64_t)(page > 0 ? page : 4096);
  st->map_len = (size_t)(offset - base) + st->file_size;
  void *map = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, (off_t)base);
  int e = errno;
  close(fd);
  if (map == MAP_FAILED) e8q_fatal_errno(__FILE__, __LINE__, e, "cannot mmap %s", path);
  st->map_base = map;
  st->map = (const uint8_t *)map + (offset - base);
  return st;
}

static void st_parse(e8q_safetensors *st);

e8q_safetensors *e8q_st_open(const char *path) {
  e8q_safetensors *st = st_map(path, path, 0, UINT64_MAX);
  st_parse(st);
  return st;
}

e8q_safetensors *e8q_st_open_region(const char *file, uint64_t offset, uint64_t size, const char *label) {
  e8q_safetensors *st = st_map(file, label ? label : file, offset, size);
  st_parse(st);
  return st;
}

/* validates the header and builds the tensor table */
static void st_parse(e8q_safetensors *st) {
  const char *path = st->path;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | st->map[i]; /* little-endian */
  E8Q_CHECK(hlen >= 2 && hlen <= ST_MAX_HEADER,
            "%s: header length %llu is not in [2, %llu] bytes; not a safetensors file or corrupt", path,
            (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
  E8Q_CHECK(hlen <= st->file_size - 8,
            "%s: truncated safetensors file: header length %llu runs past the end of the file (%zu bytes); "
            "download it again",
            path, (unsigned long long)hlen, st->file_size);
  st->data_offset = 8 + (size_t)hlen;
  uint64_t data_size = st->file_size - st->data_offset;

  const char *hdr = (const char *)st->map + 8;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
  if (!root) {
    size_t at = (cJSON_GetErrorPtr() && cJSON_GetErrorPtr() >= hdr) ? (size_t)(cJSON_GetErrorPtr() - hdr) : 0;
    E8Q_FATAL("%s: the JSON header (%llu bytes) does not parse (near byte %zu of the header); truncated or "
              "corrupt file",
              path, (unsigned long long)hlen, at);
  }
  for (const char *p = end; p && p < hdr + hlen; p++) /* the format allows trailing space padding */
    E8Q_CHECK(*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\0',
              "%s: unexpected bytes after the JSON header at header byte %zu; corrupt file", path,
              (size_t)(p - hdr));
  E8Q_CHECK(cJSON_IsObject(root), "%s: the JSON header is not an object", path);

  int n = 0;
  for (const cJSON *it = root->child; it; it = it->next)
    if (strcmp(it->string, "__metadata__") != 0) n++;
  st->tensors = e8q_calloc(n ? (size_t)n : 1, sizeof(e8q_st_tensor), "safetensors tensor table");
  for (const cJSON *it = root->child; it; it = it->next) {
    if (strcmp(it->string, "__metadata__") == 0) {
      E8Q_CHECK(cJSON_IsObject(it), "%s: \"__metadata__\" is not an object", path);
      int m = cJSON_GetArraySize(it);
      st->meta_keys = e8q_calloc(m ? (size_t)m : 1, sizeof(char *), "metadata keys");
      st->meta_values = e8q_calloc(m ? (size_t)m : 1, sizeof(char *), "metadata values");
      for (const cJSON *kv = it->child; kv; kv = kv->next) {
        E8Q_CHECK(cJSON_IsString(kv), "%s: __metadata__ entry \"%s\" is not a string", path, kv->string);
        st->meta_keys[st->n_meta] = strdup(kv->string);
        st->meta_values[st->n_meta] = strdup(kv->valuestring);
        E8Q_CHECK(st->meta_keys[st->n_meta] && st->meta_values[st->n_meta], "out of memory");
        st->n_meta++;
      }
      continue;
    }
    parse_tensor(st, it, &st->tensors[st->n_tensors], data_size);
    st->n_tensors++;
  }
  cJSON_Delete(root);

  /* names unique, sorted for bsearch */
  qsort(st->tensors, (size_t)st->n_tensors, sizeof(e8q_st_tensor), cmp_tensor_name);
  for (int i = 1; i < st->n_tensors; i++)
    E8Q_CHECK(strcmp(st->tensors[i - 1].name, st->tensors[i].name) != 0,
              "%s: tensor \"%s\" appears twice in the header; corrupt file", path, st->tensors[i].name);
  /* byte ranges must not overlap (empty tensors take no bytes) */
  if (st->n_tensors > 1) {
    e8q_st_tensor **by = e8q_malloc((size_t)st->n_tensors * sizeof(*by), "overlap check");
    for (int i = 0; i < st->n_tensors; i++) by[i] = &st->tensors[i];
    qsort(by, (size_t)st->n_tensors, sizeof(*by), cmp_tensor_begin);
    const e8q_st_tensor *prev = NULL;
    for (int i = 0; i < st->n_tensors; i++) {
      if (by[i]->begin == by[i]->end) continue;
      if (prev && by[i]->begin < prev->end) {
        char a[512], b[512];
        snprintf(a, sizeof a, "%s", prev->name);
        snprintf(b, sizeof b, "%s", by[i]->name);
        uint64_t pb = prev->begin, pe = prev->end, bb = by[i]->begin, be = by[i]->end;
        free(by);
        E8Q_FATAL("%s: tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] have overlapping data_offsets; "
                  "corrupt file",
                  path, a, (unsigned long long)pb, (unsigned long long)pe, b, (unsigned long long)bb,
                  (unsigned long long)be);
      }
      prev = by[i];
    }
    free(by);
  }
}

void e8q_st_close(e8q_safetensors *st) {
  if (!st) return;
  if (st->map_base) munmap((void *)st->map_base, st->map_len);
  if (st->fd >= 0) close(st->fd);
  for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
  free(st->tensors);
  for (int i = 0; i < st->n_meta; i++) {
    free(st->meta_keys[i]);
    free(st->meta_values[i]);
  }
  free(st->meta_keys);
  free(st->meta_values);
  free(st->path);
  free(st);
}

const e8q_st_tensor *e8q_st_find(const e8q_safetensors *st, const char *name) {
  e8q_st_tensor key = {.name = (char *)name};
  return bsearch(&key, st->tensors, (size_t)st->n_tensors, sizeof(e8q_st_tensor), cmp_tensor_name);
}

const void *e8q_st_data(const e8q_safetensors *st, const e8q_st_tensor *t) {
  return st->map + st->data_offset + t->begin;
}

int64_t e8q_st_numel(const e8q_st_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t k = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && k < cap; i++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* converts elements [first, first + n) of t to f32 and checks them; `where` names the file (or
 * model directory) in messages */
static void convert_range(const e8q_safetensors *st, const e8q_st_tensor *t, const char *where, int64_t first,
                          int64_t n, float *dst) {
  const char *name = t->name;
  const uint8_t *src = (const uint8_t *)e8q_st_data(st, t) + (size_t)first * g_dtype_sizes[t->dtype];
  switch (t->dtype) {
    case E8Q_DT_F32:
    case E8Q_DT_F16:
    case E8Q_DT_BF16:
    case E8Q_DT_F64: e8q_f32_from(src, t->dtype, dst, (size_t)n); break;
    case E8Q_DT_I8: { /* the 8-bit block format (common/f16.h): its scales beside it */
      char sname[512];
      snprintf(sname, sizeof sname, "%s%s", name, E8Q_Q8_SCALES_SUFFIX);
      const e8q_st_tensor *s = e8q_st_find(st, sname);
      const int64_t numel = e8q_st_numel(t);
      E8Q_CHECK(s && s->dtype == E8Q_DT_F32 && t->ndim >= 1 && t->shape[t->ndim - 1] % E8Q_Q8_BLOCK == 0 &&
                    e8q_st_numel(s) * E8Q_Q8_BLOCK == numel,
                "%s: tensor \"%s\" is I8 without an F32 tensor \"%s\" of one scale per %d values (rows of a "
                "multiple of %d); the file is damaged or not e8q's 8-bit format",
                where, name, sname, E8Q_Q8_BLOCK, E8Q_Q8_BLOCK);
      const uint8_t *sc = e8q_st_data(st, s);
      for (int64_t i = 0; i < n; i++) {
        float scale; /* the mapping may be unaligned */
        memcpy(&scale, sc + sizeof scale * (size_t)((first + i) / E8Q_Q8_BLOCK), sizeof scale);
        dst[i] = e8q_q8_value(scale, (int8_t)src[i]);
      }
      break;
    }
    default:
      E8Q_FATAL("%s: tensor \"%s\" has dtype %s, expected a float dtype (F32, F16, BF16, F64, or I8 with "
                "scales)",
                where, name, g_dtype_names[t->dtype]);
  }
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(dst[i])) {
      char idx[256];
      int64_t rem = first + i, coord[E8Q_ST_MAX_DIMS] = {0};
      for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] > 0) {
          coord[d] = rem % t->shape[d];
          rem /= t->shape[d];
        }
      }
      shape_str(idx, sizeof idx, t->ndim, coord);
      E8Q_FATAL("%s: tensor \"%s\" holds %s at element %lld (index %s)%s; the checkpoint is corrupt or "
                "diverged, e8q cannot quantize it",
                where, name, isnan(dst[i]) ? "NaN" : (dst[i] > 0 ? "+Inf" : "-Inf"), (long long)(first + i), idx,
                t->dtype == E8Q_DT_F64 ? " (possibly an F64 value out of f32 range)" : "");
    }
}

/* converts and checks one whole tensor after checking its shape */
static void read_f32(const e8q_safetensors *st, const e8q_st_tensor *t, const char *where, int ndim,
                     const int64_t *expect, float *dst) {
  if (ndim >= 0) {
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == expect[i];
    if (!same) {
      char have[256], want[256];
      shape_str(have, sizeof have, t->ndim, t->shape);
      shape_str(want, sizeof want, ndim, expect);
      E8Q_FATAL("%s: tensor \"%s\" has shape %s but the model config implies %s; config.json and the "
                "weights do not match",
                where, t->name, have, want);
    }
  }
  convert_range(st, t, where, 0, e8q_st_numel(t), dst);
}

static void read_range(const e8q_safetensors *st, const e8q_st_tensor *t, const char *where, int64_t first,
                       int64_t count, float *dst) {
  int64_t n = e8q_st_numel(t);
  E8Q_CHECK(first >= 0 && count >= 0 && first <= n && count <= n - first,
            "%s: tensor \"%s\": elements [%lld, %lld) requested of %lld", where, t->name, (long long)first,
            (long long)(first + count), (long long)n);
  convert_range(st, t, where, first, count, dst);
}

void e8q_st_read_f32_range(const e8q_safetensors *st, const char *name, int64_t first, int64_t count,
                           float *dst) {
  const e8q_st_tensor *t = e8q_st_find(st, name);
  E8Q_CHECK(t, "%s: missing tensor \"%s\"; the checkpoint is incomplete or not a supported architecture",
            st->path, name);
  read_range(st, t, st->path, first, count, dst);
}

void e8q_st_read_f32(const e8q_safetensors *st, const char *name, int ndim, const int64_t *expect,
                     float *dst) {
  const e8q_st_tensor *t = e8q_st_find(st, name);
  E8Q_CHECK(t, "%s: missing tensor \"%s\"; the checkpoint is incomplete or not a supported architecture",
            st->path, name);
  read_f32(st, t, st->path, ndim, expect, dst);
}

/* ---------------------------------------------------------------- HF model directories */

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = e8q_malloc(n, "path");
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && !S_ISDIR(sb.st_mode); /* not a regular file: the open says what it is */
}

typedef struct {
  const char *name;
  int file;
} index_entry;

static int cmp_index_entry(const void *a, const void *b) {
  return strcmp(((const index_entry *)a)->name, ((const index_entry *)b)->name);
}
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

e8q_st_model *e8q_st_model_open(const char *dir) {
  e8q_st_model *m = e8q_calloc(1, sizeof(*m), "safetensors model");
  struct stat sb;
  E8Q_CHECK_ERRNO(stat(dir, &sb) == 0, "cannot open model %s", dir);
  if (S_ISREG(sb.st_mode) && e8q_gguf_is_file(dir)) { /* a GGUF model */
    m->dir = strdup(dir);
    E8Q_CHECK(m->dir, "out of memory");
    m->gguf = e8q_gguf_open(dir);
    return m;
  }
  if (!S_ISDIR(sb.st_mode)) { /* a single .safetensors file (a FIFO or device: refused by e8q_st_open) */
    m->dir = strdup(dir);
    m->n_files = 1;
    m->files = e8q_malloc(sizeof(e8q_safetensors *), "model files");
    m->files[0] = e8q_st_open(dir);
    return m;
  }
  m->dir = strdup(dir);
  E8Q_CHECK(m->dir, "out of memory");
  char *index = path_join(dir, "model.safetensors.index.json");
  char *single = path_join(dir, "model.safetensors");
  if (!file_exists(index)) {
    E8Q_CHECK(file_exists(single),
              "%s: neither model.safetensors nor model.safetensors.index.json found; pass a Hugging Face "
              "model directory with safetensors weights",
              dir);
    m->n_files = 1;
    m->files = e8q_malloc(sizeof(e8q_safetensors *), "model files");
    m->files[0] = e8q_st_open(single);
    free(index);
    free(single);
    return m;
  }
  free(single);

  size_t len;
  char *text = e8q_file_read(index, &len, "safetensors index");
  cJSON *root = cJSON_ParseWithLength(text, len);
  E8Q_CHECK(root, "%s: not valid JSON; download it again", index);
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  E8Q_CHECK(cJSON_IsObject(wm) && wm->child, "%s: missing or empty \"weight_map\" object", index);
  int n = cJSON_GetArraySize(wm);
  /* distinct shard file names, sorted */
  char **names = e8q_malloc((size_t)n * sizeof(char *), "shard names");
  int k = 0;
  for (const cJSON *it = wm->child; it; it = it->next) {
    E8Q_CHECK(cJSON_IsString(it) && it->valuestring[0],
              "%s: weight_map entry \"%s\" is not a file name string", index, it->string);
    E8Q_CHECK(!strchr(it->valuestring, '/'),
              "%s: weight_map entry \"%s\" names \"%s\", outside the model directory; refused", index,
              it->string, it->valuestring);
    names[k++] = it->valuestring;
  }
  qsort(names, (size_t)n, sizeof(char *), cmp_str);
  int nf = 0;
  for (int i = 0; i < n; i++)
    if (i == 0 || strcmp(names[i], names[i - 1]) != 0) names[nf++] = names[i];
  m->n_files = nf;
  m->files = e8q_calloc((size_t)nf, sizeof(e8q_safetensors *), "model files");
  for (int i = 0; i < nf; i++) {
    char *p = path_join(dir, names[i]);
    E8Q_CHECK(file_exists(p), "%s: shard file %s named in the index is missing; download it again", index, p);
    m->files[i] = e8q_st_open(p);
    free(p);
  }
  /* the index, sorted by tensor name; every entry must exist in its shard */
  index_entry *ents = e8q_malloc((size_t)n * sizeof(index_entry), "index entries");
  k = 0;
  for (const cJSON *it = wm->child; it; it = it->next) {
    char *key = it->valuestring;
    char **hit = bsearch(&key, names, (size_t)nf, sizeof(char *), cmp_str);
    ents[k].name = it->string;
    ents[k].file = (int)(hit - names);
    E8Q_CHECK(e8q_st_find(m->files[ents[k].file], it->string),
              "%s: tensor \"%s\" is listed in the index for %s, which does not hold it; the shards and the "
              "index do not match",
              index, it->string, m->files[ents[k].file]->path);
    k++;
  }
  qsort(ents, (size_t)n, sizeof(index_entry), cmp_index_entry);
  for (int i = 1; i < n; i++)
    E8Q_CHECK(strcmp(ents[i - 1].name, ents[i].name) != 0, "%s: tensor \"%s\" listed twice", index,
              ents[i].name);
  m->n_index = n;
  m->index_names = e8q_malloc((size_t)n * sizeof(char *), "index names");
  m->index_file = e8q_malloc((size_t)n * sizeof(int), "index files");
  for (int i = 0; i < n; i++) {
    m->index_names[i] = strdup(ents[i].name);
    E8Q_CHECK(m->index_names[i], "out of memory");
    m->index_file[i] = ents[i].file;
  }
  free(ents);
  free(names);
  cJSON_Delete(root);
  free(text);
  free(index);
  return m;
}

void e8q_st_model_close(e8q_st_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_files; i++) e8q_st_close(m->files[i]);
  free(m->files);
  for (int i = 0; i < m->n_index; i++) free(m->index_names[i]);
  free(m->index_names);
  free(m->index_file);
  if (m->gguf) e8q_gguf_close(m->gguf);
  free(m->dir);
  free(m);
}

const e8q_st_tensor *e8q_st_model_find(const e8q_st_model *m, const char *name, const e8q_safetensors **file) {
  if (m->gguf) return NULL;
  if (m->n_index > 0) {
    const char *key = name;
    char **hit = bsearch(&key, m->index_names, (size_t)m->n_index, sizeof(char *), cmp_str);
    if (!hit) return NULL;
    const e8q_safetensors *f = m->files[m->index_file[hit - m->index_names]];
    if (file) *file = f;
    return e8q_st_find(f, name);
  }
  for (int i = 0; i < m->n_files; i++) {
    const e8q_st_tensor *t = e8q_st_find(m->files[i], name);
    if (t) {
      if (file) *file = m->files[i];
      return t;
    }
  }
  return NULL;
}

int e8q_st_model_info(const e8q_st_model *m, const char *name, int64_t shape[2], e8q_dtype *keep,
                      const char **src_type) {
  if (m->gguf) {
    const e8q_gguf_tensor *g = e8q_gguf_find_hf(m->gguf, name);
    if (!g) return 0;
    int nd = e8q_gguf_hf_shape(m->gguf, name, shape);
    if (nd == 1) shape[1] = 0;
    enum { GGML_F32 = 0, GGML_BF16 = 30 }; /* ggml type numbers; everything else is kept as F16 */
    e8q_dtype dt = g->type == GGML_F32 ? E8Q_DT_F32 : g->type == GGML_BF16 ? E8Q_DT_BF16 : E8Q_DT_F16;
    if (keep) *keep = dt;
    if (src_type) *src_type = e8q_ggml_type_name(g->type);
    return nd;
  }
  const e8q_safetensors *f = NULL;
  const e8q_st_tensor *t = e8q_st_model_find(m, name, &f);
  if (!t) return 0;
  shape[0] = t->shape[0];
  shape[1] = t->ndim > 1 ? t->shape[1] : 0;
  if (keep) *keep = t->dtype;
  if (src_type) *src_type = e8q_dtype_name(t->dtype);
  return t->ndim;
}

/* a GGUF model's tensor `name` as f32 in HF order, its shape checked against expect[0..ndim) */
static void gguf_read(const e8q_st_model *m, const char *name, int ndim, const int64_t *expect, float *dst) {
  int64_t shape[2] = {0, 0};
  int nd = e8q_st_model_info(m, name, shape, NULL, NULL);
  E8Q_CHECK(nd > 0, "%s: missing tensor \"%s\" (GGUF name of the Hugging Face tensor); the file is incomplete or not a "
            "supported architecture",
            m->dir, name);
  if (ndim >= 0) {
    int ok = nd == ndim && shape[0] == expect[0] && (ndim == 1 || shape[1] == expect[1]);
    E8Q_CHECK(ok, "%s: tensor \"%s\" has shape [%lld, %lld] but the model's config implies [%lld, %lld]", m->dir, name,
              (long long)shape[0], (long long)shape[1], (long long)expect[0], ndim > 1 ? (long long)expect[1] : 0LL);
  }
  e8q_gguf_read_hf_f32(m->gguf, name, 0, shape[0] * (nd > 1 ? shape[1] : 1), dst);
}

/* e8q_st_model_find, fatal (naming the model directory) when the tensor is missing */
static const e8q_st_tensor *model_need(const e8q_st_model *m, const char *name, const e8q_safetensors **f) {
  const e8q_st_tensor *t = e8q_st_model_find(m, name, f);
  E8Q_CHECK(t, "%s: missing tensor \"%s\"; the checkpoint is incomplete or not a supported architecture",
            m->dir, name);
  return t;
}

void e8q_st_model_read_f32(const e8q_st_model *m, const char *name, int ndim, const int64_t *expect,
                           float *dst) {
  if (m->gguf) {
    gguf_read(m, name, ndim, expect, dst);
    return;
  }
  const e8q_safetensors *f = NULL;
  const e8q_st_tensor *t = model_need(m, name, &f);
  read_f32(f, t, f->path, ndim, expect, dst);
}

void e8q_st_model_read_f32_range(const e8q_st_model *m, const char *name, int64_t first, int64_t count,
                                 float *dst) {
  if (m->gguf) {
    e8q_gguf_read_hf_f32(m->gguf, name, first, count, dst);
    return;
  }
  const e8q_safetensors *f = NULL;
  const e8q_st_tensor *t = model_need(m, name, &f);
  read_range(f, t, f->path, first, count, dst);
}

/* ---------------------------------------------------------------- writing */

typedef struct {
  char *name;
  e8q_dtype dt;
  int ndim;
  int64_t shape[E8Q_ST_MAX_DIMS];
  uint64_t bytes;
} wr_tensor;

struct e8q_st_writer {
  char *path;      /* final name */
  char *tmp;       /* temporary in the same directory */
  int fd;
  int n, cap;
  wr_tensor *t;    /* [n] declared tensors, in data order */
  cJSON *meta;     /* __metadata__ object or NULL */
  int started;     /* header written */
  uint64_t total;  /* data bytes declared */
  uint64_t written;/* data bytes written */
  uint8_t *buf;    /* [WR_BUF] staging buffer */
  size_t fill;
  int holes;       /* e8q_st_writer_skip was used */
};

#define WR_BUF ((size_t)1 << 20)

/* closes and removes the temporary */
static void wr_discard(e8q_st_writer *w) {
  if (w->fd >= 0) close(w->fd);
  w->fd = -1;
  if (w->tmp) unlink(w->tmp);
}

/* removes the temporary and raises the fatal error for errno e */
E8Q_NORETURN static void wr_fail(e8q_st_writer *w, int e, const char *what) {
  wr_discard(w);
  e8q_fatal_errno(__FILE__, __LINE__, e, "%s %s (temporary %s removed)%s", what, w->path, w->tmp,
                  e == ENOSPC || e == EDQUOT ? "; free disk space and run again" : "");
}

static void wr_raw(e8q_st_writer *w, const void *data, size_t n) {
  const uint8_t *p = data;
  while (n > 0) {
    ssize_t k = write(w->fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) wr_fail(w, k < 0 ? errno : ENOSPC, "cannot write");
    p += k;
    n -= (size_t)k;
  }
}

static void wr_flush(e8q_st_writer *w) {
  if (w->fill) wr_raw(w, w->buf, w->fill);
  w->fill = 0;
}

e8q_st_writer *e8q_st_writer_begin(const char *path) {
  e8q_st_writer *w = e8q_calloc(1, sizeof(*w), "safetensors writer");
  w->path = strdup(path);
  size_t n = strlen(path) + 16;
  w->tmp = e8q_malloc(n, "temporary name");
  snprintf(w->tmp, n, "%s.tmp.XXXXXX", path);
  w->fd = mkstemp(w->tmp);
  E8Q_CHECK_ERRNO(w->fd >= 0, "cannot create a temporary file %s next to %s", w->tmp, path);
  if (fchmod(w->fd, 0644) != 0) wr_fail(w, errno, "cannot chmod the temporary for");
  w->buf = e8q_malloc(WR_BUF, "writer buffer");
  return w;
}

void e8q_st_writer_meta(e8q_st_writer *w, const char *key, const char *value) {
  E8Q_CHECK(!w->started, "%s: metadata \"%s\" added after tensor data started", w->path, key);
  if (!w->meta) w->meta = cJSON_CreateObject();
  E8Q_CHECK(!cJSON_GetObjectItemCaseSensitive(w->meta, key), "%s: metadata key \"%s\" given twice", w->path,
            key);
  cJSON_AddStringToObject(w->meta, key, value);
}

void e8q_st_writer_declare(e8q_st_writer *w, const char *name, e8q_dtype dt, int ndim, const int64_t *shape) {
  E8Q_CHECK(!w->started, "%s: tensor \"%s\" declared after tensor data started; declare every tensor first",
            w->path, name);
  E8Q_CHECK(dt >= 0 && dt < E8Q_DT_COUNT, "%s: tensor \"%s\": invalid dtype code %d", w->path, name, (int)dt);
  E8Q_CHECK(ndim >= 0 && ndim <= E8Q_ST_MAX_DIMS, "%s: tensor \"%s\": %d dimensions", w->path, name, ndim);
  E8Q_CHECK(strcmp(name, "__metadata__") != 0, "%s: \"__metadata__\" is not a tensor name", w->path);
  for (int i = 0; i < w->n; i++)
    E8Q_CHECK(strcmp(w->t[i].name, name) != 0, "%s: tensor \"%s\" declared twice", w->path, name);
  if (w->n == w->cap) {
    w->cap = w->cap ? 2 * w->cap : 16;
    w->t = realloc(w->t, (size_t)w->cap * sizeof(wr_tensor));
    E8Q_CHECK(w->t, "out of memory");
  }
  wr_tensor *t = &w->t[w->n++];
  t->name = strdup(name);
  t->dt = dt;
  t->ndim = ndim;
  uint64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    E8Q_CHECK(shape[i] >= 0, "%s: tensor \"%s\": negative dimension %lld", w->path, name, (long long)shape[i]);
    t->shape[i] = shape[i];
    numel *= (uint64_t)shape[i];
  }
  t->bytes = numel * g_dtype_sizes[dt];
  w->total += t->bytes;
}

uint8_t *e8q_st_header(struct cJSON *meta, int n, const e8q_st_decl *t, size_t *len) {
  cJSON *root = cJSON_CreateObject();
  E8Q_CHECK(root, "out of memory building a safetensors header");
  if (meta) cJSON_AddItemToObject(root, "__metadata__", meta);
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    E8Q_CHECK(t[i].dt >= 0 && t[i].dt < E8Q_DT_COUNT, "tensor \"%s\": invalid dtype code %d", t[i].name, (int)t[i].dt);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "dtype", g_dtype_names[t[i].dt]);
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    uint64_t numel = 1;
    for (int d = 0; d < t[i].ndim; d++) {
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
      numel *= (uint64_t)t[i].shape[d];
    }
    uint64_t bytes = numel * g_dtype_sizes[t[i].dt];
    cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + bytes)));
    off += bytes;
    cJSON_AddItemToObject(root, t[i].name, o);
  }
  char *json = cJSON_PrintUnformatted(root);
  E8Q_CHECK(json, "out of memory printing a safetensors header");
  cJSON_Delete(root);
  size_t jl = strlen(json), padded = (jl + 7) & ~(size_t)7; /* data block 8-byte aligned */
  uint8_t *h = e8q_malloc(8 + padded, "safetensors header");
  for (int i = 0; i < 8; i++) h[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  memcpy(h + 8, json, jl);
  memset(h + 8 + jl, ' ', padded - jl);
  free(json);
  *len = 8 + padded;
  return h;
}

static void wr_header(e8q_st_writer *w) {
  e8q_st_decl *d = e8q_malloc(sizeof(e8q_st_decl) * (size_t)(w->n ? w->n : 1), "tensor declarations");
  for (int i = 0; i < w->n; i++) d[i] = (e8q_st_decl){w->t[i].name, w->t[i].dt, w->t[i].ndim, w->t[i].shape};
  size_t len;
  uint8_t *h = e8q_st_header(w->meta, w->n, d, &len);
  w->meta = NULL;
  free(d);
  wr_raw(w, h, len);
  free(h);
  w->started = 1;
}

void e8q_st_writer_write(e8q_st_writer *w, const void *data, size_t bytes) {
  if (!w->started) wr_header(w);
  E8Q_CHECK(bytes <= w->total - w->written,
            "%s: %zu bytes written past the %llu declared tensor bytes (%llu already written)", w->path, bytes,
            (unsigned long long)w->total, (unsigned long long)w->written);
  w->written += bytes;
  const uint8_t *p = data;
  if (bytes >= WR_BUF) {
    wr_flush(w);
    wr_raw(w, p, bytes);
    return;
  }
  while (bytes > 0) {
    size_t k = WR_BUF - w->fill < bytes ? WR_BUF - w->fill : bytes;
    memcpy(w->buf + w->fill, p, k);
    w->fill += k;
    p += k;
    bytes -= k;
    if (w->fill == WR_BUF) wr_flush(w);
  }
}

void e8q_st_writer_skip(e8q_st_writer *w, uint64_t bytes) {
  if (!w->started) wr_header(w);
  E8Q_CHECK(bytes <= w->total - w->written,
            "%s: %llu bytes skipped past the %llu declared tensor bytes (%llu already written)", w->path,
            (unsigned long long)bytes, (unsigned long long)w->total, (unsigned long long)w->written);
  wr_flush(w);
  if (lseek(w->fd, (off_t)bytes, SEEK_CUR) < 0) wr_fail(w, errno, "cannot seek in");
  w->written += bytes;
  w->holes = 1;
}

void e8q_st_writer_finish(e8q_st_writer *w) {
  if (!w->started) wr_header(w);
  if (w->written != w->total) {
    wr_discard(w);
    E8Q_FATAL("%s: incomplete tensor data: %llu of %llu declared bytes written; temporary %s removed", w->path,
              (unsigned long long)w->written, (unsigned long long)w->total, w->tmp);
  }
  wr_flush(w);
  if (w->holes) { /* a trailing hole: give the file its full length */
    off_t end = lseek(w->fd, 0, SEEK_CUR);
    if (end < 0 || ftruncate(w->fd, end) != 0) wr_fail(w, errno, "cannot set the length of");
  }
  if (fsync(w->fd) != 0) wr_fail(w, errno, "cannot fsync");
  if (close(w->fd) != 0) {
    w->fd = -1;
    wr_fail(w, errno, "cannot close");
  }
  w->fd = -1;
  if (rename(w->tmp, w->path) != 0) wr_fail(w, errno, "cannot rename the temporary onto");
  /* fsync the directory so the rename survives a crash */
  char *dir = strdup(w->path);
  char *slash = strrchr(dir, '/');
  if (slash == dir) slash[1] = 0;
  else if (slash) *slash = 0;
  else strcpy(dir, ".");
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  free(dir);
  for (int i = 0; i < w->n; i++) free(w->t[i].name);
  free(w->t);
  if (w->meta) cJSON_Delete(w->meta);
  free(w->buf);
  free(w->tmp);
  free(w->path);
  free(w);
}
