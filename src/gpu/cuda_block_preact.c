/* A pre-activation block on the GPU (the twin of src/models/block_preact.c),
 * for any chain of convolutions and any shortcut (arch.h):
 *     a_i = relu(BN_i(t_{i-1})),  t_i = conv_i(a_i),  t_{-1} = x
 *     out = shortcut(x) + h * t_last
 * The shortcut reads the raw stream x (option A, or a 1x1 projection [+ BN]).
 *
 * Backward runs the branch on the unscaled gradient G, as the CPU plan does;
 * dE/dh = <G, t_last> = <W_last, dW_last> for the unscaled dW_last (the last
 * convolution is linear in its weights), a dot over the weights rather than the
 * activations; then the branch's parameter gradients and its dE/dx are scaled
 * by h, read from the device. */
#include "gpu/cuda_plan.h"
#include "mfres/core.h"

int gpu_preact_forward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, bool train) {
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int last = s->n_conv - 1, N = g->N, rc;
    long n_out = (long)N * s->c_out * s->h_out * s->w_out, rows_out = (long)N * s->h_out * s->w_out;
    const void *shortcut = x;
    if (s->shortcut == SHORTCUT_OPTION_A) {
        KERNEL(gk_shortcut_a_forward(g->act, b->out, x, N, s->h_in, s->w_in, s->c_in, g->stream));
        shortcut = b->out;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        const mfres_tensor *w = bp->proj.w;
        if (s->proj_bn) {
            if ((rc = gpu_conv_fwd(g, m, &b->proj, b->tp, x, w))) return rc;
            gpu_bn pbn = gpu_bn_of(g, m, &bp->proj_norm);
            if ((rc = gpu_bn_forward(g, &pbn, b->out, b->tp, rows_out, b->proj_mean, b->proj_invstd, train, false)))
                return rc;
        } else if ((rc = gpu_conv_fwd(g, m, &b->proj, b->out, x, w))) {
            return rc;
        }
        shortcut = b->out;
    }
    const void *in = x;
    for (int i = 0; i <= last; i++) {
        gpu_bn bn = gpu_bn_of(g, m, &bp->bn[i]);
        long rows = (long)N * s->conv[i].H * s->conv[i].W;
        if ((rc = gpu_bn_forward(g, &bn, b->a[i], in, rows, b->mean[i], b->invstd[i], train, true))) return rc;
        if ((rc = gpu_conv_fwd(g, m, &b->conv[i], b->t[i], b->a[i], bp->conv[i].w))) return rc;
        in = b->t[i];
    }
    KERNEL(gk_residual(g->act, b->out, shortcut, b->t[last], gpu_h_at(g, b->stage, b->index), n_out, g->stream));
    return MFRES_OK;
}

int gpu_preact_backward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, int *sg) {
    const arch_block *s = b->shape;
    const arch_block *bp = arch_params_at(m, b->stage, b->index);
    int last = s->n_conv - 1, N = g->N, s1, s2, spare, rc;
    arch_scratch_others(*sg, &s1, &s2, &spare);
    void *G = g->scratch[*sg];
    long n_in = (long)N * s->c_in * s->h_in * s->w_in, rows_out = (long)N * s->h_out * s->w_out;
    /* The chain backward from G: each convolution's input-side gradient goes
     * to s2, the batch norm's to s1; dE/dx of the branch ends in s1. */
    const void *cur = G;
    for (int i = last; i >= 0; i--) {
        if ((rc = gpu_conv_bwd_weights(g, m, &b->conv[i], bp->conv[i].w, b->a[i], cur)) ||
            (rc = gpu_conv_bwd_data(g, m, &b->conv[i], g->scratch[s2], cur, bp->conv[i].w)))
            return rc;
        gpu_bn bn = gpu_bn_of(g, m, &bp->bn[i]);
        long rows = (long)N * s->conv[i].H * s->conv[i].W;
        if ((rc = gpu_bn_backward(g, &bn, g->scratch[s1], g->scratch[s2], b->a[i], i > 0 ? b->t[i - 1] : x, rows,
                                  b->mean[i], b->invstd[i], NULL, NULL)))
            return rc;
        cur = g->scratch[s1];
    }
    const mfres_tensor *wl = bp->conv[last].w;
    float *dh = g->dh + b->stage * g->blocks_per_stage + b->index;
    KERNEL(gk_dot(gpu_param(g, m, wl->data), gpu_grad(g, m, wl->grad), (long)wl->numel, dh, g->partials, g->stream));
    /* Stage heads have h = 1 always, and so does every block in vanilla mode. */
    if (b->index > 0 && m->cfg.mode == MFRES_MODE_MEANFIELD) {
        const float *h = gpu_h_at(g, b->stage, b->index);
        /* The branch's trainable values are contiguous in the gradient buffer. */
        KERNEL(gk_scale(GK_F32, g->grads + bp->branch_first, h, (long)(bp->branch_end - bp->branch_first), g->stream));
        KERNEL(gk_scale(g->act, g->scratch[s1], h, n_in, g->stream));
    }
    /* dE/dx = branch path (in s1) + shortcut path (from the residual gradient G). */
    if (s->shortcut == SHORTCUT_OPTION_A) {
        KERNEL(gk_shortcut_a_backward_add(g->act, g->scratch[s1], G, N, s->h_in, s->w_in, s->c_in, g->stream));
        *sg = s1;
    } else if (s->shortcut == SHORTCUT_PROJECTION) {
        const void *dy = G;
        if (s->proj_bn) {
            gpu_bn pbn = gpu_bn_of(g, m, &bp->proj_norm);
            if ((rc = gpu_bn_backward(g, &pbn, g->scratch[s2], G, NULL, b->tp, rows_out, b->proj_mean,
                                      b->proj_invstd, NULL, NULL)))
                return rc;
            dy = g->scratch[s2];
        }
        if ((rc = gpu_conv_bwd_weights(g, m, &b->proj, bp->proj.w, x, dy)) ||
            (rc = gpu_conv_bwd_data(g, m, &b->proj, g->scratch[spare], dy, bp->proj.w)))
            return rc;
        KERNEL(gk_add(g->act, g->scratch[s1], g->scratch[spare], n_in, g->stream));
        *sg = s1;
    } else {
        KERNEL(gk_add(g->act, G, g->scratch[s1], n_in, g->stream));
    }
    return MFRES_OK;
}
