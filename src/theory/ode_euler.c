/* Forward Euler, the one-stage explicit Runge–Kutta method of order 1:
 * y1 = y0 + h f(t0, y0). L. Euler, Institutionum calculi integralis (1768);
 * see Hairer, Nørsett, Wanner, Solving ODEs I, §I.7. One Euler step per layer is
 * the ResNet X_{l+1} = X_l + h_l F_l(X_l). */
#include "mfres/ode.h"

static const double euler_a[1] = {0.0};
static const double euler_b[1] = {1.0};
static const double euler_c[1] = {0.0};

static const mfres_ode_step_type euler_type = {"euler", 1, 1, euler_a, euler_b, euler_c};
const mfres_ode_step_type *const mfres_ode_euler = &euler_type;
