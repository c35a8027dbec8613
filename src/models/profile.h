/* Per-kernel timing for `mfres bench --profile`: one row per kind of kernel,
 * stage and implementation, summed over calls. Shared by the training pass
 * (cpu_train.c) and the inference pass (cpu_infer.c). */
#ifndef MFRES_PROFILE_H
#define MFRES_PROFILE_H

#include <stdbool.h>
#include <stdio.h>

#include "mfres/core.h"

enum { PROFILE_ROWS = 80 };

typedef struct profile_row {
    char kernel[48], impl[40];
    double seconds, flops;
    long calls;
} profile_row;

typedef struct profiler {
    bool on;
    int n;
    profile_row rows[PROFILE_ROWS];
} profiler;

static inline double profile_start(const profiler *p) { return p && p->on ? mfres_now() : 0.0; }
/* Adds the time since t0 to the row (kind, stage >= 0 or -1, impl or NULL). */
void profile_stop(profiler *p, const char *kind, int stage, const char *impl, double t0, double flops);
/* The table, rows by time; per-step figures over `steps` steps of step_seconds each. */
void profile_print(const profiler *p, FILE *out, long steps, double step_seconds, const char *whole_label);

/* Runs one kernel call, timing it when profiling; returns on error. Needs a
 * `profiler *prof` in scope. */
#define PROFILE_CALL(kind, stage, impl, flops, call)         \
    do {                                                     \
        double t0_ = profile_start(prof);                    \
        int rc_ = (call);                                    \
        profile_stop(prof, kind, stage, impl, t0_, flops);   \
        if (rc_) return rc_;                                 \
    } while (0)
/* The same for calls that return nothing. */
#define PROFILE_VOID(kind, stage, flops, call)               \
    do {                                                     \
        double t0_ = profile_start(prof);                    \
        call;                                                \
        profile_stop(prof, kind, stage, NULL, t0_, flops);   \
    } while (0)

#endif
