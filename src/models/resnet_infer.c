/* Inference for the ResNets of resnet.c, with every batch norm that follows a
 * convolution folded into it.
 *
 * With running statistics, BN(y) = s*y + b per channel, s = gamma/sqrt(var+eps),
 * b = beta - s*mean. A convolution followed by BN is then one convolution with
 * weights s[k]*W[k] and bias b[k]; the block's step h scales both. So a
 * post-activation block, out = relu(x + h*BN2(conv2(relu(BN1(conv1(x)))))),
 * is two convolutions:
 *   t   = relu(conv1'(x))              conv1' = BN1 folded, ReLU post-op
 *   out = relu(out + conv2'(t))        conv2' = h*BN2 folded; out holds the
 *                                      shortcut; sum and ReLU post-ops
 * and a pre-activation block, out = x + h*conv2(relu(BN2(conv1(relu(BN1(x)))))),
 * keeps BN1 (it normalises the residual stream, which the shortcut needs raw):
 *   a   = relu(BN1(x)),  t = relu(conv1'(a)) with BN2 folded,
 *   out = out + conv2'(t) with conv2' = h*conv2.
 * Without a downsample the shortcut is x itself, so the block writes its
 * output over x in place; three stage-1-sized buffers carry the whole pass.
 *
 * The batch runs in chunks of about 2 MiB of stage-1 activations (32 CIFAR
 * images), so that a chunk's maps stay in cache from one convolution to the
 * next: about 8% faster than the whole batch of 128 at once on a 2-core Zen 4.
 * A last, short chunk is padded with zero images.
 *
 * Stage 1 (16 channels) runs in NHWC, where oneDNN has its brgemm kernels:
 * 12-20% faster than its direct kernel on nChw16c for these convolutions
 * (AVX-512; ~10% with the AVX2 kernel). Stages 2 and 3 stay blocked for the
 * Winograd kernels. oneDNN has no fast kernel that changes layout on the way
 * (NCHW -> NHWC at the stem, NHWC -> blocked at the first downsample both fall
 * to its reference kernel), so the input is reordered to NHWC first, and the
 * downsampling conv1 writes NHWC, reordered to blocked before conv2.
 *
 * Folding, and oneDNN's reorder of the folded weights into its inference
 * layout, cost about a fifth of a ResNet-20 pass (the Winograd transform of
 * 64x64 weights is the dear part), so they are redone only when something
 * they depend on changed: the parameters, running statistics, steps or block
 * order differ from a snapshot taken at the last fold. Comparing is a read of
 * the parameters, far cheaper than folding, and cannot miss a change made
 * behind the model's back (a test, a checkpoint load). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"
#include "models/resnet_infer.h"
#include "models/resnet_internal.h"

typedef struct infer_pos {
    int stage, index;
    block_shape shape;
    nn_conv2d_infer conv1, conv2;
    nn_batchnorm bn1; /* preact only */
} infer_pos;

struct resnet_infer {
    const nn_ctx *ctx;
    int chunk;  /* images per pass of the network */
    int n_pos;
    infer_pos *pos;
    nn_conv2d_infer stem;
    nn_batchnorm final_bn; /* preact only */
    float *buf[3];
    dnnl_memory_t mem[3][3]; /* buffer k viewed in stage s's layout */
    dnnl_memory_t x_in, x_nhwc;        /* the chunk's images, as given and in NHWC */
    dnnl_memory_t mem_nhwc2[3];        /* buffer k as a stage-2 map in NHWC */
    dnnl_primitive_t reorder_in, reorder_nhwc2; /* NCHW -> NHWC input; stage-2 NHWC -> blocked */
    float *in_nhwc;
    float *padded_in, *padded_logits; /* the last chunk, when it is short */
    float *w_fold, *b_fold, *pooled;
    /* What the folded weights were made from: params | buffers | h, and order. */
    float *snapshot;
    int *snapshot_order;
    size_t snapshot_floats;
    int n_order;
    bool folded;
};

void resnet_infer_free(resnet_infer *p) {
    if (!p) return;
    for (int i = 0; p->pos && i < p->n_pos; i++) {
        nn_conv2d_infer_free(&p->pos[i].conv1);
        nn_conv2d_infer_free(&p->pos[i].conv2);
        nn_batchnorm_free(&p->pos[i].bn1);
    }
    nn_conv2d_infer_free(&p->stem);
    nn_batchnorm_free(&p->final_bn);
    for (int k = 0; k < 3; k++)
        for (int s = 0; s < 3; s++)
            if (p->mem[k][s]) dnnl_memory_destroy(p->mem[k][s]);
    if (p->x_in) dnnl_memory_destroy(p->x_in);
    if (p->x_nhwc) dnnl_memory_destroy(p->x_nhwc);
    for (int k = 0; k < 3; k++)
        if (p->mem_nhwc2[k]) dnnl_memory_destroy(p->mem_nhwc2[k]);
    if (p->reorder_in) dnnl_primitive_destroy(p->reorder_in);
    if (p->reorder_nhwc2) dnnl_primitive_destroy(p->reorder_nhwc2);
    mfres_free(p->in_nhwc);
    for (int k = 0; k < 3; k++) mfres_free(p->buf[k]);
    mfres_free(p->padded_in);
    mfres_free(p->padded_logits);
    mfres_free(p->pos);
    mfres_free(p->w_fold);
    mfres_free(p->b_fold);
    mfres_free(p->pooled);
    mfres_free(p->snapshot);
    mfres_free(p->snapshot_order);
    mfres_free(p);
}

int resnet_infer_create(resnet_infer **plan, const mfres_model *m, const nn_ctx *ctx) {
    const mfres_model_config *c = &m->cfg;
    bool pre = c->block == MFRES_BLOCK_PREACT;
    int w = c->base_width, n = m->blocks_per_stage, rc;
    *plan = NULL;
    resnet_infer *p = mfres_alloc(sizeof *p, "inference plan");
    if (!p) return MFRES_ENOMEM;
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    size_t image_bytes = (size_t)w * c->in_h * c->in_w * sizeof(float); /* one image's stage-1 map */
    int per_chunk = (int)((size_t)(2 << 20) / image_bytes), chunks;
    if (per_chunk < 1) per_chunk = 1;
    chunks = (c->batch + per_chunk - 1) / per_chunk;
    p->chunk = (c->batch + chunks - 1) / chunks;
    int N = p->chunk;
    p->n_pos = 3 * n;
    size_t max_w = (size_t)16 * w * w * 9 > (size_t)w * c->in_c * 9 ? (size_t)16 * w * w * 9 : (size_t)w * c->in_c * 9;
    p->pos = mfres_alloc(sizeof(infer_pos) * p->n_pos, "inference plan");
    p->w_fold = mfres_alloc(max_w * sizeof(float), "folded weights");
    p->b_fold = mfres_alloc((size_t)4 * w * sizeof(float), "folded bias");
    p->pooled = mfres_alloc((size_t)N * 4 * w * sizeof(float), "pooled features");
    p->padded_in = mfres_alloc((size_t)N * c->in_c * c->in_h * c->in_w * sizeof(float), "inference input");
    p->in_nhwc = mfres_alloc((size_t)N * c->in_c * c->in_h * c->in_w * sizeof(float), "inference input");
    p->padded_logits = mfres_alloc((size_t)N * c->num_classes * sizeof(float), "inference logits");
    for (int k = 0; k < 3; k++) p->buf[k] = mfres_alloc((size_t)N * image_bytes, "inference activations");
    p->n_order = 3 * m->particles;
    p->snapshot_floats = m->n_params + m->n_buffers + (size_t)p->n_order;
    p->snapshot = mfres_alloc(p->snapshot_floats * sizeof(float), "inference snapshot");
    p->snapshot_order = mfres_alloc(((size_t)p->n_order + 1) * sizeof(int), "inference snapshot");
    if (!p->pos || !p->w_fold || !p->b_fold || !p->pooled || !p->snapshot || !p->snapshot_order || !p->padded_in || !p->padded_logits || !p->in_nhwc ||
        !p->buf[0] || !p->buf[1] || !p->buf[2]) {
        resnet_infer_free(p);
        return MFRES_ENOMEM;
    }
    memset(p->pos, 0, sizeof(infer_pos) * p->n_pos);

    dnnl_memory_desc_t md_in = nn_md_nchw(N, c->in_c, c->in_h, c->in_w), md_stage[3];
    for (int s = 0; s < 3; s++) md_stage[s] = nn_md_blocked(ctx, N, w << s, c->in_h >> s, c->in_w >> s);
    md_stage[0] = nn_md_nhwc(N, w, c->in_h, c->in_w); /* stage 1 in NHWC: see the top of the file */
    dnnl_memory_desc_t md_in_nhwc = nn_md_nhwc(N, c->in_c, c->in_h, c->in_w);
    dnnl_memory_desc_t md_s2_nhwc = nn_md_nhwc(N, 2 * w, c->in_h / 2, c->in_w / 2);
    if ((rc = nn_memory_wrap(&p->x_in, ctx, &md_in, NULL)) ||
        (rc = nn_memory_wrap(&p->x_nhwc, ctx, &md_in_nhwc, p->in_nhwc)))
        goto fail;
    for (int k = 0; k < 3; k++) {
        for (int s = 0; s < 3; s++)
            if ((rc = nn_memory_wrap(&p->mem[k][s], ctx, &md_stage[s], p->buf[k]))) goto fail;
        if ((rc = nn_memory_wrap(&p->mem_nhwc2[k], ctx, &md_s2_nhwc, p->buf[k]))) goto fail;
    }
    if ((rc = nn_reorder_create(&p->reorder_in, ctx, &md_in, &md_in_nhwc)) ||
        (rc = nn_reorder_create(&p->reorder_nhwc2, ctx, &md_s2_nhwc, &md_stage[1])))
        goto fail;
    if ((rc = nn_conv2d_infer_init(&p->stem, ctx, c->in_c, c->in_h, c->in_w, w, 3, 3, 1, 1, &md_in_nhwc,
                                   &md_stage[0], false, !pre)))
        goto fail;
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            infer_pos *b = &p->pos[s * n + j];
            b->stage = s, b->index = j;
            b->shape = resnet_block_shape(m, s, j);
            block_shape sh = b->shape;
            const dnnl_memory_desc_t *md_x = &md_stage[sh.downsample ? s - 1 : s], *md_out = &md_stage[s];
            /* Out of stage 1, conv1 stays in NHWC (see the top of the file). */
            const dnnl_memory_desc_t *md_t1 = sh.downsample && s == 1 ? &md_s2_nhwc : md_out;
            if ((rc = nn_conv2d_infer_init(&b->conv1, ctx, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3, sh.stride, 1,
                                           md_x, md_t1, false, true)) ||
                (rc = nn_conv2d_infer_init(&b->conv2, ctx, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3, 1, 1, md_out,
                                           md_out, true, !pre)) ||
                (pre && (rc = nn_batchnorm_init(&b->bn1, ctx, N, sh.c_in, sh.h_in, sh.w_in, true, c->bn_eps, md_x))))
                goto fail;
        }
    if (pre && (rc = nn_batchnorm_init(&p->final_bn, ctx, N, 4 * w, c->in_h / 4, c->in_w / 4, true, c->bn_eps,
                                       &md_stage[2])))
        goto fail;
    *plan = p;
    return MFRES_OK;
fail:
    resnet_infer_free(p);
    return rc;
}

/* Loads conv' = h * BN(conv) (bn_w NULL: h * conv, no bias) into `conv`. */
static int fold_into(resnet_infer *p, nn_conv2d_infer *conv, const mfres_tensor *weights, const mfres_tensor *bn_w,
                     const mfres_tensor *bn_b, const mfres_tensor *bn_rm, const mfres_tensor *bn_rv, double eps,
                     double h) {
    int K = conv->K;
    size_t per_k = (size_t)conv->C * conv->R * conv->S;
    for (int k = 0; k < K; k++) {
        double scale = h, shift = 0.0;
        if (bn_w) {
            double s = bn_w->data[k] / sqrt((double)bn_rv->data[k] + eps);
            scale = h * s;
            shift = h * (bn_b->data[k] - s * bn_rm->data[k]);
        }
        const float *src = weights->data + k * per_k;
        float *dst = p->w_fold + k * per_k;
        for (size_t i = 0; i < per_k; i++) dst[i] = (float)(scale * src[i]);
        p->b_fold[k] = (float)shift;
    }
    return nn_conv2d_infer_set_weights(conv, p->ctx, p->w_fold, p->b_fold);
}

static void bind_bn_infer(nn_batchnorm *bn, const mfres_tensor *gamma, const mfres_tensor *beta,
                          const mfres_tensor *rm, const mfres_tensor *rv) {
    nn_batchnorm_bind(bn, gamma->data, beta->data, NULL, NULL, rm->data, rv->data, NULL, NULL, NULL);
}

/* Compares the model with the snapshot and brings the snapshot up to date;
 * true when they differed (or there was none yet). */
static bool model_changed(resnet_infer *p, const mfres_model *m) {
    float *params = p->snapshot, *buffers = params + m->n_params, *h = buffers + m->n_buffers;
    size_t order_bytes = (size_t)p->n_order * sizeof(int);
    bool same = p->folded && !memcmp(params, m->params, m->n_params * sizeof(float)) &&
                !memcmp(buffers, m->buffers, m->n_buffers * sizeof(float)) &&
                !memcmp(h, m->h, (size_t)p->n_order * sizeof(float)) && !memcmp(p->snapshot_order, m->order, order_bytes);
    if (same) return false;
    memcpy(params, m->params, m->n_params * sizeof(float));
    memcpy(buffers, m->buffers, m->n_buffers * sizeof(float));
    memcpy(h, m->h, (size_t)p->n_order * sizeof(float));
    memcpy(p->snapshot_order, m->order, order_bytes);
    return true;
}

static int fold_all(resnet_infer *p, const mfres_model *m) {
    const mfres_model_config *c = &m->cfg;
    const net_params *net = resnet_net_params(m);
    int n = m->blocks_per_stage, rc;
    double eps = c->bn_eps;
    if (c->block == MFRES_BLOCK_PREACT) rc = fold_into(p, &p->stem, net->stem_w, NULL, NULL, NULL, NULL, eps, 1.0);
    else rc = fold_into(p, &p->stem, net->stem_w, net->stem_bn_w, net->stem_bn_b, net->stem_bn_rm, net->stem_bn_rv, eps, 1.0);
    for (int i = 0; i < p->n_pos && !rc; i++) {
        infer_pos *b = &p->pos[i];
        const block_params *bp = &net->blocks[b->stage * n + resnet_block_at(m, b->stage, b->index)];
        double h = resnet_step_at(m, b->stage, b->index);
        if (c->block == MFRES_BLOCK_PREACT) {
            rc = fold_into(p, &b->conv1, bp->conv1_w, bp->bn2_w, bp->bn2_b, bp->bn2_rm, bp->bn2_rv, eps, 1.0);
            if (!rc) rc = fold_into(p, &b->conv2, bp->conv2_w, NULL, NULL, NULL, NULL, eps, h);
        } else {
            rc = fold_into(p, &b->conv1, bp->conv1_w, bp->bn1_w, bp->bn1_b, bp->bn1_rm, bp->bn1_rv, eps, 1.0);
            if (!rc) rc = fold_into(p, &b->conv2, bp->conv2_w, bp->bn2_w, bp->bn2_b, bp->bn2_rm, bp->bn2_rv, eps, h);
        }
    }
    p->folded = rc == MFRES_OK;
    return rc;
}

static double conv_flops(const nn_conv2d_infer *conv, int N, int OH, int OW) {
    return 2.0 * N * conv->K * conv->C * conv->R * conv->S * OH * OW;
}

/* One chunk of p->chunk images through the network. */
static int forward_chunk(resnet_infer *p, const mfres_model *m, const float *images, float *logits, profiler *prof) {
    const mfres_model_config *c = &m->cfg;
    const net_params *net = resnet_net_params(m);
    const nn_ctx *ctx = p->ctx;
    bool pre = c->block == MFRES_BLOCK_PREACT;
    int N = p->chunk, w = c->base_width, n = m->blocks_per_stage;
    const char *conv1_kind = "conv+relu (BN folded)";
    const char *conv2_kind = pre ? "conv+add (h folded)" : "conv+add+relu (BN, h folded)";

    dnnl_memory_set_data_handle(p->x_in, (void *)images);
    PROFILE_CALL("reorder input to NHWC", -1, NULL, 0, nn_reorder_run(ctx, p->reorder_in, p->x_in, p->x_nhwc));
    PROFILE_CALL(pre ? "conv (stem)" : "conv+relu (stem, BN folded)", -1, p->stem.impl,
                 conv_flops(&p->stem, N, c->in_h, c->in_w),
                 nn_conv2d_infer_forward(&p->stem, ctx, p->mem[0][0], p->x_nhwc));

    int x = 0; /* which buffer holds the residual stream */
    for (int i = 0; i < p->n_pos; i++) {
        infer_pos *b = &p->pos[i];
        block_shape sh = b->shape;
        int s = b->stage, si = sh.downsample ? s - 1 : s, t = (x + 1) % 3, y = (x + 2) % 3;
        double flops1 = conv_flops(&b->conv1, N, sh.h_out, sh.w_out), flops2 = conv_flops(&b->conv2, N, sh.h_out, sh.w_out);
        /* Out of stage 1, conv1 writes NHWC into a free buffer, reordered into t. */
        bool nhwc_out = sh.downsample && s == 1;
        if (pre) {
            /* a = relu(BN1(x)) in y, t = relu(conv1'(a)); then y is free for the output. */
            const block_params *bp = &net->blocks[s * n + resnet_block_at(m, s, b->index)];
            bind_bn_infer(&b->bn1, bp->bn1_w, bp->bn1_b, bp->bn1_rm, bp->bn1_rv);
            PROFILE_CALL("batch norm+relu", s, NULL, 0,
                         nn_batchnorm_forward_infer(&b->bn1, ctx, p->mem[y][si], p->mem[x][si]));
            PROFILE_CALL(conv1_kind, s, b->conv1.impl, flops1,
                         nn_conv2d_infer_forward(&b->conv1, ctx, nhwc_out ? p->mem_nhwc2[t] : p->mem[t][s],
                                                 p->mem[y][si]));
            if (nhwc_out) { /* y (a) is spent: the blocked copy goes there, and t becomes the free one */
                PROFILE_CALL("reorder NHWC to blocked", s, NULL, 0,
                             nn_reorder_run(ctx, p->reorder_nhwc2, p->mem_nhwc2[t], p->mem[y][s]));
                int spare = t;
                t = y, y = spare;
            }
        } else {
            PROFILE_CALL(conv1_kind, s, b->conv1.impl, flops1,
                         nn_conv2d_infer_forward(&b->conv1, ctx, nhwc_out ? p->mem_nhwc2[y] : p->mem[t][s],
                                                 p->mem[x][si]));
            if (nhwc_out)
                PROFILE_CALL("reorder NHWC to blocked", s, NULL, 0,
                             nn_reorder_run(ctx, p->reorder_nhwc2, p->mem_nhwc2[y], p->mem[t][s]));
        }
        if (sh.downsample) {
            int in_block = si == 0 ? sh.c_in : ctx->block; /* stage 1 is NHWC */
            PROFILE_VOID("shortcut A", s, 0,
                         nn_shortcut_a_forward(p->buf[y], p->buf[x], N, sh.c_in, sh.h_in, sh.w_in, in_block, ctx->block));
            x = y;
        }
        PROFILE_CALL(conv2_kind, s, b->conv2.impl, flops2,
                     nn_conv2d_infer_forward(&b->conv2, ctx, p->mem[x][s], p->mem[t][s]));
    }
    int C = 4 * w, HW = (c->in_h / 4) * (c->in_w / 4);
    if (pre) {
        int a = (x + 1) % 3;
        bind_bn_infer(&p->final_bn, net->final_bn_w, net->final_bn_b, net->final_bn_rm, net->final_bn_rv);
        PROFILE_CALL("batch norm+relu (final)", -1, NULL, 0,
                     nn_batchnorm_forward_infer(&p->final_bn, ctx, p->mem[a][2], p->mem[x][2]));
        x = a;
    }
    double t0 = profile_start(prof);
    nn_avgpool_forward(p->pooled, p->buf[x], N, C, HW, ctx->block);
    nn_linear_forward(logits, p->pooled, net->fc_w->data, net->fc_b->data, N, C, c->num_classes);
    profile_stop(prof, "pool+fc", -1, NULL, t0, 0);
    return MFRES_OK;
}

int resnet_infer_forward(resnet_infer *p, const mfres_model *m, const float *images, float *logits, profiler *prof) {
    const mfres_model_config *c = &m->cfg;
    int rc;
    double t0 = profile_start(prof);
    bool refold = model_changed(p, m);
    if (refold && (rc = fold_all(p, m))) return rc;
    if (refold) profile_stop(prof, "fold batch norms into weights", -1, NULL, t0, 0);
    size_t image_floats = (size_t)c->in_c * c->in_h * c->in_w;
    for (int first = 0; first < c->batch; first += p->chunk) {
        int count = c->batch - first < p->chunk ? c->batch - first : p->chunk;
        const float *x = images + first * image_floats;
        float *out = logits + (size_t)first * c->num_classes;
        if (count == p->chunk) {
            if ((rc = forward_chunk(p, m, x, out, prof))) return rc;
            continue;
        }
        memcpy(p->padded_in, x, count * image_floats * sizeof(float));
        memset(p->padded_in + count * image_floats, 0, (p->chunk - count) * image_floats * sizeof(float));
        if ((rc = forward_chunk(p, m, p->padded_in, p->padded_logits, prof))) return rc;
        memcpy(out, p->padded_logits, (size_t)count * c->num_classes * sizeof(float));
    }
    return MFRES_OK;
}
