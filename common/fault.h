/* common/fault.h: fault injection for the resume and disk-full tests.
 *
 * Every place where a test may kill the process or fail a write is named here, in one table
 * (common/fault.c, e8q_fault_points), so tests can iterate over them and a typo in the code is
 * caught (naming an unknown point is a fatal error).
 *
 *   E8Q_FAULT=<point>[:<n>]     the process SIGKILLs itself the n-th time (default 1st) it
 *                               passes <point> (stage boundaries and mid-stage places);
 *   E8Q_FAULT_RANK=<r>          only rank r does (default: every rank that passes the point);
 *   E8Q_FAULT_ENOSPC=<kind>[:<n>]  the n-th write (default: every write) to an atomically
 *                               written file of that kind ("journal", "shard", "hessian",
 *                               "artifact", "plan", ...) fails with ENOSPC, as a full disk would.
 */
#ifndef E8Q_COMMON_FAULT_H
#define E8Q_COMMON_FAULT_H

#ifdef __cplusplus
extern "C" {
#endif

/* the named points, NULL-terminated: stage boundaries ("<stage>.done") and mid-stage places */
extern const char *const e8q_fault_points[];

/* SIGKILLs the process when E8Q_FAULT names this point (and this is its n-th pass).
 * Fatal if `point` is not in e8q_fault_points (a programming error). */
void e8q_fault_point(const char *point);
/* 1 when the next write of an atomically written file of this kind must fail with ENOSPC */
int e8q_fault_enospc(const char *kind);
/* forget the counters (tests that change the environment between cases) */
void e8q_fault_reset(void);

#ifdef __cplusplus
}
#endif
#endif
