/* Step and evolve for the fixed-step explicit Runge–Kutta methods of mfres/ode.h
 * (the methods' tableaux live in ode_euler.c and ode_rk4.c, after GSL odeiv2's
 * one-file-per-method layout). The reverse mode is the transpose of the stage
 * recurrences: with gk_i = h b_i gy1, for i = s..1: gz_i = gk_i · ∂f(z_i),
 * gy0 += gz_i, gk_j += h a_ij gz_i (j < i); gy0 += gy1. */
#include "mfres/ode.h"

#include <string.h>

#include "mfres/core.h"

const mfres_ode_step_type *mfres_ode_step_type_by_name(const char *name) {
    if (!name) return NULL;
    if (!strcmp(name, "euler")) return mfres_ode_euler;
    if (!strcmp(name, "rk4")) return mfres_ode_rk4;
    return NULL;
}

int mfres_ode_step_alloc(mfres_ode_step *s, const mfres_ode_step_type *type, size_t dim) {
    memset(s, 0, sizeof *s);
    if (!type || dim == 0 || type->stages < 1 || type->stages > MFRES_ODE_MAX_STAGES)
        return mfres_fail(MFRES_EINVAL, "ode step: bad type or dimension %zu", dim);
    size_t st = (size_t)type->stages;
    double *buf = mfres_alloc(sizeof(double) * dim * (2 + 3 * st), "ode step work");
    if (!buf) return MFRES_ENOMEM;
    s->type = type;
    s->dim = dim;
    s->y0 = buf;
    s->tmp = buf + dim;
    s->k = buf + 2 * dim;
    s->z = s->k + st * dim;
    s->gk = s->z + st * dim;
    return MFRES_OK;
}

void mfres_ode_step_free(mfres_ode_step *s) {
    if (!s) return;
    mfres_free(s->y0);
    memset(s, 0, sizeof *s);
}

/* Evaluates every stage from y0, keeping z_i and k_i. */
static int run_stages(mfres_ode_step *s, double t, double h, const double *y0, const mfres_ode_system *sys) {
    const mfres_ode_step_type *T = s->type;
    const size_t n = s->dim;
    for (int i = 0; i < T->stages; i++) {
        double *zi = s->z + (size_t)i * n;
        memcpy(zi, y0, n * sizeof(double));
        for (int j = 0; j < i; j++) {
            double a = T->a[i * T->stages + j];
            if (a == 0.0) continue;
            const double *kj = s->k + (size_t)j * n;
            for (size_t q = 0; q < n; q++) zi[q] += h * a * kj[q];
        }
        int rc = sys->f(t + T->c[i] * h, zi, s->k + (size_t)i * n, sys->params);
        s->nfev++;
        if (rc) return rc;
    }
    return MFRES_OK;
}

int mfres_ode_step_apply(mfres_ode_step *s, double t, double h, double *y, const mfres_ode_system *sys) {
    const size_t n = s->dim;
    memcpy(s->y0, y, n * sizeof(double));
    int rc = run_stages(s, t, h, s->y0, sys);
    if (rc) {
        memcpy(y, s->y0, n * sizeof(double));
        return rc;
    }
    for (int i = 0; i < s->type->stages; i++) {
        double hb = h * s->type->b[i];
        const double *ki = s->k + (size_t)i * n;
        for (size_t q = 0; q < n; q++) y[q] += hb * ki[q];
    }
    return MFRES_OK;
}

int mfres_ode_step_vjp(mfres_ode_step *s, double t, double h, const double *y0, const double *gy1, double *gy0,
                       double *gh, const mfres_ode_system *sys) {
    if (!sys->vjp) return mfres_fail(MFRES_EINVAL, "ode step vjp: the system has no vector-Jacobian product");
    const mfres_ode_step_type *T = s->type;
    const size_t n = s->dim;
    const int S = T->stages;
    int rc = run_stages(s, t, h, y0, sys);
    if (rc) return rc;
    double dh = 0.0;
    memcpy(s->tmp, gy1, n * sizeof(double)); /* gy0 accumulates here (gy0 may alias gy1) */
    for (int i = 0; i < S; i++) {
        double *gki = s->gk + (size_t)i * n;
        const double *ki = s->k + (size_t)i * n;
        double dot = 0.0;
        for (size_t q = 0; q < n; q++) {
            gki[q] = h * T->b[i] * gy1[q];
            dot += gy1[q] * ki[q];
        }
        dh += T->b[i] * dot;
    }
    for (int i = S - 1; i >= 0; i--) {
        /* k_i is no longer needed (only later stages read it): its slot receives gz_i. */
        double *gzi = s->k + (size_t)i * n;
        rc = sys->vjp(t + T->c[i] * h, s->z + (size_t)i * n, s->gk + (size_t)i * n, gzi, sys->params);
        s->nvjp++;
        if (rc) return rc;
        for (size_t q = 0; q < n; q++) s->tmp[q] += gzi[q];
        for (int j = 0; j < i; j++) {
            double a = T->a[i * S + j];
            if (a == 0.0) continue;
            double *gkj = s->gk + (size_t)j * n;
            const double *kj = s->k + (size_t)j * n;
            double dot = 0.0;
            for (size_t q = 0; q < n; q++) {
                gkj[q] += h * a * gzi[q];
                dot += gzi[q] * kj[q];
            }
            dh += a * dot;
        }
    }
    memcpy(gy0, s->tmp, n * sizeof(double));
    if (gh) *gh += dh;
    return MFRES_OK;
}

int mfres_ode_evolve_fixed(mfres_ode_step *s, const mfres_ode_system *sys, double t0, double t1, long nsteps,
                           double *y) {
    if (nsteps < 1) return mfres_fail(MFRES_EINVAL, "ode evolve: nsteps must be >= 1, got %ld", nsteps);
    double h = (t1 - t0) / (double)nsteps;
    for (long i = 0; i < nsteps; i++) {
        int rc = mfres_ode_step_apply(s, t0 + (double)i * h, h, y, sys);
        if (rc) return mfres_fail_context(rc, "at step %ld of %ld (t = %g)", i, nsteps, t0 + (double)i * h);
    }
    return MFRES_OK;
}
