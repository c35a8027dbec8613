/* Inference convolution: bias and fused post-ops, on oneDNN.
 *
 * With fixed statistics a batch norm is a per-channel affine map, so at
 * inference it folds into the convolution in front of it (the caller scales
 * the weights and supplies the bias). What follows the batch norm in a
 * residual block, the add of the shortcut and the ReLU, runs as oneDNN
 * post-ops (sum, eltwise) inside the convolution's own output loop: one pass
 * over the activations where training needs three.
 *
 * The primitive is created for dnnl_forward_inference, which lets oneDNN keep
 * the weights in a layout prepared once per weight change (for Winograd, the
 * transformed weights) instead of once per call. There is no backward here:
 * training uses nn_conv2d. */
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "mfres/core.h"
#include "nn/nn.h"

int nn_conv2d_infer_init(nn_conv2d_infer *conv, const nn_ctx *ctx, int C, int H, int W, int K, int R, int S,
                         int stride, int pad, const dnnl_memory_desc_t *src_md, const dnnl_memory_desc_t *dst_md,
                         bool sum, bool relu) {
    return nn_conv2d_infer_init_groups(conv, ctx, C, H, W, K, R, S, stride, pad, 1, src_md, dst_md, sum, relu);
}

int nn_conv2d_infer_init_groups(nn_conv2d_infer *conv, const nn_ctx *ctx, int C, int H, int W, int K, int R, int S,
                                int stride, int pad, int groups, const dnnl_memory_desc_t *src_md,
                                const dnnl_memory_desc_t *dst_md, bool sum, bool relu) {
    memset(conv, 0, sizeof *conv);
    conv->K = K, conv->C = C, conv->R = R, conv->S = S, conv->sum = sum, conv->relu = relu;
    conv->groups = groups > 1 ? groups : 1;
    if (conv->groups == 1 && nn_conv_own_winograd(ctx, C, K, H, W, R, S, stride, pad)) {
        /* Our Winograd kernel (AVX2 machines), with bias, sum and ReLU in its output transform. */
        int threads = omp_get_max_threads();
        float *U = mfres_alloc((size_t)36 * C * K * sizeof(float), "Winograd weights");
        conv->b_buf = mfres_alloc((size_t)K * sizeof(float), "convolution bias");
        if (!U || !conv->b_buf) {
            mfres_free(U);
            nn_conv2d_infer_free(conv);
            return MFRES_ENOMEM;
        }
        conv->own_winograd = true;
        nn_winograd_init(&conv->winograd, (int)src_md->dims[0], C, H, W, K, U, NULL, NULL, threads);
        snprintf(conv->impl, sizeof conv->impl, "mfres winograd 4x3");
        return nn_scratch_reserve(ctx, nn_winograd_workspace_floats(C, K, threads));
    }
    dnnl_memory_desc_t w_plain = nn_md_conv_weights_plain(C, K, R, S, conv->groups), b_md = nn_md_vector(K);
    nn_conv_geometry geo = {C, H, W, K, R, S, stride, pad, src_md, dst_md, true, conv->groups};

    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int rc = MFRES_OK;
#define TRY(call)                                                             \
    do {                                                                      \
        if (!rc) rc = nn_check((call), #call, __FILE__, __LINE__);            \
    } while (0)
    TRY(dnnl_post_ops_create(&post_ops));
    if (sum) TRY(dnnl_post_ops_append_sum(post_ops, 1.0f));
    if (relu) TRY(dnnl_post_ops_append_eltwise(post_ops, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
    TRY(dnnl_primitive_attr_create(&attr));
    TRY(dnnl_primitive_attr_set_post_ops(attr, post_ops));
    if (!rc) rc = nn_conv_primitive_desc(&pd, ctx, NN_CONV_FORWARD_INFERENCE, &geo, attr, NULL);
    TRY(dnnl_primitive_create(&conv->fwd, pd));
    if (!rc) nn_impl_name(conv->fwd, conv->impl, sizeof conv->impl);
    if (!rc) {
        const dnnl_memory_desc_t *w_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        conv->w_buf = mfres_alloc(dnnl_memory_desc_get_size(w_md), "convolution weights (inference layout)");
        conv->b_buf = mfres_alloc((size_t)K * sizeof(float), "convolution bias");
        if (!conv->w_buf || !conv->b_buf) rc = MFRES_ENOMEM;
        if (!rc) rc = nn_memory_wrap(&conv->w, ctx, w_md, conv->w_buf);
        if (!rc) rc = nn_memory_wrap(&conv->w_plain, ctx, &w_plain, NULL);
        if (!rc) rc = nn_memory_wrap(&conv->bias, ctx, &b_md, conv->b_buf);
        if (!rc) rc = nn_reorder_create(&conv->reorder_w, ctx, &w_plain, w_md);
    }
#undef TRY
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    if (rc) nn_conv2d_infer_free(conv);
    return rc;
}

int nn_conv2d_infer_set_weights(nn_conv2d_infer *conv, const nn_ctx *ctx, const float *w, const float *bias) {
    memcpy(conv->b_buf, bias, (size_t)conv->K * sizeof(float));
    if (conv->own_winograd) {
        nn_winograd wg = nn_winograd_bound(&conv->winograd, ctx);
        nn_winograd_set_weights(&wg, w);
        return MFRES_OK;
    }
    dnnl_memory_set_data_handle(conv->w_plain, (void *)w);
    return nn_reorder_run(ctx, conv->reorder_w, conv->w_plain, conv->w);
}

int nn_conv2d_infer_forward(nn_conv2d_infer *conv, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in) {
    if (conv->own_winograd) {
        nn_winograd wg = nn_winograd_bound(&conv->winograd, ctx);
        nn_winograd_forward_fused(&wg, nn_data_of(out), nn_data_of(in), conv->b_buf, conv->sum, conv->relu);
        return MFRES_OK;
    }
    dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, conv->w}, {DNNL_ARG_BIAS, conv->bias}, {DNNL_ARG_DST, out}};
    NN_CHECK(dnnl_primitive_execute(conv->fwd, ctx->stream, 4, args));
    return MFRES_OK;
}

void nn_conv2d_infer_free(nn_conv2d_infer *conv) {
    if (conv->fwd) dnnl_primitive_destroy(conv->fwd);
    if (conv->reorder_w) dnnl_primitive_destroy(conv->reorder_w);
    dnnl_memory_t mems[] = {conv->w, conv->w_plain, conv->bias};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    mfres_free(conv->w_buf);
    mfres_free(conv->b_buf);
    mfres_free(conv->winograd.U);
    memset(conv, 0, sizeof *conv);
}
