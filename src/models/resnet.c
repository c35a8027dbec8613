/* CIFAR ResNets of depth 6n+2 on the fast path (oneDNN, float32).
 *
 * Network (He et al. 2016a/b, CIFAR variants):
 *   stem:   conv3x3(in_c -> w)            [+ BN-ReLU for post-activation]
 *   stages: 3 x n blocks, widths w, 2w, 4w; the first block of stages 2 and 3
 *           halves the resolution (stride 2, option-A shortcut)
 *   head:   [BN-ReLU for pre-activation] global average pool, linear
 * Blocks:
 *   postact: out = relu(x + h * BN2(conv2(relu(BN1(conv1(x))))))
 *   preact:  out = x + h * conv2(relu(BN2(conv1(relu(BN1(x))))))
 * h is 1 in vanilla mode and for every stage head; in mean-field mode the other
 * blocks are particles whose steps come from their sorted depth positions tau
 * (include/mfres/meanfield.h).
 *
 * Memory is allocated in a few places: the parameter, gradient, running-stat
 * and tau buffers (one each), and one arena for activations, saved state and
 * the four gradient scratch buffers the backward pass rotates through. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/meanfield.h"
#include "mfres/model.h"
#include "models/profile.h"
#include "models/resnet_infer.h"
#include "models/resnet_internal.h"
#include "nn/nn.h"

enum { N_SCRATCH = 4 };

typedef struct act {
    float *data;
    dnnl_memory_t mem;
} act;

typedef struct block_pos {
    int stage, index;
    block_shape shape;
    nn_conv2d conv1, conv2;
    nn_batchnorm bn1, bn2;
    act a0;            /* preact: relu(BN1(x)) */
    act t1, a1, t2;    /* conv1 out, its activation, conv2 out */
    act out;           /* X at the next position */
    unsigned char *out_mask; /* postact: out > 0, for the ReLU's backward */
    float *bn1_stats, *bn2_stats; /* mean | var */
    float *bn2_scaled;            /* postact: h*gamma2 | h*beta2, the branch's step folded into BN2 */
    void *bn1_ws, *bn2_ws;
} block_pos;

struct resnet_impl {
    nn_ctx ctx;
    net_params net;
    int n_pos;
    block_pos *pos;
    nn_conv2d stem_conv;
    nn_batchnorm stem_bn;  /* postact */
    nn_batchnorm final_bn; /* preact */
    act x_in, stem_t, stem_a, final_a;
    float *stem_stats, *final_stats;
    void *stem_ws, *final_ws;
    float *pooled, *logits, *probs, *dlogits, *dpooled;
    int *labels;
    float *scratch[N_SCRATCH];
    dnnl_memory_t scratch_mem[N_SCRATCH][3];
    double *dh;                 /* dE/dh per position, [3 * blocks_per_stage] */
    void *arena;
    resnet_infer *infer; /* the inference pass, batch norms folded */
    bool have_train_forward;
    int last_reorders;
    profiler prof;
};

/* ------------------------------------------------------------------------ */
/* configuration */

void mfres_model_config_default(mfres_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->depth = 20;
    cfg->block = MFRES_BLOCK_POSTACT;
    cfg->mode = MFRES_MODE_MEANFIELD;
    cfg->tau_init = MFRES_TAU_UNIT;
    cfg->in_c = 1, cfg->in_h = 28, cfg->in_w = 28;
    cfg->num_classes = 10;
    cfg->batch = 128;
    cfg->base_width = 16;
    cfg->bn_momentum = 0.1f;
    cfg->bn_eps = 1e-5f;
}

int mfres_model_config_check(const mfres_model_config *cfg) {
    if (cfg->depth < 8 || (cfg->depth - 2) % 6 != 0 || cfg->depth > 1202)
        return mfres_fail(MFRES_EINVAL, "depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got %d",
                          cfg->depth);
    if (cfg->in_c < 1 || cfg->in_h < 4 || cfg->in_w < 4 || cfg->in_h % 4 || cfg->in_w % 4)
        return mfres_fail(MFRES_EINVAL, "input must be CxHxW with H, W divisible by 4, got %dx%dx%d", cfg->in_c,
                          cfg->in_h, cfg->in_w);
    if (cfg->num_classes < 2) return mfres_fail(MFRES_EINVAL, "need at least 2 classes, got %d", cfg->num_classes);
    if (cfg->batch < 1) return mfres_fail(MFRES_EINVAL, "batch must be >= 1, got %d", cfg->batch);
    if (cfg->base_width < 16 || cfg->base_width % 16)
        return mfres_fail(MFRES_EINVAL, "base width must be a multiple of 16, got %d", cfg->base_width);
    return MFRES_OK;
}

const char *mfres_block_name(mfres_block_type b) { return b == MFRES_BLOCK_PREACT ? "preact" : "postact"; }
const char *mfres_mode_name(mfres_mode m) { return m == MFRES_MODE_MEANFIELD ? "meanfield" : "vanilla"; }
const char *mfres_tau_init_name(mfres_tau_init t) { return t == MFRES_TAU_GRID ? "grid" : "unit"; }

/* ------------------------------------------------------------------------ */
/* shapes and the position -> block map */

block_shape resnet_block_shape(const mfres_model *m, int stage, int index) {
    block_shape s;
    int w = m->cfg.base_width;
    s.downsample = stage > 0 && index == 0;
    s.stride = s.downsample ? 2 : 1;
    s.c_out = w << stage;
    s.c_in = s.downsample ? s.c_out / 2 : s.c_out;
    s.h_out = m->cfg.in_h >> stage;
    s.w_out = m->cfg.in_w >> stage;
    s.h_in = s.downsample ? s.h_out * 2 : s.h_out;
    s.w_in = s.downsample ? s.w_out * 2 : s.w_out;
    return s;
}

int resnet_block_at(const mfres_model *m, int stage, int index) {
    if (index == 0 || m->cfg.mode == MFRES_MODE_VANILLA) return index;
    return 1 + m->order[stage * m->particles + index - 1];
}

float resnet_step_at(const mfres_model *m, int stage, int index) {
    if (index == 0 || m->cfg.mode == MFRES_MODE_VANILLA) return 1.0f;
    return m->h[stage * m->particles + index - 1];
}

const net_params *resnet_net_params(const mfres_model *m) { return &m->impl->net; }

/* ------------------------------------------------------------------------ */
/* the tensor table */

enum tensor_kind { KIND_PARAM, KIND_BUFFER, KIND_TAU };

typedef struct table_builder {
    mfres_model *m;
    bool assign;    /* second pass: pointers are set */
    int count;
    size_t off[3];  /* running sizes per kind */
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

static void add_bn(table_builder *tb, const char *prefix, int C, mfres_tensor **w, mfres_tensor **b,
                   mfres_tensor **rm, mfres_tensor **rv) {
    char name[64];
    snprintf(name, sizeof name, "%s.weight", prefix);
    *w = add_tensor(tb, KIND_PARAM, name, 1, C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    *b = add_tensor(tb, KIND_PARAM, name, 1, C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_mean", prefix);
    *rm = add_tensor(tb, KIND_BUFFER, name, 1, C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_var", prefix);
    *rv = add_tensor(tb, KIND_BUFFER, name, 1, C, 0, 0, 0);
}

/* Declares every tensor in state_dict order. Run twice: count, then assign. */
static void build_table(table_builder *tb, net_params *net) {
    mfres_model *m = tb->m;
    const mfres_model_config *c = &m->cfg;
    int w = c->base_width, n = m->blocks_per_stage;
    bool pre = c->block == MFRES_BLOCK_PREACT;
    char prefix[48], name[64];
    net->stem_w = add_tensor(tb, KIND_PARAM, "conv1.weight", 4, w, c->in_c, 3, 3);
    if (!pre) add_bn(tb, "bn1", w, &net->stem_bn_w, &net->stem_bn_b, &net->stem_bn_rm, &net->stem_bn_rv);
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            block_shape sh = resnet_block_shape(m, s, j);
            block_params *bp = tb->assign ? &net->blocks[s * n + j] : &(block_params){0};
            snprintf(prefix, sizeof prefix, "layer%d.%d", s + 1, j);
            snprintf(name, sizeof name, "%s.conv1.weight", prefix);
            bp->conv1_w = add_tensor(tb, KIND_PARAM, name, 4, sh.c_out, sh.c_in, 3, 3);
            snprintf(name, sizeof name, "%s.bn1", prefix);
            add_bn(tb, name, pre ? sh.c_in : sh.c_out, &bp->bn1_w, &bp->bn1_b, &bp->bn1_rm, &bp->bn1_rv);
            snprintf(name, sizeof name, "%s.conv2.weight", prefix);
            bp->conv2_w = add_tensor(tb, KIND_PARAM, name, 4, sh.c_out, sh.c_out, 3, 3);
            snprintf(name, sizeof name, "%s.bn2", prefix);
            add_bn(tb, name, sh.c_out, &bp->bn2_w, &bp->bn2_b, &bp->bn2_rm, &bp->bn2_rv);
        }
    if (pre) add_bn(tb, "bn_final", 4 * w, &net->final_bn_w, &net->final_bn_b, &net->final_bn_rm, &net->final_bn_rv);
    net->fc_w = add_tensor(tb, KIND_PARAM, "fc.weight", 2, c->num_classes, 4 * w, 0, 0);
    net->fc_b = add_tensor(tb, KIND_PARAM, "fc.bias", 1, c->num_classes, 0, 0, 0);
    if (c->mode == MFRES_MODE_MEANFIELD)
        for (int s = 0; s < 3; s++)
            for (int j = 1; j < n; j++) {
                snprintf(name, sizeof name, "layer%d.%d.tau", s + 1, j);
                add_tensor(tb, KIND_TAU, name, 1, 1, 0, 0, 0);
            }
}

/* ------------------------------------------------------------------------ */
/* the activation arena: laid out in a counting pass, then carved */

typedef struct arena {
    char *base; /* NULL in the counting pass */
    size_t used;
} arena;

static void *take(arena *a, size_t bytes) {
    void *p = a->base ? a->base + a->used : NULL;
    a->used += (bytes + 63) & ~(size_t)63;
    return p;
}

static size_t floats(int n, int c, int h, int w) { return (size_t)n * c * h * w * sizeof(float); }

static void layout_arena(mfres_model *m, arena *a) {
    struct resnet_impl *r = m->impl;
    const mfres_model_config *c = &m->cfg;
    int N = c->batch, w = c->base_width;
    bool pre = c->block == MFRES_BLOCK_PREACT;
    r->stem_t.data = take(a, floats(N, w, c->in_h, c->in_w));
    if (!pre) {
        r->stem_a.data = take(a, floats(N, w, c->in_h, c->in_w));
        r->stem_stats = take(a, 2 * w * sizeof(float));
        r->stem_ws = take(a, r->stem_bn.workspace_bytes);
    }
    for (int p = 0; p < r->n_pos; p++) {
        block_pos *b = &r->pos[p];
        block_shape s = b->shape;
        size_t out_bytes = floats(N, s.c_out, s.h_out, s.w_out);
        if (pre) b->a0.data = take(a, floats(N, s.c_in, s.h_in, s.w_in));
        b->t1.data = take(a, out_bytes);
        b->a1.data = take(a, out_bytes);
        b->t2.data = take(a, out_bytes);
        b->out.data = take(a, out_bytes);
        if (!pre) b->out_mask = take(a, out_bytes / sizeof(float));
        b->bn1_stats = take(a, 2 * (pre ? s.c_in : s.c_out) * sizeof(float));
        b->bn2_stats = take(a, 2 * s.c_out * sizeof(float));
        b->bn2_scaled = take(a, 2 * s.c_out * sizeof(float));
        b->bn1_ws = take(a, b->bn1.workspace_bytes);
        b->bn2_ws = take(a, b->bn2.workspace_bytes);
    }
    int hf = c->in_h / 4, wf = c->in_w / 4;
    if (pre) {
        r->final_a.data = take(a, floats(N, 4 * w, hf, wf));
        r->final_stats = take(a, 2 * 4 * w * sizeof(float));
        r->final_ws = take(a, r->final_bn.workspace_bytes);
    }
    r->pooled = take(a, (size_t)N * 4 * w * sizeof(float));
    r->dpooled = take(a, (size_t)N * 4 * w * sizeof(float));
    r->logits = take(a, (size_t)N * c->num_classes * sizeof(float));
    r->probs = take(a, (size_t)N * c->num_classes * sizeof(float));
    r->dlogits = take(a, (size_t)N * c->num_classes * sizeof(float));
    r->labels = take(a, (size_t)N * sizeof(int));
    /* The largest activation is a stage-1 map; every gradient fits in it. */
    for (int k = 0; k < N_SCRATCH; k++) r->scratch[k] = take(a, floats(N, w, c->in_h, c->in_w));
    r->dh = take(a, (size_t)3 * m->blocks_per_stage * sizeof(double));
}

/* ------------------------------------------------------------------------ */
/* build */

static int wrap(act *x, const nn_ctx *ctx, dnnl_memory_desc_t md) { return nn_memory_wrap(&x->mem, ctx, &md, x->data); }

static double conv_flops(int C, int K, int OH, int OW) { return 2.0 * K * C * 9 * OH * OW; }

static void print_layer(FILE *out, const char *name, int c, int h, int w, size_t params, double flops) {
    char shape[32];
    snprintf(shape, sizeof shape, "%dx%dx%d", c, h, w);
    fprintf(out, "  %-18s %-14s %10zu %10.2f\n", name, shape, params, flops / 1e6);
}

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
    memset(m, 0, sizeof *m);
    int rc = mfres_model_config_check(cfg);
    if (rc) return rc;
    m->cfg = *cfg;
    m->blocks_per_stage = (cfg->depth - 2) / 6;
    m->particles = m->blocks_per_stage - 1;
    m->impl = mfres_alloc(sizeof *m->impl, "model");
    if (!m->impl) return MFRES_ENOMEM;
    struct resnet_impl *r = m->impl;
    bool pre = cfg->block == MFRES_BLOCK_PREACT;
    int N = cfg->batch, w = cfg->base_width, n = m->blocks_per_stage;

    /* Tensor table: count, allocate the buffers, assign. */
    table_builder tb = {.m = m};
    net_params counting = {0};
    build_table(&tb, &counting);
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
    r->net.blocks = mfres_alloc(sizeof(block_params) * 3 * n, "block table");
    if (!m->tensors || !m->params || !m->grads || !m->buffers || !m->tau || !m->tau_grad || !m->order || !m->h ||
        !r->net.blocks) {
        mfres_model_free(m);
        return MFRES_ENOMEM;
    }
    tb = (table_builder){.m = m, .assign = true};
    build_table(&tb, &r->net);
    init_weights(m, seed);

    /* Layers: primitives are created once here, for this batch size. */
    if ((rc = nn_ctx_init(&r->ctx))) goto fail;
    nn_ctx *ctx = &r->ctx;
    dnnl_memory_desc_t md_in = nn_md_nchw(N, cfg->in_c, cfg->in_h, cfg->in_w);
    dnnl_memory_desc_t md_stage[3];
    for (int s = 0; s < 3; s++) md_stage[s] = nn_md_blocked(ctx, N, w << s, cfg->in_h >> s, cfg->in_w >> s);
    if ((rc = nn_conv2d_init(&r->stem_conv, ctx, N, cfg->in_c, cfg->in_h, cfg->in_w, w, 3, 3, 1, 1, &md_in,
                             &md_stage[0], false)))
        goto fail;
    m->forward_flops = conv_flops(cfg->in_c, w, cfg->in_h, cfg->in_w);
    if (!pre && (rc = nn_batchnorm_init(&r->stem_bn, ctx, N, w, cfg->in_h, cfg->in_w, true, cfg->bn_eps, &md_stage[0])))
        goto fail;
    r->n_pos = 3 * n;
    r->pos = mfres_alloc(sizeof(block_pos) * r->n_pos, "block positions");
    if (!r->pos) {
        rc = MFRES_ENOMEM;
        goto fail;
    }
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            block_pos *b = &r->pos[s * n + j];
            b->stage = s, b->index = j;
            b->shape = resnet_block_shape(m, s, j);
            block_shape sh = b->shape;
            const dnnl_memory_desc_t *md_inp = &md_stage[sh.downsample ? s - 1 : s], *md_out = &md_stage[s];
            if ((rc = nn_conv2d_init(&b->conv1, ctx, N, sh.c_in, sh.h_in, sh.w_in, sh.c_out, 3, 3, sh.stride, 1,
                                     md_inp, md_out, true)) ||
                (rc = nn_conv2d_init(&b->conv2, ctx, N, sh.c_out, sh.h_out, sh.w_out, sh.c_out, 3, 3, 1, 1, md_out,
                                     md_out, true)))
                goto fail;
            if (pre)
                rc = nn_batchnorm_init(&b->bn1, ctx, N, sh.c_in, sh.h_in, sh.w_in, true, cfg->bn_eps, md_inp);
            else
                rc = nn_batchnorm_init(&b->bn1, ctx, N, sh.c_out, sh.h_out, sh.w_out, true, cfg->bn_eps, md_out);
            if (rc || (rc = nn_batchnorm_init(&b->bn2, ctx, N, sh.c_out, sh.h_out, sh.w_out, pre, cfg->bn_eps, md_out)))
                goto fail;
            m->forward_flops += conv_flops(sh.c_in, sh.c_out, sh.h_out, sh.w_out) +
                                conv_flops(sh.c_out, sh.c_out, sh.h_out, sh.w_out);
        }
    if (pre && (rc = nn_batchnorm_init(&r->final_bn, ctx, N, 4 * w, cfg->in_h / 4, cfg->in_w / 4, true, cfg->bn_eps,
                                       &md_stage[2])))
        goto fail;
    m->forward_flops += 2.0 * 4 * w * cfg->num_classes;

    /* Activations: one arena. */
    arena count = {0};
    layout_arena(m, &count);
    r->arena = mfres_alloc(count.used, "activations");
    if (!r->arena) {
        rc = MFRES_ENOMEM;
        goto fail;
    }
    m->activation_bytes = count.used;
    arena carve = {.base = r->arena};
    layout_arena(m, &carve);

    if ((rc = nn_memory_wrap(&r->x_in.mem, ctx, &md_in, NULL)) || (rc = wrap(&r->stem_t, ctx, md_stage[0])) ||
        (!pre && (rc = wrap(&r->stem_a, ctx, md_stage[0]))) || (pre && (rc = wrap(&r->final_a, ctx, md_stage[2]))))
        goto fail;
    for (int p = 0; p < r->n_pos; p++) {
        block_pos *b = &r->pos[p];
        dnnl_memory_desc_t md_inp = md_stage[b->shape.downsample ? b->stage - 1 : b->stage], md_out = md_stage[b->stage];
        if ((pre && (rc = wrap(&b->a0, ctx, md_inp))) || (rc = wrap(&b->t1, ctx, md_out)) ||
            (rc = wrap(&b->a1, ctx, md_out)) || (rc = wrap(&b->t2, ctx, md_out)) ||
            (rc = wrap(&b->out, ctx, md_out)))
            goto fail;
    }
    for (int k = 0; k < N_SCRATCH; k++)
        for (int s = 0; s < 3; s++)
            if ((rc = nn_memory_wrap(&r->scratch_mem[k][s], ctx, &md_stage[s], r->scratch[k]))) goto fail;
    if ((rc = resnet_infer_create(&r->infer, m, ctx))) goto fail;
    return MFRES_OK;
fail:
    mfres_model_free(m);
    return rc;
}

static void destroy_act(act *x) {
    if (x->mem) dnnl_memory_destroy(x->mem);
    x->mem = NULL;
}

void mfres_model_free(mfres_model *m) {
    struct resnet_impl *r = m->impl;
    if (r) {
        for (int p = 0; r->pos && p < r->n_pos; p++) {
            block_pos *b = &r->pos[p];
            nn_conv2d_free(&b->conv1);
            nn_conv2d_free(&b->conv2);
            nn_batchnorm_free(&b->bn1);
            nn_batchnorm_free(&b->bn2);
            act *acts[] = {&b->a0, &b->t1, &b->a1, &b->t2, &b->out};
            for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) destroy_act(acts[i]);
        }
        nn_conv2d_free(&r->stem_conv);
        nn_batchnorm_free(&r->stem_bn);
        nn_batchnorm_free(&r->final_bn);
        act *acts[] = {&r->x_in, &r->stem_t, &r->stem_a, &r->final_a};
        for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) destroy_act(acts[i]);
        for (int k = 0; k < N_SCRATCH; k++)
            for (int s = 0; s < 3; s++)
                if (r->scratch_mem[k][s]) dnnl_memory_destroy(r->scratch_mem[k][s]);
        resnet_infer_free(r->infer);
        nn_ctx_free(&r->ctx);
        mfres_free(r->pos);
        mfres_free(r->arena);
        mfres_free(r->net.blocks);
        mfres_free(r);
    }
    mfres_free(m->tensors);
    mfres_free(m->params);
    mfres_free(m->grads);
    mfres_free(m->buffers);
    mfres_free(m->tau);
    mfres_free(m->tau_grad);
    mfres_free(m->order);
    mfres_free(m->h);
    memset(m, 0, sizeof *m);
}

mfres_tensor *mfres_model_find(mfres_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* mean-field ordering */

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
    if (m->impl) m->impl->last_reorders = changed;
}

int mfres_model_last_reorders(const mfres_model *m) { return m->impl->last_reorders; }

/* ------------------------------------------------------------------------ */
/* forward */

void mfres_model_set_sync_bn(mfres_model *m, int (*allreduce_sum)(double *x, size_t n, void *arg), void *arg,
                             int ranks) {
    m->impl->ctx.bn_sync = (nn_bn_sync){.allreduce_sum = allreduce_sum, .arg = arg, .ranks = ranks};
}

static block_params *block_params_at(const mfres_model *m, const block_pos *b) {
    return &m->impl->net.blocks[b->stage * m->blocks_per_stage + resnet_block_at(m, b->stage, b->index)];
}

static void bind_block(mfres_model *m, block_pos *b) {
    block_params *bp = block_params_at(m, b);
    int c1 = (int)bp->bn1_w->numel, c2 = (int)bp->bn2_w->numel;
    nn_conv2d_bind(&b->conv1, bp->conv1_w->data, bp->conv1_w->grad);
    nn_conv2d_bind(&b->conv2, bp->conv2_w->data, bp->conv2_w->grad);
    nn_batchnorm_bind(&b->bn1, bp->bn1_w->data, bp->bn1_b->data, bp->bn1_w->grad, bp->bn1_b->grad, bp->bn1_rm->data,
                      bp->bn1_rv->data, b->bn1_stats, b->bn1_stats + c1, b->bn1_ws);
    nn_batchnorm_bind(&b->bn2, bp->bn2_w->data, bp->bn2_b->data, bp->bn2_w->grad, bp->bn2_b->grad, bp->bn2_rm->data,
                      bp->bn2_rv->data, b->bn2_stats, b->bn2_stats + c2, b->bn2_ws);
}

static int bn_forward(nn_batchnorm *bn, const nn_ctx *ctx, act *out, const act *in, float momentum) {
    return nn_batchnorm_forward_train(bn, ctx, out->mem, in->mem, momentum);
}

/* ---- profiling (mfres bench --profile): each kernel call timed when on ---- */
#define STEP(kind, stage, flops, call) PROFILE_CALL(kind, stage, NULL, flops, call)
#define STEP_CONV(kind, stage, conv, pass, call) PROFILE_CALL(kind, stage, (conv)->impl[pass], conv_layer_flops(conv), call)
#define STEP_VOID(kind, stage, flops, call) PROFILE_VOID(kind, stage, flops, call)

static double conv_layer_flops(const nn_conv2d *c) {
    return 2.0 * c->N * c->K * c->C * c->R * c->S * c->OH * c->OW;
}

static int block_forward(mfres_model *m, block_pos *b, const act *x) {
    struct resnet_impl *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    block_shape s = b->shape;
    float h = resnet_step_at(m, b->stage, b->index), mom = m->cfg.bn_momentum;
    size_t n_out = (size_t)m->cfg.batch * s.c_out * s.h_out * s.w_out;
    int st = b->stage;
    const float *shortcut = x->data;
    if (s.downsample) {
        /* The option-A shortcut is computed into b->out's buffer, then overwritten in place by the sum. */
        STEP_VOID("shortcut A", st, 0,
                  nn_shortcut_a_forward(b->out.data, x->data, m->cfg.batch, s.c_in, s.h_in, s.w_in, ctx->block, ctx->block));
        shortcut = b->out.data;
    }
    if (m->cfg.block == MFRES_BLOCK_PREACT) {
        STEP("batch norm+relu fwd", st, 0, bn_forward(&b->bn1, ctx, &b->a0, x, mom));
        STEP_CONV("conv fwd", st, &b->conv1, NN_CONV_FORWARD, nn_conv2d_forward(&b->conv1, ctx, b->t1.mem, b->a0.mem));
        STEP("batch norm+relu fwd", st, 0, bn_forward(&b->bn2, ctx, &b->a1, &b->t1, mom));
        STEP_CONV("conv fwd", st, &b->conv2, NN_CONV_FORWARD, nn_conv2d_forward(&b->conv2, ctx, b->t2.mem, b->a1.mem));
        STEP_VOID("residual add", st, 0, nn_residual_forward(b->out.data, shortcut, b->t2.data, h, n_out));
    } else {
        /* The step h is folded into BN2's affine parameters: h*BN2(t2) comes out of the batch norm itself. */
        const block_params *bp = block_params_at(m, b);
        int C = s.c_out;
        for (int c = 0; c < C; c++) b->bn2_scaled[c] = h * bp->bn2_w->data[c], b->bn2_scaled[C + c] = h * bp->bn2_b->data[c];
        nn_batchnorm_bind_affine(&b->bn2, b->bn2_scaled, b->bn2_scaled + C);
        STEP_CONV("conv fwd", st, &b->conv1, NN_CONV_FORWARD, nn_conv2d_forward(&b->conv1, ctx, b->t1.mem, x->mem));
        STEP("batch norm+relu fwd", st, 0, bn_forward(&b->bn1, ctx, &b->a1, &b->t1, mom));
        STEP_CONV("conv fwd", st, &b->conv2, NN_CONV_FORWARD, nn_conv2d_forward(&b->conv2, ctx, b->t2.mem, b->a1.mem));
        /* BN2, the shortcut add and the ReLU in two passes over t2 (src/nn/bn_residual.c). */
        int HW = s.h_out * s.w_out;
        float *mean = b->bn2_stats, *var = b->bn2_stats + C;
        STEP("batch norm statistics", st, 0, nn_batchnorm_train_statistics(&b->bn2, ctx, b->t2.data, mom));
        STEP_VOID("batch norm+residual add+relu", st, 0,
                  nn_bn_residual_relu_forward(b->out.data, b->out_mask, shortcut, b->t2.data, mean, var, b->bn2_scaled,
                                              b->bn2_scaled + C, m->cfg.bn_eps, m->cfg.batch, C, HW, ctx->block));
    }
    return MFRES_OK;
}

/* Softmax cross-entropy of r->logits against labels; the tail of both passes. */
static int finish_loss(mfres_model *m, const int32_t *labels, double *loss, int *correct) {
    struct resnet_impl *r = m->impl;
    int N = m->cfg.batch, hits, valid;
    double loss_sum;
    for (int i = 0; i < N; i++) r->labels[i] = labels[i];
    nn_softmax_xent_forward(r->probs, &loss_sum, &hits, &valid, r->logits, r->labels, N, m->cfg.num_classes);
    *loss = valid ? loss_sum / valid : 0.0;
    if (correct) *correct = hits;
    if (!isfinite(*loss)) return mfres_fail(MFRES_ENUMERIC, "the loss is %g", *loss);
    return MFRES_OK;
}

int mfres_model_forward(mfres_model *m, const float *images, const int32_t *labels, bool train, double *loss,
                        int *correct) {
    struct resnet_impl *r = m->impl;
    profiler *prof = &r->prof;
    r->have_train_forward = false;
    if (!train) {
        int rc = resnet_infer_forward(r->infer, m, images, r->logits, prof);
        return rc ? rc : finish_loss(m, labels, loss, correct);
    }
    const nn_ctx *ctx = &r->ctx;
    const mfres_model_config *c = &m->cfg;
    net_params *net = &r->net;
    bool pre = c->block == MFRES_BLOCK_PREACT;
    int N = c->batch, w = c->base_width;
    float mom = c->bn_momentum;

    /* Point every layer at the parameters of the block that runs there, and
     * refresh the blocked weight copies: once per step. */
    double t0 = profile_start(prof);
    nn_conv2d_bind(&r->stem_conv, net->stem_w->data, net->stem_w->grad);
    int rc = nn_conv2d_prepare(&r->stem_conv, ctx);
    if (rc) return rc;
    if (!pre)
        nn_batchnorm_bind(&r->stem_bn, net->stem_bn_w->data, net->stem_bn_b->data, net->stem_bn_w->grad,
                          net->stem_bn_b->grad, net->stem_bn_rm->data, net->stem_bn_rv->data, r->stem_stats,
                          r->stem_stats + w, r->stem_ws);
    else
        nn_batchnorm_bind(&r->final_bn, net->final_bn_w->data, net->final_bn_b->data, net->final_bn_w->grad,
                          net->final_bn_b->grad, net->final_bn_rm->data, net->final_bn_rv->data, r->final_stats,
                          r->final_stats + 4 * w, r->final_ws);
    for (int p = 0; p < r->n_pos; p++) {
        bind_block(m, &r->pos[p]);
        if ((rc = nn_conv2d_prepare(&r->pos[p].conv1, ctx)) || (rc = nn_conv2d_prepare(&r->pos[p].conv2, ctx)))
            return rc;
    }
    profile_stop(prof, "weight reorders", -1, NULL, t0, 0);

    dnnl_memory_set_data_handle(r->x_in.mem, (void *)images);
    STEP_CONV("conv fwd (stem)", -1, &r->stem_conv, NN_CONV_FORWARD,
         nn_conv2d_forward(&r->stem_conv, ctx, r->stem_t.mem, r->x_in.mem));
    const act *x = &r->stem_t;
    if (!pre) {
        STEP("batch norm+relu fwd (stem)", -1, 0, bn_forward(&r->stem_bn, ctx, &r->stem_a, &r->stem_t, mom));
        x = &r->stem_a;
    }
    for (int p = 0; p < r->n_pos; p++) {
        if ((rc = block_forward(m, &r->pos[p], x))) return rc;
        x = &r->pos[p].out;
    }
    if (pre) {
        STEP("batch norm+relu fwd (final)", -1, 0, bn_forward(&r->final_bn, ctx, &r->final_a, x, mom));
        x = &r->final_a;
    }
    int C = 4 * w, HW = (c->in_h / 4) * (c->in_w / 4);
    t0 = profile_start(prof);
    nn_avgpool_forward(r->pooled, x->data, N, C, HW, ctx->block);
    nn_linear_forward(r->logits, r->pooled, net->fc_w->data, net->fc_b->data, N, C, c->num_classes);
    rc = finish_loss(m, labels, loss, correct);
    profile_stop(prof, "pool+fc+loss fwd", -1, NULL, t0, 0);
    r->have_train_forward = rc == MFRES_OK;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* backward */

/* The three scratch buffers that are not `g`. */
static void others(int g, int *a, int *b, int *c) {
    int k = 0, o[3];
    for (int i = 0; i < N_SCRATCH; i++)
        if (i != g) o[k++] = i;
    *a = o[0], *b = o[1], *c = o[2];
}

/* On entry scratch[*g] holds dE/d(out); on exit scratch[*g] holds dE/d(x). */
static int block_backward(mfres_model *m, block_pos *b, const act *x, int *g) {
    struct resnet_impl *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    block_shape s = b->shape;
    int si = s.downsample ? b->stage - 1 : b->stage, so = b->stage, st = b->stage, s1, s2, spare;
    others(*g, &s1, &s2, &spare);
    float h = resnet_step_at(m, b->stage, b->index);
    size_t n_out = (size_t)m->cfg.batch * s.c_out * s.h_out * s.w_out;
    size_t n_in = (size_t)m->cfg.batch * s.c_in * s.h_in * s.w_in;
    float *G = r->scratch[*g];
    double *dh = &r->dh[b->stage * m->blocks_per_stage + b->index];
    dnnl_memory_t(*S)[3] = r->scratch_mem;
    const block_params *bp = block_params_at(m, b);
    if (m->cfg.block == MFRES_BLOCK_PREACT) {
        /* out = x + h*conv2(...). The branch is run backward on the unscaled
         * gradient G (no pass over the activations to form h*G); everything it
         * yields is then h times too small, fixed below on the (small)
         * parameter gradients and in the final add. dE/dh = <G, conv2(a1)> is
         * <W2, dW2> for the unscaled dW2, because conv2 is linear in W2. */
        STEP_CONV("conv bwd weights", st, &b->conv2, NN_CONV_BACKWARD_WEIGHTS, nn_conv2d_backward_weights(&b->conv2, ctx, b->a1.mem, S[*g][so]));
        STEP_CONV("conv bwd data", st, &b->conv2, NN_CONV_BACKWARD_DATA, nn_conv2d_backward_data(&b->conv2, ctx, S[s2][so], S[*g][so]));
        STEP("batch norm+relu bwd", st, 0, nn_batchnorm_backward(&b->bn2, ctx, S[s1][so], S[s2][so], b->t1.mem));
        STEP_CONV("conv bwd weights", st, &b->conv1, NN_CONV_BACKWARD_WEIGHTS, nn_conv2d_backward_weights(&b->conv1, ctx, b->a0.mem, S[s1][so]));
        STEP_CONV("conv bwd data", st, &b->conv1, NN_CONV_BACKWARD_DATA, nn_conv2d_backward_data(&b->conv1, ctx, S[s2][si], S[s1][so]));
        STEP("batch norm+relu bwd", st, 0, nn_batchnorm_backward(&b->bn1, ctx, S[s1][si], S[s2][si], x->mem));
        double a = 0;
        const float *w2 = bp->conv2_w->data, *dw2 = bp->conv2_w->grad;
        for (size_t i = 0; i < bp->conv2_w->numel; i++) a += (double)w2[i] * dw2[i];
        *dh = a;
        if (h != 1.0f) {
            /* The block's trainable tensors are contiguous in the gradient buffer: conv1 ... bn2.bias. */
            float *first = bp->conv1_w->grad, *last = bp->bn2_b->grad + bp->bn2_b->numel;
            for (float *p = first; p < last; p++) *p *= h;
            float *branch = r->scratch[s1];
            STEP_VOID("branch gradient *h", st, 0, nn_scale_inplace(branch, h, n_in));
        }
    } else {
        /* out = relu(x + BN2'(t2)) with BN2' = h*BN2 (scale h*gamma, shift h*beta).
         * BN2's backward then gives d/d(h*gamma) and d/d(h*beta); from those
         * dE/dh = sum_c gamma_c dE/d(h gamma_c) + beta_c dE/d(h beta_c), and the
         * true parameter gradients are h times them. No pass over the branch. */
        STEP_VOID("relu bwd (block output)", st, 0, nn_relu_backward_inplace(G, b->out_mask, n_out));
        STEP("batch norm bwd", st, 0, nn_batchnorm_backward(&b->bn2, ctx, S[s2][so], S[*g][so], b->t2.mem));
        float *dgamma = bp->bn2_w->grad, *dbeta = bp->bn2_b->grad;
        const float *gamma = bp->bn2_w->data, *beta = bp->bn2_b->data;
        double a = 0;
        for (int c = 0; c < s.c_out; c++) {
            a += (double)gamma[c] * dgamma[c] + (double)beta[c] * dbeta[c];
            dgamma[c] *= h, dbeta[c] *= h;
        }
        *dh = a;
        STEP_CONV("conv bwd weights", st, &b->conv2, NN_CONV_BACKWARD_WEIGHTS, nn_conv2d_backward_weights(&b->conv2, ctx, b->a1.mem, S[s2][so]));
        STEP_CONV("conv bwd data", st, &b->conv2, NN_CONV_BACKWARD_DATA, nn_conv2d_backward_data(&b->conv2, ctx, S[s1][so], S[s2][so]));
        STEP("batch norm+relu bwd", st, 0, nn_batchnorm_backward(&b->bn1, ctx, S[s2][so], S[s1][so], b->t1.mem));
        STEP_CONV("conv bwd weights", st, &b->conv1, NN_CONV_BACKWARD_WEIGHTS, nn_conv2d_backward_weights(&b->conv1, ctx, x->mem, S[s2][so]));
        STEP_CONV("conv bwd data", st, &b->conv1, NN_CONV_BACKWARD_DATA, nn_conv2d_backward_data(&b->conv1, ctx, S[s1][si], S[s2][so]));
    }
    /* dE/dx = branch path (in s1) + shortcut path (the residual gradient in G). */
    if (s.downsample) {
        STEP_VOID("shortcut A bwd", st, 0,
                  nn_shortcut_a_backward_add(r->scratch[s1], G, m->cfg.batch, s.c_in, s.h_in, s.w_in, ctx->block));
        *g = s1;
    } else {
        STEP_VOID("gradient add", st, 0, nn_add_inplace(G, r->scratch[s1], n_in));
    }
    return MFRES_OK;
}

int mfres_model_backward(mfres_model *m) {
    struct resnet_impl *r = m->impl;
    profiler *prof = &r->prof;
    const nn_ctx *ctx = &r->ctx;
    const mfres_model_config *c = &m->cfg;
    net_params *net = &r->net;
    bool pre = c->block == MFRES_BLOCK_PREACT;
    int N = c->batch, C = 4 * c->base_width, HW = (c->in_h / 4) * (c->in_w / 4), rc;
    if (!r->have_train_forward) return mfres_fail(MFRES_EINVAL, "backward needs a training forward pass first");

    int g = 0, s1, s2, spare;
    double t0 = profile_start(prof);
    nn_softmax_xent_backward(r->dlogits, r->probs, r->labels, N, c->num_classes);
    nn_linear_backward(r->dpooled, net->fc_w->grad, net->fc_b->grad, r->dlogits, r->pooled, net->fc_w->data, N, C,
                       c->num_classes);
    nn_avgpool_backward(r->scratch[g], r->dpooled, N, C, HW, ctx->block);
    profile_stop(prof, "pool+fc+loss bwd", -1, NULL, t0, 0);
    const act *last = &r->pos[r->n_pos - 1].out;
    if (pre) {
        others(g, &s1, &s2, &spare);
        STEP("batch norm+relu bwd (final)", -1, 0,
             nn_batchnorm_backward(&r->final_bn, ctx, r->scratch_mem[s1][2], r->scratch_mem[g][2], last->mem));
        g = s1;
    }
    for (int p = r->n_pos - 1; p >= 0; p--) {
        const act *x = p > 0 ? &r->pos[p - 1].out : (pre ? &r->stem_t : &r->stem_a);
        if ((rc = block_backward(m, &r->pos[p], x, &g))) return rc;
    }
    if (!pre) {
        others(g, &s1, &s2, &spare);
        STEP("batch norm+relu bwd (stem)", -1, 0,
             nn_batchnorm_backward(&r->stem_bn, ctx, r->scratch_mem[s1][0], r->scratch_mem[g][0], r->stem_t.mem));
        g = s1;
    }
    STEP_CONV("conv bwd weights (stem)", -1, &r->stem_conv, NN_CONV_BACKWARD_WEIGHTS,
         nn_conv2d_backward_weights(&r->stem_conv, ctx, r->x_in.mem, r->scratch_mem[g][0]));

    if (c->mode == MFRES_MODE_MEANFIELD) {
        int P = m->particles, n = m->blocks_per_stage;
        for (int s = 0; s < 3; s++)
            mf_tau_grad(m->tau_grad + s * P, m->order + s * P, r->dh + s * n + 1, P);
    }
    return MFRES_OK;
}

void mfres_model_set_profiling(mfres_model *m, bool on) {
    m->impl->prof.on = on;
    if (on) m->impl->prof.n = 0;
}

void mfres_model_print_profile(const mfres_model *m, FILE *out, long steps, double step_seconds, const char *whole) {
    profile_print(&m->impl->prof, out, steps, step_seconds, whole);
}

/* ------------------------------------------------------------------------ */
/* summary */

static void human_bytes(char *buf, size_t n, double bytes) {
    if (bytes >= 1 << 20)
        snprintf(buf, n, "%.1f MiB", bytes / (1 << 20));
    else
        snprintf(buf, n, "%.1f KiB", bytes / 1024);
}

void mfres_model_print_summary(const mfres_model *m, FILE *out) {
    const mfres_model_config *c = &m->cfg;
    const struct resnet_impl *r = m->impl;
    fprintf(out, "ResNet-%d (%s blocks, %s%s%s), input %dx%dx%d, %d classes, batch %d\n", c->depth,
            mfres_block_name(c->block), mfres_mode_name(c->mode),
            c->mode == MFRES_MODE_MEANFIELD ? ", tau-init " : "",
            c->mode == MFRES_MODE_MEANFIELD ? mfres_tau_init_name(c->tau_init) : "", c->in_c, c->in_h, c->in_w,
            c->num_classes, c->batch);
    fprintf(out, "  %-18s %-14s %10s %10s\n", "layer", "output", "params", "MFLOPs");
    int w = c->base_width;
    print_layer(out, "conv1", w, c->in_h, c->in_w, m->tensors[0].numel, conv_flops(c->in_c, w, c->in_h, c->in_w));
    for (int p = 0; p < r->n_pos; p++) {
        const block_pos *b = &r->pos[p];
        const block_params *bp = &r->net.blocks[p];
        char name[48];
        for (int k = 0; k < 2; k++) {
            const mfres_tensor *t = k ? bp->conv2_w : bp->conv1_w;
            snprintf(name, sizeof name, "layer%d.%d.conv%d", b->stage + 1, b->index, k + 1);
            print_layer(out, name, b->shape.c_out, b->shape.h_out, b->shape.w_out, t->numel + 2 * (size_t)b->shape.c_out,
                        conv_flops(k ? b->shape.c_out : b->shape.c_in, b->shape.c_out, b->shape.h_out, b->shape.w_out));
        }
    }
    fprintf(out, "  %-18s %-14d %10zu %10.3f\n", "fc", c->num_classes, (size_t)(4 * w + 1) * c->num_classes,
            2.0 * 4 * w * c->num_classes / 1e6);
    char a[32], b[32], d[32], e[32];
    human_bytes(a, sizeof a, m->n_params * 4.0);
    human_bytes(b, sizeof b, m->n_buffers * 4.0);
    human_bytes(d, sizeof d, (double)m->activation_bytes);
    human_bytes(e, sizeof e, m->n_params * 4.0);
    fprintf(out, "  total: %zu parameters, %.1f MFLOPs per image forward (training ~3x)\n", m->n_params,
            m->forward_flops / 1e6);
    fprintf(out, "  memory: parameters %s, gradients %s, running statistics %s, activations+scratch %s", a, e, b, d);
    if (m->n_tau) fprintf(out, ", tau %d values", m->n_tau);
    fputc('\n', out);
}
