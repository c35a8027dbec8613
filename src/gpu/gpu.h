/* The GPU backend as the rest of the library sees it (docs/GPU.md).
 *
 * A build with CUDA implements it in cuda_*.c (the plan, on cuDNN and cuBLAS)
 * and kernels.cu (our own kernels); a build without, in none.c, whose every
 * entry point says the backend is not built. Nothing here exposes a CUDA type,
 * so model.c and train.c compile the same either way.
 *
 * The device holds its own copy of everything a training step touches:
 * parameters (convolution weights in cuDNN's KRSC order, everything else as
 * on the host), gradients, running statistics, tau, the block order and the
 * steps h, the optimiser's momentum, the training set as bytes, and one
 * activation arena. The host buffers of the model are a copy, made by
 * gpu_download; changes to them reach the device by gpu_upload. */
#ifndef MFRES_GPU_H
#define MFRES_GPU_H

#include <stdbool.h>
#include <stdint.h>

#include "mfres/data.h"
#include "mfres/device.h"
#include "mfres/model.h"
#include "mfres/optim.h"

bool gpu_built(void);
/* MFRES_OK if a GPU can run precision p; else an error with a message. */
int gpu_check(mfres_precision p);
void gpu_describe(char *buf, size_t cap);
/* The dense-GEMM rate (FLOP/s) of cuBLAS on n x n matrices in precision p's
 * arithmetic (cuda_gemm.c): the GPU's yardstick for "fraction of peak". */
int gpu_gemm_peak(mfres_precision p, int n, double *flops_per_s);

typedef struct gpu_plan gpu_plan;

/* Builds the plan for m's architecture and batch (descriptors, algorithms,
 * device memory) and uploads m's parameters, statistics and tau. */
int gpu_plan_create(gpu_plan **out, const mfres_model *m, mfres_precision p);
void gpu_plan_free(gpu_plan *g);
/* Device memory of activations, scratch and workspaces, for the summary. */
size_t gpu_activation_bytes(const gpu_plan *g);
/* Of which the activation arena (maps, statistics, scratch): the part the precision sizes. */
size_t gpu_arena_bytes(const gpu_plan *g);
int gpu_upload(gpu_plan *g, const mfres_model *m);
/* Parameters, running statistics, tau, order and h into m's host buffers;
 * with grads, also the gradients and tau gradients of the last backward. */
int gpu_download(gpu_plan *g, mfres_model *m, bool grads);

/* One batch from the host (cfg.batch images, NCHW float; labels -1 =
 * padding), as mfres_model_forward; and the backward after a training
 * forward, leaving the gradients on the device. */
int gpu_forward(gpu_plan *g, const mfres_model *m, const float *images, const int32_t *labels, bool train,
                double *loss, int *correct);
int gpu_backward(gpu_plan *g, const mfres_model *m);

/* ---- training entirely on the device (src/train/train.c) ---- */

/* The optimiser's settings and momentum buffers, uploaded; and back. */
int gpu_optim_upload(gpu_plan *g, const mfres_model *m, const mfres_optimizer *o);
int gpu_optim_download(gpu_plan *g, const mfres_model *m, mfres_optimizer *o);
/* The training set, once, as bytes, and the loader's normalisation table
 * (c x 256 floats: the value of each byte per channel). */
int gpu_data_upload(gpu_plan *g, const mfres_dataset *ds, const float *lut);
/* An epoch's permutation and augmentation (mfres_loader_epoch_plan), n entries. */
int gpu_data_epoch(gpu_plan *g, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                   long n);

typedef struct gpu_step_result {
    double loss; /* mean over the batch's valid rows */
    int valid, correct;
    int reorders; /* stages whose block order changed */
} gpu_step_result;

/* One training step on positions [first, first + batch) of the epoch: the
 * batch gathered and augmented on the device, forward, backward, SGD on theta,
 * Algorithm 1 on tau; the host learns the loss and the new block order. The
 * host's copy of the model is stale until gpu_download. A non-finite loss
 * returns MFRES_ENUMERIC before any update. */
int gpu_train_step(gpu_plan *g, mfres_model *m, long first, float lr, gpu_step_result *res);

#endif
