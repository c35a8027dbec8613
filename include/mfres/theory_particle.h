/* The continuous mean-field ResNet of P1/P2 as a particle system (theory lab I).
 *
 * Model (DIGEST §1, §4). Data x ∈ R^{d_in}; fixed embedding X(0) = W2 x (W2 is d×d_in
 * with all singular values 1; the identity when d == d_in); fixed read-out
 * out = W1 X(T) (W1 is k×d with unit rows; k = 1 is P1's ⟨w1, X(1)⟩, ‖w1‖ = 1);
 * loss E = (1/n) Σ_x ½ |out(x) − y(x)|².
 * L layers ("blocks") × M particles; block ℓ acts on [τ_{ℓ−1}, τ_ℓ] (τ_{−1} = 0):
 *     dX/dt = F_ℓ(X) = (1/M) Σ_m f(X; θ_{ℓ,m}),   t ∈ [τ_{ℓ−1}, τ_ℓ].
 * Integrated with one Euler step per block this is the ResNet
 *     X_{ℓ+1} = X_ℓ + h_ℓ (1/M) Σ_m f(X_ℓ; θ_{ℓ,m}),  h_ℓ = τ_ℓ − τ_{ℓ−1};
 * with RK4 and s sub-steps per block it approaches the ODE dX/dt = ∫ f ρ dθ.
 * Uniform τ_ℓ = (ℓ+1)/L gives P2's 1/(L·M) scaling; trainable sorted τ is P1's
 * Algorithm 1 (DIGEST §2) on this model.
 *
 * Residual units: neuron f(z; u, w, b) = u σ(wᵀz + b) (P2); neuron-nobias, u σ(wᵀz)
 * (with relu: P2''s 2-homogeneous case); matrix f(z; Θ) = σ(Θ z), Θ ∈ R^{d×d} (P1).
 *
 * Storage: plain buffers. θ is L×M×P doubles (block-major; P = 2d+1, 2d or d²),
 * particle (ℓ, m) at theta + (ℓ M + m) P, laid out [u | w | b] or Θ row-major.
 * Gradients follow the same layout and ACCUMULATE (+=); zero them with
 * mfres_pnet_zero_grad. Errors are negative mfres status codes (mfres/core.h). */
#ifndef MFRES_THEORY_PARTICLE_H
#define MFRES_THEORY_PARTICLE_H

#include <stdint.h>

#include "mfres/core.h"
#include "mfres/ode.h"

enum mfres_act {
    MFRES_ACT_RELU = 0,
    MFRES_ACT_RELU_REG = 1, /* C¹ relu: 0 (x ≤ −ε), (x+ε)²/(4ε) (|x| < ε), x (x ≥ ε) — DIGEST §4 */
    MFRES_ACT_SOFTPLUS = 2,
    MFRES_ACT_TANH = 3,
    MFRES_ACT_SIGMOID = 4,
};
enum mfres_unit {
    MFRES_UNIT_NEURON = 0,        /* u σ(wᵀz + b), P = 2d + 1 */
    MFRES_UNIT_NEURON_NOBIAS = 1, /* u σ(wᵀz), P = 2d */
    MFRES_UNIT_MATRIX = 2,        /* σ(Θ z), P = d² */
};
enum mfres_grad_mode {
    MFRES_GRAD_BACKPROP = 0, /* exact gradient of the discrete scheme (backprop through the solver) */
    MFRES_GRAD_ADJOINT = 1,  /* continuous adjoint: (X, p, ∂θ) integrated backwards with the same method */
};

const char *mfres_act_name(int act);
int mfres_act_by_name(const char *name);   /* -1 if unknown */
const char *mfres_unit_name(int unit);
int mfres_unit_by_name(const char *name);  /* -1 if unknown */
/* σ and σ' (eps: the relu-reg smoothing width). */
double mfres_act_apply(int act, double eps, double x);
double mfres_act_deriv(int act, double eps, double x);

typedef struct mfres_pnet_config {
    int d_in, d, k; /* input, feature and output sizes */
    int L, M;       /* blocks × particles per block */
    int unit;       /* enum mfres_unit */
    int act;        /* enum mfres_act */
    double act_eps; /* relu-reg width (default 0.1) */
    double init_scale; /* particle init: u ~ N(0, s²), w ~ N(0, s²/d), b ~ N(0, s²/4); Θ ~ N(0, s²/d) */
    uint64_t head_seed; /* W2 and W1 are drawn from their own stream seeded by this, so that runs of every
                           size with the same head_seed share one embedding and read-out */
} mfres_pnet_config;

typedef struct mfres_pnet {
    mfres_pnet_config cfg;
    int P;         /* parameters per particle */
    double *theta; /* L × M × P */
    double *tau;   /* L, sorted ascending; τ_{−1} = 0 */
    double *W2;    /* d × d_in (row-major) */
    double *W1;    /* k × d */
} mfres_pnet;

/* Sets the defaults (d_in = d = 4, k = 1, L = 8, M = 16, neuron, tanh, eps 0.1, scale 1, head_seed 1). */
void mfres_pnet_config_default(mfres_pnet_config *cfg);
/* Allocates and draws θ from rng (W2, W1 from head_seed); τ uniform, τ_ℓ = (ℓ+1)/L. */
int mfres_pnet_init(mfres_pnet *net, const mfres_pnet_config *cfg, mfres_rng *rng);
void mfres_pnet_free(mfres_pnet *net);
size_t mfres_pnet_num_theta(const mfres_pnet *net); /* L·M·P */

/* Sorts the blocks by τ (stable), moving each block's particles with its τ.
 * Returns the number of inversions the sort removed (0: the order did not change). */
long mfres_pnet_sort(mfres_pnet *net);

/* Scratch memory for n samples, a method and s sub-steps per block. */
typedef struct mfres_pnet_work {
    int n, substeps;
    const mfres_ode_step_type *method;
    size_t bytes;
    double *Xs;    /* (L+1) × n × d: X at the block boundaries (forward pass) */
    double *Xsub;  /* (s+1) × n × d: the sub-step states of one block (backward pass) */
    double *g;     /* n × d: cotangent */
    double *out;   /* n × k */
    double *Z, *A, *gA; /* n × M·(d or 1) scratch */
    double *aug;   /* continuous adjoint state (2 n d + M P) */
    double *gtheta_blk; /* M × P: the block being integrated accumulates here */
    double *Fc;    /* L × n × d: every block's field (Euler with one step per block only; else NULL) */
    mfres_ode_step step;     /* dimension n d */
    mfres_ode_step step_aug; /* dimension 2 n d + M P */
    /* Sample chunks (Euler with one step per block only; else 1): the n rows are split into
     * `chunks` contiguous ranges that run forward and backward on OpenMP threads; chunk c > 0
     * accumulates its θ-gradient in part + (c−1)·L·M·P, and the partials are added to the caller's
     * gradient in chunk order. Results depend on the chunk count only, never on how many
     * threads actually run, so a run is deterministic for a given count. */
    int chunks;
    double *part; /* (chunks−1)·L·M·P + chunks·L */
} mfres_pnet_work;

/* The chunk count defaults to the OpenMP thread count (omp_get_max_threads(), i.e. OMP_NUM_THREADS),
 * capped so that each chunk has at least 64 rows. */
int mfres_pnet_work_alloc(mfres_pnet_work *w, const mfres_pnet *net, int n, const mfres_ode_step_type *method,
                          int substeps);
void mfres_pnet_work_free(mfres_pnet_work *w);
/* Sets the chunk count (>= 1; capped at n, and 1 unless Euler with one step per block).
 * Returns the count in effect, or a negative status (out of memory). */
int mfres_pnet_work_set_chunks(mfres_pnet_work *w, const mfres_pnet *net, int chunks);

/* Block ℓ's field F_ℓ(X) for n rows of X (n×d) into F (n×d). Z, A: scratch n×M·(d or 1). */
void mfres_pnet_field(const mfres_pnet *net, int layer, const double *X, int n, double *F, double *Z, double *A);
/* Its reverse mode: gX = G · ∂F_ℓ/∂X (overwritten); gtheta_blk (M×P, may be NULL) += G · ∂F_ℓ/∂θ. */
void mfres_pnet_field_vjp(const mfres_pnet *net, int layer, const double *X, int n, const double *G, double *gX,
                          double *gtheta_blk, double *Z, double *A, double *gA);

/* Forward: x is n×d_in, out (n×k, may be NULL: w->out is used). Stores block states in w->Xs. */
int mfres_pnet_forward(const mfres_pnet *net, mfres_pnet_work *w, const double *x, int n, double *out);
/* Loss E and its gradient: gtheta (L·M·P) and gtau (L) are ACCUMULATED (either may be NULL).
 * mode: enum mfres_grad_mode. With MFRES_GRAD_ADJOINT, pnorm (optional, L·s+1 values) receives
 * ‖p(·, t)‖_μ = sqrt(mean_x |p(x,t)|²) on the sub-step grid, t ascending, and tgrid the times. */
int mfres_pnet_loss_grad(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y, int n,
                         int mode, double *loss, double *gtheta, double *gtau, double *pnorm, double *tgrid);
/* The loss alone (forward only). */
int mfres_pnet_loss(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y, int n,
                    double *loss);

/* P1 §2.2's first-order (two-layer ensemble) expansion: out = W1 (X0 + Σ_ℓ h_ℓ F_ℓ(X0)).
 * Returns its loss and accumulates its θ-gradient (gtheta may be NULL); out (n×k) may be NULL. */
int mfres_pnet_ensemble_loss_grad(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y,
                                  int n, double *out, double *loss, double *gtheta);

/* ---- saving and loading particles (src/theory/particle_io.c) ----
 * A directory of standard .npy files (float64, C order; numpy.load reads them) and a small JSON file:
 *   theta.npy (L·M × P: particle (ℓ, m) is row ℓ·M + m, laid out as in θ), tau.npy (L × 1),
 *   W2.npy (d × d_in, the fixed embedding), W1.npy (k × d, the fixed read-out),
 *   particles.json: {"format": "mfres-particles", "version": 1, "unit", "act", "act_eps", "L", "M", "d",
 *                    "d_in", "k", "P"}.
 * Every file is written atomically. */
int mfres_pnet_save(const mfres_pnet *net, const char *dir);
/* Allocates net from dir. Checks the format and version, every shape against particles.json, that
 * every value is finite (an error names the file and the entry) and that τ is sorted. */
int mfres_pnet_load(mfres_pnet *net, const char *dir);

/* ---- training: particle gradient descent on the mean-field time scale ---- */
typedef struct mfres_pnet_train_config {
    double lr;          /* training-time step Δs; each particle moves by lr · L·M · ∂E/∂θ */
    int batch;          /* 0: full batch */
    int train_tau;      /* Algorithm 1: train τ, clamp to [0, tau_max], sort after each step */
    double tau_lr_mult; /* τ moves by lr · tau_lr_mult · L · ∂E/∂τ */
    double tau_max;     /* upper clamp (1: the stage spans [0, 1]) */
    int grad_mode;      /* enum mfres_grad_mode */
} mfres_pnet_train_config;
void mfres_pnet_train_config_default(mfres_pnet_train_config *tc);

/* Scratch for training: gradients and the minibatch copy. */
typedef struct mfres_pnet_trainer {
    mfres_pnet_train_config tc;
    mfres_pnet_work w;
    double *gtheta, *gtau;
    double *xb, *yb; /* batch × d_in, batch × k */
    uint32_t *perm;
    int n;
} mfres_pnet_trainer;
int mfres_pnet_trainer_init(mfres_pnet_trainer *t, const mfres_pnet *net, const mfres_pnet_train_config *tc, int n,
                            const mfres_ode_step_type *method, int substeps);
void mfres_pnet_trainer_free(mfres_pnet_trainer *t);
/* One step on (x, y) (n rows). *loss receives the (batch) loss before the step; *inversions (may be
 * NULL) the number of block-order inversions the sort removed. */
int mfres_pnet_train_step(mfres_pnet *net, mfres_pnet_trainer *t, const double *x, const double *y, mfres_rng *rng,
                          double *loss, long *inversions);

/* ---- data ---- */
enum mfres_pdata_kind {
    MFRES_PDATA_TEACHER = 0,        /* two-layer teacher: y = Σ_j a_j tanh(v_jᵀx) / √J, J = 8 */
    MFRES_PDATA_TEACHER_RESNET = 1, /* a random particle ResNet (L = 2, M = 4, tanh, scale 2) */
    MFRES_PDATA_RANDOM = 2,         /* labels ~ N(0, 1), independent of x */
};
typedef struct mfres_pdata {
    int n, d_in, k;
    double *x; /* n × d_in */
    double *y; /* n × k */
} mfres_pdata;
/* Inputs x uniform on the sphere of radius √d_in; labels by kind. */
int mfres_pdata_synth(mfres_pdata *D, int kind, int n, int d_in, int k, mfres_rng *rng);
/* A .npy or .csv matrix (by extension); its last k columns are the labels. */
int mfres_pdata_load(mfres_pdata *D, const char *path, int k);
void mfres_pdata_free(mfres_pdata *D);

#endif
