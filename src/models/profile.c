/* See profile.h. */
#include <stdlib.h>
#include <string.h>

#include "models/profile.h"

void profile_stop(profiler *p, const char *kind, int stage, const char *impl, double t0, double flops) {
    if (!p || !p->on) return;
    double dt = mfres_now() - t0;
    char name[sizeof p->rows[0].kernel];
    if (stage >= 0) snprintf(name, sizeof name, "%s [stage %d]", kind, stage + 1);
    else snprintf(name, sizeof name, "%s", kind);
    if (!impl) impl = "";
    for (int i = 0; i < p->n; i++) {
        profile_row *r = &p->rows[i];
        if (!strcmp(r->kernel, name) && !strcmp(r->impl, impl)) {
            r->seconds += dt, r->calls++, r->flops += flops;
            return;
        }
    }
    if (p->n == PROFILE_ROWS) return;
    profile_row *r = &p->rows[p->n++];
    snprintf(r->kernel, sizeof r->kernel, "%s", name);
    snprintf(r->impl, sizeof r->impl, "%s", impl);
    r->seconds = dt, r->calls = 1, r->flops = flops;
}

static int by_time(const void *a, const void *b) {
    double x = ((const profile_row *)a)->seconds, y = ((const profile_row *)b)->seconds;
    return (x < y) - (x > y);
}

void profile_print(const profiler *p, FILE *out, long steps, double step_seconds, const char *whole_label) {
    profile_row sorted[PROFILE_ROWS];
    memcpy(sorted, p->rows, sizeof(profile_row) * p->n);
    qsort(sorted, p->n, sizeof sorted[0], by_time);
    double total = 0;
    for (int i = 0; i < p->n; i++) total += sorted[i].seconds;
    if (steps < 1) steps = 1;
    fprintf(out, "  %-40s %-26s %9s %6s %7s %9s\n", "kernel", "implementation", "ms/step", "%", "calls", "GFLOP/s");
    for (int i = 0; i < p->n; i++) {
        const profile_row *r = &sorted[i];
        char rate[16] = "";
        if (r->flops > 0) snprintf(rate, sizeof rate, "%9.1f", r->flops / r->seconds / 1e9);
        fprintf(out, "  %-40s %-26s %9.2f %5.1f%% %7ld %9s\n", r->kernel, r->impl, 1e3 * r->seconds / steps,
                100 * r->seconds / (step_seconds * steps), r->calls / steps, rate);
    }
    fprintf(out, "  %-67s %9.2f %5.1f%%\n", "kernels, total", 1e3 * total / steps, 100 * total / (step_seconds * steps));
    fprintf(out, "  %-67s %9.2f %5.1f%%\n", whole_label, 1e3 * step_seconds, 100.0);
}
