/* The architecture description: what a network is, independent of any backend.
 *
 * Every network of Table 1 is a stem, three stages of residual blocks and a
 * head. A block is a short chain of convolutions with a batch norm beside each,
 * in one of two forms:
 *   post-activation (He et al. 2016a, Xie et al. 2017):
 *       t_i = conv_i(a_{i-1}),  a_i = relu(BN_i(t_i)) for i < last, a_{-1} = x
 *       out = relu(shortcut(x) + h * BN_last(t_last))
 *   pre-activation (He et al. 2016b):
 *       a_i = relu(BN_i(t_{i-1})), t_i = conv_i(a_i),  t_{-1} = x
 *       out = shortcut(x) + h * t_last
 * and the kinds differ only in their chain and shortcut:
 *   basic       3x3, 3x3                                option A where the shape changes
 *   bottleneck  1x1 (w), 3x3 (w, stride), 1x1 (4w)      1x1 projection where the shape changes
 *   ResNeXt     1x1 (D), 3x3 grouped (D, stride), 1x1    1x1 projection + BN where the shape changes
 * h is 1 in vanilla mode and for every stage head; in mean-field mode the other
 * blocks of a stage are particles whose steps come from their sorted depth
 * positions tau (include/mfres/meanfield.h).
 *
 * This file knows nothing of oneDNN: it builds the tensor table (PyTorch
 * state_dict names and shapes, views into the model's one parameter buffer),
 * the shapes of every layer, FLOPs and parameter counts, and the summary.
 * The plans read it: the oneDNN training and inference plans (cpu_plan.h) and
 * the double-precision reference (ref_plan.c). */
#ifndef MFRES_ARCH_H
#define MFRES_ARCH_H

#include "mfres/model.h"

enum { ARCH_MAX_CONV = 3, ARCH_STAGES = 3 };

typedef enum { SHORTCUT_IDENTITY, SHORTCUT_OPTION_A, SHORTCUT_PROJECTION } arch_shortcut;

typedef struct arch_conv {
    int C, K, R, stride, pad, groups; /* R x R kernel */
    int H, W, OH, OW;                 /* input and output maps */
    mfres_tensor *w;                  /* [K, C/groups, R, R] */
} arch_conv;

typedef struct arch_bn {
    int C;
    mfres_tensor *w, *b, *rm, *rv; /* gamma, beta, running mean, running variance */
} arch_bn;

typedef struct arch_block {
    int stage, index;
    bool pre; /* pre-activation form */
    int c_in, c_out, h_in, w_in, h_out, w_out;
    int n_conv;
    arch_conv conv[ARCH_MAX_CONV];
    arch_bn bn[ARCH_MAX_CONV]; /* pre: bn[i] normalises conv[i]'s input; post: conv[i]'s output */
    arch_shortcut shortcut;
    arch_conv proj;     /* SHORTCUT_PROJECTION: 1x1 convolution of the block input */
    bool proj_bn;       /* ... followed by a batch norm (ResNeXt) */
    arch_bn proj_norm;
    /* The branch's trainable values are contiguous in the parameter buffer:
     * [branch_first, branch_end) (the pre-activation backward scales them by h). */
    size_t branch_first, branch_end;
} arch_block;

typedef struct mfres_arch {
    bool pre;
    int n; /* blocks per stage */
    arch_conv stem;
    bool stem_bn; /* post-activation networks: conv-BN-ReLU stem */
    arch_bn stem_norm;
    bool final_bn; /* pre-activation networks: BN-ReLU before the pool */
    arch_bn final_norm;
    int final_c, final_h, final_w;
    mfres_tensor *fc_w, *fc_b;
    arch_block *blocks; /* [3 * n], stage-major, by block index (parameters; not positions) */
    size_t max_map_floats; /* the largest activation of one image anywhere in the network */
} mfres_arch;

/* Checks the configuration, builds the description and the tensor table, and
 * allocates the model's parameter, gradient, statistics and tau buffers. */
int arch_create(mfres_model *m, const mfres_model_config *cfg);
void arch_free(mfres_model *m);

/* The shape of every position of a stage is that of its block with the same
 * index (all but the head of a stage share one shape). */
static inline const arch_block *arch_block_of(const mfres_model *m, int stage, int index) {
    return &m->arch->blocks[stage * m->blocks_per_stage + index];
}
/* Which block's parameters run at position `index` of `stage` (the head at 0,
 * then the particles in tau order), and the step h of that position. */
int arch_block_at(const mfres_model *m, int stage, int index);
float arch_step_at(const mfres_model *m, int stage, int index);
/* The block whose parameters run at a position. */
static inline const arch_block *arch_params_at(const mfres_model *m, int stage, int index) {
    return arch_block_of(m, stage, arch_block_at(m, stage, index));
}

double arch_conv_flops(const arch_conv *c); /* per image */

/* The backward passes of every plan rotate four gradient buffers of the
 * largest map's size: the one holding dE/d(out) and the three others. */
enum { ARCH_SCRATCH = 4 };
static inline void arch_scratch_others(int g, int *a, int *b, int *c) {
    int k = 0, o[3];
    for (int i = 0; i < ARCH_SCRATCH; i++)
        if (i != g) o[k++] = i;
    *a = o[0], *b = o[1], *c = o[2];
}

#endif
