/* io/artifact.c: writing and reading the .e8q tar archive (io/artifact.h). */
#include "io/artifact.h"

#include <archive.h>
#include <archive_entry.h>
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
#include "common/hash.h"
#include "io/atomic.h"
#include "io/text.h"

/* ================================================================ writing */
struct e8q_artifact_writer {
  char *path;            /* final name */
  e8q_atomic_file *file; /* the temporary being written */
  struct archive *ar;
  cJSON *members;        /* {"name": {"size", "sha256"}} in order */
  /* the member being written */
  char *cur;             /* its name, NULL between members */
  uint64_t cur_size, cur_done;
  e8q_sha256 *cur_sha;
};

static la_ssize_t ar_write_cb(struct archive *ar, void *client, const void *buf, size_t n) {
  (void)ar;
  e8q_artifact_writer *w = client;
  e8q_atomic_write(w->file, buf, n); /* fatal (with the file named) on ENOSPC and I/O errors */
  return (la_ssize_t)n;
}

static void ar_check(e8q_artifact_writer *w, int rc, const char *what) {
  if (rc == ARCHIVE_OK) return;
  E8Q_FATAL("cannot write the archive %s: %s failed: %s", w->path, what, archive_error_string(w->ar));
}

static int name_safe(const char *name) {
  if (!name[0] || name[0] == '/') return 0;
  if (!strcmp(name, "..") || !strncmp(name, "../", 3) || strstr(name, "/../") ||
      (strlen(name) >= 3 && !strcmp(name + strlen(name) - 3, "/..")))
    return 0;
  return 1;
}

e8q_artifact_writer *e8q_artifact_create(const char *path) {
  e8q_artifact_writer *w = e8q_calloc(1, sizeof *w, "artifact writer");
  w->path = strdup(path);
  w->file = e8q_atomic_begin(path, "artifact");
  w->ar = archive_write_new();
  E8Q_CHECK(w->ar, "libarchive: out of memory");
  ar_check(w, archive_write_set_format_pax_restricted(w->ar), "setting the tar format");
  ar_check(w, archive_write_set_bytes_in_last_block(w->ar, 1), "setting the block size");
  ar_check(w, archive_write_open2(w->ar, w, NULL, ar_write_cb, NULL, NULL), "opening");
  w->members = cJSON_CreateObject();
  return w;
}

void e8q_artifact_member_begin(e8q_artifact_writer *w, const char *name, uint64_t size) {
  E8Q_CHECK(!w->cur, "internal: artifact member %s begun while %s is open", name, w->cur);
  E8Q_CHECK(name_safe(name), "artifact member name '%s' is not a safe relative path", name);
  E8Q_CHECK(!cJSON_GetObjectItemCaseSensitive(w->members, name), "artifact %s: member %s written twice", w->path,
            name);
  struct archive_entry *e = archive_entry_new();
  archive_entry_set_pathname(e, name);
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, 0644);
  archive_entry_set_size(e, (la_int64_t)size);
  archive_entry_set_mtime(e, 0, 0);
  archive_entry_set_uid(e, 0);
  archive_entry_set_gid(e, 0);
  ar_check(w, archive_write_header(w->ar, e), "writing a member header");
  archive_entry_free(e);
  w->cur = strdup(name);
  w->cur_size = size;
  w->cur_done = 0;
  w->cur_sha = e8q_sha256_new();
}

void e8q_artifact_member_write(e8q_artifact_writer *w, const void *data, size_t n) {
  E8Q_CHECK(w->cur, "internal: artifact write outside a member");
  E8Q_CHECK(w->cur_done + n <= w->cur_size, "internal: artifact member %s: %llu bytes written, more than the %llu declared",
            w->cur, (unsigned long long)(w->cur_done + n), (unsigned long long)w->cur_size);
  const char *p = data;
  size_t left = n;
  while (left > 0) {
    la_ssize_t r = archive_write_data(w->ar, p, left);
    if (r <= 0) E8Q_FATAL("cannot write member %s of %s: %s", w->cur, w->path, archive_error_string(w->ar));
    p += r;
    left -= (size_t)r;
  }
  e8q_sha256_update(w->cur_sha, data, n);
  w->cur_done += n;
}

void e8q_artifact_member_end(e8q_artifact_writer *w) {
  E8Q_CHECK(w->cur, "internal: artifact member end outside a member");
  E8Q_CHECK(w->cur_done == w->cur_size, "internal: artifact member %s: %llu bytes written, %llu declared", w->cur,
            (unsigned long long)w->cur_done, (unsigned long long)w->cur_size);
  ar_check(w, archive_write_finish_entry(w->ar), "finishing a member");
  uint8_t d[32];
  char hex[65];
  e8q_sha256_finish(w->cur_sha, d);
  e8q_hex(d, 32, hex);
  cJSON *m = cJSON_AddObjectToObject(w->members, w->cur);
  cJSON_AddNumberToObject(m, "size", (double)w->cur_size);
  cJSON_AddStringToObject(m, "sha256", hex);
  free(w->cur);
  w->cur = NULL;
  w->cur_sha = NULL;
}

void e8q_artifact_add_bytes(e8q_artifact_writer *w, const char *name, const void *data, size_t n) {
  e8q_artifact_member_begin(w, name, n);
  e8q_artifact_member_write(w, data, n);
  e8q_artifact_member_end(w);
}

void e8q_artifact_add_file(e8q_artifact_writer *w, const char *name, const char *src) {
  int fd = open(src, O_RDONLY | O_CLOEXEC);
  E8Q_CHECK_ERRNO(fd >= 0, "cannot open %s to add it to %s as %s", src, w->path, name);
  off_t size = lseek(fd, 0, SEEK_END);
  E8Q_CHECK_ERRNO(size >= 0 && lseek(fd, 0, SEEK_SET) == 0, "cannot seek in %s", src);
  e8q_artifact_member_begin(w, name, (uint64_t)size);
  size_t cap = 1 << 20;
  char *buf = e8q_malloc(cap, "artifact copy buffer");
  uint64_t done = 0;
  while (done < (uint64_t)size) {
    ssize_t r = read(fd, buf, cap);
    if (r < 0 && errno == EINTR) continue;
    E8Q_CHECK_ERRNO(r > 0, "cannot read %s (it shrank to %llu bytes while being archived?)", src,
                    (unsigned long long)done);
    size_t take = (uint64_t)r > (uint64_t)size - done ? (size_t)((uint64_t)size - done) : (size_t)r;
    e8q_artifact_member_write(w, buf, take);
    done += take;
  }
  free(buf);
  close(fd);
  e8q_artifact_member_end(w);
}

void e8q_artifact_finish(e8q_artifact_writer *w, const cJSON *manifest) {
  E8Q_CHECK(!w->cur, "internal: artifact finished while member %s is open", w->cur ? w->cur : "");
  cJSON *m = manifest ? cJSON_Duplicate(manifest, 1) : cJSON_CreateObject();
  static const char *const ours[] = {"format", "format_version", "e8q_version", "members"};
  for (int i = 0; i < 4; i++) cJSON_DeleteItemFromObjectCaseSensitive(m, ours[i]);
  /* the format fields first, for a human reading the file */
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "format", E8Q_ARTIFACT_FORMAT);
  cJSON_AddNumberToObject(out, "format_version", E8Q_ARTIFACT_VERSION);
  cJSON_AddStringToObject(out, "e8q_version", E8Q_VERSION);
  cJSON *c = m->child;
  while (c) {
    cJSON *next = c->next;
    cJSON_AddItemToObject(out, c->string, cJSON_DetachItemViaPointer(m, c));
    c = next;
  }
  cJSON_Delete(m);
  cJSON_AddItemToObject(out, "members", w->members);
  w->members = NULL;
  char *text = cJSON_Print(out);
  cJSON_Delete(out);
  size_t n = strlen(text);
  e8q_artifact_add_bytes(w, "manifest.json", text, n);
  uint8_t d[32];
  char hex[66];
  e8q_sha256_bytes(text, n, d);
  e8q_hex(d, 32, hex);
  hex[64] = '\n';
  hex[65] = '\0';
  free(text);
  e8q_artifact_add_bytes(w, "manifest.json.sha256", hex, 65);
  ar_check(w, archive_write_close(w->ar), "closing");
  archive_write_free(w->ar);
  e8q_atomic_commit(w->file, NULL);
  free(w->path);
  free(w);
}

/* ================================================================ reading */
static uint64_t tar_octal(const unsigned char *p, int n) {
  if (p[0] & 0x80) { /* base-256 */
    uint64_t v = p[0] & 0x3f;
    for (int i = 1; i < n; i++) v = v << 8 | p[i];
    return v;
  }
  uint64_t v = 0;
  for (int i = 0; i < n && p[i]; i++)
    if (p[i] >= '0' && p[i] <= '7') v = v * 8 + (uint64_t)(p[i] - '0');
  return v;
}

/* A fatal error while a libarchive reader is open: the message is formatted first (it may quote
 * libarchive's strings or an entry's name, which the reader owns), then the reader is freed, so a
 * trapped error (tests, fuzz targets) leaks nothing of libarchive's. */
static void ar_fail(struct archive *ar, const char *fmt, ...) E8Q_PRINTF(2, 3) E8Q_NORETURN;
static void ar_fail(struct archive *ar, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (ar) archive_read_free(ar);
  E8Q_FATAL("%s", msg);
}
#define AR_CHECK(ar, cond, ...)              \
  do {                                       \
    if (!(cond)) ar_fail((ar), __VA_ARGS__); \
  } while (0)

/* data offset of the member whose header sequence starts at `pos` (skipping pax/GNU extension
 * headers before the real one) */
static uint64_t data_offset(struct archive *ar, int fd, const char *path, uint64_t pos) {
  unsigned char h[512];
  for (int guard = 0; guard < 8; guard++) {
    AR_CHECK(ar, pos <= (uint64_t)INT64_MAX - 512 && pread(fd, h, 512, (off_t)pos) == 512,
             "archive %s: cannot read the tar header at byte %llu", path, (unsigned long long)pos);
    char type = (char)h[156];
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
      uint64_t sz = tar_octal(h + 124, 12);
      AR_CHECK(ar, sz < ((uint64_t)1 << 40), "archive %s: an extension header at byte %llu declares %llu bytes", path,
               (unsigned long long)pos, (unsigned long long)sz);
      pos += 512 + (sz + 511) / 512 * 512;
      continue;
    }
    return pos + 512;
  }
  ar_fail(ar, "archive %s: too many extension headers at byte %llu", path, (unsigned long long)pos);
}

/* libarchive reading the descriptor fd of `path` (a regular file: e8q_open_regular) */
static struct archive *open_reader(int fd, const char *path) {
  struct archive *ar = archive_read_new();
  E8Q_CHECK(ar, "libarchive: out of memory");
  archive_read_support_format_tar(ar);
  if (archive_read_open_fd(ar, fd, 1 << 16) != ARCHIVE_OK) {
    close(fd);
    ar_fail(ar, "cannot open the artifact %s: %s; check the path (an .e8q file written by e8q quantize)", path,
            archive_error_string(ar));
  }
  return ar;
}

/* reads the current entry's data whole, refusing more than `limit` bytes */
static char *read_entry(struct archive *ar, const char *path, const char *name, uint64_t limit, size_t *n) {
  char *buf = e8q_malloc(limit + 1, "artifact member");
  size_t got = 0;
  for (;;) {
    char tmp[1 << 15];
    la_ssize_t r = archive_read_data(ar, tmp, sizeof tmp);
    if (r < 0) free(buf);
    AR_CHECK(ar, r >= 0, "artifact %s: cannot read member %s: %s", path, name, archive_error_string(ar));
    if (r == 0) break;
    if (got + (size_t)r > limit) free(buf);
    AR_CHECK(ar, got + (size_t)r <= limit,
             "artifact %s: member %s is larger than its declared %llu bytes; the archive is damaged or forged", path,
             name, (unsigned long long)limit);
    memcpy(buf + got, tmp, (size_t)r);
    got += (size_t)r;
  }
  buf[got] = '\0';
  *n = got;
  return buf;
}

e8q_artifact *e8q_artifact_open(const char *path) {
  e8q_artifact *a = e8q_calloc(1, sizeof *a, "artifact");
  a->path = strdup(path);
  int fd = e8q_open_regular(path, "artifact (an .e8q file written by e8q quantize)");
  struct archive *ar = open_reader(fd, path);
  struct archive_entry *e;
  int rc, cap = 0;
  char *manifest_text = NULL, *manifest_hash = NULL;
  size_t manifest_n = 0;
  while ((rc = archive_read_next_header(ar, &e)) == ARCHIVE_OK) {
    const char *name = archive_entry_pathname(e);
    AR_CHECK(ar, name && name_safe(name), "artifact %s: member '%s' has an absolute path or '..'; refusing to read it",
                 path, name ? name : "(null)");
    AR_CHECK(ar, archive_entry_filetype(e) == AE_IFREG, "artifact %s: member %s is not a regular file; refusing it", path,
                 name);
    AR_CHECK(ar, archive_entry_size_is_set(e) && archive_entry_size(e) >= 0, "artifact %s: member %s has no size", path,
                 name);
    for (int i = 0; i < a->n; i++)
      AR_CHECK(ar, strcmp(a->members[i].name, name) != 0, "artifact %s: member %s appears twice", path, name);
    if (a->n == cap) {
      cap = cap ? 2 * cap : 16;
      a->members = realloc(a->members, (size_t)cap * sizeof *a->members);
      AR_CHECK(ar, a->members, "out of memory");
    }
    e8q_artifact_member *m = &a->members[a->n++];
    m->name = strdup(name);
    m->size = (uint64_t)archive_entry_size(e);
    m->offset = data_offset(ar, fd, path, (uint64_t)archive_read_header_position(ar));
    size_t n = 0;
    if (!strcmp(name, "manifest.json")) {
      AR_CHECK(ar, m->size < (64u << 20), "artifact %s: manifest.json of %llu bytes is implausibly large", path,
                   (unsigned long long)m->size);
      manifest_text = read_entry(ar, path, name, m->size, &manifest_n);
    } else if (!strcmp(name, "manifest.json.sha256")) {
      AR_CHECK(ar, m->size <= 128, "artifact %s: manifest.json.sha256 is too large", path);
      manifest_hash = read_entry(ar, path, name, m->size, &n);
    }
  }
  AR_CHECK(ar, rc == ARCHIVE_EOF, "artifact %s is not a valid tar archive (or is truncated): %s", path,
           archive_error_string(ar));
  archive_read_free(ar);
  close(fd);
  E8Q_CHECK(manifest_text, "artifact %s has no manifest.json: not an e8q artifact (or truncated)", path);
  if (manifest_hash) { /* absent: e8q_artifact_verify reports it */
    uint8_t dg[32];
    char hex[65];
    e8q_sha256_bytes(manifest_text, manifest_n, dg);
    e8q_hex(dg, 32, hex);
    if (strncmp(manifest_hash, hex, 64) != 0) {
      char recorded[65];
      snprintf(recorded, sizeof recorded, "%s", manifest_hash);
      free(manifest_hash);
      free(manifest_text);
      E8Q_FATAL("artifact %s: manifest.json has sha256 %s, but manifest.json.sha256 records %s: the manifest "
                "is damaged; copy the artifact again or re-create it",
                path, hex, recorded);
    }
    free(manifest_hash);
  }
  a->manifest = cJSON_Parse(manifest_text);
  free(manifest_text);
  E8Q_CHECK(a->manifest, "artifact %s: manifest.json is not valid JSON (damaged?)", path);
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(a->manifest, "format");
  const cJSON *ver = cJSON_GetObjectItemCaseSensitive(a->manifest, "format_version");
  E8Q_CHECK(cJSON_IsString(fmt) && !strcmp(fmt->valuestring, E8Q_ARTIFACT_FORMAT),
            "artifact %s: manifest \"format\" is not \"e8q\": not an e8q artifact", path);
  E8Q_CHECK(cJSON_IsNumber(ver) && ver->valueint == E8Q_ARTIFACT_VERSION,
            "artifact %s has format version %d; this e8q reads version %d: use a matching e8q", path,
            cJSON_IsNumber(ver) ? ver->valueint : -1, E8Q_ARTIFACT_VERSION);
  const cJSON *mem = cJSON_GetObjectItemCaseSensitive(a->manifest, "members");
  E8Q_CHECK(cJSON_IsObject(mem), "artifact %s: manifest lacks \"members\"", path);
  for (int i = 0; i < a->n; i++) {
    const char *name = a->members[i].name;
    if (!strcmp(name, "manifest.json") || !strcmp(name, "manifest.json.sha256")) continue;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(mem, name);
    const cJSON *sz = cJSON_GetObjectItemCaseSensitive(d, "size");
    E8Q_CHECK(cJSON_IsNumber(sz), "artifact %s: member %s is not listed in the manifest; refusing it", path, name);
    E8Q_CHECK((double)a->members[i].size <= sz->valuedouble,
              "artifact %s: member %s has %llu bytes, larger than the %.0f declared in the manifest; refusing it", path,
              name, (unsigned long long)a->members[i].size, sz->valuedouble);
  }
  const cJSON *d;
  cJSON_ArrayForEach(d, mem) E8Q_CHECK(e8q_artifact_find(a, d->string),
                                       "artifact %s: member %s listed in the manifest is missing (truncated archive?)",
                                       path, d->string);
  return a;
}

void e8q_artifact_close(e8q_artifact *a) {
  if (!a) return;
  for (int i = 0; i < a->n; i++) free(a->members[i].name);
  free(a->members);
  cJSON_Delete(a->manifest);
  free(a->path);
  free(a);
}

const e8q_artifact_member *e8q_artifact_find(const e8q_artifact *a, const char *name) {
  for (int i = 0; i < a->n; i++)
    if (!strcmp(a->members[i].name, name)) return &a->members[i];
  return NULL;
}

char *e8q_artifact_read(const e8q_artifact *a, const char *name, size_t *n) {
  const e8q_artifact_member *m = e8q_artifact_find(a, name);
  E8Q_CHECK(m, "artifact %s has no member %s", a->path, name);
  int fd = e8q_open_regular(a->path, "artifact");
  char *buf = e8q_malloc(m->size + 1, "artifact member");
  uint64_t got = 0;
  while (got < m->size) {
    ssize_t r = pread(fd, buf + got, m->size - got, (off_t)(m->offset + got));
    E8Q_CHECK_ERRNO(r > 0, "artifact %s: cannot read member %s (truncated?)", a->path, name);
    got += (uint64_t)r;
  }
  close(fd);
  buf[m->size] = '\0';
  if (n) *n = m->size;
  return buf;
}

void e8q_artifact_extract(const e8q_artifact *a, const char *name, const char *dest) {
  size_t n = 0;
  char *buf = e8q_artifact_read(a, name, &n);
  e8q_atomic_write_file(dest, "extract", buf, n, NULL);
  free(buf);
}

/* The archive's end: after the last member's data (rounded up to a 512-byte block) come the
 * end-of-archive marker, two zero blocks, and nothing else but zero padding. libarchive stops at
 * the marker and ignores what follows, so bytes appended to an artifact would pass unseen.
 * Returns the number of problems (0 or 1), reported as the members' are. */
static int verify_end(const e8q_artifact *a, int fd, char *report, size_t cap) {
  uint64_t end = 0; /* byte after the last member's data blocks */
  for (int i = 0; i < a->n; i++) {
    uint64_t e = a->members[i].offset + (a->members[i].size + 511) / 512 * 512;
    if (e > end) end = e;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    e8q_appendf(report, cap, "archive end: cannot stat the file: %s\n", strerror(errno));
    return 1;
  }
  uint64_t size = (uint64_t)sb.st_size;
  if (size < end + 1024) {
    e8q_appendf(report, cap, "archive end: the end-of-archive marker (two zero blocks after byte %llu) is missing: the "
            "file has %llu bytes; the archive is truncated\n", (unsigned long long)end, (unsigned long long)size);
    return 1;
  }
  unsigned char buf[1 << 14];
  for (uint64_t pos = end; pos < size;) {
    size_t want = size - pos < sizeof buf ? (size_t)(size - pos) : sizeof buf;
    ssize_t r = pread(fd, buf, want, (off_t)pos);
    if (r <= 0) {
      e8q_appendf(report, cap, "archive end: cannot read byte %llu: %s\n", (unsigned long long)pos,
              r < 0 ? strerror(errno) : "unexpected end of file");
      return 1;
    }
    for (ssize_t i = 0; i < r; i++)
      if (buf[i] != 0) {
        uint64_t at = pos + (uint64_t)i;
        e8q_appendf(report, cap, "archive end: byte %llu of %llu is not zero: %s; the file is not the archive e8q "
                "wrote (copy it again or re-create it)\n", (unsigned long long)at, (unsigned long long)size,
                at < end + 1024 ? "the end-of-archive marker is damaged"
                                : "data follows the end-of-archive marker (appended to the archive?)");
        return 1;
      }
    pos += (uint64_t)r;
  }
  return 0;
}

int e8q_artifact_verify(const e8q_artifact *a, char *report, size_t cap) {
  if (report && cap) report[0] = '\0';
  const cJSON *mem = cJSON_GetObjectItemCaseSensitive(a->manifest, "members");
  int fd = e8q_open_regular(a->path, "artifact");
  struct archive *ar = open_reader(fd, a->path);
  struct archive_entry *e;
  int bad = 0, rc;
  char manifest_hex[65] = "", recorded_manifest[65] = "";
  while ((rc = archive_read_next_header(ar, &e)) == ARCHIVE_OK) {
    const char *name = archive_entry_pathname(e);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(mem, name);
    uint64_t limit = (uint64_t)archive_entry_size(e);
    e8q_sha256 *h = e8q_sha256_new();
    uint64_t got = 0;
    char buf[1 << 16];
    la_ssize_t r;
    while ((r = archive_read_data(ar, buf, sizeof buf)) > 0) {
      if (!strcmp(name, "manifest.json.sha256") && got == 0) memcpy(recorded_manifest, buf, r < 64 ? (size_t)r : 64);
      e8q_sha256_update(h, buf, (size_t)r);
      got += (uint64_t)r;
    }
    uint8_t dg[32];
    char hex[65];
    e8q_sha256_finish(h, dg);
    e8q_hex(dg, 32, hex);
    if (r < 0) {
      bad++;
      e8q_appendf(report, cap, "%s: unreadable: %s\n", name, archive_error_string(ar));
      break;
    }
    if (got != limit) {
      bad++;
      e8q_appendf(report, cap, "%s: %llu bytes, header says %llu\n", name, (unsigned long long)got,
              (unsigned long long)limit);
    }
    if (!strcmp(name, "manifest.json")) {
      memcpy(manifest_hex, hex, 65);
      continue;
    }
    if (!strcmp(name, "manifest.json.sha256")) continue;
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(d, "sha256");
    const cJSON *sz = cJSON_GetObjectItemCaseSensitive(d, "size");
    if (!cJSON_IsString(sha) || strcmp(sha->valuestring, hex) != 0) {
      bad++;
      e8q_appendf(report, cap, "%s: sha256 %s, manifest says %s\n", name, hex,
              cJSON_IsString(sha) ? sha->valuestring : "(none)");
    }
    if (!cJSON_IsNumber(sz) || sz->valuedouble != (double)got) {
      bad++;
      e8q_appendf(report, cap, "%s: %llu bytes, manifest says %.0f\n", name, (unsigned long long)got,
              cJSON_IsNumber(sz) ? sz->valuedouble : -1.0);
    }
  }
  if (rc != ARCHIVE_EOF && rc != ARCHIVE_OK) {
    bad++;
    e8q_appendf(report, cap, "archive structure: %s\n", archive_error_string(ar));
  }
  archive_read_free(ar);
  bad += verify_end(a, fd, report, cap);
  close(fd);
  recorded_manifest[64] = '\0';
  if (strcmp(manifest_hex, recorded_manifest) != 0) {
    bad++;
    e8q_appendf(report, cap, "manifest.json: sha256 %s, manifest.json.sha256 says %s\n", manifest_hex,
            recorded_manifest[0] ? recorded_manifest : "(missing)");
  }
  return bad;
}
