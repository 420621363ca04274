/* io/journal.h: the run journal, an append-only log of finished steps.
 *
 * File layout: a sequence of records, each
 *     u32 magic "E8QJ" | u16 version (1) | u16 type | u32 payload length L |
 *     L bytes payload (JSON text) | 32 bytes SHA-256 of everything before it in the record
 * (little-endian). Every append is one write() followed by fsync, so a crash leaves at most
 * one torn record at the end. Opening replays the records and stops at the first torn or
 * corrupt one: the file is truncated there (a warning says how many bytes were dropped), so
 * the next append starts clean.
 *
 * Record types: STEP ({"step": "..."}: a step finished), FILE ({"path": rel, "sha256": hex,
 * "size": n}: a file of the run directory committed with that content), NOTE (anything else
 * worth keeping: retries, warnings). A committed file whose bytes no longer match its FILE
 * record (truncated, flipped bit) is reported as not done, so it is recomputed.
 */
#ifndef E8Q_IO_JOURNAL_H
#define E8Q_IO_JOURNAL_H

#include <stdint.h>

#define E8Q_JOURNAL_MAGIC 0x4a513845u /* "E8QJ" little-endian */
#define E8Q_JOURNAL_VERSION 1

typedef enum { E8Q_JREC_STEP = 1, E8Q_JREC_FILE = 2, E8Q_JREC_NOTE = 3 } e8q_jrec_type;

typedef struct {
  int type;       /* e8q_jrec_type */
  char *payload;  /* owned, NUL-terminated JSON */
} e8q_jrec;

typedef struct {
  char *path;     /* the journal file, owned */
  char *root;     /* the directory FILE records are relative to, owned */
  int fd;         /* open for appending */
  int n;          /* records replayed or appended */
  int cap;
  e8q_jrec *recs; /* [n] */
  uint64_t dropped; /* bytes of torn/corrupt tail removed on open */
} e8q_journal;

/* opens (creating when absent) root/journal and replays it */
e8q_journal *e8q_journal_open(const char *root);
void e8q_journal_close(e8q_journal *j);

/* appends one record (payload JSON text) and fsyncs */
void e8q_journal_append(e8q_journal *j, e8q_jrec_type type, const char *payload);
/* STEP record {"step": step} */
void e8q_journal_step(e8q_journal *j, const char *step);
/* 1 when a STEP record for `step` exists */
int e8q_journal_has_step(const e8q_journal *j, const char *step);
/* FILE record for root/rel with the given hash and size */
void e8q_journal_file(e8q_journal *j, const char *rel, const char *sha_hex, uint64_t size);
/* 1 when the last FILE record for rel matches the bytes now on disk (size and SHA-256); 0 when
 * there is no record, the file is missing, or its content differs (a warning names the file and
 * says it will be recomputed) */
int e8q_journal_file_ok(const e8q_journal *j, const char *rel);
/* NOTE record */
void e8q_journal_note(e8q_journal *j, const char *payload);

#endif
