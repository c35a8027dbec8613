/* The GPU backend's own kernels (kernels.cu), callable from C.
 *
 * Every activation is NHWC: element (n, y, x, c) of an N x H x W x C map is at
 * ((n * H + y) * W + x) * C + c, so a map is `rows` = N*H*W rows of C
 * channels. Activations and their gradients (`void *` below) are of the
 * element type `t` the call names: float32, or bfloat16 under --precision
 * bf16; every kernel computes in float32 and rounds to nearest-even on
 * storing a bfloat16. Parameters, their gradients, batch statistics, the head
 * (pooled features, logits) and tau are always float32.
 *
 * Per-channel reductions (batch norm, dE/dh) are deterministic: fixed grid
 * shapes, partial sums in the caller's `partials` scratch in a fixed order,
 * no floating-point atomics; the same inputs give the same bits.
 *
 * Values that change from step to step without changing the work (the step h
 * of a position, the learning rate) are read from device memory, never passed
 * by value, so a captured CUDA graph stays valid across steps.
 *
 * Each launch returns 0 or the cudaError_t of the launch (cudaGetLastError). */
#ifndef MFRES_GPU_KERNELS_H
#define MFRES_GPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The element type of activations and activation gradients. */
typedef enum gk_dtype { GK_F32 = 0, GK_BF16 = 1 } gk_dtype;

/* MFRES_GPU_BF16_WIDE is for one test build only (tests/test_gpu_bf16_wide,
 * on the C stand-in of tests/gpu_emu): there GK_BF16 data is stored as
 * float32, unrounded, so that the bf16 plan's own logic (which buffers are
 * bfloat16, the weight copy, the gradient widening) is checked to float
 * precision, apart from the rounding that bfloat16 adds. */
#ifdef MFRES_GPU_BF16_WIDE
#define GK_BF16_BYTES 4
#else
#define GK_BF16_BYTES 2
#endif
static inline size_t gk_dtype_size(gk_dtype t) { return t == GK_BF16 ? GK_BF16_BYTES : 4; }

/* bfloat16 on the host, as the device rounds it (__float2bfloat16_rn): the
 * upper 16 bits of the float32, rounded to nearest, ties to even; a NaN stays
 * a (quiet) NaN. For tests and emulators. */
static inline uint16_t gk_bf16_from_float(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7f800000u) == 0x7f800000u && (v.u & 0x007fffffu)) return (uint16_t)((v.u >> 16) | 0x0040u);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static inline float gk_float_from_bf16(uint16_t b) {
    union { uint32_t u; float f; } v = {(uint32_t)b << 16};
    return v.f;
}
/* Element i of an activation array of type t, as float; and stored. */
static inline float gk_load(gk_dtype t, const void *p, size_t i) {
    if (GK_BF16_BYTES == 2 && t == GK_BF16) return gk_float_from_bf16(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}
static inline void gk_store(gk_dtype t, void *p, size_t i, float v) {
    if (GK_BF16_BYTES == 2 && t == GK_BF16) ((uint16_t *)p)[i] = gk_bf16_from_float(v);
    else ((float *)p)[i] = v;
}

/* Floats of `partials` scratch any reduction below needs for C channels. */
size_t gk_partials_floats(int C);

/* dst[i] = src[i] converted, n elements (float32 <-> bfloat16, or a copy):
 * the bfloat16 copy of the weights, the float32 weight gradient from cuDNN's
 * bfloat16 one. */
int gk_convert(gk_dtype dst_t, void *dst, gk_dtype src_t, const void *src, long n, cudaStream_t s);
/* The same row by row, with channels padded or cut: for each of `rows` rows,
 * dst[r * dst_c + j] = src[r * src_c + j] converted for j < c, and 0 for
 * c <= j < dst_c (c <= src_c, c <= dst_c). The stem's weights (KRSC: rows =
 * K*R*S) padded to the input channels the tensor cores want, and its padded
 * weight gradient cut back. */
int gk_convert_channels(gk_dtype dst_t, void *dst, int dst_c, gk_dtype src_t, const void *src, int src_c, long rows,
                        int c, cudaStream_t s);

/* ---- batch norm (training: batch statistics) ------------------------------ */

/* mean[c], invstd[c] = 1/sqrt(var_biased[c] + eps) over the rows of x; then
 * the running statistics, as PyTorch: rm = (1-mom) rm + mom mean,
 * rv = (1-mom) rv + mom var_biased * rows / (rows - 1). */
int gk_bn_stats(gk_dtype t, const void *x, long rows, int C, float eps, float momentum, float *mean, float *invstd,
                float *running_mean, float *running_var, float *partials, cudaStream_t s);
/* y = gamma * (x - mean) * invstd + beta, then max(y, 0) when relu. */
int gk_bn_apply(gk_dtype t, void *y, const void *x, long rows, int C, const float *mean, const float *invstd,
                const float *gamma, const float *beta, int relu, cudaStream_t s);
/* Inference: y = gamma (x - running_mean) / sqrt(running_var + eps) + beta, relu. */
int gk_bn_apply_running(gk_dtype t, void *y, const void *x, long rows, int C, const float *running_mean,
                        const float *running_var, float eps, const float *gamma, const float *beta, int relu,
                        cudaStream_t s);
/* The post-activation block end: out = max(shortcut + h * (gamma xhat + beta), 0),
 * xhat = (t - mean) * invstd, h = *h (device). shortcut may alias out. */
int gk_bn_residual_relu(gk_dtype dt, void *out, const void *shortcut, const void *t, long rows, int C, const float *mean,
                        const float *invstd, const float *gamma, const float *beta, const float *h, cudaStream_t s);
/* Inference form of the above with running statistics. */
int gk_bn_residual_relu_running(gk_dtype dt, void *out, const void *shortcut, const void *t, long rows, int C,
                                const float *running_mean, const float *running_var, float eps, const float *gamma,
                                const float *beta, const float *h, cudaStream_t s);

/* Batch-norm backward. With dy' = dy where mask == NULL or mask[i] > 0, else 0
 * (mask: the ReLU output that followed the batch norm), and xhat as above:
 *   sums[c] = sum dy',  sums[C + c] = sum dy' * xhat          (gk_bn_backward_reduce)
 *   dgamma = scale * sums[C+c], dbeta = scale * sums[c]        (gk_bn_backward_params)
 *   *dh = sum_c gamma_c sums[C+c] + beta_c sums[c]  when dh != NULL (float; one
 *         thread, channel order: deterministic)
 *   dx = scale * gamma invstd (dy' - sums[c]/rows - xhat sums[C+c]/rows)
 *        (gk_bn_backward_data; written, or added to dx when accumulate)
 * scale = *scale_ptr (device) or 1 when scale_ptr == NULL: the post-activation
 * block's last batch norm runs on the unscaled gradient and takes h here.
 * dx may alias dy. */
int gk_bn_backward_reduce(gk_dtype t, const void *dy, const void *mask, const void *x, long rows, int C, const float *mean,
                          const float *invstd, float *sums, float *partials, cudaStream_t s);
int gk_bn_backward_params(const float *sums, int C, const float *gamma, const float *beta, const float *scale_ptr,
                          float *dgamma, float *dbeta, float *dh, cudaStream_t s);
int gk_bn_backward_data(gk_dtype t, void *dx, const void *dy, const void *mask, const void *x, long rows, int C,
                        const float *mean, const float *invstd, const float *gamma, const float *sums,
                        const float *scale_ptr, int accumulate, cudaStream_t s);

/* ---- element-wise ------------------------------------------------------------ */

/* g[i] = mask[i] > 0 ? g[i] : 0 */
int gk_relu_mask(gk_dtype t, void *g, const void *mask, long n, cudaStream_t s);
/* y[i] += x[i] */
int gk_add(gk_dtype t, void *y, const void *x, long n, cudaStream_t s);
/* y[i] *= *scale (device); y: activations of type t, or float32 gradients (GK_F32) */
int gk_scale(gk_dtype t, void *y, const float *scale, long n, cudaStream_t s);
/* Pre-activation block end: out = shortcut + (*h) * t. shortcut may alias out. */
int gk_residual(gk_dtype dt, void *out, const void *shortcut, const void *t, const float *h, long n, cudaStream_t s);
/* *dot = sum a[i] b[i] (float, deterministic: fixed tree). For dE/dh. */
int gk_dot(const float *a, const float *b, long n, float *dot, float *partials, cudaStream_t s);

/* ---- shortcuts and pooling ------------------------------------------------- */

/* Option A (He et al. 2016a): out (N, H/2, W/2, 2C) takes x (N, H, W, C)
 * subsampled by 2 into channels [C/2, C/2 + C), zeros elsewhere. */
int gk_shortcut_a_forward(gk_dtype t, void *out, const void *x, int N, int H, int W, int C, cudaStream_t s);
/* dx (N, H, W, C) += the gradient of the above from dout (N, H/2, W/2, 2C). */
int gk_shortcut_a_backward_add(gk_dtype t, void *dx, const void *dout, int N, int H, int W, int C, cudaStream_t s);
/* Global average pool: pooled[n, c] = mean over H*W of x (N, H, W, C). */
int gk_avgpool_forward(gk_dtype t, float *pooled, const void *x, int N, int HW, int C, cudaStream_t s);
/* dx[n, p, c] = dpooled[n, c] / HW */
int gk_avgpool_backward(gk_dtype t, void *dx, const float *dpooled, int N, int HW, int C, cudaStream_t s);

/* ---- head ------------------------------------------------------------------- */

/* logits[n, k] += bias[k] */
int gk_add_bias(float *logits, const float *bias, int N, int K, cudaStream_t s);
/* dbias[k] = sum_n dlogits[n, k] (rows in order). */
int gk_bias_grad(float *dbias, const float *dlogits, int N, int K, cudaStream_t s);
/* Softmax cross-entropy over rows with labels[n] >= 0 (label -1: padding, no
 * loss, no gradient). probs = softmax(logits) (max-subtracted); per row the
 * loss -log p[label] and whether the arg max (first maximum) is the label;
 * then out[0] += sum of row losses (double, rows in order), out[1] += valid
 * rows, out[2] += correct rows: `out` accumulates over steps until the caller
 * clears it. step[0..2] get this batch's loss sum, valid and correct (double). */
int gk_softmax_xent_forward(float *probs, const float *logits, const int32_t *labels, int N, int K, double *step,
                            double *out, cudaStream_t s);
/* dlogits = (probs - onehot(label)) / valid, valid = step[1] (0 rows: zeros). */
int gk_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *labels, int N, int K,
                             const double *step, cudaStream_t s);

/* ---- optimiser and Algorithm 1 ---------------------------------------------- */

/* The update's guard: when `loss_guard` is not NULL and *loss_guard (the
 * batch's loss sum, step[0] of gk_softmax_xent_forward) is NaN or infinite,
 * gk_sgd and gk_meanfield_update write nothing (and *changed = 0): a step with
 * a bad loss updates nothing, as on the CPU, without the host having to read
 * the loss before it launches the update. */

/* PyTorch SGD, dampening 0, over n floats; lr = *lr (device):
 * d = g + wd p;  v = mom v + d;  p -= lr (nesterov ? d + mom v : v). */
int gk_sgd(float *p, float *v, const float *g, long n, const float *lr, float momentum, float weight_decay,
           int nesterov, const double *loss_guard, cudaStream_t s);

/* Algorithm 1 after the backward pass, for 3 stages of P particles, on one
 * thread block (P is small):
 *   tau_grad[s*P + order[s*P + l]] = a_l - a_{l+1} (l < P-1), a_{P-1} for the
 *     last, with a_l = dh[s*n + 1 + l] (dh per position, n = P + 1 per stage:
 *     the stage head at position 0 has no tau);
 * gk_meanfield_update, after the theta update: SGD with momentum on tau
 * (lr = *lr * lr_mult, no weight decay), clamp to [0, tau_end], then per stage
 * order = the particles sorted by (tau, particle index), and the steps
 * h_pos[s*n + 1 + l] = tau[order[l]] - tau[order[l-1]] (tau[order[-1]] = 0);
 * *changed = 1 if any order differs from before, else 0. */
int gk_meanfield_tau_grad(float *tau_grad, const int *order, const float *dh, int P, cudaStream_t s);
int gk_meanfield_update(float *tau, float *tau_velocity, const float *tau_grad, int *order, float *h_pos, int P,
                        const float *lr, float lr_mult, float momentum, int nesterov, float tau_end, int *changed,
                        const double *loss_guard, cudaStream_t s);

/* ---- data --------------------------------------------------------------------- */

/* The training batch, as the CPU loader makes it (src/data/loader.c):
 * image k of the batch is data set image perm[first + k] (bytes C x H x W, the
 * CIFAR / IDX layout), written NHWC with C_dst >= C channels (channels from C
 * on are zeros: padding for the stem's tensor cores) as lut[c * 256 + byte] after a crop at
 * offsets (oy[k'], ox[k']) in [-pad, pad] and a horizontal flip when flip[k'],
 * k' = first + k; pixels from outside the image are lut[c * 256 + 0]. Rows
 * first + k >= n_total are padding: zeros and label -1. labels[k] = the data
 * set's label of that image. */
int gk_gather_batch(gk_dtype t, void *dst, int32_t *labels, const uint8_t *images, const uint8_t *image_labels,
                    const float *lut, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                    long first, int batch, long n_total, int C, int C_dst, int H, int W, cudaStream_t s);

/* ---- layout ------------------------------------------------------------------- */

/* NCHW float32 -> NHWC of type t with C_dst >= C channels, the rest zeros
 * (input batches given by the host), and back (tests). */
int gk_nchw_to_nhwc(gk_dtype t, void *dst, const float *src, int N, int C, int C_dst, int H, int W, cudaStream_t s);
int gk_nhwc_to_nchw(gk_dtype t, float *dst, const void *src, int N, int C, int H, int W, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
