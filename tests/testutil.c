/* tests/testutil.c */
#include "testutil.h"

#include "common/fault.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

char *t_shared_path(const char *rel) {
  const char *root = getenv("E8Q_SHARED");
  if (!root || !*root) root = "../shared";
  size_t n = strlen(root) + strlen(rel) + 2;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s", root, rel);
  struct stat st;
  if (stat(p, &st) != 0) {
    print_message("shared data %s not found (set E8Q_SHARED): skipping\n", p);
    free(p);
    skip();
  }
  return p;
}

char *t_read_shared(const char *rel, size_t *n, char **path) {
  char *p = t_shared_path(rel);
  char *bytes = t_read_file(p, n);
  if (path)
    *path = p;
  else
    free(p);
  return bytes;
}

char *t_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s", a, b);
  return p;
}

char *t_smollm2_path(void) {
  const char *dir = getenv("E8Q_MODELS");
  char def[4096];
  if (!dir || !*dir) {
    const char *home = getenv("HOME");
    snprintf(def, sizeof def, "%s/.cache/e8q", home ? home : ".");
    dir = def;
  }
  size_t n = strlen(dir) + 64;
  char *p = malloc(n);
  snprintf(p, n, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
  struct stat st;
  if (stat(p, &st) != 0) {
    const char *req = getenv("E8Q_REQUIRE_MODELS");
    if (req && !strcmp(req, "1")) fail_msg("the real test model %s is missing: run scripts/fetch_smollm2.sh", p);
    print_message("the real test model %s is missing (scripts/fetch_smollm2.sh fetches it): skipping\n", p);
    free(p);
    skip();
  }
  return p;
}

char *t_tmpdir(const char *tag) {
  const char *root = getenv("E8Q_TEST_TMP");
  if (!root || !*root) root = "/tmp";
  size_t n = strlen(root) + strlen(tag) + 64;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s-%d", root, tag, (int)getpid());
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
  if (system(cmd) != 0) fail_msg("cannot clear %s", p);
  if (mkdir(p, 0755) != 0) fail_msg("cannot create %s: %s", p, strerror(errno));
  return p;
}

char *t_read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)len + 1);
  if (fread(buf, 1, (size_t)len, f) != (size_t)len) fail_msg("short read of %s", path);
  buf[len] = '\0';
  fclose(f);
  if (n) *n = (size_t)len;
  return buf;
}

void t_write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) fail_msg("cannot create %s: %s", path, strerror(errno));
  if (fwrite(data, 1, n, f) != n) fail_msg("short write to %s", path);
  fclose(f);
}

uint64_t t_rng_u64(t_rng *r) {
  /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double t_rng_uniform(t_rng *r) { return (double)(t_rng_u64(r) >> 11) * 0x1.0p-53; }

double t_rng_normal(t_rng *r) {
  double u1 = t_rng_uniform(r), u2 = t_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t t_fresh_seed(const char *test) {
  const char *env = getenv("E8Q_TEST_SEED");
  uint64_t s = env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
  print_message("%s: seed %llu (E8Q_TEST_SEED to repeat)\n", test, (unsigned long long)s);
  return s;
}

char *t_run(const char *cmd, int *status) {
  print_message("$ %s\n", cmd);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t cap = 1 << 16, n = 0, k;
  char *out = malloc(cap);
  while ((k = fread(out + n, 1, cap - n - 1, p)) > 0) {
    n += k;
    if (cap - n < 1024) out = realloc(out, cap *= 2);
  }
  out[n] = '\0';
  int st = pclose(p);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return out;
}

int t_rm_rf(const char *dir) {
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd);
}

void t_enospc(const char *spec) {
  if (spec)
    setenv("E8Q_FAULT_ENOSPC", spec, 1);
  else
    unsetenv("E8Q_FAULT_ENOSPC");
  e8q_fault_reset();
}
