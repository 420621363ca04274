/* coordinator/cmd_inspect.c: `e8q inspect OUT.e8q [--verify]`: the manifest summary of an
 * artifact and, with --verify, every member's hash checked against the manifest. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "io/artifact.h"

static void inspect_usage(FILE *f) {
  fprintf(f,
          "usage: e8q inspect OUT.e8q [--verify]\n\n"
          "Prints the manifest of an e8q artifact: format, source model fingerprint, quantization\n"
          "options and seed, members with sizes, the validation record and evaluation results.\n"
          "  --verify   hash every member and the manifest; exit status 1 if any differs\n");
}

static void print_value(const char *key, const cJSON *v, int indent) {
  if (!v) return;
  char *s = cJSON_PrintUnformatted(v);
  printf("%*s%-22s %s\n", indent, "", key, s);
  free(s);
}

static void print_object(const char *title, const cJSON *o) {
  if (!cJSON_IsObject(o)) return;
  printf("%s:\n", title);
  const cJSON *c;
  cJSON_ArrayForEach(c, o) print_value(c->string, c, 2);
}

static void print_validation(const cJSON *v) {
  if (!cJSON_IsObject(v)) {
    printf("validation:             (none recorded)\n");
    return;
  }
  const cJSON *lin = cJSON_GetObjectItemCaseSensitive(v, "linears");
  int n = cJSON_GetArraySize(lin);
  double max_proxy = 0, max_err = 0;
  const cJSON *l;
  cJSON_ArrayForEach(l, lin) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(l, "proxy_loss");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(l, "fused_vs_dense_max_rel_err");
    if (cJSON_IsNumber(p) && p->valuedouble > max_proxy) max_proxy = p->valuedouble;
    if (cJSON_IsNumber(e) && e->valuedouble > max_err) max_err = e->valuedouble;
  }
  printf("validation:             %d linears, max proxy loss %.4g, max fused-vs-dense rel. error %.3g\n", n, max_proxy,
         max_err);
  const cJSON *c;
  cJSON_ArrayForEach(c, v) if (strcmp(c->string, "linears") != 0) print_value(c->string, c, 2);
}

int cmd_inspect(int argc, char **argv) {
  const char *path = NULL;
  int verify = 0;
  for (int i = 1; i < argc; i++) {
    if (e8q_opt_help(argv[i], inspect_usage)) {
      return 0;
    } else if (!strcmp(argv[i], "--verify")) {
      verify = 1;
    } else if (argv[i][0] == '-') {
      if (e8q_rank() == 0) {
        fprintf(stderr, "e8q inspect: unknown option %s\n", argv[i]);
        inspect_usage(stderr);
      }
      return 1;
    } else if (!path) {
      path = argv[i];
    } else {
      if (e8q_rank() == 0) fprintf(stderr, "e8q inspect: more than one artifact given (%s, %s)\n", path, argv[i]);
      return 1;
    }
  }
  if (!path) {
    if (e8q_rank() == 0) inspect_usage(stderr);
    return 1;
  }
  if (e8q_rank() != 0) return 0; /* one reader is enough */
  e8q_artifact *a = e8q_artifact_open(path);
  const cJSON *m = a->manifest;
  printf("artifact:               %s\n", path);
  print_value("format", cJSON_GetObjectItemCaseSensitive(m, "format"), 0);
  print_value("format_version", cJSON_GetObjectItemCaseSensitive(m, "format_version"), 0);
  print_value("e8q_version", cJSON_GetObjectItemCaseSensitive(m, "e8q_version"), 0);
  print_value("seed", cJSON_GetObjectItemCaseSensitive(m, "seed"), 0);
  print_object("fingerprint", cJSON_GetObjectItemCaseSensitive(m, "fingerprint"));
  print_object("options", cJSON_GetObjectItemCaseSensitive(m, "options"));
  print_object("size", cJSON_GetObjectItemCaseSensitive(m, "size"));
  printf("members:\n");
  for (int i = 0; i < a->n; i++) printf("  %-30s %12llu bytes\n", a->members[i].name, (unsigned long long)a->members[i].size);
  print_validation(cJSON_GetObjectItemCaseSensitive(m, "validation"));
  print_object("evaluation", cJSON_GetObjectItemCaseSensitive(m, "evaluation"));
  int rc = 0;
  if (verify) {
    char report[16384];
    int bad = e8q_artifact_verify(a, report, sizeof report);
    if (bad) {
      fprintf(stderr, "e8q inspect: %s FAILED verification (%d problem%s):\n%s", path, bad, bad > 1 ? "s" : "", report);
      rc = 1;
    } else {
      printf("verify:                 OK (%d members and the manifest match their sha256)\n", a->n - 2);
    }
  }
  fflush(stdout);
  e8q_artifact_close(a);
  return rc;
}
