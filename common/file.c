/* common/file.c: regular files only (common/file.h). */
#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

const char *e8q_file_kind(unsigned mode) {
  if (S_ISREG(mode)) return "regular file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISFIFO(mode)) return "FIFO (named pipe)";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

int e8q_open_regular(const char *path, const char *what) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* O_NONBLOCK: a FIFO must not block the open */
  E8Q_CHECK_ERRNO(fd >= 0, "cannot open %s %s", what, path);
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    e8q_fatal_errno(__FILE__, __LINE__, e, "cannot stat %s %s", what, path);
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    E8Q_FATAL("%s is a %s, not a regular file: e8q reads the %s from a regular file only; give the path of one",
              path, e8q_file_kind(sb.st_mode), what);
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    int e = errno;
    close(fd);
    e8q_fatal_errno(__FILE__, __LINE__, e, "cannot set blocking reads on %s", path);
  }
  return fd;
}

FILE *e8q_fopen_regular(const char *path, const char *what) {
  int fd = e8q_open_regular(path, what);
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    int e = errno;
    close(fd);
    e8q_fatal_errno(__FILE__, __LINE__, e, "cannot open %s %s", what, path);
  }
  return f;
}
