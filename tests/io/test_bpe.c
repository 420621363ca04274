/* tests/io/test_bpe.c: byte-level BPE tokenizers (io/bpe.h through io/tokenizer.h).
 *   - SmolLM2 from its GGUF: all of wiki.test.raw against golden/smollm2/wiki_test_ids.u32 (fast
 *     and _ref), golden/smollm2/edge_ids.json, decode round trips, speed;
 *   - the same through a tokenizer.json written by e8q_tokenizer_write_json (and read back by the
 *     Python `tokenizers` package when installed) and through one made by `tokenizers`
 *     (scripts/bpe_golden.py hf-json, at test time when python3 has tokenizers and gguf);
 *   - tiny Llama-3-style and Qwen-2-style tokenizer.json files (tests/io/data/bpe_tiny_*.json,
 *     made by scripts/bpe_golden.py tiny) against the ids `tokenizers` gave (bpe_tiny_golden.json);
 *   - refused inputs (bad tokenizer.json files, invalid UTF-8) with their messages;
 *   - GGUF metadata written here: "llama" (tok512 of stories260K, the SentencePiece path, against
 *     tok512.model) and a small "gpt2" one (ids, BOS flag through tokenizer.json, refusals);
 *   - e8q_tokenizer_find for HF directories and GGUF files. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/text.h"
#include "io/tokenizer.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

/* a path in the source tree (this file is tests/io/test_bpe.c) */
static char *repo_path(const char *rel) {
  const char *me = __FILE__;
  const char *tail = strstr(me, "tests/io/test_bpe.c");
  if (!tail) fail_msg("cannot find the source tree from %s", me);
  size_t root = (size_t)(tail - me);
  char *p = malloc(root + strlen(rel) + 1);
  memcpy(p, me, root);
  strcpy(p + root, rel);
  return p;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void assert_ids_equal(const int *a, int na, const int *b, int nb, const char *what) {
  int n = na < nb ? na : nb;
  for (int i = 0; i < n; i++)
    if (a[i] != b[i]) fail_msg("%s: id %d differs: %d vs %d (of %d and %d ids)", what, i, a[i], b[i], na, nb);
  if (na != nb) fail_msg("%s: %d vs %d ids", what, na, nb);
}

/* ids of a JSON array */
static int json_ids(const cJSON *arr, int **ids) {
  if (!cJSON_IsArray(arr)) fail_msg("golden ids are not an array");
  int n = cJSON_GetArraySize(arr);
  *ids = malloc(((size_t)n + 1) * sizeof(int));
  for (int i = 0; i < n; i++) (*ids)[i] = cJSON_GetArrayItem(arr, i)->valueint;
  return n;
}

/* the concatenated decoding of ids, with its length (tokens may hold NUL-free partial UTF-8) */
static char *decode_all(const e8q_tokenizer *t, const int *ids, int n, size_t *len) {
  size_t cap = 1024, k = 0;
  char *s = malloc(cap);
  for (int i = 0; i < n; i++) {
    const char *p = e8q_tokenizer_decode(t, i ? ids[i - 1] : -1, ids[i]);
    size_t m = strlen(p);
    while (k + m + 1 > cap) s = realloc(s, cap *= 2);
    memcpy(s + k, p, m);
    k += m;
  }
  s[k] = 0;
  *len = k;
  return s;
}

static void assert_round_trip(const e8q_tokenizer *t, const char *text, const int *ids, int n, const char *what) {
  size_t len;
  char *back = decode_all(t, ids, n, &len);
  size_t tl = strlen(text);
  if (len != tl || memcmp(back, text, tl) != 0) {
    size_t i = 0;
    while (i < len && i < tl && back[i] == text[i]) i++;
    fail_msg("%s: decode(encode(text)) differs from the text at byte %zu (%zu vs %zu bytes)", what, i, len, tl);
  }
  free(back);
}

static int python_has(const char *modules) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "python3 -c 'import %s' >/dev/null 2>&1", modules);
  return system(cmd) == 0;
}

/* text through t, fast and _ref, == the ids of want_json (a JSON array), and decoded back to text;
 * msg names the case in failures */
static void check_encode(const e8q_tokenizer *t, const char *text, const cJSON *want_json, const char *msg) {
  int *want, *a, *r;
  int nw = json_ids(want_json, &want);
  int na = e8q_tokenizer_encode(t, text, 0, 0, &a);
  int nr = e8q_tokenizer_encode_ref(t, text, 0, 0, &r);
  assert_ids_equal(a, na, want, nw, msg);
  assert_ids_equal(r, nr, want, nw, msg);
  assert_round_trip(t, text, a, na, msg);
  free(want);
  free(a);
  free(r);
}

/* ---------------------------------------------------------------- SmolLM2 goldens */

typedef struct {
  char *gguf;     /* the model (t_smollm2_path: skips the test when it is missing) */
  char *text;     /* wiki.test.raw */
  int *want;      /* golden ids */
  int n_want;
  cJSON *edge;    /* edge_ids.json */
} smol_golden;

static void smol_load(smol_golden *g) {
  g->gguf = t_smollm2_path();
  char *tp = t_shared_path("text/wiki.test.raw");
  char *ip = t_shared_path("golden/smollm2/wiki_test_ids.u32");
  char *ep = t_shared_path("golden/smollm2/edge_ids.json");
  g->text = e8q_text_read(tp, NULL);
  g->n_want = (int)e8q_ids_read(ip, 0, &g->want);
  assert_int_equal(g->n_want, 303415);
  size_t n;
  char *e = t_read_file(ep, &n);
  g->edge = cJSON_Parse(e);
  assert_non_null(g->edge);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(g->edge, "cases")), 18);
  free(e);
  free(tp);
  free(ip);
  free(ep);
}

static void smol_free(smol_golden *g) {
  free(g->gguf);
  free(g->text);
  free(g->want);
  cJSON_Delete(g->edge);
}

/* wiki.test.raw (fast, and _ref when ref), the edge cases, round trips */
static void smol_check(const e8q_tokenizer *t, const smol_golden *g, int ref, const char *what) {
  char msg[512];
  int *ids;
  double t0 = now_s();
  int n = e8q_tokenizer_encode(t, g->text, 0, 0, &ids);
  double dt = now_s() - t0;
  print_message("%s: wiki.test.raw (%zu bytes) -> %d ids in %.3f s (%.1f MB/s)\n", what, strlen(g->text), n, dt,
                (double)strlen(g->text) / dt / 1e6);
  snprintf(msg, sizeof msg, "%s: wiki.test.raw vs wiki_test_ids.u32", what);
  assert_ids_equal(ids, n, g->want, g->n_want, msg);
  snprintf(msg, sizeof msg, "%s: wiki.test.raw", what);
  assert_round_trip(t, g->text, ids, n, msg);
  if (dt > 5.0) fail_msg("%s: encoding wiki.test.raw took %.2f s (budget 5 s)", what, dt);
  if (ref) {
    int *r;
    int nr = e8q_tokenizer_encode_ref(t, g->text, 0, 0, &r);
    snprintf(msg, sizeof msg, "%s: encode vs encode_ref over wiki.test.raw", what);
    assert_ids_equal(ids, n, r, nr, msg);
    free(r);
  }
  free(ids);
  const cJSON *c;
  int k = 0;
  cJSON_ArrayForEach(c, cJSON_GetObjectItem(g->edge, "cases")) {
    const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
    snprintf(msg, sizeof msg, "%s: edge case %d (%.40s)", what, k, text);
    check_encode(t, text, cJSON_GetObjectItem(c, "ids"), msg);
    k++;
  }
}

static void test_smollm2_gguf(void **state) {
  (void)state;
  smol_golden g;
  smol_load(&g);
  e8q_tokenizer *t = e8q_tokenizer_load(g.gguf);
  assert_true(e8q_tokenizer_is_bpe(t));
  assert_int_equal(e8q_tokenizer_vocab_size(t), 49152);
  assert_int_equal(e8q_tokenizer_add_bos(t), 0); /* tokenizer.ggml.add_bos_token false */
  assert_int_equal(e8q_tokenizer_bos_id(t), 1);
  assert_int_equal(e8q_tokenizer_eos_id(t), 2);
  assert_string_equal(e8q_tokenizer_decode(t, -1, 1), "<|im_start|>");
  assert_string_equal(e8q_tokenizer_piece(t, 216), " "); /* "Ġ" */
  smol_check(t, &g, 1, "SmolLM2 GGUF");
  /* BOS / EOS on request */
  int *ids;
  int n = e8q_tokenizer_encode(t, "Hello world", 1, 1, &ids);
  assert_int_equal(n, 4);
  assert_int_equal(ids[0], 1);
  assert_int_equal(ids[1], 19556);
  assert_int_equal(ids[2], 905);
  assert_int_equal(ids[3], 2);
  free(ids);
  n = e8q_tokenizer_encode(t, "", 0, 0, &ids);
  assert_int_equal(n, 0);
  free(ids);
  e8q_tokenizer_free(t);
  smol_free(&g);
}

/* the tokenizer.json e8q writes gives the same ids, and `tokenizers` reads it to the same ids */
static void test_smollm2_write_json(void **state) {
  (void)state;
  smol_golden g;
  smol_load(&g);
  char *dir = t_tmpdir("bpe_write");
  char *out = t_join(dir, "tokenizer.json");
  e8q_tokenizer *t = e8q_tokenizer_load(g.gguf);
  e8q_tokenizer_write_json(t, out);
  e8q_tokenizer_free(t);
  t = e8q_tokenizer_load(out);
  assert_true(e8q_tokenizer_is_bpe(t));
  assert_int_equal(e8q_tokenizer_vocab_size(t), 49152);
  assert_int_equal(e8q_tokenizer_add_bos(t), 0);
  smol_check(t, &g, 0, "SmolLM2 via e8q's tokenizer.json");
  /* written twice: the same bytes */
  char *out2 = t_join(dir, "again.json");
  e8q_tokenizer_write_json(t, out2);
  size_t n1, n2;
  char *a = t_read_file(out, &n1), *b = t_read_file(out2, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(a, b, n1);
  free(a);
  free(b);
  e8q_tokenizer_free(t);
  if (python_has("tokenizers")) {
    char *script = repo_path("scripts/bpe_golden.py");
    char *edge = t_shared_path("golden/smollm2/edge_ids.json");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "python3 '%s' check '%s' '%s'", script, out, edge);
    if (system(cmd) != 0) fail_msg("the Python tokenizers package does not read %s to the golden ids: %s", out, cmd);
    free(script);
    free(edge);
  } else {
    print_message("python3 with the tokenizers package is not available: not checking that it reads %s\n", out);
  }
  free(out);
  free(out2);
  free(dir);
  smol_free(&g);
}

/* a tokenizer.json made by the Python tokenizers package from the GGUF's vocabulary */
static void test_smollm2_hf_json(void **state) {
  (void)state;
  if (!python_has("tokenizers, gguf")) {
    print_message("python3 with the tokenizers and gguf packages is not available: skipping (pip install "
                  "tokenizers gguf)\n");
    skip();
  }
  smol_golden g;
  smol_load(&g);
  char *dir = t_tmpdir("bpe_hf");
  char *out = t_join(dir, "tokenizer.json");
  char *script = repo_path("scripts/bpe_golden.py");
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "python3 '%s' hf-json '%s' '%s'", script, g.gguf, out);
  if (system(cmd) != 0) fail_msg("%s failed", cmd);
  e8q_tokenizer *t = e8q_tokenizer_load(out);
  assert_int_equal(e8q_tokenizer_vocab_size(t), 49152);
  assert_int_equal(e8q_tokenizer_add_bos(t), 0);
  smol_check(t, &g, 0, "SmolLM2 via tokenizers' tokenizer.json");
  e8q_tokenizer_free(t);
  free(script);
  free(out);
  free(dir);
  smol_free(&g);
}

/* ---------------------------------------------------------------- tiny Llama 3 / Qwen 2 */

static void tiny_check(const e8q_tokenizer *t, const cJSON *golden, const char *name, const char *wiki) {
  char msg[512];
  const cJSON *c;
  int k = 0;
  cJSON_ArrayForEach(c, cJSON_GetObjectItem(golden, "cases")) {
    const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
    snprintf(msg, sizeof msg, "%s: case %d (%.40s)", name, k, text);
    check_encode(t, text, cJSON_GetObjectItem(c, name), msg);
    k++;
  }
  assert_true(k >= 15);
  /* the first wiki_head_bytes of wiki.test.raw */
  size_t hb = (size_t)cJSON_GetObjectItem(golden, "wiki_head_bytes")->valuedouble;
  char *head = strndup(wiki, hb);
  char key[64];
  snprintf(key, sizeof key, "%s_wiki_head", name);
  snprintf(msg, sizeof msg, "%s: wiki.test.raw head", name);
  check_encode(t, head, cJSON_GetObjectItem(golden, key), msg);
  /* with the model's own BOS flag, as tokenizers adds special tokens */
  snprintf(key, sizeof key, "%s_bos", name);
  int *want, *a;
  int nw = json_ids(cJSON_GetObjectItem(golden, key), &want);
  int na = e8q_tokenizer_encode(t, "Hello world", e8q_tokenizer_add_bos(t), 0, &a);
  snprintf(msg, sizeof msg, "%s: with its BOS flag", name);
  assert_ids_equal(a, na, want, nw, msg);
  free(want);
  free(a);
  free(head);
}

static void test_tiny_llama3_qwen2(void **state) {
  (void)state;
  char *gp = repo_path("tests/io/data/bpe_tiny_golden.json");
  char *wp = t_shared_path("text/wiki.test.raw");
  char *wiki = e8q_text_read(wp, NULL);
  size_t n;
  char *gs = t_read_file(gp, &n);
  cJSON *golden = cJSON_Parse(gs);
  assert_non_null(golden);
  char *dir = t_tmpdir("bpe_tiny");
  const char *names[2] = {"llama3", "qwen2"};
  for (int f = 0; f < 2; f++) {
    char rel[128];
    snprintf(rel, sizeof rel, "tests/io/data/bpe_tiny_%s.json", names[f]);
    char *p = repo_path(rel);
    e8q_tokenizer *t = e8q_tokenizer_load(p);
    assert_true(e8q_tokenizer_is_bpe(t));
    assert_int_equal(e8q_tokenizer_vocab_size(t), 603);
    /* llama3: TemplateProcessing with <|begin_of_text|> (id 0); qwen2: no post-processor */
    assert_int_equal(e8q_tokenizer_add_bos(t), f == 0);
    if (f == 0) assert_int_equal(e8q_tokenizer_bos_id(t), 0);
    assert_string_equal(e8q_tokenizer_decode(t, -1, 1), "<|end_of_text|>");
    tiny_check(t, golden, names[f], wiki);
    /* written by e8q and read back: the same ids and flags */
    char *out = t_join(dir, "tokenizer.json");
    e8q_tokenizer_write_json(t, out);
    e8q_tokenizer *t2 = e8q_tokenizer_load(out);
    assert_int_equal(e8q_tokenizer_add_bos(t2), e8q_tokenizer_add_bos(t));
    assert_int_equal(e8q_tokenizer_bos_id(t2), e8q_tokenizer_bos_id(t));
    tiny_check(t2, golden, names[f], wiki);
    e8q_tokenizer_free(t2);
    e8q_tokenizer_free(t);
    free(out);
    free(p);
  }
  free(dir);
  cJSON_Delete(golden);
  free(gs);
  free(wiki);
  free(wp);
  free(gp);
}

/* BOS / EOS of a tokenizer.json without a BOS template: tokenizer_config.json, else config.json beside it */
static void test_bos_eos_beside(void **state) {
  (void)state;
  char *src = repo_path("tests/io/data/bpe_tiny_qwen2.json");
  size_t n;
  char *s = t_read_file(src, &n);
  char *dir = t_tmpdir("bpe_beside");
  char *p = t_join(dir, "tokenizer.json");
  t_write_file(p, s, n);
  e8q_tokenizer *t = e8q_tokenizer_load(p);
  assert_int_equal(e8q_tokenizer_bos_id(t), -1);
  assert_int_equal(e8q_tokenizer_eos_id(t), -1);
  e8q_tokenizer_free(t);
  char *cfg = t_join(dir, "config.json");
  const char cj[] = "{\"bos_token_id\": 1, \"eos_token_id\": 0}";
  t_write_file(cfg, cj, strlen(cj));
  t = e8q_tokenizer_load(p);
  assert_int_equal(e8q_tokenizer_bos_id(t), 1);
  assert_int_equal(e8q_tokenizer_eos_id(t), 0);
  assert_int_equal(e8q_tokenizer_add_bos(t), 0);
  e8q_tokenizer_free(t);
  char *tc = t_join(dir, "tokenizer_config.json"); /* wins over config.json */
  const char tj[] = "{\"bos_token\": \"<|begin_of_text|>\", \"eos_token\": {\"content\": \"<|end_of_text|>\"}}";
  t_write_file(tc, tj, strlen(tj));
  t = e8q_tokenizer_load(p);
  assert_int_equal(e8q_tokenizer_bos_id(t), 0);
  assert_int_equal(e8q_tokenizer_eos_id(t), 1);
  int *ids;
  int k = e8q_tokenizer_encode(t, "a", 1, 1, &ids);
  assert_int_equal(k, 3);
  assert_int_equal(ids[0], 0);
  assert_int_equal(ids[2], 1);
  free(ids);
  e8q_tokenizer_free(t);
  free(tc);
  free(cfg);
  free(p);
  free(dir);
  free(s);
  free(src);
}

/* ---------------------------------------------------------------- refused inputs */

/* the tiny Llama 3 tokenizer.json with one edit (a JSON path set to a value, NULL deletes) */
static char *tiny_edited(const char *dir, const char *name, void (*edit)(cJSON *root)) {
  char *src = repo_path("tests/io/data/bpe_tiny_llama3.json");
  size_t n;
  char *s = t_read_file(src, &n);
  cJSON *root = cJSON_Parse(s);
  assert_non_null(root);
  edit(root);
  char *out = cJSON_PrintUnformatted(root);
  char *p = t_join(dir, name);
  t_write_file(p, out, strlen(out));
  free(out);
  cJSON_Delete(root);
  free(s);
  free(src);
  return p;
}

static void edit_model_type(cJSON *r) {
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, "model"), "type", cJSON_CreateString("Unigram"));
}
static void edit_no_vocab(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "model"), "vocab"); }
static void edit_bad_merge(cJSON *r) {
  cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "model"), "merges");
  const char *two[2] = {"Ġ", "nosuchtoken"};
  cJSON_ReplaceItemInArray(m, 3, cJSON_CreateStringArray(two, 2));
}
static void edit_bad_merge_result(cJSON *r) {
  cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "model"), "merges");
  const char *two[2] = {"Q", "Z"}; /* both tokens exist, "QZ" does not */
  cJSON_ReplaceItemInArray(m, 5, cJSON_CreateStringArray(two, 2));
}
static void edit_metaspace(cJSON *r) {
  cJSON *p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "type", "Metaspace");
  cJSON_ReplaceItemInObject(r, "pre_tokenizer", p);
}
static void edit_unknown_regex(cJSON *r) {
  cJSON *split = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "pre_tokenizer"), "pretokenizers"), 0);
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(split, "pattern"), "Regex", cJSON_CreateString("\\w+|\\s+"));
}
static void edit_gap(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "model"), "vocab"), "e"); }

static void test_bad_json(void **state) {
  (void)state;
  char *dir = t_tmpdir("bpe_bad");
  /* the tiny tokenizer.json edited by `edit`, written as dir/file, refused with the path and every needle */
#define REFUSED_EDIT(file, edit, ...)                                     \
  do {                                                                    \
    char *p_ = tiny_edited(dir, (file), (edit));                          \
    E8Q_EXPECT_FATAL(e8q_tokenizer_load(p_), p_, __VA_ARGS__);            \
    free(p_);                                                             \
  } while (0)
  REFUSED_EDIT("type.json", edit_model_type, "model.type", "Unigram", "BPE");
  REFUSED_EDIT("novocab.json", edit_no_vocab, "model.vocab", "missing");
  REFUSED_EDIT("merge.json", edit_bad_merge, "model.merges[3]", "nosuchtoken", "not in the vocabulary");
  REFUSED_EDIT("merge2.json", edit_bad_merge_result, "model.merges[5]", "merged token \"QZ\"", "not in the vocabulary");
  REFUSED_EDIT("pre.json", edit_metaspace, "pre_tokenizer", "Metaspace", "not a structure e8q implements");
  REFUSED_EDIT("regex.json", edit_unknown_regex, "pre_tokenizer.pretokenizers[0].pattern.Regex", "\\w+|\\s+");
  REFUSED_EDIT("gap.json", edit_gap, "neither model.vocab nor added_tokens");
#undef REFUSED_EDIT
  /* not JSON at all, under a .json name; and a '{' file under another name is read as JSON */
  char *p = t_join(dir, "broken.json");
  t_write_file(p, "{\"model\": [", 11);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p), p, "not valid JSON");
  free(p);
  char *p2 = t_join(dir, "tokenizer.model");
  t_write_file(p2, "  {\"model\": {\"type\": \"WordPiece\"}}", 35);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(p2), p2, "model.type \"WordPiece\"");
  free(p2);
  free(dir);
}

/* invalid UTF-8 is refused with the byte offset (and the file name through encode_file) */
static void test_invalid_utf8(void **state) {
  (void)state;
  char *tp = repo_path("tests/io/data/bpe_tiny_qwen2.json");
  e8q_tokenizer *t = e8q_tokenizer_load(tp);
  int *ids;
  E8Q_EXPECT_FATAL(e8q_tokenizer_encode(t, "abc\xff def", 0, 0, &ids), tp, "not valid UTF-8", "byte 3");
  E8Q_EXPECT_FATAL(e8q_tokenizer_encode_ref(t, "\xc3(", 0, 0, &ids), tp, "not valid UTF-8", "byte 0");
  E8Q_EXPECT_FATAL(e8q_tokenizer_encode(t, "ok \xed\xa0\x80 surrogate", 0, 0, &ids), "not valid UTF-8", "byte 3");
  /* no BOS in this tokenizer */
  E8Q_EXPECT_FATAL(e8q_tokenizer_encode(t, "hi", 1, 0, &ids), tp, "no BOS token");
  char *dir = t_tmpdir("bpe_utf8");
  char *f = t_join(dir, "bad.txt");
  t_write_file(f, "fine\nnot \x80 fine\n", 16);
  E8Q_EXPECT_FATAL(e8q_tokenizer_encode_file(t, f, 0, &ids), f, "UTF-8");
  /* writing tokenizer.json is for BPE only */
  char *spm = t_join(dir, "tokenizer.model");
  const char *pieces[4] = {"<unk>", "<s>", "</s>", "a"};
  const float scores[4] = {0, 0, 0, -1};
  const int types[4] = {2, 3, 3, 1};
  e8q_tokenizer_write_spm(spm, 4, pieces, scores, types);
  e8q_tokenizer *s = e8q_tokenizer_load(spm);
  assert_false(e8q_tokenizer_is_bpe(s));
  assert_int_equal(e8q_tokenizer_add_bos(s), 1);
  char *out = t_join(dir, "x.json");
  E8Q_EXPECT_FATAL(e8q_tokenizer_write_json(s, out), spm, "only byte-level BPE");
  e8q_tokenizer_free(s);
  e8q_tokenizer_free(t);
  free(out);
  free(spm);
  free(f);
  free(dir);
  free(tp);
}

/* ---------------------------------------------------------------- GGUF metadata written here */

typedef struct {
  char *b;       /* [cap] bytes */
  size_t n, cap;
  uint64_t n_kv;
} gbuf;

static void g_put(gbuf *g, const void *p, size_t n) {
  while (g->n + n > g->cap) g->b = realloc(g->b, g->cap = g->cap ? 2 * g->cap : 4096);
  memcpy(g->b + g->n, p, n);
  g->n += n;
}
static void g_u32(gbuf *g, uint32_t v) { g_put(g, &v, 4); }
static void g_u64(gbuf *g, uint64_t v) { g_put(g, &v, 8); }
static void g_str(gbuf *g, const char *s, size_t n) {
  g_u64(g, n);
  g_put(g, s, n);
}
static void g_key(gbuf *g, const char *key, uint32_t type) {
  g_str(g, key, strlen(key));
  g_u32(g, type);
  g->n_kv++;
}
static void g_kv_str(gbuf *g, const char *key, const char *v) {
  g_key(g, key, 8);
  g_str(g, v, strlen(v));
}
static void g_kv_u32(gbuf *g, const char *key, uint32_t v) {
  g_key(g, key, 4);
  g_u32(g, v);
}
static void g_kv_bool(gbuf *g, const char *key, int v) {
  g_key(g, key, 7);
  uint8_t c = (uint8_t)v;
  g_put(g, &c, 1);
}
static void g_kv_strs(gbuf *g, const char *key, int n, char **s, const int *len) {
  g_key(g, key, 9);
  g_u32(g, 8);
  g_u64(g, (uint64_t)n);
  for (int i = 0; i < n; i++) g_str(g, s[i], len ? (size_t)len[i] : strlen(s[i]));
}
static void g_kv_arr32(gbuf *g, const char *key, uint32_t type, int n, const void *v) {
  g_key(g, key, 9);
  g_u32(g, type);
  g_u64(g, (uint64_t)n);
  g_put(g, v, 4 * (size_t)n);
}
/* header (no tensors) + the metadata, padded to the alignment */
static void g_write(const gbuf *g, const char *path) {
  gbuf f = {0};
  g_put(&f, "GGUF", 4);
  g_u32(&f, 3);
  g_u64(&f, 0);
  g_u64(&f, g->n_kv);
  g_put(&f, g->b, g->n);
  while (f.n % 32) g_put(&f, "", 1);
  t_write_file(path, f.b, f.n);
  free(f.b);
}

/* a llama GGUF holding stories260K's tok512 gives the ids of tok512.model */
static void test_gguf_llama_spm(void **state) {
  (void)state;
  char *bpath = t_shared_path("models/stories260K/tok512.bin");
  char *mpath = t_shared_path("models/stories260K/tok512.model");
  char *tpath = t_shared_path("text/tinystories_valid_head.txt");
  size_t size;
  char *bin = t_read_file(bpath, &size);
  int n = 0;
  char *pieces[512];
  int plen[512], types[512];
  float scores[512];
  for (size_t off = 4; off < size && n < 512; n++) { /* llama2.c: f32 score, i32 len, bytes */
    int32_t len;
    memcpy(&scores[n], bin + off, 4);
    memcpy(&len, bin + off + 4, 4);
    const char *p = bin + off + 8;
    off += 8 + (size_t)len;
    /* GGUF stores SentencePiece pieces with U+2581 for spaces */
    pieces[n] = malloc(3 * (size_t)len + 1);
    int k = 0;
    for (int i = 0; i < len; i++) {
      if (p[i] == ' ') memcpy(pieces[n] + k, "\xe2\x96\x81", 3), k += 3;
      else pieces[n][k++] = p[i];
    }
    plen[n] = k;
    types[n] = n == 0 ? 2 : n <= 2 ? 3 : (len == 6 && !strncmp(p, "<0x", 3)) ? 6 : 1;
  }
  assert_int_equal(n, 512);
  strcpy(pieces[1], "<s>"), plen[1] = 3; /* tok512.bin spells them "\n<s>\n" */
  strcpy(pieces[2], "</s>"), plen[2] = 4;
  gbuf g = {0};
  g_kv_str(&g, "general.architecture", "llama");
  g_kv_str(&g, "tokenizer.ggml.model", "llama");
  g_kv_strs(&g, "tokenizer.ggml.tokens", n, pieces, plen);
  g_kv_arr32(&g, "tokenizer.ggml.scores", 6, n, scores);
  g_kv_arr32(&g, "tokenizer.ggml.token_type", 5, n, types);
  g_kv_u32(&g, "tokenizer.ggml.bos_token_id", 1);
  g_kv_u32(&g, "tokenizer.ggml.eos_token_id", 2);
  g_kv_u32(&g, "tokenizer.ggml.unknown_token_id", 0);
  char *dir = t_tmpdir("bpe_gguf_llama");
  char *gp = t_join(dir, "tok.gguf");
  g_write(&g, gp);
  e8q_tokenizer *tg = e8q_tokenizer_load(gp), *tm = e8q_tokenizer_load(mpath);
  assert_false(e8q_tokenizer_is_bpe(tg));
  assert_int_equal(e8q_tokenizer_vocab_size(tg), 512);
  assert_int_equal(e8q_tokenizer_add_bos(tg), 1);
  char *text = e8q_text_read(tpath, NULL);
  char **lines;
  int nl = e8q_text_lines(text, 0, 100, &lines);
  for (int l = 0; l < nl; l++) {
    int *a, *b;
    int na = e8q_tokenizer_encode(tg, lines[l], 1, 1, &a), nb = e8q_tokenizer_encode(tm, lines[l], 1, 1, &b);
    assert_ids_equal(a, na, b, nb, "llama GGUF vs tok512.model");
    free(a);
    free(b);
  }
  e8q_text_lines_free(lines, nl);
  /* add_bos_token false is the model's flag */
  g_kv_bool(&g, "tokenizer.ggml.add_bos_token", 0);
  g_write(&g, gp);
  e8q_tokenizer_free(tg);
  tg = e8q_tokenizer_load(gp);
  assert_int_equal(e8q_tokenizer_add_bos(tg), 0);
  e8q_tokenizer_free(tg);
  e8q_tokenizer_free(tm);
  for (int i = 0; i < n; i++) free(pieces[i]);
  free(g.b);
  free(text);
  free(gp);
  free(dir);
  free(bin);
  free(tpath);
  free(mpath);
  free(bpath);
}

/* a small gpt2 GGUF: control token matched whole, merges, BOS flag; refusals name file and key */
static void test_gguf_gpt2_small(void **state) {
  (void)state;
  char *dir = t_tmpdir("bpe_gguf_gpt2");
  char *gp = t_join(dir, "small.gguf");
  char *toks[6] = {"<|eot|>", "a", "b", "ab", "\xc4\xa0", "\xc4\xa0" "ab"}; /* "Ġ" = space */
  int types[6] = {3, 1, 1, 1, 1, 1};
  char *merges[2] = {"a b", "\xc4\xa0 ab"};
  for (int variant = 0; variant < 5; variant++) {
    gbuf g = {0};
    g_kv_str(&g, "tokenizer.ggml.model", variant == 1 ? "bert" : "gpt2");
    g_kv_strs(&g, "tokenizer.ggml.tokens", 6, toks, NULL);
    g_kv_arr32(&g, "tokenizer.ggml.token_type", 5, 6, types);
    char *bad[2] = {"a b", "\xc4\xa0 zz"};
    g_kv_strs(&g, "tokenizer.ggml.merges", 2, variant == 3 ? bad : merges, NULL);
    if (variant != 2) g_kv_str(&g, "tokenizer.ggml.pre", variant == 4 ? "falcon" : "gpt2");
    g_kv_u32(&g, "tokenizer.ggml.bos_token_id", 0);
    g_kv_u32(&g, "tokenizer.ggml.eos_token_id", 0);
    g_kv_bool(&g, "tokenizer.ggml.add_bos_token", 1);
    g_write(&g, gp);
    free(g.b);
    if (variant == 1) E8Q_EXPECT_FATAL(e8q_tokenizer_load(gp), gp, "tokenizer.ggml.model \"bert\"");
    if (variant == 2) E8Q_EXPECT_FATAL(e8q_tokenizer_load(gp), gp, "tokenizer.ggml.pre", "(missing)");
    if (variant == 3) E8Q_EXPECT_FATAL(e8q_tokenizer_load(gp), gp, "tokenizer.ggml.merges[1]", "\"zz\"");
    if (variant == 4) E8Q_EXPECT_FATAL(e8q_tokenizer_load(gp), gp, "tokenizer.ggml.pre \"falcon\"");
    if (variant) continue;
    e8q_tokenizer *t = e8q_tokenizer_load(gp);
    assert_true(e8q_tokenizer_is_bpe(t));
    assert_int_equal(e8q_tokenizer_add_bos(t), 1);
    int *ids;
    int n = e8q_tokenizer_encode(t, "ab ab<|eot|>ba", e8q_tokenizer_add_bos(t), 0, &ids);
    const int want[] = {0, 3, 5, 0, 2, 1};
    assert_ids_equal(ids, n, want, 6, "small gpt2 GGUF");
    free(ids);
    /* its tokenizer.json keeps the BOS flag and id */
    char *jp = t_join(dir, "tokenizer.json");
    e8q_tokenizer_write_json(t, jp);
    e8q_tokenizer *t2 = e8q_tokenizer_load(jp);
    assert_int_equal(e8q_tokenizer_add_bos(t2), 1);
    assert_int_equal(e8q_tokenizer_bos_id(t2), 0);
    n = e8q_tokenizer_encode(t2, "ab ab<|eot|>ba", 1, 0, &ids);
    assert_ids_equal(ids, n, want, 6, "small gpt2 GGUF via tokenizer.json");
    free(ids);
    e8q_tokenizer_free(t2);
    e8q_tokenizer_free(t);
    free(jp);
  }
  free(gp);
  free(dir);
}

/* ---------------------------------------------------------------- finding the tokenizer */

static void test_find(void **state) {
  (void)state;
  char *dir = t_tmpdir("bpe_find");
  char *json = t_join(dir, "tokenizer.json");
  char *model = t_join(dir, "tokenizer.model");
  char *weights = t_join(dir, "model.safetensors");
  t_write_file(json, "{}", 2);
  t_write_file(weights, "x", 1);
  char *f = e8q_tokenizer_find(dir, 49152);
  assert_non_null(f);
  assert_string_equal(f, json);
  free(f);
  f = e8q_tokenizer_find(weights, 0); /* a model file: beside it */
  assert_string_equal(f, json);
  free(f);
  t_write_file(model, "x", 1);
  f = e8q_tokenizer_find(dir, 0); /* tokenizer.model first */
  assert_string_equal(f, model);
  free(f);
  /* a GGUF file is its own tokenizer */
  char *gg = t_join(dir, "m.gguf");
  t_write_file(gg, "GGUF\x03\0\0\0", 8);
  f = e8q_tokenizer_find(gg, 0);
  assert_string_equal(f, gg);
  free(f);
  free(gg);
  free(weights);
  free(model);
  free(json);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_smollm2_gguf),     cmocka_unit_test(test_smollm2_write_json),
      cmocka_unit_test(test_smollm2_hf_json),  cmocka_unit_test(test_tiny_llama3_qwen2),
      cmocka_unit_test(test_bad_json),         cmocka_unit_test(test_invalid_utf8),
      cmocka_unit_test(test_find),             cmocka_unit_test(test_gguf_llama_spm),
      cmocka_unit_test(test_gguf_gpt2_small),  cmocka_unit_test(test_bos_eos_beside),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
