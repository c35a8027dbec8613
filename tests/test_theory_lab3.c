/* Theory lab III: mass-weighted particles (the network they define, the first variation V and the
 * transport velocity ∇_θV against finite differences, the conservative and unbalanced birth–death
 * steps, bad masses and rates), and the second-order ensemble expansion (its θ-gradient against
 * finite differences, order 1 against the existing ensemble code, the remainder orders in the
 * branch scale). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <unistd.h>

#include "mfres/io.h"
#include "mfres/theory_lab3.h"
#include "testutil.h"

static void make_net(mfres_pnet *net, mfres_pdata *D, int unit, int act, int L, int M, int d, int k, int n,
                     uint64_t seed) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    mfres_pnet_config cfg;
    mfres_pnet_config_default(&cfg);
    cfg.unit = unit;
    cfg.act = act;
    cfg.L = L;
    cfg.M = M;
    cfg.d_in = d;
    cfg.d = d;
    cfg.k = k;
    cfg.act_eps = 0.5;
    ck_assert_ok(mfres_pnet_init(net, &cfg, &rng));
    double t = 0; /* non-uniform sorted τ: h_ℓ enters V and the velocity */
    for (int l = 0; l < L; l++) {
        t += (0.5 + mfres_rng_uniform(&rng)) * 1.3 / L;
        net->tau[l] = t;
    }
    ck_assert_ok(mfres_pdata_synth(D, MFRES_PDATA_TEACHER, n, d, k, &rng));
}

static double h_of(const mfres_pnet *net, int l) { return net->tau[l] - (l ? net->tau[l - 1] : 0.0); }

/* ---------------- mass-weighted particles ---------------- */

/* A particle of mass 2 is two particles of mass 1 (and a mass-0 particle is absent). */
START_TEST(test_mass_equals_duplicates) {
    mfres_pnet net, dup;
    mfres_pdata D;
    make_net(&net, &D, MFRES_UNIT_NEURON, MFRES_ACT_TANH, 2, 3, 3, 1, 9, 5);
    mfres_rng rng;
    mfres_rng_seed(&rng, 9);
    ck_assert_ok(mfres_pnet_init(&dup, &net.cfg, &rng));
    memcpy(dup.tau, net.tau, 2 * sizeof(double));
    const int P = net.P;
    /* net block ℓ particles (a, b, c) with masses (2, 0, 1); dup block ℓ: (a, a, c) with masses 1 */
    for (int l = 0; l < 2; l++) {
        const double *src = net.theta + (size_t)l * 3 * P;
        double *dst = dup.theta + (size_t)l * 3 * P;
        memcpy(dst, src, P * sizeof(double));
        memcpy(dst + P, src, P * sizeof(double));
        memcpy(dst + 2 * P, src + 2 * P, P * sizeof(double));
    }
    mfres_pmass s;
    ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 0.0, 1));
    for (int l = 0; l < 2; l++) s.mass[l * 3] = 2, s.mass[l * 3 + 1] = 0, s.mass[l * 3 + 2] = 1;
    double Em, Ed;
    ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Em));
    mfres_pnet_work w;
    ck_assert_ok(mfres_pnet_work_alloc(&w, &dup, D.n, mfres_ode_euler, 1));
    ck_assert_ok(mfres_pnet_loss(&dup, &w, D.x, D.y, D.n, &Ed));
    ck_assert_msg(fabs(Em - Ed) < 1e-14 * fabs(Ed), "mass-weighted loss %.17g, duplicated particles %.17g", Em, Ed);
    /* the first variation does not depend on the mass of the particle it is taken at: particles 0 and 1
     * of dup are the same point, and V of net's particle 0 (mass 2) is that of dup's particle 0 */
    mfres_pmass sd;
    ck_assert_ok(mfres_pmass_init(&sd, &dup, D.n, 0.0, 1));
    ck_assert_ok(mfres_pmass_loss_grad(&sd, &dup, D.x, D.y, D.n, &Ed));
    for (int l = 0; l < 2; l++) {
        ck_assert_double_eq_tol(s.V[l * 3], sd.V[l * 3], 1e-12);
        ck_assert_double_eq_tol(sd.V[l * 3], sd.V[l * 3 + 1], 1e-12);
        for (int q = 0; q < P; q++) ck_assert_double_eq_tol(s.vel[(size_t)l * 3 * P + q], sd.vel[(size_t)l * 3 * P + q], 1e-12);
    }
    mfres_pmass_free(&sd);
    mfres_pmass_free(&s);
    mfres_pnet_work_free(&w);
    mfres_pnet_free(&dup);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
}
END_TEST

/* V = (M/h) ∂E/∂c and the velocity = (M/(h c)) ∂E/∂θ, against central differences of the loss, at
 * unequal masses, for both neuron units and two activations. */
START_TEST(test_mass_first_variation_fd) {
    const int units[2] = {MFRES_UNIT_NEURON, MFRES_UNIT_NEURON_NOBIAS}, acts[2] = {MFRES_ACT_TANH, MFRES_ACT_SOFTPLUS};
    for (int ui = 0; ui < 2; ui++)
        for (int ai = 0; ai < 2; ai++) {
            mfres_pnet net;
            mfres_pdata D;
            const int L = 3, M = 4;
            make_net(&net, &D, units[ui], acts[ai], L, M, 3, 2, 7, 31 + ui * 2 + ai);
            mfres_pmass s;
            ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 1.0, 1));
            mfres_rng rng;
            mfres_rng_seed(&rng, 77);
            for (int i = 0; i < L * M; i++) s.mass[i] = 0.2 + 1.6 * mfres_rng_uniform(&rng);
            double E, Ep, Em;
            ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &E));
            const size_t nth = mfres_pnet_num_theta(&net);
            double *V = malloc(L * M * sizeof(double)), *vel = malloc(nth * sizeof(double));
            memcpy(V, s.V, L * M * sizeof(double));
            memcpy(vel, s.vel, nth * sizeof(double));
            double worst = 0, vmax = 0, gmax = 0;
            for (int i = 0; i < L * M; i++) vmax = fmax(vmax, fabs(V[i]));
            for (int i = 0; i < L * M; i++) {
                const double hc = 1e-6, save = s.mass[i];
                s.mass[i] = save + hc;
                ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Ep));
                s.mass[i] = save - hc;
                ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Em));
                s.mass[i] = save;
                const double fd = (Ep - Em) / (2 * hc) * M / h_of(&net, i / M);
                worst = fmax(worst, fabs(fd - V[i]) / (fabs(fd) + 0.1 * vmax));
            }
            ck_assert_msg(worst < 1e-6, "unit %d act %d: first variation vs FD of the mass: %.3g", ui, ai, worst);
            /* velocity: ∂E/∂θ = (h c / M) vel */
            for (size_t q = 0; q < nth; q++) gmax = fmax(gmax, fabs(vel[q]));
            worst = 0;
            for (size_t q = 0; q < nth; q++) {
                const int i = (int)(q / net.P), l = i / M;
                const double ht = 1e-6, save = net.theta[q];
                net.theta[q] = save + ht;
                ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Ep));
                net.theta[q] = save - ht;
                ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Em));
                net.theta[q] = save;
                const double fd = (Ep - Em) / (2 * ht) * M / (h_of(&net, l) * s.mass[i]);
                worst = fmax(worst, fabs(fd - vel[q]) / (fabs(fd) + 0.1 * gmax));
            }
            ck_assert_msg(worst < 1e-6, "unit %d act %d: velocity vs FD of theta: %.3g", ui, ai, worst);
            free(V);
            free(vel);
            mfres_pmass_free(&s);
            mfres_pnet_free(&net);
            mfres_pdata_free(&D);
        }
}
END_TEST

/* With masses 1 and rate 0 the step is the existing trainer's (uniform τ: lr·L·M·∂E/∂θ). The
 * conservative step keeps each block's total mass, moves mass toward particles with V below the
 * block average, and to first order in lr lowers the loss by lr·α·Σ c (V − V̄)² (h/M) beyond transport. */
START_TEST(test_mass_step) {
    mfres_pnet net, ref;
    mfres_pdata D;
    const int L = 3, M = 5;
    make_net(&net, &D, MFRES_UNIT_NEURON, MFRES_ACT_TANH, L, M, 3, 1, 11, 3);
    for (int l = 0; l < L; l++) net.tau[l] = (l + 1.0) / L;
    mfres_rng rng;
    mfres_rng_seed(&rng, 1);
    ck_assert_ok(mfres_pnet_init(&ref, &net.cfg, &rng));
    const size_t nth = mfres_pnet_num_theta(&net);
    memcpy(ref.theta, net.theta, nth * sizeof(double));
    memcpy(ref.tau, net.tau, L * sizeof(double));
    mfres_pnet_train_config tc;
    mfres_pnet_train_config_default(&tc);
    tc.lr = 0.05;
    mfres_pnet_trainer tr;
    ck_assert_ok(mfres_pnet_trainer_init(&tr, &ref, &tc, D.n, mfres_ode_euler, 1));
    double E0, E1;
    ck_assert_ok(mfres_pnet_train_step(&ref, &tr, D.x, D.y, &rng, &E0, NULL));
    mfres_pmass s;
    ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 0.0, 1));
    ck_assert_ok(mfres_pmass_step(&s, &net, D.x, D.y, D.n, 0.05, &E1));
    ck_assert_double_eq_tol(E0, E1, 1e-15);
    for (size_t q = 0; q < nth; q++) ck_assert_double_eq_tol(net.theta[q], ref.theta[q], 1e-13);
    for (int i = 0; i < L * M; i++) ck_assert_double_eq(s.mass[i], 1.0);
    mfres_pnet_trainer_free(&tr);
    mfres_pmass_free(&s);

    /* conservative birth–death alone (θ restored after the step): the loss change against its
     * first-order prediction −lr α Σ_ℓ (h/M) Σ_m c (V − V̄)² */
    memcpy(net.theta, ref.theta, nth * sizeof(double));
    ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 2.0, 1));
    double Ea, Eb;
    ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Ea));
    double pred = 0, *V = malloc(L * M * sizeof(double));
    memcpy(V, s.V, L * M * sizeof(double));
    for (int l = 0; l < L; l++) {
        double vb = 0;
        for (int m = 0; m < M; m++) vb += V[l * M + m] / M;
        for (int m = 0; m < M; m++) pred += (1.0 / L) / M * (V[l * M + m] - vb) * (V[l * M + m] - vb);
    }
    const double lr = 1e-4;
    double *th0 = malloc(nth * sizeof(double));
    memcpy(th0, net.theta, nth * sizeof(double));
    ck_assert_ok(mfres_pmass_step(&s, &net, D.x, D.y, D.n, lr, &Ea));
    memcpy(net.theta, th0, nth * sizeof(double));
    for (int l = 0; l < L; l++) {
        double tot = 0;
        for (int m = 0; m < M; m++) {
            tot += s.mass[l * M + m];
            double vb = 0;
            for (int q = 0; q < M; q++) vb += V[l * M + q] / M;
            ck_assert_msg((s.mass[l * M + m] > 1) == (V[l * M + m] < vb), "mass moved against V - Vbar");
        }
        ck_assert_double_eq_tol(tot, M, 1e-12);
    }
    ck_assert_ok(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &Eb));
    const double dE = Eb - Ea, want = -lr * 2.0 * pred;
    ck_assert_msg(fabs(dE / want - 1) < 1e-3, "birth-death loss change %.6g, first-order prediction %.6g", dE, want);
    mfres_pmass_free(&s);

    /* unbalanced: total mass moves by −lr α Σ c V */
    ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 2.0, 0));
    ck_assert_ok(mfres_pmass_step(&s, &net, D.x, D.y, D.n, lr, &Ea));
    double tot = 0, want_tot = 0;
    for (int i = 0; i < L * M; i++) tot += s.mass[i], want_tot += exp(-lr * 2.0 * V[i]);
    ck_assert_double_eq_tol(tot, want_tot, 1e-12);
    mfres_pmass_free(&s);
    free(V);
    free(th0);
    mfres_pnet_free(&ref);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
}
END_TEST

START_TEST(test_mass_bad_input) {
    mfres_pnet net;
    mfres_pdata D;
    make_net(&net, &D, MFRES_UNIT_NEURON, MFRES_ACT_TANH, 2, 3, 3, 1, 5, 8);
    for (int l = 0; l < 2; l++) net.tau[l] = (l + 1.0) / 2;
    mfres_pmass s;
    ck_assert_int_eq(mfres_pmass_init(&s, &net, D.n, -1.0, 1), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "rate"));
    ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 1.0, 1));
    double E;
    s.mass[4] = -0.5;
    ck_assert_int_eq(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &E), MFRES_EINVAL);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "particle 1 of block 1"));
    s.mass[4] = 1;
    for (int m = 0; m < 3; m++) s.mass[m] = 0;
    ck_assert_int_eq(mfres_pmass_loss_grad(&s, &net, D.x, D.y, D.n, &E), MFRES_ENUMERIC);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "block 0 has lost its mass"));
    mfres_pmass_free(&s);
    /* an unbalanced rate so large that one step empties a block */
    ck_assert_ok(mfres_pmass_init(&s, &net, D.n, 1e6, 0));
    int rc = MFRES_OK;
    for (int i = 0; i < 20 && rc == MFRES_OK; i++) rc = mfres_pmass_step(&s, &net, D.x, D.y, D.n, 1.0, &E);
    ck_assert_int_eq(rc, MFRES_ENUMERIC);
    mfres_pmass_free(&s);
    /* matrix units have no outer weight to carry a mass */
    mfres_pnet mnet;
    mfres_pdata D2;
    make_net(&mnet, &D2, MFRES_UNIT_MATRIX, MFRES_ACT_TANH, 2, 3, 3, 1, 5, 8);
    ck_assert_int_eq(mfres_pmass_init(&s, &mnet, D2.n, 1.0, 1), MFRES_EINVAL);
    mfres_pnet_free(&mnet);
    mfres_pdata_free(&D2);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
}
END_TEST

/* ---------------- the expansion ---------------- */

START_TEST(test_expansion_order1_matches_ensemble) {
    mfres_pnet net;
    mfres_pdata D;
    make_net(&net, &D, MFRES_UNIT_NEURON, MFRES_ACT_TANH, 4, 5, 3, 2, 9, 12);
    const size_t nth = mfres_pnet_num_theta(&net);
    double *g1 = calloc(nth, sizeof(double)), *ge = calloc(nth, sizeof(double)), o1[18], oe[18], E1, Ee;
    mfres_pnet_work w;
    ck_assert_ok(mfres_pnet_work_alloc(&w, &net, D.n, mfres_ode_euler, 1));
    ck_assert_ok(mfres_pnet_expansion_loss_grad(&net, 1, D.x, D.y, D.n, o1, &E1, g1));
    ck_assert_ok(mfres_pnet_ensemble_loss_grad(&net, &w, D.x, D.y, D.n, oe, &Ee, ge));
    ck_assert_double_eq_tol(E1, Ee, 1e-14);
    ck_assert_double_lt(test_rel_err_f64(o1, oe, 18), 1e-14);
    ck_assert_double_lt(test_rel_err_f64(g1, ge, nth), 1e-13);
    free(g1), free(ge);
    mfres_pnet_work_free(&w);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
}
END_TEST

START_TEST(test_expansion_order2_grad_fd) {
    const int units[2] = {MFRES_UNIT_NEURON, MFRES_UNIT_NEURON_NOBIAS};
    const int acts[4] = {MFRES_ACT_TANH, MFRES_ACT_SOFTPLUS, MFRES_ACT_SIGMOID, MFRES_ACT_RELU_REG};
    for (int ui = 0; ui < 2; ui++)
        for (int ai = 0; ai < 4; ai++) {
            mfres_pnet net;
            mfres_pdata D;
            make_net(&net, &D, units[ui], acts[ai], 4, 3, 3, 2, 7, 50 + 4 * ui + ai);
            const size_t nth = mfres_pnet_num_theta(&net);
            double *g = calloc(nth, sizeof(double)), E, Ep, Em, gmax = 0, worst = 0;
            ck_assert_ok(mfres_pnet_expansion_loss_grad(&net, 2, D.x, D.y, D.n, NULL, &E, g));
            for (size_t q = 0; q < nth; q++) gmax = fmax(gmax, fabs(g[q]));
            for (size_t q = 0; q < nth; q++) {
                const double h = 1e-6, save = net.theta[q];
                net.theta[q] = save + h;
                ck_assert_ok(mfres_pnet_expansion_loss_grad(&net, 2, D.x, D.y, D.n, NULL, &Ep, NULL));
                net.theta[q] = save - h;
                ck_assert_ok(mfres_pnet_expansion_loss_grad(&net, 2, D.x, D.y, D.n, NULL, &Em, NULL));
                net.theta[q] = save;
                const double fd = (Ep - Em) / (2 * h);
                worst = fmax(worst, fabs(fd - g[q]) / (fabs(fd) + 0.1 * gmax));
            }
            ck_assert_msg(worst < 1e-6, "unit %s act %s: second-order gradient vs FD %.3g", mfres_unit_name(units[ui]),
                          mfres_act_name(acts[ai]), worst);
            free(g);
            mfres_pnet_free(&net);
            mfres_pdata_free(&D);
        }
}
END_TEST

/* Scaling every branch by ε (u ← ε u): deep − order-1 shrinks like ε², deep − order-2 like ε³. */
START_TEST(test_expansion_remainder_orders) {
    mfres_pnet net;
    mfres_pdata D;
    make_net(&net, &D, MFRES_UNIT_NEURON, MFRES_ACT_TANH, 6, 8, 4, 1, 10, 4);
    const size_t nth = mfres_pnet_num_theta(&net);
    double *u0 = malloc(nth * sizeof(double));
    memcpy(u0, net.theta, nth * sizeof(double));
    mfres_pnet_work w;
    ck_assert_ok(mfres_pnet_work_alloc(&w, &net, D.n, mfres_ode_euler, 1));
    double r1[2], r2[2], od[10], o1[10], o2[10], E;
    for (int e = 0; e < 2; e++) {
        const double eps = e ? 0.025 : 0.05;
        for (size_t i = 0; i < (size_t)6 * 8; i++)
            for (int q = 0; q < 4; q++) net.theta[i * net.P + q] = eps * u0[i * net.P + q];
        ck_assert_ok(mfres_pnet_forward(&net, &w, D.x, D.n, od));
        ck_assert_ok(mfres_pnet_expansion_loss_grad(&net, 1, D.x, D.y, D.n, o1, &E, NULL));
        ck_assert_ok(mfres_pnet_expansion_loss_grad(&net, 2, D.x, D.y, D.n, o2, &E, NULL));
        r1[e] = test_rel_err_f64(o1, od, 10);
        r2[e] = test_rel_err_f64(o2, od, 10);
    }
    const double p1 = log2(r1[0] / r1[1]), p2 = log2(r2[0] / r2[1]);
    ck_assert_msg(fabs(p1 - 2) < 0.1 && fabs(p2 - 3) < 0.1, "remainder orders %.3f (want 2) and %.3f (want 3)", p1, p2);
    ck_assert_double_lt(r2[1], 0.1 * r1[1]);
    free(u0);
    mfres_pnet_work_free(&w);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
}
END_TEST

/* ---------------- particle files ---------------- */

/* Save, load: the same network bit for bit; damaged files are refused with the file named. */
START_TEST(test_particles_save_load) {
    char dir[] = "/tmp/mfres_particles_XXXXXX", path[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    mfres_pnet net, back;
    mfres_pdata D;
    make_net(&net, &D, MFRES_UNIT_NEURON_NOBIAS, MFRES_ACT_SOFTPLUS, 3, 4, 5, 2, 6, 44);
    ck_assert_ok(mfres_pnet_save(&net, dir));
    ck_assert_ok(mfres_pnet_load(&back, dir));
    ck_assert_int_eq(back.cfg.unit, net.cfg.unit);
    ck_assert_int_eq(back.cfg.act, net.cfg.act);
    ck_assert_int_eq(back.cfg.L, 3);
    ck_assert_int_eq(back.cfg.M, 4);
    ck_assert_int_eq(back.cfg.d, 5);
    ck_assert_int_eq(back.cfg.k, 2);
    ck_assert_double_eq(back.cfg.act_eps, net.cfg.act_eps);
    ck_assert_int_eq(memcmp(back.theta, net.theta, mfres_pnet_num_theta(&net) * sizeof(double)), 0);
    ck_assert_int_eq(memcmp(back.tau, net.tau, 3 * sizeof(double)), 0);
    ck_assert_int_eq(memcmp(back.W2, net.W2, 25 * sizeof(double)), 0);
    ck_assert_int_eq(memcmp(back.W1, net.W1, 10 * sizeof(double)), 0);
    mfres_pnet_free(&back);
    /* a NaN in θ: the error names theta.npy and the entry */
    double *th = malloc(mfres_pnet_num_theta(&net) * sizeof(double));
    memcpy(th, net.theta, mfres_pnet_num_theta(&net) * sizeof(double));
    th[net.P + 2] = NAN;
    snprintf(path, sizeof path, "%s/theta.npy", dir);
    ck_assert_ok(mfres_npy_save_f64(path, th, 12, net.P));
    ck_assert_int_eq(mfres_pnet_load(&back, dir), MFRES_ENUMERIC);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "theta.npy: entry (row 2, column 3) is nan"));
    /* a θ of the wrong shape */
    ck_assert_ok(mfres_npy_save_f64(path, net.theta, 11, net.P));
    ck_assert_int_eq(mfres_pnet_load(&back, dir), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "theta.npy is 11"));
    ck_assert_ok(mfres_npy_save_f64(path, net.theta, 12, net.P));
    /* τ out of order */
    double tau[3] = {net.tau[1], net.tau[0], net.tau[2]};
    snprintf(path, sizeof path, "%s/tau.npy", dir);
    ck_assert_ok(mfres_npy_save_f64(path, tau, 3, 1));
    ck_assert_int_eq(mfres_pnet_load(&back, dir), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "tau must be sorted"));
    ck_assert_ok(mfres_npy_save_f64(path, net.tau, 3, 1));
    ck_assert_ok(mfres_pnet_load(&back, dir));
    mfres_pnet_free(&back);
    /* another version, and a P that does not fit the unit */
    snprintf(path, sizeof path, "%s/particles.json", dir);
    const char *v2 = "{\"format\": \"mfres-particles\", \"version\": 2}";
    ck_assert_ok(mfres_write_file_atomic(path, v2, strlen(v2)));
    ck_assert_int_eq(mfres_pnet_load(&back, dir), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "found version 2, expected 1"));
    const char *badp = "{\"format\": \"mfres-particles\", \"version\": 1, \"unit\": \"neuron\", \"act\": \"tanh\", "
                       "\"act_eps\": 0.5, \"L\": 3, \"M\": 4, \"d\": 5, \"d_in\": 5, \"k\": 2, \"P\": 10}";
    ck_assert_ok(mfres_write_file_atomic(path, badp, strlen(badp)));
    ck_assert_int_eq(mfres_pnet_load(&back, dir), MFRES_EFORMAT);
    ck_assert_msg(strstr(mfres_last_error(), "has 11 parameters") != NULL, "%s", mfres_last_error());
    const char *names[] = {"theta.npy", "tau.npy", "W2.npy", "W1.npy", "particles.json"};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    ck_assert_int_eq(rmdir(dir), 0);
    free(th);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("theory_lab3");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_mass_equals_duplicates);
    tcase_add_test(tc, test_mass_first_variation_fd);
    tcase_add_test(tc, test_mass_step);
    tcase_add_test(tc, test_mass_bad_input);
    tcase_add_test(tc, test_expansion_order1_matches_ensemble);
    tcase_add_test(tc, test_expansion_order2_grad_fd);
    tcase_add_test(tc, test_expansion_remainder_orders);
    tcase_add_test(tc, test_particles_save_load);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
