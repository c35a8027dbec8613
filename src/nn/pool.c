/* Global average pooling from the blocked activation layout nChw{B}c to the
 * plain [N, C] rows the classifier reads: this is where the network leaves
 * oneDNN's layout, so no separate reorder is needed. */
#include "nn/nn.h"

void nn_avgpool_forward(float *out, const float *in, int N, int C, int HW, int block) {
    int cb_count = C / block;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int cb = 0; cb < cb_count; cb++) {
            const float *src = in + ((size_t)n * cb_count + cb) * HW * block;
            float acc[16] = {0};
            for (int p = 0; p < HW; p++)
                for (int b = 0; b < block; b++) acc[b] += src[(size_t)p * block + b];
            for (int b = 0; b < block; b++) out[(size_t)n * C + cb * block + b] = acc[b] / (float)HW;
        }
}

void nn_avgpool_backward(float *din, const float *dout, int N, int C, int HW, int block) {
    int cb_count = C / block;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int cb = 0; cb < cb_count; cb++) {
            float *dst = din + ((size_t)n * cb_count + cb) * HW * block;
            for (int p = 0; p < HW; p++)
                for (int b = 0; b < block; b++) dst[(size_t)p * block + b] = dout[(size_t)n * C + cb * block + b] / (float)HW;
        }
}
