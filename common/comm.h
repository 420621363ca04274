/* common/comm.h: the communicator of e8q.
 *
 * One handle, the same calls for host and device buffers:
 *   - host buffers (E8Q_MEM_HOST) go through MPI;
 *   - device buffers (E8Q_MEM_DEVICE) go through NCCL when the project is built with CUDA
 *     (E8Q_HAVE_CUDA) and the communicator was created with a device; Open MPI here is not
 *     CUDA-aware, so device pointers are NEVER handed to MPI.
 * Every call is collective over the communicator unless it says otherwise (send/recv), blocks
 * until its buffers may be reused (device calls synchronise the communicator's stream), and is
 * fatal on any error (message names the call and the counts).
 *
 * Counts are size_t: messages above MPI's int limit are split into segments internally.
 *
 * Reproducible sums (rank-count independent): see e8q_xsum below. Plain allreduce_sum follows
 * MPI's reduction order, which can change the last bits with the number of ranks.
 */
#ifndef E8Q_COMMON_COMM_H
#define E8Q_COMMON_COMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { E8Q_MEM_HOST = 0, E8Q_MEM_DEVICE = 1 } e8q_mem;
/* element type of reductions (named apart from io/safetensors.h's e8q_dtype: both headers can be
 * included together) */
typedef enum { E8Q_COMM_F32 = 0, E8Q_COMM_F64 = 1, E8Q_COMM_I64 = 2, E8Q_COMM_I32 = 3 } e8q_comm_type;

typedef struct e8q_comm e8q_comm;

/* ---------------------------------------------------------------- lifetime */
/* A communicator over MPI_COMM_WORLD (duplicated: e8q traffic never mixes with the caller's).
 * MPI must be initialised. cuda_device >= 0 also opens an NCCL communicator on that device
 * (unique id broadcast over MPI, a private stream); -1 gives a host-only communicator. Asking
 * for a device in a build without CUDA, or on a machine without one, is fatal with a message. */
e8q_comm *e8q_comm_world(int cuda_device);
void e8q_comm_free(e8q_comm *c); /* collective; NULL is a no-op */

/* collective: opens NCCL on cuda_device for a communicator created host-only (the device is
 * chosen after the options are read, common/device.h); nothing when it is open on that device
 * already; fatal without CUDA or when it uses another device */
void e8q_comm_device_open(e8q_comm *c, int cuda_device);

int e8q_comm_rank(const e8q_comm *c);
int e8q_comm_size(const e8q_comm *c);
/* this rank's index among the ranks on its node, and their number (MPI_COMM_TYPE_SHARED) */
int e8q_comm_node_rank(const e8q_comm *c);
int e8q_comm_node_size(const e8q_comm *c);
int e8q_comm_has_device(const e8q_comm *c); /* 1 when device buffers are accepted (NCCL open) */
/* the cudaStream_t (as void*) device calls run on, NULL for a host-only communicator */
void *e8q_comm_stream(const e8q_comm *c);

/* ---------------------------------------------------------------- the process communicator
 * One communicator per process for the whole pipeline (quantize, eval, generate...): `main`
 * opens it right after MPI_Init and closes it before MPI_Finalize; library code reaches it with
 * e8q_comm_get() instead of calling MPI itself. Tests that call pipeline code without `main`
 * open it themselves. */
void e8q_comm_global_open(int cuda_device); /* collective; e8q_comm_world(cuda_device); fatal if open */
void e8q_comm_global_close(void);           /* collective; a no-op when not open */
e8q_comm *e8q_comm_get(void);               /* the process communicator; fatal when not open */
/* the same, or NULL when none is open: for code that also runs as a lone process without MPI
 * (it then acts as rank 0 of 1) */
e8q_comm *e8q_comm_get_opt(void);

/* ---------------------------------------------------------------- collectives */
void e8q_comm_barrier(e8q_comm *c);
/* in place: buf[i] = sum over ranks of buf[i]; buf: [n] of type dt */
void e8q_comm_allreduce_sum(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n);
/* in place at root: buf [n] on root receives the sum; other ranks' buf is left unspecified */
void e8q_comm_reduce_sum(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n, int root);
/* in place: buf[i] = max over ranks of buf[i]; buf: [n] of type dt (NaN handling: MPI's/NCCL's) */
void e8q_comm_allreduce_max(e8q_comm *c, e8q_mem mem, e8q_comm_type dt, void *buf, size_t n);
/* 1 on every rank when flag is non-zero on any rank, else 0 (host; "did any rank fail?") */
int e8q_comm_any(e8q_comm *c, int flag);
/* bytes from root to everyone */
void e8q_comm_bcast(e8q_comm *c, e8q_mem mem, void *buf, size_t bytes, int root);
/* Every rank sends send[0..send_bytes); recv (on root only for gatherv, everywhere for
 * allgatherv) receives rank 0's bytes, then rank 1's, ... packed without gaps;
 * counts [size] gives every rank's send_bytes (the same values on all ranks; for host buffers
 * non-root ranks of gatherv may pass NULL, device buffers need it everywhere). */
void e8q_comm_gatherv(e8q_comm *c, e8q_mem mem, const void *send, size_t send_bytes, void *recv,
                      const size_t *counts, int root);
void e8q_comm_allgatherv(e8q_comm *c, e8q_mem mem, const void *send, size_t send_bytes, void *recv,
                         const size_t *counts);
/* Fixed-size items: every rank sends item_bytes; recv [size * item_bytes] receives rank 0's item,
 * then rank 1's, ... (gather: on root only, other ranks may pass NULL for host buffers;
 * allgather: everywhere). */
void e8q_comm_gather(e8q_comm *c, e8q_mem mem, const void *send, size_t item_bytes, void *recv, int root);
void e8q_comm_allgather(e8q_comm *c, e8q_mem mem, const void *send, size_t item_bytes, void *recv);
/* point to point (not collective); tag is used by MPI only (NCCL orders by call sequence) */
void e8q_comm_send(e8q_comm *c, e8q_mem mem, const void *buf, size_t bytes, int peer, int tag);
void e8q_comm_recv(e8q_comm *c, e8q_mem mem, void *buf, size_t bytes, int peer, int tag);
/* Nonblocking point to point (host buffers only; not collective): the call returns at once with
 * a request that e8q_comm_wait completes and frees; buf must stay untouched (isend) or unread
 * (irecv) until then. A receive checks that exactly `bytes` arrived. Messages between two ranks
 * arrive in the order they were sent. */
typedef struct e8q_comm_req e8q_comm_req;
e8q_comm_req *e8q_comm_isend(e8q_comm *c, const void *buf, size_t bytes, int peer, int tag);
e8q_comm_req *e8q_comm_irecv(e8q_comm *c, void *buf, size_t bytes, int peer, int tag);
void e8q_comm_wait(e8q_comm_req *r); /* NULL is a no-op */

/* ---------------------------------------------------------------- reproducible sums
 * e8q_xsum is an exact, order-independent accumulator of n values: each value is held as a
 * 128-bit two's-complement fixed-point number with LSB 2^-frac_bits. Adding a double rounds it
 * once, to the nearest multiple of 2^-frac_bits (ties to even), independently of anything else;
 * after that every addition is exact integer arithmetic, so the total does not depend on the
 * order or grouping of the additions.
 *
 * CONTRACT for bit-identical results with any number of ranks: split the data into a fixed set
 * of chunks that does not depend on the rank count (for example one chunk per calibration
 * sequence); compute each chunk's contribution the same way whichever rank owns it (e.g. a
 * dsyrk over that sequence only, starting from zero); e8q_xsum_add each chunk's contribution
 * into the rank's accumulator; then e8q_comm_allreduce_sum_ordered. Every rank gets the same
 * doubles, equal bit for bit for 1, 2, 4, ... ranks and any assignment of chunks to ranks.
 *
 * Precision and range: values are exact when |x| >= 2^(52-frac_bits) and otherwise carry an
 * absolute error <= 2^-(frac_bits+1); |partial sums| must stay below 2^(127-frac_bits), or the
 * add is fatal (message says to lower frac_bits). E8Q_XSUM_FRAC_DEFAULT = 64 gives an absolute
 * resolution of 5.4e-20 and a range of 9.2e18 (Hessians of unit-scale activations over 1e12
 * tokens, gradients down to 1e-12 with 8 significant digits). Memory: 16 bytes per value. */
#define E8Q_XSUM_FRAC_DEFAULT 64
typedef struct {
  size_t n;           /* number of values */
  int frac_bits;      /* LSB = 2^-frac_bits, 0 <= frac_bits <= 120 */
  __int128 *v;        /* [n] fixed-point values, 64-byte aligned, owned */
} e8q_xsum;

void e8q_xsum_init(e8q_xsum *s, size_t n, int frac_bits); /* zeroed */
void e8q_xsum_free(e8q_xsum *s);
void e8q_xsum_zero(e8q_xsum *s);
/* s[i] += round(x[i]); x: [n]. Non-finite x or overflow is fatal. */
void e8q_xsum_add(e8q_xsum *s, const double *x);
/* out[i] = s[i] rounded to the nearest double; out: [n] */
void e8q_xsum_get(const e8q_xsum *s, double *out);
/* the conversions one value at a time (exposed for tests) */
__int128 e8q_xsum_from_double(double x, int frac_bits);
double e8q_xsum_to_double(__int128 v, int frac_bits);
double e8q_xsum_to_double_ref(__int128 v, int frac_bits); /* ldexp of the 128-bit conversion */

/* Collective: replaces every rank's s by the exact sum of all ranks' s (integer reduction,
 * order-independent), then writes the rounded total to out [n] (may be NULL) on every rank.
 * All ranks must pass the same n and frac_bits (checked, over MPI).
 * Transport: on a communicator with NCCL open (e8q_comm_has_device) each value is split into
 * three int64 limbs (e8q_xsum_limbs below), the limbs are summed as int64 by NCCL (integer
 * addition: exact, so NCCL's ring order does not matter) and recombined in 128 bits; otherwise
 * the 128-bit values go through an MPI user op. Both give the same bits. Overflow of the total
 * (|sum| >= 2^127 units) is fatal either way; MPI may also stop on an intermediate partial sum
 * that overflows, NCCL only on the final total. The NCCL path needs at most
 * E8Q_XSUM_LIMB_MAX_RANKS ranks (checked). */
void e8q_comm_allreduce_sum_ordered(e8q_comm *c, e8q_xsum *s, double *out);

/* Limbs of the NCCL transport: v = l0 + l1 * 2^42 + l2 * 2^84 with l0, l1 in [0, 2^42) and
 * l2 = v >> 84 (arithmetic shift) in [-2^43, 2^43). Summed elementwise as int64 over R ranks,
 * l0 and l1 stay below R * 2^42 and |l2| <= R * 2^43, so no int64 sum wraps while
 * R <= 2^20 = E8Q_XSUM_LIMB_MAX_RANKS (the signed top limb sets the bound). */
#define E8Q_XSUM_LIMB_BITS 42
#define E8Q_XSUM_LIMB_MAX_RANKS (1 << 20)
/* limbs [n][3] (value-major: limbs[3i + j] = limb j of v[i]) from v [n] */
void e8q_xsum_limbs(const __int128 *v, size_t n, int64_t *limbs);
/* One value from the three summed limbs l [3]: *v = l[0] + l[1] * 2^42 + l[2] * 2^84 exactly;
 * returns 1, or 0 (*v untouched) when that total is outside [-2^127, 2^127). Exact for any
 * int64 limbs (no false overflow when the top limb alone would be out of range). */
int e8q_xsum_limbs_join(const int64_t l[3], __int128 *v);
/* v [n] from summed limbs [n][3]; a total outside 128 bits is fatal (accumulator overflow) */
void e8q_xsum_from_limbs(const int64_t *limbs, size_t n, __int128 *v);

#ifdef __cplusplus
}
#endif
#endif
