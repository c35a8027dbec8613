/* A post-activation block on the GPU (the twin of src/models/block_postact.c),
 * for any chain of convolutions and any shortcut (arch.h):
 *     t_i = conv_i(a_{i-1}),  a_i = relu(BN_i(t_i)) (i < last),  a_{-1} = x
 *     out = relu(shortcut(x) + h * BN_last(t_last))
 * BN_last, the scaling by h, the shortcut add and the ReLU are one kernel
 * after the statistics (gk_bn_residual_relu), which reads h from the device,
 * so a captured graph stays valid while tau moves.
 *
 * Backward: G = dE/d(out) masked by the ReLU is the gradient of both the
 * shortcut and h * BN_last(t_last). BN_last's backward takes h as the scale of
 * its incoming gradient and yields dE/dh = sum_c gamma_c S1_c + beta_c S0_c
 * from the same per-channel sums (gk_bn_backward_params): no pass over the
 * branch output for dE/dh. */
#include "gpu/cuda_plan.h"
#include "mfres/core.h"

int gpu_postact_forward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, bool train) {
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int last = s->n_conv - 1, N = g->N, rc;
    long rows_in = (long)N * s->h_in * s->w_in, rows_out = (long)N * s->h_out * s->w_out;
    /* The shortcut goes to out, which the block end then overwrites in place. */
    const void *shortcut = x;
    if (s->shortcut == SHORTCUT_OPTION_A) {
        KERNEL(gk_shortcut_a_forward(g->act, b->out, x, N, s->h_in, s->w_in, s->c_in, g->stream));
        shortcut = b->out;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        if ((rc = gpu_conv_fwd(g, m, &b->proj, b->tp, x, bp->proj.w))) return rc;
        gpu_bn pbn = gpu_bn_of(g, m, &bp->proj_norm);
        if ((rc = gpu_bn_forward(g, &pbn, b->out, b->tp, rows_out, b->proj_mean, b->proj_invstd, train, false)))
            return rc;
        shortcut = b->out;
    }
    (void)rows_in;
    const void *in = x;
    for (int i = 0; i < last; i++) {
        if ((rc = gpu_conv_fwd(g, m, &b->conv[i], b->t[i], in, bp->conv[i].w))) return rc;
        gpu_bn bn = gpu_bn_of(g, m, &bp->bn[i]);
        long rows = (long)N * s->conv[i].OH * s->conv[i].OW;
        if ((rc = gpu_bn_forward(g, &bn, b->a[i], b->t[i], rows, b->mean[i], b->invstd[i], train, true))) return rc;
        in = b->a[i];
    }
    if ((rc = gpu_conv_fwd(g, m, &b->conv[last], b->t[last], in, bp->conv[last].w))) return rc;
    gpu_bn bn = gpu_bn_of(g, m, &bp->bn[last]);
    const float *h = gpu_h_at(g, b->stage, b->index);
    if (train) {
        KERNEL(gk_bn_stats(g->act, b->t[last], rows_out, s->c_out, g->bn_eps, g->bn_momentum, b->mean[last], b->invstd[last],
                           bn.running_mean, bn.running_var, g->partials, g->stream));
        KERNEL(gk_bn_residual_relu(g->act, b->out, shortcut, b->t[last], rows_out, s->c_out, b->mean[last], b->invstd[last],
                                   bn.gamma, bn.beta, h, g->stream));
    } else {
        KERNEL(gk_bn_residual_relu_running(g->act, b->out, shortcut, b->t[last], rows_out, s->c_out, bn.running_mean,
                                           bn.running_var, g->bn_eps, bn.gamma, bn.beta, h, g->stream));
    }
    return MFRES_OK;
}

int gpu_postact_backward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, int *sg) {
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int last = s->n_conv - 1, N = g->N, s1, s2, spare, rc;
    arch_scratch_others(*sg, &s1, &s2, &spare);
    void *G = g->scratch[*sg];
    long n_out = (long)N * s->c_out * s->h_out * s->w_out, n_in = (long)N * s->c_in * s->h_in * s->w_in;
    long rows_out = (long)N * s->h_out * s->w_out;
    KERNEL(gk_relu_mask(g->act, G, b->out, n_out, g->stream));
    if (s->shortcut == SHORTCUT_PROJECTION) { /* dE/dx through the projection, into spare */
        gpu_bn pbn = gpu_bn_of(g, m, &bp->proj_norm);
        if ((rc = gpu_bn_backward(g, &pbn, g->scratch[s1], G, NULL, b->tp, rows_out, b->proj_mean, b->proj_invstd,
                                  NULL, NULL)))
            return rc;
        if ((rc = gpu_conv_bwd_weights(g, m, &b->proj, bp->proj.w, x, g->scratch[s1])) ||
            (rc = gpu_conv_bwd_data(g, m, &b->proj, g->scratch[spare], g->scratch[s1], bp->proj.w)))
            return rc;
    }
    gpu_bn bn = gpu_bn_of(g, m, &bp->bn[last]);
    float *dh = g->dh + b->stage * g->blocks_per_stage + b->index;
    if ((rc = gpu_bn_backward(g, &bn, g->scratch[s2], G, NULL, b->t[last], rows_out, b->mean[last], b->invstd[last],
                              gpu_h_at(g, b->stage, b->index), dh)))
        return rc;
    /* The chain backward, gradients alternating between s2 (a convolution's
     * output side) and s1 (its input side); dE/dx of the branch ends in s1. */
    for (int i = last; i >= 0; i--) {
        const void *in = i > 0 ? b->a[i - 1] : x;
        if ((rc = gpu_conv_bwd_weights(g, m, &b->conv[i], bp->conv[i].w, in, g->scratch[s2])) ||
            (rc = gpu_conv_bwd_data(g, m, &b->conv[i], g->scratch[s1], g->scratch[s2], bp->conv[i].w)))
            return rc;
        if (i > 0) {
            gpu_bn prev = gpu_bn_of(g, m, &bp->bn[i - 1]);
            long rows = (long)N * s->conv[i - 1].OH * s->conv[i - 1].OW;
            if ((rc = gpu_bn_backward(g, &prev, g->scratch[s2], g->scratch[s1], b->a[i - 1], b->t[i - 1], rows,
                                      b->mean[i - 1], b->invstd[i - 1], NULL, NULL)))
                return rc;
        }
    }
    /* dE/dx = branch path (in s1) + shortcut path. */
    if (s->shortcut == SHORTCUT_OPTION_A) {
        KERNEL(gk_shortcut_a_backward_add(g->act, g->scratch[s1], G, N, s->h_in, s->w_in, s->c_in, g->stream));
        *sg = s1;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        KERNEL(gk_add(g->act, g->scratch[s1], g->scratch[spare], n_in, g->stream));
        *sg = s1;
    } else {
        KERNEL(gk_add(g->act, G, g->scratch[s1], n_in, g->stream));
    }
    return MFRES_OK;
}
