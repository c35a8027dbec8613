/* Mass-weighted particles and their birth–death (Wasserstein–Fisher–Rao) flow
 * (theory lab III; include/mfres/theory_lab3.h).
 *
 * References: Rotskoff, Jelassi, Bruna, Vanden-Eijnden, "Global convergence of neuron birth-death
 * dynamics" (ICML 2019): the conservative rate V − V̄; Chizat, "Sparse optimization on measures
 * with over-parameterized gradient descent" (2019) and Chizat, Peyré, Schmitzer, Vialard (2018)
 * for the Wasserstein–Fisher–Rao (unbalanced) flow, rate V.
 *
 * Why mass-weighted particles and not resampling (kill/clone): the birth–death term is then a
 * deterministic ODE on the masses, so a run stays bit-reproducible, small particle counts do not
 * add Monte-Carlo noise from the resampling to the comparison with pure transport, and the
 * gradient of every term can be checked against finite differences.
 *
 * The network of masses c is the plain particle ResNet with u ← c·u (u is the outer weight of a
 * neuron unit), kept in s->eff; its θ-gradient g gives, for particle (ℓ, m) with scale M/h_ℓ:
 *   V = (M/h) u·g_u,   ∇_u V = (M/h) g_u,   ∇_{w,b} V = (M/h) g_{w,b} / c. */
#include <math.h>
#include <string.h>

#include "mfres/theory_lab3.h"

int mfres_pmass_check(const mfres_pnet *net, const double *mass) {
    const int L = net->cfg.L, M = net->cfg.M;
    for (int l = 0; l < L; l++) {
        double total = 0;
        for (int m = 0; m < M; m++) {
            double c = mass[(size_t)l * M + m];
            if (!isfinite(c) || c < 0)
                return mfres_fail(c < 0 ? MFRES_EINVAL : MFRES_ENUMERIC,
                                  "mass of particle %d of block %d is %g; masses must be finite and >= 0", m, l, c);
            total += c;
        }
        if (!(total > 1e-12 * M))
            return mfres_fail(MFRES_ENUMERIC,
                              "block %d has lost its mass (total %g): the birth-death rate empties the particle set; "
                              "use a smaller --rate or --lr, or the conservative flow",
                              l, total);
    }
    return MFRES_OK;
}

int mfres_pmass_init(mfres_pmass *s, const mfres_pnet *net, int n, double rate, int conservative) {
    memset(s, 0, sizeof *s);
    if (net->cfg.unit != MFRES_UNIT_NEURON && net->cfg.unit != MFRES_UNIT_NEURON_NOBIAS)
        return mfres_fail(MFRES_EINVAL, "mass-weighted particles need neuron units (the mass scales u); got %s",
                          mfres_unit_name(net->cfg.unit));
    if (!(rate >= 0) || !isfinite(rate))
        return mfres_fail(MFRES_EINVAL, "birth-death rate must be finite and >= 0, got %g", rate);
    mfres_rng rng;
    mfres_rng_seed(&rng, 0); /* eff's draw is overwritten before use */
    int rc = mfres_pnet_init(&s->eff, &net->cfg, &rng);
    if (rc) return rc;
    const size_t LM = (size_t)net->cfg.L * net->cfg.M, nth = mfres_pnet_num_theta(net);
    s->mass = mfres_alloc((LM * 2 + nth) * sizeof(double), "particle masses");
    if (!s->mass) {
        mfres_pnet_free(&s->eff);
        return MFRES_ENOMEM;
    }
    s->V = s->mass + LM;
    s->vel = s->V + LM;
    for (size_t i = 0; i < LM; i++) s->mass[i] = 1.0;
    rc = mfres_pnet_work_alloc(&s->w, net, n, mfres_ode_euler, 1);
    if (rc) {
        mfres_pmass_free(s);
        return rc;
    }
    s->rate = rate;
    s->conservative = conservative;
    s->n = n;
    return MFRES_OK;
}

void mfres_pmass_free(mfres_pmass *s) {
    if (!s) return;
    mfres_pnet_work_free(&s->w);
    mfres_pnet_free(&s->eff);
    mfres_free(s->mass);
    memset(s, 0, sizeof *s);
}

int mfres_pmass_loss_grad(mfres_pmass *s, const mfres_pnet *net, const double *x, const double *y, int n,
                          double *loss) {
    const int L = net->cfg.L, M = net->cfg.M, P = net->P, d = net->cfg.d;
    const size_t nth = mfres_pnet_num_theta(net);
    int rc = mfres_pmass_check(net, s->mass);
    if (rc) return rc;
    memcpy(s->eff.theta, net->theta, nth * sizeof(double));
    memcpy(s->eff.tau, net->tau, (size_t)L * sizeof(double));
    memcpy(s->eff.W2, net->W2, (size_t)d * net->cfg.d_in * sizeof(double));
    memcpy(s->eff.W1, net->W1, (size_t)net->cfg.k * d * sizeof(double));
    for (size_t i = 0; i < (size_t)L * M; i++)
        for (int q = 0; q < d; q++) s->eff.theta[i * P + q] *= s->mass[i];
    memset(s->vel, 0, nth * sizeof(double));
    rc = mfres_pnet_loss_grad(&s->eff, &s->w, x, y, n, MFRES_GRAD_BACKPROP, loss, s->vel, NULL, NULL, NULL);
    if (rc) return rc;
    for (int l = 0; l < L; l++) {
        const double h = net->tau[l] - (l ? net->tau[l - 1] : 0.0);
        if (!(h > 0)) return mfres_fail(MFRES_EINVAL, "mass-weighted particles: block %d has step %g, need > 0", l, h);
        const double scale = M / h;
        for (int m = 0; m < M; m++) {
            const size_t i = (size_t)l * M + m;
            const double *u = net->theta + i * P;
            double *g = s->vel + i * P, v = 0;
            for (int q = 0; q < d; q++) v += u[q] * g[q];
            s->V[i] = scale * v;
            const double c = s->mass[i];
            for (int q = 0; q < d; q++) g[q] *= scale;
            for (int q = d; q < P; q++) g[q] = c > 0 ? g[q] * scale / c : 0.0;
        }
    }
    return MFRES_OK;
}

int mfres_pmass_step(mfres_pmass *s, mfres_pnet *net, const double *x, const double *y, int n, double lr,
                     double *loss) {
    if (!(lr > 0)) return mfres_fail(MFRES_EINVAL, "birth-death step: lr must be > 0, got %g", lr);
    int rc = mfres_pmass_loss_grad(s, net, x, y, n, loss);
    if (rc) return rc;
    const int L = net->cfg.L, M = net->cfg.M;
    const size_t nth = mfres_pnet_num_theta(net);
    for (size_t q = 0; q < nth; q++) net->theta[q] -= lr * s->vel[q];
    if (s->rate == 0) return MFRES_OK;
    for (int l = 0; l < L; l++) {
        double *c = s->mass + (size_t)l * M;
        const double *V = s->V + (size_t)l * M;
        double cv = 0, ct = 0;
        for (int m = 0; m < M; m++) cv += c[m] * V[m], ct += c[m];
        if (!s->conservative) {
            for (int m = 0; m < M; m++) c[m] *= exp(-lr * s->rate * V[m]);
            continue;
        }
        /* conservative: c_m ∝ c_m e^{−lr α (V_m − V̄)} with Σ c = ct, formed in the log domain so that a
         * large rate concentrates the mass instead of overflowing */
        const double Vbar = cv / ct;
        double top = -INFINITY, total = 0;
        for (int m = 0; m < M; m++)
            if (c[m] > 0) top = fmax(top, log(c[m]) - lr * s->rate * (V[m] - Vbar));
        for (int m = 0; m < M; m++) {
            c[m] = c[m] > 0 ? exp(log(c[m]) - lr * s->rate * (V[m] - Vbar) - top) : 0.0;
            total += c[m];
        }
        for (int m = 0; m < M; m++) c[m] *= ct / total;
    }
    rc = mfres_pmass_check(net, s->mass);
    return rc ? mfres_fail_context(rc, "after a birth-death step with rate %g and lr %g", s->rate, lr) : MFRES_OK;
}
