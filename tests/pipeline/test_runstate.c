/* tests/pipeline/test_runstate.c: atomic files, fault injection, the journal and the run
 * directory: the pieces that make `e8q quantize` resumable. Crashes are real: a forked child
 * SIGKILLs itself at a named fault point and the parent inspects what is left on disk. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/hash.h"
#include "io/atomic.h"
#include "io/journal.h"
#include "io/rundir.h"
#include "testutil.h"

static int count_tmp(const char *dir) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c '\\.tmp\\.' > '%s/.count'", dir, dir);
  (void)system(cmd);
  char p[4096];
  snprintf(p, sizeof p, "%s/.count", dir);
  char *s = t_read_file(p, NULL);
  int n = atoi(s);
  free(s);
  unlink(p);
  return n;
}

/* runs fn in a child with E8Q_FAULT=fault; returns the signal that ended it (0 if it exited) */
static int run_child(const char *fault, void (*fn)(const char *), const char *arg) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("E8Q_FAULT", fault, 1);
    e8q_fault_reset();
    fn(arg);
    _exit(0);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return WIFSIGNALED(st) ? WTERMSIG(st) : 0;
}

/* ---------------------------------------------------------------- atomic files */
static void write_big(const char *path) {
  e8q_atomic_file *f = e8q_atomic_begin(path, "shard");
  char buf[1000];
  for (int i = 0; i < 100; i++) {
    memset(buf, 'a' + i % 26, sizeof buf);
    e8q_atomic_write(f, buf, sizeof buf);
  }
  e8q_atomic_commit(f, NULL);
}

static void test_atomic_write_and_hash(void **state) {
  (void)state;
  char *d = t_tmpdir("atomic");
  char *p = t_join(d, "x.bin");
  char hex[65], want[65];
  e8q_atomic_write_file(p, "shard", "hello", 5, hex);
  e8q_sha256_file_hex(p, want);
  assert_string_equal(hex, want);
  assert_string_equal(hex, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
  /* overwrite replaces whole */
  write_big(p);
  size_t n = 0;
  char *s = t_read_file(p, &n);
  assert_int_equal(n, 100000);
  assert_int_equal(s[99999], 'a' + 99 % 26);
  free(s);
  assert_int_equal(count_tmp(d), 0);
  free(d);
  free(p);
}

static void test_atomic_crash_before_rename(void **state) {
  (void)state;
  char *d = t_tmpdir("atomic-crash");
  char *p = t_join(d, "x.bin");
  e8q_atomic_write_file(p, "shard", "old", 3, NULL);
  assert_int_equal(run_child("atomic.before_rename", write_big, p), SIGKILL);
  /* the final name still holds the old, whole content; the temporary is left behind */
  size_t n = 0;
  char *s = t_read_file(p, &n);
  assert_int_equal(n, 3);
  assert_memory_equal(s, "old", 3);
  free(s);
  assert_int_equal(count_tmp(d), 1);
  assert_int_equal(e8q_atomic_sweep(d), 1);
  assert_int_equal(count_tmp(d), 0);
  /* the temporaries of one file only (the artifact's directory may hold anything else) */
  assert_int_equal(run_child("atomic.before_rename", write_big, p), SIGKILL);
  const char *keep[] = {".x.bin.tmp.abc", ".y.bin.tmp.1", "x.bin.tmp.1", ".x.bin.tmp."};
  for (int i = 0; i < 4; i++) {
    char q[4200];
    snprintf(q, sizeof q, "%s/%s", d, keep[i]);
    e8q_atomic_write_file(q, "shard", "k", 1, NULL);
  }
  assert_int_equal(count_tmp(d), 5);
  assert_int_equal(e8q_atomic_sweep_for(p), 1);
  assert_int_equal(count_tmp(d), 4);
  assert_int_equal(e8q_atomic_sweep_for(p), 0);
  s = t_read_file(p, &n);
  assert_int_equal(n, 3); /* the file itself is untouched */
  free(s);
  free(d);
  free(p);
}

/* a fault point on the second pass only: first write commits, second is killed */
static void two_writes(const char *path) {
  e8q_atomic_write_file(path, "shard", "one", 3, NULL);
  e8q_atomic_write_file(path, "shard", "two", 3, NULL);
}

static void test_fault_nth_pass(void **state) {
  (void)state;
  char *d = t_tmpdir("fault-nth");
  char *p = t_join(d, "x.bin");
  assert_int_equal(run_child("atomic.before_rename:2", two_writes, p), SIGKILL);
  char *s = t_read_file(p, NULL);
  assert_string_equal(s, "one");
  free(s);
  assert_int_equal(run_child("atomic.before_rename:3", two_writes, p), 0);
  s = t_read_file(p, NULL);
  assert_string_equal(s, "two");
  free(s);
  /* unknown points are programming errors */
  E8Q_EXPECT_FATAL(e8q_fault_point("no.such.point"), "no.such.point", "e8q_fault_points");
  free(d);
  free(p);
}

static void test_atomic_enospc(void **state) {
  (void)state;
  char *d = t_tmpdir("enospc");
  char *p = t_join(d, "shard.bin");
  e8q_atomic_write_file(p, "shard", "old", 3, NULL);
  t_enospc("shard:3");
  E8Q_EXPECT_FATAL(write_big(p), p, "No space left on device", "Free space", "rerun the same command");
  t_enospc(NULL);
  char *s = t_read_file(p, NULL);
  assert_string_equal(s, "old"); /* untouched */
  free(s);
  assert_int_equal(count_tmp(d), 0); /* temporary removed */
  /* an unwritable place */
  E8Q_EXPECT_FATAL(e8q_atomic_write_file("/proc/e8q-nope/x", "artifact", "x", 1, NULL), "/proc/e8q-nope/x",
                   "cannot create");
  free(d);
  free(p);
}

/* ---------------------------------------------------------------- journal */
static void journal_three(const char *dir) {
  e8q_journal *j = e8q_journal_open(dir);
  e8q_journal_step(j, "a");
  e8q_journal_step(j, "b");
  e8q_journal_step(j, "c");
  e8q_journal_close(j);
}

static void test_journal_replay_and_torn(void **state) {
  (void)state;
  char *d = t_tmpdir("journal");
  e8q_journal *j = e8q_journal_open(d);
  assert_int_equal(j->n, 0);
  e8q_journal_step(j, "plan");
  e8q_journal_note(j, "{\"retry\":1}");
  e8q_journal_close(j);
  j = e8q_journal_open(d);
  assert_int_equal(j->n, 2);
  assert_true(e8q_journal_has_step(j, "plan"));
  assert_false(e8q_journal_has_step(j, "embed"));
  assert_int_equal(j->recs[1].type, E8Q_JREC_NOTE);
  assert_string_equal(j->recs[1].payload, "{\"retry\":1}");
  e8q_journal_close(j);
  char *jp = t_join(d, "journal");
  size_t before = 0;
  free(t_read_file(jp, &before));
  /* killed in the middle of the 2nd of three new records */
  assert_int_equal(run_child("journal.torn:2", journal_three, d), SIGKILL);
  size_t torn = 0;
  free(t_read_file(jp, &torn));
  j = e8q_journal_open(d);
  assert_int_equal(j->n, 3); /* plan, note, a */
  assert_true(e8q_journal_has_step(j, "a"));
  assert_false(e8q_journal_has_step(j, "b"));
  assert_true(j->dropped > 0);
  size_t after = 0;
  free(t_read_file(jp, &after));
  assert_int_equal(after + j->dropped, torn);
  assert_true(before < after && after < torn); /* the record of "a" kept, the half of "b" cut */
  e8q_journal_step(j, "b"); /* appends cleanly after the cut */
  e8q_journal_close(j);
  j = e8q_journal_open(d);
  assert_int_equal(j->n, 4);
  assert_int_equal(j->dropped, 0);
  e8q_journal_close(j);
  /* a flipped byte in the middle record: replay stops there */
  size_t n = 0;
  char *s = t_read_file(jp, &n);
  s[after - 20] ^= 0x40; /* inside the record of "a" (its checksum) */
  t_write_file(jp, s, n);
  free(s);
  j = e8q_journal_open(d);
  assert_int_equal(j->n, 2);
  e8q_journal_close(j);
  free(d);
  free(jp);
}

static void test_journal_enospc_keeps_records(void **state) {
  (void)state;
  char *d = t_tmpdir("journal-enospc");
  e8q_journal *j = e8q_journal_open(d);
  e8q_journal_step(j, "one");
  t_enospc("journal");
  E8Q_EXPECT_FATAL(e8q_journal_step(j, "two"), "run journal", "No space left", "rerun the same command");
  t_enospc(NULL);
  e8q_journal *k = e8q_journal_open(d);
  assert_int_equal(k->n, 1);
  assert_int_equal(k->dropped, 0);
  e8q_journal_close(k);
  free(d);
}

/* R/lock held by another process: refused naming its host and pid; released when it exits.
 * Reporting-only options recorded by older plans (eval_text_sha256, eval_lines) are ignored. */
static void test_rundir_lock(void **state) {
  (void)state;
  char *d = t_tmpdir("rundir-lock");
  cJSON *plan = cJSON_CreateObject();
  cJSON_AddStringToObject(cJSON_AddObjectToObject(plan, "fingerprint"), "config_sha256", "abc");
  cJSON_AddNumberToObject(cJSON_AddObjectToObject(plan, "options"), "bits", 2);
  cJSON_AddNumberToObject(plan, "seed", 7);
  char *lp = t_join(d, "lock");
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t child = fork();
  if (child == 0) { /* another run: holds the lock until killed */
    int fd = open(lp, O_RDWR | O_CREAT, 0644);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fd < 0 || fcntl(fd, F_SETLK, &fl) != 0 || pwrite(fd, "otherhost 4242\n", 15, 0) != 15) _exit(1);
    if (write(fds[1], "x", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  char c;
  assert_int_equal(read(fds[0], &c, 1), 1);
  E8Q_EXPECT_FATAL(e8q_rundir_open(d, plan), d, "in use by another e8q quantize run", "host otherhost, pid 4242",
                   "wait for it to finish", "another --run-dir");
  char *pp = t_join(d, "plan.json");
  assert_int_not_equal(access(pp, F_OK), 0); /* nothing written by the refused run */
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  close(fds[0]);
  close(fds[1]);
  e8q_rundir *r = e8q_rundir_open(d, plan); /* the lock died with its holder */
  assert_false(r->resumed);
  e8q_rundir_close(r);
  /* a plan of an older e8q that recorded --eval-text's hash and --eval-lines still resumes */
  const char *old = "{\"format\": \"e8q-plan\", \"version\": 1, \"fingerprint\": {\"config_sha256\": \"abc\"}, "
                    "\"options\": {\"bits\": 2, \"eval_text_sha256\": \"ff\", \"eval_lines\": 40}, \"seed\": 7}";
  t_write_file(pp, old, strlen(old));
  r = e8q_rundir_open(d, plan);
  assert_true(r->resumed);
  e8q_rundir_close(r);
  cJSON_Delete(plan);
  free(d);
  free(lp);
  free(pp);
}

static void test_journal_file_checks(void **state) {
  (void)state;
  char *d = t_tmpdir("journal-files");
  cJSON *plan = cJSON_CreateObject();
  cJSON *fp = cJSON_AddObjectToObject(plan, "fingerprint");
  cJSON_AddStringToObject(fp, "config_sha256", "abc");
  cJSON *opt = cJSON_AddObjectToObject(plan, "options");
  cJSON_AddNumberToObject(opt, "bits", 2);
  cJSON_AddNumberToObject(plan, "seed", 7);
  e8q_rundir *r = e8q_rundir_open(d, plan);
  assert_false(r->resumed);
  assert_false(e8q_rundir_have(r, "shards/0.e8qs"));
  e8q_rundir_commit(r, "shards/0.e8qs", "shard", "0123456789", 10);
  e8q_rundir_commit(r, "shards/1.e8qs", "shard", "abcdefghij", 10);
  assert_true(e8q_rundir_have(r, "shards/0.e8qs"));
  e8q_rundir_close(r);
  char p[4096];
  /* truncated and flipped files are detected */
  snprintf(p, sizeof p, "%s/shards/0.e8qs", d);
  t_write_file(p, "01234", 5);
  snprintf(p, sizeof p, "%s/shards/1.e8qs", d);
  t_write_file(p, "abcdefghiJ", 10);
  r = e8q_rundir_open(d, plan);
  assert_true(r->resumed);
  assert_false(e8q_rundir_have(r, "shards/0.e8qs"));
  assert_false(e8q_rundir_have(r, "shards/1.e8qs"));
  e8q_rundir_commit(r, "shards/1.e8qs", "shard", "abcdefghij", 10);
  assert_true(e8q_rundir_have(r, "shards/1.e8qs")); /* the latest record wins */
  e8q_rundir_close(r);
  /* a different run is refused with each difference named */
  cJSON *other = cJSON_Duplicate(plan, 1);
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(other, "options"), "bits", cJSON_CreateNumber(3));
  cJSON_AddStringToObject(cJSON_GetObjectItem(other, "options"), "method", "rtn");
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(other, "fingerprint"), "config_sha256", cJSON_CreateString("def"));
  E8Q_EXPECT_FATAL(e8q_rundir_open(d, other), "different run", "3 differences", "options.bits: 3 now, 2 in",
                   "options.method: \"rtn\" now, (absent) in", "fingerprint.config_sha256: \"def\" now, \"abc\" in",
                   "--run-dir");
  cJSON_Delete(other);
  /* an unrelated non-empty directory is never used as a run directory */
  char *u = t_tmpdir("not-a-run");
  char up[4096];
  snprintf(up, sizeof up, "%s/notes.txt", u);
  t_write_file(up, "mine", 4);
  E8Q_EXPECT_FATAL(e8q_rundir_open(u, plan), u, "not an e8q run directory");
  free(u);
  /* but what a run killed before writing plan.json left is fine */
  char *k = t_tmpdir("killed-early");
  char kp[4096];
  snprintf(kp, sizeof kp, "%s/shards", k);
  mkdir(kp, 0755);
  snprintf(kp, sizeof kp, "%s/.plan.json.tmp.123", k);
  t_write_file(kp, "{", 1);
  /* and so is the built-in demo model */
  snprintf(kp, sizeof kp, "%s/" E8Q_RUNDIR_DEMO_MODEL, k);
  mkdir(kp, 0755);
  e8q_rundir_check_usable(k);
  /* anything else is not (a Slurm job keeps its script and log in RUN.slurm/, beside) */
  snprintf(up, sizeof up, "%s/slurm-42.out", k);
  t_write_file(up, "x", 1);
  E8Q_EXPECT_FATAL(e8q_rundir_check_usable(k), "not an e8q run directory");
  unlink(up);
  e8q_rundir *kr = e8q_rundir_open(k, plan);
  assert_false(kr->resumed);
  e8q_rundir_close(kr);
  free(k);
  cJSON_Delete(plan);
  free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_atomic_write_and_hash),
      cmocka_unit_test(test_atomic_crash_before_rename),
      cmocka_unit_test(test_fault_nth_pass),
      cmocka_unit_test(test_atomic_enospc),
      cmocka_unit_test(test_journal_replay_and_torn),
      cmocka_unit_test(test_journal_enospc_keeps_records),
      cmocka_unit_test(test_journal_file_checks),
      cmocka_unit_test(test_rundir_lock),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
