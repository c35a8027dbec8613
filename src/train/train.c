/* The training loop.
 *
 * Per step: the loader's background thread has the batch ready; forward,
 * backward, one optimiser step (theta, and in mean-field mode tau with its
 * clamp and the re-sort of the blocks). Per epoch: evaluation on the test
 * split, one line appended to metrics.jsonl and the model file rewritten --
 * both atomically, so a crash or a NaN never leaves a half-written file and
 * the last good model stays in place.
 *
 * Data parallelism (cfg.dist, docs/DISTRIBUTED.md): each rank trains its share
 * of every global batch, the gradients are summed over ranks after the
 * backward pass (train/parallel.c) and every rank takes the same step; rank 0
 * alone reads and writes the run directory and prints. */
#include "mfres/train.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mfres/core.h"
#include "mfres/meanfield.h"
#include "mfres/optim.h"
#include "mfres/progress.h"
#include "mfres/safetensors.h"
#include "gpu/gpu.h"
#include "store/config_keys.h"
#include "train/parallel.h"
#include "train/run_dir.h"

void openblas_set_num_threads(int num_threads);

void mfres_train_config_default(mfres_train_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->data, sizeof cfg->data, "fashion-mnist");
    mfres_model_config_default(&cfg->model);
    cfg->model.batch = 0; /* the data set's default, below */
    cfg->epochs = 1;
    cfg->lr = 0.1;
    cfg->momentum = 0.9;
    cfg->weight_decay = 1e-4;
    cfg->tau_lr_mult = 1.0;
    cfg->gamma = 0.1;
    cfg->warmup_lr = 0.01;
    cfg->cosine = true;
    cfg->seed = 0;
    cfg->threads = 0;
    cfg->augment = -1;
    cfg->flip = -1;
    cfg->progress = -1;
}

int mfres_set_threads(int threads) {
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads <= 0) threads = cores;
    if (cores > 0 && threads > cores) {
        mfres_log("warning: %d threads asked for, but this machine has %d cores: using %d", threads, cores, cores);
        threads = cores;
    }
    if (threads <= 0) threads = 1;
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    return threads;
}

void mfres_train_config_write_json(const mfres_train_config *c, FILE *fp) {
    const mfres_model_config *m = &c->model;
    fprintf(fp, "{\n  \"recipe\": \"%s\",\n  \"data\": \"%s\",\n", c->recipe, c->data);
    if (m->family == MFRES_FAMILY_RESNEXT)
        fprintf(fp, "  \"model\": \"resnext%d-%dx%dd\",\n  \"cardinality\": %d,\n  \"group_width\": %d,\n", m->depth,
                m->cardinality, m->group_width, m->cardinality, m->group_width);
    else
        fprintf(fp, "  \"model\": \"resnet%d\",\n", m->depth);
    fprintf(fp, "  \"depth\": %d,\n  \"block\": \"%s\",\n  \"mode\": \"%s\",\n", m->depth, mfres_block_name(m->block),
            mfres_mode_name(m->mode));
    fprintf(fp, "  \"tau_init\": \"%s\",\n  \"tau_lr_mult\": %.9g,\n", mfres_tau_init_name(m->tau_init), c->tau_lr_mult);
    fprintf(fp, "  \"input\": [%d, %d, %d],\n  \"num_classes\": %d,\n  \"base_width\": %d,\n", m->in_c, m->in_h,
            m->in_w, m->num_classes, m->base_width);
    fprintf(fp, "  \"batch\": %d,\n  \"epochs\": %d,\n  \"lr\": %.9g,\n  \"momentum\": %.9g,\n", m->batch, c->epochs, c->lr,
            c->momentum);
    fprintf(fp, "  \"weight_decay\": %.9g,\n  \"nesterov\": %s,\n  \"schedule\": \"%s\",\n  \"milestones\": [",
            c->weight_decay, c->nesterov ? "true" : "false", c->cosine ? "cosine" : "multistep");
    for (int i = 0; i < c->n_milestones; i++) fprintf(fp, "%s%ld", i ? ", " : "", c->milestones[i]);
    fprintf(fp, "],\n  \"warmup_steps\": %ld,\n  \"warmup_lr\": %.9g,", c->warmup_steps, c->warmup_lr);
    fprintf(fp, "\n  \"gamma\": %.9g,\n  \"seed\": %llu,\n  \"threads\": %d,\n", c->gamma,
            (unsigned long long)c->seed, c->threads);
    fprintf(fp, "  \"device\": \"%s\",\n  \"precision\": \"%s\",\n", mfres_device_name(c->device),
            mfres_precision_name(c->precision));
    fprintf(fp, "  \"augment\": %s,\n  \"flip\": %s,\n  \"train_limit\": %d,\n  \"test_limit\": %d,\n",
            c->augment ? "true" : "false", c->flip ? "true" : "false", c->train_limit, c->test_limit);
    fprintf(fp, "  \"bn_momentum\": %.9g,\n  \"bn_eps\": %.9g\n}\n", m->bn_momentum, m->bn_eps);
}

/* Each rank evaluates its share of every global batch; the sums are added over ranks. */
static int evaluate(mfres_model *m, const mfres_dataset *ds, const float *mean, const float *std, par_comm *pc,
                    double *loss, double *acc) {
    mfres_loader_config lc = {.batch = m->cfg.batch, .mean = mean, .std = std,
                              .shard = pc ? pc->dist->rank : 0, .shards = pc ? pc->dist->size : 1};
    mfres_loader *loader;
    int rc = mfres_loader_create(&loader, ds, &lc);
    if (rc) return rc;
    rc = mfres_loader_start_epoch(loader, 0);
    double loss_sum = 0;
    long correct = 0, seen = 0;
    const float *images;
    const int32_t *labels;
    int count;
    while (!rc && (rc = mfres_loader_next(loader, &images, &labels, &count)) == 1) {
        double batch_loss;
        int hits;
        rc = mfres_model_forward(m, images, labels, false, &batch_loss, &hits);
        loss_sum += batch_loss * count;
        correct += hits;
        seen += count;
    }
    mfres_loader_free(loader);
    if (rc < 0) return rc;
    if (pc && pc->dist->size > 1) {
        double sums[3] = {loss_sum, (double)correct, (double)seen};
        if ((rc = par_reduce_sums(pc, sums, 3))) return rc;
        loss_sum = sums[0], correct = (long)sums[1], seen = (long)sums[2];
    }
    *loss = seen ? loss_sum / seen : 0;
    *acc = seen ? (double)correct / seen : 0;
    return MFRES_OK;
}

int mfres_evaluate(mfres_model *m, const mfres_dataset *ds, const float *mean, const float *std, double *loss,
                   double *acc) {
    return evaluate(m, ds, mean, std, NULL, loss, acc);
}

/* A shallow view of the first `limit` images (0: all). */
static mfres_dataset subset(const mfres_dataset *ds, int limit) {
    mfres_dataset v = *ds;
    if (limit > 0 && limit < v.n) v.n = limit;
    return v;
}

/* metrics.jsonl is kept in memory and rewritten whole each epoch: atomic. */
typedef struct text {
    char *buf;
    size_t len, cap;
} text;

static void text_printf(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_printf(text *t, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        t->cap = (t->cap + (size_t)n + 1) * 2;
        t->buf = realloc(t->buf, t->cap);
    }
}

/* A JSON string: a data path may hold quotes or backslashes. */
static void text_json_string(text *t, const char *s) {
    text_printf(t, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') text_printf(t, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) text_printf(t, "\\u%04x", (unsigned char)*s);
        else text_printf(t, "%c", *s);
    }
    text_printf(t, "\"");
}

static void append_tau(text *t, const mfres_model *m) {
    int P = m->particles;
    text_printf(t, ", \"tau\": [");
    for (int s = 0; s < 3; s++) {
        text_printf(t, "%s[", s ? ", " : "");
        for (int i = 0; i < P; i++) text_printf(t, "%s%.6g", i ? ", " : "", m->tau[s * P + i]);
        text_printf(t, "]");
    }
    text_printf(t, "], \"order\": [");
    for (int s = 0; s < 3; s++) {
        text_printf(t, "%s[", s ? ", " : "");
        for (int i = 0; i < P; i++) text_printf(t, "%s%d", i ? ", " : "", 1 + m->order[s * P + i]);
        text_printf(t, "]");
    }
    text_printf(t, "]");
}

/* ---- resume: DIR/state.safetensors holds everything a run needs to go on
 * exactly as if it had not stopped: the model's tensors, the momentum
 * buffers, the epochs and steps done. It is written last in each epoch, so
 * its presence marks the epoch complete. The data order and augmentation
 * depend only on (seed, epoch), so a resumed run repeats the same batches. */

/* Version 2 records every setting (run_settings) as "setting.KEY"; version 1
 * only this fingerprint, which is still honoured. */
enum { STATE_VERSION = 2 };

/* What had to match for a version-1 state. */
static void fingerprint(const mfres_train_config *c, const char *data_name, char *buf, size_t cap) {
    snprintf(buf, cap, "data=%s depth=%d block=%s mode=%s tau_init=%s width=%d batch=%d seed=%llu", data_name,
             c->model.depth, mfres_block_name(c->model.block), mfres_mode_name(c->model.mode),
             mfres_tau_init_name(c->model.tau_init), c->model.base_width, c->model.batch,
             (unsigned long long)c->seed);
    if (c->model.family == MFRES_FAMILY_RESNEXT) {
        size_t used = strlen(buf);
        snprintf(buf + used, cap - used, " resnext=%dx%dd", c->model.cardinality, c->model.group_width);
    }
}

static int save_state(const char *dir, const mfres_model *m, const mfres_optimizer *opt, int epochs_done, long steps,
                      int epochs, const run_setting *settings, int n_settings) {
    enum { MAX_EXTRA = 2 };
    mfres_st_write *w = malloc(sizeof *w * (m->n_tensors + MAX_EXTRA));
    char(*names)[80] = malloc(sizeof *names * m->n_tensors);
    if (!w || !names) {
        free(w), free(names);
        return mfres_fail(MFRES_ENOMEM, "out of memory saving the training state");
    }
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        snprintf(names[i], sizeof names[i], "model.%s", m->tensors[i].name);
        w[n++] = (mfres_st_write){names[i], m->tensors[i].ndim, m->tensors[i].shape, m->tensors[i].data};
    }
    int64_t n_params = (int64_t)m->n_params, n_tau = m->n_tau;
    w[n++] = (mfres_st_write){"optimizer.velocity", 1, &n_params, opt->velocity};
    if (n_tau) w[n++] = (mfres_st_write){"optimizer.tau_velocity", 1, &n_tau, opt->tau_velocity};
    mfres_st_meta meta[5 + RUN_MAX_SETTINGS];
    int n_meta = 0;
    mfres_st_meta_put(meta, &n_meta, "format", "mfres-train-state");
    mfres_st_meta_put(meta, &n_meta, "format_version", "%d", STATE_VERSION);
    mfres_st_meta_put(meta, &n_meta, "epochs_done", "%d", epochs_done);
    mfres_st_meta_put(meta, &n_meta, "steps", "%ld", steps);
    mfres_st_meta_put(meta, &n_meta, "epochs", "%d", epochs);
    for (int i = 0; i < n_settings; i++) {
        char key[64];
        snprintf(key, sizeof key, "setting.%s", settings[i].key);
        mfres_st_meta_put(meta, &n_meta, key, "%s", settings[i].value);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    int rc = mfres_safetensors_save(path, w, n, meta, n_meta);
    free(w), free(names);
    return rc;
}

/* A metadata integer in [min, max], or an error naming the key: a damaged
 * state is never read as 0. */
static int state_long(const mfres_safetensors *st, const char *path, const char *key, long min, long max, long *out) {
    const char *v = mfres_safetensors_meta(st, key);
    if (!v) return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' is missing (not an mfres training state?)", path, key);
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < min || x > max)
        return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' should be an integer in [%ld, %ld], found '%s'", path, key,
                          min, max, v);
    *out = x;
    return MFRES_OK;
}

/* The settings of the run in the state against this command's: each difference
 * is refused unless allowed, and written (allowed or not) into `changes` as
 * JSON members "key": ["old", "new"] for config.json's history. */
static int compare_settings(const mfres_safetensors *st, const char *path, const mfres_train_config *cfg,
                            const run_setting *settings, int n_settings, text *changes) {
    text refused = {0};
    int rc = MFRES_OK;
    for (int i = 0; i < n_settings && !rc; i++) {
        char key[64];
        snprintf(key, sizeof key, "setting.%s", settings[i].key);
        const char *was = mfres_safetensors_meta(st, key);
        if (!was) was = config_key_unrecorded_default(settings[i].key); /* a state from before the key */
        if (!was) {
            rc = mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' is missing", path, key);
            break;
        }
        if (!strcmp(was, settings[i].value)) continue;
        text_printf(changes, "%s\"%s\": [", changes->len ? ", " : "", settings[i].key);
        text_json_string(changes, was);
        text_printf(changes, ", ");
        text_json_string(changes, settings[i].value);
        text_printf(changes, "]");
        if (!run_change_allowed(cfg->allow_change, settings[i].key))
            text_printf(&refused, "%s%s: the run has %s, this command %s", refused.len ? "; " : "", settings[i].key,
                        was, settings[i].value);
    }
    if (!rc && refused.len)
        rc = mfres_fail(MFRES_EINVAL,
                        "--resume of %s would change the result: %s. HINT: resume with the run's settings (in its "
                        "config.json), or allow the change explicitly, e.g. --allow-change lr,threads",
                        cfg->out_dir, refused.buf);
    free(refused.buf);
    return rc;
}

/* Fills the model and optimiser from DIR/state.safetensors (which exists: run_dir_open checked). */
static int load_state(const mfres_train_config *cfg, mfres_model *m, mfres_optimizer *opt, int *epochs_done,
                      long *steps, const char *print, const run_setting *settings, int n_settings, text *changes,
                      int *epochs_before) {
    char path[4200];
    snprintf(path, sizeof path, "%s/state.safetensors", cfg->out_dir);
    mfres_safetensors st;
    int rc = mfres_safetensors_load(&st, path);
    if (rc) return rc;
    const char *fmt = mfres_safetensors_meta(&st, "format");
    long version = 0, done = 0, nsteps = 0, epochs = cfg->epochs;
    if (!fmt || strcmp(fmt, "mfres-train-state")) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: not an mfres training state (metadata format is '%s')", path,
                        fmt ? fmt : "(none)");
    } else if (!(rc = state_long(&st, path, "format_version", 1, STATE_VERSION, &version)) &&
               !(rc = state_long(&st, path, "epochs_done", 1, 100000, &done)) &&
               !(rc = state_long(&st, path, "steps", 1, 1L << 50, &nsteps))) {
        if (version >= 2) {
            rc = state_long(&st, path, "epochs", 1, 100000, &epochs);
            if (!rc) rc = compare_settings(&st, path, cfg, settings, n_settings, changes);
        } else {
            const char *run = mfres_safetensors_meta(&st, "run");
            if (!run || strcmp(run, print))
                rc = mfres_fail(MFRES_EINVAL,
                                "%s was written by a different run (%s); this run is (%s). HINT: resume with the same "
                                "flags, or choose another --out",
                                path, run ? run : "(none)", print);
        }
    }
    if (!rc && done >= cfg->epochs)
        rc = mfres_fail(MFRES_EINVAL,
                        "--resume: the run in %s has finished: %ld of %d epochs done. HINT: raise --epochs to train "
                        "it further",
                        cfg->out_dir, done, cfg->epochs);
    char name[80];
    for (int i = 0; !rc && i < m->n_tensors; i++) {
        snprintf(name, sizeof name, "model.%s", m->tensors[i].name);
        rc = mfres_safetensors_copy_f32_shaped(&st, path, name, m->tensors[i].data, m->tensors[i].ndim,
                                               m->tensors[i].shape);
    }
    if (!rc) rc = mfres_safetensors_copy_f32(&st, path, "optimizer.velocity", opt->velocity, m->n_params);
    if (!rc && m->n_tau) rc = mfres_safetensors_copy_f32(&st, path, "optimizer.tau_velocity", opt->tau_velocity, (size_t)m->n_tau);
    if (!rc) {
        *epochs_done = (int)done;
        *steps = nsteps;
        *epochs_before = (int)epochs;
        mfres_model_sort_blocks(m);
    }
    mfres_safetensors_free(&st);
    return rc;
}

/* The first `lines` lines of DIR/metrics.jsonl, into t (a resumed run appends to them). */
static void read_metrics(const char *dir, int lines, text *t) {
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *fp = fopen(path, "r");
    if (!fp) return;
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < lines && getline(&line, &cap, fp) > 0; i++) text_printf(t, "%s", line);
    free(line);
    fclose(fp);
}

/* ---- training on the GPU: the model, momentum and training set move there once ---- */

typedef struct gpu_epoch_plan {
    uint32_t *perm;
    int8_t *oy, *ox;
    uint8_t *flip;
} gpu_epoch_plan;

static void gpu_epoch_plan_free(gpu_epoch_plan *p) {
    mfres_free(p->perm);
    mfres_free(p->oy);
    mfres_free(p->ox);
    mfres_free(p->flip);
}

static int gpu_start(const mfres_train_config *cfg, mfres_model *m, const mfres_optimizer *opt, mfres_loader *loader,
                     const mfres_dataset *train_set, gpu_epoch_plan *plan, bool show) {
    size_t n = (size_t)train_set->n;
    plan->perm = mfres_alloc(n * sizeof *plan->perm, "GPU epoch plan");
    plan->oy = mfres_alloc(n, "GPU epoch plan");
    plan->ox = mfres_alloc(n, "GPU epoch plan");
    plan->flip = mfres_alloc(n, "GPU epoch plan");
    if (!plan->perm || !plan->oy || !plan->ox || !plan->flip) return MFRES_ENOMEM;
    int rc = mfres_model_sync_device(m); /* the state a resume loaded */
    if (!rc) rc = gpu_optim_upload(m->gpu, m, opt);
    if (!rc) rc = gpu_data_upload(m->gpu, train_set, mfres_loader_lut(loader));
    if (rc) return rc;
    if (show) {
        char what[256];
        mfres_device_describe(cfg->device, what, sizeof what);
        mfres_log("device: %s, %s; the training set (%zu MB) and the whole step on the GPU", what,
                  mfres_precision_name(cfg->precision), n * train_set->c * train_set->h * train_set->w >> 20);
    }
    return MFRES_OK;
}

static int gpu_epoch_start(mfres_model *m, mfres_loader *loader, gpu_epoch_plan *plan, int epoch, int n) {
    int rc = mfres_loader_epoch_plan(loader, epoch, plan->perm, plan->oy, plan->ox, plan->flip);
    return rc ? rc : gpu_data_epoch(m->gpu, plan->perm, plan->oy, plan->ox, plan->flip, n);
}

int mfres_train(const mfres_train_config *cfg_in, mfres_train_result *res) {
    mfres_train_config cfg = *cfg_in;
    memset(res, 0, sizeof *res);
    double t_start = mfres_now();
    mfres_dist single;
    if (!cfg.dist) mfres_dist_init_single(&single), cfg.dist = &single;
    par_comm pc = {.dist = cfg.dist};
    const int rank = cfg.dist->rank, ranks = cfg.dist->size;
    res->ranks = ranks;
    if (cfg.sync_bn && strcmp(cfg.dist->backend, "mpi"))
        return mfres_fail(MFRES_EINVAL, "--sync-bn sums batch-norm statistics over the ranks of an MPI job, and this "
                          "process is not in one. HINT: mpirun -np N mfres train --sync-bn ...");
    cfg.threads = mfres_set_threads(cfg.threads);
    const bool on_gpu = cfg.device == MFRES_DEVICE_CUDA;
    if (on_gpu && ranks > 1)
        return mfres_fail(MFRES_EINVAL, "--device cuda in an MPI job of %d ranks: the GPU backend trains in one process "
                          "for now (docs/GPU.md). HINT: run one process, or --device cpu", ranks);
    int rc = mfres_device_check(cfg.device, cfg.precision);
    if (rc) return rc;
    bool show = !cfg.quiet && rank == 0;
    bool tty = cfg.progress == 1 || (cfg.progress == -1 && isatty(STDERR_FILENO));

    mfres_data data;
    rc = mfres_data_open(&data, cfg.data);
    if (rc) return rc;
    mfres_dataset train_set = subset(&data.train, cfg.train_limit), test_set = subset(&data.test, cfg.test_limit);
    cfg.model.in_c = data.train.c, cfg.model.in_h = data.train.h, cfg.model.in_w = data.train.w;
    cfg.model.num_classes = data.train.num_classes;
    /* MNIST-family images are centred and the runs people make on them short:
     * random crops cost accuracy there (one epoch of ResNet-20: 86.6% with,
     * 88.6% without), so augmentation defaults on for CIFAR only. */
    if (cfg.augment < 0) cfg.augment = data.flip_default;
    /* Batch: 128 for CIFAR (the papers' recipe); 64 for the MNIST family, where
     * the short runs gain from more steps (one epoch of ResNet-20: 89.7% at 64,
     * 88.7% at 128). */
    if (cfg.model.batch <= 0) cfg.model.batch = data.flip_default ? 128 : 64;
    if (cfg.flip < 0) cfg.flip = data.flip_default;
    if (show)
        mfres_log("data: %s from %s: %d training and %d test images of %dx%dx%d, %d classes", data.name, data.path,
                  train_set.n, test_set.n, data.train.c, data.train.h, data.train.w, data.train.num_classes);
    if (train_set.n < cfg.model.batch) {
        mfres_data_free(&data);
        return mfres_fail(MFRES_EINVAL, "the training set has %d images, fewer than one batch of %d", train_set.n,
                          cfg.model.batch);
    }
    if (cfg.model.batch % ranks) {
        mfres_data_free(&data);
        return mfres_fail(MFRES_EINVAL, "--batch %d (the global batch) does not divide among %d ranks", cfg.model.batch,
                          ranks);
    }
    if ((rc = par_check_flags_agree(&pc, &cfg))) {
        mfres_data_free(&data);
        return rc;
    }
    mfres_model_config rank_model = cfg.model; /* this rank's share of the global batch */
    rank_model.batch = cfg.model.batch / ranks;

    mfres_model m;
    mfres_optimizer opt = {0};
    mfres_loader *loader = NULL;
    run_dir dir = {.lock_fd = -1};
    text metrics = {0};
    gpu_epoch_plan plan = {0};
    char path[4200];
    if ((rc = mfres_model_create_on(&m, &rank_model, cfg.seed, cfg.device, cfg.precision))) {
        mfres_data_free(&data);
        return rc;
    }
    if (cfg.sync_bn) mfres_model_set_sync_bn(&m, par_bn_allreduce, &pc, ranks);
    if (show) mfres_model_print_summary(&m, stderr);
    if ((rc = mfres_optimizer_init(&opt, &m, (float)cfg.lr, (float)cfg.momentum, (float)cfg.weight_decay, cfg.nesterov,
                                   (float)cfg.tau_lr_mult)))
        goto done;
    mfres_loader_config lc = {.batch = rank_model.batch, .shuffle = true, .augment = cfg.augment, .pad = 4,
                              .flip = cfg.flip && cfg.augment, .drop_last = true, .seed = cfg.seed,
                              .mean = data.mean, .std = data.std, .shard = rank, .shards = ranks};
    if ((rc = mfres_loader_create(&loader, &train_set, &lc))) goto done;
    if ((rc = run_check_allow_list(cfg.allow_change))) goto done;
    /* Rank 0 alone owns the run directory (its lock, its files); the others read and write nothing. */
    if (rank == 0 && (rc = run_dir_open(&dir, &cfg))) goto done;
    char print[512];
    fingerprint(&cfg, data.name, print, sizeof print);
    run_setting settings[RUN_MAX_SETTINGS];
    int n_settings = run_settings(&cfg, &data, settings);
    int first_epoch = 0;
    char *history_entry = NULL;
    if (cfg.resume && rank == 0) {
        text changes = {0}, entry = {0};
        int epochs_before = cfg.epochs;
        rc = load_state(&cfg, &m, &opt, &first_epoch, &res->steps, print, settings, n_settings, &changes,
                        &epochs_before);
        if (!rc) {
            read_metrics(cfg.out_dir, first_epoch, &metrics);
            if (show) mfres_log("resuming %s after epoch %d (step %ld)", cfg.out_dir, first_epoch, res->steps);
            if (epochs_before != cfg.epochs)
                text_printf(&changes, "%s\"epochs\": [%d, %d]", changes.len ? ", " : "", epochs_before, cfg.epochs);
            text_printf(&entry, "{\"resumed_after_epoch\": %d, \"step\": %ld, \"changed\": {%s}}", first_epoch,
                        res->steps, changes.buf ? changes.buf : "");
            history_entry = entry.buf;
        }
        free(changes.buf);
        if (rc) goto done;
    }
    /* Rank 0's initial or resumed state to every rank (the others read no files). */
    if ((rc = par_broadcast_state(&pc, &m, &opt, &first_epoch, &res->steps))) goto done;
    /* Written after the resume check, so a refused resume leaves the run's files as they were. */
    if (rank == 0) rc = run_write_config(&cfg, cfg.out_dir, history_entry);
    free(history_entry);
    if (rc) goto done;
    if (show) mfres_log("run directory: %s (threads %d, seed %llu)", cfg.out_dir, cfg.threads,
                        (unsigned long long)cfg.seed);
    if (show && ranks > 1)
        mfres_log("data parallel: %d ranks (%s) of %d images each, global batch %d, batch norm %s", ranks,
                  cfg.dist->backend, rank_model.batch, cfg.model.batch,
                  cfg.sync_bn ? "synchronised over ranks (--sync-bn)" : "per rank");

    if (on_gpu && (rc = gpu_start(&cfg, &m, &opt, loader, &train_set, &plan, show))) goto done;
    int batches = mfres_loader_batches_per_epoch(loader);
    res->epochs_done = first_epoch;
    for (int epoch = first_epoch; epoch < cfg.epochs; epoch++) {
        opt.lr = (float)mfres_lr_at_epoch(cfg.lr, cfg.milestones, cfg.n_milestones, cfg.gamma, epoch);
        if (on_gpu) rc = gpu_epoch_start(&m, loader, &plan, epoch, train_set.n);
        else rc = mfres_loader_start_epoch(loader, epoch);
        if (rc) goto done;
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", epoch + 1, cfg.epochs);
        mfres_progress bar;
        if (show) mfres_progress_start(&bar, stderr, tty, label, batches);
        double loss_sum = 0, t0 = mfres_now(), comm0 = pc.seconds;
        long correct = 0, seen = 0;
        int reorders = 0, step = 0;
        const float *images;
        const int32_t *labels;
        int count;
        /* The GPU makes its batches itself (gpu_train_step): the loader only plans the epoch. */
        while ((rc = on_gpu ? step < batches : mfres_loader_next(loader, &images, &labels, &count)) == 1) {
            double loss;
            int hits;
            if (cfg.cosine) opt.lr = (float)mfres_lr_cosine(cfg.lr, res->steps, (long)batches * cfg.epochs);
            float scheduled_lr = opt.lr;
            if (res->steps < cfg.warmup_steps) opt.lr = (float)cfg.warmup_lr;
            bool inject = cfg.inject_nan_step && res->steps + 1 == cfg.inject_nan_step;
            gpu_step_result gs = {0};
            if (on_gpu) { /* the whole step, the update included */
                rc = inject ? MFRES_OK : gpu_train_step(m.gpu, &m, (long)step * rank_model.batch, opt.lr, &gs);
                loss = gs.loss, hits = gs.correct, count = gs.valid;
            } else {
                rc = mfres_model_forward(&m, images, labels, true, &loss, &hits);
            }
            if (inject) loss = NAN;
            bool bad = rc == MFRES_ENUMERIC || !isfinite(loss);
            if (rc && !bad) goto done;
            if (!bad && !on_gpu && (rc = mfres_model_backward(&m))) goto done;
            /* Every rank learns whether any rank's loss went bad, so all stop together. */
            par_step_stats stats = {.loss_sum = bad ? 0 : loss * count, .correct = bad ? 0 : hits, .seen = count,
                                    .failed = bad};
            if ((rc = par_reduce_step(&pc, &m, &stats))) goto done;
            if (stats.failed > 0) {
                rc = mfres_fail(MFRES_ENUMERIC,
                                "the training loss became %g at epoch %d, step %d (global step %ld); stopping. "
                                "The last good model is still in %s/model.safetensors. HINT: lower --lr",
                                bad ? loss : NAN, epoch + 1, step + 1, res->steps + 1, cfg.out_dir);
                goto done;
            }
            if (!on_gpu) mfres_optimizer_step(&opt, &m);
            if (cfg.inject_drift_step && res->steps + 1 == cfg.inject_drift_step && rank == ranks - 1)
                m.params[0] = nextafterf(m.params[0], INFINITY);
            opt.lr = scheduled_lr;
            if (m.n_tau) reorders += mfres_model_last_reorders(&m);
            loss_sum += stats.loss_sum, correct += (long)stats.correct, seen += (long)stats.seen;
            step++, res->steps++;
            if (show) {
                char stats[128];
                snprintf(stats, sizeof stats, "loss %.4f acc %.2f%% %.0f img/s", loss_sum / seen,
                         100.0 * correct / seen, seen / (mfres_now() - t0));
                mfres_progress_update(&bar, step, stats);
            }
        }
        if (rc < 0) goto done;
        /* The epoch's model and momentum back on the host, for evaluation's summary and the files. */
        if (on_gpu && ((rc = mfres_model_sync_host(&m, false)) || (rc = gpu_optim_download(m.gpu, &m, &opt))))
            goto done;
        double train_time = mfres_now() - t0;
        res->train_seconds += train_time;
        res->comm_seconds += pc.seconds - comm0;
        res->train_loss = loss_sum / seen, res->train_acc = (double)correct / seen;
        res->images_per_s = seen / train_time;
        /* Per-rank batch norm leaves each rank its own running statistics; evaluation and the files get their mean. */
        if (!cfg.sync_bn && (rc = par_average_running_stats(&pc, &m))) goto done;
        if ((rc = evaluate(&m, &test_set, data.mean, data.std, &pc, &res->test_loss, &res->test_acc))) goto done;
        if ((rc = par_check_identical(&pc, &m, &opt, &res->model_hash))) goto done;
        res->epochs_done = epoch + 1;
        if (show) {
            char stats[160];
            snprintf(stats, sizeof stats, "train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.0f img/s",
                     res->train_loss, 100 * res->train_acc, res->test_loss, 100 * res->test_acc, res->images_per_s);
            mfres_progress_finish(&bar, stats);
        }
        text_printf(&metrics,
                    "{\"epoch\": %d, \"lr\": %.9g, \"train_loss\": %.6f, \"train_acc\": %.6f, \"test_loss\": %.6f, "
                    "\"test_acc\": %.6f, \"images_per_s\": %.1f, \"epoch_seconds\": %.2f",
                    epoch + 1, opt.lr, res->train_loss, res->train_acc, res->test_loss, res->test_acc,
                    res->images_per_s, train_time);
        if (m.n_tau) {
            append_tau(&metrics, &m);
            text_printf(&metrics, ", \"reorders\": %d", reorders);
        }
        text_printf(&metrics, "}\n");
        if (rank != 0) continue;
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg.out_dir);
        if ((rc = mfres_write_file_atomic(path, metrics.buf, metrics.len))) goto done;
        snprintf(path, sizeof path, "%s/model.safetensors", cfg.out_dir);
        if ((rc = mfres_model_save(&m, path, data.name, data.mean, data.std))) goto done;
        if ((rc = save_state(cfg.out_dir, &m, &opt, epoch + 1, res->steps, cfg.epochs, settings, n_settings)))
            goto done;
    }
    res->total_seconds = mfres_now() - t_start;
    rc = MFRES_OK;
done:
    gpu_epoch_plan_free(&plan);
    run_dir_close(&dir);
    free(metrics.buf);
    mfres_loader_free(loader);
    mfres_optimizer_free(&opt);
    mfres_model_free(&m);
    mfres_data_free(&data);
    return rc;
}
