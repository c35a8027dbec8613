/* Particle gradient descent for the mean-field ResNet, on the mean-field time
 * scale (P2: each particle's step is multiplied by L·M, so that runs of every size
 * share one training-time axis s = steps · lr), optionally with P1's Algorithm 1
 * (trainable τ, clamped, blocks re-sorted after every step); and the data sources. */
#include <math.h>
#include <string.h>

#include "mfres/io.h"
#include "mfres/theory_particle.h"

void mfres_pnet_train_config_default(mfres_pnet_train_config *tc) {
    memset(tc, 0, sizeof *tc);
    tc->lr = 0.5;
    tc->batch = 0;
    tc->train_tau = 0;
    tc->tau_lr_mult = 1.0;
    tc->tau_max = 1.0;
    tc->grad_mode = MFRES_GRAD_BACKPROP;
}

int mfres_pnet_trainer_init(mfres_pnet_trainer *t, const mfres_pnet *net, const mfres_pnet_train_config *tc, int n,
                            const mfres_ode_step_type *method, int substeps) {
    memset(t, 0, sizeof *t);
    if (n < 1) return mfres_fail(MFRES_EINVAL, "trainer: no samples");
    if (!(tc->lr > 0)) return mfres_fail(MFRES_EINVAL, "trainer: lr must be > 0, got %g", tc->lr);
    if (tc->batch < 0 || tc->batch > n)
        return mfres_fail(MFRES_EINVAL, "trainer: batch %d not in [0, n = %d]", tc->batch, n);
    t->tc = *tc;
    t->n = n;
    int nb = tc->batch > 0 ? tc->batch : n;
    int rc = mfres_pnet_work_alloc(&t->w, net, nb, method, substeps);
    if (rc) return rc;
    size_t nth = mfres_pnet_num_theta(net);
    size_t total = nth + (size_t)net->cfg.L + (size_t)nb * (net->cfg.d_in + net->cfg.k);
    double *buf = mfres_alloc(total * sizeof(double), "trainer gradients");
    t->perm = mfres_alloc((size_t)n * sizeof(uint32_t), "trainer permutation");
    if (!buf || !t->perm) {
        mfres_free(buf);
        mfres_pnet_trainer_free(t);
        return MFRES_ENOMEM;
    }
    t->gtheta = buf;
    t->gtau = buf + nth;
    t->xb = t->gtau + net->cfg.L;
    t->yb = t->xb + (size_t)nb * net->cfg.d_in;
    for (int i = 0; i < n; i++) t->perm[i] = (uint32_t)i;
    return MFRES_OK;
}

void mfres_pnet_trainer_free(mfres_pnet_trainer *t) {
    if (!t) return;
    mfres_pnet_work_free(&t->w);
    mfres_free(t->gtheta);
    mfres_free(t->perm);
    memset(t, 0, sizeof *t);
}

int mfres_pnet_train_step(mfres_pnet *net, mfres_pnet_trainer *t, const double *x, const double *y, mfres_rng *rng,
                          double *loss, long *inversions) {
    const int L = net->cfg.L, M = net->cfg.M, din = net->cfg.d_in, k = net->cfg.k;
    const double *xb = x, *yb = y;
    int nb = t->n;
    if (t->tc.batch > 0 && t->tc.batch < t->n) {
        /* A uniform minibatch without replacement: a partial Fisher–Yates shuffle of perm. */
        nb = t->tc.batch;
        for (int i = 0; i < nb; i++) {
            uint32_t j = (uint32_t)i + mfres_rng_below(rng, (uint32_t)(t->n - i));
            uint32_t tmp = t->perm[i];
            t->perm[i] = t->perm[j];
            t->perm[j] = tmp;
            memcpy(t->xb + (size_t)i * din, x + (size_t)t->perm[i] * din, (size_t)din * sizeof(double));
            memcpy(t->yb + (size_t)i * k, y + (size_t)t->perm[i] * k, (size_t)k * sizeof(double));
        }
        xb = t->xb;
        yb = t->yb;
    }
    size_t nth = mfres_pnet_num_theta(net);
    memset(t->gtheta, 0, nth * sizeof(double));
    memset(t->gtau, 0, (size_t)L * sizeof(double));
    double E = 0;
    int rc = mfres_pnet_loss_grad(net, &t->w, xb, yb, nb, t->tc.grad_mode, &E, t->gtheta,
                                  t->tc.train_tau ? t->gtau : NULL, NULL, NULL);
    if (rc) return rc;
    if (loss) *loss = E;
    const double step = t->tc.lr * (double)L * (double)M;
    for (size_t i = 0; i < nth; i++) net->theta[i] -= step * t->gtheta[i];
    long inv = 0;
    if (t->tc.train_tau) {
        const double ts = t->tc.lr * t->tc.tau_lr_mult * (double)L;
        for (int l = 0; l < L; l++) {
            double v = net->tau[l] - ts * t->gtau[l];
            net->tau[l] = v < 0 ? 0 : v > t->tc.tau_max ? t->tc.tau_max : v;
        }
        inv = mfres_pnet_sort(net);
        if (inv < 0) return mfres_fail(MFRES_ENOMEM, "trainer: out of memory while sorting the blocks");
    }
    if (inversions) *inversions = inv;
    return MFRES_OK;
}

/* ---------------- data ---------------- */

void mfres_pdata_free(mfres_pdata *D) {
    if (!D) return;
    mfres_free(D->x);
    mfres_free(D->y);
    memset(D, 0, sizeof *D);
}

static int pdata_alloc(mfres_pdata *D, int n, int d_in, int k) {
    memset(D, 0, sizeof *D);
    D->x = mfres_alloc((size_t)n * d_in * sizeof(double), "data inputs");
    D->y = mfres_alloc((size_t)n * k * sizeof(double), "data labels");
    if (!D->x || !D->y) {
        mfres_pdata_free(D);
        return MFRES_ENOMEM;
    }
    D->n = n;
    D->d_in = d_in;
    D->k = k;
    return MFRES_OK;
}

int mfres_pdata_synth(mfres_pdata *D, int kind, int n, int d_in, int k, mfres_rng *rng) {
    if (n < 1 || d_in < 1 || k < 1)
        return mfres_fail(MFRES_EINVAL, "data: need n, d_in, k >= 1 (got %d, %d, %d)", n, d_in, k);
    int rc = pdata_alloc(D, n, d_in, k);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        double *xi = D->x + (size_t)i * d_in, nrm = 0;
        for (int j = 0; j < d_in; j++) {
            xi[j] = mfres_rng_normal(rng);
            nrm += xi[j] * xi[j];
        }
        for (int j = 0; j < d_in; j++) xi[j] *= sqrt((double)d_in / nrm);
    }
    if (kind == MFRES_PDATA_RANDOM) {
        for (size_t i = 0; i < (size_t)n * k; i++) D->y[i] = mfres_rng_normal(rng);
    } else if (kind == MFRES_PDATA_TEACHER) {
        enum { J = 8 };
        double v[J * 64], a[J * 16];
        if (d_in > 64 || k > 16) {
            mfres_pdata_free(D);
            return mfres_fail(MFRES_EINVAL, "data: the two-layer teacher supports d_in <= 64, k <= 16");
        }
        for (int j = 0; j < J * d_in; j++) v[j] = mfres_rng_normal(rng) * sqrt(2.0 / d_in);
        for (int j = 0; j < J * k; j++) a[j] = mfres_rng_normal(rng);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < k; c++) {
                double s = 0;
                for (int j = 0; j < J; j++) {
                    double z = 0;
                    for (int q = 0; q < d_in; q++) z += v[j * d_in + q] * D->x[(size_t)i * d_in + q];
                    s += a[j * k + c] * tanh(z);
                }
                D->y[(size_t)i * k + c] = s / sqrt((double)J);
            }
    } else if (kind == MFRES_PDATA_TEACHER_RESNET) {
        mfres_pnet_config cfg;
        mfres_pnet_config_default(&cfg);
        cfg.d_in = cfg.d = d_in;
        cfg.k = k;
        cfg.L = 2;
        cfg.M = 4;
        cfg.act = MFRES_ACT_TANH;
        cfg.init_scale = 2.0;
        mfres_pnet teacher;
        mfres_pnet_work w;
        rc = mfres_pnet_init(&teacher, &cfg, rng);
        if (!rc) {
            rc = mfres_pnet_work_alloc(&w, &teacher, n, mfres_ode_rk4, 8);
            if (!rc) {
                rc = mfres_pnet_forward(&teacher, &w, D->x, n, D->y);
                mfres_pnet_work_free(&w);
            }
            mfres_pnet_free(&teacher);
        }
        if (rc) {
            mfres_pdata_free(D);
            return mfres_fail_context(rc, "teacher ResNet");
        }
    } else {
        mfres_pdata_free(D);
        return mfres_fail(MFRES_EINVAL, "data: unknown synthetic kind %d", kind);
    }
    return MFRES_OK;
}

int mfres_pdata_load(mfres_pdata *D, const char *path, int k) {
    memset(D, 0, sizeof *D);
    size_t len = strlen(path);
    int is_npy = len > 4 && !strcmp(path + len - 4, ".npy");
    int is_csv = len > 4 && !strcmp(path + len - 4, ".csv");
    if (!is_npy && !is_csv)
        return mfres_fail(MFRES_EINVAL, "data: %s: expected a .npy or .csv file (rows: inputs then %d label columns)",
                          path, k);
    double *m = NULL;
    int rows = 0, cols = 0;
    int rc = is_npy ? mfres_npy_load_f64(path, &m, &rows, &cols) : mfres_csv_load_f64(path, &m, &rows, &cols);
    if (rc) return mfres_fail_context(rc, "loading data %s", path);
    if (cols <= k || rows < 1) {
        mfres_free(m);
        return mfres_fail(MFRES_EFORMAT,
                          "data: %s has %d rows × %d columns; need at least %d columns (inputs, then %d labels)",
                          path, rows, cols, k + 1, k);
    }
    rc = pdata_alloc(D, rows, cols - k, k);
    if (rc) {
        mfres_free(m);
        return rc;
    }
    for (int i = 0; i < rows; i++) {
        memcpy(D->x + (size_t)i * (cols - k), m + (size_t)i * cols, (size_t)(cols - k) * sizeof(double));
        memcpy(D->y + (size_t)i * k, m + (size_t)i * cols + cols - k, (size_t)k * sizeof(double));
    }
    mfres_free(m);
    int bad = 0;
    for (size_t i = 0; i < (size_t)rows * (cols - k); i++) bad |= !isfinite(D->x[i]);
    for (size_t i = 0; i < (size_t)rows * k; i++) bad |= !isfinite(D->y[i]);
    if (bad) {
            mfres_pdata_free(D);
            return mfres_fail(MFRES_ENUMERIC, "data: %s contains NaN or infinity", path);
        }
    return MFRES_OK;
}
