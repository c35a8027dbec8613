/* The CUDA plan: the network of an architecture description (arch.h) on
 * cuDNN, cuBLAS and our kernels (kernels.h). The only part of mfres that sees
 * CUDA types; the rest of the library reaches it through gpu.h.
 *
 *   cudnn_conv.c        every cuDNN call: descriptors, the algorithm rule,
 *                       forward, backward data, backward weights
 *   cuda_device.c       is there a GPU, and what it is
 *   cuda_plan.c         the plan: device memory, upload and download, the
 *                       stem and head, the forward and backward drivers, the
 *                       training step (data, optimiser, Algorithm 1, graphs)
 *   cuda_block_postact.c / cuda_block_preact.c
 *                       a block of either form, forward and backward side by
 *                       side (the GPU twins of src/models/block_*.c)
 *
 * Layouts: activations NHWC (float32, or bfloat16 under --precision bf16);
 * convolution weights KRSC (cuDNN's NHWC filter
 * order), converted from and to PyTorch's OIHW on upload and download; every
 * other tensor as on the host, at the same offset in the device's parameter
 * buffer as in m->params. */
#ifndef MFRES_CUDA_PLAN_H
#define MFRES_CUDA_PLAN_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "models/arch.h"

/* Error checks: the call, its status in words, and where. */
int cuda_fail(cudaError_t e, const char *call, const char *file, int line);
int cudnn_fail(cudnnStatus_t s, const char *call, const char *file, int line);
int cublas_fail(cublasStatus_t s, const char *call, const char *file, int line);
#define CUDA_TRY(call)                                                                 \
    do {                                                                               \
        cudaError_t e_ = (call);                                                       \
        if (e_ != cudaSuccess) return cuda_fail(e_, #call, __FILE__, __LINE__);        \
    } while (0)
#define CUDNN_TRY(call)                                                                \
    do {                                                                               \
        cudnnStatus_t s_ = (call);                                                     \
        if (s_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(s_, #call, __FILE__, __LINE__); \
    } while (0)
#define CUBLAS_TRY(call)                                                               \
    do {                                                                               \
        cublasStatus_t s_ = (call);                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(s_, #call, __FILE__, __LINE__); \
    } while (0)
/* A kernel launch from kernels.h (returns a cudaError_t as int). */
#define KERNEL(call)                                                                   \
    do {                                                                               \
        int k_ = (call);                                                               \
        if (k_) return cuda_fail((cudaError_t)k_, #call, __FILE__, __LINE__);          \
    } while (0)

/* ---- convolution (cudnn_conv.c) ---- */

typedef struct gpu_conv {
    int N, C, H, W, K, R, stride, pad, groups, OH, OW;
    gk_dtype dt; /* of the maps and the weights: bfloat16 under --precision bf16, else float32 */
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t workspace; /* the most any of the three needs */
    bool need_bwd_data; /* the stem's input needs no gradient */
} gpu_conv;

int gpu_conv_init(gpu_conv *c, cudnnHandle_t h, const arch_conv *shape, int N, mfres_precision p, bool need_bwd_data);
void gpu_conv_free(gpu_conv *c);
/* The three passes; every pointer is of the convolution's type c->dt. */
int gpu_conv_forward(const gpu_conv *c, cudnnHandle_t h, void *y, const void *x, const void *w, void *ws,
                     size_t ws_bytes);
int gpu_conv_backward_data(const gpu_conv *c, cudnnHandle_t h, void *dx, const void *dy, const void *w, void *ws,
                           size_t ws_bytes);
int gpu_conv_backward_weights(const gpu_conv *c, cudnnHandle_t h, void *dw, const void *x, const void *dy,
                              void *ws, size_t ws_bytes);
/* "fwd implicit-precomp-gemm, bwd-data algo-1, bwd-filter algo-1": for the summary. */
void gpu_conv_describe(const gpu_conv *c, char *buf, size_t cap);

/* ---- the plan ---- */

enum { GPU_SCRATCH = ARCH_SCRATCH };

/* One position of the network, as train_pos in cpu_plan.h: convolutions and
 * saved activations belong to positions, parameters to the block sorted there.
 * Activations are of the plan's type g->act (void *), statistics float32. */
typedef struct gpu_pos {
    const arch_block *shape;
    int stage, index;
    gpu_conv conv[ARCH_MAX_CONV], proj;
    void *a[ARCH_MAX_CONV]; /* pre: relu(BN_i(.)), conv i's input; post: relu(BN_i(t_i)), i < last */
    void *t[ARCH_MAX_CONV]; /* convolution outputs */
    void *tp;               /* projection output before its batch norm */
    void *out;              /* X at the next position */
    float *mean[ARCH_MAX_CONV], *invstd[ARCH_MAX_CONV], *proj_mean, *proj_invstd; /* saved batch statistics */
} gpu_pos;

/* A batch-norm layer's parameters on the device. */
typedef struct gpu_bn {
    int C;
    float *gamma, *beta, *dgamma, *dbeta, *running_mean, *running_var;
} gpu_bn;

struct gpu_plan {
    mfres_precision precision;
    gk_dtype act; /* activations and their gradients: GK_BF16 under bf16, else GK_F32 */
    int N, n_pos, blocks_per_stage, particles;
    float bn_eps, bn_momentum;
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    /* device copies of the model's buffers */
    float *params, *grads, *buffers, *velocity;
    /* bf16 only: the parameters rounded to bfloat16 (refreshed after every
     * upload and update), which the convolutions read; and the bfloat16 weight
     * gradient of one convolution before it is widened into grads */
    void *params_bf16, *wgrad_bf16;
    /* The stem's input channels, padded for the tensor cores under tf32 and
     * bf16 (a multiple of 8: zeros after the image's channels), and where they
     * are padded, the stem's weights in that layout (of the convolution's type,
     * refreshed with the bfloat16 copy) and its padded weight gradient. */
    int in_c_pad;
    void *stem_w_pad, *stem_dw_pad;
    float *tau, *tau_grad, *tau_velocity;
    int *order;
    float *h_pos;      /* [3 n]: the step of each position (1 at stage heads and in vanilla mode) */
    float *dh;         /* [3 n]: dE/dh per position */
    float *lr;         /* the learning rate, read by the kernels */
    double *step_stats, *epoch_stats; /* loss sum, valid, correct: this batch, and accumulated */
    int *changed;
    /* layers and activations */
    gpu_conv stem;
    gpu_pos *pos;
    float *x_nchw;
    void *x_in, *stem_t, *stem_a, *final_a;
    float *stem_mean, *stem_invstd, *final_mean, *final_invstd;
    float *pooled, *dpooled, *logits, *probs, *dlogits;
    int32_t *labels;
    void *scratch[GPU_SCRATCH];
    float *partials, *bn_sums; /* reduction scratch; per-channel sums of a batch-norm backward */
    void *workspace, *cublas_workspace;
    size_t workspace_bytes, cublas_workspace_bytes;
    void *arena;
    size_t arena_bytes;
    bool have_train_forward;
    /* host staging: pinned */
    float *host_stage; /* the largest conv weight tensor, for layout conversion */
    size_t host_stage_floats;
    struct { double stats[3]; int changed; int order[]; } *host_step; /* pinned; order: 3P ints */
    /* training on the device */
    float momentum, weight_decay, tau_lr_mult, tau_end;
    bool nesterov, have_optim;
    uint8_t *images, *image_labels;
    float *lut;
    uint32_t *perm;
    int8_t *oy, *ox;
    uint8_t *flip;
    long n_images;
    int img_c, img_h, img_w;
    /* CUDA graphs of the forward-backward pass and of the update, per block order */
    bool use_graphs;
    cudaGraphExec_t graph_step, graph_update;
    int *graph_order; /* the host order the step graph was captured for */
};

/* The device view of a host tensor (parameters, statistics, or tau). */
float *gpu_param(const gpu_plan *g, const mfres_model *m, const float *host);
float *gpu_grad(const gpu_plan *g, const mfres_model *m, const float *host_grad);
float *gpu_buffer(const gpu_plan *g, const mfres_model *m, const float *host);
gpu_bn gpu_bn_of(const gpu_plan *g, const mfres_model *m, const arch_bn *bn);
/* The device pointer to the step h of a position. */
static inline const float *gpu_h_at(const gpu_plan *g, int stage, int index) {
    return g->h_pos + stage * g->blocks_per_stage + index;
}
/* The convolution passes on a model weight w (a host tensor): the plan reads
 * its device twin (bfloat16 under bf16) and writes the gradient into w's
 * float32 gradient (widened from bfloat16 under bf16). */
int gpu_conv_fwd(gpu_plan *g, const mfres_model *m, const gpu_conv *c, void *y, const void *x, const mfres_tensor *w);
int gpu_conv_bwd_data(gpu_plan *g, const mfres_model *m, const gpu_conv *c, void *dx, const void *dy,
                      const mfres_tensor *w);
int gpu_conv_bwd_weights(gpu_plan *g, const mfres_model *m, const gpu_conv *c, const mfres_tensor *w, const void *x,
                         const void *dy);
/* Batch norm, training (batch statistics, saved) or inference (running). */
int gpu_bn_forward(gpu_plan *g, const gpu_bn *bn, void *y, const void *x, long rows, float *mean, float *invstd,
                   bool train, bool relu);
/* Backward of y = [relu](BN(x)) from dy into dx; mask: y (relu) or NULL.
 * scale: device pointer multiplying the incoming gradient, or NULL; dh: where
 * to write dE/d(scale), or NULL. */
int gpu_bn_backward(gpu_plan *g, const gpu_bn *bn, void *dx, const void *dy, const void *mask, const void *x,
                    long rows, const float *mean, const float *invstd, const float *scale, float *dh);

/* Block forms (cuda_block_postact.c, cuda_block_preact.c): forward on x, and
 * backward, which takes dE/d(out) in scratch[*g] and leaves dE/dx there,
 * writing the block's parameter gradients and dE/dh of the position. */
int gpu_postact_forward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, bool train);
int gpu_postact_backward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, int *s);
int gpu_preact_forward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, bool train);
int gpu_preact_backward(gpu_plan *g, const mfres_model *m, gpu_pos *b, const void *x, int *s);

#endif
