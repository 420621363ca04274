/* common/cuda_util.h: CUDA presence checks that work in every build.
 * Without CUDA support compiled in, or without a driver/device at run time, the functions
 * return 0 / NULL cleanly (no error): GPU tests use them to skip with a clear message. */
#ifndef E8Q_COMMON_CUDA_UTIL_H
#define E8Q_COMMON_CUDA_UTIL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* number of usable CUDA devices; 0 when built without CUDA or when cudaGetDeviceCount fails
 * (no driver, no device, driver too old) */
int e8q_cuda_device_count(void);
/* why there is no device: a static string ("built without CUDA", the CUDA error text,
 * "0 devices"), or NULL when at least one device is usable */
const char *e8q_cuda_unavailable_reason(void);
/* the device's name ("NVIDIA H200") into buf [n]; "?" when it cannot be read */
void e8q_cuda_device_name(int device, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
