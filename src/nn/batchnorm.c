/* Batch normalisation on oneDNN, with the ReLU that follows fused in when asked
 * (oneDNN's fuse_norm_relu: one pass over the activations instead of two, and
 * a bit mask as the workspace for backward).
 * Training normalises with the batch statistics (biased variance) and updates
 * running statistics as PyTorch does: momentum 0.1, unbiased variance. */
#include <math.h>
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

static void update_running(nn_batchnorm *bn, float momentum, double count);
static int forward_train_synced(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in,
                                float momentum);
static int backward_synced(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t din, dnnl_memory_t dout,
                           dnnl_memory_t in);

int nn_batchnorm_forward_train(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in,
                               float momentum) {
    if (ctx->bn_sync.allreduce_sum) return forward_train_synced(bn, ctx, out, in, momentum);
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},        {DNNL_ARG_DST, out},        {DNNL_ARG_MEAN, bn->mean},
                              {DNNL_ARG_VARIANCE, bn->var}, {DNNL_ARG_SCALE, bn->gamma}, {DNNL_ARG_SHIFT, bn->beta},
                              {DNNL_ARG_WORKSPACE, bn->workspace}};
    NN_CHECK(dnnl_primitive_execute(bn->fwd_train, ctx->stream, bn->workspace ? 7 : 6, args));
    nn_batchnorm_update_running(bn, momentum);
    return MFRES_OK;
}

void nn_batchnorm_update_running(nn_batchnorm *bn, float momentum) {
    update_running(bn, momentum, (double)bn->N * bn->HW);
}

/* count: the values each statistic was taken over (all ranks' with sync-BN). */
static void update_running(nn_batchnorm *bn, float momentum, double count) {
    float *mean = nn_data_of(bn->mean), *var = nn_data_of(bn->var);
    float *rmean = nn_data_of(bn->running_mean), *rvar = nn_data_of(bn->running_var);
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
    if (ctx->bn_sync.allreduce_sum) return backward_synced(bn, ctx, din, dout, in);
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},          {DNNL_ARG_MEAN, bn->mean},
                              {DNNL_ARG_VARIANCE, bn->var}, {DNNL_ARG_DIFF_DST, dout},
                              {DNNL_ARG_SCALE, bn->gamma},  {DNNL_ARG_SHIFT, bn->beta},
                              {DNNL_ARG_DIFF_SRC, din},     {DNNL_ARG_DIFF_SCALE, bn->dgamma},
                              {DNNL_ARG_DIFF_SHIFT, bn->dbeta}, {DNNL_ARG_WORKSPACE, bn->workspace}};
    NN_CHECK(dnnl_primitive_execute(bn->bwd, ctx->stream, bn->workspace ? 10 : 9, args));
    return MFRES_OK;
}

void nn_batchnorm_free(nn_batchnorm *bn) {
    dnnl_primitive_t prims[] = {bn->fwd_train, bn->fwd_infer, bn->bwd, bn->fwd_train_given, bn->bwd_given};
    for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++)
        if (prims[i]) dnnl_primitive_destroy(prims[i]);
    dnnl_memory_t mems[] = {bn->gamma, bn->beta, bn->dgamma, bn->dbeta, bn->mean,
                            bn->var,   bn->running_mean, bn->running_var, bn->workspace};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    memset(bn, 0, sizeof *bn);
}

/* ---- sync-BN (nn_bn_sync, issue 12) ----
 *
 * oneDNN's training batch norm gathers its statistics inside the primitive,
 * where no allreduce can reach them. So with sync-BN the statistics are taken
 * here (nn_batchnorm_statistics_sync: this rank's Σx, Σx² in double, summed
 * over ranks, then mean and variance), and the forward and backward run as
 * oneDNN's "given statistics" passes (dnnl_use_global_stats), which normalise
 * with them. Given statistics, the backward returns only the first term of
 * the batch norm's input gradient,
 *     dx = γ/σ · (dy − ΣGβ/M − x̂ · ΣGγ/M),   x̂ = (x − μ)/σ,
 * and this rank's Gγ = Σ dy·x̂ and Gβ = Σ dy; the two remaining terms come
 * from their sums over all ranks (M values in all), in one more pass over dx.
 * dy is the gradient after the fused ReLU's mask, as in oneDNN's sums. The
 * data must be in the blocked layout nChw{B}c (all of the training pass). */

static int create_given_stats_primitives(nn_batchnorm *bn, const nn_ctx *ctx) {
    const_dnnl_primitive_desc_t train_pd;
    NN_CHECK(dnnl_primitive_get_primitive_desc(bn->fwd_train, &train_pd));
    const dnnl_memory_desc_t *data_md = dnnl_primitive_desc_query_md(train_pd, dnnl_query_src_md, 0);
    dnnl_memory_desc_t blocked = nn_md_blocked(ctx, (int)data_md->dims[0], (int)data_md->dims[1],
                                               (int)data_md->dims[2], (int)data_md->dims[3]);
    if (!dnnl_memory_desc_equal(data_md, &blocked))
        return mfres_fail(MFRES_EINVAL, "sync-BN: batch norm over %d channels is not in the nChw%dc layout", bn->C,
                          ctx->block);
    unsigned flags = dnnl_use_scale | dnnl_use_shift | dnnl_use_global_stats | (bn->relu ? dnnl_fuse_norm_relu : 0);
    dnnl_batch_normalization_desc_t desc;
    dnnl_primitive_desc_t fwd_pd = NULL, bwd_pd = NULL;
    int rc = nn_check(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_training, data_md, bn->eps, flags),
                      "sync-BN forward desc", __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_desc_create(&fwd_pd, &desc, NULL, ctx->engine, NULL), "sync-BN forward pd",
                           __FILE__, __LINE__);
    if (!rc && bn->workspace_bytes) {
        const dnnl_memory_desc_t *ws_md = dnnl_primitive_desc_query_md(fwd_pd, dnnl_query_workspace_md, 0);
        if (!ws_md || dnnl_memory_desc_get_size(ws_md) != bn->workspace_bytes)
            rc = mfres_fail(MFRES_EBACKEND, "sync-BN: oneDNN's ReLU workspace differs with given statistics");
    }
    if (!rc) rc = nn_check(dnnl_primitive_create(&bn->fwd_train_given, fwd_pd), "sync-BN forward", __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_batch_normalization_backward_desc_init(&desc, dnnl_backward, data_md, data_md, bn->eps,
                                                                      flags),
                           "sync-BN backward desc", __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_desc_create(&bwd_pd, &desc, NULL, ctx->engine, fwd_pd), "sync-BN backward pd",
                           __FILE__, __LINE__);
    if (!rc) rc = nn_check(dnnl_primitive_create(&bn->bwd_given, bwd_pd), "sync-BN backward", __FILE__, __LINE__);
    if (bwd_pd) dnnl_primitive_desc_destroy(bwd_pd);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    return rc;
}

int nn_batchnorm_train_statistics(nn_batchnorm *bn, const nn_ctx *ctx, const float *x, float momentum) {
    const nn_bn_sync *sync = ctx->bn_sync.allreduce_sum ? &ctx->bn_sync : NULL;
    int rc = nn_batchnorm_statistics_sync(nn_data_of(bn->mean), nn_data_of(bn->var), x, bn->N, bn->C, bn->HW,
                                          ctx->block, sync);
    if (rc) return rc;
    update_running(bn, momentum, (double)bn->N * bn->HW * (sync ? sync->ranks : 1));
    return MFRES_OK;
}

static int forward_train_synced(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t out, dnnl_memory_t in,
                                float momentum) {
    int rc = bn->fwd_train_given ? MFRES_OK : create_given_stats_primitives(bn, ctx);
    if (!rc) rc = nn_batchnorm_train_statistics(bn, ctx, nn_data_of(in), momentum);
    if (rc) return rc;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},        {DNNL_ARG_DST, out},        {DNNL_ARG_MEAN, bn->mean},
                              {DNNL_ARG_VARIANCE, bn->var}, {DNNL_ARG_SCALE, bn->gamma}, {DNNL_ARG_SHIFT, bn->beta},
                              {DNNL_ARG_WORKSPACE, bn->workspace}};
    NN_CHECK(dnnl_primitive_execute(bn->fwd_train_given, ctx->stream, bn->workspace ? 7 : 6, args));
    return MFRES_OK;
}

static int backward_synced(nn_batchnorm *bn, const nn_ctx *ctx, dnnl_memory_t din, dnnl_memory_t dout,
                           dnnl_memory_t in) {
    int rc = bn->bwd_given ? MFRES_OK : create_given_stats_primitives(bn, ctx);
    if (rc) return rc;
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, in},          {DNNL_ARG_MEAN, bn->mean},
                              {DNNL_ARG_VARIANCE, bn->var}, {DNNL_ARG_DIFF_DST, dout},
                              {DNNL_ARG_SCALE, bn->gamma},  {DNNL_ARG_SHIFT, bn->beta},
                              {DNNL_ARG_DIFF_SRC, din},     {DNNL_ARG_DIFF_SCALE, bn->dgamma},
                              {DNNL_ARG_DIFF_SHIFT, bn->dbeta}, {DNNL_ARG_WORKSPACE, bn->workspace}};
    NN_CHECK(dnnl_primitive_execute(bn->bwd_given, ctx->stream, bn->workspace ? 10 : 9, args));

    int C = bn->C, B = ctx->block, CB = C / B, HW = bn->HW;
    const float *dgamma = nn_data_of(bn->dgamma), *dbeta = nn_data_of(bn->dbeta);
    const float *gamma = nn_data_of(bn->gamma), *mean = nn_data_of(bn->mean), *var = nn_data_of(bn->var);
    double sums[2 * C];
    for (int c = 0; c < C; c++) sums[c] = dgamma[c], sums[C + c] = dbeta[c];
    if ((rc = ctx->bn_sync.allreduce_sum(sums, 2 * (size_t)C, ctx->bn_sync.arg))) return rc;
    /* dx += a_c + b_c·x, the two terms above written affine in x. */
    double M = (double)bn->N * HW * ctx->bn_sync.ranks;
    float a[C], b[C];
    for (int c = 0; c < C; c++) {
        double rstd = 1.0 / sqrt((double)var[c] + bn->eps), g = gamma[c] * rstd;
        double slope = -g * rstd * sums[c] / M; /* −γ/σ · ΣGγ/M · 1/σ */
        b[c] = (float)slope;
        a[c] = (float)(-g * sums[C + c] / M - slope * mean[c]);
    }
    float *dx = nn_data_of(din);
    const float *x = nn_data_of(in);
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < bn->N; n++)
        for (int cb = 0; cb < CB; cb++) {
            size_t o = ((size_t)n * CB + cb) * HW * B;
            const float *ac = a + cb * B, *bc = b + cb * B;
            for (int i = 0; i < HW; i++)
                for (int j = 0; j < B; j++) dx[o + (size_t)i * B + j] += ac[j] + bc[j] * x[o + (size_t)i * B + j];
        }
    return MFRES_OK;
}
