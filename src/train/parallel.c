/* The data-parallel side of the training loop (parallel.h).
 *
 * Every rank holds the whole model and runs the same optimiser step on the
 * same summed gradient, so parameters, momentum buffers and the mean-field
 * block order stay identical without being sent again; par_check_identical
 * verifies it every epoch. */
#include "train/parallel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"

static int timed_f64(par_comm *pc, double *x, size_t n) {
    double t0 = mfres_now();
    int rc = pc->dist->allreduce_sum_f64(pc->dist, x, n);
    pc->seconds += mfres_now() - t0;
    return rc;
}

int par_bn_allreduce(double *x, size_t n, void *arg) { return timed_f64(arg, x, n); }

int par_reduce_sums(par_comm *pc, double *sums, int n) { return timed_f64(pc, sums, (size_t)n); }

/* ---- flags ---- */

enum { FLAGS_TEXT = 16384 };

/* The resolved configuration as JSON lines, plus what the JSON leaves out but
 * the ranks must share. Threads may differ: they never change the result. */
static int flags_text(const mfres_train_config *cfg_in, char *buf) {
    mfres_train_config cfg = *cfg_in;
    cfg.threads = 0;
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    if (!fp) return mfres_fail(MFRES_ENOMEM, "out of memory comparing the ranks' flags");
    mfres_train_config_write_json(&cfg, fp);
    fprintf(fp, "resume: %d\nsync_bn: %d\ninject_nan_step: %ld\ninject_drift_step: %ld\n", cfg.resume, cfg.sync_bn,
            cfg.inject_nan_step, cfg.inject_drift_step);
    fclose(fp);
    memset(buf, 0, FLAGS_TEXT);
    snprintf(buf, FLAGS_TEXT, "%s", text);
    free(text);
    return MFRES_OK;
}

int par_check_flags_agree(par_comm *pc, const mfres_train_config *cfg) {
    mfres_dist *d = pc->dist;
    if (d->size == 1) return MFRES_OK;
    char *mine = malloc(FLAGS_TEXT), *root = malloc(FLAGS_TEXT);
    int rc = mine && root ? flags_text(cfg, mine) : mfres_fail(MFRES_ENOMEM, "out of memory comparing flags");
    if (!rc) {
        memcpy(root, mine, FLAGS_TEXT);
        rc = d->broadcast(d, root, FLAGS_TEXT, 0);
    }
    double differ = 0;
    char where[512] = "";
    if (!rc && strcmp(mine, root)) {
        differ = 1;
        /* The first line that differs, for the message. */
        const char *a = mine, *b = root;
        while (*a && *b) {
            size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
            if (la != lb || memcmp(a, b, la)) {
                snprintf(where, sizeof where, "rank %d has '%.*s' where rank 0 has '%.*s'", d->rank, (int)la, a,
                         (int)lb, b);
                break;
            }
            a += la + (a[la] == '\n'), b += lb + (b[lb] == '\n');
        }
        if (!*where) snprintf(where, sizeof where, "rank %d's flags differ from rank 0's", d->rank);
    }
    if (!rc) rc = timed_f64(pc, &differ, 1);
    free(mine), free(root);
    if (rc) return rc;
    if (differ > 0) {
        if (*where)
            return mfres_fail(MFRES_EINVAL, "the ranks disagree on their flags: %s. HINT: give every rank the same "
                              "flags", where);
        return mfres_fail(MFRES_EINVAL, "the ranks disagree on their flags: %.0f of %d ranks differ from rank 0. "
                          "HINT: give every rank the same flags", differ, d->size);
    }
    return MFRES_OK;
}

/* ---- state ---- */

int par_broadcast_state(par_comm *pc, mfres_model *m, mfres_optimizer *opt, int *epochs_done, long *steps) {
    mfres_dist *d = pc->dist;
    if (d->size == 1) return MFRES_OK;
    int64_t counters[2] = {*epochs_done, *steps};
    struct {
        void *p;
        size_t bytes;
    } parts[] = {
        {counters, sizeof counters},
        {m->params, m->n_params * sizeof(float)},
        {m->buffers, m->n_buffers * sizeof(float)},
        {m->tau, (size_t)m->n_tau * sizeof(float)},
        {m->order, (size_t)(m->n_tau ? 3 * m->particles : 0) * sizeof(int)},
        {opt->velocity, m->n_params * sizeof(float)},
        {opt->tau_velocity, (size_t)m->n_tau * sizeof(float)},
    };
    double t0 = mfres_now();
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i].bytes) continue;
        int rc = d->broadcast(d, parts[i].p, parts[i].bytes, 0);
        if (rc) return rc;
    }
    pc->seconds += mfres_now() - t0;
    *epochs_done = (int)counters[0], *steps = (long)counters[1];
    /* The same order and tau on every rank: the same steps h from the same (stable) sort. */
    mfres_model_sort_blocks(m);
    return MFRES_OK;
}

/* ---- per step ---- */

int par_reduce_step(par_comm *pc, mfres_model *m, par_step_stats *stats) {
    mfres_dist *d = pc->dist;
    if (d->size == 1) return MFRES_OK;
    double t0 = mfres_now();
    /* The parameter gradients in place, in one call over the model's one gradient buffer. */
    int rc = d->allreduce_sum_f32(d, m->grads, m->n_params);
    /* The tau gradients with the step's statistics: one small call. */
    int n_tau = m->n_tau;
    double small[n_tau + 4];
    for (int i = 0; i < n_tau; i++) small[i] = m->tau_grad[i];
    small[n_tau] = stats->loss_sum, small[n_tau + 1] = stats->correct, small[n_tau + 2] = stats->seen;
    small[n_tau + 3] = stats->failed;
    if (!rc) rc = d->allreduce_sum_f64(d, small, (size_t)n_tau + 4);
    pc->seconds += mfres_now() - t0;
    if (rc) return rc;
    float ranks = (float)d->size;
    for (size_t i = 0; i < m->n_params; i++) m->grads[i] /= ranks;
    for (int i = 0; i < n_tau; i++) m->tau_grad[i] = (float)(small[i] / d->size);
    stats->loss_sum = small[n_tau], stats->correct = small[n_tau + 1], stats->seen = small[n_tau + 2];
    stats->failed = small[n_tau + 3];
    return MFRES_OK;
}

int par_average_running_stats(par_comm *pc, mfres_model *m) {
    mfres_dist *d = pc->dist;
    if (d->size == 1) return MFRES_OK;
    double t0 = mfres_now();
    int rc = d->allreduce_sum_f32(d, m->buffers, m->n_buffers);
    pc->seconds += mfres_now() - t0;
    if (rc) return rc;
    for (size_t i = 0; i < m->n_buffers; i++) m->buffers[i] /= (float)d->size;
    return MFRES_OK;
}

/* ---- consistency ---- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

int par_check_identical(par_comm *pc, const mfres_model *m, const mfres_optimizer *opt, uint64_t *hash) {
    mfres_dist *d = pc->dist;
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, m->params, m->n_params * sizeof(float));
    h = fnv1a(h, m->buffers, m->n_buffers * sizeof(float));
    h = fnv1a(h, m->tau, (size_t)m->n_tau * sizeof(float));
    h = fnv1a(h, m->order, (size_t)(m->n_tau ? 3 * m->particles : 0) * sizeof(int));
    h = fnv1a(h, opt->velocity, m->n_params * sizeof(float));
    h = fnv1a(h, opt->tau_velocity, (size_t)m->n_tau * sizeof(float));
    *hash = h;
    if (d->size == 1) return MFRES_OK;
    uint64_t root = h;
    int rc = d->broadcast(d, &root, sizeof root, 0);
    double differ = root != h;
    if (!rc) rc = timed_f64(pc, &differ, 1);
    if (rc) return rc;
    *hash = root;
    if (differ > 0)
        return mfres_fail(MFRES_ENUMERIC,
                          "the model differs between ranks (%.0f of %d ranks differ from rank 0; this rank %s): the "
                          "ranks no longer train one model",
                          differ, d->size, root == h ? "agrees" : "differs");
    return MFRES_OK;
}
