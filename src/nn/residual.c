/* The residual add with a per-block step h, and the option-A shortcut.
 *
 * out = shortcut + h * branch is where Algorithm 1 touches the network:
 * h = tau^l - tau^(l-1) scales each block's branch. Its backward needs no pass
 * of its own: the model folds h into the branch's last batch norm (post-
 * activation; there the add, the ReLU and its mask come out of
 * nn_bn_residual_relu_forward) or into the gradient scale (pre-activation) and
 * gets dE/dh from small per-channel or per-weight sums (see
 * src/models/block_postact.c and block_preact.c); only the output ReLU's mask is applied
 * here. */
#include <stdlib.h>
#include <string.h>

#include "nn/nn.h"

void nn_residual_forward(float *out, const float *shortcut, const float *branch, float h, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = shortcut[i] + h * branch[i];
}

void nn_scale_inplace(float *x, float a, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

void nn_add_inplace(float *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

void nn_relu_backward_inplace(float *g, const unsigned char *mask, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) g[i] = mask[i] ? g[i] : 0.0f;
}

/* Offset of element (n, c, h, w) in nChw{B}c with C a multiple of B. */
static inline size_t blocked_offset(int n, int c, int h, int w, int C, int H, int W, int B) {
    return ((((size_t)n * (C / B) + c / B) * H + h) * W + w) * B + c % B;
}

void nn_shortcut_a_forward(float *out, const float *in, int N, int C, int H, int W, int in_block, int block) {
    int OC = 2 * C, OH = H / 2, OW = W / 2;
    size_t per_image = (size_t)OC * OH * OW;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        memset(out + (size_t)n * per_image, 0, per_image * sizeof(float));
        for (int c = 0; c < C; c++)
            for (int i = 0; i < OH; i++)
                for (int j = 0; j < OW; j++)
                    out[blocked_offset(n, C / 2 + c, i, j, OC, OH, OW, block)] =
                        in[blocked_offset(n, c, 2 * i, 2 * j, C, H, W, in_block)];
    }
}

void nn_shortcut_a_backward_add(float *din, const float *dout, int N, int C, int H, int W, int block) {
    int OC = 2 * C, OH = H / 2, OW = W / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < OH; i++)
                for (int j = 0; j < OW; j++)
                    din[blocked_offset(n, c, 2 * i, 2 * j, C, H, W, block)] +=
                        dout[blocked_offset(n, C / 2 + c, i, j, OC, OH, OW, block)];
}
