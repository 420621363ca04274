/* common/error.h: the one error macro family of e8q.
 *
 * Every fatal error goes through e8q_fatal(): it prints
 *     e8q: error [rank R] file.c:123: <message>
 * to stderr and calls MPI_Abort when MPI is running (so no rank hangs in a
 * collective), exit(1) otherwise. Messages name the file, tensor or option and
 * say what to do.
 *
 * Tests can trap a fatal error instead of dying (e8q_error_trap_begin) and
 * inspect the message: see tests/testutil.h, E8Q_EXPECT_FATAL.
 */
#ifndef E8Q_COMMON_ERROR_H
#define E8Q_COMMON_ERROR_H

#include <setjmp.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define E8Q_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define E8Q_NORETURN __attribute__((noreturn))
#else
#define E8Q_PRINTF(a, b)
#define E8Q_NORETURN
#endif

void e8q_fatal(const char *file, int line, const char *fmt, ...) E8Q_PRINTF(3, 4) E8Q_NORETURN;
/* like e8q_fatal, appending ": <strerror(errnum)>" */
void e8q_fatal_errno(const char *file, int line, int errnum, const char *fmt, ...) E8Q_PRINTF(4, 5) E8Q_NORETURN;

#define E8Q_FATAL(...) e8q_fatal(__FILE__, __LINE__, __VA_ARGS__)
#define E8Q_CHECK(cond, ...)                       \
  do {                                             \
    if (!(cond)) e8q_fatal(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
/* for system calls: appends strerror(errno) */
#define E8Q_CHECK_ERRNO(cond, ...)                 \
  do {                                             \
    if (!(cond)) e8q_fatal_errno(__FILE__, __LINE__, errno, __VA_ARGS__); \
  } while (0)
/* MPI calls: aborts with the MPI error string */
#define E8Q_CHECK_MPI(call)                        \
  do {                                             \
    int e8q_mpi_rc_ = (call);                      \
    if (e8q_mpi_rc_ != 0) e8q_fatal_mpi(__FILE__, __LINE__, e8q_mpi_rc_, #call); \
  } while (0)
void e8q_fatal_mpi(const char *file, int line, int rc, const char *what) E8Q_NORETURN;

/* Allocation that never returns NULL (fatal with the byte count and purpose). */
void *e8q_malloc_(size_t bytes, const char *what, const char *file, int line);
void *e8q_calloc_(size_t n, size_t size, const char *what, const char *file, int line);
/* 64-byte aligned, zero-filled; free with free() */
void *e8q_alloc_aligned_(size_t bytes, const char *what, const char *file, int line);
#define e8q_malloc(bytes, what) e8q_malloc_((bytes), (what), __FILE__, __LINE__)
#define e8q_calloc(n, size, what) e8q_calloc_((n), (size), (what), __FILE__, __LINE__)
#define e8q_alloc_aligned(bytes, what) e8q_alloc_aligned_((bytes), (what), __FILE__, __LINE__)

/* ---------------------------------------------------------------- trapping (tests)
 * While a trap is armed, e8q_fatal stores the message and longjmps to it
 * instead of aborting. Memory owned by the failed call leaks; tests only. */
typedef struct {
  jmp_buf env;
  char message[2048];
} e8q_error_trap;
void e8q_error_trap_arm(e8q_error_trap *trap); /* NULL disarms */
const char *e8q_error_last(void);              /* last fatal message (trapped or not) */

#ifdef __cplusplus
}
#endif
#endif
