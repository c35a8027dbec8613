/* The fast path: layers on oneDNN (convolution, batch norm) and plain loops
 * with OpenMP (residual add, option-A shortcut, pooling, linear via CBLAS,
 * softmax cross-entropy), all float32.
 *
 * Activations stay in oneDNN's blocked layout nChw{B}c (B = 8 on AVX2, 16 on
 * AVX-512) from the stem convolution to the global average pool: the input is
 * read as plain NCHW by the stem, and the pool writes plain [N, C] for the
 * classifier. Parameters live in plain layouts (OIHW, vectors) in the model's
 * one parameter buffer; each convolution keeps a copy of its weights in the
 * layout oneDNN prefers and reorders once per step.
 *
 * Every primitive is created once, at model build, for a fixed batch size.
 * The reference kernels these are tested against are in ref.h. */
#ifndef MFRES_NN_H
#define MFRES_NN_H

#include <stdbool.h>
#include <stddef.h>

#include <oneapi/dnnl/dnnl.h>

/* Synchronised batch norm across the ranks of a data-parallel job (issue 12,
 * `mfres train --sync-bn`). When allreduce_sum is set, every training batch
 * norm sums its per-channel statistics (Σx, Σx²) over all ranks before it
 * finishes the mean and variance, and its backward sums its per-channel
 * gradient sums (Σdy·x̂, Σdy) before it finishes the input gradient, so the
 * ranks together normalise one global batch. Unset (the default, as in
 * PyTorch's DDP), each rank normalises with its own batch. */
typedef struct nn_bn_sync {
    int (*allreduce_sum)(double *x, size_t n, void *arg); /* x <- its sum over all ranks, in place */
    void *arg;
    int ranks; /* every rank has the same local batch: the statistics count ranks x N x H x W values */
} nn_bn_sync;

typedef struct nn_ctx {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int block; /* channel block of the activation layout: 8 or 16 */
    /* Convolution algorithm: 0 = our per-pass choice (nn_conv_algorithm);
     * otherwise the algorithm MFRES_CONV_ALGO=direct|winograd|auto names. */
    dnnl_alg_kind_t conv_alg_override;
    /* Scratch shared by the layers, which run one at a time (nn_winograd's
     * per-thread tile blocks); grown by layers at build time. */
    struct nn_scratch {
        float *data;
        size_t floats;
    } *scratch;
    nn_bn_sync bn_sync; /* sync-BN hook; zero: per-rank statistics */
} nn_ctx;

/* The passes of a convolution, for the choice of algorithm. */
typedef enum nn_conv_pass {
    NN_CONV_FORWARD,          /* training forward */
    NN_CONV_FORWARD_INFERENCE,    /* inference forward (with the sum and ReLU post-ops of conv2d_infer) */
    NN_CONV_BACKWARD_DATA,
    NN_CONV_BACKWARD_WEIGHTS,
} nn_conv_pass;

/* Direct or Winograd for one pass of a convolution with C input and K output
 * channels; see onednn.c for the measurements behind the rule. A Winograd
 * choice falls back to direct where oneDNN has no Winograd kernel (AVX2). */
dnnl_alg_kind_t nn_conv_algorithm(const nn_ctx *ctx, nn_conv_pass pass, int C, int K, int R, int S, int stride);
/* Whether a convolution runs on our own Winograd kernel (winograd.c) instead
 * of oneDNN, every pass: on machines where oneDNN has none (8-channel blocks,
 * AVX2), for the shapes where it measured faster. */
bool nn_conv_own_winograd(const nn_ctx *ctx, int C, int K, int H, int W, int R, int S, int stride, int pad);

int nn_ctx_init(nn_ctx *ctx);
void nn_ctx_free(nn_ctx *ctx);

/* Memory descriptors for the layouts we use. */
dnnl_memory_desc_t nn_md_blocked(const nn_ctx *ctx, int N, int C, int H, int W); /* nChw{B}c */
dnnl_memory_desc_t nn_md_nchw(int N, int C, int H, int W);
dnnl_memory_desc_t nn_md_nhwc(int N, int C, int H, int W);
dnnl_memory_desc_t nn_md_vector(int C);
/* Wraps a caller-owned buffer (may be NULL now and set later) in a oneDNN memory object. */
int nn_memory_wrap(dnnl_memory_t *mem, const nn_ctx *ctx, const dnnl_memory_desc_t *md, void *data);

/* oneDNN's name for the implementation behind a primitive ("jit_wino_4x3:avx512_core"). */
void nn_impl_name(const_dnnl_primitive_t prim, char *buf, size_t n);

/* Returns MFRES_EBACKEND with a message naming the call if status is not success. */
int nn_check(dnnl_status_t status, const char *what, const char *file, int line);
#define NN_CHECK(call)                                                            \
    do {                                                                          \
        int nn_rc_ = nn_check((call), #call, __FILE__, __LINE__);                 \
        if (nn_rc_) return nn_rc_;                                                \
    } while (0)

/* ---- winograd: F(4x4, 3x3) for 3x3 stride-1 layers on nChw8c (winograd.c) ----
 * For machines where oneDNN has no Winograd kernel (AVX2). Weights are plain
 * OIHW; U (and U_data, for backward-data) hold the transformed copies,
 * 36*C*K floats each; the workspace (nn_winograd_workspace_floats) may be
 * shared by all layers, which run one at a time. */
typedef struct nn_winograd {
    int N, C, H, W, K, TH, TW, threads;
    float *U, *U_data, *workspace;
} nn_winograd;

bool nn_winograd_supported(int C, int K, int R, int S, int stride, int pad, int block);
size_t nn_winograd_workspace_floats(int C, int K, int threads);
void nn_winograd_init(nn_winograd *wg, int N, int C, int H, int W, int K, float *U, float *U_data, float *workspace,
                      int threads);
/* Transforms plain OIHW weights into U (and U_data); uses the workspace. */
void nn_winograd_set_weights(nn_winograd *wg, const float *w);
void nn_winograd_forward(const nn_winograd *wg, float *y, const float *x);        /* y overwritten */
/* y = relu?(y_before? + conv(x) + bias): the inference convolution's post-ops. */
void nn_winograd_forward_fused(const nn_winograd *wg, float *y, const float *x, const float *bias, bool sum,
                               bool relu);
void nn_winograd_backward_data(const nn_winograd *wg, float *dx, const float *dy); /* dx overwritten */
void nn_winograd_backward_weights(const nn_winograd *wg, float *dw, const float *x, const float *dy); /* OIHW, overwritten */

/* Grows the shared scratch (ctx->scratch) to at least `floats`; at build time. */
int nn_scratch_reserve(const nn_ctx *ctx, size_t floats);
/* A layer's Winograd state pointed at the shared scratch, for the current thread count. */
nn_winograd nn_winograd_bound(const nn_winograd *wg, const nn_ctx *ctx);
/* The buffer behind a oneDNN memory object. */
float *nn_data_of(dnnl_memory_t mem);
/* A reorder between two layouts of the same tensor, and running it. */
int nn_reorder_create(dnnl_primitive_t *reorder, const nn_ctx *ctx, const dnnl_memory_desc_t *from,
                      const dnnl_memory_desc_t *to);
int nn_reorder_run(const nn_ctx *ctx, dnnl_primitive_t reorder, dnnl_memory_t from, dnnl_memory_t to);

/* ---- what nn_conv2d and nn_conv2d_infer share ---- */
typedef struct nn_conv_geometry {
    int C, H, W, K, R, S, stride, pad;
    const dnnl_memory_desc_t *src, *dst;
    bool bias;
    int groups; /* 0 or 1: a plain convolution; G > 1: G groups of C/G inputs and K/G outputs (ResNeXt) */
} nn_conv_geometry;

/* Plain weights as the parameter buffer holds them: OIHW [K, C/G, R, S], which
 * is oneDNN's GOIHW [G, K/G, C/G, R, S] for a grouped convolution. */
dnnl_memory_desc_t nn_md_conv_weights_plain(int C, int K, int R, int S, int groups);

/* oneDNN's primitive descriptor for one pass (weights in layout `any`), with
 * the algorithm nn_conv_algorithm picks, or direct where that has no kernel.
 * hint: the forward descriptor, for the backward passes. */
int nn_conv_primitive_desc(dnnl_primitive_desc_t *pd, const nn_ctx *ctx, nn_conv_pass pass, const nn_conv_geometry *g,
                           const_dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint);

/* ---- conv2d: 2-D convolution without bias, on oneDNN ---- */
typedef struct nn_conv2d {
    int N, C, H, W, K, R, S, stride, pad, OH, OW, groups;
    bool backward_data; /* false for the stem: the input needs no gradient */
    dnnl_primitive_t fwd, bwd_data, bwd_weights;
    dnnl_primitive_t reorder_w_fwd, reorder_w_bwd_data, reorder_dw; /* NULL when layouts match */
    dnnl_memory_t w_plain, dw_plain;       /* handles point into the parameter / gradient buffers */
    dnnl_memory_t w_fwd, w_bwd_data, dw;   /* oneDNN's preferred layouts (own buffers, or aliases) */
    float *w_fwd_buf, *w_bwd_data_buf, *dw_buf;
    char impl[4][40]; /* oneDNN's implementation per nn_conv_pass, for profiles */
    /* On our own Winograd kernel (nn_conv_own_winograd), and its transformed weights. */
    bool own_winograd;
    nn_winograd winograd;
    float *w_bound, *dw_bound;
    /* Set when the source is taken in oneDNN's layout (see nn_conv2d_init). */
    dnnl_primitive_t reorder_src;
    dnnl_memory_t src_copy;
    dnnl_memory_desc_t src_md;
    float *src_buf;
} nn_conv2d;

/* src_md and dst_md fix the activation layouts; the weights layout is oneDNN's choice. */
int nn_conv2d_init(nn_conv2d *conv, const nn_ctx *ctx, int N, int C, int H, int W, int K, int R, int S, int stride,
                   int pad, const dnnl_memory_desc_t *src_md, const dnnl_memory_desc_t *dst_md, bool backward_data);
/* The same with `groups` groups (weights [K, C/groups, R, S]); oneDNN's direct kernels. */
int nn_conv2d_init_groups(nn_conv2d *conv, const nn_ctx *ctx, int N, int C, int H, int W, int K, int R, int S,
                          int stride, int pad, int groups, const dnnl_memory_desc_t *src_md,
                          const dnnl_memory_desc_t *dst_md, bool backward_data);
/* Points the layer at plain OIHW weights and their gradient (K*C/groups*R*S floats each). */
void nn_conv2d_bind(nn_conv2d *conv, float *w, float *dw);
/* Reorders the bound plain weights into the layouts the primitives want. Once per step. */
int nn_conv2d_prepare(nn_conv2d *conv, const nn_ctx *ctx);
int nn_conv2d_forward(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in);
/* din = conv^T(dout) (overwrites) */
int nn_conv2d_backward_data(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t din, dnnl_memory_t dout);
/* dw (the bound plain gradient) = correlation of in and dout (overwrites: oneDNN has no accumulate mode here) */
int nn_conv2d_backward_weights(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t in, dnnl_memory_t dout);
void nn_conv2d_free(nn_conv2d *conv);

/* ---- conv2d_infer: inference convolution with bias and post-ops, on oneDNN ----
 * out = relu?(out_before? + conv(in) + bias): `sum` adds the convolution to
 * what `out` already holds (the residual shortcut), `relu` applies a ReLU last.
 * The caller folds any batch norm into the weights and bias (conv2d_infer.c). */
typedef struct nn_conv2d_infer {
    int K, C, R, S, groups;
    dnnl_primitive_t fwd, reorder_w;
    dnnl_memory_t w_plain, w, bias; /* w: oneDNN's inference layout (own buffer) */
    float *w_buf, *b_buf;
    char impl[40];
    bool own_winograd, sum, relu; /* on our Winograd kernel (nn_conv_own_winograd) */
    nn_winograd winograd;
} nn_conv2d_infer;

int nn_conv2d_infer_init(nn_conv2d_infer *conv, const nn_ctx *ctx, int C, int H, int W, int K, int R, int S,
                         int stride, int pad, const dnnl_memory_desc_t *src_md, const dnnl_memory_desc_t *dst_md,
                         bool sum, bool relu);
int nn_conv2d_infer_init_groups(nn_conv2d_infer *conv, const nn_ctx *ctx, int C, int H, int W, int K, int R, int S,
                                int stride, int pad, int groups, const dnnl_memory_desc_t *src_md,
                                const dnnl_memory_desc_t *dst_md, bool sum, bool relu);
/* Copies plain OIHW weights (K*C/groups*R*S floats) and the bias [K] into the layer. */
int nn_conv2d_infer_set_weights(nn_conv2d_infer *conv, const nn_ctx *ctx, const float *w, const float *bias);
int nn_conv2d_infer_forward(nn_conv2d_infer *conv, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in);
void nn_conv2d_infer_free(nn_conv2d_infer *conv);

/* ---- batch norm (+ optional fused ReLU), on oneDNN ---- */
typedef struct nn_batchnorm {
    int N, C, HW;
    bool relu;
    float eps;
    size_t workspace_bytes; /* ReLU mask for backward, when fused */
    dnnl_primitive_t fwd_train, fwd_infer, bwd;
    /* Sync-BN (nn_bn_sync): the same passes with the statistics supplied
     * (dnnl_use_global_stats), created on first synchronised use. */
    dnnl_primitive_t fwd_train_given, bwd_given;
    dnnl_memory_t gamma, beta, dgamma, dbeta, mean, var, running_mean, running_var, workspace;
} nn_batchnorm;

int nn_batchnorm_init(nn_batchnorm *bn, const nn_ctx *ctx, int N, int C, int H, int W, bool relu, float eps,
                      const dnnl_memory_desc_t *data_md);
/* Binds parameters (gamma, beta), their gradients, running statistics, and the
 * per-position saved state: batch mean/var [C] and the ReLU workspace. */
void nn_batchnorm_bind(nn_batchnorm *bn, float *gamma, float *beta, float *dgamma, float *dbeta, float *running_mean,
                       float *running_var, float *mean, float *var, void *workspace);
/* Re-points only the affine parameters (for a scaled copy of gamma and beta). */
void nn_batchnorm_bind_affine(nn_batchnorm *bn, float *gamma, float *beta);
/* Training: normalise with batch statistics, save mean/var, then update the
 * running statistics like PyTorch (momentum 0.1, unbiased variance). With
 * ctx->bn_sync set, the statistics are those of the batch of all ranks. */
int nn_batchnorm_forward_train(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in,
                               float momentum);
int nn_batchnorm_forward_infer(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in);
/* Running statistics from the bound batch mean/var, as PyTorch updates them
 * (for statistics computed outside the primitive: nn_batchnorm_statistics). */
void nn_batchnorm_update_running(nn_batchnorm *bn, float momentum);
/* The statistics pass of a batch norm whose normalisation runs elsewhere (the
 * post-activation block end, nn_bn_residual_relu_forward): mean/var of x
 * (nChw{B}c) into the bound mean/var buffers, summed over all ranks when
 * ctx->bn_sync is set, then the running statistics. */
int nn_batchnorm_train_statistics(nn_batchnorm *bn, const nn_ctx *ctx, const float *x, float momentum);
/* din overwritten; dgamma, dbeta overwritten. With ctx->bn_sync set, din is
 * the gradient through the statistics of all ranks' batch, while dgamma and
 * dbeta stay this rank's share (the trainer sums every gradient over ranks). */
int nn_batchnorm_backward(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t din, dnnl_memory_t dout,
                          dnnl_memory_t in);
void nn_batchnorm_free(nn_batchnorm *bn);

/* ---- plain loops (any layout where noted) ---- */
/* out = shortcut + h * branch; elementwise, so any layout shared by all three. */
void nn_residual_forward(float *out, const float *shortcut, const float *branch, float h, size_t n);
/* Batch mean and biased variance per channel of x (nChw{B}c), as a batch norm
 * in training mode uses them; the same bits on any thread count. */
void nn_batchnorm_statistics(float *mean, float *var, const float *x, int N, int C, int HW, int block);
/* The same, with the per-channel sums added over all ranks through sync (NULL:
 * this rank alone, the same bits as nn_batchnorm_statistics). */
int nn_batchnorm_statistics_sync(float *mean, float *var, const float *x, int N, int C, int HW, int block,
                                 const nn_bn_sync *sync);
/* out = relu(shortcut + gamma*(t - mean)/sqrt(var + eps) + beta), mask = out > 0:
 * the end of a post-activation block in one pass (bn_residual.c). nChw{B}c. */
void nn_bn_residual_relu_forward(float *out, unsigned char *mask, const float *shortcut, const float *t,
                                 const float *mean, const float *var, const float *gamma, const float *beta, float eps,
                                 int N, int C, int HW, int block);
/* x *= a */
void nn_scale_inplace(float *x, float a, size_t n);
/* dst += src */
void nn_add_inplace(float *dst, const float *src, size_t n);
/* g *= mask, in place: ReLU's backward from the mask nn_bn_residual_relu_forward
 * recorded (1 byte a value instead of re-reading the 4-byte activation). */
void nn_relu_backward_inplace(float *g, const unsigned char *mask, size_t n);

/* Option-A shortcut: in [N,C,H,W] -> out [N,2C,H/2,W/2], zero channels C/2 on each side. out is
 * nChw{block}c, in nChw{in_block}c (in_block = C reads NHWC, which is the same layout). */
void nn_shortcut_a_forward(float *out, const float *in, int N, int C, int H, int W, int in_block, int block);
/* din += shortcut^T(dout) */
void nn_shortcut_a_backward_add(float *din, const float *dout, int N, int C, int H, int W, int block);

/* Global average pool from nChw{B}c to plain [N, C]. */
void nn_avgpool_forward(float *out, const float *in, int N, int C, int HW, int block);
void nn_avgpool_backward(float *din, const float *dout, int N, int C, int HW, int block);

/* Linear (CBLAS): out[N,O] = in[N,I] w[O,I]^T + b. Backward overwrites din, dw, db. */
void nn_linear_forward(float *out, const float *in, const float *w, const float *b, int N, int n_in, int n_out);
void nn_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int N,
                        int n_in, int n_out);

/* Softmax cross-entropy averaged over rows with label >= 0 (label -1 = padding).
 * Saves probs; returns the summed loss over valid rows in *loss_sum and counts
 * correct predictions and valid rows. dlogits = (probs - onehot)/n_valid. */
void nn_softmax_xent_forward(float *probs, double *loss_sum, int *correct, int *n_valid, const float *logits,
                             const int *labels, int N, int K);
void nn_softmax_xent_backward(float *dlogits, const float *probs, const int *labels, int N, int K);

#endif
