/* Reading a run directory back: config.json, metrics.jsonl, state.safetensors.
 * Every error names the file (and the line of metrics.jsonl) and what was
 * expected, so a corrupt run inside a sweep is found before anything runs. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mfres/core.h"
#include "mfres/safetensors.h"
#include "mfres/store.h"
#include "store/config_keys.h"
#include "store/json.h"

static bool file_exists(const char *dir, const char *name) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0;
}

bool mfres_run_dir_is_run(const char *dir) { return file_exists(dir, "config.json"); }

static void copy_string(char *dst, size_t cap, const char *src) { snprintf(dst, cap, "%s", src ? src : ""); }

/* Keys that tell the runs of one comparison apart rather than their recipe. */
static bool per_run_key(const char *key) {
    static const char *keys[] = {"model", "depth", "block", "mode", "seed", "threads", "tau_init", "tau_lr_mult"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(key, keys[i])) return true;
    return false;
}

const char *config_key_unrecorded_default(const char *key) {
    static const char *const added[][2] = {{"device", "cpu"}, {"precision", "fp32"}};
    for (size_t k = 0; k < sizeof added / sizeof added[0]; k++)
        if (!strcmp(key, added[k][0])) return added[k][1];
    return NULL;
}

bool config_key_at_unrecorded_default(const char *key, const json_value *v) {
    const char *d = config_key_unrecorded_default(key);
    return d && v->type == JSON_STRING && !strcmp(v->string, d);
}

static int read_config(mfres_run_record *r) {
    char path[4400];
    snprintf(path, sizeof path, "%s/config.json", r->dir);
    json_value cfg;
    int rc = json_parse_file(path, &cfg);
    if (rc) return rc;
    const char *model, *mode, *data, *s;
    double seed, epochs;
    if (cfg.type != JSON_OBJECT || !json_get_string(&cfg, "model", &model) || !json_get_string(&cfg, "mode", &mode) ||
        !json_get_string(&cfg, "data", &data) || !json_get_number(&cfg, "seed", &seed) ||
        !json_get_number(&cfg, "epochs", &epochs)) {
        json_free(&cfg);
        return mfres_fail(MFRES_EFORMAT, "%s: not an mfres run configuration (expected an object with model, mode, "
                                         "data, seed and epochs)", path);
    }
    copy_string(r->model, sizeof r->model, model);
    copy_string(r->mode, sizeof r->mode, mode);
    copy_string(r->data_spec, sizeof r->data_spec, data);
    snprintf(r->data, sizeof r->data, "%.*s", (int)strcspn(data, ":"), data);
    r->seed = (long)seed;
    r->epochs = (int)epochs;
    copy_string(r->block, sizeof r->block, json_get_string(&cfg, "block", &s) ? s : "");
    copy_string(r->tau_init, sizeof r->tau_init, json_get_string(&cfg, "tau_init", &s) ? s : "");
    copy_string(r->recipe, sizeof r->recipe, json_get_string(&cfg, "recipe", &s) ? s : "");
    r->tau_lr_mult = 1;
    json_get_number(&cfg, "tau_lr_mult", &r->tau_lr_mult);

    size_t len;
    FILE *mem = open_memstream(&r->config_key, &len);
    if (!mem) {
        json_free(&cfg);
        return mfres_fail(MFRES_ENOMEM, "out of memory reading %s", path);
    }
    fputc('{', mem);
    for (int i = 0, n = 0; i < cfg.n; i++) {
        if (per_run_key(cfg.keys[i]) || config_key_at_unrecorded_default(cfg.keys[i], &cfg.items[i])) continue;
        fprintf(mem, "%s\"%s\": ", n++ ? ", " : "", cfg.keys[i]);
        json_write(&cfg.items[i], mem);
    }
    fputc('}', mem);
    fclose(mem);
    json_free(&cfg);

    FILE *fp = fopen(path, "rb");
    if (!fp) return mfres_fail(MFRES_EIO, "%s: cannot open (%s)", path, strerror(errno));
    mem = open_memstream(&r->config_text, &len);
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, fp)) > 0) fwrite(buf, 1, got, mem);
    fclose(fp);
    fclose(mem);
    return 0;
}

/* A stage-by-particle matrix of numbers: [[...], [...], [...]]. */
static int read_stages(const json_value *v, const char *what, int *particles, double *tau, int *order) {
    if (!v || v->type != JSON_ARRAY || v->n != MFRES_STAGES)
        return mfres_fail(MFRES_EFORMAT, "%s: expected %d lists, one per stage", what, MFRES_STAGES);
    for (int s = 0; s < MFRES_STAGES; s++) {
        const json_value *row = &v->items[s];
        if (row->type != JSON_ARRAY || (*particles >= 0 && row->n != *particles))
            return mfres_fail(MFRES_EFORMAT, "%s: stage %d: expected a list of %d numbers", what, s + 1, *particles);
        *particles = row->n;
        if (!tau && !order) continue;
        for (int i = 0; i < row->n; i++) {
            if (row->items[i].type != JSON_NUMBER)
                return mfres_fail(MFRES_EFORMAT, "%s: stage %d, item %d is not a number", what, s + 1, i + 1);
            if (tau) tau[s * row->n + i] = row->items[i].number;
            if (order) {
                int b = (int)row->items[i].number;
                if (b < 1 || b > row->n)
                    return mfres_fail(MFRES_EFORMAT, "%s: stage %d: block %d is outside 1..%d", what, s + 1, b, row->n);
                order[s * row->n + i] = b;
            }
        }
    }
    return 0;
}

static int read_epoch(const json_value *o, const char *what, mfres_epoch_record *e) {
    static const char *keys[] = {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"};
    double *dst[] = {NULL, &e->lr, &e->train_loss, &e->train_acc, &e->test_loss, &e->test_acc};
    double epoch;
    if (o->type != JSON_OBJECT) return mfres_fail(MFRES_EFORMAT, "%s: expected an object", what);
    for (int k = 0; k < 6; k++)
        if (!json_get_number(o, keys[k], k ? dst[k] : &epoch))
            return mfres_fail(MFRES_EFORMAT, "%s: the number \"%s\" is missing", what, keys[k]);
    e->epoch = (int)epoch;
    json_get_number(o, "images_per_s", &e->images_per_s);
    json_get_number(o, "epoch_seconds", &e->epoch_seconds);
    double reorders = -1;
    json_get_number(o, "reorders", &reorders);
    e->reorders = (int)reorders;
    const json_value *tau = json_get(o, "tau"), *order = json_get(o, "order");
    if (!tau && !order) return 0;
    int particles = -1;
    int rc = read_stages(tau, what, &particles, NULL, NULL);
    if (rc) return rc;
    e->particles = particles;
    e->tau = malloc(sizeof *e->tau * (size_t)(MFRES_STAGES * particles + 1));
    e->order = malloc(sizeof *e->order * (size_t)(MFRES_STAGES * particles + 1));
    if (!e->tau || !e->order) return mfres_fail(MFRES_ENOMEM, "%s: out of memory", what);
    if ((rc = read_stages(tau, what, &particles, e->tau, NULL))) return rc;
    return read_stages(order, what, &particles, NULL, e->order);
}

static int read_metrics(mfres_run_record *r) {
    char path[4400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        if (errno == ENOENT) return 0;
        return mfres_fail(MFRES_EIO, "%s: cannot open (%s)", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0, cap_ep = 0;
    for (int lineno = 1; !rc && (len = getline(&line, &cap, fp)) > 0; lineno++) {
        char what[4500];
        snprintf(what, sizeof what, "%s:%d", path, lineno);
        if (line[len - 1] != '\n') {
            rc = mfres_fail(MFRES_EFORMAT, "%s: the last line is cut short (no newline)", what);
            break;
        }
        if (r->epochs_done == cap_ep) {
            cap_ep = cap_ep ? cap_ep * 2 : 16;
            mfres_epoch_record *grown = realloc(r->ep, sizeof *grown * (size_t)cap_ep);
            if (!grown) {
                rc = mfres_fail(MFRES_ENOMEM, "%s: out of memory", what);
                break;
            }
            r->ep = grown;
        }
        mfres_epoch_record *e = &r->ep[r->epochs_done];
        memset(e, 0, sizeof *e);
        r->epochs_done++;
        json_value o;
        if ((rc = json_parse(line, (size_t)len, what, &o))) break;
        rc = read_epoch(&o, what, e);
        json_free(&o);
        if (!rc && e->epoch != lineno)
            rc = mfres_fail(MFRES_EFORMAT, "%s: epoch %d where epoch %d was expected", what, e->epoch, lineno);
    }
    free(line);
    fclose(fp);
    return rc;
}

static int read_state(mfres_run_record *r) {
    char path[4400];
    snprintf(path, sizeof path, "%s/state.safetensors", r->dir);
    r->state_epochs = -1;
    if (!file_exists(r->dir, "state.safetensors")) return 0;
    mfres_safetensors st;
    int rc = mfres_safetensors_load(&st, path);
    if (rc) return rc;
    const char *ep = mfres_safetensors_meta(&st, "epochs_done");
    if (!ep) rc = mfres_fail(MFRES_EFORMAT, "%s: not an mfres training state (no epochs_done)", path);
    else r->state_epochs = atoi(ep);
    mfres_safetensors_free(&st);
    return rc;
}

int mfres_run_read(const char *dir, mfres_run_record *r) {
    memset(r, 0, sizeof *r);
    r->state_epochs = -1;
    if (strlen(dir) >= sizeof r->dir) return mfres_fail(MFRES_EINVAL, "run directory path too long: %s", dir);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    size_t n = strlen(r->dir);
    while (n > 1 && r->dir[n - 1] == '/') r->dir[--n] = '\0';
    const char *slash = strrchr(r->dir, '/');
    snprintf(r->name, sizeof r->name, "%.255s", slash ? slash + 1 : r->dir);
    int rc = read_config(r);
    if (!rc) rc = read_metrics(r);
    if (!rc) rc = read_state(r);
    if (rc) {
        mfres_run_free(r);
        return rc;
    }
    /* A crash between writing metrics.jsonl and the state leaves one line the
     * state does not cover; a resumed run redoes that epoch. */
    if (r->state_epochs >= 0 && r->epochs_done > r->state_epochs) r->epochs_done = r->state_epochs;
    r->finished = r->epochs_done >= r->epochs;
    return 0;
}

void mfres_run_free(mfres_run_record *r) {
    if (!r) return;
    if (r->ep) {
        for (int i = 0; i < r->epochs_done; i++) {
            free(r->ep[i].tau);
            free(r->ep[i].order);
        }
    }
    free(r->ep);
    free(r->config_text);
    free(r->config_key);
    r->ep = NULL;
    r->config_text = r->config_key = NULL;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int mfres_runs_scan(const char *root, mfres_run_record **runs_out, int *n_out) {
    *runs_out = NULL;
    *n_out = 0;
    DIR *d = opendir(root);
    if (!d) return mfres_fail(MFRES_EIO, "%s: cannot open the directory (%s)", root, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        if (ent->d_name[0] == '.') continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", root, ent->d_name);
        struct stat st;
        if (stat(path, &st) || !S_ISDIR(st.st_mode)) continue;
        if (!mfres_run_dir_is_run(path)) {
            if (file_exists(path, "metrics.jsonl") || file_exists(path, "state.safetensors") ||
                file_exists(path, "model.safetensors")) {
                rc = mfres_fail(MFRES_EFORMAT, "%s: a run directory without config.json (corrupt or half-deleted; "
                                               "HINT: move it out of %s)", path, root);
                break;
            }
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, sizeof *names * (size_t)cap);
            if (!grown) {
                rc = mfres_fail(MFRES_ENOMEM, "out of memory scanning %s", root);
                break;
            }
            names = grown;
        }
        names[n++] = strdup(ent->d_name);
    }
    closedir(d);
    if (!rc && n) qsort(names, (size_t)n, sizeof *names, compare_names);
    mfres_run_record *runs = rc || !n ? NULL : calloc((size_t)n, sizeof *runs);
    if (!rc && n && !runs) rc = mfres_fail(MFRES_ENOMEM, "out of memory scanning %s", root);
    int done = 0;
    for (; !rc && done < n; done++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", root, names[done]);
        rc = mfres_run_read(path, &runs[done]);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc) {
        mfres_runs_free(runs, done - 1);
        return rc;
    }
    *runs_out = runs;
    *n_out = n;
    return 0;
}

void mfres_runs_free(mfres_run_record *runs, int n) {
    for (int i = 0; i < n; i++) mfres_run_free(&runs[i]);
    free(runs);
}
