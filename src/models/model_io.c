/* Model files: safetensors with PyTorch state_dict names, and the
 * architecture in the metadata so `mfres eval` can rebuild the network. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
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

/* ---- loading: every metadata value is read by one rule of this table, and
 * refused with its key named when it is missing, malformed or out of range.
 * A new block kind or mode is a row in its name list; a new key is a row in
 * model_rules. */

typedef struct name_value {
    const char *name;
    int value;
} name_value;

static const name_value block_names[] = {
    {"postact", MFRES_BLOCK_POSTACT}, {"preact", MFRES_BLOCK_PREACT}, {"bottleneck", MFRES_BLOCK_BOTTLENECK}, {NULL, 0}};
/* Absent in files of basic ResNets written before ResNeXt existed: resnet. */
static const name_value family_names[] = {{"resnet", MFRES_FAMILY_RESNET}, {"resnext", MFRES_FAMILY_RESNEXT}, {NULL, 0}};
static const name_value mode_names[] = {{"vanilla", MFRES_MODE_VANILLA}, {"meanfield", MFRES_MODE_MEANFIELD}, {NULL, 0}};
static const name_value tau_init_names[] = {{"unit", MFRES_TAU_UNIT}, {"grid", MFRES_TAU_GRID}, {NULL, 0}};

typedef enum {
    META_TEXT,   /* a string equal to `text` (or any string when text is NULL) */
    META_INT,    /* a decimal integer in [min, max] */
    META_NAME,   /* one of `names`, stored as its value (int) */
    META_FLOAT,  /* a finite number in (min, max] when min_open, else [min, max] */
    META_DIMS3,  /* "CxHxW", each an integer in [min, max] (3 ints) */
    META_FLOATS3 /* "a,b,c", each finite in [min, max] (3 floats) */
} meta_kind;

typedef struct meta_rule {
    const char *key;
    meta_kind kind;
    bool required;
    double min, max;
    bool min_open;
    const name_value *names;
    const char *text;
    size_t offset; /* where the value goes in model_meta */
} meta_rule;

typedef struct model_meta {
    mfres_model_config cfg;
    int version;
    char data[64];
    float mean[3], std[3];
} model_meta;

#define AT(field) offsetof(model_meta, field)
static const meta_rule model_rules[] = {
    {"format", META_TEXT, true, 0, 0, false, NULL, "mfres-resnet", 0},
    {"format_version", META_INT, true, MFRES_MODEL_FORMAT_VERSION, MFRES_MODEL_FORMAT_VERSION, false, NULL, NULL,
     AT(version)},
    {"family", META_NAME, false, 0, 0, false, family_names, NULL, AT(cfg.family)},
    {"depth", META_INT, true, 8, 1202, false, NULL, NULL, AT(cfg.depth)},
    {"cardinality", META_INT, false, 1, 1024, false, NULL, NULL, AT(cfg.cardinality)},
    {"group_width", META_INT, false, 1, 4096, false, NULL, NULL, AT(cfg.group_width)},
    {"block", META_NAME, true, 0, 0, false, block_names, NULL, AT(cfg.block)},
    {"mode", META_NAME, true, 0, 0, false, mode_names, NULL, AT(cfg.mode)},
    {"tau_init", META_NAME, true, 0, 0, false, tau_init_names, NULL, AT(cfg.tau_init)},
    {"input", META_DIMS3, true, 1, 65536, false, NULL, NULL, AT(cfg.in_c)},
    {"num_classes", META_INT, true, 2, 1 << 20, false, NULL, NULL, AT(cfg.num_classes)},
    {"base_width", META_INT, true, 16, 4096, false, NULL, NULL, AT(cfg.base_width)},
    {"bn_eps", META_FLOAT, true, 0, 1, true, NULL, NULL, AT(cfg.bn_eps)},
    {"data", META_TEXT, false, 0, 0, false, NULL, NULL, AT(data)},
    {"norm_mean", META_FLOATS3, false, -1e3, 1e3, false, NULL, NULL, AT(mean)},
    {"norm_std", META_FLOATS3, false, 0, 1e3, true, NULL, NULL, AT(std)},
};
#undef AT

static int meta_bad(const char *path, const meta_rule *r, const char *v, const char *expected) {
    return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' should be %s, found '%s'", path, r->key, expected, v);
}

static bool in_range(const meta_rule *r, double x) {
    return isfinite(x) && (r->min_open ? x > r->min : x >= r->min) && x <= r->max;
}

/* Parses one number of a list ending at `stop` (or the string's end), strictly. */
static bool number_at(const char **s, char stop, bool integer, double *out) {
    char *e = NULL;
    errno = 0;
    double x = integer ? (double)strtol(*s, &e, 10) : strtod(*s, &e);
    if (errno || e == *s || isspace((unsigned char)**s) || (*e != stop && *e != '\0')) return false;
    *out = x;
    *s = *e ? e + 1 : e;
    return true;
}

static int apply_rule(const mfres_safetensors *st, const char *path, const meta_rule *r, model_meta *out) {
    const char *v = mfres_safetensors_meta(st, r->key);
    char *dst = (char *)out + r->offset;
    char expected[160];
    if (!v) {
        if (!r->required) return MFRES_OK;
        return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' is missing (not an mfres model file?)", path, r->key);
    }
    switch (r->kind) {
    case META_TEXT:
        if (r->text && strcmp(v, r->text)) {
            snprintf(expected, sizeof expected, "'%s'", r->text);
            return meta_bad(path, r, v, expected);
        }
        if (!r->text) snprintf(dst, sizeof out->data, "%s", v);
        return MFRES_OK;
    case META_INT: {
        double x;
        const char *s = v;
        snprintf(expected, sizeof expected, "an integer in [%.0f, %.0f]", r->min, r->max);
        if (!number_at(&s, '\0', true, &x) || !in_range(r, x)) return meta_bad(path, r, v, expected);
        *(int *)dst = (int)x;
        return MFRES_OK;
    }
    case META_NAME: {
        size_t at = (size_t)snprintf(expected, sizeof expected, "one of");
        for (const name_value *n = r->names; n->name; n++) {
            if (!strcmp(v, n->name)) {
                *(int *)dst = n->value;
                return MFRES_OK;
            }
            at += (size_t)snprintf(expected + at, sizeof expected - at, "%s %s", n == r->names ? "" : ",", n->name);
        }
        return meta_bad(path, r, v, expected);
    }
    case META_FLOAT: {
        double x;
        const char *s = v;
        snprintf(expected, sizeof expected, "a number in %s%g, %g]", r->min_open ? "(" : "[", r->min, r->max);
        if (!number_at(&s, '\0', false, &x) || !in_range(r, x)) return meta_bad(path, r, v, expected);
        *(float *)dst = (float)x;
        return MFRES_OK;
    }
    case META_DIMS3:
    case META_FLOATS3: {
        bool dims = r->kind == META_DIMS3;
        char sep = dims ? 'x' : ',';
        if (dims) snprintf(expected, sizeof expected, "CxHxW, each an integer in [%.0f, %.0f]", r->min, r->max);
        else
            snprintf(expected, sizeof expected, "three comma-separated numbers in %s%g, %g]",
                     r->min_open ? "(" : "[", r->min, r->max);
        const char *s = v;
        for (int k = 0; k < 3; k++) {
            double x;
            if (!number_at(&s, k < 2 ? sep : '\0', dims, &x) || !in_range(r, x) || (k < 2 && !*s) || (k == 2 && *s))
                return meta_bad(path, r, v, expected);
            if (dims) ((int *)dst)[k] = (int)x;
            else ((float *)dst)[k] = (float)x;
        }
        return MFRES_OK;
    }
    }
    return mfres_fail(MFRES_EINVAL, "metadata rule for '%s' has no kind", r->key);
}

/* The file's tensors are exactly the model's, each F32 of the model's shape and finite. */
static int load_tensors(mfres_model *m, const mfres_safetensors *st, const char *path) {
    for (int i = 0; i < st->n_tensors; i++)
        if (!mfres_model_find(m, st->tensors[i].name))
            return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s' does not belong to a %s ResNet-%d (wrong metadata?)",
                              path, st->tensors[i].name, mfres_block_name(m->cfg.block), m->cfg.depth);
    for (int i = 0; i < m->n_tensors; i++) {
        const mfres_tensor *t = &m->tensors[i];
        int rc = mfres_safetensors_copy_f32_shaped(st, path, t->name, t->data, t->ndim, t->shape);
        if (rc) return rc;
        for (size_t k = 0; k < t->numel; k++)
            if (!isfinite(t->data[k]))
                return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s' holds %g at index %zu", path, t->name,
                                  (double)t->data[k], k);
    }
    return MFRES_OK;
}

int mfres_model_load(mfres_model *m, const char *path, int batch, char *data_name, size_t cap, float *mean,
                     float *std) {
    return mfres_model_load_on(m, path, batch, MFRES_DEVICE_CPU, MFRES_PRECISION_FP32, data_name, cap, mean, std);
}

int mfres_model_load_on(mfres_model *m, const char *path, int batch, mfres_device device, mfres_precision precision,
                        char *data_name, size_t cap, float *mean, float *std) {
    mfres_safetensors st;
    int rc = mfres_safetensors_load(&st, path);
    if (rc) return rc;
    model_meta mm = {.mean = {0, 0, 0}, .std = {1, 1, 1}};
    mfres_model_config_default(&mm.cfg);
    for (size_t i = 0; !rc && i < sizeof model_rules / sizeof model_rules[0]; i++)
        rc = apply_rule(&st, path, &model_rules[i], &mm);
    if (!rc && mm.cfg.family == MFRES_FAMILY_RESNEXT &&
        (!mfres_safetensors_meta(&st, "cardinality") || !mfres_safetensors_meta(&st, "group_width")))
        rc = mfres_fail(MFRES_EFORMAT, "%s: a ResNeXt model file needs metadata 'cardinality' and 'group_width'", path);
    if (!rc && !mfres_safetensors_meta(&st, "norm_mean") != !mfres_safetensors_meta(&st, "norm_std"))
        rc = mfres_fail(MFRES_EFORMAT, "%s: metadata 'norm_mean' and 'norm_std' come together; found only one", path);
    if (rc) goto done;
    mm.cfg.batch = batch;
    if ((rc = mfres_model_config_check(&mm.cfg))) {
        rc = mfres_fail_context(MFRES_EFORMAT, "%s: metadata describes no valid model", path);
        goto done;
    }
    if ((rc = mfres_model_create_on(m, &mm.cfg, 0, device, precision))) goto done;
    if ((rc = load_tensors(m, &st, path))) {
        mfres_model_free(m);
        goto done;
    }
    mfres_model_sort_blocks(m);
    if ((rc = mfres_model_sync_device(m))) {
        mfres_model_free(m);
        goto done;
    }
    if (data_name) snprintf(data_name, cap, "%s", mm.data);
    if (mean && std) {
        memcpy(mean, mm.mean, sizeof mm.mean);
        memcpy(std, mm.std, sizeof mm.std);
    }
done:
    mfres_safetensors_free(&st);
    return rc;
}
