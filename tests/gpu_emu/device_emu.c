/* cuda_device.c's functions for both CPU emulations of the GPU (emu.c's
 * stand-in and tests/gpu_simt): a GPU is always there, runs fp32 and bf16
 * (tf32 has no emulation: its rounding is the tensor cores'), and CUDA's
 * errors become messages as on the real backend. Compiles against either the
 * stand-in's headers or CUDA's. */
#include <stdio.h>

#include "gpu/cuda_plan.h"
#include "mfres/core.h"

bool gpu_built(void) { return true; }
int gpu_check(mfres_precision p) {
    if (p == MFRES_PRECISION_TF32) return mfres_fail(MFRES_EINVAL, "the emulated GPU runs fp32 and bf16 only");
    return MFRES_OK;
}
void gpu_describe(char *buf, size_t cap) { snprintf(buf, cap, "emulated GPU (on the CPU; tests only)"); }
int cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    return mfres_fail(MFRES_EBACKEND, "CUDA: %s (%s at %s:%d)", cudaGetErrorString(e), call, file, line);
}
int cublas_fail(cublasStatus_t s, const char *call, const char *file, int line) {
    return mfres_fail(MFRES_EBACKEND, "cuBLAS: status %d (%s at %s:%d)", (int)s, call, file, line);
}
int cudnn_fail(cudnnStatus_t s, const char *call, const char *file, int line) {
    return mfres_fail(MFRES_EBACKEND, "cuDNN: status %d (%s at %s:%d)", (int)s, call, file, line);
}
