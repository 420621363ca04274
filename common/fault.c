/* common/fault.c: the fault points and the switches that trigger them (common/fault.h). */
#include "common/fault.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"

/* ---------------------------------------------------------------- the table
 * Stage boundaries are "<stage>.done" (after the stage's work is committed and journalled);
 * the others are places in the middle of a step, where a crash leaves partial state. */
const char *const e8q_fault_points[] = {
    "plan.done",          /* plan.json written, nothing else */
    "embed.done",         /* X0 of every rank committed */
    "hessian.mid",        /* some sequences accumulated, nothing committed for the block */
    "hessian.done",       /* Hessians of a block committed */
    "quantize.mid",       /* between two linears of a block */
    "ft.step",            /* block fine-tuning: before an Adam step (mid-epoch, nothing committed) */
    "ft.epoch",           /* block fine-tuning: an epoch's checkpoint committed */
    "quantize.done",      /* all four linears of a block quantized and committed */
    "propagate.done",     /* X_{b+1} committed */
    "commit.mid",         /* shard temp file written, not yet renamed */
    "commit.done",        /* shard renamed and journalled */
    "e2e.step",           /* end-to-end fine-tuning: before an Adam step (mid-epoch, nothing committed) */
    "e2e.epoch",          /* end-to-end fine-tuning: an epoch's checkpoint (e2e/state.ckpt) committed */
    "gather.mid",         /* R/model.safetensors written, not journalled */
    "gather.done",        /* R/model.safetensors and R/config.json committed */
    "validate.done",      /* R/validation.json committed */
    "pack.mid",           /* OUT.e8q partly written (temporary name) */
    "pack.done",          /* OUT.e8q renamed into place */
    "atomic.before_rename", /* any atomic file: data fsynced under its temporary name */
    "journal.torn",       /* half a journal record written */
    NULL,
};

static int point_known(const char *p) {
  for (int i = 0; e8q_fault_points[i]; i++)
    if (!strcmp(e8q_fault_points[i], p)) return 1;
  return 0;
}

/* ---------------------------------------------------------------- switches */
static long g_pass_count;   /* passes of the E8Q_FAULT point so far */
static long g_write_count;  /* writes of the E8Q_FAULT_ENOSPC kind so far */

void e8q_fault_reset(void) {
  g_pass_count = 0;
  g_write_count = 0;
}

/* parses "<name>[:<n>]" from env var `var`; returns 1 if it names `name`, with *n (0 = any) */
static int env_matches(const char *var, const char *name, long *n) {
  const char *v = getenv(var);
  if (!v || !*v) return 0;
  const char *colon = strchr(v, ':');
  size_t len = colon ? (size_t)(colon - v) : strlen(v);
  if (len != strlen(name) || strncmp(v, name, len) != 0) return 0;
  *n = 0;
  if (colon) {
    char *end = NULL;
    *n = strtol(colon + 1, &end, 10);
    E8Q_CHECK(end && *end == '\0' && *n >= 1, "%s=%s: the count after ':' must be a positive integer", var, v);
  }
  return 1;
}

void e8q_fault_point(const char *point) {
  E8Q_CHECK(point_known(point), "fault point '%s' is not in e8q_fault_points (common/fault.c)", point);
  long n = 0;
  if (!env_matches("E8Q_FAULT", point, &n)) return;
  const char *r = getenv("E8Q_FAULT_RANK");
  if (r && *r && atoi(r) != e8q_rank()) return;
  g_pass_count++;
  if (n == 0) n = 1;
  if (g_pass_count != n) return;
  fprintf(stderr, "e8q: fault injection: killing rank %d at '%s' (pass %ld)\n", e8q_rank(), point, n);
  fflush(stderr);
  kill(getpid(), SIGKILL);
  _exit(137); /* not reached */
}

int e8q_fault_enospc(const char *kind) {
  long n = 0;
  if (!env_matches("E8Q_FAULT_ENOSPC", kind, &n)) return 0;
  g_write_count++;
  return n == 0 || g_write_count == n;
}
