/* mfres report: Table 1 of P1 from the runs under a root.
 *
 * One row per network (and per mean-field tau setting), the final-epoch test
 * error of each arm as mean ± sample std (n runs), P1's published figure
 * beside it, and the mean-field gain. Final epoch, never the best epoch: a
 * best-epoch figure picks the maximum of noisy numbers with the test set. The
 * numbers come from the run store (ROOT/runs.sqlite, rebuilt first). */
#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mfres/core.h"
#include "mfres/store.h"

/* Lu et al. 2020 (P1), Table 1: test error (%), mean of 3 runs. ResNets on
 * CIFAR-10 (ResNet-164 with bottleneck blocks), ResNeXt-29 on CIFAR-100. */
static const struct p1_entry {
    const char *network, *data;
    const char *block; /* NULL: any block kind */
    double vanilla, meanfield;
} p1_table1[] = {
    {"resnet20", "cifar10", NULL, 8.75, 8.19},
    {"resnet32", "cifar10", NULL, 7.51, 7.15},
    {"resnet44", "cifar10", NULL, 7.17, 6.91},
    {"resnet56", "cifar10", NULL, 6.97, 6.72},
    {"resnet110", "cifar10", NULL, 6.37, 6.10},
    {"resnet164", "cifar10", "bottleneck", 5.46, 5.19},
    {"resnext29-8x64d", "cifar100", NULL, 17.92, 17.53},
    {"resnext29-16x64d", "cifar100", NULL, 17.65, 16.81},
};
enum { N_P1 = sizeof p1_table1 / sizeof p1_table1[0] };

static const struct p1_entry *p1_lookup(const char *network, const char *block, const char *data) {
    for (int i = 0; i < N_P1; i++) {
        const struct p1_entry *p = &p1_table1[i];
        if (!strcmp(p->network, network) && !strcmp(p->data, data) && (!p->block || !strcmp(p->block, block)))
            return p;
    }
    return NULL;
}

static int p1_rank(const char *network) {
    for (int i = 0; i < N_P1; i++)
        if (!strcmp(p1_table1[i].network, network)) return i;
    return N_P1;
}

/* "ResNet-20", "ResNet-164 (bottleneck)", "ResNeXt-29 8x64d". */
static void display_name(const char *network, const char *block, char *buf, size_t cap) {
    if (!strncmp(network, "resnext", 7)) {
        const char *dash = strchr(network, '-');
        snprintf(buf, cap, "ResNeXt-%.*s%s%s", dash ? (int)(dash - network - 7) : (int)strlen(network + 7),
                 network + 7, dash ? " " : "", dash ? dash + 1 : "");
    } else if (!strncmp(network, "resnet", 6)) {
        snprintf(buf, cap, "ResNet-%s%s%s%s", network + 6, *block && strcmp(block, "postact") ? " (" : "",
                 *block && strcmp(block, "postact") ? block : "", *block && strcmp(block, "postact") ? ")" : "");
    } else {
        snprintf(buf, cap, "%s", network);
    }
}

typedef struct arm {
    int n, unfinished;
    double sum, sum_sq; /* of the final test error, in % */
    char config_key[2048];
    bool mixed;         /* runs of this arm differ in configuration */
} arm;

typedef struct row {
    char network[64], block[32], data[64];
    char tau_init[16];
    double tau_lr_mult;
    bool has_tau;       /* a mean-field arm of its own (several tau settings) */
    arm vanilla, meanfield;
} row;

static void arm_add(arm *a, const char *config_key, int finished, double err) {
    if (!a->n && !a->unfinished) snprintf(a->config_key, sizeof a->config_key, "%s", config_key);
    else if (strcmp(a->config_key, config_key)) a->mixed = true;
    if (!finished) {
        a->unfinished++;
        return;
    }
    a->n++;
    a->sum += 100 * err;
    a->sum_sq += 100 * err * 100 * err;
}

static double arm_mean(const arm *a) { return a->sum / a->n; }
static double arm_std(const arm *a) {
    if (a->n < 2) return NAN;
    double m = arm_mean(a), var = (a->sum_sq - a->n * m * m) / (a->n - 1);
    return var > 0 ? sqrt(var) : 0;
}

static void arm_cell(const arm *a, char *buf, size_t cap) {
    char extra[48] = "";
    if (a->unfinished) snprintf(extra, sizeof extra, " +%d unfinished", a->unfinished);
    if (!a->n) snprintf(buf, cap, "—%s", extra);
    else if (a->n == 1) snprintf(buf, cap, "%.2f (1)%s", arm_mean(a), extra);
    else snprintf(buf, cap, "%.2f ± %.2f (%d)%s", arm_mean(a), arm_std(a), a->n, extra);
}

static int compare_rows(const void *pa, const void *pb) {
    const row *a = pa, *b = pb;
    int ra = p1_rank(a->network), rb = p1_rank(b->network);
    if (ra != rb) return ra - rb;
    int c = strcmp(a->network, b->network);
    if (!c) c = strcmp(a->block, b->block);
    if (!c) c = strcmp(a->data, b->data);
    if (!c) c = a->tau_lr_mult < b->tau_lr_mult ? -1 : a->tau_lr_mult > b->tau_lr_mult;
    if (!c) c = strcmp(a->tau_init, b->tau_init);
    return c;
}

static bool same_network(const row *r, const char *network, const char *block, const char *data) {
    return !strcmp(r->network, network) && !strcmp(r->block, block) && !strcmp(r->data, data);
}

/* Reads the runs from the store and groups them into rows. */
static int load_rows(const char *db_path, row **rows_out, int *n_out) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT network, block, data, mode, tau_init, tau_lr_mult, finished, final_test_error, "
                           "config_key FROM runs ORDER BY run_id",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = mfres_fail(MFRES_EIO, "%s: cannot read the run store: %s", db_path, db ? sqlite3_errmsg(db) : "");
        sqlite3_close(db);
        return rc;
    }
    /* Vanilla runs go to every row of their network, and the mean-field runs
     * to the row of their tau setting; a network without mean-field runs
     * still gets a row. Two passes: mean-field rows first. */
    row *rows = NULL;
    int n = 0, cap = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        sqlite3_reset(st);
        int step;
        while ((step = sqlite3_step(st)) == SQLITE_ROW) {
            const char *network = (const char *)sqlite3_column_text(st, 0);
            const char *block = (const char *)sqlite3_column_text(st, 1);
            const char *data = (const char *)sqlite3_column_text(st, 2);
            const char *mode = (const char *)sqlite3_column_text(st, 3);
            const char *tau_init = (const char *)sqlite3_column_text(st, 4);
            double tau_lr_mult = sqlite3_column_double(st, 5);
            int finished = sqlite3_column_int(st, 6);
            double err = sqlite3_column_double(st, 7);
            const char *key = (const char *)sqlite3_column_text(st, 8);
            bool mf = strcmp(mode, "vanilla") != 0;
            if (mf != (pass == 0)) continue;
            int found = -1;
            for (int i = 0; i < n; i++) {
                if (!same_network(&rows[i], network, block, data)) continue;
                if (pass == 1) {
                    arm_add(&rows[i].vanilla, key, finished, err);
                    found = i;
                } else if (!strcmp(rows[i].tau_init, tau_init) && rows[i].tau_lr_mult == tau_lr_mult) {
                    found = i;
                    break;
                }
            }
            if (pass == 1 && found >= 0) continue;
            if (found < 0) {
                if (n == cap) {
                    cap = cap ? 2 * cap : 16;
                    row *grown = realloc(rows, sizeof *rows * (size_t)cap);
                    if (!grown) {
                        rc = mfres_fail(MFRES_ENOMEM, "out of memory reading %s", db_path);
                        break;
                    }
                    rows = grown;
                }
                row *r = &rows[found = n++];
                memset(r, 0, sizeof *r);
                snprintf(r->network, sizeof r->network, "%s", network);
                snprintf(r->block, sizeof r->block, "%s", block);
                snprintf(r->data, sizeof r->data, "%s", data);
                snprintf(r->tau_init, sizeof r->tau_init, "%s", tau_init);
                r->tau_lr_mult = tau_lr_mult;
            }
            arm_add(mf ? &rows[found].meanfield : &rows[found].vanilla, key, finished, err);
        }
        if (!rc && step != SQLITE_DONE) rc = mfres_fail(MFRES_EIO, "%s: reading the runs: %s", db_path, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (rc) return free(rows), rc;
    /* Several tau settings of one network: say which row is which. */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && same_network(&rows[i], rows[j].network, rows[j].block, rows[j].data)) rows[i].has_tau = true;
    if (n) qsort(rows, (size_t)n, sizeof *rows, compare_rows);
    *rows_out = rows;
    *n_out = n;
    return 0;
}

/* The configurations seen, numbered in order of first appearance. */
typedef struct configs {
    const char *keys[256];
    int n;
} configs;

static int config_number(configs *c, const char *key) {
    if (!*key) return 0;
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->keys[i], key)) return i + 1;
    if (c->n == 256) return 0;
    c->keys[c->n++] = key;
    return c->n;
}

static void write_markdown(FILE *fp, const row *rows, int n, const char *root) {
    configs cfgs = {0};
    fprintf(fp, "Test error (%%) after the final epoch, mean ± sample std (number of runs), from %s.\n"
                "P1: the published figures of Lu et al. 2020, Table 1 (mean of 3 runs, P1's full recipe).\n"
                "Gain: vanilla − mean-field, in points, ± the standard error of that difference.\n\n",
            root);
    fprintf(fp, "| network | data | vanilla | P1 vanilla | mean-field | P1 mean-field | gain | P1 gain | config |\n"
                "|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        char name[128], data[96], v[96], mf[96], gain[64] = "—", p1v[16] = "—", p1m[16] = "—", p1g[16] = "—";
        display_name(r->network, r->block, name, sizeof name);
        snprintf(data, sizeof data, "%s", r->data);
        if (r->has_tau && r->meanfield.n + r->meanfield.unfinished)
            snprintf(name + strlen(name), sizeof name - strlen(name), ", τ lr ×%g%s%s", r->tau_lr_mult,
                     strcmp(r->tau_init, "unit") ? ", τ init " : "", strcmp(r->tau_init, "unit") ? r->tau_init : "");
        arm_cell(&r->vanilla, v, sizeof v);
        arm_cell(&r->meanfield, mf, sizeof mf);
        if (r->vanilla.n && r->meanfield.n) {
            double d = arm_mean(&r->vanilla) - arm_mean(&r->meanfield);
            double sv = arm_std(&r->vanilla), sm = arm_std(&r->meanfield);
            if (isnan(sv) || isnan(sm)) snprintf(gain, sizeof gain, "%+.2f", d);
            else snprintf(gain, sizeof gain, "%+.2f ± %.2f", d, sqrt(sv * sv / r->vanilla.n + sm * sm / r->meanfield.n));
        }
        const struct p1_entry *p = p1_lookup(r->network, r->block, r->data);
        if (p) {
            snprintf(p1v, sizeof p1v, "%.2f", p->vanilla);
            snprintf(p1m, sizeof p1m, "%.2f", p->meanfield);
            snprintf(p1g, sizeof p1g, "%+.2f", p->vanilla - p->meanfield);
        }
        char cfg[64];
        int cv = config_number(&cfgs, r->vanilla.config_key), cm = config_number(&cfgs, r->meanfield.config_key);
        bool mixed = r->vanilla.mixed || r->meanfield.mixed || (cv && cm && cv != cm);
        if (mixed) snprintf(cfg, sizeof cfg, "**mixed: the arms are not comparable**");
        else snprintf(cfg, sizeof cfg, "[%d]", cv ? cv : cm);
        fprintf(fp, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, data, v, p1v, mf, p1m, gain, p1g, cfg);
    }
    fprintf(fp, "\nConfigurations (config.json without model, mode, seed, tau and threads):\n\n");
    for (int i = 0; i < cfgs.n; i++) fprintf(fp, "[%d] `%s`\n\n", i + 1, cfgs.keys[i]);
}

static void csv_number(FILE *fp, double x) {
    if (isnan(x)) fputs(",", fp);
    else fprintf(fp, ",%.4f", x);
}

static void write_csv(FILE *fp, const row *rows, int n) {
    fprintf(fp, "network,block,data,tau_init,tau_lr_mult,vanilla_mean,vanilla_std,vanilla_n,vanilla_unfinished,"
                "p1_vanilla,meanfield_mean,meanfield_std,meanfield_n,meanfield_unfinished,p1_meanfield,gain,p1_gain,"
                "same_configuration\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        const struct p1_entry *p = p1_lookup(r->network, r->block, r->data);
        fprintf(fp, "%s,%s,%s,%s,%g", r->network, r->block, r->data, r->tau_init, r->tau_lr_mult);
        csv_number(fp, r->vanilla.n ? arm_mean(&r->vanilla) : NAN);
        csv_number(fp, arm_std(&r->vanilla));
        fprintf(fp, ",%d,%d", r->vanilla.n, r->vanilla.unfinished);
        csv_number(fp, p ? p->vanilla : NAN);
        csv_number(fp, r->meanfield.n ? arm_mean(&r->meanfield) : NAN);
        csv_number(fp, arm_std(&r->meanfield));
        fprintf(fp, ",%d,%d", r->meanfield.n, r->meanfield.unfinished);
        csv_number(fp, p ? p->meanfield : NAN);
        csv_number(fp, r->vanilla.n && r->meanfield.n ? arm_mean(&r->vanilla) - arm_mean(&r->meanfield) : NAN);
        csv_number(fp, p ? p->vanilla - p->meanfield : NAN);
        bool same = !r->vanilla.mixed && !r->meanfield.mixed &&
                    (!*r->vanilla.config_key || !*r->meanfield.config_key ||
                     !strcmp(r->vanilla.config_key, r->meanfield.config_key));
        fprintf(fp, ",%d\n", same);
    }
}

static int write_file(const char *path, const row *rows, int n, const char *root, bool csv) {
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    if (csv) write_csv(af.fp, rows, n);
    else write_markdown(af.fp, rows, n, root);
    return mfres_atomic_commit(&af);
}

int cmd_report(int argc, char **argv) {
    const char *cmd = "report";
    const char *root = NULL, *md_path = NULL, *csv_path = NULL;
    bool csv_out = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: mfres report ROOT [--csv] [--md FILE] [--csv-file FILE]\n"
                   "\n"
                   "Table 1 of Lu et al. 2020 (P1) from the runs under ROOT (a sweep root): one row per\n"
                   "network (and per mean-field tau setting), the test error after the final epoch of each\n"
                   "arm as mean ± sample std (number of finished runs), P1's published figure beside it,\n"
                   "and the mean-field gain (vanilla − mean-field, ± its standard error). Unfinished runs\n"
                   "are counted, not averaged. Rebuilds ROOT/runs.sqlite first and writes the table to\n"
                   "ROOT/report.md and ROOT/report.csv.\n"
                   "\n"
                   "  --csv             print the CSV instead of the Markdown\n"
                   "  --md FILE         also write the Markdown to FILE\n"
                   "  --csv-file FILE   also write the CSV to FILE\n");
            return 0;
        }
        if (!strcmp(argv[i], "--csv")) {
            csv_out = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--md", &v))) {
            if (r < 0) return 2;
            md_path = v;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--csv-file", &v))) {
            if (r < 0) return 2;
            csv_path = v;
        } else if (argv[i][0] == '-') {
            return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        } else if (root) {
            return cli_usage_error(cmd, "one ROOT expected, got '%s' and '%s'", root, argv[i]);
        } else {
            root = argv[i];
        }
    }
    if (!root) return cli_usage_error(cmd, "ROOT (a sweep root) is required");
    char db[4400];
    int n_runs;
    if (mfres_store_rebuild(root, db, sizeof db, &n_runs)) return cli_runtime_error(cmd);
    if (!n_runs) {
        fprintf(stderr, "mfres report: error: %s holds no run directories (directories with a config.json)\n", root);
        return 1;
    }
    row *rows = NULL;
    int n = 0;
    if (load_rows(db, &rows, &n)) return cli_runtime_error(cmd);
    char path[4400];
    int rc = 0;
    snprintf(path, sizeof path, "%s/report.md", root);
    if (!rc) rc = write_file(path, rows, n, root, false);
    snprintf(path, sizeof path, "%s/report.csv", root);
    if (!rc) rc = write_file(path, rows, n, root, true);
    if (!rc && md_path) rc = write_file(md_path, rows, n, root, false);
    if (!rc && csv_path) rc = write_file(csv_path, rows, n, root, true);
    if (rc) {
        free(rows);
        return cli_runtime_error(cmd);
    }
    if (csv_out) write_csv(stdout, rows, n);
    else write_markdown(stdout, rows, n, root);
    free(rows);
    return 0;
}
