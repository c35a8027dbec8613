/* Theory lab I experiments (`mfres theory <experiment>`): each prints a table on
 * stdout, writes CSV (atomically) and a gnuplot script into out_dir, and runs
 * gnuplot. Progress lines go to stderr. Private to mfres (the CLI calls these). */
#ifndef MFRES_THEORY_EXPERIMENTS_PARTICLE_H
#define MFRES_THEORY_EXPERIMENTS_PARTICLE_H

#include "mfres/theory_particle.h"

#define MFRES_PEXP_MAX_LIST 16

typedef struct mfres_pexp_config {
    const char *out_dir;
    uint64_t seed;
    int seeds;                 /* independent particle draws per configuration */
    mfres_pnet_config net;     /* d_in, d, k, unit, act, act_eps, init_scale; L, M where one size is used */
    int data_kind;             /* enum mfres_pdata_kind, or -1 with data_path */
    const char *data_path;
    int n;                     /* synthetic samples */
    double lr;                 /* training-time step (mean-field time scale) */
    double time;               /* training time: steps = round(time / lr) */
    int batch;                 /* 0: full batch */
    const mfres_ode_step_type *method;
    int substeps;
    long Ls[MFRES_PEXP_MAX_LIST];
    int nL;
    long Ms[MFRES_PEXP_MAX_LIST];
    int nM;
    double target;             /* zero-loss: the ε a run must reach */
    double tau_lr_mult;        /* sorted-tau */
    long steps;                /* bench: timed steps */
} mfres_pexp_config;

/* Defaults shared by every experiment (each experiment then overrides its own). */
void mfres_pexp_config_default(mfres_pexp_config *c);

int mfres_pexp_zero_loss(const mfres_pexp_config *c);
int mfres_pexp_mean_field_limit(const mfres_pexp_config *c);
int mfres_pexp_adjoint(const mfres_pexp_config *c);
int mfres_pexp_ensemble(const mfres_pexp_config *c);
int mfres_pexp_sorted_tau(const mfres_pexp_config *c);
/* Training steps per second at the configured sizes; prints steps_per_s=... */
int mfres_pexp_bench(const mfres_pexp_config *c);

#endif
