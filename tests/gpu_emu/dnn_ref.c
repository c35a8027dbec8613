/* dnn_ref.h: the loops. */
#include "dnn_ref.h"

#include <stdlib.h>

#include "gpu/kernels.h"

/* Visits every (image, output pixel, output channel, tap, input channel of the group). */
#define CONV_LOOP(c, BODY)                                                                                   \
    do {                                                                                                     \
        int cg_ = (c)->C / (c)->groups, kg_ = (c)->K / (c)->groups;                                          \
        for (int n = 0; n < (c)->N; n++)                                                                     \
            for (int oy = 0; oy < (c)->OH; oy++)                                                             \
                for (int ox = 0; ox < (c)->OW; ox++)                                                         \
                    for (int k = 0; k < (c)->K; k++)                                                         \
                        for (int r = 0; r < (c)->R; r++)                                                     \
                            for (int q = 0; q < (c)->R; q++) {                                               \
                                int iy = oy * (c)->stride - (c)->pad + r, ix = ox * (c)->stride - (c)->pad + q; \
                                if (iy < 0 || iy >= (c)->H || ix < 0 || ix >= (c)->W) continue;             \
                                int g0 = (k / kg_) * cg_;                                                    \
                                for (int ci = 0; ci < cg_; ci++) {                                           \
                                    size_t xi = (((size_t)n * (c)->H + iy) * (c)->W + ix) * (c)->C + g0 + ci; \
                                    size_t yi = (((size_t)n * (c)->OH + oy) * (c)->OW + ox) * (c)->K + k;    \
                                    size_t wi = (((size_t)k * (c)->R + r) * (c)->R + q) * cg_ + ci;          \
                                    BODY;                                                                    \
                                }                                                                            \
                            }                                                                                \
    } while (0)

static void finish(const dnn_ref_conv *c, void *out, double *acc, size_t n) {
    for (size_t i = 0; i < n; i++) gk_store(c->bf16 ? GK_BF16 : GK_F32, out, i, (float)acc[i]);
    free(acc);
}

#define LD(p, i) ((double)gk_load(c->bf16 ? GK_BF16 : GK_F32, (p), (i)))

void dnn_ref_conv_forward(const dnn_ref_conv *c, void *y, const void *x, const void *w) {
    size_t n = (size_t)c->N * c->OH * c->OW * c->K;
    double *acc = calloc(n ? n : 1, sizeof *acc);
    CONV_LOOP(c, acc[yi] += LD(x, xi) * LD(w, wi));
    finish(c, y, acc, n);
}

void dnn_ref_conv_backward_data(const dnn_ref_conv *c, void *dx, const void *dy, const void *w) {
    size_t n = (size_t)c->N * c->H * c->W * c->C;
    double *acc = calloc(n ? n : 1, sizeof *acc);
    CONV_LOOP(c, acc[xi] += LD(dy, yi) * LD(w, wi));
    finish(c, dx, acc, n);
}

void dnn_ref_conv_backward_weights(const dnn_ref_conv *c, void *dw, const void *x, const void *dy) {
    size_t n = (size_t)c->K * c->R * c->R * (c->C / c->groups);
    double *acc = calloc(n ? n : 1, sizeof *acc);
    CONV_LOOP(c, acc[wi] += LD(dy, yi) * LD(x, xi));
    finish(c, dw, acc, n);
}

int dnn_ref_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc) {
    if (ldc < m || lda < (ta ? k : m) || ldb < (tb ? n : k)) return -1;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                float a = ta ? A[p + (size_t)i * lda] : A[i + (size_t)p * lda];
                float b = tb ? B[j + (size_t)p * ldb] : B[p + (size_t)j * ldb];
                s += (double)a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
    return 0;
}
