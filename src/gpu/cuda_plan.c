/* The CUDA plan (cuda_plan.h): device memory, upload and download, the stem
 * and the head, the forward and backward drivers, and the training step with
 * the data, the optimiser and Algorithm 1 on the device.
 *
 * Memory: the device's parameter, gradient, momentum and statistics buffers
 * (one allocation each, at the host's offsets), one activation arena carved in
 * a counting pass like the CPU plan's, one cuDNN workspace sized for the
 * hungriest convolution, and the training set as bytes.
 *
 * A training step: the batch gather, the forward and backward pass, and the
 * update (SGD on theta, Algorithm 1 on tau), launched one after the other;
 * the update's kernels read the batch's loss on the device and skip
 * themselves when it is not finite, so the host waits once, at the end, for
 * the loss and the new block order together. The pass and the update are CUDA
 * graphs; the pass's graph binds every position to the parameters of the block
 * sorted there, so it is captured again when, and only when, the order changes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/cuda_plan.h"
#include "core/arena.h"
#include "mfres/core.h"
#include "mfres/meanfield.h"

/* ------------------------------------------------------------------------ */
/* device views of host tensors */

float *gpu_param(const gpu_plan *g, const mfres_model *m, const float *host) { return g->params + (host - m->params); }
float *gpu_grad(const gpu_plan *g, const mfres_model *m, const float *host_grad) {
    return g->grads + (host_grad - m->grads);
}
float *gpu_buffer(const gpu_plan *g, const mfres_model *m, const float *host) {
    return g->buffers + (host - m->buffers);
}

gpu_bn gpu_bn_of(const gpu_plan *g, const mfres_model *m, const arch_bn *bn) {
    return (gpu_bn){.C = bn->C,
                    .gamma = gpu_param(g, m, bn->w->data),
                    .beta = gpu_param(g, m, bn->b->data),
                    .dgamma = gpu_grad(g, m, bn->w->grad),
                    .dbeta = gpu_grad(g, m, bn->b->grad),
                    .running_mean = gpu_buffer(g, m, bn->rm->data),
                    .running_var = gpu_buffer(g, m, bn->rv->data)};
}

/* ------------------------------------------------------------------------ */
/* convolutions on the model's weights */

/* The weights a convolution reads: the float32 parameters, or their bfloat16
 * copy; the stem's padded to its padded input channels where they are. */
static const void *conv_weights(const gpu_plan *g, const mfres_model *m, const mfres_tensor *w) {
    if (g->stem_w_pad && w == m->arch->stem.w) return g->stem_w_pad;
    if (g->act == GK_BF16) return (char *)g->params_bf16 + (size_t)(w->data - m->params) * gk_dtype_size(GK_BF16);
    return gpu_param(g, m, w->data);
}

int gpu_conv_fwd(gpu_plan *g, const mfres_model *m, const gpu_conv *c, void *y, const void *x, const mfres_tensor *w) {
    return gpu_conv_forward(c, g->cudnn, y, x, conv_weights(g, m, w), g->workspace, g->workspace_bytes);
}

int gpu_conv_bwd_data(gpu_plan *g, const mfres_model *m, const gpu_conv *c, void *dx, const void *dy,
                      const mfres_tensor *w) {
    return gpu_conv_backward_data(c, g->cudnn, dx, dy, conv_weights(g, m, w), g->workspace, g->workspace_bytes);
}

/* cuDNN's bfloat16 convolutions give a bfloat16 weight gradient (the filter
 * descriptor has the maps' type); the optimiser's master weights take it
 * widened to float32, as PyTorch's autocast does. */
int gpu_conv_bwd_weights(gpu_plan *g, const mfres_model *m, const gpu_conv *c, const mfres_tensor *w, const void *x,
                         const void *dy) {
    float *dw = gpu_grad(g, m, w->grad);
    if (g->stem_dw_pad && w == m->arch->stem.w) { /* the padded channels' gradient is dropped */
        int rc = gpu_conv_backward_weights(c, g->cudnn, g->stem_dw_pad, x, dy, g->workspace, g->workspace_bytes);
        if (rc) return rc;
        KERNEL(gk_convert_channels(GK_F32, dw, m->cfg.in_c, c->dt, g->stem_dw_pad, g->in_c_pad,
                                   (long)(w->numel / m->cfg.in_c), m->cfg.in_c, g->stream));
        return MFRES_OK;
    }
    if (g->act != GK_BF16) return gpu_conv_backward_weights(c, g->cudnn, dw, x, dy, g->workspace, g->workspace_bytes);
    int rc = gpu_conv_backward_weights(c, g->cudnn, g->wgrad_bf16, x, dy, g->workspace, g->workspace_bytes);
    if (rc) return rc;
    KERNEL(gk_convert(GK_F32, dw, GK_BF16, g->wgrad_bf16, (long)w->numel, g->stream));
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* batch norm, on our kernels */

int gpu_bn_forward(gpu_plan *g, const gpu_bn *bn, void *y, const void *x, long rows, float *mean, float *invstd,
                   bool train, bool relu) {
    if (train) {
        KERNEL(gk_bn_stats(g->act, x, rows, bn->C, g->bn_eps, g->bn_momentum, mean, invstd, bn->running_mean,
                           bn->running_var, g->partials, g->stream));
        KERNEL(gk_bn_apply(g->act, y, x, rows, bn->C, mean, invstd, bn->gamma, bn->beta, relu, g->stream));
    } else {
        KERNEL(gk_bn_apply_running(g->act, y, x, rows, bn->C, bn->running_mean, bn->running_var, g->bn_eps, bn->gamma,
                                   bn->beta, relu, g->stream));
    }
    return MFRES_OK;
}

int gpu_bn_backward(gpu_plan *g, const gpu_bn *bn, void *dx, const void *dy, const void *mask, const void *x,
                    long rows, const float *mean, const float *invstd, const float *scale, float *dh) {
    KERNEL(gk_bn_backward_reduce(g->act, dy, mask, x, rows, bn->C, mean, invstd, g->bn_sums, g->partials, g->stream));
    KERNEL(gk_bn_backward_params(g->bn_sums, bn->C, bn->gamma, bn->beta, scale, bn->dgamma, bn->dbeta, dh,
                                 g->stream));
    KERNEL(gk_bn_backward_data(g->act, dx, dy, mask, x, rows, bn->C, mean, invstd, bn->gamma, g->bn_sums, scale, 0,
                               g->stream));
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* the activation arena: laid out in a counting pass, then carved */

/* Each buffer aligned to 256 bytes: the alignment cudaMalloc gives, which vectorised loads expect. */
static void *take(mem_arena *a, size_t bytes) { return arena_take(a, bytes, 256); }

/* An activation map of the plan's type. */
static size_t map_bytes(const gpu_plan *g, int n, int c, int h, int w) {
    return (size_t)n * c * h * w * gk_dtype_size(g->act);
}

static void layout_arena(const mfres_model *m, gpu_plan *g, mem_arena *a) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = c->batch, w = ar->stem.K, n = m->blocks_per_stage;
    g->x_nchw = take(a, (size_t)N * c->in_c * c->in_h * c->in_w * sizeof(float));
    g->x_in = take(a, map_bytes(g, N, g->in_c_pad, c->in_h, c->in_w));
    g->stem_t = take(a, map_bytes(g, N, w, c->in_h, c->in_w));
    if (ar->stem_bn) {
        g->stem_a = take(a, map_bytes(g, N, w, c->in_h, c->in_w));
        g->stem_mean = take(a, w * sizeof(float));
        g->stem_invstd = take(a, w * sizeof(float));
    }
    for (int p = 0; p < 3 * n; p++) {
        gpu_pos *b = &g->pos[p];
        const arch_block *s = b->shape;
        int last = s->n_conv - 1;
        size_t out_bytes = map_bytes(g, N, s->c_out, s->h_out, s->w_out);
        for (int i = 0; i < s->n_conv; i++) {
            const arch_conv *cv = &s->conv[i];
            if (s->pre) b->a[i] = take(a, map_bytes(g, N, cv->C, cv->H, cv->W));
            b->t[i] = take(a, map_bytes(g, N, cv->K, cv->OH, cv->OW));
            if (!s->pre && i < last) b->a[i] = take(a, map_bytes(g, N, cv->K, cv->OH, cv->OW));
            b->mean[i] = take(a, s->bn[i].C * sizeof(float));
            b->invstd[i] = take(a, s->bn[i].C * sizeof(float));
        }
        if (s->shortcut == SHORTCUT_PROJECTION && s->proj_bn) {
            b->tp = take(a, out_bytes);
            b->proj_mean = take(a, s->c_out * sizeof(float));
            b->proj_invstd = take(a, s->c_out * sizeof(float));
        }
        b->out = take(a, out_bytes);
    }
    if (ar->final_bn) {
        g->final_a = take(a, map_bytes(g, N, ar->final_c, ar->final_h, ar->final_w));
        g->final_mean = take(a, ar->final_c * sizeof(float));
        g->final_invstd = take(a, ar->final_c * sizeof(float));
    }
    g->pooled = take(a, (size_t)N * ar->final_c * sizeof(float));
    g->dpooled = take(a, (size_t)N * ar->final_c * sizeof(float));
    g->logits = take(a, (size_t)N * c->num_classes * sizeof(float));
    g->probs = take(a, (size_t)N * c->num_classes * sizeof(float));
    g->dlogits = take(a, (size_t)N * c->num_classes * sizeof(float));
    g->labels = take(a, (size_t)N * sizeof(int32_t));
    for (int k = 0; k < GPU_SCRATCH; k++) g->scratch[k] = take(a, (size_t)N * ar->max_map_floats * gk_dtype_size(g->act));
    int max_c = ar->final_c > w ? ar->final_c : w;
    for (int i = 0; i < 3 * n; i++) {
        const arch_block *s = g->pos[i].shape;
        for (int k = 0; k < s->n_conv; k++) max_c = s->bn[k].C > max_c ? s->bn[k].C : max_c;
        max_c = s->c_out > max_c ? s->c_out : max_c;
    }
    g->partials = take(a, gk_partials_floats(max_c) * sizeof(float));
    g->bn_sums = take(a, 2 * (size_t)max_c * sizeof(float));
    g->h_pos = take(a, 3 * (size_t)n * sizeof(float));
    g->dh = take(a, 3 * (size_t)n * sizeof(float));
    g->lr = take(a, sizeof(float));
    g->step_stats = take(a, 3 * sizeof(double));
    g->epoch_stats = take(a, 3 * sizeof(double));
    g->changed = take(a, sizeof(int));
}

/* ------------------------------------------------------------------------ */
/* upload and download: convolution weights OIHW on the host, KRSC here */

/* Every copy goes through the plan's stream: it is a non-blocking stream, which
 * does not wait for the legacy default stream that plain cudaMemcpy uses. */
static int copy_now(gpu_plan *g, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    if (!bytes) return MFRES_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, g->stream));
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return MFRES_OK;
}
#define COPY(dst, src, bytes, kind)                                 \
    do {                                                            \
        int c_ = copy_now(g, (dst), (src), (bytes), (kind));        \
        if (c_) return c_;                                          \
    } while (0)

static bool is_conv_weight(const mfres_tensor *t) { return t->ndim == 4 && !t->is_tau; }

/* dst[k][r][s][c] = src[k][c][r][s], or back when to_host. */
static void convert_conv(float *dst, const float *src, const int64_t *shape, bool to_host) {
    int64_t K = shape[0], C = shape[1], R = shape[2], S = shape[3];
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t r = 0; r < R; r++)
                for (int64_t s = 0; s < S; s++) {
                    size_t oihw = (size_t)(((k * C + c) * R + r) * S + s), krsc = (size_t)(((k * R + r) * S + s) * C + c);
                    if (to_host) dst[oihw] = src[krsc];
                    else dst[krsc] = src[oihw];
                }
}

/* A parameter-shaped buffer (params, grads or velocity) between host and device. */
static int copy_param_shaped(gpu_plan *g, const mfres_model *m, float *device, float *host, const float *host_base,
                             bool to_host) {
    size_t n = m->n_params, bytes = n * sizeof(float);
    float *stage = g->host_stage;
    if (to_host) {
        CUDA_TRY(cudaMemcpyAsync(stage, device, bytes, cudaMemcpyDeviceToHost, g->stream));
        CUDA_TRY(cudaStreamSynchronize(g->stream));
        memcpy(host, stage, bytes);
    } else {
        memcpy(stage, host, bytes);
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const mfres_tensor *t = &m->tensors[i];
        if (!is_conv_weight(t)) continue;
        size_t off = (size_t)(t->data - host_base);
        if (to_host) convert_conv(host + off, stage + off, t->shape, true);
        else convert_conv(stage + off, host + off, t->shape, false);
    }
    if (!to_host) {
        CUDA_TRY(cudaMemcpyAsync(device, stage, bytes, cudaMemcpyHostToDevice, g->stream));
        CUDA_TRY(cudaStreamSynchronize(g->stream));
    }
    return MFRES_OK;
}

static int upload_steps(gpu_plan *g, const mfres_model *m) {
    int n = m->blocks_per_stage, P = m->particles;
    float *h = g->host_stage; /* free between copies */
    for (int s = 0; s < 3; s++) {
        h[s * n] = 1.0f;
        for (int l = 0; l < P; l++) h[s * n + 1 + l] = m->n_tau ? m->h[s * P + l] : 1.0f;
    }
    CUDA_TRY(cudaMemcpyAsync(g->h_pos, h, 3 * (size_t)n * sizeof(float), cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return MFRES_OK;
}

/* The copies of the weights the convolutions read, after every change to the
 * parameters: the bfloat16 copy, and the stem's padded one. */
static int refresh_conv_weights(gpu_plan *g, const mfres_model *m) {
    if (g->act == GK_BF16) KERNEL(gk_convert(GK_BF16, g->params_bf16, GK_F32, g->params, (long)m->n_params, g->stream));
    if (g->stem_w_pad) {
        const mfres_tensor *w = m->arch->stem.w;
        int C = m->cfg.in_c;
        KERNEL(gk_convert_channels(g->stem.dt, g->stem_w_pad, g->in_c_pad, GK_F32, gpu_param(g, m, w->data), C,
                                   (long)(w->numel / C), C, g->stream));
    }
    return MFRES_OK;
}

int gpu_upload(gpu_plan *g, const mfres_model *m) {
    int rc = copy_param_shaped(g, m, g->params, m->params, m->params, false);
    if (!rc) rc = refresh_conv_weights(g, m);
    if (rc) return rc;
    COPY(g->buffers, m->buffers, m->n_buffers * sizeof(float), cudaMemcpyHostToDevice);
    if (m->n_tau) {
        COPY(g->tau, m->tau, m->n_tau * sizeof(float), cudaMemcpyHostToDevice);
        COPY(g->order, m->order, m->n_tau * sizeof(int), cudaMemcpyHostToDevice);
    }
    return upload_steps(g, m);
}

int gpu_download(gpu_plan *g, mfres_model *m, bool grads) {
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    int rc = copy_param_shaped(g, m, g->params, m->params, m->params, true);
    if (!rc && grads) rc = copy_param_shaped(g, m, g->grads, m->grads, m->params, true);
    if (rc) return rc;
    COPY(m->buffers, g->buffers, m->n_buffers * sizeof(float), cudaMemcpyDeviceToHost);
    if (m->n_tau) {
        COPY(m->tau, g->tau, m->n_tau * sizeof(float), cudaMemcpyDeviceToHost);
        COPY(m->order, g->order, m->n_tau * sizeof(int), cudaMemcpyDeviceToHost);
        if (grads) COPY(m->tau_grad, g->tau_grad, m->n_tau * sizeof(float), cudaMemcpyDeviceToHost);
        int P = m->particles;
        for (int s = 0; s < 3; s++) mf_steps(m->h + s * P, m->order + s * P, m->tau + s * P, P);
    }
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* create and free */

static int build_position(gpu_plan *g, const mfres_model *m, gpu_pos *b) {
    const arch_block *s = b->shape;
    int rc;
    for (int i = 0; i < s->n_conv; i++)
        if ((rc = gpu_conv_init(&b->conv[i], g->cudnn, &s->conv[i], g->N, g->precision, true))) return rc;
    if (s->shortcut == SHORTCUT_PROJECTION &&
        (rc = gpu_conv_init(&b->proj, g->cudnn, &s->proj, g->N, g->precision, true)))
        return rc;
    (void)m;
    return MFRES_OK;
}

static size_t conv_workspace(const gpu_plan *g) {
    size_t ws = g->stem.workspace;
    for (int p = 0; p < g->n_pos; p++) {
        const gpu_pos *b = &g->pos[p];
        for (int i = 0; i < b->shape->n_conv; i++) ws = b->conv[i].workspace > ws ? b->conv[i].workspace : ws;
        if (b->shape->shortcut == SHORTCUT_PROJECTION) ws = b->proj.workspace > ws ? b->proj.workspace : ws;
    }
    return ws;
}

static int plan_create(gpu_plan *g, const mfres_model *m) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int rc, n = m->blocks_per_stage;
    g->N = c->batch, g->blocks_per_stage = n, g->particles = m->particles, g->n_pos = 3 * n;
    g->bn_eps = c->bn_eps, g->bn_momentum = c->bn_momentum;
    const char *graphs = getenv("MFRES_CUDA_GRAPHS");
    g->use_graphs = !(graphs && !strcmp(graphs, "0"));
    CUDA_TRY(cudaSetDevice(0));
    CUDA_TRY(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    CUDNN_TRY(cudnnCreate(&g->cudnn));
    CUDNN_TRY(cudnnSetStream(g->cudnn, g->stream));
    CUBLAS_TRY(cublasCreate(&g->cublas));
    CUBLAS_TRY(cublasSetStream(g->cublas, g->stream));
    /* fp32: no tensor-core shortcuts at all; tf32 and bf16: TF32 tensor cores
     * (the classifier stays float32 under bf16: it is a few thousand values). */
    CUBLAS_TRY(cublasSetMathMode(g->cublas, g->precision == MFRES_PRECISION_FP32 ? CUBLAS_PEDANTIC_MATH
                                                                                 : CUBLAS_TF32_TENSOR_OP_MATH));

    /* The stem reads the padded input: its shape says so (its weights' padded
     * channels are zeros, so the output is the same). */
    arch_conv stem_shape = ar->stem;
    stem_shape.C = g->in_c_pad;
    if ((rc = gpu_conv_init(&g->stem, g->cudnn, &stem_shape, g->N, g->precision, false))) return rc;
    g->pos = mfres_alloc(sizeof(gpu_pos) * g->n_pos, "GPU block positions");
    if (!g->pos) return MFRES_ENOMEM;
    memset(g->pos, 0, sizeof(gpu_pos) * g->n_pos);
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < n; j++) {
            gpu_pos *b = &g->pos[s * n + j];
            b->stage = s, b->index = j, b->shape = arch_block_of(m, s, j);
            if ((rc = build_position(g, m, b))) return rc;
        }

    mem_arena count = {0};
    layout_arena(m, g, &count);
    g->arena_bytes = count.used;
    CUDA_TRY(cudaMalloc(&g->arena, g->arena_bytes));
    mem_arena carve = {.base = g->arena};
    layout_arena(m, g, &carve);

    g->workspace_bytes = conv_workspace(g);
    if (g->workspace_bytes) CUDA_TRY(cudaMalloc(&g->workspace, g->workspace_bytes));
    /* cuBLAS allocates nothing during graph capture when given its workspace. */
    g->cublas_workspace_bytes = 32u << 20;
    CUDA_TRY(cudaMalloc(&g->cublas_workspace, g->cublas_workspace_bytes));
    CUBLAS_TRY(cublasSetWorkspace(g->cublas, g->cublas_workspace, g->cublas_workspace_bytes));

    size_t np = m->n_params;
    CUDA_TRY(cudaMalloc((void **)&g->params, np * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&g->grads, np * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&g->buffers, (m->n_buffers ? m->n_buffers : 1) * sizeof(float)));
    if (g->act == GK_BF16) {
        size_t largest = 0;
        for (int i = 0; i < m->n_tensors; i++)
            if (is_conv_weight(&m->tensors[i]) && (size_t)m->tensors[i].numel > largest)
                largest = (size_t)m->tensors[i].numel;
        CUDA_TRY(cudaMalloc(&g->params_bf16, np * gk_dtype_size(GK_BF16)));
        CUDA_TRY(cudaMalloc(&g->wgrad_bf16, (largest ? largest : 1) * gk_dtype_size(GK_BF16)));
    }
    if (g->in_c_pad != c->in_c) {
        size_t padded = (size_t)(ar->stem.w->numel / c->in_c) * g->in_c_pad * gk_dtype_size(g->stem.dt);
        CUDA_TRY(cudaMalloc(&g->stem_w_pad, padded));
        CUDA_TRY(cudaMalloc(&g->stem_dw_pad, padded));
    }
    CUDA_TRY(cudaMemsetAsync(g->grads, 0, np * sizeof(float), g->stream));
    if (m->n_tau) {
        CUDA_TRY(cudaMalloc((void **)&g->tau, m->n_tau * sizeof(float)));
        CUDA_TRY(cudaMalloc((void **)&g->tau_grad, m->n_tau * sizeof(float)));
        CUDA_TRY(cudaMalloc((void **)&g->order, m->n_tau * sizeof(int)));
        CUDA_TRY(cudaMemsetAsync(g->tau_grad, 0, m->n_tau * sizeof(float), g->stream));
    }
    CUDA_TRY(cudaMemsetAsync(g->epoch_stats, 0, 3 * sizeof(double), g->stream));
    CUDA_TRY(cudaMemsetAsync(g->dh, 0, 3 * (size_t)n * sizeof(float), g->stream));
    g->host_stage_floats = np > (size_t)3 * n ? np : (size_t)3 * n;
    CUDA_TRY(cudaMallocHost((void **)&g->host_stage, g->host_stage_floats * sizeof(float)));
    CUDA_TRY(cudaMallocHost((void **)&g->host_step, sizeof *g->host_step + (m->n_tau + 1) * sizeof(int)));
    g->graph_order = mfres_alloc((m->n_tau + 1) * sizeof(int), "GPU graph order");
    if (!g->graph_order) return MFRES_ENOMEM;
    return gpu_upload(g, m);
}

int gpu_plan_create(gpu_plan **out, const mfres_model *m, mfres_precision p) {
    *out = NULL;
    int rc = gpu_check(p);
    if (rc) return rc;
    if (m->cfg.batch > 4096)
        return mfres_fail(MFRES_EINVAL, "--device cuda: batch %d per step; the GPU plan takes at most 4096",
                          m->cfg.batch);
    gpu_plan *g = mfres_alloc(sizeof *g, "GPU plan");
    if (!g) return MFRES_ENOMEM;
    memset(g, 0, sizeof *g);
    g->precision = p;
    g->act = p == MFRES_PRECISION_BF16 ? GK_BF16 : GK_F32;
    /* Tensor cores (tf32, bf16) take channels in multiples of 8 bfloat16 /
     * 4 floats; cuDNN would pad a 3-channel stem itself, on every call. */
    int C = m->cfg.in_c;
    g->in_c_pad = p != MFRES_PRECISION_FP32 && C % 8 ? C + 8 - C % 8 : C;
    if ((rc = plan_create(g, m))) {
        gpu_plan_free(g);
        return mfres_fail_context(rc, "building the GPU plan");
    }
    *out = g;
    return MFRES_OK;
}

size_t gpu_activation_bytes(const gpu_plan *g) {
    return g->arena_bytes + g->workspace_bytes + g->cublas_workspace_bytes;
}

size_t gpu_arena_bytes(const gpu_plan *g) { return g->arena_bytes; }

void gpu_plan_free(gpu_plan *g) {
    if (!g) return;
    if (g->stream) cudaStreamSynchronize(g->stream);
    if (g->graph_step) cudaGraphExecDestroy(g->graph_step);
    if (g->graph_update) cudaGraphExecDestroy(g->graph_update);
    gpu_conv_free(&g->stem);
    for (int p = 0; g->pos && p < g->n_pos; p++) {
        for (int i = 0; i < ARCH_MAX_CONV; i++) gpu_conv_free(&g->pos[p].conv[i]);
        gpu_conv_free(&g->pos[p].proj);
    }
    void *device[] = {g->arena,  g->workspace, g->cublas_workspace, g->params,       g->grads,
                      g->buffers, g->velocity, g->tau,              g->tau_grad,     g->tau_velocity,
                      g->order,   g->images,   g->image_labels,     g->lut,          g->perm,
                      g->oy,      g->ox,       g->flip,             g->params_bf16,  g->wgrad_bf16,
                      g->stem_w_pad, g->stem_dw_pad};
    for (size_t i = 0; i < sizeof device / sizeof *device; i++)
        if (device[i]) cudaFree(device[i]);
    if (g->host_stage) cudaFreeHost(g->host_stage);
    if (g->host_step) cudaFreeHost(g->host_step);
    if (g->cublas) cublasDestroy(g->cublas);
    if (g->cudnn) cudnnDestroy(g->cudnn);
    if (g->stream) cudaStreamDestroy(g->stream);
    mfres_free(g->graph_order);
    mfres_free(g->pos);
    mfres_free(g);
}

/* ------------------------------------------------------------------------ */
/* forward: from x_in (NHWC) and labels on the device to the loss */

static int run_forward(gpu_plan *g, const mfres_model *m, bool train) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = g->N, K = c->num_classes, C = ar->final_c, rc;
    long stem_rows = (long)N * c->in_h * c->in_w;
    if ((rc = gpu_conv_fwd(g, m, &g->stem, g->stem_t, g->x_in, ar->stem.w))) return rc;
    const void *x = g->stem_t;
    if (ar->stem_bn) {
        gpu_bn bn = gpu_bn_of(g, m, &ar->stem_norm);
        if ((rc = gpu_bn_forward(g, &bn, g->stem_a, g->stem_t, stem_rows, g->stem_mean, g->stem_invstd, train, true)))
            return rc;
        x = g->stem_a;
    }
    for (int p = 0; p < g->n_pos; p++) {
        gpu_pos *b = &g->pos[p];
        rc = b->shape->pre ? gpu_preact_forward(g, m, b, x, train) : gpu_postact_forward(g, m, b, x, train);
        if (rc) return rc;
        x = b->out;
    }
    int HW = ar->final_h * ar->final_w;
    if (ar->final_bn) {
        gpu_bn bn = gpu_bn_of(g, m, &ar->final_norm);
        if ((rc = gpu_bn_forward(g, &bn, g->final_a, x, (long)N * HW, g->final_mean, g->final_invstd, train, true)))
            return rc;
        x = g->final_a;
    }
    KERNEL(gk_avgpool_forward(g->act, g->pooled, x, N, HW, C, g->stream));
    /* logits (N x K, row-major) = pooled (N x C) fc_w^T (fc_w: K x C): in cuBLAS's
     * column-major terms, logits^T = fc_w^T' pooled^T with fc_w read transposed. */
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasSgemm(g->cublas, CUBLAS_OP_T, CUBLAS_OP_N, K, N, C, &one, gpu_param(g, m, ar->fc_w->data), C,
                           g->pooled, C, &zero, g->logits, K));
    KERNEL(gk_add_bias(g->logits, gpu_param(g, m, ar->fc_b->data), N, K, g->stream));
    KERNEL(gk_softmax_xent_forward(g->probs, g->logits, g->labels, N, K, g->step_stats, g->epoch_stats, g->stream));
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* backward */

static int run_backward(gpu_plan *g, const mfres_model *m) {
    const mfres_model_config *c = &m->cfg;
    const mfres_arch *ar = m->arch;
    int N = g->N, K = c->num_classes, C = ar->final_c, HW = ar->final_h * ar->final_w, rc;
    const float one = 1.0f, zero = 0.0f;
    KERNEL(gk_softmax_xent_backward(g->dlogits, g->probs, g->labels, N, K, g->step_stats, g->stream));
    /* fc_w grad (K x C) = dlogits^T pooled; column-major: (C x K) = pooled^T (C x N) dlogits (N x K). */
    CUBLAS_TRY(cublasSgemm(g->cublas, CUBLAS_OP_N, CUBLAS_OP_T, C, K, N, &one, g->pooled, C, g->dlogits, K, &zero,
                           gpu_grad(g, m, ar->fc_w->grad), C));
    KERNEL(gk_bias_grad(gpu_grad(g, m, ar->fc_b->grad), g->dlogits, N, K, g->stream));
    /* dpooled (N x C) = dlogits (N x K) fc_w (K x C); column-major: (C x N) = fc_w^T (C x K) dlogits^T (K x N). */
    CUBLAS_TRY(cublasSgemm(g->cublas, CUBLAS_OP_N, CUBLAS_OP_N, C, N, K, &one, gpu_param(g, m, ar->fc_w->data), C,
                           g->dlogits, K, &zero, g->dpooled, C));
    int s = 0, s1, s2, spare;
    KERNEL(gk_avgpool_backward(g->act, g->scratch[s], g->dpooled, N, HW, C, g->stream));
    const gpu_pos *last = &g->pos[g->n_pos - 1];
    if (ar->final_bn) {
        arch_scratch_others(s, &s1, &s2, &spare);
        gpu_bn bn = gpu_bn_of(g, m, &ar->final_norm);
        if ((rc = gpu_bn_backward(g, &bn, g->scratch[s1], g->scratch[s], g->final_a, last->out, (long)N * HW,
                                  g->final_mean, g->final_invstd, NULL, NULL)))
            return rc;
        s = s1;
    }
    for (int p = g->n_pos - 1; p >= 0; p--) {
        gpu_pos *b = &g->pos[p];
        const void *x = p > 0 ? g->pos[p - 1].out : (ar->stem_bn ? g->stem_a : g->stem_t);
        rc = b->shape->pre ? gpu_preact_backward(g, m, b, x, &s) : gpu_postact_backward(g, m, b, x, &s);
        if (rc) return rc;
    }
    if (ar->stem_bn) {
        arch_scratch_others(s, &s1, &s2, &spare);
        gpu_bn bn = gpu_bn_of(g, m, &ar->stem_norm);
        if ((rc = gpu_bn_backward(g, &bn, g->scratch[s1], g->scratch[s], g->stem_a, g->stem_t,
                                  (long)N * c->in_h * c->in_w, g->stem_mean, g->stem_invstd, NULL, NULL)))
            return rc;
        s = s1;
    }
    if ((rc = gpu_conv_bwd_weights(g, m, &g->stem, ar->stem.w, g->x_in, g->scratch[s]))) return rc;
    if (c->mode == MFRES_MODE_MEANFIELD && m->n_tau)
        KERNEL(gk_meanfield_tau_grad(g->tau_grad, g->order, g->dh, m->particles, g->stream));
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* one batch from the host (tests, evaluation) */

/* The batch's loss and counts, copied to host_step by the stream: enqueue
 * the copy, then after a synchronisation read them. */
static int enqueue_step_stats(gpu_plan *g) {
    CUDA_TRY(cudaMemcpyAsync(g->host_step->stats, g->step_stats, 3 * sizeof(double), cudaMemcpyDeviceToHost,
                             g->stream));
    return MFRES_OK;
}

static int step_stats(gpu_plan *g, double *loss, int *correct) {
    double sum = g->host_step->stats[0], valid = g->host_step->stats[1];
    *loss = valid > 0 ? sum / valid : 0.0;
    if (correct) *correct = (int)g->host_step->stats[2];
    if (!isfinite(*loss)) return mfres_fail(MFRES_ENUMERIC, "the loss is %g", *loss);
    return MFRES_OK;
}

int gpu_forward(gpu_plan *g, const mfres_model *m, const float *images, const int32_t *labels, bool train,
                double *loss, int *correct) {
    const mfres_model_config *c = &m->cfg;
    g->have_train_forward = false;
    size_t n = (size_t)g->N * c->in_c * c->in_h * c->in_w;
    CUDA_TRY(cudaMemcpyAsync(g->x_nchw, images, n * sizeof(float), cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaMemcpyAsync(g->labels, labels, g->N * sizeof(int32_t), cudaMemcpyHostToDevice, g->stream));
    KERNEL(gk_nchw_to_nhwc(g->act, g->x_in, g->x_nchw, g->N, c->in_c, g->in_c_pad, c->in_h, c->in_w, g->stream));
    int rc = run_forward(g, m, train);
    if (!rc) rc = enqueue_step_stats(g);
    if (!rc) {
        cudaError_t e = cudaStreamSynchronize(g->stream);
        rc = e == cudaSuccess ? step_stats(g, loss, correct) : cuda_fail(e, "cudaStreamSynchronize", __FILE__, __LINE__);
    }
    g->have_train_forward = train && rc == MFRES_OK;
    return rc;
}

int gpu_backward(gpu_plan *g, const mfres_model *m) {
    if (!g->have_train_forward) return mfres_fail(MFRES_EINVAL, "backward needs a training forward pass first");
    int rc = run_backward(g, m);
    if (rc) return rc;
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return MFRES_OK;
}

/* ------------------------------------------------------------------------ */
/* training on the device */

int gpu_optim_upload(gpu_plan *g, const mfres_model *m, const mfres_optimizer *o) {
    g->momentum = o->momentum, g->weight_decay = o->weight_decay, g->tau_lr_mult = o->tau_lr_mult;
    g->nesterov = o->nesterov;
    if (g->graph_update) cudaGraphExecDestroy(g->graph_update), g->graph_update = NULL; /* it holds the old settings */
    g->tau_end = m->n_tau ? mf_tau_end(m->particles, m->cfg.tau_init) : 0.0f;
    if (!g->velocity) CUDA_TRY(cudaMalloc((void **)&g->velocity, m->n_params * sizeof(float)));
    int rc = copy_param_shaped(g, m, g->velocity, o->velocity, m->params, false);
    if (rc) return rc;
    if (m->n_tau) {
        if (!g->tau_velocity) CUDA_TRY(cudaMalloc((void **)&g->tau_velocity, m->n_tau * sizeof(float)));
        COPY(g->tau_velocity, o->tau_velocity, m->n_tau * sizeof(float), cudaMemcpyHostToDevice);
    }
    g->have_optim = true;
    return MFRES_OK;
}

int gpu_optim_download(gpu_plan *g, const mfres_model *m, mfres_optimizer *o) {
    if (!g->have_optim) return mfres_fail(MFRES_EINVAL, "no optimiser on the GPU to download");
    int rc = copy_param_shaped(g, m, g->velocity, o->velocity, m->params, true);
    if (!rc && m->n_tau)
        COPY(o->tau_velocity, g->tau_velocity, m->n_tau * sizeof(float), cudaMemcpyDeviceToHost);
    return rc;
}

int gpu_data_upload(gpu_plan *g, const mfres_dataset *ds, const float *lut) {
    size_t image_bytes = (size_t)ds->c * ds->h * ds->w;
    if (g->images) cudaFree(g->images), g->images = NULL;
    if (g->image_labels) cudaFree(g->image_labels), g->image_labels = NULL;
    CUDA_TRY(cudaMalloc((void **)&g->images, image_bytes * ds->n));
    CUDA_TRY(cudaMalloc((void **)&g->image_labels, ds->n));
    COPY(g->images, ds->pixels, image_bytes * ds->n, cudaMemcpyHostToDevice);
    COPY(g->image_labels, ds->labels, ds->n, cudaMemcpyHostToDevice);
    if (!g->lut) CUDA_TRY(cudaMalloc((void **)&g->lut, 256 * sizeof(float) * ds->c));
    COPY(g->lut, lut, 256 * sizeof(float) * ds->c, cudaMemcpyHostToDevice);
    g->n_images = ds->n, g->img_c = ds->c, g->img_h = ds->h, g->img_w = ds->w;
    if (g->perm) cudaFree(g->perm), cudaFree(g->oy), cudaFree(g->ox), cudaFree(g->flip);
    CUDA_TRY(cudaMalloc((void **)&g->perm, ds->n * sizeof(uint32_t)));
    CUDA_TRY(cudaMalloc((void **)&g->oy, ds->n));
    CUDA_TRY(cudaMalloc((void **)&g->ox, ds->n));
    CUDA_TRY(cudaMalloc((void **)&g->flip, ds->n));
    return MFRES_OK;
}

int gpu_data_epoch(gpu_plan *g, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                   long n) {
    if (!g->images || n != g->n_images)
        return mfres_fail(MFRES_EINVAL, "GPU epoch plan of %ld images for a training set of %ld on the GPU", n,
                          g->n_images);
    CUDA_TRY(cudaMemcpyAsync(g->perm, perm, n * sizeof(uint32_t), cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaMemcpyAsync(g->oy, oy, n, cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaMemcpyAsync(g->ox, ox, n, cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaMemcpyAsync(g->flip, flip, n, cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return MFRES_OK;
}

static int run_update(gpu_plan *g, const mfres_model *m) {
    /* Both updates read the batch's loss on the device and skip themselves
     * when it is not finite (kernels.h). */
    KERNEL(gk_sgd(g->params, g->velocity, g->grads, (long)m->n_params, g->lr, g->momentum, g->weight_decay,
                  g->nesterov, g->step_stats, g->stream));
    int rc = refresh_conv_weights(g, m);
    if (rc) return rc;
    if (m->cfg.mode == MFRES_MODE_MEANFIELD && m->n_tau)
        KERNEL(gk_meanfield_update(g->tau, g->tau_velocity, g->tau_grad, g->order, g->h_pos, m->particles, g->lr,
                                   g->tau_lr_mult, g->momentum, g->nesterov, g->tau_end, g->changed, g->step_stats,
                                   g->stream));
    return MFRES_OK;
}

/* Captures `pass` into *exec; MFRES_OK or the first error. */
static int capture(gpu_plan *g, const mfres_model *m, cudaGraphExec_t *exec,
                   int (*pass)(gpu_plan *, const mfres_model *)) {
    cudaGraph_t graph;
    CUDA_TRY(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeRelaxed));
    int rc = pass(g, m);
    cudaError_t e = cudaStreamEndCapture(g->stream, &graph);
    if (rc) {
        if (e == cudaSuccess) cudaGraphDestroy(graph);
        return rc;
    }
    if (e != cudaSuccess) return cuda_fail(e, "cudaStreamEndCapture", __FILE__, __LINE__);
    e = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) return cuda_fail(e, "cudaGraphInstantiate", __FILE__, __LINE__);
    return MFRES_OK;
}

/* Runs `pass` on the stream directly, or as a CUDA graph captured for the
 * current block order (*exec, re-captured when `stale`). Where a capture
 * fails (a driver or library that cannot capture some call), the plan says
 * so once and runs without graphs from then on: slower, the same bits. */
static int launch(gpu_plan *g, const mfres_model *m, cudaGraphExec_t *exec, bool stale,
                  int (*pass)(gpu_plan *, const mfres_model *)) {
    if (!g->use_graphs) return pass(g, m);
    if (stale || !*exec) {
        if (*exec) cudaGraphExecDestroy(*exec), *exec = NULL;
        int rc = capture(g, m, exec, pass);
        if (rc) {
            mfres_log("warning: CUDA graph capture failed (%s); running without graphs (MFRES_CUDA_GRAPHS=0)",
                      mfres_last_error());
            (void)cudaGetLastError(); /* the capture's error is not the pass's */
            mfres_clear_error();
            g->use_graphs = false;
            if (*exec) cudaGraphExecDestroy(*exec), *exec = NULL;
            return pass(g, m);
        }
    }
    CUDA_TRY(cudaGraphLaunch(*exec, g->stream));
    return MFRES_OK;
}

static int pass_train(gpu_plan *g, const mfres_model *m) {
    int rc = run_forward(g, m, true);
    return rc ? rc : run_backward(g, m);
}

int gpu_train_step(gpu_plan *g, mfres_model *m, long first, float lr, gpu_step_result *res) {
    if (!g->have_optim) return mfres_fail(MFRES_EINVAL, "gpu_train_step needs gpu_optim_upload first");
    if (!g->images) return mfres_fail(MFRES_EINVAL, "gpu_train_step needs the training set on the GPU");
    memset(res, 0, sizeof *res);
    int P = m->particles;
    bool stale = m->n_tau && memcmp(g->graph_order, m->order, m->n_tau * sizeof(int));
    CUDA_TRY(cudaMemcpyAsync(g->lr, &lr, sizeof lr, cudaMemcpyHostToDevice, g->stream));
    KERNEL(gk_gather_batch(g->act, g->x_in, g->labels, g->images, g->image_labels, g->lut, g->perm, g->oy, g->ox, g->flip,
                           first, g->N, g->n_images, g->img_c, g->in_c_pad, g->img_h, g->img_w, g->stream));
    int rc = launch(g, m, &g->graph_step, stale, pass_train);
    if (rc) return rc;
    if (m->n_tau) memcpy(g->graph_order, m->order, m->n_tau * sizeof(int));
    g->have_train_forward = true;
    /* The update goes at once, behind the pass: its kernels skip themselves
     * when the loss is not finite, so the host waits once per step, for the
     * loss and the new block order together. */
    if ((rc = launch(g, m, &g->graph_update, false, run_update)) || (rc = enqueue_step_stats(g))) return rc;
    bool meanfield = m->cfg.mode == MFRES_MODE_MEANFIELD && m->n_tau;
    if (meanfield) {
        CUDA_TRY(cudaMemcpyAsync(&g->host_step->changed, g->changed, sizeof(int), cudaMemcpyDeviceToHost, g->stream));
        CUDA_TRY(cudaMemcpyAsync(g->host_step->order, g->order, m->n_tau * sizeof(int), cudaMemcpyDeviceToHost,
                                 g->stream));
    }
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    double loss;
    int correct;
    if ((rc = step_stats(g, &loss, &correct))) return rc; /* a bad loss: the update skipped itself */
    res->loss = loss, res->correct = correct, res->valid = (int)g->host_step->stats[1];
    if (meanfield) {
        int reorders = 0;
        for (int s = 0; s < 3; s++)
            reorders += memcmp(m->order + s * P, g->host_step->order + s * P, P * sizeof(int)) != 0;
        memcpy(m->order, g->host_step->order, m->n_tau * sizeof(int));
        res->reorders = m->last_reorders = reorders;
    }
    return MFRES_OK;
}
