/* common/comm_nccl.c: NCCL backend of e8q_comm for device buffers (built with E8Q_HAVE_CUDA).
 * The NCCL unique id is created on rank 0 and broadcast over MPI (host bytes only). */
#ifdef E8Q_HAVE_CUDA
#include "common/comm_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>

#include "common/error.h"

struct e8q_nccl {
  ncclComm_t comm;
  cudaStream_t stream;
  int rank, size, device;
};

#define CUDA_OK(call)                                                                     \
  do {                                                                                    \
    cudaError_t e8q_ce_ = (call);                                                         \
    E8Q_CHECK(e8q_ce_ == cudaSuccess, "CUDA call %s failed: %s", #call,                  \
              cudaGetErrorString(e8q_ce_));                                               \
  } while (0)
#define NCCL_OK(call)                                                                     \
  do {                                                                                    \
    ncclResult_t e8q_nr_ = (call);                                                        \
    E8Q_CHECK(e8q_nr_ == ncclSuccess, "NCCL call %s failed: %s", #call,                  \
              ncclGetErrorString(e8q_nr_));                                               \
  } while (0)

e8q_nccl *e8q_nccl_open(MPI_Comm comm, int cuda_device) {
  int ndev = 0;
  cudaError_t ce = cudaGetDeviceCount(&ndev);
  E8Q_CHECK(ce == cudaSuccess && ndev > 0,
            "NCCL communicator: CUDA device %d requested but no CUDA device is usable (%s); "
            "run on a GPU node or create a host-only communicator (device -1)",
            cuda_device, ce == cudaSuccess ? "0 devices" : cudaGetErrorString(ce));
  E8Q_CHECK(cuda_device < ndev, "NCCL communicator: CUDA device %d requested, %d present", cuda_device, ndev);
  e8q_nccl *g = e8q_calloc(1, sizeof *g, "NCCL communicator");
  E8Q_CHECK_MPI(MPI_Comm_rank(comm, &g->rank));
  E8Q_CHECK_MPI(MPI_Comm_size(comm, &g->size));
  g->device = cuda_device;
  CUDA_OK(cudaSetDevice(cuda_device));
  CUDA_OK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
  ncclUniqueId id;
  if (g->rank == 0) NCCL_OK(ncclGetUniqueId(&id));
  E8Q_CHECK_MPI(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, comm));
  NCCL_OK(ncclCommInitRank(&g->comm, g->size, id, g->rank));
  return g;
}

void e8q_nccl_close(e8q_nccl *g) {
  if (!g) return;
  ncclCommDestroy(g->comm);
  cudaStreamDestroy(g->stream);
  free(g);
}

void *e8q_nccl_stream(e8q_nccl *g) { return (void *)g->stream; }
int e8q_nccl_device(const e8q_nccl *g) { return g->device; }

static ncclDataType_t nccl_dt(int dt) {
  switch (dt) {
    case 0: return ncclFloat32;
    case 1: return ncclFloat64;
    case 2: return ncclInt64;
    case 3: return ncclInt32;
  }
  E8Q_FATAL("NCCL communicator: unknown dtype %d", dt);
}

static void sync_stream(e8q_nccl *g) { CUDA_OK(cudaStreamSynchronize(g->stream)); }

void e8q_nccl_allreduce(e8q_nccl *g, int dt, int op, void *buf, size_t n) {
  CUDA_OK(cudaSetDevice(g->device));
  NCCL_OK(ncclAllReduce(buf, buf, n, nccl_dt(dt), op == E8Q_NCCL_MAX ? ncclMax : ncclSum, g->comm, g->stream));
  sync_stream(g);
}

/* host [n] int64 -> device stage [<= E8Q_NCCL_STAGE] -> int64 sum all-reduce -> back to host,
 * one segment at a time; the copies run on the backend's stream, synchronised per segment */
void e8q_nccl_allreduce_i64_host(e8q_nccl *g, int64_t *host, size_t n) {
  if (n == 0) return;
  CUDA_OK(cudaSetDevice(g->device));
  const size_t cap = n < E8Q_NCCL_STAGE ? n : E8Q_NCCL_STAGE;
  int64_t *stage = NULL; /* [cap] on the device */
  cudaError_t ce = cudaMalloc((void **)&stage, cap * sizeof(int64_t));
  E8Q_CHECK(ce == cudaSuccess, "NCCL communicator: cannot allocate %zu bytes of device memory to stage an "
            "int64 all-reduce of %zu values (%s)", cap * sizeof(int64_t), n, cudaGetErrorString(ce));
  for (size_t off = 0; off < n; off += cap) {
    const size_t k = n - off < cap ? n - off : cap, bytes = k * sizeof(int64_t);
    CUDA_OK(cudaMemcpyAsync(stage, host + off, bytes, cudaMemcpyHostToDevice, g->stream));
    e8q_nccl_allreduce(g, 2 /* int64 */, E8Q_NCCL_SUM, stage, k); /* same stream, synchronised */
    CUDA_OK(cudaMemcpyAsync(host + off, stage, bytes, cudaMemcpyDeviceToHost, g->stream));
    sync_stream(g);
  }
  CUDA_OK(cudaFree(stage));
}

void e8q_nccl_reduce_sum(e8q_nccl *g, int dt, void *buf, size_t n, int root) {
  CUDA_OK(cudaSetDevice(g->device));
  NCCL_OK(ncclReduce(buf, buf, n, nccl_dt(dt), ncclSum, root, g->comm, g->stream));
  sync_stream(g);
}

void e8q_nccl_bcast(e8q_nccl *g, void *buf, size_t bytes, int root) {
  CUDA_OK(cudaSetDevice(g->device));
  NCCL_OK(ncclBroadcast(buf, buf, bytes, ncclUint8, root, g->comm, g->stream));
  sync_stream(g);
}

/* gatherv as grouped point-to-point; allgatherv (root < 0) as one broadcast per rank */
void e8q_nccl_gatherv(e8q_nccl *g, const void *send, size_t send_bytes, void *recv,
                      const size_t *counts, int root) {
  CUDA_OK(cudaSetDevice(g->device));
  size_t off = 0;
  NCCL_OK(ncclGroupStart());
  for (int r = 0; r < g->size; r++) {
    char *dst = (char *)recv + off;
    if (root < 0) {
      NCCL_OK(ncclBroadcast(r == g->rank ? send : dst, dst, counts[r], ncclUint8, r, g->comm, g->stream));
    } else if (g->rank == root) {
      if (r == root) {
        if (send_bytes)
          CUDA_OK(cudaMemcpyAsync(dst, send, send_bytes, cudaMemcpyDeviceToDevice, g->stream));
      } else if (counts[r]) {
        NCCL_OK(ncclRecv(dst, counts[r], ncclUint8, r, g->comm, g->stream));
      }
    }
    off += counts[r];
  }
  if (root >= 0 && g->rank != root && send_bytes)
    NCCL_OK(ncclSend(send, send_bytes, ncclUint8, root, g->comm, g->stream));
  NCCL_OK(ncclGroupEnd());
  sync_stream(g);
}

void e8q_nccl_send(e8q_nccl *g, const void *buf, size_t bytes, int peer) {
  CUDA_OK(cudaSetDevice(g->device));
  NCCL_OK(ncclSend(buf, bytes, ncclUint8, peer, g->comm, g->stream));
  sync_stream(g);
}

void e8q_nccl_recv(e8q_nccl *g, void *buf, size_t bytes, int peer) {
  CUDA_OK(cudaSetDevice(g->device));
  NCCL_OK(ncclRecv(buf, bytes, ncclUint8, peer, g->comm, g->stream));
  sync_stream(g);
}
#else
/* built without CUDA: this translation unit is intentionally empty */
typedef int e8q_comm_nccl_unused;
#endif
