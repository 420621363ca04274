/* io/atomic.c: write-temp, fsync, rename, fsync-dir (io/atomic.h). */
#include "io/atomic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/hash.h"

struct e8q_atomic_file {
  char *path;        /* final name */
  char *tmp;         /* temporary name in the same directory */
  char *dir;         /* the directory */
  char kind[32];
  int fd;
  uint64_t size;     /* bytes written */
  e8q_sha256 *sha;   /* running hash of the content */
};

/* ---------------------------------------------------------------- helpers */
static char *dir_of(const char *path) {
  char *c = strdup(path);
  E8Q_CHECK(c, "out of memory");
  char *d = strdup(dirname(c));
  free(c);
  E8Q_CHECK(d, "out of memory");
  return d;
}

static const char *base_of(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

/* the fatal error for a failed write/fsync/rename: removes the temporary first */
static void atomic_fail(e8q_atomic_file *f, int err, const char *what) E8Q_NORETURN;
static void atomic_fail(e8q_atomic_file *f, int err, const char *what) {
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  unlink(f->tmp);
  if (err == ENOSPC || err == EDQUOT)
    E8Q_FATAL("cannot write %s (%s file): %s while %s; the file was not written (no partial file is left). "
              "Free space on the file system holding %s and rerun the same command: the run directory's finished "
              "work is kept and resumed. (--out may name a place with more space; a different --run-dir starts "
              "over: to move the run, copy the whole run directory there and pass the copy as --run-dir)",
              f->path, f->kind, strerror(err), what, f->dir);
  E8Q_FATAL("cannot write %s (%s file): %s while %s; the file was not written (no partial file is left). "
            "Check that %s exists, is writable and is on a healthy disk, then rerun the same command",
            f->path, f->kind, strerror(err), what, f->dir);
}

void e8q_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  E8Q_CHECK_ERRNO(fd >= 0, "cannot open directory %s to fsync it", dir);
  /* some file systems (tmpfs) report EINVAL for directory fsync: nothing to make durable */
  E8Q_CHECK_ERRNO(fsync(fd) == 0 || errno == EINVAL, "cannot fsync directory %s", dir);
  close(fd);
}

void e8q_mkdirs(const char *dir) {
  char *p = strdup(dir);
  E8Q_CHECK(p, "out of memory");
  size_t n = strlen(p);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] == '/' || p[i] == '\0') {
      char c = p[i];
      p[i] = '\0';
      if (mkdir(p, 0755) != 0 && errno != EEXIST)
        E8Q_FATAL("cannot create directory %s: %s; check the path and its permissions", p, strerror(errno));
      p[i] = c;
    }
  }
  struct stat st;
  E8Q_CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode), "%s exists but is not a directory", dir);
  free(p);
}

/* ---------------------------------------------------------------- the writer */
e8q_atomic_file *e8q_atomic_begin(const char *path, const char *kind) {
  e8q_atomic_file *f = e8q_calloc(1, sizeof *f, "atomic file");
  f->path = strdup(path);
  f->dir = dir_of(path);
  snprintf(f->kind, sizeof f->kind, "%s", kind);
  size_t len = strlen(f->dir) + strlen(base_of(path)) + 64;
  f->tmp = e8q_malloc(len, "temporary file name");
  snprintf(f->tmp, len, "%s/.%s.tmp.%ld", f->dir, base_of(path), (long)getpid());
  f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f->fd < 0) {
    int err = errno;
    E8Q_FATAL("cannot create %s (%s file, temporary %s): %s; check that the directory %s exists and is writable, "
              "or choose another path",
              path, kind, f->tmp, strerror(err), f->dir);
  }
  f->sha = e8q_sha256_new();
  return f;
}

void e8q_atomic_write(e8q_atomic_file *f, const void *data, size_t n) {
  const uint8_t *p = data;
  size_t left = n;
  while (left > 0) {
    if (e8q_fault_enospc(f->kind)) atomic_fail(f, ENOSPC, "writing (injected by E8Q_FAULT_ENOSPC)");
    size_t chunk = left < ((size_t)1 << 30) ? left : ((size_t)1 << 30);
    ssize_t w = write(f->fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      atomic_fail(f, errno, "writing");
    }
    if (w == 0) atomic_fail(f, ENOSPC, "writing (the write made no progress)");
    p += w;
    left -= (size_t)w;
  }
  e8q_sha256_update(f->sha, data, n);
  f->size += n;
}

uint64_t e8q_atomic_size(const e8q_atomic_file *f) { return f->size; }

static void atomic_free(e8q_atomic_file *f) {
  free(f->path);
  free(f->tmp);
  free(f->dir);
  free(f);
}

void e8q_atomic_commit(e8q_atomic_file *f, char sha_hex[65]) {
  if (fsync(f->fd) != 0) atomic_fail(f, errno, "fsyncing");
  if (close(f->fd) != 0) {
    f->fd = -1;
    atomic_fail(f, errno, "closing");
  }
  f->fd = -1;
  e8q_fault_point("atomic.before_rename");
  if (rename(f->tmp, f->path) != 0) atomic_fail(f, errno, "renaming the temporary into place");
  e8q_fsync_dir(f->dir);
  uint8_t d[32];
  e8q_sha256_finish(f->sha, d);
  if (sha_hex) e8q_hex(d, 32, sha_hex);
  atomic_free(f);
}

void e8q_atomic_abort(e8q_atomic_file *f) {
  if (f->fd >= 0) close(f->fd);
  unlink(f->tmp);
  uint8_t d[32];
  e8q_sha256_finish(f->sha, d);
  atomic_free(f);
}

void e8q_atomic_write_file(const char *path, const char *kind, const void *data, size_t n, char sha_hex[65]) {
  e8q_atomic_file *f = e8q_atomic_begin(path, kind);
  e8q_atomic_write(f, data, n);
  e8q_atomic_commit(f, sha_hex);
}

int e8q_atomic_sweep(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int removed = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    /* ours: ".<name>.tmp.<pid>"; the safetensors writer's: "<name>.tmp.XXXXXX" */
    if (!strstr(e->d_name, ".tmp.")) continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (unlink(p) == 0) removed++;
  }
  closedir(d);
  return removed;
}

int e8q_atomic_sweep_for(const char *path) {
  char *dir = dir_of(path);
  char prefix[4096];
  int np = snprintf(prefix, sizeof prefix, ".%s.tmp.", base_of(path));
  int removed = 0;
  DIR *d = opendir(dir);
  if (d && np > 0 && (size_t)np < sizeof prefix) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      const char *pid = e->d_name + np;
      if (strncmp(e->d_name, prefix, (size_t)np) != 0 || !*pid || strspn(pid, "0123456789") != strlen(pid)) continue;
      char p[8192];
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      if (unlink(p) == 0) removed++;
    }
  }
  if (d) closedir(d);
  free(dir);
  return removed;
}
