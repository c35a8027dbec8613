/* Every fast-path layer (src/nn/nn.h: oneDNN and the OpenMP loops) against
 * its double-precision reference kernel (src/nn/ref.h), forward and backward,
 * on the layouts the model uses (blocked nChw{8,16}c activations, plain NCHW
 * input). The reference kernels are themselves checked against finite
 * differences in test_ref_kernels.c. */
#include <stdlib.h>
#include <string.h>

#include "nn/nn.h"
#include "nn/ref.h"
#include "testutil.h"

static nn_ctx ctx;
static void setup(void) { ck_assert_ok(nn_ctx_init(&ctx)); }
static void teardown(void) { nn_ctx_free(&ctx); }

static double *randn(size_t n, uint64_t seed) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    double *x = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) x[i] = mfres_rng_normal(&rng);
    return x;
}

static size_t blocked_index(int n, int c, int hw, int C, int HW, int B) {
    return (((size_t)n * (C / B) + c / B) * HW + hw) * B + c % B;
}
/* NCHW double -> nChw{B}c float, and back; without B, the machine's block. */
static float *to_blocked_b(const double *x, int N, int C, int HW, int B) {
    float *y = mfres_alloc((size_t)N * C * HW * sizeof(float), "test");
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) y[blocked_index(n, c, p, C, HW, B)] = (float)x[((size_t)n * C + c) * HW + p];
    return y;
}
static double *from_blocked_b(const float *y, int N, int C, int HW, int B) {
    double *x = malloc((size_t)N * C * HW * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) x[((size_t)n * C + c) * HW + p] = y[blocked_index(n, c, p, C, HW, B)];
    return x;
}
static float *to_blocked(const double *x, int N, int C, int HW) { return to_blocked_b(x, N, C, HW, ctx.block); }
static double *from_blocked(const float *y, int N, int C, int HW) { return from_blocked_b(y, N, C, HW, ctx.block); }
static float *to_float(const double *x, size_t n) {
    float *y = mfres_alloc(n * sizeof(float), "test");
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}
static double *to_double(const float *y, size_t n) {
    double *x = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) x[i] = y[i];
    return x;
}
#define ASSERT_CLOSE(what, got, want, n, tol)                                          \
    do {                                                                               \
        double err_ = test_rel_err_f64(got, want, n);                                  \
        ck_assert_msg(err_ <= (tol), "%s: relative error %.3g > %.1g", what, err_, (double)(tol)); \
    } while (0)

/* ---- convolution ---- */
static void check_conv(int N, int C, int H, int W, int K, int R, int stride, int pad, bool plain_src) {
    int OH = (H + 2 * pad - R) / stride + 1, OW = (W + 2 * pad - R) / stride + 1;
    size_t n_in = (size_t)N * C * H * W, n_out = (size_t)N * K * OH * OW, n_w = (size_t)K * C * R * R;
    double *x = randn(n_in, 1), *w = randn(n_w, 2), *dy = randn(n_out, 3);
    dnnl_memory_desc_t md_in = plain_src ? nn_md_nchw(N, C, H, W) : nn_md_blocked(&ctx, N, C, H, W);
    dnnl_memory_desc_t md_out = nn_md_blocked(&ctx, N, K, OH, OW);
    nn_conv2d conv;
    ck_assert_ok(nn_conv2d_init(&conv, &ctx, N, C, H, W, K, R, R, stride, pad, &md_in, &md_out, !plain_src));
    /* No pass may fall to oneDNN's reference kernel (hundreds of times slower): on AVX2 a
     * 1-channel plain input's backward-weights does unless the layer works around it. */
    for (int p = 0; p < 4; p++) ck_assert_msg(strncmp(conv.impl[p], "ref", 3), "pass %d runs on %s", p, conv.impl[p]);
    float *xf = plain_src ? to_float(x, n_in) : to_blocked(x, N, C, H * W), *wf = to_float(w, n_w);
    float *dwf = mfres_alloc(n_w * sizeof(float), "test"), *yf = mfres_alloc(n_out * sizeof(float), "test");
    float *dyf = to_blocked(dy, N, K, OH * OW), *dxf = mfres_alloc(n_in * sizeof(float), "test");
    dnnl_memory_t mx, my, mdy, mdx;
    ck_assert_ok(nn_memory_wrap(&mx, &ctx, &md_in, xf));
    ck_assert_ok(nn_memory_wrap(&my, &ctx, &md_out, yf));
    ck_assert_ok(nn_memory_wrap(&mdy, &ctx, &md_out, dyf));
    ck_assert_ok(nn_memory_wrap(&mdx, &ctx, &md_in, dxf));
    nn_conv2d_bind(&conv, wf, dwf);
    ck_assert_ok(nn_conv2d_prepare(&conv, &ctx));
    ck_assert_ok(nn_conv2d_forward(&conv, &ctx, my, mx));
    ck_assert_ok(nn_conv2d_backward_weights(&conv, &ctx, mx, mdy));

    double *y = calloc(n_out, sizeof(double)), *dw = calloc(n_w, sizeof(double)), *dx = calloc(n_in, sizeof(double));
    ref_conv2d_forward(y, x, w, N, C, H, W, K, R, R, stride, pad);
    ref_conv2d_backward_weights(dw, dy, x, N, C, H, W, K, R, R, stride, pad);
    double *yg = from_blocked(yf, N, K, OH * OW), *dwg = to_double(dwf, n_w);
    ASSERT_CLOSE("conv forward", yg, y, n_out, 2e-5);
    ASSERT_CLOSE("conv backward weights", dwg, dw, n_w, 2e-5);
    if (!plain_src) {
        ck_assert_ok(nn_conv2d_backward_data(&conv, &ctx, mdx, mdy));
        ref_conv2d_backward_data(dx, dy, w, N, C, H, W, K, R, R, stride, pad);
        double *dxg = from_blocked(dxf, N, C, H * W);
        ASSERT_CLOSE("conv backward data", dxg, dx, n_in, 2e-5);
        free(dxg);
    }
    dnnl_memory_destroy(mx), dnnl_memory_destroy(my), dnnl_memory_destroy(mdy), dnnl_memory_destroy(mdx);
    nn_conv2d_free(&conv);
    mfres_free(xf), mfres_free(wf), mfres_free(dwf), mfres_free(yf), mfres_free(dyf), mfres_free(dxf);
    free(x), free(w), free(dy), free(y), free(dw), free(dx), free(yg), free(dwg);
}
START_TEST(conv3x3_stride1) { check_conv(4, 16, 12, 10, 32, 3, 1, 1, false); }
END_TEST
/* Equal channel counts: the shapes where nn_conv_algorithm picks Winograd on AVX-512 machines. */
START_TEST(conv3x3_stride1_16_channels) { check_conv(4, 16, 12, 12, 16, 3, 1, 1, false); }
END_TEST
START_TEST(conv3x3_stride1_32_channels) { check_conv(3, 32, 8, 8, 32, 3, 1, 1, false); }
END_TEST

/* ---- our Winograd F(4x4, 3x3) on nChw8c (winograd.c), on any machine ---- */
static void check_winograd(int N, int C, int H, int W, int K) {
    size_t n_in = (size_t)N * C * H * W, n_out = (size_t)N * K * H * W, n_w = (size_t)K * C * 9;
    double *x = randn(n_in, 31), *w = randn(n_w, 32), *dy = randn(n_out, 33);
    double *y = calloc(n_out, 8), *dx = calloc(n_in, 8), *dw = calloc(n_w, 8);
    ref_conv2d_forward(y, x, w, N, C, H, W, K, 3, 3, 1, 1);
    ref_conv2d_backward_data(dx, dy, w, N, C, H, W, K, 3, 3, 1, 1);
    ref_conv2d_backward_weights(dw, dy, x, N, C, H, W, K, 3, 3, 1, 1);
    int threads = 3; /* more than the machine's cores: the team may be smaller */
    float *U = mfres_alloc((size_t)36 * C * K * 4, "t"), *U_data = mfres_alloc((size_t)36 * C * K * 4, "t");
    float *ws = mfres_alloc(nn_winograd_workspace_floats(C, K, threads) * 4, "t");
    float *xf = to_blocked_b(x, N, C, H * W, 8), *dyf = to_blocked_b(dy, N, K, H * W, 8), *wf = to_float(w, n_w);
    float *yf = mfres_alloc(n_out * 4, "t"), *dxf = mfres_alloc(n_in * 4, "t"), *dwf = mfres_alloc(n_w * 4, "t");
    nn_winograd wg;
    nn_winograd_init(&wg, N, C, H, W, K, U, U_data, ws, threads);
    nn_winograd_set_weights(&wg, wf);
    nn_winograd_forward(&wg, yf, xf);
    nn_winograd_backward_data(&wg, dxf, dyf);
    nn_winograd_backward_weights(&wg, dwf, xf, dyf);
    double *yg = from_blocked_b(yf, N, K, H * W, 8), *dxg = from_blocked_b(dxf, N, C, H * W, 8), *dwg = to_double(dwf, n_w);
    /* F(4x4, 3x3) in float: ~1e-6 measured; direct convolution reaches ~1e-7 */
    ASSERT_CLOSE("winograd forward", yg, y, n_out, 1e-5);
    ASSERT_CLOSE("winograd backward data", dxg, dx, n_in, 1e-5);
    ASSERT_CLOSE("winograd backward weights", dwg, dw, n_w, 1e-5);
    free(x), free(w), free(dy), free(y), free(dx), free(dw), free(yg), free(dxg), free(dwg);
    mfres_free(U), mfres_free(U_data), mfres_free(ws), mfres_free(xf), mfres_free(dyf), mfres_free(wf);
    mfres_free(yf), mfres_free(dxf), mfres_free(dwf);
}
START_TEST(winograd_16_channels) { check_winograd(3, 16, 12, 12, 16); }
END_TEST
/* C != K, a non-square map, and 7x7 (the last 4x4 tiles cropped), many tile blocks */
START_TEST(winograd_uneven_shapes) {
    check_winograd(2, 32, 8, 12, 16);
    check_winograd(5, 16, 7, 7, 32);
    check_winograd(40, 16, 8, 8, 16);
}
END_TEST

/* ---- inference convolution: bias, then sum and ReLU post-ops ---- */
static void check_conv_infer(int N, int C, int H, int K, int stride, bool sum, bool relu) {
    int OH = (H + 2 - 3) / stride + 1;
    size_t n_in = (size_t)N * C * H * H, n_out = (size_t)N * K * OH * OH, n_w = (size_t)K * C * 9;
    double *x = randn(n_in, 11), *w = randn(n_w, 12), *b = randn(K, 13), *prior = randn(n_out, 14);
    dnnl_memory_desc_t md_in = nn_md_blocked(&ctx, N, C, H, H), md_out = nn_md_blocked(&ctx, N, K, OH, OH);
    nn_conv2d_infer conv;
    ck_assert_ok(nn_conv2d_infer_init(&conv, &ctx, C, H, H, K, 3, 3, stride, 1, &md_in, &md_out, sum, relu));
    float *xf = to_blocked(x, N, C, H * H), *wf = to_float(w, n_w), *bf = to_float(b, K);
    float *yf = to_blocked(prior, N, K, OH * OH);
    dnnl_memory_t mx, my;
    ck_assert_ok(nn_memory_wrap(&mx, &ctx, &md_in, xf));
    ck_assert_ok(nn_memory_wrap(&my, &ctx, &md_out, yf));
    ck_assert_ok(nn_conv2d_infer_set_weights(&conv, &ctx, wf, bf));
    ck_assert_ok(nn_conv2d_infer_forward(&conv, &ctx, my, mx));
    double *y = calloc(n_out, sizeof(double));
    ref_conv2d_forward(y, x, w, N, C, H, H, K, 3, 3, stride, 1);
    int HW = OH * OH;
    for (size_t i = 0; i < n_out; i++) {
        double v = y[i] + b[(i / HW) % K] + (sum ? prior[i] : 0.0);
        y[i] = relu && v < 0 ? 0.0 : v;
    }
    double *yg = from_blocked(yf, N, K, HW);
    ASSERT_CLOSE("inference convolution", yg, y, n_out, 2e-5);
    dnnl_memory_destroy(mx), dnnl_memory_destroy(my);
    nn_conv2d_infer_free(&conv);
    mfres_free(xf), mfres_free(wf), mfres_free(bf), mfres_free(yf);
    free(x), free(w), free(b), free(prior), free(y), free(yg);
}
START_TEST(conv_infer_relu_16_channels) { check_conv_infer(4, 16, 12, 16, 1, false, true); }
END_TEST
START_TEST(conv_infer_sum_relu_16_channels) { check_conv_infer(4, 16, 12, 16, 1, true, true); }
END_TEST
START_TEST(conv_infer_sum_relu_32_channels) { check_conv_infer(3, 32, 8, 32, 1, true, true); }
END_TEST
START_TEST(conv_infer_sum_stride2) { check_conv_infer(3, 16, 8, 32, 2, true, false); }
END_TEST
START_TEST(conv_infer_bias_only) { check_conv_infer(2, 32, 8, 32, 1, false, false); }
END_TEST
START_TEST(conv3x3_stride2) { check_conv(4, 16, 12, 12, 32, 3, 2, 1, false); }
END_TEST
START_TEST(conv1x1_stride1) { check_conv(3, 32, 8, 8, 16, 1, 1, 0, false); }
END_TEST
START_TEST(conv1x1_stride2) { check_conv(3, 16, 8, 8, 32, 1, 2, 0, false); }
END_TEST
START_TEST(conv3x3_plain_input) { check_conv(4, 3, 16, 16, 16, 3, 1, 1, true); }
END_TEST
START_TEST(conv3x3_plain_input_1_channel) { check_conv(4, 1, 12, 12, 16, 3, 1, 1, true); }
END_TEST

/* ---- batch norm (+ fused ReLU) ---- */
static void check_batchnorm(bool relu) {
    int N = 4, C = 32, H = 6, W = 5, HW = H * W;
    size_t n = (size_t)N * C * HW;
    double *x = randn(n, 4), *dy = randn(n, 5), *g = randn(C, 6), *b = randn(C, 7);
    for (size_t i = 0; i < n; i++) x[i] = 0.5 + 2.0 * x[i];
    dnnl_memory_desc_t md = nn_md_blocked(&ctx, N, C, H, W);
    nn_batchnorm bn;
    ck_assert_ok(nn_batchnorm_init(&bn, &ctx, N, C, H, W, relu, 1e-5f, &md));
    float *xf = to_blocked(x, N, C, HW), *yf = mfres_alloc(n * 4, "t"), *dyf = to_blocked(dy, N, C, HW);
    float *dxf = mfres_alloc(n * 4, "t"), *gf = to_float(g, C), *bf = to_float(b, C);
    float *dg = mfres_alloc(C * 4, "t"), *db = mfres_alloc(C * 4, "t"), *rm = mfres_alloc(C * 4, "t");
    float *rv = mfres_alloc(C * 4, "t"), *mean = mfres_alloc(C * 4, "t"), *var = mfres_alloc(C * 4, "t");
    void *ws = mfres_alloc(bn.workspace_bytes + 1, "t");
    for (int c = 0; c < C; c++) rv[c] = 1.0f;
    dnnl_memory_t mx, my, mdy, mdx;
    ck_assert_ok(nn_memory_wrap(&mx, &ctx, &md, xf));
    ck_assert_ok(nn_memory_wrap(&my, &ctx, &md, yf));
    ck_assert_ok(nn_memory_wrap(&mdy, &ctx, &md, dyf));
    ck_assert_ok(nn_memory_wrap(&mdx, &ctx, &md, dxf));
    nn_batchnorm_bind(&bn, gf, bf, dg, db, rm, rv, mean, var, ws);
    ck_assert_ok(nn_batchnorm_forward_train(&bn, &ctx, my, mx, 0.1f));
    ck_assert_ok(nn_batchnorm_backward(&bn, &ctx, mdx, mdy, mx));

    double *y = calloc(n, 8), *m = calloc(C, 8), *rs = calloc(C, 8), *dx = calloc(n, 8), *dyr = calloc(n, 8);
    double *dgr = calloc(C, 8), *dbr = calloc(C, 8);
    ref_batchnorm_forward(y, m, rs, x, g, b, N, C, HW, 1e-5);
    if (relu) {
        ref_relu_forward(y, y, (long)n);
        ref_relu_backward(dyr, dy, y, (long)n);
    } else {
        memcpy(dyr, dy, n * 8);
    }
    ref_batchnorm_backward(dx, dgr, dbr, dyr, x, g, m, rs, N, C, HW);
    double *yg = from_blocked(yf, N, C, HW), *dxg = from_blocked(dxf, N, C, HW);
    double *dgg = to_double(dg, C), *dbg = to_double(db, C);
    ASSERT_CLOSE("batch norm forward", yg, y, n, 1e-5);
    ASSERT_CLOSE("batch norm backward data", dxg, dx, n, 1e-4);
    ASSERT_CLOSE("batch norm dgamma", dgg, dgr, C, 1e-5);
    ASSERT_CLOSE("batch norm dbeta", dbg, dbr, C, 1e-5);
    /* Running statistics as PyTorch: 0.9 * old + 0.1 * batch, unbiased variance. */
    double count = (double)N * HW;
    for (int c = 0; c < C; c++) {
        double var_b = 1.0 / (rs[c] * rs[c]) - 1e-5;
        ck_assert_msg(fabs(rm[c] - 0.1 * m[c]) < 1e-5, "running mean %d", c);
        ck_assert_msg(fabs(rv[c] - (0.9 + 0.1 * var_b * count / (count - 1))) < 1e-4, "running var %d", c);
    }
    /* Inference with the running statistics. */
    double *rmd = to_double(rm, C), *rvd = to_double(rv, C), *yi = calloc(n, 8);
    ck_assert_ok(nn_batchnorm_forward_infer(&bn, &ctx, my, mx));
    ref_batchnorm_forward_inference(yi, x, g, b, rmd, rvd, N, C, HW, 1e-5);
    if (relu) ref_relu_forward(yi, yi, (long)n);
    double *yig = from_blocked(yf, N, C, HW);
    ASSERT_CLOSE("batch norm inference", yig, yi, n, 1e-5);

    dnnl_memory_destroy(mx), dnnl_memory_destroy(my), dnnl_memory_destroy(mdy), dnnl_memory_destroy(mdx);
    nn_batchnorm_free(&bn);
    void *fl[] = {xf, yf, dyf, dxf, gf, bf, dg, db, rm, rv, mean, var, ws};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) mfres_free(fl[i]);
    void *dl[] = {x, dy, g, b, y, m, rs, dx, dyr, dgr, dbr, yg, dxg, dgg, dbg, rmd, rvd, yi, yig};
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++) free(dl[i]);
}
START_TEST(batchnorm_plain) { check_batchnorm(false); }
END_TEST
START_TEST(batchnorm_fused_relu) { check_batchnorm(true); }
END_TEST

/* ---- the loops: residual, shortcut, pool, linear, softmax cross-entropy ---- */
START_TEST(residual_forward) {
    size_t n = 5000;
    double *sc = randn(n, 8), *br = randn(n, 9), h = 0.37;
    float *scf = to_float(sc, n), *brf = to_float(br, n), *out = mfres_alloc(n * 4, "t");
    double *o = calloc(n, 8);
    ref_residual_forward(o, sc, br, h, false, (long)n);
    nn_residual_forward(out, scf, brf, (float)h, n);
    double *og = to_double(out, n);
    ASSERT_CLOSE("residual forward", og, o, n, 1e-6);
    free(og), free(o), free(sc), free(br), mfres_free(scf), mfres_free(brf), mfres_free(out);
}
END_TEST

/* Batch statistics and out = relu(shortcut + BN(t)) in one pass (bn_residual.c)
 * against the reference batch norm and residual; mean far from zero, so a
 * careless E[x^2] - mean^2 in float would show. Then the ReLU's backward from
 * the mask that pass recorded against the reference residual's backward. */
START_TEST(batchnorm_residual_relu_fused) {
    int N = 5, C = 32, HW = 7 * 9;
    size_t n = (size_t)N * C * HW;
    double *t = randn(n, 21), *sc = randn(n, 22), *gamma = randn(C, 23), *beta = randn(C, 24);
    for (size_t i = 0; i < n; i++) t[i] = 3.0 + 0.5 * t[i];
    double *bn = calloc(n, 8), *o = calloc(n, 8), *mean = calloc(C, 8), *rstd = calloc(C, 8);
    ref_batchnorm_forward(bn, mean, rstd, t, gamma, beta, N, C, HW, 1e-5);
    ref_residual_forward(o, sc, bn, 1.0, true, (long)n);
    float *tf = to_blocked(t, N, C, HW), *scf = to_blocked(sc, N, C, HW), *gf = to_float(gamma, C), *bf = to_float(beta, C);
    float *out = mfres_alloc(n * 4, "t"), *meanf = mfres_alloc(C * 4, "t"), *varf = mfres_alloc(C * 4, "t");
    unsigned char *mask = mfres_alloc(n, "t");
    nn_batchnorm_statistics(meanf, varf, tf, N, C, HW, ctx.block);
    nn_bn_residual_relu_forward(out, mask, scf, tf, meanf, varf, gf, bf, 1e-5f, N, C, HW, ctx.block);
    double *var = malloc(C * 8), *mg = to_double(meanf, C), *vg = to_double(varf, C), *og = from_blocked(out, N, C, HW);
    for (int c = 0; c < C; c++) var[c] = 1.0 / (rstd[c] * rstd[c]) - 1e-5;
    ASSERT_CLOSE("batch mean", mg, mean, C, 1e-6);
    ASSERT_CLOSE("batch variance", vg, var, C, 1e-5);
    ASSERT_CLOSE("batch norm + residual + relu", og, o, n, 1e-5);
    for (int b = 0; b < N; b++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) {
                size_t i = ((size_t)b * C + c) * HW + p, j = (((size_t)b * (C / ctx.block) + c / ctx.block) * HW + p) * ctx.block + c % ctx.block;
                ck_assert_int_eq(mask[j], o[i] > 0);
            }
    double *dy = randn(n, 25), *dsc = calloc(n, 8), *dbr = calloc(n, 8), dh = 0;
    ref_residual_backward(dsc, dbr, &dh, dy, o, bn, 1.0, true, (long)n);
    float *g = to_blocked(dy, N, C, HW);
    nn_relu_backward_inplace(g, mask, n);
    double *gd = from_blocked(g, N, C, HW);
    ASSERT_CLOSE("relu backward from the forward's mask", gd, dsc, n, 1e-7);
    free(dy), free(dsc), free(dbr), free(gd), mfres_free(g);
    free(t), free(sc), free(gamma), free(beta), free(bn), free(o), free(mean), free(rstd), free(var), free(mg), free(vg), free(og);
    mfres_free(tf), mfres_free(scf), mfres_free(gf), mfres_free(bf), mfres_free(out), mfres_free(meanf), mfres_free(varf);
    mfres_free(mask);
}
END_TEST

START_TEST(shortcut_a_blocked) {
    int N = 3, C = 16, H = 8, W = 6;
    size_t n_in = (size_t)N * C * H * W, n_out = (size_t)N * 2 * C * (H / 2) * (W / 2);
    double *x = randn(n_in, 11), *dy = randn(n_out, 12), *y = calloc(n_out, 8), *dx = calloc(n_in, 8);
    ref_shortcut_a_forward(y, x, N, C, H, W);
    ref_shortcut_a_backward(dx, dy, N, C, H, W);
    float *xf = to_blocked(x, N, C, H * W), *yf = mfres_alloc(n_out * 4, "t"), *dyf = to_blocked(dy, N, 2 * C, H * W / 4);
    float *dxf = mfres_alloc(n_in * 4, "t");
    nn_shortcut_a_forward(yf, xf, N, C, H, W, ctx.block, ctx.block);
    nn_shortcut_a_backward_add(dxf, dyf, N, C, H, W, ctx.block);
    double *yg = from_blocked(yf, N, 2 * C, H * W / 4), *dxg = from_blocked(dxf, N, C, H * W);
    ASSERT_CLOSE("shortcut A forward", yg, y, n_out, 1e-7);
    ASSERT_CLOSE("shortcut A backward", dxg, dx, n_in, 1e-7);
    free(x), free(dy), free(y), free(dx), free(yg), free(dxg);
    mfres_free(xf), mfres_free(yf), mfres_free(dyf), mfres_free(dxf);
}
END_TEST

START_TEST(pool_linear_softmax) {
    int N = 5, C = 32, HW = 9, K = 7;
    double *x = randn((size_t)N * C * HW, 13), *w = randn((size_t)K * C, 14), *b = randn(K, 15);
    double *pooled = calloc(N * C, 8), *logits = calloc(N * K, 8), *probs = calloc(N * K, 8);
    int labels[] = {1, 6, -1, 0, 3}, correct_ref;
    ref_avgpool_forward(pooled, x, N, C, HW);
    ref_linear_forward(logits, pooled, w, b, N, C, K);
    double loss_ref = ref_softmax_xent_forward(probs, &correct_ref, logits, labels, N, K);
    double *dlogits = calloc(N * K, 8), *dpooled = calloc(N * C, 8), *dw = calloc(K * C, 8), *db = calloc(K, 8);
    double *dx = calloc((size_t)N * C * HW, 8);
    ref_softmax_xent_backward(dlogits, probs, labels, N, K);
    ref_linear_backward(dpooled, dw, db, dlogits, pooled, w, N, C, K);
    ref_avgpool_backward(dx, dpooled, N, C, HW);

    float *xf = to_blocked(x, N, C, HW), *wf = to_float(w, K * C), *bf = to_float(b, K);
    float *pf = mfres_alloc(N * C * 4, "t"), *lf = mfres_alloc(N * K * 4, "t"), *prf = mfres_alloc(N * K * 4, "t");
    float *dlf = mfres_alloc(N * K * 4, "t"), *dpf = mfres_alloc(N * C * 4, "t"), *dwf = mfres_alloc(K * C * 4, "t");
    float *dbf = mfres_alloc(K * 4, "t"), *dxf = mfres_alloc((size_t)N * C * HW * 4, "t");
    double loss_sum;
    int correct, valid;
    nn_avgpool_forward(pf, xf, N, C, HW, ctx.block);
    nn_linear_forward(lf, pf, wf, bf, N, C, K);
    nn_softmax_xent_forward(prf, &loss_sum, &correct, &valid, lf, labels, N, K);
    ck_assert_int_eq(valid, 4);
    ck_assert_int_eq(correct, correct_ref);
    ck_assert_msg(fabs(loss_sum / valid - loss_ref) < 1e-5 * loss_ref, "loss %.8g vs %.8g", loss_sum / valid, loss_ref);
    nn_softmax_xent_backward(dlf, prf, labels, N, K);
    nn_linear_backward(dpf, dwf, dbf, dlf, pf, wf, N, C, K);
    nn_avgpool_backward(dxf, dpf, N, C, HW, ctx.block);
    double *pg = to_double(pf, N * C), *dwg = to_double(dwf, K * C), *dbg = to_double(dbf, K);
    double *dxg = from_blocked(dxf, N, C, HW);
    ASSERT_CLOSE("avgpool forward", pg, pooled, N * C, 1e-6);
    ASSERT_CLOSE("linear dw", dwg, dw, K * C, 1e-5);
    ASSERT_CLOSE("linear db", dbg, db, K, 1e-5);
    ASSERT_CLOSE("avgpool+linear+softmax backward", dxg, dx, (size_t)N * C * HW, 1e-5);
    void *dl[] = {x, w, b, pooled, logits, probs, dlogits, dpooled, dw, db, dx, pg, dwg, dbg, dxg};
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++) free(dl[i]);
    void *fl[] = {xf, wf, bf, pf, lf, prf, dlf, dpf, dwf, dbf, dxf};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) mfres_free(fl[i]);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("layers");
    TCase *tc = tcase_create("onednn_vs_reference");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, conv3x3_stride1);
    tcase_add_test(tc, conv3x3_stride1_16_channels);
    tcase_add_test(tc, conv3x3_stride1_32_channels);
    tcase_add_test(tc, winograd_16_channels);
    tcase_add_test(tc, winograd_uneven_shapes);
    tcase_add_test(tc, conv_infer_relu_16_channels);
    tcase_add_test(tc, conv_infer_sum_relu_16_channels);
    tcase_add_test(tc, conv_infer_sum_relu_32_channels);
    tcase_add_test(tc, conv_infer_sum_stride2);
    tcase_add_test(tc, conv_infer_bias_only);
    tcase_add_test(tc, conv3x3_stride2);
    tcase_add_test(tc, conv1x1_stride1);
    tcase_add_test(tc, conv1x1_stride2);
    tcase_add_test(tc, conv3x3_plain_input);
    tcase_add_test(tc, conv3x3_plain_input_1_channel);
    tcase_add_test(tc, batchnorm_plain);
    tcase_add_test(tc, batchnorm_fused_relu);
    tcase_add_test(tc, residual_forward);
    tcase_add_test(tc, batchnorm_residual_relu_fused);
    tcase_add_test(tc, shortcut_a_blocked);
    tcase_add_test(tc, pool_linear_softmax);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
