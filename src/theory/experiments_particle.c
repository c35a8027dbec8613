/* Theory lab I experiments on the particle mean-field ResNet (P1, P2, P2'):
 * zero-loss, mean-field-limit, adjoint, ensemble, sorted-tau, and the benchmark.
 * Each writes <out>/<name>.csv (atomically), <out>/<name>.gp and, through gnuplot,
 * <out>/<name>.png; the table on stdout is the headline. */
#include "theory/experiments_particle.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/io.h"

void mfres_pexp_config_default(mfres_pexp_config *c) {
    memset(c, 0, sizeof *c);
    c->seed = 1;
    c->seeds = 3;
    mfres_pnet_config_default(&c->net);
    c->data_kind = MFRES_PDATA_TEACHER;
    c->n = 32;
    c->lr = 0.5;
    c->time = 50;
    c->method = mfres_ode_euler;
    c->substeps = 1;
    c->target = 1e-3;
    c->tau_lr_mult = 1.0;
    c->steps = 200;
    c->rate = 1.0;
    c->conservative = 1;
}

/* ---------------- helpers ---------------- */

uint64_t pexp_mix(uint64_t a, uint64_t b) {
    uint64_t z = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
    return z ^ (z >> 29);
}

/* The data set shared by every run of an experiment (synthetic from seed, or a file). */
int pexp_load_data(const mfres_pexp_config *c, mfres_pdata *D, mfres_pnet_config *net) {
    int rc;
    if (c->data_path) {
        rc = mfres_pdata_load(D, c->data_path, net->k);
        if (rc) return rc;
        net->d_in = D->d_in;
    } else {
        mfres_rng rng;
        mfres_rng_seed(&rng, pexp_mix(c->seed, 0xda7a));
        rc = mfres_pdata_synth(D, c->data_kind, c->n, net->d_in, net->k, &rng);
        if (rc) return rc;
    }
    net->head_seed = c->seed;
    return MFRES_OK;
}

long pexp_steps_for(const mfres_pexp_config *c) {
    const double s = c->time / c->lr;
    if (!(s <= MFRES_PEXP_MAX_STEPS))
        return mfres_fail(MFRES_EINVAL, "--time %g / --lr %g is %g training steps; at most %g (raise --lr or lower --time)",
                          c->time, c->lr, s, (double)MFRES_PEXP_MAX_STEPS);
    return s < 1.5 ? 1 : lround(s);
}

int pexp_csv_open(pexp_csv *o, const mfres_pexp_config *c, const char *name, const char *header) {
    snprintf(o->path, sizeof o->path, "%s/%s", c->out_dir, name);
    int rc = mfres_atomic_open(&o->af, o->path);
    if (rc) return rc;
    fprintf(o->af.fp, "%s\n", header);
    return MFRES_OK;
}

int pexp_csv_commit(pexp_csv *o) {
    int rc = mfres_atomic_commit(&o->af);
    if (!rc) mfres_log("wrote %s", o->path);
    return rc;
}

/* Writes <out>/<name>.gp (the script text, printf-style) and runs gnuplot on it. */
int pexp_plot(const mfres_pexp_config *c, const char *name, const char *fmt, ...) {
    char body[16384], path[4096];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof body) return mfres_fail(MFRES_EINVAL, "plot script for %s too long", name);
    char full[16384 + 8192];
    int n2 = snprintf(full, sizeof full,
                      "# %s: written by mfres theory; run `gnuplot %s.gp` from anywhere.\n"
                      "set datafile separator ','\nset terminal pngcairo size 900,600 noenhanced\n"
                      "set output '%s/%s.png'\nset grid\nset key outside right\n%s",
                      name, name, c->out_dir, name, body);
    if (n2 < 0 || (size_t)n2 >= sizeof full) return mfres_fail(MFRES_EINVAL, "plot script for %s too long", name);
    snprintf(path, sizeof path, "%s/%s.gp", c->out_dir, name);
    int rc = mfres_write_file_atomic(path, full, (size_t)n2);
    if (rc) return rc;
    /* The CSV is the result and is already written: a failing gnuplot costs the picture only. */
    if (mfres_gnuplot_run(path) != MFRES_OK)
        mfres_log("warning: no %s/%s.png (%s); the CSV files are complete, rerun `gnuplot %s`", c->out_dir, name,
                  mfres_last_error(), path);
    else
        mfres_log("plotted %s/%s.png", c->out_dir, name);
    return MFRES_OK;
}

/* One training run: particles from seed_run; records the loss before each step into traj
 * (steps + 1 values: the last is after the final step), the final outputs into out (n×k). */
static int train_run(const mfres_pexp_config *c, const mfres_pnet_config *ncfg, const mfres_pdata *D,
                     uint64_t seed_run, long steps, int train_tau, double *traj, double *out, long *inversions,
                     mfres_pnet *keep) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed_run);
    mfres_pnet net;
    int rc = mfres_pnet_init(&net, ncfg, &rng);
    if (rc) return rc;
    mfres_pnet_train_config tc;
    mfres_pnet_train_config_default(&tc);
    tc.lr = c->lr;
    tc.batch = c->batch;
    tc.train_tau = train_tau;
    tc.tau_lr_mult = c->tau_lr_mult;
    mfres_pnet_trainer tr;
    rc = mfres_pnet_trainer_init(&tr, &net, &tc, D->n, c->method, c->substeps);
    if (rc) {
        mfres_pnet_free(&net);
        return rc;
    }
    double E0 = 0;
    for (long s = 0; s < steps && !rc; s++) {
        double E;
        long inv = 0;
        rc = mfres_pnet_train_step(&net, &tr, D->x, D->y, &rng, &E, &inv);
        if (s == 0) E0 = E;
        if (!rc) rc = pexp_check_diverged(E0, E, s, c->lr);
        if (traj) traj[s] = E;
        if (inversions) inversions[s] = inv;
    }
    mfres_pnet_trainer_free(&tr);
    if (!rc) {
        /* the final full-batch loss and outputs */
        mfres_pnet_work w;
        rc = mfres_pnet_work_alloc(&w, &net, D->n, c->method, c->substeps);
        if (!rc) {
            double E;
            rc = mfres_pnet_loss(&net, &w, D->x, D->y, D->n, &E);
            if (!rc && traj) traj[steps] = E;
            if (!rc && out) memcpy(out, w.out, (size_t)D->n * ncfg->k * sizeof(double));
            mfres_pnet_work_free(&w);
        }
    }
    if (rc) {
        mfres_pnet_free(&net);
        return mfres_fail_context(rc, "training L = %d, M = %d", ncfg->L, ncfg->M);
    }
    if (keep)
        *keep = net;
    else
        mfres_pnet_free(&net);
    return MFRES_OK;
}

int pexp_check_diverged(double E0, double E, long step, double lr) {
    if (isfinite(E) && !(E > MFRES_PEXP_DIVERGE * E0))
        return MFRES_OK;
    return mfres_fail(MFRES_ENUMERIC,
                      "training diverged: the loss is %g at step %ld (training time %g), %g times the initial %g; "
                      "lower --lr",
                      E, step, step * lr, E / E0, E0);
}

double pexp_mean(const double *a, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i];
    return s / n;
}
double pexp_std(const double *a, int n) {
    if (n < 2) return 0;
    double m = pexp_mean(a, n), s = 0;
    for (int i = 0; i < n; i++) s += (a[i] - m) * (a[i] - m);
    return sqrt(s / (n - 1));
}

void pexp_describe(const mfres_pexp_config *c, const mfres_pnet_config *n, const mfres_pdata *D) {
    printf("# model: unit %s, act %s, d_in %d, d %d, k %d, init scale %g; data: %s, n = %d; %s x %d sub-step%s; "
           "lr %g on the mean-field time scale, batch %s; seed %llu\n",
           mfres_unit_name(n->unit), mfres_act_name(n->act), n->d_in, n->d, n->k, n->init_scale,
           c->data_path ? c->data_path
                        : (c->data_kind == MFRES_PDATA_TEACHER          ? "two-layer teacher"
                           : c->data_kind == MFRES_PDATA_TEACHER_RESNET ? "ResNet teacher"
                                                                        : "random labels"),
           D->n, c->method->name, c->substeps, c->substeps == 1 ? "" : "s", c->lr, c->batch ? "minibatch" : "full",
           (unsigned long long)c->seed);
}

/* ---------------- 1. zero-loss ---------------- */

int mfres_pexp_zero_loss(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long steps = pexp_steps_for(c);
    if (steps < 0) {
        mfres_pdata_free(&D);
        return (int)steps;
    }
    const int S = c->seeds, nL = c->nL, nM = c->nM;
    double *final = calloc((size_t)nL * nM * S, sizeof(double));
    pexp_csv runs, sum;
    if (!final) return mfres_fail(MFRES_ENOMEM, "zero-loss: out of memory");
    rc = pexp_csv_open(&runs, c, "zero_loss_runs.csv", "L,M,seed,steps,time,final_loss");
    if (rc) goto done;
    pexp_describe(c, &ncfg, &D);
    printf("# zero-loss: final training loss after training time %g (%ld steps), mean over %d seeds\n", c->time,
           steps, S);
    double t0 = mfres_now();
    for (int a = 0; a < nL; a++)
        for (int b = 0; b < nM; b++)
            for (int s = 0; s < S && !rc; s++) {
                ncfg.L = (int)c->Ls[a];
                ncfg.M = (int)c->Ms[b];
                double *traj = malloc((size_t)(steps + 1) * sizeof(double));
                if (!traj) {
                    rc = mfres_fail(MFRES_ENOMEM, "zero-loss: out of memory");
                    break;
                }
                rc = train_run(c, &ncfg, &D, pexp_mix(c->seed, (uint64_t)(1000 * s + 7)) ^ (uint64_t)(ncfg.L * 131 + ncfg.M),
                               steps, 0, traj, NULL, NULL, NULL);
                if (!rc) {
                    final[((size_t)a * nM + b) * S + s] = traj[steps];
                    fprintf(runs.af.fp, "%d,%d,%d,%ld,%g,%.6e\n", ncfg.L, ncfg.M, s, steps, steps * c->lr,
                            traj[steps]);
                    if (s == S - 1)
                        mfres_log("zero-loss: L %3d M %4d  loss %.3e  (%.1fs)", ncfg.L, ncfg.M,
                                  pexp_mean(final + ((size_t)a * nM + b) * S, S), mfres_now() - t0);
                }
                free(traj);
            }
    if (rc) {
        mfres_atomic_abort(&runs.af);
        goto done;
    }
    if ((rc = pexp_csv_commit(&runs))) goto done;
    rc = pexp_csv_open(&sum, c, "zero_loss.csv", "L,M,LM,mean_loss,min_loss,max_loss,reached");
    if (rc) goto done;
    printf("%6s", "L \\ M");
    for (int b = 0; b < nM; b++) printf(" %10ld", c->Ms[b]);
    printf("\n");
    long best_LM = -1, best_L = 0, best_M = 0;
    for (int a = 0; a < nL; a++) {
        printf("%6ld", c->Ls[a]);
        for (int b = 0; b < nM; b++) {
            const double *f = final + ((size_t)a * nM + b) * S;
            double mn = f[0], mx = f[0];
            int reached = 0;
            for (int s = 0; s < S; s++) {
                mn = fmin(mn, f[s]);
                mx = fmax(mx, f[s]);
                reached += f[s] < c->target;
            }
            printf(" %10.3e", pexp_mean(f, S));
            fprintf(sum.af.fp, "%ld,%ld,%ld,%.6e,%.6e,%.6e,%d\n", c->Ls[a], c->Ms[b], c->Ls[a] * c->Ms[b],
                    pexp_mean(f, S), mn, mx, reached);
            long LM = c->Ls[a] * c->Ms[b];
            if (reached == S && (best_LM < 0 || LM < best_LM || (LM == best_LM && c->Ls[a] < best_L))) {
                best_LM = LM;
                best_L = c->Ls[a];
                best_M = c->Ms[b];
            }
        }
        printf("\n");
    }
    if (best_LM > 0)
        printf("smallest (L, M) with every seed below eps = %g: L = %ld, M = %ld (L*M = %ld)\n", c->target, best_L,
               best_M, best_LM);
    else
        printf("no (L, M) in the grid brought every seed below eps = %g; try --time %g\n", c->target, 4 * c->time);
    if ((rc = pexp_csv_commit(&sum))) goto done;
    {
        char list[512] = "";
        for (int a = 0; a < nL; a++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%ld", a ? " " : "", c->Ls[a]);
        rc = pexp_plot(c, "zero_loss",
                  "set title 'zero-loss: final training loss at training time %g (mean of %d seeds)'\n"
                  "set logscale xy\nset xlabel 'particles L*M'\nset ylabel 'training loss'\n"
                  "plot for [Lv in '%s'] '%s/zero_loss.csv' skip 1 using 3:(($1==Lv+0)?$4:1/0) with linespoints "
                  "pt 7 title 'L='.Lv, %g with lines dt 2 lc 'black' title 'eps'\n",
                  c->time, S, list, c->out_dir, c->target);
    }
done:
    free(final);
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- 2. mean-field-limit ---------------- */

int mfres_pexp_mean_field_limit(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long steps = pexp_steps_for(c);
    if (steps < 0) {
        mfres_pdata_free(&D);
        return (int)steps;
    }
    const int S = c->seeds, nL = c->nL, nM = c->nM, nc = nL * nM, n = D.n, k = ncfg.k;
    const size_t T = (size_t)steps + 1;
    double *traj = calloc((size_t)nc * S * T, sizeof(double));
    double *outs = calloc((size_t)nc * S * n * k, sizeof(double));
    double *dist = calloc((size_t)nc * 3, sizeof(double)); /* dist_out, dist_traj, spread */
    if (!traj || !outs || !dist) {
        rc = mfres_fail(MFRES_ENOMEM, "mean-field-limit: out of memory");
        goto done;
    }
    pexp_describe(c, &ncfg, &D);
    double t0 = mfres_now();
    for (int a = 0; a < nL && !rc; a++)
        for (int b = 0; b < nM && !rc; b++)
            for (int s = 0; s < S && !rc; s++) {
                int i = a * nM + b;
                ncfg.L = (int)c->Ls[a];
                ncfg.M = (int)c->Ms[b];
                rc = train_run(c, &ncfg, &D, pexp_mix(c->seed, (uint64_t)(1000 * s + 11)) ^ (uint64_t)(ncfg.L * 131 + ncfg.M),
                               steps, 0, traj + ((size_t)i * S + s) * T, outs + ((size_t)i * S + s) * n * k, NULL, NULL);
                if (!rc && s == S - 1)
                    mfres_log("mean-field-limit: L %3d M %4d done (%.1fs)", ncfg.L, ncfg.M, mfres_now() - t0);
            }
    if (rc) goto done;
    /* the reference: the largest run (last L, last M), averaged over its seeds */
    const int ref = nc - 1;
    double *ref_out = calloc((size_t)n * k, sizeof(double)), *ref_traj = calloc(T, sizeof(double));
    if (!ref_out || !ref_traj) {
        free(ref_out);
        free(ref_traj);
        rc = mfres_fail(MFRES_ENOMEM, "mean-field-limit: out of memory");
        goto done;
    }
    for (int s = 0; s < S; s++) {
        for (size_t q = 0; q < (size_t)n * k; q++) ref_out[q] += outs[((size_t)ref * S + s) * n * k + q] / S;
        for (size_t t = 0; t < T; t++) ref_traj[t] += traj[((size_t)ref * S + s) * T + t] / S;
    }
    for (int i = 0; i < nc; i++) {
        double fin[64], dO = 0, dT = 0;
        for (int s = 0; s < S; s++) {
            const double *o = outs + ((size_t)i * S + s) * n * k, *tr = traj + ((size_t)i * S + s) * T;
            double e = 0, m = 0;
            for (size_t q = 0; q < (size_t)n * k; q++) e += (o[q] - ref_out[q]) * (o[q] - ref_out[q]);
            for (size_t t = 0; t < T; t++) m = fmax(m, fabs(tr[t] - ref_traj[t]));
            dO += sqrt(e / n) / S;
            dT += m / S;
            fin[s < 64 ? s : 63] = tr[T - 1];
        }
        dist[i * 3] = dO;
        dist[i * 3 + 1] = dT;
        dist[i * 3 + 2] = pexp_std(fin, S < 64 ? S : 64);
    }
    /* fit dist_out ≈ α/L + β/√(LM) over the non-reference runs, weighted by 1/dist² */
    double A11 = 0, A12 = 0, A22 = 0, r1 = 0, r2 = 0;
    for (int i = 0; i < nc - 1; i++) {
        double L = (double)c->Ls[i / nM], M = (double)c->Ms[i % nM], y = dist[i * 3];
        if (!(y > 0)) continue;
        double w = 1.0 / (y * y), f1 = 1.0 / L, f2 = 1.0 / sqrt(L * M);
        A11 += w * f1 * f1, A12 += w * f1 * f2, A22 += w * f2 * f2, r1 += w * f1 * y, r2 += w * f2 * y;
    }
    double det = A11 * A22 - A12 * A12, alpha = 0, beta = 0;
    if (fabs(det) > 1e-300) {
        alpha = (r1 * A22 - r2 * A12) / det;
        beta = (A11 * r2 - A12 * r1) / det;
    }
    if (alpha < 0 || !(fabs(det) > 1e-300)) alpha = 0, beta = A22 > 0 ? r2 / A22 : 0;
    if (beta < 0) beta = 0, alpha = A11 > 0 ? r1 / A11 : 0;
    printf("# mean-field-limit: %d seeds per size, training time %g (%ld steps); reference: L = %ld, M = %ld\n", S,
           c->time, steps, c->Ls[nL - 1], c->Ms[nM - 1]);
    printf("%5s %5s %8s %12s %12s %12s %12s %12s\n", "L", "M", "L*M", "final_loss", "seed_spread", "dist_out",
           "dist_traj", "fit");
    pexp_csv sum, tr;
    if ((rc = pexp_csv_open(&sum, c, "mean_field_limit.csv", "L,M,LM,final_loss,spread,dist_out,dist_traj,fit"))) {
        free(ref_out), free(ref_traj);
        goto done;
    }
    for (int i = 0; i < nc; i++) {
        long L = c->Ls[i / nM], M = c->Ms[i % nM];
        double fl = 0;
        for (int s = 0; s < S; s++) fl += traj[((size_t)i * S + s) * T + T - 1] / S;
        double fit = alpha / L + beta / sqrt((double)L * M);
        printf("%5ld %5ld %8ld %12.4e %12.4e %12.4e %12.4e %12.4e%s\n", L, M, L * M, fl, dist[i * 3 + 2], dist[i * 3],
               dist[i * 3 + 1], fit, i == ref ? "  (reference)" : "");
        fprintf(sum.af.fp, "%ld,%ld,%ld,%.6e,%.6e,%.6e,%.6e,%.6e\n", L, M, L * M, fl, dist[i * 3 + 2], dist[i * 3],
                dist[i * 3 + 1], fit);
    }
    printf("fit: dist_out ~ %.4g / L + %.4g / sqrt(L*M)\n", alpha, beta);
    rc = pexp_csv_commit(&sum);
    /* trajectories: mean over seeds per size, one column per size */
    if (!rc) {
        char header[4096] = "time";
        for (int i = 0; i < nc; i++)
            snprintf(header + strlen(header), sizeof header - strlen(header), ",L%ld_M%ld", c->Ls[i / nM],
                     c->Ms[i % nM]);
        rc = pexp_csv_open(&tr, c, "mean_field_limit_traj.csv", header);
    }
    if (!rc) {
        for (size_t t = 0; t < T; t++) {
            fprintf(tr.af.fp, "%g", (double)t * c->lr);
            for (int i = 0; i < nc; i++) {
                double m = 0;
                for (int s = 0; s < S; s++) m += traj[((size_t)i * S + s) * T + t] / S;
                fprintf(tr.af.fp, ",%.6e", m);
            }
            fprintf(tr.af.fp, "\n");
        }
        rc = pexp_csv_commit(&tr);
    }
    free(ref_out);
    free(ref_traj);
    if (!rc)
        rc = pexp_plot(c, "mean_field_limit",
                  "set multiplot layout 1,2\nset logscale xy\nset xlabel 'L*M'\nset ylabel 'distance to the largest run'\n"
                  "set title 'output distance (points) and fit %.3g/L + %.3g/sqrt(LM)'\nset key bottom left\n"
                  "plot '%s/mean_field_limit.csv' skip 1 using 3:6 with points pt 7 title 'dist_out', "
                  "'' skip 1 using 3:8 with points pt 6 title 'fit', '' skip 1 using 3:5 with points pt 2 title "
                  "'seed spread of the loss'\n"
                  "unset logscale x\nset xlabel 'training time'\nset ylabel 'training loss (mean of seeds)'\n"
                  "set title 'loss trajectories'\nset key top right font ',7'\n"
                  "plot for [i=2:%d] '%s/mean_field_limit_traj.csv' using 1:i with lines title columnhead(i)\n"
                  "unset multiplot\n",
                  alpha, beta, c->out_dir, nc + 1, c->out_dir);
done:
    free(traj);
    free(outs);
    free(dist);
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- 3. adjoint ---------------- */

/* Gradient (θ then τ) of net under a method, sub-steps and mode. */
static int grad_of(const mfres_pnet *net, const mfres_pdata *D, const mfres_ode_step_type *T, int s, int mode,
                   double *g, double *E, double *pnorm, double *tgrid) {
    mfres_pnet_work w;
    int rc = mfres_pnet_work_alloc(&w, net, D->n, T, s);
    if (rc) return rc;
    size_t nth = mfres_pnet_num_theta(net);
    memset(g, 0, (nth + net->cfg.L) * sizeof(double));
    rc = mfres_pnet_loss_grad(net, &w, D->x, D->y, D->n, mode, E, g, g + nth, pnorm, tgrid);
    mfres_pnet_work_free(&w);
    return rc;
}

static double rel_err(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-300);
}

int mfres_pexp_adjoint(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long lemma_steps = pexp_steps_for(c);
    if (lemma_steps < 0) {
        mfres_pdata_free(&D);
        return (int)lemma_steps;
    }
    mfres_rng rng;
    mfres_rng_seed(&rng, pexp_mix(c->seed, 0xad));
    mfres_pnet net;
    if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) goto done0;
    const size_t nth = mfres_pnet_num_theta(&net), ng = nth + (size_t)ncfg.L;
    const int sref = 512, ns = 7, svals[7] = {1, 2, 4, 8, 16, 32, 64};
    double *gref = malloc(ng * sizeof(double)), *g = malloc(ng * sizeof(double)), *ga = malloc(ng * sizeof(double));
    double E;
    pexp_csv cv;
    if (!gref || !g || !ga) {
        rc = mfres_fail(MFRES_ENOMEM, "adjoint: out of memory");
        goto done;
    }
    pexp_describe(c, &ncfg, &D);
    if ((rc = grad_of(&net, &D, mfres_ode_rk4, sref, MFRES_GRAD_ADJOINT, gref, &E, NULL, NULL))) goto done;
    printf("# adjoint: L = %d, M = %d; reference gradient: continuous adjoint, RK4, %d sub-steps per block\n", ncfg.L,
           ncfg.M, sref);
    printf("# err_* = |g - g_ref| / |g_ref| over every theta and tau; bp_vs_fd: backprop vs central differences "
           "of the discrete loss (16 theta and up to 8 tau coordinates)\n");
    printf("%6s %4s %12s %8s %12s %8s %12s %12s\n", "method", "s", "err_backprop", "order", "err_adjoint", "order",
           "adj_vs_bp", "bp_vs_fd");
    if ((rc = pexp_csv_open(&cv, c, "adjoint.csv", "method,substeps,err_backprop,err_adjoint,adjoint_vs_backprop,backprop_vs_fd")))
        goto done;
    for (int m = 0; m < 2 && !rc; m++) {
        const mfres_ode_step_type *T = m ? mfres_ode_rk4 : mfres_ode_euler;
        double prev_bp = 0, prev_adj = 0;
        for (int si = 0; si < ns && !rc; si++) {
            int s = svals[si];
            rc = grad_of(&net, &D, T, s, MFRES_GRAD_BACKPROP, g, &E, NULL, NULL);
            if (!rc) rc = grad_of(&net, &D, T, s, MFRES_GRAD_ADJOINT, ga, &E, NULL, NULL);
            if (rc) break;
            double ebp = rel_err(g, gref, ng), eadj = rel_err(ga, gref, ng), avb = rel_err(ga, g, ng);
            /* finite differences of the discrete loss on a spread of coordinates (θ and every τ) */
            mfres_pnet_work w;
            if ((rc = mfres_pnet_work_alloc(&w, &net, D.n, T, s))) break;
            double num2 = 0, den2 = 0;
            size_t idx[24];
            int nfd = 0;
            for (int j = 0; j < 16; j++) idx[nfd++] = (size_t)j * nth / 16;
            for (int l = 0; l < ncfg.L && nfd < 24; l++) idx[nfd++] = nth + (size_t)l;
            for (int j = 0; j < nfd && !rc; j++) {
                size_t q = idx[j];
                double *p = q < nth ? &net.theta[q] : &net.tau[q - nth], save = *p, Ep = 0, Em = 0, h = 1e-6;
                *p = save + h;
                rc = mfres_pnet_loss(&net, &w, D.x, D.y, D.n, &Ep);
                *p = save - h;
                if (!rc) rc = mfres_pnet_loss(&net, &w, D.x, D.y, D.n, &Em);
                *p = save;
                double fd = (Ep - Em) / (2 * h);
                num2 += (g[q] - fd) * (g[q] - fd);
                den2 += fd * fd;
            }
            mfres_pnet_work_free(&w);
            if (rc) break;
            double bvf = sqrt(num2 / (den2 > 0 ? den2 : 1e-300));
            char o1[16] = "", o2[16] = "";
            if (si > 0) {
                snprintf(o1, sizeof o1, "%.2f", log2(prev_bp / ebp));
                snprintf(o2, sizeof o2, "%.2f", log2(prev_adj / eadj));
            }
            printf("%6s %4d %12.3e %8s %12.3e %8s %12.3e %12.3e\n", T->name, s, ebp, o1, eadj, o2, avb, bvf);
            fprintf(cv.af.fp, "%s,%d,%.6e,%.6e,%.6e,%.6e\n", T->name, s, ebp, eadj, avb, bvf);
            prev_bp = ebp, prev_adj = eadj;
        }
    }
    if (rc) {
        mfres_atomic_abort(&cv.af);
        goto done;
    }
    if ((rc = pexp_csv_commit(&cv))) goto done;

    /* Lemma 1: ||p(., t)||_mu / E over t, at checkpoints along training (RK4, 8 sub-steps). */
    char ckpts[512] = "";
    {
        const int s = 8, npt = ncfg.L * s + 1;
        const long steps = lemma_steps;
        double *pn = malloc((size_t)npt * sizeof(double)), *tg = malloc((size_t)npt * sizeof(double));
        pexp_csv lv;
        mfres_pnet_train_config tc;
        mfres_pnet_train_config_default(&tc);
        tc.lr = c->lr;
        mfres_pnet_trainer tr;
        if (!pn || !tg) rc = mfres_fail(MFRES_ENOMEM, "adjoint: out of memory");
        if (!rc) rc = mfres_pnet_trainer_init(&tr, &net, &tc, D.n, mfres_ode_rk4, s);
        if (!rc) rc = pexp_csv_open(&lv, c, "lemma1.csv", "step,train_time,loss,t,p_norm,p_norm_over_loss,p_norm_over_p_norm_T");
        if (!rc) {
            printf("# Lemma 1: ||p(.,t)||_mu / E(rho) along training (RK4, %d sub-steps, %ld steps of lr %g)\n", s,
                   steps, c->lr);
            printf("%8s %10s %12s %14s %14s %16s\n", "step", "time", "loss", "min_t p/E", "max_t p/E", "min_t p/p(T)");
            long next = 0;
            double E_first = 0;
            for (long st = 0; st <= steps && !rc; st++) {
                if (st == next || st == steps) {
                    rc = grad_of(&net, &D, mfres_ode_rk4, s, MFRES_GRAD_ADJOINT, g, &E, pn, tg);
                    if (rc) break;
                    double mn = INFINITY, mx = 0, mr = INFINITY;
                    for (int i = 0; i < npt; i++) {
                        fprintf(lv.af.fp, "%ld,%g,%.6e,%.6g,%.6e,%.6e,%.6e\n", st, st * c->lr, E, tg[i], pn[i],
                                pn[i] / E, pn[i] / pn[npt - 1]);
                        mn = fmin(mn, pn[i] / E), mx = fmax(mx, pn[i] / E), mr = fmin(mr, pn[i] / pn[npt - 1]);
                    }
                    printf("%8ld %10g %12.4e %14.4e %14.4e %16.4f\n", st, st * c->lr, E, mn, mx, mr);
                    snprintf(ckpts + strlen(ckpts), sizeof ckpts - strlen(ckpts), "%s%ld", st ? " " : "", st);
                    next = next == 0 ? 1 : next * 4;
                }
                if (st == 0) E_first = E;
                if (st < steps) rc = mfres_pnet_train_step(&net, &tr, D.x, D.y, &rng, &E, NULL);
                if (!rc && st < steps) rc = pexp_check_diverged(E_first, E, st, c->lr);
            }
            mfres_pnet_trainer_free(&tr);
            if (rc)
                mfres_atomic_abort(&lv.af);
            else
                rc = pexp_csv_commit(&lv);
        } else if (pn && tg) {
            mfres_pnet_trainer_free(&tr);
        }
        free(pn);
        free(tg);
    }
    if (!rc)
        rc = pexp_plot(c, "adjoint",
                  "set multiplot layout 1,2\nset logscale xy\nset format y '%%.0e'\nset xlabel 'sub-steps per block s'\n"
                  "set ylabel 'relative error vs reference'\nset title 'gradient error (Euler ~ 1/s, RK4 ~ 1/s^4)'\n"
                  "set key bottom left font ',8'\n"
                  "plot '%s/adjoint.csv' skip 1 using 2:(strcol(1) eq 'euler' ? $3 : 1/0) w lp pt 7 t 'euler backprop', "
                  "'' skip 1 using 2:(strcol(1) eq 'euler' ? $4 : 1/0) w lp pt 6 t 'euler adjoint', "
                  "'' skip 1 using 2:(strcol(1) eq 'rk4' ? $3 : 1/0) w lp pt 5 t 'rk4 backprop', "
                  "'' skip 1 using 2:(strcol(1) eq 'rk4' ? $4 : 1/0) w lp pt 4 t 'rk4 adjoint', "
                  "'' skip 1 using 2:(strcol(1) eq 'rk4' ? $5 : 1/0) w lp pt 3 t 'rk4 adjoint vs backprop'\n"
                  "unset logscale x\nset format y '%%g'\nset xlabel 't'\nset ylabel '||p(.,t)||_mu / E'\n"
                  "set title 'Lemma 1 along training (one curve per checkpoint)'\n"
                  "set logscale y\nset key top left font ',8'\n"
                  "plot for [st in '%s'] '%s/lemma1.csv' skip 1 using 4:(($1==st+0)?$6:1/0) with lines lw 2 "
                  "title 'step '.st\n"
                  "unset multiplot\n",
                  c->out_dir, ckpts, c->out_dir);
done:
    free(gref);
    free(g);
    free(ga);
    mfres_pnet_free(&net);
done0:
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- 4. ensemble ---------------- */

int mfres_pexp_ensemble(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const double scales[4] = {0.25, 0.5, 1.0, 2.0};
    const int n = D.n, k = ncfg.k, S = c->seeds;
    pexp_csv cv;
    if ((rc = pexp_csv_open(&cv, c, "ensemble.csv", "L,M,scale,rel_out_diff,rel_grad_diff,grad_cosine"))) goto done;
    pexp_describe(c, &ncfg, &D);
    printf("# ensemble (P1 section 2.2): deep ResNet (Euler, one step per block, uniform tau) vs its first-order\n"
           "# expansion X0 + sum_l h_l F_l(X0); rel_out = |out - out_ens| / |out - out_0|, rel_grad = |g - g_ens| / "
           "|g|; M = %d, mean of %d seeds\n",
           ncfg.M, S);
    printf("%5s %6s %12s %12s %12s\n", "L", "scale", "rel_out", "rel_grad", "cos(g,g_ens)");
    for (int si = 0; si < 4 && !rc; si++)
        for (int a = 0; a < c->nL && !rc; a++) {
            double ro = 0, rg = 0, cs = 0;
            for (int s = 0; s < S && !rc; s++) {
                ncfg.L = (int)c->Ls[a];
                ncfg.init_scale = scales[si];
                mfres_rng rng;
                mfres_rng_seed(&rng, pexp_mix(c->seed, (uint64_t)(977 * s + 3)) ^ (uint64_t)ncfg.L);
                mfres_pnet net;
                mfres_pnet_work w;
                if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) break;
                size_t nth = mfres_pnet_num_theta(&net);
                double *gd = calloc(nth, sizeof(double)), *ge = calloc(nth, sizeof(double));
                double *od = malloc((size_t)n * k * sizeof(double)), *oe = malloc((size_t)n * k * sizeof(double));
                rc = (!gd || !ge || !od || !oe) ? mfres_fail(MFRES_ENOMEM, "ensemble: out of memory")
                                                : mfres_pnet_work_alloc(&w, &net, n, mfres_ode_euler, 1);
                if (!rc) {
                    double E;
                    rc = mfres_pnet_loss_grad(&net, &w, D.x, D.y, n, MFRES_GRAD_BACKPROP, &E, gd, NULL, NULL, NULL);
                    if (!rc) memcpy(od, w.out, (size_t)n * k * sizeof(double));
                    if (!rc) rc = mfres_pnet_ensemble_loss_grad(&net, &w, D.x, D.y, n, oe, &E, ge);
                    if (!rc) {
                        /* out_0 = W1 W2 x: the network without its residual branches */
                        double num = 0, den = 0, gg = 0, ee = 0, dd = 0, ge2 = 0;
                        for (int i = 0; i < n; i++)
                            for (int r = 0; r < k; r++) {
                                double o0 = 0;
                                for (int j = 0; j < ncfg.d; j++) {
                                    double x0 = 0;
                                    for (int q = 0; q < D.d_in; q++)
                                        x0 += net.W2[(size_t)j * D.d_in + q] * D.x[(size_t)i * D.d_in + q];
                                    o0 += net.W1[(size_t)r * ncfg.d + j] * x0;
                                }
                                size_t q = (size_t)i * k + r;
                                num += (od[q] - oe[q]) * (od[q] - oe[q]);
                                den += (od[q] - o0) * (od[q] - o0);
                            }
                        for (size_t q = 0; q < nth; q++)
                            gg += gd[q] * gd[q], ee += (gd[q] - ge[q]) * (gd[q] - ge[q]), dd += gd[q] * ge[q],
                                ge2 += ge[q] * ge[q];
                        ro += sqrt(num / den) / S;
                        rg += sqrt(ee / gg) / S;
                        cs += dd / sqrt(gg * ge2) / S;
                    }
                    mfres_pnet_work_free(&w);
                }
                free(gd), free(ge), free(od), free(oe);
                mfres_pnet_free(&net);
            }
            if (rc) break;
            printf("%5ld %6g %12.4e %12.4e %12.6f\n", c->Ls[a], scales[si], ro, rg, cs);
            fprintf(cv.af.fp, "%ld,%d,%g,%.6e,%.6e,%.8f\n", c->Ls[a], ncfg.M, scales[si], ro, rg, cs);
        }
    if (rc) {
        mfres_atomic_abort(&cv.af);
        goto done;
    }
    if ((rc = pexp_csv_commit(&cv))) goto done;
    rc = pexp_plot(c, "ensemble",
              "set multiplot layout 1,2\nset logscale xy\nset xlabel 'depth L (total time 1)'\n"
              "set ylabel 'relative difference'\nset title 'output: deep vs two-layer ensemble'\n"
              "set key bottom right font ',8'\n"
              "plot for [s in '0.25 0.5 1 2'] '%s/ensemble.csv' skip 1 using 1:(($3==s+0)?$4:1/0) w lp pt 7 t 'scale '.s\n"
              "set title 'gradient: deep vs two-layer ensemble'\n"
              "plot for [s in '0.25 0.5 1 2'] '%s/ensemble.csv' skip 1 using 1:(($3==s+0)?$5:1/0) w lp pt 7 t 'scale '.s\n"
              "unset multiplot\n",
              c->out_dir, c->out_dir);
done:
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- 5. sorted-tau ---------------- */

int mfres_pexp_sorted_tau(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long steps = pexp_steps_for(c);
    if (steps < 0) {
        mfres_pdata_free(&D);
        return (int)steps;
    }
    const int S = c->seeds;
    const size_t T = (size_t)steps + 1;
    double *traj = calloc(2 * (size_t)S * T, sizeof(double));
    long *inv = calloc((size_t)S * T, sizeof(long));
    double fin[2][64];
    long changed[64], swaps[64];
    double span[64], gapmin[64];
    pexp_csv cv, sm;
    if (!traj || !inv) {
        rc = mfres_fail(MFRES_ENOMEM, "sorted-tau: out of memory");
        goto done;
    }
    pexp_describe(c, &ncfg, &D);
    double t0 = mfres_now();
    for (int s = 0; s < S && s < 64 && !rc; s++)
        for (int arm = 0; arm < 2 && !rc; arm++) {
            mfres_pnet net;
            uint64_t sr = pexp_mix(c->seed, (uint64_t)(1000 * s + 5)); /* same particles in both arms */
            rc = train_run(c, &ncfg, &D, sr, steps, arm, traj + ((size_t)arm * S + s) * T, NULL,
                           arm ? inv + (size_t)s * T : NULL, &net);
            if (rc) break;
            fin[arm][s] = traj[((size_t)arm * S + s) * T + T - 1];
            if (arm) {
                changed[s] = swaps[s] = 0;
                for (long t = 0; t < steps; t++) changed[s] += inv[(size_t)s * T + t] > 0, swaps[s] += inv[(size_t)s * T + t];
                span[s] = net.tau[ncfg.L - 1];
                gapmin[s] = INFINITY;
                for (int l = 0; l < ncfg.L; l++)
                    gapmin[s] = fmin(gapmin[s], net.tau[l] - (l ? net.tau[l - 1] : 0));
            }
            mfres_pnet_free(&net);
            mfres_log("sorted-tau: seed %d %s: final loss %.4e (%.1fs)", s, arm ? "Algorithm 1" : "fixed tau",
                      fin[arm][s], mfres_now() - t0);
        }
    if (rc) goto done;
    int SS = S < 64 ? S : 64;
    printf("# sorted-tau: L = %d, M = %d, training time %g (%ld steps), %d seeds, tau lr multiplier %g, tau in [0, 1]\n",
           ncfg.L, ncfg.M, c->time, steps, SS, c->tau_lr_mult);
    printf("%-22s %12s %12s %12s %12s\n", "arm", "mean_loss", "std", "min", "max");
    for (int arm = 0; arm < 2; arm++) {
        double mn = fin[arm][0], mx = fin[arm][0];
        for (int s = 0; s < SS; s++) mn = fmin(mn, fin[arm][s]), mx = fmax(mx, fin[arm][s]);
        printf("%-22s %12.4e %12.4e %12.4e %12.4e\n", arm ? "Algorithm 1 (sorted)" : "fixed uniform tau",
               pexp_mean(fin[arm], SS), pexp_std(fin[arm], SS), mn, mx);
    }
    int wins = 0;
    for (int s = 0; s < SS; s++) wins += fin[1][s] < fin[0][s];
    double mc = 0, ms = 0, mspan = 0, mgap = 0;
    for (int s = 0; s < SS; s++) mc += (double)changed[s] / SS, ms += (double)swaps[s] / SS, mspan += span[s] / SS, mgap += gapmin[s] / SS;
    printf("Algorithm 1 lower in %d of %d seeds; order changed in %.1f of %ld steps on average (%.1f adjacent swaps); "
           "final tau_{L-1} %.4f, smallest step %.2e\n",
           wins, SS, mc, steps, ms, mspan, mgap);
    if ((rc = pexp_csv_open(&cv, c, "sorted_tau_traj.csv", "step,time,fixed_mean,sorted_mean,sorted_swaps_mean"))) goto done;
    for (size_t t = 0; t < T; t++) {
        double a = 0, b = 0, sw = 0;
        for (int s = 0; s < SS; s++)
            a += traj[(size_t)s * T + t] / SS, b += traj[((size_t)S + s) * T + t] / SS,
                sw += t < (size_t)steps ? (double)inv[(size_t)s * T + t] / SS : 0;
        fprintf(cv.af.fp, "%zu,%g,%.6e,%.6e,%g\n", t, t * c->lr, a, b, sw);
    }
    if ((rc = pexp_csv_commit(&cv))) goto done;
    if ((rc = pexp_csv_open(&sm, c, "sorted_tau.csv", "seed,fixed_final,sorted_final,steps_order_changed,swaps,tau_last,min_step")))
        goto done;
    for (int s = 0; s < SS; s++)
        fprintf(sm.af.fp, "%d,%.6e,%.6e,%ld,%ld,%.6f,%.6e\n", s, fin[0][s], fin[1][s], changed[s], swaps[s], span[s],
                gapmin[s]);
    if ((rc = pexp_csv_commit(&sm))) goto done;
    rc = pexp_plot(c, "sorted_tau",
              "set logscale y\nset xlabel 'training time'\nset ylabel 'training loss (mean of seeds)'\n"
              "set y2label 'adjacent swaps per step (mean)'\nset y2tics\nset ytics nomirror\n"
              "set title 'Algorithm 1 (trainable sorted tau) vs fixed uniform tau'\n"
              "plot '%s/sorted_tau_traj.csv' skip 1 using 2:3 w l lw 2 t 'fixed tau', '' skip 1 using 2:4 w l lw 2 t "
              "'Algorithm 1', '' skip 1 using 2:5 axes x1y2 w impulses lc 'gray' t 'swaps'\n",
              c->out_dir);
done:
    free(traj);
    free(inv);
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- benchmark ---------------- */

int mfres_pexp_bench(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    mfres_pexp_config cc = *c;
    cc.data_kind = MFRES_PDATA_RANDOM;
    int rc = pexp_load_data(&cc, &D, &ncfg);
    if (rc) return rc;
    mfres_rng rng;
    mfres_rng_seed(&rng, c->seed);
    mfres_pnet net;
    mfres_pnet_trainer tr;
    if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) goto done;
    mfres_pnet_train_config tc;
    mfres_pnet_train_config_default(&tc);
    tc.lr = c->lr;
    tc.batch = c->batch;
    if ((rc = mfres_pnet_trainer_init(&tr, &net, &tc, D.n, c->method, c->substeps))) {
        mfres_pnet_free(&net);
        goto done;
    }
    double E = 0;
    for (int i = 0; i < 10 && !rc; i++) rc = mfres_pnet_train_step(&net, &tr, D.x, D.y, &rng, &E, NULL);
    double t0 = mfres_now();
    for (long i = 0; i < c->steps && !rc; i++) rc = mfres_pnet_train_step(&net, &tr, D.x, D.y, &rng, &E, NULL);
    double dt = mfres_now() - t0;
    if (!rc) {
        double sps = (double)c->steps / dt;
        printf("bench: L=%d M=%d d=%d n=%d unit=%s act=%s method=%s s=%d steps=%ld loss=%.6e\n", ncfg.L, ncfg.M, ncfg.d,
               D.n, mfres_unit_name(ncfg.unit), mfres_act_name(ncfg.act), c->method->name, c->substeps, c->steps, E);
        printf("steps_per_s=%.2f particle_steps_per_s=%.4g\n", sps, sps * ncfg.L * ncfg.M);
    }
    mfres_pnet_trainer_free(&tr);
    mfres_pnet_free(&net);
done:
    mfres_pdata_free(&D);
    return rc;
}

/* ---------------- train: one run, saved and continued ---------------- */

int mfres_pexp_train(const mfres_pexp_config *c) {
    mfres_pnet_config ncfg = c->net;
    mfres_pdata D;
    mfres_pnet net;
    pexp_csv cv;
    char save[4096];
    memset(&net, 0, sizeof net);
    int rc = pexp_load_data(c, &D, &ncfg);
    if (rc) return rc;
    const long steps = pexp_steps_for(c);
    double *traj = steps > 0 ? malloc((size_t)(steps + 1) * sizeof(double)) : NULL;
    if (steps < 0) {
        rc = (int)steps;
        goto done;
    }
    if (!traj) {
        rc = mfres_fail(MFRES_ENOMEM, "train: out of memory");
        goto done;
    }
    mfres_rng rng;
    mfres_rng_seed(&rng, pexp_mix(c->seed, 0x7a1));
    if (c->load_dir) {
        if ((rc = mfres_pnet_load(&net, c->load_dir))) goto done;
        if (net.cfg.d_in != D.d_in || net.cfg.k != D.k) {
            rc = mfres_fail(MFRES_EINVAL, "train: the particles in %s take d_in = %d inputs and k = %d outputs; the data "
                            "has %d and %d (use --d-in/--k or the same data file)",
                            c->load_dir, net.cfg.d_in, net.cfg.k, D.d_in, D.k);
            goto done;
        }
        ncfg = net.cfg;
    } else if ((rc = mfres_pnet_init(&net, &ncfg, &rng))) {
        goto done;
    }
    pexp_describe(c, &ncfg, &D);
    mfres_pnet_train_config tc;
    mfres_pnet_train_config_default(&tc);
    tc.lr = c->lr;
    tc.batch = c->batch;
    mfres_pnet_trainer tr;
    if ((rc = mfres_pnet_trainer_init(&tr, &net, &tc, D.n, c->method, c->substeps))) goto done;
    for (long s = 0; s < steps && !rc; s++) {
        rc = mfres_pnet_train_step(&net, &tr, D.x, D.y, &rng, &traj[s], NULL);
        if (!rc) rc = pexp_check_diverged(traj[0], traj[s], s, c->lr);
    }
    if (!rc) rc = mfres_pnet_loss(&net, &tr.w, D.x, D.y, D.n, &traj[steps]);
    mfres_pnet_trainer_free(&tr);
    if (rc) goto done;
    printf("# train: L = %d, M = %d, %ld steps of lr %g%s%s\n", ncfg.L, ncfg.M, steps, c->lr,
           c->load_dir ? ", continued from " : "", c->load_dir ? c->load_dir : "");
    printf("initial_loss=%.17g final_loss=%.17g\n", traj[0], traj[steps]);
    if ((rc = pexp_csv_open(&cv, c, "train.csv", "step,time,loss"))) goto done;
    for (long s = 0; s <= steps; s++) fprintf(cv.af.fp, "%ld,%g,%.17g\n", s, s * c->lr, traj[s]);
    if ((rc = pexp_csv_commit(&cv))) goto done;
    if (c->save_dir)
        snprintf(save, sizeof save, "%s", c->save_dir);
    else
        snprintf(save, sizeof save, "%s/particles", c->out_dir);
    if ((rc = mfres_pnet_save(&net, save))) goto done;
    mfres_log("saved the particles to %s (theta.npy, tau.npy, W2.npy, W1.npy, particles.json)", save);
    rc = pexp_plot(c, "train",
                   "set logscale y\nset xlabel 'training time'\nset ylabel 'training loss'\nset title 'particle ResNet, "
                   "L = %d, M = %d'\nplot '%s/train.csv' skip 1 using 2:3 with lines lw 2 title 'loss'\n",
                   ncfg.L, ncfg.M, c->out_dir);
done:
    free(traj);
    mfres_pnet_free(&net);
    mfres_pdata_free(&D);
    return rc;
}
