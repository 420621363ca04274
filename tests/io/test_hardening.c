/* tests/io/test_hardening.c: inputs a user can hand e8q that used to hang it, pass silently or
 * fail with a message naming nothing (the hardening issue). Each test checks the new message:
 *   - a FIFO (or directory) where a file is read: safetensors, config.json, tokenizer files,
 *     text, a llama2.c .bin, an artifact, and the hashing of common/hash.c: refused by name, never
 *     waited on (an alarm turns a hang into a failure);
 *   - max_position_embeddings 2^31-1: "too large", with the limit;
 *   - a safetensors shape of 2^40 x 2^40: "more than 2^64 bytes", not "0 elements needs 0 bytes";
 *   - bytes appended to an artifact: e8q_artifact_verify reports the archive's end;
 *   - a byte flipped mid-journal: named as damage (not "an interrupted write"), the journal kept;
 *   - a run directory whose plan.json was deleted: named as such;
 *   - the disk-full advice: says a different --run-dir starts over;
 *   - temporary paths (common/cleanup.h) removed by a fatal error. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/hash.h"
#include "io/artifact.h"
#include "io/atomic.h"
#include "io/config.h"
#include "io/journal.h"
#include "io/llama2c.h"
#include "io/rundir.h"
#include "io/safetensors.h"
#include "io/text.h"
#include "io/tokenizer.h"
#include "testutil.h"

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "test_io_hardening: an open blocked for 10 s (a FIFO waited on)\n";
  if (write(2, msg, sizeof msg - 1) < 0) {}
  _exit(3);
}

/* ---------------------------------------------------------------- FIFOs and directories */
static void test_fifo_refused_everywhere(void **state) {
  (void)state;
  signal(SIGALRM, on_alarm);
  alarm(10);
  char *d = t_tmpdir("hard-fifo");
  char *fifo = t_join(d, "model.safetensors");
  assert_int_equal(mkfifo(fifo, 0644), 0);
  E8Q_EXPECT_FATAL(e8q_st_open(fifo), fifo, "FIFO", "not a regular file", "safetensors file");
  E8Q_EXPECT_FATAL(e8q_st_model_open(fifo), fifo, "FIFO", "not a regular file");
  E8Q_EXPECT_FATAL(e8q_st_model_open(d), fifo, "FIFO", "not a regular file"); /* DIR/model.safetensors */
  E8Q_EXPECT_FATAL(e8q_st_open_region(fifo, 0, 8, "a.e8q:model.safetensors"), fifo, "FIFO");
  char hex[65];
  E8Q_EXPECT_FATAL(e8q_sha256_file_hex(fifo, hex), fifo, "FIFO", "not a regular file");
  E8Q_EXPECT_FATAL(e8q_sha256_file_hex(d, hex), d, "directory", "not a regular file");
  E8Q_EXPECT_FATAL(e8q_text_read(fifo, NULL), fifo, "FIFO", "text file");
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(fifo), fifo, "FIFO");
  e8q_llama2c ck;
  E8Q_EXPECT_FATAL(e8q_llama2c_load(fifo, &ck), fifo, "FIFO", "llama2.c checkpoint");
  E8Q_EXPECT_FATAL(e8q_artifact_open(fifo), fifo, "FIFO", "artifact");
  /* config.json and tokenizer.json as FIFOs in a model directory */
  char *cfg = t_join(d, "config.json");
  assert_int_equal(mkfifo(cfg, 0644), 0);
  e8q_config c;
  E8Q_EXPECT_FATAL(e8q_config_load(d, &c), cfg, "FIFO", "model config");
  char *tj = t_join(d, "tokenizer.json");
  assert_int_equal(mkfifo(tj, 0644), 0);
  E8Q_EXPECT_FATAL(e8q_tokenizer_load(tj), tj, "FIFO");
  alarm(0);
  unlink(fifo), unlink(cfg), unlink(tj), rmdir(d);
  free(fifo), free(cfg), free(tj), free(d);
}

/* a missing --calib file: the hashing names the file (run.c adds the option's name) */
static void test_hash_missing_file(void **state) {
  (void)state;
  char hex[65];
  E8Q_EXPECT_FATAL(e8q_sha256_file_hex("/nonexistent/calib.txt", hex), "/nonexistent/calib.txt",
                   "No such file");
}

/* ---------------------------------------------------------------- config.json */
static void test_config_int_too_large(void **state) {
  (void)state;
  const char *base = "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 172, "
                     "\"num_hidden_layers\": 5, \"num_attention_heads\": 8, \"vocab_size\": 512, ";
  char text[1024];
  e8q_config c;
  snprintf(text, sizeof text, "%s\"max_position_embeddings\": 2147483647}", base);
  cJSON *j = cJSON_Parse(text);
  E8Q_EXPECT_FATAL(e8q_config_from_json(j, "cfg.json", &c), "cfg.json", "\"max_position_embeddings\"",
                   "2147483647 is too large", "at most 1073741824");
  cJSON_Delete(j);
  snprintf(text, sizeof text, "%s\"max_position_embeddings\": 1e300}", base);
  j = cJSON_Parse(text);
  E8Q_EXPECT_FATAL(e8q_config_from_json(j, "cfg.json", &c), "\"max_position_embeddings\"", "too large");
  cJSON_Delete(j);
  snprintf(text, sizeof text, "%s\"max_position_embeddings\": 2.5}", base);
  j = cJSON_Parse(text);
  E8Q_EXPECT_FATAL(e8q_config_from_json(j, "cfg.json", &c), "\"max_position_embeddings\" must be an integer");
  cJSON_Delete(j);
  /* token ids beyond int */
  snprintf(text, sizeof text, "%s\"bos_token_id\": 1e20}", base);
  j = cJSON_Parse(text);
  E8Q_EXPECT_FATAL(e8q_config_from_json(j, "cfg.json", &c), "\"bos_token_id\"", "at most");
  cJSON_Delete(j);
  /* stacked rows past 2^30 */
  const char *huge = "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 1073741824, "
                     "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"vocab_size\": 512}";
  j = cJSON_Parse(huge);
  E8Q_EXPECT_FATAL(e8q_config_from_json(j, "cfg.json", &c), "intermediate_size 1073741824 is too large");
  cJSON_Delete(j);
}

/* ---------------------------------------------------------------- safetensors */
static void write_st(const char *path, const char *header, size_t data_bytes) {
  size_t h = strlen(header);
  size_t n = 8 + h + data_bytes;
  unsigned char *b = calloc(1, n);
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
  memcpy(b + 8, header, h);
  t_write_file(path, b, n);
  free(b);
}

static void test_safetensors_shape_overflow(void **state) {
  (void)state;
  char *d = t_tmpdir("hard-st");
  char *p = t_join(d, "big.safetensors");
  write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776], \"data_offsets\": [0, 4]}}", 4);
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "\"w\"", "[1099511627776, 1099511627776]", "more than 2^64 bytes", "hold 4");
  /* 2^62 F32 elements: the element count fits, the bytes do not */
  write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 4194304], \"data_offsets\": [0, 4]}}", 4);
  E8Q_EXPECT_FATAL(e8q_st_open(p), p, "more than 2^64 bytes");
  /* a zero dimension after huge ones is an empty tensor, not an overflow */
  write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776, 0], \"data_offsets\": [0, 0]}}", 0);
  e8q_safetensors *st = e8q_st_open(p);
  assert_int_equal(e8q_st_numel(e8q_st_find(st, "w")), 0);
  e8q_st_close(st);
  unlink(p), rmdir(d);
  free(p), free(d);
}

/* ---------------------------------------------------------------- artifact end */
static void write_artifact(const char *path) {
  e8q_artifact_writer *w = e8q_artifact_create(path);
  e8q_artifact_add_bytes(w, "config.json", "{}", 2);
  e8q_artifact_add_bytes(w, "model.safetensors", "0123456789", 10);
  e8q_artifact_finish(w, NULL);
}

static int verify_file(const char *path, char *report, size_t cap) {
  e8q_artifact *a = e8q_artifact_open(path);
  int bad = e8q_artifact_verify(a, report, cap);
  e8q_artifact_close(a);
  return bad;
}

static void append_bytes(const char *path, const unsigned char *b, size_t n) {
  FILE *f = fopen(path, "ab");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
}

static void test_artifact_trailing_bytes(void **state) {
  (void)state;
  char *d = t_tmpdir("hard-art");
  char *p = t_join(d, "a.e8q");
  char report[4096];
  write_artifact(p);
  assert_int_equal(verify_file(p, report, sizeof report), 0);
  /* zero padding after the end-of-archive marker is what tar writers do: accepted */
  unsigned char junk[3000];
  memset(junk, 0, sizeof junk);
  append_bytes(p, junk, sizeof junk);
  assert_int_equal(verify_file(p, report, sizeof report), 0);
  /* 3000 random bytes appended */
  write_artifact(p);
  t_rng r = {12345};
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(t_rng_u64(&r) | 1);
  append_bytes(p, junk, sizeof junk);
  int bad = verify_file(p, report, sizeof report);
  if (bad != 1 || !strstr(report, "archive end") || !strstr(report, "appended"))
    fail_msg("%d problems, report: %s", bad, report);
  /* the end-of-archive marker cut off */
  write_artifact(p);
  size_t n = 0;
  char *s = t_read_file(p, &n);
  t_write_file(p, s, n - 1024);
  free(s);
  bad = verify_file(p, report, sizeof report);
  if (bad < 1 || !strstr(report, "archive end") || !strstr(report, "truncated"))
    fail_msg("%d problems, report: %s", bad, report);
  unlink(p), rmdir(d);
  free(p), free(d);
}

/* ---------------------------------------------------------------- journal and run directory */
/* runs stmt with stderr going to a file; returns what it printed (malloc'd) */
static char *stderr_of_journal_open(const char *dir, e8q_journal **j) {
  char *log = t_join(dir, "stderr.txt");
  fflush(stderr);
  int saved = dup(2);
  int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 2);
  close(fd);
  *j = e8q_journal_open(dir);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char *s = t_read_file(log, NULL);
  unlink(log);
  free(log);
  return s;
}

static void test_journal_damage_named(void **state) {
  (void)state;
  char *d = t_tmpdir("hard-journal");
  e8q_journal *j = e8q_journal_open(d);
  e8q_journal_step(j, "a");
  e8q_journal_step(j, "b");
  e8q_journal_step(j, "c");
  e8q_journal_close(j);
  char *jp = t_join(d, "journal");
  size_t n = 0;
  char *s = t_read_file(jp, &n);
  size_t rec = n / 3;
  s[rec + 14] ^= 0x20; /* inside the payload of the 2nd record ("b"): the 3rd follows intact */
  t_write_file(jp, s, n);
  char *err = stderr_of_journal_open(d, &j);
  assert_int_equal(j->n, 1);
  e8q_journal_close(j);
  if (!strstr(err, "is damaged") || !strstr(err, "record 2") || !strstr(err, "not an interrupted write") ||
      !strstr(err, "journal.damaged"))
    fail_msg("message: %s", err);
  free(err);
  char *kept_path = t_join(d, "journal.damaged");
  size_t kn = 0;
  char *kept = t_read_file(kept_path, &kn);
  assert_int_equal(kn, n);
  assert_memory_equal(kept, s, n); /* the whole damaged journal kept */
  free(kept);
  /* a torn last record is still an interrupted write */
  j = e8q_journal_open(d);
  e8q_journal_step(j, "b2");
  e8q_journal_close(j);
  free(s);
  s = t_read_file(jp, &n);
  t_write_file(jp, s, n - 5);
  err = stderr_of_journal_open(d, &j);
  assert_int_equal(j->n, 1);
  e8q_journal_close(j);
  if (!strstr(err, "an interrupted write") || strstr(err, "is damaged")) fail_msg("message: %s", err);
  free(err), free(s);
  unlink(kept_path), unlink(jp);
  free(kept_path), free(jp);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  assert_int_equal(system(cmd), 0);
  free(d);
}

static void test_rundir_plan_deleted(void **state) {
  (void)state;
  char *d = t_tmpdir("hard-rundir");
  e8q_journal *j = e8q_journal_open(d);
  e8q_journal_step(j, "plan");
  e8q_journal_close(j);
  E8Q_EXPECT_FATAL(e8q_rundir_check_usable(d), d, "plan.json is missing", "Restore", "start afresh");
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  assert_int_equal(system(cmd), 0);
  free(d);
}

static void write_some(const char *path) {
  e8q_atomic_file *f = e8q_atomic_begin(path, "shard");
  char buf[1000] = {0};
  for (int i = 0; i < 10; i++) e8q_atomic_write(f, buf, sizeof buf);
  e8q_atomic_commit(f, NULL);
}

static void test_disk_full_advice(void **state) {
  (void)state;
  char *d = t_tmpdir("hard-enospc");
  char *p = t_join(d, "shard.bin");
  t_enospc("shard:3");
  E8Q_EXPECT_FATAL(write_some(p), "No space left", "rerun the same command", "a different --run-dir starts over",
                   "copy the whole run directory");
  t_enospc("journal");
  e8q_journal *j = e8q_journal_open(d);
  E8Q_EXPECT_FATAL(e8q_journal_step(j, "x"), "No space left", "a different --run-dir starts over",
                   "copy the whole run directory");
  t_enospc(NULL);
  e8q_journal_close(j);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  assert_int_equal(system(cmd), 0);
  free(p), free(d);
}

/* ---------------------------------------------------------------- temporary paths */
static void test_cleanup_on_fatal(void **state) {
  (void)state;
  char *d = t_tmpdir("hard-cleanup");
  char *sub = t_join(d, "e8q-artifact-x");
  char *f = t_join(sub, "tokenizer.model");
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) { /* a fatal error (no trap, no MPI): exit(1) after the cleanup */
    mkdir(sub, 0755);
    e8q_cleanup_add(sub);
    e8q_cleanup_add(f);
    t_write_file(f, "x", 1);
    E8Q_FATAL("deliberate failure after unpacking");
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  struct stat sb;
  assert_int_not_equal(stat(sub, &sb), 0); /* removed */
  /* a signal (MPI_Abort on another rank sends SIGTERM) */
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    mkdir(sub, 0755);
    e8q_cleanup_add(sub);
    e8q_cleanup_add(f);
    t_write_file(f, "x", 1);
    raise(SIGTERM);
    _exit(0);
  }
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
  assert_int_not_equal(stat(sub, &sb), 0);
  /* forgotten paths stay; the table empties */
  mkdir(sub, 0755);
  e8q_cleanup_add(sub);
  assert_int_equal(e8q_cleanup_count(), 1);
  e8q_cleanup_forget(sub);
  assert_int_equal(e8q_cleanup_count(), 0);
  e8q_cleanup_run();
  assert_int_equal(stat(sub, &sb), 0);
  rmdir(sub), rmdir(d);
  free(f), free(sub), free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fifo_refused_everywhere),
      cmocka_unit_test(test_hash_missing_file),
      cmocka_unit_test(test_config_int_too_large),
      cmocka_unit_test(test_safetensors_shape_overflow),
      cmocka_unit_test(test_artifact_trailing_bytes),
      cmocka_unit_test(test_journal_damage_named),
      cmocka_unit_test(test_rundir_plan_deleted),
      cmocka_unit_test(test_disk_full_advice),
      cmocka_unit_test(test_cleanup_on_fatal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
