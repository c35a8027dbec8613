/* Deep linear ResNets (P3): gradients against finite differences and the naive
 * per-layer formula, the least-squares optimum, convergence of the modified
 * identity run, and the measured contraction against the theorem's. */
#include <math.h>
#include <string.h>

#include "mfres/theory_linear.h"
#include "testutil.h"

static void make_data(mfres_lin_data *data, int d, int k, int n, double kappa, double target, double noise,
                      uint64_t seed) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    mfres_lin_data_cfg cfg = {.d = d, .k = k, .n = n, .kappa = kappa, .target_scale = target, .noise = noise};
    ck_assert_ok(mfres_lin_data_synth(data, &cfg, &rng));
}

/* Central differences of the loss against mfres_lin_backward, every weight,
 * on non-zero weights so that every product in the chain matters. */
static void check_gradients(int arch) {
    mfres_lin_data data;
    make_data(&data, 3, 2, 5, 3.0, 1.0, 0.1, 11);
    mfres_rng rng;
    mfres_rng_seed(&rng, 12);
    mfres_lin_transforms tr;
    ck_assert_ok(mfres_lin_transforms_gaussian(&tr, 6, 3, 2, 1.0, 1.0, &rng));
    mfres_lin_model model;
    ck_assert_ok(mfres_lin_model_init(&model, &tr, arch, 3, data.n));
    mfres_lin_model_init_weights(&model, MFRES_LIN_INIT_GAUSSIAN, 0.7, &rng);

    size_t np = (size_t)model.L * model.m * model.m;
    double *fast = malloc(np * sizeof(double)), *naive = malloc(np * sizeof(double)), *fd = malloc(np * sizeof(double));
    mfres_lin_zero_grad(&model);
    mfres_lin_forward(&model, data.X, data.Y, data.n);
    mfres_lin_backward(&model, data.X, data.n, 1.0);
    memcpy(fast, model.grads, np * sizeof(double));
    mfres_lin_zero_grad(&model);
    ck_assert_ok(mfres_lin_backward_naive(&model, data.X, data.Y, data.n));
    memcpy(naive, model.grads, np * sizeof(double));

    const double h = 1e-5;
    for (size_t i = 0; i < np; i++) {
        double w = model.params[i];
        model.params[i] = w + h;
        double lp = mfres_lin_forward(&model, data.X, data.Y, data.n);
        model.params[i] = w - h;
        double lm = mfres_lin_forward(&model, data.X, data.Y, data.n);
        model.params[i] = w;
        fd[i] = (lp - lm) / (2 * h);
    }
    double e_fd = test_rel_err_f64(fast, fd, np), e_naive = test_rel_err_f64(fast, naive, np);
    ck_assert_msg(e_fd < 1e-7, "%s: backward vs finite differences: relative error %.3g",
                  arch == MFRES_LIN_RESNET ? "resnet" : "plain", e_fd);
    ck_assert_msg(e_naive < 1e-12, "backward vs naive per-layer formula: relative error %.3g", e_naive);

    /* The loss at the weights agrees with the end-to-end map, and the excess
     * identity L − L* = ½‖(Θ − Θ*)X‖² holds. */
    double loss = 0, ex = mfres_lin_excess(&model, &data, &loss);
    ck_assert_msg(fabs(loss - data.loss_star - ex) < 1e-10 * (1 + loss), "L − L* = %.17g, excess %.17g",
                  loss - data.loss_star, ex);

    free(fast);
    free(naive);
    free(fd);
    mfres_lin_model_free(&model);
    mfres_lin_transforms_free(&tr);
    mfres_lin_data_free(&data);
}

START_TEST(test_gradients_resnet) { check_gradients(MFRES_LIN_RESNET); }
END_TEST

START_TEST(test_gradients_plain) { check_gradients(MFRES_LIN_PLAIN); }
END_TEST

/* SGD's minibatch gradients, scaled by n/b, average to the full gradient over
 * a partition of the data (the unbiasedness the training loop relies on). */
START_TEST(test_minibatch_gradients_sum) {
    mfres_lin_data data;
    make_data(&data, 3, 2, 8, 2.0, 1.0, 0.1, 21);
    mfres_rng rng;
    mfres_rng_seed(&rng, 22);
    mfres_lin_transforms tr;
    ck_assert_ok(mfres_lin_transforms_identity(&tr, 5, 3, 2));
    mfres_lin_model model;
    ck_assert_ok(mfres_lin_model_init(&model, &tr, MFRES_LIN_RESNET, 4, data.n));
    mfres_lin_model_init_weights(&model, MFRES_LIN_INIT_GAUSSIAN, 0.3, &rng);
    size_t np = (size_t)model.L * model.m * model.m;
    double *full = malloc(np * sizeof(double));
    mfres_lin_zero_grad(&model);
    mfres_lin_forward(&model, data.X, data.Y, data.n);
    mfres_lin_backward(&model, data.X, data.n, 1.0);
    memcpy(full, model.grads, np * sizeof(double));

    /* two halves, columns 0..3 and 4..7, each scaled by n/b = 2, averaged */
    mfres_lin_zero_grad(&model);
    double xb[3 * 4], yb[2 * 4];
    for (int half = 0; half < 2; half++) {
        for (int i = 0; i < 3; i++) memcpy(xb + i * 4, data.X + i * 8 + half * 4, 4 * sizeof(double));
        for (int i = 0; i < 2; i++) memcpy(yb + i * 4, data.Y + i * 8 + half * 4, 4 * sizeof(double));
        mfres_lin_forward(&model, xb, yb, 4);
        mfres_lin_backward(&model, xb, 4, 2.0 * 0.5);
    }
    ck_assert_double_lt(test_rel_err_f64(model.grads, full, np), 1e-13);
    free(full);
    mfres_lin_model_free(&model);
    mfres_lin_transforms_free(&tr);
    mfres_lin_data_free(&data);
}
END_TEST

START_TEST(test_data_optimum_and_spectrum) {
    /* Noiseless: L* = 0 and Θ* is the generating map on X's range. */
    mfres_lin_data data;
    make_data(&data, 5, 3, 40, 9.0, 1.0, 0.0, 31);
    ck_assert_int_eq(data.rank, 5);
    ck_assert_double_lt(fabs(data.sigma_max * data.sigma_max / (data.sigma_r * data.sigma_r) - 9.0), 1e-9);
    ck_assert_double_lt(fabs(data.sigma_max - sqrt(40.0)), 1e-9);
    ck_assert_double_lt(data.loss_star, 1e-20);
    mfres_lin_data_free(&data);

    /* Rank-deficient X (r < d): rank found, L* from the normal equations. */
    mfres_rng rng;
    mfres_rng_seed(&rng, 32);
    mfres_lin_data_cfg cfg = {.d = 6, .k = 2, .n = 30, .rank = 3, .kappa = 4, .target_scale = 1, .noise = 0.5};
    ck_assert_ok(mfres_lin_data_synth(&data, &cfg, &rng));
    ck_assert_int_eq(data.rank, 3);
    ck_assert_double_lt(fabs(data.sigma_max * data.sigma_max / (data.sigma_r * data.sigma_r) - 4.0), 1e-9);
    /* residual ⟂ rows of X: (Θ*X − Y) Xᵀ = 0 */
    double worst = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 6; j++) {
            double s = 0;
            for (int t = 0; t < 30; t++) s += (data.pred_star[i * 30 + t] - data.Y[i * 30 + t]) * data.X[j * 30 + t];
            worst = fmax(worst, fabs(s));
        }
    ck_assert_double_lt(worst, 1e-10);
    ck_assert_double_gt(data.loss_star, 0.0);
    mfres_lin_data_free(&data);
}
END_TEST

/* P3's modified identity (m = d + k) on a small well-conditioned problem
 * reaches excess loss < 1e-10 with zero initialisation. */
START_TEST(test_identity_converges) {
    mfres_lin_data data;
    make_data(&data, 4, 2, 20, 2.0, 1.0, 0.1, 41);
    mfres_lin_transforms tr;
    ck_assert_ok(mfres_lin_transforms_identity(&tr, 6, 4, 2));
    mfres_lin_model model;
    ck_assert_ok(mfres_lin_model_init(&model, &tr, MFRES_LIN_RESNET, 8, data.n));
    mfres_lin_theory th;
    mfres_lin_theory_eval(&th, &tr, &data, 8, 0, 0);
    mfres_lin_train_cfg cfg = {.steps = 2000, .eta = 0.5 * th.eta_unit, .stop_excess = 1e-11};
    mfres_rng rng;
    mfres_rng_seed(&rng, 42);
    mfres_lin_result res;
    ck_assert_ok(mfres_lin_train(&model, &data, &cfg, &rng, NULL, &res));
    ck_assert_msg(!res.diverged && res.excess < 1e-10, "excess %.3g after %d steps", res.excess, res.steps_run);
    ck_assert_double_gt(data.loss_star, 1e-3); /* noisy: the optimum is not zero loss */
    /* and the loss itself went to L* */
    ck_assert_double_lt(fabs(res.loss - data.loss_star), 1e-9);

    /* SGD on the same problem also gets there (noise-free labels so that the
     * minibatch gradients all vanish at the optimum). */
    mfres_lin_data clean;
    make_data(&clean, 4, 2, 20, 2.0, 1.0, 0.0, 43);
    mfres_lin_model_init_weights(&model, MFRES_LIN_INIT_ZERO, 0, &rng);
    mfres_lin_theory_eval(&th, &tr, &clean, 8, 0, 0);
    cfg.eta = 0.25 * th.eta_unit;
    cfg.batch = 5;
    cfg.steps = 4000;
    ck_assert_ok(mfres_lin_train(&model, &clean, &cfg, &rng, NULL, &res));
    ck_assert_msg(!res.diverged && res.excess < 1e-10, "SGD excess %.3g after %d steps", res.excess, res.steps_run);
    mfres_lin_data_free(&clean);

    mfres_lin_model_free(&model);
    mfres_lin_transforms_free(&tr);
    mfres_lin_data_free(&data);
}
END_TEST

/* With the condition satisfied (small targets), every step contracts the
 * excess loss at least by the predicted factor. The margin is the largest C
 * for which the condition holds; C is not in our texts, so the identity case
 * asks for a wide one (10) and the Gaussian case, whose margin only grows like
 * √m/κ because of the B A X term at initialisation, for C = 1. */
static void check_contraction(int transform, double kappa, double min_margin) {
    mfres_lin_data data;
    make_data(&data, 4, 2, 24, kappa, 0.002, 0.0, 51);
    mfres_rng rng;
    mfres_rng_seed(&rng, 52);
    mfres_lin_transforms tr;
    if (transform == MFRES_LIN_IDENTITY)
        ck_assert_ok(mfres_lin_transforms_identity(&tr, 6, 4, 2));
    else
        ck_assert_ok(mfres_lin_transforms_gaussian(&tr, 64, 4, 2, 1.0, 1.0, &rng));
    int L = 16, steps = 400;
    mfres_lin_model model;
    ck_assert_ok(mfres_lin_model_init(&model, &tr, MFRES_LIN_RESNET, L, data.n));
    double loss0 = 0, ex0 = mfres_lin_excess(&model, &data, &loss0);
    mfres_lin_theory th;
    mfres_lin_theory_eval(&th, &tr, &data, L, 0, ex0);
    double eta = 0.5 * th.eta_unit;
    mfres_lin_theory_eval(&th, &tr, &data, L, eta, ex0);
    ck_assert_msg(th.margin > min_margin, "test case should satisfy the condition with room (margin %.3g)", th.margin);

    double *trace = malloc((size_t)(steps + 1) * sizeof(double));
    mfres_lin_train_cfg cfg = {.steps = steps, .eta = eta};
    mfres_lin_result res;
    ck_assert_ok(mfres_lin_train(&model, &data, &cfg, &rng, trace, &res));
    mfres_lin_contraction c;
    mfres_lin_contraction_measure(&c, trace, steps, 1e-24, th.rate_pred);
    ck_assert_int_gt(c.steps_used, 20);
    ck_assert_msg(c.rate_worst <= th.rate_pred, "worst measured step factor %.6f > predicted %.6f", c.rate_worst,
                  th.rate_pred);
    ck_assert(c.bound_held);
    fprintf(stderr, "contraction (%s): margin %.3g, predicted %.6f, worst measured %.6f, mean %.6f over %d steps\n",
            transform == MFRES_LIN_IDENTITY ? "identity" : "gaussian", th.margin, th.rate_pred, c.rate_worst,
            c.rate_mean, c.steps_used);
    free(trace);
    mfres_lin_model_free(&model);
    mfres_lin_transforms_free(&tr);
    mfres_lin_data_free(&data);
}

START_TEST(test_contraction_identity) { check_contraction(MFRES_LIN_IDENTITY, 4.0, 10.0); }
END_TEST

START_TEST(test_contraction_gaussian) { check_contraction(MFRES_LIN_GAUSSIAN, 2.0, 1.0); }
END_TEST

/* Same seed, same trace, bit for bit (SGD included). */
/* A trace that turns non-finite inside the window never "holds" the bound; one that contracts as
 * predicted and then stops at a floor does. */
START_TEST(test_contraction_nonfinite_is_not_held) {
    double ok[5] = {1.0, 0.5, 0.25, 0.125, 0.0625}, bad[5] = {1.0, 0.5, 0.25, NAN, NAN};
    mfres_lin_contraction c;
    mfres_lin_contraction_measure(&c, ok, 4, 1e-24, 0.5);
    ck_assert_int_eq(c.bound_held, 1);
    mfres_lin_contraction_measure(&c, bad, 4, 1e-24, 0.5);
    ck_assert_int_eq(c.bound_held, 0);
    bad[3] = INFINITY;
    mfres_lin_contraction_measure(&c, bad, 3, 1e-24, 0.5);
    ck_assert_int_eq(c.bound_held, 0);
}
END_TEST

START_TEST(test_deterministic) {
    double traces[2][51];
    for (int rep = 0; rep < 2; rep++) {
        mfres_lin_data data;
        make_data(&data, 3, 2, 16, 3.0, 1.0, 0.1, 61);
        mfres_rng rng;
        mfres_rng_seed(&rng, 62);
        mfres_lin_transforms tr;
        ck_assert_ok(mfres_lin_transforms_gaussian(&tr, 10, 3, 2, 1.0, 1.0, &rng));
        mfres_lin_model model;
        ck_assert_ok(mfres_lin_model_init(&model, &tr, MFRES_LIN_RESNET, 4, data.n));
        mfres_lin_theory th;
        mfres_lin_theory_eval(&th, &tr, &data, 4, 0, 0);
        mfres_lin_train_cfg cfg = {.steps = 50, .eta = 0.5 * th.eta_unit, .batch = 4};
        mfres_lin_result res;
        ck_assert_ok(mfres_lin_train(&model, &data, &cfg, &rng, traces[rep], &res));
        mfres_lin_model_free(&model);
        mfres_lin_transforms_free(&tr);
        mfres_lin_data_free(&data);
    }
    ck_assert_mem_eq(traces[0], traces[1], sizeof traces[0]);
}
END_TEST

START_TEST(test_bad_arguments) {
    mfres_lin_transforms tr;
    ck_assert_int_eq(mfres_lin_transforms_identity(&tr, 5, 4, 2), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "d + k"));
    mfres_lin_data data;
    mfres_rng rng;
    mfres_rng_seed(&rng, 1);
    mfres_lin_data_cfg cfg = {.d = 4, .k = 2, .n = 3, .rank = 4, .kappa = 2, .target_scale = 1};
    ck_assert_int_eq(mfres_lin_data_synth(&data, &cfg, &rng), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "rank"));
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("theory_linear");
    TCase *tc = tcase_create("linear");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gradients_resnet);
    tcase_add_test(tc, test_gradients_plain);
    tcase_add_test(tc, test_minibatch_gradients_sum);
    tcase_add_test(tc, test_data_optimum_and_spectrum);
    tcase_add_test(tc, test_identity_converges);
    tcase_add_test(tc, test_contraction_identity);
    tcase_add_test(tc, test_contraction_gaussian);
    tcase_add_test(tc, test_contraction_nonfinite_is_not_held);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
