/* Plain-C reference kernels in double precision, NCHW layout.
 *
 * These are the test oracle for the fast (oneDNN) path and are checked
 * themselves against finite differences. They favour obviousness over speed.
 * Conventions (llm.c style): outputs first, then state saved for backward, then
 * inputs and weights, then sizes. Backward functions OVERWRITE input gradients
 * (din) and ACCUMULATE (+=) parameter gradients (dw, dgamma, ...). */
#ifndef MFRES_NN_REF_H
#define MFRES_NN_REF_H

#include <stdbool.h>

/* Convolution, no bias. in [N,C,H,W], w [K,C,R,S], out [N,K,OH,OW] with
 * OH = (H + 2*pad - R)/stride + 1 (same for OW). Zero padding. */
void ref_conv2d_forward(double *out, const double *in, const double *w, int N, int C, int H, int W, int K, int R,
                        int S, int stride, int pad);
void ref_conv2d_backward_data(double *din, const double *dout, const double *w, int N, int C, int H, int W, int K,
                              int R, int S, int stride, int pad);
void ref_conv2d_backward_weights(double *dw, const double *dout, const double *in, int N, int C, int H, int W, int K,
                                 int R, int S, int stride, int pad);
/* Grouped convolution (ResNeXt): `groups` independent convolutions, group g
 * mapping input channels [g*C/G, (g+1)*C/G) to outputs [g*K/G, (g+1)*K/G);
 * w [K, C/G, R, S]. groups = 1 is the plain convolution above. */
void ref_conv2d_forward_groups(double *out, const double *in, const double *w, int N, int C, int H, int W, int K,
                               int R, int S, int stride, int pad, int groups);
void ref_conv2d_backward_data_groups(double *din, const double *dout, const double *w, int N, int C, int H, int W,
                                     int K, int R, int S, int stride, int pad, int groups);
void ref_conv2d_backward_weights_groups(double *dw, const double *dout, const double *in, int N, int C, int H, int W,
                                        int K, int R, int S, int stride, int pad, int groups);

/* Batch norm over (N, HW) per channel, training mode: biased batch variance.
 * mean[C] and rstd[C] = 1/sqrt(var + eps) are saved for backward. */
void ref_batchnorm_forward(double *out, double *mean, double *rstd, const double *in, const double *gamma,
                           const double *beta, int N, int C, int HW, double eps);
/* Inference mode: normalise with given running statistics. */
void ref_batchnorm_forward_inference(double *out, const double *in, const double *gamma, const double *beta,
                                     const double *running_mean, const double *running_var, int N, int C, int HW,
                                     double eps);
void ref_batchnorm_backward(double *din, double *dgamma, double *dbeta, const double *dout, const double *in,
                            const double *gamma, const double *mean, const double *rstd, int N, int C, int HW);

void ref_relu_forward(double *out, const double *in, long n);
/* Uses the forward OUTPUT (out > 0) as the mask, as oneDNN's use_dst_for_bwd does. */
void ref_relu_backward(double *din, const double *dout, const double *out, long n);

/* Global average pool: in [N,C,HW] -> out [N,C]. */
void ref_avgpool_forward(double *out, const double *in, int N, int C, int HW);
void ref_avgpool_backward(double *din, const double *dout, int N, int C, int HW);

/* Linear: out[N,O] = in[N,I] w[O,I]^T + b[O]. */
void ref_linear_forward(double *out, const double *in, const double *w, const double *b, int N, int I, int O);
void ref_linear_backward(double *din, double *dw, double *db, const double *dout, const double *in, const double *w,
                         int N, int I, int O);

/* Softmax cross-entropy, mean over the samples whose label is >= 0 (label -1 =
 * padding, ignored). Returns the mean loss; probs [N,K] is saved for backward;
 * *correct counts argmax hits. dlogits = (probs - onehot)/n_valid, zero rows for
 * padding. Argmax ties go to the lowest index. */
double ref_softmax_xent_forward(double *probs, int *correct, const double *logits, const int *labels, int N, int K);
void ref_softmax_xent_backward(double *dlogits, const double *probs, const int *labels, int N, int K);

/* Option-A shortcut (He et al. 2016a, CIFAR): spatial subsample by 2 (take
 * even rows and columns) and zero-pad channels C -> 2C with C/2 zero channels
 * on each side: out[n, C/2 + c, i, j] = in[n, c, 2i, 2j]. in [N,C,H,W],
 * out [N,2C,H/2,W/2] (C, H, W even). */
void ref_shortcut_a_forward(double *out, const double *in, int N, int C, int H, int W);
void ref_shortcut_a_backward(double *din, const double *dout, int N, int C, int H, int W);

/* Residual add with a per-block step h: out = act(shortcut + h * branch),
 * act = ReLU if `relu` (post-activation blocks) else identity. Backward gives
 * dshortcut, dbranch = h * g and dh += <g, branch> with g = dout * act'(.) (act' read from
 * out > 0, as in ReLU). dh is a parameter gradient: it ACCUMULATES. */
void ref_residual_forward(double *out, const double *shortcut, const double *branch, double h, bool relu, long n);
void ref_residual_backward(double *dshortcut, double *dbranch, double *dh, const double *dout, const double *out,
                           const double *branch, double h, bool relu, long n);

#endif
