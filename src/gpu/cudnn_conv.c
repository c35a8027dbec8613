/* Every cuDNN call of mfres: convolution descriptors, the algorithm rule, and
 * the three passes. An API change in cuDNN stays in this file.
 *
 * Which API. cuDNN 9 keeps the legacy convolution API (cudnnConvolutionForward
 * and friends), deprecated in favour of the graph ("backend") API. We use the
 * legacy one, here only: it is one call per pass with a plain algorithm enum,
 * so the rule below can be stated and printed, and it needs no per-shape graph
 * build at start-up. Fusions, the graph API's advantage, are our own kernels'
 * job (kernels.cu: batch norm, residual and ReLU in one pass). Moving to the
 * graph API means rewriting this file alone.
 *
 * The algorithm rule, fixed and not timed, so that the same run gives the same
 * bits: for each pass, the first algorithm in cuDNN's heuristic ranking (the
 * _v7 Get functions, which consult a model of the GPU and never run anything)
 * that is deterministic, supported for the shape, and of the precision's math
 * type; failing that, the first of a fixed list that the library accepts.
 * cuDNN's non-deterministic algorithms (those with atomics: backward data
 * ALGO_0, backward filter ALGO_0 and ALGO_3) are never chosen, so every run is
 * deterministic; there is no faster non-deterministic mode. */
#include <stdio.h>
#include <string.h>

#include "gpu/cuda_plan.h"
#include "mfres/core.h"

static cudnnMathType_t math_of(mfres_precision p) {
    /* CUDNN_DEFAULT_MATH lets Ampere and later GPUs use TF32 for float
     * convolutions: fp32 must forbid it explicitly. bf16 data runs on the
     * tensor cores as it is, with float sums (the descriptor's compute type). */
    return p == MFRES_PRECISION_FP32   ? CUDNN_FMA_MATH
           : p == MFRES_PRECISION_BF16 ? CUDNN_TENSOR_OP_MATH
                                       : CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

static bool math_ok(cudnnMathType_t algo_math, mfres_precision p) {
    if (p == MFRES_PRECISION_FP32) return algo_math == CUDNN_FMA_MATH || algo_math == CUDNN_DEFAULT_MATH;
    return true;
}

int gpu_conv_init(gpu_conv *c, cudnnHandle_t h, const arch_conv *s, int N, mfres_precision p, bool need_bwd_data) {
    memset(c, 0, sizeof *c);
    c->N = N, c->C = s->C, c->H = s->H, c->W = s->W, c->K = s->K, c->R = s->R, c->stride = s->stride;
    c->pad = s->pad, c->groups = s->groups, c->OH = s->OH, c->OW = s->OW, c->need_bwd_data = need_bwd_data;
    c->dt = p == MFRES_PRECISION_BF16 ? GK_BF16 : GK_F32;
    /* Maps and weights in the data type; products summed in float always. */
    cudnnDataType_t data = c->dt == GK_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    CUDNN_TRY(cudnnCreateTensorDescriptor(&c->x_desc));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&c->y_desc));
    CUDNN_TRY(cudnnCreateFilterDescriptor(&c->w_desc));
    CUDNN_TRY(cudnnCreateConvolutionDescriptor(&c->conv_desc));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(c->x_desc, CUDNN_TENSOR_NHWC, data, N, c->C, c->H, c->W));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(c->y_desc, CUDNN_TENSOR_NHWC, data, N, c->K, c->OH, c->OW));
    CUDNN_TRY(cudnnSetFilter4dDescriptor(c->w_desc, data, CUDNN_TENSOR_NHWC, c->K, c->C / c->groups,
                                         c->R, c->R));
    CUDNN_TRY(cudnnSetConvolution2dDescriptor(c->conv_desc, c->pad, c->pad, c->stride, c->stride, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_TRY(cudnnSetConvolutionGroupCount(c->conv_desc, c->groups));
    CUDNN_TRY(cudnnSetConvolutionMathType(c->conv_desc, math_of(p)));
    int oN, oC, oH, oW;
    CUDNN_TRY(cudnnGetConvolution2dForwardOutputDim(c->conv_desc, c->x_desc, c->w_desc, &oN, &oC, &oH, &oW));
    if (oN != N || oC != c->K || oH != c->OH || oW != c->OW)
        return mfres_fail(MFRES_EBACKEND, "cuDNN computes a %dx%dx%dx%d output for a convolution the architecture "
                          "says is %dx%dx%dx%d", oN, oC, oH, oW, N, c->K, c->OH, c->OW);

    enum { MAX_ALGOS = 16 };
    size_t ws = 0, best = 0;
    int n = 0;
    bool found = false;

    cudnnConvolutionFwdAlgoPerf_t fp[MAX_ALGOS];
    CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(h, c->x_desc, c->w_desc, c->conv_desc, c->y_desc, MAX_ALGOS,
                                                     &n, fp));
    for (int i = 0; i < n && !found; i++)
        if (fp[i].status == CUDNN_STATUS_SUCCESS && fp[i].determinism == CUDNN_DETERMINISTIC &&
            math_ok(fp[i].mathType, p) &&
            cudnnGetConvolutionForwardWorkspaceSize(h, c->x_desc, c->w_desc, c->conv_desc, c->y_desc, fp[i].algo,
                                                    &ws) == CUDNN_STATUS_SUCCESS)
            c->fwd = fp[i].algo, best = ws > best ? ws : best, found = true;
    static const cudnnConvolutionFwdAlgo_t fwd_list[] = {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                                         CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                                         CUDNN_CONVOLUTION_FWD_ALGO_GEMM};
    for (size_t i = 0; i < sizeof fwd_list / sizeof *fwd_list && !found; i++)
        if (cudnnGetConvolutionForwardWorkspaceSize(h, c->x_desc, c->w_desc, c->conv_desc, c->y_desc, fwd_list[i],
                                                    &ws) == CUDNN_STATUS_SUCCESS)
            c->fwd = fwd_list[i], best = ws > best ? ws : best, found = true;
    if (!found) goto unsupported;

    found = false;
    cudnnConvolutionBwdFilterAlgoPerf_t wp[MAX_ALGOS];
    CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, c->x_desc, c->y_desc, c->conv_desc, c->w_desc,
                                                            MAX_ALGOS, &n, wp));
    for (int i = 0; i < n && !found; i++)
        if (wp[i].status == CUDNN_STATUS_SUCCESS && wp[i].determinism == CUDNN_DETERMINISTIC &&
            math_ok(wp[i].mathType, p) &&
            cudnnGetConvolutionBackwardFilterWorkspaceSize(h, c->x_desc, c->y_desc, c->conv_desc, c->w_desc,
                                                           wp[i].algo, &ws) == CUDNN_STATUS_SUCCESS)
            c->bwd_filter = wp[i].algo, best = ws > best ? ws : best, found = true;
    static const cudnnConvolutionBwdFilterAlgo_t filter_list[] = {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                                                                  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
                                                                  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING};
    for (size_t i = 0; i < sizeof filter_list / sizeof *filter_list && !found; i++)
        if (cudnnGetConvolutionBackwardFilterWorkspaceSize(h, c->x_desc, c->y_desc, c->conv_desc, c->w_desc,
                                                           filter_list[i], &ws) == CUDNN_STATUS_SUCCESS)
            c->bwd_filter = filter_list[i], best = ws > best ? ws : best, found = true;
    if (!found) goto unsupported;

    if (need_bwd_data) {
        found = false;
        cudnnConvolutionBwdDataAlgoPerf_t dp[MAX_ALGOS];
        CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, c->w_desc, c->y_desc, c->conv_desc, c->x_desc,
                                                              MAX_ALGOS, &n, dp));
        for (int i = 0; i < n && !found; i++)
            if (dp[i].status == CUDNN_STATUS_SUCCESS && dp[i].determinism == CUDNN_DETERMINISTIC &&
                math_ok(dp[i].mathType, p) &&
                cudnnGetConvolutionBackwardDataWorkspaceSize(h, c->w_desc, c->y_desc, c->conv_desc, c->x_desc,
                                                             dp[i].algo, &ws) == CUDNN_STATUS_SUCCESS)
                c->bwd_data = dp[i].algo, best = ws > best ? ws : best, found = true;
        static const cudnnConvolutionBwdDataAlgo_t data_list[] = {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                                                                  CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
                                                                  CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING};
        for (size_t i = 0; i < sizeof data_list / sizeof *data_list && !found; i++)
            if (cudnnGetConvolutionBackwardDataWorkspaceSize(h, c->w_desc, c->y_desc, c->conv_desc, c->x_desc,
                                                             data_list[i], &ws) == CUDNN_STATUS_SUCCESS)
                c->bwd_data = data_list[i], best = ws > best ? ws : best, found = true;
        if (!found) goto unsupported;
    }
    c->workspace = best;
    return MFRES_OK;
unsupported:
    return mfres_fail(MFRES_EBACKEND, "cuDNN %zu offers no deterministic algorithm for the %dx%d convolution %d->%d "
                      "channels (groups %d, stride %d) on %dx%d maps, NHWC %s",
                      cudnnGetVersion(), c->R, c->R, c->C, c->K, c->groups, c->stride, c->H, c->W,
                      c->dt == GK_BF16 ? "bfloat16" : "float");
}

void gpu_conv_free(gpu_conv *c) {
    if (c->x_desc) cudnnDestroyTensorDescriptor(c->x_desc);
    if (c->y_desc) cudnnDestroyTensorDescriptor(c->y_desc);
    if (c->w_desc) cudnnDestroyFilterDescriptor(c->w_desc);
    if (c->conv_desc) cudnnDestroyConvolutionDescriptor(c->conv_desc);
    memset(c, 0, sizeof *c);
}

int gpu_conv_forward(const gpu_conv *c, cudnnHandle_t h, void *y, const void *x, const void *w, void *ws,
                     size_t ws_bytes) {
    const float one = 1.0f, zero = 0.0f;
    CUDNN_TRY(cudnnConvolutionForward(h, &one, c->x_desc, x, c->w_desc, w, c->conv_desc, c->fwd, ws, ws_bytes, &zero,
                                      c->y_desc, y));
    return MFRES_OK;
}

int gpu_conv_backward_data(const gpu_conv *c, cudnnHandle_t h, void *dx, const void *dy, const void *w, void *ws,
                           size_t ws_bytes) {
    const float one = 1.0f, zero = 0.0f;
    CUDNN_TRY(cudnnConvolutionBackwardData(h, &one, c->w_desc, w, c->y_desc, dy, c->conv_desc, c->bwd_data, ws,
                                           ws_bytes, &zero, c->x_desc, dx));
    return MFRES_OK;
}

int gpu_conv_backward_weights(const gpu_conv *c, cudnnHandle_t h, void *dw, const void *x, const void *dy,
                              void *ws, size_t ws_bytes) {
    const float one = 1.0f, zero = 0.0f;
    CUDNN_TRY(cudnnConvolutionBackwardFilter(h, &one, c->x_desc, x, c->y_desc, dy, c->conv_desc, c->bwd_filter, ws,
                                             ws_bytes, &zero, c->w_desc, dw));
    return MFRES_OK;
}

void gpu_conv_describe(const gpu_conv *c, char *buf, size_t cap) {
    snprintf(buf, cap, "fwd %d, bwd-data %d, bwd-filter %d (cudnnConvolution*Algo_t), workspace %zu bytes",
             (int)c->fwd, c->need_bwd_data ? (int)c->bwd_data : -1, (int)c->bwd_filter, c->workspace);
}

int cudnn_fail(cudnnStatus_t s, const char *call, const char *file, int line) {
    return mfres_fail(MFRES_EBACKEND, "cuDNN: %s (%s at %s:%d)", cudnnGetErrorString(s), call, file, line);
}
