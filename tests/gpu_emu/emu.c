/* The CPU stand-in for the CUDA runtime, cuDNN and cuBLAS (emu.h), the device
 * queries (cuda_device.c's functions) and the convolutions (cudnn_conv.c's
 * functions), for tests/test_gpu_emulated; the arithmetic is dnn_ref.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnn_ref.h"
#include "gpu/cuda_plan.h"
#include "mfres/core.h"

/* ---- runtime ---- */

struct emu_stream { int unused; };
struct emu_cudnn { int unused; };
struct emu_cublas { int unused; };

const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = calloc(1, sizeof **s);
    return *s ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) { free(s); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return s ? cudaSuccess : cudaErrorInvalidValue; }
/* Device memory is filled with a NaN pattern, as a GPU's is not zeroed: a read
 * of memory the plan never wrote shows up in the results. */
cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    (void)kind;
    memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    if (!s) return cudaErrorInvalidValue;
    return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    if (!s) return cudaErrorInvalidValue;
    memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    (void)s, (void)mode;
    return cudaErrorNotSupported;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    (void)s, (void)g;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    (void)e, (void)g, (void)flags;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    (void)e, (void)s;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) { (void)g; return cudaSuccess; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { (void)e; return cudaSuccess; }

cudnnStatus_t cudnnCreate(cudnnHandle_t *h) { *h = calloc(1, sizeof **h); return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) { free(h); return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) { return h && s ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_SUPPORTED; }

cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = calloc(1, sizeof **h); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { free(h); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { return h && s ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) { (void)h, (void)m; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    (void)h;
    return ws && bytes ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    (void)h;
    return dnn_ref_sgemm(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc)
               ? CUBLAS_STATUS_INVALID_VALUE
               : CUBLAS_STATUS_SUCCESS;
}

/* cuda_device.c's functions: tests/gpu_emu/device_emu.c. */

/* ---- cudnn_conv.c's functions: NHWC maps, KRSC weights, groups ---- */


static dnn_ref_conv ref_of(const gpu_conv *c) {
    return (dnn_ref_conv){c->N, c->C, c->H, c->W, c->K, c->R, c->stride, c->pad, c->groups, c->OH, c->OW, c->dt == GK_BF16};
}

int gpu_conv_forward(const gpu_conv *c, cudnnHandle_t h, void *y, const void *x, const void *w, void *ws,
                     size_t ws_bytes) {
    (void)h;
    if (!ws || ws_bytes < c->workspace) return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: workspace too small");
    dnn_ref_conv r = ref_of(c);
    dnn_ref_conv_forward(&r, y, x, w);
    return MFRES_OK;
}

int gpu_conv_backward_data(const gpu_conv *c, cudnnHandle_t h, void *dx, const void *dy, const void *w, void *ws,
                           size_t ws_bytes) {
    (void)h;
    if (!c->need_bwd_data) return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: no backward-data algorithm chosen");
    if (!ws || ws_bytes < c->workspace) return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: workspace too small");
    dnn_ref_conv r = ref_of(c);
    dnn_ref_conv_backward_data(&r, dx, dy, w);
    return MFRES_OK;
}

int gpu_conv_backward_weights(const gpu_conv *c, cudnnHandle_t h, void *dw, const void *x, const void *dy,
                              void *ws, size_t ws_bytes) {
    (void)h;
    if (!ws || ws_bytes < c->workspace) return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: workspace too small");
    dnn_ref_conv r = ref_of(c);
    dnn_ref_conv_backward_weights(&r, dw, x, dy);
    return MFRES_OK;
}
