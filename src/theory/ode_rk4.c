/* The classical fourth-order Runge–Kutta method (Kutta 1901):
 * k1 = f(t, y), k2 = f(t + h/2, y + h/2 k1), k3 = f(t + h/2, y + h/2 k2),
 * k4 = f(t + h, y + h k3), y1 = y + h/6 (k1 + 2 k2 + 2 k3 + k4).
 * Hairer, Nørsett, Wanner, Solving ODEs I, §II.1, Table 1.2; GSL's
 * ode-initval2/rk4.c is the same method. */
#include "mfres/ode.h"

static const double rk4_a[16] = {
    0.0, 0.0, 0.0, 0.0,
    0.5, 0.0, 0.0, 0.0,
    0.0, 0.5, 0.0, 0.0,
    0.0, 0.0, 1.0, 0.0,
};
static const double rk4_b[4] = {1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0};
static const double rk4_c[4] = {0.0, 0.5, 0.5, 1.0};

static const mfres_ode_step_type rk4_type = {"rk4", 4, 4, rk4_a, rk4_b, rk4_c};
const mfres_ode_step_type *const mfres_ode_rk4 = &rk4_type;
