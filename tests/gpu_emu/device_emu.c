/* cuda_device.c's functions for both CPU emulations of the GPU (emu.c's
 * stand-in and tests/gpu_simt): a GPU is always there, runs fp32 and bf16
 * (tf32 has no emulation: its rounding is the tensor cores'), and CUDA's
 * errors become messages as on the real backend. Also the part of
 * cudnn_conv.c both share: a convolution's shape and type, no algorithms.
 * Compiles against either the stand-in's headers or CUDA's. */
#include <stdio.h>
#include <string.h>

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

/* ---- cudnn_conv.c's descriptors: the shape, the element type, a workspace to exercise ---- */

int gpu_conv_init(gpu_conv *c, cudnnHandle_t h, const arch_conv *s, int N, mfres_precision p, bool need_bwd_data) {
    (void)h;
    memset(c, 0, sizeof *c);
    c->dt = p == MFRES_PRECISION_BF16 ? GK_BF16 : GK_F32;
    c->N = N, c->C = s->C, c->H = s->H, c->W = s->W, c->K = s->K, c->R = s->R, c->stride = s->stride;
    c->pad = s->pad, c->groups = s->groups, c->OH = s->OH, c->OW = s->OW, c->need_bwd_data = need_bwd_data;
    if ((c->H + 2 * c->pad - c->R) / c->stride + 1 != c->OH || (c->W + 2 * c->pad - c->R) / c->stride + 1 != c->OW)
        return mfres_fail(MFRES_EBACKEND, "emulated cuDNN: output shape mismatch");
    c->workspace = 4096; /* exercise the plan's workspace */
    return MFRES_OK;
}
void gpu_conv_free(gpu_conv *c) { memset(c, 0, sizeof *c); }

void gpu_conv_describe(const gpu_conv *c, char *buf, size_t cap) {
    snprintf(buf, cap, "emulated %dx%d convolution", c->R, c->R);
}
