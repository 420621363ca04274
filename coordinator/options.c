/* coordinator/options.c: option values (coordinator/options.h). */
#include "coordinator/options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"

const char *e8q_opt_value(const char *cmd, int argc, char **argv, int *i) {
  E8Q_CHECK(*i + 1 < argc, "%s: option %s needs a value (see e8q %s --help)", cmd, argv[*i], cmd);
  return argv[++*i];
}

int e8q_opt_help(const char *a, void (*usage)(FILE *)) {
  if (strcmp(a, "--help") && strcmp(a, "-h")) return 0;
  if (e8q_rank() == 0) usage(stdout);
  return 1;
}

int e8q_opt_model(const char *cmd, int argc, char **argv, int *i, const char **model, const char **artifact,
                  int *dense, const char **tokenizer) {
  const char *a = argv[*i];
  if (!strcmp(a, "--model"))
    *model = e8q_opt_value(cmd, argc, argv, i);
  else if (!strcmp(a, "--artifact"))
    *artifact = e8q_opt_value(cmd, argc, argv, i);
  else if (!strcmp(a, "--dense"))
    *dense = 1;
  else if (!strcmp(a, "--tokenizer"))
    *tokenizer = e8q_opt_value(cmd, argc, argv, i);
  else
    return 0;
  return 1;
}

int e8q_head_parse(const char *cmd, const char *v) {
  if (!strcmp(v, "q8")) return 1;
  if (!strcmp(v, "source")) return 0;
  E8Q_FATAL("%s: --head '%s': give source (the stored precision, the default) or q8 (8 bits, a scale per 32 weights)",
            cmd, v);
}

int e8q_opt_head(const char *cmd, int argc, char **argv, int *i, int *head_q8) {
  if (strcmp(argv[*i], "--head")) return 0;
  *head_q8 = e8q_head_parse(cmd, e8q_opt_value(cmd, argc, argv, i));
  return 1;
}

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

uint64_t e8q_opt_u64(const char *opt, const char *v) {
  char *end = NULL;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 0);
  E8Q_CHECK(errno == 0 && end && end != v && *end == '\0' && v[0] != '-',
            "option %s: '%s' is not a non-negative integer", opt, v);
  return (uint64_t)x;
}
