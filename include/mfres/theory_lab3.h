/* Theory lab III: what P1 leaves as future work, on the particle ResNet of
 * include/mfres/theory_particle.h (DIGEST §1–2, §4; P1 §2.2, §3.3, §6.2).
 *
 * 1. Mass-weighted particles and birth–death (Wasserstein–Fisher–Rao) dynamics.
 *    Particle (ℓ, m) carries a mass c_{ℓm} ≥ 0 (1 = today's uniform weight):
 *        F_ℓ(X) = (1/M) Σ_m c_{ℓm} f(X; θ_{ℓm}).
 *    With h_ℓ = τ_ℓ − τ_{ℓ−1}, the first variation of E at the particle is
 *        V_{ℓm} = δE/δρ(θ_{ℓm}, t ∈ block ℓ) = E_x[p · f(X, θ_{ℓm})] = (M / h_ℓ) ∂E/∂c_{ℓm},
 *    and a particle's transport velocity is −∇_θ V(θ_{ℓm}) = −(M / (h_ℓ c_{ℓm})) ∂E/∂θ_{ℓm}.
 *    For uniform τ (h = 1/L) and c = 1 the transport step is today's trainer (lr·L·M·∂E/∂θ).
 *    Neuron units only: the mass multiplies the outer weight u, so the network a set of
 *    masses defines is the plain particle ResNet with u ← c·u, and its gradients are
 *    today's, rescaled.
 * 2. The ensemble expansion of P1 §2.2 to second order (neuron units): with S_b = Σ_{a<b} h_a F_a(X0),
 *        X_L = X0 + Σ_b h_b F_b(X0) + Σ_b h_b ∂F_b(X0)·S_b + O(F³),
 *    the second sum being the pairwise interaction of blocks a < b (times t < s). */
#ifndef MFRES_THEORY_LAB3_H
#define MFRES_THEORY_LAB3_H

#include "mfres/theory_particle.h"

/* ---- mass-weighted particles ---- */

/* Checks that mass (L×M) is finite and non-negative and that no block has lost all of its mass.
 * Errors name the first offending particle or block. */
int mfres_pmass_check(const mfres_pnet *net, const double *mass);

typedef struct mfres_pmass {
    mfres_pnet eff;   /* the particles with u scaled by their mass: the network the masses define */
    mfres_pnet_work w;
    double *mass;     /* L × M, owned */
    double *V;        /* L × M: first variation at each particle (filled by mfres_pmass_loss_grad) */
    double *vel;      /* L × M × P: ∇_θ V at each particle (filled by mfres_pmass_loss_grad) */
    double rate;      /* birth–death rate α (0: pure Wasserstein transport) */
    int conservative; /* 1: rate α (V − V̄_ℓ), mass per block conserved; 0: rate α V (unbalanced WFR) */
    int n;
} mfres_pmass;

/* Masses start at 1 (the network is then exactly net). Needs a neuron unit and rate >= 0;
 * n is the number of samples mfres_pmass_loss_grad is called with. */
int mfres_pmass_init(mfres_pmass *s, const mfres_pnet *net, int n, double rate, int conservative);
void mfres_pmass_free(mfres_pmass *s);
/* The mass-weighted network's loss; fills s->V and s->vel (needs every h_ℓ > 0). */
int mfres_pmass_loss_grad(mfres_pmass *s, const mfres_pnet *net, const double *x, const double *y, int n,
                          double *loss);
/* One explicit step of the WFR flow of training-time length lr:
 *   θ ← θ − lr ∇_θV,   c ← c · exp(−lr α (V − V̄_ℓ))  (conservative: then rescaled to keep Σ_m c),
 *                       c ← c · exp(−lr α V)           (non-conservative),
 * with V̄_ℓ = Σ_m c V / Σ_m c. The exponential keeps every mass positive; the rescaling removes the
 * O(lr²) drift of the explicit step from the conserved total. *loss: before the step. Fails (and
 * names the block) if a block's mass vanishes or a mass overflows. */
int mfres_pmass_step(mfres_pmass *s, mfres_pnet *net, const double *x, const double *y, int n, double lr,
                     double *loss);

/* ---- the ensemble expansion to second order ---- */

/* Output (n×k, may be NULL), loss and θ-gradient (accumulated; may be NULL) of the expansion of the
 * deep ResNet (Euler, one step per block) to order 1 (the two-layer ensemble) or 2 (plus the pairwise
 * interaction of blocks). Neuron units only. */
int mfres_pnet_expansion_loss_grad(const mfres_pnet *net, int order, const double *x, const double *y, int n,
                                   double *out, double *loss, double *gtheta);

/* σ''(x) (eps: the relu-reg width); 0 for relu. */
double mfres_act_deriv2(int act, double eps, double x);

#endif
