/* common/cleanup.c: temporary paths removed on every way out (common/cleanup.h). */
#include "common/cleanup.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

/* ---------------------------------------------------------------- the table
 * Fixed storage: the signal handler walks it without allocating. used[i] is set only after
 * path[i] is complete, and cleared before the slot is reused. */
#define PATH_CAP 4096
static char g_path[E8Q_CLEANUP_MAX][PATH_CAP];
static volatile sig_atomic_t g_used[E8Q_CLEANUP_MAX];
static volatile sig_atomic_t g_top; /* slots [0, g_top) have been used */
static int g_hooked;

static void remove_all(void) {
  for (int i = (int)g_top - 1; i >= 0; i--) {
    if (!g_used[i]) continue;
    g_used[i] = 0;
    struct stat sb;
    if (lstat(g_path[i], &sb) != 0) continue;
    if (S_ISDIR(sb.st_mode)) (void)rmdir(g_path[i]);
    else (void)unlink(g_path[i]);
  }
  g_top = 0;
}

void e8q_cleanup_run(void) { remove_all(); }

/* ---------------------------------------------------------------- signals */
static void on_signal(int sig) {
  remove_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* SIGINT, SIGTERM and SIGHUP, where nobody else handles them (the MPI runtime or a debugger may) */
static void hook(void) {
  if (g_hooked) return;
  g_hooked = 1;
  atexit(remove_all);
  static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
  for (int i = 0; i < 3; i++) {
    struct sigaction old;
    if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) continue;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, NULL);
  }
}

/* ---------------------------------------------------------------- register */
void e8q_cleanup_add(const char *path) {
  size_t n = strlen(path);
  E8Q_CHECK(n > 0 && n < PATH_CAP, "temporary path of %zu bytes is too long to register for removal", n);
  hook();
  int slot = -1;
  while (g_top > 0 && !g_used[g_top - 1]) g_top--; /* reuse freed slots at the top */
  E8Q_CHECK(g_top < E8Q_CLEANUP_MAX, "internal: more than %d temporary paths registered for removal (%s)",
            E8Q_CLEANUP_MAX, path);
  slot = (int)g_top;
  memcpy(g_path[slot], path, n + 1);
  g_used[slot] = 1;
  g_top = slot + 1;
}

void e8q_cleanup_forget(const char *path) {
  for (int i = (int)g_top - 1; i >= 0; i--)
    if (g_used[i] && !strcmp(g_path[i], path)) {
      g_used[i] = 0;
      break;
    }
  while (g_top > 0 && !g_used[g_top - 1]) g_top--;
}

int e8q_cleanup_count(void) {
  int c = 0;
  for (int i = 0; i < (int)g_top; i++) c += g_used[i] != 0;
  return c;
}
