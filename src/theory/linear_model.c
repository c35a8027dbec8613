/* Deep linear ResNets (P3: Zou, Long, Gu, ICLR 2020, arXiv 2003.01094): data
 * with a known least-squares optimum, the fixed transforms A and B, the model's
 * forward and backward passes, and the GD / SGD training loop.
 *
 * Layout: every matrix is row-major. Activations for a batch of n samples are
 * stored m×n with leading dimension n inside a slot sized for n_max. */
#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mfres/io.h"
#include "mfres/theory_linear.h"

/* Singular values below this fraction of the largest count as zero: X's rank,
 * and the cut-off in the least-squares solve. Loose enough that a synthetic
 * rank-r X (whose "zero" singular values are ~1e-15 of the largest) gets rank r;
 * tight enough for κ = σ_1²/σ_r² up to 1e20. */
#define LIN_RCOND 1e-10

/* ---- small dense helpers ---- */

/* Singular values (descending) of a row-major rows×cols matrix. */
static int singular_values(const double *a, int rows, int cols, double *s) {
    int p = rows < cols ? rows : cols;
    double *work = malloc((size_t)rows * (size_t)cols * sizeof(double) + (size_t)p * sizeof(double));
    if (!work) return mfres_fail(MFRES_ENOMEM, "out of memory computing singular values of a %d×%d matrix", rows, cols);
    double *superb = work + (size_t)rows * (size_t)cols;
    memcpy(work, a, (size_t)rows * (size_t)cols * sizeof(double));
    lapack_int info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', rows, cols, work, cols, s, NULL, 1, NULL, 1, superb);
    free(work);
    if (info != 0) return mfres_fail(MFRES_EBACKEND, "LAPACK dgesvd failed on a %d×%d matrix (info %d)", rows, cols, (int)info);
    return MFRES_OK;
}

/* A rows×cols matrix with orthonormal columns (rows ≥ cols): QR of a Gaussian. */
static int random_orthonormal(double *q, int rows, int cols, mfres_rng *rng) {
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++) q[i] = mfres_rng_normal(rng);
    double *tau = malloc((size_t)cols * sizeof(double));
    if (!tau) return mfres_fail(MFRES_ENOMEM, "out of memory (QR of a %d×%d matrix)", rows, cols);
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, rows, cols, q, cols, tau);
    if (info == 0) info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, rows, cols, cols, q, cols, tau);
    free(tau);
    if (info != 0) return mfres_fail(MFRES_EBACKEND, "LAPACK QR failed on a %d×%d matrix (info %d)", rows, cols, (int)info);
    return MFRES_OK;
}

static double half_sq_diff(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double e = a[i] - b[i];
        s += e * e;
    }
    return 0.5 * s;
}

/* ---- data ---- */

void mfres_lin_data_free(mfres_lin_data *data) {
    mfres_free(data->X);
    mfres_free(data->Y);
    mfres_free(data->theta);
    mfres_free(data->pred_star);
    memset(data, 0, sizeof *data);
}

/* With X and Y in place: σ's, rank, Θ* by dgelsd, Θ*X and L*. */
static int data_solve(mfres_lin_data *data) {
    int d = data->d, k = data->k, n = data->n;
    int p = d < n ? d : n;
    int ldb_rows = n > d ? n : d;
    double *s = malloc((size_t)p * sizeof(double));
    double *xt = malloc((size_t)n * (size_t)d * sizeof(double));
    double *bt = calloc((size_t)ldb_rows * (size_t)k, sizeof(double));
    int rc = MFRES_OK;
    if (!s || !xt || !bt) {
        rc = mfres_fail(MFRES_ENOMEM, "out of memory solving the least-squares problem (d=%d, n=%d)", d, n);
        goto done;
    }
    rc = singular_values(data->X, d, n, s);
    if (rc) goto done;
    data->sigma_max = s[0];
    data->rank = 0;
    for (int i = 0; i < p; i++)
        if (s[i] > LIN_RCOND * s[0]) data->rank = i + 1;
    if (data->rank == 0) {
        rc = mfres_fail(MFRES_EINVAL, "X is zero (d=%d, n=%d): nothing to fit", d, n);
        goto done;
    }
    data->sigma_r = s[data->rank - 1];

    /* min ‖Xᵀ Θᵀ − Yᵀ‖: an n×d system with k right-hand sides. */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < n; j++) xt[(size_t)j * d + i] = data->X[(size_t)i * n + j];
    for (int i = 0; i < k; i++)
        for (int j = 0; j < n; j++) bt[(size_t)j * k + i] = data->Y[(size_t)i * n + j];
    lapack_int rank = 0;
    lapack_int info = LAPACKE_dgelsd(LAPACK_ROW_MAJOR, n, d, k, xt, d, bt, k, s, LIN_RCOND, &rank);
    if (info != 0) {
        rc = mfres_fail(MFRES_EBACKEND, "LAPACK dgelsd failed (info %d) on the %d×%d least-squares problem", (int)info,
                        n, d);
        goto done;
    }
    for (int i = 0; i < k; i++)
        for (int j = 0; j < d; j++) data->theta[(size_t)i * d + j] = bt[(size_t)j * k + i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, d, 1.0, data->theta, d, data->X, n, 0.0,
                data->pred_star, n);
    data->loss_star = half_sq_diff(data->pred_star, data->Y, (size_t)k * n);
done:
    free(s);
    free(xt);
    free(bt);
    return rc;
}

static int data_alloc(mfres_lin_data *data, int d, int k, int n) {
    memset(data, 0, sizeof *data);
    if (d < 1 || k < 1 || n < 1) return mfres_fail(MFRES_EINVAL, "data sizes must be positive (d=%d, k=%d, n=%d)", d, k, n);
    data->d = d;
    data->k = k;
    data->n = n;
    data->X = mfres_alloc((size_t)d * n * sizeof(double), "X");
    data->Y = mfres_alloc((size_t)k * n * sizeof(double), "Y");
    data->theta = mfres_alloc((size_t)k * d * sizeof(double), "Θ*");
    data->pred_star = mfres_alloc((size_t)k * n * sizeof(double), "Θ*X");
    if (!data->X || !data->Y || !data->theta || !data->pred_star) {
        mfres_lin_data_free(data);
        return MFRES_ENOMEM;
    }
    return MFRES_OK;
}

int mfres_lin_data_from(mfres_lin_data *data, const double *X, const double *Y, int d, int k, int n) {
    int rc = data_alloc(data, d, k, n);
    if (rc) return rc;
    memcpy(data->X, X, (size_t)d * n * sizeof(double));
    memcpy(data->Y, Y, (size_t)k * n * sizeof(double));
    for (size_t i = 0; i < (size_t)d * n; i++)
        if (!isfinite(X[i])) {
            mfres_lin_data_free(data);
            return mfres_fail(MFRES_ENUMERIC, "X has a non-finite entry (sample %zu, feature %zu)", i % (size_t)n,
                              i / (size_t)n);
        }
    for (size_t i = 0; i < (size_t)k * n; i++)
        if (!isfinite(Y[i])) {
            mfres_lin_data_free(data);
            return mfres_fail(MFRES_ENUMERIC, "Y has a non-finite entry (sample %zu, output %zu)", i % (size_t)n,
                              i / (size_t)n);
        }
    rc = data_solve(data);
    if (rc) mfres_lin_data_free(data);
    return rc;
}

int mfres_lin_data_synth(mfres_lin_data *data, const mfres_lin_data_cfg *cfg, mfres_rng *rng) {
    int d = cfg->d, k = cfg->k, n = cfg->n;
    int p = d < n ? d : n;
    int r = cfg->rank > 0 ? cfg->rank : p;
    if (r > p) return mfres_fail(MFRES_EINVAL, "rank %d exceeds min(d, n) = %d", r, p);
    if (!(cfg->kappa >= 1)) return mfres_fail(MFRES_EINVAL, "kappa must be ≥ 1, got %g", cfg->kappa);
    int rc = data_alloc(data, d, k, n);
    if (rc) return rc;
    double *U = malloc((size_t)d * r * sizeof(double));
    double *V = malloc((size_t)n * r * sizeof(double));
    double *T = malloc((size_t)k * d * sizeof(double));
    if (!U || !V || !T) {
        rc = mfres_fail(MFRES_ENOMEM, "out of memory generating data (d=%d, n=%d)", d, n);
        goto done;
    }
    /* Draw order is fixed (U, V, Θ, noise) so a seed means one data set. */
    if ((rc = random_orthonormal(U, d, r, rng)) || (rc = random_orthonormal(V, n, r, rng))) goto done;
    for (int j = 0; j < r; j++) {
        double s = sqrt((double)n) * (r > 1 ? pow(cfg->kappa, -0.5 * j / (r - 1)) : 1.0);
        for (int i = 0; i < d; i++) U[(size_t)i * r + j] *= s;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, n, r, 1.0, U, r, V, r, 0.0, data->X, n);
    double ts = cfg->target_scale / sqrt((double)d);
    for (size_t i = 0; i < (size_t)k * d; i++) T[i] = ts * mfres_rng_normal(rng);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, d, 1.0, T, d, data->X, n, 0.0, data->Y, n);
    if (cfg->noise > 0)
        for (size_t i = 0; i < (size_t)k * n; i++) data->Y[i] += cfg->noise * mfres_rng_normal(rng);
    rc = data_solve(data);
done:
    free(U);
    free(V);
    free(T);
    if (rc) mfres_lin_data_free(data);
    return rc;
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

/* Loads a matrix from .npy or .csv, chosen by the extension. */
static int load_matrix(const char *path, double **m, int *rows, int *cols) {
    int rc;
    if (has_suffix(path, ".npy"))
        rc = mfres_npy_load_f64(path, m, rows, cols);
    else if (has_suffix(path, ".csv") || has_suffix(path, ".txt"))
        rc = mfres_csv_load_f64(path, m, rows, cols);
    else
        return mfres_fail(MFRES_EINVAL, "%s: unknown matrix file type (expected .npy or .csv)", path);
    if (rc) return rc;
    for (size_t i = 0; i < (size_t)*rows * (size_t)*cols; i++)
        if (!isfinite((*m)[i])) {
            double v = (*m)[i];
            mfres_free(*m);
            *m = NULL;
            return mfres_fail(MFRES_ENUMERIC, "%s: entry (row %zu, column %zu) is %g; every entry must be finite", path,
                              i / (size_t)*cols + 1, i % (size_t)*cols + 1, v);
        }
    return MFRES_OK;
}

static void transpose(double *dst, const double *src, int rows, int cols) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
}

int mfres_lin_data_load(mfres_lin_data *data, const char *x_path, const char *y_path) {
    memset(data, 0, sizeof *data);
    double *xs = NULL, *ys = NULL, *X = NULL, *Y = NULL;
    int nx, d, ny, k;
    int rc = load_matrix(x_path, &xs, &nx, &d);
    if (!rc) rc = load_matrix(y_path, &ys, &ny, &k);
    if (rc) goto done;
    if (nx != ny) {
        rc = mfres_fail(MFRES_EFORMAT, "%s has %d rows (samples) but %s has %d; both hold one sample per row", x_path,
                        nx, y_path, ny);
        goto done;
    }
    X = malloc((size_t)d * nx * sizeof(double));
    Y = malloc((size_t)k * nx * sizeof(double));
    if (!X || !Y) {
        rc = mfres_fail(MFRES_ENOMEM, "out of memory loading %s", x_path);
        goto done;
    }
    transpose(X, xs, nx, d);
    transpose(Y, ys, nx, k);
    rc = mfres_lin_data_from(data, X, Y, d, k, nx);
    if (rc) mfres_fail_context(rc, "data from %s and %s", x_path, y_path);
done:
    mfres_free(xs);
    mfres_free(ys);
    free(X);
    free(Y);
    return rc;
}

/* ---- transforms ---- */

void mfres_lin_transforms_free(mfres_lin_transforms *tr) {
    mfres_free(tr->A);
    mfres_free(tr->B);
    memset(tr, 0, sizeof *tr);
}

static int transforms_alloc(mfres_lin_transforms *tr, int m, int d, int k, int kind) {
    memset(tr, 0, sizeof *tr);
    if (m < 1 || d < 1 || k < 1) return mfres_fail(MFRES_EINVAL, "transform sizes must be positive (m=%d, d=%d, k=%d)", m, d, k);
    tr->m = m;
    tr->d = d;
    tr->k = k;
    tr->kind = kind;
    tr->A = mfres_alloc((size_t)m * d * sizeof(double), "A");
    tr->B = mfres_alloc((size_t)k * m * sizeof(double), "B");
    if (!tr->A || !tr->B) {
        mfres_lin_transforms_free(tr);
        return MFRES_ENOMEM;
    }
    return MFRES_OK;
}

/* ‖·‖ and σ_min of A and B: the quantities the theorem is stated in. */
static int transforms_norms(mfres_lin_transforms *tr) {
    int m = tr->m, d = tr->d, k = tr->k;
    int p = m > d ? m : d;
    if (k > p) p = k;
    double *s = malloc((size_t)p * sizeof(double));
    if (!s) return mfres_fail(MFRES_ENOMEM, "out of memory (singular values of A, B)");
    int rc = singular_values(tr->A, m, d, s);
    if (!rc) {
        tr->a_norm = s[0];
        tr->a_sigma_min = s[(m < d ? m : d) - 1];
        rc = singular_values(tr->B, k, m, s);
    }
    if (!rc) {
        tr->b_norm = s[0];
        tr->b_sigma_min = s[(m < k ? m : k) - 1];
    }
    free(s);
    return rc;
}

int mfres_lin_transforms_gaussian(mfres_lin_transforms *tr, int m, int d, int k, double a_scale, double b_scale,
                                  mfres_rng *rng) {
    int rc = transforms_alloc(tr, m, d, k, MFRES_LIN_GAUSSIAN);
    if (rc) return rc;
    /* Variance 1/m for both: A (tall) and B (wide) are then near-isometries on
     * their d- and k-dimensional sides, σ ∈ 1 ± √(d/m) and 1 ± √(k/m). */
    double sa = a_scale / sqrt((double)m), sb = b_scale / sqrt((double)m);
    for (size_t i = 0; i < (size_t)m * d; i++) tr->A[i] = sa * mfres_rng_normal(rng);
    for (size_t i = 0; i < (size_t)k * m; i++) tr->B[i] = sb * mfres_rng_normal(rng);
    rc = transforms_norms(tr);
    if (rc) mfres_lin_transforms_free(tr);
    return rc;
}

int mfres_lin_transforms_identity(mfres_lin_transforms *tr, int m, int d, int k) {
    if (m < d + k)
        return mfres_fail(MFRES_EINVAL, "the modified identity transform needs width m ≥ d + k = %d, got %d", d + k, m);
    int rc = transforms_alloc(tr, m, d, k, MFRES_LIN_IDENTITY);
    if (rc) return rc;
    for (int i = 0; i < d; i++) tr->A[(size_t)i * d + i] = 1.0;             /* A = [I_d; 0] */
    for (int i = 0; i < k; i++) tr->B[(size_t)i * m + (m - k) + i] = 1.0;   /* B = [0, I_k] */
    tr->a_norm = tr->a_sigma_min = tr->b_norm = tr->b_sigma_min = 1.0;
    return MFRES_OK;
}

int mfres_lin_transforms_load(mfres_lin_transforms *tr, const char *a_path, const char *b_path) {
    memset(tr, 0, sizeof *tr);
    double *A = NULL, *B = NULL;
    int m, d, k, mb;
    int rc = load_matrix(a_path, &A, &m, &d);
    if (!rc) rc = load_matrix(b_path, &B, &k, &mb);
    if (!rc && mb != m)
        rc = mfres_fail(MFRES_EFORMAT, "%s is %d×%d (A is m×d) but %s is %d×%d: B must be k×m with m = %d", a_path, m, d,
                        b_path, k, mb, m);
    if (!rc) rc = transforms_alloc(tr, m, d, k, MFRES_LIN_FILE);
    if (!rc) {
        memcpy(tr->A, A, (size_t)m * d * sizeof(double));
        memcpy(tr->B, B, (size_t)k * m * sizeof(double));
        rc = transforms_norms(tr);
        if (rc) mfres_lin_transforms_free(tr);
    }
    mfres_free(A);
    mfres_free(B);
    return rc;
}

/* ---- model ---- */

int mfres_lin_model_init(mfres_lin_model *model, const mfres_lin_transforms *tr, int arch, int L, int n_max) {
    memset(model, 0, sizeof *model);
    if (L < 1 || n_max < 1) return mfres_fail(MFRES_EINVAL, "depth and batch size must be positive (L=%d, n=%d)", L, n_max);
    if (arch != MFRES_LIN_RESNET && arch != MFRES_LIN_PLAIN) return mfres_fail(MFRES_EINVAL, "unknown architecture %d", arch);
    int m = tr->m, d = tr->d, k = tr->k;
    model->arch = arch;
    model->L = L;
    model->m = m;
    model->d = d;
    model->k = k;
    model->n_max = n_max;
    model->tr = tr;
    size_t mm = (size_t)m * m, mn = (size_t)m * n_max;
    size_t n_params = (size_t)L * mm;
    size_t n_acts = (size_t)(L + 1) * mn + 2 * mn + 2 * (size_t)k * n_max + (size_t)d * n_max + (size_t)k * n_max;
    model->params = mfres_alloc(n_params * sizeof(double), "linear ResNet weights");
    model->grads = mfres_alloc(n_params * sizeof(double), "linear ResNet gradients");
    model->acts = mfres_alloc(n_acts * sizeof(double), "linear ResNet activations");
    if (!model->params || !model->grads || !model->acts) {
        mfres_lin_model_free(model);
        return MFRES_ENOMEM;
    }
    double *p = model->acts;
    model->H = p, p += (size_t)(L + 1) * mn;
    model->G = p, p += 2 * mn;
    model->out = p, p += (size_t)k * n_max;
    model->R = p, p += (size_t)k * n_max;
    model->Xb = p, p += (size_t)d * n_max;
    model->Yb = p;
    model->bytes = (2 * n_params + n_acts) * sizeof(double);
    mfres_log_debug("linear %s L=%d m=%d: allocated %.2f MiB (weights %.2f, gradients %.2f, activations %.2f)",
                    arch == MFRES_LIN_RESNET ? "ResNet" : "plain", L, m, model->bytes / 1048576.0,
                    n_params * 8 / 1048576.0, n_params * 8 / 1048576.0, n_acts * 8 / 1048576.0);
    return MFRES_OK;
}

void mfres_lin_model_free(mfres_lin_model *model) {
    mfres_free(model->params);
    mfres_free(model->grads);
    mfres_free(model->acts);
    memset(model, 0, sizeof *model);
}

void mfres_lin_model_init_weights(mfres_lin_model *model, int init, double std, mfres_rng *rng) {
    size_t n = (size_t)model->L * model->m * model->m;
    if (init == MFRES_LIN_INIT_ZERO) {
        memset(model->params, 0, n * sizeof(double));
        return;
    }
    double s = std / sqrt((double)model->m);
    for (size_t i = 0; i < n; i++) model->params[i] = s * mfres_rng_normal(rng);
}

/* dst (m×n) = M_ℓ src, or M_ℓᵀ src, for M_ℓ = I + W_ℓ or W_ℓ. */
static void apply_layer(const mfres_lin_model *model, const double *W, int transpose_w, const double *src, double *dst,
                        int n) {
    int m = model->m;
    double beta = 0.0;
    if (model->arch == MFRES_LIN_RESNET) { /* the identity path: dst = src, then += W src */
        memcpy(dst, src, (size_t)m * n * sizeof(double));
        beta = 1.0;
    }
    cblas_dgemm(CblasRowMajor, transpose_w ? CblasTrans : CblasNoTrans, CblasNoTrans, m, n, m, 1.0, W, m, src, n, beta,
                dst, n);
}

double mfres_lin_forward(mfres_lin_model *model, const double *X, const double *Y, int n) {
    int m = model->m, d = model->d, k = model->k, L = model->L;
    size_t mm = (size_t)m * m, slot = (size_t)m * model->n_max;
    const mfres_lin_transforms *tr = model->tr;
    /* H_0 = A X, H_ℓ = M_ℓ H_{ℓ−1}: every prefix product kept for backward. */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, d, 1.0, tr->A, d, X, n, 0.0, model->H, n);
    for (int l = 1; l <= L; l++)
        apply_layer(model, model->params + (size_t)(l - 1) * mm, 0, model->H + (size_t)(l - 1) * slot,
                    model->H + (size_t)l * slot, n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, m, 1.0, tr->B, m, model->H + (size_t)L * slot, n, 0.0,
                model->out, n);
    double loss = 0;
    for (size_t i = 0; i < (size_t)k * n; i++) {
        model->R[i] = model->out[i] - Y[i];
        loss += model->R[i] * model->R[i];
    }
    return 0.5 * loss;
}

void mfres_lin_backward(mfres_lin_model *model, const double *X, int n, double scale) {
    (void)X; /* X enters through H_0 = A X, cached by the forward pass */
    int m = model->m, k = model->k, L = model->L;
    size_t mm = (size_t)m * m, slot = (size_t)m * model->n_max;
    double *g = model->G, *g_next = model->G + slot;
    /* G_L = Bᵀ R; ∇W_ℓ = G_ℓ H_{ℓ−1}ᵀ; G_{ℓ−1} = M_ℓᵀ G_ℓ (the suffix product,
     * carried down one layer at a time). */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0, model->tr->B, m, model->R, n, 0.0, g, n);
    for (int l = L; l >= 1; l--) {
        const double *W = model->params + (size_t)(l - 1) * mm;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, n, scale, g, n, model->H + (size_t)(l - 1) * slot, n,
                    1.0, model->grads + (size_t)(l - 1) * mm, m);
        if (l > 1) {
            apply_layer(model, W, 1, g, g_next, n);
            double *t = g;
            g = g_next;
            g_next = t;
        }
    }
}

/* out (m×m) = M_ℓ as an explicit matrix. */
static void layer_matrix(const mfres_lin_model *model, int l, double *out) {
    int m = model->m;
    memcpy(out, model->params + (size_t)(l - 1) * m * m, (size_t)m * m * sizeof(double));
    if (model->arch == MFRES_LIN_RESNET)
        for (int i = 0; i < m; i++) out[(size_t)i * m + i] += 1.0;
}

int mfres_lin_backward_naive(mfres_lin_model *model, const double *X, const double *Y, int n) {
    int m = model->m, d = model->d, k = model->k, L = model->L;
    size_t mm = (size_t)m * m;
    double *buf = malloc((mm + (size_t)k * m * 2 + (size_t)m * d * 2 + (size_t)k * d * 2 + (size_t)k * n +
                          (size_t)m * d) *
                         sizeof(double));
    if (!buf) return mfres_fail(MFRES_ENOMEM, "out of memory in the naive linear backward pass");
    double *M = buf, *suf = M + mm, *suf2 = suf + (size_t)k * m, *pre = suf2 + (size_t)k * m,
           *pre2 = pre + (size_t)m * d, *e2e = pre2 + (size_t)m * d, *rxt = e2e + (size_t)k * d,
           *R = rxt + (size_t)k * d, *tmp = R + (size_t)k * n;
    int rc = mfres_lin_end_to_end(model, e2e);
    if (rc) goto done;
    /* R = B Π A X − Y, then R Xᵀ (k×d). */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, d, 1.0, e2e, d, X, n, 0.0, R, n);
    for (size_t i = 0; i < (size_t)k * n; i++) R[i] -= Y[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, d, n, 1.0, R, n, X, n, 0.0, rxt, d);
    for (int l = 1; l <= L; l++) {
        /* suffix B M_L···M_{ℓ+1} (k×m) and prefix M_{ℓ−1}···M_1 A (m×d), from scratch */
        memcpy(suf, model->tr->B, (size_t)k * m * sizeof(double));
        for (int j = L; j > l; j--) {
            layer_matrix(model, j, M);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, m, m, 1.0, suf, m, M, m, 0.0, suf2, m);
            memcpy(suf, suf2, (size_t)k * m * sizeof(double));
        }
        memcpy(pre, model->tr->A, (size_t)m * d * sizeof(double));
        for (int j = 1; j < l; j++) {
            layer_matrix(model, j, M);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, d, m, 1.0, M, m, pre, d, 0.0, pre2, d);
            memcpy(pre, pre2, (size_t)m * d * sizeof(double));
        }
        /* ∇W_ℓ = sufᵀ (R Xᵀ) preᵀ */
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, d, k, 1.0, suf, m, rxt, d, 0.0, tmp, d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, d, 1.0, tmp, d, pre, d, 1.0,
                    model->grads + (size_t)(l - 1) * mm, m);
    }
done:
    free(buf);
    return rc;
}

void mfres_lin_zero_grad(mfres_lin_model *model) {
    memset(model->grads, 0, (size_t)model->L * model->m * model->m * sizeof(double));
}

void mfres_lin_update(mfres_lin_model *model, double eta) {
    cblas_daxpy((int)((size_t)model->L * model->m * model->m), -eta, model->grads, 1, model->params, 1);
}

int mfres_lin_end_to_end(const mfres_lin_model *model, double *out) {
    int m = model->m, d = model->d, k = model->k;
    double *buf = malloc((size_t)2 * m * d * sizeof(double));
    if (!buf) return mfres_fail(MFRES_ENOMEM, "out of memory forming the end-to-end map");
    double *p = buf, *q = buf + (size_t)m * d;
    memcpy(p, model->tr->A, (size_t)m * d * sizeof(double));
    for (int l = 1; l <= model->L; l++) {
        apply_layer(model, model->params + (size_t)(l - 1) * m * m, 0, p, q, d);
        double *t = p;
        p = q;
        q = t;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, d, m, 1.0, model->tr->B, m, p, d, 0.0, out, d);
    free(buf);
    return MFRES_OK;
}

double mfres_lin_excess(mfres_lin_model *model, const mfres_lin_data *data, double *loss) {
    double l = mfres_lin_forward(model, data->X, data->Y, data->n);
    if (loss) *loss = l;
    return half_sq_diff(model->out, data->pred_star, (size_t)data->k * data->n);
}

/* ---- theory ---- */

void mfres_lin_theory_eval(mfres_lin_theory *th, const mfres_lin_transforms *tr, const mfres_lin_data *data, int L,
                           double eta, double excess0) {
    double a = tr->a_norm, b = tr->b_norm, x = data->sigma_max;
    double sa = tr->a_sigma_min, sb = tr->b_sigma_min, sr = data->sigma_r;
    th->eta_unit = 1.0 / ((double)L * a * a * b * b * x * x);
    th->rate_pred = 1.0 - eta * L * sa * sa * sb * sb * sr * sr / M_E;
    th->cond_lhs = sa * sa * sb * sb / (a * b);
    th->cond_rhs1 = x * sqrt(excess0 > 0 ? excess0 : 0) / (sr * sr);
    th->margin = th->cond_rhs1 > 0 ? th->cond_lhs / th->cond_rhs1 : INFINITY;
}

/* ---- training ---- */

int mfres_lin_train(mfres_lin_model *model, const mfres_lin_data *data, const mfres_lin_train_cfg *cfg,
                    mfres_rng *rng, double *trace, mfres_lin_result *res) {
    memset(res, 0, sizeof *res);
    res->reached_step = -1;
    int n = data->n, d = data->d, k = data->k;
    if (model->n_max < n)
        return mfres_fail(MFRES_EINVAL, "model sized for %d samples, data has %d", model->n_max, n);
    if (data->d != model->d || data->k != model->k)
        return mfres_fail(MFRES_EINVAL, "data is d=%d, k=%d but the transforms are for d=%d, k=%d", d, k, model->d,
                          model->k);
    if (!(cfg->eta > 0) || cfg->steps < 0) return mfres_fail(MFRES_EINVAL, "need η > 0 and steps ≥ 0 (η=%g)", cfg->eta);
    int sgd = cfg->batch > 0 && cfg->batch < n;
    int b = sgd ? cfg->batch : n;
    double grad_scale = sgd ? (double)n / b : 1.0;
    double diverge = cfg->diverge_factor > 0 ? cfg->diverge_factor : 1e6;
    uint32_t *perm = NULL;
    if (sgd) {
        perm = malloc((size_t)n * sizeof(uint32_t));
        if (!perm) return mfres_fail(MFRES_ENOMEM, "out of memory (SGD permutation of %d samples)", n);
        for (int i = 0; i < n; i++) perm[i] = (uint32_t)i;
    }
    if (trace)
        for (int t = 0; t <= cfg->steps; t++) trace[t] = NAN;
    int pos = n; /* forces a shuffle before the first minibatch */
    double t0 = mfres_now();
    for (int t = 0;; t++) {
        /* For GD the full forward pass serves both the trace and the gradient. */
        double loss = mfres_lin_forward(model, data->X, data->Y, n);
        double ex = half_sq_diff(model->out, data->pred_star, (size_t)k * n);
        if (t == 0) {
            res->excess0 = ex;
            res->loss0 = loss;
        }
        res->excess = ex;
        res->loss = loss;
        res->steps_run = t;
        if (trace) trace[t] = ex;
        if (!isfinite(ex) || !isfinite(loss) || ex > diverge * (res->excess0 > 0 ? res->excess0 : 1)) {
            res->diverged = 1;
            break;
        }
        if (cfg->stop_excess > 0 && ex <= cfg->stop_excess) {
            res->reached_step = t;
            break;
        }
        if (t == cfg->steps) break;
        mfres_lin_zero_grad(model);
        if (!sgd) {
            mfres_lin_backward(model, data->X, n, 1.0);
        } else {
            if (pos + b > n) {
                mfres_rng_shuffle_u32(rng, perm, (size_t)n);
                pos = 0;
            }
            for (int i = 0; i < d; i++)
                for (int j = 0; j < b; j++) model->Xb[(size_t)i * b + j] = data->X[(size_t)i * n + perm[pos + j]];
            for (int i = 0; i < k; i++)
                for (int j = 0; j < b; j++) model->Yb[(size_t)i * b + j] = data->Y[(size_t)i * n + perm[pos + j]];
            pos += b;
            mfres_lin_forward(model, model->Xb, model->Yb, b);
            mfres_lin_backward(model, model->Xb, b, grad_scale);
        }
        mfres_lin_update(model, cfg->eta);
    }
    res->seconds = mfres_now() - t0;
    free(perm);
    return MFRES_OK;
}

void mfres_lin_contraction_measure(mfres_lin_contraction *c, const double *trace, int steps, double floor_rel,
                                   double rate_pred) {
    memset(c, 0, sizeof *c);
    c->bound_held = 1;
    c->rate_worst = 0;
    double e0 = trace[0], sum_log = 0;
    if (!(e0 > 0) || !isfinite(e0)) {
        c->rate_mean = c->rate_worst = NAN;
        return;
    }
    double floor = floor_rel * e0;
    int t = 0;
    for (; t < steps; t++) {
        double a = trace[t], b = trace[t + 1];
        if (!isfinite(b)) { /* the run blew up inside the window: nothing held */
            c->bound_held = 0;
            break;
        }
        if (!(a > floor) || !(b > floor)) break;
        double r = b / a;
        sum_log += log(r);
        if (r > c->rate_worst) c->rate_worst = r;
        /* A relative slack of 1e-9 keeps rounding in the products out of the verdict. */
        if (b > pow(rate_pred, t + 1) * e0 * (1 + 1e-9)) c->bound_held = 0;
    }
    c->steps_used = t;
    c->rate_mean = t > 0 ? exp(sum_log / t) : NAN;
    if (t == 0) c->rate_worst = NAN;
}
