/* io/journal.c: append-only, checksummed, fsynced run journal (io/journal.h). */
#include "io/journal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/log.h"
#include "io/atomic.h"

#define HDR 12 /* magic, version, type, length */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static void push(e8q_journal *j, int type, const char *payload, size_t len) {
  if (j->n == j->cap) {
    j->cap = j->cap ? 2 * j->cap : 64;
    j->recs = realloc(j->recs, (size_t)j->cap * sizeof *j->recs);
    E8Q_CHECK(j->recs, "out of memory growing the journal");
  }
  char *p = e8q_malloc(len + 1, "journal payload");
  memcpy(p, payload, len);
  p[len] = '\0';
  j->recs[j->n].type = type;
  j->recs[j->n].payload = p;
  j->n++;
}

/* ---------------------------------------------------------------- open / replay */
/* bytes the record at p claims (header + payload + checksum), capped at n; n when unreadable */
static size_t record_span(const uint8_t *p, size_t n) {
  if (n < HDR || get32(p) != E8Q_JOURNAL_MAGIC) return n;
  uint64_t want = (uint64_t)HDR + get32(p + 8) + 32;
  return want < n ? (size_t)want : n;
}

/* 1 when the n bytes from a failing record on are what a crash during one append leaves: a
 * prefix of one record (shorter than it claims; its magic intact), the record itself ending at
 * the end of the file, or zeros (a file system that extended the file before the data reached the disk) */
static int torn_tail(const uint8_t *p, size_t n) {
  if (n < HDR) return 1;
  if (get32(p) == E8Q_JOURNAL_MAGIC && record_span(p, n) >= n) return 1;
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

e8q_journal *e8q_journal_open(const char *root) {
  e8q_journal *j = e8q_calloc(1, sizeof *j, "journal");
  j->root = strdup(root);
  size_t len = strlen(root) + 16;
  j->path = e8q_malloc(len, "journal path");
  snprintf(j->path, len, "%s/journal", root);
  int existed = access(j->path, F_OK) == 0;
  j->fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  E8Q_CHECK_ERRNO(j->fd >= 0, "cannot open the run journal %s; check that the run directory is writable", j->path);
  /* a new journal's directory entry must be durable too: fsyncing its records alone does not
   * make the file itself survive a crash (the checkpoints go to subdirectories, so nothing else
   * fsyncs the run directory until the gather stage) */
  if (!existed) {
    E8Q_CHECK_ERRNO(fsync(j->fd) == 0, "cannot fsync the new run journal %s", j->path);
    e8q_fsync_dir(root);
  }
  struct stat st;
  E8Q_CHECK_ERRNO(fstat(j->fd, &st) == 0, "cannot stat %s", j->path);
  size_t size = (size_t)st.st_size;
  uint8_t *buf = e8q_malloc(size + 1, "journal contents");
  size_t got = 0;
  while (got < size) {
    ssize_t r = pread(j->fd, buf + got, size - got, (off_t)got);
    E8Q_CHECK_ERRNO(r > 0, "cannot read the run journal %s", j->path);
    got += (size_t)r;
  }
  size_t off = 0;
  const char *why = NULL;
  while (off < size) {
    if (size - off < HDR) { why = "torn record header"; break; }
    const uint8_t *r = buf + off;
    uint32_t magic = get32(r), plen = get32(r + 8);
    uint16_t ver = get16(r + 4), type = get16(r + 6);
    if (magic != E8Q_JOURNAL_MAGIC) { why = "bad magic"; break; }
    if (ver != E8Q_JOURNAL_VERSION) {
      E8Q_FATAL("run journal %s has a record of version %u; this e8q writes version %d: use the e8q that made "
                "this run directory, or another --run-dir",
                j->path, ver, E8Q_JOURNAL_VERSION);
    }
    if ((uint64_t)size - off < (uint64_t)HDR + plen + 32) { why = "torn record"; break; }
    uint8_t d[32];
    e8q_sha256_bytes(r, HDR + plen, d);
    if (memcmp(d, r + HDR + plen, 32) != 0) { why = "checksum mismatch"; break; }
    if (type < E8Q_JREC_STEP || type > E8Q_JREC_NOTE) { why = "unknown record type"; break; }
    push(j, type, (const char *)r + HDR, plen);
    off += HDR + plen + 32;
  }
  if (off < size) {
    j->dropped = size - off;
    if (torn_tail(buf + off, size - off)) {
      e8q_warn("run journal %s: %s at byte %zu; dropping the last %zu bytes (an interrupted write); the steps "
               "after it will be redone",
               j->path, why, off, size - off);
    } else {
      /* more follows the bad record than one torn record could leave: the journal was damaged in
       * place (a flipped byte, a bad disk). The whole file is kept aside before the cut. */
      char keep[4200];
      snprintf(keep, sizeof keep, "%s.damaged", j->path);
      e8q_atomic_write_file(keep, "damaged journal copy", buf, size, NULL);
      e8q_warn("run journal %s is damaged: record %d at byte %zu (after %s) fails its check (%s), and %zu bytes of "
               "later records follow it, so this is not an interrupted write. Its %zu bytes are kept in %s; the "
               "journal is cut at byte %zu and the steps recorded after it will be redone (check the disk holding "
               "the run directory)",
               j->path, j->n + 1, off, j->n ? "the last intact record" : "the start of the file", why,
               size - off - record_span(buf + off, size - off), size, keep, off);
    }
    E8Q_CHECK_ERRNO(ftruncate(j->fd, (off_t)off) == 0 && fsync(j->fd) == 0, "cannot truncate the run journal %s",
                    j->path);
  }
  free(buf);
  E8Q_CHECK_ERRNO(lseek(j->fd, 0, SEEK_END) >= 0, "cannot seek in %s", j->path);
  return j;
}

void e8q_journal_close(e8q_journal *j) {
  if (!j) return;
  close(j->fd);
  for (int i = 0; i < j->n; i++) free(j->recs[i].payload);
  free(j->recs);
  free(j->path);
  free(j->root);
  free(j);
}

/* ---------------------------------------------------------------- append */
/* writes n bytes; returns 0 or the errno of the failure */
static int write_all(e8q_journal *j, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (e8q_fault_enospc("journal")) return ENOSPC;
    ssize_t w = write(j->fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    if (w == 0) return ENOSPC;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void append_fail(e8q_journal *j, off_t start, int err) E8Q_NORETURN;
static void append_fail(e8q_journal *j, off_t start, int err) {
  /* leave the journal as it was: cut the partial record (replay would drop it anyway) */
  if (ftruncate(j->fd, start) == 0) (void)fsync(j->fd);
  E8Q_FATAL("cannot append to the run journal %s: %s. The journal keeps every step finished so far; %s and rerun "
            "the same command to resume",
            j->path, strerror(err),
            err == ENOSPC ? "free space on its file system (a different --run-dir starts over: to move the run, copy the "
                            "whole run directory to a disk with space and pass the copy as --run-dir)"
                          : "check the run directory's disk");
}

void e8q_journal_append(e8q_journal *j, e8q_jrec_type type, const char *payload) {
  size_t plen = strlen(payload);
  size_t n = HDR + plen + 32;
  uint8_t *r = e8q_malloc(n, "journal record");
  put32(r, E8Q_JOURNAL_MAGIC);
  put16(r + 4, E8Q_JOURNAL_VERSION);
  put16(r + 6, (uint16_t)type);
  put32(r + 8, (uint32_t)plen);
  memcpy(r + HDR, payload, plen);
  e8q_sha256_bytes(r, HDR + plen, r + HDR + plen);
  off_t start = lseek(j->fd, 0, SEEK_END);
  E8Q_CHECK_ERRNO(start >= 0, "cannot seek in %s", j->path);
  int err;
  const char *f = getenv("E8Q_FAULT");
  if (f && !strncmp(f, "journal.torn", 12)) {
    /* a crash in the middle of the record: write half of it, then the fault point kills */
    if ((err = write_all(j, r, n / 2)) != 0) append_fail(j, start, err);
    (void)fsync(j->fd);
    e8q_fault_point("journal.torn");
    if ((err = write_all(j, r + n / 2, n - n / 2)) != 0) append_fail(j, start, err);
  } else if ((err = write_all(j, r, n)) != 0) {
    append_fail(j, start, err);
  }
  if (fsync(j->fd) != 0) append_fail(j, start, errno);
  free(r);
  push(j, type, payload, plen);
}

void e8q_journal_step(e8q_journal *j, const char *step) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "step", step);
  char *s = cJSON_PrintUnformatted(o);
  e8q_journal_append(j, E8Q_JREC_STEP, s);
  free(s);
  cJSON_Delete(o);
}

int e8q_journal_has_step(const e8q_journal *j, const char *step) {
  for (int i = 0; i < j->n; i++) {
    if (j->recs[i].type != E8Q_JREC_STEP) continue;
    cJSON *o = cJSON_Parse(j->recs[i].payload);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "step");
    int hit = cJSON_IsString(s) && !strcmp(s->valuestring, step);
    cJSON_Delete(o);
    if (hit) return 1;
  }
  return 0;
}

void e8q_journal_file(e8q_journal *j, const char *rel, const char *sha_hex, uint64_t size) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "path", rel);
  cJSON_AddStringToObject(o, "sha256", sha_hex);
  cJSON_AddNumberToObject(o, "size", (double)size);
  char *s = cJSON_PrintUnformatted(o);
  e8q_journal_append(j, E8Q_JREC_FILE, s);
  free(s);
  cJSON_Delete(o);
}

void e8q_journal_note(e8q_journal *j, const char *payload) { e8q_journal_append(j, E8Q_JREC_NOTE, payload); }

int e8q_journal_file_ok(const e8q_journal *j, const char *rel) {
  char sha[65] = "";
  double size = -1;
  for (int i = 0; i < j->n; i++) {
    if (j->recs[i].type != E8Q_JREC_FILE) continue;
    cJSON *o = cJSON_Parse(j->recs[i].payload);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "path");
    if (cJSON_IsString(p) && !strcmp(p->valuestring, rel)) {
      const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "sha256");
      const cJSON *z = cJSON_GetObjectItemCaseSensitive(o, "size");
      if (cJSON_IsString(h) && strlen(h->valuestring) == 64) snprintf(sha, sizeof sha, "%s", h->valuestring);
      size = cJSON_IsNumber(z) ? z->valuedouble : -1;
    }
    cJSON_Delete(o);
  }
  if (!sha[0]) return 0;
  char full[4096];
  snprintf(full, sizeof full, "%s/%s", j->root, rel);
  struct stat st;
  if (stat(full, &st) != 0) {
    e8q_warn("%s is recorded in the journal but missing; it will be recomputed", full);
    return 0;
  }
  if ((double)st.st_size != size) {
    e8q_warn("%s has %lld bytes but the journal recorded %.0f (truncated?); it will be recomputed", full,
             (long long)st.st_size, size);
    return 0;
  }
  char now[65];
  e8q_sha256_file_hex(full, now);
  if (strcmp(now, sha) != 0) {
    e8q_warn("%s does not match the sha256 recorded in the journal (corrupted); it will be recomputed", full);
    return 0;
  }
  return 1;
}
