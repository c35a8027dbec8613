/* The training plan on oneDNN (cpu_plan.h): layers created once for the
 * batch size, one activation arena, and the drivers that run the stem, the
 * positions (block_postact.c, block_preact.c) and the head, forward and back.
 *
 * Memory: the model's parameter, gradient, statistics and tau buffers (arch.c)
 * and here one arena for activations, saved state and the four gradient
 * scratch buffers the backward pass rotates through, each the size of the
 * largest map in the network. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/arena.h"
#include "mfres/core.h"
#include "mfres/meanfield.h"
#include "models/cpu_plan.h"

/* ------------------------------------------------------------------------ */
/* the activation arena: laid out in a counting pass, then carved */

/* Each buffer aligned to 64 bytes: cache lines. */
static void *take(mem_arena *a, size_t bytes) { return arena_take(a, bytes, 64); }

static size_t floats(int n, int c, int h, int w) { return (size_t)n * c * h * w * sizeof(float); }

static void layout_arena(const mfres_model *m, cpu_plan *r, mem_arena *a) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = c->batch, w = c->base_width;
    r->stem_t.data = take(a, floats(N, w, c->in_h, c->in_w));
    if (ar->stem_bn) {
        r->stem_a.data = take(a, floats(N, w, c->in_h, c->in_w));
        r->stem_stats = take(a, 2 * w * sizeof(float));
        r->stem_ws = take(a, r->stem_bn.workspace_bytes);
    }
    for (int p = 0; p < r->n_pos; p++) {
        train_pos *b = &r->pos[p];
        const arch_block *s = b->shape;
        int last = s->n_conv - 1;
        size_t out_bytes = floats(N, s->c_out, s->h_out, s->w_out);
        for (int i = 0; i < s->n_conv; i++) {
            const arch_conv *cv = &s->conv[i];
            if (s->pre) b->a[i].data = take(a, floats(N, cv->C, cv->H, cv->W));
            b->t[i].data = take(a, floats(N, cv->K, cv->OH, cv->OW));
            if (!s->pre && i < last) b->a[i].data = take(a, floats(N, cv->K, cv->OH, cv->OW));
        }
        if (s->shortcut == SHORTCUT_PROJECTION && (s->proj_bn || !s->pre)) b->tp.data = take(a, out_bytes);
        b->out.data = take(a, out_bytes);
        if (!s->pre) b->out_mask = take(a, out_bytes / sizeof(float));
        for (int i = 0; i < s->n_conv; i++) b->bn_stats[i] = take(a, 2 * s->bn[i].C * sizeof(float));
        if (!s->pre) b->bn_scaled = take(a, 2 * s->c_out * sizeof(float));
        for (int i = 0; i < s->n_conv; i++) b->bn_ws[i] = take(a, b->bn[i].workspace_bytes);
        if (s->proj_bn) {
            b->proj_stats = take(a, 2 * s->c_out * sizeof(float));
            b->proj_ws = take(a, b->proj_bn.workspace_bytes);
        }
    }
    if (ar->final_bn) {
        r->final_a.data = take(a, floats(N, ar->final_c, ar->final_h, ar->final_w));
        r->final_stats = take(a, 2 * ar->final_c * sizeof(float));
        r->final_ws = take(a, r->final_bn.workspace_bytes);
    }
    r->pooled = take(a, (size_t)N * ar->final_c * sizeof(float));
    r->dpooled = take(a, (size_t)N * ar->final_c * sizeof(float));
    r->logits = take(a, (size_t)N * c->num_classes * sizeof(float));
    r->probs = take(a, (size_t)N * c->num_classes * sizeof(float));
    r->dlogits = take(a, (size_t)N * c->num_classes * sizeof(float));
    r->labels = take(a, (size_t)N * sizeof(int));
    /* Every gradient fits in the largest map. */
    for (int k = 0; k < N_SCRATCH; k++) r->scratch[k] = take(a, (size_t)N * ar->max_map_floats * sizeof(float));
    r->dh = take(a, (size_t)3 * m->blocks_per_stage * sizeof(double));
}

/* ------------------------------------------------------------------------ */
/* build */

/* The index of the blocked map shape (C, H, W), added on first use. */
static int shape_index(cpu_plan *r, int N, int C, int H, int W) {
    for (int i = 0; i < r->n_shapes; i++)
        if (r->shapes[i].C == C && r->shapes[i].H == H && r->shapes[i].W == W) return i;
    if (r->n_shapes == MAX_SHAPES) return -1;
    plan_shape *s = &r->shapes[r->n_shapes];
    s->C = C, s->H = H, s->W = W, s->md = nn_md_blocked(&r->ctx, N, C, H, W);
    return r->n_shapes++;
}

static int wrap(act *x, const nn_ctx *ctx, const dnnl_memory_desc_t *md) {
    return nn_memory_wrap(&x->mem, ctx, md, x->data);
}

static int build_position(const mfres_model *m, cpu_plan *r, train_pos *b) {
    const mfres_model_config *c = &m->cfg;
    const arch_block *s = b->shape;
    const nn_ctx *ctx = &r->ctx;
    int N = c->batch, rc, last = s->n_conv - 1;
    b->shape_in = shape_index(r, N, s->c_in, s->h_in, s->w_in);
    b->shape_out = shape_index(r, N, s->c_out, s->h_out, s->w_out);
    bool full = b->shape_in < 0 || b->shape_out < 0;
    for (int i = 0; i < s->n_conv; i++) {
        b->shape_t[i] = shape_index(r, N, s->conv[i].K, s->conv[i].OH, s->conv[i].OW);
        full = full || b->shape_t[i] < 0;
    }
    if (full) return mfres_fail(MFRES_EINVAL, "too many distinct map shapes in the network (at most %d)", MAX_SHAPES);
    for (int i = 0; i < s->n_conv; i++) {
        const arch_conv *cv = &s->conv[i];
        const dnnl_memory_desc_t *src = &r->shapes[i == 0 ? b->shape_in : b->shape_t[i - 1]].md;
        const dnnl_memory_desc_t *dst = &r->shapes[b->shape_t[i]].md;
        if ((rc = nn_conv2d_init_groups(&b->conv[i], ctx, N, cv->C, cv->H, cv->W, cv->K, cv->R, cv->R, cv->stride,
                                        cv->pad, cv->groups, src, dst, true)))
            return rc;
        if (s->pre)
            rc = nn_batchnorm_init(&b->bn[i], ctx, N, cv->C, cv->H, cv->W, true, c->bn_eps, src);
        else
            rc = nn_batchnorm_init(&b->bn[i], ctx, N, cv->K, cv->OH, cv->OW, i < last, c->bn_eps, dst);
        if (rc) return rc;
    }
    if (s->shortcut == SHORTCUT_PROJECTION) {
        const arch_conv *pj = &s->proj;
        if ((rc = nn_conv2d_init(&b->proj, ctx, N, pj->C, pj->H, pj->W, pj->K, pj->R, pj->R, pj->stride, pj->pad,
                                 &r->shapes[b->shape_in].md, &r->shapes[b->shape_out].md, true)))
            return rc;
        if (s->proj_bn && (rc = nn_batchnorm_init(&b->proj_bn, ctx, N, pj->K, pj->OH, pj->OW, false, c->bn_eps,
                                                  &r->shapes[b->shape_out].md)))
            return rc;
    }
    return MFRES_OK;
}

static int wrap_position(cpu_plan *r, train_pos *b) {
    const arch_block *s = b->shape;
    const nn_ctx *ctx = &r->ctx;
    int rc = MFRES_OK, last = s->n_conv - 1;
    for (int i = 0; i < s->n_conv && !rc; i++) {
        if (s->pre) rc = wrap(&b->a[i], ctx, &r->shapes[i == 0 ? b->shape_in : b->shape_t[i - 1]].md);
        else if (i < last) rc = wrap(&b->a[i], ctx, &r->shapes[b->shape_t[i]].md);
        if (!rc) rc = wrap(&b->t[i], ctx, &r->shapes[b->shape_t[i]].md);
    }
    if (!rc && b->tp.data) rc = wrap(&b->tp, ctx, &r->shapes[b->shape_out].md);
    if (!rc) rc = wrap(&b->out, ctx, &r->shapes[b->shape_out].md);
    return rc;
}

int cpu_plan_create(mfres_model *m) {
    const mfres_model_config *cfg = &m->cfg;
    const mfres_arch *ar = m->arch;
    cpu_plan *r = m->impl = mfres_alloc(sizeof *m->impl, "model");
    if (!r) return MFRES_ENOMEM;
    memset(r, 0, sizeof *r);
    int N = cfg->batch, w = cfg->base_width, n = m->blocks_per_stage, rc;

    /* Layers: primitives are created once here, for this batch size. */
    if ((rc = nn_ctx_init(&r->ctx))) return rc;
    nn_ctx *ctx = &r->ctx;
    dnnl_memory_desc_t md_in = nn_md_nchw(N, cfg->in_c, cfg->in_h, cfg->in_w);
    int stem_shape = shape_index(r, N, w, cfg->in_h, cfg->in_w);
    const dnnl_memory_desc_t *md_stem = &r->shapes[stem_shape].md;
    if ((rc = nn_conv2d_init(&r->stem_conv, ctx, N, cfg->in_c, cfg->in_h, cfg->in_w, w, 3, 3, 1, 1, &md_in, md_stem,
                             false)))
        return rc;
    if (ar->stem_bn && (rc = nn_batchnorm_init(&r->stem_bn, ctx, N, w, cfg->in_h, cfg->in_w, true, cfg->bn_eps, md_stem)))
        return rc;
    r->n_pos = 3 * n;
    r->pos = mfres_alloc(sizeof(train_pos) * r->n_pos, "block positions");
    if (!r->pos) return MFRES_ENOMEM;
    memset(r->pos, 0, sizeof(train_pos) * r->n_pos);
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            train_pos *b = &r->pos[s * n + j];
            b->stage = s, b->index = j, b->shape = arch_block_of(m, s, j);
            if ((rc = build_position(m, r, b))) return rc;
        }
    int final_shape = r->pos[r->n_pos - 1].shape_out;
    if (ar->final_bn && (rc = nn_batchnorm_init(&r->final_bn, ctx, N, ar->final_c, ar->final_h, ar->final_w, true,
                                                cfg->bn_eps, &r->shapes[final_shape].md)))
        return rc;

    /* Activations: one arena. */
    mem_arena count = {0};
    layout_arena(m, r, &count);
    r->arena = mfres_alloc(count.used, "activations");
    if (!r->arena) return MFRES_ENOMEM;
    m->activation_bytes = count.used;
    mem_arena carve = {.base = r->arena};
    layout_arena(m, r, &carve);

    if ((rc = nn_memory_wrap(&r->x_in.mem, ctx, &md_in, NULL)) || (rc = wrap(&r->stem_t, ctx, md_stem)) ||
        (ar->stem_bn && (rc = wrap(&r->stem_a, ctx, md_stem))) ||
        (ar->final_bn && (rc = wrap(&r->final_a, ctx, &r->shapes[final_shape].md))))
        return rc;
    for (int p = 0; p < r->n_pos; p++)
        if ((rc = wrap_position(r, &r->pos[p]))) return rc;
    for (int k = 0; k < N_SCRATCH; k++)
        for (int s = 0; s < r->n_shapes; s++)
            if ((rc = nn_memory_wrap(&r->scratch_mem[k][s], ctx, &r->shapes[s].md, r->scratch[k]))) return rc;
    return infer_plan_create(&r->infer, m, ctx);
}

static void destroy_act(act *x) {
    if (x->mem) dnnl_memory_destroy(x->mem);
    x->mem = NULL;
}

void cpu_plan_free(mfres_model *m) {
    cpu_plan *r = m->impl;
    if (!r) return;
    for (int p = 0; r->pos && p < r->n_pos; p++) {
        train_pos *b = &r->pos[p];
        for (int i = 0; i < ARCH_MAX_CONV; i++) {
            nn_conv2d_free(&b->conv[i]);
            nn_batchnorm_free(&b->bn[i]);
            destroy_act(&b->a[i]);
            destroy_act(&b->t[i]);
        }
        nn_conv2d_free(&b->proj);
        nn_batchnorm_free(&b->proj_bn);
        destroy_act(&b->tp);
        destroy_act(&b->out);
    }
    nn_conv2d_free(&r->stem_conv);
    nn_batchnorm_free(&r->stem_bn);
    nn_batchnorm_free(&r->final_bn);
    act *acts[] = {&r->x_in, &r->stem_t, &r->stem_a, &r->final_a};
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) destroy_act(acts[i]);
    for (int k = 0; k < N_SCRATCH; k++)
        for (int s = 0; s < MAX_SHAPES; s++)
            if (r->scratch_mem[k][s]) dnnl_memory_destroy(r->scratch_mem[k][s]);
    infer_plan_free(r->infer);
    nn_ctx_free(&r->ctx);
    mfres_free(r->pos);
    mfres_free(r->arena);
    mfres_free(r);
    m->impl = NULL;
}

/* ------------------------------------------------------------------------ */
/* forward */

double cpu_conv_layer_flops(const nn_conv2d *c) {
    return 2.0 * c->N * c->K * (c->C / c->groups) * c->R * c->S * c->OH * c->OW;
}

static void bind_bn(nn_batchnorm *bn, const arch_bn *p, float *stats, void *ws) {
    nn_batchnorm_bind(bn, p->w->data, p->b->data, p->w->grad, p->b->grad, p->rm->data, p->rv->data, stats,
                      stats + p->C, ws);
}

/* Points a position's layers at the parameters of the block sorted there and
 * refreshes the convolutions' weight copies in oneDNN's layouts. */
static int bind_position(const mfres_model *m, cpu_plan *r, train_pos *b) {
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int rc;
    for (int i = 0; i < bp->n_conv; i++) {
        nn_conv2d_bind(&b->conv[i], bp->conv[i].w->data, bp->conv[i].w->grad);
        bind_bn(&b->bn[i], &bp->bn[i], b->bn_stats[i], b->bn_ws[i]);
    }
    if (bp->shortcut == SHORTCUT_PROJECTION) {
        nn_conv2d_bind(&b->proj, bp->proj.w->data, bp->proj.w->grad);
        if (bp->proj_bn) bind_bn(&b->proj_bn, &bp->proj_norm, b->proj_stats, b->proj_ws);
    }
    for (int i = 0; i < bp->n_conv; i++)
        if ((rc = nn_conv2d_prepare(&b->conv[i], &r->ctx))) return rc;
    if (bp->shortcut == SHORTCUT_PROJECTION && (rc = nn_conv2d_prepare(&b->proj, &r->ctx))) return rc;
    return MFRES_OK;
}

int cpu_finish_loss(mfres_model *m, const float *logits, const int32_t *labels, double *loss, int *correct) {
    cpu_plan *r = m->impl;
    int N = m->cfg.batch, hits, valid;
    double loss_sum;
    for (int i = 0; i < N; i++) r->labels[i] = labels[i];
    nn_softmax_xent_forward(r->probs, &loss_sum, &hits, &valid, logits, r->labels, N, m->cfg.num_classes);
    *loss = valid ? loss_sum / valid : 0.0;
    if (correct) *correct = hits;
    if (!isfinite(*loss)) return mfres_fail(MFRES_ENUMERIC, "the loss is %g", *loss);
    return MFRES_OK;
}

int cpu_train_forward(mfres_model *m, const float *images, const int32_t *labels, double *loss, int *correct) {
    cpu_plan *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = c->batch;
    float mom = c->bn_momentum;
    r->have_train_forward = false;

    /* Bind every layer to the parameters of the block that runs there, and
     * refresh the blocked weight copies: once per step. */
    double t0 = profile_start(prof);
    nn_conv2d_bind(&r->stem_conv, ar->stem.w->data, ar->stem.w->grad);
    int rc = nn_conv2d_prepare(&r->stem_conv, ctx);
    if (rc) return rc;
    if (ar->stem_bn) bind_bn(&r->stem_bn, &ar->stem_norm, r->stem_stats, r->stem_ws);
    if (ar->final_bn) bind_bn(&r->final_bn, &ar->final_norm, r->final_stats, r->final_ws);
    for (int p = 0; p < r->n_pos; p++)
        if ((rc = bind_position(m, r, &r->pos[p]))) return rc;
    profile_stop(prof, "weight reorders", -1, NULL, t0, 0);

    dnnl_memory_set_data_handle(r->x_in.mem, (void *)images);
    STEP_CONV("conv fwd (stem)", -1, &r->stem_conv, NN_CONV_FORWARD,
              nn_conv2d_forward(&r->stem_conv, ctx, r->stem_t.mem, r->x_in.mem));
    const act *x = &r->stem_t;
    if (ar->stem_bn) {
        STEP("batch norm+relu fwd (stem)", -1, 0,
             nn_batchnorm_forward_train(&r->stem_bn, ctx, r->stem_a.mem, r->stem_t.mem, mom));
        x = &r->stem_a;
    }
    for (int p = 0; p < r->n_pos; p++) {
        train_pos *b = &r->pos[p];
        if ((rc = b->shape->pre ? block_preact_forward(m, b, x) : block_postact_forward(m, b, x))) return rc;
        x = &b->out;
    }
    if (ar->final_bn) {
        STEP("batch norm+relu fwd (final)", -1, 0,
             nn_batchnorm_forward_train(&r->final_bn, ctx, r->final_a.mem, x->mem, mom));
        x = &r->final_a;
    }
    int C = ar->final_c, HW = ar->final_h * ar->final_w;
    t0 = profile_start(prof);
    nn_avgpool_forward(r->pooled, x->data, N, C, HW, ctx->block);
    nn_linear_forward(r->logits, r->pooled, ar->fc_w->data, ar->fc_b->data, N, C, c->num_classes);
    rc = cpu_finish_loss(m, r->logits, labels, loss, correct);
    profile_stop(prof, "pool+fc+loss fwd", -1, NULL, t0, 0);
    r->have_train_forward = rc == MFRES_OK;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* backward */

int cpu_train_backward(mfres_model *m) {
    cpu_plan *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = c->batch, C = ar->final_c, HW = ar->final_h * ar->final_w, rc;
    if (!r->have_train_forward) return mfres_fail(MFRES_EINVAL, "backward needs a training forward pass first");

    int g = 0, s1, s2, spare;
    double t0 = profile_start(prof);
    nn_softmax_xent_backward(r->dlogits, r->probs, r->labels, N, c->num_classes);
    nn_linear_backward(r->dpooled, ar->fc_w->grad, ar->fc_b->grad, r->dlogits, r->pooled, ar->fc_w->data, N, C,
                       c->num_classes);
    nn_avgpool_backward(r->scratch[g], r->dpooled, N, C, HW, ctx->block);
    profile_stop(prof, "pool+fc+loss bwd", -1, NULL, t0, 0);
    const train_pos *last = &r->pos[r->n_pos - 1];
    if (ar->final_bn) {
        arch_scratch_others(g, &s1, &s2, &spare);
        int fs = last->shape_out;
        STEP("batch norm+relu bwd (final)", -1, 0,
             nn_batchnorm_backward(&r->final_bn, ctx, r->scratch_mem[s1][fs], r->scratch_mem[g][fs], last->out.mem));
        g = s1;
    }
    for (int p = r->n_pos - 1; p >= 0; p--) {
        train_pos *b = &r->pos[p];
        const act *x = p > 0 ? &r->pos[p - 1].out : (ar->stem_bn ? &r->stem_a : &r->stem_t);
        double *dh = &r->dh[b->stage * m->blocks_per_stage + b->index];
        if ((rc = b->shape->pre ? block_preact_backward(m, b, x, &g, dh) : block_postact_backward(m, b, x, &g, dh)))
            return rc;
    }
    int s0 = r->pos[0].shape_in;
    if (ar->stem_bn) {
        arch_scratch_others(g, &s1, &s2, &spare);
        STEP("batch norm+relu bwd (stem)", -1, 0,
             nn_batchnorm_backward(&r->stem_bn, ctx, r->scratch_mem[s1][s0], r->scratch_mem[g][s0], r->stem_t.mem));
        g = s1;
    }
    STEP_CONV("conv bwd weights (stem)", -1, &r->stem_conv, NN_CONV_BACKWARD_WEIGHTS,
              nn_conv2d_backward_weights(&r->stem_conv, ctx, r->x_in.mem, r->scratch_mem[g][s0]));

    if (c->mode == MFRES_MODE_MEANFIELD) {
        int P = m->particles, n = m->blocks_per_stage;
        for (int s = 0; s < 3; s++) mf_tau_grad(m->tau_grad + s * P, m->order + s * P, r->dh + s * n + 1, P);
    }
    return MFRES_OK;
}
