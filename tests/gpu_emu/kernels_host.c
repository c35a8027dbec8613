/* kernels.h restated in plain C on the CPU, for tests/test_gpu_emulated: the
 * contract's semantics, one loop each, reductions in double. It tests the plan
 * that calls the kernels, not the kernels (tests/test_gpu_kernels does that on
 * a GPU). Activations are of the element type the call names, read and
 * written with kernels.h's gk_load and gk_store: computed in float (double in
 * reductions), rounded to nearest-even once when stored as bfloat16. */
#include <math.h>
#include <string.h>

#include "gpu/kernels.h"

/* Every entry point on activations refuses an unknown element type first, as kernels.cu does. */
#define CHECK_DTYPE(t)                                                                                                 \
    do {                                                                                                               \
        if ((t) != GK_F32 && (t) != GK_BF16) return cudaErrorInvalidValue;                                            \
    } while (0)

size_t gk_partials_floats(int C) { return 2 * (size_t)(C > 0 ? C : 1) + 1024; }

int gk_convert(gk_dtype dst_t, void *dst, gk_dtype src_t, const void *src, long n, cudaStream_t s) {
    return gk_convert_channels(dst_t, dst, 1, src_t, src, 1, n, 1, s);
}

int gk_convert_channels(gk_dtype dst_t, void *dst, int dst_c, gk_dtype src_t, const void *src, int src_c, long rows,
                        int c, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(dst_t);
    CHECK_DTYPE(src_t);
    if (rows < 0 || c < 0 || c > dst_c || c > src_c) return cudaErrorInvalidValue;
    const size_t es = gk_dtype_size(dst_t);
    for (long r = 0; r < rows; r++)
        for (int j = 0; j < dst_c; j++) {
            size_t d = (size_t)r * dst_c + j, from = (size_t)r * src_c + j;
            if (j >= c) gk_store(dst_t, dst, d, 0.0f);
            else if (dst_t == src_t) memcpy((char *)dst + d * es, (const char *)src + from * es, es); /* bits unchanged */
            else gk_store(dst_t, dst, d, gk_load(src_t, src, from));
        }
    return 0;
}

int gk_bn_stats(gk_dtype t, const void *x, long rows, int C, float eps, float momentum, float *mean, float *invstd,
                float *running_mean, float *running_var, float *partials, cudaStream_t s) {
    (void)partials, (void)s;
    CHECK_DTYPE(t);
    if (rows <= 0 || C <= 0) return cudaErrorInvalidValue;
    for (int c = 0; c < C; c++) {
        double m = 0, v = 0;
        for (long r = 0; r < rows; r++) m += gk_load(t, x, (size_t)(r * C + c));
        m /= rows;
        for (long r = 0; r < rows; r++) {
            double d = gk_load(t, x, (size_t)(r * C + c)) - m;
            v += d * d;
        }
        v /= rows;
        mean[c] = (float)m, invstd[c] = (float)(1.0 / sqrt(v + eps));
        float unbias = rows > 1 ? (float)((double)rows / (rows - 1)) : 1.0f;
        if (running_mean) running_mean[c] = (1 - momentum) * running_mean[c] + momentum * (float)m;
        if (running_var) running_var[c] = (1 - momentum) * running_var[c] + momentum * (float)v * unbias;
    }
    return 0;
}

static float relu(float v) { return v < 0 ? 0 : v; }

int gk_bn_apply(gk_dtype t, void *y, const void *x, long rows, int C, const float *mean, const float *invstd,
                const float *gamma, const float *beta, int do_relu, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float v = gamma[c] * ((gk_load(t, x, (size_t)i) - mean[c]) * invstd[c]) + beta[c];
        gk_store(t, y, (size_t)i, do_relu ? relu(v) : v);
    }
    return 0;
}

int gk_bn_apply_running(gk_dtype t, void *y, const void *x, long rows, int C, const float *running_mean,
                        const float *running_var, float eps, const float *gamma, const float *beta, int do_relu,
                        cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float v = gamma[c] * ((gk_load(t, x, (size_t)i) - running_mean[c]) / sqrtf(running_var[c] + eps)) + beta[c];
        gk_store(t, y, (size_t)i, do_relu ? relu(v) : v);
    }
    return 0;
}

int gk_bn_residual_relu(gk_dtype dt, void *out, const void *shortcut, const void *t, long rows, int C,
                        const float *mean, const float *invstd, const float *gamma, const float *beta, const float *h,
                        cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(dt);
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float b = gamma[c] * ((gk_load(dt, t, (size_t)i) - mean[c]) * invstd[c]) + beta[c];
        gk_store(dt, out, (size_t)i, relu(gk_load(dt, shortcut, (size_t)i) + *h * b));
    }
    return 0;
}

int gk_bn_residual_relu_running(gk_dtype dt, void *out, const void *shortcut, const void *t, long rows, int C,
                                const float *running_mean, const float *running_var, float eps, const float *gamma,
                                const float *beta, const float *h, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(dt);
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float b = gamma[c] * ((gk_load(dt, t, (size_t)i) - running_mean[c]) / sqrtf(running_var[c] + eps)) + beta[c];
        gk_store(dt, out, (size_t)i, relu(gk_load(dt, shortcut, (size_t)i) + *h * b));
    }
    return 0;
}

static float masked(gk_dtype t, const void *dy, const void *mask, long i) {
    return mask && !(gk_load(t, mask, (size_t)i) > 0) ? 0.0f : gk_load(t, dy, (size_t)i);
}

int gk_bn_backward_reduce(gk_dtype t, const void *dy, const void *mask, const void *x, long rows, int C,
                          const float *mean, const float *invstd, float *sums, float *partials, cudaStream_t s) {
    (void)partials, (void)s;
    CHECK_DTYPE(t);
    for (int c = 0; c < C; c++) {
        double s0 = 0, s1 = 0;
        for (long r = 0; r < rows; r++) {
            long i = r * C + c;
            double g = masked(t, dy, mask, i);
            s0 += g, s1 += g * (gk_load(t, x, (size_t)i) - mean[c]) * invstd[c];
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

int gk_bn_backward_data(gk_dtype t, void *dx, const void *dy, const void *mask, const void *x, long rows, int C,
                        const float *mean, const float *invstd, const float *gamma, const float *sums,
                        const float *scale_ptr, int accumulate, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    float scale = scale_ptr ? *scale_ptr : 1.0f;
    for (long i = 0; i < rows * C; i++) {
        int c = (int)(i % C);
        float xhat = (gk_load(t, x, (size_t)i) - mean[c]) * invstd[c];
        float v = scale * gamma[c] * invstd[c] * (masked(t, dy, mask, i) - sums[c] / rows - xhat * sums[C + c] / rows);
        gk_store(t, dx, (size_t)i, accumulate ? gk_load(t, dx, (size_t)i) + v : v);
    }
    return 0;
}

int gk_relu_mask(gk_dtype t, void *g, const void *mask, long n, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (long i = 0; i < n; i++)
        if (!(gk_load(t, mask, (size_t)i) > 0)) gk_store(t, g, (size_t)i, 0.0f);
    return 0;
}
int gk_add(gk_dtype t, void *y, const void *x, long n, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (long i = 0; i < n; i++) gk_store(t, y, (size_t)i, gk_load(t, y, (size_t)i) + gk_load(t, x, (size_t)i));
    return 0;
}
int gk_scale(gk_dtype t, void *y, const float *scale, long n, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (long i = 0; i < n; i++) gk_store(t, y, (size_t)i, gk_load(t, y, (size_t)i) * *scale);
    return 0;
}
int gk_residual(gk_dtype dt, void *out, const void *shortcut, const void *t, const float *h, long n, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(dt);
    for (long i = 0; i < n; i++)
        gk_store(dt, out, (size_t)i, gk_load(dt, shortcut, (size_t)i) + *h * gk_load(dt, t, (size_t)i));
    return 0;
}
int gk_dot(const float *a, const float *b, long n, float *dot, float *partials, cudaStream_t s) {
    (void)partials, (void)s;
    double acc = 0;
    for (long i = 0; i < n; i++) acc += (double)a[i] * b[i];
    *dot = (float)acc;
    return 0;
}

int gk_shortcut_a_forward(gk_dtype t, void *out, const void *x, int N, int H, int W, int C, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    int OH = H / 2, OW = W / 2, K = 2 * C;
    const size_t es = gk_dtype_size(t);
    memset(out, 0, es * N * OH * OW * K); /* +0 in either type */
    for (int n = 0; n < N; n++)
        for (int i = 0; i < OH; i++)
            for (int j = 0; j < OW; j++)
                for (int c = 0; c < C; c++) /* a copy of the element, bits unchanged */
                    memcpy((char *)out + es * ((((size_t)n * OH + i) * OW + j) * K + C / 2 + c),
                           (const char *)x + es * ((((size_t)n * H + 2 * i) * W + 2 * j) * C + c), es);
    return 0;
}
int gk_shortcut_a_backward_add(gk_dtype t, void *dx, const void *dout, int N, int H, int W, int C, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    int OH = H / 2, OW = W / 2, K = 2 * C;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < OH; i++)
            for (int j = 0; j < OW; j++)
                for (int c = 0; c < C; c++) {
                    size_t d = (((size_t)n * H + 2 * i) * W + 2 * j) * C + c;
                    gk_store(t, dx, d,
                             gk_load(t, dx, d) + gk_load(t, dout, (((size_t)n * OH + i) * OW + j) * K + C / 2 + c));
                }
    return 0;
}
int gk_avgpool_forward(gk_dtype t, float *pooled, const void *x, int N, int HW, int C, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double acc = 0;
            for (int p = 0; p < HW; p++) acc += gk_load(t, x, ((size_t)n * HW + p) * C + c);
            pooled[n * C + c] = (float)(acc / HW);
        }
    return 0;
}
int gk_avgpool_backward(gk_dtype t, void *dx, const float *dpooled, int N, int HW, int C, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++)
            for (int c = 0; c < C; c++) gk_store(t, dx, ((size_t)n * HW + p) * C + c, dpooled[n * C + c] / HW);
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
           int nesterov, const double *loss_guard, cudaStream_t s) {
    (void)s;
    if (loss_guard && !isfinite(*loss_guard)) return 0;
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
                        const double *loss_guard, cudaStream_t s) {
    (void)s;
    if (loss_guard && !isfinite(*loss_guard)) {
        *changed = 0;
        return 0;
    }
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

int gk_gather_batch(gk_dtype t, void *dst, int32_t *labels, const uint8_t *images, const uint8_t *image_labels,
                    const float *lut, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                    long first, int batch, long n_total, int C, int C_dst, int H, int W, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    if (C_dst < C) return cudaErrorInvalidValue;
    for (int k = 0; k < batch; k++) {
        long pos = first + k;
        labels[k] = pos < n_total ? image_labels[perm[pos]] : -1;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C_dst; c++) {
                    float v = 0;
                    if (pos < n_total && c < C) {
                        int sy = y + oy[pos], sx = (flip[pos] ? W - 1 - x : x) + ox[pos];
                        v = sy < 0 || sy >= H || sx < 0 || sx >= W
                                ? lut[c * 256]
                                : lut[c * 256 + images[((size_t)perm[pos] * C + c) * H * W + (size_t)sy * W + sx]];
                    }
                    gk_store(t, dst, (((size_t)k * H + y) * W + x) * C_dst + c, v);
                }
    }
    return 0;
}

int gk_nchw_to_nhwc(gk_dtype t, void *dst, const float *src, int N, int C, int C_dst, int H, int W, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    if (C_dst < C) return cudaErrorInvalidValue;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C_dst; c++)
            for (int i = 0; i < H * W; i++)
                gk_store(t, dst, ((size_t)n * H * W + i) * C_dst + c, c < C ? src[((size_t)n * C + c) * H * W + i] : 0);
    return 0;
}
int gk_nhwc_to_nchw(gk_dtype t, float *dst, const void *src, int N, int C, int H, int W, cudaStream_t s) {
    (void)s;
    CHECK_DTYPE(t);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++)
                dst[((size_t)n * C + c) * H * W + i] = gk_load(t, src, ((size_t)n * H * W + i) * C + c);
    return 0;
}
