/* kernels.h restated in plain C on the CPU, for tests/test_gpu_emulated: the
 * contract's semantics, one loop each, reductions in double. It tests the plan
 * that calls the kernels, not the kernels (tests/test_gpu_kernels does that on
 * a GPU). */
#include <math.h>
#include <string.h>

#include "gpu/kernels.h"

size_t gk_partials_floats(int C) { return 2 * (size_t)(C > 0 ? C : 1) + 1024; }

int gk_bn_stats(const float *x, long rows, int C, float eps, float momentum, float *mean, float *invstd,
                float *running_mean, float *running_var, float *partials, cudaStream_t s) {
    (void)partials, (void)s;
    if (rows <= 0 || C <= 0) return cudaErrorInvalidValue;
    for (int c = 0; c < C; c++) {
        double m = 0, v = 0;
        for (long r = 0; r < rows; r++) m += x[r * C + c];
        m /= rows;
        for (long r = 0; r < rows; r++) v += (x[r * C + c] - m) * (x[r * C + c] - m);
        v /= rows;
        mean[c] = (float)m, invstd[c] = (float)(1.0 / sqrt(v + eps));
        float unbias = rows > 1 ? (float)((double)rows / (rows - 1)) : 1.0f;
        if (running_mean) running_mean[c] = (1 - momentum) * running_mean[c] + momentum * (float)m;
        if (running_var) running_var[c] = (1 - momentum) * running_var[c] + momentum * (float)v * unbias;
    }
    return 0;
}

static float relu(float v) { return v < 0 ? 0 : v; }

int gk_bn_apply(float *y, const float *x, long rows, int C, const float *mean, const float *invstd,
                const float *gamma, const float *beta, int do_relu, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float v = gamma[c] * ((x[i] - mean[c]) * invstd[c]) + beta[c];
        y[i] = do_relu ? relu(v) : v;
    }
    return 0;
}

int gk_bn_apply_running(float *y, const float *x, long rows, int C, const float *running_mean,
                        const float *running_var, float eps, const float *gamma, const float *beta, int do_relu,
                        cudaStream_t s) {
    (void)s;
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float v = gamma[c] * ((x[i] - running_mean[c]) / sqrtf(running_var[c] + eps)) + beta[c];
        y[i] = do_relu ? relu(v) : v;
    }
    return 0;
}

int gk_bn_residual_relu(float *out, const float *shortcut, const float *t, long rows, int C, const float *mean,
                        const float *invstd, const float *gamma, const float *beta, const float *h, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        out[i] = relu(shortcut[i] + *h * (gamma[c] * ((t[i] - mean[c]) * invstd[c]) + beta[c]));
    }
    return 0;
}

int gk_bn_residual_relu_running(float *out, const float *shortcut, const float *t, long rows, int C,
                                const float *running_mean, const float *running_var, float eps, const float *gamma,
                                const float *beta, const float *h, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float b = gamma[c] * ((t[i] - running_mean[c]) / sqrtf(running_var[c] + eps)) + beta[c];
        out[i] = relu(shortcut[i] + *h * b);
    }
    return 0;
}

static float masked(const float *dy, const float *mask, long i) { return mask && !(mask[i] > 0) ? 0.0f : dy[i]; }

int gk_bn_backward_reduce(const float *dy, const float *mask, const float *x, long rows, int C, const float *mean,
                          const float *invstd, float *sums, float *partials, cudaStream_t s) {
    (void)partials, (void)s;
    for (int c = 0; c < C; c++) {
        double s0 = 0, s1 = 0;
        for (long r = 0; r < rows; r++) {
            long i = r * C + c;
            double g = masked(dy, mask, i);
            s0 += g, s1 += g * (x[i] - mean[c]) * invstd[c];
        }
        sums[c] = (float)s0, sums[C + c] = (float)s1;
    }
    return 0;
}

int gk_bn_backward_params(const float *sums, int C, const float *gamma, const float *beta, const float *scale_ptr,
                          float *dgamma, float *dbeta, float *dh, cudaStream_t s) {
    (void)s;
    float scale = scale_ptr ? *scale_ptr : 1.0f;
    double a = 0;
    for (int c = 0; c < C; c++) {
        dgamma[c] = scale * sums[C + c], dbeta[c] = scale * sums[c];
        a += (double)gamma[c] * sums[C + c] + (double)beta[c] * sums[c];
    }
    if (dh) *dh = (float)a;
    return 0;
}

int gk_bn_backward_data(float *dx, const float *dy, const float *mask, const float *x, long rows, int C,
                        const float *mean, const float *invstd, const float *gamma, const float *sums,
                        const float *scale_ptr, int accumulate, cudaStream_t s) {
    (void)s;
    float scale = scale_ptr ? *scale_ptr : 1.0f;
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float xhat = (x[i] - mean[c]) * invstd[c];
        float v = scale * gamma[c] * invstd[c] * (masked(dy, mask, i) - sums[c] / rows - xhat * sums[C + c] / rows);
        dx[i] = accumulate ? dx[i] + v : v;
    }
    return 0;
}

int gk_relu_mask(float *g, const float *mask, long n, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < n; i++)
        if (!(mask[i] > 0)) g[i] = 0;
    return 0;
}
int gk_add(float *y, const float *x, long n, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < n; i++) y[i] += x[i];
    return 0;
}
int gk_scale(float *y, const float *scale, long n, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < n; i++) y[i] *= *scale;
    return 0;
}
int gk_residual(float *out, const float *shortcut, const float *t, const float *h, long n, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < n; i++) out[i] = shortcut[i] + *h * t[i];
    return 0;
}
int gk_dot(const float *a, const float *b, long n, float *dot, float *partials, cudaStream_t s) {
    (void)partials, (void)s;
    double acc = 0;
    for (long i = 0; i < n; i++) acc += (double)a[i] * b[i];
    *dot = (float)acc;
    return 0;
}

int gk_shortcut_a_forward(float *out, const float *x, int N, int H, int W, int C, cudaStream_t s) {
    (void)s;
    int OH = H / 2, OW = W / 2, K = 2 * C;
    memset(out, 0, sizeof(float) * N * OH * OW * K);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < OH; i++)
            for (int j = 0; j < OW; j++)
                for (int c = 0; c < C; c++)
                    out[(((size_t)n * OH + i) * OW + j) * K + C / 2 + c] = x[(((size_t)n * H + 2 * i) * W + 2 * j) * C + c];
    return 0;
}
int gk_shortcut_a_backward_add(float *dx, const float *dout, int N, int H, int W, int C, cudaStream_t s) {
    (void)s;
    int OH = H / 2, OW = W / 2, K = 2 * C;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < OH; i++)
            for (int j = 0; j < OW; j++)
                for (int c = 0; c < C; c++)
                    dx[(((size_t)n * H + 2 * i) * W + 2 * j) * C + c] += dout[(((size_t)n * OH + i) * OW + j) * K + C / 2 + c];
    return 0;
}
int gk_avgpool_forward(float *pooled, const float *x, int N, int HW, int C, cudaStream_t s) {
    (void)s;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double acc = 0;
            for (int p = 0; p < HW; p++) acc += x[((size_t)n * HW + p) * C + c];
            pooled[n * C + c] = (float)(acc / HW);
        }
    return 0;
}
int gk_avgpool_backward(float *dx, const float *dpooled, int N, int HW, int C, cudaStream_t s) {
    (void)s;
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++)
            for (int c = 0; c < C; c++) dx[((size_t)n * HW + p) * C + c] = dpooled[n * C + c] / HW;
    return 0;
}

int gk_add_bias(float *logits, const float *bias, int N, int K, cudaStream_t s) {
    (void)s;
    for (int i = 0; i < N * K; i++) logits[i] += bias[i % K];
    return 0;
}
int gk_bias_grad(float *dbias, const float *dlogits, int N, int K, cudaStream_t s) {
    (void)s;
    for (int k = 0; k < K; k++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += dlogits[n * K + k];
        dbias[k] = (float)acc;
    }
    return 0;
}
int gk_softmax_xent_forward(float *probs, const float *logits, const int32_t *labels, int N, int K, double *step,
                            double *out, cudaStream_t s) {
    (void)s;
    double loss = 0, valid = 0, correct = 0;
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * K;
        int arg = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > z[arg]) arg = k;
        double se = 0;
        for (int k = 0; k < K; k++) se += exp((double)z[k] - z[arg]);
        for (int k = 0; k < K; k++) probs[(size_t)n * K + k] = (float)(exp((double)z[k] - z[arg]) / se);
        if (labels[n] < 0) continue;
        valid += 1, correct += arg == labels[n];
        loss += log(se) - ((double)z[labels[n]] - z[arg]);
    }
    step[0] = loss, step[1] = valid, step[2] = correct;
    out[0] += loss, out[1] += valid, out[2] += correct;
    return 0;
}
int gk_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *labels, int N, int K,
                             const double *step, cudaStream_t s) {
    (void)s;
    float inv = step[1] > 0 ? (float)(1.0 / step[1]) : 0.0f;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)n * K + k;
            dlogits[i] = labels[n] < 0 ? 0.0f : (probs[i] - (k == labels[n] ? 1.0f : 0.0f)) * inv;
        }
    return 0;
}

static void sgd_one(float *p, float *v, float g, float lr, float momentum, float wd, int nesterov) {
    float d = g + wd * *p;
    *v = momentum * *v + d;
    *p -= lr * (nesterov ? d + momentum * *v : *v);
}
int gk_sgd(float *p, float *v, const float *g, long n, const float *lr, float momentum, float weight_decay,
           int nesterov, cudaStream_t s) {
    (void)s;
    for (long i = 0; i < n; i++) sgd_one(&p[i], &v[i], g[i], *lr, momentum, weight_decay, nesterov);
    return 0;
}

int gk_meanfield_tau_grad(float *tau_grad, const int *order, const float *dh, int P, cudaStream_t s) {
    (void)s;
    for (int st = 0; st < 3; st++) {
        const float *a = dh + st * (P + 1) + 1;
        for (int l = 0; l < P; l++) tau_grad[st * P + order[st * P + l]] = l + 1 < P ? a[l] - a[l + 1] : a[l];
    }
    return 0;
}
int gk_meanfield_update(float *tau, float *tau_velocity, const float *tau_grad, int *order, float *h_pos, int P,
                        const float *lr, float lr_mult, float momentum, int nesterov, float tau_end, int *changed,
                        cudaStream_t s) {
    (void)s;
    float rate = *lr * lr_mult;
    for (int i = 0; i < 3 * P; i++) {
        sgd_one(&tau[i], &tau_velocity[i], tau_grad[i], rate, momentum, 0.0f, nesterov);
        tau[i] = tau[i] < 0 ? 0 : tau[i] > tau_end ? tau_end : tau[i];
    }
    int ch = 0;
    for (int st = 0; st < 3; st++) {
        const float *t = tau + st * P;
        int sorted[1024];
        for (int i = 0; i < P; i++) sorted[i] = i;
        for (int i = 1; i < P; i++) {
            int p = sorted[i], j = i - 1;
            while (j >= 0 && t[sorted[j]] > t[p]) sorted[j + 1] = sorted[j], j--;
            sorted[j + 1] = p;
        }
        int stage_changed = 0;
        float prev = 0;
        for (int l = 0; l < P; l++) {
            stage_changed |= order[st * P + l] != sorted[l];
            order[st * P + l] = sorted[l];
            h_pos[st * (P + 1) + 1 + l] = t[sorted[l]] - prev;
            prev = t[sorted[l]];
        }
        ch += stage_changed;
    }
    *changed = ch;
    return 0;
}

int gk_gather_batch(float *dst, int32_t *labels, const uint8_t *images, const uint8_t *image_labels,
                    const float *lut, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                    long first, int batch, long n_total, int C, int H, int W, cudaStream_t s) {
    (void)s;
    for (int k = 0; k < batch; k++) {
        long pos = first + k;
        labels[k] = pos < n_total ? image_labels[perm[pos]] : -1;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C; c++) {
                    float v = 0;
                    if (pos < n_total) {
                        int sy = y + oy[pos], sx = (flip[pos] ? W - 1 - x : x) + ox[pos];
                        v = sy < 0 || sy >= H || sx < 0 || sx >= W
                                ? lut[c * 256]
                                : lut[c * 256 + images[((size_t)perm[pos] * C + c) * H * W + (size_t)sy * W + sx]];
                    }
                    dst[(((size_t)k * H + y) * W + x) * C + c] = v;
                }
    }
    return 0;
}

int gk_nchw_to_nhwc(float *dst, const float *src, int N, int C, int H, int W, cudaStream_t s) {
    (void)s;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++) dst[((size_t)n * H * W + i) * C + c] = src[((size_t)n * C + c) * H * W + i];
    return 0;
}
int gk_nhwc_to_nchw(float *dst, const float *src, int N, int C, int H, int W, cudaStream_t s) {
    (void)s;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++) dst[((size_t)n * C + c) * H * W + i] = src[((size_t)n * H * W + i) * C + c];
    return 0;
}
