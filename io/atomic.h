/* io/atomic.h: files that appear whole or not at all.
 *
 * A file is written under a temporary name in the same directory (".<name>.tmp.<pid>"),
 * fsynced, renamed over the final name, and the directory fsynced. Any I/O error, a full disk
 * included, is a fatal error that names the file and says what to do; the temporary is removed
 * first, so the final name never holds a partial file. The SHA-256 of the bytes is computed
 * while writing (e8q_atomic_commit returns it).
 *
 * `kind` tags the file for fault injection (common/fault.h: E8Q_FAULT_ENOSPC=<kind>) and for
 * messages: "plan", "journal", "shard", "hessian", "acts", "artifact", ...
 */
#ifndef E8Q_IO_ATOMIC_H
#define E8Q_IO_ATOMIC_H

#include <stddef.h>
#include <stdint.h>

typedef struct e8q_atomic_file e8q_atomic_file;

e8q_atomic_file *e8q_atomic_begin(const char *path, const char *kind);
void e8q_atomic_write(e8q_atomic_file *f, const void *data, size_t n);
/* bytes written so far */
uint64_t e8q_atomic_size(const e8q_atomic_file *f);
/* fsync, rename into place, fsync the directory; writes the hex SHA-256 of the content into
 * sha_hex[65] when not NULL; frees f */
void e8q_atomic_commit(e8q_atomic_file *f, char sha_hex[65]);
/* removes the temporary and frees f (the final name is untouched) */
void e8q_atomic_abort(e8q_atomic_file *f);

/* one shot: the whole content at once */
void e8q_atomic_write_file(const char *path, const char *kind, const void *data, size_t n, char sha_hex[65]);

/* fsync a directory (after a rename or unlink in it); fatal with the name on error */
void e8q_fsync_dir(const char *dir);
/* mkdir -p; fatal naming the directory on error */
void e8q_mkdirs(const char *dir);
/* removes leftover temporaries "*.tmp.*" of killed runs from a directory; returns how many */
int e8q_atomic_sweep(const char *dir);
/* removes leftover temporaries of path alone (".<name>.tmp.<pid>" beside it, left by a process
 * killed while writing it); returns how many. For files outside a run directory (the artifact),
 * whose directory may hold anything else. */
int e8q_atomic_sweep_for(const char *path);

#endif
