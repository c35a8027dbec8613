/* The particle mean-field ResNet (P1 §1–2, P2 §2; DIGEST §1, §2, §4): model,
 * forward, backprop through the solver, continuous adjoint, the two-layer
 * ensemble expansion. Training and data are in particle_train.c.
 *
 * Batched products go through CBLAS (row-major dgemm); a block's M particles are
 * one matrix (neuron units: W = rows w_m, U = rows u_m, both at stride P in θ;
 * matrix units: the M Θ_m stacked into an (M·d)×d matrix). */
#include "mfres/theory_particle.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenBLAS (pthread build) extensions: the sample chunks already use every core, so BLAS calls
 * inside them must stay on one thread. Declared here like src/train/train.c does. */
int openblas_get_num_threads(void);
void openblas_set_num_threads(int num_threads);

/* glibc >= 2.35 ships vector tanh, exp and log1p in libmvec (pulled in by -lm): declaring them
 * "simd" lets `#pragma omp simd` loops call them (≤ 4 ulp), which is most of a tanh, softplus or
 * sigmoid network's time otherwise. exp and log1p may set errno, which keeps GCC from vectorising
 * their calls unless they are also declared const; nothing in this file reads errno. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#pragma omp declare simd notinbranch
extern double tanh(double);
#pragma omp declare simd notinbranch
extern double exp(double) __attribute__((const));
#pragma omp declare simd notinbranch
extern double log1p(double) __attribute__((const));
#endif

/* ---------------- activations ---------------- */

static const char *const act_names[] = {"relu", "relu-reg", "softplus", "tanh", "sigmoid"};
static const char *const unit_names[] = {"neuron", "neuron-nobias", "matrix"};

const char *mfres_act_name(int act) { return act >= 0 && act < 5 ? act_names[act] : "?"; }
int mfres_act_by_name(const char *name) {
    for (int i = 0; i < 5; i++)
        if (name && !strcmp(name, act_names[i])) return i;
    return -1;
}
const char *mfres_unit_name(int unit) { return unit >= 0 && unit < 3 ? unit_names[unit] : "?"; }
int mfres_unit_by_name(const char *name) {
    for (int i = 0; i < 3; i++)
        if (name && !strcmp(name, unit_names[i])) return i;
    return -1;
}

static inline double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static inline double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

double mfres_act_apply(int act, double eps, double x) {
    switch (act) {
    case MFRES_ACT_RELU: return x > 0 ? x : 0;
    case MFRES_ACT_RELU_REG: return x <= -eps ? 0 : x >= eps ? x : (x + eps) * (x + eps) / (4 * eps);
    case MFRES_ACT_SOFTPLUS: return softplus(x);
    case MFRES_ACT_TANH: return tanh(x);
    case MFRES_ACT_SIGMOID: return sigmoid(x);
    }
    return NAN;
}

double mfres_act_deriv(int act, double eps, double x) {
    switch (act) {
    case MFRES_ACT_RELU: return x > 0 ? 1 : 0;
    case MFRES_ACT_RELU_REG: return x <= -eps ? 0 : x >= eps ? 1 : (x + eps) / (2 * eps);
    case MFRES_ACT_SOFTPLUS: return sigmoid(x);
    case MFRES_ACT_TANH: {
        double t = tanh(x);
        return 1 - t * t;
    }
    case MFRES_ACT_SIGMOID: {
        double s = sigmoid(x);
        return s * (1 - s);
    }
    }
    return NAN;
}

/* A[i] = σ(Z[i]); one loop per activation so the compiler can vectorise. The formulas are those of
 * mfres_act_apply written without branches (softplus(x) = max(x, 0) + log1p(e^{−|x|}); the sigmoid
 * divides by 1 + e^{−|x|}). */
static void act_forward(int act, double eps, const double *Z, double *A, size_t count) {
    switch (act) {
    case MFRES_ACT_RELU:
#pragma omp simd
        for (size_t i = 0; i < count; i++) A[i] = Z[i] > 0 ? Z[i] : 0.0;
        break;
    case MFRES_ACT_RELU_REG: {
        const double q = 1.0 / (4 * eps);
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            const double z = Z[i], t = z + eps;
            A[i] = z <= -eps ? 0.0 : z >= eps ? z : t * t * q;
        }
        break;
    }
    case MFRES_ACT_SOFTPLUS:
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            const double z = Z[i];
            A[i] = (z > 0 ? z : 0.0) + log1p(exp(-fabs(z)));
        }
        break;
    case MFRES_ACT_TANH:
#pragma omp simd
        for (size_t i = 0; i < count; i++) A[i] = tanh(Z[i]);
        break;
    case MFRES_ACT_SIGMOID:
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            const double z = Z[i], e = exp(-fabs(z)), r = 1.0 / (1.0 + e);
            A[i] = z >= 0 ? r : e * r;
        }
        break;
    default:
        for (size_t i = 0; i < count; i++) A[i] = mfres_act_apply(act, eps, Z[i]);
    }
}

/* G[i] *= σ'(Z[i]), using A = σ(Z) where that is cheaper. */
static void act_deriv_mul(int act, double eps, const double *Z, const double *A, double *G, size_t count) {
    switch (act) {
    case MFRES_ACT_RELU:
#pragma omp simd
        for (size_t i = 0; i < count; i++) G[i] *= (double)(Z[i] > 0);
        break;
    case MFRES_ACT_RELU_REG: {
        const double q = 1.0 / (2 * eps);
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            const double z = Z[i];
            G[i] *= z <= -eps ? 0.0 : z >= eps ? 1.0 : (z + eps) * q;
        }
        break;
    }
    case MFRES_ACT_SOFTPLUS: /* σ' is the sigmoid */
#pragma omp simd
        for (size_t i = 0; i < count; i++) {
            const double z = Z[i], e = exp(-fabs(z)), r = 1.0 / (1.0 + e);
            G[i] *= z >= 0 ? r : e * r;
        }
        break;
    case MFRES_ACT_TANH:
#pragma omp simd
        for (size_t i = 0; i < count; i++) G[i] *= 1 - A[i] * A[i];
        break;
    case MFRES_ACT_SIGMOID:
#pragma omp simd
        for (size_t i = 0; i < count; i++) G[i] *= A[i] * (1 - A[i]);
        break;
    default:
        for (size_t i = 0; i < count; i++) G[i] *= mfres_act_deriv(act, eps, Z[i]);
    }
}

/* ---------------- model ---------------- */

void mfres_pnet_config_default(mfres_pnet_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->d_in = 4;
    cfg->d = 4;
    cfg->k = 1;
    cfg->L = 8;
    cfg->M = 16;
    cfg->unit = MFRES_UNIT_NEURON;
    cfg->act = MFRES_ACT_TANH;
    cfg->act_eps = 0.1;
    cfg->init_scale = 1.0;
    cfg->head_seed = 1;
}

static int unit_params(int unit, int d) {
    switch (unit) {
    case MFRES_UNIT_NEURON: return 2 * d + 1;
    case MFRES_UNIT_NEURON_NOBIAS: return 2 * d;
    case MFRES_UNIT_MATRIX: return d * d;
    }
    return -1;
}

/* Width of the pre-activation matrix Z per sample: M (neurons) or M·d (matrix units). */
static int zwidth(const mfres_pnet *net) {
    return net->cfg.unit == MFRES_UNIT_MATRIX ? net->cfg.M * net->cfg.d : net->cfg.M;
}

size_t mfres_pnet_num_theta(const mfres_pnet *net) {
    return (size_t)net->cfg.L * (size_t)net->cfg.M * (size_t)net->P;
}

/* Orthonormalises the columns (rows if rows < cols) of a rows×cols matrix by Gram–Schmidt. */
static void orthonormalise(double *A, int rows, int cols) {
    int by_cols = rows >= cols;
    int nv = by_cols ? cols : rows, len = by_cols ? rows : cols;
    size_t sv = by_cols ? 1 : (size_t)cols, se = by_cols ? (size_t)cols : 1; /* vector / element strides */
    for (int a = 0; a < nv; a++) {
        for (int pass = 0; pass < 2; pass++)
            for (int b = 0; b < a; b++) {
                double dot = 0;
                for (int e = 0; e < len; e++) dot += A[a * sv + e * se] * A[b * sv + e * se];
                for (int e = 0; e < len; e++) A[a * sv + e * se] -= dot * A[b * sv + e * se];
            }
        double nrm = 0;
        for (int e = 0; e < len; e++) nrm += A[a * sv + e * se] * A[a * sv + e * se];
        nrm = sqrt(nrm);
        for (int e = 0; e < len; e++) A[a * sv + e * se] /= nrm > 0 ? nrm : 1;
    }
}

int mfres_pnet_init(mfres_pnet *net, const mfres_pnet_config *cfg, mfres_rng *rng) {
    memset(net, 0, sizeof *net);
    if (cfg->d_in < 1 || cfg->d < 1 || cfg->k < 1 || cfg->L < 1 || cfg->M < 1)
        return mfres_fail(MFRES_EINVAL, "pnet: sizes must be >= 1 (d_in %d, d %d, k %d, L %d, M %d)", cfg->d_in,
                          cfg->d, cfg->k, cfg->L, cfg->M);
    if (cfg->act < 0 || cfg->act > 4) return mfres_fail(MFRES_EINVAL, "pnet: unknown activation %d", cfg->act);
    int P = unit_params(cfg->unit, cfg->d);
    if (P < 0) return mfres_fail(MFRES_EINVAL, "pnet: unknown unit %d", cfg->unit);
    if (cfg->act == MFRES_ACT_RELU_REG && !(cfg->act_eps > 0))
        return mfres_fail(MFRES_EINVAL, "pnet: relu-reg needs eps > 0, got %g", cfg->act_eps);
    net->cfg = *cfg;
    net->P = P;
    const int d = cfg->d, L = cfg->L, M = cfg->M;
    size_t nth = (size_t)L * M * P;
    size_t total = nth + (size_t)L + (size_t)d * cfg->d_in + (size_t)cfg->k * d;
    double *buf = mfres_alloc(total * sizeof(double), "pnet parameters");
    if (!buf) return MFRES_ENOMEM;
    net->theta = buf;
    net->tau = buf + nth;
    net->W2 = net->tau + L;
    net->W1 = net->W2 + (size_t)d * cfg->d_in;
    const double s = cfg->init_scale;
    for (size_t i = 0; i < (size_t)L * M; i++) {
        double *th = net->theta + i * P;
        if (cfg->unit == MFRES_UNIT_MATRIX) {
            for (int q = 0; q < d * d; q++) th[q] = s * mfres_rng_normal(rng) / sqrt((double)d);
        } else {
            for (int q = 0; q < d; q++) th[q] = s * mfres_rng_normal(rng);
            for (int q = 0; q < d; q++) th[d + q] = s * mfres_rng_normal(rng) / sqrt((double)d);
            if (cfg->unit == MFRES_UNIT_NEURON) th[2 * d] = 0.5 * s * mfres_rng_normal(rng);
        }
    }
    for (int l = 0; l < L; l++) net->tau[l] = (double)(l + 1) / L;
    mfres_rng head;
    mfres_rng_seed(&head, cfg->head_seed ^ 0x6865616473656564ull);
    rng = &head;
    if (d == cfg->d_in) {
        for (int i = 0; i < d; i++) net->W2[i * d + i] = 1.0;
    } else {
        for (int i = 0; i < d * cfg->d_in; i++) net->W2[i] = mfres_rng_normal(rng);
        orthonormalise(net->W2, d, cfg->d_in);
    }
    for (int r = 0; r < cfg->k; r++) {
        double nrm = 0, *w = net->W1 + (size_t)r * d;
        for (int q = 0; q < d; q++) {
            w[q] = mfres_rng_normal(rng);
            nrm += w[q] * w[q];
        }
        for (int q = 0; q < d; q++) w[q] /= sqrt(nrm);
    }
    return MFRES_OK;
}

void mfres_pnet_free(mfres_pnet *net) {
    if (!net) return;
    mfres_free(net->theta);
    memset(net, 0, sizeof *net);
}

long mfres_pnet_sort(mfres_pnet *net) {
    const int L = net->cfg.L;
    const size_t blk = (size_t)net->cfg.M * net->P;
    long inv = 0;
    for (int i = 0; i < L; i++)
        for (int j = i + 1; j < L; j++) inv += net->tau[j] < net->tau[i];
    if (inv == 0) return 0;
    double *tmp = malloc(blk * sizeof(double));
    /* Insertion sort: stable, and it performs exactly `inv` adjacent swaps. */
    for (int i = 1; i < L; i++) {
        int j = i;
        double t = net->tau[i];
        if (!(t < net->tau[i - 1])) continue;
        if (tmp) memcpy(tmp, net->theta + (size_t)i * blk, blk * sizeof(double));
        while (j > 0 && t < net->tau[j - 1]) {
            net->tau[j] = net->tau[j - 1];
            if (tmp) memcpy(net->theta + (size_t)j * blk, net->theta + (size_t)(j - 1) * blk, blk * sizeof(double));
            j--;
        }
        net->tau[j] = t;
        if (tmp) memcpy(net->theta + (size_t)j * blk, tmp, blk * sizeof(double));
    }
    if (!tmp) return -1; /* out of memory: τ sorted without θ would be wrong; caller must fail */
    free(tmp);
    return inv;
}

/* ---------------- a block's field and its reverse mode ---------------- */

enum { BIAS_TILE = 256 };

/* Z (n×M, row stride ldz) += 1 bᵀ with b_m = b[m·P]: the biases sit at stride P in θ, so they are
 * gathered into a contiguous tile first and the row loop vectorises. */
static void add_bias(double *restrict Z, int ldz, const double *restrict b, int P, int n, int M) {
    double tile[BIAS_TILE];
    for (int m0 = 0; m0 < M; m0 += BIAS_TILE) {
        const int mc = M - m0 < BIAS_TILE ? M - m0 : BIAS_TILE;
        for (int m = 0; m < mc; m++) tile[m] = b[(size_t)(m0 + m) * P];
        for (int i = 0; i < n; i++) {
            double *restrict Zi = Z + (size_t)i * ldz + m0;
#pragma omp simd
            for (int m = 0; m < mc; m++) Zi[m] += tile[m];
        }
    }
}

/* gb[m·P] = beta·gb[m·P] + Σ_i G[i, m] (G: n×M, row stride ldg; beta 0 or 1): column sums in a
 * contiguous tile, then scattered. */
static void add_colsum(double *restrict gb, int P, const double *restrict G, int ldg, int n, int M, double beta) {
    double tile[BIAS_TILE];
    for (int m0 = 0; m0 < M; m0 += BIAS_TILE) {
        const int mc = M - m0 < BIAS_TILE ? M - m0 : BIAS_TILE;
        for (int m = 0; m < mc; m++) tile[m] = 0.0;
        for (int i = 0; i < n; i++) {
            const double *restrict Gi = G + (size_t)i * ldg + m0;
#pragma omp simd
            for (int m = 0; m < mc; m++) tile[m] += Gi[m];
        }
        for (int m = 0; m < mc; m++) {
            double *o = gb + (size_t)(m0 + m) * P;
            *o = beta != 0.0 ? *o + tile[m] : tile[m];
        }
    }
}

void mfres_pnet_field(const mfres_pnet *net, int layer, const double *X, int n, double *F, double *Z, double *A) {
    const int d = net->cfg.d, M = net->cfg.M, P = net->P;
    const double *th = net->theta + (size_t)layer * M * P;
    const double eps = net->cfg.act_eps;
    if (net->cfg.unit == MFRES_UNIT_MATRIX) {
        const int W = M * d;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, W, d, 1.0, X, d, th, d, 0.0, Z, W);
        act_forward(net->cfg.act, eps, Z, A, (size_t)n * W);
        const double inv = 1.0 / M;
        for (int i = 0; i < n; i++) {
            double *Fi = F + (size_t)i * d;
            const double *Ai = A + (size_t)i * W;
            for (int j = 0; j < d; j++) Fi[j] = 0;
            for (int m = 0; m < M; m++)
                for (int j = 0; j < d; j++) Fi[j] += Ai[m * d + j];
            for (int j = 0; j < d; j++) Fi[j] *= inv;
        }
        return;
    }
    /* neurons: Z = X Wᵀ + 1 bᵀ, A = σ(Z), F = (1/M) A U */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, M, d, 1.0, X, d, th + d, P, 0.0, Z, M);
    if (net->cfg.unit == MFRES_UNIT_NEURON) add_bias(Z, M, th + 2 * d, P, n, M);
    act_forward(net->cfg.act, eps, Z, A, (size_t)n * M);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, M, 1.0 / M, A, M, th, P, 0.0, F, d);
}

enum {
    VJP_CACHED = 1, /* Z and A already hold the forward values at X */
    VJP_ADD_GX = 2, /* gX += … instead of gX = … (gX may then be G itself: G is read before gX is written) */
    VJP_SET_GTH = 4 /* gth = … instead of gth += … (every entry of the block is written) */
};

/* Reverse mode with cotangent alpha·G: gX = alpha G ∂F/∂X, gth (M×P, may be NULL) += alpha G ∂F/∂θ,
 * both modified by flags (VJP_*). */
static void field_vjp(const mfres_pnet *net, int layer, const double *X, int n, double alpha, const double *G,
                      double *gX, double *gth, double *Z, double *A, double *gA, int flags) {
    const int d = net->cfg.d, M = net->cfg.M, P = net->P;
    const int cached = flags & VJP_CACHED;
    const double gX_beta = flags & VJP_ADD_GX ? 1.0 : 0.0, gth_beta = flags & VJP_SET_GTH ? 0.0 : 1.0;
    const double *th = net->theta + (size_t)layer * M * P;
    const double eps = net->cfg.act_eps;
    const double c = alpha / M;
    if (net->cfg.unit == MFRES_UNIT_MATRIX) {
        const int W = M * d;
        if (!cached) {
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, W, d, 1.0, X, d, th, d, 0.0, Z, W);
            act_forward(net->cfg.act, eps, Z, A, (size_t)n * W);
        }
        for (int i = 0; i < n; i++)
            for (int m = 0; m < M; m++)
                for (int j = 0; j < d; j++) gA[(size_t)i * W + m * d + j] = c * G[(size_t)i * d + j];
        act_deriv_mul(net->cfg.act, eps, Z, A, gA, (size_t)n * W);
        if (gth) cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, W, d, n, 1.0, gA, W, X, d, gth_beta, gth, d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, W, 1.0, gA, W, th, d, gX_beta, gX, d);
        return;
    }
    if (!cached) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, M, d, 1.0, X, d, th + d, P, 0.0, Z, M);
        if (net->cfg.unit == MFRES_UNIT_NEURON) add_bias(Z, M, th + 2 * d, P, n, M);
        act_forward(net->cfg.act, eps, Z, A, (size_t)n * M);
    }
    /* gU += c Aᵀ G; gA = c G Uᵀ ⊙ σ'(Z); gW += gAᵀ X; gb += Σ_i gA; gX = gA W */
    if (gth) cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, d, n, c, A, M, G, d, gth_beta, gth, P);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, M, d, c, G, d, th, P, 0.0, gA, M);
    act_deriv_mul(net->cfg.act, eps, Z, A, gA, (size_t)n * M);
    if (gth) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, d, n, 1.0, gA, M, X, d, gth_beta, gth + d, P);
        if (net->cfg.unit == MFRES_UNIT_NEURON) add_colsum(gth + 2 * d, P, gA, M, n, M, gth_beta);
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, M, 1.0, gA, M, th + d, P, gX_beta, gX, d);
}

void mfres_pnet_field_vjp(const mfres_pnet *net, int layer, const double *X, int n, const double *G, double *gX,
                          double *gtheta_blk, double *Z, double *A, double *gA) {
    field_vjp(net, layer, X, n, 1.0, G, gX, gtheta_blk, Z, A, gA, 0);
}

/* ---------------- work space ---------------- */

enum { MIN_CHUNK_ROWS = 64 }; /* below this a chunk's dgemms are too small to pay for a thread */

static int default_chunks(int n) {
    int t = 1;
#ifdef _OPENMP
    t = omp_get_max_threads();
#endif
    int cap = n / MIN_CHUNK_ROWS;
    if (t > cap) t = cap;
    return t < 1 ? 1 : t;
}

/* Rows [i0, i1) of chunk c of n rows split into `chunks`. */
static void chunk_rows(int n, int chunks, int c, int *i0, int *i1) {
    *i0 = (int)((long long)n * c / chunks);
    *i1 = (int)((long long)n * (c + 1) / chunks);
}

/* While the chunks run on several threads OpenBLAS stays on one; returns the count to restore. */
static int blas_single_begin(int chunks) {
    if (chunks < 2) return 0;
    int t = openblas_get_num_threads();
    if (t > 1) openblas_set_num_threads(1);
    return t;
}
static void blas_single_end(int saved) {
    if (saved > 1) openblas_set_num_threads(saved);
}

int mfres_pnet_work_alloc(mfres_pnet_work *w, const mfres_pnet *net, int n, const mfres_ode_step_type *method,
                          int substeps) {
    memset(w, 0, sizeof *w);
    if (n < 1 || substeps < 1 || !method)
        return mfres_fail(MFRES_EINVAL, "pnet work: need n >= 1, substeps >= 1 and a method (n %d, s %d)", n,
                          substeps);
    const size_t d = net->cfg.d, L = net->cfg.L, M = net->cfg.M, P = net->P, k = net->cfg.k;
    const size_t nd = (size_t)n * d, zw = (size_t)n * zwidth(net);
    const int fast = method == mfres_ode_euler && substeps == 1;
    size_t nz = fast ? L * zw : zw; /* Euler, one step per block: keep every block's Z and A */
    size_t total = (L + 1) * nd + (substeps > 1 ? (size_t)(substeps + 1) * nd : 0) + nd + (size_t)n * k + 2 * nz +
                   zw + (2 * nd + M * P) + M * P + (fast ? L * nd : 0);
    double *buf = mfres_alloc(total * sizeof(double), "pnet work");
    if (!buf) return MFRES_ENOMEM;
    w->n = n;
    w->substeps = substeps;
    w->method = method;
    w->bytes = total * sizeof(double);
    double *p = buf;
    w->Xs = p, p += (L + 1) * nd;
    w->Xsub = substeps > 1 ? p : NULL, p += substeps > 1 ? (size_t)(substeps + 1) * nd : 0;
    w->g = p, p += nd;
    w->out = p, p += (size_t)n * k;
    w->Z = p, p += nz;
    w->A = p, p += nz;
    w->gA = p, p += zw;
    w->aug = p, p += 2 * nd + M * P;
    w->gtheta_blk = p, p += M * P;
    w->Fc = fast ? p : NULL, p += fast ? L * nd : 0;
    int rc = mfres_ode_step_alloc(&w->step, method, nd);
    if (!rc) rc = mfres_ode_step_alloc(&w->step_aug, method, 2 * nd + M * P);
    if (!rc) {
        int chunks = mfres_pnet_work_set_chunks(w, net, default_chunks(n));
        rc = chunks < 0 ? chunks : MFRES_OK;
    }
    if (rc) {
        mfres_free(buf);
        mfres_ode_step_free(&w->step);
        mfres_ode_step_free(&w->step_aug);
        memset(w, 0, sizeof *w);
        return rc;
    }
    return MFRES_OK;
}

static size_t part_doubles(const mfres_pnet *net, int chunks) {
    return (size_t)(chunks > 1 ? chunks : 0) * mfres_pnet_num_theta(net) + (size_t)chunks * (net->cfg.L + 1);
}

int mfres_pnet_work_set_chunks(mfres_pnet_work *w, const mfres_pnet *net, int chunks) {
    if (!w->Xs || chunks < 1)
        return mfres_fail(MFRES_EINVAL, "pnet work: need an allocated work space and chunks >= 1 (got %d)", chunks);
    if (!(w->method == mfres_ode_euler && w->substeps == 1)) chunks = 1;
    if (chunks > w->n) chunks = w->n;
    double *part = mfres_alloc(part_doubles(net, chunks) * sizeof(double), "pnet chunk partial gradients");
    if (!part) return MFRES_ENOMEM;
    if (w->part) w->bytes -= part_doubles(net, w->chunks) * sizeof(double);
    mfres_free(w->part);
    w->part = part;
    w->chunks = chunks;
    w->bytes += part_doubles(net, chunks) * sizeof(double);
    return chunks;
}

void mfres_pnet_work_free(mfres_pnet_work *w) {
    if (!w) return;
    mfres_free(w->Xs);
    mfres_free(w->part);
    mfres_ode_step_free(&w->step);
    mfres_ode_step_free(&w->step_aug);
    memset(w, 0, sizeof *w);
}

static int check_work(const mfres_pnet_work *w, int n) {
    if (!w->Xs || n != w->n)
        return mfres_fail(MFRES_EINVAL, "pnet: work space is for n = %d samples, called with %d", w->n, n);
    return MFRES_OK;
}

static int all_finite(const double *a, size_t count) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < count; i++) s += a[i] * 0.0;
    return s == 0.0;
}

/* ---------------- ODE systems for one block ---------------- */

typedef struct block_ctx {
    const mfres_pnet *net;
    mfres_pnet_work *w;
    int layer, n;
    double *gth; /* (optional) parameter cotangents accumulate here */
} block_ctx;

static int block_rhs(double t, const double *y, double *dydt, void *params) {
    (void)t;
    block_ctx *c = params;
    mfres_pnet_field(c->net, c->layer, y, c->n, dydt, c->w->Z, c->w->A);
    if (!all_finite(dydt, (size_t)c->n * c->net->cfg.d))
        return mfres_fail(MFRES_ENUMERIC, "pnet: non-finite field in block %d (try a smaller lr or init scale)",
                          c->layer);
    return MFRES_OK;
}

static int block_vjp(double t, const double *y, const double *v, double *vJ, void *params) {
    (void)t;
    block_ctx *c = params;
    field_vjp(c->net, c->layer, y, c->n, 1.0, v, vJ, c->gth, c->w->Z, c->w->A, c->w->gA, 0);
    return MFRES_OK;
}

/* The continuous adjoint of one block, y = [X | p | G], integrated backwards in t:
 * dX/dt = F(X), dp/dt = −p ∂F/∂X, dG/dt = −p ∂F/∂θ (G(τ_ℓ) = 0 ⇒ G(τ_{ℓ−1}) = ∫ p ∂F/∂θ dt). */
static int block_aug_rhs(double t, const double *y, double *dydt, void *params) {
    (void)t;
    block_ctx *c = params;
    const mfres_pnet *net = c->net;
    const size_t nd = (size_t)c->n * net->cfg.d, mp = (size_t)net->cfg.M * net->P;
    mfres_pnet_field(net, c->layer, y, c->n, dydt, c->w->Z, c->w->A);
    memset(dydt + 2 * nd, 0, mp * sizeof(double));
    field_vjp(net, c->layer, y, c->n, -1.0, y + nd, dydt + nd, dydt + 2 * nd, c->w->Z, c->w->A, c->w->gA,
              VJP_CACHED);
    if (!all_finite(dydt, 2 * nd))
        return mfres_fail(MFRES_ENUMERIC, "pnet adjoint: non-finite state in block %d", c->layer);
    return MFRES_OK;
}

static double block_h(const mfres_pnet *net, int l) { return net->tau[l] - (l > 0 ? net->tau[l - 1] : 0.0); }

static double dot(const double *a, const double *b, size_t count) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < count; i++) s += a[i] * b[i];
    return s;
}

/* ---------------- the ResNet path: Euler, one step per block, rows [i0, i1) ---------------- */

/* Embedding, the L ResNet steps and the read-out for rows [i0, i1) of n, keeping Z, A (for backward)
 * and F (for ∂E/∂h) of every block. Returns L, or the first block whose field is not finite. */
static int resnet_forward_rows(const mfres_pnet *net, mfres_pnet_work *w, const double *x, int n, int i0, int i1) {
    const int d = net->cfg.d, din = net->cfg.d_in, L = net->cfg.L, zwd = zwidth(net), rows = i1 - i0;
    const size_t nd = (size_t)n * d, zw = (size_t)n * zwd, rd = (size_t)rows * d;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, d, din, 1.0, x + (size_t)i0 * din, din, net->W2, din,
                0.0, w->Xs + (size_t)i0 * d, d);
    for (int l = 0; l < L; l++) {
        const double *X0 = w->Xs + (size_t)l * nd + (size_t)i0 * d;
        double *X1 = w->Xs + (size_t)(l + 1) * nd + (size_t)i0 * d;
        double *F = w->Fc + (size_t)l * nd + (size_t)i0 * d;
        mfres_pnet_field(net, l, X0, rows, F, w->Z + (size_t)l * zw + (size_t)i0 * zwd,
                         w->A + (size_t)l * zw + (size_t)i0 * zwd);
        const double h = block_h(net, l);
        double nonfinite = 0;
#pragma omp simd reduction(+ : nonfinite)
        for (size_t q = 0; q < rd; q++) {
            X1[q] = X0[q] + h * F[q];
            nonfinite += F[q] * 0.0; /* NaN iff some F is not finite */
        }
        if (nonfinite != 0.0) return l;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, net->cfg.k, d, 1.0,
                w->Xs + (size_t)L * nd + (size_t)i0 * d, d, net->W1, d, 0.0, w->out + (size_t)i0 * net->cfg.k,
                net->cfg.k);
    return L;
}

/* Σ ½|out − y|² over rows [i0, i1) (not yet divided by n); with seed, also g = ∂E/∂X_L = (1/n) R W1
 * on those rows (R = out − y). */
static double loss_rows(const mfres_pnet *net, mfres_pnet_work *w, const double *y, int n, int i0, int i1,
                        int seed) {
    const int k = net->cfg.k, d = net->cfg.d;
    const size_t cnt = (size_t)(i1 - i0) * k;
    double *out = w->out + (size_t)i0 * k;
    const double *yr = y + (size_t)i0 * k;
    double E = 0;
    for (size_t i = 0; i < cnt; i++) {
        double r = out[i] - yr[i];
        E += 0.5 * r * r;
    }
    if (seed) {
        /* R = out − y kept in out */
        for (size_t i = 0; i < cnt; i++) out[i] -= yr[i];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, d, k, 1.0 / n, out, k, net->W1, d, 0.0,
                    w->g + (size_t)i0 * d, d);
        for (size_t i = 0; i < cnt; i++) out[i] += yr[i];
    }
    return E;
}

/* Backprop through the L ResNet steps for rows [i0, i1): X1 = X0 + h F(X0) gives ∂E/∂h = g·F (into a,
 * if not NULL), g ← g + h g ∂F/∂X, gtheta (if not NULL) += h g ∂F/∂θ, or = with VJP_SET_GTH in flags. */
static void resnet_backward_rows(const mfres_pnet *net, mfres_pnet_work *w, int n, int i0, int i1, double *gtheta,
                                 double *a, int flags) {
    const int d = net->cfg.d, L = net->cfg.L, M = net->cfg.M, P = net->P, zwd = zwidth(net), rows = i1 - i0;
    const size_t nd = (size_t)n * d, zw = (size_t)n * zwd;
    double *g = w->g + (size_t)i0 * d, *gA = w->gA + (size_t)i0 * zwd;
    for (int l = L - 1; l >= 0; l--) {
        const double *X0 = w->Xs + (size_t)l * nd + (size_t)i0 * d;
        const double *F = w->Fc + (size_t)l * nd + (size_t)i0 * d; /* cached by the forward pass */
        if (a) a[l] = dot(g, F, (size_t)rows * d);
        field_vjp(net, l, X0, rows, block_h(net, l), g, g, gtheta ? gtheta + (size_t)l * M * P : NULL,
                  w->Z + (size_t)l * zw + (size_t)i0 * zwd, w->A + (size_t)l * zw + (size_t)i0 * zwd, gA,
                  flags | VJP_CACHED | VJP_ADD_GX);
    }
}

static int resnet_forward(const mfres_pnet *net, mfres_pnet_work *w, const double *x, int n) {
    const int T = w->chunks, L = net->cfg.L;
    int bad = L;
    const int saved = blas_single_begin(T);
#pragma omp parallel for num_threads(T) if (T > 1) schedule(static, 1) reduction(min : bad)
    for (int c = 0; c < T; c++) {
        int i0, i1;
        chunk_rows(n, T, c, &i0, &i1);
        int b = resnet_forward_rows(net, w, x, n, i0, i1);
        if (b < bad) bad = b;
    }
    blas_single_end(saved);
    if (bad < L) return mfres_fail(MFRES_ENUMERIC, "pnet: non-finite field in block %d (try a smaller lr)", bad);
    return MFRES_OK;
}

/* Loss and gradients on the ResNet path in one parallel region: each chunk runs forward, its part of
 * the loss and backward with no synchronisation. One chunk accumulates straight into gtheta; with
 * more, chunk c writes its own partial θ-gradient (part + c·L·M·P) and, once every chunk has
 * finished and the loss is finite, the partials are added to gtheta in chunk order (so gtheta is
 * untouched on failure, and the sums depend on the chunk count only). a (∂E/∂h, may be NULL) and
 * the loss are summed over chunks in chunk order too. */
static int resnet_loss_grad(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y, int n,
                            double *loss, double *gtheta, double *a) {
    const int T = w->chunks, L = net->cfg.L;
    const size_t nth = mfres_pnet_num_theta(net);
    double *apart = w->part + (size_t)(T > 1 ? T : 0) * nth; /* T × L */
    double *Epart = apart + (size_t)T * L;                      /* T */
    int bad = L;
    const int saved = blas_single_begin(T);
#pragma omp parallel num_threads(T) if (T > 1)
    {
#pragma omp for schedule(static, 1) reduction(min : bad)
        for (int c = 0; c < T; c++) {
            int i0, i1;
            chunk_rows(n, T, c, &i0, &i1);
            Epart[c] = 0;
            int b = resnet_forward_rows(net, w, x, n, i0, i1);
            if (b < L) {
                if (b < bad) bad = b;
                continue;
            }
            Epart[c] = loss_rows(net, w, y, n, i0, i1, 1);
            if (!isfinite(Epart[c])) continue;
            double *gth = !gtheta ? NULL : T == 1 ? gtheta : w->part + (size_t)c * nth;
            resnet_backward_rows(net, w, n, i0, i1, gth, a ? apart + (size_t)c * L : NULL, T > 1 ? VJP_SET_GTH : 0);
        }
        /* After the loop's barrier every thread sees the same bad and Epart: all or none take the loop. */
        double Esum = 0;
        for (int c = 0; c < T; c++) Esum += Epart[c];
        if (T > 1 && gtheta && bad == L && isfinite(Esum)) {
#pragma omp for schedule(static)
            for (size_t q = 0; q < nth; q++) {
                double v = gtheta[q];
                for (int c = 0; c < T; c++) v += w->part[(size_t)c * nth + q];
                gtheta[q] = v;
            }
        }
    }
    blas_single_end(saved);
    if (bad < L) return mfres_fail(MFRES_ENUMERIC, "pnet: non-finite field in block %d (try a smaller lr)", bad);
    double E = 0;
    for (int c = 0; c < T; c++) E += Epart[c];
    E /= n;
    if (!isfinite(E)) return mfres_fail(MFRES_ENUMERIC, "pnet: the loss is %g (try a smaller lr)", E);
    if (loss) *loss = E;
    if (a)
        for (int l = 0; l < L; l++) {
            double v = 0;
            for (int c = 0; c < T; c++) v += apart[(size_t)c * L + l];
            a[l] = v;
        }
    return MFRES_OK;
}

/* ---------------- forward ---------------- */

static int forward_impl(const mfres_pnet *net, mfres_pnet_work *w, const double *x, int n) {
    const int d = net->cfg.d, L = net->cfg.L, s = w->substeps;
    const size_t nd = (size_t)n * d;
    if (w->method == mfres_ode_euler && s == 1) return resnet_forward(net, w, x, n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, net->cfg.d_in, 1.0, x, net->cfg.d_in, net->W2,
                net->cfg.d_in, 0.0, w->Xs, d);
    for (int l = 0; l < L; l++) {
        double *X0 = w->Xs + (size_t)l * nd, *X1 = X0 + nd;
        double h = block_h(net, l);
        memcpy(X1, X0, nd * sizeof(double));
        block_ctx ctx = {net, w, l, n, NULL};
        mfres_ode_system sys = {block_rhs, block_vjp, nd, &ctx};
        double t0 = l > 0 ? net->tau[l - 1] : 0.0;
        int rc = mfres_ode_evolve_fixed(&w->step, &sys, t0, t0 + h, s, X1);
        if (rc) return rc;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, net->cfg.k, d, 1.0, w->Xs + (size_t)L * nd, d, net->W1,
                d, 0.0, w->out, net->cfg.k);
    return MFRES_OK;
}

int mfres_pnet_forward(const mfres_pnet *net, mfres_pnet_work *w, const double *x, int n, double *out) {
    int rc = check_work(w, n);
    if (rc) return rc;
    rc = forward_impl(net, w, x, n);
    if (rc) return rc;
    if (out) memcpy(out, w->out, (size_t)n * net->cfg.k * sizeof(double));
    return MFRES_OK;
}

/* E = (1/n) Σ ½|out − y|²; with seed, w->g = ∂E/∂X_L = (1/n) R W1. */
static double loss_and_seed(const mfres_pnet *net, mfres_pnet_work *w, const double *y, int n, int seed) {
    return loss_rows(net, w, y, n, 0, n, seed) / n;
}

int mfres_pnet_loss(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y, int n,
                    double *loss) {
    int rc = mfres_pnet_forward(net, w, x, n, NULL);
    if (rc) return rc;
    *loss = loss_and_seed(net, w, y, n, 0);
    if (!isfinite(*loss)) return mfres_fail(MFRES_ENUMERIC, "pnet: the loss is %g", *loss);
    return MFRES_OK;
}

/* ---------------- gradients ---------------- */

/* Backprop through the discrete scheme (the method's reverse mode, sub-step by sub-step).
 * a (∂E/∂h per block) may be NULL when the τ-gradient is not wanted. */
static int backprop(const mfres_pnet *net, mfres_pnet_work *w, int n, double *gtheta, double *a) {
    const int d = net->cfg.d, L = net->cfg.L, M = net->cfg.M, P = net->P, s = w->substeps;
    const size_t nd = (size_t)n * d;
    for (int l = L - 1; l >= 0; l--) {
        double h = block_h(net, l), hs = h / s;
        double t0 = l > 0 ? net->tau[l - 1] : 0.0;
        double *X0 = w->Xs + (size_t)l * nd;
        double *gth = gtheta ? gtheta + (size_t)l * M * P : NULL;
        block_ctx ctx = {net, w, l, n, gth};
        mfres_ode_system sys = {block_rhs, block_vjp, nd, &ctx};
        /* Recompute the sub-step states of this block from its stored start. */
        const double *Y = X0;
        if (s > 1) {
            memcpy(w->Xsub, X0, nd * sizeof(double));
            for (int j = 0; j < s - 1; j++) {
                memcpy(w->Xsub + (size_t)(j + 1) * nd, w->Xsub + (size_t)j * nd, nd * sizeof(double));
                int rc = mfres_ode_step_apply(&w->step, t0 + j * hs, hs, w->Xsub + (size_t)(j + 1) * nd, &sys);
                if (rc) return rc;
            }
            Y = w->Xsub;
        }
        double gh = 0;
        for (int j = s - 1; j >= 0; j--) {
            int rc = mfres_ode_step_vjp(&w->step, t0 + j * hs, hs, Y + (size_t)j * nd, w->g, w->g, &gh, &sys);
            if (rc) return rc;
        }
        if (a) a[l] = gh / s; /* each sub-step is h/s */
    }
    return MFRES_OK;
}

/* The continuous adjoint, block by block backwards; X restarts from the stored forward state
 * at each block end (checkpointing), p and ∂θ are carried. a[ℓ] = p(τ_ℓ)·F_ℓ(X(τ_ℓ)). */
static int adjoint(const mfres_pnet *net, mfres_pnet_work *w, int n, double *gtheta, double *a, double *pnorm,
                   double *tgrid) {
    const int d = net->cfg.d, L = net->cfg.L, M = net->cfg.M, P = net->P, s = w->substeps;
    const size_t nd = (size_t)n * d, mp = (size_t)M * P;
    double *y = w->aug;
    memcpy(y + nd, w->g, nd * sizeof(double));
    for (int l = L - 1; l >= 0; l--) {
        double h = block_h(net, l), hs = h / s;
        double t0 = l > 0 ? net->tau[l - 1] : 0.0;
        memcpy(y, w->Xs + (size_t)(l + 1) * nd, nd * sizeof(double));
        memset(y + 2 * nd, 0, mp * sizeof(double));
        /* a_ℓ: F_ℓ at the block's end into Xsub-free scratch (the step's tmp has room for n·d) */
        double *F = w->step.tmp;
        mfres_pnet_field(net, l, y, n, F, w->Z, w->A);
        a[l] = dot(y + nd, F, nd);
        block_ctx ctx = {net, w, l, n, NULL};
        mfres_ode_system sys = {block_aug_rhs, NULL, 2 * nd + mp, &ctx};
        for (int j = s; j >= 1; j--) {
            if (pnorm) pnorm[(size_t)l * s + j] = sqrt((double)n * dot(y + nd, y + nd, nd));
            if (tgrid) tgrid[(size_t)l * s + j] = t0 + j * hs;
            int rc = mfres_ode_step_apply(&w->step_aug, t0 + j * hs, -hs, y, &sys);
            if (rc) return mfres_fail_context(rc, "adjoint, block %d", l);
        }
        if (gtheta) {
            double *gth = gtheta + (size_t)l * mp;
            for (size_t q = 0; q < mp; q++) gth[q] += y[2 * nd + q];
        }
    }
    if (pnorm) pnorm[0] = sqrt((double)n * dot(y + nd, y + nd, nd));
    if (tgrid) tgrid[0] = 0.0;
    return MFRES_OK;
}

int mfres_pnet_loss_grad(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y, int n,
                         int mode, double *loss, double *gtheta, double *gtau, double *pnorm, double *tgrid) {
    int rc = check_work(w, n);
    if (rc) return rc;
    if (mode != MFRES_GRAD_ADJOINT && mode != MFRES_GRAD_BACKPROP)
        return mfres_fail(MFRES_EINVAL, "pnet: unknown gradient mode %d", mode);
    const int L = net->cfg.L;
    double a_stack[256];
    double *a = L <= 256 ? a_stack : malloc((size_t)L * sizeof(double));
    if (!a) return mfres_fail(MFRES_ENOMEM, "pnet: out of memory for %d block sensitivities", L);
    if (mode == MFRES_GRAD_BACKPROP && w->method == mfres_ode_euler && w->substeps == 1) {
        rc = resnet_loss_grad(net, w, x, y, n, loss, gtheta, gtau ? a : NULL); /* the ResNet, in chunks */
    } else {
        rc = forward_impl(net, w, x, n);
        double E = rc ? 0.0 : loss_and_seed(net, w, y, n, 1);
        if (!rc && !isfinite(E)) rc = mfres_fail(MFRES_ENUMERIC, "pnet: the loss is %g (try a smaller lr)", E);
        if (!rc && loss) *loss = E;
        if (!rc && mode == MFRES_GRAD_ADJOINT) rc = adjoint(net, w, n, gtheta, a, pnorm, tgrid);
        if (!rc && mode == MFRES_GRAD_BACKPROP) rc = backprop(net, w, n, gtheta, gtau ? a : NULL);
    }
    /* h_ℓ = τ_ℓ − τ_{ℓ−1} ⇒ ∂E/∂τ_ℓ = a_ℓ − a_{ℓ+1}, ∂E/∂τ_{L−1} = a_{L−1} (DIGEST §2). */
    if (!rc && gtau)
        for (int l = 0; l < L; l++) gtau[l] += a[l] - (l + 1 < L ? a[l + 1] : 0.0);
    if (a != a_stack) free(a);
    return rc;
}

int mfres_pnet_ensemble_loss_grad(const mfres_pnet *net, mfres_pnet_work *w, const double *x, const double *y,
                                  int n, double *out, double *loss, double *gtheta) {
    int rc = check_work(w, n);
    if (rc) return rc;
    const int d = net->cfg.d, L = net->cfg.L, M = net->cfg.M, P = net->P, k = net->cfg.k;
    const size_t nd = (size_t)n * d;
    double *X0 = w->Xs, *XL = w->Xs + nd, *F = w->Xs + 2 * nd; /* needs L >= 1: (L+1)·nd >= 2nd; F below */
    if (L < 2) F = w->aug;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, net->cfg.d_in, 1.0, x, net->cfg.d_in, net->W2,
                net->cfg.d_in, 0.0, X0, d);
    memcpy(XL, X0, nd * sizeof(double));
    for (int l = 0; l < L; l++) {
        mfres_pnet_field(net, l, X0, n, F, w->Z, w->A);
        double h = block_h(net, l);
        for (size_t q = 0; q < nd; q++) XL[q] += h * F[q];
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, k, d, 1.0, XL, d, net->W1, d, 0.0, w->out, k);
    double E = loss_and_seed(net, w, y, n, 1);
    if (!isfinite(E)) return mfres_fail(MFRES_ENUMERIC, "pnet ensemble: the loss is %g", E);
    if (loss) *loss = E;
    if (out) memcpy(out, w->out, (size_t)n * k * sizeof(double));
    if (gtheta)
        for (int l = 0; l < L; l++)
            field_vjp(net, l, X0, n, block_h(net, l), w->g, F, gtheta + (size_t)l * M * P, w->Z, w->A, w->gA, 0);
    return MFRES_OK;
}
