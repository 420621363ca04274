/* common/log.h: progress and messages. Only rank 0 prints progress. */
#ifndef E8Q_COMMON_LOG_H
#define E8Q_COMMON_LOG_H

#include "common/error.h"

/* rank of this process in MPI_COMM_WORLD, 0 when MPI is not running */
int e8q_rank(void);
/* progress/info line on stderr, rank 0 only */
void e8q_info(const char *fmt, ...) E8Q_PRINTF(1, 2);
/* warning on stderr from any rank, prefixed with the rank */
void e8q_warn(const char *fmt, ...) E8Q_PRINTF(1, 2);
/* monotonic wall clock in seconds */
double e8q_now(void);
/* peak resident set size of this process in bytes (getrusage) */
size_t e8q_peak_rss(void);

#endif
