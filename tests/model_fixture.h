/* A network of Table 1 at test size with a random batch, shared by the model
 * tests of the CPU (test_model.c) and the GPU (test_gpu_model.c): every block
 * kind, ResNeXt with cardinality 2 and 8 channels per group (bottleneck widths
 * 16/32/64), everything on base width 16, five classes, and batch-norm affine
 * parameters moved off their initial values so that their gradients are
 * exercised. */
#ifndef MFRES_MODEL_FIXTURE_H
#define MFRES_MODEL_FIXTURE_H

#include <stdlib.h>
#include <string.h>

#include "mfres/model.h"
#include "testutil.h"

typedef struct net_kind {
    const char *name;
    mfres_family family;
    mfres_block_type block;
} net_kind;
static const net_kind POSTACT = {"postact", MFRES_FAMILY_RESNET, MFRES_BLOCK_POSTACT};
static const net_kind PREACT = {"preact", MFRES_FAMILY_RESNET, MFRES_BLOCK_PREACT};
static const net_kind BOTTLENECK = {"bottleneck", MFRES_FAMILY_RESNET, MFRES_BLOCK_BOTTLENECK};
static const net_kind RESNEXT_POST = {"resnext postact", MFRES_FAMILY_RESNEXT, MFRES_BLOCK_POSTACT};
static const net_kind RESNEXT_PRE = {"resnext preact", MFRES_FAMILY_RESNEXT, MFRES_BLOCK_PREACT};

typedef struct fixture {
    mfres_model m;
    float *images;
    int32_t *labels;
} fixture;

static inline void make_fixture(fixture *f, int depth, net_kind kind, mfres_mode mode, mfres_tau_init tau_init,
                                int batch, int in_c, int hw, uint64_t seed) {
    mfres_model_config cfg;
    mfres_model_config_default(&cfg);
    cfg.family = kind.family, cfg.cardinality = 2, cfg.group_width = 8;
    cfg.depth = depth, cfg.block = kind.block, cfg.mode = mode, cfg.tau_init = tau_init;
    cfg.batch = batch, cfg.in_c = in_c, cfg.in_h = cfg.in_w = hw, cfg.num_classes = 5;
    ck_assert_ok(mfres_model_create(&f->m, &cfg, seed));
    size_t n = (size_t)batch * in_c * hw * hw;
    f->images = malloc(n * sizeof(float));
    f->labels = malloc(batch * sizeof(int32_t));
    mfres_rng rng;
    mfres_rng_seed(&rng, seed + 1000);
    for (size_t i = 0; i < n; i++) f->images[i] = (float)mfres_rng_normal(&rng);
    for (int i = 0; i < batch; i++) f->labels[i] = (int32_t)mfres_rng_below(&rng, 5);
    for (int t = 0; t < f->m.n_tensors; t++) {
        mfres_tensor *tt = &f->m.tensors[t];
        if (tt->ndim == 1 && !tt->is_tau && tt->grad && (strstr(tt->name, "bn") || strstr(tt->name, "downsample.1")))
            for (size_t k = 0; k < tt->numel; k++) tt->data[k] += (float)(0.2 * mfres_rng_normal(&rng));
    }
}

static inline void free_fixture(fixture *f) {
    mfres_model_free(&f->m);
    free(f->images);
    free(f->labels);
}

#endif
