/* Is there a GPU, and what it is: the checks --device cuda makes before any
 * work, so that a machine without a GPU (or without a driver) gets a sentence,
 * not a crash. The CUDA runtime loads the driver lazily: on such a machine
 * cudaGetDeviceCount fails cleanly with cudaErrorNoDevice or
 * cudaErrorInsufficientDriver. */
#include <stdio.h>

#include "gpu/cuda_plan.h"
#include "mfres/core.h"

bool gpu_built(void) { return true; }

int cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    return mfres_fail(MFRES_EBACKEND, "CUDA: %s (%s at %s:%d)", cudaGetErrorString(e), call, file, line);
}

int cublas_fail(cublasStatus_t s, const char *call, const char *file, int line) {
    return mfres_fail(MFRES_EBACKEND, "cuBLAS: %s (%s at %s:%d)", cublasGetStatusString(s), call, file, line);
}

int gpu_check(mfres_precision p) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver) { /* also what a machine with no driver at all reports */
        int runtime = 0;
        cudaRuntimeGetVersion(&runtime);
        return mfres_fail(MFRES_EBACKEND, "--device cuda: no CUDA GPU can be used here: no NVIDIA driver is loaded, or "
                          "it is older than this build's CUDA %d.%d runtime needs. HINT: run on a machine with an "
                          "NVIDIA GPU and a current driver, or use --device cpu", runtime / 1000, runtime % 1000 / 10);
    }
    if (e != cudaSuccess || n == 0)
        return mfres_fail(MFRES_EBACKEND, "--device cuda: no CUDA GPU found (%s). HINT: run on a machine with an "
                          "NVIDIA GPU and driver, or use --device cpu",
                          e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists no devices");
    struct cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) return cuda_fail(e, "cudaGetDeviceProperties", __FILE__, __LINE__);
    if (prop.major < 7)
        return mfres_fail(MFRES_EBACKEND, "--device cuda: %s has compute capability %d.%d; mfres needs 7.0 or later",
                          prop.name, prop.major, prop.minor);
    /* TF32 and bfloat16 tensor cores came with Ampere. */
    if (p != MFRES_PRECISION_FP32 && prop.major < 8)
        return mfres_fail(MFRES_EINVAL, "--precision %s needs compute capability 8.0 (Ampere) or later; %s has %d.%d",
                          p == MFRES_PRECISION_TF32 ? "tf32" : "bf16", prop.name, prop.major, prop.minor);
    return MFRES_OK;
}

void gpu_describe(char *buf, size_t cap) {
    int n = 0, driver = 0, runtime = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(buf, cap, "no CUDA GPU (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "no devices");
        return;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        snprintf(buf, cap, "CUDA GPU 0 (properties unavailable)");
        return;
    }
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    size_t cudnn = cudnnGetVersion();
    int cublas = 0;
    cublasGetProperty(MAJOR_VERSION, &cublas);
    snprintf(buf, cap, "%s, compute %d.%d, %.0f GiB, %d SMs; driver CUDA %d.%d, runtime %d.%d, cuDNN %zu.%zu.%zu, "
             "cuBLAS %d",
             prop.name, prop.major, prop.minor, prop.totalGlobalMem / 1073741824.0, prop.multiProcessorCount,
             driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10, cudnn / 10000, cudnn / 100 % 100,
             cudnn % 100, cublas);
}
