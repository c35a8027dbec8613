/* The inference plan on oneDNN (cpu_plan.h): batch norm with running
 * statistics, built for speed.
 *
 * With running statistics, BN(y) = s*y + b per channel, s = gamma/sqrt(var+eps),
 * b = beta - s*mean. A convolution followed by BN is then one convolution with
 * weights s[k]*W[k] and bias b[k]; a block's step h scales both. The block
 * forms (block_postact.c, block_preact.c) say which batch norm folds where;
 * the residual add and ReLU run as the convolutions' post-ops. Four buffers of
 * the largest map carry the whole pass.
 *
 * The batch runs in chunks of about 2 MiB of the largest map (32 CIFAR images
 * for the basic ResNets), so that a chunk's maps stay in cache from one
 * convolution to the next: about 8% faster than the whole batch of 128 at once
 * on a 2-core Zen 4. A last, short chunk is padded with zero images.
 *
 * For the basic-block networks, stage 1 (16 channels) runs in NHWC, where
 * oneDNN has its brgemm kernels: 12-20% faster than its direct kernel on
 * nChw16c for these convolutions (AVX-512; ~10% with the AVX2 kernel). Stages 2
 * and 3 stay blocked for the Winograd kernels. oneDNN has no fast kernel that
 * changes layout on the way (NCHW -> NHWC at the stem, NHWC -> blocked at the
 * first downsample both fall to its reference kernel), so the input is
 * reordered to NHWC first, and a convolution from NHWC to a blocked map writes
 * NHWC into a spare buffer, reordered after (infer_conv_run). The bottleneck
 * networks stay blocked throughout (unmeasured there).
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
#include "models/cpu_plan.h"

static void infer_conv_free(infer_conv *c) {
    nn_conv2d_infer_free(&c->conv);
    if (c->reorder_out) dnnl_primitive_destroy(c->reorder_out);
    if (c->nhwc_out) dnnl_memory_destroy(c->nhwc_out);
    c->reorder_out = NULL, c->nhwc_out = NULL;
}

void infer_plan_free(infer_plan *p) {
    if (!p) return;
    for (int i = 0; p->pos && i < p->n_pos; i++) {
        for (int k = 0; k < ARCH_MAX_CONV; k++) infer_conv_free(&p->pos[i].conv[k]);
        infer_conv_free(&p->pos[i].proj);
        nn_batchnorm_free(&p->pos[i].bn0);
    }
    infer_conv_free(&p->stem);
    nn_batchnorm_free(&p->final_bn);
    for (int k = 0; k < INFER_BUFFERS; k++)
        for (int s = 0; s < MAX_SHAPES; s++)
            if (p->mem[k][s]) dnnl_memory_destroy(p->mem[k][s]);
    if (p->x_in) dnnl_memory_destroy(p->x_in);
    if (p->x_nhwc) dnnl_memory_destroy(p->x_nhwc);
    if (p->reorder_in) dnnl_primitive_destroy(p->reorder_in);
    mfres_free(p->in_nhwc);
    for (int k = 0; k < INFER_BUFFERS; k++) mfres_free(p->buf[k]);
    mfres_free(p->spare);
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

/* The layout of a map: NHWC at the input's resolution when stage 1 runs in
 * NHWC, else blocked. Shapes are added at build time, looked up later. */
int infer_shape(infer_plan *p, int C, int H, int W) {
    for (int i = 0; i < p->n_shapes; i++)
        if (p->shapes[i].C == C && p->shapes[i].H == H && p->shapes[i].W == W) return i;
    return -1;
}

static int add_shape(infer_plan *p, const mfres_model *m, int C, int H, int W) {
    if (infer_shape(p, C, H, W) >= 0) return MFRES_OK;
    if (p->n_shapes == MAX_SHAPES)
        return mfres_fail(MFRES_EINVAL, "too many distinct map shapes in the network (at most %d)", MAX_SHAPES);
    plan_shape *s = &p->shapes[p->n_shapes];
    bool nhwc = p->nhwc_stage1 && H == m->cfg.in_h && W == m->cfg.in_w;
    s->C = C, s->H = H, s->W = W;
    s->md = nhwc ? nn_md_nhwc(p->chunk, C, H, W) : nn_md_blocked(p->ctx, p->chunk, C, H, W);
    int rc;
    for (int k = 0; k < INFER_BUFFERS; k++)
        if ((rc = nn_memory_wrap(&p->mem[k][p->n_shapes], p->ctx, &s->md, p->buf[k]))) return rc;
    p->n_shapes++;
    return MFRES_OK;
}

dnnl_memory_t infer_view(infer_plan *p, int buffer, int C, int H, int W) {
    return p->mem[buffer][infer_shape(p, C, H, W)];
}

int infer_free_buffer(unsigned used) {
    for (int k = 0; k < INFER_BUFFERS; k++)
        if (!(used & (1u << k))) return k;
    return -1; /* cannot happen: a block holds at most three buffers at once */
}

static bool is_nhwc(const dnnl_memory_desc_t *md) {
    dnnl_memory_desc_t nhwc = nn_md_nhwc((int)md->dims[0], (int)md->dims[1], (int)md->dims[2], (int)md->dims[3]);
    return dnnl_memory_desc_equal(md, &nhwc);
}

static int infer_conv_init(infer_plan *p, infer_conv *c, const arch_conv *s, const dnnl_memory_desc_t *src,
                           bool sum, bool relu) {
    int rc, out = infer_shape(p, s->K, s->OH, s->OW);
    const dnnl_memory_desc_t *dst = &p->shapes[out].md;
    c->dst_md = dst;
    c->flops = 2.0 * p->chunk * s->K * (s->C / s->groups) * s->R * s->R * s->OH * s->OW;
    if (is_nhwc(src) && !is_nhwc(dst)) {
        if (sum) return mfres_fail(MFRES_EINVAL, "inference plan: a layout change on a summing convolution");
        dnnl_memory_desc_t md_nhwc = nn_md_nhwc(p->chunk, s->K, s->OH, s->OW);
        if ((rc = nn_conv2d_infer_init_groups(&c->conv, p->ctx, s->C, s->H, s->W, s->K, s->R, s->R, s->stride, s->pad,
                                              s->groups, src, &md_nhwc, sum, relu)) ||
            (rc = nn_memory_wrap(&c->nhwc_out, p->ctx, &md_nhwc, p->spare)))
            return rc;
        return nn_reorder_create(&c->reorder_out, p->ctx, &md_nhwc, dst);
    }
    return nn_conv2d_infer_init_groups(&c->conv, p->ctx, s->C, s->H, s->W, s->K, s->R, s->R, s->stride, s->pad,
                                       s->groups, src, dst, sum, relu);
}

int infer_conv_run(infer_plan *p, infer_conv *c, const arch_conv *s, int out, int in, profiler *prof,
                   const char *kind, int stage) {
    dnnl_memory_t src = infer_view(p, in, s->C, s->H, s->W), dst = infer_view(p, out, s->K, s->OH, s->OW);
    if (!c->reorder_out) {
        PROFILE_CALL(kind, stage, c->conv.impl, c->flops, nn_conv2d_infer_forward(&c->conv, p->ctx, dst, src));
        return MFRES_OK;
    }
    PROFILE_CALL(kind, stage, c->conv.impl, c->flops, nn_conv2d_infer_forward(&c->conv, p->ctx, c->nhwc_out, src));
    PROFILE_CALL("reorder NHWC to blocked", stage, NULL, 0, nn_reorder_run(p->ctx, c->reorder_out, c->nhwc_out, dst));
    return MFRES_OK;
}

int infer_shortcut(infer_plan *p, infer_pos *b, int x, unsigned used, profiler *prof, const char *proj_kind,
                   int *out) {
    const arch_block *s = b->shape;
    *out = x;
    if (s->shortcut == SHORTCUT_IDENTITY) return MFRES_OK;
    *out = infer_free_buffer(used);
    if (s->shortcut == SHORTCUT_PROJECTION)
        return infer_conv_run(p, &b->proj, &s->proj, *out, x, prof, proj_kind, b->stage);
    int in_block = p->nhwc_stage1 && s->stage == 1 ? s->c_in : p->ctx->block; /* stage 1 may be NHWC */
    PROFILE_VOID("shortcut A", b->stage, 0,
                 nn_shortcut_a_forward(p->buf[*out], p->buf[x], p->chunk, s->c_in, s->h_in, s->w_in, in_block,
                                       p->ctx->block));
    return MFRES_OK;
}

static size_t conv_weights(const arch_conv *c) { return (size_t)c->K * (c->C / c->groups) * c->R * c->R; }

int infer_plan_create(infer_plan **plan, const mfres_model *m, const nn_ctx *ctx) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int n = m->blocks_per_stage, rc;
    *plan = NULL;
    infer_plan *p = mfres_alloc(sizeof *p, "inference plan");
    if (!p) return MFRES_ENOMEM;
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    p->nhwc_stage1 = ar->blocks[0].n_conv == 2; /* the basic blocks: see the top of the file */
    size_t image_bytes = ar->max_map_floats * sizeof(float);
    int per_chunk = (int)((size_t)(2 << 20) / image_bytes), chunks;
    if (per_chunk < 1) per_chunk = 1;
    chunks = (c->batch + per_chunk - 1) / per_chunk;
    p->chunk = (c->batch + chunks - 1) / chunks;
    int N = p->chunk;
    p->n_pos = 3 * n;
    size_t max_w = conv_weights(&ar->stem), max_k = ar->stem.K;
    for (int i = 0; i < 3 * n; i++) {
        const arch_block *b = &ar->blocks[i];
        for (int k = 0; k < b->n_conv; k++) {
            if (conv_weights(&b->conv[k]) > max_w) max_w = conv_weights(&b->conv[k]);
            if ((size_t)b->conv[k].K > max_k) max_k = b->conv[k].K;
        }
        if (b->shortcut == SHORTCUT_PROJECTION && conv_weights(&b->proj) > max_w) max_w = conv_weights(&b->proj);
        if ((size_t)b->c_out > max_k) max_k = b->c_out;
    }
    p->pos = mfres_alloc(sizeof(infer_pos) * p->n_pos, "inference plan");
    p->w_fold = mfres_alloc(max_w * sizeof(float), "folded weights");
    p->b_fold = mfres_alloc(max_k * sizeof(float), "folded bias");
    p->pooled = mfres_alloc((size_t)N * ar->final_c * sizeof(float), "pooled features");
    p->padded_in = mfres_alloc((size_t)N * c->in_c * c->in_h * c->in_w * sizeof(float), "inference input");
    p->in_nhwc = mfres_alloc((size_t)N * c->in_c * c->in_h * c->in_w * sizeof(float), "inference input");
    p->padded_logits = mfres_alloc((size_t)N * c->num_classes * sizeof(float), "inference logits");
    for (int k = 0; k < INFER_BUFFERS; k++) p->buf[k] = mfres_alloc((size_t)N * image_bytes, "inference activations");
    p->spare = p->nhwc_stage1 ? mfres_alloc((size_t)N * image_bytes, "inference activations") : NULL;
    p->n_order = 3 * m->particles;
    p->snapshot_floats = m->n_params + m->n_buffers + (size_t)p->n_order;
    p->snapshot = mfres_alloc(p->snapshot_floats * sizeof(float), "inference snapshot");
    p->snapshot_order = mfres_alloc(((size_t)p->n_order + 1) * sizeof(int), "inference snapshot");
    bool ok = p->pos && p->w_fold && p->b_fold && p->pooled && p->snapshot && p->snapshot_order && p->padded_in &&
              p->padded_logits && p->in_nhwc && (p->spare || !p->nhwc_stage1);
    for (int k = 0; k < INFER_BUFFERS; k++) ok = ok && p->buf[k];
    if (!ok) {
        infer_plan_free(p);
        return MFRES_ENOMEM;
    }
    memset(p->pos, 0, sizeof(infer_pos) * p->n_pos);

    /* Every map shape of the network, in its layout, over every buffer. */
    if ((rc = add_shape(p, m, ar->stem.K, ar->stem.OH, ar->stem.OW))) goto fail;
    for (int i = 0; i < 3 * n; i++) {
        const arch_block *b = &ar->blocks[i];
        if ((rc = add_shape(p, m, b->c_in, b->h_in, b->w_in)) || (rc = add_shape(p, m, b->c_out, b->h_out, b->w_out)))
            goto fail;
        for (int k = 0; k < b->n_conv; k++)
            if ((rc = add_shape(p, m, b->conv[k].K, b->conv[k].OH, b->conv[k].OW))) goto fail;
    }

    dnnl_memory_desc_t md_in = nn_md_nchw(N, c->in_c, c->in_h, c->in_w);
    dnnl_memory_desc_t md_in_nhwc = nn_md_nhwc(N, c->in_c, c->in_h, c->in_w);
    if ((rc = nn_memory_wrap(&p->x_in, ctx, &md_in, NULL)) ||
        (p->nhwc_stage1 && (rc = nn_memory_wrap(&p->x_nhwc, ctx, &md_in_nhwc, p->in_nhwc))) ||
        (p->nhwc_stage1 && (rc = nn_reorder_create(&p->reorder_in, ctx, &md_in, &md_in_nhwc))))
        goto fail;
    if ((rc = infer_conv_init(p, &p->stem, &ar->stem, p->nhwc_stage1 ? &md_in_nhwc : &md_in, false, ar->stem_bn)))
        goto fail;
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            infer_pos *b = &p->pos[s * n + j];
            const arch_block *sh = arch_block_of(m, s, j);
            b->stage = s, b->index = j, b->shape = sh;
            int last = sh->n_conv - 1;
            const dnnl_memory_desc_t *md_x = &p->shapes[infer_shape(p, sh->c_in, sh->h_in, sh->w_in)].md;
            for (int k = 0; k <= last; k++) {
                const arch_conv *cv = &sh->conv[k];
                const dnnl_memory_desc_t *src = &p->shapes[infer_shape(p, cv->C, cv->H, cv->W)].md;
                /* post: ReLU after every conv and the add; pre: ReLU after every conv but the last */
                bool relu = !sh->pre || k < last;
                if ((rc = infer_conv_init(p, &b->conv[k], cv, src, k == last, relu))) goto fail;
            }
            if (sh->shortcut == SHORTCUT_PROJECTION && (rc = infer_conv_init(p, &b->proj, &sh->proj, md_x, false, false)))
                goto fail;
            if (sh->pre && (rc = nn_batchnorm_init(&b->bn0, ctx, N, sh->c_in, sh->h_in, sh->w_in, true, c->bn_eps, md_x)))
                goto fail;
        }
    if (ar->final_bn &&
        (rc = nn_batchnorm_init(&p->final_bn, ctx, N, ar->final_c, ar->final_h, ar->final_w, true, c->bn_eps,
                                &p->shapes[infer_shape(p, ar->final_c, ar->final_h, ar->final_w)].md)))
        goto fail;
    *plan = p;
    return MFRES_OK;
fail:
    infer_plan_free(p);
    return rc;
}

int infer_fold(infer_plan *p, infer_conv *conv, const arch_conv *shape, const arch_bn *bn, double eps, double h) {
    int K = shape->K;
    size_t per_k = (size_t)(shape->C / shape->groups) * shape->R * shape->R;
    const float *weights = shape->w->data;
    for (int k = 0; k < K; k++) {
        double scale = h, shift = 0.0;
        if (bn) {
            double s = bn->w->data[k] / sqrt((double)bn->rv->data[k] + eps);
            scale = h * s;
            shift = h * (bn->b->data[k] - s * bn->rm->data[k]);
        }
        const float *src = weights + k * per_k;
        float *dst = p->w_fold + k * per_k;
        for (size_t i = 0; i < per_k; i++) dst[i] = (float)(scale * src[i]);
        p->b_fold[k] = (float)shift;
    }
    return nn_conv2d_infer_set_weights(&conv->conv, p->ctx, p->w_fold, p->b_fold);
}

/* Compares the model with the snapshot and brings the snapshot up to date;
 * true when they differed (or there was none yet). */
static bool model_changed(infer_plan *p, const mfres_model *m) {
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

static int fold_all(infer_plan *p, const mfres_model *m) {
    const mfres_arch *ar = m->arch;
    int rc = infer_fold(p, &p->stem, &ar->stem, ar->stem_bn ? &ar->stem_norm : NULL, m->cfg.bn_eps, 1.0);
    for (int i = 0; i < p->n_pos && !rc; i++) {
        infer_pos *b = &p->pos[i];
        rc = b->shape->pre ? block_preact_infer_fold(p, m, b) : block_postact_infer_fold(p, m, b);
    }
    p->folded = rc == MFRES_OK;
    return rc;
}

/* One chunk of p->chunk images through the network. */
static int forward_chunk(infer_plan *p, const mfres_model *m, const float *images, float *logits, profiler *prof) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    const nn_ctx *ctx = p->ctx;
    int N = p->chunk;
    int rc;

    dnnl_memory_set_data_handle(p->x_in, (void *)images);
    dnnl_memory_t x_in = p->x_in;
    if (p->nhwc_stage1) {
        PROFILE_CALL("reorder input to NHWC", -1, NULL, 0, nn_reorder_run(ctx, p->reorder_in, p->x_in, p->x_nhwc));
        x_in = p->x_nhwc;
    }
    dnnl_memory_t stem_out = infer_view(p, 0, ar->stem.K, ar->stem.OH, ar->stem.OW);
    PROFILE_CALL(ar->stem_bn ? "conv+relu (stem, BN folded)" : "conv (stem)", -1, p->stem.conv.impl, p->stem.flops,
                 nn_conv2d_infer_forward(&p->stem.conv, ctx, stem_out, x_in));

    int x = 0; /* which buffer holds the residual stream */
    for (int i = 0; i < p->n_pos; i++) {
        infer_pos *b = &p->pos[i];
        if ((rc = b->shape->pre ? block_preact_infer(p, m, b, &x, prof) : block_postact_infer(p, m, b, &x, prof)))
            return rc;
    }
    int C = ar->final_c, HW = ar->final_h * ar->final_w;
    if (ar->final_bn) {
        int a = infer_free_buffer(1u << x);
        const arch_bn *f = &ar->final_norm;
        nn_batchnorm_bind(&p->final_bn, f->w->data, f->b->data, NULL, NULL, f->rm->data, f->rv->data, NULL, NULL, NULL);
        PROFILE_CALL("batch norm+relu (final)", -1, NULL, 0,
                     nn_batchnorm_forward_infer(&p->final_bn, ctx, infer_view(p, a, C, ar->final_h, ar->final_w),
                                                infer_view(p, x, C, ar->final_h, ar->final_w)));
        x = a;
    }
    double t0 = profile_start(prof);
    nn_avgpool_forward(p->pooled, p->buf[x], N, C, HW, ctx->block);
    nn_linear_forward(logits, p->pooled, ar->fc_w->data, ar->fc_b->data, N, C, c->num_classes);
    profile_stop(prof, "pool+fc", -1, NULL, t0, 0);
    return MFRES_OK;
}

int infer_plan_forward(infer_plan *p, const mfres_model *m, const float *images, float *logits, profiler *prof) {
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
