/* common/device.c: which device a rank computes on (common/device.h). */
#include "common/device.h"

#include <stdio.h>
#include <string.h>

#include "common/comm.h"
#include "common/cuda_util.h"
#include "common/error.h"
#include "common/log.h"

static int g_cuda = -1; /* the process's device (e8q_device_cuda) */

int e8q_device_cuda(void) { return g_cuda; }

e8q_device_mode e8q_device_parse(const char *opt, const char *v) {
  if (!strcmp(v, "auto")) return E8Q_DEVICE_AUTO;
  if (!strcmp(v, "cpu")) return E8Q_DEVICE_CPU;
  if (!strcmp(v, "cuda")) return E8Q_DEVICE_CUDA;
  E8Q_FATAL("%s '%s': use auto (a CUDA device when every rank has one, else the CPU), cpu or cuda", opt, v);
}

const char *e8q_device_mode_name(e8q_device_mode m) {
  return m == E8Q_DEVICE_CPU ? "cpu" : m == E8Q_DEVICE_CUDA ? "cuda" : "auto";
}

void e8q_device_select(e8q_device *d, e8q_device_mode mode, const char *cmd) {
  memset(d, 0, sizeof *d);
  d->asked = mode;
  d->cuda = g_cuda = -1;
  snprintf(d->name, sizeof d->name, "cpu");
  e8q_comm *c = e8q_comm_get();
  const int rank = e8q_comm_rank(c), size = e8q_comm_size(c);
  if (mode == E8Q_DEVICE_CPU) {
    if (rank == 0) e8q_info("%s: device cpu (--device cpu), %d rank%s", cmd, size, size > 1 ? "s" : "");
    return;
  }
  const int ndev = e8q_cuda_device_count();
  const char *why = ndev > 0 ? NULL : e8q_cuda_unavailable_reason();
  if (mode == E8Q_DEVICE_CUDA)
    E8Q_CHECK(ndev > 0,
              "%s --device cuda: rank %d (node rank %d) sees no usable CUDA device (%s); run on GPU nodes "
              "(Slurm: --gpus-per-task=1), or give --device auto (falls back to the CPU) or --device cpu",
              cmd, rank, e8q_comm_node_rank(c), why ? why : "0 devices");
  /* auto: the first rank without a device, or -1 when every rank has one */
  int lacking = ndev > 0 ? -1 : rank;
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_I32, &lacking, 1);
  if (lacking >= 0) {
    if (rank == lacking && rank != 0) e8q_info("%s: --device auto: rank %d has no CUDA device (%s)", cmd, rank, why);
    if (rank == 0 && lacking == 0)
      e8q_info("%s: device cpu (--device auto: no CUDA device: %s), %d rank%s", cmd, why, size, size > 1 ? "s" : "");
    else if (rank == 0)
      e8q_info("%s: device cpu (--device auto: rank %d has no CUDA device and NCCL needs every rank), %d ranks", cmd,
               lacking, size);
    return;
  }
  d->cuda = e8q_comm_node_rank(c) % ndev;
  char dn[128];
  e8q_cuda_device_name(d->cuda, dn, sizeof dn);
  snprintf(d->name, sizeof d->name, "cuda:%d (%s)", d->cuda, dn);
  /* NCCL refuses two ranks of one communicator on one GPU: with more ranks on a node than the
   * devices they see, the ranks share devices for compute and their collectives stay on MPI */
  int shared = e8q_comm_node_rank(c) >= ndev;
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_I32, &shared, 1);
  if (!shared) e8q_comm_device_open(c, d->cuda);
  g_cuda = d->cuda;
  if (rank == 0)
    e8q_info("%s: device %s on rank 0 (--device %s), %d rank%s, %d device%s seen per rank%s", cmd, d->name,
             e8q_device_mode_name(mode), size, size > 1 ? "s" : "", ndev, ndev > 1 ? "s" : "",
             shared ? "; ranks share devices, so collectives stay on MPI (NCCL needs one GPU per rank)" : "");
}
