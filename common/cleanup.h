/* common/cleanup.h: temporary paths removed on every way out of the process.
 *
 * A path registered here (a temporary directory, the files put in it) is removed when e8q ends
 * through a fatal error (common/error.c calls e8q_cleanup_run before MPI_Abort/exit), through
 * exit() (atexit), or on SIGINT, SIGTERM or SIGHUP (MPI_Abort on another rank ends this one with
 * SIGTERM); whoever removes it on the normal path forgets it first. Paths are removed in the
 * reverse order of registration (files, then their directory: register the directory first),
 * with unlink or rmdir only, so the removal is async-signal-safe; a directory that still holds
 * unregistered files is left. A trapped fatal error (tests, fuzzers) removes nothing. */
#ifndef E8Q_COMMON_CLEANUP_H
#define E8Q_COMMON_CLEANUP_H

#define E8Q_CLEANUP_MAX 64 /* paths registered at a time */

/* registers path (copied; a directory is rmdir'ed, anything else unlinked); fatal when the table
 * is full or the path too long */
void e8q_cleanup_add(const char *path);
/* forgets path (the caller removes it itself); a no-op when not registered */
void e8q_cleanup_forget(const char *path);
/* removes every registered path now and forgets them (the fatal path; safe in a signal handler) */
void e8q_cleanup_run(void);
/* paths registered now (tests) */
int e8q_cleanup_count(void);

#endif
