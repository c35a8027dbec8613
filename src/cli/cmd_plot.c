/* mfres plot: figures from run directories, as CSV with a gnuplot script and
 * a PNG beside each (the PNG only where gnuplot is installed):
 *   test_error_<network>.png  test error against epoch, one curve per arm
 *                             (vanilla, mean-field): the mean over seeds with a
 *                             band from the lowest to the highest run
 *   tau_<run>.png             every particle's tau against epoch, one panel
 *                             per stage (mean-field runs)
 *   order_<run>.png           the position of every block in the sorted order
 *                             against epoch, one panel per stage: crossing
 *                             lines are blocks that swapped places */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mfres/core.h"
#include "mfres/io.h"
#include "mfres/store.h"

typedef struct run_list {
    mfres_run_record *runs;
    int n, cap;
} run_list;

static int add_run(run_list *l, const mfres_run_record *r) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        mfres_run_record *grown = realloc(l->runs, sizeof *grown * (size_t)l->cap);
        if (!grown) return mfres_fail(MFRES_ENOMEM, "out of memory");
        l->runs = grown;
    }
    l->runs[l->n++] = *r;
    return 0;
}

/* A run directory, or a root of them (a sweep). */
static int collect(const char *path, run_list *l) {
    if (mfres_run_dir_is_run(path)) {
        mfres_run_record r;
        int rc = mfres_run_read(path, &r);
        return rc ? rc : add_run(l, &r);
    }
    mfres_run_record *runs;
    int n, rc = mfres_runs_scan(path, &runs, &n);
    if (rc) return rc;
    if (!n) {
        free(runs);
        return mfres_fail(MFRES_EINVAL, "%s: neither a run directory (no config.json) nor a directory of runs", path);
    }
    for (int i = 0; i < n && !rc; i++) rc = add_run(l, &runs[i]);
    free(runs); /* the records now belong to l */
    return rc;
}

static bool is_meanfield(const mfres_run_record *r) { return strcmp(r->mode, "vanilla") != 0; }

static void file_name_safe(char *s) {
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
              *s == '.'))
            *s = '_';
}

static int write_script(const char *out, const char *stem, const char *body) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s.gp", out, stem);
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    fprintf(af.fp,
            "# Written by mfres plot: `gnuplot %s.gp` redraws %s.png from %s.csv (the files beside it)\n"
            "d = ARG0; i = strlen(d); while (i > 0 && d[i:i] ne '/') { i = i - 1 }\n"
            "if (i > 0) { cd d[1:i] }\n"
            "set datafile separator ','\n"
            "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1200,420 noenhanced } "
            "else { set terminal png size 1200,420 noenhanced }\n"
            "set output '%s.png'\nset grid\n%s",
            stem, stem, stem, stem, body);
    if ((rc = mfres_atomic_commit(&af))) return rc;
    return mfres_gnuplot_run(path);
}

/* Test error against epoch for one network: an arm is a mode (and, for
 * mean-field runs, a tau setting). */
static int plot_test_error(const run_list *l, int first, const char *out, int *made) {
    const mfres_run_record *f = &l->runs[first];
    enum { MAX_ARMS = 8 };
    char arm_names[MAX_ARMS][96];
    int n_arms = 0, max_epochs = 0;
    int *arm_of = calloc((size_t)l->n, sizeof *arm_of);
    if (!arm_of) return mfres_fail(MFRES_ENOMEM, "out of memory");
    for (int i = 0; i < l->n; i++) {
        const mfres_run_record *r = &l->runs[i];
        arm_of[i] = -1;
        if (strcmp(r->model, f->model) || strcmp(r->block, f->block) || strcmp(r->data, f->data)) continue;
        char name[96];
        if (is_meanfield(r)) snprintf(name, sizeof name, "mean-field (tau init %s, tau lr x%g)", r->tau_init, r->tau_lr_mult);
        else snprintf(name, sizeof name, "vanilla");
        int a = 0;
        while (a < n_arms && strcmp(arm_names[a], name)) a++;
        if (a == n_arms) {
            if (n_arms == MAX_ARMS) continue;
            snprintf(arm_names[n_arms++], sizeof arm_names[0], "%s", name);
        }
        arm_of[i] = a;
        if (r->epochs_done > max_epochs) max_epochs = r->epochs_done;
    }
    char stem[256], path[8192];
    snprintf(stem, sizeof stem, "test_error_%s%s%s-%s", f->model, strcmp(f->block, "postact") ? "-" : "",
             strcmp(f->block, "postact") ? f->block : "", f->data);
    file_name_safe(stem);
    snprintf(path, sizeof path, "%s/%s.csv", out, stem);
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return free(arm_of), rc;
    fprintf(af.fp, "epoch");
    for (int a = 0; a < n_arms; a++) fprintf(af.fp, ",arm%d_mean,arm%d_min,arm%d_max,arm%d_runs", a + 1, a + 1, a + 1, a + 1);
    fprintf(af.fp, "\n");
    for (int e = 0; e < max_epochs; e++) {
        fprintf(af.fp, "%d", e + 1);
        for (int a = 0; a < n_arms; a++) {
            double sum = 0, lo = INFINITY, hi = -INFINITY;
            int n = 0;
            for (int i = 0; i < l->n; i++) {
                if (arm_of[i] != a || l->runs[i].epochs_done <= e) continue;
                double err = 100 * (1 - l->runs[i].ep[e].test_acc);
                sum += err, n++;
                lo = fmin(lo, err), hi = fmax(hi, err);
            }
            if (n) fprintf(af.fp, ",%.4f,%.4f,%.4f,%d", sum / n, lo, hi, n);
            else fprintf(af.fp, ",,,,0");
        }
        fprintf(af.fp, "\n");
    }
    free(arm_of);
    if ((rc = mfres_atomic_commit(&af))) return rc;
    char body[4096];
    int len = snprintf(body, sizeof body,
                       "set title 'test error, %s on %s: mean over seeds, band from the lowest to the highest run'\n"
                       "set xlabel 'epoch'\nset ylabel 'test error (%%)'\nset key top right\n%s"
                       "set style fill transparent solid 0.2 noborder\nplot ",
                       f->model, f->data, max_epochs <= 20 ? "set xtics 1\n" : "");
    for (int a = 0; a < n_arms && len < (int)sizeof body - 400; a++)
        len += snprintf(body + len, sizeof body - (size_t)len,
                        "%s'%s.csv' using 1:%d:%d with filledcurves lc %d notitle, "
                        "'' using 1:%d with linespoints lc %d lw 2 title '%s'",
                        a ? ", " : "", stem, 4 * a + 3, 4 * a + 4, a + 1, 4 * a + 2, a + 1, arm_names[a]);
    snprintf(body + len, sizeof body - (size_t)len, "\n");
    if ((rc = write_script(out, stem, body))) return rc;
    (*made)++;
    return 0;
}

/* tau (what = 0) or the position in the sorted order (what = 1) of every
 * block of every stage against epoch. */
static int plot_particles(const mfres_run_record *r, int what, const char *out, int *made) {
    if (!r->epochs_done || !r->ep[0].tau) return 0;
    int P = r->ep[0].particles;
    char stem[300], path[8192];
    snprintf(stem, sizeof stem, "%s_%s", what ? "order" : "tau", r->name);
    file_name_safe(stem);
    snprintf(path, sizeof path, "%s/%s.csv", out, stem);
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    fprintf(af.fp, "epoch");
    for (int s = 0; s < MFRES_STAGES; s++)
        for (int b = 0; b < P; b++) fprintf(af.fp, ",stage%d_block%d", s + 1, b + 1);
    fprintf(af.fp, "\n");
    for (int e = 0; e < r->epochs_done; e++) {
        const mfres_epoch_record *ep = &r->ep[e];
        if (ep->particles != P || !ep->tau) {
            mfres_atomic_abort(&af);
            return mfres_fail(MFRES_EFORMAT, "%s/metrics.jsonl:%d: %d particles per stage, epoch 1 has %d", r->dir,
                              e + 1, ep->particles, P);
        }
        fprintf(af.fp, "%d", ep->epoch);
        for (int s = 0; s < MFRES_STAGES; s++)
            for (int b = 0; b < P; b++) {
                if (!what) {
                    fprintf(af.fp, ",%.6g", ep->tau[s * P + b]);
                    continue;
                }
                int pos = 0;
                while (pos < P && ep->order[s * P + pos] != b + 1) pos++;
                fprintf(af.fp, ",%d", pos + 1);
            }
        fprintf(af.fp, "\n");
    }
    if ((rc = mfres_atomic_commit(&af))) return rc;
    char body[2048], ytics[64];
    snprintf(ytics, sizeof ytics, "set ytics 1\nset yrange [0.5:%d.5]\n", P);
    snprintf(body, sizeof body,
             "set multiplot layout 1,3 title '%s, %s'\nset xlabel 'epoch'\nset ylabel '%s'\nunset key\n%s%s"
             "do for [s=1:3] {\n"
             "  set title sprintf('stage %%d', s)\n"
             "  plot for [b=1:%d] '%s.csv' using 1:(column(1 + (s-1)*%d + b)) with linespoints pt 7 ps 0.4\n"
             "}\nunset multiplot\n",
             r->name, what ? "place of each block in the sorted order (1 = nearest the input)" : "tau of each particle",
             what ? "position" : "tau", what ? ytics : "", r->epochs_done <= 20 ? "set xtics 1\n" : "", P, stem, P);
    if ((rc = write_script(out, stem, body))) return rc;
    (*made)++;
    return 0;
}

int cmd_plot(int argc, char **argv) {
    const char *cmd = "plot";
    const char *out = NULL;
    run_list l = {0};
    int n_paths = 0, rc = 0;
    const char *paths[256];
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: mfres plot RUN... [--out DIR]\n"
                   "\n"
                   "RUN: a run directory or a directory of runs (a sweep root). Writes, as CSV + gnuplot\n"
                   "script + PNG (the PNG where gnuplot is installed) into DIR [first RUN/plots]:\n"
                   "  test_error_<network>-<data>  test error against epoch for each arm (vanilla and\n"
                   "                               mean-field): the mean over seeds, with a band from the\n"
                   "                               lowest to the highest run\n"
                   "  tau_<run>                    every particle's tau against epoch, per stage\n"
                   "  order_<run>                  each block's place in the sorted order against epoch\n");
            return 0;
        }
        if ((r = cli_flag(cmd, argc, argv, &i, "--out", &v))) {
            if (r < 0) return 2;
            out = v;
        } else if (argv[i][0] == '-') {
            return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        } else if (n_paths < 256) {
            paths[n_paths++] = argv[i];
        }
    }
    if (!n_paths) return cli_usage_error(cmd, "at least one RUN (a run directory or a sweep root) is required");
    for (int i = 0; i < n_paths && !rc; i++) rc = collect(paths[i], &l);
    char default_out[4200];
    if (!out) {
        snprintf(default_out, sizeof default_out, "%s/plots", paths[0]);
        out = default_out;
    }
    int made = 0;
    if (!rc) rc = mfres_mkdir_p(out);
    for (int i = 0; i < l.n && !rc; i++) {
        bool first = true; /* the first run of its network draws the network's figure */
        for (int j = 0; j < i && first; j++)
            first = strcmp(l.runs[j].model, l.runs[i].model) || strcmp(l.runs[j].block, l.runs[i].block) ||
                    strcmp(l.runs[j].data, l.runs[i].data);
        if (first) rc = plot_test_error(&l, i, out, &made);
        if (!rc && is_meanfield(&l.runs[i])) rc = plot_particles(&l.runs[i], 0, out, &made);
        if (!rc && is_meanfield(&l.runs[i])) rc = plot_particles(&l.runs[i], 1, out, &made);
    }
    for (int i = 0; i < l.n; i++) mfres_run_free(&l.runs[i]);
    free(l.runs);
    if (rc) return cli_runtime_error(cmd);
    printf("%d figures in %s (CSV, gnuplot script and PNG each)\n", made, out);
    return 0;
}
