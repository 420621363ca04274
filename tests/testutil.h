/* tests/testutil.h: what every e8q test shares: cmocka, paths to ../shared,
 * trapping fatal errors, comparisons in double precision. */
#ifndef E8Q_TESTS_TESTUTIL_H
#define E8Q_TESTS_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/error.h"

/* ../shared (or $E8Q_SHARED) joined with a relative path; static buffer per call site is NOT
 * used: the result is malloc'd and owned by the caller. Skips the test (cmocka skip) when the
 * file does not exist, with a message naming it. */
char *t_shared_path(const char *rel);
/* The real test model, SmolLM2-135M-Instruct as a GGUF (scripts/fetch_smollm2.sh puts it in
 * $E8Q_MODELS, default ~/.cache/e8q): its path, malloc'd. When it is missing the test is skipped
 * with a message, or fails when E8Q_REQUIRE_MODELS=1 (CI: scripts/test.sh fetches it first). */
char *t_smollm2_path(void);
/* t_shared_path(rel) read whole (t_read_file); *n gets the size, *path (when path is not NULL)
 * the malloc'd path, else it is freed */
char *t_read_shared(const char *rel, size_t *n, char **path);
/* "a/b", malloc'd */
char *t_join(const char *a, const char *b);
/* a fresh empty directory under $E8Q_TEST_TMP (or /tmp), named after tag; caller frees */
char *t_tmpdir(const char *tag);
/* read a whole file; returns malloc'd bytes (NUL-terminated), *n gets the size */
char *t_read_file(const char *path, size_t *n);
void t_write_file(const char *path, const void *data, size_t n);
/* runs a shell command through popen (the line printed first), returns its stdout (malloc'd,
 * NUL-terminated) and its exit status (128 when it did not exit normally) */
char *t_run(const char *cmd, int *status);
/* sets E8Q_FAULT_ENOSPC to spec (common/fault.h; unsets it when spec is NULL) and forgets the
 * fault counters */
void t_enospc(const char *spec);
/* rm -rf dir (a test's temporary directory); returns system()'s status */
int t_rm_rf(const char *dir);

/* Runs stmt with a fatal-error trap armed: the test fails unless stmt raises a fatal error
 * whose message contains every given substring (case-sensitive). */
#define E8Q_EXPECT_FATAL(stmt, ...)                                               \
  do {                                                                            \
    e8q_error_trap t_trap_;                                                       \
    if (setjmp(t_trap_.env) == 0) {                                               \
      e8q_error_trap_arm(&t_trap_);                                               \
      stmt;                                                                       \
      e8q_error_trap_arm(NULL);                                                   \
      fail_msg("expected a fatal error from: %s", #stmt);                         \
    } else {                                                                      \
      const char *t_need_[] = {__VA_ARGS__, NULL};                                \
      for (int t_i_ = 0; t_need_[t_i_]; t_i_++)                                   \
        if (!strstr(t_trap_.message, t_need_[t_i_]))                              \
          fail_msg("fatal message \"%s\" lacks \"%s\"", t_trap_.message, t_need_[t_i_]); \
    }                                                                             \
  } while (0)

/* |a-b| <= tol, with a message naming what */
#define T_NEAR(a, b, tol, what)                                                   \
  do {                                                                            \
    double t_a_ = (double)(a), t_b_ = (double)(b);                                \
    if (!(fabs(t_a_ - t_b_) <= (tol)))                                            \
      fail_msg("%s: %.10g vs %.10g differ by %.3g > %.3g", (what), t_a_, t_b_,   \
               fabs(t_a_ - t_b_), (double)(tol));                                 \
  } while (0)

/* xorshift-based deterministic generator for test data (seeded per test) */
typedef struct { uint64_t s; } t_rng;
uint64_t t_rng_u64(t_rng *r);
double t_rng_uniform(t_rng *r); /* [0,1) */
double t_rng_normal(t_rng *r);
/* a seed that changes per run (time and pid), printed so a failure can be reproduced;
 * E8Q_TEST_SEED overrides it */
uint64_t t_fresh_seed(const char *test);

#endif
