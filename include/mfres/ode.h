/* Fixed-step explicit Runge–Kutta integrators for the theory lab.
 *
 * Modelled on GSL odeiv2 (ode-initval2/): a *step type* is a static const table
 * (name, order, Butcher tableau) exported as one pointer; a *step* object holds
 * the work buffers for one dimension and applies one step; the *evolve* driver
 * marches a fixed number of steps over an interval. Right-hand sides return a
 * status; a step whose right-hand side fails restores y and passes the status up.
 *
 * Beyond GSL, every step type can also run in reverse mode: mfres_ode_step_vjp
 * back-propagates a cotangent through one step (the "discrete adjoint", i.e.
 * backprop through the solver), given the system's vector–Jacobian product.
 *
 * Methods (each cites its reference in its own file):
 *   mfres_ode_euler  forward Euler, order 1   (src/theory/ode_euler.c)
 *   mfres_ode_rk4    classical Runge–Kutta, order 4 (src/theory/ode_rk4.c) */
#ifndef MFRES_ODE_H
#define MFRES_ODE_H

#include <stddef.h>

/* dy/dt = f(t, y). Writes dydt[0..dim); returns 0 (MFRES_OK) or a negative mfres status. */
typedef int (*mfres_ode_rhs)(double t, const double *y, double *dydt, void *params);
/* Reverse mode of f: vJ = v · ∂f/∂y (overwritten, a row vector of length dim); the
 * system may also accumulate v · ∂f/∂(its parameters) into buffers it owns. */
typedef int (*mfres_ode_vjp)(double t, const double *y, const double *v, double *vJ, void *params);

typedef struct mfres_ode_system {
    mfres_ode_rhs f;
    mfres_ode_vjp vjp; /* (optional) only mfres_ode_step_vjp needs it */
    size_t dim;
    void *params;
} mfres_ode_system;

#define MFRES_ODE_MAX_STAGES 4

/* An explicit Runge–Kutta method: stage i evaluates k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j);
 * y1 = y0 + h Σ b_i k_i. a is stages×stages row-major, strictly lower triangular. */
typedef struct mfres_ode_step_type {
    const char *name;
    int order;
    int stages;
    const double *a;
    const double *b;
    const double *c;
} mfres_ode_step_type;

extern const mfres_ode_step_type *const mfres_ode_euler;
extern const mfres_ode_step_type *const mfres_ode_rk4;
/* "euler" or "rk4"; NULL if unknown. */
const mfres_ode_step_type *mfres_ode_step_type_by_name(const char *name);

typedef struct mfres_ode_step {
    const mfres_ode_step_type *type;
    size_t dim;
    double *y0;   /* dim: the state at the start of the step (restored on failure) */
    double *k;    /* stages × dim: stage derivatives */
    double *z;    /* stages × dim: stage arguments (kept for the reverse mode) */
    double *gk;   /* stages × dim: stage cotangents (reverse mode) */
    double *tmp;  /* dim */
    long nfev;    /* right-hand-side evaluations so far */
    long nvjp;    /* vector–Jacobian products so far */
} mfres_ode_step;

int mfres_ode_step_alloc(mfres_ode_step *s, const mfres_ode_step_type *type, size_t dim);
void mfres_ode_step_free(mfres_ode_step *s);
/* One step of size h (h may be negative: integrates backwards). y is updated in
 * place; on a failing right-hand side y is restored and the status returned. */
int mfres_ode_step_apply(mfres_ode_step *s, double t, double h, double *y, const mfres_ode_system *sys);
/* Reverse mode of one step from y0: given gy1 = ∂E/∂y1, writes gy0 = ∂E/∂y0 (gy0 may
 * alias gy1), adds ∂E/∂h to *gh (if gh is not NULL; exact for autonomous f), and lets
 * sys->vjp accumulate the parameter cotangents. */
int mfres_ode_step_vjp(mfres_ode_step *s, double t, double h, const double *y0, const double *gy1, double *gy0,
                       double *gh, const mfres_ode_system *sys);
/* Evolve: nsteps equal steps from t0 to t1 (t1 < t0 integrates backwards). */
int mfres_ode_evolve_fixed(mfres_ode_step *s, const mfres_ode_system *sys, double t0, double t1, long nsteps,
                           double *y);

#endif
