/* io/tokenizer.c: Llama BPE tokenizers from SentencePiece tokenizer.model (protobuf, parsed here
 * from the wire format) or llama2.c tokenizer.bin.
 *
 * Internally every piece is stored in llama2.c form: U+2581 ("▁") replaced by a plain space.
 * Encoding (both formats, same ids for the same vocabulary):
 *   1. buffer = " " + text when the dummy prefix applies (non-empty text);
 *   2. the buffer is split into UTF-8 characters (a lead byte and up to 3 continuation bytes,
 *      as llama2.c groups them); a character found in the vocabulary is one symbol, one that is
 *      not becomes one byte-fallback symbol <0xNN> per byte (never merged further);
 *   3. repeatedly the adjacent pair whose concatenation is a vocabulary piece with the highest
 *      score is merged, the leftmost on ties, until no pair is in the vocabulary.
 * Only NORMAL and USER_DEFINED pieces take part in lookups (control, unknown, byte and unused
 * pieces cannot be formed from text). SentencePiece's remove_extra_whitespaces is not applied
 * (llama2.c does not apply it either); a non-identity normalizer is warned about.
 *
 * e8q_tokenizer_encode_ref is the readable O(n^2) twin (llama2.c's loop);
 * e8q_tokenizer_encode does the same merges with a heap over a linked list (O(n log n)), and,
 * when no piece holds a space right after another character (true of SentencePiece vocabularies
 * trained with whitespace splitting, such as Llama's), merges each word independently and
 * reuses the ids of words already seen in the same call (tens of MB/s).
 *
 * Byte-level BPE tokenizers (tokenizer.json, GGUF tokenizer.ggml.model "gpt2") live in io/bpe.c;
 * the functions here dispatch to it when t->bpe is set. A GGUF file's tokenizer.ggml.model "llama"
 * is read into the SentencePiece tables here (tokens, scores, token_type). */
#include "io/tokenizer.h"

#include <ctype.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/heap.h"
#include "common/log.h"
#include "io/atomic.h"
#include "io/bpe.h"
#include "io/gguf.h"
#include "io/text.h"

/* SentencePiece piece types (sentencepiece_model.proto) */
enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER_DEFINED = 4, SP_UNUSED = 5, SP_BYTE = 6 };

struct e8q_tokenizer {
  char *path;          /* owned copy of the file name */
  int n;               /* vocabulary size */
  char **pieces;       /* [n] NUL-terminated, spaces as ' ' (llama2.c form) */
  int *piece_len;      /* [n] bytes */
  float *scores;       /* [n] merge priority */
  int *types;          /* [n] SP_* */
  int byte_id[256];    /* id of <0xNN>, -1 if absent */
  int unk_id, bos_id, eos_id;
  int add_dummy_prefix;
  int max_piece_len;   /* bytes, over mergeable pieces */
  int split_ok;        /* no mergeable piece has a space right after a non-space byte */
  /* open-addressing hash of mergeable pieces: slot -> id or -1 */
  int *slots;          /* [cap] */
  uint32_t cap;        /* power of two, >= 2n */
  char byte_str[256][2]; /* decode results of byte pieces */
  int add_bos;         /* the model's own BOS flag (SentencePiece / llama2.c: 1) */
  e8q_bpe *bpe;        /* byte-level BPE (tokenizer.json, GGUF "gpt2"); NULL: the tables above */
};

/* ---------------------------------------------------------------- piece lookup */

static uint32_t hash_bytes(const char *s, int len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (int i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

/* id of the mergeable piece equal to s[0..len), or -1 */
static int tok_lookup(const e8q_tokenizer *t, const char *s, int len) {
  if (len > t->max_piece_len) return -1;
  for (uint32_t i = hash_bytes(s, len) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    int id = t->slots[i];
    if (id < 0) return -1;
    if (t->piece_len[id] == len && memcmp(t->pieces[id], s, (size_t)len) == 0) return id;
  }
}

/* the byte of a byte-fallback piece "<0xNN>" (exactly two hex digits), or -1 */
static int byte_piece_value(const char *p, int len) {
  if (len != 6 || memcmp(p, "<0x", 3) != 0 || !isxdigit((unsigned char)p[3]) || !isxdigit((unsigned char)p[4]) ||
      p[5] != '>')
    return -1;
  return (int)strtoul((const char[]){p[3], p[4], 0}, NULL, 16);
}

static int mergeable(int type) { return type == SP_NORMAL || type == SP_USER_DEFINED; }

/* after pieces/types/scores are filled: byte table, hash table, checks */
static void tok_index(e8q_tokenizer *t) {
  E8Q_CHECK(t->n > 0, "%s: the tokenizer has no pieces", t->path);
  for (int b = 0; b < 256; b++) {
    t->byte_id[b] = -1;
    t->byte_str[b][0] = (char)b;
    t->byte_str[b][1] = 0;
  }
  t->cap = 16;
  while (t->cap < 2u * (uint32_t)t->n) t->cap *= 2;
  t->slots = e8q_malloc(t->cap * sizeof(int), "tokenizer hash table");
  for (uint32_t i = 0; i < t->cap; i++) t->slots[i] = -1;
  t->max_piece_len = 0;
  t->split_ok = 1;
  for (int id = 0; id < t->n; id++) {
    const char *p = t->pieces[id];
    if (t->types[id] == SP_BYTE) {
      int v = byte_piece_value(p, t->piece_len[id]);
      E8Q_CHECK(v >= 0, "%s: byte piece %d is \"%s\", expected <0xNN>", t->path, id, p);
      if (t->byte_id[v] < 0) t->byte_id[v] = id;
      continue;
    }
    if (!mergeable(t->types[id])) continue;
    for (int k = 1; k < t->piece_len[id]; k++)
      if (p[k] == ' ' && p[k - 1] != ' ') t->split_ok = 0;
    if (tok_lookup(t, p, t->piece_len[id]) >= 0) continue; /* duplicate: the first id wins */
    if (t->piece_len[id] > t->max_piece_len) t->max_piece_len = t->piece_len[id];
    uint32_t i = hash_bytes(p, t->piece_len[id]) & (t->cap - 1);
    while (t->slots[i] >= 0) i = (i + 1) & (t->cap - 1);
    t->slots[i] = id;
  }
  E8Q_CHECK(t->bos_id >= 0 && t->bos_id < t->n && t->eos_id >= 0 && t->eos_id < t->n,
            "%s: bos id %d / eos id %d outside the vocabulary of %d pieces", t->path, t->bos_id, t->eos_id, t->n);
}

/* ---------------------------------------------------------------- protobuf wire format */

typedef struct {
  const uint8_t *p, *end, *base; /* cursor, end, start of the file (for offsets in messages) */
  const char *path;
} pb;

static uint64_t pb_varint(pb *r) {
  uint64_t v = 0;
  for (int s = 0; s < 64; s += 7) {
    E8Q_CHECK(r->p < r->end, "%s: truncated protobuf varint at byte %zu; not a SentencePiece model or corrupt",
              r->path, (size_t)(r->p - r->base));
    uint8_t c = *r->p++;
    v |= (uint64_t)(c & 0x7f) << s;
    if (!(c & 0x80)) return v;
  }
  E8Q_FATAL("%s: protobuf varint longer than 10 bytes at byte %zu; corrupt file", r->path, (size_t)(r->p - r->base));
}

/* one field: returns 0 at the end; sets *field, *wt; for wire type 2 sets *sub to the payload, for
 * 0 sets *val, for 5 sets *f32bits, for 1 skips */
static int pb_next(pb *r, uint32_t *field, int *wt, pb *sub, uint64_t *val) {
  if (r->p >= r->end) return 0;
  size_t at = (size_t)(r->p - r->base);
  uint64_t key = pb_varint(r);
  *field = (uint32_t)(key >> 3);
  *wt = (int)(key & 7);
  E8Q_CHECK(*field > 0, "%s: protobuf field number 0 at byte %zu; not a SentencePiece model or corrupt", r->path, at);
  switch (*wt) {
    case 0: *val = pb_varint(r); break;
    case 1:
      E8Q_CHECK(r->end - r->p >= 8, "%s: truncated protobuf at byte %zu", r->path, at);
      r->p += 8;
      break;
    case 5: {
      E8Q_CHECK(r->end - r->p >= 4, "%s: truncated protobuf at byte %zu", r->path, at);
      uint32_t u = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24;
      *val = u;
      r->p += 4;
      break;
    }
    case 2: {
      uint64_t n = pb_varint(r);
      E8Q_CHECK(n <= (uint64_t)(r->end - r->p),
                "%s: protobuf field %u at byte %zu claims %llu bytes, past the end of its message; truncated or "
                "corrupt file",
                r->path, *field, at, (unsigned long long)n);
      sub->p = r->p;
      sub->end = r->p + n;
      sub->base = r->base;
      sub->path = r->path;
      r->p += n;
      break;
    }
    default:
      E8Q_FATAL("%s: protobuf wire type %d at byte %zu is not supported; not a SentencePiece model or corrupt",
                r->path, *wt, at);
  }
  return 1;
}

/* converts "▁" (E2 96 81) to ' ', malloc'd */
static char *sp_to_spaces(const uint8_t *s, size_t n, int *out_len) {
  char *o = e8q_malloc(n + 1, "tokenizer piece");
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (i + 2 < n && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
      o[k++] = ' ';
      i += 2;
    } else {
      o[k++] = (char)s[i];
    }
  }
  o[k] = 0;
  *out_len = (int)k;
  return o;
}

static void load_spm(e8q_tokenizer *t, const uint8_t *data, size_t size) {
  pb top = {data, data + size, data, t->path};
  uint32_t f;
  int wt;
  pb sub;
  uint64_t v;
  /* count pieces first */
  int n = 0;
  while (pb_next(&top, &f, &wt, &sub, &v))
    if (f == 1) {
      E8Q_CHECK(wt == 2, "%s: field 1 (pieces) is not a message", t->path);
      n++;
    }
  E8Q_CHECK(n > 0, "%s: no pieces in the SentencePiece model; not a tokenizer.model file", t->path);
  t->n = n;
  t->pieces = e8q_calloc((size_t)n, sizeof(char *), "tokenizer pieces");
  t->piece_len = e8q_calloc((size_t)n, sizeof(int), "tokenizer piece lengths");
  t->scores = e8q_calloc((size_t)n, sizeof(float), "tokenizer scores");
  t->types = e8q_calloc((size_t)n, sizeof(int), "tokenizer types");
  t->unk_id = 0;
  t->bos_id = 1;
  t->eos_id = 2;
  t->add_dummy_prefix = 1;
  int model_type = 1, byte_fallback = 0;
  top.p = data;
  int id = 0;
  while (pb_next(&top, &f, &wt, &sub, &v)) {
    if (f == 1) {
      uint32_t g;
      int wt2;
      pb s2;
      uint64_t v2;
      int have_piece = 0;
      t->types[id] = SP_NORMAL;
      while (pb_next(&sub, &g, &wt2, &s2, &v2)) {
        if (g == 1 && wt2 == 2) {
          free(t->pieces[id]);
          t->pieces[id] = sp_to_spaces(s2.p, (size_t)(s2.end - s2.p), &t->piece_len[id]);
          have_piece = 1;
        } else if (g == 2 && wt2 == 5) {
          uint32_t u = (uint32_t)v2;
          memcpy(&t->scores[id], &u, 4);
        } else if (g == 3 && wt2 == 0) {
          E8Q_CHECK(v2 >= 1 && v2 <= 6, "%s: piece %d has unknown type %llu", t->path, id, (unsigned long long)v2);
          t->types[id] = (int)v2;
        }
      }
      E8Q_CHECK(have_piece, "%s: piece %d has no text", t->path, id);
      id++;
    } else if (f == 2 && wt == 2) { /* TrainerSpec */
      uint32_t g;
      int wt2;
      pb s2;
      uint64_t v2;
      while (pb_next(&sub, &g, &wt2, &s2, &v2)) {
        if (wt2 != 0) continue;
        if (g == 3) model_type = (int)v2;
        else if (g == 35) byte_fallback = (int)v2;
        else if (g == 40) t->unk_id = (int)(int32_t)v2;
        else if (g == 41) t->bos_id = (int)(int32_t)v2;
        else if (g == 42) t->eos_id = (int)(int32_t)v2;
      }
    } else if (f == 3 && wt == 2) { /* NormalizerSpec */
      uint32_t g;
      int wt2;
      pb s2;
      uint64_t v2;
      while (pb_next(&sub, &g, &wt2, &s2, &v2)) {
        if (g == 1 && wt2 == 2) {
          size_t len = (size_t)(s2.end - s2.p);
          if (!(len == 8 && memcmp(s2.p, "identity", 8) == 0))
            e8q_warn("%s: normalizer \"%.*s\" is not applied (e8q applies the identity normalizer)", t->path,
                     (int)(len > 64 ? 64 : len), (const char *)s2.p);
        } else if (g == 3 && wt2 == 0) {
          t->add_dummy_prefix = v2 != 0;
        }
      }
    }
  }
  E8Q_CHECK(model_type == 2,
            "%s: SentencePiece model_type %d is not BPE (2); e8q implements Llama's BPE tokenizer only", t->path,
            model_type);
  (void)byte_fallback; /* byte pieces are used whenever present, as llama2.c does */
  if (t->bos_id < 0) t->bos_id = 1;
  if (t->eos_id < 0) t->eos_id = 2;
}

/* ---------------------------------------------------------------- llama2.c tokenizer.bin */

/* 1 when data is exactly a llama2.c tokenizer: int32 max_token_length, then per token float score,
 * int32 len (0 <= len <= max_token_length), bytes; to the end of the file */
static int bin_count(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  int32_t maxlen;
  memcpy(&maxlen, data, 4);
  if (maxlen <= 0 || maxlen > 4096) return 0;
  size_t off = 4;
  int n = 0;
  while (off < size) {
    if (size - off < 8) return 0;
    int32_t len;
    memcpy(&len, data + off + 4, 4);
    if (len < 0 || len > maxlen || (size_t)len > size - off - 8) return 0;
    off += 8 + (size_t)len;
    n++;
  }
  return n;
}

static void load_bin(e8q_tokenizer *t, const uint8_t *data, int n) {
  t->n = n;
  t->pieces = e8q_calloc((size_t)n, sizeof(char *), "tokenizer pieces");
  t->piece_len = e8q_calloc((size_t)n, sizeof(int), "tokenizer piece lengths");
  t->scores = e8q_calloc((size_t)n, sizeof(float), "tokenizer scores");
  t->types = e8q_calloc((size_t)n, sizeof(int), "tokenizer types");
  size_t off = 4;
  for (int id = 0; id < n; id++) {
    int32_t len;
    memcpy(&t->scores[id], data + off, 4);
    memcpy(&len, data + off + 4, 4);
    t->pieces[id] = e8q_malloc((size_t)len + 1, "tokenizer piece");
    memcpy(t->pieces[id], data + off + 8, (size_t)len);
    t->pieces[id][len] = 0;
    t->piece_len[id] = len;
    off += 8 + (size_t)len;
    /* llama2.c conventions: 0 <unk>, 1 BOS, 2 EOS, <0xNN> byte pieces */
    if (id == 0) t->types[id] = SP_UNKNOWN;
    else if (id <= 2) t->types[id] = SP_CONTROL;
    else if (byte_piece_value(t->pieces[id], len) >= 0) t->types[id] = SP_BYTE;
    else t->types[id] = SP_NORMAL;
  }
  t->unk_id = 0;
  t->bos_id = 1;
  t->eos_id = 2;
  t->add_dummy_prefix = 1;
}

/* ---------------------------------------------------------------- load / free */

/* the whole file; its size is checked first, so that a file passed by mistake (a checkpoint) is
 * refused before it is read */
static uint8_t *read_all(const char *path, size_t *size) {
  static const char what[] = "tokenizer file (tokenizer.model or llama2.c tokenizer.bin)";
  struct stat sb;
  if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) /* otherwise e8q_file_read says why */
    E8Q_CHECK(sb.st_size > 0 && sb.st_size < (256L << 20), "%s: %lld bytes, not a %s", path, (long long)sb.st_size,
              what);
  uint8_t *buf = (uint8_t *)e8q_file_read(path, size, what);
  E8Q_CHECK(*size > 0, "%s: 0 bytes, not a %s", path, what);
  return buf;
}

/* ---------------------------------------------------------------- GGUF metadata */

/* tokenizer.ggml.model "gpt2": byte-level BPE */
static e8q_bpe *load_gguf_bpe(const e8q_gguf *g, const char *path) {
  int et;
  size_t n = e8q_gguf_arr_len(g, "tokenizer.ggml.tokens", &et);
  E8Q_CHECK(n > 0 && et == E8Q_GGUF_STRING, "%s: tokenizer.ggml.tokens is missing or not an array of strings", path);
  E8Q_CHECK(n < (1u << 26), "%s: tokenizer.ggml.tokens has %zu tokens, too many", path, n);
  size_t nt = e8q_gguf_arr_len(g, "tokenizer.ggml.token_type", NULL);
  E8Q_CHECK(nt == 0 || nt == n, "%s: tokenizer.ggml.token_type has %zu entries for %zu tokens", path, nt, n);
  e8q_bpe *b = e8q_bpe_new(path, (int)n);
  for (size_t i = 0; i < n; i++) {
    size_t len;
    const char *s = e8q_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &len);
    int64_t ty = nt ? e8q_gguf_arr_int(g, "tokenizer.ggml.token_type", i) : E8Q_BPE_NORMAL;
    E8Q_CHECK(ty >= 1 && ty <= 6, "%s: tokenizer.ggml.token_type[%zu] is %lld, not a token type (1..6)", path, i,
              (long long)ty);
    e8q_bpe_set_token(b, (int)i, s, len, (int)ty);
  }
  size_t nm = e8q_gguf_arr_len(g, "tokenizer.ggml.merges", &et);
  E8Q_CHECK(nm == 0 || et == E8Q_GGUF_STRING, "%s: tokenizer.ggml.merges is not an array of strings", path);
  E8Q_CHECK(nm < (1u << 30), "%s: tokenizer.ggml.merges has %zu entries, too many", path, nm);
  for (size_t i = 0; i < nm; i++) {
    size_t len;
    const char *s = e8q_gguf_arr_str(g, "tokenizer.ggml.merges", i, &len);
    e8q_bpe_add_merge(b, s, len, "tokenizer.ggml.merges", (int)i);
  }
  const char *pre = e8q_gguf_get_str(g, "tokenizer.ggml.pre", NULL);
  int64_t bos = e8q_gguf_get_int(g, "tokenizer.ggml.bos_token_id", -1, 0);
  int64_t eos = e8q_gguf_get_int(g, "tokenizer.ggml.eos_token_id", -1, 0);
  int64_t add_bos = e8q_gguf_get_int(g, "tokenizer.ggml.add_bos_token", 0, 0);
  E8Q_CHECK(bos >= -1 && bos < (int64_t)n, "%s: tokenizer.ggml.bos_token_id %lld outside the vocabulary of %zu", path,
            (long long)bos, n);
  E8Q_CHECK(eos >= -1 && eos < (int64_t)n, "%s: tokenizer.ggml.eos_token_id %lld outside the vocabulary of %zu", path,
            (long long)eos, n);
  /* llama.cpp (and Llama 3's tokenizer.json) take a whole piece that is a token as that token */
  int ignore_merges = pre && (!strcmp(pre, "llama3") || !strcmp(pre, "llama-bpe"));
  e8q_bpe_finish(b, pre, "tokenizer.ggml.pre", (int)bos, (int)eos, add_bos != 0, ignore_merges);
  return b;
}

/* tokenizer.ggml.model "llama": the SentencePiece tables */
static void load_gguf_spm(e8q_tokenizer *t, const e8q_gguf *g) {
  const char *path = t->path;
  int et;
  size_t n = e8q_gguf_arr_len(g, "tokenizer.ggml.tokens", &et);
  E8Q_CHECK(n > 0 && et == E8Q_GGUF_STRING, "%s: tokenizer.ggml.tokens is missing or not an array of strings", path);
  E8Q_CHECK(n < (1u << 26), "%s: tokenizer.ggml.tokens has %zu tokens, too many", path, n);
  size_t ns = e8q_gguf_arr_len(g, "tokenizer.ggml.scores", NULL);
  size_t nt = e8q_gguf_arr_len(g, "tokenizer.ggml.token_type", NULL);
  E8Q_CHECK(ns == n, "%s: tokenizer.ggml.scores has %zu entries for %zu tokens", path, ns, n);
  E8Q_CHECK(nt == 0 || nt == n, "%s: tokenizer.ggml.token_type has %zu entries for %zu tokens", path, nt, n);
  t->n = (int)n;
  t->pieces = e8q_calloc(n, sizeof(char *), "tokenizer pieces");
  t->piece_len = e8q_calloc(n, sizeof(int), "tokenizer piece lengths");
  t->scores = e8q_calloc(n, sizeof(float), "tokenizer scores");
  t->types = e8q_calloc(n, sizeof(int), "tokenizer types");
  for (size_t i = 0; i < n; i++) {
    size_t len;
    const char *s = e8q_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &len);
    t->pieces[i] = sp_to_spaces((const uint8_t *)s, len, &t->piece_len[i]);
    t->scores[i] = (float)e8q_gguf_arr_float(g, "tokenizer.ggml.scores", i);
    int64_t ty = nt ? e8q_gguf_arr_int(g, "tokenizer.ggml.token_type", i) : SP_NORMAL;
    E8Q_CHECK(ty >= 1 && ty <= 6, "%s: tokenizer.ggml.token_type[%zu] is %lld, not a token type (1..6)", path, i,
              (long long)ty);
    t->types[i] = (int)ty;
  }
  t->unk_id = (int)e8q_gguf_get_int(g, "tokenizer.ggml.unknown_token_id", 0, 0);
  t->bos_id = (int)e8q_gguf_get_int(g, "tokenizer.ggml.bos_token_id", 1, 0);
  t->eos_id = (int)e8q_gguf_get_int(g, "tokenizer.ggml.eos_token_id", 2, 0);
  t->add_dummy_prefix = e8q_gguf_get_int(g, "tokenizer.ggml.add_space_prefix", 1, 0) != 0;
  t->add_bos = e8q_gguf_get_int(g, "tokenizer.ggml.add_bos_token", 1, 0) != 0;
  E8Q_CHECK(t->unk_id >= 0 && t->unk_id < t->n, "%s: tokenizer.ggml.unknown_token_id %d outside the vocabulary of %d",
            path, t->unk_id, t->n);
}

static void load_gguf(e8q_tokenizer *t) {
  e8q_gguf *g = e8q_gguf_open(t->path);
  const char *model = e8q_gguf_get_str(g, "tokenizer.ggml.model", NULL);
  E8Q_CHECK(model, "%s: no tokenizer.ggml.model in the GGUF metadata; the file carries no tokenizer", t->path);
  if (!strcmp(model, "gpt2")) {
    t->bpe = load_gguf_bpe(g, t->path);
  } else if (!strcmp(model, "llama")) {
    load_gguf_spm(t, g);
  } else {
    E8Q_FATAL("%s: tokenizer.ggml.model \"%s\" is not supported (\"llama\": SentencePiece, \"gpt2\": byte-level BPE)",
              t->path, model);
  }
  e8q_gguf_close(g);
}

/* ---------------------------------------------------------------- load / free */

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* a BPE tokenizer fills the shared fields the dispatching functions use */
static void adopt_bpe(e8q_tokenizer *t) {
  t->n = e8q_bpe_vocab_size(t->bpe);
  t->bos_id = e8q_bpe_bos_id(t->bpe);
  t->eos_id = e8q_bpe_eos_id(t->bpe);
  t->add_bos = e8q_bpe_add_bos(t->bpe);
}

e8q_tokenizer *e8q_tokenizer_load(const char *path) {
  e8q_tokenizer *t = e8q_calloc(1, sizeof(*t), "tokenizer");
  t->path = strdup(path);
  t->add_bos = 1;
  if (e8q_gguf_is_file(path)) {
    load_gguf(t);
    if (t->bpe) {
      adopt_bpe(t);
      return t;
    }
    tok_index(t);
    return t;
  }
  if (ends_with(path, ".json")) {
    t->bpe = e8q_bpe_load_json(path);
    adopt_bpe(t);
    return t;
  }
  size_t size;
  uint8_t *data = read_all(path, &size);
  size_t lead = 0;
  while (lead < size && (data[lead] == ' ' || data[lead] == '\n' || data[lead] == '\r' || data[lead] == '\t')) lead++;
  if (lead < size && data[lead] == '{') { /* a tokenizer.json under another name */
    t->bpe = e8q_bpe_parse_json(path, (const char *)data, size);
    free(data);
    adopt_bpe(t);
    return t;
  }
  int nb = bin_count(data, size);
  size_t pl = strlen(path);
  if (pl > 4 && strcmp(path + pl - 4, ".bin") == 0)
    E8Q_CHECK(nb > 0,
              "%s: not a valid llama2.c tokenizer.bin (int32 max_token_length, then per token a float score, an "
              "int32 length <= max_token_length and the bytes, up to the end of the file); the file is truncated "
              "or corrupt, or pass a SentencePiece tokenizer.model",
              path);
  if (nb > 0) load_bin(t, data, nb);
  else load_spm(t, data, size);
  free(data);
  tok_index(t);
  return t;
}

void e8q_tokenizer_free(e8q_tokenizer *t) {
  if (!t) return;
  e8q_bpe_free(t->bpe);
  if (t->pieces)
    for (int i = 0; i < t->n; i++) free(t->pieces[i]);
  free(t->pieces);
  free(t->piece_len);
  free(t->scores);
  free(t->types);
  free(t->slots);
  free(t->path);
  free(t);
}

int e8q_tokenizer_vocab_size(const e8q_tokenizer *t) { return t->n; }
int e8q_tokenizer_bos_id(const e8q_tokenizer *t) { return t->bos_id; }
int e8q_tokenizer_eos_id(const e8q_tokenizer *t) { return t->eos_id; }
int e8q_tokenizer_add_bos(const e8q_tokenizer *t) { return t->add_bos; }
int e8q_tokenizer_is_bpe(const e8q_tokenizer *t) { return t->bpe != NULL; }

const char *e8q_tokenizer_piece(const e8q_tokenizer *t, int id) {
  E8Q_CHECK(id >= 0 && id < t->n, "%s: token id %d outside the vocabulary of %d", t->path, id, t->n);
  if (t->bpe) return e8q_bpe_text(t->bpe, id, NULL);
  return t->pieces[id];
}

void e8q_tokenizer_write_json(const e8q_tokenizer *t, const char *path) {
  E8Q_CHECK(t->bpe,
            "%s: only byte-level BPE tokenizers are written as tokenizer.json (this one is SentencePiece or "
            "llama2.c); cannot write %s",
            t->path, path);
  e8q_bpe_write_json(t->bpe, path);
}

void e8q_tokenizer_check_vocab(const e8q_tokenizer *t, int model_vocab_size, const char *model) {
  E8Q_CHECK(t->n == model_vocab_size,
            "tokenizer %s has %d pieces but model %s has vocab_size %d: they do not belong together; use the "
            "model's own tokenizer (--tokenizer FILE where the command takes one)",
            t->path, t->n, model, model_vocab_size);
}

static int is_file(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

char *e8q_tokenizer_find(const char *model_dir, int vocab_size) {
  struct stat sb;
  if (stat(model_dir, &sb) != 0) return NULL;
  if (S_ISREG(sb.st_mode) && e8q_gguf_is_file(model_dir)) { /* a GGUF carries its own tokenizer */
    char *self = strdup(model_dir);
    E8Q_CHECK(self, "out of memory");
    return self;
  }
  char *dir = strdup(model_dir);
  E8Q_CHECK(dir, "out of memory");
  if (!S_ISDIR(sb.st_mode)) { /* a model file: look beside it */
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else strcpy(dir, ".");
  }
  char tok_model[32] = "tokenizer.model", tok_bin[32] = "tokenizer.bin"; /* tok<vocab>.*: see below */
  if (vocab_size > 0) {
    snprintf(tok_model, sizeof tok_model, "tok%d.model", vocab_size);
    snprintf(tok_bin, sizeof tok_bin, "tok%d.bin", vocab_size);
  }
  const char *const names[] = {"tokenizer.model", "tokenizer.bin", "tokenizer.json", tok_model, tok_bin};
  size_t cap = strlen(dir) + 300;
  char *p = e8q_malloc(cap, "tokenizer path");
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(p, cap, "%s/%s", dir, names[i]);
    if (is_file(p)) {
      free(dir);
      return p;
    }
  }
  /* llama2.c directories: tok<N>.model, else tok<N>.bin (the first name in byte order) */
  static const char *const exts[] = {".model", ".bin"};
  for (size_t e = 0; e < 2; e++) {
    char *found = NULL;
    DIR *d = opendir(dir);
    if (d) {
      struct dirent *de;
      size_t el = strlen(exts[e]);
      while ((de = readdir(d))) {
        size_t L = strlen(de->d_name);
        if (L > 3 + el && strncmp(de->d_name, "tok", 3) == 0 && strcmp(de->d_name + L - el, exts[e]) == 0 &&
            (!found || strcmp(de->d_name, found) < 0)) {
          free(found);
          found = strdup(de->d_name);
        }
      }
      closedir(d);
    }
    if (found) {
      snprintf(p, cap, "%s/%s", dir, found);
      free(found);
      free(dir);
      return p;
    }
  }
  free(p);
  free(dir);
  return NULL;
}

/* ---------------------------------------------------------------- encoding */

/* the text to tokenize: " " + text (dummy prefix) when applicable; malloc'd */
static char *enc_prepare(const e8q_tokenizer *t, const char *text, size_t *n) {
  size_t len = strlen(text);
  int pre = t->add_dummy_prefix && len > 0;
  char *buf = e8q_malloc(len + 2, "tokenizer buffer");
  if (pre) buf[0] = ' ';
  memcpy(buf + pre, text, len + 1);
  *n = len + (size_t)pre;
  return buf;
}

/* length of the UTF-8 character group at s[i] (llama2.c: lead byte + up to 3 continuation bytes) */
static size_t enc_char_len(const char *s, size_t i, size_t n) {
  size_t k = 1;
  while (i + k < n && k < 4 && ((uint8_t)s[i + k] & 0xC0) == 0x80) k++;
  return k;
}

static int *enc_finish(const e8q_tokenizer *t, const int *body, int nb, int bos, int eos, int *count) {
  int *ids = e8q_malloc(((size_t)nb + 2) * sizeof(int), "token ids");
  int k = 0;
  if (bos) ids[k++] = t->bos_id;
  memcpy(ids + k, body, (size_t)nb * sizeof(int));
  k += nb;
  if (eos) ids[k++] = t->eos_id;
  *count = k;
  return ids;
}

int e8q_tokenizer_encode_ref(const e8q_tokenizer *t, const char *text, int bos, int eos, int **out) {
  if (t->bpe) return e8q_bpe_encode_ref(t->bpe, text, bos, eos, out);
  size_t n;
  char *buf = enc_prepare(t, text, &n);
  /* symbols: start offset, byte length, id; byte-fallback symbols have len 0 (never merge) */
  int *start = e8q_malloc((n + 1) * sizeof(int), "symbols"), *len = e8q_malloc((n + 1) * sizeof(int), "symbols"),
      *id = e8q_malloc((n + 1) * sizeof(int), "symbols");
  int ns = 0;
  for (size_t i = 0; i < n;) {
    size_t k = enc_char_len(buf, i, n);
    int v = tok_lookup(t, buf + i, (int)k);
    if (v >= 0) {
      start[ns] = (int)i, len[ns] = (int)k, id[ns++] = v;
    } else {
      for (size_t j = 0; j < k; j++) {
        int b = t->byte_id[(uint8_t)buf[i + j]];
        start[ns] = (int)(i + j), len[ns] = 0, id[ns++] = b >= 0 ? b : t->unk_id;
      }
    }
    i += k;
  }
  for (;;) { /* the best pair: highest score, leftmost */
    float best = 0;
    int best_i = -1, best_id = -1;
    for (int i = 0; i + 1 < ns; i++) {
      if (len[i] == 0 || len[i + 1] == 0) continue;
      int v = tok_lookup(t, buf + start[i], len[i] + len[i + 1]);
      if (v >= 0 && (best_i < 0 || t->scores[v] > best)) best = t->scores[v], best_i = i, best_id = v;
    }
    if (best_i < 0) break;
    id[best_i] = best_id;
    len[best_i] += len[best_i + 1];
    memmove(start + best_i + 1, start + best_i + 2, (size_t)(ns - best_i - 2) * sizeof(int));
    memmove(len + best_i + 1, len + best_i + 2, (size_t)(ns - best_i - 2) * sizeof(int));
    memmove(id + best_i + 1, id + best_i + 2, (size_t)(ns - best_i - 2) * sizeof(int));
    ns--;
  }
  int count;
  *out = enc_finish(t, id, ns, bos, eos, &count);
  free(start);
  free(len);
  free(id);
  free(buf);
  return count;
}

/* heap entry: a candidate merge of symbol l with its right neighbour r, valid while both still
 * have the lengths they had when it was pushed (total len) */
typedef struct {
  float score;
  int l, r, len, id;
} cand;

static int cand_better(const cand *a, const cand *b) {
  return a->score > b->score || (a->score == b->score && a->l < b->l);
}

E8Q_HEAP_DEFINE(heap, cand, cand_better, 1024, "out of memory in the tokenizer")

typedef struct {
  int start, len, id, prev, next; /* len 0: byte-fallback symbol or merged away */
} sym;

static void try_pair(const e8q_tokenizer *t, const char *buf, const sym *s, int l, heap *q) {
  int r = s[l].next;
  if (r < 0 || s[l].len == 0 || s[r].len == 0) return;
  int v = tok_lookup(t, buf + s[l].start, s[l].len + s[r].len);
  if (v >= 0) heap_push(q, (cand){t->scores[v], l, r, s[l].len + s[r].len, v});
}

typedef struct {
  int *v;
  size_t n, cap;
} ivec;

static void ivec_push(ivec *a, int x) {
  if (a->n == a->cap) {
    a->cap = a->cap ? 2 * a->cap : 1024;
    a->v = realloc(a->v, a->cap * sizeof(int));
    E8Q_CHECK(a->v, "out of memory in the tokenizer");
  }
  a->v[a->n++] = x;
}

typedef struct {
  sym *s;    /* [cap] */
  size_t cap;
  heap q;
} bpe_scratch;

/* BPE of p[0..n) (one span, merged independently of the rest), ids appended to out */
static void bpe_span(const e8q_tokenizer *t, const char *p, size_t n, bpe_scratch *sc, ivec *out) {
  if (sc->cap < n + 1) {
    free(sc->s);
    sc->cap = 2 * n + 16;
    sc->s = e8q_malloc(sc->cap * sizeof(sym), "tokenizer symbols");
  }
  sym *s = sc->s;
  heap *q = &sc->q;
  q->n = 0;
  int ns = 0;
  for (size_t i = 0; i < n;) {
    size_t k = enc_char_len(p, i, n);
    int v = tok_lookup(t, p + i, (int)k);
    if (v >= 0) {
      s[ns] = (sym){(int)i, (int)k, v, ns - 1, ns + 1};
      ns++;
    } else {
      for (size_t j = 0; j < k; j++) {
        int b = t->byte_id[(uint8_t)p[i + j]];
        s[ns] = (sym){(int)(i + j), 0, b >= 0 ? b : t->unk_id, ns - 1, ns + 1};
        ns++;
      }
    }
    i += k;
  }
  if (ns == 0) return;
  s[ns - 1].next = -1;
  for (int i = 0; i + 1 < ns; i++) try_pair(t, p, s, i, q);
  while (q->n > 0) {
    cand c = heap_pop(q);
    /* stale when either side was merged away or changed since the push */
    if (s[c.l].len == 0 || s[c.r].len == 0 || s[c.l].next != c.r || s[c.l].len + s[c.r].len != c.len) continue;
    s[c.l].len = c.len;
    s[c.l].id = c.id;
    s[c.r].len = 0;
    s[c.r].id = -1;
    s[c.l].next = s[c.r].next;
    if (s[c.r].next >= 0) s[s[c.r].next].prev = c.l;
    if (s[c.l].prev >= 0) try_pair(t, p, s, s[c.l].prev, q);
    try_pair(t, p, s, c.l, q);
  }
  for (int i = 0; i >= 0; i = s[i].next) ivec_push(out, s[i].id);
}

/* word cache of one encode call: span bytes -> its ids (a range of the output) */
typedef struct {
  uint32_t hash;
  int start, len;      /* the span in the text buffer; len 0 = empty slot */
  size_t at, count;    /* its ids in the output vector */
} wslot;

int e8q_tokenizer_encode(const e8q_tokenizer *t, const char *text, int bos, int eos, int **out) {
  if (t->bpe) return e8q_bpe_encode(t->bpe, text, bos, eos, out);
  size_t n;
  char *buf = enc_prepare(t, text, &n);
  E8Q_CHECK(n < (size_t)1 << 30, "%s: text of %zu bytes is too long to encode at once; split it", t->path, n);
  bpe_scratch sc = {0};
  ivec ids = {0};
  if (bos) ivec_push(&ids, t->bos_id);
  if (!t->split_ok) {
    bpe_span(t, buf, n, &sc, &ids);
  } else {
    /* No piece has a space right after another character, so no merge crosses a position where a
     * space follows a non-space: the spans between such positions are merged independently, and a
     * span seen before gets the same ids (cached). */
    size_t cap = 1024, used = 0;
    wslot *tab = e8q_calloc(cap, sizeof(wslot), "tokenizer word cache");
    for (size_t i = 0; i < n;) {
      size_t e = i + 1;
      while (e < n && !(buf[e] == ' ' && buf[e - 1] != ' ')) e++;
      int len = (int)(e - i);
      uint32_t h = hash_bytes(buf + i, len);
      size_t k = h & (cap - 1);
      while (tab[k].len && !(tab[k].hash == h && tab[k].len == len && memcmp(buf + tab[k].start, buf + i, (size_t)len) == 0))
        k = (k + 1) & (cap - 1);
      if (tab[k].len) { /* seen: copy its ids */
        for (size_t j = 0; j < tab[k].count; j++) ivec_push(&ids, ids.v[tab[k].at + j]);
      } else {
        size_t at = ids.n;
        bpe_span(t, buf + i, (size_t)len, &sc, &ids);
        tab[k] = (wslot){h, (int)i, len, at, ids.n - at};
        if (++used * 2 > cap) { /* grow and rehash */
          size_t ncap = cap * 2;
          wslot *nt = e8q_calloc(ncap, sizeof(wslot), "tokenizer word cache");
          for (size_t j = 0; j < cap; j++)
            if (tab[j].len) {
              size_t m = tab[j].hash & (ncap - 1);
              while (nt[m].len) m = (m + 1) & (ncap - 1);
              nt[m] = tab[j];
            }
          free(tab);
          tab = nt;
          cap = ncap;
        }
      }
      i = e;
    }
    free(tab);
  }
  if (eos) ivec_push(&ids, t->eos_id);
  free(sc.s);
  free(sc.q.h);
  free(buf);
  if (!ids.v) ivec_push(&ids, 0), ids.n = 0; /* a valid pointer even for no ids */
  *out = ids.v;
  return (int)ids.n;
}

/* ---------------------------------------------------------------- decoding */

const char *e8q_tokenizer_decode(const e8q_tokenizer *t, int prev, int id) {
  E8Q_CHECK(id >= 0 && id < t->n, "%s: cannot decode token id %d: outside the vocabulary of %d", t->path, id, t->n);
  if (t->bpe) return e8q_bpe_text(t->bpe, id, NULL);
  if (t->types[id] == SP_CONTROL) return "";
  if (t->types[id] == SP_BYTE) {
    return t->byte_str[byte_piece_value(t->pieces[id], t->piece_len[id]) & 0xff]; /* checked at load */
  }
  const char *p = t->pieces[id];
  if (prev == t->bos_id && p[0] == ' ') p++;
  return p;
}

/* ---------------------------------------------------------------- writing tokenizer.model */

typedef struct {
  uint8_t *b;
  size_t n, cap;
} obuf;

static void ob_put(obuf *o, const void *p, size_t n) {
  if (o->n + n > o->cap) {
    while (o->n + n > o->cap) o->cap = o->cap ? 2 * o->cap : 4096;
    o->b = realloc(o->b, o->cap);
    E8Q_CHECK(o->b, "out of memory");
  }
  memcpy(o->b + o->n, p, n);
  o->n += n;
}
static void ob_varint(obuf *o, uint64_t v) {
  uint8_t tmp[10];
  int k = 0;
  do {
    tmp[k] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) tmp[k] |= 0x80;
    k++;
  } while (v);
  ob_put(o, tmp, (size_t)k);
}
static void ob_key(obuf *o, uint32_t field, int wt) { ob_varint(o, (uint64_t)field << 3 | (uint64_t)wt); }
static void ob_bytes(obuf *o, uint32_t field, const void *p, size_t n) {
  ob_key(o, field, 2);
  ob_varint(o, n);
  ob_put(o, p, n);
}

void e8q_tokenizer_write_spm(const char *path, int n, const char **pieces, const float *scores, const int *types) {
  obuf o = {0}, m = {0};
  int any_byte = 0;
  for (int i = 0; i < n; i++) {
    /* the piece in SentencePiece form: ' ' -> U+2581 */
    obuf p = {0};
    for (const char *c = pieces[i]; *c; c++) {
      if (*c == ' ') ob_put(&p, "\xe2\x96\x81", 3);
      else ob_put(&p, c, 1);
    }
    m.n = 0;
    ob_bytes(&m, 1, p.b ? (const void *)p.b : (const void *)"", p.n);
    ob_key(&m, 2, 5);
    uint32_t u;
    memcpy(&u, &scores[i], 4);
    uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    ob_put(&m, le, 4);
    int ty = types ? types[i] : SP_NORMAL;
    E8Q_CHECK(ty >= 1 && ty <= 6, "%s: piece %d has invalid type %d", path, i, ty);
    if (ty != SP_NORMAL) {
      ob_key(&m, 3, 0);
      ob_varint(&m, (uint64_t)ty);
    }
    if (ty == SP_BYTE) any_byte = 1;
    ob_bytes(&o, 1, m.b, m.n);
    free(p.b);
  }
  /* TrainerSpec: model_type BPE, vocab_size, byte_fallback, unk/bos/eos ids */
  m.n = 0;
  ob_key(&m, 3, 0), ob_varint(&m, 2);
  ob_key(&m, 4, 0), ob_varint(&m, (uint64_t)n);
  ob_key(&m, 35, 0), ob_varint(&m, (uint64_t)any_byte);
  ob_key(&m, 40, 0), ob_varint(&m, 0);
  ob_key(&m, 41, 0), ob_varint(&m, 1);
  ob_key(&m, 42, 0), ob_varint(&m, 2);
  ob_bytes(&o, 2, m.b, m.n);
  /* NormalizerSpec: identity, dummy prefix on, no whitespace collapsing (Llama's settings) */
  m.n = 0;
  ob_bytes(&m, 1, "identity", 8);
  ob_key(&m, 3, 0), ob_varint(&m, 1);
  ob_key(&m, 4, 0), ob_varint(&m, 0);
  ob_key(&m, 5, 0), ob_varint(&m, 1);
  ob_bytes(&o, 3, m.b, m.n);
  free(m.b);

  e8q_atomic_write_file(path, "tokenizer", o.b, o.n, NULL);
  free(o.b);
}

/* ---------------------------------------------------------------- files */

size_t e8q_tokenizer_encode_file(const e8q_tokenizer *t, const char *path, int bos, int **ids) {
  if (e8q_ids_is_file(path)) {
    size_t n = e8q_ids_read(path, t->n, ids);
    E8Q_CHECK(!bos || t->bos_id >= 0, "%s: BOS requested for %s but the tokenizer has no BOS token", t->path, path);
    if (bos && (n == 0 || (*ids)[0] != t->bos_id)) {
      int *o = e8q_malloc((n + 1) * sizeof(int), "token ids");
      o[0] = t->bos_id;
      memcpy(o + 1, *ids, n * sizeof(int));
      free(*ids);
      *ids = o;
      n++;
    }
    return n;
  }
  char *text = e8q_text_read(path, NULL);
  int n = e8q_tokenizer_encode(t, text, bos, 0, ids);
  free(text);
  return (size_t)n;
}
