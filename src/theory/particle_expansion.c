/* P1 §2.2's expansion of the deep particle ResNet in powers of its residual branches, to first
 * order (the two-layer ensemble) and second order (the pairwise interaction of blocks a < b),
 * with the exact θ-gradient of each truncation (theory lab III; include/mfres/theory_lab3.h).
 *
 * ResNet X_{b+1} = X_b + h_b F_b(X_b). Scaling every branch by ε and expanding,
 *   X_L = X0 + ε Σ_b h_b F_b(X0) + ε² Σ_b h_b ∂F_b(X0)·S_b + O(ε³),   S_b = Σ_{a<b} h_a F_a(X0),
 * since X_b = X0 + ε S_b + O(ε²). For neuron units F_b(X) = (1/M) Σ_m u_m σ(w_m·X + b_m), so
 *   ∂F_b(X0)·S = (1/M) Σ_m u_m σ'(z_m) (w_m·S),   z_m = w_m·X0 + b_m.
 * Gradient (G = ∂E/∂X_L per sample; C_a = Σ_{b>a} h_b ∂F_bᵀ G, the cotangent S_b passes to the
 * earlier blocks, K = G + C_a the total cotangent on h_a F_a(X0)), per particle of block a, s = w·S_a:
 *   ∂u += (h/M) [K σ + G σ' s]
 *   ∂w += (h/M) [(K·u) σ' X0 + (G·u)(σ'' s X0 + σ' S_a)]
 *   ∂b += (h/M) [(K·u) σ' + (G·u) σ'' s]
 * (the G-terms and C are dropped at first order). Plain loops over samples: the sizes of the lab are
 * small, and this file is the second-order term's only implementation, so it is kept readable. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/theory_lab3.h"

double mfres_act_deriv2(int act, double eps, double x) {
    switch (act) {
    case MFRES_ACT_RELU: return 0;
    case MFRES_ACT_RELU_REG: return x <= -eps || x >= eps ? 0 : 1 / (2 * eps);
    case MFRES_ACT_SOFTPLUS: {
        double s = mfres_act_apply(MFRES_ACT_SIGMOID, eps, x);
        return s * (1 - s);
    }
    case MFRES_ACT_TANH: {
        double t = tanh(x);
        return -2 * t * (1 - t * t);
    }
    case MFRES_ACT_SIGMOID: {
        double s = mfres_act_apply(MFRES_ACT_SIGMOID, eps, x);
        return s * (1 - s) * (1 - 2 * s);
    }
    }
    return NAN;
}

int mfres_pnet_expansion_loss_grad(const mfres_pnet *net, int order, const double *x, const double *y, int n,
                                   double *out, double *loss, double *gtheta) {
    const int d = net->cfg.d, din = net->cfg.d_in, k = net->cfg.k, L = net->cfg.L, M = net->cfg.M, P = net->P;
    const int act = net->cfg.act, bias = net->cfg.unit == MFRES_UNIT_NEURON;
    const double eps = net->cfg.act_eps;
    if (order != 1 && order != 2) return mfres_fail(MFRES_EINVAL, "expansion: order must be 1 or 2, got %d", order);
    if (net->cfg.unit != MFRES_UNIT_NEURON && net->cfg.unit != MFRES_UNIT_NEURON_NOBIAS)
        return mfres_fail(MFRES_EINVAL, "expansion: needs neuron units, got %s", mfres_unit_name(net->cfg.unit));
    if (n < 1) return mfres_fail(MFRES_EINVAL, "expansion: no samples");
    /* per sample: X0, X_L, G, C, Q (d each), F and S (L×d each), o (k) */
    double *buf = calloc((size_t)5 * d + (size_t)2 * L * d + k, sizeof(double));
    if (!buf) return mfres_fail(MFRES_ENOMEM, "expansion: out of memory");
    double *X0 = buf, *XL = X0 + d, *G = XL + d, *C = G + d, *Q = C + d, *F = Q + d, *S = F + (size_t)L * d;
    double *o = S + (size_t)L * d;
    const int o2 = order == 2;
    double E = 0;
    for (int i = 0; i < n; i++) {
        const double *xi = x + (size_t)i * din;
        for (int j = 0; j < d; j++) {
            double v = 0;
            for (int q = 0; q < din; q++) v += net->W2[(size_t)j * din + q] * xi[q];
            X0[j] = XL[j] = v;
        }
        /* F_b(X0), S_b, and the first- and second-order terms */
        for (int j = 0; j < d; j++) S[j] = 0;
        for (int b = 0; b < L; b++) {
            const double h = net->tau[b] - (b ? net->tau[b - 1] : 0.0);
            double *Fb = F + (size_t)b * d, *Sb = S + (size_t)b * d;
            if (b > 0)
                for (int j = 0; j < d; j++) Sb[j] = Sb[j - d] + (net->tau[b - 1] - (b > 1 ? net->tau[b - 2] : 0.0)) * Fb[j - d];
            for (int j = 0; j < d; j++) Fb[j] = 0;
            for (int m = 0; m < M; m++) {
                const double *th = net->theta + ((size_t)b * M + m) * P, *u = th, *w = th + d;
                double z = bias ? th[2 * d] : 0, ws = 0;
                for (int j = 0; j < d; j++) z += w[j] * X0[j], ws += w[j] * Sb[j];
                const double s0 = mfres_act_apply(act, eps, z), s1 = o2 ? mfres_act_deriv(act, eps, z) : 0;
                for (int j = 0; j < d; j++) {
                    Fb[j] += u[j] * s0 / M;
                    XL[j] += h * u[j] * s1 * ws / M;
                }
            }
            for (int j = 0; j < d; j++) XL[j] += h * Fb[j];
        }
        for (int r = 0; r < k; r++) {
            double v = 0;
            for (int j = 0; j < d; j++) v += net->W1[(size_t)r * d + j] * XL[j];
            o[r] = v;
            const double res = v - y[(size_t)i * k + r];
            E += 0.5 * res * res;
            o[r] = res;
        }
        if (out)
            for (int r = 0; r < k; r++) out[(size_t)i * k + r] = o[r] + y[(size_t)i * k + r];
        if (!gtheta) continue;
        for (int j = 0; j < d; j++) {
            double v = 0;
            for (int r = 0; r < k; r++) v += o[r] * net->W1[(size_t)r * d + j];
            G[j] = v / n;
            C[j] = 0;
        }
        for (int b = L - 1; b >= 0; b--) {
            const double h = net->tau[b] - (b ? net->tau[b - 1] : 0.0), c = h / M;
            const double *Sb = S + (size_t)b * d;
            for (int j = 0; j < d; j++) Q[j] = 0; /* h_b ∂F_bᵀ G, added to C after this block */
            for (int m = 0; m < M; m++) {
                const double *th = net->theta + ((size_t)b * M + m) * P, *u = th, *w = th + d;
                double *g = gtheta + ((size_t)b * M + m) * P;
                double z = bias ? th[2 * d] : 0, ws = 0, Gu = 0, Ku = 0;
                for (int j = 0; j < d; j++) {
                    z += w[j] * X0[j], ws += w[j] * Sb[j];
                    Gu += G[j] * u[j], Ku += (G[j] + C[j]) * u[j];
                }
                const double s0 = mfres_act_apply(act, eps, z), s1 = mfres_act_deriv(act, eps, z);
                const double s2 = o2 ? mfres_act_deriv2(act, eps, z) : 0;
                for (int j = 0; j < d; j++) {
                    g[j] += c * ((G[j] + C[j]) * s0 + (o2 ? G[j] * s1 * ws : 0));
                    g[d + j] += c * (Ku * s1 * X0[j] + (o2 ? Gu * (s2 * ws * X0[j] + s1 * Sb[j]) : 0));
                }
                if (bias) g[2 * d] += c * (Ku * s1 + (o2 ? Gu * s2 * ws : 0));
                if (o2)
                    for (int j = 0; j < d; j++) Q[j] += c * Gu * s1 * w[j];
            }
            if (o2)
                for (int j = 0; j < d; j++) C[j] += Q[j];
        }
    }
    free(buf);
    E /= n;
    if (!isfinite(E)) return mfres_fail(MFRES_ENUMERIC, "expansion (order %d): the loss is %g", order, E);
    if (loss) *loss = E;
    return MFRES_OK;
}
