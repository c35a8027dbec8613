/* Theory lab III experiments (`mfres theory birth-death | expansion | particle-limit`): the three
 * directions P1 leaves open (§6.2 birth–death, §2.2 higher-order terms, §3.3 the particle-to-PDE
 * limit), on the particle ResNet. Each prints a table, writes CSV (atomically), a gnuplot script
 * and its PNG into out_dir; docs/theory-lab3.md has the findings and the commands. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/theory_lab3.h"
#include "theory/experiments_particle.h"
#include "theory/fit.h"

/* ---------------- 1. birth-death ---------------- */

enum { BD_INITS = 3, BD_ARMS = 3 };
static const char *const bd_init_names[BD_INITS] = {"usual", "half-space", "cluster"};
static const char *const bd_arm_names[BD_ARMS] = {"wasserstein", "wfr", "wfr-unbalanced"};

/* Re-draws net's particles for an initialisation that violates full support (or keeps the usual one):
 * half-space: every particle has w_1 >= 0 (its first input weight); cluster: each block's particles
 * are one draw plus N(0, (0.01 s)²) per coordinate (s: the init scale). */
static void bd_init(mfres_pnet *net, int init, mfres_rng *rng) {
    const int L = net->cfg.L, M = net->cfg.M, P = net->P, d = net->cfg.d;
    if (init == 1)
        for (size_t i = 0; i < (size_t)L * M; i++) net->theta[i * P + d] = fabs(net->theta[i * P + d]);
    if (init == 2)
        for (int l = 0; l < L; l++) {
            const double *centre = net->theta + (size_t)l * M * P;
            for (int m = 1; m < M; m++)
                for (int q = 0; q < P; q++)
                    net->theta[((size_t)l * M + m) * P + q] = centre[q] + 0.01 * net->cfg.init_scale * mfres_rng_normal(rng);
        }
}

/* Slope of −ln E against training time over the second half of a trajectory (T values, step lr). */
static double late_rate(const double *traj, size_t T, double lr) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int m = 0;
    for (size_t t = T / 2; t < T; t++) {
        if (!(traj[t] > 0)) continue;
        double a = t * lr, b = log(traj[t]);
        sx += a, sy += b, sxx += a * a, sxy += a * b, m++;
    }
    double den = m * sxx - sx * sx;
    return m >= 2 && den != 0 ? -(m * sxy - sx * sy) / den : NAN;
}

int mfres_pexp_birth_death(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    if (ncfg.unit == MFRES_UNIT_MATRIX)
        return mfres_fail(MFRES_EINVAL, "birth-death: needs --unit neuron or neuron-nobias (a mass scales u)");
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long steps = pexp_steps_for(c);
    if (steps < 0) {
        mfres_pdata_free(&D);
        return (int)steps;
    }
    const int S = c->seeds;
    const size_t T = (size_t)steps + 1, runs = (size_t)BD_INITS * BD_ARMS * S;
    double *traj = calloc(runs * T, sizeof(double)), *ess = calloc(runs, sizeof(double));
    pexp_csv cv, sm;
    int ndiv = 0;
    if (!traj || !ess) {
        rc = mfres_fail(MFRES_ENOMEM, "birth-death: out of memory");
        goto done;
    }
    pexp_describe(c, &ncfg, &D);
    printf("# birth-death: L = %d, M = %d, training time %g (%ld steps), %d seeds; rate alpha = %g; the same "
           "particles in every arm\n",
           ncfg.L, ncfg.M, c->time, steps, S, c->rate);
    const double t0 = mfres_now();
    for (int init = 0; init < BD_INITS && !rc; init++)
        for (int s = 0; s < S && !rc; s++)
            for (int arm = 0; arm < BD_ARMS && !rc; arm++) {
                mfres_rng rng;
                mfres_rng_seed(&rng, pexp_mix(c->seed, (uint64_t)(1000 * s + 17)));
                mfres_pnet net;
                if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) break;
                bd_init(&net, init, &rng);
                mfres_pmass pm;
                rc = mfres_pmass_init(&pm, &net, D.n, arm ? c->rate : 0.0, arm != 2);
                double *tr = traj + (((size_t)init * BD_ARMS + arm) * S + s) * T;
                long st = 0;
                for (; st < steps && !rc; st++) {
                    rc = mfres_pmass_step(&pm, &net, D.x, D.y, D.n, c->lr, &tr[st]);
                    if (!rc) rc = pexp_check_diverged(tr[0], tr[st], st, c->lr);
                }
                if (!rc) rc = mfres_pmass_loss_grad(&pm, &net, D.x, D.y, D.n, &tr[T - 1]);
                if (rc == MFRES_ENUMERIC) {
                    /* a run that blows up is a result of the comparison: marked, and the others go on */
                    mfres_log("birth-death: init %s, arm %s, seed %d diverged near training time %g: %s",
                              bd_init_names[init], bd_arm_names[arm], s, (st - 1) * c->lr, mfres_last_error());
                    for (size_t t = st > 0 ? (size_t)st - 1 : 0; t < T; t++) tr[t] = NAN;
                    ndiv++;
                    rc = MFRES_OK;
                }
                if (!rc && isfinite(tr[T - 1])) {
                    /* effective particle count per block, (Σc)² / Σc², averaged over blocks, as a fraction of M */
                    double e = 0;
                    for (int l = 0; l < ncfg.L; l++) {
                        double a = 0, b = 0;
                        for (int m = 0; m < ncfg.M; m++) {
                            double cm = pm.mass[(size_t)l * ncfg.M + m];
                            a += cm, b += cm * cm;
                        }
                        e += a * a / b / ncfg.M / ncfg.L;
                    }
                    ess[((size_t)init * BD_ARMS + arm) * S + s] = e;
                }
                if (rc) rc = mfres_fail_context(rc, "birth-death: init %s, arm %s, seed %d", bd_init_names[init], bd_arm_names[arm], s);
                mfres_pmass_free(&pm);
                mfres_pnet_free(&net);
            }
    if (!rc) mfres_log("birth-death: %d inits x %d arms x %d seeds done (%.1fs)", BD_INITS, BD_ARMS, S, mfres_now() - t0);
    if (rc) goto done;
    printf("%-11s %-15s %12s %10s %12s %14s %10s\n", "init", "arm", "final_loss", "std", "vs_W_ratio", "late_rate",
           "mass_ess");
    if ((rc = pexp_csv_open(&sm, c, "birth_death.csv", "init,arm,seed,final_loss,late_rate,mass_ess"))) goto done;
    for (int init = 0; init < BD_INITS; init++)
        for (int arm = 0; arm < BD_ARMS; arm++) {
            /* statistics over the seeds whose run did not diverge */
            double fin[64], rate[64], ratio = 0, e = 0;
            int wins = 0, nf = 0, npair = 0;
            for (int s = 0; s < S && s < 64; s++) {
                const double *tr = traj + (((size_t)init * BD_ARMS + arm) * S + s) * T;
                const double *w0 = traj + (((size_t)init * BD_ARMS + 0) * S + s) * T;
                const double es = ess[((size_t)init * BD_ARMS + arm) * S + s];
                fprintf(sm.af.fp, "%s,%s,%d,%.6e,%.6e,%.6f\n", bd_init_names[init], bd_arm_names[arm], s, tr[T - 1],
                        late_rate(tr, T, c->lr), isfinite(tr[T - 1]) ? es : NAN);
                if (!isfinite(tr[T - 1])) continue;
                fin[nf] = tr[T - 1], rate[nf] = late_rate(tr, T, c->lr), e += es, nf++;
                if (isfinite(w0[T - 1])) ratio += log(tr[T - 1] / w0[T - 1]), wins += tr[T - 1] < w0[T - 1], npair++;
            }
            char rbuf[64] = "-", dbuf[32] = "";
            if (arm && npair) snprintf(rbuf, sizeof rbuf, "%.3g (%d/%d)", exp(ratio / npair), wins, npair);
            if (nf < (S < 64 ? S : 64)) snprintf(dbuf, sizeof dbuf, "  %d diverged", (S < 64 ? S : 64) - nf);
            if (nf)
                printf("%-11s %-15s %12.4e %10.2e %12s %14.4g %10.3f%s\n", bd_init_names[init], bd_arm_names[arm],
                       pexp_mean(fin, nf), pexp_std(fin, nf), rbuf, pexp_mean(rate, nf), e / nf, dbuf);
            else
                printf("%-11s %-15s %12s %10s %12s %14s %10s%s\n", bd_init_names[init], bd_arm_names[arm], "diverged", "-",
                       "-", "-", "-", dbuf);
        }
    printf("# vs_W_ratio: geometric mean over seeds of final loss / Wasserstein's (seeds where lower); late_rate: "
           "-d ln E / ds over the second half; mass_ess: (sum c)^2 / sum c^2 / M, mean over blocks\n");
    if ((rc = pexp_csv_commit(&sm))) goto done;
    {
        char header[1024] = "time";
        for (int init = 0; init < BD_INITS; init++)
            for (int arm = 0; arm < BD_ARMS; arm++)
                snprintf(header + strlen(header), sizeof header - strlen(header), ",%s/%s", bd_init_names[init],
                         bd_arm_names[arm]);
        if ((rc = pexp_csv_open(&cv, c, "birth_death_traj.csv", header))) goto done;
        for (size_t t = 0; t < T; t++) {
            fprintf(cv.af.fp, "%g", t * c->lr);
            for (int i = 0; i < BD_INITS * BD_ARMS; i++) {
                double m = 0; /* geometric mean over seeds: the loss spans decades */
                for (int s = 0; s < S; s++) m += log(traj[((size_t)i * S + s) * T + t]) / S;
                fprintf(cv.af.fp, ",%.6e", exp(m));
            }
            fprintf(cv.af.fp, "\n");
        }
        if ((rc = pexp_csv_commit(&cv))) goto done;
    }
    rc = pexp_plot(c, "birth_death",
                   "set multiplot layout 1,3 title 'Wasserstein vs Wasserstein-Fisher-Rao (rate %g), geometric mean of %d seeds'\n"
                   "set datafile missing 'nan'\n"
                   "set logscale y\nset format y '%%.0e'\nset xlabel 'training time'\nset ylabel 'training loss'\nset key inside top right font ',8'\n"
                   "do for [i=0:2] {\n"
                   "  set title word('usual half-space cluster', i+1)\n"
                   "  plot for [a=0:2] '%s/birth_death_traj.csv' using 1:(column(2+3*i+a)) with lines lw 2 title "
                   "word('wasserstein wfr wfr-unbalanced', a+1)\n"
                   "}\nunset multiplot\n",
                   c->rate, S, c->out_dir);
    if (!rc && ndiv)
        rc = mfres_fail(MFRES_ENUMERIC, "birth-death: %d of %zu runs diverged (marked in the table, nan in the CSV); "
                        "lower --lr or --rate", ndiv, runs);
done:
    free(traj);
    free(ess);
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- 2. expansion ---------------- */

enum { EX_SCALES = 5 };
static const double ex_scales[EX_SCALES] = {0.125, 0.25, 0.5, 1.0, 2.0};

static double rms_diff(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (a[i] - b[i]) * (a[i] - b[i]);
    return sqrt(s / n);
}

int mfres_pexp_expansion(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    if (ncfg.unit == MFRES_UNIT_MATRIX)
        return mfres_fail(MFRES_EINVAL, "expansion: needs --unit neuron or neuron-nobias");
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const int n = D.n, k = ncfg.k, S = c->seeds, nL = c->nL;
    const size_t nk = (size_t)n * k;
    /* per (scale, L): rel_out1, rel_out2, closed_out, rel_grad1, rel_grad2, closed_grad, abs_rem1, abs_rem2 */
    enum { NQ = 8 };
    double *res = calloc((size_t)EX_SCALES * nL * NQ, sizeof(double));
    double *od = malloc(nk * sizeof(double)), *o1 = malloc(nk * sizeof(double)), *o2 = malloc(nk * sizeof(double));
    double *o0 = malloc(nk * sizeof(double));
    pexp_csv cv, co;
    if (!res || !od || !o1 || !o2 || !o0) {
        rc = mfres_fail(MFRES_ENOMEM, "expansion: out of memory");
        goto done;
    }
    pexp_describe(c, &ncfg, &D);
    printf("# expansion (P1 section 2.2): deep ResNet (Euler, uniform tau, total time 1) vs its expansion in the\n"
           "# residual branches, to order 1 (two-layer ensemble) and order 2 (+ pairwise interaction of blocks a < b);\n"
           "# block scale eps multiplies every u; M = %d, init scale %g, mean of %d seeds.\n"
           "# rel_outK = |out - out_K| / |out - out_0|; closed = 1 - |out - out_2| / |out - out_1| (share of the\n"
           "# ensemble's gap the second-order term closes); rel_gradK = |g - g_K| / |g|, g the theta-gradient of the loss\n",
           ncfg.M, ncfg.init_scale, S);
    printf("%5s %6s %11s %11s %9s %11s %11s %9s\n", "L", "eps", "rel_out1", "rel_out2", "closed", "rel_grad1",
           "rel_grad2", "closed_g");
    for (int si = 0; si < EX_SCALES && !rc; si++)
        for (int a = 0; a < nL && !rc; a++) {
            double *q = res + ((size_t)si * nL + a) * NQ;
            ncfg.L = (int)c->Ls[a];
            for (int s = 0; s < S && !rc; s++) {
                mfres_rng rng;
                mfres_rng_seed(&rng, pexp_mix(c->seed, (uint64_t)(977 * s + 5)) ^ (uint64_t)ncfg.L);
                mfres_pnet net;
                mfres_pnet_work w;
                if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) break;
                const size_t nth = mfres_pnet_num_theta(&net);
                for (size_t i = 0; i < (size_t)ncfg.L * ncfg.M; i++)
                    for (int j = 0; j < ncfg.d; j++) net.theta[i * net.P + j] *= ex_scales[si];
                double *g = calloc(3 * nth, sizeof(double)), E;
                double *g1 = g + nth, *g2 = g1 + nth;
                rc = g ? mfres_pnet_work_alloc(&w, &net, n, mfres_ode_euler, 1) : mfres_fail(MFRES_ENOMEM, "expansion: out of memory");
                if (!rc) {
                    rc = mfres_pnet_loss_grad(&net, &w, D.x, D.y, n, MFRES_GRAD_BACKPROP, &E, g, NULL, NULL, NULL);
                    if (!rc) memcpy(od, w.out, nk * sizeof(double));
                    if (!rc) rc = mfres_pnet_expansion_loss_grad(&net, 1, D.x, D.y, n, o1, &E, g1);
                    if (!rc) rc = mfres_pnet_expansion_loss_grad(&net, 2, D.x, D.y, n, o2, &E, g2);
                    mfres_pnet_work_free(&w);
                }
                if (!rc) {
                    /* out_0 = W1 W2 x: the network without its branches (all u = 0) */
                    for (size_t i = 0; i < (size_t)ncfg.L * ncfg.M; i++)
                        for (int j = 0; j < ncfg.d; j++) net.theta[i * net.P + j] = 0;
                    rc = mfres_pnet_expansion_loss_grad(&net, 1, D.x, D.y, n, o0, &E, NULL);
                }
                if (!rc) {
                    const double gap0 = rms_diff(od, o0, nk), r1 = rms_diff(od, o1, nk), r2 = rms_diff(od, o2, nk);
                    double gn = 0, e1 = 0, e2 = 0;
                    for (size_t i = 0; i < nth; i++)
                        gn += g[i] * g[i], e1 += (g[i] - g1[i]) * (g[i] - g1[i]), e2 += (g[i] - g2[i]) * (g[i] - g2[i]);
                    q[0] += r1 / gap0 / S, q[1] += r2 / gap0 / S;
                    q[2] += (r1 > 0 ? 1 - r2 / r1 : 1) / S;
                    q[3] += sqrt(e1 / gn) / S, q[4] += sqrt(e2 / gn) / S;
                    q[5] += (e1 > 0 ? 1 - sqrt(e2 / e1) : 1) / S;
                    q[6] += r1 / S, q[7] += r2 / S;
                }
                free(g);
                mfres_pnet_free(&net);
            }
            if (rc) break;
            if (c->Ls[a] == 1) /* rounding noise over rounding noise: no share to report */
                printf("%5ld %6g %11.3e %11.3e %9s %11.3e %11.3e %9s  (L = 1: the ResNet is its ensemble)\n", c->Ls[a],
                       ex_scales[si], q[0], q[1], "-", q[3], q[4], "-");
            else
                printf("%5ld %6g %11.3e %11.3e %9.4f %11.3e %11.3e %9.4f\n", c->Ls[a], ex_scales[si], q[0], q[1], q[2],
                       q[3], q[4], q[5]);
        }
    if (rc) goto done;
    if ((rc = pexp_csv_open(&cv, c, "expansion.csv",
                            "L,M,eps,rel_out1,rel_out2,closed_out,rel_grad1,rel_grad2,closed_grad,rem1,rem2")))
        goto done;
    for (int si = 0; si < EX_SCALES; si++)
        for (int a = 0; a < nL; a++) {
            const double *q = res + ((size_t)si * nL + a) * NQ;
            if (c->Ls[a] == 1)
                fprintf(cv.af.fp, "%ld,%d,%g,%.6e,%.6e,,%.6e,%.6e,,%.6e,%.6e\n", c->Ls[a], ncfg.M, ex_scales[si], q[0],
                        q[1], q[3], q[4], q[6], q[7]);
            else
                fprintf(cv.af.fp, "%ld,%d,%g,%.6e,%.6e,%.6f,%.6e,%.6e,%.6f,%.6e,%.6e\n", c->Ls[a], ncfg.M, ex_scales[si],
                        q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]);
        }
    if ((rc = pexp_csv_commit(&cv))) goto done;
    /* the remainder's order in eps: the log-log slope of |out - out_K| over the scales, per L */
    printf("# remainder order in eps (log-log slope of |out - out_K| over eps = 0.125..2; expected 2 and 3), "
           "and over the three smallest eps\n%5s %10s %10s %12s %12s\n", "L", "order1", "order2", "order1_small",
           "order2_small");
    if ((rc = pexp_csv_open(&co, c, "expansion_orders.csv", "L,order1,order2,order1_small,order2_small"))) goto done;
    for (int a = 0; a < nL; a++) {
        double r1[EX_SCALES], r2[EX_SCALES];
        for (int si = 0; si < EX_SCALES; si++)
            r1[si] = res[((size_t)si * nL + a) * NQ + 6], r2[si] = res[((size_t)si * nL + a) * NQ + 7];
        double p1 = theory_loglog_slope(ex_scales, r1, EX_SCALES), p2 = theory_loglog_slope(ex_scales, r2, EX_SCALES);
        double s1 = theory_loglog_slope(ex_scales, r1, 3), s2 = theory_loglog_slope(ex_scales, r2, 3);
        if (c->Ls[a] == 1) {
            printf("%5ld %10s %10s %12s %12s  (no remainder at L = 1)\n", c->Ls[a], "-", "-", "-", "-");
            fprintf(co.af.fp, "1,,,,\n");
            continue;
        }
        printf("%5ld %10.3f %10.3f %12.3f %12.3f\n", c->Ls[a], p1, p2, s1, s2);
        fprintf(co.af.fp, "%ld,%.4f,%.4f,%.4f,%.4f\n", c->Ls[a], p1, p2, s1, s2);
    }
    if ((rc = pexp_csv_commit(&co))) goto done;
    rc = pexp_plot(c, "expansion",
                   "E = '0.125 0.25 0.5 1 2'\n"
                   "set multiplot layout 1,2\nset logscale xy\nset xlabel 'depth L (total time 1)'\nset format y '%%.0e'\n"
                   "set ylabel '|out - out_K| / |out - out_0|'\n"
                   "set title 'output gap: order 1 (dashed), order 2 (solid)'\nset key inside bottom right font ',8'\n"
                   "plot for [i=1:5] '%s/expansion.csv' skip 1 using 1:(($3==word(E,i)+0 && $1>1)?$5:1/0) w lp pt 7 lc i "
                   "title 'eps '.word(E,i), for [i=1:5] '' skip 1 using 1:(($3==word(E,i)+0 && $1>1)?$4:1/0) w l dt 2 lc i "
                   "notitle\n"
                   "unset logscale y\nset format y '%%g'\nset ylabel 'share of the ensemble gap closed'\nset yrange [*:1.01]\n"
                   "set title 'order-2 term: output (points), gradient (lines)'\n"
                   "plot for [i=1:5] '%s/expansion.csv' skip 1 using 1:(($3==word(E,i)+0 && $1>1)?$6:1/0) w p pt 7 lc i "
                   "title 'eps '.word(E,i), for [i=1:5] '' skip 1 using 1:(($3==word(E,i)+0 && $1>1)?$9:1/0) w l lc i "
                   "notitle\n"
                   "unset multiplot\n",
                   c->out_dir, c->out_dir);
done:
    free(res);
    free(od), free(o1), free(o2), free(o0);
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- 3. particle-limit ---------------- */

enum { PL_FUNCS = 3 }; /* test functionals of ρ: mean |u|², mean |w|², mean cos(v·θ) */

static void pl_functionals(const mfres_pnet *net, const double *v, double *phi) {
    const int d = net->cfg.d, P = net->P;
    const size_t N = (size_t)net->cfg.L * net->cfg.M;
    double a = 0, b = 0, cc = 0;
    for (size_t i = 0; i < N; i++) {
        const double *th = net->theta + i * P;
        double dot = 0;
        for (int q = 0; q < d; q++) a += th[q] * th[q], b += th[d + q] * th[d + q];
        for (int q = 0; q < P; q++) dot += v[q] * th[q];
        cc += cos(dot);
    }
    phi[0] = a / N, phi[1] = b / N, phi[2] = cc / N;
}

int mfres_pexp_particle_limit(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    const int L = ncfg.L, nN = c->nN, S = c->seeds;
    for (int i = 0; i < nN; i++)
        if (c->Ns[i] < L || c->Ns[i] % L || (i && c->Ns[i] <= c->Ns[i - 1]))
            return mfres_fail(MFRES_EINVAL,
                              "particle-limit: --N must be increasing multiples of L = %d (particles per block M = N/L); "
                              "got %ld",
                              L, c->Ns[i]);
    if (nN < 3) return mfres_fail(MFRES_EINVAL, "particle-limit: --N needs at least 3 sizes (the last is the reference)");
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long steps = pexp_steps_for(c);
    if (steps < 0) {
        mfres_pdata_free(&D);
        return (int)steps;
    }
    const size_t T = (size_t)steps + 1, Q = 1 + PL_FUNCS; /* loss, then the functionals, at every step */
    double *rec = calloc((size_t)nN * S * T * Q, sizeof(double)), *ref = calloc(T * Q, sizeof(double));
    double *dist = calloc((size_t)nN * (Q + 1), sizeof(double)); /* per N: RMS over seeds of sup_t |q - ref|, spread */
    const int P = ncfg.unit == MFRES_UNIT_MATRIX ? ncfg.d * ncfg.d : 2 * ncfg.d + (ncfg.unit == MFRES_UNIT_NEURON);
    double *v = malloc((size_t)P * sizeof(double));
    pexp_csv cv, ct;
    if (!rec || !ref || !dist || !v) {
        rc = mfres_fail(MFRES_ENOMEM, "particle-limit: out of memory");
        goto done;
    }
    {
        mfres_rng vr;
        mfres_rng_seed(&vr, pexp_mix(c->seed, 0x7e57));
        for (int q = 0; q < P; q++) v[q] = mfres_rng_normal(&vr); /* cos(v·θ): a bounded test function */
    }
    pexp_describe(c, &ncfg, &D);
    const double t0 = mfres_now();
    for (int a = 0; a < nN && !rc; a++) {
        ncfg.M = (int)(c->Ns[a] / L);
        for (int s = 0; s < S && !rc; s++) {
            mfres_rng rng;
            mfres_rng_seed(&rng, pexp_mix(c->seed, (uint64_t)(1000 * s + 23)) ^ (uint64_t)c->Ns[a]);
            mfres_pnet net;
            mfres_pnet_trainer tr;
            mfres_pnet_train_config tc;
            mfres_pnet_train_config_default(&tc);
            tc.lr = c->lr;
            if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) break;
            if ((rc = mfres_pnet_trainer_init(&tr, &net, &tc, D.n, mfres_ode_euler, 1))) {
                mfres_pnet_free(&net);
                break;
            }
            double *r = rec + ((size_t)a * S + s) * T * Q;
            for (size_t t = 0; t < T && !rc; t++) {
                pl_functionals(&net, v, r + t * Q + 1);
                if (t + 1 < T)
                    rc = mfres_pnet_train_step(&net, &tr, D.x, D.y, &rng, r + t * Q, NULL);
                else
                    rc = mfres_pnet_loss(&net, &tr.w, D.x, D.y, D.n, r + t * Q);
                if (!rc) rc = pexp_check_diverged(r[0], r[t * Q], (long)t, c->lr);
            }
            if (rc) rc = mfres_fail_context(rc, "particle-limit: N = %ld, seed %d", c->Ns[a], s);
            mfres_pnet_trainer_free(&tr);
            mfres_pnet_free(&net);
        }
        if (!rc) mfres_log("particle-limit: N = %6ld (M = %5d) done (%.1fs)", c->Ns[a], ncfg.M, mfres_now() - t0);
    }
    if (rc) goto done;
    const int R = nN - 1;
    for (int s = 0; s < S; s++)
        for (size_t i = 0; i < T * Q; i++) ref[i] += rec[((size_t)R * S + s) * T * Q + i] / S;
    for (int a = 0; a < nN; a++) {
        double fin[64];
        for (int s = 0; s < S; s++) {
            const double *r = rec + ((size_t)a * S + s) * T * Q;
            for (size_t q = 0; q < Q; q++) {
                double m = 0;
                for (size_t t = 0; t < T; t++) m = fmax(m, fabs(r[t * Q + q] - ref[t * Q + q]));
                dist[(size_t)a * (Q + 1) + q] += m * m / S;
            }
            if (s < 64) fin[s] = r[(T - 1) * Q];
        }
        for (size_t q = 0; q < Q; q++) dist[(size_t)a * (Q + 1) + q] = sqrt(dist[(size_t)a * (Q + 1) + q]);
        dist[(size_t)a * (Q + 1) + Q] = pexp_std(fin, S < 64 ? S : 64);
    }
    /* fits over N <= N_max / 4 (nearer sizes share too much with the reference's own noise) */
    int nf = 0;
    while (nf < nN && c->Ns[nf] * 4 <= c->Ns[R]) nf++;
    double xs[MFRES_PEXP_MAX_LIST], ys[MFRES_PEXP_MAX_LIST], slope[5];
    for (int a = 0; a < nN; a++) xs[a] = (double)c->Ns[a];
    for (size_t q = 0; q <= Q; q++) {
        for (int a = 0; a < nN; a++) ys[a] = dist[(size_t)a * (Q + 1) + q];
        slope[q] = q == Q ? theory_loglog_slope(xs, ys, R) : theory_loglog_slope(xs, ys, nf);
    }
    printf("# particle-limit (P1 section 3.3): L = %d, N = L*M particles, training time %g (%ld steps of lr %g), %d seeds "
           "per N;\n# reference: the seed mean of N = %ld. dist_X = RMS over seeds of sup_t |X_N(t) - X_ref(t)|; "
           "phi: mean |u|^2, mean |w|^2, mean cos(v.theta); spread: std over seeds of the final loss\n",
           L, c->time, steps, c->lr, S, c->Ns[R]);
    printf("%7s %6s %12s %12s %12s %12s %12s\n", "N", "M", "dist_loss", "dist_u2", "dist_w2", "dist_cos", "spread");
    if ((rc = pexp_csv_open(&cv, c, "particle_limit.csv", "N,M,dist_loss,dist_u2,dist_w2,dist_cos,spread_final_loss")))
        goto done;
    for (int a = 0; a < nN; a++) {
        const double *q = dist + (size_t)a * (Q + 1);
        printf("%7ld %6ld %12.4e %12.4e %12.4e %12.4e %12.4e%s\n", c->Ns[a], c->Ns[a] / L, q[0], q[1], q[2], q[3], q[4],
               a == R ? "  (reference)" : "");
        fprintf(cv.af.fp, "%ld,%ld,%.6e,%.6e,%.6e,%.6e,%.6e\n", c->Ns[a], c->Ns[a] / L, q[0], q[1], q[2], q[3], q[4]);
    }
    printf("fitted rates N^-a over N <= %ld: loss a = %.3f, |u|^2 a = %.3f, |w|^2 a = %.3f, cos a = %.3f; "
           "seed spread of the final loss (every N but the reference) a = %.3f (propagation of chaos: 0.5)\n",
           nf ? c->Ns[nf - 1] : 0, -slope[0], -slope[1], -slope[2], -slope[3], -slope[4]);
    if ((rc = pexp_csv_commit(&cv))) goto done;
    {
        char header[4096] = "time";
        for (int a = 0; a < nN; a++) snprintf(header + strlen(header), sizeof header - strlen(header), ",N%ld", c->Ns[a]);
        if ((rc = pexp_csv_open(&ct, c, "particle_limit_traj.csv", header))) goto done;
        for (size_t t = 0; t < T; t++) {
            fprintf(ct.af.fp, "%g", t * c->lr);
            for (int a = 0; a < nN; a++) {
                double m = 0;
                for (int s = 0; s < S; s++) m += rec[((size_t)a * S + s) * T * Q + t * Q] / S;
                fprintf(ct.af.fp, ",%.8e", m);
            }
            fprintf(ct.af.fp, "\n");
        }
        if ((rc = pexp_csv_commit(&ct))) goto done;
    }
    rc = pexp_plot(c, "particle_limit",
                   "set multiplot layout 1,2\nset logscale xy\nset xlabel 'particles N = L*M'\nset format y '%%.0e'\n"
                   "set ylabel 'distance to the largest N'\nset title 'particle system vs its N -> infinity limit'\n"
                   "set key inside bottom left font ',8'\n"
                   "plot '%s/particle_limit.csv' skip 1 using 1:3 w lp pt 7 t 'loss curve', '' skip 1 using 1:4 w lp pt 5 "
                   "t 'mean |u|^2', '' skip 1 using 1:5 w lp pt 9 t 'mean |w|^2', '' skip 1 using 1:6 w lp pt 11 t "
                   "'mean cos(v.theta)', '' skip 1 using 1:7 w lp pt 6 t 'seed spread of the loss', "
                   "%g/sqrt(x) w l dt 2 lc 'black' "
                   "t 'N^-1/2'\n"
                   "unset logscale x\nset format y '%%g'\nset xlabel 'training time'\nset ylabel 'training loss (mean of seeds)'\n"
                   "set title 'loss curves'\nset key inside top right font ',7'\n"
                   "plot for [i=2:%d] '%s/particle_limit_traj.csv' using 1:i with lines title columnhead(i)\n"
                   "unset multiplot\n",
                   c->out_dir, dist[0] * sqrt((double)c->Ns[0]), nN + 1, c->out_dir);
done:
    free(v);
    free(rec);
    free(ref);
    free(dist);
    mfres_pdata_free(&D);
    return rc;
}
