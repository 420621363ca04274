/* coordinator/options.c: option values (coordinator/options.h). */
#include "coordinator/options.h"

#include <errno.h>
#include <stdlib.h>

#include "common/error.h"

int e8q_opt_int(const char *opt, const char *v, int lo, int hi) {
  char *end = NULL;
  errno = 0;
  long x = strtol(v, &end, 10);
  E8Q_CHECK(errno == 0 && end && end != v && *end == '\0' && x >= lo && x <= hi,
            "option %s: '%s' is not an integer between %d and %d", opt, v, lo, hi);
  return (int)x;
}

double e8q_opt_double(const char *opt, const char *v, double lo, double hi) {
  char *end = NULL;
  errno = 0;
  double x = strtod(v, &end);
  E8Q_CHECK(errno == 0 && end && end != v && *end == '\0' && x >= lo && x <= hi,
            "option %s: '%s' is not a number between %g and %g", opt, v, lo, hi);
  return x;
}
