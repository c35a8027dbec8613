/* The GPU backend's own kernels: what cuDNN and cuBLAS do not do for us
 * (batch norm on NHWC with our rounding and running statistics, the residual
 * ends, shortcuts, the head, SGD, Algorithm 1, the batch gather). The contract,
 * with the exact semantics, is kernels.h; tests/test_gpu_kernels.c checks each
 * kernel against a double-precision reference.
 *
 * Determinism. A training run must give the same bits every time, as on the
 * CPU, so no reduction uses floating-point atomics or a grid that depends on
 * the device (its SM count): a per-channel reduction over `rows` runs on a grid
 * fixed by (rows, C) alone (red_chunks), each block writes its partial result
 * to the caller's `partials` in its own slot, and a second kernel combines the
 * partials of a channel in chunk order, in double. Each thread accumulates in
 * float over rows / chunks / RED_Y rows (32 on ResNet-20's largest map at batch
 * 128, at most 512 on ResNeXt-29's widest), short enough for float; the double
 * carries the sum over chunks. Batch statistics are Welford per thread and
 * Chan's merge above it (one pass over x, no E[x^2] - E[x]^2 cancellation).
 *
 * CUDA graphs. A captured graph keeps kernel arguments by value, so every
 * value that changes from step to step without changing the work (the step h,
 * the gradient scale, the learning rate) is passed as a device pointer and
 * read inside the kernel; sizes, eps and momentum are fixed for a plan.
 *
 * Index arithmetic. The element-wise kernels need the channel of element i
 * (i % C), and a 64-bit division costs more GPU instructions than the memory
 * access it serves; they are templates on the index type and run in 32 bits
 * whenever the arrays fit (every map of Table 1 does), 64 bits otherwise.
 *
 * Element types. Activations and their gradients are float32, or bfloat16
 * under --precision bf16 (kernels.h's gk_dtype): the kernels that touch them
 * are templates on the element type T as well (float or __nv_bfloat16), read
 * each element as a float (to_f32), compute in float32, and round once on
 * storing (from_f32: __float2bfloat16_rn, to nearest, ties to even). For T =
 * float both are plain loads and stores, so a float32 map gets the arithmetic,
 * in the order, that it got before bfloat16 existed: the same bits. Whatever
 * T, reductions accumulate in float (double across chunks), and parameters,
 * batch statistics, the head and Algorithm 1 stay float32. A copy between
 * maps of one type (shortcut A forward, gk_convert to the same type) moves
 * the elements unchanged.
 *
 * SGD rounds exactly as the CPU's mfres_sgd_update (built as ISO C11, where
 * GCC contracts no a*b+c into an FMA): __fmul_rn and __fadd_rn are never
 * fused by nvcc, so the GPU's tau after a step is the CPU's, bit for bit, and
 * Algorithm 1 sorts the blocks into the same order on either device. */
#include "gpu/kernels.h"

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

namespace {

/* ---- launch shapes --------------------------------------------------------- */

constexpr int EW_THREADS = 256;
constexpr long EW_MAX_BLOCKS = 16384; /* a grid-stride loop covers the rest */

/* Per-channel reductions: blocks of RED_X channels (one warp: consecutive
 * channels, so a row's load is coalesced) by RED_Y row groups. A map's rows
 * are cut into red_chunks(rows, C) chunks, one block row each: at least
 * RED_MIN_ROWS rows a chunk (enough work per thread), at most RED_MAX_CHUNKS,
 * and at most about RED_TARGET_BLOCKS blocks in all for wide maps, which keeps
 * the partials (2 floats per channel and chunk) under 2 * 32 *
 * RED_TARGET_BLOCKS floats whatever C. */
constexpr int RED_X = 32, RED_Y = 8;
constexpr int RED_THREADS = RED_X * RED_Y;
constexpr long RED_MIN_ROWS = 64;
constexpr int RED_MAX_CHUNKS = 512;
constexpr int RED_TARGET_BLOCKS = 1024;
constexpr int FINAL_THREADS = 256;

/* gk_dot: a grid fixed by n alone, at most DOT_BLOCKS partials. */
constexpr int DOT_THREADS = 256;
constexpr long DOT_PER_THREAD = 8;
constexpr int DOT_BLOCKS = 1024;

/* Softmax: one block; a warp per row, SM_TILE rows' results in shared memory
 * at a time, added in row order by one thread (no limit on N). */
constexpr int SM_THREADS = 256;
constexpr int SM_TILE = 256;

/* Algorithm 1: one block; tau and the sort's index array of all three stages
 * in dynamic shared memory (24 bytes per particle: 24 KiB at MF_MAX_P). */
constexpr int MF_STAGES = 3;
constexpr int MF_THREADS = 256;
constexpr int MF_MAX_P = 1024;

long ceil_div(long a, long b) { return (a + b - 1) / b; }

int red_max_chunks(int C) {
    long cblocks = C > 0 ? ceil_div(C, RED_X) : 1;
    long m = RED_TARGET_BLOCKS / cblocks;
    return (int)(m < 1 ? 1 : m > RED_MAX_CHUNKS ? RED_MAX_CHUNKS : m);
}

int red_chunks(long rows, int C) {
    long by_rows = ceil_div(rows > 0 ? rows : 1, RED_MIN_ROWS);
    long m = red_max_chunks(C);
    return (int)(by_rows < m ? by_rows : m);
}

int dot_blocks(long n) {
    long b = ceil_div(n > 0 ? n : 1, DOT_THREADS * DOT_PER_THREAD);
    return (int)(b > DOT_BLOCKS ? DOT_BLOCKS : b);
}

unsigned ew_blocks(long n) {
    long b = ceil_div(n, EW_THREADS);
    return (unsigned)(b < 1 ? 1 : b > EW_MAX_BLOCKS ? EW_MAX_BLOCKS : b);
}

/* 32-bit indices when every index a kernel forms stays below 2^31: then
 * i + the grid's stride (at most 2^22) cannot wrap an unsigned. */
bool fits32(long n) { return n >= 0 && n <= (long)INT32_MAX; }

int last_error(void) { return (int)cudaGetLastError(); }
int invalid(void) { return (int)cudaErrorInvalidValue; }

/* Launches kernel<uint32_t> or kernel<uint64_t> over n elements (the first
 * argument), choosing by `span`, the largest index the kernel forms. */
#define EW_LAUNCH(kernel, n, span, s, ...)                                                                             \
    do {                                                                                                               \
        if ((n) <= 0) return 0;                                                                                        \
        if (fits32(span))                                                                                              \
            kernel<uint32_t><<<ew_blocks(n), EW_THREADS, 0, (s)>>>((uint32_t)(n), __VA_ARGS__);                        \
        else                                                                                                           \
            kernel<uint64_t><<<ew_blocks(n), EW_THREADS, 0, (s)>>>((uint64_t)(n), __VA_ARGS__);                        \
        return last_error();                                                                                           \
    } while (0)
/* The same for a kernel on an element type: kernel<uint32_t, T> or kernel<uint64_t, T>. */
#define EW_LAUNCH_T(kernel, T, n, span, s, ...)                                                                        \
    do {                                                                                                               \
        if ((n) <= 0) return 0;                                                                                        \
        if (fits32(span))                                                                                              \
            kernel<uint32_t, T><<<ew_blocks(n), EW_THREADS, 0, (s)>>>((uint32_t)(n), __VA_ARGS__);                     \
        else                                                                                                           \
            kernel<uint64_t, T><<<ew_blocks(n), EW_THREADS, 0, (s)>>>((uint64_t)(n), __VA_ARGS__);                     \
        return last_error();                                                                                           \
    } while (0)

/* ---- element types ------------------------------------------------------------ */

using bf16 = __nv_bfloat16;

/* f(type_tag<T>{}) with T the element type that t names (float, bf16), so
 * that an entry point casts its `void *` maps to T * and launches the kernels
 * for T; an unknown t is cudaErrorInvalidValue. */
template <typename T> struct type_tag {
    using type = T;
};
template <typename F> int with_dtype(gk_dtype t, F f) {
    switch (t) {
    case GK_F32: return f(type_tag<float>{});
    case GK_BF16: return f(type_tag<bf16>{});
    }
    return invalid();
}

/* An element as float, and a float as an element: bfloat16 rounded to
 * nearest, ties to even (what gk_bf16_from_float restates on the host). */
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }

#define GRID_STRIDE(I, i, n)                                                                                           \
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (I)gridDim.x * blockDim.x)

/* ReLU that keeps NaN (max(v, 0) would hide it from the loss check). */
__device__ __forceinline__ float relu_keep_nan(float v) { return v < 0.0f ? 0.0f : v; }

/* ---- batch norm: statistics ------------------------------------------------- */

/* Chan et al.'s merge of (n, mean, M2) with (nb, mb, m2b). */
template <typename T>
__device__ __forceinline__ void chan_merge(T &n, T &m, T &m2, T nb, T mb, T m2b) {
    if (nb == T(0)) return;
    if (n == T(0)) {
        n = nb, m = mb, m2 = m2b;
        return;
    }
    T nn = n + nb, d = mb - m;
    m += d * (nb / nn);
    m2 += m2b + d * d * (n * nb / nn);
    n = nn;
}

/* Block (channel block x, chunk y): partials[y * 2C + c] = the chunk's mean of
 * channel c, partials[y * 2C + C + c] = its M2. */
template <typename T>
__global__ void __launch_bounds__(RED_THREADS)
    k_bn_stats_partial(const T *__restrict__ x, long rows, int C, long rpc, float *__restrict__ partials) {
    const int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * RED_X + tx;
    const long r0 = (long)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float n = 0.0f, m = 0.0f, m2 = 0.0f;
    if (c < C) {
#pragma unroll 4
        for (long r = r0 + ty; r < r1; r += RED_Y) {
            float v = to_f32(x[r * C + c]);
            n += 1.0f;
            float d = v - m;
            m += d / n;
            m2 += d * (v - m);
        }
    }
    __shared__ float sn[RED_Y][RED_X], sm[RED_Y][RED_X], sm2[RED_Y][RED_X];
    sn[ty][tx] = n, sm[ty][tx] = m, sm2[ty][tx] = m2;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int k = 1; k < RED_Y; k++) chan_merge(n, m, m2, sn[k][tx], sm[k][tx], sm2[k][tx]);
        float *p = partials + (size_t)blockIdx.y * 2 * C;
        p[c] = m;
        p[C + c] = m2;
    }
}

__global__ void k_bn_stats_final(const float *__restrict__ partials, int chunks, long rows, long rpc, int C, float eps,
                                 float momentum, float *mean, float *invstd, float *running_mean, float *running_var) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double n = 0.0, m = 0.0, m2 = 0.0;
    for (int b = 0; b < chunks; b++) {
        long r0 = (long)b * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
        if (r1 <= r0) continue;
        const float *p = partials + (size_t)b * 2 * C;
        chan_merge(n, m, m2, (double)(r1 - r0), (double)p[c], (double)p[C + c]);
    }
    double var = m2 / (double)rows;
    if (var < 0.0) var = 0.0;
    mean[c] = (float)m;
    invstd[c] = (float)(1.0 / sqrt(var + (double)eps));
    /* As the CPU's update_running (src/nn/batchnorm.c), in float. */
    float unbias = rows > 1 ? (float)((double)rows / (double)(rows - 1)) : 1.0f;
    if (running_mean) running_mean[c] = (1 - momentum) * running_mean[c] + momentum * (float)m;
    if (running_var) running_var[c] = (1 - momentum) * running_var[c] + momentum * (float)var * unbias;
}

/* ---- batch norm: element-wise -------------------------------------------------- */

template <typename I, typename T>
__global__ void k_bn_apply(I n, T *y, const T *x, int C, const float *mean, const float *invstd, const float *gamma,
                           const float *beta, int relu) {
    GRID_STRIDE(I, i, n) {
        int c = (int)(i % (I)C);
        float v = gamma[c] * ((to_f32(x[i]) - mean[c]) * invstd[c]) + beta[c];
        y[i] = from_f32<T>(relu ? relu_keep_nan(v) : v);
    }
}

template <typename I, typename T>
__global__ void k_bn_apply_running(I n, T *y, const T *x, int C, const float *rmean, const float *rvar, float eps,
                                   const float *gamma, const float *beta, int relu) {
    GRID_STRIDE(I, i, n) {
        int c = (int)(i % (I)C);
        float rs = 1.0f / sqrtf(rvar[c] + eps);
        float v = gamma[c] * ((to_f32(x[i]) - rmean[c]) * rs) + beta[c];
        y[i] = from_f32<T>(relu ? relu_keep_nan(v) : v);
    }
}

template <typename I, typename T>
__global__ void k_bn_residual_relu(I n, T *out, const T *shortcut, const T *t, int C, const float *mean,
                                   const float *invstd, const float *gamma, const float *beta, const float *h) {
    const float hv = *h;
    GRID_STRIDE(I, i, n) {
        int c = (int)(i % (I)C);
        float b = gamma[c] * ((to_f32(t[i]) - mean[c]) * invstd[c]) + beta[c];
        out[i] = from_f32<T>(relu_keep_nan(to_f32(shortcut[i]) + hv * b));
    }
}

template <typename I, typename T>
__global__ void k_bn_residual_relu_running(I n, T *out, const T *shortcut, const T *t, int C, const float *rmean,
                                           const float *rvar, float eps, const float *gamma, const float *beta,
                                           const float *h) {
    const float hv = *h;
    GRID_STRIDE(I, i, n) {
        int c = (int)(i % (I)C);
        float rs = 1.0f / sqrtf(rvar[c] + eps);
        float b = gamma[c] * ((to_f32(t[i]) - rmean[c]) * rs) + beta[c];
        out[i] = from_f32<T>(relu_keep_nan(to_f32(shortcut[i]) + hv * b));
    }
}

/* ---- batch norm: backward ------------------------------------------------------ */

/* partials[y * 2C + c] = the chunk's sum of dy', partials[y * 2C + C + c] =
 * its sum of dy' (x - mean) (invstd is applied once, in the final kernel). */
template <typename T>
__global__ void __launch_bounds__(RED_THREADS)
    k_bn_backward_partial(const T *__restrict__ dy, const T *__restrict__ mask, const T *__restrict__ x, long rows,
                          int C, long rpc, const float *__restrict__ mean, float *__restrict__ partials) {
    const int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * RED_X + tx;
    const long r0 = (long)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float s1 = 0.0f, s2 = 0.0f;
    if (c < C) {
        const float mu = mean[c];
#pragma unroll 4
        for (long r = r0 + ty; r < r1; r += RED_Y) {
            long i = r * C + c;
            float g = to_f32(dy[i]);
            if (mask && !(to_f32(mask[i]) > 0.0f)) g = 0.0f;
            s1 += g;
            s2 += g * (to_f32(x[i]) - mu);
        }
    }
    __shared__ float a[RED_Y][RED_X], b[RED_Y][RED_X];
    a[ty][tx] = s1, b[ty][tx] = s2;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int k = 1; k < RED_Y; k++) s1 += a[k][tx], s2 += b[k][tx];
        float *p = partials + (size_t)blockIdx.y * 2 * C;
        p[c] = s1;
        p[C + c] = s2;
    }
}

__global__ void k_bn_backward_final(const float *__restrict__ partials, int chunks, int C,
                                    const float *__restrict__ invstd, float *__restrict__ sums) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s1 = 0.0, s2 = 0.0;
    for (int b = 0; b < chunks; b++) {
        const float *p = partials + (size_t)b * 2 * C;
        s1 += p[c];
        s2 += p[C + c];
    }
    sums[c] = (float)s1;
    sums[C + c] = (float)(s2 * (double)invstd[c]);
}

__global__ void k_bn_backward_params(const float *sums, int C, const float *gamma, const float *beta,
                                     const float *scale_ptr, float *dgamma, float *dbeta, float *dh) {
    const float scale = scale_ptr ? *scale_ptr : 1.0f;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        dgamma[c] = scale * sums[C + c];
        dbeta[c] = scale * sums[c];
    }
    if (dh && blockIdx.x == 0 && threadIdx.x == 0) { /* one thread, channel order */
        float acc = 0.0f;
        for (int c = 0; c < C; c++) acc += gamma[c] * sums[C + c] + beta[c] * sums[c];
        *dh = acc;
    }
}

template <typename I, typename T>
__global__ void k_bn_backward_data(I n, T *dx, const T *dy, const T *mask, const T *x, int C, const float *mean,
                                   const float *invstd, const float *gamma, const float *sums, const float *scale_ptr,
                                   float inv_rows, int accumulate) {
    const float scale = scale_ptr ? *scale_ptr : 1.0f;
    GRID_STRIDE(I, i, n) {
        int c = (int)(i % (I)C);
        float g = to_f32(dy[i]);
        if (mask && !(to_f32(mask[i]) > 0.0f)) g = 0.0f;
        float is = invstd[c], xhat = (to_f32(x[i]) - mean[c]) * is;
        float v = scale * gamma[c] * is * (g - sums[c] * inv_rows - xhat * (sums[C + c] * inv_rows));
        dx[i] = from_f32<T>(accumulate ? to_f32(dx[i]) + v : v);
    }
}

/* ---- element-wise ------------------------------------------------------------------ */

template <typename I, typename T>
__global__ void k_relu_mask(I n, T *g, const T *mask) {
    GRID_STRIDE(I, i, n) if (!(to_f32(mask[i]) > 0.0f)) g[i] = from_f32<T>(0.0f);
}

template <typename I, typename T>
__global__ void k_add(I n, T *y, const T *x) {
    GRID_STRIDE(I, i, n) y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i]));
}

template <typename I, typename T>
__global__ void k_scale(I n, T *y, const float *scale) {
    const float sc = *scale;
    GRID_STRIDE(I, i, n) y[i] = from_f32<T>(to_f32(y[i]) * sc);
}

template <typename I, typename T>
__global__ void k_residual(I n, T *out, const T *shortcut, const T *t, const float *h) {
    const float hv = *h;
    GRID_STRIDE(I, i, n) out[i] = from_f32<T>(to_f32(shortcut[i]) + hv * to_f32(t[i]));
}

/* partials[block] = the block's sum of a[i] b[i] (a fixed tree in shared memory). */
__global__ void __launch_bounds__(DOT_THREADS)
    k_dot_partial(const float *__restrict__ a, const float *__restrict__ b, long n, float *__restrict__ partials) {
    float s = 0.0f;
    for (long i = (long)blockIdx.x * DOT_THREADS + threadIdx.x; i < n; i += (long)gridDim.x * DOT_THREADS)
        s += a[i] * b[i];
    __shared__ float buf[DOT_THREADS];
    buf[threadIdx.x] = s;
    __syncthreads();
    for (int half = DOT_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = buf[0];
}

__global__ void k_dot_final(const float *partials, int blocks, float *dot) {
    double s = 0.0;
    for (int b = 0; b < blocks; b++) s += partials[b];
    *dot = (float)s;
}

/* ---- shortcuts and pooling -------------------------------------------------------- */

/* n = N * OH * OW * 2C output elements. */
template <typename I, typename T>
__global__ void k_shortcut_a_forward(I n, T *out, const T *x, int H, int W, int C) {
    const I C2 = 2 * (I)C, OH = (I)(H / 2), OW = (I)(W / 2);
    const int lo = C / 2;
    GRID_STRIDE(I, i, n) {
        I k = i % C2, p = i / C2, ox = p % OW, q = p / OW, oy = q % OH, b = q / OH;
        int c = (int)k - lo;
        out[i] = (c >= 0 && c < C) ? x[((b * (I)H + 2 * oy) * (I)W + 2 * ox) * (I)C + (I)c] : from_f32<T>(0.0f);
    }
}

/* n = N * OH * OW * C: the output elements that came from x. */
template <typename I, typename T>
__global__ void k_shortcut_a_backward_add(I n, T *dx, const T *dout, int H, int W, int C) {
    const I OH = (I)(H / 2), OW = (I)(W / 2), lo = (I)(C / 2);
    GRID_STRIDE(I, i, n) {
        I c = i % (I)C, p = i / (I)C, ox = p % OW, q = p / OW, oy = q % OH, b = q / OH;
        T &d = dx[((b * (I)H + 2 * oy) * (I)W + 2 * ox) * (I)C + c];
        d = from_f32<T>(to_f32(d) + to_f32(dout[p * 2 * (I)C + lo + c]));
    }
}

/* n = N * C; threads on consecutive channels read consecutive addresses. */
template <typename I, typename T>
__global__ void k_avgpool_forward(I n, float *pooled, const T *x, int HW, int C) {
    GRID_STRIDE(I, i, n) {
        I c = i % (I)C, b = i / (I)C;
        const T *px = x + b * (I)HW * (I)C + c;
        float s = 0.0f;
        for (int p = 0; p < HW; p++) s += to_f32(px[(I)p * (I)C]);
        pooled[i] = s / (float)HW;
    }
}

template <typename I, typename T>
__global__ void k_avgpool_backward(I n, T *dx, const float *dpooled, int HW, int C) {
    GRID_STRIDE(I, i, n) {
        I c = i % (I)C, b = i / ((I)HW * (I)C);
        dx[i] = from_f32<T>(dpooled[b * (I)C + c] / (float)HW);
    }
}

/* ---- head ----------------------------------------------------------------------------- */

template <typename I>
__global__ void k_add_bias(I n, float *logits, const float *bias, int K) {
    GRID_STRIDE(I, i, n) logits[i] += bias[i % (I)K];
}

__global__ void k_bias_grad(float *dbias, const float *dlogits, int N, int K) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    double s = 0.0;
    for (int r = 0; r < N; r++) s += dlogits[(size_t)r * K + k];
    dbias[k] = (float)s;
}

/* One block. A warp per row: the first maximum and the sum of exponentials by
 * xor butterflies (every lane ends with the same value, so the result does not
 * depend on which lane reads it); the rows' losses go to shared memory a tile
 * at a time and thread 0 adds them in row order. */
__global__ void __launch_bounds__(SM_THREADS)
    k_softmax_xent_forward(float *probs, const float *logits, const int32_t *labels, int N, int K, double *step,
                           double *out) {
    __shared__ double s_loss[SM_TILE];
    __shared__ unsigned char s_valid[SM_TILE], s_hit[SM_TILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double loss = 0.0, valid = 0.0, correct = 0.0; /* thread 0's */
    for (int base = 0; base < N; base += SM_TILE) {
        const int rows = N - base < SM_TILE ? N - base : SM_TILE;
        for (int t = warp; t < rows; t += warps) {
            const int row = base + t;
            const float *z = logits + (size_t)row * K;
            float *p = probs + (size_t)row * K;
            float best = -INFINITY;
            int arg = INT32_MAX;
            for (int k = lane; k < K; k += 32) {
                float v = z[k];
                if (arg == INT32_MAX || v > best) best = v, arg = k;
            }
            for (int off = 16; off > 0; off /= 2) {
                float ob = __shfl_xor_sync(0xffffffffu, best, off);
                int oa = __shfl_xor_sync(0xffffffffu, arg, off);
                if (oa != INT32_MAX && (arg == INT32_MAX || ob > best || (ob == best && oa < arg))) best = ob, arg = oa;
            }
            float se = 0.0f;
            for (int k = lane; k < K; k += 32) se += expf(z[k] - best);
            for (int off = 16; off > 0; off /= 2) se += __shfl_xor_sync(0xffffffffu, se, off);
            const float inv = 1.0f / se;
            for (int k = lane; k < K; k += 32) p[k] = expf(z[k] - best) * inv;
            if (lane == 0) {
                const int y = labels[row];
                s_valid[t] = y >= 0;
                s_hit[t] = y >= 0 && arg == y;
                /* A label past the classes poisons the loss, which the caller checks. */
                s_loss[t] = y < 0 ? 0.0 : y >= K ? (double)NAN : log((double)se) - ((double)z[y] - (double)best);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0)
            for (int t = 0; t < rows; t++)
                if (s_valid[t]) loss += s_loss[t], valid += 1.0, correct += s_hit[t];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        step[0] = loss, step[1] = valid, step[2] = correct;
        out[0] += loss, out[1] += valid, out[2] += correct;
    }
}

template <typename I>
__global__ void k_softmax_xent_backward(I n, float *dlogits, const float *probs, const int32_t *labels, int K,
                                        const double *step) {
    const float inv = step[1] > 0.0 ? (float)(1.0 / step[1]) : 0.0f;
    GRID_STRIDE(I, i, n) {
        I row = i / (I)K;
        int k = (int)(i - row * (I)K), y = labels[row];
        dlogits[i] = y < 0 ? 0.0f : (probs[i] - (k == y ? 1.0f : 0.0f)) * inv;
    }
}

/* ---- optimiser and Algorithm 1 --------------------------------------------------------- */

/* mfres_sgd_update's arithmetic, each operation rounded on its own. */
__device__ __forceinline__ void sgd_one(float &p, float &v, float g, float lr, float momentum, float weight_decay,
                                        int nesterov) {
    float d = __fadd_rn(g, __fmul_rn(weight_decay, p));
    v = __fadd_rn(__fmul_rn(momentum, v), d);
    p = __fsub_rn(p, __fmul_rn(lr, nesterov ? __fadd_rn(d, __fmul_rn(momentum, v)) : v));
}

/* The update's guard (kernels.h): false when the step's loss is not finite
 * (v - v is 0 for every finite v, NaN for infinities and NaN). */
__device__ __forceinline__ bool loss_ok(const double *loss_guard) {
    if (!loss_guard) return true;
    const double v = *loss_guard;
    return v - v == 0.0;
}

template <typename I>
__global__ void k_sgd(I n, float *p, float *v, const float *g, const float *lr, float momentum, float weight_decay,
                      int nesterov, const double *loss_guard) {
    if (!loss_ok(loss_guard)) return;
    const float rate = *lr;
    GRID_STRIDE(I, i, n) {
        float pi = p[i], vi = v[i];
        sgd_one(pi, vi, g[i], rate, momentum, weight_decay, nesterov);
        p[i] = pi, v[i] = vi;
    }
}

__global__ void k_meanfield_tau_grad(float *tau_grad, const int *order, const float *dh, int P) {
    for (int i = threadIdx.x; i < MF_STAGES * P; i += blockDim.x) {
        const int s = i / P, l = i % P;
        const float *a = dh + (size_t)s * (P + 1) + 1;
        tau_grad[s * P + order[s * P + l]] = l + 1 < P ? __fsub_rn(a[l], a[l + 1]) : a[l];
    }
}

__global__ void k_meanfield_update(float *tau, float *tau_velocity, const float *tau_grad, int *order, float *h_pos,
                                   int P, const float *lr, float lr_mult, float momentum, int nesterov, float tau_end,
                                   int *changed, const double *loss_guard) {
    if (!loss_ok(loss_guard)) { /* every thread reads the same: all leave before any barrier */
        if (threadIdx.x == 0) *changed = 0;
        return;
    }
    extern __shared__ float s_mem[];
    float *s_tau = s_mem;
    int *s_sorted = (int *)(s_mem + MF_STAGES * P);
    __shared__ int s_changed[MF_STAGES];
    /* optimiser.c: the rate is the float product lr * tau_lr_mult, no weight
     * decay, then the clamp (mf_clamp: NaN stays NaN). */
    const float rate = __fmul_rn(*lr, lr_mult);
    for (int i = threadIdx.x; i < MF_STAGES * P; i += blockDim.x) {
        float p = tau[i], v = tau_velocity[i];
        sgd_one(p, v, tau_grad[i], rate, momentum, 0.0f, nesterov);
        p = p < 0.0f ? 0.0f : p > tau_end ? tau_end : p;
        tau[i] = p, tau_velocity[i] = v, s_tau[i] = p;
    }
    __syncthreads();
    if (threadIdx.x < MF_STAGES) { /* mf_sort and mf_steps, a thread per stage */
        const int s = threadIdx.x;
        const float *t = s_tau + s * P;
        int *sorted = s_sorted + s * P, *ord = order + s * P;
        for (int i = 0; i < P; i++) sorted[i] = i;
        for (int i = 1; i < P; i++) {
            int p = sorted[i], j = i - 1;
            while (j >= 0 && t[sorted[j]] > t[p]) {
                sorted[j + 1] = sorted[j];
                j--;
            }
            sorted[j + 1] = p;
        }
        int ch = 0;
        float prev = 0.0f;
        float *h = h_pos + (size_t)s * (P + 1) + 1;
        for (int l = 0; l < P; l++) {
            ch |= ord[l] != sorted[l];
            ord[l] = sorted[l];
            h[l] = t[sorted[l]] - prev;
            prev = t[sorted[l]];
        }
        s_changed[s] = ch;
    }
    __syncthreads();
    if (threadIdx.x == 0) *changed = (s_changed[0] | s_changed[1] | s_changed[2]) != 0;
}

/* ---- data and layout ------------------------------------------------------------------ */

/* n = batch * H * W * C destination elements; prepare_image of
 * src/data/loader.c, element by element. */
template <typename I, typename T>
__global__ void k_gather_batch(I n, T *dst, int32_t *labels, const uint8_t *images, const uint8_t *image_labels,
                               const float *lut, const uint32_t *perm, const int8_t *oy, const int8_t *ox,
                               const uint8_t *flip, long first, int batch, long n_total, int C, int C_dst, int H,
                               int W) {
    GRID_STRIDE(I, i, n) {
        I c = i % (I)C_dst, q = i / (I)C_dst;
        const int x = (int)(q % (I)W);
        q /= (I)W;
        const int y = (int)(q % (I)H);
        const long pos = first + (long)(q / (I)H);
        float v = 0.0f;
        if (pos < n_total && c < (I)C) {
            const float *t = lut + c * 256;
            const int sy = y + oy[pos], sx = (flip[pos] ? W - 1 - x : x) + ox[pos];
            if (sy < 0 || sy >= H || sx < 0 || sx >= W)
                v = t[0]; /* raw 0, normalised */
            else
                v = t[images[((size_t)perm[pos] * C + (size_t)c) * H * W + (size_t)sy * W + sx]];
        }
        dst[i] = from_f32<T>(v);
    }
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < batch; k += (long)gridDim.x * blockDim.x) {
        const long pos = first + k;
        labels[k] = pos < n_total ? (int32_t)image_labels[perm[pos]] : -1;
    }
}

/* float32 NCHW -> NHWC of type T, and back. */
template <typename I, typename T>
__global__ void k_nchw_to_nhwc(I n, T *dst, const float *src, int C, int C_dst, int H, int W) {
    GRID_STRIDE(I, i, n) {
        I c = i % (I)C_dst, q = i / (I)C_dst, x = q % (I)W;
        q /= (I)W;
        I y = q % (I)H, b = q / (I)H;
        dst[i] = c < (I)C ? from_f32<T>(src[((b * (I)C + c) * (I)H + y) * (I)W + x]) : from_f32<T>(0.0f);
    }
}

template <typename I, typename T>
__global__ void k_nhwc_to_nchw(I n, float *dst, const T *src, int C, int H, int W) {
    GRID_STRIDE(I, i, n) {
        I x = i % (I)W, q = i / (I)W, y = q % (I)H;
        q /= (I)H;
        I c = q % (I)C, b = q / (I)C;
        dst[i] = to_f32(src[((b * (I)H + y) * (I)W + x) * (I)C + c]);
    }
}

/* dst[i] = src[i] as a D: rounded once from bfloat16's float, or unchanged
 * between arrays of one type (a bfloat16 NaN keeps its bits). */
template <typename I, typename D, typename S>
__global__ void k_convert_channels(I n, D *dst, int dst_c, const S *src, int src_c, int c) {
    GRID_STRIDE(I, i, n) {
        const I r = i / (I)dst_c, j = i - r * (I)dst_c;
        if (j >= (I)c)
            dst[i] = from_f32<D>(0.0f);
        else if constexpr (std::is_same<D, S>::value)
            dst[i] = src[r * (I)src_c + j];
        else
            dst[i] = from_f32<D>(to_f32(src[r * (I)src_c + j]));
    }
}

} /* namespace */

/* ---- the C interface ------------------------------------------------------------------ */

/* The largest reduction grid for C channels (2 floats per channel and chunk),
 * then room for gk_dot's partials: at most 65536 + 1024 floats for any C. */
size_t gk_partials_floats(int C) {
    size_t c = C > 0 ? (size_t)C : 0;
    return 2 * c * (size_t)red_max_chunks(C) + DOT_BLOCKS;
}

/* Each entry point on activations runs its body for T, the element type
 * that its gk_dtype names (with_dtype: an unknown one is
 * cudaErrorInvalidValue before anything else is looked at). */

/* A conversion is the channel conversion of n rows of one channel. */
int gk_convert(gk_dtype dst_t, void *dst, gk_dtype src_t, const void *src, long n, cudaStream_t s) {
    return gk_convert_channels(dst_t, dst, 1, src_t, src, 1, n, 1, s);
}

int gk_convert_channels(gk_dtype dst_t, void *dst, int dst_c, gk_dtype src_t, const void *src, int src_c, long rows,
                        int c, cudaStream_t s) {
    return with_dtype(dst_t, [&](auto dtag) {
        using D = typename decltype(dtag)::type;
        return with_dtype(src_t, [&](auto stag) {
            using S = typename decltype(stag)::type;
            if (rows < 0 || c < 0 || c > dst_c || c > src_c) return invalid();
            const long n = rows * dst_c, span = rows * (dst_c > src_c ? dst_c : src_c);
            if (n <= 0) return 0;
            if (fits32(span))
                k_convert_channels<uint32_t, D, S><<<ew_blocks(n), EW_THREADS, 0, s>>>((uint32_t)n, (D *)dst, dst_c,
                                                                                       (const S *)src, src_c, c);
            else
                k_convert_channels<uint64_t, D, S><<<ew_blocks(n), EW_THREADS, 0, s>>>((uint64_t)n, (D *)dst, dst_c,
                                                                                       (const S *)src, src_c, c);
            return last_error();
        });
    });
}

int gk_bn_stats(gk_dtype t, const void *x, long rows, int C, float eps, float momentum, float *mean, float *invstd,
                float *running_mean, float *running_var, float *partials, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (rows <= 0 || C <= 0) return invalid();
        const int chunks = red_chunks(rows, C);
        const long rpc = ceil_div(rows, chunks);
        k_bn_stats_partial<T><<<dim3((unsigned)ceil_div(C, RED_X), (unsigned)chunks), dim3(RED_X, RED_Y), 0, s>>>(
            (const T *)x, rows, C, rpc, partials);
        int e = last_error();
        if (e) return e;
        k_bn_stats_final<<<(unsigned)ceil_div(C, FINAL_THREADS), FINAL_THREADS, 0, s>>>(
            partials, chunks, rows, rpc, C, eps, momentum, mean, invstd, running_mean, running_var);
        return last_error();
    });
}

int gk_bn_apply(gk_dtype t, void *y, const void *x, long rows, int C, const float *mean, const float *invstd,
                const float *gamma, const float *beta, int relu, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (C <= 0) return rows <= 0 ? 0 : invalid();
        const long n = rows * C;
        EW_LAUNCH_T(k_bn_apply, T, n, n, s, (T *)y, (const T *)x, C, mean, invstd, gamma, beta, relu);
    });
}

int gk_bn_apply_running(gk_dtype t, void *y, const void *x, long rows, int C, const float *running_mean,
                        const float *running_var, float eps, const float *gamma, const float *beta, int relu,
                        cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (C <= 0) return rows <= 0 ? 0 : invalid();
        const long n = rows * C;
        EW_LAUNCH_T(k_bn_apply_running, T, n, n, s, (T *)y, (const T *)x, C, running_mean, running_var, eps, gamma,
                    beta, relu);
    });
}

int gk_bn_residual_relu(gk_dtype dt, void *out, const void *shortcut, const void *t, long rows, int C,
                        const float *mean, const float *invstd, const float *gamma, const float *beta, const float *h,
                        cudaStream_t s) {
    return with_dtype(dt, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (C <= 0) return rows <= 0 ? 0 : invalid();
        const long n = rows * C;
        EW_LAUNCH_T(k_bn_residual_relu, T, n, n, s, (T *)out, (const T *)shortcut, (const T *)t, C, mean, invstd,
                    gamma, beta, h);
    });
}

int gk_bn_residual_relu_running(gk_dtype dt, void *out, const void *shortcut, const void *t, long rows, int C,
                                const float *running_mean, const float *running_var, float eps, const float *gamma,
                                const float *beta, const float *h, cudaStream_t s) {
    return with_dtype(dt, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (C <= 0) return rows <= 0 ? 0 : invalid();
        const long n = rows * C;
        EW_LAUNCH_T(k_bn_residual_relu_running, T, n, n, s, (T *)out, (const T *)shortcut, (const T *)t, C,
                    running_mean, running_var, eps, gamma, beta, h);
    });
}

int gk_bn_backward_reduce(gk_dtype t, const void *dy, const void *mask, const void *x, long rows, int C,
                          const float *mean, const float *invstd, float *sums, float *partials, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (rows < 0 || C <= 0) return invalid();
        const int chunks = red_chunks(rows, C);
        const long rpc = ceil_div(rows > 0 ? rows : 1, chunks);
        k_bn_backward_partial<T><<<dim3((unsigned)ceil_div(C, RED_X), (unsigned)chunks), dim3(RED_X, RED_Y), 0, s>>>(
            (const T *)dy, (const T *)mask, (const T *)x, rows, C, rpc, mean, partials);
        int e = last_error();
        if (e) return e;
        k_bn_backward_final<<<(unsigned)ceil_div(C, FINAL_THREADS), FINAL_THREADS, 0, s>>>(partials, chunks, C,
                                                                                           invstd, sums);
        return last_error();
    });
}

int gk_bn_backward_params(const float *sums, int C, const float *gamma, const float *beta, const float *scale_ptr,
                          float *dgamma, float *dbeta, float *dh, cudaStream_t s) {
    if (C <= 0) return invalid();
    k_bn_backward_params<<<(unsigned)ceil_div(C, FINAL_THREADS), FINAL_THREADS, 0, s>>>(sums, C, gamma, beta, scale_ptr,
                                                                                        dgamma, dbeta, dh);
    return last_error();
}

int gk_bn_backward_data(gk_dtype t, void *dx, const void *dy, const void *mask, const void *x, long rows, int C,
                        const float *mean, const float *invstd, const float *gamma, const float *sums,
                        const float *scale_ptr, int accumulate, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (C <= 0) return rows <= 0 ? 0 : invalid();
        const long n = rows * C;
        const float inv_rows = rows > 0 ? (float)(1.0 / (double)rows) : 0.0f;
        EW_LAUNCH_T(k_bn_backward_data, T, n, n, s, (T *)dx, (const T *)dy, (const T *)mask, (const T *)x, C, mean,
                    invstd, gamma, sums, scale_ptr, inv_rows, accumulate);
    });
}

int gk_relu_mask(gk_dtype t, void *g, const void *mask, long n, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        EW_LAUNCH_T(k_relu_mask, T, n, n, s, (T *)g, (const T *)mask);
    });
}

int gk_add(gk_dtype t, void *y, const void *x, long n, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        EW_LAUNCH_T(k_add, T, n, n, s, (T *)y, (const T *)x);
    });
}

int gk_scale(gk_dtype t, void *y, const float *scale, long n, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        EW_LAUNCH_T(k_scale, T, n, n, s, (T *)y, scale);
    });
}

int gk_residual(gk_dtype dt, void *out, const void *shortcut, const void *t, const float *h, long n, cudaStream_t s) {
    return with_dtype(dt, [&](auto tag) {
        using T = typename decltype(tag)::type;
        EW_LAUNCH_T(k_residual, T, n, n, s, (T *)out, (const T *)shortcut, (const T *)t, h);
    });
}

int gk_dot(const float *a, const float *b, long n, float *dot, float *partials, cudaStream_t s) {
    if (n < 0) return invalid();
    const int blocks = dot_blocks(n);
    k_dot_partial<<<(unsigned)blocks, DOT_THREADS, 0, s>>>(a, b, n, partials);
    int e = last_error();
    if (e) return e;
    k_dot_final<<<1, 1, 0, s>>>(partials, blocks, dot);
    return last_error();
}

int gk_shortcut_a_forward(gk_dtype t, void *out, const void *x, int N, int H, int W, int C, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (N < 0 || H < 0 || W < 0 || C < 0) return invalid();
        const long n_out = (long)N * (H / 2) * (W / 2) * 2 * C, n_x = (long)N * H * W * C;
        EW_LAUNCH_T(k_shortcut_a_forward, T, n_out, n_x > n_out ? n_x : n_out, s, (T *)out, (const T *)x, H, W, C);
    });
}

int gk_shortcut_a_backward_add(gk_dtype t, void *dx, const void *dout, int N, int H, int W, int C, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (N < 0 || H < 0 || W < 0 || C < 0) return invalid();
        const long n = (long)N * (H / 2) * (W / 2) * C, n_x = (long)N * H * W * C;
        EW_LAUNCH_T(k_shortcut_a_backward_add, T, n, n_x > 2 * n ? n_x : 2 * n, s, (T *)dx, (const T *)dout, H, W, C);
    });
}

int gk_avgpool_forward(gk_dtype t, float *pooled, const void *x, int N, int HW, int C, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (N < 0 || C < 0 || HW <= 0) return invalid();
        const long n = (long)N * C;
        EW_LAUNCH_T(k_avgpool_forward, T, n, n * HW, s, pooled, (const T *)x, HW, C);
    });
}

int gk_avgpool_backward(gk_dtype t, void *dx, const float *dpooled, int N, int HW, int C, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (N < 0 || C < 0 || HW < 0) return invalid();
        const long n = (long)N * HW * C;
        EW_LAUNCH_T(k_avgpool_backward, T, n, n, s, (T *)dx, dpooled, HW, C);
    });
}

int gk_add_bias(float *logits, const float *bias, int N, int K, cudaStream_t s) {
    if (N < 0 || K < 0) return invalid();
    const long n = (long)N * K;
    EW_LAUNCH(k_add_bias, n, n, s, logits, bias, K);
}

int gk_bias_grad(float *dbias, const float *dlogits, int N, int K, cudaStream_t s) {
    if (N < 0 || K < 0) return invalid();
    if (K == 0) return 0;
    k_bias_grad<<<(unsigned)ceil_div(K, FINAL_THREADS), FINAL_THREADS, 0, s>>>(dbias, dlogits, N, K);
    return last_error();
}

int gk_softmax_xent_forward(float *probs, const float *logits, const int32_t *labels, int N, int K, double *step,
                            double *out, cudaStream_t s) {
    if (N < 0 || K <= 0) return invalid();
    k_softmax_xent_forward<<<1, SM_THREADS, 0, s>>>(probs, logits, labels, N, K, step, out);
    return last_error();
}

int gk_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *labels, int N, int K,
                             const double *step, cudaStream_t s) {
    if (N < 0 || K <= 0) return invalid();
    const long n = (long)N * K;
    EW_LAUNCH(k_softmax_xent_backward, n, n, s, dlogits, probs, labels, K, step);
}

int gk_sgd(float *p, float *v, const float *g, long n, const float *lr, float momentum, float weight_decay,
           int nesterov, const double *loss_guard, cudaStream_t s) {
    EW_LAUNCH(k_sgd, n, n, s, p, v, g, lr, momentum, weight_decay, nesterov, loss_guard);
}

int gk_meanfield_tau_grad(float *tau_grad, const int *order, const float *dh, int P, cudaStream_t s) {
    if (P < 0 || P > MF_MAX_P) return invalid();
    if (P == 0) return 0;
    k_meanfield_tau_grad<<<1, MF_THREADS, 0, s>>>(tau_grad, order, dh, P);
    return last_error();
}

int gk_meanfield_update(float *tau, float *tau_velocity, const float *tau_grad, int *order, float *h_pos, int P,
                        const float *lr, float lr_mult, float momentum, int nesterov, float tau_end, int *changed,
                        const double *loss_guard, cudaStream_t s) {
    if (P < 0 || P > MF_MAX_P) return invalid();
    const size_t shared = (size_t)MF_STAGES * P * (sizeof(float) + sizeof(int));
    k_meanfield_update<<<1, MF_THREADS, shared, s>>>(tau, tau_velocity, tau_grad, order, h_pos, P, lr, lr_mult,
                                                     momentum, nesterov, tau_end, changed, loss_guard);
    return last_error();
}

int gk_gather_batch(gk_dtype t, void *dst, int32_t *labels, const uint8_t *images, const uint8_t *image_labels,
                    const float *lut, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                    long first, int batch, long n_total, int C, int C_dst, int H, int W, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (first < 0 || batch < 0 || C <= 0 || C_dst < C || H <= 0 || W <= 0) return invalid();
        const long n = (long)batch * C_dst * H * W;
        EW_LAUNCH_T(k_gather_batch, T, n, n, s, (T *)dst, labels, images, image_labels, lut, perm, oy, ox, flip, first,
                    batch, n_total, C, C_dst, H, W);
    });
}

int gk_nchw_to_nhwc(gk_dtype t, void *dst, const float *src, int N, int C, int C_dst, int H, int W, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (N < 0 || C < 0 || C_dst < C || H < 0 || W < 0) return invalid();
        const long n = (long)N * C_dst * H * W;
        EW_LAUNCH_T(k_nchw_to_nhwc, T, n, n, s, (T *)dst, src, C, C_dst, H, W);
    });
}

int gk_nhwc_to_nchw(gk_dtype t, float *dst, const void *src, int N, int C, int H, int W, cudaStream_t s) {
    return with_dtype(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (N < 0 || C < 0 || H < 0 || W < 0) return invalid();
        const long n = (long)N * C * H * W;
        EW_LAUNCH_T(k_nhwc_to_nchw, T, n, n, s, dst, (const T *)src, C, H, W);
    });
}
