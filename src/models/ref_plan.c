/* The reference plan: the network of an architecture description (arch.h) on
 * the double-precision reference kernels (src/nn/ref.h), NCHW, with its own
 * sort of the particles by tau. An independent second implementation of the
 * whole forward and backward pass, for tests: it interprets the description
 * layer by layer (no fusion, no folding, no scaling tricks), and shares no
 * code with the CPU plans. Memory is allocated per call; speed is not the
 * point here. */
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/model.h"
#include "models/arch.h"
#include "nn/ref.h"

typedef struct ref_pos {
    const arch_block *p; /* the block whose parameters run here */
    double h;
    const double *x;  /* input (points at the previous position's out) */
    double *u[ARCH_MAX_CONV], *a[ARCH_MAX_CONV], *t[ARCH_MAX_CONV]; /* BN outputs, ReLU outputs, conv outputs */
    double *mean[ARCH_MAX_CONV], *rstd[ARCH_MAX_CONV];
    double *tp, *sc, *pm, *pr; /* projection conv output, shortcut, projection BN statistics */
    double *branch, *out;      /* what h scales; the block output */
} ref_pos;

typedef struct ref_ctx {
    const mfres_model *m;
    const double *params;
    double *grads;
    bool eval;
    int N;
    double eps;
} ref_ctx;

static const double *P(const ref_ctx *c, const mfres_tensor *t) { return c->params + (t->data - c->m->params); }
static double *G(const ref_ctx *c, const mfres_tensor *t) { return c->grads + (t->grad - c->m->grads); }

static double *zeros(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static size_t map(const ref_ctx *c, int C, int H, int W) { return (size_t)c->N * C * H * W; }

/* Batch norm with the batch's statistics (training: saves mean and 1/std for
 * backward) or with the running statistics (eval). */
static void bn_forward(const ref_ctx *c, double *out, double *mean, double *rstd, const double *in, const arch_bn *bn,
                       int HW) {
    if (!c->eval) {
        ref_batchnorm_forward(out, mean, rstd, in, P(c, bn->w), P(c, bn->b), c->N, bn->C, HW, c->eps);
        return;
    }
    double *rm = zeros(bn->C), *rv = zeros(bn->C);
    for (int i = 0; i < bn->C; i++) rm[i] = bn->rm->data[i], rv[i] = bn->rv->data[i];
    ref_batchnorm_forward_inference(out, in, P(c, bn->w), P(c, bn->b), rm, rv, c->N, bn->C, HW, c->eps);
    free(rm), free(rv);
}

static void bn_backward(const ref_ctx *c, double *din, const double *dout, const double *in, const arch_bn *bn,
                        const double *mean, const double *rstd, int HW) {
    ref_batchnorm_backward(din, G(c, bn->w), G(c, bn->b), dout, in, P(c, bn->w), mean, rstd, c->N, bn->C, HW);
}

static void conv_forward(const ref_ctx *c, double *out, const double *in, const arch_conv *k) {
    ref_conv2d_forward_groups(out, in, P(c, k->w), c->N, k->C, k->H, k->W, k->K, k->R, k->R, k->stride, k->pad,
                              k->groups);
}

/* din (overwritten, unless NULL) and the weight gradient. */
static void conv_backward(const ref_ctx *c, double *din, const double *dout, const double *in, const arch_conv *k) {
    ref_conv2d_backward_weights_groups(G(c, k->w), dout, in, c->N, k->C, k->H, k->W, k->K, k->R, k->R, k->stride,
                                       k->pad, k->groups);
    if (din)
        ref_conv2d_backward_data_groups(din, dout, P(c, k->w), c->N, k->C, k->H, k->W, k->K, k->R, k->R, k->stride,
                                        k->pad, k->groups);
}

static void block_forward(const ref_ctx *c, ref_pos *q, const arch_block *s) {
    const arch_block *p = q->p;
    size_t in_n = map(c, s->c_in, s->h_in, s->w_in), out_n = map(c, s->c_out, s->h_out, s->w_out);
    int last = s->n_conv - 1;
    /* shortcut */
    q->sc = zeros(out_n);
    if (s->shortcut == SHORTCUT_IDENTITY) {
        memcpy(q->sc, q->x, in_n * sizeof(double));
    } else if (s->shortcut == SHORTCUT_OPTION_A) {
        ref_shortcut_a_forward(q->sc, q->x, c->N, s->c_in, s->h_in, s->w_in);
    } else {
        q->tp = zeros(out_n);
        conv_forward(c, q->tp, q->x, &p->proj);
        if (p->proj_bn) {
            q->pm = zeros(s->c_out), q->pr = zeros(s->c_out);
            bn_forward(c, q->sc, q->pm, q->pr, q->tp, &p->proj_norm, s->h_out * s->w_out);
        } else {
            memcpy(q->sc, q->tp, out_n * sizeof(double));
        }
    }
    /* branch */
    const double *in = q->x;
    for (int i = 0; i <= last; i++) {
        const arch_conv *k = &s->conv[i];
        size_t kin = map(c, k->C, k->H, k->W), kout = map(c, k->K, k->OH, k->OW);
        q->mean[i] = zeros(p->bn[i].C), q->rstd[i] = zeros(p->bn[i].C);
        q->t[i] = zeros(kout);
        if (s->pre) {
            q->u[i] = zeros(kin), q->a[i] = zeros(kin);
            bn_forward(c, q->u[i], q->mean[i], q->rstd[i], in, &p->bn[i], k->H * k->W);
            ref_relu_forward(q->a[i], q->u[i], (long)kin);
            conv_forward(c, q->t[i], q->a[i], &p->conv[i]);
            in = q->t[i];
        } else {
            q->u[i] = zeros(kout), q->a[i] = zeros(kout);
            conv_forward(c, q->t[i], in, &p->conv[i]);
            bn_forward(c, q->u[i], q->mean[i], q->rstd[i], q->t[i], &p->bn[i], k->OH * k->OW);
            ref_relu_forward(q->a[i], q->u[i], (long)kout);
            in = q->a[i];
        }
    }
    q->branch = s->pre ? q->t[last] : q->u[last];
    q->out = zeros(out_n);
    ref_residual_forward(q->out, q->sc, q->branch, q->h, !s->pre, (long)out_n);
}

/* g: dE/d(out), consumed; returns dE/dx (allocated) and dE/dh in *dh. */
static double *block_backward(const ref_ctx *c, ref_pos *q, const arch_block *s, const double *g, double *dh) {
    const arch_block *p = q->p;
    size_t in_n = map(c, s->c_in, s->h_in, s->w_in), out_n = map(c, s->c_out, s->h_out, s->w_out);
    int last = s->n_conv - 1;
    double *dsc = zeros(out_n), *dbranch = zeros(out_n), *gx = zeros(in_n);
    *dh = 0;
    ref_residual_backward(dsc, dbranch, dh, g, q->out, q->branch, q->h, !s->pre, (long)out_n);
    /* branch, from its end */
    double *d = dbranch; /* dE/d(branch value at the current point) */
    for (int i = last; i >= 0; i--) {
        const arch_conv *k = &s->conv[i];
        size_t kin = map(c, k->C, k->H, k->W), kout = map(c, k->K, k->OH, k->OW);
        if (s->pre) { /* d is dE/dt_i */
            double *da = zeros(kin), *du = zeros(kin), *dx = zeros(kin);
            conv_backward(c, da, d, q->a[i], &p->conv[i]);
            ref_relu_backward(du, da, q->a[i], (long)kin);
            bn_backward(c, dx, du, i > 0 ? q->t[i - 1] : q->x, &p->bn[i], q->mean[i], q->rstd[i], k->H * k->W);
            free(d), free(da), free(du);
            d = dx;
        } else { /* d is dE/du_i (last) or dE/da_i */
            double *du = zeros(kout), *dt = zeros(kout), *dx = zeros(kin);
            if (i < last) ref_relu_backward(du, d, q->a[i], (long)kout);
            else memcpy(du, d, kout * sizeof(double));
            bn_backward(c, dt, du, q->t[i], &p->bn[i], q->mean[i], q->rstd[i], k->OH * k->OW);
            conv_backward(c, dx, dt, i > 0 ? q->a[i - 1] : q->x, &p->conv[i]);
            free(d), free(du), free(dt);
            d = dx;
        }
    }
    for (size_t i = 0; i < in_n; i++) gx[i] = d[i];
    free(d);
    /* shortcut */
    double *dx = zeros(in_n);
    if (s->shortcut == SHORTCUT_IDENTITY) {
        memcpy(dx, dsc, in_n * sizeof(double));
    } else if (s->shortcut == SHORTCUT_OPTION_A) {
        ref_shortcut_a_backward(dx, dsc, c->N, s->c_in, s->h_in, s->w_in);
    } else {
        double *dtp = dsc;
        if (p->proj_bn) {
            dtp = zeros(out_n);
            bn_backward(c, dtp, dsc, q->tp, &p->proj_norm, q->pm, q->pr, s->h_out * s->w_out);
        }
        conv_backward(c, dx, dtp, q->x, &p->proj);
        if (dtp != dsc) free(dtp);
    }
    for (size_t i = 0; i < in_n; i++) gx[i] += dx[i];
    free(dx), free(dsc);
    return gx;
}

static void free_pos(ref_pos *q) {
    for (int i = 0; i < ARCH_MAX_CONV; i++) free(q->u[i]), free(q->a[i]), free(q->t[i]), free(q->mean[i]), free(q->rstd[i]);
    free(q->tp), free(q->sc), free(q->pm), free(q->pr), free(q->out);
}

static int ref_run(const mfres_model *m, const double *params, const double *tau, const float *images,
                   const int32_t *labels, bool eval, double *loss, double *logits_out, double *grads,
                   double *tau_grad) {
    const mfres_model_config *cfg = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = cfg->batch, n = m->blocks_per_stage, Pn = m->particles, K = cfg->num_classes;
    double *own_grads = NULL;
    if (!grads) grads = own_grads = zeros(m->n_params);
    else memset(grads, 0, m->n_params * sizeof(double));
    ref_ctx c = {m, params, grads, eval, N, cfg->bn_eps};

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

    const arch_conv *st = &ar->stem;
    size_t in_n = map(&c, cfg->in_c, cfg->in_h, cfg->in_w), stem_n = map(&c, st->K, st->OH, st->OW);
    double *x0 = zeros(in_n), *stem_t = zeros(stem_n), *stem_u = zeros(stem_n), *stem_a = zeros(stem_n);
    double *stem_m = zeros(st->K), *stem_r = zeros(st->K);
    for (size_t i = 0; i < in_n; i++) x0[i] = images[i];
    conv_forward(&c, stem_t, x0, st);
    const double *x = stem_t;
    if (ar->stem_bn) {
        bn_forward(&c, stem_u, stem_m, stem_r, stem_t, &ar->stem_norm, st->OH * st->OW);
        ref_relu_forward(stem_a, stem_u, (long)stem_n);
        x = stem_a;
    }

    ref_pos *pos = calloc(3 * n, sizeof *pos);
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            ref_pos *q = &pos[s * n + j];
            q->p = &ar->blocks[s * n + (j == 0 ? 0 : 1 + order[s][j - 1])];
            q->h = j == 0 ? 1.0 : steps[s][j - 1];
            q->x = x;
            block_forward(&c, q, &ar->blocks[s * n + j]);
            x = q->out;
        }

    int C = ar->final_c, HW = ar->final_h * ar->final_w;
    size_t last_n = map(&c, C, ar->final_h, ar->final_w);
    double *fin_u = zeros(last_n), *fin_a = zeros(last_n), *fin_m = zeros(C), *fin_r = zeros(C);
    const double *last = x;
    if (ar->final_bn) {
        bn_forward(&c, fin_u, fin_m, fin_r, x, &ar->final_norm, HW);
        ref_relu_forward(fin_a, fin_u, (long)last_n);
        x = fin_a;
    }
    double *pooled = zeros((size_t)N * C), *logits = zeros((size_t)N * K), *probs = zeros((size_t)N * K);
    int *lab = calloc(N, sizeof(int));
    for (int i = 0; i < N; i++) lab[i] = labels[i];
    ref_avgpool_forward(pooled, x, N, C, HW);
    ref_linear_forward(logits, pooled, P(&c, ar->fc_w), P(&c, ar->fc_b), N, C, K);
    int correct;
    *loss = ref_softmax_xent_forward(probs, &correct, logits, lab, N, K);
    if (logits_out) memcpy(logits_out, logits, (size_t)N * K * sizeof(double));
    double *dlogits = NULL, *dpooled = NULL, *g = NULL;
    if (eval) goto done;

    /* ---- backward ---- */
    dlogits = zeros((size_t)N * K), dpooled = zeros((size_t)N * C);
    ref_softmax_xent_backward(dlogits, probs, lab, N, K);
    ref_linear_backward(dpooled, G(&c, ar->fc_w), G(&c, ar->fc_b), dlogits, pooled, P(&c, ar->fc_w), N, C, K);
    g = zeros(last_n);
    ref_avgpool_backward(g, dpooled, N, C, HW);
    if (ar->final_bn) {
        double *t = zeros(last_n);
        ref_relu_backward(t, g, fin_a, (long)last_n);
        bn_backward(&c, g, t, last, &ar->final_norm, fin_m, fin_r, HW);
        free(t);
    }
    for (int i = 3 * n - 1; i >= 0; i--) {
        double *gx = block_backward(&c, &pos[i], &ar->blocks[i], g, &dh[i / n][i % n]);
        free(g);
        g = gx;
    }
    if (ar->stem_bn) {
        double *t = zeros(stem_n);
        ref_relu_backward(t, g, stem_a, (long)stem_n);
        bn_backward(&c, g, t, stem_t, &ar->stem_norm, stem_m, stem_r, st->OH * st->OW);
        free(t);
    }
    conv_backward(&c, NULL, g, x0, st);

    if (tau_grad && cfg->mode == MFRES_MODE_MEANFIELD)
        for (int s = 0; s < 3; s++)
            for (int l = 0; l < Pn; l++)
                tau_grad[s * Pn + order[s][l]] = l + 1 < Pn ? dh[s][l + 1] - dh[s][l + 2] : dh[s][l + 1];
done:
    for (int i = 0; i < 3 * n; i++) free_pos(&pos[i]);
    double *bufs[] = {x0, stem_t, stem_u, stem_a, stem_m, stem_r, fin_u, fin_a, fin_m, fin_r, pooled, logits, probs,
                      dlogits, dpooled, g, own_grads};
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
