/* Shared between the fast path (resnet.c) and the double-precision reference
 * path (resnet_ref.c): where each block's parameters are, and which particle
 * sits at which position. */
#ifndef MFRES_RESNET_INTERNAL_H
#define MFRES_RESNET_INTERNAL_H

#include "mfres/model.h"

/* One residual block's tensors. For a pre-activation block bn1 normalises the
 * block input (c_in channels); for a post-activation block it follows conv1. */
typedef struct block_params {
    mfres_tensor *conv1_w, *bn1_w, *bn1_b, *bn1_rm, *bn1_rv;
    mfres_tensor *conv2_w, *bn2_w, *bn2_b, *bn2_rm, *bn2_rv;
} block_params;

/* Stem (conv1, bn1), optional final BN (pre-activation), classifier. */
typedef struct net_params {
    mfres_tensor *stem_w, *stem_bn_w, *stem_bn_b, *stem_bn_rm, *stem_bn_rv; /* stem BN: post-activation only */
    mfres_tensor *final_bn_w, *final_bn_b, *final_bn_rm, *final_bn_rv;     /* pre-activation only */
    mfres_tensor *fc_w, *fc_b;
    block_params *blocks; /* [3 * blocks_per_stage], stage-major, by block index */
} net_params;

const net_params *resnet_net_params(const mfres_model *m);

/* Shape of the block at (stage, index). */
typedef struct block_shape {
    int c_in, c_out, h_in, w_in, h_out, w_out, stride;
    bool downsample; /* first block of stages 2 and 3: stride 2 and option-A shortcut */
} block_shape;
block_shape resnet_block_shape(const mfres_model *m, int stage, int index);

/* Which block's parameters run at position `index` of `stage` (the head at 0,
 * then the particles in tau order), and the step h of that position. */
int resnet_block_at(const mfres_model *m, int stage, int index);
float resnet_step_at(const mfres_model *m, int stage, int index);

#endif
