/* coordinator/progress.c: progress bar, plain lines and JSON events (coordinator/progress.h). */
#include "coordinator/progress.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"

static struct {
  int total, done, skipped;
  double t0, t_first; /* start, and time when the first non-skipped step began counting */
  int tty;
  FILE *log;
  int active;
} P;

void e8q_progress_begin(int total, const char *log_json) {
  memset(&P, 0, sizeof P);
  P.total = total;
  P.t0 = e8q_now();
  P.t_first = P.t0;
  P.active = e8q_rank() == 0;
  if (!P.active) return;
  P.tty = isatty(2);
  if (log_json) {
    P.log = fopen(log_json, "a");
    E8Q_CHECK_ERRNO(P.log, "--log-json %s: cannot open it for appending; check the path", log_json);
  }
}

static void log_obj(cJSON *o) {
  if (!P.log) {
    cJSON_Delete(o);
    return;
  }
  char *s = cJSON_PrintUnformatted(o);
  fprintf(P.log, "%s\n", s);
  fflush(P.log);
  free(s);
  cJSON_Delete(o);
}

static void fmt_time(double s, char *out, size_t cap) {
  if (s < 0 || s > 1e7) {
    snprintf(out, cap, "--:--");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(out, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else snprintf(out, cap, "%02ld:%02ld", t / 60, t % 60);
}

void e8q_progress_step(const char *stage, int layer, const char *what, int resumed) {
  if (!P.active) return;
  P.done++;
  if (resumed) {
    P.skipped++;
    P.t_first = e8q_now();
  }
  double now = e8q_now(), el = now - P.t0;
  int worked = P.done - P.skipped;
  double rate = worked > 0 ? worked / (now - P.t_first + 1e-9) : 0;
  double eta = rate > 0 ? (P.total - P.done) / rate : -1;
  char eta_s[32], el_s[32];
  fmt_time(eta, eta_s, sizeof eta_s);
  fmt_time(el, el_s, sizeof el_s);
  char where[96];
  if (layer >= 0) snprintf(where, sizeof where, "layer %d %s%s%s", layer, stage, what && *what ? " " : "", what ? what : "");
  else snprintf(where, sizeof where, "%s%s%s", stage, what && *what ? " " : "", what ? what : "");
  if (P.tty) {
    int width = 24, fill = P.total ? P.done * width / P.total : width;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %3d%% %d/%d %.2f steps/s ETA %s  %-40.40s", bar, P.total ? 100 * P.done / P.total : 100,
            P.done, P.total, rate, eta_s, where);
    if (P.done == P.total) fputc('\n', stderr);
    fflush(stderr);
  } else {
    fprintf(stderr, "e8q: [%d/%d %s, ETA %s] %s%s\n", P.done, P.total, el_s, eta_s, where, resumed ? " (done before, resumed)" : "");
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "t", el);
  cJSON_AddStringToObject(o, "event", "step");
  cJSON_AddStringToObject(o, "stage", stage);
  if (layer >= 0) cJSON_AddNumberToObject(o, "layer", layer);
  if (what) cJSON_AddStringToObject(o, "what", what);
  cJSON_AddBoolToObject(o, "resumed", resumed);
  cJSON_AddNumberToObject(o, "done", P.done);
  cJSON_AddNumberToObject(o, "total", P.total);
  log_obj(o);
}

void e8q_progress_event(const char *event, cJSON *fields, int print) {
  if (!P.active) {
    cJSON_Delete(fields);
    return;
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "t", e8q_now() - P.t0);
  cJSON_AddStringToObject(o, "event", event);
  if (fields) {
    cJSON *c = fields->child;
    while (c) {
      cJSON *next = c->next;
      cJSON_AddItemToObject(o, c->string, cJSON_DetachItemViaPointer(fields, c));
      c = next;
    }
    cJSON_Delete(fields);
  }
  if (print) {
    char *s = cJSON_PrintUnformatted(o);
    if (P.tty) fputc('\n', stderr);
    fprintf(stderr, "e8q: %s\n", s);
    free(s);
  }
  log_obj(o);
}

void e8q_progress_end(void) {
  if (P.log) fclose(P.log);
  P.log = NULL;
  P.active = 0;
}
