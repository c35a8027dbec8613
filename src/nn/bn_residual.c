/* The end of a post-activation block, out = relu(shortcut + BN2(t)), in two
 * passes over t instead of four.
 *
 * oneDNN's batch norm (2.6) takes no post-ops, so run on its own it reads t
 * twice and writes BN2(t), which the residual add then reads again with the
 * shortcut. Here one pass gathers the batch statistics and a second one
 * normalises, adds the shortcut, applies the ReLU and records its mask; BN2(t)
 * is never stored, which also saves one activation map per block. The
 * backward stays on oneDNN's batch norm backward, which takes the mean and
 * variance computed here.
 *
 * Layout nChw{B}c. The statistics are summed in double over a fixed split of
 * the batch (not one that depends on the thread count), and the partial sums
 * are combined in order, so the result is the same bits on any number of
 * threads. */
#include <math.h>
#include <string.h>

#include "nn/nn.h"

enum { STAT_SPLITS = 16 };

/* Sums of one HW x B block. A run of up to 64 rows is summed in float in
 * vector registers (GCC vector types: left to itself, GCC keeps the
 * accumulators in memory here and runs 5x slower), then added in double. */
typedef float vec16 __attribute__((vector_size(64)));
typedef float vec8 __attribute__((vector_size(32)));
#define DEFINE_BLOCK_SUMS(name, vec, B)                                              \
    static void name(const float *p, int HW, double *sum, double *sumsq) {          \
        for (int i0 = 0; i0 < HW; i0 += 64) {                                         \
            int i1 = i0 + 64 < HW ? i0 + 64 : HW;                                     \
            vec acc = {0}, acc2 = {0};                                                \
            for (int i = i0; i < i1; i++) {                                           \
                vec v;                                                                \
                memcpy(&v, p + (size_t)i * B, sizeof v);                              \
                acc += v;                                                             \
                acc2 += v * v;                                                        \
            }                                                                         \
            for (int j = 0; j < B; j++) sum[j] += acc[j], sumsq[j] += acc2[j];        \
        }                                                                             \
    }
DEFINE_BLOCK_SUMS(block_sums16, vec16, 16)
DEFINE_BLOCK_SUMS(block_sums8, vec8, 8)

/* One HW x B block of out = relu(shortcut + a*t + b) and its mask, in vector types as above. */
typedef int ivec16 __attribute__((vector_size(64)));
typedef int ivec8 __attribute__((vector_size(32)));
typedef unsigned char bvec16 __attribute__((vector_size(16)));
typedef unsigned char bvec8 __attribute__((vector_size(8)));
#define DEFINE_BLOCK_APPLY(name, vec, ivec, bvec, B)                                                        \
    static void name(float *out, unsigned char *mask, const float *shortcut, const float *t, const float *a, \
                     const float *b, int HW) {                                                              \
        vec va, vb, zero = {0};                                                                            \
        memcpy(&va, a, sizeof va);                                                                          \
        memcpy(&vb, b, sizeof vb);                                                                          \
        for (int i = 0; i < HW; i++) {                                                                      \
            size_t o = (size_t)i * B;                                                                       \
            vec vs, vt;                                                                                     \
            memcpy(&vs, shortcut + o, sizeof vs);                                                           \
            memcpy(&vt, t + o, sizeof vt);                                                                  \
            vec v = vs + va * vt + vb;                                                                      \
            ivec positive = v > zero; /* -1 or 0 per lane */                                                \
            bvec m = __builtin_convertvector(-positive, bvec);                                              \
            v = (vec)((ivec)v & positive);                                                                  \
            memcpy(out + o, &v, sizeof v);                                                                  \
            memcpy(mask + o, &m, sizeof m);                                                                 \
        }                                                                                                   \
    }
DEFINE_BLOCK_APPLY(block_apply16, vec16, ivec16, bvec16, 16)
DEFINE_BLOCK_APPLY(block_apply8, vec8, ivec8, bvec8, 8)

/* Per-channel Σx and Σx² of x (nChw{B}c), summed in double over a fixed split of the batch, combined in order. */
static void channel_sums(double *sum, double *sumsq, const float *x, int N, int C, int HW, int block) {
    int CB = C / block, B = block;
    double partial[STAT_SPLITS][2][C];
    memset(partial, 0, sizeof partial);
#pragma omp parallel for schedule(static)
    for (int s = 0; s < STAT_SPLITS; s++) {
        int n0 = (int)((long)N * s / STAT_SPLITS), n1 = (int)((long)N * (s + 1) / STAT_SPLITS);
        double *ps = partial[s][0], *ps2 = partial[s][1];
        for (int n = n0; n < n1; n++)
            for (int cb = 0; cb < CB; cb++) {
                const float *p = x + ((size_t)n * CB + cb) * HW * B;
                if (B == 16) block_sums16(p, HW, ps + cb * B, ps2 + cb * B);
                else block_sums8(p, HW, ps + cb * B, ps2 + cb * B);
            }
    }
    for (int c = 0; c < C; c++) {
        double s = 0, s2 = 0;
        for (int k = 0; k < STAT_SPLITS; k++) s += partial[k][0][c], s2 += partial[k][1][c];
        sum[c] = s, sumsq[c] = s2;
    }
}

static void finish_statistics(float *mean, float *var, const double *sum, const double *sumsq, int C, double count) {
    for (int c = 0; c < C; c++) {
        double m = sum[c] / count, v = sumsq[c] / count - m * m;
        mean[c] = (float)m;
        var[c] = (float)(v > 0 ? v : 0);
    }
}

void nn_batchnorm_statistics(float *mean, float *var, const float *x, int N, int C, int HW, int block) {
    double sums[2 * C];
    channel_sums(sums, sums + C, x, N, C, HW, block);
    finish_statistics(mean, var, sums, sums + C, C, (double)N * HW);
}

int nn_batchnorm_statistics_sync(float *mean, float *var, const float *x, int N, int C, int HW, int block,
                                 const nn_bn_sync *sync) {
    double sums[2 * C];
    channel_sums(sums, sums + C, x, N, C, HW, block);
    double count = (double)N * HW;
    if (sync && sync->allreduce_sum) {
        int rc = sync->allreduce_sum(sums, 2 * (size_t)C, sync->arg);
        if (rc) return rc;
        count *= sync->ranks;
    }
    finish_statistics(mean, var, sums, sums + C, C, count);
    return 0;
}

void nn_bn_residual_relu_forward(float *out, unsigned char *mask, const float *shortcut, const float *t,
                                 const float *mean, const float *var, const float *gamma, const float *beta, float eps,
                                 int N, int C, int HW, int block) {
    int CB = C / block, B = block;
    float scale[C], shift[C];
    for (int c = 0; c < C; c++) {
        double s = gamma[c] / sqrt((double)var[c] + eps);
        scale[c] = (float)s;
        shift[c] = (float)(beta[c] - s * mean[c]);
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (int cb = 0; cb < CB; cb++) {
            size_t o = ((size_t)n * CB + cb) * HW * B;
            const float *a = scale + cb * B, *b = shift + cb * B;
            if (B == 16) block_apply16(out + o, mask + o, shortcut + o, t + o, a, b, HW);
            else block_apply8(out + o, mask + o, shortcut + o, t + o, a, b, HW);
        }
}
