/* Algorithm 1 on one stage: tau initialisation, sorting, steps and the tau
 * gradient. The network side (scaling each branch by h, returning dE/dh) is
 * the residual layer in src/nn/residual.c. */
#include "mfres/meanfield.h"

void mf_tau_init(float *tau, int P, mfres_tau_init init) {
    for (int i = 0; i < P; i++) tau[i] = init == MFRES_TAU_GRID ? (float)(i + 1) / (float)P : (float)(i + 1);
}

float mf_tau_end(int P, mfres_tau_init init) { return init == MFRES_TAU_GRID ? 1.0f : (float)P; }

int mf_sort(int *order, const float *tau, int P) {
    int sorted[P > 0 ? P : 1];
    for (int i = 0; i < P; i++) sorted[i] = i;
    /* Insertion sort by (tau, particle index): stable, and P is small (<= 200). */
    for (int i = 1; i < P; i++) {
        int p = sorted[i], j = i - 1;
        while (j >= 0 && tau[sorted[j]] > tau[p]) {
            sorted[j + 1] = sorted[j];
            j--;
        }
        sorted[j + 1] = p;
    }
    int changed = 0;
    for (int i = 0; i < P; i++) {
        changed |= order[i] != sorted[i];
        order[i] = sorted[i];
    }
    return changed;
}

void mf_steps(float *h, const int *order, const float *tau, int P) {
    float prev = 0.0f;
    for (int l = 0; l < P; l++) {
        h[l] = tau[order[l]] - prev;
        prev = tau[order[l]];
    }
}

void mf_tau_grad(float *dtau, const int *order, const double *a, int P) {
    for (int l = 0; l < P; l++) dtau[order[l]] = (float)(l + 1 < P ? a[l] - a[l + 1] : a[l]);
}

void mf_clamp(float *tau, int P, float lo, float hi) {
    for (int i = 0; i < P; i++) tau[i] = tau[i] < lo ? lo : tau[i] > hi ? hi : tau[i];
}
