/* The networks of Table 1, fast path and reference path, for every block kind
 * (basic postact and preact, the pre-activation bottleneck, ResNeXt postact
 * and preact, at small widths):
 * - the double-precision reference model's gradients (theta and tau) against
 *   central finite differences;
 * - the oneDNN float32 model against the reference model: loss, every
 *   parameter gradient and the tau gradients, both modes;
 * - parameter counts against the published ones;
 * - mean-field with unit tau equals vanilla at step 0;
 * - an optimiser step that changes the block order: the sort routes the right
 *   parameters and the gradient after it is exact for the new order;
 * - same inputs, same bits. */
#include <stdlib.h>
#include <string.h>

#include "mfres/meanfield.h"
#include "mfres/model.h"
#include "mfres/optim.h"
#include "model_fixture.h"
#include "testutil.h"

static double *params_f64(const mfres_model *m) {
    double *p = malloc(m->n_params * sizeof(double));
    for (size_t i = 0; i < m->n_params; i++) p[i] = m->params[i];
    return p;
}
static double *tau_f64(const mfres_model *m) {
    double *t = malloc((m->n_tau + 1) * sizeof(double));
    for (int i = 0; i < m->n_tau; i++) t[i] = m->tau[i];
    return t;
}

/* ---- reference model against finite differences ---- */
static void check_ref_fd(net_kind kind) {
    fixture f;
    /* Two blocks a stage: one particle each (6n+2 = 14, 9n+2 = 20). */
    make_fixture(&f, kind.block == MFRES_BLOCK_BOTTLENECK || kind.family == MFRES_FAMILY_RESNEXT ? 20 : 14, kind,
                 MFRES_MODE_MEANFIELD, MFRES_TAU_GRID, 4, 2, 8, 7);
    mfres_model *m = &f.m;
    /* Distinct steps, in an order that is not the particle order. */
    float taus[] = {0.7f, 0.3f, 0.9f};
    for (int s = 0; s < 3; s++) m->tau[s] = taus[s];
    double *p = params_f64(m), *tau = tau_f64(m), *g = malloc(m->n_params * sizeof(double)), tg[3], loss, lp, lm;
    ck_assert_ok(mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &loss, g, tg));
    const double eps = 1e-6;
    mfres_rng rng;
    mfres_rng_seed(&rng, 3);
    int checked = 0;
    for (int trial = 0; trial < 60; trial++) {
        size_t i = mfres_rng_below(&rng, (uint32_t)m->n_params);
        double save = p[i];
        p[i] = save + eps;
        mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &lp, NULL, NULL);
        p[i] = save - eps;
        mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &lm, NULL, NULL);
        p[i] = save;
        double fd = (lp - lm) / (2 * eps);
        ck_assert_msg(fabs(fd - g[i]) <= 1e-7 + 1e-4 * fabs(fd), "%s: param %zu: backprop %.10g, finite difference %.10g",
                      kind.name, i, g[i], fd);
        checked++;
    }
    for (int i = 0; i < m->n_tau; i++) {
        double save = tau[i];
        tau[i] = save + eps;
        mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &lp, NULL, NULL);
        tau[i] = save - eps;
        mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &lm, NULL, NULL);
        tau[i] = save;
        double fd = (lp - lm) / (2 * eps);
        ck_assert_msg(fabs(fd - tg[i]) <= 1e-8 + 1e-5 * fabs(fd), "tau %d: backprop %.10g, finite difference %.10g", i,
                      tg[i], fd);
        ck_assert_msg(fabs(fd) > 1e-6, "tau %d has a vanishing gradient %.3g: the test would prove nothing", i, fd);
    }
    ck_assert_int_eq(checked, 60);
    free(p), free(tau), free(g);
    free_fixture(&f);
}
START_TEST(ref_gradients_match_finite_differences_postact) { check_ref_fd(POSTACT); }
END_TEST
START_TEST(ref_gradients_match_finite_differences_preact) { check_ref_fd(PREACT); }
END_TEST
START_TEST(ref_gradients_match_finite_differences_bottleneck) { check_ref_fd(BOTTLENECK); }
END_TEST
START_TEST(ref_gradients_match_finite_differences_resnext_postact) { check_ref_fd(RESNEXT_POST); }
END_TEST
START_TEST(ref_gradients_match_finite_differences_resnext_preact) { check_ref_fd(RESNEXT_PRE); }
END_TEST

/* ---- the oneDNN model against the reference model ---- */
static void check_fast_vs_ref(int depth, net_kind kind, mfres_mode mode, int in_c, int hw) {
    fixture f;
    make_fixture(&f, depth, kind, mode, MFRES_TAU_GRID, 8, in_c, hw, 11);
    mfres_model *m = &f.m;
    if (mode == MFRES_MODE_MEANFIELD) { /* reverse the order in every stage: exercises the sorted routing */
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < m->particles; i++) m->tau[s * m->particles + i] = 1.0f - 0.8f * i / m->particles - 0.05f * s;
        mfres_model_sort_blocks(m);
    }
    double loss, ref_loss;
    ck_assert_ok(mfres_model_forward(m, f.images, f.labels, true, &loss, NULL));
    ck_assert_ok(mfres_model_backward(m));
    double *p = params_f64(m), *tau = tau_f64(m), *g = malloc(m->n_params * sizeof(double));
    double *tg = calloc(m->n_tau + 1, sizeof(double));
    ck_assert_ok(mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &ref_loss, g, tg));
    ck_assert_msg(fabs(loss - ref_loss) <= 1e-5 * fabs(ref_loss), "loss %.8g vs reference %.8g", loss, ref_loss);
    /* Some gradients are exactly zero (a shift of a channel that only batch
     * norms see later); there the float path is held to the scale of the
     * whole gradient instead of its own. */
    double total = 0;
    for (size_t i = 0; i < m->n_params; i++) total += g[i] * g[i];
    total = sqrt(total);
    for (int t = 0; t < m->n_tensors; t++) {
        mfres_tensor *tt = &m->tensors[t];
        if (!tt->grad || tt->is_tau) continue;
        size_t off = tt->grad - m->grads;
        double *fast = malloc(tt->numel * sizeof(double));
        for (size_t k = 0; k < tt->numel; k++) fast[k] = tt->grad[k];
        double diff = 0, norm = 0;
        for (size_t k = 0; k < tt->numel; k++) diff += (fast[k] - g[off + k]) * (fast[k] - g[off + k]), norm += g[off + k] * g[off + k];
        diff = sqrt(diff), norm = sqrt(norm);
        ck_assert_msg(diff <= 1e-4 * norm + 1e-7 * total, "%s: %s: gradient error %.3g against a norm of %.3g (whole gradient %.3g)",
                      kind.name, tt->name, diff, norm, total);
        free(fast);
    }
    if (m->n_tau) {
        double *fast = malloc(m->n_tau * sizeof(double));
        for (int i = 0; i < m->n_tau; i++) fast[i] = m->tau_grad[i];
        double err = test_rel_err_f64(fast, tg, m->n_tau);
        ck_assert_msg(err <= 1e-4, "tau gradient relative error %.3g", err);
        free(fast);
    }
    free(p), free(tau), free(g), free(tg);
    free_fixture(&f);
}
START_TEST(fast_matches_reference_postact_meanfield) { check_fast_vs_ref(20, POSTACT, MFRES_MODE_MEANFIELD, 3, 16); }
END_TEST
START_TEST(fast_matches_reference_preact_meanfield) { check_fast_vs_ref(20, PREACT, MFRES_MODE_MEANFIELD, 1, 12); }
END_TEST
START_TEST(fast_matches_reference_postact_vanilla) { check_fast_vs_ref(8, POSTACT, MFRES_MODE_VANILLA, 1, 8); }
END_TEST
START_TEST(fast_matches_reference_preact_vanilla) { check_fast_vs_ref(14, PREACT, MFRES_MODE_VANILLA, 3, 8); }
END_TEST
/* Three blocks a stage (9n+2 = 29): two particles, so the reversed order routes parameters. */
START_TEST(fast_matches_reference_bottleneck_meanfield) { check_fast_vs_ref(29, BOTTLENECK, MFRES_MODE_MEANFIELD, 3, 8); }
END_TEST
START_TEST(fast_matches_reference_resnext_postact_meanfield) { check_fast_vs_ref(29, RESNEXT_POST, MFRES_MODE_MEANFIELD, 3, 8); }
END_TEST
START_TEST(fast_matches_reference_resnext_preact_meanfield) { check_fast_vs_ref(29, RESNEXT_PRE, MFRES_MODE_MEANFIELD, 1, 8); }
END_TEST
START_TEST(fast_matches_reference_bottleneck_vanilla) { check_fast_vs_ref(11, BOTTLENECK, MFRES_MODE_VANILLA, 3, 8); }
END_TEST

/* ---- unit tau: mean-field equals vanilla at step 0 ---- */
static void check_unit_equals_vanilla(net_kind kind) {
    fixture v, mf;
    make_fixture(&v, 20, kind, MFRES_MODE_VANILLA, MFRES_TAU_UNIT, 8, 3, 8, 5);
    make_fixture(&mf, 20, kind, MFRES_MODE_MEANFIELD, MFRES_TAU_UNIT, 8, 3, 8, 5);
    ck_assert_uint_eq(v.m.n_params, mf.m.n_params);
    ck_assert_int_eq(memcmp(v.m.params, mf.m.params, v.m.n_params * sizeof(float)), 0);
    double lv, lm;
    ck_assert_ok(mfres_model_forward(&v.m, v.images, v.labels, true, &lv, NULL));
    ck_assert_ok(mfres_model_backward(&v.m));
    ck_assert_ok(mfres_model_forward(&mf.m, mf.images, mf.labels, true, &lm, NULL));
    ck_assert_ok(mfres_model_backward(&mf.m));
    ck_assert_msg(lv == lm, "vanilla loss %.9g, mean-field loss %.9g", lv, lm);
    ck_assert_int_eq(memcmp(v.m.grads, mf.m.grads, v.m.n_params * sizeof(float)), 0);
    free_fixture(&v);
    free_fixture(&mf);
}
START_TEST(unit_tau_equals_vanilla_postact) { check_unit_equals_vanilla(POSTACT); }
END_TEST
START_TEST(unit_tau_equals_vanilla_preact) { check_unit_equals_vanilla(PREACT); }
END_TEST
START_TEST(unit_tau_equals_vanilla_bottleneck) { check_unit_equals_vanilla(BOTTLENECK); }
END_TEST
START_TEST(unit_tau_equals_vanilla_resnext) { check_unit_equals_vanilla(RESNEXT_POST); }
END_TEST

/* ---- an optimiser step that swaps two blocks ----
 * Stage 2's two particles nearly tie; the tie is laid so that their tau
 * gradients push them across each other, and mfres_optimizer_step (SGD on
 * theta and tau, clamp, sort) with a tau rate that moves the pair 0.1 apart
 * must itself swap them. After the step the fast path must agree with the
 * reference (which sorts on its own), the tau gradient in the new order with
 * finite differences of the reference, and the network with one whose two
 * blocks are physically exchanged. */
static void check_order_change(int depth, net_kind kind) {
    fixture f;
    make_fixture(&f, depth, kind, MFRES_MODE_MEANFIELD, MFRES_TAU_GRID, 8, 1, 8, 21);
    mfres_model *m = &f.m;
    int P = m->particles, s = -1, first = -1;
    ck_assert_int_ge(P, 2);
    double loss0;
    float g0 = 0, g1 = 0;
    /* A stage and a lay of the tie (particle `lay` first, the other 1e-5 behind
     * it) where the one behind descends faster, so that a step crosses them. */
    for (int stage = 0; stage < 3 && first < 0; stage++)
        for (int lay = 0; lay < 2 && first < 0; lay++) {
            for (int i = 0; i < 3 * P; i++) m->tau[i] = 0.1f + 0.8f * (i % P) / P; /* apart */
            m->tau[stage * P + lay] = 0.50f, m->tau[stage * P + 1 - lay] = 0.50001f;
            mfres_model_sort_blocks(m);
            ck_assert_int_eq(m->order[stage * P], lay);
            ck_assert_ok(mfres_model_forward(m, f.images, f.labels, true, &loss0, NULL));
            ck_assert_ok(mfres_model_backward(m));
            g0 = m->tau_grad[stage * P + lay], g1 = m->tau_grad[stage * P + 1 - lay];
            if (g1 > g0) first = lay, s = stage;
        }
    ck_assert_msg(first >= 0, "%s: the tau gradients never point across a tie: cannot test a swap", kind.name);
    mfres_optimizer opt;
    ck_assert_ok(mfres_optimizer_init(&opt, m, 1e-3f, 0.0f, 0.0f, false, 1.0f));
    opt.tau_lr_mult = 0.1f / (opt.lr * (g1 - g0)); /* the gap closes by 0.1: the pair crosses */
    float p0 = m->params[0], dp0 = m->grads[0];
    mfres_optimizer_step(&opt, m);
    ck_assert_msg(m->order[s * P] == 1 - first, "%s: the optimiser step did not swap the pair", kind.name);
    ck_assert_int_ge(mfres_model_last_reorders(m), 1);
    ck_assert_msg(m->params[0] == p0 - opt.lr * dp0, "the step did not update theta by SGD");
    mfres_optimizer_free(&opt);

    double loss1, ref1;
    ck_assert_ok(mfres_model_forward(m, f.images, f.labels, true, &loss1, NULL));
    ck_assert_ok(mfres_model_backward(m));
    double *p = params_f64(m), *tau = tau_f64(m), *tg = calloc(m->n_tau + 1, sizeof(double));
    ck_assert_ok(mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &ref1, NULL, tg));
    ck_assert_msg(fabs(loss1 - ref1) <= 1e-5 * ref1, "%s: loss %.8g vs reference %.8g", kind.name, loss1, ref1);
    for (int i = s * P; i < s * P + P; i++) {
        double lp, lm, save = tau[i], eps = 1e-6;
        tau[i] = save + eps;
        mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &lp, NULL, NULL);
        tau[i] = save - eps;
        mfres_model_ref_loss_and_grad(m, p, tau, f.images, f.labels, &lm, NULL, NULL);
        tau[i] = save;
        double fd = (lp - lm) / (2 * eps);
        ck_assert_msg(fabs(m->tau_grad[i] - fd) <= 1e-3 * fabs(fd) + 1e-6, "%s: tau %d: fast %.8g, finite difference %.8g",
                      kind.name, i, m->tau_grad[i], fd);
    }
    /* Physically exchanging the two blocks' parameters, statistics and taus gives the same network. */
    mfres_model m2;
    ck_assert_ok(mfres_model_create(&m2, &m->cfg, 21));
    memcpy(m2.params, m->params, m->n_params * sizeof(float));
    memcpy(m2.buffers, m->buffers, m->n_buffers * sizeof(float));
    memcpy(m2.tau, m->tau, m->n_tau * sizeof(float));
    int exchanged = 0;
    for (int t = 0; t < m2.n_tensors; t++) {
        mfres_tensor *ta = &m2.tensors[t];
        char mine[32], other[64];
        snprintf(mine, sizeof mine, "layer%d.1.", s + 1);
        if (ta->is_tau || strncmp(ta->name, mine, 9)) continue;
        snprintf(other, sizeof other, "layer%d.2.%s", s + 1, ta->name + 9);
        mfres_tensor *tb = mfres_model_find(&m2, other);
        ck_assert_ptr_nonnull(tb);
        memcpy(ta->data, mfres_model_find(m, other)->data, ta->numel * sizeof(float));
        memcpy(tb->data, mfres_model_find(m, ta->name)->data, tb->numel * sizeof(float));
        exchanged++;
    }
    ck_assert_int_ge(exchanged, 4);
    m2.tau[s * P] = m->tau[s * P + 1], m2.tau[s * P + 1] = m->tau[s * P];
    mfres_model_sort_blocks(&m2);
    double loss2;
    ck_assert_ok(mfres_model_forward(&m2, f.images, f.labels, true, &loss2, NULL));
    ck_assert_msg(fabs(loss2 - loss1) <= 1e-6 * loss1, "%s: exchanged blocks: %.8g vs %.8g", kind.name, loss2, loss1);
    mfres_model_free(&m2);
    free(p), free(tau), free(tg);
    free_fixture(&f);
}
START_TEST(optimiser_step_swaps_blocks_postact) { check_order_change(20, POSTACT); }
END_TEST
START_TEST(optimiser_step_swaps_blocks_bottleneck) { check_order_change(29, BOTTLENECK); }
END_TEST
START_TEST(optimiser_step_swaps_blocks_resnext) { check_order_change(29, RESNEXT_PRE); }
END_TEST

/* ---- parameter counts against the published ones: ResNets (He et al. 2016) to
 * the digits published; ResNeXt-29 (Xie et al. 2017, 100 classes) within 0.5%:
 * 34.4 M and 68.1 M (ours count the batch norms' and the classifier's too). */
static size_t count_params(const char *name, mfres_block_type block, int classes) {
    mfres_model_config cfg;
    mfres_model_config_default(&cfg);
    cfg.block = block;
    ck_assert_ok(mfres_model_config_from_name(&cfg, name));
    cfg.in_c = 3, cfg.in_h = cfg.in_w = 32, cfg.num_classes = classes, cfg.batch = 1;
    mfres_model m;
    ck_assert_ok(mfres_model_create(&m, &cfg, 1));
    size_t n = m.n_params;
    mfres_model_free(&m);
    return n;
}
START_TEST(parameter_counts_match_the_papers) {
    struct { const char *name; mfres_block_type block; int classes; double published_m, tolerance_m; } nets[] = {
        {"resnet20", MFRES_BLOCK_POSTACT, 10, 0.27, 0.005},   {"resnet32", MFRES_BLOCK_POSTACT, 10, 0.46, 0.005},
        {"resnet44", MFRES_BLOCK_POSTACT, 10, 0.66, 0.005},   {"resnet56", MFRES_BLOCK_POSTACT, 10, 0.85, 0.005},
        {"resnet110", MFRES_BLOCK_POSTACT, 10, 1.7, 0.05},    {"resnet164", MFRES_BLOCK_BOTTLENECK, 10, 1.7, 0.05},
        {"resnext29-8x64d", MFRES_BLOCK_POSTACT, 100, 34.4, 0.005 * 34.4},
        {"resnext29-16x64d", MFRES_BLOCK_PREACT, 100, 68.1, 0.005 * 68.1},
    };
    for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
        double got = count_params(nets[i].name, nets[i].block, nets[i].classes) / 1e6;
        ck_assert_msg(fabs(got - nets[i].published_m) <= nets[i].tolerance_m, "%s: %.4f M parameters, published %.2f M",
                      nets[i].name, got, nets[i].published_m);
    }
}
END_TEST

START_TEST(same_inputs_same_bits) {
    fixture f;
    make_fixture(&f, 20, PREACT, MFRES_MODE_MEANFIELD, MFRES_TAU_GRID, 16, 3, 16, 4);
    mfres_model *m = &f.m;
    float *g1 = malloc(m->n_params * sizeof(float));
    double l1, l2;
    ck_assert_ok(mfres_model_forward(m, f.images, f.labels, true, &l1, NULL));
    ck_assert_ok(mfres_model_backward(m));
    memcpy(g1, m->grads, m->n_params * sizeof(float));
    ck_assert_ok(mfres_model_forward(m, f.images, f.labels, true, &l2, NULL));
    ck_assert_ok(mfres_model_backward(m));
    ck_assert(l1 == l2);
    ck_assert_int_eq(memcmp(g1, m->grads, m->n_params * sizeof(float)), 0);
    free(g1);
    free_fixture(&f);
}
END_TEST

/* With BN momentum 1 the running statistics become the batch's own (up to the
 * unbiased-variance factor), so inference on that batch must reproduce the
 * training-mode loss: checks the inference path and the running-stat update. */
static void check_inference_matches_training(int depth, net_kind kind) {
    fixture f;
    make_fixture(&f, depth, kind, MFRES_MODE_MEANFIELD, MFRES_TAU_GRID, 32, 3, 16, 9);
    mfres_model *m = &f.m;
    m->cfg.bn_momentum = 1.0f;
    double train_loss, eval_loss;
    ck_assert_ok(mfres_model_forward(m, f.images, f.labels, true, &train_loss, NULL));
    ck_assert_ok(mfres_model_forward(m, f.images, f.labels, false, &eval_loss, NULL));
    ck_assert_msg(fabs(train_loss - eval_loss) <= 2e-3 * train_loss, "train-mode loss %.6f, inference loss %.6f",
                  train_loss, eval_loss);
    free_fixture(&f);
}
START_TEST(inference_matches_training_with_batch_statistics_postact) { check_inference_matches_training(14, POSTACT); }
END_TEST
START_TEST(inference_matches_training_with_batch_statistics_preact) { check_inference_matches_training(14, PREACT); }
END_TEST
START_TEST(inference_matches_training_with_batch_statistics_bottleneck) { check_inference_matches_training(20, BOTTLENECK); }
END_TEST
START_TEST(inference_matches_training_with_batch_statistics_resnext) { check_inference_matches_training(20, RESNEXT_POST); }
END_TEST

/* The inference pass folds every batch norm into its convolution and keeps the
 * folded weights until something changes: against the double-precision
 * reference at inference (running statistics), then again after a weight, a
 * running statistic and the block order have changed, so a stale fold fails. */
static void check_inference_vs_ref(int depth, net_kind kind, mfres_mode mode, int batch, int hw) {
    fixture f;
    make_fixture(&f, depth, kind, mode, MFRES_TAU_GRID, batch, 3, hw, 13);
    mfres_model *m = &f.m;
    mfres_rng rng;
    mfres_rng_seed(&rng, 77);
    for (int t = 0; t < m->n_tensors; t++) { /* running statistics that are not the defaults */
        mfres_tensor *tt = &m->tensors[t];
        bool rm = strstr(tt->name, "running_mean") != NULL, rv = strstr(tt->name, "running_var") != NULL;
        for (size_t k = 0; (rm || rv) && k < tt->numel; k++)
            tt->data[k] = rm ? (float)(0.3 * mfres_rng_normal(&rng)) : (float)(0.5 + mfres_rng_uniform(&rng));
    }
    for (int round = 0; round < 2; round++) {
        double loss, ref_loss;
        int correct;
        ck_assert_ok(mfres_model_forward(m, f.images, f.labels, false, &loss, &correct));
        double *p = params_f64(m), *tau = tau_f64(m);
        ck_assert_ok(mfres_model_ref_eval(m, p, tau, f.images, f.labels, &ref_loss, NULL));
        ck_assert_msg(fabs(loss - ref_loss) <= 1e-5 * fabs(ref_loss), "%s, round %d: inference loss %.8g vs reference %.8g",
                      kind.name, round, loss, ref_loss);
        free(p), free(tau);
        /* Change what the fold depends on. */
        m->tensors[0].data[0] += 0.5f;
        mfres_tensor *rv = mfres_model_find(m, "layer2.0.bn2.running_var");
        for (size_t k = 0; k < rv->numel; k++) rv->data[k] *= 2.0f;
        if (m->n_tau) {
            for (int s = 0; s < 3; s++)
                for (int i = 0; i < m->particles; i++) m->tau[s * m->particles + i] = 1.0f - 0.8f * i / m->particles;
            mfres_model_sort_blocks(m);
        }
    }
    free_fixture(&f);
}
START_TEST(inference_matches_reference_postact_meanfield) { check_inference_vs_ref(20, POSTACT, MFRES_MODE_MEANFIELD, 8, 16); }
END_TEST
START_TEST(inference_matches_reference_preact_meanfield) { check_inference_vs_ref(20, PREACT, MFRES_MODE_MEANFIELD, 8, 16); }
END_TEST
START_TEST(inference_matches_reference_bottleneck_meanfield) { check_inference_vs_ref(29, BOTTLENECK, MFRES_MODE_MEANFIELD, 8, 8); }
END_TEST
START_TEST(inference_matches_reference_resnext_postact_meanfield) { check_inference_vs_ref(29, RESNEXT_POST, MFRES_MODE_MEANFIELD, 8, 8); }
END_TEST
START_TEST(inference_matches_reference_resnext_preact_meanfield) { check_inference_vs_ref(29, RESNEXT_PRE, MFRES_MODE_MEANFIELD, 8, 8); }
END_TEST
/* 37 images of 32x32 run as two chunks of 19, the second padded. */
START_TEST(inference_matches_reference_in_chunks) { check_inference_vs_ref(8, POSTACT, MFRES_MODE_VANILLA, 37, 32); }
END_TEST

START_TEST(bad_configurations_are_refused) {
    mfres_model_config cfg;
    mfres_model_config_default(&cfg);
    mfres_model m;
    cfg.depth = 21;
    ck_assert_int_eq(mfres_model_create(&m, &cfg, 1), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "6n+2"));
    cfg.depth = 47; /* 9n+2 but not 6n+2: the message points at the bottleneck */
    ck_assert_int_eq(mfres_model_create(&m, &cfg, 1), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "--block bottleneck"));
    cfg.block = MFRES_BLOCK_BOTTLENECK, cfg.depth = 50;
    ck_assert_int_eq(mfres_model_create(&m, &cfg, 1), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "9n+2"));
    mfres_model_config_default(&cfg);
    ck_assert_ok(mfres_model_config_from_name(&cfg, "resnext29-8x64d"));
    cfg.block = MFRES_BLOCK_BOTTLENECK;
    ck_assert_int_eq(mfres_model_create(&m, &cfg, 1), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "postact or preact"));
    ck_assert_int_eq(mfres_model_config_from_name(&cfg, "resnext29-8x"), MFRES_EINVAL);
    ck_assert_int_eq(mfres_model_config_from_name(&cfg, "vgg16"), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "resnext29-16x64d"));
    mfres_model_config_default(&cfg);
    cfg.batch = 0;
    ck_assert_int_eq(mfres_model_create(&m, &cfg, 1), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "batch"));
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, ref_gradients_match_finite_differences_postact);
    tcase_add_test(tc, ref_gradients_match_finite_differences_preact);
    tcase_add_test(tc, ref_gradients_match_finite_differences_bottleneck);
    tcase_add_test(tc, ref_gradients_match_finite_differences_resnext_postact);
    tcase_add_test(tc, ref_gradients_match_finite_differences_resnext_preact);
    tcase_add_test(tc, fast_matches_reference_postact_meanfield);
    tcase_add_test(tc, fast_matches_reference_preact_meanfield);
    tcase_add_test(tc, fast_matches_reference_postact_vanilla);
    tcase_add_test(tc, fast_matches_reference_preact_vanilla);
    tcase_add_test(tc, fast_matches_reference_bottleneck_meanfield);
    tcase_add_test(tc, fast_matches_reference_resnext_postact_meanfield);
    tcase_add_test(tc, fast_matches_reference_resnext_preact_meanfield);
    tcase_add_test(tc, fast_matches_reference_bottleneck_vanilla);
    tcase_add_test(tc, unit_tau_equals_vanilla_postact);
    tcase_add_test(tc, unit_tau_equals_vanilla_preact);
    tcase_add_test(tc, unit_tau_equals_vanilla_bottleneck);
    tcase_add_test(tc, unit_tau_equals_vanilla_resnext);
    tcase_add_test(tc, optimiser_step_swaps_blocks_postact);
    tcase_add_test(tc, optimiser_step_swaps_blocks_bottleneck);
    tcase_add_test(tc, optimiser_step_swaps_blocks_resnext);
    tcase_add_test(tc, parameter_counts_match_the_papers);
    tcase_add_test(tc, same_inputs_same_bits);
    tcase_add_test(tc, inference_matches_training_with_batch_statistics_postact);
    tcase_add_test(tc, inference_matches_training_with_batch_statistics_preact);
    tcase_add_test(tc, inference_matches_training_with_batch_statistics_bottleneck);
    tcase_add_test(tc, inference_matches_training_with_batch_statistics_resnext);
    tcase_add_test(tc, inference_matches_reference_postact_meanfield);
    tcase_add_test(tc, inference_matches_reference_preact_meanfield);
    tcase_add_test(tc, inference_matches_reference_bottleneck_meanfield);
    tcase_add_test(tc, inference_matches_reference_resnext_postact_meanfield);
    tcase_add_test(tc, inference_matches_reference_resnext_preact_meanfield);
    tcase_add_test(tc, inference_matches_reference_in_chunks);
    tcase_add_test(tc, bad_configurations_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
