/* The architecture description (arch.h): configuration, the tensor table and
 * the shape of every layer, for every network of Table 1. */
#include "models/arch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"

/* ------------------------------------------------------------------------ */
/* configuration */

void mfres_model_config_default(mfres_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->family = MFRES_FAMILY_RESNET;
    cfg->depth = 20;
    cfg->block = MFRES_BLOCK_POSTACT;
    cfg->mode = MFRES_MODE_MEANFIELD;
    cfg->tau_init = MFRES_TAU_UNIT;
    cfg->in_c = 1, cfg->in_h = 28, cfg->in_w = 28;
    cfg->num_classes = 10;
    cfg->batch = 128;
    cfg->base_width = 16;
    cfg->cardinality = 8, cfg->group_width = 64;
    cfg->bn_momentum = 0.1f;
    cfg->bn_eps = 1e-5f;
}

static bool bottleneck_chain(const mfres_model_config *cfg) {
    return cfg->family == MFRES_FAMILY_RESNEXT || cfg->block == MFRES_BLOCK_BOTTLENECK;
}

int mfres_model_config_check(const mfres_model_config *cfg) {
    if (cfg->family == MFRES_FAMILY_RESNEXT) {
        if (cfg->block == MFRES_BLOCK_BOTTLENECK)
            return mfres_fail(MFRES_EINVAL, "--block: ResNeXt blocks are bottlenecks already; choose postact or preact");
        if (cfg->depth < 11 || (cfg->depth - 2) % 9 != 0 || cfg->depth > 1001)
            return mfres_fail(MFRES_EINVAL, "ResNeXt depth must be 9n+2 with n >= 1 (11, 20, 29, ...), got %d",
                              cfg->depth);
        if (cfg->cardinality < 1 || cfg->group_width < 1 || (cfg->cardinality * cfg->group_width) % 16)
            return mfres_fail(MFRES_EINVAL,
                              "ResNeXt cardinality x group width must be a positive multiple of 16, got %dx%dd",
                              cfg->cardinality, cfg->group_width);
    } else if (cfg->block == MFRES_BLOCK_BOTTLENECK) {
        if (cfg->depth < 11 || (cfg->depth - 2) % 9 != 0 || cfg->depth > 1001)
            return mfres_fail(MFRES_EINVAL,
                              "--block bottleneck needs depth 9n+2 with n >= 1 (11, 20, 29, 56, 164, ...), got %d",
                              cfg->depth);
    } else if (cfg->block == MFRES_BLOCK_POSTACT || cfg->block == MFRES_BLOCK_PREACT) {
        if (cfg->depth < 8 || (cfg->depth - 2) % 6 != 0 || cfg->depth > 1202)
            return mfres_fail(MFRES_EINVAL,
                              "depth must be 6n+2 with n >= 1 for basic blocks (8, 14, 20, 32, 44, 56, 110, ...), "
                              "got %d%s",
                              cfg->depth, (cfg->depth - 2) % 9 == 0 ? " (9n+2: use --block bottleneck)" : "");
    } else {
        return mfres_fail(MFRES_EINVAL, "unknown block kind %d (postact, preact, bottleneck)", (int)cfg->block);
    }
    if (cfg->in_c < 1 || cfg->in_h < 4 || cfg->in_w < 4 || cfg->in_h % 4 || cfg->in_w % 4)
        return mfres_fail(MFRES_EINVAL, "input must be CxHxW with H, W divisible by 4, got %dx%dx%d", cfg->in_c,
                          cfg->in_h, cfg->in_w);
    if (cfg->num_classes < 2) return mfres_fail(MFRES_EINVAL, "need at least 2 classes, got %d", cfg->num_classes);
    if (cfg->batch < 1) return mfres_fail(MFRES_EINVAL, "batch must be >= 1, got %d", cfg->batch);
    if (cfg->base_width < 16 || cfg->base_width % 16 || cfg->base_width > 1024)
        return mfres_fail(MFRES_EINVAL, "base width must be a multiple of 16 up to 1024, got %d", cfg->base_width);
    return MFRES_OK;
}

const char *mfres_block_name(mfres_block_type b) {
    return b == MFRES_BLOCK_PREACT ? "preact" : b == MFRES_BLOCK_BOTTLENECK ? "bottleneck" : "postact";
}
const char *mfres_mode_name(mfres_mode m) { return m == MFRES_MODE_MEANFIELD ? "meanfield" : "vanilla"; }
const char *mfres_tau_init_name(mfres_tau_init t) { return t == MFRES_TAU_GRID ? "grid" : "unit"; }

int mfres_model_config_from_name(mfres_model_config *cfg, const char *name) {
    char *end;
    if (!strncmp(name, "resnext", 7)) {
        long d = strtol(name + 7, &end, 10);
        int card = 0, gw = 0, used = 0;
        if (end == name + 7 || sscanf(end, "-%dx%dd%n", &card, &gw, &used) != 2 || end[used])
            return mfres_fail(MFRES_EINVAL, "--model: expected resnextN-CxDd (resnext29-8x64d, resnext29-16x64d), got '%s'",
                              name);
        cfg->family = MFRES_FAMILY_RESNEXT;
        cfg->depth = (int)d;
        cfg->cardinality = card, cfg->group_width = gw;
        cfg->base_width = 64;
        if (cfg->block == MFRES_BLOCK_BOTTLENECK) cfg->block = MFRES_BLOCK_POSTACT;
        return MFRES_OK;
    }
    if (!strncmp(name, "resnet", 6)) {
        long d = strtol(name + 6, &end, 10);
        if (end == name + 6 || *end || d < 8 || d > 1202)
            return mfres_fail(MFRES_EINVAL, "--model: expected resnetN (resnet20, resnet56, resnet164, ...), got '%s'",
                              name);
        cfg->family = MFRES_FAMILY_RESNET;
        cfg->depth = (int)d;
        cfg->base_width = 16;
        return MFRES_OK;
    }
    return mfres_fail(MFRES_EINVAL,
                      "--model: unknown model '%s' (resnetN with N = 6n+2 or, with --block bottleneck, 9n+2; "
                      "resnext29-8x64d; resnext29-16x64d)",
                      name);
}

void mfres_model_display_name(const mfres_model_config *cfg, char *buf, size_t cap) {
    if (cfg->family == MFRES_FAMILY_RESNEXT)
        snprintf(buf, cap, "ResNeXt-%d (%dx%dd)", cfg->depth, cfg->cardinality, cfg->group_width);
    else
        snprintf(buf, cap, "ResNet-%d", cfg->depth);
}

/* ------------------------------------------------------------------------ */
/* positions and steps */

int arch_block_at(const mfres_model *m, int stage, int index) {
    if (index == 0 || m->cfg.mode == MFRES_MODE_VANILLA) return index;
    return 1 + m->order[stage * m->particles + index - 1];
}

float arch_step_at(const mfres_model *m, int stage, int index) {
    if (index == 0 || m->cfg.mode == MFRES_MODE_VANILLA) return 1.0f;
    return m->h[stage * m->particles + index - 1];
}

double arch_conv_flops(const arch_conv *c) {
    return 2.0 * c->K * (c->C / c->groups) * c->R * c->R * c->OH * c->OW;
}

/* ------------------------------------------------------------------------ */
/* the tensor table: declared in state_dict order, counted, then assigned */

enum tensor_kind { KIND_PARAM, KIND_BUFFER, KIND_TAU };

typedef struct table_builder {
    mfres_model *m;
    bool assign; /* second pass: pointers are set */
    int count;
    size_t off[3]; /* running sizes per kind */
} table_builder;

static mfres_tensor *add_tensor(table_builder *tb, enum tensor_kind kind, const char *name, int ndim, int64_t d0,
                                int64_t d1, int64_t d2, int64_t d3) {
    mfres_tensor *t = tb->assign ? &tb->m->tensors[tb->count] : NULL;
    int64_t dims[4] = {d0, d1, d2, d3};
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (size_t)dims[i];
    if (t) {
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", name);
        t->ndim = ndim;
        memcpy(t->shape, dims, sizeof dims);
        t->numel = numel;
        size_t o = tb->off[kind];
        mfres_model *m = tb->m;
        if (kind == KIND_PARAM) t->data = m->params + o, t->grad = m->grads + o;
        if (kind == KIND_BUFFER) t->data = m->buffers + o;
        if (kind == KIND_TAU) t->data = m->tau + o, t->grad = m->tau_grad + o, t->is_tau = true;
    }
    tb->off[kind] += numel;
    tb->count++;
    return t;
}

static void add_conv(table_builder *tb, const char *name, arch_conv *c) {
    c->w = add_tensor(tb, KIND_PARAM, name, 4, c->K, c->C / c->groups, c->R, c->R);
}

static void add_bn(table_builder *tb, const char *prefix, arch_bn *bn) {
    char name[64];
    snprintf(name, sizeof name, "%s.weight", prefix);
    bn->w = add_tensor(tb, KIND_PARAM, name, 1, bn->C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    bn->b = add_tensor(tb, KIND_PARAM, name, 1, bn->C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_mean", prefix);
    bn->rm = add_tensor(tb, KIND_BUFFER, name, 1, bn->C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_var", prefix);
    bn->rv = add_tensor(tb, KIND_BUFFER, name, 1, bn->C, 0, 0, 0);
}

static arch_conv make_conv(int C, int K, int R, int stride, int groups, int H, int W) {
    arch_conv c = {.C = C, .K = K, .R = R, .stride = stride, .pad = R / 2, .groups = groups, .H = H, .W = W};
    c.OH = (H + 2 * c.pad - R) / stride + 1;
    c.OW = (W + 2 * c.pad - R) / stride + 1;
    return c;
}

/* The shapes of block (stage, index): its chain of convolutions and shortcut. */
static void shape_block(const mfres_model_config *cfg, int s, int j, arch_block *b) {
    int w = cfg->base_width;
    bool first = j == 0, down = s > 0 && j == 0;
    int stride = down ? 2 : 1;
    memset(b, 0, sizeof *b);
    b->stage = s, b->index = j;
    b->pre = cfg->block == MFRES_BLOCK_PREACT || (cfg->family == MFRES_FAMILY_RESNET && cfg->block == MFRES_BLOCK_BOTTLENECK);
    b->h_out = cfg->in_h >> s, b->w_out = cfg->in_w >> s;
    b->h_in = down ? 2 * b->h_out : b->h_out, b->w_in = down ? 2 * b->w_out : b->w_out;
    int H = b->h_in, W = b->w_in, OH = b->h_out, OW = b->w_out;
    if (!bottleneck_chain(cfg)) { /* basic: 3x3, 3x3; option A where the shape changes */
        b->c_out = w << s;
        b->c_in = down ? b->c_out / 2 : b->c_out;
        b->n_conv = 2;
        b->conv[0] = make_conv(b->c_in, b->c_out, 3, stride, 1, H, W);
        b->conv[1] = make_conv(b->c_out, b->c_out, 3, 1, 1, OH, OW);
        b->shortcut = down ? SHORTCUT_OPTION_A : SHORTCUT_IDENTITY;
    } else { /* bottleneck: 1x1, 3x3 (stride; grouped for ResNeXt), 1x1; projection where the shape changes */
        bool resnext = cfg->family == MFRES_FAMILY_RESNEXT;
        int stem = w, out1 = 4 * w; /* stem width, stage-1 output */
        int mid = resnext ? (cfg->cardinality * cfg->group_width) << s : w << s;
        b->c_out = out1 << s;
        b->c_in = !first ? b->c_out : s == 0 ? stem : out1 << (s - 1);
        b->n_conv = 3;
        b->conv[0] = make_conv(b->c_in, mid, 1, 1, 1, H, W);
        b->conv[1] = make_conv(mid, mid, 3, stride, resnext ? cfg->cardinality : 1, H, W);
        b->conv[2] = make_conv(mid, b->c_out, 1, 1, 1, OH, OW);
        b->shortcut = first ? SHORTCUT_PROJECTION : SHORTCUT_IDENTITY;
        if (first) {
            b->proj = make_conv(b->c_in, b->c_out, 1, stride, 1, H, W);
            b->proj_bn = resnext;
            b->proj_norm.C = b->c_out;
        }
    }
    for (int i = 0; i < b->n_conv; i++) b->bn[i].C = b->pre ? b->conv[i].C : b->conv[i].K;
}

/* Declares every tensor in state_dict order. Run twice: count, then assign. */
static void build_table(table_builder *tb, mfres_arch *a) {
    mfres_model *m = tb->m;
    const mfres_model_config *c = &m->cfg;
    int n = m->blocks_per_stage;
    char prefix[32], name[64];
    add_conv(tb, "conv1.weight", &a->stem);
    if (a->stem_bn) add_bn(tb, "bn1", &a->stem_norm);
    for (int s = 0; s < ARCH_STAGES; s++)
        for (int j = 0; j < n; j++) {
            arch_block *b = &a->blocks[s * n + j];
            snprintf(prefix, sizeof prefix, "layer%d.%d", s + 1, j);
            for (int i = 0; i < b->n_conv; i++) {
                snprintf(name, sizeof name, "%s.conv%d.weight", prefix, i + 1);
                add_conv(tb, name, &b->conv[i]);
                snprintf(name, sizeof name, "%s.bn%d", prefix, i + 1);
                add_bn(tb, name, &b->bn[i]);
            }
            if (tb->assign) {
                b->branch_first = (size_t)(b->conv[0].w->data - m->params);
                const mfres_tensor *last = b->bn[b->n_conv - 1].b;
                b->branch_end = (size_t)(last->data - m->params) + last->numel;
            }
            if (b->shortcut == SHORTCUT_PROJECTION) {
                snprintf(name, sizeof name, "%s.downsample.0.weight", prefix);
                add_conv(tb, name, &b->proj);
                snprintf(name, sizeof name, "%s.downsample.1", prefix);
                if (b->proj_bn) add_bn(tb, name, &b->proj_norm);
            }
        }
    if (a->final_bn) add_bn(tb, "bn_final", &a->final_norm);
    a->fc_w = add_tensor(tb, KIND_PARAM, "fc.weight", 2, c->num_classes, a->final_c, 0, 0);
    a->fc_b = add_tensor(tb, KIND_PARAM, "fc.bias", 1, c->num_classes, 0, 0, 0);
    if (c->mode == MFRES_MODE_MEANFIELD)
        for (int s = 0; s < ARCH_STAGES; s++)
            for (int j = 1; j < n; j++) {
                snprintf(name, sizeof name, "layer%d.%d.tau", s + 1, j);
                add_tensor(tb, KIND_TAU, name, 1, 1, 0, 0, 0);
            }
}

static size_t map_floats(int C, int H, int W) { return (size_t)C * H * W; }

void arch_free(mfres_model *m) {
    if (m->arch) mfres_free(m->arch->blocks);
    mfres_free(m->arch);
    mfres_free(m->tensors);
    mfres_free(m->params);
    mfres_free(m->grads);
    mfres_free(m->buffers);
    mfres_free(m->tau);
    mfres_free(m->tau_grad);
    mfres_free(m->order);
    mfres_free(m->h);
    m->arch = NULL, m->tensors = NULL, m->params = m->grads = m->buffers = m->tau = m->tau_grad = m->h = NULL;
    m->order = NULL;
}

int arch_create(mfres_model *m, const mfres_model_config *cfg) {
    int rc = mfres_model_config_check(cfg);
    if (rc) return rc;
    m->cfg = *cfg;
    bool chain3 = bottleneck_chain(cfg);
    m->blocks_per_stage = (cfg->depth - 2) / (chain3 ? 9 : 6);
    m->particles = m->blocks_per_stage - 1;
    int n = m->blocks_per_stage;
    mfres_arch *a = m->arch = mfres_alloc(sizeof *a, "architecture");
    if (!a) return MFRES_ENOMEM;
    memset(a, 0, sizeof *a);
    a->n = n;
    a->blocks = mfres_alloc(sizeof(arch_block) * ARCH_STAGES * n, "block table");
    if (!a->blocks) return MFRES_ENOMEM;
    for (int s = 0; s < ARCH_STAGES; s++)
        for (int j = 0; j < n; j++) shape_block(cfg, s, j, &a->blocks[s * n + j]);
    a->pre = a->blocks[0].pre;
    a->stem = make_conv(cfg->in_c, cfg->base_width, 3, 1, 1, cfg->in_h, cfg->in_w);
    a->stem_bn = !a->pre, a->stem_norm.C = cfg->base_width;
    const arch_block *last = &a->blocks[ARCH_STAGES * n - 1];
    a->final_c = last->c_out, a->final_h = last->h_out, a->final_w = last->w_out;
    a->final_bn = a->pre, a->final_norm.C = a->final_c;
    a->max_map_floats = map_floats(a->stem.K, a->stem.OH, a->stem.OW);
    for (int i = 0; i < ARCH_STAGES * n; i++) {
        const arch_block *b = &a->blocks[i];
        for (int k = 0; k < b->n_conv; k++) {
            const arch_conv *c = &b->conv[k];
            size_t in = map_floats(c->C, c->H, c->W), out = map_floats(c->K, c->OH, c->OW);
            if (in > a->max_map_floats) a->max_map_floats = in;
            if (out > a->max_map_floats) a->max_map_floats = out;
        }
    }

    /* Tensor table: count, allocate the buffers, assign. */
    table_builder tb = {.m = m};
    build_table(&tb, a);
    m->n_tensors = tb.count;
    m->n_params = tb.off[KIND_PARAM], m->n_buffers = tb.off[KIND_BUFFER], m->n_tau = (int)tb.off[KIND_TAU];
    m->tensors = mfres_alloc(sizeof(mfres_tensor) * m->n_tensors, "tensor table");
    m->params = mfres_alloc(m->n_params * sizeof(float), "parameters");
    m->grads = mfres_alloc(m->n_params * sizeof(float), "gradients");
    m->buffers = mfres_alloc(m->n_buffers * sizeof(float), "running statistics");
    m->tau = mfres_alloc((m->n_tau + 1) * sizeof(float), "tau");
    m->tau_grad = mfres_alloc((m->n_tau + 1) * sizeof(float), "tau gradients");
    m->order = mfres_alloc((3 * m->particles + 1) * sizeof(int), "block order");
    m->h = mfres_alloc((3 * m->particles + 1) * sizeof(float), "block steps");
    if (!m->tensors || !m->params || !m->grads || !m->buffers || !m->tau || !m->tau_grad || !m->order || !m->h)
        return MFRES_ENOMEM;
    tb = (table_builder){.m = m, .assign = true};
    build_table(&tb, a);

    m->forward_flops = arch_conv_flops(&a->stem);
    for (int i = 0; i < ARCH_STAGES * n; i++) {
        const arch_block *b = &a->blocks[i];
        for (int k = 0; k < b->n_conv; k++) m->forward_flops += arch_conv_flops(&b->conv[k]);
        if (b->shortcut == SHORTCUT_PROJECTION) m->forward_flops += arch_conv_flops(&b->proj);
    }
    m->forward_flops += 2.0 * a->final_c * cfg->num_classes;
    return MFRES_OK;
}
