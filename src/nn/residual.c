/* The residual add with a per-block step h, and the option-A shortcut.
 *
 * out = act(shortcut + h * branch) is the one place where Algorithm 1 touches
 * the network: h = tau^l - tau^(l-1) scales each block's branch, and the
 * backward pass returns dE/dh = <g, branch>, from which the tau gradients are
 * assembled. One pass each way, whatever the (shared) layout. */
#include <stdlib.h>
#include <string.h>

#include "nn/nn.h"

void nn_residual_forward(float *out, unsigned char *mask, const float *shortcut, const float *branch, float h,
                         bool relu, size_t n) {
    if (relu && mask) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float v = shortcut[i] + h * branch[i];
            mask[i] = v > 0.0f;
            out[i] = v > 0.0f ? v : 0.0f;
        }
    } else if (relu) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float v = shortcut[i] + h * branch[i];
            out[i] = v > 0.0f ? v : 0.0f;
        }
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = shortcut[i] + h * branch[i];
    }
}

double nn_residual_backward(float *dshortcut, float *dbranch, const float *dout, const float *out,
                            const float *branch, float h, bool relu, size_t n) {
    /* dh is summed in fixed chunks, then the chunks in order: the result does
     * not depend on the thread count or on which thread finishes first. Within
     * a chunk, LANES independent partial sums let the compiler vectorise the
     * reduction (a single running sum is one long dependency chain, and was
     * 6x slower than the forward pass over the same data). */
    enum { CHUNK = 16384, LANES = 16 };
    size_t n_chunks = (n + CHUNK - 1) / CHUNK;
    double partial_stack[256];
    double *partial = n_chunks <= 256 ? partial_stack : malloc(n_chunks * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < n_chunks; k++) {
        size_t begin = k * CHUNK, end = (k + 1) * CHUNK < n ? (k + 1) * CHUNK : n, i = begin;
        float lane[LANES] = {0};
        for (; i + LANES <= end; i += LANES)
            for (int j = 0; j < LANES; j++) {
                float g = (!relu || out[i + j] > 0.0f) ? dout[i + j] : 0.0f;
                lane[j] += g * branch[i + j];
                dbranch[i + j] = h * g;
                dshortcut[i + j] = g;
            }
        double acc = 0.0;
        for (; i < end; i++) {
            float g = (!relu || out[i] > 0.0f) ? dout[i] : 0.0f;
            acc += (double)g * branch[i];
            dbranch[i] = h * g;
            dshortcut[i] = g;
        }
        for (int j = 0; j < LANES; j++) acc += lane[j];
        partial[k] = acc;
    }
    double dh = 0.0;
    for (size_t k = 0; k < n_chunks; k++) dh += partial[k];
    if (partial != partial_stack) free(partial);
    return dh;
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

void nn_shortcut_a_forward(float *out, const float *in, int N, int C, int H, int W, int block) {
    int OC = 2 * C, OH = H / 2, OW = W / 2;
    size_t per_image = (size_t)OC * OH * OW;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        memset(out + (size_t)n * per_image, 0, per_image * sizeof(float));
        for (int c = 0; c < C; c++)
            for (int i = 0; i < OH; i++)
                for (int j = 0; j < OW; j++)
                    out[blocked_offset(n, C / 2 + c, i, j, OC, OH, OW, block)] =
                        in[blocked_offset(n, c, 2 * i, 2 * j, C, H, W, block)];
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
