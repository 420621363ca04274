/* io/bpe.c: byte-level BPE (GPT-2 style) tokenizers: the vocabulary and merge tables, the PCRE2
 * pre-tokenizers, the merge loops (fast and _ref), the tokenizer.json reader and writer. The
 * pipeline and its choices are described in io/bpe.h.
 *
 * Internally a token has its stored form (the string of tokenizer.json's vocab or GGUF's
 * tokenizer.ggml.tokens) and its text (the raw bytes: the form with the byte-level alphabet
 * inverted for byte-level tokens, the form itself for added tokens). Encoding works on raw bytes
 * and ids only: the initial symbol of a byte is the token of that byte's alphabet character, and
 * merges are a table (left id, right id) -> (rank, merged id). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "io/bpe.h"

#include <limits.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/error.h"
#include "common/heap.h"
#include "common/log.h"
#include "io/atomic.h"
#include "io/text.h"

/* ---------------------------------------------------------------- pre-tokenizers */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                          \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* llama.cpp's spelling of the same pattern without the inline case-insensitive group */
#define RE_LLAMA3_CASED                                                                                   \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| " \
  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                       \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_DIGIT "\\p{N}"

typedef struct {
  const char *name;   /* canonical name */
  const char *alias;  /* another accepted name, or NULL */
  int n_re;           /* regex stages, applied in order (each to the pieces of the previous) */
  const char *re[2];
} pre_def;

static const pre_def PRE_DEFS[] = {
    {"gpt2", NULL, 1, {RE_GPT2, NULL}},
    {"smollm", NULL, 2, {RE_DIGIT, RE_GPT2}},
    {"llama3", "llama-bpe", 1, {RE_LLAMA3, NULL}},
    {"qwen2", NULL, 1, {RE_QWEN2, NULL}},
};
#define N_PRE ((int)(sizeof PRE_DEFS / sizeof PRE_DEFS[0]))

static int pre_find(const char *name) {
  for (int i = 0; i < N_PRE; i++)
    if (!strcmp(name, PRE_DEFS[i].name) || (PRE_DEFS[i].alias && !strcmp(name, PRE_DEFS[i].alias))) return i;
  return -1;
}

int e8q_bpe_pre_known(const char *name) { return name && pre_find(name) >= 0; }

/* ---------------------------------------------------------------- state */

typedef struct {
  uint64_t key;      /* (left id << 32) | right id; UINT64_MAX = empty */
  int32_t rank;      /* merge order */
  int32_t id;        /* the merged token */
} mslot;

struct e8q_bpe {
  char *path;                 /* owned copy of the file name (messages) */
  int n;                      /* vocabulary size */
  char **form;                /* [n] stored form, NUL-terminated (byte-level alphabet or raw) */
  int *form_len;              /* [n] bytes */
  char **text;                /* [n] raw bytes, NUL-terminated (decode result) */
  int *text_len;              /* [n] bytes */
  uint8_t *type;              /* [n] E8Q_BPE_* */
  uint8_t *byte_level;        /* [n] 1 when the form is all byte-level alphabet characters */
  int byte_id[256];           /* token of each byte's alphabet character, -1 if none */
  uint32_t cp_of_byte[256];   /* GPT-2 byte -> code point */
  int16_t byte_of_cp[324];    /* code point -> byte, -1 where not in the alphabet */
  /* form -> id (first id wins), built after all tokens are set */
  int *fslots;                /* [fcap] id or -1 */
  uint32_t fcap;              /* power of two, >= 2n */
  /* text -> id over byte-level tokens (ignore_merges) */
  int *tslots;                /* [tcap] id or -1 */
  uint32_t tcap;              /* power of two, >= 2n */
  int max_text_len;           /* bytes, over tokens in tslots */
  /* merges: rank order, and the pair table */
  int n_merges;
  int *merge_l, *merge_r;     /* [n_merges] ids, rank order (cap merge_cap) */
  int merge_cap;
  mslot *mslots;              /* [mcap] */
  uint32_t mcap;              /* power of two, >= 2 n_merges */
  /* specials (unknown, control, user defined) matched whole: ids grouped by first byte, longest first */
  int *special;               /* [n_special] */
  int n_special;
  int sp_start[257];          /* special[sp_start[c] .. sp_start[c+1]) begin with byte c */
  /* pre-tokenizer */
  int pre;                    /* index into PRE_DEFS, -1 until finished */
  pcre2_code *re[2];          /* [PRE_DEFS[pre].n_re] compiled, JIT where available */
  int ignore_merges;
  int unk_id, bos_id, eos_id; /* -1: none */
  int add_bos;
  int finished;
};

/* ---------------------------------------------------------------- hashing */

static uint32_t hash_bytes(const char *s, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

static uint32_t pow2_at_least(uint64_t n) {
  uint32_t c = 16;
  while (c < n) c *= 2;
  return c;
}

static int form_lookup(const e8q_bpe *b, const char *s, size_t len) {
  for (uint32_t i = hash_bytes(s, len) & (b->fcap - 1);; i = (i + 1) & (b->fcap - 1)) {
    int id = b->fslots[i];
    if (id < 0) return -1;
    if ((size_t)b->form_len[id] == len && memcmp(b->form[id], s, len) == 0) return id;
  }
}

static int text_lookup(const e8q_bpe *b, const char *s, size_t len) {
  if (!b->tslots || len > (size_t)b->max_text_len) return -1;
  for (uint32_t i = hash_bytes(s, len) & (b->tcap - 1);; i = (i + 1) & (b->tcap - 1)) {
    int id = b->tslots[i];
    if (id < 0) return -1;
    if ((size_t)b->text_len[id] == len && memcmp(b->text[id], s, len) == 0) return id;
  }
}

static uint64_t pair_key(int l, int r) { return (uint64_t)(uint32_t)l << 32 | (uint32_t)r; }
static uint32_t pair_hash(uint64_t k) { return (uint32_t)((k * 0x9E3779B97F4A7C15ull) >> 32); }

static const mslot *merge_find(const e8q_bpe *b, int l, int r) {
  if (!b->mcap) return NULL;
  uint64_t k = pair_key(l, r);
  for (uint32_t i = pair_hash(k) & (b->mcap - 1);; i = (i + 1) & (b->mcap - 1)) {
    if (b->mslots[i].key == k) return &b->mslots[i];
    if (b->mslots[i].key == UINT64_MAX) return NULL;
  }
}

static void merge_insert(mslot *tab, uint32_t cap, mslot m) {
  uint32_t i = pair_hash(m.key) & (cap - 1);
  while (tab[i].key != UINT64_MAX) {
    if (tab[i].key == m.key) return; /* a repeated pair keeps its first (lowest) rank */
    i = (i + 1) & (cap - 1);
  }
  tab[i] = m;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 take 256.. in order */
static void alphabet_init(e8q_bpe *b) {
  uint32_t next = 256;
  for (int c = 0; c < 324; c++) b->byte_of_cp[c] = -1;
  for (int x = 0; x < 256; x++) {
    int printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
    b->cp_of_byte[x] = printable ? (uint32_t)x : next++;
    b->byte_of_cp[b->cp_of_byte[x]] = (int16_t)x;
  }
}

static int utf8_put(char *o, uint32_t cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  o[0] = (char)(0xC0 | cp >> 6); /* the alphabet stays below U+0800 */
  o[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

/* raw bytes of a byte-level form into out (room for len bytes); returns the count, or -1 when a
 * character is outside the alphabet (or the form is not valid UTF-8) */
static int alphabet_decode(const e8q_bpe *b, const char *s, size_t len, char *out) {
  int k = 0;
  for (size_t i = 0; i < len;) {
    uint8_t c = (uint8_t)s[i];
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i++;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < len && ((uint8_t)s[i + 1] & 0xC0) == 0x80) {
      cp = (uint32_t)(c & 0x1F) << 6 | ((uint8_t)s[i + 1] & 0x3F);
      i += 2;
    } else {
      return -1;
    }
    if (cp >= 324 || b->byte_of_cp[cp] < 0) return -1;
    out[k++] = (char)b->byte_of_cp[cp];
  }
  return k;
}

/* ---------------------------------------------------------------- builder */

e8q_bpe *e8q_bpe_new(const char *path, int n) {
  E8Q_CHECK(n > 0 && n < (1 << 26), "%s: a vocabulary of %d tokens is not supported", path, n);
  e8q_bpe *b = e8q_calloc(1, sizeof(*b), "BPE tokenizer");
  b->path = strdup(path);
  E8Q_CHECK(b->path, "out of memory");
  b->n = n;
  b->form = e8q_calloc((size_t)n, sizeof(char *), "BPE token forms");
  b->form_len = e8q_calloc((size_t)n, sizeof(int), "BPE token forms");
  b->text = e8q_calloc((size_t)n, sizeof(char *), "BPE token texts");
  b->text_len = e8q_calloc((size_t)n, sizeof(int), "BPE token texts");
  b->type = e8q_calloc((size_t)n, 1, "BPE token types");
  b->byte_level = e8q_calloc((size_t)n, 1, "BPE token flags");
  b->pre = -1;
  b->unk_id = b->bos_id = b->eos_id = -1;
  alphabet_init(b);
  return b;
}

static void set_text(e8q_bpe *b, int id, const char *s, size_t len) {
  free(b->text[id]);
  b->text[id] = e8q_malloc(len + 1, "BPE token text");
  memcpy(b->text[id], s, len);
  b->text[id][len] = 0;
  b->text_len[id] = (int)len;
}

void e8q_bpe_set_token(e8q_bpe *b, int id, const char *form, size_t len, int type) {
  E8Q_CHECK(!b->fslots, "%s: token %d set after merges were added (internal order error)", b->path, id);
  E8Q_CHECK(id >= 0 && id < b->n, "%s: token id %d outside the vocabulary of %d", b->path, id, b->n);
  E8Q_CHECK(type >= E8Q_BPE_NORMAL && type <= E8Q_BPE_BYTE, "%s: token %d has unknown type %d", b->path, id, type);
  E8Q_CHECK(len < (1u << 20), "%s: token %d is %zu bytes long", b->path, id, len);
  free(b->form[id]);
  b->form[id] = e8q_malloc(len + 1, "BPE token form");
  memcpy(b->form[id], form, len);
  b->form[id][len] = 0;
  b->form_len[id] = (int)len;
  b->type[id] = (uint8_t)type;
  char *raw = e8q_malloc(len + 1, "BPE token text");
  int k = alphabet_decode(b, form, len, raw);
  b->byte_level[id] = k >= 0 && len > 0;
  /* added tokens (control, user defined, unknown) are their own text; so is a form outside the alphabet */
  int own = type == E8Q_BPE_CONTROL || type == E8Q_BPE_USER_DEFINED || type == E8Q_BPE_UNKNOWN || k < 0;
  if (own) set_text(b, id, form, len);
  else set_text(b, id, raw, (size_t)k);
  free(raw);
}

/* form -> id table, once every token is set */
static void forms_index(e8q_bpe *b) {
  if (b->fslots) return;
  for (int id = 0; id < b->n; id++)
    E8Q_CHECK(b->form[id], "%s: token id %d is not defined (the vocabulary has a gap)", b->path, id);
  b->fcap = pow2_at_least(2 * (uint64_t)b->n);
  b->fslots = e8q_malloc(b->fcap * sizeof(int), "BPE form table");
  for (uint32_t i = 0; i < b->fcap; i++) b->fslots[i] = -1;
  for (int id = 0; id < b->n; id++) {
    if (form_lookup(b, b->form[id], (size_t)b->form_len[id]) >= 0) continue; /* duplicate: first wins */
    uint32_t i = hash_bytes(b->form[id], (size_t)b->form_len[id]) & (b->fcap - 1);
    while (b->fslots[i] >= 0) i = (i + 1) & (b->fcap - 1);
    b->fslots[i] = id;
  }
}

static void merge_add_ids(e8q_bpe *b, int l, int r, int id) {
  if (b->n_merges == b->merge_cap) {
    b->merge_cap = b->merge_cap ? 2 * b->merge_cap : 4096;
    b->merge_l = realloc(b->merge_l, (size_t)b->merge_cap * sizeof(int));
    b->merge_r = realloc(b->merge_r, (size_t)b->merge_cap * sizeof(int));
    E8Q_CHECK(b->merge_l && b->merge_r, "out of memory for BPE merges");
  }
  if (2 * ((uint64_t)b->n_merges + 1) > b->mcap) { /* grow and rehash */
    uint32_t ncap = b->mcap ? 2 * b->mcap : 8192;
    mslot *nt = e8q_malloc(ncap * sizeof(mslot), "BPE merge table");
    for (uint32_t i = 0; i < ncap; i++) nt[i].key = UINT64_MAX;
    for (uint32_t i = 0; i < b->mcap; i++)
      if (b->mslots[i].key != UINT64_MAX) merge_insert(nt, ncap, b->mslots[i]);
    free(b->mslots);
    b->mslots = nt;
    b->mcap = ncap;
  }
  merge_insert(b->mslots, b->mcap, (mslot){pair_key(l, r), b->n_merges, id});
  b->merge_l[b->n_merges] = l;
  b->merge_r[b->n_merges] = r;
  b->n_merges++;
}

/* one merge given as its two forms; field[index] names it in messages */
static void merge_add_pair(e8q_bpe *b, const char *a, size_t alen, const char *c, size_t clen, const char *field,
                           int index) {
  forms_index(b);
  int l = form_lookup(b, a, alen), r = form_lookup(b, c, clen);
  E8Q_CHECK(l >= 0, "%s: %s[%d] (\"%.*s %.*s\") names the token \"%.*s\", which is not in the vocabulary", b->path,
            field, index, (int)alen, a, (int)clen, c, (int)alen, a);
  E8Q_CHECK(r >= 0, "%s: %s[%d] (\"%.*s %.*s\") names the token \"%.*s\", which is not in the vocabulary", b->path,
            field, index, (int)alen, a, (int)clen, c, (int)clen, c);
  char *cat = e8q_malloc(alen + clen + 1, "BPE merge");
  memcpy(cat, a, alen);
  memcpy(cat + alen, c, clen);
  int id = form_lookup(b, cat, alen + clen);
  E8Q_CHECK(id >= 0, "%s: %s[%d] (\"%.*s %.*s\"): the merged token \"%.*s\" is not in the vocabulary", b->path, field,
            index, (int)alen, a, (int)clen, c, (int)(alen + clen), cat);
  free(cat);
  merge_add_ids(b, l, r, id);
}

void e8q_bpe_add_merge(e8q_bpe *b, const char *s, size_t len, const char *field, int index) {
  const char *sp = memchr(s, ' ', len);
  E8Q_CHECK(sp && sp > s && sp < s + len - 1 && !memchr(sp + 1, ' ', (size_t)(s + len - sp - 1)),
            "%s: %s[%d] \"%.*s\" is not two tokens separated by one space", b->path, field, index, (int)len, s);
  merge_add_pair(b, s, (size_t)(sp - s), sp + 1, (size_t)(s + len - sp - 1), field, index);
}

typedef struct {
  int first, len, id; /* first byte, text length, token */
} sp_key;

static int cmp_special(const void *x, const void *y) {
  const sp_key *a = x, *c = y;
  if (a->first != c->first) return a->first < c->first ? -1 : 1;
  if (a->len != c->len) return a->len > c->len ? -1 : 1; /* longest first */
  return a->id < c->id ? -1 : a->id > c->id;
}

static void compile_pre(e8q_bpe *b) {
  const pre_def *d = &PRE_DEFS[b->pre];
  for (int k = 0; k < d->n_re; k++) {
    int err;
    PCRE2_SIZE off;
    b->re[k] = pcre2_compile((PCRE2_SPTR)d->re[k], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (!b->re[k]) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      E8Q_FATAL("%s: the %s pre-tokenizer regex does not compile at offset %zu: %s (PCRE2 built without Unicode?)",
                b->path, d->name, (size_t)off, (const char *)msg);
    }
    (void)pcre2_jit_compile(b->re[k], PCRE2_JIT_COMPLETE); /* the interpreter runs when JIT is unavailable */
  }
}

void e8q_bpe_finish(e8q_bpe *b, const char *pre, const char *field, int bos, int eos, int add_bos, int ignore_merges) {
  forms_index(b);
  b->pre = pre ? pre_find(pre) : -1;
  E8Q_CHECK(b->pre >= 0,
            "%s: %s \"%s\" is not a pre-tokenizer e8q implements (gpt2, smollm, llama3 or llama-bpe, qwen2)", b->path,
            field, pre ? pre : "(missing)");
  E8Q_CHECK(bos >= -1 && bos < b->n, "%s: BOS id %d outside the vocabulary of %d", b->path, bos, b->n);
  E8Q_CHECK(eos >= -1 && eos < b->n, "%s: EOS id %d outside the vocabulary of %d", b->path, eos, b->n);
  E8Q_CHECK(!add_bos || bos >= 0, "%s: the tokenizer adds BOS but has no BOS token", b->path);
  b->bos_id = bos;
  b->eos_id = eos;
  b->add_bos = add_bos != 0;
  b->ignore_merges = ignore_merges != 0;
  /* single bytes */
  for (int x = 0; x < 256; x++) {
    char f[2];
    int k = utf8_put(f, b->cp_of_byte[x]);
    b->byte_id[x] = form_lookup(b, f, (size_t)k);
  }
  /* text -> id over byte-level tokens (whole pieces under ignore_merges) */
  b->tcap = pow2_at_least(2 * (uint64_t)b->n);
  b->tslots = e8q_malloc(b->tcap * sizeof(int), "BPE text table");
  for (uint32_t i = 0; i < b->tcap; i++) b->tslots[i] = -1;
  b->max_text_len = 0;
  for (int id = 0; id < b->n; id++) {
    if (!b->byte_level[id] || b->type[id] == E8Q_BPE_CONTROL || b->type[id] == E8Q_BPE_USER_DEFINED ||
        b->type[id] == E8Q_BPE_UNKNOWN)
      continue;
    if (text_lookup(b, b->text[id], (size_t)b->text_len[id]) >= 0) continue;
    if (b->text_len[id] > b->max_text_len) b->max_text_len = b->text_len[id];
    uint32_t i = hash_bytes(b->text[id], (size_t)b->text_len[id]) & (b->tcap - 1);
    while (b->tslots[i] >= 0) i = (i + 1) & (b->tcap - 1);
    b->tslots[i] = id;
  }
  /* specials */
  b->special = e8q_malloc((size_t)b->n * sizeof(int), "BPE specials");
  b->n_special = 0;
  for (int id = 0; id < b->n; id++) {
    int t = b->type[id];
    if ((t == E8Q_BPE_CONTROL || t == E8Q_BPE_USER_DEFINED || t == E8Q_BPE_UNKNOWN) && b->text_len[id] > 0)
      b->special[b->n_special++] = id;
    if (t == E8Q_BPE_UNKNOWN && b->unk_id < 0) b->unk_id = id;
  }
  sp_key *keys = e8q_malloc(((size_t)b->n_special + 1) * sizeof(sp_key), "BPE specials");
  for (int k = 0; k < b->n_special; k++)
    keys[k] = (sp_key){(uint8_t)b->text[b->special[k]][0], b->text_len[b->special[k]], b->special[k]};
  qsort(keys, (size_t)b->n_special, sizeof(sp_key), cmp_special);
  for (int k = 0; k < b->n_special; k++) b->special[k] = keys[k].id;
  free(keys);
  for (int c = 0, k = 0; c <= 256; c++) {
    while (k < b->n_special && (uint8_t)b->text[b->special[k]][0] < c) k++;
    b->sp_start[c] = k;
  }
  compile_pre(b);
  b->finished = 1;
}

void e8q_bpe_free(e8q_bpe *b) {
  if (!b) return;
  for (int i = 0; i < b->n; i++) {
    free(b->form[i]);
    free(b->text[i]);
  }
  free(b->form);
  free(b->form_len);
  free(b->text);
  free(b->text_len);
  free(b->type);
  free(b->byte_level);
  free(b->fslots);
  free(b->tslots);
  free(b->merge_l);
  free(b->merge_r);
  free(b->mslots);
  free(b->special);
  for (int k = 0; k < 2; k++)
    if (b->re[k]) pcre2_code_free(b->re[k]);
  free(b->path);
  free(b);
}

/* ---------------------------------------------------------------- accessors */

int e8q_bpe_vocab_size(const e8q_bpe *b) { return b->n; }
int e8q_bpe_bos_id(const e8q_bpe *b) { return b->bos_id; }
int e8q_bpe_eos_id(const e8q_bpe *b) { return b->eos_id; }
int e8q_bpe_add_bos(const e8q_bpe *b) { return b->add_bos; }
const char *e8q_bpe_pre_name(const e8q_bpe *b) { return b->pre >= 0 ? PRE_DEFS[b->pre].name : NULL; }
const char *e8q_bpe_path(const e8q_bpe *b) { return b->path; }

const char *e8q_bpe_text(const e8q_bpe *b, int id, size_t *len) {
  E8Q_CHECK(id >= 0 && id < b->n, "%s: cannot decode token id %d: outside the vocabulary of %d", b->path, id, b->n);
  if (len) *len = (size_t)b->text_len[id];
  return b->text[id];
}

/* ---------------------------------------------------------------- merging */

typedef struct {
  int *v;      /* [cap] */
  size_t n, cap;
} ivec;

static void ivec_push(ivec *a, int x) {
  if (a->n == a->cap) {
    a->cap = a->cap ? 2 * a->cap : 1024;
    a->v = realloc(a->v, a->cap * sizeof(int));
    E8Q_CHECK(a->v, "out of memory in the BPE tokenizer");
  }
  a->v[a->n++] = x;
}

/* the initial symbols of a piece: one token per byte (unknown token, or none, for a byte without one) */
static int initial_symbols(const e8q_bpe *b, const char *p, size_t n, int *ids) {
  int k = 0;
  for (size_t i = 0; i < n; i++) {
    int id = b->byte_id[(uint8_t)p[i]];
    if (id < 0) id = b->unk_id;
    if (id >= 0) ids[k++] = id;
  }
  return k;
}

/* readable O(n^2): repeatedly the pair of lowest rank, leftmost on ties, is merged */
static void merge_ref(const e8q_bpe *b, const char *p, size_t n, ivec *out) {
  int whole = b->ignore_merges ? text_lookup(b, p, n) : -1;
  if (whole >= 0) {
    ivec_push(out, whole);
    return;
  }
  int *ids = e8q_malloc((n + 1) * sizeof(int), "BPE symbols");
  int ns = initial_symbols(b, p, n, ids);
  for (;;) {
    int best = -1;
    const mslot *bm = NULL;
    for (int i = 0; i + 1 < ns; i++) {
      const mslot *m = merge_find(b, ids[i], ids[i + 1]);
      if (m && (!bm || m->rank < bm->rank)) bm = m, best = i;
    }
    if (!bm) break;
    ids[best] = bm->id;
    memmove(ids + best + 1, ids + best + 2, (size_t)(ns - best - 2) * sizeof(int));
    ns--;
  }
  for (int i = 0; i < ns; i++) ivec_push(out, ids[i]);
  free(ids);
}

/* heap entry: merge of symbol l (id lid) with its right neighbour r (id rid) */
typedef struct {
  int rank, l, r, lid, rid, id;
} cand;

static int cand_before(const cand *a, const cand *c) { return a->rank < c->rank || (a->rank == c->rank && a->l < c->l); }

typedef struct {
  int id, prev, next; /* id -1: merged away */
} sym;

E8Q_HEAP_DEFINE(cand_heap, cand, cand_before, 256, "out of memory in the BPE tokenizer")

typedef struct {
  sym *s;       /* [scap] symbols of the current piece */
  size_t scap;
  int *tmp;     /* [scap] initial ids */
  cand_heap hp; /* the candidate merges */
} merge_scratch;

static void try_pair(const e8q_bpe *b, merge_scratch *q, int l) {
  if (l < 0) return;
  int r = q->s[l].next;
  if (r < 0) return;
  const mslot *m = merge_find(b, q->s[l].id, q->s[r].id);
  if (m) cand_heap_push(&q->hp, (cand){m->rank, l, r, q->s[l].id, q->s[r].id, m->id});
}

/* the same merges with a heap over a linked list: O(n log n) */
static void merge_fast(const e8q_bpe *b, const char *p, size_t n, merge_scratch *q, ivec *out) {
  int whole = b->ignore_merges ? text_lookup(b, p, n) : -1;
  if (whole >= 0) {
    ivec_push(out, whole);
    return;
  }
  if (q->scap < n + 1) {
    free(q->s);
    free(q->tmp);
    q->scap = 2 * n + 16;
    q->s = e8q_malloc(q->scap * sizeof(sym), "BPE symbols");
    q->tmp = e8q_malloc(q->scap * sizeof(int), "BPE symbols");
  }
  int ns = initial_symbols(b, p, n, q->tmp);
  if (ns == 0) return;
  for (int i = 0; i < ns; i++) q->s[i] = (sym){q->tmp[i], i - 1, i + 1};
  q->s[ns - 1].next = -1;
  q->hp.n = 0;
  for (int i = 0; i + 1 < ns; i++) try_pair(b, q, i);
  while (q->hp.n > 0) {
    cand c = cand_heap_pop(&q->hp);
    sym *L = &q->s[c.l];
    /* stale when either side was merged away or changed since the push */
    if (L->id != c.lid || L->next != c.r || q->s[c.r].id != c.rid) continue;
    sym *R = &q->s[c.r];
    L->id = c.id;
    L->next = R->next;
    if (R->next >= 0) q->s[R->next].prev = c.l;
    R->id = -1;
    R->next = R->prev = -1;
    if (L->prev >= 0) try_pair(b, q, L->prev);
    try_pair(b, q, c.l);
  }
  for (int i = 0; i >= 0; i = q->s[i].next) ivec_push(out, q->s[i].id);
}

/* ---------------------------------------------------------------- encoding */

/* word cache of one encode call: piece bytes -> its ids (a range of the output) */
typedef struct {
  uint32_t hash;
  uint32_t len;        /* 0 = empty slot */
  const char *p;       /* the piece in the caller's text */
  size_t at, count;    /* its ids in the output vector */
} wslot;

typedef struct {
  const e8q_bpe *b;
  int ref;                        /* 1: merge_ref, no cache */
  ivec *out;
  pcre2_match_data *md[2];        /* per regex stage */
  pcre2_match_context *mctx;
  pcre2_jit_stack *jit;
  merge_scratch ms;
  wslot *tab;                     /* [cap] word cache */
  size_t cap, used;
} enc_ctx;

static void enc_piece(enc_ctx *c, const char *p, size_t n) {
  if (n == 0) return;
  if (c->ref) {
    merge_ref(c->b, p, n, c->out);
    return;
  }
  uint32_t h = hash_bytes(p, n);
  size_t k = h & (c->cap - 1);
  while (c->tab[k].len && !(c->tab[k].hash == h && c->tab[k].len == n && memcmp(c->tab[k].p, p, n) == 0))
    k = (k + 1) & (c->cap - 1);
  if (c->tab[k].len) { /* seen: copy its ids */
    for (size_t j = 0; j < c->tab[k].count; j++) ivec_push(c->out, c->out->v[c->tab[k].at + j]);
    return;
  }
  size_t at = c->out->n;
  merge_fast(c->b, p, n, &c->ms, c->out);
  c->tab[k] = (wslot){h, (uint32_t)n, p, at, c->out->n - at};
  if (++c->used * 2 > c->cap) { /* grow and rehash */
    size_t ncap = c->cap * 2;
    wslot *nt = e8q_calloc(ncap, sizeof(wslot), "BPE word cache");
    for (size_t j = 0; j < c->cap; j++)
      if (c->tab[j].len) {
        size_t m = c->tab[j].hash & (ncap - 1);
        while (nt[m].len) m = (m + 1) & (ncap - 1);
        nt[m] = c->tab[j];
      }
    free(c->tab);
    c->tab = nt;
    c->cap = ncap;
  }
}

static size_t utf8_len_at(const char *p, size_t i, size_t n) {
  size_t k = 1;
  while (i + k < n && ((uint8_t)p[i + k] & 0xC0) == 0x80) k++;
  return k;
}

/* regex stage k over p[0..n): matches and the stretches between them are pieces for stage k+1 */
static void enc_split(enc_ctx *c, const char *p, size_t n, int k) {
  const e8q_bpe *b = c->b;
  if (n == 0) return;
  if (k == PRE_DEFS[b->pre].n_re) {
    enc_piece(c, p, n);
    return;
  }
  size_t at = 0, gap = 0;
  while (at < n) {
    int rc = pcre2_match(b->re[k], (PCRE2_SPTR)p, n, at, PCRE2_NO_UTF_CHECK, c->md[k], c->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      E8Q_FATAL("%s: pre-tokenizer %s: regex match failed (%d: %s) on a piece of %zu bytes", b->path,
                PRE_DEFS[b->pre].name, rc, (const char *)msg, n);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md[k]);
    size_t s = ov[0], e = ov[1];
    if (e <= s) { /* an empty match (none of the patterns has one): step over a character */
      at = s + utf8_len_at(p, s, n);
      continue;
    }
    enc_split(c, p + gap, s - gap, k + 1);
    enc_split(c, p + s, e - s, k + 1);
    gap = at = e;
  }
  enc_split(c, p + gap, n - gap, k + 1);
}

/* the length of the special token at p[0..n), the longest first; 0 if none, *id set */
static size_t special_at(const e8q_bpe *b, const char *p, size_t n, int *id) {
  uint8_t c = (uint8_t)p[0];
  for (int k = b->sp_start[c]; k < b->sp_start[c + 1]; k++) {
    int s = b->special[k];
    size_t L = (size_t)b->text_len[s];
    if (L <= n && memcmp(b->text[s], p, L) == 0) {
      *id = s;
      return L;
    }
  }
  return 0;
}

static int encode(const e8q_bpe *b, const char *text, int bos, int eos, int ref, int **out) {
  size_t n = strlen(text);
  E8Q_CHECK(n < (size_t)1 << 31, "%s: text of %zu bytes is too long to encode at once; split it", b->path, n);
  size_t bad = e8q_utf8_check(text, n);
  E8Q_CHECK(bad == n,
            "%s: the text to encode is not valid UTF-8 at byte %zu (of %zu); byte-level BPE takes valid UTF-8 only",
            b->path, bad, n);
  E8Q_CHECK(!bos || b->bos_id >= 0, "%s: BOS requested but the tokenizer has no BOS token", b->path);
  E8Q_CHECK(!eos || b->eos_id >= 0, "%s: EOS requested but the tokenizer has no EOS token", b->path);
  ivec ids = {0};
  enc_ctx c = {.b = b, .ref = ref, .out = &ids};
  const pre_def *d = &PRE_DEFS[b->pre];
  for (int k = 0; k < d->n_re; k++) {
    c.md[k] = pcre2_match_data_create_from_pattern(b->re[k], NULL);
    E8Q_CHECK(c.md[k], "out of memory for regex match data");
  }
  c.mctx = pcre2_match_context_create(NULL);
  c.jit = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
  E8Q_CHECK(c.mctx && c.jit, "out of memory for the regex match context");
  pcre2_jit_stack_assign(c.mctx, NULL, c.jit);
  if (!ref) {
    c.cap = 1024;
    c.tab = e8q_calloc(c.cap, sizeof(wslot), "BPE word cache");
  }
  if (bos) ivec_push(&ids, b->bos_id);
  size_t seg = 0; /* start of the stretch since the last special */
  for (size_t i = 0; i < n;) {
    int sid;
    size_t L = b->sp_start[(uint8_t)text[i]] < b->sp_start[(uint8_t)text[i] + 1] ? special_at(b, text + i, n - i, &sid) : 0;
    if (L) {
      enc_split(&c, text + seg, i - seg, 0);
      ivec_push(&ids, sid);
      i += L;
      seg = i;
    } else {
      i++;
    }
  }
  enc_split(&c, text + seg, n - seg, 0);
  if (eos) ivec_push(&ids, b->eos_id);
  for (int k = 0; k < d->n_re; k++) pcre2_match_data_free(c.md[k]);
  pcre2_match_context_free(c.mctx);
  pcre2_jit_stack_free(c.jit);
  free(c.tab);
  free(c.ms.s);
  free(c.ms.tmp);
  free(c.ms.hp.h);
  if (!ids.v) ivec_push(&ids, 0), ids.n = 0; /* a valid pointer even for no ids */
  *out = ids.v;
  return (int)ids.n;
}

int e8q_bpe_encode(const e8q_bpe *b, const char *text, int bos, int eos, int **ids) {
  return encode(b, text, bos, eos, 0, ids);
}

int e8q_bpe_encode_ref(const e8q_bpe *b, const char *text, int bos, int eos, int **ids) {
  return encode(b, text, bos, eos, 1, ids);
}

/* ---------------------------------------------------------------- tokenizer.json: reading */

static const char *json_str(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_true(const cJSON *o, const char *key) { return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key)); }

/* a ByteLevel pre-tokenizer: *use_regex gets its flag (default true); refuses add_prefix_space */
static void check_bytelevel(const char *path, const cJSON *p, const char *field, int *use_regex) {
  E8Q_CHECK(!json_true(p, "add_prefix_space"),
            "%s: %s: ByteLevel with add_prefix_space true is not supported (e8q adds no prefix space)", path, field);
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
  *use_regex = u ? cJSON_IsTrue(u) : 1;
}

/* the pre-tokenizer name for a tokenizer.json pre_tokenizer, or fatal naming the structure */
static const char *json_pre_name(const char *path, const cJSON *pre) {
  static const char unknown[] =
      "%s: pre_tokenizer %s is not a structure e8q implements (ByteLevel with its regex; Sequence of Digits "
      "(individual_digits) and ByteLevel; Sequence of Split (the Llama 3, Qwen 2 or GPT-2 regex, Isolated) and "
      "ByteLevel without regex)";
  E8Q_CHECK(cJSON_IsObject(pre), "%s: pre_tokenizer is missing or null; a byte-level BPE needs one", path);
  const char *type = json_str(pre, "type");
  E8Q_CHECK(type, "%s: pre_tokenizer has no \"type\"", path);
  int use_regex;
  if (!strcmp(type, "ByteLevel")) {
    check_bytelevel(path, pre, "pre_tokenizer", &use_regex);
    E8Q_CHECK(use_regex, unknown, path, "(ByteLevel with use_regex false alone)");
    return "gpt2";
  }
  E8Q_CHECK(!strcmp(type, "Sequence"), unknown, path, type);
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
  E8Q_CHECK(cJSON_IsArray(list) && cJSON_GetArraySize(list) == 2, unknown, path,
            "(a Sequence that is not two pre-tokenizers)");
  const cJSON *a = cJSON_GetArrayItem(list, 0), *c = cJSON_GetArrayItem(list, 1);
  const char *ta = json_str(a, "type"), *tc = json_str(c, "type");
  E8Q_CHECK(ta && tc && !strcmp(tc, "ByteLevel"), unknown, path,
            "(a Sequence whose second pre-tokenizer is not ByteLevel)");
  check_bytelevel(path, c, "pre_tokenizer.pretokenizers[1]", &use_regex);
  if (!strcmp(ta, "Digits")) {
    E8Q_CHECK(json_true(a, "individual_digits") && use_regex, unknown, path,
              "(Digits without individual_digits, or ByteLevel without regex after it)");
    return "smollm";
  }
  E8Q_CHECK(!strcmp(ta, "Split") && !use_regex, unknown, path,
            "(a Sequence whose first pre-tokenizer is neither Digits nor Split, or ByteLevel with regex after Split)");
  const char *beh = json_str(a, "behavior");
  E8Q_CHECK(beh && !strcmp(beh, "Isolated") && !json_true(a, "invert"), unknown, path,
            "(Split whose behavior is not Isolated, or inverted)");
  const char *re = json_str(cJSON_GetObjectItemCaseSensitive(a, "pattern"), "Regex");
  E8Q_CHECK(re, unknown, path, "(Split without a Regex pattern)");
  if (!strcmp(re, RE_LLAMA3) || !strcmp(re, RE_LLAMA3_CASED)) return "llama3";
  if (!strcmp(re, RE_QWEN2)) return "qwen2";
  if (!strcmp(re, RE_GPT2)) return "gpt2";
  E8Q_FATAL("%s: pre_tokenizer.pretokenizers[0].pattern.Regex \"%.200s\" is not a regex e8q knows (the GPT-2, "
            "Llama 3 or Qwen 2 pattern)",
            path, re);
}

/* the id of a token whose text is s, -1 if none */
static int find_text(const e8q_bpe *b, const char *s) {
  size_t L = strlen(s);
  for (int id = 0; id < b->n; id++)
    if ((size_t)b->text_len[id] == L && memcmp(b->text[id], s, L) == 0) return id;
  return -1;
}

/* post_processor: BOS (leading special token of the single template), EOS (a special token after $A) */
static void json_post(const char *path, const cJSON *pp, const e8q_bpe *b, int *bos, int *eos, int *add_bos) {
  if (!cJSON_IsObject(pp)) return;
  const char *type = json_str(pp, "type");
  E8Q_CHECK(type, "%s: post_processor has no \"type\"", path);
  if (!strcmp(type, "ByteLevel")) return;
  if (!strcmp(type, "Sequence")) {
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pp, "processors")) json_post(path, it, b, bos, eos, add_bos);
    return;
  }
  E8Q_CHECK(!strcmp(type, "TemplateProcessing"),
            "%s: post_processor.type \"%s\" is not supported (TemplateProcessing, ByteLevel, Sequence of them)", path,
            type);
  const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
  const cJSON *specials = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
  E8Q_CHECK(cJSON_IsArray(single), "%s: post_processor.single is missing or not an array", path);
  int seen_seq = 0, i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, single) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
    if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
      seen_seq = 1;
    } else if (st) {
      const char *name = json_str(st, "id");
      E8Q_CHECK(name, "%s: post_processor.single[%d].SpecialToken has no id", path, i);
      const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, name);
      const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
      E8Q_CHECK(cJSON_IsArray(ids) && cJSON_GetArraySize(ids) == 1 && cJSON_IsNumber(cJSON_GetArrayItem(ids, 0)),
                "%s: post_processor.special_tokens[\"%s\"] is missing or has not exactly one id", path, name);
      int id = (int)cJSON_GetArrayItem(ids, 0)->valuedouble;
      E8Q_CHECK(id >= 0 && id < b->n, "%s: post_processor.special_tokens[\"%s\"] id %d outside the vocabulary of %d",
                path, name, id, b->n);
      if (!seen_seq) {
        E8Q_CHECK(i == 0, "%s: post_processor.single adds %d tokens before the text; e8q adds one BOS at most", path,
                  i + 1);
        *bos = id;
        *add_bos = 1;
      } else {
        *eos = id; /* appended by the template; e8q appends EOS on request only */
      }
    }
    i++;
  }
}

static cJSON *json_beside(const char *path, const char *name) {
  const char *slash = strrchr(path, '/');
  size_t dl = slash ? (size_t)(slash - path) : 1;
  char *p = e8q_malloc(dl + strlen(name) + 2, "path");
  if (slash) {
    memcpy(p, path, dl);
    p[dl] = 0;
  } else {
    strcpy(p, ".");
  }
  strcat(p, "/");
  strcat(p, name);
  cJSON *j = NULL;
  if (access(p, F_OK) == 0) { /* not fopen: a FIFO would block; e8q_file_read refuses one by name */
    size_t len;
    char *s = e8q_file_read(p, &len, name);
    j = cJSON_ParseWithLength(s, len);
    if (!j) e8q_warn("%s: not valid JSON; ignored for the BOS/EOS tokens of %s", p, path);
    free(s);
  }
  free(p);
  return j;
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": ...} */
static int config_token(const e8q_bpe *b, const cJSON *cfg, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
  const char *s = cJSON_IsString(v) ? v->valuestring : json_str(v, "content");
  return s ? find_text(b, s) : -1;
}

e8q_bpe *e8q_bpe_parse_json(const char *path, const char *json, size_t len) {
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : 0;
    E8Q_FATAL("%s: not valid JSON (near byte %zu); expected a Hugging Face tokenizer.json", path, off);
  }
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  E8Q_CHECK(cJSON_IsObject(model), "%s: no \"model\" object; not a Hugging Face tokenizer.json", path);
  const char *mtype = json_str(model, "type");
  E8Q_CHECK(mtype, "%s: model.type is missing; e8q reads byte-level BPE tokenizer.json files (\"BPE\")", path);
  E8Q_CHECK(!strcmp(mtype, "BPE"), "%s: model.type \"%s\" is not supported; e8q implements byte-level BPE (\"BPE\")",
            path, mtype);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  E8Q_CHECK(cJSON_IsObject(vocab) && vocab->child, "%s: model.vocab is missing, empty or not an object", path);
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  E8Q_CHECK(cJSON_IsArray(merges), "%s: model.merges is missing or not an array", path);
  E8Q_CHECK(!json_true(model, "byte_fallback"),
            "%s: model.byte_fallback is true: a SentencePiece-style BPE, not byte-level; use the model's "
            "tokenizer.model",
            path);
  const char *csp = json_str(model, "continuing_subword_prefix"), *ews = json_str(model, "end_of_word_suffix");
  E8Q_CHECK(!(csp && *csp), "%s: model.continuing_subword_prefix \"%s\" is not supported", path, csp);
  E8Q_CHECK(!(ews && *ews), "%s: model.end_of_word_suffix \"%s\" is not supported", path, ews);
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  E8Q_CHECK(!cJSON_IsNumber(dropout) || dropout->valuedouble == 0, "%s: model.dropout %g is not supported", path,
            cJSON_IsNumber(dropout) ? dropout->valuedouble : 0.0);
  const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
  if (cJSON_IsObject(norm)) {
    const char *nt = json_str(norm, "type");
    E8Q_CHECK(nt && !strcmp(nt, "NFC"), "%s: normalizer.type \"%s\" is not supported (null or NFC)", path,
              nt ? nt : "(missing)");
    e8q_warn("%s: normalizer NFC is not applied (text already in NFC, most text, is unaffected)", path);
  }
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  E8Q_CHECK(!added || cJSON_IsArray(added) || cJSON_IsNull(added), "%s: added_tokens is not an array", path);

  /* the vocabulary size: the largest id + 1 over model.vocab and added_tokens */
  long n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, vocab) {
    E8Q_CHECK(cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble < (1 << 26) &&
                  it->valuedouble == (double)(long)it->valuedouble,
              "%s: model.vocab[\"%s\"] is not a token id", path, it->string);
    if ((long)it->valuedouble + 1 > n) n = (long)it->valuedouble + 1;
  }
  int ai = 0;
  cJSON_ArrayForEach(it, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    const char *content = json_str(it, "content");
    E8Q_CHECK(cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < (1 << 26) && content,
              "%s: added_tokens[%d] has no valid id or content", path, ai);
    if ((long)id->valuedouble + 1 > n) n = (long)id->valuedouble + 1;
    ai++;
  }
  e8q_bpe *b = e8q_bpe_new(path, (int)n);
  cJSON_ArrayForEach(it, vocab) {
    int id = (int)it->valuedouble;
    E8Q_CHECK(!b->form[id], "%s: model.vocab gives id %d to both \"%s\" and \"%s\"", path, id, b->form[id],
              it->string);
    e8q_bpe_set_token(b, id, it->string, strlen(it->string), E8Q_BPE_NORMAL);
  }
  ai = 0;
  cJSON_ArrayForEach(it, added) {
    int id = (int)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
    const char *content = json_str(it, "content");
    int type = json_true(it, "special") ? E8Q_BPE_CONTROL : E8Q_BPE_USER_DEFINED;
    if (json_true(it, "lstrip") || json_true(it, "rstrip") || json_true(it, "single_word"))
      e8q_warn("%s: added_tokens[%d] \"%s\": lstrip/rstrip/single_word are not applied", path, ai, content);
    if (b->form[id]) { /* in model.vocab too: keep its form (merges name it), take the added text and type */
      b->type[id] = (uint8_t)type;
      set_text(b, id, content, strlen(content));
    } else {
      e8q_bpe_set_token(b, id, content, strlen(content), type);
    }
    ai++;
  }
  for (int id = 0; id < b->n; id++)
    E8Q_CHECK(b->form[id], "%s: token id %d is in neither model.vocab nor added_tokens (ids must be 0..%d)", path, id,
              b->n - 1);
  int mi = 0;
  cJSON_ArrayForEach(it, merges) {
    if (cJSON_IsString(it)) {
      e8q_bpe_add_merge(b, it->valuestring, strlen(it->valuestring), "model.merges", mi);
    } else {
      const cJSON *a = cJSON_GetArrayItem(it, 0), *c = cJSON_GetArrayItem(it, 1);
      E8Q_CHECK(cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(a) && cJSON_IsString(c),
                "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", path, mi);
      merge_add_pair(b, a->valuestring, strlen(a->valuestring), c->valuestring, strlen(c->valuestring),
                     "model.merges", mi);
    }
    mi++;
  }
  const char *unk = json_str(model, "unk_token");
  if (unk) {
    forms_index(b);
    int u = form_lookup(b, unk, strlen(unk));
    E8Q_CHECK(u >= 0, "%s: model.unk_token \"%s\" is not in the vocabulary", path, unk);
    b->unk_id = u;
  }
  const char *pre = json_pre_name(path, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
  int bos = -1, eos = -1, add_bos = 0;
  json_post(path, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), b, &bos, &eos, &add_bos);
  if (bos < 0 || eos < 0) { /* the files of a Hugging Face directory beside it */
    cJSON *tc = json_beside(path, "tokenizer_config.json");
    if (tc) {
      if (bos < 0) bos = config_token(b, tc, "bos_token");
      if (eos < 0) eos = config_token(b, tc, "eos_token");
      cJSON_Delete(tc);
    }
  }
  if (bos < 0 || eos < 0) {
    cJSON *cfg = json_beside(path, "config.json");
    if (cfg) {
      const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "bos_token_id");
      if (bos < 0 && cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < b->n) bos = (int)v->valuedouble;
      v = cJSON_GetObjectItemCaseSensitive(cfg, "eos_token_id");
      if (eos < 0 && cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < b->n) eos = (int)v->valuedouble;
      cJSON_Delete(cfg);
    }
  }
  e8q_bpe_finish(b, pre, "pre_tokenizer", bos, eos, add_bos, json_true(model, "ignore_merges"));
  cJSON_Delete(root);
  return b;
}

e8q_bpe *e8q_bpe_load_json(const char *path) {
  size_t len;
  char *s = e8q_file_read(path, &len, "tokenizer.json");
  E8Q_CHECK(len > 0, "%s: 0 bytes, not a tokenizer.json", path);
  e8q_bpe *b = e8q_bpe_parse_json(path, s, len);
  free(s);
  return b;
}

/* ---------------------------------------------------------------- tokenizer.json: writing */

static cJSON *bytelevel_json(int use_regex) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "ByteLevel");
  cJSON_AddBoolToObject(o, "add_prefix_space", 0);
  cJSON_AddBoolToObject(o, "trim_offsets", 1);
  cJSON_AddBoolToObject(o, "use_regex", use_regex);
  return o;
}

static cJSON *pre_json(const e8q_bpe *b) {
  const char *name = PRE_DEFS[b->pre].name;
  if (!strcmp(name, "gpt2")) return bytelevel_json(1);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "Sequence");
  cJSON *list = cJSON_AddArrayToObject(o, "pretokenizers");
  cJSON *first = cJSON_CreateObject();
  if (!strcmp(name, "smollm")) {
    cJSON_AddStringToObject(first, "type", "Digits");
    cJSON_AddBoolToObject(first, "individual_digits", 1);
    cJSON_AddItemToArray(list, first);
    cJSON_AddItemToArray(list, bytelevel_json(1));
  } else {
    cJSON_AddStringToObject(first, "type", "Split");
    cJSON *pat = cJSON_AddObjectToObject(first, "pattern");
    cJSON_AddStringToObject(pat, "Regex", PRE_DEFS[b->pre].re[0]);
    cJSON_AddStringToObject(first, "behavior", "Isolated");
    cJSON_AddBoolToObject(first, "invert", 0);
    cJSON_AddItemToArray(list, first);
    cJSON_AddItemToArray(list, bytelevel_json(0));
  }
  return o;
}

static cJSON *template_piece(const char *special, const char *seq, int type_id) {
  cJSON *o = cJSON_CreateObject(), *in = cJSON_AddObjectToObject(o, special ? "SpecialToken" : "Sequence");
  cJSON_AddStringToObject(in, "id", special ? special : seq);
  cJSON_AddNumberToObject(in, "type_id", type_id);
  return o;
}

static cJSON *post_json(const e8q_bpe *b) {
  if (!b->add_bos) return cJSON_CreateNull();
  const char *bos = b->text[b->bos_id];
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "TemplateProcessing");
  cJSON *single = cJSON_AddArrayToObject(o, "single");
  cJSON_AddItemToArray(single, template_piece(bos, NULL, 0));
  cJSON_AddItemToArray(single, template_piece(NULL, "A", 0));
  cJSON *pair = cJSON_AddArrayToObject(o, "pair");
  cJSON_AddItemToArray(pair, template_piece(bos, NULL, 0));
  cJSON_AddItemToArray(pair, template_piece(NULL, "A", 0));
  cJSON_AddItemToArray(pair, template_piece(bos, NULL, 1));
  cJSON_AddItemToArray(pair, template_piece(NULL, "B", 1));
  cJSON *sp = cJSON_AddObjectToObject(o, "special_tokens");
  cJSON *def = cJSON_AddObjectToObject(sp, bos);
  cJSON_AddStringToObject(def, "id", bos);
  cJSON_AddItemToObject(def, "ids", cJSON_CreateIntArray(&b->bos_id, 1));
  cJSON *toks = cJSON_AddArrayToObject(def, "tokens");
  cJSON_AddItemToArray(toks, cJSON_CreateString(bos));
  return o;
}

void e8q_bpe_write_json(const e8q_bpe *b, const char *path) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "version", "1.0");
  cJSON_AddNullToObject(root, "truncation");
  cJSON_AddNullToObject(root, "padding");
  cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
  for (int id = 0; id < b->n; id++) {
    int t = b->type[id];
    if (t != E8Q_BPE_CONTROL && t != E8Q_BPE_USER_DEFINED && t != E8Q_BPE_UNKNOWN) continue;
    E8Q_CHECK(b->text_len[id] == (int)strlen(b->text[id]), "%s: added token %d holds a NUL byte; cannot write %s",
              b->path, id, path);
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", b->text[id]);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", 0);
    cJSON_AddBoolToObject(a, "rstrip", 0);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddBoolToObject(a, "special", t != E8Q_BPE_USER_DEFINED);
    cJSON_AddItemToArray(added, a);
  }
  cJSON_AddNullToObject(root, "normalizer");
  cJSON_AddItemToObject(root, "pre_tokenizer", pre_json(b));
  cJSON_AddItemToObject(root, "post_processor", post_json(b));
  cJSON *dec = bytelevel_json(1);
  cJSON_ReplaceItemInObject(dec, "add_prefix_space", cJSON_CreateBool(1));
  cJSON_AddItemToObject(root, "decoder", dec);
  cJSON *model = cJSON_AddObjectToObject(root, "model");
  cJSON_AddStringToObject(model, "type", "BPE");
  cJSON_AddNullToObject(model, "dropout");
  if (b->unk_id >= 0) cJSON_AddStringToObject(model, "unk_token", b->form[b->unk_id]);
  else cJSON_AddNullToObject(model, "unk_token");
  cJSON_AddNullToObject(model, "continuing_subword_prefix");
  cJSON_AddNullToObject(model, "end_of_word_suffix");
  cJSON_AddBoolToObject(model, "fuse_unk", 0);
  cJSON_AddBoolToObject(model, "byte_fallback", 0);
  cJSON_AddBoolToObject(model, "ignore_merges", b->ignore_merges);
  cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
  for (int id = 0; id < b->n; id++) {
    E8Q_CHECK(b->form_len[id] == (int)strlen(b->form[id]), "%s: token %d holds a NUL byte; cannot write %s", b->path,
              id, path);
    cJSON_AddItemToObject(vocab, b->form[id], cJSON_CreateNumber(id));
  }
  /* "a b" strings (readable by every tokenizers version) unless a form holds a space: then pairs */
  int pairs = 0;
  for (int m = 0; m < b->n_merges && !pairs; m++)
    pairs = strchr(b->form[b->merge_l[m]], ' ') || strchr(b->form[b->merge_r[m]], ' ');
  cJSON *merges = cJSON_AddArrayToObject(model, "merges");
  for (int m = 0; m < b->n_merges; m++) {
    const char *l = b->form[b->merge_l[m]], *r = b->form[b->merge_r[m]];
    if (pairs) {
      const char *two[2] = {l, r};
      cJSON_AddItemToArray(merges, cJSON_CreateStringArray(two, 2));
    } else {
      size_t ll = strlen(l), rl = strlen(r);
      char *s = e8q_malloc(ll + rl + 2, "merge");
      memcpy(s, l, ll);
      s[ll] = ' ';
      memcpy(s + ll + 1, r, rl + 1);
      cJSON_AddItemToArray(merges, cJSON_CreateString(s));
      free(s);
    }
  }
  char *out = cJSON_PrintUnformatted(root);
  E8Q_CHECK(out, "out of memory writing %s", path);
  cJSON_Delete(root);
  e8q_atomic_write_file(path, "tokenizer", out, strlen(out), NULL);
  free(out);
}
