/* cuDNN's convolutions and cuBLAS's sgemm as the GPU plan uses them, restated
 * as plain loops (double accumulation) for the two GPU emulations: the C
 * stand-in of the CUDA libraries (emu.c) and the SIMT emulator's
 * (tests/gpu_simt/libs_emu.cpp). Maps NHWC, weights KRSC, with groups; maps
 * and weights of one element type (float32, or bfloat16 under --precision
 * bf16, as cuDNN's bfloat16 convolutions: sums in float, the result rounded). */
#ifndef MFRES_DNN_REF_H
#define MFRES_DNN_REF_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dnn_ref_conv {
    int N, C, H, W, K, R, stride, pad, groups, OH, OW;
    int bf16; /* every map and weight is bfloat16 (else float32) */
} dnn_ref_conv;

void dnn_ref_conv_forward(const dnn_ref_conv *c, void *y, const void *x, const void *w);
void dnn_ref_conv_backward_data(const dnn_ref_conv *c, void *dx, const void *dy, const void *w);
void dnn_ref_conv_backward_weights(const dnn_ref_conv *c, void *dw, const void *x, const void *dy);
/* Column-major C (m x n) = alpha op(A) op(B) + beta C, op transposes when t*
 * is nonzero; 0, or -1 for leading dimensions too small. */
int dnn_ref_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc);

#ifdef __cplusplus
}
#endif

#endif
