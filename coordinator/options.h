/* coordinator/options.h: option parsing shared by the commands, and the defaults. */
#ifndef E8Q_COORDINATOR_OPTIONS_H
#define E8Q_COORDINATOR_OPTIONS_H

#define E8Q_DEFAULT_DEVSET 128   /* calibration sequences */
#define E8Q_DEFAULT_CTX 2048     /* tokens per sequence, capped by max_position_embeddings */

/* integer/double option values in [lo, hi]; fatal naming the option otherwise */
int e8q_opt_int(const char *opt, const char *v, int lo, int hi);
double e8q_opt_double(const char *opt, const char *v, double lo, double hi);

#endif
