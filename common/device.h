/* common/device.h: the device each rank computes on (--device auto|cpu|cuda; DESIGN §5).
 *
 *   e8q_device dev;
 *   e8q_device_select(&dev, e8q_device_parse("--device", value), "eval");   // collective
 *   ... dev.cuda >= 0: this rank's CUDA device; e8q_comm_get() then also takes device buffers
 *
 * cuda: rank r takes CUDA device (r's index among the ranks of its node) mod (the devices it
 *       sees); under Slurm's --gpus-per-task or a per-rank CUDA_VISIBLE_DEVICES a rank sees only
 *       its own, which is then device 0. A rank that sees none is fatal at once, naming the rank
 *       and CUDA's reason.
 * auto: cuda when every rank sees a device, else the CPU on every rank (NCCL needs all of them),
 *       with one line saying why.
 * cpu:  no CUDA call at all.
 * Rank 0 prints the choice in one line. With a CUDA device per rank the process communicator
 * opens NCCL on it (e8q_comm_device_open), so device-buffer collectives and the exact sums go
 * through NCCL; when a node runs more ranks than the devices they see, the ranks share devices
 * for compute and their collectives stay on MPI (NCCL refuses two ranks on one GPU), said in
 * the same line. */
#ifndef E8Q_COMMON_DEVICE_H
#define E8Q_COMMON_DEVICE_H

typedef enum { E8Q_DEVICE_AUTO = 0, E8Q_DEVICE_CPU = 1, E8Q_DEVICE_CUDA = 2 } e8q_device_mode;

typedef struct {
  e8q_device_mode asked; /* the option as given */
  int cuda;              /* this rank's CUDA device index, -1 on the CPU */
  char name[160];        /* what runs: "cpu", or "cuda:0 (NVIDIA H200)" (rank 0's in the manifest) */
} e8q_device;

/* "auto", "cpu", "cuda" -> mode; anything else fatal naming the option and the choices */
e8q_device_mode e8q_device_parse(const char *opt, const char *v);
const char *e8q_device_mode_name(e8q_device_mode m);
/* Collective over the process communicator (see above); cmd names the command in messages. */
void e8q_device_select(e8q_device *d, e8q_device_mode mode, const char *cmd);
/* this process's CUDA device from its last e8q_device_select, -1 for the CPU (or before any):
 * for code below the commands that picks a device path itself (worker/cholesky_gpu.c) */
int e8q_device_cuda(void);

#endif
