/* Theory lab II: deep linear ResNets (P3: Zou, Long, Gu, "On the Global
 * Convergence of Training Deep Linear ResNets", ICLR 2020, arXiv 2003.01094).
 *
 *   f_W(x) = B M_L ··· M_1 A x,   M_ℓ = I + W_ℓ (ResNet)  or  M_ℓ = W_ℓ (plain),
 *   loss   L(W) = ½ ‖B M_L···M_1 A X − Y‖_F²  (a sum over samples, as in P3),
 *
 * with X ∈ R^{d×n}, Y ∈ R^{k×n}, A ∈ R^{m×d} and B ∈ R^{k×m} fixed, W_ℓ ∈ R^{m×m}
 * trained by GD or minibatch SGD. Everything is double precision and row-major.
 *
 * The theorem measured here: with W⁰ = 0, if
 *   σ_min²(A) σ_min²(B) / (‖A‖‖B‖) ≥ C ‖X‖ √(L(W⁰) − L*) / σ_r²(X)          (the condition)
 * and η ≤ c / (L ‖A‖² ‖B‖² ‖X‖²), then
 *   L(W^t) − L* ≤ (1 − η L σ_min²(A) σ_min²(B) σ_r²(X) / e)^t (L(W⁰) − L*).
 * The constants C and c are not in the texts mfres has (docs/theory-linear.md);
 * both are parameters, and mfres reports the *margin* of the condition (the
 * largest C for which it holds) so no reading of C is baked in.
 *
 * Memory: a data set, a pair of transforms and a model each own their buffers
 * (one allocation per category in the model); every *_init / *_make has a *_free. */
#ifndef MFRES_THEORY_LINEAR_H
#define MFRES_THEORY_LINEAR_H

#include <stdint.h>
#include <stdio.h>

#include "mfres/core.h"

/* ---- data ---- */

/* X (d×n), Y (k×n), and the exact least-squares optimum Θ* = argmin ½‖ΘX − Y‖²
 * (LAPACK dgelsd). Because Θ* satisfies the normal equations, for any end-to-end
 * map Θ: L(Θ) − L* = ½‖(Θ − Θ*)X‖², so the excess loss is computed from the
 * difference of two predictions, never as a difference of two losses (which
 * would lose all digits below ~1e-16·L*). */
typedef struct mfres_lin_data {
    int d, k, n;
    int rank;          /* numerical rank r of X */
    double *X;         /* d×n */
    double *Y;         /* k×n */
    double *theta;     /* Θ*, k×d */
    double *pred_star; /* Θ*X, k×n */
    double loss_star;  /* L* = ½‖Θ*X − Y‖² */
    double sigma_max;  /* ‖X‖ (spectral) */
    double sigma_r;    /* smallest non-zero singular value of X */
} mfres_lin_data;

typedef struct mfres_lin_data_cfg {
    int d, k, n;
    int rank;            /* rank of X; 0 means min(d, n) */
    double kappa;        /* condition number of XXᵀ on its range: σ_1²/σ_r² (P3's κ) */
    double target_scale; /* Θ*_true entries ~ N(0, target_scale²/d) */
    double noise;        /* Y = Θ*_true X + noise·N(0,1) per entry */
} mfres_lin_data_cfg;

/* Synthetic X = U diag(s) Vᵀ with random orthonormal U (d×r), V (n×r) and
 * singular values geometric from √n down to √(n/κ) (so a sample has norm ~√r
 * on average and σ_1²/σ_r² = κ exactly). */
int mfres_lin_data_synth(mfres_lin_data *data, const mfres_lin_data_cfg *cfg, mfres_rng *rng);
/* Copies X (d×n) and Y (k×n) and solves for Θ*, L*, the rank and σ's. */
int mfres_lin_data_from(mfres_lin_data *data, const double *X, const double *Y, int d, int k, int n);
/* Loads X and Y from .npy or .csv files (by extension) holding one sample per
 * row: X is n×d, Y is n×k (transposed on load). */
int mfres_lin_data_load(mfres_lin_data *data, const char *x_path, const char *y_path);
void mfres_lin_data_free(mfres_lin_data *data);

/* ---- fixed input/output transforms ---- */

enum mfres_lin_transform_kind {
    MFRES_LIN_GAUSSIAN = 0, /* A_ij ~ N(0, a²/m), B_ij ~ N(0, b²/m) */
    MFRES_LIN_IDENTITY = 1, /* P3's modified identity: A = [I_d; 0], B = [0, I_k] (m ≥ d + k) */
    MFRES_LIN_FILE = 2,     /* A and B from files */
};

typedef struct mfres_lin_transforms {
    int m, d, k;
    int kind;
    double *A; /* m×d */
    double *B; /* k×m */
    double a_norm, a_sigma_min; /* ‖A‖, σ_min(A) (the min(m,d)-th singular value) */
    double b_norm, b_sigma_min;
} mfres_lin_transforms;

int mfres_lin_transforms_gaussian(mfres_lin_transforms *tr, int m, int d, int k, double a_scale, double b_scale,
                                  mfres_rng *rng);
/* m = d + k is P3's transform; a larger m pads with zero rows / columns between
 * the two identity blocks (BA = 0 still holds). */
int mfres_lin_transforms_identity(mfres_lin_transforms *tr, int m, int d, int k);
/* A (m×d) and B (k×m) as row-major matrices in .npy or .csv files. */
int mfres_lin_transforms_load(mfres_lin_transforms *tr, const char *a_path, const char *b_path);
void mfres_lin_transforms_free(mfres_lin_transforms *tr);

/* ---- the model ---- */

enum mfres_lin_arch { MFRES_LIN_RESNET = 0, MFRES_LIN_PLAIN = 1 };
enum mfres_lin_init { MFRES_LIN_INIT_ZERO = 0, MFRES_LIN_INIT_GAUSSIAN = 1 };

typedef struct mfres_lin_model {
    int arch, L, m, d, k;
    int n_max; /* activations are sized for batches of up to n_max samples */
    const mfres_lin_transforms *tr; /* borrowed; must outlive the model */
    /* one allocation per category, with named pointers into it */
    double *params; /* W_1..W_L: L×m×m */
    double *grads;  /* same shape; accumulated with +=, cleared by mfres_lin_zero_grad */
    double *acts;   /* the buffers below */
    double *H;      /* H_ℓ = M_ℓ···M_1 A X for ℓ = 0..L: (L+1)×m×n_max, the cached prefix products */
    double *G;      /* two m×n_max buffers for the suffix products (B M_L···M_{ℓ+1})ᵀ R */
    double *out;    /* B H_L, k×n_max */
    double *R;      /* residual out − Y, k×n_max */
    double *Xb;     /* gathered minibatch X (d×n_max) and Y (k×n_max) for SGD */
    double *Yb;
    size_t bytes;   /* total allocated */
} mfres_lin_model;

int mfres_lin_model_init(mfres_lin_model *model, const mfres_lin_transforms *tr, int arch, int L, int n_max);
/* W_ℓ = 0, or entries ~ N(0, std²/m) (so a plain M_ℓ = W_ℓ is an isometry in expectation). */
void mfres_lin_model_init_weights(mfres_lin_model *model, int init, double std, mfres_rng *rng);
void mfres_lin_model_free(mfres_lin_model *model);

/* Forward pass on X (d×n), Y (k×n), n ≤ n_max: fills H, out and R and returns
 * the loss ½‖R‖². Cost O(L m² n). */
double mfres_lin_forward(mfres_lin_model *model, const double *X, const double *Y, int n);
/* Backward after mfres_lin_forward on the same batch: grads += scale · ∇_W loss.
 * ∇_{W_ℓ} = G_ℓ H_{ℓ−1}ᵀ with G_L = Bᵀ R and G_{ℓ−1} = M_ℓᵀ G_ℓ: each prefix
 * and suffix product is formed once, so the cost is O(L m² n), not O(L² m² n). */
void mfres_lin_backward(mfres_lin_model *model, const double *X, int n, double scale);
/* The textbook formula Π_{L:ℓ+1}ᵀ Bᵀ R Xᵀ Aᵀ Π_{ℓ−1:1}ᵀ, every product recomputed
 * per layer: O(L² m³). The test oracle for mfres_lin_backward; grads += it. */
int mfres_lin_backward_naive(mfres_lin_model *model, const double *X, const double *Y, int n);
void mfres_lin_zero_grad(mfres_lin_model *model);
/* W ← W − η grads. */
void mfres_lin_update(mfres_lin_model *model, double eta);
/* End-to-end map B M_L···M_1 A (k×d). */
int mfres_lin_end_to_end(const mfres_lin_model *model, double *out);
/* Full-data loss and excess loss ½‖f(X) − Θ*X‖² (see mfres_lin_data). */
double mfres_lin_excess(mfres_lin_model *model, const mfres_lin_data *data, double *loss);

/* ---- what the theorem predicts ---- */

typedef struct mfres_lin_theory {
    double eta_unit;   /* 1 / (L ‖A‖² ‖B‖² ‖X‖²): the bound is η = c · eta_unit */
    double rate_pred;  /* 1 − η L σ_min²(A) σ_min²(B) σ_r²(X) / e for the given η */
    double cond_lhs;   /* σ_min²(A) σ_min²(B) / (‖A‖‖B‖) */
    double cond_rhs1;  /* ‖X‖ √(L(W⁰) − L*) / σ_r²(X) (the right side for C = 1) */
    double margin;     /* cond_lhs / cond_rhs1: the condition holds for every C ≤ margin */
} mfres_lin_theory;

void mfres_lin_theory_eval(mfres_lin_theory *th, const mfres_lin_transforms *tr, const mfres_lin_data *data, int L,
                           double eta, double excess0);

/* ---- training ---- */

typedef struct mfres_lin_train_cfg {
    int steps;
    double eta;
    int batch;             /* 0 or ≥ n: full-batch GD; else SGD on shuffled minibatches of this size */
    double stop_excess;    /* stop early once the excess loss ≤ this (0: run all steps) */
    double diverge_factor; /* stop as diverged once excess > this × initial (0: 1e6) or non-finite */
} mfres_lin_train_cfg;

typedef struct mfres_lin_result {
    int steps_run;
    int diverged;
    double excess0, excess; /* initial and final excess loss */
    double loss0, loss;
    int reached_step;       /* first step with excess ≤ stop_excess, or −1 */
    double seconds;
} mfres_lin_result;

/* Trains from the model's current weights. trace (may be NULL) receives the
 * full-data excess loss at steps 0..cfg->steps (entries past an early stop are
 * NaN). SGD's gradient on a batch of b samples is scaled by n/b so that it is an
 * unbiased estimate of the full gradient and the same η applies. */
int mfres_lin_train(mfres_lin_model *model, const mfres_lin_data *data, const mfres_lin_train_cfg *cfg,
                    mfres_rng *rng, double *trace, mfres_lin_result *res);

/* Contraction measured on a trace: the geometric mean of excess_{t+1}/excess_t
 * over the steps before the excess falls below floor_rel × excess_0 (where
 * rounding takes over), and the worst (largest) single-step ratio there. */
typedef struct mfres_lin_contraction {
    double rate_mean, rate_worst;
    int steps_used;
    int bound_held; /* excess_t ≤ rate_pred^t excess_0 for every t used */
} mfres_lin_contraction;
void mfres_lin_contraction_measure(mfres_lin_contraction *c, const double *trace, int steps, double floor_rel,
                                   double rate_pred);

/* ---- experiments (`mfres theory linear <name>`) ---- */

typedef struct mfres_lin_exp_cfg {
    mfres_lin_data_cfg data;
    const char *x_path, *y_path; /* data files instead of synthetic data (both or neither) */
    int transform;               /* enum mfres_lin_transform_kind */
    int width;                   /* m; 0: d + k for the identity, 4(d + k) for Gaussian */
    double a_scale, b_scale;
    const char *a_path, *b_path;
    int arch, init;
    double init_std; /* < 0: 1 for plain networks, 1/√L for ResNets */
    int depth;
    int batch;       /* 0: GD */
    double eta;      /* > 0: fixed step size; else eta_c × the bound */
    double eta_c;
    int steps;
    double eps;      /* target excess loss, relative to the initial one */
    double theorem_C;
    long depths[16];
    int n_depths;
    long kappas[16];
    int n_kappas;
    int max_width;
    uint64_t seed;
    const char *out_dir;
    FILE *table; /* the printed table (stdout in the CLI) */
} mfres_lin_exp_cfg;

/* Fills the defaults shared by every experiment; the CLI then overrides. */
void mfres_lin_exp_defaults(mfres_lin_exp_cfg *cfg, const char *experiment);

int mfres_lin_exp_run(const mfres_lin_exp_cfg *cfg);        /* one training run with every option */
int mfres_lin_exp_transforms(const mfres_lin_exp_cfg *cfg); /* (i) Gaussian vs modified identity */
int mfres_lin_exp_depth(const mfres_lin_exp_cfg *cfg);      /* (ii) L ∈ depths with η ∝ 1/L */
int mfres_lin_exp_rate(const mfres_lin_exp_cfg *cfg);       /* (iii) measured vs predicted contraction */
int mfres_lin_exp_width(const mfres_lin_exp_cfg *cfg);      /* (iv) smallest width vs κ */
int mfres_lin_exp_plain(const mfres_lin_exp_cfg *cfg);      /* (v) ResNet vs plain deep linear network */

#endif
