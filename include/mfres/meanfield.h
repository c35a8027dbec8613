/* Algorithm 1 of Lu et al. (ICML 2020), on one stage of P particle blocks.
 *
 * Particle i has a depth position tau[i]. After every step the particles are
 * sorted by tau, giving tau^0 <= ... <= tau^(P-1); the block at position l is
 * scaled by its step h_l = tau^l - tau^(l-1), with tau^(-1) = 0. Given
 * a_l = dE/dh_l = <g^(l+1), F(X^l; theta^l)> from the backward pass, the exact
 * tau gradient of the discrete scheme is dE/dtau^l = a_l - a_(l+1) (l < P-1)
 * and a_(P-1) for the last. The loss is only piecewise smooth in tau: this is
 * the gradient for the order in force. See docs/ALGORITHM1.md. */
#ifndef MFRES_MEANFIELD_H
#define MFRES_MEANFIELD_H

#include "mfres/model.h"

/* unit: tau_i = i + 1 (every step 1: step 0 equals the vanilla ResNet);
 * grid: tau_i = (i + 1) / P (the stage spans [0, 1]). */
void mf_tau_init(float *tau, int P, mfres_tau_init init);
/* Upper clamp for tau: P for unit, 1 for grid. */
float mf_tau_end(int P, mfres_tau_init init);
/* order[l] = particle at position l, sorted by tau (stable: ties keep particle
 * order). Returns 1 if the order differs from the one passed in, else 0. */
int mf_sort(int *order, const float *tau, int P);
/* h[l] = tau[order[l]] - tau[order[l-1]], with tau[order[-1]] = 0. */
void mf_steps(float *h, const int *order, const float *tau, int P);
/* dtau[order[l]] = a[l] - a[l+1] (l < P-1), a[P-1] for the last. */
void mf_tau_grad(float *dtau, const int *order, const double *a, int P);
void mf_clamp(float *tau, int P, float lo, float hi);

#endif
