/* tests/pipeline/test_artifact.c: the .e8q archive: round trip with offsets usable for mmap,
 * determinism, a flipped byte in every member caught (library and `e8q inspect --verify`),
 * unsafe or inconsistent archives refused, a full disk leaving no partial artifact. */
#include <archive.h>
#include <archive_entry.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/artifact.h"
#include "testutil.h"

#define N_BIG 100003 /* not a multiple of 512 */

static char *big_member(void) {
  char *b = malloc(N_BIG);
  t_rng r = {12345};
  for (int i = 0; i < N_BIG; i++) b[i] = (char)(t_rng_u64(&r) & 0xff);
  return b;
}

static void write_sample(const char *path) {
  e8q_artifact_writer *w = e8q_artifact_create(path);
  e8q_artifact_add_bytes(w, "config.json", "{\"dim\": 64}\n", 12);
  char *b = big_member();
  e8q_artifact_member_begin(w, "model.safetensors", N_BIG);
  for (int off = 0; off < N_BIG; off += 7000) e8q_artifact_member_write(w, b + off, N_BIG - off < 7000 ? N_BIG - off : 7000);
  e8q_artifact_member_end(w);
  free(b);
  e8q_artifact_add_bytes(w, "tokenizer.model", "", 0);
  cJSON *m = cJSON_CreateObject();
  cJSON_AddNumberToObject(m, "seed", 42);
  cJSON *o = cJSON_AddObjectToObject(m, "options");
  cJSON_AddNumberToObject(o, "bits", 2);
  e8q_artifact_finish(w, m);
  cJSON_Delete(m);
}

static void test_roundtrip(void **state) {
  (void)state;
  char *d = t_tmpdir("artifact");
  char *p = t_join(d, "a.e8q"), *q = t_join(d, "b.e8q");
  write_sample(p);
  write_sample(q);
  size_t na, nb;
  char *A = t_read_file(p, &na), *B = t_read_file(q, &nb);
  assert_int_equal(na, nb);
  assert_memory_equal(A, B, na); /* same content, same bytes */
  free(B);
  e8q_artifact *a = e8q_artifact_open(p);
  assert_int_equal(a->n, 5);
  assert_string_equal(a->members[3].name, "manifest.json");
  assert_string_equal(a->members[4].name, "manifest.json.sha256");
  const cJSON *fmt = cJSON_GetObjectItem(a->manifest, "format");
  assert_string_equal(fmt->valuestring, "e8q");
  assert_int_equal(cJSON_GetObjectItem(a->manifest, "seed")->valueint, 42);
  /* offsets point at the bytes in the file (what mmap needs) */
  const e8q_artifact_member *m = e8q_artifact_find(a, "model.safetensors");
  assert_non_null(m);
  assert_int_equal(m->size, N_BIG);
  char *b = big_member();
  assert_memory_equal(A + m->offset, b, N_BIG);
  size_t n = 0;
  char *c = e8q_artifact_read(a, "config.json", &n);
  assert_int_equal(n, 12);
  assert_string_equal(c, "{\"dim\": 64}\n");
  free(c);
  char report[4096];
  assert_int_equal(e8q_artifact_verify(a, report, sizeof report), 0);
  e8q_artifact_close(a);
  free(A);
  free(b);
  free(d);
  free(p), free(q);
}

/* `e8q inspect ARGS --verify`, output to out; the exit status */
static int run_inspect_args(const char *args, const char *out) {
  char cmd[32768];
  snprintf(cmd, sizeof cmd, "'%s' inspect %s --verify > '%s' 2>&1", E8Q_BIN, args, out);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int run_inspect(const char *path, const char *out) {
  char args[8192];
  snprintf(args, sizeof args, "'%s'", path);
  return run_inspect_args(args, out);
}

static void test_flipped_byte_in_every_member(void **state) {
  (void)state;
  char *d = t_tmpdir("artifact-flip");
  char p[4096], log[4096];
  snprintf(p, sizeof p, "%s/a.e8q", d);
  snprintf(log, sizeof log, "%s/inspect.txt", d);
  write_sample(p);
  assert_int_equal(run_inspect(p, log), 0);
  char *out = t_read_file(log, NULL);
  assert_non_null(strstr(out, "verify:                 OK"));
  assert_non_null(strstr(out, "model.safetensors"));
  free(out);
  size_t n;
  char *orig = t_read_file(p, &n);
  e8q_artifact *a = e8q_artifact_open(p);
  int members = a->n;
  e8q_artifact_member ms[8];
  memcpy(ms, a->members, (size_t)members * sizeof *ms);
  for (int i = 0; i < members; i++) {
    if (ms[i].size == 0) continue; /* nothing to flip */
    char *cp = malloc(n);
    memcpy(cp, orig, n);
    uint64_t at = ms[i].offset + ms[i].size / 2;
    cp[at] ^= 0x01;
    t_write_file(p, cp, n);
    free(cp);
    int bad = -1;
    char report[4096];
    if (!strncmp(ms[i].name, "manifest.json", 13)) {
      /* the manifest or its hash: refused at open, before the JSON is parsed, naming the artifact */
      E8Q_EXPECT_FATAL(e8q_artifact_open(p), p, "manifest.json has sha256", "manifest.json.sha256 records",
                       "damaged");
      bad = 1;
    } else {
      e8q_artifact *b = e8q_artifact_open(p);
      bad = e8q_artifact_verify(b, report, sizeof report);
      assert_non_null(strstr(report, ms[i].name));
      e8q_artifact_close(b);
    }
    if (bad < 1) fail_msg("flipped byte in %s not caught", ms[i].name);
    assert_int_equal(run_inspect(p, log), 1); /* a failure exits 1, as every command's */
  }
  /* so do usage errors: an unknown option, two artifacts, none */
  char args[2 * sizeof p + 16];
  snprintf(args, sizeof args, "'%s' --bogus-option", p);
  assert_int_equal(run_inspect_args(args, log), 1);
  char *msg = t_read_file(log, NULL);
  assert_non_null(strstr(msg, "unknown option --bogus-option"));
  free(msg);
  snprintf(args, sizeof args, "'%s' '%s'", p, p);
  assert_int_equal(run_inspect_args(args, log), 1);
  assert_int_equal(run_inspect_args("", log), 1);
  e8q_artifact_close(a);
  t_write_file(p, orig, n);
  free(orig);
  free(d);
}

/* a raw tar with the given members (names, contents) and a manifest declaring `declared` as the
 * size of every non-manifest member */
static void write_raw(const char *path, int n, const char *const *names, const char *const *data, int declared) {
  struct archive *ar = archive_write_new();
  archive_write_set_format_pax_restricted(ar);
  archive_write_open_filename(ar, path);
  cJSON *man = cJSON_CreateObject();
  cJSON_AddStringToObject(man, "format", "e8q");
  cJSON_AddNumberToObject(man, "format_version", 1);
  cJSON *mem = cJSON_AddObjectToObject(man, "members");
  for (int i = 0; i <= n; i++) {
    char *text = NULL;
    const char *name = i < n ? names[i] : "manifest.json";
    const char *body = i < n ? data[i] : (text = cJSON_Print(man));
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, (la_int64_t)strlen(body));
    archive_write_header(ar, e);
    archive_write_data(ar, body, strlen(body));
    archive_entry_free(e);
    if (i < n) {
      cJSON *d = cJSON_AddObjectToObject(mem, name);
      cJSON_AddNumberToObject(d, "size", declared);
      cJSON_AddStringToObject(d, "sha256", "00");
    }
    free(text);
  }
  cJSON_Delete(man);
  archive_write_close(ar);
  archive_write_free(ar);
}

static void test_unsafe_archives_refused(void **state) {
  (void)state;
  char *d = t_tmpdir("artifact-unsafe");
  char *p = t_join(d, "x.e8q");
  const char *data[] = {"0123456789"};
  const char *abs_name[] = {"/etc/passwd"};
  write_raw(p, 1, abs_name, data, 10);
  E8Q_EXPECT_FATAL(e8q_artifact_open(p), p, "/etc/passwd", "absolute path or '..'");
  const char *dots[] = {"model/../../x"};
  write_raw(p, 1, dots, data, 10);
  E8Q_EXPECT_FATAL(e8q_artifact_open(p), "model/../../x", "absolute path or '..'");
  const char *ok[] = {"model.safetensors"};
  write_raw(p, 1, ok, data, 4);
  E8Q_EXPECT_FATAL(e8q_artifact_open(p), "model.safetensors", "larger than the 4 declared");
  write_raw(p, 1, ok, data, 10);
  e8q_artifact *a = e8q_artifact_open(p); /* well-formed; hashes wrong */
  char report[2048];
  assert_true(e8q_artifact_verify(a, report, sizeof report) >= 2); /* member hash + missing manifest hash */
  e8q_artifact_close(a);
  const char *dup[] = {"a", "a"};
  const char *dd[] = {"1", "2"};
  write_raw(p, 2, dup, dd, 1);
  E8Q_EXPECT_FATAL(e8q_artifact_open(p), "member a appears twice");
  t_write_file(p, "not a tar at all, just some text that is long enough", 52);
  E8Q_EXPECT_FATAL(e8q_artifact_open(p), p);
  free(d);
  free(p);
}

static void test_enospc_leaves_nothing(void **state) {
  (void)state;
  char *d = t_tmpdir("artifact-enospc");
  char *p = t_join(d, "out.e8q");
  t_enospc("artifact:3");
  E8Q_EXPECT_FATAL(write_sample(p), p, "No space left on device");
  t_enospc(NULL);
  struct stat st;
  assert_int_not_equal(stat(p, &st), 0);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", d);
  assert_int_equal(system(cmd), 0); /* neither the artifact nor its temporary */
  E8Q_EXPECT_FATAL(e8q_artifact_create("/nonexistent-dir-e8q/out.e8q"), "/nonexistent-dir-e8q/out.e8q",
                   "cannot create");
  free(d);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_flipped_byte_in_every_member),
      cmocka_unit_test(test_unsafe_archives_refused),
      cmocka_unit_test(test_enospc_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
