/* CIFAR-style ResNets and ResNeXts (every network of Table 1 of Lu et al.,
 * ICML 2020), trained vanilla or with mean-field training (Algorithm 1):
 *   resnetN, basic blocks (postact | preact), depth 6n+2: ResNet-20 ... 110
 *   resnetN, pre-activation bottleneck blocks, depth 9n+2: ResNet-164
 *   resnext29-CxDd, bottleneck blocks with a grouped 3x3 convolution of
 *   cardinality C and width C*D (postact | preact), depth 9n+2: ResNeXt-29
 *
 * The model owns one parameter buffer, one gradient buffer, one buffer of
 * running statistics and one activation arena; every tensor is a named view
 * into them, named as PyTorch's state_dict would name it. The fast path runs
 * on oneDNN in float32; mfres_model_ref_* runs the same network with the
 * double-precision reference kernels, for tests. */
#ifndef MFRES_MODEL_H
#define MFRES_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mfres/device.h"

/* Append-only: the values are stored in no file (model files store the names). */
typedef enum { MFRES_BLOCK_POSTACT = 0, MFRES_BLOCK_PREACT = 1, MFRES_BLOCK_BOTTLENECK = 2 } mfres_block_type;
typedef enum { MFRES_FAMILY_RESNET = 0, MFRES_FAMILY_RESNEXT = 1 } mfres_family;
typedef enum { MFRES_MODE_VANILLA = 0, MFRES_MODE_MEANFIELD = 1 } mfres_mode;
typedef enum { MFRES_TAU_UNIT = 0, MFRES_TAU_GRID = 1 } mfres_tau_init;

typedef struct mfres_model_config {
    mfres_family family;
    int depth; /* basic blocks 6n+2: 8, 14, 20, 32, 44, 56, 110, ...; bottleneck and ResNeXt 9n+2: 29, 164, ... */
    mfres_block_type block; /* ResNeXt: postact or preact (its bottleneck is implied) */
    mfres_mode mode;
    mfres_tau_init tau_init;
    int in_c, in_h, in_w; /* input image shape; H and W divisible by 4 */
    int num_classes;
    int batch;      /* primitives and activations are sized for this batch */
    int base_width; /* basic: channels of stage 1 (16), doubled per stage; bottleneck: stem width and stage-1
                       bottleneck width (16, outputs 4x); ResNeXt: stem width (64, stage outputs 4x) */
    int cardinality, group_width; /* ResNeXt: groups C and channels per group d at stage 1 (8x64d) */
    float bn_momentum, bn_eps; /* PyTorch defaults 0.1, 1e-5 */
} mfres_model_config;

/* Fills in the defaults (ResNet-20, post-activation, mean-field, unit tau,
 * 1x28x28, 10 classes, batch 128, width 16). */
void mfres_model_config_default(mfres_model_config *cfg);
/* Sets family, depth, block and widths from a model name: "resnet20",
 * "resnet164" (the bottleneck when the depth is 9n+2 and not 6n+2 is left to
 * the caller's --block), "resnext29-8x64d", "resnext29-16x64d". */
int mfres_model_config_from_name(mfres_model_config *cfg, const char *name);
/* "ResNet-20", "ResNeXt-29 (8x64d)": for summaries and reports. */
void mfres_model_display_name(const mfres_model_config *cfg, char *buf, size_t cap);
/* Checks a configuration; on error the message names the field and valid values. */
int mfres_model_config_check(const mfres_model_config *cfg);
const char *mfres_block_name(mfres_block_type b);
const char *mfres_mode_name(mfres_mode m);
const char *mfres_tau_init_name(mfres_tau_init t);

typedef struct mfres_tensor {
    char name[64];     /* PyTorch state_dict name, e.g. "layer2.0.conv1.weight" */
    int ndim;
    int64_t shape[4];
    size_t numel;
    float *data;       /* into params, buffers or tau */
    float *grad;       /* into grads or tau_grad; NULL for running statistics */
    bool is_tau;       /* a block's depth position (no weight decay) */
} mfres_tensor;

struct mfres_arch;
struct cpu_plan;
struct gpu_plan;

typedef struct mfres_model {
    mfres_model_config cfg;
    int blocks_per_stage; /* n = (depth - 2) / 6 (basic) or / 9 (bottleneck) */
    int particles;        /* per stage: n - 1 (the stage head is fixed, step 1) */

    int n_tensors;
    mfres_tensor *tensors;

    size_t n_params; /* trainable theta: conv, BN affine, classifier */
    float *params, *grads;
    size_t n_buffers; /* BN running statistics */
    float *buffers;
    /* Mean-field state, 3 stages x particles: tau[s*P + i] is particle i's depth
     * position (particle i = block i+1 of stage s); order[s*P + l] is the
     * particle at position l after sorting by tau; h[s*P + l] its step. In
     * vanilla mode tau is absent (n_tau = 0) and every step is 1. */
    int n_tau;
    float *tau, *tau_grad;
    int *order;
    float *h;

    double forward_flops;  /* per image */
    size_t activation_bytes; /* the arena: activations, saved state, gradient scratch */
    struct mfres_arch *arch;  /* the architecture description (src/models/arch.h) */
    struct cpu_plan *impl;    /* the oneDNN training and inference plans (src/models/cpu_plan.h) */
    int last_reorders;        /* stages whose order the last sort changed */
    mfres_device device;      /* where forward and backward run (mfres_model_set_device) */
    mfres_precision precision;
    struct gpu_plan *gpu;     /* the CUDA plan when device is MFRES_DEVICE_CUDA (src/gpu/gpu.h) */
} mfres_model;

/* Builds the network, allocates everything once, and initialises the weights
 * (He/Kaiming normal for convolutions, PyTorch's default for the classifier,
 * BN gamma 1 beta 0) from `seed`. */
int mfres_model_create(mfres_model *m, const mfres_model_config *cfg, uint64_t seed);
/* The same, with the model on device d at precision p from the start: a model
 * made for the GPU never builds the CPU's plan (for ResNeXt-29 at batch 128,
 * 10 GiB of activations), unless it is moved back. */
int mfres_model_create_on(mfres_model *m, const mfres_model_config *cfg, uint64_t seed, mfres_device d,
                          mfres_precision p);
void mfres_model_free(mfres_model *m);

/* Runs the model's forward and backward passes on device d at precision p
 * from now on (MFRES_DEVICE_CPU: back on the CPU, fp32 only). Moving to the
 * GPU builds its plan and uploads the parameters, statistics and tau; moving
 * back downloads them. Fails with a message, the model unchanged, where the
 * device cannot run here (mfres_device_check). */
int mfres_model_set_device(mfres_model *m, mfres_device d, mfres_precision p);
/* While the model is on the GPU its host buffers are a copy: sync_host brings
 * the parameters, statistics, tau and order (and, with_grads, the gradients of
 * the last backward) to the host; sync_device sends host changes to the GPU.
 * Both do nothing on the CPU. */
int mfres_model_sync_host(mfres_model *m, bool with_grads);
int mfres_model_sync_device(mfres_model *m);

/* Prints the per-layer table (shape, parameters, FLOPs) and memory per category. */
void mfres_model_print_summary(const mfres_model *m, FILE *out);
mfres_tensor *mfres_model_find(mfres_model *m, const char *name);

/* Forward pass on a batch (cfg.batch images, NCHW float; labels -1 = padding).
 * train: batch statistics (and running-statistics update) and saves what the
 * backward pass needs; otherwise running statistics. Returns the mean loss
 * over valid rows in *loss, correct predictions in *correct. */
int mfres_model_forward(mfres_model *m, const float *images, const int32_t *labels, bool train, double *loss,
                        int *correct);
/* Backward pass after a training forward: writes grads (all of theta) and, in
 * mean-field mode, tau_grad (the exact gradient for the order in force). */
int mfres_model_backward(mfres_model *m);
/* Sync-BN for data-parallel training (issue 12): every training batch norm
 * sums its per-channel statistics, and its backward its per-channel gradient
 * sums, over the job's `ranks` ranks through allreduce_sum (x <- its sum over
 * ranks, in place; every rank must have this model's batch). NULL: each rank
 * normalises with its own batch, the default. */
/* (CPU only: the GPU backend trains in one process.) */
void mfres_model_set_sync_bn(mfres_model *m, int (*allreduce_sum)(double *x, size_t n, void *arg), void *arg,
                             int ranks);
/* Sorts each stage's particles by tau (stable) and recomputes the steps h. */
void mfres_model_sort_blocks(mfres_model *m);
/* Number of sorted orders that changed in the last mfres_model_sort_blocks call. */
int mfres_model_last_reorders(const mfres_model *m);

/* Per-kernel timing (mfres bench --profile): when on, forward (training or
 * inference) and backward accumulate the time of every kernel, by kind, stage
 * and oneDNN implementation. Turning it on clears the table. The table is
 * printed per step; step_seconds is the whole measured step (labelled
 * `whole`), so the table shows what lies outside the kernels. */
void mfres_model_set_profiling(mfres_model *m, bool on); /* CPU only */
void mfres_model_print_profile(const mfres_model *m, FILE *out, long steps, double step_seconds, const char *whole);

/* ---- model files (safetensors; tensor names as in PyTorch's state_dict) ---- */
#define MFRES_MODEL_FORMAT_VERSION 1
/* Saves every tensor (parameters, running statistics, tau) and, as metadata,
 * the architecture, the data set name and its normalisation, so that
 * mfres_model_load can rebuild the network. Atomic. */
int mfres_model_save(const mfres_model *m, const char *path, const char *data_name, const float *mean,
                     const float *std);
/* Rebuilds the model described by a model file, for `batch` images per step,
 * and loads its tensors. data_name (cap bytes), mean[3], std[3] may be NULL. */
int mfres_model_load(mfres_model *m, const char *path, int batch, char *data_name, size_t cap, float *mean,
                     float *std);
/* The same, with the model on device d at precision p (mfres_model_create_on). */
int mfres_model_load_on(mfres_model *m, const char *path, int batch, mfres_device d, mfres_precision p,
                        char *data_name, size_t cap, float *mean, float *std);

/* Reference path in double precision (ref kernels, NCHW), for tests. Runs the
 * model's architecture with the given parameters (laid out like m->params) and
 * tau (like m->tau; NULL in vanilla mode), sorting the particles by tau itself.
 * BN in training mode (batch statistics). Writes the mean loss and, if grads /
 * tau_grad are non-NULL, the gradients laid out like m->grads / m->tau_grad. */
int mfres_model_ref_loss_and_grad(const mfres_model *m, const double *params, const double *tau, const float *images,
                                  const int32_t *labels, double *loss, double *grads, double *tau_grad);
/* The same network at inference: every BN uses the running statistics in
 * m->buffers. Writes the mean loss and, if logits is non-NULL, [batch, classes]. */
int mfres_model_ref_eval(const mfres_model *m, const double *params, const double *tau, const float *images,
                         const int32_t *labels, double *loss, double *logits);

#endif
