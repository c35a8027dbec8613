/* Sync-BN (nn_bn_sync, src/nn/batchnorm.c) without MPI: two threads play two
 * ranks, each with its own nn_ctx and batch norm over one half of a batch,
 * and sum through an allreduce built on a barrier. Together they must give
 * the double-precision reference batch norm over the whole batch
 * (src/nn/ref.c): outputs, input gradients, parameter gradients summed over
 * the ranks, running statistics. Without the hook the halves normalise alone
 * and the same comparison fails, which the last test checks. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn.h"
#include "nn/ref.h"
#include "testutil.h"

enum { RANKS = 2, N_RANK = 3, C = 32, H = 5, W = 6, HW = H * W };
enum { N_ALL = RANKS * N_RANK };

typedef struct comm {
    pthread_barrier_t barrier;
    double *slot[RANKS];
} comm;

typedef struct rank_job {
    comm *comm;
    int rank;
    bool sync, relu, statistics_only; /* statistics_only: nn_batchnorm_train_statistics (the bn_residual path) */
    const double *x, *dy, *gamma, *beta; /* whole batch, NCHW */
    /* outputs, this rank's half (NCHW) and its parameter gradients / statistics */
    double *y, *dx, dgamma[C], dbeta[C], mean[C], var[C], running_mean[C], running_var[C];
    int rc;
} rank_job;

/* x <- the sum over ranks, in rank order, on every rank. */
static int barrier_allreduce(double *x, size_t n, void *arg) {
    rank_job *job = arg;
    comm *c = job->comm;
    c->slot[job->rank] = x;
    pthread_barrier_wait(&c->barrier);
    double *sum = malloc(n * sizeof *sum);
    for (size_t i = 0; i < n; i++) {
        sum[i] = 0;
        for (int r = 0; r < RANKS; r++) sum[i] += c->slot[r][i];
    }
    pthread_barrier_wait(&c->barrier); /* everyone has read every slot */
    memcpy(x, sum, n * sizeof *sum);
    free(sum);
    return 0;
}

static size_t blocked_index(int n, int c, int p, int B) { return (((size_t)n * (C / B) + c / B) * HW + p) * B + c % B; }

static void *run_rank(void *arg) {
    rank_job *job = arg;
    nn_ctx ctx;
    if ((job->rc = nn_ctx_init(&ctx))) return NULL;
    if (job->sync) ctx.bn_sync = (nn_bn_sync){.allreduce_sum = barrier_allreduce, .arg = job, .ranks = RANKS};
    int B = ctx.block;
    size_t n = (size_t)N_RANK * C * HW;
    float *xf = malloc(n * 4), *yf = calloc(n, 4), *dyf = malloc(n * 4), *dxf = calloc(n, 4);
    for (int i = 0; i < N_RANK; i++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) {
                size_t src = (((size_t)job->rank * N_RANK + i) * C + c) * HW + p;
                xf[blocked_index(i, c, p, B)] = (float)job->x[src];
                dyf[blocked_index(i, c, p, B)] = (float)job->dy[src];
            }
    float g[C], b[C], dg[C], db[C], rm[C], rv[C], mean[C], var[C];
    for (int c = 0; c < C; c++) g[c] = (float)job->gamma[c], b[c] = (float)job->beta[c], rm[c] = 0, rv[c] = 1;
    nn_batchnorm bn;
    dnnl_memory_desc_t md = nn_md_blocked(&ctx, N_RANK, C, H, W);
    dnnl_memory_t mx = NULL, my = NULL, mdy = NULL, mdx = NULL;
    void *ws = NULL;
    job->rc = nn_batchnorm_init(&bn, &ctx, N_RANK, C, H, W, job->relu, 1e-5f, &md);
    if (!job->rc) ws = malloc(bn.workspace_bytes + 1);
    if (!job->rc) job->rc = nn_memory_wrap(&mx, &ctx, &md, xf);
    if (!job->rc) job->rc = nn_memory_wrap(&my, &ctx, &md, yf);
    if (!job->rc) job->rc = nn_memory_wrap(&mdy, &ctx, &md, dyf);
    if (!job->rc) job->rc = nn_memory_wrap(&mdx, &ctx, &md, dxf);
    if (!job->rc) {
        nn_batchnorm_bind(&bn, g, b, dg, db, rm, rv, mean, var, ws);
        if (job->statistics_only) {
            job->rc = nn_batchnorm_train_statistics(&bn, &ctx, xf, 0.1f);
        } else {
            job->rc = nn_batchnorm_forward_train(&bn, &ctx, my, mx, 0.1f);
            if (!job->rc) job->rc = nn_batchnorm_backward(&bn, &ctx, mdx, mdy, mx);
        }
    }
    for (int i = 0; i < N_RANK; i++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) {
                job->y[((size_t)i * C + c) * HW + p] = yf[blocked_index(i, c, p, B)];
                job->dx[((size_t)i * C + c) * HW + p] = dxf[blocked_index(i, c, p, B)];
            }
    for (int c = 0; c < C; c++) {
        job->dgamma[c] = dg[c], job->dbeta[c] = db[c], job->mean[c] = mean[c], job->var[c] = var[c];
        job->running_mean[c] = rm[c], job->running_var[c] = rv[c];
    }
    dnnl_memory_t mems[] = {mx, my, mdy, mdx};
    for (int i = 0; i < 4; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    nn_batchnorm_free(&bn);
    nn_ctx_free(&ctx);
    free(xf), free(yf), free(dyf), free(dxf), free(ws);
    return NULL;
}

typedef struct result {
    double err_y, err_dx, err_dgamma, err_dbeta, err_mean, err_var, err_running_mean, err_running_var;
} result;

static double *randn(size_t n, uint64_t seed, double offset, double scale) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    double *x = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) x[i] = offset + scale * mfres_rng_normal(&rng);
    return x;
}

/* Runs the two ranks and compares with the reference over the whole batch. */
static result run(bool sync, bool relu, bool statistics_only) {
    size_t n = (size_t)N_ALL * C * HW, half = n / RANKS;
    double *x = randn(n, 11, 0.5, 2.0), *dy = randn(n, 12, 0, 1), *gamma = randn(C, 13, 1, 0.5);
    double *beta = randn(C, 14, 0, 0.5);
    /* The second half shifted and scaled, so that per-rank statistics are visibly not the global ones. */
    for (size_t i = half; i < n; i++) x[i] = 1.5 * x[i] + 1.0;
    comm c;
    pthread_barrier_init(&c.barrier, NULL, RANKS);
    rank_job jobs[RANKS];
    double *y = calloc(n, 8), *dx = calloc(n, 8);
    pthread_t threads[RANKS];
    for (int r = 0; r < RANKS; r++) {
        jobs[r] = (rank_job){.comm = &c, .rank = r, .sync = sync, .relu = relu, .statistics_only = statistics_only,
                             .x = x, .dy = dy, .gamma = gamma, .beta = beta, .y = y + r * half, .dx = dx + r * half};
        ck_assert_int_eq(pthread_create(&threads[r], NULL, run_rank, &jobs[r]), 0);
    }
    for (int r = 0; r < RANKS; r++) pthread_join(threads[r], NULL);
    for (int r = 0; r < RANKS; r++) ck_assert_msg(jobs[r].rc == 0, "rank %d: %s", r, mfres_last_error());
    pthread_barrier_destroy(&c.barrier);

    double *yr = calloc(n, 8), *dyr = calloc(n, 8), *dxr = calloc(n, 8), m[C], rs[C], dgr[C], dbr[C];
    ref_batchnorm_forward(yr, m, rs, x, gamma, beta, N_ALL, C, HW, 1e-5);
    if (relu) {
        ref_relu_forward(yr, yr, (long)n);
        ref_relu_backward(dyr, dy, yr, (long)n);
    } else {
        memcpy(dyr, dy, n * 8);
    }
    ref_batchnorm_backward(dxr, dgr, dbr, dyr, x, gamma, m, rs, N_ALL, C, HW);
    double dg[C], db[C], var[C], count = (double)N_ALL * HW, want_rm[C], want_rv[C];
    for (int ch = 0; ch < C; ch++) {
        dg[ch] = db[ch] = 0;
        for (int r = 0; r < RANKS; r++) dg[ch] += jobs[r].dgamma[ch], db[ch] += jobs[r].dbeta[ch];
        var[ch] = 1.0 / (rs[ch] * rs[ch]) - 1e-5;
        want_rm[ch] = 0.1 * m[ch];
        want_rv[ch] = 0.9 + 0.1 * var[ch] * count / (count - 1);
    }
    result res = {0};
    /* Every rank must hold the same statistics: compare both ranks' with the reference. */
    for (int r = 0; r < RANKS; r++) {
        double e;
#define WORST(field, got, want, len) \
    if ((e = test_rel_err_f64(got, want, len)) > res.field) res.field = e
        WORST(err_mean, jobs[r].mean, m, C);
        WORST(err_var, jobs[r].var, var, C);
        WORST(err_running_mean, jobs[r].running_mean, want_rm, C);
        WORST(err_running_var, jobs[r].running_var, want_rv, C);
#undef WORST
    }
    res.err_y = test_rel_err_f64(y, yr, n);
    res.err_dx = test_rel_err_f64(dx, dxr, n);
    res.err_dgamma = test_rel_err_f64(dg, dgr, C);
    res.err_dbeta = test_rel_err_f64(db, dbr, C);
    free(x), free(dy), free(gamma), free(beta), free(y), free(dx), free(yr), free(dyr), free(dxr);
    return res;
}

static void check_synced(bool relu) {
    result r = run(true, relu, false);
    ck_assert_msg(r.err_y < 1e-5, "forward: relative error %.3g", r.err_y);
    ck_assert_msg(r.err_dx < 1e-4, "backward data: relative error %.3g", r.err_dx);
    ck_assert_msg(r.err_dgamma < 1e-5, "dgamma summed over ranks: relative error %.3g", r.err_dgamma);
    ck_assert_msg(r.err_dbeta < 1e-5, "dbeta summed over ranks: relative error %.3g", r.err_dbeta);
    ck_assert_msg(r.err_mean < 1e-6 && r.err_var < 1e-6, "statistics: %.3g %.3g", r.err_mean, r.err_var);
    ck_assert_msg(r.err_running_mean < 1e-6 && r.err_running_var < 1e-6, "running statistics (global count): %.3g %.3g",
                  r.err_running_mean, r.err_running_var);
}

START_TEST(sync_bn_plain) { check_synced(false); }
END_TEST
START_TEST(sync_bn_fused_relu) { check_synced(true); }
END_TEST

/* The statistics pass of the post-activation block end (nn_batchnorm_train_statistics). */
START_TEST(sync_bn_statistics_pass) {
    result r = run(true, false, true);
    ck_assert_msg(r.err_mean < 1e-6 && r.err_var < 1e-6, "statistics: %.3g %.3g", r.err_mean, r.err_var);
    ck_assert_msg(r.err_running_mean < 1e-6 && r.err_running_var < 1e-6, "running statistics: %.3g %.3g",
                  r.err_running_mean, r.err_running_var);
    r = run(false, false, true);
    ck_assert_msg(r.err_mean > 1e-2, "per-rank statistics should differ from the whole batch's: %.3g", r.err_mean);
}
END_TEST

/* Without the hook each rank normalises its own half: far from the whole-batch reference. */
START_TEST(per_rank_bn_differs) {
    result r = run(false, true, false);
    ck_assert_msg(r.err_y > 1e-2 && r.err_dx > 1e-2, "per-rank batch norm matched the global one: %.3g %.3g",
                  r.err_y, r.err_dx);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("sync_bn");
    TCase *tc = tcase_create("sync_bn");
    tcase_add_test(tc, sync_bn_plain);
    tcase_add_test(tc, sync_bn_fused_relu);
    tcase_add_test(tc, sync_bn_statistics_pass);
    tcase_add_test(tc, per_rank_bn_differs);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
