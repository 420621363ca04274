/* common/comm_nccl.h: the NCCL backend of e8q_comm (internal to common/comm.c).
 * Compiled only with E8Q_HAVE_CUDA; every call is on the backend's private stream and
 * synchronises it before returning. Buffers are device pointers. */
#ifndef E8Q_COMMON_COMM_NCCL_H
#define E8Q_COMMON_COMM_NCCL_H

#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

typedef struct e8q_nccl e8q_nccl;

/* collective over comm: rank 0 creates the unique id, MPI broadcasts it */
e8q_nccl *e8q_nccl_open(MPI_Comm comm, int cuda_device);
void e8q_nccl_close(e8q_nccl *g);
void *e8q_nccl_stream(e8q_nccl *g);
int e8q_nccl_device(const e8q_nccl *g); /* the CUDA device it was opened on */
/* reduction operations of e8q_nccl_allreduce (comm.c maps them to MPI_SUM / MPI_MAX on host) */
enum { E8Q_NCCL_SUM = 0, E8Q_NCCL_MAX = 1 };
/* dt: 0 f32, 1 f64, 2 i64, 3 i32 (e8q_comm_type); op: E8Q_NCCL_SUM or E8Q_NCCL_MAX */
void e8q_nccl_allreduce(e8q_nccl *g, int dt, int op, void *buf, size_t n);
/* in place on HOST memory: host[i] = sum over ranks of host[i] (int64); host: [n]. Staged
 * through one device buffer of at most E8Q_NCCL_STAGE elements, segment by segment. */
#define E8Q_NCCL_STAGE ((size_t)1 << 24)
void e8q_nccl_allreduce_i64_host(e8q_nccl *g, int64_t *host, size_t n);
void e8q_nccl_reduce_sum(e8q_nccl *g, int dt, void *buf, size_t n, int root);
void e8q_nccl_bcast(e8q_nccl *g, void *buf, size_t bytes, int root);
/* counts [size] in bytes; root < 0 means allgatherv */
void e8q_nccl_gatherv(e8q_nccl *g, const void *send, size_t send_bytes, void *recv,
                      const size_t *counts, int root);
void e8q_nccl_send(e8q_nccl *g, const void *buf, size_t bytes, int peer);
void e8q_nccl_recv(e8q_nccl *g, void *buf, size_t bytes, int peer);

#endif
