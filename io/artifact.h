/* io/artifact.h: the .e8q archive (DESIGN §4).
 *
 * One uncompressed POSIX tar (libarchive, pax_restricted: plain ustar headers unless a member
 * exceeds 8 GiB), unpacking into a Hugging Face-style directory: the members written by the
 * caller (config.json, model.safetensors, tokenizer files, ...), then
 *   manifest.json         {"format": "e8q", "format_version": 1, "e8q_version": "...",
 *                          "members": {"<name>": {"size": n, "sha256": hex}, ...}, plus what the
 *                          caller put in: "fingerprint", "options", "seed", "validation",
 *                          "evaluation", ...}
 *   manifest.json.sha256  the hex SHA-256 of manifest.json (so a flipped byte in the manifest
 *                          itself is caught too: e8q_artifact_open refuses a mismatch).
 * Members are written with their size declared before the header and the bytes counted here
 * (libarchive silently cuts or zero-pads a mismatch). Headers carry fixed metadata (mtime 0,
 * mode 0644, uid/gid 0) so the same content gives the same archive bytes.
 *
 * The reader refuses absolute names, "..", anything but regular files, duplicate names,
 * members missing from the manifest or larger than declared there. Each member's data offset in
 * the file is recorded so it can be memory-mapped in place.
 */
#ifndef E8Q_IO_ARTIFACT_H
#define E8Q_IO_ARTIFACT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#define E8Q_ARTIFACT_FORMAT "e8q"
#define E8Q_ARTIFACT_VERSION 1

/* ---------------------------------------------------------------- writing */
typedef struct e8q_artifact_writer e8q_artifact_writer;

/* starts OUT (written atomically: nothing appears under `path` until finish) */
e8q_artifact_writer *e8q_artifact_create(const char *path);
/* a member of exactly `size` bytes, written in any chunking, then ended */
void e8q_artifact_member_begin(e8q_artifact_writer *w, const char *name, uint64_t size);
void e8q_artifact_member_write(e8q_artifact_writer *w, const void *data, size_t n);
void e8q_artifact_member_end(e8q_artifact_writer *w);
/* shortcuts */
void e8q_artifact_add_bytes(e8q_artifact_writer *w, const char *name, const void *data, size_t n);
void e8q_artifact_add_file(e8q_artifact_writer *w, const char *name, const char *src_path);
/* adds format fields and "members" to a copy of `manifest`, writes manifest.json and its hash,
 * closes the archive and renames it into place; frees w */
void e8q_artifact_finish(e8q_artifact_writer *w, const cJSON *manifest);

/* ---------------------------------------------------------------- reading */
typedef struct {
  char *name;      /* owned */
  uint64_t size;   /* bytes */
  uint64_t offset; /* byte offset of the data in the archive file */
} e8q_artifact_member;

typedef struct {
  char *path;                  /* owned */
  int n;
  e8q_artifact_member *members; /* [n] in archive order */
  cJSON *manifest;             /* owned, parsed manifest.json */
} e8q_artifact;

/* reads the headers and the manifest; fatal (naming the archive and member) on anything unsafe
 * or inconsistent, and when manifest.json does not match manifest.json.sha256 (when present);
 * does not hash the other members (see e8q_artifact_verify) */
e8q_artifact *e8q_artifact_open(const char *path);
void e8q_artifact_close(e8q_artifact *a);
const e8q_artifact_member *e8q_artifact_find(const e8q_artifact *a, const char *name);
/* malloc'd copy of a member (NUL-terminated, *n its size); fatal when absent */
char *e8q_artifact_read(const e8q_artifact *a, const char *name, size_t *n);
/* copies a member to dest atomically */
void e8q_artifact_extract(const e8q_artifact *a, const char *name, const char *dest);
/* hashes every member (streamed through libarchive) and the manifest against the recorded
 * values; appends one line per problem to report (may be NULL); returns the number of problems */
int e8q_artifact_verify(const e8q_artifact *a, char *report, size_t cap);

#endif
