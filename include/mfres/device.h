/* Where a model runs: the CPU (oneDNN, always built) or a CUDA GPU (cuDNN and
 * cuBLAS; built when the Makefile finds nvcc, see docs/GPU.md).
 *
 * A build without the CUDA backend, or a machine without a usable GPU,
 * answers mfres_device_check(MFRES_DEVICE_CUDA, ...) with MFRES_EBACKEND and a
 * message that says which; the command-line program turns that into exit 2. */
#ifndef MFRES_DEVICE_H
#define MFRES_DEVICE_H

#include <stdbool.h>
#include <stddef.h>

/* Append-only: stored in no file (run configurations store the names). */
typedef enum { MFRES_DEVICE_CPU = 0, MFRES_DEVICE_CUDA = 1 } mfres_device;
/* fp32: exact float32 everywhere (tests use this).
 * tf32: convolutions and the classifier on TF32 tensor cores, the rest fp32.
 * bf16: convolutions and activations in bfloat16; batch norm, loss, tau and
 *       the master weights in float32. The CPU runs fp32 only. */
typedef enum { MFRES_PRECISION_FP32 = 0, MFRES_PRECISION_TF32 = 1, MFRES_PRECISION_BF16 = 2 } mfres_precision;

const char *mfres_device_name(mfres_device d);
const char *mfres_precision_name(mfres_precision p);
/* "cpu" | "cuda" -> *d; "fp32" | "tf32" | "bf16" -> *p. MFRES_EINVAL with a
 * message naming the valid values otherwise. */
int mfres_device_parse(const char *s, mfres_device *d);
int mfres_precision_parse(const char *s, mfres_precision *p);

/* Whether this build has the CUDA backend at all. */
bool mfres_cuda_built(void);
/* MFRES_OK when a model can run on device d at precision p here; otherwise an
 * error whose message (mfres_last_error) says why: the build has no CUDA
 * backend, no GPU or driver was found (with CUDA's own words), the precision
 * is not supported on that device or this GPU. */
int mfres_device_check(mfres_device d, mfres_precision p);
/* One line describing the device ("NVIDIA H200, compute 9.0, 139 GiB, driver
 * 13.0, cuDNN 9.19.0, cuBLAS 13.0" or the CPU's); buf is always terminated. */
void mfres_device_describe(mfres_device d, char *buf, size_t cap);

#endif
