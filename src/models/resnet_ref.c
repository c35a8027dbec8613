/* The same ResNet on the double-precision reference kernels (src/nn/ref.h),
 * NCHW, with its own sort of the particles by tau: an independent second
 * implementation of the whole forward and backward pass, for tests. Memory is
 * allocated per call; speed is not the point here. */
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/model.h"
#include "models/resnet_internal.h"
#include "nn/ref.h"

typedef struct ref_pos {
    int block; /* which block's parameters run here */
    double h;
    block_shape s;
    const double *x; /* input (points at the previous position's out) */
    double *u0, *a0, *t1, *u1, *a1, *t2, *b2, *out;
    double *m1, *r1, *m2, *r2; /* BN means and 1/std */
} ref_pos;

typedef struct ref_ctx {
    const mfres_model *m;
    const double *params;
    double *grads;
} ref_ctx;

static const double *P(const ref_ctx *c, const mfres_tensor *t) { return c->params + (t->data - c->m->params); }
static double *G(const ref_ctx *c, const mfres_tensor *t) { return c->grads + (t->grad - c->m->grads); }

static double *zeros(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

/* Batch norm with the batch's statistics (training: saves mean and 1/std for
 * backward) or with the running statistics (eval). */
static void bn_forward(const ref_ctx *c, bool eval, double *out, double *mean, double *rstd, const double *in,
                       const mfres_tensor *gamma, const mfres_tensor *beta, const mfres_tensor *running_mean,
                       const mfres_tensor *running_var, int N, int C, int HW, double eps) {
    if (!eval) {
        ref_batchnorm_forward(out, mean, rstd, in, P(c, gamma), P(c, beta), N, C, HW, eps);
        return;
    }
    double *rm = zeros(C), *rv = zeros(C);
    for (int i = 0; i < C; i++) rm[i] = running_mean->data[i], rv[i] = running_var->data[i];
    ref_batchnorm_forward_inference(out, in, P(c, gamma), P(c, beta), rm, rv, N, C, HW, eps);
    free(rm), free(rv);
}

static int ref_run(const mfres_model *m, const double *params, const double *tau, const float *images,
                   const int32_t *labels, bool eval, double *loss, double *logits_out, double *grads,
                   double *tau_grad) {
    const mfres_model_config *cfg = &m->cfg;
    const net_params *net = resnet_net_params(m);
    bool pre = cfg->block == MFRES_BLOCK_PREACT;
    int N = cfg->batch, w = cfg->base_width, n = m->blocks_per_stage, Pn = m->particles, K = cfg->num_classes;
    int H = cfg->in_h, W = cfg->in_w;
    double *own_grads = NULL;
    if (!grads) grads = own_grads = zeros(m->n_params);
    else memset(grads, 0, m->n_params * sizeof(double));
    ref_ctx c = {m, params, grads};

    /* Order of the particles by tau (ties: lower index first), and the steps. */
    int order[3][Pn > 0 ? Pn : 1];
    double steps[3][Pn > 0 ? Pn : 1];
    double dh[3][n]; /* dE/dh per position, from the backward pass */
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < Pn; i++) order[s][i] = i;
        if (cfg->mode == MFRES_MODE_MEANFIELD) {
            const double *ts = tau + s * Pn;
            for (int i = 0; i < Pn; i++) /* selection sort */
                for (int j = i + 1; j < Pn; j++) {
                    int a = order[s][i], b = order[s][j];
                    if (ts[b] < ts[a] || (ts[b] == ts[a] && b < a)) order[s][i] = b, order[s][j] = a;
                }
            double prev = 0;
            for (int l = 0; l < Pn; l++) steps[s][l] = ts[order[s][l]] - prev, prev = ts[order[s][l]];
        } else {
            for (int l = 0; l < Pn; l++) steps[s][l] = 1.0;
        }
    }

    size_t in_n = (size_t)N * cfg->in_c * H * W, stem_n = (size_t)N * w * H * W;
    double *x0 = zeros(in_n), *stem_t = zeros(stem_n), *stem_a = zeros(stem_n);
    double *stem_m = zeros(w), *stem_r = zeros(w);
    for (size_t i = 0; i < in_n; i++) x0[i] = images[i];
    ref_conv2d_forward(stem_t, x0, P(&c, net->stem_w), N, cfg->in_c, H, W, w, 3, 3, 1, 1);
    const double *x = stem_t;
    if (!pre) {
        bn_forward(&c, eval, stem_a, stem_m, stem_r, stem_t, net->stem_bn_w, net->stem_bn_b, net->stem_bn_rm,
                   net->stem_bn_rv, N, w, H * W, cfg->bn_eps);
        ref_relu_forward(stem_a, stem_a, (long)stem_n);
        x = stem_a;
    }

    ref_pos *pos = calloc(3 * n, sizeof *pos);
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            ref_pos *p = &pos[s * n + j];
            p->block = s * n + (j == 0 ? 0 : 1 + order[s][j - 1]);
            p->h = j == 0 ? 1.0 : steps[s][j - 1];
            p->s = resnet_block_shape(m, s, j);
            block_shape sh = p->s;
            const block_params *bp = &net->blocks[p->block];
            size_t in_sz = (size_t)N * sh.c_in * sh.h_in * sh.w_in, out_sz = (size_t)N * sh.c_out * sh.h_out * sh.w_out;
            int hw_in = sh.h_in * sh.w_in, hw = sh.h_out * sh.w_out;
            p->x = x;
            p->t1 = zeros(out_sz), p->u1 = zeros(out_sz), p->a1 = zeros(out_sz), p->t2 = zeros(out_sz);
            p->b2 = zeros(out_sz), p->out = zeros(out_sz), p->u0 = zeros(in_sz), p->a0 = zeros(in_sz);
            int c1 = pre ? sh.c_in : sh.c_out;
            p->m1 = zeros(c1), p->r1 = zeros(c1), p->m2 = zeros(sh.c_out), p->r2 = zeros(sh.c_out);
            double *sc = zeros(out_sz);
            if (sh.downsample) ref_shortcut_a_forward(sc, x, N, sh.c_in, sh.h_in, sh.w_in);
            else memcpy(sc, x, out_sz * sizeof(double));
            if (pre) {
                bn_forward(&c, eval, p->u0, p->m1, p->r1, x, bp->bn1_w, bp->bn1_b, bp->bn1_rm, bp->bn1_rv, N, sh.c_in,
                           hw_in, cfg->bn_eps);
                ref_relu_forward(p->a0, p->u0, (long)in_sz);
                ref_conv2d_forward(p->t1, p->a0, P(&c, bp->conv1_w), N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3,
                                   sh.stride, 1);
                bn_forward(&c, eval, p->u1, p->m2, p->r2, p->t1, bp->bn2_w, bp->bn2_b, bp->bn2_rm, bp->bn2_rv, N,
                           sh.c_out, hw, cfg->bn_eps);
                ref_relu_forward(p->a1, p->u1, (long)out_sz);
                ref_conv2d_forward(p->t2, p->a1, P(&c, bp->conv2_w), N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3, 1,
                                   1);
                ref_residual_forward(p->out, sc, p->t2, p->h, false, (long)out_sz);
            } else {
                ref_conv2d_forward(p->t1, x, P(&c, bp->conv1_w), N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3,
                                   sh.stride, 1);
                bn_forward(&c, eval, p->u1, p->m1, p->r1, p->t1, bp->bn1_w, bp->bn1_b, bp->bn1_rm, bp->bn1_rv, N,
                           sh.c_out, hw, cfg->bn_eps);
                ref_relu_forward(p->a1, p->u1, (long)out_sz);
                ref_conv2d_forward(p->t2, p->a1, P(&c, bp->conv2_w), N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3, 1,
                                   1);
                bn_forward(&c, eval, p->b2, p->m2, p->r2, p->t2, bp->bn2_w, bp->bn2_b, bp->bn2_rm, bp->bn2_rv, N,
                           sh.c_out, hw, cfg->bn_eps);
                ref_residual_forward(p->out, sc, p->b2, p->h, true, (long)out_sz);
            }
            free(sc);
            x = p->out;
        }

    int C = 4 * w, HW = (H / 4) * (W / 4);
    size_t last_n = (size_t)N * C * HW;
    double *fin_u = zeros(last_n), *fin_a = zeros(last_n), *fin_m = zeros(C), *fin_r = zeros(C);
    const double *last = x;
    if (pre) {
        bn_forward(&c, eval, fin_u, fin_m, fin_r, x, net->final_bn_w, net->final_bn_b, net->final_bn_rm,
                   net->final_bn_rv, N, C, HW, cfg->bn_eps);
        ref_relu_forward(fin_a, fin_u, (long)last_n);
        x = fin_a;
    }
    double *pooled = zeros((size_t)N * C), *logits = zeros((size_t)N * K), *probs = zeros((size_t)N * K);
    int *lab = calloc(N, sizeof(int));
    for (int i = 0; i < N; i++) lab[i] = labels[i];
    ref_avgpool_forward(pooled, x, N, C, HW);
    ref_linear_forward(logits, pooled, P(&c, net->fc_w), P(&c, net->fc_b), N, C, K);
    int correct;
    *loss = ref_softmax_xent_forward(probs, &correct, logits, lab, N, K);
    if (logits_out) memcpy(logits_out, logits, (size_t)N * K * sizeof(double));
    double *dlogits = NULL, *dpooled = NULL, *g = NULL;
    if (eval) goto done;

    /* ---- backward ---- */
    dlogits = zeros((size_t)N * K), dpooled = zeros((size_t)N * C);
    ref_softmax_xent_backward(dlogits, probs, lab, N, K);
    ref_linear_backward(dpooled, G(&c, net->fc_w), G(&c, net->fc_b), dlogits, pooled, P(&c, net->fc_w), N, C, K);
    g = zeros(last_n);
    ref_avgpool_backward(g, dpooled, N, C, HW);
    if (pre) {
        double *t = zeros(last_n);
        ref_relu_backward(t, g, fin_a, (long)last_n);
        ref_batchnorm_backward(g, G(&c, net->final_bn_w), G(&c, net->final_bn_b), t, last, P(&c, net->final_bn_w),
                               fin_m, fin_r, N, C, HW);
        free(t);
    }
    for (int p_i = 3 * n - 1; p_i >= 0; p_i--) {
        ref_pos *p = &pos[p_i];
        block_shape sh = p->s;
        const block_params *bp = &net->blocks[p->block];
        size_t in_sz = (size_t)N * sh.c_in * sh.h_in * sh.w_in, out_sz = (size_t)N * sh.c_out * sh.h_out * sh.w_out;
        int hw_in = sh.h_in * sh.w_in, hw = sh.h_out * sh.w_out;
        double *dsc = zeros(out_sz), *db = zeros(out_sz), *t = zeros(out_sz), *u = zeros(out_sz);
        double *gx = zeros(in_sz), *gx2 = zeros(in_sz);
        double a = 0;
        ref_residual_backward(dsc, db, &a, g, p->out, pre ? p->t2 : p->b2, p->h, !pre, (long)out_sz);
        dh[p_i / n][p_i % n] = a;
        if (pre) {
            ref_conv2d_backward_weights(G(&c, bp->conv2_w), db, p->a1, N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3,
                                        1, 1);
            ref_conv2d_backward_data(t, db, P(&c, bp->conv2_w), N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3, 1, 1);
            ref_relu_backward(u, t, p->a1, (long)out_sz);
            ref_batchnorm_backward(t, G(&c, bp->bn2_w), G(&c, bp->bn2_b), u, p->t1, P(&c, bp->bn2_w), p->m2, p->r2, N,
                                   sh.c_out, hw);
            ref_conv2d_backward_weights(G(&c, bp->conv1_w), t, p->a0, N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3,
                                        sh.stride, 1);
            ref_conv2d_backward_data(gx2, t, P(&c, bp->conv1_w), N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3,
                                     sh.stride, 1);
            ref_relu_backward(gx2, gx2, p->a0, (long)in_sz);
            ref_batchnorm_backward(gx, G(&c, bp->bn1_w), G(&c, bp->bn1_b), gx2, p->x, P(&c, bp->bn1_w), p->m1, p->r1,
                                   N, sh.c_in, hw_in);
        } else {
            ref_batchnorm_backward(t, G(&c, bp->bn2_w), G(&c, bp->bn2_b), db, p->t2, P(&c, bp->bn2_w), p->m2, p->r2, N,
                                   sh.c_out, hw);
            ref_conv2d_backward_weights(G(&c, bp->conv2_w), t, p->a1, N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3,
                                        1, 1);
            ref_conv2d_backward_data(u, t, P(&c, bp->conv2_w), N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3, 1, 1);
            ref_relu_backward(u, u, p->a1, (long)out_sz);
            ref_batchnorm_backward(t, G(&c, bp->bn1_w), G(&c, bp->bn1_b), u, p->t1, P(&c, bp->bn1_w), p->m1, p->r1, N,
                                   sh.c_out, hw);
            ref_conv2d_backward_weights(G(&c, bp->conv1_w), t, p->x, N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3,
                                        sh.stride, 1);
            ref_conv2d_backward_data(gx, t, P(&c, bp->conv1_w), N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3,
                                     sh.stride, 1);
        }
        if (sh.downsample) {
            ref_shortcut_a_backward(gx2, dsc, N, sh.c_in, sh.h_in, sh.w_in);
            for (size_t i = 0; i < in_sz; i++) gx[i] += gx2[i];
        } else {
            for (size_t i = 0; i < in_sz; i++) gx[i] += dsc[i];
        }
        free(g);
        g = gx;
        free(dsc), free(db), free(t), free(u), free(gx2);
    }
    if (!pre) {
        double *t = zeros(stem_n);
        ref_relu_backward(t, g, stem_a, (long)stem_n);
        ref_batchnorm_backward(g, G(&c, net->stem_bn_w), G(&c, net->stem_bn_b), t, stem_t, P(&c, net->stem_bn_w),
                               stem_m, stem_r, N, w, H * W);
        free(t);
    }
    ref_conv2d_backward_weights(G(&c, net->stem_w), g, x0, N, cfg->in_c, H, W, w, 3, 3, 1, 1);

    if (tau_grad && cfg->mode == MFRES_MODE_MEANFIELD)
        for (int s = 0; s < 3; s++)
            for (int l = 0; l < Pn; l++)
                tau_grad[s * Pn + order[s][l]] = l + 1 < Pn ? dh[s][l + 1] - dh[s][l + 2] : dh[s][l + 1];
done:

    for (int i = 0; i < 3 * n; i++) {
        ref_pos *p = &pos[i];
        double *bufs[] = {p->u0, p->a0, p->t1, p->u1, p->a1, p->t2, p->b2, p->out, p->m1, p->r1, p->m2, p->r2};
        for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) free(bufs[k]);
    }
    double *bufs[] = {x0, stem_t, stem_a, stem_m, stem_r, fin_u, fin_a, fin_m, fin_r, pooled, logits, probs, dlogits,
                      dpooled, g, own_grads};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) free(bufs[k]);
    free(pos);
    free(lab);
    return MFRES_OK;
}

int mfres_model_ref_loss_and_grad(const mfres_model *m, const double *params, const double *tau, const float *images,
                                  const int32_t *labels, double *loss, double *grads, double *tau_grad) {
    return ref_run(m, params, tau, images, labels, false, loss, NULL, grads, tau_grad);
}

int mfres_model_ref_eval(const mfres_model *m, const double *params, const double *tau, const float *images,
                         const int32_t *labels, double *loss, double *logits) {
    return ref_run(m, params, tau, images, labels, true, loss, logits, NULL, NULL);
}
