/* Plain-C reference kernels in double precision (see ref.h for the contract).
 *
 * Direct loops, one function per pass, forward and backward side by side. The
 * only concession to speed is the loop order of the convolutions (the output
 * pixel loop is innermost, with the valid range of output pixels for each
 * filter tap computed once instead of testing bounds per pixel), which keeps a
 * 3x3 conv on N=4, C=K=16, 16x16 at a few milliseconds. Single-threaded and
 * deterministic: the summation order is fixed. */
#include "nn/ref.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- conv2d ---- */

/* Output positions o in [*lo, *hi) whose input coordinate o*stride - pad + tap
 * lies inside [0, size). */
static void conv_valid_range(int *lo, int *hi, int size, int out_size, int tap, int stride, int pad) {
    /* need 0 <= o*stride - pad + tap <= size - 1 */
    int off = tap - pad;
    int a = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int b = (size - 1 - off) >= 0 ? (size - 1 - off) / stride + 1 : 0;
    if (b > out_size) b = out_size;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

static int conv_out_size(int size, int filt, int stride, int pad) { return (size + 2 * pad - filt) / stride + 1; }

/* in [N,C,H,W], w [K,C,R,S] -> out [N,K,OH,OW] */
void ref_conv2d_forward(double *out, const double *in, const double *w, int N, int C, int H, int W, int K, int R,
                        int S, int stride, int pad) {
    int OH = conv_out_size(H, R, stride, pad), OW = conv_out_size(W, S, stride, pad);
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) {
            double *o = out + ((size_t)n * K + k) * OH * OW;
            memset(o, 0, sizeof(double) * OH * OW);
            for (int c = 0; c < C; c++) {
                const double *x = in + ((size_t)n * C + c) * H * W;
                for (int r = 0; r < R; r++) {
                    int oh0, oh1;
                    conv_valid_range(&oh0, &oh1, H, OH, r, stride, pad);
                    for (int s = 0; s < S; s++) {
                        int ow0, ow1;
                        conv_valid_range(&ow0, &ow1, W, OW, s, stride, pad);
                        double wv = w[(((size_t)k * C + c) * R + r) * S + s];
                        for (int oh = oh0; oh < oh1; oh++) {
                            const double *xrow = x + (size_t)(oh * stride - pad + r) * W;
                            double *orow = o + (size_t)oh * OW;
                            for (int ow = ow0; ow < ow1; ow++) orow[ow] += wv * xrow[ow * stride + s - pad];
                        }
                    }
                }
            }
        }
    }
}

/* din [N,C,H,W] (overwritten) from dout [N,K,OH,OW] and w [K,C,R,S] */
void ref_conv2d_backward_data(double *din, const double *dout, const double *w, int N, int C, int H, int W, int K,
                              int R, int S, int stride, int pad) {
    int OH = conv_out_size(H, R, stride, pad), OW = conv_out_size(W, S, stride, pad);
    memset(din, 0, sizeof(double) * N * C * H * W);
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            double *dx = din + ((size_t)n * C + c) * H * W;
            for (int k = 0; k < K; k++) {
                const double *g = dout + ((size_t)n * K + k) * OH * OW;
                for (int r = 0; r < R; r++) {
                    int oh0, oh1;
                    conv_valid_range(&oh0, &oh1, H, OH, r, stride, pad);
                    for (int s = 0; s < S; s++) {
                        int ow0, ow1;
                        conv_valid_range(&ow0, &ow1, W, OW, s, stride, pad);
                        double wv = w[(((size_t)k * C + c) * R + r) * S + s];
                        for (int oh = oh0; oh < oh1; oh++) {
                            double *dxrow = dx + (size_t)(oh * stride - pad + r) * W;
                            const double *grow = g + (size_t)oh * OW;
                            for (int ow = ow0; ow < ow1; ow++) dxrow[ow * stride + s - pad] += wv * grow[ow];
                        }
                    }
                }
            }
        }
    }
}

/* dw [K,C,R,S] += from dout [N,K,OH,OW] and in [N,C,H,W] */
void ref_conv2d_backward_weights(double *dw, const double *dout, const double *in, int N, int C, int H, int W, int K,
                                 int R, int S, int stride, int pad) {
    int OH = conv_out_size(H, R, stride, pad), OW = conv_out_size(W, S, stride, pad);
    for (int k = 0; k < K; k++) {
        for (int c = 0; c < C; c++) {
            for (int r = 0; r < R; r++) {
                int oh0, oh1;
                conv_valid_range(&oh0, &oh1, H, OH, r, stride, pad);
                for (int s = 0; s < S; s++) {
                    int ow0, ow1;
                    conv_valid_range(&ow0, &ow1, W, OW, s, stride, pad);
                    double acc = 0.0;
                    for (int n = 0; n < N; n++) {
                        const double *x = in + ((size_t)n * C + c) * H * W;
                        const double *g = dout + ((size_t)n * K + k) * OH * OW;
                        for (int oh = oh0; oh < oh1; oh++) {
                            const double *xrow = x + (size_t)(oh * stride - pad + r) * W;
                            const double *grow = g + (size_t)oh * OW;
                            for (int ow = ow0; ow < ow1; ow++) acc += grow[ow] * xrow[ow * stride + s - pad];
                        }
                    }
                    dw[(((size_t)k * C + c) * R + r) * S + s] += acc;
                }
            }
        }
    }
}

/* Grouped: each (image, group) pair is a plain convolution on a contiguous
 * slice of the NCHW tensors, so the kernels above do the arithmetic. */
void ref_conv2d_forward_groups(double *out, const double *in, const double *w, int N, int C, int H, int W, int K,
                               int R, int S, int stride, int pad, int groups) {
    int Cg = C / groups, Kg = K / groups, OH = conv_out_size(H, R, stride, pad), OW = conv_out_size(W, S, stride, pad);
    for (int n = 0; n < N; n++)
        for (int g = 0; g < groups; g++)
            ref_conv2d_forward(out + ((size_t)n * K + (size_t)g * Kg) * OH * OW,
                               in + ((size_t)n * C + (size_t)g * Cg) * H * W, w + (size_t)g * Kg * Cg * R * S, 1, Cg, H,
                               W, Kg, R, S, stride, pad);
}

void ref_conv2d_backward_data_groups(double *din, const double *dout, const double *w, int N, int C, int H, int W,
                                     int K, int R, int S, int stride, int pad, int groups) {
    int Cg = C / groups, Kg = K / groups, OH = conv_out_size(H, R, stride, pad), OW = conv_out_size(W, S, stride, pad);
    for (int n = 0; n < N; n++)
        for (int g = 0; g < groups; g++)
            ref_conv2d_backward_data(din + ((size_t)n * C + (size_t)g * Cg) * H * W,
                                     dout + ((size_t)n * K + (size_t)g * Kg) * OH * OW, w + (size_t)g * Kg * Cg * R * S,
                                     1, Cg, H, W, Kg, R, S, stride, pad);
}

void ref_conv2d_backward_weights_groups(double *dw, const double *dout, const double *in, int N, int C, int H, int W,
                                        int K, int R, int S, int stride, int pad, int groups) {
    int Cg = C / groups, Kg = K / groups, OH = conv_out_size(H, R, stride, pad), OW = conv_out_size(W, S, stride, pad);
    for (int n = 0; n < N; n++)
        for (int g = 0; g < groups; g++)
            ref_conv2d_backward_weights(dw + (size_t)g * Kg * Cg * R * S,
                                        dout + ((size_t)n * K + (size_t)g * Kg) * OH * OW,
                                        in + ((size_t)n * C + (size_t)g * Cg) * H * W, 1, Cg, H, W, Kg, R, S, stride,
                                        pad);
}

/* ------------------------------------------------------------- batchnorm ---- */

/* in [N,C,HW] -> out [N,C,HW]; mean[C], rstd[C] saved. Biased variance. */
void ref_batchnorm_forward(double *out, double *mean, double *rstd, const double *in, const double *gamma,
                           const double *beta, int N, int C, int HW, double eps) {
    double M = (double)N * HW;
    for (int c = 0; c < C; c++) {
        double m = 0.0;
        for (int n = 0; n < N; n++) {
            const double *x = in + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) m += x[i];
        }
        m /= M;
        double v = 0.0; /* two-pass variance: no cancellation */
        for (int n = 0; n < N; n++) {
            const double *x = in + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) v += (x[i] - m) * (x[i] - m);
        }
        v /= M;
        double rs = 1.0 / sqrt(v + eps);
        mean[c] = m;
        rstd[c] = rs;
        for (int n = 0; n < N; n++) {
            const double *x = in + ((size_t)n * C + c) * HW;
            double *o = out + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) o[i] = gamma[c] * (x[i] - m) * rs + beta[c];
        }
    }
}

void ref_batchnorm_forward_inference(double *out, const double *in, const double *gamma, const double *beta,
                                     const double *running_mean, const double *running_var, int N, int C, int HW,
                                     double eps) {
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            double rs = 1.0 / sqrt(running_var[c] + eps);
            const double *x = in + ((size_t)n * C + c) * HW;
            double *o = out + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) o[i] = gamma[c] * (x[i] - running_mean[c]) * rs + beta[c];
        }
    }
}

/* With xhat = (x - mean) * rstd and M = N*HW per channel:
 *   dbeta  += sum(dout),  dgamma += sum(dout * xhat),
 *   din     = gamma * rstd * (dout - sum(dout)/M - xhat * sum(dout * xhat)/M). */
void ref_batchnorm_backward(double *din, double *dgamma, double *dbeta, const double *dout, const double *in,
                            const double *gamma, const double *mean, const double *rstd, int N, int C, int HW) {
    double M = (double)N * HW;
    for (int c = 0; c < C; c++) {
        double sum_g = 0.0, sum_gx = 0.0;
        for (int n = 0; n < N; n++) {
            const double *x = in + ((size_t)n * C + c) * HW;
            const double *g = dout + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                sum_g += g[i];
                sum_gx += g[i] * (x[i] - mean[c]) * rstd[c];
            }
        }
        dbeta[c] += sum_g;
        dgamma[c] += sum_gx;
        double mg = sum_g / M, mgx = sum_gx / M, scale = gamma[c] * rstd[c];
        for (int n = 0; n < N; n++) {
            const double *x = in + ((size_t)n * C + c) * HW;
            const double *g = dout + ((size_t)n * C + c) * HW;
            double *dx = din + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                double xhat = (x[i] - mean[c]) * rstd[c];
                dx[i] = scale * (g[i] - mg - xhat * mgx);
            }
        }
    }
}

/* ------------------------------------------------------------------ relu ---- */

void ref_relu_forward(double *out, const double *in, long n) {
    for (long i = 0; i < n; i++) out[i] = in[i] > 0.0 ? in[i] : 0.0;
}

void ref_relu_backward(double *din, const double *dout, const double *out, long n) {
    for (long i = 0; i < n; i++) din[i] = out[i] > 0.0 ? dout[i] : 0.0;
}

/* --------------------------------------------------------------- avgpool ---- */

void ref_avgpool_forward(double *out, const double *in, int N, int C, int HW) {
    for (long nc = 0; nc < (long)N * C; nc++) {
        double s = 0.0;
        for (int i = 0; i < HW; i++) s += in[nc * HW + i];
        out[nc] = s / HW;
    }
}

void ref_avgpool_backward(double *din, const double *dout, int N, int C, int HW) {
    for (long nc = 0; nc < (long)N * C; nc++) {
        double g = dout[nc] / HW;
        for (int i = 0; i < HW; i++) din[nc * HW + i] = g;
    }
}

/* ---------------------------------------------------------------- linear ---- */

void ref_linear_forward(double *out, const double *in, const double *w, const double *b, int N, int I, int O) {
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < O; o++) {
            double s = b[o];
            for (int i = 0; i < I; i++) s += in[(size_t)n * I + i] * w[(size_t)o * I + i];
            out[(size_t)n * O + o] = s;
        }
    }
}

void ref_linear_backward(double *din, double *dw, double *db, const double *dout, const double *in, const double *w,
                         int N, int I, int O) {
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < I; i++) {
            double s = 0.0;
            for (int o = 0; o < O; o++) s += dout[(size_t)n * O + o] * w[(size_t)o * I + i];
            din[(size_t)n * I + i] = s;
        }
    }
    for (int o = 0; o < O; o++) {
        double sb = 0.0;
        for (int n = 0; n < N; n++) sb += dout[(size_t)n * O + o];
        db[o] += sb;
        for (int i = 0; i < I; i++) {
            double s = 0.0;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * O + o] * in[(size_t)n * I + i];
            dw[(size_t)o * I + i] += s;
        }
    }
}

/* ------------------------------------------------------- softmax + xent ---- */

/* Per row: probs = exp(z - max) / sum; loss = log(sum exp(z - max)) - (z_y - max).
 * Padding rows (label < 0) get probs computed as usual but count nowhere. */
double ref_softmax_xent_forward(double *probs, int *correct, const double *logits, const int *labels, int N, int K) {
    double loss = 0.0;
    int n_valid = 0, hits = 0;
    for (int n = 0; n < N; n++) {
        const double *z = logits + (size_t)n * K;
        double *p = probs + (size_t)n * K;
        int amax = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > z[amax]) amax = k; /* ties: lowest index */
        double zmax = z[amax], sum = 0.0;
        for (int k = 0; k < K; k++) {
            p[k] = exp(z[k] - zmax);
            sum += p[k];
        }
        for (int k = 0; k < K; k++) p[k] /= sum;
        int y = labels[n];
        if (y < 0) continue;
        loss += log(sum) - (z[y] - zmax);
        n_valid++;
        hits += (amax == y);
    }
    if (correct) *correct = hits;
    return n_valid > 0 ? loss / n_valid : 0.0;
}

void ref_softmax_xent_backward(double *dlogits, const double *probs, const int *labels, int N, int K) {
    int n_valid = 0;
    for (int n = 0; n < N; n++) n_valid += labels[n] >= 0;
    double inv = n_valid > 0 ? 1.0 / n_valid : 0.0;
    for (int n = 0; n < N; n++) {
        double *d = dlogits + (size_t)n * K;
        const double *p = probs + (size_t)n * K;
        int y = labels[n];
        for (int k = 0; k < K; k++) d[k] = y < 0 ? 0.0 : (p[k] - (k == y ? 1.0 : 0.0)) * inv;
    }
}

/* ------------------------------------------------------------ shortcut A ---- */

/* in [N,C,H,W] -> out [N,2C,H/2,W/2]; out[n, C/2 + c, i, j] = in[n, c, 2i, 2j], zeros elsewhere. */
void ref_shortcut_a_forward(double *out, const double *in, int N, int C, int H, int W) {
    int OH = H / 2, OW = W / 2, K = 2 * C, lo = C / 2;
    memset(out, 0, sizeof(double) * N * K * OH * OW);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const double *x = in + ((size_t)n * C + c) * H * W;
            double *o = out + ((size_t)n * K + lo + c) * OH * OW;
            for (int i = 0; i < OH; i++)
                for (int j = 0; j < OW; j++) o[i * OW + j] = x[(2 * i) * W + 2 * j];
        }
}

void ref_shortcut_a_backward(double *din, const double *dout, int N, int C, int H, int W) {
    int OH = H / 2, OW = W / 2, K = 2 * C, lo = C / 2;
    memset(din, 0, sizeof(double) * N * C * H * W);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double *dx = din + ((size_t)n * C + c) * H * W;
            const double *g = dout + ((size_t)n * K + lo + c) * OH * OW;
            for (int i = 0; i < OH; i++)
                for (int j = 0; j < OW; j++) dx[(2 * i) * W + 2 * j] = g[i * OW + j];
        }
}

/* -------------------------------------------------------------- residual ---- */

void ref_residual_forward(double *out, const double *shortcut, const double *branch, double h, bool relu, long n) {
    for (long i = 0; i < n; i++) {
        double v = shortcut[i] + h * branch[i];
        out[i] = (relu && v < 0.0) ? 0.0 : v;
    }
}

/* Element-wise, so dshortcut or dbranch may alias dout. dh accumulates. */
void ref_residual_backward(double *dshortcut, double *dbranch, double *dh, const double *dout, const double *out,
                           const double *branch, double h, bool relu, long n) {
    double acc = 0.0;
    for (long i = 0; i < n; i++) {
        double g = (relu && !(out[i] > 0.0)) ? 0.0 : dout[i];
        acc += g * branch[i];
        dshortcut[i] = g;
        dbranch[i] = h * g;
    }
    *dh += acc;
}
