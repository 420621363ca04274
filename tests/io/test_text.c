/* tests/io/test_text.c: UTF-8 validation, non-empty lines, uint32 id files, and their errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/text.h"
#include "testutil.h"

static char *g_dir;

static char *tmp_file(const char *name, const void *data, size_t n) {
  if (!g_dir) g_dir = t_tmpdir("text");
  size_t cap = strlen(g_dir) + strlen(name) + 2;
  char *p = malloc(cap);
  snprintf(p, cap, "%s/%s", g_dir, name);
  t_write_file(p, data, n);
  return p;
}

static void test_utf8_check_cases(void **state) {
  (void)state;
  struct {
    const char *s;
    size_t bad; /* offset of the first bad byte, or (size_t)-1 = valid */
  } cases[] = {
      {"plain ascii", (size_t)-1},
      {"caf\xc3\xa9 \xe2\x80\x99 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf", (size_t)-1}, /* 2, 3, 4 bytes, U+10FFFF */
      {"ab\xc0\xaf", 2},                  /* overlong '/' */
      {"ab\xe0\x80\xaf", 2},              /* overlong 3-byte */
      {"x\xed\xa0\x80", 1},               /* surrogate U+D800 */
      {"xy\xf4\x90\x80\x80", 2},          /* above U+10FFFF */
      {"abc\x80", 3},                     /* lone continuation */
      {"abcd\xe2\x80", 4},                /* truncated at the end */
      {"a\xe2(b", 1},                     /* bad continuation */
      {"\xff", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t n = strlen(cases[i].s);
    size_t want = cases[i].bad == (size_t)-1 ? n : cases[i].bad;
    if (e8q_utf8_check(cases[i].s, n) != want)
      fail_msg("case %zu: %zu, want %zu", i, e8q_utf8_check(cases[i].s, n), want);
  }
  assert_int_equal(e8q_utf8_check("ab\0c", 4), 2); /* NUL */
}

static void test_text_lines(void **state) {
  (void)state;
  const char *text = "\n  \nfirst line\r\n\t\nsecond\n   third  \n\nfourth";
  char *p = tmp_file("lines.txt", text, strlen(text));
  size_t len;
  char *t = e8q_text_read(p, &len);
  assert_int_equal(len, strlen(text));
  assert_string_equal(t, text);
  char **lines;
  int n = e8q_text_lines(t, 0, 0, &lines);
  assert_int_equal(n, 4);
  assert_string_equal(lines[0], "first line");
  assert_string_equal(lines[1], "second");
  assert_string_equal(lines[2], "   third  ");
  assert_string_equal(lines[3], "fourth");
  e8q_text_lines_free(lines, n);
  n = e8q_text_lines(t, 1, 2, &lines);
  assert_int_equal(n, 2);
  assert_string_equal(lines[0], "second");
  assert_string_equal(lines[1], "   third  ");
  e8q_text_lines_free(lines, n);
  n = e8q_text_lines(t, 10, 0, &lines);
  assert_int_equal(n, 0);
  e8q_text_lines_free(lines, n);
  free(t);
  free(p);
}

static void test_text_shared_file(void **state) {
  (void)state;
  char *p = t_shared_path("text/tinystories_valid_head.txt");
  size_t len;
  char *t = e8q_text_read(p, &len);
  assert_int_equal(len, 794375);
  char **lines;
  int n = e8q_text_lines(t, 0, 40, &lines);
  assert_int_equal(n, 40);
  assert_true(strncmp(lines[0], "Spot. Spot saw the shiny car", 28) == 0);
  e8q_text_lines_free(lines, n);
  free(t);
  free(p);
}

static void test_text_empty_file(void **state) {
  (void)state;
  char *p = tmp_file("empty.txt", "", 0);
  E8Q_EXPECT_FATAL(e8q_text_read(p, NULL), p, "empty");
  E8Q_EXPECT_FATAL(e8q_text_read_for(p, "--calib", NULL), "--calib", p, "empty"); /* the option named */
  free(p);
  E8Q_EXPECT_FATAL(e8q_text_read("/nonexistent/calib.txt", NULL), "/nonexistent/calib.txt",
                   "No such file");
}

static void test_text_not_utf8(void **state) {
  (void)state;
  /* a valid file with one Latin-1 byte edited in at offset 17 */
  char s[] = "Once upon a time there was a cafe.";
  s[17] = (char)0xe9;
  char *p = tmp_file("latin1.txt", s, strlen(s));
  E8Q_EXPECT_FATAL(e8q_text_read(p, NULL), p, "not valid UTF-8", "0xe9", "byte offset 17");
  E8Q_EXPECT_FATAL(e8q_text_read_for(p, "--eval-text", NULL), "--eval-text", p, "not valid UTF-8", "0xe9");
  free(p);
  char z[] = "abc\0def";
  p = tmp_file("nul.txt", z, 7);
  E8Q_EXPECT_FATAL(e8q_text_read(p, NULL), p, "byte offset 3", "NUL");
  free(p);
}

static void test_file_read(void **state) {
  (void)state;
  /* any bytes, NULs and invalid UTF-8 included, come back whole and NUL-terminated */
  const char data[7] = {'a', 0, '\xff', 'b', '\n', 0, 'z'};
  char *p = tmp_file("raw.bin", data, sizeof data);
  size_t n = 0;
  char *b = e8q_file_read(p, &n, "raw file");
  assert_int_equal(n, sizeof data);
  assert_memory_equal(b, data, sizeof data);
  assert_int_equal(b[n], 0);
  free(b);
  b = e8q_file_read(p, NULL, "raw file"); /* len may be NULL */
  assert_memory_equal(b, data, sizeof data);
  free(b);
  /* an empty file is not an error here (e8q_text_read refuses it) */
  char *e = tmp_file("empty.bin", "", 0);
  b = e8q_file_read(e, &n, "raw file");
  assert_int_equal(n, 0);
  assert_int_equal(b[0], 0);
  free(b);
  /* missing file and directory: named, with what was expected */
  E8Q_EXPECT_FATAL(e8q_file_read("/nonexistent/plan.json", NULL, "run plan"), "/nonexistent/plan.json", "run plan");
  E8Q_EXPECT_FATAL(e8q_file_read(g_dir, NULL, "model config"), g_dir, "not a regular file", "model config");
  free(p);
  free(e);
}

static void test_ids_roundtrip(void **state) {
  (void)state;
  if (!g_dir) g_dir = t_tmpdir("text");
  char path[4096];
  snprintf(path, sizeof path, "%s/calib.ids", g_dir);
  int ids[6] = {1, 0, 511, 300, 2, 70000};
  e8q_ids_write(path, ids, 6);
  assert_true(e8q_ids_is_file(path));
  assert_true(e8q_ids_is_file("x.u32"));
  assert_false(e8q_ids_is_file("x.txt"));
  assert_false(e8q_ids_is_file("ids"));
  size_t n;
  char *raw = t_read_file(path, &n);
  assert_int_equal(n, 24);
  assert_int_equal((uint8_t)raw[8], 0xff); /* 511 little-endian */
  assert_int_equal((uint8_t)raw[9], 0x01);
  free(raw);
  int *back;
  assert_int_equal(e8q_ids_read(path, 0, &back), 6);
  assert_memory_equal(back, ids, sizeof ids);
  free(back);
}

static void test_ids_odd_size(void **state) {
  (void)state;
  uint8_t b[10] = {1, 0, 0, 0, 0, 2, 0, 0, 7, 7};
  char *p = tmp_file("odd.ids", b, 10);
  int *ids;
  E8Q_EXPECT_FATAL(e8q_ids_read(p, 512, &ids), p, "10 bytes", "multiple of 4");
  free(p);
  p = tmp_file("none.ids", b, 0);
  E8Q_EXPECT_FATAL(e8q_ids_read(p, 512, &ids), p, "empty");
  free(p);
}

static void test_ids_out_of_vocab(void **state) {
  (void)state;
  uint8_t b[8] = {1, 0, 0, 0, 0, 2, 0, 0}; /* ids 1, 512 */
  char *p = tmp_file("big.ids", b, 8);
  int *ids;
  E8Q_EXPECT_FATAL(e8q_ids_read(p, 512, &ids), p, "token id 512", "index 1", "vocabulary of 512");
  assert_int_equal(e8q_ids_read(p, 513, &ids), 2);
  assert_int_equal(ids[1], 512);
  free(ids);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_utf8_check_cases),   cmocka_unit_test(test_text_lines),
      cmocka_unit_test(test_text_shared_file),   cmocka_unit_test(test_text_empty_file),
      cmocka_unit_test(test_text_not_utf8),      cmocka_unit_test(test_ids_roundtrip),
      cmocka_unit_test(test_ids_odd_size),       cmocka_unit_test(test_ids_out_of_vocab),
      cmocka_unit_test(test_file_read),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  free(g_dir);
  return rc;
}
