/* A pre-activation block on the CPU plans (He et al. 2016b; the basic block,
 * the bottleneck of ResNet-164 and the pre-activation ResNeXt), for any chain
 * of convolutions and any shortcut (arch.h):
 *     a_i = relu(BN_i(t_{i-1})),  t_i = conv_i(a_i),  t_{-1} = x
 *     out = shortcut(x) + h * t_last
 * The shortcut reads the raw stream x (option A, or a 1x1 projection [+ BN]).
 * Training forward, backward with dE/dh, and the inference fold, side by side.
 *
 * Backward runs the branch on the unscaled gradient G (no pass over the
 * activations to form h*G); everything it yields is then h times too small,
 * fixed on the (small) parameter gradients and in the final add. dE/dh =
 * <G, t_last> is <W_last, dW_last> for the unscaled dW_last, because the last
 * convolution is linear in its weights. */
#include <string.h>

#include "mfres/core.h"
#include "models/cpu_plan.h"

int block_preact_forward(mfres_model *m, train_pos *b, const act *x) {
    cpu_plan *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const arch_block *s = b->shape;
    float h = arch_step_at(m, b->stage, b->index), mom = m->cfg.bn_momentum;
    int st = b->stage, last = s->n_conv - 1, N = m->cfg.batch;
    size_t n_out = (size_t)N * s->c_out * s->h_out * s->w_out;
    /* The shortcut is computed into out's buffer, then overwritten in place by the sum. */
    const float *shortcut = x->data;
    if (s->shortcut == SHORTCUT_OPTION_A) {
        STEP_VOID("shortcut A", st, 0,
                  nn_shortcut_a_forward(b->out.data, x->data, N, s->c_in, s->h_in, s->w_in, ctx->block, ctx->block));
        shortcut = b->out.data;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        if (s->proj_bn) {
            STEP_CONV("conv fwd (projection)", st, &b->proj, NN_CONV_FORWARD,
                      nn_conv2d_forward(&b->proj, ctx, b->tp.mem, x->mem));
            STEP("batch norm fwd (projection)", st, 0,
                 nn_batchnorm_forward_train(&b->proj_bn, ctx, b->out.mem, b->tp.mem, mom));
        } else {
            STEP_CONV("conv fwd (projection)", st, &b->proj, NN_CONV_FORWARD,
                      nn_conv2d_forward(&b->proj, ctx, b->out.mem, x->mem));
        }
        shortcut = b->out.data;
    }
    const act *in = x;
    for (int i = 0; i <= last; i++) {
        STEP("batch norm+relu fwd", st, 0, nn_batchnorm_forward_train(&b->bn[i], ctx, b->a[i].mem, in->mem, mom));
        STEP_CONV("conv fwd", st, &b->conv[i], NN_CONV_FORWARD, nn_conv2d_forward(&b->conv[i], ctx, b->t[i].mem, b->a[i].mem));
        in = &b->t[i];
    }
    STEP_VOID("residual add", st, 0, nn_residual_forward(b->out.data, shortcut, b->t[last].data, h, n_out));
    return MFRES_OK;
}

int block_preact_backward(mfres_model *m, train_pos *b, const act *x, int *g, double *dh) {
    cpu_plan *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int st = b->stage, last = s->n_conv - 1, s1, s2, spare;
    arch_scratch_others(*g, &s1, &s2, &spare);
    float h = arch_step_at(m, b->stage, b->index);
    size_t n_in = (size_t)m->cfg.batch * s->c_in * s->h_in * s->w_in;
    float *G = r->scratch[*g];
    dnnl_memory_t(*S)[MAX_SHAPES] = r->scratch_mem;
    int so = b->shape_out, si = b->shape_in;
    /* The chain backward from G: each convolution's input-side gradient goes
     * to s2, the batch norm's to s1; dE/dx of the branch ends in s1. */
    int cur = *g;
    for (int i = last; i >= 0; i--) {
        int in_shape = i > 0 ? b->shape_t[i - 1] : si, out_shape = b->shape_t[i];
        int a_shape = in_shape; /* conv i's input a_i has the shape of its batch norm's input */
        STEP_CONV("conv bwd weights", st, &b->conv[i], NN_CONV_BACKWARD_WEIGHTS,
                  nn_conv2d_backward_weights(&b->conv[i], ctx, b->a[i].mem, S[cur][out_shape]));
        STEP_CONV("conv bwd data", st, &b->conv[i], NN_CONV_BACKWARD_DATA,
                  nn_conv2d_backward_data(&b->conv[i], ctx, S[s2][a_shape], S[cur][out_shape]));
        STEP("batch norm+relu bwd", st, 0,
             nn_batchnorm_backward(&b->bn[i], ctx, S[s1][in_shape], S[s2][in_shape], i > 0 ? b->t[i - 1].mem : x->mem));
        cur = s1;
    }
    double a = 0;
    const float *wl = bp->conv[last].w->data, *dwl = bp->conv[last].w->grad;
    for (size_t i = 0; i < bp->conv[last].w->numel; i++) a += (double)wl[i] * dwl[i];
    *dh = a;
    if (h != 1.0f) {
        /* The branch's trainable values are contiguous in the gradient buffer. */
        float *first = m->grads + bp->branch_first, *end = m->grads + bp->branch_end;
        for (float *p = first; p < end; p++) *p *= h;
        STEP_VOID("branch gradient *h", st, 0, nn_scale_inplace(r->scratch[s1], h, n_in));
    }
    /* dE/dx = branch path (in s1) + shortcut path (from the residual gradient G). */
    if (s->shortcut == SHORTCUT_OPTION_A) {
        STEP_VOID("shortcut A bwd", st, 0,
                  nn_shortcut_a_backward_add(r->scratch[s1], G, m->cfg.batch, s->c_in, s->h_in, s->w_in, ctx->block));
        *g = s1;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        int dy = *g;
        if (s->proj_bn) {
            STEP("batch norm bwd (projection)", st, 0,
                 nn_batchnorm_backward(&b->proj_bn, ctx, S[s2][so], S[*g][so], b->tp.mem));
            dy = s2;
        }
        STEP_CONV("conv bwd weights (projection)", st, &b->proj, NN_CONV_BACKWARD_WEIGHTS,
                  nn_conv2d_backward_weights(&b->proj, ctx, x->mem, S[dy][so]));
        STEP_CONV("conv bwd data (projection)", st, &b->proj, NN_CONV_BACKWARD_DATA,
                  nn_conv2d_backward_data(&b->proj, ctx, S[spare][si], S[dy][so]));
        STEP_VOID("gradient add", st, 0, nn_add_inplace(r->scratch[s1], r->scratch[spare], n_in));
        *g = s1;
    } else {
        STEP_VOID("gradient add", st, 0, nn_add_inplace(G, r->scratch[s1], n_in));
    }
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* inference: BN_0 normalises the residual stream, which the shortcut needs
 * raw, so it stays a batch norm of its own; every later BN_i folds into the
 * convolution before it, and h into the last:
 *   a = relu(BN_0(x)),  a = relu(conv_i'(a)) with BN_{i+1} folded,
 *   out = sc + conv_last'(a) with conv_last' = h*conv_last (sum post-op) */

int block_preact_infer_fold(infer_plan *p, const mfres_model *m, infer_pos *b) {
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    double h = arch_step_at(m, b->stage, b->index), eps = m->cfg.bn_eps;
    int rc = MFRES_OK, last = bp->n_conv - 1;
    for (int i = 0; i <= last && !rc; i++)
        rc = infer_fold(p, &b->conv[i], &bp->conv[i], i < last ? &bp->bn[i + 1] : NULL, eps, i == last ? h : 1.0);
    if (!rc && bp->shortcut == SHORTCUT_PROJECTION)
        rc = infer_fold(p, &b->proj, &bp->proj, bp->proj_bn ? &bp->proj_norm : NULL, eps, 1.0);
    return rc;
}

int block_preact_infer(infer_plan *p, const mfres_model *m, infer_pos *b, int *x, profiler *prof) {
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    const nn_ctx *ctx = p->ctx;
    int st = b->stage, last = s->n_conv - 1;
    unsigned used = 1u << *x;
    int a = infer_free_buffer(used);
    const arch_bn *bn0 = &bp->bn[0];
    nn_batchnorm_bind(&b->bn0, bn0->w->data, bn0->b->data, NULL, NULL, bn0->rm->data, bn0->rv->data, NULL, NULL, NULL);
    PROFILE_CALL("batch norm+relu", st, NULL, 0,
                 nn_batchnorm_forward_infer(&b->bn0, ctx, infer_view(p, a, s->c_in, s->h_in, s->w_in),
                                            infer_view(p, *x, s->c_in, s->h_in, s->w_in)));
    used |= 1u << a;
    int in = a;
    for (int i = 0; i < last; i++) {
        int t = infer_free_buffer(used);
        int rc = infer_conv_run(p, &b->conv[i], &s->conv[i], t, in, prof, "conv+relu (BN folded)", st);
        if (rc) return rc;
        used &= ~(1u << in);
        used |= 1u << t, in = t;
    }
    int out, rc = infer_shortcut(p, b, *x, used, prof, "conv (projection)", &out);
    if (rc) return rc;
    rc = infer_conv_run(p, &b->conv[last], &s->conv[last], out, in, prof, "conv+add (h folded)", st);
    if (rc) return rc;
    *x = out;
    return MFRES_OK;
}
