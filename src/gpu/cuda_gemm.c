/* The GPU's dense-GEMM rate at a precision: the yardstick for "fraction of
 * peak" on the GPU, as cblas_sgemm's is on the CPU (mfres bench --gemm). It
 * times cuBLAS on square matrices, in the arithmetic each --precision means:
 * fp32 float32 with pedantic math (no TF32), tf32 float32 on TF32 tensor
 * cores, bf16 bfloat16 inputs and outputs with float32 sums. */
#include <stdio.h>

#include "gpu/cuda_plan.h"
#include "mfres/core.h"

/* One n x n x n product, C = A B. */
static int gemm_once(cublasHandle_t h, mfres_precision p, int n, const void *a, const void *b, void *c) {
    const float one = 1.0f, zero = 0.0f;
    if (p == MFRES_PRECISION_FP32)
        CUBLAS_TRY(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n));
    else if (p == MFRES_PRECISION_TF32)
        CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_32F, n, b, CUDA_R_32F, n, &zero,
                                c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    else
        CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &zero,
                                c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return MFRES_OK;
}

typedef struct gemm_state {
    cublasHandle_t cublas;
    cudaStream_t stream;
    cudaEvent_t start, stop;
    void *a, *b, *c;
} gemm_state;

static int time_gemm(gemm_state *s, mfres_precision p, int n, int reps, double *flops_per_s) {
    size_t bytes = (size_t)n * n * (p == MFRES_PRECISION_BF16 ? 2 : 4);
    CUDA_TRY(cudaMalloc(&s->a, bytes));
    CUDA_TRY(cudaMalloc(&s->b, bytes));
    CUDA_TRY(cudaMalloc(&s->c, bytes));
    /* Not zeros: a GPU multiplying zeros draws less power and may clock higher.
     * 0x3c in every byte is 0.0115 as float, 0.0115 as bfloat16. */
    CUDA_TRY(cudaMemsetAsync(s->a, 0x3c, bytes, s->stream));
    CUDA_TRY(cudaMemsetAsync(s->b, 0x3c, bytes, s->stream));
    int rc;
    for (int i = 0; i < 2; i++) /* warm-up: cuBLAS picks and loads its kernel */
        if ((rc = gemm_once(s->cublas, p, n, s->a, s->b, s->c))) return rc;
    CUDA_TRY(cudaEventRecord(s->start, s->stream));
    for (int i = 0; i < reps; i++)
        if ((rc = gemm_once(s->cublas, p, n, s->a, s->b, s->c))) return rc;
    CUDA_TRY(cudaEventRecord(s->stop, s->stream));
    CUDA_TRY(cudaEventSynchronize(s->stop));
    float ms = 0;
    CUDA_TRY(cudaEventElapsedTime(&ms, s->start, s->stop));
    *flops_per_s = 2.0 * n * (double)n * n * reps / (ms / 1e3);
    cudaFree(s->a), cudaFree(s->b), cudaFree(s->c);
    s->a = s->b = s->c = NULL;
    return MFRES_OK;
}

int gpu_gemm_peak(mfres_precision p, int n, double *flops_per_s) {
    *flops_per_s = 0;
    int rc = gpu_check(p);
    if (rc) return rc;
    gemm_state s = {0};
    if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreate(&s.start) != cudaSuccess || cudaEventCreate(&s.stop) != cudaSuccess)
        rc = mfres_fail(MFRES_EBACKEND, "--gemm: cannot set up CUDA streams and events");
    if (!rc && cublasCreate(&s.cublas) != CUBLAS_STATUS_SUCCESS)
        rc = mfres_fail(MFRES_EBACKEND, "--gemm: cannot create a cuBLAS handle");
    if (!rc && (cublasSetStream(s.cublas, s.stream) != CUBLAS_STATUS_SUCCESS ||
                cublasSetMathMode(s.cublas, p == MFRES_PRECISION_FP32 ? CUBLAS_PEDANTIC_MATH
                                                                       : CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS))
        rc = mfres_fail(MFRES_EBACKEND, "--gemm: cannot configure cuBLAS");
    /* About a second of work at the H200's rates, a tenth of it warm-up. */
    int reps = p == MFRES_PRECISION_FP32 ? 10 : 40;
    if (!rc) rc = time_gemm(&s, p, n, reps, flops_per_s);
    if (s.a) cudaFree(s.a);
    if (s.b) cudaFree(s.b);
    if (s.c) cudaFree(s.c);
    if (s.cublas) cublasDestroy(s.cublas);
    if (s.start) cudaEventDestroy(s.start);
    if (s.stop) cudaEventDestroy(s.stop);
    if (s.stream) cudaStreamDestroy(s.stream);
    return rc;
}
