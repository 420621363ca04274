/* common/comm.c: e8q_comm over MPI (host buffers) and NCCL (device buffers, comm_nccl.c). */
#include "common/comm.h"

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm_nccl.h" /* declarations only; the calls are compiled with E8Q_HAVE_CUDA */
#include "common/error.h"

struct e8q_comm {
  MPI_Comm mpi;   /* duplicate of MPI_COMM_WORLD */
  int rank, size;
  int node_rank, node_size; /* this rank among the ranks sharing its node (MPI_COMM_TYPE_SHARED) */
#ifdef E8Q_HAVE_CUDA
  e8q_nccl *nccl; /* NULL for a host-only communicator */
#endif
};

/* largest element count handed to one MPI call (int counts) */
#define COMM_SEG ((size_t)1 << 30)

/* ---------------------------------------------------------------- lifetime */
e8q_comm *e8q_comm_world(int cuda_device) {
  int inited = 0;
  MPI_Initialized(&inited);
  E8Q_CHECK(inited, "e8q_comm_world: MPI is not initialised (call MPI_Init first)");
  e8q_comm *c = e8q_calloc(1, sizeof *c, "communicator");
  E8Q_CHECK_MPI(MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi));
  E8Q_CHECK_MPI(MPI_Comm_rank(c->mpi, &c->rank));
  E8Q_CHECK_MPI(MPI_Comm_size(c->mpi, &c->size));
  MPI_Comm node;
  E8Q_CHECK_MPI(MPI_Comm_split_type(c->mpi, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
  E8Q_CHECK_MPI(MPI_Comm_rank(node, &c->node_rank));
  E8Q_CHECK_MPI(MPI_Comm_size(node, &c->node_size));
  MPI_Comm_free(&node);
  if (cuda_device >= 0) e8q_comm_device_open(c, cuda_device);
  return c;
}

void e8q_comm_device_open(e8q_comm *c, int cuda_device) {
#ifdef E8Q_HAVE_CUDA
  if (c->nccl) { /* a second command in one process (tests) on the same device: nothing to do */
    E8Q_CHECK(e8q_nccl_device(c->nccl) == cuda_device,
              "e8q_comm_device_open: the communicator already uses CUDA device %d, not %d", e8q_nccl_device(c->nccl),
              cuda_device);
    return;
  }
  c->nccl = e8q_nccl_open(c->mpi, cuda_device);
#else
  (void)c;
  E8Q_FATAL("e8q_comm_device_open: CUDA device %d requested but e8q was built without CUDA/NCCL "
            "(rebuild with the CUDA toolkit, or pass -1 for a host-only communicator)",
            cuda_device);
#endif
}

void e8q_comm_free(e8q_comm *c) {
  if (!c) return;
#ifdef E8Q_HAVE_CUDA
  if (c->nccl) e8q_nccl_close(c->nccl);
#endif
  MPI_Comm_free(&c->mpi);
  free(c);
}

int e8q_comm_rank(const e8q_comm *c) { return c->rank; }
int e8q_comm_size(const e8q_comm *c) { return c->size; }
int e8q_comm_node_rank(const e8q_comm *c) { return c->node_rank; }
int e8q_comm_node_size(const e8q_comm *c) { return c->node_size; }

int e8q_comm_has_device(const e8q_comm *c) {
#ifdef E8Q_HAVE_CUDA
  return c->nccl != NULL;
#else
  (void)c;
  return 0;
#endif
}

void *e8q_comm_stream(const e8q_comm *c) {
#ifdef E8Q_HAVE_CUDA
  return c->nccl ? e8q_nccl_stream(c->nccl) : NULL;
#else
  (void)c;
  return NULL;
#endif
}

/* ---------------------------------------------------------------- the process communicator */
static e8q_comm *g_world; /* opened by main (or a test) after MPI_Init */

void e8q_comm_global_open(int cuda_device) {
  E8Q_CHECK(!g_world, "e8q_comm_global_open: the process communicator is already open");
  g_world = e8q_comm_world(cuda_device);
}

void e8q_comm_global_close(void) {
  e8q_comm_free(g_world);
  g_world = NULL;
}

e8q_comm *e8q_comm_get(void) {
  E8Q_CHECK(g_world, "e8q_comm_get: the process communicator is not open (call e8q_comm_global_open "
            "after MPI_Init)");
  return g_world;
}

e8q_comm *e8q_comm_get_opt(void) { return g_world; }

/* ---------------------------------------------------------------- helpers */
/* The prologue of every call: 1 when buf is device memory, so the call goes to NCCL (fatal
 * for a host-only communicator, or a build without CUDA/NCCL); 0 for host memory (MPI). */
static int on_device(const e8q_comm *c, e8q_mem mem, const char *what) {
  if (mem != E8Q_MEM_DEVICE) return 0;
#ifdef E8Q_HAVE_CUDA
  E8Q_CHECK(c->nccl, "%s: device buffer given to a host-only communicator (create it with "
            "e8q_comm_world(device) to use NCCL)", what);
  return 1;
#else
  (void)c;
  E8Q_FATAL("%s: device buffer given but e8q was built without CUDA/NCCL", what);
#endif
}
/* an NCCL call, compiled only with CUDA (without it on_device never returns 1) */
#ifdef E8Q_HAVE_CUDA
#define NCCL_CALL(call) call
#else
#define NCCL_CALL(call) ((void)0)
#endif
/* elements in the MPI segment of a transfer of total elements starting at off */
static size_t seg_len(size_t total, size_t off) { return total - off < COMM_SEG ? total - off : COMM_SEG; }

static MPI_Datatype dt_mpi(e8q_comm_type dt) {
  switch (dt) {
    case E8Q_COMM_F32: return MPI_FLOAT;
    case E8Q_COMM_F64: return MPI_DOUBLE;
    case E8Q_COMM_I64: return MPI_INT64_T;
    case E8Q_COMM_I32: return MPI_INT32_T;
  }
  E8Q_FATAL("e8q_comm: unknown dtype %d", (int)dt);
}

static size_t dt_size(e8q_comm_type dt) {
  return dt == E8Q_COMM_F32 || dt == E8Q_COMM_I32 ? 4 : 8;
}

static void check_root(const e8q_comm *c, int root, const char *what) {
  E8Q_CHECK(root >= 0 && root < c->size, "%s: root %d out of range [0, %d)", what, root, c->size);
}

/* ---------------------------------------------------------------- collectives */
void e8q_comm_barrier(e8q_comm *c) { E8Q_CHECK_MPI(MPI_Barrier(c->mpi)); }

/* in-place reduction of [n] elements with op (E8Q_NCCL_SUM / E8Q_NCCL_MAX) to every rank
 * (root < 0) or to root (sums only) */
static void reduce(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n, int op, int root,
                   const char *what) {
  if (root >= 0) check_root(c, root, what);
  if (on_device(c, mem, what)) {
    NCCL_CALL(root < 0 ? e8q_nccl_allreduce(c->nccl, (int)dt, op, buf, n) : e8q_nccl_reduce_sum(c->nccl, (int)dt, buf, n, root));
    return;
  }
  MPI_Datatype t = dt_mpi(dt);
  MPI_Op mop = op == E8Q_NCCL_MAX ? MPI_MAX : MPI_SUM;
  char *p = buf;
  for (size_t off = 0; off < n; off += COMM_SEG) {
    size_t k = seg_len(n, off);
    void *b = p + off * dt_size(dt);
    if (root < 0)
      E8Q_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, b, (int)k, t, mop, c->mpi));
    else if (c->rank == root)
      E8Q_CHECK_MPI(MPI_Reduce(MPI_IN_PLACE, b, (int)k, t, mop, root, c->mpi));
    else
      E8Q_CHECK_MPI(MPI_Reduce(b, NULL, (int)k, t, mop, root, c->mpi));
  }
}

void e8q_comm_allreduce_sum(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n) {
  reduce(c, mem, dt, buf, n, E8Q_NCCL_SUM, -1, "e8q_comm_allreduce_sum");
}

void e8q_comm_allreduce_max(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n) {
  reduce(c, mem, dt, buf, n, E8Q_NCCL_MAX, -1, "e8q_comm_allreduce_max");
}

int e8q_comm_any(e8q_comm *c, int flag) {
  int32_t v = flag != 0;
  reduce(c, E8Q_MEM_HOST, E8Q_COMM_I32, &v, 1, E8Q_NCCL_MAX, -1, "e8q_comm_any");
  return (int)v;
}

void e8q_comm_reduce_sum(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n, int root) {
  E8Q_CHECK(root >= 0, "e8q_comm_reduce_sum: root %d out of range [0, %d)", root, c->size);
  reduce(c, mem, dt, buf, n, E8Q_NCCL_SUM, root, "e8q_comm_reduce_sum");
}

void e8q_comm_bcast(e8q_comm *c, e8q_mem mem, void *buf, size_t bytes, int root) {
  check_root(c, root, "e8q_comm_bcast");
  if (on_device(c, mem, "e8q_comm_bcast")) {
    NCCL_CALL(e8q_nccl_bcast(c->nccl, buf, bytes, root));
    return;
  }
  char *p = buf;
  for (size_t off = 0; off < bytes; off += COMM_SEG) {
    size_t k = seg_len(bytes, off);
    E8Q_CHECK_MPI(MPI_Bcast(p + off, (int)k, MPI_BYTE, root, c->mpi));
  }
}

/* MPI gatherv/allgatherv with int counts and displacements: checked, else fatal */
static void mpi_counts(const e8q_comm *c, const size_t *counts, int *ic, int *id, const char *what) {
  size_t off = 0;
  for (int r = 0; r < c->size; r++) {
    E8Q_CHECK(counts[r] <= INT_MAX && off <= INT_MAX,
              "%s: rank %d's %zu bytes at offset %zu exceed MPI's int counts (2 GiB); "
              "split the transfer", what, r, counts[r], off);
    ic[r] = (int)counts[r];
    id[r] = (int)off;
    off += counts[r];
  }
}

void e8q_comm_gatherv(e8q_comm *c, e8q_mem mem, const void *send, size_t send_bytes, void *recv,
                      const size_t *counts, int root) {
  check_root(c, root, "e8q_comm_gatherv");
  if (c->rank == root) {
    E8Q_CHECK(counts, "e8q_comm_gatherv: counts must be given on the root");
    E8Q_CHECK(counts[c->rank] == send_bytes, "e8q_comm_gatherv: counts[%d] = %zu but rank %d sends %zu bytes",
              c->rank, counts[c->rank], c->rank, send_bytes);
  }
  if (on_device(c, mem, "e8q_comm_gatherv")) {
#ifdef E8Q_HAVE_CUDA
    E8Q_CHECK(counts, "e8q_comm_gatherv: device buffers need counts on every rank");
    e8q_nccl_gatherv(c->nccl, send, send_bytes, recv, counts, root);
#endif
    return;
  }
  E8Q_CHECK(send_bytes <= INT_MAX, "e8q_comm_gatherv: %zu bytes from rank %d exceed 2 GiB", send_bytes, c->rank);
  int *ic = NULL, *id = NULL;
  if (c->rank == root) {
    ic = e8q_malloc(sizeof(int) * c->size, "gatherv counts");
    id = e8q_malloc(sizeof(int) * c->size, "gatherv displacements");
    mpi_counts(c, counts, ic, id, "e8q_comm_gatherv");
  }
  E8Q_CHECK_MPI(MPI_Gatherv(send, (int)send_bytes, MPI_BYTE, recv, ic, id, MPI_BYTE, root, c->mpi));
  free(ic);
  free(id);
}

void e8q_comm_allgatherv(e8q_comm *c, e8q_mem mem, const void *send, size_t send_bytes, void *recv,
                         const size_t *counts) {
  E8Q_CHECK(counts, "e8q_comm_allgatherv: counts must be given on every rank");
  E8Q_CHECK(counts[c->rank] == send_bytes, "e8q_comm_allgatherv: counts[%d] = %zu but rank %d sends %zu bytes",
            c->rank, counts[c->rank], c->rank, send_bytes);
  if (on_device(c, mem, "e8q_comm_allgatherv")) {
    NCCL_CALL(e8q_nccl_gatherv(c->nccl, send, send_bytes, recv, counts, -1));
    return;
  }
  int *ic = e8q_malloc(sizeof(int) * c->size, "allgatherv counts");
  int *id = e8q_malloc(sizeof(int) * c->size, "allgatherv displacements");
  mpi_counts(c, counts, ic, id, "e8q_comm_allgatherv");
  E8Q_CHECK_MPI(MPI_Allgatherv(send, (int)send_bytes, MPI_BYTE, recv, ic, id, MPI_BYTE, c->mpi));
  free(ic);
  free(id);
}

/* fixed-size items to root (root < 0: to everyone): MPI_Gather/MPI_Allgather on host, the
 * v-variants with equal counts on device */
static void gather_items(e8q_comm *c, e8q_mem mem, const void *send, size_t item_bytes, void *recv, int root,
                         const char *what) {
  if (root >= 0) check_root(c, root, what);
  E8Q_CHECK(item_bytes <= INT_MAX && item_bytes * (size_t)c->size <= INT_MAX,
            "%s: %zu bytes per rank on %d ranks exceed MPI's int counts (2 GiB); use the v-variant in pieces", what,
            item_bytes, c->size);
  if (on_device(c, mem, what)) {
    size_t *counts = e8q_malloc(sizeof(size_t) * (size_t)c->size, "gather counts");
    for (int r = 0; r < c->size; r++) counts[r] = item_bytes;
    if (root < 0) e8q_comm_allgatherv(c, mem, send, item_bytes, recv, counts);
    else e8q_comm_gatherv(c, mem, send, item_bytes, recv, counts, root);
    free(counts);
    return;
  }
  E8Q_CHECK(recv || item_bytes == 0 || (root >= 0 && c->rank != root), "%s: no receive buffer", what);
  if (root < 0)
    E8Q_CHECK_MPI(MPI_Allgather(send, (int)item_bytes, MPI_BYTE, recv, (int)item_bytes, MPI_BYTE, c->mpi));
  else
    E8Q_CHECK_MPI(MPI_Gather(send, (int)item_bytes, MPI_BYTE, recv, (int)item_bytes, MPI_BYTE, root, c->mpi));
}

void e8q_comm_gather(e8q_comm *c, e8q_mem mem, const void *send, size_t item_bytes, void *recv, int root) {
  E8Q_CHECK(root >= 0, "e8q_comm_gather: root %d out of range [0, %d)", root, c->size);
  gather_items(c, mem, send, item_bytes, recv, root, "e8q_comm_gather");
}

void e8q_comm_allgather(e8q_comm *c, e8q_mem mem, const void *send, size_t item_bytes, void *recv) {
  gather_items(c, mem, send, item_bytes, recv, -1, "e8q_comm_allgather");
}

void e8q_comm_send(e8q_comm *c, e8q_mem mem, const void *buf, size_t bytes, int peer, int tag) {
  check_root(c, peer, "e8q_comm_send (peer)");
  if (on_device(c, mem, "e8q_comm_send")) {
    NCCL_CALL(e8q_nccl_send(c->nccl, buf, bytes, peer));
    return;
  }
  const char *p = buf;
  for (size_t off = 0; off < bytes || off == 0; off += COMM_SEG) {
    size_t k = seg_len(bytes, off);
    E8Q_CHECK_MPI(MPI_Send(p + off, (int)k, MPI_BYTE, peer, tag, c->mpi));
    if (bytes == 0) break;
  }
}

void e8q_comm_recv(e8q_comm *c, e8q_mem mem, void *buf, size_t bytes, int peer, int tag) {
  check_root(c, peer, "e8q_comm_recv (peer)");
  if (on_device(c, mem, "e8q_comm_recv")) {
    NCCL_CALL(e8q_nccl_recv(c->nccl, buf, bytes, peer));
    return;
  }
  char *p = buf;
  for (size_t off = 0; off < bytes || off == 0; off += COMM_SEG) {
    size_t k = seg_len(bytes, off);
    MPI_Status st;
    E8Q_CHECK_MPI(MPI_Recv(p + off, (int)k, MPI_BYTE, peer, tag, c->mpi, &st));
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    E8Q_CHECK((size_t)got == k, "e8q_comm_recv: expected %zu bytes from rank %d (tag %d), got %d",
              k, peer, tag, got);
    if (bytes == 0) break;
  }
}

/* ---------------------------------------------------------------- nonblocking point to point */
struct e8q_comm_req {
  int n;                /* segments */
  int recv;             /* 1: a receive (sizes checked on completion) */
  int peer, tag;
  size_t bytes;
  MPI_Request *req;     /* [n] */
};

static e8q_comm_req *post(e8q_comm *c, void *buf, size_t bytes, int peer, int tag, int recv) {
  check_root(c, peer, recv ? "e8q_comm_irecv (peer)" : "e8q_comm_isend (peer)");
  e8q_comm_req *r = e8q_calloc(1, sizeof *r, "communication request");
  r->n = bytes == 0 ? 1 : (int)((bytes + COMM_SEG - 1) / COMM_SEG);
  r->recv = recv;
  r->peer = peer;
  r->tag = tag;
  r->bytes = bytes;
  r->req = e8q_calloc((size_t)r->n, sizeof(MPI_Request), "communication requests");
  char *p = buf;
  for (int i = 0; i < r->n; i++) {
    size_t off = (size_t)i * COMM_SEG, k = bytes == 0 ? 0 : seg_len(bytes, off);
    if (recv)
      E8Q_CHECK_MPI(MPI_Irecv(p + off, (int)k, MPI_BYTE, peer, tag, c->mpi, &r->req[i]));
    else
      E8Q_CHECK_MPI(MPI_Isend(p + off, (int)k, MPI_BYTE, peer, tag, c->mpi, &r->req[i]));
  }
  return r;
}

e8q_comm_req *e8q_comm_isend(e8q_comm *c, const void *buf, size_t bytes, int peer, int tag) {
  return post(c, (void *)buf, bytes, peer, tag, 0);
}

e8q_comm_req *e8q_comm_irecv(e8q_comm *c, void *buf, size_t bytes, int peer, int tag) {
  return post(c, buf, bytes, peer, tag, 1);
}

void e8q_comm_wait(e8q_comm_req *r) {
  if (!r) return;
  for (int i = 0; i < r->n; i++) {
    MPI_Status st;
    E8Q_CHECK_MPI(MPI_Wait(&r->req[i], &st));
    if (!r->recv) continue;
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    size_t want = r->bytes == 0 ? 0 : seg_len(r->bytes, (size_t)i * COMM_SEG);
    E8Q_CHECK((size_t)got == want, "e8q_comm_wait: expected %zu bytes from rank %d (tag %d), got %d", want, r->peer,
              r->tag, got);
  }
  free(r->req);
  free(r);
}

/* ---------------------------------------------------------------- reproducible sums */
#define XSUM_MAX_FRAC 120

void e8q_xsum_init(e8q_xsum *s, size_t n, int frac_bits) {
  E8Q_CHECK(frac_bits >= 0 && frac_bits <= XSUM_MAX_FRAC,
            "e8q_xsum_init: frac_bits %d out of range [0, %d]", frac_bits, XSUM_MAX_FRAC);
  s->n = n;
  s->frac_bits = frac_bits;
  s->v = e8q_alloc_aligned((n ? n : 1) * sizeof(__int128), "exact sum accumulator");
}

void e8q_xsum_free(e8q_xsum *s) {
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

void e8q_xsum_zero(e8q_xsum *s) { memset(s->v, 0, s->n * sizeof(__int128)); }

/* x · 2^frac_bits rounded to the nearest integer (ties to even), from the bits of x: exact, no
 * floating-point rounding involved, the same on every machine */
__int128 e8q_xsum_from_double(double x, int frac_bits) {
  uint64_t bits;
  memcpy(&bits, &x, sizeof bits);
  const int neg = (int)(bits >> 63), E = (int)((bits >> 52) & 0x7FF);
  uint64_t M = bits & ((UINT64_C(1) << 52) - 1);
  E8Q_CHECK(E != 0x7FF, "e8q_xsum: non-finite value %g cannot be summed exactly", x);
  int e; /* |x| = M · 2^e */
  if (E == 0) e = -1074; /* subnormal */
  else {
    M |= UINT64_C(1) << 52;
    e = E - 1075;
  }
  if (M == 0) return 0;
  const int sh = e + frac_bits;
  __int128 v;
  if (sh >= 0) {
    E8Q_CHECK(64 - __builtin_clzll(M) + sh <= 126,
              "e8q_xsum: |%g| exceeds the exact accumulator's range 2^%d (lower frac_bits)", x,
              126 - frac_bits);
    v = (__int128)M << sh;
  } else {
    const int r = -sh;
    if (r >= 64) return 0; /* M < 2^53: below half a unit */
    uint64_t q = M >> r, rem = M & ((UINT64_C(1) << r) - 1), half = UINT64_C(1) << (r - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    v = (__int128)q;
  }
  return neg ? -v : v;
}

double e8q_xsum_to_double_ref(__int128 v, int frac_bits) {
  return ldexp((double)v, -frac_bits); /* (double) of __int128 rounds to nearest */
}

/* the same bits, faster: a value that fits 64 bits converts in hardware (round to nearest even,
 * like the 128-bit conversion), and 2^-frac_bits (frac_bits <= XSUM_MAX_FRAC) is a normal
 * double, so for |v| >= 1 the product is exact, as ldexp's result is */
double e8q_xsum_to_double(__int128 v, int frac_bits) {
  const double d = v >= INT64_MIN && v <= INT64_MAX ? (double)(int64_t)v : (double)v;
  union {
    uint64_t u;
    double d;
  } p = {.u = (uint64_t)(1023 - frac_bits) << 52}; /* 2^-frac_bits */
  return d * p.d;
}

static inline __int128 xsum_add1(__int128 a, __int128 b) {
  __int128 r;
  E8Q_CHECK(!__builtin_add_overflow(a, b, &r),
            "e8q_xsum: exact accumulator overflow (|sum| >= 2^127 units); lower frac_bits");
  return r;
}

void e8q_xsum_add(e8q_xsum *s, const double *x) {
  const int f = s->frac_bits;
  for (size_t i = 0; i < s->n; i++) {
    s->v[i] = xsum_add1(s->v[i], e8q_xsum_from_double(x[i], f));
  }
}

void e8q_xsum_get(const e8q_xsum *s, double *out) {
  for (size_t i = 0; i < s->n; i++) out[i] = e8q_xsum_to_double(s->v[i], s->frac_bits);
}

/* ---------------------------------------------------------------- limbs (NCCL transport) */
#define LIMB_MASK ((UINT64_C(1) << E8Q_XSUM_LIMB_BITS) - 1)

void e8q_xsum_limbs(const __int128 *v, size_t n, int64_t *limbs) {
  for (size_t i = 0; i < n; i++) {
    const unsigned __int128 u = (unsigned __int128)v[i]; /* two's-complement bits */
    limbs[3 * i + 0] = (int64_t)((uint64_t)u & LIMB_MASK);
    limbs[3 * i + 1] = (int64_t)((uint64_t)(u >> E8Q_XSUM_LIMB_BITS) & LIMB_MASK);
    limbs[3 * i + 2] = (int64_t)(v[i] >> (2 * E8Q_XSUM_LIMB_BITS)); /* arithmetic: keeps the sign */
  }
}

/* The low limbs (any int64, summed limbs may be negative too) form a = l0 + l1 * 2^42,
 * |a| < 2^106; its bits from 2^84 up are carried into the top limb, so that
 * total = hi * 2^84 + lo with lo in [0, 2^84): total fits 128 bits exactly when
 * hi is in [-2^43, 2^43). */
int e8q_xsum_limbs_join(const int64_t l[3], __int128 *v) {
  const int top = 2 * E8Q_XSUM_LIMB_BITS; /* 84 */
  const __int128 a = (__int128)l[0] + (__int128)l[1] * ((__int128)1 << E8Q_XSUM_LIMB_BITS);
  const __int128 lo = a & ((((__int128)1) << top) - 1);
  const __int128 hi = (__int128)l[2] + (a >> top); /* a >> top: floor, |.| < 2^22 */
  const __int128 lim = (__int128)1 << (127 - top); /* 2^43 */
  if (hi < -lim || hi >= lim) return 0;
  *v = hi * ((__int128)1 << top) + lo;
  return 1;
}

void e8q_xsum_from_limbs(const int64_t *limbs, size_t n, __int128 *v) {
  for (size_t i = 0; i < n; i++)
    E8Q_CHECK(e8q_xsum_limbs_join(limbs + 3 * i, &v[i]),
              "e8q_xsum: exact accumulator overflow (|sum| >= 2^127 units) in value %zu of %zu after "
              "the NCCL reduction; lower frac_bits", i, n);
}

/* ---------------------------------------------------------------- ordered all-reduce */
/* MPI user op on 16-byte two's-complement integers (byte blocks; commutative, exact) */
static void xsum_mpi_op(void *in, void *inout, int *len, MPI_Datatype *dt) {
  (void)dt;
  __int128 a, b;
  char *pi = in, *po = inout;
  for (int i = 0; i < *len; i++) {
    memcpy(&a, pi + 16 * (size_t)i, 16);
    memcpy(&b, po + 16 * (size_t)i, 16);
    b = xsum_add1(a, b);
    memcpy(po + 16 * (size_t)i, &b, 16);
  }
}

/* s->v [n] summed over ranks through MPI, 16-byte blocks with xsum_mpi_op */
static void xsum_allreduce_mpi(e8q_comm *c, e8q_xsum *s) {
  MPI_Datatype t;
  MPI_Op op;
  E8Q_CHECK_MPI(MPI_Type_contiguous(16, MPI_BYTE, &t));
  E8Q_CHECK_MPI(MPI_Type_commit(&t));
  E8Q_CHECK_MPI(MPI_Op_create(xsum_mpi_op, 1, &op));
  const size_t seg = (size_t)1 << 24; /* 256 MiB per call */
  for (size_t off = 0; off < s->n; off += seg) {
    size_t k = s->n - off < seg ? s->n - off : seg;
    E8Q_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, s->v + off, (int)k, t, op, c->mpi));
  }
  MPI_Op_free(&op);
  MPI_Type_free(&t);
}

#ifdef E8Q_HAVE_CUDA
/* s->v [n] summed over ranks through NCCL: per segment of k values, limbs [k][3] int64 on the
 * host, summed by an int64 NCCL all-reduce staged through device memory, recombined into v */
static void xsum_allreduce_nccl(e8q_comm *c, e8q_xsum *s) {
  E8Q_CHECK(c->size <= E8Q_XSUM_LIMB_MAX_RANKS,
            "e8q_comm_allreduce_sum_ordered: %d ranks exceed the %d the NCCL limb transport can sum "
            "without int64 overflow", c->size, E8Q_XSUM_LIMB_MAX_RANKS);
  const size_t seg = (size_t)1 << 22; /* values per segment: limbs of 96 MiB */
  const size_t cap = s->n < seg ? s->n : seg;
  int64_t *limbs = e8q_malloc(3 * (cap ? cap : 1) * sizeof(int64_t), "exact sum limbs"); /* [cap][3] */
  for (size_t off = 0; off < s->n; off += seg) {
    const size_t k = s->n - off < seg ? s->n - off : seg;
    e8q_xsum_limbs(s->v + off, k, limbs);
    e8q_nccl_allreduce_i64_host(c->nccl, limbs, 3 * k);
    e8q_xsum_from_limbs(limbs, k, s->v + off);
  }
  free(limbs);
}
#endif

void e8q_comm_allreduce_sum_ordered(e8q_comm *c, e8q_xsum *s, double *out) {
  long long mine[2] = {(long long)s->n, s->frac_bits}, lo[2], hi[2];
  E8Q_CHECK_MPI(MPI_Allreduce(mine, lo, 2, MPI_LONG_LONG, MPI_MIN, c->mpi));
  E8Q_CHECK_MPI(MPI_Allreduce(mine, hi, 2, MPI_LONG_LONG, MPI_MAX, c->mpi));
  E8Q_CHECK(lo[0] == hi[0] && lo[1] == hi[1],
            "e8q_comm_allreduce_sum_ordered: ranks disagree on the accumulator (n %lld..%lld, "
            "frac_bits %lld..%lld); every rank must init the same shape",
            lo[0], hi[0], lo[1], hi[1]);
#ifdef E8Q_HAVE_CUDA
  if (c->nccl) xsum_allreduce_nccl(c, s);
  else
#endif
    xsum_allreduce_mpi(c, s);
  if (out) e8q_xsum_get(s, out);
}
