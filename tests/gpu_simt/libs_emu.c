/* The CUDA libraries under the SIMT emulator (tests/test_gpu_model_simt): the
 * GPU plan (src/gpu/cuda_plan.c and the block files) with our real kernels
 * (kernels.cu, run by emu_rt.cpp) and CUDA graphs captured and replayed, on
 * the CPU. cuDNN's convolutions and cuBLAS's sgemm are dnn_ref.c's loops,
 * enqueued as one-thread launches so that a capture records them; the device
 * queries say "an emulated GPU". */
#include <stdio.h>
#include <string.h>

#include "../gpu_emu/dnn_ref.h"
#include "gpu/cuda_plan.h"
#include "mfres/core.h"

void emu_launch_c(cudaStream_t s, const char *name, void (*fn)(void *), const void *arg, size_t bytes);

/* cuda_device.c's functions: tests/gpu_emu/device_emu.c. */

/* ---- handles ---- */

static int handle_token;
cudnnStatus_t cudnnCreate(cudnnHandle_t *h) {
    *h = (cudnnHandle_t)&handle_token;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
    (void)h;
    return CUDNN_STATUS_SUCCESS;
}
static cudaStream_t cudnn_stream, cublas_stream;
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
    (void)h;
    cudnn_stream = s;
    return CUDNN_STATUS_SUCCESS;
}
cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)&handle_token;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    (void)h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    (void)h;
    cublas_stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    (void)h, (void)m;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    (void)h;
    return ws && bytes ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

/* ---- cuBLAS's sgemm, enqueued ---- */

typedef struct gemm_args {
    int ta, tb, m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gemm_args;

static void run_gemm(void *p) {
    const gemm_args *a = p;
    dnn_ref_sgemm(a->ta, a->tb, a->m, a->n, a->k, a->alpha, a->A, a->lda, a->B, a->ldb, a->beta, a->C, a->ldc);
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    (void)h;
    gemm_args a = {ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, lda, ldb, ldc, *alpha, *beta, A, B, C};
    if (ldc < m || lda < (a.ta ? k : m) || ldb < (a.tb ? n : k)) return CUBLAS_STATUS_INVALID_VALUE;
    emu_launch_c(cublas_stream, "cublasSgemm", run_gemm, &a, sizeof a);
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cudnn_conv.c's functions, enqueued ---- */

typedef struct conv_args {
    dnn_ref_conv c;
    int pass;
    void *out;
    const void *a, *b;
} conv_args;

static void run_conv(void *p) {
    const conv_args *a = p;
    if (a->pass == 0) dnn_ref_conv_forward(&a->c, a->out, a->a, a->b);
    else if (a->pass == 1) dnn_ref_conv_backward_data(&a->c, a->out, a->a, a->b);
    else dnn_ref_conv_backward_weights(&a->c, a->out, a->a, a->b);
}

static int enqueue(const gpu_conv *c, int pass, void *out, const void *a, const void *b, const void *ws,
                   size_t ws_bytes) {
    if (!ws || ws_bytes < c->workspace) return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: workspace too small");
    if (pass == 1 && !c->need_bwd_data) return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: no backward-data algorithm");
    conv_args args = {{c->N, c->C, c->H, c->W, c->K, c->R, c->stride, c->pad, c->groups, c->OH, c->OW, c->dt == GK_BF16},
                      pass, out, a, b};
    emu_launch_c(cudnn_stream, "cudnnConvolution", run_conv, &args, sizeof args);
    return MFRES_OK;
}

int gpu_conv_forward(const gpu_conv *c, cudnnHandle_t h, void *y, const void *x, const void *w, void *ws,
                     size_t ws_bytes) {
    (void)h;
    return enqueue(c, 0, y, x, w, ws, ws_bytes);
}
int gpu_conv_backward_data(const gpu_conv *c, cudnnHandle_t h, void *dx, const void *dy, const void *w, void *ws,
                           size_t ws_bytes) {
    (void)h;
    return enqueue(c, 1, dx, dy, w, ws, ws_bytes);
}
int gpu_conv_backward_weights(const gpu_conv *c, cudnnHandle_t h, void *dw, const void *x, const void *dy,
                              void *ws, size_t ws_bytes) {
    (void)h;
    return enqueue(c, 2, dw, x, dy, ws, ws_bytes);
}
