/* coordinator/progress.h: progress of a run on rank 0 and machine-readable events.
 *
 * On a terminal (stderr is a TTY) a one-line bar redrawn in place: percent, steps, rate, ETA,
 * current layer and stage. Otherwise one plain line per step. Only rank 0 prints. With a log
 * path, every step and event is also appended to it as one JSON object per line
 * ({"t": seconds since start, "event": ..., ...}), flushed at once.
 */
#ifndef E8Q_COORDINATOR_PROGRESS_H
#define E8Q_COORDINATOR_PROGRESS_H

#include <cjson/cJSON.h>

/* total: the number of steps the run will report; log_json may be NULL */
void e8q_progress_begin(int total, const char *log_json);
/* one step finished (or skipped because it was already done: resumed = 1) */
void e8q_progress_step(const char *stage, int layer, const char *what, int resumed);
/* an event for the log (fields: owned, may be NULL); also printed as a line when print */
void e8q_progress_event(const char *event, cJSON *fields, int print);
void e8q_progress_end(void);

#endif
