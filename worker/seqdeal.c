/* worker/seqdeal.c: sequences of a step dealt evenly to the ranks (worker/seqdeal.h). */
#include "worker/seqdeal.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define E8Q_DEAL_TAG 0x5d00 /* + part */

void e8q_seqdeal_init(e8q_seqdeal *d, e8q_comm *comm, int s0, int s1, int n_parts, const void *const *base,
                      const size_t *bytes) {
  memset(d, 0, sizeof *d);
  E8Q_CHECK(n_parts >= 1 && n_parts <= E8Q_DEAL_MAX_PARTS && s0 <= s1, "seqdeal: %d parts, sequences [%d, %d)",
            n_parts, s0, s1);
  d->comm = comm;
  d->rank = comm ? e8q_comm_rank(comm) : 0;
  d->size = comm ? e8q_comm_size(comm) : 1;
  int *r = e8q_malloc(sizeof(int) * 2 * (size_t)d->size, "seqdeal ranges"); /* [size, 2] */
  const int mine[2] = {s0, s1};
  if (comm) e8q_comm_allgather(comm, E8Q_MEM_HOST, mine, sizeof mine, r);
  else memcpy(r, mine, sizeof mine);
  d->seq_start = e8q_malloc(sizeof(int) * ((size_t)d->size + 1), "seqdeal starts");
  for (int k = 0; k < d->size; k++) {
    E8Q_CHECK(r[2 * k] == (k ? r[2 * k - 1] : r[0]),
              "seqdeal: rank %d holds sequences [%d, %d), not contiguous with the rank before", k, r[2 * k],
              r[2 * k + 1]);
    d->seq_start[k] = r[2 * k];
  }
  d->seq_start[d->size] = r[2 * d->size - 1];
  free(r);
  d->n_parts = n_parts;
  for (int p = 0; p < n_parts; p++) {
    d->base[p] = base[p];
    d->bytes[p] = bytes[p];
    d->buf[p] = d->size > 1 ? e8q_alloc_aligned(bytes[p] ? bytes[p] : 1, "seqdeal receive buffer") : NULL;
  }
  d->req = e8q_malloc(sizeof(e8q_comm_req *) * (size_t)d->size * (size_t)n_parts, "seqdeal requests");
}

void e8q_seqdeal_free(e8q_seqdeal *d) {
  for (int p = 0; p < d->n_parts; p++) free(d->buf[p]);
  free(d->seq_start);
  free(d->req);
  memset(d, 0, sizeof *d);
}

int e8q_seqdeal_rounds(const e8q_seqdeal *d, int n) { return (n + d->size - 1) / d->size; }

/* the rank holding sequence i */
static int holder(const e8q_seqdeal *d, int i) {
  E8Q_CHECK(i >= d->seq_start[0] && i < d->seq_start[d->size], "seqdeal: sequence %d is outside [%d, %d)", i,
            d->seq_start[0], d->seq_start[d->size]);
  int lo = 0, hi = d->size - 1; /* the last rank whose start is <= i */
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (d->seq_start[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

static const char *part_of(const e8q_seqdeal *d, int p, int i) {
  return d->base[p] + (size_t)(i - d->seq_start[d->rank]) * d->bytes[p];
}

int e8q_seqdeal_round(e8q_seqdeal *d, const int *seq, int n, int r, const void **parts) {
  const int j0 = r * d->size, j1 = j0 + d->size < n ? j0 + d->size : n;
  E8Q_CHECK(r >= 0 && j0 < n, "seqdeal: round %d of a list of %d sequences", r, n);
  e8q_comm_req **req = d->req; /* every send and receive is posted before any is waited for */
  int n_req = 0, mine = -1;
  /* this rank's sends: sequences it holds that another rank trains (at most one per peer) */
  for (int j = j0; j < j1; j++) {
    const int w = j - j0, h = holder(d, seq[j]);
    if (h == d->rank && w != d->rank) {
      for (int p = 0; p < d->n_parts; p++)
        req[n_req++] = e8q_comm_isend(d->comm, part_of(d, p, seq[j]), d->bytes[p], w, E8Q_DEAL_TAG + p);
    }
  }
  const int j = j0 + d->rank;
  if (j < j1) {
    mine = j;
    const int h = holder(d, seq[j]);
    for (int p = 0; p < d->n_parts; p++) {
      if (h == d->rank) {
        parts[p] = part_of(d, p, seq[j]);
      } else {
        req[n_req++] = e8q_comm_irecv(d->comm, d->buf[p], d->bytes[p], h, E8Q_DEAL_TAG + p);
        parts[p] = d->buf[p];
      }
    }
  }
  for (int k = 0; k < n_req; k++) e8q_comm_wait(req[k]);
  return mine;
}
