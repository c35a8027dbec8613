/* The model: its description (arch.c), its weights, the mean-field order, and
 * the CPU plans that run it (cpu_plan.h). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/meanfield.h"
#include "mfres/model.h"
#include "gpu/gpu.h"
#include "models/arch.h"
#include "models/cpu_plan.h"

static void init_weights(mfres_model *m, uint64_t seed) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        mfres_tensor *t = &m->tensors[i];
        const char *suffix = strrchr(t->name, '.');
        if (t->is_tau) continue;
        if (t->ndim == 4) { /* convolution: He et al. 2015, normal with std sqrt(2 / fan_in) */
            double std = sqrt(2.0 / (double)(t->shape[1] * t->shape[2] * t->shape[3]));
            for (size_t k = 0; k < t->numel; k++) t->data[k] = (float)(std * mfres_rng_normal(&rng));
        } else if (!strncmp(t->name, "fc.", 3)) { /* PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) */
            double bound = 1.0 / sqrt((double)m->tensors[i - (t->ndim == 1)].shape[1]);
            for (size_t k = 0; k < t->numel; k++) t->data[k] = (float)(bound * (2 * mfres_rng_uniform(&rng) - 1));
        } else if (!strcmp(suffix, ".weight") || !strcmp(suffix, ".running_var")) {
            for (size_t k = 0; k < t->numel; k++) t->data[k] = 1.0f;
        } else {
            for (size_t k = 0; k < t->numel; k++) t->data[k] = 0.0f;
        }
    }
    for (int s = 0; s < 3 && m->n_tau; s++) {
        mf_tau_init(m->tau + s * m->particles, m->particles, m->cfg.tau_init);
        for (int i = 0; i < m->particles; i++) m->order[s * m->particles + i] = i;
    }
    mfres_model_sort_blocks(m);
}

int mfres_model_create(mfres_model *m, const mfres_model_config *cfg, uint64_t seed) {
    return mfres_model_create_on(m, cfg, seed, MFRES_DEVICE_CPU, MFRES_PRECISION_FP32);
}

/* The plan of the device the model is on: the CPU's is built when first
 * needed, so that a model on the GPU never holds the CPU's activations. */
static int cpu_plan_needed(mfres_model *m) {
    if (m->impl) return MFRES_OK;
    int rc = cpu_plan_create(m);
    if (rc) cpu_plan_free(m);
    return rc;
}

int mfres_model_create_on(mfres_model *m, const mfres_model_config *cfg, uint64_t seed, mfres_device d,
                          mfres_precision p) {
    memset(m, 0, sizeof *m);
    int rc = mfres_device_check(d, p);
    if (rc) return rc;
    rc = arch_create(m, cfg);
    if (!rc) {
        init_weights(m, seed);
        rc = d == MFRES_DEVICE_CPU ? cpu_plan_needed(m) : mfres_model_set_device(m, d, p);
    }
    if (rc) mfres_model_free(m);
    return rc;
}

void mfres_model_free(mfres_model *m) {
    gpu_plan_free(m->gpu);
    cpu_plan_free(m);
    arch_free(m);
    memset(m, 0, sizeof *m);
}

mfres_tensor *mfres_model_find(mfres_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

void mfres_model_sort_blocks(mfres_model *m) {
    int P = m->particles, changed = 0;
    for (int s = 0; s < 3; s++) {
        if (m->cfg.mode == MFRES_MODE_VANILLA) {
            for (int l = 0; l < P; l++) m->order[s * P + l] = l, m->h[s * P + l] = 1.0f;
            continue;
        }
        changed += mf_sort(m->order + s * P, m->tau + s * P, P);
        mf_steps(m->h + s * P, m->order + s * P, m->tau + s * P, P);
    }
    m->last_reorders = changed;
}

int mfres_model_last_reorders(const mfres_model *m) { return m->last_reorders; }

int mfres_model_set_device(mfres_model *m, mfres_device d, mfres_precision p) {
    int rc = mfres_device_check(d, p);
    if (rc) return rc;
    if (m->gpu && d == m->device && p == m->precision) return MFRES_OK;
    if (m->gpu) { /* leaving the GPU, or changing precision: the host copy first */
        if ((rc = gpu_download(m->gpu, m, false))) return rc;
        gpu_plan_free(m->gpu);
        m->gpu = NULL;
        m->device = MFRES_DEVICE_CPU, m->precision = MFRES_PRECISION_FP32;
    }
    if (d == MFRES_DEVICE_CPU) {
        rc = cpu_plan_needed(m);
        if (!rc) m->device = d, m->precision = p;
        return rc;
    }
    if ((rc = gpu_plan_create(&m->gpu, m, p))) {
        m->gpu = NULL;
        return rc;
    }
    /* The CPU's plan, if any, goes: its arena is as large as the GPU's. */
    cpu_plan_free(m);
    m->activation_bytes = gpu_activation_bytes(m->gpu);
    m->device = d, m->precision = p;
    return MFRES_OK;
}

int mfres_model_sync_host(mfres_model *m, bool with_grads) {
    return m->gpu ? gpu_download(m->gpu, m, with_grads) : MFRES_OK;
}

int mfres_model_sync_device(mfres_model *m) { return m->gpu ? gpu_upload(m->gpu, m) : MFRES_OK; }

int mfres_model_forward(mfres_model *m, const float *images, const int32_t *labels, bool train, double *loss,
                        int *correct) {
    if (m->gpu) return gpu_forward(m->gpu, m, images, labels, train, loss, correct);
    int rc = cpu_plan_needed(m);
    if (rc) return rc;
    cpu_plan *r = m->impl;
    if (train) return cpu_train_forward(m, images, labels, loss, correct);
    r->have_train_forward = false;
    rc = infer_plan_forward(r->infer, m, images, r->logits, &r->prof);
    return rc ? rc : cpu_finish_loss(m, r->logits, labels, loss, correct);
}

int mfres_model_backward(mfres_model *m) {
    if (m->gpu) return gpu_backward(m->gpu, m);
    int rc = cpu_plan_needed(m);
    return rc ? rc : cpu_train_backward(m);
}

void mfres_model_set_sync_bn(mfres_model *m, int (*allreduce_sum)(double *x, size_t n, void *arg), void *arg,
                             int ranks) {
    if (m->impl) m->impl->ctx.bn_sync = (nn_bn_sync){.allreduce_sum = allreduce_sum, .arg = arg, .ranks = ranks};
}

void mfres_model_set_profiling(mfres_model *m, bool on) {
    if (!m->impl) return;
    m->impl->prof.on = on;
    if (on) m->impl->prof.n = 0;
}

void mfres_model_print_profile(const mfres_model *m, FILE *out, long steps, double step_seconds, const char *whole) {
    if (m->impl) profile_print(&m->impl->prof, out, steps, step_seconds, whole);
}

/* ------------------------------------------------------------------------ */
/* summary */

static void human_bytes(char *buf, size_t n, double bytes) {
    if (bytes >= 1 << 20)
        snprintf(buf, n, "%.1f MiB", bytes / (1 << 20));
    else
        snprintf(buf, n, "%.1f KiB", bytes / 1024);
}

static void print_conv(FILE *out, const char *name, const arch_conv *c, size_t extra_params) {
    char shape[32];
    snprintf(shape, sizeof shape, "%dx%dx%d", c->K, c->OH, c->OW);
    fprintf(out, "  %-22s %-14s %10zu %10.2f\n", name, shape, c->w->numel + extra_params, arch_conv_flops(c) / 1e6);
}

void mfres_model_print_summary(const mfres_model *m, FILE *out) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    char name[48];
    mfres_model_display_name(c, name, sizeof name);
    fprintf(out, "%s (%s blocks, %s%s%s), input %dx%dx%d, %d classes, batch %d\n", name, mfres_block_name(c->block),
            mfres_mode_name(c->mode), c->mode == MFRES_MODE_MEANFIELD ? ", tau-init " : "",
            c->mode == MFRES_MODE_MEANFIELD ? mfres_tau_init_name(c->tau_init) : "", c->in_c, c->in_h, c->in_w,
            c->num_classes, c->batch);
    fprintf(out, "  %-22s %-14s %10s %10s\n", "layer", "output", "params", "MFLOPs");
    print_conv(out, "conv1", &ar->stem, ar->stem_bn ? 2 * (size_t)ar->stem.K : 0);
    for (int i = 0; i < 3 * m->blocks_per_stage; i++) {
        const arch_block *b = &ar->blocks[i];
        for (int k = 0; k < b->n_conv; k++) {
            snprintf(name, sizeof name, "layer%d.%d.conv%d%s", b->stage + 1, b->index, k + 1,
                     b->conv[k].groups > 1 ? " (grouped)" : "");
            print_conv(out, name, &b->conv[k], 2 * (size_t)b->bn[k].C);
        }
        if (b->shortcut == SHORTCUT_PROJECTION) {
            snprintf(name, sizeof name, "layer%d.%d.downsample", b->stage + 1, b->index);
            print_conv(out, name, &b->proj, b->proj_bn ? 2 * (size_t)b->c_out : 0);
        }
    }
    fprintf(out, "  %-22s %-14d %10zu %10.3f\n", "fc", c->num_classes, (size_t)(ar->final_c + 1) * c->num_classes,
            2.0 * ar->final_c * c->num_classes / 1e6);
    char a[32], b[32], d[32], e[32];
    human_bytes(a, sizeof a, m->n_params * 4.0);
    human_bytes(b, sizeof b, m->n_buffers * 4.0);
    human_bytes(d, sizeof d, (double)m->activation_bytes);
    human_bytes(e, sizeof e, m->n_params * 4.0);
    fprintf(out, "  total: %zu parameters (%.2f M), %.1f MFLOPs per image forward (training ~3x)\n", m->n_params,
            m->n_params / 1e6, m->forward_flops / 1e6);
    fprintf(out, "  memory: parameters %s, gradients %s, running statistics %s, activations+scratch %s%s", a, e, b, d,
            m->gpu ? " (on the GPU)" : "");
    if (m->n_tau) fprintf(out, ", tau %d values", m->n_tau);
    fputc('\n', out);
}
