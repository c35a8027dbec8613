/* resnet_dump: the C side of the PyTorch cross-check (tests/test_torch_reference.py).
 *
 * Builds a ResNet with mfres_model_create, perturbs it so that every code path
 * matters (random BN affine parameters; in mean-field mode distinct tau values
 * in an order that is not the particle order, so the sort and the steps h are
 * exercised), and writes into --out DIR:
 *   model.safetensors        the weights before any step (mfres_model_save)
 *   inputs.safetensors       images F32 [N,C,H,W], labels F32 [N]
 *   grads.safetensors        after the first training forward + backward: one
 *                            tensor per trainable tensor (theta and tau), same names
 *   model_final.safetensors  the model after --steps SGD steps (parameters,
 *                            running statistics, tau)
 *   result.json              loss0, the loss before each step, the loss after
 *                            the last step, and the final tau values
 * The steps are what the trainer does: forward(train) -> backward -> optimizer
 * step, on the same batch every time. Exits non-zero on any error. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/meanfield.h"
#include "mfres/model.h"
#include "mfres/optim.h"
#include "mfres/safetensors.h"

typedef struct options {
    mfres_model_config cfg;
    uint64_t seed;
    int steps;
    float lr, momentum, wd, tau_lr_mult;
    bool nesterov;
    const char *out;
} options;

static void usage(FILE *f) {
    fprintf(f,
            "usage: resnet_dump --out DIR [--model resnet20|resnext29-2x8d|...] [--depth 20] [--width 16]\n"
            "                   [--block postact|preact|bottleneck] [--mode vanilla|meanfield]\n"
            "                   [--tau-init unit|grid] [--batch 8] [--input 3x16x16] [--classes 10] [--seed 1]\n"
            "                   [--steps 3] [--lr 0.1] [--momentum 0.9] [--wd 5e-4] [--nesterov 0|1]\n"
            "                   [--tau-lr-mult 1]\n");
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "resnet_dump: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_float(const char *flag, const char *v, float *out) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || *end || end == v) {
        fprintf(stderr, "resnet_dump: %s expects a number, got '%s'\n", flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, options *o) {
    mfres_model_config_default(&o->cfg);
    o->cfg.depth = 20, o->cfg.batch = 8, o->cfg.in_c = 3, o->cfg.in_h = o->cfg.in_w = 16;
    o->seed = 1, o->steps = 3, o->lr = 0.1f, o->momentum = 0.9f, o->wd = 5e-4f, o->tau_lr_mult = 1.0f;
    o->nesterov = false, o->out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "resnet_dump: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        long x;
        if (!strcmp(a, "--depth")) {
            if (parse_int(a, v, 8, 1202, &x)) return -1;
            o->cfg.depth = (int)x;
        } else if (!strcmp(a, "--model")) { /* resnetN, resnextN-CxDd (sets the width; --width after it overrides) */
            if (mfres_model_config_from_name(&o->cfg, v))
                return fprintf(stderr, "resnet_dump: %s\n", mfres_last_error()), -1;
        } else if (!strcmp(a, "--width")) {
            if (parse_int(a, v, 16, 1024, &x)) return -1;
            o->cfg.base_width = (int)x;
        } else if (!strcmp(a, "--block")) {
            if (!strcmp(v, "postact")) o->cfg.block = MFRES_BLOCK_POSTACT;
            else if (!strcmp(v, "preact")) o->cfg.block = MFRES_BLOCK_PREACT;
            else if (!strcmp(v, "bottleneck")) o->cfg.block = MFRES_BLOCK_BOTTLENECK;
            else return fprintf(stderr, "resnet_dump: --block expects postact, preact or bottleneck, got '%s'\n", v), -1;
        } else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "vanilla")) o->cfg.mode = MFRES_MODE_VANILLA;
            else if (!strcmp(v, "meanfield")) o->cfg.mode = MFRES_MODE_MEANFIELD;
            else return fprintf(stderr, "resnet_dump: --mode expects vanilla or meanfield, got '%s'\n", v), -1;
        } else if (!strcmp(a, "--tau-init")) {
            if (!strcmp(v, "unit")) o->cfg.tau_init = MFRES_TAU_UNIT;
            else if (!strcmp(v, "grid")) o->cfg.tau_init = MFRES_TAU_GRID;
            else return fprintf(stderr, "resnet_dump: --tau-init expects unit or grid, got '%s'\n", v), -1;
        } else if (!strcmp(a, "--batch")) {
            if (parse_int(a, v, 1, 4096, &x)) return -1;
            o->cfg.batch = (int)x;
        } else if (!strcmp(a, "--input")) {
            if (sscanf(v, "%dx%dx%d", &o->cfg.in_c, &o->cfg.in_h, &o->cfg.in_w) != 3)
                return fprintf(stderr, "resnet_dump: --input expects CxHxW, got '%s'\n", v), -1;
        } else if (!strcmp(a, "--classes")) {
            if (parse_int(a, v, 2, 100000, &x)) return -1;
            o->cfg.num_classes = (int)x;
        } else if (!strcmp(a, "--seed")) {
            if (parse_int(a, v, 0, 1L << 30, &x)) return -1;
            o->seed = (uint64_t)x;
        } else if (!strcmp(a, "--steps")) {
            if (parse_int(a, v, 0, 1000, &x)) return -1;
            o->steps = (int)x;
        } else if (!strcmp(a, "--nesterov")) {
            if (parse_int(a, v, 0, 1, &x)) return -1;
            o->nesterov = x != 0;
        } else if (!strcmp(a, "--lr")) {
            if (parse_float(a, v, &o->lr)) return -1;
        } else if (!strcmp(a, "--momentum")) {
            if (parse_float(a, v, &o->momentum)) return -1;
        } else if (!strcmp(a, "--wd")) {
            if (parse_float(a, v, &o->wd)) return -1;
        } else if (!strcmp(a, "--tau-lr-mult")) {
            if (parse_float(a, v, &o->tau_lr_mult)) return -1;
        } else if (!strcmp(a, "--out")) {
            o->out = v;
        } else {
            fprintf(stderr, "resnet_dump: unknown flag '%s'\n", a);
            usage(stderr);
            return -1;
        }
    }
    if (!o->out) {
        fprintf(stderr, "resnet_dump: --out DIR is required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Distinct tau values, decreasing in the particle index (so the sorted order
 * is the reverse of the particle order), strictly inside (0, T_end), and
 * slightly different per stage. */
static void set_reordered_tau(mfres_model *m) {
    int P = m->particles;
    float end = mf_tau_end(P, m->cfg.tau_init);
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < P; i++)
            m->tau[s * P + i] = end * ((float)(P - i) / (float)(P + 1) + 0.04f * (float)(s - 1));
    mfres_model_sort_blocks(m);
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int save_grads(const mfres_model *m, const char *path) {
    mfres_st_write *w = malloc(sizeof *w * (size_t)m->n_tensors);
    if (!w) return mfres_fail(MFRES_ENOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const mfres_tensor *t = &m->tensors[i];
        if (t->grad) w[n++] = (mfres_st_write){t->name, t->ndim, t->shape, t->grad};
    }
    int rc = mfres_safetensors_save(path, w, n, NULL, 0);
    free(w);
    return rc;
}

static int save_inputs(const mfres_model *m, const float *images, const float *labels_f, const char *path) {
    const mfres_model_config *c = &m->cfg;
    int64_t ishape[4] = {c->batch, c->in_c, c->in_h, c->in_w}, lshape[1] = {c->batch};
    mfres_st_write w[2] = {{"images", 4, ishape, images}, {"labels", 1, lshape, labels_f}};
    return mfres_safetensors_save(path, w, 2, NULL, 0);
}

static int write_result(const mfres_model *m, const options *o, const double *losses, double eval_loss,
                        const char *path) {
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    FILE *f = af.fp;
    fprintf(f, "{\n  \"depth\": %d,\n  \"block\": \"%s\",\n  \"mode\": \"%s\",\n  \"tau_init\": \"%s\",\n",
            m->cfg.depth, mfres_block_name(m->cfg.block), mfres_mode_name(m->cfg.mode),
            mfres_tau_init_name(m->cfg.tau_init));
    fprintf(f, "  \"steps\": %d,\n  \"lr\": %.9g,\n  \"momentum\": %.9g,\n  \"wd\": %.9g,\n", o->steps, o->lr,
            o->momentum, o->wd);
    fprintf(f, "  \"nesterov\": %s,\n  \"tau_lr_mult\": %.9g,\n", o->nesterov ? "true" : "false", o->tau_lr_mult);
    fprintf(f, "  \"loss0\": %.17g,\n  \"losses\": [", losses[0]);
    for (int k = 0; k < o->steps; k++) fprintf(f, "%s%.17g", k ? ", " : "", losses[k]);
    fprintf(f, "],\n  \"final_loss\": %.17g,\n  \"tau_final\": [", losses[o->steps]);
    for (int i = 0; i < m->n_tau; i++) fprintf(f, "%s%.9g", i ? ", " : "", m->tau[i]);
    fprintf(f, "],\n  \"eval_loss\": %.17g\n}\n", eval_loss);
    return mfres_atomic_commit(&af);
}

int main(int argc, char **argv) {
    options o;
    if (parse_args(argc, argv, &o)) return 2;
    mfres_set_log_level(MFRES_LOG_QUIET);
    const mfres_model_config *c = &o.cfg;
    mfres_model m;
    mfres_optimizer opt;
    memset(&opt, 0, sizeof opt);
    size_t n_img = (size_t)c->batch * c->in_c * c->in_h * c->in_w;
    float *images = malloc(n_img * sizeof(float)), *labels_f = malloc((size_t)c->batch * sizeof(float));
    int32_t *labels = malloc((size_t)c->batch * sizeof(int32_t));
    double *losses = malloc((size_t)(o.steps + 1) * sizeof(double));
    char *p_model = join(o.out, "model.safetensors"), *p_inputs = join(o.out, "inputs.safetensors");
    char *p_grads = join(o.out, "grads.safetensors"), *p_final = join(o.out, "model_final.safetensors");
    char *p_result = join(o.out, "result.json");
    int rc = MFRES_OK;
    bool have_model = false;
    if (!images || !labels_f || !labels || !losses || !p_model || !p_inputs || !p_grads || !p_final || !p_result) {
        rc = mfres_fail(MFRES_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = mfres_mkdir_p(o.out)) || (rc = mfres_model_create(&m, c, o.seed))) goto done;
    have_model = true;

    mfres_rng rng;
    mfres_rng_seed(&rng, o.seed * 7919 + 17);
    for (size_t i = 0; i < n_img; i++) images[i] = (float)mfres_rng_normal(&rng);
    for (int i = 0; i < c->batch; i++) {
        labels[i] = (int32_t)mfres_rng_below(&rng, (uint32_t)c->num_classes);
        labels_f[i] = (float)labels[i];
    }
    /* Non-trivial BN affine parameters, so their gradients and the scale of
     * every branch are exercised. */
    for (int t = 0; t < m.n_tensors; t++) {
        mfres_tensor *tt = &m.tensors[t];
        if (tt->ndim == 1 && !tt->is_tau && tt->grad && strstr(tt->name, "bn"))
            for (size_t k = 0; k < tt->numel; k++) tt->data[k] += (float)(0.2 * mfres_rng_normal(&rng));
    }
    if (c->mode == MFRES_MODE_MEANFIELD && m.particles > 0) set_reordered_tau(&m);

    if ((rc = mfres_model_save(&m, p_model, "random", NULL, NULL)) ||
        (rc = save_inputs(&m, images, labels_f, p_inputs)))
        goto done;
    if ((rc = mfres_optimizer_init(&opt, &m, o.lr, o.momentum, o.wd, o.nesterov, o.tau_lr_mult))) goto done;
    for (int k = 0; k <= o.steps; k++) {
        if ((rc = mfres_model_forward(&m, images, labels, true, &losses[k], NULL))) goto done;
        if (k == o.steps) break;
        if ((rc = mfres_model_backward(&m))) goto done;
        if (k == 0 && (rc = save_grads(&m, p_grads))) goto done;
        mfres_optimizer_step(&opt, &m);
    }
    if (o.steps == 0) { /* the gradient dump still needs a backward pass */
        if ((rc = mfres_model_backward(&m)) || (rc = save_grads(&m, p_grads))) goto done;
    }
    /* The inference pass (batch norms folded into the convolutions) on the final state. */
    double eval_loss;
    if ((rc = mfres_model_forward(&m, images, labels, false, &eval_loss, NULL))) goto done;
    if ((rc = mfres_model_save(&m, p_final, "random", NULL, NULL)) ||
        (rc = write_result(&m, &o, losses, eval_loss, p_result)))
        goto done;
    printf("resnet_dump: ResNet-%d %s %s%s%s: loss0 %.9g, after %d steps %.9g -> %s\n", c->depth,
           mfres_block_name(c->block), mfres_mode_name(c->mode), c->mode == MFRES_MODE_MEANFIELD ? " tau " : "",
           c->mode == MFRES_MODE_MEANFIELD ? mfres_tau_init_name(c->tau_init) : "", losses[0], o.steps,
           losses[o.steps], o.out);
done:
    if (rc) fprintf(stderr, "resnet_dump: error: %s\n", mfres_last_error());
    mfres_optimizer_free(&opt);
    if (have_model) mfres_model_free(&m);
    free(images), free(labels_f), free(labels), free(losses);
    free(p_model), free(p_inputs), free(p_grads), free(p_final), free(p_result);
    return rc ? 1 : 0;
}
