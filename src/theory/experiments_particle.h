/* Theory lab I experiments (`mfres theory <experiment>`): each prints a table on
 * stdout, writes CSV (atomically) and a gnuplot script into out_dir, and runs
 * gnuplot. Progress lines go to stderr. Private to mfres (the CLI calls these). */
#ifndef MFRES_THEORY_EXPERIMENTS_PARTICLE_H
#define MFRES_THEORY_EXPERIMENTS_PARTICLE_H

#include <stdio.h>

#include "mfres/core.h"
#include "mfres/theory_particle.h"

#define MFRES_PEXP_MAX_LIST 16
#define MFRES_PEXP_MAX_STEPS 100000000L /* --time / --lr beyond this is an error, not a silent wrap */
#define MFRES_PEXP_DIVERGE 1e6           /* a loss this many times the initial one: the run diverged */

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
    double rate;               /* birth-death: the birth-death rate alpha */
    int conservative;          /* birth-death: 1 conservative (V - mean V), 0 also the unbalanced arm */
    long Ns[MFRES_PEXP_MAX_LIST]; /* particle-limit: total particle counts L*M */
    int nN;
    const char *save_dir;      /* train: save the trained particles here (.npy + particles.json) */
    const char *load_dir;      /* train: start from these particles */
} mfres_pexp_config;

/* Defaults shared by every experiment (each experiment then overrides its own). */
void mfres_pexp_config_default(mfres_pexp_config *c);

int mfres_pexp_zero_loss(const mfres_pexp_config *c);
int mfres_pexp_mean_field_limit(const mfres_pexp_config *c);
int mfres_pexp_adjoint(const mfres_pexp_config *c);
int mfres_pexp_ensemble(const mfres_pexp_config *c);
int mfres_pexp_sorted_tau(const mfres_pexp_config *c);
/* One training run (θ by particle gradient descent), from fresh particles or from load_dir; writes
 * train.csv and saves the final particles to save_dir (default out_dir/particles). */
int mfres_pexp_train(const mfres_pexp_config *c);
/* Theory lab III (src/theory/experiments_lab3.c). */
int mfres_pexp_birth_death(const mfres_pexp_config *c);
int mfres_pexp_expansion(const mfres_pexp_config *c);
int mfres_pexp_particle_limit(const mfres_pexp_config *c);

/* Helpers shared by the particle experiments (src/theory/experiments_particle.c). */
typedef struct pexp_csv {
    mfres_atomic_file af;
    char path[4096];
} pexp_csv;
uint64_t pexp_mix(uint64_t a, uint64_t b);
/* The data set shared by every run of an experiment; sets net->d_in (files) and head_seed. */
int pexp_load_data(const mfres_pexp_config *c, mfres_pdata *D, mfres_pnet_config *net);
/* round(time / lr), at least 1; a negative status (with a message) if it exceeds MFRES_PEXP_MAX_STEPS. */
long pexp_steps_for(const mfres_pexp_config *c);
int pexp_csv_open(pexp_csv *o, const mfres_pexp_config *c, const char *name, const char *header);
int pexp_csv_commit(pexp_csv *o);
/* Writes <out>/<name>.gp and runs gnuplot; a gnuplot failure is a warning (the CSV is the result). */
int pexp_plot(const mfres_pexp_config *c, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void pexp_describe(const mfres_pexp_config *c, const mfres_pnet_config *n, const mfres_pdata *D);
/* MFRES_OK, or an ENUMERIC failure saying the run diverged (E not finite or > MFRES_PEXP_DIVERGE · E0). */
int pexp_check_diverged(double E0, double E, long step, double lr);
double pexp_mean(const double *a, int n);
double pexp_std(const double *a, int n);

/* Training steps per second at the configured sizes; prints steps_per_s=... */
int mfres_pexp_bench(const mfres_pexp_config *c);

#endif
