/* 2-D convolution (no bias) on oneDNN: forward, backward-data, backward-weights.
 *
 * The weights' master copy is plain OIHW in the parameter buffer. oneDNN runs
 * fastest with weights in a blocked layout of its own choosing (format `any`);
 * plain weights with blocked activations fall to a reference kernel hundreds
 * of times slower. So each layer owns blocked copies, refreshed once per step
 * by nn_conv2d_prepare(), and reorders the weight gradient back to plain. */
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "mfres/core.h"
#include "nn/nn.h"

static int make_primitive(dnnl_primitive_t *prim, dnnl_primitive_desc_t pd) {
    NN_CHECK(dnnl_primitive_create(prim, pd));
    return MFRES_OK;
}

/* A buffer + memory object in layout `want`, or an alias of `plain` when the
 * layouts agree; and the reorder between them (from_plain: plain -> want). */
static int make_layout_copy(const nn_ctx *ctx, const dnnl_memory_desc_t *want, const dnnl_memory_desc_t *plain_md,
                            bool from_plain, dnnl_memory_t *mem, float **buf, dnnl_primitive_t *reorder) {
    *buf = NULL;
    *reorder = NULL;
    if (dnnl_memory_desc_equal(want, plain_md)) {
        *mem = NULL; /* caller uses the plain memory */
        return MFRES_OK;
    }
    *buf = mfres_alloc(dnnl_memory_desc_get_size(want), "convolution weights (blocked)");
    if (!*buf) return MFRES_ENOMEM;
    int rc = nn_memory_wrap(mem, ctx, want, *buf);
    if (rc) return rc;
    return from_plain ? nn_reorder_create(reorder, ctx, plain_md, want) : nn_reorder_create(reorder, ctx, want, plain_md);
}

int nn_conv_primitive_desc(dnnl_primitive_desc_t *pd, const nn_ctx *ctx, nn_conv_pass pass, const nn_conv_geometry *g,
                           const_dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint) {
    int OH = (g->H + 2 * g->pad - g->R) / g->stride + 1, OW = (g->W + 2 * g->pad - g->S) / g->stride + 1;
    int G = g->groups > 1 ? g->groups : 1;
    dnnl_memory_desc_t w_any, b_md = nn_md_vector(g->K);
    dnnl_memory_desc_t w_plain = nn_md_conv_weights_plain(g->C, g->K, g->R, g->S, G);
    dnnl_memory_desc_init_by_tag(&w_any, w_plain.ndims, w_plain.dims, dnnl_f32, dnnl_format_tag_any);
    dnnl_dims_t strides = {g->stride, g->stride}, padding = {g->pad, g->pad};
    /* Right padding so that the output size is exact when (H + 2p - R) is not a multiple of the stride. */
    dnnl_dims_t padding_r = {(OH - 1) * g->stride + g->R - g->H - g->pad, (OW - 1) * g->stride + g->S - g->W - g->pad};
    const dnnl_memory_desc_t *bias = g->bias ? &b_md : NULL;
    /* oneDNN has no grouped Winograd kernel. */
    dnnl_alg_kind_t alg = G > 1 ? dnnl_convolution_direct : nn_conv_algorithm(ctx, pass, g->C, g->K, g->R, g->S, g->stride);
    for (;;) {
        dnnl_convolution_desc_t desc;
        if (pass == NN_CONV_FORWARD || pass == NN_CONV_FORWARD_INFERENCE)
            NN_CHECK(dnnl_convolution_forward_desc_init(
                &desc, pass == NN_CONV_FORWARD ? dnnl_forward_training : dnnl_forward_inference, alg, g->src, &w_any,
                bias, g->dst, strides, padding, padding_r));
        else if (pass == NN_CONV_BACKWARD_DATA)
            NN_CHECK(dnnl_convolution_backward_data_desc_init(&desc, alg, g->src, &w_any, g->dst, strides, padding,
                                                              padding_r));
        else
            NN_CHECK(dnnl_convolution_backward_weights_desc_init(&desc, alg, g->src, &w_any, bias, g->dst, strides,
                                                                 padding, padding_r));
        dnnl_status_t st = dnnl_primitive_desc_create(pd, &desc, attr, ctx->engine, hint);
        if (st != dnnl_unimplemented || alg == dnnl_convolution_direct)
            return nn_check(st, "convolution primitive descriptor", __FILE__, __LINE__);
        alg = dnnl_convolution_direct; /* no Winograd kernel for this shape or machine */
    }
}

/* The primitives of the three passes and the weight copies, for the source layout geo->src. */
static int build_passes(nn_conv2d *conv, const nn_ctx *ctx, const nn_conv_geometry *geo) {
    dnnl_memory_desc_t w_plain = nn_md_conv_weights_plain(conv->C, conv->K, conv->R, conv->S, conv->groups);

    dnnl_primitive_desc_t fwd_pd = NULL, pd = NULL;
    int rc = nn_conv_primitive_desc(&fwd_pd, ctx, NN_CONV_FORWARD, geo, NULL, NULL);
    if (rc) return rc;
    rc = make_primitive(&conv->fwd, fwd_pd);
    const dnnl_memory_desc_t *w_fwd_md = dnnl_primitive_desc_query_md(fwd_pd, dnnl_query_weights_md, 0);
    if (!rc) rc = nn_memory_wrap(&conv->w_plain, ctx, &w_plain, NULL);
    if (!rc) rc = nn_memory_wrap(&conv->dw_plain, ctx, &w_plain, NULL);
    if (!rc) rc = make_layout_copy(ctx, w_fwd_md, &w_plain, true, &conv->w_fwd, &conv->w_fwd_buf, &conv->reorder_w_fwd);
    if (rc) goto done;

    if (conv->backward_data) {
        rc = nn_conv_primitive_desc(&pd, ctx, NN_CONV_BACKWARD_DATA, geo, NULL, fwd_pd);
        if (!rc) rc = make_primitive(&conv->bwd_data, pd);
        const dnnl_memory_desc_t *w_bd_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        if (!rc && conv->w_fwd && dnnl_memory_desc_equal(w_bd_md, w_fwd_md)) {
            conv->w_bwd_data = conv->w_fwd; /* same layout: share the forward copy */
        } else if (!rc) {
            rc = make_layout_copy(ctx, w_bd_md, &w_plain, true, &conv->w_bwd_data, &conv->w_bwd_data_buf,
                                  &conv->reorder_w_bwd_data);
        }
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
        if (rc) goto done;
    }

    rc = nn_conv_primitive_desc(&pd, ctx, NN_CONV_BACKWARD_WEIGHTS, geo, NULL, fwd_pd);
    if (rc) goto done;
    rc = make_primitive(&conv->bwd_weights, pd);
    const dnnl_memory_desc_t *dw_md = dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, 0);
    if (!rc) rc = make_layout_copy(ctx, dw_md, &w_plain, false, &conv->dw, &conv->dw_buf, &conv->reorder_dw);
    nn_impl_name(conv->fwd, conv->impl[NN_CONV_FORWARD], sizeof conv->impl[0]);
    nn_impl_name(conv->bwd_data, conv->impl[NN_CONV_BACKWARD_DATA], sizeof conv->impl[0]);
    nn_impl_name(conv->bwd_weights, conv->impl[NN_CONV_BACKWARD_WEIGHTS], sizeof conv->impl[0]);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(fwd_pd);
    return rc;
}

static void set_shape(nn_conv2d *conv, int N, int C, int H, int W, int K, int R, int S, int stride, int pad,
                      int groups, bool backward_data) {
    memset(conv, 0, sizeof *conv);
    conv->groups = groups > 1 ? groups : 1;
    conv->N = N, conv->C = C, conv->H = H, conv->W = W, conv->K = K, conv->R = R, conv->S = S;
    conv->stride = stride, conv->pad = pad, conv->backward_data = backward_data;
    conv->OH = (H + 2 * pad - R) / stride + 1;
    conv->OW = (W + 2 * pad - S) / stride + 1;
}

/* Our Winograd kernel for every pass where nn_conv_own_winograd says so: its
 * weight buffers and the shared scratch. */
static int setup_own_winograd(nn_conv2d *conv, const nn_ctx *ctx) {
    conv->own_winograd = conv->groups == 1 && nn_conv_own_winograd(ctx, conv->C, conv->K, conv->H, conv->W, conv->R,
                                                                   conv->S, conv->stride, conv->pad);
    if (!conv->own_winograd) return MFRES_OK;
    for (int p = 0; p < 4; p++)
        if (conv->impl[p][0]) snprintf(conv->impl[p], sizeof conv->impl[p], "mfres winograd 4x3");
    size_t u = (size_t)36 * conv->C * conv->K;
    float *U = mfres_alloc(u * sizeof(float), "Winograd weights");
    float *U_data = conv->backward_data ? mfres_alloc(u * sizeof(float), "Winograd weights") : NULL;
    if (!U || (conv->backward_data && !U_data)) {
        mfres_free(U), mfres_free(U_data);
        return MFRES_ENOMEM;
    }
    int threads = omp_get_max_threads();
    nn_winograd_init(&conv->winograd, conv->N, conv->C, conv->H, conv->W, conv->K, U, U_data, NULL, threads);
    return nn_scratch_reserve(ctx, nn_winograd_workspace_floats(conv->C, conv->K, threads));
}

/* oneDNN has only its reference kernel (hundreds of times slower) for some
 * plain sources: a 1-channel NCHW input's backward-weights on AVX2 took 170 ms
 * where a blocked source takes 0.7 (the forward pass has a kernel for the plain
 * source, and only for it). So backward-weights takes its source in the layout
 * oneDNN picks for it, and the layer reorders the input into that copy (a few
 * channels) before the pass. Only for layers whose input needs no gradient, as
 * the stem's. Keeps the plain source when no layout has a better kernel. */
static int backward_weights_in_onednn_layout(nn_conv2d *conv, const nn_ctx *ctx, const nn_conv_geometry *geo) {
    int C = conv->C, K = conv->K, R = conv->R, S = conv->S, rc;
    const dnnl_memory_desc_t *src_md = geo->src;
    dnnl_memory_desc_t src_any;
    dnnl_memory_desc_init_by_tag(&src_any, 4, src_md->dims, dnnl_f32, dnnl_format_tag_any);
    nn_conv_geometry any_geo = *geo;
    any_geo.src = &src_any;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    if ((rc = nn_conv_primitive_desc(&hint, ctx, NN_CONV_FORWARD, geo, NULL, NULL))) return rc;
    rc = nn_conv_primitive_desc(&pd, ctx, NN_CONV_BACKWARD_WEIGHTS, &any_geo, NULL, hint);
    dnnl_primitive_desc_destroy(hint);
    if (rc) return rc;
    const char *name = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
    if (!name || !strncmp(name, "ref", 3)) { /* no better kernel for any layout: keep the plain one */
        dnnl_primitive_desc_destroy(pd);
        return MFRES_OK;
    }
    dnnl_primitive_destroy(conv->bwd_weights);
    conv->bwd_weights = NULL;
    rc = make_primitive(&conv->bwd_weights, pd);
    conv->src_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    /* The weight-gradient layout may differ too. */
    if (conv->reorder_dw) dnnl_primitive_destroy(conv->reorder_dw);
    if (conv->dw) dnnl_memory_destroy(conv->dw);
    mfres_free(conv->dw_buf);
    conv->reorder_dw = NULL, conv->dw = NULL, conv->dw_buf = NULL;
    dnnl_memory_desc_t w_plain = nn_md_conv_weights_plain(C, K, R, S, conv->groups);
    if (!rc)
        rc = make_layout_copy(ctx, dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, 0), &w_plain, false,
                              &conv->dw, &conv->dw_buf, &conv->reorder_dw);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return rc;
    nn_impl_name(conv->bwd_weights, conv->impl[NN_CONV_BACKWARD_WEIGHTS], sizeof conv->impl[0]);
    conv->src_buf = mfres_alloc(dnnl_memory_desc_get_size(&conv->src_md), "convolution source (oneDNN layout)");
    if (!conv->src_buf) return MFRES_ENOMEM;
    if ((rc = nn_memory_wrap(&conv->src_copy, ctx, &conv->src_md, conv->src_buf))) return rc;
    return nn_reorder_create(&conv->reorder_src, ctx, src_md, &conv->src_md);
}

int nn_conv2d_init(nn_conv2d *conv, const nn_ctx *ctx, int N, int C, int H, int W, int K, int R, int S, int stride,
                   int pad, const dnnl_memory_desc_t *src_md, const dnnl_memory_desc_t *dst_md, bool backward_data) {
    return nn_conv2d_init_groups(conv, ctx, N, C, H, W, K, R, S, stride, pad, 1, src_md, dst_md, backward_data);
}

int nn_conv2d_init_groups(nn_conv2d *conv, const nn_ctx *ctx, int N, int C, int H, int W, int K, int R, int S,
                          int stride, int pad, int groups, const dnnl_memory_desc_t *src_md,
                          const dnnl_memory_desc_t *dst_md, bool backward_data) {
    set_shape(conv, N, C, H, W, K, R, S, stride, pad, groups, backward_data);
    nn_conv_geometry geo = {C, H, W, K, R, S, stride, pad, src_md, dst_md, false, conv->groups};
    int rc = build_passes(conv, ctx, &geo);
    if (!rc) rc = setup_own_winograd(conv, ctx);
    if (rc || backward_data || strncmp(conv->impl[NN_CONV_BACKWARD_WEIGHTS], "ref", 3)) return rc;
    return backward_weights_in_onednn_layout(conv, ctx, &geo);
}

void nn_conv2d_bind(nn_conv2d *conv, float *w, float *dw) {
    conv->w_bound = w, conv->dw_bound = dw;
    dnnl_memory_set_data_handle(conv->w_plain, w);
    dnnl_memory_set_data_handle(conv->dw_plain, dw);
}

int nn_conv2d_prepare(nn_conv2d *conv, const nn_ctx *ctx) {
    int rc = MFRES_OK;
    if (conv->own_winograd) { /* oneDNN's weight copies are not used */
        nn_winograd wg = nn_winograd_bound(&conv->winograd, ctx);
        nn_winograd_set_weights(&wg, conv->w_bound);
        return MFRES_OK;
    }
    if (conv->reorder_w_fwd) rc = nn_reorder_run(ctx, conv->reorder_w_fwd, conv->w_plain, conv->w_fwd);
    if (!rc && conv->reorder_w_bwd_data) rc = nn_reorder_run(ctx, conv->reorder_w_bwd_data, conv->w_plain, conv->w_bwd_data);
    return rc;
}

/* The source as backward-weights takes it: `in` itself, or its copy in oneDNN's layout. */
static int source(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t *in) {
    if (!conv->reorder_src) return MFRES_OK;
    int rc = nn_reorder_run(ctx, conv->reorder_src, *in, conv->src_copy);
    *in = conv->src_copy;
    return rc;
}



int nn_conv2d_forward(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in) {
    if (conv->own_winograd) {
        nn_winograd wg = nn_winograd_bound(&conv->winograd, ctx);
        nn_winograd_forward(&wg, nn_data_of(out), nn_data_of(in));
        return MFRES_OK;
    }
    dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, conv->w_fwd ? conv->w_fwd : conv->w_plain}, {DNNL_ARG_DST, out}};
    NN_CHECK(dnnl_primitive_execute(conv->fwd, ctx->stream, 3, args));
    return MFRES_OK;
}

int nn_conv2d_backward_data(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t din, dnnl_memory_t dout) {
    if (!conv->bwd_data) return mfres_fail(MFRES_EINVAL, "convolution built without backward-data");
    if (conv->own_winograd) {
        nn_winograd wg = nn_winograd_bound(&conv->winograd, ctx);
        nn_winograd_backward_data(&wg, nn_data_of(din), nn_data_of(dout));
        return MFRES_OK;
    }
    dnnl_exec_arg_t args[] = {{DNNL_ARG_DIFF_DST, dout},
                              {DNNL_ARG_WEIGHTS, conv->w_bwd_data ? conv->w_bwd_data : conv->w_plain},
                              {DNNL_ARG_DIFF_SRC, din}};
    NN_CHECK(dnnl_primitive_execute(conv->bwd_data, ctx->stream, 3, args));
    return MFRES_OK;
}

int nn_conv2d_backward_weights(nn_conv2d *conv, const nn_ctx *ctx, dnnl_memory_t in, dnnl_memory_t dout) {
    if (conv->own_winograd) {
        nn_winograd wg = nn_winograd_bound(&conv->winograd, ctx);
        nn_winograd_backward_weights(&wg, conv->dw_bound, nn_data_of(in), nn_data_of(dout));
        return MFRES_OK;
    }
    int rc = source(conv, ctx, &in);
    if (rc) return rc;
    dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, in}, {DNNL_ARG_DIFF_DST, dout}, {DNNL_ARG_DIFF_WEIGHTS, conv->dw ? conv->dw : conv->dw_plain}};
    NN_CHECK(dnnl_primitive_execute(conv->bwd_weights, ctx->stream, 3, args));
    if (conv->reorder_dw) return nn_reorder_run(ctx, conv->reorder_dw, conv->dw, conv->dw_plain);
    return MFRES_OK;
}

void nn_conv2d_free(nn_conv2d *conv) {
    dnnl_primitive_t prims[] = {conv->fwd,        conv->bwd_data,           conv->bwd_weights, conv->reorder_w_fwd,
                                conv->reorder_w_bwd_data, conv->reorder_dw, conv->reorder_src};
    for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++)
        if (prims[i]) dnnl_primitive_destroy(prims[i]);
    if (conv->w_bwd_data && conv->w_bwd_data != conv->w_fwd) dnnl_memory_destroy(conv->w_bwd_data);
    dnnl_memory_t mems[] = {conv->w_plain, conv->dw_plain, conv->w_fwd, conv->dw, conv->src_copy};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    mfres_free(conv->w_fwd_buf);
    mfres_free(conv->w_bwd_data_buf);
    mfres_free(conv->dw_buf);
    mfres_free(conv->src_buf);
    mfres_free(conv->winograd.U);
    mfres_free(conv->winograd.U_data);
    memset(conv, 0, sizeof *conv);
}
