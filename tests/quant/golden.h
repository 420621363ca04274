/* tests/quant/golden.h: reading ../shared/golden/quipsharp/constants.txt (sections
 * "[name]" followed by lines until the next section). */
#ifndef E8Q_TESTS_QUANT_GOLDEN_H
#define E8Q_TESTS_QUANT_GOLDEN_H

#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* the whole constants file (malloc'd; skips the test when ../shared is missing) */
static inline char *g_constants(void) {
  char *p = t_shared_path("golden/quipsharp/constants.txt");
  char *s = t_read_file(p, NULL);
  free(p);
  return s;
}

/* pointer to the first line after the header line of section [name], or fail */
static inline const char *g_section(const char *all, const char *name) {
  char tag[128];
  snprintf(tag, sizeof tag, "\n[%s]", name);
  const char *s = strstr(all, tag);
  if (!s) fail_msg("golden section [%s] not found", name);
  s = strchr(s + 1, '\n');
  return s ? s + 1 : s;
}

/* copy of the next line into buf (without newline); returns NULL at the end of the section */
static inline const char *g_line(const char *p, char *buf, size_t cap) {
  if (!p || !*p || *p == '[') return NULL;
  const char *e = strchr(p, '\n');
  size_t n = e ? (size_t)(e - p) : strlen(p);
  if (n >= cap) n = cap - 1;
  memcpy(buf, p, n);
  buf[n] = '\0';
  return e ? e + 1 : p + n;
}

#endif
