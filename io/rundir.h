/* io/rundir.h: the run directory of `e8q quantize` (DESIGN §4).
 *
 *   R/plan.json   immutable: {"format": "e8q-plan", "version": 1, "fingerprint": {...},
 *                 "options": {...}, "seed": s, ...anything else the planner adds}
 *   R/lock        "host pid\n" of the run that holds the directory: an exclusive fcntl lock
 *                 taken before anything in R is read or written, held until close (or exit)
 *   R/journal     io/journal.h
 *   R/hessians/, R/acts/, R/shards/   checkpoint files, each written atomically and recorded
 *                 in the journal with its sha256
 *
 * Opening an existing directory compares its plan.json with the plan of this run: a different
 * model (fingerprint), different options or another seed is refused with a message that lists
 * exactly what differs. Only the process that owns the directory (rank 0) opens it.
 */
#ifndef E8Q_IO_RUNDIR_H
#define E8Q_IO_RUNDIR_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "io/journal.h"

#define E8Q_PLAN_FORMAT "e8q-plan"
#define E8Q_PLAN_VERSION 1

typedef struct {
  char *dir;            /* owned */
  e8q_journal *journal; /* owned */
  cJSON *plan;          /* owned: the plan.json in force */
  int resumed;          /* 1 when plan.json existed */
  int lock_fd;          /* R/lock, write-locked (fcntl) while the directory is open */
} e8q_rundir;

/* The model's fingerprint: {"config_sha256": hex of config.json, "files": {"<name>.safetensors":
 * hex, ...}} over every *.safetensors file of DIR (sorted by name). Reads every byte once. */
cJSON *e8q_model_fingerprint(const char *model_dir);

/* The subdirectory of a run directory where `e8q quantize` without --model writes the demo model. */
#define E8Q_RUNDIR_DEMO_MODEL "demo-model"
/* Fatal (saying what to do) when dir exists, holds no plan.json and holds anything but what a
 * run killed before writing plan.json leaves (or the demo model): an unrelated directory is never
 * written into. */
void e8q_rundir_check_usable(const char *dir);

/* Creates or reopens dir. `plan` must hold "fingerprint", "options" and "seed"; it is copied.
 * Fatal (naming each difference: "options.bits: 3 now, 2 in R/plan.json") when an existing
 * plan.json differs in those three; the reporting-only options of older plans
 * (eval_text_sha256, eval_lines) are not compared. Fatal, naming the other run's host and pid,
 * when another process holds R/lock. plan.json is created exclusively (link of a complete
 * temporary): of two creators one wins and the other compares against the winner's plan. */
e8q_rundir *e8q_rundir_open(const char *dir, const cJSON *plan);
void e8q_rundir_close(e8q_rundir *r);

/* dir/rel into out (size cap) */
void e8q_rundir_path(const e8q_rundir *r, const char *rel, char *out, size_t cap);
/* writes dir/rel atomically and appends its FILE record to the journal */
void e8q_rundir_commit(e8q_rundir *r, const char *rel, const char *kind, const void *data, size_t n);
/* 1 when dir/rel was committed and still matches its recorded sha256 (else it must be redone) */
int e8q_rundir_have(const e8q_rundir *r, const char *rel);

#endif
