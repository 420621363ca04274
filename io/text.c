/* io/text.c: text files (UTF-8 validated), their non-empty lines, and uint32 token id files. */
#include "io/text.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/file.h"
#include "io/atomic.h"

/* ---------------------------------------------------------------- files */

char *e8q_file_read(const char *path, size_t *len, const char *what) {
  int fd = e8q_open_regular(path, what); /* a FIFO or device is refused, never waited on */
  struct stat sb;
  E8Q_CHECK_ERRNO(fstat(fd, &sb) == 0, "cannot stat %s", path);
  size_t n = (size_t)sb.st_size;
  char *buf = e8q_malloc(n + 1, what);
  size_t got = 0;
  while (got < n) {
    ssize_t k = read(fd, buf + got, n - got);
    if (k < 0 && errno == EINTR) continue;
    E8Q_CHECK_ERRNO(k >= 0, "cannot read %s", path);
    if (k == 0) break;
    got += (size_t)k;
  }
  close(fd);
  E8Q_CHECK(got == n, "%s: short read (%zu of %zu bytes); the file changed while reading", path, got, n);
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

/* byte offset of the first invalid UTF-8 sequence, or len when the text is valid.
 * Rejects overlong forms, surrogates, code points above U+10FFFF and NUL bytes. */
size_t e8q_utf8_check(const char *text, size_t len) {
  const uint8_t *s = (const uint8_t *)text;
  size_t i = 0;
  while (i < len) {
    uint8_t c = s[i];
    if (c == 0) return i;
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) k = 1, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) k = 2, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) k = 3, cp = c & 0x07, min = 0x10000;
    else return i;
    if (len - i <= k) return i;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += k + 1;
  }
  return len;
}

char *e8q_text_read_for(const char *path, const char *opt, size_t *len) {
  size_t n;
  char *buf = e8q_file_read(path, &n, "text file");
  const char *o = opt ? opt : "", *sp = opt ? " " : "";
  E8Q_CHECK(n > 0, "%s%s%s: the text file is empty; give a file with text (UTF-8) or token ids (.ids/.u32)", o, sp,
            path);
  size_t bad = e8q_utf8_check(buf, n);
  if (bad < n) {
    unsigned b = (uint8_t)buf[bad];
    free(buf);
    E8Q_FATAL("%s%s%s: not valid UTF-8: bad byte 0x%02x at byte offset %zu%s; convert the file to UTF-8 (for "
              "example with iconv)",
              o, sp, path, b, bad, b == 0 ? " (a NUL byte)" : "");
  }
  if (len) *len = n;
  return buf;
}

char *e8q_text_read(const char *path, size_t *len) { return e8q_text_read_for(path, NULL, len); }

/* ---------------------------------------------------------------- lines */

static int blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n' && s[i] != '\v' && s[i] != '\f') return 0;
  return 1;
}

int e8q_text_lines(const char *text, int skip, int max_lines, char ***lines) {
  int cap = 64, n = 0, seen = 0;
  char **out = e8q_malloc((size_t)cap * sizeof(char *), "text lines");
  const char *p = text;
  while (*p && (max_lines <= 0 || n < max_lines)) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    size_t keep = len;
    while (keep > 0 && (p[keep - 1] == '\r' || p[keep - 1] == '\n')) keep--;
    if (!blank(p, keep)) {
      if (seen++ >= skip) {
        if (n == cap) {
          cap *= 2;
          out = realloc(out, (size_t)cap * sizeof(char *));
          E8Q_CHECK(out, "out of memory collecting text lines");
        }
        out[n] = e8q_malloc(keep + 1, "text line");
        memcpy(out[n], p, keep);
        out[n][keep] = 0;
        n++;
      }
    }
    p += len;
    if (*p == '\n') p++;
  }
  *lines = out;
  return n;
}

void e8q_text_lines_free(char **lines, int n) {
  if (!lines) return;
  for (int i = 0; i < n; i++) free(lines[i]);
  free(lines);
}

/* ---------------------------------------------------------------- id files */

int e8q_ids_is_file(const char *path) {
  size_t n = strlen(path);
  return (n > 4 && strcmp(path + n - 4, ".ids") == 0) || (n > 4 && strcmp(path + n - 4, ".u32") == 0);
}

size_t e8q_ids_read(const char *path, int vocab_size, int **ids) {
  size_t n;
  char *buf = e8q_file_read(path, &n, "token id file");
  E8Q_CHECK(n > 0, "%s: the token id file is empty", path);
  E8Q_CHECK(n % 4 == 0,
            "%s: %zu bytes is not a multiple of 4; a token id file holds little-endian uint32 ids (truncated?)",
            path, n);
  size_t count = n / 4;
  int *out = e8q_malloc(count * sizeof(int), "token ids");
  const uint8_t *b = (const uint8_t *)buf;
  for (size_t i = 0; i < count; i++) {
    uint32_t v = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
                 (uint32_t)b[4 * i + 3] << 24;
    if ((vocab_size > 0 && v >= (uint32_t)vocab_size) || v > 0x7fffffffu) {
      free(out);
      free(buf);
      E8Q_FATAL("%s: token id %u at index %zu is outside the model's vocabulary of %d; the ids were made with "
                "another tokenizer",
                path, v, i, vocab_size);
    }
    out[i] = (int)v;
  }
  free(buf);
  *ids = out;
  return count;
}

/* writes ids as a little-endian uint32 file (io/atomic.h: temporary, fsync, rename) */
void e8q_ids_write(const char *path, const int *ids, size_t n) {
  uint8_t *b = e8q_malloc(n * 4 + 1, "id buffer");
  for (size_t i = 0; i < n; i++) {
    E8Q_CHECK(ids[i] >= 0, "%s: negative token id %d at index %zu", path, ids[i], i);
    uint32_t v = (uint32_t)ids[i];
    b[4 * i] = (uint8_t)v, b[4 * i + 1] = (uint8_t)(v >> 8), b[4 * i + 2] = (uint8_t)(v >> 16),
    b[4 * i + 3] = (uint8_t)(v >> 24);
  }
  e8q_atomic_write_file(path, "ids", b, n * 4, NULL);
  free(b);
}

/* ---------------------------------------------------------------- reports */
void e8q_appendf(char *out, size_t cap, const char *fmt, ...) {
  if (!out) return;
  size_t l = strlen(out);
  if (l + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out + l, cap - l, fmt, ap);
  va_end(ap);
}
