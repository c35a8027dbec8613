/* Fits the theory labs read their rates off. */
#ifndef MFRES_THEORY_FIT_H
#define MFRES_THEORY_FIT_H

#include <math.h>

/* Least-squares slope of log y against log x over the points with x, y > 0
 * (NAN if fewer than 2, or all at one x): the exponent p of y ~ x^p. */
static inline double theory_loglog_slope(const double *x, const double *y, int n) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (!(y[i] > 0) || !(x[i] > 0)) continue;
        double a = log(x[i]), b = log(y[i]);
        sx += a, sy += b, sxx += a * a, sxy += a * b, m++;
    }
    if (m < 2) return NAN;
    double den = m * sxx - sx * sx;
    return den > 0 ? (m * sxy - sx * sy) / den : NAN;
}

#endif
