/* mfres sweep: a grid of training runs (models x modes x tau settings x seeds)
 * in run directories under one root, restartable.
 *
 * ROOT/sweep.json records the grid and the resolved flags every run shares.
 * A second call with the same flags skips the finished runs and continues a
 * stopped one from its last complete epoch (the --resume machinery, so the
 * result is the same bits as an unbroken run). Before anything runs, every run
 * directory under ROOT is read back: a corrupt one, or a root that holds runs
 * of another grid, stops the sweep with nothing written. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "mfres/core.h"
#include "mfres/store.h"
#include "mfres/train.h"
#include "store/config_keys.h"
#include "store/json.h"

enum { MAX_ITEMS = 64 };

typedef struct grid {
    char *models[MAX_ITEMS];
    int n_models;
    char *modes[MAX_ITEMS];
    int n_modes;
    long seeds[MAX_ITEMS];
    int n_seeds;
    char *taus[MAX_ITEMS]; /* --tau-lr-mult values as given; none: the default */
    int n_taus;
} grid;

typedef struct point {
    char name[256];
    const char *model, *mode, *tau;
    long seed;
} point;

static void print_help(void) {
    printf("usage: mfres sweep --root DIR [grid flags] [train flags]\n"
           "\n"
           "Trains every point of a grid into DIR/<model>-<mode>[-taulr<X>]-s<seed>, one run after\n"
           "another. Restartable: finished runs are skipped, a stopped run continues from its last\n"
           "complete epoch (bit-identical to an unbroken run). Prints where it stands, and keeps\n"
           "DIR/runs.sqlite (the run store) up to date.\n"
           "\n"
           "grid:\n"
           "  --root DIR            the sweep's directory (required)\n"
           "  --models A,B,...      resnetN, or resnetN/BLOCK for a block kind [resnet20]\n"
           "  --modes A,B           vanilla, meanfield [vanilla,meanfield]\n"
           "  --seeds A,B,...       [0,1,2]\n"
           "  --tau-lr-mults X,Y    mean-field runs once per value of --tau-lr-mult [the train default]\n"
           "  --status              print where the sweep stands and stop\n"
           "\n"
           "Every other flag goes to each run as for 'mfres train' (--recipe, --data, --epochs,\n"
           "--train-limit, --threads, ...); --model, --mode, --seed, --out and --resume are the\n"
           "sweep's to set. A second call must give the same train flags (--threads and --progress\n"
           "may change); the grid may grow.\n"
           "\n"
           "example: mfres sweep --root runs/table1 --models resnet20,resnet56 --recipe p1-cifar10\n");
}

static int split_list(const char *cmd, const char *flag, const char *value, char **items, int *n) {
    *n = 0;
    char *copy = strdup(value);
    for (char *save = NULL, *w = strtok_r(copy, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_ITEMS) {
            free(copy);
            return cli_usage_error(cmd, "%s accepts at most %d values", flag, MAX_ITEMS);
        }
        items[(*n)++] = strdup(w);
    }
    free(copy);
    if (!*n) return cli_usage_error(cmd, "%s needs at least one value", flag);
    return 0;
}

/* The train argument vector of one grid point (or of the shared flags alone
 * when p is NULL). */
static int point_args(const cli_args *shared, const point *p, cli_args *out) {
    out->argc = 0;
    out->argv = calloc((size_t)shared->argc + 16, sizeof *out->argv);
    if (!out->argv) return -1;
    out->argv[out->argc++] = strdup("sweep");
    for (int i = 0; i < shared->argc; i++) out->argv[out->argc++] = strdup(shared->argv[i]);
    if (p) {
        char model[128];
        snprintf(model, sizeof model, "%s", p->model);
        char *block = strchr(model, '/');
        if (block) *block++ = '\0';
        out->argv[out->argc++] = strdup("--model");
        out->argv[out->argc++] = strdup(model);
        if (block) {
            out->argv[out->argc++] = strdup("--block");
            out->argv[out->argc++] = strdup(block);
        }
        out->argv[out->argc++] = strdup("--mode");
        out->argv[out->argc++] = strdup(p->mode);
        char seed[32];
        snprintf(seed, sizeof seed, "%ld", p->seed);
        out->argv[out->argc++] = strdup("--seed");
        out->argv[out->argc++] = strdup(seed);
        if (p->tau) {
            out->argv[out->argc++] = strdup("--tau-lr-mult");
            out->argv[out->argc++] = strdup(p->tau);
        }
    }
    out->argv[out->argc] = NULL;
    return 0;
}

static int config_json(const mfres_train_config *cfg, json_value *out) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) return mfres_fail(MFRES_ENOMEM, "out of memory");
    mfres_train_config_write_json(cfg, mem);
    fclose(mem);
    int rc = json_parse(text, len, "the resolved configuration", out);
    free(text);
    return rc;
}

/* Keys that may differ between calls of one sweep, or that training resolves
 * from the data (and that config.json therefore holds resolved). */
static bool key_may_differ(const char *key, const mfres_train_config *cfg) {
    if (!strcmp(key, "threads") || !strcmp(key, "input") || !strcmp(key, "num_classes")) return true;
    if (!strcmp(key, "batch")) return cfg->model.batch <= 0;
    if (!strcmp(key, "augment")) return cfg->augment < 0;
    if (!strcmp(key, "flip")) return cfg->flip < 0;
    return false;
}

/* Names the first key where `there` (found on disk) and `here` differ. */
static bool first_difference(const json_value *there, const json_value *here, const mfres_train_config *cfg,
                             char *msg, size_t cap) {
    for (int i = 0; i < here->n; i++) {
        if (key_may_differ(here->keys[i], cfg)) continue;
        const json_value *old = json_get(there, here->keys[i]);
        bool same = old ? json_equal(old, &here->items[i])
                        : config_key_at_unrecorded_default(here->keys[i], &here->items[i]);
        if (same) continue;
        char *a = NULL, *b = NULL;
        size_t la, lb;
        FILE *ma = open_memstream(&a, &la), *mb = open_memstream(&b, &lb);
        if (old) json_write(old, ma);
        else fputs("(absent)", ma);
        json_write(&here->items[i], mb);
        fclose(ma);
        fclose(mb);
        snprintf(msg, cap, "%s is %s there, %s here", here->keys[i], a, b);
        free(a), free(b);
        return true;
    }
    return false;
}

static int write_sweep_json(const char *path, const grid *g, const cli_args *shared, const mfres_train_config *base) {
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    FILE *fp = af.fp;
    fprintf(fp, "{\"format\": \"mfres-sweep\", \"version\": 1,\n \"models\": [");
    for (int i = 0; i < g->n_models; i++) fprintf(fp, "%s\"%s\"", i ? ", " : "", g->models[i]);
    fprintf(fp, "],\n \"modes\": [");
    for (int i = 0; i < g->n_modes; i++) fprintf(fp, "%s\"%s\"", i ? ", " : "", g->modes[i]);
    fprintf(fp, "],\n \"seeds\": [");
    for (int i = 0; i < g->n_seeds; i++) fprintf(fp, "%s%ld", i ? ", " : "", g->seeds[i]);
    fprintf(fp, "],\n \"tau_lr_mults\": [");
    for (int i = 0; i < g->n_taus; i++) fprintf(fp, "%s\"%s\"", i ? ", " : "", g->taus[i]);
    fprintf(fp, "],\n \"train_flags\": [");
    for (int i = 0; i < shared->argc; i++) {
        json_value s = {.type = JSON_STRING, .string = shared->argv[i]};
        if (i) fputs(", ", fp);
        json_write(&s, fp);
    }
    fprintf(fp, "],\n \"base\": ");
    mfres_train_config_write_json(base, fp);
    fprintf(fp, "}\n");
    return mfres_atomic_commit(&af);
}

static const mfres_run_record *find_run(const mfres_run_record *runs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(runs[i].name, name)) return &runs[i];
    return NULL;
}

static void describe(const mfres_run_record *r, int epochs, char *buf, size_t cap) {
    if (!r || (r->epochs_done == 0 && r->state_epochs <= 0)) snprintf(buf, cap, "to start (%d epochs)", epochs);
    else if (r->epochs_done >= epochs)
        snprintf(buf, cap, "finished, test error %.2f %%", 100 * (1 - r->ep[epochs - 1].test_acc));
    else snprintf(buf, cap, "stopped after epoch %d of %d", r->epochs_done, epochs);
}

static void free_grid(grid *g) {
    for (int i = 0; i < g->n_models; i++) free(g->models[i]);
    for (int i = 0; i < g->n_modes; i++) free(g->modes[i]);
    for (int i = 0; i < g->n_taus; i++) free(g->taus[i]);
}

static int run_sweep(const char *cmd, const char *root, grid *g, cli_args *shared, bool status_only);

int cmd_sweep(int argc, char **argv) {
    const char *cmd = "sweep";
    const char *root = NULL;
    bool status_only = false;
    grid g = {0};
    cli_args shared = {0, calloc((size_t)argc + 1, sizeof(char *))};
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *v;
        int r;
        char *items[MAX_ITEMS];
        int n;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            print_help();
            rc = -1;
        } else if (!strcmp(argv[i], "--status")) {
            status_only = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--root", &v))) {
            if (r < 0) rc = 2;
            else root = v;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--models", &v))) {
            rc = r < 0 ? 2 : split_list(cmd, "--models", v, g.models, &g.n_models);
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--modes", &v))) {
            rc = r < 0 ? 2 : split_list(cmd, "--modes", v, g.modes, &g.n_modes);
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--tau-lr-mults", &v))) {
            rc = r < 0 ? 2 : split_list(cmd, "--tau-lr-mults", v, g.taus, &g.n_taus);
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--seeds", &v))) {
            if (r < 0 || split_list(cmd, "--seeds", v, items, &n)) {
                rc = 2;
                continue;
            }
            g.n_seeds = n;
            for (int k = 0; k < n; k++) {
                if (!rc && cli_parse_long(cmd, "--seeds", items[k], 0, 0x7fffffffffffffffL, &g.seeds[k])) rc = 2;
                free(items[k]);
            }
        } else {
            static const char *owned[] = {"--model", "--depth", "--mode", "--seed", "--out", "--resume",
                                          "--tau-lr-mult"};
            for (size_t k = 0; k < sizeof owned / sizeof owned[0] && !rc; k++) {
                size_t len = strlen(owned[k]);
                if (!strncmp(argv[i], owned[k], len) && (argv[i][len] == '\0' || argv[i][len] == '='))
                    rc = cli_usage_error(cmd, "%s is set by the sweep for each run (use --root, --models, --modes, "
                                              "--seeds, --tau-lr-mults)", owned[k]);
            }
            shared.argv[shared.argc++] = argv[i];
        }
    }
    if (!rc && !root) rc = cli_usage_error(cmd, "--root DIR is required");
    if (!rc && !g.n_models) g.models[g.n_models++] = strdup("resnet20");
    if (!rc && !g.n_modes) {
        g.modes[g.n_modes++] = strdup("vanilla");
        g.modes[g.n_modes++] = strdup("meanfield");
    }
    if (!rc && !g.n_seeds) {
        for (int k = 0; k < 3; k++) g.seeds[k] = k;
        g.n_seeds = 3;
    }
    if (!rc) rc = run_sweep(cmd, root, &g, &shared, status_only);
    free_grid(&g);
    free(shared.argv);
    return rc < 0 ? 0 : rc;
}

static int run_sweep(const char *cmd, const char *root, grid *g, cli_args *shared, bool status_only) {
    /* The shared flags alone: the grid's identity. */
    mfres_train_config base;
    bool out_given;
    cli_args args;
    if (point_args(shared, NULL, &args)) return cli_usage_error(cmd, "out of memory");
    int rc = cli_train_parse(cmd, args.argc, args.argv, &base, &out_given);
    cli_args_free(&args);
    if (rc) return rc;
    base.threads = 0;

    /* Every point parses (an unknown model or mode is a usage error, here). */
    int n_points = 0, cap = g->n_models * g->n_modes * (g->n_taus ? g->n_taus : 1) * g->n_seeds;
    point *points = calloc((size_t)cap, sizeof *points);
    mfres_train_config *cfgs = calloc((size_t)cap, sizeof *cfgs);
    if (!points || !cfgs) return free(points), free(cfgs), cli_usage_error(cmd, "out of memory");
    for (int s = 0; s < g->n_seeds; s++)
        for (int m = 0; m < g->n_models; m++)
            for (int o = 0; o < g->n_modes; o++) {
                bool mf = !strcmp(g->modes[o], "meanfield") || !strcmp(g->modes[o], "mean-field");
                int n_t = mf && g->n_taus ? g->n_taus : 1;
                for (int t = 0; t < n_t && !rc; t++) {
                    point *p = &points[n_points];
                    p->model = g->models[m], p->mode = g->modes[o], p->seed = g->seeds[s];
                    p->tau = mf && g->n_taus ? g->taus[t] : NULL;
                    char model[128];
                    snprintf(model, sizeof model, "%s", p->model);
                    for (char *c = model; *c; c++)
                        if (*c == '/') *c = '-';
                    snprintf(p->name, sizeof p->name, "%s-%s%s%s-s%ld", model, mf ? "meanfield" : p->mode,
                             p->tau ? "-taulr" : "", p->tau ? p->tau : "", p->seed);
                    if (point_args(shared, p, &args)) rc = cli_usage_error(cmd, "out of memory");
                    if (!rc) rc = cli_train_parse(cmd, args.argc, args.argv, &cfgs[n_points], &out_given);
                    cli_args_free(&args);
                    if (!rc) {
                        snprintf(cfgs[n_points].out_dir, sizeof cfgs[n_points].out_dir, "%s/%s", root, p->name);
                    }
                    n_points++;
                }
            }
    mfres_run_record *runs = NULL;
    int n_runs = 0;
    json_value base_json = {0}, old = {0};
    char sweep_path[4200];
    snprintf(sweep_path, sizeof sweep_path, "%s/sweep.json", root);
    struct stat st;
    bool root_exists = stat(root, &st) == 0;
    if (rc) goto done;
    if ((rc = config_json(&base, &base_json))) {
        rc = cli_runtime_error(cmd);
        goto done;
    }
    /* Read back everything under the root before touching anything. */
    if (root_exists && mfres_runs_scan(root, &runs, &n_runs)) {
        rc = cli_runtime_error(cmd);
        goto done;
    }
    if (stat(sweep_path, &st) == 0) {
        if (json_parse_file(sweep_path, &old)) {
            rc = cli_runtime_error(cmd);
            goto done;
        }
        char diff[1024];
        const json_value *old_base = json_get(&old, "base");
        if (!old_base) {
            fprintf(stderr, "mfres sweep: error: %s is not an mfres sweep file (no \"base\")\n", sweep_path);
            rc = 1;
            goto done;
        }
        if (first_difference(old_base, &base_json, &base, diff, sizeof diff)) {
            fprintf(stderr,
                    "mfres sweep: error: %s holds the runs of another grid (%s: %s). HINT: give the flags of that "
                    "sweep (its sweep.json lists them), or choose another --root\n",
                    root, sweep_path, diff);
            rc = 2;
            goto done;
        }
    } else if (n_runs) {
        fprintf(stderr,
                "mfres sweep: error: %s holds run directories (%s, ...) but no sweep.json: not a sweep root. "
                "HINT: choose another --root\n",
                root, runs[0].name);
        rc = 2;
        goto done;
    }
    /* Each existing run of this grid must be the run this point would make. */
    for (int i = 0; i < n_points; i++) {
        const mfres_run_record *r = find_run(runs, n_runs, points[i].name);
        if (!r) continue;
        json_value here, there;
        char where[4400], diff[1024];
        snprintf(where, sizeof where, "%s/config.json", r->dir);
        if ((rc = config_json(&cfgs[i], &here)) || (rc = json_parse(r->config_text, strlen(r->config_text), where,
                                                                     &there))) {
            json_free(&here);
            rc = cli_runtime_error(cmd);
            goto done;
        }
        bool differs = first_difference(&there, &here, &cfgs[i], diff, sizeof diff);
        json_free(&here);
        json_free(&there);
        if (differs) {
            fprintf(stderr, "mfres sweep: error: %s holds a run of another grid (%s). HINT: choose another --root\n",
                    where, diff);
            rc = 2;
            goto done;
        }
    }

    int finished = 0, stopped = 0;
    for (int i = 0; i < n_points; i++) {
        const mfres_run_record *r = find_run(runs, n_runs, points[i].name);
        if (r && r->epochs_done >= cfgs[i].epochs) finished++;
        else if (r && r->epochs_done > 0) stopped++;
    }
    printf("sweep %s: %d runs (%d models x %d modes%s x %d seeds), %d finished, %d stopped, %d to start\n", root,
           n_points, g->n_models, g->n_modes, g->n_taus ? " (x tau settings)" : "", g->n_seeds, finished, stopped,
           n_points - finished - stopped);
    for (int i = 0; i < n_points; i++) {
        char state[128];
        describe(find_run(runs, n_runs, points[i].name), cfgs[i].epochs, state, sizeof state);
        printf("  %-36s %s\n", points[i].name, state);
    }
    fflush(stdout);
    if (status_only) goto done;

    if ((rc = mfres_mkdir_p(root)) || (rc = write_sweep_json(sweep_path, g, shared, &base))) {
        rc = cli_runtime_error(cmd);
        goto done;
    }
    int failures = 0, done_now = 0;
    for (int i = 0; i < n_points; i++) {
        const mfres_run_record *r = find_run(runs, n_runs, points[i].name);
        if (r && r->epochs_done >= cfgs[i].epochs) continue;
        if (r && r->epochs_done > 0)
            printf("[%d/%d] %s: resuming after epoch %d of %d\n", i + 1, n_points, points[i].name, r->epochs_done,
                   cfgs[i].epochs);
        else printf("[%d/%d] %s: starting (%d epochs)\n", i + 1, n_points, points[i].name, cfgs[i].epochs);
        fflush(stdout);
        /* A run with a complete epoch continues from it (the sweep's --threads may differ from the run's); one
         * killed before its first epoch ended holds nothing to keep and starts over. */
        cfgs[i].resume = r && r->epochs_done > 0;
        cfgs[i].overwrite = r && r->epochs_done == 0;
        if (cfgs[i].resume) snprintf(cfgs[i].allow_change, sizeof cfgs[i].allow_change, "threads");
        mfres_train_result res;
        if (mfres_train(&cfgs[i], &res)) {
            fprintf(stderr, "mfres sweep: error: run %s: %s\n", cfgs[i].out_dir, mfres_last_error());
            printf("[%d/%d] %s: failed (see the error above); going on with the next run\n", i + 1, n_points,
                   points[i].name);
            failures++;
        } else {
            done_now++;
            printf("[%d/%d] %s: finished, test error %.2f %% (%.0f s, %.0f images/s)\n", i + 1, n_points,
                   points[i].name, 100 * (1 - res.test_acc), res.total_seconds, res.images_per_s);
        }
        fflush(stdout);
        /* The store follows the sweep, so it can be queried while it runs. */
        char db[4400];
        if (mfres_store_rebuild(root, db, sizeof db, NULL))
            fprintf(stderr, "mfres sweep: warning: the run store was not updated: %s\n", mfres_last_error());
    }
    char db[4400];
    int n_stored = 0;
    if (mfres_store_rebuild(root, db, sizeof db, &n_stored)) {
        rc = cli_runtime_error(cmd);
        goto done;
    }
    printf("sweep %s: %d runs trained now, %d failed, %d finished before; run store %s (%d runs)\n", root, done_now,
           failures, finished, db, n_stored);
    rc = failures ? 1 : 0;
done:
    json_free(&base_json);
    json_free(&old);
    mfres_runs_free(runs, n_runs);
    free(points);
    free(cfgs);
    return rc;
}
