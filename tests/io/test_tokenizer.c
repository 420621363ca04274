/* tests/io/test_tokenizer.c: SentencePiece tokenizer.model and llama2.c tokenizer.bin against the
 * golden ids of stories260K_tsval40.json, against each other, the fast encoder against its _ref
 * twin, decoding round trips, and writing a tokenizer.model. */
#define _GNU_SOURCE /* memfd_create */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/text.h"
#include "io/tokenizer.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

/* e8q_tokenizer_load of a file under ../shared */
static e8q_tokenizer *load_shared(const char *rel) {
  char *p = t_shared_path(rel);
  e8q_tokenizer *t = e8q_tokenizer_load(p);
  free(p);
  return t;
}

static void assert_ids_equal(const int *a, int na, const int *b, int nb, const char *what) {
  if (na != nb) fail_msg("%s: %d vs %d ids", what, na, nb);
  for (int i = 0; i < na; i++)
    if (a[i] != b[i]) fail_msg("%s: id %d differs: %d vs %d", what, i, a[i], b[i]);
}

/* the concatenated decoding of ids (after BOS) */
static char *decode_all(const e8q_tokenizer *t, const int *ids, int n) {
  size_t cap = 16, len = 0;
  char *s = malloc(cap);
  s[0] = 0;
  for (int i = 1; i < n; i++) {
    const char *p = e8q_tokenizer_decode(t, ids[i - 1], ids[i]);
    size_t k = strlen(p);
    while (len + k + 1 > cap) s = realloc(s, cap *= 2);
    memcpy(s + len, p, k);
    len += k;
    s[len] = 0;
  }
  return s;
}

/* ---------------------------------------------------------------- golden ids */

static void test_golden_first_line_both_formats(void **state) {
  (void)state;
  char *gpath = t_shared_path("golden/stories260K_tsval40.json");
  char *tpath = t_shared_path("text/tinystories_valid_head.txt");
  char *mpath = t_shared_path("models/stories260K/tok512.model");
  char *bpath = t_shared_path("models/stories260K/tok512.bin");
  size_t gn;
  char *gtext = t_read_file(gpath, &gn);
  cJSON *g = cJSON_Parse(gtext);
  assert_non_null(g);
  const cJSON *want = cJSON_GetObjectItem(g, "first_line_ids");
  assert_true(cJSON_IsArray(want));
  int nw = cJSON_GetArraySize(want);
  assert_true(nw > 10);

  char *text = e8q_text_read(tpath, NULL);
  char **lines;
  int nl = e8q_text_lines(text, 0, 1, &lines);
  assert_int_equal(nl, 1);
  const char *paths[2] = {mpath, bpath};
  for (int f = 0; f < 2; f++) {
    e8q_tokenizer *t = e8q_tokenizer_load(paths[f]);
    assert_int_equal(e8q_tokenizer_vocab_size(t), 512);
    int *ids;
    int n = e8q_tokenizer_encode(t, lines[0], 1, 0, &ids);
    if (n != nw) fail_msg("%s: %d ids, golden %d", paths[f], n, nw);
    for (int i = 0; i < n; i++)
      if (ids[i] != cJSON_GetArrayItem(want, i)->valueint)
        fail_msg("%s: id %d is %d, golden %d", paths[f], i, ids[i], cJSON_GetArrayItem(want, i)->valueint);
    /* decoding gives the line back */
    char *back = decode_all(t, ids, n);
    assert_string_equal(back, lines[0]);
    free(back);
    free(ids);
    e8q_tokenizer_free(t);
  }
  e8q_text_lines_free(lines, nl);
  free(text);
  cJSON_Delete(g);
  free(gtext);
  free(gpath);
  free(tpath);
  free(mpath);
  free(bpath);
}

/* .model and .bin agree on the first 200 lines; fast encoder equals _ref; decode round trips */
static void test_formats_agree_200_lines(void **state) {
  (void)state;
  char *tpath = t_shared_path("text/tinystories_valid_head.txt");
  char *mpath = t_shared_path("models/stories260K/tok512.model");
  char *bpath = t_shared_path("models/stories260K/tok512.bin");
  e8q_tokenizer *tm = e8q_tokenizer_load(mpath), *tb = e8q_tokenizer_load(bpath);
  for (int i = 0; i < 512; i++) { /* same pieces, same order */
    if (i == 1 || i == 2) continue; /* .bin stores BOS/EOS as "\n<s>\n" */
    assert_string_equal(e8q_tokenizer_piece(tm, i), e8q_tokenizer_piece(tb, i));
  }
  char *text = e8q_text_read(tpath, NULL);
  char **lines;
  int nl = e8q_text_lines(text, 0, 200, &lines);
  assert_int_equal(nl, 200);
  long total = 0;
  for (int l = 0; l < nl; l++) {
    int *a, *b, *r;
    int na = e8q_tokenizer_encode(tm, lines[l], 1, 1, &a);
    int nb = e8q_tokenizer_encode(tb, lines[l], 1, 1, &b);
    int nr = e8q_tokenizer_encode_ref(tb, lines[l], 1, 1, &r);
    assert_ids_equal(a, na, b, nb, ".model vs .bin");
    assert_ids_equal(a, na, r, nr, "encode vs encode_ref");
    assert_int_equal(a[0], 1);
    assert_int_equal(a[na - 1], 2);
    char *back = decode_all(tm, a, na - 1);
    assert_string_equal(back, lines[l]);
    free(back);
    total += na;
    free(a);
    free(b);
    free(r);
  }
  assert_true(total > 200 * 10);
  e8q_text_lines_free(lines, nl);
  free(text);
  e8q_tokenizer_free(tm);
  e8q_tokenizer_free(tb);
  free(tpath);
  free(mpath);
  free(bpath);
}

/* random byte strings (invalid UTF-8, control bytes, characters outside the vocabulary): the fast
 * encoder equals the _ref twin and decoding gives the bytes back */
static void test_encode_matches_ref_random(void **state) {
  (void)state;
  e8q_tokenizer *t = load_shared("models/stories260K/tok512.model");
  t_rng rng = {t_fresh_seed("tok_random")};
  static const char *alphabet[] = {"a", "e", "t", "h", " ", "  ", "the", "\n", "\xc3\xa9", "\xe2\x80\x99", "\xf0\x9f\x98\x80",
                                   "\xff", "\x80", "\x01", "Once", ",", "\xe4\xb8\xad"};
  int na = (int)(sizeof alphabet / sizeof alphabet[0]);
  for (int it = 0; it < 300; it++) {
    char buf[400];
    size_t len = 0;
    int parts = (int)(t_rng_u64(&rng) % 40);
    for (int k = 0; k < parts; k++) {
      const char *p = alphabet[t_rng_u64(&rng) % (uint64_t)na];
      size_t pl = strlen(p);
      memcpy(buf + len, p, pl);
      len += pl;
    }
    buf[len] = 0;
    int *a, *r;
    int n = e8q_tokenizer_encode(t, buf, 1, 0, &a);
    int nr = e8q_tokenizer_encode_ref(t, buf, 1, 0, &r);
    assert_ids_equal(a, n, r, nr, "encode vs encode_ref on random text");
    /* decoding restores valid UTF-8 text exactly; invalid bytes may group with the dummy-prefix
     * space (as in llama2.c), which then decodes as a byte and is not stripped */
    char *back = decode_all(t, a, n);
    if (e8q_utf8_check(buf, len) == len && strcmp(back, buf) != 0)
      fail_msg("round trip of a %zu-byte random string differs", len);
    if (strcmp(back, buf) != 0 && strcmp(back + 1, buf) != 0) fail_msg("round trip of invalid UTF-8 differs");
    free(back);
    free(a);
    free(r);
  }
  /* empty text: no dummy prefix, only BOS/EOS */
  int *ids;
  assert_int_equal(e8q_tokenizer_encode(t, "", 1, 1, &ids), 2);
  free(ids);
  /* a character outside the vocabulary falls back to its UTF-8 bytes <0xNN> = byte + 3 */
  int n = e8q_tokenizer_encode(t, "\xe4\xb8\xad", 0, 0, &ids);
  assert_int_equal(n, 4);
  assert_string_equal(e8q_tokenizer_piece(t, ids[0]), " ");
  assert_int_equal(ids[1], 0xe4 + 3);
  assert_int_equal(ids[2], 0xb8 + 3);
  assert_int_equal(ids[3], 0xad + 3);
  free(ids);
  e8q_tokenizer_free(t);
}

/* the whole 800 KB text in one call: fast encoder equals the per-line ids joined where lines
 * are independent is not guaranteed, so compare against _ref on an 8 KB prefix and check that
 * the full text round-trips */
static void test_encode_long_text(void **state) {
  (void)state;
  char *tpath = t_shared_path("text/tinystories_valid_head.txt");
  e8q_tokenizer *t = load_shared("models/stories260K/tok512.model");
  size_t len;
  char *text = e8q_text_read(tpath, &len);
  char saved = text[8000];
  text[8000] = 0;
  int *a, *r;
  int n = e8q_tokenizer_encode(t, text, 0, 0, &a);
  int nr = e8q_tokenizer_encode_ref(t, text, 0, 0, &r);
  assert_ids_equal(a, n, r, nr, "encode vs encode_ref on 8 KB");
  free(a);
  free(r);
  text[8000] = saved;
  n = e8q_tokenizer_encode(t, text, 1, 0, &a);
  assert_true(n > (int)(len / 8));
  char *back = decode_all(t, a, n);
  assert_int_equal(strlen(back), len);
  assert_true(strcmp(back, text) == 0);
  free(back);
  free(a);
  free(text);
  e8q_tokenizer_free(t);
  free(tpath);
}

/* ---------------------------------------------------------------- writing tokenizer.model */

static void test_write_spm_roundtrip(void **state) {
  (void)state;
  char *bpath = t_shared_path("models/stories260K/tok512.bin");
  e8q_tokenizer *src = e8q_tokenizer_load(bpath);
  int n = e8q_tokenizer_vocab_size(src);
  const char **pieces = malloc((size_t)n * sizeof(char *));
  float *scores = malloc((size_t)n * sizeof(float));
  int *types = malloc((size_t)n * sizeof(int));
  /* scores are not exposed: recover them from the .bin file itself (float, int32 len, bytes) */
  size_t fsz;
  char *raw = t_read_file(bpath, &fsz);
  size_t off = 4;
  for (int i = 0; i < n; i++) {
    int32_t l;
    memcpy(&scores[i], raw + off, 4);
    memcpy(&l, raw + off + 4, 4);
    off += 8 + (size_t)l;
    pieces[i] = e8q_tokenizer_piece(src, i);
    types[i] = i == 0 ? 2 : i <= 2 ? 3 : (i < 259 ? 6 : 1);
  }
  pieces[0] = "<unk>";
  pieces[1] = "<s>";
  pieces[2] = "</s>";
  char *dir = t_tmpdir("tok_write");
  char *out = t_join(dir, "tokenizer.model");
  e8q_tokenizer_write_spm(out, n, pieces, scores, types);
  e8q_tokenizer *back = e8q_tokenizer_load(out);
  assert_int_equal(e8q_tokenizer_vocab_size(back), n);
  for (int i = 0; i < n; i++) assert_string_equal(e8q_tokenizer_piece(back, i), pieces[i]);
  /* the written file is byte-identical in its pieces to the reference tok512.model */
  e8q_tokenizer *ref = load_shared("models/stories260K/tok512.model");
  const char *samples[] = {"Once upon a time, there was a little girl named Lily.", "  two  spaces ", "\xe4\xb8\xad!", ""};
  for (size_t s = 0; s < sizeof samples / sizeof samples[0]; s++) {
    int *a, *b;
    int na = e8q_tokenizer_encode(back, samples[s], 1, 0, &a);
    int nb = e8q_tokenizer_encode(ref, samples[s], 1, 0, &b);
    assert_ids_equal(a, na, b, nb, "written tokenizer.model vs tok512.model");
    free(a);
    free(b);
  }
  /* the tokenizer is found in a model directory */
  char *found = e8q_tokenizer_find(dir, 0);
  assert_non_null(found);
  assert_string_equal(found, out);
  free(found);
  char *d260 = t_shared_path("models/stories260K/stories260K.bin");
  found = e8q_tokenizer_find(d260, 512);
  assert_non_null(found);
  assert_non_null(strstr(found, "tok512.model"));
  free(found);
  free(d260);
  /* llama2.c directory with several tokenizers: the model's vocabulary size picks one, else the
   * first in byte order; tokenizer.bin beats both */
  char *ld = t_tmpdir("tok_find"), lp[1024];
  const char *names[] = {"m.bin", "tok256.bin", "tok512.bin"};
  for (int i = 0; i < 3; i++) {
    snprintf(lp, sizeof lp, "%s/%s", ld, names[i]);
    t_write_file(lp, "x", 1);
  }
  snprintf(lp, sizeof lp, "%s/m.bin", ld);
  const char *want[] = {"/tok512.bin", "/tok256.bin", "/tok256.bin"};
  const int vocab[] = {512, 0, 300};
  for (int i = 0; i < 3; i++) {
    found = e8q_tokenizer_find(lp, vocab[i]);
    assert_non_null(found);
    assert_non_null(strstr(found, want[i]));
    free(found);
  }
  snprintf(lp, sizeof lp, "%s/tokenizer.bin", ld);
  t_write_file(lp, "x", 1);
  found = e8q_tokenizer_find(ld, 512);
  assert_string_equal(found, lp);
  free(found);
  snprintf(lp, sizeof lp, "%s/nothing-here", ld);
  assert_null(e8q_tokenizer_find(lp, 512));
  free(ld);
  e8q_tokenizer_free(ref);
  e8q_tokenizer_free(back);
  e8q_tokenizer_free(src);
  free(raw);
  free(out);
  free(dir);
  free(pieces);
  free(scores);
  free(types);
  free(bpath);
}

/* ---------------------------------------------------------------- bad input */

static void test_vocab_mismatch(void **state) {
  (void)state;
  e8q_tokenizer *t = load_shared("models/stories260K/tok512.model");
  e8q_tokenizer_check_vocab(t, 512, "stories260K");
  E8Q_EXPECT_FATAL(e8q_tokenizer_check_vocab(t, 32000, "llama-7b"), "tok512.model", "512", "32000", "llama-7b");
  E8Q_EXPECT_FATAL(e8q_tokenizer_decode(t, 1, 512), "tok512.model", "512");
  e8q_tokenizer_free(t);
}

/* 1 when loading path is a fatal error naming it; 0 when it loads (a smaller vocabulary) */
static int load_fails(const char *path) {
  e8q_error_trap trap;
  if (setjmp(trap.env) == 0) {
    e8q_error_trap_arm(&trap);
    e8q_tokenizer *t = e8q_tokenizer_load(path);
    e8q_error_trap_arm(NULL);
    assert_true(e8q_tokenizer_vocab_size(t) < 512);
    e8q_tokenizer_free(t);
    return 0;
  }
  assert_non_null(strstr(trap.message, path));
  return 1;
}

/* every truncation of tokenizer.model inside a piece is a fatal error or a smaller valid
 * vocabulary (protobuf has no end marker), never a crash */
static void test_truncated_model(void **state) {
  (void)state;
  size_t n;
  char *raw = t_read_shared("models/stories260K/tok512.model", &n, NULL);
  char *dir = t_tmpdir("tok_trunc");
  char *p = t_join(dir, "tokenizer.model");
  /* the variants live in memory (memfd opened by its /proc path): no disk I/O per variant */
  int mfd = memfd_create("e8q_tok_trunc", 0);
  char mpathbuf[64];
  if (mfd >= 0) snprintf(mpathbuf, sizeof mpathbuf, "/proc/self/fd/%d", mfd);
  const char *vp = mfd >= 0 ? mpathbuf : p;
  int fatal = 0;
  for (size_t cut = 1; cut < 4000; cut += 7) {
    if (mfd >= 0) {
      assert_int_equal(ftruncate(mfd, 0), 0);
      assert_int_equal(pwrite(mfd, raw, cut, 0), (ssize_t)cut);
    } else {
      t_write_file(p, raw, cut);
    }
    fatal += load_fails(vp);
  }
  if (mfd >= 0) close(mfd);
  assert_true(fatal > 0);
  /* a piece length running past the end */
  t_write_file(p, raw, 5);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "past the end");
  free(p);
  free(dir);
  free(raw);
}

/* a text file and the id file of its encoding give the same ids; an id file with an id outside
 * the tokenizer's vocabulary is refused */
static void test_encode_file_text_and_ids(void **state) {
  (void)state;
  e8q_tokenizer *t = load_shared("models/stories260K/tok512.model");
  char *dir = t_tmpdir("tok_file");
  char *txt = t_join(dir, "calib.txt"), *idf = t_join(dir, "calib.ids");
  const char *s = "Lily and Ben went to the park.\nThey saw a big dog!\n";
  t_write_file(txt, s, strlen(s));
  int *a, *b;
  size_t na = e8q_tokenizer_encode_file(t, txt, 1, &a);
  assert_true(na > 10);
  assert_int_equal(a[0], 1);
  e8q_ids_write(idf, a + 1, na - 1); /* without BOS: added on read */
  size_t nb = e8q_tokenizer_encode_file(t, idf, 1, &b);
  assert_ids_equal(a, (int)na, b, (int)nb, "text vs id file");
  free(b);
  a[3] = 512;
  e8q_ids_write(idf, a, na);
  E8Q_EXPECT_FATAL(e8q_tokenizer_encode_file(t, idf, 1, &b), idf, "token id 512", "index 3");
  free(a);
  free(txt);
  free(idf);
  free(dir);
  e8q_tokenizer_free(t);
}

/* a truncated or corrupted tokenizer.bin is refused naming the file */
static void test_bad_bin(void **state) {
  (void)state;
  size_t n;
  char *raw = t_read_shared("models/stories260K/tok512.bin", &n, NULL);
  char *dir = t_tmpdir("tok_bin");
  char *p = t_join(dir, "tokenizer.bin");
  t_write_file(p, raw, n - 3);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "not a valid llama2.c tokenizer.bin");
  int32_t huge = 1 << 30; /* first token's length */
  memcpy(raw + 8, &huge, 4);
  t_write_file(p, raw, n);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "not a valid llama2.c tokenizer.bin");
  free(p);
  free(dir);
  free(raw);
}

/* what is not a tokenizer file at all is refused naming the file, a huge one before it is read */
static void test_not_a_tokenizer_file(void **state) {
  (void)state;
  char *dir = t_tmpdir("tok_notfile");
  char *p = t_join(dir, "tokenizer.model");
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), "cannot open tokenizer file", p);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(dir), dir, "not a regular file", "tokenizer file");
  t_write_file(p, "", 0);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "0 bytes, not a tokenizer file");
  assert_int_equal(truncate(p, 300L << 20), 0); /* sparse */
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "314572800 bytes, not a tokenizer file");
  unlink(p);
  free(p);
  free(dir);
}

/* loads path and encodes a sample; 1 when loading raised a fatal error naming the file */
static int fuzz_load_encode(const char *path) {
  e8q_error_trap trap;
  if (setjmp(trap.env) == 0) {
    e8q_error_trap_arm(&trap);
    e8q_tokenizer *t = e8q_tokenizer_load(path);
    e8q_error_trap_arm(NULL);
    int *a, *b;
    const char *sample = "Once upon a time, \xe4\xb8\xad a little dog.";
    int na = e8q_tokenizer_encode(t, sample, 1, 1, &a);
    int nb = e8q_tokenizer_encode_ref(t, sample, 1, 1, &b);
    assert_ids_equal(a, na, b, nb, "fuzzed vocabulary: encode vs encode_ref");
    for (int i = 0; i < na; i++) {
      assert_true(a[i] >= 0 && a[i] < e8q_tokenizer_vocab_size(t));
      (void)e8q_tokenizer_decode(t, i ? a[i - 1] : -1, a[i]);
    }
    free(a);
    free(b);
    e8q_tokenizer_free(t);
    return 0;
  }
  assert_non_null(strstr(trap.message, path));
  return 1;
}

/* a byte piece whose digits are not two hex digits ("<0x-1>": sscanf's %X takes a sign and gave
 * byte 0xFFFFFFFF, an out-of-bounds write found by test_fuzz_model_edits) is refused by name */
static void test_bad_byte_piece(void **state) {
  (void)state;
  const char *pieces[] = {"<unk>", "<s>", "</s>", "<0x41>", "<0x-1>", "a"};
  const float scores[] = {0, 0, 0, 0, 0, -1};
  const int types[] = {2, 3, 3, 6, 6, 1};
  char *dir = t_tmpdir("tok_badbyte");
  char *out = t_join(dir, "tokenizer.model");
  e8q_tokenizer_write_spm(out, 6, pieces, scores, types);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(out), out, "byte piece 4", "<0x-1>");
  free(out);
  free(dir);
}

/* random byte edits of tokenizer.model: a fatal error naming the file or a loadable vocabulary
 * that encodes without crashing; never a crash */
static void test_fuzz_model_edits(void **state) {
  (void)state;
  size_t n;
  char *raw = t_read_shared("models/stories260K/tok512.model", &n, NULL);
  int mfd = memfd_create("e8q_tok_fuzz", 0);
  if (mfd < 0) skip();
  char vp[64];
  snprintf(vp, sizeof vp, "/proc/self/fd/%d", mfd);
  t_rng rng = {t_fresh_seed("tok_fuzz")};
  char *mut = malloc(n);
  int fails = 0, loads = 0;
  for (int it = 0; it < 400; it++) {
    memcpy(mut, raw, n);
    int edits = 1 + (int)(t_rng_u64(&rng) % 4);
    for (int e = 0; e < edits; e++) mut[t_rng_u64(&rng) % n] = (char)t_rng_u64(&rng);
    assert_int_equal(ftruncate(mfd, 0), 0);
    assert_int_equal(pwrite(mfd, mut, n, 0), (ssize_t)n);
    if (fuzz_load_encode(vp)) fails++;
    else loads++;
  }
  print_message("tokenizer.model edits: %d loaded, %d refused\n", loads, fails);
  close(mfd);
  free(mut);
  free(raw);
}

/* a SentencePiece model that is not BPE (model_type 1 = unigram) is refused */
static void test_unigram_refused(void **state) {
  (void)state;
  size_t n;
  char *raw = t_read_shared("models/stories260K/tok512.model", &n, NULL);
  /* TrainerSpec: field 3 (model_type, key 0x18) = 2, then field 4 (vocab_size, key 0x20) */
  char *at = NULL;
  for (size_t i = 0; i + 3 < n && !at; i++)
    if (raw[i] == 0x18 && raw[i + 1] == 0x02 && raw[i + 2] == 0x20) at = raw + i;
  assert_non_null(at);
  at[1] = 0x01;
  char *dir = t_tmpdir("tok_unigram");
  char *p = t_join(dir, "tokenizer.model");
  t_write_file(p, raw, n);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "model_type 1 is not BPE");
  free(p);
  free(dir);
  free(raw);
}

/* A vocabulary with pieces that hold a space after another character ("e t", "d a") cannot be
 * split into words: the encoder then merges over the whole text. Both paths equal the _ref twin,
 * and the added pieces are really used. */
static void test_encode_unsplittable_vocab(void **state) {
  (void)state;
  char *bpath = t_shared_path("models/stories260K/tok512.bin");
  char *tpath = t_shared_path("text/tinystories_valid_head.txt");
  e8q_tokenizer *src = e8q_tokenizer_load(bpath);
  size_t fsz;
  char *raw = t_read_file(bpath, &fsz);
  int n = 512 + 2;
  const char **pieces = malloc((size_t)n * sizeof(char *));
  float *scores = malloc((size_t)n * sizeof(float));
  int *types = malloc((size_t)n * sizeof(int));
  size_t off = 4;
  for (int i = 0; i < 512; i++) {
    int32_t l;
    memcpy(&scores[i], raw + off, 4);
    memcpy(&l, raw + off + 4, 4);
    off += 8 + (size_t)l;
    pieces[i] = i == 1 ? "<s>" : i == 2 ? "</s>" : e8q_tokenizer_piece(src, i);
    types[i] = i == 0 ? 2 : i <= 2 ? 3 : (i < 259 ? 6 : 1);
  }
  pieces[512] = "e t", scores[512] = 10.0f, types[512] = 1;
  pieces[513] = "d a", scores[513] = -0.5f, types[513] = 1;
  char *dir = t_tmpdir("tok_unsplit");
  char *out = t_join(dir, "tokenizer.model");
  e8q_tokenizer_write_spm(out, n, pieces, scores, types);
  e8q_tokenizer *t = e8q_tokenizer_load(out);
  char *text = e8q_text_read(tpath, NULL);
  text[6000] = 0;
  int *a, *r;
  int na = e8q_tokenizer_encode(t, text, 1, 0, &a);
  int nr = e8q_tokenizer_encode_ref(t, text, 1, 0, &r);
  assert_ids_equal(a, na, r, nr, "unsplittable vocabulary: encode vs encode_ref");
  int used512 = 0, used513 = 0;
  for (int i = 0; i < na; i++) used512 += a[i] == 512, used513 += a[i] == 513;
  assert_true(used512 > 0 && used513 > 0);
  char *back = decode_all(t, a, na);
  assert_string_equal(back, text);
  free(back);
  free(a);
  free(r);
  /* the splittable stock vocabulary gives the same ids as _ref on the same text */
  na = e8q_tokenizer_encode(src, text, 1, 0, &a);
  nr = e8q_tokenizer_encode_ref(src, text, 1, 0, &r);
  assert_ids_equal(a, na, r, nr, "stock vocabulary: encode vs encode_ref");
  free(a);
  free(r);
  free(text);
  e8q_tokenizer_free(t);
  e8q_tokenizer_free(src);
  free(out);
  free(dir);
  free(raw);
  free(pieces);
  free(scores);
  free(types);
  free(tpath);
  free(bpath);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_first_line_both_formats),
      cmocka_unit_test(test_formats_agree_200_lines),
      cmocka_unit_test(test_encode_matches_ref_random),
      cmocka_unit_test(test_encode_long_text),
      cmocka_unit_test(test_encode_unsplittable_vocab),
      cmocka_unit_test(test_write_spm_roundtrip),
      cmocka_unit_test(test_vocab_mismatch),
      cmocka_unit_test(test_encode_file_text_and_ids),
      cmocka_unit_test(test_truncated_model),
      cmocka_unit_test(test_bad_bin),
      cmocka_unit_test(test_not_a_tokenizer_file),
      cmocka_unit_test(test_bad_byte_piece),
      cmocka_unit_test(test_fuzz_model_edits),
      cmocka_unit_test(test_unigram_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
