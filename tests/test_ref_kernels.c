/* Tests for the double-precision reference kernels (src/nn/ref.h).
 *
 * Every backward function is checked by central finite differences of a random
 * scalar objective L = sum(r * forward(...)) with respect to every input and
 * every parameter (norm-wise relative error <= 1e-6). Input gradients are
 * pre-filled with NaN before the backward call, so a kernel that accumulates
 * into them instead of overwriting fails; parameter gradients are checked to
 * accumulate (two calls give exactly twice one call). A few forward passes are
 * also checked against hand-computed tiny cases and a bounds-checked naive
 * convolution. */
#include <string.h>

#include "nn/ref.h"
#include "testutil.h"

#define FD_STEP 1e-5
#define FD_TOL 1e-6

/* ------------------------------------------------------------- helpers ---- */

static double *vec(long n) {
    double *p = calloc((size_t)n, sizeof(double));
    ck_assert_ptr_nonnull(p);
    return p;
}

static double *randn(mfres_rng *rng, long n) {
    double *p = vec(n);
    for (long i = 0; i < n; i++) p[i] = mfres_rng_normal(rng);
    return p;
}

static double *nans(long n) {
    double *p = vec(n);
    for (long i = 0; i < n; i++) p[i] = NAN;
    return p;
}

static double dot(const double *a, const double *b, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* A forward pass under test: recomputes ctx's output buffer from ctx's inputs. */
typedef void (*fwd_fn)(void *ctx);

/* Central finite differences of L = <r, out> with respect to x[0..nx), where
 * fwd(ctx) refreshes out from (among others) x; compared with `analytic`. */
static void check_grad(const char *what, const double *analytic, double *x, long nx, fwd_fn fwd, void *ctx,
                       const double *out, const double *r, long nout) {
    double *num = vec(nx);
    for (long i = 0; i < nx; i++) {
        double save = x[i];
        x[i] = save + FD_STEP;
        fwd(ctx);
        double lp = dot(r, out, nout);
        x[i] = save - FD_STEP;
        fwd(ctx);
        double lm = dot(r, out, nout);
        x[i] = save;
        num[i] = (lp - lm) / (2 * FD_STEP);
    }
    fwd(ctx); /* leave outputs and saved state as at the unperturbed point */
    double err = test_rel_err_f64(analytic, num, (size_t)nx);
    ck_assert_msg(err <= FD_TOL, "%s: finite-difference relative error %.3g > %.1g", what, err, FD_TOL);
    free(num);
}

/* Parameter gradients accumulate: after a second identical call, g == 2 * g1. */
static void check_doubled(const char *what, const double *g2, const double *g1, long n) {
    for (long i = 0; i < n; i++)
        ck_assert_msg(g2[i] == 2.0 * g1[i], "%s[%ld] does not accumulate: %.17g after two calls, %.17g after one",
                      what, i, g2[i], g1[i]);
}

static void check_close(const char *what, const double *got, const double *want, long n, double tol) {
    for (long i = 0; i < n; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= tol * (1.0 + fabs(want[i])), "%s[%ld] = %.17g, expected %.17g", what,
                      i, got[i], want[i]);
}

/* ---------------------------------------------------------------- conv2d ---- */

typedef struct {
    int N, C, H, W, K, R, S, stride, pad, OH, OW;
    double *in, *w, *out;
} conv_case;

static void conv_fwd(void *p) {
    conv_case *c = p;
    ref_conv2d_forward(c->out, c->in, c->w, c->N, c->C, c->H, c->W, c->K, c->R, c->S, c->stride, c->pad);
}

/* Bounds-checked textbook definition, the independent oracle for the forward. */
static void naive_conv(double *out, const double *in, const double *w, int N, int C, int H, int W, int K, int R,
                       int S, int stride, int pad) {
    int OH = (H + 2 * pad - R) / stride + 1, OW = (W + 2 * pad - S) / stride + 1;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double s = 0.0;
                    for (int c = 0; c < C; c++)
                        for (int r = 0; r < R; r++)
                            for (int q = 0; q < S; q++) {
                                int ih = oh * stride - pad + r, iw = ow * stride - pad + q;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                s += in[((n * C + c) * H + ih) * W + iw] * w[((k * C + c) * R + r) * S + q];
                            }
                    out[((n * K + k) * OH + oh) * OW + ow] = s;
                }
}

START_TEST(test_conv_forward_hand) {
    /* 1 channel, 3x3 image 1..9. */
    double in[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    double ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    double out[9];
    /* All-ones 3x3 kernel, pad 1: sums over each 3x3 neighbourhood. */
    ref_conv2d_forward(out, in, ones, 1, 1, 3, 3, 1, 3, 3, 1, 1);
    double want_sum[9] = {12, 21, 16, 27, 45, 33, 24, 39, 28};
    check_close("conv ones s1", out, want_sum, 9, 0);
    /* Stride 2 keeps the four corners. */
    ref_conv2d_forward(out, in, ones, 1, 1, 3, 3, 1, 3, 3, 2, 1);
    double want_s2[4] = {12, 16, 24, 28};
    check_close("conv ones s2", out, want_s2, 4, 0);
    /* Only the top-left tap set: cross-correlation, so out[i][j] = in[i-1][j-1]. */
    double tl[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0};
    ref_conv2d_forward(out, in, tl, 1, 1, 3, 3, 1, 3, 3, 1, 1);
    double want_tl[9] = {0, 0, 0, 0, 1, 2, 0, 4, 5};
    check_close("conv top-left tap", out, want_tl, 9, 0);
    /* 1x1, two input channels -> one output: 2*x0 - x1. */
    double in2[8] = {1, 2, 3, 4, 10, 20, 30, 40};
    double w2[2] = {2, -1};
    ref_conv2d_forward(out, in2, w2, 1, 2, 2, 2, 1, 1, 1, 1, 0);
    double want_1x1[4] = {-8, -16, -24, -32};
    check_close("conv 1x1", out, want_1x1, 4, 0);
    /* 1x1 stride 2 on a 3x3 image picks (0,0), (0,2), (2,0), (2,2). */
    double three = 3;
    ref_conv2d_forward(out, in, &three, 1, 1, 3, 3, 1, 1, 1, 2, 0);
    double want_1x1s2[4] = {3, 9, 21, 27};
    check_close("conv 1x1 s2", out, want_1x1s2, 4, 0);
}
END_TEST

static const int conv_cfgs[][9] = {
    /* N, C, H, W, K, R, S, stride, pad */
    {2, 3, 5, 6, 4, 3, 3, 1, 1},  /* 3x3 s1 p1, non-square image, C != K */
    {2, 3, 6, 7, 5, 3, 3, 2, 1},  /* 3x3 s2 p1, odd width */
    {2, 3, 7, 7, 2, 3, 3, 2, 1},  /* 3x3 s2 p1, odd both */
    {2, 4, 3, 5, 3, 1, 1, 1, 0},  /* 1x1 s1 */
    {2, 3, 6, 5, 6, 1, 1, 2, 0},  /* 1x1 s2 (projection shortcut shape) */
    {1, 2, 4, 5, 3, 3, 1, 1, 1},  /* non-square 3x1 kernel */
    {1, 2, 5, 4, 2, 3, 3, 1, 0},  /* 3x3 no padding */
};

static conv_case conv_make(mfres_rng *rng, const int *g) {
    conv_case c = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], 0, 0, NULL, NULL, NULL};
    c.OH = (c.H + 2 * c.pad - c.R) / c.stride + 1;
    c.OW = (c.W + 2 * c.pad - c.S) / c.stride + 1;
    c.in = randn(rng, (long)c.N * c.C * c.H * c.W);
    c.w = randn(rng, (long)c.K * c.C * c.R * c.S);
    c.out = vec((long)c.N * c.K * c.OH * c.OW);
    return c;
}

static void conv_free(conv_case *c) {
    free(c->in);
    free(c->w);
    free(c->out);
}

START_TEST(test_conv_forward_vs_naive) {
    mfres_rng rng;
    mfres_rng_seed(&rng, 11);
    for (size_t t = 0; t < sizeof conv_cfgs / sizeof conv_cfgs[0]; t++) {
        conv_case c = conv_make(&rng, conv_cfgs[t]);
        long nout = (long)c.N * c.K * c.OH * c.OW;
        double *want = vec(nout);
        conv_fwd(&c);
        naive_conv(want, c.in, c.w, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
        check_close("conv vs naive", c.out, want, nout, 1e-13);
        free(want);
        conv_free(&c);
    }
    /* The size the brief names: N=4, C=K=16, 16x16, 3x3: must take milliseconds. */
    int big[9] = {4, 16, 16, 16, 16, 3, 3, 1, 1};
    conv_case c = conv_make(&rng, big);
    long nout = (long)c.N * c.K * c.OH * c.OW;
    double *want = vec(nout);
    double t0 = mfres_now();
    conv_fwd(&c);
    double dt = mfres_now() - t0;
    naive_conv(want, c.in, c.w, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
    check_close("conv 16x16 vs naive", c.out, want, nout, 1e-13);
    printf("ref_conv2d_forward N=4 C=K=16 16x16 3x3: %.2f ms\n", dt * 1e3);
    ck_assert_msg(dt < 0.5, "ref_conv2d_forward is absurdly slow: %.3f s", dt);
    free(want);
    conv_free(&c);
}
END_TEST

START_TEST(test_conv_grads) {
    mfres_rng rng;
    mfres_rng_seed(&rng, 12);
    for (size_t t = 0; t < sizeof conv_cfgs / sizeof conv_cfgs[0]; t++) {
        conv_case c = conv_make(&rng, conv_cfgs[t]);
        long nin = (long)c.N * c.C * c.H * c.W, nw = (long)c.K * c.C * c.R * c.S;
        long nout = (long)c.N * c.K * c.OH * c.OW;
        double *r = randn(&rng, nout);
        double *din = nans(nin), *dw = vec(nw), *dw2 = vec(nw);
        conv_fwd(&c);
        ref_conv2d_backward_data(din, r, c.w, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
        ref_conv2d_backward_weights(dw, r, c.in, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
        char name[64];
        snprintf(name, sizeof name, "conv cfg %zu din", t);
        check_grad(name, din, c.in, nin, conv_fwd, &c, c.out, r, nout);
        snprintf(name, sizeof name, "conv cfg %zu dw", t);
        check_grad(name, dw, c.w, nw, conv_fwd, &c, c.out, r, nout);
        /* dw accumulates; din is overwritten (a second call gives the same). */
        memcpy(dw2, dw, sizeof(double) * nw);
        ref_conv2d_backward_weights(dw2, r, c.in, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
        check_doubled("conv dw", dw2, dw, nw);
        double *din2 = vec(nin);
        memcpy(din2, din, sizeof(double) * nin);
        ref_conv2d_backward_data(din2, r, c.w, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
        check_close("conv din overwritten", din2, din, nin, 0);
        free(din2);
        free(r);
        free(din);
        free(dw);
        free(dw2);
        conv_free(&c);
    }
}
END_TEST

/* ------------------------------------------------------------- batchnorm ---- */

typedef struct {
    int N, C, HW;
    double eps;
    double *in, *gamma, *beta, *out, *mean, *rstd;
} bn_case;

static void bn_fwd(void *p) {
    bn_case *b = p;
    ref_batchnorm_forward(b->out, b->mean, b->rstd, b->in, b->gamma, b->beta, b->N, b->C, b->HW, b->eps);
}

START_TEST(test_bn_forward_hand) {
    /* One channel, values 1..4: mean 2.5, biased var 1.25. */
    double in[4] = {1, 2, 3, 4}, g = 2.0, b = 0.5, out[4], mean, rstd;
    ref_batchnorm_forward(out, &mean, &rstd, in, &g, &b, 2, 1, 2, 0.0);
    ck_assert_double_eq_tol(mean, 2.5, 1e-15);
    ck_assert_double_eq_tol(rstd, 1.0 / sqrt(1.25), 1e-15);
    double want[4];
    for (int i = 0; i < 4; i++) want[i] = 2.0 * (in[i] - 2.5) / sqrt(1.25) + 0.5;
    check_close("bn hand", out, want, 4, 1e-15);
    /* Channels are independent: [N=2, C=2, HW=1] with x = {0, 10, 2, 30}. */
    double in2[4] = {0, 10, 2, 30}, g2[2] = {1, 1}, b2[2] = {0, 0}, out2[4], m2[2], r2[2];
    ref_batchnorm_forward(out2, m2, r2, in2, g2, b2, 2, 2, 1, 0.0);
    ck_assert_double_eq_tol(m2[0], 1.0, 1e-15);
    ck_assert_double_eq_tol(m2[1], 20.0, 1e-15);
    ck_assert_double_eq_tol(r2[0], 1.0, 1e-15);  /* var 1 */
    ck_assert_double_eq_tol(r2[1], 0.1, 1e-15);  /* var 100 */
    double want2[4] = {-1, -1, 1, 1};
    check_close("bn per channel", out2, want2, 4, 1e-15);
}
END_TEST

START_TEST(test_bn_grads) {
    mfres_rng rng;
    mfres_rng_seed(&rng, 21);
    int shapes[][3] = {{3, 2, 5}, {2, 4, 9}, {4, 3, 1}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        bn_case b = {shapes[t][0], shapes[t][1], shapes[t][2], 1e-5, NULL, NULL, NULL, NULL, NULL, NULL};
        long n = (long)b.N * b.C * b.HW;
        b.in = randn(&rng, n);
        for (long i = 0; i < n; i++) b.in[i] = 1.5 * b.in[i] + 0.7; /* non-zero mean, non-unit var */
        b.gamma = randn(&rng, b.C);
        b.beta = randn(&rng, b.C);
        b.out = vec(n);
        b.mean = vec(b.C);
        b.rstd = vec(b.C);
        double *r = randn(&rng, n);
        double *din = nans(n), *dg = vec(b.C), *db = vec(b.C);
        bn_fwd(&b);
        ref_batchnorm_backward(din, dg, db, r, b.in, b.gamma, b.mean, b.rstd, b.N, b.C, b.HW);
        check_grad("bn din", din, b.in, n, bn_fwd, &b, b.out, r, n);
        check_grad("bn dgamma", dg, b.gamma, b.C, bn_fwd, &b, b.out, r, n);
        check_grad("bn dbeta", db, b.beta, b.C, bn_fwd, &b, b.out, r, n);
        /* dgamma, dbeta accumulate; din is overwritten. */
        double *dg2 = vec(b.C), *db2 = vec(b.C), *din2 = vec(n);
        memcpy(dg2, dg, sizeof(double) * b.C);
        memcpy(db2, db, sizeof(double) * b.C);
        memcpy(din2, din, sizeof(double) * n);
        ref_batchnorm_backward(din2, dg2, db2, r, b.in, b.gamma, b.mean, b.rstd, b.N, b.C, b.HW);
        check_doubled("bn dgamma", dg2, dg, b.C);
        check_doubled("bn dbeta", db2, db, b.C);
        check_close("bn din overwritten", din2, din, n, 0);
        free(dg2);
        free(db2);
        free(din2);
        free(r);
        free(din);
        free(dg);
        free(db);
        free(b.in);
        free(b.gamma);
        free(b.beta);
        free(b.out);
        free(b.mean);
        free(b.rstd);
    }
}
END_TEST

START_TEST(test_bn_inference) {
    mfres_rng rng;
    mfres_rng_seed(&rng, 22);
    int N = 3, C = 4, HW = 6;
    long n = (long)N * C * HW;
    double eps = 1e-5;
    double *in = randn(&rng, n), *gamma = randn(&rng, C), *beta = randn(&rng, C);
    double *rm = randn(&rng, C), *rv = vec(C), *out = vec(n), *want = vec(n);
    for (int c = 0; c < C; c++) rv[c] = 0.5 + mfres_rng_uniform(&rng);
    ref_batchnorm_forward_inference(out, in, gamma, beta, rm, rv, N, C, HW, eps);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            for (int j = 0; j < HW; j++) {
                long k = ((long)i * C + c) * HW + j;
                want[k] = gamma[c] * (in[k] - rm[c]) / sqrt(rv[c] + eps) + beta[c];
            }
    check_close("bn inference", out, want, n, 1e-14);
    /* With the batch's own statistics as running statistics it equals training mode. */
    double *mean = vec(C), *rstd = vec(C), *out_train = vec(n), *var = vec(C);
    ref_batchnorm_forward(out_train, mean, rstd, in, gamma, beta, N, C, HW, eps);
    for (int c = 0; c < C; c++) var[c] = 1.0 / (rstd[c] * rstd[c]) - eps;
    ref_batchnorm_forward_inference(out, in, gamma, beta, mean, var, N, C, HW, eps);
    check_close("bn inference = training with batch stats", out, out_train, n, 1e-12);
    free(in);
    free(gamma);
    free(beta);
    free(rm);
    free(rv);
    free(out);
    free(want);
    free(mean);
    free(rstd);
    free(out_train);
    free(var);
}
END_TEST

/* ------------------------------------------------------ relu, avgpool ---- */

typedef struct {
    long n;
    double *in, *out;
} relu_case;

static void relu_fwd(void *p) {
    relu_case *c = p;
    ref_relu_forward(c->out, c->in, c->n);
}

START_TEST(test_relu) {
    double in[4] = {-1, 0, 2, -0.5}, out[4], want[4] = {0, 0, 2, 0};
    ref_relu_forward(out, in, 4);
    check_close("relu hand", out, want, 4, 0);

    mfres_rng rng;
    mfres_rng_seed(&rng, 31);
    relu_case c = {64, NULL, NULL};
    c.in = randn(&rng, c.n);
    for (long i = 0; i < c.n; i++) c.in[i] += c.in[i] >= 0 ? 0.1 : -0.1; /* away from the kink */
    c.out = vec(c.n);
    double *r = randn(&rng, c.n), *din = nans(c.n);
    relu_fwd(&c);
    ref_relu_backward(din, r, c.out, c.n);
    check_grad("relu din", din, c.in, c.n, relu_fwd, &c, c.out, r, c.n);
    /* In place (din == dout) works too. */
    double *g = vec(c.n);
    memcpy(g, r, sizeof(double) * c.n);
    ref_relu_backward(g, g, c.out, c.n);
    check_close("relu in place", g, din, c.n, 0);
    free(g);
    free(r);
    free(din);
    free(c.in);
    free(c.out);
}
END_TEST

typedef struct {
    int N, C, HW;
    double *in, *out;
} pool_case;

static void pool_fwd(void *p) {
    pool_case *c = p;
    ref_avgpool_forward(c->out, c->in, c->N, c->C, c->HW);
}

START_TEST(test_avgpool) {
    double in[8] = {1, 2, 3, 6, -4, 0, 4, 8}, out[2], want[2] = {3, 2};
    ref_avgpool_forward(out, in, 1, 2, 4);
    check_close("avgpool hand", out, want, 2, 0);

    mfres_rng rng;
    mfres_rng_seed(&rng, 41);
    pool_case c = {2, 3, 7, NULL, NULL};
    long n = (long)c.N * c.C * c.HW, no = (long)c.N * c.C;
    c.in = randn(&rng, n);
    c.out = vec(no);
    double *r = randn(&rng, no), *din = nans(n);
    pool_fwd(&c);
    ref_avgpool_backward(din, r, c.N, c.C, c.HW);
    check_grad("avgpool din", din, c.in, n, pool_fwd, &c, c.out, r, no);
    free(r);
    free(din);
    free(c.in);
    free(c.out);
}
END_TEST

/* ---------------------------------------------------------------- linear ---- */

typedef struct {
    int N, I, O;
    double *in, *w, *b, *out;
} lin_case;

static void lin_fwd(void *p) {
    lin_case *c = p;
    ref_linear_forward(c->out, c->in, c->w, c->b, c->N, c->I, c->O);
}

START_TEST(test_linear) {
    /* in [1,2] = (1, 2); w [3,2]; b [3]. */
    double in[2] = {1, 2}, w[6] = {1, 0, 0, 1, 3, -1}, b[3] = {0.5, 0, 10}, out[3], want[3] = {1.5, 2, 11};
    ref_linear_forward(out, in, w, b, 1, 2, 3);
    check_close("linear hand", out, want, 3, 0);

    mfres_rng rng;
    mfres_rng_seed(&rng, 51);
    lin_case c = {3, 5, 4, NULL, NULL, NULL, NULL};
    c.in = randn(&rng, (long)c.N * c.I);
    c.w = randn(&rng, (long)c.O * c.I);
    c.b = randn(&rng, c.O);
    c.out = vec((long)c.N * c.O);
    long no = (long)c.N * c.O, ni = (long)c.N * c.I, nw = (long)c.O * c.I;
    double *r = randn(&rng, no), *din = nans(ni), *dw = vec(nw), *db = vec(c.O);
    lin_fwd(&c);
    ref_linear_backward(din, dw, db, r, c.in, c.w, c.N, c.I, c.O);
    check_grad("linear din", din, c.in, ni, lin_fwd, &c, c.out, r, no);
    check_grad("linear dw", dw, c.w, nw, lin_fwd, &c, c.out, r, no);
    check_grad("linear db", db, c.b, c.O, lin_fwd, &c, c.out, r, no);
    double *dw2 = vec(nw), *db2 = vec(c.O), *din2 = vec(ni);
    memcpy(dw2, dw, sizeof(double) * nw);
    memcpy(db2, db, sizeof(double) * c.O);
    memcpy(din2, din, sizeof(double) * ni);
    ref_linear_backward(din2, dw2, db2, r, c.in, c.w, c.N, c.I, c.O);
    check_doubled("linear dw", dw2, dw, nw);
    check_doubled("linear db", db2, db, c.O);
    check_close("linear din overwritten", din2, din, ni, 0);
    free(dw2);
    free(db2);
    free(din2);
    free(r);
    free(din);
    free(dw);
    free(db);
    free(c.in);
    free(c.w);
    free(c.b);
    free(c.out);
}
END_TEST

/* ------------------------------------------------------- softmax + xent ---- */

typedef struct {
    int N, K;
    const int *labels;
    double *logits, *probs, loss;
    int correct;
} xent_case;

static void xent_fwd(void *p) {
    xent_case *c = p;
    c->loss = ref_softmax_xent_forward(c->probs, &c->correct, c->logits, c->labels, c->N, c->K);
}

START_TEST(test_softmax_xent_hand) {
    /* Row 0: logits (1,2,3), label 2 (hit). Row 1: padding. Row 2: (0, 1, 0), label 0 (miss). */
    double logits[9] = {1, 2, 3, 7, 7, 7, 0, 1, 0}, probs[9];
    int labels[3] = {2, -1, 0}, correct = -1;
    double loss = ref_softmax_xent_forward(probs, &correct, logits, labels, 3, 3);
    double l0 = log(exp(1) + exp(2) + exp(3)) - 3, l2 = log(2 + exp(1));
    ck_assert_double_eq_tol(loss, (l0 + l2) / 2, 1e-15);
    ck_assert_int_eq(correct, 1);
    double z0 = exp(1) + exp(2) + exp(3);
    double want_p[9] = {exp(1) / z0, exp(2) / z0, exp(3) / z0, 1. / 3, 1. / 3, 1. / 3,
                        1 / (2 + exp(1)), exp(1) / (2 + exp(1)), 1 / (2 + exp(1))};
    check_close("softmax probs", probs, want_p, 9, 1e-15);
    double d[9];
    for (int i = 0; i < 9; i++) d[i] = NAN;
    ref_softmax_xent_backward(d, probs, labels, 3, 3);
    double want_d[9] = {want_p[0] / 2, want_p[1] / 2, (want_p[2] - 1) / 2, 0, 0, 0,
                        (want_p[6] - 1) / 2, want_p[7] / 2, want_p[8] / 2};
    check_close("softmax dlogits", d, want_d, 9, 1e-15);

    /* Numerically stable: huge logits give the same loss and finite probabilities. */
    double big[9];
    for (int i = 0; i < 9; i++) big[i] = logits[i] + 1000.0;
    double loss_big = ref_softmax_xent_forward(probs, &correct, big, labels, 3, 3);
    ck_assert_double_eq_tol(loss_big, loss, 1e-12);
    check_close("softmax probs shifted", probs, want_p, 9, 1e-12);
    big[2] = -1000.0; /* the label's logit 2000 nats below the max: exp underflows, the loss must not */
    loss_big = ref_softmax_xent_forward(probs, &correct, big, labels, 1, 3);
    ck_assert_double_eq_tol(loss_big, 2002.0 + log(1.0 + exp(-1.0)), 1e-9);

    /* All rows padding: loss 0, gradient 0. */
    int pad[2] = {-1, -1};
    loss = ref_softmax_xent_forward(probs, &correct, logits, pad, 2, 3);
    ck_assert_double_eq(loss, 0.0);
    ck_assert_int_eq(correct, 0);
    ref_softmax_xent_backward(d, probs, pad, 2, 3);
    for (int i = 0; i < 6; i++) ck_assert_double_eq(d[i], 0.0);
}
END_TEST

START_TEST(test_softmax_xent_grads) {
    mfres_rng rng;
    mfres_rng_seed(&rng, 61);
    int labels[5] = {3, 0, -1, 5, 2};
    xent_case c = {5, 6, labels, NULL, NULL, 0, 0};
    long n = (long)c.N * c.K;
    c.logits = randn(&rng, n);
    for (long i = 0; i < n; i++) c.logits[i] *= 2.0;
    c.probs = vec(n);
    double *d = nans(n), one = 1.0;
    xent_fwd(&c);
    ref_softmax_xent_backward(d, c.probs, c.labels, c.N, c.K);
    check_grad("softmax-xent dlogits", d, c.logits, n, xent_fwd, &c, &c.loss, &one, 1);
    for (int k = 0; k < c.K; k++) ck_assert_double_eq(d[2 * c.K + k], 0.0); /* the padding row */
    /* Probabilities sum to 1 on every row, padding included. */
    for (int i = 0; i < c.N; i++) {
        double s = 0;
        for (int k = 0; k < c.K; k++) s += c.probs[i * c.K + k];
        ck_assert_double_eq_tol(s, 1.0, 1e-14);
    }
    free(d);
    free(c.logits);
    free(c.probs);
}
END_TEST

/* ------------------------------------------------------------ shortcut A ---- */

typedef struct {
    int N, C, H, W;
    double *in, *out;
} sc_case;

static void sc_fwd(void *p) {
    sc_case *c = p;
    ref_shortcut_a_forward(c->out, c->in, c->N, c->C, c->H, c->W);
}

START_TEST(test_shortcut_a) {
    /* N=1, C=2, 2x2 -> [1, 4, 1, 1]: channels (0, in[c0](0,0), in[c1](0,0), 0). */
    double in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, out[4], want[4] = {0, 1, 5, 0};
    for (int i = 0; i < 4; i++) out[i] = NAN;
    ref_shortcut_a_forward(out, in, 1, 2, 2, 2);
    check_close("shortcut A hand", out, want, 4, 0);
    /* C=2, 4x2 image: even rows/cols are (0,0) and (2,0). */
    double in2[16];
    for (int i = 0; i < 16; i++) in2[i] = i + 1;
    double out2[8], want2[8] = {0, 0, 1, 5, 9, 13, 0, 0};
    ref_shortcut_a_forward(out2, in2, 1, 2, 4, 2);
    check_close("shortcut A 4x2", out2, want2, 8, 0);

    mfres_rng rng;
    mfres_rng_seed(&rng, 71);
    sc_case c = {2, 4, 6, 4, NULL, NULL};
    long n = (long)c.N * c.C * c.H * c.W, no = (long)c.N * 2 * c.C * (c.H / 2) * (c.W / 2);
    c.in = randn(&rng, n);
    c.out = vec(no);
    double *r = randn(&rng, no), *din = nans(n);
    sc_fwd(&c);
    ref_shortcut_a_backward(din, r, c.N, c.C, c.H, c.W);
    check_grad("shortcut A din", din, c.in, n, sc_fwd, &c, c.out, r, no);
    free(r);
    free(din);
    free(c.in);
    free(c.out);
}
END_TEST

/* -------------------------------------------------------------- residual ---- */

typedef struct {
    long n;
    bool relu;
    double h;
    double *sc, *br, *out;
} res_case;

static void res_fwd(void *p) {
    res_case *c = p;
    ref_residual_forward(c->out, c->sc, c->br, c->h, c->relu, c->n);
}

START_TEST(test_residual_hand) {
    double sc[3] = {1, -2, 0.5}, br[3] = {2, 1, -4}, out[3];
    double want_id[3] = {1.5, -1.75, -0.5}; /* h = 0.25 */
    ref_residual_forward(out, sc, br, 0.25, false, 3);
    check_close("residual identity", out, want_id, 3, 0);
    double want_relu[3] = {1.5, 0, 0};
    ref_residual_forward(out, sc, br, 0.25, true, 3);
    check_close("residual relu", out, want_relu, 3, 0);
}
END_TEST

START_TEST(test_residual_grads) {
    mfres_rng rng;
    mfres_rng_seed(&rng, 81);
    for (int relu = 0; relu <= 1; relu++) {
        res_case c = {48, relu, 0.3, NULL, NULL, NULL};
        c.sc = randn(&rng, c.n);
        c.br = randn(&rng, c.n);
        c.out = vec(c.n);
        /* Keep the pre-activation away from the ReLU kink. */
        for (long i = 0; i < c.n; i++) {
            double v = c.sc[i] + c.h * c.br[i];
            if (fabs(v) < 0.2) c.sc[i] += v >= 0 ? 0.4 : -0.4;
        }
        double *r = randn(&rng, c.n), *dsc = nans(c.n), *dbr = nans(c.n), dh = 0.0;
        res_fwd(&c);
        ref_residual_backward(dsc, dbr, &dh, r, c.out, c.br, c.h, c.relu, c.n);
        check_grad(relu ? "residual(relu) dshortcut" : "residual dshortcut", dsc, c.sc, c.n, res_fwd, &c, c.out, r,
                   c.n);
        check_grad(relu ? "residual(relu) dbranch" : "residual dbranch", dbr, c.br, c.n, res_fwd, &c, c.out, r, c.n);
        check_grad(relu ? "residual(relu) dh" : "residual dh", &dh, &c.h, 1, res_fwd, &c, c.out, r, c.n);
        if (relu) { /* some units must actually be cut off, or the test proves nothing */
            long cut = 0;
            for (long i = 0; i < c.n; i++) cut += c.out[i] == 0.0;
            ck_assert_int_gt(cut, 0);
            ck_assert_int_lt(cut, c.n);
        }
        /* dh accumulates. */
        double dh2 = dh;
        ref_residual_backward(dsc, dbr, &dh2, r, c.out, c.br, c.h, c.relu, c.n);
        check_doubled("residual dh", &dh2, &dh, 1);
        free(r);
        free(dsc);
        free(dbr);
        free(c.sc);
        free(c.br);
        free(c.out);
    }
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("ref_kernels");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_conv_forward_hand);
    tcase_add_test(tc, test_conv_forward_vs_naive);
    tcase_add_test(tc, test_conv_grads);
    tcase_add_test(tc, test_bn_forward_hand);
    tcase_add_test(tc, test_bn_grads);
    tcase_add_test(tc, test_bn_inference);
    tcase_add_test(tc, test_relu);
    tcase_add_test(tc, test_avgpool);
    tcase_add_test(tc, test_linear);
    tcase_add_test(tc, test_softmax_xent_hand);
    tcase_add_test(tc, test_softmax_xent_grads);
    tcase_add_test(tc, test_shortcut_a);
    tcase_add_test(tc, test_residual_hand);
    tcase_add_test(tc, test_residual_grads);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
