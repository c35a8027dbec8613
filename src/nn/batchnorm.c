/* Batch normalisation on oneDNN, with the ReLU that follows fused in when asked
 * (oneDNN's fuse_norm_relu: one pass over the activations instead of two, and
 * a bit mask as the workspace for backward).
 * Training normalises with the batch statistics (biased variance) and updates
 * running statistics as PyTorch does: momentum 0.1, unbiased variance. */
#include <string.h>

#include "mfres/core.h"
#include "nn/nn.h"

int nn_batchnorm_init(nn_batchnorm *bn, const nn_ctx *ctx, int N, int C, int H, int W, bool relu, float eps,
                      const dnnl_memory_desc_t *data_md) {
    memset(bn, 0, sizeof *bn);
    bn->N = N, bn->C = C, bn->HW = H * W, bn->relu = relu, bn->eps = eps;
    unsigned flags = dnnl_use_scale | dnnl_use_shift | (relu ? dnnl_fuse_norm_relu : 0);
    dnnl_batch_normalization_desc_t desc;
    dnnl_primitive_desc_t train_pd = NULL, pd = NULL;

    NN_CHECK(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_training, data_md, eps, flags));
    NN_CHECK(dnnl_primitive_desc_create(&train_pd, &desc, NULL, ctx->engine, NULL));
    int rc = nn_check(dnnl_primitive_create(&bn->fwd_train, train_pd), "batch norm forward", __FILE__, __LINE__);
    const dnnl_memory_desc_t *ws_md = dnnl_primitive_desc_query_md(train_pd, dnnl_query_workspace_md, 0);
    bn->workspace_bytes = ws_md ? dnnl_memory_desc_get_size(ws_md) : 0;
    if (!rc && bn->workspace_bytes) rc = nn_memory_wrap(&bn->workspace, ctx, ws_md, NULL);

    if (!rc) rc = nn_check(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_inference, data_md, eps,
                                                                      flags | dnnl_use_global_stats),
                           "batch norm inference desc", __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_desc_create(&pd, &desc, NULL, ctx->engine, NULL), "batch norm inference pd",
                           __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_create(&bn->fwd_infer, pd), "batch norm inference", __FILE__, __LINE__);
    if (pd) dnnl_primitive_desc_destroy(pd);
    pd = NULL;

    if (!rc) rc = nn_check(dnnl_batch_normalization_backward_desc_init(&desc, dnnl_backward, data_md, data_md, eps, flags),
                           "batch norm backward desc", __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_desc_create(&pd, &desc, NULL, ctx->engine, train_pd),
                           "batch norm backward pd", __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_create(&bn->bwd, pd), "batch norm backward", __FILE__, __LINE__);
    if (pd) dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(train_pd);
    if (rc) return rc;

    dnnl_memory_desc_t vec = nn_md_vector(C);
    dnnl_memory_t *vectors[] = {&bn->gamma, &bn->beta, &bn->dgamma, &bn->dbeta,
                                &bn->mean,  &bn->var,  &bn->running_mean, &bn->running_var};
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        rc = nn_memory_wrap(vectors[i], ctx, &vec, NULL);
        if (rc) return rc;
    }
    return MFRES_OK;
}

void nn_batchnorm_bind(nn_batchnorm *bn, float *gamma, float *beta, float *dgamma, float *dbeta, float *running_mean,
                       float *running_var, float *mean, float *var, void *workspace) {
    dnnl_memory_set_data_handle(bn->gamma, gamma);
    dnnl_memory_set_data_handle(bn->beta, beta);
    dnnl_memory_set_data_handle(bn->dgamma, dgamma);
    dnnl_memory_set_data_handle(bn->dbeta, dbeta);
    dnnl_memory_set_data_handle(bn->running_mean, running_mean);
    dnnl_memory_set_data_handle(bn->running_var, running_var);
    dnnl_memory_set_data_handle(bn->mean, mean);
    dnnl_memory_set_data_handle(bn->var, var);
    if (bn->workspace) dnnl_memory_set_data_handle(bn->workspace, workspace);
}

void nn_batchnorm_bind_affine(nn_batchnorm *bn, float *gamma, float *beta) {
    dnnl_memory_set_data_handle(bn->gamma, gamma);
    dnnl_memory_set_data_handle(bn->beta, beta);
}

int nn_batchnorm_forward_train(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in,
                               float momentum) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},        {DNNL_ARG_DST, out},        {DNNL_ARG_MEAN, bn->mean},
                              {DNNL_ARG_VARIANCE, bn->var}, {DNNL_ARG_SCALE, bn->gamma}, {DNNL_ARG_SHIFT, bn->beta},
                              {DNNL_ARG_WORKSPACE, bn->workspace}};
    NN_CHECK(dnnl_primitive_execute(bn->fwd_train, ctx->stream, bn->workspace ? 7 : 6, args));
    nn_batchnorm_update_running(bn, momentum);
    return MFRES_OK;
}

void nn_batchnorm_update_running(nn_batchnorm *bn, float momentum) {
    float *mean = nn_data_of(bn->mean), *var = nn_data_of(bn->var);
    float *rmean = nn_data_of(bn->running_mean), *rvar = nn_data_of(bn->running_var);
    double count = (double)bn->N * bn->HW;
    float unbias = count > 1 ? (float)(count / (count - 1)) : 1.0f;
    for (int c = 0; c < bn->C; c++) {
        rmean[c] = (1 - momentum) * rmean[c] + momentum * mean[c];
        rvar[c] = (1 - momentum) * rvar[c] + momentum * var[c] * unbias;
    }
}

int nn_batchnorm_forward_infer(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},
                              {DNNL_ARG_DST, out},
                              {DNNL_ARG_MEAN, bn->running_mean},
                              {DNNL_ARG_VARIANCE, bn->running_var},
                              {DNNL_ARG_SCALE, bn->gamma},
                              {DNNL_ARG_SHIFT, bn->beta}};
    NN_CHECK(dnnl_primitive_execute(bn->fwd_infer, ctx->stream, 6, args));
    return MFRES_OK;
}

int nn_batchnorm_backward(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t din, dnnl_memory_t dout,
                          dnnl_memory_t in) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},          {DNNL_ARG_MEAN, bn->mean},
                              {DNNL_ARG_VARIANCE, bn->var}, {DNNL_ARG_DIFF_DST, dout},
                              {DNNL_ARG_SCALE, bn->gamma},  {DNNL_ARG_SHIFT, bn->beta},
                              {DNNL_ARG_DIFF_SRC, din},     {DNNL_ARG_DIFF_SCALE, bn->dgamma},
                              {DNNL_ARG_DIFF_SHIFT, bn->dbeta}, {DNNL_ARG_WORKSPACE, bn->workspace}};
    NN_CHECK(dnnl_primitive_execute(bn->bwd, ctx->stream, bn->workspace ? 10 : 9, args));
    return MFRES_OK;
}

void nn_batchnorm_free(nn_batchnorm *bn) {
    dnnl_primitive_t prims[] = {bn->fwd_train, bn->fwd_infer, bn->bwd};
    for (size_t i = 0; i < 3; i++)
        if (prims[i]) dnnl_primitive_destroy(prims[i]);
    dnnl_memory_t mems[] = {bn->gamma, bn->beta, bn->dgamma, bn->dbeta, bn->mean,
                            bn->var,   bn->running_mean, bn->running_var, bn->workspace};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    memset(bn, 0, sizeof *bn);
}
