/* fuzz/harness.h: what every e8q libFuzzer target shares.
 *
 * A parser meeting bad input ends in a fatal error (common/error.h). In a fuzz target the error
 * trap catches it (fz_call); the call's allocations, mappings, descriptors and streams would leak
 * (the process normally exits there), so while a call runs they are tracked through link-time
 * wrappers (-Wl,--wrap=malloc,...: fuzz/CMakeLists.txt; cJSON through its hooks) and released
 * when the call is trapped. A call that returns normally keeps what it made (the target frees
 * it as a user would; LeakSanitizer reports what it does not).
 *
 * Inputs are written to files under a private directory in /dev/shm (tmpfs) when the parser
 * reads a path; the name matters to some (tokenizer.bin, tokenizer.json). */
#ifndef E8Q_FUZZ_HARNESS_H
#define E8Q_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

/* once per process (LLVMFuzzerInitialize or the first input): cJSON hooks, the work directory */
void fz_init(void);
/* the work directory (no trailing slash) */
const char *fz_dir(void);
/* writes data to fz_dir()/name and returns that path (static storage, valid until the next call) */
const char *fz_write(const char *name, const uint8_t *data, size_t n);
/* runs fn(arg) with a fatal-error trap armed and resources tracked; returns 1 when a fatal error
 * was trapped (its resources released), 0 when fn returned */
int fz_call(void (*fn)(void *), void *arg);
/* the message of the last trapped error */
const char *fz_last_error(void);

/* ---------------------------------------------------------------- opening a file under the trap */
/* a parser's open or load call, as fz_open takes it (a one-line wrapper returning the handle) */
typedef void *(*fz_opener)(const char *path);
/* open(path) through fz_call: the handle, or NULL when a fatal error was trapped */
void *fz_open(fz_opener open, const char *path);
/* an opened file and one of its items (a tensor, a name), the argument of a per-item fz_call */
typedef struct {
  const void *file;
  const void *item;
} fz_item;

#endif
