/* io/text.h: evaluation and calibration text, and pre-tokenized id files.
 *
 * Wherever text is accepted, a file of little-endian uint32 token ids is accepted too:
 * it is recognised by the extension ".ids" or ".u32" (documented in the README). */
#ifndef E8Q_IO_TEXT_H
#define E8Q_IO_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* A whole file as a NUL-terminated buffer, *len its size (len may be NULL). Fatal, naming the
 * file and what it should be ("text file", "config.json", ...), when it is missing, not a regular
 * file or unreadable; the content is not checked. The one file reader of e8q's small files. */
char *e8q_file_read(const char *path, size_t *len, const char *what);

/* Whole file as a NUL-terminated string. Fatal, naming the file, when it is missing, empty,
 * or not valid UTF-8 (with the byte offset of the first bad sequence). */
char *e8q_text_read(const char *path, size_t *len);
/* e8q_text_read for a command-line option: messages start "OPT PATH" (opt NULL: as above) */
char *e8q_text_read_for(const char *path, const char *opt, size_t *len);

/* Non-empty lines (after stripping trailing \r\n; a line of only whitespace counts as empty),
 * at most max_lines (<= 0: all), starting after `skip` non-empty lines. Returns the count;
 * *lines is a malloc'd array of malloc'd strings. */
int e8q_text_lines(const char *text, int skip, int max_lines, char ***lines);
void e8q_text_lines_free(char **lines, int n);

/* true when path names a pre-tokenized id file */
int e8q_ids_is_file(const char *path);
/* reads a uint32 id file; fatal if its size is not a multiple of 4, or an id >= vocab_size
 * (vocab_size <= 0 skips that check). Returns the count, *ids malloc'd. */
size_t e8q_ids_read(const char *path, int vocab_size, int **ids);

/* ---------------------------------------------------------------- additions */

/* byte offset of the first invalid UTF-8 sequence in text[0..len) (overlong forms, surrogates,
 * code points above U+10FFFF and NUL bytes are invalid), or len when all of it is valid */
size_t e8q_utf8_check(const char *text, size_t len);
/* writes n ids as a little-endian uint32 file, atomically; fatal on a negative id or I/O error */
void e8q_ids_write(const char *path, const int *ids, size_t n);

/* ---------------------------------------------------------------- reports */
/* appends printf-formatted text to the NUL-terminated string in out [cap] (reports of several
 * lines); what does not fit is cut, a full buffer is left as it is; out NULL: nothing */
void e8q_appendf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
