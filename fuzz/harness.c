/* fuzz/harness.c: trapped calls with their resources released (fuzz/harness.h). */
#include "harness.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

/* ---------------------------------------------------------------- the real functions */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t s);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off);
int __real_munmap(void *a, size_t n);
int __real_open(const char *path, int flags, ...);
int __real_close(int fd);
FILE *__real_fdopen(int fd, const char *mode);
int __real_fclose(FILE *f);

/* ---------------------------------------------------------------- tracking tables
 * Heap blocks: an open-addressing set of pointers (tombstones on removal). Mappings, descriptors
 * and streams: short arrays. Only what is made while a call is armed is recorded. */
static int g_armed;
static void **g_heap;   /* [g_cap] NULL empty, TOMB removed */
static size_t g_cap, g_used, g_live;
#define TOMB ((void *)1)

static size_t slot_of(void *p) { return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull & (g_cap - 1); }

static void heap_grow(void) {
  size_t old = g_cap;
  void **o = g_heap;
  g_cap = old ? old * 2 : 1 << 12;
  g_heap = __real_calloc(g_cap, sizeof *g_heap);
  if (!g_heap) abort();
  g_used = g_live = 0;
  for (size_t i = 0; i < old; i++)
    if (o[i] && o[i] != TOMB) {
      size_t k = slot_of(o[i]);
      while (g_heap[k]) k = (k + 1) & (g_cap - 1);
      g_heap[k] = o[i];
      g_used++, g_live++;
    }
  __real_free(o);
}

static void heap_add(void *p) {
  if (!p) return;
  if ((g_used + 1) * 2 > g_cap) heap_grow();
  size_t k = slot_of(p);
  while (g_heap[k] && g_heap[k] != TOMB) k = (k + 1) & (g_cap - 1);
  if (!g_heap[k]) g_used++;
  g_heap[k] = p;
  g_live++;
}

/* 1 when p was tracked (and is no more) */
static int heap_remove(void *p) {
  if (!p || !g_live) return 0;
  size_t k = slot_of(p);
  while (g_heap[k]) {
    if (g_heap[k] == p) {
      g_heap[k] = TOMB;
      g_live--;
      return 1;
    }
    k = (k + 1) & (g_cap - 1);
  }
  return 0;
}

#define SMALL 256
static struct { void *a; size_t n; } g_maps[SMALL];
static int g_nmaps;
static int g_fds[SMALL], g_nfds;
static FILE *g_files[SMALL];
static int g_nfiles;

static void fd_forget(int fd) {
  for (int i = 0; i < g_nfds; i++)
    if (g_fds[i] == fd) {
      g_fds[i] = g_fds[--g_nfds];
      return;
    }
}

/* ---------------------------------------------------------------- the wrappers */
void *__wrap_malloc(size_t n) {
  void *p = __real_malloc(n);
  if (g_armed) heap_add(p);
  return p;
}
void *__wrap_calloc(size_t n, size_t s) {
  void *p = __real_calloc(n, s);
  if (g_armed) heap_add(p);
  return p;
}
void *__wrap_realloc(void *p, size_t n) {
  int tracked = heap_remove(p);
  void *q = __real_realloc(p, n);
  if (!q && n) { /* failed: p is still valid */
    if (tracked) heap_add(p);
    return q;
  }
  if (g_armed && (tracked || !p)) heap_add(q); /* a block made before the call stays untracked */
  return q;
}
void __wrap_free(void *p) {
  heap_remove(p);
  __real_free(p);
}
char *__wrap_strdup(const char *s) {
  char *p = __real_strdup(s);
  if (g_armed) heap_add(p);
  return p;
}
char *__wrap_strndup(const char *s, size_t n) {
  char *p = __real_strndup(s, n);
  if (g_armed) heap_add(p);
  return p;
}
int __wrap_posix_memalign(void **p, size_t a, size_t n) {
  int rc = __real_posix_memalign(p, a, n);
  if (rc == 0 && g_armed) heap_add(*p);
  return rc;
}
void *__wrap_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off) {
  void *p = __real_mmap(a, n, prot, flags, fd, off);
  if (p != MAP_FAILED && g_armed && g_nmaps < SMALL) g_maps[g_nmaps].a = p, g_maps[g_nmaps++].n = n;
  return p;
}
int __wrap_munmap(void *a, size_t n) {
  for (int i = 0; i < g_nmaps; i++)
    if (g_maps[i].a == a) {
      g_maps[i] = g_maps[--g_nmaps];
      break;
    }
  return __real_munmap(a, n);
}
int __wrap_open(const char *path, int flags, ...) {
  int mode = 0;
  if (flags & O_CREAT) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, int);
    va_end(ap);
  }
  int fd = __real_open(path, flags, mode);
  if (fd >= 0 && g_armed && g_nfds < SMALL) g_fds[g_nfds++] = fd;
  return fd;
}
int __wrap_close(int fd) {
  fd_forget(fd);
  return __real_close(fd);
}
FILE *__wrap_fdopen(int fd, const char *mode) {
  FILE *f = __real_fdopen(fd, mode);
  if (f && g_armed && g_nfiles < SMALL) {
    fd_forget(fd); /* the stream owns it now */
    g_files[g_nfiles++] = f;
  }
  return f;
}
int __wrap_fclose(FILE *f) {
  for (int i = 0; i < g_nfiles; i++)
    if (g_files[i] == f) {
      g_files[i] = g_files[--g_nfiles];
      break;
    }
  fd_forget(fileno(f));
  return __real_fclose(f);
}

/* ---------------------------------------------------------------- calls */
static void track_begin(void) {
  g_nmaps = g_nfds = g_nfiles = 0;
  g_armed = 1;
}

/* release: 1 frees what the call made (it was trapped); 0 keeps it (the caller owns it) */
static void track_end(int release) {
  g_armed = 0;
  if (release) {
    for (int i = 0; i < g_nfiles; i++) __real_fclose(g_files[i]);
    for (int i = 0; i < g_nfds; i++) __real_close(g_fds[i]);
    for (int i = 0; i < g_nmaps; i++) __real_munmap(g_maps[i].a, g_maps[i].n);
    for (size_t i = 0; i < g_cap; i++)
      if (g_heap[i] && g_heap[i] != TOMB) __real_free(g_heap[i]);
  }
  if (g_cap > (1u << 16)) { /* a large call grew the table: start small again */
    __real_free(g_heap);
    g_heap = NULL;
    g_cap = 0;
  } else if (g_used) {
    memset(g_heap, 0, g_cap * sizeof *g_heap);
  }
  g_used = g_live = 0;
  g_nmaps = g_nfds = g_nfiles = 0;
}

static e8q_error_trap g_trap;
static char g_msg[2048];

int fz_call(void (*fn)(void *), void *arg) {
  fz_init();
  track_begin();
  if (setjmp(g_trap.env) == 0) {
    e8q_error_trap_arm(&g_trap);
    fn(arg);
    e8q_error_trap_arm(NULL);
    track_end(0);
    return 0;
  }
  snprintf(g_msg, sizeof g_msg, "%s", g_trap.message);
  track_end(1);
  return 1;
}

const char *fz_last_error(void) { return g_msg; }

typedef struct {
  fz_opener open;
  const char *path;
  void *h;
} open_call;

static void open_run(void *a) {
  open_call *c = a;
  c->h = c->open(c->path);
}

void *fz_open(fz_opener open, const char *path) {
  open_call c = {open, path, NULL};
  return fz_call(open_run, &c) ? NULL : c.h;
}

/* ---------------------------------------------------------------- files */
static char g_dir[256];

static void *hook_malloc(size_t n) { return __wrap_malloc(n); }
static void hook_free(void *p) { __wrap_free(p); }

static void remove_dir(void) {
  DIR *d = opendir(g_dir);
  if (d) {
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(g_dir);
}

void fz_init(void) {
  if (g_dir[0]) return;
  cJSON_Hooks h = {hook_malloc, hook_free};
  cJSON_InitHooks(&h);
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(g_dir, sizeof g_dir, "%s/e8q-fuzz-%d", base, (int)getpid());
  mkdir(g_dir, 0700);
  atexit(remove_dir);
}

const char *fz_dir(void) {
  fz_init();
  return g_dir;
}

const char *fz_write(const char *name, const uint8_t *data, size_t n) {
  static char path[600];
  fz_init();
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  int fd = __real_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) abort();
  size_t done = 0;
  while (done < n) {
    ssize_t w = write(fd, data + done, n - done);
    if (w <= 0) abort();
    done += (size_t)w;
  }
  __real_close(fd);
  return path;
}
