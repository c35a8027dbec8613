/* Model files: safetensors with PyTorch state_dict names, and the
 * architecture in the metadata so `mfres eval` can rebuild the network. */
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/model.h"
#include "mfres/safetensors.h"

enum { MAX_META = 24 };

int mfres_model_save(const mfres_model *m, const char *path, const char *data_name, const float *mean,
                     const float *std) {
    const mfres_model_config *c = &m->cfg;
    mfres_st_meta meta[MAX_META];
    int n = 0;
    mfres_st_meta_put(meta, &n, "format", "mfres-resnet");
    mfres_st_meta_put(meta, &n, "format_version", "%d", MFRES_MODEL_FORMAT_VERSION);
    mfres_st_meta_put(meta, &n, "family", "%s", c->family == MFRES_FAMILY_RESNEXT ? "resnext" : "resnet");
    mfres_st_meta_put(meta, &n, "depth", "%d", c->depth);
    if (c->family == MFRES_FAMILY_RESNEXT) {
        mfres_st_meta_put(meta, &n, "cardinality", "%d", c->cardinality);
        mfres_st_meta_put(meta, &n, "group_width", "%d", c->group_width);
    }
    mfres_st_meta_put(meta, &n, "block", "%s", mfres_block_name(c->block));
    mfres_st_meta_put(meta, &n, "mode", "%s", mfres_mode_name(c->mode));
    mfres_st_meta_put(meta, &n, "tau_init", "%s", mfres_tau_init_name(c->tau_init));
    mfres_st_meta_put(meta, &n, "input", "%dx%dx%d", c->in_c, c->in_h, c->in_w);
    mfres_st_meta_put(meta, &n, "num_classes", "%d", c->num_classes);
    mfres_st_meta_put(meta, &n, "base_width", "%d", c->base_width);
    mfres_st_meta_put(meta, &n, "bn_eps", "%.9g", c->bn_eps);
    mfres_st_meta_put(meta, &n, "data", "%s", data_name ? data_name : "");
    if (mean && std) {
        mfres_st_meta_put(meta, &n, "norm_mean", "%.9g,%.9g,%.9g", mean[0], mean[1], mean[2]);
        mfres_st_meta_put(meta, &n, "norm_std", "%.9g,%.9g,%.9g", std[0], std[1], std[2]);
    }
    mfres_st_write *w = malloc(sizeof *w * m->n_tensors);
    if (!w) return mfres_fail(MFRES_ENOMEM, "out of memory saving %s", path);
    for (int i = 0; i < m->n_tensors; i++)
        w[i] = (mfres_st_write){m->tensors[i].name, m->tensors[i].ndim, m->tensors[i].shape, m->tensors[i].data};
    int rc = mfres_safetensors_save(path, w, m->n_tensors, meta, n);
    free(w);
    return rc;
}

static int meta_int(const mfres_safetensors *st, const char *path, const char *key, int *out) {
    const char *v = mfres_safetensors_meta(st, key);
    char *end;
    if (!v) return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' is missing (not an mfres model file?)", path, key);
    long x = strtol(v, &end, 10);
    if (*end) return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' should be an integer, found '%s'", path, key, v);
    *out = (int)x;
    return MFRES_OK;
}

int mfres_model_load(mfres_model *m, const char *path, int batch, char *data_name, size_t cap, float *mean,
                     float *std) {
    mfres_safetensors st;
    int rc = mfres_safetensors_load(&st, path);
    if (rc) return rc;
    mfres_model_config c;
    mfres_model_config_default(&c);
    int version = 0;
    const char *block, *mode, *tau_init, *input, *fmt = mfres_safetensors_meta(&st, "format");
    if (!fmt || strcmp(fmt, "mfres-resnet")) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: not an mfres model file (metadata format is '%s', expected 'mfres-resnet')",
                        path, fmt ? fmt : "(none)");
        goto done;
    }
    if ((rc = meta_int(&st, path, "format_version", &version))) goto done;
    if (version != MFRES_MODEL_FORMAT_VERSION) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: model file format version %d, expected %d", path, version,
                        MFRES_MODEL_FORMAT_VERSION);
        goto done;
    }
    if ((rc = meta_int(&st, path, "depth", &c.depth)) || (rc = meta_int(&st, path, "num_classes", &c.num_classes)) ||
        (rc = meta_int(&st, path, "base_width", &c.base_width)))
        goto done;
    block = mfres_safetensors_meta(&st, "block");
    mode = mfres_safetensors_meta(&st, "mode");
    tau_init = mfres_safetensors_meta(&st, "tau_init");
    input = mfres_safetensors_meta(&st, "input");
    if (!block || !mode || !tau_init || !input ||
        sscanf(input, "%dx%dx%d", &c.in_c, &c.in_h, &c.in_w) != 3) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: metadata block/mode/tau_init/input missing or malformed", path);
        goto done;
    }
    c.block = !strcmp(block, "preact") ? MFRES_BLOCK_PREACT
              : !strcmp(block, "bottleneck") ? MFRES_BLOCK_BOTTLENECK
                                             : MFRES_BLOCK_POSTACT;
    const char *family = mfres_safetensors_meta(&st, "family"); /* absent in files of basic ResNets before it */
    if (family && !strcmp(family, "resnext")) {
        c.family = MFRES_FAMILY_RESNEXT;
        if ((rc = meta_int(&st, path, "cardinality", &c.cardinality)) ||
            (rc = meta_int(&st, path, "group_width", &c.group_width)))
            goto done;
    } else if (family && strcmp(family, "resnet")) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: metadata 'family' is '%s', expected resnet or resnext", path, family);
        goto done;
    }
    c.mode = !strcmp(mode, "meanfield") ? MFRES_MODE_MEANFIELD : MFRES_MODE_VANILLA;
    c.tau_init = !strcmp(tau_init, "grid") ? MFRES_TAU_GRID : MFRES_TAU_UNIT;
    const char *eps = mfres_safetensors_meta(&st, "bn_eps");
    if (eps) c.bn_eps = strtof(eps, NULL);
    c.batch = batch;
    if ((rc = mfres_model_create(m, &c, 0))) goto done;
    for (int i = 0; !rc && i < m->n_tensors; i++)
        rc = mfres_safetensors_copy_f32(&st, path, m->tensors[i].name, m->tensors[i].data, m->tensors[i].numel);
    if (rc) {
        mfres_model_free(m);
        goto done;
    }
    mfres_model_sort_blocks(m);
    if (data_name) snprintf(data_name, cap, "%s", mfres_safetensors_meta(&st, "data") ? mfres_safetensors_meta(&st, "data") : "");
    const char *ms = mfres_safetensors_meta(&st, "norm_mean"), *ss = mfres_safetensors_meta(&st, "norm_std");
    if (mean && std) {
        for (int k = 0; k < 3; k++) mean[k] = 0.0f, std[k] = 1.0f;
        if (ms && ss) {
            sscanf(ms, "%f,%f,%f", &mean[0], &mean[1], &mean[2]);
            sscanf(ss, "%f,%f,%f", &std[0], &std[1], &std[2]);
        }
    }
done:
    mfres_safetensors_free(&st);
    return rc;
}
