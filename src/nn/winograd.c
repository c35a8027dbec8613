/* Winograd F(4x4, 3x3) convolution (Lavin & Gray 2016) for 3x3, stride-1,
 * pad-1 layers on nChw8c activations: forward, backward-data and
 * backward-weights.
 *
 * oneDNN 2.6 has Winograd kernels only for AVX-512; on AVX2 its direct
 * kernels already run at the machine's GEMM peak, so multiplying less is the
 * only way to go faster there. F(4x4, 3x3) computes a 4x4 output tile with
 * 36 multiplies per channel pair instead of 144:
 *   Y = A^T [ sum_c (G g G^T) (.) (B^T d B) ] A
 * with d a 6x6 input tile, g the 3x3 kernel, (.) elementwise. Per position p
 * of the 6x6 transform the channel sum is a matrix product, M[p] = V[p] U[p]
 * (tiles x C times C x K), which is where the time goes.
 *
 * The tiles run in blocks of TILE_BLOCK: a block's transformed input V and
 * products M (36 x 48 x C floats each, under 0.5 MiB at 64 channels) stay in
 * the thread's cache from the input transform through the products to the
 * output transform. The products use a 6 x 16 register-blocked kernel in GCC
 * vector types (portable C; 8-float vectors, the AVX2 width).
 *
 * Backward-data is the same convolution of dY with the kernels transposed and
 * rotated by 180 degrees. Backward-weights is the adjoint of the forward:
 *   dU[p] = sum_tiles V[p]^T Z[p],  Z = A dY A^T,  dW = G^T dU G,
 * summed per thread over a fixed split of the blocks and then in thread order,
 * so a thread count gives the same bits every time.
 *
 * Numerics: the transforms' constants (up to 8 and 1/24) cost about one
 * decimal digit against direct convolution; measured relative errors are
 * ~1e-6 forward and ~1e-5 for the weight gradient in float32. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "nn/nn.h"

enum { TILE_BLOCK = 48, POS = 36, VB = 8 };

/* Built without AVX (make OPT=-O2), GCC warns that 32-byte vectors are passed
 * differently than with AVX. These vectors never cross a function boundary
 * that another translation unit sees (every helper below is static), so no ABI
 * is at stake. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec __attribute__((vector_size(VB * sizeof(float))));
typedef int ivec __attribute__((vector_size(VB * sizeof(int))));

static inline vec load(const float *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
static inline vec splat(float x) { return (vec){x, x, x, x, x, x, x, x}; }

/* B^T d over 6 values. */
static inline void input_1d(const vec d[6], vec o[6]) {
    o[0] = 4 * d[0] - 5 * d[2] + d[4];
    o[1] = -4 * (d[1] + d[2]) + d[3] + d[4];
    o[2] = 4 * (d[1] - d[2]) - d[3] + d[4];
    o[3] = 2 * (d[3] - d[1]) - d[2] + d[4];
    o[4] = 2 * (d[1] - d[3]) - d[2] + d[4];
    o[5] = 4 * d[1] - 5 * d[3] + d[5];
}
/* A^T m over 6 values -> 4. */
static inline void output_1d(const vec m[6], vec o[4]) {
    vec a = m[1] + m[2], b = m[1] - m[2], c = m[3] + m[4], d = m[3] - m[4];
    o[0] = m[0] + a + c;
    o[1] = b + 2 * d;
    o[2] = a + 4 * c;
    o[3] = b + 8 * d + m[5];
}
/* A y over 4 values -> 6 (the adjoint of output_1d). */
static inline void grad_output_1d(const vec y[4], vec o[6]) {
    o[0] = y[0];
    o[1] = y[0] + y[1] + y[2] + y[3];
    o[2] = y[0] - y[1] + y[2] - y[3];
    o[3] = y[0] + 2 * y[1] + 4 * y[2] + 8 * y[3];
    o[4] = y[0] - 2 * y[1] + 4 * y[2] - 8 * y[3];
    o[5] = y[3];
}

static const float G[6][3] = {{1.0f / 4, 0, 0},
                              {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                              {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                              {1.0f / 24, 1.0f / 12, 1.0f / 6},
                              {1.0f / 24, -1.0f / 12, 1.0f / 6},
                              {0, 0, 1}};

static inline size_t offset(int n, int c, int y, int x, int C, int H, int W) {
    return ((((size_t)n * (C / VB) + c / VB) * H + y) * W + x) * VB;
}

/* V[p][i][c] for the tiles t0 .. t0+nt-1 of x (C channels); rows up to a multiple of 6 are zeroed. */
static void transform_input(float *V, const float *x, int t0, int nt, int C, int H, int W, int TH, int TW) {
    int rows = (nt + 5) / 6 * 6;
    for (int i = 0; i < nt; i++) {
        int t = t0 + i, n = t / (TH * TW), ty = t / TW % TH, tx = t % TW;
        for (int c = 0; c < C; c += VB) {
            vec d[6][6], u[6][6];
            for (int r = 0; r < 6; r++)
                for (int s = 0; s < 6; s++) {
                    int yy = 4 * ty - 1 + r, xx = 4 * tx - 1 + s;
                    d[r][s] = yy >= 0 && yy < H && xx >= 0 && xx < W ? load(x + offset(n, c, yy, xx, C, H, W)) : splat(0);
                }
            for (int s = 0; s < 6; s++) {
                vec col[6], o[6];
                for (int r = 0; r < 6; r++) col[r] = d[r][s];
                input_1d(col, o);
                for (int r = 0; r < 6; r++) u[r][s] = o[r];
            }
            for (int r = 0; r < 6; r++) {
                vec o[6];
                input_1d(u[r], o);
                for (int s = 0; s < 6; s++) store(V + ((size_t)(r * 6 + s) * TILE_BLOCK + i) * C + c, o[s]);
            }
        }
    }
    for (int p = 0; p < POS; p++)
        memset(V + ((size_t)p * TILE_BLOCK + nt) * C, 0, (size_t)(rows - nt) * C * sizeof(float));
}

/* What the output transform adds on its way out (inference: a folded batch norm's
 * bias, the residual shortcut already in y, the ReLU). */
typedef struct epilogue {
    const float *bias;
    bool sum, relu;
} epilogue;

/* y tiles from M[p][i][k] (K channels), cropped at the map's edge. */
static void transform_output(float *y, const float *M, int t0, int nt, int K, int H, int W, int TH, int TW,
                             epilogue ep) {
    for (int i = 0; i < nt; i++) {
        int t = t0 + i, n = t / (TH * TW), ty = t / TW % TH, tx = t % TW;
        for (int k = 0; k < K; k += VB) {
            vec m[6][6], u[4][6];
            for (int p = 0; p < POS; p++) m[p / 6][p % 6] = load(M + ((size_t)p * TILE_BLOCK + i) * K + k);
            for (int s = 0; s < 6; s++) {
                vec col[6], o[4];
                for (int r = 0; r < 6; r++) col[r] = m[r][s];
                output_1d(col, o);
                for (int r = 0; r < 4; r++) u[r][s] = o[r];
            }
            for (int r = 0; r < 4; r++) {
                vec o[4];
                output_1d(u[r], o);
                int yy = 4 * ty + r;
                if (yy >= H) break;
                for (int s = 0; s < 4 && 4 * tx + s < W; s++) {
                    float *dst = y + offset(n, k, yy, 4 * tx + s, K, H, W);
                    vec v = o[s];
                    if (ep.bias) v += load(ep.bias + k);
                    if (ep.sum) v += load(dst);
                    if (ep.relu) v = (vec)((ivec)v & (ivec)(v > 0)); /* lanes of v > 0 are all-ones */
                    store(dst, v);
                }
            }
        }
    }
}

/* Z[p][i][k] = (A dY A^T)[p] for the tiles of dY (K channels); zero outside the map. */
static void transform_grad_output(float *Z, const float *dy, int t0, int nt, int K, int H, int W, int TH, int TW) {
    for (int i = 0; i < nt; i++) {
        int t = t0 + i, n = t / (TH * TW), ty = t / TW % TH, tx = t % TW;
        for (int k = 0; k < K; k += VB) {
            vec g[4][4], u[6][4];
            for (int r = 0; r < 4; r++)
                for (int s = 0; s < 4; s++) {
                    int yy = 4 * ty + r, xx = 4 * tx + s;
                    g[r][s] = yy < H && xx < W ? load(dy + offset(n, k, yy, xx, K, H, W)) : splat(0);
                }
            for (int s = 0; s < 4; s++) {
                vec col[4], o[6];
                for (int r = 0; r < 4; r++) col[r] = g[r][s];
                grad_output_1d(col, o);
                for (int r = 0; r < 6; r++) u[r][s] = o[r];
            }
            for (int r = 0; r < 6; r++) {
                vec o[6];
                grad_output_1d(u[r], o);
                for (int s = 0; s < 6; s++) store(Z + ((size_t)(r * 6 + s) * TILE_BLOCK + i) * K + k, o[s]);
            }
        }
    }
}

/* M (rows x K) = V (rows x C) U (C x K); rows a multiple of 6, K of 16. */
static void products(float *M, const float *V, const float *U, int rows, int C, int K) {
    for (int k0 = 0; k0 < K; k0 += 2 * VB)
        for (int r0 = 0; r0 < rows; r0 += 6) {
            vec a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0};
            vec a3 = {0}, b3 = {0}, a4 = {0}, b4 = {0}, a5 = {0}, b5 = {0};
            const float *v = V + (size_t)r0 * C;
            for (int c = 0; c < C; c++) {
                vec u0 = load(U + (size_t)c * K + k0), u1 = load(U + (size_t)c * K + k0 + VB), e;
                e = splat(v[c]), a0 += e * u0, b0 += e * u1;
                e = splat(v[C + c]), a1 += e * u0, b1 += e * u1;
                e = splat(v[2 * C + c]), a2 += e * u0, b2 += e * u1;
                e = splat(v[3 * C + c]), a3 += e * u0, b3 += e * u1;
                e = splat(v[4 * C + c]), a4 += e * u0, b4 += e * u1;
                e = splat(v[5 * C + c]), a5 += e * u0, b5 += e * u1;
            }
            float *m = M + (size_t)r0 * K + k0;
            store(m, a0), store(m + VB, b0), store(m + K, a1), store(m + K + VB, b1);
            store(m + 2 * K, a2), store(m + 2 * K + VB, b2), store(m + 3 * K, a3), store(m + 3 * K + VB, b3);
            store(m + 4 * K, a4), store(m + 4 * K + VB, b4), store(m + 5 * K, a5), store(m + 5 * K + VB, b5);
        }
}

/* dU (C x K) += V^T Z over `rows` rows (V rows x C, Z rows x K), for R rows of dU
 * (channels c0 .. c0+R-1) and 16 columns at a time: 2R accumulators. */
#define DEFINE_PRODUCTS_TRANSPOSED(name, R)                                                       \
    static void name(float *dU, const float *V, const float *Z, int rows, int C, int K, int c0) { \
        for (int k0 = 0; k0 < K; k0 += 2 * VB) {                                                  \
            float *d = dU + (size_t)c0 * K + k0;                                                  \
            vec a[R], b[R];                                                                       \
            for (int r = 0; r < R; r++) a[r] = load(d + r * K), b[r] = load(d + r * K + VB);      \
            for (int i = 0; i < rows; i++) {                                                      \
                const float *v = V + (size_t)i * C + c0;                                          \
                vec z0 = load(Z + (size_t)i * K + k0), z1 = load(Z + (size_t)i * K + k0 + VB);    \
                for (int r = 0; r < R; r++) {                                                     \
                    vec e = splat(v[r]);                                                          \
                    a[r] += e * z0, b[r] += e * z1;                                               \
                }                                                                                 \
            }                                                                                     \
            for (int r = 0; r < R; r++) store(d + r * K, a[r]), store(d + r * K + VB, b[r]);      \
        }                                                                                         \
    }
DEFINE_PRODUCTS_TRANSPOSED(products_transposed6, 6)
DEFINE_PRODUCTS_TRANSPOSED(products_transposed4, 4)
DEFINE_PRODUCTS_TRANSPOSED(products_transposed2, 2)

/* C a multiple of 2 (of 8 here), K of 16. */
static void products_transposed(float *dU, const float *V, const float *Z, int rows, int C, int K) {
    int c0 = 0;
    for (; c0 + 6 <= C; c0 += 6) products_transposed6(dU, V, Z, rows, C, K, c0);
    for (; c0 + 4 <= C; c0 += 4) products_transposed4(dU, V, Z, rows, C, K, c0);
    for (; c0 + 2 <= C; c0 += 2) products_transposed2(dU, V, Z, rows, C, K, c0);
}

/* ---- the layer ---- */

bool nn_winograd_supported(int C, int K, int R, int S, int stride, int pad, int block) {
    return block == VB && R == 3 && S == 3 && stride == 1 && pad == 1 && C % 16 == 0 && K % 16 == 0;
}

size_t nn_winograd_workspace_floats(int C, int K, int threads) {
    int cmax = C > K ? C : K;
    /* per thread: two tile blocks (V and M, or V and Z) and a dU accumulator */
    return (size_t)threads * (2 * (size_t)POS * TILE_BLOCK * cmax + (size_t)POS * C * K);
}

void nn_winograd_init(nn_winograd *wg, int N, int C, int H, int W, int K, float *U, float *U_data, float *workspace,
                      int threads) {
    memset(wg, 0, sizeof *wg);
    wg->N = N, wg->C = C, wg->H = H, wg->W = W, wg->K = K;
    wg->TH = (H + 3) / 4, wg->TW = (W + 3) / 4;
    wg->U = U, wg->U_data = U_data, wg->workspace = workspace, wg->threads = threads;
}

/* U[p][a][b] = (G g G^T)[p] for the 3x3 kernels g(a, b) = w[b][a] (forward:
 * a = c, b = k) or the transposed, rotated w[a][b] at (2-r, 2-s) (backward-data:
 * a = k, b = c). The kernels are first gathered into wt[a][q][b], b contiguous,
 * so the transform runs in vectors across b: once per step and layer, it is
 * small next to the convolutions only when vectorised. */
static void transform_weights(float *U, float *wt, const float *w, int C, int K, bool for_data) {
    int A = for_data ? K : C, Bn = for_data ? C : K;
#pragma omp parallel for schedule(static)
    for (int a = 0; a < A; a++)
        for (int b = 0; b < Bn; b++)
            for (int q = 0; q < 9; q++)
                wt[((size_t)a * 9 + q) * Bn + b] =
                    for_data ? w[((size_t)a * C + b) * 9 + 8 - q] : w[((size_t)b * C + a) * 9 + q];
#pragma omp parallel for schedule(static)
    for (int a = 0; a < A; a++)
        for (int b = 0; b < Bn; b += VB) {
            vec g[9], t[6][3];
            for (int q = 0; q < 9; q++) g[q] = load(wt + ((size_t)a * 9 + q) * Bn + b);
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 3; j++) t[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++)
                    store(U + ((size_t)(i * 6 + j) * A + a) * Bn + b,
                          t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2]);
        }
}

void nn_winograd_set_weights(nn_winograd *wg, const float *w) {
    transform_weights(wg->U, wg->workspace, w, wg->C, wg->K, false);
    if (wg->U_data) transform_weights(wg->U_data, wg->workspace, w, wg->C, wg->K, true);
}

/* Tiles per block: at most TILE_BLOCK, a multiple of 6, and enough blocks that
 * every thread gets the same number (a 32-image chunk of 8x8 maps has only 128
 * tiles: 3 blocks of 48 would leave a thread idle a third of the time). */
static int tiles_per_block(int T, int threads) {
    int blocks = (T + TILE_BLOCK - 1) / TILE_BLOCK;
    blocks = (blocks + threads - 1) / threads * threads;
    int tb = (T + blocks - 1) / blocks;
    tb = (tb + 5) / 6 * 6;
    return tb < TILE_BLOCK ? tb : TILE_BLOCK;
}

/* y (Co channels) = conv(x (Ci channels)) with transformed weights U [36][Ci][Co]. */
static void convolve(const nn_winograd *wg, float *y, const float *x, const float *U, int Ci, int Co, epilogue ep) {
    int T = wg->N * wg->TH * wg->TW, tb = tiles_per_block(T, wg->threads), blocks = (T + tb - 1) / tb;
    size_t per_thread = nn_winograd_workspace_floats(wg->C, wg->K, 1);
#pragma omp parallel for schedule(static) num_threads(wg->threads)
    for (int b = 0; b < blocks; b++) {
        float *V = wg->workspace + omp_get_thread_num() * per_thread;
        float *M = V + (size_t)POS * TILE_BLOCK * (wg->C > wg->K ? wg->C : wg->K);
        int t0 = b * tb, nt = T - t0 < tb ? T - t0 : tb, rows = (nt + 5) / 6 * 6;
        transform_input(V, x, t0, nt, Ci, wg->H, wg->W, wg->TH, wg->TW);
        for (int p = 0; p < POS; p++)
            products(M + (size_t)p * TILE_BLOCK * Co, V + (size_t)p * TILE_BLOCK * Ci, U + (size_t)p * Ci * Co, rows,
                     Ci, Co);
        transform_output(y, M, t0, nt, Co, wg->H, wg->W, wg->TH, wg->TW, ep);
    }
}

void nn_winograd_forward(const nn_winograd *wg, float *y, const float *x) {
    convolve(wg, y, x, wg->U, wg->C, wg->K, (epilogue){NULL, false, false});
}

void nn_winograd_forward_fused(const nn_winograd *wg, float *y, const float *x, const float *bias, bool sum,
                               bool relu) {
    convolve(wg, y, x, wg->U, wg->C, wg->K, (epilogue){bias, sum, relu});
}

void nn_winograd_backward_data(const nn_winograd *wg, float *dx, const float *dy) {
    convolve(wg, dx, dy, wg->U_data, wg->K, wg->C, (epilogue){NULL, false, false});
}

void nn_winograd_backward_weights(const nn_winograd *wg, float *dw, const float *x, const float *dy) {
    int C = wg->C, K = wg->K, T = wg->N * wg->TH * wg->TW, tb = tiles_per_block(T, wg->threads);
    int blocks = (T + tb - 1) / tb;
    size_t per_thread = nn_winograd_workspace_floats(C, K, 1), cmax = C > K ? C : K;
#pragma omp parallel num_threads(wg->threads)
    {
        /* The team may be smaller than asked for; the split and the sum follow the team. */
        int id = omp_get_thread_num(), threads = omp_get_num_threads();
        float *V = wg->workspace + id * per_thread, *Z = V + (size_t)POS * TILE_BLOCK * cmax;
        float *dU = Z + (size_t)POS * TILE_BLOCK * cmax;
        memset(dU, 0, (size_t)POS * C * K * sizeof(float));
        /* A fixed split of the blocks: thread id takes [lo, hi). */
        int lo = (int)((long)blocks * id / threads), hi = (int)((long)blocks * (id + 1) / threads);
        for (int b = lo; b < hi; b++) {
            int t0 = b * tb, nt = T - t0 < tb ? T - t0 : tb;
            transform_input(V, x, t0, nt, C, wg->H, wg->W, wg->TH, wg->TW);
            transform_grad_output(Z, dy, t0, nt, K, wg->H, wg->W, wg->TH, wg->TW);
            for (int p = 0; p < POS; p++)
                products_transposed(dU + (size_t)p * C * K, V + (size_t)p * TILE_BLOCK * C,
                                    Z + (size_t)p * TILE_BLOCK * K, nt, C, K);
        }
#pragma omp barrier
        /* dW[k][c] = G^T (sum over threads, in order, of dU[.][c][k]) G, in vectors across k;
         * the channels c split over threads. */
        const float *dU0 = wg->workspace + 2 * (size_t)POS * TILE_BLOCK * cmax;
#pragma omp for schedule(static)
        for (int c = 0; c < C; c++)
            for (int k0 = 0; k0 < K; k0 += VB) {
                vec u[POS], t[6][3];
                for (int p = 0; p < POS; p++) {
                    u[p] = load(dU0 + ((size_t)p * C + c) * K + k0);
                    for (int th = 1; th < threads; th++) u[p] += load(dU0 + th * per_thread + ((size_t)p * C + c) * K + k0);
                }
                for (int i = 0; i < 6; i++)
                    for (int q = 0; q < 3; q++) {
                        t[i][q] = splat(0);
                        for (int j = 0; j < 6; j++) t[i][q] += u[i * 6 + j] * G[j][q];
                    }
                for (int r = 0; r < 3; r++)
                    for (int q = 0; q < 3; q++) {
                        vec d = splat(0);
                        for (int i = 0; i < 6; i++) d += G[i][r] * t[i][q];
                        for (int l = 0; l < VB; l++) dw[((size_t)(k0 + l) * C + c) * 9 + r * 3 + q] = d[l];
                    }
            }
    }
}
