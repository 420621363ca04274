/* common/file.h: opening a file a user names, for reading, only when it is a regular file.
 *
 * open(2) of a FIFO blocks until a writer appears and a read of a device may never end, so a
 * FIFO named model.safetensors or --calib /dev/zero would hang e8q. These open with O_NONBLOCK
 * (the open itself cannot block), fstat the descriptor (no race with a rename) and refuse
 * anything but a regular file with a fatal error naming the path, what it is and what was
 * expected; the descriptor is then switched back to blocking reads. */
#ifndef E8Q_COMMON_FILE_H
#define E8Q_COMMON_FILE_H

#include <stdio.h>

/* read-only descriptor of the regular file `path` (O_CLOEXEC); `what` names the file's role in
 * messages ("safetensors file", "text file"). Fatal when it cannot be opened or is not a
 * regular file. */
int e8q_open_regular(const char *path, const char *what);
/* the same as a stdio stream ("rb") */
FILE *e8q_fopen_regular(const char *path, const char *what);
/* "directory", "FIFO", "character device", ... for an st_mode (messages) */
const char *e8q_file_kind(unsigned mode);

#endif
