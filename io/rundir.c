/* io/rundir.c: plan.json, the journal and checkpoint files of a run (io/rundir.h). */
#include "io/rundir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/hash.h"
#include "io/config.h"
#include "io/gguf.h"
#include "common/hash.h"
#include "common/log.h"
#include "io/atomic.h"
#include "io/text.h"

/* ---------------------------------------------------------------- fingerprint */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

cJSON *e8q_model_fingerprint(const char *model_dir) {
  char p[4096];
  char hex[65];
  cJSON *fp = cJSON_CreateObject();
  if (e8q_gguf_is_file(model_dir)) { /* a GGUF file: its derived config and the file itself */
    char *cfg = e8q_config_json(model_dir);
    uint8_t d[32];
    e8q_sha256_bytes(cfg, strlen(cfg), d);
    e8q_hex(d, 32, hex);
    free(cfg);
    cJSON_AddStringToObject(fp, "config_sha256", hex);
    e8q_sha256_file_hex(model_dir, hex);
    const char *base = strrchr(model_dir, '/');
    cJSON_AddStringToObject(cJSON_AddObjectToObject(fp, "files"), base ? base + 1 : model_dir, hex);
    return fp;
  }
  snprintf(p, sizeof p, "%s/config.json", model_dir);
  e8q_sha256_file_hex(p, hex);
  cJSON_AddStringToObject(fp, "config_sha256", hex);
  DIR *d = opendir(model_dir);
  E8Q_CHECK_ERRNO(d, "cannot list the model directory %s", model_dir);
  char **names = NULL;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name);
    if (l > 12 && !strcmp(e->d_name + l - 12, ".safetensors")) {
      names = realloc(names, (size_t)(n + 1) * sizeof *names);
      E8Q_CHECK(names, "out of memory");
      names[n++] = strdup(e->d_name);
    }
  }
  closedir(d);
  E8Q_CHECK(n > 0, "model directory %s holds no .safetensors file", model_dir);
  qsort(names, (size_t)n, sizeof *names, cmp_str);
  cJSON *files = cJSON_AddObjectToObject(fp, "files");
  for (int i = 0; i < n; i++) {
    snprintf(p, sizeof p, "%s/%s", model_dir, names[i]);
    e8q_sha256_file_hex(p, hex);
    cJSON_AddStringToObject(files, names[i], hex);
    free(names[i]);
  }
  free(names);
  return fp;
}

/* ---------------------------------------------------------------- diff */
static char *short_json(const cJSON *v) {
  if (!v) return strdup("(absent)");
  char *s = cJSON_PrintUnformatted(v);
  if (s && strlen(s) > 80) strcpy(s + 72, "...");
  return s;
}

/* Lists the differences between two JSON values under `path` into out (one "path: a now, b in
 * where" line each); returns how many. */
static int json_diff(const cJSON *now, const cJSON *old, const char *path, const char *where, char *out, size_t cap) {
  if (now && old && cJSON_IsObject(now) && cJSON_IsObject(old)) {
    int n = 0;
    char sub[512];
    const cJSON *c;
    cJSON_ArrayForEach(c, now) {
      snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", c->string);
      n += json_diff(c, cJSON_GetObjectItemCaseSensitive(old, c->string), sub, where, out, cap);
    }
    cJSON_ArrayForEach(c, old) {
      if (cJSON_GetObjectItemCaseSensitive(now, c->string)) continue;
      snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", c->string);
      n += json_diff(NULL, c, sub, where, out, cap);
    }
    return n;
  }
  if (now && old && cJSON_Compare(now, old, 1)) return 0;
  char *a = short_json(now), *b = short_json(old);
  e8q_appendf(out, cap, "\n  %s: %s now, %s in %s", path, a, b, where);
  free(a);
  free(b);
  return 1;
}

/* ---------------------------------------------------------------- open */
void e8q_rundir_check_usable(const char *dir) {
  /* an existing directory without plan.json must be empty: never litter an unrelated one */
  char pp[4096];
  snprintf(pp, sizeof pp, "%s/plan.json", dir);
  DIR *d = opendir(dir);
  if (d && access(pp, F_OK) != 0) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      /* what a run killed before writing plan.json leaves; demo-model: the built-in demo of a
       * quantize run without --model (slurm/submit.sh keeps its files in RUN.slurm/, outside) */
      const char *nm = e->d_name;
      if (!strcmp(nm, ".") || !strcmp(nm, "..") || !strcmp(nm, "hessians") || !strcmp(nm, "acts") ||
          !strcmp(nm, "shards") || !strcmp(nm, "lock") || !strcmp(nm, E8Q_RUNDIR_DEMO_MODEL) || strstr(nm, ".tmp."))
        continue;
      closedir(d);
      char jp[4200];
      snprintf(jp, sizeof jp, "%s/journal", dir);
      if (access(jp, F_OK) == 0) /* a run directory that lost its plan, not a stranger's directory */
        E8Q_FATAL("--run-dir %s is an e8q run directory (it holds the run journal %s) whose plan.json is missing: "
                  "deleted or lost, it cannot be recreated from the rest. Restore %s from a copy to resume the run, "
                  "or remove %s (or choose another --run-dir) to start afresh",
                  dir, jp, pp, dir);
      E8Q_FATAL("--run-dir %s exists, is not empty and holds no plan.json: it is not an e8q run directory; "
                "choose another --run-dir (or an empty or new directory)",
                dir);
    }
  }
  if (d) closedir(d);
}

/* ---------------------------------------------------------------- lock */
/* R/lock write-locked by this process (fcntl F_SETLK: released by the kernel when the process
 * dies, so a killed run never leaves a stale lock); its content names the holder. Fatal, naming
 * the holder's host and pid, when another process holds it. Returns the open descriptor. */
static int rundir_lock(const char *dir) {
  char p[4096];
  snprintf(p, sizeof p, "%s/lock", dir);
  int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  E8Q_CHECK_ERRNO(fd >= 0, "--run-dir %s: cannot create its lock file %s", dir, p);
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    int err = errno;
    if (err != EACCES && err != EAGAIN) { /* a file system without locks (ENOLCK, ENOSYS, ...): run unlocked */
      e8q_warn("--run-dir %s: cannot lock %s (%s): its file system does not support locks, so two runs on it are not "
               "kept apart; run one at a time on this run directory",
               dir, p, strerror(err));
      return fd;
    }
    char who[256] = "";
    ssize_t n = pread(fd, who, sizeof who - 1, 0);
    who[n > 0 ? n : 0] = '\0';
    who[strcspn(who, "\n")] = '\0';
    char host[200] = "?";
    long pid = -1;
    sscanf(who, "%199s %ld", host, &pid);
    close(fd);
    E8Q_FATAL("--run-dir %s is in use by another e8q quantize run (host %s, pid %ld; see %s): wait for it to finish, "
              "or use another --run-dir",
              dir, host, pid, p);
  }
  char host[200] = "unknown", line[300];
  if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
  host[sizeof host - 1] = '\0';
  int n = snprintf(line, sizeof line, "%s %ld\n", host, (long)getpid());
  E8Q_CHECK_ERRNO(ftruncate(fd, 0) == 0 && pwrite(fd, line, (size_t)n, 0) == n && fsync(fd) == 0,
                  "--run-dir %s: cannot write its lock file %s", dir, p);
  return fd;
}

/* plan.json created exclusively: a complete, fsynced temporary linked to its name (link fails
 * with EEXIST when another creator won). Returns 1 when this call created it. */
static int plan_create(const char *dir, const char *p, const char *text) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s/.plan.json.tmp.%ld", dir, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  E8Q_CHECK_ERRNO(fd >= 0, "cannot create %s (is --run-dir %s writable?)", tmp, dir);
  size_t len = strlen(text);
  E8Q_CHECK_ERRNO(write(fd, text, len) == (ssize_t)len && fsync(fd) == 0, "cannot write %s", tmp);
  close(fd);
  int rc = link(tmp, p), err = errno;
  unlink(tmp);
  if (rc != 0 && err == EEXIST) return 0;
  errno = err;
  E8Q_CHECK_ERRNO(rc == 0, "cannot create %s", p);
  e8q_fsync_dir(dir);
  return 1;
}

e8q_rundir *e8q_rundir_open(const char *dir, const cJSON *plan) {
  static const char *const keys[] = {"fingerprint", "options", "seed"};
  for (int i = 0; i < 3; i++)
    E8Q_CHECK(cJSON_GetObjectItemCaseSensitive(plan, keys[i]), "internal: run plan lacks \"%s\"", keys[i]);
  e8q_rundir_check_usable(dir);
  e8q_mkdirs(dir);
  int lock_fd = rundir_lock(dir); /* before anything in dir is swept, read or written */
  e8q_rundir_check_usable(dir);   /* again, under the lock */
  e8q_rundir *r = e8q_calloc(1, sizeof *r, "run directory");
  r->dir = strdup(dir);
  r->lock_fd = lock_fd;
  char p[4096];
  e8q_atomic_sweep(dir);
  static const char *const subs[] = {"hessians", "acts", "shards"};
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, subs[i]);
    e8q_mkdirs(p);
    e8q_atomic_sweep(p);
  }
  snprintf(p, sizeof p, "%s/plan.json", dir);
  cJSON *mine = cJSON_Duplicate(plan, 1);
  cJSON_DeleteItemFromObjectCaseSensitive(mine, "format");
  cJSON_DeleteItemFromObjectCaseSensitive(mine, "version");
  cJSON_AddStringToObject(mine, "format", E8Q_PLAN_FORMAT);
  cJSON_AddNumberToObject(mine, "version", E8Q_PLAN_VERSION);
  int created = 0;
  if (access(p, F_OK) != 0) {
    char *text = cJSON_Print(mine);
    created = plan_create(dir, p, text);
    free(text);
  }
  char *old_text = created ? NULL : e8q_file_read(p, NULL, "run plan");
  if (old_text) {
    cJSON *old = cJSON_Parse(old_text);
    free(old_text);
    E8Q_CHECK(old, "%s is not valid JSON (damaged?); remove the run directory %s or choose another --run-dir", p, dir);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(old, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(old, "version");
    E8Q_CHECK(cJSON_IsString(fmt) && !strcmp(fmt->valuestring, E8Q_PLAN_FORMAT),
              "%s is not an e8q plan (\"format\" is not \"%s\"); choose another --run-dir", p, E8Q_PLAN_FORMAT);
    E8Q_CHECK(cJSON_IsNumber(ver) && ver->valueint == E8Q_PLAN_VERSION,
              "%s has plan version %d; this e8q reads version %d: use the e8q that made it or another --run-dir", p,
              cJSON_IsNumber(ver) ? ver->valueint : -1, E8Q_PLAN_VERSION);
    /* reporting-only options recorded by older versions: not part of the run's identity */
    cJSON *oo = cJSON_GetObjectItemCaseSensitive(old, "options");
    cJSON_DeleteItemFromObjectCaseSensitive(oo, "eval_text_sha256");
    cJSON_DeleteItemFromObjectCaseSensitive(oo, "eval_lines");
    char diff[8192] = "";
    int n = 0;
    for (int i = 0; i < 3; i++)
      n += json_diff(cJSON_GetObjectItemCaseSensitive(plan, keys[i]), cJSON_GetObjectItemCaseSensitive(old, keys[i]),
                         keys[i], p, diff, sizeof diff);
    if (n > 0) {
      cJSON_Delete(old);
      cJSON_Delete(mine);
      const int src = strstr(diff, "\n  fingerprint.") != NULL; /* a source file changed since the run began */
      E8Q_FATAL("run directory %s belongs to a different run (%d difference%s):%s\n%srerun with the model and "
                "options recorded there, or choose another --run-dir (or remove %s) to start afresh",
                dir, n, n > 1 ? "s" : "", diff,
                src ? "the source model is not the one this run began with (each changed file is named above): "
                      "restore the original file to resume; or "
                    : "",
                dir);
    }
    r->plan = old;
    r->resumed = 1;
    cJSON_Delete(mine);
  } else {
    r->plan = mine;
  }
  r->journal = e8q_journal_open(dir);
  return r;
}

void e8q_rundir_close(e8q_rundir *r) {
  if (!r) return;
  e8q_journal_close(r->journal);
  if (r->lock_fd >= 0) close(r->lock_fd); /* releases the lock (the file stays: no unlink race) */
  cJSON_Delete(r->plan);
  free(r->dir);
  free(r);
}

void e8q_rundir_path(const e8q_rundir *r, const char *rel, char *out, size_t cap) {
  int n = snprintf(out, cap, "%s/%s", r->dir, rel);
  E8Q_CHECK(n > 0 && (size_t)n < cap, "path %s/%s is too long", r->dir, rel);
}

void e8q_rundir_commit(e8q_rundir *r, const char *rel, const char *kind, const void *data, size_t n) {
  char p[4096], hex[65];
  e8q_rundir_path(r, rel, p, sizeof p);
  e8q_atomic_write_file(p, kind, data, n, hex);
  e8q_journal_file(r->journal, rel, hex, n);
}

int e8q_rundir_have(const e8q_rundir *r, const char *rel) { return e8q_journal_file_ok(r->journal, rel); }
