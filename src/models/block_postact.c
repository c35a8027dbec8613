/* A post-activation block on the CPU plans (He et al. 2016a; ResNeXt, Xie et
 * al. 2017), for any chain of convolutions and any shortcut (arch.h):
 *     t_i = conv_i(a_{i-1}),  a_i = relu(BN_i(t_i)) (i < last),  a_{-1} = x
 *     out = relu(shortcut(x) + h * BN_last(t_last))
 * Training forward, backward with dE/dh, and the inference fold, side by side.
 *
 * The step h is folded into the last batch norm's affine parameters (scale
 * h*gamma, shift h*beta), so h*BN(t) comes out of the batch norm itself, and
 * BN_last, the shortcut add and the ReLU run in two passes over t_last
 * (src/nn/bn_residual.c). Backward, BN_last's gradients are then those of
 * h*gamma and h*beta: dE/dh = sum_c gamma_c dE/d(h gamma_c) + beta_c dE/d(h beta_c),
 * and the true parameter gradients are h times them. No pass over the branch. */
#include <string.h>

#include "mfres/core.h"
#include "models/cpu_plan.h"

int block_postact_forward(mfres_model *m, train_pos *b, const act *x) {
    cpu_plan *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    float h = arch_step_at(m, b->stage, b->index), mom = m->cfg.bn_momentum;
    int st = b->stage, last = s->n_conv - 1, N = m->cfg.batch;
    /* The shortcut is computed into out's buffer, then overwritten in place by the sum. */
    const float *shortcut = x->data;
    if (s->shortcut == SHORTCUT_OPTION_A) {
        STEP_VOID("shortcut A", st, 0,
                  nn_shortcut_a_forward(b->out.data, x->data, N, s->c_in, s->h_in, s->w_in, ctx->block, ctx->block));
        shortcut = b->out.data;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        STEP_CONV("conv fwd (projection)", st, &b->proj, NN_CONV_FORWARD,
                  nn_conv2d_forward(&b->proj, ctx, b->tp.mem, x->mem));
        STEP("batch norm fwd (projection)", st, 0,
             nn_batchnorm_forward_train(&b->proj_bn, ctx, b->out.mem, b->tp.mem, mom));
        shortcut = b->out.data;
    }
    int C = s->c_out;
    const arch_bn *bn_last = &bp->bn[last];
    for (int c = 0; c < C; c++)
        b->bn_scaled[c] = h * bn_last->w->data[c], b->bn_scaled[C + c] = h * bn_last->b->data[c];
    nn_batchnorm_bind_affine(&b->bn[last], b->bn_scaled, b->bn_scaled + C);
    const act *in = x;
    for (int i = 0; i < last; i++) {
        STEP_CONV("conv fwd", st, &b->conv[i], NN_CONV_FORWARD, nn_conv2d_forward(&b->conv[i], ctx, b->t[i].mem, in->mem));
        STEP("batch norm+relu fwd", st, 0, nn_batchnorm_forward_train(&b->bn[i], ctx, b->a[i].mem, b->t[i].mem, mom));
        in = &b->a[i];
    }
    STEP_CONV("conv fwd", st, &b->conv[last], NN_CONV_FORWARD,
              nn_conv2d_forward(&b->conv[last], ctx, b->t[last].mem, in->mem));
    /* BN_last, the shortcut add and the ReLU in two passes over t_last. */
    int HW = s->h_out * s->w_out;
    float *mean = b->bn_stats[last], *var = b->bn_stats[last] + C;
    STEP("batch norm statistics", st, 0, nn_batchnorm_train_statistics(&b->bn[last], ctx, b->t[last].data, mom));
    STEP_VOID("batch norm+residual add+relu", st, 0,
              nn_bn_residual_relu_forward(b->out.data, b->out_mask, shortcut, b->t[last].data, mean, var, b->bn_scaled,
                                          b->bn_scaled + C, m->cfg.bn_eps, N, C, HW, ctx->block));
    return MFRES_OK;
}

int block_postact_backward(mfres_model *m, train_pos *b, const act *x, int *g, double *dh) {
    cpu_plan *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int st = b->stage, last = s->n_conv - 1, s1, s2, spare;
    arch_scratch_others(*g, &s1, &s2, &spare);
    float h = arch_step_at(m, b->stage, b->index);
    size_t n_out = (size_t)m->cfg.batch * s->c_out * s->h_out * s->w_out;
    size_t n_in = (size_t)m->cfg.batch * s->c_in * s->h_in * s->w_in;
    float *G = r->scratch[*g];
    dnnl_memory_t(*S)[MAX_SHAPES] = r->scratch_mem;
    int so = b->shape_out, si = b->shape_in;
    STEP_VOID("relu bwd (block output)", st, 0, nn_relu_backward_inplace(G, b->out_mask, n_out));
    if (s->shortcut == SHORTCUT_PROJECTION) { /* dE/dx through the projection, into spare */
        STEP("batch norm bwd (projection)", st, 0, nn_batchnorm_backward(&b->proj_bn, ctx, S[s1][so], S[*g][so], b->tp.mem));
        STEP_CONV("conv bwd weights (projection)", st, &b->proj, NN_CONV_BACKWARD_WEIGHTS,
                  nn_conv2d_backward_weights(&b->proj, ctx, x->mem, S[s1][so]));
        STEP_CONV("conv bwd data (projection)", st, &b->proj, NN_CONV_BACKWARD_DATA,
                  nn_conv2d_backward_data(&b->proj, ctx, S[spare][si], S[s1][so]));
    }
    STEP("batch norm bwd", st, 0, nn_batchnorm_backward(&b->bn[last], ctx, S[s2][so], S[*g][so], b->t[last].mem));
    float *dgamma = bp->bn[last].w->grad, *dbeta = bp->bn[last].b->grad;
    const float *gamma = bp->bn[last].w->data, *beta = bp->bn[last].b->data;
    double a = 0;
    for (int c = 0; c < s->c_out; c++) {
        a += (double)gamma[c] * dgamma[c] + (double)beta[c] * dbeta[c];
        dgamma[c] *= h, dbeta[c] *= h;
    }
    *dh = a;
    /* The chain backward, gradients alternating between s2 (a conv's output
     * side) and s1 (its input side); dE/dx of the branch ends in s1. */
    for (int i = last; i >= 0; i--) {
        const act *in = i > 0 ? &b->a[i - 1] : x;
        int in_shape = i > 0 ? b->shape_t[i - 1] : si, out_shape = b->shape_t[i];
        STEP_CONV("conv bwd weights", st, &b->conv[i], NN_CONV_BACKWARD_WEIGHTS,
                  nn_conv2d_backward_weights(&b->conv[i], ctx, in->mem, S[s2][out_shape]));
        STEP_CONV("conv bwd data", st, &b->conv[i], NN_CONV_BACKWARD_DATA,
                  nn_conv2d_backward_data(&b->conv[i], ctx, S[s1][in_shape], S[s2][out_shape]));
        if (i > 0)
            STEP("batch norm+relu bwd", st, 0,
                 nn_batchnorm_backward(&b->bn[i - 1], ctx, S[s2][in_shape], S[s1][in_shape], b->t[i - 1].mem));
    }
    /* dE/dx = branch path (in s1) + shortcut path. */
    if (s->shortcut == SHORTCUT_OPTION_A) {
        STEP_VOID("shortcut A bwd",
                  st, 0, nn_shortcut_a_backward_add(r->scratch[s1], G, m->cfg.batch, s->c_in, s->h_in, s->w_in, ctx->block));
        *g = s1;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        STEP_VOID("gradient add", st, 0, nn_add_inplace(r->scratch[s1], r->scratch[spare], n_in));
        *g = s1;
    } else {
        STEP_VOID("gradient add", st, 0, nn_add_inplace(G, r->scratch[s1], n_in));
    }
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* inference: every batch norm folded into the convolution before it, so the
 * block is its convolutions alone:
 *   a_i = relu(conv_i'(a_{i-1}))          conv_i' = BN_i folded, ReLU post-op
 *   out = relu(sc + conv_last'(a))        conv_last' = h*BN_last folded; out
 *                                         holds the shortcut; sum and ReLU post-ops
 * With an identity shortcut the block writes its output over x in place. */

int block_postact_infer_fold(infer_plan *p, const mfres_model *m, infer_pos *b) {
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    double h = arch_step_at(m, b->stage, b->index), eps = m->cfg.bn_eps;
    int rc = MFRES_OK, last = bp->n_conv - 1;
    for (int i = 0; i <= last && !rc; i++)
        rc = infer_fold(p, &b->conv[i], &bp->conv[i], &bp->bn[i], eps, i == last ? h : 1.0);
    if (!rc && bp->shortcut == SHORTCUT_PROJECTION) rc = infer_fold(p, &b->proj, &bp->proj, &bp->proj_norm, eps, 1.0);
    return rc;
}

int block_postact_infer(infer_plan *p, const mfres_model *m, infer_pos *b, int *x, profiler *prof) {
    const arch_block *s = b->shape;
    int st = b->stage, last = s->n_conv - 1;
    unsigned used = 1u << *x;
    int in = *x;
    for (int i = 0; i < last; i++) {
        int t = infer_free_buffer(used);
        int rc = infer_conv_run(p, &b->conv[i], &s->conv[i], t, in, prof, "conv+relu (BN folded)", st);
        if (rc) return rc;
        if (in != *x) used &= ~(1u << in);
        used |= 1u << t, in = t;
    }
    int out, rc = infer_shortcut(p, b, *x, used, prof, "conv (projection, BN folded)", &out);
    if (rc) return rc;
    rc = infer_conv_run(p, &b->conv[last], &s->conv[last], out, in, prof, "conv+add+relu (BN, h folded)", st);
    if (rc) return rc;
    (void)m; /* the folds (block_postact_infer_fold) read the model; the pass needs only the plan */
    *x = out;
    return MFRES_OK;
}
